//! Workload identity (Kubernetes): the federated token kubelet writes to a file, presented to
//! Entra ID as a client assertion.

use std::path::PathBuf;

use async_trait::async_trait;
use azure_core::error::ErrorKind;
use azure_core::http::ClientMethodOptions;
use azure_identity::ClientAssertion;

/// The federated token, read from its file on every token request: kubelet rotates the file
/// (hourly by default) and `WorkloadIdentityCredential` would keep an old one for 600 s.
#[derive(Debug, Clone)]
pub(crate) struct FederatedTokenFile {
    pub path: PathBuf,
}

#[async_trait]
impl ClientAssertion for FederatedTokenFile {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        let text = tokio::fs::read_to_string(&self.path).await.map_err(|e| {
            azure_core::Error::with_error(
                ErrorKind::Credential,
                e,
                format!(
                    "cannot read the federated token file {}",
                    self.path.display()
                ),
            )
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(azure_core::Error::with_message(
                ErrorKind::Credential,
                format!("the federated token file {} is empty", self.path.display()),
            ));
        }
        Ok(token.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::auth::failure::is_transient;
    use crate::auth::testing::{request, selected_token, vault, vault_http};
    use crate::auth::{AuthMethod, Env, VAULT_SCOPE};
    use crate::http::error_chain;

    #[tokio::test]
    async fn workload_identity_rereads_the_token_file_for_each_token() {
        let v = vault(4);
        let i = v.info().clone();
        let env = Env::from_pairs([
            ("AZURE_TENANT_ID", i.tenant_id.clone()),
            ("AZURE_CLIENT_ID", i.workload_client_id.clone()),
            ("AZURE_AUTHORITY_HOST", i.authority_host.clone()),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                i.federated_token_file.display().to_string(),
            ),
        ]);
        let (c, _) = selected_token(
            &request(AuthMethod::WorkloadIdentity),
            &env,
            &vault_http(&v),
            AuthMethod::WorkloadIdentity,
        )
        .await;
        c.get_token(&[VAULT_SCOPE], None).await.unwrap();
        assert_eq!(v.count("Token"), 1, "a 4 s token is reused for 2 s");

        // Kubelet replaces the file with something the issuer never signed: the next token
        // request must present it (the crate's credential would still send the old one).
        std::fs::write(&i.federated_token_file, "not-a-jwt").unwrap();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let err = c.get_token(&[VAULT_SCOPE], None).await.unwrap_err();
        assert!(!is_transient(&err), "{}", error_chain(&err));

        // The rotated, valid token works at once.
        v.rotate_federated_token(Duration::from_secs(3600)).unwrap();
        c.get_token(&[VAULT_SCOPE], None).await.unwrap();
        assert_eq!(v.count("Token"), 3);
    }
}
