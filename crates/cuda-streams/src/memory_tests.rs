//! Device memory and host registration on the CPU fake: the memory is real shared memory
//! there, so what one mapping writes another reads.

use std::os::fd::AsFd;
use std::sync::Arc;

use crate::backend::fake::{FakeBackend, GRANULARITY, TOTAL};
use crate::*;

fn fake(devices: usize) -> (Arc<FakeBackend>, Driver) {
    let f = FakeBackend::new(devices);
    let d = Driver::from_backend(f.clone());
    (f, d)
}

fn stream(d: &Driver, device: i32) -> (StreamPool, Stream) {
    let p = StreamPool::new(d, StreamPoolConfig::new(device, 1, 0, 1, 0)).expect("pool");
    let s = p.allocate().expect("stream");
    (p, s)
}

fn read(m: &DeviceMapping, s: &Stream, offset: usize, len: usize) -> Vec<u8> {
    let mut out = vec![0xEE; len];
    // SAFETY: `out` lives until after the (synchronous, on the fake) copy.
    unsafe { m.copy_to_host_async(s, offset, out.as_mut_ptr(), len) }.expect("d2h");
    s.synchronize().expect("sync");
    out
}

#[test]
fn create_rounds_up_to_the_granularity_and_refuses_nonsense() {
    let (_, d) = fake(1);
    assert_eq!(granularity(&d, 0), Ok(GRANULARITY));
    let m = DeviceMemory::create(&d, 0, 1).expect("create");
    assert_eq!(
        (m.size(), m.device(), m.is_imported()),
        (GRANULARITY, 0, false)
    );
    let m2 = DeviceMemory::create(&d, 0, GRANULARITY + 1).expect("create");
    assert_eq!(m2.size(), 2 * GRANULARITY);
    assert!(matches!(
        DeviceMemory::create(&d, 0, 0),
        Err(CudaError::InvalidArgument { .. })
    ));
    assert!(matches!(
        DeviceMemory::create(&d, 0, usize::MAX),
        Err(CudaError::InvalidArgument { .. })
    ));
    assert_eq!(
        DeviceMemory::create(&d, 3, 1).map(|_| ()),
        Err(CudaError::InvalidDevice {
            device: 3,
            count: 1
        })
    );
    assert!(matches!(
        DeviceMemory::create(&d, 0, TOTAL),
        Err(CudaError::Driver {
            call: "cuMemCreate",
            ..
        })
    ));
}

#[test]
fn export_once_then_duplicates_of_the_same_descriptor() {
    let (_, d) = fake(1);
    let m = DeviceMemory::create(&d, 0, 1).expect("create");
    let a = m.export_fd().expect("export");
    let b = m.export_fd().expect("export again");
    let (sa, sb) = (
        rustix::fs::fstat(&a).expect("fstat"),
        rustix::fs::fstat(&b).expect("fstat"),
    );
    use std::os::fd::AsRawFd;
    assert_ne!(
        a.as_raw_fd(),
        b.as_raw_fd(),
        "each call hands out its own descriptor"
    );
    assert_eq!(
        (sa.st_dev, sa.st_ino),
        (sb.st_dev, sb.st_ino),
        "of one exported file"
    );
}

