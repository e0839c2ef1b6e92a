//! The command line of doc/CONFIGURATION.md, and its resolution (flags, then `-o` options, then defaults)
//! into a [`MountSettings`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::auth::AuthMethod;
use crate::config::{self, MountOpt};
use crate::fs::core::OpenMode;
use crate::logging::{LineContext, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "kvfs",
    version,
    about = "Mount an Azure Key Vault as a live, read-only filesystem"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount a vault (a vault name or an https:// URL) on a directory.
    Mount(Box<MountArgs>),
    /// Unmount a kvfs mount.
    Unmount { mountpoint: PathBuf },
}

#[derive(Args, Debug, Default, Clone)]
pub struct MountArgs {
    /// A vault name (myvault) or its URL (https://myvault.vault.azure.net).
    pub vault: String,
    pub mountpoint: PathBuf,

    /// Stay attached; by default kvfs detaches once the mount answers.
    #[arg(long, short = 'f')]
    pub foreground: bool,

    #[arg(long, value_name = "DURATION", help_heading = "Freshness")]
    /// How stale a value may be: a change in the vault shows after at most this (default 60s).
    pub cache_ttl: Option<String>,
    #[arg(long, value_name = "DURATION", help_heading = "Freshness")]
    /// How long the last good value outlives a vault outage (default 24h).
    pub max_stale: Option<String>,
    #[arg(long, value_name = "MODE", help_heading = "Freshness")]
    /// snapshot (default): every open takes a snapshot, an open descriptor reads the bytes it
    /// opened, reads go to kvfs. cached: no open round trip, reads come from the kernel's page
    /// cache at tmpfs speed; a descriptor held across a rotation reads the new value.
    pub open_mode: Option<String>,
    #[arg(long, value_name = "N", help_heading = "Freshness")]
    /// When a program stats what it lists (ls -l), fetch the next values ahead, at most N at a
    /// time and at most 3,000 per 10 s (default 16; 0 = off: one value per lookup).
    pub prefetch_concurrency: Option<u32>,

    #[arg(long, value_name = "METHOD", help_heading = "Identity")]
    /// auto | workload-identity | managed-identity | azure-cli | client-secret |
    /// client-certificate (default auto).
    pub auth: Option<String>,
    #[arg(long, value_name = "ID", help_heading = "Identity")]
    /// App registration, or user-assigned managed identity (AZURE_CLIENT_ID is honoured too).
    pub client_id: Option<String>,
    #[arg(long, value_name = "ID", help_heading = "Identity")]
    /// Entra ID tenant (AZURE_TENANT_ID is honoured too).
    pub tenant_id: Option<String>,
    #[arg(long, value_name = "NAME", help_heading = "Identity")]
    /// public (default) | china | usgov: the DNS suffix of vault names and the authority host.
    pub cloud: Option<String>,
    #[arg(long, value_name = "URL", help_heading = "Identity")]
    /// Entra ID authority host (AZURE_AUTHORITY_HOST is honoured too).
    pub authority_host: Option<String>,
    #[arg(long, value_name = "URL", help_heading = "Identity")]
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
    #[arg(long, help_heading = "Access")]
    pub uid: Option<u32>,
    #[arg(long, help_heading = "Access")]
    pub gid: Option<u32>,
    #[arg(long, value_name = "OCTAL", help_heading = "Access")]
    /// Mode of files (default 0400).
    pub file_mode: Option<String>,
    #[arg(long, value_name = "OCTAL", help_heading = "Access")]
    /// Mode of directories (default 0500).
    pub dir_mode: Option<String>,

    /// Write logs to this file (appending) instead of stderr; a detached daemon has no stderr.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// text (default) | json: one JSON object per line with mount, vault, kind, op, errno and
    /// cause fields, for log pipelines.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,

    #[arg(long, value_name = "DURATION", help_heading = "Restarts and upgrades")]
    /// A request to kvfs that gets no answer for this long (kvfs stopped or stuck, and its
    /// supervisor with it) fails the mount (ENOTCONN) instead of hanging its readers for ever
    /// (default 2m, 0 = never; Linux 6.14+).
    pub hang_timeout: Option<String>,
    #[arg(long, value_name = "PATH", help_heading = "Restarts and upgrades")]
    /// Where this mount's supervisor listens for a successor (a new kvfs for the same
    /// mountpoint takes the live mount over through it). Default: /run/kvfs/<mountpoint>.sock
    /// (root) or $XDG_RUNTIME_DIR/kvfs/<mountpoint>.sock. Two containers upgrading one mount
    /// must see the same file.
    pub control_socket: Option<PathBuf>,
    #[arg(long, value_name = "WHAT", help_heading = "Restarts and upgrades")]
    /// exit (default): once a successor has taken the mount over, exit 0 without unmounting.
    /// wait: stay idle until SIGTERM, then exit 0 without unmounting (a DaemonSet container,
    /// which would otherwise be restarted).
    pub after_handoff: Option<String>,

    #[arg(long, value_name = "ADDR", help_heading = "Monitoring")]
    /// Serve /metrics (Prometheus), /healthz and /readyz on this IP:PORT, e.g. 127.0.0.1:9464
    /// (default: off). The port keeps answering across worker restarts and upgrades.
    pub metrics_addr: Option<String>,

    /// The same options in mount(8) form: -o allow_other,cache_ttl=30s,uid=1000
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
}

/// Which Entra ID cloud: vault DNS suffix and default authority host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cloud {
    Public,
    China,
    UsGov,
}

