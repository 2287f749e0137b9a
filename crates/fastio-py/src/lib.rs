//! The Python module `fastio` (native part `fastio._native`): Clara's Fast I/O classes
//! over [`fastio_context`], with zero-copy numpy views of shared memory.
//!
//! Built into a wheel by maturin (`pip install ./crates/fastio-py`); the pure-Python
//! packages `fastio` and `clara` in `python/` re-export these classes.
//!
//! API Boundary: every failure reaches Python as `fastio.Error` (or the subclass that says
//! which kind of failure it is, mapped exhaustively from the context's per-operation
//! refusals) with the Rust error's message; nothing here panics on input from Python (locks are recovered, never
//! unwrapped), and pyo3 turns any panic that did happen into an exception, not an abort.
//!
//! Architecture Invariant: a numpy array, `memoryview` or `__array_interface__` export of
//! an allocation holds a strong reference to the handle it was made from (a `View`
//! object is its base). `release()` and `free()` end the Python object's use of the
//! handle at once, but the context hears of them only when the last export is gone, so
//! no view ever points at unmapped or recycled memory.

mod allocation;
mod buffer;
mod context;
mod device;
mod dlpack;
mod dtype;
mod listing;
mod operator;

use fastio_context::{ContextError, RequestError};
use pyo3::prelude::*;

pyo3::create_exception!(
    fastio,
    Error,
    pyo3::exceptions::PyException,
    "Raised by every failing Fast I/O call; the message says what went wrong. The\n\
     subclasses below say which kind of failure it was."
);

// The kinds of failure, each a subclass of `fastio.Error` (so `except fastio.Error`
// catches them all), matching the C API's status codes where it has one.
pyo3::create_exception!(
    fastio,
    NotFoundError,
    Error,
    "No publication, entry or metadata of that name or kind (C: NOT_FOUND)."
);
pyo3::create_exception!(
    fastio,
    AlreadyPublishedError,
    Error,
    "The name is taken: published already, or freed and not yet withdrawn."
);
pyo3::create_exception!(
    fastio,
    ReadOnlyError,
    Error,
    "Writing was asked of memory this handle or operator may only read (C: READ_ONLY)."
);
pyo3::create_exception!(
    fastio,
    BusyError,
    Error,
    "Another handle holds the write mapping: one writer at a time (C: BUSY)."
);
pyo3::create_exception!(
    fastio,
    InvalidHandleError,
    Error,
    "The handle was released or freed, or was never this client's (C: INVALID_HANDLE)."
);
pyo3::create_exception!(
    fastio,
    InvalidArgumentError,
    Error,
    "A bad name, type, shape or size (C: INVALID_ARGUMENT)."
);
pyo3::create_exception!(
    fastio,
    OutOfMemoryError,
    Error,
    "The machine cannot hold the memory asked for."
);
pyo3::create_exception!(
    fastio,
    DeviceError,
    Error,
    "Device memory could not be made: no CUDA driver, no such device, or the driver refused."
);
pyo3::create_exception!(
    fastio,
    JobError,
    Error,
    "A pipeline job's request failed: not in a job, joined twice, or the job aborted."
);
pyo3::create_exception!(
    fastio,
    ContextGoneError,
    Error,
    "The context cannot be reached: no server, it went away, it timed out, or this\n\
     process was forked from the one that connected."
);

