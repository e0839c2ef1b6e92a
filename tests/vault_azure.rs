//! `AzureVault` against testvault over real HTTPS: the 401 challenge, a real token endpoint
//! (`ClientSecretCredential` built by `client_secret_credential`), RBAC and access-policy
//! denials, faults. Everything stays on 127.0.0.1.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use kvfs::auth::client_secret_credential;
use kvfs::http::{DEFAULT_MAX_RETRIES, DEFAULT_REQUEST_TIMEOUT, http_client};
use kvfs::vault::azure::{AzureVault, AzureVaultOptions};
use kvfs::vault::{Collection, ObjectProps, VaultClient, VaultError, valid_version};
use testvault::identities::{AccessPolicy, PermissionModel};
use testvault::{Fault, FaultAction, IdentitySpec, Options, Seed, TestVault};

const SAMPLE_SEED: &str = include_str!("testvault/seed/sample.json");

/// A functional bound, generous on purpose: the defaults surface an outage in about a second.
const OUTAGE_BOUND: Duration = Duration::from_secs(15);

fn start() -> TestVault {
    TestVault::start(Options {
        seed: Some(Seed::from_json(SAMPLE_SEED).expect("sample seed parses")),
        ..Default::default()
    })
    .expect("testvault starts")
}

fn ca_pem(vault: &TestVault) -> Vec<Vec<u8>> {
    vec![std::fs::read(&vault.info().ca_file).expect("CA file readable")]
}

/// A client-secret credential against testvault's token endpoint, trusting its CA.
fn credential(vault: &TestVault, client_id: &str, secret: &str) -> Arc<dyn TokenCredential> {
    let info = vault.info();
    let http = http_client(&ca_pem(vault), DEFAULT_REQUEST_TIMEOUT).expect("HTTP client");
    client_secret_credential(
        &info.tenant_id,
        client_id,
        secret.to_string(),
        Some(&info.authority_host),
        &http,
    )
    .expect("credential builds")
}

/// `https://127.0.0.1:PORT`: the challenge names `https://vault.azure.net`, so the resource
/// check is off, as `--no-verify-challenge-resource` does for local emulators.
fn azure_at(vault: &TestVault, url: &str, credential: Arc<dyn TokenCredential>) -> AzureVault {
    let mut opts = AzureVaultOptions::new(url.parse().expect("vault URL"), credential);
    opts.extra_ca_pem = ca_pem(vault);
    opts.verify_challenge_resource = false;
    assert_eq!(opts.max_retries, DEFAULT_MAX_RETRIES);
    AzureVault::new(opts).expect("vault client builds")
}

/// As testvault's `app` identity (a Key Vault Administrator).
fn azure(vault: &TestVault) -> AzureVault {
    let info = vault.info();
    let credential = credential(vault, &info.client_id, &info.client_secret);
    azure_at(vault, &info.vault_url, credential)
}

fn names(items: &[ObjectProps]) -> BTreeMap<String, bool> {
    items.iter().map(|p| (p.name.clone(), p.managed)).collect()
}

#[tokio::test]
async fn secret_list_follows_every_page_and_flags_certificate_backed_secrets() {
    let vault = start();
    for i in 0..8 {
        vault
            .set_secret(&format!("bulk-{i:02}"), &format!("bulk value {i}"))
            .unwrap();
    }
    vault.update_settings(|s| s.page_size = 3).unwrap();
    let kv = azure(&vault);

    let items = kv.list(Collection::Secrets).await.unwrap();

    let mut expected: BTreeMap<String, bool> = [
        "db-password",
        "api-key",
        "connection-string",
        "app-config",
        "retired-token",
    ]
    .into_iter()
    .map(|n| (n.to_string(), false))
    .collect();
    for cert in ["web", "web-pem", "internal-signing"] {
        expected.insert(cert.to_string(), true);
    }
    for i in 0..8 {
        expected.insert(format!("bulk-{i:02}"), false);
    }
    assert_eq!(names(&items), expected);
    assert_eq!(items.len(), 16, "each name once");
    assert_eq!(vault.count("GetSecrets"), 6, "16 items in pages of 3");
    assert!(items.iter().all(|p| p.version.is_none()));

    let by_name: BTreeMap<&str, &ObjectProps> =
        items.iter().map(|p| (p.name.as_str(), p)).collect();
    assert!(!by_name["retired-token"].enabled);
    assert!(by_name["api-key"].enabled);
    let db = by_name["db-password"];
    assert_eq!(db.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        db.tags.get("owner").map(String::as_str),
        Some("platform"),
        "{db:?}"
    );
    assert!(db.created.is_some() && db.updated.is_some());
    let web = by_name["web"];
    assert_eq!(web.content_type.as_deref(), Some("application/x-pkcs12"));
    assert!(web.not_before.is_some() && web.expires.is_some());

    // Shuffled pages with empty pages in between change nothing.
    vault
        .update_settings(|s| {
            s.shuffle_lists = true;
            s.empty_pages = true;
        })
        .unwrap();
    let again = kv.list(Collection::Secrets).await.unwrap();
    assert_eq!(names(&again), expected);
    assert_eq!(again.len(), 16);
}

