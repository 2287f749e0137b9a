//! From a definition to a job plan: the operators as stages in dependency order, each
//! shared memory output as one FastIO entry read by the inputs that name it in `from`,
//! and a directory for every `stream` entry.

use std::path::{Path, PathBuf};

use fastio_job::{EntryId, EntryPlan, JobPlan, PathEntry, StagePlan};
use fastio_meta::ElementType;

use crate::{Entry, EntryKind, Pipeline};

/// Where a job's `stream` entries live on disk.
///
/// Clara mounts a volume at each declared `path` inside the operator's container; without
/// containers the driver gives each stream output its own directory,
/// `output_root/<operator>/<output>` ([`UNNAMED_OUTPUT_DIR`] for an operator's unnamed
/// output), and hands the same directory to the inputs that read it. Payload inputs (no
/// `from`) read `payload`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskLayout {
    /// Parent of every stream output directory.
    pub output_root: PathBuf,
    /// The job's payload directory.
    pub payload: PathBuf,
}

/// The directory name of an operator's unnamed stream output. It has a `.`, which no entry
/// name has, so it never meets the directory of a named output (an output may be called
/// `output`).
pub const UNNAMED_OUTPUT_DIR: &str = "unnamed.out";

impl DiskLayout {
    /// The directory of `operator`'s stream output `output` (`""` for its unnamed output).
    pub fn output_dir(&self, operator: &str, output: &str) -> PathBuf {
        let leaf = if output.is_empty() {
            UNNAMED_OUTPUT_DIR
        } else {
            output
        };
        self.output_root.join(operator).join(leaf)
    }
}

fn text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The plan of one job of `pipeline`.
pub fn job_plan(pipeline: &Pipeline, job_id: &str, layout: &DiskLayout) -> JobPlan {
    let operators = pipeline.operators();
    let mut entries = Vec::new();
    // (operator, output name) -> entry id
    let mut produced = Vec::new();
    for (index, op) in operators.iter().enumerate() {
        for output in op.outputs() {
            if let Some(plan) = entry_plan(output, Some(index)) {
                produced.push((
                    (index, output.name().to_owned()),
                    EntryId(entries.len() as u32),
                ));
                entries.push(plan);
            }
        }
    }
    let mut stages = Vec::new();
    for (index, op) in operators.iter().enumerate() {
        let mut stage = StagePlan {
            name: op.name().to_owned(),
            upstream: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            fastio_inputs: Vec::new(),
            fastio_outputs: Vec::new(),
        };
        for input in op.inputs() {
            let source = input.from().and_then(|from| pipeline.position(from));
            if let Some(u) = source.filter(|u| !stage.upstream.contains(u)) {
                stage.upstream.push(u);
            }
            match (input.kind(), source) {
                (EntryKind::Stream { .. }, Some(u)) => stage.inputs.push(PathEntry {
                    name: input.name().to_owned(),
                    path: text(&layout.output_dir(operators[u].name(), input.name())),
                }),
                (EntryKind::Stream { .. }, None) => stage.inputs.push(PathEntry {
                    name: input.name().to_owned(),
                    path: text(&layout.payload),
                }),
                (_, source) => {
                    let key = source.map(|u| (u, input.name().to_owned()));
                    let found = key.and_then(|k| produced.iter().find(|(p, _)| *p == k));
                    let id = match found {
                        Some((_, id)) => *id,
                        None => {
                            // Validation admits no shared memory input without a producer;
                            // should one appear, it reads memory nobody writes.
                            let plan = entry_plan(input, None)
                                .expect("a non-stream entry is shared memory");
                            entries.push(plan);
                            EntryId(entries.len() as u32 - 1)
                        }
                    };
                    stage.fastio_inputs.push(id);
                }
            }
        }
        for output in op.outputs() {
            if matches!(output.kind(), EntryKind::Stream { .. }) {
                stage.outputs.push(PathEntry {
                    name: output.name().to_owned(),
                    path: text(&layout.output_dir(op.name(), output.name())),
                });
            } else if let Some((_, id)) = produced
                .iter()
                .find(|(k, _)| *k == (index, output.name().to_owned()))
            {
                stage.fastio_outputs.push(*id);
            }
        }
        stages.push(stage);
    }
    JobPlan {
        job_id: job_id.to_owned(),
        job_name: pipeline.name().to_owned(),
        stages,
        entries,
    }
}

fn entry_plan(entry: &Entry, producer: Option<usize>) -> Option<EntryPlan> {
    let (element_type, declared) = match entry.kind() {
        EntryKind::Stream { .. } => return None,
        EntryKind::Array {
            element_type,
            shape,
        } => (*element_type, shape.declared().to_vec()),
        EntryKind::String => (ElementType::U8, vec![-1]),
        EntryKind::Primitive(t) => (*t, vec![1]),
    };
    Some(EntryPlan {
        name: entry.name().to_owned(),
        producer,
        element_type,
        declared,
        memory: entry.memory(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_become_entries_shared_by_their_readers() {
        let pipeline = Pipeline::from_path(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/demo/pipeline.yaml"
        ))
        .unwrap();
        let layout = DiskLayout {
            output_root: "/out".into(),
            payload: "/in".into(),
        };
        let plan = job_plan(&pipeline, "id", &layout);
        let names: Vec<_> = plan.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "volume",
                "mask",
                "foreground-slices",
                "summary",
                "voxel-count"
            ]
        );
        let summary = &plan.entries[3];
        assert_eq!(
            (summary.element_type, &summary.declared[..]),
            (ElementType::U8, &[-1][..])
        );
        assert_eq!(plan.entries[4].declared, [1]);
        let threshold = &plan.stages[1];
        assert_eq!(threshold.upstream, [0]);
        assert_eq!(threshold.fastio_inputs, [EntryId(0)]);
        assert_eq!(threshold.fastio_outputs, [EntryId(1), EntryId(2)]);
        assert_eq!(
            plan.access(2, EntryId(1)),
            Some(fastio_context::AccessMode::ReadOnly)
        );
        assert_eq!(plan.access(0, EntryId(1)), None);
        let report = &plan.stages[3].outputs[0];
        assert_eq!(report.path, "/out/write-report/report");
    }
}
