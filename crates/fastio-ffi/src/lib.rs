//! The C API of Fast I/O: a drop-in for the Fast I/O part of Clara's `libnvclara.so`.
//!
//! Built as `libfastio.so` and `libfastio.a`; `cargo xtask clib` also gives the shared
//! library the name `libnvclara.so`. The header `include/clara_cpd.h` is generated from
//! this crate by `cargo xtask codegen` (cbindgen) and committed; `include/clara.h`
//! includes it, as Clara's does. `docs/c-api.md` lists every choice made where Clara's
//! documentation is silent.
//!
//! API Boundary: every exported function returns a `result` (0 on success), catches
//! panics, and on failure sets the calling thread's message
//! (`nvidia_clara_last_error_message`).
//!
//! Architecture Invariant: handles given to C are tokens, never addresses; the library
//! never dereferences them, and a token is never reused, so stale handles are detected.
//!
//! Architecture Invariant: every raw-pointer read or write of a C argument goes through
//! `ptr.rs`, which checks for NULL first.

mod alloc;
mod context;
mod cpd;
mod device;
mod entry;
mod error;
mod handles;
mod ptr;
mod types;

pub use alloc::*;
pub use context::*;
pub use cpd::*;
pub use device::*;
pub use entry::*;
pub use error::nvidia_clara_last_error_message;
pub use types::*;
