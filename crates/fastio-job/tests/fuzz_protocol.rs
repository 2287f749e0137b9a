//! Property-based fuzzing of the protocol decoder with the registry behind it: sequences of
//! messages (well-formed requests with hostile values, mutated JSON, random bytes) go
//! through the server's own message handling ([`fastio_context::server::Session`]), as
//! plain clients and as an operator of a job. Nothing may panic; every answer must decode
//! as a response, carry a descriptor exactly when it is a handle, and every handle must
//! be dropped when its session ends.
//!
//! The normal test run tries a short batch. `cargo xtask fuzz protocol --count N` runs N
//! messages (in release), reading the count from `FASTIO_FUZZ_COUNT`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fastio_context::protocol::{PROTOCOL_VERSION, Response};
use fastio_context::{Server, ServerConfig};
use fastio_job::{EntryId, EntryPlan, Job, JobPlan, JobServer, StagePlan};
use fastio_meta::ElementType;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

/// Messages per run in the normal test suite.
const DEFAULT_COUNT: u64 = 20_000;

/// Sessions served by one server before a fresh one replaces it (publications and
/// job state accumulate on a server; a fresh one bounds the memory a run holds).
const CASES_PER_SERVER: u64 = 64;

fn count() -> u64 {
    std::env::var("FASTIO_FUZZ_COUNT")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(DEFAULT_COUNT)
}

/// Numbers where decoders and bookkeeping break: boundaries, signs, floats, huge values.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u64..24).prop_map(Value::from),
        (0u64..70_000).prop_map(Value::from),
        Just(json!(-1)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(1u64 << 53)),
        Just(json!(1u64 << 40)),
        Just(json!(usize::MAX / 2)),
        Just(json!(1.5)),
        Just(json!(1e300)),
    ]
}

fn text() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z]{1,3}".prop_map(Value::from),
        "[a-zA-Z0-9_-]{0,12}".prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
        Just(Value::from("n".repeat(256))),
        Just(Value::from("a.b c/../\u{0}")),
    ]
}

/// Any JSON value, shallow: what a hostile client puts where a field belongs.
fn junk() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        text(),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn field<S: Strategy<Value = Value>>(good: S) -> impl Strategy<Value = Value> {
    // Mostly a plausible value, sometimes anything at all.
    prop_oneof![19 => good, 1 => junk()]
}

fn access() -> impl Strategy<Value = Value> {
    field(prop_oneof![
        Just(json!("ReadOnly")),
        Just(json!("ReadWrite"))
    ])
}

fn dims() -> impl Strategy<Value = Value> {
    field(prop::collection::vec(number(), 0..5).prop_map(Value::from))
}

fn typed() -> impl Strategy<Value = Value> {
    let element = prop_oneof![
        Just(json!("uint8")),
        Just(json!("float32")),
        Just(json!("int64")),
        Just(json!("float16")),
        text(),
    ];
    field(prop_oneof![
        Just(Value::Null),
        (element, dims()).prop_map(|(e, d)| json!({"element_type": e, "shape": d})),
    ])
}

fn event() -> impl Strategy<Value = Value> {
    field(prop_oneof![
        Just(Value::Null),
        Just(Value::from("ab".repeat(64))),
        "[0-9a-f]{0,130}".prop_map(Value::from),
    ])
}

fn phase() -> impl Strategy<Value = Value> {
    field(prop_oneof![
        Just(json!("prepare")),
        Just(json!("execute")),
        Just(json!("cleanup")),
    ])
}

