//! The real [`Backend`] on cudarc's driver bindings. All of the crate's `unsafe` lives here.
//!
//! Every call binds the device's primary context to the calling thread first (the driver-API
//! equivalent of `cudaSetDevice`), so callers on any thread may use any device. Every call also
//! runs under `catch_unwind`: cudarc's lazy loader panics on a missing symbol, and a panic must
//! never leave this crate.

use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, result, sys};

use crate::backend::{Backend, HostFn, RawEvent, RawStream, Target};
use crate::error::CudaError;

/// Checks the driver's presence exactly once per call site; the caller caches the answer.
pub(crate) fn probe() -> Result<CudaBackend, CudaError> {
    // SAFETY: `is_culib_present` only tries to dlopen the driver library and closes it again.
    if !unsafe { sys::is_culib_present() } {
        return Err(CudaError::NoDevice {
            reason: "the CUDA driver library (libcuda) was not found".into(),
        });
    }
    guarded("cuInit", || result::init().map_err(|e| drv("cuInit", e))).map_err(|e| {
        CudaError::NoDevice {
            reason: e.to_string(),
        }
    })?;
    let count = guarded("cuDeviceGetCount", || {
        result::device::get_count().map_err(|e| drv("cuDeviceGetCount", e))
    })
    .map_err(|e| CudaError::NoDevice {
        reason: e.to_string(),
    })?;
    if count <= 0 {
        return Err(CudaError::NoDevice {
            reason: "the CUDA driver reports no device".into(),
        });
    }
    Ok(CudaBackend {
        count: count as usize,
        contexts: Mutex::new(HashMap::new()),
    })
}

fn drv(call: &'static str, e: cudarc::driver::DriverError) -> CudaError {
    CudaError::Driver {
        call,
        code: format!("{:?}", e.0),
    }
}

fn check(call: &'static str, r: sys::CUresult) -> Result<(), CudaError> {
    r.result().map_err(|e| drv(call, e))
}

/// Runs `f`, turning a panic inside cudarc (a missing driver symbol) into an error.
fn guarded<T>(
    call: &'static str,
    f: impl FnOnce() -> Result<T, CudaError>,
) -> Result<T, CudaError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(CudaError::Driver {
            call,
            code: "panic in the CUDA bindings (missing symbol?)".into(),
        })
    })
}

/// The cudarc-backed driver.
pub(crate) struct CudaBackend {
    count: usize,
    contexts: Mutex<HashMap<i32, Arc<CudaContext>>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("devices", &self.count)
            .finish()
    }
}

impl CudaBackend {
    /// Binds `device`'s primary context to this thread, retaining it on first use.
    fn bind(&self, device: i32) -> Result<(), CudaError> {
        if device < 0 || device as usize >= self.count {
            return Err(CudaError::InvalidDevice {
                device,
                count: self.count,
            });
        }
        let ctx = {
            let mut map = self.contexts.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(&device) {
                Some(c) => c.clone(),
                None => {
                    let c = CudaContext::new(device as usize)
                        .map_err(|e| drv("cuDevicePrimaryCtxRetain", e))?;
                    map.insert(device, c.clone());
                    c
                }
            }
        };
        ctx.bind_to_thread().map_err(|e| drv("cuCtxSetCurrent", e))
    }

    /// Binds the target's device and returns its driver stream (NULL = legacy default stream).
    fn target(&self, t: Target) -> Result<sys::CUstream, CudaError> {
        self.bind(t.device)?;
        Ok(t.stream
            .map_or(std::ptr::null_mut(), |s| s.0 as sys::CUstream))
    }
}

extern "C" fn host_fn_trampoline(data: *mut c_void) {
    // SAFETY: `data` is the pointer produced by `Box::into_raw` in `launch_host_fn`, and the
    // driver calls this function exactly once per successful `cuLaunchHostFunc`.
    let f: Box<HostFn> = unsafe { Box::from_raw(data.cast::<HostFn>()) };
    // A panic must not unwind into the driver's thread.
    let _ = catch_unwind(AssertUnwindSafe(f));
}

