//! [`OperatorContext`]: Holoscan's per-operator stream handling.
//!
//! One context per operator, used by one thread at a time (like Holoscan's `CudaObjectHandler`,
//! which GXF never ticks concurrently). The scheduler calls [`OperatorContext::begin_compute`]
//! before each compute and [`OperatorContext::stop`] at the end; the operator's compute calls
//! `receive`, `receive_cuda_stream`, `emit` and the rest.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::backend::{Backend, RawEvent, Target};
use crate::driver::Driver;
use crate::error::{CudaError, StreamError};
use crate::ipc::{EVENT_DISABLE_TIMING, InterprocessEvent};
use crate::message::Message;
use crate::pool::{Stream, StreamId, StreamPool, StreamPoolConfig};

/// The memo name of the operator's internal stream (shared with `allocate_cuda_stream`).
pub const INTERNAL_STREAM: &str = "_internal";

/// Something worth a warning that is not an error (also logged with `tracing::warn!`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamWarning {
    /// `receive_cuda_stream` on a port that has never received a message: no input can be
    /// synchronised (Holoscan: "receive() must come first"; it raises nothing).
    ReceiveNotCalled {
        /// The base port name.
        port: String,
    },
    /// `receive_cuda_stream(allocate = true)` could not allocate (pool exhausted) and fell back
    /// to the no-pool behaviour.
    AllocationFellBack {
        /// The allocation error.
        reason: String,
    },
}

/// Which pool an operator uses.
#[derive(Debug, Clone, Default)]
enum PoolChoice {
    /// Holoscan v3.5+: a default pool when a GPU is present, none otherwise.
    #[default]
    Default,
    /// The given pool.
    Explicit(StreamPool),
    /// No pool at all (Holoscan before v3.5, or an explicit choice).
    None,
}

/// Builds an [`OperatorContext`].
#[derive(Debug, Clone)]
pub struct OperatorBuilder {
    name: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    pool: PoolChoice,
    driver: Option<Driver>,
    default_device: i32,
}

impl OperatorBuilder {
    /// Declares an input port. A multi-connection port is declared once by its base name;
    /// messages may then be received as `"name:0"`, `"name:1"`, ...
    pub fn input(mut self, name: impl Into<String>) -> Self {
        self.inputs.push(name.into());
        self
    }
    /// Declares an output port.
    pub fn output(mut self, name: impl Into<String>) -> Self {
        self.outputs.push(name.into());
        self
    }
    /// Uses `pool` (which may be shared with other operators).
    pub fn pool(mut self, pool: StreamPool) -> Self {
        self.pool = PoolChoice::Explicit(pool);
        self
    }
    /// Uses no pool, even with a GPU: `receive_cuda_stream` then passes upstream streams through.
    pub fn no_pool(mut self) -> Self {
        self.pool = PoolChoice::None;
        self
    }
    /// The driver used to create the default pool; without it [`Driver::probe`] is asked.
    pub fn driver(mut self, driver: Driver) -> Self {
        self.driver = Some(driver);
        self
    }
    /// Device of the default pool (Holoscan: the current device); 0 unless set.
    pub fn default_device(mut self, device: i32) -> Self {
        self.default_device = device;
        self
    }

    /// Creates the context. Without an explicit pool or `no_pool`, a default pool (unbounded,
    /// priority 0, one reserved, non-blocking) is created when a GPU is present; none otherwise.
    ///
    /// # Errors
    /// A driver error creating the default pool.
    pub fn build(self) -> Result<OperatorContext, CudaError> {
        let pool = match self.pool {
            PoolChoice::Explicit(p) => Some(p),
            PoolChoice::None => None,
            PoolChoice::Default => {
                let driver = match self.driver {
                    Some(d) => Some(d),
                    None => Driver::probe().ok(),
                };
                match driver {
                    Some(d) if d.device_count() > 0 => {
                        let cfg = StreamPoolConfig {
                            dev_id: self.default_device,
                            ..StreamPoolConfig::default()
                        };
                        Some(StreamPool::new(&d, cfg)?)
                    }
                    _ => None,
                }
            }
        };
        let backend = pool.as_ref().map(|p| p.backend().clone());
        Ok(OperatorContext {
            default_pool_name: format!("{}_stream_pool", self.name),
            name: self.name,
            inputs: self
                .inputs
                .into_iter()
                .map(|p| base_name(&p).to_owned())
                .collect(),
            outputs: self.outputs.into_iter().collect(),
            pool,
            backend,
            received: HashMap::new(),
            chosen: None,
            allocated: HashMap::new(),
            managed: HashMap::new(),
            explicit: HashMap::new(),
            auto_emit: None,
            events: HashMap::new(),
            warnings: Vec::new(),
        })
    }
}

