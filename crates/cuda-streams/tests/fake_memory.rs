//! The public CPU fake's device memory crosses real processes: a child (the acceptance binary's
//! `fake-import` mode, which needs no GPU) imports the exported descriptor it inherited, reads
//! what the parent wrote, and writes back what the parent reads.

use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;

use cuda_streams::{
    DeviceAccess, DeviceMapping, DeviceMemory, Driver, StreamPool, StreamPoolConfig,
};

fn read(d: &Driver, m: &DeviceMapping, offset: usize, len: usize) -> Vec<u8> {
    let pool = StreamPool::new(d, StreamPoolConfig::default()).expect("pool");
    let s = pool.allocate().expect("stream");
    let mut out = vec![0u8; len];
    // SAFETY: `out` outlives the synchronisation below.
    unsafe { m.copy_to_host_async(&s, offset, out.as_mut_ptr(), len) }.expect("d2h");
    s.synchronize().expect("sync");
    out
}

#[test]
fn fake_device_memory_is_shared_between_processes() {
    let d = Driver::fake(1);
    let pool = StreamPool::new(&d, StreamPoolConfig::default()).expect("pool");
    let s = pool.allocate().expect("stream");
    let mem = DeviceMemory::create(&d, 0, 8192).expect("create");
    let map = mem.map(0, DeviceAccess::ReadWrite).expect("map");
    map.memset_async(&s, 0, 4096, 0x5A).expect("memset");
    let fd = mem.export_fd().expect("export");
    // The exported descriptor is close-on-exec; a duplicate without the flag is inherited.
    let inheritable = rustix::io::fcntl_dupfd_cloexec(fd.as_fd(), 100).expect("dup");
    rustix::io::fcntl_setfd(&inheritable, rustix::io::FdFlags::empty()).expect("setfd");
    let out = Command::new(env!("CARGO_BIN_EXE_cuda-streams-acceptance"))
        .args([
            "fake-import".to_owned(),
            inheritable.as_raw_fd().to_string(),
            mem.size().to_string(),
        ])
        .output()
        .expect("run the child");
    drop(inheritable);
    assert!(
        out.status.success(),
        "child failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("OK read 4096 x 0x5a"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        read(&d, &map, 4096, 4096),
        vec![0xC3; 4096],
        "the child's bytes"
    );
}
