//! The driver cannot hang and cannot be stalled by what its operators do: late job events,
//! operators that ignore SIGTERM past the time limit, output that is not UTF-8, processes
//! that escape the job's process groups; and operators' output reaches the caller and the
//! log files. Each job runs on a thread with a bound, so a hang fails the test instead of
//! stalling the run.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fastio::driver::{JobOptions, JobReport, OperatorState, OutputSink, Stream, run_job};
use fastio::pipeline::Pipeline;
use fastio_tests::job::{JobDir, outcome};

/// Longer than any of these jobs takes when the driver is right.
const BOUND: Duration = Duration::from_secs(60);

/// Runs the job on a thread; fails the test if it does not end within [`BOUND`].
fn run_bounded(pipeline: Pipeline, options: JobOptions) -> JobReport {
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(run_job(&pipeline, &options, &mut |_| {}).unwrap());
    });
    result
        .recv_timeout(BOUND)
        .expect("the driver did not end the job within the bound: it hangs")
}

/// Values logged as `<operator> <key> <value> <time>`.
fn logged(job: &JobDir, key: &str) -> Vec<String> {
    job.events()
        .into_iter()
        .filter_map(|(_, rest)| {
            let mut words = rest.split(' ');
            (words.next()? == key).then(|| words.next().map(str::to_owned))?
        })
        .collect()
}

#[test]
fn a_job_event_after_an_operators_exit_does_not_revive_it() {
    // The wrapper exits after a second; the real operator it started joins the job later,
    // while `stubborn` (which ignores SIGTERM by then) keeps the job going through the
    // grace period. A shell wrapper looks like a plain program: `uses-driver: true` says
    // it stands for a driver operator, which must join before it exits.
    let job = fastio_tests::job_dir!();
    let pipeline = job.pipeline(
        "api-version: 0.5.0\nname: t\noperators:\n\
         - name: wrapped\n  command: [sh, -c, 'sleep 1; (sleep 0.5; exec \"$0\") & exit 0', $OP]\n  \
         uses-driver: true\n  \
         variables:\n    LOG: $LOG\n    EXECUTE: \"sleep:30\"\n\
         - name: stubborn\n  command: [sh, -c, 'trap \"\" TERM; exec \"$0\"', $OP]\n  \
         variables:\n    LOG: $LOG\n    EXECUTE: \"sleep:600\"\n",
    );
    let mut options = job.options(&pipeline);
    options.grace = Duration::from_secs(2);
    let report = run_bounded(pipeline, options);
    let OperatorState::Failed(why) = outcome(&report, "wrapped") else {
        panic!("{}", report.render());
    };
    assert!(why.contains("without joining"), "{why}");
    // The late operator did join (the event the driver had to ignore).
    fastio_tests::wait_until(
        Duration::from_secs(5),
        || Ok(logged(&job, "pid").len() == 2),
    )
    .unwrap();
}

#[test]
fn the_time_limit_holds_after_a_failure_even_with_a_long_grace_period() {
    // `broken` fails after half a second; `stubborn` ignores SIGTERM (an ignored signal
    // stays ignored across exec) and sleeps. The grace period is an hour: only the time
    // limit ends it.
    let job = fastio_tests::job_dir!();
    let pipeline = job.pipeline(
        "api-version: 0.5.0\nname: t\ntimeout: 2\noperators:\n\
         - name: broken\n  command: [sh, -c, 'sleep 0.5; exit 3']\n\
         - name: stubborn\n  command: [sh, -c, 'trap \"\" TERM; exec \"$0\"', $OP]\n  \
         variables:\n    LOG: $LOG\n    EXECUTE: \"sleep:600\"\n",
    );
    let mut options = job.options(&pipeline);
    options.grace = Duration::from_secs(3600);
    let report = run_bounded(pipeline, options);
    let (who, _) = report.failure.clone().unwrap();
    assert_eq!(who, "broken");
    let OperatorState::Cancelled(why) = outcome(&report, "stubborn") else {
        panic!("{}", report.render());
    };
    assert_eq!(why, "during execute");
    let stubborn = report
        .operators
        .iter()
        .find(|o| o.name == "stubborn")
        .unwrap();
    let exit = stubborn.exit.as_deref().unwrap_or_default();
    assert!(exit.contains("SIGKILL"), "{exit}");
    for pid in logged(&job, "pid") {
        assert!(
            !fastio_tests::alive(pid.parse().unwrap()),
            "operator {pid} outlived the job"
        );
    }
}

#[test]
fn output_that_is_not_utf8_is_read_through_and_kept() {
    let job = fastio_tests::job_dir!();
    let pipeline = job.pipeline(
        "api-version: 0.5.0\nname: t\noperators:\n\
         - name: noisy\n  command: [fastio-test-op]\n  variables:\n    EXECUTE: bytes\n",
    );
    let options = job.options(&pipeline);
    let log = options.output_root.join("logs").join("noisy.log");
    let report = run_bounded(pipeline, options);
    assert!(report.succeeded(), "{}", report.render());
    let bytes = std::fs::read(log).unwrap();
    assert!(
        bytes.starts_with(b"before \xff\xfe after\n"),
        "the log holds the bytes as written"
    );
    assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 2049);
}

