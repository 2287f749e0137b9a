//! The operator side of a fastio pipeline job (Clara's "pipeline driver" client library).
//!
//! An operator is a program started by `fastio run` for one operator of a pipeline
//! definition. It registers prepare, execute and cleanup callbacks and hands them to
//! [`Driver::run`], which drives Clara's life-cycle:
//!
//! 1. **prepare** runs at once, before the operator's inputs are ready;
//! 2. the driver waits until every upstream operator has finished execute;
//! 3. **execute** runs with a [`Payload`]: the disk inputs and outputs, the Fast I/O
//!    context, and the FastIO entries (typed shared memory inputs, read-only, and outputs,
//!    read-write). The payload is valid only during the callback; references to context
//!    allocations still held when it returns are reclaimed and reported;
//! 4. **cleanup** runs last, also when an earlier phase failed.
//!
//! Run without `fastio run` (no `FASTIO_CONTEXT` in the environment), an operator runs
//! **alone** for debugging: a private in-process context, no waiting for inputs. With
//! `FASTIO_PIPELINE=<definition>` and `FASTIO_STAGE=<operator name>` it gets that
//! operator's entries (pre-allocated ones exist and read as zeroes; dynamic inputs are
//! unallocated) and its stream directories; without them, none, apart from the disk paths
//! in `NVIDIA_CLARA_INPUTPATHS` / `NVIDIA_CLARA_OUTPUTPATHS`.
//!
//! ```no_run
//! use fastio_operator::{Driver, Lifecycle};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let driver = Driver::from_env()?;
//!     driver.run(&mut Lifecycle::new().execute(|_driver, payload| {
//!         let volume = payload.fastio_input("volume")?.to_vec::<i16>()?;
//!         let count = volume.iter().filter(|&&v| v > 300).count() as u64;
//!         payload.fastio_output("count")?.set_values(&[count])?;
//!         Ok(())
//!     }))?;
//!     Ok(())
//! }
//! ```

mod gpu;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use cuda_streams;

pub use fastio_context::{AccessMode, Context, ContextError, EntryError, JobError, RequestError};
pub use fastio_job::{FastIoEntry, PathEntry};
use fastio_job::{Job, JobPlan, Phase, ReclaimedHandle, StageInfo, StagePlan};
use fastio_pipeline::Pipeline;
use fastio_pipeline::plan::{DiskLayout, job_plan};

/// The environment variable naming a pipeline definition, for an operator run alone.
pub const PIPELINE_ENV: &str = "FASTIO_PIPELINE";
/// The environment variable naming the operator, for an operator run alone.
pub const STAGE_ENV: &str = "FASTIO_STAGE";
/// Disk inputs as `name:path` pairs separated by `;` (Clara's variable).
pub const INPUT_PATHS_ENV: &str = "NVIDIA_CLARA_INPUTPATHS";
/// Disk outputs as `name:path` pairs separated by `;` (Clara's variable).
pub const OUTPUT_PATHS_ENV: &str = "NVIDIA_CLARA_OUTPUTPATHS";
/// Seconds an operator that joins a job from its own container (a Pod's) retries while
/// nothing listens at the job's socket yet; default 60.
pub const JOIN_WAIT_ENV: &str = "FASTIO_JOIN_WAIT_S";
/// Set to `1` to execute without waiting for upstream operators (Clara's variable).
pub const NO_SYNC_LOCK_ENV: &str = "NVIDIA_CLARA_NOSYNCLOCK";

