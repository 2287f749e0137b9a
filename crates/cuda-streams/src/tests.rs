//! Unit tests of all the logic on the CPU fake backend (no driver needed).

use std::sync::Arc;

use crate::backend::Target;
use crate::backend::fake::{FakeBackend, Op};
use crate::*;

fn fake(devices: usize) -> (Arc<FakeBackend>, Driver) {
    let f = FakeBackend::new(devices);
    let d = Driver::from_backend(f.clone());
    (f, d)
}

fn pool(d: &Driver, reserved: u32, max: u32) -> StreamPool {
    StreamPool::new(d, StreamPoolConfig::new(0, 1, 0, reserved, max)).expect("pool")
}

fn op(d: &Driver, p: Option<StreamPool>) -> OperatorContext {
    let b = OperatorContext::builder("rx")
        .input("in")
        .input("in2")
        .output("out")
        .output("out2")
        .driver(d.clone());
    match p {
        Some(p) => b.pool(p),
        None => b.no_pool(),
    }
    .build()
    .expect("operator")
}

fn ts(s: &Stream) -> Target {
    s.target()
}

fn default_of(dev: i32) -> Target {
    Target {
        device: dev,
        stream: None,
    }
}

// ---- driver ----

#[test]
fn probe_without_driver_is_no_device_not_a_panic() {
    match Driver::probe() {
        Ok(d) => assert!(d.device_count() >= 1),
        Err(e) => assert!(matches!(e, CudaError::NoDevice { .. }), "{e}"),
    }
}

#[test]
fn default_pool_absent_without_gpu() {
    if Driver::probe().is_ok() {
        return; // a GPU machine: covered by the acceptance bundle
    }
    let mut o = OperatorContext::builder("rx")
        .input("in")
        .output("out")
        .build()
        .expect("build");
    assert!(o.pool().is_none());
    o.receive("in", Message::new(1)).expect("receive");
    assert_eq!(o.receive_cuda_stream("in", true, false).expect("rcs"), None);
    assert_eq!(o.allocate_cuda_stream("a"), Err(StreamError::NoPool));
    assert!(o.emit("out", ()).expect("emit").stream().is_none());
}

#[test]
fn default_pool_created_when_a_device_is_present() {
    let (_f, d) = fake(1);
    let o = OperatorContext::builder("op")
        .input("in")
        .driver(d)
        .build()
        .expect("build");
    let p = o.pool().expect("default pool");
    assert_eq!(
        p.config(),
        StreamPoolConfig {
            dev_id: 0,
            flags: StreamFlags::NON_BLOCKING,
            priority: 0,
            reserved_size: 1,
            max_size: 0
        }
    );
    assert_eq!(p.stats().created, 1);
    assert_eq!(o.default_pool_name(), "op_stream_pool");
    let (_f0, d0) = fake(0);
    let o0 = OperatorContext::builder("op")
        .driver(d0)
        .build()
        .expect("build");
    assert!(o0.pool().is_none());
}

// ---- pool ----

#[test]
fn pool_creates_reserved_streams_eagerly() {
    let (f, d) = fake(1);
    let p = pool(&d, 2, 0);
    assert_eq!(f.live_streams(), 2);
    let _a = p.allocate().expect("a");
    let _b = p.allocate().expect("b");
    assert_eq!(p.stats().created, 2);
    assert_eq!(f.live_streams(), 2);
    let _c = p.allocate().expect("c");
    assert_eq!(
        p.stats(),
        PoolStats {
            created: 3,
            in_use: 3,
            idle: 0
        }
    );
}

#[test]
fn unbounded_pool_gives_64_distinct_streams() {
    let (_f, d) = fake(1);
    let p = pool(&d, 1, 0);
    let v: Vec<_> = (0..64).map(|_| p.allocate().expect("alloc")).collect();
    let ids: std::collections::HashSet<_> = v.iter().map(Stream::id).collect();
    assert_eq!(ids.len(), 64);
}

