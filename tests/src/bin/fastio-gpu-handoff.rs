//! Streams travel with data, across processes, through the Fast I/O context: the producer holds its stream behind a gate, records an interprocess CUDA
//! event on it, and publishes an allocation carrying the event's handle; a second process
//! gets the allocation from the context, imports the event from it, and makes its own
//! stream wait on it. The consumer's stream work must not run before the producer's gate
//! opens, and must run after, with no host thread blocked on the GPU.
//!
//! Run on a GPU machine (it is in the `cargo xtask gpu-test` bundle): prints `PASS ...` and
//! exits 0; without a CUDA driver it says so and exits 2.
//!
//! `fastio-gpu-handoff device` does the same with the data on the GPU: the context makes a
//! `cuda:0` allocation, the producer fills it with a kernel held behind a gate and publishes
//! it with its event; the consumer gets it read-only through the context, maps it, makes its
//! stream wait on the event and copies it out: held while the gate is closed, then every word
//! is the kernel's.
//!
//! `fastio-gpu-handoff device-kill`: a context client creates a `cuda:0` allocation (1 GiB,
//! filled) and publishes it; a second client gets it read-only, maps it and copies it out with
//! the context's copy API; the first is killed with SIGKILL; the second keeps reading the same
//! bytes; once both are gone the context holds no device memory live (it keeps it warm in its
//! device pool), and once the context server ends `cuMemGetInfo` is back at its baseline.
//!
//! `fastio-gpu-handoff copy`: the context's copy API (`Allocation::copy_to_device` /
//! `copy_from_device`) between 1 GiB Fast I/O host allocations and a 1 GiB `cuda:0`
//! allocation: the bytes round-trip, each host handle registers its mapping once across all
//! copies and unregisters it at release; GB/s printed next to pinned memory.
//!
//! `fastio-gpu-handoff peer` (two GPUs): a client makes a `cuda:0` allocation through the
//! context, fills it and publishes it; another process gets it read-only, maps it on
//! `cuda:1` through peer access (`Allocation::map_device_on`) and copies it out on a stream
//! of `cuda:1`, through that mapping (no kernel): every byte is checked.
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

// ---------------------------------------------------------------- a device allocation

const WORDS: u32 = 4 << 20;
const BASE: u32 = 0x4400_0000;

fn device_producer(driver: &Driver) -> R<String> {
    use cuda_streams::testing::FillKernel;
    use fastio::context::MemoryKind;
    let s = |x: &dyn std::fmt::Display| x.to_string();
    let pool = StreamPool::new(driver, StreamPoolConfig::new(0, 1, 0, 1, 0)).map_err(|x| s(&x))?;
    let stream = pool.allocate().map_err(|x| s(&x))?;
    let server = Server::start(ServerConfig::default()).map_err(|x| s(&x))?;
    let ctx = Context::connect(server.address()).map_err(|x| s(&x))?;
    let volume = ctx
        .create_in(MemoryKind::Cuda { device: 0 }, WORDS as usize * 4)
        .map_err(|x| format!("create on cuda:0 through the context: {x}"))?;
    let view = volume.map_device(driver).map_err(|x| s(&x))?;
    // Load and warm the kernel before the stream is gated (a module load waits for the context).
    let kernel = FillKernel::load(driver, 0).map_err(|x| s(&x))?;
    kernel
        .launch(&stream, view.device_ptr, 0, 0)
        .map_err(|x| s(&x))?;
    stream.synchronize().map_err(|x| s(&x))?;
    let gate = HostWord::new(driver).map_err(|x| s(&x))?;
    let event = InterprocessEvent::new(driver, 0).map_err(|x| s(&x))?;
    gate.gpu_wait_geq(Some(&stream), 0, 1).map_err(|x| s(&x))?;
    let queued = kernel
        .launch(&stream, view.device_ptr, WORDS, BASE)
        .and_then(|()| event.record(&stream))
        .and_then(|()| event.export())
        .map_err(|x| s(&x))
        .and_then(|h| {
            volume
                .publish_with_event("volume", EventHandle(*h.as_bytes()))
                .map_err(|x| s(&x))
        });
    let run = queued.and_then(|()| {
        let exe = std::env::current_exe().map_err(|x| s(&x))?;
        let mut child = Command::new(exe)
            .arg("device-consumer")
            .env(fastio::CONTEXT_ENV, server.address())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|x| s(&x))?;
        let mut out = BufReader::new(child.stdout.take().ok_or("no child stdout")?);
        let mut first = String::new();
        let read = out.read_line(&mut first).map_err(|x| s(&x));
        gate.set(1);
        read?;
        let rest: Vec<String> = out.lines().map_while(Result::ok).collect();
        let status = child.wait().map_err(|x| s(&x))?;
        Ok((first.trim().to_owned(), rest.join(" "), status))
    });
    gate.set(1);
    stream.synchronize().map_err(|x| s(&x))?;
    let (first, rest, status) = run?;
    if !first.starts_with("HELD") || !status.success() || !rest.starts_with("ORDERED") {
        return Err(format!("consumer: {first} {rest} ({status})"));
    }
    volume.release().map_err(|x| s(&x))?;
    Ok(format!(
        "a cuda:0 allocation made by the context, filled by a kernel in this process, read in another through the context with the carried event; consumer {first}; {rest}"
    ))
}

