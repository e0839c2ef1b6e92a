//! What the unit tests of every auth module start from. Nothing here reaches 169.254.169.254 or
//! Azure: every request names a loopback endpoint (a closed port or a testvault), and every
//! environment is an explicit [`Env`](super::Env).

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::{AccessToken, TokenCredential};

use super::{AuthMethod, AuthRequest, Env, Limits, VAULT_SCOPE, select};
use crate::http::http_client;

/// A request for `method` with no flags given, in the public cloud.
pub(super) fn request(method: AuthMethod) -> AuthRequest {
    AuthRequest {
        method,
        client_id: None,
        tenant_id: None,
        authority_host: None,
        cloud_authority_host: "https://login.microsoftonline.com".into(),
        imds_endpoint: None,
    }
}

/// A loopback port nothing listens on: connections are refused at once.
pub(super) fn closed_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// A testvault whose tokens live `lifetime_secs`.
pub(super) fn vault(lifetime_secs: i64) -> testvault::TestVault {
    let mut options = testvault::Options::default();
    options.settings.token_lifetime_secs = lifetime_secs;
    testvault::TestVault::start(options).expect("testvault starts")
}

/// An HTTP client that trusts the testvault's CA.
pub(super) fn vault_http(v: &testvault::TestVault) -> reqwest::Client {
    let ca = std::fs::read(&v.info().ca_file).unwrap();
    http_client(&[ca], Duration::from_secs(10)).unwrap()
}

/// The credential `select` chooses for `req` and `env` (with the default limits), checked to be
/// `method`'s, and a token from it: in `auto`, the one its probe got, if it was probed.
pub(super) async fn selected_token(
    req: &AuthRequest,
    env: &Env,
    http: &reqwest::Client,
    method: AuthMethod,
) -> (Arc<dyn TokenCredential>, AccessToken) {
    let selected = select(req, env, http, &Limits::default()).await.unwrap();
    assert_eq!(selected.method, method);
    let token = selected
        .credential
        .get_token(&[VAULT_SCOPE], None)
        .await
        .unwrap();
    (selected.credential, token)
}
