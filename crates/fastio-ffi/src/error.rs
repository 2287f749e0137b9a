//! Failures at the boundary: result codes, the calling thread's last message, and the
//! guard that keeps panics on the Rust side.

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use fastio_context::{ContextError, RequestError};

use crate::types::*;

/// A failure to report to C: its code and a readable message.
#[derive(Debug)]
pub(crate) struct Error {
    pub(crate) code: result,
    pub(crate) message: String,
}

impl Error {
    pub(crate) fn new(code: result, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(NVIDIA_CLARA_RESULT_INVALID_ARGUMENT, message)
    }

    pub(crate) fn null(parameter: &str) -> Self {
        Self::invalid(format!("`{parameter}` is NULL"))
    }
}

impl From<ContextError> for Error {
    fn from(e: ContextError) -> Self {
        let code = match &e {
            ContextError::Refused(r) => match r {
                RequestError::UnknownName { .. } | RequestError::NameFreed { .. } => {
                    NVIDIA_CLARA_RESULT_NOT_FOUND
                }
                RequestError::InvalidName { .. } | RequestError::MetadataTooLarge { .. } => {
                    NVIDIA_CLARA_RESULT_INVALID_ARGUMENT
                }
                RequestError::NotHeld { .. } => NVIDIA_CLARA_RESULT_INVALID_HANDLE,
                RequestError::EntryNotAllocated { .. } | RequestError::UnknownEntry { .. } => {
                    NVIDIA_CLARA_RESULT_NOT_FOUND
                }
                RequestError::EntryShape { .. } => NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
                RequestError::EntryAccess { .. } => NVIDIA_CLARA_RESULT_READ_ONLY,
                RequestError::WriterBusy { .. } => NVIDIA_CLARA_RESULT_BUSY,
                RequestError::InputNotReady { .. } => NVIDIA_CLARA_RESULT_NOT_FOUND,
                RequestError::ReadOnlyPublication { .. }
                | RequestError::NotPublisher { .. }
                | RequestError::ReadOnlyHandle { .. }
                | RequestError::Sealed { .. } => NVIDIA_CLARA_RESULT_READ_ONLY,
                RequestError::OutOfMemory { .. }
                | RequestError::AlreadyPublished { .. }
                | RequestError::Deleted { .. }
                | RequestError::NotInJob
                | RequestError::JobAborted { .. }
                | RequestError::BadRequest { .. }
                | RequestError::Internal { .. } => NVIDIA_CLARA_RESULT_FAILED,
            },
            ContextError::Meta(_) => NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
            ContextError::ReadOnly => NVIDIA_CLARA_RESULT_READ_ONLY,
            ContextError::Untyped => NVIDIA_CLARA_RESULT_NOT_FOUND,
            ContextError::WrongElementType { .. } | ContextError::LengthMismatch { .. } => {
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT
            }
            ContextError::Segment(_)
            | ContextError::ServerGone(_)
            | ContextError::Connect { .. }
            | ContextError::NoContextInEnvironment { .. }
            | ContextError::Protocol(_)
            | ContextError::Forked { .. }
            | ContextError::Timeout { .. }
            | ContextError::OutOfStep => NVIDIA_CLARA_RESULT_FAILED,
        };
        Self::new(code, e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(function: &str, message: &str) {
    let text = format!("{function}: {message}").replace('\0', "\\0");
    let text = CString::new(text).unwrap_or_default();
    // A thread being torn down has no slot left; the code still reports the failure.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = text);
}

/// Runs the body of an exported function: converts its error into a code and the
/// thread's last message, and catches any panic so that none crosses into C.
pub(crate) fn guard(function: &str, body: impl FnOnce() -> Result<(), Error>) -> result {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => NVIDIA_CLARA_RESULT_OK,
        Ok(Err(e)) => {
            set_last_error(function, &e.message);
            e.code
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(
                function,
                &format!("internal error (a bug in fastio, please report it): {what}"),
            );
            NVIDIA_CLARA_RESULT_INTERNAL
        }
    }
}

/// The message of the calling thread's last failure, as a NUL-terminated string; `""` if
/// no call on this thread has failed yet.
///
/// The string belongs to the library and stays valid until the next failing call on the
/// same thread; copy it to keep it. Successful calls leave it unchanged (like `errno`).
/// Each thread has its own message. fastio extension: the original's way of reporting
/// errors is not documented.
#[unsafe(no_mangle)]
pub extern "C" fn nvidia_clara_last_error_message() -> *const c_char {
    catch_unwind(|| {
        LAST_ERROR
            .try_with(|slot| slot.borrow().as_ptr())
            .unwrap_or(c"".as_ptr())
    })
    .unwrap_or(c"".as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: the pointer is to the thread's live message (or a static empty string),
        // which nothing changes before it is copied here.
        unsafe { CStr::from_ptr(nvidia_clara_last_error_message()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_in_a_body_becomes_an_internal_error_with_a_message() {
        let code = guard("nvidia_clara_test", || panic!("boom"));
        assert_eq!(code, NVIDIA_CLARA_RESULT_INTERNAL);
        assert!(
            last().contains("nvidia_clara_test: internal error"),
            "{}",
            last()
        );
        assert!(last().contains("boom"));
    }

    #[test]
    fn success_keeps_the_last_failure_message() {
        assert_ne!(guard("f", || Err(Error::null("x"))), 0);
        assert_eq!(guard("g", || Ok(())), 0);
        assert_eq!(last(), "f: `x` is NULL");
    }

    #[test]
    fn interior_nul_in_a_message_does_not_lose_it() {
        let _ = guard("f", || Err(Error::invalid("a\0b")));
        assert_eq!(last(), "f: a\\0b");
    }
}