fn device_consumer(driver: &Driver) -> R<String> {
    use cuda_streams::testing::{PinnedBuffer, raw_copy_to_host_async};
    let s = |x: &dyn std::fmt::Display| x.to_string();
    let ctx = Context::from_env().map_err(|x| s(&x))?;
    let volume = ctx
        .get_with("volume", fastio::AccessMode::ReadOnly)
        .map_err(|x| s(&x))?;
    let view = volume.map_device(driver).map_err(|x| s(&x))?;
    let handle = volume.event().ok_or("the publication carried no event")?;
    let handle = IpcEventHandle::from_bytes(&handle.0).ok_or("bad handle")?;
    let event = InterprocessEvent::import(driver, 0, &handle).map_err(|x| s(&x))?;
    let pool = StreamPool::new(driver, StreamPoolConfig::new(0, 1, 0, 1, 0)).map_err(|x| s(&x))?;
    let stream = pool.allocate().map_err(|x| s(&x))?;
    let len = WORDS as usize * 4;
    let host = PinnedBuffer::new(driver, len).map_err(|x| s(&x))?;
    let marker = HostWord::new(driver).map_err(|x| s(&x))?;
    let start = Instant::now();
    event.make_stream_wait(Some(&stream)).map_err(|x| s(&x))?;
    // SAFETY: `view` stays mapped (the handle lives) and `host` stays allocated until the
    // synchronisation below.
    unsafe { raw_copy_to_host_async(&stream, view.device_ptr, host.as_mut_ptr(), len) }
        .map_err(|x| s(&x))?;
    marker.gpu_write(Some(&stream), 0, 1).map_err(|x| s(&x))?;
    let took = start.elapsed();
    std::thread::sleep(HOLD);
    if marker.get() != 0 {
        return Err("the consumer's copy ran before the producer's kernel".into());
    }
    println!(
        "HELD (wait + copy enqueued in {:.1} us; read-only mapping enforced by the driver: {})",
        took.as_secs_f64() * 1e6,
        view.read_only_enforced
    );
    let _ = std::io::stdout().flush();
    fastio_tests::wait_until(TIMEOUT, || Ok(marker.get() == 1))
        .map_err(|_| "the consumer's copy never ran".to_owned())?;
    stream.synchronize().map_err(|x| s(&x))?;
    // SAFETY: the copy into `host` is complete (synchronised above).
    let got = unsafe { std::slice::from_raw_parts(host.as_mut_ptr().cast_const(), len) };
    let wrong = got
        .chunks_exact(4)
        .enumerate()
        .filter(|(i, w)| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) != BASE + *i as u32)
        .count();
    if wrong != 0 {
        return Err(format!("{wrong} of {WORDS} words are not the kernel's"));
    }
    volume.release().map_err(|x| s(&x))?;
    Ok(format!("ORDERED: all {WORDS} words are the kernel's"))
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

