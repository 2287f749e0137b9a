//! FastIO entries: `nvidia_clara_fastio_entry__*`, bound to fastio-context's
//! `FastIoEntry`. Entry handles come from the payload and live until execute returns.

use std::ffi::{c_char, c_int, c_void};
use std::sync::LazyLock;

use fastio_context::AccessMode;
use fastio_job::FastIoEntry;

use crate::error::{Error, guard};
use crate::handles::{Table, lock};
use crate::ptr::{non_null, slice_arg, write_out, write_slice, write_string};
use crate::types::*;

/// What C's `nvidia_clara_fastio_entry*` stands for.
pub(crate) struct EntryState {
    pub(crate) entry: FastIoEntry,
    /// Mapped by `nvidia_clara_fastio_entry__map` and not unmapped since.
    pub(crate) mapped: bool,
}

/// The live FastIO entry handles.
pub(crate) static ENTRIES: LazyLock<Table<EntryState>> =
    LazyLock::new(|| Table::new("nvidia_clara_fastio_entry"));

pub(crate) fn with_entry<R>(
    entry: *const nvidia_clara_fastio_entry,
    f: impl FnOnce(&mut EntryState) -> Result<R, Error>,
) -> Result<R, Error> {
    let (state, _) = ENTRIES.get(entry)?;
    let mut state = lock(&state);
    f(&mut state)
}

/// Refuses to change an output's memory while C has it mapped. A read-only entry (an
/// input, or a finished output) is left to the operation itself, which refuses it first
/// with the context's own error (`EntryError::InputReadOnly` / `OutputFinal`, READ_ONLY),
/// so C reports what Rust and Python report.
fn writable(state: &EntryState, what: &str) -> Result<(), Error> {
    if state.entry.access() == AccessMode::ReadOnly {
        return Ok(());
    }
    if state.mapped {
        return Err(Error::new(
            NVIDIA_CLARA_RESULT_BUSY,
            format!(
                "cannot {what} FastIO entry {:?} while it is mapped: unmap it first",
                state.entry.name()
            ),
        ));
    }
    Ok(())
}

/// The entry's name in the pipeline definition, with the buffer protocol of
/// `nvidia_clara_payload_entry__name`. [section found; signature inferred]
///
/// # Safety
/// `buffer` is NULL or valid for `buffer_size` bytes; `len_out` is NULL or valid for one
/// write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio_entry__name(
    entry: *mut nvidia_clara_fastio_entry,
    buffer: *mut c_char,
    buffer_size: c_int,
    len_out: *mut usize,
) -> result {
    guard("nvidia_clara_fastio_entry__name", || {
        let name = with_entry(entry, |s| Ok(s.entry.name().to_owned()))?;
        // SAFETY: forwarded: the same contract as this function's.
        unsafe { write_string(&name, buffer, buffer_size, len_out) }
    })
}

/// The current shape: the declaration, with dynamic dimensions as set so far (an unset
/// one reads as its marker, -1 or 0). `*count_out` always receives the number of
/// dimensions; the call fails with NVIDIA_CLARA_RESULT_BUFFER_TOO_SMALL when
/// `dimensions_out` holds fewer (`capacity`). [section found; signature inferred]
///
/// # Safety
/// `dimensions_out` is NULL or valid for `capacity` writes; `count_out` is NULL or valid
/// for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio_entry__shape(
    entry: *mut nvidia_clara_fastio_entry,
    dimensions_out: *mut i64,
    capacity: usize,
    count_out: *mut usize,
) -> result {
    guard("nvidia_clara_fastio_entry__shape", || {
        non_null(count_out, "count_out")?;
        let shape = with_entry(entry, |s| Ok(s.entry.shape().to_vec()))?;
        // SAFETY: forwarded: the same contract as this function's.
        unsafe { write_counted(&shape, dimensions_out, capacity, count_out) }
    })
}

/// # Safety
/// `values_out` is NULL or valid for `capacity` writes; `count_out` is valid for one.
unsafe fn write_counted<T: Copy>(
    values: &[T],
    values_out: *mut T,
    capacity: usize,
    count_out: *mut usize,
) -> Result<(), Error> {
    // SAFETY: the caller's contract.
    unsafe { write_out(count_out, values.len(), "count_out") }?;
    if values_out.is_null() && !values.is_empty() {
        return Err(Error::new(
            NVIDIA_CLARA_RESULT_BUFFER_TOO_SMALL,
            format!(
                "the output array is NULL; {} values are needed",
                values.len()
            ),
        ));
    }
    // SAFETY: the caller's contract.
    unsafe { write_slice(values_out, capacity, values, "the output array") }
}

