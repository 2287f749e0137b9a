//! The Clara Pipeline Driver: `nvidia_clara_cpd__*` (the operator life-cycle) and the
//! payload the execute callback gets (`nvidia_clara_payload__*`,
//! `nvidia_clara_payload_entry__*`), bound to fastio-operator's `Driver`.

use std::ffi::{CString, c_char, c_int, c_void};
use std::sync::{Arc, LazyLock};
use std::thread::{JoinHandle, ThreadId};

use fastio_context::Allocation;
use fastio_job::FastIoEntry;
use fastio_operator::{CallbackError, Callbacks, Driver, PathEntry, Payload};

use crate::alloc::retire_context_allocations;
use crate::context::{CONTEXTS, ContextState};
use crate::entry::{ENTRIES, EntryState};
use crate::error::{Error, guard};
use crate::handles::{Table, lock, pointer};
use crate::ptr::{non_null, write_out, write_string};
use crate::types::*;

enum Run {
    Created,
    Running {
        thread: JoinHandle<Result<(), String>>,
        id: ThreadId,
    },
    // A thread is in wait_for_completion or release, joining the life-cycle thread
    // (whose id this is).
    Joining {
        id: ThreadId,
    },
    Finished(Result<(), String>),
}

/// What C's `nvidia_clara_cpd*` stands for.
pub(crate) struct CpdState {
    driver: Arc<Driver>,
    application_data: usize,
    notification: nvidia_clara_cpd_notification_callback,
    run: Run,
}

static CPDS: LazyLock<Table<CpdState>> = LazyLock::new(|| Table::new("nvidia_clara_cpd"));

/// What C's `nvidia_clara_payload*` stands for. The arrays are NULL-terminated arrays of
/// handle pointers, stored as addresses, and stay put until execute returns.
pub(crate) struct PayloadState {
    /// The operator's CUDA stream, for `nvidia_clara_payload__cuda_stream`.
    pub(crate) cuda: fastio_operator::CudaStreamSource,
    context: u64,
    inputs: Vec<usize>,
    outputs: Vec<usize>,
    fastio_inputs: Vec<usize>,
    fastio_outputs: Vec<usize>,
}

pub(crate) static PAYLOADS: LazyLock<Table<PayloadState>> =
    LazyLock::new(|| Table::new("nvidia_clara_payload"));
static PATH_ENTRIES: LazyLock<Table<PathEntry>> =
    LazyLock::new(|| Table::new("nvidia_clara_payload_entry"));

/// Creates a driver instance: joins the job this process was started for by `fastio run`
/// (`FASTIO_CONTEXT`), or, without one, sets up a standalone run (a private context;
/// `FASTIO_PIPELINE` + `FASTIO_STAGE` give it an operator's FastIO entries,
/// `NVIDIA_CLARA_INPUTPATHS` / `_OUTPUTPATHS` its disk entries). `notification_callback`
/// may be NULL (no notifications); `application_data` is handed back by
/// `nvidia_clara_cpd__application_data`. Release it with `nvidia_clara_cpd__release`.
/// [signature found in Clara's documentation]
///
/// # Safety
/// `cpd_out` is NULL or valid for writing one pointer; `notification_callback` is NULL
/// or a function of its type, callable from another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_cpd__create(
    notification_callback: nvidia_clara_cpd_notification_callback,
    application_data: *mut c_void,
    cpd_out: *mut *mut nvidia_clara_cpd,
) -> result {
    guard("nvidia_clara_cpd__create", || {
        non_null(cpd_out, "cpd_out")?;
        let driver = Driver::from_env().map_err(|e| {
            Error::new(
                NVIDIA_CLARA_RESULT_FAILED,
                format!("cannot join the job: {e}"),
            )
        })?;
        let (handle, _) = CPDS.insert(CpdState {
            driver: Arc::new(driver),
            application_data: application_data.expose_provenance(),
            notification: notification_callback,
            run: Run::Created,
        });
        // SAFETY: checked non-NULL; writable by the C caller's contract.
        unsafe { write_out(cpd_out, handle, "cpd_out") }
    })
}

