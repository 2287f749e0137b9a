//! Real processes sharing real pages through a context server.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::time::Duration;

use fastio::context::protocol::{Request, Response};
use fastio::context::{CreateError, GetError, PublishError, ReleaseError};
use fastio::{AccessMode, Context, ContextError, ElementType, RequestError, Stats};
use fastio_tests::{Probe, shmem_bytes, wait_until};

const PROBE: &str = env!("CARGO_BIN_EXE_fastio-probe");

/// A context server in its own process, as `fastio serve` runs it.
fn server(pool_mib: u64) -> (Probe, String) {
    let mut server = Probe::spawn(PROBE, None, &["serve", &pool_mib.to_string()]).unwrap();
    let address = server.line().unwrap();
    assert!(address.starts_with('@'), "{address}");
    (server, address)
}

fn stats(address: &str) -> Stats {
    Context::connect(address).unwrap().stats().unwrap()
}

#[test]
fn a_write_in_one_process_is_seen_by_another_through_the_same_pages() {
    let (_server, addr) = server(0);
    let mut publisher =
        Probe::spawn(PROBE, Some(&addr), &["publish", "vol", "1048576", "1"]).unwrap();
    assert_eq!(publisher.line().unwrap(), "published");
    // The reader maps the pages first...
    let mut reader = Probe::spawn(PROBE, Some(&addr), &["hold", "vol"]).unwrap();
    assert_eq!(reader.line().unwrap(), "holding 1048576");
    assert_eq!(reader.ask("read 1000000").unwrap(), "byte 1");
    // ...then a third process writes; the reader sees it without asking anyone.
    let mut writer = Probe::spawn(PROBE, Some(&addr), &["write", "vol", "1000000", "42"]).unwrap();
    assert_eq!(writer.line().unwrap(), "written");
    assert_eq!(reader.ask("read 1000000").unwrap(), "byte 42");
    assert_eq!(reader.ask("read 999999").unwrap(), "byte 1");
    reader.finish().unwrap();
}

#[test]
fn concurrent_publishers_of_one_name_have_exactly_one_winner_per_round() {
    let (_server, addr) = server(0);
    const ROUNDS: usize = 300;
    let a = Probe::spawn(PROBE, Some(&addr), &["race", "race", &ROUNDS.to_string()]).unwrap();
    let b = Probe::spawn(PROBE, Some(&addr), &["race", "race", &ROUNDS.to_string()]).unwrap();
    let (a, b) = (a.rest().unwrap(), b.rest().unwrap());
    assert_eq!((a.len(), b.len()), (ROUNDS, ROUNDS));
    for (i, (la, lb)) in a.iter().zip(&b).enumerate() {
        let (wa, wb) = (la == &format!("{i} won"), lb == &format!("{i} won"));
        assert!(wa ^ wb, "round {i}: {la:?} / {lb:?}");
        let loser = if wa { lb } else { la };
        assert!(loser.contains("already published"), "{loser}");
    }
    assert_eq!(stats(&addr).publications, ROUNDS);
}

#[test]
fn bad_requests_get_clear_errors_and_disturb_nothing() {
    let (_server, addr) = server(0);
    let ctx = Context::connect(&addr).unwrap();
    ctx.publish_slice(&[5u32, 6, 7], &[3], "keep").unwrap();

    let unknown = ctx.get("nope").unwrap_err();
    assert!(
        matches!(
            unknown.refusal(),
            Some(RequestError::Get(GetError::UnknownName { .. }))
        ),
        "{unknown}"
    );
    assert!(unknown.to_string().contains("\"nope\""));

    let doomed = ctx.create(16).unwrap();
    doomed.publish("doomed").unwrap();
    let other = ctx.get("doomed").unwrap();
    doomed.free().unwrap();
    let freed = ctx.get("doomed").unwrap_err();
    assert!(
        matches!(
            freed.refusal(),
            Some(RequestError::Get(GetError::NameFreed { .. }))
        ),
        "{freed}"
    );
    assert_eq!(
        other.read_bytes(0, 16).unwrap(),
        vec![0; 16],
        "held handles stay valid"
    );
    other.release().unwrap();

    for bad in ["", "a b", "x//y", "../up", &"n".repeat(256)] {
        let a = ctx.create(8).unwrap();
        let err = a.publish(bad).unwrap_err();
        assert!(
            matches!(
                err.refusal(),
                Some(RequestError::Publish(PublishError::InvalidName { .. }))
            ),
            "{err}"
        );
    }
    // Zero bytes is an empty array's memory, not a bad input.
    assert_eq!(ctx.create(0).unwrap().size(), 0);
    let huge = ctx.create(usize::MAX / 2).unwrap_err();
    assert!(
        matches!(
            huge.refusal(),
            Some(RequestError::Create(CreateError::OutOfMemory { .. }))
        ),
        "{huge}"
    );
    assert!(
        huge.to_string().contains(&(usize::MAX / 2).to_string()),
        "{huge}"
    );

    // Nothing else was disturbed.
    assert_eq!(
        ctx.get("keep").unwrap().to_vec::<u32>().unwrap(),
        vec![5, 6, 7]
    );
}

