//! The job's processes that escaped their operator's process group or session.
//!
//! Signalling an operator's process group reaches what it started in that group; a
//! descendant that called `setsid` or `setpgid` (a daemon, `nohup ... &` in a new session)
//! is out of reach, and when its parent exits it is re-parented. While a job runs, the
//! driver's process is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so such orphans become
//! its children instead of init's, and it can reap them. It recognises the job's processes
//! by ancestry (descendants of a live operator, looked at about every second while the job
//! runs and remembered by pid and start time), by process group (an operator's group, which
//! keeps its number until the end of the job because the operator is left unreaped), and by
//! the job's identifier, which every operator inherits in `FASTIO_JOB_ID` and passes on to
//! what it starts. At the end of the job every such process is killed and, if it became the
//! driver's child, reaped.
//!
//! A process dedicated to the job (`JobOptions::dedicated_process`, which `fastio run` sets)
//! needs none of these clues: every descendant of the process other than the operators is
//! the job's (an escaped process is re-parented to it when its ancestors exit, whatever its
//! environment says), so every one is killed and reaped at the end. In a process that is
//! not dedicated (a library caller, which may have children of its own or run other jobs),
//! a process that clears its environment and whose ancestors all exit between two looks
//! escapes recognition; it cannot stall the driver all the same: output readers stop at the
//! end of the job (`output.rs`).
//!
//! Signals and reaping go through a pidfd opened for the process and checked against the
//! start time seen in the scan, so they never reach a process that took a recycled pid.
//! Where pidfds are unavailable (kernels before 5.3, or no descriptor left), the pid is used
//! after the same check, which narrows the window to the two system calls between them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};

/// One process as `/proc/<pid>/stat` shows it.
#[derive(Debug)]
struct ProcessInfo {
    pid: i32,
    ppid: i32,
    pgid: i32,
    zombie: bool,
    start: u64,
}

/// The jobs running in this process, and whether it was a child subreaper before the
/// first of them started (then it stays one).
static SUBREAPER: Mutex<(usize, bool)> = Mutex::new((0, false));

/// Makes this process a child subreaper for as long as one of its jobs runs.
fn hold_subreaper() {
    let mut state = SUBREAPER.lock().unwrap_or_else(|p| p.into_inner());
    if state.0 == 0 {
        state.1 = rustix::process::child_subreaper().is_ok_and(|p| p.is_some());
        // Failure leaves orphans to init: they are still found and killed, not reaped here.
        let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
    }
    state.0 += 1;
}

/// Gives the subreaper role back when the last job ends: a library caller's own orphaned
/// descendants must not become its children (and its zombies) after the job.
fn release_subreaper() {
    let mut state = SUBREAPER.lock().unwrap_or_else(|p| p.into_inner());
    state.0 = state.0.saturating_sub(1);
    if state.0 == 0 && !state.1 {
        let _ = rustix::process::set_child_subreaper(None);
    }
}

/// The job's processes seen so far, by pid and start time (a pid may be reused).
pub(crate) struct Escapees {
    marker: Vec<u8>,
    me: i32,
    dedicated: bool,
    seen: HashMap<i32, u64>,
}

impl Drop for Escapees {
    fn drop(&mut self) {
        release_subreaper();
    }
}

impl Escapees {
    /// Makes this process a child subreaper (until dropped), so that orphans of the job
    /// become its children. `dedicated`: the process exists for this job alone, so every
    /// descendant other than the operators is the job's.
    pub fn new(job_id: &str, dedicated: bool) -> Self {
        hold_subreaper();
        Self {
            marker: format!("\0{}={job_id}\0", crate::JOB_ID_ENV).into_bytes(),
            me: rustix::process::getpid().as_raw_nonzero().get(),
            dedicated,
            seen: HashMap::new(),
        }
    }

