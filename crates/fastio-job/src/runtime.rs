//! A job as its context server runs it: the [`JobService`] that the server forwards the
//! job's requests to, over the job's state ([`Job`]) and its entry table
//! ([`EntryTable`]).

use std::sync::{Arc, Mutex, MutexGuard};

use fastio_context::listing::{EntryView, JobView, StageView};
use fastio_context::protocol::{
    AccessMode, EntryId, EventHandle, Phase, ReclaimedHandle, StageInfo,
};
use fastio_context::registry::Grant;
use fastio_context::service::{Caller, ContextMemory, JobService};
use fastio_context::{ContextError, EntryError, JobError, RequestError};

use crate::entries::{self, EntryTable};
use crate::job::Job;

/// An entry's memory given before any operator runs: the entry, its dimensions and its
/// bytes (C order).
pub type EntryInput = (EntryId, Vec<usize>, Vec<u8>);

/// A job hosted by a context: its state, its entry table, and the handling of its
/// requests.
///
/// Locks: the job's state has its own lock and condition variable ([`Job`]); the entry
/// table has its lock; the context's registry has its own. A request takes at most one of
/// the job's locks at a time, then may call the registry ([`ContextMemory`]) while holding
/// the table's; the registry never calls back. `AwaitInputs` waits on the job's condition
/// variable holding nothing else.
#[derive(Debug)]
pub struct JobRuntime {
    job: Arc<Job>,
    entries: Mutex<EntryTable>,
    // Filled at set-up, then empty.
    inputs: Mutex<Vec<EntryInput>>,
}

impl JobRuntime {
    /// The runtime of `job`; its entries are set up when a context hosts it.
    pub fn new(job: Arc<Job>) -> Self {
        Self::with_inputs(job, Vec::new())
    }

    /// [`JobRuntime::new`] with some entries filled at set-up, before any operator starts:
    /// the inputs of an operator run alone (`fastio run-op`).
    pub fn with_inputs(job: Arc<Job>, inputs: Vec<EntryInput>) -> Self {
        Self {
            job,
            entries: Mutex::default(),
            inputs: Mutex::new(inputs),
        }
    }

    /// The job's state.
    pub fn job(&self) -> &Arc<Job> {
        &self.job
    }

    /// Bytes of the memory behind FastIO entry `entry` now, or `None` while it has none.
    pub fn entry_bytes(&self, entry: EntryId) -> Option<usize> {
        self.table().bytes(entry)
    }

    fn table(&self) -> MutexGuard<'_, EntryTable> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets go of the memory of the inputs of `stage` that every operator reading them has
    /// finished with (`stage` counts as finished: it calls this at the end of its execute),
    /// unless the job keeps entry memory. The memory is freed at once, before any later
    /// stage makes its outputs, so that they reuse its pages.
    fn release_inputs(&self, memory: &ContextMemory<'_>, stage: usize) {
        if self.job.keeps_entry_memory() {
            return;
        }
        let plan = self.job.plan();
        let Some(inputs) = plan.stages.get(stage).map(|s| &s.fastio_inputs) else {
            return;
        };
        let done: Vec<EntryId> = inputs
            .iter()
            .copied()
            .filter(|input| {
                plan.stages
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.fastio_inputs.contains(input))
                    .all(|(reader, _)| reader == stage || self.job.has_executed(reader))
            })
            .collect();
        if done.is_empty() {
            return;
        }
        {
            let mut table = self.table();
            for entry in done {
                table.release(memory, entry);
            }
        }
        memory.free_dead();
    }

    /// Whether `stage` may have `access` to `entry`: read-write only for its producer, and
    /// only until its execute has finished; read-only for its readers, once the producer's
    /// execute has finished (when the memory is sealed), so that no reader ever holds a
    /// descriptor of memory that is still writable.
    fn entry_access(
        &self,
        stage: usize,
        entry: EntryId,
        access: AccessMode,
    ) -> Result<(), EntryError> {
        let plan = self.job.plan();
        let entry_plan = plan
            .entries
            .get(entry.0 as usize)
            .ok_or(EntryError::UnknownEntry { id: entry.0 })?;
        let name = &entry_plan.name;
        match (plan.access(stage, entry), access) {
            (Some(AccessMode::ReadWrite), AccessMode::ReadWrite)
                if self.job.has_executed(stage) =>
            {
                Err(EntryError::OutputFinal { name: name.clone() })
            }
            (Some(AccessMode::ReadOnly), _)
                if entry_plan
                    .producer
                    .is_some_and(|p| !self.job.has_executed(p)) =>
            {
                Err(EntryError::InputNotReady { name: name.clone() })
            }
            (Some(AccessMode::ReadWrite), _)
            | (Some(AccessMode::ReadOnly), AccessMode::ReadOnly) => Ok(()),
            (Some(AccessMode::ReadOnly), AccessMode::ReadWrite) => {
                Err(EntryError::InputReadOnly { name: name.clone() })
            }
            (None, _) => Err(EntryError::NotOfOperator { name: name.clone() }),
        }
    }
}

