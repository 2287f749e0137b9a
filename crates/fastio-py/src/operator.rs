//! Clara's operator classes: `Driver`, `Payload`, `PayloadEntry`, `FastIOEntry`, over
//! [`fastio_operator`].

use std::sync::{Arc, Mutex, MutexGuard};

use fastio_context::{AccessMode, ContextError};
use fastio_job::FastIoEntry;
use fastio_operator::{CallbackError, Callbacks};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::buffer::{self, Keeper, View};
use crate::context::FastIOContext;
use crate::{IOAccess, dtype, error};

/// One FastIO entry, shared by its Python object and every view of its memory.
struct EntryCell {
    entry: Mutex<FastIoEntry>,
}

impl EntryCell {
    fn lock(&self) -> MutexGuard<'_, FastIoEntry> {
        // FastIoEntry changes only on success, so a poisoned lock holds a whole entry.
        self.entry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with the GIL released, taking the lock only once it is released (see
    /// `Handle::detached` in allocation.rs: never wait for the GIL holding the lock).
    fn detached<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut FastIoEntry) -> Result<T, ContextError> + Send,
    ) -> PyResult<T> {
        py.detach(|| f(&mut self.lock()))
            .map_err(|e| crate::context_error(&e))
    }
}

/// A FastIO entry (Clara's typed pipelines): a typed shared memory input (read-only) or output
/// (read-write) of this operator, declared in the pipeline definition.
///
/// Valid during execute only: afterwards every call raises `fastio.Error`. Numpy views
/// (`get_numpy()`, `as_numpy()`) share the entry's memory; views kept past execute keep
/// the mapping (never unmapped under them), read-only from then on (a write through one
/// faults), and the job reports their references as reclaimed.
#[pyclass(frozen, module = "fastio")]
pub struct FastIOEntry {
    name: String,
    cell: Mutex<Option<Arc<EntryCell>>>,
}

impl FastIOEntry {
    fn new(entry: FastIoEntry) -> Self {
        Self {
            name: entry.name().to_owned(),
            cell: Mutex::new(Some(Arc::new(EntryCell {
                entry: Mutex::new(entry),
            }))),
        }
    }

    fn cell(&self) -> PyResult<Arc<EntryCell>> {
        self.cell
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                crate::InvalidHandleError::new_err(format!(
                    "FastIO entry {:?} is valid only during execute; the payload has ended",
                    self.name
                ))
            })
    }

    /// Runs `f` on the entry holding the GIL: `f` must be quick and must not release it.
    fn with<T>(&self, f: impl FnOnce(&mut FastIoEntry) -> PyResult<T>) -> PyResult<T> {
        f(&mut self.cell()?.lock())
    }

    fn detached<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut FastIoEntry) -> Result<T, ContextError> + Send,
    ) -> PyResult<T> {
        self.cell()?.detached(py, f)
    }

    /// Ends the entry's life: an output's memory becomes read-only in place (a numpy view
    /// kept past execute then faults on a write instead of changing what downstream
    /// operators read), and its handle is released now, or by the last view.
    fn close(&self) {
        let cell = self.cell.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(cell) = cell {
            // Only mprotect of a whole live mapping can fail here, which it does not in
            // practice; the context seals the memory against writes regardless.
            let _ = cell.lock().finish();
        }
    }

    fn view(&self, read_only: bool) -> PyResult<View> {
        let cell = self.cell()?;
        let keep: Keeper = cell.clone();
        let entry = cell.lock();
        match entry.allocation() {
            Some(a) => View::of(keep, a, read_only),
            None => Err(crate::NotFoundError::new_err(format!(
                "FastIO entry {:?} has no memory yet (shape {:?}): set its dynamic dimensions \
                 with update_shape first",
                self.name,
                entry.shape()
            ))),
        }
    }

    /// Where the entry's memory lives (host until it has memory).
    fn memory(&self) -> PyResult<fastio_context::MemoryKind> {
        self.with(|e| {
            Ok(e.allocation()
                .map_or(fastio_context::MemoryKind::Host, |a| a.kind()))
        })
    }

    fn dlpack_export(&self) -> PyResult<crate::dlpack::Export> {
        let cell = self.cell()?;
        let keep: Keeper = cell.clone();
        let entry = cell.lock();
        match entry.allocation() {
            Some(a) if a.kind().is_host() => Ok(crate::dlpack::of_host(keep, a, false)),
            Some(a) => crate::device::of_device(keep, a),
            None => Err(error(format!(
                "FastIO entry {:?} has no memory yet (shape {:?}): set its dynamic dimensions \
                 with update_shape first",
                self.name,
                entry.shape()
            ))),
        }
    }

    fn numpy<'py>(&self, py: Python<'py>, read_only: bool) -> PyResult<Bound<'py, PyAny>> {
        let view = Bound::new(py, self.view(read_only)?)?;
        py.import("numpy")?.call_method1("asarray", (view,))
    }
}

