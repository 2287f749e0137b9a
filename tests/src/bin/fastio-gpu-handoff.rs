//! Streams travel with data, across processes, through the Fast I/O context: the producer holds its stream behind a gate, records an interprocess CUDA
//! event on it, and publishes an allocation carrying the event's handle; a second process
//! gets the allocation from the context, imports the event from it, and makes its own
//! stream wait on it. The consumer's stream work must not run before the producer's gate
//! opens, and must run after, with no host thread blocked on the GPU.
//!
//! Run on a GPU machine (it is in the `cargo xtask gpu-test` bundle): prints `PASS ...` and
//! exits 0; without a CUDA driver it says so and exits 2.
//!
//! `fastio-gpu-handoff copy-bench` measures H2D / D2H between a real Fast I/O host allocation
//! (created through a context server, registered with CUDA once) and device memory, next to
//! pinned memory and to the same allocation unregistered; and H2D from a reader's read-only
//! mapping of it, registered read-only.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use cuda_streams::testing::HostWord;
use cuda_streams::{Driver, InterprocessEvent, IpcEventHandle, StreamPool, StreamPoolConfig};
use fastio::{Context, EventHandle, Server, ServerConfig};

const HOLD: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_secs(10);

type R<T> = Result<T, String>;

fn probe() -> Result<Driver, ExitCode> {
    Driver::probe().map_err(|e| {
        println!("NO DEVICE: {e}");
        ExitCode::from(2)
    })
}

