//! The server degrades, never dies: descriptors, memory admission, slow work outside the
//! registry lock, huge pages in the background.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fastio_context::{Context, CreateOptions, Prefault, Server, ServerConfig};

const MIB: usize = 1 << 20;

#[test]
fn the_server_raises_its_soft_descriptor_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let hard = getrlimit(Resource::Nofile).maximum;
    let low = Rlimit {
        current: Some(256),
        maximum: hard,
    };
    setrlimit(Resource::Nofile, low).unwrap();
    assert_eq!(getrlimit(Resource::Nofile).current, Some(256));
    let _server = Server::start(ServerConfig::default()).unwrap();
    assert_eq!(getrlimit(Resource::Nofile).current, hard);
}

#[test]
fn a_slow_create_does_not_hold_the_registry_against_other_clients() {
    const SIZE: usize = 512 << 20;
    let ctx = Context::in_process();
    let other = ctx.clone();
    let done = AtomicBool::new(false);
    let mut seen_in_flight = false;
    std::thread::scope(|s| {
        let creator = s.spawn(|| {
            let a = ctx.create(SIZE);
            done.store(true, Ordering::SeqCst);
            a
        });
        // Bounded: the create ends, one way or the other.
        while !done.load(Ordering::SeqCst) {
            let stats = other.stats().unwrap();
            if stats.reserving_bytes == SIZE as u64 {
                // Answered while the create was reserving its memory: the lock was free.
                seen_in_flight = true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        creator.join().unwrap().unwrap().release().unwrap();
    });
    assert!(
        seen_in_flight,
        "stats were never answered during a 512 MiB create"
    );
    assert_eq!(ctx.stats().unwrap().reserving_bytes, 0);
}

#[test]
fn pooled_segments_end_up_backed_by_huge_pages() {
    const SIZE: usize = 8 * MIB;
    if matches!(
        fastio_shm::ShmemThp::current(),
        None | Some(fastio_shm::ShmemThp::Deny)
    ) {
        eprintln!("this kernel has no shmem huge pages; nothing to check");
        return;
    }
    let ctx = Context::in_process();
    let mut a = ctx
        .create_with(
            SIZE,
            CreateOptions {
                zeroed: false,
                prefault: Prefault::Populate,
                hugetlb: false,
            },
        )
        .unwrap();
    a.write_bytes(0, &vec![1u8; SIZE]).unwrap();
    a.release().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stats = ctx.stats().unwrap();
    while stats.huge_page_bytes == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        stats = ctx.stats().unwrap();
    }
    assert!(
        stats.huge_page_bytes >= SIZE as u64 / 2,
        "{} bytes of huge pages after collapsing an 8 MiB pooled segment",
        stats.huge_page_bytes
    );
    assert_eq!(stats.segments.len(), 1);
    assert_eq!(stats.segments[0].huge_page_bytes, stats.huge_page_bytes);
    // The recycled segment keeps its contents.
    let b = ctx
        .create_with(
            SIZE,
            CreateOptions {
                zeroed: false,
                prefault: Prefault::Lazy,
                hugetlb: false,
            },
        )
        .unwrap();
    assert_eq!(b.read_bytes(SIZE - 1, 1).unwrap(), [1]);
}

const CGROUP_CHILD: &str = "FASTIO_TEST_CGROUP_CHILD";

/// A v1 memory cgroup of `limit` bytes under this process's own, or `None` where this
/// machine does not let us make one (not root, no v1 memory controller).
fn v1_cgroup(limit: u64) -> Option<std::path::PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.trim_start_matches('/').to_owned())
    })?;
    let dir = std::path::Path::new("/sys/fs/cgroup/memory")
        .join(path)
        .join(format!("fastio-test-{}", std::process::id()));
    std::fs::create_dir(&dir).ok()?;
    std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).ok()?;
    Some(dir)
}

