//! Mappings outlive handles: a released handle's mapping is parked (inaccessible) and kept,
//! and the same segment handed to this process again comes back in the same mapping.

use std::process::Command;

use fastio_context::{
    AccessMode, Context, CreateOptions, Prefault, Server, ServerConfig, mapping_stats,
};

const MIB: usize = 1 << 20;

fn uninit() -> CreateOptions {
    CreateOptions {
        zeroed: false,
        prefault: Prefault::Populate,
        hugetlb: false,
    }
}

/// Minor page faults of the calling thread so far.
fn minor_faults() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: initialised by the successful call above.
    unsafe { usage.assume_init() }.ru_minflt
}

fn recycled_segment_comes_back_in_the_same_mapping(ctx: &Context) {
    let mut a = ctx.create_with(MIB, uninit()).unwrap();
    a.write_bytes(0, b"kept").unwrap();
    let first = a.as_ptr();
    a.release().unwrap();
    let before = mapping_stats();
    let b = ctx.create_with(MIB, uninit()).unwrap();
    let after = mapping_stats();
    assert_eq!(b.as_ptr(), first, "the same mapping is handed back");
    assert_eq!(after.made, before.made, "no new mapping");
    assert_eq!(after.reused, before.reused + 1);
    // Not zeroed on request: the same memory, with what the last handle left there.
    assert_eq!(b.read_bytes(0, 4).unwrap(), b"kept");
    b.release().unwrap();
}

#[test]
fn a_recycled_segment_comes_back_in_the_same_mapping_in_process() {
    recycled_segment_comes_back_in_the_same_mapping(&Context::in_process());
}

#[test]
fn a_recycled_segment_comes_back_in_the_same_mapping_over_a_socket() {
    let server = Server::start(ServerConfig::default()).unwrap();
    recycled_segment_comes_back_in_the_same_mapping(&Context::connect(server.address()).unwrap());
}

#[test]
fn a_recycled_segment_is_zeroed_by_default_in_its_kept_mapping() {
    let ctx = Context::in_process();
    let mut a = ctx.create(MIB).unwrap();
    a.write_bytes(0, &[9u8; 4096]).unwrap();
    a.release().unwrap();
    let b = ctx.create(MIB).unwrap();
    assert!(b.read_bytes(0, 4096).unwrap().iter().all(|&x| x == 0));
}

#[test]
fn a_kept_mapping_faults_no_page_when_reused() {
    const SIZE: usize = 64 * MIB;
    let ctx = Context::in_process();
    let fill = vec![3u8; SIZE];
    let mut a = ctx.create_with(SIZE, uninit()).unwrap();
    a.write_bytes(0, &fill).unwrap();
    a.release().unwrap();
    let mut b = ctx.create_with(SIZE, uninit()).unwrap();
    let faults = minor_faults();
    b.write_bytes(0, &fill).unwrap();
    let taken = minor_faults() - faults;
    // A fresh lazy mapping would take one fault per 4 KiB page: 16,384 here.
    assert!(
        taken < 64,
        "{taken} page faults writing into a kept mapping"
    );
}

#[test]
fn read_only_handles_reuse_only_read_only_mappings() {
    let ctx = Context::in_process();
    let a = ctx.create(MIB).unwrap();
    a.publish("ro").unwrap();
    a.release().unwrap();
    let s0 = mapping_stats();
    let r = ctx.get_with("ro", AccessMode::ReadOnly).unwrap();
    let s1 = mapping_stats();
    assert_eq!(
        s1.made,
        s0.made + 1,
        "the writer's mapping is not lent to a reader"
    );
    let p = r.as_ptr();
    r.release().unwrap();
    let r = ctx.get_with("ro", AccessMode::ReadOnly).unwrap();
    assert_eq!(r.as_ptr(), p);
    assert_eq!(mapping_stats().reused, s1.reused + 1);
    // A writer gets the creator's kept mapping back, never the reader's.
    let w = ctx.get("ro").unwrap();
    assert_ne!(w.as_ptr(), p);
    assert_eq!(mapping_stats().reused, s1.reused + 2);
    assert_eq!(mapping_stats().made, s1.made);
}

const CHILD: &str = "FASTIO_TEST_STALE_POINTER_CHILD";

/// In a child process: reads through a pointer into a released allocation. Must die by
/// SIGSEGV before printing "survived".
#[test]
fn a_stale_pointer_into_a_released_allocation_faults() {
    if std::env::var_os(CHILD).is_some() {
        let ctx = Context::in_process();
        let mut a = ctx.create(MIB).unwrap();
        a.write_bytes(0, b"x").unwrap();
        let stale = a.as_ptr();
        // SAFETY: the allocation is live and mapped; this read is in bounds.
        let before = unsafe { std::ptr::read_volatile(stale) };
        println!("read {before} while live");
        a.release().unwrap();
        // SAFETY: deliberately none: the mapping is parked and this read must fault.
        let after = unsafe { std::ptr::read_volatile(stale) };
        println!("survived, read {after}");
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_stale_pointer_into_a_released_allocation_faults",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    use std::os::unix::process::ExitStatusExt;
    assert!(stdout.contains("read 120 while live"), "{stdout}");
    assert!(!stdout.contains("survived"), "{stdout}");
    assert_eq!(out.status.signal(), Some(libc::SIGSEGV), "{:?}", out.status);
}
