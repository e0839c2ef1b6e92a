//! The FUSE adapter: translates fuser's callbacks into [`FsCore`] calls and their answers back.
//! No behaviour lives here. Each request runs as a task on the tokio runtime, so a slow vault
//! call never blocks the kernel channel and concurrent readers of one object meet in the cache.

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
use crate::lifecycle::gate::Gate;
use crate::metrics::{self, FuseOp, FuseRequest};

pub struct FuseAdapter {
    core: Arc<FsCore>,
    runtime: tokio::runtime::Handle,
    /// Lets a worker that hands over stop taking requests (every handler holds a turn).
    gate: Arc<Gate>,
}

impl FuseAdapter {
    pub fn new(core: Arc<FsCore>, runtime: tokio::runtime::Handle, gate: Arc<Gate>) -> Self {
        FuseAdapter {
            core,
            runtime,
            gate,
        }
    }

    /// Run `op` and hand its result to `reply`. It is polled once right here, on the session
    /// thread: an answer from a warm cache goes back without a hop to another thread, which is
    /// most of the cost of a warm `stat` or `open`. If it has to wait (a vault call), it carries
    /// on as a task, so the session thread never blocks on the network.
    fn answer<T: Send + 'static>(
        &self,
        op: impl Future<Output = T> + Send + 'static,
        reply: impl FnOnce(T) + Send + 'static,
    ) {
        // Cache fetches are spawned on the runtime, which the inline poll must be able to reach.
        let _runtime = self.runtime.enter();
        let mut op = Box::pin(op);
        match (&mut op).now_or_never() {
            Some(result) => reply(result),
            None => {
                let gate = self.gate.clone();
                self.runtime.spawn(async move {
                    let _owed = gate.owe();
                    reply(op.await)
                });
            }
        }
    }
}

