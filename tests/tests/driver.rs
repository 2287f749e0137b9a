//! The pipeline driver with real operator processes (the `fastio-test-op` program):
//! life-cycle order, typed and dynamic entries across processes, read-only inputs,
//! failures (failed execute, crash, SIGKILL, time limit), leaked references, disk entries.

use std::collections::HashMap;
use std::time::Duration;

use fastio::driver::{OperatorState, run_job};
use fastio_tests::job::outcome;

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

fn stream_in(from: &str) -> String {
    format!("  input:\n  - name: done\n    from: {from}\n    type: stream\n    path: /in\n")
}

#[test]
fn prepare_runs_before_upstream_execute_ends_and_execute_after_it() {
    let job = fastio_tests::job_dir!();
    let yaml = format!(
        "{HEADER}{}{}",
        op("first", &[("EXECUTE", "sleep:0.5")], STREAM_OUT),
        op("second", &[], &stream_in("first")),
    );
    let report = job.run(&yaml);
    assert!(report.succeeded(), "{}", report.render());
    let first_executed = job.at("first", "execute end").unwrap();
    assert!(job.at("second", "prepare end").unwrap() < first_executed);
    assert!(job.at("second", "execute begin").unwrap() > first_executed);
    for operator in ["first", "second"] {
        let order: Vec<String> = job
            .events()
            .into_iter()
            .filter(|(who, rest)| who == operator && !rest.starts_with("pid"))
            .map(|(_, rest)| rest.rsplit_once(' ').unwrap().0.to_owned())
            .collect();
        assert_eq!(
            order,
            [
                "prepare begin",
                "prepare end",
                "execute begin",
                "execute end",
                "cleanup begin",
                "cleanup end"
            ]
        );
    }
}

fn typed_pipeline(marker: i64) -> String {
    let produce = format!(
        "  output:\n  - name: grid\n    type: array\n    element-type: float32\n    shape: [3, 224, 224]\n  \
         - name: cube\n    type: array\n    element-type: int16\n    shape: [3, {marker}, 224, {marker}]\n  \
         - name: uid\n    type: string\n  - name: spacing\n    type: f16\n"
    );
    let check = "  input:\n  - name: grid\n    from: produce\n    type: array\n    element-type: float32\n    shape: [3, 224, 224]\n  \
         - name: cube\n    from: produce\n    type: array\n    element-type: int16\n    shape: [3, MARK, 224, MARK]\n  \
         - name: uid\n    from: produce\n    type: string\n  - name: spacing\n    from: produce\n    type: float16\n"
        .replace("MARK", &marker.to_string());
    format!(
        "{HEADER}{}{}",
        // Index 0 and 2 are not dynamic: their values (9, 9) are ignored; 1 and 3 become 5 and 7.
        // The string entry has one dimension: it takes the first value, 9.
        op(
            "produce",
            &[("EXECUTE", "produce"), ("SHAPE", "9,5,9,7")],
            &produce
        ),
        op(
            "check",
            &[
                ("EXECUTE", "check"),
                ("SHAPE_grid", "3,224,224"),
                ("SHAPE_cube", "3,5,224,7"),
                ("SHAPE_uid", "9"),
                ("SHAPE_spacing", "1"),
            ],
            &check
        ),
    )
}

#[test]
fn dynamic_dimensions_change_only_at_their_indices_and_reach_the_reader() {
    for marker in [-1, 0] {
        let job = fastio_tests::job_dir!();
        let report = job.run(&typed_pipeline(marker));
        assert!(report.succeeded(), "marker {marker}: {}", report.render());
        let checked: Vec<String> = job
            .events()
            .into_iter()
            .filter(|(who, rest)| who == "check" && rest.starts_with("checked"))
            .map(|(_, rest)| rest.split(' ').nth(1).unwrap().to_owned())
            .collect();
        assert_eq!(checked, ["grid", "cube", "uid", "spacing"]);
        let bytes: HashMap<&str, Option<u64>> = report
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.bytes))
            .collect();
        assert_eq!(bytes["grid"], Some(3 * 224 * 224 * 4));
        assert_eq!(bytes["cube"], Some(3 * 5 * 224 * 7 * 2));
        assert_eq!(bytes["uid"], Some(9));
        assert_eq!(bytes["spacing"], Some(2));
    }
}