// ---------------------------------------------------------------- kill -9 of a device holder

/// 1 GiB on a GPU; 64 MiB on the CPU fake (whose copies are memcpy in a debug build).
fn kill_size(driver: &Driver) -> usize {
    if driver.is_fake() { 64 << 20 } else { 1 << 30 }
}
const FILL: u8 = 0x5a;

/// A child of this program in `mode`, connected to the context at `address`, whose stdout
/// lines arrive on a channel (so every wait for one is bounded).
struct Peer {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Peer {
    fn spawn(mode: &str, address: &str) -> R<Peer> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg(mode)
            .env(fastio::CONTEXT_ENV, address)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawning {mode}: {e}"))?;
        let out = BufReader::new(child.stdout.take().ok_or("no child stdout")?);
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Peer { child, lines })
    }

    fn line(&mut self, what: &str) -> R<String> {
        self.lines
            .recv_timeout(Duration::from_secs(120))
            .map_err(|_| format!("no answer from the {what} within 120 s"))
    }

    fn tell(&mut self, text: &str) -> R<()> {
        let stdin = self.child.stdin.as_mut().ok_or("no child stdin")?;
        writeln!(stdin, "{text}").map_err(|e| e.to_string())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // A failed run leaves no process behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn device_kill(driver: &Driver) -> R<String> {
    use cuda_streams::memory_info;
    let s = |x: &dyn std::fmt::Display| x.to_string();
    let mib = |x: usize| x as f64 / (1 << 20) as f64;
    let (free0, _) = memory_info(driver, 0).map_err(|x| s(&x))?;
    let server = Server::start(server_config(driver)).map_err(|x| s(&x))?;
    let address = server.address().to_owned();
    let ctx = Context::connect(&address).map_err(|x| s(&x))?;
    let mut creator = Peer::spawn("device-kill-creator", &address)?;
    let ready = creator.line("creator")?;
    if !ready.starts_with("READY") {
        return Err(format!("creator: {ready}"));
    }
    let mut holder = Peer::spawn("device-kill-holder", &address)?;
    let first = holder.line("holder")?;
    if !first.starts_with("READ 0 wrong") {
        return Err(format!("holder: {first}"));
    }
    let (free_held, _) = memory_info(driver, 0).map_err(|x| s(&x))?;
    creator
        .child
        .kill()
        .map_err(|x| format!("kill -9 of the creator: {x}"))?;
    let killed = creator.child.wait().map_err(|x| s(&x))?;
    // The context notices the closed connection of the killed client asynchronously.
    fastio_tests::wait_until(TIMEOUT, || Ok(ctx.stats()?.connections <= 2))
        .map_err(|_| "the context never saw the creator go".to_owned())?;
    holder.tell("again")?;
    let after = holder.line("holder")?;
    if !after.starts_with("READ 0 wrong") {
        return Err(format!("holder after the kill: {after}"));
    }
    let live_after_kill = ctx.stats().map_err(|x| s(&x))?.device_live_bytes;
    if (live_after_kill as usize) < kill_size(driver) {
        return Err(format!(
            "the memory left the context while held: {live_after_kill} device bytes live"
        ));
    }
    drop(holder.child.stdin.take());
    let end = holder.line("holder")?;
    let status = holder.child.wait().map_err(|x| s(&x))?;
    if !status.success() || !end.starts_with("DONE") {
        return Err(format!("holder: {end} ({status})"));
    }
    // The publication still holds the memory (publications outlive their clients, as in
    // Clara): withdraw it, as the job's end does.
    ctx.get("kept")
        .and_then(fastio::Allocation::free)
        .map_err(|x| format!("freeing the publication: {x}"))?;
    fastio_tests::wait_until(TIMEOUT, || Ok(ctx.stats()?.device_live_bytes == 0)).map_err(
        |_| "device memory still live in the context after both clients went".to_owned(),
    )?;
    let stats = ctx.stats().map_err(|x| s(&x))?;
    let pooled = stats.device_pooled_bytes;
    drop(ctx);
    drop(server);
    // The driver frees memory shortly after its last holder goes: poll, bounded.
    let mut free_end = 0;
    let back = fastio_tests::wait_until(TIMEOUT, || {
        free_end = memory_info(driver, 0)?.0;
        Ok(free_end >= free0)
    });
    if back.is_err() {
        return Err(format!(
            "cuMemGetInfo free did not return to its baseline: {:.0} MiB before, {:.0} MiB after",
            mib(free0),
            mib(free_end)
        ));
    }
    Ok(format!(
        "creator killed ({killed}); holder read all {} bytes before and after; free {:.0} MiB -> {:.0} MiB while held -> {:.0} MiB at the end; \
         after both went and the publication was freed, the context kept {:.0} MiB warm in its device pool until it ended",
        kill_size(driver),
        mib(free0),
        mib(free_held),
        mib(free_end),
        pooled as f64 / (1 << 20) as f64
    ))
}

