//! Plain programs as operators, with real processes: shell and Python scripts that know
//! nothing of fastio, mixed with `fastio-test-op` (a Rust operator using the driver). They
//! start only once their inputs are complete, succeed by exiting 0, hand their outputs
//! downstream, never start after a failure; Clara-style definitions (container blocks,
//! requests, pull-secrets, unnamed streams, untyped 0.4.0 files) run locally.

use std::path::{Path, PathBuf};

use fastio::driver::{
    DriverError, JobOptions, JobReport, KindReason, OperatorKind, OperatorState, operator_kinds,
    run_job,
};
use fastio::pipeline::Pipeline;
use fastio_tests::job::{JobDir, outcome};

/// Writes a script into the job's folder; returns its absolute path.
fn script(job: &JobDir, name: &str, text: &str) -> String {
    let path = job.path(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// [`JobDir::options`], with the payload folder in the job's folder.
fn options(job: &JobDir, pipeline: &Pipeline) -> JobOptions {
    let mut options = job.options(pipeline);
    options.payload = Some(job.path("payload"));
    options
}

fn run(job: &JobDir, yaml: &str) -> JobReport {
    let pipeline = job.pipeline(yaml);
    run_job(&pipeline, &options(job, &pipeline), &mut |_| {}).unwrap()
}

fn logged(job: &JobDir, operator: &str, what: &str) -> bool {
    job.at(operator, what).is_some()
}

/// The text of the job's output file whose path ends in `tail`
/// (`<operator>/<entry folder>/<file>`), wherever under `out` the job put it.
fn output(job: &JobDir, tail: &str) -> String {
    fn walk(dir: &Path, tail: &str) -> Option<PathBuf> {
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            if path.ends_with(tail) && path.is_file() {
                return Some(path);
            }
            if path.is_dir()
                && let Some(found) = walk(&path, tail)
            {
                return Some(found);
            }
        }
        None
    }
    let path = walk(&job.path("out"), tail).unwrap_or_else(|| panic!("no {tail} under out"));
    std::fs::read_to_string(path).unwrap()
}

/// A shell script that logs its start and end the way fastio-test-op does, and copies
/// `greeting.txt` from its one input folder to its one output folder (Clara's
/// `name:path` variables), after `pause` seconds.
fn copy_script(pause: &str) -> String {
    format!(
        r#"log() {{ echo "$FASTIO_STAGE $1 $(date +%s%N)" >> "$LOG"; }}
log start
sleep {pause}
in=${{NVIDIA_CLARA_INPUTPATHS#*:}}
out=${{NVIDIA_CLARA_OUTPUTPATHS#*:}}
cp "$in/greeting.txt" "$out/greeting.txt"
log end
"#
    )
}

/// A Python script without the driver: upper-cases `greeting.txt` from input to output.
const SHOUT_PY: &str = r#"import os, time

def log(what):
    with open(os.environ["LOG"], "a") as f:
        f.write(f"{os.environ['FASTIO_STAGE']} {what} {time.time_ns()}\n")

log("start")
src = os.environ["NVIDIA_CLARA_INPUTPATHS"].split(":", 1)[1]
dst = os.environ["NVIDIA_CLARA_OUTPUTPATHS"].split(":", 1)[1]
with open(os.path.join(src, "greeting.txt")) as f:
    text = f.read()
with open(os.path.join(dst, "greeting.txt"), "w") as f:
    f.write(text.upper())
log("end")
"#;

#[test]
fn plain_programs_start_after_their_inputs_and_hand_their_outputs_on() {
    let job = fastio_tests::job_dir!();
    let copy = script(&job, "copy.sh", &copy_script("0.3"));
    let shout = script(&job, "shout.py", SHOUT_PY);
    // Definition order differs from dependency order on purpose.
    let report = run(
        &job,
        &format!(
            r#"api-version: 0.5.0
name: mixed
operators:
- name: last
  command: [fastio-test-op]
  variables: {{LOG: $LOG, EXECUTE: paths}}
  input:
  - name: loud
    from: shout
    path: /in
- name: first
  command: [fastio-test-op]
  variables: {{LOG: $LOG, EXECUTE: paths}}
  output:
  - name: done
    path: /out
- name: copy
  command: [sh, {copy}]
  variables: {{LOG: $LOG}}
  input:
  - name: done
    from: first
    path: /in
  output:
  - path: /out
- name: shout
  command: [python3, {shout}]
  variables: {{LOG: $LOG}}
  input:
  - from: copy
    path: /in
  output:
  - name: loud
    path: /out
"#
        ),
    );
    assert!(report.succeeded(), "{}", report.render());
    for name in ["first", "copy", "shout", "last"] {
        assert_eq!(outcome(&report, name), &OperatorState::Succeeded);
    }
    // The data went through all four, each reading what the one before wrote.
    assert!(
        logged(&job, "last", "read HELLO_FROM_FIRST"),
        "{}",
        std::fs::read_to_string(job.path("log")).unwrap()
    );
    // Each plain program started only once its upstream operator had finished execute.
    let first_done = job.at("first", "execute end").unwrap();
    let copy_start = job.at("copy", "start").unwrap();
    let copy_end = job.at("copy", "end").unwrap();
    let shout_start = job.at("shout", "start").unwrap();
    let shout_end = job.at("shout", "end").unwrap();
    assert!(first_done < copy_start);
    assert!(copy_end < shout_start);
    // The driver operator downstream started at job start: it had prepared while the
    // plain programs ran, and executed after the last of them.
    assert!(job.at("last", "prepare end").unwrap() < shout_start);
    assert!(shout_end < job.at("last", "execute begin").unwrap());

    // The summary: the unnamed disk output, its bytes and its reader.
    let unnamed = report
        .entries
        .iter()
        .find(|e| e.producer == "copy")
        .unwrap();
    assert_eq!(unnamed.name, "");
    assert_eq!(unnamed.bytes, Some("hello from first".len() as u64));
    assert_eq!(unnamed.medium, fastio::driver::Medium::Disk);
    assert_eq!(unnamed.readers, ["shout"]);
    let copy_report = report.operators.iter().find(|o| o.name == "copy").unwrap();
    assert!(
        copy_report.execute.is_some(),
        "a plain program's run is its execute"
    );
    let names: Vec<&str> = report.operators.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["first", "copy", "shout", "last"]);
}

#[test]
fn the_kind_of_each_operator_follows_the_documented_rule() {
    let job = fastio_tests::job_dir!();
    let copy = script(&job, "copy.sh", &copy_script("0"));
    let shout = script(&job, "shout.py", SHOUT_PY);
    let driver_py = script(&job, "op.py", "import os\nfrom clara import Driver\n");
    let shebang = script(&job, "op", "#!/usr/bin/env python3\nimport fastio\n");
    let pipeline = job.pipeline(&format!(
        r#"api-version: 0.5.0
name: kinds
operators:
- name: rust-op
  command: [fastio-test-op]
- name: sh-script
  command: [sh, {copy}]
- name: py-script
  command: [python3, -u, {shout}]
- name: py-driver
  command: [python3, {driver_py}]
- name: py-code
  command: [python3, -c, "from clara import Driver; Driver().start()"]
- name: shebang
  command: [{shebang}]
- name: typed
  command: [sh, {copy}]
  output:
  - name: n
    type: u8
- name: declared
  command: [fastio-test-op]
  uses-driver: false
- name: missing
  command: [no-such-program-here]
- name: env-py
  command: [env, PYTHONUNBUFFERED=1, python3, {driver_py}]
"#
    ));
    let kinds = operator_kinds(&pipeline, &options(&job, &pipeline));
    let got: Vec<(&str, OperatorKind)> = pipeline
        .operators()
        .iter()
        .map(|o| o.name())
        .zip(kinds.iter().map(|(k, _)| *k))
        .collect();
    use OperatorKind::{Driver, Plain};
    assert_eq!(
        got,
        [
            ("rust-op", Driver),
            ("sh-script", Plain),
            ("py-script", Plain),
            ("py-driver", Driver),
            ("py-code", Driver),
            ("shebang", Driver),
            ("typed", Driver),
            ("declared", Plain),
            ("missing", Driver),
            ("env-py", Driver),
        ]
    );
    let reasons: Vec<String> = kinds.iter().map(|(_, r)| r.to_string()).collect();
    assert!(reasons[0].ends_with("contains FASTIO_STAGE"), "{reasons:?}");
    assert_eq!(kinds[1].1, KindReason::NoMention);
    assert!(reasons[3].ends_with("op.py contains an import of clara"));
    assert_eq!(kinds[6].1, KindReason::SharedMemory);
    assert_eq!(kinds[7].1, KindReason::Declared);
    assert!(matches!(kinds[8].1, KindReason::Unreadable { .. }));
}

#[test]
fn a_plain_program_downstream_of_a_failed_operator_never_starts() {
    let job = fastio_tests::job_dir!();
    let marker = job.path("ran");
    let report = run(
        &job,
        &format!(
            r#"api-version: 0.5.0
name: t
operators:
- name: broken
  command: [fastio-test-op]
  variables: {{LOG: $LOG, EXECUTE: fail}}
  output:
  - name: done
    path: /out
- name: after
  command: [sh, -c, "touch {marker}"]
  input:
  - name: done
    from: broken
    path: /in
  output:
  - path: /out
- name: later
  command: [sh, -c, "touch {marker}"]
  input:
  - from: after
    path: /in
  output:
  - name: x
    path: /out
"#,
            marker = marker.display()
        ),
    );
    let (who, why) = report.failure.clone().unwrap();
    assert_eq!(who, "broken");
    assert!(why.contains("execute failed"), "{why}");
    assert!(!marker.exists(), "a plain program ran after the failure");
    for name in ["after", "later"] {
        let OperatorState::Cancelled(why) = outcome(&report, name) else {
            panic!("{}", report.render());
        };
        assert_eq!(why, "before it started");
    }
    let rendered = report.render();
    assert!(rendered.contains("FAILED"), "{rendered}");
    assert!(rendered.contains("broken"), "{rendered}");
}

#[test]
fn a_plain_program_that_exits_non_zero_fails_the_job() {
    let job = fastio_tests::job_dir!();
    let report = run(
        &job,
        r#"api-version: 0.5.0
name: t
operators:
- name: convert
  command: [sh, -c, "echo cannot read the series >&2; exit 3"]
  output:
  - path: /out
- name: reader
  command: [fastio-test-op]
  variables: {LOG: $LOG}
  input:
  - from: convert
    path: /in
- name: plain-after
  command: ["true"]
  input:
  - from: convert
    path: /in
"#,
    );
    let (who, why) = report.failure.clone().unwrap();
    assert_eq!(who, "convert");
    assert_eq!(why, "exited with status 3");
    let convert = report
        .operators
        .iter()
        .find(|o| o.name == "convert")
        .unwrap();
    assert_eq!(convert.stderr_tail, ["cannot read the series"]);
    // The driver operator waiting for the output never executed.
    assert!(!logged(&job, "reader", "execute begin"));
    assert!(matches!(
        outcome(&report, "plain-after"),
        OperatorState::Cancelled(_)
    ));
    assert!(report.render().contains("cannot read the series"));
}

#[test]
fn a_driver_program_declared_plain_still_runs_correctly_after_its_inputs() {
    // The safe side of a wrong guess: declared plain, it starts late and joins the job.
    let job = fastio_tests::job_dir!();
    let report = run(
        &job,
        r#"api-version: 0.5.0
name: t
operators:
- name: writer
  command: [fastio-test-op]
  variables: {LOG: $LOG, EXECUTE: paths}
  output:
  - name: done
    path: /out
- name: reader
  command: [fastio-test-op]
  uses-driver: false
  variables: {LOG: $LOG, EXECUTE: paths}
  input:
  - name: done
    from: writer
    path: /in
"#,
    );
    assert!(report.succeeded(), "{}", report.render());
    assert!(logged(&job, "reader", "read hello_from_writer"));
    assert!(job.at("writer", "execute end").unwrap() < job.at("reader", "prepare begin").unwrap());
    assert!(logged(&job, "reader", "cleanup end"));
}

#[test]
fn a_program_declared_to_use_the_driver_that_never_joins_fails_the_job() {
    let job = fastio_tests::job_dir!();
    let report = run(
        &job,
        "api-version: 0.5.0\nname: t\noperators:\n- name: plain\n  command: [\"true\"]\n  uses-driver: true\n",
    );
    let OperatorState::Failed(why) = outcome(&report, "plain") else {
        panic!("{}", report.render());
    };
    assert!(
        why.contains("exited without joining the job")
            && why.contains("declared by uses-driver")
            && why.contains("set uses-driver: false"),
        "{why}"
    );
    // Undeclared, the same program is plain and succeeds.
    let report = run(
        &job,
        "api-version: 0.5.0\nname: t\noperators:\n- name: plain\n  command: [\"true\"]\n",
    );
    assert!(report.succeeded(), "{}", report.render());
}

#[test]
fn a_clara_definition_with_container_blocks_runs_the_commands_it_names() {
    let job = fastio_tests::job_dir!();
    std::fs::create_dir_all(job.path("payload")).unwrap();
    std::fs::write(job.path("payload/series.dcm"), "DICM series").unwrap();
    let report = run(
        &job,
        r#"api-version: 0.5.0
orchestrator: Clara
name: ct-seg
pull-secrets:
- ngc-clara
operators:
- name: dicom-reader
  description: Reads the payload.
  variables:
    CLARA_TRACE: 2
  container:
    image: example/dicom-reader
    tag: 0.1.0
    command: [sh, -c, 'in=$(echo "$NVIDIA_CLARA_INPUTPATHS" | cut -d: -f2-); out=$(echo "$NVIDIA_CLARA_OUTPUTPATHS" | cut -d: -f2-); cp "$in"/series.dcm "$out"/ && echo "$CLARA_TRACE" > "$out"/trace']
  requests:
    gpu: 1
    memory: 8192
  input:
  - path: /input
    type: stream
    element-type: dicom
  output:
  - path: /output
    type: stream
    element-type: dicom
- name: writer
  container:
    image: example/writer
    command: [/opt/writer/run]
  command: [sh, -c, 'in=$(echo "$NVIDIA_CLARA_INPUTPATHS" | cut -d: -f2-); out=$(echo "$NVIDIA_CLARA_OUTPUTPATHS" | cut -d: -f2-); wc -c < "$in"/series.dcm > "$out"/size']
  input:
  - from: dicom-reader
    path: /input
    type: stream
    element-type: dicom
  output:
  - name: results
    path: /output
    type: stream
"#,
    );
    assert!(report.succeeded(), "{}", report.render());
    let copied = output(&job, "dicom-reader/unnamed.out/series.dcm");
    assert_eq!(copied, "DICM series");
    let trace = output(&job, "dicom-reader/unnamed.out/trace");
    assert_eq!(trace.trim(), "2");
    let size = output(&job, "writer/results/size");
    assert_eq!(size.trim(), "11");
    // The image information stays in the model for rendering elsewhere.
    let pipeline = Pipeline::from_path(job.path("pipeline.yaml")).unwrap();
    let reader = &pipeline.operators()[0];
    assert_eq!(
        reader.container().unwrap().reference(),
        "example/dicom-reader:0.1.0"
    );
    assert_eq!(reader.requests().gpu, Some(1));
    assert_eq!(pipeline.pull_secrets(), ["ngc-clara"]);
}

#[test]
fn an_image_without_a_command_stops_a_local_run_before_anything_starts() {
    let job = fastio_tests::job_dir!();
    let marker = job.path("ran");
    let pipeline = job.pipeline(&format!(
        "api-version: 0.5.0\nname: t\noperators:\n- name: first\n  command: [sh, -c, \"touch {}\"]\n- name: reader\n  container:\n    image: example/reader\n    tag: 0.1.0\n",
        marker.display()
    ));
    let error = run_job(&pipeline, &options(&job, &pipeline), &mut |_| {}).unwrap_err();
    assert!(matches!(error, DriverError::Definition(_)), "{error}");
    let text = error.to_string();
    assert!(
        text.contains(r#"operator "reader": command is required to run locally"#)
            && text.contains("example/reader:0.1.0"),
        "{text}"
    );
    assert!(!marker.exists(), "nothing starts");
}

#[test]
fn an_untyped_clara_0_4_pipeline_runs() {
    // Clara's own untyped example, with its copies made through the path variables (a
    // container would find its volumes at the declared paths; a local process is told them
    // in NVIDIA_CLARA_INPUTPATHS / NVIDIA_CLARA_OUTPUTPATHS).
    let job = fastio_tests::job_dir!();
    std::fs::create_dir_all(job.path("payload/study")).unwrap();
    std::fs::write(job.path("payload/study/a.txt"), "alpha").unwrap();
    let report = run(
        &job,
        r#"api-version: 0.4.0
name: we-love-operators
operators:
- name: i-am-first
  container:
    image: clara/examples/centos
    tag: centos7
    command: ['sh', '-c', 'in=$(echo "$NVIDIA_CLARA_INPUTPATHS" | cut -d: -f2-); out=$(echo "$NVIDIA_CLARA_OUTPUTPATHS" | cut -d: -f2-); cp -r "$in"/. "$out"']
  input:
  - path: /in
  output:
  - path: /out
- name: last-i-am
  container:
    image: clara/examples/ubuntu
    tag: 18.04
    command: ['sh', '-c', 'in=$(echo "$NVIDIA_CLARA_INPUTPATHS" | cut -d: -f2-); out=$(echo "$NVIDIA_CLARA_OUTPUTPATHS" | cut -d: -f2-); cp -r "$in"/. "$out"']
  input:
  - from: i-am-first
    path: /my-in
  output:
  - path: /my-out
"#,
    );
    assert!(report.succeeded(), "{}", report.render());
    let copied = output(&job, "last-i-am/unnamed.out/study/a.txt");
    assert_eq!(copied, "alpha");
    let first = report
        .entries
        .iter()
        .find(|e| e.producer == "i-am-first")
        .unwrap();
    assert_eq!(
        (first.bytes, &first.readers[..]),
        (Some(5), &["last-i-am".to_owned()][..])
    );
}

#[test]
fn the_time_limit_ends_a_job_whose_plain_program_still_waits_for_its_inputs() {
    let job = fastio_tests::job_dir!();
    let marker = job.path("ran");
    let report = run(
        &job,
        &format!(
            r#"api-version: 0.5.0
name: t
timeout: 1
operators:
- name: slow
  command: [fastio-test-op]
  variables: {{LOG: $LOG, EXECUTE: "sleep:60"}}
  output:
  - path: /out
- name: after
  command: [sh, -c, "touch {marker}"]
  input:
  - from: slow
    path: /in
"#,
            marker = marker.display()
        ),
    );
    let (who, why) = report.failure.clone().unwrap();
    assert_eq!(who, "slow", "only the running operator is blamed");
    assert!(why.contains("time limit"), "{why}");
    assert!(matches!(
        outcome(&report, "after"),
        OperatorState::Cancelled(why) if why == "before it started"
    ));
    assert!(!marker.exists());
}

#[test]
fn the_clara_example_runs_as_it_is() {
    let job = fastio_tests::job_dir!();
    std::fs::create_dir_all(job.path("payload")).unwrap();
    std::fs::write(job.path("payload/b.dcm"), "bb").unwrap();
    std::fs::write(job.path("payload/a.dcm"), "a").unwrap();
    let pipeline = Pipeline::from_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/clara/pipeline.yaml"
    ))
    .unwrap();
    let report = run_job(&pipeline, &options(&job, &pipeline), &mut |_| {}).unwrap();
    assert!(report.succeeded(), "{}", report.render());
    let listing = output(&job, "list/listing/files.txt");
    assert_eq!(listing, "a.dcm 1\nb.dcm 2\n");
    let list = pipeline.operator("list").unwrap();
    assert_eq!(list.container().unwrap().reference(), "example/lister:1.10");
    assert_eq!(
        list.container().unwrap().command().unwrap(),
        ["/app/list.py"]
    );
    assert_eq!(pipeline.unused().len(), 1, "models is noted");
}

#[test]
fn shell_expansions_in_a_clara_command_reach_the_shell_as_written() {
    // Clara hands `container.command` to the container as it is, and `sh -c` commands
    // commonly expand the environment with `${...}` (the output folder here, a default
    // there): a definition written so must run unchanged.
    let job = fastio_tests::job_dir!();
    let report = run(
        &job,
        r#"api-version: 0.4.0
name: t
operators:
- name: say
  container:
    image: example/say
    command: [sh, -c, 'out=${NVIDIA_CLARA_OUTPUTPATHS#*:}; echo "${GREETING:-none} from ${FASTIO_STAGE}" > "$out/said"']
  output:
  - path: /out
"#,
    );
    assert!(report.succeeded(), "{}", report.render());
    let said = output(&job, "say/unnamed.out/said");
    assert_eq!(said, "none from say\n");
}
