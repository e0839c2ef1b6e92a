//! The low-level steps of a FUSE connection that fuser cannot do for us.
//!
//! kvfs keeps a connection alive across worker restarts: a supervisor mounts, reads the kernel's
//! INIT itself and holds the `/dev/fuse` fd; workers serve it and may die or be replaced. That
//! needs mounting without fuser (its mount code is private and its session always waits for
//! INIT), cloning the device fd, asking the kernel to resend requests a dead worker had read
//! (`FUSE_NOTIFY_RESEND`, Linux 6.9+), and finding and aborting a connection nobody serves.
//!
//! Everything here is synchronous and free of kvfs policy; the layouts follow
//! `include/uapi/linux/fuse.h` in host byte order.

use std::ffi::{CString, OsString};
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::socket::{self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType};
use nix::sys::stat::Mode;
use nix::unistd::{geteuid, getgid, getuid};

/// `--hang-timeout` unless given: long enough for the slowest answer kvfs gives (a listing of a
/// large vault over a slow link), short enough that readers of a stopped kvfs do not hang for ever.
pub(crate) const DEFAULT_HANG_TIMEOUT: Duration = Duration::from_secs(120);

const FUSE_DEV: &str = "/dev/fuse";
const FUSE_CONNECTIONS: &str = "/sys/fs/fuse/connections";
const FUSERMOUNT: &str = "fusermount3";

const IN_HEADER_LEN: usize = 40;
const OUT_HEADER_LEN: usize = 16;
/// `fuse_init_in` up to and including `flags`: all that kernels before 7.36 send.
const INIT_IN_SHORT_LEN: usize = 16;
/// `fuse_init_in` up to and including `flags2`.
const INIT_IN_EXT_LEN: usize = 20;

const FUSE_INIT: u32 = 26;
const FUSE_INIT_EXT: u64 = 1 << 30;
const FUSE_HAS_RESEND: u64 = 1 << 39;
/// The daemon sets a time limit on every request (protocol 7.43, Linux 6.14+).
const FUSE_REQUEST_TIMEOUT: u64 = 1 << 42;
/// `fuse_init_out` through `unused[11]`: the reply fuser writes for protocol 7.23 and later.
const INIT_OUT_LEN: usize = 64;
/// Offsets in `fuse_init_out` of `flags`, `flags2` and `request_timeout`.
const INIT_OUT_FLAGS: usize = 12;
const INIT_OUT_FLAGS2: usize = 32;
const INIT_OUT_REQUEST_TIMEOUT: usize = 40;
/// The first protocol minor version with `FUSE_NOTIFY_RESEND`.
const RESEND_MINOR: u32 = 40;
const FUSE_NOTIFY_RESEND: i32 = 7;

/// Room for the largest request the kernel may hand us (a 1 MiB write plus headers); a buffer
/// smaller than the connection's maximum makes read(2) fail with EINVAL.
const READ_BUFFER_LEN: usize = (1 << 20) + 4096;

/// What to mount.
pub(crate) struct MountSpec<'a> {
    pub mountpoint: &'a Path,
    /// Mount source, e.g. "kvfs:myvault.vault.azure.net".
    pub fsname: &'a str,
    /// "kvfs" gives fstype "fuse.kvfs".
    pub subtype: &'a str,
    pub allow_other: bool,
    pub default_permissions: bool,
    // Always: read-only, nosuid, nodev, noexec.
}

/// Mounts and returns the `/dev/fuse` fd of the new connection (O_CLOEXEC): mount(2) when we are
/// root (euid 0), otherwise through the setuid `fusermount3`. The mountpoint must be a directory.
/// The error is one line naming the mountpoint and the cause.
pub(crate) fn mount(spec: &MountSpec) -> Result<OwnedFd, String> {
    let result = if geteuid().is_root() {
        mount_directly(spec)
    } else {
        mount_with_fusermount(spec)
    };
    result.map_err(|cause| format!("cannot mount {}: {cause}", spec.mountpoint.display()))
}