/// What a callback returns when it fails: any error, whose message the job reports.
pub type CallbackError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can stop an operator.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// Talking to the context failed.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// The pipeline definition named for a standalone run is unusable.
    #[error(transparent)]
    Definition(#[from] fastio_pipeline::DefinitionError),
    /// The standalone settings are inconsistent.
    #[error("{0}")]
    Standalone(String),
    /// `FASTIO_JOIN_WAIT_S` is not a number of seconds from 0 to 3600.
    #[error("{JOIN_WAIT_ENV}={value:?}: expected seconds, from 0 to 3600")]
    JoinWait {
        /// The value found.
        value: String,
    },
    /// A callback failed (the later phases that must run still ran).
    #[error("{phase} failed: {message}")]
    Phase {
        /// The phase.
        phase: Phase,
        /// The callback's error message.
        message: String,
    },
    /// A CUDA call of the operator's stream handling failed (or there is no CUDA device
    /// where one is needed).
    #[error("{stage}: {what}: {cause}")]
    Cuda {
        /// The operator.
        stage: String,
        /// What the operator was doing.
        what: String,
        /// The failure (in the message, so not the error's `source()`).
        cause: cuda_streams::StreamError,
    },
    /// The job failed elsewhere before this operator's inputs were ready; execute was
    /// skipped.
    #[error("the job was aborted before this operator could execute: {reason}")]
    Aborted {
        /// Why the job failed.
        reason: String,
    },
}

/// The callbacks of an operator. Each is optional but execute.
pub trait Callbacks {
    /// Runs once, before the inputs are ready.
    fn prepare(&mut self, _driver: &Driver) -> Result<(), CallbackError> {
        Ok(())
    }
    /// Runs once, when every upstream operator has finished execute.
    fn execute(&mut self, driver: &Driver, payload: &mut Payload<'_>) -> Result<(), CallbackError>;
    /// Runs once at the end, also after a failure.
    fn cleanup(&mut self, _driver: &Driver) -> Result<(), CallbackError> {
        Ok(())
    }
}

type PhaseFn<'f> = Box<dyn FnMut(&Driver) -> Result<(), CallbackError> + Send + 'f>;
type ExecuteFn<'f> =
    Box<dyn FnMut(&Driver, &mut Payload<'_>) -> Result<(), CallbackError> + Send + 'f>;

/// [`Callbacks`] made of closures; a missing one does nothing and succeeds.
#[derive(Default)]
pub struct Lifecycle<'f> {
    prepare: Option<PhaseFn<'f>>,
    execute: Option<ExecuteFn<'f>>,
    cleanup: Option<PhaseFn<'f>>,
}

impl<'f> Lifecycle<'f> {
    /// No callbacks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the prepare callback.
    pub fn prepare(
        mut self,
        f: impl FnMut(&Driver) -> Result<(), CallbackError> + Send + 'f,
    ) -> Self {
        self.prepare = Some(Box::new(f));
        self
    }

    /// Sets the execute callback.
    pub fn execute(
        mut self,
        f: impl FnMut(&Driver, &mut Payload<'_>) -> Result<(), CallbackError> + Send + 'f,
    ) -> Self {
        self.execute = Some(Box::new(f));
        self
    }

    /// Sets the cleanup callback.
    pub fn cleanup(
        mut self,
        f: impl FnMut(&Driver) -> Result<(), CallbackError> + Send + 'f,
    ) -> Self {
        self.cleanup = Some(Box::new(f));
        self
    }
}

impl Callbacks for Lifecycle<'_> {
    fn prepare(&mut self, driver: &Driver) -> Result<(), CallbackError> {
        self.prepare.as_mut().map_or(Ok(()), |f| f(driver))
    }
    fn execute(&mut self, driver: &Driver, payload: &mut Payload<'_>) -> Result<(), CallbackError> {
        self.execute.as_mut().map_or(Ok(()), |f| f(driver, payload))
    }
    fn cleanup(&mut self, driver: &Driver) -> Result<(), CallbackError> {
        self.cleanup.as_mut().map_or(Ok(()), |f| f(driver))
    }
}

/// How long an operator that joins a job from its own container retries while nothing
/// listens yet: `FASTIO_JOIN_WAIT_S` seconds, default 60.
fn join_wait() -> Result<std::time::Duration, OperatorError> {
    match std::env::var(JOIN_WAIT_ENV) {
        Err(_) => Ok(std::time::Duration::from_secs(60)),
        Ok(text) => text
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
            .filter(|d| *d <= std::time::Duration::from_secs(3600))
            .ok_or(OperatorError::JoinWait { value: text }),
    }
}

/// An operator's link to its job: who it is, and the context it works in.
#[derive(Debug)]
pub struct Driver {
    context: Context,
    info: StageInfo,
    standalone: bool,
    gpu: Arc<gpu::Gpu>,
}

impl Driver {
    /// Joins the job this process was started for by `fastio run` (through
    /// `FASTIO_CONTEXT`), or sets up a standalone run when there is none (see the crate
    /// documentation).
    ///
    /// An operator that runs in a container of a job's Pod, which `fastio k8s serve` did
    /// not start, finds the job in `FASTIO_JOB_SOCKET` (with `FASTIO_JOB_SECRET` and
    /// `FASTIO_STAGE`) and joins it over the Pod's shared network namespace, retrying for
    /// `FASTIO_JOIN_WAIT_S` seconds (default 60) while the server's container starts.
    pub fn from_env() -> Result<Self, OperatorError> {
        match std::env::var(fastio_context::CONTEXT_ENV) {
            Ok(address) if !address.is_empty() => Self::join(Context::connect(&address)?),
            _ if std::env::var_os(fastio_context::JOB_SOCKET_ENV)
                .is_some_and(|v| !v.is_empty()) =>
            {
                Self::join(Context::attach_from_env(join_wait()?)?)
            }
            _ => Self::standalone_from_env(),
        }
    }

