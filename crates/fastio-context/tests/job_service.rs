//! The seam between the context and a job runtime: a context without a job refuses the
//! job's requests, and a context hosting a [`JobService`] routes every one of them to it.
//! The service here is a small real one (one stage, one entry of 8 bytes made through the
//! registry's entry primitives), not a mock of the registry.

use std::sync::{Arc, Mutex};

use fastio_context::listing::{EntryView, JobView, StageView};
use fastio_context::protocol::{
    AccessMode, EntryId, EventHandle, MemoryKind, PROTOCOL_VERSION, Phase, ReclaimedHandle,
    Request, ResourceId, Response, StageInfo,
};
use fastio_context::registry::{Grant, GrantRefusal};
use fastio_context::service::{Caller, ContextMemory, JobService};
use fastio_context::{
    Context, ContextError, EntryError, JobError, JobSecret, RequestError, Server, ServerConfig,
};
use fastio_meta::{ElementType, Shape, TypedShape};

/// One stage, "solo", and one entry, "count" (8 bytes), made at set-up; what the service
/// was asked is written down.
#[derive(Debug, Default)]
struct Solo {
    memory: Mutex<Option<ResourceId>>,
    calls: Mutex<Vec<String>>,
    event: Mutex<Option<EventHandle>>,
    fail_set_up: bool,
}

impl Solo {
    fn note(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn typed() -> TypedShape {
        TypedShape::new(ElementType::U8, Shape::new(vec![8]).unwrap()).unwrap()
    }
}

impl JobService for Solo {
    fn set_up(&self, memory: &ContextMemory<'_>) -> Result<(), ContextError> {
        if self.fail_set_up {
            return Err(EntryError::OutOfMemory {
                size: 8,
                message: "refused for the test".into(),
            }
            .into());
        }
        let pinned = memory
            .make_pinned(MemoryKind::Host, 8, "count")
            .map_err(RequestError::from)?;
        *self.memory.lock().unwrap() = Some(pinned.id);
        self.note("set_up".into());
        Ok(())
    }

    fn join(&self, stage: usize) -> Result<StageInfo, JobError> {
        self.note(format!("join {stage}"));
        Ok(StageInfo {
            job_id: "j".into(),
            job_name: "solo-job".into(),
            stage_name: "solo".into(),
            inputs: vec![],
            outputs: vec![],
            fastio_inputs: vec![],
            fastio_outputs: vec![],
        })
    }

    fn stage_named(&self, name: &str) -> Option<usize> {
        (name == "solo").then_some(0)
    }

    fn attach(&self, stage: usize, _pid: Option<i32>) -> Result<(), JobError> {
        self.note(format!("attach {stage}"));
        Ok(())
    }

    fn left(&self, stage: usize) {
        self.note(format!("left {stage}"));
    }

    fn await_inputs(&self, stage: usize, _gone: &dyn Fn() -> bool) -> Result<(), JobError> {
        self.note(format!("await_inputs {stage}"));
        Ok(())
    }

    fn finished(
        &self,
        memory: &ContextMemory<'_>,
        caller: Caller,
        phase: Phase,
        _failure: Option<String>,
    ) -> Vec<ReclaimedHandle> {
        self.note(format!("finished {} {phase}", caller.stage));
        if phase != Phase::Execute {
            return Vec::new();
        }
        if let Some(id) = *self.memory.lock().unwrap() {
            memory.seal(id).unwrap();
        }
        memory.reclaim(caller.conn)
    }

    fn open_entry(
        &self,
        memory: &ContextMemory<'_>,
        caller: Caller,
        entry: EntryId,
        access: AccessMode,
    ) -> Result<Grant, EntryError> {
        self.note(format!("open_entry {} {}", caller.stage, entry.0));
        let id = self
            .memory
            .lock()
            .unwrap()
            .ok_or(EntryError::UnknownEntry { id: entry.0 })?;
        memory
            .grant(
                caller.conn,
                id,
                access,
                Self::typed(),
                *self.event.lock().unwrap(),
            )
            .map_err(|e| match e {
                GrantRefusal::Sealed => EntryError::Sealed {
                    name: "count".into(),
                },
                GrantRefusal::Memory(e) => e.into(),
            })
    }

