//! What a job did: each operator's outcome and times, each entry's bytes and medium.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fastio_context::MemoryKind;
use fastio_job::{EntryId, JobPlan, JobServer, ReclaimedHandle};
use fastio_pipeline::plan::DiskLayout;
use fastio_pipeline::{EntryKind, Pipeline};

use crate::{Operator, OperatorState};

/// How an entry travelled between operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Medium {
    /// Shared memory (a FastIO entry): one copy, mapped by every reader.
    SharedMemory,
    /// Files in a directory (a `stream` entry).
    Disk,
    /// Memory of a CUDA device (an array output declared `device: cuda:N`): one allocation,
    /// mapped by every reader on the GPU.
    Device(i32),
}

impl std::fmt::Display for Medium {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Medium::SharedMemory => f.write_str("shared memory"),
            Medium::Disk => f.write_str("disk"),
            Medium::Device(device) => write!(f, "cuda:{device} memory"),
        }
    }
}

/// One output of the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryReport {
    /// The operator that wrote it.
    pub producer: String,
    /// Its name.
    pub name: String,
    /// Its declared type, e.g. `int16[256,512,512]`, `string`, `u64`, `stream`.
    pub declared: String,
    /// The operators that read it.
    pub readers: Vec<String>,
    /// Bytes at the end of the job (none for an entry never allocated).
    pub bytes: Option<u64>,
    /// How it travelled.
    pub medium: Medium,
}

/// A file or folder the job left on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    /// Where it is, absolute.
    pub path: PathBuf,
    /// What it is.
    pub kind: ArtifactKind,
    /// Bytes (of every file under it, for a folder).
    pub bytes: u64,
    /// Files (under it, for a folder; 1 for a file).
    pub files: u64,
}

/// What a left file or folder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactKind {
    /// The folder of an operator's `stream` output.
    StreamOutput {
        /// The operator.
        operator: String,
        /// The output's name.
        entry: String,
    },
    /// A shared-memory output saved as `.npy` at the end of the job.
    Saved {
        /// The operator.
        operator: String,
        /// The output's name.
        entry: String,
    },
    /// Anything else in the job's output folder (logs, the payload folder).
    Other,
}

/// One operator's end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorReport {
    /// Its name.
    pub name: String,
    /// How it ended.
    pub outcome: OperatorState,
    /// From start to exit.
    pub elapsed: Duration,
    /// Time in execute, if it executed.
    pub execute: Option<Duration>,
    /// How the process ended (`exit status 0`, `killed by signal 9 (KILL)`).
    pub exit: Option<String>,
    /// The last lines of its stderr.
    pub stderr_tail: Vec<String>,
    /// References it still held when execute returned, reclaimed.
    pub reclaimed: Vec<ReclaimedHandle>,
}

/// The result of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobReport {
    /// The job's identifier.
    pub job_id: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// Wall time of the whole job.
    pub elapsed: Duration,
    /// The operator(s) that failed the job (comma-separated; empty when the job was
    /// stopped from outside, e.g. interrupted) and why, if it failed.
    pub failure: Option<(String, String)>,
    /// Each operator, in dependency order.
    pub operators: Vec<OperatorReport>,
    /// Each output.
    pub entries: Vec<EntryReport>,
    /// The job's output folder.
    pub output_root: PathBuf,
    /// Every file and folder the job left: stream outputs, saved arrays, the rest of its
    /// output folder.
    pub left: Vec<Artifact>,
    /// Shared-memory outputs that were to be saved and were not, with why.
    pub not_saved: Vec<(String, String)>,
}

impl JobReport {
    /// Every operator succeeded.
    pub fn succeeded(&self) -> bool {
        self.failure.is_none()
    }

