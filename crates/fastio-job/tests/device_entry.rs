//! A device entry of a job end to end through the context: made on its device at set-up,
//! written by its producer, mapped read-only by its reader. The GPU calls run on
//! cuda-streams' CPU fake, whose device memory is memfds.

use cuda_streams::Driver;
use fastio_context::{ContextError, MemoryKind, ServerConfig};
use fastio_job::{EntryId, EntryPlan, FastIoEntry, Job, JobPlan, Phase, StagePlan};

fn cuda(device: i32) -> MemoryKind {
    MemoryKind::Cuda { device }
}

#[test]
fn a_device_entry_of_a_job_is_written_by_its_producer_and_mapped_read_only_by_its_reader() {
    let stage = |name: &str, inputs: Vec<EntryId>, outputs: Vec<EntryId>| StagePlan {
        name: name.into(),
        upstream: vec![],
        inputs: vec![],
        outputs: vec![],
        fastio_inputs: inputs,
        fastio_outputs: outputs,
    };
    let plan = JobPlan {
        job_id: "j".into(),
        job_name: "j".into(),
        stages: vec![
            stage("infer", vec![], vec![EntryId(0)]),
            stage("post", vec![EntryId(0)], vec![]),
        ],
        entries: vec![EntryPlan {
            name: "logits".into(),
            producer: Some(0),
            element_type: fastio_meta::ElementType::F32,
            declared: vec![4, 256, 256],
            memory: cuda(0),
        }],
    };
    let driver = Driver::fake(1);
    let job = std::sync::Arc::new(Job::new(plan, |_| {}));
    let server = fastio_job::host(
        ServerConfig {
            device_driver: Some(driver.clone()),
            ..ServerConfig::default()
        },
        job,
    )
    .unwrap();
    let (infer, post) = (
        server.local_operator_context(0),
        server.local_operator_context(1),
    );
    let out_info = infer.join().unwrap().fastio_outputs[0].clone();
    let in_info = post.join().unwrap().fastio_inputs[0].clone();
    let mut out = FastIoEntry::open(&infer, out_info).unwrap();
    let written = out.allocation().unwrap().map_device(&driver).unwrap();
    assert_eq!((written.device, written.read_only), (0, false));
    assert_eq!(written.size, 4 * 256 * 256 * 4);
    // A host write to device memory is refused, not a fault.
    assert!(matches!(
        out.set_values(&[0f32; 4 * 256 * 256]).unwrap_err(),
        ContextError::NotHostMemory { .. }
    ));
    out.finish().unwrap();
    infer.finished(Phase::Execute, None).unwrap();
    let input = FastIoEntry::open(&post, in_info).unwrap();
    let read = input.allocation().unwrap().map_device(&driver).unwrap();
    assert_eq!((read.device, read.read_only), (0, true));
    assert_eq!(input.allocation().unwrap().kind(), cuda(0));
}