#[pymethods]
impl FastIOEntry {
    /// The entry's name in the pipeline definition.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// The driver allocated it before the operator started (its declared shape is fully
    /// positive and it is not a string).
    #[getter]
    fn is_preallocated(&self) -> PyResult<bool> {
        self.with(|e| Ok(e.is_preallocated()))
    }

    /// It has memory now.
    #[getter]
    fn is_allocated(&self) -> PyResult<bool> {
        self.with(|e| Ok(e.is_allocated()))
    }

    /// `IOAccess.ReadOnly` for an input, `IOAccess.ReadWrite` for an output.
    #[getter]
    fn access(&self) -> PyResult<IOAccess> {
        self.with(|e| {
            Ok(match e.access() {
                AccessMode::ReadOnly => IOAccess::ReadOnly,
                AccessMode::ReadWrite => IOAccess::ReadWrite,
            })
        })
    }

    /// The current shape, a tuple; a dynamic dimension not set yet reads as its marker
    /// (-1 or 0).
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let shape = self.with(|e| Ok(e.shape().to_vec()))?;
        PyTuple::new(py, shape)
    }

    /// The element type as a `numpy.dtype` (`string` entries are uint8).
    #[getter]
    fn element_type<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let et = self.with(|e| Ok(e.element_type()))?;
        dtype::to_numpy(py, et)
    }

    /// Indices of the dimensions declared -1 or 0, a tuple; the same after updates.
    #[getter]
    fn dynamic_shape_indices<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let indices = self.with(|e| Ok(e.dynamic_shape_indices()))?;
        PyTuple::new(py, indices)
    }

    /// Some dimension was declared -1 or 0 (or the entry is a string).
    #[getter]
    fn is_dynamic(&self) -> PyResult<bool> {
        self.with(|e| Ok(e.is_dynamic()))
    }

    /// The 64-byte IPC handle of the interprocess CUDA event its producer recorded at the
    /// end of its execute (on the stream `payload.cuda_stream()` gave it), or None. This
    /// operator's own stream already waits on it.
    #[getter]
    fn cuda_event<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let event = self.with(|e| Ok(e.event()))?;
        Ok(event.map(|e| PyBytes::new(py, &e.0)))
    }

    /// Size of its memory in bytes, or None before it has memory.
    #[getter]
    fn size_in_bytes(&self) -> PyResult<Option<usize>> {
        self.with(|e| Ok(e.size_in_bytes()))
    }

    /// Sets dynamic dimensions: `new_values[k]` at index `dimensions[k]`. Indices that are
    /// not dynamic are left unchanged, without an error (as in Clara). A value may be 0 (an
    /// empty result, as in numpy). Once every dynamic dimension is set the entry gets memory
    /// of that shape. Returns the new shape. Raises
    /// `fastio.Error` on a pre-allocated entry, an input, or while numpy views of the old
    /// memory exist.
    fn update_shape<'py>(
        &self,
        py: Python<'py>,
        dimensions: &Bound<'py, PyAny>,
        new_values: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let indices = crate::allocation::dims_arg(dimensions)?;
        let values: Vec<i64> = new_values
            .try_iter()
            .map_err(|_| error("new_values must be a sequence of ints"))?
            .map(|v| {
                v?.extract::<i64>()
                    .map_err(|_| error("new_values must be ints"))
            })
            .collect::<PyResult<_>>()?;
        if indices.len() != values.len() {
            return Err(error(format!(
                "update_shape needs as many values as indices; got {} indices and {} values",
                indices.len(),
                values.len()
            )));
        }
        let cell = self.cell()?;
        // 1 here, 1 in self: anything more is a view of the current memory. (An input
        // cannot be reshaped at all: the entry says so below.)
        let output = cell.lock().access() == AccessMode::ReadWrite;
        if output && Arc::strong_count(&cell) > 2 {
            return Err(crate::BusyError::new_err(format!(
                "FastIO entry {:?} has numpy views of its memory; delete them before \
                 changing its shape",
                self.name
            )));
        }
        let shape = cell.detached(py, |e| e.update_shape(&indices, &values))?;
        PyTuple::new(py, shape)
    }

    /// Gives a dynamic output memory of its current shape (update_shape does this by
    /// itself once every dimension is set).
    fn allocate(&self, py: Python<'_>) -> PyResult<()> {
        self.detached(py, FastIoEntry::allocate)
    }

    /// A copy of the entry's values as bytes.
    fn get_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.detached(py, |e| e.get_bytes())?;
        Ok(PyBytes::new(py, &data))
    }

    /// A read-only numpy array of the entry's values: zero-copy, so it cannot be
    /// written (Clara's get_numpy: changes to it never reach the entry).
    fn get_numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.numpy(py, true)
    }

    /// A zero-copy numpy array over the entry's memory: writable for an output, so an
    /// operator can compute straight into the memory its downstream operators read;
    /// read-only for an input.
    fn as_numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.numpy(py, false)
    }

    /// Writes the entry's values. A numpy array (or anything numpy.asarray takes, a
    /// scalar included) is converted to the entry's element type and must have as many
    /// elements as the entry; a buffer (bytes, bytearray, memoryview) is copied as is and
    /// must have exactly the entry's size. Raises `fastio.Error` for inputs.
    fn set_values(&self, py: Python<'_>, new_vals: &Bound<'_, PyAny>) -> PyResult<()> {
        let raw = new_vals.is_instance_of::<PyBytes>()
            || new_vals.is_instance_of::<pyo3::types::PyByteArray>()
            || new_vals.is_instance_of::<pyo3::types::PyMemoryView>();
        if raw {
            let bytes = py
                .import("builtins")?
                .getattr("bytes")?
                .call1((new_vals,))?
                .cast_into::<PyBytes>()
                .map_err(|e| error(e.to_string()))?;
            let data = bytes.as_bytes();
            return self.detached(py, |e| e.set_bytes(data));
        }
        // Checks access and allocation with the entry's own messages.
        self.with(|e| {
            if e.access() == AccessMode::ReadOnly {
                return e.set_bytes(&[]).map_err(error);
            }
            Ok(())
        })?;
        let target = self.numpy(py, false)?;
        copy_converted(py, &target, new_vals)
    }

    /// Buffer protocol: `memoryview(entry)` and `numpy.asarray(entry)` share the memory
    /// (writable for outputs).
    ///
    /// # Safety
    /// Called by Python with a `Py_buffer` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::ffi::c_int,
    ) -> PyResult<()> {
        let owner = Bound::new(slf.py(), slf.get().view(false)?)?;
        // SAFETY: `view` comes straight from the interpreter's bf_getbuffer call.
        unsafe { buffer::fill(&owner, view, flags) }
    }

    /// numpy's array interface (version 3), as for `FastIOAllocation`: `data` is a `View`
    /// that keeps the memory mapped (writable for outputs).
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let view = Bound::new(py, self.view(false)?)?;
        let (et, dims) = self.with(|e| {
            let dims = e
                .allocation()
                .and_then(|a| a.dimensions().map(<[usize]>::to_vec))
                .unwrap_or_default();
            Ok((e.element_type(), dims))
        })?;
        crate::allocation::array_interface(view.into_any(), et, dims)
    }

    /// DLPack export (the Python array API standard), as for `FastIOAllocation`: zero-copy,
    /// writable for an output, read-only (flagged so) for an input.
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

    /// The CUDA array interface (v3) of an entry declared `device: cuda:N`, as for
    /// `FastIOAllocation`: its `stream` waits (GPU-side) on the producer's event. Host
    /// entries have none (AttributeError), so `hasattr` checks fall back to numpy or DLPack.
    #[getter]
    fn __cuda_array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        if self.memory()?.is_host() {
            return Err(pyo3::exceptions::PyAttributeError::new_err(
                "a host entry has no __cuda_array_interface__: use numpy (as_numpy) or DLPack",
            ));
        }
        crate::device::DeviceView::new(self.dlpack_export()?).interface(py)
    }

    /// A `fastio.DeviceView` of an entry declared `device: cuda:N` (its device pointer,
    /// device, shape, dtype; read-only for an input); raises `fastio.Error` for a host entry.
    fn device_view(&self) -> PyResult<crate::device::DeviceView> {
        if self.memory()?.is_host() {
            return Err(error(format!(
                "FastIO entry {:?} is host memory: use as_numpy() or __dlpack__ instead",
                self.name
            )));
        }
        Ok(crate::device::DeviceView::new(self.dlpack_export()?))
    }

    /// `(device_type, device_id)` of the entry's memory, as DLPack numbers them.
    fn __dlpack_device__(&self) -> PyResult<(u32, i32)> {
        Ok(self.dlpack_export()?.place().dlpack_device())
    }

    /// `<fastio.FastIOEntry 'mask': output uint8 (256, 512, 512), pre-allocated>`.
    fn __repr__(&self, py: Python<'_>) -> String {
        let name = crate::py_repr(py, &self.name);
        let text = self.with(|e| {
            let role = match e.access() {
                AccessMode::ReadOnly => "input",
                AccessMode::ReadWrite => "output",
            };
            let state = if e.is_preallocated() {
                "pre-allocated"
            } else if e.is_allocated() {
                "dynamic, allocated"
            } else {
                "dynamic, not allocated yet"
            };
            Ok(format!(
                "{role} {} {}, {state}",
                e.element_type(),
                crate::py_tuple(e.shape())
            ))
        });
        match text {
            Ok(text) => format!("<fastio.FastIOEntry {name}: {text}>"),
            Err(_) => format!("<fastio.FastIOEntry {name} (execute has returned)>"),
        }
    }
}

