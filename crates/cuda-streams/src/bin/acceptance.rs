//! `cuda-streams-acceptance`: the 25 acceptance scenarios of Holoscan's stream semantics, the
//! cross-process event test, device memory across processes (scenarios 27-32: hand-over by
//! descriptor, kill -9 of the producer, read-only and peer access, host registration, a
//! kernel's output ordered by the carried event) and the
//! benchmarks, on a real GPU. Built by `cargo xtask gpu-test`
//! and run where there is no Rust toolchain.
//!
//! Usage: `cuda-streams-acceptance [test|bench|all] [--only 27,32]` (default `all`). Prints a pass/fail table
//! and, with `--out DIR` (or the `OUT` environment variable), writes `cuda-streams-results.md`
//! there. Exit status 0 when every scenario passed or was skipped, 1 on a failure, 2 without a
//! GPU. `ipc-child HEX` is the child half of the cross-process test; `vmm-reader`, `vmm-producer`,
//! `vmm-holder`, `vmm-ordered`, `ro-probe` and `handover-child` are the other processes of
//! scenarios 27-32 and
//! of the hand-over benchmark; `fake-import FD SIZE` is the child of the CPU fake's cross-process
//! test (no GPU needed).

use std::collections::HashSet;
use std::fmt::Display;
use std::io::{BufRead, BufReader, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cuda_streams::testing::{BareEvent, HostWord, create_destroy_stream, synchronize_default};
use cuda_streams::{
    CudaError, Driver, InterprocessEvent, IpcEventHandle, Message, MessageQueue, OperatorContext,
    PoolError, SchedulingStatus, Stream, StreamCondition, StreamError, StreamFlags, StreamPool,
    StreamPoolConfig, StreamWarning,
};

/// A scenario's outcome.
enum Outcome {
    Pass(String),
    Fail(String),
    Skip(String),
}

type R = Result<String, String>;

trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T, String>;
}
impl<T, E: Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}
impl<T> Ctx<T> for Option<T> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.ok_or_else(|| format!("{what}: none"))
    }
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

#[path = "acceptance/memory.rs"]
mod memory;

const GATE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a gated stream is watched to show that it does not run ahead.
const HOLD: Duration = Duration::from_millis(100);

fn wait_until(mut f: impl FnMut() -> bool, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    f()
}

fn nb_pool(d: &Driver, dev: i32, reserved: u32, max: u32) -> Result<StreamPool, String> {
    StreamPool::new(d, StreamPoolConfig::new(dev, 1, 0, reserved, max)).ctx("pool")
}

fn operator(d: &Driver, pool: Option<StreamPool>) -> Result<OperatorContext, String> {
    let b = OperatorContext::builder("rx")
        .input("in")
        .input("in2")
        .output("out")
        .output("out2")
        .driver(d.clone());
    match pool {
        Some(p) => b.pool(p),
        None => b.no_pool(),
    }
    .build()
    .ctx("operator")
}

/// A stream blocked on the GPU until `gate` is opened, and a marker that a stream writes when it
/// gets past everything queued before the write.
struct Gate {
    gate: HostWord,
    marker: HostWord,
}

