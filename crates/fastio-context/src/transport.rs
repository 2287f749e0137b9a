//! How a [`crate::Context`] reaches its registry: directly in this process, or over a
//! Unix socket to a context server.

use std::collections::HashMap;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fastio_shm::transfer::{recv_message, send_message};

use crate::error::{CreateError, EntryError, JobError, MemoryFailure};
use crate::protocol::{MemoryKind, PROTOCOL_VERSION, Phase, Request, Response};
use crate::registry::{ConnectionId, Grant, GrantedMemory, Obtained, Registry};
use crate::service::{Caller, ContextMemory, JobService};
use crate::{ContextError, RequestError};

/// One request/response exchange with the registry.
pub(crate) trait Transport: Send + Sync + fmt::Debug {
    fn call(&self, request: &Request) -> Result<(Response, Option<GrantedMemory>), ContextError>;
}

/// Locks the registry, recovering it if a thread panicked while holding the lock: every
/// registry operation leaves it consistent before it can panic, so the data stays usable.
pub(crate) fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    registry
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a context serves: its registry and, in a pipeline job, the job.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) registry: Mutex<Registry>,
    /// The job it hosts, if any: its requests go there.
    pub(crate) job: Option<Arc<dyn JobService>>,
    /// The secret operators that join the job (rather than being started by it) present;
    /// unset, no one may join that way.
    pub(crate) join_secret: std::sync::OnceLock<crate::protocol::JobSecret>,
    // The job stage each open connection runs (None: not an operator), for listings.
    peers: Mutex<HashMap<ConnectionId, Option<usize>>>,
}

impl Shared {
    pub(crate) fn new(registry: Registry, job: Option<Arc<dyn JobService>>) -> Arc<Self> {
        Arc::new(Self {
            registry: Mutex::new(registry),
            job,
            join_secret: std::sync::OnceLock::new(),
            peers: Mutex::default(),
        })
    }

    pub(crate) fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    /// A new connection to the registry, for stage `stage` of the job or for no stage.
    pub(crate) fn connect(&self, stage: Option<usize>) -> Peer {
        let conn = self.registry().connect();
        self.peers_lock().insert(conn, stage);
        Peer { conn, stage }
    }

    /// A connection closed: its handles go.
    pub(crate) fn disconnect(&self, conn: ConnectionId) {
        self.registry().disconnect(conn);
        self.peers_lock().remove(&conn);
    }

    /// Records that connection `conn` now runs `stage` (an operator that attached).
    pub(crate) fn set_stage(&self, conn: ConnectionId, stage: usize) {
        self.peers_lock().insert(conn, Some(stage));
    }

    fn peers_lock(&self) -> MutexGuard<'_, HashMap<ConnectionId, Option<usize>>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `fastio ls` shows. The registry's lock is released before the job is asked.
    pub(crate) fn listing(&self) -> crate::listing::Listing {
        let snapshot = self.registry().snapshot();
        let peers = self.peers_lock().clone();
        let job = self.job.as_ref().map(|job| job.view());
        crate::listing::compose(snapshot, job, &peers)
    }

    /// The registry's calls for the memory of the job's entries.
    pub(crate) fn memory(&self) -> ContextMemory<'_> {
        ContextMemory::new(self)
    }

    /// Lets the job make the memory it needs from the start, before anyone connects.
    pub(crate) fn set_up_job(&self) -> Result<(), crate::ContextError> {
        let result = match &self.job {
            Some(job) => job.set_up(&self.memory()),
            None => Ok(()),
        };
        self.bury_dead();
        result
    }

    /// Frees the segments that left the registry for good, without its lock: their pages
    /// are punched (so that clients' parked mappings keep nothing alive), then closed.
    pub(crate) fn bury_dead(&self) {
        let dead = self.registry().take_dead();
        for segment in dead {
            let _ = segment.punch();
        }
    }

    /// A resource of `size` bytes held by `conn`, made without holding the registry's lock
    /// while its memory is reserved.
    fn create(&self, conn: ConnectionId, size: usize, hugetlb: bool) -> Result<Grant, CreateError> {
        let obtained = self.registry().obtain(conn, size, true, hugetlb)?;
        let (mut registry, grant) = self.adopt(obtained, size)?;
        registry.hold_new(conn, grant.id);
        Ok(grant)
    }

    /// Makes the segment of `obtained` (outside the lock) and adopts it, returning the
    /// registry still locked (so that nothing happens to the resource before the caller
    /// holds or binds it).
    fn adopt(
        &self,
        obtained: Obtained,
        size: usize,
    ) -> Result<(MutexGuard<'_, Registry>, Grant), MemoryFailure> {
        let made = match &obtained {
            Obtained::Make(reservation) => Some(reservation.make()),
            Obtained::Pooled(_) => None,
        };
        let mut registry = self.registry();
        let grant = registry.adopt(obtained, made, size)?;
        Ok((registry, grant))
    }
}

