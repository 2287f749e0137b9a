//! Failures at the boundary: result codes, the calling thread's last message, and the
//! guard that keeps panics on the Rust side.

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use fastio_context::{
    ContextError, CreateError, EntryError, GetError, JobError, PublishError, ReleaseError,
    RequestError, UnpublishError, WriteError,
};

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

/// The C result code of a refusal. Exhaustive, without a wildcard: a new refusal does not
/// compile until it has a code here (and in the Python mapping).
pub(crate) fn refusal_code(r: &RequestError) -> result {
    match r {
        RequestError::Create(e) => match e {
            CreateError::OutOfMemory { .. }
            | CreateError::Device { .. }
            | CreateError::System { .. } => NVIDIA_CLARA_RESULT_FAILED,
        },
        RequestError::Publish(e) => match e {
            PublishError::InvalidName { .. } | PublishError::MetadataTooLarge { .. } => {
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT
            }
            PublishError::NotHeld { .. } => NVIDIA_CLARA_RESULT_INVALID_HANDLE,
            PublishError::Deleted { .. } | PublishError::AlreadyPublished { .. } => {
                NVIDIA_CLARA_RESULT_FAILED
            }
            // As a get of the name: the freed publication is not found.
            PublishError::NameFreed { .. } => NVIDIA_CLARA_RESULT_NOT_FOUND,
            PublishError::NotPublisher { .. } => NVIDIA_CLARA_RESULT_READ_ONLY,
        },
        RequestError::Unpublish(e) => match e {
            UnpublishError::UnknownName { .. } => NVIDIA_CLARA_RESULT_NOT_FOUND,
            UnpublishError::NotPublisher { .. } => NVIDIA_CLARA_RESULT_READ_ONLY,
        },
        RequestError::Get(e) => match e {
            GetError::UnknownName { .. } | GetError::NameFreed { .. } => {
                NVIDIA_CLARA_RESULT_NOT_FOUND
            }
            GetError::ReadOnlyPublication { .. } | GetError::Sealed { .. } => {
                NVIDIA_CLARA_RESULT_READ_ONLY
            }
            GetError::System { .. } => NVIDIA_CLARA_RESULT_FAILED,
        },
        RequestError::Release(e) => match e {
            ReleaseError::NotHeld { .. } => NVIDIA_CLARA_RESULT_INVALID_HANDLE,
            ReleaseError::ReadOnlyHandle { .. } => NVIDIA_CLARA_RESULT_READ_ONLY,
            ReleaseError::EntryMemory { .. } => NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
        },
        RequestError::Write(e) => match e {
            WriteError::NotHeld { .. } | WriteError::NotWriter { .. } => {
                NVIDIA_CLARA_RESULT_INVALID_HANDLE
            }
            WriteError::ReadOnlyHandle { .. } | WriteError::Sealed { .. } => {
                NVIDIA_CLARA_RESULT_READ_ONLY
            }
            WriteError::WriterBusy { .. } => NVIDIA_CLARA_RESULT_BUSY,
        },
        RequestError::Job(e) => match e {
            JobError::NotInJob
            | JobError::AlreadyJoined
            | JobError::StageTaken { .. }
            | JobError::Aborted { .. } => NVIDIA_CLARA_RESULT_FAILED,
        },
        RequestError::Entry(e) => match e {
            EntryError::UnknownEntry { .. }
            | EntryError::NoEntryNamed { .. }
            | EntryError::NotAllocated { .. }
            | EntryError::Released { .. }
            | EntryError::InputNotReady { .. } => NVIDIA_CLARA_RESULT_NOT_FOUND,
            EntryError::InputReadOnly { .. }
            | EntryError::OutputFinal { .. }
            | EntryError::Sealed { .. } => NVIDIA_CLARA_RESULT_READ_ONLY,
            EntryError::NotOfOperator { .. }
            | EntryError::Preallocated { .. }
            | EntryError::ShapeUnset { .. }
            | EntryError::Shape { .. } => NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
            EntryError::NotInJob
            | EntryError::OutOfMemory { .. }
            | EntryError::Device { .. }
            | EntryError::System { .. } => NVIDIA_CLARA_RESULT_FAILED,
        },
        RequestError::BadRequest { .. } => NVIDIA_CLARA_RESULT_FAILED,
    }
}

