//! The crate's only `unsafe` code: typed views over mapped memory, and adopting an
//! inherited descriptor.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

use fastio_meta::Element;
use ndarray::{ArrayViewD, ArrayViewMutD, IxDyn};

/// A view of `dims` elements of `T` at `ptr`.
///
/// # Safety
/// `ptr` is aligned for `T` and valid for reads of the product of `dims` elements for
/// `'a`, and nobody writes there during `'a`.
pub(crate) unsafe fn view<'a, T: Element>(ptr: *const T, dims: &[usize]) -> ArrayViewD<'a, T> {
    // SAFETY: forwarded from the caller; the shape is C-contiguous over exactly that memory.
    unsafe { ArrayViewD::from_shape_ptr(IxDyn(dims), ptr) }
}

/// A writable view of `dims` elements of `T` at `ptr`.
///
/// # Safety
/// As for [`view`], for writes too, and nobody else reads or writes during `'a`.
pub(crate) unsafe fn view_mut<'a, T: Element>(ptr: *mut T, dims: &[usize]) -> ArrayViewMutD<'a, T> {
    // SAFETY: forwarded from the caller.
    unsafe { ArrayViewMutD::from_shape_ptr(IxDyn(dims), ptr) }
}

/// Takes ownership of descriptor `fd`, inherited from the parent process for this
/// purpose, after checking that it is open; marks it close-on-exec so that it goes no
/// further down the process tree.
pub(crate) fn adopt_inherited_fd(fd: i32) -> Result<OwnedFd, rustix::io::Errno> {
    if fd < 0 {
        return Err(rustix::io::Errno::BADF);
    }
    // SAFETY: the borrow lasts only for these calls; fcntl on a number that names no open
    // descriptor fails with EBADF and touches nothing.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(borrowed)?;
    rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC)?;
    // SAFETY: the descriptor is open (checked above), and the parent handed it down for
    // the context connection alone: nothing else in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
