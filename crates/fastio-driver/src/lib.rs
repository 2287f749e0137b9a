//! The pipeline driver: runs one job of a pipeline definition.
//!
//! [`run_job`] hosts the job's context server (the Clara "pod manager"), which allocates
//! every FastIO entry whose shape is fully known before any operator starts; creates the
//! `stream` directories; starts the operator processes, each with its own context
//! connection (`FASTIO_CONTEXT=fd:N`), Clara's `NVIDIA_CLARA_INPUTPATHS` /
//! `NVIDIA_CLARA_OUTPUTPATHS`, and its `variables`; and follows each through prepare,
//! execute (once all its upstream operators have finished execute) and cleanup.
//!
//! Operators that use the pipeline driver start at job start, so that prepare overlaps
//! upstream work. Plain programs, which only read their input folders and write their
//! output folders, start once every upstream operator has finished execute, succeed by
//! exiting 0, and never start when the job has failed (Clara's disk semantics). How the
//! two are told apart is [`OperatorKind`]'s rule: `uses-driver` in the definition, else
//! shared-memory entries, else a look at the program for the driver.
//!
//! Failure: the first operator that reports a failed phase, exits without finishing its
//! life-cycle, exits non-zero, or is killed, fails the job, as does the job's time limit.
//! Operators waiting for their inputs are told the job was aborted and never execute;
//! the others are sent SIGTERM, then SIGKILL after a grace period. Every operator runs in
//! its own process group, which is what the signals go to, and dies with the driver
//! (`PR_SET_PDEATHSIG`): nothing outlives the job, even when the driver is killed.
//!
//! Architecture Invariant: the driver owns the operator processes and nothing else; job
//! state lives in the context's [`Job`], memory in the context's registry.

#![deny(unsafe_code)]

mod alone;
pub mod inspect;
mod kind;
pub mod npy;
mod output;
mod reap;
mod report;
mod results;
#[allow(unsafe_code)]
mod sys;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use fastio_context::{CONTEXT_ADDRESS_ENV, CONTEXT_ENV, Server, ServerConfig, records};
use fastio_job::{Job, JobEvent, JobEventKind, JobPlan, Phase, ReclaimedHandle};
use fastio_operator::{INPUT_PATHS_ENV, OUTPUT_PATHS_ENV, format_paths};
use fastio_pipeline::plan::{DiskLayout, job_plan};
use fastio_pipeline::{DefinitionError, Pipeline};

pub use kind::{KindReason, OperatorKind};
pub use output::{MAX_LINE, OutputLine, OutputSink, Stream};
pub use report::{
    Artifact, ArtifactKind, EntryReport, JobReport, Medium, OperatorReport, human_bytes,
};
pub use sys::detach;

/// Lines of each operator's stderr kept for the report.
pub const TAIL_LINES: usize = 20;

/// The environment variable that carries the job's identifier to every operator (and so to
/// every process an operator starts, which is how the driver recognises them at the end).
pub const JOB_ID_ENV: &str = "FASTIO_JOB_ID";

/// How long, after SIGKILL, the driver waits for an operator's exit to be reported before
/// it stops waiting and records the operator as lost.
pub const KILL_WAIT: Duration = Duration::from_secs(2);

/// How long, at the end of a job, the driver waits for the operators' output pipes to
/// close before it stops reading them (a process outside the job may hold one).
pub const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// How to run a job.
#[derive(Clone, Debug)]
pub struct JobOptions {
    /// The job's output folder: parent of the `stream` output directories
    /// (`<root>/<operator>/<output>`).
    pub output_root: PathBuf,
    /// Empty `stream` output directories that already hold files (an earlier run's
    /// results). Without it such a directory stops the job before it starts: a run never
    /// deletes earlier results unless told to.
    pub replace_outputs: bool,
    /// Save every shared-memory output as `<save>/<operator>/<entry>.npy` at the end of the
    /// job (never over an existing file).
    pub save: Option<PathBuf>,
    /// The job's payload directory, read by `stream` inputs without `from`.
    pub payload: Option<PathBuf>,
    /// Overrides the definition's time limit.
    pub timeout: Option<Duration>,
    /// How long a stopped operator gets between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// The job's identifier; a new UUID when `None`.
    pub job_id: Option<String>,
    /// The context's warm segment pool bound, in bytes.
    pub pool_bytes: u64,
    /// Directories searched first for operator programs named without a `/` (the
    /// `fastio` command puts its own directory here, so that programs built beside it
    /// are found).
    pub program_dirs: Vec<PathBuf>,
    /// Where each operator's full output (stdout and stderr, lines as read, bytes as
    /// written) goes, as `<operator>.log`; `None` for `<output_root>/logs`.
    pub log_dir: Option<PathBuf>,
    /// Receives every line of every operator's output as it is read (`fastio run` prints
    /// them prefixed with the operator's name).
    pub on_output: Option<OutputSink>,
    /// Stops the job from outside (the `fastio` command triggers it on SIGINT, SIGTERM
    /// and SIGHUP): the job fails as interrupted, its operators are cancelled, and the
    /// report is still built.
    pub cancel: Cancel,
    /// The calling process exists for this job alone, as `fastio run`'s does: every
    /// process it has as a descendant other than the operators belongs to the job, and is
    /// killed and reaped at the end of the job. That catches a process that escaped its
    /// operator's process group and cleared its environment after its ancestors exited
    /// (the driver's process is a child subreaper, so it is re-parented there). Leave it
    /// off in a process that starts children of its own or runs several jobs at a time:
    /// the driver then recognises the job's processes by ancestry, process group and
    /// `FASTIO_JOB_ID`, which such a process can evade.
    pub dedicated_process: bool,
}

/// A handle that interrupts a running job from another thread.
///
/// The first [`Cancel::cancel`] stops the job as a failure would (operators waiting for
/// inputs are released, running ones get SIGTERM, then SIGKILL after the grace period);
/// a second one skips the rest of the grace period (a second Ctrl-C).
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<Mutex<(Option<String>, u32)>>);

impl Cancel {
    /// A handle no one has triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Interrupts the job; `reason` is what the report says (e.g. `SIGINT`).
    pub fn cancel(&self, reason: &str) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        state.0.get_or_insert_with(|| reason.to_owned());
        state.1 += 1;
    }

    /// Why the job was interrupted, if it was.
    pub fn reason(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// The job was interrupted more than once: stop waiting for the grace period.
    fn urgent(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).1 > 1
    }
}

