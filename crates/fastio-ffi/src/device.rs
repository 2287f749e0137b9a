//! The GPU side of the C API (fastio extensions): the device pointer of device memory, the
//! interprocess CUDA event a publication or a FastIO entry carries, the operator's CUDA
//! stream during execute, and copies between host and device allocations on a stream the
//! caller names (its own `CUstream`, the operator's, or a default stream), which cuda-streams
//! wraps without owning it (`Stream::from_raw`).

use std::ffi::{c_char, c_int, c_void};

use fastio_context::{Allocation, ContextError};

use crate::alloc::with_alloc;
use crate::cpd::PAYLOADS;
use crate::entry::with_entry;
use crate::error::{Error, guard};
use crate::handles::lock;
use crate::ptr::{non_null, write_out};
use crate::types::*;

/// An interprocess CUDA event handle: the 64 bytes of `CUipcEventHandle` /
/// `cudaIpcEventHandle_t` (same size and layout; copy it into one with `memcpy`), which
/// `cuIpcOpenEventHandle` opens in another process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct nvidia_clara_fastio_cuda_event {
    /// The handle's bytes.
    pub reserved: [c_char; 64],
}

/// Writes the interprocess event handle a producer attached to what it published (the event
/// it recorded on its stream after the writes) to `*event_out` and 1 to `*has_event_out`;
/// 0 to `*has_event_out`, and nothing to `*event_out`, when it attached none. Open it with
/// `cuIpcOpenEventHandle` and make your stream wait on it (`cuStreamWaitEvent`): the GPU
/// orders your work after the producer's, the host never waits. fastio extension.
///
/// # Safety
/// `event_out` and `has_event_out` are NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio__cuda_event(
    alloc: *mut nvidia_clara_fastio_alloc,
    event_out: *mut nvidia_clara_fastio_cuda_event,
    has_event_out: *mut c_int,
) -> result {
    guard("nvidia_clara_fastio__cuda_event", || {
        non_null(event_out, "event_out")?;
        non_null(has_event_out, "has_event_out")?;
        let event = with_alloc(alloc, |live| Ok(live.allocation.event()))?;
        // SAFETY: both checked non-NULL; writable by the C caller's contract.
        unsafe { write_event(event, event_out, has_event_out) }
    })
}

/// Writes the interprocess event handle that goes with the FastIO entry's memory: for an
/// input, the one its producer attached (an operator's stream is recorded at the end of
/// its execute), as `nvidia_clara_fastio__cuda_event` does. fastio extension.
///
/// # Safety
/// `event_out` and `has_event_out` are NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio_entry__cuda_event(
    entry: *mut nvidia_clara_fastio_entry,
    event_out: *mut nvidia_clara_fastio_cuda_event,
    has_event_out: *mut c_int,
) -> result {
    guard("nvidia_clara_fastio_entry__cuda_event", || {
        non_null(event_out, "event_out")?;
        non_null(has_event_out, "has_event_out")?;
        let event = with_entry(entry, |state| Ok(state.entry.event()))?;
        // SAFETY: both checked non-NULL; writable by the C caller's contract.
        unsafe { write_event(event, event_out, has_event_out) }
    })
}

/// # Safety
/// Both pointers are non-NULL and valid for one write.
unsafe fn write_event(
    event: Option<fastio_context::EventHandle>,
    event_out: *mut nvidia_clara_fastio_cuda_event,
    has_event_out: *mut c_int,
) -> Result<(), Error> {
    if let Some(event) = event {
        let handle = nvidia_clara_fastio_cuda_event {
            reserved: event.0.map(|b| b as c_char),
        };
        // SAFETY: non-NULL and writable by this function's contract.
        unsafe { write_out(event_out, handle, "event_out")? };
    }
    // SAFETY: non-NULL and writable by this function's contract.
    unsafe { write_out(has_event_out, c_int::from(event.is_some()), "has_event_out") }
}

/// Writes the operator's CUDA stream (a `CUstream` / `cudaStream_t`) to `*stream_out`:
/// allocated from the operator's stream pool the first time and held for the run, already
/// ordered after every FastIO input's producer (GPU-side: the host did not wait), with its
/// device made current on the calling thread. Queue execute's GPU work on it: at the end of
/// execute an event recorded on it goes with every output, so downstream operators wait
/// for this work (Holoscan's `receive_cuda_stream`). Fails with
/// NVIDIA_CLARA_RESULT_FAILED and a message where there is no CUDA device. fastio
/// extension.
///
/// # Safety
/// `stream_out` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_payload__cuda_stream(
    payload: *mut nvidia_clara_payload,
    stream_out: *mut *mut c_void,
) -> result {
    guard("nvidia_clara_payload__cuda_stream", || {
        non_null(stream_out, "stream_out")?;
        let (state, _) = PAYLOADS.get(payload)?;
        let source = lock(&state).cuda.clone();
        let stream = source
            .cuda_stream()
            .map_err(|e| Error::new(NVIDIA_CLARA_RESULT_FAILED, e.to_string()))?;
        // SAFETY: checked non-NULL; writable by the C caller's contract.
        unsafe { write_out(stream_out, stream.as_raw() as *mut c_void, "stream_out") }
    })
}