/// Copies `values` into the writable array `target`, converted to its dtype, requiring
/// the same number of elements.
pub(crate) fn copy_converted(
    py: Python<'_>,
    target: &Bound<'_, PyAny>,
    values: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let np = py.import("numpy")?;
    let array = np
        .call_method1("asarray", (values,))
        .map_err(|e| error(format!("cannot convert the values to an array: {e}")))?;
    let want: usize = target.getattr("size")?.extract()?;
    let have: usize = array.getattr("size")?.extract()?;
    if want != have {
        let shape = target.getattr("shape")?;
        let given = array.getattr("shape")?;
        return Err(error(format!(
            "the memory holds {want} elements (shape {shape}); got {have} (shape {given})"
        )));
    }
    let array = array.call_method1("reshape", (target.getattr("shape")?,))?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("casting", "unsafe")?;
    np.getattr("copyto")?
        .call((target, array), Some(&kwargs))
        .map_err(|e| error(format!("cannot copy the values: {e}")))?;
    Ok(())
}

/// A disk input or output of the operator: a name and a directory.
#[pyclass(frozen, module = "fastio", get_all)]
pub struct PayloadEntry {
    /// The entry's name in the pipeline definition (may be empty).
    name: String,
    /// The directory to read (inputs) or write (outputs).
    path: String,
}