impl Cloud {
    fn parse(s: &str) -> Result<Cloud, String> {
        match s {
            "public" | "AzurePublicCloud" => Ok(Cloud::Public),
            "china" | "AzureChinaCloud" => Ok(Cloud::China),
            "usgov" | "AzureUSGovernment" => Ok(Cloud::UsGov),
            other => Err(format!(
                "unknown cloud {other:?}: use public, china or usgov"
            )),
        }
    }

    pub fn vault_suffix(self) -> &'static str {
        match self {
            Cloud::Public => "vault.azure.net",
            Cloud::China => "vault.azure.cn",
            Cloud::UsGov => "vault.usgovcloudapi.net",
        }
    }

    pub fn authority_host(self) -> &'static str {
        match self {
            Cloud::Public => "https://login.microsoftonline.com",
            Cloud::China => "https://login.chinacloudapi.cn",
            Cloud::UsGov => "https://login.microsoftonline.us",
        }
    }
}

/// What a supervisor does once a successor has taken its mount over (`--after-handoff`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterHandoff {
    Exit,
    Wait,
}

/// Everything a mount needs, resolved and checked.
#[derive(Clone, Debug)]
pub struct MountSettings {
    pub vault_url: url::Url,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub cache_ttl: Duration,
    pub max_stale: Duration,
    pub open_mode: OpenMode,
    /// `--prefetch-concurrency`: prefetches in flight at most (0: no prefetch).
    pub prefetch_concurrency: usize,
    pub auth: AuthMethod,
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
    pub cloud: Cloud,
    pub authority_host: Option<String>,
    /// `--imds-endpoint`/`-o imds_endpoint=`; `KVFS_IMDS_ENDPOINT` and the default are applied
    /// by [`crate::auth`].
    pub imds_endpoint: Option<String>,
    pub ca_files: Vec<PathBuf>,
    pub verify_challenge_resource: bool,
    pub allow_other: bool,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    pub log_file: Option<PathBuf>,
    pub log_format: LogFormat,
    /// `None`: the default place for this mountpoint (see `lifecycle::paths`).
    pub control_socket: Option<PathBuf>,
    pub after_handoff: AfterHandoff,
    /// `--hang-timeout`: the kernel's limit on one request's wait (zero: none).
    pub hang_timeout: Duration,
    /// `--metrics-addr`: where the metrics and health endpoints listen (`None`: off).
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl MountSettings {
    /// What every JSON log line of this mount says about where it comes from.
    pub fn log_context(&self) -> LineContext {
        LineContext {
            mount: self.mountpoint.display().to_string(),
            vault: match self.vault_url.port() {
                Some(port) => format!("{}:{port}", self.vault_url.host_str().unwrap_or_default()),
                None => self.vault_url.host_str().unwrap_or_default().to_owned(),
            },
        }
    }
}

pub(crate) fn vault_url(vault: &str, cloud: Cloud) -> Result<url::Url, String> {
    if vault.contains("://") {
        let url =
            url::Url::parse(vault).map_err(|e| format!("invalid vault URL {vault:?}: {e}"))?;
        if url.scheme() != "https" {
            return Err(format!(
                "invalid vault URL {vault:?}: Key Vault is reached over https only"
            ));
        }
        if url.host_str().is_none() {
            return Err(format!("invalid vault URL {vault:?}: no host"));
        }
        return Ok(url);
    }
    // Vault names: 3–24 characters, letters, digits and hyphens, starting with a letter.
    let ok = (3..=24).contains(&vault.len())
        && vault.starts_with(|c: char| c.is_ascii_alphabetic())
        && vault
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !ok {
        return Err(format!(
            "invalid vault name {vault:?}: 3-24 letters, digits and hyphens, starting with a letter (or give an https:// URL)"
        ));
    }
    url::Url::parse(&format!("https://{vault}.{}", cloud.vault_suffix()))
        .map_err(|e| format!("invalid vault name {vault:?}: {e}"))
}

fn flag_or(flag: bool, o: &[MountOpt], key: &str) -> Result<bool, String> {
    match o.iter().rev().find(|x| x.key == key) {
        Some(MountOpt { value: None, .. }) => Ok(true),
        Some(MountOpt { value: Some(v), .. }) => {
            Err(format!("mount option {key} takes no value (got {key}={v})"))
        }
        None => Ok(flag),
    }
}

impl MountArgs {
    /// Resolve flags, `-o` options and defaults; the first problem is a one-line error.
    pub fn resolve(&self, current_uid: u32, current_gid: u32) -> Result<MountSettings, String> {
        let o: Vec<MountOpt> = self
            .options
            .iter()
            .flat_map(|s| config::parse_o(s))
            .collect();
        const KNOWN: &[&str] = &[
            "cache_ttl",
            "max_stale",
            "open_mode",
            "prefetch_concurrency",
            "auth",
            "client_id",
            "tenant_id",
            "cloud",
            "authority_host",
            "imds_endpoint",
            "ca_file",
            "no_verify_challenge_resource",
            "allow_other",
            "uid",
            "gid",
            "file_mode",
            "dir_mode",
            "foreground",
            "log_file",
            "log_format",
            "control_socket",
            "after_handoff",
            "hang_timeout",
            "metrics_addr",
        ];
        if let Some(bad) = o.iter().find(|x| !KNOWN.contains(&x.key.as_str())) {
            return Err(format!("unknown mount option {:?}", bad.key));
        }
        let value = |key: &str| -> Result<Option<String>, String> {
            match o.iter().rev().find(|x| x.key == key) {
                Some(MountOpt { value: Some(v), .. }) => Ok(Some(v.clone())),
                Some(MountOpt { value: None, .. }) => {
                    Err(format!("mount option {key} needs a value ({key}=…)"))
                }
                None => Ok(None),
            }
        };
        let pick = |flag: &Option<String>, key: &str| -> Result<Option<String>, String> {
            Ok(flag.clone().or(value(key)?))
        };
        let cloud = match pick(&self.cloud, "cloud")? {
            Some(c) => Cloud::parse(&c)?,
            None => Cloud::Public,
        };
        let auth = match pick(&self.auth, "auth")? {
            None => AuthMethod::Auto,
            Some(name) => name.parse()?,
        };
        let after_handoff = match pick(&self.after_handoff, "after_handoff")?.as_deref() {
            None | Some("exit") => AfterHandoff::Exit,
            Some("wait") => AfterHandoff::Wait,
            Some(other) => {
                return Err(format!(
                    "unknown --after-handoff {other:?}: use exit or wait"
                ));
            }
        };
        let duration = |flag: &Option<String>, key: &str, default: Duration| {
            pick(flag, key)?.map_or(Ok(default), |v| {
                config::parse_duration(&v).map_err(|e| format!("--{}: {e}", key.replace('_', "-")))
            })
        };
        let cache_ttl = duration(&self.cache_ttl, "cache_ttl", Duration::from_secs(60))?;
        let max_stale = duration(&self.max_stale, "max_stale", Duration::from_secs(86_400))?;
        let hang_timeout = duration(&self.hang_timeout, "hang_timeout", Duration::from_secs(120))?;
        let metrics_addr = pick(&self.metrics_addr, "metrics_addr")?
            .map(|a| config::parse_listen_addr(&a).map_err(|e| format!("--metrics-addr: {e}")))
            .transpose()?;
        let open_mode = match pick(&self.open_mode, "open_mode")?.as_deref() {
            None | Some("snapshot") => OpenMode::Snapshot,
            Some("cached") => OpenMode::Cached,
            Some(other) => {
                return Err(format!(
                    "unknown --open-mode {other:?}: use snapshot or cached"
                ));
            }
        };
        let mode = |flag: &Option<String>, key: &str, default: u16| {
            pick(flag, key)?.map_or(Ok(default), |v| {
                config::parse_mode(&v).map_err(|e| format!("--{}: {e}", key.replace('_', "-")))
            })
        };
        let number = |flag: Option<u32>, key: &str, default: u32| -> Result<u32, String> {
            match flag {
                Some(n) => Ok(n),
                None => value(key)?.map_or(Ok(default), |v| {
                    v.parse()
                        .map_err(|_| format!("--{}: {v:?} is not a number", key.replace('_', "-")))
                }),
            }
        };
        let prefetch_concurrency = number(
            self.prefetch_concurrency,
            "prefetch_concurrency",
            crate::fs::prefetch::DEFAULT_CONCURRENCY as u32,
        )? as usize;
        if prefetch_concurrency > crate::fs::prefetch::MAX_CONCURRENCY {
            return Err(format!(
                "--prefetch-concurrency {prefetch_concurrency}: at most {}",
                crate::fs::prefetch::MAX_CONCURRENCY
            ));
        }
        let mut ca_files = self.ca_file.clone();
        ca_files.extend(
            o.iter()
                .filter(|x| x.key == "ca_file")
                .filter_map(|x| x.value.clone())
                .map(PathBuf::from),
        );
        let authority_host = pick(&self.authority_host, "authority_host")?;
        if let Some(a) = &authority_host
            && !a.starts_with("https://")
        {
            return Err(format!("--authority-host {a:?} must be an https:// URL"));
        }
        let imds_endpoint = pick(&self.imds_endpoint, "imds_endpoint")?;
        if let Some(e) = &imds_endpoint {
            let ok = url::Url::parse(e)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
            if !ok {
                return Err(format!(
                    "--imds-endpoint {e:?} must be an http:// URL (e.g. http://169.254.169.254)"
                ));
            }
        }
        Ok(MountSettings {
            vault_url: vault_url(&self.vault, cloud)?,
            mountpoint: self.mountpoint.clone(),
            foreground: flag_or(self.foreground, &o, "foreground")?,
            cache_ttl,
            max_stale,
            open_mode,
            prefetch_concurrency,
            auth,
            client_id: pick(&self.client_id, "client_id")?,
            tenant_id: pick(&self.tenant_id, "tenant_id")?,
            cloud,
            authority_host,
            imds_endpoint,
            ca_files,
            verify_challenge_resource: !flag_or(
                self.no_verify_challenge_resource,
                &o,
                "no_verify_challenge_resource",
            )?,
            allow_other: flag_or(self.allow_other, &o, "allow_other")?,
            uid: number(self.uid, "uid", current_uid)?,
            gid: number(self.gid, "gid", current_gid)?,
            file_mode: mode(&self.file_mode, "file_mode", 0o400)?,
            dir_mode: mode(&self.dir_mode, "dir_mode", 0o500)?,
            log_file: self
                .log_file
                .clone()
                .or(value("log_file")?.map(PathBuf::from)),
            log_format: pick(&self.log_format, "log_format")?
                .map_or(Ok(LogFormat::Text), |f| LogFormat::parse(&f))?,
            control_socket: self
                .control_socket
                .clone()
                .or(value("control_socket")?.map(PathBuf::from)),
            after_handoff,
            hang_timeout,
            metrics_addr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(vault: &str) -> MountArgs {
        MountArgs {
            vault: vault.into(),
            mountpoint: "/mnt/kv".into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_follow_configuration_md() {
        let s = args("myvault").resolve(1000, 1000).unwrap();
        assert_eq!(s.vault_url.as_str(), "https://myvault.vault.azure.net/");
        assert_eq!(s.cache_ttl, Duration::from_secs(60));
        assert_eq!(s.max_stale, Duration::from_secs(86_400));
        assert_eq!((s.file_mode, s.dir_mode), (0o400, 0o500));
        assert_eq!((s.uid, s.gid), (1000, 1000));
        assert!(!s.allow_other && s.verify_challenge_resource && !s.foreground);
        assert_eq!(s.open_mode, OpenMode::Snapshot);
        assert_eq!(s.hang_timeout, Duration::from_secs(120));
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn log_format_from_flag_or_o_and_the_context_names_mount_and_vault() {
        let mut a = args("https://127.0.0.1:8443");
        a.options = vec!["log_format=json".into()];
        let s = a.resolve(0, 0).unwrap();
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(
            s.log_context(),
            LineContext {
                mount: "/mnt/kv".into(),
                vault: "127.0.0.1:8443".into()
            }
        );
        a.log_format = Some("yaml".into());
        let e = a.resolve(0, 0).unwrap_err();
        assert_eq!(e, "unknown --log-format \"yaml\": use text or json");
        assert_eq!(
            args("myvault").resolve(0, 0).unwrap().log_context().vault,
            "myvault.vault.azure.net"
        );
    }

    #[test]
    fn hang_timeout_from_flag_or_o_and_zero_turns_it_off() {
        let mut a = args("myvault");
        a.options = vec!["hang_timeout=30s".into()];
        assert_eq!(
            a.resolve(0, 0).unwrap().hang_timeout,
            Duration::from_secs(30)
        );
        a.hang_timeout = Some("0".into());
        assert_eq!(a.resolve(0, 0).unwrap().hang_timeout, Duration::ZERO);
        a.hang_timeout = Some("soon".into());
        assert!(a.resolve(0, 0).unwrap_err().starts_with("--hang-timeout: "));
    }

    #[test]
    fn metrics_addr_from_flag_or_o_is_off_by_default_and_checked() {
        let mut a = args("myvault");
        assert_eq!(a.resolve(0, 0).unwrap().metrics_addr, None);
        a.options = vec!["metrics_addr=127.0.0.1:9464".into()];
        assert_eq!(
            a.resolve(0, 0).unwrap().metrics_addr,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        a.metrics_addr = Some("[::1]:9100".into());
        assert_eq!(a.resolve(0, 0).unwrap().metrics_addr.unwrap().port(), 9100);
        a.metrics_addr = Some("localhost".into());
        let e = a.resolve(0, 0).unwrap_err();
        assert!(e.starts_with("--metrics-addr: invalid address"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn prefetch_concurrency_defaults_to_16_zero_turns_it_off_and_it_is_bounded() {
        let mut a = args("myvault");
        assert_eq!(a.resolve(0, 0).unwrap().prefetch_concurrency, 16);
        a.options = vec!["prefetch_concurrency=0".into()];
        assert_eq!(a.resolve(0, 0).unwrap().prefetch_concurrency, 0);
        a.prefetch_concurrency = Some(32);
        assert_eq!(a.resolve(0, 0).unwrap().prefetch_concurrency, 32);
        a.prefetch_concurrency = Some(1000);
        assert!(a.resolve(0, 0).unwrap_err().contains("at most 256"));
        a.prefetch_concurrency = None;
        a.options = vec!["prefetch_concurrency=many".into()];
        assert!(
            a.resolve(0, 0)
                .unwrap_err()
                .starts_with("--prefetch-concurrency: \"many\" is not a number")
        );
    }

    #[test]
    fn open_mode_from_flag_or_o_and_bad_values_are_refused() {
        let mut a = args("myvault");
        a.options = vec!["open_mode=cached".into()];
        assert_eq!(a.resolve(0, 0).unwrap().open_mode, OpenMode::Cached);
        a.open_mode = Some("snapshot".into());
        assert_eq!(a.resolve(0, 0).unwrap().open_mode, OpenMode::Snapshot);
        a.open_mode = Some("fast".into());
        assert!(
            a.resolve(0, 0)
                .unwrap_err()
                .starts_with("unknown --open-mode")
        );
    }

    #[test]
    fn o_options_set_the_same_things_and_flags_win() {
        let mut a = args("https://127.0.0.1:8443");
        a.options = vec![
            "rw,allow_other,cache_ttl=5s,uid=7,file_mode=0440,no_verify_challenge_resource".into(),
        ];
        a.uid = Some(9);
        let s = a.resolve(0, 0).unwrap();
        assert!(s.allow_other);
        assert!(!s.verify_challenge_resource);
        assert_eq!(s.cache_ttl, Duration::from_secs(5));
        assert_eq!(s.uid, 9, "the flag wins over -o");
        assert_eq!(s.file_mode, 0o440);
    }

    #[test]
    fn every_auth_method_and_the_metadata_endpoint_resolve() {
        for (name, method) in [
            ("auto", AuthMethod::Auto),
            ("workload-identity", AuthMethod::WorkloadIdentity),
            ("managed-identity", AuthMethod::ManagedIdentity),
            ("azure-cli", AuthMethod::AzureCli),
            ("client-secret", AuthMethod::ClientSecret),
            ("client-certificate", AuthMethod::ClientCertificate),
        ] {
            let mut a = args("myvault");
            a.auth = Some(name.into());
            assert_eq!(a.resolve(0, 0).unwrap().auth, method);
        }
        let mut a = args("myvault");
        assert_eq!(a.resolve(0, 0).unwrap().imds_endpoint, None);
        a.options = vec!["auth=managed-identity,imds_endpoint=http://127.0.0.1:8080".into()];
        let s = a.resolve(0, 0).unwrap();
        assert_eq!(s.auth, AuthMethod::ManagedIdentity);
        assert_eq!(s.imds_endpoint.as_deref(), Some("http://127.0.0.1:8080"));
        a.imds_endpoint = Some("http://127.0.0.1:9".into());
        assert_eq!(
            a.resolve(0, 0).unwrap().imds_endpoint.as_deref(),
            Some("http://127.0.0.1:9"),
            "the flag wins over -o"
        );
        a.imds_endpoint = Some("169.254.169.254".into());
        assert!(a.resolve(0, 0).unwrap_err().starts_with("--imds-endpoint"));
        a.imds_endpoint = None;
        a.options = vec!["auth=kerberos".into()];
        assert!(a.resolve(0, 0).unwrap_err().starts_with("unknown --auth"));
    }

    #[test]
    fn bad_input_is_one_clear_line() {
        let mut a = args("x");
        assert!(a.resolve(0, 0).unwrap_err().contains("invalid vault name"));
        a.vault = "http://127.0.0.1".into();
        assert!(a.resolve(0, 0).unwrap_err().contains("https"));
        a.vault = "myvault".into();
        a.options = vec!["bogus=1".into()];
        assert_eq!(
            a.resolve(0, 0).unwrap_err(),
            "unknown mount option \"bogus\""
        );
        a.options = vec![];
        a.cache_ttl = Some("soon".into());
        assert!(
            a.resolve(0, 0)
                .unwrap_err()
                .starts_with("--cache-ttl: invalid duration")
        );
        a.cache_ttl = None;
        a.cloud = Some("mars".into());
        assert!(a.resolve(0, 0).unwrap_err().contains("unknown cloud"));
        a.cloud = Some("china".into());
        assert_eq!(
            a.resolve(0, 0).unwrap().vault_url.as_str(),
            "https://myvault.vault.azure.cn/"
        );
    }
}

/// What to run, once the command line is normalised.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    Run(Vec<std::ffi::OsString>),
    /// `mount -f` (fake): report success without mounting.
    Fake,
}

/// Accept the mount-helper calling conventions as well as `kvfs mount …`:
/// `mount.kvfs`/`mount.fuse.kvfs SOURCE DIR [-sfnv] [-o OPTS]` (mount(8) with `-t kvfs`/`fuse.kvfs`)
/// and `kvfs SOURCE DIR -o OPTS` (what libfuse's `mount.fuse3` runs for `fuse.kvfs`).
pub fn normalize_args(args: Vec<std::ffi::OsString>) -> Invocation {
    let Some(program) = args.first().cloned() else {
        return Invocation::Run(args);
    };
    let name = std::path::Path::new(&program)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    let is_helper = name.starts_with("mount.");
    let is_fuse_form = !is_helper
        && args.len() >= 3
        && !first.starts_with('-')
        && !matches!(first, "mount" | "unmount" | "help");
    if !is_helper && !is_fuse_form {
        return Invocation::Run(args);
    }
    let mut out = vec![std::ffi::OsString::from("kvfs"), "mount".into()];
    let mut rest = args.into_iter().skip(1).peekable();
    while let Some(arg) = rest.next() {
        match arg.to_str() {
            // sloppy, no-mtab and verbose mean nothing to kvfs.
            Some("-s" | "-n" | "-v") => {}
            Some("-f") => return Invocation::Fake,
            Some("-N") => {
                rest.next();
            }
            _ => out.push(arg),
        }
    }
    Invocation::Run(out)
}

#[cfg(test)]
mod invocation_tests {
    use super::*;

    fn run(args: &[&str]) -> Invocation {
        normalize_args(args.iter().map(|s| (*s).into()).collect())
    }

    fn args(a: &[&str]) -> Invocation {
        Invocation::Run(a.iter().map(|s| (*s).into()).collect())
    }

    #[test]
    fn plain_commands_are_untouched() {
        assert_eq!(
            run(&["kvfs", "mount", "v", "/m"]),
            args(&["kvfs", "mount", "v", "/m"])
        );
        assert_eq!(
            run(&["kvfs", "unmount", "/m"]),
            args(&["kvfs", "unmount", "/m"])
        );
        assert_eq!(run(&["kvfs", "--help"]), args(&["kvfs", "--help"]));
    }

    #[test]
    fn mount_helper_forms_become_kvfs_mount() {
        assert_eq!(
            run(&[
                "/sbin/mount.fuse.kvfs",
                "myvault",
                "/mnt/kv",
                "-n",
                "-o",
                "rw,allow_other"
            ]),
            args(&[
                "kvfs",
                "mount",
                "myvault",
                "/mnt/kv",
                "-o",
                "rw,allow_other"
            ])
        );
        assert_eq!(
            run(&["kvfs", "myvault", "/mnt/kv", "-o", "cache_ttl=5s"]),
            args(&["kvfs", "mount", "myvault", "/mnt/kv", "-o", "cache_ttl=5s"])
        );
        assert_eq!(run(&["mount.kvfs", "v", "/m", "-f"]), Invocation::Fake);
    }
}