/// Writes the `application_data` given to `nvidia_clara_cpd__create` to `*data_out`.
/// [inferred; Clara's Python and .NET APIs have this property]
///
/// # Safety
/// `data_out` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_cpd__application_data(
    cpd: *mut nvidia_clara_cpd,
    data_out: *mut *mut c_void,
) -> result {
    guard("nvidia_clara_cpd__application_data", || {
        non_null(data_out, "data_out")?;
        let (state, _) = CPDS.get(cpd)?;
        let address = lock(&state).application_data;
        // The address is handed back as it came; the library never used it.
        let data = std::ptr::with_exposed_provenance_mut::<c_void>(address);
        // SAFETY: checked non-NULL; writable by the C caller's contract.
        unsafe { write_out(data_out, data, "data_out") }
    })
}

fn text_of(cpd: *mut nvidia_clara_cpd, f: impl FnOnce(&Driver) -> String) -> Result<String, Error> {
    let (state, _) = CPDS.get(cpd)?;
    let driver = lock(&state).driver.clone();
    Ok(f(&driver))
}

/// The job's identifier (a UUID), with the buffer protocol of
/// `nvidia_clara_payload_entry__name`. [fastio extension; Clara's "query" call is not
/// documented]
///
/// # Safety
/// `buffer` is NULL or valid for `buffer_size` bytes; `len_out` is NULL or valid for one
/// write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_cpd__job_id(
    cpd: *mut nvidia_clara_cpd,
    buffer: *mut c_char,
    buffer_size: c_int,
    len_out: *mut usize,
) -> result {
    guard("nvidia_clara_cpd__job_id", || {
        let text = text_of(cpd, |d| d.job_id().to_owned())?;
        // SAFETY: forwarded: the same contract as this function's.
        unsafe { write_string(&text, buffer, buffer_size, len_out) }
    })
}

/// The job's name (the pipeline's), with the buffer protocol of
/// `nvidia_clara_payload_entry__name`. [fastio extension]
///
/// # Safety
/// As `nvidia_clara_cpd__job_id`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_cpd__job_name(
    cpd: *mut nvidia_clara_cpd,
    buffer: *mut c_char,
    buffer_size: c_int,
    len_out: *mut usize,
) -> result {
    guard("nvidia_clara_cpd__job_name", || {
        let text = text_of(cpd, |d| d.job_name().to_owned())?;
        // SAFETY: forwarded: the same contract as this function's.
        unsafe { write_string(&text, buffer, buffer_size, len_out) }
    })
}

/// This operator's name in the pipeline definition, with the buffer protocol of
/// `nvidia_clara_payload_entry__name`. [fastio extension]
///
/// # Safety
/// As `nvidia_clara_cpd__job_id`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_cpd__stage_name(
    cpd: *mut nvidia_clara_cpd,
    buffer: *mut c_char,
    buffer_size: c_int,
    len_out: *mut usize,
) -> result {
    guard("nvidia_clara_cpd__stage_name", || {
        let text = text_of(cpd, |d| d.stage_name().to_owned())?;
        // SAFETY: forwarded: the same contract as this function's.
        unsafe { write_string(&text, buffer, buffer_size, len_out) }
    })
}

