//! Messages between kvfs processes: the supervisor that keeps the `/dev/fuse` fd, its workers,
//! and a new kvfs binary taking a live mount over from an old supervisor.
//!
//! Each message is one JSON value in one `SOCK_SEQPACKET` packet, so the kernel keeps message
//! boundaries and no framing is needed. File descriptors travel with a message as
//! `SCM_RIGHTS`; `SO_PEERCRED` tells who is on the other end. Everything here is plain blocking
//! code (poll(2) for timeouts), usable from the supervisor, which runs no async runtime.

use std::fs;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr, accept4, getsockopt, listen, recvmsg, sendmsg, socket, socketpair,
    sockopt::PeerCredentials,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest message we send or accept (JSON text); bigger sends are an error, never truncated.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;
/// Most fds one message carries.
pub(crate) const MAX_FDS: usize = 8;

/// The kernel's own limit of fds in one message (SCM_MAX_FD). Room for this many means the
/// kernel never truncates the fds a peer sends, so every fd that arrives is seen and owned
/// (and closed if the message is refused) rather than left open in our fd table.
const KERNEL_MAX_FDS: usize = 253;

/// One end of a `SOCK_SEQPACKET` unix socket (CLOEXEC).
#[derive(Debug)]
pub(crate) struct Channel {
    fd: OwnedFd,
}

/// What [`Channel::recv`] got.
#[derive(Debug)]
pub(crate) enum Received<T> {
    /// A message and the fds that came with it (CLOEXEC).
    Message(T, Vec<OwnedFd>),
    /// The peer closed its end.
    Closed,
    /// The timeout passed with no message.
    TimedOut,
}

/// Credentials of the process on the other end of a [`Channel`], as of when it connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

