//! The few CUDA calls the crate makes, behind one small trait.
//!
//! Everything above this module (pool bookkeeping, per-port recording, emission rules, the
//! `receive_cuda_stream` decision table, the condition's state) is plain Rust that talks to a
//! `dyn Backend`. The real implementation is [`crate::cuda::CudaBackend`]; unit tests use the CPU
//! fake in [`fake`], which logs every call so the tests can assert which streams waited on which.

use std::fmt::Debug;

use crate::error::CudaError;

/// A driver stream handle (`CUstream`) stored as an integer so that it is `Send + Sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RawStream(pub(crate) usize);

/// A driver event handle (`CUevent`) stored as an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RawEvent(pub(crate) usize);

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
}

#[cfg(test)]
pub(crate) mod fake {
    //! A CPU stand-in for the driver: it hands out numbered handles and logs every call.

    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use super::{Backend, HostFn, RawEvent, RawStream, Target};
    use crate::error::CudaError;

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
    }

    #[derive(Default)]
    struct State {
        next: usize,
        log: Vec<Op>,
        streams: HashMap<RawStream, (i32, u32, i32)>,
        events: HashMap<RawEvent, i32>,
        pending: HashMap<RawStream, Vec<HostFn>>,
        fail_creates: bool,
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
                    next: 1,
                    ..State::default()
                }),
            })
        }
        fn st(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|e| e.into_inner())
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
        fn synchronize(&self, _target: Target) -> Result<(), CudaError> {
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
            Ok(true)
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
        fn ipc_import_event(&self, device: i32, handle: &[u8; 64]) -> Result<RawEvent, CudaError> {
            let mut b = [0u8; 8];
            b.copy_from_slice(&handle[..8]);
            let e = RawEvent(u64::from_le_bytes(b) as usize);
            self.st().events.insert(e, device);
            Ok(e)
        }
    }
}