/// Starts the life-cycle on a thread of the library and returns at once: prepare, then
/// (once every upstream operator has finished execute) execute, then cleanup, which runs
/// also after a failure. A NULL callback skips its event. Each callback runs on that
/// thread; a non-zero return fails the phase, and the job. Fails if the life-cycle was
/// started before. [name found; signature inferred]
///
/// # Safety
/// Each callback is NULL or a function of its type, callable from another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_cpd__start(
    cpd: *mut nvidia_clara_cpd,
    prepare: nvidia_clara_cpd_prepare_callback,
    execute: nvidia_clara_cpd_execute_callback,
    cleanup: nvidia_clara_cpd_cleanup_callback,
) -> result {
    guard("nvidia_clara_cpd__start", || {
        let (state, token) = CPDS.get(cpd)?;
        let mut state = lock(&state);
        if !matches!(state.run, Run::Created) {
            return Err(Error::new(
                NVIDIA_CLARA_RESULT_BUSY,
                "the life-cycle was started already; a driver instance runs it once",
            ));
        }
        let driver = state.driver.clone();
        let mut callbacks = CCallbacks {
            cpd: token,
            prepare,
            execute,
            cleanup,
            notification: state.notification,
            leftovers: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("clara-cpd".into())
            .spawn(move || {
                let outcome = driver.run(&mut callbacks).map_err(|e| e.to_string());
                // Unreleased handles of execute were reclaimed by the job and reported;
                // drop what is left of them only now.
                drop(callbacks);
                outcome
            })
            .map_err(|e| {
                Error::new(
                    NVIDIA_CLARA_RESULT_FAILED,
                    format!("cannot start the life-cycle thread: {e}"),
                )
            })?;
        let id = thread.thread().id();
        state.run = Run::Running { thread, id };
        Ok(())
    })
}

/// Joins the life-cycle thread of `state`'s driver, if it runs, and returns its outcome.
fn join(state: &std::sync::Mutex<CpdState>) -> Result<Result<(), String>, Error> {
    let here = std::thread::current().id();
    let thread = {
        let mut guard = lock(state);
        match &guard.run {
            Run::Running { id, .. } | Run::Joining { id } if *id == here => {
                return Err(Error::invalid(
                    "called from inside a life-cycle callback, which would wait for itself",
                ));
            }
            Run::Finished(outcome) => return Ok(outcome.clone()),
            Run::Created => {
                return Err(Error::invalid(
                    "the life-cycle was not started (nvidia_clara_cpd__start)",
                ));
            }
            Run::Joining { .. } => {
                return Err(Error::new(
                    NVIDIA_CLARA_RESULT_BUSY,
                    "another thread is already waiting for this driver",
                ));
            }
            Run::Running { .. } => {}
        }
        let Run::Running { thread, id } = std::mem::replace(&mut guard.run, Run::Created) else {
            return Err(Error::invalid("the driver changed state unexpectedly"));
        };
        guard.run = Run::Joining { id };
        thread
    };
    let outcome = thread
        .join()
        .unwrap_or_else(|_| Err("the life-cycle thread panicked".into()));
    lock(state).run = Run::Finished(outcome.clone());
    Ok(outcome)
}

/// Blocks until the life-cycle has finished, and returns 0 if every phase succeeded;
/// otherwise non-zero, with the first failure as the message. Calling it again returns
/// the same outcome. Fails if the life-cycle was not started, or when called from a
/// callback. [name found; signature inferred]
#[unsafe(no_mangle)]
pub extern "C" fn nvidia_clara_cpd__wait_for_completion(cpd: *mut nvidia_clara_cpd) -> result {
    guard("nvidia_clara_cpd__wait_for_completion", || {
        let (state, _) = CPDS.get(cpd)?;
        join(&state)?.map_err(|e| Error::new(NVIDIA_CLARA_RESULT_FAILED, e))
    })
}

/// Releases the driver instance; if its life-cycle is still running, waits for it first.
/// Releasing it twice fails. [name found; signature inferred]
#[unsafe(no_mangle)]
pub extern "C" fn nvidia_clara_cpd__release(cpd: *mut nvidia_clara_cpd) -> result {
    guard("nvidia_clara_cpd__release", || {
        let (state, _) = CPDS.get(cpd)?;
        if matches!(lock(&state).run, Run::Running { .. } | Run::Joining { .. }) {
            // The outcome belongs to wait_for_completion; here only the end matters.
            let _ = join(&state)?;
        }
        CPDS.remove(cpd).map(drop)
    })
}

/// The C callbacks, as fastio-operator's `Callbacks`.
struct CCallbacks {
    cpd: u64,
    prepare: nvidia_clara_cpd_prepare_callback,
    execute: nvidia_clara_cpd_execute_callback,
    cleanup: nvidia_clara_cpd_cleanup_callback,
    notification: nvidia_clara_cpd_notification_callback,
    // Allocations execute left unreleased: invalid for C, reclaimed by the job, dropped
    // with this value after the life-cycle.
    leftovers: Vec<Allocation>,
}

impl CCallbacks {
    fn notify(&self, code: result, message: &str) {
        if let Some(f) = self.notification {
            let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
            // SAFETY: the C caller of nvidia_clara_cpd__create gave a function of this
            // type; the message lives until it returns.
            unsafe { f(pointer(self.cpd), code, text.as_ptr()) };
        }
    }

    fn outcome(&self, phase: &str, code: Option<result>) -> Result<(), CallbackError> {
        match code {
            None | Some(0) => {
                self.notify(0, &format!("{phase} succeeded"));
                Ok(())
            }
            Some(code) => {
                let message = format!("the {phase} callback returned {code}");
                self.notify(NVIDIA_CLARA_RESULT_FAILED, &message);
                Err(message.into())
            }
        }
    }

    fn phase(
        &self,
        name: &str,
        f: Option<unsafe extern "C" fn(*mut nvidia_clara_cpd) -> result>,
    ) -> Result<(), CallbackError> {
        // SAFETY: the C caller of nvidia_clara_cpd__start gave a function of this type.
        let code = f.map(|f| unsafe { f(pointer(self.cpd)) });
        self.outcome(name, code)
    }
}

impl Callbacks for CCallbacks {
    fn prepare(&mut self, _driver: &Driver) -> Result<(), CallbackError> {
        self.phase("prepare", self.prepare)
    }

    fn execute(&mut self, driver: &Driver, payload: &mut Payload<'_>) -> Result<(), CallbackError> {
        let Some(execute) = self.execute else {
            return self.outcome("execute", None);
        };
        let scope = PayloadScope::open(driver, payload)?;
        // SAFETY: the C caller of nvidia_clara_cpd__start gave a function of this type;
        // the payload handle is live until `close` below.
        let code = unsafe { execute(pointer(self.cpd), pointer(scope.payload)) };
        let leftovers = scope.close();
        if !leftovers.is_empty() {
            let bytes: usize = leftovers.iter().map(Allocation::size).sum();
            self.notify(
                NVIDIA_CLARA_RESULT_FAILED,
                &format!(
                    "execute returned without releasing {} Fast I/O allocation handle(s) \
                     ({bytes} bytes); the job reclaims them",
                    leftovers.len()
                ),
            );
        }
        self.leftovers.extend(leftovers);
        self.outcome("execute", Some(code))
    }

    fn cleanup(&mut self, _driver: &Driver) -> Result<(), CallbackError> {
        self.phase("cleanup", self.cleanup)
    }
}

/// The handles C gets for one execute call, taken back when it returns.
struct PayloadScope {
    payload: u64,
    context: u64,
    paths: Vec<u64>,
    entries: Vec<u64>,
}

impl PayloadScope {
    fn open(driver: &Driver, payload: &Payload<'_>) -> Result<Self, CallbackError> {
        let (_, context) = CONTEXTS.insert::<nvidia_clara_fastio_context>(ContextState {
            context: payload.fastio_context().clone(),
            borrowed: true,
        });
        let mut scope = Self {
            payload: 0,
            context,
            paths: Vec::new(),
            entries: Vec::new(),
        };
        let mut paths = |list: &[PathEntry]| -> Vec<usize> {
            let mut array: Vec<usize> = list
                .iter()
                .map(|e| {
                    let (p, token) = PATH_ENTRIES.insert::<nvidia_clara_payload_entry>(e.clone());
                    scope.paths.push(token);
                    p.addr()
                })
                .collect();
            array.push(0);
            array
        };
        let inputs = paths(payload.input_entries());
        let outputs = paths(payload.output_entries());
        // The payload's own entries stay with it; C gets entries of its own over the same
        // memory, which it can reshape and allocate.
        let info = driver.stage_info();
        let mut entries = |list: &[fastio_job::EntryInfo]| -> Result<Vec<usize>, CallbackError> {
            let mut array = Vec::with_capacity(list.len() + 1);
            for i in list {
                let entry = FastIoEntry::open(payload.fastio_context(), i.clone())?;
                let (p, token) = ENTRIES.insert::<nvidia_clara_fastio_entry>(EntryState {
                    entry,
                    mapped: false,
                });
                scope.entries.push(token);
                array.push(p.addr());
            }
            array.push(0);
            Ok(array)
        };
        let opened =
            entries(&info.fastio_inputs).and_then(|i| Ok((i, entries(&info.fastio_outputs)?)));
        let (fastio_inputs, fastio_outputs) = match opened {
            Ok(both) => both,
            Err(e) => {
                scope.close();
                return Err(e);
            }
        };
        let (_, token) = PAYLOADS.insert::<nvidia_clara_payload>(PayloadState {
            cuda: driver.cuda_stream_source(),
            context,
            inputs,
            outputs,
            fastio_inputs,
            fastio_outputs,
        });
        scope.payload = token;
        Ok(scope)
    }

    /// Invalidates every handle of the scope and returns the allocations C left
    /// unreleased.
    fn close(self) -> Vec<Allocation> {
        PAYLOADS.remove_token(self.payload);
        for token in self.paths {
            PATH_ENTRIES.remove_token(token);
        }
        for token in self.entries {
            // An output's mapping turns read-only first (a pointer C kept past execute then
            // faults on a write rather than changing what downstream reads); dropping the
            // entry releases its handle before execute is reported finished.
            if let Some(state) = ENTRIES.remove_token(token) {
                // Only mprotect of a whole live mapping can fail here, which it does not
                // in practice; the context seals the memory against writes regardless.
                let _ = lock(&state).entry.finish();
            }
        }
        CONTEXTS.remove_token(self.context);
        retire_context_allocations(self.context)
    }
}

fn write_array<T>(
    payload: *mut nvidia_clara_payload,
    pick: impl FnOnce(&PayloadState) -> *const usize,
    out: *mut *mut *mut T,
) -> Result<(), Error> {
    non_null(out, "entries_out")?;
    let (state, _) = PAYLOADS.get(payload)?;
    let array = pick(&lock(&state));
    // The array lives in the payload's state until execute returns; it holds token
    // addresses, which C reads as (opaque) pointers of the same size.
    let array = array.cast::<*mut T>().cast_mut();
    // SAFETY: checked non-NULL; writable by the C caller's contract.
    unsafe { write_out(out, array, "entries_out") }
}

/// Writes to `*entries_out` a NULL-terminated array of the payload's disk inputs, as
/// declared in the pipeline definition. The array and its entries belong to the payload:
/// never free them; they are valid until execute returns, and a second call gives the
/// same array. [signature found in Clara's documentation]
///
/// # Safety
/// `entries_out` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_payload__input_entries(
    payload: *mut nvidia_clara_payload,
    entries_out: *mut *mut *mut nvidia_clara_payload_entry,
) -> result {
    guard("nvidia_clara_payload__input_entries", || {
        write_array(payload, |s| s.inputs.as_ptr(), entries_out)
    })
}

