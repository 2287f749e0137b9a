//! fastio: zero-copy sharing of typed N-dimensional arrays between the processes of a
//! pipeline job, through sealed shared memory, with Clara Fast I/O's semantics.
//!
//! This facade re-exports the layers below it:
//! - [`shm`]: raw segments (memfds, seals, mappings, descriptor passing);
//! - [`meta`]: element types, shapes, names;
//! - [`context`]: the Fast I/O context, its allocations, its server and clients;
//! - [`pipeline`]: pipeline definitions (YAML/JSON), their validation and graph;
//! - [`operator`]: the operator side of a job (life-cycle callbacks, payload, FastIO entries);
//! - [`driver`]: the pipeline driver behind `fastio run`;
//! - [`cli`]: the `fastio` command itself (also the Python package's console script).
//!
//! ```
//! use fastio::{Context, ElementType};
//! let ctx = Context::in_process(); // or Context::from_env() under `fastio serve`
//! ctx.publish_slice(&[1i16, 2, 3, 4], &[2, 2], "tile")?;
//! let tile = ctx.get("tile")?;
//! assert_eq!(tile.element_type(), Some(ElementType::I16));
//! assert_eq!(tile.to_vec::<i16>()?, vec![1, 2, 3, 4]);
//! # Ok::<(), fastio::ContextError>(())
//! ```

#![forbid(unsafe_code)]

// The command's code (`cli`) names the crate `fastio::...`, as the binary it came from did.
extern crate self as fastio;

pub mod cli;
pub mod doctor;

pub use fastio_context as context;
pub use fastio_driver as driver;
pub use fastio_job as job;
pub use fastio_meta as meta;
pub use fastio_operator as operator;
pub use fastio_pipeline as pipeline;
pub use fastio_shm as shm;

pub use fastio_context::{
    Access, AccessMode, Allocation, CONTEXT_ENV, Context, ContextError, CreateOptions, EventHandle,
    Prefault, RequestError, Server, ServerConfig, Stats,
};
pub use fastio_job::FastIoEntry;
pub use fastio_meta::{DynamicShape, Element, ElementType, MetaError, Shape, TypedShape};
pub use fastio_operator::{Callbacks, Driver, Lifecycle, OperatorError, Payload};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
