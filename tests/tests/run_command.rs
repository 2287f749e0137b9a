//! The `fastio run` command as a user runs it, a real process driving real operators
//! (`fastio-test-op`): interruption, saved results, introspection of a running job.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use fastio_tests::job::JobDir;

/// The workspace's `fastio` command. It belongs to another package, so Cargo does not
/// build it for these tests: build it here (incremental, so it is never stale), into the
/// target directory that holds this package's programs.
fn fastio() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_BIN_EXE_fastio-test-op"))
            .parent()
            .unwrap()
            .to_owned();
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "-p", "fastio", "--bin", "fastio"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().unwrap();
        assert!(status.success(), "building the fastio command failed");
        dir.join("fastio")
    })
}

/// `fastio run <definition> --output <job folder>/out ARGS`, output captured.
fn spawn(job: &JobDir, definition: &Path, args: &[&str]) -> Child {
    Command::new(fastio())
        .arg("run")
        .arg(definition)
        .arg("--output")
        .arg(job.path("out"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Whether a line of the operators' log starts with `line_start`.
fn logged(job: &JobDir, line_start: &str) -> bool {
    job.log_lines().iter().any(|l| l.starts_with(line_start))
}

/// The pids the operators logged (`<operator> pid <pid> ...`).
fn pids(job: &JobDir) -> Vec<u32> {
    job.log_lines()
        .iter()
        .filter_map(|l| l.split_once(" pid ")?.1.split(' ').next()?.parse().ok())
        .collect()
}

const HEADER: &str = "api-version: 0.5.0\nname: t\noperators:\n";

fn op(name: &str, vars: &[(&str, &str)], body: &str) -> String {
    let mut text =
        format!("- name: {name}\n  command: [fastio-test-op]\n  variables:\n    LOG: $LOG\n");
    for (k, v) in vars {
        text.push_str(&format!("    {k}: \"{v}\"\n"));
    }
    text.push_str(body);
    text
}

const STREAM_OUT: &str = "  output:\n  - name: done\n    type: stream\n    path: /done\n";
const STREAM_IN: &str =
    "  input:\n  - name: done\n    from: long\n    type: stream\n    path: /in\n";

/// Waits for a child to exit (bounded).
fn wait(child: &mut Child) -> std::process::ExitStatus {
    let mut status = None;
    fastio_tests::wait_until(Duration::from_secs(30), || {
        status = child.try_wait()?;
        Ok(status.is_some())
    })
    .unwrap();
    status.unwrap()
}

fn output(child: Child) -> (String, String) {
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ctrl_c_cancels_the_job_prints_the_summary_and_leaves_no_process() {
    let job = fastio_tests::job_dir!();
    let definition = job.definition(&format!(
        "{HEADER}{}{}{}",
        op("quick", &[], ""),
        op("long", &[("EXECUTE", "sleep:60")], STREAM_OUT),
        op("waiting", &[], STREAM_IN),
    ));
    let mut run = spawn(&job, &definition, &[]);
    fastio_tests::wait_until(Duration::from_secs(30), || {
        Ok(logged(&job, "long execute begin")
            && logged(&job, "waiting prepare end")
            && logged(&job, "quick cleanup end"))
    })
    .unwrap();
    let pid = rustix::process::Pid::from_raw(run.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = wait(&mut run);
    let (stdout, stderr) = output(run);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.code(), Some(130), "{status:?}\n{stdout}\n{stderr}");
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no line for {name} in:\n{stdout}"))
            .to_owned()
    };
    assert!(line("quick").ends_with("finished"), "{stdout}");
    assert!(
        line("long").ends_with("cancelled during execute"),
        "{stdout}"
    );
    assert!(
        line("waiting").ends_with("cancelled while waiting for inputs"),
        "{stdout}"
    );
    assert!(stdout.contains("FAILED after"), "{stdout}");
    assert!(stdout.contains("interrupted by SIGINT"), "{stdout}");
    assert!(status.signal().is_none(), "the command handled the signal");
    let pids = pids(&job);
    assert_eq!(pids.len(), 3, "{pids:?}");
    for pid in pids {
        fastio_tests::wait_until(Duration::from_secs(5), || Ok(!fastio_tests::alive(pid))).unwrap();
    }
    assert!(!logged(&job, "waiting execute begin"));
}

#[test]
fn operators_start_in_the_definition_folder_with_variables_set_on_the_command_line() {
    let job = fastio_tests::job_dir!();
    let definition = job.definition(&format!(
        "{HEADER}- name: show\n  command: [fastio-test-op, \"${{PIPELINE_DIR}}/scan.npy\", \"--mode=${{MODE}}\"]\n  \
         variables:\n    LOG: $LOG\n    SHOW_CWD: 1\n    MODE: slow\n{STREAM_OUT}"
    ));
    let elsewhere = tempfile::tempdir().unwrap();
    let run = Command::new(fastio())
        .arg("run")
        .arg(&definition)
        .args(["--output", "results", "--set", "MODE=quick"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let folder = std::fs::canonicalize(job.root()).unwrap();
    let log = std::fs::read_to_string(job.log_path()).unwrap();
    let shown = log
        .lines()
        .find_map(|l| l.strip_prefix("show cwd "))
        .unwrap();
    let (cwd, args) = shown.split_once(" args ").unwrap();
    assert_eq!(std::fs::canonicalize(cwd).unwrap(), folder);
    let args = args.rsplit_once(' ').unwrap().0; // the log's timestamp
    assert_eq!(
        args,
        format!("{}/scan.npy --mode=quick", job.root().display())
    );
    // A relative --output is the caller's, not the definition's.
    assert!(elsewhere.path().join("results/t/latest/show/done").is_dir());

    let misspelt = Command::new(fastio())
        .arg("run")
        .arg(&definition)
        .args(["--set", "MOOD=quick"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(!misspelt.status.success());
    let err = String::from_utf8_lossy(&misspelt.stderr);
    assert!(
        err.contains("no operator declares variable \"MOOD\""),
        "{err}"
    );
}

const TYPED_OUT: &str = "  output:\n  - name: grid\n    type: array\n    element-type: float32\n    shape: [3, 4]\n  \
     - name: cube\n    type: array\n    element-type: int16\n    shape: [2, -1]\n  \
     - name: uid\n    type: string\n  - name: spacing\n    type: f16\n  - name: done\n    type: stream\n    path: /done\n";

/// What `fastio-test-op`'s `produce` writes into an entry of `count` elements.
fn produced(count: usize, element_type: fastio::ElementType) -> Vec<u8> {
    let values: Vec<f64> = (0..count).map(|i| (i % 100 + 1) as f64).collect();
    fastio::meta::convert(
        fastio::ElementType::F64,
        fastio::meta::as_bytes(&values),
        element_type,
    )
    .unwrap()
}

#[test]
fn save_writes_each_shared_memory_output_as_npy_holding_what_was_written() {
    let job = fastio_tests::job_dir!();
    let definition = job.definition(&format!(
        "{HEADER}{}",
        op(
            "produce",
            &[("EXECUTE", "produce"), ("SHAPE", "9,5")],
            TYPED_OUT
        )
    ));
    let saved = job.root().join("saved");
    let run = spawn(&job, &definition, &["--save", saved.to_str().unwrap()]);
    let (stdout, stderr) = output(run);
    assert!(stdout.contains("succeeded"), "{stdout}{stderr}");
    use fastio::ElementType::{F16, F32, I16, U8};
    for (name, element_type, dims) in [
        ("grid", F32, vec![3, 4]),
        ("cube", I16, vec![2, 5]),
        ("uid", U8, vec![9]),
        ("spacing", F16, vec![1]),
    ] {
        let path = saved.join("produce").join(format!("{name}.npy"));
        let array = fastio::driver::npy::read(&path).unwrap();
        assert_eq!(array.element_type, element_type, "{name}");
        assert_eq!(array.dims, dims, "{name}");
        let count = dims.iter().product();
        assert_eq!(array.bytes, produced(count, element_type), "{name}");
        assert!(
            stdout.contains(&format!("{}", path.display())),
            "the summary names {}:\n{stdout}",
            path.display()
        );
    }
    assert!(stdout.contains("produce/done/"), "{stdout}");

    // A second run never overwrites what the first saved.
    let before = std::fs::read(saved.join("produce/grid.npy")).unwrap();
    let run = spawn(&job, &definition, &["--save", saved.to_str().unwrap()]);
    let (stdout, _) = output(run);
    assert!(
        stdout.contains("not saved: produce.grid:") && stdout.contains("exists"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(saved.join("produce/grid.npy")).unwrap(),
        before
    );
}

#[test]
fn each_run_keeps_its_results_in_a_folder_of_its_own() {
    let job = fastio_tests::job_dir!();
    let definition = job.definition(&format!(
        "{HEADER}{}",
        op("writer", &[("EXECUTE", "paths")], STREAM_OUT)
    ));
    let mut folders = Vec::new();
    for _ in 0..2 {
        let run = spawn(&job, &definition, &[]);
        let (stdout, stderr) = output(run);
        let folder = stdout
            .lines()
            .find_map(|l| l.strip_prefix("results in "))
            .unwrap_or_else(|| panic!("{stdout}{stderr}"))
            .trim_end_matches(':')
            .to_owned();
        assert!(
            Path::new(&folder)
                .join("writer/done/greeting.txt")
                .is_file(),
            "{stdout}"
        );
        folders.push(folder);
    }
    assert_ne!(folders[0], folders[1]);
    assert!(
        Path::new(&folders[0])
            .join("writer/done/greeting.txt")
            .is_file(),
        "the second run left the first one's results alone"
    );
    let latest = job.root().join("out/t/latest");
    assert_eq!(
        std::fs::canonicalize(latest).unwrap(),
        std::fs::canonicalize(&folders[1]).unwrap()
    );
}

/// The id of the running job whose definition is `definition`, from `fastio ps --json`.
fn job_id_of(definition: &Path) -> String {
    let mut id = None;
    fastio_tests::wait_until(Duration::from_secs(30), || {
        let out = Command::new(fastio()).args(["ps", "--json"]).output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let jobs: Vec<fastio::context::records::JobRecord> = serde_json::from_slice(&out.stdout)?;
        id = jobs
            .into_iter()
            .find(|j| Path::new(&j.definition) == definition)
            .map(|j| j.job_id);
        Ok(id.is_some())
    })
    .unwrap();
    id.unwrap()
}

#[test]
fn ls_on_a_running_job_lists_its_operators_entries_publications_and_holders() {
    let job = fastio_tests::job_dir!();
    let reads = "  input:\n  - name: grid\n    from: produce\n    type: array\n    element-type: float32\n    shape: [3, 4]\n  \
         - name: cube\n    from: produce\n    type: array\n    element-type: int16\n    shape: [2, -1]\n";
    let definition = job.definition(&format!(
        "api-version: 0.5.0\nname: listed\noperators:\n{}{}{}",
        op(
            "produce",
            &[("EXECUTE", "produce"), ("SHAPE", "9,5")],
            &TYPED_OUT.replace("  - name: done\n    type: stream\n    path: /done\n", "")
        ),
        op("keeper", &[("EXECUTE", "hold-published:kept")], ""),
        op("slow", &[("EXECUTE", "sleep:60")], reads),
    ));
    let mut run = spawn(&job, &definition, &[]);
    fastio_tests::wait_until(Duration::from_secs(30), || {
        Ok(logged(&job, "slow execute begin") && logged(&job, "keeper execute end"))
    })
    .unwrap();
    let id = job_id_of(&definition);

    let ls = Command::new(fastio()).args(["ls", &id]).output().unwrap();
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    let line = |start: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no line {start:?} in:\n{text}"))
            .to_owned()
    };
    assert!(line("slow ").contains("executing"), "{text}");
    assert!(
        line("produce ").contains("executed") || line("produce ").contains("done"),
        "{text}"
    );
    let grid = line("produce.grid");
    assert!(
        grid.contains("float32[3,4]") && grid.contains("48 B"),
        "{grid}"
    );
    assert!(
        grid.contains("to slow") && grid.contains("held by slow"),
        "{grid}"
    );
    let cube = line("produce.cube");
    assert!(
        cube.contains("int16[2,-1]") && cube.contains("[2,5]") && cube.contains("20 B"),
        "{cube}"
    );
    assert!(line("produce.uid").contains("9 B"), "{text}");
    assert!(line("kept").contains("4.0 KiB"), "{text}");
    assert!(line("memory:").contains("huge pages"), "{text}");

    // The same listing as data.
    let json = Command::new(fastio())
        .args(["ls", &id, "--json"])
        .output()
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let listing: fastio::context::listing::Listing =
        serde_json::from_value(value["listing"].clone()).unwrap();
    let cube = listing.entries.iter().find(|e| e.name == "cube").unwrap();
    assert_eq!(cube.dims, Some(vec![2, 5]));
    assert_eq!(cube.holders[0].who, "slow");
    assert_eq!(listing.publications[0].name, "kept");

    let pid = rustix::process::Pid::from_raw(run.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    wait(&mut run);
    // Once the job has ended it is no longer listed.
    let gone = Command::new(fastio()).args(["ls", &id]).output().unwrap();
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("no running job matches"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
}

#[test]
fn job_records_are_refused_in_a_folder_others_can_read() {
    let runtime = tempfile::tempdir().unwrap();
    let shared = runtime.path().join("fastio");
    std::fs::create_dir(&shared).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ps = Command::new(fastio())
        .arg("ps")
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .unwrap();
    assert!(!ps.status.success());
    let err = String::from_utf8_lossy(&ps.stderr);
    assert!(
        err.contains("is not a private folder of this user"),
        "{err}"
    );

    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o700)).unwrap();
    let ps = Command::new(fastio())
        .arg("ps")
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .unwrap();
    assert!(
        ps.status.success(),
        "{}",
        String::from_utf8_lossy(&ps.stderr)
    );
    let jobs = std::fs::metadata(shared.join("jobs")).unwrap();
    assert_eq!(jobs.permissions().mode() & 0o777, 0o700);
}

#[test]
fn a_long_phase_gets_heartbeat_lines_when_output_is_not_a_terminal() {
    let job = fastio_tests::job_dir!();
    let definition = job.definition(&format!(
        "{HEADER}{}",
        op("long", &[("EXECUTE", "sleep:2")], "")
    ));
    let run = spawn(&job, &definition, &["--heartbeat", "0.3"]);
    let (stdout, stderr) = output(run);
    assert!(stdout.contains("succeeded"), "{stdout}{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("long") && l.contains("still executing (for ")),
        "{stderr}"
    );
}

#[test]
fn run_op_runs_one_operator_alone_with_its_inputs_from_npy_files() {
    let job = fastio_tests::job_dir!();
    let typed = TYPED_OUT.replace("  - name: done\n    type: stream\n    path: /done\n", "");
    let reads = "  input:\n  - name: grid\n    from: produce\n    type: array\n    element-type: float32\n    shape: [3, 4]\n  \
         - name: cube\n    from: produce\n    type: array\n    element-type: int16\n    shape: [2, -1]\n  \
         - name: uid\n    from: produce\n    type: string\n  - name: spacing\n    from: produce\n    type: f16\n";
    let definition = job.definition(&format!(
        "{HEADER}{}{}",
        op(
            "produce",
            &[("EXECUTE", "produce"), ("SHAPE", "9,5")],
            &typed
        ),
        op(
            "check",
            &[
                ("EXECUTE", "check"),
                ("SHAPE_grid", "3,4"),
                ("SHAPE_cube", "2,5"),
                ("SHAPE_uid", "9"),
                ("SHAPE_spacing", "1"),
            ],
            reads
        ),
    ));
    // The producer's outputs, saved by a run of the whole pipeline...
    let saved = job.root().join("saved");
    let (stdout, stderr) = output(spawn(
        &job,
        &definition,
        &["--save", saved.to_str().unwrap()],
    ));
    assert!(stdout.contains("succeeded"), "{stdout}{stderr}");
    // ...are the inputs of the checker run alone: it fails unless each holds what
    // `produce` wrote, with its shape.
    let input = |name: &str| {
        format!(
            "{name}={}",
            saved.join(format!("produce/{name}.npy")).display()
        )
    };
    let run_op = |extra: &[String]| {
        let mut command = Command::new(fastio());
        command
            .arg("run-op")
            .arg(&definition)
            .arg("check")
            .arg("--output")
            .arg(job.root().join("out"));
        for arg in extra {
            command.args(["--input", arg]);
        }
        command.output().unwrap()
    };
    let all: Vec<String> = ["grid", "cube", "uid", "spacing"]
        .iter()
        .map(|n| input(n))
        .collect();
    let before = job.log_lines().len();
    let alone = run_op(&all);
    let text = String::from_utf8_lossy(&alone.stdout);
    assert!(
        alone.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&alone.stderr)
    );
    assert!(
        text.contains("check") && text.contains("finished"),
        "{text}"
    );
    let checked: Vec<String> = job.log_lines()[before..]
        .iter()
        .filter(|l| l.starts_with("check checked"))
        .map(|l| l.split(' ').nth(2).unwrap().to_owned())
        .collect();
    assert_eq!(checked, ["grid", "cube", "uid", "spacing"]);
    assert!(
        !job.log_lines()[before..]
            .iter()
            .any(|l| l.starts_with("produce ")),
        "the producer did not run"
    );

    // Every shared-memory input needs its file; a file of the wrong type is refused.
    let missing = run_op(&all[..3]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("input \"spacing\"") && err.contains("--input spacing=FILE.npy"),
        "{err}"
    );
    let mut wrong = all.clone();
    wrong[0] = format!("grid={}", saved.join("produce/cube.npy").display());
    let wrong = run_op(&wrong);
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        err.contains("holds int16, the input is declared float32"),
        "{err}"
    );
}

#[test]
fn a_process_that_escapes_with_an_empty_environment_and_is_orphaned_at_once_dies_with_the_job() {
    // A double fork: the subshell starts `setsid env -i ...` in the background and exits at
    // once, so the escaped process is in a session of its own, carries no job identifier
    // and has no ancestor in the job before the driver first looks (about a second in).
    // It writes its pid, then becomes `sleep 600`; the operator waits for the pid and exits.
    let job = fastio_tests::job_dir!();
    let pid_file = job.root().join("escaped.pid");
    let pf = pid_file.display();
    let definition = job.definition(&format!(
        "{HEADER}- name: daemonizer\n  command: [sh, -c, '(setsid env -i /bin/sh -c \"echo \\$\\$ > {pf}.tmp && /bin/mv {pf}.tmp {pf}; exec /bin/sleep 600\" </dev/null >/dev/null 2>&1 &); i=0; while [ ! -s {pf} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done']\n"
    ));
    let mut run = spawn(&job, &definition, &["--quiet"]);
    let status = wait(&mut run);
    let (out, err) = output(run);
    assert!(status.success(), "{out}\n{err}");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let sleeping = std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c == b"/bin/sleep\x00600\x00")
        && fastio_tests::alive(pid);
    if sleeping {
        // Not left behind by the test either.
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    assert!(!sleeping, "the escaped process {pid} outlived the job");
}
