//! `fastio doctor`: what this machine offers for shared memory, and what fastio will
//! therefore use.

use std::fmt;

use serde::Serialize;

/// The findings of `fastio doctor`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Linux kernel release (`uname -r`).
    pub kernel: String,
    /// The shmem transparent-huge-page mode (`never`, `advise`, ...), if the kernel has THP.
    pub shmem_thp: Option<&'static str>,
    /// Size of a huge page in bytes.
    pub huge_page_bytes: u64,
    /// The hugetlb pool: reserved and free pages.
    pub hugetlb_pages_total: Option<u64>,
    /// Free pages of the hugetlb pool.
    pub hugetlb_pages_free: Option<u64>,
    /// `MemAvailable` in bytes.
    pub mem_available_bytes: Option<u64>,
    /// The tightest memory cgroup limit, if any: version, limit, usage, headroom.
    pub cgroup: Option<Cgroup>,
    /// What a create may take now: the smaller of `MemAvailable` and the cgroup headroom.
    pub available_bytes: Option<u64>,
    /// Bytes free in blocks of a whole huge page (`/proc/buddyinfo`): what creates can
    /// make huge at once under shmem THP `never`.
    pub free_huge_page_bytes: Option<u64>,
    /// A virtio balloon reports free memory back to the host (free page reporting): fresh
    /// huge pages then cost the host a fault each on first touch.
    pub free_page_reporting: bool,
    /// Soft and hard `RLIMIT_MEMLOCK` (bytes; `None` = unlimited).
    pub memlock: (Option<u64>, Option<u64>),
    /// Soft and hard `RLIMIT_NOFILE`.
    pub nofile: (Option<u64>, Option<u64>),
    /// Size and free bytes of `/dev/shm`, if mounted.
    pub dev_shm: Option<(u64, u64)>,
    /// CUDA devices the driver reports (`None` when it is unusable).
    pub cuda_devices: Option<usize>,
    /// Why the CUDA driver is unusable, if it is.
    pub cuda_error: Option<String>,
    /// The warm reserve's keeper for this user and `FASTIO_WARM_NAME`, if one runs.
    pub warm_keeper: Option<WarmKeeper>,
    /// What fastio will do on this machine, one line each.
    pub plan: Vec<String>,
}

/// A running keeper of the warm reserve (`fastio keep-warm`).
#[derive(Clone, Debug, Serialize)]
pub struct WarmKeeper {
    /// Its process id.
    pub pid: u32,
    /// Bytes of blanks ready for the next job.
    pub held_bytes: u64,
    /// Bytes of blanks it makes while idle (the sizes of the last job).
    pub target_bytes: u64,
    /// Whether a job holds its lease now.
    pub leased: bool,
    /// Seconds it holds its blanks once idle.
    pub keep_seconds: u64,
}

/// A memory cgroup limit.
#[derive(Clone, Debug, Serialize)]
pub struct Cgroup {
    /// 1 or 2.
    pub version: u8,
    /// Its folder.
    pub path: String,
    /// Limit in bytes.
    pub limit_bytes: u64,
    /// Charged now, less reclaimable page cache.
    pub usage_bytes: u64,
    /// What can still be charged.
    pub headroom_bytes: u64,
}

fn rlimit(resource: rustix::process::Resource) -> (Option<u64>, Option<u64>) {
    let l = rustix::process::getrlimit(resource);
    (l.current, l.maximum)
}

