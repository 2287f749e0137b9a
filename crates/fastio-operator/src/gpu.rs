//! The operator's CUDA stream, with Holoscan's semantics, and the events that order GPU work
//! across the operators of a job.
//!
//! Each operator gets one stream from a `cuda-streams` [`StreamPool`] (its
//! [`OperatorContext`]'s internal stream: the default pool `"{operator}_stream_pool"`,
//! non-blocking, one stream reserved, unbounded), allocated the first time it is needed and
//! held for the whole run, as Holoscan's operators hold theirs until `stop`.
//!
//! - **Receiving**: when execute's payload opens the FastIO inputs, every input that carries
//!   its producer's interprocess event is received on its port (Holoscan's `receive`), and the
//!   operator's stream is made to wait on those events (`receive_cuda_stream`): GPU-side
//!   ordering, the host never waits. An operator whose inputs carry no event never touches
//!   CUDA.
//! - **Using**: [`crate::Payload::cuda_stream`] hands the stream out (ordered after every
//!   input); work queued there is the operator's.
//! - **Emitting**: at the end of execute, when the stream was used, one interprocess event is
//!   recorded on it and attached to every output that has memory (Holoscan emits the
//!   internal stream on every output port). Host memory must be final when execute returns
//!   (Clara's contract, which downstream readers on the CPU rely on), so when any output is
//!   host memory the host then waits for the stream once. When every output is device memory
//!   execute returns without that wait: its readers wait on the event, GPU-side.
//! - Input events are opened in the context of the entry's own device (its producer recorded
//!   them there); events on host inputs are opened on device 0.
//! - **Stopping**: at the end of the run the stream is synchronised once (the operator's
//!   GPU work is done before its process may exit and take its CUDA context along) and
//!   given back to the pool. The recorded events live until then, so consumers can open
//!   them while the producer runs; a consumer that opens one after the producer is gone gets
//!   a failed import, which is logged and skipped: that producer's work was complete.

use std::sync::{Arc, Mutex, MutexGuard};

use cuda_streams::{
    CudaError, Driver as CudaDriver, INTERNAL_STREAM, InterprocessEvent, IpcEventHandle, Message,
    OperatorContext, Stream, StreamError,
};
use fastio_context::{EventHandle, MemoryKind};
use fastio_job::FastIoEntry;

use crate::OperatorError;

/// The operator's CUDA state; nothing is created before it is needed.
#[derive(Default)]
pub(crate) struct Gpu {
    state: Mutex<GpuState>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Gpu")
            .field("driver", &state.driver.is_some())
            .field("context", &state.context.is_some())
            .finish()
    }
}

#[derive(Default)]
struct GpuState {
    /// The driver given with `Driver::with_cuda_driver`, or the probed one.
    driver: Option<CudaDriver>,
    context: Option<OperatorContext>,
    /// The stream was handed out or made to wait in this execute: its outputs get an event.
    used: bool,
    /// Events recorded for this operator's outputs; consumers open them by handle, so they
    /// live for the run.
    recorded: Vec<InterprocessEvent>,
}

impl Gpu {
    fn lock(&self) -> MutexGuard<'_, GpuState> {
        // Every change to the state is a single assignment or push: a panic elsewhere
        // cannot leave it half-changed.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Uses `driver` instead of probing for one (tests on the CPU fake; applications that
    /// hold a driver already).
    pub(crate) fn set_driver(&self, driver: CudaDriver) {
        self.lock().driver = Some(driver);
    }

