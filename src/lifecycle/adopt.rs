//! Serving a FUSE connection that already exists, with fuser.
//!
//! fuser 0.18 starts every session by reading the INIT request and answering it; a connection
//! that a predecessor initialised will never send INIT again. So the worker hands fuser the INIT
//! the kernel sent at mount time (the supervisor kept its bytes) through a socket pair, lets fuser
//! answer it into the socket, and then puts the `/dev/fuse` file under the descriptor number
//! fuser reads from (`dup3` replaces a descriptor atomically). From there on fuser reads and
//! answers the kernel as if it had done the handshake itself, with the same negotiated
//! parameters, because it computed them from the same INIT. About forty lines instead of a FUSE
//! protocol implementation of our own (doc/DESIGN-restarts.md weighs the alternatives).
//!
//! The first worker of a mount also writes fuser's answer to the kernel: that completes the
//! real handshake.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, recv, send, socketpair};

use crate::fusedev;

/// A fuser session serving `connection` without a new INIT, reading requests from `reader` (a
/// `/dev/fuse` file of that connection: see the worker for which). `init` is the INIT request
/// the kernel sent at mount time; `answered` says whether a worker already replied to it.
/// `request_timeout` (seconds) goes into the reply when this one answers: see
/// [`fusedev::set_request_timeout`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn session<FS: fuser::Filesystem>(
    filesystem: FS,
    connection: BorrowedFd<'_>,
    reader: OwnedFd,
    init: &[u8],
    answered: bool,
    request_timeout: Option<u16>,
    acl: fuser::SessionACL,
    config: fuser::Config,
) -> io::Result<fuser::Session<FS>> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    send(
        theirs.as_raw_fd(),
        init,
        nix::sys::socket::MsgFlags::empty(),
    )?;
    // fuser reads the INIT from `ours` and writes its answer there.
    let session = fuser::Session::from_fd(filesystem, ours, acl, config)?;
    let mut reply = vec![0u8; 4096];
    let n = recv(
        theirs.as_raw_fd(),
        &mut reply,
        nix::sys::socket::MsgFlags::empty(),
    )?;
    reply.truncate(n);
    if !answered {
        if let Some(seconds) = request_timeout {
            let kernel = fusedev::InitRequest::parse(init)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            match fusedev::set_request_timeout(&mut reply, &kernel, seconds) {
                Ok(()) => tracing::info!(
                    seconds,
                    "the kernel fails requests that wait longer than the hang timeout"
                ),
                Err(why) => tracing::warn!(
                    "no hang timeout: {why}; if kvfs stops, readers wait until it is killed"
                ),
            }
        }
        match fusedev::write_message(connection, &reply) {
            Ok(()) => {}
            // A predecessor answered it and died before saying so.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    let target = session.as_fd().as_raw_fd();
    // SAFETY: `target` is the descriptor fuser's channel owns (the socket end it read INIT
    // from); dup3 closes that socket and makes the same number name the /dev/fuse file, which
    // fuser then owns and closes. `reader` is closed when it goes out of scope, the duplicate
    // stays.
    if unsafe { libc::dup3(reader.as_raw_fd(), target, libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(session)
}
