//! `FastIOAllocation`: a handle to a Fast I/O memory resource.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use fastio_context::{Access, Allocation, ContextError};
use fastio_meta::ElementType;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::buffer::{self, View};
use crate::{IOAccess, dtype, error};

mod copies;

/// The Rust handle, shared by a `FastIOAllocation` and every export made from it. When
/// the last of them goes, the handle is released (or freed, if `free()` was called).
pub(crate) struct Handle {
    allocation: Mutex<Option<Allocation>>,
    free_on_drop: AtomicBool,
}

impl Handle {
    fn lock(&self) -> MutexGuard<'_, Option<Allocation>> {
        // A panic while holding the lock cannot leave an Allocation half-changed (its
        // methods change it only on success), so a poisoned lock is safe to reuse.
        self.allocation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the live allocation, holding the GIL: `f` must be quick and must not
    /// release the GIL (see [`Handle::detached`]).
    fn with<T>(&self, f: impl FnOnce(&mut Allocation) -> PyResult<T>) -> PyResult<T> {
        match self.lock().as_mut() {
            Some(a) => f(a),
            None => Err(crate::InvalidHandleError::new_err(
                "this allocation was released",
            )),
        }
    }

    /// Runs `f` on the live allocation with the GIL released. The lock is taken after the
    /// GIL is released and dropped before it is taken back, so no thread ever waits for
    /// the GIL while holding the lock (which would deadlock with a thread that holds the
    /// GIL and waits for the lock).
    fn detached<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Allocation) -> Result<T, ContextError> + Send,
    ) -> PyResult<T> {
        py.detach(|| match self.lock().as_mut() {
            Some(a) => f(a).map_err(Some),
            None => Err(None),
        })
        .map_err(|e| match e {
            Some(e) => crate::context_error(&e),
            None => crate::InvalidHandleError::new_err("this allocation was released"),
        })
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let slot = self.allocation.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(allocation) = slot.take() {
            // Nobody is left to report a failure to (the context may be gone).
            let _ = if *self.free_on_drop.get_mut() {
                allocation.free()
            } else {
                allocation.release()
            };
        }
    }
}

enum State {
    Live(Arc<Handle>),
    Released,
    Freed,
}

/// A handle to a Fast I/O memory resource, with its own local metadata (element type and
/// dimensions).
///
/// Made by `FastIOContext.create(size)` or `FastIOContext.get(name)`. Deleting the last
/// Python reference releases the handle. Numpy views (`as_numpy()`, `numpy.asarray(a)`,
/// `memoryview(a)`) share the memory without copying; they are writable when the handle
/// may write and read-only otherwise. A view keeps the memory mapped: after `release()` or
/// `free()` this object is unusable at once, but the context is told only when the last
/// view is gone, so a view never points at memory that was unmapped or handed to someone
/// else.
#[pyclass(frozen, module = "fastio")]
pub struct FastIOAllocation {
    state: Mutex<State>,
}

impl FastIOAllocation {
    pub(crate) fn new(allocation: Allocation) -> Self {
        Self {
            state: Mutex::new(State::Live(Arc::new(Handle {
                allocation: Mutex::new(Some(allocation)),
                free_on_drop: AtomicBool::new(false),
            }))),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handle(&self) -> PyResult<Arc<Handle>> {
        match &*self.state() {
            State::Live(h) => Ok(h.clone()),
            State::Released => Err(crate::InvalidHandleError::new_err(
                "this allocation was released; get it again by name to use it",
            )),
            State::Freed => Err(crate::InvalidHandleError::new_err(
                "this allocation was freed",
            )),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Allocation) -> PyResult<T>) -> PyResult<T> {
        self.handle()?.with(f)
    }

    fn detached<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Allocation) -> Result<T, ContextError> + Send,
    ) -> PyResult<T> {
        self.handle()?.detached(py, f)
    }

    /// An export of the memory, typed and shaped by the local metadata (untyped: bytes).
    pub(crate) fn view(&self) -> PyResult<View> {
        let handle = self.handle()?;
        let keep: buffer::Keeper = handle.clone();
        handle.with(|a| View::of(keep, a, false))
    }

