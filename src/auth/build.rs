//! The credential for a [`Spec`], each method's own, wrapped in the token cache.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;

use super::azure_cli;
use super::client_certificate::{CertificateAssertion, load_client_certificate, token_endpoint};
use super::entra::{client_assertion_credential, client_secret_credential};
use super::managed_identity::MsiCredential;
use super::plan::Spec;
use super::select::Limits;
use super::token_cache::{CachedCredential, Rebuild};
use super::workload_identity::FederatedTokenFile;

/// The credential for one spec, wrapped in the token cache, which builds it again (from the
/// same spec, re-reading a certificate file) whenever the vault refuses a token.
pub(crate) fn build(
    spec: &Spec,
    http: &reqwest::Client,
    limits: &Limits,
) -> Result<Arc<CachedCredential>, String> {
    let (spec, http, limits) = (spec.clone(), http.clone(), *limits);
    let rebuild: Rebuild = Arc::new(move || build_uncached(&spec, &http, &limits));
    Ok(Arc::new(CachedCredential::rebuildable(rebuild)?))
}

/// The credential for one spec, as the method makes it (some keep a token cache of their own).
fn build_uncached(
    spec: &Spec,
    http: &reqwest::Client,
    limits: &Limits,
) -> Result<Arc<dyn TokenCredential>, String> {
    match spec {
        Spec::ClientSecret {
            tenant,
            client_id,
            secret,
            authority_host,
        } => client_secret_credential(
            tenant,
            client_id,
            secret.0.clone(),
            Some(authority_host),
            http,
        ),
        Spec::ClientCertificate {
            tenant,
            client_id,
            path,
            password,
            authority_host,
            send_chain,
        } => {
            let bytes =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let cert = load_client_certificate(&bytes, password.as_ref().map(|p| p.0.as_str()))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let audience = token_endpoint(authority_host, tenant)?;
            let assertion = CertificateAssertion::new(client_id, &audience, cert, *send_chain)?;
            client_assertion_credential(tenant, client_id, assertion, authority_host, http)
        }
        Spec::WorkloadIdentity {
            tenant,
            client_id,
            token_file,
            authority_host,
        } => client_assertion_credential(
            tenant,
            client_id,
            FederatedTokenFile {
                path: token_file.clone(),
            },
            authority_host,
            http,
        ),
        Spec::AppService {
            endpoint,
            header,
            client_id,
        } => Ok(Arc::new(MsiCredential::app_service(
            endpoint,
            &header.0,
            client_id.clone(),
            limits.msi_timeout,
        )?)),
        Spec::AzureCli { tenant, path } => {
            azure_cli::credential(tenant.clone(), path.as_deref(), limits.cli_timeout)
        }
        Spec::Imds {
            endpoint,
            client_id,
        } => Ok(Arc::new(MsiCredential::imds(
            endpoint,
            client_id.clone(),
            limits.msi_timeout,
        )?)),
    }
}