/// Who is on the other end of a connection: its registry id, and the job stage it runs
/// (set by the driver when it made the connection for an operator).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer {
    pub(crate) conn: ConnectionId,
    pub(crate) stage: Option<usize>,
}

/// Carries out one request: the single dispatch that the server and the in-process
/// context share. Only `AwaitInputs` blocks, and it holds no lock while it waits.
///
/// `gone` says whether the client has gone (its socket closed); `AwaitInputs` asks it while
/// it waits, so that a dead client's thread ends.
pub(crate) fn dispatch(
    shared: &Shared,
    peer: Peer,
    request: Request,
    gone: &dyn Fn() -> bool,
) -> (Response, Option<GrantedMemory>) {
    let answer = answer(shared, peer, request, gone);
    shared.bury_dead();
    answer
}

fn refused(e: impl Into<RequestError>) -> (Response, Option<GrantedMemory>) {
    (Response::Refused(e.into()), None)
}

fn grant<E: Into<RequestError>>(g: Result<Grant, E>) -> (Response, Option<GrantedMemory>) {
    match g {
        Ok(g) => (
            Response::Handle {
                id: g.id,
                size: g.size,
                typed: g.typed,
                recycled: g.recycled,
                event: g.event,
                kind: g.kind,
                device_bytes: g.device_bytes,
            },
            Some(g.memory),
        ),
        Err(e) => refused(e),
    }
}

fn done<E: Into<RequestError>>(r: Result<(), E>) -> (Response, Option<GrantedMemory>) {
    match r {
        Ok(()) => (Response::Done, None),
        Err(e) => refused(e),
    }
}

fn answer(
    shared: &Shared,
    peer: Peer,
    request: Request,
    gone: &dyn Fn() -> bool,
) -> (Response, Option<GrantedMemory>) {
    let conn = peer.conn;
    match request {
        Request::Hello { version } if version == PROTOCOL_VERSION => (
            Response::Welcome {
                version: PROTOCOL_VERSION,
            },
            None,
        ),
        Request::Hello { version } => refused(RequestError::BadRequest {
            message: format!(
                "protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"
            ),
        }),
        // A session answers it; anywhere else it comes too late.
        Request::Attach { .. } => refused(RequestError::BadRequest {
            message: "attach must be the first request on a connection".into(),
        }),
        Request::Create {
            size,
            hugetlb,
            kind,
        } => match kind {
            MemoryKind::Host => grant(shared.create(conn, size, hugetlb)),
            MemoryKind::Cuda { device } => {
                grant(shared.registry().create_device(conn, device, size))
            }
        },
        Request::Publish {
            id,
            name,
            typed,
            event,
            replace,
        } => done(
            shared
                .registry()
                .publish_as(conn, id, &name, typed, event, replace),
        ),
        Request::Unpublish { name } => done(shared.registry().unpublish(conn, &name)),
        Request::Get { name, access } => grant(shared.registry().get(conn, &name, access)),
        Request::Release { id, handle } => done(shared.registry().release_handle(conn, id, handle)),
        Request::Free { id, handle } => done(shared.registry().free_handle(conn, id, handle)),
        Request::Stats => (Response::Stats(shared.registry().stats()), None),
        Request::Inspect => (Response::Listing(Box::new(shared.listing())), None),
        Request::AcquireWrite { id, handle } => {
            done(shared.registry().acquire_write(conn, id, handle))
        }
        Request::ReleaseWrite { id, handle } => {
            done(shared.registry().release_write(conn, id, handle))
        }
        // The job's requests go to the job it hosts.
        Request::Join => match job_stage(shared, peer) {
            Ok((job, caller)) => match job.join(caller.stage) {
                Ok(info) => (Response::Joined(Box::new(info)), None),
                Err(e) => refused(e),
            },
            Err(e) => refused(e),
        },
        Request::AwaitInputs => done(job_stage(shared, peer).and_then(|(job, caller)| {
            // Blocks: no lock of the context is held here.
            job.await_inputs(caller.stage, gone)
        })),
        Request::Finished { phase, failure } => match job_stage(shared, peer) {
            Ok((job, caller)) => {
                let handles = job.finished(&shared.memory(), caller, phase, failure);
                if phase == Phase::Execute {
                    (Response::Reclaimed { handles }, None)
                } else {
                    (Response::Done, None)
                }
            }
            Err(e) => refused(e),
        },
        Request::OpenEntry { entry, access } => grant(
            entry_stage(shared, peer)
                .and_then(|(job, caller)| job.open_entry(&shared.memory(), caller, entry, access)),
        ),
        Request::SetEntryEvent { entry, event } => done(
            entry_stage(shared, peer)
                .and_then(|(job, caller)| job.set_entry_event(caller, entry, event)),
        ),
        Request::AllocateEntry { entry, dims } => {
            grant(entry_stage(shared, peer).and_then(|(job, caller)| {
                job.allocate_entry(&shared.memory(), caller, entry, &dims)
            }))
        }
    }
}

