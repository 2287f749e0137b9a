//! The `fastio` command, run as a real process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const FASTIO: &str = env!("CARGO_BIN_EXE_fastio");

#[test]
fn serve_prints_an_address_that_clients_join() {
    let mut server = Command::new(FASTIO)
        .args(["serve", "--until-stdin-closes", "--pool-mib", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line.trim().strip_prefix("FASTIO_CONTEXT=").unwrap();
    let ctx = fastio::Context::connect(address).unwrap();
    ctx.publish_slice(&[1.5f64, 2.5], &[2], "pair").unwrap();
    assert_eq!(
        ctx.get("pair").unwrap().to_vec::<f64>().unwrap(),
        vec![1.5, 2.5]
    );

    let stats = Command::new(FASTIO)
        .arg("stats")
        .env(fastio::CONTEXT_ENV, address)
        .output()
        .unwrap();
    assert!(stats.status.success());
    let stats: fastio::Stats = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats.publications, 1);

    drop(server.stdin.take());
    assert!(server.wait().unwrap().success());
    assert!(
        ctx.stats().is_err(),
        "the server is gone once its stdin closes"
    );
}

#[test]
fn validate_accepts_the_demo_and_lists_every_problem_of_a_bad_definition() {
    let demo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/demo/pipeline.yaml"
    );
    let ok = Command::new(FASTIO)
        .args(["validate", demo])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "api-version: 0.5.0\nname: x\noperators:\n- name: a\n  command: [a]\n  output:\n  - name: v\n    type: array\n    path: /x\n",
    )
    .unwrap();
    let out = Command::new(FASTIO)
        .arg("validate")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "path must not be given",
        "element-type is required",
        "shape is required",
    ] {
        assert!(err.contains(expected), "{err}");
    }
    assert!(err.contains("operator \"a\", output \"v\""), "{err}");
}

#[test]
fn validate_says_how_each_operator_starts_and_notes_unused_clara_fields() {
    let dir = tempfile::tempdir().unwrap();
    let definition = dir.path().join("clara.yaml");
    std::fs::write(
        &definition,
        "api-version: 0.6.0\nname: x\noperators:\n- name: convert\n  container:\n    image: example/convert\n    command: [sh, -c, 'true']\n  models:\n  - name: spleen\n  output:\n  - path: /out\n- name: seg\n  container:\n    image: example/seg\n  input:\n  - from: convert\n    path: /in\n",
    )
    .unwrap();
    let out = Command::new(FASTIO)
        .arg("validate")
        .arg(&definition)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("convert: plain program, starts once its inputs are complete"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"operator "seg": command is required to run locally"#),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"note: "#)
            && stderr.contains(r#"operator "convert": models is not used"#),
        "{stderr}"
    );
}

#[test]
fn graph_prints_dot_with_types_on_the_edges() {
    let demo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/demo/pipeline.yaml"
    );
    let out = Command::new(FASTIO).args(["graph", demo]).output().unwrap();
    assert!(out.status.success());
    let dot = String::from_utf8(out.stdout).unwrap();
    assert!(dot.starts_with("digraph"));
    assert!(
        dot.contains("\"generate\" -> \"threshold\" [label=\"volume: int16[256,512,512]\"]"),
        "{dot}"
    );
}

/// The demo pipeline with a 4-slice volume (quick in a debug build), its last operator
/// running `step`.
fn small_pipeline(dir: &std::path::Path, step: &str) -> std::path::PathBuf {
    let demo = include_str!("../../../examples/demo/pipeline.yaml");
    let path = dir.join("pipeline.yaml");
    let text = demo
        .replace("[256, 512, 512]", "[4, 512, 512]")
        .replace("\"write-report\"]", &format!("\"{step}\"]"));
    assert_ne!(text, demo);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn run_executes_a_pipeline_and_summarises_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(FASTIO)
        .arg("run")
        .arg(small_pipeline(dir.path(), "write-report"))
        .arg("--output")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("succeeded"), "{stdout}");
    assert!(stdout.contains("generate.volume"), "{stdout}");
    assert!(stdout.contains("2.0 MiB  shared memory"), "{stdout}");
    let report = std::fs::read_to_string(
        dir.path()
            .join("out/demo/latest/write-report/report/report.txt"),
    )
    .unwrap();
    assert!(report.contains("voxel count: "), "{report}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("executing"),
        "progress shows states: {stderr}"
    );
}

