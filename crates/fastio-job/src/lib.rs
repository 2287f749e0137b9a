//! The Fast I/O job runtime: a pipeline job's operators ("stages"), their life-cycle
//! (Clara's prepare, execute, cleanup) and their FastIO entries, hosted by a context
//! server.
//!
//! Layering: fastio-context is the memory layer (registry of resources, warm pools,
//! publications, handles, the wire protocol, the server loop and its clients). It knows
//! of a job only through [`fastio_context::service::JobService`], which this crate
//! implements ([`JobRuntime`]): the context server forwards the job's requests (`Join`,
//! `Attach`, `AwaitInputs`, `Finished`, `OpenEntry`, `SetEntryEvent`, `AllocateEntry`)
//! to it and asks it for the job's part of a listing. The job's wire vocabulary
//! ([`EntryId`], [`Phase`], [`StageInfo`], [`EntryInfo`], [`PathEntry`],
//! [`ReclaimedHandle`], [`JobError`], [`EntryError`]) is part of the protocol and stays in
//! fastio-context; it is re-exported here. What gives it meaning lives here:
//!
//! - [`JobPlan`] (stages, entries) and [`Job`], the stage progress state machine (join,
//!   attach, await inputs, finished, abort) and its [`JobEvent`]s;
//! - the entry table ([`entries`]): which memory each entry has, pre-allocation,
//!   dynamic allocation, binding, sealing at the end of the producer's execute;
//! - who may open what when ([`JobRuntime`]: read-write only for the producer until its
//!   execute ends, read-only for readers only after it);
//! - [`FastIoEntry`], the client's view of an entry;
//! - hosting: [`host`], [`host_at`], [`host_with_inputs`] and [`in_process`].
//!
//! The memory itself stays the registry's, reached through
//! [`fastio_context::service::ContextMemory`]: entry memory is made fresh and pinned by
//! its entry, granted, sealed and reclaimed there, so every rule of resources (handle
//! counts, the writer rule, seals, pool never giving entry memory, reclaim on
//! disconnect) holds for entries too.
//!
//! Locks, in the order they may be taken: the entry table's, then the registry's; the
//! job's state has its own lock and condition variable, never held while another is
//! taken. `AwaitInputs` blocks on the job's condition variable holding no other lock.
//! Big host memory (dynamic entries) is made holding no lock at all: the registry reserves
//! it (`obtain_fresh`), it is made, then adopted; device memory is made through the CUDA
//! driver under the registry's lock, as `Create` on a device makes it.
//!
//! A plan is checked when a context hosts it ([`JobPlan::check`]): one that does not hold
//! together is refused before the server starts.
//!
//! ```
//! use std::sync::Arc;
//! use fastio_job::{EntryId, EntryPlan, FastIoEntry, Job, JobPlan, Phase, StagePlan};
//! use fastio_meta::ElementType;
//! let plan = JobPlan {
//!     job_id: "job-1".into(),
//!     job_name: "demo".into(),
//!     stages: vec![StagePlan::new("make", vec![], vec![], vec![EntryId(0)])],
//!     entries: vec![EntryPlan::new("grid", Some(0), ElementType::F32, vec![2, 3])],
//! };
//! let job = Arc::new(Job::new(plan, |_| {}));
//! let server = fastio_job::host(Default::default(), job)?;
//! let make = server.local_operator_context(0);
//! let info = make.join()?;
//! let mut grid = FastIoEntry::open(&make, info.fastio_outputs[0].clone())?;
//! grid.set_values(&[0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0])?;
//! make.finished(Phase::Execute, None)?;
//! assert_eq!(server.entry_bytes(EntryId(0)), Some(24));
//! # Ok::<(), fastio_context::ContextError>(())
//! ```

#![deny(unsafe_code)]

pub mod entries;
mod entry;
mod host;
mod job;
mod runtime;

pub use entry::FastIoEntry;
pub use fastio_context::protocol::{
    EntryId, EntryInfo, PathEntry, Phase, ReclaimedHandle, StageInfo,
};
pub use fastio_context::{EntryError, JobError};
pub use host::{JobServer, host, host_at, host_with_inputs, in_process};
pub use job::{EntryPlan, Job, JobEvent, JobEventKind, JobPlan, StagePlan};
pub use runtime::{EntryInput, JobRuntime};
