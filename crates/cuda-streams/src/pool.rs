//! [`StreamPool`]: Holoscan's `CudaStreamPool` .

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{Backend, RawEvent, RawStream, Target};
use crate::driver::Driver;
use crate::error::{CudaError, PoolError};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Returns a process-unique id (streams, pools, messages share the counter).
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Stream creation flags, as passed to `cuStreamCreateWithPriority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamFlags(pub u32);

impl StreamFlags {
    /// `CU_STREAM_DEFAULT` (0): the stream synchronises implicitly with the legacy default stream.
    /// Holoscan's default for `stream_flags`.
    pub const DEFAULT: StreamFlags = StreamFlags(0);
    /// `CU_STREAM_NON_BLOCKING` (1): no implicit synchronisation with the legacy default stream.
    /// Raw GXF's default, and this crate's default.
    pub const NON_BLOCKING: StreamFlags = StreamFlags(1);
}

/// The parameters of a [`StreamPool`], with Holoscan's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPoolConfig {
    /// Device of every stream in the pool.
    pub dev_id: i32,
    /// Creation flags of every stream.
    pub flags: StreamFlags,
    /// Priority of every stream; lower numbers are higher priority. The driver clamps it to the
    /// device's range.
    pub priority: i32,
    /// Streams created eagerly when the pool is created.
    pub reserved_size: u32,
    /// Maximum number of streams in use at the same time; 0 = unbounded. Raised to
    /// `reserved_size` (with a warning) when it is smaller and not 0.
    pub max_size: u32,
}

impl Default for StreamPoolConfig {
    /// Device 0, non-blocking, priority 0, one reserved, unbounded. Holoscan defaults `flags` to
    /// 0 (blocking); this crate picks non-blocking, as Holoscan's documentation recommends.
    fn default() -> Self {
        StreamPoolConfig {
            dev_id: 0,
            flags: StreamFlags::NON_BLOCKING,
            priority: 0,
            reserved_size: 1,
            max_size: 0,
        }
    }
}

impl StreamPoolConfig {
    /// Holoscan's positional constructor `CudaStreamPool(dev_id, flags, priority, reserved, max)`.
    pub fn new(dev_id: i32, flags: u32, priority: i32, reserved_size: u32, max_size: u32) -> Self {
        StreamPoolConfig {
            dev_id,
            flags: StreamFlags(flags),
            priority,
            reserved_size,
            max_size,
        }
    }
}

/// A unique identifier of a [`Stream`] within the process: what a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

pub(crate) struct StreamInner {
    pub(crate) id: StreamId,
    pub(crate) raw: RawStream,
    pub(crate) device: i32,
    pub(crate) flags: StreamFlags,
    pub(crate) priority: i32,
    pub(crate) pool_id: u64,
    pub(crate) backend: Arc<dyn Backend>,
    /// Values kept alive until the event recorded after them completes ([`Stream::keep_alive`]).
    pub(crate) kept: Mutex<KeptValues>,
    /// Created (and so destroyed) here; `false` for a stream of another library
    /// ([`Stream::from_raw`]).
    pub(crate) owned: bool,
}

/// What [`Stream::keep_alive`] holds: values with the event that frees them, and spare events.
#[derive(Default)]
pub(crate) struct KeptValues {
    pending: Vec<(RawEvent, Box<dyn std::any::Any + Send>)>,
    spare: Vec<RawEvent>,
}

impl Drop for StreamInner {
    fn drop(&mut self) {
        let kept = std::mem::take(self.kept.get_mut().unwrap_or_else(|e| e.into_inner()));
        if !kept.pending.is_empty() {
            // Queued work may still use what is kept: wait for it before letting go.
            let target = Target {
                device: self.device,
                stream: Some(self.raw),
            };
            if let Err(e) = self.backend.synchronize(target) {
                tracing::warn!(stream = %self.id, error = %e, "failed to drain a CUDA stream");
            }
        }
        for (event, value) in kept.pending {
            drop(value);
            let _ = self.backend.destroy_event(self.device, event);
        }
        for event in kept.spare {
            let _ = self.backend.destroy_event(self.device, event);
        }
        if self.owned
            && let Err(e) = self.backend.destroy_stream(self.device, self.raw)
        {
            tracing::warn!(stream = %self.id, error = %e, "failed to destroy a CUDA stream");
        }
    }
}

/// A CUDA stream created by a [`StreamPool`]. Cloning gives another handle on the same stream.
///
/// The driver stream is destroyed when the last handle goes; the pool keeps one for every stream
/// it created, so pool streams live at least as long as their pool. Equality is identity.
#[derive(Clone)]
pub struct Stream {
    pub(crate) inner: Arc<StreamInner>,
}

impl Stream {
    /// The process-unique id of this stream.
    pub fn id(&self) -> StreamId {
        self.inner.id
    }
    /// The device the stream lives on.
    pub fn device(&self) -> i32 {
        self.inner.device
    }
    /// The flags the stream was created with.
    pub fn flags(&self) -> StreamFlags {
        self.inner.flags
    }
    /// The priority the stream was created with (as asked; see [`Stream::query_priority`]).
    pub fn priority(&self) -> i32 {
        self.inner.priority
    }
    /// The raw `CUstream` handle, for launching work with other CUDA libraries. The handle stays
    /// valid as long as any [`Stream`] clone lives.
    pub fn as_raw(&self) -> usize {
        self.inner.raw.0
    }
    /// Asks the driver for the stream's flags (`cuStreamGetFlags`).
    ///
    /// # Errors
    /// A driver error.
    pub fn query_flags(&self) -> Result<StreamFlags, CudaError> {
        self.inner
            .backend
            .stream_flags(self.inner.device, self.inner.raw)
            .map(StreamFlags)
    }
    /// Asks the driver for the stream's priority (`cuStreamGetPriority`).
    ///
    /// # Errors
    /// A driver error.
    pub fn query_priority(&self) -> Result<i32, CudaError> {
        self.inner
            .backend
            .stream_priority(self.inner.device, self.inner.raw)
    }
    /// Blocks the calling thread until all work queued on the stream is done. For tests and
    /// shutdown; the stream-handling paths of this crate never block the host.
    ///
    /// # Errors
    /// A driver error.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.inner.backend.synchronize(self.target())?;
        self.release_finished();
        Ok(())
    }

    /// Keeps `value` alive until the work queued on this stream so far is done (like
    /// PyTorch's `record_stream`): an event is recorded now, and the value is dropped by the
    /// first later call of [`Stream::keep_alive`], [`Stream::release_finished`] or
    /// [`Stream::synchronize`] that finds the event complete, on the calling thread (never on
    /// a driver thread, so its `Drop` may call CUDA), or when the stream goes (which then
    /// waits for the stream first).
    ///
    /// # Errors
    /// A driver error; the stream is then waited for (blocking) and `value` dropped.
    pub fn keep_alive(&self, value: Box<dyn std::any::Any + Send>) -> Result<(), CudaError> {
        self.release_finished();
        let inner = &self.inner;
        let spare = inner
            .kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spare
            .pop();
        let recorded = match spare {
            Some(e) => Ok(e),
            None => inner
                .backend
                .create_event(inner.device, crate::ipc::EVENT_DISABLE_TIMING),
        }
        .and_then(
            |event| match inner.backend.record(inner.device, event, self.target()) {
                Ok(()) => Ok(event),
                Err(e) => {
                    let _ = inner.backend.destroy_event(inner.device, event);
                    Err(e)
                }
            },
        );
        let event = match recorded {
            Ok(event) => event,
            Err(e) => {
                // Queued work may use the value: it may only go once the stream is drained.
                let _ = inner.backend.synchronize(self.target());
                drop(value);
                return Err(e);
            }
        };
        inner
            .kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .push((event, value));
        Ok(())
    }

    /// Drops the values [`Stream::keep_alive`] holds whose work is done; returns how many are
    /// still held.
    pub fn release_finished(&self) -> usize {
        let inner = &self.inner;
        let mut done = Vec::new();
        let left = {
            let mut kept = inner.kept.lock().unwrap_or_else(|e| e.into_inner());
            let mut i = 0;
            while i < kept.pending.len() {
                let event = kept.pending[i].0;
                // An error (a lost context) counts as done: nothing will use the value again.
                if inner
                    .backend
                    .event_complete(inner.device, event)
                    .unwrap_or(true)
                {
                    let (event, value) = kept.pending.swap_remove(i);
                    kept.spare.push(event);
                    done.push(value);
                } else {
                    i += 1;
                }
            }
            kept.pending.len()
        };
        // Dropped outside the lock: a value's Drop may call back into this stream.
        drop(done);
        left
    }
    /// Enqueues `f` on the stream (`cuLaunchHostFunc`): the driver runs it on one of its threads
    /// once the work queued before it is done. `f` must not call CUDA.
    ///
    /// # Errors
    /// A driver error; `f` is then dropped without running.
    pub fn launch_host_fn(&self, f: impl FnOnce() + Send + 'static) -> Result<(), CudaError> {
        self.inner
            .backend
            .launch_host_fn(self.inner.device, self.inner.raw, Box::new(f))
    }
    pub(crate) fn target(&self) -> Target {
        Target {
            device: self.inner.device,
            stream: Some(self.inner.raw),
        }
    }
    pub(crate) fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }
}

impl PartialEq for Stream {
    fn eq(&self, other: &Self) -> bool {
        self.inner.id == other.inner.id
    }
}
impl Eq for Stream {}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.inner.id)
            .field("device", &self.inner.device)
            .finish()
    }
}

/// Counters of a [`StreamPool`], for tests and monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Streams created since the pool was created (eager and lazy).
    pub created: usize,
    /// Streams allocated and not yet released.
    pub in_use: usize,
    /// Streams waiting in the FIFO queue for reuse.
    pub idle: usize,
}

struct PoolState {
    idle: VecDeque<Stream>,
    in_use: HashMap<StreamId, Stream>,
    created: usize,
}

struct PoolShared {
    id: u64,
    config: StreamPoolConfig,
    clamped: bool,
    backend: Arc<dyn Backend>,
    state: Mutex<PoolState>,
}

/// A pool of CUDA streams of one device, flags and priority; Holoscan's `CudaStreamPool`.
///
/// `reserved_size` streams are created eagerly; more are created lazily when the FIFO queue of
/// released streams is empty. `max_size` (0 = unbounded) limits streams *in use*, not streams
/// ever created. A released stream is not synchronised or destroyed: it goes to the back of the
/// queue and is handed out again in FIFO order. Streams are destroyed when the pool goes (and no
/// [`Stream`] clone is left). Clones share one pool; all methods are safe to call from any thread.
#[derive(Clone)]
pub struct StreamPool {
    shared: Arc<PoolShared>,
}

impl fmt::Debug for StreamPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamPool")
            .field("id", &self.shared.id)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl StreamPool {
    /// Creates a pool and its `reserved_size` streams.
    ///
    /// # Errors
    /// [`CudaError::InvalidDevice`] for a bad `dev_id`, or a driver error creating a stream.
    pub fn new(driver: &Driver, config: StreamPoolConfig) -> Result<StreamPool, CudaError> {
        Self::with_backend(driver.backend.clone(), config)
    }

    pub(crate) fn with_backend(
        backend: Arc<dyn Backend>,
        mut config: StreamPoolConfig,
    ) -> Result<StreamPool, CudaError> {
        let count = backend.device_count();
        if config.dev_id < 0 || config.dev_id as usize >= count {
            return Err(CudaError::InvalidDevice {
                device: config.dev_id,
                count,
            });
        }
        let clamped = config.max_size != 0 && config.max_size < config.reserved_size;
        if clamped {
            tracing::warn!(
                max_size = config.max_size,
                reserved_size = config.reserved_size,
                "stream pool max_size is smaller than reserved_size; raising max_size to reserved_size"
            );
            config.max_size = config.reserved_size;
        }
        let shared = Arc::new(PoolShared {
            id: next_id(),
            config,
            clamped,
            backend,
            state: Mutex::new(PoolState {
                idle: VecDeque::new(),
                in_use: HashMap::new(),
                created: 0,
            }),
        });
        let pool = StreamPool { shared };
        {
            let mut st = pool.lock();
            for _ in 0..config.reserved_size {
                let s = pool.create_stream()?;
                st.created += 1;
                st.idle.push_back(s);
            }
        }
        Ok(pool)
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic elsewhere while holding the lock leaves consistent bookkeeping: every update
        // below is a single push/insert/remove.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn create_stream(&self) -> Result<Stream, CudaError> {
        let c = &self.shared.config;
        let raw = self
            .shared
            .backend
            .create_stream(c.dev_id, c.flags.0, c.priority)?;
        Ok(Stream {
            inner: Arc::new(StreamInner {
                id: StreamId(next_id()),
                raw,
                device: c.dev_id,
                flags: c.flags,
                priority: c.priority,
                pool_id: self.shared.id,
                backend: self.shared.backend.clone(),
                kept: Mutex::default(),
                owned: true,
            }),
        })
    }

    /// Hands out a stream: the front of the FIFO queue, or a new one when the queue is empty.
    ///
    /// # Errors
    /// [`PoolError::Exhausted`] when `max_size` streams are in use; a driver error creating one.
    pub fn allocate(&self) -> Result<Stream, PoolError> {
        let mut st = self.lock();
        let max = self.shared.config.max_size;
        if max != 0 && st.in_use.len() >= max as usize {
            tracing::debug!(
                capacity = max,
                "stream pool reached capacity, could not allocate more streams"
            );
            return Err(PoolError::Exhausted { capacity: max });
        }
        let s = match st.idle.pop_front() {
            Some(s) => s,
            None => {
                let s = self.create_stream()?;
                st.created += 1;
                s
            }
        };
        st.in_use.insert(s.id(), s.clone());
        Ok(s)
    }

    /// Gives a stream back. It is neither synchronised nor destroyed, and goes to the back of
    /// the queue.
    ///
    /// # Errors
    /// [`PoolError::UnknownStream`] when the stream is not in use in this pool.
    pub fn release(&self, stream: &Stream) -> Result<(), PoolError> {
        let mut st = self.lock();
        if stream.inner.pool_id != self.shared.id {
            return Err(PoolError::UnknownStream(stream.id().0));
        }
        match st.in_use.remove(&stream.id()) {
            Some(s) => {
                st.idle.push_back(s);
                Ok(())
            }
            None => Err(PoolError::UnknownStream(stream.id().0)),
        }
    }

    /// The effective configuration (after the `max_size` clamp).
    pub fn config(&self) -> StreamPoolConfig {
        self.shared.config
    }

    /// Whether `max_size` was raised to `reserved_size` at creation (a warning was logged).
    pub fn max_size_was_clamped(&self) -> bool {
        self.shared.clamped
    }

    /// The pool's counters.
    pub fn stats(&self) -> PoolStats {
        let st = self.lock();
        PoolStats {
            created: st.created,
            in_use: st.in_use.len(),
            idle: st.idle.len(),
        }
    }

    /// Whether `stream` was created by this pool.
    pub fn owns(&self, stream: &Stream) -> bool {
        stream.inner.pool_id == self.shared.id
    }

    pub(crate) fn backend(&self) -> &Arc<dyn Backend> {
        &self.shared.backend
    }
}