    /// A DLPack export of the memory, typed and shaped as `view()` is: host memory, or
    /// device memory mapped on its device (once per handle).
    fn dlpack_export(&self) -> PyResult<crate::dlpack::Export> {
        let handle = self.handle()?;
        let keep: buffer::Keeper = handle.clone();
        handle.with(|a| match a.kind() {
            fastio_context::MemoryKind::Host => Ok(crate::dlpack::of_host(keep, a, false)),
            fastio_context::MemoryKind::Cuda { .. } => crate::device::of_device(keep, a),
        })
    }

    /// A zero-copy numpy array over the memory.
    pub(crate) fn numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let view = Bound::new(py, self.view()?)?;
        py.import("numpy")?.call_method1("asarray", (view,))
    }

    fn give_up(&self, py: Python<'_>, free: bool) -> PyResult<()> {
        let handle = {
            let mut state = self.state();
            match &*state {
                State::Live(_) => {}
                State::Released => {
                    return Err(crate::InvalidHandleError::new_err(
                        "this allocation was already released",
                    ));
                }
                State::Freed => {
                    return Err(crate::InvalidHandleError::new_err(
                        "this allocation was already freed",
                    ));
                }
            }
            let next = if free { State::Freed } else { State::Released };
            match std::mem::replace(&mut *state, next) {
                State::Live(h) => h,
                _ => unreachable!("checked above"),
            }
        };
        match Arc::try_unwrap(handle) {
            // No export is left: tell the context now, and report what it says.
            Ok(handle) => {
                let Some(allocation) = handle.lock().take() else {
                    return Ok(());
                };
                py.detach(|| {
                    if free {
                        allocation.free()
                    } else {
                        allocation.release()
                    }
                })
                .map_err(error)
            }
            // Views still map the memory; the last of them gives the handle up.
            Err(shared) => {
                if free {
                    shared.free_on_drop.store(true, Ordering::SeqCst);
                }
                Ok(())
            }
        }
    }
}

/// Reads a Python int as a count, raising `fastio.Error` for anything else.
pub(crate) fn count_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<usize> {
    let value: i128 = obj.extract().map_err(|_| {
        crate::InvalidArgumentError::new_err(format!(
            "{what} must be an int, not {}",
            type_name(obj)
        ))
    })?;
    usize::try_from(value).map_err(|_| {
        crate::InvalidArgumentError::new_err(format!("{what} must be >= 0, got {value}"))
    })
}