impl JobOptions {
    /// Defaults: outputs under `fastio-output/<pipeline name>`, the definition's time
    /// limit, a 2 s grace period, the default pool.
    pub fn for_pipeline(pipeline: &Pipeline) -> Self {
        Self {
            output_root: PathBuf::from("fastio-output").join(pipeline.name()),
            replace_outputs: false,
            save: None,
            payload: None,
            timeout: None,
            grace: Duration::from_secs(2),
            job_id: None,
            pool_bytes: ServerConfig::default().pool_bytes,
            program_dirs: Vec::new(),
            log_dir: None,
            on_output: None,
            cancel: Cancel::new(),
            dedicated_process: false,
        }
    }
}

/// What stops a job from starting at all (a job that starts and fails is a
/// [`JobReport`] with a failure, not an error).
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// An operator cannot start as a local process (a container image without a command).
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    /// The context server could not start or allocate the pre-allocated entries. The
    /// message says the cause, which is therefore not also its `source()` (a reporter
    /// printing the chain, as `fastio` does, would say it twice).
    #[error("cannot set up the job's context: {0}")]
    Context(fastio_context::ContextError),
    /// The time limit is zero or beyond [`fastio_pipeline::MAX_TIMEOUT`].
    #[error("the time limit must be between 1 ms and {} s", fastio_pipeline::MAX_TIMEOUT.as_secs())]
    Timeout,
    /// A `stream` output directory holds files, and the options do not allow emptying it.
    #[error(
        "{} already holds files (an earlier run's results?): choose another output folder, or allow replacing them",
        path.display()
    )]
    OutputNotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// `fastio run-op` named an operator the definition does not have.
    #[error("the definition has no operator {operator:?}; its operators: {}", known.join(", "))]
    NoSuchOperator {
        /// The name given.
        operator: String,
        /// The definition's operators.
        known: Vec<String>,
    },
    /// An input given to an operator run alone is missing, unknown or unusable.
    #[error("input {input:?}: {reason}")]
    Input {
        /// The input's name.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// Operators of a job they must join (`fastio k8s serve`) do not use the pipeline
    /// driver, so they could not join it.
    #[error(
        "{} cannot join the job: nothing shows that {} the pipeline driver (no shared-memory \
         entries, no `uses-driver: true`). In a Pod every operator joins the job from its \
         container; a plain program that only reads and writes folders cannot be held \
         until its inputs are ready. Set `uses-driver: true` for an operator whose program \
         uses the fastio or Clara driver, or run the pipeline with `fastio run` in one container",
        operators.join(", "),
        if operators.len() == 1 { "it uses" } else { "they use" }
    )]
    CannotJoin {
        /// The operators.
        operators: Vec<String>,
    },
    /// A directory could not be prepared.
    #[error("cannot prepare {path}: {cause}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why (in the message, so not the error's `source()`).
        cause: std::io::Error,
    },
}

impl From<fastio_context::ContextError> for DriverError {
    fn from(e: fastio_context::ContextError) -> Self {
        Self::Context(e)
    }
}

/// Where an operator is in its life-cycle, as the driver sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperatorState {
    /// The process is starting; it has not joined the job yet.
    Starting,
    /// Running prepare.
    Preparing,
    /// Prepared; waiting for upstream operators to finish execute.
    Waiting,
    /// Running execute.
    Executing,
    /// Running cleanup.
    CleaningUp,
    /// Cleanup done; the process is exiting.
    Exiting,
    /// Went through its whole life-cycle (also when the job failed elsewhere after its
    /// cleanup ended: its outputs are complete).
    Succeeded,
    /// Failed: why.
    Failed(String),
    /// Stopped by the driver before its life-cycle ended, because the job failed
    /// elsewhere, ran out of time while this one only waited, or was interrupted; says
    /// where it was (`while waiting for inputs`, `during execute`, ...).
    Cancelled(String),
}

impl OperatorState {
    /// The process is done, one way or another.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            OperatorState::Succeeded | OperatorState::Failed(_) | OperatorState::Cancelled(_)
        )
    }

    /// Where an operator in this state was when it was cancelled.
    fn cancelled_where(&self) -> String {
        match self {
            OperatorState::Starting => "before joining the job".into(),
            OperatorState::Preparing => "during prepare".into(),
            OperatorState::Waiting => "while waiting for inputs".into(),
            OperatorState::Executing => "during execute".into(),
            OperatorState::CleaningUp => "during cleanup".into(),
            OperatorState::Exiting => "while exiting".into(),
            final_state => final_state.to_string(),
        }
    }
}

impl std::fmt::Display for OperatorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OperatorState::Starting => f.write_str("starting"),
            OperatorState::Preparing => f.write_str("preparing"),
            OperatorState::Waiting => f.write_str("waiting for inputs"),
            OperatorState::Executing => f.write_str("executing"),
            OperatorState::CleaningUp => f.write_str("cleaning up"),
            OperatorState::Exiting => f.write_str("exiting"),
            OperatorState::Succeeded => f.write_str("finished"),
            OperatorState::Failed(why) => write!(f, "FAILED: {why}"),
            OperatorState::Cancelled(when) => write!(f, "cancelled {when}"),
        }
    }
}

/// A snapshot of the job, for progress displays.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Time since the job started.
    pub elapsed: Duration,
    /// Each operator, in dependency order: name, state, time in that state so far.
    pub operators: Vec<(String, OperatorState, Duration)>,
}

struct Operator {
    name: String,
    kind: OperatorKind,
    kind_reason: KindReason,
    /// The process was started (or its start was tried).
    launched: bool,
    /// `pid` leads its own process group (the driver started it so), which signals reach.
    group: bool,
    /// It took its stage from elsewhere (an operator that joins), so it has a connection
    /// whose closing is its exit.
    attached: bool,
    /// Execute finished successfully: for a plain program, it exited 0.
    executed: bool,
    state: OperatorState,
    state_since: Instant,
    pid: Option<i32>,
    started: Instant,
    ended: Option<Instant>,
    execute_started: Option<Instant>,
    execute_ended: Option<Instant>,
    cleaned_up: bool,
    joined: bool,
    // Why the operator failed, as it reported or as the time limit found it.
    phase_failure: Option<String>,
    // The operator itself reported a failed phase.
    reported_failure: bool,
    // Where it was when the driver stopped the job.
    cancelled_in: Option<String>,
    exit: Option<String>,
    reclaimed: Vec<ReclaimedHandle>,
    stderr: output::Tail,
    readers: Vec<output::Reader>,
    /// The exited process, not yet reaped: while it is a zombie its pid cannot be reused,
    /// so signalling the process group `pid` reaches only what the operator started.
    exited: Option<ExitedChild>,
}

