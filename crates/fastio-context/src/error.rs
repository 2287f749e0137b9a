//! Errors of the context.
//!
//! A refusal is one enum per operation ([`CreateError`], [`PublishError`], ...), each
//! with the variants that operation can meet and the data that explains them, so that a
//! caller (and the C and Python mappings, which match them exhaustively) tells the causes
//! apart without reading messages. [`RequestError`] is what travels over the wire: one
//! variant per operation, wrapping that operation's enum.

use fastio_meta::MetaError;
use fastio_shm::{SegmentError, TransferError};
use serde::{Deserialize, Serialize};

/// Why `create` was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CreateError {
    /// The machine cannot hold the allocation.
    #[error("{message}")]
    OutOfMemory {
        /// Bytes requested.
        size: usize,
        /// The full message, with the size and what is available.
        message: String,
    },
    /// Device memory could not be made: no CUDA driver, no such device, or the driver
    /// refused (a full device among them).
    #[error("cannot make {memory} memory: {reason}")]
    Device {
        /// The memory asked for.
        memory: crate::protocol::MemoryKind,
        /// What the CUDA driver (or its absence) said.
        reason: String,
    },
    /// The memory could not be made (an operating-system call failed).
    #[error("the context server could not make the memory: {message}")]
    System {
        /// What failed.
        message: String,
    },
}

/// Why `publish` was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PublishError {
    /// The name breaks the naming rule.
    #[error("{reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Which rule it breaks.
        reason: String,
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
    /// The name is already published.
    #[error(
        "{name:?} is already published; a name is published once per context (to publish it again, replace it or unpublish it first)"
    )]
    AlreadyPublished {
        /// The name.
        name: String,
    },
    /// A reader asked to replace a publication: only the client that published it, or
    /// one holding its memory read-write, may.
    #[error(
        "{name:?} was published by another client, and this one holds it read-only or not at all: only its publisher or a client holding it read-write may replace or withdraw it"
    )]
    NotPublisher {
        /// The name.
        name: String,
    },
    /// The resource published under this name was freed; the name stays taken.
    #[error(
        "{name:?} was freed; it can no longer be got, nor published again unless replaced or unpublished first"
    )]
    NameFreed {
        /// The name.
        name: String,
    },
}

/// Why `unpublish` was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UnpublishError {
    /// No publication, live or freed, has this name.
    #[error("no publication named {name:?} in this context")]
    UnknownName {
        /// The name.
        name: String,
    },
    /// A reader asked to withdraw a publication: only the client that published it, or
    /// one holding its memory read-write, may.
    #[error(
        "{name:?} was published by another client, and this one holds it read-only or not at all: only its publisher or a client holding it read-write may replace or withdraw it"
    )]
    NotPublisher {
        /// The name.
        name: String,
    },
}

/// Why `get` was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GetError {
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
    /// Read-write access was asked of a publication made from a read-only handle.
    #[error("{name:?} was published from a read-only handle; get it read-only")]
    ReadOnlyPublication {
        /// The name.
        name: String,
    },
    /// Read-write access was asked of memory sealed against writes (a job's output whose
    /// producer has finished execute).
    #[error("{name:?} is sealed read-only (resource #{id}); get it read-only")]
    Sealed {
        /// The name.
        name: String,
        /// The resource.
        id: u64,
    },
    /// The descriptor could not be duplicated (an operating-system call failed).
    #[error("the context server could not hand out the memory: {message}")]
    System {
        /// What failed.
        message: String,
    },
}

/// Why `release` or `free` was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReleaseError {
    /// The connection holds no handle to the resource (released, or never held).
    #[error("resource #{id} is not held by this client: the handle was released or never obtained")]
    NotHeld {
        /// The resource.
        id: u64,
    },
    /// `free` through a read-only handle by a client that did not publish the memory:
    /// freeing takes it from every holder and name, which a reader may not.
    #[error(
        "resource #{id} is held read-only by this client, which did not publish it; freeing needs a read-write handle"
    )]
    ReadOnlyHandle {
        /// The resource.
        id: u64,
    },
    /// `free` of the memory of a FastIO entry, which the job manages.
    #[error(
        "resource #{id} is the memory of FastIO entry {entry:?}, which the job manages: it cannot be freed; release the handle instead"
    )]
    EntryMemory {
        /// The resource.
        id: u64,
        /// The entry.
        entry: String,
    },
}

/// Why taking or giving back a resource's write mapping was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WriteError {
    /// The connection holds no handle to the resource (released, or never held).
    #[error("resource #{id} is not held by this client: the handle was released or never obtained")]
    NotHeld {
        /// The resource.
        id: u64,
    },
    /// Every handle this client was given to the resource is read-only.
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
    /// Another writer holds the resource's write mapping.
    #[error("resource #{id} is mapped for writing by another handle; one writer at a time")]
    WriterBusy {
        /// The resource.
        id: u64,
    },
    /// A write mapping was given back that this handle had not taken.
    #[error("resource #{id} is not mapped for writing by this handle")]
    NotWriter {
        /// The resource.
        id: u64,
    },
}

