//! The warm reserve through the command, as real processes: `fastio run` starts a keeper
//! after a job big enough, the next job makes its entries of the keeper's blanks,
//! `FASTIO_KEEP_WARM=0` turns it all off, malformed settings are refused by name, and a
//! job host killed while it holds the lease leaves the keeper serving.
//!
//! Each test names its own keeper (`FASTIO_WARM_NAME`) and stops it at the end.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const FASTIO: &str = env!("CARGO_BIN_EXE_fastio");
const DEMO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/demo/pipeline.yaml"
);
const MIB: u64 = 1 << 20;

fn fastio(name: &str, keep: &str) -> Command {
    let mut command = Command::new(FASTIO);
    command
        .env("FASTIO_WARM_NAME", name)
        .env("FASTIO_KEEP_WARM", keep)
        .env_remove("FASTIO_LOG");
    command
}

fn run_demo(name: &str, keep: &str, out: &std::path::Path) -> Output {
    fastio(name, keep)
        .args(["run", "--quiet", DEMO, "--output"])
        .arg(out)
        .output()
        .unwrap()
}

fn succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `fastio keep-warm --status`: null when no keeper of that name runs.
fn status(name: &str) -> serde_json::Value {
    let out = fastio(name, "60")
        .args(["keep-warm", "--status"])
        .output()
        .unwrap();
    succeeded(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

fn bytes(status: &serde_json::Value, key: &str) -> u64 {
    status[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {status}"))
}

/// Polls `f` every 50 ms until it gives a value; fails after 60 s.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "waited 60 s for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the keeper holds every blank it plans (at least `at_least` bytes).
fn settled(name: &str, at_least: u64) -> serde_json::Value {
    wait_for("the keeper to hold its blanks", || {
        let s = status(name);
        (!s.is_null()
            && bytes(&s, "held_bytes") >= at_least
            && bytes(&s, "held_bytes") == bytes(&s, "target_bytes")
            && s["leased"] == false)
            .then_some(s)
    })
}

/// Stops the test's keeper however the test ends.
struct StopKeeper(String);

impl Drop for StopKeeper {
    fn drop(&mut self) {
        let _ = fastio(&self.0, "60").args(["keep-warm", "--stop"]).output();
    }
}

fn unique(tag: &str) -> String {
    format!("cli-{}-{tag}", std::process::id())
}

#[test]
fn a_job_starts_a_keeper_and_the_next_job_makes_its_entries_of_its_blanks() {
    let name = unique("run");
    let _stop = StopKeeper(name.clone());
    let dir = tempfile::tempdir().unwrap();
    assert!(status(&name).is_null());

    succeeded(&run_demo(&name, "60", dir.path()));
    // The demo makes a 128 MiB volume and a 64 MiB mask, among others.
    let first = settled(&name, 192 * MIB);
    assert_eq!(first["leases"], 0);
    assert_eq!(first["keep_seconds"], 60);
    // Detached: its standard streams are not the command's, so whoever reads `fastio
    // run`'s output sees its end when the job ends.
    let pid = first["pid"].as_u64().unwrap();
    for fd in 0..3 {
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(target, std::path::Path::new("/dev/null"), "fd {fd}");
    }
    // The OOM killer, which does not count its blanks, takes it first.
    let oom = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    assert_eq!(oom.trim(), "1000");

    // `fastio doctor` shows it.
    let doctor = fastio(&name, "60")
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    succeeded(&doctor);
    let doctor: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    assert_eq!(doctor["warm_keeper"]["pid"], first["pid"], "{doctor}");

    succeeded(&run_demo(&name, "60", dir.path()));
    let second = settled(&name, 192 * MIB);
    assert_eq!(second["leases"], 1);
    assert_eq!(
        second["pid"], first["pid"],
        "the same keeper served the second job"
    );
    assert!(
        bytes(&second, "used_bytes") >= 192 * MIB,
        "the second job made its entries of the blanks: {second}"
    );

    let stopped = fastio(&name, "60")
        .args(["keep-warm", "--stop"])
        .output()
        .unwrap();
    succeeded(&stopped);
    assert!(String::from_utf8_lossy(&stopped.stdout).contains("stopped"));
    assert!(status(&name).is_null());
    wait_for("the keeper's process to end", || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().to_owned());
        (stat.is_empty() || state.is_some_and(|s| s.starts_with('Z'))).then_some(())
    });
}

#[test]
fn keep_warm_0_turns_the_reserve_off() {
    let name = unique("off");
    let _stop = StopKeeper(name.clone());
    let dir = tempfile::tempdir().unwrap();
    succeeded(&run_demo(&name, "0", dir.path()));
    assert!(status(&name).is_null(), "no keeper was started");

    // A keeper that runs is not leased either.
    let mut keeper = fastio(&name, "60")
        .args(["keep-warm", "--hold", &(4 * MIB).to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    settled(&name, 4 * MIB);
    succeeded(&run_demo(&name, "0", dir.path()));
    assert_eq!(status(&name)["leases"], 0);
    drop(_stop);
    assert!(keeper.wait().unwrap().success());
}

#[test]
fn malformed_settings_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_demo(&unique("bad"), "soon", dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("FASTIO_KEEP_WARM=\"soon\"") && stderr.contains("seconds"),
        "{stderr}"
    );
    let out = run_demo("../x", "60", dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FASTIO_WARM_NAME"), "{stderr}");
}

#[test]
fn a_job_host_killed_while_it_holds_the_lease_leaves_the_keeper_serving() {
    let name = unique("kill");
    let _stop = StopKeeper(name.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut keeper = fastio(&name, "60")
        .args(["keep-warm", "--hold", &(8 * MIB).to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    settled(&name, 8 * MIB);

    // A job that takes a while: its host leases the keeper from its start.
    let slow = dir.path().join("slow.yaml");
    std::fs::write(
        &slow,
        "api-version: 0.5.0\nname: slow\noperators:\n- name: wait\n  command: [sleep, '5']\n",
    )
    .unwrap();
    let mut host = fastio(&name, "60")
        .args(["run", "--quiet"])
        .arg(&slow)
        .arg("--output")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the job host to lease the keeper", || {
        (status(&name)["leased"] == true).then_some(())
    });
    host.kill().unwrap();
    host.wait().unwrap();

    // The lease ends with the host; the keeper makes its blanks again and serves the next.
    let after = settled(&name, 8 * MIB);
    assert_eq!(after["leases"], 1);
    succeeded(&run_demo(&name, "60", dir.path()));
    assert_eq!(settled(&name, 8 * MIB)["leases"], 2);
    drop(_stop);
    assert!(keeper.wait().unwrap().success());
}

#[test]
fn the_keeper_holds_none_of_the_descriptors_and_not_the_folder_the_command_was_given() {
    let name = unique("fds");
    let _stop = StopKeeper(name.clone());
    let dir = tempfile::tempdir().unwrap();
    // `fastio run` given the write end of a pipe as an inheritable descriptor 3, as a
    // command run under `flock LOCK fastio run ...` is given the lock: whoever reads the
    // pipe waits until every process that holds it has closed it.
    let mut shell = Command::new("sh")
        .arg("-c")
        .arg(r#"exec "$0" run --quiet "$1" --output "$2" 3>&1 >/dev/null"#)
        .arg(FASTIO)
        .arg(DEMO)
        .arg(dir.path())
        .env("FASTIO_WARM_NAME", &name)
        .env("FASTIO_KEEP_WARM", "60")
        .env_remove("FASTIO_LOG")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = shell.stdout.take().unwrap();
    assert!(shell.wait().unwrap().success());
    let keeper = settled(&name, 192 * MIB);
    let pid = keeper["pid"].as_u64().unwrap();

    let mut fds = [rustix::event::PollFd::new(
        &pipe,
        rustix::event::PollFlags::IN,
    )];
    let now = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&now)).unwrap();
    let held: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect();
    assert!(
        fds[0].revents().contains(rustix::event::PollFlags::HUP),
        "the command has ended but the pipe's write end is still open; the keeper holds {held:?}"
    );
    // Nor does it keep the command's working directory busy (a file system to unmount).
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(cwd, std::path::Path::new("/"));
}