    /// Joins the job through a context connection the driver made for this operator.
    pub fn join(context: Context) -> Result<Self, OperatorError> {
        let info = context.join()?;
        Ok(Self {
            context,
            info,
            standalone: false,
            gpu: Arc::default(),
        })
    }

    fn standalone_from_env() -> Result<Self, OperatorError> {
        let stage = std::env::var(STAGE_ENV).ok().filter(|s| !s.is_empty());
        match std::env::var(PIPELINE_ENV).ok().filter(|s| !s.is_empty()) {
            Some(path) => {
                let stage = stage.ok_or_else(|| {
                    OperatorError::Standalone(format!(
                        "{PIPELINE_ENV} is set but {STAGE_ENV} is not: name the operator to run"
                    ))
                })?;
                let pipeline = Pipeline::from_path(&path)?;
                Self::standalone(Some(&pipeline), &stage)
            }
            None => {
                let name = stage.unwrap_or_else(program_name);
                Self::standalone(None, &name)
            }
        }
    }

    /// A standalone run as operator `stage` of `pipeline` (or of no pipeline): a private
    /// in-process context hosting a job of its own. Stream directories follow `fastio
    /// run`'s layout under `fastio-output/<pipeline>`, unless Clara's path variables say
    /// otherwise.
    pub fn standalone(pipeline: Option<&Pipeline>, stage: &str) -> Result<Self, OperatorError> {
        let job_id = new_job_id();
        let (mut plan, index) = match pipeline {
            Some(pipeline) => {
                let index = pipeline.position(stage).ok_or_else(|| {
                    OperatorError::Standalone(format!(
                        "pipeline {:?} has no operator named {stage:?}",
                        pipeline.name()
                    ))
                })?;
                let root = PathBuf::from("fastio-output").join(pipeline.name());
                let layout = DiskLayout {
                    payload: root.join("payload"),
                    output_root: root,
                };
                (job_plan(pipeline, &job_id, &layout), index)
            }
            None => (
                JobPlan {
                    job_id: job_id.clone(),
                    job_name: "standalone".into(),
                    stages: vec![StagePlan::new(stage, vec![], vec![], vec![])],
                    entries: vec![],
                },
                0,
            ),
        };
        // Alone, no other operator will ever execute: nothing writes this one's inputs
        // (pre-allocated ones read as zeroes, sealed so from the start), and the plan says
        // so both ways (an entry's producer lists it among its outputs, and no one else).
        for entry in &mut plan.entries {
            if entry.producer != Some(index) {
                entry.producer = None;
            }
        }
        for (i, stage) in plan.stages.iter_mut().enumerate() {
            if i != index {
                stage.fastio_outputs.clear();
            }
        }
        let stage_plan = &mut plan.stages[index];
        stage_plan.upstream.clear();
        if let Some(inputs) = paths_from_env(INPUT_PATHS_ENV) {
            stage_plan.inputs = inputs;
        }
        if let Some(outputs) = paths_from_env(OUTPUT_PATHS_ENV) {
            stage_plan.outputs = outputs;
        }
        for out in &stage_plan.outputs {
            std::fs::create_dir_all(&out.path).map_err(|e| {
                OperatorError::Standalone(format!("cannot create {}: {e}", out.path))
            })?;
        }
        let job = Arc::new(Job::new(plan, |_| {}));
        let context = fastio_job::in_process(job, index)?;
        Self::join(context).map(|d| Self {
            standalone: true,
            ..d
        })
    }

