//! Getting a Fast I/O context outside a pipeline job (fastio extensions: in a job, the
//! context comes from the payload).

use std::ffi::c_char;
use std::sync::LazyLock;

use fastio_context::Context;

use crate::error::{Error, guard};
use crate::handles::{Table, lock};
use crate::ptr::{non_null, str_arg, write_out};
use crate::types::*;

/// What C's `nvidia_clara_fastio_context*` stands for.
pub(crate) struct ContextState {
    pub(crate) context: Context,
    /// It came from a payload, which owns it: C may not release it.
    pub(crate) borrowed: bool,
}

/// The live context handles.
pub(crate) static CONTEXTS: LazyLock<Table<ContextState>> =
    LazyLock::new(|| Table::new("nvidia_clara_fastio_context"));

fn hand_out(
    context: Context,
    context_out: *mut *mut nvidia_clara_fastio_context,
) -> Result<(), Error> {
    let (handle, _) = CONTEXTS.insert(ContextState {
        context,
        borrowed: false,
    });
    // SAFETY: `context_out` was checked non-NULL by the caller of this function and is
    // writable by the C caller's contract.
    unsafe { write_out(context_out, handle, "context_out") }
}

/// A private context that lives in this process: allocations made through it can be
/// published and got by this process only. For tests and single-process programs.
///
/// On success `*context_out` is a new context handle, to be released with
/// `nvidia_clara_fastio_context__release`. fastio extension.
///
/// # Safety
/// `context_out` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio_context__create_in_process(
    context_out: *mut *mut nvidia_clara_fastio_context,
) -> result {
    guard("nvidia_clara_fastio_context__create_in_process", || {
        non_null(context_out, "context_out")?;
        hand_out(Context::in_process(), context_out)
    })
}

/// Joins the context server at `address`: `@name` as printed by `fastio serve`
/// (`FASTIO_CONTEXT=@...`), or `fd:N` for an inherited connected socket. If `address` is
/// NULL, the `FASTIO_CONTEXT` environment variable is read instead.
///
/// On success `*context_out` is a new context handle, to be released with
/// `nvidia_clara_fastio_context__release`. fastio extension.
///
/// # Safety
/// `address` is NULL or a NUL-terminated string; `context_out` is NULL or valid for
/// writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio_context__connect(
    address: *const c_char,
    context_out: *mut *mut nvidia_clara_fastio_context,
) -> result {
    guard("nvidia_clara_fastio_context__connect", || {
        non_null(context_out, "context_out")?;
        let context = if address.is_null() {
            Context::from_env()?
        } else {
            // SAFETY: not NULL; a NUL-terminated string by the C caller's contract.
            Context::connect(unsafe { str_arg(address, "address") }?)?
        };
        hand_out(context, context_out)
    })
}

/// Releases a context handle made by `nvidia_clara_fastio_context__create_in_process` or
/// `__connect`. Allocation handles obtained through it stay valid until they are
/// released (they keep the connection open). Releasing it twice fails. Never call it on
/// a context from `nvidia_clara_payload__fastio_context`. fastio extension.
#[unsafe(no_mangle)]
pub extern "C" fn nvidia_clara_fastio_context__release(
    context: *mut nvidia_clara_fastio_context,
) -> result {
    guard("nvidia_clara_fastio_context__release", || {
        let (state, _) = CONTEXTS.get(context)?;
        if lock(&state).borrowed {
            return Err(Error::invalid(
                "this context belongs to the payload; it must not be released",
            ));
        }
        CONTEXTS.remove(context).map(drop)
    })
}
