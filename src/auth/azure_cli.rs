//! The Azure CLI's logged-in account: `az account get-access-token`, run with a hard timeout.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_identity::{AzureCliCredential, AzureCliCredentialOptions, Executor};

use super::failure::human;
use crate::http::error_chain;

/// Where `program` is on `path` (an executable file), if anywhere.
pub(super) fn find_on_path(program: &str, path: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(OsStr::new(path?))
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `AzureCliCredential` running `az` under `timeout`, with `path` as its PATH. `tenant` goes to
/// `az --tenant`.
pub(super) fn credential(
    tenant: Option<String>,
    path: Option<&str>,
    timeout: Duration,
) -> Result<Arc<dyn TokenCredential>, String> {
    let credential = AzureCliCredential::new(Some(AzureCliCredentialOptions {
        tenant_id: tenant,
        executor: Some(Arc::new(BoundedExecutor {
            timeout,
            path: path.map(OsString::from),
        })),
        ..Default::default()
    }))
    .map_err(|e| error_chain(&e))?;
    Ok(credential)
}

/// Runs `az` (through the crate's `/bin/sh -c`) with a hard timeout, killing it when it runs
/// over, and with the PATH kvfs was given.
#[derive(Debug)]
struct BoundedExecutor {
    timeout: Duration,
    path: Option<OsString>,
}

#[async_trait]
impl Executor for BoundedExecutor {
    async fn run(&self, program: &OsStr, args: &[&OsStr]) -> std::io::Result<std::process::Output> {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // Its own process group, so a hung `az` (a child of the shell) dies with the shell.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(path) = &self.path {
            cmd.env("PATH", path);
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(out) => out,
            Err(_) => {
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    // SAFETY: plain syscall; the group is the one this call created.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("az did not answer within {}", human(self.timeout)),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use azure_core::time::OffsetDateTime;

    use super::*;
    use crate::auth::failure::is_transient;
    use crate::auth::testing::{closed_endpoint, request, selected_token};
    use crate::auth::{AuthMethod, Env, Limits, VAULT_SCOPE, select};
    use crate::http::http_client;

    fn fake_az(dir: &std::path::Path, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("az");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn auto_uses_a_logged_in_az_and_skips_a_hung_one() {
        let dir = tempfile::tempdir().unwrap();
        let expires = OffsetDateTime::now_utc().unix_timestamp() + 3600;
        fake_az(
            dir.path(),
            &format!(
                r#"case "$*" in *"get-access-token -o json --scope https://vault.azure.net/.default"*) ;; *) exit 2;; esac
echo '{{"accessToken":"cli-token","tokenType":"Bearer","expires_on":{expires}}}'"#
            ),
        );
        let path = format!("{}:/usr/bin:/bin", dir.path().display());
        let mut req = request(AuthMethod::Auto);
        req.imds_endpoint = Some(closed_endpoint());
        let http = http_client(&[], Duration::from_secs(5)).unwrap();
        let env = Env::from_pairs([("PATH", path.as_str())]);
        let (_, t) = selected_token(&req, &env, &http, AuthMethod::AzureCli).await;
        assert_eq!(t.token.secret(), "cli-token");

        // Not logged in: az's own words.
        fake_az(
            dir.path(),
            "echo 'Please run az login to setup account.' >&2; exit 1",
        );
        let err = select(&req, &env, &http, &Limits::default())
            .await
            .unwrap_err();
        assert!(
            err.contains("azure-cli: ") && err.contains("az login"),
            "{err}"
        );

        // Hung: given up on after the limit, and the next method is tried.
        fake_az(dir.path(), "sleep 30");
        let limits = Limits {
            cli_timeout: Duration::from_millis(500),
            ..Limits::default()
        };
        let started = std::time::Instant::now();
        let err = select(&req, &env, &http, &limits).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        // After mounting, a hung az is an outage (cached values keep being served), not a
        // refusal.
        let mut explicit = request(AuthMethod::AzureCli);
        explicit.imds_endpoint = req.imds_endpoint.clone();
        let cli = select(&explicit, &env, &http, &limits).await.unwrap();
        let e = cli
            .credential
            .get_token(&[VAULT_SCOPE], None)
            .await
            .unwrap_err();
        assert!(is_transient(&e), "{}", error_chain(&e));
        assert_eq!(
            error_chain(&e),
            "the token source timed out: az did not answer within 500ms"
        );
        assert!(
            err.contains("azure-cli: az did not answer within 500ms; instance metadata: "),
            "{err}"
        );
    }
}