/// The C result code of a context error. Exhaustive, like [`refusal_code`].
pub(crate) fn context_code(e: &ContextError) -> result {
    match e {
        ContextError::Refused(r) => refusal_code(r),
        ContextError::Meta(_) | ContextError::MetadataTooLarge { .. } => {
            NVIDIA_CLARA_RESULT_INVALID_ARGUMENT
        }
        ContextError::ReadOnly => NVIDIA_CLARA_RESULT_READ_ONLY,
        ContextError::Untyped => NVIDIA_CLARA_RESULT_NOT_FOUND,
        ContextError::NotHostMemory { .. } | ContextError::NotDeviceMemory => {
            NVIDIA_CLARA_RESULT_INVALID_ARGUMENT
        }
        ContextError::Device { .. } => NVIDIA_CLARA_RESULT_FAILED,
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
    }
}

impl From<ContextError> for Error {
    fn from(e: ContextError) -> Self {
        Self::new(context_code(&e), e.to_string())
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

    /// One example of every refusal, with the code C callers get for it.
    fn every_refusal() -> Vec<(RequestError, result)> {
        let name = || "n".to_string();
        let oom = || ("no room".to_string(), 1usize);
        vec![
            (
                CreateError::OutOfMemory {
                    size: oom().1,
                    message: oom().0,
                }
                .into(),
                NVIDIA_CLARA_RESULT_FAILED,
            ),
            (
                CreateError::Device {
                    memory: fastio_context::MemoryKind::Cuda { device: 0 },
                    reason: name(),
                }
                .into(),
                NVIDIA_CLARA_RESULT_FAILED,
            ),
            (
                CreateError::System { message: name() }.into(),
                NVIDIA_CLARA_RESULT_FAILED,
            ),
            (
                PublishError::InvalidName {
                    name: name(),
                    reason: name(),
                }
                .into(),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
            ),
            (
                PublishError::NotHeld { id: 1 }.into(),
                NVIDIA_CLARA_RESULT_INVALID_HANDLE,
            ),
            (
                PublishError::Deleted { id: 1 }.into(),
                NVIDIA_CLARA_RESULT_FAILED,
            ),
            (
                PublishError::MetadataTooLarge { needed: 2, size: 1 }.into(),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
            ),
            (
                PublishError::AlreadyPublished { name: name() }.into(),
                NVIDIA_CLARA_RESULT_FAILED,
            ),
            (
                PublishError::NameFreed { name: name() }.into(),
                NVIDIA_CLARA_RESULT_NOT_FOUND,
            ),
            (
                UnpublishError::UnknownName { name: name() }.into(),
                NVIDIA_CLARA_RESULT_NOT_FOUND,
            ),
            (
                UnpublishError::NotPublisher { name: name() }.into(),
                NVIDIA_CLARA_RESULT_READ_ONLY,
            ),
            (
                PublishError::NotPublisher { name: name() }.into(),
                NVIDIA_CLARA_RESULT_READ_ONLY,
            ),
            (
                ReleaseError::ReadOnlyHandle { id: 1 }.into(),
                NVIDIA_CLARA_RESULT_READ_ONLY,
            ),
            (
                GetError::UnknownName { name: name() }.into(),
                NVIDIA_CLARA_RESULT_NOT_FOUND,
            ),
            (
                GetError::NameFreed { name: name() }.into(),
                NVIDIA_CLARA_RESULT_NOT_FOUND,
            ),
            (
                GetError::ReadOnlyPublication { name: name() }.into(),
                NVIDIA_CLARA_RESULT_READ_ONLY,
            ),
            (
                GetError::Sealed {
                    name: name(),
                    id: 1,
                }
                .into(),
                NVIDIA_CLARA_RESULT_READ_ONLY,
            ),
            (
                GetError::System { message: name() }.into(),
                NVIDIA_CLARA_RESULT_FAILED,
            ),
            (
                ReleaseError::NotHeld { id: 1 }.into(),
                NVIDIA_CLARA_RESULT_INVALID_HANDLE,
            ),
            (
                ReleaseError::EntryMemory {
                    id: 1,
                    entry: name(),
                }
                .into(),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
            ),
            (
                WriteError::NotHeld { id: 1 }.into(),
                NVIDIA_CLARA_RESULT_INVALID_HANDLE,
            ),
            (
                WriteError::ReadOnlyHandle { id: 1 }.into(),
                NVIDIA_CLARA_RESULT_READ_ONLY,
            ),
            (
                WriteError::Sealed { id: 1 }.into(),
                NVIDIA_CLARA_RESULT_READ_ONLY,
            ),
            (
                WriteError::WriterBusy { id: 1 }.into(),
                NVIDIA_CLARA_RESULT_BUSY,
            ),
            (
                WriteError::NotWriter { id: 1 }.into(),
                NVIDIA_CLARA_RESULT_INVALID_HANDLE,
            ),
            (JobError::NotInJob.into(), NVIDIA_CLARA_RESULT_FAILED),
            (JobError::AlreadyJoined.into(), NVIDIA_CLARA_RESULT_FAILED),
            (
                JobError::StageTaken { stage: name() }.into(),
                NVIDIA_CLARA_RESULT_FAILED,
            ),
            (
                JobError::Aborted { reason: name() }.into(),
                NVIDIA_CLARA_RESULT_FAILED,
            ),
            (EntryError::NotInJob.into(), NVIDIA_CLARA_RESULT_FAILED),
            (
                EntryError::UnknownEntry { id: 1 }.into(),
                NVIDIA_CLARA_RESULT_NOT_FOUND,
            ),
            (
                EntryError::NoEntryNamed {
                    role: name(),
                    name: name(),
                    known: vec![],
                }
                .into(),
                NVIDIA_CLARA_RESULT_NOT_FOUND,
            ),
            (
                EntryError::NotOfOperator { name: name() }.into(),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
            ),
            (
                EntryError::InputReadOnly { name: name() }.into(),
                NVIDIA_CLARA_RESULT_READ_ONLY,
            ),
            (
                EntryError::OutputFinal { name: name() }.into(),
                NVIDIA_CLARA_RESULT_READ_ONLY,
            ),
            (
                EntryError::InputNotReady { name: name() }.into(),
                NVIDIA_CLARA_RESULT_NOT_FOUND,
            ),
            (
                EntryError::NotAllocated { name: name() }.into(),
                NVIDIA_CLARA_RESULT_NOT_FOUND,
            ),
            (
                EntryError::Preallocated { name: name() }.into(),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
            ),
            (
                EntryError::ShapeUnset {
                    name: name(),
                    shape: vec![-1],
                    dynamic: vec![0],
                }
                .into(),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
            ),
            (
                EntryError::Shape {
                    name: name(),
                    dims: vec![1],
                    reason: name(),
                }
                .into(),
                NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
            ),
            (
                EntryError::Sealed { name: name() }.into(),
                NVIDIA_CLARA_RESULT_READ_ONLY,
            ),
            (
                EntryError::OutOfMemory {
                    size: oom().1,
                    message: oom().0,
                }
                .into(),
                NVIDIA_CLARA_RESULT_FAILED,
            ),
            (
                EntryError::Device {
                    name: name(),
                    memory: fastio_context::MemoryKind::Cuda { device: 0 },
                    reason: name(),
                }
                .into(),
                NVIDIA_CLARA_RESULT_FAILED,
            ),
            (
                EntryError::System { message: name() }.into(),
                NVIDIA_CLARA_RESULT_FAILED,
            ),
            (
                RequestError::BadRequest { message: name() },
                NVIDIA_CLARA_RESULT_FAILED,
            ),
        ]
    }

    #[test]
    fn every_refusal_has_its_pinned_c_code_and_its_message() {
        for (refusal, code) in every_refusal() {
            let message = refusal.to_string();
            let error = Error::from(ContextError::Refused(refusal.clone()));
            assert_eq!(error.code, code, "{refusal:?}");
            assert_eq!(error.message, message, "{refusal:?}");
        }
    }

    #[test]
    fn the_four_old_entry_access_refusals_reach_c_with_different_codes() {
        let code = |r: RequestError| refusal_code(&r);
        let n = || "volume".to_string();
        // Writing an input and writing a finished output are read-only; asking for an
        // entry the operator does not have is a bad argument, as is freeing entry memory.
        assert_eq!(
            code(EntryError::InputReadOnly { name: n() }.into()),
            NVIDIA_CLARA_RESULT_READ_ONLY
        );
        assert_eq!(
            code(EntryError::OutputFinal { name: n() }.into()),
            NVIDIA_CLARA_RESULT_READ_ONLY
        );
        assert_eq!(
            code(EntryError::NotOfOperator { name: n() }.into()),
            NVIDIA_CLARA_RESULT_INVALID_ARGUMENT
        );
        assert_eq!(
            code(ReleaseError::EntryMemory { id: 1, entry: n() }.into()),
            NVIDIA_CLARA_RESULT_INVALID_ARGUMENT
        );
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