#[test]
fn exhausted_pool_fails_then_reuses_released_stream_fifo() {
    let (_f, d) = fake(1);
    let p = pool(&d, 1, 3);
    let a = p.allocate().expect("a");
    let _b = p.allocate().expect("b");
    let _c = p.allocate().expect("c");
    assert_eq!(p.allocate(), Err(PoolError::Exhausted { capacity: 3 }));
    p.release(&a).expect("release");
    assert_eq!(p.allocate().expect("again"), a);
}

#[test]
fn fifo_order_of_released_streams() {
    let (_f, d) = fake(1);
    let p = pool(&d, 0, 0);
    let a = p.allocate().expect("a");
    let b = p.allocate().expect("b");
    p.release(&b).expect("rb");
    p.release(&a).expect("ra");
    assert_eq!(p.allocate().expect("1"), b);
    assert_eq!(p.allocate().expect("2"), a);
}

#[test]
fn max_size_below_reserved_is_clamped() {
    let (_f, d) = fake(1);
    let p = pool(&d, 2, 1);
    assert!(p.max_size_was_clamped());
    assert_eq!(p.config().max_size, 2);
    let _a = p.allocate().expect("a");
    let _b = p.allocate().expect("b");
    assert!(matches!(
        p.allocate(),
        Err(PoolError::Exhausted { capacity: 2 })
    ));
}

#[test]
fn streams_have_pool_properties_and_live_until_pool_drops() {
    let (f, d) = fake(2);
    let p = StreamPool::new(&d, StreamPoolConfig::new(1, 1, -3, 1, 0)).expect("pool");
    let s = p.allocate().expect("s");
    assert_eq!(
        (
            s.device(),
            s.query_flags().expect("f"),
            s.query_priority().expect("p")
        ),
        (1, StreamFlags(1), -3)
    );
    p.release(&s).expect("release");
    drop(s);
    assert_eq!(f.live_streams(), 1, "a released stream is not destroyed");
    drop(p);
    assert_eq!(f.live_streams(), 0, "the pool's streams go with it");
}

#[test]
fn release_of_unknown_stream_fails() {
    let (_f, d) = fake(1);
    let p1 = pool(&d, 1, 0);
    let p2 = pool(&d, 1, 0);
    let s = p1.allocate().expect("s");
    assert_eq!(p2.release(&s), Err(PoolError::UnknownStream(s.id().0)));
    p1.release(&s).expect("release");
    assert_eq!(p1.release(&s), Err(PoolError::UnknownStream(s.id().0)));
}

#[test]
fn pool_on_missing_device_fails() {
    let (_f, d) = fake(1);
    let e = StreamPool::new(&d, StreamPoolConfig::new(3, 1, 0, 1, 0)).expect_err("device 3");
    assert_eq!(
        e,
        CudaError::InvalidDevice {
            device: 3,
            count: 1
        }
    );
}

#[test]
fn driver_failure_creating_a_stream_is_an_error() {
    let (f, d) = fake(1);
    let p = pool(&d, 0, 0);
    f.set_fail_creates(true);
    assert!(matches!(p.allocate(), Err(PoolError::Cuda(_))));
    assert_eq!(p.stats().in_use, 0);
}

#[test]
fn concurrent_allocate_release_never_shares_a_stream() {
    let (_f, d) = fake(1);
    let p = pool(&d, 1, 4);
    let holders = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    std::thread::scope(|sc| {
        for _ in 0..4 {
            let (p, holders) = (p.clone(), holders.clone());
            sc.spawn(move || {
                for _ in 0..2000 {
                    let s = p.allocate().expect("capacity equals thread count");
                    assert!(
                        holders.lock().expect("lock").insert(s.id()),
                        "stream handed out twice"
                    );
                    assert!(holders.lock().expect("lock").remove(&s.id()));
                    p.release(&s).expect("release");
                }
            });
        }
    });
    assert_eq!(p.stats().in_use, 0);
    assert!(p.stats().created <= 4);
}

// ---- receive_cuda_stream with a pool ----

