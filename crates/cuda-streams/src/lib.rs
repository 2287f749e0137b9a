//! CUDA stream handling with NVIDIA Holoscan's semantics, on cudarc's driver API.
//!
//! * [`Driver::probe`]: the one entry point; no driver gives [`CudaError::NoDevice`], never a
//!   panic (cudarc's loader would panic: the probe checks for `libcuda` first).
//! * [`StreamPool`]: Holoscan's `CudaStreamPool` (reserved streams created eagerly, `max_size`
//!   counting streams in use, FIFO reuse, thread-safe, streams destroyed with the pool).
//! * [`OperatorContext`]: per-operator stream handling: per-port recording on `receive`,
//!   `receive_cuda_stream`, `receive_cuda_streams`, `allocate_cuda_stream`,
//!   `synchronize_streams`, `device_from_stream`, `set_cuda_stream`, automatic emission, and
//!   release at `stop`. [`Message`] carries a payload with its stream within a process.
//! * [`StreamCondition`]: makes an operator ready once its queued messages' GPU work is done.
//! * [`InterprocessEvent`]: the cross-process primitive; its [`IpcEventHandle`] is 64 opaque
//!   bytes a publication can carry.
//!
//! The CUDA calls sit behind a small internal trait, so every rule above is unit-tested on a CPU
//! fake and runs unchanged on the real driver (`cargo xtask gpu-test`). docs/cuda-streams.md
//! describes the design and the decisions taken where Holoscan's docs and code disagree.

mod backend;
mod condition;
mod cuda;
mod driver;
mod error;
mod foreign;
mod ipc;
mod memory;
mod message;
mod operator;
mod pool;

pub mod testing;

#[cfg(test)]
mod memory_tests;
#[cfg(test)]
mod tests;

pub use condition::{ConditionNotifier, SchedulingStatus, StreamCondition};
pub use driver::Driver;
pub use error::{CudaError, PoolError, StreamError};
pub use foreign::{LEGACY_DEFAULT_STREAM, PER_THREAD_DEFAULT_STREAM};
pub use ipc::{InterprocessEvent, IpcEventHandle};
pub use memory::{
    DeviceAccess, DeviceMapping, DeviceMemory, can_access_peer, granularity, is_host_registered,
    memory_info, register_host, unregister_host,
};
pub use message::{Message, MessageId, MessageQueue};
pub use operator::{INTERNAL_STREAM, OperatorBuilder, OperatorContext, StreamWarning};
pub use pool::{PoolStats, Stream, StreamFlags, StreamId, StreamPool, StreamPoolConfig};