    /// Uses `driver` for the operator's CUDA stream instead of probing for the machine's
    /// (an application that holds one already; tests on `cuda_streams::Driver::fake`).
    pub fn with_cuda_driver(self, driver: cuda_streams::Driver) -> Self {
        self.gpu.set_driver(driver);
        self
    }

    /// The operator's CUDA stream: see [`Payload::cuda_stream`], which is the same call
    /// (for bindings that reach the driver but not the payload during execute).
    pub fn cuda_stream(&self) -> Result<cuda_streams::Stream, OperatorError> {
        self.cuda_stream_source().cuda_stream()
    }

    /// A handle that reaches the operator's CUDA stream from anywhere (another thread, a
    /// C or Python binding's payload object): see [`Payload::cuda_stream`].
    pub fn cuda_stream_source(&self) -> CudaStreamSource {
        CudaStreamSource {
            gpu: self.gpu.clone(),
            stage: self.info.stage_name.clone(),
            inputs: self
                .info
                .fastio_inputs
                .iter()
                .map(|e| e.name.clone())
                .collect(),
        }
    }

    /// The job's identifier (a UUID).
    pub fn job_id(&self) -> &str {
        &self.info.job_id
    }

    /// The job's name (the pipeline's).
    pub fn job_name(&self) -> &str {
        &self.info.job_name
    }

    /// This operator's name.
    pub fn stage_name(&self) -> &str {
        &self.info.stage_name
    }

    /// Everything the job told this operator.
    pub fn stage_info(&self) -> &StageInfo {
        &self.info
    }

    /// The operator runs alone, without `fastio run`.
    pub fn is_standalone(&self) -> bool {
        self.standalone
    }

    /// The Fast I/O context of the job (also reachable from the payload during execute).
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Drives the life-cycle with `callbacks`: prepare, wait for the inputs, execute,
    /// cleanup. Returns the first failure; cleanup runs whatever happened before it.
    pub fn run(&self, callbacks: &mut impl Callbacks) -> Result<(), OperatorError> {
        let mut first_failure = None;
        let prepared = self.phase(Phase::Prepare, || callbacks.prepare(self));
        let executed = match prepared {
            Err(e) => Err(e),
            Ok(()) => match self.await_inputs() {
                Err(e) => Err(e),
                Ok(()) => self.execute(callbacks),
            },
        };
        if let Err(e) = executed {
            first_failure = Some(e);
        }
        let cleaned = self.phase(Phase::Cleanup, || callbacks.cleanup(self));
        // The operator's GPU work ends with it, its stream back in the pool.
        let stopped = self.gpu.stop(&self.info.stage_name);
        match (first_failure, cleaned, stopped) {
            (Some(e), _, _) | (None, Err(e), _) | (None, Ok(()), Err(e)) => Err(e),
            (None, Ok(()), Ok(())) => Ok(()),
        }
    }

    fn await_inputs(&self) -> Result<(), OperatorError> {
        if self.standalone || std::env::var(NO_SYNC_LOCK_ENV).is_ok_and(|v| v == "1") {
            return Ok(());
        }
        match self.context.await_inputs() {
            Err(ContextError::Refused(RequestError::Job(JobError::Aborted { reason }))) => {
                Err(OperatorError::Aborted { reason })
            }
            other => Ok(other?),
        }
    }

