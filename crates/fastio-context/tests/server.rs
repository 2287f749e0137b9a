//! The server and its clients under hostile or unlucky conditions: requests before hello,
//! descriptor exhaustion, a silent server, inherited descriptors.

use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};
use std::time::Duration;

use fastio_context::protocol::{PROTOCOL_VERSION, Request, Response};
use fastio_context::{Context, ContextError, Server, ServerConfig};
use fastio_shm::transfer::{recv_message, send_message, seqpacket_pair};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

fn server() -> Server {
    Server::start(ServerConfig::default()).unwrap()
}

fn raw_client() -> OwnedFd {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap()
}

fn connect_raw(socket: &OwnedFd, server: &Server) {
    let name = server.address().strip_prefix('@').unwrap();
    let addr = SocketAddrUnix::new_abstract_name(name.as_bytes()).unwrap();
    rustix::net::connect(socket, &addr).unwrap();
}

fn exchange(socket: &OwnedFd, request: &Request) -> Response {
    send_message(socket.as_fd(), &serde_json::to_vec(request).unwrap(), &[]).unwrap();
    serde_json::from_slice(&recv_message(socket.as_fd()).unwrap().body).unwrap()
}

#[test]
fn every_request_before_hello_is_refused() {
    let server = server();
    let socket = raw_client();
    connect_raw(&socket, &server);
    for request in [
        Request::Stats,
        Request::Create {
            size: 64,
            hugetlb: false,
            kind: Default::default(),
        },
        Request::Join,
    ] {
        let Response::Refused(refusal) = exchange(&socket, &request) else {
            panic!("{request:?} was served before hello");
        };
        assert!(refusal.to_string().contains("must be hello"), "{refusal}");
    }
    assert_eq!(server.stats().resources, 0, "nothing was created");
    assert!(matches!(
        exchange(&socket, &Request::Hello { version: 1 }),
        Response::Refused(_)
    ));
    assert!(matches!(
        exchange(&socket, &Request::Stats),
        Response::Refused(_)
    ));
    assert!(matches!(
        exchange(
            &socket,
            &Request::Hello {
                version: PROTOCOL_VERSION
            }
        ),
        Response::Welcome { .. }
    ));
    assert!(matches!(
        exchange(&socket, &Request::Stats),
        Response::Stats(_)
    ));
}

fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[test]
fn running_out_of_descriptors_does_not_end_the_accept_loop() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let server = server();
    let early = Context::connect(server.address()).unwrap();
    let late = raw_client();
    // A low ceiling, then every descriptor up to it taken.
    let old = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(open_descriptors() + 8),
            maximum: old.maximum,
        },
    )
    .unwrap();
    let mut fillers = Vec::new();
    while let Ok(fd) = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        fillers.push(fd);
    }
    // The server's accept fails with EMFILE while this client waits in the backlog.
    connect_raw(&late, &server);
    std::thread::sleep(Duration::from_millis(100));
    drop(fillers);
    setrlimit(Resource::Nofile, old).unwrap();
    // It is accepted once descriptors are free again; the server served throughout.
    let late = Context::from_socket_with_timeout(late, Duration::from_secs(30)).unwrap();
    late.create(64).unwrap().publish("late").unwrap();
    assert_eq!(early.stats().unwrap().publications, 1);
}

#[test]
fn a_server_that_never_answers_times_out() {
    let (ours, theirs) = seqpacket_pair().unwrap();
    let err = Context::from_socket_with_timeout(ours, Duration::from_millis(200)).unwrap_err();
    assert!(matches!(err, ContextError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("hello"), "{err}");
    drop(theirs);
}

#[test]
fn after_a_timeout_the_connection_refuses_further_requests() {
    let (ours, theirs) = seqpacket_pair().unwrap();
    // A server that welcomes the client, then never answers again.
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        recv_message(theirs.as_fd()).unwrap();
        let welcome = Response::Welcome {
            version: PROTOCOL_VERSION,
        };
        send_message(theirs.as_fd(), &serde_json::to_vec(&welcome).unwrap(), &[]).unwrap();
        recv_message(theirs.as_fd()).unwrap();
        // Its answer comes only after the client gave up: it must not be taken for the
        // answer to a later request.
        stopped.recv().unwrap();
        let late = Response::Stats(Default::default());
        let _ = send_message(theirs.as_fd(), &serde_json::to_vec(&late).unwrap(), &[]);
        theirs
    });
    let ctx = Context::from_socket_with_timeout(ours, Duration::from_millis(200)).unwrap();
    let err = ctx.stats().unwrap_err();
    assert!(matches!(err, ContextError::Timeout { .. }), "{err}");
    stop.send(()).unwrap();
    let theirs = server.join().unwrap();
    let err = ctx.create(8).unwrap_err();
    assert!(matches!(err, ContextError::OutOfStep), "{err}");
    drop(theirs);
}

fn is_open(fd: i32) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok()
}

#[test]
fn a_failed_fd_connect_never_closes_the_descriptor() {
    let (read, _write) = rustix::pipe::pipe().unwrap();
    let n = read.as_raw_fd();
    let err = Context::connect(&format!("fd:{n}")).unwrap_err();
    assert!(
        err.to_string().contains("not a context connection"),
        "{err}"
    );
    assert!(is_open(n), "the pipe must stay open");
    let err = Context::connect("fd:0").unwrap_err();
    assert!(matches!(err, ContextError::Connect { .. }), "{err}");
    // A socket with nobody answering: the hello fails, the descriptor stays.
    let (ours, theirs) = seqpacket_pair().unwrap();
    drop(theirs);
    let n = ours.as_raw_fd();
    assert!(Context::connect(&format!("fd:{n}")).is_err());
    assert!(is_open(n));
    drop(ours);
    drop(read);
}

#[test]
fn fd_n_is_taken_once_per_process_and_shared() {
    let server = server();
    let n = server.client_socket().unwrap().into_raw_fd();
    let first = Context::connect(&format!("fd:{n}")).unwrap();
    let second = Context::connect(&format!("fd:{n}")).unwrap();
    let a = first.create(32).unwrap();
    a.publish("shared").unwrap();
    drop(first);
    // One conversation, still open after the first context is gone.
    assert_eq!(server.stats().connections, 1);
    let got = second.get("shared").unwrap();
    assert_eq!(got.size(), 32);
    assert!(is_open(n));
    drop(a);
}
