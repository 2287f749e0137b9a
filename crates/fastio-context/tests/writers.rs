//! Clara's writer exclusivity, kept by the context for every handle: a second writer
//! fails to take the write mapping, whether it is another handle of the same client or
//! of another; run over both transports (in-process and the socket).

use fastio_context::{Context, ContextError, RequestError, Server, ServerConfig, WriteError};

/// Runs `check` on an in-process context and on two clients of a server.
fn both(check: impl Fn(&Context, &Context)) {
    let local = Context::in_process();
    check(&local, &local);
    let server = Server::start(ServerConfig::default()).unwrap();
    let a = Context::connect(server.address()).unwrap();
    let b = Context::connect(server.address()).unwrap();
    check(&a, &b);
}

fn busy(e: ContextError) -> bool {
    matches!(
        e,
        ContextError::Refused(RequestError::Write(WriteError::WriterBusy { .. }))
    )
}

#[test]
fn a_second_handle_cannot_take_the_write_mapping_of_the_same_client_or_another() {
    both(|a, b| {
        let first = a.create(64).unwrap();
        first.publish("w").unwrap();
        let same_client = a.get("w").unwrap();
        let other_client = b.get("w").unwrap();
        first.acquire_write().unwrap();
        first.acquire_write().unwrap();
        assert!(busy(same_client.acquire_write().unwrap_err()));
        assert!(busy(other_client.acquire_write().unwrap_err()));
        first.release_write().unwrap();
        assert!(busy(same_client.acquire_write().unwrap_err()), "one left");
        first.release_write().unwrap();
        same_client.acquire_write().unwrap();
        assert!(matches!(
            first.release_write().unwrap_err(),
            ContextError::Refused(RequestError::Write(WriteError::NotWriter { .. }))
        ));
        same_client.release_write().unwrap();
        first.free().unwrap();
    });
}

#[test]
fn releasing_or_dropping_the_writing_handle_lets_the_next_writer_in() {
    both(|a, b| {
        let first = a.create(64).unwrap();
        first.publish("w").unwrap();
        let second = a.get("w").unwrap();
        let third = b.get("w").unwrap();
        first.acquire_write().unwrap();
        first.release().unwrap();
        second.acquire_write().unwrap();
        assert!(busy(third.acquire_write().unwrap_err()));
        drop(second);
        third.acquire_write().unwrap();
        third.free().unwrap();
    });
}

#[test]
fn a_read_only_handle_is_never_a_writer() {
    both(|a, b| {
        let w = a.create(8).unwrap();
        w.publish("w").unwrap();
        let r = b
            .get_with("w", fastio_context::AccessMode::ReadOnly)
            .unwrap();
        assert!(matches!(
            r.acquire_write().unwrap_err(),
            ContextError::ReadOnly
        ));
        w.free().unwrap();
    });
}