    fn execute(&self, callbacks: &mut impl Callbacks) -> Result<(), OperatorError> {
        let result = self.payload().and_then(|mut payload| {
            // Receiving: the operator's stream waits on the inputs' events (GPU-side).
            self.gpu
                .receive(&self.info.stage_name, &payload.fastio_inputs)?;
            let result = callbacks
                .execute(self, &mut payload)
                .map_err(|e| OperatorError::Phase {
                    phase: Phase::Execute,
                    message: error_chain(e.as_ref()),
                });
            // Emitting: outputs carry an event recorded on the operator's stream.
            let emitted = self
                .gpu
                .emit(&self.info.stage_name, &mut payload.fastio_outputs);
            let result = result.and(emitted);
            // Outputs are final: their mappings become read-only before anyone reads them
            // (the context seals their memory when it hears of the end of execute).
            payload.finish()?;
            result
            // The payload's entries are unmapped and released here, before the report.
        });
        let failure = result.as_ref().err().map(failure_message);
        let reclaimed = self.context.finished(Phase::Execute, failure)?;
        if !reclaimed.is_empty() {
            tracing::warn!(
                "{}: {} reference(s) still held when execute returned were reclaimed: {}",
                self.info.stage_name,
                reclaimed.iter().map(|h| h.count).sum::<u64>(),
                describe(&reclaimed)
            );
        }
        result
    }

    fn payload(&self) -> Result<Payload<'_>, OperatorError> {
        let open = |infos: &[fastio_job::EntryInfo]| {
            infos
                .iter()
                .map(|info| FastIoEntry::open(&self.context, info.clone()))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Payload {
            driver: self,
            fastio_inputs: open(&self.info.fastio_inputs)?,
            fastio_outputs: open(&self.info.fastio_outputs)?,
        })
    }

    /// Runs one of prepare and cleanup and reports its end.
    fn phase(
        &self,
        phase: Phase,
        f: impl FnOnce() -> Result<(), CallbackError>,
    ) -> Result<(), OperatorError> {
        let result = f().map_err(|e| OperatorError::Phase {
            phase,
            message: error_chain(e.as_ref()),
        });
        let failure = result.as_ref().err().map(failure_message);
        self.context.finished(phase, failure)?;
        result
    }
}

/// Reaches an operator's CUDA stream ([`Driver::cuda_stream_source`]); cheap to clone.
#[derive(Clone, Debug)]
pub struct CudaStreamSource {
    gpu: Arc<gpu::Gpu>,
    stage: String,
    inputs: Vec<String>,
}

impl CudaStreamSource {
    /// The operator's CUDA stream: see [`Payload::cuda_stream`].
    pub fn cuda_stream(&self) -> Result<cuda_streams::Stream, OperatorError> {
        let inputs: Vec<&str> = self.inputs.iter().map(String::as_str).collect();
        self.gpu.stream(&self.stage, &inputs)
    }
}

/// What the job is told of a failed phase: the callback's own message (the phase is
/// reported alongside).
fn failure_message(e: &OperatorError) -> String {
    match e {
        OperatorError::Phase { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn describe(handles: &[ReclaimedHandle]) -> String {
    handles
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// An error and its sources, as one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn program_name() -> String {
    std::env::args()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "operator".into())
}

/// A fresh job identifier: a random (version 4) UUID.
pub fn new_job_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// Parses Clara's path variables: `name:path` pairs separated by `;`.
pub fn parse_paths(text: &str) -> Vec<PathEntry> {
    text.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once(':') {
            Some((name, path)) => PathEntry {
                name: name.to_owned(),
                path: path.to_owned(),
            },
            None => PathEntry {
                name: String::new(),
                path: pair.to_owned(),
            },
        })
        .collect()
}

/// Formats disk entries as Clara's path variables do: `name:path` pairs joined by `;`.
pub fn format_paths(entries: &[PathEntry]) -> String {
    entries
        .iter()
        .map(|e| format!("{}:{}", e.name, e.path))
        .collect::<Vec<_>>()
        .join(";")
}

fn paths_from_env(var: &str) -> Option<Vec<PathEntry>> {
    std::env::var(var).ok().map(|text| parse_paths(&text))
}

/// What execute works with: disk entries, the Fast I/O context, and FastIO entries. It
/// lives only as long as the execute callback.
#[derive(Debug)]
pub struct Payload<'a> {
    driver: &'a Driver,
    fastio_inputs: Vec<FastIoEntry>,
    fastio_outputs: Vec<FastIoEntry>,
}

