//! Device memory that crosses processes, and host memory that meets the GPU at pinned speed.
//!
//! [`DeviceMemory`] is one allocation of CUDA's virtual memory management API (`cuMemCreate`,
//! pinned device memory requesting the POSIX file-descriptor handle type), its size rounded up to
//! the device's allocation granularity. It is exported once as a file descriptor
//! (`cuMemExportToShareableHandle`); every [`DeviceMemory::export_fd`] after the first returns a
//! duplicate of that descriptor, which another process receives over a Unix socket
//! (`SCM_RIGHTS`) and imports with [`DeviceMemory::import`]. The kernel refcounts the
//! descriptor and the driver the physical memory: it lives while any handle, descriptor or
//! mapping of it lives anywhere, so a holder killed with `SIGKILL` frees nothing the others use,
//! and nothing leaks once all are gone.
//!
//! [`DeviceMemory::map`] reserves an address range, maps the memory into it and grants access
//! to one device (`cuMemAddressReserve`, `cuMemMap`, `cuMemSetAccess`). Another device of the
//! host may map it when the two are peers (`cuDeviceCanAccessPeer`); otherwise the call fails
//! with [`CudaError::NoPeerAccess`]. [`DeviceAccess::ReadOnly`] asks the driver for
//! `CU_MEM_ACCESS_FLAGS_PROT_READ`; where the driver refuses it the mapping falls back to
//! read-write and says so ([`DeviceMapping::read_only_enforced`]). Either way the writes this
//! crate issues ([`DeviceMapping::memset_async`], [`DeviceMapping::copy_from_host_async`]) are
//! refused on a read-only mapping; what a kernel does with the raw pointer is up to the kernel.
//!
//! Host memory: [`register_host`] pins a host mapping with `cuMemHostRegister` once per process
//! (cached by address range); [`unregister_host`] is the hook the owner of the mapping calls
//! before unmapping it. Copies between host memory and a mapping run on a [`Stream`].

use std::fmt;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use crate::backend::{Backend, RawMem, Target};
use crate::driver::Driver;
use crate::error::CudaError;
use crate::pool::Stream;

/// How a device maps a [`DeviceMemory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceAccess {
    /// Reads and writes (`CU_MEM_ACCESS_FLAGS_PROT_READWRITE`).
    ReadWrite,
    /// Reads only (`CU_MEM_ACCESS_FLAGS_PROT_READ` where the driver takes it).
    ReadOnly,
}

/// The allocation granularity of `device`: every [`DeviceMemory`] size is a multiple of it.
///
/// # Errors
/// [`CudaError::InvalidDevice`] or a driver error.
pub fn granularity(driver: &Driver, device: i32) -> Result<usize, CudaError> {
    driver.check_device(device)?;
    driver.backend.mem_granularity(device)
}

/// `cuMemGetInfo`: (free, total) bytes of `device`, for every process on it.
///
/// # Errors
/// [`CudaError::InvalidDevice`] or a driver error.
pub fn memory_info(driver: &Driver, device: i32) -> Result<(usize, usize), CudaError> {
    driver.check_device(device)?;
    driver.backend.mem_info(device)
}

/// Whether `accessor` can map memory that lives on `owner` (always for the same device).
///
/// # Errors
/// [`CudaError::InvalidDevice`] or a driver error.
pub fn can_access_peer(driver: &Driver, accessor: i32, owner: i32) -> Result<bool, CudaError> {
    driver.check_device(accessor)?;
    driver.check_device(owner)?;
    driver.backend.can_access_peer(accessor, owner)
}

/// One physical allocation of device memory, created here or imported from another process.
/// Dropping it releases this process's handle; mappings made from it stay valid.
pub struct DeviceMemory {
    backend: Arc<dyn Backend>,
    device: i32,
    size: usize,
    raw: RawMem,
    /// The exported descriptor, made on the first `export_fd` (or the imported one).
    exported: Mutex<Option<OwnedFd>>,
    imported: bool,
}

impl fmt::Debug for DeviceMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceMemory")
            .field("device", &self.device)
            .field("size", &self.size)
            .field("imported", &self.imported)
            .finish()
    }
}

fn round_up(size: usize, granularity: usize) -> Option<usize> {
    size.checked_next_multiple_of(granularity.max(1))
}

