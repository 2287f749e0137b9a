//! [`InterprocessEvent`]: ordering GPU work across processes without blocking the host.
//!
//! The producer creates one event with `CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING`,
//! exports its [`IpcEventHandle`] (64 opaque bytes, what a publication carries as an attachment),
//! and records it on its stream after queuing the work that wrote the data. The consumer imports
//! the handle once and makes its own stream wait on it (`cuStreamWaitEvent`): GPU-side ordering,
//! no host blocking.
//!
//! A wait orders after the *latest record made before the wait call*. A producer that re-records
//! one event for every publication must therefore publish only after recording; one event per
//! publication (or per slot of a ring of publications) is the simple, race-free pattern.

use std::fmt;
use std::sync::Arc;

use crate::backend::{Backend, RawEvent, Target};
use crate::driver::Driver;
use crate::error::CudaError;
use crate::pool::Stream;

/// `CU_EVENT_DISABLE_TIMING`.
pub(crate) const EVENT_DISABLE_TIMING: u32 = 0x2;
/// `CU_EVENT_INTERPROCESS` (requires `CU_EVENT_DISABLE_TIMING`).
pub(crate) const EVENT_INTERPROCESS: u32 = 0x4;

/// The opaque, fixed-size exported form of an [`InterprocessEvent`] (`CUipcEventHandle`).
///
/// Plain bytes: copy them into a publication, a socket message or shared memory as they are.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct IpcEventHandle(pub [u8; IpcEventHandle::LEN]);

impl IpcEventHandle {
    /// Size of the handle in bytes.
    pub const LEN: usize = 64;

    /// The handle's bytes.
    pub fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }

    /// Rebuilds a handle from bytes received from another process; `None` unless exactly
    /// [`IpcEventHandle::LEN`] bytes are given.
    pub fn from_bytes(bytes: &[u8]) -> Option<IpcEventHandle> {
        <[u8; Self::LEN]>::try_from(bytes).ok().map(IpcEventHandle)
    }
}

impl fmt::Debug for IpcEventHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IpcEventHandle(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

/// A CUDA event that can be shared with other processes. Destroyed on drop.
pub struct InterprocessEvent {
    backend: Arc<dyn Backend>,
    device: i32,
    pub(crate) raw: RawEvent,
    imported: bool,
}

impl fmt::Debug for InterprocessEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InterprocessEvent")
            .field("device", &self.device)
            .field("imported", &self.imported)
            .finish()
    }
}

impl InterprocessEvent {
    /// Creates an exportable event on `device`.
    ///
    /// # Errors
    /// [`CudaError::InvalidDevice`] or a driver error.
    pub fn new(driver: &Driver, device: i32) -> Result<InterprocessEvent, CudaError> {
        Self::with_backend(driver.backend.clone(), device)
    }

    pub(crate) fn with_backend(
        backend: Arc<dyn Backend>,
        device: i32,
    ) -> Result<InterprocessEvent, CudaError> {
        let raw = backend.create_event(device, EVENT_INTERPROCESS | EVENT_DISABLE_TIMING)?;
        Ok(InterprocessEvent {
            backend,
            device,
            raw,
            imported: false,
        })
    }

    /// Opens an event exported by another process (`cuIpcOpenEventHandle`), on `device` of this
    /// process. Handles cannot be opened in the process that exported them (a CUDA rule).
    ///
    /// # Errors
    /// A driver error, e.g. for a stale or foreign handle.
    pub fn import(
        driver: &Driver,
        device: i32,
        handle: &IpcEventHandle,
    ) -> Result<InterprocessEvent, CudaError> {
        let raw = driver.backend.ipc_import_event(device, &handle.0)?;
        Ok(InterprocessEvent {
            backend: driver.backend.clone(),
            device,
            raw,
            imported: true,
        })
    }

    /// The exported handle (`cuIpcGetEventHandle`).
    ///
    /// # Errors
    /// A driver error.
    pub fn export(&self) -> Result<IpcEventHandle, CudaError> {
        self.backend
            .ipc_export_event(self.device, self.raw)
            .map(IpcEventHandle)
    }

    /// Records the event on `stream`: it completes when the work queued so far on `stream` is
    /// done. The stream must be on the event's device.
    ///
    /// # Errors
    /// [`CudaError::DeviceMismatch`] or a driver error.
    pub fn record(&self, stream: &Stream) -> Result<(), CudaError> {
        if stream.device() != self.device {
            return Err(CudaError::DeviceMismatch {
                event_device: self.device,
                stream_device: stream.device(),
            });
        }
        self.backend.record(self.device, self.raw, stream.target())
    }

    /// Makes `stream` (or, with `None`, the legacy default stream of the event's device) wait,
    /// on the GPU, for the event's last record. Never blocks the host.
    ///
    /// # Errors
    /// A driver error.
    pub fn make_stream_wait(&self, stream: Option<&Stream>) -> Result<(), CudaError> {
        let target = stream.map_or(
            Target {
                device: self.device,
                stream: None,
            },
            Stream::target,
        );
        self.backend.wait(target, self.raw)
    }

    /// Whether the work captured by the last record is done (`cuEventQuery`); `true` when the
    /// event was never recorded.
    ///
    /// # Errors
    /// A driver error.
    pub fn is_complete(&self) -> Result<bool, CudaError> {
        self.backend.event_complete(self.device, self.raw)
    }

    /// The device of the event.
    pub fn device(&self) -> i32 {
        self.device
    }

    pub(crate) fn backend_arc(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// Whether this event was imported from another process.
    pub fn is_imported(&self) -> bool {
        self.imported
    }
}

impl Drop for InterprocessEvent {
    fn drop(&mut self) {
        if let Err(e) = self.backend.destroy_event(self.device, self.raw) {
            tracing::warn!(error = %e, "failed to destroy an interprocess CUDA event");
        }
    }
}