#[pymethods]
impl PayloadEntry {
    /// `<fastio.PayloadEntry 'report': '/out/report'>`.
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "<fastio.PayloadEntry {}: {}>",
            crate::py_repr(py, &self.name),
            crate::py_repr(py, &self.path)
        )
    }
}

/// A read-only collection of entries: iterate it, take `len()`, or index it by position
/// or by name.
#[pyclass(frozen, module = "fastio")]
pub struct PayloadCollection {
    names: Vec<String>,
    items: Vec<Py<PyAny>>,
}

#[pymethods]
impl PayloadCollection {
    fn __len__(&self) -> usize {
        self.items.len()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let list = PyList::new(py, self.items.iter().map(|i| i.clone_ref(py)))?;
        Ok(list.try_iter()?.into_any())
    }

    fn __contains__(&self, name: &Bound<'_, PyAny>) -> bool {
        name.extract::<String>()
            .is_ok_and(|n| self.names.contains(&n))
    }

    fn __getitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let index = if let Ok(name) = key.extract::<String>() {
            self.names.iter().position(|n| *n == name).ok_or_else(|| {
                error(format!(
                    "no entry named {name:?}; there are {:?}",
                    self.names
                ))
            })?
        } else {
            let i: i64 = key
                .extract()
                .map_err(|_| error("index entries by position (int) or name (str)"))?;
            let len = self.items.len() as i64;
            let i = if i < 0 { i + len } else { i };
            if !(0..len).contains(&i) {
                return Err(error(format!(
                    "entry index {i} is out of range ({len} entries)"
                )));
            }
            i as usize
        };
        Ok(self.items[index].clone_ref(py))
    }

    /// The entries' names, in declaration order.
    fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// `<fastio.PayloadCollection ['volume', 'mask']>`.
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "<fastio.PayloadCollection {}>",
            crate::py_list(py, &self.names)
        )
    }
}