/// Writes the element type (`string` entries are NVIDIA_CLARA_ELEMENT_TYPE_UINT8).
/// [section found; signature inferred]
///
/// # Safety
/// `element_type_out` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio_entry__element_type(
    entry: *mut nvidia_clara_fastio_entry,
    element_type_out: *mut nvidia_clara_element_type,
) -> result {
    guard("nvidia_clara_fastio_entry__element_type", || {
        non_null(element_type_out, "element_type_out")?;
        let code = with_entry(entry, |s| Ok(s.entry.element_type().code()))?;
        // SAFETY: checked non-NULL; writable by the C caller's contract.
        unsafe {
            write_out(
                element_type_out,
                code as nvidia_clara_element_type,
                "element_type_out",
            )
        }
    })
}

/// Writes the size of the entry's memory in bytes; fails (NVIDIA_CLARA_RESULT_NOT_FOUND)
/// while it has none. [section found; signature inferred]
///
/// # Safety
/// `size_out` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio_entry__size(
    entry: *mut nvidia_clara_fastio_entry,
    size_out: *mut usize,
) -> result {
    guard("nvidia_clara_fastio_entry__size", || {
        non_null(size_out, "size_out")?;
        let size = with_entry(entry, |s| {
            s.entry
                .size_in_bytes()
                .ok_or_else(|| not_allocated(&s.entry))
        })?;
        // SAFETY: checked non-NULL; writable by the C caller's contract.
        unsafe { write_out(size_out, size, "size_out") }
    })
}

pub(crate) fn not_allocated(entry: &FastIoEntry) -> Error {
    Error::new(
        NVIDIA_CLARA_RESULT_NOT_FOUND,
        format!(
            "FastIO entry {:?} has no memory yet: set its dynamic dimensions {:?} with \
             nvidia_clara_fastio_entry__update_shape (its producer does)",
            entry.name(),
            entry.dynamic_shape_indices()
        ),
    )
}

/// Writes the indices of the dynamic dimensions (the same before and after updates), with
/// the count protocol of `nvidia_clara_fastio_entry__shape`. [section found; signature
/// inferred]
///
/// # Safety
/// `indices_out` is NULL or valid for `capacity` writes; `count_out` is NULL or valid for
/// one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio_entry__dynamic_indices(
    entry: *mut nvidia_clara_fastio_entry,
    indices_out: *mut usize,
    capacity: usize,
    count_out: *mut usize,
) -> result {
    guard("nvidia_clara_fastio_entry__dynamic_indices", || {
        non_null(count_out, "count_out")?;
        let indices = with_entry(entry, |s| Ok(s.entry.dynamic_shape_indices()))?;
        // SAFETY: forwarded: the same contract as this function's.
        unsafe { write_counted(&indices, indices_out, capacity, count_out) }
    })
}

fn write_flag(
    entry: *mut nvidia_clara_fastio_entry,
    out: *mut c_int,
    f: impl FnOnce(&FastIoEntry) -> bool,
) -> Result<(), Error> {
    non_null(out, "flag_out")?;
    let flag = with_entry(entry, |s| Ok(f(&s.entry)))?;
    // SAFETY: checked non-NULL; writable by the C caller's contract (see the callers).
    unsafe { write_out(out, c_int::from(flag), "flag_out") }
}

/// Writes 1 if some dimension was declared -1 or 0, else 0. [section found; signature
/// inferred]
///
/// # Safety
/// `flag_out` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio_entry__is_dynamic(
    entry: *mut nvidia_clara_fastio_entry,
    flag_out: *mut c_int,
) -> result {
    guard("nvidia_clara_fastio_entry__is_dynamic", || {
        write_flag(entry, flag_out, FastIoEntry::is_dynamic)
    })
}

/// Writes 1 if the entry has memory now, else 0. [section found; signature inferred]
///
/// # Safety
/// `flag_out` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio_entry__is_allocated(
    entry: *mut nvidia_clara_fastio_entry,
    flag_out: *mut c_int,
) -> result {
    guard("nvidia_clara_fastio_entry__is_allocated", || {
        write_flag(entry, flag_out, FastIoEntry::is_allocated)
    })
}

/// Writes 1 if the driver allocated the entry before the job's operators started (its
/// declared shape is fully positive), else 0. [fastio extension; Python's
/// `is_preallocated`]
///
/// # Safety
/// `flag_out` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio_entry__is_preallocated(
    entry: *mut nvidia_clara_fastio_entry,
    flag_out: *mut c_int,
) -> result {
    guard("nvidia_clara_fastio_entry__is_preallocated", || {
        write_flag(entry, flag_out, FastIoEntry::is_preallocated)
    })
}

