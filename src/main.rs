//! `kvfs mount` / `kvfs unmount`. Failures print one line on stderr and exit non-zero.

use std::path::Path;

use clap::Parser;
use kvfs::cli::{Cli, Command};
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
            if !settings.foreground {
                return daemon::detach_and_wait();
            }
            init_logging(settings.log_file.as_deref())?;
            mount::run(settings, readiness)
        }
    }
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
