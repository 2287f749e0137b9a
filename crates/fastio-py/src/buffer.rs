//! Exports of shared memory to Python: the buffer protocol, and the `View` object that
//! every numpy array, `memoryview` and `__array_interface__` export holds as its base.
//!
//! `unsafe` of the crate lives here (filling a `Py_buffer` for a consumer) and in
//! `dlpack.rs` (DLPack tensors).

use std::any::Any;
use std::ffi::{CStr, c_int, c_void};
use std::sync::Arc;

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;

use fastio_context::{Access, Allocation};

use crate::dtype;

/// Whatever keeps a mapping alive: an allocation's or an entry's shared handle.
pub(crate) type Keeper = Arc<dyn Any + Send + Sync>;

/// An export of one allocation's memory, fixed at the time it was made: pointer, length,
/// access, element format and shape. Holding it keeps the handle, and so the mapping,
/// alive; numpy arrays made from an allocation have one as their (indirect) base.
#[pyclass(frozen, module = "fastio", name = "View")]
pub struct View {
    // Keeps the mapping (and the context's handle) alive while the export lives.
    _keep: Keeper,
    ptr: usize,
    len: usize,
    readonly: bool,
    itemsize: usize,
    format: &'static CStr,
    shape: Box<[ffi::Py_ssize_t]>,
    strides: Box<[ffi::Py_ssize_t]>,
}

impl View {
    /// An export of `allocation`'s memory, typed and shaped by its local metadata (as
    /// bytes when it has none); read-only when the handle is or when `read_only`.
    /// `keep` must own `allocation`, so that the mapping lives as long as the view.
    /// Device memory has no host address: it is refused.
    pub(crate) fn of(keep: Keeper, allocation: &Allocation, read_only: bool) -> PyResult<Self> {
        if !allocation.kind().is_host() {
            return Err(crate::context_error(
                &fastio_context::ContextError::NotHostMemory {
                    kind: allocation.kind(),
                },
            ));
        }
        let (itemsize, format, dims) = match allocation.typed_shape() {
            Some(t) => (
                t.element_type.size(),
                dtype::buffer_format(t.element_type),
                t.shape.dims().to_vec(),
            ),
            None => (1, c"B", vec![allocation.size()]),
        };
        let readonly = read_only || allocation.access() == Access::ReadOnly;
        Ok(Self::new(
            keep,
            allocation.as_ptr(),
            readonly,
            itemsize,
            format,
            &dims,
        ))
    }

    /// An export of `len` bytes at `ptr`, which lie in the mapping `keep` keeps.
    fn new(
        keep: Keeper,
        ptr: *const u8,
        readonly: bool,
        itemsize: usize,
        format: &'static CStr,
        dims: &[usize],
    ) -> Self {
        let shape: Box<[ffi::Py_ssize_t]> = dims.iter().map(|&d| d as ffi::Py_ssize_t).collect();
        // C order: the last dimension is contiguous.
        let mut strides = vec![0 as ffi::Py_ssize_t; dims.len()];
        let mut step = itemsize as ffi::Py_ssize_t;
        for (stride, &dim) in strides.iter_mut().zip(dims).rev() {
            *stride = step;
            step *= dim as ffi::Py_ssize_t;
        }
        Self {
            _keep: keep,
            ptr: ptr as usize,
            len: dims.iter().product::<usize>() * itemsize,
            readonly,
            itemsize,
            format,
            shape,
            strides: strides.into_boxed_slice(),
        }
    }
}

#[pymethods]
impl View {
    /// Buffer protocol: the memory with its element format and shape, read-only when
    /// the handle is.
    ///
    /// # Safety
    /// Called by Python with a `Py_buffer` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        // SAFETY: `view` comes straight from the interpreter's bf_getbuffer call.
        unsafe { fill(&slf, view, flags) }
    }

    /// Number of bytes exported.
    fn __len__(&self) -> usize {
        self.len
    }

    /// `<fastio.View 24 bytes, format 'f', shape (2, 3), writable>`.
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "<fastio.View {} bytes, format {}, shape {}, {}>",
            self.len,
            crate::py_repr(py, &self.format.to_string_lossy()),
            crate::py_tuple(&self.shape),
            if self.readonly {
                "read-only"
            } else {
                "writable"
            }
        )
    }
}

/// Fills `view` for a consumer of `owner`'s memory, as bf_getbuffer must.
///
/// # Safety
/// `view` must point at a `Py_buffer` the caller owns (the interpreter's bf_getbuffer
/// contract).
pub(crate) unsafe fn fill(
    owner: &Bound<'_, View>,
    view: *mut ffi::Py_buffer,
    flags: c_int,
) -> PyResult<()> {
    if view.is_null() {
        return Err(PyBufferError::new_err("no Py_buffer to fill"));
    }
    // SAFETY: `view` is non-null and points at a Py_buffer owned by the caller.
    let view = unsafe { &mut *view };
    // The protocol asks exporters to leave obj NULL when they fail.
    view.obj = std::ptr::null_mut();
    let v = owner.get();
    if flags & ffi::PyBUF_WRITABLE != 0 && v.readonly {
        return Err(PyBufferError::new_err(
            "this Fast I/O allocation is read-only in this process; it cannot be exported writable",
        ));
    }
    view.buf = v.ptr as *mut c_void;
    view.len = v.len as ffi::Py_ssize_t;
    view.readonly = c_int::from(v.readonly);
    view.itemsize = v.itemsize as ffi::Py_ssize_t;
    // The consumer must not write through format, shape or strides; they live in `owner`,
    // which `view.obj` keeps alive until the buffer is released.
    view.format = if flags & ffi::PyBUF_FORMAT != 0 {
        v.format.as_ptr().cast_mut()
    } else {
        std::ptr::null_mut()
    };
    if flags & ffi::PyBUF_ND == ffi::PyBUF_ND {
        view.ndim = v.shape.len() as c_int;
        view.shape = v.shape.as_ptr().cast_mut();
    } else {
        view.ndim = 1;
        view.shape = std::ptr::null_mut();
    }
    view.strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
        v.strides.as_ptr().cast_mut()
    } else {
        std::ptr::null_mut()
    };
    view.suboffsets = std::ptr::null_mut();
    view.internal = std::ptr::null_mut();
    view.obj = owner.clone().into_any().into_ptr();
    Ok(())
}