fn collection(items: Vec<(String, Py<PyAny>)>) -> PayloadCollection {
    let (names, items) = items.into_iter().unzip();
    PayloadCollection { names, items }
}

/// What execute works with: disk input and output entries, the Fast I/O context, and
/// the FastIO entries. Valid only during the execute handler.
#[pyclass(frozen, module = "fastio")]
pub struct Payload {
    driver: Py<Driver>,
    context: Py<FastIOContext>,
    input_entries: Py<PayloadCollection>,
    output_entries: Py<PayloadCollection>,
    fastio_inputs: Py<PayloadCollection>,
    fastio_outputs: Py<PayloadCollection>,
    entries: Vec<Py<FastIOEntry>>,
}

#[pymethods]
impl Payload {
    /// The job's Fast I/O context.
    #[getter]
    fn fastio_context(&self, py: Python<'_>) -> Py<FastIOContext> {
        self.context.clone_ref(py)
    }

    /// Disk inputs (`PayloadEntry`: name, path).
    #[getter]
    fn input_entries(&self, py: Python<'_>) -> Py<PayloadCollection> {
        self.input_entries.clone_ref(py)
    }

    /// Disk outputs (`PayloadEntry`: name, path).
    #[getter]
    fn output_entries(&self, py: Python<'_>) -> Py<PayloadCollection> {
        self.output_entries.clone_ref(py)
    }

    /// FastIO input entries (read-only), by position or name.
    #[getter]
    fn fastio_input_entries(&self, py: Python<'_>) -> Py<PayloadCollection> {
        self.fastio_inputs.clone_ref(py)
    }

    /// FastIO output entries (read-write), by position or name.
    #[getter]
    fn fastio_output_entries(&self, py: Python<'_>) -> Py<PayloadCollection> {
        self.fastio_outputs.clone_ref(py)
    }