/// Count `m` as failed with `e`, and give `e` back for the reply.
fn failed(m: FuseRequest, e: Errno) -> Errno {
    m.fail(e.code());
    e
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

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

/// Names that are not UTF-8 cannot be Key Vault names.
fn utf8(name: &OsStr) -> Option<String> {
    name.to_str().map(str::to_string)
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
        let m = metrics::fuse_request(FuseOp::Lookup);
        // Before anything else: a name no vault object can have costs no request.
        if let Err(e) = check_name_length(name.as_bytes()) {
            return reply.error(failed(m, errno(&e)));
        }
        let Some(name) = utf8(name) else {
            return reply.error(failed(m, Errno::ENOENT));
        };
        let core = self.core.clone();
        self.answer(
            async move { core.lookup(parent.0, &name).await },
            move |result| match result {
                Ok(e) => reply.entry(&e.ttl, &file_attr(&e.attr), Generation(0)),
                Err(e) => reply.error(failed(m, errno(&e))),
            },
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
        let m = metrics::fuse_request(FuseOp::Getattr);
        let core = self.core.clone();
        self.answer(
            async move { core.getattr(ino.0).await },
            move |result| match result {
                Ok(e) => reply.attr(&e.ttl, &file_attr(&e.attr)),
                Err(e) => reply.error(failed(m, errno(&e))),
            },
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Open);
        if self.core.open_mode() == OpenMode::Cached {
            // "Not implemented" makes the kernel stop sending OPEN and RELEASE for good: files
            // then read through its page cache, which is what cached mode is for.
            return reply.error(failed(m, Errno::ENOSYS));
        }
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY
            || flags.0 & (libc::O_TRUNC | libc::O_APPEND | libc::O_CREAT) != 0;
        let core = self.core.clone();
        self.answer(
            async move { core.open(ino.0, write).await },
            move |result| match result {
                // An explicit version never changes: its pages may stay cached across opens.
                Ok(o) if o.immutable => {
                    reply.opened(FileHandle(o.fh), FopenFlags::FOPEN_KEEP_CACHE)
                }
                // Direct I/O: reads always come to the daemon, which serves the snapshot taken
                // here, so a stale page cache or a stale size can never mix two versions.
                Ok(o) => reply.opened(FileHandle(o.fh), FopenFlags::FOPEN_DIRECT_IO),
                Err(e) => reply.error(failed(m, errno(&e))),
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
        let m = metrics::fuse_request(FuseOp::Read);
        // Handle 0: the kernel did not open the file (cached mode); read the inode as it is now.
        if fh.0 == 0 {
            let core = self.core.clone();
            return self.answer(
                async move { core.read_inode(ino.0, offset, size).await },
                move |result| match result {
                    Ok(bytes) => reply.data(&bytes),
                    Err(e) => reply.error(failed(m, errno(&e))),
                },
            );
        }
        if let Some(bytes) = self.core.read(ino.0, fh.0, offset, size) {
            return reply.data(&bytes);
        }
        // A handle this process never opened: a predecessor did, before a restart or upgrade.
        let core = self.core.clone();
        self.answer(
            async move { core.read_reopened(ino.0, fh.0, offset, size).await },
            move |result| match result {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => reply.error(failed(m, errno(&e))),
            },
        );
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

    /// Nothing is buffered for writing, so there is nothing to flush: "not implemented" makes
    /// the kernel stop sending FLUSH on every close (one round trip less per open file).
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Flush);
        reply.error(failed(m, Errno::ENOSYS));
    }

    /// Directories are listed once per open. The kernel may cache the listing
    /// (`FOPEN_CACHE_DIR`), and keeps what it cached when the listing is the one it got last
    /// time; otherwise it drops it, so a created or deleted object shows at the next `ls`.
    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Opendir);
        let core = self.core.clone();
        self.answer(
            async move { core.opendir(ino.0).await },
            move |result| match result {
                Ok(d) => {
                    let mut flags = FopenFlags::FOPEN_CACHE_DIR;
                    if d.unchanged {
                        flags |= FopenFlags::FOPEN_KEEP_CACHE;
                    }
                    reply.opened(FileHandle(d.fh), flags)
                }
                Err(e) => reply.error(failed(m, errno(&e))),
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
        let m = metrics::fuse_request(FuseOp::Readdir);
        // Every directory is opened through `opendir`, which holds its entries.
        if let Some(entries) = self.core.dir_entries(fh.0) {
            return fill_dir(reply, &entries, offset);
        }
        // Opened by a predecessor, before a restart or upgrade: list it again.
        let core = self.core.clone();
        self.answer(
            async move { core.reopen_dir(ino.0, fh.0).await },
            move |result| match result {
                Ok(entries) => fill_dir(reply, &entries, offset),
                Err(e) => reply.error(failed(m, errno(&e))),
            },
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
        let m = metrics::fuse_request(FuseOp::Getxattr);
        let Some(name) = utf8(name) else {
            return reply.error(failed(m, Errno::from_i32(libc::ENODATA)));
        };
        let core = self.core.clone();
        self.answer(
            async move { core.getxattr(ino.0, &name).await },
            move |result| match result {
                Ok(value) => reply_xattr(reply, size, &value),
                Err(e) => reply.error(failed(m, errno(&e))),
            },
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Listxattr);
        let core = self.core.clone();
        let gate = self.gate.clone();
        self.runtime.spawn(async move {
            let _owed = gate.owe();
            match core.listxattr(ino.0).await {
                Ok(names) => {
                    let mut buf = Vec::new();
                    for n in names {
                        buf.extend_from_slice(n.as_bytes());
                        buf.push(0);
                    }
                    reply_xattr(reply, size, &buf);
                }
                Err(e) => reply.error(failed(m, errno(&e))),
            }
        });
    }

    // Operations with nothing to do on a read-only tree of small files. fuser's defaults answer
    // the same but log a warning each time, and `isatty()` (Python's `open`, for one) sends an
    // ioctl on every open: a healthy read must not log.

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Ioctl);
        reply.error(failed(m, Errno::ENOTTY));
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Poll);
        // "Not implemented": the kernel then treats files as always ready, and stops asking.
        reply.error(failed(m, Errno::ENOSYS));
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Lseek);
        // SEEK_DATA/SEEK_HOLE: "not implemented" lets the kernel answer from the file size.
        reply.error(failed(m, Errno::ENOSYS));
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Fsync);
        // Nothing is ever written; "not implemented" makes the kernel succeed without asking.
        reply.error(failed(m, Errno::ENOSYS));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Fsyncdir);
        reply.error(failed(m, Errno::ENOSYS));
    }

    // Every mutation is refused. The mount is also `ro`, so the kernel usually answers these
    // itself; the daemon gives the same answer when asked.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Setattr);
        reply.error(failed(m, Errno::EROFS));
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Mknod);
        reply.error(failed(m, Errno::EROFS));
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Mkdir);
        reply.error(failed(m, Errno::EROFS));
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Unlink);
        reply.error(failed(m, Errno::EROFS));
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Rmdir);
        reply.error(failed(m, Errno::EROFS));
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Symlink);
        reply.error(failed(m, Errno::EROFS));
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Rename);
        reply.error(failed(m, Errno::EROFS));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Link);
        reply.error(failed(m, Errno::EROFS));
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Write);
        reply.error(failed(m, Errno::EROFS));
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Create);
        reply.error(failed(m, Errno::EROFS));
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Setxattr);
        reply.error(failed(m, Errno::EROFS));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        let _turn = self.gate.turn();
        let m = metrics::fuse_request(FuseOp::Removexattr);
        reply.error(failed(m, Errno::EROFS));
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