impl Backend for CudaBackend {
    fn device_count(&self) -> usize {
        self.count
    }

    fn create_stream(
        &self,
        device: i32,
        flags: u32,
        priority: i32,
    ) -> Result<RawStream, CudaError> {
        guarded("cuStreamCreateWithPriority", || {
            self.bind(device)?;
            let mut s: sys::CUstream = std::ptr::null_mut();
            // SAFETY: `s` is a valid out-pointer and a context is current.
            check("cuStreamCreateWithPriority", unsafe {
                sys::cuStreamCreateWithPriority(&mut s, flags, priority)
            })?;
            Ok(RawStream(s as usize))
        })
    }

    fn destroy_stream(&self, device: i32, stream: RawStream) -> Result<(), CudaError> {
        guarded("cuStreamDestroy", || {
            self.bind(device)?;
            // SAFETY: the stream was created by `create_stream` and is destroyed exactly once,
            // by the drop of its owner.
            check("cuStreamDestroy", unsafe {
                sys::cuStreamDestroy_v2(stream.0 as sys::CUstream)
            })
        })
    }

    fn stream_flags(&self, device: i32, stream: RawStream) -> Result<u32, CudaError> {
        guarded("cuStreamGetFlags", || {
            self.bind(device)?;
            let mut f = 0u32;
            // SAFETY: live stream handle and a valid out-pointer.
            check("cuStreamGetFlags", unsafe {
                sys::cuStreamGetFlags(stream.0 as sys::CUstream, &mut f)
            })?;
            Ok(f)
        })
    }

    fn stream_priority(&self, device: i32, stream: RawStream) -> Result<i32, CudaError> {
        guarded("cuStreamGetPriority", || {
            self.bind(device)?;
            let mut p = 0i32;
            // SAFETY: live stream handle and a valid out-pointer.
            check("cuStreamGetPriority", unsafe {
                sys::cuStreamGetPriority(stream.0 as sys::CUstream, &mut p)
            })?;
            Ok(p)
        })
    }

    fn synchronize(&self, target: Target) -> Result<(), CudaError> {
        guarded("cuStreamSynchronize", || {
            let s = self.target(target)?;
            // SAFETY: a live stream handle, or NULL (the current context's legacy stream).
            check("cuStreamSynchronize", unsafe {
                sys::cuStreamSynchronize(s)
            })
        })
    }

    fn create_event(&self, device: i32, flags: u32) -> Result<RawEvent, CudaError> {
        guarded("cuEventCreate", || {
            self.bind(device)?;
            let mut e: sys::CUevent = std::ptr::null_mut();
            // SAFETY: valid out-pointer; `flags` is a plain bit mask (cuEventCreate takes c_uint,
            // so combinations that are not variants of cudarc's enum are fine here).
            check("cuEventCreate", unsafe {
                sys::cuEventCreate(&mut e, flags)
            })?;
            Ok(RawEvent(e as usize))
        })
    }

    fn destroy_event(&self, device: i32, event: RawEvent) -> Result<(), CudaError> {
        guarded("cuEventDestroy", || {
            self.bind(device)?;
            // SAFETY: the event was created or imported by this backend and is destroyed once.
            check("cuEventDestroy", unsafe {
                sys::cuEventDestroy_v2(event.0 as sys::CUevent)
            })
        })
    }

    fn record(&self, event_device: i32, event: RawEvent, target: Target) -> Result<(), CudaError> {
        guarded("cuEventRecord", || {
            if target.device != event_device {
                return Err(CudaError::DeviceMismatch {
                    event_device,
                    stream_device: target.device,
                });
            }
            let s = self.target(target)?;
            // SAFETY: live event and stream handles (or NULL for the current legacy stream).
            check("cuEventRecord", unsafe {
                sys::cuEventRecord(event.0 as sys::CUevent, s)
            })
        })
    }