fn mount_directly(spec: &MountSpec) -> Result<OwnedFd, String> {
    let dev = open_dev().map_err(|e| format!("cannot open {FUSE_DEV}: {}", e.desc()))?;
    let mut data = format!(
        "fd={},rootmode=40000,user_id={},group_id={}",
        dev.as_raw_fd(),
        getuid(),
        getgid()
    );
    if spec.default_permissions {
        data.push_str(",default_permissions");
    }
    if spec.allow_other {
        data.push_str(",allow_other");
    }
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    nix::mount::mount(
        Some(spec.fsname),
        spec.mountpoint,
        Some(fstype(spec.subtype).as_str()),
        flags,
        Some(data.as_str()),
    )
    .map_err(|e| e.desc().to_string())?;
    Ok(dev)
}

fn mount_with_fusermount(spec: &MountSpec) -> Result<OwnedFd, String> {
    let mut opts = format!(
        "ro,nosuid,nodev,noexec,fsname={},subtype={}",
        escape_option(spec.fsname),
        escape_option(spec.subtype)
    );
    if spec.default_permissions {
        opts.push_str(",default_permissions");
    }
    if spec.allow_other {
        opts.push_str(",allow_other");
    }

    // Both ends close-on-exec so that no other child spawned meanwhile inherits them; the child
    // clears the flag on its own end between fork and exec.
    let (ours, theirs) = socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| format!("socketpair: {}", e.desc()))?;
    let theirs_raw = theirs.as_raw_fd();
    let mut command = Command::new(FUSERMOUNT);
    command
        .arg("-o")
        .arg(&opts)
        .arg("--")
        .arg(spec.mountpoint)
        .env("_FUSE_COMMFD", theirs_raw.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child and only calls fcntl(2), which is
    // async-signal-safe; `theirs_raw` is open there because the fork copied our fd table.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(theirs_raw, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            format!("Permission denied ({FUSERMOUNT} not found)")
        } else {
            format!("cannot run {FUSERMOUNT}: {}", io_cause(&e))
        }
    })?;
    // Our copy of the child's end must go, or receiving would never see end-of-file when
    // fusermount3 exits without sending an fd.
    drop(theirs);

    let received = recv_fd(ours.as_fd());
    let output = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {FUSERMOUNT}: {}", io_cause(&e)))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(
            match stderr.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
                Some(line) => line.to_string(),
                None => format!("{FUSERMOUNT} failed ({})", output.status),
            },
        );
    }
    match received {
        Ok(Some(fd)) => Ok(fd),
        Ok(None) => Err(format!("{FUSERMOUNT} did not pass a {FUSE_DEV} fd")),
        Err(e) => Err(format!("receiving the fd from {FUSERMOUNT}: {}", e.desc())),
    }
}

/// Receives one fd passed with SCM_RIGHTS; `None` when the peer closed without passing one.
fn recv_fd(sock: BorrowedFd) -> nix::Result<Option<OwnedFd>> {
    loop {
        let mut byte = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = match socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            other => other?,
        };
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: the kernel has just installed these fds in our table for us alone.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        return Ok(fds.into_iter().next());
    }
}

