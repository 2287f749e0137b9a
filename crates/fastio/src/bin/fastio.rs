//! The `fastio` command.

use std::io::Write;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fastio::{CONTEXT_ENV, Context, Server, ServerConfig};

/// fastio: zero-copy typed arrays shared between the processes of a pipeline.
#[derive(Parser)]
#[command(version, about)]
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
    /// Print the accounting of the context named by FASTIO_CONTEXT, as JSON.
    Stats,
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
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("FASTIO_LOG"))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve {
            pool_mib,
            until_stdin_closes,
        } => serve(pool_mib, until_stdin_closes),
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
            Ok(())
        }
        Command::Graph { pipeline } => {
            print!("{}", load(&pipeline)?.to_dot());
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
    fastio::pipeline::Pipeline::from_path(path).map_err(|e| {
        eprintln!("{e}");
        anyhow::anyhow!("{} is not a valid pipeline definition", path.display())
    })
}

fn serve(pool_mib: u64, until_stdin_closes: bool) -> anyhow::Result<()> {
    let server = Server::start(ServerConfig {
        pool_bytes: pool_mib.saturating_mul(1 << 20),
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
