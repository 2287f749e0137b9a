//! `cargo xtask bench-handover` (also run first by `cargo xtask bench`): the handover
//! benchmarks, in one run: the floor, steady-state and cold handover from 1 MiB to 1 GiB
//! against files (benches/benches/handover.rs), Python's in-place path against
//! multiprocessing.shared_memory and np.save/np.load (benches/python/bench_inplace.py),
//! and the I/O-bound four-operator pipeline with a 1 GiB volume against the same pipeline
//! through files (benches/pipelines/chain*.yaml), alternating, warm and cold. Writes the
//! tables and the targets into docs/benchmarks.md between markers, and the plot
//! docs/handover.svg.
//!
//! Flags: `--rounds N` (rounds per size of the handover benches, default 5),
//! `--pipeline-rounds N` (timed runs per variant and regime of the pipeline, default 3),
//! `--pipeline-only` (the pipeline alone, printed; the doc is left as it is).

use std::fmt::Write as _;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

const DOC: &str = "docs/benchmarks.md";
const SVG: &str = "docs/handover.svg";
const START: &str = "<!-- handover:start (written by `cargo xtask bench-handover`) -->";
const END: &str = "<!-- handover:end -->";
/// Timed runs of each pipeline variant in each regime (alternating, warm, cold).
const PIPELINE_ROUNDS: usize = 3;
/// The pause before a cold run: longer than the 2 s after which a VM's free page reporting
/// (virtio-balloon) hands freed blocks of huge-page size back to the host, with the time
/// the reporting itself takes.
const COLD_PAUSE: std::time::Duration = std::time::Duration::from_secs(10);
/// Where the files variant of the chain pipeline writes: tmpfs, so that the baseline never
/// waits for a disk (and a 3 GiB run never fills one); the strongest case for files.
const CHAIN_OUTPUT: &str = "/dev/shm/fastio-bench-chain";

/// Runs everything (short: about two minutes on a quiet 2-core machine) and writes the doc.
pub fn bench(args: &[String]) -> anyhow::Result<()> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let rounds = value("--rounds").unwrap_or_else(|| "5".into());
    let pipeline_rounds = value("--pipeline-rounds")
        .map(|r| r.parse::<usize>())
        .transpose()
        .context("--pipeline-rounds takes a number")?
        .unwrap_or(PIPELINE_ROUNDS)
        .max(1);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if args.iter().any(|a| a == "--pipeline-only") {
        // For work on the pipeline alone: printed, the doc left as it is.
        let pipeline = bench_pipeline(&cargo, pipeline_rounds)?;
        print!("{}", render_pipeline(&pipeline)?);
        return Ok(());
    }
    let status = Command::new(&cargo)
        .args([
            "bench",
            "-p",
            "fastio-benches",
            "--bench",
            "handover",
            "--",
            "--rounds",
        ])
        .arg(&rounds)
        .status()
        .context("cannot run cargo bench")?;
    ensure!(status.success(), "the handover bench failed: {status}");
    crate::python::bench_inplace(&["--rounds", &rounds])?;
    let pipeline = bench_pipeline(&cargo, pipeline_rounds)?;
    let rust: Value = serde_json::from_str(&std::fs::read_to_string(
        "target/fastio-bench/handover.json",
    )?)?;
    let python: Value =
        serde_json::from_str(&std::fs::read_to_string("target/fastio-bench/python.json")?)?;
    let text = render(&rust, &python, pipeline)?;
    let doc = std::fs::read_to_string(DOC)?;
    let (Some(start), Some(end)) = (doc.find(START), doc.find(END)) else {
        bail!("{DOC} lacks the markers {START} and {END}");
    };
    ensure!(start < end, "{DOC}: markers out of order");
    std::fs::write(
        DOC,
        format!("{}{START}\n{text}{}", &doc[..start], &doc[end..]),
    )?;
    std::fs::write(SVG, plot(&rust, &python)?)?;
    print!("{text}");
    println!("(written to {DOC} and {SVG})");
    Ok(())
}

