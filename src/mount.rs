//! `kvfs mount` and `kvfs unmount`: readiness reporting to a detaching parent, the supervisor
//! that runs a mount, and a plain unmount.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use crate::cli::{Cli, Command, MountSettings};
use crate::daemon::{self, Readiness};
use crate::ipc::Channel;
use crate::lifecycle::supervisor;
use crate::lifecycle::worker::{self, WORKER_FD_ENV};
use crate::{harden, logging};

/// Run a parsed command line: `kvfs unmount`, or `kvfs mount` as whichever process this is (a
/// worker its supervisor started, the detaching parent, or the supervisor itself).
pub fn run_command(cli: Cli, readiness: Readiness) -> Result<(), String> {
    match cli.command {
        Command::Unmount { mountpoint } => {
            logging::init(None)?;
            unmount(&mountpoint)
        }
        Command::Mount(args) => {
            // SAFETY: getuid/getgid cannot fail and have no preconditions.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            let settings = args.resolve(uid, gid)?;
            if let Some(control) = worker_channel() {
                init_serving_process(&settings)?;
                worker::run(settings, control);
            }
            if !settings.foreground {
                return daemon::detach_and_wait();
            }
            init_serving_process(&settings)?;
            run(settings, readiness)
        }
    }
}

/// Logs go to stderr, or to `--log-file` (a detached daemon's stderr is /dev/null). A process
/// that holds secrets (the supervisor's environment may carry the credential; the worker holds
/// tokens and values) is made non-dumpable as soon as its logger can say if that failed.
fn init_serving_process(settings: &MountSettings) -> Result<(), String> {
    logging::init_with(
        settings.log_file.as_deref(),
        settings.log_format,
        settings.log_context(),
    )?;
    harden::process();
    Ok(())
}

/// A worker finds its channel to the supervisor on the fd `KVFS_WORKER_FD` names.
fn worker_channel() -> Option<Channel> {
    let fd: i32 = std::env::var(WORKER_FD_ENV).ok()?.parse().ok()?;
    // SAFETY: the supervisor put this fd there for us alone (see lifecycle::supervisor); we take
    // ownership once, and remove the variable so no child of ours inherits the claim.
    unsafe { std::env::remove_var(WORKER_FD_ENV) };
    (fd > 2).then(|| Channel::from_fd(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn c_path(path: &Path) -> Result<std::ffi::CString, String> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))
}

/// `kvfs unmount`: a plain unmount; busy mounts are reported, not forced.
pub(crate) fn unmount(path: &Path) -> Result<(), String> {
    let c = c_path(path)?;
    // SAFETY: as above.
    let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::EBUSY) => format!(
            "{} is busy: close the files open on it, or detach it with `umount -l {}`",
            path.display(),
            path.display()
        ),
        Some(libc::EINVAL) => format!("{} is not a mount point", path.display()),
        Some(libc::EPERM) => format!(
            "not permitted to unmount {}: run as root (or `fusermount3 -u {}`)",
            path.display(),
            path.display()
        ),
        _ => format!("cannot unmount {}: {e}", path.display()),
    })
}

/// Mount and serve until stopped: this process supervises, workers serve (see
/// [`crate::lifecycle`]).
pub(crate) fn run(settings: MountSettings, mut readiness: Readiness) -> Result<(), String> {
    let result = supervisor::run(settings, &mut readiness);
    if let Err(e) = &result {
        readiness.failed(e);
    }
    result
}