#[test]
fn an_import_sees_the_writes_of_the_exporter() {
    let (_, d) = fake(1);
    let (_p, s) = stream(&d, 0);
    let producer = DeviceMemory::create(&d, 0, 4096).expect("create");
    let w = producer.map(0, DeviceAccess::ReadWrite).expect("map");
    w.memset_async(&s, 0, 100, 0x5A).expect("memset");
    let fd = producer.export_fd().expect("export");
    let consumer = DeviceMemory::import(&d, fd.as_fd(), 0, producer.size()).expect("import");
    drop(fd);
    assert!(consumer.is_imported());
    let r = consumer.map(0, DeviceAccess::ReadOnly).expect("map ro");
    assert_ne!(r.device_ptr(), w.device_ptr(), "a mapping of its own");
    assert_eq!(read(&r, &s, 0, 101), [vec![0x5A; 100], vec![0]].concat());
    // A later write by the producer is visible too: one memory, not a copy.
    w.memset_async(&s, 50, 1, 7).expect("memset");
    assert_eq!(read(&r, &s, 49, 3), vec![0x5A, 7, 0x5A]);
    // The imported memory can be handed on in turn.
    let again = consumer.export_fd().expect("re-export");
    let third = DeviceMemory::import(&d, again.as_fd(), 0, consumer.size()).expect("import");
    let m3 = third.map(0, DeviceAccess::ReadOnly).expect("map");
    assert_eq!(read(&m3, &s, 50, 1), vec![7]);
}

#[test]
fn read_only_mappings_refuse_writes_and_say_whether_hardware_enforces_it() {
    let (f, d) = fake(1);
    let (_p, s) = stream(&d, 0);
    let m = DeviceMemory::create(&d, 0, 1).expect("create");
    let r = m.map(0, DeviceAccess::ReadOnly).expect("map");
    assert_eq!(r.access(), DeviceAccess::ReadOnly);
    assert!(r.read_only_enforced());
    assert_eq!(r.memset_async(&s, 0, 1, 1), Err(CudaError::ReadOnly));
    let src = [1u8; 8];
    // SAFETY: `src` outlives the call; it is refused before any copy anyway.
    let e = unsafe { r.copy_from_host_async(&s, 0, src.as_ptr(), 8) };
    assert_eq!(e, Err(CudaError::ReadOnly));
    assert_eq!(read(&r, &s, 0, 8), vec![0; 8], "reads work");
    // A driver that refuses PROT_READ: the mapping falls back to read-write, says so, and the
    // crate still refuses its own writes.
    f.set_read_only_unsupported(true);
    let r2 = m.map(0, DeviceAccess::ReadOnly).expect("map");
    assert!(!r2.read_only_enforced());
    assert_eq!(r2.memset_async(&s, 0, 1, 1), Err(CudaError::ReadOnly));
    let rw = m.map(0, DeviceAccess::ReadWrite).expect("map");
    assert!(rw.read_only_enforced(), "read-write needs no enforcement");
}

#[test]
fn a_mapping_outlives_its_memory_and_memory_info_returns_to_baseline() {
    let (f, d) = fake(1);
    let (_p, s) = stream(&d, 0);
    let (free0, total) = memory_info(&d, 0).expect("info");
    assert_eq!(total, TOTAL);
    let m = DeviceMemory::create(&d, 0, 3 * GRANULARITY).expect("create");
    let map = m.map(0, DeviceAccess::ReadWrite).expect("map");
    assert_eq!(memory_info(&d, 0).expect("info").0, free0 - 3 * GRANULARITY);
    drop(m);
    // Still mapped: still allocated, and usable.
    assert_eq!(memory_info(&d, 0).expect("info").0, free0 - 3 * GRANULARITY);
    map.memset_async(&s, map.size() - 1, 1, 9).expect("memset");
    assert_eq!(read(&map, &s, map.size() - 1, 1), vec![9]);
    drop(map);
    assert_eq!(memory_info(&d, 0).expect("info").0, free0);
    assert_eq!(f.live_memory(), 0);
}