fn producer() -> ExitCode {
    let driver = match probe() {
        Ok(d) => d,
        Err(code) => return code,
    };
    match run_producer(&driver) {
        Ok(report) => {
            println!("PASS {report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("FAIL {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_producer(driver: &Driver) -> R<String> {
    let e = |what: &str| {
        let what = what.to_owned();
        move |err: &dyn std::fmt::Display| format!("{what}: {err}")
    };
    let pool =
        StreamPool::new(driver, StreamPoolConfig::new(0, 1, 0, 1, 0)).map_err(|x| e("pool")(&x))?;
    let stream = pool.allocate().map_err(|x| e("stream")(&x))?;
    let gate = HostWord::new(driver).map_err(|x| e("gate")(&x))?;
    gate.gpu_wait_geq(Some(&stream), 0, 1)
        .map_err(|x| e("hold the stream")(&x))?;
    let event = InterprocessEvent::new(driver, 0).map_err(|x| e("event")(&x))?;
    event.record(&stream).map_err(|x| e("record")(&x))?;
    let handle = event.export().map_err(|x| e("export")(&x))?;

    let server = Server::start(ServerConfig::default()).map_err(|x| e("server")(&x))?;
    let ctx = Context::connect(server.address()).map_err(|x| e("connect")(&x))?;
    let frame = ctx.create(4096).map_err(|x| e("create")(&x))?;
    frame
        .publish_with_event("frame", EventHandle(*handle.as_bytes()))
        .map_err(|x| e("publish")(&x))?;

    let exe = std::env::current_exe().map_err(|x| e("current_exe")(&x))?;
    let mut child = Command::new(exe)
        .arg("consumer")
        .env(fastio::CONTEXT_ENV, server.address())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|x| e("spawn")(&x))?;
    let mut out = BufReader::new(child.stdout.take().ok_or("no child stdout")?);
    let mut first = String::new();
    out.read_line(&mut first).map_err(|x| e("child")(&x))?;
    gate.set(1);
    let rest: Vec<String> = out.lines().map_while(Result::ok).collect();
    let status = child.wait().map_err(|x| e("wait")(&x))?;
    stream.synchronize().map_err(|x| e("sync")(&x))?;
    let rest = rest.join(" ");
    if !first.starts_with("HELD") || !status.success() || !rest.contains("ORDERED") {
        return Err(format!("consumer: {} {rest} ({status})", first.trim()));
    }
    frame.release().map_err(|x| e("release")(&x))?;
    Ok(format!(
        "event handle travelled with the publication; consumer {}; {rest}",
        first.trim()
    ))
}

fn consumer() -> ExitCode {
    let driver = match probe() {
        Ok(d) => d,
        Err(code) => return code,
    };
    let result = (|| -> R<String> {
        let ctx = Context::from_env().map_err(|x| x.to_string())?;
        let frame = ctx.get("frame").map_err(|x| x.to_string())?;
        let handle = frame.event().ok_or("the publication carried no event")?;
        let handle = IpcEventHandle::from_bytes(&handle.0).ok_or("bad handle")?;
        let event = InterprocessEvent::import(&driver, 0, &handle).map_err(|x| x.to_string())?;
        let pool = StreamPool::new(&driver, StreamPoolConfig::new(0, 1, 0, 1, 0))
            .map_err(|x| x.to_string())?;
        let stream = pool.allocate().map_err(|x| x.to_string())?;
        let marker = HostWord::new(&driver).map_err(|x| x.to_string())?;
        let start = Instant::now();
        event
            .make_stream_wait(Some(&stream))
            .map_err(|x| x.to_string())?;
        let took = start.elapsed();
        marker
            .gpu_write(Some(&stream), 0, 1)
            .map_err(|x| x.to_string())?;
        std::thread::sleep(HOLD);
        if marker.get() != 0 {
            return Err("the consumer's stream ran before the producer's gate opened".into());
        }
        println!("HELD (wait enqueued in {:.1} us)", took.as_secs_f64() * 1e6);
        let _ = std::io::stdout().flush();
        fastio_tests::wait_until(TIMEOUT, || Ok(marker.get() == 1))
            .map_err(|_| "the consumer's stream never ran".to_owned())?;
        stream.synchronize().map_err(|x| x.to_string())?;
        frame.release().map_err(|x| x.to_string())?;
        Ok("ORDERED".into())
    })();
    match result {
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

/// GB/s of `f` over `len` bytes: median of 5 after one warm-up (each call ends synchronised).
fn gbps(len: usize, mut f: impl FnMut() -> R<()>) -> R<f64> {
    f()?;
    let mut v = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        f()?;
        v.push(len as f64 / t0.elapsed().as_secs_f64() / 1e9);
    }
    v.sort_by(f64::total_cmp);
    Ok(v[2])
}

fn copy_bench(driver: &Driver) -> R<String> {
    use cuda_streams::testing::PinnedBuffer;
    use cuda_streams::{DeviceAccess, DeviceMemory, register_host, unregister_host};
    const LEN: usize = 1 << 30;
    let s = |x: &dyn std::fmt::Display| x.to_string();
    let pool = StreamPool::new(driver, StreamPoolConfig::new(0, 1, 0, 1, 0)).map_err(|x| s(&x))?;
    let stream = pool.allocate().map_err(|x| s(&x))?;
    let mem = DeviceMemory::create(driver, 0, LEN).map_err(|x| s(&x))?;
    let map = mem.map(0, DeviceAccess::ReadWrite).map_err(|x| s(&x))?;
    let h2d = |p: *const u8| {
        gbps(LEN, || {
            // SAFETY: `p` is LEN live bytes for the whole measurement (each copy is synchronised).
            unsafe { map.copy_from_host_async(&stream, 0, p, LEN) }.map_err(|x| s(&x))?;
            stream.synchronize().map_err(|x| s(&x))
        })
    };
    let d2h = |p: *mut u8| {
        gbps(LEN, || {
            // SAFETY: as above; nothing else touches the bytes meanwhile.
            unsafe { map.copy_to_host_async(&stream, 0, p, LEN) }.map_err(|x| s(&x))?;
            stream.synchronize().map_err(|x| s(&x))
        })
    };
    let pinned = PinnedBuffer::new(driver, LEN).map_err(|x| s(&x))?;
    let pin = (h2d(pinned.as_mut_ptr())?, d2h(pinned.as_mut_ptr())?);

    let server = Server::start(ServerConfig::default()).map_err(|x| s(&x))?;
    let ctx = Context::connect(server.address()).map_err(|x| s(&x))?;
    let mut alloc = ctx.create(LEN).map_err(|x| s(&x))?;
    alloc.write_bytes(0, &vec![1u8; LEN]).map_err(|x| s(&x))?;
    let p = alloc.as_mut_ptr().map_err(|x| s(&x))?;
    let plain = (h2d(p)?, d2h(p)?);
    let t0 = Instant::now();
    // SAFETY: the allocation stays mapped until `unregister_host` below, before its release.
    unsafe { register_host(driver, p, LEN, false) }.map_err(|x| s(&x))?;
    let reg_ms = t0.elapsed().as_secs_f64() * 1e3;
    let reg = (h2d(p)?, d2h(p)?);
    alloc.publish("volume").map_err(|x| s(&x))?;
    // A reader's read-only mapping of the same memory (another handle, as a consumer holds).
    let reader = Context::connect(server.address()).map_err(|x| s(&x))?;
    let view = reader
        .get_with("volume", fastio::AccessMode::ReadOnly)
        .map_err(|x| s(&x))?;
    let rp = view.as_ptr();
    // SAFETY: `view` stays mapped until `unregister_host` below.
    unsafe { register_host(driver, rp, LEN, true) }.map_err(|x| s(&x))?;
    let ro = h2d(rp)?;
    unregister_host(driver, rp, LEN).map_err(|x| s(&x))?;
    unregister_host(driver, p, LEN).map_err(|x| s(&x))?;
    view.release().map_err(|x| s(&x))?;
    alloc.release().map_err(|x| s(&x))?;
    let row = |name: &str, (h, d): (f64, f64)| {
        format!(
            "| {name} | {h:.1} | {d:.1} | {:.2}x / {:.2}x |\n",
            h / pin.0,
            d / pin.1
        )
    };
    let mut out =
        String::from("| 1 GiB from/to | H2D GB/s | D2H GB/s | vs pinned |\n|---|---:|---:|---|\n");
    out += &row("pinned (cuMemHostAlloc)", pin);
    out += &row("Fast I/O allocation, not registered", plain);
    out += &row("Fast I/O allocation, registered", reg);
    out += &format!(
        "| a reader's read-only mapping of it, registered read-only | {ro:.1} | - | {:.2}x / - |\n",
        ro / pin.0
    );
    out += &format!("\nregistration of the 1 GiB allocation: {reg_ms:.1} ms (once per process)\n");
    Ok(out)
}

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("copy-bench") => match probe() {
            Ok(d) => match copy_bench(&d) {
                Ok(table) => {
                    println!("{table}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("FAIL {e}");
                    ExitCode::FAILURE
                }
            },
            Err(code) => code,
        },
        Some("consumer") => consumer(),
        _ => producer(),
    }
}