#[test]
fn internal_stream_is_allocated_once_and_released_at_stop() {
    let (_f, d) = fake(1);
    let p = pool(&d, 1, 0);
    let mut o = op(&d, Some(p.clone()));
    o.receive("in", Message::new(())).expect("r");
    let s1 = o
        .receive_cuda_stream("in", true, false)
        .expect("1")
        .expect("stream");
    o.receive("in2", Message::new(())).expect("r");
    let s2 = o
        .receive_cuda_stream("in2", true, false)
        .expect("2")
        .expect("stream");
    o.begin_compute();
    o.receive("in", Message::new(())).expect("r");
    let s3 = o
        .receive_cuda_stream("in", true, false)
        .expect("3")
        .expect("stream");
    assert!(s1 == s2 && s2 == s3);
    assert_eq!(o.allocate_cuda_stream(INTERNAL_STREAM).expect("memo"), s1);
    assert_eq!(p.stats().in_use, 1);
    o.stop().expect("stop");
    assert_eq!(p.stats().in_use, 0);
}

#[test]
fn internal_stream_waits_on_every_input_stream_without_host_sync() {
    let (f, d) = fake(1);
    let up = pool(&d, 0, 0);
    let (a, b) = (up.allocate().expect("a"), up.allocate().expect("b"));
    let mut o = op(&d, Some(pool(&d, 1, 0)));
    o.receive("in:0", Message::new(()).with_stream(Some(a.clone())))
        .expect("r");
    o.receive("in:1", Message::new(())).expect("r");
    o.receive("in:2", Message::new(()).with_stream(Some(b.clone())))
        .expect("r");
    f.clear_log();
    let s = o
        .receive_cuda_stream("in", true, false)
        .expect("rcs")
        .expect("stream");
    assert_eq!(f.waits(), vec![(ts(&a), ts(&s)), (ts(&b), ts(&s))]);
    assert!(f.log().contains(&Op::SetCurrent(0)));
}

#[test]
fn synchronizing_the_target_with_itself_is_skipped() {
    let (f, d) = fake(1);
    let p = pool(&d, 1, 0);
    let mut o = op(&d, Some(p));
    let t = o.allocate_cuda_stream("t").expect("t");
    f.clear_log();
    o.synchronize_streams(&[Some(t.clone())], Some(&t))
        .expect("sync");
    assert!(f.waits().is_empty());
}

#[test]
fn sync_to_default_makes_the_default_stream_wait_on_internal() {
    let (f, d) = fake(1);
    let up = pool(&d, 1, 0);
    let a = up.allocate().expect("a");
    let mut o = op(&d, Some(pool(&d, 1, 0)));
    o.receive("in", Message::new(()).with_stream(Some(a.clone())))
        .expect("r");
    f.clear_log();
    let s = o
        .receive_cuda_stream("in", true, true)
        .expect("rcs")
        .expect("s");
    assert_eq!(f.waits(), vec![(ts(&a), ts(&s)), (ts(&s), default_of(0))]);
}

#[test]
fn internal_stream_is_emitted_on_every_output_port() {
    let (_f, d) = fake(1);
    let mut o = op(&d, Some(pool(&d, 1, 0)));
    o.receive("in", Message::new(())).expect("r");
    let s = o
        .receive_cuda_stream("in", true, false)
        .expect("rcs")
        .expect("s");
    assert_eq!(o.emit("out", 1).expect("e").stream(), Some(&s));
    assert_eq!(o.emit("out2", 2).expect("e").stream(), Some(&s));
    o.begin_compute();
    assert_eq!(
        o.emit("out", 3).expect("e").stream(),
        None,
        "emission is per compute"
    );
}

// ---- receive_cuda_stream without a pool ----

#[test]
fn no_pool_returns_first_stream_and_keeps_it_for_other_ports() {
    let (f, d) = fake(1);
    let up = pool(&d, 0, 0);
    let (a, b, c) = (
        up.allocate().expect("a"),
        up.allocate().expect("b"),
        up.allocate().expect("c"),
    );
    let mut o = op(&d, None);
    o.receive("in", Message::new(())).expect("r");
    o.receive("in", Message::new(()).with_stream(Some(a.clone())))
        .expect("r");
    o.receive("in", Message::new(()).with_stream(Some(b.clone())))
        .expect("r");
    o.receive("in2", Message::new(()).with_stream(Some(c.clone())))
        .expect("r");
    f.clear_log();
    let s = o.receive_cuda_stream("in", true, false).expect("rcs");
    assert_eq!(s.as_ref(), Some(&a));
    assert_eq!(f.waits(), vec![(ts(&b), ts(&a))]);
    assert_eq!(o.emit("out", ()).expect("e").stream(), Some(&a));
    f.clear_log();
    // DOC semantics: the second port's streams are ordered before the first choice, which is
    // returned again (Holoscan's code would return `c`).
    assert_eq!(
        o.receive_cuda_stream("in2", true, false)
            .expect("rcs2")
            .as_ref(),
        Some(&a)
    );
    assert_eq!(f.waits(), vec![(ts(&c), ts(&a))]);
}