/// As `nvidia_clara_payload__input_entries`, for the disk outputs. [inferred by symmetry]
///
/// # Safety
/// `entries_out` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_payload__output_entries(
    payload: *mut nvidia_clara_payload,
    entries_out: *mut *mut *mut nvidia_clara_payload_entry,
) -> result {
    guard("nvidia_clara_payload__output_entries", || {
        write_array(payload, |s| s.outputs.as_ptr(), entries_out)
    })
}

/// As `nvidia_clara_payload__input_entries`, for the FastIO inputs (read-only).
/// [inferred; name chosen by fastio]
///
/// # Safety
/// `entries_out` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_payload__fastio_input_entries(
    payload: *mut nvidia_clara_payload,
    entries_out: *mut *mut *mut nvidia_clara_fastio_entry,
) -> result {
    guard("nvidia_clara_payload__fastio_input_entries", || {
        write_array(payload, |s| s.fastio_inputs.as_ptr(), entries_out)
    })
}

/// As `nvidia_clara_payload__input_entries`, for the FastIO outputs (read-write).
/// [inferred; name chosen by fastio]
///
/// # Safety
/// `entries_out` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_payload__fastio_output_entries(
    payload: *mut nvidia_clara_payload,
    entries_out: *mut *mut *mut nvidia_clara_fastio_entry,
) -> result {
    guard("nvidia_clara_payload__fastio_output_entries", || {
        write_array(payload, |s| s.fastio_outputs.as_ptr(), entries_out)
    })
}

