//! The C types: the result code, opaque handle types, the element-type and access
//! constants. cbindgen turns this file into the typedefs and `#define`s of `clara_cpd.h`.

#![allow(non_camel_case_types)]

use std::ffi::c_int;

/// Return type of every function: zero on success, non-zero on failure (Clara's
/// convention). The non-zero values are the `NVIDIA_CLARA_RESULT_*` codes; after a
/// failure, `nvidia_clara_last_error_message()` says what went wrong.
pub type result = c_int;

/// Success.
pub const NVIDIA_CLARA_RESULT_OK: result = 0;
/// A NULL pointer, a string that is not UTF-8, an unknown enum value, a dimension count
/// of 0 or above 64, metadata larger than the allocation, a malformed name.
pub const NVIDIA_CLARA_RESULT_INVALID_ARGUMENT: result = 1;
/// The handle is not live: released, freed, never returned by this library, or a handle
/// of another kind (an allocation passed as a context).
pub const NVIDIA_CLARA_RESULT_INVALID_HANDLE: result = 2;
/// No publication has that name, or the resource published under it was freed; or the
/// allocation has no type and dimensions to read.
pub const NVIDIA_CLARA_RESULT_NOT_FOUND: result = 3;
/// A write was requested through a read-only handle.
pub const NVIDIA_CLARA_RESULT_READ_ONLY: result = 4;
/// The handle is already mapped, or another handle of this context holds a write
/// mapping of the same resource (Clara's writer exclusivity).
pub const NVIDIA_CLARA_RESULT_BUSY: result = 5;
/// The output buffer is NULL or too small; the size needed was written to the count or
/// length output.
pub const NVIDIA_CLARA_RESULT_BUFFER_TOO_SMALL: result = 6;
/// The context refused or could not carry out the request (name already published, out
/// of memory, server gone, ...).
pub const NVIDIA_CLARA_RESULT_FAILED: result = 7;
/// A bug in the library was caught at the boundary (a Rust panic); nothing crossed it.
pub const NVIDIA_CLARA_RESULT_INTERNAL: result = 8;

/// Element type of an allocation's typed metadata: one of the
/// `NVIDIA_CLARA_ELEMENT_TYPE_*` values (Clara's documented order, uint8 = 0 to
/// float64 = 10). An integer rather than a C enum, so that an out-of-range value is a
/// reported error instead of undefined behaviour inside the library.
pub type nvidia_clara_element_type = i32;

/// Unsigned 8-bit integer (also the storage type of Clara's `string`).
pub const NVIDIA_CLARA_ELEMENT_TYPE_UINT8: nvidia_clara_element_type = 0;
/// Unsigned 16-bit integer.
pub const NVIDIA_CLARA_ELEMENT_TYPE_UINT16: nvidia_clara_element_type = 1;
/// Unsigned 32-bit integer.
pub const NVIDIA_CLARA_ELEMENT_TYPE_UINT32: nvidia_clara_element_type = 2;
/// Unsigned 64-bit integer.
pub const NVIDIA_CLARA_ELEMENT_TYPE_UINT64: nvidia_clara_element_type = 3;
/// Signed 8-bit integer.
pub const NVIDIA_CLARA_ELEMENT_TYPE_INT8: nvidia_clara_element_type = 4;
/// Signed 16-bit integer.
pub const NVIDIA_CLARA_ELEMENT_TYPE_INT16: nvidia_clara_element_type = 5;
/// Signed 32-bit integer.
pub const NVIDIA_CLARA_ELEMENT_TYPE_INT32: nvidia_clara_element_type = 6;
/// Signed 64-bit integer.
pub const NVIDIA_CLARA_ELEMENT_TYPE_INT64: nvidia_clara_element_type = 7;
/// IEEE 754 half precision (2 bytes).
pub const NVIDIA_CLARA_ELEMENT_TYPE_FLOAT16: nvidia_clara_element_type = 8;
/// IEEE 754 single precision.
pub const NVIDIA_CLARA_ELEMENT_TYPE_FLOAT32: nvidia_clara_element_type = 9;
/// IEEE 754 double precision.
pub const NVIDIA_CLARA_ELEMENT_TYPE_FLOAT64: nvidia_clara_element_type = 10;