/// The position of entry `name` in `entries`, or an error listing the names there are.
fn position(entries: &[FastIoEntry], kind: &str, name: &str) -> Result<usize, ContextError> {
    entries
        .iter()
        .position(|e| e.name() == name)
        .ok_or_else(|| {
            EntryError::NoEntryNamed {
                role: kind.to_owned(),
                name: name.to_owned(),
                known: entries.iter().map(|e| e.name().to_owned()).collect(),
            }
            .into()
        })
}

impl Payload<'_> {
    /// Makes every output read-only (see [`FastIoEntry::finish`]); the end of execute.
    pub fn finish(&mut self) -> Result<(), ContextError> {
        self.fastio_outputs
            .iter_mut()
            .try_for_each(FastIoEntry::finish)
    }

    /// The operator's CUDA stream (Holoscan's `receive_cuda_stream`): allocated from the
    /// operator's stream pool the first time and held for the run, already ordered after
    /// every FastIO input's producer (GPU-side: the host did not wait). Queue this
    /// execute's GPU work on it; at the end of execute an event recorded on it goes with
    /// every output, so downstream operators' streams wait for this work, and host outputs
    /// are made final before execute is reported done. Its device is made current on the
    /// calling thread.
    pub fn cuda_stream(&self) -> Result<cuda_streams::Stream, OperatorError> {
        self.driver.cuda_stream()
    }

    /// The job's Fast I/O context.
    pub fn fastio_context(&self) -> &Context {
        &self.driver.context
    }

    /// Disk inputs: directories to read.
    pub fn input_entries(&self) -> &[PathEntry] {
        &self.driver.info.inputs
    }

    /// Disk outputs: directories to write.
    pub fn output_entries(&self) -> &[PathEntry] {
        &self.driver.info.outputs
    }

    /// The directory of disk input `name`.
    pub fn input_path(&self, name: &str) -> Option<&Path> {
        find_path(&self.driver.info.inputs, name)
    }

    /// The directory of disk output `name`.
    pub fn output_path(&self, name: &str) -> Option<&Path> {
        find_path(&self.driver.info.outputs, name)
    }

    /// Shared memory inputs, read-only.
    pub fn fastio_inputs(&self) -> &[FastIoEntry] {
        &self.fastio_inputs
    }

    /// Shared memory outputs, read-write.
    pub fn fastio_outputs(&mut self) -> &mut [FastIoEntry] {
        &mut self.fastio_outputs
    }

    /// The shared memory input `name`.
    pub fn fastio_input(&self, name: &str) -> Result<&FastIoEntry, ContextError> {
        let i = position(&self.fastio_inputs, "FastIO input", name)?;
        Ok(&self.fastio_inputs[i])
    }

    /// The shared memory output `name`.
    pub fn fastio_output(&mut self, name: &str) -> Result<&mut FastIoEntry, ContextError> {
        let o = position(&self.fastio_outputs, "FastIO output", name)?;
        Ok(&mut self.fastio_outputs[o])
    }

    /// An input and an output at once, e.g. to compute one from the other in place.
    pub fn fastio_input_output(
        &mut self,
        input: &str,
        output: &str,
    ) -> Result<(&FastIoEntry, &mut FastIoEntry), ContextError> {
        let i = position(&self.fastio_inputs, "FastIO input", input)?;
        let o = position(&self.fastio_outputs, "FastIO output", output)?;
        Ok((&self.fastio_inputs[i], &mut self.fastio_outputs[o]))
    }
}

fn find_path<'a>(entries: &'a [PathEntry], name: &str) -> Option<&'a Path> {
    entries
        .iter()
        .find(|e| e.name == name)
        .map(|e| Path::new(e.path.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clara_path_variables_round_trip() {
        let entries = parse_paths("dicom:/in/a;:/in/b");
        assert_eq!(entries[0].name, "dicom");
        assert_eq!(entries[1].path, "/in/b");
        assert_eq!(format_paths(&entries), "dicom:/in/a;:/in/b");
        // The pattern real Clara operators use on a single entry.
        assert_eq!(format_paths(&entries[..1]).split(':').nth(1), Some("/in/a"));
    }
}
