//! The life of a FastIO entry's memory: made when its producer, released to execute, opens
//! it (or at the end of its execute), let go once every operator that reads it has finished
//! execute, unless the job keeps it.

use std::sync::Arc;

use fastio_context::{ContextError, EntryError, RequestError, ServerConfig};
use fastio_job::{EntryId, EntryPlan, FastIoEntry, Job, JobPlan, Phase, StagePlan};
use fastio_meta::ElementType;

/// `make` writes `volume`, which `first` and `second` read.
fn plan() -> JobPlan {
    let stage = StagePlan::new;
    JobPlan {
        job_id: "j".into(),
        job_name: "p".into(),
        stages: vec![
            stage("make", vec![], vec![], vec![EntryId(0)]),
            stage("first", vec![0], vec![EntryId(0)], vec![]),
            stage("second", vec![0], vec![EntryId(0)], vec![]),
        ],
        entries: vec![EntryPlan::new(
            "volume",
            Some(0),
            ElementType::U8,
            vec![4096],
        )],
    }
}

fn host(job: Job) -> fastio_job::JobServer {
    let config = ServerConfig {
        collapse: false,
        ..ServerConfig::default()
    };
    fastio_job::host(config, Arc::new(job)).unwrap()
}

/// Whether the entry has memory now, as the context lists it.
fn has_memory(server: &fastio_job::JobServer) -> bool {
    server.local_context().inspect().unwrap().entries[0]
        .bytes
        .is_some()
}

/// Runs stage `stage` as a reader: opens the volume, checks its bytes, finishes execute.
fn read(server: &fastio_job::JobServer, stage: usize, expected: u8) {
    let context = server.local_operator_context(stage);
    let info = context.join().unwrap();
    context.await_inputs().unwrap();
    let volume = FastIoEntry::open(&context, info.fastio_inputs[0].clone()).unwrap();
    assert!(
        volume.is_allocated(),
        "a reader never finds its input without memory"
    );
    assert!(volume.get_bytes().unwrap().iter().all(|&b| b == expected));
    drop(volume);
    context.finished(Phase::Execute, None).unwrap();
}

/// Runs the producer: opens its output (if `write`), fills it with 7, finishes execute.
fn produce(server: &fastio_job::JobServer, write: bool) {
    let make = server.local_operator_context(0);
    let info = make.join().unwrap();
    make.await_inputs().unwrap();
    if write {
        let mut volume = FastIoEntry::open(&make, info.fastio_outputs[0].clone()).unwrap();
        assert!(
            volume.is_allocated(),
            "a pre-allocated output has memory when opened"
        );
        volume.set_bytes(&[7; 4096]).unwrap();
        volume.finish().unwrap();
    }
    make.finished(Phase::Execute, None).unwrap();
}

#[test]
fn an_entrys_memory_is_made_for_its_producer_and_goes_when_its_last_reader_has_executed() {
    let server = host(Job::new(plan(), |_| {}));
    // Admitted with the job, made only when its producer is about to write it.
    assert!(!has_memory(&server));
    produce(&server, true);
    assert!(has_memory(&server));
    read(&server, 1, 7);
    // `second` has not read it yet: it stays.
    assert!(has_memory(&server), "freed before its last reader executed");
    read(&server, 2, 7);
    assert!(!has_memory(&server), "kept after its last reader executed");
    // The report still knows its size; opening it now is refused, clearly.
    assert_eq!(server.entry_bytes(EntryId(0)), Some(4096));
    let late = server.local_operator_context(2);
    let info = late.join();
    assert!(info.is_err(), "a stage joins once");
    let err = FastIoEntry::open(&late, plan().stage_info(2).fastio_inputs[0].clone()).unwrap_err();
    assert!(
        matches!(
            err,
            ContextError::Refused(RequestError::Entry(EntryError::Released { .. }))
        ),
        "{err}"
    );
}

#[test]
fn a_job_that_keeps_entry_memory_keeps_it_after_its_readers() {
    let job = Job::new(plan(), |_| {});
    job.keep_entry_memory();
    let server = host(job);
    produce(&server, true);
    read(&server, 1, 7);
    read(&server, 2, 7);
    assert!(has_memory(&server));
    // Read again after the job's operators, as `fastio run --save` does.
    let context = server.local_operator_context(0);
    let mut info = plan().stage_info(0).fastio_outputs[0].clone();
    info.access = fastio_context::protocol::AccessMode::ReadOnly;
    let volume = FastIoEntry::open(&context, info).unwrap();
    assert_eq!(volume.get_bytes().unwrap(), vec![7; 4096]);
}

#[test]
fn an_output_its_producer_never_opened_reaches_its_readers_zero() {
    let server = host(Job::new(plan(), |_| {}));
    produce(&server, false);
    assert!(has_memory(&server));
    read(&server, 1, 0);
    read(&server, 2, 0);
}

#[test]
fn an_operators_entry_mappings_are_unmapped_not_parked_at_release() {
    let server = host(Job::new(plan(), |_| {}));
    let parked = fastio_context::mapping_stats().parked;
    produce(&server, true);
    read(&server, 1, 7);
    // A parked mapping of sealed entry memory would keep its pages after the entry lets
    // them go (sealed memory cannot be punched).
    assert_eq!(fastio_context::mapping_stats().parked, parked);
    // Whereas an ordinary allocation's mapping is parked at release, for reuse.
    let allocation = server.local_context().create(4096).unwrap();
    allocation.release().unwrap();
    assert_eq!(fastio_context::mapping_stats().parked, parked + 1);
}
