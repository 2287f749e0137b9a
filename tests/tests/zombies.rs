//! A long-lived caller of `run_job` (a library user running many jobs in one process) is
//! left no zombie and no change of its process: whatever a job's operators leave behind,
//! exited or killed, is reaped by the time `run_job` returns, after a success, a failure,
//! the time limit or a cancellation. Alone in its test binary, so that no other test's
//! processes are this process's children.

use std::time::Duration;

use fastio::driver::{JobOptions, run_job};
use fastio::pipeline::Pipeline;

/// The children of this process, over all its threads.
fn children() -> Vec<String> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in list.split_whitespace() {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            found.push(stat);
        }
    }
    found
}

fn job(dir: &std::path::Path, name: &str, script: &str) -> (Pipeline, JobOptions) {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "api-version: 0.5.0\nname: {name}\noperators:\n- name: a\n  command: [sh, -c, '{script}']\n"
        ),
    )
    .unwrap();
    let pipeline = Pipeline::from_path(&path).unwrap();
    let mut options = JobOptions::for_pipeline(&pipeline);
    options.output_root = dir.join("out").join(name);
    options.grace = Duration::from_millis(200);
    (pipeline, options)
}

#[test]
fn many_jobs_in_one_process_leave_no_zombie_and_no_subreaper_behind() {
    let dir = tempfile::tempdir().unwrap();
    // Each leaves processes behind: in its process group, orphaned at once (a double
    // fork), and in a session of its own.
    let leave = "sleep 60 & (sleep 60 &); setsid sleep 60 &";
    let cases: [(&str, String, Option<Duration>, bool); 4] = [
        ("success", format!("{leave} exit 0"), None, true),
        ("failure", format!("{leave} exit 3"), None, false),
        (
            "overrun",
            format!("{leave} sleep 60"),
            Some(Duration::from_millis(300)),
            false,
        ),
        ("cancelled", format!("{leave} sleep 60"), None, false),
    ];
    for round in 0..5 {
        for (name, script, timeout, succeeds) in &cases {
            let (pipeline, mut options) = job(dir.path(), &format!("{name}{round}"), script);
            options.timeout = *timeout;
            if *name == "cancelled" {
                options.cancel.cancel("the test");
            }
            let report = run_job(&pipeline, &options, &mut |_| {}).unwrap();
            assert_eq!(report.succeeded(), *succeeds, "{}", report.render());
            let left = children();
            assert!(
                left.is_empty(),
                "after job {name}{round}, this process still has children: {left:?}"
            );
        }
    }
    // Orphans of this process's own descendants are init's again, not its zombies.
    assert_eq!(rustix::process::child_subreaper().unwrap(), None);
}
