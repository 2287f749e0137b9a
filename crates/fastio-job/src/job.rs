//! A pipeline job as the context sees it: its operators ("stages"), their FastIO entries,
//! and the life-cycle each operator goes through (Clara's prepare, execute, cleanup).
//!
//! The driver describes the job with a [`JobPlan`] and hosts it in its context server
//! ([`crate::host`]); each operator process joins over its own connection and
//! learns its [`StageInfo`]. A stage executes only once every upstream stage has finished
//! execute ([`fastio_context::protocol::Request::AwaitInputs`]); the driver watches progress through
//! the [`JobEvent`]s it is notified of and aborts the job when something fails.
//!
//! Architecture Invariant: the job state lives in [`Job`] and nowhere else; the entry table
//! ([`crate::entries`]) holds which memory each entry has, the registry the memory itself,
//! the job who may run when.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use fastio_meta::ElementType;

use fastio_context::JobError;
use fastio_context::protocol::{
    AccessMode, EntryId, EntryInfo, MemoryKind, PathEntry, Phase, ReclaimedHandle, StageInfo,
};

/// How often a stage waiting for its inputs asks whether its caller has gone.
const GONE_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// One operator of a job, as the driver plans it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagePlan {
    /// The operator's name.
    pub name: String,
    /// Indices of the stages whose execute must finish before this one's starts.
    pub upstream: Vec<usize>,
    /// Disk inputs.
    pub inputs: Vec<PathEntry>,
    /// Disk outputs.
    pub outputs: Vec<PathEntry>,
    /// Shared memory entries this stage reads.
    pub fastio_inputs: Vec<EntryId>,
    /// Shared memory entries this stage writes.
    pub fastio_outputs: Vec<EntryId>,
}

/// One shared memory entry of a job: an operator's output, read by the operators that
/// name it in `from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryPlan {
    /// The entry's name.
    pub name: String,
    /// The stage that writes it; `None` when nothing in this job writes it (an operator
    /// running alone reads zeroes from pre-allocated inputs).
    pub producer: Option<usize>,
    /// Element type.
    pub element_type: ElementType,
    /// Declared shape, `-1` or `0` marking dynamic dimensions.
    pub declared: Vec<i64>,
    /// Where its memory lives (a pipeline definition's `device: cuda:N`; host memory by
    /// default). A device entry with a fully known shape is made on its device when the
    /// job is set up; a dynamic one when its producer allocates it (fresh device memory).
    pub memory: MemoryKind,
}

impl StagePlan {
    /// A stage that hands data over through shared-memory entries only (no disk inputs or
    /// outputs): what a plan built by hand mostly needs.
    pub fn new(
        name: &str,
        upstream: Vec<usize>,
        fastio_inputs: Vec<EntryId>,
        fastio_outputs: Vec<EntryId>,
    ) -> Self {
        Self {
            name: name.into(),
            upstream,
            inputs: vec![],
            outputs: vec![],
            fastio_inputs,
            fastio_outputs,
        }
    }
}

impl EntryPlan {
    /// An entry in host memory (set [`EntryPlan::memory`] for a device), written by stage
    /// `producer`, of `declared` shape (`-1` or `0` for dynamic dimensions).
    pub fn new(
        name: &str,
        producer: Option<usize>,
        element_type: ElementType,
        declared: Vec<i64>,
    ) -> Self {
        Self {
            name: name.into(),
            producer,
            element_type,
            declared,
            memory: MemoryKind::Host,
        }
    }

    /// Every dimension is known, so the driver allocates it up front.
    pub fn is_preallocated(&self) -> bool {
        self.declared.iter().all(|&d| d > 0)
    }
}

/// A whole job: its identity, stages and entries. Entry `i` is `EntryId(i)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobPlan {
    /// The job's identifier.
    pub job_id: String,
    /// The job's name.
    pub job_name: String,
    /// The operators.
    pub stages: Vec<StagePlan>,
    /// The shared memory entries.
    pub entries: Vec<EntryPlan>,
}

