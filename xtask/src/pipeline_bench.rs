//! `cargo xtask bench-pipeline` (also run by `cargo xtask bench`): the demo pipeline end
//! to end through shared memory, against the same pipeline with every entry passed through
//! files (examples/demo/pipeline-files.yaml), in one run; the table goes into
//! docs/benchmarks.md between its markers.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

const DOC: &str = "docs/benchmarks.md";
const START: &str = "<!-- pipeline-table:start (written by `cargo xtask bench-pipeline`) -->";
const END: &str = "<!-- pipeline-table:end -->";
const ROUNDS: usize = 7;

struct Variant {
    label: &'static str,
    pipeline: &'static str,
    output: &'static str,
}

const VARIANTS: [Variant; 3] = [
    Variant {
        label: "fastio (shared memory)",
        pipeline: "examples/demo/pipeline.yaml",
        output: "target/bench-pipeline",
    },
    Variant {
        label: "files under target/ (disk, page cache)",
        pipeline: "examples/demo/pipeline-files.yaml",
        output: "target/bench-pipeline",
    },
    Variant {
        label: "files in /dev/shm (tmpfs)",
        pipeline: "examples/demo/pipeline-files.yaml",
        output: "/dev/shm/fastio-bench-pipeline",
    },
];

fn run_once(variant: &Variant) -> anyhow::Result<Duration> {
    // Each `fastio run` keeps its results in a folder of its own; the benchmark's are
    // scratch, removed before each run so that runs do not pile up on disk.
    match std::fs::remove_dir_all(variant.output) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", variant.output));
        }
        _ => {}
    }
    let start = Instant::now();
    let out = Command::new("target/release/fastio")
        .args([
            "run",
            "--quiet",
            variant.pipeline,
            "--output",
            variant.output,
        ])
        .output()
        .context("cannot start target/release/fastio")?;
    let elapsed = start.elapsed();
    ensure!(
        out.status.success(),
        "{} failed:\n{}",
        variant.pipeline,
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(elapsed)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Runs every variant `ROUNDS` times, interleaved, after one warm-up each.
pub fn bench_pipeline() -> anyhow::Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "-p", "fastio", "--bins"])
        .status()?;
    ensure!(status.success(), "building fastio failed");
    let mut times: Vec<Vec<Duration>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    for round in 0..=ROUNDS {
        for (variant, times) in VARIANTS.iter().zip(&mut times) {
            let t = run_once(variant)?;
            if round > 0 {
                times.push(t);
            }
        }
        eprintln!("pipeline bench: round {round}/{ROUNDS} done");
    }
    let _ = std::fs::remove_dir_all("/dev/shm/fastio-bench-pipeline");
    let medians: Vec<Duration> = times.into_iter().map(median).collect();
    let base = medians[0].as_secs_f64();
    let mut table =
        String::from("| variant | median of 7 runs | time / fastio's |\n|---|---:|---:|\n");
    for (variant, m) in VARIANTS.iter().zip(&medians) {
        table.push_str(&format!(
            "| {} | {:.0} ms | {:.2}x |\n",
            variant.label,
            m.as_secs_f64() * 1e3,
            m.as_secs_f64() / base
        ));
    }
    let doc = std::fs::read_to_string(DOC)?;
    let (Some(start), Some(end)) = (doc.find(START), doc.find(END)) else {
        bail!("{DOC} lacks the markers {START} and {END}");
    };
    ensure!(start < end, "{DOC}: markers out of order");
    std::fs::write(
        Path::new(DOC),
        format!("{}{START}\n{table}{}", &doc[..start], &doc[end..]),
    )?;
    print!("{table}");
    println!("(written to {DOC})");
    Ok(())
}
