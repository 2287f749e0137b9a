//! Looking into running jobs from Python, as `fastio ps` and `fastio ls` do: the job
//! records of this user and a job's listing, as plain dicts and lists (the same fields as
//! `fastio ps --json` and `fastio ls --json`).

use fastio_context::Context;
use fastio_context::records;
use pyo3::prelude::*;

use crate::error;

/// A serde value as Python data (dicts, lists, strings, numbers, None).
fn to_python<'py>(py: Python<'py>, value: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value).map_err(error)?;
    py.import("json")?.call_method1("loads", (text,))
}

/// The running jobs of this user, oldest first: a list of dicts (job_id, pipeline,
/// definition, driver_pid, started, output_root, context, operators), as `fastio ps`
/// lists them.
#[pyfunction]
pub(crate) fn jobs(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let jobs = py.detach(records::list).map_err(error)?;
    to_python(py, &jobs)
}

/// One running job as `fastio ls` shows it: a dict with "job" (its record) and
/// "listing" (its operators with their states, its entries and publications with
/// sizes and holders, the context's accounting). `job` is a prefix of the job's id or
/// its pipeline's name; without it, the only running job.
#[pyfunction]
#[pyo3(signature = (job=None))]
pub(crate) fn inspect(py: Python<'_>, job: Option<String>) -> PyResult<Bound<'_, PyAny>> {
    let (record, listing) = py
        .detach(|| {
            let record = records::find(job.as_deref()).map_err(|e| e.to_string())?;
            let listing = Context::connect(&record.context)
                .and_then(|c| c.inspect())
                .map_err(|e| format!("job {} did not answer: {e}", record.job_id))?;
            Ok::<_, String>((record, listing))
        })
        .map_err(error)?;
    to_python(
        py,
        &serde_json::json!({ "job": record, "listing": listing }),
    )
}
