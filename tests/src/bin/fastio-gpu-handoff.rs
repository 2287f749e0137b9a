//! Streams travel with data, across processes, through the Fast I/O context: the producer holds its stream behind a gate, records an interprocess CUDA
//! event on it, and publishes an allocation carrying the event's handle; a second process
//! gets the allocation from the context, imports the event from it, and makes its own
//! stream wait on it. The consumer's stream work must not run before the producer's gate
//! opens, and must run after, with no host thread blocked on the GPU.
//!
//! Run on a GPU machine (it is in the `cargo xtask gpu-test` bundle): prints `PASS ...` and
//! exits 0; without a CUDA driver it says so and exits 2.

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

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("consumer") => consumer(),
        _ => producer(),
    }
}
