//! Sealed memfd segments.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{FallocateFlags, MemfdFlags, Mode, OFlags, SealFlags};
use rustix::io::Errno;

use crate::{SegmentError, available_memory};

// `f_type` of hugetlbfs (linux/magic.h).
const HUGETLBFS_MAGIC: i64 = 0x958458f6;

/// The seals every segment carries: its size can never change, so no peer can truncate
/// memory under another's mapping (which would turn reads into SIGBUS).
///
/// `F_SEAL_SEAL` is deliberately not among them: the owner adds the write seal later
/// ([`Segment::seal_writes`]). Only a writable descriptor can add seals, so a holder of a
/// read-only one cannot.
const SIZE_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

/// The seal that makes a segment read-only for good ([`Segment::seal_writes`]).
const WRITE_SEAL: SealFlags = SealFlags::FUTURE_WRITE;

/// The memfd's inode mode: read for its owner only. Opening `/proc/self/fd/N` again
/// checks the inode's mode, so a process that is not root cannot turn a read-only
/// descriptor into a writable one by reopening it (its owner can `fchmod` the mode back:
/// the write seal, not the mode, is what makes memory immutable).
const INODE_MODE: Mode = Mode::RUSR;

/// Builds a [`Segment`]: `SegmentBuilder::new(len).label("volume").create()`.
#[derive(Debug, Clone)]
pub struct SegmentBuilder {
    len: usize,
    label: String,
    check_memory: bool,
    hugetlb: bool,
    reserve: Option<Reserve>,
}

/// How a new segment's memory is reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserve {
    /// `fallocate` on the memfd (small pages unless the shmem THP mode is `always` or
    /// `within_size`).
    Fallocate,
    /// Through a temporary mapping that asks for huge pages (`MADV_HUGEPAGE`) and then
    /// populates (`MADV_POPULATE_WRITE`): huge pages under shmem THP `advise`.
    HugeMapping,
    /// Huge pages made at once with `MADV_COLLAPSE` (Linux 6.1+), which works even under
    /// shmem THP `never`: one small page is populated per huge page and the range
    /// collapsed, the rest zero. Faster than `fallocate` of small pages and already zeroed;
    /// where collapsing fails or is slow (memory must be compacted), the rest of the
    /// segment is reserved by `fallocate`.
    Collapse,
}

impl SegmentBuilder {
    /// A builder for a segment of `len` bytes.
    pub fn new(len: usize) -> Self {
        Self {
            len,
            label: "fastio".to_owned(),
            check_memory: true,
            hugetlb: false,
            reserve: None,
        }
    }

    /// The memfd's name, seen in `/proc/<pid>/fd` (`/memfd:<label>`); for diagnostics only.
    pub fn label(mut self, label: &str) -> Self {
        self.label = label.replace('\0', "?");
        self
    }

    /// Skips the check against the memory this machine reports as available, leaving only
    /// `fallocate` to refuse (for tests of the kernel's own refusal).
    pub fn skip_memory_check(mut self) -> Self {
        self.check_memory = false;
        self
    }

    /// Asks for a hugetlb memfd (`MFD_HUGETLB`, pages from the administrator's reserved
    /// pool). Where the pool cannot hold the segment, or the kernel refuses, the segment is
    /// made of ordinary shared memory instead; [`Segment::is_hugetlb`] says which it got.
    /// The segment's length is rounded up to a whole number of huge pages.
    pub fn hugetlb(mut self, on: bool) -> Self {
        self.hugetlb = on;
        self
    }

    /// Chooses how memory is reserved instead of deciding from the shmem THP mode
    /// ([`Reserve::HugeMapping`] under `advise`, [`Reserve::Collapse`] under `never`, for
    /// 2 MiB and more; [`Reserve::Fallocate`] otherwise). Chosen so, [`Reserve::Collapse`]
    /// takes huge pages even where none are free (the kernel compacts memory, which can be
    /// slow); decided by the builder, it takes only free ones.
    pub fn reserve(mut self, reserve: Reserve) -> Self {
        self.reserve = Some(reserve);
        self
    }

