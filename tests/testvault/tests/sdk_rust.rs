//! testvault against Microsoft's official Rust crates (`azure_identity`, `azure_core` and
//! `azure_security_keyvault_{secrets,keys,certificates}`): the same core checks as the Python
//! conformance suite, made by code nobody on this project wrote.
//!
//! How the crates are pointed at a local server (kvfs reuses this):
//!
//! * **Authority host**: through the credential's options, not the process environment —
//!   `ClientOptions::cloud = Some(Arc::new(CloudConfiguration::Custom(c)))` with
//!   `c.authority_host = info.authority_host` (`CustomConfiguration` is `#[non_exhaustive]`: start
//!   from `Default` and assign the field). `azure_identity` reads `AZURE_AUTHORITY_HOST` only when
//!   no cloud is set, so nothing here touches the environment and the tests can share a process.
//! * **Transport**: a `reqwest 0.13` client built with `tls_certs_only([testvault's CA])` (no web
//!   PKI roots, no proxies), passed as `ClientOptions::transport = Some(Transport::new(Arc::new(client)))`
//!   to the credential and to every Key Vault client.
//! * **Challenge check**: either `verify_challenge_resource: Some(false)` with `info.vault_url`
//!   (`https://127.0.0.1:PORT`; the challenge names `https://vault.azure.net`), or — check left on —
//!   `info.vault_host_url` (`https://testvault.vault.localhost:PORT`, challenge names
//!   `https://vault.localhost:PORT`) with `ClientBuilder::resolve("testvault.vault.localhost", 127.0.0.1:PORT)`.
//! * **Retries**: exponential, 20 ms initial delay, 3 retries (the default waits up to a minute).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::http::{
    ClientOptions, ExponentialRetryOptions, RetryOptions, StatusCode, Transport,
};
use azure_core::time::Duration;
use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};
use azure_security_keyvault_certificates::models::{
    CertificateClientGetCertificateOptions, KeyType as CertKeyType,
};
use azure_security_keyvault_certificates::{CertificateClient, CertificateClientOptions};
use azure_security_keyvault_keys::models::{
    CreateKeyParameters, CurveName, JsonWebKey, KeyClientGetKeyOptions, KeyType,
};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use azure_security_keyvault_secrets::models::{
    SecretAttributes, SecretClientGetSecretOptions, SecretClientListSecretPropertiesOptions,
    SecretProperties, SetSecretParameters, UpdateSecretPropertiesParameters,
};
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use base64::Engine as _;
use futures::TryStreamExt;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::PKey;
use openssl::x509::X509;
use serde_json::Value;
use testvault::{Fault, FaultAction, TestVault};

mod common;
use common::{http_client, sample_seed};

fn start_sample() -> TestVault {
    common::start(Some(sample_seed()))
}

/// Retries that keep tests quick (the crate default waits up to 60 s).
fn fast_retry() -> RetryOptions {
    RetryOptions::exponential(ExponentialRetryOptions {
        initial_delay: Duration::milliseconds(20),
        max_retries: 3,
        max_total_elapsed: Duration::seconds(10),
        max_delay: Duration::seconds(1),
    })
}

fn client_options(http: &reqwest::Client, retry: RetryOptions) -> ClientOptions {
    ClientOptions {
        transport: Some(Transport::new(Arc::new(http.clone()))),
        retry,
        ..Default::default()
    }
}

/// `ClientSecretCredential` for testvault's `app` identity, its authority host set through the
/// options' cloud configuration (no environment variable).
fn secret_credential(vault: &TestVault, http: &reqwest::Client) -> Arc<ClientSecretCredential> {
    let info = vault.info();
    let mut cloud = CustomConfiguration::default();
    cloud.authority_host = info.authority_host.clone();
    let options = ClientSecretCredentialOptions {
        client_options: ClientOptions {
            cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
            ..client_options(http, fast_retry())
        },
    };
    ClientSecretCredential::new(
        &info.tenant_id,
        info.client_id.clone(),
        Secret::new(info.client_secret.clone()),
        Some(options),
    )
    .expect("credential builds")
}

/// Which URL the Key Vault clients use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    /// `https://127.0.0.1:PORT` with `verify_challenge_resource: Some(false)`.
    Loopback,
    /// `https://testvault.vault.localhost:PORT` with the challenge check on.
    VaultHost,
}

struct Harness {
    vault: TestVault,
    http: reqwest::Client,
    credential: Arc<dyn TokenCredential>,
}

impl Harness {
    fn new(vault: TestVault) -> Self {
        let http = http_client(&vault);
        let credential = secret_credential(&vault, &http);
        Harness {
            vault,
            http,
            credential,
        }
    }

    fn sample() -> Self {
        Harness::new(start_sample())
    }