/// Writes the CUDA device pointer (`CUdeviceptr`) of device memory to `*ptr_out` and its
/// device ordinal to `*device_out`: an allocation made on a device, or a FastIO entry
/// declared with `device: cuda:N`. The memory is imported and mapped in this process on the
/// first call (read-only where the handle is read-only: the driver enforces it where it
/// can) and stays mapped until the handle is released; later calls return the same
/// pointer. Order your reads after the producer with the handle's event
/// (`nvidia_clara_fastio__cuda_event`). Host memory is refused with
/// NVIDIA_CLARA_RESULT_INVALID_ARGUMENT (it has a host address:
/// `nvidia_clara_fastio__map`); without a CUDA driver or device the call fails with
/// NVIDIA_CLARA_RESULT_FAILED and a message. Nothing is written on failure. fastio extension.
///
/// # Safety
/// `ptr_out` and `device_out` are NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio__device_pointer(
    alloc: *mut nvidia_clara_fastio_alloc,
    ptr_out: *mut u64,
    device_out: *mut i32,
) -> result {
    guard("nvidia_clara_fastio__device_pointer", || {
        non_null(ptr_out, "ptr_out")?;
        non_null(device_out, "device_out")?;
        let (ptr, device) = with_alloc(alloc, |live| {
            device_pointer(live.allocation, "nvidia_clara_fastio__map")
        })?;
        // SAFETY: both checked non-NULL; writable by the C caller's contract.
        unsafe { write_pointer(ptr, device, ptr_out, device_out) }
    })
}

/// Writes the CUDA device pointer and device ordinal of a FastIO entry declared with
/// `device: cuda:N`, as `nvidia_clara_fastio__device_pointer` does; an input's memory is
/// mapped read-only. Fails with NVIDIA_CLARA_RESULT_NOT_FOUND while a dynamic entry has no
/// memory, NVIDIA_CLARA_RESULT_INVALID_ARGUMENT for host memory
/// (`nvidia_clara_fastio_entry__map`), NVIDIA_CLARA_RESULT_FAILED without CUDA. fastio
/// extension.
///
/// # Safety
/// `ptr_out` and `device_out` are NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio_entry__device_pointer(
    entry: *mut nvidia_clara_fastio_entry,
    ptr_out: *mut u64,
    device_out: *mut i32,
) -> result {
    guard("nvidia_clara_fastio_entry__device_pointer", || {
        non_null(ptr_out, "ptr_out")?;
        non_null(device_out, "device_out")?;
        let (ptr, device) = with_entry(entry, |state| {
            let allocation = state
                .entry
                .allocation()
                .ok_or_else(|| crate::entry::not_allocated(&state.entry))?;
            device_pointer(allocation, "nvidia_clara_fastio_entry__map")
        })?;
        // SAFETY: both checked non-NULL; writable by the C caller's contract.
        unsafe { write_pointer(ptr, device, ptr_out, device_out) }
    })
}

/// The device pointer and device of `allocation`, mapped in this process once.
fn device_pointer(allocation: &Allocation, host_map: &str) -> Result<(u64, i32), Error> {
    if allocation.kind().is_host() {
        return Err(Error::new(
            NVIDIA_CLARA_RESULT_INVALID_ARGUMENT,
            format!("host memory has no device pointer: map it with {host_map}"),
        ));
    }
    let driver = fastio_operator::cuda_streams::Driver::probe().map_err(|e| {
        Error::new(
            NVIDIA_CLARA_RESULT_FAILED,
            format!("{} memory needs CUDA: {e}", allocation.kind()),
        )
    })?;
    let view = allocation.map_device(&driver)?;
    Ok((view.device_ptr, view.device))
}

/// # Safety
/// Both pointers are non-NULL and valid for one write.
unsafe fn write_pointer(
    ptr: u64,
    device: i32,
    ptr_out: *mut u64,
    device_out: *mut i32,
) -> Result<(), Error> {
    // SAFETY: non-NULL and writable by this function's contract.
    unsafe { write_out(ptr_out, ptr, "ptr_out")? };
    // SAFETY: as above.
    unsafe { write_out(device_out, device, "device_out") }
}

