//! DLPack exports of Fast I/O memory: `__dlpack__` and `__dlpack_device__`.
//!
//! The protocol is the Python array API standard's (DLPack >= 1.0): a consumer calls
//! `x.__dlpack__(stream=, max_version=, dl_device=, copy=)` and gets a `PyCapsule`
//! named `"dltensor_versioned"` (a `DLManagedTensorVersioned`, when it passed
//! `max_version >= (1, 0)`) or `"dltensor"` (the legacy `DLManagedTensor`, for older
//! consumers). The consumer renames the capsule to `"used_…"` when it takes ownership
//! and later calls the tensor's deleter once; a capsule nobody consumed is deleted by
//! its destructor. The structs, the capsule names and the "exactly once" deleter are
//! the `dlpark` crate's; what is exported, and when, is decided here.
//!
//! Lifetime: the managed tensor's context holds the same [`Keeper`] a numpy view
//! holds, so the mapping (and the context's handle) stays alive until the consumer's
//! array is gone, even after `release()` of the Python handle.
//!
//! Choices where the standard leaves room (written down in docs/ARCHITECTURE.md):
//! - read-only memory (an input, a read-only handle) carries
//!   `DLPACK_FLAG_BITMASK_READ_ONLY`; the legacy ABI cannot say "read-only", so such
//!   memory is refused to a consumer that did not pass `max_version` (as numpy does);
//! - `copy=True` on host memory returns a private, writable copy flagged
//!   `DLPACK_FLAG_BITMASK_IS_COPIED`; device memory is never copied by the producer;
//! - `dl_device` must name the memory's own device: fastio never moves data across
//!   devices behind the caller's back;
//! - on the CPU, `stream` must be `None` (or -1, "no synchronisation"); on a GPU it
//!   follows the CUDA convention (`None` = legacy default stream, -1 = no
//!   synchronisation, 0 refused as ambiguous, 1/2 = legacy/per-thread default, any
//!   other value a `cudaStream_t`), and the stream is made to wait on the producer's
//!   event without blocking the host.

use std::ffi::c_void;
use std::sync::Arc;

use dlpark::ffi::{
    DLDataType, DLDataTypeCode, DLDevice, DLDeviceType, DLManagedTensor, DLManagedTensorVersioned,
    DLPackVersion,
};
use dlpark::metadata::Dynamic;
use dlpark::python::{CudaStreamRequest, ExportRequest};
use dlpark::{DlpackFlags, Managed, ManagedTensorBase};
use fastio_meta::ElementType;
use pyo3::IntoPyObject;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyTuple, PyType};

use crate::buffer::Keeper;

/// `fastio.ExportError`: a `fastio.Error` that is also a `BufferError`, raised when
/// memory cannot be exported as asked (the DLPack standard asks producers to raise
/// `BufferError` then; Fast I/O callers catch `fastio.Error` for everything).
pub(crate) fn export_error(py: Python<'_>, message: impl Into<String>) -> PyErr {
    match export_error_type(py) {
        Ok(t) => PyErr::from_type(t.clone(), message.into()),
        Err(e) => e,
    }
}

static EXPORT_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// The `fastio.ExportError` type, made once per interpreter.
pub(crate) fn export_error_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    EXPORT_ERROR
        .get_or_try_init(py, || {
            let bases = PyTuple::new(
                py,
                [
                    py.get_type::<crate::Error>().into_any(),
                    py.get_type::<pyo3::exceptions::PyBufferError>().into_any(),
                ],
            )?;
            let namespace = pyo3::types::PyDict::new(py);
            namespace.set_item("__module__", "fastio")?;
            namespace.set_item(
                "__doc__",
                "Raised when Fast I/O memory cannot be exported as asked (DLPack, CUDA array \
                 interface): a fastio.Error and a BufferError.",
            )?;
            let t = py
                .import("builtins")?
                .getattr("type")?
                .call1(("ExportError", bases, namespace))?
                .cast_into::<PyType>()
                .map_err(PyErr::from)?;
            Ok(t.unbind())
        })
        .map(|t| t.bind(py))
}

/// Where exported memory lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// Host memory of this process (`kDLCPU`).
    Host,
    /// Device memory of a CUDA device, by ordinal (`kDLCUDA`).
    Cuda(i32),
}

impl Place {
    fn device(self) -> DLDevice {
        match self {
            Place::Host => DLDevice::CPU,
            Place::Cuda(d) => DLDevice::cuda(d),
        }
    }

