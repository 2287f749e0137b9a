//! The operator's CUDA stream end to end through a job's context server, on cuda-streams' CPU
//! fake (`cuda_streams::Driver::fake`): an operator that uses its stream hands every output an
//! event recorded on it, the next operator's stream waits on that event when execute opens its
//! inputs, and an operator that neither uses a stream nor receives an event never reaches CUDA.

use std::sync::{Arc, Mutex};

use fastio_context::{EventHandle, MemoryKind, ServerConfig};
use fastio_job::{EntryId, EntryPlan, Job, JobPlan, JobServer, StagePlan};
use fastio_meta::ElementType;
use fastio_operator::cuda_streams::testing::FakeCall;
use fastio_operator::cuda_streams::{self, Driver as CudaDriver};
use fastio_operator::{Driver, Lifecycle, OperatorError};

/// producer -> middle -> consumer, each through one pre-allocated entry; `spare` is a
/// dynamic output of the producer that it never allocates.
fn job() -> Arc<Job> {
    let stage = StagePlan::new;
    let entry =
        |name, producer, declared| EntryPlan::new(name, Some(producer), ElementType::F32, declared);
    Arc::new(Job::new(
        JobPlan {
            job_id: "gpu-streams".into(),
            job_name: "gpu-streams".into(),
            stages: vec![
                stage("producer", vec![], vec![], vec![EntryId(0), EntryId(2)]),
                stage("middle", vec![0], vec![EntryId(0)], vec![EntryId(1)]),
                stage("consumer", vec![1], vec![EntryId(1)], vec![]),
            ],
            entries: vec![
                entry("volume", 0, vec![4, 4]),
                entry("mask", 1, vec![4, 4]),
                entry("spare", 0, vec![-1]),
            ],
        },
        |_| {},
    ))
}

fn server() -> JobServer {
    fastio_job::host(
        ServerConfig {
            pool_bytes: 1 << 20,
            collapse: false,
            ..ServerConfig::default()
        },
        job(),
    )
    .unwrap()
}

/// The raw handle of an event as the fake exports it (its number, little-endian).
fn fake_event_number(handle: &EventHandle) -> u64 {
    u64::from_le_bytes(handle.0[..8].try_into().unwrap())
}

#[test]
fn an_operator_stream_orders_the_next_operator_after_it_through_the_outputs_event() {
    let server = server();

    // The producer queues its work on its stream; the event its output carries is recorded
    // on that stream.
    let producer_cuda = CudaDriver::fake(1);
    let producer_stream = Arc::new(Mutex::new(None));
    let seen = producer_stream.clone();
    Driver::join(server.local_operator_context(0))
        .unwrap()
        .with_cuda_driver(producer_cuda.clone())
        .run(&mut Lifecycle::new().execute(move |_, payload| {
            let stream = payload.cuda_stream()?;
            // Held for the run: the same stream again.
            assert_eq!(payload.cuda_stream()?.id(), stream.id());
            *seen.lock().unwrap() = Some(stream.as_raw());
            payload.fastio_output("volume")?.set_values(&[1.0f32; 16])?;
            Ok(())
        }))
        .unwrap();
    let producer_stream = producer_stream.lock().unwrap().unwrap();
    let recorded = records(&producer_cuda);
    assert_eq!(recorded.len(), 1, "one event for the outputs: {recorded:?}");
    assert_eq!(recorded[0].1, producer_stream);

    // The middle operator finds that event on its input; its stream waited on it before
    // execute ran (nothing is recorded or waited on by execute itself here).
    let middle_cuda = CudaDriver::fake(1);
    let observed = Arc::new(Mutex::new(None));
    let got = observed.clone();
    let calls = middle_cuda.clone();
    Driver::join(server.local_operator_context(1))
        .unwrap()
        .with_cuda_driver(middle_cuda.clone())
        .run(&mut Lifecycle::new().execute(move |_, payload| {
            let input = payload.fastio_input("volume")?;
            let event = input
                .event()
                .ok_or("the producer's output carries no event")?;
            let waits_before_execute = waits(&calls);
            let stream = payload.cuda_stream()?;
            *got.lock().unwrap() = Some((event, waits_before_execute, stream.as_raw()));
            payload.fastio_output("mask")?.set_values(&[2.0f32; 16])?;
            Ok(())
        }))
        .unwrap();
    let (event, waits_before_execute, middle_stream) = observed.lock().unwrap().take().unwrap();
    assert_eq!(fake_event_number(&event), recorded[0].0 as u64);
    assert_eq!(
        waits_before_execute,
        vec![(recorded[0].0, Some(middle_stream))],
        "the middle operator's stream waits on the producer's event, once, before execute"
    );
    // Its own output's event is recorded on its stream.
    assert_eq!(
        records(&middle_cuda).last().map(|r| r.1),
        Some(middle_stream)
    );

    // The consumer reads the middle operator's output; it uses no stream, and its fake
    // shows the wait its receive made all the same (on its own pool's stream).
    let consumer_cuda = CudaDriver::fake(1);
    Driver::join(server.local_operator_context(2))
        .unwrap()
        .with_cuda_driver(consumer_cuda.clone())
        .run(&mut Lifecycle::new().execute(move |_, payload| {
            let input = payload.fastio_input("mask")?;
            input
                .event()
                .ok_or("the middle operator's output carries no event")?;
            assert_eq!(input.to_vec::<f32>()?, vec![2.0; 16]);
            Ok(())
        }))
        .unwrap();
    assert_eq!(waits(&consumer_cuda).len(), 1);
    // It has no outputs: no event is recorded.
    assert!(records(&consumer_cuda).is_empty());
}