#[test]
fn creates_racing_under_a_cgroup_v1_limit_fail_cleanly_instead_of_being_killed() {
    if let Some(cgroup) = std::env::var_os(CGROUP_CHILD) {
        std::fs::write(std::path::Path::new(&cgroup).join("cgroup.procs"), "0").unwrap();
        let ctx = Context::in_process();
        let held = match ctx.create(160 * MIB) {
            Ok(mut a) => {
                a.write_bytes(0, b"x").unwrap();
                println!("created");
                Some(a)
            }
            Err(e) => {
                println!("refused: {e}");
                None
            }
        };
        // Hold the memory until the parent has heard from both children: they compete
        // for it even when the machine runs them one after the other.
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        drop(held);
        return;
    }
    let Some(cgroup) = v1_cgroup(256 << 20) else {
        eprintln!("no writable cgroup v1 memory controller here; nothing to check");
        return;
    };
    let spawn = || {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "creates_racing_under_a_cgroup_v1_limit_fail_cleanly_instead_of_being_killed",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CGROUP_CHILD, &cgroup)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Two processes, each asking 160 MiB of a 256 MiB cgroup at the same time; each holds
    // what it got until both have answered.
    let children = [spawn(), spawn()];
    let mut readers = Vec::new();
    for mut child in children {
        // Until the child's answer (libtest prints a line of its own first).
        let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut heard = String::new();
        while !heard.contains("created") && !heard.contains("refused") {
            let mut line = String::new();
            if std::io::BufRead::read_line(&mut reader, &mut line).unwrap() == 0 {
                break;
            }
            heard.push_str(&line);
        }
        readers.push((child, reader, heard));
    }
    let outputs: Vec<_> = readers
        .into_iter()
        .map(|(mut child, mut reader, mut heard)| {
            drop(child.stdin.take());
            std::io::Read::read_to_string(&mut reader, &mut heard).unwrap();
            (child.wait().unwrap(), heard)
        })
        .collect();
    let _ = std::fs::remove_dir(&cgroup);
    let mut created = 0;
    for (status, stdout) in &outputs {
        assert_eq!(status.signal(), None, "killed: {stdout}");
        assert!(status.success(), "{stdout}");
        if stdout.contains("created") {
            created += 1;
        } else {
            assert!(stdout.contains("refused: cannot reserve"), "{stdout}");
        }
    }
    assert!(created <= 1, "both got 160 MiB of a 256 MiB cgroup");
}

#[test]
fn a_hugetlb_create_falls_back_to_ordinary_memory_and_says_so() {
    const SIZE: usize = 16 * MIB;
    let ctx = Context::in_process();
    let mut a = ctx
        .create_with(
            SIZE,
            CreateOptions {
                hugetlb: true,
                ..CreateOptions::default()
            },
        )
        .unwrap();
    a.write_bytes(SIZE - 1, b"h").unwrap();
    let stats = ctx.stats().unwrap();
    let pool = fastio_shm::hugetlb_pool();
    let fits = pool.is_some_and(|p| p.free * p.page_size >= SIZE as u64);
    assert_eq!(stats.segments[0].hugetlb, fits, "{pool:?}");
    if fits {
        assert_eq!(stats.huge_page_bytes, stats.segments[0].bytes);
    }
}

#[test]
fn a_segment_made_huge_at_create_is_counted_at_once() {
    const SIZE: usize = 8 * MIB;
    let free = fastio_shm::free_huge_page_bytes().unwrap_or(0);
    if fastio_shm::ShmemThp::current() != Some(fastio_shm::ShmemThp::Never)
        || !fastio_shm::collapse_allowed()
        || free < 256 * MIB as u64
    {
        // Huge pages at create are taken only from free ones, under THP `never`.
        eprintln!(
            "no huge pages at create here (shmem THP, FASTIO_COLLAPSE or {free} free bytes of huge pages); nothing to check"
        );
        return;
    }
    // No background collapser: only the create can have made it huge.
    let server = Server::start(ServerConfig {
        collapse: false,
        ..ServerConfig::default()
    })
    .unwrap();
    let ctx = server.local_context();
    let a = ctx.create(SIZE).unwrap();
    let stats = ctx.stats().unwrap();
    assert_eq!(stats.huge_page_bytes, SIZE as u64, "{stats:?}");
    assert_eq!(stats.segments[0].huge_page_bytes, SIZE as u64);
    a.free().unwrap();
}
