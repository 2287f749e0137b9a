//! The `fastio` command: the `fastio` binary and the Python package's `fastio` console
//! script both run [`main`], so the two behave the same by construction.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fastio::{CONTEXT_ENV, Context, Server, ServerConfig};

mod k8s;
mod warm;

/// fastio: zero-copy typed arrays shared between the processes of a pipeline.
#[derive(Parser)]
#[command(
    version,
    about,
    after_help = "Environment:\n  FASTIO_LOG  what fastio itself logs to stderr: error, warn (the default), info, debug or\n              trace, for everything or per module (FASTIO_LOG=fastio_driver=debug); the\n              syntax of tracing-subscriber's EnvFilter. Operators' own output is not a log:\n              `fastio run` shows it (see --quiet) and keeps it in the job's logs folder.\n  FASTIO_KEEP_WARM  seconds the warm-reserve keeper holds memory once idle (default 120;\n              0: no keeper is started or used; see `fastio keep-warm --help`).\n  FASTIO_WARM_NAME  the keeper to use (default `default`), for separate reserves."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a standalone context server and print how clients join it.
    ///
    /// The first line on stdout is `FASTIO_CONTEXT=<address>`; clients that have it in
    /// their environment join with `Context::from_env()`. The server runs until it is
    /// killed or its stdin closes (with --until-stdin-closes); its memory goes with it.
    Serve {
        /// Bound of the warm segment pool, in MiB (0 disables recycling).
        #[arg(long, default_value_t = 1024)]
        pool_mib: u64,
        /// Exit when standard input reaches end of file.
        #[arg(long)]
        until_stdin_closes: bool,
    },
    /// Print the accounting of the context named by FASTIO_CONTEXT, as JSON (with each
    /// segment's huge-page backing).
    Stats,
    /// Show what this machine offers for shared memory and what fastio will use.
    Doctor {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run one job of a pipeline: start its operators, drive their life-cycle, report.
    ///
    /// Shows each operator's output as it comes, each line prefixed with the operator's
    /// name (`threshold | ...`), and each operator's state changes; then a summary: each
    /// operator's outcome and times, each entry's bytes and how it travelled. Every
    /// operator's full output is kept in the job's folder, `logs/<operator>.log`. Exits 1
    /// when the job fails.
    ///
    /// Ctrl-C (SIGINT), SIGTERM or SIGHUP stops the job cleanly: operators waiting for
    /// their inputs never execute, running ones get SIGTERM and, after a grace period,
    /// SIGKILL (at once on a second Ctrl-C); the summary is still printed, and the
    /// command exits 128 + the signal's number (130 for Ctrl-C).
    ///
    /// The job leases the warm reserve if a keeper runs (`fastio keep-warm`): its entries
    /// are then made of memory kept since the last job. After a job that made 64 MiB or
    /// more without one, a keeper is started in the background for the next job.
    Run {
        /// The pipeline definition file.
        pipeline: std::path::PathBuf,
        /// Where results go: each job gets its own folder,
        /// OUTPUT/<pipeline>/<UTC date>-<time>-<job id prefix>, and OUTPUT/<pipeline>/latest
        /// links to the newest. Nothing of an earlier run is deleted.
        #[arg(long, default_value = "fastio-output")]
        output: std::path::PathBuf,
        /// At the end of the job, save every shared-memory output as a numpy file,
        /// DIR/<operator>/<output>.npy (DIR defaults to the job's folder's `arrays`).
        /// Existing files are never overwritten.
        #[arg(long, value_name = "DIR", num_args = 0..=1)]
        save: Option<Option<std::path::PathBuf>>,
        /// The job's payload directory (stream inputs without `from`).
        #[arg(long)]
        payload: Option<std::path::PathBuf>,
        /// Time limit in seconds, at most 604800 (default: the definition's `timeout`, else
        /// 600).
        #[arg(long)]
        timeout: Option<f64>,
        /// Print only the summary: no operator output (it is still in the logs folder) and
        /// no progress.
        #[arg(long, short)]
        quiet: bool,
        /// Set a variable: NAME=VALUE in every operator that declares NAME, or
        /// OPERATOR.NAME=VALUE in one operator. Repeatable. Commands see the new value
        /// through ${NAME}.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<fastio::pipeline::Override>,
        /// When stderr is not a terminal, print what is still running after this many
        /// seconds without a change (0: never). On a terminal the display is live.
        #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
        heartbeat: f64,
    },
    /// Run one operator of a pipeline alone, its inputs from files: each shared-memory
    /// input from a numpy .npy file, each stream input from a folder (or empty). It does
    /// not wait for upstream operators; its shared-memory outputs are saved as .npy files
    /// (in the job's folder's `arrays`, or --save DIR) and the summary says where.
    RunOp {
        /// The pipeline definition file.
        pipeline: std::path::PathBuf,
        /// The operator to run.
        operator: String,
        /// An input: NAME=FILE.npy (shared memory) or NAME=FOLDER (stream). Repeatable.
        #[arg(long = "input", short = 'i', value_name = "NAME=PATH")]
        inputs: Vec<String>,
        /// Where results go (a folder per job, as for `run`).
        #[arg(long, default_value = "fastio-output")]
        output: std::path::PathBuf,
        /// Where the outputs are saved as .npy (default: the job's folder's `arrays`).
        #[arg(long, value_name = "DIR")]
        save: Option<std::path::PathBuf>,
        /// Time limit in seconds (default: the definition's `timeout`, else 600).
        #[arg(long)]
        timeout: Option<f64>,
        /// Set a variable, as for `run`. Repeatable.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<fastio::pipeline::Override>,
        /// Print only the summary.
        #[arg(long, short)]
        quiet: bool,
    },
    /// List the running jobs of this user (found through their records in the user's
    /// private runtime folder).
    Ps {
        /// Print JSON (the job records) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a running job: its operators, FastIO entries and publications, with sizes
    /// and the operators that hold them.
    Ls {
        /// The job: a prefix of its id or its pipeline's name (default: the only running
        /// job).
        job: Option<String>,
        /// Print JSON (the record and the listing) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show a running job as `ls` does, refreshed until it ends.
    Top {
        /// The job: a prefix of its id or its pipeline's name (default: the only running
        /// job).
        job: Option<String>,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Check a pipeline definition (YAML, or JSON by extension) and list every problem.
    Validate {
        /// The pipeline definition file.
        pipeline: std::path::PathBuf,
    },
    /// Run pipelines on Kubernetes: render a pipeline as a Job (one run) or an Indexed Job
    /// (one run per payload).
    K8s {
        #[command(subcommand)]
        command: k8s::Command,
    },
    /// Print a pipeline's operator graph as Graphviz dot (entry types and shapes on edges).
    Graph {
        /// The pipeline definition file.
        pipeline: std::path::PathBuf,
    },
    /// Hold the warm reserve: memory kept between jobs so that the next job's hand-overs
    /// get pages still in this machine's RAM. `fastio run` starts it after a job that
    /// handed over 64 MiB or more, and it exits once idle for FASTIO_KEEP_WARM seconds
    /// (default 120; 0 turns the reserve off). One per user and FASTIO_WARM_NAME.
    KeepWarm {
        /// Make a blank of this many bytes from the start. Repeatable. (A job that leases
        /// the keeper says what to hold afterwards.)
        #[arg(long, value_name = "BYTES")]
        hold: Vec<u64>,
        /// Seconds to hold the reserve once idle (default: FASTIO_KEEP_WARM, else 120).
        #[arg(long, value_name = "SECONDS")]
        keep: Option<u64>,
        /// Ask the running keeper to free its memory and stop.
        #[arg(long, conflicts_with = "status")]
        stop: bool,
        /// Print the running keeper's status as JSON (null when none runs).
        #[arg(long)]
        status: bool,
    },
}

/// Runs the `fastio` command with `args` (the first is the program's name, as in
/// `std::env::args_os()`) and returns its exit status: 0 on success, 1 when the command
/// or the job it ran failed, 2 for a usage error (after printing it, or the help).
///
/// `program_dirs` are where the command was installed: `fastio run` looks there first, in
/// order, for operator programs named without a `/` (the binary passes its own directory;
/// the Python console script its `bin` folder, so a virtual environment's programs are
/// found without activating it, then the programs the wheel carries). Call it once per process: it sets the global log subscriber
/// (filtered by `FASTIO_LOG`).
pub fn main(
    args: impl IntoIterator<Item = OsString>,
    program_dirs: impl IntoIterator<Item = PathBuf>,
) -> i32 {
    let _ = PROGRAM_DIRS.set(program_dirs.into_iter().collect());
    let args: Vec<OsString> = args.into_iter().collect();
    warm::remember_self(args.first().map(OsString::as_os_str));
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    match run(cli) {
        Ok(()) => 0,
        Err(e) if e.is::<JobFailed>() => 1,
        Err(e) if e.is::<Interrupted>() => 128 + e.downcast_ref::<Interrupted>().map_or(0, |i| i.0),
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// Where the command was installed ([`main`]'s `program_dirs`).
static PROGRAM_DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();

/// A job that ran and failed: its report says why, so nothing more is printed.
#[derive(Debug)]
struct JobFailed;

impl std::fmt::Display for JobFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the job failed")
    }
}

impl std::error::Error for JobFailed {}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Warnings and errors only unless FASTIO_LOG asks for more; no colour codes, which
    // are noise in a log file and in a pipe. A second call in one process keeps the
    // first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::builder()
                .with_default_directive(tracing_subscriber::filter::LevelFilter::WARN.into())
                .with_env_var("FASTIO_LOG")
                .from_env_lossy(),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    match cli.command {
        Command::Serve {
            pool_mib,
            until_stdin_closes,
        } => serve(pool_mib, until_stdin_closes),
        Command::Run {
            pipeline,
            output,
            payload,
            timeout,
            quiet,
            set,
            save,
            heartbeat,
        } => run_pipeline(
            &pipeline,
            output,
            payload,
            timeout,
            (quiet, heartbeat_interval(heartbeat)?),
            &set,
            save,
        ),
        Command::RunOp {
            pipeline,
            operator,
            inputs,
            output,
            save,
            timeout,
            set,
            quiet,
        } => run_operator(
            &pipeline, &operator, &inputs, output, save, timeout, &set, quiet,
        ),
        Command::KeepWarm {
            hold,
            keep,
            stop,
            status,
        } => warm::keep_warm(&hold, keep, stop, status),
        Command::Ps { json } => {
            let jobs = fastio::driver::inspect::running_jobs()?;
            if json {
                out(format_args!("{}\n", serde_json::to_string_pretty(&jobs)?))
            } else {
                out(format_args!(
                    "{}",
                    fastio::driver::inspect::render_jobs(&jobs)
                ))
            }
        }
        Command::Ls { job, json } => {
            let (record, listing) = fastio::driver::inspect::inspect(job.as_deref())?;
            if json {
                let both = serde_json::json!({ "job": record, "listing": listing });
                out(format_args!("{}\n", serde_json::to_string_pretty(&both)?))
            } else {
                out(format_args!(
                    "{}",
                    fastio::driver::inspect::render_listing(&record, &listing)
                ))
            }
        }
        Command::Top { job, interval } => top(job.as_deref(), interval),

        Command::Validate { pipeline } => {
            let p = load(&pipeline)?;
            out(format_args!(
                "{}: pipeline {:?} is valid: {} operators, in order: {}\n",
                pipeline.display(),
                p.name(),
                p.operators().len(),
                p.operators()
                    .iter()
                    .map(|o| o.name())
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ))?;
            // How `fastio run` would start each operator, and why.
            let options = job_options(&p)?;
            for (op, (kind, reason)) in p
                .operators()
                .iter()
                .zip(fastio::driver::operator_kinds(&p, &options))
            {
                let how = match kind {
                    fastio::driver::OperatorKind::Driver => {
                        "uses the pipeline driver, starts at job start"
                    }
                    fastio::driver::OperatorKind::Plain => {
                        "plain program, starts once its inputs are complete"
                    }
                };
                out(format_args!("  {}: {how} ({reason})\n", op.name()))?;
            }
            if let Err(e) = p.check_runs_locally() {
                out(format_args!("{e}\n"))?;
            }
            Ok(())
        }
        Command::K8s { command } => k8s::run(command),
        Command::Graph { pipeline } => out(format_args!("{}", load(&pipeline)?.to_dot())),
        Command::Doctor { json } => {
            let report = fastio::doctor::Report::gather();
            if json {
                out(format_args!("{}\n", serde_json::to_string_pretty(&report)?))
            } else {
                out(format_args!("{report}"))
            }
        }
        Command::Stats => {
            let ctx = Context::from_env()?;
            out(format_args!(
                "{}\n",
                serde_json::to_string_pretty(&ctx.stats()?)?
            ))
        }
    }
}

/// Writes to stdout. A stdout whose reader is gone (`fastio graph p.yaml | head -1`) is an
/// error the command reports; `print!` would panic on it (Rust ignores SIGPIPE), which the
/// Python console script would show as a Python exception.
fn out(text: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_fmt(text)
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}

/// Loads a pipeline; on failure prints every problem, one per line, and fails.
fn load(path: &std::path::Path) -> anyhow::Result<fastio::pipeline::Pipeline> {
    load_with(path, &[])
}

/// [`load`] with variables set on the command line.
fn load_with(
    path: &std::path::Path,
    set: &[fastio::pipeline::Override],
) -> anyhow::Result<fastio::pipeline::Pipeline> {
    let pipeline = fastio::pipeline::Pipeline::from_path_with(path, set).map_err(|e| {
        if let fastio::pipeline::DefinitionError::Override { .. } = e {
            return anyhow::anyhow!("{e}");
        }
        eprintln!("{e}");
        anyhow::anyhow!("{} is not a valid pipeline definition", path.display())
    })?;
    for unused in pipeline.unused() {
        eprintln!("note: {unused}");
    }
    Ok(pipeline)
}

/// The options of a job of `pipeline` run by this command: operator programs installed
/// beside this command ([`main`]'s `program_dirs`) are found first.
fn job_options(
    pipeline: &fastio::pipeline::Pipeline,
) -> anyhow::Result<fastio::driver::JobOptions> {
    let mut options = fastio::driver::JobOptions::for_pipeline(pipeline);
    options
        .program_dirs
        .extend(PROGRAM_DIRS.get().into_iter().flatten().cloned());
    // This process runs one job and starts nothing else: whatever descends from it, but
    // the operators, is the job's, however it escaped.
    options.dedicated_process = true;
    Ok(options)
}

fn serve(pool_mib: u64, until_stdin_closes: bool) -> anyhow::Result<()> {
    let server = Server::start(ServerConfig {
        pool_bytes: pool_mib.saturating_mul(1 << 20),
        ..ServerConfig::default()
    })
    .context("starting the context server")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{CONTEXT_ENV}={}", server.address())?;
    out.flush()?;
    drop(out);
    eprintln!(
        "fastio context server running (pid {}). In another shell:\n  export {CONTEXT_ENV}='{}'",
        std::process::id(),
        server.address()
    );
    if until_stdin_closes {
        std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())?;
        return Ok(());
    }
    loop {
        std::thread::park();
    }
}

fn run_pipeline(
    path: &std::path::Path,
    output: std::path::PathBuf,
    payload: Option<std::path::PathBuf>,
    timeout: Option<f64>,
    (quiet, heartbeat): (bool, Option<std::time::Duration>),
    set: &[fastio::pipeline::Override],
    save: Option<Option<std::path::PathBuf>>,
) -> anyhow::Result<()> {
    use fastio::driver::run_job;
    let pipeline = load_with(path, set)?;
    let mut options = job_options(&pipeline)?;
    let job_id = fastio::operator::new_job_id();
    options.output_root = job_folder(&output.join(pipeline.name()), &job_id)?;
    options.job_id = Some(job_id);
    options.save = save.map(|dir| dir.unwrap_or_else(|| options.output_root.join("arrays")));
    options.payload = payload;
    if let Some(seconds) = timeout {
        options.timeout = Some(timeout_flag(seconds)?);
    }
    let display = std::sync::Arc::new(std::sync::Mutex::new(progress::Display::new(
        quiet, heartbeat,
    )));
    if !quiet {
        let display = display.clone();
        let width = pipeline
            .operators()
            .iter()
            .map(|o| o.name().len())
            .max()
            .unwrap_or(0);
        options.on_output = Some(fastio::driver::OutputSink::new(move |line| {
            let mut display = display.lock().unwrap_or_else(|p| p.into_inner());
            display.line(&format!("{:width$} | {}", line.operator, line.text));
        }));
    }
    let interrupts = interrupt::Watch::start(&options.cancel)?;
    let lease = warm::Lease::begin()?;
    let report = run_job(&pipeline, &options, &mut |p| {
        display.lock().unwrap_or_else(|e| e.into_inner()).show(p)
    })
    .map_err(anyhow::Error::from);
    // The job's memory is freed: the reserve grows back from it.
    if let Some(lease) = lease {
        lease.end();
    }
    display.lock().unwrap_or_else(|p| p.into_inner()).finish();
    let signal = interrupts.stop();
    finish_job_folder(&options.output_root, &report)?;
    let report = report?;
    out(format_args!("{}", report.render()))?;
    if let Some(signal) = signal {
        return Err(Interrupted(signal).into());
    }
    if !report.succeeded() {
        return Err(JobFailed.into());
    }
    Ok(())
}

/// A job stopped by a signal: the command exits 128 + its number, as a shell does.
#[derive(Debug)]
struct Interrupted(i32);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted by signal {}", self.0)
    }
}