/// The job and the caller's stage, or [`JobError::NotInJob`] where the context hosts no
/// job or the connection runs no stage of it.
fn job_stage(shared: &Shared, peer: Peer) -> Result<(&dyn JobService, Caller), JobError> {
    match (&shared.job, peer.stage) {
        (Some(job), Some(stage)) => Ok((
            job.as_ref(),
            Caller {
                conn: peer.conn,
                stage,
            },
        )),
        _ => Err(JobError::NotInJob),
    }
}

/// [`job_stage`] for the entry requests, which refuse with [`EntryError::NotInJob`].
fn entry_stage(shared: &Shared, peer: Peer) -> Result<(&dyn JobService, Caller), EntryError> {
    job_stage(shared, peer).map_err(|_| EntryError::NotInJob)
}

/// Fails with [`ContextError::Forked`] in any process but `owner`: after `fork()` the
/// child has a copy of its parent's connection (or in-process registry), and using it
/// would interleave two processes' requests on one conversation.
fn check_owner(owner: u32) -> Result<(), ContextError> {
    let me = std::process::id();
    if me == owner {
        Ok(())
    } else {
        Err(ContextError::Forked { owner, pid: me })
    }
}

/// The in-process transport: a connection to a registry in this process.
pub(crate) struct LocalTransport {
    shared: Arc<Shared>,
    peer: Peer,
    owner: u32,
}

impl LocalTransport {
    pub(crate) fn new(shared: Arc<Shared>, stage: Option<usize>) -> Self {
        let peer = shared.connect(stage);
        Self {
            shared,
            peer,
            owner: std::process::id(),
        }
    }
}

impl fmt::Debug for LocalTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalTransport({:?})", self.peer)
    }
}

impl Transport for LocalTransport {
    fn call(&self, request: &Request) -> Result<(Response, Option<GrantedMemory>), ContextError> {
        check_owner(self.owner)?;
        // In this process: the caller is this thread, alive while it waits.
        Ok(dispatch(&self.shared, self.peer, request.clone(), &|| {
            false
        }))
    }
}

impl Drop for LocalTransport {
    fn drop(&mut self) {
        self.shared.disconnect(self.peer.conn);
        self.shared.bury_dead();
    }
}

/// How long a client waits for the answer to a request, unless `FASTIO_REQUEST_TIMEOUT_S`
/// says otherwise. Generous: a create of many gigabytes reserves its memory first.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variable that sets the request timeout, in seconds.
pub const REQUEST_TIMEOUT_ENV: &str = "FASTIO_REQUEST_TIMEOUT_S";

fn request_timeout() -> Duration {
    std::env::var(REQUEST_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(DEFAULT_REQUEST_TIMEOUT, |s| {
            Duration::from_secs_f64(s.min(1e9))
        })
}

/// A connection to a context server over a `SOCK_SEQPACKET` socket.
///
/// Every request but `AwaitInputs` is answered within the request timeout or fails with
/// [`ContextError::Timeout`] (`AwaitInputs` waits for other operators; the job's time limit
/// bounds it). After a timeout the conversation is out of step (the late answer may still
/// come), so the connection refuses further requests.
pub(crate) struct SocketTransport {
    socket: Mutex<OwnedFd>,
    owner: u32,
    timeout: Duration,
    broken: AtomicBool,
}

impl fmt::Debug for SocketTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SocketTransport")
    }
}

impl SocketTransport {
    /// Wraps a connected socket; nothing is sent yet.
    pub(crate) fn wrap(socket: OwnedFd) -> Self {
        Self::wrap_with_timeout(socket, request_timeout())
    }

    /// [`SocketTransport::wrap`] with its own request timeout.
    pub(crate) fn wrap_with_timeout(socket: OwnedFd, timeout: Duration) -> Self {
        // Sends, too, are bounded: a server that stops reading fills the socket's buffer.
        let _ = rustix::net::sockopt::set_socket_timeout(
            &socket,
            rustix::net::sockopt::Timeout::Send,
            Some(timeout),
        );
        Self {
            socket: Mutex::new(socket),
            owner: std::process::id(),
            timeout,
            broken: AtomicBool::new(false),
        }
    }

