//! What the machine offers for shared memory: headroom (including cgroup v1 and v2 memory
//! limits), the shmem transparent-huge-page mode, the hugetlb pool, and the huge-page
//! backing of this process's mappings as `/proc/self/smaps` reports it.

use std::fs;
use std::path::{Path, PathBuf};

/// Memory every reservation leaves untouched: a create fails cleanly when taking its bytes
/// would leave less than this, instead of pushing the machine or the cgroup into the OOM
/// killer. It also covers what racing reservations (other contexts reserving at the same
/// time) can take between a check and the step it allows.
pub const HEADROOM_MARGIN: u64 = 64 << 20;

/// Bytes reserved per step by a create; the headroom is checked again before each step.
pub const RESERVE_STEP: u64 = 32 << 20;

/// Bytes of memory this process may still allocate, as the kernel reports it: the smaller
/// of `MemAvailable` and the headroom under every memory cgroup limit that applies (cgroup
/// v2 `memory.max` of this cgroup and its ancestors, cgroup v1 `memory.limit_in_bytes`),
/// counting reclaimable page cache as free. `None` when nothing can be read.
///
/// A process that leases a warm reserve ([`crate::warm::join`]) counts what is left of it
/// as available too: it frees it for its own segments as it makes them.
pub fn available_memory() -> Option<u64> {
    system_available_memory().map(|a| a.saturating_add(crate::warm::leased_bytes()))
}

/// [`available_memory`] without the blanks of a leased warm reserve.
pub(crate) fn system_available_memory() -> Option<u64> {
    #[cfg(test)]
    if let Some(pretended) = PRETEND_AVAILABLE.get() {
        return Some(pretended);
    }
    let meminfo = meminfo_kib("MemAvailable").map(|kib| kib * 1024);
    lower(meminfo, cgroup_limit().map(|c| c.headroom()))
}

/// The lower of two figures, either of which may be unknown.
fn lower(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
thread_local! {
    /// What [`system_available_memory`] reports in this thread of a unit test instead of
    /// the kernel's figure: memory cannot be made short on a shared machine, safely.
    pub(crate) static PRETEND_AVAILABLE: std::cell::Cell<Option<u64>> =
        const { std::cell::Cell::new(None) };
    /// The memory cgroup limit [`total_memory`] sees in this thread of a unit test (no
    /// test may move itself into a cgroup of its own on a shared machine).
    pub(crate) static PRETEND_CGROUP_LIMIT: std::cell::Cell<Option<u64>> =
        const { std::cell::Cell::new(None) };
}

/// The memory this process can have at most, when it can be read: the machine's
/// (`MemTotal`), or the limit of its memory cgroup ([`cgroup_limit`]) where lower, as in a
/// container with a memory limit on a larger machine.
pub(crate) fn total_memory() -> Option<u64> {
    let limit = cgroup_limit().map(|c| c.limit);
    #[cfg(test)]
    let limit = PRETEND_CGROUP_LIMIT.get().or(limit);
    lower(meminfo_kib("MemTotal").map(|kib| kib * 1024), limit)
}

fn meminfo_kib(key: &str) -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// The tightest memory cgroup limit over this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupLimit {
    /// `v1` or `v2`.
    pub version: u8,
    /// The cgroup's folder under `/sys/fs/cgroup`.
    pub path: PathBuf,
    /// The limit in bytes.
    pub limit: u64,
    /// Bytes charged now, less reclaimable (inactive) page cache.
    pub usage: u64,
}

impl CgroupLimit {
    /// What can still be charged before the limit.
    pub fn headroom(&self) -> u64 {
        self.limit.saturating_sub(self.usage)
    }
}

/// The memory cgroup limit with the least headroom among this process's cgroup (v2: and
/// its ancestors; v1: its memory controller's cgroup), or `None` when none is set.
pub fn cgroup_limit() -> Option<CgroupLimit> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut best: Option<CgroupLimit> = None;
    let mut consider = |candidate: Option<CgroupLimit>| {
        if let Some(c) = candidate
            && best.as_ref().is_none_or(|b| c.headroom() < b.headroom())
        {
            best = Some(c);
        }
    };
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim().trim_start_matches('/');
        if id == "0" && controllers.is_empty() {
            // cgroup v2: every ancestor's limit applies.
            let root = Path::new("/sys/fs/cgroup");
            let mut dir = root.join(path);
            loop {
                consider(v2_limit(&dir));
                if dir == root || !dir.pop() {
                    break;
                }
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            // cgroup v1 reports the hierarchical limit of the cgroup itself.
            let dir = Path::new("/sys/fs/cgroup/memory").join(path);
            consider(v1_limit(&dir));
        }
    }
    best
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn stat_value(dir: &Path, key: &str) -> u64 {
    fs::read_to_string(dir.join("memory.stat"))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
        })
        .unwrap_or(0)
}

