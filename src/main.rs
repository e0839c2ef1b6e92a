//! `kvfs mount` / `kvfs unmount`. Failures print one line on stderr and exit non-zero.

use std::path::Path;

use std::os::fd::{FromRawFd, OwnedFd};

use clap::Parser;
use kvfs::cli::{Cli, Command};
use kvfs::ipc::Channel;
use kvfs::lifecycle::worker::{self, WORKER_FD_ENV};
use kvfs::{daemon, mount};

/// Logs go to stderr, or to `--log-file` (a detached daemon's stderr is /dev/null).
fn init_logging(file: Option<&Path>) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KVFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("kvfs=info,warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

fn run(cli: Cli, readiness: mount::Readiness) -> Result<(), String> {
    match cli.command {
        Command::Unmount { mountpoint } => {
            init_logging(None)?;
            mount::unmount(&mountpoint)
        }
        Command::Mount(args) => {
            // SAFETY: getuid/getgid cannot fail and have no preconditions.
            let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
            let settings = args.resolve(uid, gid)?;
            if let Some(control) = worker_channel() {
                init_logging(settings.log_file.as_deref())?;
                worker::run(settings, control);
            }
            if !settings.foreground {
                return daemon::detach_and_wait();
            }
            init_logging(settings.log_file.as_deref())?;
            mount::run(settings, readiness)
        }
    }
}

/// A worker finds its channel to the supervisor on the fd `KVFS_WORKER_FD` names.
fn worker_channel() -> Option<Channel> {
    let fd: i32 = std::env::var(WORKER_FD_ENV).ok()?.parse().ok()?;
    // SAFETY: the supervisor put this fd there for us alone (see lifecycle::supervisor); we take
    // ownership once, and remove the variable so no child of ours inherits the claim.
    unsafe { std::env::remove_var(WORKER_FD_ENV) };
    (fd > 2).then(|| Channel::from_fd(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn main() {
    let readiness = mount::Readiness::from_env();
    let args = match kvfs::cli::normalize_args(std::env::args_os().collect()) {
        kvfs::cli::Invocation::Run(args) => args,
        kvfs::cli::Invocation::Fake => return,
    };
    let cli = Cli::parse_from(args);
    if let Err(e) = run(cli, readiness) {
        eprintln!("kvfs: {e}");
        std::process::exit(1);
    }
}
