//! The crate's only `unsafe` code: preparing an operator process between fork and exec.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes `socket` survive exec in the child (it is close-on-exec here, so no other child
/// inherits it), and has the kernel kill the child when the driver dies, even by SIGKILL.
pub(crate) fn hand_down(command: &mut Command, socket: &OwnedFd) {
    let raw = socket.as_raw_fd();
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec and makes only
    // async-signal-safe system calls (fcntl, prctl, getppid), allocating nothing; `raw`
    // stays open in the parent until after spawn returns, so it is open in the child.
    unsafe {
        command.pre_exec(move || {
            let fd = BorrowedFd::borrow_raw(raw);
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The driver may have died before the line above took effect.
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::Error::other("the driver is gone"));
            }
            Ok(())
        });
    }
}
