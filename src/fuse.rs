//! The FUSE adapter: translates fuser's callbacks into [`FsCore`] calls and their answers back.
//! No behaviour lives here. Each request runs as a task on the tokio runtime, so a slow vault
//! call never blocks the kernel channel and concurrent readers of one object meet in the cache.

mod failures;
pub(crate) mod gate;

use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use futures::FutureExt;

use crate::fs::core::{Attr, FsCore, Kind, MAX_NAME_LEN, OpenMode, check_name_length};
use crate::fs::error::FsError;
use crate::metrics::{self, FuseOp, FuseRequest};
use gate::Gate;

pub(crate) struct FuseAdapter {
    core: Arc<FsCore>,
    runtime: tokio::runtime::Handle,
    /// Lets a worker that hands over stop taking requests (every handler holds a turn).
    gate: Arc<Gate>,
}

impl FuseAdapter {
    pub(crate) fn new(core: Arc<FsCore>, runtime: tokio::runtime::Handle, gate: Arc<Gate>) -> Self {
        FuseAdapter {
            core,
            runtime,
            gate,
        }
    }

    /// Run `work` and answer with its result: `ok` replies with a value, a failure is counted,
    /// logged if it has a cause ([`failures`]) and replied as its errno. It is polled once right
    /// here, on the session thread: an answer from a warm cache goes back without a hop to
    /// another thread, which is most of the cost of a warm `stat` or `open`. If it has to wait
    /// (a vault call), it carries on as a task, so the session thread never blocks on the
    /// network.
    fn answer<T: Send + 'static, R: ErrorReply>(
        &self,
        asked: Asked,
        work: impl Future<Output = Result<T, FsError>> + Send + 'static,
        reply: R,
        ok: impl FnOnce(R, T) + Send + 'static,
    ) {
        // Cache fetches are spawned on the runtime, which the inline poll must be able to reach.
        let _runtime = self.runtime.enter();
        let mut work = Box::pin(work);
        match (&mut work).now_or_never() {
            Some(result) => finish(&self.core, asked, result, reply, ok),
            None => {
                let gate = self.gate.clone();
                let core = self.core.clone();
                self.runtime.spawn(async move {
                    let _owed = gate.owe();
                    finish(&core, asked, work.await, reply, ok)
                });
            }
        }
    }

    /// Answer `errno` at once, asking the core nothing: what a read-only tree of small files
    /// refuses (`EROFS`) or leaves to the kernel (`ENOSYS`, `ENOTTY`).
    fn refuse(&self, op: FuseOp, errno: Errno, reply: impl ErrorReply) {
        let _turn = self.gate.turn();
        reply.error(counted(metrics::fuse_request(op), errno));
    }
}

fn finish<T, R: ErrorReply>(
    core: &FsCore,
    asked: Asked,
    result: Result<T, FsError>,
    reply: R,
    ok: impl FnOnce(R, T),
) {
    match result {
        Ok(value) => ok(reply, value),
        Err(e) => reply.error(asked.failed(core, &e)),
    }
}

/// Count `m` as answered with `e`, and give `e` back for the reply.
fn counted(m: FuseRequest, e: Errno) -> Errno {
    m.fail(e.code());
    e
}

/// A request being answered: its metric, and what a line about its failure names.
struct Asked {
    op: FuseOp,
    metric: FuseRequest,
    ino: u64,
    /// The name a lookup looks for in directory `ino`.
    name: Option<Arc<str>>,
}

impl Asked {
    /// Start counting (and timing) a request of kind `op` about inode `ino`.
    fn new(op: FuseOp, ino: INodeNo) -> Asked {
        Asked {
            op,
            metric: metrics::fuse_request(op),
            ino: ino.0,
            name: None,
        }
    }

    /// Count the request as answered with `errno`, and give `errno` back for the reply.
    fn answered(self, errno: Errno) -> Errno {
        counted(self.metric, errno)
    }

    /// [`Asked::answered`] with the errno of `e`, logging `e` first if it has a cause: before
    /// the reply, so the line is on its way when the caller sees the error.
    fn failed(self, core: &FsCore, e: &FsError) -> Errno {
        failures::log(self.op, e, || {
            core.path_of(self.ino, self.name.as_deref())
                .unwrap_or_else(|| format!("<inode {}>", self.ino))
        });
        self.answered(Errno::from_i32(e.errno()))
    }
}

