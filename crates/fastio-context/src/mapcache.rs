//! This process's kept mappings: mappings outlive handles.
//!
//! Mapping a segment afresh costs a page fault per 4 KiB page on first touch (122 ms for a
//! writer of 256 MiB, against 30 ms for the copy itself). So a released handle's mapping is
//! not unmapped: it is **parked** (`PROT_NONE`, any access through a stale pointer faults,
//! the page tables stay) and kept here, keyed by the segment's identity. When the context
//! hands this process the same segment again (the warm pool prefers a connection that
//! mapped it), the mapping is unparked with the new handle's access: no page faults again.
//!
//! The cache is bounded in bytes of parked mappings (least recently parked out first;
//! `FASTIO_MAP_CACHE_MIB`, default 2048, `0` turns keeping off) and in count. A parked
//! mapping keeps no memory alive that the context has let go of: the context punches the
//! pages of a segment that leaves it for good.
//!
//! A read-only handle only ever reuses a mapping made from a read-only descriptor, and a
//! read-write one a mapping made from a writable one: a mapping made read-only cannot be
//! `mprotect`ed writable (the kernel refuses), and a read-only handle never gets a
//! mapping that could be.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};

use fastio_shm::{Access, Mapping, Prefault, Segment, SegmentError};

/// Environment variable bounding the parked mappings of a process, in MiB.
pub const MAP_CACHE_ENV: &str = "FASTIO_MAP_CACHE_MIB";

/// Default bound of parked mappings per process.
pub const DEFAULT_MAP_CACHE_BYTES: u64 = 2 << 30;

// Kept mappings beyond this count are unmapped, whatever their size: every one is a VMA
// and a linear scan here.
const MAX_PARKED: usize = 256;

static MADE: AtomicU64 = AtomicU64::new(0);
static REUSED: AtomicU64 = AtomicU64::new(0);

struct Cache {
    parked: Vec<(u64, Mapping)>,
    bytes: u64,
    limit: u64,
    tick: u64,
}

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(|| {
    let limit = std::env::var(MAP_CACHE_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_MAP_CACHE_BYTES, |mib| mib.saturating_mul(1 << 20));
    Mutex::new(Cache {
        parked: Vec::new(),
        bytes: 0,
        limit,
        tick: 0,
    })
});

fn cache() -> MutexGuard<'static, Cache> {
    // Every operation leaves the cache consistent before it could panic.
    CACHE.lock().unwrap_or_else(|p| p.into_inner())
}

/// This process's mapping counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingStats {
    /// Mappings made (`mmap`) since the process started.
    pub made: u64,
    /// Handles served by unparking a kept mapping instead.
    pub reused: u64,
    /// Mappings parked now.
    pub parked: usize,
    /// Bytes of parked mappings now.
    pub parked_bytes: u64,
    /// The bound on parked bytes.
    pub limit_bytes: u64,
}

/// This process's mapping counters (how many handles were served without a new mapping).
pub fn mapping_stats() -> MappingStats {
    let cache = cache();
    MappingStats {
        made: MADE.load(Ordering::Relaxed),
        reused: REUSED.load(Ordering::Relaxed),
        parked: cache.parked.len(),
        parked_bytes: cache.bytes,
        limit_bytes: cache.limit,
    }
}

/// Bounds this process's parked mappings to `bytes` (0: unmap at release), unmapping the
/// least recently parked ones beyond it now.
pub fn set_mapping_cache_bytes(bytes: u64) {
    let mut cache = cache();
    cache.limit = bytes;
    let evicted = cache.trim(0);
    drop(cache);
    drop(evicted);
}

impl Cache {
    /// Takes out the mappings that must go for `incoming` more bytes to fit; the caller
    /// unmaps them after letting go of the lock.
    fn trim(&mut self, incoming: u64) -> Vec<Mapping> {
        let mut out = Vec::new();
        while !self.parked.is_empty()
            && (self.bytes + incoming > self.limit || self.parked.len() >= MAX_PARKED)
        {
            let oldest = self
                .parked
                .iter()
                .enumerate()
                .min_by_key(|(_, (tick, _))| *tick)
                .map(|(i, _)| i)
                .expect("not empty");
            let (_, mapping) = self.parked.swap_remove(oldest);
            self.bytes -= mapping.len() as u64;
            out.push(mapping);
        }
        out
    }
}

/// A mapping of `segment` with `access`: a kept one unparked if this process has one of
/// the same memory made from a descriptor of the same access, else a new one.
pub(crate) fn map(
    segment: &Segment,
    access: Access,
    prefault: Prefault,
) -> Result<Mapping, SegmentError> {
    let identity = segment.identity();
    let writable = access == Access::ReadWrite;
    let kept = {
        let mut cache = cache();
        let found = cache.parked.iter().position(|(_, m)| {
            m.identity() == identity && m.may_write() == writable && m.len() == segment.len()
        });
        found.map(|i| {
            let (_, mapping) = cache.parked.swap_remove(i);
            cache.bytes -= mapping.len() as u64;
            mapping
        })
    };
    if let Some(mut mapping) = kept
        && mapping.unpark(access).is_ok()
    {
        REUSED.fetch_add(1, Ordering::Relaxed);
        return Ok(mapping);
    }
    let mapping = Mapping::new(segment, access, prefault)?;
    MADE.fetch_add(1, Ordering::Relaxed);
    Ok(mapping)
}

/// Parks `mapping` (from now on any access through it faults) and keeps it, or unmaps it
/// when it does not fit the bound. Either way, once this returns, no pointer into it can
/// read or write.
pub(crate) fn park(mut mapping: Mapping) {
    let len = mapping.len() as u64;
    if mapping.park().is_err() {
        return; // Dropped: unmapped.
    }
    let mut cache = cache();
    if len > cache.limit {
        return;
    }
    let evicted = cache.trim(len);
    cache.tick += 1;
    let tick = cache.tick;
    cache.bytes += len;
    cache.parked.push((tick, mapping));
    drop(cache);
    // Unmapping large mappings takes time; never under the lock.
    drop(evicted);
}