const ONE_ARRAY_OUT: &str =
    "  output:\n  - name: data\n    type: array\n    element-type: uint8\n    shape: [4096]\n";
fn one_array_in(from: &str) -> String {
    format!(
        "  input:\n  - name: data\n    from: {from}\n    type: array\n    element-type: uint8\n    shape: [4096]\n"
    )
}

#[test]
fn a_write_to_an_input_faults() {
    let job = fastio_tests::job_dir!();
    let yaml = format!(
        "{HEADER}{}{}",
        op("source", &[("EXECUTE", "produce")], ONE_ARRAY_OUT),
        op(
            "vandal",
            &[("EXECUTE", "write-input:data")],
            &one_array_in("source")
        ),
    );
    let report = job.run(&yaml);
    assert!(!report.succeeded());
    let OperatorState::Failed(why) = outcome(&report, "vandal") else {
        panic!("{}", report.render());
    };
    assert!(why.contains("signal 11"), "{why}");
    assert!(job.at("vandal", "writing through a raw pointer").is_some());
    assert!(job.at("vandal", "execute end").is_none());
}

#[test]
fn an_input_entry_refuses_writes_keeps_its_data_and_carries_the_producers_event() {
    use fastio::job::{EntryId, EntryPlan, Job as JobState, JobPlan, StagePlan};
    let stage = |name, inputs, outputs| StagePlan::new(name, vec![], inputs, outputs);
    let plan = JobPlan {
        job_id: "j".into(),
        job_name: "j".into(),
        stages: vec![
            stage("writer", vec![], vec![EntryId(0)]),
            stage("reader", vec![EntryId(0)], vec![]),
        ],
        entries: vec![EntryPlan::new(
            "data",
            Some(0),
            fastio::ElementType::U16,
            vec![2, 3],
        )],
    };
    let job = std::sync::Arc::new(JobState::new(plan, |_| {}));
    let server = fastio::job::host(Default::default(), job.clone()).unwrap();
    let writer = fastio::Driver::join(server.local_operator_context(0)).unwrap();
    let reader = fastio::Driver::join(server.local_operator_context(1)).unwrap();
    let info = writer.stage_info().fastio_outputs[0].clone();
    let mut out = fastio::FastIoEntry::open(writer.context(), info).unwrap();
    out.set_values(&[1u16, 2, 3, 4, 5, 6]).unwrap();
    out.set_event(fastio::EventHandle([7; 64])).unwrap();
    let info = reader.stage_info().fastio_inputs[0].clone();
    let early = fastio::FastIoEntry::open(reader.context(), info.clone()).unwrap_err();
    assert!(early.to_string().contains("not ready"), "{early}");
    // The end of the writer's execute, as its Driver does it.
    out.finish().unwrap();
    writer
        .context()
        .finished(fastio::job::Phase::Execute, None)
        .unwrap();
    let refused = out.set_values(&[0u16; 6]).unwrap_err();
    assert!(
        matches!(
            refused.refusal(),
            Some(fastio::RequestError::Entry(
                fastio::context::EntryError::OutputFinal { .. }
            ))
        ),
        "{refused}"
    );
    let output = writer.stage_info().fastio_outputs[0].clone();
    let reopened = fastio::FastIoEntry::open(writer.context(), output).unwrap_err();
    assert!(reopened.to_string().contains("final"), "{reopened}");
    let mut input = fastio::FastIoEntry::open(reader.context(), info).unwrap();
    assert_eq!(
        input.event(),
        Some(fastio::EventHandle([7; 64])),
        "the entry carries its event"
    );
    assert!(
        input.set_event(fastio::EventHandle([8; 64])).is_err(),
        "readers cannot set it"
    );
    assert_eq!(input.access(), fastio::AccessMode::ReadOnly);
    let refused = input.set_values(&[9u16; 6]).unwrap_err().to_string();
    assert!(refused.contains("read-only"), "{refused}");
    assert!(input.update_shape(&[0], &[1]).is_err());
    // SAFETY: the call fails before any view exists (the entry is read-only).
    assert!(unsafe { input.view_mut::<u16>() }.is_err());
    assert_eq!(input.to_vec::<u16>().unwrap(), [1, 2, 3, 4, 5, 6]);
}