/// Why a job request (join, await inputs, finished) was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobError {
    /// The request needs a job, and this connection is not an operator of one.
    #[error("this client is not an operator of a pipeline job")]
    NotInJob,
    /// The operator joined its job before.
    #[error("this operator has already joined the job")]
    AlreadyJoined,
    /// An operator joining from elsewhere claimed a stage another has taken (a restarted
    /// or duplicated container cannot replay an operator's part of the job).
    #[error("operator {stage:?} has already joined this job; a stage is taken once")]
    StageTaken {
        /// The operator's name.
        stage: String,
    },
    /// The job failed before this operator's inputs were ready.
    #[error("the job was aborted: {reason}")]
    Aborted {
        /// Why the job failed.
        reason: String,
    },
}

/// Why a FastIO entry request (open, allocate, attach an event) was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryError {
    /// The request needs a job, and this connection is not an operator of one.
    #[error("this client is not an operator of a pipeline job")]
    NotInJob,
    /// No FastIO entry has this id.
    #[error("no FastIO entry #{id} in this job")]
    UnknownEntry {
        /// The entry.
        id: u32,
    },
    /// The operator has no input (or output) of this name.
    #[error("this operator has no {role} named {name:?}; it has {known:?}")]
    NoEntryNamed {
        /// `input` or `output`.
        role: String,
        /// The name asked for.
        name: String,
        /// The names it has.
        known: Vec<String>,
    },
    /// The entry is neither an input nor an output of the operator.
    #[error("FastIO entry {name:?} is neither an input nor an output of this operator")]
    NotOfOperator {
        /// The entry.
        name: String,
    },
    /// Write access to an input of the operator.
    #[error("FastIO entry {name:?} is an input of this operator: it is read-only")]
    InputReadOnly {
        /// The entry.
        name: String,
    },
    /// Write access to an output whose producer has finished execute.
    #[error("FastIO output {name:?} is final: this operator has finished execute")]
    OutputFinal {
        /// The entry.
        name: String,
    },
    /// An input was opened before its producer finished execute.
    #[error("FastIO input {name:?} is not ready: its producer has not finished execute")]
    InputNotReady {
        /// The entry.
        name: String,
    },
    /// The entry has no allocation yet (a dynamic entry whose producer has not set its shape).
    #[error(
        "FastIO entry {name:?} has no allocation yet: its producer has not fixed its dynamic dimensions"
    )]
    NotAllocated {
        /// The entry.
        name: String,
    },
    /// The entry's memory was let go once every operator reading it had finished execute.
    #[error(
        "FastIO entry {name:?} no longer has memory: every operator that reads it has finished execute"
    )]
    Released {
        /// The entry.
        name: String,
    },
    /// A pre-allocated entry cannot be allocated again.
    #[error(
        "FastIO entry {name:?} was pre-allocated with its declared shape; it cannot be allocated again"
    )]
    Preallocated {
        /// The entry.
        name: String,
    },
    /// The entry still has a dynamic dimension unset: it cannot be allocated yet.
    #[error(
        "FastIO entry {name:?} has shape {shape:?}: set every dynamic dimension (indices {dynamic:?}) with update_shape before allocating"
    )]
    ShapeUnset {
        /// The entry.
        name: String,
        /// Its shape now (-1 or 0 where unset).
        shape: Vec<i64>,
        /// The indices of its dynamic dimensions.
        dynamic: Vec<usize>,
    },
    /// The dimensions do not fit the entry's declaration.
    #[error("dimensions {dims:?} do not fit FastIO entry {name:?}: {reason}")]
    Shape {
        /// The entry.
        name: String,
        /// The dimensions given.
        dims: Vec<usize>,
        /// What does not fit.
        reason: String,
    },
    /// The entry's memory is sealed against writes.
    #[error("the memory of FastIO entry {name:?} is sealed read-only")]
    Sealed {
        /// The entry.
        name: String,
    },
    /// The machine cannot hold the entry's memory.
    #[error("{message}")]
    OutOfMemory {
        /// Bytes requested.
        size: usize,
        /// The full message, with the size and what is available.
        message: String,
    },
    /// A device entry's memory could not be made on its device.
    #[error("FastIO entry {name:?} cannot be allocated on {memory}: {reason}")]
    Device {
        /// The entry.
        name: String,
        /// Where it was to live.
        memory: crate::protocol::MemoryKind,
        /// What the CUDA driver (or its absence) said.
        reason: String,
    },
    /// An operating-system call failed.
    #[error("the context server failed on the entry's memory: {message}")]
    System {
        /// What failed.
        message: String,
    },
}