impl JobPlan {
    /// What stage `stage` learns when it joins.
    pub fn stage_info(&self, stage: usize) -> StageInfo {
        let plan = &self.stages[stage];
        let info = |id: &EntryId, access| {
            let entry = &self.entries[id.0 as usize];
            EntryInfo {
                id: *id,
                name: entry.name.clone(),
                element_type: entry.element_type,
                declared: entry.declared.clone(),
                preallocated: entry.is_preallocated(),
                access,
            }
        };
        StageInfo {
            job_id: self.job_id.clone(),
            job_name: self.job_name.clone(),
            stage_name: plan.name.clone(),
            inputs: plan.inputs.clone(),
            outputs: plan.outputs.clone(),
            fastio_inputs: plan
                .fastio_inputs
                .iter()
                .map(|id| info(id, AccessMode::ReadOnly))
                .collect(),
            fastio_outputs: plan
                .fastio_outputs
                .iter()
                .map(|id| info(id, AccessMode::ReadWrite))
                .collect(),
        }
    }

    /// Whether the plan holds together, or the first reason it does not: stage names are
    /// unique (ASCII case ignored), every stage and entry it names exists, an entry is
    /// written by the one stage whose outputs list it
    /// (its `producer`), and no stage waits on itself, directly or through others. A job
    /// is hosted only after this check (a context server must not panic, nor a stage
    /// wait for ever, on a plan built by hand).
    pub fn check(&self) -> Result<(), String> {
        let stages = self.stages.len();
        let entries = self.entries.len();
        for (index, stage) in self.stages.iter().enumerate() {
            let name = &stage.name;
            // `Attach` finds a stage by its name, ASCII case ignored.
            if let Some(first) = self.stages[..index]
                .iter()
                .find(|s| s.name.eq_ignore_ascii_case(name))
            {
                return Err(format!(
                    "two stages are named {name:?} (the first as {:?})",
                    first.name
                ));
            }
            if let Some(u) = stage.upstream.iter().find(|&&u| u >= stages) {
                return Err(format!(
                    "stage {name:?} waits on stage #{u}, and the job has {stages}"
                ));
            }
            let ids = stage.fastio_inputs.iter().chain(&stage.fastio_outputs);
            if let Some(id) = ids.into_iter().find(|id| id.0 as usize >= entries) {
                return Err(format!(
                    "stage {name:?} names FastIO entry #{}, and the job has {entries}",
                    id.0
                ));
            }
            if let Some(id) = stage
                .fastio_outputs
                .iter()
                .find(|id| self.entries[id.0 as usize].producer != Some(index))
            {
                let entry = &self.entries[id.0 as usize];
                let producer = entry
                    .producer
                    .map_or("no stage".to_owned(), |p| format!("stage #{p}"));
                return Err(format!(
                    "stage {name:?} lists FastIO entry {:?} among its outputs, but the entry's producer is {producer}",
                    entry.name
                ));
            }
        }
        for (index, entry) in self.entries.iter().enumerate() {
            let Some(p) = entry.producer else { continue };
            let listed = self
                .stages
                .get(p)
                .is_some_and(|s| s.fastio_outputs.contains(&EntryId(index as u32)));
            if !listed {
                return Err(format!(
                    "FastIO entry {:?} names stage #{p} as its producer, which does not list it among its outputs",
                    entry.name
                ));
            }
        }
        // Kahn's walk: a stage is ready once all it waits on are; any left over wait on
        // each other.
        let mut waiting: Vec<usize> = self.stages.iter().map(|s| s.upstream.len()).collect();
        let mut ready: Vec<usize> = (0..stages).filter(|&s| waiting[s] == 0).collect();
        let mut done = 0;
        while let Some(s) = ready.pop() {
            done += 1;
            for (d, stage) in self.stages.iter().enumerate() {
                for _ in stage.upstream.iter().filter(|&&u| u == s) {
                    waiting[d] -= 1;
                    if waiting[d] == 0 {
                        ready.push(d);
                    }
                }
            }
        }
        if done < stages {
            let stuck = (0..stages).find(|&s| waiting[s] > 0).unwrap_or_default();
            return Err(format!(
                "stage {:?} waits on itself through its upstream stages",
                self.stages[stuck].name
            ));
        }
        Ok(())
    }