/// (event, stream) of every record the fake saw.
fn records(driver: &CudaDriver) -> Vec<(usize, usize)> {
    cuda_streams::testing::fake_calls(driver)
        .unwrap()
        .into_iter()
        .filter_map(|c| match c {
            FakeCall::Record {
                event,
                stream: Some(stream),
                ..
            } => Some((event, stream)),
            _ => None,
        })
        .collect()
}

/// (event, stream) of every wait the fake saw.
fn waits(driver: &CudaDriver) -> Vec<(usize, Option<usize>)> {
    cuda_streams::testing::fake_calls(driver)
        .unwrap()
        .into_iter()
        .filter_map(|c| match c {
            FakeCall::Wait { event, stream, .. } => Some((event, stream)),
            _ => None,
        })
        .collect()
}

#[test]
fn an_operator_that_uses_no_stream_attaches_no_event() {
    let server = server();
    let cuda = CudaDriver::fake(1);
    Driver::join(server.local_operator_context(0))
        .unwrap()
        .with_cuda_driver(cuda.clone())
        .run(&mut Lifecycle::new().execute(|_, payload| {
            payload.fastio_output("volume")?.set_values(&[1.0f32; 16])?;
            Ok(())
        }))
        .unwrap();
    Driver::join(server.local_operator_context(1))
        .unwrap()
        .run(&mut Lifecycle::new().execute(|_, payload| {
            assert!(payload.fastio_input("volume")?.event().is_none());
            Ok(())
        }))
        .unwrap();
    // Not one CUDA record or wait.
    assert_eq!(cuda_streams::testing::fake_calls(&cuda), Some(vec![]));
}

#[test]
fn without_a_cuda_device_asking_for_a_stream_fails_the_execute_clearly() {
    // This machine's driver is probed: the test machines have none (a CUDA machine runs
    // the GPU bundle instead).
    if cuda_streams::Driver::probe().is_ok() {
        return;
    }
    let server = server();
    let err = Driver::join(server.local_operator_context(0))
        .unwrap()
        .run(&mut Lifecycle::new().execute(|_, payload| {
            payload.cuda_stream()?;
            Ok(())
        }))
        .unwrap_err();
    let OperatorError::Phase { message, .. } = &err else {
        panic!("expected the execute phase to fail, got {err:?}");
    };
    assert!(
        message.contains("producer: reaching CUDA: no CUDA device"),
        "{message}"
    );
}

#[test]
fn inputs_carrying_events_are_read_without_cuda_when_there_is_none() {
    if cuda_streams::Driver::probe().is_ok() {
        return;
    }
    let server = server();
    Driver::join(server.local_operator_context(0))
        .unwrap()
        .with_cuda_driver(CudaDriver::fake(1))
        .run(&mut Lifecycle::new().execute(|_, payload| {
            payload.cuda_stream()?;
            payload.fastio_output("volume")?.set_values(&[3.0f32; 16])?;
            Ok(())
        }))
        .unwrap();
    // The middle operator has no CUDA: its host input is final, so it reads it.
    Driver::join(server.local_operator_context(1))
        .unwrap()
        .run(&mut Lifecycle::new().execute(|_, payload| {
            let input = payload.fastio_input("volume")?;
            assert!(input.event().is_some());
            assert_eq!(input.to_vec::<f32>()?, vec![3.0; 16]);
            Ok(())
        }))
        .unwrap();
}