#[test]
fn a_write_through_an_output_kept_past_execute_faults_and_never_lands() {
    let job = fastio_tests::job_dir!();
    let yaml = format!(
        "{HEADER}{}{}",
        op("source", &[("EXECUTE", "keep-output")], ONE_ARRAY_OUT),
        op("reader", &[], &one_array_in("source")),
    );
    let report = job.run(&yaml);
    let OperatorState::Failed(why) = outcome(&report, "source") else {
        panic!("{}", report.render());
    };
    assert!(why.contains("signal 11"), "{why}");
    assert!(job.at("source", "writing after execute").is_some());
    assert!(job.at("source", "the late write did not fault").is_none());
}

#[test]
fn a_reader_process_is_refused_every_job_request_that_would_write_its_input() {
    let job = fastio_tests::job_dir!();
    let yaml = format!(
        "{HEADER}{}{}",
        op("source", &[("EXECUTE", "produce")], ONE_ARRAY_OUT),
        op(
            "vandal",
            &[("EXECUTE", "reach-input:data")],
            &one_array_in("source")
        ),
    );
    let report = job.run(&yaml);
    assert!(report.succeeded(), "{}", report.render());
    let refused: Vec<String> = job
        .events()
        .into_iter()
        .filter_map(|(who, rest)| {
            (who == "vandal")
                .then(|| rest.strip_prefix("reach refused: ").map(str::to_owned))
                .flatten()
        })
        .collect();
    assert_eq!(refused.len(), 3, "{refused:?}");
    for (refusal, what) in refused
        .iter()
        .zip(["open-read-write", "allocate", "set-event"])
    {
        assert!(refusal.starts_with(what), "{refusal}");
        assert!(
            refusal.contains("is_an_input_of_this_operator:_it_is_read-only"),
            "{refusal}"
        );
    }
}

#[test]
fn a_reader_cannot_publish_its_input_and_get_it_read_write() {
    let job = fastio_tests::job_dir!();
    let yaml = format!(
        "{HEADER}{}{}",
        op("source", &[("EXECUTE", "produce")], ONE_ARRAY_OUT),
        op(
            "vandal",
            &[("EXECUTE", "escalate:data")],
            &one_array_in("source")
        ),
    );
    let report = job.run(&yaml);
    assert!(report.succeeded(), "{}", report.render());
    let refused = job
        .events()
        .into_iter()
        .find_map(|(who, rest)| {
            (who == "vandal")
                .then(|| rest.strip_prefix("escalation refused: ").map(str::to_owned))
                .flatten()
        })
        .expect("the escalation was tried");
    assert!(refused.contains("read-only"), "{refused}");
}

#[test]
fn a_reader_can_neither_withdraw_nor_replace_a_publication_of_another_operator() {
    // The reader's execute starts once the publisher's has ended (it reads its output),
    // so the publication is there to be disturbed.
    let job = fastio_tests::job_dir!();
    let yaml = format!(
        "{HEADER}{}{}",
        op("publisher", &[("EXECUTE", "publish:shared")], ONE_ARRAY_OUT),
        op(
            "vandal",
            &[("EXECUTE", "disturb:shared")],
            &one_array_in("publisher")
        ),
    );
    let report = job.run(&yaml);
    assert!(report.succeeded(), "{}", report.render());
    let refusals: Vec<String> = job
        .events()
        .into_iter()
        .filter_map(|(who, rest)| {
            (who == "vandal")
                .then(|| rest.strip_prefix("disturb refused: ").map(str::to_owned))
                .flatten()
        })
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    for why in refusals {
        assert!(why.contains("only_its_publisher"), "{why}");
    }
}

fn memfds_of_this_process() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:fastio"))
        })
        .count()
}

