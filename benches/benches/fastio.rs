//! The core benchmarks: fastio against a bare socket round trip, memcpy and files.
//!
//! One binary plays two roles. Run by `cargo bench` it is the criterion driver: it hosts a
//! context server and publishes through the server's in-process context. Run with
//! `FASTIO_BENCH_ROLE=helper` it is the helper: a second process, started once, that
//! connects to that server as an ordinary client and obeys commands sent over a
//! `SOCK_SEQPACKET` socket given to it as its standard input. So every "other process"
//! below is a real other process, and its start-up is never measured.
//!
//! docs/benchmarks.md says what each case measures; `cargo xtask bench` runs this and
//! writes the table there.

use std::hint::black_box;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use criterion::{Criterion, SamplingMode};
use fastio::shm::TransferError;
use fastio::shm::transfer::{recv_message, send_message};
use fastio::{AccessMode, Allocation, Context, CreateOptions, Prefault, Server, ServerConfig};
use fastio_benches::{Helper, filled_buffer, read_file_in_chunks, target_dir, warm_file};

/// Selects the helper role of this binary.
const ROLE_ENV: &str = "FASTIO_BENCH_ROLE";
const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
/// The payload of the create+fill and handover cases.
const PAYLOAD: usize = 256 * MIB;
/// Readers copy the payload out through a buffer of this size, which stays in cache.
const CHUNK: usize = MIB;

