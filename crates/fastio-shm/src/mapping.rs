//! Mappings of segments. This is the crate's only module with `unsafe` code.
//!
//! Shared memory may be written by other processes at any time, so no Rust reference
//! (`&[u8]`) to it is ever formed here without the caller promising, in an `unsafe` call,
//! that nobody writes while it lives. Bytes move in and out through raw-pointer copies.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use memmap2::{Advice, MmapOptions};
use rustix::mm::MprotectFlags;
use rustix::mm::{MapFlags, ProtFlags};

use crate::{Segment, SegmentError, SegmentIdentity};

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
    /// Every page is mapped now (`MAP_POPULATE`): slower to map, no page faults
    /// afterwards. Measured for a writer of 256 MiB of 4 KiB pages: 57 ms to map and fill
    /// against 122 ms lazily (`MADV_POPULATE_WRITE`: 108 ms).
    Populate,
}

/// A mapping of a whole segment into this process.
///
/// The memory stays mapped until the `Mapping` is dropped. It is `Send + Sync`; callers
/// that share it between threads coordinate writes themselves, as with any shared memory.
///
/// A mapping can be **parked** ([`Mapping::park`]): `PROT_NONE`, so any access through it
/// faults, while the kernel keeps its page-table entries; [`Mapping::unpark`] makes it
/// usable again without a single page fault. That is how a process keeps the mappings of
/// segments it may be handed again.
#[derive(Debug)]
pub struct Mapping {
    raw: Region,
    // `None` while parked.
    access: Option<Access>,
    // Mapped from a writable descriptor: `PROT_WRITE` can be granted later by `mprotect`.
    may_write: bool,
    identity: SegmentIdentity,
    hugetlb: bool,
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
        let prot = match access {
            Access::ReadOnly => ProtFlags::READ,
            Access::ReadWrite => ProtFlags::READ | ProtFlags::WRITE,
        };
        let raw = Region::map(segment, prot, prefault == Prefault::Populate).map_err(|e| {
            SegmentError::Map {
                size: segment.len(),
                cause: e.into(),
            }
        })?;
        Ok(Self {
            raw,
            access: Some(access),
            may_write: segment.is_writable(),
            identity: segment.identity(),
            hugetlb: segment.is_hugetlb(),
        })
    }

    /// The identity of the mapped segment.
    pub fn identity(&self) -> SegmentIdentity {
        self.identity
    }

    /// Whether the mapped segment's pages come from the hugetlb pool
    /// ([`Segment::is_hugetlb`]).
    pub fn is_hugetlb(&self) -> bool {
        self.hugetlb
    }

    /// Whether the mapping was made from a writable descriptor, so that it can be made
    /// writable later ([`Mapping::unpark`] with [`Access::ReadWrite`]).
    pub fn may_write(&self) -> bool {
        self.may_write
    }

    /// Whether it is parked (inaccessible).
    pub fn is_parked(&self) -> bool {
        self.access.is_none()
    }

    /// Makes the mapping inaccessible (`PROT_NONE`): a read or write through any pointer
    /// into it faults. The page-table entries stay, so [`Mapping::unpark`] costs no fault.
    pub fn park(&mut self) -> Result<(), SegmentError> {
        self.protect(MprotectFlags::empty())?;
        self.access = None;
        Ok(())
    }

    /// Makes the mapping usable with `access` (also to change the access of a live
    /// mapping, e.g. to make an output read-only once it is written). Read-write needs a
    /// mapping made from a writable descriptor ([`Mapping::may_write`]).
    pub fn unpark(&mut self, access: Access) -> Result<(), SegmentError> {
        let flags = match access {
            Access::ReadOnly => MprotectFlags::READ,
            Access::ReadWrite if self.may_write => MprotectFlags::READ | MprotectFlags::WRITE,
            Access::ReadWrite => return Err(SegmentError::ReadOnlyDescriptor),
        };
        self.protect(flags)?;
        self.access = Some(access);
        Ok(())
    }

    fn protect(&self, flags: MprotectFlags) -> Result<(), SegmentError> {
        // SAFETY: the range is exactly this mapping, which `self` owns; no Rust reference
        // into it outlives a `&self` borrow (`as_slice` borrows `self`), and `&mut self`
        // callers (`park`, `unpark`) exclude those. Pointers handed out earlier may fault
        // afterwards, which is the point of parking.
        unsafe { rustix::mm::mprotect(self.raw.as_mut_ptr().cast(), self.len(), flags) }.map_err(
            |e| SegmentError::Map {
                size: self.len(),
                cause: e.into(),
            },
        )
    }

    /// Asks the kernel for transparent huge pages on this range (`MADV_HUGEPAGE`): pages
    /// populated afterwards are huge where the shmem THP mode is `advise` or wider.
    pub fn advise_huge_pages(&self) -> Result<(), SegmentError> {
        self.raw
            .advise(rustix::mm::Advice::LinuxHugepage)
            .map_err(|e| SegmentError::Map {
                size: self.len(),
                cause: e.into(),
            })
    }

    /// Populates every page now (`MADV_POPULATE_READ` or `_WRITE` as the access allows).
    pub fn populate(&self) -> Result<(), SegmentError> {
        self.populate_range(0, self.len())
    }

    /// Populates the pages of `offset..offset + len`.
    pub fn populate_range(&self, offset: usize, len: usize) -> Result<(), SegmentError> {
        self.check_range(offset, len)?;
        let advice = match self.access {
            Some(Access::ReadWrite) => rustix::mm::Advice::LinuxPopulateWrite,
            _ => rustix::mm::Advice::LinuxPopulateRead,
        };
        // SAFETY: the range lies inside this mapping (checked above); populating changes
        // no byte.
        unsafe { rustix::mm::madvise(self.raw.as_mut_ptr().add(offset).cast(), len, advice) }
            .map_err(|e| SegmentError::Map {
                size: self.len(),
                cause: e.into(),
            })
    }

    /// Turns the populated pages of `offset..offset + len` into huge pages in the page
    /// cache (`MADV_COLLAPSE`, Linux 6.1+), whatever the shmem THP mode but `deny`. Slow
    /// (seconds per GiB): never on a caller's critical path. `EAGAIN` means a part could
    /// not be collapsed now; `EINVAL` that the kernel cannot (too old, or range not
    /// populated).
    pub fn collapse(&self, offset: usize, len: usize) -> Result<(), rustix::io::Errno> {
        self.check_range(offset, len)
            .map_err(|_| rustix::io::Errno::INVAL)?;
        // SAFETY: the range lies inside this mapping (checked above); MADV_COLLAPSE
        // replaces the pages backing it by huge pages with the same contents and changes
        // no byte anyone can observe.
        let rc = unsafe {
            libc::madvise(
                self.raw.as_mut_ptr().add(offset).cast(),
                len,
                libc::MADV_COLLAPSE,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(
                rustix::io::Errno::from_io_error(&std::io::Error::last_os_error())
                    .unwrap_or(rustix::io::Errno::INVAL),
            )
        }
    }

    /// Bytes of this mapping backed by huge pages now, from `/proc/self/smaps`.
    pub fn huge_mapped_bytes(&self) -> u64 {
        crate::huge_mapped_bytes(self.raw.as_ptr() as usize).unwrap_or(0)
    }

    /// Bytes of this mapping with page-table entries now (`Rss` in `/proc/self/smaps`).
    pub fn resident_bytes(&self) -> u64 {
        crate::resident_bytes(self.raw.as_ptr() as usize).unwrap_or(0)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether the mapping is empty (never true for a mapped segment).
    pub fn is_empty(&self) -> bool {
        self.raw.len() == 0
    }

    /// The access it has now, `None` while parked.
    pub fn access(&self) -> Option<Access> {
        self.access
    }

    /// Start of the mapped memory. Reading through it is the caller's business: other
    /// processes may be writing.
    pub fn as_ptr(&self) -> *const u8 {
        self.raw.as_ptr()
    }

    /// Start of the mapped memory for writing, or an error for a read-only mapping.
    pub fn as_mut_ptr(&self) -> Result<*mut u8, SegmentError> {
        match self.access {
            Some(Access::ReadWrite) => Ok(self.raw.as_mut_ptr()),
            Some(Access::ReadOnly) => Err(SegmentError::ReadOnlyMapping),
            None => Err(SegmentError::Parked),
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
        if self.is_parked() {
            return Err(SegmentError::Parked);
        }
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
        debug_assert!(!self.is_parked(), "a parked mapping has no readable bytes");
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

/// An `mmap`ed range, unmapped on drop. Segments of a huge page or more are mapped at an
/// address aligned to the huge page size, so that huge pages of the page cache can be
/// mapped whole (PMD-mapped) and `MADV_COLLAPSE` can work on them; the kernel does not
/// align shmem mappings by itself under shmem THP `never`.
#[derive(Debug)]
struct Region {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: a Region is an address range that this process owns until drop; it carries no
// thread-bound state.
unsafe impl Send for Region {}
// SAFETY: as above; concurrent access to the bytes goes through raw pointers only.
unsafe impl Sync for Region {}

impl Region {
    fn map(segment: &Segment, prot: ProtFlags, populate: bool) -> rustix::io::Result<Self> {
        Self::map_fd(segment.as_fd(), segment.len(), prot, populate)
    }

    fn map_fd(
        fd: std::os::fd::BorrowedFd<'_>,
        len: usize,
        prot: ProtFlags,
        populate: bool,
    ) -> rustix::io::Result<Self> {
        let huge = crate::huge_page_size() as usize;
        let mut flags = MapFlags::SHARED;
        if populate {
            flags |= MapFlags::POPULATE;
        }
        if len < huge {
            // SAFETY: a new mapping at an address the kernel chooses overlaps nothing.
            let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) }?;
            return Ok(Self::from_raw(ptr, len));
        }
        // Reserve room for an aligned start, map over it, then give back the slack.
        let span = len + huge;
        // SAFETY: a new anonymous reservation at an address the kernel chooses.
        let reserved = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                span,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }? as usize;
        let start = reserved.next_multiple_of(huge);
        // SAFETY: [start, start + len) lies inside the reservation made above, which this
        // function owns; MAP_FIXED replaces only that.
        let mapped =
            unsafe { rustix::mm::mmap(start as *mut _, len, prot, flags | MapFlags::FIXED, fd, 0) };
        // SAFETY: the slack before and after the mapping is the rest of our reservation.
        unsafe {
            if start > reserved {
                let _ = rustix::mm::munmap(reserved as *mut _, start - reserved);
            }
            let end = start + len;
            if reserved + span > end {
                let _ = rustix::mm::munmap(end as *mut _, reserved + span - end);
            }
        }
        match mapped {
            Ok(ptr) => Ok(Self::from_raw(ptr, len)),
            Err(e) => {
                // SAFETY: the middle of the reservation is still ours.
                let _ = unsafe { rustix::mm::munmap(start as *mut _, len) };
                Err(e)
            }
        }
    }

    fn from_raw(ptr: *mut std::ffi::c_void, len: usize) -> Self {
        Self {
            ptr: std::ptr::NonNull::new(ptr.cast()).expect("mmap never returns null"),
            len,
        }
    }

    fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn len(&self) -> usize {
        self.len
    }

    fn advise(&self, advice: rustix::mm::Advice) -> rustix::io::Result<()> {
        // SAFETY: the range is exactly this mapping; the advice used here (huge pages,
        // populate) changes no byte.
        unsafe { rustix::mm::madvise(self.ptr.as_ptr().cast(), self.len, advice) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by `Region::map` and is unmapped once, here.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Reserves `len` bytes of the memfd `fd` through a temporary mapping that asks for huge
/// pages and populates them in steps (`MADV_HUGEPAGE`, then `MADV_POPULATE_WRITE`),
/// calling `check(done)` before each step after the first. A failure to populate is an
/// out-of-memory error now, never SIGBUS later.
pub(crate) fn reserve_huge(
    fd: &OwnedFd,
    len: usize,
    mut check: impl FnMut(usize) -> Result<(), SegmentError>,
) -> Result<(), SegmentError> {
    let map_error = |e: std::io::Error| SegmentError::Map {
        size: len,
        cause: e,
    };
    let raw = MmapOptions::new()
        .len(len)
        .map_raw(&fd.as_fd())
        .map_err(map_error)?;
    raw.advise(Advice::HugePage).map_err(map_error)?;
    let step = crate::RESERVE_STEP as usize;
    let mut done = 0;
    while done < len {
        if done > 0 {
            check(done)?;
        }
        let n = step.min(len - done);
        raw.advise_range(Advice::PopulateWrite, done, n)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOMEM) | Some(libc::EFAULT) | Some(libc::ENOSPC) => {
                    SegmentError::OutOfMemory {
                        size: len,
                        available: crate::available_memory(),
                    }
                }
                _ => map_error(e),
            })?;
        done += n;
    }
    Ok(())
}

/// Reserves `len` bytes of the fresh memfd `fd` as huge pages where shmem THP faults give
/// none (`never`): through a mapping aligned to the huge page size, one small page is
/// populated in each huge page's range and `MADV_COLLAPSE` (Linux 6.1+) turns the range
/// into huge pages, the holes zero. Goes in steps of [`crate::RESERVE_STEP`], calling
/// `check(done)` before each step after the first.
///
/// Returns how many bytes from the start are reserved as huge pages: a multiple of the
/// huge page size, possibly 0. Only as many huge pages as the kernel holds free are taken
/// ([`crate::free_huge_page_bytes`]): compacting memory for more would cost far more than
/// small pages. Collapsing stops at the first step that fails (no huge page free after
/// all, a kernel without `MADV_COLLAPSE`): the caller reserves the rest another way.
/// Measured for 1 GiB on a 2-core VM under shmem THP `never`: 140-260 ms, against
/// 360-890 ms for `fallocate` of small pages, which the kernel then still zeroes at first
/// touch; the mappings that follow fault 512 times per GiB instead of 262,144.
///
/// With `only_free` false (the caller asked for this way explicitly) the free huge pages do
/// not bound it: the kernel compacts memory as needed.
///
/// With `only_free`, the cost of each step is watched too ([`after_step`]): free huge pages
/// are not all equal. On a VM whose balloon reports free memory to the host (virtio-balloon
/// free page reporting, in blocks of the huge page size), a free huge page handed back to
/// the host costs one host fault per 4 KiB when it is touched again: measured 4-10 ms per
/// 2 MiB (2-3.4 s per GiB), against 0.2-0.5 ms for one freed moments ago. The kernel hands
/// out the blocks not yet reported first, so once a step costs more than
/// [`MAX_HUGE_PAGE_COST`] per huge page, the rest would too: the rest is then made of small
/// pages if free blocks smaller than a huge page (never reported) can hold it (measured
/// 0.4-0.45 s per GiB to allocate and zero, about 1 s over their whole life, mapping
/// included); otherwise small pages would be cut from the same reported blocks and cost the
/// same host faults, so huge pages go on.
///
/// Only `from..len` is reserved (`from` a multiple of the huge page size; what lies before
/// it is left alone): the result counts from `from`. With `weigh` false the cost of steps
/// is not watched (for memory made off every caller's critical path).
pub(crate) fn reserve_collapsed(
    fd: &OwnedFd,
    from: usize,
    len: usize,
    (only_free, weigh): (bool, bool),
    mut check: impl FnMut(usize) -> Result<(), SegmentError>,
) -> Result<usize, SegmentError> {
    let huge = crate::huge_page_size() as usize;
    let mut whole = len / huge * huge;
    if only_free {
        // Only what free huge pages can hold: compacting memory for more costs seconds per
        // GiB (measured: 32 MiB in 130-190 ms), far more than small pages.
        let free = crate::free_huge_page_bytes().unwrap_or(0) as usize;
        whole = whole.min(from + free.saturating_sub(KEEP_FREE) / huge * huge);
    }
    if whole <= from
        || !from.is_multiple_of(huge)
        || COLLAPSE_UNAVAILABLE.load(std::sync::atomic::Ordering::Relaxed)
    {
        return Ok(0);
    }
    let Ok(raw) = Region::map_fd(fd.as_fd(), len, ProtFlags::READ | ProtFlags::WRITE, false) else {
        return Ok(0);
    };
    // Small steps where their cost decides whether to go on: a slow step is not wasted
    // (its huge pages are kept), but it is paid.
    let step = if only_free {
        PROBE_STEP
    } else {
        crate::RESERVE_STEP as usize
    };
    let mut done = from;
    while done < whole {
        if done > from {
            check(done)?;
        }
        let n = step.min(whole - done);
        let started = thread_cpu_time();
        let mut populated = true;
        for chunk in (done..done + n).step_by(huge) {
            // SAFETY: one page inside the mapping made above, which this function owns;
            // populating a fresh memfd's page writes no byte (it reads as zero).
            let populate = unsafe {
                rustix::mm::madvise(
                    raw.as_mut_ptr().add(chunk).cast(),
                    4096,
                    rustix::mm::Advice::LinuxPopulateWrite,
                )
            };
            if populate.is_err() {
                populated = false;
                break;
            }
        }
        if !populated {
            break;
        }
        // SAFETY: the range lies inside the mapping made above; MADV_COLLAPSE replaces the
        // pages backing it by huge pages with the same (zero) contents.
        let rc =
            unsafe { libc::madvise(raw.as_mut_ptr().add(done).cast(), n, libc::MADV_COLLAPSE) };
        if rc != 0 {
            let errno = std::io::Error::last_os_error().raw_os_error();
            if matches!(errno, Some(libc::EINVAL) | Some(libc::ENOSYS)) {
                // This kernel cannot collapse shared memory: stop trying for good.
                COLLAPSE_UNAVAILABLE.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            break;
        }
        done += n;
        if only_free && weigh {
            let cost = thread_cpu_time().saturating_sub(started);
            let next = after_step(
                cost,
                n / huge,
                (len - done) as u64,
                crate::free_small_block_bytes(),
            );
            if next == NextStep::Small {
                break;
            }
        }
    }
    Ok(done - from)
}

/// What a create does after a step of collapsing whose huge pages cost `cost` together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NextStep {
    /// They were cheap: go on.
    Huge,
    /// They were dear, but small pages would be too (no free small blocks to hold the
    /// rest: they would be cut from the same blocks): go on (the next step is weighed
    /// again: blocks freed meanwhile may hold the rest by then).
    HugeAnyway,
    /// They were dear and free small blocks hold the rest: small pages for it.
    Small,
}

/// Decides [`NextStep`] from the cost of the last step (`pages` huge pages), the bytes
/// still to reserve and the bytes free in blocks smaller than a huge page.
fn after_step(cost: Duration, pages: usize, remaining: u64, small_free: Option<u64>) -> NextStep {
    if cost <= MAX_HUGE_PAGE_COST * u32::try_from(pages).unwrap_or(u32::MAX) {
        return NextStep::Huge;
    }
    match small_free {
        Some(free) if free >= remaining.saturating_add(SMALL_BLOCKS_KEPT) => NextStep::Small,
        _ => NextStep::HugeAnyway,
    }
}

/// Free small blocks left to others (and to the kernel's watermarks) when a create turns to
/// small pages.
const SMALL_BLOCKS_KEPT: u64 = 256 << 20;

/// The most a huge page made at create may cost (CPU time of the creating thread, host
/// faults included) before the rest of the segment is made of small pages: about what a
/// small-page segment costs per 2 MiB over its whole life, between the 0.2-0.5 ms of a
/// huge page freed moments ago and the 4-10 ms of one the host has taken back.
pub(crate) const MAX_HUGE_PAGE_COST: Duration = Duration::from_millis(2);

/// The step of collapsing at create while its cost is watched: 4 huge pages.
const PROBE_STEP: usize = 8 << 20;

/// CPU time of the calling thread (host faults on a VM included: the vCPU stalls in it).
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Free huge pages left to others (and to the kernel's watermarks) by a create.
const KEEP_FREE: usize = 32 << 20;

/// Set once `MADV_COLLAPSE` has answered that this kernel cannot collapse shared memory.
static COLLAPSE_UNAVAILABLE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

#[cfg(test)]
mod tests {
    use super::{NextStep, after_step};
    use std::time::Duration;

    const GIB: u64 = 1 << 30;

    #[test]
    fn cheap_huge_pages_go_on() {
        // 4 huge pages in 1.5 ms: freed moments ago.
        let cost = Duration::from_micros(1500);
        assert_eq!(after_step(cost, 4, GIB, Some(0)), NextStep::Huge);
    }

    #[test]
    fn dear_huge_pages_give_way_to_small_blocks_that_hold_the_rest() {
        // 4 huge pages in 24 ms: memory the host must fault in again.
        let cost = Duration::from_millis(24);
        assert_eq!(after_step(cost, 4, GIB, Some(2 * GIB)), NextStep::Small);
        // Small blocks that cannot hold the rest (and the margin) would be cut from the
        // same reported blocks: huge pages go on.
        assert_eq!(after_step(cost, 4, GIB, Some(GIB)), NextStep::HugeAnyway);
        assert_eq!(after_step(cost, 4, GIB, None), NextStep::HugeAnyway);
    }
}
