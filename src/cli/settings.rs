//! What a mount needs, resolved from the parsed command line: what clap cannot do alone (the
//! vault URL from a name and the cloud, the owner defaulting to the mounting user).

use std::path::PathBuf;
use std::time::Duration;

use super::{AfterHandoff, AuthMethod, Cloud, MountArgs};
use crate::fs::core::OpenMode;
use crate::logging::{LineContext, LogFormat};

/// Everything a mount needs, resolved and checked.
#[derive(Clone, Debug)]
pub(crate) struct MountSettings {
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
    pub(crate) fn log_context(&self) -> LineContext {
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

impl MountArgs {
    /// The settings these arguments give a mount by `current_uid`/`current_gid`; a vault that
    /// is neither a vault name nor an https URL is refused in one line.
    pub(crate) fn resolve(
        &self,
        current_uid: u32,
        current_gid: u32,
    ) -> Result<MountSettings, String> {
        Ok(MountSettings {
            vault_url: vault_url(&self.vault, self.cloud)?,
            mountpoint: self.mountpoint.clone(),
            foreground: self.foreground,
            cache_ttl: self.cache_ttl.0,
            max_stale: self.max_stale.0,
            open_mode: self.open_mode,
            prefetch_concurrency: self.prefetch_concurrency,
            auth: self.auth,
            client_id: self.client_id.clone(),
            tenant_id: self.tenant_id.clone(),
            cloud: self.cloud,
            authority_host: self.authority_host.clone(),
            imds_endpoint: self.imds_endpoint.clone(),
            ca_files: self.ca_file.clone(),
            verify_challenge_resource: !self.no_verify_challenge_resource,
            allow_other: self.allow_other,
            uid: self.uid.unwrap_or(current_uid),
            gid: self.gid.unwrap_or(current_gid),
            file_mode: self.file_mode.0,
            dir_mode: self.dir_mode.0,
            log_file: self.log_file.clone(),
            log_format: self.log_format,
            control_socket: self.control_socket.clone(),
            after_handoff: self.after_handoff,
            hang_timeout: self.hang_timeout.0,
            metrics_addr: self.metrics_addr,
        })
    }
}
