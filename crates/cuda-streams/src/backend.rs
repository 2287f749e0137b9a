//! The few CUDA calls the crate makes, behind one small trait.
//!
//! Everything above this module (pool bookkeeping, per-port recording, emission rules, the
//! `receive_cuda_stream` decision table, the condition's state) is plain Rust that talks to a
//! `dyn Backend`. The real implementation is [`crate::cuda::CudaBackend`]; unit tests use the CPU
//! fake in [`fake`], which logs every call so the tests can assert which streams waited on which.

use std::fmt::Debug;
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::error::CudaError;
use crate::memory::DeviceAccess;

/// A driver stream handle (`CUstream`) stored as an integer so that it is `Send + Sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RawStream(pub(crate) usize);

/// A driver event handle (`CUevent`) stored as an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RawEvent(pub(crate) usize);

/// A physical-memory handle (`CUmemGenericAllocationHandle`) of the virtual memory management
/// API: one `cuMemCreate` or `cuMemImportFromShareableHandle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RawMem(pub(crate) u64);

/// What `mem_map` did about read-only access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mapped {
    /// The device address of the mapping.
    pub(crate) ptr: u64,
    /// Whether the access flags the driver accepted enforce the access asked for (a read-only
    /// request the driver refused falls back to read-write, with `enforced: false`).
    pub(crate) enforced: bool,
}

/// Where a record or a wait happens: a stream of a device, or (`stream: None`) the legacy
/// default (`NULL`) stream of that device's primary context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    /// The device whose context owns the stream.
    pub(crate) device: i32,
    /// The stream, or `None` for the legacy default stream.
    pub(crate) stream: Option<RawStream>,
}

/// A callback run by the driver once the work queued before it on a stream is done.
pub(crate) type HostFn = Box<dyn FnOnce() + Send + 'static>;

/// The CUDA calls of the crate. Object safe; every method reports failures as [`CudaError`].
pub(crate) trait Backend: Send + Sync + Debug {
    /// Number of devices.
    fn device_count(&self) -> usize;
    /// `cuStreamCreateWithPriority` on `device`.
    fn create_stream(&self, device: i32, flags: u32, priority: i32)
    -> Result<RawStream, CudaError>;
    /// `cuStreamDestroy`.
    fn destroy_stream(&self, device: i32, stream: RawStream) -> Result<(), CudaError>;
    /// `cuStreamGetFlags`.
    fn stream_flags(&self, device: i32, stream: RawStream) -> Result<u32, CudaError>;
    /// `cuStreamGetPriority`.
    fn stream_priority(&self, device: i32, stream: RawStream) -> Result<i32, CudaError>;
    /// The device of the context that owns `stream` (`cuStreamGetCtx`, then
    /// `cuCtxGetDevice` with that context current): for streams this crate did not create.
    fn stream_device(&self, stream: RawStream) -> Result<i32, CudaError>;
    /// `cuStreamSynchronize` (host-blocking; used by tests and benchmarks only).
    fn synchronize(&self, target: Target) -> Result<(), CudaError>;
    /// `cuEventCreate` with `flags` on `device`.
    fn create_event(&self, device: i32, flags: u32) -> Result<RawEvent, CudaError>;
    /// `cuEventDestroy`.
    fn destroy_event(&self, device: i32, event: RawEvent) -> Result<(), CudaError>;
    /// `cuEventRecord(event, target)`; the event must belong to `target`'s device.
    fn record(&self, event_device: i32, event: RawEvent, target: Target) -> Result<(), CudaError>;
    /// `cuStreamWaitEvent(target, event)`: never blocks the host; works across devices.
    fn wait(&self, target: Target, event: RawEvent) -> Result<(), CudaError>;
    /// `cuEventQuery`: `true` once the recorded work is done.
    fn event_complete(&self, device: i32, event: RawEvent) -> Result<bool, CudaError>;
    /// Makes `device`'s primary context current on the calling thread (`cudaSetDevice`).
    fn set_current(&self, device: i32) -> Result<(), CudaError>;
    /// `cuLaunchHostFunc(stream, f)`.
    fn launch_host_fn(&self, device: i32, stream: RawStream, f: HostFn) -> Result<(), CudaError>;
    /// `cuIpcGetEventHandle`.
    fn ipc_export_event(&self, device: i32, event: RawEvent) -> Result<[u8; 64], CudaError>;
    /// `cuIpcOpenEventHandle`.
    fn ipc_import_event(&self, device: i32, handle: &[u8; 64]) -> Result<RawEvent, CudaError>;
    /// The records and waits made so far, for tests: the CPU fake's log; `None` for the driver.
    fn calls(&self) -> Option<Vec<crate::foreign::FakeCall>> {
        None
    }

