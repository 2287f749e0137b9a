//! Streams this crate did not create: the consumer side of the Python GPU conventions
//! (DLPack's `__dlpack__(stream=...)`, the CUDA array interface's `stream`), where a library
//! such as PyTorch or CuPy hands over its own `CUstream` as an integer and the producer makes
//! it wait for the data.

use std::sync::Mutex;

use crate::backend::{RawStream, Target};
use crate::driver::Driver;
use crate::error::CudaError;
use crate::ipc::InterprocessEvent;
use crate::pool::{Stream, StreamFlags, StreamId, StreamInner};

/// `CU_STREAM_LEGACY`: the legacy default stream, as DLPack and the CUDA array interface
/// number it.
pub const LEGACY_DEFAULT_STREAM: usize = 1;
/// `CU_STREAM_PER_THREAD`: the per-thread default stream.
pub const PER_THREAD_DEFAULT_STREAM: usize = 2;

impl Stream {
    /// A [`Stream`] over a `CUstream` this crate did not create (a C caller's
    /// `cudaStream_t`, or a library's stream as an integer), so the crate's stream-taking
    /// calls can queue work on it. The stream is never destroyed here. Its device is asked
    /// of the driver (the device of the context that owns it); [`LEGACY_DEFAULT_STREAM`] and
    /// [`PER_THREAD_DEFAULT_STREAM`] are the default streams of `default_device`. The
    /// stream is not in any pool (`StreamPool::release` refuses it).
    ///
    /// # Safety
    /// `raw` is [`LEGACY_DEFAULT_STREAM`], [`PER_THREAD_DEFAULT_STREAM`], or a live
    /// `CUstream` of this process, and stays live while the returned [`Stream`] or a clone
    /// of it lives (the driver is handed it as it is).
    ///
    /// # Errors
    /// [`CudaError::InvalidArgument`] for 0 (ambiguous: the caller must say which default
    /// stream it means), [`CudaError::InvalidDevice`] when `default_device` is needed and
    /// is not a device, or a driver error.
    pub unsafe fn from_raw(
        driver: &Driver,
        raw: usize,
        default_device: i32,
    ) -> Result<Stream, CudaError> {
        let backend = driver.backend.clone();
        let device = match raw {
            0 => {
                return Err(CudaError::InvalidArgument {
                    call: "a CUDA stream",
                    reason: "stream 0 is ambiguous: pass 1 (CU_STREAM_LEGACY) for the legacy \
                             default stream or 2 (CU_STREAM_PER_THREAD) for the per-thread \
                             default stream"
                        .into(),
                });
            }
            LEGACY_DEFAULT_STREAM | PER_THREAD_DEFAULT_STREAM => {
                driver.check_device(default_device)?;
                default_device
            }
            raw => backend.stream_device(RawStream(raw))?,
        };
        Ok(Stream {
            inner: std::sync::Arc::new(StreamInner {
                id: StreamId(crate::pool::next_id()),
                raw: RawStream(raw),
                device,
                flags: StreamFlags::DEFAULT,
                priority: 0,
                pool_id: 0,
                backend,
                kept: Mutex::default(),
                owned: false,
            }),
        })
    }
}

impl InterprocessEvent {
    /// Makes a stream this crate did not create wait, on the GPU, for the event's last
    /// record: `stream` is a `CUstream` of this process as an integer (e.g. PyTorch's
    /// `torch.cuda.current_stream().cuda_stream`), or [`LEGACY_DEFAULT_STREAM`] /
    /// [`PER_THREAD_DEFAULT_STREAM`]. Never blocks the host.
    ///
    /// # Errors
    /// [`CudaError::InvalidArgument`] for 0 (ambiguous in both conventions: the caller
    /// must say which default stream it means), or a driver error.
    pub fn make_raw_stream_wait(&self, stream: usize) -> Result<(), CudaError> {
        if stream == 0 {
            return Err(CudaError::InvalidArgument {
                call: "cuStreamWaitEvent",
                reason: "stream 0 is ambiguous: pass 1 for the legacy default stream or 2 for \
                         the per-thread default stream"
                    .into(),
            });
        }
        self.backend_arc().wait(
            Target {
                device: self.device(),
                stream: Some(RawStream(stream)),
            },
            self.raw,
        )
    }

    /// The `CUevent` as an integer (the CPU fake's numbered handle under `Driver::fake`).
    pub fn as_raw(&self) -> usize {
        self.raw.0
    }
}

/// A record or a wait the CPU fake of `Driver::fake` saw, for tests of code built on this
/// crate (see [`crate::testing::fake_calls`]). Streams and events are raw handles
/// ([`crate::Stream::as_raw`], [`InterprocessEvent::as_raw`]); `stream: None` is the legacy
/// default stream of `device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FakeCall {
    /// `cuEventRecord(event, stream)`.
    Record {
        /// The event.
        event: usize,
        /// The device of the stream.
        device: i32,
        /// The stream.
        stream: Option<usize>,
    },
    /// `cuStreamWaitEvent(stream, event)`.
    Wait {
        /// The event waited on.
        event: usize,
        /// The device of the stream.
        device: i32,
        /// The waiting stream.
        stream: Option<usize>,
    },
    /// `cuStreamSynchronize(stream)` (`None`: `cuCtxSynchronize` of `device`): the host waits.
    Synchronize {
        /// The device of the stream.
        device: i32,
        /// The stream the host waited for.
        stream: Option<usize>,
    },
    /// `cuIpcOpenEventHandle` in the primary context of `device`.
    ImportEvent {
        /// The device whose context opened the event.
        device: i32,
        /// The opened event.
        event: usize,
    },
}
