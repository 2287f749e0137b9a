//! Support for the GPU acceptance bundle and benchmarks; not needed by applications.

use std::sync::Arc;

use crate::backend::{Backend, RawEvent, Target};
use crate::driver::Driver;
use crate::error::CudaError;
use crate::ipc::EVENT_DISABLE_TIMING;
use crate::pool::Stream;

pub use crate::cuda::{
    FillKernel, HostWord, LegacyIpcBuffer, LegacyIpcMapping, PinnedBuffer, raw_memset_sync,
};

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

/// A shared-memory (memfd) host mapping like a Fast I/O segment's: the host side of the copy
/// benchmarks and of the host-registration tests.
#[derive(Debug)]
pub struct SharedHostMemory {
    fd: std::os::fd::OwnedFd,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value; only the pointer value is handed out.
unsafe impl Send for SharedHostMemory {}
// SAFETY: as above.
unsafe impl Sync for SharedHostMemory {}

impl SharedHostMemory {
    /// A fresh memfd of `len` bytes mapped shared and writable, with its pages touched (so a
    /// copy measures the copy, not page faults).
    ///
    /// # Errors
    /// The system's error, as text.
    pub fn new(len: usize) -> Result<SharedHostMemory, String> {
        let fd = rustix::fs::memfd_create("cuda-streams-host", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| format!("memfd_create: {e}"))?;
        rustix::fs::ftruncate(&fd, len as u64).map_err(|e| format!("ftruncate: {e}"))?;
        let ptr = map(&fd, len, true)?;
        // SAFETY: `ptr..ptr+len` is the fresh writable mapping made above.
        unsafe { std::ptr::write_bytes(ptr, 1, len) };
        Ok(SharedHostMemory { fd, ptr, len })
    }

    /// The first byte of the writable mapping.
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

    /// A second, read-only mapping of the same memory (what a Fast I/O reader holds); unmapped
    /// by [`ReadOnlyView`]'s drop.
    ///
    /// # Errors
    /// The system's error, as text.
    pub fn read_only_view(&self) -> Result<ReadOnlyView, String> {
        Ok(ReadOnlyView {
            ptr: map(&self.fd, self.len, false)?,
            len: self.len,
        })
    }
}

fn map(fd: &std::os::fd::OwnedFd, len: usize, writable: bool) -> Result<*mut u8, String> {
    use rustix::mm::{MapFlags, ProtFlags};
    let prot = if writable {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    };
    // SAFETY: a new shared mapping of our own memfd at a kernel-chosen address.
    unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0) }
        .map(|p| p.cast::<u8>())
        .map_err(|e| format!("mmap: {e}"))
}

impl Drop for SharedHostMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

/// A read-only mapping of a [`SharedHostMemory`].
#[derive(Debug)]
pub struct ReadOnlyView {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: owned mapping; only the pointer value is handed out.
unsafe impl Send for ReadOnlyView {}
// SAFETY: as above.
unsafe impl Sync for ReadOnlyView {}

impl ReadOnlyView {
    /// The first byte.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
}

impl Drop for ReadOnlyView {
    fn drop(&mut self) {
        // SAFETY: the mapping made by `read_only_view`, unmapped once.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

pub use crate::foreign::FakeCall;

/// The records and waits `driver` has made so far, in order, when it is the CPU fake of
/// [`Driver::fake`]; `None` for a real driver. Lets tests of crates built on this one check
/// which stream waited on which event.
pub fn fake_calls(driver: &Driver) -> Option<Vec<FakeCall>> {
    driver.backend.calls()
}
