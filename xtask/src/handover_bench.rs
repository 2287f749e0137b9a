//! `cargo xtask bench-handover` (also run first by `cargo xtask bench`): the handover
//! benchmarks, in one run: the floor, steady-state and cold handover from 1 MiB to 1 GiB
//! against files (benches/benches/handover.rs), Python's in-place path against
//! multiprocessing.shared_memory and np.save/np.load (benches/python/bench_inplace.py),
//! and the I/O-bound four-operator pipeline with a 1 GiB volume against the same pipeline
//! through files (benches/pipelines/chain*.yaml). Writes the tables and the targets into
//! docs/benchmarks.md between markers, and the plot docs/handover.svg.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

const DOC: &str = "docs/benchmarks.md";
const SVG: &str = "docs/handover.svg";
const START: &str = "<!-- handover:start (written by `cargo xtask bench-handover`) -->";
const END: &str = "<!-- handover:end -->";
const PIPELINE_ROUNDS: usize = 3;
/// Where the files variant of the chain pipeline writes: tmpfs, so that the baseline never
/// waits for a disk (and a 3 GiB run never fills one); the strongest case for files.
const CHAIN_OUTPUT: &str = "/dev/shm/fastio-bench-chain";

/// Runs everything (short: about two minutes on a quiet 2-core machine) and writes the doc.
pub fn bench(args: &[String]) -> anyhow::Result<()> {
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map_or("5", String::as_str)
        .to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
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
    let pipeline = bench_pipeline(&cargo)?;
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

/// Median seconds of the chain pipeline through shared memory and through files.
fn bench_pipeline(cargo: &str) -> anyhow::Result<(f64, f64)> {
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "fastio",
            "--bin",
            "fastio",
        ])
        .status()?;
    ensure!(status.success(), "building fastio failed");
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "fastio-benches",
            "--bin",
            "fastio-chain-op",
        ])
        .status()?;
    ensure!(status.success(), "building fastio-chain-op failed");
    let run = |pipeline: &str| -> anyhow::Result<f64> {
        let start = Instant::now();
        let out = Command::new("target/release/fastio")
            .args(["run", "--quiet", pipeline, "--output", CHAIN_OUTPUT])
            .output()
            .context("cannot start target/release/fastio")?;
        // The files variant leaves 3 GiB behind: never keep it longer than a run.
        let _ = std::fs::remove_dir_all(CHAIN_OUTPUT);
        ensure!(
            out.status.success(),
            "{pipeline} failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(start.elapsed().as_secs_f64())
    };
    let (mut shm, mut files) = (Vec::new(), Vec::new());
    for round in 0..PIPELINE_ROUNDS {
        shm.push(run("benches/pipelines/chain.yaml")?);
        files.push(run("benches/pipelines/chain-files.yaml")?);
        eprintln!("chain pipeline: round {}/{PIPELINE_ROUNDS}", round + 1);
    }
    Ok((median(shm), median(files)))
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

fn render(rust: &Value, python: &Value, (shm, files): (f64, f64)) -> anyhow::Result<String> {
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
    writeln!(
        out,
        "\nI/O-bound pipeline (four operators, a 1 GiB volume down the chain, light compute; \
         `fastio run`, median of {PIPELINE_ROUNDS}): shared memory {shm:.2} s, files in /dev/shm {files:.2} s: **{:.2}x**.\n",
        files / shm
    )?;
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
    writeln!(
        out,
        "- I/O-bound pipeline at least 3x faster than files: {:.2}x, **{}**",
        files / shm,
        verdict(files / shm >= 3.0)
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
