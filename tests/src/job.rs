//! A pipeline job's folder for the tests that run jobs (with the library's driver or the
//! `fastio` command): its definition, the operators' log, its outputs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fastio::driver::{JobOptions, JobReport, OperatorState, run_job};
use fastio::pipeline::Pipeline;

/// A temporary folder holding one job. The test operator program (`fastio-test-op`) is
/// given by the test crate, which alone knows where Cargo built it.
pub struct JobDir {
    dir: tempfile::TempDir,
    test_op: PathBuf,
}

impl JobDir {
    /// A new, empty folder; `test_op` is `env!("CARGO_BIN_EXE_fastio-test-op")`.
    pub fn new(test_op: &str) -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary folder"),
            test_op: PathBuf::from(test_op),
        }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `name` in the folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The operators' log (the test operator appends a line per event to `$LOG`).
    pub fn log_path(&self) -> PathBuf {
        self.path("log")
    }

    /// The test operator program.
    pub fn test_op(&self) -> &Path {
        &self.test_op
    }

    /// The operators' log lines.
    pub fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Writes `yaml` as the job's definition, with `$LOG` (the log), `$DIR` (the folder)
    /// and `$OP` (the test operator program) filled in; returns its path.
    pub fn definition(&self, yaml: &str) -> PathBuf {
        let yaml = yaml
            .replace("$LOG", &self.log_path().display().to_string())
            .replace("$DIR", &self.root().display().to_string())
            .replace("$OP", &self.test_op.display().to_string());
        let path = self.path("pipeline.yaml");
        std::fs::write(&path, yaml).expect("the definition written");
        path
    }

    /// [`JobDir::definition`], parsed.
    pub fn pipeline(&self, yaml: &str) -> Pipeline {
        Pipeline::from_path(self.definition(yaml)).expect("a valid definition")
    }

    /// Options for a job of `pipeline`: outputs under `out`, a 500 ms grace period,
    /// programs named without a `/` found beside the test operator first.
    pub fn options(&self, pipeline: &Pipeline) -> JobOptions {
        let mut options = JobOptions::for_pipeline(pipeline);
        options.output_root = self.path("out");
        options.grace = Duration::from_millis(500);
        options.program_dirs = vec![
            self.test_op
                .parent()
                .expect("the program's folder")
                .to_owned(),
        ];
        options
    }

    /// The log's lines as (operator, the rest).
    pub fn events(&self) -> Vec<(String, String)> {
        self.log_lines()
            .iter()
            .filter_map(|l| {
                let (who, rest) = l.split_once(' ')?;
                Some((who.to_owned(), rest.to_owned()))
            })
            .collect()
    }

    /// When `operator` logged `what` (nanoseconds since the epoch); lines read
    /// `<operator> <what> <nanoseconds>`.
    pub fn at(&self, operator: &str, what: &str) -> Option<u128> {
        self.events().into_iter().find_map(|(who, rest)| {
            let (event, time) = rest.rsplit_once(' ')?;
            (who == operator && event == what).then(|| time.parse().ok())?
        })
    }

    /// Runs a job of `yaml` with [`JobDir::options`] to its end.
    pub fn run(&self, yaml: &str) -> JobReport {
        let pipeline = self.pipeline(yaml);
        run_job(&pipeline, &self.options(&pipeline), &mut |_| {}).expect("the job started")
    }
}

/// A new [`JobDir`] for the calling test crate's `fastio-test-op` program.
#[macro_export]
macro_rules! job_dir {
    () => {
        $crate::job::JobDir::new(env!("CARGO_BIN_EXE_fastio-test-op"))
    };
}

/// How `operator` ended in `report`.
pub fn outcome<'a>(report: &'a JobReport, operator: &str) -> &'a OperatorState {
    &report
        .operators
        .iter()
        .find(|o| o.name == operator)
        .unwrap_or_else(|| panic!("no operator {operator} in the report"))
        .outcome
}