/// Reads a Python str, raising `fastio.Error` for anything else, and for a str that is not
/// valid Unicode text (a lone surrogate, as `os.fsdecode` makes of undecodable bytes).
pub(crate) fn str_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<String> {
    let Ok(text) = obj.cast::<pyo3::types::PyString>() else {
        return Err(error(format!(
            "{what} must be a str, not {}",
            type_name(obj)
        )));
    };
    text.to_str().map(str::to_owned).map_err(|_| {
        let position = text
            .to_string_lossy()
            .chars()
            .position(|c| c == char::REPLACEMENT_CHARACTER)
            .map_or(String::new(), |i| format!(" at index {i}"));
        error(format!(
            "{what} is not valid Unicode text: it holds a lone surrogate{position}"
        ))
    })
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

#[pymethods]
impl FastIOAllocation {
    /// Size of the allocation in bytes.
    #[getter]
    fn size(&self) -> PyResult<usize> {
        self.with(|a| Ok(a.size()))
    }

    /// The context's id of the memory resource (equal for handles of the same memory).
    #[getter]
    fn id(&self) -> PyResult<u64> {
        self.with(|a| Ok(a.id().0))
    }

    /// How this handle may touch the memory.
    #[getter]
    fn access(&self) -> PyResult<IOAccess> {
        self.with(|a| {
            Ok(match a.access() {
                Access::ReadOnly => IOAccess::ReadOnly,
                Access::ReadWrite => IOAccess::ReadWrite,
            })
        })
    }

    /// True when the memory comes from the machine's hugetlb pool (what `create` or
    /// `empty` with `hugetlb=True` got where the pool could hold it).
    #[getter]
    fn hugetlb(&self) -> PyResult<bool> {
        self.with(|a| Ok(a.is_hugetlb()))
    }

    /// The local element type as a `numpy.dtype`, or None before it is set.
    #[getter]
    fn element_type<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let et = self.with(|a| Ok(a.element_type()))?;
        et.map(|et| dtype::to_numpy(py, et)).transpose()
    }

    /// The local dimensions as a tuple, or None before they are set.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let dims = self.with(|a| Ok(a.dimensions().map(<[usize]>::to_vec)))?;
        dims.map(|d| PyTuple::new(py, d)).transpose()
    }

    /// Same as `shape` (Clara's C API calls them dimensions).
    #[getter]
    fn dimensions<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.shape(py)
    }

    /// True until `release()` or `free()`.
    #[getter]
    fn is_live(&self) -> bool {
        matches!(&*self.state(), State::Live(_))
    }

    /// Copies this host allocation's bytes to the start of the device allocation `device`
    /// (at least as large), and returns once the copy is done. The first copy registers
    /// this handle's memory with CUDA, so copies run at pinned-memory speed.
    fn copy_to(&self, py: Python<'_>, device: PyRef<'_, FastIOAllocation>) -> PyResult<()> {
        copies::copy(py, self, &device, true)
    }

    /// Copies the first `size` bytes of the device allocation `device` into this host
    /// allocation (which must be writable), and returns once the copy is done.
    fn copy_from(&self, py: Python<'_>, device: PyRef<'_, FastIOAllocation>) -> PyResult<()> {
        copies::copy(py, self, &device, false)
    }

    /// Sets this handle's local element type and dimensions. `element_type` is a numpy
    /// dtype or type (`numpy.float16`) or a name (`"float16"`, `"f16"`). Raises
    /// `fastio.Error`, changing nothing, when they need more bytes than the allocation
    /// has or are malformed.
    fn set_type_and_dimensions(
        &self,
        element_type: &Bound<'_, PyAny>,
        dimensions: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let et = dtype::from_python(element_type)?;
        let dims = dims_arg(dimensions)?;
        self.with(|a| a.set_type_and_dimensions(et, &dims).map_err(error))
    }

    /// Publishes the memory under `name` with a copy of this handle's metadata. The
    /// handle stays valid. A name is published once (Clara): a taken or freed name raises,
    /// unless `replace=True`, which replaces that publication in one step (handles got
    /// from it stay valid). Names: `A-Z a-z 0-9 - _ . / :`, `/` between non-empty parts.
    #[pyo3(signature = (name, *, replace = false))]
    fn publish(&self, py: Python<'_>, name: &Bound<'_, PyAny>, replace: bool) -> PyResult<()> {
        let name = str_arg(name, "name")?;
        self.detached(py, |a| {
            if replace {
                a.publish_replacing(&name)
            } else {
                a.publish(&name)
            }
        })
    }

    /// Publishes the memory under `name`, as `publish`, with the interprocess CUDA event
    /// the producer recorded on the stream that wrote it: `event` is the event's 64-byte
    /// IPC handle (`bytes(torch.cuda.Event(interprocess=True).ipc_handle())`, CuPy's or
    /// CUDA's `cudaIpcEventHandle_t`). Every `get` of the name carries it (`cuda_event`),
    /// so a consumer's stream waits on the GPU, not on the host.
    fn publish_with_event(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        event: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let name = str_arg(name, "name")?;
        let event = crate::device::event_arg(event)?;
        self.detached(py, |a| a.publish_with_event(&name, event))
    }

    /// The 64-byte IPC handle of the interprocess CUDA event that came with this
    /// allocation's publication (see `publish_with_event`), or None.
    #[getter]
    fn cuda_event<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let event = self.with(|a| Ok(a.event()))?;
        Ok(event.map(|e| PyBytes::new(py, &e.0)))
    }

    /// Drops this handle; the memory stays for other handles and publications. Using
    /// this object afterwards raises `fastio.Error`.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        self.give_up(py, false)
    }

    /// Marks the memory deleted, so that later gets of its names fail, and drops this
    /// handle. Other handles (and views of this one) stay valid until released.
    fn free(&self, py: Python<'_>) -> PyResult<()> {
        self.give_up(py, true)
    }

    /// Takes the write mapping of the memory for this handle (Clara's writer exclusivity:
    /// a second writer fails to map): raises `fastio.BusyError` while another handle, in
    /// this process or any other of the context, holds it, and `fastio.ReadOnlyError` on
    /// a read-only handle. Readers are not excluded (dirty reads are allowed, as in
    /// Clara). Counted: this handle may take it more than once. Given back by
    /// `release_write()`, or when the handle is released, freed or collected, or its
    /// process exits (even killed). Advisory: it orders cooperating writers; views stay
    /// writable without it.
    fn acquire_write(&self, py: Python<'_>) -> PyResult<()> {
        self.detached(py, |a| a.acquire_write())
    }

    /// Gives back one `acquire_write()` of this handle; raises `fastio.InvalidHandleError`
    /// when this handle does not hold the write mapping.
    fn release_write(&self, py: Python<'_>) -> PyResult<()> {
        self.detached(py, |a| a.release_write())
    }

    /// A zero-copy numpy array over the memory, with the local element type and shape
    /// (a flat uint8 array before they are set). Writable when this handle may write.
    fn as_numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.numpy(py)
    }

    /// Same as `as_numpy()` (the name Clara's FastIO entries use).
    fn get_numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.numpy(py)
    }

    /// A copy of the typed contents (or of every byte, when untyped) as bytes.
    fn get_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.detached(py, |a| {
            let len = a.typed_shape().map_or(a.size(), |t| t.byte_size());
            a.read_bytes(0, len)
        })?;
        Ok(PyBytes::new(py, &data))
    }

    /// Copies `values` into the memory. A numpy array (or anything `numpy.asarray`
    /// takes, a scalar included) is converted to the local element type and must have as
    /// many elements as the local shape; a raw buffer (bytes, bytearray, memoryview) is
    /// copied as is, from the first byte.
    fn set_values(&self, py: Python<'_>, values: &Bound<'_, PyAny>) -> PyResult<()> {
        set_values(self, py, values)
    }

    /// Buffer protocol: `memoryview(a)` and `numpy.asarray(a)` share the memory.
    ///
    /// # Safety
    /// Called by Python with a `Py_buffer` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let owner = Bound::new(slf.py(), slf.get().view()?)?;
        // SAFETY: `view` comes straight from the interpreter's bf_getbuffer call.
        unsafe { buffer::fill(&owner, view, flags) }
    }

    /// numpy's array interface (version 3); `data` is a `View` that keeps the memory
    /// mapped for as long as the array made from it lives.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let typed = self.with(|a| {
            Ok(a.typed_shape()
                .map(|t| (t.element_type, t.shape.dims().to_vec()))
                .unwrap_or((ElementType::U8, vec![a.size()])))
        })?;
        let view = Bound::new(py, self.view()?)?;
        array_interface(view.into_any(), typed.0, typed.1)
    }

    /// DLPack export (the Python array API standard): a capsule that `numpy.from_dlpack`,
    /// `torch.from_dlpack` and others take without copying. The capsule keeps the memory
    /// mapped until the consumer's array is gone; read-only handles export read-only
    /// tensors. `copy=True` exports a private copy instead; `dl_device` must name the
    /// memory's own device; `stream` must be None for host memory. Raises
    /// `fastio.ExportError` (also a `BufferError`) when the memory cannot be exported as
    /// asked.
    #[pyo3(signature = (stream = None, *, max_version = None, dl_device = None, copy = None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<&Bound<'py, PyAny>>,
        max_version: Option<&Bound<'py, PyAny>>,
        dl_device: Option<&Bound<'py, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Py<PyAny>> {
        self.dlpack_export()?
            .to_capsule(py, stream, max_version, dl_device, copy)
    }

    /// The CUDA array interface (version 3) of device memory (see `fastio.DeviceView`);
    /// host memory has none (AttributeError, so `cupy.asarray` and others fall back).
    #[getter]
    fn __cuda_array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        if self.with(|a| Ok(a.kind()))? == fastio_context::MemoryKind::Host {
            return Err(pyo3::exceptions::PyAttributeError::new_err(
                "host memory has no __cuda_array_interface__: use numpy (as_numpy) or DLPack",
            ));
        }
        crate::device::DeviceView::new(self.dlpack_export()?).interface(py)
    }

    /// A `fastio.DeviceView` of device memory (raises `fastio.Error` for host memory).
    fn device_view(&self) -> PyResult<crate::device::DeviceView> {
        if self.with(|a| Ok(a.kind()))? == fastio_context::MemoryKind::Host {
            return Err(error(
                "this allocation is host memory: use as_numpy() or __dlpack__ instead",
            ));
        }
        Ok(crate::device::DeviceView::new(self.dlpack_export()?))
    }

    /// `(device_type, device_id)` of the memory, as DLPack numbers them: `(1, 0)` (kDLCPU)
    /// for host memory, `(2, N)` (kDLCUDA) for memory of CUDA device N.
    fn __dlpack_device__(&self) -> PyResult<(u32, i32)> {
        Ok(self.dlpack_export()?.place().dlpack_device())
    }

    /// `with ctx.get(name) as a:` releases the handle at the end of the block (unless it
    /// was released or freed inside it).
    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<bool> {
        if self.is_live() {
            self.give_up(py, false)?;
        }
        Ok(false)
    }

    /// `<fastio.FastIOAllocation #3: float32 (2, 3), 24 bytes, read-write>`.
    fn __repr__(&self) -> String {
        let handle = match &*self.state() {
            State::Live(h) => h.clone(),
            State::Released => return "<fastio.FastIOAllocation (released)>".into(),
            State::Freed => return "<fastio.FastIOAllocation (freed)>".into(),
        };
        let text = handle.with(|a| {
            let typed = match (a.element_type(), a.dimensions()) {
                (Some(et), Some(dims)) => format!("{et} {}", crate::py_tuple(dims)),
                _ => "untyped".into(),
            };
            let access = match a.access() {
                fastio_context::Access::ReadOnly => "read-only",
                fastio_context::Access::ReadWrite => "read-write",
            };
            Ok(format!("{}: {typed}, {} bytes, {access}", a.id(), a.size()))
        });
        match text {
            Ok(text) => format!("<fastio.FastIOAllocation {text}>"),
            Err(_) => "<fastio.FastIOAllocation (released)>".into(),
        }
    }
}