    fn wait(&self, target: Target, event: RawEvent) -> Result<(), CudaError> {
        guarded("cuStreamWaitEvent", || {
            let s = self.target(target)?;
            // SAFETY: live handles; cuStreamWaitEvent accepts an event of another context.
            check("cuStreamWaitEvent", unsafe {
                sys::cuStreamWaitEvent(s, event.0 as sys::CUevent, 0)
            })
        })
    }

    fn event_complete(&self, device: i32, event: RawEvent) -> Result<bool, CudaError> {
        guarded("cuEventQuery", || {
            self.bind(device)?;
            // SAFETY: a live event handle.
            let r = unsafe { sys::cuEventQuery(event.0 as sys::CUevent) };
            match r {
                sys::CUresult::CUDA_SUCCESS => Ok(true),
                sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
                other => check("cuEventQuery", other).map(|()| false),
            }
        })
    }

    fn set_current(&self, device: i32) -> Result<(), CudaError> {
        guarded("cuCtxSetCurrent", || self.bind(device))
    }

    fn launch_host_fn(&self, device: i32, stream: RawStream, f: HostFn) -> Result<(), CudaError> {
        guarded("cuLaunchHostFunc", || {
            self.bind(device)?;
            let data = Box::into_raw(Box::new(f)).cast::<c_void>();
            // SAFETY: the trampoline matches CUhostFn and takes back ownership of `data`.
            let r = unsafe {
                sys::cuLaunchHostFunc(stream.0 as sys::CUstream, Some(host_fn_trampoline), data)
            };
            if r != sys::CUresult::CUDA_SUCCESS {
                // SAFETY: the driver refused the launch, so it will never call the trampoline;
                // the box is still ours to free.
                drop(unsafe { Box::from_raw(data.cast::<HostFn>()) });
            }
            check("cuLaunchHostFunc", r)
        })
    }

    fn ipc_export_event(&self, device: i32, event: RawEvent) -> Result<[u8; 64], CudaError> {
        guarded("cuIpcGetEventHandle", || {
            self.bind(device)?;
            let mut h = sys::CUipcEventHandle { reserved: [0; 64] };
            // SAFETY: valid out-pointer; the event was created with CU_EVENT_INTERPROCESS.
            check("cuIpcGetEventHandle", unsafe {
                sys::cuIpcGetEventHandle(&mut h, event.0 as sys::CUevent)
            })?;
            Ok(h.reserved.map(|c| c as u8))
        })
    }

    fn ipc_import_event(&self, device: i32, handle: &[u8; 64]) -> Result<RawEvent, CudaError> {
        guarded("cuIpcOpenEventHandle", || {
            self.bind(device)?;
            let h = sys::CUipcEventHandle {
                reserved: handle.map(|b| b as std::ffi::c_char),
            };
            let mut e: sys::CUevent = std::ptr::null_mut();
            // SAFETY: valid out-pointer; the driver validates the opaque handle bytes.
            check("cuIpcOpenEventHandle", unsafe {
                sys::cuIpcOpenEventHandle(&mut e, h)
            })?;
            Ok(RawEvent(e as usize))
        })
    }
}

/// One pinned, device-mapped host word that GPU streams can wait on and write to
/// (`cuStreamWaitValue32` / `cuStreamWriteValue32`): a way to gate and observe stream order
/// without compiling a kernel. Test and benchmark support; see [`crate::testing`].
pub struct HostWord {
    driver: crate::driver::Driver,
    host: *mut c_void,
    dptr: sys::CUdeviceptr,
}

// SAFETY: the word is owned by this value; access goes through atomics, and the driver calls
// take no thread-affine state (each binds its context first).
unsafe impl Send for HostWord {}
// SAFETY: as above; `get`/`set` are atomic operations on the pinned word.
unsafe impl Sync for HostWord {}

impl std::fmt::Debug for HostWord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostWord")
            .field("value", &self.get())
            .finish()
    }
}

/// `CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP`: visible to every context.
const HOST_ALLOC_FLAGS: u32 = 0x1 | 0x2;

