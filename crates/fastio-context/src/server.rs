//! The context server: the job's registry, reached over Unix sockets.
//!
//! It listens on an abstract Unix socket (Linux), so it leaves no file behind, whatever
//! way it ends; the name carries 128 random bits and every peer's uid is checked against
//! the server's own. A client can also be handed one end of a socket pair (how the
//! pipeline driver connects its operators). Each connection is served by its own thread;
//! when a connection closes, for any reason including SIGKILL of the client, the
//! connection's handles are dropped.
//!
//! The server degrades, it does not die: a failed `accept` (out of descriptors, out of
//! memory) is logged and retried after a growing pause, and the server keeps serving the
//! connections it has; only dropping the [`Server`] ends the accept loop.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use fastio_shm::TransferError;
use fastio_shm::transfer::{recv_message, send_message, seqpacket_pair};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::protocol::{JobSecret, PROTOCOL_VERSION, Request, Response, Stats};
use crate::registry::{DEFAULT_POOL_BYTES, DEFAULT_POOL_SEGMENTS, Registry};
use crate::service::{ContextMemory, JobService};
use crate::transport::{Peer, Shared, dispatch};
use crate::{Context, ContextError, RequestError};

/// The environment variable through which clients find their context.
///
/// `@name` is an abstract Unix socket address; `fd:N` an inherited connected socket.
pub const CONTEXT_ENV: &str = "FASTIO_CONTEXT";

/// The environment variable that holds the server's `@name` address beside an inherited
/// `fd:N` connection (the pipeline driver sets both for its operators), so that a child
/// an operator makes with `fork()`, which cannot share its parent's connection, can
/// connect on its own: [`Context::from_env`](crate::Context::from_env) uses it then.
pub const CONTEXT_ADDRESS_ENV: &str = "FASTIO_CONTEXT_ADDRESS";

/// Settings of a context server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Bound, in bytes, of the pool of warm segments kept for reuse (0 disables it).
    pub pool_bytes: u64,
    /// Bound, in segments (descriptors), of the same pool.
    pub pool_segments: usize,
    /// Collapse pooled segments into huge pages in the background (also off when
    /// `FASTIO_COLLAPSE=0`).
    pub collapse: bool,
    /// The CUDA driver device memory is made through; `None`: the machine's, found on the
    /// first device create (cuda-streams' CPU fake in tests).
    pub device_driver: Option<cuda_streams::Driver>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            pool_bytes: DEFAULT_POOL_BYTES,
            pool_segments: DEFAULT_POOL_SEGMENTS,
            collapse: true,
            device_driver: None,
        }
    }
}

impl ServerConfig {
    fn registry(&self) -> Registry {
        let mut registry = Registry::new(self.pool_bytes);
        registry.set_pool_segments(self.pool_segments);
        registry.collapse_pooled(self.collapse);
        if let Some(driver) = &self.device_driver {
            registry.set_device_driver(driver.clone());
        }
        registry
    }
}

/// Raises this process's soft limit on open descriptors to its hard limit: a server holds
/// a descriptor per segment and per connection, and the common soft limit (1024) is far
/// below what the hard limit allows. Returns the soft limit now.
pub fn raise_descriptor_limit() -> Option<u64> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Nofile, raised) {
            tracing::debug!("cannot raise the descriptor limit: {e}");
        }
    }
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// A running context server. Dropping it stops accepting new clients; connections
/// already open keep being served until they close.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    address: String,
    listener: Arc<OwnedFd>,
    stopped: Arc<AtomicBool>,
}

impl Server {
    /// Starts a server on a fresh abstract socket address.
    pub fn start(config: ServerConfig) -> Result<Self, ContextError> {
        Self::listen(Shared::new(config.registry(), None))
    }

    /// Starts the context server of a pipeline job, which `job` runs (the fastio-job
    /// crate's `host` makes both): the job sets up what it needs from the start
    /// ([`JobService::set_up`]) before the server listens. Operators join over sockets
    /// from [`Server::operator_socket`].
    pub fn start_with_job(
        config: ServerConfig,
        job: Arc<dyn JobService>,
    ) -> Result<Self, ContextError> {
        let shared = Shared::new(config.registry(), Some(job));
        shared.set_up_job()?;
        Self::listen(shared)
    }

    /// Starts the context server of a pipeline job whose operators were not started by
    /// it and join over the abstract socket `@name` (the containers of a Kubernetes Pod,
    /// which share a network namespace): each opens with [`Request::Attach`], naming its
    /// stage and presenting `secret`. The uid check of every connection still applies.
    ///
    /// [`Request::Attach`]: crate::protocol::Request::Attach
    pub fn start_with_job_at(
        config: ServerConfig,
        job: Arc<dyn JobService>,
        name: &str,
        secret: JobSecret,
    ) -> Result<Self, ContextError> {
        if secret.0.len() < 16 {
            return Err(ContextError::Connect {
                address: format!("@{name}"),
                reason: "the job's secret must have at least 16 characters".into(),
            });
        }
        let shared = Shared::new(config.registry(), Some(job));
        shared.set_up_job()?;
        let _ = shared.join_secret.set(secret);
        Self::listen_at(shared, name.to_owned())
    }

