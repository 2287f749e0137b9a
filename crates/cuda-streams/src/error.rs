//! Error types, one enum per layer of the crate.

/// A failure of the CUDA driver itself, or its absence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CudaError {
    /// No usable CUDA driver or device on this machine (no `libcuda`, `cuInit` failed, or zero
    /// devices). The GPU paths are disabled; this is never a panic.
    #[error("no CUDA device: {reason}")]
    NoDevice {
        /// Why the driver was judged unusable.
        reason: String,
    },
    /// A device ordinal outside `0..device_count`.
    #[error("CUDA device {device} does not exist ({count} device(s) present)")]
    InvalidDevice {
        /// The ordinal asked for.
        device: i32,
        /// How many devices the driver reports.
        count: usize,
    },
    /// A driver call returned an error code.
    #[error("{call} failed: {code}")]
    Driver {
        /// The driver function that failed, e.g. `cuEventRecord`.
        call: &'static str,
        /// The driver's name for the error, e.g. `CUDA_ERROR_INVALID_HANDLE`.
        code: String,
    },
    /// An event and a stream of different devices were combined where CUDA requires one device
    /// (`cuEventRecord` is same-context only).
    #[error(
        "event of device {event_device} cannot be recorded on a stream of device {stream_device}"
    )]
    DeviceMismatch {
        /// The event's device.
        event_device: i32,
        /// The stream's device.
        stream_device: i32,
    },
    /// An argument the driver would refuse, caught before the call (a zero size, a size off the
    /// granularity, an overlapping host range).
    #[error("{call}: {reason}")]
    InvalidArgument {
        /// The driver function the arguments were meant for.
        call: &'static str,
        /// What is wrong with them.
        reason: String,
    },
    /// A device asked to map memory of another device it is not a peer of.
    #[error("device {accessor} has no peer access to memory of device {owner}")]
    NoPeerAccess {
        /// The device the memory lives on.
        owner: i32,
        /// The device that asked for access.
        accessor: i32,
    },
    /// Work on memory of one device queued on a stream of another (a copy or fill of a
    /// mapping, a kernel launch): the stream must be on the device that maps the memory.
    #[error(
        "work on device {device}'s memory needs a stream of that device, not of device {stream_device}"
    )]
    WrongStream {
        /// The device the work belongs to (the mapping's or the kernel's).
        device: i32,
        /// The stream's device.
        stream_device: i32,
    },
    /// A write through a read-only mapping, refused before it reached the GPU.
    #[error("the device memory is mapped read-only")]
    ReadOnly,
    /// A copy or fill outside the mapping.
    #[error("range {offset}+{len} is outside the {size}-byte device mapping")]
    OutOfRange {
        /// Start of the range.
        offset: usize,
        /// Length of the range.
        len: usize,
        /// Size of the mapping.
        size: usize,
    },
}

/// A failure of a [`StreamPool`](crate::StreamPool) operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// `max_size` streams are already in use (GXF: `GXF_OUT_OF_MEMORY`).
    #[error("stream pool reached capacity ({capacity}), could not allocate more streams")]
    Exhausted {
        /// The effective `max_size`.
        capacity: u32,
    },
    /// The stream released is not in use in this pool (GXF: `GXF_ARGUMENT_OUT_OF_RANGE`).
    #[error("stream {0} is not in use in this pool")]
    UnknownStream(u64),
    /// A driver failure while creating a stream.
    #[error(transparent)]
    Cuda(#[from] CudaError),
}

/// A failure of a per-operator stream operation ([`OperatorContext`](crate::OperatorContext)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The operator has no input or output port of that name.
    #[error("the operator has no {direction} port named '{port}'")]
    UnknownPort {
        /// `"input"` or `"output"`.
        direction: &'static str,
        /// The name asked for.
        port: String,
    },
    /// `receive_cuda_streams` on a port that never received a message.
    #[error("no message was ever received on input port '{0}'")]
    NeverReceived(String),
    /// The operator has no stream pool (none given and no GPU for a default one).
    #[error("no CUDA stream pool available, cannot allocate a stream")]
    NoPool,
    /// The operator's pool has `max_size` streams in use.
    #[error("failed to allocate a new stream from the stream pool: capacity {capacity} reached")]
    PoolExhausted {
        /// The pool's effective `max_size`.
        capacity: u32,
    },
    /// The stream was neither received nor allocated by this operator.
    #[error("stream {0} is not managed by this operator (only received or allocated streams are)")]
    NotManaged(u64),
    /// `set_cuda_stream` with a stream that this operator neither received nor allocated.
    #[error(
        "only streams received or allocated by this operator can be emitted; stream {0} was not"
    )]
    UnmanagedStream(u64),
    /// The legacy default stream (`None`) has no managed device.
    #[error("the default stream is not managed by this operator")]
    DefaultStreamNotManaged,
    /// A pool failure other than exhaustion.
    #[error(transparent)]
    Pool(PoolError),
    /// A driver failure.
    #[error(transparent)]
    Cuda(#[from] CudaError),
}

impl From<PoolError> for StreamError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Exhausted { capacity } => StreamError::PoolExhausted { capacity },
            PoolError::Cuda(c) => StreamError::Cuda(c),
            other => StreamError::Pool(other),
        }
    }
}