/// An operator's process that has exited and is not reaped yet. Dropping it reaps it,
/// whichever path drops it (the end of the job, or an exit reported after the driver
/// stopped listening), so a caller that runs many jobs is left no zombie.
struct ExitedChild(Child);

impl Drop for ExitedChild {
    fn drop(&mut self) {
        use rustix::process::{WaitId, WaitIdOptions, waitid};
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            // It has exited (`wait_unreaped` said so): this does not wait. Its pid stays
            // ours until this call, so it cannot name another process.
            let _ = waitid(
                WaitId::Pid(pid),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
            );
        }
    }
}

impl Operator {
    fn set(&mut self, state: OperatorState) {
        if self.state != state {
            self.state = state;
            self.state_since = Instant::now();
        }
    }
}

enum Event {
    Job(JobEvent),
    /// The operator's process exited; it is handed back unreaped (see [`wait_unreaped`]).
    Exited(usize, std::io::Result<ExitStatus>, ExitedChild),
}

/// How a job runs whose operators the driver does not start: they join it from elsewhere
/// (the containers of a Kubernetes Pod, which share a network namespace) with the job's
/// secret. See [`serve_job`].
#[derive(Clone)]
pub struct JoinOptions {
    /// The abstract socket name the job's context server listens at (without the `@`).
    pub socket: String,
    /// The secret joining operators present (at least 16 characters).
    pub secret: String,
    /// How long, from the start of the job, every operator has to join; one that has not
    /// joined by then fails the job.
    pub join_wait: Duration,
    /// The job's payload folder as the operators see it, for `stream` inputs without
    /// `from` (one payload of many); `None` for the paths they declare.
    pub payload: Option<PathBuf>,
}

impl std::fmt::Debug for JoinOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinOptions")
            .field("socket", &self.socket)
            .field("secret", &"<hidden>")
            .field("join_wait", &self.join_wait)
            .field("payload", &self.payload)
            .finish()
    }
}