/// producer -> middle -> consumer where the producer's `volume` lives on cuda:1 and the
/// middle operator's `mask` in host memory.
fn device_job() -> Arc<Job> {
    let stage = StagePlan::new;
    Arc::new(Job::new(
        JobPlan {
            job_id: "gpu-device".into(),
            job_name: "gpu-device".into(),
            stages: vec![
                stage("producer", vec![], vec![], vec![EntryId(0)]),
                stage("middle", vec![0], vec![EntryId(0)], vec![EntryId(1)]),
                stage("consumer", vec![1], vec![EntryId(1)], vec![]),
            ],
            entries: vec![
                EntryPlan {
                    memory: MemoryKind::Cuda { device: 1 },
                    ..EntryPlan::new("volume", Some(0), ElementType::F32, vec![4, 4])
                },
                EntryPlan::new("mask", Some(1), ElementType::F32, vec![4, 4]),
            ],
        },
        |_| {},
    ))
}

/// How often the host waited for a stream (or a device) in `driver`'s calls.
fn host_waits(driver: &CudaDriver) -> usize {
    cuda_streams::testing::fake_calls(driver)
        .unwrap()
        .into_iter()
        .filter(|c| matches!(c, FakeCall::Synchronize { .. }))
        .count()
}

#[test]
fn device_outputs_skip_the_host_wait_and_their_readers_open_the_event_on_the_entrys_device() {
    let server = fastio_job::host(
        ServerConfig {
            pool_bytes: 1 << 20,
            collapse: false,
            device_driver: Some(CudaDriver::fake(2)),
            ..ServerConfig::default()
        },
        device_job(),
    )
    .unwrap();

    // The producer's only output is device memory: the event goes with it and execute
    // returns without the host waiting; the one host wait is the end of the run's.
    let producer_cuda = CudaDriver::fake(2);
    Driver::join(server.local_operator_context(0))
        .unwrap()
        .with_cuda_driver(producer_cuda.clone())
        .run(&mut Lifecycle::new().execute(|_, payload| {
            payload.cuda_stream()?;
            let volume = payload.fastio_output("volume")?;
            assert_eq!(
                volume.allocation().map(|a| a.kind()),
                Some(MemoryKind::Cuda { device: 1 })
            );
            Ok(())
        }))
        .unwrap();
    let recorded = records(&producer_cuda);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(
        host_waits(&producer_cuda),
        1,
        "only the end of the run waits: {:?}",
        cuda_streams::testing::fake_calls(&producer_cuda)
    );

    // The middle operator opens the event of its device input in cuda:1's context; its
    // output is host memory, so execute ends with the host waiting for its stream.
    let middle_cuda = CudaDriver::fake(2);
    Driver::join(server.local_operator_context(1))
        .unwrap()
        .with_cuda_driver(middle_cuda.clone())
        .run(&mut Lifecycle::new().execute(|_, payload| {
            let volume = payload.fastio_input("volume")?;
            volume.event().ok_or("the device input carries no event")?;
            payload.cuda_stream()?;
            payload.fastio_output("mask")?.set_values(&[1.0f32; 16])?;
            Ok(())
        }))
        .unwrap();
    let calls = cuda_streams::testing::fake_calls(&middle_cuda).unwrap();
    assert!(
        calls.contains(&FakeCall::ImportEvent {
            device: 1,
            event: recorded[0].0
        }),
        "{calls:?}"
    );
    assert_eq!(
        host_waits(&middle_cuda),
        2,
        "execute's wait for its host output, then the end of the run's: {calls:?}"
    );

    // The consumer's host input's event is opened on device 0.
    let consumer_cuda = CudaDriver::fake(2);
    Driver::join(server.local_operator_context(2))
        .unwrap()
        .with_cuda_driver(consumer_cuda.clone())
        .run(&mut Lifecycle::new().execute(|_, payload| {
            assert_eq!(
                payload.fastio_input("mask")?.to_vec::<f32>()?,
                vec![1.0; 16]
            );
            Ok(())
        }))
        .unwrap();
    let calls = cuda_streams::testing::fake_calls(&consumer_cuda).unwrap();
    assert!(
        calls
            .iter()
            .any(|c| matches!(c, FakeCall::ImportEvent { device: 0, .. })),
        "{calls:?}"
    );
}