impl DeviceMemory {
    /// Allocates at least `size` bytes on `device` (rounded up to [`granularity`]).
    ///
    /// # Errors
    /// [`CudaError::InvalidArgument`] for a zero size, [`CudaError::InvalidDevice`], or a driver
    /// error (`CUDA_ERROR_OUT_OF_MEMORY` when the device is full).
    pub fn create(driver: &Driver, device: i32, size: usize) -> Result<DeviceMemory, CudaError> {
        driver.check_device(device)?;
        let g = driver.backend.mem_granularity(device)?;
        let size =
            round_up(size, g)
                .filter(|s| *s > 0)
                .ok_or_else(|| CudaError::InvalidArgument {
                    call: "cuMemCreate",
                    reason: format!("cannot allocate {size} bytes (granularity {g})"),
                })?;
        let raw = driver.backend.mem_create(device, size)?;
        Ok(DeviceMemory {
            backend: driver.backend.clone(),
            device,
            size,
            raw,
            exported: Mutex::new(None),
            imported: false,
        })
    }

    /// Imports memory another process exported. `fd` is not consumed (the caller keeps or
    /// closes it); `device` is the device the memory lives on, as this process numbers devices;
    /// `size` is the exporter's [`DeviceMemory::size`].
    ///
    /// # Errors
    /// [`CudaError::InvalidArgument`] for a size that is zero or not a multiple of the
    /// granularity, [`CudaError::InvalidDevice`], or a driver error for a descriptor that is not
    /// an exported allocation.
    pub fn import(
        driver: &Driver,
        fd: BorrowedFd<'_>,
        device: i32,
        size: usize,
    ) -> Result<DeviceMemory, CudaError> {
        driver.check_device(device)?;
        let g = driver.backend.mem_granularity(device)?;
        if size == 0 || !size.is_multiple_of(g) {
            return Err(CudaError::InvalidArgument {
                call: "cuMemImportFromShareableHandle",
                reason: format!(
                    "size {size} is not a positive multiple of the granularity ({g} bytes)"
                ),
            });
        }
        let kept = fd
            .try_clone_to_owned()
            .map_err(|e| CudaError::InvalidArgument {
                call: "cuMemImportFromShareableHandle",
                reason: format!("cannot duplicate the descriptor: {e}"),
            })?;
        let raw = driver.backend.mem_import(device, fd, size)?;
        Ok(DeviceMemory {
            backend: driver.backend.clone(),
            device,
            size,
            raw,
            exported: Mutex::new(Some(kept)),
            imported: true,
        })
    }

    /// A descriptor for another process: exported on the first call, a duplicate after. Send
    /// it (`SCM_RIGHTS`) and drop it.
    ///
    /// # Errors
    /// A driver error, or the process's descriptor limit.
    pub fn export_fd(&self) -> Result<OwnedFd, CudaError> {
        let mut slot = self.exported.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(self.backend.mem_export(self.device, self.raw)?);
        }
        let fd = slot.as_ref().ok_or(CudaError::InvalidArgument {
            call: "cuMemExportToShareableHandle",
            reason: "no descriptor".into(),
        })?;
        fd.try_clone().map_err(|e| CudaError::InvalidArgument {
            call: "cuMemExportToShareableHandle",
            reason: format!("cannot duplicate the exported descriptor: {e}"),
        })
    }

    /// Size in bytes (a multiple of the granularity).
    pub fn size(&self) -> usize {
        self.size
    }

    /// The device the memory lives on.
    pub fn device(&self) -> i32 {
        self.device
    }

    /// Whether it was imported from another process.
    pub fn is_imported(&self) -> bool {
        self.imported
    }

    /// Maps the whole allocation for `on_device` with `access`. A device other than
    /// [`DeviceMemory::device`] must be its peer.
    ///
    /// # Errors
    /// [`CudaError::InvalidDevice`], [`CudaError::NoPeerAccess`], or a driver error.
    pub fn map(&self, on_device: i32, access: DeviceAccess) -> Result<DeviceMapping, CudaError> {
        let count = self.backend.device_count();
        if on_device < 0 || on_device as usize >= count {
            return Err(CudaError::InvalidDevice {
                device: on_device,
                count,
            });
        }
        if on_device != self.device && !self.backend.can_access_peer(on_device, self.device)? {
            return Err(CudaError::NoPeerAccess {
                owner: self.device,
                accessor: on_device,
            });
        }
        let mapped = self
            .backend
            .mem_map(self.raw, self.size, on_device, access)?;
        Ok(DeviceMapping {
            backend: self.backend.clone(),
            owner: self.device,
            device: on_device,
            ptr: mapped.ptr,
            size: self.size,
            access,
            enforced: access == DeviceAccess::ReadWrite || mapped.enforced,
        })
    }
}

impl Drop for DeviceMemory {
    fn drop(&mut self) {
        if let Err(e) = self.backend.mem_release(self.device, self.raw) {
            tracing::warn!(error = %e, "failed to release a device memory handle");
        }
    }
}

