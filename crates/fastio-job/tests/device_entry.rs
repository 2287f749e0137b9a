//! Device entries of a job end to end through the context: made on their device at set-up
//! (or, dynamic ones, when their producer allocates them), written by their producer,
//! mapped read-only by their readers. The GPU calls run on
//! cuda-streams' CPU fake, whose device memory is memfds.

use cuda_streams::Driver;
use fastio_context::{ContextError, EventHandle, MemoryKind, RequestError, ServerConfig};
use fastio_job::{EntryId, EntryPlan, FastIoEntry, Job, JobPlan, JobServer, Phase, StagePlan};

const MIB: usize = 1 << 20;

fn cuda(device: i32) -> MemoryKind {
    MemoryKind::Cuda { device }
}

/// A job of `infer` writing `logits` (f32, shape `declared`, on cuda:0) and `post` reading
/// it, served with `driver` (or this machine's own CUDA driver).
fn device_job(declared: Vec<i64>, driver: Option<Driver>) -> JobServer {
    let stage = |name, inputs, outputs| StagePlan::new(name, vec![], inputs, outputs);
    let plan = JobPlan {
        job_id: "j".into(),
        job_name: "j".into(),
        stages: vec![
            stage("infer", vec![], vec![EntryId(0)]),
            stage("post", vec![EntryId(0)], vec![]),
        ],
        entries: vec![EntryPlan {
            memory: cuda(0),
            ..EntryPlan::new("logits", Some(0), fastio_meta::ElementType::F32, declared)
        }],
    };
    let job = std::sync::Arc::new(Job::new(plan, |_| {}));
    fastio_job::host(
        ServerConfig {
            device_driver: driver,
            ..ServerConfig::default()
        },
        job,
    )
    .unwrap()
}

#[test]
fn a_device_entry_of_a_job_is_written_by_its_producer_and_mapped_read_only_by_its_reader() {
    let driver = Driver::fake(1);
    let server = device_job(vec![4, 256, 256], Some(driver.clone()));
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

#[test]
fn a_dynamic_device_entry_is_allocated_on_its_device_by_its_producer_and_read_only_after() {
    let driver = Driver::fake(1);
    let server = device_job(vec![-1, 256], Some(driver.clone()));
    let (infer, post) = (
        server.local_operator_context(0),
        server.local_operator_context(1),
    );
    let out_info = infer.join().unwrap().fastio_outputs[0].clone();
    let in_info = post.join().unwrap().fastio_inputs[0].clone();
    let mut out = FastIoEntry::open(&infer, out_info).unwrap();
    assert!(
        out.allocation().is_none(),
        "dynamic: nothing before the producer asks"
    );
    assert_eq!(infer.stats().unwrap().device_live_bytes, 0);

    out.update_shape(&[0], &[3]).unwrap();
    let first = out.allocation().unwrap();
    assert_eq!((first.kind(), first.size()), (cuda(0), 3 * 256 * 4));
    let first_id = first.id();
    let mapped = first.map_device(&driver).unwrap();
    assert_eq!((mapped.device, mapped.read_only), (0, false));
    out.set_event(EventHandle([5; 64])).unwrap();

    // A new shape: new device memory; the old one and its event go.
    out.update_shape(&[0], &[1024]).unwrap();
    let second = out.allocation().unwrap();
    let second_id = second.id();
    assert_ne!(second_id, first_id);
    assert_eq!((second.kind(), second.size()), (cuda(0), 1024 * 256 * 4));
    let stats = infer.stats().unwrap();
    assert_eq!(
        stats.device_live_bytes,
        2 * MIB as u64,
        "only the new memory is live"
    );
    assert_eq!(stats.live_bytes, 0, "no host memory was used");
    assert!(matches!(
        out.set_values(&[0f32; 1024 * 256]).unwrap_err(),
        ContextError::NotHostMemory { .. }
    ));
    out.finish().unwrap();
    infer.finished(Phase::Execute, None).unwrap();

    let input = FastIoEntry::open(&post, in_info).unwrap();
    assert_eq!(input.shape(), vec![1024, 256]);
    assert_eq!(
        input.event(),
        None,
        "the event belonged to the first memory"
    );
    let allocation = input.allocation().unwrap();
    assert_eq!(allocation.id(), second_id);
    let read = allocation.map_device(&driver).unwrap();
    assert_eq!((read.device, read.read_only), (0, true));
}

#[test]
fn without_a_cuda_driver_a_dynamic_device_entry_is_refused_naming_it() {
    // The machine's own driver: absent in CI (a refusal); on a GPU machine it is made.
    let server = device_job(vec![-1, 256], None);
    let infer = server.local_operator_context(0);
    let info = infer.join().unwrap().fastio_outputs[0].clone();
    let mut out = FastIoEntry::open(&infer, info).unwrap();
    match out.update_shape(&[0], &[2]) {
        Ok(_) => assert_eq!(out.allocation().unwrap().kind(), cuda(0)),
        Err(e) => {
            assert!(
                matches!(
                    &e,
                    ContextError::Refused(RequestError::Entry(
                        fastio_context::EntryError::Device { name, .. }
                    )) if name == "logits"
                ),
                "{e}"
            );
            assert!(
                e.to_string()
                    .contains("FastIO entry \"logits\" cannot be allocated on cuda:0"),
                "{e}"
            );
            assert!(out.allocation().is_none());
        }
    }
}