/// Escapes what fusermount3 would otherwise take as an option separator or an escape.
fn escape_option(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == ',' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn fstype(subtype: &str) -> String {
    if subtype.is_empty() {
        "fuse".to_string()
    } else {
        format!("fuse.{subtype}")
    }
}

/// The description of an OS error without std's "(os error N)" suffix.
fn io_cause(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

/// Unmounts `path`: umount2 (MNT_DETACH when `lazy`) as root, `fusermount3 -u [-z]` otherwise.
pub(crate) fn unmount(path: &Path, lazy: bool) -> io::Result<()> {
    if geteuid().is_root() {
        let flags = if lazy {
            MntFlags::MNT_DETACH
        } else {
            MntFlags::empty()
        };
        return nix::mount::umount2(path, flags).map_err(io::Error::from);
    }
    let mut command = Command::new(FUSERMOUNT);
    command.arg("-u");
    if lazy {
        command.arg("-z");
    }
    let output = command
        .arg("--")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr.lines().map(str::trim).find(|l| !l.is_empty());
    Err(io::Error::other(match line {
        Some(line) => line.to_string(),
        None => format!("{FUSERMOUNT} -u failed ({})", output.status),
    }))
}

fn open_dev() -> nix::Result<OwnedFd> {
    nix::fcntl::open(FUSE_DEV, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
}

/// Blocks until the first message of a new connection arrives and returns its bytes; an error
/// (InvalidData) if it is not an INIT request.
pub(crate) fn read_init(dev: BorrowedFd) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; READ_BUFFER_LEN];
    let n = loop {
        match nix::unistd::read(dev, &mut buf) {
            Err(Errno::EINTR) => continue,
            other => break other?,
        }
    };
    buf.truncate(n);
    buf.shrink_to_fit();
    InitRequest::parse(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(buf)
}

/// The parts of an INIT request kvfs needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InitRequest {
    pub unique: u64,
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    /// `flags | flags2 << 32` when FUSE_INIT_EXT is set, otherwise `flags`.
    pub flags: u64,
}

impl InitRequest {
    pub(crate) fn parse(bytes: &[u8]) -> Result<InitRequest, String> {
        if bytes.len() < IN_HEADER_LEN + INIT_IN_SHORT_LEN {
            return Err(format!(
                "INIT request too short: {} bytes, need at least {}",
                bytes.len(),
                IN_HEADER_LEN + INIT_IN_SHORT_LEN
            ));
        }
        let len = u32_at(bytes, 0) as usize;
        if len != bytes.len() {
            return Err(format!(
                "FUSE header says {len} bytes, message has {}",
                bytes.len()
            ));
        }
        let opcode = u32_at(bytes, 4);
        if opcode != FUSE_INIT {
            return Err(format!(
                "expected INIT (opcode {FUSE_INIT}), got opcode {opcode}"
            ));
        }
        let body = &bytes[IN_HEADER_LEN..];
        let mut flags = u64::from(u32_at(body, 12));
        if flags & FUSE_INIT_EXT != 0 && body.len() >= INIT_IN_EXT_LEN {
            flags |= u64::from(u32_at(body, 16)) << 32;
        }
        Ok(InitRequest {
            unique: u64::from_ne_bytes(bytes[8..16].try_into().expect("8 bytes")),
            major: u32_at(body, 0),
            minor: u32_at(body, 4),
            max_readahead: u32_at(body, 8),
            flags,
        })
    }

    /// Whether the kernel takes a request time limit from the daemon (`FUSE_REQUEST_TIMEOUT`).
    pub(crate) fn has_request_timeout(&self) -> bool {
        self.flags & FUSE_REQUEST_TIMEOUT != 0
    }

    /// Whether the kernel accepts `FUSE_NOTIFY_RESEND` on this connection.
    pub(crate) fn has_resend(&self) -> bool {
        self.flags & FUSE_HAS_RESEND != 0 && self.minor >= RESEND_MINOR
    }
}

/// Adds a request time limit of `seconds` to an INIT reply (header and `fuse_init_out`, as fuser
/// writes it), which fuser 0.18 cannot express: once any request waits longer than that for its
/// answer, the kernel aborts the connection, so a daemon that is stopped or stuck fails its
/// readers (ENOTCONN) instead of hanging them for ever. The kernel looks at requests only every
/// 15 s, so a request may wait up to about 30 s longer (a 1 s timeout failed a read after 30 s
/// on Linux 6.18).
///
/// Not applied (the reply is left as it is, and the reason returned) when the kernel does not
/// offer the flag, or the reply is an error or not laid out as expected.
pub(crate) fn set_request_timeout(
    reply: &mut [u8],
    kernel: &InitRequest,
    seconds: u16,
) -> Result<(), String> {
    if !kernel.has_request_timeout() {
        return Err(format!(
            "the kernel (FUSE protocol {}.{}) has no request timeout (Linux 6.14 or later needed)",
            kernel.major, kernel.minor
        ));
    }
    if reply.len() != OUT_HEADER_LEN + INIT_OUT_LEN || u32_at(reply, 4) != 0 {
        return Err(format!(
            "unexpected INIT reply ({} bytes, error {})",
            reply.len(),
            reply.get(4..8).map_or(0, |_| u32_at(reply, 4) as i32)
        ));
    }
    let body = &mut reply[OUT_HEADER_LEN..];
    // The kernel reads `flags2` only when the reply's `flags` carry FUSE_INIT_EXT.
    if u64::from(u32_at(body, INIT_OUT_FLAGS)) & FUSE_INIT_EXT == 0 {
        return Err("the INIT reply does not use the extended flags".to_string());
    }
    let flags2 = u32_at(body, INIT_OUT_FLAGS2) | (FUSE_REQUEST_TIMEOUT >> 32) as u32;
    body[INIT_OUT_FLAGS2..INIT_OUT_FLAGS2 + 4].copy_from_slice(&flags2.to_ne_bytes());
    body[INIT_OUT_REQUEST_TIMEOUT..INIT_OUT_REQUEST_TIMEOUT + 2]
        .copy_from_slice(&seconds.to_ne_bytes());
    Ok(())
}

/// Callers check the length first.
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

// `_IOR` is the kernel's historical spelling: it actually reads the old fd number from us.
nix::ioctl_read!(fuse_dev_ioc_clone, 229, 0, u32);

/// A new `/dev/fuse` file attached to `dev`'s connection (FUSE_DEV_IOC_CLONE), O_CLOEXEC. Each
/// file has its own list of requests read but not yet answered.
pub(crate) fn clone_dev(dev: BorrowedFd) -> io::Result<OwnedFd> {
    let new = open_dev()?;
    let mut old = u32::try_from(dev.as_raw_fd()).map_err(|_| io::Error::from(Errno::EBADF))?;
    // SAFETY: `new` is an open fd and `old` outlives the call; the kernel only reads the u32.
    unsafe { fuse_dev_ioc_clone(new.as_raw_fd(), &mut old) }?;
    Ok(new)
}

/// Asks the kernel to put every request read but not answered on this connection (through any of
/// its device files) back in the queue. Requests read again this way carry bit 63
/// (`FUSE_UNIQUE_RESEND`) in `unique`; the reply must echo `unique` exactly as read. Kernels
/// without it (before 6.9) give an error whose kind is Unsupported.
pub(crate) fn notify_resend(dev: BorrowedFd) -> io::Result<()> {
    let mut msg = [0u8; OUT_HEADER_LEN];
    msg[0..4].copy_from_slice(&(OUT_HEADER_LEN as u32).to_ne_bytes());
    msg[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    // unique 0 marks a notification; the code travels in the error field.
    match write_message(dev, &msg) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel does not support FUSE_NOTIFY_RESEND (Linux 6.9 or later needed)",
        )),
        other => other,
    }
}

