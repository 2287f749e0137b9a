//! Reading arguments from C and writing results back: every raw-pointer access of the
//! crate goes through these helpers. Each checks for NULL first; the rest of the contract
//! (the pointer, when not NULL, is valid for the access) is the C caller's, as documented
//! in the header.

use std::ffi::{CStr, c_char};

use crate::error::Error;

/// Fails with a message naming `parameter` when `p` is NULL. Call it on every output
/// pointer before doing any work, so that a NULL output leaves nothing half done.
pub(crate) fn non_null<T>(p: *const T, parameter: &str) -> Result<(), Error> {
    if p.is_null() {
        Err(Error::null(parameter))
    } else {
        Ok(())
    }
}

/// The UTF-8 string at `p`.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays unchanged until the
/// returned borrow ends.
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, parameter: &str) -> Result<&'a str, Error> {
    non_null(p, parameter)?;
    // SAFETY: not NULL (checked above); terminated and stable by the caller's contract.
    let text = unsafe { CStr::from_ptr(p) };
    text.to_str()
        .map_err(|_| Error::invalid(format!("`{parameter}` is not valid UTF-8")))
}

/// Writes `value` to `*p`.
///
/// # Safety
/// `p` is NULL or valid for a write of one `T`.
pub(crate) unsafe fn write_out<T>(p: *mut T, value: T, parameter: &str) -> Result<(), Error> {
    non_null(p, parameter)?;
    // SAFETY: not NULL (checked above) and writable by the caller's contract;
    // `write_unaligned` asks nothing of the alignment.
    unsafe { p.write_unaligned(value) };
    Ok(())
}

/// The `len` values at `p` (copied out, so no borrow of C memory outlives the call).
///
/// # Safety
/// `p` is NULL or valid for reads of `len` values of `T`.
pub(crate) unsafe fn slice_arg<T: Copy>(
    p: *const T,
    len: usize,
    parameter: &str,
) -> Result<Vec<T>, Error> {
    if len == 0 {
        return Ok(Vec::new());
    }
    non_null(p, parameter)?;
    // SAFETY: not NULL (checked above) and readable for `len` values by the caller's
    // contract; each value is read unaligned, so alignment is not required.
    Ok((0..len)
        .map(|i| unsafe { p.add(i).read_unaligned() })
        .collect())
}

/// Copies `values` to `p`, which holds `capacity` values.
///
/// # Safety
/// `p` is NULL or valid for writes of `capacity` values of `T`.
pub(crate) unsafe fn write_slice<T: Copy>(
    p: *mut T,
    capacity: usize,
    values: &[T],
    parameter: &str,
) -> Result<(), Error> {
    if values.is_empty() {
        return Ok(());
    }
    non_null(p, parameter)?;
    if capacity < values.len() {
        return Err(Error::new(
            crate::types::NVIDIA_CLARA_RESULT_BUFFER_TOO_SMALL,
            format!(
                "`{parameter}` holds {capacity} values, {} are needed",
                values.len()
            ),
        ));
    }
    for (i, v) in values.iter().enumerate() {
        // SAFETY: not NULL, and `i < values.len() <= capacity` writable values by the
        // caller's contract; unaligned writes ask nothing of the alignment.
        unsafe { p.add(i).write_unaligned(*v) };
    }
    Ok(())
}

/// Clara's buffer protocol for strings: the length with the trailing NUL always goes to
/// `*len_out`; the call fails with NVIDIA_CLARA_RESULT_BUFFER_TOO_SMALL, writing nothing
/// to `buffer`, when `buffer` is NULL or holds fewer bytes than that.
///
/// # Safety
/// `buffer` is NULL or valid for writes of `buffer_size` bytes; `len_out` is NULL or
/// valid for one write.
pub(crate) unsafe fn write_string(
    text: &str,
    buffer: *mut c_char,
    buffer_size: std::ffi::c_int,
    len_out: *mut usize,
) -> Result<(), Error> {
    non_null(len_out, "len_out")?;
    if text.contains('\0') {
        return Err(Error::invalid("the string contains a NUL byte"));
    }
    let needed = text.len() + 1;
    // SAFETY: not NULL (checked above) and writable by the caller's contract.
    unsafe { write_out(len_out, needed, "len_out") }?;
    let capacity = usize::try_from(buffer_size).unwrap_or(0);
    if buffer.is_null() || capacity < needed {
        return Err(Error::new(
            crate::types::NVIDIA_CLARA_RESULT_BUFFER_TOO_SMALL,
            format!(
                "the buffer holds {capacity} bytes; {needed} are needed (written to `len_out`)"
            ),
        ));
    }
    // SAFETY: `buffer` is not NULL and holds `capacity >= needed` writable bytes by the
    // caller's contract; the source is a distinct Rust string.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buffer.cast::<u8>(), text.len());
        buffer.add(text.len()).write(0);
    }
    Ok(())
}
