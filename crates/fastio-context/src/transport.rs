//! How a [`crate::Context`] reaches its registry: directly in this process, or over a
//! Unix socket to a context server.

use std::collections::HashMap;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use fastio_shm::Segment;
use fastio_shm::transfer::{recv_message, send_message};

use crate::job::{EntryId, Job, Phase};
use crate::protocol::{AccessMode, PROTOCOL_VERSION, Request, Response};
use crate::registry::{ConnectionId, Registry};
use crate::{ContextError, RequestError};

/// One request/response exchange with the registry.
pub(crate) trait Transport: Send + Sync + fmt::Debug {
    fn call(&self, request: &Request) -> Result<(Response, Option<Segment>), ContextError>;
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
    pub(crate) job: Option<Arc<Job>>,
    // The job stage each open connection runs (None: not an operator), for listings.
    peers: Mutex<HashMap<ConnectionId, Option<usize>>>,
}

impl Shared {
    pub(crate) fn new(registry: Registry, job: Option<Arc<Job>>) -> Arc<Self> {
        Arc::new(Self {
            registry: Mutex::new(registry),
            job,
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

    fn peers_lock(&self) -> MutexGuard<'_, HashMap<ConnectionId, Option<usize>>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `fastio ls` shows. The registry's lock is released before the job's is taken.
    pub(crate) fn listing(&self) -> crate::listing::Listing {
        let snapshot = self.registry().snapshot();
        let peers = self.peers_lock().clone();
        crate::listing::compose(snapshot, self.job.as_deref(), &peers)
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
pub(crate) fn dispatch(
    shared: &Shared,
    peer: Peer,
    request: Request,
) -> (Response, Option<Segment>) {
    let refused = |e: RequestError| (Response::Refused(e), None);
    let grant = |g: Result<crate::registry::Grant, RequestError>| match g {
        Ok(g) => (
            Response::Handle {
                id: g.id,
                size: g.size,
                typed: g.typed,
                recycled: g.recycled,
                event: g.event,
            },
            Some(g.segment),
        ),
        Err(e) => refused(e),
    };
    let done = |r: Result<(), RequestError>| match r {
        Ok(()) => (Response::Done, None),
        Err(e) => refused(e),
    };
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
        Request::Create { size } => grant(shared.registry().create(conn, size)),
        Request::Publish {
            id,
            name,
            typed,
            event,
        } => done(shared.registry().publish(conn, id, &name, typed, event)),
        Request::Get { name, access } => grant(shared.registry().get(conn, &name, access)),
        Request::Release { id } => done(shared.registry().release(conn, id)),
        Request::Free { id } => done(shared.registry().free(conn, id)),
        Request::Stats => (Response::Stats(shared.registry().stats()), None),
        Request::Inspect => (Response::Listing(Box::new(shared.listing())), None),
        Request::AcquireWrite { id } => done(shared.registry().acquire_write(conn, id)),
        Request::ReleaseWrite { id } => done(shared.registry().release_write(conn, id)),
        Request::Join => match job_stage(shared, peer) {
            Ok((job, stage)) => match job.join(stage) {
                Ok(info) => (Response::Joined(Box::new(info)), None),
                Err(e) => refused(e),
            },
            Err(e) => refused(e),
        },
        Request::AwaitInputs => done(job_stage(shared, peer).and_then(|(j, s)| j.await_inputs(s))),
        Request::Finished { phase, failure } => match job_stage(shared, peer) {
            Ok((job, stage)) => {
                let reclaimed = if phase == Phase::Execute {
                    shared.registry().reclaim(conn)
                } else {
                    Vec::new()
                };
                job.reclaimed(stage, reclaimed.clone());
                job.finished(stage, phase, failure);
                if phase == Phase::Execute {
                    (Response::Reclaimed { handles: reclaimed }, None)
                } else {
                    (Response::Done, None)
                }
            }
            Err(e) => refused(e),
        },
        Request::OpenEntry { entry, access } => grant(
            entry_access(shared, peer, entry, access)
                .and_then(|()| shared.registry().open_entry(conn, entry, access)),
        ),
        Request::SetEntryEvent { entry, event } => done(
            entry_access(shared, peer, entry, AccessMode::ReadWrite)
                .and_then(|()| shared.registry().set_entry_event(entry, event)),
        ),
        Request::AllocateEntry { entry, dims } => grant(
            entry_access(shared, peer, entry, AccessMode::ReadWrite)
                .and_then(|()| shared.registry().allocate_entry(conn, entry, &dims)),
        ),
    }
}

fn job_stage(shared: &Shared, peer: Peer) -> Result<(&Job, usize), RequestError> {
    match (&shared.job, peer.stage) {
        (Some(job), Some(stage)) => Ok((job, stage)),
        _ => Err(RequestError::NotInJob),
    }
}

/// Whether `peer` may have `access` to `entry`: read-write only for its producer.
fn entry_access(
    shared: &Shared,
    peer: Peer,
    entry: EntryId,
    access: AccessMode,
) -> Result<(), RequestError> {
    let (job, stage) = job_stage(shared, peer)?;
    let plan = job.plan();
    let name = &plan
        .entries
        .get(entry.0 as usize)
        .ok_or(RequestError::UnknownEntry { id: entry.0 })?
        .name;
    match (plan.access(stage, entry), access) {
        (Some(AccessMode::ReadWrite), _) | (Some(AccessMode::ReadOnly), AccessMode::ReadOnly) => {
            Ok(())
        }
        (Some(AccessMode::ReadOnly), AccessMode::ReadWrite) => Err(RequestError::EntryAccess {
            message: format!("FastIO entry {name:?} is an input of this operator: it is read-only"),
        }),
        (None, _) => Err(RequestError::EntryAccess {
            message: format!(
                "FastIO entry {name:?} is neither an input nor an output of this operator"
            ),
        }),
    }
}

/// The in-process transport: a connection to a registry in this process.
pub(crate) struct LocalTransport {
    shared: Arc<Shared>,
    peer: Peer,
}

impl LocalTransport {
    pub(crate) fn new(shared: Arc<Shared>, stage: Option<usize>) -> Self {
        let peer = shared.connect(stage);
        Self { shared, peer }
    }
}

impl fmt::Debug for LocalTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalTransport({:?})", self.peer)
    }
}

impl Transport for LocalTransport {
    fn call(&self, request: &Request) -> Result<(Response, Option<Segment>), ContextError> {
        Ok(dispatch(&self.shared, self.peer, request.clone()))
    }
}

impl Drop for LocalTransport {
    fn drop(&mut self) {
        self.shared.disconnect(self.peer.conn);
    }
}

/// A connection to a context server over a `SOCK_SEQPACKET` socket.
pub(crate) struct SocketTransport {
    socket: Mutex<OwnedFd>,
}

impl fmt::Debug for SocketTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SocketTransport")
    }
}