/// Median seconds of the chain pipeline through shared memory and through files, in three
/// regimes (see [`PipelineTimes`]).
fn bench_pipeline(cargo: &str, rounds: usize) -> anyhow::Result<PipelineTimes> {
    for (package, bin) in [("fastio", "fastio"), ("fastio-benches", "fastio-chain-op")] {
        let status = Command::new(cargo)
            .args(["build", "--release", "--quiet", "-p", package, "--bin", bin])
            .status()?;
        ensure!(status.success(), "building {bin} failed");
    }
    // The runs lease a warm-reserve keeper of their own, started by the first run below
    // and stopped at the end.
    let keeper = format!("bench-{}", std::process::id());
    let keeper_ctl = |what: &str| {
        let _ = Command::new("target/release/fastio")
            .args(["keep-warm", what])
            .env("FASTIO_WARM_NAME", &keeper)
            .output();
    };
    keeper_ctl("--stop");
    let run = |variant: Variant| -> anyhow::Result<f64> {
        let pipeline = variant.pipeline();
        let start = Instant::now();
        let out = Command::new("target/release/fastio")
            .args(["run", "--quiet", pipeline, "--output", CHAIN_OUTPUT])
            .env("FASTIO_WARM_NAME", &keeper)
            .env(
                "FASTIO_KEEP_WARM",
                if variant == Variant::ShmWithoutReserve {
                    "0"
                } else {
                    "120"
                },
            )
            .output()
            .context("cannot start target/release/fastio")?;
        let elapsed = start.elapsed().as_secs_f64();
        // The files variant leaves 3 GiB behind: never keep it longer than a run.
        let _ = std::fs::remove_dir_all(CHAIN_OUTPUT);
        ensure!(
            out.status.success(),
            "{pipeline} failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(elapsed)
    };
    let mut times = PipelineTimes {
        rounds,
        ..PipelineTimes::default()
    };
    // The first run of all, before any keeper: it starts one.
    times.first = run(Variant::Shm)?;
    // Alternating: each run follows one of the other variant.
    for round in 0..rounds {
        times.alternating.0.push(run(Variant::Shm)?);
        times.alternating.1.push(run(Variant::Files)?);
        eprintln!("chain pipeline, alternating: round {}/{rounds}", round + 1);
    }
    // Warm: each run follows one of the same variant, which has just freed its memory.
    for variant in [Variant::Shm, Variant::Files] {
        run(variant)?;
        for round in 0..rounds {
            let t = run(variant)?;
            times.warm_mut(variant).push(t);
            eprintln!(
                "chain pipeline, warm {variant:?}: round {}/{rounds}",
                round + 1
            );
        }
    }
    // Cold: each run follows a pause, after which freed memory is no longer warm; the
    // shared-memory pipeline also without the warm reserve.
    for round in 0..rounds {
        for variant in [Variant::Shm, Variant::Files, Variant::ShmWithoutReserve] {
            std::thread::sleep(COLD_PAUSE);
            let t = run(variant)?;
            times.cold_mut(variant).push(t);
        }
        eprintln!("chain pipeline, cold: round {}/{rounds}", round + 1);
    }
    keeper_ctl("--stop");
    Ok(times)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Shm,
    Files,
    /// Shared memory with `FASTIO_KEEP_WARM=0`.
    ShmWithoutReserve,
}

impl Variant {
    fn pipeline(self) -> &'static str {
        match self {
            Variant::Shm | Variant::ShmWithoutReserve => "benches/pipelines/chain.yaml",
            Variant::Files => "benches/pipelines/chain-files.yaml",
        }
    }
}