/// A request as JSON: the protocol's shapes with hostile values.
fn request() -> impl Strategy<Value = Value> {
    // Resource ids are small counters: mostly ones that may exist.
    let id = || field(prop_oneof![3 => (1u64..12).prop_map(Value::from), 1 => number()]);
    prop_oneof![
        2 => field(prop_oneof![Just(json!(PROTOCOL_VERSION)), number()])
            .prop_map(|v| json!({"op": "hello", "version": v})),
        4 => (field(number()), prop::option::of(field(any::<bool>().prop_map(Value::from))))
            .prop_map(|(s, h)| match h {
                Some(h) => json!({"op": "create", "size": s, "hugetlb": h}),
                None => json!({"op": "create", "size": s}),
            }),
        3 => (id(), field(text()), typed(), event()).prop_map(|(i, n, t, e)| {
            json!({"op": "publish", "id": i, "name": n, "typed": t, "event": e})
        }),
        3 => (field(text()), access()).prop_map(|(n, a)| json!({"op": "get", "name": n, "access": a})),
        2 => id().prop_map(|i| json!({"op": "release", "id": i})),
        2 => id().prop_map(|i| json!({"op": "free", "id": i})),
        1 => Just(json!({"op": "stats"})),
        1 => id().prop_map(|i| json!({"op": "acquire_write", "id": i})),
        1 => id().prop_map(|i| json!({"op": "release_write", "id": i})),
        1 => Just(json!({"op": "join"})),
        1 => Just(json!({"op": "await_inputs"})),
        1 => (phase(), field(prop_oneof![Just(Value::Null), text()]))
            .prop_map(|(p, f)| json!({"op": "finished", "phase": p, "failure": f})),
        2 => (field((0u32..4).prop_map(Value::from)), access())
            .prop_map(|(e, a)| json!({"op": "open_entry", "entry": e, "access": a})),
        1 => (field((0u32..4).prop_map(Value::from)), event())
            .prop_map(|(e, v)| json!({"op": "set_entry_event", "entry": e, "event": v})),
        1 => (field((0u32..4).prop_map(Value::from)), dims())
            .prop_map(|(e, d)| json!({"op": "allocate_entry", "entry": e, "dims": d})),
        1 => (text(), junk()).prop_map(|(op, x)| json!({"op": op, "x": x})),
    ]
}

/// How a message's bytes are damaged on their way.
#[derive(Clone, Debug)]
enum Damage {
    None,
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        12 => Just(Damage::None),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Flip(i, b)),
        1 => any::<usize>().prop_map(Damage::Cut),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Damage::Insert(i, b)),
    ]
}

fn apply(mut bytes: Vec<u8>, damage: &Damage) -> Vec<u8> {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
    match damage {
        Damage::None => {}
        Damage::Flip(i, b) if !bytes.is_empty() => {
            let i = i % bytes.len();
            bytes[i] ^= b | 1;
        }
        Damage::Flip(..) => {}
        Damage::Cut(i) => bytes.truncate(at(*i, bytes.len())),
        Damage::Insert(i, extra) => {
            let i = at(*i, bytes.len());
            bytes.splice(i..i, extra.iter().copied());
        }
    }
    bytes
}

/// One message: a (possibly damaged) request, or bytes that were never JSON.
fn message() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        12 => (request(), damage())
            .prop_map(|(r, d)| apply(serde_json::to_vec(&r).unwrap_or_default(), &d)),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// Who a conversation speaks as.
#[derive(Clone, Copy, Debug)]
enum Role {
    /// A plain client of a context server.
    Client,
    /// The producer of a job's entries (stage 0, no upstream).
    Producer,
    /// A reader of them (stage 1) in a job that was aborted, so that waiting for inputs
    /// returns at once.
    Reader,
}

/// A conversation: usually opened by a correct hello, as real clients do, so that the
/// registry behind the decoder is reached.
fn conversation() -> impl Strategy<Value = (bool, Role, Vec<Vec<u8>>)> {
    (
        prop::bool::weighted(0.9),
        prop_oneof![
            6 => Just(Role::Client),
            3 => Just(Role::Producer),
            2 => Just(Role::Reader),
        ],
        prop::collection::vec(message(), 1..32),
    )
}

/// A job of two operators: stage 0 produces a pre-allocated and a dynamic entry, stage 1
/// reads them.
fn job_plan() -> JobPlan {
    let stage = StagePlan::new;
    let entry = |name, declared| EntryPlan::new(name, Some(0), ElementType::F32, declared);
    JobPlan {
        job_id: "fuzz".into(),
        job_name: "fuzz".into(),
        stages: vec![
            stage("a", vec![], vec![], vec![EntryId(0), EntryId(1)]),
            stage("b", vec![0], vec![EntryId(0), EntryId(1)], vec![]),
        ],
        entries: vec![entry("fixed", vec![4, 4]), entry("dynamic", vec![-1, 3])],
    }
}

struct Servers {
    plain: Server,
    job: JobServer,
    aborted: JobServer,
    cases: u64,
}