impl SocketTransport {
    /// Wraps a connected socket and says hello.
    pub(crate) fn new(socket: OwnedFd) -> Result<Self, ContextError> {
        let transport = Self {
            socket: Mutex::new(socket),
        };
        match transport.call(&Request::Hello {
            version: PROTOCOL_VERSION,
        })? {
            (Response::Welcome { .. }, _) => Ok(transport),
            (Response::Refused(e), _) => Err(e.into()),
            (other, _) => Err(ContextError::Protocol(format!(
                "expected a welcome, got {other:?}"
            ))),
        }
    }
}

impl Transport for SocketTransport {
    fn call(&self, request: &Request) -> Result<(Response, Option<Segment>), ContextError> {
        let body =
            serde_json::to_vec(request).map_err(|e| ContextError::Protocol(e.to_string()))?;
        // One exchange at a time per connection: the lock spans send and receive.
        let socket = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        send_message(socket.as_fd(), &body, &[]).map_err(ContextError::ServerGone)?;
        let received = recv_message(socket.as_fd()).map_err(ContextError::ServerGone)?;
        drop(socket);
        let response: Response = serde_json::from_slice(&received.body)
            .map_err(|e| ContextError::Protocol(format!("unreadable response: {e}")))?;
        let mut fds = received.fds.into_iter();
        let segment = match (&response, fds.next()) {
            (Response::Handle { .. }, Some(fd)) => Some(Segment::from_fd(fd)?),
            (Response::Handle { .. }, None) => {
                return Err(ContextError::Protocol(
                    "a handle arrived without its descriptor".into(),
                ));
            }
            (_, _) => None,
        };
        Ok((response, segment))
    }
}
