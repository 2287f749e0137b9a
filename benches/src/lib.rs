//! What the benchmarks share: the helper process that plays "another process", the source
//! buffer, and the file baselines (a warm file overwritten in place, read back in chunks).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, bail};
use fastio::shm::transfer::{recv_message, send_message, seqpacket_pair};

/// The workspace's target directory (`CARGO_TARGET_DIR` or `target/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// `len` bytes of a non-zero pattern, every page touched.
pub fn filled_buffer(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 + 1).collect()
}

/// A file at `path` created, sized and written with `bytes` once, so that its pages stay
/// allocated: each round of a file baseline then overwrites it in place (no fsync), warm
/// against fastio's warm pooled segment.
pub fn warm_file(path: &Path, bytes: &[u8]) -> anyhow::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all_at(bytes, 0)?;
    Ok(file)
}

/// Reads the whole file at `path` with `pread` through `buffer`, giving each chunk read to
/// `chunk`: the consumer side of the file baselines.
pub fn read_file_in_chunks(
    path: &Path,
    buffer: &mut [u8],
    mut chunk: impl FnMut(&[u8]),
) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = usize::try_from(file.metadata()?.len())?;
    let mut offset = 0;
    while offset < size {
        let len = buffer.len().min(size - offset);
        file.read_exact_at(&mut buffer[..len], offset as u64)?;
        chunk(&buffer[..len]);
        offset += len;
    }
    Ok(())
}

/// A helper process, as the bench driving it sees it: this same executable started with
/// `role_env` set, obeying one-line commands on a `SOCK_SEQPACKET` socket that is its
/// standard input, and answering each (`error: ...` for a failure).
pub struct Helper {
    socket: OwnedFd,
    child: Child,
}

impl Helper {
    /// Starts the helper and has it connect to the context server at `address`.
    pub fn spawn(role_env: &str, address: &str) -> anyhow::Result<Self> {
        let (ours, theirs) = seqpacket_pair()?;
        let child = Command::new(std::env::current_exe()?)
            .env(role_env, "helper")
            .stdin(Stdio::from(theirs))
            .spawn()
            .context("cannot start a helper process")?;
        let helper = Self {
            socket: ours,
            child,
        };
        helper.call(&format!("connect {address}"))?;
        Ok(helper)
    }

    /// Sends one command and waits for its answer.
    pub fn call(&self, command: &str) -> anyhow::Result<String> {
        send_message(self.socket.as_fd(), command.as_bytes(), &[])?;
        let answer = String::from_utf8(recv_message(self.socket.as_fd())?.body)?;
        match answer.strip_prefix("error: ") {
            Some(e) => bail!("helper failed `{command}`: {e}"),
            None => Ok(answer),
        }
    }

    /// Tells the helper to quit and waits for it to exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.call("quit")?;
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "helper exited with {status}");
        Ok(())
    }
}
