//! `fastio.DeviceView`: Fast I/O memory on a CUDA device, exported to Python's GPU
//! libraries without a copy.
//!
//! Two conventions, as PyTorch, CuPy, Numba and JAX read them:
//! - `__cuda_array_interface__` (version 3): `data = (device pointer, read-only)`, `shape`,
//!   `typestr`, `strides = None` (C order), `version = 3`, and `stream`: a stream of this
//!   process already ordered after the producer's work, which the consumer must wait on
//!   (None when there is nothing to wait for);
//! - DLPack (`__dlpack__`, `__dlpack_device__`; `kDLCUDA`): the consumer passes its own
//!   stream and the producer's interprocess event is waited on by that stream (the host
//!   never waits); -1 asks for no synchronisation, `None` means the legacy default stream.
//!
//! A view holds what keeps the device mapping alive (the allocation's or entry's handle),
//! so arrays made from it never outlive the memory.

use std::sync::{Arc, Mutex};

use cuda_streams::{
    Driver as CudaDriver, InterprocessEvent, IpcEventHandle, Stream, StreamPool, StreamPoolConfig,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::dlpack::{ConsumerSync, Export};

/// Orders consumers after a producer's interprocess event.
pub(crate) struct EventSync {
    driver: CudaDriver,
    event: InterprocessEvent,
    /// A stream of its own that waits on the event, made when first asked (the CUDA array
    /// interface's `stream`), with the pool it came from.
    ordered: Mutex<Option<(StreamPool, Stream)>>,
}

impl EventSync {
    /// Opens the producer's event (exported by another process) on `device`.
    pub(crate) fn import(
        driver: &CudaDriver,
        device: i32,
        handle: &[u8; IpcEventHandle::LEN],
    ) -> Result<Self, cuda_streams::CudaError> {
        Ok(Self::new(
            driver,
            InterprocessEvent::import(driver, device, &IpcEventHandle(*handle))?,
        ))
    }

    /// Orders consumers after `event`.
    pub(crate) fn new(driver: &CudaDriver, event: InterprocessEvent) -> Self {
        Self {
            driver: driver.clone(),
            event,
            ordered: Mutex::new(None),
        }
    }
}

impl ConsumerSync for EventSync {
    fn make_wait(&self, stream: usize) -> Result<(), String> {
        self.event
            .make_raw_stream_wait(stream)
            .map_err(|e| e.to_string())
    }

    fn ordered_stream(&self) -> Result<usize, String> {
        // Only set after a successful wait, so a poisoned lock holds a usable value.
        let mut ordered = self.ordered.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, stream)) = ordered.as_ref() {
            return Ok(stream.as_raw());
        }
        let config = StreamPoolConfig {
            dev_id: self.event.device(),
            ..StreamPoolConfig::default()
        };
        let pool = StreamPool::new(&self.driver, config).map_err(|e| e.to_string())?;
        let stream = pool.allocate().map_err(|e| e.to_string())?;
        self.event
            .make_stream_wait(Some(&stream))
            .map_err(|e| e.to_string())?;
        let raw = stream.as_raw();
        *ordered = Some((pool, stream));
        Ok(raw)
    }
}

/// Memory of a Fast I/O allocation or entry on a CUDA device, as Python's GPU libraries
/// take it: `torch.from_dlpack(view)`, `cupy.from_dlpack(view)`, `cupy.asarray(view)`
/// share it without copying. Read-only views export read-only tensors
/// (`DLPACK_FLAG_BITMASK_READ_ONLY`, `data = (ptr, True)`); CUDA cannot enforce it on every
/// driver, consumers are asked to honour it.
#[pyclass(frozen, module = "fastio")]
pub struct DeviceView {
    export: Export,
}

impl DeviceView {
    /// A view of `export`, which must be device memory.
    pub(crate) fn new(export: Export) -> Self {
        Self { export }
    }

    fn interface_ptr(&self) -> usize {
        // The CUDA array interface wants 0 for an empty array.
        if self.export.shape().contains(&0) {
            0
        } else {
            self.export.data()
        }
    }
}