fn v2_limit(dir: &Path) -> Option<CgroupLimit> {
    let limit = read_u64(&dir.join("memory.max"))?; // "max" (no limit) does not parse.
    let current = read_u64(&dir.join("memory.current"))?;
    let usage = current.saturating_sub(stat_value(dir, "inactive_file"));
    Some(CgroupLimit {
        version: 2,
        path: dir.to_owned(),
        limit,
        usage,
    })
}

fn v1_limit(dir: &Path) -> Option<CgroupLimit> {
    let limit = read_u64(&dir.join("memory.limit_in_bytes"))?;
    // v1 reports "no limit" as a huge page-aligned number.
    if limit >= 1 << 62 {
        return None;
    }
    let current = read_u64(&dir.join("memory.usage_in_bytes"))?;
    let usage = current.saturating_sub(stat_value(dir, "total_inactive_file"));
    Some(CgroupLimit {
        version: 1,
        path: dir.to_owned(),
        limit,
        usage,
    })
}

/// The kernel's shmem transparent-huge-page mode
/// (`/sys/kernel/mm/transparent_hugepage/shmem_enabled`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShmemThp {
    /// Huge pages for every shmem mapping big enough.
    Always,
    /// Huge pages where the file size allows a whole one.
    WithinSize,
    /// Huge pages where the mapping asks (`MADV_HUGEPAGE`).
    Advise,
    /// No huge pages at fault time; `MADV_COLLAPSE` still works (Linux 6.1+).
    Never,
    /// Huge pages are refused, even to `MADV_COLLAPSE`.
    Deny,
    /// Forced on every shmem mount (a testing mode).
    Force,
}

impl ShmemThp {
    /// The mode now, or `None` where the kernel has no transparent huge pages.
    pub fn current() -> Option<Self> {
        let text = fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled").ok()?;
        let chosen = text
            .split_whitespace()
            .find(|w| w.starts_with('['))?
            .trim_matches(['[', ']']);
        Some(match chosen {
            "always" => Self::Always,
            "within_size" => Self::WithinSize,
            "advise" => Self::Advise,
            "never" => Self::Never,
            "deny" => Self::Deny,
            "force" => Self::Force,
            _ => return None,
        })
    }

    /// Whether a new segment of 2 MiB or more gets huge pages as it is populated, provided
    /// its mapping asks with `MADV_HUGEPAGE`.
    pub fn huge_at_population(self) -> bool {
        matches!(
            self,
            Self::Always | Self::WithinSize | Self::Advise | Self::Force
        )
    }

    /// The kernel's name for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::WithinSize => "within_size",
            Self::Advise => "advise",
            Self::Never => "never",
            Self::Deny => "deny",
            Self::Force => "force",
        }
    }
}

/// Size of a PMD-mapped huge page on this machine (2 MiB on x86-64).
pub fn huge_page_size() -> u64 {
    meminfo_kib("Hugepagesize").map_or(2 << 20, |k| k * 1024)
}

/// Environment variable that, set to `0`, keeps fastio from collapsing shared memory into
/// huge pages with `MADV_COLLAPSE` (at create and in the background): for machines where
/// fresh huge pages cost more than they save (e.g. a VM whose free memory is handed back
/// to its host, so that every fresh page costs the host a fault).
pub const COLLAPSE_ENV: &str = "FASTIO_COLLAPSE";

/// Whether [`COLLAPSE_ENV`] allows collapsing.
pub fn collapse_allowed() -> bool {
    !std::env::var(COLLAPSE_ENV).is_ok_and(|v| v.trim() == "0")
}

/// Bytes the kernel holds free in blocks of at least one huge page, from
/// `/proc/buddyinfo` (every zone of every node): what huge pages can be had now without
/// compacting memory. `None` where the file cannot be read.
pub fn free_huge_page_bytes() -> Option<u64> {
    let huge = huge_page_size();
    let order = (huge / 4096).trailing_zeros() as usize;
    parse_buddyinfo(&fs::read_to_string("/proc/buddyinfo").ok()?, order).map(|pages| pages * huge)
}

