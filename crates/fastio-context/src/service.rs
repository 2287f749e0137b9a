//! The seam between the memory layer and a job runtime.
//!
//! A context server serves memory (resources, publications, handles); a pipeline job
//! (stages, phases, FastIO entries) is a runtime on top of it, the fastio-job crate. The
//! server learns of a job only through [`JobService`]: it forwards the job's requests
//! (`Join`, `Attach`, `AwaitInputs`, `Finished`, `OpenEntry`, `SetEntryEvent`,
//! `AllocateEntry`) and asks it for the job's part of a listing. A context without a job
//! refuses those requests with [`JobError::NotInJob`] / [`EntryError::NotInJob`]; so does
//! a job's context on a connection that runs no stage.
//!
//! The runtime decides which entry has which memory and who may open it when; the memory
//! itself is made, granted, sealed and reclaimed by the registry, through the few calls of
//! [`ContextMemory`], so every rule of resources (handle counts, the writer rule, seals,
//! entry memory never from the pool, reclaim on disconnect) holds for entries too.
//!
//! Locks: the registry has one lock, which each [`ContextMemory`] call takes and releases
//! (big memory is made between two of them, without it). The registry never calls into
//! the job, so a runtime may hold its own locks while it calls [`ContextMemory`] (its lock
//! first, then the registry's), never the other way round. [`JobService::await_inputs`]
//! blocks, and is called with no lock of the context held.

use std::fmt;

use fastio_meta::TypedShape;

use crate::error::{CreateError, EntryError, JobError, MemoryFailure};
use crate::listing::JobView;
use crate::protocol::{
    AccessMode, EntryId, EventHandle, MemoryKind, Phase, ReclaimedHandle, ResourceId, StageInfo,
};
use crate::registry::{ConnectionId, Grant, GrantRefusal, Pinned};
use crate::transport::Shared;
use crate::{ContextError, registry};

/// Who sends a job's request: its connection, and the stage the connection runs (bound by
/// the driver when it made the connection, or taken with `Attach`; never claimed by a
/// request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The connection, whose handles a grant adds to.
    pub conn: ConnectionId,
    /// The stage it runs.
    pub stage: usize,
}

/// A job hosted by a context: what the context server calls for the job's requests.
///
/// Implemented by the fastio-job crate's runtime. Every method is called on the
/// connection's thread; only [`JobService::await_inputs`] may block, and it is called with
/// no lock of the context held.
pub trait JobService: Send + Sync + fmt::Debug {
    /// Called once, before any client can connect: makes the memory the job needs from the
    /// start (pre-allocated entries). A failure stops the server from starting.
    fn set_up(&self, memory: &ContextMemory<'_>) -> Result<(), ContextError>;

    /// Stage `stage` joins (`Join`) and learns what it is.
    fn join(&self, stage: usize) -> Result<StageInfo, JobError>;

    /// The index of the stage named `name` (ASCII case ignored), for `Attach`.
    fn stage_named(&self, name: &str) -> Option<usize>;

    /// An operator the server did not start takes stage `stage` (`Attach`, its secret
    /// checked already); `pid` is its process where this PID namespace can see it.
    fn attach(&self, stage: usize, pid: Option<i32>) -> Result<(), JobError>;

    /// The connection of the operator attached to `stage` closed, its handles dropped.
    fn left(&self, stage: usize);

    /// Blocks until stage `stage` may execute (`AwaitInputs`), or the job fails first, or
    /// `gone()` says the caller has gone (its connection closed while it waited): an
    /// implementation that blocks asks `gone` at least once a second, so that a dead
    /// client never holds its connection's thread (and its handles) for good.
    fn await_inputs(&self, stage: usize, gone: &dyn Fn() -> bool) -> Result<(), JobError>;

    /// The caller finished `phase` (`Finished`). At the end of execute the runtime seals
    /// the stage's outputs and reclaims the caller's handles, returning them.
    fn finished(
        &self,
        memory: &ContextMemory<'_>,
        caller: Caller,
        phase: Phase,
        failure: Option<String>,
    ) -> Vec<ReclaimedHandle>;

    /// A handle to the memory of `entry` (`OpenEntry`).
    fn open_entry(
        &self,
        memory: &ContextMemory<'_>,
        caller: Caller,
        entry: EntryId,
        access: AccessMode,
    ) -> Result<Grant, EntryError>;

    /// Attaches `event` to the current memory of `entry` (`SetEntryEvent`).
    fn set_entry_event(
        &self,
        caller: Caller,
        entry: EntryId,
        event: EventHandle,
    ) -> Result<(), EntryError>;

    /// New memory of shape `dims` for a dynamic `entry`, and a read-write handle to it
    /// (`AllocateEntry`).
    fn allocate_entry(
        &self,
        memory: &ContextMemory<'_>,
        caller: Caller,
        entry: EntryId,
        dims: &[usize],
    ) -> Result<Grant, EntryError>;

    /// The job's part of a listing (`Inspect`): its stages and entries now.
    fn view(&self) -> JobView;
}

/// The registry's calls for the memory of a job's entries, each taking the registry's
/// lock for itself.
#[derive(Clone, Copy)]
pub struct ContextMemory<'a> {
    shared: &'a Shared,
}

