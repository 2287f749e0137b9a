//! Handover benchmark: a producer fills N bytes, another process reads every byte, for
//! sizes from 1 MiB to 1 GiB, fastio against files, with the floor measured in the same
//! run. Writes `target/fastio-bench/handover.json`, which `cargo xtask bench` turns into a
//! table and a plot in docs/benchmarks.md.
//!
//! Ways (each a median of several rounds, in milliseconds):
//! - floor: memcpy into an already-touched buffer + a full read (sum of u64) of a touched
//!   buffer, in one process: what any handover has to cost;
//! - fastio steady: the same two processes every round; the producer `create`s (not
//!   zeroed: it overwrites every byte), fills, publishes; the consumer `get`s read-only and
//!   sums every byte; the producer then frees. The pool hands the segment back and both
//!   processes find their kept mappings. Measured after warm-up rounds that give the
//!   background collapser the time to make the segment huge (at most 40; the count is
//!   reported);
//! - fastio cold: a new producer process and a new consumer process every round (their
//!   own timings, start-up excluded): fresh mappings of a warm pooled segment;
//! - file in /dev/shm and file in the page cache (under target/): the producer `pwrite`s
//!   into a file kept open, the consumer `pread`s it in 1 MiB chunks and sums.
//!
//! Usage: `cargo bench -p fastio-benches --bench handover [-- --max-mib N --rounds N]`.

use std::hint::black_box;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use fastio::shm::TransferError;
use fastio::shm::transfer::{recv_message, send_message};
use fastio::{AccessMode, Context, CreateOptions, Prefault, Server, ServerConfig};
use fastio_benches::{Helper, filled_buffer, read_file_in_chunks, target_dir, warm_file};

const ROLE_ENV: &str = "FASTIO_HANDOVER_ROLE";
const MIB: usize = 1 << 20;
const CHUNK: usize = MIB;

