//! Deciding the credential: the plan's steps tried in order, `auto` probing the Azure CLI and the
//! instance metadata service (each bounded) and keeping the first that works, or one line naming
//! every method and why it was not usable.

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;

use super::VAULT_SCOPE;
use super::build::build;
use super::failure::{human, is_transient, root_cause};
use super::method::AuthMethod;
use super::plan::{AuthRequest, Env, Spec, Step, plan};
use crate::http::error_chain;
use crate::vault::refusals::TokenVerdicts;

/// How long `auto` may wait for its probes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// `az account get-access-token`, in the probe and for every later token.
    pub cli_timeout: Duration,
    /// The whole instance-metadata probe (one token request).
    pub imds_probe_timeout: Duration,
    /// One managed-identity token request after the probe.
    pub msi_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            cli_timeout: Duration::from_secs(10),
            imds_probe_timeout: Duration::from_secs(2),
            msi_timeout: Duration::from_secs(10),
        }
    }
}

/// The credential chosen, and by which method.
pub(crate) struct Selected {
    pub method: AuthMethod,
    pub credential: Arc<dyn TokenCredential>,
    /// The same credential, to be told which of its tokens the vault refused.
    pub verdicts: Arc<dyn TokenVerdicts>,
}

impl std::fmt::Debug for Selected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selected")
            .field("method", &self.method.name())
            .finish_non_exhaustive()
    }
}

/// Decide the credential (probing the Azure CLI and the metadata service in `auto` mode) and
/// build it. `http` is the shared client: the Entra ID credentials use it (same trust, same
/// timeouts).
pub(crate) async fn select(
    req: &AuthRequest,
    env: &Env,
    http: &reqwest::Client,
    limits: &Limits,
) -> Result<Selected, String> {
    let steps = plan(req, env)?;
    let auto = req.method == AuthMethod::Auto;
    let mut skipped: Vec<String> = Vec::new();
    for step in steps {
        let spec = match step {
            Step::Skip { label, reason } => {
                skipped.push(format!("{label}: {reason}"));
                continue;
            }
            Step::Try(spec) => spec,
        };
        let label = spec.label();
        let credential = match build(&spec, http, limits) {
            Ok(c) => c,
            Err(e) if auto => {
                tracing::warn!("auth auto: {label}: {e}");
                skipped.push(format!("{label}: {e}"));
                continue;
            }
            Err(e) => return Err(one_line(&format!("--auth {}: {e}", spec.method()))),
        };
        if auto && let Some(reason) = probe(&spec, credential.as_ref(), limits).await {
            skipped.push(format!("{label}: {reason}"));
            continue;
        }
        tracing::info!(
            method = spec.method().name(),
            source = label,
            "authenticating with {}",
            describe(&spec)
        );
        return Ok(Selected {
            method: spec.method(),
            verdicts: credential.clone(),
            credential,
        });
    }
    Err(one_line(&format!(
        "no credential found (auto): {}",
        skipped.join("; ")
    )))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// For the log line: which identity, never a secret.
fn describe(spec: &Spec) -> String {
    match spec {
        Spec::ClientSecret { client_id, .. } => format!("client secret of app {client_id}"),
        Spec::ClientCertificate {
            client_id, path, ..
        } => format!("certificate {} of app {client_id}", path.display()),
        Spec::WorkloadIdentity {
            client_id,
            token_file,
            ..
        } => format!(
            "workload identity {client_id} (token file {})",
            token_file.display()
        ),
        Spec::AppService { client_id, .. } => format!(
            "managed identity ({}) through IDENTITY_ENDPOINT",
            client_id.as_deref().unwrap_or("system-assigned")
        ),
        Spec::AzureCli { .. } => "the Azure CLI's logged-in account".into(),
        Spec::Imds {
            endpoint,
            client_id,
        } => format!(
            "managed identity ({}) through the instance metadata service at {endpoint}",
            client_id.as_deref().unwrap_or("system-assigned")
        ),
    }
}

/// `auto` only: whether a probed method works; `None` when it does. The token it got stays in
/// the credential's cache.
async fn probe(spec: &Spec, credential: &dyn TokenCredential, limits: &Limits) -> Option<String> {
    let (limit, what) = match spec {
        // A little over the executor's own limit, which kills az and says so.
        Spec::AzureCli { .. } => (
            limits.cli_timeout + Duration::from_secs(1),
            "az account get-access-token".to_string(),
        ),
        Spec::Imds { endpoint, .. } => (limits.imds_probe_timeout, endpoint.clone()),
        _ => return None,
    };
    match tokio::time::timeout(limit, credential.get_token(&[VAULT_SCOPE], None)).await {
        Ok(Ok(_)) => None,
        Err(_) => Some(format!("no answer from {what} within {}", human(limit))),
        Ok(Err(e)) => Some(match spec {
            Spec::Imds { endpoint, .. } if is_transient(&e) => {
                format!("no answer from {endpoint} ({})", root_cause(&e))
            }
            _ if is_transient(&e) => root_cause(&e),
            _ => plain_reason(&error_chain(&e)),
        }),
    }
}

/// The crate's wrapping of az's own words, removed: "AzureCliCredential authentication failed.
/// timed out error: …", "To troubleshoot, visit …".
fn plain_reason(chain: &str) -> String {
    let mut text = chain.to_string();
    if let Some(i) = text.find(" To troubleshoot, visit ") {
        text.truncate(i);
    }
    for prefix in [
        "AzureCliCredential authentication failed. ",
        "timed out error: ",
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            text = rest.to_string();
        }
    }
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::testing::{closed_endpoint, request};
    use crate::http::http_client;

    #[tokio::test]
    async fn auto_fails_with_one_line_naming_every_method() {
        let endpoint = closed_endpoint();
        let mut req = request(AuthMethod::Auto);
        req.imds_endpoint = Some(endpoint.clone());
        let http = http_client(&[], Duration::from_secs(5)).unwrap();
        let started = std::time::Instant::now();
        let err = select(
            &req,
            &Env::from_pairs([("PATH", "/nonexistent")]),
            &http,
            &Limits::default(),
        )
        .await
        .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(!err.contains('\n'), "{err}");
        assert!(
            err.starts_with(
                "no credential found (auto): client-secret: AZURE_CLIENT_SECRET not set; client-certificate: AZURE_CLIENT_CERTIFICATE_PATH not set; workload-identity: AZURE_FEDERATED_TOKEN_FILE not set; managed-identity: IDENTITY_ENDPOINT not set; "
            ),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "; azure-cli: az not found on PATH; instance metadata: no answer from {endpoint}"
            )),
            "{err}"
        );
    }

    #[tokio::test]
    async fn auto_probe_of_a_silent_metadata_service_gives_up_in_time() {
        // Accepts connections and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let mut req = request(AuthMethod::Auto);
        req.imds_endpoint = Some(endpoint.clone());
        let http = http_client(&[], Duration::from_secs(5)).unwrap();
        let limits = Limits {
            imds_probe_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let started = std::time::Instant::now();
        let err = select(&req, &Env::default(), &http, &limits)
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            err.ends_with(&format!(
                "instance metadata: no answer from {endpoint} within 300ms"
            )),
            "{err}"
        );
        drop(listener);
    }
}
