//! `kvfs mount` and `kvfs unmount`: readiness reporting to a detaching parent, the supervisor
//! that runs a mount, and a plain unmount.

use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::Path;

use crate::cli::MountSettings;
use crate::lifecycle::supervisor;

/// Environment variable naming the fd a detached child reports readiness on (see `daemon`).
pub const READY_FD_ENV: &str = "KVFS_READY_FD";

/// Reports the outcome of mounting to whoever waits for it (the detaching parent), once.
pub struct Readiness {
    pipe: Option<std::fs::File>,
}

impl Readiness {
    /// From `KVFS_READY_FD`, when this process is the detached child.
    pub fn from_env() -> Readiness {
        let pipe = std::env::var(READY_FD_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|fd| *fd > 2)
            // SAFETY: the parent passed this fd for us alone and nothing else in this process
            // owns it; we take ownership exactly once.
            .map(|fd| unsafe { std::fs::File::from_raw_fd(fd) });
        // SAFETY: no other thread is running yet (called first thing in main).
        unsafe { std::env::remove_var(READY_FD_ENV) };
        Readiness { pipe }
    }

    pub fn none() -> Readiness {
        Readiness { pipe: None }
    }

    fn send(&mut self, line: &str) {
        if let Some(mut p) = self.pipe.take() {
            let _ = writeln!(p, "{line}");
        }
    }

    pub fn ready(&mut self) {
        self.send("ready");
    }

    pub fn failed(&mut self, reason: &str) {
        self.send(&format!("error: {reason}"));
    }
}

fn c_path(path: &Path) -> Result<std::ffi::CString, String> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))
}

/// `kvfs unmount`: a plain unmount; busy mounts are reported, not forced.
pub fn unmount(path: &Path) -> Result<(), String> {
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
pub fn run(settings: MountSettings, mut readiness: Readiness) -> Result<(), String> {
    let result = supervisor::run(settings, &mut readiness);
    if let Err(e) = &result {
        readiness.failed(e);
    }
    result
}
