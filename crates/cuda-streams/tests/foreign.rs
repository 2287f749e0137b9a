//! Waits on streams this crate did not create (the consumer's stream of DLPack and the CUDA
//! array interface), on the CPU fake.

use cuda_streams::testing::{FakeCall, fake_calls};
use cuda_streams::{CudaError, Driver, InterprocessEvent, LEGACY_DEFAULT_STREAM};

#[test]
fn a_foreign_stream_waits_on_the_event_and_zero_is_refused() {
    let driver = Driver::fake(2);
    let event = InterprocessEvent::new(&driver, 1).unwrap();
    let foreign = 0x7f00_dead_0000_usize;
    event.make_raw_stream_wait(foreign).unwrap();
    event.make_raw_stream_wait(LEGACY_DEFAULT_STREAM).unwrap();
    let err = event.make_raw_stream_wait(0).unwrap_err();
    assert!(
        matches!(err, CudaError::InvalidArgument { ref reason, .. } if reason.contains("ambiguous")),
        "{err}"
    );
    assert_eq!(
        fake_calls(&driver).unwrap(),
        vec![
            FakeCall::Wait {
                event: event.as_raw(),
                device: 1,
                stream: Some(foreign)
            },
            FakeCall::Wait {
                event: event.as_raw(),
                device: 1,
                stream: Some(LEGACY_DEFAULT_STREAM)
            },
        ]
    );
}