    /// Notes every process of the job: descendants of `running` (the operators still
    /// running) and of the processes seen before, members of the operators' process groups
    /// (`operators`: every operator started, exited or not), processes carrying the job's
    /// id, and in a dedicated process every descendant. Returns them, without the
    /// operators.
    fn scan(&mut self, running: &[i32], operators: &[i32]) -> Vec<ProcessInfo> {
        let all = processes();
        let operators: HashSet<i32> = operators.iter().chain(running).copied().collect();
        let mut children: HashMap<i32, Vec<usize>> = HashMap::new();
        for (i, p) in all.iter().enumerate() {
            children.entry(p.ppid).or_default().push(i);
        }
        let mut member: HashSet<usize> = HashSet::new();
        let mut queue: VecDeque<usize> = VecDeque::new();
        for (i, p) in all.iter().enumerate() {
            let known = self.seen.get(&p.pid) == Some(&p.start);
            let grouped = operators.contains(&p.pgid);
            let orphan = self.dedicated && p.ppid == self.me;
            if p.pid != self.me
                && (known || grouped || orphan || (!p.zombie && self.carries_marker(p.pid)))
            {
                member.insert(i);
                queue.push_back(i);
            }
        }
        for &root in running {
            for &child in children.get(&root).into_iter().flatten() {
                if member.insert(child) {
                    queue.push_back(child);
                }
            }
        }
        while let Some(i) = queue.pop_front() {
            for &child in children.get(&all[i].pid).into_iter().flatten() {
                if member.insert(child) {
                    queue.push_back(child);
                }
            }
        }
        let mut found: Vec<ProcessInfo> = Vec::new();
        for (i, p) in all.into_iter().enumerate() {
            if member.contains(&i) && !operators.contains(&p.pid) && p.pid != self.me {
                self.seen.insert(p.pid, p.start);
                found.push(p);
            }
        }
        found
    }

    /// Looks for the job's processes while the job runs, and reaps those that became this
    /// process's children and exited (a long job whose operators leave many short-lived
    /// orphans does not pile up zombies).
    pub fn watch(&mut self, running: &[i32], operators: &[i32]) {
        for p in self.scan(running, operators) {
            if p.zombie && p.ppid == self.me {
                self.reap(&p);
            }
        }
    }

    /// Kills every process of the job other than the operators (whose exit the driver
    /// waits for itself), reaping those that became this process's children, until none is
    /// left or `bound` has passed. Returns how many were killed.
    pub fn kill_all(&mut self, running: &[i32], operators: &[i32], bound: Duration) -> usize {
        let until = Instant::now() + bound;
        let mut killed = HashSet::new();
        loop {
            let found = self.scan(running, operators);
            let pids: HashSet<i32> = found
                .iter()
                .map(|p| p.pid)
                .chain(running.iter().copied())
                .collect();
            let mut pending = false;
            for p in &found {
                if !p.zombie {
                    pending = true;
                    if signal(p.pid, p.start, Signal::KILL) {
                        killed.insert((p.pid, p.start));
                    }
                } else if p.ppid == self.me {
                    self.reap(p);
                } else if pids.contains(&p.ppid) {
                    // Its parent, of the job, is dying: it comes to this process then.
                    pending = true;
                }
            }
            if !pending || Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        killed.len()
    }

    /// Reaps `p`, an exited child of this process, if it is still the process scanned.
    fn reap(&mut self, p: &ProcessInfo) {
        let reaped = match same_process(p.pid, p.start) {
            Target::Pidfd(fd) => matches!(
                rustix::process::waitid(
                    WaitId::PidFd(fd.as_fd()),
                    WaitIdOptions::EXITED | WaitIdOptions::NOHANG
                ),
                Ok(Some(_))
            ),
            // A child's pid cannot pass to another process before it is reaped.
            Target::Pid(pid) => matches!(
                rustix::process::waitid(
                    WaitId::Pid(pid),
                    WaitIdOptions::EXITED | WaitIdOptions::NOHANG
                ),
                Ok(Some(_))
            ),
            Target::Gone => false,
        };
        if reaped {
            self.seen.remove(&p.pid);
        }
    }

    fn carries_marker(&self, pid: i32) -> bool {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            return false;
        };
        // The marker starts with a NUL; so does every variable but the first.
        let mut text = Vec::with_capacity(environ.len() + 2);
        text.push(0);
        text.extend_from_slice(&environ);
        text.push(0);
        text.windows(self.marker.len()).any(|w| w == self.marker)
    }
}