/// Seconds per run of the chain pipeline, (shared memory, files), in three regimes:
/// alternating (each run right after one of the other variant: the headline), warm (right
/// after a run of the same variant: the memory it just freed is still the guest's), cold
/// (after a pause: on a VM with free page reporting, memory freed seconds ago in blocks of
/// huge-page size is back with the host, and touching it again costs host faults). Shared
/// memory runs with the warm reserve (a keeper started by the first run); `cold_bare` are
/// cold runs without it (`FASTIO_KEEP_WARM=0`), and `first` the first run of all.
#[derive(Debug, Default)]
struct PipelineTimes {
    rounds: usize,
    first: f64,
    alternating: (Vec<f64>, Vec<f64>),
    warm: (Vec<f64>, Vec<f64>),
    cold: (Vec<f64>, Vec<f64>),
    cold_bare: Vec<f64>,
}

impl PipelineTimes {
    fn warm_mut(&mut self, variant: Variant) -> &mut Vec<f64> {
        match variant {
            Variant::Shm | Variant::ShmWithoutReserve => &mut self.warm.0,
            Variant::Files => &mut self.warm.1,
        }
    }

    fn cold_mut(&mut self, variant: Variant) -> &mut Vec<f64> {
        match variant {
            Variant::Shm => &mut self.cold.0,
            Variant::Files => &mut self.cold.1,
            Variant::ShmWithoutReserve => &mut self.cold_bare,
        }
    }

    /// Files over shared memory, medians, in the three regimes.
    fn ratios(&self) -> [f64; 3] {
        let r = |(shm, files): &(Vec<f64>, Vec<f64>)| median(files.clone()) / median(shm.clone());
        [r(&self.alternating), r(&self.warm), r(&self.cold)]
    }
}

