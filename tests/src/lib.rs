//! Support for the cross-process tests: real processes running the `fastio-probe`
//! program, driven line by line.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub mod job;

/// A running probe process.
pub struct Probe {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Probe {
    /// Starts `probe` with `args`, joining the context at `address` (if any).
    pub fn spawn(probe: &str, address: Option<&str>, args: &[&str]) -> anyhow::Result<Self> {
        let mut command = Command::new(probe);
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        match address {
            Some(a) => command.env(fastio::CONTEXT_ENV, a),
            None => command.env_remove(fastio::CONTEXT_ENV),
        };
        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {probe}"))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the probe prints, without its newline.
    pub fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the probe ended without answering");
        }
        Ok(line.trim_end().to_owned())
    }

    /// Sends one command line.
    pub fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Sends a command and returns the answer line.
    pub fn ask(&mut self, line: &str) -> anyhow::Result<String> {
        self.send(line)?;
        self.line()
    }

    /// Closes stdin and waits for a clean exit.
    pub fn finish(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            bail!("probe exited with {status}");
        }
        Ok(())
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// All remaining output lines, after the process exits.
    pub fn rest(mut self) -> anyhow::Result<Vec<String>> {
        drop(self.stdin.take());
        let lines = (&mut self.stdout).lines().collect::<Result<Vec<_>, _>>()?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("probe exited with {status}");
        }
        Ok(lines)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes of shared memory in use on this machine (`Shmem` in /proc/meminfo).
pub fn shmem_bytes() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Shmem:"))
        .context("no Shmem line")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("condition not met within {timeout:?}")
}

/// Whether process `pid` is alive (a zombie, dead but not yet reaped, is not).
pub fn alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; its state letter is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}