impl HostWord {
    /// Allocates the word (initially 0), visible to every device.
    ///
    /// # Errors
    /// A driver error.
    pub fn new(driver: &crate::driver::Driver) -> Result<HostWord, CudaError> {
        guarded("cuMemHostAlloc", || {
            driver.set_current(0)?;
            let mut host: *mut c_void = std::ptr::null_mut();
            // SAFETY: valid out-pointer; 64 bytes keeps the word alone in its cache line.
            check("cuMemHostAlloc", unsafe {
                sys::cuMemHostAlloc(&mut host, 64, HOST_ALLOC_FLAGS)
            })?;
            // SAFETY: `host` points to 64 writable bytes that we own.
            unsafe { std::ptr::write_bytes(host.cast::<u8>(), 0, 64) };
            let mut dptr: sys::CUdeviceptr = 0;
            // SAFETY: `host` was allocated with DEVICEMAP; valid out-pointer.
            let r = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dptr, host, 0) };
            if let Err(e) = check("cuMemHostGetDevicePointer", r) {
                // SAFETY: allocated above, freed once.
                let _ = unsafe { sys::cuMemFreeHost(host) };
                return Err(e);
            }
            Ok(HostWord {
                driver: driver.clone(),
                host,
                dptr,
            })
        })
    }

    fn atomic(&self) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: `host` is 4-byte aligned pinned memory that lives as long as `self`; the GPU
        // writes it with 32-bit stores, which the atomic view tolerates.
        unsafe { &*self.host.cast::<std::sync::atomic::AtomicU32>() }
    }

    /// Reads the word from the host.
    pub fn get(&self) -> u32 {
        self.atomic().load(std::sync::atomic::Ordering::Acquire)
    }

    /// Writes the word from the host (opens a gate).
    pub fn set(&self, value: u32) {
        self.atomic()
            .store(value, std::sync::atomic::Ordering::Release);
    }

    fn stream_of(stream: Option<&crate::pool::Stream>) -> sys::CUstream {
        stream.map_or(std::ptr::null_mut(), |s| s.as_raw() as sys::CUstream)
    }

    /// Enqueues on `stream` (`None`: the legacy default stream of `device`) a wait until the
    /// word is at least `value`.
    ///
    /// # Errors
    /// A driver error.
    pub fn gpu_wait_geq(
        &self,
        stream: Option<&crate::pool::Stream>,
        device: i32,
        value: u32,
    ) -> Result<(), CudaError> {
        guarded("cuStreamWaitValue32", || {
            self.driver
                .set_current(stream.map_or(device, |s| s.device()))?;
            // SAFETY: live stream (or NULL) and a device-mapped address of a live word.
            check("cuStreamWaitValue32", unsafe {
                sys::cuStreamWaitValue32_v2(Self::stream_of(stream), self.dptr, value, 0)
            })
        })
    }

    /// Enqueues on `stream` (`None`: the legacy default stream of `device`) a write of `value`.
    ///
    /// # Errors
    /// A driver error.
    pub fn gpu_write(
        &self,
        stream: Option<&crate::pool::Stream>,
        device: i32,
        value: u32,
    ) -> Result<(), CudaError> {
        guarded("cuStreamWriteValue32", || {
            self.driver
                .set_current(stream.map_or(device, |s| s.device()))?;
            // SAFETY: live stream (or NULL) and a device-mapped address of a live word.
            check("cuStreamWriteValue32", unsafe {
                sys::cuStreamWriteValue32_v2(Self::stream_of(stream), self.dptr, value, 0)
            })
        })
    }
}

impl Drop for HostWord {
    fn drop(&mut self) {
        // Work still queued may target the word: let the gate open and the devices drain first.
        self.set(u32::MAX);
        let _ = guarded("cuMemFreeHost", || {
            self.driver.set_current(0)?;
            // SAFETY: no arguments; drains device 0's context so that no queued memop there
            // touches the word after it is freed (callers drain other devices themselves).
            check("cuCtxSynchronize", unsafe { sys::cuCtxSynchronize() })?;
            // SAFETY: allocated in `new`, freed once.
            check("cuMemFreeHost", unsafe { sys::cuMemFreeHost(self.host) })
        });
    }
}