    /// The summary `fastio run` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let name_width = self
            .operators
            .iter()
            .map(|o| o.name.len())
            .max()
            .unwrap_or(8);
        let _ = writeln!(out, "operators:");
        for op in &self.operators {
            let execute = op
                .execute
                .map(|d| format!(", execute {}", seconds(d)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:name_width$}  {:>8}{execute}  {}",
                op.name,
                seconds(op.elapsed),
                op.outcome,
            );
            for h in &op.reclaimed {
                let _ = writeln!(
                    out,
                    "  {:name_width$}  reference to {h} still held after execute: reclaimed",
                    ""
                );
            }
        }
        let _ = writeln!(out, "entries:");
        let entry_width = self
            .entries
            .iter()
            .map(|e| e.producer.len() + e.name.len() + 1)
            .max()
            .unwrap_or(8);
        for e in &self.entries {
            let bytes = e.bytes.map_or("not allocated".to_owned(), human_bytes);
            let readers = if e.readers.is_empty() {
                "job output".to_owned()
            } else {
                format!("to {}", e.readers.join(", "))
            };
            let _ = writeln!(
                out,
                "  {:entry_width$}  {:24} {:>13}  {:13}  {readers}",
                format!("{}.{}", e.producer, e.name),
                e.declared,
                bytes,
                e.medium.to_string(),
            );
        }
        if !self.left.is_empty() || !self.not_saved.is_empty() {
            let _ = writeln!(out, "results in {}:", self.output_root.display());
        }
        let shown: Vec<String> = self
            .left
            .iter()
            .map(|a| {
                let relative = a.path.strip_prefix(&self.output_root).unwrap_or(&a.path);
                let slash = if a.path.is_dir() { "/" } else { "" };
                format!("{}{slash}", relative.display())
            })
            .collect();
        let path_width = shown.iter().map(String::len).max().unwrap_or(0);
        for (a, path) in self.left.iter().zip(&shown) {
            let size = if a.path.is_dir() {
                let s = if a.files == 1 { "" } else { "s" };
                format!("{} file{s}, {}", a.files, human_bytes(a.bytes))
            } else {
                human_bytes(a.bytes)
            };
            let what = match &a.kind {
                ArtifactKind::StreamOutput { operator, entry } => {
                    format!("output {operator}.{entry}")
                }
                ArtifactKind::Saved { operator, entry } => {
                    format!("shared memory output {operator}.{entry}, saved")
                }
                ArtifactKind::Other => String::new(),
            };
            let _ = writeln!(out, "  {path:path_width$}  {size:>22}  {what}");
        }
        for (entry, why) in &self.not_saved {
            let _ = writeln!(out, "  not saved: {entry}: {why}");
        }
        match &self.failure {
            None => {
                let _ = writeln!(
                    out,
                    "job {} succeeded in {}",
                    self.job_id,
                    seconds(self.elapsed)
                );
            }
            Some((who, why)) => {
                let who = if who.is_empty() {
                    String::new()
                } else {
                    format!("{who}: ")
                };
                let _ = writeln!(
                    out,
                    "job {} FAILED after {}: {who}{why}",
                    self.job_id,
                    seconds(self.elapsed)
                );
                for op in self.operators.iter().filter(|o| {
                    matches!(o.outcome, OperatorState::Failed(_)) && !o.stderr_tail.is_empty()
                }) {
                    let _ = writeln!(out, "last lines of {}'s stderr:", op.name);
                    for line in &op.stderr_tail {
                        let _ = writeln!(out, "  | {line}");
                    }
                }
            }
        }
        out
    }
}

/// `1.234 s` or `12 ms`.
pub fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// `512 B`, `4.0 KiB`, `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn declared(kind: &EntryKind) -> String {
    match kind {
        EntryKind::Array {
            element_type,
            shape,
        } => {
            let dims: Vec<String> = shape.declared().iter().map(i64::to_string).collect();
            format!("{}[{}]", element_type.name(), dims.join(","))
        }
        other => other.type_name().to_owned(),
    }
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// The report of a job that ran the operators `stages` (indices into the definition's
/// operators, in stage order); failure and elapsed time are the caller's to fill in.
pub(crate) fn build(
    pipeline: &Pipeline,
    stages: &[usize],
    plan: &JobPlan,
    server: &JobServer,
    layout: &DiskLayout,
    operators: &[Operator],
) -> JobReport {
    let mut entries = Vec::new();
    for (index, op) in stages.iter().map(|&d| &pipeline.operators()[d]).enumerate() {
        for output in op.outputs() {
            let readers = pipeline
                .readers(op.name(), output.name())
                .into_iter()
                .map(|(r, _)| r.name().to_owned())
                .filter(|r| operators.iter().any(|o| &o.name == r))
                .collect();
            let (bytes, medium) = match output.kind() {
                EntryKind::Stream { .. } => (
                    Some(dir_bytes(&layout.output_dir(op.name(), output.name()))),
                    Medium::Disk,
                ),
                _ => {
                    let id = plan
                        .entries
                        .iter()
                        .position(|e| e.producer == Some(index) && e.name == output.name())
                        .map(|i| EntryId(i as u32));
                    (
                        id.and_then(|id| server.entry_bytes(id)).map(|b| b as u64),
                        match output.memory() {
                            MemoryKind::Host => Medium::SharedMemory,
                            MemoryKind::Cuda { device } => Medium::Device(device),
                        },
                    )
                }
            };
            entries.push(EntryReport {
                producer: op.name().to_owned(),
                name: output.name().to_owned(),
                declared: declared(output.kind()),
                readers,
                bytes,
                medium,
            });
        }
    }
    let operators = operators
        .iter()
        .map(|o| OperatorReport {
            name: o.name.clone(),
            outcome: o.state.clone(),
            elapsed: o.ended.unwrap_or_else(std::time::Instant::now) - o.started,
            execute: o.execute_started.zip(o.execute_ended).map(|(s, e)| e - s),
            exit: o.exit.clone(),
            stderr_tail: o
                .stderr
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect(),
            reclaimed: o.reclaimed.clone(),
        })
        .collect();
    JobReport {
        job_id: plan.job_id.clone(),
        pipeline: pipeline.name().to_owned(),
        elapsed: Duration::ZERO,
        failure: None,
        operators,
        entries,
        output_root: layout.output_root.clone(),
        left: Vec::new(),
        not_saved: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::Medium;

    #[test]
    fn the_summary_names_where_an_entry_lives() {
        assert_eq!(Medium::SharedMemory.to_string(), "shared memory");
        assert_eq!(Medium::Disk.to_string(), "disk");
        assert_eq!(Medium::Device(1).to_string(), "cuda:1 memory");
    }
}