fn device_kill_creator(driver: &Driver) -> R<String> {
    use fastio::context::MemoryKind;
    let s = |x: &dyn std::fmt::Display| x.to_string();
    let ctx = Context::from_env().map_err(|x| s(&x))?;
    let volume = ctx
        .create_in(MemoryKind::Cuda { device: 0 }, kill_size(driver))
        .map_err(|x| s(&x))?;
    // Filled with the context's copy API (also what lets this mode run on the CPU fake).
    let mut fill = ctx.create(kill_size(driver)).map_err(|x| s(&x))?;
    fill.write_bytes(0, &vec![FILL; kill_size(driver)])
        .map_err(|x| s(&x))?;
    let pool = StreamPool::new(driver, StreamPoolConfig::new(0, 1, 0, 1, 0)).map_err(|x| s(&x))?;
    let stream = pool.allocate().map_err(|x| s(&x))?;
    fill.copy_to_device(driver, &volume, &stream)
        .map_err(|x| s(&x))?;
    stream.synchronize().map_err(|x| s(&x))?;
    fill.release().map_err(|x| s(&x))?;
    volume.publish("kept").map_err(|x| s(&x))?;
    println!("READY");
    let _ = std::io::stdout().flush();
    // Held until killed (or until the parent goes: end of input).
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).map_err(|x| s(&x))? > 0 {
        line.clear();
    }
    volume.release().map_err(|x| s(&x))?;
    Ok("released".into())
}

fn device_kill_holder(driver: &Driver) -> R<String> {
    let s = |x: &dyn std::fmt::Display| x.to_string();
    let ctx = Context::from_env().map_err(|x| s(&x))?;
    let volume = ctx
        .get_with("kept", fastio::AccessMode::ReadOnly)
        .map_err(|x| s(&x))?;
    let host = ctx.create(kill_size(driver)).map_err(|x| s(&x))?;
    let pool = StreamPool::new(driver, StreamPoolConfig::new(0, 1, 0, 1, 0)).map_err(|x| s(&x))?;
    let stream = pool.allocate().map_err(|x| s(&x))?;
    let read = || -> R<()> {
        host.copy_from_device(driver, &volume, &stream)
            .map_err(|x| s(&x))?;
        stream.synchronize().map_err(|x| s(&x))?;
        // SAFETY: the host allocation is mapped (the handle lives) and the copy into it is
        // done (synchronised); nothing else writes it.
        let got = unsafe { std::slice::from_raw_parts(host.as_ptr(), kill_size(driver)) };
        let wrong = got.iter().filter(|b| **b != FILL).count();
        println!("READ {wrong} wrong of {}", kill_size(driver));
        let _ = std::io::stdout().flush();
        Ok(())
    };
    read()?;
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).map_err(|x| s(&x))? > 0 {
        line.clear();
        read()?;
    }
    let registrations = host.host_registrations();
    host.release().map_err(|x| s(&x))?;
    volume.release().map_err(|x| s(&x))?;
    Ok(format!(
        "DONE (host mapping registered {registrations} time(s))"
    ))
}

// ---------------------------------------------------------------- peer access

