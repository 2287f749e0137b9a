//! A job served for operators that join it (`serve_job`, what `fastio k8s serve` runs in
//! a Pod): real operator processes (`fastio-test-op`), each in its own mount and PID
//! namespaces (`unshare`, as root) like the containers of a Pod, all in the server's
//! network namespace, started by someone else than the driver. The life-cycle, failures
//! and the bounded wait for operators to join work as under `fastio run`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use fastio::driver::{
    DriverError, JobOptions, JobReport, JoinOptions, OperatorState, check_joinable, serve_job,
};
use fastio::pipeline::Pipeline;

const TEST_OP: &str = env!("CARGO_BIN_EXE_fastio-test-op");
const SECRET: &str = "fedcba9876543210fedcba9876543210";

/// A producer of a pre-allocated and a dynamic entry, and a reader that checks them.
const TWO_OPERATORS: &str = "\
api-version: 0.5.0
name: served
timeout: 60
operators:
- name: produce
  container: {image: example/produce}
  output:
  - {name: grid, type: array, element-type: float32, shape: [3, 224, 224]}
  - {name: list, type: array, element-type: int32, shape: [-1]}
- name: check
  container: {image: example/check}
  input:
  - {name: grid, from: produce, type: array, element-type: float32, shape: [3, 224, 224]}
  - {name: list, from: produce, type: array, element-type: int32, shape: [-1]}
";

struct Served {
    dir: tempfile::TempDir,
    socket: String,
}

impl Served {
    fn new(tag: &str) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            socket: format!("fastio-serve-test-{}-{tag}", std::process::id()),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// When `operator` logged `what` (nanoseconds since the epoch).
    fn at(&self, operator: &str, what: &str) -> Option<u128> {
        self.log().lines().find_map(|line| {
            let rest = line.strip_prefix(&format!("{operator} {what} "))?;
            rest.parse().ok()
        })
    }

    /// Operator `stage` as a Pod's container would start it: in its own mount and PID
    /// namespaces, with the join variables and `vars` in its environment.
    fn operator(&self, stage: &str, vars: &[(&str, &str)]) -> Child {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--pid", "--fork", TEST_OP])
            .env("FASTIO_JOB_SOCKET", &self.socket)
            .env("FASTIO_JOB_SECRET", SECRET)
            .env("FASTIO_STAGE", stage)
            .env("LOG", self.dir.path().join("log"))
            .env_remove("FASTIO_CONTEXT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    }

    fn pipeline(&self, yaml: &str) -> Pipeline {
        let path = self.dir.path().join("pipeline.yaml");
        std::fs::write(&path, yaml).unwrap();
        Pipeline::from_path(&path).unwrap()
    }

    /// Serves one job of `pipeline` on a thread (the test goes on starting operators).
    fn serve(
        &self,
        pipeline: Pipeline,
        join_wait: Duration,
    ) -> std::thread::JoinHandle<Result<JobReport, DriverError>> {
        let mut options = JobOptions::for_pipeline(&pipeline);
        options.output_root = self.dir.path().join("out");
        options.save = Some(self.dir.path().join("out/arrays"));
        options.grace = Duration::from_millis(500);
        let join = JoinOptions {
            socket: self.socket.clone(),
            secret: SECRET.into(),
            join_wait,
            payload: None,
        };
        std::thread::spawn(move || serve_job(&pipeline, &options, &join, &mut |_| {}))
    }
}

/// The workspace's `fastio` command (another package's: built here, incrementally).
fn fastio() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(TEST_OP).parent().unwrap().to_owned();
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "-p", "fastio", "--bin", "fastio"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.ends_with("release") {
            build.arg("--release");
        }
        assert!(build.status().unwrap().success(), "building fastio failed");
        dir.join("fastio")
    })
}

fn outcome<'a>(report: &'a JobReport, operator: &str) -> &'a OperatorState {
    &report
        .operators
        .iter()
        .find(|o| o.name == operator)
        .unwrap()
        .outcome
}