    /// `(device_type, device_id)` as `__dlpack_device__` returns it.
    pub(crate) fn dlpack_device(self) -> (u32, i32) {
        self.device().into()
    }
}

/// Makes a consumer's CUDA stream wait for the producer's work on exported device memory
/// (`cuStreamWaitEvent` on the producer's event), never blocking the host.
pub(crate) trait ConsumerSync: Send + Sync {
    /// Makes `stream` (a `CUstream` as an integer; 1 and 2 are the legacy and per-thread
    /// default streams) wait for the producer's event.
    fn make_wait(&self, stream: usize) -> Result<(), String>;

    /// A stream of this process already ordered after the producer's work, for the CUDA
    /// array interface's `stream` (which names a stream the consumer waits on).
    fn ordered_stream(&self) -> Result<usize, String>;
}

/// One export of some memory, fixed when it is made: where it is, its element type and
/// shape (C order), whether the holder may write it, and what keeps it mapped.
pub(crate) struct Export {
    keep: Keeper,
    data: usize,
    place: Place,
    element: ElementType,
    shape: Vec<usize>,
    read_only: bool,
    sync: Option<Arc<dyn ConsumerSync>>,
}

impl Export {
    /// An export of host memory: `shape` elements of `element` at `data`, which lies in
    /// the mapping `keep` keeps alive.
    pub(crate) fn host(
        keep: Keeper,
        data: *const u8,
        element: ElementType,
        shape: Vec<usize>,
        read_only: bool,
    ) -> Self {
        Self {
            keep,
            data: data as usize,
            place: Place::Host,
            element,
            shape,
            read_only,
            sync: None,
        }
    }

    /// An export of device memory at `device_ptr` on CUDA device `device`; `sync` orders
    /// a consumer's stream after the producer's work (None: nothing to wait for).
    pub(crate) fn device(
        keep: Keeper,
        device_ptr: u64,
        device: i32,
        element: ElementType,
        shape: Vec<usize>,
        read_only: bool,
        sync: Option<Arc<dyn ConsumerSync>>,
    ) -> Self {
        Self {
            keep,
            data: device_ptr as usize,
            place: Place::Cuda(device),
            element,
            shape,
            read_only,
            sync,
        }
    }

    /// `__dlpack_device__()`.
    pub(crate) fn place(&self) -> Place {
        self.place
    }

    /// The address of the first element (a device address for device memory).
    pub(crate) fn data(&self) -> usize {
        self.data
    }

    /// The element type.
    pub(crate) fn element(&self) -> ElementType {
        self.element
    }

    /// The shape, C order.
    pub(crate) fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The holder may not write the memory.
    pub(crate) fn read_only(&self) -> bool {
        self.read_only
    }

    /// What orders a consumer after the producer, if anything must.
    pub(crate) fn sync(&self) -> Option<&Arc<dyn ConsumerSync>> {
        self.sync.as_ref()
    }