impl JobService for JobRuntime {
    fn set_up(&self, memory: &ContextMemory<'_>) -> Result<(), ContextError> {
        self.job
            .plan()
            .check()
            .map_err(|reason| RequestError::BadRequest {
                message: format!("the job's plan does not hold together: {reason}"),
            })?;
        let mut table = EntryTable::define(memory, &self.job.plan().entries)?;
        let inputs = std::mem::take(&mut *self.inputs.lock().unwrap_or_else(|p| p.into_inner()));
        for (entry, dims, bytes) in &inputs {
            table.fill(memory, *entry, dims, bytes)?;
        }
        *self.table() = table;
        Ok(())
    }

    fn join(&self, stage: usize) -> Result<StageInfo, JobError> {
        self.job.join(stage)
    }

    fn stage_named(&self, name: &str) -> Option<usize> {
        self.job
            .plan()
            .stages
            .iter()
            .position(|s| s.name.eq_ignore_ascii_case(name))
    }

    fn attach(&self, stage: usize, pid: Option<i32>) -> Result<(), JobError> {
        self.job.attach(stage, pid)
    }

    fn left(&self, stage: usize) {
        self.job.left(stage);
    }

    fn await_inputs(&self, stage: usize, gone: &dyn Fn() -> bool) -> Result<(), JobError> {
        self.job.await_inputs_unless(stage, gone)
    }

    fn finished(
        &self,
        memory: &ContextMemory<'_>,
        caller: Caller,
        phase: Phase,
        failure: Option<String>,
    ) -> Vec<ReclaimedHandle> {
        let Caller { conn, stage } = caller;
        let mut failure = failure;
        let reclaimed = if phase == Phase::Execute {
            // Sealed before anyone is told: readers only ever map final memory.
            let outputs = self
                .job
                .plan()
                .stages
                .get(stage)
                .map_or(&[][..], |s| &s.fastio_outputs[..]);
            for &output in outputs {
                // An output it never opened: its readers find it zero, as declared.
                if let Err(e) = entries::make_deferred(&self.entries, memory, output) {
                    failure.get_or_insert(format!("its outputs could not be made: {e}"));
                }
            }
            if let Err(e) = self.table().seal(memory, outputs) {
                failure.get_or_insert(format!("its outputs could not be sealed read-only: {e}"));
            }
            memory.reclaim(conn)
        } else {
            Vec::new()
        };
        self.job.reclaimed(stage, reclaimed.clone());
        if phase == Phase::Execute {
            self.release_inputs(memory, stage);
        }
        self.job.finished(stage, phase, failure);
        if phase == Phase::Execute {
            // Again now that it counts as executed: a reader finishing at the same time
            // saw this one still executing.
            self.release_inputs(memory, stage);
        }
        reclaimed
    }

    fn open_entry(
        &self,
        memory: &ContextMemory<'_>,
        caller: Caller,
        entry: EntryId,
        access: AccessMode,
    ) -> Result<Grant, EntryError> {
        self.entry_access(caller.stage, entry, access)?;
        if access == AccessMode::ReadWrite {
            // Its producer, released to execute, is about to write it: it gets memory now.
            entries::make_deferred(&self.entries, memory, entry)?;
        }
        self.table().open(memory, caller.conn, entry, access)
    }

    fn set_entry_event(
        &self,
        caller: Caller,
        entry: EntryId,
        event: EventHandle,
    ) -> Result<(), EntryError> {
        self.entry_access(caller.stage, entry, AccessMode::ReadWrite)?;
        self.table().set_event(entry, event)
    }

    fn allocate_entry(
        &self,
        memory: &ContextMemory<'_>,
        caller: Caller,
        entry: EntryId,
        dims: &[usize],
    ) -> Result<Grant, EntryError> {
        self.entry_access(caller.stage, entry, AccessMode::ReadWrite)?;
        entries::allocate(&self.entries, memory, caller.conn, entry, dims)
    }

    fn view(&self) -> JobView {
        let plan = self.job.plan();
        let states = self.job.stage_states();
        let bound: Vec<_> = {
            let table = self.table();
            (0..plan.entries.len())
                .map(|i| table.bound(EntryId(i as u32)))
                .collect()
        };
        JobView {
            job_id: plan.job_id.clone(),
            job_name: plan.job_name.clone(),
            stages: plan
                .stages
                .iter()
                .zip(states)
                .map(|(s, state)| StageView {
                    name: s.name.clone(),
                    state: state.to_owned(),
                })
                .collect(),
            aborted: self.job.aborted(),
            entries: plan
                .entries
                .iter()
                .zip(bound)
                .enumerate()
                .map(|(index, (entry, bound))| {
                    let id = EntryId(index as u32);
                    EntryView {
                        name: entry.name.clone(),
                        producer: entry.producer.map(|p| plan.stages[p].name.clone()),
                        readers: plan
                            .stages
                            .iter()
                            .filter(|s| s.fastio_inputs.contains(&id))
                            .map(|s| s.name.clone())
                            .collect(),
                        element_type: entry.element_type,
                        declared: entry.declared.clone(),
                        bound,
                    }
                })
                .collect(),
        }
    }
}