impl Report {
    /// Looks at this machine now.
    pub fn gather() -> Self {
        use fastio_shm::ShmemThp;
        let thp = ShmemThp::current();
        let pool = fastio_shm::hugetlb_pool();
        let cgroup = fastio_shm::cgroup_limit().map(|c| Cgroup {
            version: c.version,
            path: c.path.display().to_string(),
            limit_bytes: c.limit,
            usage_bytes: c.usage,
            headroom_bytes: c.headroom(),
        });
        let dev_shm = rustix::fs::statvfs("/dev/shm").ok().map(|s| {
            (
                s.f_blocks.saturating_mul(s.f_frsize),
                s.f_bavail.saturating_mul(s.f_frsize),
            )
        });
        let cuda = cuda_streams::Driver::probe()
            .map(|d| d.device_count())
            .map_err(|e| e.to_string());
        let collapse_off = std::env::var(fastio_context::COLLAPSE_ENV).is_ok_and(|v| v == "0");
        let huge = fastio_shm::huge_page_size();
        let free_huge = fastio_shm::free_huge_page_bytes();
        let reporting = free_page_reporting();
        let mut plan = vec![
            "segments: sealed memfds on the kernel's internal shmem mount (not /dev/shm: its size does not limit fastio)".to_owned(),
        ];
        plan.push(match thp {
            Some(ShmemThp::Advise) => format!(
                "huge pages: segments of {} MiB and more are made huge as they are reserved (MADV_HUGEPAGE + MADV_POPULATE_WRITE)",
                huge >> 20
            ),
            Some(ShmemThp::Always | ShmemThp::WithinSize | ShmemThp::Force) => {
                "huge pages: the kernel gives shared memory huge pages by itself".to_owned()
            }
            Some(ShmemThp::Never) if collapse_off => {
                "huge pages: none (shmem THP is never and FASTIO_COLLAPSE=0 turns the collapser off)".to_owned()
            }
            Some(ShmemThp::Never) => format!(
                "huge pages: segments of {} MiB and more are made huge at create while free huge pages last ({} MiB free now), pooled ones are collapsed in the background (MADV_COLLAPSE; FASTIO_COLLAPSE=0 turns both off)",
                huge >> 20,
                free_huge.unwrap_or(0) >> 20
            ),
            Some(ShmemThp::Deny) | None => {
                "huge pages: none (the kernel denies transparent huge pages to shared memory)".to_owned()
            }
        });
        if reporting && thp == Some(ShmemThp::Never) && !collapse_off {
            plan.push("free page reporting: this VM hands free memory back to its host, so fresh huge pages cost a host fault each on first touch; if creates of new segments are slow here, FASTIO_COLLAPSE=0 makes them of small pages".to_owned());
        }
        plan.push(match pool {
            Some(p) if p.free > 0 => format!(
                "hugetlb: on request (hugetlb=True in Python, NVIDIA_CLARA_FASTIO_CREATE_HUGETLB in C, CreateOptions::hugetlb), {} MiB free in the pool",
                (p.free * p.page_size) >> 20
            ),
            _ => "hugetlb: the pool is empty (vm.nr_hugepages = 0); requests fall back to ordinary memory".to_owned(),
        });
        let available = fastio_shm::available_memory();
        if let Some(a) = available {
            plan.push(format!(
                "admission: creates are refused beyond {} MiB (what is available less a {} MiB margin), checked every {} MiB",
                a.saturating_sub(fastio_shm::HEADROOM_MARGIN) >> 20,
                fastio_shm::HEADROOM_MARGIN >> 20,
                fastio_shm::RESERVE_STEP >> 20
            ));
        }
        plan.push(format!(
            "mappings: kept per process up to {} MiB of parked mappings ({})",
            fastio_context::mapping_stats().limit_bytes >> 20,
            fastio_context::MAP_CACHE_ENV
        ));
        let (warm_keeper, warm_line) = warm_reserve(reporting);
        plan.push(warm_line);
        plan.push(match &cuda {
            Ok(n) => format!("CUDA: {n} device(s); GPU paths enabled"),
            Err(_) => "CUDA: no usable driver; GPU paths disabled (host memory only)".to_owned(),
        });
        Self {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into()),
            shmem_thp: thp.map(ShmemThp::as_str),
            huge_page_bytes: huge,
            hugetlb_pages_total: pool.map(|p| p.total),
            hugetlb_pages_free: pool.map(|p| p.free),
            mem_available_bytes: mem_available(),
            cgroup,
            available_bytes: available,
            free_huge_page_bytes: free_huge,
            free_page_reporting: reporting,
            memlock: rlimit(rustix::process::Resource::Memlock),
            nofile: rlimit(rustix::process::Resource::Nofile),
            dev_shm,
            cuda_devices: cuda.as_ref().ok().copied(),
            cuda_error: cuda.err(),
            warm_keeper,
            plan,
        }
    }
}