/// A mapping of a [`DeviceMemory`] into one device's address space. It keeps the physical
/// memory alive by itself (CUDA's rule), so it may outlive the [`DeviceMemory`] it came from.
/// Dropping it unmaps the memory and frees the address range: work still queued on the GPU
/// that uses the pointer must be finished (or ordered before the drop by the caller) first.
pub struct DeviceMapping {
    backend: Arc<dyn Backend>,
    owner: i32,
    device: i32,
    ptr: u64,
    size: usize,
    access: DeviceAccess,
    enforced: bool,
}

impl fmt::Debug for DeviceMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceMapping")
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("size", &self.size)
            .field("owner", &self.owner)
            .field("device", &self.device)
            .field("access", &self.access)
            .field("read_only_enforced", &self.enforced)
            .finish()
    }
}

impl DeviceMapping {
    /// The device address (`CUdeviceptr`) of the first byte.
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The device that may access the mapping (where kernels using the pointer run).
    pub fn device(&self) -> i32 {
        self.device
    }

    /// The device the memory lives on.
    pub fn owner_device(&self) -> i32 {
        self.owner
    }

    /// The access asked for.
    pub fn access(&self) -> DeviceAccess {
        self.access
    }

    /// Whether the hardware enforces the access: `true` for read-write, and for read-only when
    /// the driver accepted `CU_MEM_ACCESS_FLAGS_PROT_READ` (a kernel's write then faults).
    pub fn read_only_enforced(&self) -> bool {
        self.enforced
    }

    fn check(
        &self,
        stream: &Stream,
        offset: usize,
        len: usize,
        write: bool,
    ) -> Result<Target, CudaError> {
        if write && self.access == DeviceAccess::ReadOnly {
            return Err(CudaError::ReadOnly);
        }
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(CudaError::OutOfRange {
                offset,
                len,
                size: self.size,
            });
        }
        if stream.device() != self.device {
            return Err(CudaError::WrongStream {
                device: self.device,
                stream_device: stream.device(),
            });
        }
        Ok(stream.target())
    }

    /// Enqueues on `stream` a fill of `len` bytes at `offset` with `value` (`cuMemsetD8Async`).
    ///
    /// # Errors
    /// [`CudaError::ReadOnly`], [`CudaError::OutOfRange`], [`CudaError::WrongStream`] (the
    /// stream must be on [`DeviceMapping::device`]), or a driver error.
    pub fn memset_async(
        &self,
        stream: &Stream,
        offset: usize,
        len: usize,
        value: u8,
    ) -> Result<(), CudaError> {
        let target = self.check(stream, offset, len, true)?;
        self.backend
            .memset_async(target, self.ptr + offset as u64, value, len)
    }

    /// Enqueues on `stream` a copy of `len` host bytes at `src` to `offset` of the mapping
    /// (`cuMemcpyHtoDAsync`). At pinned speed when `src` is pinned or registered
    /// ([`register_host`]); pageable memory is staged by the driver.
    ///
    /// # Safety
    /// `src..src+len` must stay readable and unchanged until the stream's work queued so far is
    /// done (synchronise the stream or wait on an event recorded after this call).
    ///
    /// # Errors
    /// As [`DeviceMapping::memset_async`].
    pub unsafe fn copy_from_host_async(
        &self,
        stream: &Stream,
        offset: usize,
        src: *const u8,
        len: usize,
    ) -> Result<(), CudaError> {
        let target = self.check(stream, offset, len, true)?;
        // SAFETY: the range lies inside the mapping (checked); the caller keeps `src` valid.
        unsafe {
            self.backend
                .copy_htod_async(target, self.ptr + offset as u64, src, len)
        }
    }

    /// Enqueues on `stream` a copy of `src`'s bytes to `offset` of the mapping, keeping `src`
    /// alive until the copy is done ([`Stream::keep_alive`]): the safe form of
    /// [`DeviceMapping::copy_from_host_async`] for host memory the caller can hand over (a
    /// `Vec`, an `Arc<[u8]>`, or an owner of a shared-memory mapping).
    ///
    /// # Errors
    /// As [`DeviceMapping::memset_async`]; `src` is dropped (after the stream is drained, if the
    /// copy was already queued).
    pub fn copy_from_host_owned_async<T: AsRef<[u8]> + Send + 'static>(
        &self,
        stream: &Stream,
        offset: usize,
        src: T,
    ) -> Result<(), CudaError> {
        // Boxed first: the bytes `as_ref` points at may live inside `T` itself (an array), and
        // must not move after their address is taken.
        let boxed = Box::new(src);
        let bytes: &[u8] = (*boxed).as_ref();
        let (ptr, len) = (bytes.as_ptr(), bytes.len());
        // SAFETY: `boxed` owns the bytes and is neither moved out of its allocation nor touched
        // until `keep_alive` drops it, after the stream's work up to here is done.
        unsafe { self.copy_from_host_async(stream, offset, ptr, len) }?;
        stream.keep_alive(boxed)
    }

    /// Enqueues on `stream` a copy of `len` bytes at `offset` of the mapping to host memory at
    /// `dst` (`cuMemcpyDtoHAsync`). Read-only mappings may be copied from.
    ///
    /// # Safety
    /// `dst..dst+len` must stay writable, and must not be read or written by anyone else, until
    /// the stream's work queued so far is done.
    ///
    /// # Errors
    /// [`CudaError::OutOfRange`], [`CudaError::WrongStream`], or a driver error.
    pub unsafe fn copy_to_host_async(
        &self,
        stream: &Stream,
        offset: usize,
        dst: *mut u8,
        len: usize,
    ) -> Result<(), CudaError> {
        let target = self.check(stream, offset, len, false)?;
        // SAFETY: the range lies inside the mapping (checked); the caller keeps `dst` valid.
        unsafe {
            self.backend
                .copy_dtoh_async(target, dst, self.ptr + offset as u64, len)
        }
    }
}