    /// Creates the memfd, sizes it, reserves its memory, seals it against shrinking and
    /// growing and sets its inode mode to owner-read-only (so that read-only descriptors of
    /// it cannot be reopened for writing by a process that is not root).
    ///
    /// The memory is reserved here, not at first touch: a request the machine cannot hold
    /// fails now with [`SegmentError::OutOfMemory`] naming the size, never with SIGBUS
    /// later. Reservation goes in steps of [`crate::RESERVE_STEP`], and before each step
    /// the headroom ([`available_memory`]: `MemAvailable` and every memory cgroup limit,
    /// v1 or v2) must still hold what is left to reserve plus [`crate::HEADROOM_MARGIN`]:
    /// two creates racing for the same memory, in this process or another, fail cleanly
    /// rather than wake the OOM killer, and a failed create gives back what it took.
    pub fn create(self) -> Result<Segment, SegmentError> {
        let len = self.len;
        if len == 0 {
            return Err(SegmentError::ZeroSize);
        }
        if self.hugetlb
            && let Some(segment) = self.create_hugetlb()?
        {
            return Ok(segment);
        }
        if self.reserve.is_none()
            && len as u64 >= crate::huge_page_size()
            && let Some(fd) = crate::warm::take_blank(len as u64)
        {
            return self.adopt_blank(fd);
        }
        let check = self.check_memory;
        self.headroom_for(len as u64, check)?;
        let os = |op: &'static str| {
            move |source: Errno| SegmentError::Os {
                op,
                size: len,
                errno: source,
            }
        };
        let fd = rustix::fs::memfd_create(
            self.label.as_str(),
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(os("memfd_create"))?;
        rustix::fs::ftruncate(&fd, len as u64).map_err(os("ftruncate"))?;
        let reserve = self.reserve.unwrap_or_else(|| {
            if (len as u64) < crate::huge_page_size() {
                return Reserve::Fallocate;
            }
            match crate::ShmemThp::current() {
                Some(crate::ShmemThp::Advise) => Reserve::HugeMapping,
                // Faults give no huge pages, collapsing still does.
                Some(crate::ShmemThp::Never) if crate::collapse_allowed() => Reserve::Collapse,
                // `always`, `within_size`, `force`: fallocate gives huge pages itself;
                // `deny`, or no THP at all: small pages whatever is done.
                _ => Reserve::Fallocate,
            }
        });
        let mut huge = 0;
        match reserve {
            Reserve::Fallocate => self.reserve_by_fallocate(&fd, 0)?,
            Reserve::HugeMapping => crate::mapping::reserve_huge(&fd, len, |done| {
                self.headroom_for((len - done) as u64, check)
            })?,
            Reserve::Collapse => {
                let only_free = self.reserve.is_none();
                huge = crate::mapping::reserve_collapsed(
                    &fd,
                    0,
                    len,
                    (only_free, only_free),
                    |done| self.headroom_for((len - done) as u64, check),
                )?;
                self.reserve_by_fallocate(&fd, huge as u64)?;
            }
        }
        rustix::fs::fcntl_add_seals(&fd, SIZE_SEALS).map_err(os("seal"))?;
        rustix::fs::fchmod(&fd, INODE_MODE).map_err(os("fchmod"))?;
        let mut segment = Segment::new(fd, len, true, false)?;
        segment.huge_at_create = huge as u64;
        Ok(segment)
    }