impl std::error::Error for Interrupted {}
/// `fastio run-op`.
#[allow(clippy::too_many_arguments)]
fn run_operator(
    path: &std::path::Path,
    operator: &str,
    inputs: &[String],
    output: std::path::PathBuf,
    save: Option<std::path::PathBuf>,
    timeout: Option<f64>,
    set: &[fastio::pipeline::Override],
    quiet: bool,
) -> anyhow::Result<()> {
    use fastio::driver::run_operator;
    let pipeline = load_with(path, set)?;
    let inputs = inputs
        .iter()
        .map(|text| {
            let (name, file) = text
                .split_once('=')
                .with_context(|| format!("--input {text:?} is not NAME=PATH"))?;
            Ok((name.to_owned(), std::path::PathBuf::from(file)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut options = job_options(&pipeline)?;
    let job_id = fastio::operator::new_job_id();
    options.output_root = job_folder(&output.join(pipeline.name()), &job_id)?;
    options.job_id = Some(job_id);
    options.save = Some(save.unwrap_or_else(|| options.output_root.join("arrays")));
    if let Some(seconds) = timeout {
        options.timeout = Some(timeout_flag(seconds)?);
    }
    let interrupts = interrupt::Watch::start(&options.cancel)?;
    let mut display = progress::Display::new(quiet, heartbeat_interval(30.0)?);
    let report = run_operator(&pipeline, operator, &inputs, &options, &mut |p| {
        display.show(p)
    })
    .map_err(anyhow::Error::from);
    display.finish();
    let signal = interrupts.stop();
    finish_job_folder(&options.output_root, &report)?;
    let report = report?;
    out(format_args!("{}", report.render()))?;
    if let Some(signal) = signal {
        return Err(Interrupted(signal).into());
    }
    if !report.succeeded() {
        return Err(JobFailed.into());
    }
    Ok(())
}

/// `--heartbeat`: seconds, 0 for none.
fn heartbeat_interval(seconds: f64) -> anyhow::Result<Option<std::time::Duration>> {
    let interval = std::time::Duration::try_from_secs_f64(seconds)
        .context("--heartbeat must be a number of seconds, 0 or more")?;
    Ok(Some(interval).filter(|d| !d.is_zero()))
}

/// `fastio top`: the listing, redrawn every `interval` seconds until the job ends.
fn top(job: Option<&str>, interval: f64) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let interval = std::time::Duration::try_from_secs_f64(interval)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--interval must be a positive number of seconds")?;
    // The first look names the job for good: a later one follows that job only.
    let (record, mut listing) = fastio::driver::inspect::inspect(job)?;
    let terminal = std::io::stdout().is_terminal();
    loop {
        let text = fastio::driver::inspect::render_listing(&record, &listing);
        let mut out = std::io::stdout().lock();
        let written = if terminal {
            // Home, clear, draw.
            write!(out, "\x1b[H\x1b[2J{text}")
        } else {
            writeln!(out, "{text}")
        }
        .and_then(|()| out.flush());
        match written {
            // The reader went away (`fastio top | head`): done.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            other => other?,
        }
        drop(out);
        std::thread::sleep(interval);
        match fastio::driver::inspect::inspect(Some(&record.job_id)) {
            Ok((_, next)) => listing = next,
            Err(_) => {
                return self::out(format_args!("job {} has ended\n", record.job_id));
            }
        }
    }
}

/// Creates the job's own folder under `parent`, `<UTC date>-<time>-<job id prefix>` (so
/// that folders sort by time and no run touches another's), and points `parent/latest`
/// at it.
fn job_folder(parent: &std::path::Path, job_id: &str) -> anyhow::Result<std::path::PathBuf> {
    let stamp: String = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let name = format!("{}-{}-{}", &stamp[..8], &stamp[8..], &job_id[..8]);
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let folder = parent.join(&name);
    std::fs::create_dir(&folder).with_context(|| format!("creating {}", folder.display()))?;
    Ok(folder)
}

/// After a job ran: points `<parent>/latest` at its folder. A job that could not start
/// leaves no folder behind (it is removed if still empty) and `latest` as it was.
fn finish_job_folder<T>(folder: &std::path::Path, ran: &anyhow::Result<T>) -> anyhow::Result<()> {
    let (Some(parent), Some(name)) = (folder.parent(), folder.file_name()) else {
        return Ok(());
    };
    if ran.is_err() {
        let _ = std::fs::remove_dir(folder);
        return Ok(());
    }
    // Replaced atomically: a new link under a temporary name renamed over the old one.
    let latest = parent.join("latest");
    let temporary = parent.join(format!(".latest-{}", name.to_string_lossy()));
    std::os::unix::fs::symlink(name, &temporary)
        .and_then(|()| std::fs::rename(&temporary, &latest))
        .with_context(|| format!("pointing {} at {}", latest.display(), folder.display()))
}

mod interrupt {
    //! Ctrl-C and friends: a signal stops the job through its `Cancel` handle instead of
    //! killing this process, so the operators are stopped and the summary is printed.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicI32, Ordering};

    use fastio::driver::Cancel;
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    use signal_hook::iterator::{Handle, Signals};

    pub struct Watch {
        handle: Handle,
        thread: std::thread::JoinHandle<()>,
        received: Arc<AtomicI32>,
    }

    impl Watch {
        /// Catches SIGINT, SIGTERM and SIGHUP from now on, each cancelling the job.
        pub fn start(cancel: &Cancel) -> anyhow::Result<Self> {
            let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
            let handle = signals.handle();
            let received = Arc::new(AtomicI32::new(0));
            let thread = {
                let (cancel, received) = (cancel.clone(), received.clone());
                std::thread::spawn(move || {
                    for signal in signals.forever() {
                        let _ = received.compare_exchange(
                            0,
                            signal,
                            Ordering::SeqCst,
                            Ordering::SeqCst,
                        );
                        cancel.cancel(match signal {
                            SIGINT => "SIGINT",
                            SIGTERM => "SIGTERM",
                            _ => "SIGHUP",
                        });
                    }
                })
            };
            Ok(Self {
                handle,
                thread,
                received,
            })
        }

        /// Stops watching; the first signal received, if any.
        pub fn stop(self) -> Option<i32> {
            self.handle.close();
            let _ = self.thread.join();
            Some(self.received.load(Ordering::SeqCst)).filter(|&s| s != 0)
        }
    }
}

mod progress {
    //! Live progress on stderr: redrawn in place on a terminal, one line per change
    //! otherwise. Operators' output lines go to stdout; when both are the same terminal,
    //! the progress block is erased before a line and drawn again after it, so the lines
    //! scroll above it.

    use std::io::{IsTerminal, Write};

    use fastio::driver::{OperatorState, Progress};

    pub struct Display {
        quiet: bool,
        terminal: bool,
        stdout_terminal: bool,
        drawn: usize,
        last: Vec<OperatorState>,
        shown: Option<Progress>,
        last_line: std::time::Duration,
        // Without a terminal, how long a quiet spell lasts before a heartbeat line says
        // what is still running.
        heartbeat: Option<std::time::Duration>,
    }

    impl Display {
        pub fn new(quiet: bool, heartbeat: Option<std::time::Duration>) -> Self {
            Self {
                quiet,
                terminal: std::io::stderr().is_terminal(),
                stdout_terminal: std::io::stdout().is_terminal(),
                drawn: 0,
                last: Vec::new(),
                shown: None,
                last_line: std::time::Duration::ZERO,
                heartbeat,
            }
        }

        /// Prints one line of an operator's output on stdout.
        pub fn line(&mut self, text: &str) {
            let redraw = self.terminal && self.stdout_terminal && self.drawn > 0;
            if redraw {
                let mut err = std::io::stderr().lock();
                // Up to the block's first line, and clear to the end of the screen.
                let _ = write!(err, "\x1b[{}A\x1b[J", self.drawn);
                let _ = err.flush();
                self.drawn = 0;
            }
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
            drop(out);
            if redraw && let Some(progress) = self.shown.take() {
                self.show(&progress);
            }
        }

        pub fn show(&mut self, progress: &Progress) {
            if self.quiet {
                return;
            }
            let mut err = std::io::stderr().lock();
            let width = progress
                .operators
                .iter()
                .map(|(n, _, _)| n.len())
                .max()
                .unwrap_or(8);
            if self.terminal {
                if self.drawn > 0 {
                    let _ = write!(err, "\x1b[{}A", self.drawn);
                }
                for (name, state, time) in &progress.operators {
                    let _ = writeln!(
                        err,
                        "\x1b[2K  {name:width$}  {:>8.2} s  {state}",
                        time.as_secs_f64()
                    );
                }
                self.drawn = progress.operators.len();
            } else {
                for (i, (name, state, _)) in progress.operators.iter().enumerate() {
                    if self.last.get(i) != Some(state) {
                        let _ = writeln!(
                            err,
                            "[{:>8.3} s] {name:width$}  {state}",
                            progress.elapsed.as_secs_f64()
                        );
                        self.last_line = progress.elapsed;
                    }
                }
                // A long phase prints nothing by itself: say what is still going on.
                if self
                    .heartbeat
                    .is_some_and(|h| progress.elapsed.saturating_sub(self.last_line) >= h)
                {
                    for (name, state, time) in &progress.operators {
                        if !state.is_final() {
                            let _ = writeln!(
                                err,
                                "[{:>8.3} s] {name:width$}  still {state} (for {:.0} s)",
                                progress.elapsed.as_secs_f64(),
                                time.as_secs_f64()
                            );
                        }
                    }
                    self.last_line = progress.elapsed;
                }
            }
            self.last = progress
                .operators
                .iter()
                .map(|(_, s, _)| s.clone())
                .collect();
            self.shown = Some(progress.clone());
        }

        pub fn finish(&mut self) {
            if !self.quiet && self.terminal {
                let _ = writeln!(std::io::stderr());
            }
        }
    }
}

/// The `--timeout SECONDS` flag as a time limit: positive and at most the longest limit a
/// definition may set.
fn timeout_flag(seconds: f64) -> anyhow::Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero() && *d <= fastio::pipeline::MAX_TIMEOUT)
        .with_context(|| {
            format!(
                "--timeout must be a positive number of seconds, at most {}",
                fastio::pipeline::MAX_TIMEOUT.as_secs()
            )
        })
}