    /// The access `stage` has to `entry`: ReadWrite for its producer, ReadOnly for its
    /// readers, none for anyone else.
    pub fn access(&self, stage: usize, entry: EntryId) -> Option<AccessMode> {
        let plan = self.stages.get(stage)?;
        if plan.fastio_outputs.contains(&entry) {
            Some(AccessMode::ReadWrite)
        } else if plan.fastio_inputs.contains(&entry) {
            Some(AccessMode::ReadOnly)
        } else {
            None
        }
    }
}

/// Something that happened to a stage, as the driver is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobEventKind {
    /// The operator process joined and runs prepare.
    Joined,
    /// A phase ended; `failure` says why it failed.
    Finished {
        /// The phase.
        phase: Phase,
        /// Why it failed, if it did.
        failure: Option<String>,
    },
    /// Every upstream stage finished execute; this one executes now.
    Executing,
    /// Handles still held at the end of execute were reclaimed.
    Reclaimed(Vec<ReclaimedHandle>),
    /// An operator the server did not start proved it belongs to the job and took this
    /// stage ([`fastio_context::protocol::Request::Attach`]); `pid` is its process as the server's
    /// PID namespace sees it (`None` when that namespace cannot see it, e.g. another
    /// container of a Pod that does not share its process namespace).
    Attached {
        /// The operator's process id, if visible.
        pid: Option<i32>,
    },
    /// The connection of an attached operator closed: its process ended (or let go of the
    /// job). For an operator the server did not start, this is its exit.
    Left,
}

/// A stage's event, stamped with when it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEvent {
    /// Index of the stage.
    pub stage: usize,
    /// What happened.
    pub kind: JobEventKind,
    /// When.
    pub at: Instant,
}

#[derive(Debug, Default)]
struct StageProgress {
    // An operator the server did not start took this stage (once only).
    attached: bool,
    joined: bool,
    // Waiting for its inputs / executing (for listings).
    awaiting: bool,
    executing: bool,
    executed: Option<bool>,
    cleaned_up: bool,
}

#[derive(Debug)]
struct JobState {
    stages: Vec<StageProgress>,
    aborted: Option<String>,
}

type Notify = Box<dyn Fn(JobEvent) + Send + Sync>;

/// A running job: its plan and who has done what.
pub struct Job {
    plan: JobPlan,
    // Entry memory stays to the end of the job (its caller reads the outputs afterwards),
    // rather than going once every reader has finished execute.
    keep_entry_memory: std::sync::atomic::AtomicBool,
    state: Mutex<JobState>,
    changed: Condvar,
    notify: Notify,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("plan", &self.plan)
            .field("state", &*self.lock())
            .finish()
    }
}

impl Job {
    /// A job whose events go to `notify` (called on the connection's thread; keep it short,
    /// e.g. a channel send).
    pub fn new(plan: JobPlan, notify: impl Fn(JobEvent) + Send + Sync + 'static) -> Self {
        let stages = plan
            .stages
            .iter()
            .map(|_| StageProgress::default())
            .collect();
        Self {
            plan,
            keep_entry_memory: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(JobState {
                stages,
                aborted: None,
            }),
            changed: Condvar::new(),
            notify: Box::new(notify),
        }
    }

    /// The plan.
    pub fn plan(&self) -> &JobPlan {
        &self.plan
    }

