//! The `fastio` command.

use std::io::Write;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fastio::{CONTEXT_ENV, Context, Server, ServerConfig};

/// fastio: zero-copy typed arrays shared between the processes of a pipeline.
#[derive(Parser)]
#[command(
    version,
    about,
    after_help = "Environment:\n  FASTIO_LOG  what fastio itself logs to stderr: error, warn (the default), info, debug or\n              trace, for everything or per module (FASTIO_LOG=fastio_driver=debug); the\n              syntax of tracing-subscriber's EnvFilter. Operators' own output is not a log:\n              `fastio run` shows it (see --quiet) and keeps it in the job's logs folder."
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
    /// operator's full output is kept in `<output>/<pipeline>/logs/<operator>.log`. Exits
    /// non-zero when the job fails.
    Run {
        /// The pipeline definition file.
        pipeline: std::path::PathBuf,
        /// Parent of the operators' stream output directories.
        #[arg(long, default_value = "fastio-output")]
        output: std::path::PathBuf,
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
    },
    /// Check a pipeline definition (YAML, or JSON by extension) and list every problem.
    Validate {
        /// The pipeline definition file.
        pipeline: std::path::PathBuf,
    },
    /// Print a pipeline's operator graph as Graphviz dot (entry types and shapes on edges).
    Graph {
        /// The pipeline definition file.
        pipeline: std::path::PathBuf,
    },
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    // Warnings and errors only unless FASTIO_LOG asks for more; no colour codes, which
    // are noise in a log file and in a pipe.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::builder()
                .with_default_directive(tracing_subscriber::filter::LevelFilter::WARN.into())
                .with_env_var("FASTIO_LOG")
                .from_env_lossy(),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
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
        } => run_pipeline(&pipeline, output, payload, timeout, quiet),
        Command::Validate { pipeline } => {
            let p = load(&pipeline)?;
            println!(
                "{}: pipeline {:?} is valid: {} operators, in order: {}",
                pipeline.display(),
                p.name(),
                p.operators().len(),
                p.operators()
                    .iter()
                    .map(|o| o.name())
                    .collect::<Vec<_>>()
                    .join(" -> ")
            );
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
                println!("  {}: {how} ({reason})", op.name());
            }
            if let Err(e) = p.check_runs_locally() {
                println!("{e}");
            }
            Ok(())
        }
        Command::Graph { pipeline } => {
            print!("{}", load(&pipeline)?.to_dot());
            Ok(())
        }
        Command::Doctor { json } => {
            let report = fastio::doctor::Report::gather();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(())
        }
        Command::Stats => {
            let ctx = Context::from_env()?;
            println!("{}", serde_json::to_string_pretty(&ctx.stats()?)?);
            Ok(())
        }
    }
}

/// Loads a pipeline; on failure prints every problem, one per line, and fails.
fn load(path: &std::path::Path) -> anyhow::Result<fastio::pipeline::Pipeline> {
    let pipeline = fastio::pipeline::Pipeline::from_path(path).map_err(|e| {
        eprintln!("{e}");
        anyhow::anyhow!("{} is not a valid pipeline definition", path.display())
    })?;
    for unused in pipeline.unused() {
        eprintln!("note: {unused}");
    }
    Ok(pipeline)
}

/// The options of a job of `pipeline` run by this command: operator programs built beside
/// this one are found first.
fn job_options(
    pipeline: &fastio::pipeline::Pipeline,
) -> anyhow::Result<fastio::driver::JobOptions> {
    let mut options = fastio::driver::JobOptions::for_pipeline(pipeline);
    if let Some(dir) = std::env::current_exe()?.parent() {
        options.program_dirs.push(dir.to_owned());
    }
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
    quiet: bool,
) -> anyhow::Result<()> {
    use fastio::driver::run_job;
    let pipeline = load(path)?;
    let mut options = job_options(&pipeline)?;
    options.output_root = output.join(pipeline.name());
    options.payload = payload;
    if let Some(seconds) = timeout {
        options.timeout = Some(
            std::time::Duration::try_from_secs_f64(seconds)
                .ok()
                .filter(|d| !d.is_zero() && *d <= fastio::pipeline::MAX_TIMEOUT)
                .with_context(|| {
                    format!(
                        "--timeout must be a positive number of seconds, at most {}",
                        fastio::pipeline::MAX_TIMEOUT.as_secs()
                    )
                })?,
        );
    }
    let display = std::sync::Arc::new(std::sync::Mutex::new(progress::Display::new(quiet)));
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
    let report = run_job(&pipeline, &options, &mut |p| {
        display.lock().unwrap_or_else(|e| e.into_inner()).show(p)
    })?;
    display.lock().unwrap_or_else(|p| p.into_inner()).finish();
    print!("{}", report.render());
    if !report.succeeded() {
        std::process::exit(1);
    }
    Ok(())
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
    }

    impl Display {
        pub fn new(quiet: bool) -> Self {
            Self {
                quiet,
                terminal: std::io::stderr().is_terminal(),
                stdout_terminal: std::io::stdout().is_terminal(),
                drawn: 0,
                last: Vec::new(),
                shown: None,
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
                    }
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
