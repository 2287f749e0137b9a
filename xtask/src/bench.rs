//! `cargo xtask bench`: runs the criterion benchmarks of `fastio-benches`, then writes the
//! table of their absolute times and ratios into docs/benchmarks.md (between markers, so
//! the prose around it stays) and prints it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail, ensure};

const DOC: &str = "docs/benchmarks.md";
const SVG: &str = "docs/benchmarks.svg";
const START: &str = "<!-- bench-table:start (written by `cargo xtask bench`) -->";
const END: &str = "<!-- bench-table:end -->";

/// One measured case: criterion's group and id, and how the table names it.
struct Case {
    group: &'static str,
    id: &'static str,
    label: &'static str,
}

/// The cases, grouped; the first case of each group with `baseline` is what the others
/// are divided by.
const GROUPS: &[(&str, &str, &[Case])] = &[
    (
        "1. get + map by another process",
        "socket_round_trip",
        &[
            Case {
                group: "get",
                id: "socket_round_trip",
                label: "bare Unix seqpacket round trip (two processes)",
            },
            Case {
                group: "get",
                id: "fastio_get_1MiB",
                label: "fastio `get` of a published 1 MiB allocation",
            },
            Case {
                group: "get",
                id: "fastio_get_1GiB",
                label: "fastio `get` of a published 1 GiB allocation",
            },
        ],
    ),
    (
        "2. create + fill 256 MiB",
        "memcpy_touched",
        &[
            Case {
                group: "create_fill_256MiB",
                id: "memcpy_touched",
                label: "memcpy into an already-touched buffer",
            },
            Case {
                group: "create_fill_256MiB",
                id: "warm_segment",
                label: "fastio create + fill, recycled warm segment",
            },
            Case {
                group: "create_fill_256MiB",
                id: "warm_segment_populate",
                label: "same, mapping prefaulted (`Prefault::Populate`)",
            },
            Case {
                group: "create_fill_256MiB",
                id: "fresh_segment",
                label: "fastio create + fill, fresh segment (pool off)",
            },
        ],
    ),
    (
        "3. hand 256 MiB to another process",
        "fastio",
        &[
            Case {
                group: "handover_256MiB",
                id: "fastio",
                label: "fastio create, fill, publish; reader gets and reads all",
            },
            Case {
                group: "handover_256MiB",
                id: "fastio_populate",
                label: "same, writer's mapping prefaulted (`Prefault::Populate`)",
            },
            Case {
                group: "handover_256MiB",
                id: "fastio_populate_both",
                label: "same, reader's mapping prefaulted too (`get_with_options`)",
            },
            Case {
                group: "handover_256MiB",
                id: "file_dev_shm",
                label: "file in /dev/shm: write; reader opens and reads all",
            },
            Case {
                group: "handover_256MiB",
                id: "file_target",
                label: "file under target/ (page cache, no fsync): same",
            },
        ],
    ),
];

/// A case as criterion names it: (group, id).
type CaseId = (&'static str, &'static str);

/// Headline ratios: label, numerator, denominator.
const RATIOS: &[(&str, CaseId, CaseId)] = &[
    (
        "get 1 GiB / get 1 MiB (should be ~1: no growth with size)",
        ("get", "fastio_get_1GiB"),
        ("get", "fastio_get_1MiB"),
    ),
    (
        "get 1 MiB / bare round trip",
        ("get", "fastio_get_1MiB"),
        ("get", "socket_round_trip"),
    ),
    (
        "create+fill fresh / warm",
        ("create_fill_256MiB", "fresh_segment"),
        ("create_fill_256MiB", "warm_segment"),
    ),
    (
        "create+fill warm / memcpy",
        ("create_fill_256MiB", "warm_segment"),
        ("create_fill_256MiB", "memcpy_touched"),
    ),
    (
        "create+fill warm, prefaulted / memcpy",
        ("create_fill_256MiB", "warm_segment_populate"),
        ("create_fill_256MiB", "memcpy_touched"),
    ),
    (
        "handover: fastio prefaulted / fastio lazy",
        ("handover_256MiB", "fastio_populate"),
        ("handover_256MiB", "fastio"),
    ),
    (
        "handover: file in /dev/shm / fastio",
        ("handover_256MiB", "file_dev_shm"),
        ("handover_256MiB", "fastio"),
    ),
    (
        "handover: file under target/ / fastio",
        ("handover_256MiB", "file_target"),
        ("handover_256MiB", "fastio"),
    ),
];

