//! Mappings of segments. This is the crate's only module with `unsafe` code.
//!
//! Shared memory may be written by other processes at any time, so no Rust reference
//! (`&[u8]`) to it is ever formed here without the caller promising, in an `unsafe` call,
//! that nobody writes while it lives. Bytes move in and out through raw-pointer copies.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::{Advice, MmapOptions, MmapRaw};

use crate::{Segment, SegmentError};

/// How a mapping may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Mapped `PROT_READ`: a write through it faults.
    ReadOnly,
    /// Mapped `PROT_READ | PROT_WRITE`.
    ReadWrite,
}

/// Whether to fault every page in when mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Prefault {
    /// Pages are faulted in on first touch (mapping costs microseconds at any size).
    #[default]
    Lazy,
    /// Every page is faulted in now (`MADV_POPULATE_READ` / `_WRITE`): slower to map,
    /// no page faults afterwards.
    Populate,
}

/// A mapping of a whole segment into this process.
///
/// The memory stays mapped until the `Mapping` is dropped. It is `Send + Sync`; callers
/// that share it between threads coordinate writes themselves, as with any shared memory.
#[derive(Debug)]
pub struct Mapping {
    raw: MmapRaw,
    // The protection now: `protect` changes it through a shared reference, because views
    // handed out (to C, to numpy) keep pointing at the same pages while it changes.
    writable: AtomicBool,
    // Mapped from a writable descriptor: only then can it become writable again.
    writable_origin: bool,
}

impl Mapping {
    /// Maps all of `segment` with the given access.
    ///
    /// Read-write access needs a writable descriptor ([`Segment::is_writable`]).
    pub fn new(
        segment: &Segment,
        access: Access,
        prefault: Prefault,
    ) -> Result<Self, SegmentError> {
        if access == Access::ReadWrite && !segment.is_writable() {
            return Err(SegmentError::ReadOnlyDescriptor);
        }
        let fd = segment.as_fd();
        let mut options = MmapOptions::new();
        options.len(segment.len());
        let raw = match access {
            Access::ReadOnly => options.map_raw_read_only(&fd),
            Access::ReadWrite => options.map_raw(&fd),
        }
        .map_err(|e| SegmentError::Map {
            size: segment.len(),
            source: e,
        })?;
        if prefault == Prefault::Populate {
            let advice = match access {
                Access::ReadOnly => Advice::PopulateRead,
                Access::ReadWrite => Advice::PopulateWrite,
            };
            raw.advise(advice).map_err(|e| SegmentError::Map {
                size: segment.len(),
                source: e,
            })?;
        }
        Ok(Self {
            raw,
            writable: AtomicBool::new(access == Access::ReadWrite),
            writable_origin: access == Access::ReadWrite,
        })
    }

    /// Changes the protection of the whole mapping in place (`mprotect`): the address
    /// stays, so pointers and views taken before keep working for reads, and a write
    /// through them after `protect(Access::ReadOnly)` faults. A mapping made read-only
    /// can be made writable again only if it was mapped read-write.
    pub fn protect(&self, access: Access) -> Result<(), SegmentError> {
        if access == Access::ReadWrite && !self.writable_origin {
            return Err(SegmentError::ReadOnlyDescriptor);
        }
        let flags = match access {
            Access::ReadOnly => rustix::mm::MprotectFlags::READ,
            Access::ReadWrite => rustix::mm::MprotectFlags::READ | rustix::mm::MprotectFlags::WRITE,
        };
        // Cleared before the pages change, so that no new write pointer is handed out
        // while they become read-only.
        if access == Access::ReadOnly {
            self.writable.store(false, Ordering::SeqCst);
        }
        // SAFETY: the range is exactly this mapping, which stays mapped while `self` lives;
        // changing its protection invalidates no Rust reference (none is formed over
        // shared memory except through the `unsafe` slice accessors, whose callers
        // promise no concurrent writer, and a read-only mapping has none).
        unsafe { rustix::mm::mprotect(self.raw.as_mut_ptr().cast(), self.len(), flags) }.map_err(
            |e| SegmentError::Map {
                size: self.len(),
                source: e.into(),
            },
        )?;
        if access == Access::ReadWrite {
            self.writable.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether the mapping is empty (never true for a mapped segment).
    pub fn is_empty(&self) -> bool {
        self.raw.len() == 0
    }

    /// The access it has now (as mapped, or as last [`Mapping::protect`]ed).
    pub fn access(&self) -> Access {
        if self.writable.load(Ordering::SeqCst) {
            Access::ReadWrite
        } else {
            Access::ReadOnly
        }
    }

    /// Start of the mapped memory. Reading through it is the caller's business: other
    /// processes may be writing.
    pub fn as_ptr(&self) -> *const u8 {
        self.raw.as_ptr()
    }

    /// Start of the mapped memory for writing, or an error for a read-only mapping.
    pub fn as_mut_ptr(&self) -> Result<*mut u8, SegmentError> {
        match self.access() {
            Access::ReadWrite => Ok(self.raw.as_mut_ptr()),
            Access::ReadOnly => Err(SegmentError::ReadOnlyMapping),
        }
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<(), SegmentError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(SegmentError::OutOfBounds {
                offset,
                len,
                size: self.len(),
            }),
        }
    }

    /// Copies bytes out of the mapping, starting at `offset`.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<(), SegmentError> {
        self.check_range(offset, out.len())?;
        // SAFETY: the range is inside the mapping (checked above), which stays mapped while
        // `self` lives; `out` is a distinct local buffer, so the two cannot overlap. A
        // concurrent writer in another process can make the copy torn, never unsound:
        // no reference to the shared bytes is formed.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(offset), out.as_mut_ptr(), out.len());
        }
        Ok(())
    }

    /// Copies bytes into the mapping, starting at `offset`.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), SegmentError> {
        let dst = self.as_mut_ptr()?;
        self.check_range(offset, data.len())?;
        // SAFETY: as in `read_at`; the mapping is writable (checked by `as_mut_ptr`).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), dst.add(offset), data.len());
        }
        Ok(())
    }

    /// Sets every byte to zero (used when a recycled segment is handed out again).
    pub fn zero(&self) -> Result<(), SegmentError> {
        let dst = self.as_mut_ptr()?;
        // SAFETY: the whole mapping is writable and mapped while `self` lives.
        unsafe { std::ptr::write_bytes(dst, 0, self.len()) };
        Ok(())
    }

    /// The mapped bytes as a slice.
    ///
    /// # Safety
    /// Nobody, in this or any other process, may write to the segment while the slice
    /// lives. Typical callers: a reader of a publication whose producer has finished.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is valid for `len` bytes while `self` lives; the caller
        // promises the absence of writers, which is what `&[u8]` requires.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len()) }
    }

    /// The mapped bytes as a mutable slice.
    ///
    /// # Safety
    /// Nobody else, in this or any other process, may read or write the segment while the
    /// slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> Result<&mut [u8], SegmentError> {
        let ptr = self.as_mut_ptr()?;
        // SAFETY: writable mapping of `len` bytes; exclusivity is the caller's promise.
        Ok(unsafe { std::slice::from_raw_parts_mut(ptr, self.len()) })
    }
}