    /// Keeps the memory of every FastIO entry until the job ends (e.g. to save the outputs
    /// afterwards). By default the memory of an entry goes as soon as every operator that
    /// reads it has finished execute.
    pub fn keep_entry_memory(&self) {
        self.keep_entry_memory
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether [`Job::keep_entry_memory`] was asked for.
    pub fn keeps_entry_memory(&self) -> bool {
        self.keep_entry_memory
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, stage: usize, kind: JobEventKind) {
        (self.notify)(JobEvent {
            stage,
            kind,
            at: Instant::now(),
        });
    }

    /// Stage `stage` joins; it may join once.
    pub fn join(&self, stage: usize) -> Result<StageInfo, JobError> {
        {
            let mut state = self.lock();
            let progress = state.stages.get_mut(stage).ok_or(JobError::NotInJob)?;
            if std::mem::replace(&mut progress.joined, true) {
                return Err(JobError::AlreadyJoined);
            }
        }
        self.emit(stage, JobEventKind::Joined);
        Ok(self.plan.stage_info(stage))
    }

    /// An operator that joins from elsewhere takes stage `stage`; a stage is taken once
    /// (a second claim, while or after the first runs, is refused: a restarted or
    /// duplicated container cannot replay an operator's part of the job).
    pub fn attach(&self, stage: usize, pid: Option<i32>) -> Result<(), JobError> {
        {
            let mut state = self.lock();
            let progress = state.stages.get_mut(stage).ok_or(JobError::NotInJob)?;
            if std::mem::replace(&mut progress.attached, true) {
                return Err(JobError::StageTaken {
                    stage: self.plan.stages[stage].name.clone(),
                });
            }
        }
        self.emit(stage, JobEventKind::Attached { pid });
        Ok(())
    }

    /// The connection of the operator attached to `stage` closed.
    pub fn left(&self, stage: usize) {
        if stage < self.plan.stages.len() {
            self.emit(stage, JobEventKind::Left);
        }
    }

    /// Blocks until every upstream stage of `stage` has executed successfully, or the job
    /// is aborted.
    pub fn await_inputs(&self, stage: usize) -> Result<(), JobError> {
        self.await_inputs_unless(stage, &|| false)
    }

    /// [`Job::await_inputs`], giving up when `gone()` says the caller has gone (asked every
    /// 250 ms while it waits): the stage is then no longer waiting, and the job
    /// goes on (the driver learns of a dead operator from its exit).
    pub fn await_inputs_unless(
        &self,
        stage: usize,
        gone: &dyn Fn() -> bool,
    ) -> Result<(), JobError> {
        let upstream = &self
            .plan
            .stages
            .get(stage)
            .ok_or(JobError::NotInJob)?
            .upstream;
        let mut state = self.lock();
        state.stages[stage].awaiting = true;
        loop {
            if let Some(reason) = state.aborted.clone() {
                state.stages[stage].awaiting = false;
                return Err(JobError::Aborted { reason });
            }
            if upstream
                .iter()
                .all(|&u| state.stages[u].executed == Some(true))
            {
                break;
            }
            if gone() {
                state.stages[stage].awaiting = false;
                return Err(JobError::Aborted {
                    reason: "the operator's connection closed while it waited for its inputs"
                        .into(),
                });
            }
            state = self
                .changed
                .wait_timeout(state, GONE_CHECK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.stages[stage].awaiting = false;
        state.stages[stage].executing = true;
        drop(state);
        self.emit(stage, JobEventKind::Executing);
        Ok(())
    }

    /// Whether stage `stage` has finished execute (successfully or not).
    pub fn has_executed(&self, stage: usize) -> bool {
        self.lock()
            .stages
            .get(stage)
            .is_some_and(|p| p.executed.is_some())
    }

    /// Stage `stage` finished `phase`. The first end of execute is its outcome: a stage
    /// that says again that it finished cannot turn a failed execute into a successful
    /// one (and release the stages waiting on it), nor the reverse.
    /// Nothing happens for a stage the job does not have (whoever handles the events may
    /// count on every event naming one of its stages).
    pub fn finished(&self, stage: usize, phase: Phase, failure: Option<String>) {
        if stage >= self.plan.stages.len() {
            return;
        }
        if let Some(progress) = self.lock().stages.get_mut(stage) {
            match phase {
                Phase::Prepare => {}
                Phase::Execute => {
                    progress.executing = false;
                    progress.executed.get_or_insert(failure.is_none());
                }
                Phase::Cleanup => progress.cleaned_up = true,
            }
        }
        if phase == Phase::Execute {
            self.changed.notify_all();
        }
        self.emit(stage, JobEventKind::Finished { phase, failure });
    }

    /// Reports handles reclaimed from `stage` at the end of its execute.
    pub fn reclaimed(&self, stage: usize, handles: Vec<ReclaimedHandle>) {
        if !handles.is_empty() && stage < self.plan.stages.len() {
            self.emit(stage, JobEventKind::Reclaimed(handles));
        }
    }

    /// Fails the job: stages waiting for their inputs, and any that ask later, are refused
    /// with `reason`. The first reason stays.
    pub fn abort(&self, reason: &str) {
        self.lock().aborted.get_or_insert_with(|| reason.to_owned());
        self.changed.notify_all();
    }

    /// Where each stage is, as the context knows it (for listings): `not joined`,
    /// `preparing`, `waiting for inputs`, `executing`, `executed`, `execute failed`,
    /// `done` (cleanup ended). A stage that runs without waiting for its inputs
    /// (`NVIDIA_CLARA_NOSYNCLOCK`) shows `preparing` until its execute ends.
    pub fn stage_states(&self) -> Vec<&'static str> {
        self.lock()
            .stages
            .iter()
            .map(|p| match p {
                StageProgress { joined: false, .. } => "not joined",
                StageProgress {
                    cleaned_up: true, ..
                } => "done",
                StageProgress {
                    executed: Some(true),
                    ..
                } => "executed",
                StageProgress {
                    executed: Some(false),
                    ..
                } => "execute failed",
                StageProgress {
                    executing: true, ..
                } => "executing",
                StageProgress { awaiting: true, .. } => "waiting for inputs",
                _ => "preparing",
            })
            .collect()
    }

    /// Why the job was aborted, if it was.
    pub fn aborted(&self) -> Option<String> {
        self.lock().aborted.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::Duration;

    fn chain() -> JobPlan {
        let stage = |name: &str, upstream| StagePlan::new(name, upstream, vec![], vec![]);
        JobPlan {
            job_id: "j".into(),
            job_name: "chain".into(),
            stages: vec![stage("a", vec![]), stage("b", vec![0])],
            entries: vec![],
        }
    }

    #[test]
    fn a_stage_waits_for_its_upstream_execute() {
        let (tx, rx) = mpsc::channel();
        let job = Arc::new(Job::new(chain(), move |e| tx.send(e).unwrap()));
        job.join(1).unwrap();
        let waiter = {
            let job = job.clone();
            std::thread::spawn(move || job.await_inputs(1))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "b must wait for a");
        job.finished(0, Phase::Execute, None);
        waiter.join().unwrap().unwrap();
        let kinds: Vec<_> = rx.try_iter().map(|e| (e.stage, e.kind)).collect();
        assert!(kinds.contains(&(1, JobEventKind::Executing)));
    }

    #[test]
    fn abort_releases_waiters_with_the_reason() {
        let job = Arc::new(Job::new(chain(), |_| {}));
        let waiter = {
            let job = job.clone();
            std::thread::spawn(move || job.await_inputs(1))
        };
        job.finished(0, Phase::Execute, Some("boom".into()));
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !waiter.is_finished(),
            "a failed execute alone does not abort"
        );
        job.abort("a failed");
        assert_eq!(
            waiter.join().unwrap(),
            Err(JobError::Aborted {
                reason: "a failed".into()
            })
        );
    }

    #[test]
    fn a_stage_joins_once() {
        let job = Job::new(chain(), |_| {});
        assert_eq!(job.join(0).unwrap().stage_name, "a");
        assert_eq!(job.join(0).unwrap_err(), JobError::AlreadyJoined);
        assert_eq!(job.join(7), Err(JobError::NotInJob));
    }
}