    /// A segment made of a blank of the warm reserve ([`crate::warm`]): memory made of huge
    /// pages before this create, zero, never sealed, seen by no client; sealed and locked
    /// down here as any new segment.
    fn adopt_blank(&self, fd: OwnedFd) -> Result<Segment, SegmentError> {
        let len = self.len;
        let os = |op: &'static str| {
            move |source: Errno| SegmentError::Os {
                op,
                size: len,
                errno: source,
            }
        };
        rustix::fs::fcntl_add_seals(&fd, SIZE_SEALS).map_err(os("seal"))?;
        rustix::fs::fchmod(&fd, INODE_MODE).map_err(os("fchmod"))?;
        let mut segment = Segment::new(fd, len, true, false)?;
        segment.huge_at_create = len as u64 / crate::huge_page_size() * crate::huge_page_size();
        Ok(segment)
    }

    /// Fails unless the machine can still give `remaining` bytes and keep the margin.
    fn headroom_for(&self, remaining: u64, check: bool) -> Result<(), SegmentError> {
        if !check {
            return Ok(());
        }
        let need = remaining.saturating_add(crate::HEADROOM_MARGIN);
        // Leased blanks count as available only once freed.
        crate::warm::make_room(need);
        match available_memory() {
            Some(available) if need > available => Err(SegmentError::OutOfMemory {
                size: self.len,
                available: Some(available.saturating_sub(crate::HEADROOM_MARGIN)),
            }),
            _ => Ok(()),
        }
    }

    /// Reserves `from..len` by `fallocate` (what is reserved already is left alone).
    fn reserve_by_fallocate(&self, fd: &OwnedFd, from: u64) -> Result<(), SegmentError> {
        let len = self.len as u64;
        let mut done = from;
        while done < len {
            if done > 0 {
                self.headroom_for(len - done, self.check_memory)?;
            }
            let step = crate::RESERVE_STEP.min(len - done);
            rustix::fs::fallocate(fd, FallocateFlags::empty(), done, step).map_err(|source| {
                match source {
                    Errno::NOSPC | Errno::NOMEM | Errno::FBIG => SegmentError::OutOfMemory {
                        size: self.len,
                        available: available_memory(),
                    },
                    source => SegmentError::Os {
                        op: "fallocate",
                        size: self.len,
                        errno: source,
                    },
                }
            })?;
            done += step;
        }
        Ok(())
    }

    /// A hugetlb segment, or `None` where the pool or the kernel cannot give one.
    fn create_hugetlb(&self) -> Result<Option<Segment>, SegmentError> {
        let Some(pool) = crate::hugetlb_pool() else {
            return Ok(None);
        };
        let page = pool.page_size;
        let Some(len) = (self.len as u64).checked_next_multiple_of(page) else {
            return Ok(None);
        };
        if pool.free * page < len {
            return Ok(None);
        }
        let Ok(fd) = rustix::fs::memfd_create(
            self.label.as_str(),
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING | MemfdFlags::HUGETLB,
        ) else {
            return Ok(None);
        };
        if rustix::fs::ftruncate(&fd, len).is_err()
            || rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, len).is_err()
            || rustix::fs::fcntl_add_seals(&fd, SIZE_SEALS).is_err()
            || rustix::fs::fchmod(&fd, INODE_MODE).is_err()
        {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| SegmentError::NotASegment)?;
        Segment::new(fd, len, true, true).map(Some)
    }
}

/// A shared-memory segment: a sealed memfd of fixed size.
///
/// A segment is a descriptor, not a mapping; map it with [`crate::Mapping`]. The memory
/// lives as long as any descriptor or mapping of it does, in any process, and no longer:
/// there is no name on any filesystem to leak.
#[derive(Debug)]
pub struct Segment {
    fd: OwnedFd,
    len: usize,
    writable: bool,
    identity: SegmentIdentity,
    hugetlb: bool,
    // Bytes from the start made of huge pages at create (`Reserve::Collapse`).
    huge_at_create: u64,
}

