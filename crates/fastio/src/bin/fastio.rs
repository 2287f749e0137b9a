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
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("FASTIO_LOG"))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve {
            pool_mib,
            until_stdin_closes,
        } => serve(pool_mib, until_stdin_closes),
        Command::Stats => {
            let ctx = Context::from_env()?;
            println!("{}", serde_json::to_string_pretty(&ctx.stats()?)?);
            Ok(())
        }
    }
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