impl Servers {
    fn new() -> Self {
        let config = ServerConfig {
            pool_bytes: 1 << 20,
            // No background thread per server: the fuzz makes thousands of them.
            collapse: false,
            ..ServerConfig::default()
        };
        Self {
            plain: Server::start(config.clone()).unwrap(),
            job: fastio_job::host(config.clone(), Arc::new(Job::new(job_plan(), |_| {}))).unwrap(),
            aborted: {
                let job = Arc::new(Job::new(job_plan(), |_| {}));
                job.abort("aborted for the fuzz test");
                fastio_job::host(config, job).unwrap()
            },
            cases: 0,
        }
    }

    /// Drops every segment the servers hold now.
    fn close(self) {
        self.plain.close();
        self.job.close();
        self.aborted.close();
    }
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

#[test]
fn the_protocol_survives_hostile_conversations() {
    let total = count();
    let inputs = Arc::new(AtomicU64::new(0));
    // What the answers were: handles granted, other successes, refusals of undecodable
    // messages, other refusals (how far into the registry the inputs reached).
    let tally: [AtomicU64; 4] = Default::default();
    let before = open_descriptors();
    let servers = std::sync::Mutex::new(Servers::new());
    let counted = inputs.clone();
    let case = |(hello, role, messages): (bool, Role, Vec<Vec<u8>>)| {
        let mut servers = servers.lock().unwrap_or_else(|p| p.into_inner());
        servers.cases += 1;
        if servers.cases.is_multiple_of(CASES_PER_SERVER) {
            std::mem::replace(&mut *servers, Servers::new()).close();
        }
        let server = match role {
            Role::Client => &servers.plain,
            Role::Producer => &servers.job,
            Role::Reader => &servers.aborted,
        };
        {
            let mut session = match role {
                Role::Client => server.session(),
                Role::Producer => server.operator_session(0),
                Role::Reader => server.operator_session(1),
            };
            let greeting =
                serde_json::to_vec(&json!({"op": "hello", "version": PROTOCOL_VERSION})).unwrap();
            let opening = hello.then_some(greeting);
            for body in opening.iter().chain(&messages) {
                counted.fetch_add(1, Ordering::Relaxed);
                let (answer, segment) = session.handle(body);
                let response: Response = serde_json::from_slice(&answer).map_err(|e| {
                    TestCaseError::fail(format!("undecodable answer {answer:?}: {e}"))
                })?;
                let kind = match &response {
                    Response::Handle { .. } => 0,
                    Response::Refused(fastio_context::RequestError::BadRequest { .. }) => 2,
                    Response::Refused(_) => 3,
                    _ => 1,
                };
                tally[kind].fetch_add(1, Ordering::Relaxed);
                let is_handle = matches!(response, Response::Handle { .. });
                prop_assert_eq!(is_handle, segment.is_some(), "{:?}", response);
            }
        }
        // The session is gone: so are its handles.
        let stats = server.stats();
        prop_assert_eq!(stats.handles, 0);
        prop_assert_eq!(stats.connections, 0);
        Ok(())
    };
    // Batches of conversations (about 16 messages each: up to 31, plus the hello) until
    // the count is reached; each batch draws fresh random seeds.
    let mut conversations = 0u64;
    let mut result = Ok(());
    while result.is_ok() && inputs.load(Ordering::Relaxed) < total {
        let left = total - inputs.load(Ordering::Relaxed);
        let cases = u32::try_from((left / 16).max(1)).unwrap_or(u32::MAX);
        conversations += u64::from(cases);
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 256,
            ..Config::default()
        });
        result = runner.run(&conversation(), case);
    }
    servers
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .close();
    let ran = inputs.load(Ordering::Relaxed);
    let [handles, done, malformed, refused] = tally.map(|t| t.into_inner());
    println!(
        "protocol fuzz: {ran} inputs in {conversations} conversations: {handles} handles granted, \
         {done} other successes, {malformed} malformed or out of order, {refused} refused by \
         the registry or the job"
    );
    if let Err(e) = result {
        panic!("after {ran} inputs: {e}");
    }
    // Every segment the servers held is closed. The listening sockets go with their
    // accept threads, which end once they see their server gone: give them (a bounded)
    // while on a loaded machine.
    let mut after = open_descriptors();
    for _ in 0..200 {
        if after <= before {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
        after = open_descriptors();
    }
    assert!(
        after <= before,
        "descriptors leaked: {before} before, {after} after"
    );
}