impl Gate {
    fn new(d: &Driver) -> Result<Gate, String> {
        Ok(Gate {
            gate: HostWord::new(d).ctx("gate word")?,
            marker: HostWord::new(d).ctx("marker word")?,
        })
    }
    fn block(&self, s: &Stream) -> Result<(), String> {
        self.gate
            .gpu_wait_geq(Some(s), s.device(), 1)
            .ctx("cuStreamWaitValue32")
    }
    fn mark(&self, s: Option<&Stream>, dev: i32, v: u32) -> Result<(), String> {
        self.marker.gpu_write(s, dev, v).ctx("cuStreamWriteValue32")
    }
    /// The marker must stay below `v` while the gate is closed, then reach `v` once it opens.
    fn held_then_released(&self, v: u32) -> Result<(), String> {
        std::thread::sleep(HOLD);
        ensure!(
            self.marker.get() < v,
            "the dependent work ran while the gate was closed"
        );
        self.gate.set(1);
        ensure!(
            wait_until(|| self.marker.get() >= v, GATE_TIMEOUT),
            "the dependent work never ran"
        );
        Ok(())
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t0 = Instant::now();
    let r = f();
    (r, t0.elapsed())
}

// ---------------------------------------------------------------- pool

fn s01(d: &Driver) -> R {
    let p = nb_pool(d, 0, 2, 0)?;
    ensure!(
        p.stats().created == 2,
        "created {} at init",
        p.stats().created
    );
    let a = p.allocate().ctx("a")?;
    let b = p.allocate().ctx("b")?;
    ensure!(
        p.stats().created == 2,
        "allocations created streams: {:?}",
        p.stats()
    );
    a.query_flags().ctx("live a")?;
    b.query_flags().ctx("live b")?;
    Ok(format!("{:?}", p.stats()))
}

fn s02(d: &Driver) -> R {
    let p = nb_pool(d, 0, 1, 0)?;
    let v: Vec<_> = (0..64)
        .map(|_| p.allocate())
        .collect::<Result<_, _>>()
        .ctx("allocate")?;
    let ids: HashSet<_> = v.iter().map(Stream::id).collect();
    let raws: HashSet<_> = v.iter().map(Stream::as_raw).collect();
    ensure!(
        ids.len() == 64 && raws.len() == 64,
        "not distinct: {} ids, {} handles",
        ids.len(),
        raws.len()
    );
    Ok("64 distinct driver streams".into())
}

fn s03(d: &Driver) -> R {
    let p = nb_pool(d, 0, 1, 3)?;
    let a = p.allocate().ctx("1")?;
    let _b = p.allocate().ctx("2")?;
    let _c = p.allocate().ctx("3")?;
    match p.allocate() {
        Err(PoolError::Exhausted { capacity: 3 }) => {}
        other => return Err(format!("4th allocation: {other:?}")),
    }
    p.release(&a).ctx("release")?;
    let again = p.allocate().ctx("after release")?;
    ensure!(
        again == a && again.as_raw() == a.as_raw(),
        "not the released stream"
    );
    Ok("4th fails with Exhausted; released stream handed out again".into())
}

fn s04(d: &Driver) -> R {
    let p = StreamPool::new(d, StreamPoolConfig::new(0, 1, 0, 2, 1)).ctx("pool")?;
    ensure!(
        p.config().max_size == 2 && p.max_size_was_clamped(),
        "max_size {}",
        p.config().max_size
    );
    Ok("max_size 1 -> 2, warning logged".into())
}

fn s05(d: &Driver) -> R {
    let mut notes = Vec::new();
    for (flags, prio) in [(1u32, -1i32), (0, 0)] {
        let p = StreamPool::new(d, StreamPoolConfig::new(0, flags, prio, 1, 0)).ctx("pool")?;
        let s = p.allocate().ctx("s")?;
        let f = s.query_flags().ctx("cuStreamGetFlags")?;
        let pr = s.query_priority().ctx("cuStreamGetPriority")?;
        ensure!(s.device() == 0, "device {}", s.device());
        ensure!(
            f == StreamFlags(flags) && pr == prio,
            "asked flags {flags} prio {prio}, got {f:?} {pr}"
        );
        p.release(&s).ctx("release")?;
        drop(s);
        let again = p.allocate().ctx("again")?;
        again.query_flags().ctx("released stream is still alive")?;
        notes.push(format!("flags {flags} prio {prio}"));
    }
    Ok(notes.join(", "))
}

// ---------------------------------------------------------------- receive_cuda_stream

fn s06(d: &Driver) -> R {
    let p = nb_pool(d, 0, 1, 0)?;
    let mut o = operator(d, Some(p.clone()))?;
    o.receive("in", Message::new(())).ctx("receive")?;
    let a = o
        .receive_cuda_stream("in", true, false)
        .ctx("rcs")?
        .ctx("stream")?;
    o.receive("in2", Message::new(())).ctx("receive")?;
    let b = o
        .receive_cuda_stream("in2", true, false)
        .ctx("rcs")?
        .ctx("stream")?;
    o.begin_compute();
    o.receive("in", Message::new(())).ctx("receive")?;
    let c = o
        .receive_cuda_stream("in", true, false)
        .ctx("rcs")?
        .ctx("stream")?;
    ensure!(a == b && b == c, "different internal streams");
    ensure!(p.stats().in_use == 1, "in use {}", p.stats().in_use);
    o.stop().ctx("stop")?;
    ensure!(
        p.stats().in_use == 0,
        "in use after stop {}",
        p.stats().in_use
    );
    Ok("same stream over 3 calls / 2 computes; in_use 1 -> 0 at stop".into())
}

fn s07(d: &Driver) -> R {
    let up = nb_pool(d, 0, 2, 0)?;
    let s1 = up.allocate().ctx("s1")?;
    let other = up.allocate().ctx("control")?;
    let g = Gate::new(d)?;
    g.block(&s1)?;
    let mut o = operator(d, Some(nb_pool(d, 0, 1, 0)?))?;
    o.receive("in", Message::new(()).with_stream(Some(s1.clone())))
        .ctx("receive")?;
    let (r, took) = timed(|| o.receive_cuda_stream("in", true, false));
    let internal = r.ctx("rcs")?.ctx("stream")?;
    g.mark(Some(&internal), 0, 1)?;
    // Negative control: a stream that was not synchronised runs while S1 is blocked.
    let control = HostWord::new(d).ctx("control word")?;
    control.gpu_write(Some(&other), 0, 1).ctx("control write")?;
    ensure!(
        wait_until(|| control.get() == 1, GATE_TIMEOUT),
        "control stream did not run"
    );
    g.held_then_released(1)?;
    internal.synchronize().ctx("sync")?;
    Ok(format!(
        "internal waited for S1; call took {:.1} us with S1 blocked",
        took.as_secs_f64() * 1e6
    ))
}

fn s08(d: &Driver) -> R {
    let p = nb_pool(d, 0, 1, 0)?;
    let mut o = operator(d, Some(p))?;
    let t = o
        .allocate_cuda_stream(cuda_streams::INTERNAL_STREAM)
        .ctx("internal")?;
    o.synchronize_streams(&[Some(t.clone())], Some(&t))
        .ctx("sync with itself")?;
    // The internal stream arriving as an input (a loop-back) is skipped too.
    o.receive("in", Message::new(()).with_stream(Some(t.clone())))
        .ctx("receive")?;
    let r = o
        .receive_cuda_stream("in", true, false)
        .ctx("rcs")?
        .ctx("stream")?;
    ensure!(r == t, "returned another stream");
    t.synchronize().ctx("stream still healthy")?;
    Ok("no error, no self-wait".into())
}

fn s09(d: &Driver) -> R {
    let mut notes = String::new();
    for sync_to_default in [false, true] {
        let g = Gate::new(d)?;
        let mut o = operator(d, Some(nb_pool(d, 0, 1, 0)?))?;
        let internal = o
            .allocate_cuda_stream(cuda_streams::INTERNAL_STREAM)
            .ctx("internal")?;
        g.block(&internal)?;
        o.receive("in", Message::new(())).ctx("receive")?;
        o.receive_cuda_stream("in", true, sync_to_default)
            .ctx("rcs")?;
        g.mark(None, 0, 1)?; // on the legacy default stream
        if sync_to_default {
            g.held_then_released(1)?;
        } else {
            // Control: without sync_to_default the non-blocking internal stream does not hold
            // back the legacy default stream.
            ensure!(
                wait_until(|| g.marker.get() == 1, GATE_TIMEOUT),
                "default stream was held without sync_to_default"
            );
            g.gate.set(1);
        }
        internal.synchronize().ctx("sync")?;
        synchronize_default(d, 0).ctx("sync default")?;
        notes = "default stream held until the internal stream passed (control: not held without the flag)".into();
    }
    Ok(notes)
}

fn s10(d: &Driver) -> R {
    let mut o = operator(d, Some(nb_pool(d, 0, 1, 0)?))?;
    o.receive("in", Message::new(())).ctx("receive")?;
    let s = o
        .receive_cuda_stream("in", true, false)
        .ctx("rcs")?
        .ctx("stream")?;
    for port in ["out", "out2"] {
        let m = o.emit(port, ()).ctx("emit")?;
        ensure!(m.stream() == Some(&s), "{port} carries {:?}", m.stream());
    }
    Ok(format!("both ports carry {}", s.id()))
}

fn s11(d: &Driver) -> R {
    let up = nb_pool(d, 0, 3, 0)?;
    let (a, b, c) = (
        up.allocate().ctx("a")?,
        up.allocate().ctx("b")?,
        up.allocate().ctx("c")?,
    );
    let g = Gate::new(d)?;
    g.block(&b)?;
    let mut o = operator(d, None)?;
    o.receive("in", Message::new(()).with_stream(Some(a.clone())))
        .ctx("r")?;
    o.receive("in", Message::new(()).with_stream(Some(b.clone())))
        .ctx("r")?;
    o.receive("in2", Message::new(()).with_stream(Some(c.clone())))
        .ctx("r")?;
    let r = o.receive_cuda_stream("in", true, false).ctx("rcs")?;
    ensure!(
        r.as_ref() == Some(&a),
        "returned {r:?}, want the first stream"
    );
    g.mark(Some(&a), 0, 1)?;
    g.held_then_released(1)?;
    ensure!(
        o.emit("out", ()).ctx("emit")?.stream() == Some(&a),
        "not emitted"
    );
    let r2 = o.receive_cuda_stream("in2", true, false).ctx("rcs in2")?;
    ensure!(
        r2.as_ref() == Some(&a),
        "second port returned {r2:?} (DOC: the first choice)"
    );
    a.synchronize().ctx("sync")?;
    Ok("first stream returned, B ordered before it, emitted, kept for in2".into())
}

fn s12(d: &Driver) -> R {
    let mut o = operator(d, None)?;
    o.receive("in", Message::new(())).ctx("receive")?;
    let r = o.receive_cuda_stream("in", true, false).ctx("rcs")?;
    ensure!(r.is_none(), "returned {r:?}");
    ensure!(
        o.emit("out", ()).ctx("emit")?.stream().is_none(),
        "something emitted"
    );
    Ok("default stream, nothing emitted".into())
}

fn s13(d: &Driver) -> R {
    let mut o = operator(d, Some(nb_pool(d, 0, 1, 0)?))?;
    let r = o.receive_cuda_stream("in", true, false).ctx("rcs")?;
    let w = o.take_warnings();
    ensure!(r.is_some(), "no internal stream");
    ensure!(
        w == vec![StreamWarning::ReceiveNotCalled { port: "in".into() }],
        "warnings {w:?}"
    );
    Ok("internal stream returned, StreamWarning::ReceiveNotCalled + tracing warning".into())
}

fn s14(d: &Driver) -> R {
    let up = nb_pool(d, 0, 2, 0)?;
    let (a, b) = (up.allocate().ctx("a")?, up.allocate().ctx("b")?);
    let p = nb_pool(d, 0, 1, 0)?;
    let mut o = operator(d, Some(p.clone()))?;
    o.receive("in:0", Message::new(()).with_stream(Some(a.clone())))
        .ctx("r")?;
    o.receive("in:1", Message::new(())).ctx("r")?;
    o.receive("in:2", Message::new(()).with_stream(Some(b.clone())))
        .ctx("r")?;
    let v = o.receive_cuda_streams("in").ctx("rcss")?;
    ensure!(v == vec![Some(a), None, Some(b)], "got {v:?}");
    ensure!(p.stats().in_use == 0, "allocated");
    ensure!(o.emit("out", ()).ctx("emit")?.stream().is_none(), "emitted");
    Ok("[A, None, B] over in:0..2; no allocation, no emission".into())
}

fn s15(d: &Driver) -> R {
    let a = nb_pool(d, 0, 1, 0)?.allocate().ctx("a")?;
    let mut o = operator(d, None)?;
    o.receive("in", Message::new(()).with_stream(Some(a)))
        .ctx("r")?;
    ensure!(
        o.receive_cuda_streams("in").ctx("n")?.len() == 1,
        "compute N"
    );
    o.begin_compute();
    let v = o.receive_cuda_streams("in").ctx("n+1")?;
    ensure!(v.is_empty(), "compute N+1 sees {v:?}");
    Ok("empty in compute N+1".into())
}

fn s16(d: &Driver) -> R {
    let mut o = operator(d, Some(nb_pool(d, 0, 1, 0)?))?;
    let a = o.allocate_cuda_stream("a").ctx("a")?;
    let a2 = o.allocate_cuda_stream("a").ctx("a again")?;
    let b = o.allocate_cuda_stream("b").ctx("b")?;
    ensure!(a == a2 && a != b, "memo broken");
    ensure!(
        o.emit("out", ()).ctx("emit")?.stream().is_none(),
        "auto-emitted"
    );
    Ok("a == a, a != b, nothing emitted".into())
}

fn s17(d: &Driver) -> R {
    let mut none = operator(d, None)?;
    ensure!(
        none.allocate_cuda_stream("x") == Err(StreamError::NoPool),
        "no pool"
    );
    let p = nb_pool(d, 0, 1, 1)?;
    let _held = p.allocate().ctx("held")?;
    let up = nb_pool(d, 0, 1, 0)?.allocate().ctx("up")?;
    let mut o = operator(d, Some(p))?;
    match o.allocate_cuda_stream("x") {
        Err(StreamError::PoolExhausted { capacity: 1 }) => {}
        other => return Err(format!("exhausted: {other:?}")),
    }
    o.receive("in", Message::new(()).with_stream(Some(up.clone())))
        .ctx("r")?;
    let r = o.receive_cuda_stream("in", true, false).ctx("rcs")?;
    ensure!(r.as_ref() == Some(&up), "fallback returned {r:?}");
    Ok("NoPool; PoolExhausted; receive_cuda_stream fell back to the upstream stream".into())
}

fn s18(d: &Driver) -> R {
    let p = nb_pool(d, 0, 2, 0)?;
    let foreign = p.allocate().ctx("foreign")?;
    let mut o = operator(d, Some(p))?;
    let mine = o.allocate_cuda_stream("m").ctx("m")?;
    ensure!(o.device_from_stream(Some(&mine)) == Ok(0), "managed");
    ensure!(
        matches!(
            o.device_from_stream(Some(&foreign)),
            Err(StreamError::NotManaged(_))
        ),
        "foreign"
    );
    ensure!(
        o.device_from_stream(None) == Err(StreamError::DefaultStreamNotManaged),
        "default"
    );
    Ok("0 for managed; NotManaged for foreign and default".into())
}

fn s19(d: &Driver) -> R {
    let p = nb_pool(d, 0, 2, 0)?;
    let (a, t) = (p.allocate().ctx("a")?, p.allocate().ctx("t")?);
    let g = Gate::new(d)?;
    g.block(&a)?;
    let mut o = operator(d, None)?;
    let (r, took) =
        timed(|| o.synchronize_streams(&[None, Some(a.clone()), Some(t.clone())], Some(&t)));
    r.ctx("synchronize_streams")?;
    g.mark(Some(&t), 0, 1)?;
    g.held_then_released(1)?;
    t.synchronize().ctx("sync")?;
    Ok(format!(
        "T waited on A; call took {:.1} us with A blocked",
        took.as_secs_f64() * 1e6
    ))
}

// ---------------------------------------------------------------- emission

fn s20(d: &Driver) -> R {
    let mut o = operator(d, Some(nb_pool(d, 0, 1, 0)?))?;
    let s = o.allocate_cuda_stream("s").ctx("s")?;
    o.set_cuda_stream(&s, "out").ctx("set")?;
    ensure!(
        o.emit("out", ()).ctx("emit")?.stream() == Some(&s),
        "not attached"
    );
    let foreign = nb_pool(d, 0, 1, 0)?.allocate().ctx("foreign")?;
    let mut o2 = operator(d, Some(nb_pool(d, 0, 1, 0)?))?;
    ensure!(
        matches!(
            o2.set_cuda_stream(&foreign, "out"),
            Err(StreamError::UnmanagedStream(_))
        ),
        "unmanaged accepted"
    );
    ensure!(
        o2.emit("out", ()).ctx("emit")?.stream().is_none(),
        "unmanaged attached"
    );
    Ok("explicit stream attached; unmanaged refused".into())
}

// ---------------------------------------------------------------- condition

fn s21(d: &Driver) -> R {
    let s = nb_pool(d, 0, 1, 0)?.allocate().ctx("s")?;
    let g = Gate::new(d)?;
    g.block(&s)?;
    let q = MessageQueue::new("in");
    q.push(Message::new(1u32).with_stream(Some(s.clone())));
    let mut c = StreamCondition::new().receiver(q.clone());
    let n = c.notifier();
    let seen = n.generation();
    ensure!(
        c.check().ctx("check")? == SchedulingStatus::WaitEvent,
        "not WaitEvent"
    );
    std::thread::sleep(HOLD);
    ensure!(
        c.check().ctx("check")? == SchedulingStatus::WaitEvent,
        "ready while the stream is blocked"
    );
    g.gate.set(1);
    let generation = n.wait_past(seen, GATE_TIMEOUT);
    ensure!(generation > seen, "scheduler never notified");
    ensure!(
        c.check().ctx("check")? == SchedulingStatus::Ready,
        "not Ready after the callback"
    );
    Ok("WaitEvent while blocked; notified; Ready".into())
}

fn s22(d: &Driver) -> R {
    let s = nb_pool(d, 0, 1, 0)?.allocate().ctx("s")?;
    let g = Gate::new(d)?;
    g.block(&s)?;
    let q = MessageQueue::new("in");
    let mut c = StreamCondition::new().receiver(q.clone());
    ensure!(c.check().ctx("c")? == SchedulingStatus::Wait, "empty queue");
    q.push(Message::new(0u32));
    ensure!(
        c.check().ctx("c")? == SchedulingStatus::Ready,
        "no-stream message"
    );
    q.push(Message::new(1u32).with_stream(Some(s.clone())));
    ensure!(
        c.check().ctx("c")? == SchedulingStatus::WaitEvent,
        "check_all: 2nd message inspected"
    );
    let mut first = StreamCondition::new()
        .receiver(q.clone())
        .check_all_messages(false);
    ensure!(
        first.check().ctx("c")? == SchedulingStatus::Ready,
        "first-only"
    );
    g.gate.set(1);
    s.synchronize().ctx("sync")?;
    ensure!(
        wait_until(
            || matches!(c.check(), Ok(SchedulingStatus::Ready)),
            GATE_TIMEOUT
        ),
        "never ready"
    );
    q.pop();
    q.pop();
    ensure!(
        c.check().ctx("c")? == SchedulingStatus::Wait,
        "no reset after consumption"
    );
    Ok("no stream: Ready; empty: Wait; all vs first message; reset".into())
}

// ---------------------------------------------------------------- default pool, multi-GPU, threads

fn s23(d: &Driver) -> R {
    let up = nb_pool(d, 0, 1, 0)?.allocate().ctx("up")?;
    let mut o = OperatorContext::builder("op")
        .input("in")
        .output("out")
        .driver(d.clone())
        .build()
        .ctx("build")?;
    let p = o.pool().ctx("default pool")?.clone();
    let want = StreamPoolConfig {
        dev_id: 0,
        flags: StreamFlags::NON_BLOCKING,
        priority: 0,
        reserved_size: 1,
        max_size: 0,
    };
    ensure!(p.config() == want, "config {:?}", p.config());
    o.receive("in", Message::new(()).with_stream(Some(up.clone())))
        .ctx("r")?;
    let s = o
        .receive_cuda_stream("in", true, false)
        .ctx("rcs")?
        .ctx("stream")?;
    ensure!(s != up, "internal == upstream");
    ensure!(
        o.receive_cuda_streams("in").ctx("rcss")? == vec![Some(up.clone())],
        "rcss"
    );
    let third = o.allocate_cuda_stream("my_new_stream").ctx("alloc")?;
    ensure!(third != s && third != up, "third stream not distinct");
    Ok(format!(
        "'{}' unbounded, NB, prio 0, reserved 1 (no-GPU half: CPU test)",
        o.default_pool_name()
    ))
}

fn s24(d: &Driver) -> Outcome {
    if d.device_count() < 2 {
        return Outcome::Skip(format!(
            "{} GPU on this machine; logic covered by the CPU test",
            d.device_count()
        ));
    }
    let r = (|| -> R {
        let up = nb_pool(d, 1, 1, 0)?;
        let s1 = up.allocate().ctx("s1 on device 1")?;
        let g = Gate::new(d)?;
        g.block(&s1)?;
        let mut o = operator(d, Some(nb_pool(d, 0, 1, 0)?))?;
        o.receive("in", Message::new(()).with_stream(Some(s1.clone())))
            .ctx("r")?;
        let internal = o
            .receive_cuda_stream("in", true, true)
            .ctx("rcs")?
            .ctx("stream")?;
        ensure!(internal.device() == 0, "internal on {}", internal.device());
        g.mark(Some(&internal), 0, 1)?;
        g.held_then_released(1)?;
        internal.synchronize().ctx("sync 0")?;
        s1.synchronize().ctx("sync 1")?;
        Ok("device-0 internal stream waited on a device-1 stream (event of device 1)".into())
    })();
    to_outcome(r)
}

fn s25(d: &Driver) -> R {
    let p = nb_pool(d, 0, 1, 4)?;
    let held = Arc::new(Mutex::new(HashSet::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    std::thread::scope(|sc| {
        for t in 0..4 {
            let (p, held, errors, d) = (p.clone(), held.clone(), errors.clone(), d.clone());
            sc.spawn(move || {
                let err = |e: String| errors.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                for i in 0..500 {
                    if t % 2 == 0 {
                        // A raw allocate/release user.
                        match p.allocate() {
                            Ok(s) => {
                                if !held
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .insert(s.id())
                                {
                                    err(format!("stream {} handed out twice", s.id()));
                                }
                                held.lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .remove(&s.id());
                                if let Err(e) = p.release(&s) {
                                    err(e.to_string());
                                }
                            }
                            Err(PoolError::Exhausted { .. }) => err(format!("exhausted at {i}")),
                            Err(e) => err(e.to_string()),
                        }
                    } else {
                        // An operator holding its internal stream for a short run.
                        let r = (|| -> Result<(), String> {
                            let mut o = operator(&d, Some(p.clone()))?;
                            o.receive("in", Message::new(())).ctx("r")?;
                            let s = o
                                .receive_cuda_stream("in", true, false)
                                .ctx("rcs")?
                                .ctx("s")?;
                            if !held
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(s.id())
                            {
                                return Err(format!("stream {} shared by two users", s.id()));
                            }
                            held.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .remove(&s.id());
                            o.stop().ctx("stop")
                        })();
                        if let Err(e) = r {
                            err(e);
                        }
                    }
                }
            });
        }
    });
    let errors = errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    ensure!(
        errors.is_empty(),
        "{} errors, first: {}",
        errors.len(),
        errors[0]
    );
    let st = p.stats();
    ensure!(st.in_use == 0 && st.created <= 4, "stats {st:?}");
    Ok(format!("4 threads x 500 (2 raw, 2 operators); {st:?}"))
}

// ---------------------------------------------------------------- across processes

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn s26(d: &Driver) -> R {
    let s = nb_pool(d, 0, 1, 0)?.allocate().ctx("producer stream")?;
    let gate = HostWord::new(d).ctx("gate")?;
    gate.gpu_wait_geq(Some(&s), 0, 1).ctx("block producer")?;
    let ev = InterprocessEvent::new(d, 0).ctx("create interprocess event")?;
    ev.record(&s).ctx("record")?;
    let h = ev.export().ctx("export")?;
    let exe = std::env::current_exe().ctx("current_exe")?;
    let mut child = Command::new(exe)
        .arg("ipc-child")
        .arg(hex(h.as_bytes()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .ctx("spawn child")?;
    let mut out = BufReader::new(child.stdout.take().ctx("child stdout")?);
    let mut line = String::new();
    out.read_line(&mut line).ctx("child line 1")?;
    let first = line.trim().to_owned();
    gate.set(1);
    let mut rest = String::new();
    for l in out.lines() {
        rest.push_str(&l.ctx("child output")?);
        rest.push(' ');
    }
    let status = child.wait().ctx("child wait")?;
    s.synchronize().ctx("sync")?;
    ensure!(first.starts_with("HELD"), "child: {first} {rest}");
    ensure!(
        status.success() && rest.contains("ORDERED"),
        "child: {first} {rest} ({status})"
    );
    Ok(format!("child {}; {}", first, rest.trim()))
}

/// The consumer process: imports the event, makes its stream wait, shows it is held, then ordered.
fn ipc_child(handle_hex: &str) -> ExitCode {
    let r = (|| -> Result<String, String> {
        let d = Driver::probe().ctx("probe")?;
        let h = IpcEventHandle::from_bytes(&unhex(handle_hex).ctx("hex")?).ctx("64 bytes")?;
        let ev = InterprocessEvent::import(&d, 0, &h).ctx("import")?;
        let t = nb_pool(&d, 0, 1, 0)?.allocate().ctx("consumer stream")?;
        let marker = HostWord::new(&d).ctx("marker")?;
        let (r, took) = timed(|| ev.make_stream_wait(Some(&t)));
        r.ctx("make_stream_wait")?;
        marker.gpu_write(Some(&t), 0, 1).ctx("marker write")?;
        std::thread::sleep(HOLD);
        ensure!(
            marker.get() == 0,
            "consumer ran before the producer's gate opened"
        );
        println!("HELD wait-call {:.1} us", took.as_secs_f64() * 1e6);
        let _ = std::io::stdout().flush();
        ensure!(
            wait_until(|| marker.get() == 1, GATE_TIMEOUT),
            "consumer never ran"
        );
        t.synchronize().ctx("sync")?;
        Ok("ORDERED".into())
    })();
    match r {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("FAILED {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------- benchmarks

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median over `reps` batches of the mean time per operation in microseconds.
fn bench(reps: usize, n: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    for _ in 0..n.min(1000) {
        f()?;
    }
    let mut v = Vec::new();
    for _ in 0..reps {
        let t0 = Instant::now();
        for _ in 0..n {
            f()?;
        }
        v.push(t0.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    Ok(median(v))
}

fn benches(d: &Driver) -> Result<Vec<(String, String)>, String> {
    let mut rows = Vec::new();
    // 1. Pool allocate + release against stream create + destroy.
    let p = nb_pool(d, 0, 1, 0)?;
    let pool_us = bench(9, 20_000, || {
        let s = p.allocate().ctx("alloc")?;
        p.release(&s).ctx("release")
    })?;
    let create_us = bench(9, 2_000, || {
        create_destroy_stream(d, 0, 1, 0).ctx("create/destroy")
    })?;
    rows.push(("pool allocate + release".into(), format!("{pool_us:.3} us")));
    rows.push((
        "cuStreamCreateWithPriority + cuStreamDestroy".into(),
        format!("{create_us:.3} us ({:.0}x)", create_us / pool_us),
    ));

    // 2. receive_cuda_stream per input stream against a bare event record + wait.
    let up = nb_pool(d, 0, 16, 0)?;
    let ups: Vec<Stream> = (0..16)
        .map(|_| up.allocate())
        .collect::<Result<_, _>>()
        .ctx("upstream")?;
    let target = up.allocate().ctx("target")?;
    let ev = BareEvent::new(d, 0).ctx("event")?;
    let bare_us = bench(9, 20_000, || {
        ev.record_then_wait(&ups[0], &target).ctx("record+wait")
    })?;
    rows.push((
        "bare cuEventRecord + cuStreamWaitEvent".into(),
        format!("{bare_us:.3} us"),
    ));
    let mut per = Vec::new();
    for k in [1usize, 4, 16] {
        let mut o = operator(d, Some(nb_pool(d, 0, 1, 0)?))?;
        let us = bench(9, 5_000, || {
            o.begin_compute();
            for s in &ups[..k] {
                o.receive("in", Message::new(()).with_stream(Some(s.clone())))
                    .ctx("receive")?;
            }
            o.receive_cuda_stream("in", true, false)
                .ctx("rcs")
                .map(|_| ())
        })?;
        per.push((k, us));
        rows.push((
            format!("compute with {k} input stream(s): receive x{k} + receive_cuda_stream"),
            format!("{us:.3} us ({:.3} us per input)", us / k as f64),
        ));
        o.stop().ctx("stop")?;
    }
    let marginal = (per[2].1 - per[0].1) / 15.0;
    rows.push((
        "receive_cuda_stream marginal cost per extra input stream".into(),
        format!("{marginal:.3} us ({:.2}x bare)", marginal / bare_us),
    ));
    target.synchronize().ctx("drain")?;

    // 3. Condition latency against a bare host function, on an idle stream.
    let s = nb_pool(d, 0, 1, 0)?.allocate().ctx("s")?;
    let pair = Arc::new((Mutex::new(0u64), Condvar::new()));
    let mut bare = Vec::new();
    for i in 0..300u64 {
        let p2 = pair.clone();
        let t0 = Instant::now();
        s.launch_host_fn(move || {
            let mut g = p2.0.lock().unwrap_or_else(|e| e.into_inner());
            *g = i + 1;
            p2.1.notify_all();
        })
        .ctx("host fn")?;
        let g = pair.0.lock().unwrap_or_else(|e| e.into_inner());
        let _g = pair
            .1
            .wait_while(g, |v| *v != i + 1)
            .unwrap_or_else(|e| e.into_inner());
        bare.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    let q = MessageQueue::new("in");
    let mut c = StreamCondition::new().receiver(q.clone());
    let n = c.notifier();
    let mut cond = Vec::new();
    for _ in 0..300 {
        let seen = n.generation();
        let t0 = Instant::now();
        q.push(Message::new(()).with_stream(Some(s.clone())));
        let mut st = c.check().ctx("check")?;
        if st != SchedulingStatus::Ready {
            n.wait_past(seen, GATE_TIMEOUT);
            st = c.check().ctx("check")?;
        }
        cond.push(t0.elapsed().as_secs_f64() * 1e6);
        ensure!(st == SchedulingStatus::Ready, "condition not ready: {st:?}");
        q.pop();
        c.check().ctx("reset")?;
    }
    let (b, cd) = (median(bare[20..].to_vec()), median(cond[20..].to_vec()));
    rows.push((
        "bare cuLaunchHostFunc, enqueue -> host notified (idle stream)".into(),
        format!("{b:.1} us"),
    ));
    rows.push((
        "StreamCondition: push -> check -> notified -> Ready".into(),
        format!("{cd:.1} us ({:+.1} us)", cd - b),
    ));
    Ok(rows)
}

// ---------------------------------------------------------------- main

fn to_outcome(r: R) -> Outcome {
    match r {
        Ok(n) => Outcome::Pass(n),
        Err(e) => Outcome::Fail(e),
    }
}

type Scenario = (u32, &'static str, Box<dyn Fn(&Driver) -> Outcome>);

fn scenarios() -> Vec<Scenario> {
    fn s(f: fn(&Driver) -> R) -> Box<dyn Fn(&Driver) -> Outcome> {
        Box::new(move |d| to_outcome(f(d)))
    }
    vec![
        (1, "pool: eager reserve", s(s01)),
        (2, "pool: unbounded", s(s02)),
        (3, "pool: exhaustion + FIFO reuse", s(s03)),
        (4, "pool: max_size clamp", s(s04)),
        (5, "pool: stream properties", s(s05)),
        (6, "rcs: internal stream reuse", s(s06)),
        (7, "rcs: input ordering", s(s07)),
        (8, "rcs: self-skip", s(s08)),
        (9, "rcs: sync_to_default", s(s09)),
        (10, "rcs: auto-emit", s(s10)),
        (11, "rcs: no pool, with stream", s(s11)),
        (12, "rcs: no pool, no stream", s(s12)),
        (13, "rcs: receive not called", s(s13)),
        (14, "rcss: per-message vector", s(s14)),
        (15, "rcss: per-compute reset", s(s15)),
        (16, "ctx: named allocation memo", s(s16)),
        (17, "ctx: allocation errors", s(s17)),
        (18, "ctx: device lookup", s(s18)),
        (19, "ctx: explicit synchronisation", s(s19)),
        (20, "emit: explicit emission", s(s20)),
        (21, "condition: not-ready -> ready", s(s21)),
        (22, "condition: edge cases", s(s22)),
        (23, "default pool", s(s23)),
        (24, "multi-GPU ordering", Box::new(s24)),
        (25, "thread safety", s(s25)),
        (26, "interprocess event (2 processes)", s(s26)),
        (
            27,
            "device memory: written in A, read in B (fd over a socket)",
            s(memory::s27),
        ),
        (28, "device memory: kill -9 of the producer", s(memory::s28)),
        (29, "device memory: read-only access", s(memory::s29)),
        (30, "device memory: peer access", Box::new(memory::s30)),
        (31, "host registration: memfd mapping", s(memory::s31)),
        (
            32,
            "device memory: kernel output ordered by the carried event",
            s(memory::s32),
        ),
        (33, "device memory: hostile input", s(memory::s33)),
    ]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("ipc-child") {
        return ipc_child(args.get(1).map_or("", String::as_str));
    }
    if let Some(code) = memory::child(&args) {
        return code;
    }
    let mode = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with("--") && (*i == 0 || !args[i - 1].starts_with("--")))
        .map(|(_, a)| a)
        .cloned()
        .unwrap_or_else(|| "all".into());
    let out_dir = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var("OUT").ok());
    let driver = match Driver::probe() {
        Ok(d) => d,
        Err(CudaError::NoDevice { reason }) => {
            println!("cuda-streams-acceptance: no CUDA device ({reason}); nothing to run");
            return ExitCode::from(2);
        }
        Err(e) => {
            println!("cuda-streams-acceptance: CUDA probe failed: {e}");
            return ExitCode::from(2);
        }
    };
    let mut report = format!("devices: {}\n\n", driver.device_count());
    let mut failed = false;
    if mode == "test" || mode == "all" {
        report.push_str("| # | scenario | result | notes |\n|---|---|---|---|\n");
        // `--only 27,32`: a subset of the scenarios.
        let only: Option<Vec<u32>> = args
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1))
            .map(|l| l.split(',').filter_map(|x| x.trim().parse().ok()).collect());
        for (id, name, f) in scenarios() {
            if only.as_ref().is_some_and(|o| !o.contains(&id)) {
                continue;
            }
            let t0 = Instant::now();
            let o = catch_unwind(AssertUnwindSafe(|| f(&driver)))
                .unwrap_or_else(|_| Outcome::Fail("panicked".into()));
            let (res, note) = match o {
                Outcome::Pass(n) => ("PASS", n),
                Outcome::Fail(n) => {
                    failed = true;
                    ("FAIL", n)
                }
                Outcome::Skip(n) => ("SKIP", n),
            };
            let row = format!(
                "| {id} | {name} | {res} | {note} ({:.0} ms) |\n",
                t0.elapsed().as_secs_f64() * 1e3
            );
            print!("{row}");
            let _ = std::io::stdout().flush();
            report.push_str(&row);
        }
        report.push('\n');
    }
    if mode == "bench" || mode == "all" {
        report.push_str("| benchmark | median |\n|---|---|\n");
        match benches(&driver).and_then(|mut rows| {
            rows.extend(memory::benches(&driver)?);
            Ok(rows)
        }) {
            Ok(rows) => {
                for (k, v) in rows {
                    report.push_str(&format!("| {k} | {v} |\n"));
                }
            }
            Err(e) => {
                failed = true;
                report.push_str(&format!("| benchmarks failed | {e} |\n"));
            }
        }
    }
    println!("\n{report}");
    if let Some(dir) = out_dir {
        let _ = std::fs::write(
            std::path::Path::new(&dir).join("cuda-streams-results.md"),
            &report,
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