#[test]
fn run_exits_non_zero_with_a_report_naming_the_failed_operator() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(FASTIO)
        .arg("run")
        .arg(small_pipeline(dir.path(), "no-such-step"))
        .arg("--output")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAILED"), "{stdout}");
    assert!(stdout.contains("write-report"), "{stdout}");
    assert!(
        stdout.contains("unknown step"),
        "stderr tail shown: {stdout}"
    );
}

#[test]
fn doctor_reports_the_machine_as_text_and_json() {
    let text = Command::new(FASTIO).arg("doctor").output().unwrap();
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("shmem THP"), "{text}");
    assert!(text.contains("fastio does not use it"), "{text}");
    assert!(text.contains("fastio will use:"), "{text}");
    let json = Command::new(FASTIO)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert!(json.status.success());
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    // The mode it reports is the kernel's.
    let sysfs = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .find(|w| w.starts_with('['))
                .map(|w| w.trim_matches(['[', ']']).to_owned())
        });
    assert_eq!(report["shmem_thp"].as_str().map(str::to_owned), sysfs);
    // So is what it says of free page reporting (a virtio balloon, device 5, with feature
    // bit 5), and of free huge pages where /proc/buddyinfo exists.
    let reporting = std::fs::read_dir("/sys/bus/virtio/devices")
        .map(|d| {
            d.flatten().any(|d| {
                let read = |n: &str| std::fs::read_to_string(d.path().join(n)).unwrap_or_default();
                read("device").trim() == "0x0005" && read("features").chars().nth(5) == Some('1')
            })
        })
        .unwrap_or(false);
    assert_eq!(report["free_page_reporting"].as_bool(), Some(reporting));
    assert_eq!(
        report["free_huge_page_bytes"].is_u64(),
        std::path::Path::new("/proc/buddyinfo").exists()
    );
    let available = report["available_bytes"].as_u64().unwrap();
    assert!(available > 0);
    assert!(report["plan"].as_array().unwrap().len() >= 4);
    let nofile = &report["nofile"];
    assert!(nofile[0].as_u64().is_some() || nofile[0].is_null());
}

#[test]
fn a_closed_stdout_is_an_error_not_a_panic() {
    let demo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/demo/pipeline.yaml"
    );
    // `fastio validate ... | head -0`: the reader is gone before the command writes.
    let (read_end, write_end) = rustix::pipe::pipe().unwrap();
    drop(read_end);
    for args in [["validate", demo], ["graph", demo]] {
        let out = Command::new(FASTIO)
            .args(args)
            .stdout(Stdio::from(write_end.try_clone().unwrap()))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("stdout"), "{args:?}: {stderr}");
    }
}

/// Runs `fastio ARGS` with `env`, expects it to fail, and returns its stderr.
fn failing(args: &[&std::ffi::OsStr], env: &[(&str, &std::ffi::OsStr)]) -> String {
    let out = Command::new(FASTIO)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

/// `fastio` prints an error with its causes (`error: {e:#}`): each cause appears once.
#[test]
fn failing_commands_say_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let said_once = |stderr: &str, cause: &str| {
        assert_eq!(
            stderr.matches(cause).count(),
            1,
            "{cause:?} once in: {stderr}"
        );
    };
    let no_such_file = "No such file or directory (os error 2)";

    // A pipeline file that does not exist.
    let missing = dir.path().join("missing.yaml");
    let stderr = failing(&["run".as_ref(), missing.as_os_str()], &[]);
    said_once(&stderr, "cannot read the pipeline definition");
    said_once(&stderr, no_such_file);

    // An operator run alone with an input file that does not exist.
    let demo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/demo/pipeline.yaml"
    );
    let npy = dir.path().join("missing.npy");
    let input = format!("volume={}", npy.display());
    let output = dir.path().join("out");
    let stderr = failing(
        &[
            "run-op".as_ref(),
            demo.as_ref(),
            "threshold".as_ref(),
            "--input".as_ref(),
            input.as_ref(),
            "--output".as_ref(),
            output.as_os_str(),
        ],
        &[],
    );
    said_once(&stderr, &npy.display().to_string());
    said_once(&stderr, no_such_file);

    // A context nobody serves.
    let stderr = failing(
        &["stats".as_ref()],
        &[(
            fastio::CONTEXT_ENV,
            "@fastio-cli-test-no-such-context".as_ref(),
        )],
    );
    said_once(&stderr, "cannot connect to the context");
    said_once(&stderr, "Connection refused");

    // Job records kept under a folder that cannot be made (a file is in the way).
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    for command in ["ps", "top"] {
        let stderr = failing(
            &[command.as_ref()],
            &[("XDG_RUNTIME_DIR", file.as_os_str())],
        );
        said_once(&stderr, "Not a directory (os error 20)");
    }
}