/// Enqueues on `stream` a copy of all `size` bytes of the host allocation `host` to the
/// start of the device allocation `device` (host to device, `cuMemcpyHtoDAsync`), and
/// returns without waiting. The first copy of a host handle registers its memory with CUDA
/// (kept for the handle's life), so copies run at pinned-memory speed; `device` is mapped
/// in this process if it was not. fastio extension.
///
/// `stream` is a `CUstream` / `cudaStream_t` of this process: the operator's
/// (`nvidia_clara_payload__cuda_stream`) or one you own, or `CU_STREAM_LEGACY` (1) /
/// `CU_STREAM_PER_THREAD` (2) for `device`'s default streams. On `device`'s GPU the copy
/// uses its mapping there; on another GPU of the host with peer access, that GPU's
/// mapping of it. NULL is refused (it is
/// ambiguous). The bytes are on the device once the stream's work so far is done: order
/// later work after it on the stream, or synchronise it. Releasing either handle first
/// waits for the streams it was copied on, so `stream` must stay valid until both handles
/// are released.
///
/// Fails, queueing nothing, with NVIDIA_CLARA_RESULT_INVALID_ARGUMENT when `host` is device
/// memory, `device` is host memory, both are the same handle, `device` is smaller than
/// `host`, or `stream` is NULL; NVIDIA_CLARA_RESULT_READ_ONLY when `device` is a read-only
/// handle; NVIDIA_CLARA_RESULT_INVALID_HANDLE for a handle that is not live;
/// NVIDIA_CLARA_RESULT_FAILED without CUDA, or when the driver refuses (among others:
/// `stream` is on a GPU without peer access to `device`'s).
///
/// # Safety
/// `stream` is NULL, 1, 2, or a live `CUstream` of this process that stays live until both
/// handles are released.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio__copy_to_device(
    host: *mut nvidia_clara_fastio_alloc,
    device: *mut nvidia_clara_fastio_alloc,
    stream: *mut c_void,
) -> result {
    guard("nvidia_clara_fastio__copy_to_device", || {
        // SAFETY: `stream`'s validity is the caller's contract, passed on.
        unsafe { copy(host, device, stream, true) }
    })
}

/// Enqueues on `stream` a copy of the first `size` bytes (the size of `host`) of the device
/// allocation `device` into the host allocation `host` (device to host,
/// `cuMemcpyDtoHAsync`), and returns without waiting: read `host` only once the stream's
/// work so far is done (synchronise it, or wait on an event recorded after this call).
/// Registration, mapping, streams and lifetimes as in
/// `nvidia_clara_fastio__copy_to_device`; a read-only device handle may be the source.
/// fastio extension.
///
/// Fails, queueing nothing, as `nvidia_clara_fastio__copy_to_device` does, with
/// NVIDIA_CLARA_RESULT_READ_ONLY when `host` is a read-only handle.
///
/// # Safety
/// As `nvidia_clara_fastio__copy_to_device`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio__copy_from_device(
    host: *mut nvidia_clara_fastio_alloc,
    device: *mut nvidia_clara_fastio_alloc,
    stream: *mut c_void,
) -> result {
    guard("nvidia_clara_fastio__copy_from_device", || {
        // SAFETY: `stream`'s validity is the caller's contract, passed on.
        unsafe { copy(host, device, stream, false) }
    })
}

/// Both copies: the checks that need no CUDA first, then the driver, then the copy.
///
/// # Safety
/// As `nvidia_clara_fastio__copy_to_device`.
unsafe fn copy(
    host: *mut nvidia_clara_fastio_alloc,
    device: *mut nvidia_clara_fastio_alloc,
    stream: *mut c_void,
    to_device: bool,
) -> Result<(), Error> {
    use fastio_operator::cuda_streams::{Driver, Stream};
    crate::alloc::with_two_allocs((host, "host"), (device, "device"), |host, device| {
        host.check_copy(device, to_device).map_err(|e| {
            // The context's error, saying which argument it is about.
            let which = match &e {
                ContextError::NotHostMemory { .. } => "`host`: ",
                ContextError::NotDeviceMemory => "`device`: ",
                ContextError::ReadOnly if to_device => "`device` (the destination): ",
                ContextError::ReadOnly => "`host` (the destination): ",
                ContextError::LengthMismatch { .. } => "`device` is smaller than `host`: ",
                _ => "",
            };
            Error::new(crate::error::context_code(&e), format!("{which}{e}"))
        })?;
        if stream.is_null() {
            return Err(Error::invalid(
                "`stream` is NULL, which is ambiguous: pass a CUstream (the operator's, from \
                 nvidia_clara_payload__cuda_stream, or your own), or CU_STREAM_LEGACY (1) / \
                 CU_STREAM_PER_THREAD (2) for a default stream",
            ));
        }
        let kind = device.kind();
        let ordinal = match kind {
            fastio_context::MemoryKind::Cuda { device } => device,
            // Refused by `check_copy` above.
            fastio_context::MemoryKind::Host => return Err(ContextError::NotDeviceMemory.into()),
        };
        let failed = |e: &dyn std::fmt::Display| {
            Error::new(
                NVIDIA_CLARA_RESULT_FAILED,
                format!("{kind} memory needs CUDA: {e}"),
            )
        };
        let driver = Driver::probe().map_err(|e| failed(&e))?;
        // SAFETY: `stream` is 1, 2 or a live CUstream of this process that outlives both
        // handles (the caller's contract); the handles' release waits for it.
        let stream =
            unsafe { Stream::from_raw(&driver, stream as usize, ordinal) }.map_err(|e| {
                Error::new(
                    NVIDIA_CLARA_RESULT_FAILED,
                    format!("the stream cannot be used: {e}"),
                )
            })?;
        if to_device {
            host.copy_to_device(&driver, device, &stream)?;
        } else {
            host.copy_from_device(&driver, device, &stream)?;
        }
        Ok(())
    })
}