#[test]
fn peers_map_each_others_memory_or_get_a_clear_error() {
    let (f, d) = fake(2);
    let m = DeviceMemory::create(&d, 0, 1).expect("create");
    let peer = m.map(1, DeviceAccess::ReadWrite).expect("peer map");
    assert_eq!((peer.device(), peer.owner_device()), (1, 0));
    let (_p1, s1) = stream(&d, 1);
    let (_p0, s0) = stream(&d, 0);
    peer.memset_async(&s1, 0, 4, 3)
        .expect("memset from the peer");
    assert_eq!(
        peer.memset_async(&s0, 0, 4, 3),
        Err(CudaError::WrongStream {
            device: 1,
            stream_device: 0
        }),
        "work on the mapping runs on the device that mapped it"
    );
    assert_eq!(can_access_peer(&d, 1, 0), Ok(true));
    f.set_no_peer(true);
    assert_eq!(can_access_peer(&d, 1, 0), Ok(false));
    assert_eq!(
        m.map(1, DeviceAccess::ReadWrite).map(|_| ()),
        Err(CudaError::NoPeerAccess {
            owner: 0,
            accessor: 1
        })
    );
    assert!(
        m.map(0, DeviceAccess::ReadWrite).is_ok(),
        "the owner always can"
    );
    assert!(matches!(
        m.map(2, DeviceAccess::ReadWrite),
        Err(CudaError::InvalidDevice { device: 2, .. })
    ));
}

#[test]
fn import_refuses_what_is_not_an_exported_allocation() {
    let (_, d) = fake(1);
    let (r, _w) = rustix::pipe::pipe().expect("pipe");
    assert!(matches!(
        DeviceMemory::import(&d, r.as_fd(), 0, GRANULARITY),
        Err(CudaError::Driver {
            call: "cuMemImportFromShareableHandle",
            ..
        })
    ));
    let m = DeviceMemory::create(&d, 0, 1).expect("create");
    let fd = m.export_fd().expect("export");
    for bad in [0, 100, GRANULARITY + 1] {
        assert!(matches!(
            DeviceMemory::import(&d, fd.as_fd(), 0, bad),
            Err(CudaError::InvalidArgument { .. })
        ));
    }
    assert!(
        DeviceMemory::import(&d, fd.as_fd(), 0, 2 * GRANULARITY).is_err(),
        "larger than the allocation"
    );
}

#[test]
fn copies_check_their_range() {
    let (_, d) = fake(1);
    let (_p, s) = stream(&d, 0);
    let m = DeviceMemory::create(&d, 0, 1).expect("create");
    let map = m.map(0, DeviceAccess::ReadWrite).expect("map");
    let size = map.size();
    let src: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    // SAFETY: `src` outlives the synchronous fake copy.
    unsafe { map.copy_from_host_async(&s, size - 1000, src.as_ptr(), 1000) }.expect("h2d");
    assert_eq!(read(&map, &s, size - 1000, 1000), src);
    let oor = CudaError::OutOfRange {
        offset: size - 999,
        len: 1000,
        size,
    };
    // SAFETY: refused before any copy.
    let e = unsafe { map.copy_from_host_async(&s, size - 999, src.as_ptr(), 1000) };
    assert_eq!(e, Err(oor.clone()));
    let mut dst = vec![0u8; 1000];
    // SAFETY: refused before any copy.
    let e = unsafe { map.copy_to_host_async(&s, size - 999, dst.as_mut_ptr(), 1000) };
    assert_eq!(e, Err(oor));
    assert!(matches!(
        map.memset_async(&s, usize::MAX, 2, 0),
        Err(CudaError::OutOfRange { .. })
    ));
}

#[test]
fn host_registration_is_cached_per_range_and_undone_by_the_hook() {
    let (f, d) = fake(1);
    let buf = vec![0u8; 8192];
    let p = buf.as_ptr();
    // SAFETY: `buf` outlives its registration (unregistered below).
    unsafe {
        assert_eq!(register_host(&d, p, 8192, false), Ok(true));
        assert_eq!(register_host(&d, p, 8192, false), Ok(false), "cached");
        assert_eq!(
            register_host(&d, p, 8192, true),
            Ok(false),
            "read-write covers read-only"
        );
        assert!(matches!(
            register_host(&d, p.add(4096), 100, false),
            Err(CudaError::InvalidArgument { .. })
        ));
        assert!(matches!(
            register_host(&d, p, 0, false),
            Err(CudaError::InvalidArgument { .. })
        ));
    }
    assert_eq!(f.registrations(), 1);
    assert!(is_host_registered(&d, p, 8192));
    assert!(!is_host_registered(&d, p, 4096));
    assert_eq!(
        unregister_host(&d, p, 4096),
        Ok(false),
        "another range: nothing to do"
    );
    assert_eq!(unregister_host(&d, p, 8192), Ok(true));
    assert_eq!(unregister_host(&d, p, 8192), Ok(false));
    assert_eq!(f.registrations(), 0);
    assert!(!is_host_registered(&d, p, 8192));
    // A read-only registration is not reused for a read-write request.
    // SAFETY: as above.
    unsafe {
        assert_eq!(register_host(&d, p, 8192, true), Ok(true));
        assert!(register_host(&d, p, 8192, false).is_err());
    }
    assert_eq!(unregister_host(&d, p, 8192), Ok(true));
}