impl Channel {
    /// A connected pair, e.g. for a worker process to inherit one end.
    pub(crate) fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| context(e, "cannot create a socket pair".into()))?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Connects to a [`Listener`] at `path`.
    pub(crate) fn connect(path: &Path) -> io::Result<Channel> {
        let what = || format!("cannot connect to {}", path.display());
        let addr = UnixAddr::new(path).map_err(|e| context(e, what()))?;
        let fd = seqpacket_socket(SockFlag::empty()).map_err(|e| context(e, what()))?;
        loop {
            match nix::sys::socket::connect(fd.as_raw_fd(), &addr) {
                Ok(()) => return Ok(Channel { fd }),
                // A unix connect interrupted while waiting for backlog room has not connected
                // (unlike TCP), so it can simply be tried again.
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(context(e, what())),
            }
        }
    }

    /// Wraps an fd that is one end of a `SOCK_SEQPACKET` unix socket (one that came from
    /// [`Channel::into_fd`], e.g. through a message or an inherited fd). Any other kind of fd
    /// makes `send` and `recv` fail with the kernel's error.
    pub(crate) fn from_fd(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    pub(crate) fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// One message, with `fds` attached (SCM_RIGHTS). MSG_NOSIGNAL: a closed peer is an error
    /// (BrokenPipe), never SIGPIPE.
    pub(crate) fn send<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cannot send {} fds in one message: the limit is {MAX_FDS}",
                    fds.len()
                ),
            ));
        }
        let bytes = serde_json::to_vec(msg).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot encode message: {e}"),
            )
        })?;
        if bytes.len() > MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cannot send a message of {} bytes: the limit is {MAX_MESSAGE}",
                    bytes.len()
                ),
            ));
        }
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        // No fds, no control message: an empty SCM_RIGHTS would only be noise for the peer.
        let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
        let iov = [IoSlice::new(&bytes)];
        loop {
            match sendmsg::<()>(
                self.fd.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                // A seqpacket send is all or nothing, so a short count cannot happen.
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next message. `None` timeout waits forever. Received fds are CLOEXEC
    /// (MSG_CMSG_CLOEXEC). A packet that does not parse as T, or was truncated (MSG_TRUNC /
    /// MSG_CTRUNC), is an InvalidData error (fds that came with it are closed). EINTR is retried
    /// (with the remaining timeout). A peer that closed its end is `Closed`.
    ///
    /// A packet carrying more than [`MAX_FDS`] fds is InvalidData too. An empty packet with no
    /// fds cannot be told apart from end-of-stream and reads as `Closed`; we never send one.
    pub(crate) fn recv<T: DeserializeOwned>(
        &self,
        timeout: Option<Duration>,
    ) -> io::Result<Received<T>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut cmsg_buf = nix::cmsg_space!([RawFd; KERNEL_MAX_FDS]);
        loop {
            if !wait_readable(self.fd.as_fd(), deadline)? {
                return Ok(Received::TimedOut);
            }
            let mut iov = [IoSliceMut::new(&mut buf)];
            // MSG_DONTWAIT: poll said readable, but another thread may have taken the packet.
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
            let msg = match recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, Some(&mut cmsg_buf), flags)
            {
                Ok(msg) => msg,
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                // The peer closed with our earlier messages still unread.
                Err(Errno::ECONNRESET) => return Ok(Received::Closed),
                Err(e) => return Err(e.into()),
            };
            let mut fds = Vec::new();
            // cmsgs() refuses only when MSG_CTRUNC is set, which our buffer (sized for the
            // kernel's per-message maximum) rules out; the flag check below still catches it.
            if let Ok(cmsgs) = msg.cmsgs() {
                for cmsg in cmsgs {
                    if let ControlMessageOwned::ScmRights(raw) = cmsg {
                        for fd in raw {
                            // SAFETY: the kernel has just installed this fd in our table for
                            // this message alone; nothing else refers to it.
                            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
            }
            let (len, truncated) = (
                msg.bytes,
                msg.flags
                    .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC),
            );
            if truncated {
                return Err(invalid_data(format!(
                    "received a truncated message (over {MAX_MESSAGE} bytes or too many fds)"
                )));
            }
            if len == 0 && fds.is_empty() {
                return Ok(Received::Closed);
            }
            if fds.len() > MAX_FDS {
                return Err(invalid_data(format!(
                    "received a message with {} fds: the limit is {MAX_FDS}",
                    fds.len()
                )));
            }
            return match serde_json::from_slice(&buf[..len]) {
                Ok(value) => Ok(Received::Message(value, fds)),
                Err(e) => Err(invalid_data(format!("received a malformed message: {e}"))),
            };
        }
    }

    /// SO_PEERCRED of the other end.
    pub(crate) fn peer(&self) -> io::Result<Peer> {
        let cred = getsockopt(&self.fd, PeerCredentials)
            .map_err(|e| context(e, "cannot read the peer's credentials".into()))?;
        Ok(Peer {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
        })
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A listening `SOCK_SEQPACKET` socket at a path.
#[derive(Debug)]
pub(crate) struct Listener {
    fd: OwnedFd,
    path: PathBuf,
    /// The socket file's (dev, ino), so Drop removes only the file this listener bound.
    file: (u64, u64),
}

impl Listener {
    /// Bind at `path`. The parent directory is created (mode 0700) when missing; the socket file
    /// is made 0600. A socket file nobody listens on any more (connect gives ECONNREFUSED) is
    /// replaced; one that answers is an AddrInUse error saying so.
    ///
    /// Finding out whether a socket answers means connecting to it: a live listener there sees
    /// a connection that closes at once.
    pub(crate) fn bind(path: &Path) -> io::Result<Listener> {
        let what = || format!("cannot listen on {}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| context(e, format!("cannot create {}", dir.display())))?;
        }
        // Absolute, so Drop still finds the file after a chdir (daemons chdir to /).
        let absolute = std::path::absolute(path).map_err(|e| context(e, what()))?;
        let addr = UnixAddr::new(path).map_err(|e| context(e, what()))?;
        // Non-blocking, so that accept after poll cannot hang when another process sharing
        // this socket took the connection first.
        let fd = seqpacket_socket(SockFlag::SOCK_NONBLOCK).map_err(|e| context(e, what()))?;
        match nix::sys::socket::bind(fd.as_raw_fd(), &addr) {
            Ok(()) => {}
            Err(Errno::EADDRINUSE) => {
                remove_stale(path, &addr)?;
                nix::sys::socket::bind(fd.as_raw_fd(), &addr).map_err(|e| context(e, what()))?;
            }
            Err(e) => return Err(context(e, what())),
        }
        let meta = fs::symlink_metadata(path).map_err(|e| context(e, what()))?;
        // From here on, Drop removes the file if anything below fails.
        let listener = Listener {
            fd,
            path: absolute,
            file: (meta.dev(), meta.ino()),
        };
        // Before listen(): until then every connect is refused, so nobody gets in while the
        // file still has bind's umask-derived mode.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| context(e, what()))?;
        listen(&listener.fd, Backlog::MAXCONN).map_err(|e| context(e, what()))?;
        Ok(listener)
    }

    /// Accept one connection; `None` when the timeout passes first. CLOEXEC.
    pub(crate) fn accept(&self, timeout: Option<Duration>) -> io::Result<Option<Channel>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            if !wait_readable(self.fd.as_fd(), deadline)? {
                return Ok(None);
            }
            // Linux does not pass the listener's O_NONBLOCK on, so the new socket blocks.
            match accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(raw) => {
                    // SAFETY: accept4 has just returned this fd; nothing else owns it.
                    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                    return Ok(Some(Channel { fd }));
                }
                // Someone else took it, a signal came, or the client gave up: wait again.
                Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNABORTED) => continue,
                Err(e) => {
                    let what = format!("cannot accept on {}", self.path.display());
                    return Err(context(e, what));
                }
            }
        }
    }

    /// Where the socket is, made absolute.
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Removes the socket file, but only if the path still names the socket this Listener bound (a
/// successor may have bound a new one there).
impl Drop for Listener {
    fn drop(&mut self) {
        // This runs before the fd closes. While it is open, the inode cannot be freed and its
        // number reused, so a matching (dev, ino) really is our socket; and a successor probing
        // the path still finds us listening, so it does not replace the file under us.
        if let Ok(meta) = fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.file
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Makes way for a new bind at `path` if the socket there is dead; AddrInUse if it is live or
/// the path is not a socket.
///
/// Not a lock: two processes binding the same path in the same instant over a dead socket can
/// both succeed, the first losing its file. Callers that may race must serialise themselves.
fn remove_stale(path: &Path, addr: &UnixAddr) -> io::Result<()> {
    let in_use = |why: &str| {
        io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("cannot listen on {}: {why}", path.display()),
        )
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(context(e, format!("cannot inspect {}", path.display()))),
    };
    if !meta.file_type().is_socket() {
        return Err(in_use("the path exists and is not a socket"));
    }
    // Non-blocking: a live listener with a full backlog answers EAGAIN instead of stalling us.
    let probe = seqpacket_socket(SockFlag::SOCK_NONBLOCK)
        .map_err(|e| context(e, format!("cannot probe {}", path.display())))?;
    match nix::sys::socket::connect(probe.as_raw_fd(), addr) {
        Ok(()) | Err(Errno::EAGAIN) => Err(in_use("another process is listening there")),
        Err(Errno::EPROTOTYPE) => Err(in_use("another kind of socket is listening there")),
        Err(Errno::ENOENT) => Ok(()),
        Err(Errno::ECONNREFUSED) => {
            // Only the file we judged dead: it may have been replaced since we looked.
            match fs::symlink_metadata(path) {
                Ok(now) if (now.dev(), now.ino()) == (meta.dev(), meta.ino()) => {
                    match fs::remove_file(path) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(context(
                            e,
                            format!("cannot remove the stale socket {}", path.display()),
                        )),
                        _ => Ok(()),
                    }
                }
                _ => Ok(()),
            }
        }
        Err(e) => Err(context(e, format!("cannot probe {}", path.display()))),
    }
}

fn seqpacket_socket(flags: SockFlag) -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | flags,
        None,
    )
}

