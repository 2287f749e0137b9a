//! `cargo xtask fuzz <target> [--count N]`: a long run of a property-based fuzz test, in
//! release. The normal test run tries each target briefly; this runs N inputs (default
//! 10 million) and prints what the test reports (inputs run, what they reached).
//!
//! Targets: `protocol` (the context protocol's decoder with the registry behind it,
//! crates/fastio-job/tests/fuzz_protocol.rs).

use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::run_with_env;

/// Inputs per run unless `--count` says otherwise.
const DEFAULT_COUNT: u64 = 10_000_000;

/// The fuzz targets: name, package, test binary.
const TARGETS: &[(&str, &str, &str)] = &[("protocol", "fastio-job", "fuzz_protocol")];

pub fn fuzz(args: &[String]) -> anyhow::Result<()> {
    let usage = || {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.0).collect();
        format!("usage: cargo xtask fuzz <{}> [--count N]", names.join("|"))
    };
    let Some(target) = args.first() else {
        bail!(usage());
    };
    let Some(&(_, package, test)) = TARGETS.iter().find(|t| t.0 == target) else {
        bail!("unknown fuzz target {target:?}; {}", usage());
    };
    let count = match args.get(1).map(String::as_str) {
        None => DEFAULT_COUNT,
        Some("--count") => args
            .get(2)
            .context("--count needs a number")?
            .replace('_', "")
            .parse()
            .context("--count needs a number")?,
        Some(other) => bail!("unexpected argument {other:?}; {}", usage()),
    };
    let started = Instant::now();
    run_with_env(
        "cargo",
        &[
            "test",
            "--release",
            "-p",
            package,
            "--test",
            test,
            "--",
            "--nocapture",
        ],
        &[("FASTIO_FUZZ_COUNT", &count.to_string())],
    )?;
    eprintln!(
        "\nfuzz {target}: {count} inputs asked, 0 crashes, {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