impl DeviceView {
    /// The CUDA array interface dict (see `__cuda_array_interface__`).
    pub(crate) fn interface<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stream = match self.export.sync() {
            Some(sync) => {
                let sync = sync.clone();
                Some(py.detach(move || sync.ordered_stream()).map_err(|e| {
                    crate::error(format!(
                        "cannot order a stream after the producer's work: {e}"
                    ))
                })?)
            }
            None => None,
        };
        let d = PyDict::new(py);
        d.set_item("shape", PyTuple::new(py, self.export.shape())?)?;
        d.set_item("typestr", self.export.element().numpy_dtype())?;
        d.set_item("data", (self.interface_ptr(), self.export.read_only()))?;
        d.set_item("strides", py.None())?;
        d.set_item("version", 3)?;
        d.set_item("stream", stream)?;
        Ok(d)
    }
}

#[pymethods]
impl DeviceView {
    /// The CUDA array interface, version 3. Reading it orders `stream` after the producer's
    /// work (GPU-side); the consumer waits on that stream before using the data.
    #[getter]
    fn __cuda_array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.interface(py)
    }

    /// DLPack export (`kDLCUDA`): pass the stream you will use the data on (an int, or an
    /// object with `__cuda_stream__`); it waits on the producer's work GPU-side. -1: no
    /// synchronisation; None: the legacy default stream. `dl_device` must be this view's
    /// device; `copy=True` is refused (copy with the consumer instead).
    #[pyo3(signature = (stream = None, *, max_version = None, dl_device = None, copy = None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<&Bound<'py, PyAny>>,
        max_version: Option<&Bound<'py, PyAny>>,
        dl_device: Option<&Bound<'py, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Py<PyAny>> {
        self.export
            .to_capsule(py, stream, max_version, dl_device, copy)
    }

    /// `(2, device)`: kDLCUDA and the device's ordinal.
    fn __dlpack_device__(&self) -> (u32, i32) {
        self.export.place().dlpack_device()
    }

    /// The device address of the first element.
    #[getter]
    fn ptr(&self) -> usize {
        self.export.data()
    }

    /// The CUDA device's ordinal.
    #[getter]
    fn device(&self) -> i32 {
        self.export.place().dlpack_device().1
    }

    /// The shape, a tuple (C order).
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.export.shape())
    }

    /// The element type's numpy name, e.g. `'float32'`.
    #[getter]
    fn dtype(&self) -> &'static str {
        self.export.element().name()
    }

    /// The holder may not write the memory.
    #[getter]
    fn readonly(&self) -> bool {
        self.export.read_only()
    }

    /// Size in bytes.
    #[getter]
    fn nbytes(&self) -> usize {
        self.export.byte_len()
    }

    /// `<fastio.DeviceView cuda:0 float32 (2, 3), read-only>`.
    fn __repr__(&self) -> String {
        format!(
            "<fastio.DeviceView cuda:{} {} {}, {}>",
            self.device(),
            self.export.element().name(),
            crate::py_tuple(self.export.shape()),
            if self.export.read_only() {
                "read-only"
            } else {
                "writable"
            }
        )
    }
}