    fn listen(shared: Arc<Shared>) -> Result<Self, ContextError> {
        let name = random_name()?;
        Self::listen_at(shared, name)
    }

    fn listen_at(shared: Arc<Shared>, name: String) -> Result<Self, ContextError> {
        raise_descriptor_limit();
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
        let stopped = Arc::new(AtomicBool::new(false));
        let server = Self {
            shared: shared.clone(),
            address,
            listener: listener.clone(),
            stopped: stopped.clone(),
        };
        thread::Builder::new()
            .name("fastio-accept".into())
            .spawn(move || accept_loop(&listener, &shared, &stopped))
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
        spawn_connection(ours, self.shared.clone(), stage, None);
        Ok(theirs)
    }

    /// A connection to this server without a socket: [`Session::handle`] takes each
    /// message as the server receives it and answers what the server would send. The
    /// protocol's fuzz tests drive the server's decoder and registry through it.
    pub fn session(&self) -> Session {
        Session::new(self.shared.clone(), None)
    }

    /// As [`Server::session`], acting as stage `stage` of the job.
    pub fn operator_session(&self, stage: usize) -> Session {
        Session::new(self.shared.clone(), Some(stage))
    }

    /// The context's accounting.
    pub fn stats(&self) -> Stats {
        self.shared.registry().stats()
    }

    /// The registry's calls for the memory of a job's entries (what a job runtime uses;
    /// tests drive a runtime's set-up through it).
    pub fn memory(&self) -> ContextMemory<'_> {
        self.shared.memory()
    }

    /// Stops the server and drops every segment it holds now (resources, publications,
    /// entries, the warm pool), rather than when the last connection thread ends. For the
    /// end of a job, once its operators are gone; mappings clients still have stay valid.
    pub fn close(self) {
        self.shared.registry().empty();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Wakes the accept thread, whose accept then fails and, seeing the flag, ends the
        // loop.
        self.stopped.store(true, Ordering::SeqCst);
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

/// Longest pause between two accepts after errors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

fn accept_loop(listener: &OwnedFd, shared: &Arc<Shared>, stopped: &AtomicBool) {
    let me = rustix::process::getuid();
    let mut backoff = Duration::ZERO;
    loop {
        let socket = match rustix::net::accept_with(listener, SocketFlags::CLOEXEC) {
            Ok(socket) => socket,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::CONNABORTED)
                if !stopped.load(Ordering::SeqCst) =>
            {
                continue;
            }
            Err(e) => {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                // Out of descriptors or memory, most likely: the pending client stays in
                // the backlog and is accepted once the pressure passes.
                backoff = (backoff * 2).clamp(Duration::from_millis(5), MAX_ACCEPT_BACKOFF);
                if backoff < MAX_ACCEPT_BACKOFF {
                    tracing::warn!(
                        "the context server cannot accept a client ({e}); retrying in {backoff:?}"
                    );
                } else {
                    tracing::debug!("accept still fails: {e}");
                }
                thread::sleep(backoff);
                continue;
            }
        };
        backoff = Duration::ZERO;
        match crate::sys::peer_credentials(socket.as_fd()) {
            Ok((pid, uid)) if uid == me.as_raw() => {
                // 0: the peer's process is outside this PID namespace.
                let pid = Some(pid).filter(|&p| p > 0);
                spawn_connection(socket, shared.clone(), None, pid);
            }
            Ok((pid, uid)) => tracing::warn!(
                "refused a client of uid {uid} (pid {pid}): only uid {} may join",
                me.as_raw()
            ),
            Err(e) => tracing::warn!("refused a client whose credentials are unreadable: {e}"),
        }
    }
}

fn spawn_connection(socket: OwnedFd, shared: Arc<Shared>, stage: Option<usize>, pid: Option<i32>) {
    let spawned = thread::Builder::new()
        .name("fastio-conn".into())
        .spawn(move || serve_connection(socket, shared, stage, pid));
    if let Err(e) = spawned {
        tracing::error!("cannot start a connection thread: {e}");
    }
}

/// Serves one connection until it closes; its session then drops its handles.
fn serve_connection(socket: OwnedFd, shared: Arc<Shared>, stage: Option<usize>, pid: Option<i32>) {
    let mut session = Session::new(shared, stage);
    session.pid = pid;
    loop {
        let received = match recv_message(socket.as_fd()) {
            Ok(received) => received,
            Err(TransferError::Disconnected) => break,
            Err(e) => {
                tracing::debug!("connection {:?} ends: {e}", session.peer.conn);
                break;
            }
        };
        // Descriptors from a client are never expected; they are closed here.
        drop(received.fds);
        let (body, memory) = session.handle_unless(&received.body, &|| hung_up(&socket));
        let fds: Vec<_> = memory
            .iter()
            .map(|m| match m {
                crate::registry::GrantedMemory::Host(segment) => segment.as_fd(),
                crate::registry::GrantedMemory::Device(fd) => fd.as_fd(),
            })
            .collect();
        if send_message(socket.as_fd(), &body, &fds).is_err() {
            break;
        }
    }
}