#[test]
fn sigkill_mid_execute_fails_the_job_and_leaves_nothing_behind() {
    let job = fastio_tests::job_dir!();
    let yaml = format!(
        "{HEADER}{}{}{}",
        op("victim", &[("EXECUTE", "sleep:60")], ONE_ARRAY_OUT),
        op("after", &[], &one_array_in("victim")),
        op("bystander", &[("EXECUTE", "sleep:60")], ""),
    );
    let pipeline = job.pipeline(&yaml);
    let options = job.options(&pipeline);
    let log = job.log_path();
    let killer = std::thread::spawn(move || {
        // Once the victim executes, `after` has prepared (so that it waits for its
        // inputs, rather than still starting) and the bystander executes, kill the victim.
        let find = |who: &str, what: &str| {
            std::fs::read_to_string(&log).ok().and_then(|text| {
                text.lines().find_map(|l| {
                    let rest = l.strip_prefix(who)?.strip_prefix(' ')?;
                    rest.starts_with(what).then(|| rest.to_owned())
                })
            })
        };
        fastio_tests::wait_until(Duration::from_secs(30), || {
            Ok(find("victim", "execute begin").is_some()
                && find("after", "prepare end").is_some()
                && find("bystander", "execute begin").is_some())
        })
        .unwrap();
        let pid: i32 = find("victim", "pid")
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
    });
    let report = run_job(&pipeline, &options, &mut |_| {}).unwrap();
    killer.join().unwrap();
    let OperatorState::Failed(why) = outcome(&report, "victim") else {
        panic!("{}", report.render());
    };
    assert!(why.contains("signal 9"), "{why}");
    assert_eq!(report.failure.as_ref().unwrap().0, "victim");
    assert_eq!(
        outcome(&report, "after"),
        &OperatorState::Cancelled("while waiting for inputs".into())
    );
    assert_eq!(
        outcome(&report, "bystander"),
        &OperatorState::Cancelled("during execute".into())
    );
    assert!(
        job.at("after", "execute begin").is_none(),
        "downstream never executes"
    );
    assert!(
        job.at("bystander", "execute end").is_none(),
        "the bystander was stopped"
    );
    for (who, rest) in job.events() {
        if let Some(pid) = rest.strip_prefix("pid ") {
            let pid = pid.split(' ').next().unwrap();
            assert!(
                !fastio_tests::alive(pid.parse().unwrap()),
                "{who} ({pid}) outlived the job"
            );
        }
    }
    assert_eq!(
        memfds_of_this_process(),
        0,
        "the job's segments outlived it"
    );
}

#[test]
fn the_time_limit_blames_the_running_operator_not_the_one_waiting_for_it() {
    let job = fastio_tests::job_dir!();
    let yaml = format!(
        "api-version: 0.5.0\nname: t\ntimeout: 1\noperators:\n{}{}",
        op("slow", &[("EXECUTE", "sleep:60")], STREAM_OUT),
        op("patient", &[], &stream_in("slow")),
    );
    let report = job.run(&yaml);
    let (who, why) = report.failure.clone().unwrap();
    assert_eq!(who, "slow", "{}", report.render());
    assert!(why.contains("time limit"), "{why}");
    let OperatorState::Failed(why) = outcome(&report, "slow") else {
        panic!("{}", report.render());
    };
    assert!(why.contains("executing when the job's time limit"), "{why}");
    assert_eq!(
        outcome(&report, "patient"),
        &OperatorState::Cancelled("while waiting for inputs".into()),
        "{}",
        report.render()
    );
    assert!(job.at("slow", "execute end").is_none());
    assert!(job.at("patient", "execute begin").is_none());
}

#[test]
fn an_operator_that_had_finished_is_reported_finished_when_another_fails() {
    let job = fastio_tests::job_dir!();
    // `early` finishes execute and cleanup, then lingers before exiting (as an
    // interpreter tearing down does); `late` fails once early's cleanup has ended.
    let yaml = format!(
        "{HEADER}{}{}",
        op("early", &[("EXIT_DELAY", "30")], STREAM_OUT),
        op(
            "late",
            &[("EXECUTE", "fail"), ("WAIT_FOR", "early cleanup end")],
            &stream_in("early")
        ),
    );
    let report = job.run(&yaml);
    assert_eq!(report.failure.as_ref().unwrap().0, "late");
    assert_eq!(
        outcome(&report, "early"),
        &OperatorState::Succeeded,
        "{}",
        report.render()
    );
    let rendered = report.render();
    let early_line = rendered.lines().find(|l| l.contains("early")).unwrap();
    assert!(early_line.ends_with("finished"), "{rendered}");
    assert!(!rendered.contains("signal 15"), "{rendered}");
}

