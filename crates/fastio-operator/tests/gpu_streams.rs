//! The operator's CUDA stream end to end through a job's context server, on cuda-streams' CPU
//! fake (`cuda_streams::Driver::fake`): an operator that uses its stream hands every output an
//! event recorded on it, the next operator's stream waits on that event when execute opens its
//! inputs, and an operator that neither uses a stream nor receives an event never reaches CUDA.

use std::sync::{Arc, Mutex};

use fastio_context::job::{EntryId, EntryPlan, Job, JobPlan, StagePlan};
use fastio_context::{EventHandle, Server, ServerConfig};
use fastio_meta::ElementType;
use fastio_operator::cuda_streams::{self, Driver as CudaDriver};
use fastio_operator::{Driver, Lifecycle, OperatorError};

/// producer -> middle -> consumer, each through one pre-allocated entry; `spare` is a
/// dynamic output of the producer that it never allocates.
fn job() -> Arc<Job> {
    let stage = |name: &str, upstream, inputs, outputs| StagePlan {
        name: name.into(),
        upstream,
        inputs: vec![],
        outputs: vec![],
        fastio_inputs: inputs,
        fastio_outputs: outputs,
    };
    let entry = |name: &str, producer, declared| EntryPlan {
        name: name.into(),
        producer: Some(producer),
        element_type: ElementType::F32,
        declared,
    };
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

fn server() -> Server {
    Server::start_job(
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
    let producer_stream = Arc::new(Mutex::new(None));

    // The producer queues its work on its stream.
    let seen = producer_stream.clone();
    Driver::join(server.local_operator_context(0))
        .unwrap()
        .with_cuda_driver(CudaDriver::fake(1))
        .run(&mut Lifecycle::new().execute(move |_, payload| {
            let stream = payload.cuda_stream()?;
            // Held for the run: the same stream again.
            assert_eq!(payload.cuda_stream()?.id(), stream.id());
            *seen.lock().unwrap() = Some(stream.as_raw());
            payload.fastio_output("volume")?.set_values(&[1.0f32; 16])?;
            Ok(())
        }))
        .unwrap();
    assert!(producer_stream.lock().unwrap().is_some());

    // The middle operator finds the producer's event on its input, and its own stream (already
    // ordered after it when execute starts) records a new one for its output.
    let events = Arc::new(Mutex::new(Vec::new()));
    let got = events.clone();
    Driver::join(server.local_operator_context(1))
        .unwrap()
        .with_cuda_driver(CudaDriver::fake(1))
        .run(&mut Lifecycle::new().execute(move |_, payload| {
            let input = payload.fastio_input("volume")?;
            let event = input
                .event()
                .ok_or("the producer's output carries no event")?;
            got.lock().unwrap().push(event);
            let _stream = payload.cuda_stream()?;
            payload.fastio_output("mask")?.set_values(&[2.0f32; 16])?;
            Ok(())
        }))
        .unwrap();

    // The consumer sees the middle operator's event.
    let got = events.clone();
    Driver::join(server.local_operator_context(2))
        .unwrap()
        .with_cuda_driver(CudaDriver::fake(1))
        .run(&mut Lifecycle::new().execute(move |_, payload| {
            let input = payload.fastio_input("mask")?;
            got.lock().unwrap().push(
                input
                    .event()
                    .ok_or("the middle operator's output carries no event")?,
            );
            assert_eq!(input.to_vec::<f32>()?, vec![2.0; 16]);
            Ok(())
        }))
        .unwrap();
    let events = events.lock().unwrap();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| fake_event_number(e) > 0));
}

#[test]
fn an_operator_that_uses_no_stream_attaches_no_event() {
    let server = server();
    Driver::join(server.local_operator_context(0))
        .unwrap()
        .with_cuda_driver(CudaDriver::fake(1))
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