    pub(crate) fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.element.size()
    }

    /// `__dlpack__(stream=, max_version=, dl_device=, copy=)`: a new capsule.
    pub(crate) fn to_capsule<'py>(
        &self,
        py: Python<'py>,
        stream: Option<&Bound<'py, PyAny>>,
        max_version: Option<&Bound<'py, PyAny>>,
        dl_device: Option<&Bound<'py, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Py<PyAny>> {
        let max_version = max_version
            .filter(|v| !v.is_none())
            .map(|v| {
                v.extract::<(u32, u32)>().map_err(|_| {
                    crate::error(format!(
                        "max_version must be a (major, minor) tuple of ints, not {v}"
                    ))
                })
            })
            .transpose()?;
        let dl_device = dl_device
            .filter(|v| !v.is_none())
            .map(|v| {
                v.extract::<(u32, i32)>().map_err(|_| {
                    crate::error(format!(
                        "dl_device must be a (device_type, device_id) tuple of ints, not {v}"
                    ))
                })
            })
            .transpose()?;
        let stream = stream.filter(|s| !s.is_none());
        let request = ExportRequest::parse(stream, max_version, None, copy)?;
        let versioned = max_version.is_some_and(|(major, _)| major >= 1);

        if let Some((device_type, device_id)) = dl_device {
            let asked = (device_type, device_id);
            if asked != self.place.dlpack_device() {
                return Err(export_error(
                    py,
                    format!(
                        "this memory lives on {}; it cannot be exported to {} (dl_device): \
                         Fast I/O exports memory where it is, never copying it across devices",
                        describe(self.place.dlpack_device()),
                        describe(asked)
                    ),
                ));
            }
        }
        if copy == Some(true) && self.place != Place::Host {
            return Err(export_error(
                py,
                "copy=True is not offered for device memory: export it without a copy and \
                 copy it with the consumer (e.g. torch's .clone(), CuPy's .copy())",
            ));
        }
        if self.read_only && !versioned && copy != Some(true) {
            return Err(export_error(
                py,
                "this memory is read-only here, and the legacy DLPack capsule a consumer \
                 gets without max_version cannot say so: call __dlpack__ with \
                 max_version=(1, 0) (numpy >= 2.1, torch >= 2.5 and CuPy >= 13 do)",
            ));
        }
        // Every refusal is above: a refused request leaves the consumer's stream alone.
        self.synchronise(py, &request)?;

        if copy == Some(true) {
            return self.copied(py, versioned, max_version);
        }
        let flags = if self.read_only {
            DlpackFlags::READ_ONLY
        } else {
            DlpackFlags::empty()
        };
        if versioned {
            let tensor = self.tensor::<DLManagedTensorVersioned>(
                Box::new(self.keep.clone()),
                self.data,
                flags,
                max_version,
            )?;
            Ok(tensor.into_pyobject(py)?.unbind())
        } else {
            let tensor = self.tensor::<DLManagedTensor>(
                Box::new(self.keep.clone()),
                self.data,
                flags,
                None,
            )?;
            Ok(tensor.into_pyobject(py)?.unbind())
        }
    }

    /// Checks `stream` for the memory's device and, on a GPU, makes it wait on the
    /// producer's event.
    fn synchronise(&self, py: Python<'_>, request: &ExportRequest<'_>) -> PyResult<()> {
        match self.place {
            Place::Host => {
                // The standard: "None" for devices without streams; -1 (no
                // synchronisation) asks for nothing either, so it is accepted too.
                if let Some(s) = request.stream() {
                    let minus_one = s.extract::<i64>().is_ok_and(|v| v == -1);
                    if !minus_one {
                        return Err(crate::error(format!(
                            "stream must be None for host memory (kDLCPU), not {s}"
                        )));
                    }
                }
                Ok(())
            }
            Place::Cuda(_) => {
                let target = match request
                    .cuda_stream()
                    .map_err(|e| crate::error(e.value(py).to_string()))?
                {
                    CudaStreamRequest::NoSync => return Ok(()),
                    // The standard: None means the legacy default stream on CUDA.
                    CudaStreamRequest::Omitted | CudaStreamRequest::LegacyDefault => 1,
                    CudaStreamRequest::PerThreadDefault => 2,
                    CudaStreamRequest::Pointer(p) => p,
                };
                match &self.sync {
                    Some(sync) => {
                        let sync = sync.clone();
                        py.detach(move || sync.make_wait(target)).map_err(|e| {
                            crate::error(format!(
                                "cannot order the consumer's stream after the producer's \
                                 work: {e}"
                            ))
                        })
                    }
                    None => Ok(()),
                }
            }
        }
    }

    /// A private copy of host memory (`copy=True`): writable, flagged `IS_COPIED`.
    fn copied(
        &self,
        py: Python<'_>,
        versioned: bool,
        max_version: Option<(u32, u32)>,
    ) -> PyResult<Py<PyAny>> {
        let len = self.byte_len();
        // u64 words keep every element type (at most 8 bytes) aligned.
        let mut words = vec![0u64; len.div_ceil(8)].into_boxed_slice();
        // SAFETY: `self.data` points at `len` readable bytes of the mapping that
        // `self.keep` keeps alive (held by `self`), and `words` has room for `len` bytes;
        // the two do not overlap (the copy is freshly allocated).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.data as *const u8,
                words.as_mut_ptr().cast::<u8>(),
                len,
            );
        }
        let data = words.as_ptr() as usize;
        let owner: Box<Box<[u64]>> = Box::new(words);
        if versioned {
            let mut tensor = self.tensor::<DLManagedTensorVersioned>(
                owner,
                data,
                DlpackFlags::empty(),
                max_version,
            )?;
            // SAFETY: the copy is ours alone and nothing else aliases it, which is what
            // IS_COPIED asserts.
            unsafe { *tensor.flags_mut() = DlpackFlags::IS_COPIED };
            Ok(tensor.into_pyobject(py)?.unbind())
        } else {
            let tensor = self.tensor::<DLManagedTensor>(owner, data, DlpackFlags::empty(), None)?;
            Ok(tensor.into_pyobject(py)?.unbind())
        }
    }

    /// A managed tensor over `data`, owned by `owner` (dropped by the deleter).
    fn tensor<M>(
        &self,
        owner: impl dlpark::OpaqueContext,
        data: usize,
        flags: DlpackFlags,
        max_version: Option<(u32, u32)>,
    ) -> PyResult<Managed<M>>
    where
        M: VersionedTensor,
    {
        let mut init = Dynamic::compact(self.shape.clone())
            .initialize_as::<M>(owner)
            .map_err(crate::error)?;
        init.set_data(data as *mut c_void)
            .set_device(self.place.device())
            .set_dtype(dtype(self.element));
        // SAFETY: READ_ONLY is set exactly when the holder may not write; IS_COPIED is
        // never set here; no sub-byte types.
        unsafe { init.set_flags_unchecked(flags) };
        M::set_version(&mut init, max_version)?;
        // SAFETY: `data` lies in memory `owner` keeps alive until the deleter runs, the
        // shape and strides were written by dlpark's compact builder, and the flags say
        // how the memory may be used.
        Ok(unsafe { init.finish() })
    }
}