    fn url(&self, endpoint: Endpoint) -> (String, bool) {
        let info = self.vault.info();
        match endpoint {
            Endpoint::Loopback => (info.vault_url.clone(), false),
            Endpoint::VaultHost => (info.vault_host_url.clone(), true),
        }
    }

    fn secrets_with(
        &self,
        endpoint: Endpoint,
        credential: Arc<dyn TokenCredential>,
        retry: RetryOptions,
    ) -> SecretClient {
        let (url, verify) = self.url(endpoint);
        SecretClient::new(
            &url,
            credential,
            Some(SecretClientOptions {
                client_options: client_options(&self.http, retry),
                verify_challenge_resource: Some(verify),
                ..Default::default()
            }),
        )
        .expect("secret client builds")
    }

    fn secrets(&self, endpoint: Endpoint) -> SecretClient {
        self.secrets_with(endpoint, self.credential.clone(), fast_retry())
    }

    fn keys(&self, endpoint: Endpoint) -> KeyClient {
        let (url, verify) = self.url(endpoint);
        KeyClient::new(
            &url,
            self.credential.clone(),
            Some(KeyClientOptions {
                client_options: client_options(&self.http, fast_retry()),
                verify_challenge_resource: Some(verify),
                ..Default::default()
            }),
        )
        .expect("key client builds")
    }

    fn certificates(&self, endpoint: Endpoint) -> CertificateClient {
        let (url, verify) = self.url(endpoint);
        CertificateClient::new(
            &url,
            self.credential.clone(),
            Some(CertificateClientOptions {
                client_options: client_options(&self.http, fast_retry()),
                verify_challenge_resource: Some(verify),
                ..Default::default()
            }),
        )
        .expect("certificate client builds")
    }
}

/// Name and version of an object id (`https://host/{coll}/{name}[/{version}]`).
fn name_version(id: &str) -> (String, Option<String>) {
    let url = url::Url::parse(id).expect("object id is a URL");
    let segments: Vec<&str> = url
        .path_segments()
        .expect("id has a path")
        .filter(|s| !s.is_empty())
        .collect();
    assert!(
        (2..=3).contains(&segments.len()),
        "unexpected id shape: {id}"
    );
    (
        segments[1].to_string(),
        segments.get(2).map(|s| s.to_string()),
    )
}

fn id_of(id: Option<&String>) -> (String, Option<String>) {
    name_version(id.expect("object has an id"))
}

/// Status, service error code and parsed body of an HTTP error from the SDK.
fn http_error(err: &azure_core::Error) -> (StatusCode, Option<String>, Value) {
    match err.kind() {
        ErrorKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } => {
            let body = raw_response
                .as_ref()
                .and_then(|r| serde_json::from_slice(r.body()).ok())
                .unwrap_or(Value::Null);
            (*status, error_code.clone(), body)
        }
        other => panic!("expected an HTTP response error, got {other:?}: {err}"),
    }
}

/// Every message down an error's `source()` chain.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    parts.join(" <- ")
}

async fn get_secret_value(
    client: &SecretClient,
    name: &str,
    version: Option<&str>,
) -> azure_core::Result<String> {
    let options = SecretClientGetSecretOptions {
        secret_version: version.map(str::to_string),
        ..Default::default()
    };
    let secret = client.get_secret(name, Some(options)).await?.into_model()?;
    Ok(secret.value.expect("secret has a value"))
}

async fn list_secrets(
    client: &SecretClient,
    maxresults: Option<i32>,
) -> azure_core::Result<Vec<SecretProperties>> {
    let options = SecretClientListSecretPropertiesOptions {
        maxresults,
        ..Default::default()
    };
    client
        .list_secret_properties(Some(options))?
        .try_collect()
        .await
}