#[test]
fn no_pool_single_stream_orders_default_stream_after_it() {
    let (f, d) = fake(1);
    let a = pool(&d, 1, 0).allocate().expect("a");
    let mut o = op(&d, None);
    o.receive("in", Message::new(()).with_stream(Some(a.clone())))
        .expect("r");
    f.clear_log();
    assert_eq!(
        o.receive_cuda_stream("in", false, false)
            .expect("rcs")
            .as_ref(),
        Some(&a)
    );
    assert_eq!(f.waits(), vec![(ts(&a), default_of(0))]);
}

#[test]
fn no_pool_no_stream_gives_default_and_emits_nothing() {
    let (f, d) = fake(1);
    let mut o = op(&d, None);
    o.receive("in", Message::new(())).expect("r");
    assert_eq!(o.receive_cuda_stream("in", true, false).expect("rcs"), None);
    assert!(o.emit("out", ()).expect("e").stream().is_none());
    assert!(f.waits().is_empty());
}

#[test]
fn allocate_false_with_pool_passes_the_upstream_stream_through() {
    let (_f, d) = fake(1);
    let a = pool(&d, 1, 0).allocate().expect("a");
    let p = pool(&d, 1, 0);
    let mut o = op(&d, Some(p.clone()));
    o.receive("in", Message::new(()).with_stream(Some(a.clone())))
        .expect("r");
    assert_eq!(
        o.receive_cuda_stream("in", false, false)
            .expect("rcs")
            .as_ref(),
        Some(&a)
    );
    assert_eq!(p.stats().in_use, 0);
}

#[test]
fn receive_not_called_warns_and_synchronises_no_input() {
    let (f, d) = fake(1);
    let mut o = op(&d, Some(pool(&d, 1, 0)));
    f.clear_log();
    let s = o
        .receive_cuda_stream("in", true, false)
        .expect("rcs")
        .expect("s");
    assert_eq!(
        o.take_warnings(),
        vec![StreamWarning::ReceiveNotCalled { port: "in".into() }]
    );
    // Holoscan's code orders the legacy default stream after the internal one here; no input waits.
    assert_eq!(f.waits(), vec![(ts(&s), default_of(0))]);
    let mut o2 = op(&d, None);
    assert_eq!(
        o2.receive_cuda_stream("in", true, false).expect("rcs"),
        None
    );
    assert_eq!(o2.take_warnings().len(), 1);
}

#[test]
fn unknown_ports_are_errors() {
    let (_f, d) = fake(1);
    let mut o = op(&d, None);
    assert!(matches!(
        o.receive("nope", Message::new(())),
        Err(StreamError::UnknownPort { .. })
    ));
    assert!(matches!(
        o.receive_cuda_stream("nope", true, false),
        Err(StreamError::UnknownPort { .. })
    ));
    assert!(matches!(
        o.receive_cuda_streams("nope"),
        Err(StreamError::UnknownPort { .. })
    ));
    assert!(matches!(
        o.emit("nope", ()),
        Err(StreamError::UnknownPort { .. })
    ));
}

// ---- receive_cuda_streams ----