/// Writes the job's Fast I/O context to `*context_out`. It belongs to the payload: never
/// release it (that fails), and do not keep it beyond execute. Allocation handles got
/// through it and not released when execute returns become invalid and are reclaimed by
/// the job, which reports them. [Clara: Fast I/O Context; signature inferred]
///
/// # Safety
/// `context_out` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_payload__fastio_context(
    payload: *mut nvidia_clara_payload,
    context_out: *mut *mut nvidia_clara_fastio_context,
) -> result {
    guard("nvidia_clara_payload__fastio_context", || {
        non_null(context_out, "context_out")?;
        let (state, _) = PAYLOADS.get(payload)?;
        let token = lock(&state).context;
        // SAFETY: checked non-NULL; writable by the C caller's contract.
        unsafe { write_out(context_out, pointer(token), "context_out") }
    })
}

/// The entry's name: at most one entry of the inputs, and one of the outputs, has an
/// empty name. Clara's buffer protocol: `*len_out` always receives the length including
/// the trailing NUL; if `buffer` is NULL or `buffer_size` is smaller, the call fails
/// (NVIDIA_CLARA_RESULT_BUFFER_TOO_SMALL) and writes nothing to `buffer`.
/// [signature found in Clara's documentation, with `int buffer_size` as its code shows]
///
/// # Safety
/// `buffer` is NULL or valid for `buffer_size` bytes; `len_out` is NULL or valid for one
/// write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_payload_entry__name(
    entry: *mut nvidia_clara_payload_entry,
    buffer: *mut c_char,
    buffer_size: c_int,
    len_out: *mut usize,
) -> result {
    guard("nvidia_clara_payload_entry__name", || {
        let (e, _) = PATH_ENTRIES.get(entry)?;
        let name = lock(&e).name.clone();
        // SAFETY: forwarded: the same contract as this function's.
        unsafe { write_string(&name, buffer, buffer_size, len_out) }
    })
}

/// The entry's directory (absolute), with the buffer protocol of
/// `nvidia_clara_payload_entry__name`. [inferred; the .NET `Path` property is documented]
///
/// # Safety
/// As `nvidia_clara_payload_entry__name`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_payload_entry__path(
    entry: *mut nvidia_clara_payload_entry,
    buffer: *mut c_char,
    buffer_size: c_int,
    len_out: *mut usize,
) -> result {
    guard("nvidia_clara_payload_entry__path", || {
        let (e, _) = PATH_ENTRIES.get(entry)?;
        let path = lock(&e).path.clone();
        // SAFETY: forwarded: the same contract as this function's.
        unsafe { write_string(&path, buffer, buffer_size, len_out) }
    })
}
