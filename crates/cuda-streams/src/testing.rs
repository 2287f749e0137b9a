//! Support for the GPU acceptance bundle and benchmarks; not needed by applications.

use std::sync::Arc;

use crate::backend::{Backend, RawEvent, Target};
use crate::driver::Driver;
use crate::error::CudaError;
use crate::ipc::EVENT_DISABLE_TIMING;
use crate::pool::Stream;

pub use crate::cuda::HostWord;

/// Creates and destroys one stream (the cost a pool saves).
///
/// # Errors
/// A driver error.
pub fn create_destroy_stream(
    driver: &Driver,
    device: i32,
    flags: u32,
    priority: i32,
) -> Result<(), CudaError> {
    let s = driver.backend.create_stream(device, flags, priority)?;
    driver.backend.destroy_stream(device, s)
}

/// A plain event (`CU_EVENT_DISABLE_TIMING`) for the bare record + wait baseline.
pub struct BareEvent {
    backend: Arc<dyn Backend>,
    device: i32,
    raw: RawEvent,
}

impl std::fmt::Debug for BareEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BareEvent")
            .field("device", &self.device)
            .finish()
    }
}

impl BareEvent {
    /// Creates the event on `device`.
    ///
    /// # Errors
    /// A driver error.
    pub fn new(driver: &Driver, device: i32) -> Result<BareEvent, CudaError> {
        let raw = driver.backend.create_event(device, EVENT_DISABLE_TIMING)?;
        Ok(BareEvent {
            backend: driver.backend.clone(),
            device,
            raw,
        })
    }

    /// `cuEventRecord(self, from)` then `cuStreamWaitEvent(to, self)`.
    ///
    /// # Errors
    /// A driver error.
    pub fn record_then_wait(&self, from: &Stream, to: &Stream) -> Result<(), CudaError> {
        self.backend.record(self.device, self.raw, from.target())?;
        self.backend.wait(to.target(), self.raw)
    }
}

impl Drop for BareEvent {
    fn drop(&mut self) {
        let _ = self.backend.destroy_event(self.device, self.raw);
    }
}

/// Blocks until the legacy default stream of `device` is idle.
///
/// # Errors
/// A driver error.
pub fn synchronize_default(driver: &Driver, device: i32) -> Result<(), CudaError> {
    driver.backend.synchronize(Target {
        device,
        stream: None,
    })
}
