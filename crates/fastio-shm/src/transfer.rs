//! Passing messages with descriptors over Unix `SOCK_SEQPACKET` sockets (`SCM_RIGHTS`).

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use crate::TransferError;

/// Most descriptors one message may carry.
pub const MAX_FDS_PER_MESSAGE: usize = 4;

/// Largest message body, in bytes. Messages are small control records; segment data
/// never travels through the socket.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// A connected pair of `SOCK_SEQPACKET` sockets (close-on-exec): message boundaries are
/// kept and a peer's death is seen as end of file.
pub fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), TransferError> {
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(TransferError::Os)
}

/// Sends one message with up to [`MAX_FDS_PER_MESSAGE`] descriptors. Never raises SIGPIPE:
/// a vanished peer is [`TransferError::Disconnected`].
pub fn send_message(
    socket: BorrowedFd<'_>,
    body: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), TransferError> {
    if body.len() > MAX_MESSAGE_LEN || fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(TransferError::TooLarge {
            len: body.len(),
            fds: fds.len(),
        });
    }
    let mut space =
        [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(TransferError::TooLarge {
            len: body.len(),
            fds: fds.len(),
        });
    }
    loop {
        match rustix::net::sendmsg(
            socket,
            &[IoSlice::new(body)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(Errno::PIPE | Errno::CONNRESET | Errno::NOTCONN) => {
                return Err(TransferError::Disconnected);
            }
            Err(e) => return Err(TransferError::Os(e)),
        }
    }
}

/// One received message: its body and the descriptors it carried (owned, close-on-exec).
#[derive(Debug)]
pub struct Received {
    /// Message body.
    pub body: Vec<u8>,
    /// Descriptors, in the order they were sent.
    pub fds: Vec<OwnedFd>,
}

/// Receives one message. End of file (the peer closed or died) is
/// [`TransferError::Disconnected`]; a body or descriptor list that was cut short is
/// [`TransferError::Truncated`] (its descriptors are closed).
pub fn recv_message(socket: BorrowedFd<'_>) -> Result<Received, TransferError> {
    let mut body = vec![0u8; MAX_MESSAGE_LEN];
    let mut space =
        [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(&mut body)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(msg) => break msg,
            Err(Errno::INTR) => continue,
            Err(Errno::CONNRESET) => return Err(TransferError::Disconnected),
            Err(e) => return Err(TransferError::Os(e)),
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if msg
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
    {
        return Err(TransferError::Truncated);
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Err(TransferError::Disconnected);
    }
    body.truncate(msg.bytes);
    Ok(Received { body, fds })
}

/// Borrows the descriptors of a list of owned ones, for [`send_message`].
pub fn borrow_all<T: AsFd>(items: &[T]) -> Vec<BorrowedFd<'_>> {
    items.iter().map(AsFd::as_fd).collect()
}