#[tokio::test]
async fn keys_and_certificates_are_listed() {
    let vault = start();
    vault.update_settings(|s| s.page_size = 2).unwrap();
    let kv = azure(&vault);

    let keys = kv.list(Collection::Keys).await.unwrap();
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
    assert_eq!(names(&keys), expected);
    assert!(keys.iter().all(|k| k.version.is_none() && k.enabled));

    let certs = kv.list(Collection::Certificates).await.unwrap();
    let expected: BTreeSet<&str> = ["web", "web-pem", "internal-signing"].into();
    assert_eq!(
        certs
            .iter()
            .map(|c| c.name.as_str())
            .collect::<BTreeSet<_>>(),
        expected
    );
    assert_eq!(certs.len(), 3);
    assert!(
        certs
            .iter()
            .all(|c| c.version.is_none() && !c.managed && c.expires.is_some())
    );
}

#[tokio::test]
async fn versions_are_listed_oldest_first_and_unknown_names_have_none() {
    let vault = start();
    let kv = azure(&vault);

    let versions = kv
        .list_versions(Collection::Secrets, "db-password")
        .await
        .unwrap();
    assert_eq!(versions.len(), 3);
    assert!(versions.windows(2).all(|w| w[0].created <= w[1].created));
    let mut values = Vec::new();
    for v in &versions {
        assert_eq!(v.name, "db-password");
        let id = v.version.as_deref().expect("versioned");
        assert!(valid_version(id), "{id}");
        values.push(
            kv.get_secret("db-password", Some(id))
                .await
                .unwrap()
                .value
                .clone(),
        );
    }
    let values: BTreeSet<Vec<u8>> = values.into_iter().collect();
    assert_eq!(values.len(), 3);

    // The service lists versions by id, not time; ours come oldest first. Timestamps are whole
    // seconds (the seed's versions share one), so rotate a second later to see the order.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let newest = vault.set_secret("db-password", "newest").unwrap();
    let versions = kv
        .list_versions(Collection::Secrets, "db-password")
        .await
        .unwrap();
    assert_eq!(versions.len(), 4);
    assert_eq!(versions[3].version.as_deref(), Some(newest.as_str()));
    assert!(versions[2].created < versions[3].created);

    let keys = kv
        .list_versions(Collection::Keys, "signing-rsa")
        .await
        .unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k.version.is_some()));
    let certs = kv
        .list_versions(Collection::Certificates, "web")
        .await
        .unwrap();
    assert_eq!(certs.len(), 1);

    for collection in [
        Collection::Secrets,
        Collection::Keys,
        Collection::Certificates,
    ] {
        assert_eq!(
            kv.list_versions(collection, "no-such-object").await,
            Ok(vec![]),
            "{collection:?}"
        );
    }
}

#[tokio::test]
async fn get_latest_by_version_and_after_rotation() {
    let vault = start();
    let kv = azure(&vault);

    let latest = kv.get_secret("db-password", None).await.unwrap();
    assert_eq!(latest.value, b"c0rrect-h0rse-battery-staple");
    assert_eq!(latest.props.name, "db-password");
    assert_eq!(latest.props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        latest.props.tags.get("rotation").map(String::as_str),
        Some("90d")
    );
    assert!(latest.props.enabled && !latest.props.managed);
    let old_version = latest.props.version.clone().expect("versioned");

    // Case-insensitive names; the props keep the stored casing.
    let shouted = kv.get_secret("DB-PASSWORD", None).await.unwrap();
    assert_eq!(shouted.props.name, "db-password");

    // Rotation: a new version becomes latest; the old one stays readable by version.
    let new_version = vault.set_secret("db-password", "rotated-value").unwrap();
    let rotated = kv.get_secret("db-password", None).await.unwrap();
    assert_eq!(rotated.value, b"rotated-value");
    assert_eq!(rotated.props.version.as_deref(), Some(new_version.as_str()));
    assert_ne!(new_version, old_version);
    let old = kv
        .get_secret("db-password", Some(&old_version))
        .await
        .unwrap();
    assert_eq!(old.value, b"c0rrect-h0rse-battery-staple");

    // A certificate's backing secret reads as stored (base64 PFX text).
    let web = kv.get_secret("web", None).await.unwrap();
    assert!(web.props.managed);
    assert_eq!(
        web.props.content_type.as_deref(),
        Some("application/x-pkcs12")
    );
    assert!(web.value.starts_with(b"MII"), "base64 of a PKCS#12 blob");

    // One challenge and one token for the whole session.
    assert_eq!(vault.count("Unauthorized"), 1);
    assert_eq!(vault.count("Token"), 1);
}

