//! Copies between host and device allocations on a stream, and device memory mapped on a
//! peer GPU, on cuda-streams' CPU fake (device memory is memfds, copies are real memcpy,
//! host registration is recorded): the context's side of "host memory meets the GPU".

use cuda_streams::{Driver, Stream, StreamPool, StreamPoolConfig};
use fastio_context::{AccessMode, Context, ContextError, MemoryKind, Server, ServerConfig};

const MIB: usize = 1 << 20;

fn cuda(device: i32) -> MemoryKind {
    MemoryKind::Cuda { device }
}

fn stream(driver: &Driver, device: i32) -> (StreamPool, Stream) {
    let pool = StreamPool::new(driver, StreamPoolConfig::new(device, 1, 0, 1, 0)).unwrap();
    let stream = pool.allocate().unwrap();
    (pool, stream)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

#[test]
fn host_bytes_round_trip_through_a_device_allocation_registered_once() {
    let driver = Driver::fake(1);
    let ctx = Context::in_process_with_device_driver(driver.clone());
    let (_pool, s) = stream(&driver, 0);
    let mut src = ctx.create(MIB).unwrap();
    src.write_bytes(0, &pattern(MIB, 7)).unwrap();
    let dev = ctx.create_in(cuda(0), MIB).unwrap();
    let out = ctx.create(MIB).unwrap();
    assert!(
        !src.is_host_registered(),
        "nothing registered before a copy"
    );

    src.copy_to_device(&driver, &dev, &s).unwrap();
    src.copy_to_device(&driver, &dev, &s).unwrap();
    assert_eq!(
        src.host_registrations(),
        1,
        "registered on the first copy only"
    );
    assert!(src.is_host_registered());
    let (ptr, out_ptr) = (src.as_ptr(), out.as_ptr());
    assert!(cuda_streams::is_host_registered(&driver, ptr, MIB));

    out.copy_from_device(&driver, &dev, &s).unwrap();
    s.synchronize().unwrap();
    assert_eq!(out.read_bytes(0, MIB).unwrap(), pattern(MIB, 7));
    assert_eq!(out.host_registrations(), 1);

    // Releasing a handle unregisters its mapping (before it is parked for reuse).
    src.release().unwrap();
    assert!(!cuda_streams::is_host_registered(&driver, ptr, MIB));
    drop(out);
    assert!(!cuda_streams::is_host_registered(&driver, out_ptr, MIB));
    dev.release().unwrap();
}

#[test]
fn a_handle_got_again_registers_its_mapping_again() {
    let driver = Driver::fake(1);
    let ctx = Context::in_process_with_device_driver(driver.clone());
    let (_pool, s) = stream(&driver, 0);
    let a = ctx.create(MIB).unwrap();
    a.publish("again").unwrap();
    let dev = ctx.create_in(cuda(0), MIB).unwrap();
    let first = ctx.get("again").unwrap();
    first.copy_to_device(&driver, &dev, &s).unwrap();
    first.release().unwrap();
    // The parked mapping may come back for the next handle: it must be registered anew.
    let second = ctx.get("again").unwrap();
    assert!(!second.is_host_registered());
    second.copy_to_device(&driver, &dev, &s).unwrap();
    assert!(cuda_streams::is_host_registered(
        &driver,
        second.as_ptr(),
        MIB
    ));
    assert_eq!(second.host_registrations(), 1);
}

#[test]
fn a_read_only_handle_is_a_source_never_a_destination() {
    let driver = Driver::fake(1);
    let server = Server::start(ServerConfig {
        device_driver: Some(driver.clone()),
        ..ServerConfig::default()
    })
    .unwrap();
    let producer = Context::connect(server.address()).unwrap();
    let consumer = Context::connect(server.address()).unwrap();
    let (_pool, s) = stream(&driver, 0);
    let mut host = producer.create(MIB).unwrap();
    host.write_bytes(0, &pattern(MIB, 3)).unwrap();
    host.publish("host-in").unwrap();
    let dev = producer.create_in(cuda(0), MIB).unwrap();
    dev.publish("dev-in").unwrap();

    let ro_host = consumer.get_with("host-in", AccessMode::ReadOnly).unwrap();
    let ro_dev = consumer.get_with("dev-in", AccessMode::ReadOnly).unwrap();
    let rw_dev = consumer.create_in(cuda(0), MIB).unwrap();
    let landing = consumer.create(MIB).unwrap();

    // A read-only host mapping is registered read-only and copied from.
    ro_host.copy_to_device(&driver, &rw_dev, &s).unwrap();
    assert!(ro_host.is_host_registered());
    assert!(matches!(
        ro_host.copy_from_device(&driver, &rw_dev, &s),
        Err(ContextError::ReadOnly)
    ));
    // A read-only device handle is a source, not a destination.
    assert!(matches!(
        landing.copy_to_device(&driver, &ro_dev, &s),
        Err(ContextError::ReadOnly)
    ));
    host.copy_to_device(&driver, &dev, &s).unwrap();
    s.synchronize().unwrap();
    landing.copy_from_device(&driver, &ro_dev, &s).unwrap();
    s.synchronize().unwrap();
    assert_eq!(landing.read_bytes(0, MIB).unwrap(), pattern(MIB, 3));
    landing.copy_from_device(&driver, &rw_dev, &s).unwrap();
    s.synchronize().unwrap();
    assert_eq!(landing.read_bytes(0, MIB).unwrap(), pattern(MIB, 3));
}

#[test]
fn copies_refuse_wrong_kinds_sizes_and_streams_of_a_gpu_without_peer_access() {
    let driver = Driver::fake(2);
    let ctx = Context::in_process_with_device_driver(driver.clone());
    let (_p0, s0) = stream(&driver, 0);
    let host = ctx.create(2 * MIB).unwrap();
    let small_host = ctx.create(MIB).unwrap();
    let dev1 = ctx.create_in(cuda(1), MIB).unwrap();

    match host.copy_to_device(&driver, &dev1, &s0) {
        Err(ContextError::LengthMismatch { expected, actual }) => {
            assert_eq!((expected, actual), (2 * MIB, MIB));
        }
        other => panic!("a device allocation smaller than the host one: {other:?}"),
    }
    // A stream of a GPU without peer access to the memory's: refused, registering nothing.
    let lonely = Driver::fake_without_peers(2);
    let ctx_lonely = Context::in_process_with_device_driver(lonely.clone());
    let (_l0, lonely_s0) = stream(&lonely, 0);
    let lonely_host = ctx_lonely.create(MIB).unwrap();
    let lonely_dev1 = ctx_lonely.create_in(cuda(1), MIB).unwrap();
    match lonely_host.copy_to_device(&lonely, &lonely_dev1, &lonely_s0) {
        Err(ContextError::Device { kind, reason }) => {
            assert_eq!(kind, cuda(1));
            assert!(reason.contains("peer"), "{reason}");
        }
        other => panic!("a stream of device 0, no peer access to device 1: {other:?}"),
    }
    assert!(
        !lonely_host.is_host_registered(),
        "a refused copy registers nothing"
    );
    assert!(matches!(
        small_host.copy_to_device(&driver, &small_host, &s0),
        Err(ContextError::NotDeviceMemory)
    ));
    assert!(matches!(
        dev1.copy_to_device(&driver, &dev1, &s0),
        Err(ContextError::NotHostMemory { .. })
    ));
}

#[test]
fn device_memory_maps_and_copies_on_a_peer_gpu_or_says_there_is_no_peer_access() {
    let driver = Driver::fake(2);
    let ctx = Context::in_process_with_device_driver(driver.clone());
    let (_p1, s1) = stream(&driver, 1);
    let mut host = ctx.create(MIB).unwrap();
    host.write_bytes(0, &pattern(MIB, 9)).unwrap();
    let dev0 = ctx.create_in(cuda(0), MIB).unwrap();
    let own = dev0.map_device(&driver).unwrap();
    let peer = dev0.map_device_on(&driver, 1).unwrap();
    assert_eq!((own.device, peer.device), (0, 1));
    assert_ne!(own.device_ptr, peer.device_ptr, "a mapping of its own");
    assert_eq!(dev0.map_device_on(&driver, 1).unwrap(), peer, "mapped once");
    // Both mappings reach the same memory (on the fake, device pointers are host
    // addresses): bytes copied in on device 0 are read through the peer's mapping.
    let (_p0, s0) = stream(&driver, 0);
    host.copy_to_device(&driver, &dev0, &s0).unwrap();
    s0.synchronize().unwrap();
    drop((_p1, s1));
    // SAFETY: the fake's device pointer is a live host mapping of MIB bytes, and the
    // copy into it is done (stream synchronised).
    let seen = unsafe { std::slice::from_raw_parts(peer.device_ptr as *const u8, MIB) };
    assert_eq!(seen, &pattern(MIB, 9)[..]);
    // A copy on a stream of the peer GPU goes through the peer's mapping.
    let (_p1, s1) = stream(&driver, 1);
    let back = ctx.create(MIB).unwrap();
    back.copy_from_device(&driver, &dev0, &s1).unwrap();
    s1.synchronize().unwrap();
    assert_eq!(back.read_bytes(0, MIB).unwrap(), pattern(MIB, 9));
    assert!(
        cuda_streams::testing::fake_calls(&driver)
            .unwrap()
            .contains(&cuda_streams::testing::FakeCall::Synchronize {
                device: 1,
                stream: Some(s1.as_raw())
            }),
        "the copy was queued on the peer's stream"
    );

    let lonely = Driver::fake_without_peers(2);
    let ctx = Context::in_process_with_device_driver(lonely.clone());
    let dev0 = ctx.create_in(cuda(0), MIB).unwrap();
    match dev0.map_device_on(&lonely, 1) {
        Err(ContextError::Device { kind, reason }) => {
            assert_eq!(kind, cuda(0));
            assert!(reason.contains("peer"), "{reason}");
        }
        other => panic!("no peer access: {other:?}"),
    }
    assert!(
        dev0.map_device(&lonely).is_ok(),
        "its own device still maps it"
    );
}
