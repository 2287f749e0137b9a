//! The job runtime's rules, as clients meet them through a hosted job's server: the
//! server's own message handling ([`Session`]), the registry behind it, no mocks.
//!
//! A reader never gets a way to write an input; a plan that does not hold together is
//! refused before the server starts (rather than panicking a connection later); a stage
//! cannot take back the outcome of its execute; ids a job still knows never name other
//! memory after the server is closed; a stage waiting for its inputs holds nothing, and an
//! abort reaches it over its socket.

use std::sync::Arc;

use fastio_context::protocol::{
    AccessMode, EventHandle, PROTOCOL_VERSION, Phase, Request, ResourceId, Response,
};
use fastio_context::registry::GrantedMemory;
use fastio_context::server::Session;
use fastio_context::{
    ContextError, EntryError, GetError, PublishError, ReleaseError, RequestError, ServerConfig,
    WriteError,
};
use fastio_job::{EntryId, EntryPlan, Job, JobPlan, JobServer, StagePlan};
use fastio_meta::ElementType;

fn config() -> ServerConfig {
    ServerConfig {
        collapse: false,
        ..ServerConfig::default()
    }
}

fn stage(name: &str, upstream: Vec<usize>, inputs: Vec<u32>, outputs: Vec<u32>) -> StagePlan {
    let ids = |ids: Vec<u32>| ids.into_iter().map(EntryId).collect();
    StagePlan::new(name, upstream, ids(inputs), ids(outputs))
}

fn entry(name: &str, producer: Option<usize>, declared: Vec<i64>) -> EntryPlan {
    EntryPlan::new(name, producer, ElementType::U8, declared)
}

/// "make" produces "fixed" (8 bytes, pre-allocated) and "sized" (dynamic); "use" reads
/// both.
fn two_stages() -> JobPlan {
    JobPlan {
        job_id: "j".into(),
        job_name: "rules".into(),
        stages: vec![
            stage("make", vec![], vec![], vec![0, 1]),
            stage("use", vec![0], vec![0, 1], vec![]),
        ],
        entries: vec![
            entry("fixed", Some(0), vec![8]),
            entry("sized", Some(0), vec![-1]),
        ],
    }
}

fn host(plan: JobPlan) -> Result<JobServer, ContextError> {
    fastio_job::host(config(), Arc::new(Job::new(plan, |_| {})))
}

fn call(session: &mut Session, request: Request) -> (Response, Option<GrantedMemory>) {
    let (body, memory) = session.handle(&serde_json::to_vec(&request).unwrap());
    (serde_json::from_slice(&body).unwrap(), memory)
}

/// A greeted session of stage `stage` that has joined.
fn operator(server: &JobServer, stage: usize) -> Session {
    let mut session = server.operator_session(stage);
    let hello = Request::Hello {
        version: PROTOCOL_VERSION,
    };
    assert!(matches!(
        call(&mut session, hello).0,
        Response::Welcome { .. }
    ));
    assert!(matches!(
        call(&mut session, Request::Join).0,
        Response::Joined(_)
    ));
    session
}

