//! Detaching: `kvfs mount` without `--foreground` starts itself again in a new session with
//! `--foreground`, waits until that child reports the mount ready (or failed) over a pipe, and
//! exits 0 (or 1 with the child's one-line reason). Re-executing instead of fork() keeps the
//! child free of a half-copied multi-threaded runtime.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::mount::READY_FD_ENV;

/// The fd number the child finds its end of the pipe on.
const CHILD_FD: i32 = 3;

pub fn detach_and_wait() -> Result<(), String> {
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
        // (a script capturing our output would wait forever). Logs go to --log-file.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
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
