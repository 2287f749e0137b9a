//! The job's processes that escaped their operator's process group or session.
//!
//! Signalling an operator's process group reaches what it started in that group; a
//! descendant that called `setsid` or `setpgid` (a daemon, `nohup ... &` in a new session)
//! is out of reach, and when its parent exits it is re-parented. The driver makes its own
//! process a child subreaper (`PR_SET_CHILD_SUBREAPER`), so such orphans become its children
//! instead of init's, and it can reap them. It recognises the job's processes by ancestry
//! (descendants of a live operator, looked at about every second while the job runs and
//! remembered by pid and start time) and by the job's identifier, which every operator
//! inherits in `FASTIO_JOB_ID` and passes on to what it starts. At the end of the job every
//! such process is killed and, if it became the driver's child, reaped.
//!
//! Scope: a process that clears its environment and whose ancestors all exit before the
//! driver looks escapes recognition; a cgroup would catch it, but needs a delegated
//! cgroup v2 hierarchy, which the driver does not assume. Whatever it is, it cannot stall
//! the driver: output readers stop at the end of the job (`output.rs`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions};

/// One process as `/proc/<pid>/stat` shows it.
struct ProcessInfo {
    pid: i32,
    ppid: i32,
    zombie: bool,
    start: u64,
}

/// The job's processes seen so far, by pid and start time (a pid may be reused).
pub(crate) struct Escapees {
    marker: Vec<u8>,
    me: i32,
    seen: HashMap<i32, u64>,
}

impl Escapees {
    /// Makes this process a child subreaper, so that orphans of the job become its children.
    pub fn new(job_id: &str) -> Self {
        // Failure leaves orphans to init: they are still found and killed, not reaped here.
        let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
        Self {
            marker: format!("\0{}={job_id}\0", crate::JOB_ID_ENV).into_bytes(),
            me: rustix::process::getpid().as_raw_nonzero().get(),
            seen: HashMap::new(),
        }
    }

    /// Notes every live process of the job: descendants of `roots` (the operators still
    /// running) and of the processes seen before, and processes carrying the job's id.
    /// Returns them (without `roots`).
    fn scan(&mut self, roots: &[i32]) -> Vec<ProcessInfo> {
        let all = processes();
        let mut children: HashMap<i32, Vec<usize>> = HashMap::new();
        for (i, p) in all.iter().enumerate() {
            children.entry(p.ppid).or_default().push(i);
        }
        let mut member: HashSet<usize> = HashSet::new();
        let mut queue: VecDeque<usize> = VecDeque::new();
        for (i, p) in all.iter().enumerate() {
            let known = self.seen.get(&p.pid) == Some(&p.start);
            if p.pid != self.me && (known || (!p.zombie && self.carries_marker(p.pid))) {
                member.insert(i);
                queue.push_back(i);
            }
        }
        let roots: HashSet<i32> = roots.iter().copied().collect();
        for &root in &roots {
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
            if member.contains(&i) && !roots.contains(&p.pid) && p.pid != self.me {
                self.seen.insert(p.pid, p.start);
                found.push(p);
            }
        }
        found
    }

    /// Looks for the job's processes while the job runs.
    pub fn watch(&mut self, roots: &[i32]) {
        self.scan(roots);
    }

    /// Kills every process of the job other than `roots` (the operators, whose exit the
    /// driver waits for itself), reaping those that became this process's children, until
    /// none is left or `bound` has passed. Returns how many were killed.
    pub fn kill_all(&mut self, roots: &[i32], bound: Duration) -> usize {
        let until = Instant::now() + bound;
        let mut killed = HashSet::new();
        loop {
            let mut alive = false;
            for p in self.scan(roots) {
                let Some(pid) = Pid::from_raw(p.pid) else {
                    continue;
                };
                if !p.zombie {
                    alive = true;
                    if rustix::process::kill_process(pid, Signal::KILL).is_ok() {
                        killed.insert((p.pid, p.start));
                    }
                }
                if p.ppid == self.me {
                    // Not one of the operators (std waits for those): ours to reap.
                    let _ = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG);
                }
            }
            if !alive || Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        killed.len()
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
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(22 - 3)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = "42 (a (b) c) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
        let p = parse_stat(42, stat).unwrap();
        assert_eq!((p.ppid, p.start, p.zombie), (7, 12345, false));
        let zombie = "43 (x) Z 1 43 43 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 99 0 0";
        assert!(parse_stat(43, zombie).unwrap().zombie);
    }
}
