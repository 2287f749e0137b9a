//! The context server: the job's registry, reached over Unix sockets.
//!
//! It listens on an abstract Unix socket (Linux), so it leaves no file behind, whatever
//! way it ends; the name carries 128 random bits and every peer's uid is checked against
//! the server's own. A client can also be handed one end of a socket pair (how the
//! pipeline driver connects its operators). Each connection is served by its own thread;
//! when a connection closes, for any reason including SIGKILL of the client, the
//! connection's handles are dropped.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread;

use fastio_shm::TransferError;
use fastio_shm::transfer::{recv_message, send_message, seqpacket_pair};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::protocol::{Request, Response};
use crate::registry::{DEFAULT_POOL_BYTES, Registry};
use crate::transport::{dispatch, lock};
use crate::{Context, ContextError, RequestError};

/// The environment variable through which clients find their context.
///
/// `@name` is an abstract Unix socket address; `fd:N` an inherited connected socket.
pub const CONTEXT_ENV: &str = "FASTIO_CONTEXT";

/// Settings of a context server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Bound, in bytes, of the pool of warm segments kept for reuse (0 disables it).
    pub pool_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            pool_bytes: DEFAULT_POOL_BYTES,
        }
    }
}

/// A running context server. Dropping it stops accepting new clients; connections
/// already open keep being served until they close.
#[derive(Debug)]
pub struct Server {
    registry: Arc<Mutex<Registry>>,
    address: String,
    listener: Arc<OwnedFd>,
}

impl Server {
    /// Starts a server on a fresh abstract socket address.
    pub fn start(config: ServerConfig) -> Result<Self, ContextError> {
        let registry = Arc::new(Mutex::new(Registry::new(config.pool_bytes)));
        let name = random_name()?;
        let address = format!("@{name}");
        let io = |what: &str, e: rustix::io::Errno| ContextError::Connect {
            address: address.clone(),
            reason: format!("{what}: {e}"),
        };
        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| io("socket", e))?;
        let addr =
            SocketAddrUnix::new_abstract_name(name.as_bytes()).map_err(|e| io("address", e))?;
        rustix::net::bind(&listener, &addr).map_err(|e| io("bind", e))?;
        rustix::net::listen(&listener, 128).map_err(|e| io("listen", e))?;
        let listener = Arc::new(listener);
        let server = Self {
            registry: registry.clone(),
            address,
            listener: listener.clone(),
        };
        thread::Builder::new()
            .name("fastio-accept".into())
            .spawn(move || accept_loop(&listener, &registry))
            .map_err(|e| ContextError::Connect {
                address: server.address.clone(),
                reason: format!("cannot start the accept thread: {e}"),
            })?;
        Ok(server)
    }

    /// The address clients connect to (the value for [`CONTEXT_ENV`]).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A context in this process that shares this server's registry.
    pub fn local_context(&self) -> Context {
        Context::over_registry(self.registry.clone())
    }

    /// A connected socket for a client process (pass it down and set
    /// `FASTIO_CONTEXT=fd:N`); the server end is served by a new thread.
    pub fn client_socket(&self) -> Result<OwnedFd, ContextError> {
        let (ours, theirs) = seqpacket_pair().map_err(|e| ContextError::Connect {
            address: self.address.clone(),
            reason: e.to_string(),
        })?;
        spawn_connection(ours, self.registry.clone());
        Ok(theirs)
    }

    /// The server's registry, for the pipeline driver.
    pub fn registry(&self) -> &Arc<Mutex<Registry>> {
        &self.registry
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Wakes the accept thread, whose accept then fails and ends the loop.
        let _ = rustix::net::shutdown(&*self.listener, rustix::net::Shutdown::Both);
    }
}

fn random_name() -> Result<String, ContextError> {
    let mut bytes = [0u8; 16];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()).map_err(|e| {
        ContextError::Connect {
            address: String::new(),
            reason: format!("getrandom: {e}"),
        }
    })?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("fastio-{}-{hex}", std::process::id()))
}

fn accept_loop(listener: &OwnedFd, registry: &Arc<Mutex<Registry>>) {
    let me = rustix::process::getuid();
    loop {
        let socket = match rustix::net::accept_with(listener, SocketFlags::CLOEXEC) {
            Ok(socket) => socket,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED) => continue,
            Err(e) => {
                tracing::debug!("context server stops accepting: {e}");
                return;
            }
        };
        match rustix::net::sockopt::socket_peercred(&socket) {
            Ok(cred) if cred.uid == me => spawn_connection(socket, registry.clone()),
            Ok(cred) => tracing::warn!(
                "refused a client of uid {} (pid {}): only uid {} may join",
                cred.uid.as_raw(),
                cred.pid.as_raw_nonzero(),
                me.as_raw()
            ),
            Err(e) => tracing::warn!("refused a client whose credentials are unreadable: {e}"),
        }
    }
}

fn spawn_connection(socket: OwnedFd, registry: Arc<Mutex<Registry>>) {
    let spawned = thread::Builder::new()
        .name("fastio-conn".into())
        .spawn(move || serve_connection(socket, &registry));
    if let Err(e) = spawned {
        tracing::error!("cannot start a connection thread: {e}");
    }
}

/// Serves one connection until it closes, then drops its handles.
fn serve_connection(socket: OwnedFd, registry: &Mutex<Registry>) {
    let conn = lock(registry).connect();
    loop {
        let received = match recv_message(socket.as_fd()) {
            Ok(received) => received,
            Err(TransferError::Disconnected) => break,
            Err(e) => {
                tracing::debug!("connection {conn:?} ends: {e}");
                break;
            }
        };
        // Descriptors from a client are never expected; they are closed here.
        drop(received.fds);
        let (response, segment) = match serde_json::from_slice::<Request>(&received.body) {
            Ok(request) => dispatch(registry, conn, request),
            Err(e) => (
                Response::Refused(RequestError::BadRequest {
                    message: e.to_string(),
                }),
                None,
            ),
        };
        let body = match serde_json::to_vec(&response) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!("cannot encode a response: {e}");
                break;
            }
        };
        let fds: Vec<_> = segment.iter().map(AsFd::as_fd).collect();
        if send_message(socket.as_fd(), &body, &fds).is_err() {
            break;
        }
    }
    lock(registry).disconnect(conn);
}
