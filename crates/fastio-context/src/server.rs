//! The context server: the job's registry, reached over Unix sockets.
//!
//! It listens on an abstract Unix socket (Linux), so it leaves no file behind, whatever
//! way it ends; the name carries 128 random bits and every peer's uid is checked against
//! the server's own. A client can also be handed one end of a socket pair (how the
//! pipeline driver connects its operators). Each connection is served by its own thread;
//! when a connection closes, for any reason including SIGKILL of the client, the
//! connection's handles are dropped.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread;

use fastio_shm::TransferError;
use fastio_shm::transfer::{recv_message, send_message, seqpacket_pair};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::job::Job;
use crate::protocol::{Request, Response, Stats};
use crate::registry::{DEFAULT_POOL_BYTES, Registry};
use crate::transport::{Peer, Shared, dispatch};
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
    shared: Arc<Shared>,
    address: String,
    listener: Arc<OwnedFd>,
}

impl Server {
    /// Starts a server on a fresh abstract socket address.
    pub fn start(config: ServerConfig) -> Result<Self, ContextError> {
        Self::listen(Shared::new(Registry::new(config.pool_bytes), None))
    }

    /// Starts the context server of a pipeline job: the job's FastIO entries whose shape
    /// is fully known are allocated now, before any operator starts. Operators join over
    /// sockets from [`Server::operator_socket`].
    pub fn start_job(config: ServerConfig, job: Arc<Job>) -> Result<Self, ContextError> {
        let mut registry = Registry::new(config.pool_bytes);
        registry.define_entries(&job.plan().entries)?;
        Self::listen(Shared::new(registry, Some(job)))
    }

    /// [`Server::start_job`] with some entries filled before any operator starts, each
    /// `(entry, dims, bytes)`: the inputs of an operator run alone (`fastio run-op`).
    pub fn start_job_with_inputs(
        config: ServerConfig,
        job: Arc<Job>,
        inputs: &[(crate::job::EntryId, Vec<usize>, Vec<u8>)],
    ) -> Result<Self, ContextError> {
        let mut registry = Registry::new(config.pool_bytes);
        registry.define_entries(&job.plan().entries)?;
        for (entry, dims, bytes) in inputs {
            registry.fill_entry(*entry, dims, bytes)?;
        }
        Self::listen(Shared::new(registry, Some(job)))
    }

    fn listen(shared: Arc<Shared>) -> Result<Self, ContextError> {
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
            shared: shared.clone(),
            address,
            listener: listener.clone(),
        };
        thread::Builder::new()
            .name("fastio-accept".into())
            .spawn(move || accept_loop(&listener, &shared))
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
        Context::over_shared(self.shared.clone(), None)
    }

    /// A context in this process that acts as stage `stage` of the job (used to run an
    /// operator in the driver's own process, and by tests).
    pub fn local_operator_context(&self, stage: usize) -> Context {
        Context::over_shared(self.shared.clone(), Some(stage))
    }

    /// A connected socket for a client process (pass it down and set
    /// `FASTIO_CONTEXT=fd:N`); the server end is served by a new thread.
    pub fn client_socket(&self) -> Result<OwnedFd, ContextError> {
        self.socket_for(None)
    }

    /// A connected socket for the process of stage `stage` of the job: requests on it act
    /// as that operator (join, life-cycle, its entries). The stage is fixed here, by the
    /// driver, never claimed by the client.
    pub fn operator_socket(&self, stage: usize) -> Result<OwnedFd, ContextError> {
        self.socket_for(Some(stage))
    }

    fn socket_for(&self, stage: Option<usize>) -> Result<OwnedFd, ContextError> {
        let (ours, theirs) = seqpacket_pair().map_err(|e| ContextError::Connect {
            address: self.address.clone(),
            reason: e.to_string(),
        })?;
        spawn_connection(ours, self.shared.clone(), stage);
        Ok(theirs)
    }

    /// The context's accounting.
    pub fn stats(&self) -> Stats {
        self.shared.registry().stats()
    }

    /// Bytes of the memory behind FastIO entry `entry` now, or `None` while it has none.
    pub fn entry_bytes(&self, entry: crate::job::EntryId) -> Option<usize> {
        self.shared.registry().entry_bytes(entry)
    }

    /// Stops the server and drops every segment it holds now (resources, publications,
    /// entries, the warm pool), rather than when the last connection thread ends. For the
    /// end of a job, once its operators are gone; mappings clients still have stay valid.
    pub fn close(self) {
        *self.shared.registry() = Registry::new(0);
    }

    /// The job this server hosts, if any.
    pub fn job(&self) -> Option<&Arc<Job>> {
        self.shared.job.as_ref()
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

fn accept_loop(listener: &OwnedFd, shared: &Arc<Shared>) {
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
            Ok(cred) if cred.uid == me => spawn_connection(socket, shared.clone(), None),
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

fn spawn_connection(socket: OwnedFd, shared: Arc<Shared>, stage: Option<usize>) {
    let spawned = thread::Builder::new()
        .name("fastio-conn".into())
        .spawn(move || serve_connection(socket, &shared, stage));
    if let Err(e) = spawned {
        tracing::error!("cannot start a connection thread: {e}");
    }
}

/// Serves one connection until it closes, then drops its handles.
fn serve_connection(socket: OwnedFd, shared: &Shared, stage: Option<usize>) {
    let peer: Peer = shared.connect(stage);
    let conn = peer.conn;
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
            Ok(request) => dispatch(shared, peer, request),
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
    shared.disconnect(conn);
}
