//! Device memory as a kind of the context's memory: made on a device, handed out as a
//! descriptor over the socket, counted per connection, kept warm per device; host-only
//! calls refused. The GPU calls run on cuda-streams' CPU fake, whose device memory is
//! memfds, so the context's logic runs for real without a GPU.

use cuda_streams::Driver;
use fastio_context::{
    AccessMode, Context, ContextError, CreateError, MemoryKind, RequestError, Server, ServerConfig,
};

const MIB: usize = 1 << 20;

fn cuda(device: i32) -> MemoryKind {
    MemoryKind::Cuda { device }
}

fn server(driver: &Driver) -> Server {
    Server::start(ServerConfig {
        device_driver: Some(driver.clone()),
        ..ServerConfig::default()
    })
    .unwrap()
}

#[test]
fn device_memory_crosses_the_socket_as_a_descriptor_and_maps_on_its_device() {
    let driver = Driver::fake(2);
    let server = server(&driver);
    let producer = Context::connect(server.address()).unwrap();
    let consumer = Context::connect(server.address()).unwrap();
    let a = producer.create_in(cuda(1), 3 * MIB).unwrap();
    assert_eq!(a.kind(), cuda(1));
    assert_eq!(a.size(), 3 * MIB);
    let mine = a.map_device(&driver).unwrap();
    assert_eq!(
        (mine.device, mine.size, mine.read_only),
        (1, 3 * MIB, false)
    );
    assert_eq!(a.map_device(&driver).unwrap(), mine, "mapped once");
    a.publish("on-gpu").unwrap();

    let b = consumer.get_with("on-gpu", AccessMode::ReadOnly).unwrap();
    assert_eq!(b.kind(), cuda(1));
    let theirs = b.map_device(&driver).unwrap();
    assert_eq!((theirs.device, theirs.read_only), (1, true));

    let stats = producer.stats().unwrap();
    assert_eq!(stats.resources, 1);
    // Rounded up to the device's granularity (2 MiB on the fake).
    assert_eq!(stats.device_live_bytes, 4 * MIB as u64);
    assert_eq!(stats.live_bytes, 0, "no host memory was used");
    let listed = stats
        .segments
        .iter()
        .find(|s| s.resource.is_some())
        .unwrap();
    assert_eq!(listed.kind, cuda(1));
    let listing = producer.inspect().unwrap();
    assert_eq!(listing.publications[0].kind, cuda(1));
}

#[test]
fn host_only_calls_on_device_memory_are_refused_clearly() {
    let driver = Driver::fake(1);
    let ctx = Context::in_process_with_device_driver(driver);
    let mut a = ctx.create_in(cuda(0), MIB).unwrap();
    assert!(a.as_ptr().is_null());
    for e in [
        a.read_bytes(0, 1).unwrap_err(),
        a.write_bytes(0, &[1]).unwrap_err(),
        a.as_mut_ptr().unwrap_err(),
    ] {
        assert!(
            matches!(e, ContextError::NotHostMemory { kind } if kind == cuda(0)),
            "{e}"
        );
        assert!(e.to_string().contains("cuda:0"), "{e}");
    }
    // And the other way round.
    let h = ctx.create(8).unwrap();
    assert_eq!(h.kind(), MemoryKind::Host);
    assert!(matches!(
        h.map_device(&Driver::fake(1)).unwrap_err(),
        ContextError::NotDeviceMemory
    ));
}

#[test]
fn device_memory_is_counted_per_connection_and_pooled_warm_per_device() {
    let driver = Driver::fake(2);
    let server = server(&driver);
    let holder = Context::connect(server.address()).unwrap();
    let watcher = Context::connect(server.address()).unwrap();
    {
        let producer = Context::connect(server.address()).unwrap();
        let a = producer.create_in(cuda(0), 4 * MIB).unwrap();
        a.publish("volume").unwrap();
        let held = holder.get("volume").unwrap();
        held.map_device(&driver).unwrap();
        a.free().unwrap();
        // The producer goes (its connection closes, as a killed process's would): the
        // holder's handle keeps the memory.
        drop(producer);
        let s = watcher.stats().unwrap();
        assert_eq!((s.resources, s.device_live_bytes), (1, 4 * MIB as u64));
        assert!(held.map_device(&driver).is_ok());
    }
    // The holder lets go: nothing is live, and the memory is kept warm for its device.
    drop(holder);
    let s = wait_for(&watcher, |s| s.resources == 0);
    assert_eq!(s.device_live_bytes, 0);
    assert_eq!(
        (s.device_pooled, s.device_pooled_bytes),
        (1, 4 * MIB as u64)
    );
    // Another device never takes it; the same device does.
    let other = watcher.create_in(cuda(1), 4 * MIB).unwrap();
    assert_eq!(watcher.stats().unwrap().device_pooled, 1);
    let again = watcher.create_in(cuda(0), 4 * MIB).unwrap();
    let s = watcher.stats().unwrap();
    assert_eq!(s.device_pooled, 0);
    drop((other, again));
}

#[test]
fn a_device_the_machine_lacks_is_a_clear_refusal() {
    let server = server(&Driver::fake(1));
    let ctx = Context::connect(server.address()).unwrap();
    let e = ctx.create_in(cuda(5), MIB).unwrap_err();
    assert!(
        matches!(
            &e,
            ContextError::Refused(RequestError::Create(CreateError::Device { memory, .. }))
                if *memory == cuda(5)
        ),
        "{e}"
    );
    assert!(e.to_string().contains("cuda:5"), "{e}");
}

#[test]
fn without_a_cuda_driver_a_device_create_is_refused_not_a_panic() {
    // The machine's own driver: absent in CI (a refusal); on a GPU machine it is made.
    let ctx = Context::in_process();
    match ctx.create_in(cuda(0), MIB) {
        Ok(a) => assert_eq!(a.kind(), cuda(0)),
        Err(e) => assert!(
            matches!(
                e,
                ContextError::Refused(RequestError::Create(CreateError::Device { .. }))
            ),
            "{e}"
        ),
    }
}

/// Stats once `done` holds; the server hears of a closed connection on its own thread.
fn wait_for(ctx: &Context, done: impl Fn(&fastio_context::Stats) -> bool) -> fastio_context::Stats {
    for _ in 0..2000 {
        let s = ctx.stats().unwrap();
        if done(&s) {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("the server never let go: {:?}", ctx.stats().unwrap());
}