/// How a handle or a mapping may touch the memory: one of the
/// `NVIDIA_CLARA_FASTIO_ACCESS_*` values.
pub type nvidia_clara_fastio_access = i32;

/// Read only.
pub const NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY: nvidia_clara_fastio_access = 0;
/// Read and write.
pub const NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE: nvidia_clara_fastio_access = 1;

/// Options of `nvidia_clara_fastio__create_with_flags`: an OR of the
/// `NVIDIA_CLARA_FASTIO_CREATE_*` bits, 0 for none. fastio extension.
pub type nvidia_clara_fastio_create_flags = u32;

/// Take the memory from the machine's hugetlb pool (`MFD_HUGETLB`, the size rounded up to
/// whole huge pages) where the pool can hold it; ordinary shared memory otherwise
/// (`nvidia_clara_fastio__is_hugetlb` says which).
pub const NVIDIA_CLARA_FASTIO_CREATE_HUGETLB: nvidia_clara_fastio_create_flags = 1;

/// The most dimensions an allocation's metadata may have.
pub const NVIDIA_CLARA_FASTIO_MAX_DIMENSIONS: usize = 64;

/// A Fast I/O context: the memory resources shared by the operators of one job.
///
/// Opaque. The pointer is a token: the library never dereferences it, and a released
/// token is never handed out again, so a stale pointer is always reported.
pub struct nvidia_clara_fastio_context {
    _opaque: [u8; 0],
}

/// A handle (local reference) to a Fast I/O memory resource, with its own metadata.
///
/// Opaque. The pointer is a token: the library never dereferences it, and a released
/// token is never handed out again, so double release and use after release or free
/// are always reported, never undefined behaviour.
pub struct nvidia_clara_fastio_alloc {
    _opaque: [u8; 0],
}

/// An instance of the Clara Pipeline Driver in this operator process: joins the job
/// (through `FASTIO_CONTEXT`, set by `fastio run`) or runs the operator alone.
///
/// Opaque; a token like the other handles.
pub struct nvidia_clara_cpd {
    _opaque: [u8; 0],
}

/// What the execute callback works with: disk entries, the Fast I/O context and FastIO
/// entries. Valid only during the execute callback; never free it.
///
/// Opaque; a token like the other handles.
pub struct nvidia_clara_payload {
    _opaque: [u8; 0],
}

/// A disk input or output of the payload: a name (possibly empty) and a directory.
/// Valid only during the execute callback; never free it.
///
/// Opaque; a token like the other handles.
pub struct nvidia_clara_payload_entry {
    _opaque: [u8; 0],
}

/// A FastIO entry: typed shared memory declared in the pipeline definition, an input
/// (read-only) or an output (read-write). Valid only during the execute callback; never
/// free it.
///
/// Opaque; a token like the other handles.
pub struct nvidia_clara_fastio_entry {
    _opaque: [u8; 0],
}

/// Called once, before the operator's inputs are ready. Return 0 on success.
pub type nvidia_clara_cpd_prepare_callback =
    Option<unsafe extern "C" fn(cpd: *mut nvidia_clara_cpd) -> result>;

/// Called once every upstream operator has finished execute, with the payload. Return 0
/// on success; non-zero fails the job (cleanup still runs).
pub type nvidia_clara_cpd_execute_callback = Option<
    unsafe extern "C" fn(cpd: *mut nvidia_clara_cpd, payload: *mut nvidia_clara_payload) -> result,
>;

/// Called once at the end, also after a failure. Return 0 on success.
pub type nvidia_clara_cpd_cleanup_callback =
    Option<unsafe extern "C" fn(cpd: *mut nvidia_clara_cpd) -> result>;

/// Told of each life-cycle event: `code` 0 with a message such as "prepare succeeded",
/// or a non-zero NVIDIA_CLARA_RESULT_* code with what went wrong (a failed phase, handles
/// left unreleased at the end of execute). The message is valid during the call only.
pub type nvidia_clara_cpd_notification_callback = Option<
    unsafe extern "C" fn(
        cpd: *mut nvidia_clara_cpd,
        code: std::ffi::c_int,
        message: *const std::ffi::c_char,
    ),
>;