/// Runs the benchmarks (extra `args` go to `cargo bench`), then writes and prints the table.
pub fn bench(args: &[String]) -> anyhow::Result<()> {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["bench", "-p", "fastio-benches", "--bench", "fastio", "--"])
        .args(args)
        .current_dir(&root)
        .status()
        .context("cannot run cargo bench")?;
    ensure!(status.success(), "cargo bench failed: {status}");

    let criterion = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("criterion");
    let table = render(&criterion)?;
    let doc_path = root.join(DOC);
    let doc = std::fs::read_to_string(&doc_path)
        .with_context(|| format!("cannot read {}", doc_path.display()))?;
    let (Some(start), Some(end)) = (doc.find(START), doc.find(END)) else {
        bail!("{} lacks the markers {START} and {END}", doc_path.display());
    };
    ensure!(start < end, "{}: markers out of order", doc_path.display());
    let updated = format!("{}{START}\n{table}{}", &doc[..start], &doc[end..]);
    std::fs::write(&doc_path, updated)?;
    std::fs::write(root.join(SVG), chart(&criterion)?)?;
    print!("{table}");
    println!("(written to {DOC} and {SVG})");
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_owned()
}

/// Criterion's point estimates of one case, in nanoseconds.
struct Estimate {
    mean: f64,
    median: f64,
}

fn estimate(criterion: &Path, group: &str, id: &str) -> anyhow::Result<Estimate> {
    let path = criterion.join(group).join(id).join("new/estimates.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {} (did the bench run?)", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let point = |what: &str| {
        json[what]["point_estimate"]
            .as_f64()
            .with_context(|| format!("{}: no {what}.point_estimate", path.display()))
    };
    Ok(Estimate {
        mean: point("mean")?,
        median: point("median")?,
    })
}

fn render(criterion: &Path) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(out, "{}\n", machine())?;
    writeln!(
        out,
        "| case | mean | median | median / baseline |\n|---|---:|---:|---:|"
    )?;
    for (title, baseline, rows) in GROUPS {
        let base = estimate(criterion, rows[0].group, baseline)?;
        writeln!(out, "| **{title}** (baseline: `{baseline}`) | | | |")?;
        for case in *rows {
            let e = estimate(criterion, case.group, case.id)?;
            writeln!(
                out,
                "| {} (`{}/{}`) | {} | {} | {:.2}x |",
                case.label,
                case.group,
                case.id,
                duration(e.mean),
                duration(e.median),
                e.median / base.median
            )?;
        }
    }
    writeln!(out, "\nHeadline ratios (of medians):\n")?;
    for (label, (g1, i1), (g2, i2)) in RATIOS {
        let ratio = estimate(criterion, g1, i1)?.median / estimate(criterion, g2, i2)?.median;
        writeln!(out, "- {label}: **{ratio:.2}x**")?;
    }
    Ok(out)
}

fn duration(nanos: f64) -> String {
    if nanos >= 1e9 {
        format!("{:.3} s", nanos / 1e9)
    } else if nanos >= 1e6 {
        format!("{:.2} ms", nanos / 1e6)
    } else if nanos >= 1e3 {
        format!("{:.1} us", nanos / 1e3)
    } else {
        format!("{nanos:.0} ns")
    }
}

/// Machine, kernel and date, for the table header.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|d| d.trim().to_owned())
        .unwrap_or_else(|| "unknown date".into());
    format!("Run of {date} on {cpus} CPUs ({model}), Linux {kernel}.")
}

/// A horizontal bar chart of the medians, each group scaled to its slowest case.
fn chart(criterion: &Path) -> anyhow::Result<String> {
    const ROW: usize = 22;
    const LABEL_W: usize = 430;
    const BAR_W: f64 = 330.0;
    let rows: usize = GROUPS.iter().map(|(_, _, cases)| cases.len() + 1).sum();
    let height = rows * ROW + 10;
    let width = LABEL_W + BAR_W as usize + 90;
    let mut svg = String::new();
    writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    )?;
    writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#)?;
    let mut y = 0;
    for (title, _, cases) in GROUPS {
        y += ROW;
        writeln!(
            svg,
            r#"<text x="4" y="{}" font-weight="bold">{title} (median)</text>"#,
            y - 6
        )?;
        let medians = cases
            .iter()
            .map(|c| estimate(criterion, c.group, c.id).map(|e| e.median))
            .collect::<anyhow::Result<Vec<f64>>>()?;
        let max = medians.iter().copied().fold(f64::MIN_POSITIVE, f64::max);
        for (case, median) in cases.iter().zip(medians) {
            y += ROW;
            let w = (median / max * BAR_W).max(1.0);
            let label = case.label.replace('`', "");
            writeln!(
                svg,
                r##"<text x="14" y="{}">{label}</text><rect x="{LABEL_W}" y="{}" width="{w:.1}" height="{}" fill="#4a7ab5"/><text x="{:.1}" y="{}">{}</text>"##,
                y - 6,
                y - ROW + 4,
                ROW - 6,
                LABEL_W as f64 + w + 4.0,
                y - 6,
                duration(median)
            )?;
        }
    }
    writeln!(svg, "</svg>")?;
    Ok(svg)
}