#[test]
fn a_failed_execute_is_reported_with_its_stderr_and_cleanup_still_runs() {
    let job = fastio_tests::job_dir!();
    let yaml = format!(
        "{HEADER}{}{}",
        op(
            "broken",
            &[("EXECUTE", "fail"), ("STDERR", "the scanner caught fire")],
            STREAM_OUT
        ),
        op("next", &[], &stream_in("broken")),
    );
    let report = job.run(&yaml);
    let (who, why) = report.failure.clone().unwrap();
    assert_eq!(who, "broken");
    assert!(why.contains("deliberate failure"), "{why}");
    let broken = &report.operators[0];
    assert!(
        broken
            .stderr_tail
            .iter()
            .any(|l| l.contains("the scanner caught fire")),
        "{:?}",
        broken.stderr_tail
    );
    assert!(job.at("broken", "cleanup end").is_some());
    assert!(job.at("next", "execute begin").is_none());
    assert!(report.render().contains("the scanner caught fire"));
}

#[test]
fn a_crash_fails_the_job() {
    let job = fastio_tests::job_dir!();
    let report = job.run(&format!(
        "{HEADER}{}",
        op("crash", &[("EXECUTE", "exit3")], "")
    ));
    let OperatorState::Failed(why) = outcome(&report, "crash") else {
        panic!("{}", report.render());
    };
    assert!(why.contains("status 3"), "{why}");
}

#[test]
fn references_held_after_execute_are_reclaimed_and_named_by_entry_or_publication() {
    let job = fastio_tests::job_dir!();
    let report = job.run(&format!(
        "{HEADER}{}{}{}",
        op("leaky", &[("EXECUTE", "hold")], ""),
        op("keeper", &[("EXECUTE", "hold-published:kept")], ""),
        op("grabber", &[("EXECUTE", "hold-entry")], ONE_ARRAY_OUT),
    ));
    assert!(report.succeeded(), "{}", report.render());
    let reclaimed = &report.operators[0].reclaimed;
    assert_eq!(reclaimed.len(), 1);
    assert_eq!((reclaimed[0].count, reclaimed[0].size), (1, 4096));
    let held = |operator: usize| report.operators[operator].reclaimed[0].to_string();
    assert_eq!(held(0), "an unpublished allocation (4096 bytes)");
    assert_eq!(held(1), "publication \"kept\" (4096 bytes)");
    assert_eq!(held(2), "entry \"data\" (4096 bytes)");
    let rendered = report.render();
    assert!(
        rendered.contains("reference to entry \"data\" (4096 bytes) still held after execute"),
        "{rendered}"
    );
}

#[test]
fn disk_entries_reach_readers_through_clara_path_variables() {
    let job = fastio_tests::job_dir!();
    let yaml = format!(
        "{HEADER}{}{}",
        op("writer", &[("EXECUTE", "paths")], STREAM_OUT),
        op("reader", &[("EXECUTE", "paths")], &stream_in("writer")),
    );
    let report = job.run(&yaml);
    assert!(report.succeeded(), "{}", report.render());
    assert!(
        job.at("reader", "read hello_from_writer").is_some(),
        "{:?}",
        job.events()
    );
    let done = report.entries.iter().find(|e| e.name == "done").unwrap();
    assert_eq!(done.bytes, Some("hello from writer".len() as u64));
    assert_eq!(done.medium, fastio::driver::Medium::Disk);
}