/// Waits until `fd` is readable (true) or `deadline` passes (false); `None` waits forever.
fn wait_readable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                // Rounded up: rounding down would spin on zero-length polls near the deadline.
                let ms = i32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX);
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(false),
            Ok(0) | Err(Errno::EINTR) => continue,
            // POLLHUP and POLLERR count too: the read that follows reports them.
            Ok(_) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
    }
}

/// `e` with what we were doing in front, keeping its kind so callers can still match on it.
fn context(e: impl Into<io::Error>, what: String) -> io::Error {
    let e = e.into();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn invalid_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    use serde::Deserialize;
    use std::io::{Read, Write};
    use std::mem::ManuallyDrop;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Hello {
        name: String,
        n: u32,
        tags: Vec<String>,
    }

    fn hello() -> Hello {
        Hello {
            name: "worker".into(),
            n: 7,
            tags: vec!["a".into(), "b".into()],
        }
    }

    fn expect_message<T>(r: io::Result<Received<T>>) -> (T, Vec<OwnedFd>) {
        match r.expect("recv failed") {
            Received::Message(m, fds) => (m, fds),
            Received::Closed => panic!("expected a message, got Closed"),
            Received::TimedOut => panic!("expected a message, got TimedOut"),
        }
    }

    fn send_raw(channel: &Channel, bytes: &[u8], fds: &[RawFd]) {
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(
            channel.as_fd().as_raw_fd(),
            &[IoSlice::new(bytes)],
            cmsgs,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
    }

    /// Frees the listener without its Drop, as when the process is killed: the socket closes,
    /// the file stays.
    fn kill(listener: Listener) {
        let listener = ManuallyDrop::new(listener);
        // SAFETY: each field is read out exactly once and `listener` is never used or dropped
        // again, so nothing is freed twice.
        let (fd, path) = unsafe { (std::ptr::read(&listener.fd), std::ptr::read(&listener.path)) };
        drop(fd);
        drop(path);
    }

    /// CLOEXEC, so a child spawned by another test cannot hold a write end and delay EOF.
    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn pair_round_trips_a_struct() {
        let (a, b) = Channel::pair().unwrap();
        a.send(&hello(), &[]).unwrap();
        let (got, fds) = expect_message::<Hello>(b.recv(Some(Duration::from_secs(5))));
        assert_eq!(got, hello());
        assert!(fds.is_empty());
        // And back the other way, waiting forever.
        b.send(&got, &[]).unwrap();
        assert_eq!(expect_message::<Hello>(a.recv(None)).0, hello());
    }

    #[test]
    fn passed_fd_works_and_is_cloexec() {
        // fd flags belong to a descriptor, not the open file: the received fd is a new
        // descriptor, CLOEXEC only if recv asked for it.
        let (read_end, write_end) = pipe();
        let (a, b) = Channel::pair().unwrap();
        a.send(&"here", &[write_end.as_fd()]).unwrap();
        drop(write_end);
        let (text, mut fds) = expect_message::<String>(b.recv(Some(Duration::from_secs(5))));
        assert_eq!(text, "here");
        assert_eq!(fds.len(), 1);
        let received = fds.pop().unwrap();
        let flags = FdFlag::from_bits_truncate(fcntl(&received, FcntlArg::F_GETFD).unwrap());
        assert!(flags.contains(FdFlag::FD_CLOEXEC));
        let mut writer = fs::File::from(received);
        writer.write_all(b"through the socket").unwrap();
        drop(writer);
        let mut out = String::new();
        fs::File::from(read_end).read_to_string(&mut out).unwrap();
        assert_eq!(out, "through the socket");
    }

    #[test]
    fn too_many_fds_are_refused() {
        let (a, _b) = Channel::pair().unwrap();
        let (_read_end, write_end) = pipe();
        let fds = vec![write_end.as_fd(); MAX_FDS + 1];
        let err = a.send(&hello(), &fds).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("fds"), "{err}");
        // The limit itself is fine.
        a.send(&hello(), &fds[..MAX_FDS]).unwrap();
    }

    #[test]
    fn oversized_message_is_refused() {
        let (a, _b) = Channel::pair().unwrap();
        let err = a.send(&"x".repeat(MAX_MESSAGE), &[]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("limit"), "{err}");
        // Exactly MAX_MESSAGE bytes of JSON (two are the quotes) goes through whole.
        let (c, d) = Channel::pair().unwrap();
        let biggest = "y".repeat(MAX_MESSAGE - 2);
        c.send(&biggest, &[]).unwrap();
        assert_eq!(expect_message::<String>(d.recv(None)).0, biggest);
    }

    #[test]
    fn received_fds_over_the_limit_are_invalid_data() {
        let (a, b) = Channel::pair().unwrap();
        let (_read_end, write_end) = pipe();
        send_raw(&a, b"\"hi\"", &[write_end.as_raw_fd(); MAX_FDS + 1]);
        let err = b.recv::<String>(None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn recv_times_out() {
        let (_a, b) = Channel::pair().unwrap();
        let start = Instant::now();
        let got = b.recv::<Hello>(Some(Duration::from_millis(50))).unwrap();
        assert!(matches!(got, Received::TimedOut), "{got:?}");
        assert!(start.elapsed() >= Duration::from_millis(50));
        let got = b.recv::<Hello>(Some(Duration::ZERO)).unwrap();
        assert!(matches!(got, Received::TimedOut), "{got:?}");
    }

    #[test]
    fn closed_peer_reads_as_closed_and_send_is_broken_pipe() {
        let (a, b) = Channel::pair().unwrap();
        a.send(&hello(), &[]).unwrap();
        drop(a);
        // What was sent before the close is still delivered first.
        assert_eq!(expect_message::<Hello>(b.recv(None)).0, hello());
        let got = b.recv::<Hello>(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(got, Received::Closed), "{got:?}");
        let err = b.send(&hello(), &[]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn garbage_is_invalid_data_and_its_fds_are_closed() {
        let (a, b) = Channel::pair().unwrap();
        nix::sys::socket::send(a.as_fd().as_raw_fd(), b"\xff not json", MsgFlags::empty()).unwrap();
        let err = b.recv::<Hello>(None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        // Valid JSON of the wrong shape, with an fd: the received copy must be closed, so once
        // we drop our own write end the pipe reads end-of-file.
        let (read_end, write_end) = pipe();
        send_raw(&a, b"[1, 2]", &[write_end.as_raw_fd()]);
        drop(write_end);
        let err = b.recv::<Hello>(None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut rest = Vec::new();
        fs::File::from(read_end).read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());

        // The channel still works after bad input.
        a.send(&hello(), &[]).unwrap();
        assert_eq!(expect_message::<Hello>(b.recv(None)).0, hello());
    }

    #[test]
    fn truncated_packet_is_invalid_data() {
        let (a, b) = Channel::pair().unwrap();
        send_raw(&a, &vec![b' '; MAX_MESSAGE + 1], &[]);
        let err = b.recv::<Hello>(None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn peer_is_ourselves() {
        let (a, b) = Channel::pair().unwrap();
        let peer = a.peer().unwrap();
        assert_eq!(peer.pid, std::process::id() as i32);
        assert_eq!(peer.uid, nix::unistd::getuid().as_raw());
        assert_eq!(peer.gid, nix::unistd::getgid().as_raw());
        assert_eq!(b.peer().unwrap(), peer);
    }

    #[test]
    fn channel_survives_into_fd_and_from_fd() {
        let (a, b) = Channel::pair().unwrap();
        let a = Channel::from_fd(a.into_fd());
        a.send(&hello(), &[]).unwrap();
        assert_eq!(expect_message::<Hello>(b.recv(None)).0, hello());
    }

    #[test]
    fn bind_makes_private_dir_and_socket_and_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/kvfs/sock");
        let listener = Listener::bind(&path).unwrap();
        assert_eq!(listener.path(), path);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&dir.path().join("run")), 0o700);
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
        assert_eq!(mode(&path), 0o600);

        let client = Channel::connect(&path).unwrap();
        let server = listener
            .accept(Some(Duration::from_secs(5)))
            .unwrap()
            .expect("no connection");
        let flags = FdFlag::from_bits_truncate(fcntl(&server, FcntlArg::F_GETFD).unwrap());
        assert!(flags.contains(FdFlag::FD_CLOEXEC));
        client.send(&hello(), &[]).unwrap();
        assert_eq!(expect_message::<Hello>(server.recv(None)).0, hello());
        server.send(&"welcome", &[]).unwrap();
        assert_eq!(expect_message::<String>(client.recv(None)).0, "welcome");
        assert_eq!(server.peer().unwrap().pid, std::process::id() as i32);
    }

    #[test]
    fn accept_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let listener = Listener::bind(&dir.path().join("sock")).unwrap();
        assert!(
            listener
                .accept(Some(Duration::from_millis(20)))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn connect_to_nothing_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody");
        let err = Channel::connect(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("nobody"), "{err}");
    }

    #[test]
    fn bind_over_a_live_listener_is_addr_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let first = Listener::bind(&path).unwrap();
        let err = Listener::bind(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("listening"), "{err}");
        // The failed attempt left the first one alone.
        let _client = Channel::connect(&path).unwrap();
        assert!(
            first
                .accept(Some(Duration::from_secs(5)))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn bind_refuses_to_replace_a_file_that_is_not_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        fs::write(&path, "keep me").unwrap();
        let err = Listener::bind(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(fs::read_to_string(&path).unwrap(), "keep me");
    }

    #[test]
    fn bind_after_drop_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        drop(Listener::bind(&path).unwrap());
        assert!(!path.exists());
        let _again = Listener::bind(&path).unwrap();
    }

    #[test]
    fn bind_over_a_stale_socket_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        kill(Listener::bind(&path).unwrap());
        assert!(fs::symlink_metadata(&path).is_ok(), "the stale file stays");
        let again = Listener::bind(&path).unwrap();
        let _client = Channel::connect(&path).unwrap();
        assert!(
            again
                .accept(Some(Duration::from_secs(5)))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn drop_leaves_a_rebound_socket_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let first = Listener::bind(&path).unwrap();
        fs::remove_file(&path).unwrap();
        let second = Listener::bind(&path).unwrap();
        drop(first);
        assert!(fs::symlink_metadata(&path).is_ok());
        let _client = Channel::connect(&path).unwrap();
        assert!(
            second
                .accept(Some(Duration::from_secs(5)))
                .unwrap()
                .is_some()
        );
        drop(second);
        assert!(!path.exists());
    }
}