#[test]
fn receive_cuda_streams_lists_one_entry_per_message_across_connections() {
    let (f, d) = fake(1);
    let up = pool(&d, 0, 0);
    let (a, b) = (up.allocate().expect("a"), up.allocate().expect("b"));
    let p = pool(&d, 1, 0);
    let mut o = op(&d, Some(p.clone()));
    assert_eq!(
        o.receive_cuda_streams("in"),
        Err(StreamError::NeverReceived("in".into()))
    );
    o.receive("in:0", Message::new(()).with_stream(Some(a.clone())))
        .expect("r");
    o.receive("in:1", Message::new(())).expect("r");
    o.receive("in:2", Message::new(()).with_stream(Some(b.clone())))
        .expect("r");
    f.clear_log();
    assert_eq!(
        o.receive_cuda_streams("in").expect("v"),
        vec![Some(a), None, Some(b)]
    );
    assert!(f.log().is_empty(), "no CUDA call");
    assert_eq!(p.stats().in_use, 0, "no allocation");
    assert!(
        o.emit("out", ()).expect("e").stream().is_none(),
        "no emission"
    );
    o.begin_compute();
    assert_eq!(
        o.receive_cuda_streams("in").expect("v"),
        vec![],
        "entries are per compute"
    );
}

// ---- execution context ----

#[test]
fn named_allocations_are_memoised_and_not_emitted() {
    let (_f, d) = fake(1);
    let mut o = op(&d, Some(pool(&d, 1, 0)));
    let a = o.allocate_cuda_stream("a").expect("a");
    assert_eq!(o.allocate_cuda_stream("a").expect("a2"), a);
    let b = o.allocate_cuda_stream("b").expect("b");
    assert_ne!(a, b);
    assert!(o.emit("out", ()).expect("e").stream().is_none());
}

#[test]
fn exhausted_pool_falls_back_to_the_no_pool_path() {
    let (_f, d) = fake(1);
    let p = pool(&d, 1, 1);
    let _held = p.allocate().expect("held");
    let up = pool(&d, 1, 0).allocate().expect("up");
    let mut o = op(&d, Some(p));
    assert_eq!(
        o.allocate_cuda_stream("x"),
        Err(StreamError::PoolExhausted { capacity: 1 })
    );
    o.receive("in", Message::new(()).with_stream(Some(up.clone())))
        .expect("r");
    assert_eq!(
        o.receive_cuda_stream("in", true, false).expect("rcs"),
        Some(up)
    );
    assert!(matches!(
        o.take_warnings()[..],
        [StreamWarning::AllocationFellBack { .. }]
    ));
}

#[test]
fn device_from_stream_only_for_managed_streams() {
    let (_f, d) = fake(2);
    let p1 = StreamPool::new(&d, StreamPoolConfig::new(1, 1, 0, 1, 0)).expect("p1");
    let foreign = p1.allocate().expect("foreign");
    let received = p1.allocate().expect("received");
    let mut o = op(&d, Some(p1));
    let mine = o.allocate_cuda_stream("m").expect("m");
    o.receive("in", Message::new(()).with_stream(Some(received.clone())))
        .expect("r");
    assert_eq!(o.device_from_stream(Some(&mine)), Ok(1));
    assert_eq!(o.device_from_stream(Some(&received)), Ok(1));
    assert_eq!(
        o.device_from_stream(Some(&foreign)),
        Err(StreamError::NotManaged(foreign.id().0))
    );
    assert_eq!(
        o.device_from_stream(None),
        Err(StreamError::DefaultStreamNotManaged)
    );
}

#[test]
fn synchronize_streams_makes_target_wait_on_others_only() {
    let (f, d) = fake(1);
    let p = pool(&d, 0, 0);
    let (a, t) = (p.allocate().expect("a"), p.allocate().expect("t"));
    let mut o = op(&d, None);
    f.clear_log();
    o.synchronize_streams(&[None, Some(a.clone()), Some(t.clone())], Some(&t))
        .expect("sync");
    assert_eq!(f.waits(), vec![(ts(&a), ts(&t))]);
}

// ---- emission ----

#[test]
fn set_cuda_stream_attaches_to_that_port_only() {
    let (_f, d) = fake(1);
    let mut o = op(&d, Some(pool(&d, 1, 0)));
    o.receive("in", Message::new(())).expect("r");
    let internal = o
        .receive_cuda_stream("in", true, false)
        .expect("rcs")
        .expect("s");
    let x = o.allocate_cuda_stream("x").expect("x");
    o.set_cuda_stream(&x, "out").expect("set");
    assert_eq!(o.emit("out", ()).expect("e").stream(), Some(&x));
    assert_eq!(o.emit("out2", ()).expect("e").stream(), Some(&internal));
    let y = o.allocate_cuda_stream("y").expect("y");
    o.set_cuda_stream(&y, "out").expect("override");
    assert_eq!(o.emit("out", ()).expect("e").stream(), Some(&y));
}

