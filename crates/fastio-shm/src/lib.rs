//! Raw shared-memory segments for fastio: sealed memfds, read-only and read-write
//! mappings, optional prefaulting, and descriptor passing over Unix sockets.
//!
//! Architecture Invariant: this crate knows nothing of names, element types, publications
//! or processes' roles. A segment is a sized, sealed piece of memory and a descriptor.
//!
//! ```
//! use fastio_shm::{Access, Mapping, Prefault, SegmentBuilder};
//! let segment = SegmentBuilder::new(4096).label("example").create()?;
//! let map = Mapping::new(&segment, Access::ReadWrite, Prefault::Lazy)?;
//! map.write_at(0, b"hello")?;
//! let reader = Mapping::new(&segment.read_only()?, Access::ReadOnly, Prefault::Lazy)?;
//! let mut out = [0u8; 5];
//! reader.read_at(0, &mut out)?;
//! assert_eq!(&out, b"hello");
//! # Ok::<(), fastio_shm::SegmentError>(())
//! ```

#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod mapping;
mod memory;
mod segment;
pub mod transfer;
pub mod warm;

pub use mapping::{Access, Mapping, Prefault};
pub use memory::{
    COLLAPSE_ENV, CgroupLimit, HEADROOM_MARGIN, HugetlbPool, RESERVE_STEP, ShmemThp,
    available_memory, cgroup_limit, collapse_allowed, free_huge_page_bytes, free_small_block_bytes,
    huge_mapped_bytes, huge_page_size, hugetlb_pool, resident_bytes,
};
pub use segment::{Reserve, Segment, SegmentBuilder, SegmentIdentity};

/// Why a segment could not be created, adopted or mapped.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// A segment of zero bytes was requested.
    #[error("a segment needs at least one byte; 0 was requested")]
    ZeroSize,
    /// The machine cannot hold the requested size.
    #[error("cannot reserve {size} bytes of shared memory: {}", match available { Some(a) => format!("only {a} bytes are available"), None => "the kernel refused".to_owned() })]
    OutOfMemory {
        /// Bytes requested.
        size: usize,
        /// Bytes the kernel reported available, when known.
        available: Option<u64>,
    },
    /// A system call failed.
    #[error("{op} failed for a segment of {size} bytes: {errno}")]
    Os {
        /// Which operation.
        op: &'static str,
        /// Size of the segment concerned.
        size: usize,
        /// The error number (in the message, so not the error's `source()`).
        errno: rustix::io::Errno,
    },
    /// A received descriptor is not a memfd with seals.
    #[error("the descriptor is not a fastio segment (not a sealable memfd)")]
    NotASegment,
    /// A received memfd is not sealed against resizing.
    #[error("the segment is not sealed against shrinking and growing; refusing to map it")]
    NotSealed,
    /// A read-write mapping was asked of a read-only descriptor.
    #[error("this descriptor is read-only; it cannot be mapped for writing")]
    ReadOnlyDescriptor,
    /// The mapping is parked (inaccessible) until a handle takes it again.
    #[error("this mapping is parked: its handle was released")]
    Parked,
    /// A write was attempted through a read-only mapping.
    #[error("this mapping is read-only")]
    ReadOnlyMapping,
    /// A byte range reaches past the end of the mapping.
    #[error("bytes {offset}..{offset}+{len} are outside a segment of {size} bytes")]
    OutOfBounds {
        /// Start of the range.
        offset: usize,
        /// Its length.
        len: usize,
        /// The segment's size.
        size: usize,
    },
    /// `mmap` or `madvise` failed.
    #[error("mapping a segment of {size} bytes failed: {cause}")]
    Map {
        /// Size of the segment.
        size: usize,
        /// The error (in the message, so not the error's `source()`).
        cause: std::io::Error,
    },
}

/// Why a message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The peer closed its end or died.
    #[error("the peer closed the connection")]
    Disconnected,
    /// The message or its descriptor list exceeds the limits.
    #[error("message too large: {len} bytes with {fds} descriptors")]
    TooLarge {
        /// Body length.
        len: usize,
        /// Descriptor count.
        fds: usize,
    },
    /// A received message was cut short.
    #[error("a received message was truncated")]
    Truncated,
    /// A socket call failed.
    #[error("socket error: {0}")]
    Os(rustix::io::Errno),
}