const PEER_NAME: &str = "on-gpu0";

fn peer_size(driver: &Driver) -> usize {
    if driver.is_fake() {
        16 << 20
    } else {
        256 << 20
    }
}

fn peer_pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 253) as u8 ^ 0x3c).collect()
}

/// `peer`: one client makes a `cuda:0` allocation through the context, fills it and
/// publishes it; another process gets it read-only, maps it on `cuda:1` through peer access
/// (`Allocation::map_device_on`) and copies it out on a stream of `cuda:1`, through that
/// mapping: every byte must be the first client's.
fn peer(driver: &Driver) -> R<String> {
    let s = |x: &dyn std::fmt::Display| x.to_string();
    if driver.device_count() < 2 {
        return Err(format!(
            "peer access needs two GPUs; this machine has {}",
            driver.device_count()
        ));
    }
    let server = Server::start(server_config(driver)).map_err(|x| s(&x))?;
    let address = server.address().to_owned();
    let mut creator = Peer::spawn("peer-creator", &address)?;
    let ready = creator.line("creator")?;
    if !ready.starts_with("READY") {
        return Err(format!("creator: {ready}"));
    }
    let mut reader = Peer::spawn("peer-reader", &address)?;
    let read = reader.line("reader")?;
    let status = reader.child.wait().map_err(|x| s(&x))?;
    if !status.success() || !read.starts_with("READ 0 wrong") {
        return Err(format!("reader: {read} ({status})"));
    }
    drop(creator.child.stdin.take());
    let end = creator.line("creator")?;
    let status = creator.child.wait().map_err(|x| s(&x))?;
    if !status.success() {
        return Err(format!("creator: {end} ({status})"));
    }
    Ok(format!(
        "a cuda:0 allocation of the context ({} MiB), made and filled by one process, read by another on cuda:1 through peer access: {read}",
        peer_size(driver) >> 20
    ))
}

fn peer_creator(driver: &Driver) -> R<String> {
    use fastio::context::MemoryKind;
    let s = |x: &dyn std::fmt::Display| x.to_string();
    let len = peer_size(driver);
    let ctx = Context::from_env().map_err(|x| s(&x))?;
    let volume = ctx
        .create_in(MemoryKind::Cuda { device: 0 }, len)
        .map_err(|x| s(&x))?;
    let mut fill = ctx.create(len).map_err(|x| s(&x))?;
    fill.write_bytes(0, &peer_pattern(len)).map_err(|x| s(&x))?;
    let pool = StreamPool::new(driver, StreamPoolConfig::new(0, 1, 0, 1, 0)).map_err(|x| s(&x))?;
    let stream = pool.allocate().map_err(|x| s(&x))?;
    fill.copy_to_device(driver, &volume, &stream)
        .map_err(|x| s(&x))?;
    stream.synchronize().map_err(|x| s(&x))?;
    fill.release().map_err(|x| s(&x))?;
    volume.publish(PEER_NAME).map_err(|x| s(&x))?;
    println!("READY");
    let _ = std::io::stdout().flush();
    // Held until the parent says so (end of input).
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).map_err(|x| s(&x))? > 0 {
        line.clear();
    }
    volume.free().map_err(|x| s(&x))?;
    Ok("freed".into())
}

