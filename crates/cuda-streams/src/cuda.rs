//! The real [`Backend`] on cudarc's driver bindings. All of the crate's `unsafe` lives here.
//!
//! Every call binds the device's primary context to the calling thread first (the driver-API
//! equivalent of `cudaSetDevice`), so callers on any thread may use any device. Every call also
//! runs under `catch_unwind`: cudarc's lazy loader panics on a missing symbol, and a panic must
//! never leave this crate.

use std::collections::HashMap;
use std::ffi::c_void;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, result, sys};

use crate::backend::{Backend, HostFn, Mapped, RawEvent, RawMem, RawStream, Target};
use crate::error::CudaError;
use crate::memory::DeviceAccess;

/// `CU_MEMHOSTREGISTER_PORTABLE`: the registration counts for every context.
const HOST_REGISTER_PORTABLE: u32 = 0x1;
/// `CU_MEMHOSTREGISTER_READ_ONLY`: the device only reads the memory (required for memory
/// mapped without write permission).
const HOST_REGISTER_READ_ONLY: u32 = 0x8;

/// The allocation properties of pinned device memory on `device` exportable as a POSIX fd.
fn vmm_prop(device: i32) -> sys::CUmemAllocationProp {
    // SAFETY: a plain C struct of integers, enums whose 0 is a valid variant (`INVALID`) and a
    // null pointer; all-zero is the documented "no options" value.
    let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.requestedHandleTypes =
        sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = device;
    prop
}

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