fn main() {
    if std::env::var_os(ROLE_ENV).is_some() {
        if let Err(e) = helper() {
            eprintln!("fastio bench helper: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = driver() {
        eprintln!("fastio bench: {e:#}");
        std::process::exit(1);
    }
}

fn driver() -> anyhow::Result<()> {
    let mut c = Criterion::default().configure_from_args();
    let server = Server::start(ServerConfig::default())?;
    let helper = Helper::spawn(ROLE_ENV, server.address())?;
    bench_get(&mut c, &server, &helper)?;
    bench_create_fill(&mut c)?;
    bench_handover(&mut c, &server, &helper)?;
    helper.stop()?;
    c.final_summary();
    Ok(())
}

/// `get` (map included) of a published allocation by another process, at two
/// sizes, next to one bare round trip between the same two processes.
fn bench_get(c: &mut Criterion, server: &Server, helper: &Helper) -> anyhow::Result<()> {
    let ctx = server.local_context();
    let small = ctx.create(MIB)?;
    small.publish("bench-get-1MiB")?;
    // Created lazily: `create` reserves the memory but nothing here touches it.
    let large = ctx.create(GIB)?;
    large.publish("bench-get-1GiB")?;

    let mut group = c.benchmark_group("get");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("socket_round_trip", |b| {
        b.iter(|| helper.call("ping").expect("ping"))
    });
    for (id, name) in [
        ("fastio_get_1MiB", "bench-get-1MiB"),
        ("fastio_get_1GiB", "bench-get-1GiB"),
    ] {
        group.bench_function(id, |b| {
            // The helper times its own gets, so the command round trip is not counted.
            b.iter_custom(|iters| {
                let nanos = helper.call(&format!("get {name} {iters}")).expect("get");
                Duration::from_nanos(nanos.parse().expect("helper answers nanoseconds"))
            })
        });
    }
    group.finish();
    small.free()?;
    large.free()?;
    Ok(())
}

/// Create + fill of 256 MiB, fresh against recycled, next to a plain memcpy.
fn bench_create_fill(c: &mut Criterion) -> anyhow::Result<()> {
    let source = filled_buffer(PAYLOAD);
    // Every byte is overwritten, so recycled segments need not be zeroed.
    let options = CreateOptions {
        zeroed: false,
        prefault: Prefault::Lazy,
        hugetlb: false,
    };
    let mut group = c.benchmark_group("create_fill_256MiB");
    slow_group(&mut group);
    let populate = CreateOptions {
        prefault: Prefault::Populate,
        ..options
    };
    for (id, pool_bytes, options) in [
        ("fresh_segment", 0, options),
        ("warm_segment", GIB as u64, options),
        ("warm_segment_populate", GIB as u64, populate),
    ] {
        // In-process contexts: this case is about memory, not about sockets.
        let ctx = Context::in_process_with_pool(pool_bytes);
        group.bench_function(id, |b| {
            b.iter(|| {
                let mut alloc = ctx.create_with(PAYLOAD, options).expect("create");
                alloc.write_bytes(0, &source).expect("fill");
                alloc.free().expect("free");
            })
        });
        let stats = ctx.stats()?;
        eprintln!(
            "create_fill_256MiB/{id}: {} segments created, {} recycled",
            stats.segments_created, stats.segments_recycled
        );
    }
    let mut target = filled_buffer(PAYLOAD);
    group.bench_function("memcpy_touched", |b| {
        b.iter(|| {
            target.copy_from_slice(black_box(&source));
            black_box(target.as_ptr());
        })
    });
    group.finish();
    Ok(())
}

/// 256 MiB from this process to the helper, through fastio and through files.
fn bench_handover(c: &mut Criterion, server: &Server, helper: &Helper) -> anyhow::Result<()> {
    let source = filled_buffer(PAYLOAD);
    let ctx = server.local_context();
    let options = CreateOptions {
        zeroed: false,
        prefault: Prefault::Lazy,
        hugetlb: false,
    };
    let shm_path = PathBuf::from(format!("/dev/shm/fastio-bench-{}.bin", std::process::id()));
    let disk_dir = target_dir().join("fastio-bench");
    std::fs::create_dir_all(&disk_dir)?;
    let disk_path = disk_dir.join(format!("handover-{}.bin", std::process::id()));

    let mut group = c.benchmark_group("handover_256MiB");
    slow_group(&mut group);
    let mut serial = 0u64;
    let populate = CreateOptions {
        prefault: Prefault::Populate,
        ..options
    };
    for (id, options, read) in [
        ("fastio", options, "read"),
        ("fastio_populate", populate, "read"),
        ("fastio_populate_both", populate, "read-populate"),
    ] {
        group.bench_function(id, |b| {
            b.iter(|| {
                serial += 1;
                let name = format!("bench-handover-{serial}");
                let mut alloc = ctx.create_with(PAYLOAD, options).expect("create");
                alloc.write_bytes(0, &source).expect("fill");
                alloc.publish(&name).expect("publish");
                let sum = helper.call(&format!("{read} {name}")).expect("read");
                alloc.free().expect("free");
                black_box(sum);
            })
        });
    }
    for (id, path) in [("file_dev_shm", &shm_path), ("file_target", &disk_path)] {
        // Created and sized once; each iteration overwrites it in place (no fsync).
        let file = warm_file(path, &source)?;
        let command = format!("read-file {}", path.display());
        group.bench_function(id, |b| {
            b.iter(|| {
                file.write_all_at(&source, 0).expect("write");
                black_box(helper.call(&command).expect("read"));
            })
        });
    }
    group.finish();
    let stats = ctx.stats()?;
    eprintln!(
        "handover_256MiB: {} segments created, {} recycled",
        stats.segments_created, stats.segments_recycled
    );
    for path in [&shm_path, &disk_path] {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// Settings for cases that take tens of milliseconds to seconds an iteration.
fn slow_group(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
}

/// A buffer of `len` non-zero bytes, every page touched.
/// The helper role: obeys commands on its standard input (a seqpacket socket).
fn helper() -> anyhow::Result<()> {
    let socket = std::io::stdin().as_fd().try_clone_to_owned()?;
    let mut ctx: Option<Context> = None;
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let command = match recv_message(socket.as_fd()) {
            Ok(received) => String::from_utf8(received.body)?,
            Err(TransferError::Disconnected) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let words: Vec<&str> = command.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["quit"] => {
                send_message(socket.as_fd(), b"bye", &[])?;
                return Ok(());
            }
            ["ping"] => Ok("pong".to_owned()),
            ["connect", address] => Context::connect(address)
                .map(|c| ctx = Some(c))
                .map(|()| "ok".to_owned())
                .map_err(anyhow::Error::from),
            ["get", name, iters] => connected(&ctx).and_then(|ctx| timed_gets(ctx, name, iters)),
            ["read" | "read-populate", name] => connected(&ctx).and_then(|ctx| {
                let prefault = if words[0] == "read" {
                    Prefault::Lazy
                } else {
                    Prefault::Populate
                };
                let alloc = ctx.get_with_options(name, AccessMode::ReadOnly, prefault)?;
                let sum = read_allocation(&alloc, &mut buffer);
                alloc.release()?;
                Ok(sum.to_string())
            }),
            ["read-file", path] => read_file(Path::new(path), &mut buffer).map(|s| s.to_string()),
            _ => Err(anyhow::anyhow!("unknown command")),
        };
        let answer = answer.unwrap_or_else(|e| format!("error: {e:#}"));
        send_message(socket.as_fd(), answer.as_bytes(), &[])?;
    }
}

fn connected(ctx: &Option<Context>) -> anyhow::Result<&Context> {
    ctx.as_ref().context("not connected")
}

/// `iters` gets of `name`, timed; the releases between them are not.
fn timed_gets(ctx: &Context, name: &str, iters: &str) -> anyhow::Result<String> {
    let iters: u64 = iters.parse()?;
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let alloc = ctx.get_with(name, AccessMode::ReadOnly)?;
        total += start.elapsed();
        black_box(alloc.as_ptr());
        alloc.release()?;
    }
    Ok(total.as_nanos().to_string())
}

/// Copies every byte of `alloc` out through `buffer`; returns a checksum of the ends of
/// each chunk so that the copies are used.
fn read_allocation(alloc: &Allocation, buffer: &mut [u8]) -> u64 {
    let base = alloc.as_ptr();
    let mut sum = 0u64;
    let mut offset = 0;
    while offset < alloc.size() {
        let len = buffer.len().min(alloc.size() - offset);
        // SAFETY: `offset + len <= size`, so the source lies inside the live mapping of
        // `alloc`, which outlives this call; `buffer` is a distinct private buffer of at
        // least `len` bytes. Copying with a raw pointer forms no reference to the shared
        // memory, which another process could in principle write.
        unsafe { std::ptr::copy_nonoverlapping(base.add(offset), buffer.as_mut_ptr(), len) };
        sum += u64::from(buffer[0]) + u64::from(buffer[len - 1]);
        offset += len;
    }
    sum
}

/// Reads the whole file at `path` through `buffer`; same checksum as [`read_allocation`].
fn read_file(path: &Path, buffer: &mut [u8]) -> anyhow::Result<u64> {
    let mut sum = 0u64;
    read_file_in_chunks(path, buffer, |chunk| {
        sum += u64::from(chunk[0]) + u64::from(chunk[chunk.len() - 1]);
    })?;
    Ok(sum)
}
