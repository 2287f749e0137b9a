//! The context-level GPU scenarios of `fastio-gpu-handoff` (`device-kill`: kill -9 of a
//! client holding device memory while another reads it; `copy`: host <-> device copies with
//! the host mapping registered once; `peer`: a cuda:0 allocation read by another process
//! through its mapping on cuda:1) run here on cuda-streams' CPU fake, whose device memory
//! is memfds crossing processes as descriptors: the same processes, context and checks as on
//! the GPU machine, without a GPU.

use std::process::Command;

const HANDOFF: &str = env!("CARGO_BIN_EXE_fastio-gpu-handoff");

fn run(mode: &str) -> String {
    let out = Command::new(HANDOFF)
        .arg(mode)
        .env("FASTIO_GPU_HANDOFF_FAKE", "1")
        .output()
        .expect("running fastio-gpu-handoff");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.starts_with("PASS"),
        "{mode}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn a_device_holder_killed_leaves_the_reader_reading_and_nothing_leaked() {
    let out = run("device-kill");
    assert!(out.contains("creator killed (signal: 9"), "{out}");
    assert!(out.contains("kept 64 MiB warm"), "{out}");
}

#[test]
fn host_and_device_allocations_round_trip_with_one_registration_each() {
    let out = run("copy");
    assert!(out.contains("registered once"), "{out}");
}

#[test]
fn a_device_allocation_is_read_by_another_process_through_its_peer_gpu() {
    let out = run("peer");
    assert!(out.contains("READ 0 wrong of 16777216 bytes"), "{out}");
    assert!(out.contains("peer mapping on cuda:1"), "{out}");
}
