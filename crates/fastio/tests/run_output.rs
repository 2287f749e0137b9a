//! `fastio run` shows each operator's output as it comes, prefixed with the operator's
//! name, keeps it in the job's logs folder, and `--quiet` silences it.

use std::process::{Command, Output};

const FASTIO: &str = env!("CARGO_BIN_EXE_fastio");

fn run(dir: &std::path::Path, quiet: bool) -> Output {
    let definition = dir.join("talk.yaml");
    std::fs::write(
        &definition,
        "api-version: 0.5.0\nname: talk\noperators:\n\
         - name: speaker\n  command: [sh, -c, 'echo hello on stdout; echo hello on stderr >&2']\n",
    )
    .unwrap();
    let mut command = Command::new(FASTIO);
    command
        .arg("run")
        .arg(&definition)
        .arg("--output")
        .arg(dir.join("out"))
        .env_remove("FASTIO_LOG");
    if quiet {
        command.arg("--quiet");
    }
    command.output().unwrap()
}

#[test]
fn operator_output_is_shown_prefixed_and_kept_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("speaker | hello on stdout\n"), "{stdout}");
    assert!(stdout.contains("speaker | hello on stderr\n"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\x1b'),
        "escape codes off a terminal: {stderr:?}"
    );
    let log = dir.path().join("out/talk/latest/logs/speaker.log");
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("hello on stdout\n"), "{log}");
    assert!(log.contains("hello on stderr\n"), "{log}");
}

#[test]
fn quiet_hides_operator_output_but_keeps_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // (The summary of the failed job may quote its stderr; the live lines are gone.)
    assert!(!stdout.contains("speaker | hello"), "{stdout}");
    let log = dir.path().join("out/talk/latest/logs/speaker.log");
    assert!(
        std::fs::read_to_string(log)
            .unwrap()
            .contains("hello on stdout")
    );
}

#[test]
fn a_time_limit_beyond_seven_days_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let definition = dir.path().join("p.yaml");
    std::fs::write(
        &definition,
        "api-version: 0.5.0\nname: p\noperators:\n- name: a\n  command: [true]\n",
    )
    .unwrap();
    let out = Command::new(FASTIO)
        .args(["run", "--timeout", "9223372036854775807"])
        .arg(&definition)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("at most 604800"), "{stderr}");
}