async fn secret_versions(
    client: &SecretClient,
    name: &str,
) -> azure_core::Result<Vec<SecretProperties>> {
    client
        .list_secret_properties_versions(name, None)?
        .try_collect()
        .await
}

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn get_secret_latest_and_by_version() {
    let h = Harness::sample();
    let client = h.secrets(Endpoint::Loopback);

    let latest = client
        .get_secret("db-password", None)
        .await
        .expect("get latest")
        .into_model()
        .expect("secret model");
    assert_eq!(
        latest.value.as_deref(),
        Some("c0rrect-h0rse-battery-staple")
    );
    assert_eq!(latest.content_type.as_deref(), Some("text/plain"));
    let tags = latest.tags.clone().unwrap_or_default();
    assert_eq!(tags.get("owner").map(String::as_str), Some("platform"));
    assert_eq!(
        latest.attributes.as_ref().and_then(|a| a.enabled),
        Some(true)
    );
    let (name, version) = id_of(latest.id.as_ref());
    assert_eq!(name, "db-password");
    let version = version.expect("a single GET returns a versioned id");
    assert_eq!(version.len(), 32, "versions are 32 characters: {version}");
    assert!(
        latest
            .id
            .as_deref()
            .unwrap()
            .starts_with(&h.vault.info().vault_url),
        "ids point back at the server: {:?}",
        latest.id
    );

    // By version: the latest's own version, and every older one.
    assert_eq!(
        get_secret_value(&client, "db-password", Some(&version))
            .await
            .unwrap(),
        "c0rrect-h0rse-battery-staple"
    );
    let mut by_created: Vec<(i64, String)> = Vec::new();
    for item in secret_versions(&client, "db-password").await.unwrap() {
        let created = item
            .attributes
            .as_ref()
            .and_then(|a| a.created)
            .expect("created")
            .unix_timestamp();
        let (_, v) = id_of(item.id.as_ref());
        by_created.push((created, v.expect("version lists carry versioned ids")));
    }
    assert_eq!(by_created.len(), 3);
    let mut values = BTreeSet::new();
    for (_, v) in &by_created {
        values.insert(
            get_secret_value(&client, "db-password", Some(v))
                .await
                .unwrap(),
        );
    }
    let expected: BTreeSet<String> = ["winter2025!", "spring2026!", "c0rrect-h0rse-battery-staple"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(values, expected);

    // Names compare case-insensitively.
    assert_eq!(
        get_secret_value(&client, "DB-Password", None)
            .await
            .unwrap(),
        "c0rrect-h0rse-battery-staple"
    );

    // One challenge and one token for the whole session.
    assert_eq!(h.vault.count("Unauthorized"), 1);
    assert_eq!(h.vault.count("Token"), 1);
    assert_eq!(h.vault.count("GetSecret"), 6);
}

#[tokio::test]
async fn vault_host_form_passes_the_challenge_resource_check() {
    let h = Harness::sample();
    let client = h.secrets(Endpoint::VaultHost);
    let secret = client
        .get_secret("api-key", None)
        .await
        .expect("the challenge check accepts vault.localhost")
        .into_model()
        .unwrap();
    assert_eq!(
        secret.value.as_deref(),
        Some("sk_test_4eC39HqLyjWDarjtT1zdp7dc")
    );
    assert!(
        secret
            .id
            .as_deref()
            .unwrap()
            .starts_with(&h.vault.info().vault_host_url),
        "{:?}",
        secret.id
    );
    let names: BTreeSet<String> = list_secrets(&client, None)
        .await
        .unwrap()
        .iter()
        .map(|p| id_of(p.id.as_ref()).0)
        .collect();
    assert!(names.contains("db-password"));

    // The keys and certificates crates run the same check.
    let key = h
        .keys(Endpoint::VaultHost)
        .get_key("signing-ec", None)
        .await
        .expect("key client with the check on")
        .into_model()
        .unwrap();
    assert!(key.key.is_some());
    let cert = h
        .certificates(Endpoint::VaultHost)
        .get_certificate("web", None)
        .await
        .expect("certificate client with the check on")
        .into_model()
        .unwrap();
    assert!(cert.cer.is_some());

    // The check really is on: the loopback address with the check left on is refused by the SDK,
    // because that challenge names https://vault.azure.net.
    let (url, _) = h.url(Endpoint::Loopback);
    let strict = SecretClient::new(
        &url,
        h.credential.clone(),
        Some(SecretClientOptions {
            client_options: client_options(&h.http, fast_retry()),
            verify_challenge_resource: Some(true),
            ..Default::default()
        }),
    )
    .unwrap();
    let err = strict
        .get_secret("api-key", None)
        .await
        .expect_err("challenge resource check must fail for 127.0.0.1");
    // The reason sits down the `source()` chain; the top message is generic.
    let chain = error_chain(&err);
    assert!(
        chain.contains("challenge resource 'https://vault.azure.net/.default'"),
        "unexpected error: {chain}"
    );
}

#[tokio::test]
async fn list_secrets_across_pages_returns_every_name_once() {
    let h = Harness::sample();
    let seed = sample_seed();
    for i in 0..8 {
        h.vault
            .set_secret(&format!("bulk-{i:02}"), &format!("bulk value {i}"))
            .unwrap();
    }
    h.vault.update_settings(|s| s.page_size = 3).unwrap();
    let client = h.secrets(Endpoint::Loopback);

    // Plain secrets, the bulk ones and the secrets behind certificates (managed).
    let mut expected: BTreeSet<String> = seed.secrets.iter().map(|s| s.name.clone()).collect();
    expected.extend(seed.certificates.iter().map(|c| c.name.clone()));
    expected.extend((0..8).map(|i| format!("bulk-{i:02}")));
    let total = expected.len();
    assert_eq!(total, 16);

    let check = |items: &[SecretProperties]| {
        let mut seen = BTreeMap::<String, usize>::new();
        for item in items {
            let (name, version) = id_of(item.id.as_ref());
            assert_eq!(version, None, "whole-vault lists carry base ids");
            *seen.entry(name).or_default() += 1;
        }
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "listed more than once: {twice:?}");
        let names: BTreeSet<String> = seen.into_keys().collect();
        assert_eq!(names, expected);
    };

    let before = h.vault.count("GetSecrets");
    let items = list_secrets(&client, None).await.unwrap();
    check(&items);
    assert_eq!(
        h.vault.count("GetSecrets") - before,
        total.div_ceil(3) as u64,
        "one request per page of 3"
    );
    for item in &items {
        let (name, _) = id_of(item.id.as_ref());
        let managed = item.managed == Some(true);
        let is_cert = seed.certificates.iter().any(|c| c.name == name);
        assert_eq!(managed, is_cert, "managed flag of {name}");
        if name == "retired-token" {
            assert_eq!(
                item.attributes.as_ref().and_then(|a| a.enabled),
                Some(false)
            );
        }
    }

    // maxresults from the client wins over the server's page size, and the nextLink keeps it.
    let before = h.vault.count("GetSecrets");
    check(&list_secrets(&client, Some(2)).await.unwrap());
    assert_eq!(
        h.vault.count("GetSecrets") - before,
        total.div_ceil(2) as u64
    );

    // Shuffled pages and empty intermediate pages change nothing for the client.
    h.vault
        .update_settings(|s| {
            s.shuffle_lists = true;
            s.empty_pages = true;
        })
        .unwrap();
    check(&list_secrets(&client, None).await.unwrap());
}