/// An interprocess event's IPC handle from Python: exactly 64 bytes (anything with the
/// buffer protocol, or a torch/CuPy handle converted with `bytes(...)`).
pub(crate) fn event_arg(obj: &Bound<'_, PyAny>) -> PyResult<fastio_context::EventHandle> {
    // bytes(64) would be 64 zero bytes: an int is a mistake, not a handle.
    if obj.is_instance_of::<pyo3::types::PyInt>() {
        return Err(crate::error(
            "event must be the 64 bytes of a CUDA IPC event handle, not an int",
        ));
    }
    let bytes: Vec<u8> = obj
        .py()
        .import("builtins")?
        .getattr("bytes")?
        .call1((obj,))
        .and_then(|b| b.extract())
        .map_err(|_| {
            crate::error(format!(
                "event must be the 64 bytes of a CUDA IPC event handle, not {}",
                obj.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
    let len = bytes.len();
    <[u8; IpcEventHandle::LEN]>::try_from(bytes)
        .map(fastio_context::EventHandle)
        .map_err(|_| {
            crate::error(format!(
                "event must be the 64 bytes of a CUDA IPC event handle; got {len} bytes"
            ))
        })
}

#[cfg(test)]
/// A view over device memory: `shape` elements of `element` at `device_ptr` on `device`,
/// kept mapped by `keep`, ordered after `event` (an interprocess event's handle) when given.
pub(crate) fn view(
    keep: crate::buffer::Keeper,
    device_ptr: u64,
    device: i32,
    element: fastio_meta::ElementType,
    shape: Vec<usize>,
    read_only: bool,
    sync: Option<Arc<dyn ConsumerSync>>,
) -> DeviceView {
    DeviceView::new(Export::device(
        keep, device_ptr, device, element, shape, read_only, sync,
    ))
}

/// A DLPack export of `allocation`'s device memory, mapped on its device (once per handle)
/// and ordered after the event its publication carries, if any. `keep` must own
/// `allocation`.
pub(crate) fn of_device(
    keep: crate::buffer::Keeper,
    allocation: &fastio_context::Allocation,
) -> PyResult<Export> {
    let driver = CudaDriver::probe().map_err(crate::error)?;
    let mapped = allocation.map_device(&driver).map_err(crate::error)?;
    let (element, shape) = match allocation.typed_shape() {
        Some(t) => (t.element_type, t.shape.dims().to_vec()),
        None => (fastio_meta::ElementType::U8, vec![allocation.size()]),
    };
    let sync = match allocation.event() {
        Some(h) => Some(Arc::new(
            EventSync::import(&driver, mapped.device, &h.0)
                .map_err(|e| crate::error(format!("cannot open the producer's CUDA event: {e}")))?,
        ) as Arc<dyn ConsumerSync>),
        None => None,
    };
    Ok(Export::device(
        keep,
        mapped.device_ptr,
        mapped.device,
        element,
        shape,
        mapped.read_only,
        sync,
    ))
}

#[cfg(test)]
mod tests {
    //! The exports on cuda-streams' CPU fake: its device memory is real shared memory (a
    //! fake device pointer is a host address) and it logs every record and wait, so the
    //! dicts, the capsules and the stream handling are checked for real in an embedded
    //! interpreter; the H200 bundle runs them with torch and CuPy.

    use std::sync::Arc;

    use cuda_streams::testing::{FakeCall, fake_calls};
    use cuda_streams::{DeviceAccess, DeviceMemory, Driver as CudaDriver, InterprocessEvent};
    use fastio_meta::ElementType;
    use pyo3::prelude::*;
    use pyo3::types::PyDict;

    use super::{DeviceView, EventSync, view};
    use crate::buffer::Keeper;

    /// What the Python side reads capsules with (the DLPack 1.x header's layout).
    const CTYPES: &std::ffi::CStr = cr#"
import ctypes
class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]
class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]
class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]
class Versioned(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32),
                ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p),
                ("flags", ctypes.c_uint64), ("dl_tensor", DLTensor)]
get = ctypes.pythonapi.PyCapsule_GetPointer
get.restype = ctypes.c_void_p
get.argtypes = [ctypes.py_object, ctypes.c_char_p]
valid = ctypes.pythonapi.PyCapsule_IsValid
valid.restype = ctypes.c_int
valid.argtypes = [ctypes.py_object, ctypes.c_char_p]
def tensor(capsule):
    return Versioned.from_address(get(capsule, b"dltensor_versioned"))
