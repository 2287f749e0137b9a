//! Hosting a job: a context server (or an in-process context) whose job requests go to
//! the job's runtime.

use std::sync::Arc;

use fastio_context::protocol::{EntryId, JobSecret};
use fastio_context::{Context, ContextError, Server, ServerConfig};

use crate::job::Job;
use crate::runtime::{EntryInput, JobRuntime};

/// A context server hosting a job: the [`Server`] (which it dereferences to) and the
/// job's runtime.
#[derive(Debug)]
pub struct JobServer {
    server: Server,
    runtime: Arc<JobRuntime>,
}

impl std::ops::Deref for JobServer {
    type Target = Server;

    fn deref(&self) -> &Server {
        &self.server
    }
}

impl JobServer {
    /// The job's runtime.
    pub fn runtime(&self) -> &Arc<JobRuntime> {
        &self.runtime
    }

    /// The job's state.
    pub fn job(&self) -> &Arc<Job> {
        self.runtime.job()
    }

    /// Bytes of the memory behind FastIO entry `entry` now, or `None` while it has none.
    pub fn entry_bytes(&self, entry: EntryId) -> Option<usize> {
        self.runtime.entry_bytes(entry)
    }

    /// The server alone.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Stops the server and drops every segment it holds now ([`Server::close`]).
    pub fn close(self) {
        self.server.close();
    }
}

/// Starts the context server of a pipeline job: the job's FastIO entries whose shape is
/// fully known are allocated now, before any operator starts. Operators join over
/// sockets from [`Server::operator_socket`].
pub fn host(config: ServerConfig, job: Arc<Job>) -> Result<JobServer, ContextError> {
    host_with_inputs(config, job, Vec::new())
}

/// [`host`] with some entries filled before any operator starts, each
/// `(entry, dims, bytes)`: the inputs of an operator run alone (`fastio run-op`).
pub fn host_with_inputs(
    config: ServerConfig,
    job: Arc<Job>,
    inputs: Vec<EntryInput>,
) -> Result<JobServer, ContextError> {
    let runtime = Arc::new(JobRuntime::with_inputs(job, inputs));
    let server = Server::start_with_job(config, runtime.clone())?;
    Ok(JobServer { server, runtime })
}

/// Starts the context server of a pipeline job whose operators were not started by it
/// and join over the abstract socket `@name` (the containers of a Kubernetes Pod, which
/// share a network namespace), presenting `secret` ([`Server::start_with_job_at`]).
pub fn host_at(
    config: ServerConfig,
    job: Arc<Job>,
    name: &str,
    secret: JobSecret,
) -> Result<JobServer, ContextError> {
    let runtime = Arc::new(JobRuntime::new(job));
    let server = Server::start_with_job_at(config, runtime.clone(), name, secret)?;
    Ok(JobServer { server, runtime })
}

/// A private context in this process that hosts `job` and acts as its stage `stage`: how
/// an operator runs alone, without a driver. The job's entries are set up as the driver's
/// server would (pre-allocated ones exist, zeroed).
pub fn in_process(job: Arc<Job>, stage: usize) -> Result<Context, ContextError> {
    Context::in_process_with_job(Arc::new(JobRuntime::new(job)), stage)
}