/// Writes one whole message (a reply or a notification) to `/dev/fuse`.
pub(crate) fn write_message(dev: BorrowedFd, bytes: &[u8]) -> io::Result<()> {
    let n = loop {
        match nix::unistd::write(dev, bytes) {
            Err(Errno::EINTR) => continue,
            other => break other?,
        }
    };
    // The device takes a message whole or not at all; anything else is a broken connection.
    if n != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write to {FUSE_DEV}: {n} of {} bytes", bytes.len()),
        ));
    }
    Ok(())
}

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MountEntry {
    pub mount_id: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

impl MountEntry {
    /// The id of the connection under `/sys/fs/fuse/connections` when this is a FUSE mount: FUSE
    /// superblocks get anonymous devices (major 0) and the directory is named after the minor.
    pub(crate) fn fuse_connection(&self) -> Option<u32> {
        let fuse = self.fstype == "fuse" || self.fstype.starts_with("fuse.");
        (fuse && self.dev_major == 0).then_some(self.dev_minor)
    }
}

/// Parses mountinfo text, skipping lines it does not understand.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

/// `id parent major:minor root mountpoint options [optional fields...] - fstype source superopts`
fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    // Single spaces separate fields (an empty source shows up as an empty field).
    let fields: Vec<&str> = line.split(' ').collect();
    let separator = 6 + fields.get(6..)?.iter().position(|f| *f == "-")?;
    let (major, minor) = fields.get(2)?.split_once(':')?;
    Some(MountEntry {
        mount_id: fields[0].parse().ok()?,
        dev_major: major.parse().ok()?,
        dev_minor: minor.parse().ok()?,
        mountpoint: PathBuf::from(OsString::from_vec(unescape(fields.get(4)?))),
        fstype: String::from_utf8_lossy(&unescape(fields.get(separator + 1)?)).into_owned(),
        source: String::from_utf8_lossy(&unescape(fields.get(separator + 2)?)).into_owned(),
    })
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = (bytes[i] == b'\\')
            .then(|| bytes.get(i + 1..i + 4))
            .flatten()
            .filter(|d| d[0] <= b'3' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(((d[0] - b'0') << 6) | ((d[1] - b'0') << 3) | (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// Mounts whose mountpoint is exactly `path`, in mountinfo order (the last one is on top).
/// `path` is compared as given, not resolved: resolving it would stat a possibly dead mount.
pub(crate) fn mounts_at(path: &Path) -> io::Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut entries = parse_mountinfo(&text);
    entries.retain(|e| e.mountpoint == path);
    Ok(entries)
}

/// Aborts FUSE connection `id`: every pending and future request fails with ENOTCONN. Mounts
/// fusectl on `/sys/fs/fuse/connections` first when nothing is mounted there yet.
pub(crate) fn abort_connection(id: u32) -> io::Result<()> {
    let connections = Path::new(FUSE_CONNECTIONS);
    let empty = || -> io::Result<bool> {
        match std::fs::read_dir(connections) {
            Ok(mut entries) => Ok(entries.next().is_none()),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("cannot read {FUSE_CONNECTIONS}: {}", io_cause(&e)),
            )),
        }
    };
    if empty()? {
        let mounted = nix::mount::mount(
            Some("fusectl"),
            connections,
            Some("fusectl"),
            MsFlags::empty(),
            None::<&str>,
        );
        // Someone else may have mounted it meanwhile; only a still-empty directory is a failure.
        if let Err(e) = mounted
            && empty()?
        {
            return Err(io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot mount fusectl on {FUSE_CONNECTIONS}: {}", e.desc()),
            ));
        }
    }
    let abort = connections.join(id.to_string()).join("abort");
    std::fs::write(&abort, "1").map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot abort FUSE connection {id}: {}", io_cause(&e)),
        )
    })
}