#[test]
fn an_operator_runs_alone_with_its_entries_from_the_definition() {
    let job = fastio_tests::job_dir!();
    let yaml = typed_pipeline(-1).replace("$LOG", &job.log_path().display().to_string());
    let path = job.root().join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fastio-test-op"))
        .env_remove(fastio::CONTEXT_ENV)
        .env("FASTIO_PIPELINE", &path)
        .env("FASTIO_STAGE", "produce")
        .env("EXECUTE", "produce")
        .env("SHAPE", "9,5,9,7")
        .env("LOG", job.log_path())
        .current_dir(job.root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Alone, it did not wait for anyone, and its dynamic output took the shape it set.
    assert!(job.at("produce", "execute end").is_some());
    assert!(
        job.at("produce", "shape cube [3, 5, 224, 7]").is_some(),
        "{:?}",
        job.events()
    );

    // An input of an operator run alone is pre-allocated and reads as zeroes: the check
    // of the producer's values fails, cleanly.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fastio-test-op"))
        .env_remove(fastio::CONTEXT_ENV)
        .env("FASTIO_PIPELINE", &path)
        .env("FASTIO_STAGE", "check")
        .env("EXECUTE", "check")
        .env("SHAPE_grid", "3,224,224")
        .current_dir(job.root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("grid: values differ"), "{stderr}");
}

#[test]
fn processes_an_operator_leaves_behind_go_with_the_job() {
    let job = fastio_tests::job_dir!();
    let report = job.run(&format!(
        "{HEADER}{}",
        op("parent", &[("EXECUTE", "orphan")], "")
    ));
    assert!(report.succeeded(), "{}", report.render());
    let orphan = job
        .events()
        .into_iter()
        .find_map(|(_, rest)| rest.strip_prefix("orphan ").map(str::to_owned))
        .unwrap();
    let pid: u32 = orphan.split(' ').next().unwrap().parse().unwrap();
    fastio_tests::wait_until(Duration::from_secs(5), || Ok(!fastio_tests::alive(pid))).unwrap();
}

#[test]
fn killing_the_driver_takes_its_operators_with_it() {
    let job = fastio_tests::job_dir!();
    let yaml = format!(
        "{HEADER}{}{}",
        op("long", &[("EXECUTE", "sleep:60")], ONE_ARRAY_OUT),
        op("waiting", &[], &one_array_in("long")),
    )
    .replace("$LOG", &job.log_path().display().to_string());
    let path = job.root().join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut driver = std::process::Command::new(env!("CARGO_BIN_EXE_fastio-test-driver"))
        .arg(&path)
        .arg(job.root().join("out"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    fastio_tests::wait_until(Duration::from_secs(30), || {
        Ok(job.at("long", "execute begin").is_some() && job.at("waiting", "prepare end").is_some())
    })
    .unwrap();
    driver.kill().unwrap(); // SIGKILL: no clean-up code of the driver runs
    driver.wait().unwrap();
    let pids: Vec<u32> = job
        .events()
        .into_iter()
        .filter_map(|(_, rest)| {
            rest.strip_prefix("pid ")
                .map(|p| p.split(' ').next().unwrap().parse().unwrap())
        })
        .collect();
    assert_eq!(pids.len(), 2);
    fastio_tests::wait_until(Duration::from_secs(5), || {
        Ok(pids.iter().all(|&p| !fastio_tests::alive(p)))
    })
    .unwrap();
    assert!(job.at("waiting", "execute begin").is_none());
}

#[test]
fn a_stream_output_holding_files_stops_the_job_unless_replacing_is_allowed() {
    let job = fastio_tests::job_dir!();
    let pipeline = job.pipeline(&format!(
        "{HEADER}{}",
        op("writer", &[("EXECUTE", "paths")], STREAM_OUT)
    ));
    let mut options = job.options(&pipeline);
    run_job(&pipeline, &options, &mut |_| {}).unwrap();
    let greeting = options.output_root.join("writer/done/greeting.txt");
    assert!(greeting.is_file());
    let refused = run_job(&pipeline, &options, &mut |_| {}).unwrap_err();
    assert!(
        matches!(&refused, fastio::driver::DriverError::OutputNotEmpty { path } if path.ends_with("writer/done")),
        "{refused}"
    );
    assert!(greeting.is_file(), "a refused job deletes nothing");
    assert_eq!(
        job.events()
            .iter()
            .filter(|(_, rest)| rest.starts_with("pid"))
            .count(),
        1,
        "a refused job starts no operator"
    );
    options.replace_outputs = true;
    let report = run_job(&pipeline, &options, &mut |_| {}).unwrap();
    assert!(report.succeeded(), "{}", report.render());
}