#[test]
fn a_dynamic_device_output_allocated_in_execute_carries_its_event_to_its_reader() {
    let stage = StagePlan::new;
    let job = Arc::new(Job::new(
        JobPlan {
            job_id: "gpu-dynamic".into(),
            job_name: "gpu-dynamic".into(),
            stages: vec![
                stage("producer", vec![], vec![], vec![EntryId(0)]),
                stage("reader", vec![0], vec![EntryId(0)], vec![]),
            ],
            entries: vec![EntryPlan {
                memory: MemoryKind::Cuda { device: 1 },
                ..EntryPlan::new("volume", Some(0), ElementType::F32, vec![-1, 4])
            }],
        },
        |_| {},
    ));
    let server = fastio_job::host(
        ServerConfig {
            pool_bytes: 1 << 20,
            collapse: false,
            device_driver: Some(CudaDriver::fake(2)),
            ..ServerConfig::default()
        },
        job,
    )
    .unwrap();

    let producer_cuda = CudaDriver::fake(2);
    Driver::join(server.local_operator_context(0))
        .unwrap()
        .with_cuda_driver(producer_cuda.clone())
        .run(&mut Lifecycle::new().execute(|_, payload| {
            payload.cuda_stream()?;
            let volume = payload.fastio_output("volume")?;
            assert!(volume.allocation().is_none());
            volume.update_shape(&[0], &[6])?;
            assert_eq!(
                volume.allocation().map(|a| (a.kind(), a.size())),
                Some((MemoryKind::Cuda { device: 1 }, 6 * 4 * 4))
            );
            Ok(())
        }))
        .unwrap();
    let recorded = records(&producer_cuda);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(
        host_waits(&producer_cuda),
        1,
        "only the end of the run waits"
    );

    let reader_cuda = CudaDriver::fake(2);
    Driver::join(server.local_operator_context(1))
        .unwrap()
        .with_cuda_driver(reader_cuda.clone())
        .run(&mut Lifecycle::new().execute(|_, payload| {
            let volume = payload.fastio_input("volume")?;
            assert_eq!(volume.shape(), vec![6, 4]);
            volume.event().ok_or("the device input carries no event")?;
            let allocation = volume.allocation().ok_or("no memory")?;
            assert_eq!(allocation.kind(), MemoryKind::Cuda { device: 1 });
            let mapped = allocation.map_device(&reader_cuda)?;
            assert_eq!((mapped.device, mapped.read_only), (1, true));
            Ok(())
        }))
        .unwrap();
    let calls = cuda_streams::testing::fake_calls(&reader_cuda).unwrap();
    assert!(
        calls.contains(&FakeCall::ImportEvent {
            device: 1,
            event: recorded[0].0
        }),
        "{calls:?}"
    );
}

#[test]
fn dynamic_outputs_allocated_through_another_handle_get_the_event_and_a_host_one_the_wait() {
    // The Python and C layers open entries of their own: the operator's end of execute
    // must still see what they allocated.
    let stage = StagePlan::new;
    let entry = |name, memory, declared| EntryPlan {
        memory,
        ..EntryPlan::new(name, Some(0), ElementType::F32, declared)
    };
    let job = Arc::new(Job::new(
        JobPlan {
            job_id: "gpu-other-handle".into(),
            job_name: "gpu-other-handle".into(),
            stages: vec![
                stage("producer", vec![], vec![], vec![EntryId(0), EntryId(1)]),
                stage("reader", vec![0], vec![EntryId(0), EntryId(1)], vec![]),
            ],
            entries: vec![
                entry("volume", MemoryKind::Cuda { device: 1 }, vec![-1, 4]),
                entry("sizes", MemoryKind::Host, vec![-1]),
            ],
        },
        |_| {},
    ));
    let server = fastio_job::host(
        ServerConfig {
            pool_bytes: 1 << 20,
            collapse: false,
            device_driver: Some(CudaDriver::fake(2)),
            ..ServerConfig::default()
        },
        job,
    )
    .unwrap();

    let producer_cuda = CudaDriver::fake(2);
    Driver::join(server.local_operator_context(0))
        .unwrap()
        .with_cuda_driver(producer_cuda.clone())
        .run(&mut Lifecycle::new().execute(|driver, payload| {
            payload.cuda_stream()?;
            for info in &driver.stage_info().fastio_outputs {
                let mut other = fastio_job::FastIoEntry::open(driver.context(), info.clone())?;
                other.update_shape(&[0], &[3])?;
            }
            assert!(payload.fastio_output("volume")?.allocation().is_none());
            Ok(())
        }))
        .unwrap();
    let recorded = records(&producer_cuda);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(
        host_waits(&producer_cuda),
        2,
        "execute's wait for its host output, then the end of the run's"
    );

    let reader_cuda = CudaDriver::fake(2);
    Driver::join(server.local_operator_context(1))
        .unwrap()
        .with_cuda_driver(reader_cuda.clone())
        .run(&mut Lifecycle::new().execute(|_, payload| {
            for name in ["volume", "sizes"] {
                let input = payload.fastio_input(name)?;
                input.event().ok_or(format!("{name} carries no event"))?;
            }
            assert_eq!(payload.fastio_input("volume")?.shape(), vec![3, 4]);
            Ok(())
        }))
        .unwrap();
    let calls = cuda_streams::testing::fake_calls(&reader_cuda).unwrap();
    assert!(
        calls.contains(&FakeCall::ImportEvent {
            device: 1,
            event: recorded[0].0
        }),
        "{calls:?}"
    );
}