/// The ABI-specific part of making a tensor: the versioned one declares its version.
pub(crate) trait VersionedTensor: ManagedTensorBase + Sized {
    /// Declares the version the consumer asked for (at most the one dlpark bundles).
    fn set_version(
        init: &mut dlpark::allocation::dynamic::Initialized<Self>,
        max_version: Option<(u32, u32)>,
    ) -> PyResult<()>;
}

impl VersionedTensor for DLManagedTensor {
    fn set_version(
        _: &mut dlpark::allocation::dynamic::Initialized<Self>,
        _: Option<(u32, u32)>,
    ) -> PyResult<()> {
        Ok(())
    }
}

impl VersionedTensor for DLManagedTensorVersioned {
    fn set_version(
        init: &mut dlpark::allocation::dynamic::Initialized<Self>,
        max_version: Option<(u32, u32)>,
    ) -> PyResult<()> {
        // A consumer of DLPack 1.0 gets a tensor that says 1.0: minor versions only add
        // fields after the ones 1.0 reads, but a strict consumer may check the number.
        let current = DLPackVersion::CURRENT;
        let minor = match max_version {
            Some((major, minor)) if major == current.major => minor.min(current.minor),
            _ => current.minor,
        };
        init.set_version(DLPackVersion {
            major: current.major,
            minor,
        })
        .map(|_| ())
        .map_err(crate::error)
    }
}

/// The DLPack data type of an element type.
fn dtype(et: ElementType) -> DLDataType {
    let code = match et {
        ElementType::U8 | ElementType::U16 | ElementType::U32 | ElementType::U64 => {
            DLDataTypeCode::UINT
        }
        ElementType::I8 | ElementType::I16 | ElementType::I32 | ElementType::I64 => {
            DLDataTypeCode::INT
        }
        ElementType::F16 | ElementType::F32 | ElementType::F64 => DLDataTypeCode::FLOAT,
    };
    DLDataType::scalar(code, (et.size() * 8) as u8)
}

/// `kDLCPU (1, 0)`, `kDLCUDA (2, 0)`, ...
fn describe((device_type, device_id): (u32, i32)) -> String {
    let name = match DLDeviceType(device_type) {
        DLDeviceType::CPU => "kDLCPU",
        DLDeviceType::CUDA => "kDLCUDA",
        DLDeviceType::CUDAHOST => "kDLCUDAHost",
        DLDeviceType::CUDAMANAGED => "kDLCUDAManaged",
        DLDeviceType::ROCM => "kDLROCM",
        _ => "device type",
    };
    format!("{name} ({device_type}, {device_id})")
}

/// An export of `allocation`'s host memory, typed and shaped by its local metadata (bytes
/// when it has none), read-only when the handle is or when `read_only`. `keep` must own
/// `allocation`, so that the mapping lives as long as any capsule or array made from it.
pub(crate) fn of_host(
    keep: Keeper,
    allocation: &fastio_context::Allocation,
    read_only: bool,
) -> Export {
    let (element, shape) = match allocation.typed_shape() {
        Some(t) => (t.element_type, t.shape.dims().to_vec()),
        None => (ElementType::U8, vec![allocation.size()]),
    };
    let read_only = read_only || allocation.access() == fastio_context::Access::ReadOnly;
    Export::host(keep, allocation.as_ptr(), element, shape, read_only)
}
