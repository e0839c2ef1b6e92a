//! The command line of doc/CONFIGURATION.md. [`MountArgs`] is the one table of mount options:
//! each field's flag, help, default (taken from the type it configures) and value parser. `-o`
//! options are rewritten into those flags before clap parses ([`parse`]), and what clap cannot
//! do alone is [`MountArgs::resolve`]'s.
//!
//! Adding an option: a field of [`MountArgs`] (its `-o` form comes with it), and the
//! [`MountSettings`] field it resolves to.

mod helper;
mod parse;
mod settings;
#[cfg(test)]
mod tests;
mod values;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub(crate) use crate::auth::AuthMethod;
use crate::config::{HumanDuration, OctalMode};
use crate::fs::cache::CacheConfig;
use crate::fs::core::{OpenMode, Ownership};
use crate::fs::prefetch::DEFAULT_CONCURRENCY;
use crate::fusedev::DEFAULT_HANG_TIMEOUT;
use crate::logging::LogFormat;
pub use helper::{Invocation, normalize_args};
pub(crate) use parse::mount_settings;
pub use parse::{CliError, parse};
pub(crate) use settings::MountSettings;
pub(crate) use settings::vault_url;
use values::{
    authority_host, duration, imds_endpoint, listen_addr, mode, number, prefetch_concurrency,
};

#[derive(Parser, Debug)]
#[command(
    name = "kvfs",
    version,
    about = "Mount an Azure Key Vault as a live, read-only filesystem"
)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Mount a vault (a vault name or an https:// URL) on a directory.
    // The last of a flag's occurrences wins: `-o` options are put before the command line's
    // flags so that a flag given there wins over the same option in `-o`.
    #[command(args_override_self = true)]
    Mount(Box<MountArgs>),
    /// Unmount a kvfs mount.
    Unmount { mountpoint: PathBuf },
}

#[derive(Args, Debug, Clone)]
pub(crate) struct MountArgs {
    /// A vault name (myvault) or its URL (https://myvault.vault.azure.net).
    pub vault: String,
    pub mountpoint: PathBuf,

    /// Stay attached; by default kvfs detaches once the mount answers.
    #[arg(long, short = 'f')]
    pub foreground: bool,

