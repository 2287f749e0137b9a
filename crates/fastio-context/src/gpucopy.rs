//! Copies between a host allocation and a device one on a CUDA stream.
//!
//! A host allocation's mapping is registered with CUDA (`cuMemHostRegister`, read-only for
//! a read-only mapping) the first time it takes part in a copy, so copies run at pinned
//! speed; the registration is kept for the handle's life (one per mapping, cached by
//! cuda-streams) and undone before the mapping is parked or unmapped at release. The
//! streams a handle's copies were queued on are remembered, and releasing the handle (on
//! either side) first waits for them: queued copies never touch memory that has been
//! unmapped, parked or handed to someone else. (The module holds the unsafe calls that
//! register host memory and queue the copies.)

#![allow(unsafe_code)]

use cuda_streams::{Driver, Stream};

use crate::ContextError;
use crate::context::Allocation;

/// What a handle's memory has to do with CUDA streams in this process.
#[derive(Default)]
pub(crate) struct GpuUse {
    // Streams with copies of this handle's memory queued (one entry per stream).
    streams: Vec<Stream>,
    // The driver the host mapping is registered with, and the registered range.
    registered: Option<(Driver, usize, usize)>,
    // Registrations this handle made (a copy that found its mapping registered adds none).
    registrations: u64,
}

impl GpuUse {
    fn used_on(&mut self, stream: &Stream) {
        if !self.streams.iter().any(|s| s.id() == stream.id()) {
            self.streams.push(stream.clone());
        }
    }
}

impl Allocation {
    fn gpu_use(&self) -> std::sync::MutexGuard<'_, GpuUse> {
        // Every update leaves the state consistent before it could panic.
        self.gpu.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enqueues on `stream` a copy of this host allocation's bytes to the start of the
    /// device allocation `dst` (host to device, `cuMemcpyHtoDAsync`). Returns without
    /// waiting for the copy.
    ///
    /// The first copy registers this handle's mapping with CUDA (pinned speed after; a
    /// read-only handle registers it read-only); `dst` is mapped on the stream's device if
    /// it was not: its own device ([`Allocation::map_device`]), or another GPU of the host
    /// with peer access to it, whose mapping the copy then goes through
    /// ([`Allocation::map_device_on`]). Both handles stay usable while the copy runs:
    /// releasing, freeing or dropping either first waits for the streams it was copied
    /// on. Read the result on the device after work ordered behind `stream`.
    ///
    /// # Errors
    /// [`ContextError::NotHostMemory`] when this is device memory,
    /// [`ContextError::NotDeviceMemory`] when `dst` is host memory, [`ContextError::ReadOnly`]
    /// when `dst` is a read-only handle, [`ContextError::LengthMismatch`] when `dst` is
    /// smaller than this allocation, [`ContextError::Device`] when the driver refuses
    /// (among others: `stream` is on a GPU without peer access to `dst`'s; nothing is
    /// registered then).
    pub fn copy_to_device(
        &self,
        driver: &Driver,
        dst: &Allocation,
        stream: &Stream,
    ) -> Result<(), ContextError> {
        self.copy_with_device(driver, dst, stream, Direction::ToDevice)
    }

    /// Enqueues on `stream` a copy of the first [`Allocation::size`] bytes of the device
    /// allocation `src` into this host allocation (device to host, `cuMemcpyDtoHAsync`).
    /// Returns without waiting: the bytes are there once `stream`'s work so far is done
    /// (synchronise it, or wait on an event recorded after this call) and must not be read
    /// before.
    ///
    /// Registration, mapping and lifetimes as in [`Allocation::copy_to_device`].
    ///
    /// # Errors
    /// As [`Allocation::copy_to_device`], with [`ContextError::ReadOnly`] when this handle
    /// is read-only (a read-only device handle may be the source).
    pub fn copy_from_device(
        &self,
        driver: &Driver,
        src: &Allocation,
        stream: &Stream,
    ) -> Result<(), ContextError> {
        self.copy_with_device(driver, src, stream, Direction::FromDevice)
    }

    /// How many times this handle registered its host mapping with CUDA (0 or 1 for the
    /// handle's life: copies reuse the registration).
    pub fn host_registrations(&self) -> u64 {
        self.gpu_use().registrations
    }