fn drv_code(call: &'static str, code: &str) -> CudaError {
    CudaError::Driver {
        call,
        code: code.into(),
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

    fn stream_device(&self, stream: RawStream) -> Result<i32, CudaError> {
        guarded("cuStreamGetCtx", || {
            let mut ctx: sys::CUcontext = std::ptr::null_mut();
            // SAFETY: the caller vouches that `stream` is a live stream of this process
            // (`Stream::from_raw`'s contract); the out-pointer is valid.
            check("cuStreamGetCtx", unsafe {
                sys::cuStreamGetCtx(stream.0 as sys::CUstream, &mut ctx)
            })?;
            // SAFETY: `ctx` is the live context the driver just named; it is popped below,
            // leaving the thread's context stack as it was.
            check("cuCtxPushCurrent", unsafe { sys::cuCtxPushCurrent_v2(ctx) })?;
            let mut device: sys::CUdevice = 0;
            // SAFETY: a context is current (pushed above); valid out-pointer.
            let got = unsafe { sys::cuCtxGetDevice(&mut device) };
            let mut popped: sys::CUcontext = std::ptr::null_mut();
            // SAFETY: pops the context pushed above; valid out-pointer.
            let _ = unsafe { sys::cuCtxPopCurrent_v2(&mut popped) };
            check("cuCtxGetDevice", got)?;
            Ok(device)
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

    fn mem_granularity(&self, device: i32) -> Result<usize, CudaError> {
        guarded("cuMemGetAllocationGranularity", || {
            self.bind(device)?;
            let prop = vmm_prop(device);
            let mut g = 0usize;
            // SAFETY: valid out-pointer and property struct.
            check("cuMemGetAllocationGranularity", unsafe {
                sys::cuMemGetAllocationGranularity(
                    &mut g,
                    &prop,
                    sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
                )
            })?;
            Ok(g)
        })
    }

    fn mem_create(&self, device: i32, size: usize) -> Result<RawMem, CudaError> {
        guarded("cuMemCreate", || {
            self.bind(device)?;
            let prop = vmm_prop(device);
            let mut h: sys::CUmemGenericAllocationHandle = 0;
            // SAFETY: valid out-pointer and property struct; `size` is a granularity multiple.
            check("cuMemCreate", unsafe {
                sys::cuMemCreate(&mut h, size, &prop, 0)
            })?;
            Ok(RawMem(h))
        })
    }

    fn mem_export(&self, device: i32, mem: RawMem) -> Result<OwnedFd, CudaError> {
        guarded("cuMemExportToShareableHandle", || {
            self.bind(device)?;
            let mut fd: std::ffi::c_int = -1;
            // SAFETY: for the POSIX handle type the out-parameter is an `int`.
            check("cuMemExportToShareableHandle", unsafe {
                sys::cuMemExportToShareableHandle(
                    (&raw mut fd).cast::<c_void>(),
                    mem.0,
                    sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                    0,
                )
            })?;
            if fd < 0 {
                return Err(drv_code(
                    "cuMemExportToShareableHandle",
                    "negative descriptor",
                ));
            }
            // SAFETY: the driver created this descriptor for us and nothing else owns it.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })
    }

    fn mem_import(
        &self,
        device: i32,
        fd: BorrowedFd<'_>,
        _size: usize,
    ) -> Result<RawMem, CudaError> {
        guarded("cuMemImportFromShareableHandle", || {
            self.bind(device)?;
            let mut h: sys::CUmemGenericAllocationHandle = 0;
            // SAFETY: for the POSIX handle type the "handle" is the descriptor's value cast to a
            // pointer; the driver does not take ownership of the descriptor.
            check("cuMemImportFromShareableHandle", unsafe {
                sys::cuMemImportFromShareableHandle(
                    &mut h,
                    fd.as_raw_fd() as usize as *mut c_void,
                    sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                )
            })?;
            // The memory must live on the device the caller named: mapping decisions (peer
            // access) depend on it.
            let mut prop = vmm_prop(device);
            // SAFETY: valid out-pointer; `h` is the handle just imported.
            let r = unsafe { sys::cuMemGetAllocationPropertiesFromHandle(&mut prop, h) };
            if r == sys::CUresult::CUDA_SUCCESS && prop.location.id != device {
                // SAFETY: `h` was imported above and is released once, here.
                let _ = unsafe { sys::cuMemRelease(h) };
                return Err(CudaError::InvalidArgument {
                    call: "cuMemImportFromShareableHandle",
                    reason: format!(
                        "the memory lives on device {}, not on device {device}",
                        prop.location.id
                    ),
                });
            }
            Ok(RawMem(h))
        })
    }

    fn mem_release(&self, device: i32, mem: RawMem) -> Result<(), CudaError> {
        guarded("cuMemRelease", || {
            self.bind(device)?;
            // SAFETY: the handle came from `mem_create` / `mem_import` and is released once, by
            // its owner's drop.
            check("cuMemRelease", unsafe { sys::cuMemRelease(mem.0) })
        })
    }

    fn mem_map(
        &self,
        mem: RawMem,
        size: usize,
        on_device: i32,
        access: DeviceAccess,
    ) -> Result<Mapped, CudaError> {
        guarded("cuMemMap", || {
            self.bind(on_device)?;
            let mut ptr: sys::CUdeviceptr = 0;
            // SAFETY: valid out-pointer; alignment 0 = the granularity; no fixed address.
            check("cuMemAddressReserve", unsafe {
                sys::cuMemAddressReserve(&mut ptr, size, 0, 0, 0)
            })?;
            // SAFETY: `ptr..ptr+size` was just reserved; the handle is live.
            let r = unsafe { sys::cuMemMap(ptr, size, 0, mem.0, 0) };
            if let Err(e) = check("cuMemMap", r) {
                // SAFETY: reserved above, freed once.
                let _ = unsafe { sys::cuMemAddressFree(ptr, size) };
                return Err(e);
            }
            let set = |flags| {
                let desc = sys::CUmemAccessDesc {
                    location: sys::CUmemLocation {
                        type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
                        id: on_device,
                    },
                    flags,
                };
                // SAFETY: `ptr..ptr+size` is mapped; one valid descriptor.
                unsafe { sys::cuMemSetAccess(ptr, size, &desc, 1) }
            };
            let rw = sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
            let (r, enforced) = match access {
                DeviceAccess::ReadWrite => (set(rw), true),
                DeviceAccess::ReadOnly => {
                    match set(sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READ) {
                        sys::CUresult::CUDA_SUCCESS => (sys::CUresult::CUDA_SUCCESS, true),
                        refused => {
                            tracing::debug!(
                                ?refused,
                                "read-only device access refused; mapping read-write"
                            );
                            (set(rw), false)
                        }
                    }
                }
            };
            if let Err(e) = check("cuMemSetAccess", r) {
                // SAFETY: mapped and reserved above; undone once, in reverse order.
                unsafe {
                    let _ = sys::cuMemUnmap(ptr, size);
                    let _ = sys::cuMemAddressFree(ptr, size);
                }
                return Err(e);
            }
            Ok(Mapped { ptr, enforced })
        })
    }

    fn mem_unmap(&self, on_device: i32, ptr: u64, size: usize) -> Result<(), CudaError> {
        guarded("cuMemUnmap", || {
            self.bind(on_device)?;
            // SAFETY: `ptr..ptr+size` is a mapping `mem_map` made, unmapped once by its owner.
            check("cuMemUnmap", unsafe { sys::cuMemUnmap(ptr, size) })?;
            // SAFETY: the range `mem_map` reserved, freed once, after the unmap.
            check("cuMemAddressFree", unsafe {
                sys::cuMemAddressFree(ptr, size)
            })
        })
    }

    fn mem_info(&self, device: i32) -> Result<(usize, usize), CudaError> {
        guarded("cuMemGetInfo", || {
            self.bind(device)?;
            let (mut free, mut total) = (0usize, 0usize);
            // SAFETY: valid out-pointers; a context is current.
            check("cuMemGetInfo", unsafe {
                sys::cuMemGetInfo_v2(&mut free, &mut total)
            })?;
            Ok((free, total))
        })
    }

    fn can_access_peer(&self, accessor: i32, owner: i32) -> Result<bool, CudaError> {
        if accessor == owner {
            return Ok(true);
        }
        guarded("cuDeviceCanAccessPeer", || {
            let mut can = 0;
            // SAFETY: valid out-pointer; ordinals checked by the caller.
            check("cuDeviceCanAccessPeer", unsafe {
                sys::cuDeviceCanAccessPeer(&mut can, accessor, owner)
            })?;
            Ok(can != 0)
        })
    }

    fn host_register(&self, ptr: usize, len: usize, read_only: bool) -> Result<(), CudaError> {
        guarded("cuMemHostRegister", || {
            self.bind(0)?;
            let flags = HOST_REGISTER_PORTABLE
                | if read_only {
                    HOST_REGISTER_READ_ONLY
                } else {
                    0
                };
            // SAFETY: the caller of `register_host` guarantees the range is mapped until it is
            // unregistered; the driver validates it.
            check("cuMemHostRegister", unsafe {
                sys::cuMemHostRegister_v2(ptr as *mut c_void, len, flags)
            })
        })
    }

    fn host_unregister(&self, ptr: usize) -> Result<(), CudaError> {
        guarded("cuMemHostUnregister", || {
            self.bind(0)?;
            // SAFETY: `ptr` starts a range `host_register` registered.
            check("cuMemHostUnregister", unsafe {
                sys::cuMemHostUnregister(ptr as *mut c_void)
            })
        })
    }

    fn memset_async(
        &self,
        target: Target,
        dptr: u64,
        value: u8,
        len: usize,
    ) -> Result<(), CudaError> {
        guarded("cuMemsetD8Async", || {
            let s = self.target(target)?;
            // SAFETY: the caller checked that the range lies in a live writable mapping.
            check("cuMemsetD8Async", unsafe {
                sys::cuMemsetD8Async(dptr, value, len, s)
            })
        })
    }

    unsafe fn copy_htod_async(
        &self,
        target: Target,
        dptr: u64,
        src: *const u8,
        len: usize,
    ) -> Result<(), CudaError> {
        guarded("cuMemcpyHtoDAsync", || {
            let s = self.target(target)?;
            // SAFETY: the destination lies in a live mapping (checked by the caller); the
            // caller of this unsafe fn keeps `src` readable until the copy is done.
            check("cuMemcpyHtoDAsync", unsafe {
                sys::cuMemcpyHtoDAsync_v2(dptr, src.cast::<c_void>(), len, s)
            })
        })
    }

    unsafe fn copy_dtoh_async(
        &self,
        target: Target,
        dst: *mut u8,
        dptr: u64,
        len: usize,
    ) -> Result<(), CudaError> {
        guarded("cuMemcpyDtoHAsync", || {
            let s = self.target(target)?;
            // SAFETY: the source lies in a live mapping (checked by the caller); the caller of
            // this unsafe fn keeps `dst` writable until the copy is done.
            check("cuMemcpyDtoHAsync", unsafe {
                sys::cuMemcpyDtoHAsync_v2(dst.cast::<c_void>(), dptr, len, s)
            })
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

/// Pinned host memory from `cuMemHostAlloc` (portable): the speed reference for copies.
/// Benchmark support; see [`crate::testing`].
pub struct PinnedBuffer {
    driver: crate::driver::Driver,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is owned by this value; the pointer is only handed out to callers that
// take their own responsibility (unsafe copies).
unsafe impl Send for PinnedBuffer {}
// SAFETY: as above; `&self` gives out nothing but the pointer value.
unsafe impl Sync for PinnedBuffer {}

impl std::fmt::Debug for PinnedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedBuffer")
            .field("len", &self.len)
            .finish()
    }
}

impl PinnedBuffer {
    /// Allocates `len` bytes of pinned host memory, zero-filled.
    ///
    /// # Errors
    /// A driver error.
    pub fn new(driver: &crate::driver::Driver, len: usize) -> Result<PinnedBuffer, CudaError> {
        guarded("cuMemHostAlloc", || {
            driver.set_current(0)?;
            let mut host: *mut c_void = std::ptr::null_mut();
            // SAFETY: valid out-pointer.
            check("cuMemHostAlloc", unsafe {
                sys::cuMemHostAlloc(&mut host, len.max(1), 0x1)
            })?;
            // SAFETY: `host` points to `len` writable bytes that we own.
            unsafe { std::ptr::write_bytes(host.cast::<u8>(), 0, len) };
            Ok(PinnedBuffer {
                driver: driver.clone(),
                ptr: host.cast(),
                len,
            })
        })
    }

    /// The first byte.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        let _ = guarded("cuMemFreeHost", || {
            self.driver.set_current(0)?;
            // SAFETY: allocated in `new`, freed once; callers finished their copies.
            check("cuMemFreeHost", unsafe {
                sys::cuMemFreeHost(self.ptr.cast())
            })
        });
    }
}

/// A `cuMemAlloc` buffer shared the legacy way (`cuIpcGetMemHandle`): the baseline of the
/// device hand-over benchmark.
#[derive(Debug)]
pub struct LegacyIpcBuffer {
    driver: crate::driver::Driver,
    device: i32,
    dptr: u64,
}

impl LegacyIpcBuffer {
    /// Allocates `len` bytes on `device`.
    ///
    /// # Errors
    /// A driver error.
    pub fn new(
        driver: &crate::driver::Driver,
        device: i32,
        len: usize,
    ) -> Result<LegacyIpcBuffer, CudaError> {
        guarded("cuMemAlloc", || {
            driver.set_current(device)?;
            let mut dptr: sys::CUdeviceptr = 0;
            // SAFETY: valid out-pointer.
            check("cuMemAlloc", unsafe { sys::cuMemAlloc_v2(&mut dptr, len) })?;
            Ok(LegacyIpcBuffer {
                driver: driver.clone(),
                device,
                dptr,
            })
        })
    }

    /// `cuIpcGetMemHandle`: 64 opaque bytes.
    ///
    /// # Errors
    /// A driver error.
    pub fn handle(&self) -> Result<[u8; 64], CudaError> {
        guarded("cuIpcGetMemHandle", || {
            self.driver.set_current(self.device)?;
            let mut h = sys::CUipcMemHandle { reserved: [0; 64] };
            // SAFETY: valid out-pointer; `dptr` is the base of a live cuMemAlloc allocation.
            check("cuIpcGetMemHandle", unsafe {
                sys::cuIpcGetMemHandle(&mut h, self.dptr)
            })?;
            Ok(h.reserved.map(|c| c as u8))
        })
    }
}

impl Drop for LegacyIpcBuffer {
    fn drop(&mut self) {
        let _ = guarded("cuMemFree", || {
            self.driver.set_current(self.device)?;
            // SAFETY: allocated in `new`, freed once.
            check("cuMemFree", unsafe { sys::cuMemFree_v2(self.dptr) })
        });
    }
}

/// A legacy IPC handle opened in this process (`cuIpcOpenMemHandle`); closed on drop.
#[derive(Debug)]
pub struct LegacyIpcMapping {
    driver: crate::driver::Driver,
    device: i32,
    /// The device address of the opened buffer.
    pub dptr: u64,
}

impl LegacyIpcMapping {
    /// Opens a handle another process exported, on `device`.
    ///
    /// # Errors
    /// A driver error.
    pub fn open(
        driver: &crate::driver::Driver,
        device: i32,
        handle: &[u8; 64],
    ) -> Result<LegacyIpcMapping, CudaError> {
        guarded("cuIpcOpenMemHandle", || {
            driver.set_current(device)?;
            let h = sys::CUipcMemHandle {
                reserved: handle.map(|b| b as std::ffi::c_char),
            };
            let mut dptr: sys::CUdeviceptr = 0;
            // SAFETY: valid out-pointer; flag 1 = CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS.
            check("cuIpcOpenMemHandle", unsafe {
                sys::cuIpcOpenMemHandle_v2(&mut dptr, h, 1)
            })?;
            Ok(LegacyIpcMapping {
                driver: driver.clone(),
                device,
                dptr,
            })
        })
    }
}

impl Drop for LegacyIpcMapping {
    fn drop(&mut self) {
        let _ = guarded("cuIpcCloseMemHandle", || {
            self.driver.set_current(self.device)?;
            // SAFETY: opened in `open`, closed once.
            check("cuIpcCloseMemHandle", unsafe {
                sys::cuIpcCloseMemHandle(self.dptr)
            })
        });
    }
}

/// Writes `len` bytes of `value` at `dptr` on `device` and waits for the device
/// (`cuMemsetD8` + `cuCtxSynchronize`), with no access check: the probe of what the hardware
/// enforces on a read-only mapping. A fault leaves the context unusable, so run it in a process
/// of its own.
///
/// # Errors
/// The driver's error, from the memset or (for a fault) from the synchronisation.
pub fn raw_memset_sync(
    driver: &crate::driver::Driver,
    device: i32,
    dptr: u64,
    len: usize,
    value: u8,
) -> Result<(), CudaError> {
    guarded("cuMemsetD8", || {
        driver.set_current(device)?;
        // SAFETY: the driver checks the address against its mappings and reports a fault as an
        // error; no host memory is touched.
        check("cuMemsetD8", unsafe {
            sys::cuMemsetD8_v2(dptr, value, len)
        })?;
        // SAFETY: no arguments.
        check("cuCtxSynchronize", unsafe { sys::cuCtxSynchronize() })
    })
}

/// PTX of `fill_u32(ptr, n, base)`: word `i < n` of `ptr` becomes `base + i`. JIT-compiled by
/// the driver at load, so the bundle needs no CUDA compiler.
const FILL_PTX: &str = r#"
.version 7.0
.target sm_50
.address_size 64
.visible .entry fill_u32(.param .u64 p, .param .u32 n, .param .u32 base)
{
    .reg .pred %done;
    .reg .b32 %r<7>;
    .reg .b64 %rd<5>;
    ld.param.u64 %rd1, [p];
    ld.param.u32 %r1, [n];
    ld.param.u32 %r2, [base];
    mov.u32 %r3, %ctaid.x;
    mov.u32 %r4, %ntid.x;
    mov.u32 %r5, %tid.x;
    mad.lo.s32 %r3, %r3, %r4, %r5;
    setp.ge.u32 %done, %r3, %r1;
    @%done bra END;
    cvta.to.global.u64 %rd2, %rd1;
    mul.wide.u32 %rd3, %r3, 4;
    add.s64 %rd4, %rd2, %rd3;
    add.u32 %r6, %r2, %r3;
    st.global.u32 [%rd4], %r6;
END:
    ret;
}
"#;

/// A real kernel (`fill_u32`, loaded from PTX) for the device-memory tests: what a kernel
/// writes in one process is read in another, and a kernel's store through a read-only mapping
/// is what the hardware must refuse.
#[derive(Debug)]
pub struct FillKernel {
    driver: crate::driver::Driver,
    device: i32,
    module: usize,
    function: usize,
}

impl FillKernel {
    /// Loads the kernel into `device`'s primary context.
    ///
    /// # Errors
    /// A driver error (e.g. the PTX JIT failing).
    pub fn load(driver: &crate::driver::Driver, device: i32) -> Result<FillKernel, CudaError> {
        guarded("cuModuleLoadData", || {
            driver.set_current(device)?;
            let ptx = std::ffi::CString::new(FILL_PTX)
                .map_err(|_| drv_code("cuModuleLoadData", "PTX with a NUL byte"))?;
            let mut module: sys::CUmodule = std::ptr::null_mut();
            // SAFETY: valid out-pointer; the image is a NUL-terminated PTX string.
            check("cuModuleLoadData", unsafe {
                sys::cuModuleLoadData(&mut module, ptx.as_ptr().cast())
            })?;
            let mut function: sys::CUfunction = std::ptr::null_mut();
            // SAFETY: live module; NUL-terminated name.
            let r =
                unsafe { sys::cuModuleGetFunction(&mut function, module, c"fill_u32".as_ptr()) };
            if let Err(e) = check("cuModuleGetFunction", r) {
                // SAFETY: loaded above, unloaded once.
                let _ = unsafe { sys::cuModuleUnload(module) };
                return Err(e);
            }
            Ok(FillKernel {
                driver: driver.clone(),
                device,
                module: module as usize,
                function: function as usize,
            })
        })
    }

    /// Enqueues `fill_u32(dptr, words, base)` on `stream` (a stream of the kernel's device).
    ///
    /// # Errors
    /// [`CudaError::WrongStream`] or a driver error.
    pub fn launch(
        &self,
        stream: &crate::pool::Stream,
        dptr: u64,
        words: u32,
        base: u32,
    ) -> Result<(), CudaError> {
        if stream.device() != self.device {
            return Err(CudaError::WrongStream {
                device: self.device,
                stream_device: stream.device(),
            });
        }
        guarded("cuLaunchKernel", || {
            self.driver.set_current(self.device)?;
            let (mut p, mut n, mut b) = (dptr, words, base);
            let mut params = [
                (&raw mut p).cast::<c_void>(),
                (&raw mut n).cast::<c_void>(),
                (&raw mut b).cast::<c_void>(),
            ];
            let grid = words.div_ceil(256).max(1);
            // SAFETY: a live function of this context; `params` points at three values of the
            // kernel's parameter types, alive for the call (the driver copies them).
            check("cuLaunchKernel", unsafe {
                sys::cuLaunchKernel(
                    self.function as sys::CUfunction,
                    grid,
                    1,
                    1,
                    256,
                    1,
                    1,
                    0,
                    stream.as_raw() as sys::CUstream,
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            })
        })
    }
}

impl Drop for FillKernel {
    fn drop(&mut self) {
        let _ = guarded("cuModuleUnload", || {
            self.driver.set_current(self.device)?;
            // SAFETY: loaded in `load`, unloaded once.
            check("cuModuleUnload", unsafe {
                sys::cuModuleUnload(self.module as sys::CUmodule)
            })
        });
    }
}

/// Enqueues on `stream` a copy of `len` bytes from the device address `dptr` (any mapping of
/// the stream's device, e.g. a pointer another layer mapped) to host memory at `dst`
/// (`cuMemcpyDtoHAsync`). For tests that hold a raw device pointer rather than a
/// [`crate::DeviceMapping`].
///
/// # Safety
/// `dptr..dptr+len` must be mapped for the stream's device until the copy is done, and
/// `dst..dst+len` writable and untouched by others until then.
///
/// # Errors
/// A driver error.
pub unsafe fn raw_copy_to_host_async(
    stream: &crate::pool::Stream,
    dptr: u64,
    dst: *mut u8,
    len: usize,
) -> Result<(), CudaError> {
    // SAFETY: forwarded from the caller's contract.
    unsafe {
        stream
            .backend()
            .copy_dtoh_async(stream.target(), dst, dptr, len)
    }
}