fn main() {
    let result = if std::env::var_os(ROLE_ENV).is_some() {
        helper()
    } else {
        driver()
    };
    if let Err(e) = result {
        eprintln!("handover bench: {e:#}");
        std::process::exit(1);
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn options() -> CreateOptions {
    CreateOptions {
        zeroed: false,
        prefault: Prefault::Populate,
        hugetlb: false,
    }
}

fn driver() -> anyhow::Result<()> {
    let max_mib = arg("--max-mib", 1024);
    let max_rounds = arg("--rounds", 7);
    let sizes: Vec<usize> = [1, 16, 256, 1024]
        .into_iter()
        .filter(|&m| m <= max_mib)
        .map(|m| m * MIB)
        .collect();
    let server = Server::start(ServerConfig {
        // Room for the largest size and its consumer's next: sizes take turns.
        pool_bytes: 2 << 30,
        ..ServerConfig::default()
    })?;
    let ctx = server.local_context();
    let free_huge_at_start = fastio::shm::free_huge_page_bytes().unwrap_or(0);
    let consumer = Helper::spawn(ROLE_ENV, server.address())?;
    let disk_dir = target_dir().join("fastio-bench");
    std::fs::create_dir_all(&disk_dir)?;
    let mut rows = Vec::new();
    for &size in &sizes {
        let rounds = if size >= 256 * MIB {
            max_rounds
        } else {
            max_rounds * 3
        };
        let source = filled_buffer(size);
        let mut target = filled_buffer(size);
        let (mut copy, mut read) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            target.copy_from_slice(black_box(&source));
            copy.push(ms(t));
            let t = Instant::now();
            black_box(sum_u64(&target));
            read.push(ms(t));
        }
        drop(target);
        let (copy, read) = (median(copy), median(read));

        // fastio, steady state: the same two processes. Warm-up rounds first, until the
        // background collapser has turned the segment into huge pages (it works while the
        // segment rests in the pool between rounds), at most 40.
        let mut warmup = 0;
        let huge_before = ctx.stats()?.huge_page_bytes;
        while warmup < 40
            && collapsing()
            && size as u64 >= fastio::shm::huge_page_size() * 4
            && ctx.stats()?.huge_page_bytes.saturating_sub(huge_before) < size as u64 * 9 / 10
        {
            let name = format!("w-{size}-{warmup}");
            let mut a = ctx.create_with(size, options())?;
            a.write_bytes(0, &source)?;
            a.publish(&name)?;
            consumer.call(&format!("read {name}"))?;
            a.free()?;
            std::thread::sleep(std::time::Duration::from_millis(50));
            warmup += 1;
        }
        let mut steady = Vec::new();
        let mut faults = (0, 0);
        for round in 0..=rounds {
            let name = format!("h-{size}-{round}");
            let f0 = minor_faults();
            let t = Instant::now();
            let mut a = ctx.create_with(size, options())?;
            a.write_bytes(0, &source)?;
            a.publish(&name)?;
            let consumer_faults: u64 = consumer.call(&format!("read {name}"))?.parse()?;
            let elapsed = ms(t);
            a.free()?;
            faults = (minor_faults() - f0, consumer_faults);
            if round > 0 {
                steady.push(elapsed); // The first round makes the mappings.
            }
        }
        let steady = median(steady);

        // fastio, cold: new processes each round (their own timings).
        let mut cold = Vec::new();
        for round in 0..rounds.min(5) {
            let name = format!("c-{size}-{round}");
            let producer = Helper::spawn(ROLE_ENV, server.address())?;
            let reader = Helper::spawn(ROLE_ENV, server.address())?;
            let p: f64 = producer.call(&format!("produce {name} {size}"))?.parse()?;
            let c: f64 = reader.call(&format!("timed-read {name}"))?.parse()?;
            producer.call(&format!("free {name}"))?;
            cold.push(p + c);
            producer.stop()?;
            reader.stop()?;
        }
        let cold = median(cold);

        let mut files = Vec::new();
        for path in [
            PathBuf::from(format!(
                "/dev/shm/fastio-handover-{}.bin",
                std::process::id()
            )),
            disk_dir.join(format!("handover-{}.bin", std::process::id())),
        ] {
            let file = warm_file(&path, &source)?;
            let mut times = Vec::new();
            for _ in 0..rounds {
                let t = Instant::now();
                file.write_all_at(&source, 0)?;
                consumer.call(&format!("read-file {}", path.display()))?;
                times.push(ms(t));
            }
            std::fs::remove_file(&path)?;
            files.push(median(times));
        }
        let stats = ctx.stats()?;
        eprintln!(
            "{} MiB ({warmup} warm-up rounds): floor {copy:.2}+{read:.2} ms, fastio steady {steady:.2} ms (faults: producer {}, consumer {}), cold {cold:.2} ms, /dev/shm {:.2} ms, page cache {:.2} ms; huge pages {} MiB",
            size / MIB,
            faults.0,
            faults.1,
            files[0],
            files[1],
            stats.huge_page_bytes >> 20
        );
        rows.push(serde_json::json!({
            "bytes": size,
            "floor_copy_ms": copy,
            "floor_read_ms": read,
            "fastio_steady_ms": steady,
            "fastio_cold_ms": cold,
            "file_dev_shm_ms": files[0],
            "file_page_cache_ms": files[1],
            "producer_faults": faults.0,
            "consumer_faults": faults.1,
            "huge_page_bytes": stats.huge_page_bytes,
            "warmup_rounds": warmup,
        }));
    }
    consumer.stop()?;
    let out = serde_json::json!({
        "page_size": format!(
            "4 KiB and huge pages (shmem THP {}; segments of 2 MiB and more collapsed at create while free huge pages last, {} MiB free at the start of the run, pooled ones in the background)",
            fastio::shm::ShmemThp::current().map_or("n/a", |m| m.as_str()),
            free_huge_at_start >> 20
        ),
        "rows": rows,
    });
    let path = disk_dir.join("handover.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out)?)?;
    eprintln!("written to {}", path.display());
    Ok(())
}

/// Whether the context collapses pooled segments here (shmem THP not `deny`, not off).
fn collapsing() -> bool {
    std::env::var(fastio::context::COLLAPSE_ENV).map_or(true, |v| v != "0")
        && !matches!(
            fastio::shm::ShmemThp::current(),
            None | Some(fastio::shm::ShmemThp::Deny)
        )
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn minor_faults() -> u64 {
    // The 10th field after the command in /proc/self/stat is minflt.
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            rest.split_whitespace().nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}

fn sum_u64(bytes: &[u8]) -> u64 {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
        .fold(0u64, u64::wrapping_add)
}

fn helper() -> anyhow::Result<()> {
    let socket = std::io::stdin().as_fd().try_clone_to_owned()?;
    let mut ctx: Option<Context> = None;
    let mut held = Vec::new();
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let command = match recv_message(socket.as_fd()) {
            Ok(received) => String::from_utf8(received.body)?,
            Err(TransferError::Disconnected) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let words: Vec<&str> = command.split_whitespace().collect();
        let answer: anyhow::Result<String> = (|| match words.as_slice() {
            ["quit"] => Ok("bye".to_owned()),
            ["connect", address] => {
                ctx = Some(Context::connect(address)?);
                Ok("ok".to_owned())
            }
            ["read", name] => {
                let ctx = ctx.as_ref().context("not connected")?;
                let f0 = minor_faults();
                let a = ctx.get_with(name, AccessMode::ReadOnly)?;
                black_box(sum_allocation(&a));
                a.release()?;
                Ok((minor_faults() - f0).to_string())
            }
            ["timed-read", name] => {
                let ctx = ctx.as_ref().context("not connected")?;
                let t = Instant::now();
                let a = ctx.get_with(name, AccessMode::ReadOnly)?;
                black_box(sum_allocation(&a));
                let elapsed = ms(t);
                a.release()?;
                Ok(elapsed.to_string())
            }
            ["produce", name, size] => {
                let ctx = ctx.as_ref().context("not connected")?;
                let size: usize = size.parse()?;
                let source = filled_buffer(size);
                let t = Instant::now();
                let mut a = ctx.create_with(size, options())?;
                a.write_bytes(0, &source)?;
                a.publish(name)?;
                let elapsed = ms(t);
                held.push(a);
                Ok(elapsed.to_string())
            }
            ["free", _] => {
                for a in held.drain(..) {
                    a.free()?;
                }
                Ok("ok".to_owned())
            }
            ["read-file", path] => {
                let mut sum = 0u64;
                read_file_in_chunks(Path::new(path), &mut buffer, |chunk| {
                    sum = sum.wrapping_add(sum_u64(chunk));
                })?;
                Ok(black_box(sum).to_string())
            }
            _ => Err(anyhow::anyhow!("unknown command {command:?}")),
        })();
        let text = answer.unwrap_or_else(|e| format!("error: {e:#}"));
        send_message(socket.as_fd(), text.as_bytes(), &[])?;
        if words.first() == Some(&"quit") {
            return Ok(());
        }
    }
}

/// Sums every u64 of the allocation in place.
fn sum_allocation(a: &fastio::Allocation) -> u64 {
    // SAFETY: the allocation is live and mapped for `size` bytes, page-aligned (so u8 is
    // enough alignment for the byte slice), and its producer finished writing before it
    // told us the name: nobody writes while this slice lives.
    let bytes = unsafe { std::slice::from_raw_parts(a.as_ptr(), a.size()) };
    sum_u64(bytes)
}