fn peer_reader(driver: &Driver) -> R<String> {
    let s = |x: &dyn std::fmt::Display| x.to_string();
    let len = peer_size(driver);
    let ctx = Context::from_env().map_err(|x| s(&x))?;
    let volume = ctx
        .get_with(PEER_NAME, fastio::AccessMode::ReadOnly)
        .map_err(|x| s(&x))?;
    let on1 = volume
        .map_device_on(driver, 1)
        .map_err(|x| format!("mapping the cuda:0 allocation on cuda:1: {x}"))?;
    if on1.device != 1 || !on1.read_only || on1.size < len {
        return Err(format!("the peer mapping is not what was asked: {on1:?}"));
    }
    let host = ctx.create(len).map_err(|x| s(&x))?;
    let pool = StreamPool::new(driver, StreamPoolConfig::new(1, 1, 0, 1, 0)).map_err(|x| s(&x))?;
    let stream = pool.allocate().map_err(|x| s(&x))?;
    let t0 = Instant::now();
    host.copy_from_device(driver, &volume, &stream)
        .map_err(|x| format!("copying out on a stream of cuda:1: {x}"))?;
    stream.synchronize().map_err(|x| s(&x))?;
    let secs = t0.elapsed().as_secs_f64();
    let got = host.read_bytes(0, len).map_err(|x| s(&x))?;
    let wrong = got
        .iter()
        .zip(peer_pattern(len))
        .filter(|(a, b)| **a != *b)
        .count();
    host.release().map_err(|x| s(&x))?;
    volume.release().map_err(|x| s(&x))?;
    Ok(format!(
        "READ {wrong} wrong of {len} bytes through the read-only peer mapping on cuda:{} (read-only enforced by the driver: {}), first copy {:.1} ms ({:.1} GB/s, registration included)",
        on1.device,
        on1.read_only_enforced,
        secs * 1e3,
        len as f64 / secs / 1e9
    ))
}

// ---------------------------------------------------------------- the context's copy API

fn context_copy(driver: &Driver) -> R<String> {
    use cuda_streams::testing::PinnedBuffer;
    use cuda_streams::{DeviceAccess, DeviceMemory, is_host_registered};
    use fastio::context::MemoryKind;
    let len = kill_size(driver);
    let s = |x: &dyn std::fmt::Display| x.to_string();
    let pool = StreamPool::new(driver, StreamPoolConfig::new(0, 1, 0, 1, 0)).map_err(|x| s(&x))?;
    let stream = pool.allocate().map_err(|x| s(&x))?;

    // Pinned memory against a plain device allocation: the yardstick (none on the fake).
    let pin = if driver.is_fake() {
        (f64::NAN, f64::NAN)
    } else {
        let mem = DeviceMemory::create(driver, 0, len).map_err(|x| s(&x))?;
        let map = mem.map(0, DeviceAccess::ReadWrite).map_err(|x| s(&x))?;
        let pinned = PinnedBuffer::new(driver, len).map_err(|x| s(&x))?;
        let p = pinned.as_mut_ptr();
        let h = gbps(len, || {
            // SAFETY: `pinned` is len live bytes for the whole measurement (each copy is synchronised).
            unsafe { map.copy_from_host_async(&stream, 0, p, len) }.map_err(|x| s(&x))?;
            stream.synchronize().map_err(|x| s(&x))
        })?;
        let d = gbps(len, || {
            // SAFETY: as above; nothing else touches the bytes meanwhile.
            unsafe { map.copy_to_host_async(&stream, 0, p, len) }.map_err(|x| s(&x))?;
            stream.synchronize().map_err(|x| s(&x))
        })?;
        (h, d)
    };

    let server = Server::start(server_config(driver)).map_err(|x| s(&x))?;
    let ctx = Context::connect(server.address()).map_err(|x| s(&x))?;
    let mut src = ctx.create(len).map_err(|x| s(&x))?;
    let pattern: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    src.write_bytes(0, &pattern).map_err(|x| s(&x))?;
    let dev = ctx
        .create_in(MemoryKind::Cuda { device: 0 }, len)
        .map_err(|x| format!("create on cuda:0 through the context: {x}"))?;
    let back = ctx.create(len).map_err(|x| s(&x))?;
    let t0 = Instant::now();
    src.copy_to_device(driver, &dev, &stream)
        .map_err(|x| s(&x))?;
    stream.synchronize().map_err(|x| s(&x))?;
    let first_ms = t0.elapsed().as_secs_f64() * 1e3;
    let h2d = gbps(len, || {
        src.copy_to_device(driver, &dev, &stream)
            .map_err(|x| s(&x))?;
        stream.synchronize().map_err(|x| s(&x))
    })?;
    let d2h = gbps(len, || {
        back.copy_from_device(driver, &dev, &stream)
            .map_err(|x| s(&x))?;
        stream.synchronize().map_err(|x| s(&x))
    })?;
    if back.read_bytes(0, len).map_err(|x| s(&x))? != pattern {
        return Err("the bytes copied back are not the bytes copied in".into());
    }
    let regs = (src.host_registrations(), back.host_registrations());
    if regs != (1, 1) {
        return Err(format!(
            "each host mapping should be registered once across its copies: {regs:?}"
        ));
    }
    let (ps, pb) = (src.as_ptr(), back.as_ptr());
    if !is_host_registered(driver, ps, len) || !is_host_registered(driver, pb, len) {
        return Err("a host mapping is not registered after its copies".into());
    }
    src.release().map_err(|x| s(&x))?;
    back.release().map_err(|x| s(&x))?;
    if is_host_registered(driver, ps, len) || is_host_registered(driver, pb, len) {
        return Err("a host mapping stayed registered after its handle was released".into());
    }
    dev.release().map_err(|x| s(&x))?;
    Ok(format!(
        "{} MiB round trip through a cuda:0 allocation with the context's copy API, each host mapping registered once (7 copies in, 6 out) and unregistered at release\n\
         | {} MiB | H2D GB/s | D2H GB/s |\n|---|---:|---:|\n\
         | pinned (cuMemHostAlloc) | {:.1} | {:.1} |\n\
         | Fast I/O allocation, Allocation::copy_to_device / copy_from_device | {h2d:.1} ({:.2}x) | {d2h:.1} ({:.2}x) |\n\
         first copy, registration included: {first_ms:.1} ms",
        len >> 20,
        len >> 20,
        pin.0,
        pin.1,
        h2d / pin.0,
        d2h / pin.1
    ))
}