#[test]
fn set_cuda_stream_refuses_unmanaged_streams() {
    let (_f, d) = fake(1);
    let foreign = pool(&d, 1, 0).allocate().expect("f");
    let mut o = op(&d, Some(pool(&d, 1, 0)));
    assert_eq!(
        o.set_cuda_stream(&foreign, "out"),
        Err(StreamError::UnmanagedStream(foreign.id().0))
    );
    assert!(o.emit("out", ()).expect("e").stream().is_none());
}

// ---- multi-GPU ----

#[test]
fn one_event_per_device_for_cross_device_inputs() {
    let (f, d) = fake(2);
    let up = StreamPool::new(&d, StreamPoolConfig::new(1, 1, 0, 1, 0)).expect("dev1");
    let a1 = up.allocate().expect("a1");
    let mut o = op(&d, Some(pool(&d, 1, 0)));
    o.receive("in", Message::new(()).with_stream(Some(a1.clone())))
        .expect("r");
    f.clear_log();
    let s0 = o
        .receive_cuda_stream("in", true, true)
        .expect("rcs")
        .expect("s0");
    assert_eq!(s0.device(), 0);
    assert_eq!(
        f.waits(),
        vec![(ts(&a1), ts(&s0)), (ts(&s0), default_of(0))]
    );
    let created: Vec<_> = f
        .log()
        .into_iter()
        .filter(|o| matches!(o, Op::CreateEvent { .. }))
        .collect();
    assert_eq!(
        created.len(),
        2,
        "one event for device 1, one for device 0: {created:?}"
    );
}

// ---- condition ----

#[test]
fn condition_waits_for_the_stream_then_is_ready_and_notifies() {
    let (f, d) = fake(1);
    let s = pool(&d, 1, 0).allocate().expect("s");
    let q = MessageQueue::new("in");
    let mut c = StreamCondition::new().receiver(q.clone());
    assert_eq!(c.check().expect("c"), SchedulingStatus::Wait);
    q.push(Message::new(1).with_stream(Some(s.clone())));
    assert_eq!(c.check().expect("c"), SchedulingStatus::WaitEvent);
    assert_eq!(c.check().expect("c"), SchedulingStatus::WaitEvent);
    let host_fns = f
        .log()
        .iter()
        .filter(|o| matches!(o, Op::HostFn(_)))
        .count();
    assert_eq!(host_fns, 1, "one host function per message");
    let n = c.notifier();
    f.complete(s.inner.raw);
    assert_eq!(n.generation(), 1);
    assert_eq!(c.check().expect("c"), SchedulingStatus::Ready);
    assert!(q.pop().is_some());
    assert_eq!(
        c.check().expect("c"),
        SchedulingStatus::Wait,
        "reset after consumption"
    );
}

#[test]
fn condition_edge_cases() {
    let (f, d) = fake(1);
    let s = pool(&d, 1, 0).allocate().expect("s");
    let q = MessageQueue::new("in");
    q.push(Message::new(0));
    let mut c = StreamCondition::new().receiver(q.clone());
    assert_eq!(
        c.check().expect("c"),
        SchedulingStatus::Ready,
        "no stream: ready at once"
    );
    q.push(Message::new(1).with_stream(Some(s.clone())));
    assert_eq!(
        c.check().expect("c"),
        SchedulingStatus::WaitEvent,
        "all messages inspected"
    );
    let mut first_only = StreamCondition::new()
        .receiver(q.clone())
        .check_all_messages(false);
    assert_eq!(first_only.check().expect("c"), SchedulingStatus::Ready);
    f.complete(s.inner.raw);
    assert_eq!(c.check().expect("c"), SchedulingStatus::Ready);
}

// ---- interprocess events ----

