//! The public API on a machine without a CUDA driver: clear errors and the documented no-pool
//! behaviour, never a panic. (On a GPU machine these tests check the GPU half instead.)

use cuda_streams::{CudaError, Driver, Message, OperatorContext, StreamError};

#[test]
fn probe_reports_no_device_or_a_usable_driver() {
    match Driver::probe() {
        Ok(d) => assert!(d.device_count() >= 1),
        Err(e) => {
            assert!(matches!(e, CudaError::NoDevice { .. }), "{e}");
            assert!(e.to_string().starts_with("no CUDA device"), "{e}");
        }
    }
}

#[test]
fn operator_without_gpu_has_no_pool_and_passes_default_stream() {
    let mut o = OperatorContext::builder("op")
        .input("in")
        .output("out")
        .build()
        .expect("build");
    if Driver::probe().is_ok() {
        assert!(o.pool().is_some(), "a GPU machine gets a default pool");
        return;
    }
    assert!(o.pool().is_none());
    o.begin_compute();
    assert_eq!(o.receive("in:0", Message::new(7)).expect("receive"), 7);
    assert_eq!(o.receive_cuda_streams("in").expect("streams"), vec![None]);
    assert_eq!(o.receive_cuda_stream("in", true, true).expect("rcs"), None);
    assert_eq!(o.allocate_cuda_stream("x"), Err(StreamError::NoPool));
    assert!(o.emit("out", ()).expect("emit").stream().is_none());
    o.stop().expect("stop");
}

#[test]
fn acceptance_bundle_exits_cleanly_without_a_gpu() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cuda-streams-acceptance"))
        .arg("test")
        .output()
        .expect("run the bundle");
    if Driver::probe().is_err() {
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("no CUDA device"));
    } else {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