/// A request the context refused: which operation, and why. These travel over the wire,
/// so they carry only data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "op", content = "refusal", rename_all = "snake_case")]
pub enum RequestError {
    /// `create` was refused.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// `publish` was refused.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// `unpublish` was refused.
    #[error(transparent)]
    Unpublish(#[from] UnpublishError),
    /// `get` was refused.
    #[error(transparent)]
    Get(#[from] GetError),
    /// `release` or `free` was refused.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// Taking or giving back a write mapping was refused.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A job request was refused.
    #[error(transparent)]
    Job(#[from] JobError),
    /// A FastIO entry request was refused.
    #[error(transparent)]
    Entry(#[from] EntryError),
    /// The request was malformed, out of order or of another protocol version.
    #[error("bad request: {message}")]
    BadRequest {
        /// What was wrong.
        message: String,
    },
}

/// Memory could not be obtained or handed out: the part shared by the operations that
/// make or duplicate segments, turned into each one's own enum.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemoryFailure {
    /// The machine cannot hold the memory.
    #[error("{message}")]
    OutOfMemory {
        /// Bytes requested.
        size: usize,
        /// The full message.
        message: String,
    },
    /// An operating-system call failed.
    #[error("{message}")]
    System {
        /// What failed.
        message: String,
    },
}

impl MemoryFailure {
    /// Classifies a segment failure.
    pub fn from_segment(e: SegmentError) -> Self {
        match e {
            SegmentError::OutOfMemory { size, .. } => MemoryFailure::OutOfMemory {
                size,
                message: e.to_string(),
            },
            other => MemoryFailure::System {
                message: other.to_string(),
            },
        }
    }
}

impl From<MemoryFailure> for CreateError {
    fn from(e: MemoryFailure) -> Self {
        match e {
            MemoryFailure::OutOfMemory { size, message } => {
                CreateError::OutOfMemory { size, message }
            }
            MemoryFailure::System { message } => CreateError::System { message },
        }
    }
}

impl From<MemoryFailure> for EntryError {
    fn from(e: MemoryFailure) -> Self {
        match e {
            MemoryFailure::OutOfMemory { size, message } => {
                EntryError::OutOfMemory { size, message }
            }
            MemoryFailure::System { message } => EntryError::System { message },
        }
    }
}

impl From<MemoryFailure> for GetError {
    fn from(e: MemoryFailure) -> Self {
        match e {
            // Duplicating a descriptor takes no memory worth the name: any failure is the
            // system's.
            MemoryFailure::OutOfMemory { message, .. } | MemoryFailure::System { message } => {
                GetError::System { message }
            }
        }
    }
}

/// The connection holds no handle to a resource: shared by the operations on handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NotHeld(pub(crate) u64);

impl From<NotHeld> for PublishError {
    fn from(NotHeld(id): NotHeld) -> Self {
        PublishError::NotHeld { id }
    }
}

impl From<NotHeld> for ReleaseError {
    fn from(NotHeld(id): NotHeld) -> Self {
        ReleaseError::NotHeld { id }
    }
}

impl From<NotHeld> for WriteError {
    fn from(NotHeld(id): NotHeld) -> Self {
        WriteError::NotHeld { id }
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
    /// The type and dimensions need more bytes than the allocation has.
    #[error("type and dimensions need {needed} bytes but the allocation has {size}")]
    MetadataTooLarge {
        /// Bytes the metadata describes.
        needed: usize,
        /// Bytes the allocation has.
        size: usize,
    },
    /// A host-only call (pointer, copy, view) on device memory.
    #[error(
        "this allocation is {kind} memory, which has no host address: map it on its device (map_device) or copy it through cuda-streams"
    )]
    NotHostMemory {
        /// Where the memory lives.
        kind: crate::protocol::MemoryKind,
    },
    /// A device-only call on host memory.
    #[error("this allocation is host memory; it has no device pointer")]
    NotDeviceMemory,
    /// Device memory could not be imported or mapped in this process.
    #[error("cannot map {kind} memory in this process: {reason}")]
    Device {
        /// Where the memory lives.
        kind: crate::protocol::MemoryKind,
        /// What the CUDA driver (or its absence) said.
        reason: String,
    },
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

// Each operation's refusal is a refusal of the context, so `?` lifts it.
macro_rules! refusal_into_context_error {
    ($($op:ty),*) => {$(
        impl From<$op> for ContextError {
            fn from(e: $op) -> Self {
                ContextError::Refused(e.into())
            }
        }
    )*};
}
refusal_into_context_error!(
    CreateError,
    PublishError,
    UnpublishError,
    GetError,
    ReleaseError,
    WriteError,
    JobError,
    EntryError
);

impl ContextError {
    /// The refusal behind this error, if it is one.
    pub fn refusal(&self) -> Option<&RequestError> {
        match self {
            ContextError::Refused(r) => Some(r),
            _ => None,
        }
    }
}
