//! Operators that join a job's context server they were not started by, laid out as the
//! containers of a Kubernetes Pod: each in its own mount and PID namespaces (`unshare`, as
//! root), all in the server's network namespace. They find the job in their environment,
//! prove they belong with the job's secret, and pass memory zero-copy; a process in another
//! network namespace, or with a wrong secret, is refused and disturbs nothing.

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use fastio::context::{JobSecret, ServerConfig};
use fastio::job::{Job, JobPlan, StagePlan};

const PROBE: &str = env!("CARGO_BIN_EXE_fastio-probe");
const SECRET: &str = "0123456789abcdef0123456789abcdef";
const SIZE: usize = 4 << 20;

fn job() -> Arc<Job> {
    let stage = |name| StagePlan::new(name, vec![], vec![], vec![]);
    let plan = JobPlan {
        job_id: "join-test".into(),
        job_name: "join".into(),
        stages: vec![stage("writer"), stage("reader")],
        entries: Vec::new(),
    };
    Arc::new(Job::new(plan, |_| {}))
}

/// A name no other test run uses.
fn socket_name() -> String {
    format!("fastio-join-test-{}", std::process::id())
}

/// `fastio-probe ARGS` as a "container": new mount and PID namespaces (and a new network
/// namespace with `other_network`), with the environment a rendered Pod gives.
fn container(
    socket: &str,
    stage: &str,
    secret: &str,
    other_network: bool,
    args: &[&str],
) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--pid", "--fork"]);
    if other_network {
        cmd.arg("--net");
    }
    cmd.arg(PROBE).args(args);
    cmd.env("FASTIO_JOB_SOCKET", socket)
        .env("FASTIO_JOB_SECRET", secret)
        .env("FASTIO_STAGE", stage)
        .env_remove("FASTIO_CONTEXT");
    cmd
}

fn stdout_line(out: &Output, key: &str) -> Option<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")).map(str::to_owned))
}

fn check(out: &Output) {
    assert!(
        out.status.success(),
        "probe failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn operators_in_their_own_namespaces_join_and_share_memory_zero_copy() {
    let name = socket_name();
    // The writer starts before the server is up, as a container may: it retries.
    let writer = container(
        &name,
        "writer",
        SECRET,
        false,
        &["attach-publish", "volume", &SIZE.to_string(), "7"],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let _server = fastio::job::host_at(
        ServerConfig::default(),
        job(),
        &name,
        JobSecret(SECRET.into()),
    )
    .unwrap();
    let writer = writer.wait_with_output().unwrap();
    check(&writer);
    assert_eq!(stdout_line(&writer, "stage").as_deref(), Some("writer"));

    // A wrong secret is refused, clearly, and changes nothing for the others.
    let intruder = container(
        &name,
        "reader",
        "not-the-secret-of-this-job!!",
        false,
        &["attach-read", "volume", "5"],
    )
    .output()
    .unwrap();
    assert!(!intruder.status.success());
    let err = String::from_utf8_lossy(&intruder.stderr);
    assert!(err.contains("wrong job secret"), "{err}");

    // Another network namespace (another Pod, or the host for a Pod without hostNetwork)
    // cannot reach the socket at all; its bounded wait ends with a clear error.
    let outsider = container(
        &name,
        "reader",
        SECRET,
        true,
        &["attach-read", "volume", "0.5"],
    )
    .output()
    .unwrap();
    assert!(!outsider.status.success());
    let err = String::from_utf8_lossy(&outsider.stderr);
    assert!(err.contains("no context server listens there"), "{err}");

    // The right secret from another uid is refused too: the server checks every peer's
    // credentials (SO_PEERCRED) before it reads a word.
    let stranger = Command::new("unshare")
        .args([
            "--mount",
            "--pid",
            "--fork",
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg(PROBE)
        .args(["attach-read", "volume", "5"])
        .env("FASTIO_JOB_SOCKET", &name)
        .env("FASTIO_JOB_SECRET", SECRET)
        .env("FASTIO_STAGE", "reader")
        .output()
        .unwrap();
    assert!(!stranger.status.success());
    assert_eq!(stdout_line(&stranger, "stage"), None);
    // The server closes such a connection without a word (and logs why).
    let err = String::from_utf8_lossy(&stranger.stderr);
    assert!(err.contains("closed the connection"), "{err}");

    // The real reader joins as its stage (the intruder did not take it) and maps the very
    // memory object the writer filled: the same inode, every byte as written.
    let reader = container(
        &name,
        "reader",
        SECRET,
        false,
        &["attach-read", "volume", "5"],
    )
    .output()
    .unwrap();
    check(&reader);
    assert_eq!(stdout_line(&reader, "stage").as_deref(), Some("reader"));
    assert_eq!(stdout_line(&reader, "sum"), Some((7 * SIZE).to_string()));
    let inode = stdout_line(&writer, "inode").unwrap();
    assert_ne!(inode, "0");
    assert_eq!(stdout_line(&reader, "inode"), Some(inode));
}

#[test]
fn an_unknown_stage_is_refused_and_a_short_secret_is_not_accepted() {
    let name = format!("{}-b", socket_name());
    assert!(
        fastio::job::host_at(
            ServerConfig::default(),
            job(),
            &name,
            JobSecret("short".into())
        )
        .is_err()
    );
    let _server = fastio::job::host_at(
        ServerConfig::default(),
        job(),
        &name,
        JobSecret(SECRET.into()),
    )
    .unwrap();
    let out = container(
        &name,
        "nobody",
        SECRET,
        false,
        &["attach-read", "volume", "5"],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the job has no operator named \"nobody\""),
        "{err}"
    );
}

#[test]
fn a_joined_jobs_server_admits_only_operators_and_each_stage_once() {
    let name = format!("{}-c", socket_name());
    let _server = fastio::job::host_at(
        ServerConfig::default(),
        job(),
        &name,
        JobSecret(SECRET.into()),
    )
    .unwrap();
    let address = format!("@{name}");
    // A plain client (no secret) would reach the job's publications: refused.
    let err = fastio::context::Context::connect(&address).unwrap_err();
    assert!(
        err.to_string().contains("admits only its operators"),
        "{err}"
    );
    // The writer's stage is taken once: a second claim, while the first holds it, is refused.
    let wait = Duration::from_secs(5);
    let writer = fastio::context::Context::attach(&address, "writer", SECRET, wait).unwrap();
    let err = fastio::context::Context::attach(&address, "writer", SECRET, wait).unwrap_err();
    assert!(err.to_string().contains("has already joined"), "{err}");
    // ... and after it, too (a restarted container cannot replay the operator's part).
    drop(writer);
    let err = fastio::context::Context::attach(&address, "writer", SECRET, wait).unwrap_err();
    assert!(err.to_string().contains("has already joined"), "{err}");
    // The other stage is still free.
    fastio::context::Context::attach(&address, "reader", SECRET, wait).unwrap();
}
