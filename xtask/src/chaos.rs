//! `cargo xtask chaos [--rounds N] [--seed S] [--debug]`: the fault suite.
//!
//! Each round picks one fault at random and checks that nothing leaked and nothing hung:
//!
//! - `operator`: `fastio run` of a small demo pipeline; kill -9 of one operator at a random
//!   moment. The driver must end the job within a bound.
//! - `driver`: kill -9 of `fastio run` itself at a random moment. Its operators must die
//!   with it.
//! - `client`: one to three clients of a standalone `fastio serve` allocate and fill
//!   memory; some are killed with -9 at random moments, the others end normally. The
//!   server's accounting must return to nothing held, and its descriptors to their count
//!   before the round.
//! - `server`: kill -9 of a server while a client holds its memory; the client must end
//!   when told to (no hang), and the memory must go with the last process.
//!
//! After every round: no process of the round is left; `Shmem` in /proc/meminfo (less the
//! files in /dev/shm) is back near its level before the run, or else the shared memory
//! that no process holds (by descriptor or mapping) is (the machine is shared: other work
//! moves `Shmem` by gigabytes; within a tolerance, waiting for it); /dev/shm has no new
//! fastio entry. Every wait is bounded; a bound passed is a hang.
//! Prints the figures at the end and fails if any round leaked or hung.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How long a job may take after its fault before the driver counts as hung.
const JOB_BOUND: Duration = Duration::from_secs(60);
/// How long leftovers (processes, accounting, memory) get to go away.
const SETTLE: Duration = Duration::from_secs(10);
/// Shared memory over the level before the run that counts as a leak, once settled; the
/// machine is shared with other work, so it is not zero.
const SHMEM_TOLERANCE_KIB: i64 = 64 * 1024;
/// The environment variable that tags every process a round starts.
const TAG: &str = "FASTIO_CHAOS_TAG";

/// A small, seedable generator (xorshift64*): enough for choosing faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max + 1))
    }
}

struct Bins {
    fastio: PathBuf,
    probe: PathBuf,
}

#[derive(Default)]
struct Figures {
    rounds: [u32; 4],
    hangs: Vec<String>,
    leaks: Vec<String>,
    max_shmem_delta_kib: i64,
    killed_operators: u32,
    jobs_failed: u32,
    jobs_succeeded: u32,
}

const SCENARIOS: [&str; 4] = ["operator", "driver", "client", "server"];

