//! Detaching: `kvfs mount` without `--foreground` starts itself again in a new session with
//! `--foreground`, waits until that child reports the mount ready (or failed) over a pipe, and
//! exits 0 (or 1 with the child's one-line reason). Re-executing instead of fork() keeps the
//! child free of a half-copied multi-threaded runtime. The child reports through [`Readiness`].

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// The fd number the child finds its end of the pipe on.
const CHILD_FD: i32 = 3;

pub(crate) fn detach_and_wait() -> Result<(), String> {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!(
            "cannot create a pipe: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: pipe2 just returned these two fresh descriptors, owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the kvfs binary: {e}"))?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    args.push("--foreground".into());
    let write_raw = write_end.as_raw_fd();
    let mut command = Command::new(exe);
    command
        .args(args)
        .env(READY_FD_ENV, CHILD_FD.to_string())
        // The daemon outlives this command: it must not hold the caller's terminal or pipes
        // (a script capturing our output would wait forever). Logs go to --log-file, or to
        // systemd's journal when that is our stderr (a reload's successor, a mount unit's
        // helper): nobody waits for the journal's end of file.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if stderr_is_journal() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    // SAFETY: only async-signal-safe calls (setsid, dup2) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears close-on-exec on the new descriptor, so the child keeps it.
            if libc::dup2(write_raw, CHILD_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start the kvfs daemon: {e}"))?;
    drop(write_end);
    let mut answer = String::new();
    let mut pipe = std::fs::File::from(read_end);
    let _ = pipe.read_to_string(&mut answer);
    let answer = answer.trim();
    if answer == "ready" {
        return Ok(());
    }
    if let Some(reason) = answer.strip_prefix("error: ") {
        let _ = child.wait();
        return Err(reason.to_string());
    }
    let status = child
        .wait()
        .map(|s| s.to_string())
        .unwrap_or_else(|e| e.to_string());
    Err(format!(
        "the kvfs daemon ended before the mount was ready ({status})"
    ))
}

/// Whether stderr is systemd's journal: systemd sets `$JOURNAL_STREAM` to `DEVICE:INODE` of the
/// stream it connects a service's stderr to (and so do the commands of a mount unit).
fn stderr_is_journal() -> bool {
    // SAFETY: libc::stat is plain data, for which all zeroes is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat only writes into the struct it is given.
    if unsafe { libc::fstat(libc::STDERR_FILENO, &mut st) } != 0 {
        return false;
    }
    std::env::var("JOURNAL_STREAM")
        .is_ok_and(|v| names_stream(&v, st.st_dev as u64, st.st_ino as u64))
}

/// Whether a `$JOURNAL_STREAM` value names the file with this device and inode.
fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    value
        .split_once(':')
        .is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
}

/// Environment variable naming the fd a detached child reports readiness on (see `daemon`).
pub(crate) const READY_FD_ENV: &str = "KVFS_READY_FD";

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

    fn send(&mut self, line: &str) {
        if let Some(mut p) = self.pipe.take() {
            let _ = writeln!(p, "{line}");
        }
    }

    pub(crate) fn ready(&mut self) {
        self.send("ready");
    }

    pub(crate) fn failed(&mut self, reason: &str) {
        self.send(&format!("error: {reason}"));
    }
}

#[cfg(test)]
mod tests {
    use super::names_stream;

    #[test]
    fn journal_stream_names_one_device_and_inode() {
        assert!(names_stream("8:12345", 8, 12345));
        assert!(!names_stream("8:12345", 8, 12346));
        assert!(!names_stream("9:12345", 8, 12345));
        for bad in ["", "8", "8:", ":12345", "8:12345:1", "x:y"] {
            assert!(!names_stream(bad, 8, 12345), "{bad:?}");
        }
    }
}