    #[arg(long, value_name = "DURATION", help_heading = "Freshness",
        value_parser = duration(), default_value_t = HumanDuration(CacheConfig::default().ttl))]
    /// How stale a value may be: a change in the vault shows after at most this.
    pub cache_ttl: HumanDuration,
    #[arg(long, value_name = "DURATION", help_heading = "Freshness",
        value_parser = duration(), default_value_t = HumanDuration(CacheConfig::default().max_stale))]
    /// How long the last good value outlives a vault outage.
    pub max_stale: HumanDuration,
    #[arg(long, value_name = "MODE", help_heading = "Freshness", value_enum,
        default_value_t = OpenMode::default())]
    /// snapshot: every open takes a snapshot, an open descriptor reads the bytes it opened, reads
    /// go to kvfs. cached: no open round trip, reads come from the kernel's page cache at tmpfs
    /// speed; a descriptor held across a rotation reads the new value.
    pub open_mode: OpenMode,
    #[arg(long, value_name = "N", help_heading = "Freshness",
        value_parser = prefetch_concurrency(), default_value_t = DEFAULT_CONCURRENCY)]
    /// When a program stats what it lists (ls -l), fetch the next values ahead, at most N at a
    /// time and at most 3,000 per 10 s (0 = off: one value per lookup).
    pub prefetch_concurrency: usize,

    #[arg(long, value_name = "METHOD", help_heading = "Identity", value_enum,
        default_value_t = AuthMethod::Auto)]
    /// How kvfs gets its token (auto: the first usable method, in the order of doc/AUTH.md).
    pub auth: AuthMethod,
    #[arg(long, value_name = "ID", help_heading = "Identity")]
    /// App registration, or user-assigned managed identity (AZURE_CLIENT_ID is honoured too).
    pub client_id: Option<String>,
    #[arg(long, value_name = "ID", help_heading = "Identity")]
    /// Entra ID tenant (AZURE_TENANT_ID is honoured too).
    pub tenant_id: Option<String>,
    #[arg(long, value_name = "NAME", help_heading = "Identity", value_enum,
        default_value_t = Cloud::default())]
    /// The DNS suffix of vault names and the authority host.
    pub cloud: Cloud,
    #[arg(long, value_name = "URL", help_heading = "Identity", value_parser = authority_host)]
    /// Entra ID authority host (AZURE_AUTHORITY_HOST is honoured too).
    pub authority_host: Option<String>,
    #[arg(long, value_name = "URL", help_heading = "Identity", value_parser = imds_endpoint)]
    /// Instance metadata service for managed identity (KVFS_IMDS_ENDPOINT is honoured too;
    /// default http://169.254.169.254).
    pub imds_endpoint: Option<String>,

    #[arg(long, value_name = "PEM", help_heading = "TLS")]
    /// Extra trust roots, in addition to the system's (SSL_CERT_FILE is honoured too).
    pub ca_file: Vec<PathBuf>,
    #[arg(long, help_heading = "TLS")]
    /// Accept a vault whose host is not under the challenge's resource domain (local emulators).
    pub no_verify_challenge_resource: bool,

    #[arg(long, help_heading = "Access")]
    /// Let other users reach the mount (they still need the file modes to read).
    pub allow_other: bool,
    #[arg(long, help_heading = "Access", value_parser = number())]
    /// Owner of every file and directory (default: the mounting user).
    pub uid: Option<u32>,
    #[arg(long, help_heading = "Access", value_parser = number())]
    /// Group of every file and directory (default: the mounting user's).
    pub gid: Option<u32>,
    #[arg(long, value_name = "OCTAL", help_heading = "Access", value_parser = mode(),
        default_value_t = OctalMode(Ownership::DEFAULT_FILE_MODE))]
    /// Mode of files.
    pub file_mode: OctalMode,
    #[arg(long, value_name = "OCTAL", help_heading = "Access", value_parser = mode(),
        default_value_t = OctalMode(Ownership::DEFAULT_DIR_MODE))]
    /// Mode of directories.
    pub dir_mode: OctalMode,

    /// Write logs to this file (appending) instead of stderr; a detached daemon has no stderr.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// json: one JSON object per line with mount, vault, kind, op, errno and cause fields, for
    /// log pipelines.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::default())]
    pub log_format: LogFormat,

    #[arg(long, value_name = "DURATION", help_heading = "Restarts and upgrades",
        value_parser = duration(), default_value_t = HumanDuration(DEFAULT_HANG_TIMEOUT))]
    /// A request to kvfs that gets no answer for this long (kvfs stopped or stuck, and its
    /// supervisor with it) fails the mount (ENOTCONN) instead of hanging its readers for ever
    /// (0 = never; Linux 6.14+).
    pub hang_timeout: HumanDuration,
    #[arg(long, value_name = "PATH", help_heading = "Restarts and upgrades")]
    /// Where this mount's supervisor listens for a successor (a new kvfs for the same
    /// mountpoint takes the live mount over through it). Default: /run/kvfs/<mountpoint>.sock
    /// (root) or $XDG_RUNTIME_DIR/kvfs/<mountpoint>.sock. Two containers upgrading one mount
    /// must see the same file.
    pub control_socket: Option<PathBuf>,
    #[arg(long, value_name = "WHAT", help_heading = "Restarts and upgrades", value_enum,
        default_value_t = AfterHandoff::default())]
    /// exit: once a successor has taken the mount over, exit 0 without unmounting. wait: stay
    /// idle until SIGTERM, then exit 0 without unmounting (a DaemonSet container, which would
    /// otherwise be restarted).
    pub after_handoff: AfterHandoff,

    #[arg(long, value_name = "ADDR", help_heading = "Monitoring", value_parser = listen_addr())]
    /// Serve /metrics (Prometheus), /healthz and /readyz on this IP:PORT, e.g. 127.0.0.1:9464
    /// (default: off). The port keeps answering across worker restarts and upgrades.
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// The same options in mount(8) form: -o allow_other,cache_ttl=30s,uid=1000
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
}

/// Which Entra ID cloud: vault DNS suffix and default authority host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum Cloud {
    #[default]
    #[value(alias = "AzurePublicCloud")]
    Public,
    #[value(alias = "AzureChinaCloud")]
    China,
    #[value(name = "usgov", alias = "AzureUSGovernment")]
    UsGov,
}

impl Cloud {
    pub(crate) fn vault_suffix(self) -> &'static str {
        match self {
            Cloud::Public => "vault.azure.net",
            Cloud::China => "vault.azure.cn",
            Cloud::UsGov => "vault.usgovcloudapi.net",
        }
    }

    pub(crate) fn authority_host(self) -> &'static str {
        match self {
            Cloud::Public => "https://login.microsoftonline.com",
            Cloud::China => "https://login.chinacloudapi.cn",
            Cloud::UsGov => "https://login.microsoftonline.us",
        }
    }
}

/// What a supervisor does once a successor has taken its mount over (`--after-handoff`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum AfterHandoff {
    #[default]
    Exit,
    Wait,
}
