//! Looking into running jobs (`fastio ps`, `fastio ls`, `fastio top`): the jobs of this
//! user from their records ([`fastio_context::records`]), one job's operators, entries and
//! publications from its context ([`fastio_context::Context::inspect`]), and their text.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use fastio_context::listing::{Holder, Listing};
use fastio_context::records::{self, JobRecord, RecordError};
use fastio_context::{Context, ContextError};

use crate::report::human_bytes;

/// Why a job could not be looked into.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Its record could not be found or read.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Its context did not answer (the job may have just ended).
    #[error("job {job_id} did not answer (has it just ended?): {cause}")]
    Context {
        /// The job.
        job_id: String,
        /// What went wrong (in the message, so not the error's `source()`).
        cause: ContextError,
    },
}

/// The running jobs of this user, oldest first.
pub fn running_jobs() -> Result<Vec<JobRecord>, InspectError> {
    Ok(records::list()?)
}

/// The job `query` names (a prefix of its id, or its pipeline's name; with none, the only
/// running job) and its listing now.
pub fn inspect(query: Option<&str>) -> Result<(JobRecord, Listing), InspectError> {
    let record = records::find(query)?;
    let listing = Context::connect(&record.context)
        .and_then(|context| context.inspect())
        .map_err(|cause| InspectError::Context {
            job_id: record.job_id.clone(),
            cause,
        })?;
    Ok((record, listing))
}

/// `42 s`, `3 min 5 s`, `2 h 1 min`.
fn age(started: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let s = now.saturating_sub(started);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// `fastio ps`: one line per job.
pub fn render_jobs(jobs: &[JobRecord]) -> String {
    let mut out = String::new();
    let pipeline_width = jobs
        .iter()
        .map(|j| j.pipeline.len())
        .max()
        .unwrap_or(0)
        .max("PIPELINE".len());
    let _ = writeln!(
        out,
        "{:8}  {:pipeline_width$}  {:>8}  {:>9}  {:>9}  OUTPUT",
        "JOB", "PIPELINE", "PID", "RUNNING", "OPERATORS"
    );
    for job in jobs {
        let _ = writeln!(
            out,
            "{:8}  {:pipeline_width$}  {:>8}  {:>9}  {:>9}  {}",
            &job.job_id[..job.job_id.len().min(8)],
            job.pipeline,
            job.driver_pid,
            age(job.started),
            job.operators.len(),
            job.output_root
        );
    }
    out
}

fn holders(list: &[Holder]) -> String {
    if list.is_empty() {
        return String::new();
    }
    let names: Vec<String> = list
        .iter()
        .map(|h| {
            if h.handles == 1 {
                h.who.clone()
            } else {
                format!("{} ({})", h.who, h.handles)
            }
        })
        .collect();
    format!("held by {}", names.join(", "))
}

/// ` (huge pages 2.0 MiB)` when some of the memory is on huge pages.
fn huge_pages(bytes: u64) -> String {
    if bytes == 0 {
        String::new()
    } else {
        format!(" (huge pages {})", human_bytes(bytes))
    }
}

fn shape(dims: &[i64]) -> String {
    dims.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `fastio ls`: a job's operators, entries and publications with sizes and holders.
pub fn render_listing(record: &JobRecord, listing: &Listing) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "job {} of pipeline {} ({}), running {}, driver pid {}",
        record.job_id,
        record.pipeline,
        record.definition,
        age(record.started),
        record.driver_pid
    );
    let _ = writeln!(out, "output: {}", record.output_root);
    if let Some(job) = &listing.job {
        if let Some(why) = &job.aborted {
            let _ = writeln!(out, "stopping: {why}");
        }
        let width = job
            .operators
            .iter()
            .map(|o| o.name.len())
            .max()
            .unwrap_or(0);
        let _ = writeln!(out, "operators:");
        for op in &job.operators {
            let pid = record
                .operators
                .iter()
                .find(|o| o.name == op.name)
                .and_then(|o| o.pid)
                .map_or_else(|| "-".to_owned(), |p| p.to_string());
            let _ = writeln!(
                out,
                "  {:width$}  pid {pid:>7}  {:18}  {} handle{}",
                op.name,
                op.state,
                op.handles,
                if op.handles == 1 { "" } else { "s" }
            );
        }
    }
    if !listing.entries.is_empty() {
        let _ = writeln!(out, "entries:");
        let names: Vec<String> = listing
            .entries
            .iter()
            .map(|e| match &e.producer {
                Some(p) => format!("{p}.{}", e.name),
                None => e.name.clone(),
            })
            .collect();
        let width = names.iter().map(String::len).max().unwrap_or(0);
        for (e, name) in listing.entries.iter().zip(&names) {
            let declared = format!("{}[{}]", e.element_type.name(), shape(&e.declared));
            let (now, bytes) = match (&e.dims, e.bytes) {
                (Some(dims), Some(bytes)) => {
                    let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
                    (format!("[{}]", shape(&dims)), human_bytes(bytes as u64))
                }
                _ => (String::new(), "not allocated".to_owned()),
            };
            let readers = if e.readers.is_empty() {
                String::new()
            } else {
                format!("to {}", e.readers.join(", "))
            };
            let _ = writeln!(
                out,
                "  {name:width$}  {declared:24} {now:16} {bytes:>13}{}  {readers:16}  {}",
                huge_pages(e.huge_page_bytes),
                holders(&e.holders)
            );
        }
    }
    if !listing.publications.is_empty() {
        let _ = writeln!(out, "publications:");
        let width = listing
            .publications
            .iter()
            .map(|p| p.name.len())
            .max()
            .unwrap_or(0);
        for p in &listing.publications {
            let typed = match (&p.element_type, &p.dims) {
                (Some(t), Some(dims)) => {
                    let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
                    format!("{}[{}]", t.name(), shape(&dims))
                }
                _ => "untyped".to_owned(),
            };
            // Where it lives, when not in host memory.
            let typed = if p.kind.is_host() {
                typed
            } else {
                format!("{typed} on {}", p.kind)
            };
            let _ = writeln!(
                out,
                "  {:width$}  {typed:24} {:>13}{}  {}",
                p.name,
                human_bytes(p.bytes as u64),
                huge_pages(p.huge_page_bytes),
                holders(&p.holders)
            );
        }
    }
    if !listing.unpublished.is_empty() {
        let _ = writeln!(out, "unpublished allocations:");
        for r in &listing.unpublished {
            let _ = writeln!(
                out,
                "  {:>13}  {}",
                human_bytes(r.bytes as u64),
                holders(&r.holders)
            );
        }
    }
    let stats = &listing.stats;
    let _ = writeln!(
        out,
        "memory: {} segment{}, {} in use; warm pool {} in {} segment{}; huge pages {}",
        stats.resources,
        if stats.resources == 1 { "" } else { "s" },
        human_bytes(stats.live_bytes),
        human_bytes(stats.pooled_bytes),
        stats.pooled_segments,
        if stats.pooled_segments == 1 { "" } else { "s" },
        human_bytes(stats.huge_page_bytes),
    );
    if stats.device_live_bytes > 0 || stats.device_pooled > 0 {
        let _ = writeln!(
            out,
            "device memory: {} in use; warm pool {} in {} allocation{}",
            human_bytes(stats.device_live_bytes),
            human_bytes(stats.device_pooled_bytes),
            stats.device_pooled,
            if stats.device_pooled == 1 { "" } else { "s" },
        );
    }
    out
}