    fn set_entry_event(
        &self,
        caller: Caller,
        entry: EntryId,
        event: EventHandle,
    ) -> Result<(), EntryError> {
        self.note(format!("set_entry_event {} {}", caller.stage, entry.0));
        *self.event.lock().unwrap() = Some(event);
        Ok(())
    }

    fn allocate_entry(
        &self,
        _memory: &ContextMemory<'_>,
        caller: Caller,
        entry: EntryId,
        _dims: &[usize],
    ) -> Result<Grant, EntryError> {
        self.note(format!("allocate_entry {} {}", caller.stage, entry.0));
        Err(EntryError::Preallocated {
            name: "count".into(),
        })
    }

    fn view(&self) -> JobView {
        JobView {
            job_id: "j".into(),
            job_name: "solo-job".into(),
            stages: vec![StageView {
                name: "solo".into(),
                state: "preparing".into(),
            }],
            aborted: None,
            entries: vec![EntryView {
                name: "count".into(),
                producer: Some("solo".into()),
                readers: vec![],
                element_type: ElementType::U8,
                declared: vec![8],
                bound: self.memory.lock().unwrap().map(|id| (id, vec![8], 8)),
            }],
        }
    }
}

fn config() -> ServerConfig {
    ServerConfig {
        pool_bytes: 0,
        collapse: false,
        ..ServerConfig::default()
    }
}

fn job_refusal<T: std::fmt::Debug>(r: Result<T, ContextError>) -> JobError {
    match r {
        Err(ContextError::Refused(RequestError::Job(e))) => e,
        other => panic!("expected a job refusal, got {other:?}"),
    }
}

fn entry_refusal<T: std::fmt::Debug>(r: Result<T, ContextError>) -> EntryError {
    match r {
        Err(ContextError::Refused(RequestError::Entry(e))) => e,
        other => panic!("expected an entry refusal, got {other:?}"),
    }
}

/// Every job request, each refused as outside a job.
fn assert_not_in_job(ctx: &Context) {
    assert_eq!(job_refusal(ctx.join()), JobError::NotInJob);
    assert_eq!(job_refusal(ctx.await_inputs()), JobError::NotInJob);
    assert_eq!(
        job_refusal(ctx.finished(Phase::Execute, None)),
        JobError::NotInJob
    );
    assert_eq!(
        entry_refusal(ctx.open_entry(EntryId(0), AccessMode::ReadOnly)),
        EntryError::NotInJob
    );
    assert_eq!(
        entry_refusal(ctx.allocate_entry(EntryId(0), vec![4])),
        EntryError::NotInJob
    );
    assert_eq!(
        entry_refusal(ctx.set_entry_event(EntryId(0), EventHandle([7; 64]))),
        EntryError::NotInJob
    );
}

#[test]
fn a_context_without_a_job_refuses_every_job_request_as_not_in_job() {
    assert_not_in_job(&Context::in_process());
    let server = Server::start(config()).unwrap();
    let client = Context::connect(server.address()).unwrap();
    assert_not_in_job(&client);
    // Nor has its listing a job part.
    let listing = client.inspect().unwrap();
    assert!(listing.job.is_none() && listing.entries.is_empty());
}

#[test]
fn a_hosted_job_gets_every_job_request_of_its_stages_and_none_of_other_clients() {
    let solo = Arc::new(Solo::default());
    let server = Server::start_with_job(config(), solo.clone()).unwrap();
    assert_eq!(solo.calls(), ["set_up"], "set up before anyone connects");
    // A client that runs no stage is outside the job, job or not.
    assert_not_in_job(&server.local_context());
    assert_eq!(solo.calls(), ["set_up"]);

    let op = server.local_operator_context(0);
    assert_eq!(op.join().unwrap().stage_name, "solo");
    op.await_inputs().unwrap();
    let mut count = op.open_entry(EntryId(0), AccessMode::ReadWrite).unwrap();
    assert_eq!((count.size(), count.dimensions()), (8, Some(&[8][..])));
    count.write_bytes(0, b"8 bytes!").unwrap();
    op.set_entry_event(EntryId(0), EventHandle([7; 64]))
        .unwrap();
    assert_eq!(
        entry_refusal(op.allocate_entry(EntryId(0), vec![8])),
        EntryError::Preallocated {
            name: "count".into()
        }
    );
    // The listing takes the job's part from the service and its holders from the registry.
    let listing = op.inspect().unwrap();
    let job = listing.job.unwrap();
    assert_eq!(
        (job.job_name.as_str(), job.operators[0].handles),
        ("solo-job", 1)
    );
    assert_eq!(listing.entries[0].holders[0].who, "solo");
    assert_eq!(listing.entries[0].bytes, Some(8));
    // The end of execute: the service sealed the memory and reclaimed the handle.
    let reclaimed = op.finished(Phase::Execute, None).unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(
        reclaimed[0].entries,
        ["count"],
        "the registry names entry memory"
    );
    assert!(op.finished(Phase::Cleanup, None).unwrap().is_empty());
    drop(count);
    let reader = server.local_operator_context(0);
    let read = reader.open_entry(EntryId(0), AccessMode::ReadOnly).unwrap();
    assert_eq!(read.read_bytes(0, 8).unwrap(), b"8 bytes!");
    assert_eq!(read.event(), Some(EventHandle([7; 64])));
    assert_eq!(
        entry_refusal(reader.open_entry(EntryId(0), AccessMode::ReadWrite)),
        EntryError::Sealed {
            name: "count".into()
        }
    );
    assert_eq!(
        solo.calls(),
        [
            "set_up",
            "join 0",
            "await_inputs 0",
            "open_entry 0 0",
            "set_entry_event 0 0",
            "allocate_entry 0 0",
            "finished 0 execute",
            "finished 0 cleanup",
            "open_entry 0 0",
            "open_entry 0 0",
        ]
    );
}

#[test]
fn an_operator_attaches_to_a_stage_the_service_names_and_its_leaving_is_reported() {
    let solo = Arc::new(Solo::default());
    let secret = JobSecret("0123456789abcdef-secret".into());
    let name = format!("fastio-seam-test-{}", std::process::id());
    let server = Server::start_with_job_at(config(), solo.clone(), &name, secret.clone()).unwrap();
    let mut session = server.session();
    let mut call = |request: &Request| -> Response {
        serde_json::from_slice(&session.handle(&serde_json::to_vec(request).unwrap()).0).unwrap()
    };
    let attach = |stage: &str| Request::Attach {
        version: PROTOCOL_VERSION,
        stage: stage.into(),
        secret: secret.clone(),
    };
    assert!(matches!(
        call(&attach("nobody")),
        Response::Refused(RequestError::BadRequest { .. })
    ));
    assert!(matches!(call(&attach("solo")), Response::Welcome { .. }));
    assert!(matches!(call(&Request::Join), Response::Joined(_)));
    drop(session);
    assert_eq!(solo.calls(), ["set_up", "attach 0", "join 0", "left 0"]);
}

#[test]
fn a_job_whose_set_up_fails_starts_no_server() {
    let solo = Arc::new(Solo {
        fail_set_up: true,
        ..Solo::default()
    });
    let e = Server::start_with_job(config(), solo.clone()).unwrap_err();
    assert!(e.to_string().contains("refused for the test"), "{e}");
    let e = Context::in_process_with_job(solo, 0).unwrap_err();
    assert!(e.to_string().contains("refused for the test"), "{e}");
}
