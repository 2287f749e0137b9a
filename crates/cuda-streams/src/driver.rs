//! The single entry point to CUDA: [`Driver::probe`].

use std::sync::{Arc, OnceLock};

use crate::backend::Backend;
use crate::error::CudaError;
use crate::memory::HostRegistry;

/// A handle on a usable CUDA driver with at least one device. Cheap to clone.
///
/// Nothing in this crate calls into CUDA before a `Driver` exists, and the only way to get one
/// is [`Driver::probe`], which checks for the driver library first. On a machine without a driver
/// the probe returns [`CudaError::NoDevice`]; it never panics.
#[derive(Clone, Debug)]
pub struct Driver {
    pub(crate) backend: Arc<dyn Backend>,
    /// This process's host registrations (one registry per driver; the probed driver is one
    /// per process).
    pub(crate) host: Arc<HostRegistry>,
}

impl Driver {
    /// Finds the CUDA driver, initialises it and counts devices, once per process; later calls
    /// return the cached answer.
    ///
    /// # Errors
    /// [`CudaError::NoDevice`] when `libcuda` is absent, `cuInit` fails, or there is no device.
    pub fn probe() -> Result<Driver, CudaError> {
        static PROBE: OnceLock<Result<Driver, CudaError>> = OnceLock::new();
        PROBE
            .get_or_init(|| {
                crate::cuda::probe().map(|b| Driver {
                    backend: Arc::new(b),
                    host: Arc::default(),
                })
            })
            .clone()
    }

    /// Number of CUDA devices (at least 1).
    pub fn device_count(&self) -> usize {
        self.backend.device_count()
    }

    /// Makes `device`'s primary context current on the calling thread (`cudaSetDevice`).
    ///
    /// # Errors
    /// [`CudaError::InvalidDevice`] or a driver error.
    pub fn set_current(&self, device: i32) -> Result<(), CudaError> {
        self.backend.set_current(device)
    }

    /// A driver over the crate's CPU fake with `devices` devices, for tests of code built on
    /// this crate on machines without a GPU. Streams and events are numbered handles; device
    /// memory is real shared memory (a memfd per allocation, exported as a duplicate descriptor,
    /// mapped with `mmap`, so a fake device pointer is a host address); granularity 2 MiB,
    /// 16 GiB per device, every pair of devices peers; host registration is only recorded.
    pub fn fake(devices: usize) -> Driver {
        Driver::from_backend(crate::backend::fake::FakeBackend::new(devices.max(1)))
    }

    /// [`Driver::fake`] whose devices have no peer access to one another (like GPUs on
    /// separate PCIe roots without NVLink): mapping memory on another device than its own
    /// fails with [`CudaError::NoPeerAccess`].
    pub fn fake_without_peers(devices: usize) -> Driver {
        let fake = crate::backend::fake::FakeBackend::new(devices.max(1));
        fake.set_no_peer(true);
        Driver::from_backend(fake)
    }

    /// Whether this driver is the CPU fake of [`Driver::fake`].
    pub fn is_fake(&self) -> bool {
        self.backend.is_fake()
    }

    /// `InvalidDevice` unless `0 <= device < device_count`.
    pub(crate) fn check_device(&self, device: i32) -> Result<(), CudaError> {
        let count = self.backend.device_count();
        if device < 0 || device as usize >= count {
            return Err(CudaError::InvalidDevice { device, count });
        }
        Ok(())
    }

    /// A driver over `backend`.
    pub(crate) fn from_backend(backend: Arc<dyn Backend>) -> Driver {
        Driver {
            backend,
            host: Arc::default(),
        }
    }
}
