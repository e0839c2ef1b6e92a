//! The credentials that get their tokens from Entra ID as an app (client secret, client
//! certificate, workload identity): the pipeline they share with the vault client, pointed at
//! the authority host.

use std::sync::Arc;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::ClientOptions;
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions,
};

use crate::http::{credential_client_options, error_chain};

/// [`credential_client_options`] with `authority_host` (e.g. `https://login.microsoftonline.us`
/// or a local token endpoint) as the cloud's.
fn entra_options(http: &reqwest::Client, authority_host: &str) -> ClientOptions {
    let mut options = credential_client_options(http);
    // `CustomConfiguration` is non-exhaustive: start from its default and set the host.
    let mut cloud = CustomConfiguration::default();
    cloud.authority_host = authority_host.to_string();
    options.cloud = Some(Arc::new(CloudConfiguration::Custom(cloud)));
    options
}

/// `ClientSecretCredential` over `http`. `authority_host` goes through the options' cloud
/// configuration; without it the crate reads `AZURE_AUTHORITY_HOST`, else uses the public cloud.
pub fn client_secret_credential(
    tenant: &str,
    client_id: &str,
    secret: String,
    authority_host: Option<&str>,
    http: &reqwest::Client,
) -> Result<Arc<dyn TokenCredential>, String> {
    let client_options = match authority_host {
        Some(host) => entra_options(http, host),
        None => credential_client_options(http),
    };
    let credential = ClientSecretCredential::new(
        tenant,
        client_id.to_string(),
        Secret::new(secret),
        Some(ClientSecretCredentialOptions { client_options }),
    )
    .map_err(|e| format!("client-secret credential: {}", error_chain(&e)))?;
    Ok(credential)
}

/// `ClientAssertionCredential` over `http`: the app proves itself with what `assertion` hands
/// out (a signed JWT, a federated token).
pub(super) fn client_assertion_credential<A: ClientAssertion + 'static>(
    tenant: &str,
    client_id: &str,
    assertion: A,
    authority_host: &str,
    http: &reqwest::Client,
) -> Result<Arc<dyn TokenCredential>, String> {
    let credential = ClientAssertionCredential::new(
        tenant.to_string(),
        client_id.to_string(),
        assertion,
        Some(ClientAssertionCredentialOptions {
            client_options: entra_options(http, authority_host),
        }),
    )
    .map_err(|e| error_chain(&e))?;
    Ok(credential)
}