    /// Says hello: the server answers with its version, or refuses ours.
    pub(crate) fn hello(&self) -> Result<(), ContextError> {
        match self.call(&Request::Hello {
            version: PROTOCOL_VERSION,
        })? {
            (Response::Welcome { .. }, _) => Ok(()),
            (Response::Refused(e), _) => Err(e.into()),
            (other, _) => Err(ContextError::Protocol(format!(
                "expected a welcome, got {other:?}"
            ))),
        }
    }

    /// Wraps a connected socket and says hello.
    pub(crate) fn new(socket: OwnedFd) -> Result<Self, ContextError> {
        let transport = Self::wrap(socket);
        transport.hello()?;
        Ok(transport)
    }

    /// Gives the socket back (a connection that failed to start, over a descriptor this
    /// process does not own).
    pub(crate) fn into_socket(self) -> OwnedFd {
        self.socket.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails with [`ContextError::Forked`] outside the process that made the connection.
    pub(crate) fn check_owner(&self) -> Result<(), ContextError> {
        check_owner(self.owner)
    }

    /// Waits until the socket has an answer, up to `deadline`.
    fn wait_readable(socket: &OwnedFd, deadline: Instant) -> Result<bool, ContextError> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let timeout = Timespec::try_from(left).ok();
            let mut fds = [PollFd::new(socket, PollFlags::IN)];
            match poll(&mut fds, timeout.as_ref()) {
                Ok(0) => continue,
                Ok(_) => return Ok(true),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(ContextError::ServerGone(fastio_shm::TransferError::Os(e))),
            }
        }
    }
}

impl Transport for SocketTransport {
    fn call(&self, request: &Request) -> Result<(Response, Option<GrantedMemory>), ContextError> {
        check_owner(self.owner)?;
        if self.broken.load(Ordering::SeqCst) {
            return Err(ContextError::OutOfStep);
        }
        let body =
            serde_json::to_vec(request).map_err(|e| ContextError::Protocol(e.to_string()))?;
        // One exchange at a time per connection: the lock spans send and receive.
        let socket = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        let timed_out = |what: &str| {
            self.broken.store(true, Ordering::SeqCst);
            ContextError::Timeout {
                request: what.to_owned(),
                after: self.timeout,
            }
        };
        let op = request_name(request);
        match send_message(socket.as_fd(), &body, &[]) {
            Ok(()) => {}
            Err(fastio_shm::TransferError::Os(rustix::io::Errno::AGAIN)) => {
                return Err(timed_out(op));
            }
            Err(e) => return Err(ContextError::ServerGone(e)),
        }
        if !matches!(request, Request::AwaitInputs)
            && !Self::wait_readable(&socket, Instant::now() + self.timeout)?
        {
            return Err(timed_out(op));
        }
        let received = recv_message(socket.as_fd()).map_err(ContextError::ServerGone)?;
        drop(socket);
        let response: Response = serde_json::from_slice(&received.body)
            .map_err(|e| ContextError::Protocol(format!("unreadable response: {e}")))?;
        let mut fds = received.fds.into_iter();
        let memory = match (&response, fds.next()) {
            (
                Response::Handle {
                    kind: MemoryKind::Host,
                    ..
                },
                Some(fd),
            ) => Some(GrantedMemory::Host(fastio_shm::Segment::from_fd(fd)?)),
            // An exported CUDA allocation: opaque to this layer, imported by cuda-streams
            // when the client maps it.
            (Response::Handle { .. }, Some(fd)) => Some(GrantedMemory::Device(fd)),
            (Response::Handle { .. }, None) => {
                return Err(ContextError::Protocol(
                    "a handle arrived without its descriptor".into(),
                ));
            }
            (_, _) => None,
        };
        Ok((response, memory))
    }
}

/// The request's name on the wire, for messages.
fn request_name(request: &Request) -> &'static str {
    match request {
        Request::Hello { .. } => "hello",
        Request::Attach { .. } => "attach",
        Request::Create { .. } => "create",
        Request::Publish { .. } => "publish",
        Request::Unpublish { .. } => "unpublish",
        Request::Get { .. } => "get",
        Request::Release { .. } => "release",
        Request::Free { .. } => "free",
        Request::Stats => "stats",
        Request::Inspect => "inspect",
        Request::AcquireWrite { .. } => "acquire_write",
        Request::ReleaseWrite { .. } => "release_write",
        Request::Join => "join",
        Request::AwaitInputs => "await_inputs",
        Request::Finished { .. } => "finished",
        Request::OpenEntry { .. } => "open_entry",
        Request::SetEntryEvent { .. } => "set_entry_event",
        Request::AllocateEntry { .. } => "allocate_entry",
    }
}
