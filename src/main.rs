//! `kvfs mount` / `kvfs unmount`. Failures print one line on stderr and exit non-zero.

use std::os::fd::{FromRawFd, OwnedFd};

use kvfs::cli::{Cli, CliError, Command, MountSettings};
use kvfs::ipc::Channel;
use kvfs::lifecycle::worker::{self, WORKER_FD_ENV};
use kvfs::{daemon, harden, logging, mount};

#[cfg(feature = "zeroize-freed-memory")]
#[global_allocator]
static ALLOCATOR: kvfs::harden::ZeroizingAlloc = kvfs::harden::ZeroizingAlloc(std::alloc::System);

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

fn run(cli: Cli, readiness: mount::Readiness) -> Result<(), String> {
    match cli.command {
        Command::Unmount { mountpoint } => {
            logging::init(None)?;
            mount::unmount(&mountpoint)
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
    let cli = match kvfs::cli::parse(args) {
        Ok(cli) => cli,
        // clap's report with the usage (or the help or version asked for) and its exit code.
        Err(CliError::Usage(e)) => e.exit(),
        Err(CliError::Invalid(line)) => fail(&line),
    };
    let result = run(cli, readiness);
    // Queued log lines first, then the one-line reason after them.
    logging::flush();
    if let Err(e) = result {
        fail(&e);
    }
}

fn fail(reason: &str) -> ! {
    eprintln!("kvfs: {reason}");
    std::process::exit(1);
}