/// The context server's configuration: device memory through `driver`.
fn server_config(driver: &Driver) -> ServerConfig {
    ServerConfig {
        device_driver: Some(driver.clone()),
        ..ServerConfig::default()
    }
}

/// Environment variable that makes `device-kill` and `copy` run on cuda-streams' CPU fake
/// (device memory = memfds crossing processes as descriptors), so CI runs their logic.
const FAKE_ENV: &str = "FASTIO_GPU_HANDOFF_FAKE";

/// Runs `f` with the probed driver: prints `PASS <report>` (or the bare report for a child
/// mode) and exits 0, `FAIL <why>` and exits 1, or says there is no device and exits 2.
fn run_mode(f: fn(&Driver) -> R<String>, pass: bool) -> ExitCode {
    let driver = if std::env::var_os(FAKE_ENV).is_some_and(|v| v == "1") {
        Driver::fake(2)
    } else {
        match probe() {
            Ok(d) => d,
            Err(code) => return code,
        }
    };
    match f(&driver) {
        Ok(report) if pass => {
            println!("PASS {report}");
            ExitCode::SUCCESS
        }
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("FAIL {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("device-kill") => run_mode(device_kill, true),
        Some("device-kill-creator") => run_mode(device_kill_creator, false),
        Some("device-kill-holder") => run_mode(device_kill_holder, false),
        Some("copy") => run_mode(context_copy, true),
        Some("peer") => {
            // One GPU: nothing to check here (exit 2, as for no GPU at all).
            if std::env::var_os(FAKE_ENV).is_none()
                && let Ok(d) = Driver::probe()
                && d.device_count() < 2
            {
                println!(
                    "NO SECOND GPU: peer access needs two; this machine has {}",
                    d.device_count()
                );
                return ExitCode::from(2);
            }
            run_mode(peer, true)
        }
        Some("peer-creator") => run_mode(peer_creator, false),
        Some("peer-reader") => run_mode(peer_reader, false),
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
        Some(mode @ ("device" | "device-consumer")) => {
            let driver = match probe() {
                Ok(d) => d,
                Err(code) => return code,
            };
            let (r, pass) = if mode == "device" {
                (device_producer(&driver), "PASS")
            } else {
                (device_consumer(&driver), "")
            };
            match r {
                Ok(report) => {
                    println!("{pass}{}{report}", if pass.is_empty() { "" } else { " " });
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("FAIL {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => producer(),
    }
}
