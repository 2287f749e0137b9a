//! How running jobs are found (`fastio ps`, `fastio ls`): each pipeline driver keeps a
//! record of its job, a small JSON file, in the user's private runtime folder while the
//! job runs.
//!
//! The folder is `$XDG_RUNTIME_DIR/fastio/jobs` when the session has a runtime directory
//! (systemd makes it per user, mode 0700), else `/tmp/fastio-<uid>/jobs`. Every folder on
//! the way that fastio makes is created mode 0700, and one that exists must be a real
//! directory (not a link) owned by the user with no access for group or others, or it is
//! refused: another user can neither read the records nor plant one. A record names the
//! job's context address; the context server accepts only peers of its own uid, so only
//! the job's user (and root) can look into a job.
//!
//! A record goes when its job ends; one left by a driver that was killed is recognised
//! (its process is gone, or its pid now belongs to a process started at another time) and
//! removed by the next [`list`].

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A running job, as its driver describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's identifier.
    pub job_id: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// The definition file, as given to the driver.
    pub definition: String,
    /// The driver's process id.
    pub driver_pid: u32,
    /// When the driver process started, in clock ticks after boot (the 22nd field of
    /// `/proc/<pid>/stat`): tells a live driver from a new process that reuses its pid.
    pub driver_start: u64,
    /// When the job started, seconds since the Unix epoch.
    pub started: u64,
    /// The job's output folder.
    pub output_root: String,
    /// The address of the job's context (`@...`), for [`crate::Context::connect`].
    pub context: String,
    /// The operators, in dependency order, with their process ids once started.
    pub operators: Vec<RecordedOperator>,
}

/// One operator of a recorded job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedOperator {
    /// Its name.
    pub name: String,
    /// Its process id, if it started.
    pub pid: Option<u32>,
}

/// Why records could not be kept or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The runtime folder is not private to this user.
    #[error(
        "{path} is not a private folder of this user (owner uid {owner}, mode {mode:o}): refusing to keep or read job records there"
    )]
    NotPrivate {
        /// The folder.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// The file system refused.
    #[error("{path}: {cause}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the system said (in the message, so not the error's `source()`).
        cause: std::io::Error,
    },
    /// No running job matches.
    #[error("no running job matches {0:?} (`fastio ps` lists them)")]
    NoMatch(String),
    /// No job runs.
    #[error("no job is running (under this user)")]
    NoJob,
    /// More than one running job matches.
    #[error("{query:?} matches {count} running jobs: give more of the job id")]
    Ambiguous {
        /// What was asked.
        query: String,
        /// How many match.
        count: usize,
    },
    /// Several jobs run and none was named.
    #[error("{0} jobs are running: name one by job id or pipeline (`fastio ps` lists them)")]
    Several(usize),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RecordError + '_ {
    move |cause| RecordError::Io {
        path: path.to_owned(),
        cause,
    }
}

/// The folder of job records, created (private) if missing.
pub fn records_dir() -> Result<PathBuf, RecordError> {
    let uid = rustix::process::geteuid().as_raw();
    let base = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("fastio"),
        None => std::env::temp_dir().join(format!("fastio-{uid}")),
    };
    let jobs = base.join("jobs");
    for dir in [&base, &jobs] {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(dir)(e)),
        }
        let meta = std::fs::symlink_metadata(dir).map_err(io(dir))?;
        if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
            return Err(RecordError::NotPrivate {
                path: dir.clone(),
                owner: meta.uid(),
                mode: meta.mode() & 0o7777,
            });
        }
    }
    Ok(jobs)
}

/// When process `pid` started (clock ticks after boot), if it exists.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, field 2, is in parentheses and may hold spaces: count after it.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    // Field 22 overall is the 20th after the command name.
    fields.get(19)?.parse().ok()
}

/// A published record; dropping it removes the record.
#[derive(Debug)]
pub struct RecordGuard {
    path: PathBuf,
}

impl RecordGuard {
    /// Where the record is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the record (e.g. once the operators' process ids are known).
    pub fn update(&self, record: &JobRecord) -> Result<(), RecordError> {
        write_atomically(&self.path, record)
    }
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn write_atomically(path: &Path, record: &JobRecord) -> Result<(), RecordError> {
    let temporary = path.with_extension("json.new");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .map_err(io(&temporary))?;
    let text = serde_json::to_vec_pretty(record).expect("a record serializes");
    file.write_all(&text).map_err(io(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io(path))
}

/// Publishes `record` for `fastio ps` and `fastio ls`; the record goes when the guard
/// is dropped.
pub fn publish(record: &JobRecord) -> Result<RecordGuard, RecordError> {
    let dir = records_dir()?;
    let path = dir.join(format!("{}.json", record.job_id));
    write_atomically(&path, record)?;
    Ok(RecordGuard { path })
}

/// Every running job of this user, oldest first. Records of jobs whose driver is gone
/// are removed.
pub fn list() -> Result<Vec<JobRecord>, RecordError> {
    let dir = records_dir()?;
    let mut jobs = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        // A record being replaced may be missing for an instant; a broken one is skipped.
        let Ok(text) = std::fs::read(&path) else {
            continue;
        };
        let Ok(record) = serde_json::from_slice::<JobRecord>(&text) else {
            continue;
        };
        if process_start(record.driver_pid) == Some(record.driver_start) {
            jobs.push(record);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
    jobs.sort_by(|a, b| (a.started, &a.job_id).cmp(&(b.started, &b.job_id)));
    Ok(jobs)
}

/// The running job that `query` names: a prefix of its id, or its pipeline's name; with
/// no query, the only running job.
pub fn find(query: Option<&str>) -> Result<JobRecord, RecordError> {
    let jobs = list()?;
    let matching: Vec<JobRecord> = match query {
        None => jobs,
        Some(q) => jobs
            .into_iter()
            .filter(|j| j.job_id.starts_with(q) || j.pipeline == q)
            .collect(),
    };
    match (matching.len(), query) {
        (1, _) => Ok(matching.into_iter().next().expect("one")),
        (0, None) => Err(RecordError::NoJob),
        (0, Some(q)) => Err(RecordError::NoMatch(q.to_owned())),
        (count, None) => Err(RecordError::Several(count)),
        (count, Some(q)) => Err(RecordError::Ambiguous {
            query: q.to_owned(),
            count,
        }),
    }
}