/// Bytes the kernel holds free in blocks smaller than a huge page, from `/proc/buddyinfo`:
/// what small pages can be had without splitting a block of huge-page size. On a VM with
/// free page reporting (virtio-balloon, reporting order 9 by default) these blocks are
/// never handed back to the host, so touching them costs no host fault. `None` where the
/// file cannot be read.
pub fn free_small_block_bytes() -> Option<u64> {
    let order = (huge_page_size() / 4096).trailing_zeros() as usize;
    parse_buddyinfo_below(&fs::read_to_string("/proc/buddyinfo").ok()?, order)
        .map(|pages| pages * 4096)
}

/// Free blocks smaller than `order` in `text` (the format of `/proc/buddyinfo`), counted in
/// pages.
fn parse_buddyinfo_below(text: &str, order: usize) -> Option<u64> {
    let mut total = 0u64;
    for line in text.lines() {
        let counts = line.split_once("zone")?.1.split_whitespace().skip(1);
        for (k, count) in counts.enumerate().take(order) {
            let count: u64 = count.parse().ok()?;
            total = total.saturating_add(count << k);
        }
    }
    Some(total)
}

/// Free blocks of `order` and more in `text` (the format of `/proc/buddyinfo`), counted in
/// blocks of `order`.
fn parse_buddyinfo(text: &str, order: usize) -> Option<u64> {
    let mut total = 0u64;
    for line in text.lines() {
        // "Node 0, zone   Normal  56748  32349 ...": counts by order from 0.
        let counts = line.split_once("zone")?.1.split_whitespace().skip(1);
        for (k, count) in counts.enumerate().skip(order) {
            let count: u64 = count.parse().ok()?;
            total = total.saturating_add(count << (k - order));
        }
    }
    Some(total)
}

/// The hugetlb pool of the default huge page size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HugetlbPool {
    /// Page size in bytes.
    pub page_size: u64,
    /// Pages reserved by the administrator (`vm.nr_hugepages`).
    pub total: u64,
    /// Pages not in use.
    pub free: u64,
}

/// The hugetlb pool, if `/proc/meminfo` reports one (its `total` may be 0).
pub fn hugetlb_pool() -> Option<HugetlbPool> {
    Some(HugetlbPool {
        page_size: huge_page_size(),
        total: meminfo_kib("HugePages_Total")?,
        free: meminfo_kib("HugePages_Free")?,
    })
}

/// Bytes of the mapping that starts at `addr` that are mapped with huge pages, from this
/// process's `/proc/self/smaps` (`ShmemPmdMapped` + `FilePmdMapped`, and hugetlb pages).
/// `None` when no mapping starts there.
pub fn huge_mapped_bytes(addr: usize) -> Option<u64> {
    let text = fs::read_to_string("/proc/self/smaps").ok()?;
    let start = format!("{addr:x}-");
    let mut lines = text.lines().skip_while(|l| !l.starts_with(&start));
    lines.next()?;
    let mut total = 0;
    for line in lines {
        let Some((key, value)) = line.split_once(':') else {
            break;
        };
        if key.contains(' ') || key.contains('-') {
            break; // The next mapping's header.
        }
        if matches!(
            key,
            "ShmemPmdMapped" | "FilePmdMapped" | "Shared_Hugetlb" | "Private_Hugetlb"
        ) {
            total += value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
                * 1024;
        }
    }
    Some(total)
}

/// Bytes of the mapping that starts at `addr` that are resident (`Rss` in smaps): pages
/// whose page-table entries this process has.
pub fn resident_bytes(addr: usize) -> Option<u64> {
    let text = fs::read_to_string("/proc/self/smaps").ok()?;
    let start = format!("{addr:x}-");
    let mut lines = text.lines().skip_while(|l| !l.starts_with(&start));
    lines.next()?;
    lines.find_map(|l| {
        l.strip_prefix("Rss:")
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|k| k * 1024)
    })
}

#[cfg(test)]
mod buddy_tests {
    #[test]
    fn free_blocks_of_a_huge_page_and_more_are_counted_in_huge_pages() {
        let text = "Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3 \n\
                    Node 0, zone    DMA32   8450   6786   5629   4017   2525   1924   1377    953    579    173     33 \n";
        // Order 9: 1 + 173; order 10 counts twice: 3 + 33.
        assert_eq!(super::parse_buddyinfo(text, 9), Some(174 + 2 * 36));
        assert_eq!(super::parse_buddyinfo("garbage", 9), None);
        // Below order 2: 5 single pages and 3 pairs, in pages.
        let small = "Node 0, zone   Normal      5      3      7\n";
        assert_eq!(super::parse_buddyinfo_below(small, 2), Some(5 + 3 * 2));
        assert_eq!(super::parse_buddyinfo_below("garbage", 9), None);
    }
}