/// The pipeline's table: one row per regime, medians, the ratio, and every run.
fn render_pipeline(times: &PipelineTimes) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "I/O-bound pipeline (four operators, a 1 GiB volume down the chain, light compute; \
         `fastio run` end to end, median of {} runs per cell; all runs in seconds in brackets):\n",
        times.rounds
    )?;
    writeln!(
        out,
        "| regime | shared memory | files in /dev/shm | files / shared memory |\n|---|---:|---:|---:|"
    )?;
    let runs = |v: &[f64]| {
        v.iter()
            .map(|t| format!("{t:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (label, (shm, files)) in [
        (
            "alternating (each run after one of the other variant)",
            &times.alternating,
        ),
        (
            "warm (each run right after one of the same variant)",
            &times.warm,
        ),
        ("cold (each run after a 10 s pause)", &times.cold),
        (
            "cold, without the warm reserve (`FASTIO_KEEP_WARM=0`)",
            &(times.cold_bare.clone(), times.cold.1.clone()),
        ),
    ] {
        let (s, f) = (median(shm.clone()), median(files.clone()));
        writeln!(
            out,
            "| {label} | {s:.2} s ({}) | {f:.2} s ({}) | **{:.2}x** |",
            runs(shm),
            runs(files),
            f / s
        )?;
    }
    writeln!(
        out,
        "\nShared memory runs with the warm reserve (a keeper holds memory of the job's sizes \
         between jobs) but the last row. The first run of all, before any keeper: {:.2} s.\n",
        times.first
    )?;
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn f(row: &Value, key: &str) -> anyhow::Result<f64> {
    row[key]
        .as_f64()
        .with_context(|| format!("no {key} in {row}"))
}

fn size(bytes: f64) -> String {
    if bytes >= (1u64 << 30) as f64 {
        format!("{} GiB", bytes as u64 >> 30)
    } else {
        format!("{} MiB", bytes as u64 >> 20)
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}

fn render(rust: &Value, python: &Value, pipeline: PipelineTimes) -> anyhow::Result<String> {
    let mut out = String::new();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    writeln!(
        out,
        "Run of {} on {} CPUs (load average then: {}). Pages: {}. Milliseconds, medians; \
         ratio = time / floor (floor = copy into a touched buffer + sum of a touched buffer).\n",
        date.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        rust["page_size"].as_str().unwrap_or("4 KiB")
    )?;
    writeln!(
        out,
        "| size | floor | fastio steady | fastio cold | file in /dev/shm | file in page cache | faults per round (producer, consumer) | huge pages after |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    let rows = rust["rows"].as_array().context("no rows")?;
    let mut at_256 = None;
    for row in rows {
        let floor = f(row, "floor_copy_ms")? + f(row, "floor_read_ms")?;
        let cell = |key: &str| -> anyhow::Result<String> {
            let t = f(row, key)?;
            Ok(format!("{t:.2} ({:.2}x)", t / floor))
        };
        writeln!(
            out,
            "| {} | {floor:.2} | {} | {} | {} | {} | {}, {} | {} MiB |",
            size(f(row, "bytes")?),
            cell("fastio_steady_ms")?,
            cell("fastio_cold_ms")?,
            cell("file_dev_shm_ms")?,
            cell("file_page_cache_ms")?,
            row["producer_faults"],
            row["consumer_faults"],
            row["huge_page_bytes"].as_u64().unwrap_or(0) >> 20
        )?;
        if f(row, "bytes")? as u64 == 256 << 20 {
            at_256 = Some((
                f(row, "fastio_steady_ms")? / floor,
                f(row, "file_dev_shm_ms")? / f(row, "fastio_steady_ms")?,
                f(row, "file_page_cache_ms")? / f(row, "fastio_steady_ms")?,
            ));
        }
    }
    writeln!(
        out,
        "\nPython (numpy float32), steady state, producer and consumer in two processes:\n\n| size | floor | fastio `ctx.empty` + fill + publish + get + read | multiprocessing.shared_memory (one segment, reused) | np.save / np.load (page cache) |\n|---|---:|---:|---:|---:|"
    )?;
    let mut py_1g = None;
    for row in python["rows"].as_array().context("no Python rows")? {
        let floor = f(row, "floor_copy_ms")? + f(row, "floor_read_ms")?;
        let cell = |key: &str| -> anyhow::Result<String> {
            let t = f(row, key)?;
            Ok(format!("{t:.2} ({:.2}x)", t / floor))
        };
        writeln!(
            out,
            "| {} | {floor:.2} | {} | {} | {} |",
            size(f(row, "bytes")?),
            cell("fastio_in_place_ms")?,
            cell("shared_memory_reused_ms")?,
            cell("npsave_npload_page_cache_ms")?
        )?;
        if f(row, "bytes")? as u64 == 1 << 30 {
            py_1g = Some((
                f(row, "fastio_in_place_ms")? / floor,
                f(row, "npsave_npload_page_cache_ms")? / f(row, "fastio_in_place_ms")?,
            ));
        }
    }
    writeln!(out)?;
    out.push_str(&render_pipeline(&pipeline)?);
    writeln!(out, "Targets:\n")?;
    if let Some((floor, dev_shm, cache)) = at_256 {
        writeln!(
            out,
            "- steady-state 256 MiB within 1.3x of the floor: {floor:.2}x, **{}**; at least 2x faster than the /dev/shm file: {dev_shm:.2}x, **{}**; than the page-cache file: {cache:.2}x, **{}**",
            verdict(floor <= 1.3),
            verdict(dev_shm >= 2.0),
            verdict(cache >= 2.0)
        )?;
    }
    if let Some((floor, npsave)) = py_1g {
        writeln!(
            out,
            "- Python in place at 1 GiB within 1.3x of the floor: {floor:.2}x, **{}**; at least 2x faster than np.save/np.load: {npsave:.2}x, **{}**",
            verdict(floor <= 1.3),
            verdict(npsave >= 2.0)
        )?;
    }
    let [alternating, warm, cold] = pipeline.ratios();
    let bare = median(pipeline.cold.1.clone()) / median(pipeline.cold_bare.clone());
    writeln!(
        out,
        "- I/O-bound pipeline at least 3x faster than files: alternating {alternating:.2}x, **{}**; warm {warm:.2}x, **{}**; cold {cold:.2}x, **{}** (cold without the warm reserve: {bare:.2}x)",
        verdict(alternating >= 3.0),
        verdict(warm >= 3.0),
        verdict(cold >= 3.0),
    )?;
    Ok(out)
}

/// A line of the plot: label, colour, (bytes, ms) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// Time against size, log-log, one line per way.
fn plot(rust: &Value, python: &Value) -> anyhow::Result<String> {
    let rows = rust["rows"].as_array().context("no rows")?;
    let py = python["rows"].as_array().context("no Python rows")?;
    let mut series: Vec<Series<'_>> = Vec::new();
    let floor: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| {
            Ok((
                f(r, "bytes")?,
                f(r, "floor_copy_ms")? + f(r, "floor_read_ms")?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    series.push(("floor (copy + read)", "#000000", floor));
    for (key, label, color) in [
        ("fastio_steady_ms", "fastio, steady state", "#1f77b4"),
        ("fastio_cold_ms", "fastio, new processes", "#6baed6"),
        ("file_dev_shm_ms", "file in /dev/shm", "#d62728"),
        ("file_page_cache_ms", "file in the page cache", "#ff7f0e"),
    ] {
        let points = rows
            .iter()
            .map(|r| Ok((f(r, "bytes")?, f(r, key)?)))
            .collect::<anyhow::Result<_>>()?;
        series.push((label, color, points));
    }
    for (key, label, color) in [
        (
            "fastio_in_place_ms",
            "Python: fastio ctx.empty in place",
            "#2ca02c",
        ),
        (
            "shared_memory_reused_ms",
            "Python: shared_memory reused",
            "#9467bd",
        ),
        (
            "npsave_npload_page_cache_ms",
            "Python: np.save / np.load",
            "#8c564b",
        ),
    ] {
        let points = py
            .iter()
            .map(|r| Ok((f(r, "bytes")?, f(r, key)?)))
            .collect::<anyhow::Result<_>>()?;
        series.push((label, color, points));
    }
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.2.iter().copied()).collect();
    let (x0, x1) = (
        all.iter().map(|p| p.0).fold(f64::MAX, f64::min).log10(),
        all.iter().map(|p| p.0).fold(f64::MIN, f64::max).log10(),
    );
    let (y0, y1) = (
        all.iter()
            .map(|p| p.1)
            .fold(f64::MAX, f64::min)
            .log10()
            .floor(),
        all.iter()
            .map(|p| p.1)
            .fold(f64::MIN, f64::max)
            .log10()
            .ceil(),
    );
    let (w, h, left, top, pw, ph) = (760.0, 460.0, 70.0, 20.0, 430.0, 380.0);
    let sx = |x: f64| left + (x.log10() - x0) / (x1 - x0).max(1e-9) * pw;
    let sy = |y: f64| top + ph - (y.log10() - y0) / (y1 - y0).max(1e-9) * ph;
    let mut svg = String::new();
    writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    )?;
    writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#)?;
    writeln!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
    )?;
    let mut e = y0 as i32;
    while e as f64 <= y1 {
        let y = sy(10f64.powi(e));
        let label = if e >= 3 {
            format!("{} s", 10f64.powi(e - 3))
        } else {
            format!("{} ms", 10f64.powi(e))
        };
        writeln!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            left + pw,
            left - 4.0,
            y + 4.0
        )?;
        e += 1;
    }
    for r in rows {
        let b = f(r, "bytes")?;
        writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            sx(b),
            top + ph + 16.0,
            size(b)
        )?;
    }
    writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">bytes handed over (log); time per handover (log)</text>"#,
        left + pw / 2.0,
        h - 8.0
    )?;
    for (i, (label, color, points)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let dash = if label.starts_with("Python") {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            path.join(" ")
        )?;
        let ly = top + 10.0 + i as f64 * 20.0;
        writeln!(
            svg,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{label}</text>"#,
            left + pw + 15.0,
            left + pw + 40.0,
            left + pw + 45.0,
            ly + 4.0
        )?;
    }
    writeln!(svg, "</svg>")?;
    Ok(svg)
}