/// Runs the fault suite.
pub fn chaos(args: &[String]) -> anyhow::Result<()> {
    let mut rounds = 100u32;
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1;
    let mut release = true;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rounds" => rounds = it.next().context("--rounds N")?.parse()?,
            "--seed" => seed = it.next().context("--seed S")?.parse::<u64>()?.max(1),
            "--debug" => release = false,
            other => bail!("unknown chaos argument {other:?} (--rounds N, --seed S, --debug)"),
        }
    }
    let profile = if release { "release" } else { "debug" };
    let mut build = vec![
        "build",
        "--quiet",
        "-p",
        "fastio",
        "-p",
        "fastio-tests",
        "--bins",
    ];
    if release {
        build.push("--release");
    }
    crate::run("cargo", &build)?;
    let target = Path::new("target").join(profile);
    let bins = Bins {
        fastio: std::fs::canonicalize(target.join("fastio"))?,
        probe: std::fs::canonicalize(target.join("fastio-probe"))?,
    };
    let work = std::env::temp_dir().join(format!("fastio-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    // The demo pipeline with a 32 MiB volume: quick rounds, real shared memory.
    let demo = std::fs::read_to_string("examples/demo/pipeline.yaml")?
        .replace("[256, 512, 512]", "[64, 512, 512]");
    let pipeline = work.join("pipeline.yaml");
    std::fs::write(&pipeline, demo)?;

    let run_tag = format!("{}-{seed}", std::process::id());
    let shmem_before = shmem_kib()?;
    let unheld_before = unheld_shmem_kib();
    let devshm_before = devshm()?;
    let mut rng = Rng(seed);
    let mut figures = Figures::default();
    let mut server = StandaloneServer::start(&bins, &format!("{run_tag}-server"))?;
    let started = Instant::now();
    eprintln!("chaos: {rounds} rounds, seed {seed}, {profile} binaries");
    for round in 0..rounds {
        let scenario = rng.below(4) as usize;
        figures.rounds[scenario] += 1;
        let tag = format!("{run_tag}-{round}");
        let label = format!("round {round} ({})", SCENARIOS[scenario]);
        let result = match scenario {
            0 => operator_round(&bins, &pipeline, &work, &tag, &mut rng, &mut figures),
            1 => driver_round(&bins, &pipeline, &work, &tag, &mut rng),
            2 => client_round(&bins, &server, &tag, &mut rng),
            _ => server_round(&bins, &tag, &mut rng),
        };
        match result {
            Ok(Outcome::Clean) => {}
            Ok(Outcome::Hang(what)) => figures.hangs.push(format!("{label}: {what}")),
            Ok(Outcome::Leak(what)) => figures.leaks.push(format!("{label}: {what}")),
            Err(e) => figures.leaks.push(format!("{label}: error: {e:#}")),
        }
        if let Some(what) = leftover_processes(&tag) {
            figures.leaks.push(format!("{label}: {what}"));
        }
        match settle_shmem(shmem_before, unheld_before) {
            Ok(delta) => figures.max_shmem_delta_kib = figures.max_shmem_delta_kib.max(delta),
            Err(delta) => figures.leaks.push(format!(
                "{label}: {delta} KiB of shared memory that no process holds, over the level before the run"
            )),
        }
        // Other work on the machine may use /dev/shm; fastio never does, by construction.
        // The repository's file-based benchmark (benches/handover.rs) puts its comparison
        // file there while it runs: that is not the product.
        let new: Vec<String> = devshm()?
            .difference(&devshm_before)
            .filter(|name| name.contains("fastio") && !name.starts_with("fastio-handover-"))
            .cloned()
            .collect();
        if !new.is_empty() {
            figures
                .leaks
                .push(format!("{label}: new in /dev/shm: {new:?}"));
        }
        if !server.alive() {
            figures
                .leaks
                .push(format!("{label}: the standalone server died"));
            server = StandaloneServer::start(&bins, &format!("{run_tag}-server-{round}"))?;
        }
        if (round + 1) % 50 == 0 {
            eprintln!(
                "chaos: {} rounds in {:.0} s, {} hangs, {} leaks",
                round + 1,
                started.elapsed().as_secs_f64(),
                figures.hangs.len(),
                figures.leaks.len()
            );
        }
    }
    server.stop();
    let _ = std::fs::remove_dir_all(&work);
    let elapsed = started.elapsed();
    println!(
        "chaos: {rounds} rounds (seed {seed}, {profile}) in {:.1} s: operator {}, driver {}, client {}, server {}",
        elapsed.as_secs_f64(),
        figures.rounds[0],
        figures.rounds[1],
        figures.rounds[2],
        figures.rounds[3]
    );
    println!(
        "chaos: operator rounds: {} operators killed mid-job (in the others none was running at the chosen moment); the jobs ended {} failed, {} succeeded",
        figures.killed_operators, figures.jobs_failed, figures.jobs_succeeded
    );
    println!(
        "chaos: {} hangs, {} leaks; largest settled excess of shared memory over the level before the run: {} KiB",
        figures.hangs.len(),
        figures.leaks.len(),
        figures.max_shmem_delta_kib
    );
    for line in figures.hangs.iter().chain(&figures.leaks) {
        println!("  {line}");
    }
    if !figures.hangs.is_empty() || !figures.leaks.is_empty() {
        bail!("chaos found hangs or leaks");
    }
    Ok(())
}

enum Outcome {
    Clean,
    Hang(String),
    Leak(String),
}

fn fastio_run(bins: &Bins, pipeline: &Path, work: &Path, tag: &str) -> anyhow::Result<Child> {
    Ok(Command::new(&bins.fastio)
        .args(["run", "--quiet", "--output"])
        .arg(work.join("out").join(tag))
        .arg(pipeline)
        .env(TAG, tag)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

/// Waits for `child` up to `bound`; kills it and returns `None` past it.
fn wait_bounded(child: &mut Child, bound: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + bound;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn operator_round(
    bins: &Bins,
    pipeline: &Path,
    work: &Path,
    tag: &str,
    rng: &mut Rng,
    figures: &mut Figures,
) -> anyhow::Result<Outcome> {
    let mut driver = fastio_run(bins, pipeline, work, tag)?;
    mid_job(tag, rng);
    let operators = operators_of(tag);
    if !operators.is_empty() {
        let victim = operators[rng.below(operators.len() as u64) as usize];
        // kill(1): xtask has no unsafe code of its own.
        let _ = Command::new("kill")
            .args(["-9", &victim.to_string()])
            .status();
        figures.killed_operators += 1;
    }
    let outcome = match wait_bounded(&mut driver, JOB_BOUND) {
        None => Outcome::Hang(format!(
            "fastio run still running {JOB_BOUND:?} after the kill"
        )),
        Some(status) => {
            if status.success() {
                figures.jobs_succeeded += 1;
            } else {
                figures.jobs_failed += 1;
            }
            Outcome::Clean
        }
    };
    let _ = std::fs::remove_dir_all(work.join("out").join(tag));
    Ok(outcome)
}

/// The operator processes of the round now alive.
fn operators_of(tag: &str) -> Vec<i32> {
    tagged(tag)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("fastio-demo-op"))
        .map(|(pid, _)| pid)
        .collect()
}

/// Returns at a random moment of the job: up to 400 ms after its first operator appears
/// (a job of the chaos pipeline lasts about that long).
fn mid_job(tag: &str, rng: &mut Rng) {
    let until = Instant::now() + Duration::from_secs(10);
    while operators_of(tag).is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(rng.millis(400));
}

fn driver_round(
    bins: &Bins,
    pipeline: &Path,
    work: &Path,
    tag: &str,
    rng: &mut Rng,
) -> anyhow::Result<Outcome> {
    let mut driver = fastio_run(bins, pipeline, work, tag)?;
    mid_job(tag, rng);
    let _ = driver.kill();
    let _ = driver.wait();
    let _ = std::fs::remove_dir_all(work.join("out").join(tag));
    Ok(Outcome::Clean)
}

struct StandaloneServer {
    child: Child,
    address: String,
}

impl StandaloneServer {
    fn start(bins: &Bins, tag: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(&bins.fastio)
            .args(["serve", "--pool-mib", "0", "--until-stdin-closes"])
            .env(TAG, tag)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("server stdout")?;
        let line = read_line_bounded(stdout, Duration::from_secs(10))
            .context("the server did not print its address")?;
        let address = line
            .trim()
            .strip_prefix("FASTIO_CONTEXT=")
            .context("unexpected first line of fastio serve")?
            .to_owned();
        Ok(Self { child, address })
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stop(mut self) {
        drop(self.child.stdin.take());
        if wait_bounded(&mut self.child, Duration::from_secs(10)).is_none() {
            eprintln!("chaos: the standalone server did not stop when its stdin closed");
        }
    }

    fn stats(&self, bins: &Bins) -> anyhow::Result<serde_json::Value> {
        let mut child = Command::new(&bins.fastio)
            .arg("stats")
            .env("FASTIO_CONTEXT", &self.address)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("stats stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stdout), &mut text);
            let _ = tx.send(text);
        });
        let text = rx.recv_timeout(Duration::from_secs(10));
        if wait_bounded(&mut child, Duration::from_secs(1)).is_none() || text.is_err() {
            bail!("fastio stats hung");
        }
        Ok(serde_json::from_str(&text.unwrap_or_default())?)
    }
}

/// Reads one line from `stream` within `bound`.
fn read_line_bounded(
    stream: impl std::io::Read + Send + 'static,
    bound: Duration,
) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stream).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(bound).ok().filter(|l| !l.is_empty())
}

fn probe(bins: &Bins, address: &str, tag: &str, size: u64) -> anyhow::Result<Child> {
    Ok(Command::new(&bins.probe)
        .args(["hold-private", &size.to_string()])
        .env("FASTIO_CONTEXT", address)
        .env(TAG, tag)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?)
}

fn client_round(
    bins: &Bins,
    server: &StandaloneServer,
    tag: &str,
    rng: &mut Rng,
) -> anyhow::Result<Outcome> {
    let fds_before = fd_count(server.child.id());
    let count = 1 + rng.below(3);
    let mut clients = Vec::new();
    for _ in 0..count {
        let size = 1 + rng.below(32 << 20);
        clients.push((probe(bins, &server.address, tag, size)?, rng.below(2) == 0));
    }
    std::thread::sleep(rng.millis(300));
    for (client, kill) in &mut clients {
        if *kill {
            let _ = client.kill();
        } else {
            drop(client.stdin.take());
        }
    }
    for (client, _) in &mut clients {
        if wait_bounded(client, Duration::from_secs(30)).is_none() {
            return Ok(Outcome::Hang(
                "a client did not end when its stdin closed".into(),
            ));
        }
    }
    // The stats client itself is one connection.
    let until = Instant::now() + SETTLE;
    loop {
        let stats = server.stats(bins)?;
        let held = ["resources", "live_bytes", "handles", "publications"]
            .iter()
            .map(|k| stats[k].as_u64().unwrap_or(u64::MAX))
            .sum::<u64>();
        let clean = held == 0 && stats["connections"].as_u64() == Some(1);
        let fds_back = fd_count(server.child.id()) <= fds_before;
        if clean && fds_back {
            return Ok(Outcome::Clean);
        }
        if Instant::now() >= until {
            return Ok(Outcome::Leak(format!(
                "server accounting after its clients ended: {stats}; descriptors {} (before: {})",
                fd_count(server.child.id()),
                fds_before
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn server_round(bins: &Bins, tag: &str, rng: &mut Rng) -> anyhow::Result<Outcome> {
    let mut server = StandaloneServer::start(bins, tag)?;
    let mut client = probe(bins, &server.address, tag, 1 + rng.below(32 << 20))?;
    let stdout = client.stdout.take().context("client stdout")?;
    let ready = rng.below(2) == 0;
    if ready {
        // Kill the server while the client holds its memory.
        if read_line_bounded(stdout, Duration::from_secs(30)).is_none() {
            let _ = client.kill();
            let _ = server.child.kill();
            return Ok(Outcome::Hang("the client never became ready".into()));
        }
    } else {
        std::thread::sleep(rng.millis(50));
    }
    let _ = server.child.kill();
    let _ = server.child.wait();
    // Told to end: it releases its memory (the server is gone: an error) and exits.
    drop(client.stdin.take());
    match wait_bounded(&mut client, Duration::from_secs(30)) {
        None => Ok(Outcome::Hang(
            "a client of a killed server did not end".into(),
        )),
        Some(_) => Ok(Outcome::Clean),
    }
}

/// Processes carrying `tag` (pid, command line), zombies excluded.
fn tagged(tag: &str) -> Vec<(i32, String)> {
    let marker = format!("{TAG}={tag}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            environ
                .split(|&b| b == 0)
                .any(|v| v == marker.as_bytes())
                .then(|| {
                    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    (pid, String::from_utf8_lossy(&cmd).replace('\0', " "))
                })
        })
        .collect()
}

/// Processes of the round still alive once settled, if any.
fn leftover_processes(tag: &str) -> Option<String> {
    let until = Instant::now() + SETTLE;
    loop {
        let left = tagged(tag);
        if left.is_empty() {
            return None;
        }
        if Instant::now() >= until {
            for (pid, _) in &left {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            return Some(format!("processes left behind: {left:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `Shmem` of /proc/meminfo less the files in /dev/shm: shared memory that is not a file
/// (memfds, like fastio's segments). Files in /dev/shm are checked by name; other work on
/// the machine (a benchmark's comparison file) would otherwise read as a leak here.
fn shmem_kib() -> anyhow::Result<i64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let shmem: i64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Shmem:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no Shmem in /proc/meminfo")?;
    let files: u64 = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
                .sum()
        })
        .unwrap_or(0);
    Ok(shmem - (files / 1024) as i64)
}

/// Kibibytes of memfd memory that some process holds (by descriptor or mapping), each
/// memfd counted once.
fn held_memfd_kib() -> i64 {
    let mut seen = BTreeSet::new();
    let mut bytes = 0u64;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for pid in dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        for kind in ["fd", "map_files"] {
            let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/{kind}")) else {
                continue;
            };
            for entry in entries.flatten() {
                let is_memfd = std::fs::read_link(entry.path())
                    .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:"));
                if !is_memfd {
                    continue;
                }
                if let Ok(meta) = std::fs::metadata(entry.path()) {
                    use std::os::unix::fs::MetadataExt;
                    if seen.insert((meta.dev(), meta.ino())) {
                        bytes += meta.blocks() * 512;
                    }
                }
            }
        }
    }
    (bytes / 1024) as i64
}

/// Shared memory that no process holds: what a leak would be. The machine is shared, so
/// other work's memory moves `Shmem` by gigabytes; memory some process still holds is that
/// process's (and a process of the round still alive is a leak of its own).
fn unheld_shmem_kib() -> i64 {
    shmem_kib().unwrap_or(i64::MAX) - held_memfd_kib()
}

/// Waits for Shmem to come back within the tolerance; the settled excess, or the excess
/// that stayed. First on the raw figure (cheap); past the tolerance, on the memory no
/// process holds, against the same measure before the run.
fn settle_shmem(before: i64, unheld_before: i64) -> Result<i64, i64> {
    let until = Instant::now() + SETTLE;
    loop {
        let delta = shmem_kib().unwrap_or(i64::MAX) - before;
        if delta <= SHMEM_TOLERANCE_KIB {
            return Ok(delta.max(0));
        }
        let unheld = unheld_shmem_kib() - unheld_before;
        if unheld <= SHMEM_TOLERANCE_KIB {
            return Ok(unheld.max(0));
        }
        if Instant::now() >= until {
            return Err(unheld);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn devshm() -> anyhow::Result<BTreeSet<String>> {
    Ok(std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default())
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}