/// The streams and events recorded on one input port in the current compute.
#[derive(Debug, Default)]
struct PortRecord {
    streams: Vec<Option<Stream>>,
    events: Vec<Arc<InterprocessEvent>>,
}

/// Per-operator stream state: Holoscan's `CudaObjectHandler` plus the stream methods of its
/// `InputContext`, `OutputContext` and `ExecutionContext`.
///
/// Streams are returned to the pool by [`OperatorContext::stop`] (also run on drop).
pub struct OperatorContext {
    name: String,
    default_pool_name: String,
    inputs: BTreeSet<String>,
    outputs: BTreeSet<String>,
    pool: Option<StreamPool>,
    backend: Option<Arc<dyn Backend>>,
    /// Base port name -> this compute's entries. Keys persist across computes ("was the port
    /// ever received"), entries do not.
    received: HashMap<String, PortRecord>,
    /// The no-pool "internal" stream chosen by `receive_cuda_stream` in this compute.
    chosen: Option<Stream>,
    /// Named streams allocated from the pool, `_internal` included; held until `stop`.
    allocated: HashMap<String, Stream>,
    /// Every stream received or allocated: the streams `device_from_stream` and
    /// `set_cuda_stream` accept.
    managed: HashMap<StreamId, Stream>,
    /// Output port -> stream set with `set_cuda_stream` in this compute.
    explicit: HashMap<String, Stream>,
    /// The stream `receive_cuda_stream` returned in this compute: emitted on every output port.
    auto_emit: Option<Stream>,
    /// One synchronisation event per device (Holoscan keeps one for all devices: a hazard).
    events: HashMap<i32, RawEvent>,
    warnings: Vec<StreamWarning>,
}

impl std::fmt::Debug for OperatorContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorContext")
            .field("name", &self.name)
            .field("pool", &self.pool)
            .finish()
    }
}

/// The port key: the name without a `":N"` connection suffix.
fn base_name(port: &str) -> &str {
    match port.rsplit_once(':') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => port,
    }
}