#[test]
fn released_or_foreign_handles_are_refused_by_the_server() {
    // Speaks the wire protocol directly, as a buggy or hostile client would.
    let (_server, addr) = server(0);
    let name = addr.strip_prefix('@').unwrap();
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        None,
    )
    .unwrap();
    rustix::net::connect(
        &socket,
        &rustix::net::SocketAddrUnix::new_abstract_name(name.as_bytes()).unwrap(),
    )
    .unwrap();
    let ask = |body: &[u8]| -> Response {
        fastio::shm::transfer::send_message(socket.as_fd(), body, &[]).unwrap();
        let got = fastio::shm::transfer::recv_message(socket.as_fd()).unwrap();
        serde_json::from_slice(&got.body).unwrap()
    };
    let json = |r: &Request| serde_json::to_vec(r).unwrap();
    assert!(matches!(
        ask(&json(&Request::Hello {
            version: fastio::context::protocol::PROTOCOL_VERSION
        })),
        Response::Welcome { .. }
    ));
    let Response::Handle { id, .. } = ask(&json(&Request::Create {
        size: 64,
        hugetlb: false,
        kind: Default::default(),
    })) else {
        panic!("no handle")
    };
    assert_eq!(
        ask(&json(&Request::Release { id, handle: 0 })),
        Response::Done
    );
    // Double release, and use after release:
    for request in [
        Request::Release { id, handle: 0 },
        Request::Free { id, handle: 0 },
        Request::Publish {
            id,
            name: "x".into(),
            typed: None,
            event: None,
            replace: false,
        },
    ] {
        let not_held: RequestError = match request {
            Request::Publish { .. } => PublishError::NotHeld { id: id.0 }.into(),
            _ => ReleaseError::NotHeld { id: id.0 }.into(),
        };
        assert_eq!(
            ask(&json(&request)),
            Response::Refused(not_held),
            "{request:?}"
        );
    }
    // Garbage is refused, and the connection keeps working.
    assert!(matches!(
        ask(b"{\"op\":\"explode\"}"),
        Response::Refused(RequestError::BadRequest { .. })
    ));
    assert!(matches!(
        ask(b"\xff\x00"),
        Response::Refused(RequestError::BadRequest { .. })
    ));
    assert!(matches!(ask(&json(&Request::Stats)), Response::Stats(_)));
}

#[test]
fn published_metadata_stays_as_published_after_local_changes() {
    let (_server, addr) = server(0);
    let producer = Context::connect(&addr).unwrap();
    let consumer = Context::connect(&addr).unwrap();
    let mut a = producer.create(64).unwrap();
    a.set_type_and_dimensions(ElementType::I16, &[4, 8])
        .unwrap();
    a.publish("as-i16").unwrap();
    a.set_type_and_dimensions(ElementType::U8, &[64]).unwrap();
    a.publish("as-u8").unwrap();
    a.set_type_and_dimensions(ElementType::F64, &[2, 2])
        .unwrap();
    let b = consumer.get("as-i16").unwrap();
    assert_eq!(
        (b.element_type(), b.dimensions()),
        (Some(ElementType::I16), Some(&[4, 8][..]))
    );
    let c = consumer.get("as-u8").unwrap();
    assert_eq!(
        (c.element_type(), c.dimensions()),
        (Some(ElementType::U8), Some(&[64][..]))
    );
    // Each handle's metadata is its own.
    let mut d = consumer.get("as-i16").unwrap();
    d.set_type_and_dimensions(ElementType::U32, &[16]).unwrap();
    assert_eq!(b.element_type(), Some(ElementType::I16));
    assert_eq!(
        consumer.get("as-i16").unwrap().element_type(),
        Some(ElementType::I16)
    );
    // Metadata that needs more bytes than the allocation is refused locally.
    assert!(d.set_type_and_dimensions(ElementType::U64, &[9]).is_err());
    assert_eq!(d.element_type(), Some(ElementType::U32));
}

#[test]
fn a_client_killed_with_sigkill_loses_its_references_and_memory_is_reclaimed() {
    const SIZE: u64 = 256 << 20;
    let (_server, addr) = server(0);
    let holder = {
        let mut p = Probe::spawn(PROBE, Some(&addr), &["hold-private", &SIZE.to_string()]).unwrap();
        assert_eq!(p.line().unwrap(), "ready");
        p
    };
    let held = stats(&addr);
    assert_eq!((held.resources, held.handles), (1, 1));
    assert_eq!(held.live_bytes, SIZE);
    let shmem_held = shmem_bytes().unwrap();
    holder.kill9().unwrap();
    wait_until(Duration::from_secs(10), || Ok(stats(&addr).resources == 0)).unwrap();
    let after = stats(&addr);
    assert_eq!(
        (after.live_bytes, after.handles, after.pooled_bytes),
        (0, 0, 0)
    );
    // The machine-wide figure moves with other processes too; the segment is 256 MiB.
    wait_until(Duration::from_secs(10), || {
        Ok(shmem_bytes()? + SIZE * 3 / 4 < shmem_held)
    })
    .unwrap();
}

