//! The crate's only `unsafe` code: typed views over mapped memory, adopting an
//! inherited descriptor, and reading a peer's credentials.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

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

/// Takes descriptor `fd`, inherited from the parent process as a context connection, after
/// checking that it is an open `SOCK_SEQPACKET` socket. Nothing about it changes yet: if
/// the connection then fails, [`give_back`] returns it untouched, still open.
pub(crate) fn borrow_inherited_socket(fd: i32) -> Result<OwnedFd, String> {
    if fd < 0 {
        return Err(format!("{fd} is not a descriptor number"));
    }
    // SAFETY: the borrow lasts only for these calls; fcntl and getsockopt on a number that
    // names no open descriptor fail with EBADF and touch nothing.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(borrowed).map_err(|e| format!("descriptor {fd}: {e}"))?;
    match rustix::net::sockopt::socket_type(borrowed) {
        Ok(rustix::net::SocketType::SEQPACKET) => {}
        Ok(_) | Err(rustix::io::Errno::NOTSOCK) => {
            return Err(format!(
                "descriptor {fd} is not a context connection (a SOCK_SEQPACKET socket)"
            ));
        }
        Err(e) => return Err(format!("descriptor {fd}: {e}")),
    }
    // SAFETY: the descriptor is open (checked above) and the parent handed it down for the
    // context connection; until `give_back` or `keep_from_children` the caller only talks
    // over it, and `give_back` releases it without closing it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Lets go of a descriptor taken by [`borrow_inherited_socket`] without closing it.
pub(crate) fn give_back(fd: OwnedFd) {
    let _ = fd.into_raw_fd();
}

/// Marks the adopted descriptor close-on-exec, so that it goes no further down the
/// process tree.
pub(crate) fn keep_from_children(fd: i32) -> Result<(), rustix::io::Errno> {
    // SAFETY: the descriptor is owned by an adopted connection that lives as long as the
    // process; the borrow lasts for this call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC)
}

/// The peer of a connected Unix socket: its pid as this process's PID namespace sees it
/// (0 when it cannot see it: a sibling namespace, such as another container of a Pod that
/// does not share its process namespace) and its uid.
///
/// Read with libc rather than rustix, whose `UCred` holds the pid as non-zero: there a 0
/// takes the niche that marks an error, so such a peer would read as "credentials
/// unreadable" and be refused.
pub(crate) fn peer_credentials(socket: BorrowedFd<'_>) -> std::io::Result<(i32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` is `cred`'s size, the most the
    // kernel writes; the descriptor is borrowed for the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid))
}
