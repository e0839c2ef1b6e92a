//! `kvfs mount` / `kvfs unmount`. Failures print one line on stderr and exit non-zero.

use kvfs::cli::CliError;
use kvfs::{daemon, logging, mount};

#[cfg(feature = "zeroize-freed-memory")]
#[global_allocator]
static ALLOCATOR: kvfs::harden::ZeroizingAlloc = kvfs::harden::ZeroizingAlloc(std::alloc::System);

fn main() {
    let readiness = daemon::Readiness::from_env();
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
    let result = mount::run_command(cli, readiness);
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