/// Runs one job of `pipeline` whose operators join it rather than being started by the
/// driver (`fastio k8s serve`, the context server of a Kubernetes Pod): the job's server
/// listens at [`JoinOptions::socket`], every operator must join within
/// [`JoinOptions::join_wait`], and from then on the job runs as [`run_job`] runs it:
/// pre-allocation, the life-cycle in dependency order, the first failure aborting the
/// job, the time limit, references reclaimed after execute, results saved, the report.
///
/// What differs, because the operators are other containers' processes: an operator's
/// exit is the closing of its connection (its exit status is its container's); its
/// `stream` folders are the paths it declares (where the Pod mounts its volumes), so
/// the driver neither creates nor empties them; its output is its container's log; and
/// it can be signalled (SIGTERM, then SIGKILL, when the job stops) only when the server
/// sees its process, i.e. when the Pod shares one process namespace
/// (`shareProcessNamespace`). Operators that do not use the pipeline driver cannot join
/// and are refused before anything starts.
pub fn serve_job(
    pipeline: &Pipeline,
    options: &JobOptions,
    join: &JoinOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<JobReport, DriverError> {
    run(pipeline, None, Some(join), options, progress)
}

/// Runs one job of `pipeline` to the end. `progress` is called at every change of an
/// operator's state and about every 200 ms.
pub fn run_job(
    pipeline: &Pipeline,
    options: &JobOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<JobReport, DriverError> {
    run(pipeline, None, None, options, progress)
}

/// Runs operator `operator` of `pipeline` alone, as a job of one operator
/// (`fastio run-op`): its shared-memory inputs hold the arrays of the `.npy` files given
/// for them, its `stream` inputs read the folders given for them (or empty ones), and it
/// does not wait for upstream operators. `inputs` maps input names to files or folders;
/// every shared-memory input needs one. Set [`JobOptions::save`] to keep its outputs.
pub fn run_operator(
    pipeline: &Pipeline,
    operator: &str,
    inputs: &[(String, PathBuf)],
    options: &JobOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<JobReport, DriverError> {
    let index = pipeline
        .position(operator)
        .ok_or_else(|| DriverError::NoSuchOperator {
            operator: operator.to_owned(),
            known: pipeline
                .operators()
                .iter()
                .map(|o| o.name().to_owned())
                .collect(),
        })?;
    run(pipeline, Some((index, inputs)), None, options, progress)
}

fn run(
    pipeline: &Pipeline,
    alone: Option<(usize, &[(String, PathBuf)])>,
    joining: Option<&JoinOptions>,
    options: &JobOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<JobReport, DriverError> {
    let kinds = match joining {
        None => {
            pipeline.check_runs_locally()?;
            operator_kinds(pipeline, options)
        }
        Some(_) => joining_kinds(pipeline)?,
    };
    let timeout = options.timeout.unwrap_or_else(|| pipeline.timeout());
    if timeout.is_zero() || timeout > fastio_pipeline::MAX_TIMEOUT {
        return Err(DriverError::Timeout);
    }
    let job_id = options
        .job_id
        .clone()
        .unwrap_or_else(fastio_operator::new_job_id);
    // Operators run in the definition's folder: the paths they are given must not depend
    // on it.
    let absolute = |path: &Path| {
        std::path::absolute(path).map_err(|cause| DriverError::Directory {
            path: path.to_owned(),
            cause,
        })
    };
    let output_root = absolute(&options.output_root)?;
    let layout = DiskLayout {
        payload: match &options.payload {
            Some(payload) => absolute(payload)?,
            None => output_root.join("payload"),
        },
        output_root,
    };
    let mut plan = job_plan(pipeline, &job_id, &layout);
    // Which operators of the definition run, in stage order; data for entries.
    let (definitions, filled) = match alone {
        None => (
            (0..pipeline.operators().len()).collect::<Vec<_>>(),
            Vec::new(),
        ),
        Some((index, inputs)) => {
            let (single, filled) = alone::plan(plan, index, inputs)?;
            plan = single;
            (vec![index], filled)
        }
    };
    let save_dir = options.save.as_deref().map(absolute).transpose()?;
    // What the report lists as left on disk: every stream output locally; for joining
    // operators, those on the output volume (read by no one), which this process sees
    // at the layout's paths.
    let mut listed = plan.clone();
    match joining {
        None => prepare_directories(&plan, options.replace_outputs)?,
        Some(join) => {
            for (stage, op) in listed.stages.iter_mut().zip(pipeline.operators()) {
                stage
                    .outputs
                    .retain(|out| pipeline.readers(op.name(), &out.name).is_empty());
            }
            container_paths(pipeline, &mut plan, join.payload.as_deref());
            std::fs::create_dir_all(&layout.output_root).map_err(|cause| {
                DriverError::Directory {
                    path: layout.output_root.clone(),
                    cause,
                }
            })?;
        }
    }

    let (events, inbox) = mpsc::channel();
    let job_events = events.clone();
    let job = Arc::new(Job::new(plan.clone(), move |e| {
        let _ = job_events.send(Event::Job(e));
    }));
    if save_dir.is_some() {
        // Saved at the end: every entry's memory stays until then.
        job.keep_entry_memory();
    }
    let config = ServerConfig {
        pool_bytes: options.pool_bytes,
        ..ServerConfig::default()
    };
    let server = match joining {
        None => fastio_job::host_with_inputs(config, job.clone(), filled)?,
        Some(join) => fastio_job::host_at(
            config,
            job.clone(),
            &join.socket,
            fastio_context::JobSecret(join.secret.clone()),
        )?,
    };

    let start = Instant::now();
    let log_dir = options
        .log_dir
        .clone()
        .unwrap_or_else(|| layout.output_root.join("logs"));
    // Operators that join write to their containers' logs, not to pipes of ours.
    if joining.is_none() {
        std::fs::create_dir_all(&log_dir).map_err(|cause| DriverError::Directory {
            path: log_dir.clone(),
            cause,
        })?;
    }
    let mut escapees = reap::Escapees::new(&job_id, options.dedicated_process);
    let launcher = Launcher {
        pipeline,
        options,
        plan: &plan,
        server: &server,
        log_dir: &log_dir,
        definitions: &definitions,
        events,
    };
    let mut operators: Vec<Operator> = definitions
        .iter()
        .map(|&d| (&pipeline.operators()[d], kinds[d].clone()))
        .map(|(op, (kind, kind_reason))| Operator {
            name: op.name().to_owned(),
            kind,
            kind_reason,
            // Operators that join are started by whoever runs their containers.
            launched: joining.is_some(),
            group: false,
            attached: false,
            executed: false,
            state: OperatorState::Starting,
            state_since: start,
            pid: None,
            started: start,
            ended: None,
            execute_started: None,
            execute_ended: None,
            cleaned_up: false,
            joined: false,
            phase_failure: None,
            reported_failure: false,
            cancelled_in: None,
            exit: None,
            reclaimed: Vec::new(),
            stderr: output::Tail::default(),
            readers: Vec::new(),
            exited: None,
        })
        .collect();
    let mut failure: Option<(String, String)> = None;
    for (index, operator) in operators.iter_mut().enumerate() {
        if joining.is_some() {
            continue;
        }
        // A plain program waits for its inputs before it starts at all.
        if operator.kind == OperatorKind::Plain && !plan.stages[index].upstream.is_empty() {
            operator.set(OperatorState::Waiting);
        } else {
            launcher.launch(index, operator, &mut failure);
        }
    }
    // `fastio ps` and `fastio ls` find the job through its record; a job runs without one
    // if the runtime folder cannot be used (it is only a window onto the job).
    let record = publish_record(pipeline, &plan, &server, &layout, &operators);

    let mut stop_sent: Option<Instant> = None;
    // When SIGKILL went to every operator still running (end of grace, or time limit).
    let mut kill_sent: Option<Instant> = None;
    let mut last_progress = Instant::now() - Duration::from_secs(1);
    let mut last_watch = Instant::now();
    let deadline = start + timeout;
    loop {
        if let Some(reason) = options.cancel.reason() {
            failure.get_or_insert_with(|| (String::new(), format!("interrupted by {reason}")));
        }
        if let (Some((name, why)), None) = (&failure, stop_sent) {
            job.abort(&if name.is_empty() {
                format!("job stopped: {why}")
            } else {
                format!("operator {name} failed: {why}")
            });
            stop_sent = Some(Instant::now());
            // Plain programs still waiting for their inputs never start.
            for op in operators.iter_mut().filter(|o| !o.launched) {
                op.ended = Some(Instant::now());
                op.set(OperatorState::Cancelled("before it started".into()));
            }
            for op in operators.iter_mut().filter(|o| !o.state.is_final()) {
                op.cancelled_in = Some(match op.state {
                    OperatorState::CleaningUp if op.phase_failure.is_none() => {
                        "during cleanup (its execute had finished)".to_owned()
                    }
                    _ => op.state.cancelled_where(),
                });
                // An operator that reported its own failure, or whose execute has
                // finished, is left to finish cleanup within the grace period (its work
                // is done or its failure already told); the others get SIGTERM now.
                if !op.reported_failure && op.execute_ended.is_none() {
                    signal(op, rustix::process::Signal::TERM);
                }
            }
        }
        if let Some(join) = joining.filter(|j| failure.is_none() && start.elapsed() >= j.join_wait)
        {
            let late: Vec<String> = operators
                .iter_mut()
                .filter(|o| !o.joined && !o.state.is_final())
                .map(|o| {
                    o.phase_failure = Some(format!(
                        "did not join the job within {} (is its container running, and \
                         does its program use the pipeline driver?)",
                        report::seconds(join.join_wait)
                    ));
                    o.name.clone()
                })
                .collect();
            if !late.is_empty() {
                failure = Some((
                    late.join(", "),
                    format!(
                        "did not join the job within {}",
                        report::seconds(join.join_wait)
                    ),
                ));
                continue;
            }
        }
        // An operator that joins and has not taken its stage yet cannot be stopped: once
        // the job stops, it is done with (it would be refused if it came later).
        if joining.is_some() && stop_sent.is_some() {
            for op in operators
                .iter_mut()
                .filter(|o| o.pid.is_none() && !o.attached && !o.state.is_final())
            {
                op.ended = Some(Instant::now());
                let state = match &op.phase_failure {
                    Some(why) => OperatorState::Failed(why.clone()),
                    None => OperatorState::Cancelled("before joining the job".into()),
                };
                op.set(state);
            }
        }
        let now = Instant::now();
        if now >= deadline && failure.is_none() {
            let limit = report::seconds(timeout);
            // Operators only waiting for their inputs are not to blame: they are
            // cancelled like bystanders.
            let running = operators
                .iter_mut()
                .filter(|o| !o.state.is_final() && o.launched && o.state != OperatorState::Waiting)
                .map(|o| {
                    o.phase_failure = Some(format!(
                        "still {} when the job's time limit ({limit}) was reached",
                        o.state
                    ));
                    o.name.clone()
                })
                .collect::<Vec<_>>();
            failure = Some((
                running.join(", "),
                format!("overran the job's time limit of {limit}"),
            ));
            continue;
        }
        // The grace period ends early at the time limit, which holds whatever happened
        // before it.
        if kill_sent.is_none()
            && (stop_sent.is_some_and(|s| s.elapsed() >= options.grace || options.cancel.urgent())
                || now >= deadline)
        {
            kill_sent = Some(now);
        }
        if kill_sent.is_some() {
            for op in operators.iter().filter(|o| !o.state.is_final()) {
                signal(op, rustix::process::Signal::KILL);
            }
        }
        // The last bound: an operator whose exit is not reported within KILL_WAIT of
        // SIGKILL (a process the kernel cannot kill) is given up on, so the driver ends.
        if kill_sent.is_some_and(|k| k.elapsed() >= KILL_WAIT) {
            for op in operators.iter_mut().filter(|o| !o.state.is_final()) {
                let why = match op.pid {
                    Some(_) => format!(
                        "did not exit within {} of SIGKILL",
                        report::seconds(KILL_WAIT)
                    ),
                    // An operator in another container whose process the server cannot
                    // see: the Pod's deadline ends it.
                    None => format!(
                        "still connected {} after the job stopped, and its process cannot \
                         be signalled from here (share the Pod's process namespace)",
                        report::seconds(stop_sent.map_or(KILL_WAIT, |s| s.elapsed()))
                    ),
                };
                op.ended = Some(Instant::now());
                op.set(OperatorState::Failed(why));
            }
        }
        if stop_sent.is_none() {
            launcher.launch_ready(&mut operators, &mut failure);
        }
        if operators.iter().all(|o| o.state.is_final()) {
            break;
        }
        if joining.is_none() && last_watch.elapsed() >= Duration::from_secs(1) {
            escapees.watch(&running_pids(&operators), &started_pids(&operators));
            last_watch = Instant::now();
        }
        // The job keeps a sender for as long as it lives, so the channel never
        // disconnects here: an error is a timeout.
        let changed = match inbox.recv_timeout(Duration::from_millis(100)) {
            Ok(event) => {
                handle(
                    event,
                    &mut operators,
                    &mut failure,
                    stop_sent.is_some(),
                    &job,
                );
                true
            }
            Err(_) => false,
        };
        if changed || last_progress.elapsed() >= Duration::from_millis(200) {
            progress(&snapshot(&operators, start));
            last_progress = Instant::now();
        }
    }
    progress(&snapshot(&operators, start));
    // Whatever an operator left running in its process group (a background child still
    // holding its stdout, say) goes with the job, and so does what escaped the group.
    // Operators that joined are not the driver's children: their pids, once they have
    // left, may already be another process's.
    if joining.is_none() {
        for op in &operators {
            signal(op, rustix::process::Signal::KILL);
        }
        escapees.kill_all(
            &running_pids(&operators),
            &started_pids(&operators),
            KILL_WAIT,
        );
    }
    // Only now, with every group signalled, may the operators' pids be reused.
    for op in &mut operators {
        drop(op.exited.take());
    }
    drop(escapees);
    let readers = operators
        .iter_mut()
        .flat_map(|o| o.readers.drain(..))
        .collect();
    output::finish(readers, OUTPUT_DRAIN);
    let (saved, not_saved) = match &save_dir {
        Some(dir) => results::save(&plan, &server, &operators, dir),
        None => Default::default(),
    };
    let mut report = report::build(pipeline, &definitions, &plan, &server, &layout, &operators);
    report.failure = failure;
    report.elapsed = start.elapsed();
    report.left = results::left_behind(&listed, &layout, saved);
    report.not_saved = not_saved;
    drop(record);
    server.close();
    Ok(report)
}

fn publish_record(
    pipeline: &Pipeline,
    plan: &JobPlan,
    server: &Server,
    layout: &DiskLayout,
    operators: &[Operator],
) -> Option<records::RecordGuard> {
    let pid = std::process::id();
    let record = records::JobRecord {
        job_id: plan.job_id.clone(),
        pipeline: pipeline.name().to_owned(),
        definition: std::path::absolute(pipeline.origin()).map_or_else(
            |_| pipeline.origin().to_owned(),
            |p| p.display().to_string(),
        ),
        driver_pid: pid,
        driver_start: records::process_start(pid).unwrap_or(0),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        output_root: layout.output_root.display().to_string(),
        context: server.address().to_owned(),
        operators: operators
            .iter()
            .map(|o| records::RecordedOperator {
                name: o.name.clone(),
                pid: o.pid.map(|p| p as u32),
            })
            .collect(),
    };
    records::publish(&record)
        .inspect_err(|e| tracing::warn!("the job cannot be listed by `fastio ps`: {e}"))
        .ok()
}

/// The pids of every operator started (their process groups are the job's).
fn started_pids(operators: &[Operator]) -> Vec<i32> {
    operators.iter().filter_map(|o| o.pid).collect()
}

/// The pids of the operators whose exit has not been seen.
fn running_pids(operators: &[Operator]) -> Vec<i32> {
    operators
        .iter()
        .filter(|o| o.ended.is_none())
        .filter_map(|o| o.pid)
        .collect()
}

fn snapshot(operators: &[Operator], start: Instant) -> Progress {
    Progress {
        elapsed: start.elapsed(),
        operators: operators
            .iter()
            .map(|o| {
                let since = match o.ended {
                    Some(end) if o.state.is_final() => end.duration_since(o.started),
                    _ => o.state_since.elapsed(),
                };
                (o.name.clone(), o.state.clone(), since)
            })
            .collect(),
    }
}

fn handle(
    event: Event,
    operators: &mut [Operator],
    failure: &mut Option<(String, String)>,
    stopping: bool,
    job: &Job,
) {
    let mut fail = |name: &str, why: String| {
        failure.get_or_insert_with(|| (name.to_owned(), why));
    };
    match event {
        Event::Job(JobEvent { stage, kind, at }) => {
            let op = &mut operators[stage];
            // Final states are final: an event that arrives after the exit (from a process
            // the operator's program left behind, say, or the end of execute the driver
            // reports itself for a plain program that exited 0) changes nothing but the
            // record of reclaimed references.
            if op.state.is_final() {
                if let JobEventKind::Reclaimed(handles) = kind {
                    op.reclaimed.extend(handles);
                }
                return;
            }
            match kind {
                JobEventKind::Joined => {
                    op.joined = true;
                    op.set(OperatorState::Preparing);
                }
                JobEventKind::Executing => {
                    op.execute_started = Some(at);
                    op.set(OperatorState::Executing);
                }
                JobEventKind::Reclaimed(handles) => op.reclaimed.extend(handles),
                JobEventKind::Attached { pid } => {
                    op.attached = true;
                    op.pid = pid;
                }
                // Its connection closed: for an operator that joined, its exit.
                JobEventKind::Left => {
                    op.ended = Some(Instant::now());
                    op.exit = Some("left the job (its connection closed)".into());
                    // No exit status reaches the server: the life-cycle it went through
                    // is all there is to judge by.
                    let status = if op.executed && op.cleaned_up {
                        Ok(())
                    } else {
                        Err("left the job before finishing its life-cycle".to_owned())
                    };
                    ended(op, stage, status, &mut fail, stopping, job);
                }
                JobEventKind::Finished { phase, failure } => {
                    if phase == Phase::Execute && failure.is_none() {
                        op.executed = true;
                    }
                    if let Some(why) = failure {
                        let why = format!("{phase} failed: {why}");
                        op.phase_failure.get_or_insert_with(|| why.clone());
                        op.reported_failure = true;
                        fail(&op.name, why);
                    }
                    match phase {
                        Phase::Prepare => op.set(OperatorState::Waiting),
                        Phase::Execute => {
                            op.execute_ended = Some(at);
                            op.set(OperatorState::CleaningUp);
                        }
                        Phase::Cleanup => {
                            op.cleaned_up = true;
                            op.set(OperatorState::Exiting);
                        }
                    }
                }
            }
        }
        Event::Exited(stage, status, child) => {
            let op = &mut operators[stage];
            op.exited = Some(child);
            if op.state.is_final() {
                // Given up on after SIGKILL: the record stays as it was written.
                return;
            }
            op.ended = Some(Instant::now());
            let status = match status {
                Ok(status) => describe_exit(status),
                Err(e) => Err(format!("could not be waited for: {e}")),
            };
            op.exit = Some(match &status {
                Ok(()) => "exit status 0".to_owned(),
                Err(why) => why.clone(),
            });
            ended(op, stage, status, &mut fail, stopping, job);
        }
    }
}

/// The end of operator `op` (stage `stage`): its process exited, or, for one that joined,
/// its connection closed. Decides its final state, and whether it fails the job.
fn ended(
    op: &mut Operator,
    stage: usize,
    ended: Result<(), String>,
    fail: &mut impl FnMut(&str, String),
    stopping: bool,
    job: &Job,
) {
    let plain = !op.joined && op.kind == OperatorKind::Plain;
    if plain {
        // A plain program's whole run is its execute.
        op.execute_ended = op.ended;
    }
    let outcome = match (ended, &op.phase_failure) {
        (_, Some(why)) => Err(why.clone()),
        (Err(why), None) => Err(why),
        (Ok(()), None) if plain => {
            // Its outputs are complete: downstream operators waiting in the
            // context may execute, and plain ones start.
            op.executed = true;
            job.finished(stage, Phase::Execute, None);
            Ok(())
        }
        (Ok(()), None) if !op.joined => Err(format!(
            "exited without joining the job, but was started as a program that uses the pipeline driver ({}); for a plain program, set uses-driver: false",
            op.kind_reason
        )),
        (Ok(()), None) if !op.cleaned_up => Err("exited before finishing its life-cycle".into()),
        (Ok(()), None) => Ok(()),
    };
    match outcome {
        Ok(()) => op.set(OperatorState::Succeeded),
        // Its execute and cleanup were done when the driver stopped the job and
        // killed it on its way out: it finished.
        Err(_)
            if stopping
                && op.phase_failure.is_none()
                && op.execute_ended.is_some()
                && op.cleaned_up =>
        {
            op.set(OperatorState::Succeeded);
        }
        // Stopped by the driver for another operator's failure, the time limit or
        // an interruption.
        Err(_) if stopping && op.phase_failure.is_none() => {
            let when = op
                .cancelled_in
                .clone()
                .unwrap_or_else(|| op.state.cancelled_where());
            op.set(OperatorState::Cancelled(when));
        }
        Err(why) => {
            fail(&op.name, why.clone());
            op.set(OperatorState::Failed(why));
        }
    }
}

fn describe_exit(status: ExitStatus) -> Result<(), String> {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return Ok(());
    }
    if let Some(signal) = status.signal() {
        const NAMES: [(i32, &str); 12] = [
            (1, "SIGHUP"),
            (2, "SIGINT"),
            (3, "SIGQUIT"),
            (4, "SIGILL"),
            (6, "SIGABRT"),
            (7, "SIGBUS"),
            (8, "SIGFPE"),
            (9, "SIGKILL"),
            (11, "SIGSEGV"),
            (13, "SIGPIPE"),
            (14, "SIGALRM"),
            (15, "SIGTERM"),
        ];
        let core = if status.core_dumped() {
            ", core dumped"
        } else {
            ""
        };
        return Err(match NAMES.iter().find(|(n, _)| *n == signal) {
            Some((_, name)) => format!("killed by signal {signal} ({name}{core})"),
            None => format!("killed by signal {signal}{core}"),
        });
    }
    Err(format!(
        "exited with status {}",
        status.code().unwrap_or(-1)
    ))
}

/// Waits for `child` to exit and returns its status, leaving it a zombie (`WNOWAIT`): the
/// driver signals the operator's process group by the operator's pid until the end of the
/// job, and a reaped pid could by then belong to another process's group.
fn wait_unreaped(child: &Child) -> std::io::Result<ExitStatus> {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    use std::os::unix::process::ExitStatusExt;
    let pid = rustix::process::Pid::from_raw(child.id() as i32)
        .ok_or_else(|| std::io::Error::other("no pid"))?;
    loop {
        match waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        ) {
            Ok(Some(status)) => {
                // Encoded as wait(2) encodes it, which is what ExitStatus holds.
                let raw = match (status.exit_status(), status.terminating_signal()) {
                    (Some(code), _) => (code & 0xff) << 8,
                    (None, Some(signal)) => signal | if status.dumped() { 0x80 } else { 0 },
                    // Not an exit (no such report is asked for): look again shortly.
                    (None, None) => {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                return Ok(ExitStatus::from_raw(raw));
            }
            Ok(None) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn signal(op: &Operator, signal: rustix::process::Signal) {
    if let Some(pid) = op.pid.and_then(rustix::process::Pid::from_raw) {
        if op.group {
            // The process group, so that the operator's own children go too.
            let _ = rustix::process::kill_process_group(pid, signal);
        } else if op.ended.is_none() {
            // An operator that joined from elsewhere, still connected (so its pid is
            // still its own).
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

fn prepare_directories(plan: &JobPlan, replace: bool) -> Result<(), DriverError> {
    let dir_error = |path: &Path, cause| DriverError::Directory {
        path: path.to_owned(),
        cause,
    };
    // Checked for every output before any is emptied: a refused job touches nothing.
    let outputs = plan.stages.iter().flat_map(|s| &s.outputs);
    for out in outputs.clone() {
        let path = Path::new(&out.path);
        let holds_files = match std::fs::read_dir(path) {
            Ok(mut entries) => entries.next().is_some(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(dir_error(path, e)),
        };
        if holds_files && !replace {
            return Err(DriverError::OutputNotEmpty {
                path: path.to_owned(),
            });
        }
    }
    for out in outputs {
        let path = Path::new(&out.path);
        match std::fs::remove_dir_all(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(dir_error(path, e)),
        }
        std::fs::create_dir_all(path).map_err(|e| dir_error(path, e))?;
    }
    for stage in &plan.stages {
        for input in &stage.inputs {
            let path = Path::new(&input.path);
            std::fs::create_dir_all(path).map_err(|e| dir_error(path, e))?;
        }
    }
    Ok(())
}

/// Finds an operator's program: a path with `/` is relative to the definition's folder;
/// a bare name is looked up in `program_dirs`, then in `PATH` (by the operating system).
fn resolve_program(pipeline: &Pipeline, options: &JobOptions, program: &str) -> PathBuf {
    if program.contains('/') {
        return definition_dir(pipeline).join(program);
    }
    options
        .program_dirs
        .iter()
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(program))
}

/// Starts operator processes.
struct Launcher<'a> {
    pipeline: &'a Pipeline,
    options: &'a JobOptions,
    plan: &'a JobPlan,
    server: &'a Server,
    log_dir: &'a Path,
    /// Stage index -> index of the operator in the definition.
    definitions: &'a [usize],
    events: mpsc::Sender<Event>,
}

impl Launcher<'_> {
    /// Starts the operator's process; a start that fails fails the job.
    fn launch(
        &self,
        index: usize,
        operator: &mut Operator,
        failure: &mut Option<(String, String)>,
    ) {
        operator.launched = true;
        operator.started = Instant::now();
        match spawn(
            self.pipeline,
            self.options,
            self.plan,
            self.server,
            self.log_dir,
            (self.definitions[index], index),
            operator,
        ) {
            Ok(child) => {
                operator.pid = Some(child.id() as i32);
                operator.group = true;
                if operator.kind == OperatorKind::Plain {
                    operator.execute_started = Some(operator.started);
                    operator.set(OperatorState::Executing);
                }
                let events = self.events.clone();
                thread::spawn(move || {
                    let status = wait_unreaped(&child);
                    // Sent after the job ended, it is dropped, and so reaped.
                    let _ = events.send(Event::Exited(index, status, ExitedChild(child)));
                });
            }
            Err(e) => {
                operator.ended = Some(Instant::now());
                let why = format!("could not start: {e}");
                failure.get_or_insert_with(|| (operator.name.clone(), why.clone()));
                operator.set(OperatorState::Failed(why));
            }
        }
    }

    /// Starts every waiting plain program whose upstream operators have all finished
    /// execute.
    fn launch_ready(&self, operators: &mut [Operator], failure: &mut Option<(String, String)>) {
        for index in 0..operators.len() {
            let ready = !operators[index].launched
                && self.plan.stages[index]
                    .upstream
                    .iter()
                    .all(|&u| operators[u].executed);
            if ready {
                self.launch(index, &mut operators[index], failure);
            }
        }
    }
}

/// How each operator of `pipeline` takes part in a job run with `options`, and why; in
/// [`Pipeline::operators`] order. See [`OperatorKind`].
pub fn operator_kinds(
    pipeline: &Pipeline,
    options: &JobOptions,
) -> Vec<(OperatorKind, KindReason)> {
    let mut seen = kind::Seen::default();
    let cwd = definition_dir(pipeline);
    (0..pipeline.operators().len())
        .map(|index| {
            let program = pipeline.operators()[index]
                .command()
                .map(|argv| resolve_program(pipeline, options, &argv[0]))
                .unwrap_or_default();
            kind::operator_kind(pipeline, index, &program, &cwd, &mut seen)
        })
        .collect()
}

/// Whether every operator of `pipeline` can join a job served by [`serve_job`]: each must
/// use the pipeline driver, as the definition alone shows (`uses-driver: true`, or
/// shared-memory entries); [`DriverError::CannotJoin`] names those that do not.
pub fn check_joinable(pipeline: &Pipeline) -> Result<(), DriverError> {
    joining_kinds(pipeline).map(drop)
}

/// How each operator of a job it must join takes part: the definition alone says, since
/// the programs are in images the driver does not see (`uses-driver`, else shared-memory
/// entries). An operator that would be a plain program cannot join: refused.
fn joining_kinds(pipeline: &Pipeline) -> Result<Vec<(OperatorKind, KindReason)>, DriverError> {
    let mut plain = Vec::new();
    let kinds = pipeline
        .operators()
        .iter()
        .map(|op| match op.uses_driver() {
            Some(true) => (OperatorKind::Driver, KindReason::Declared),
            Some(false) => {
                plain.push(op.name().to_owned());
                (OperatorKind::Plain, KindReason::Declared)
            }
            None if op.has_shared_memory() => (OperatorKind::Driver, KindReason::SharedMemory),
            None => {
                plain.push(op.name().to_owned());
                (OperatorKind::Plain, KindReason::NoMention)
            }
        })
        .collect();
    if plain.is_empty() {
        Ok(kinds)
    } else {
        Err(DriverError::CannotJoin { operators: plain })
    }
}

/// The `stream` folders of operators that join, as they see them: each at the path its
/// definition declares (where the Pod mounts the volume), the payload inputs at `payload`
/// when given.
fn container_paths(pipeline: &Pipeline, plan: &mut JobPlan, payload: Option<&Path>) {
    use fastio_pipeline::EntryKind;
    let declared = |entries: &[fastio_pipeline::Entry], name: &str| {
        entries.iter().find_map(|e| match e.kind() {
            EntryKind::Stream { path, .. } if e.name() == name => {
                Some((path.to_string_lossy().into_owned(), e.from().is_none()))
            }
            _ => None,
        })
    };
    for (stage, op) in plan.stages.iter_mut().zip(pipeline.operators()) {
        for out in &mut stage.outputs {
            if let Some((path, _)) = declared(op.outputs(), &out.name) {
                out.path = path;
            }
        }
        for input in &mut stage.inputs {
            match (declared(op.inputs(), &input.name), payload) {
                (Some((_, true)), Some(payload)) => {
                    input.path = payload.to_string_lossy().into_owned();
                }
                (Some((path, _)), _) => input.path = path,
                (None, _) => {}
            }
        }
    }
}

/// The folder of the definition, absolute: operators start there, so that relative paths
/// in their commands read as they do in the definition.
fn definition_dir(pipeline: &Pipeline) -> PathBuf {
    let origin =
        std::path::absolute(pipeline.origin()).unwrap_or_else(|_| pipeline.origin().into());
    origin.parent().unwrap_or(Path::new("/")).to_owned()
}

#[allow(clippy::too_many_arguments)]
fn spawn(
    pipeline: &Pipeline,
    options: &JobOptions,
    plan: &JobPlan,
    server: &Server,
    log_dir: &Path,
    (definition, index): (usize, usize),
    operator: &mut Operator,
) -> Result<Child, String> {
    let definition = &pipeline.operators()[definition];
    let stage = &plan.stages[index];
    let argv = definition.command().ok_or("no command to run it locally")?;
    let program = resolve_program(pipeline, options, &argv[0]);
    let log_path = log_dir.join(format!("{}.log", operator.name));
    let log = File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let socket = server.operator_socket(index).map_err(|e| e.to_string())?;
    let mut command = Command::new(&program);
    command
        .args(&argv[1..])
        .envs(definition.variables())
        .env(
            CONTEXT_ENV,
            format!("fd:{}", std::os::fd::AsRawFd::as_raw_fd(&socket)),
        )
        .env(CONTEXT_ADDRESS_ENV, server.address())
        .env(INPUT_PATHS_ENV, format_paths(&stage.inputs))
        .env(OUTPUT_PATHS_ENV, format_paths(&stage.outputs))
        .env(JOB_ID_ENV, &plan.job_id)
        .env(fastio_operator::STAGE_ENV, &stage.name)
        .env_remove(fastio_operator::PIPELINE_ENV)
        // Relative paths in the command (a script, a data file) read as they do in the
        // definition, whatever folder `fastio run` was started from.
        .current_dir(definition_dir(pipeline))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    sys::hand_down(&mut command, &socket);
    let mut child = command
        .spawn()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    // Our copy of the child's end closes here: the connection lives in the child alone,
    // so it closes when the child dies.
    drop(socket);
    let to = output::Destinations {
        operator: operator.name.as_str().into(),
        log: Some(Arc::new(Mutex::new(log))),
        sink: options.on_output.clone(),
    };
    let pipes = [
        (child.stdout.take().map(OwnedFd::from), Stream::Stdout, None),
        (
            child.stderr.take().map(OwnedFd::from),
            Stream::Stderr,
            Some((operator.stderr.clone(), TAIL_LINES)),
        ),
    ];
    for (fd, stream, tail) in pipes {
        let Some(fd) = fd else { continue };
        match output::Reader::start(fd, stream, to.clone(), tail) {
            Ok(reader) => operator.readers.push(reader),
            // The pipe closes with the failed reader: the operator gets SIGPIPE if it
            // writes, which reports the problem as its exit.
            Err(e) => tracing::warn!(operator = %operator.name, "cannot read its output: {e}"),
        }
    }
    Ok(child)
}

#[cfg(test)]
mod error_tests {
    use super::*;

    /// The message and every `source()` below it, as a reporter printing the chain
    /// (`fastio`'s `error: {e:#}`) shows them.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut next = e.source();
        while let Some(cause) = next {
            text = format!("{text}: {cause}");
            next = cause.source();
        }
        text
    }

    #[test]
    fn errors_that_say_their_cause_say_it_once_in_the_chain() {
        let context = DriverError::from(fastio_context::ContextError::Protocol(
            "the server hung up".into(),
        ));
        assert_eq!(
            chain(&context),
            "cannot set up the job's context: protocol error: the server hung up"
        );
        let directory = DriverError::Directory {
            path: "/out".into(),
            cause: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert_eq!(chain(&directory), "cannot prepare /out: permission denied");
        let inspect = inspect::InspectError::Context {
            job_id: "j1".into(),
            cause: fastio_context::ContextError::Protocol("gone".into()),
        };
        assert_eq!(
            chain(&inspect),
            "job j1 did not answer (has it just ended?): protocol error: gone"
        );
    }
}