    /// The FastIO input `name`.
    fn fastio_input(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.fastio_inputs.get().__getitem__(py, name)
    }

    /// The FastIO output `name`.
    fn fastio_output(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.fastio_outputs.get().__getitem__(py, name)
    }

    /// The operator's CUDA stream, as an int (a `CUstream`/`cudaStream_t`): allocated from
    /// the operator's stream pool the first time and held for the run, already ordered
    /// (GPU-side, the host did not wait) after every FastIO input's producer. Queue this
    /// execute's GPU work on it, e.g. under `torch.cuda.ExternalStream(s)` or
    /// `cupy.cuda.ExternalStream(s)`; at the end of execute an event recorded on it goes
    /// with every output, so downstream operators wait for this work. Its device is made
    /// current. Raises `fastio.Error` where there is no CUDA device.
    fn cuda_stream(&self, py: Python<'_>) -> PyResult<usize> {
        let driver = self.driver.get();
        py.detach(|| driver.driver.cuda_stream().map(|s| s.as_raw()))
            .map_err(error)
    }

    /// `<fastio.Payload inputs [...], outputs [...], FastIO inputs [...], FastIO outputs [...]>`.
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "<fastio.Payload inputs {}, outputs {}, FastIO inputs {}, FastIO outputs {}>",
            crate::py_list(py, &self.input_entries.get().names),
            crate::py_list(py, &self.output_entries.get().names),
            crate::py_list(py, &self.fastio_inputs.get().names),
            crate::py_list(py, &self.fastio_outputs.get().names),
        )
    }
}

impl Payload {
    /// Ends the payload: every FastIO entry becomes unusable and releases its handle
    /// (at once, or when its last view goes).
    fn close(&self) {
        for entry in &self.entries {
            entry.get().close();
        }
    }
}

fn path_entries(
    py: Python<'_>,
    entries: &[fastio_operator::PathEntry],
) -> PyResult<Py<PayloadCollection>> {
    let items = entries
        .iter()
        .map(|e| {
            let obj = Py::new(
                py,
                PayloadEntry {
                    name: e.name.clone(),
                    path: e.path.clone(),
                },
            )?;
            Ok((e.name.clone(), obj.into_any()))
        })
        .collect::<PyResult<Vec<_>>>()?;
    Py::new(py, collection(items))
}

/// An operator's link to its job, and the runner of its life-cycle (Clara's
/// `clara.Driver`).
///
/// `Driver(execute_handler=f)` joins the job this process was started for by `fastio
/// run` (or runs alone, for debugging, without one). Handlers: `prepare_handler(driver)`,
/// `execute_handler(driver, payload)`, `cleanup_handler(driver)`; each is optional.
/// A handler that returns False or raises fails its phase (cleanup still runs); None or
/// True is success. `start()` runs the life-cycle; `wait_for_completion()` returns when
/// it has, raising `fastio.Error` if a phase failed.
#[pyclass(frozen, module = "fastio")]
pub struct Driver {
    driver: fastio_operator::Driver,
    prepare: Option<Py<PyAny>>,
    execute: Option<Py<PyAny>>,
    cleanup: Option<Py<PyAny>>,
    app_data: Py<PyAny>,
    outcome: Mutex<Option<Result<(), String>>>,
}

fn handler(obj: Option<Bound<'_, PyAny>>, what: &str) -> PyResult<Option<Py<PyAny>>> {
    match obj {
        Some(f) if f.is_none() => Ok(None),
        Some(f) if f.is_callable() => Ok(Some(f.unbind())),
        Some(f) => Err(error(format!(
            "{what} must be callable, not {}",
            f.get_type().name()?
        ))),
        None => Ok(None),
    }
}