/// Whether the client at the other end of `socket` has closed it (checked without waiting).
fn hung_up(socket: &OwnedFd) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(socket, PollFlags::RDHUP)];
    match poll(&mut fds, Some(&Timespec::default())) {
        Ok(0) => false,
        Ok(_) => fds[0]
            .revents()
            .intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR),
        Err(_) => false,
    }
}

/// One client's conversation with the server: decodes each message, refuses everything
/// before `Hello`, dispatches to the registry and encodes the answer. Dropping it drops
/// every handle the client held, as a closed connection does.
pub struct Session {
    shared: Arc<Shared>,
    peer: Peer,
    greeted: bool,
    // The peer's process id, from its credentials, when this namespace can see it.
    pid: Option<i32>,
    // The stage this connection took with `Attach`: its closing is that operator's exit.
    attached: Option<usize>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("greeted", &self.greeted)
            .finish()
    }
}

impl Session {
    fn new(shared: Arc<Shared>, stage: Option<usize>) -> Self {
        let peer = shared.connect(stage);
        Self {
            shared,
            peer,
            greeted: false,
            pid: None,
            attached: None,
        }
    }

    /// The registry's id of this session's connection: whose handles a grant adds to.
    pub fn connection(&self) -> crate::registry::ConnectionId {
        self.peer.conn
    }

    /// Answers one message: the response's body, and the descriptor that goes with it.
    pub fn handle(&mut self, body: &[u8]) -> (Vec<u8>, Option<crate::registry::GrantedMemory>) {
        self.handle_unless(body, &|| false)
    }

    /// [`Session::handle`] for a client whose socket may close while a request waits:
    /// `gone` says so (see [`crate::service::JobService::await_inputs`]).
    fn handle_unless(
        &mut self,
        body: &[u8],
        gone: &dyn Fn() -> bool,
    ) -> (Vec<u8>, Option<crate::registry::GrantedMemory>) {
        let refuse = |message: String| {
            (
                Response::Refused(RequestError::BadRequest { message }),
                None,
            )
        };
        let (response, segment) = match serde_json::from_slice::<Request>(body) {
            // A job's server for operators that join admits only them: the secret is what
            // proves a peer belongs, and a plain client would reach the job's publications
            // without it.
            Ok(Request::Hello { .. }) if self.shared.join_secret.get().is_some() => refuse(
                "this job's context server admits only its operators, which join with the \
                 job's secret (FASTIO_JOB_SOCKET, FASTIO_JOB_SECRET, FASTIO_STAGE)"
                    .into(),
            ),
            Ok(request @ Request::Hello { .. }) => {
                let answer = dispatch(&self.shared, self.peer, request, gone);
                self.greeted |= matches!(answer.0, Response::Welcome { .. });
                answer
            }
            Ok(Request::Attach {
                version,
                stage,
                secret,
            }) if !self.greeted => match self.attach(version, &stage, &secret) {
                Ok(()) => {
                    self.greeted = true;
                    (
                        Response::Welcome {
                            version: PROTOCOL_VERSION,
                        },
                        None,
                    )
                }
                Err(e) => (Response::Refused(e), None),
            },
            Ok(_) if !self.greeted => refuse(format!(
                "the first request on a connection must be hello (protocol version {PROTOCOL_VERSION})"
            )),
            Ok(request) => dispatch(&self.shared, self.peer, request, gone),
            Err(e) => refuse(e.to_string()),
        };
        // Responses are plain data, so encoding cannot fail; were it to, the empty body
        // reaches the client as an unreadable response rather than a hang.
        let body = serde_json::to_vec(&response).unwrap_or_default();
        (body, segment)
    }
}

impl Session {
    /// Checks an operator that joins a job it was not started by, and makes the connection
    /// its stage's. A refusal changes nothing: the connection may try again or close.
    fn attach(
        &mut self,
        version: u32,
        stage: &str,
        secret: &JobSecret,
    ) -> Result<(), RequestError> {
        let bad = |message: String| RequestError::BadRequest { message };
        if version != PROTOCOL_VERSION {
            return Err(bad(format!(
                "protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"
            )));
        }
        let (Some(job), Some(expected)) = (&self.shared.job, self.shared.join_secret.get()) else {
            return Err(bad(
                "this context server runs no job that operators may join".into(),
            ));
        };
        if !expected.matches(secret) {
            tracing::warn!("refused an operator claiming stage {stage:?}: wrong job secret");
            return Err(bad(
                "wrong job secret: this operator does not belong to the job".into(),
            ));
        }
        let index = job
            .stage_named(stage)
            .ok_or_else(|| bad(format!("the job has no operator named {stage:?}")))?;
        job.attach(index, self.pid)?;
        self.attached = Some(index);
        self.peer.stage = Some(index);
        self.shared.set_stage(self.peer.conn, index);
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.disconnect(self.peer.conn);
        // Memory that died with the connection is released outside the registry's lock.
        self.shared.bury_dead();
        // After its handles are gone, so that whoever hears of the exit finds them dropped.
        if let (Some(stage), Some(job)) = (self.attached, &self.shared.job) {
            job.left(stage);
        }
    }
}
