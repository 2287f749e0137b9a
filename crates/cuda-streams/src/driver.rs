//! The single entry point to CUDA: [`Driver::probe`].

use std::sync::{Arc, OnceLock};

use crate::backend::Backend;
use crate::error::CudaError;

/// A handle on a usable CUDA driver with at least one device. Cheap to clone.
///
/// Nothing in this crate calls into CUDA before a `Driver` exists, and the only way to get one
/// is [`Driver::probe`], which checks for the driver library first. On a machine without a driver
/// the probe returns [`CudaError::NoDevice`]; it never panics.
#[derive(Clone, Debug)]
pub struct Driver {
    pub(crate) backend: Arc<dyn Backend>,
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

    /// A driver over the CPU fake, for unit tests.
    #[cfg(test)]
    pub(crate) fn from_backend(backend: Arc<dyn Backend>) -> Driver {
        Driver { backend }
    }
}