impl Drop for DeviceMapping {
    fn drop(&mut self) {
        if let Err(e) = self.backend.mem_unmap(self.device, self.ptr, self.size) {
            tracing::warn!(error = %e, "failed to unmap device memory");
        }
    }
}

/// The process's host registrations, by start address: (length, read-only).
#[derive(Debug, Default)]
pub(crate) struct HostRegistry {
    ranges: Mutex<std::collections::BTreeMap<usize, (usize, bool)>>,
}

/// Registers (pins) the host range `ptr..ptr+len` with CUDA for every device, once per process:
/// a second call with the same range is a cache hit (`Ok(false)`). `read_only` must be `true`
/// for memory mapped without write permission (`CU_MEMHOSTREGISTER_READ_ONLY`); such memory can
/// be copied to a device, not from one.
///
/// Registration costs about 40 ms per GiB once and makes copies run at pinned speed.
///
/// # Safety
/// The range must be mapped, and must stay mapped until [`unregister_host`] is called with the
/// same range: the owner of the mapping calls it before unmapping (a registration that outlives
/// its mapping pins pages that no longer belong to it).
///
/// # Errors
/// [`CudaError::InvalidArgument`] for an empty range or one overlapping a different registered
/// range, or a driver error.
pub unsafe fn register_host(
    driver: &Driver,
    ptr: *const u8,
    len: usize,
    read_only: bool,
) -> Result<bool, CudaError> {
    let start = ptr as usize;
    if len == 0 || start.checked_add(len).is_none() {
        return Err(CudaError::InvalidArgument {
            call: "cuMemHostRegister",
            reason: format!("empty or wrapping range {start:#x}+{len}"),
        });
    }
    let mut ranges = driver.host.ranges.lock().unwrap_or_else(|e| e.into_inner());
    // A read-write registration also serves read-only use; not the other way round.
    if let Some((l, ro)) = ranges.get(&start)
        && *l == len
        && (!*ro || read_only)
    {
        return Ok(false);
    }
    let overlapping = ranges
        .range(..start + len)
        .next_back()
        .is_some_and(|(s, (l, _))| s + l > start);
    if overlapping {
        return Err(CudaError::InvalidArgument {
            call: "cuMemHostRegister",
            reason: format!(
                "{start:#x}+{len} overlaps a range registered differently (unregister it first)"
            ),
        });
    }
    driver.backend.host_register(start, len, read_only)?;
    ranges.insert(start, (len, read_only));
    Ok(true)
}

/// Unregisters a range [`register_host`] registered (`cuMemHostUnregister`): the hook the owner
/// of a host mapping calls before unmapping it. `Ok(false)` when the range was not registered
/// (nothing to do), so it can be called on every unmap. Copies still queued on a stream that
/// read or write the range must be finished first (synchronise the stream or wait on an event
/// recorded after them): this function does not wait for them.
///
/// # Errors
/// A driver error.
pub fn unregister_host(driver: &Driver, ptr: *const u8, len: usize) -> Result<bool, CudaError> {
    let start = ptr as usize;
    let mut ranges = driver.host.ranges.lock().unwrap_or_else(|e| e.into_inner());
    match ranges.get(&start) {
        Some((l, _)) if *l == len => {}
        _ => return Ok(false),
    }
    ranges.remove(&start);
    driver.backend.host_unregister(start)?;
    Ok(true)
}

/// Whether exactly `ptr..ptr+len` is registered in this process.
pub fn is_host_registered(driver: &Driver, ptr: *const u8, len: usize) -> bool {
    driver
        .host
        .ranges
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(ptr as usize))
        .is_some_and(|(l, _)| *l == len)
}
