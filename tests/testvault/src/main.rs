//! `testvault`: run the local Key Vault by hand or from scripts. Prints one JSON line describing
//! how to reach it, then serves until SIGTERM or SIGINT.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use testvault::{Options, Seed, Settings, TestVault};

#[derive(Parser, Debug)]
#[command(
    name = "testvault",
    about = "A local Azure Key Vault (data plane + token endpoints) for tests. Loopback only."
)]
struct Cli {
    /// HTTPS address for the vault, Entra ID endpoints and the /_testvault control API.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Plain-HTTP address for the managed-identity endpoints (IDENTITY_ENDPOINT and IMDS forms).
    #[arg(long, default_value = "127.0.0.1:0")]
    msi_listen: SocketAddr,
    /// JSON seed file with secrets, keys and certificates to start with.
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Directory for ca.pem, the client certificate and the federated token (default: a temporary one).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Fixed tenant id (default: random).
    #[arg(long)]
    tenant_id: Option<String>,
    /// Lifetime of issued access tokens, in seconds.
    #[arg(long, default_value_t = 3600)]
    token_lifetime_secs: i64,
    /// Also write the JSON line to this file (for scripts that start testvault in the background).
    #[arg(long)]
    info_file: Option<PathBuf>,
}

fn refuse_non_loopback(addr: &SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "refusing to listen on {addr}: testvault serves loopback addresses only"
        ))
    }
}

fn run(cli: Cli) -> Result<(), String> {
    refuse_non_loopback(&cli.listen)?;
    refuse_non_loopback(&cli.msi_listen)?;
    let seed = match &cli.seed {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read seed {}: {e}", path.display()))?;
            Some(Seed::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let settings = Settings {
        token_lifetime_secs: cli.token_lifetime_secs,
        ..Settings::default()
    };
    let vault = TestVault::start(Options {
        listen: cli.listen,
        msi_listen: cli.msi_listen,
        seed,
        state_dir: cli.state_dir,
        tenant_id: cli.tenant_id,
        settings,
    })
    .map_err(|e| format!("cannot start: {e}"))?;
    let line = serde_json::to_string(vault.info()).expect("info serialises");
    if let Some(path) = &cli.info_file {
        std::fs::write(path, format!("{line}\n"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    drop(out);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok::<(), String>(())
    })?;
    vault.stop();
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("testvault: {e}");
        std::process::exit(1);
    }
}
