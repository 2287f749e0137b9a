//! One operator run alone (`fastio run-op`): the job plan of that operator only, its
//! shared-memory inputs filled from `.npy` files, its stream inputs pointed at folders.

use std::path::PathBuf;

use fastio_job::{EntryId, EntryPlan, JobPlan};

use crate::DriverError;

/// Data for an entry, filled before the operator starts: entry, dims, bytes.
pub(crate) type Filled = (EntryId, Vec<usize>, Vec<u8>);

/// The plan of stage `index` of `plan` alone: its inputs have no producer (and it waits
/// for none), its outputs are produced by it; `inputs` give each shared-memory input's
/// `.npy` file and, optionally, a stream input's folder.
pub(crate) fn plan(
    mut plan: JobPlan,
    index: usize,
    inputs: &[(String, PathBuf)],
) -> Result<(JobPlan, Vec<Filled>), DriverError> {
    let mut stage = plan.stages.swap_remove(index);
    stage.upstream.clear();
    let error = |input: &str, reason: String| DriverError::Input {
        input: input.to_owned(),
        reason,
    };
    let known: Vec<String> = stage
        .inputs
        .iter()
        .map(|p| p.name.clone())
        .chain(
            stage
                .fastio_inputs
                .iter()
                .map(|id| plan.entries[id.0 as usize].name.clone()),
        )
        .collect();
    for (name, _) in inputs {
        if !known.contains(name) {
            return Err(error(
                name,
                format!(
                    "operator {} has no such input; its inputs: {}",
                    stage.name,
                    known.join(", ")
                ),
            ));
        }
    }
    let given = |name: &str| inputs.iter().find(|(n, _)| n == name).map(|(_, p)| p);

    for input in &mut stage.inputs {
        if let Some(folder) = given(&input.name) {
            if !folder.is_dir() {
                return Err(error(
                    &input.name,
                    format!("{} is not a folder", folder.display()),
                ));
            }
            let folder =
                std::path::absolute(folder).map_err(|e| error(&input.name, e.to_string()))?;
            input.path = folder.display().to_string();
        }
    }

    let mut entries: Vec<EntryPlan> = Vec::new();
    let mut filled = Vec::new();
    let mut renumber = |ids: &mut Vec<EntryId>, producer: Option<usize>| {
        for id in ids.iter_mut() {
            let mut entry = plan.entries[id.0 as usize].clone();
            entry.producer = producer;
            entries.push(entry);
            *id = EntryId(entries.len() as u32 - 1);
        }
    };
    renumber(&mut stage.fastio_inputs, None);
    renumber(&mut stage.fastio_outputs, Some(0));
    for id in &stage.fastio_inputs {
        let entry = &entries[id.0 as usize];
        let Some(file) = given(&entry.name) else {
            return Err(error(
                &entry.name,
                format!(
                    "a shared-memory input needs its data: --input {}=FILE.npy",
                    entry.name
                ),
            ));
        };
        let array = crate::npy::read(file).map_err(|e| error(&entry.name, e.to_string()))?;
        if array.element_type != entry.element_type {
            return Err(error(
                &entry.name,
                format!(
                    "{} holds {}, the input is declared {}",
                    file.display(),
                    array.element_type.name(),
                    entry.element_type.name()
                ),
            ));
        }
        let fits = array.dims.len() == entry.declared.len()
            && array
                .dims
                .iter()
                .zip(&entry.declared)
                .all(|(&d, &declared)| declared <= 0 || d as i64 == declared);
        if !fits {
            return Err(error(
                &entry.name,
                format!(
                    "{} has shape {:?}, the input is declared {:?} (-1 or 0: any positive size)",
                    file.display(),
                    array.dims,
                    entry.declared
                ),
            ));
        }
        filled.push((*id, array.dims, array.bytes));
    }
    let plan = JobPlan {
        job_id: plan.job_id,
        job_name: plan.job_name,
        stages: vec![stage],
        entries,
    };
    Ok((plan, filled))
}