/// Reads dimensions: a sequence of positive ints.
pub(crate) fn dims_arg(obj: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    let items: Vec<Bound<'_, PyAny>> = obj
        .try_iter()
        .map_err(|_| error("dimensions must be a sequence of ints"))?
        .collect::<PyResult<_>>()?;
    items
        .iter()
        .enumerate()
        .map(|(i, d)| count_arg(d, &format!("dimension {i}")))
        .collect()
}

/// `set_values` for anything that exposes a `FastIOAllocation`'s view.
pub(crate) fn set_values(
    target: &FastIOAllocation,
    py: Python<'_>,
    values: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let np = py.import("numpy")?;
    let raw = values.is_instance_of::<PyBytes>()
        || values.is_instance_of::<pyo3::types::PyByteArray>()
        || values.is_instance_of::<pyo3::types::PyMemoryView>();
    if raw {
        // A buffer: copied byte for byte, no conversion (as Clara's `set_values` does).
        let bytes = py
            .import("builtins")?
            .getattr("bytes")?
            .call1((values,))?
            .cast_into::<PyBytes>()
            .map_err(|e| error(e.to_string()))?;
        let data = bytes.as_bytes();
        let len = target.with(|a| Ok(a.typed_shape().map_or(a.size(), |t| t.byte_size())))?;
        if data.len() > len {
            return Err(error(format!(
                "{} bytes do not fit in the allocation's {len} bytes",
                data.len()
            )));
        }
        return target.detached(py, |a| a.write_bytes(0, data));
    }
    let view = target.numpy(py)?;
    if !view
        .getattr("flags")?
        .getattr("writeable")?
        .extract::<bool>()?
    {
        return Err(error(
            "this allocation is read-only in this process; its values cannot be set",
        ));
    }
    let array = np
        .call_method1("asarray", (values,))
        .map_err(|e| error(format!("cannot convert the values to an array: {e}")))?;
    let want: usize = view.getattr("size")?.extract()?;
    let have: usize = array.getattr("size")?.extract()?;
    if want != have {
        let shape = view.getattr("shape")?;
        let given = array.getattr("shape")?;
        return Err(error(format!(
            "the allocation holds {want} elements (shape {shape}); got {have} (shape {given})"
        )));
    }
    let array = array.call_method1("reshape", (view.getattr("shape")?,))?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("casting", "unsafe")?;
    np.getattr("copyto")?
        .call((view, array), Some(&kwargs))
        .map_err(|e| error(format!("cannot copy the values: {e}")))?;
    Ok(())
}

/// numpy's array interface (version 3) of `data` (an object exporting the buffer
/// protocol) as an array of `element_type` and `shape`.
pub(crate) fn array_interface<'py>(
    data: Bound<'py, PyAny>,
    element_type: ElementType,
    shape: Vec<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let py = data.py();
    let d = PyDict::new(py);
    d.set_item("version", 3)?;
    d.set_item("shape", PyTuple::new(py, shape)?)?;
    d.set_item("typestr", element_type.numpy_dtype())?;
    d.set_item("data", data)?;
    Ok(d)
}
