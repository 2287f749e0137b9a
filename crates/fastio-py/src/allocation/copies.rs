//! `FastIOAllocation.copy_to` / `copy_from`: copies between a host allocation and a device
//! one, on a stream of this process kept per device, finished before the call returns.
//! The host handle's mapping is registered with CUDA by its first copy (pinned speed
//! after) and unregistered when the handle goes (fastio-context does both).

use std::sync::{Arc, Mutex};

use cuda_streams::{Driver, Stream, StreamPool, StreamPoolConfig};
use fastio_context::{Allocation, ContextError, MemoryKind};
use pyo3::prelude::*;

use super::{FastIOAllocation, Handle};

/// One stream per device for the copies of this process, with the pool that made it.
static STREAMS: Mutex<Vec<(i32, StreamPool, Stream)>> = Mutex::new(Vec::new());

fn stream_on(driver: &Driver, device: i32) -> Result<Stream, String> {
    // Only pushed to after a stream was made, so a poisoned lock holds usable streams.
    let mut streams = STREAMS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, s)) = streams.iter().find(|(d, _, _)| *d == device) {
        return Ok(s.clone());
    }
    let config = StreamPoolConfig {
        dev_id: device,
        ..StreamPoolConfig::default()
    };
    let pool = StreamPool::new(driver, config).map_err(|e| e.to_string())?;
    let stream = pool.allocate().map_err(|e| e.to_string())?;
    streams.push((device, pool, stream.clone()));
    Ok(stream)
}

enum Failure {
    Context(ContextError),
    Cuda(String),
    Released,
}

/// Copies between `host` (this handle, host memory) and `device` (device memory), to the
/// device when `to_device`, waiting until the copy is done. The GIL is released meanwhile.
pub(super) fn copy(
    py: Python<'_>,
    host: &FastIOAllocation,
    device: &FastIOAllocation,
    to_device: bool,
) -> PyResult<()> {
    let (h, d) = (host.handle()?, device.handle()?);
    if Arc::ptr_eq(&h, &d) {
        return Err(crate::InvalidArgumentError::new_err(
            "an allocation cannot be copied onto itself: copies go between host memory and device memory",
        ));
    }
    py.detach(|| run(&h, &d, to_device)).map_err(|e| match e {
        Failure::Context(e) => crate::context_error(&e),
        Failure::Cuda(e) => crate::error(format!("reaching CUDA: {e}")),
        Failure::Released => crate::InvalidHandleError::new_err("this allocation was released"),
    })
}

fn run(host: &Handle, device: &Handle, to_device: bool) -> Result<(), Failure> {
    // Two locks, always taken in address order: two threads copying between the same two
    // allocations in opposite roles never wait for each other.
    let host_first = std::ptr::from_ref(host) < std::ptr::from_ref(device);
    let (first, second) = if host_first {
        (host.lock(), device.lock())
    } else {
        let d = device.lock();
        (host.lock(), d)
    };
    let (Some(h), Some(d)) = (first.as_ref(), second.as_ref()) else {
        return Err(Failure::Released);
    };
    // The kinds are checked before CUDA is looked for, so that a mistake reads as one on a
    // machine without a GPU too.
    let ordinal = check_kinds(h, d)?;
    let driver = Driver::probe().map_err(|e| Failure::Cuda(e.to_string()))?;
    let stream = stream_on(&driver, ordinal).map_err(Failure::Cuda)?;
    let queued = if to_device {
        h.copy_to_device(&driver, d, &stream)
    } else {
        h.copy_from_device(&driver, d, &stream)
    };
    queued.map_err(Failure::Context)?;
    stream
        .synchronize()
        .map_err(|e| Failure::Cuda(e.to_string()))
}

fn check_kinds(host: &Allocation, device: &Allocation) -> Result<i32, Failure> {
    if host.kind() != MemoryKind::Host {
        return Err(Failure::Context(ContextError::NotHostMemory {
            kind: host.kind(),
        }));
    }
    match device.kind() {
        MemoryKind::Cuda { device } => Ok(device),
        MemoryKind::Host => Err(Failure::Context(ContextError::NotDeviceMemory)),
    }
}