/// Writes the entry's access: READ_WRITE for outputs, READ_ONLY for inputs.
/// [section found; signature inferred]
///
/// # Safety
/// `access_out` is NULL or valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio_entry__access(
    entry: *mut nvidia_clara_fastio_entry,
    access_out: *mut nvidia_clara_fastio_access,
) -> result {
    guard("nvidia_clara_fastio_entry__access", || {
        non_null(access_out, "access_out")?;
        let access = with_entry(entry, |s| Ok(s.entry.access()))?;
        let code = match access {
            AccessMode::ReadOnly => NVIDIA_CLARA_FASTIO_ACCESS_READ_ONLY,
            AccessMode::ReadWrite => NVIDIA_CLARA_FASTIO_ACCESS_READ_WRITE,
        };
        // SAFETY: checked non-NULL; writable by the C caller's contract.
        unsafe { write_out(access_out, code, "access_out") }
    })
}

/// Sets dynamic dimensions: `values[k]` (0 or more: 0 is an empty dimension, as in numpy)
/// at index `dimension_indices[k]`, for k below `count`. Indices of non-dynamic dimensions
/// are left as declared, without an error (as in Clara). Once every dynamic dimension is
/// set the entry gets memory of that shape (zero bytes for an empty one), replacing what
/// it had. Fails, changing nothing, on an input (NVIDIA_CLARA_RESULT_READ_ONLY), a
/// pre-allocated entry, an index out of range, a negative value, or while the entry is
/// mapped (NVIDIA_CLARA_RESULT_BUSY). [section found;
/// signature inferred]
///
/// # Safety
/// `dimension_indices` and `values` are NULL or valid for `count` reads each.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio_entry__update_shape(
    entry: *mut nvidia_clara_fastio_entry,
    dimension_indices: *const usize,
    values: *const i64,
    count: usize,
) -> result {
    guard("nvidia_clara_fastio_entry__update_shape", || {
        // SAFETY: NULL or readable for `count` values each, by the C caller's contract.
        let indices = unsafe { slice_arg(dimension_indices, count, "dimension_indices") }?;
        // SAFETY: as above.
        let values = unsafe { slice_arg(values, count, "values") }?;
        with_entry(entry, |s| {
            writable(s, "update the shape of")?;
            s.entry.update_shape(&indices, &values)?;
            Ok(())
        })
    })
}

/// Gives the entry memory of its current shape. Fails on an input, a pre-allocated entry,
/// an entry with a dynamic dimension still unset, or while it is mapped.
/// [section found; signature inferred]
#[unsafe(no_mangle)]
pub extern "C" fn nvidia_clara_fastio_entry__allocate(
    entry: *mut nvidia_clara_fastio_entry,
) -> result {
    guard("nvidia_clara_fastio_entry__allocate", || {
        with_entry(entry, |s| {
            writable(s, "allocate")?;
            Ok(s.entry.allocate()?)
        })
    })
}

/// Maps the entry's memory and writes its address to `*data_out`: writable for outputs;
/// for inputs read-only, enforced by the MMU (a write faults). Fails while the entry has
/// no memory, or is mapped already, and for device memory (INVALID_ARGUMENT; its pointer is
/// `nvidia_clara_fastio_entry__device_pointer`'s). The address is valid until unmap or the end of
/// execute. [section found; signature inferred]
///
/// # Safety
/// `data_out` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvidia_clara_fastio_entry__map(
    entry: *mut nvidia_clara_fastio_entry,
    data_out: *mut *mut c_void,
) -> result {
    guard("nvidia_clara_fastio_entry__map", || {
        non_null(data_out, "data_out")?;
        let data = with_entry(entry, |s| {
            if s.mapped {
                return Err(Error::new(
                    NVIDIA_CLARA_RESULT_BUSY,
                    "the entry is already mapped; unmap it first",
                ));
            }
            let allocation = s
                .entry
                .allocation()
                .ok_or_else(|| not_allocated(&s.entry))?;
            // Device memory has no host address to hand out.
            if !allocation.kind().is_host() {
                return Err(fastio_context::ContextError::NotHostMemory {
                    kind: allocation.kind(),
                }
                .into());
            }
            // An output's mapping is read-write, an input's read-only (its descriptor
            // too); C writes through the address only where the mapping allows it.
            let data = allocation.as_ptr().cast_mut();
            s.mapped = true;
            Ok(data)
        })?;
        // SAFETY: checked non-NULL; writable by the C caller's contract.
        unsafe { write_out(data_out, data.cast::<c_void>(), "data_out") }
    })
}

/// Ends the mapping made by `nvidia_clara_fastio_entry__map`; fails if the entry is not
/// mapped. [section found; signature inferred]
#[unsafe(no_mangle)]
pub extern "C" fn nvidia_clara_fastio_entry__unmap(
    entry: *mut nvidia_clara_fastio_entry,
) -> result {
    guard("nvidia_clara_fastio_entry__unmap", || {
        with_entry(entry, |s| {
            if !std::mem::replace(&mut s.mapped, false) {
                return Err(Error::invalid("the entry is not mapped"));
            }
            Ok(())
        })
    })
}