/// A reply of any kind, as far as failing it goes (fuser gives each kind its own `error`).
trait ErrorReply: Send + 'static {
    fn error(self, errno: Errno);
}

macro_rules! error_replies {
    ($($reply:ty),* $(,)?) => {
        $(impl ErrorReply for $reply {
            fn error(self, errno: Errno) {
                <$reply>::error(self, errno)
            }
        })*
    };
}

error_replies!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyEmpty,
    ReplyEntry,
    ReplyOpen,
    ReplyWrite,
    ReplyXattr,
    fuser::ReplyIoctl,
    fuser::ReplyLseek,
    fuser::ReplyPoll,
);

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
    }
}

/// Callbacks that answer an errno at once (see [`FuseAdapter::refuse`]), one line each:
/// `name(argument types…) -> reply type: metric op, errno;`. The arguments are fuser's, after
/// `&self` and the request, none of them looked at.
macro_rules! refused {
    ($($(#[$doc:meta])* $name:ident($($arg:ty),* $(,)?) -> $reply:ty: $op:ident, $errno:ident;)*) => {
        $(
            $(#[$doc])*
            fn $name(&self, _: &Request, $(_: $arg,)* reply: $reply) {
                self.refuse(FuseOp::$op, Errno::$errno, reply);
            }
        )*
    };
}

impl Filesystem for FuseAdapter {
    /// - `FUSE_AUTO_INVAL_DATA`: a read whose cached attributes have expired revalidates them,
    ///   and a changed mtime or size drops the page cache: what lets a kernel-cached file
    ///   (cached mode, explicit versions) follow a rotation without a notification.
    /// - `FUSE_PARALLEL_DIROPS`: without it the kernel serialises lookups and listings in one
    ///   directory, so one name waiting on a slow vault would hold up every other name there.
    /// - `FUSE_DIRECT_IO_ALLOW_MMAP`: snapshot-mode files are opened with direct I/O, which the
    ///   kernel otherwise refuses to mmap (ENODEV); with it, a shared read-only mapping works.
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = [
            (
                InitFlags::FUSE_AUTO_INVAL_DATA,
                "page caches follow rotations only through invalidation",
            ),
            (
                InitFlags::FUSE_PARALLEL_DIROPS,
                "lookups in one directory wait for each other",
            ),
            (
                InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
                "mmap of a file fails in the default open mode",
            ),
        ];
        for (flag, consequence) in wanted {
            if let Err(missing) = config.add_capabilities(flag) {
                tracing::warn!(
                    ?missing,
                    "the kernel lacks a FUSE capability: {consequence}"
                );
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _turn = self.gate.turn();
        let asked = Asked::new(FuseOp::Lookup, parent);
        // Before anything else: a name no vault object can have costs no request.
        if let Err(e) = check_name_length(name.as_bytes()) {
            return reply.error(asked.failed(&self.core, &e));
        }
        // Names that are not UTF-8 cannot be Key Vault names. Shared with `asked`, which names
        // it should the lookup fail.
        let Some(name) = name.to_str().map(Arc::<str>::from) else {
            return reply.error(asked.answered(Errno::ENOENT));
        };
        let asked = Asked {
            name: Some(name.clone()),
            ..asked
        };
        let core = self.core.clone();
        self.answer(
            asked,
            async move { core.lookup(parent.0, &name).await },
            reply,
            |reply, e| reply.entry(&e.ttl, &file_attr(&e.attr), Generation(0)),
        );
    }

    /// Nothing is stored, so no blocks or inodes to report; `namelen` is what Key Vault allows,
    /// so tools that ask (`pathconf(_PC_NAME_MAX)`) learn the real limit.
    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: fuser::ReplyStatfs) {
        let _turn = self.gate.turn();
        let _m = metrics::fuse_request(FuseOp::Statfs);
        reply.statfs(0, 0, 0, 0, 0, 512, MAX_NAME_LEN as u32, 0);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _turn = self.gate.turn();
        let _m = metrics::fuse_request(FuseOp::Forget);
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _turn = self.gate.turn();
        let core = self.core.clone();
        self.answer(
            Asked::new(FuseOp::Getattr, ino),
            async move { core.getattr(ino.0).await },
            reply,
            |reply, e| reply.attr(&e.ttl, &file_attr(&e.attr)),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _turn = self.gate.turn();
        let asked = Asked::new(FuseOp::Open, ino);
        if self.core.open_mode() == OpenMode::Cached {
            // "Not implemented" makes the kernel stop sending OPEN and RELEASE for good: files
            // then read through its page cache, which is what cached mode is for.
            return reply.error(asked.answered(Errno::ENOSYS));
        }
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY
            || flags.0 & (libc::O_TRUNC | libc::O_APPEND | libc::O_CREAT) != 0;
        let core = self.core.clone();
        self.answer(
            asked,
            async move { core.open(ino.0, write).await },
            reply,
            |reply, o| {
                if o.immutable {
                    // An explicit version never changes: its pages may stay cached across opens.
                    reply.opened(FileHandle(o.fh), FopenFlags::FOPEN_KEEP_CACHE)
                } else {
                    // Direct I/O: reads always come to the daemon, which serves the snapshot
                    // taken here, so a stale page cache or a stale size can never mix two
                    // versions.
                    reply.opened(FileHandle(o.fh), FopenFlags::FOPEN_DIRECT_IO)
                }
            },
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _turn = self.gate.turn();
        let asked = Asked::new(FuseOp::Read, ino);
        let data = |reply: ReplyData, bytes: Vec<u8>| reply.data(&bytes);
        // Handle 0: the kernel did not open the file (cached mode); read the inode as it is now.
        if fh.0 == 0 {
            let core = self.core.clone();
            let work = async move { core.read_inode(ino.0, offset, size).await };
            return self.answer(asked, work, reply, data);
        }
        if let Some(bytes) = self.core.read(ino.0, fh.0, offset, size) {
            return reply.data(&bytes);
        }
        // A handle this process never opened: a predecessor did, before a restart or upgrade.
        let core = self.core.clone();
        let work = async move { core.read_reopened(ino.0, fh.0, offset, size).await };
        self.answer(asked, work, reply, data);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _turn = self.gate.turn();
        let _m = metrics::fuse_request(FuseOp::Release);
        self.core.release(ino.0, fh.0);
        reply.ok();
    }

    /// Directories are listed once per open. The kernel may cache the listing
    /// (`FOPEN_CACHE_DIR`), and keeps what it cached when the listing is the one it got last
    /// time; otherwise it drops it, so a created or deleted object shows at the next `ls`.
    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _turn = self.gate.turn();
        let core = self.core.clone();
        self.answer(
            Asked::new(FuseOp::Opendir, ino),
            async move { core.opendir(ino.0).await },
            reply,
            |reply, d| {
                let mut flags = FopenFlags::FOPEN_CACHE_DIR;
                if d.unchanged {
                    flags |= FopenFlags::FOPEN_KEEP_CACHE;
                }
                reply.opened(FileHandle(d.fh), flags)
            },
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let _turn = self.gate.turn();
        let asked = Asked::new(FuseOp::Readdir, ino);
        // Every directory is opened through `opendir`, which holds its entries.
        if let Some(entries) = self.core.dir_entries(fh.0) {
            return fill_dir(reply, &entries, offset);
        }
        // Opened by a predecessor, before a restart or upgrade: list it again.
        let core = self.core.clone();
        self.answer(
            asked,
            async move { core.reopen_dir(ino.0, fh.0).await },
            reply,
            move |reply, entries| fill_dir(reply, &entries, offset),
        );
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _turn = self.gate.turn();
        let _m = metrics::fuse_request(FuseOp::Releasedir);
        self.core.releasedir(fh.0);
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _turn = self.gate.turn();
        let asked = Asked::new(FuseOp::Getxattr, ino);
        // Names that are not UTF-8 cannot be kvfs's attributes.
        let Some(name) = name.to_str().map(str::to_string) else {
            return reply.error(asked.answered(Errno::from_i32(libc::ENODATA)));
        };
        let core = self.core.clone();
        self.answer(
            asked,
            async move { core.getxattr(ino.0, &name).await },
            reply,
            move |reply, value| reply_xattr(reply, size, &value),
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _turn = self.gate.turn();
        let core = self.core.clone();
        self.answer(
            Asked::new(FuseOp::Listxattr, ino),
            async move { core.listxattr(ino.0).await },
            reply,
            move |reply, names| {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(n.as_bytes());
                    buf.push(0);
                }
                reply_xattr(reply, size, &buf);
            },
        );
    }

    // Operations with nothing to do on a read-only tree of small files. fuser's defaults answer
    // the same but log a warning each time, and `isatty()` (Python's `open`, for one) sends an
    // ioctl on every open: a healthy read must not log.
    refused! {
        /// Nothing is buffered for writing, so there is nothing to flush: "not implemented"
        /// makes the kernel stop sending FLUSH on every close (one round trip less per open
        /// file).
        flush(INodeNo, FileHandle, LockOwner) -> ReplyEmpty: Flush, ENOSYS;
        ioctl(INodeNo, FileHandle, fuser::IoctlFlags, u32, &[u8], u32) -> fuser::ReplyIoctl:
            Ioctl, ENOTTY;
        /// "Not implemented": the kernel then treats files as always ready, and stops asking.
        poll(INodeNo, FileHandle, fuser::PollNotifier, fuser::PollEvents, fuser::PollFlags)
            -> fuser::ReplyPoll: Poll, ENOSYS;
        /// SEEK_DATA/SEEK_HOLE: "not implemented" lets the kernel answer from the file size.
        lseek(INodeNo, FileHandle, i64, i32) -> fuser::ReplyLseek: Lseek, ENOSYS;
        /// Nothing is ever written; "not implemented" makes the kernel succeed without asking.
        fsync(INodeNo, FileHandle, bool) -> ReplyEmpty: Fsync, ENOSYS;
        fsyncdir(INodeNo, FileHandle, bool) -> ReplyEmpty: Fsyncdir, ENOSYS;
    }

    // Every mutation is refused. The mount is also `ro`, so the kernel usually answers these
    // itself; the daemon gives the same answer when asked.
    refused! {
        setattr(
            INodeNo,
            Option<u32>,
            Option<u32>,
            Option<u32>,
            Option<u64>,
            Option<TimeOrNow>,
            Option<TimeOrNow>,
            Option<SystemTime>,
            Option<FileHandle>,
            Option<SystemTime>,
            Option<SystemTime>,
            Option<SystemTime>,
            Option<fuser::BsdFileFlags>
        ) -> ReplyAttr: Setattr, EROFS;
        mknod(INodeNo, &OsStr, u32, u32, u32) -> ReplyEntry: Mknod, EROFS;
        mkdir(INodeNo, &OsStr, u32, u32) -> ReplyEntry: Mkdir, EROFS;
        unlink(INodeNo, &OsStr) -> ReplyEmpty: Unlink, EROFS;
        rmdir(INodeNo, &OsStr) -> ReplyEmpty: Rmdir, EROFS;
        symlink(INodeNo, &OsStr, &Path) -> ReplyEntry: Symlink, EROFS;
        rename(INodeNo, &OsStr, INodeNo, &OsStr, RenameFlags) -> ReplyEmpty: Rename, EROFS;
        link(INodeNo, INodeNo, &OsStr) -> ReplyEntry: Link, EROFS;
        write(
            INodeNo,
            FileHandle,
            u64,
            &[u8],
            WriteFlags,
            OpenFlags,
            Option<LockOwner>
        ) -> ReplyWrite: Write, EROFS;
        create(INodeNo, &OsStr, u32, u32, i32) -> ReplyCreate: Create, EROFS;
        setxattr(INodeNo, &OsStr, &[u8], i32, u32) -> ReplyEmpty: Setxattr, EROFS;
        removexattr(INodeNo, &OsStr) -> ReplyEmpty: Removexattr, EROFS;
    }
}

fn fill_dir(mut reply: ReplyDirectory, entries: &[crate::fs::core::DirEntry], offset: u64) {
    for (i, e) in entries.iter().enumerate().skip(offset as usize) {
        // The offset of an entry is where the next readdir resumes.
        if reply.add(INodeNo(e.ino), (i + 1) as u64, file_type(e.kind), &e.name) {
            break;
        }
    }
    reply.ok();
}

/// xattr protocol: size 0 asks for the length; a buffer too small is ERANGE.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(value);
    }
}