/// The running keeper of the warm reserve, if any, and the plan's line about it.
fn warm_reserve(reporting: bool) -> (Option<WarmKeeper>, String) {
    use fastio_shm::warm;
    let settings = warm::keep_time().and_then(|k| Ok((k, warm::keeper_name()?)));
    let (keep, name) = match settings {
        Err(e) => return (None, format!("warm reserve: off, {e}")),
        Ok((None, _)) => {
            return (
                None,
                format!("warm reserve: off ({}=0)", warm::KEEP_WARM_ENV),
            );
        }
        Ok((Some(keep), name)) => (keep, name),
    };
    let why = if reporting {
        " (on this VM a job after a pause otherwise gets memory back from the host at a host fault per page)"
    } else {
        ""
    };
    match warm::status(&name) {
        Ok(Some(s)) => {
            let line = format!(
                "warm reserve: keeper pid {} holds {} MiB of blanks (of {} planned) for the next job's hand-overs, until idle for {} s{why}",
                s.pid,
                s.held >> 20,
                s.target >> 20,
                s.keep_secs
            );
            let keeper = WarmKeeper {
                pid: s.pid,
                held_bytes: s.held,
                target_bytes: s.target,
                leased: s.leased,
                keep_seconds: s.keep_secs,
            };
            (Some(keeper), line)
        }
        _ => (
            None,
            format!(
                "warm reserve: no keeper runs; `fastio run` starts one after a job that makes {} MiB or more, to hold memory of that job's sizes for the next job until idle for {} s ({}; 0 turns it off){why}",
                warm::MIN_RESERVE >> 20,
                keep.as_secs(),
                warm::KEEP_WARM_ENV
            ),
        ),
    }
}

/// Whether a virtio balloon with free page reporting (`VIRTIO_BALLOON_F_REPORTING`, feature
/// bit 5) is attached: its features string in sysfs has one character per bit.
fn free_page_reporting() -> bool {
    let Ok(devices) = std::fs::read_dir("/sys/bus/virtio/devices") else {
        return false;
    };
    devices.flatten().any(|d| {
        let read = |name: &str| std::fs::read_to_string(d.path().join(name)).unwrap_or_default();
        // Device id 5: the memory balloon.
        read("device").trim() == "0x0005" && read("features").as_bytes().get(5) == Some(&b'1')
    })
}

fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|k| k * 1024)
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

fn limit(l: Option<u64>) -> String {
    l.map_or("unlimited".into(), |v| v.to_string())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel            {}", self.kernel)?;
        writeln!(
            f,
            "shmem THP         {} (huge page {})",
            self.shmem_thp.unwrap_or("not available"),
            mib(self.huge_page_bytes)
        )?;
        match (self.hugetlb_pages_total, self.hugetlb_pages_free) {
            (Some(t), Some(fr)) => writeln!(f, "hugetlb pool      {t} pages, {fr} free")?,
            _ => writeln!(f, "hugetlb pool      not reported")?,
        }
        if let Some(a) = self.mem_available_bytes {
            writeln!(f, "MemAvailable      {}", mib(a))?;
        }
        if let Some(h) = self.free_huge_page_bytes {
            writeln!(
                f,
                "free huge pages   {} in free blocks of a huge page",
                mib(h)
            )?;
        }
        if self.free_page_reporting {
            writeln!(
                f,
                "balloon           free page reporting on (free memory goes back to the host)"
            )?;
        }
        match &self.cgroup {
            Some(c) => writeln!(
                f,
                "memory cgroup     v{} limit {}, used {}, headroom {} ({})",
                c.version,
                mib(c.limit_bytes),
                mib(c.usage_bytes),
                mib(c.headroom_bytes),
                c.path
            )?,
            None => writeln!(f, "memory cgroup     no limit")?,
        }
        writeln!(
            f,
            "RLIMIT_MEMLOCK    soft {}, hard {}",
            limit(self.memlock.0),
            limit(self.memlock.1)
        )?;
        writeln!(
            f,
            "RLIMIT_NOFILE     soft {}, hard {} (the server raises soft to hard)",
            limit(self.nofile.0),
            limit(self.nofile.1)
        )?;
        match self.dev_shm {
            Some((size, free)) => writeln!(
                f,
                "/dev/shm          {} ({} free); fastio does not use it",
                mib(size),
                mib(free)
            )?,
            None => writeln!(f, "/dev/shm          not mounted; fastio does not use it")?,
        }
        match &self.warm_keeper {
            Some(k) => writeln!(
                f,
                "warm keeper       pid {}, {} of blanks held{}",
                k.pid,
                mib(k.held_bytes),
                if k.leased {
                    ", leased by a job now"
                } else {
                    ""
                }
            )?,
            None => writeln!(f, "warm keeper       none running")?,
        }
        match (&self.cuda_devices, &self.cuda_error) {
            (Some(n), _) => writeln!(f, "CUDA driver       {n} device(s)")?,
            (None, e) => writeln!(
                f,
                "CUDA driver       unusable: {}",
                e.as_deref().unwrap_or("unknown")
            )?,
        }
        writeln!(f)?;
        writeln!(f, "fastio will use:")?;
        for line in &self.plan {
            writeln!(f, "  - {line}")?;
        }
        Ok(())
    }
}