    /// `cuMemGetAllocationGranularity` (minimum) of pinned device memory with a POSIX-fd handle.
    fn mem_granularity(&self, device: i32) -> Result<usize, CudaError>;
    /// `cuMemCreate` of `size` bytes (a multiple of the granularity) on `device`, exportable as a
    /// POSIX file descriptor.
    fn mem_create(&self, device: i32, size: usize) -> Result<RawMem, CudaError>;
    /// `cuMemExportToShareableHandle` as a POSIX file descriptor.
    fn mem_export(&self, device: i32, mem: RawMem) -> Result<OwnedFd, CudaError>;
    /// `cuMemImportFromShareableHandle` of a descriptor another process exported; `size` is the
    /// size the exporter announced (the fake checks it; the driver checks it when mapping).
    fn mem_import(&self, device: i32, fd: BorrowedFd<'_>, size: usize)
    -> Result<RawMem, CudaError>;
    /// `cuMemRelease`: the memory itself lives on while mapped or held by another handle.
    fn mem_release(&self, device: i32, mem: RawMem) -> Result<(), CudaError>;
    /// `cuMemAddressReserve` + `cuMemMap` + `cuMemSetAccess` for `on_device`, undone on failure.
    fn mem_map(
        &self,
        mem: RawMem,
        size: usize,
        on_device: i32,
        access: DeviceAccess,
    ) -> Result<Mapped, CudaError>;
    /// `cuMemUnmap` + `cuMemAddressFree`.
    fn mem_unmap(&self, on_device: i32, ptr: u64, size: usize) -> Result<(), CudaError>;
    /// `cuMemGetInfo`: (free, total) bytes of `device`.
    fn mem_info(&self, device: i32) -> Result<(usize, usize), CudaError>;
    /// `cuDeviceCanAccessPeer(accessor, owner)`; `true` when they are the same device.
    fn can_access_peer(&self, accessor: i32, owner: i32) -> Result<bool, CudaError>;
    /// `cuMemHostRegister` (portable; read-only for memory mapped without write permission).
    fn host_register(&self, ptr: usize, len: usize, read_only: bool) -> Result<(), CudaError>;
    /// `cuMemHostUnregister`.
    fn host_unregister(&self, ptr: usize) -> Result<(), CudaError>;
    /// `cuMemsetD8Async` on `target`.
    fn memset_async(
        &self,
        target: Target,
        dptr: u64,
        value: u8,
        len: usize,
    ) -> Result<(), CudaError>;
    /// `cuMemcpyHtoDAsync` on `target`.
    ///
    /// # Safety
    /// `src..src+len` stays readable until the stream's work up to this point is done.
    unsafe fn copy_htod_async(
        &self,
        target: Target,
        dptr: u64,
        src: *const u8,
        len: usize,
    ) -> Result<(), CudaError>;
    /// Whether this is the CPU fake of [`fake`].
    fn is_fake(&self) -> bool {
        false
    }
    /// `cuMemcpyDtoHAsync` on `target`.
    ///
    /// # Safety
    /// `dst..dst+len` stays writable, and unread by others, until the stream's work up to this
    /// point is done.
    unsafe fn copy_dtoh_async(
        &self,
        target: Target,
        dst: *mut u8,
        dptr: u64,
        len: usize,
    ) -> Result<(), CudaError>;
}

// Always compiled: `Driver::fake` gives other crates' CI tests the same stand-in.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod fake {
    //! A CPU stand-in for the driver: it hands out numbered handles and logs every call.
    //!
    //! Device memory is real shared memory: a memfd per allocation, exported as a duplicate of
    //! that descriptor (so it crosses processes by `SCM_RIGHTS` like a VMM descriptor does), and
    //! mapped with `mmap`, so a fake device pointer is a host address that the fake's memset and
    //! copies really write and read. Every device access is checked against the live mappings
    //! first: a bad address or a write through a read-only mapping is an error, never a fault.