#[tokio::test]
async fn disabled_unknown_and_impossible_names() {
    let vault = start();
    let kv = azure(&vault);

    assert_eq!(
        kv.get_secret("retired-token", None).await,
        Err(VaultError::Disabled)
    );
    assert!(kv.get_secret("api-key", None).await.is_ok());
    vault.set_secret_enabled("api-key", false).unwrap();
    assert_eq!(
        kv.get_secret("api-key", None).await,
        Err(VaultError::Disabled)
    );

    assert_eq!(
        kv.get_secret("no-such-secret", None).await,
        Err(VaultError::NotFound)
    );
    assert_eq!(
        kv.get_secret("db-password", Some("0123456789abcdef0123456789abcdef"))
            .await,
        Err(VaultError::NotFound)
    );

    // Names and versions the vault cannot have are answered without a request.
    let before = vault.count("GetSecret");
    for (name, version) in [
        ("a_b", None),
        ("../keys/x", None),
        ("", None),
        ("db-password", Some("../../x")),
    ] {
        assert_eq!(
            kv.get_secret(name, version).await,
            Err(VaultError::NotFound),
            "{name:?}"
        );
    }
    assert_eq!(vault.count("GetSecret"), before);
}

#[tokio::test]
async fn rbac_denials_name_the_action_and_the_role() {
    let vault = start();
    let reader = vault
        .add_identity(IdentitySpec {
            name: "reader".into(),
            roles: Some(vec!["Key Vault Reader".into()]),
            ..Default::default()
        })
        .unwrap();
    let info = vault.info();
    let kv = azure_at(
        &vault,
        &info.vault_url,
        credential(
            &vault,
            &reader.client_id,
            reader.client_secret.as_deref().unwrap(),
        ),
    );

    // Reader may list metadata, not read values.
    assert_eq!(kv.list(Collection::Secrets).await.unwrap().len(), 8);
    assert_eq!(kv.list(Collection::Keys).await.unwrap().len(), 5);
    let err = kv.get_secret("db-password", None).await.unwrap_err();
    let VaultError::Forbidden(message) = &err else {
        panic!("{err:?}")
    };
    eprintln!("RBAC denial: {err}");
    assert!(message.contains("'Key Vault Secrets User'"), "{message}");
    assert!(
        message.contains("Microsoft.KeyVault/vaults/secrets/getSecret/action"),
        "{message}"
    );
    assert!(message.contains(&reader.client_id), "{message}");
    assert!(err.to_string().starts_with("access denied: "));

    // Secrets User may not list keys.
    let user = vault
        .add_identity(IdentitySpec {
            name: "secrets-user".into(),
            roles: Some(vec!["Key Vault Secrets User".into()]),
            ..Default::default()
        })
        .unwrap();
    let kv = azure_at(
        &vault,
        &info.vault_url,
        credential(
            &vault,
            &user.client_id,
            user.client_secret.as_deref().unwrap(),
        ),
    );
    assert!(kv.get_secret("db-password", None).await.is_ok());
    let err = kv.list(Collection::Keys).await.unwrap_err();
    let VaultError::Forbidden(message) = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains("'Key Vault Crypto User'"), "{message}");
    assert!(
        message.contains("Microsoft.KeyVault/vaults/keys/read"),
        "{message}"
    );
}