"#;

    struct Fixture {
        driver: CudaDriver,
        mapping: Arc<cuda_streams::DeviceMapping>,
        producer_event: usize,
    }

    /// 2 MiB of fake device memory on device 0 (of 2), and a producer event whose handle the
    /// view imports.
    fn fixture() -> (Fixture, DeviceView, DeviceView) {
        let driver = CudaDriver::fake(2);
        let memory = DeviceMemory::create(&driver, 0, 1 << 20).unwrap();
        let mapping = Arc::new(memory.map(0, DeviceAccess::ReadWrite).unwrap());
        let event = InterprocessEvent::new(&driver, 0).unwrap();
        let handle = event.export().unwrap();
        let sync = EventSync::import(&driver, 0, &handle.0).unwrap();
        let producer_event = event.as_raw();
        let keep: Keeper = mapping.clone();
        let read_only = view(
            keep.clone(),
            mapping.device_ptr(),
            0,
            ElementType::F32,
            vec![2, 3],
            true,
            Some(Arc::new(sync)),
        );
        let writable = view(
            keep,
            mapping.device_ptr(),
            0,
            ElementType::I16,
            vec![4],
            false,
            None,
        );
        // The producer's event outlives the test: the imported one is a second handle.
        std::mem::forget(event);
        (
            Fixture {
                driver,
                mapping,
                producer_event,
            },
            read_only,
            writable,
        )
    }

    fn waits(driver: &CudaDriver) -> Vec<Option<usize>> {
        fake_calls(driver)
            .unwrap()
            .into_iter()
            .filter_map(|c| match c {
                FakeCall::Wait { stream, .. } => Some(stream),
                FakeCall::Record { .. } => None,
            })
            .collect()
    }

    fn run(py: Python<'_>, code: &str, locals: &Bound<'_, PyDict>) -> PyResult<()> {
        let code = std::ffi::CString::new(code).unwrap();
        py.run(CTYPES, Some(locals), None)?;
        py.run(&code, Some(locals), None)
    }

    #[test]
    fn the_cuda_array_interface_names_a_stream_ordered_after_the_producer() {
        let (fx, ro, rw) = fixture();
        Python::initialize();
        Python::attach(|py| {
            let locals = PyDict::new(py);
            locals.set_item("ro", Py::new(py, ro)?)?;
            locals.set_item("rw", Py::new(py, rw)?)?;
            locals.set_item("ptr", fx.mapping.device_ptr())?;
            run(
                py,
                r#"
cai = ro.__cuda_array_interface__
assert cai["shape"] == (2, 3) and cai["typestr"] == "<f4", cai
assert cai["data"] == (ptr, True) and cai["strides"] is None and cai["version"] == 3, cai
stream = cai["stream"]
assert isinstance(stream, int) and stream not in (0, 1, 2), stream
# The same ordered stream on a second look.
assert ro.__cuda_array_interface__["stream"] == stream
# Nothing to wait for: no stream; a writable view says so.
cai = rw.__cuda_array_interface__
assert cai["stream"] is None and cai["data"] == (ptr, False) and cai["typestr"] == "<i2", cai
assert ro.__dlpack_device__() == (2, 0)
assert (ro.device, ro.shape, ro.dtype, ro.readonly, ro.nbytes) == (0, (2, 3), "float32", True, 24)
assert repr(ro) == "<fastio.DeviceView cuda:0 float32 (2, 3), read-only>", repr(ro)
"#,
                &locals,
            )?;
            let stream: usize = py
                .eval(
                    c"ro.__cuda_array_interface__['stream']",
                    Some(&locals),
                    None,
                )?
                .extract()?;
            // That stream waited on the producer's event, once.
            let calls = fake_calls(&fx.driver).unwrap();
            let waited: Vec<_> = calls
                .iter()
                .filter(|c| {
                    matches!(c, FakeCall::Wait { stream: Some(s), event, .. }
                    if *s == stream && *event == fx.producer_event)
                })
                .collect();
            assert_eq!(waited.len(), 1, "{calls:?}");
            Ok::<_, PyErr>(())
        })
        .unwrap();
    }

    #[test]
    fn dlpack_makes_the_consumers_stream_wait_and_carries_the_read_only_flag() {
        let (fx, ro, rw) = fixture();
        Python::initialize();
        Python::attach(|py| {
            let locals = PyDict::new(py);
            locals.set_item("ro", Py::new(py, ro)?)?;
            locals.set_item("rw", Py::new(py, rw)?)?;
            locals.set_item("ptr", fx.mapping.device_ptr())?;
            run(
                py,
                r#"
cap = ro.__dlpack__(stream=0xBEEF00, max_version=(1, 0))
t = tensor(cap)
assert (t.major, t.minor) == (1, 0)
assert t.flags == 1  # READ_ONLY
d = t.dl_tensor
assert (d.device.device_type, d.device.device_id) == (2, 0)
assert d.data == ptr and d.ndim == 2 and [d.shape[0], d.shape[1]] == [2, 3]
assert (d.dtype.code, d.dtype.bits) == (2, 32)  # kDLFloat
class TorchLikeStream:
    cuda_stream = None
    def __cuda_stream__(self):
        return 0xCAFE00
ro.__dlpack__(stream=TorchLikeStream(), max_version=(1, 0))
ro.__dlpack__(stream=None, max_version=(1, 0))   # the legacy default stream
ro.__dlpack__(stream=-1, max_version=(1, 0))     # no synchronisation
wcap = rw.__dlpack__(stream=-1, max_version=(1, 0))
assert tensor(wcap).flags == 0
"#,
                &locals,
            )?;
            assert_eq!(
                waits(&fx.driver),
                vec![Some(0xBEEF00), Some(0xCAFE00), Some(1)],
                "the consumer's stream, a __cuda_stream__ object's, then the legacy default"
            );
            Ok::<_, PyErr>(())
        })
        .unwrap();
    }

    #[test]
    fn bad_requests_are_answered_clearly() {
        let (fx, ro, rw) = fixture();
        Python::initialize();
        Python::attach(|py| {
            let locals = PyDict::new(py);
            locals.set_item("ro", Py::new(py, ro)?)?;
            locals.set_item("rw", Py::new(py, rw)?)?;
            locals.set_item("Error", py.get_type::<crate::Error>())?;
            locals.set_item("ExportError", crate::dlpack::export_error_type(py)?)?;
            run(
                py,
                r#"
def refused(kind, text, **kwargs):
    view = kwargs.pop("view", ro)
    try:
        view.__dlpack__(**kwargs)
    except kind as e:
        assert text in str(e), (text, str(e))
        return
    raise AssertionError(f"not refused: {kwargs}")
refused(Error, "stream 0 is ambiguous", stream=0, max_version=(1, 0))
refused(ExportError, "kDLCUDA (2, 0); it cannot be exported to kDLCPU (1, 0)",
        stream=0xBEEF00, max_version=(1, 0), dl_device=(1, 0))
refused(ExportError, "copy=True is not offered for device memory", stream=0xBEEF00,
        max_version=(1, 0), copy=True)
refused(ExportError, "max_version=(1, 0)", stream=0xBEEF00)
# A writable view serves legacy consumers.
assert valid(rw.__dlpack__(stream=-1), b"dltensor") == 1
assert issubclass(ExportError, BufferError) and issubclass(ExportError, Error)
"#,
                &locals,
            )?;
            // None of the refused requests made the consumer's stream wait.
            assert!(waits(&fx.driver).is_empty());
            Ok::<_, PyErr>(())
        })
        .unwrap();
    }

    #[test]
    fn a_capsule_keeps_the_mapping_until_its_consumer_is_done() {
        let (fx, ro, rw) = fixture();
        drop(ro);
        let base = Arc::strong_count(&fx.mapping);
        Python::initialize();
        Python::attach(|py| {
            let locals = PyDict::new(py);
            locals.set_item("rw", Py::new(py, rw)?)?;
            run(
                py,
                "cap = rw.__dlpack__(stream=-1, max_version=(1, 0))\ndel rw",
                &locals,
            )?;
            // The view is gone; the capsule still holds the mapping.
            assert_eq!(Arc::strong_count(&fx.mapping), base);
            locals.del_item("cap")?;
            py.run(c"import gc; gc.collect()", None, None)?;
            assert_eq!(Arc::strong_count(&fx.mapping), base - 1);
            Ok::<_, PyErr>(())
        })
        .unwrap();
    }
}