#[test]
fn ipc_handle_roundtrip_and_wait_in_receive_cuda_stream() {
    let (f, d) = fake(1);
    let p = pool(&d, 1, 0);
    let producer = p.allocate().expect("p");
    let ev = InterprocessEvent::new(&d, 0).expect("ev");
    ev.record(&producer).expect("record");
    let h = ev.export().expect("export");
    let bytes = h.as_bytes().to_vec();
    let back = IpcEventHandle::from_bytes(&bytes).expect("64 bytes");
    assert!(IpcEventHandle::from_bytes(&bytes[..10]).is_none());
    let imported = Arc::new(InterprocessEvent::import(&d, 0, &back).expect("import"));
    let mut o = op(&d, Some(pool(&d, 1, 0)));
    o.receive("in", Message::new(()).with_event(imported))
        .expect("r");
    f.clear_log();
    let s = o
        .receive_cuda_stream("in", true, false)
        .expect("rcs")
        .expect("s");
    assert!(
        f.log()
            .iter()
            .any(|op| matches!(op, Op::Wait { target, .. } if *target == ts(&s)))
    );
}

#[test]
fn ipc_event_refuses_a_stream_of_another_device() {
    let (_f, d) = fake(2);
    let s1 = StreamPool::new(&d, StreamPoolConfig::new(1, 1, 0, 1, 0))
        .expect("p")
        .allocate()
        .expect("s");
    let ev = InterprocessEvent::new(&d, 0).expect("ev");
    assert_eq!(
        ev.record(&s1),
        Err(CudaError::DeviceMismatch {
            event_device: 0,
            stream_device: 1
        })
    );
}

#[test]
fn handles_cross_threads() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<StreamPool>();
    send_sync::<Stream>();
    send_sync::<Driver>();
    send_sync::<InterprocessEvent>();
    send_sync::<MessageQueue<u32>>();
    send::<OperatorContext>();
    send::<StreamCondition>();
    send::<Message<u32>>();
}

#[test]
fn a_stream_of_another_library_is_used_on_its_own_device_and_never_destroyed_here() {
    let (f, d) = fake(2);
    let p = StreamPool::new(&d, StreamPoolConfig::new(1, 1, 0, 1, 0)).expect("pool");
    let theirs = p.allocate().unwrap();
    // SAFETY: a live stream of this process (the fake's), kept alive by `p` below.
    let ours = unsafe { Stream::from_raw(&d, theirs.as_raw(), 0) }.unwrap();
    assert_eq!((ours.device(), ours.as_raw()), (1, theirs.as_raw()));
    assert_ne!(ours.id(), theirs.id());
    ours.synchronize().unwrap();
    assert!(f.log().contains(&Op::Synchronize(theirs.target())));
    assert!(matches!(p.release(&ours), Err(PoolError::UnknownStream(_))));
    drop(ours);
    assert_eq!(f.live_streams(), 1, "not destroyed by the foreign handle");
    assert!(
        !f.log()
            .contains(&Op::DestroyStream(theirs.target().stream.unwrap()))
    );

    // The default streams belong to the device the caller names.
    // SAFETY: the default streams need no handle to stay alive.
    let legacy = unsafe { Stream::from_raw(&d, LEGACY_DEFAULT_STREAM, 1) }.unwrap();
    assert_eq!(legacy.device(), 1);
    // SAFETY: as above.
    let bad = unsafe { Stream::from_raw(&d, PER_THREAD_DEFAULT_STREAM, 7) }.unwrap_err();
    assert!(
        matches!(bad, CudaError::InvalidDevice { device: 7, .. }),
        "{bad}"
    );
    // SAFETY: 0 is refused before the driver sees it.
    let zero = unsafe { Stream::from_raw(&d, 0, 0) }.unwrap_err();
    assert!(zero.to_string().contains("stream 0 is ambiguous"), "{zero}");
    // A handle the driver does not know.
    // SAFETY: the fake checks its handles instead of dereferencing them.
    let unknown = unsafe { Stream::from_raw(&d, 9999, 0) }.unwrap_err();
    assert!(unknown.to_string().contains("cuStreamGetCtx"), "{unknown}");
}