#[tokio::test]
async fn access_policy_denials_name_the_permission() {
    let vault = start();
    vault
        .update_settings(|s| s.permission_model = PermissionModel::AccessPolicy)
        .unwrap();
    let lister = vault
        .add_identity(IdentitySpec {
            name: "lister".into(),
            access_policy: Some(AccessPolicy {
                secrets: vec!["list".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
    let kv = azure_at(
        &vault,
        &vault.info().vault_url,
        credential(
            &vault,
            &lister.client_id,
            lister.client_secret.as_deref().unwrap(),
        ),
    );
    assert!(kv.list(Collection::Secrets).await.is_ok());
    let err = kv.get_secret("db-password", None).await.unwrap_err();
    let VaultError::Forbidden(message) = &err else {
        panic!("{err:?}")
    };
    eprintln!("access-policy denial: {err}");
    assert!(
        message.contains("lacks the 'secrets get' access-policy permission"),
        "{message}"
    );
    let err = kv.list(Collection::Certificates).await.unwrap_err();
    let VaultError::Forbidden(message) = &err else {
        panic!("{err:?}")
    };
    assert!(message.contains("'certificates list'"), "{message}");
}

#[tokio::test]
async fn a_wrong_client_secret_is_unauthorized_with_the_reason() {
    let vault = start();
    let info = vault.info();
    let wrong = "tv~definitely-not-the-secret";
    let kv = azure_at(
        &vault,
        &info.vault_url,
        credential(&vault, &info.client_id, wrong),
    );
    let err = kv.get_secret("db-password", None).await.unwrap_err();
    let VaultError::Unauthorized(message) = &err else {
        panic!("{err:?}")
    };
    eprintln!("wrong secret: {err}");
    // The reason comes from deep in the source() chain.
    assert!(message.contains("AADSTS7000215"), "{message}");
    assert!(!message.contains(wrong), "the secret leaked: {message}");
    assert!(!message.contains(&info.client_secret), "{message}");
    let err = kv.list(Collection::Keys).await.unwrap_err();
    assert!(matches!(err, VaultError::Unauthorized(_)), "{err:?}");
}

#[tokio::test]
async fn an_outage_surfaces_as_unavailable_within_seconds() {
    let vault = start();
    let kv = azure(&vault);
    kv.get_secret("api-key", None).await.unwrap();

    // A vault answering 503 forever.
    vault.add_fault(Fault {
        op: "GetSecret".into(),
        name: None,
        action: FaultAction::Status {
            status: 503,
            retry_after: None,
        },
        count: None,
    });
    let before = vault.count("GetSecret");
    let started = Instant::now();
    let err = kv.get_secret("api-key", None).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, VaultError::Unavailable(m) if m.contains("503")),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(took < OUTAGE_BOUND, "took {took:?}");
    assert_eq!(
        vault.count("GetSecret") - before,
        u64::from(DEFAULT_MAX_RETRIES) + 1,
        "one attempt and the retries"
    );
    eprintln!("503 outage surfaced after {took:?}");

    // A list page failing the same way.
    vault.add_fault(Fault::status("GetSecrets", 500, None));
    let started = Instant::now();
    let err = kv.list(Collection::Secrets).await.unwrap_err();
    assert!(matches!(err, VaultError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < OUTAGE_BOUND);

    // Connections dropped without an answer.
    vault.clear_faults();
    vault.add_fault(Fault {
        op: "GetSecret".into(),
        name: None,
        action: FaultAction::Drop,
        count: None,
    });
    let started = Instant::now();
    let err = kv.get_secret("api-key", None).await.unwrap_err();
    assert!(matches!(err, VaultError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < OUTAGE_BOUND);

    // Nothing listening at all.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let info = vault.info();
    let gone = azure_at(
        &vault,
        &format!("https://127.0.0.1:{port}"),
        credential(&vault, &info.client_id, &info.client_secret),
    );
    let started = Instant::now();
    let err = gone.get_secret("api-key", None).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, VaultError::Unavailable(m) if m.to_ascii_lowercase().contains("connect")),
        "{err:?}"
    );
    assert!(took < OUTAGE_BOUND, "took {took:?}");
    eprintln!("connection refused surfaced after {took:?}: {err}");
}

#[tokio::test]
async fn throttling_is_retried_briefly_then_reported() {
    let vault = start();
    let kv = azure(&vault);
    kv.get_secret("api-key", None).await.unwrap();

    // Once: retried, then served.
    vault.add_fault(Fault::status("GetSecret", 429, Some(1)));
    let before = vault.count("GetSecret");
    let secret = kv.get_secret("api-key", None).await.unwrap();
    assert_eq!(secret.value, b"sk_test_4eC39HqLyjWDarjtT1zdp7dc");
    assert_eq!(vault.count("GetSecret") - before, 2);

    // For good, even asking for a minute: reported as Throttled within the bound.
    vault.add_fault(Fault {
        op: "GetSecret".into(),
        name: None,
        action: FaultAction::Status {
            status: 429,
            retry_after: Some(60),
        },
        count: None,
    });
    let started = Instant::now();
    assert_eq!(
        kv.get_secret("api-key", None).await,
        Err(VaultError::Throttled)
    );
    assert!(started.elapsed() < OUTAGE_BOUND, "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_token_endpoint_outage_is_unavailable_not_unauthorized() {
    let vault = start();
    vault.add_fault(Fault::status("Token", 503, None));
    let kv = azure(&vault);
    let started = Instant::now();
    let err = kv.get_secret("api-key", None).await.unwrap_err();
    eprintln!("token endpoint outage after {:?}: {err}", started.elapsed());
    assert!(
        matches!(&err, VaultError::Unavailable(m) if m.contains("token")),
        "{err:?}"
    );
    assert!(started.elapsed() < OUTAGE_BOUND);

    // Once the endpoint recovers, the same client gets through.
    vault.clear_faults();
    assert!(kv.get_secret("api-key", None).await.is_ok());
}