/// How to reach a process seen in a scan.
enum Target {
    /// A pidfd, which stays bound to that process whatever happens to its pid.
    Pidfd(OwnedFd),
    /// No pidfd could be opened: the pid, which held the same process a moment ago.
    Pid(Pid),
    /// The pid no longer holds the process seen.
    Gone,
}

/// The process with `pid` and start time `start`, if it still exists. The pidfd is opened
/// first and the start time checked after: the pid held the scanned process both before and
/// after the pidfd was opened, so the pidfd is that process's.
fn same_process(pid: i32, start: u64) -> Target {
    let Some(raw) = Pid::from_raw(pid) else {
        return Target::Gone;
    };
    let pidfd = match rustix::process::pidfd_open(raw, PidfdFlags::empty()) {
        Ok(fd) => Some(fd),
        Err(Errno::SRCH) => return Target::Gone,
        // ENOSYS (a kernel before 5.3), EMFILE, ENFILE, ENOMEM: fall back to the pid.
        Err(_) => None,
    };
    if start_of(pid) != Some(start) {
        return Target::Gone;
    }
    match pidfd {
        Some(fd) => Target::Pidfd(fd),
        None => Target::Pid(raw),
    }
}

/// Sends `signal` to the process with `pid` and start time `start`, never to another
/// process that took its pid. Returns whether it was sent.
fn signal(pid: i32, start: u64, signal: Signal) -> bool {
    match same_process(pid, start) {
        Target::Pidfd(fd) => rustix::process::pidfd_send_signal(&fd, signal).is_ok(),
        Target::Pid(pid) => rustix::process::kill_process(pid, signal).is_ok(),
        Target::Gone => false,
    }
}

/// The start time of process `pid`, in clock ticks after boot.
fn start_of(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(parse_stat(pid, &stat)?.start)
}

/// Every process this one can see.
fn processes() -> Vec<ProcessInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            parse_stat(pid, &stat)
        })
        .collect()
}

/// `pid (comm) state ppid pgrp session ... starttime ...`: the name may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(pid: i32, stat: &str) -> Option<ProcessInfo> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is the state (field 3 of stat), so field N is fields[N - 3].
    Some(ProcessInfo {
        pid,
        zombie: matches!(fields.first()?.as_bytes().first(), Some(b'Z' | b'X')),
        ppid: fields.get(4 - 3)?.parse().ok()?,
        pgid: fields.get(5 - 3)?.parse().ok()?,
        start: fields.get(22 - 3)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = "42 (a (b) c) S 7 40 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
        let p = parse_stat(42, stat).unwrap();
        assert_eq!((p.ppid, p.pgid, p.start, p.zombie), (7, 40, 12345, false));
        let zombie = "43 (x) Z 1 43 43 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 99 0 0";
        assert!(parse_stat(43, zombie).unwrap().zombie);
    }

    #[test]
    fn a_signal_reaches_only_the_process_scanned_not_one_with_its_pid_and_another_start() {
        use std::io::{BufRead, Write};
        use std::process::{Command, Stdio};
        let mut child = Command::new("sh")
            .args(["-c", "read x; echo alive; read y"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let start = start_of(pid).unwrap();
        // The same pid with another start time is another process: left alone.
        assert!(!signal(pid, start + 1, Signal::KILL));
        // A SIGKILL sent above would be pending by now: the shell could not answer.
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "alive\n");
        assert!(signal(pid, start, Signal::KILL));
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }
}
