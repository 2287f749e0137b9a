//! Errors of the context.

use fastio_meta::MetaError;
use fastio_shm::{SegmentError, TransferError};
use serde::{Deserialize, Serialize};

/// A request the context refused. These travel over the wire, so they carry only data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RequestError {
    /// The machine cannot hold the allocation.
    #[error("{message}")]
    OutOfMemory {
        /// Bytes requested.
        size: usize,
        /// The full message, with the size and what is available.
        message: String,
    },
    /// The name breaks the naming rule.
    #[error("{message}")]
    InvalidName {
        /// Why.
        message: String,
    },
    /// The name is already published.
    #[error(
        "{name:?} is already published; a name is published once per context (to publish it again, replace it or unpublish it first)"
    )]
    AlreadyPublished {
        /// The name.
        name: String,
    },
    /// No publication has this name.
    #[error("no publication named {name:?} in this context")]
    UnknownName {
        /// The name.
        name: String,
    },
    /// The resource published under this name was freed.
    #[error(
        "{name:?} was freed; it can no longer be got, nor published again unless replaced or unpublished first"
    )]
    NameFreed {
        /// The name.
        name: String,
    },
    /// The connection holds no handle to the resource (released, or never held).
    #[error("resource #{id} is not held by this client: the handle was released or never obtained")]
    NotHeld {
        /// The resource.
        id: u64,
    },
    /// The resource was freed and cannot be published.
    #[error("resource #{id} was freed; it cannot be published")]
    Deleted {
        /// The resource.
        id: u64,
    },
    /// The metadata describes more bytes than the allocation has.
    #[error("type and dimensions need {needed} bytes but the allocation has {size}")]
    MetadataTooLarge {
        /// Bytes the metadata describes.
        needed: usize,
        /// Bytes the allocation has.
        size: usize,
    },
    /// The publication was made from a read-only handle: it gives read-only handles only.
    #[error("{name:?} was published from a read-only handle; get it read-only")]
    ReadOnlyPublication {
        /// The name.
        name: String,
    },
    /// A reader asked to replace or withdraw a publication: only the client that published
    /// it, or one holding its memory read-write, may.
    #[error(
        "{name:?} was published by another client, and this one holds it read-only or not at all: only its publisher or a client holding it read-write may replace or withdraw it"
    )]
    NotPublisher {
        /// The name.
        name: String,
    },
    /// The request needs write access, and every handle this client was given to the
    /// resource is read-only.
    #[error("resource #{id} is held read-only by this client; writing needs a read-write handle")]
    ReadOnlyHandle {
        /// The resource.
        id: u64,
    },
    /// The memory was sealed against writes (a job output after its producer's execute).
    #[error(
        "resource #{id} is sealed read-only: it is a job's output whose producer has finished execute"
    )]
    Sealed {
        /// The resource.
        id: u64,
    },
    /// A FastIO input was opened before its producer finished execute.
    #[error("FastIO input {name:?} is not ready: its producer has not finished execute")]
    InputNotReady {
        /// The entry.
        name: String,
    },
    /// Another client holds the resource's write mapping.
    #[error("resource #{id} is mapped for writing by another client; one writer at a time")]
    WriterBusy {
        /// The resource.
        id: u64,
    },
    /// The request needs a job, and this connection is not an operator of one.
    #[error("this client is not an operator of a pipeline job")]
    NotInJob,
    /// The job failed before this operator's inputs were ready.
    #[error("the job was aborted: {reason}")]
    JobAborted {
        /// Why the job failed.
        reason: String,
    },
    /// No FastIO entry has this id.
    #[error("no FastIO entry #{id} in this job")]
    UnknownEntry {
        /// The entry.
        id: u32,
    },
    /// The operator may not access the entry this way.
    #[error("{message}")]
    EntryAccess {
        /// Which entry and why.
        message: String,
    },
    /// The entry has no allocation yet (a dynamic entry whose producer has not set its shape).
    #[error(
        "FastIO entry {name:?} has no allocation yet: its producer has not fixed its dynamic dimensions"
    )]
    EntryNotAllocated {
        /// The entry.
        name: String,
    },
    /// The dimensions do not fit the entry's declaration.
    #[error("{message}")]
    EntryShape {
        /// What does not fit.
        message: String,
    },
    /// The server could not carry out an operating-system call.
    #[error("the context server failed: {message}")]
    Internal {
        /// What failed.
        message: String,
    },
    /// The request was malformed or of another protocol version.
    #[error("bad request: {message}")]
    BadRequest {
        /// What was wrong.
        message: String,
    },
}

impl RequestError {
    pub(crate) fn from_segment(e: SegmentError) -> Self {
        match e {
            SegmentError::OutOfMemory { size, .. } => RequestError::OutOfMemory {
                size,
                message: e.to_string(),
            },
            other => RequestError::Internal {
                message: other.to_string(),
            },
        }
    }
}

/// Everything that can go wrong using a context.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The context refused the request.
    #[error(transparent)]
    Refused(#[from] RequestError),
    /// Bad type or shape metadata.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// A local segment or mapping operation failed.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// The context server went away (it exited or was killed). Mappings made before stay
    /// readable; new requests cannot be served.
    #[error("the context server is gone: {0}")]
    ServerGone(TransferError),
    /// Connecting to a context server failed.
    #[error("cannot connect to the context at {address:?}: {reason}")]
    Connect {
        /// The address tried.
        address: String,
        /// Why it failed.
        reason: String,
    },
    /// No context address is set in the environment.
    #[error("no context to join: set {var} (printed by `fastio serve`) or run under `fastio run`")]
    NoContextInEnvironment {
        /// The variable that was read.
        var: &'static str,
    },
    /// The connection was made by another process, which this one was forked from.
    #[error(
        "this context connection belongs to process {owner}, and this is process {pid} (a child made by fork()): connect again from the child (Context::from_env, which in a pipeline job uses FASTIO_CONTEXT_ADDRESS, or Context::connect with the server's @address)"
    )]
    Forked {
        /// The process that made the connection.
        owner: u32,
        /// This process.
        pid: u32,
    },
    /// The server did not answer in time.
    #[error(
        "the context server did not answer {request} within {after:?} (FASTIO_REQUEST_TIMEOUT_S sets the limit); this connection can no longer be used"
    )]
    Timeout {
        /// The request's name.
        request: String,
        /// How long the client waited.
        after: std::time::Duration,
    },
    /// An earlier request timed out, so answers on this connection can no longer be
    /// matched to requests.
    #[error(
        "an earlier request on this context connection timed out; it can no longer be used: connect again"
    )]
    OutOfStep,
    /// The server answered something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The allocation is read-only in this process.
    #[error("this handle is read-only; it cannot be written")]
    ReadOnly,
    /// A typed access needs metadata the handle does not have.
    #[error("the allocation has no type and dimensions; call set_type_and_dimensions first")]
    Untyped,
    /// A typed access used another element type than the allocation's.
    #[error("the allocation holds {actual}, not {requested}")]
    WrongElementType {
        /// The type asked for.
        requested: fastio_meta::ElementType,
        /// The allocation's type.
        actual: fastio_meta::ElementType,
    },
    /// A copy of the wrong length.
    #[error("expected {expected} bytes, got {actual}")]
    LengthMismatch {
        /// Bytes expected.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
}

impl ContextError {
    /// The refusal behind this error, if it is one.
    pub fn refusal(&self) -> Option<&RequestError> {
        match self {
            ContextError::Refused(r) => Some(r),
            _ => None,
        }
    }
}