#[test]
fn the_public_fake_is_a_working_driver() {
    let d = Driver::fake(2);
    assert!(d.is_fake());
    assert_eq!(d.device_count(), 2);
    let m = DeviceMemory::create(&d, 1, 10).expect("create");
    let fd = m.export_fd().expect("export");
    let i = DeviceMemory::import(&d, fd.as_fd(), 1, m.size()).expect("import");
    assert!(i.map(0, DeviceAccess::ReadOnly).is_ok());
}

/// Counts its drops; its bytes are what it was made with.
struct Counted(Vec<u8>, Arc<std::sync::atomic::AtomicUsize>);

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn owned_copies_keep_their_source_until_the_stream_is_past_them() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (f, d) = fake(1);
    let (_p, s) = stream(&d, 0);
    let m = DeviceMemory::create(&d, 0, 1).expect("create");
    let map = m.map(0, DeviceAccess::ReadWrite).expect("map");
    let drops = Arc::new(AtomicUsize::new(0));
    f.set_events_pending(true);
    map.copy_from_host_owned_async(&s, 10, Counted(vec![7; 100], drops.clone()))
        .expect("copy");
    map.copy_from_host_owned_async(&s, 200, [9u8; 16])
        .expect("array copy");
    assert_eq!(
        s.release_finished(),
        2,
        "the work is still running: both kept"
    );
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    f.set_events_pending(false);
    assert_eq!(s.release_finished(), 0);
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "dropped once the work is done"
    );
    assert_eq!(
        read(&map, &s, 9, 102),
        [vec![0], vec![7; 100], vec![0]].concat()
    );
    assert_eq!(read(&map, &s, 200, 16), vec![9; 16]);
    // Refused copies drop their source at once; a kept value goes with its stream.
    let e = map.copy_from_host_owned_async(&s, map.size(), Counted(vec![1], drops.clone()));
    assert!(matches!(e, Err(CudaError::OutOfRange { .. })));
    assert_eq!(drops.load(Ordering::SeqCst), 2);
    f.set_events_pending(true);
    let (pool2, s2) = stream(&d, 0);
    map.copy_from_host_owned_async(&s2, 0, Counted(vec![1], drops.clone()))
        .expect("copy");
    drop((pool2, s2));
    assert_eq!(
        drops.load(Ordering::SeqCst),
        3,
        "the stream's end drains and drops"
    );
}

#[test]
fn memory_handles_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<DeviceMemory>();
    send_sync::<DeviceMapping>();
    let (_, d) = fake(1);
    let m = Arc::new(DeviceMemory::create(&d, 0, 1).expect("create"));
    let fds: Vec<_> = (0..4)
        .map(|_| {
            let m = m.clone();
            std::thread::spawn(move || m.export_fd().expect("export"))
        })
        .map(|t| t.join().expect("thread"))
        .collect();
    let inodes: std::collections::HashSet<_> = fds
        .iter()
        .map(|f| rustix::fs::fstat(f).expect("fstat").st_ino)
        .collect();
    assert_eq!(inodes.len(), 1, "one export shared by every thread");
}
