//! How a [`crate::Context`] reaches its registry: directly in this process, or over a
//! Unix socket to a context server.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use fastio_shm::Segment;
use fastio_shm::transfer::{recv_message, send_message};

use crate::ContextError;
use crate::protocol::{PROTOCOL_VERSION, Request, Response};
use crate::registry::{ConnectionId, Registry};

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

/// Carries out one request against the registry: the single dispatch that the server and
/// the in-process context share.
pub(crate) fn dispatch(
    registry: &Mutex<Registry>,
    conn: ConnectionId,
    request: Request,
) -> (Response, Option<Segment>) {
    let mut registry = lock(registry);
    let grant = |g: Result<crate::registry::Grant, crate::RequestError>| match g {
        Ok(g) => (
            Response::Handle {
                id: g.id,
                size: g.size,
                typed: g.typed,
                recycled: g.recycled,
            },
            Some(g.segment),
        ),
        Err(e) => (Response::Refused(e), None),
    };
    let done = |r: Result<(), crate::RequestError>| match r {
        Ok(()) => (Response::Done, None),
        Err(e) => (Response::Refused(e), None),
    };
    match request {
        Request::Hello { version } if version == PROTOCOL_VERSION => (
            Response::Welcome {
                version: PROTOCOL_VERSION,
            },
            None,
        ),
        Request::Hello { version } => (
            Response::Refused(crate::RequestError::BadRequest {
                message: format!(
                    "protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"
                ),
            }),
            None,
        ),
        Request::Create { size } => grant(registry.create(conn, size)),
        Request::Publish { id, name, typed } => done(registry.publish(conn, id, &name, typed)),
        Request::Get { name, access } => grant(registry.get(conn, &name, access)),
        Request::Release { id } => done(registry.release(conn, id)),
        Request::Free { id } => done(registry.free(conn, id)),
        Request::Stats => (Response::Stats(registry.stats()), None),
    }
}

/// The in-process transport: a connection to a registry in this process.
pub(crate) struct LocalTransport {
    registry: Arc<Mutex<Registry>>,
    conn: ConnectionId,
}

impl LocalTransport {
    pub(crate) fn new(registry: Arc<Mutex<Registry>>) -> Self {
        let conn = lock(&registry).connect();
        Self { registry, conn }
    }
}

impl fmt::Debug for LocalTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalTransport({:?})", self.conn)
    }
}

impl Transport for LocalTransport {
    fn call(&self, request: &Request) -> Result<(Response, Option<Segment>), ContextError> {
        Ok(dispatch(&self.registry, self.conn, request.clone()))
    }
}

impl Drop for LocalTransport {
    fn drop(&mut self) {
        lock(&self.registry).disconnect(self.conn);
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