impl fmt::Debug for ContextMemory<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContextMemory")
    }
}

impl<'a> ContextMemory<'a> {
    pub(crate) fn new(shared: &'a Shared) -> Self {
        Self { shared }
    }

    fn registry(&self) -> std::sync::MutexGuard<'a, registry::Registry> {
        self.shared.registry()
    }

    /// Fails unless `bytes` more of host memory fit what is available now (the
    /// reservations in flight and a safety margin counted).
    pub fn admit(&self, bytes: u64) -> Result<(), MemoryFailure> {
        self.registry().admit_total(bytes)
    }

    /// New memory of `size` bytes of `kind` for entry `entry`, pinned by it and held by
    /// nobody. It is always fresh, never from a warm pool (so that no former holder of
    /// pooled memory keeps a writable mapping of an entry): host memory is a new segment,
    /// made without the registry's lock; device memory is made through the CUDA driver
    /// under it, as `Create` on a device makes it.
    pub fn make_pinned(
        &self,
        kind: MemoryKind,
        size: usize,
        entry: &str,
    ) -> Result<Pinned, CreateError> {
        match kind {
            MemoryKind::Host => {
                let obtained = self.registry().obtain_fresh(size, false)?;
                let made = match &obtained {
                    registry::Obtained::Make(reservation) => Some(reservation.make()),
                    registry::Obtained::Pooled(_) => None,
                };
                Ok(self.registry().adopt_pinned(obtained, made, size, entry)?)
            }
            MemoryKind::Cuda { device } => self.registry().new_device_pinned(device, size, entry),
        }
    }

    /// Holds `bytes` of admitted host memory for entries made later (see
    /// [`ContextMemory::release_held`]): other creates of this context cannot take them.
    pub fn hold(&self, bytes: u64) {
        self.registry().hold_entry_bytes(bytes);
    }

    /// Gives back bytes held by [`ContextMemory::hold`], before making the memory they were
    /// held for (whose own admission then counts it), or when it will never be made.
    pub fn release_held(&self, bytes: u64) {
        self.registry().release_entry_bytes(bytes);
    }

    /// Frees now the memory that has left the registry for good (e.g. just unpinned, with
    /// no handle left), rather than after the request: the memory of an entry let go
    /// returns to the system before the next stage makes its outputs, which then reuse it.
    pub fn free_dead(&self) {
        self.shared.bury_dead();
    }

    /// Entry `entry` lets go of `id`: it lives on while handles to it remain.
    pub fn unpin(&self, id: ResourceId, entry: &str) {
        self.registry().unpin_entry(id, entry);
    }

    /// A handle for `conn` to `id`, which an entry pins, with the entry's shape and event
    /// (read-write refused once sealed).
    pub fn grant(
        &self,
        conn: ConnectionId,
        id: ResourceId,
        access: AccessMode,
        typed: TypedShape,
        event: Option<EventHandle>,
    ) -> Result<Grant, GrantRefusal> {
        self.registry().grant_pinned(conn, id, access, typed, event)
    }

    /// Seals `id` against writes for good.
    pub fn seal(&self, id: ResourceId) -> Result<(), MemoryFailure> {
        self.registry().seal(id)
    }

    /// Writes `bytes` at the start of host memory an entry pins, without the registry's
    /// lock (before any operator runs: how an operator run alone gets its inputs).
    pub fn fill(&self, id: ResourceId, bytes: &[u8]) -> Result<(), MemoryFailure> {
        let segment = self.registry().pinned_segment(id)?;
        let mapping = fastio_shm::Mapping::new(
            &segment,
            fastio_shm::Access::ReadWrite,
            fastio_shm::Prefault::Lazy,
        )
        .map_err(MemoryFailure::from_segment)?;
        mapping
            .write_at(0, bytes)
            .map_err(MemoryFailure::from_segment)
    }

    /// Drops every handle `conn` holds and says what they were (the end of an operator's
    /// execute: Clara's references must not outlive it).
    pub fn reclaim(&self, conn: ConnectionId) -> Vec<ReclaimedHandle> {
        self.registry().reclaim(conn)
    }
}