    /// Whether this handle's host mapping is registered with CUDA now.
    pub fn is_host_registered(&self) -> bool {
        self.gpu_use().registered.is_some()
    }

    /// What [`Allocation::copy_to_device`] (`to_device`) or
    /// [`Allocation::copy_from_device`] checks before it reaches CUDA, with the same errors:
    /// this is host memory, `device` is device memory, the destination is writable, and
    /// `device` is at least this allocation's size. For callers that refuse a bad copy
    /// before they look for a driver (the C API).
    ///
    /// # Errors
    /// As [`Allocation::copy_to_device`], except [`ContextError::Device`].
    pub fn check_copy(&self, device: &Allocation, to_device: bool) -> Result<(), ContextError> {
        self.mapping()?;
        if device.kind().is_host() {
            return Err(ContextError::NotDeviceMemory);
        }
        let destination = if to_device { device } else { self };
        if destination.access() == crate::Access::ReadOnly {
            return Err(ContextError::ReadOnly);
        }
        if device.size() < self.size() {
            return Err(ContextError::LengthMismatch {
                expected: self.size(),
                actual: device.size(),
            });
        }
        Ok(())
    }

    fn copy_with_device(
        &self,
        driver: &Driver,
        device: &Allocation,
        stream: &Stream,
        direction: Direction,
    ) -> Result<(), ContextError> {
        self.check_copy(device, direction == Direction::ToDevice)?;
        let mapping = self.mapping()?;
        let len = self.size();
        let failed = |e: cuda_streams::CudaError| ContextError::Device {
            kind: device.kind(),
            reason: e.to_string(),
        };
        // The copy runs on the stream's device, through the memory's mapping there (its
        // own, or a peer's): made first, so that a GPU without peer access is refused
        // before anything is registered.
        let on_device = stream.device();
        device.with_device_mapping(driver, on_device, |_| ())?;
        let (ptr, mapped_len) = (mapping.as_ptr(), mapping.len());
        let read_only = self.access() == crate::Access::ReadOnly || !mapping.may_write();
        {
            let mut gpu = self.gpu_use();
            if gpu.registered.is_none() {
                // SAFETY: the range is this handle's live mapping; `finish_gpu_use`
                // unregisters it before the mapping is parked or unmapped.
                let newly =
                    unsafe { cuda_streams::register_host(driver, ptr, mapped_len, read_only) }
                        .map_err(failed)?;
                gpu.registered = Some((driver.clone(), ptr as usize, mapped_len));
                gpu.registrations += u64::from(newly);
            }
        }
        // Remembered before queueing: whatever is queued is waited for at release.
        self.gpu_use().used_on(stream);
        device.gpu_use().used_on(stream);
        device
            .with_device_mapping(driver, on_device, |dm| match direction {
                // SAFETY: `ptr..ptr+len` is this handle's mapping (len <= its size), which
                // stays mapped and accessible until the handle is released, and release
                // first synchronises `stream` (recorded above).
                Direction::ToDevice => unsafe { dm.copy_from_host_async(stream, 0, ptr, len) },
                Direction::FromDevice => {
                    let dst = mapping
                        .as_mut_ptr()
                        .map_err(|_| cuda_streams::CudaError::ReadOnly)?;
                    // SAFETY: as above, and the handle is read-write (checked) so the
                    // mapping is writable; the caller must not read it before the stream
                    // is done (documented).
                    unsafe { dm.copy_to_host_async(stream, 0, dst, len) }
                }
            })?
            .map_err(failed)
    }

    /// Waits for the streams this handle's copies were queued on and undoes its host
    /// registration: called as the handle is given up, before its mapping is parked.
    pub(crate) fn finish_gpu_use(&self) {
        let (streams, registered) = {
            let mut gpu = self.gpu_use();
            (std::mem::take(&mut gpu.streams), gpu.registered.take())
        };
        for stream in streams {
            // Bounded by the work queued on the stream; an error means a lost context,
            // which runs nothing more.
            if let Err(e) = stream.synchronize() {
                tracing::warn!("waiting for copies of {} failed: {e}", self.id());
            }
        }
        if let Some((driver, ptr, len)) = registered
            && let Err(e) = cuda_streams::unregister_host(&driver, ptr as *const u8, len)
        {
            tracing::warn!("unregistering {} from CUDA failed: {e}", self.id());
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToDevice,
    FromDevice,
}