#[tokio::test]
async fn list_secret_versions() {
    let h = Harness::sample();
    let client = h.secrets(Endpoint::Loopback);

    let versions = secret_versions(&client, "db-password").await.unwrap();
    assert_eq!(versions.len(), 3);
    let ids: BTreeSet<String> = versions
        .iter()
        .map(|v| {
            let (name, version) = id_of(v.id.as_ref());
            assert_eq!(name, "db-password");
            version.expect("versioned id")
        })
        .collect();
    assert_eq!(ids.len(), 3, "versions are distinct");
    for v in &versions {
        assert_eq!(v.content_type.as_deref(), Some("text/plain"));
    }

    let single = secret_versions(&client, "api-key").await.unwrap();
    assert_eq!(single.len(), 1);

    // The live service answers 200 with an empty list for a name it does not have.
    let none = secret_versions(&client, "no-such-secret").await.unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn set_secret_rotates_to_a_new_version() {
    let h = Harness::sample();
    let client = h.secrets(Endpoint::Loopback);

    let old = client
        .get_secret("api-key", None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    let (_, old_version) = id_of(old.id.as_ref());

    let params = SetSecretParameters {
        value: Some("sk_test_rotated".into()),
        content_type: Some("text/plain".into()),
        tags: Some([("rotated".to_string(), "yes".to_string())].into()),
        ..Default::default()
    };
    let new = client
        .set_secret("api-key", params.try_into().unwrap(), None)
        .await
        .expect("set_secret")
        .into_model()
        .unwrap();
    let (_, new_version) = id_of(new.id.as_ref());
    assert_ne!(new_version, old_version);
    assert_eq!(new.value.as_deref(), Some("sk_test_rotated"));

    assert_eq!(
        get_secret_value(&client, "api-key", None).await.unwrap(),
        "sk_test_rotated"
    );
    assert_eq!(
        get_secret_value(&client, "api-key", old_version.as_deref())
            .await
            .unwrap(),
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
    );
    let latest = client
        .get_secret("api-key", None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert_eq!(
        latest
            .tags
            .unwrap_or_default()
            .get("rotated")
            .map(String::as_str),
        Some("yes")
    );
    assert_eq!(secret_versions(&client, "api-key").await.unwrap().len(), 2);

    // A brand-new name through the SDK, then through the library: both are versions of one secret.
    let params = SetSecretParameters {
        value: Some("first".into()),
        ..Default::default()
    };
    client
        .set_secret("made-by-sdk", params.try_into().unwrap(), None)
        .await
        .unwrap();
    h.vault.set_secret("made-by-sdk", "second").unwrap();
    assert_eq!(
        get_secret_value(&client, "made-by-sdk", None)
            .await
            .unwrap(),
        "second"
    );
    assert_eq!(
        secret_versions(&client, "made-by-sdk").await.unwrap().len(),
        2
    );
    assert_eq!(h.vault.count("SetSecret"), 2);
}

#[tokio::test]
async fn disabled_secret_is_forbidden() {
    let h = Harness::sample();
    let client = h.secrets(Endpoint::Loopback);

    let params = UpdateSecretPropertiesParameters {
        secret_attributes: Some(SecretAttributes {
            enabled: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    };
    let updated = client
        .update_secret_properties("api-key", params.try_into().unwrap(), None)
        .await
        .expect("update properties")
        .into_model()
        .unwrap();
    assert_eq!(
        updated.attributes.as_ref().and_then(|a| a.enabled),
        Some(false)
    );
    assert!(updated.value.is_none(), "an update answer carries no value");

    let err = client
        .get_secret("api-key", None)
        .await
        .expect_err("a disabled secret is refused");
    let (status, code, body) = http_error(&err);
    assert_eq!(status, StatusCode::Forbidden);
    assert_eq!(code.as_deref(), Some("Forbidden"));
    assert_eq!(body["error"]["innererror"]["code"], "SecretDisabled");
    assert_eq!(
        body["error"]["message"],
        "Operation get is not allowed on a disabled secret."
    );

    // Seeded as disabled; still listed, with enabled=false.
    let (status, code, _) =
        http_error(&client.get_secret("retired-token", None).await.unwrap_err());
    assert_eq!(
        (status, code.as_deref()),
        (StatusCode::Forbidden, Some("Forbidden"))
    );

    // A disabled latest version does not lock older versions; re-enabling restores access.
    h.vault.set_secret_enabled("db-password", false).unwrap();
    let versions = secret_versions(&client, "db-password").await.unwrap();
    let disabled: Vec<_> = versions
        .iter()
        .filter(|v| v.attributes.as_ref().and_then(|a| a.enabled) == Some(false))
        .collect();
    assert_eq!(disabled.len(), 1);
    let enabled_version = versions
        .iter()
        .find(|v| v.attributes.as_ref().and_then(|a| a.enabled) == Some(true))
        .map(|v| id_of(v.id.as_ref()).1.unwrap())
        .unwrap();
    assert!(
        get_secret_value(&client, "db-password", Some(&enabled_version))
            .await
            .is_ok()
    );
    assert!(client.get_secret("db-password", None).await.is_err());

    let params = UpdateSecretPropertiesParameters {
        secret_attributes: Some(SecretAttributes {
            enabled: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    client
        .update_secret_properties("api-key", params.try_into().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(
        get_secret_value(&client, "api-key", None).await.unwrap(),
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
    );
}

#[tokio::test]
async fn unknown_objects_are_404() {
    let h = Harness::sample();
    let secrets = h.secrets(Endpoint::Loopback);

    let (status, code, body) = http_error(
        &secrets
            .get_secret("no-such-secret", None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, StatusCode::NotFound);
    assert_eq!(code.as_deref(), Some("SecretNotFound"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("A secret with (name/id) no-such-secret was not found in this key vault."),
        "{body}"
    );

    let err = get_secret_value(
        &secrets,
        "api-key",
        Some("0123456789abcdef0123456789abcdef"),
    )
    .await
    .unwrap_err();
    assert_eq!(
        http_error(&err).1.as_deref(),
        Some("SecretNotFound"),
        "unknown version of a known secret"
    );

    let err = h
        .keys(Endpoint::Loopback)
        .get_key("no-such-key", None)
        .await
        .unwrap_err();
    let (status, code, _) = http_error(&err);
    assert_eq!(
        (status, code.as_deref()),
        (StatusCode::NotFound, Some("KeyNotFound"))
    );

    let err = h
        .certificates(Endpoint::Loopback)
        .get_certificate("no-such-cert", None)
        .await
        .unwrap_err();
    let (status, code, _) = http_error(&err);
    assert_eq!(
        (status, code.as_deref()),
        (StatusCode::NotFound, Some("CertificateNotFound"))
    );
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

fn assert_ec_jwk(jwk: &JsonWebKey, curve: CurveName, coordinate_bytes: usize) {
    assert_eq!(jwk.kty, Some(KeyType::Ec));
    assert_eq!(jwk.crv, Some(curve));
    assert_eq!(jwk.x.as_ref().map(Vec::len), Some(coordinate_bytes));
    assert_eq!(jwk.y.as_ref().map(Vec::len), Some(coordinate_bytes));
    assert!(jwk.d.is_none(), "GET never releases private material");
}

#[tokio::test]
async fn keys_get_list_and_create() {
    let h = Harness::sample();
    let client = h.keys(Endpoint::Loopback);

    let rsa = client
        .get_key("signing-rsa", None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    let jwk = rsa.key.expect("jwk");
    assert_eq!(jwk.kty, Some(KeyType::Rsa));
    assert_eq!(jwk.n.as_ref().map(Vec::len), Some(256), "RSA-2048 modulus");
    assert_eq!(jwk.e.as_deref(), Some(&[1u8, 0, 1][..]));
    assert!(jwk.d.is_none() && jwk.p.is_none());
    let (name, version) = name_version(jwk.kid.as_deref().expect("kid"));
    assert_eq!(name, "signing-rsa");
    let version = version.expect("kid is versioned");

    let by_version = client
        .get_key(
            "signing-rsa",
            Some(KeyClientGetKeyOptions {
                key_version: Some(version.clone()),
                ..Default::default()
            }),
        )
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert_eq!(by_version.key.and_then(|k| k.n), jwk.n);

    let ec = client
        .get_key("signing-ec", None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert_ec_jwk(&ec.key.expect("jwk"), CurveName::P256, 32);

    // Whole-vault list: plain keys and the managed keys behind certificates, base ids (`kid`).
    let items: Vec<_> = client
        .list_key_properties(None)
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut names = BTreeMap::<String, bool>::new();
    for item in &items {
        let (name, version) = name_version(item.kid.as_deref().expect("list items carry kid"));
        assert_eq!(version, None);
        assert!(
            names.insert(name, item.managed == Some(true)).is_none(),
            "listed once"
        );
    }
    let expected: BTreeMap<String, bool> = [
        ("signing-rsa", false),
        ("signing-ec", false),
        ("web", true),
        ("web-pem", true),
        ("internal-signing", true),
    ]
    .into_iter()
    .map(|(n, m)| (n.to_string(), m))
    .collect();
    assert_eq!(names, expected);

    let versions: Vec<_> = client
        .list_key_properties_versions("signing-rsa", None)
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(versions.len(), 2);
    assert!(versions.iter().any(|v| {
        name_version(v.kid.as_deref().unwrap()).1.as_deref() == Some(version.as_str())
    }));

    // Create EC keys; the JWK coordinates match the curve.
    for (curve, bytes) in [(CurveName::P384, 48), (CurveName::P521, 66)] {
        let params = CreateKeyParameters {
            kty: Some(KeyType::Ec),
            curve: Some(curve.clone()),
            ..Default::default()
        };
        let created = client
            .create_key("made-by-sdk", params.try_into().unwrap(), None)
            .await
            .expect("create EC key")
            .into_model()
            .unwrap();
        let jwk = created.key.expect("jwk");
        assert_ec_jwk(&jwk, curve, bytes);
        let fetched = client
            .get_key("made-by-sdk", None)
            .await
            .unwrap()
            .into_model()
            .unwrap();
        assert_eq!(
            fetched.key.and_then(|k| k.x),
            jwk.x,
            "latest is the new key"
        );
    }
    assert_eq!(h.vault.count("CreateKey"), 2);
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn certificates_get_list_policy_and_private_key() {
    let h = Harness::sample();
    let certs = h.certificates(Endpoint::Loopback);
    let secrets = h.secrets(Endpoint::Loopback);

    let web = certs
        .get_certificate("web", None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    let der = web.cer.clone().expect("cer");
    let x509 = X509::from_der(&der).expect("cer is DER X.509");
    let cn = x509
        .subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok());
    assert_eq!(cn.as_deref(), Some("web.example.test"));
    let sha1 = openssl::hash::hash(openssl::hash::MessageDigest::sha1(), &der).unwrap();
    assert_eq!(
        web.x509_thumbprint.as_deref(),
        Some(&sha1[..]),
        "x5t is SHA-1 of cer"
    );

    // Certificate, key and secret share name and version.
    let (name, version) = id_of(web.id.as_ref());
    assert_eq!(name, "web");
    let version = version.expect("versioned");
    assert_eq!(
        id_of(web.kid.as_ref()),
        ("web".into(), Some(version.clone()))
    );
    assert_eq!(
        id_of(web.sid.as_ref()),
        ("web".into(), Some(version.clone()))
    );
    let again = certs
        .get_certificate(
            "web",
            Some(CertificateClientGetCertificateOptions {
                certificate_version: Some(version.clone()),
                ..Default::default()
            }),
        )
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert_eq!(again.cer.as_deref(), Some(&der[..]));

    // The list: each certificate once, base ids, thumbprints.
    let items: Vec<_> = certs
        .list_certificate_properties(None)
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut names = Vec::new();
    for item in &items {
        let (name, version) = id_of(item.id.as_ref());
        assert_eq!(version, None);
        assert_eq!(item.x509_thumbprint.as_ref().map(Vec::len), Some(20));
        names.push(name);
    }
    names.sort();
    assert_eq!(names, ["internal-signing", "web", "web-pem"]);

    // Policy.
    let policy = certs
        .get_certificate_policy("web", None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    let key_props = policy.key_properties.expect("key_props");
    assert_eq!(key_props.exportable, Some(true));
    assert_eq!(key_props.key_type, Some(CertKeyType::Rsa));
    assert_eq!(key_props.key_size, Some(2048));
    assert_eq!(
        policy
            .secret_properties
            .and_then(|s| s.content_type)
            .as_deref(),
        Some("application/x-pkcs12")
    );
    assert!(policy.issuer_parameters.and_then(|i| i.name).is_some());
    assert!(
        policy
            .id
            .as_deref()
            .is_some_and(|id| id.ends_with("/certificates/web/policy")),
        "{:?}",
        policy.id
    );

    // Private key through the certificate's secret: PFX, base64, empty password.
    let (sid_name, sid_version) = id_of(web.sid.as_ref());
    let secret = secrets
        .get_secret(
            &sid_name,
            Some(SecretClientGetSecretOptions {
                secret_version: sid_version,
                ..Default::default()
            }),
        )
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert_eq!(secret.content_type.as_deref(), Some("application/x-pkcs12"));
    assert_eq!(secret.managed, Some(true));
    assert_eq!(
        id_of(secret.kid.as_ref()),
        ("web".into(), Some(version.clone()))
    );
    let pfx = base64::engine::general_purpose::STANDARD
        .decode(secret.value.expect("value"))
        .expect("standard base64");
    let parsed = Pkcs12::from_der(&pfx)
        .expect("PKCS#12")
        .parse2("")
        .expect("empty password");
    let pkey = parsed.pkey.expect("exportable: private key present");
    let cert = parsed.cert.expect("leaf certificate");
    assert_eq!(
        cert.to_der().unwrap(),
        der,
        "the PFX holds the same certificate"
    );
    assert!(
        cert.public_key().unwrap().public_eq(&pkey),
        "private key matches the certificate"
    );
    // Leaf + intermediate from the PFX verify against testvault's root CA.
    let intermediates = parsed
        .ca
        .expect("issued by the intermediate: chain included");
    let root = X509::from_pem(&std::fs::read(&h.vault.info().ca_file).unwrap()).unwrap();
    let mut store = openssl::x509::store::X509StoreBuilder::new().unwrap();
    store.add_cert(root).unwrap();
    let store = store.build();
    let mut context = openssl::x509::X509StoreContext::new().unwrap();
    let verified = context
        .init(&store, &cert, &intermediates, |c| c.verify_cert())
        .unwrap();
    assert!(verified, "{}", context.error());

    // PEM-backed certificate: PKCS#8 key first, then the certificate.
    let pem_cert = certs
        .get_certificate("web-pem", None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    let (n, v) = id_of(pem_cert.sid.as_ref());
    let pem = get_secret_value(&secrets, &n, v.as_deref()).await.unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem:.40}");
    let key = PKey::private_key_from_pem(pem.as_bytes()).expect("PKCS#8 key");
    let chain = X509::stack_from_pem(pem.as_bytes()).expect("certificates");
    assert_eq!(chain[0].to_der().unwrap(), pem_cert.cer.expect("cer"));
    assert!(chain[0].public_key().unwrap().public_eq(&key));

    // Non-exportable: the secret holds the certificate only.
    let internal = certs
        .get_certificate("internal-signing", None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    let (n, v) = id_of(internal.sid.as_ref());
    let value = get_secret_value(&secrets, &n, v.as_deref()).await.unwrap();
    let pfx = base64::engine::general_purpose::STANDARD
        .decode(value)
        .unwrap();
    let parsed = Pkcs12::from_der(&pfx).unwrap().parse2("").unwrap();
    assert!(
        parsed.pkey.is_none(),
        "no private key for a non-exportable certificate"
    );
}

// ---------------------------------------------------------------------------------------------
// Faults and tokens
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn throttled_requests_are_retried() {
    let h = Harness::sample();
    let client = h.secrets(Endpoint::Loopback);
    // Challenge and token first, so the counters below see only the retried reads.
    get_secret_value(&client, "api-key", None).await.unwrap();
    h.vault.reset();

    h.vault.add_fault(Fault::status("GetSecret", 429, Some(2)));
    let started = std::time::Instant::now();
    assert_eq!(
        get_secret_value(&client, "api-key", None).await.unwrap(),
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(h.vault.count("GetSecret"), 3, "two 429s, then success");
    let statuses: Vec<u16> = h
        .vault
        .requests()
        .iter()
        .filter(|r| r.op == "GetSecret")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [429, 429, 200]);

    // 503 once: retried too.
    h.vault.add_fault(Fault::status("GetSecret", 503, Some(1)));
    get_secret_value(&client, "api-key", None).await.unwrap();
    assert_eq!(h.vault.count("GetSecret"), 5);

    // Without retries the 429 surfaces with the service's code.
    let no_retry = h.secrets_with(
        Endpoint::Loopback,
        h.credential.clone(),
        RetryOptions::none(),
    );
    h.vault.add_fault(Fault::status("GetSecret", 429, Some(1)));
    let (status, code, _) = http_error(&no_retry.get_secret("api-key", None).await.unwrap_err());
    assert_eq!(
        (status, code.as_deref()),
        (StatusCode::TooManyRequests, Some("Throttled"))
    );
}

/// A credential that asks the token endpoint every time (wraps a fresh `ClientSecretCredential`
/// per call, so the credential's own token cache never answers).
#[derive(Debug)]
struct Uncached {
    make: UncachedFactory,
}

struct UncachedFactory(Box<dyn Fn() -> Arc<ClientSecretCredential> + Send + Sync>);

impl std::fmt::Debug for UncachedFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UncachedFactory")
    }
}

#[async_trait::async_trait]
impl TokenCredential for Uncached {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        (self.make.0)().get_token(scopes, options).await
    }
}

#[tokio::test]
async fn revoked_token_client_reruns_the_challenge() {
    let h = Harness::sample();
    let (http, info) = (h.http.clone(), h.vault.info().clone());
    let make = move || {
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = info.authority_host.clone();
        ClientSecretCredential::new(
            &info.tenant_id,
            info.client_id.clone(),
            Secret::new(info.client_secret.clone()),
            Some(ClientSecretCredentialOptions {
                client_options: ClientOptions {
                    cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
                    ..client_options(&http, fast_retry())
                },
            }),
        )
        .expect("credential builds")
    };
    let credential: Arc<dyn TokenCredential> = Arc::new(Uncached {
        make: UncachedFactory(Box::new(make)),
    });
    let client = h.secrets_with(Endpoint::Loopback, credential, fast_retry());

    get_secret_value(&client, "api-key", None).await.unwrap();
    get_secret_value(&client, "api-key", None).await.unwrap();
    assert_eq!(h.vault.count("Token"), 1, "the client caches its token");
    assert_eq!(h.vault.count("Unauthorized"), 1);

    h.vault.revoke_tokens();
    assert_eq!(
        get_secret_value(&client, "api-key", None).await.unwrap(),
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
        "the client answers the new challenge with a new token"
    );
    assert_eq!(h.vault.count("Unauthorized"), 2);
    assert_eq!(h.vault.count("Token"), 2);

    // The same through the fault that revokes mid-request.
    h.vault.add_fault(Fault {
        op: "GetSecret".into(),
        name: None,
        action: FaultAction::Revoke,
        count: Some(1),
    });
    get_secret_value(&client, "api-key", None).await.unwrap();
    assert_eq!(h.vault.count("Token"), 3);

    let statuses: Vec<u16> = h
        .vault
        .requests()
        .iter()
        .filter(|r| r.op == "GetSecret")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [401, 200, 200, 401, 200, 401, 200]);
}

/// `ClientSecretCredential` keeps its own token cache (renewal only inside 5 minutes of expiry) and
/// `TokenRequestOptions` has no way to bypass it: after a revocation the Key Vault client re-runs
/// the challenge but gets the same revoked token back, so the request fails with 401. A client
/// must build a new credential (or use tokens that live under 5 minutes) to recover.
/// If a later azure_identity starts refreshing on a re-challenge, this test says so.
#[tokio::test]
async fn revoked_token_with_caching_credential() {
    let h = Harness::sample();
    let client = h.secrets(Endpoint::Loopback);
    get_secret_value(&client, "api-key", None).await.unwrap();
    assert_eq!(h.vault.count("Token"), 1);

    h.vault.revoke_tokens();
    let err = client
        .get_secret("api-key", None)
        .await
        .expect_err("the cached revoked token comes back");
    let (status, code, body) = http_error(&err);
    assert_eq!(
        (status, code.as_deref()),
        (StatusCode::Unauthorized, Some("Unauthorized"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("AKV10010"),
        "{body}"
    );
    assert_eq!(h.vault.count("Token"), 1, "no new token was asked for");
    assert_eq!(
        h.vault.count("Unauthorized"),
        3,
        "initial + revoked + retried"
    );

    // Recovery: a new credential (and client) fetches a new token.
    let fresh = secret_credential(&h.vault, &h.http);
    let client = h.secrets_with(Endpoint::Loopback, fresh, fast_retry());
    get_secret_value(&client, "api-key", None).await.unwrap();
    assert_eq!(h.vault.count("Token"), 2);

    // Short-lived tokens: every request renews, so a revocation is never even noticed.
    h.vault
        .update_settings(|s| s.token_lifetime_secs = 120)
        .unwrap();
    let client = h.secrets_with(
        Endpoint::Loopback,
        secret_credential(&h.vault, &h.http),
        fast_retry(),
    );
    get_secret_value(&client, "api-key", None).await.unwrap();
    let tokens = h.vault.count("Token");
    let challenges = h.vault.count("Unauthorized");
    h.vault.revoke_tokens();
    get_secret_value(&client, "api-key", None).await.unwrap();
    assert_eq!(h.vault.count("Token"), tokens + 1);
    assert_eq!(h.vault.count("Unauthorized"), challenges);
}