#[test]
fn a_process_that_escapes_into_its_own_session_neither_stalls_nor_outlives_the_job() {
    let job = fastio_tests::job_dir!();
    let pipeline = job.pipeline(
        "api-version: 0.5.0\nname: t\noperators:\n\
         - name: daemonizer\n  command: [fastio-test-op]\n  \
         variables:\n    LOG: $LOG\n    EXECUTE: escape\n",
    );
    let options = job.options(&pipeline);
    let report = run_bounded(pipeline, options);
    assert!(report.succeeded(), "{}", report.render());
    let escaped: Vec<u32> = logged(&job, "escaped")
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(escaped.len(), 1);
    // It was in a session of its own: the process-group kill did not reach it.
    fastio_tests::wait_until(Duration::from_secs(5), || {
        Ok(!fastio_tests::alive(escaped[0]))
    })
    .unwrap();
}

#[test]
fn operator_output_reaches_the_caller_prefixed_and_the_log_file() {
    let job = fastio_tests::job_dir!();
    let pipeline = job.pipeline(
        "api-version: 0.5.0\nname: t\noperators:\n\
         - name: speaker\n  command: [fastio-test-op]\n  variables:\n    EXECUTE: \"print:hello\"\n",
    );
    let mut options = job.options(&pipeline);
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    options.on_output = Some(OutputSink::new(move |line| {
        sink.lock()
            .unwrap()
            .push((line.operator.to_owned(), line.stream, line.text.to_owned()));
    }));
    let log = options.output_root.join("logs").join("speaker.log");
    let report = run_bounded(pipeline, options);
    assert!(report.succeeded(), "{}", report.render());
    let lines = lines.lock().unwrap().clone();
    assert!(lines.contains(&("speaker".into(), Stream::Stdout, "hello on stdout".into())));
    assert!(lines.contains(&("speaker".into(), Stream::Stderr, "hello on stderr".into())));
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("hello on stdout\n"), "{text}");
    assert!(text.contains("hello on stderr\n"), "{text}");
}

#[test]
fn a_time_limit_beyond_the_maximum_is_refused_not_a_panic() {
    // A timeout of i64::MAX seconds used to overflow the deadline arithmetic.
    let job = fastio_tests::job_dir!();
    let pipeline = job.pipeline(
        "api-version: 0.5.0\nname: t\noperators:\n- name: a\n  command: [fastio-test-op]\n",
    );
    let mut options = job.options(&pipeline);
    options.timeout = Some(Duration::from_secs(i64::MAX as u64));
    let error = run_job(&pipeline, &options, &mut |_| {}).unwrap_err();
    assert!(
        error.to_string().contains("time limit must be between"),
        "{error}"
    );
}

/// Starts a process that leads its own process group with pid `pid` (through
/// `ns_last_pid`, so only as root), or None if other processes keep taking the pid first.
fn take_pid(pid: u32) -> Option<std::process::Child> {
    use std::os::unix::process::CommandExt;
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .unwrap();
        if child.id() == pid {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

#[test]
fn the_end_of_the_job_signals_no_process_group_that_took_an_exited_operators_pid() {
    // `early` exits at once; `late` keeps the job going until told. Whatever takes early's
    // pid meanwhile (here a process that leads a group of that number, as any shell job
    // does) is not the job's: the kill of early's process group at the end must miss it.
    let job = fastio_tests::job_dir!();
    let dir = job.root().display().to_string();
    let pipeline = job.pipeline(&format!(
        "api-version: 0.5.0\nname: t\noperators:\n\
         - name: early\n  command: [sh, -c, 'echo $$ > {dir}/early.pid']\n\
         - name: late\n  command: [sh, -c, 'i=0; while [ ! -e {dir}/go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done']\n"
    ));
    let options = job.options(&pipeline);
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(run_job(&pipeline, &options, &mut |_| {}).unwrap());
    });
    let pid_file = job.root().join("early.pid");
    let mut early = 0;
    fastio_tests::wait_until(Duration::from_secs(20), || {
        early = std::fs::read_to_string(&pid_file)
            .map(|s| s.trim().parse().unwrap_or(0))
            .unwrap_or(0);
        Ok(early != 0)
    })
    .unwrap();
    let exists = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    // Until the job ends the driver keeps the exited operator's pid (unreaped): nothing can
    // take it. A driver that gives it back lets it be taken.
    let freed = fastio_tests::wait_until(Duration::from_secs(3), || Ok(!exists(early))).is_ok();
    let victim = if freed {
        Some(take_pid(early).expect("could not take the freed pid"))
    } else {
        assert!(!fastio_tests::alive(early), "early's process still runs");
        None
    };
    std::fs::write(job.root().join("go"), "").unwrap();
    let report = result
        .recv_timeout(BOUND)
        .expect("the driver did not end the job within the bound: it hangs");
    assert!(report.succeeded(), "{}", report.render());
    if let Some(mut victim) = victim {
        let status = victim.try_wait().unwrap();
        let _ = victim.kill();
        let _ = victim.wait();
        assert_eq!(
            status, None,
            "the driver killed a process group that is not the job's"
        );
    }
    // The driver reaped it at the end.
    fastio_tests::wait_until(Duration::from_secs(5), || Ok(!exists(early))).unwrap();
}
