//! The crate's only `unsafe` code: preparing a child process between fork and exec.

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

/// Has the child start in a process group of its own, in `/`, with none of this process's
/// descriptors but the standard streams: everything from 3 up is made close-on-exec. So a
/// process meant to outlive this one holds nothing this one was given (a lock `flock(1)`
/// holds for the command, the write end of a pipe whose reader waits for its end, a
/// working directory on a file system someone wants to unmount).
pub fn detach(command: &mut Command) {
    command.process_group(0).current_dir("/");
    // SAFETY: the closure runs in the forked child before exec and makes only
    // async-signal-safe system calls (close_range, getrlimit, fcntl), allocating nothing.
    // Marking descriptors close-on-exec (never closing them) keeps the channel on which
    // the standard library reports a failed exec until the exec itself.
    unsafe {
        command.pre_exec(|| {
            let all = libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if all != 0 {
                // Before Linux 5.11: one descriptor at a time, up to the limit.
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                    limit.rlim_cur.min(1 << 16) as libc::c_int
                } else {
                    1024
                };
                for fd in 3..top {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags >= 0 {
                        libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                    }
                }
            }
            Ok(())
        });
    }
}