#[pymethods]
impl Driver {
    /// Joins the job (see the class documentation). Unknown keyword arguments raise
    /// `fastio.Error`.
    #[new]
    #[pyo3(signature = (execute_handler = None, prepare_handler = None, cleanup_handler = None, app_data = None, **kwargs))]
    fn new(
        py: Python<'_>,
        execute_handler: Option<Bound<'_, PyAny>>,
        prepare_handler: Option<Bound<'_, PyAny>>,
        cleanup_handler: Option<Bound<'_, PyAny>>,
        app_data: Option<Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        if let Some(kwargs) = kwargs.filter(|k| !k.is_empty()) {
            let names: Vec<String> = kwargs.keys().extract()?;
            return Err(error(format!(
                "Driver() got unknown keyword arguments {names:?}; it takes execute_handler, \
                 prepare_handler, cleanup_handler and app_data"
            )));
        }
        let execute = handler(execute_handler, "execute_handler")?;
        let prepare = handler(prepare_handler, "prepare_handler")?;
        let cleanup = handler(cleanup_handler, "cleanup_handler")?;
        let driver = py
            .detach(fastio_operator::Driver::from_env)
            .map_err(error)?;
        Ok(Self {
            driver,
            prepare,
            execute,
            cleanup,
            app_data: app_data.map_or_else(|| py.None(), Bound::unbind),
            outcome: Mutex::new(None),
        })
    }

    /// The job's identifier, a `uuid.UUID`.
    #[getter]
    fn job_id<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("uuid")?
            .call_method1("UUID", (self.driver.job_id(),))
    }

    /// The job's name (the pipeline's).
    #[getter]
    fn job_name(&self) -> &str {
        self.driver.job_name()
    }

    /// This operator's name in the pipeline definition.
    #[getter]
    fn stage_name(&self) -> &str {
        self.driver.stage_name()
    }

    /// The application data given to the constructor, or None.
    #[getter]
    fn app_data(&self, py: Python<'_>) -> Py<PyAny> {
        self.app_data.clone_ref(py)
    }

    /// True when the operator runs alone, without `fastio run`.
    #[getter]
    fn is_standalone(&self) -> bool {
        self.driver.is_standalone()
    }

    /// The job's Fast I/O context (also `payload.fastio_context` during execute).
    #[getter]
    fn fastio_context(&self) -> FastIOContext {
        FastIOContext::wrap(self.driver.context().clone())
    }

    /// Runs the life-cycle: prepare, wait for the inputs, execute, cleanup. A phase's
    /// failure is reported by `wait_for_completion()`.
    fn start(slf: Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut outcome = this.outcome.lock().unwrap_or_else(|e| e.into_inner());
            if outcome.is_some() {
                return Err(error("this driver was already started"));
            }
            *outcome = Some(Err("the life-cycle is running".into()));
        }
        let mut callbacks = PyCallbacks {
            driver: slf.clone().unbind(),
            prepare: this.prepare.as_ref().map(|f| f.clone_ref(py)),
            execute: this.execute.as_ref().map(|f| f.clone_ref(py)),
            cleanup: this.cleanup.as_ref().map(|f| f.clone_ref(py)),
        };
        let result = py.detach(|| this.driver.run(&mut callbacks));
        *this.outcome.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(result.map_err(|e| e.to_string()));
        Ok(())
    }

    /// Returns once the life-cycle has run; raises `fastio.Error` with the first
    /// failure's message if a phase failed.
    fn wait_for_completion(&self) -> PyResult<()> {
        match &*self.outcome.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Err(error("start() was not called")),
            Some(Ok(())) => Ok(()),
            Some(Err(message)) => Err(error(message.clone())),
        }
    }

    /// `<fastio.Driver job 'demo' (id ...), operator 'threshold'>`.
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "<fastio.Driver job {} (id {}), operator {}>",
            crate::py_repr(py, self.driver.job_name()),
            self.driver.job_id(),
            crate::py_repr(py, self.driver.stage_name()),
        )
    }
}

/// The Python handlers as [`Callbacks`].
struct PyCallbacks {
    driver: Py<Driver>,
    prepare: Option<Py<PyAny>>,
    execute: Option<Py<PyAny>>,
    cleanup: Option<Py<PyAny>>,
}