impl OperatorContext {
    /// Starts building the context of operator `name`.
    pub fn builder(name: impl Into<String>) -> OperatorBuilder {
        OperatorBuilder {
            name: name.into(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            pool: PoolChoice::Default,
            driver: None,
            default_device: 0,
        }
    }

    /// The operator's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operator's pool, explicit or default.
    pub fn pool(&self) -> Option<&StreamPool> {
        self.pool.as_ref()
    }

    /// The name a default pool has (`"{operator}_stream_pool"`, as in Holoscan v3.5+); whether
    /// one was created is [`OperatorContext::pool`].
    pub fn default_pool_name(&self) -> &str {
        &self.default_pool_name
    }

    /// Clears the per-compute state: received streams and events (port keys stay known), the
    /// stream chosen without a pool, explicit and automatic emission. Allocated streams stay.
    pub fn begin_compute(&mut self) {
        for rec in self.received.values_mut() {
            rec.streams.clear();
            rec.events.clear();
        }
        self.chosen = None;
        self.explicit.clear();
        self.auto_emit = None;
    }

    /// Warnings collected since the last call.
    pub fn take_warnings(&mut self) -> Vec<StreamWarning> {
        std::mem::take(&mut self.warnings)
    }

    fn warn(&mut self, w: StreamWarning) {
        tracing::warn!(operator = %self.name, warning = ?w, "stream handling");
        self.warnings.push(w);
    }

    fn input_key(&self, port: &str) -> Result<String, StreamError> {
        let key = base_name(port);
        if self.inputs.contains(key) {
            Ok(key.to_owned())
        } else {
            Err(StreamError::UnknownPort {
                direction: "input",
                port: port.to_owned(),
            })
        }
    }

    fn check_output(&self, port: &str) -> Result<(), StreamError> {
        if self.outputs.contains(port) {
            Ok(())
        } else {
            Err(StreamError::UnknownPort {
                direction: "output",
                port: port.to_owned(),
            })
        }
    }

    /// Receives one message on `port` (`"in"` or `"in:N"`): records its stream (or `None`) and
    /// its events under the base port name, marks the stream managed, and returns the payload.
    /// Nothing is synchronised here.
    ///
    /// # Errors
    /// [`StreamError::UnknownPort`].
    pub fn receive<T>(&mut self, port: &str, message: Message<T>) -> Result<T, StreamError> {
        let key = self.input_key(port)?;
        let (payload, stream, events) = message.into_parts();
        if let Some(s) = &stream {
            self.managed.insert(s.id(), s.clone());
            if self.backend.is_none() {
                self.backend = Some(s.backend().clone());
            }
        }
        if let (None, Some(e)) = (&self.backend, events.first()) {
            self.backend = Some(e.backend_arc());
        }
        let rec = self.received.entry(key).or_default();
        rec.streams.push(stream);
        rec.events.extend(events);
        Ok(payload)
    }

    /// Allocates (once per name) a stream from the pool; memoised by name, `"_internal"` being
    /// the operator's internal stream. Not emitted automatically; held until `stop`.
    ///
    /// # Errors
    /// [`StreamError::NoPool`], [`StreamError::PoolExhausted`], or a driver error.
    pub fn allocate_cuda_stream(&mut self, name: &str) -> Result<Stream, StreamError> {
        if let Some(s) = self.allocated.get(name) {
            return Ok(s.clone());
        }
        let pool = self.pool.as_ref().ok_or(StreamError::NoPool)?;
        let s = pool.allocate()?;
        self.allocated.insert(name.to_owned(), s.clone());
        self.managed.insert(s.id(), s.clone());
        Ok(s)
    }

    /// The streams received on `port` in this compute, one entry per message in arrival order,
    /// `None` for messages without a stream. No synchronisation, allocation or emission.
    ///
    /// # Errors
    /// [`StreamError::UnknownPort`]; [`StreamError::NeverReceived`] for a port that never received
    /// a message (Holoscan throws there too).
    pub fn receive_cuda_streams(&self, port: &str) -> Result<Vec<Option<Stream>>, StreamError> {
        let key = self.input_key(port)?;
        self.received
            .get(&key)
            .map(|r| r.streams.clone())
            .ok_or(StreamError::NeverReceived(key))
    }

    /// The stream to queue this compute's work on, ordered after every input of `port`; `None`
    /// means the legacy default stream. Holoscan's algorithm:
    ///
    /// * With `allocate` and a pool: the internal stream (allocated once, kept until `stop`);
    ///   each input stream gets an event recorded and the internal stream waits on it. If the
    ///   port never received anything, the legacy default stream waits on the internal one
    ///   (Holoscan's code does this; kept). With `sync_to_default` the legacy default stream
    ///   also waits on the internal stream.
    /// * Otherwise (no pool, `allocate == false`, or an exhausted pool): if a stream was already
    ///   chosen in this compute it is returned again after waiting on this port's streams (the
    ///   documented behaviour; Holoscan's code returns this port's first stream instead).
    ///   Else the port's first stream is chosen and the port's other streams are ordered
    ///   before it; with a single stream the legacy default stream waits on it instead. No
    ///   stream on the port: `None`.
    ///
    /// The returned stream's device is made current and the stream is emitted on every output
    /// port of this compute that has no explicit stream. Interprocess events received on the
    /// port are waited on by the returned stream (by the legacy default stream when `None`).
    /// Nothing here blocks the host.
    ///
    /// # Errors
    /// [`StreamError::UnknownPort`] or a driver error. An exhausted pool is not an error here: it
    /// falls back and records a [`StreamWarning::AllocationFellBack`].
    pub fn receive_cuda_stream(
        &mut self,
        port: &str,
        allocate: bool,
        sync_to_default: bool,
    ) -> Result<Option<Stream>, StreamError> {
        let key = self.input_key(port)?;
        let (streams, events, ever_received) = match self.received.get(&key) {
            Some(r) => (r.streams.clone(), r.events.clone(), true),
            None => (Vec::new(), Vec::new(), false),
        };
        if !ever_received {
            self.warn(StreamWarning::ReceiveNotCalled { port: key.clone() });
        }

        if allocate {
            match self.allocate_cuda_stream(INTERNAL_STREAM) {
                Ok(internal) => {
                    let backend = internal.backend().clone();
                    backend.set_current(internal.device())?;
                    if ever_received {
                        self.sync_inner(&backend, &streams, Some(&internal), sync_to_default)?;
                    } else {
                        self.sync_inner(&backend, &[Some(internal.clone())], None, false)?;
                    }
                    for e in &events {
                        e.make_stream_wait(Some(&internal))?;
                    }
                    self.auto_emit = Some(internal.clone());
                    return Ok(Some(internal));
                }
                Err(StreamError::NoPool) => {
                    tracing::debug!(operator = %self.name, "no stream pool; passing upstream streams through");
                }
                Err(e @ StreamError::PoolExhausted { .. }) => {
                    self.warn(StreamWarning::AllocationFellBack {
                        reason: e.to_string(),
                    });
                }
                Err(e) => return Err(e),
            }
        }

        // The no-allocation path.
        if let Some(chosen) = self.chosen.clone() {
            let backend = chosen.backend().clone();
            backend.set_current(chosen.device())?;
            self.sync_inner(&backend, &streams, Some(&chosen), sync_to_default)?;
            for e in &events {
                e.make_stream_wait(Some(&chosen))?;
            }
            self.auto_emit = Some(chosen.clone());
            return Ok(Some(chosen));
        }
        let Some(i) = streams.iter().position(Option::is_some) else {
            // No stream at all: whatever the port's events guard must precede default-stream work.
            for e in &events {
                e.make_stream_wait(None)?;
            }
            return Ok(None);
        };
        let Some(out) = streams[i].clone() else {
            return Ok(None);
        };
        let backend = out.backend().clone();
        if i + 1 < streams.len() {
            self.sync_inner(&backend, &streams[i + 1..], Some(&out), sync_to_default)?;
        } else {
            self.sync_inner(&backend, &[Some(out.clone())], None, false)?;
        }
        for e in &events {
            e.make_stream_wait(Some(&out))?;
        }
        self.chosen = Some(out.clone());
        self.auto_emit = Some(out.clone());
        backend.set_current(out.device())?;
        Ok(Some(out))
    }

    /// Makes `target` (`None`: the legacy default stream of the current device of the first
    /// input) wait on the GPU for the work queued so far on every stream of `streams`. `None`
    /// entries and `target` itself are skipped. One event per device, recorded then waited on
    /// immediately; the host never blocks. Unlike Holoscan, the legacy default stream is *not*
    /// also made to wait on `target` (use `receive_cuda_stream(.., sync_to_default = true)`).
    ///
    /// # Errors
    /// A driver error.
    pub fn synchronize_streams(
        &mut self,
        streams: &[Option<Stream>],
        target: Option<&Stream>,
    ) -> Result<(), StreamError> {
        let backend = match (target, streams.iter().flatten().next(), &self.backend) {
            (Some(t), _, _) => t.backend().clone(),
            (None, Some(s), _) => s.backend().clone(),
            (None, None, Some(b)) => b.clone(),
            (None, None, None) => return Ok(()),
        };
        Ok(self.sync_inner(&backend, streams, target, false)?)
    }

    fn event_for(
        &mut self,
        backend: &Arc<dyn Backend>,
        device: i32,
    ) -> Result<RawEvent, CudaError> {
        if let Some(e) = self.events.get(&device) {
            return Ok(*e);
        }
        let e = backend.create_event(device, EVENT_DISABLE_TIMING)?;
        self.events.insert(device, e);
        if self.backend.is_none() {
            self.backend = Some(backend.clone());
        }
        Ok(e)
    }

    /// Holoscan's `CudaObjectHandler::synchronize_streams`, with one event per device.
    fn sync_inner(
        &mut self,
        backend: &Arc<dyn Backend>,
        streams: &[Option<Stream>],
        target: Option<&Stream>,
        mut sync_to_default: bool,
    ) -> Result<(), CudaError> {
        if target.is_none() {
            sync_to_default = false;
        }
        for s in streams.iter().flatten() {
            if Some(s) == target {
                tracing::trace!("skipping synchronization of a stream with itself");
                continue;
            }
            let ev = self.event_for(backend, s.device())?;
            backend.record(s.device(), ev, s.target())?;
            let wait_target = target.map_or(
                Target {
                    device: s.device(),
                    stream: None,
                },
                Stream::target,
            );
            backend.wait(wait_target, ev)?;
        }
        if let (true, Some(t)) = (sync_to_default, target) {
            let ev = self.event_for(backend, t.device())?;
            backend.record(t.device(), ev, t.target())?;
            backend.wait(
                Target {
                    device: t.device(),
                    stream: None,
                },
                ev,
            )?;
        }
        Ok(())
    }

    /// The device of a stream this operator received or allocated.
    ///
    /// # Errors
    /// [`StreamError::NotManaged`] for other streams, [`StreamError::DefaultStreamNotManaged`] for
    /// `None` (the legacy default stream).
    pub fn device_from_stream(&self, stream: Option<&Stream>) -> Result<i32, StreamError> {
        let s = stream.ok_or(StreamError::DefaultStreamNotManaged)?;
        self.managed
            .get(&s.id())
            .map(Stream::device)
            .ok_or(StreamError::NotManaged(s.id().0))
    }

    /// Sets the stream emitted on output `port` for the rest of this compute (a later call
    /// replaces it). Must come before `emit` on that port. Other ports keep their automatic
    /// emission.
    ///
    /// # Errors
    /// [`StreamError::UnknownPort`]; [`StreamError::UnmanagedStream`] for a stream neither
    /// received nor allocated by this operator (nothing is attached then).
    pub fn set_cuda_stream(&mut self, stream: &Stream, port: &str) -> Result<(), StreamError> {
        self.check_output(port)?;
        if !self.managed.contains_key(&stream.id()) {
            return Err(StreamError::UnmanagedStream(stream.id().0));
        }
        self.explicit.insert(port.to_owned(), stream.clone());
        Ok(())
    }

    /// The stream a message emitted now on `port` carries: the explicit one, else the stream
    /// `receive_cuda_stream` returned in this compute, else none.
    ///
    /// # Errors
    /// [`StreamError::UnknownPort`].
    pub fn emitted_stream(&self, port: &str) -> Result<Option<Stream>, StreamError> {
        self.check_output(port)?;
        Ok(self.explicit.get(port).or(self.auto_emit.as_ref()).cloned())
    }

    /// Wraps `payload` for output `port`, attaching the stream chosen by the emission rules
    /// ([`OperatorContext::emitted_stream`]). The caller delivers the message downstream.
    ///
    /// # Errors
    /// [`StreamError::UnknownPort`].
    pub fn emit<T>(&self, port: &str, payload: T) -> Result<Message<T>, StreamError> {
        Ok(Message::new(payload).with_stream(self.emitted_stream(port)?))
    }

    /// Returns every allocated stream (the internal one included) to the pool, without
    /// synchronising. Idempotent; also run on drop.
    ///
    /// # Errors
    /// The first pool error; every stream is still attempted.
    pub fn stop(&mut self) -> Result<(), StreamError> {
        let mut first = None;
        if let Some(pool) = &self.pool {
            for (_, s) in self.allocated.drain() {
                if let Err(e) = pool.release(&s) {
                    first.get_or_insert(e);
                }
            }
        }
        self.allocated.clear();
        self.chosen = None;
        self.auto_emit = None;
        self.explicit.clear();
        first.map_or(Ok(()), |e| Err(e.into()))
    }
}

impl Drop for OperatorContext {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(operator = %self.name, error = %e, "releasing streams at drop failed");
        }
        if let Some(b) = &self.backend {
            for (dev, ev) in self.events.drain() {
                if let Err(e) = b.destroy_event(dev, ev) {
                    tracing::warn!(error = %e, "failed to destroy a synchronisation event");
                }
            }
        }
    }
}