/// The exception class of a refusal. Exhaustive, without a wildcard: a new refusal does
/// not compile until it has a class here (and a code in the C API).
fn refusal_class<'py>(py: Python<'py>, r: &RequestError) -> Bound<'py, pyo3::types::PyType> {
    use fastio_context::{
        CreateError, EntryError, GetError, JobError as Job, PublishError, ReleaseError,
        UnpublishError, WriteError,
    };
    match r {
        RequestError::Create(e) => match e {
            CreateError::OutOfMemory { .. } => py.get_type::<OutOfMemoryError>(),
            CreateError::Device { .. } => py.get_type::<DeviceError>(),
            CreateError::System { .. } => py.get_type::<Error>(),
        },
        RequestError::Publish(e) => match e {
            PublishError::InvalidName { .. } | PublishError::MetadataTooLarge { .. } => {
                py.get_type::<InvalidArgumentError>()
            }
            PublishError::NotHeld { .. } | PublishError::Deleted { .. } => {
                py.get_type::<InvalidHandleError>()
            }
            PublishError::AlreadyPublished { .. } | PublishError::NameFreed { .. } => {
                py.get_type::<AlreadyPublishedError>()
            }
            PublishError::NotPublisher { .. } => py.get_type::<ReadOnlyError>(),
        },
        RequestError::Unpublish(e) => match e {
            UnpublishError::UnknownName { .. } => py.get_type::<NotFoundError>(),
            UnpublishError::NotPublisher { .. } => py.get_type::<ReadOnlyError>(),
        },
        RequestError::Get(e) => match e {
            GetError::UnknownName { .. } | GetError::NameFreed { .. } => {
                py.get_type::<NotFoundError>()
            }
            GetError::ReadOnlyPublication { .. } | GetError::Sealed { .. } => {
                py.get_type::<ReadOnlyError>()
            }
            GetError::System { .. } => py.get_type::<Error>(),
        },
        RequestError::Release(e) => match e {
            ReleaseError::NotHeld { .. } => py.get_type::<InvalidHandleError>(),
            ReleaseError::ReadOnlyHandle { .. } => py.get_type::<ReadOnlyError>(),
            ReleaseError::EntryMemory { .. } => py.get_type::<InvalidArgumentError>(),
        },
        RequestError::Write(e) => match e {
            WriteError::NotHeld { .. } | WriteError::NotWriter { .. } => {
                py.get_type::<InvalidHandleError>()
            }
            WriteError::ReadOnlyHandle { .. } | WriteError::Sealed { .. } => {
                py.get_type::<ReadOnlyError>()
            }
            WriteError::WriterBusy { .. } => py.get_type::<BusyError>(),
        },
        RequestError::Job(e) => match e {
            Job::NotInJob | Job::AlreadyJoined | Job::StageTaken { .. } | Job::Aborted { .. } => {
                py.get_type::<JobError>()
            }
        },
        RequestError::Entry(e) => match e {
            EntryError::UnknownEntry { .. }
            | EntryError::NoEntryNamed { .. }
            | EntryError::NotAllocated { .. }
            | EntryError::Released { .. }
            | EntryError::InputNotReady { .. } => py.get_type::<NotFoundError>(),
            EntryError::InputReadOnly { .. }
            | EntryError::OutputFinal { .. }
            | EntryError::Sealed { .. } => py.get_type::<ReadOnlyError>(),
            EntryError::NotOfOperator { .. }
            | EntryError::Preallocated { .. }
            | EntryError::ShapeUnset { .. }
            | EntryError::Shape { .. } => py.get_type::<InvalidArgumentError>(),
            EntryError::NotInJob => py.get_type::<JobError>(),
            EntryError::OutOfMemory { .. } => py.get_type::<OutOfMemoryError>(),
            EntryError::Device { .. } => py.get_type::<DeviceError>(),
            EntryError::System { .. } => py.get_type::<Error>(),
        },
        RequestError::BadRequest { .. } => py.get_type::<Error>(),
    }
}

/// The exception class of a context error. Exhaustive, like [`refusal_class`].
fn context_error_class<'py>(py: Python<'py>, e: &ContextError) -> Bound<'py, pyo3::types::PyType> {
    match e {
        ContextError::Refused(r) => refusal_class(py, r),
        ContextError::Meta(_)
        | ContextError::MetadataTooLarge { .. }
        | ContextError::WrongElementType { .. }
        | ContextError::LengthMismatch { .. } => py.get_type::<InvalidArgumentError>(),
        ContextError::ReadOnly => py.get_type::<ReadOnlyError>(),
        ContextError::Untyped => py.get_type::<NotFoundError>(),
        ContextError::NotHostMemory { .. } | ContextError::NotDeviceMemory => {
            py.get_type::<InvalidArgumentError>()
        }
        ContextError::Device { .. } => py.get_type::<DeviceError>(),
        ContextError::ServerGone(_)
        | ContextError::Connect { .. }
        | ContextError::NoContextInEnvironment { .. }
        | ContextError::Forked { .. }
        | ContextError::Timeout { .. }
        | ContextError::OutOfStep => py.get_type::<ContextGoneError>(),
        ContextError::Segment(_) | ContextError::Protocol(_) => py.get_type::<Error>(),
    }
}