/// Calls a handler and maps its outcome: None or anything but False succeeds; False or
/// an exception fails (the exception's traceback is printed, as Python would).
fn call(
    py: Python<'_>,
    what: &str,
    f: &Py<PyAny>,
    args: Bound<'_, PyTuple>,
) -> Result<(), CallbackError> {
    match f.bind(py).call1(args) {
        Ok(value) => match value.extract::<bool>() {
            Ok(false) if value.is_instance_of::<pyo3::types::PyBool>() => {
                Err(format!("{what} returned False").into())
            }
            _ => Ok(()),
        },
        Err(e) => {
            let message = e.to_string();
            e.display(py);
            Err(format!("{what} raised {message}").into())
        }
    }
}

impl PyCallbacks {
    fn phase(&self, what: &str, f: &Option<Py<PyAny>>) -> Result<(), CallbackError> {
        let Some(f) = f else { return Ok(()) };
        Python::attach(|py| {
            let args = PyTuple::new(py, [self.driver.clone_ref(py).into_any()])?;
            call(py, what, f, args)
        })
    }
}

impl Callbacks for PyCallbacks {
    fn prepare(&mut self, _driver: &fastio_operator::Driver) -> Result<(), CallbackError> {
        self.phase("prepare_handler", &self.prepare)
    }

    fn execute(
        &mut self,
        driver: &fastio_operator::Driver,
        payload: &mut fastio_operator::Payload<'_>,
    ) -> Result<(), CallbackError> {
        let Some(f) = &self.execute else {
            return Ok(());
        };
        // Python's entries are handles of their own, so that numpy views can keep their
        // memory mapped independently of the Rust payload's.
        let open = |infos: &[fastio_job::EntryInfo]| {
            infos
                .iter()
                .map(|info| FastIoEntry::open(driver.context(), info.clone()))
                .collect::<Result<Vec<_>, _>>()
        };
        let info = driver.stage_info();
        let inputs = open(&info.fastio_inputs)?;
        let outputs = open(&info.fastio_outputs)?;
        Python::attach(|py| {
            let payload_obj = build_payload(
                py,
                self.driver.clone_ref(py),
                driver,
                payload,
                inputs,
                outputs,
            )?;
            let args = PyTuple::new(
                py,
                [
                    self.driver.clone_ref(py).into_any(),
                    payload_obj.clone_ref(py).into_any(),
                ],
            )?;
            let result = call(py, "execute_handler", f, args);
            payload_obj.get().close();
            result
        })
    }

    fn cleanup(&mut self, _driver: &fastio_operator::Driver) -> Result<(), CallbackError> {
        self.phase("cleanup_handler", &self.cleanup)
    }
}

fn build_payload(
    py: Python<'_>,
    driver_obj: Py<Driver>,
    driver: &fastio_operator::Driver,
    payload: &fastio_operator::Payload<'_>,
    inputs: Vec<FastIoEntry>,
    outputs: Vec<FastIoEntry>,
) -> PyResult<Py<Payload>> {
    let mut entries = Vec::new();
    let mut wrap = |list: Vec<FastIoEntry>| -> PyResult<Py<PayloadCollection>> {
        let items = list
            .into_iter()
            .map(|e| {
                let name = e.name().to_owned();
                let obj = Py::new(py, FastIOEntry::new(e))?;
                entries.push(obj.clone_ref(py));
                Ok((name, obj.into_any()))
            })
            .collect::<PyResult<Vec<_>>>()?;
        Py::new(py, collection(items))
    };
    let fastio_inputs = wrap(inputs)?;
    let fastio_outputs = wrap(outputs)?;
    Py::new(
        py,
        Payload {
            driver: driver_obj,
            context: Py::new(py, FastIOContext::wrap(driver.context().clone()))?,
            input_entries: path_entries(py, payload.input_entries())?,
            output_entries: path_entries(py, payload.output_entries())?,
            fastio_inputs,
            fastio_outputs,
            entries,
        },
    )
}
