//! The job runtime (being moved here from fastio-context).

#![deny(unsafe_code)]

pub use fastio_context::FastIoEntry;
pub use fastio_context::job::*;
