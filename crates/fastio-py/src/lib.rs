//! The Python module `fastio` (native part `fastio._native`): Clara's Fast I/O classes
//! over [`fastio_context`], with zero-copy numpy views of shared memory.
//!
//! Built into a wheel by maturin (`pip install ./crates/fastio-py`); the pure-Python
//! packages `fastio` and `clara` in `python/` re-export these classes.
//!
//! API Boundary: every failure reaches Python as `fastio.Error` with the Rust error's
//! message; nothing here panics on input from Python (locks are recovered, never
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

use pyo3::prelude::*;

pyo3::create_exception!(
    fastio,
    Error,
    pyo3::exceptions::PyException,
    "Raised by every failing Fast I/O call; the message says what went wrong."
);

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

/// Turns any displayable error into `fastio.Error` with its message.
pub(crate) fn error(e: impl std::fmt::Display) -> PyErr {
    Error::new_err(e.to_string())
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