/// What identifies a segment's memory in every process that has a descriptor for it: the
/// memfd's device and inode numbers. Two descriptors with the same identity are the same
/// memory; an identity is never reused while a descriptor or a mapping of it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentIdentity {
    /// Device of the (internal) shmem or hugetlbfs mount.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl Segment {
    /// Adopts a descriptor received from another process, checking that it is a sealed
    /// segment: a peer cannot then shrink it under our mappings.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, SegmentError> {
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|_| SegmentError::NotASegment)?;
        if !seals.contains(SIZE_SEALS) {
            return Err(SegmentError::NotSealed);
        }
        let stat = rustix::fs::fstat(&fd).map_err(|source| SegmentError::Os {
            op: "fstat",
            size: 0,
            errno: source,
        })?;
        let len = usize::try_from(stat.st_size).map_err(|_| SegmentError::NotASegment)?;
        let flags = rustix::fs::fcntl_getfl(&fd).map_err(|source| SegmentError::Os {
            op: "fcntl_getfl",
            size: len,
            errno: source,
        })?;
        let writable = flags.contains(OFlags::RDWR) || flags.contains(OFlags::WRONLY);
        let hugetlb = rustix::fs::fstatfs(&fd).is_ok_and(|s| s.f_type == HUGETLBFS_MAGIC);
        Self::new(fd, len, writable, hugetlb)
    }

    fn new(fd: OwnedFd, len: usize, writable: bool, hugetlb: bool) -> Result<Self, SegmentError> {
        let stat = rustix::fs::fstat(&fd).map_err(|source| SegmentError::Os {
            op: "fstat",
            size: len,
            errno: source,
        })?;
        Ok(Self {
            fd,
            len,
            writable,
            identity: SegmentIdentity {
                dev: stat.st_dev,
                ino: stat.st_ino,
            },
            hugetlb,
            huge_at_create: 0,
        })
    }

    /// The identity of the memory, the same for every descriptor of it in any process.
    pub fn identity(&self) -> SegmentIdentity {
        self.identity
    }

    /// Bytes from the start of the segment that its create made of huge pages
    /// ([`Reserve::Collapse`]; a multiple of the huge page size). 0 for a segment received
    /// from elsewhere ([`Segment::from_fd`]), which cannot tell.
    pub fn huge_at_create(&self) -> u64 {
        self.huge_at_create
    }

    /// Whether its pages come from the hugetlb pool.
    pub fn is_hugetlb(&self) -> bool {
        self.hugetlb
    }

    /// Frees the segment's pages now (`fallocate(PUNCH_HOLE)`), even where other processes
    /// still map it: for memory leaving the registry for good, so that mappings clients
    /// keep parked (inaccessible) never keep it alive. Reads through a mapping afterwards
    /// see zeros. Fails on a descriptor that is read-only or a segment sealed against
    /// writing.
    pub fn punch(&self) -> Result<(), SegmentError> {
        rustix::fs::fallocate(
            &self.fd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            0,
            self.len as u64,
        )
        .map_err(|source| SegmentError::Os {
            op: "fallocate(PUNCH_HOLE)",
            size: self.len,
            errno: source,
        })
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the segment has no bytes (never true for a created segment).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether this descriptor allows writable mappings.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Makes the memory read-only for good, through every descriptor in every process:
    /// adds `F_SEAL_FUTURE_WRITE`, after which `write`, new writable mappings and
    /// `fallocate(PUNCH_HOLE)` fail for everyone, root included, and read-only mappings can
    /// no longer be `mprotect`ed writable. Writable mappings that exist already keep working
    /// (their owners make them read-only with [`crate::Mapping::unpark`]). Needs a
    /// writable descriptor. Sealing twice is harmless.
    pub fn seal_writes(&self) -> Result<(), SegmentError> {
        rustix::fs::fcntl_add_seals(&self.fd, WRITE_SEAL).map_err(|source| SegmentError::Os {
            op: "seal against writes",
            size: self.len,
            errno: source,
        })
    }

    /// Whether the memory was sealed against writes ([`Segment::seal_writes`], or
    /// `F_SEAL_WRITE` added by anyone holding a writable descriptor).
    pub fn is_write_sealed(&self) -> bool {
        rustix::fs::fcntl_get_seals(&self.fd)
            .is_ok_and(|seals| seals.intersects(SealFlags::WRITE | SealFlags::FUTURE_WRITE))
    }

    /// A second descriptor for the same memory and access (`dup`).
    pub fn try_clone(&self) -> Result<Self, SegmentError> {
        let fd = self.fd.try_clone().map_err(|e| SegmentError::Os {
            op: "dup",
            size: self.len,
            errno: Errno::from_io_error(&e).unwrap_or(Errno::IO),
        })?;
        Ok(Self { fd, ..*self })
    }

    /// A new descriptor for the same memory that only allows read-only mappings.
    ///
    /// It is a fresh open of the memfd with `O_RDONLY`, so a process holding only it cannot
    /// map the memory writable, nor `mprotect` a read-only mapping into a writable one:
    /// read-only access is enforced by the kernel, not by convention.
    pub fn read_only(&self) -> Result<Self, SegmentError> {
        let path = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        let fd = rustix::fs::open(
            path.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|source| SegmentError::Os {
            op: "reopen read-only",
            size: self.len,
            errno: source,
        })?;
        Ok(Self {
            fd,
            writable: false,
            ..*self
        })
    }

    /// Gives up the descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Segment {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
