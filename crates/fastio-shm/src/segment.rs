//! Sealed memfd segments.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{FallocateFlags, MemfdFlags, Mode, OFlags, SealFlags};
use rustix::io::Errno;

use crate::SegmentError;

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
}

impl SegmentBuilder {
    /// A builder for a segment of `len` bytes.
    pub fn new(len: usize) -> Self {
        Self {
            len,
            label: "fastio".to_owned(),
            check_memory: true,
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

    /// Creates the memfd, sizes it, reserves its memory with `fallocate`, seals it
    /// against shrinking and growing and sets its inode mode to owner-read-only (so that
    /// read-only descriptors of it cannot be reopened for writing by a process that is
    /// not root).
    ///
    /// The memory is reserved here, not at first touch: a request the machine cannot hold
    /// fails now with [`SegmentError::OutOfMemory`] naming the size, never with SIGBUS
    /// later. Requests beyond the memory the kernel reports as available (`MemAvailable`,
    /// and the cgroup's `memory.max`) are refused before anything is allocated, because
    /// `fallocate` on shared memory would otherwise wake the OOM killer rather than fail.
    pub fn create(self) -> Result<Segment, SegmentError> {
        let len = self.len;
        if len == 0 {
            return Err(SegmentError::ZeroSize);
        }
        if self.check_memory
            && let Some(available) = available_memory()
            && len as u64 > available
        {
            return Err(SegmentError::OutOfMemory {
                size: len,
                available: Some(available),
            });
        }
        let os = |op: &'static str| {
            move |source: Errno| SegmentError::Os {
                op,
                size: len,
                source,
            }
        };
        let fd = rustix::fs::memfd_create(
            self.label.as_str(),
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(os("memfd_create"))?;
        rustix::fs::ftruncate(&fd, len as u64).map_err(os("ftruncate"))?;
        rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, len as u64).map_err(|source| {
            match source {
                Errno::NOSPC | Errno::NOMEM | Errno::FBIG => SegmentError::OutOfMemory {
                    size: len,
                    available: available_memory(),
                },
                source => SegmentError::Os {
                    op: "fallocate",
                    size: len,
                    source,
                },
            }
        })?;
        rustix::fs::fcntl_add_seals(&fd, SIZE_SEALS).map_err(os("seal"))?;
        rustix::fs::fchmod(&fd, INODE_MODE).map_err(os("fchmod"))?;
        Ok(Segment {
            fd,
            len,
            writable: true,
        })
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
            source,
        })?;
        let len = usize::try_from(stat.st_size).map_err(|_| SegmentError::NotASegment)?;
        let flags = rustix::fs::fcntl_getfl(&fd).map_err(|source| SegmentError::Os {
            op: "fcntl_getfl",
            size: len,
            source,
        })?;
        let writable = flags.contains(OFlags::RDWR) || flags.contains(OFlags::WRONLY);
        Ok(Self { fd, len, writable })
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
    /// (their owners make them read-only with [`crate::Mapping::protect`]). Needs a
    /// writable descriptor. Sealing twice is harmless.
    pub fn seal_writes(&self) -> Result<(), SegmentError> {
        rustix::fs::fcntl_add_seals(&self.fd, WRITE_SEAL).map_err(|source| SegmentError::Os {
            op: "seal against writes",
            size: self.len,
            source,
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
            source: Errno::from_io_error(&e).unwrap_or(Errno::IO),
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
            source,
        })?;
        Ok(Self {
            fd,
            len: self.len,
            writable: false,
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

/// Bytes of memory this process may still allocate, as the kernel reports it: the smaller
/// of `MemAvailable` and, under a cgroup v2 limit, `memory.max - memory.current`. `None`
/// when neither can be read.
pub fn available_memory() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    let cgroup = cgroup_headroom();
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn cgroup_headroom() -> Option<u64> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = format!("/sys/fs/cgroup{}", path.trim());
    let max = fs::read_to_string(format!("{dir}/memory.max")).ok()?;
    let max: u64 = max.trim().parse().ok()?; // "max" means no limit: None.
    let current: u64 = fs::read_to_string(format!("{dir}/memory.current"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(max.saturating_sub(current))
}