#[test]
fn a_client_killed_while_keeping_parked_mappings_leaks_nothing() {
    const SIZE: u64 = 128 << 20;
    let (_server, addr) = server(0);
    let mut holder =
        Probe::spawn(PROBE, Some(&addr), &["park-and-hold", &SIZE.to_string()]).unwrap();
    assert_eq!(holder.line().unwrap(), "ready 3");
    let held = stats(&addr);
    assert_eq!(
        (held.resources, held.handles, held.live_bytes),
        (1, 1, SIZE)
    );
    // The three parked mappings keep no memory: the server punched their segments. Parked
    // mappings keep their page tables, so the holder's own shared resident memory shows
    // it (the machine-wide figure moves with the other tests running at the same time).
    let holder_shmem = || -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", holder.pid()))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("RssShmem:"))
            .ok_or_else(|| anyhow::anyhow!("no RssShmem line"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kib << 10)
    };
    let resident = wait_until(Duration::from_secs(10), || Ok(holder_shmem()? < 2 * SIZE));
    assert!(
        resident.is_ok(),
        "{} MiB of shared memory resident in a holder of one live 128 MiB allocation",
        holder_shmem().unwrap() >> 20
    );
    let shmem_held = shmem_bytes().unwrap();
    holder.kill9().unwrap();
    wait_until(Duration::from_secs(10), || Ok(stats(&addr).resources == 0)).unwrap();
    let after = stats(&addr);
    assert_eq!(
        (after.live_bytes, after.handles, after.pooled_bytes),
        (0, 0, 0)
    );
    wait_until(Duration::from_secs(10), || {
        Ok(shmem_bytes()? + SIZE * 3 / 4 < shmem_held)
    })
    .unwrap();
}

fn fastio_files() -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for dir in ["/dev/shm", "/tmp", "/run", "/var/tmp"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.contains("fastio") && !name.starts_with(".tmp") {
                    found.insert(format!("{dir}/{name}"));
                }
            }
        }
    }
    found
}

#[test]
fn clients_keep_their_mappings_when_the_server_is_killed_and_nothing_is_left_behind() {
    let files_before = fastio_files();
    let (server, addr) = server(0);
    let mut publisher =
        Probe::spawn(PROBE, Some(&addr), &["publish", "kept", "65536", "9"]).unwrap();
    assert_eq!(publisher.line().unwrap(), "published");
    let mut reader = Probe::spawn(PROBE, Some(&addr), &["hold", "kept"]).unwrap();
    assert_eq!(reader.line().unwrap(), "holding 65536");
    let abstract_name = addr.trim_start_matches('@').to_owned();
    assert!(
        std::fs::read_to_string("/proc/net/unix")
            .unwrap()
            .contains(&abstract_name)
    );

    server.kill9().unwrap();
    assert_eq!(reader.ask("read 65535").unwrap(), "byte 9");
    let answer = reader.ask("stats").unwrap();
    assert!(
        answer.starts_with("error the context server is gone"),
        "{answer}"
    );
    assert_eq!(reader.ask("read 0").unwrap(), "byte 9");
    reader.finish().unwrap();

    assert!(
        !std::fs::read_to_string("/proc/net/unix")
            .unwrap()
            .contains(&abstract_name)
    );
    assert_eq!(
        fastio_files(),
        files_before,
        "no file may outlive the context"
    );
}

#[test]
fn the_in_process_context_refuses_what_the_machine_cannot_hold() {
    let err = Context::in_process().create(usize::MAX / 4).unwrap_err();
    assert!(
        matches!(
            err,
            ContextError::Refused(RequestError::Create(CreateError::OutOfMemory { .. }))
        ),
        "{err}"
    );
}

#[test]
fn read_only_gets_cannot_write() {
    let ctx = Context::in_process();
    ctx.publish_slice(&[1u8; 32], &[32], "ro").unwrap();
    let mut ro = ctx.get_with("ro", AccessMode::ReadOnly).unwrap();
    assert!(matches!(
        ro.write_bytes(0, &[0]),
        Err(ContextError::ReadOnly)
    ));
    assert!(ro.as_mut_ptr().is_err());
    assert_eq!(ro.read_bytes(0, 32).unwrap(), vec![1; 32]);
}

#[test]
fn a_read_only_descriptor_cannot_be_made_to_write_by_a_user_that_is_not_root() {
    use std::os::unix::process::CommandExt;
    let mut probe = std::process::Command::new(PROBE);
    probe.arg("descriptor-tricks");
    if rustix::process::getuid().is_root() {
        // The guarantee is for users that are not root: run the probe as one.
        probe.uid(65534).gid(65534);
    }
    let out = probe.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key:?} in {text}"))
            .trim()
            .to_owned()
    };
    // EACCES: the inode's mode refuses a writable reopen.
    assert_eq!(line("reopen"), "refused (13)");
    // The owner may chmod it back, and reopen; the write seal then refuses every write.
    assert_eq!(line("chmod"), "allowed");
    assert_eq!(line("write"), "refused (1)");
    assert_eq!(line("punch"), "refused (1)");
    assert!(line("map-writable").starts_with("refused"), "{text}");
    assert_eq!(line("data"), "final");
}