/// Whether something answers for the filesystem at `path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// stat came back (with attributes or with an error other than ENOTCONN).
    Answers,
    /// ENOTCONN: the connection is gone (aborted, or its last device file closed).
    NotConnected,
    /// No answer within the timeout: nobody serves the connection (or the helper thread could
    /// not be started, so we could not find out).
    NoAnswer,
}

/// Stats `path` on a helper thread and waits at most `timeout` for it. The stat forces a round
/// trip to the server (AT_STATX_FORCE_SYNC) so cached attributes cannot pass for an answer.
///
/// On a connection nobody serves the stat blocks in the kernel and cannot be cancelled, so the
/// helper thread is left behind; it ends when the connection is aborted or finally answered.
pub(crate) fn probe(path: &Path, timeout: Duration) -> Liveness {
    let Ok(path) = CString::new(path.as_os_str().as_bytes()) else {
        // A path with a NUL byte cannot name a filesystem; nothing is there to answer.
        return Liveness::Answers;
    };
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("kvfs-probe".to_string())
        // It only makes one syscall; a small stack keeps abandoned threads cheap.
        .stack_size(64 * 1024)
        .spawn(move || {
            // SAFETY: zeroed is a valid statx (plain integers).
            let mut stx: libc::statx = unsafe { std::mem::zeroed() };
            // SAFETY: `path` is a NUL-terminated string and `stx` a writable statx buffer, both
            // alive for the whole call.
            let rc = unsafe {
                libc::statx(
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    libc::AT_STATX_FORCE_SYNC,
                    libc::STATX_BASIC_STATS,
                    &mut stx,
                )
            };
            let errno = (rc == -1).then(Errno::last);
            // The prober may have given up and dropped the receiver; nothing to do then.
            let _ = tx.send(errno);
        });
    if spawned.is_err() {
        return Liveness::NoAnswer;
    }
    match rx.recv_timeout(timeout) {
        Ok(Some(Errno::ENOTCONN)) => Liveness::NotConnected,
        Ok(_) => Liveness::Answers,
        Err(_) => Liveness::NoAnswer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An INIT request as the kernel lays it out; `flags2` is sent only when `Some`.
    fn init_bytes(unique: u64, minor: u32, flags: u32, flags2: Option<u32>) -> Vec<u8> {
        let mut body = Vec::new();
        for v in [7, minor, 131072, flags] {
            body.extend_from_slice(&u32::to_ne_bytes(v));
        }
        if let Some(f2) = flags2 {
            body.extend_from_slice(&f2.to_ne_bytes());
            body.extend_from_slice(&[0u8; 44]);
        }
        let len = (IN_HEADER_LEN + body.len()) as u32;
        let mut msg = Vec::new();
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&FUSE_INIT.to_ne_bytes());
        msg.extend_from_slice(&unique.to_ne_bytes());
        msg.extend_from_slice(&[0u8; 24]); // nodeid, uid, gid, pid, total_extlen, padding
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn init_with_flags2() {
        let flags = (1 << 30) | 1;
        let init = InitRequest::parse(&init_bytes(2, 41, flags, Some(1 << 7))).unwrap();
        assert_eq!(
            init,
            InitRequest {
                unique: 2,
                major: 7,
                minor: 41,
                max_readahead: 131072,
                flags: u64::from(flags) | 1 << 39,
            }
        );
        assert!(init.has_resend());
    }

    #[test]
    fn init_flags2_ignored_without_init_ext() {
        let init = InitRequest::parse(&init_bytes(2, 41, 1, Some(1 << 7))).unwrap();
        assert_eq!(init.flags, 1);
        assert!(!init.has_resend());
    }

    #[test]
    fn init_from_old_kernel_without_flags2() {
        let init = InitRequest::parse(&init_bytes(9, 31, 1 << 30, None)).unwrap();
        assert_eq!((init.unique, init.minor, init.flags), (9, 31, 1 << 30));
        assert!(!init.has_resend());
    }

    #[test]
    fn resend_needs_minor_40() {
        let init = InitRequest::parse(&init_bytes(2, 39, 1 << 30, Some(1 << 7))).unwrap();
        assert!(!init.has_resend());
    }

    #[test]
    fn init_rejects_bad_messages() {
        let good = init_bytes(2, 41, 1 << 30, Some(0));
        assert!(InitRequest::parse(&[]).unwrap_err().contains("too short"));
        assert!(
            InitRequest::parse(&good[..50])
                .unwrap_err()
                .contains("too short")
        );
        // Truncated: the header's length no longer matches.
        assert!(
            InitRequest::parse(&good[..60])
                .unwrap_err()
                .contains("header says")
        );
        let mut lookup = good.clone();
        lookup[4..8].copy_from_slice(&1u32.to_ne_bytes());
        assert!(
            InitRequest::parse(&lookup)
                .unwrap_err()
                .contains("opcode 1")
        );
    }

    /// An INIT reply as fuser writes it: header, then `fuse_init_out` with `flags`.
    fn init_reply(flags: u32) -> Vec<u8> {
        let mut reply = vec![0u8; OUT_HEADER_LEN + INIT_OUT_LEN];
        reply[0..4].copy_from_slice(&((OUT_HEADER_LEN + INIT_OUT_LEN) as u32).to_ne_bytes());
        reply[OUT_HEADER_LEN + INIT_OUT_FLAGS..][..4].copy_from_slice(&flags.to_ne_bytes());
        reply
    }

    #[test]
    fn request_timeout_goes_into_flags2_and_its_field() {
        let kernel = InitRequest::parse(&init_bytes(2, 43, 1 << 30, Some(1 << 10))).unwrap();
        assert!(kernel.has_request_timeout());
        let mut reply = init_reply(1 << 30);
        set_request_timeout(&mut reply, &kernel, 120).unwrap();
        let body = &reply[OUT_HEADER_LEN..];
        assert_eq!(u32_at(body, INIT_OUT_FLAGS2), 1 << 10);
        assert_eq!(
            &body[INIT_OUT_REQUEST_TIMEOUT..][..2],
            &120u16.to_ne_bytes()
        );
        // Everything else is left as fuser wrote it.
        assert_eq!(u32_at(&reply, 0) as usize, reply.len());
        assert_eq!(u32_at(body, INIT_OUT_FLAGS), 1 << 30);
    }

    #[test]
    fn request_timeout_is_not_set_where_it_would_mean_nothing() {
        let old = InitRequest::parse(&init_bytes(2, 41, 1 << 30, Some(0))).unwrap();
        let mut reply = init_reply(1 << 30);
        let untouched = reply.clone();
        assert!(
            set_request_timeout(&mut reply, &old, 120)
                .unwrap_err()
                .contains("6.14")
        );
        let kernel = InitRequest::parse(&init_bytes(2, 43, 1 << 30, Some(1 << 10))).unwrap();
        // No FUSE_INIT_EXT in the reply: the kernel would not read flags2.
        let mut plain = init_reply(0);
        assert!(set_request_timeout(&mut plain, &kernel, 120).is_err());
        // An error reply, or one of another size.
        let mut error = init_reply(1 << 30);
        error[4..8].copy_from_slice(&(-libc::EPROTO).to_ne_bytes());
        assert!(set_request_timeout(&mut error, &kernel, 120).is_err());
        assert!(set_request_timeout(&mut reply[..40], &kernel, 120).is_err());
        assert_eq!(reply, untouched);
    }

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
45 23 0:40 / /sys/fs/fuse/connections rw,relatime - fusectl none rw
87 22 0:52 / /mnt/my\\040vault\\134x rw,nosuid,nodev,noexec,relatime shared:7 master:2 - fuse.kvfs kvfs:my\\040vault.vault.azure.net ro,user_id=0,group_id=0
88 22 0:53 / /mnt/plain rw,relatime - fuse /dev/fuse rw
garbage line
";

    #[test]
    fn mountinfo_parses_optional_fields_and_escapes() {
        let entries = parse_mountinfo(MOUNTINFO);
        assert_eq!(entries.len(), 4);
        assert_eq!(
            entries[0],
            MountEntry {
                mount_id: 22,
                dev_major: 8,
                dev_minor: 1,
                mountpoint: PathBuf::from("/"),
                fstype: "ext4".to_string(),
                source: "/dev/sda1".to_string(),
            }
        );
        assert_eq!(
            entries[2],
            MountEntry {
                mount_id: 87,
                dev_major: 0,
                dev_minor: 52,
                mountpoint: PathBuf::from("/mnt/my vault\\x"),
                fstype: "fuse.kvfs".to_string(),
                source: "kvfs:my vault.vault.azure.net".to_string(),
            }
        );
    }

    #[test]
    fn mountinfo_unescapes_tab_and_newline_and_keeps_stray_backslashes() {
        assert_eq!(unescape("a\\011b\\012c"), b"a\tb\nc");
        assert_eq!(unescape("a\\b\\9999\\04"), b"a\\b\\9999\\04");
    }

    #[test]
    fn fuse_connection_only_for_fuse_mounts() {
        let entries = parse_mountinfo(MOUNTINFO);
        let ids: Vec<_> = entries.iter().map(MountEntry::fuse_connection).collect();
        // ext4 has a real device; fusectl is not a FUSE mount.
        assert_eq!(ids, [None, None, Some(52), Some(53)]);
        let fuseblk = MountEntry {
            fstype: "fuse.x".to_string(),
            dev_major: 8,
            ..entries[2].clone()
        };
        assert_eq!(fuseblk.fuse_connection(), None);
    }

    /// Lazily unmounts on drop so a failing test leaves no mount behind.
    struct MountGuard<'a>(&'a Path);

    impl Drop for MountGuard<'_> {
        fn drop(&mut self) {
            while mounts_at(self.0).is_ok_and(|m| !m.is_empty()) {
                if unmount(self.0, true).is_err() {
                    break;
                }
            }
        }
    }

    fn spec(mountpoint: &Path) -> MountSpec<'_> {
        MountSpec {
            mountpoint,
            fsname: "kvfs-test",
            subtype: "kvfstest",
            allow_other: true,
            default_permissions: true,
        }
    }

    #[test]
    fn mount_error_names_mountpoint_and_cause() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = mount(&spec(&missing)).unwrap_err();
        assert_eq!(
            err,
            format!(
                "cannot mount {}: No such file or directory",
                missing.display()
            )
        );
    }

    #[test]
    fn unmount_of_unmounted_path_fails() {
        let dir = tempfile::tempdir().unwrap();
        assert!(unmount(dir.path(), false).is_err());
    }

    #[test]
    fn kernel_connection_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        let dev = mount(&spec(path)).unwrap();
        let _guard = MountGuard(path);

        let entries = mounts_at(path).unwrap();
        let entry = entries.last().expect("mounted");
        assert_eq!(entry.fstype, "fuse.kvfstest");
        assert_eq!(entry.source, "kvfs-test");
        let conn = entry.fuse_connection().expect("a FUSE connection");

        let init = InitRequest::parse(&read_init(dev.as_fd()).unwrap()).unwrap();
        assert_eq!(init.major, 7);
        assert!(init.has_resend(), "{init:?}");
        // What kvfs asks for: parallel lookups (Linux 4.7+) and mmap of direct-I/O files (6.6+).
        let parallel_dirops = 1 << 18;
        let direct_io_allow_mmap = 1 << 36;
        assert_eq!(init.flags & parallel_dirops, parallel_dirops, "{init:?}");
        assert_eq!(
            init.flags & direct_io_allow_mmap,
            direct_io_allow_mmap,
            "{init:?}"
        );
        println!(
            "protocol 7.{}, request timeout offered: {}",
            init.minor,
            init.has_request_timeout()
        );

        // The INIT read (and never answered) on `dev` comes back through the clone, marked.
        let clone = clone_dev(dev.as_fd()).unwrap();
        notify_resend(dev.as_fd()).unwrap();
        let again = InitRequest::parse(&read_init(clone.as_fd()).unwrap()).unwrap();
        assert_eq!(again.unique, init.unique | 1 << 63);

        let started = Instant::now();
        assert_eq!(probe(path, Duration::from_millis(300)), Liveness::NoAnswer);
        assert!(started.elapsed() < Duration::from_secs(2));

        abort_connection(conn).unwrap();
        assert_eq!(probe(path, Duration::from_secs(5)), Liveness::NotConnected);
        // The abort also failed the stat left behind by the first probe.
        let deadline = Instant::now() + Duration::from_secs(5);
        while probe_threads() > 0 {
            assert!(Instant::now() < deadline, "probe thread still stuck");
            std::thread::sleep(Duration::from_millis(20));
        }

        unmount(path, true).unwrap();
        assert!(mounts_at(path).unwrap().is_empty());
    }

    fn probe_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == "kvfs-probe")
            .count()
    }
}
