//! Element types between numpy and fastio.

use fastio_meta::ElementType;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::error;

/// Runs `$body` with `$t` bound to the Rust type of the element type `$et`.
macro_rules! with_element_type {
    ($et:expr, $t:ident => $body:expr) => {
        match $et {
            fastio_meta::ElementType::U8 => {
                type $t = u8;
                $body
            }
            fastio_meta::ElementType::U16 => {
                type $t = u16;
                $body
            }
            fastio_meta::ElementType::U32 => {
                type $t = u32;
                $body
            }
            fastio_meta::ElementType::U64 => {
                type $t = u64;
                $body
            }
            fastio_meta::ElementType::I8 => {
                type $t = i8;
                $body
            }
            fastio_meta::ElementType::I16 => {
                type $t = i16;
                $body
            }
            fastio_meta::ElementType::I32 => {
                type $t = i32;
                $body
            }
            fastio_meta::ElementType::I64 => {
                type $t = i64;
                $body
            }
            fastio_meta::ElementType::F16 => {
                type $t = half::f16;
                $body
            }
            fastio_meta::ElementType::F32 => {
                type $t = f32;
                $body
            }
            fastio_meta::ElementType::F64 => {
                type $t = f64;
                $body
            }
        }
    };
}
pub(crate) use with_element_type;

/// The `numpy.dtype` of an element type.
pub(crate) fn to_numpy<'py>(py: Python<'py>, et: ElementType) -> PyResult<Bound<'py, PyAny>> {
    py.import("numpy")?
        .call_method1("dtype", (et.numpy_dtype(),))
}

/// The element type named by a Python object: a string in any spelling fastio accepts
/// (Clara's meaning wins, so `"u8"` is uint8), or anything `numpy.dtype()` accepts
/// (`numpy.float16`, `numpy.dtype("<i4")`).
pub(crate) fn from_python(obj: &Bound<'_, PyAny>) -> PyResult<ElementType> {
    if let Ok(text) = obj.cast::<PyString>() {
        return ElementType::parse(&text.to_cow()?).map_err(error);
    }
    let py = obj.py();
    let dtype = py
        .import("numpy")?
        .call_method1("dtype", (obj,))
        .map_err(|e| error(format!("{obj} is not an element type: {e}")))?;
    from_numpy_dtype(&dtype)
}

/// The element type of a `numpy.dtype`, or `fastio.Error` for dtypes Fast I/O cannot hold.
pub(crate) fn from_numpy_dtype(dtype: &Bound<'_, PyAny>) -> PyResult<ElementType> {
    let text: String = dtype.getattr("str")?.extract()?;
    ElementType::parse(&text).map_err(|_| {
        error(format!(
            "numpy dtype {dtype} ({text}) cannot be held in Fast I/O: use one of uint8, uint16, \
             uint32, uint64, int8, int16, int32, int64, float16, float32, float64 \
             (little-endian)"
        ))
    })
}

/// The PEP 3118 format character of an element type (native sizes; every platform we
/// build for is little-endian with LP64 sizes).
pub(crate) fn buffer_format(et: ElementType) -> &'static std::ffi::CStr {
    match et {
        ElementType::U8 => c"B",
        ElementType::U16 => c"H",
        ElementType::U32 => c"I",
        ElementType::U64 => c"Q",
        ElementType::I8 => c"b",
        ElementType::I16 => c"h",
        ElementType::I32 => c"i",
        ElementType::I64 => c"q",
        ElementType::F16 => c"e",
        ElementType::F32 => c"f",
        ElementType::F64 => c"d",
    }
}
