//! What a job's context lists (`fastio ls`): the runtime's view of its stages and entries,
//! with the registry's holders named by operator.

use std::sync::Arc;

use fastio_context::ServerConfig;
use fastio_context::listing::Holder;
use fastio_job::{EntryId, EntryPlan, FastIoEntry, Job, JobPlan, StagePlan};
use fastio_meta::ElementType;

fn plan() -> JobPlan {
    let stage = StagePlan::new;
    JobPlan {
        job_id: "j".into(),
        job_name: "p".into(),
        stages: vec![
            stage("make", vec![], vec![], vec![EntryId(0)]),
            stage("use", vec![0], vec![EntryId(0)], vec![]),
        ],
        entries: vec![EntryPlan::new(
            "volume",
            Some(0),
            ElementType::U8,
            vec![4096],
        )],
    }
}

#[test]
fn a_jobs_listing_names_producer_readers_states_and_holders_by_operator() {
    let config = ServerConfig {
        collapse: false,
        ..ServerConfig::default()
    };
    let server = fastio_job::host(config, Arc::new(Job::new(plan(), |_| {}))).unwrap();
    let make = server.local_operator_context(0);
    let info = make.join().unwrap();
    make.await_inputs().unwrap();
    let _volume = FastIoEntry::open(&make, info.fastio_outputs[0].clone()).unwrap();
    let listing = server.local_context().inspect().unwrap();
    let entry = &listing.entries[0];
    assert_eq!(entry.producer.as_deref(), Some("make"));
    assert_eq!(entry.readers, ["use"]);
    assert_eq!(
        (entry.dims.as_deref(), entry.bytes),
        (Some(&[4096][..]), Some(4096))
    );
    assert_eq!(
        entry.holders,
        [Holder {
            who: "make".into(),
            handles: 1
        }]
    );
    let job = listing.job.unwrap();
    assert_eq!(job.job_name, "p");
    assert_eq!(
        job.operators
            .iter()
            .map(|o| (o.name.as_str(), o.state.as_str(), o.handles))
            .collect::<Vec<_>>(),
        [("make", "executing", 1), ("use", "not joined", 0)]
    );
    assert_eq!(server.entry_bytes(EntryId(0)), Some(4096));
}
