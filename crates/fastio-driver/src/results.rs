//! What a job leaves on disk: shared-memory outputs saved as `.npy` files at its end,
//! and the list of every file and folder it left, for the summary.

use std::path::{Path, PathBuf};

use fastio_context::Server;
use fastio_context::protocol::AccessMode;
use fastio_job::FastIoEntry;
use fastio_job::{EntryId, JobPlan};
use fastio_pipeline::plan::DiskLayout;

use crate::Operator;
use crate::report::{Artifact, ArtifactKind};

/// Saves every shared-memory output of the job under `dir` as
/// `<dir>/<operator>/<entry>.npy`. Returns what was saved, and each entry not saved with
/// why (its producer did not finish execute, it was never allocated, the file exists...).
pub(crate) fn save(
    plan: &JobPlan,
    server: &Server,
    operators: &[Operator],
    dir: &Path,
) -> (Vec<Artifact>, Vec<(String, String)>) {
    let mut saved = Vec::new();
    let mut skipped = Vec::new();
    for (index, entry) in plan.entries.iter().enumerate() {
        let Some(producer) = entry.producer else {
            continue;
        };
        let operator = &operators[producer];
        let label = format!("{}.{}", operator.name, entry.name);
        if operator.execute_ended.is_none() || operator.phase_failure.is_some() {
            skipped.push((
                label,
                "its operator did not finish execute, so its contents are incomplete".into(),
            ));
            continue;
        }
        let path = dir.join(&operator.name).join(format!("{}.npy", entry.name));
        match save_one(plan, server, producer, EntryId(index as u32), &path) {
            Ok(Some(bytes)) => saved.push(Artifact {
                path,
                kind: ArtifactKind::Saved {
                    operator: operator.name.clone(),
                    entry: entry.name.clone(),
                },
                bytes,
                files: 1,
            }),
            Ok(None) => skipped.push((label, "it was never allocated".into())),
            Err(why) => skipped.push((label, why)),
        }
    }
    (saved, skipped)
}

fn save_one(
    plan: &JobPlan,
    server: &Server,
    producer: usize,
    id: EntryId,
    path: &Path,
) -> Result<Option<u64>, String> {
    let mut info = plan
        .stage_info(producer)
        .fastio_outputs
        .into_iter()
        .find(|e| e.id == id)
        .ok_or("the entry is not its producer's output")?;
    // Every operator has ended: reading is all that is left to do.
    info.access = AccessMode::ReadOnly;
    let context = server.local_operator_context(producer);
    let entry = FastIoEntry::open(&context, info).map_err(|e| e.to_string())?;
    let Some(allocation) = entry.allocation() else {
        return Ok(None);
    };
    let dims: Vec<usize> = entry.shape().iter().map(|&d| d as usize).collect();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    crate::npy::write(path, allocation, entry.element_type(), &dims)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Every file and folder the job left under its output root, and the saved files
/// wherever they are: stream outputs with their file counts and bytes, saved arrays,
/// then whatever else is there (logs, the payload folder), one line each.
pub(crate) fn left_behind(
    plan: &JobPlan,
    layout: &DiskLayout,
    saved: Vec<Artifact>,
) -> Vec<Artifact> {
    let mut left = Vec::new();
    for stage in &plan.stages {
        for out in &stage.outputs {
            let path = PathBuf::from(&out.path);
            let (files, bytes) = tree_size(&path);
            left.push(Artifact {
                path,
                kind: ArtifactKind::StreamOutput {
                    operator: stage.name.clone(),
                    entry: out.name.clone(),
                },
                bytes,
                files,
            });
        }
    }
    left.extend(saved);
    // Whatever else is under the output root (logs, the payload folder, files operators
    // wrote elsewhere): each top-most item not listed above, with its size.
    let mut others = Vec::new();
    let mut queue = vec![layout.output_root.clone()];
    while let Some(dir) = queue.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if left.iter().any(|a| a.path == path) {
                continue;
            }
            if left.iter().any(|a| a.path.starts_with(&path)) {
                queue.push(path);
                continue;
            }
            let (files, bytes) = tree_size(&path);
            others.push(Artifact {
                path,
                kind: ArtifactKind::Other,
                bytes,
                files,
            });
        }
    }
    others.sort_by(|a, b| a.path.cmp(&b.path));
    left.extend(others);
    left
}

/// Files under `path` (1 for a file) and their bytes.
fn tree_size(path: &Path) -> (u64, u64) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return (0, 0);
    };
    if !meta.is_dir() {
        return (1, meta.len());
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return (0, 0);
    };
    entries.flatten().fold((0, 0), |(f, b), e| {
        let (ef, eb) = tree_size(&e.path());
        (f + ef, b + eb)
    })
}