/// The exception for a context error: its class says which kind of failure it is.
pub(crate) fn context_error(e: &ContextError) -> PyErr {
    let message = e.to_string();
    Python::attach(|py| PyErr::from_type(context_error_class(py, e), message))
}

/// Python's `repr()` of a string, for `__repr__`s that read as Python, not Rust.
pub(crate) fn py_repr(py: Python<'_>, text: &str) -> String {
    pyo3::types::PyString::new(py, text)
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| format!("'{text}'"))
}

/// A tuple as Python writes it: `(3,)`, `(2, 3)`.
pub(crate) fn py_tuple<T: std::fmt::Display>(items: &[T]) -> String {
    match items {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            items
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A list of names as Python writes it: `['a', 'b']`.
pub(crate) fn py_list(py: Python<'_>, names: &[String]) -> String {
    format!(
        "[{}]",
        names
            .iter()
            .map(|n| py_repr(py, n))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Turns an error into `fastio.Error` with its message; a [`ContextError`] becomes the
/// subclass that says which kind of failure it is ([`context_error`]).
pub(crate) fn error(e: impl std::fmt::Display + 'static) -> PyErr {
    match (&e as &dyn std::any::Any).downcast_ref::<ContextError>() {
        Some(e) => context_error(e),
        None => Error::new_err(e.to_string()),
    }
}

/// How a handle may touch its memory (Clara's `IOAccess`).
#[pyclass(eq, eq_int, frozen, from_py_object, module = "fastio")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IOAccess {
    /// Reading only: numpy views are not writeable and the mapping is `PROT_READ`.
    ReadOnly,
    /// Reading and writing.
    ReadWrite,
}

/// Runs the `fastio` command (the same code as the `fastio` binary) with `args` (the
/// first is the program's name) and returns its exit status. `program_dirs` are where the
/// command is installed: `fastio run` looks there first, in order, for operator programs. The GIL
/// is released meanwhile. Used by the `fastio` console script (`fastio._cli`).
#[pyfunction]
#[pyo3(signature = (args, program_dirs = Vec::new()))]
fn cli_main(
    py: Python<'_>,
    args: Vec<std::ffi::OsString>,
    program_dirs: Vec<std::path::PathBuf>,
) -> i32 {
    py.detach(|| fastio::cli::main(args, program_dirs))
}

/// The native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("Error", m.py().get_type::<Error>())?;
    m.add("NotFoundError", m.py().get_type::<NotFoundError>())?;
    m.add(
        "AlreadyPublishedError",
        m.py().get_type::<AlreadyPublishedError>(),
    )?;
    m.add("ReadOnlyError", m.py().get_type::<ReadOnlyError>())?;
    m.add("BusyError", m.py().get_type::<BusyError>())?;
    m.add(
        "InvalidHandleError",
        m.py().get_type::<InvalidHandleError>(),
    )?;
    m.add(
        "InvalidArgumentError",
        m.py().get_type::<InvalidArgumentError>(),
    )?;
    m.add("OutOfMemoryError", m.py().get_type::<OutOfMemoryError>())?;
    m.add("JobError", m.py().get_type::<JobError>())?;
    m.add("DeviceError", m.py().get_type::<DeviceError>())?;
    m.add("ContextGoneError", m.py().get_type::<ContextGoneError>())?;
    m.add("ExportError", dlpack::export_error_type(m.py())?)?;
    m.add_class::<IOAccess>()?;
    m.add_class::<context::FastIOContext>()?;
    m.add_class::<context::ContextServer>()?;
    m.add_class::<allocation::FastIOAllocation>()?;
    m.add_class::<buffer::View>()?;
    m.add_class::<device::DeviceView>()?;
    m.add_class::<operator::Driver>()?;
    m.add_class::<operator::Payload>()?;
    m.add_class::<operator::PayloadEntry>()?;
    m.add_class::<operator::PayloadCollection>()?;
    m.add_class::<operator::FastIOEntry>()?;
    m.add_function(wrap_pyfunction!(context::serve, m)?)?;
    m.add_function(wrap_pyfunction!(listing::jobs, m)?)?;
    m.add_function(wrap_pyfunction!(listing::inspect, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add("CONTEXT_ENV", fastio_context::CONTEXT_ENV)?;
    Ok(())
}