    use std::collections::HashMap;
    use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
    use std::sync::{Arc, Mutex};

    use super::{Backend, HostFn, Mapped, RawEvent, RawMem, RawStream, Target};
    use crate::error::CudaError;
    use crate::memory::DeviceAccess;

    /// The fake's allocation granularity (the H200's, 2 MiB).
    pub(crate) const GRANULARITY: usize = 2 << 20;
    /// The fake's device size.
    pub(crate) const TOTAL: usize = 16 << 30;

    struct FakeMem {
        fd: OwnedFd,
        size: usize,
        /// Created here (counted by `mem_info`), not imported.
        created: bool,
        handle_live: bool,
        maps: usize,
    }

    struct FakeMap {
        mem: RawMem,
        len: usize,
        writable: bool,
    }

    /// One logged driver call.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Op {
        CreateStream { device: i32, stream: RawStream },
        DestroyStream(RawStream),
        CreateEvent { device: i32, event: RawEvent },
        Record { event: RawEvent, target: Target },
        Wait { target: Target, event: RawEvent },
        SetCurrent(i32),
        HostFn(RawStream),
        Synchronize(Target),
        ImportEvent { device: i32, event: RawEvent },
    }

    #[derive(Default)]
    struct State {
        next: usize,
        log: Vec<Op>,
        streams: HashMap<RawStream, (i32, u32, i32)>,
        events: HashMap<RawEvent, i32>,
        pending: HashMap<RawStream, Vec<HostFn>>,
        fail_creates: bool,
        mems: HashMap<RawMem, FakeMem>,
        maps: HashMap<u64, FakeMap>,
        registered: HashMap<usize, (usize, bool)>,
        no_peer: bool,
        read_only_unsupported: bool,
        events_pending: bool,
    }

    fn fake_err(call: &'static str, code: &str) -> CudaError {
        CudaError::Driver {
            call,
            code: code.into(),
        }
    }

    impl State {
        /// The live mapping containing `ptr..ptr+len`, if any: (base, writable).
        fn mapping_of(&self, ptr: u64, len: usize) -> Option<(u64, bool)> {
            self.maps.iter().find_map(|(base, m)| {
                let end = base.checked_add(m.len as u64)?;
                (ptr >= *base && ptr.checked_add(len as u64)? <= end).then_some((*base, m.writable))
            })
        }
        fn forget_if_unused(&mut self, mem: RawMem) {
            if self
                .mems
                .get(&mem)
                .is_some_and(|m| !m.handle_live && m.maps == 0)
            {
                self.mems.remove(&mem);
            }
        }
    }

    /// The fake driver.
    pub(crate) struct FakeBackend {
        devices: usize,
        state: Mutex<State>,
    }

    impl std::fmt::Debug for FakeBackend {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("FakeBackend")
                .field("devices", &self.devices)
                .finish()
        }
    }

    impl FakeBackend {
        pub(crate) fn new(devices: usize) -> Arc<Self> {
            Arc::new(Self {
                devices,
                state: Mutex::new(State {
                    // Above the driver's special stream handles (1: CU_STREAM_LEGACY, 2:
                    // CU_STREAM_PER_THREAD), which a real handle never equals.
                    next: 16,
                    ..State::default()
                }),
            })
        }
        fn st(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|e| e.into_inner())
        }
        pub(crate) fn calls_seen(&self) -> Vec<crate::foreign::FakeCall> {
            use crate::foreign::FakeCall;
            let raw = |t: &Target| t.stream.map(|s| s.0);
            self.st()
                .log
                .iter()
                .filter_map(|op| match op {
                    Op::Record { event, target } => Some(FakeCall::Record {
                        event: event.0,
                        device: target.device,
                        stream: raw(target),
                    }),
                    Op::Wait { target, event } => Some(FakeCall::Wait {
                        event: event.0,
                        device: target.device,
                        stream: raw(target),
                    }),
                    Op::Synchronize(target) => Some(FakeCall::Synchronize {
                        device: target.device,
                        stream: raw(target),
                    }),
                    Op::ImportEvent { device, event } => Some(FakeCall::ImportEvent {
                        device: *device,
                        event: event.0,
                    }),
                    _ => None,
                })
                .collect()
        }
        pub(crate) fn log(&self) -> Vec<Op> {
            self.st().log.clone()
        }
        pub(crate) fn clear_log(&self) {
            self.st().log.clear();
        }
        pub(crate) fn live_streams(&self) -> usize {
            self.st().streams.len()
        }
        pub(crate) fn set_fail_creates(&self, fail: bool) {
            self.st().fail_creates = fail;
        }
        /// Makes `can_access_peer` answer `false` for distinct devices.
        pub(crate) fn set_no_peer(&self, no_peer: bool) {
            self.st().no_peer = no_peer;
        }
        /// Makes the fake refuse read-only access flags, as some drivers do.
        pub(crate) fn set_read_only_unsupported(&self, unsupported: bool) {
            self.st().read_only_unsupported = unsupported;
        }
        /// Makes every event report "not complete" (work still running) until switched back.
        pub(crate) fn set_events_pending(&self, pending: bool) {
            self.st().events_pending = pending;
        }
        /// Number of live fake allocations (handles or mappings).
        pub(crate) fn live_memory(&self) -> usize {
            self.st().mems.len()
        }
        /// Number of live host registrations.
        pub(crate) fn registrations(&self) -> usize {
            self.st().registered.len()
        }
        /// Runs the host functions queued on `stream`, as the driver does once its work is done.
        pub(crate) fn complete(&self, stream: RawStream) {
            let fns = self.st().pending.remove(&stream).unwrap_or_default();
            for f in fns {
                f();
            }
        }
        /// The (record, wait) pairs of the log as (source, waiter) targets.
        pub(crate) fn waits(&self) -> Vec<(Target, Target)> {
            let log = self.log();
            let mut last: HashMap<RawEvent, Target> = HashMap::new();
            let mut out = Vec::new();
            for op in log {
                match op {
                    Op::Record { event, target } => {
                        last.insert(event, target);
                    }
                    Op::Wait { target, event } => {
                        if let Some(src) = last.get(&event) {
                            out.push((*src, target));
                        }
                    }
                    _ => {}
                }
            }
            out
        }
    }

    impl Backend for FakeBackend {
        fn device_count(&self) -> usize {
            self.devices
        }
        fn create_stream(
            &self,
            device: i32,
            flags: u32,
            priority: i32,
        ) -> Result<RawStream, CudaError> {
            let mut st = self.st();
            if st.fail_creates {
                return Err(CudaError::Driver {
                    call: "cuStreamCreateWithPriority",
                    code: "FAKE".into(),
                });
            }
            let s = RawStream(st.next);
            st.next += 1;
            st.streams.insert(s, (device, flags, priority));
            st.log.push(Op::CreateStream { device, stream: s });
            Ok(s)
        }
        fn destroy_stream(&self, _device: i32, stream: RawStream) -> Result<(), CudaError> {
            let mut st = self.st();
            st.streams.remove(&stream);
            st.log.push(Op::DestroyStream(stream));
            Ok(())
        }
        fn stream_flags(&self, _device: i32, stream: RawStream) -> Result<u32, CudaError> {
            Ok(self
                .st()
                .streams
                .get(&stream)
                .map(|s| s.1)
                .unwrap_or_default())
        }
        fn stream_priority(&self, _device: i32, stream: RawStream) -> Result<i32, CudaError> {
            Ok(self
                .st()
                .streams
                .get(&stream)
                .map(|s| s.2)
                .unwrap_or_default())
        }
        fn stream_device(&self, stream: RawStream) -> Result<i32, CudaError> {
            self.st()
                .streams
                .get(&stream)
                .map(|s| s.0)
                .ok_or_else(|| fake_err("cuStreamGetCtx", "CUDA_ERROR_INVALID_HANDLE"))
        }
        fn synchronize(&self, target: Target) -> Result<(), CudaError> {
            self.st().log.push(Op::Synchronize(target));
            Ok(())
        }
        fn create_event(&self, device: i32, _flags: u32) -> Result<RawEvent, CudaError> {
            let mut st = self.st();
            let e = RawEvent(st.next);
            st.next += 1;
            st.events.insert(e, device);
            st.log.push(Op::CreateEvent { device, event: e });
            Ok(e)
        }
        fn destroy_event(&self, _device: i32, event: RawEvent) -> Result<(), CudaError> {
            self.st().events.remove(&event);
            Ok(())
        }
        fn record(
            &self,
            event_device: i32,
            event: RawEvent,
            target: Target,
        ) -> Result<(), CudaError> {
            let mut st = self.st();
            let target_device = match target.stream {
                Some(s) => st.streams.get(&s).map(|s| s.0).unwrap_or(-1),
                None => target.device,
            };
            // The real driver refuses a record across contexts; the fake enforces it too.
            if st.events.get(&event) != Some(&event_device) || target_device != event_device {
                return Err(CudaError::Driver {
                    call: "cuEventRecord",
                    code: "CUDA_ERROR_INVALID_HANDLE".into(),
                });
            }
            st.log.push(Op::Record { event, target });
            Ok(())
        }
        fn wait(&self, target: Target, event: RawEvent) -> Result<(), CudaError> {
            self.st().log.push(Op::Wait { target, event });
            Ok(())
        }
        fn event_complete(&self, _device: i32, _event: RawEvent) -> Result<bool, CudaError> {
            Ok(!self.st().events_pending)
        }
        fn set_current(&self, device: i32) -> Result<(), CudaError> {
            self.st().log.push(Op::SetCurrent(device));
            Ok(())
        }
        fn launch_host_fn(
            &self,
            _device: i32,
            stream: RawStream,
            f: HostFn,
        ) -> Result<(), CudaError> {
            let mut st = self.st();
            st.log.push(Op::HostFn(stream));
            st.pending.entry(stream).or_default().push(f);
            Ok(())
        }
        fn ipc_export_event(&self, _device: i32, event: RawEvent) -> Result<[u8; 64], CudaError> {
            let mut h = [0u8; 64];
            h[..8].copy_from_slice(&(event.0 as u64).to_le_bytes());
            Ok(h)
        }
        fn calls(&self) -> Option<Vec<crate::foreign::FakeCall>> {
            Some(self.calls_seen())
        }
        fn ipc_import_event(&self, device: i32, handle: &[u8; 64]) -> Result<RawEvent, CudaError> {
            let mut b = [0u8; 8];
            b.copy_from_slice(&handle[..8]);
            let e = RawEvent(u64::from_le_bytes(b) as usize);
            let mut st = self.st();
            st.events.insert(e, device);
            st.log.push(Op::ImportEvent { device, event: e });
            Ok(e)
        }

        fn is_fake(&self) -> bool {
            true
        }

        fn mem_granularity(&self, _device: i32) -> Result<usize, CudaError> {
            Ok(GRANULARITY)
        }

        fn mem_create(&self, _device: i32, size: usize) -> Result<RawMem, CudaError> {
            let mut st = self.st();
            if st.fail_creates {
                return Err(fake_err("cuMemCreate", "CUDA_ERROR_OUT_OF_MEMORY"));
            }
            let used: usize = st.mems.values().filter(|m| m.created).map(|m| m.size).sum();
            if size > TOTAL - used {
                return Err(fake_err("cuMemCreate", "CUDA_ERROR_OUT_OF_MEMORY"));
            }
            let fd = rustix::fs::memfd_create("cuda-streams-fake", rustix::fs::MemfdFlags::CLOEXEC)
                .map_err(|e| fake_err("cuMemCreate", &e.to_string()))?;
            rustix::fs::ftruncate(&fd, size as u64)
                .map_err(|e| fake_err("cuMemCreate", &e.to_string()))?;
            let mem = RawMem(st.next as u64);
            st.next += 1;
            st.mems.insert(
                mem,
                FakeMem {
                    fd,
                    size,
                    created: true,
                    handle_live: true,
                    maps: 0,
                },
            );
            Ok(mem)
        }

        fn mem_export(&self, _device: i32, mem: RawMem) -> Result<OwnedFd, CudaError> {
            let st = self.st();
            let m = st.mems.get(&mem).filter(|m| m.handle_live).ok_or_else(|| {
                fake_err("cuMemExportToShareableHandle", "CUDA_ERROR_INVALID_VALUE")
            })?;
            m.fd.try_clone()
                .map_err(|e| fake_err("cuMemExportToShareableHandle", &e.to_string()))
        }

        fn mem_import(
            &self,
            _device: i32,
            fd: BorrowedFd<'_>,
            size: usize,
        ) -> Result<RawMem, CudaError> {
            // The driver refuses descriptors that are not exported allocations; the fake refuses
            // anything that is not a regular file (a memfd) at least `size` long.
            let stat = rustix::fs::fstat(fd).map_err(|_| {
                fake_err("cuMemImportFromShareableHandle", "CUDA_ERROR_INVALID_VALUE")
            })?;
            let regular = rustix::fs::FileType::from_raw_mode(stat.st_mode)
                == rustix::fs::FileType::RegularFile;
            if !regular || (stat.st_size as u64) < size as u64 {
                return Err(fake_err(
                    "cuMemImportFromShareableHandle",
                    "CUDA_ERROR_INVALID_VALUE",
                ));
            }
            let fd = fd
                .try_clone_to_owned()
                .map_err(|e| fake_err("cuMemImportFromShareableHandle", &e.to_string()))?;
            let mut st = self.st();
            let mem = RawMem(st.next as u64);
            st.next += 1;
            st.mems.insert(
                mem,
                FakeMem {
                    fd,
                    size: stat.st_size as usize,
                    created: false,
                    handle_live: true,
                    maps: 0,
                },
            );
            Ok(mem)
        }

        fn mem_release(&self, _device: i32, mem: RawMem) -> Result<(), CudaError> {
            let mut st = self.st();
            match st.mems.get_mut(&mem) {
                Some(m) if m.handle_live => m.handle_live = false,
                _ => return Err(fake_err("cuMemRelease", "CUDA_ERROR_INVALID_VALUE")),
            }
            st.forget_if_unused(mem);
            Ok(())
        }

        fn mem_map(
            &self,
            mem: RawMem,
            size: usize,
            _on_device: i32,
            access: DeviceAccess,
        ) -> Result<Mapped, CudaError> {
            let mut st = self.st();
            let read_only_unsupported = st.read_only_unsupported;
            let m = st
                .mems
                .get_mut(&mem)
                .filter(|m| m.handle_live)
                .ok_or_else(|| fake_err("cuMemMap", "CUDA_ERROR_INVALID_HANDLE"))?;
            if size == 0 || size > m.size || !size.is_multiple_of(GRANULARITY) {
                return Err(fake_err("cuMemMap", "CUDA_ERROR_INVALID_VALUE"));
            }
            let writable = access == DeviceAccess::ReadWrite || read_only_unsupported;
            let prot = if writable {
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE
            } else {
                rustix::mm::ProtFlags::READ
            };
            // SAFETY: a fresh shared mapping of our own memfd at an address the kernel picks;
            // it aliases no Rust object and is unmapped only by `mem_unmap`.
            let addr = unsafe {
                rustix::mm::mmap(
                    std::ptr::null_mut(),
                    size,
                    prot,
                    rustix::mm::MapFlags::SHARED,
                    m.fd.as_fd(),
                    0,
                )
            }
            .map_err(|e| fake_err("cuMemMap", &e.to_string()))?;
            m.maps += 1;
            let ptr = addr as u64;
            st.maps.insert(
                ptr,
                FakeMap {
                    mem,
                    len: size,
                    writable,
                },
            );
            Ok(Mapped {
                ptr,
                enforced: !read_only_unsupported,
            })
        }

        fn mem_unmap(&self, _on_device: i32, ptr: u64, size: usize) -> Result<(), CudaError> {
            let mut st = self.st();
            let Some(m) = st.maps.remove(&ptr) else {
                return Err(fake_err("cuMemUnmap", "CUDA_ERROR_INVALID_VALUE"));
            };
            debug_assert_eq!(m.len, size);
            // SAFETY: `ptr..ptr+len` is the mapping `mem_map` made; it was removed from the
            // table above, so nothing reaches it through the fake any more.
            unsafe { rustix::mm::munmap(ptr as *mut std::ffi::c_void, m.len) }
                .map_err(|e| fake_err("cuMemUnmap", &e.to_string()))?;
            if let Some(rec) = st.mems.get_mut(&m.mem) {
                rec.maps -= 1;
            }
            st.forget_if_unused(m.mem);
            Ok(())
        }

        fn mem_info(&self, device: i32) -> Result<(usize, usize), CudaError> {
            if device < 0 || device as usize >= self.devices {
                return Err(CudaError::InvalidDevice {
                    device,
                    count: self.devices,
                });
            }
            let st = self.st();
            let used: usize = st.mems.values().filter(|m| m.created).map(|m| m.size).sum();
            Ok((TOTAL - used, TOTAL))
        }

        fn can_access_peer(&self, accessor: i32, owner: i32) -> Result<bool, CudaError> {
            Ok(accessor == owner || !self.st().no_peer)
        }

        fn host_register(&self, ptr: usize, len: usize, read_only: bool) -> Result<(), CudaError> {
            let mut st = self.st();
            let overlaps = st
                .registered
                .iter()
                .any(|(p, (l, _))| ptr < p + l && *p < ptr + len);
            if overlaps {
                return Err(fake_err(
                    "cuMemHostRegister",
                    "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED",
                ));
            }
            st.registered.insert(ptr, (len, read_only));
            Ok(())
        }

        fn host_unregister(&self, ptr: usize) -> Result<(), CudaError> {
            match self.st().registered.remove(&ptr) {
                Some(_) => Ok(()),
                None => Err(fake_err(
                    "cuMemHostUnregister",
                    "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED",
                )),
            }
        }

        fn memset_async(
            &self,
            _target: Target,
            dptr: u64,
            value: u8,
            len: usize,
        ) -> Result<(), CudaError> {
            let st = self.st();
            match st.mapping_of(dptr, len) {
                Some((_, true)) => {
                    // SAFETY: the range lies inside a live, writable mapping of the fake (held
                    // while the state lock is).
                    unsafe { std::ptr::write_bytes(dptr as *mut u8, value, len) };
                    Ok(())
                }
                _ => Err(fake_err("cuMemsetD8Async", "CUDA_ERROR_ILLEGAL_ADDRESS")),
            }
        }

        unsafe fn copy_htod_async(
            &self,
            _target: Target,
            dptr: u64,
            src: *const u8,
            len: usize,
        ) -> Result<(), CudaError> {
            let st = self.st();
            match st.mapping_of(dptr, len) {
                Some((_, true)) => {
                    // SAFETY: the destination is a live writable fake mapping; the caller
                    // guarantees `src..src+len` is readable.
                    unsafe { std::ptr::copy(src, dptr as *mut u8, len) };
                    Ok(())
                }
                _ => Err(fake_err("cuMemcpyHtoDAsync", "CUDA_ERROR_ILLEGAL_ADDRESS")),
            }
        }

        unsafe fn copy_dtoh_async(
            &self,
            _target: Target,
            dst: *mut u8,
            dptr: u64,
            len: usize,
        ) -> Result<(), CudaError> {
            let st = self.st();
            match st.mapping_of(dptr, len) {
                Some(_) => {
                    // SAFETY: the source is a live fake mapping; the caller guarantees
                    // `dst..dst+len` is writable.
                    unsafe { std::ptr::copy(dptr as *const u8, dst, len) };
                    Ok(())
                }
                None => Err(fake_err("cuMemcpyDtoHAsync", "CUDA_ERROR_ILLEGAL_ADDRESS")),
            }
        }
    }

    impl Drop for FakeBackend {
        fn drop(&mut self) {
            // Mappings whose owners leaked (the fake is dropped first) are unmapped here.
            let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
            for (ptr, m) in st.maps.drain() {
                // SAFETY: each entry is a live mapping made by `mem_map`; the fake is going away.
                let _ = unsafe { rustix::mm::munmap(ptr as *mut std::ffi::c_void, m.len) };
            }
        }
    }
}