    /// Receives execute's inputs: the operator's stream waits on every input's event.
    pub(crate) fn receive(&self, stage: &str, inputs: &[FastIoEntry]) -> Result<(), OperatorError> {
        let carrying: Vec<(&str, i32, EventHandle)> = inputs
            .iter()
            .filter_map(|e| e.event().map(|ev| (e.name(), event_device(e), ev)))
            .collect();
        if carrying.is_empty() {
            return Ok(());
        }
        let mut state = self.lock();
        let driver = match state.driver(stage) {
            Ok(d) => d,
            // Host memory written by a GPU is final when its producer's execute returned;
            // without a device here, nothing can be queued after it anyway.
            Err(e) => {
                tracing::debug!("{stage}: inputs carry CUDA events, but {e}; not waiting");
                return Ok(());
            }
        };
        let names: Vec<&str> = inputs.iter().map(FastIoEntry::name).collect();
        let context = state.context(stage, &names, &driver)?;
        for (name, device, handle) in &carrying {
            let event = match InterprocessEvent::import(&driver, *device, &IpcEventHandle(handle.0))
            {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(
                        "{stage}: cannot open the CUDA event of input {name:?} ({e}); its \
                         producer has ended, and its work with it"
                    );
                    continue;
                }
            };
            context
                .receive(name, Message::new(()).with_event(Arc::new(event)))
                .map_err(|e| cuda_failure(stage, "receiving an input's event", e))?;
            context
                .receive_cuda_stream(name, true, false)
                .map_err(|e| cuda_failure(stage, "ordering its stream after an input", e))?;
        }
        state.used = true;
        Ok(())
    }

    /// The operator's stream (allocated once, held for the run), ordered after every input.
    pub(crate) fn stream(&self, stage: &str, inputs: &[&str]) -> Result<Stream, OperatorError> {
        let mut state = self.lock();
        let driver = state.driver(stage)?;
        let context = state.context(stage, inputs, &driver)?;
        let stream = context
            .allocate_cuda_stream(INTERNAL_STREAM)
            .map_err(|e| cuda_failure(stage, "allocating its stream", e))?;
        driver
            .set_current(stream.device())
            .map_err(|e| cuda_failure(stage, "making its device current", e.into()))?;
        state.used = true;
        Ok(stream)
    }

    /// The end of execute: when the stream was used, an event recorded on it goes with
    /// every output that has memory, and host outputs are made final.
    pub(crate) fn emit(
        &self,
        stage: &str,
        outputs: &mut [FastIoEntry],
    ) -> Result<(), OperatorError> {
        let mut state = self.lock();
        if !std::mem::take(&mut state.used) {
            return Ok(());
        }
        // Outputs the Python or C layer allocated (dynamic ones) through handles of its
        // own: this payload's handles catch up, so that they get the event too, and a
        // host one makes the host wait.
        for output in outputs.iter_mut() {
            output.refresh()?;
        }
        // Nothing to order downstream work after, or nobody downstream to order.
        if !outputs.iter().any(FastIoEntry::is_allocated) {
            return Ok(());
        }
        let (Some(driver), Some(context)) = (state.driver.clone(), state.context.as_mut()) else {
            return Ok(());
        };
        let stream = context
            .allocate_cuda_stream(INTERNAL_STREAM)
            .map_err(|e| cuda_failure(stage, "finding its stream", e))?;
        context.begin_compute();
        let fail = |what, e: CudaError| cuda_failure(stage, what, e.into());
        let event = InterprocessEvent::new(&driver, stream.device())
            .map_err(|e| fail("creating an output event", e))?;
        event
            .record(&stream)
            .map_err(|e| fail("recording an output event", e))?;
        let handle = event
            .export()
            .map_err(|e| fail("exporting an output event", e))?;
        for output in outputs.iter_mut().filter(|o| o.is_allocated()) {
            output.set_event(EventHandle(handle.0))?;
        }
        state.recorded.push(event);
        // Host outputs are read on the CPU as soon as execute returns; device outputs are
        // read on GPUs, ordered by the event, so the host does not wait for them.
        let host_outputs = outputs
            .iter()
            .any(|o| o.is_allocated() && memory_of(o) == MemoryKind::Host);
        if host_outputs {
            stream
                .synchronize()
                .map_err(|e| fail("finishing its work on host outputs", e))?;
        }
        Ok(())
    }

    /// The end of the run: the stream's work is done and the stream goes back to the pool.
    pub(crate) fn stop(&self, stage: &str) -> Result<(), OperatorError> {
        let mut state = self.lock();
        let Some(mut context) = state.context.take() else {
            return Ok(());
        };
        if let Ok(stream) = context.allocate_cuda_stream(INTERNAL_STREAM) {
            stream
                .synchronize()
                .map_err(|e| cuda_failure(stage, "finishing its GPU work", e.into()))?;
        }
        context
            .stop()
            .map_err(|e| cuda_failure(stage, "giving its streams back", e))?;
        state.recorded.clear();
        Ok(())
    }
}

impl GpuState {
    fn driver(&mut self, stage: &str) -> Result<CudaDriver, OperatorError> {
        if let Some(d) = &self.driver {
            return Ok(d.clone());
        }
        let driver =
            CudaDriver::probe().map_err(|e| cuda_failure(stage, "reaching CUDA", e.into()))?;
        self.driver = Some(driver.clone());
        Ok(driver)
    }

    fn context(
        &mut self,
        stage: &str,
        inputs: &[&str],
        driver: &CudaDriver,
    ) -> Result<&mut OperatorContext, OperatorError> {
        let context = match self.context.take() {
            Some(c) => c,
            None => {
                let mut builder = OperatorContext::builder(stage).driver(driver.clone());
                for input in inputs {
                    builder = builder.input(*input);
                }
                builder
                    .build()
                    .map_err(|e| cuda_failure(stage, "creating its stream pool", e.into()))?
            }
        };
        Ok(self.context.insert(context))
    }
}

/// Where an entry's memory lives (host until it has memory).
fn memory_of(entry: &FastIoEntry) -> MemoryKind {
    entry
        .allocation()
        .map_or(MemoryKind::Host, fastio_context::Allocation::kind)
}

/// The device whose context opens an input's event: the entry's own device for device
/// memory (its producer recorded the event there); device 0 for host memory, whose
/// producer's device is not known (a wait works across the devices of a host).
fn event_device(entry: &FastIoEntry) -> i32 {
    match memory_of(entry) {
        MemoryKind::Cuda { device } => device,
        _ => 0,
    }
}

fn cuda_failure(stage: &str, what: &str, e: StreamError) -> OperatorError {
    OperatorError::Cuda {
        stage: stage.to_owned(),
        what: what.to_owned(),
        cause: e,
    }
}
