//! The Fast I/O context: allocations, publications, the context server and its clients.
//!
//! Clara's semantics (its Fast I/O Context documentation, C and Python): [`Context::create`] makes an allocation only its
//! creator can reach; [`Allocation::publish`] copies the handle's metadata into the context
//! under a unique name; [`Context::get`] returns a new handle to the same memory with a copy
//! of the published metadata; [`Allocation::release`] drops a handle and
//! [`Allocation::free`] marks the resource deleted (later gets fail; existing handles stay
//! valid until released).
//!
//! ```
//! use fastio_context::Context;
//! use fastio_meta::ElementType;
//! let ctx = Context::in_process();
//! let mut a = ctx.create(4 * 6)?;
//! a.set_type_and_dimensions(ElementType::F32, &[2, 3])?;
//! a.copy_from_slice(&[0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0])?;
//! a.publish("grid")?;
//! a.release()?;
//! let b = ctx.get("grid")?;
//! assert_eq!(b.dimensions(), Some(&[2, 3][..]));
//! assert_eq!(b.to_vec::<f32>()?[5], 5.0);
//! b.free()?;
//! assert!(ctx.get("grid").is_err());
//! # Ok::<(), fastio_context::ContextError>(())
//! ```
//!
//! Device memory is a kind of the same memory ([`Context::create_in`],
//! [`MemoryKind::Cuda`]); host and device allocations meet on a cuda-streams `Stream`
//! ([`Allocation::copy_to_device`], [`Allocation::copy_from_device`]). A host handle's
//! mapping is registered with CUDA by its first copy (pinned speed after) and unregistered
//! when the handle goes, after the streams it was copied on are done. Here on the CPU fake:
//!
//! ```
//! use cuda_streams::{Driver, StreamPool, StreamPoolConfig};
//! use fastio_context::{Context, MemoryKind};
//! let driver = Driver::fake(1); // `Driver::probe()?` on a machine with a GPU
//! let ctx = Context::in_process_with_device_driver(driver.clone());
//! let pool = StreamPool::new(&driver, StreamPoolConfig::new(0, 1, 0, 1, 0)).unwrap();
//! let stream = pool.allocate().unwrap();
//! let mut host = ctx.create(4096)?;
//! host.write_bytes(0, b"to the GPU and back")?;
//! let device = ctx.create_in(MemoryKind::Cuda { device: 0 }, 4096)?;
//! host.copy_to_device(&driver, &device, &stream)?;
//! let back = ctx.create(4096)?;
//! back.copy_from_device(&driver, &device, &stream)?;
//! stream.synchronize().unwrap();
//! assert_eq!(back.read_bytes(0, 19)?, b"to the GPU and back");
//! assert_eq!(host.host_registrations(), 1);
//! # Ok::<(), fastio_context::ContextError>(())
//! ```
//!
//! Layering: this crate is the memory layer (resources, pools, publications, handles), the
//! wire protocol, the server loop and its clients. A pipeline job (stages, phases, FastIO
//! entries) is a runtime on top of it, the fastio-job crate, which the context knows only
//! through [`service::JobService`]: the server forwards the job's requests to the job it
//! hosts, or refuses them with `NotInJob` when it hosts none. The job's wire vocabulary
//! ([`protocol::EntryId`], [`protocol::Phase`], [`protocol::StageInfo`],
//! [`protocol::EntryInfo`], [`protocol::ReclaimedHandle`], [`JobError`], [`EntryError`])
//! is protocol and stays here; the runtime's state and policy do not. The memory of
//! entries is still the registry's, made, granted, sealed and reclaimed through the few
//! calls of [`service::ContextMemory`], so every rule of resources holds for it too.
//!
//! Architecture Invariant: the registry (`registry.rs`) is the only owner of the
//! memory's state; the server and the in-process context reach it through one dispatch
//! function, so both behave the same by construction.
//!
//! Architecture Invariant: lock order. The registry has one lock; a job runtime may hold
//! its own locks while it calls [`service::ContextMemory`] (which takes the registry's),
//! never the reverse: the registry never calls into the job. No lock of the context is
//! held while `AwaitInputs` blocks, nor while big memory is made (the registry reserves
//! it, `obtain`, it is made outside the lock, then adopted).

#![deny(unsafe_code)]

mod collapse;
mod context;
pub mod device;
mod error;
mod gpucopy;
pub mod listing;
mod mapcache;
pub mod protocol;
pub mod records;
pub mod registry;
pub mod server;
pub mod service;
#[allow(unsafe_code)]
mod sys;
mod transport;

pub use collapse::COLLAPSE_ENV;
pub use context::{
    Allocation, Context, CreateOptions, DeviceView, JOB_SECRET_ENV, JOB_SOCKET_ENV, JOB_STAGE_ENV,
};
pub use error::{
    ContextError, CreateError, EntryError, GetError, JobError, PublishError, ReleaseError,
    RequestError, UnpublishError, WriteError,
};
pub use fastio_shm::{Access, Prefault};
pub use mapcache::{
    DEFAULT_MAP_CACHE_BYTES, MAP_CACHE_ENV, MappingStats, mapping_stats, set_mapping_cache_bytes,
};
pub use protocol::{
    AccessMode, EventHandle, JobSecret, MemoryKind, MemoryKindError, ResourceId, SegmentStats,
    Stats,
};
pub use server::{CONTEXT_ADDRESS_ENV, CONTEXT_ENV, Server, ServerConfig, raise_descriptor_limit};