fn refusal(answer: (Response, Option<GrantedMemory>)) -> RequestError {
    match answer {
        (Response::Refused(e), None) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn entry_refusal(answer: (Response, Option<GrantedMemory>)) -> EntryError {
    match refusal(answer) {
        RequestError::Entry(e) => e,
        other => panic!("expected an entry refusal, got {other:?}"),
    }
}

/// A handle's id and its memory.
fn handle(answer: (Response, Option<GrantedMemory>)) -> (ResourceId, GrantedMemory) {
    match answer {
        (Response::Handle { id, .. }, Some(memory)) => (id, memory),
        other => panic!("expected a handle, got {other:?}"),
    }
}

fn host_segment(memory: GrantedMemory) -> fastio_shm::Segment {
    match memory {
        GrantedMemory::Host(segment) => segment,
        GrantedMemory::Device(_) => panic!("expected host memory"),
    }
}

fn open(entry: u32, access: AccessMode) -> Request {
    Request::OpenEntry {
        entry: EntryId(entry),
        access,
    }
}

fn finished(failure: Option<&str>) -> Request {
    Request::Finished {
        phase: Phase::Execute,
        failure: failure.map(str::to_owned),
    }
}

#[test]
fn a_reader_has_no_way_to_write_or_take_away_an_input() {
    let server = host(two_stages()).unwrap();
    let mut make = operator(&server, 0);
    let (fixed, memory) = handle(call(&mut make, open(0, AccessMode::ReadWrite)));
    let mapping = fastio_shm::Mapping::new(
        &host_segment(memory),
        fastio_shm::Access::ReadWrite,
        fastio_shm::Prefault::Lazy,
    )
    .unwrap();
    mapping.write_at(0, b"written!").unwrap();
    drop(mapping);
    handle(call(
        &mut make,
        Request::AllocateEntry {
            entry: EntryId(1),
            dims: vec![3],
        },
    ));
    // The producer publishes its output under a name, then finishes.
    assert_eq!(
        call(
            &mut make,
            Request::Publish {
                id: fixed,
                name: "fixed-copy".into(),
                typed: None,
                event: None,
                replace: false,
            }
        )
        .0,
        Response::Done
    );
    assert!(matches!(
        call(&mut make, finished(None)).0,
        Response::Reclaimed { .. }
    ));

    let mut reader = operator(&server, 1);
    // No writable descriptor through the job's requests.
    for e in [0, 1] {
        assert_eq!(
            entry_refusal(call(&mut reader, open(e, AccessMode::ReadWrite))),
            EntryError::InputReadOnly {
                name: ["fixed", "sized"][e as usize].into()
            }
        );
    }
    assert!(matches!(
        entry_refusal(call(
            &mut reader,
            Request::AllocateEntry {
                entry: EntryId(1),
                dims: vec![5],
            }
        )),
        EntryError::InputReadOnly { .. }
    ));
    assert!(matches!(
        entry_refusal(call(
            &mut reader,
            Request::SetEntryEvent {
                entry: EntryId(0),
                event: EventHandle([1; 64]),
            }
        )),
        EntryError::InputReadOnly { .. }
    ));
    // The read-only handle it gets: its descriptor maps read-only only, and the
    // registry refuses every write path of the handle.
    let (id, memory) = handle(call(&mut reader, open(0, AccessMode::ReadOnly)));
    assert_eq!(id, fixed);
    let segment = host_segment(memory);
    assert!(!segment.is_writable());
    assert!(
        fastio_shm::Mapping::new(
            &segment,
            fastio_shm::Access::ReadWrite,
            fastio_shm::Prefault::Lazy
        )
        .is_err()
    );
    assert_eq!(
        refusal(call(&mut reader, Request::AcquireWrite { id, handle: 1 })),
        RequestError::Write(WriteError::ReadOnlyHandle { id: id.0 })
    );
    assert_eq!(
        refusal(call(&mut reader, Request::Free { id, handle: 1 })),
        RequestError::Release(ReleaseError::ReadOnlyHandle { id: id.0 })
    );
    // Nor can it publish over the producer's name, or withdraw it.
    assert_eq!(
        refusal(call(
            &mut reader,
            Request::Publish {
                id,
                name: "fixed-copy".into(),
                typed: None,
                event: None,
                replace: true,
            }
        )),
        RequestError::Publish(PublishError::NotPublisher {
            name: "fixed-copy".into()
        })
    );
    assert!(matches!(
        refusal(call(
            &mut reader,
            Request::Unpublish {
                name: "fixed-copy".into()
            }
        )),
        RequestError::Unpublish(_)
    ));
    // What it publishes itself is read-only for everyone.
    assert_eq!(
        call(
            &mut reader,
            Request::Publish {
                id,
                name: "reader-copy".into(),
                typed: None,
                event: None,
                replace: false,
            }
        )
        .0,
        Response::Done
    );
    let mut other = server.session();
    call(
        &mut other,
        Request::Hello {
            version: PROTOCOL_VERSION,
        },
    );
    assert_eq!(
        refusal(call(
            &mut other,
            Request::Get {
                name: "reader-copy".into(),
                access: AccessMode::ReadWrite
            }
        )),
        RequestError::Get(GetError::ReadOnlyPublication {
            name: "reader-copy".into()
        })
    );
    // Its bytes are the producer's, for every reader to come.
    let (_, memory) = handle(call(&mut reader, open(0, AccessMode::ReadOnly)));
    let read = fastio_shm::Mapping::new(
        &host_segment(memory),
        fastio_shm::Access::ReadOnly,
        fastio_shm::Prefault::Lazy,
    )
    .unwrap();
    let mut bytes = [0u8; 8];
    read.read_at(0, &mut bytes).unwrap();
    assert_eq!(&bytes, b"written!");
}

#[test]
fn a_plan_that_does_not_hold_together_is_refused_before_the_server_starts() {
    let broken = |change: &dyn Fn(&mut JobPlan)| {
        let mut plan = two_stages();
        change(&mut plan);
        match host(plan) {
            Err(ContextError::Refused(RequestError::BadRequest { message })) => message,
            Err(e) => panic!("expected the plan refused, got {e}"),
            Ok(_) => panic!("a broken plan was hosted"),
        }
    };
    // Each of these once panicked a connection thread (await, join, listing) or left a
    // stage waiting for ever.
    let message = broken(&|p| p.stages[1].upstream = vec![5]);
    assert!(message.contains("\"use\" waits on stage #5"), "{message}");
    let message = broken(&|p| p.stages[1].fastio_inputs.push(EntryId(9)));
    assert!(message.contains("FastIO entry #9"), "{message}");
    let message = broken(&|p| p.entries[0].producer = Some(7));
    assert!(message.contains("\"fixed\""), "{message}");
    let message = broken(&|p| p.stages[1].fastio_outputs.push(EntryId(0)));
    assert!(message.contains("among its outputs"), "{message}");
    let message = broken(&|p| p.stages[0].upstream = vec![1]);
    assert!(message.contains("waits on itself"), "{message}");
    let message = broken(&|p| p.stages[1].upstream = vec![1]);
    assert!(message.contains("\"use\" waits on itself"), "{message}");
    // Attach finds a stage by name: a second of the same name could never be attached.
    let message = broken(&|p| p.stages[1].name = "MAKE".into());
    assert!(
        message.contains("two stages are named \"MAKE\""),
        "{message}"
    );
    // In-process hosting checks the same.
    let mut plan = two_stages();
    plan.stages[1].upstream = vec![5];
    assert!(fastio_job::in_process(Arc::new(Job::new(plan, |_| {})), 0).is_err());
    // The plan as written holds.
    assert!(two_stages().check().is_ok());
}

#[test]
fn a_stage_cannot_take_back_the_outcome_of_its_execute() {
    let server = host(two_stages()).unwrap();
    let mut make = operator(&server, 0);
    call(&mut make, finished(Some("it broke")));
    assert_eq!(server.job().stage_states()[0], "execute failed");
    // Saying again that it finished, this time well, does not release its readers.
    call(&mut make, finished(None));
    assert_eq!(server.job().stage_states()[0], "execute failed");

    let server = host(two_stages()).unwrap();
    let mut make = operator(&server, 0);
    call(&mut make, finished(None));
    call(&mut make, finished(Some("late")));
    assert_eq!(server.job().stage_states()[0], "executed");
}

#[test]
fn ids_a_job_still_knows_never_name_other_memory_after_its_server_is_closed() {
    // "make" writes "fixed"; "late" produces "other" and is still connected when the
    // server is closed.
    let plan = JobPlan {
        job_id: "j".into(),
        job_name: "closing".into(),
        stages: vec![
            stage("make", vec![], vec![], vec![0]),
            stage("late", vec![], vec![], vec![1]),
        ],
        entries: vec![
            entry("fixed", Some(0), vec![64]),
            entry("other", Some(1), vec![-1]),
        ],
    };
    let server = host(plan).unwrap();
    let mut make = operator(&server, 0);
    let mut late = operator(&server, 1);
    let (fixed, _) = handle(call(&mut make, open(0, AccessMode::ReadWrite)));
    server.close();
    // A request after the end: the new memory of "other" must not take the id that the
    // job's table still has for "fixed"...
    if let (Response::Handle { id, .. }, _) = call(
        &mut late,
        Request::AllocateEntry {
            entry: EntryId(1),
            dims: vec![2],
        },
    ) {
        assert_ne!(id, fixed);
    }
    // ...so "fixed" never opens as memory of another entry.
    match call(&mut make, open(0, AccessMode::ReadWrite)) {
        (Response::Handle { id, size, .. }, _) => {
            assert_eq!((id, size), (fixed, 64), "another entry's memory")
        }
        (Response::Refused(_), None) => {}
        other => panic!("unexpected answer {other:?}"),
    }
}

#[test]
fn a_connection_of_a_stage_the_job_does_not_have_changes_nothing_and_names_no_stage() {
    let (tx, rx) = std::sync::mpsc::channel();
    let job = Arc::new(Job::new(two_stages(), move |e| {
        let _ = tx.send(e);
    }));
    let server = fastio_job::host(config(), job.clone()).unwrap();
    let mut ghost = server.operator_session(7);
    call(
        &mut ghost,
        Request::Hello {
            version: PROTOCOL_VERSION,
        },
    );
    assert_eq!(
        refusal(call(&mut ghost, Request::Join)),
        RequestError::Job(fastio_context::JobError::NotInJob)
    );
    assert!(matches!(
        entry_refusal(call(&mut ghost, open(0, AccessMode::ReadOnly))),
        EntryError::NotOfOperator { .. }
    ));
    call(&mut ghost, finished(None));
    call(
        &mut ghost,
        Request::Finished {
            phase: Phase::Cleanup,
            failure: None,
        },
    );
    drop(ghost);
    // Every event names a stage of the job (a driver indexes its operators by it).
    assert!(rx.try_iter().all(|e| e.stage < 2));
    assert_eq!(job.stage_states(), ["not joined", "not joined"]);
    // An in-process operator context for such a stage is refused outright.
    assert!(matches!(
        fastio_job::in_process(Arc::new(Job::new(two_stages(), |_| {})), 2),
        Err(ContextError::Refused(RequestError::BadRequest { .. }))
    ));
}

/// Stage `stage`'s context over a real socket of the job's server, joined.
fn over_socket(
    server: &JobServer,
    stage: usize,
) -> (fastio_context::Context, fastio_job::StageInfo) {
    let ctx = fastio_context::Context::from_socket(server.operator_socket(stage).unwrap()).unwrap();
    let info = ctx.join().unwrap();
    (ctx, info)
}

/// Runs `f` on a thread; its result, or `None` if it has not come within a bound that only
/// a hang passes (this is not a timing assertion: it keeps a deadlock from hanging the run).
fn on_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::sync::mpsc::Receiver<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

const HANG: std::time::Duration = std::time::Duration::from_secs(60);

#[test]
fn a_stage_waiting_for_its_inputs_holds_nothing_while_its_producer_works() {
    let server = host(two_stages()).unwrap();
    let (reader, reader_info) = over_socket(&server, 1);
    let waiting = on_thread(move || {
        let result = reader.await_inputs();
        (reader, result)
    });
    // Wait until the server has the reader waiting (its listing says so), then work: every
    // request of the producer, and a listing, is answered meanwhile.
    let lister = server.local_context();
    let waits = |l: &fastio_context::listing::Listing| {
        l.job
            .as_ref()
            .is_some_and(|j| j.operators[1].state == "waiting for inputs")
    };
    let mut listing = lister.inspect().unwrap();
    for _ in 0..2000 {
        if waits(&listing) {
            break;
        }
        std::thread::yield_now();
        listing = lister.inspect().unwrap();
    }
    assert!(waits(&listing), "{listing:?}");
    let (make, info) = over_socket(&server, 0);
    make.await_inputs().unwrap();
    let mut fixed = fastio_job::FastIoEntry::open(&make, info.fastio_outputs[0].clone()).unwrap();
    fixed.set_bytes(b"makemake").unwrap();
    let mut sized = fastio_job::FastIoEntry::open(&make, info.fastio_outputs[1].clone()).unwrap();
    sized.update_shape(&[0], &[2]).unwrap();
    sized.set_bytes(b"ok").unwrap();
    make.create(4096).unwrap();
    lister.inspect().unwrap();
    make.finished(Phase::Execute, None).unwrap();
    let (reader, result) = waiting.recv_timeout(HANG).expect("the reader was released");
    result.unwrap();
    let fixed =
        fastio_job::FastIoEntry::open(&reader, reader_info.fastio_inputs[0].clone()).unwrap();
    assert_eq!(fixed.get_bytes().unwrap(), b"makemake");
}

#[test]
fn an_abort_reaches_a_stage_waiting_over_its_socket_and_every_later_one() {
    let server = host(two_stages()).unwrap();
    let (reader, _) = over_socket(&server, 1);
    let waiting = on_thread(move || reader.await_inputs());
    let lister = server.local_context();
    for _ in 0..2000 {
        let listing = lister.inspect().unwrap();
        if listing
            .job
            .is_some_and(|j| j.operators[1].state == "waiting for inputs")
        {
            break;
        }
        std::thread::yield_now();
    }
    server.job().abort("the producer died");
    let aborted = fastio_context::JobError::Aborted {
        reason: "the producer died".into(),
    };
    match waiting.recv_timeout(HANG).expect("the waiter was released") {
        Err(ContextError::Refused(RequestError::Job(e))) => assert_eq!(e, aborted),
        other => panic!("expected the abort, got {other:?}"),
    }
    // A stage that asks later is refused at once, its upstream or not.
    let (make, _) = over_socket(&server, 0);
    match make.await_inputs() {
        Err(ContextError::Refused(RequestError::Job(e))) => assert_eq!(e, aborted),
        other => panic!("expected the abort, got {other:?}"),
    }
}

#[test]
fn a_stage_whose_client_dies_while_it_waits_for_its_inputs_frees_its_connection() {
    use fastio_shm::transfer::{recv_message, send_message};
    use std::os::fd::AsFd;
    let job = Arc::new(Job::new(two_stages(), |_| {}));
    let server = fastio_job::host(config(), job.clone()).unwrap();
    let before = server.stats().connections;
    // A client of stage 1 over a raw socket: hello, join, then wait for inputs that never
    // come (stage 0 never runs), and die without reading the answer.
    let socket = server.operator_socket(1).unwrap();
    let exchange = |request: &Request| {
        send_message(socket.as_fd(), &serde_json::to_vec(request).unwrap(), &[]).unwrap();
        recv_message(socket.as_fd()).unwrap()
    };
    exchange(&Request::Hello {
        version: PROTOCOL_VERSION,
    });
    exchange(&Request::Join);
    send_message(
        socket.as_fd(),
        &serde_json::to_vec(&Request::AwaitInputs).unwrap(),
        &[],
    )
    .unwrap();
    let deadline = std::time::Instant::now() + HANG;
    while job.stage_states()[1] != "waiting for inputs" {
        assert!(std::time::Instant::now() < deadline, "stage 1 never waited");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(server.stats().connections, before + 1);
    drop(socket);
    // The server's thread notices, stops waiting, and drops the connection; the job goes
    // on (nothing aborted it).
    while server.stats().connections != before || job.stage_states()[1] == "waiting for inputs" {
        assert!(
            std::time::Instant::now() < deadline,
            "the dead client's connection still waits for its inputs"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(job.aborted(), None);
}