fn reap(mut children: Vec<Child>) {
    for child in &mut children {
        // Bounded: each operator ends with its job (or is killed by the server).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "an operator outlived its job"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn operators_that_join_from_their_own_namespaces_run_the_whole_life_cycle() {
    let served = Served::new("ok");
    let pipeline = served.pipeline(TWO_OPERATORS);
    // The reader starts before the server is up, as a container may: it retries.
    let check = served.operator(
        "check",
        &[
            ("EXECUTE", "check"),
            ("SHAPE_grid", "3,224,224"),
            ("SHAPE_list", "6"),
        ],
    );
    std::thread::sleep(Duration::from_millis(200));
    let job = served.serve(pipeline, Duration::from_secs(30));
    let produce = served.operator("produce", &[("EXECUTE", "produce"), ("SHAPE", "6")]);
    let report = job.join().unwrap().unwrap();
    reap(vec![check, produce]);

    assert!(report.succeeded(), "{}", report.render());
    for name in ["produce", "check"] {
        assert_eq!(outcome(&report, name), &OperatorState::Succeeded);
        let op = report.operators.iter().find(|o| o.name == name).unwrap();
        assert_eq!(
            op.exit.as_deref(),
            Some("left the job (its connection closed)")
        );
    }
    // The context held execute back across namespaces, and the reader saw the data.
    assert!(
        served.at("check", "execute begin").unwrap() > served.at("produce", "execute end").unwrap()
    );
    assert_eq!(
        served.log().matches("check checked").count(),
        2,
        "{}",
        served.log()
    );
    let bytes = |name: &str| {
        report
            .entries
            .iter()
            .find(|e| e.name == name)
            .unwrap()
            .bytes
    };
    assert_eq!(bytes("grid"), Some(3 * 224 * 224 * 4));
    assert_eq!(bytes("list"), Some(6 * 4));
    // Results are saved as `fastio run --save` saves them.
    let saved = served.dir.path().join("out/arrays/produce/grid.npy");
    assert!(saved.metadata().unwrap().len() > 3 * 224 * 224 * 4);
}

#[test]
fn a_failed_operator_fails_the_served_job_and_its_reader_never_executes() {
    let served = Served::new("fail");
    let pipeline = served.pipeline(TWO_OPERATORS);
    let job = served.serve(pipeline, Duration::from_secs(30));
    let check = served.operator("check", &[("EXECUTE", "check")]);
    // It fails once the reader has prepared and waits for it (not before the reader joins).
    let produce = served.operator(
        "produce",
        &[
            ("EXECUTE", "fail"),
            ("STDERR", "no scanner today"),
            ("WAIT_FOR", "check prepare end"),
        ],
    );
    let report = job.join().unwrap().unwrap();
    reap(vec![check, produce]);

    assert!(!report.succeeded());
    let (who, _) = report.failure.clone().unwrap();
    assert_eq!(who, "produce", "{}", report.render());
    let OperatorState::Failed(why) = outcome(&report, "produce") else {
        panic!("{}", report.render());
    };
    assert!(why.starts_with("execute failed"), "{why}");
    assert_eq!(
        outcome(&report, "check"),
        &OperatorState::Cancelled("while waiting for inputs".into()),
        "{}",
        report.render()
    );
    assert!(served.at("check", "execute begin").is_none());
}

#[test]
fn an_operator_that_never_joins_fails_the_served_job_within_the_join_wait() {
    let served = Served::new("late");
    let pipeline = served.pipeline(TWO_OPERATORS);
    let job = served.serve(pipeline, Duration::from_secs(1));
    let produce = served.operator("produce", &[("EXECUTE", "produce"), ("SHAPE", "6")]);
    let report = job.join().unwrap().unwrap();
    reap(vec![produce]);

    assert!(!report.succeeded());
    let (who, why) = report.failure.clone().unwrap();
    assert_eq!(who, "check");
    assert_eq!(why, "did not join the job within 1.00 s");
    let OperatorState::Failed(why) = outcome(&report, "check") else {
        panic!("{}", report.render());
    };
    assert!(why.contains("did not join the job"), "{why}");
}

#[test]
fn the_time_limit_stops_a_served_job_and_its_hung_operator_is_killed() {
    let served = Served::new("limit");
    let pipeline = served.pipeline(&TWO_OPERATORS.replace("timeout: 60", "timeout: 2"));
    let job = served.serve(pipeline, Duration::from_secs(30));
    let check = served.operator("check", &[("EXECUTE", "check")]);
    // It would execute for a minute; the server sees its process (a child PID namespace
    // is visible from its parent), so it can stop it.
    let produce = served.operator("produce", &[("EXECUTE", "sleep:60")]);
    let report = job.join().unwrap().unwrap();
    reap(vec![check, produce]);

    let (who, why) = report.failure.clone().unwrap();
    assert_eq!(who, "produce", "{}", report.render());
    assert_eq!(why, "overran the job's time limit of 2.00 s");
    let OperatorState::Failed(why) = outcome(&report, "produce") else {
        panic!("{}", report.render());
    };
    assert!(
        why.contains("still executing when the job's time limit"),
        "{why}"
    );
    assert_eq!(
        outcome(&report, "check"),
        &OperatorState::Cancelled("while waiting for inputs".into()),
        "{}",
        report.render()
    );
    assert!(served.at("produce", "execute end").is_none());
}

#[test]
fn a_plain_program_cannot_join_and_is_refused_before_anything_starts() {
    let served = Served::new("plain");
    let yaml = format!(
        "{TWO_OPERATORS}- name: lister\n  container: {{image: example/lister}}\n  \
         output:\n  - {{name: listing, type: stream, path: /listing}}\n"
    );
    let pipeline = served.pipeline(&yaml);
    let err = check_joinable(&pipeline).unwrap_err();
    assert!(matches!(&err, DriverError::CannotJoin { operators } if operators == &["lister"]));
    assert!(err.to_string().contains("uses-driver: true"), "{err}");
    let Err(err) = served
        .serve(pipeline, Duration::from_secs(1))
        .join()
        .unwrap()
    else {
        panic!("served a job with a plain program");
    };
    assert!(matches!(err, DriverError::CannotJoin { .. }));
    assert!(!Path::new(&served.dir.path().join("out")).exists());
}

#[test]
fn operators_whose_processes_the_server_cannot_see_still_join() {
    // `fastio k8s serve` in a PID namespace of its own, the operators outside it: as in a
    // Pod whose containers do not share a process namespace, the server reads their pid
    // as 0. They join all the same (and the job cannot signal them, which it says if it
    // has to).
    let served = Served::new("hidden");
    served.pipeline(TWO_OPERATORS);
    let mut server = Command::new("unshare");
    server
        .args(["--mount", "--pid", "--fork"])
        .arg(fastio())
        .args(["k8s", "serve"])
        .arg(served.dir.path().join("pipeline.yaml"))
        .arg("--output")
        .arg(served.dir.path().join("out"))
        .args(["--join-wait", "30"])
        .env("FASTIO_JOB_SOCKET", &served.socket)
        .env("FASTIO_JOB_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let server = server.spawn().unwrap();
    let run = |stage: &str, vars: &[(&str, &str)]| {
        let mut cmd = Command::new(TEST_OP);
        cmd.env("FASTIO_JOB_SOCKET", &served.socket)
            .env("FASTIO_JOB_SECRET", SECRET)
            .env("FASTIO_STAGE", stage)
            .env("LOG", served.dir.path().join("log"))
            .env_remove("FASTIO_CONTEXT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    };
    let produce = run("produce", &[("EXECUTE", "produce"), ("SHAPE", "6")]);
    let check = run(
        "check",
        &[
            ("EXECUTE", "check"),
            ("SHAPE_grid", "3,224,224"),
            ("SHAPE_list", "6"),
        ],
    );
    let (produce, check) = (
        produce.wait_with_output().unwrap(),
        check.wait_with_output().unwrap(),
    );
    let out = server.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{summary}\n{}\nproduce: {}\ncheck: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&produce.stderr),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(produce.status.success() && check.status.success());
    assert!(summary.contains("succeeded"), "{summary}");
    assert_eq!(
        std::fs::read_to_string(served.dir.path().join("out/report.txt")).unwrap(),
        summary
    );
    assert_eq!(served.log().matches("check checked").count(), 2);
}

#[test]
fn sigterm_cancels_a_served_job_whose_report_is_still_written() {
    // What the kubelet sends when the Pod is deleted or passes its Job's deadline.
    let served = Served::new("sigterm");
    served.pipeline(TWO_OPERATORS);
    let server = Command::new(fastio())
        .args(["k8s", "serve"])
        .arg(served.dir.path().join("pipeline.yaml"))
        .arg("--output")
        .arg(served.dir.path().join("out"))
        .env("FASTIO_JOB_SOCKET", &served.socket)
        .env("FASTIO_JOB_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let check = served.operator("check", &[("EXECUTE", "check")]);
    let produce = served.operator("produce", &[("EXECUTE", "sleep:60")]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while served.at("produce", "execute begin").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "produce never executed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = rustix::process::Pid::from_raw(server.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = server.wait_with_output().unwrap();
    reap(vec![check, produce]);

    assert_eq!(out.status.code(), Some(128 + 15));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("interrupted by SIGTERM"), "{summary}");
    assert!(
        summary.contains("produce") && summary.contains("cancelled during execute"),
        "{summary}"
    );
    assert_eq!(
        std::fs::read_to_string(served.dir.path().join("out/report.txt")).unwrap(),
        summary
    );
}
