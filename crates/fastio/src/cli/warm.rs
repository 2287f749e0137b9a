//! The warm reserve from the command's side: `fastio run` leases it for its job and starts
//! a keeper after a job big enough to want one; `fastio keep-warm` is the keeper (see
//! `fastio::shm::warm`).

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::Context as _;
use fastio::shm::warm;

/// How to start this command again (for the keeper): the `fastio` binary itself, or, from
/// the Python console script, the script (`argv[0]`), since this process is Python.
static SELF_COMMAND: OnceLock<PathBuf> = OnceLock::new();

/// Records how this command was started (`argv[0]`), for [`start_keeper`].
pub(crate) fn remember_self(argv0: Option<&std::ffi::OsStr>) {
    let exe = std::env::current_exe().ok();
    let own = exe.as_ref().filter(|e| {
        e.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("fastio"))
    });
    let command = match (own, argv0) {
        (Some(exe), _) => Some(exe.clone()),
        (None, Some(arg)) => std::path::absolute(arg).ok(),
        (None, None) => None,
    };
    if let Some(command) = command {
        let _ = SELF_COMMAND.set(command);
    }
}

/// A job's lease of the warm reserve, from [`Lease::begin`] to [`Lease::end`].
pub(crate) struct Lease {
    name: String,
    keep: std::time::Duration,
    joined: bool,
}

impl Lease {
    /// Leases the reserve of the running keeper, if any; `None` when the reserve is off
    /// (`FASTIO_KEEP_WARM=0`).
    pub(crate) fn begin() -> anyhow::Result<Option<Self>> {
        let Some(keep) = warm::keep_time()? else {
            return Ok(None);
        };
        let name = warm::keeper_name()?;
        let joined = match warm::join(&name) {
            Ok(held) => held.is_some(),
            Err(e) => {
                tracing::warn!("the warm reserve is not used: {e}");
                false
            }
        };
        Ok(Some(Self { name, keep, joined }))
    }

    /// Ends the lease once the job's memory is freed: the keeper grows its reserve back
    /// from it. Without a keeper, starts one when the job's peak was worth it.
    pub(crate) fn end(self) {
        let sizes = warm::leave();
        if self.joined || sizes.iter().sum::<u64>() < warm::MIN_RESERVE {
            return;
        }
        if let Err(e) = start_keeper(&self.name, self.keep, &sizes) {
            tracing::info!("no warm reserve kept after the job: {e:#}");
        }
    }
}

/// Starts `fastio keep-warm` in the background, detached from this command's terminal,
/// process group, output and every other descriptor it inherited, to hold blanks of
/// `sizes`. Not waited for: it exits by itself once idle (or at once, when a keeper of that
/// name runs already).
fn start_keeper(name: &str, keep: std::time::Duration, sizes: &[u64]) -> anyhow::Result<()> {
    let command = SELF_COMMAND
        .get()
        .context("this command does not know its own path")?;
    let mut keeper = std::process::Command::new(command);
    keeper
        .arg("keep-warm")
        .args(sizes.iter().map(|s| format!("--hold={s}")))
        .args(["--keep", &keep.as_secs().to_string()])
        .env(warm::WARM_NAME_ENV, name)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    fastio::driver::detach(&mut keeper);
    keeper
        .spawn()
        .with_context(|| format!("starting {} keep-warm", command.display()))?;
    Ok(())
}

/// `fastio keep-warm`.
pub(crate) fn keep_warm(
    hold: &[u64],
    keep: Option<u64>,
    stop: bool,
    status: bool,
) -> anyhow::Result<()> {
    let name = warm::keeper_name()?;
    if stop {
        let stopped = warm::stop(&name)?;
        super::out(format_args!(
            "{}\n",
            if stopped {
                "the warm-reserve keeper has freed its memory and stopped"
            } else {
                "no warm-reserve keeper runs"
            }
        ))?;
        return Ok(());
    }
    if status {
        let status = warm::status(&name)?;
        super::out(format_args!(
            "{}\n",
            serde_json::to_string_pretty(&status_json(status.as_ref()))?
        ))?;
        return Ok(());
    }
    let keep = match keep {
        Some(seconds) => std::time::Duration::from_secs(seconds),
        None => warm::keep_time()?.unwrap_or(warm::DEFAULT_KEEP),
    };
    // The blanks are memory no process needs, and the kernel's OOM killer does not see
    // them (a memfd's pages count in no process's resident size): without this it would
    // kill a process doing real work and leave them held.
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "1000") {
        tracing::info!("the keeper is not the OOM killer's first choice: {e}");
    }
    warm::keep(&name, keep, hold)?;
    Ok(())
}

/// A keeper's status as JSON (`null` when none runs).
pub(crate) fn status_json(status: Option<&warm::KeeperStatus>) -> serde_json::Value {
    match status {
        None => serde_json::Value::Null,
        Some(s) => serde_json::json!({
            "pid": s.pid,
            "held_bytes": s.held,
            "target_bytes": s.target,
            "leased": s.leased,
            "used_bytes": s.used,
            "leases": s.leases,
            "keep_seconds": s.keep_secs,
        }),
    }
}
