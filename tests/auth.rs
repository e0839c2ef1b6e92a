//! Every credential method end to end: kvfs mounts a testvault with each `--auth` method (and
//! `auto`), reads a secret, and the vault's request log shows whose token the reads carried.
//! Everything stays on loopback: managed identity and the metadata endpoint are testvault's, `az`
//! is a script, and the one test that lets `auto` probe the real metadata address runs in a
//! network namespace with nothing but `lo`. Needs root and /dev/fuse, as CI has.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::{
    API_KEY, KVFS, Mount, errno, is_mounted, mark, mount_args, since, start_vault, wait_until,
};
use testvault::{Fault, LogEntry, TestVault};

fn kv(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_string(), v.into())
}

/// The test's PATH without any directory that holds an `az`, so only a fake one is ever found.
fn path_without_az() -> String {
    std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())
        .split(':')
        .filter(|d| !d.is_empty() && !Path::new(d).join("az").exists())
        .collect::<Vec<_>>()
        .join(":")
}

/// What every kvfs here gets: a PATH without `az`, debug logs. No credential at all.
fn base_env() -> Vec<(String, String)> {
    vec![
        kv("PATH", path_without_az()),
        kv("KVFS_LOG", "kvfs=debug,warn"),
        // Tests that use the metadata service set testvault's endpoint over this.
        kv("KVFS_IMDS_ENDPOINT", common::NO_IMDS),
    ]
}

/// Tenant and authority host (testvault's Entra ID endpoints).
fn entra_env(vault: &TestVault) -> Vec<(String, String)> {
    let i = vault.info();
    let mut env = base_env();
    env.push(kv("AZURE_TENANT_ID", i.tenant_id.clone()));
    env.push(kv("AZURE_AUTHORITY_HOST", i.authority_host.clone()));
    env
}

fn secret_env(vault: &TestVault) -> Vec<(String, String)> {
    let i = vault.info();
    let mut env = entra_env(vault);
    env.push(kv("AZURE_CLIENT_ID", i.client_id.clone()));
    env.push(kv("AZURE_CLIENT_SECRET", i.client_secret.clone()));
    env
}

fn certificate_env(vault: &TestVault, file: &Path) -> Vec<(String, String)> {
    let i = vault.info();
    let mut env = entra_env(vault);
    env.push(kv("AZURE_CLIENT_ID", i.certificate_client_id.clone()));
    env.push(kv(
        "AZURE_CLIENT_CERTIFICATE_PATH",
        file.display().to_string(),
    ));
    env
}

fn workload_env(vault: &TestVault) -> Vec<(String, String)> {
    let i = vault.info();
    let mut env = entra_env(vault);
    env.push(kv("AZURE_CLIENT_ID", i.workload_client_id.clone()));
    env.push(kv(
        "AZURE_FEDERATED_TOKEN_FILE",
        i.federated_token_file.display().to_string(),
    ));
    env
}

/// Managed identity, App Service form.
fn app_service_env(vault: &TestVault) -> Vec<(String, String)> {
    let i = vault.info();
    let mut env = base_env();
    env.push(kv("IDENTITY_ENDPOINT", i.identity_endpoint.clone()));
    env.push(kv("IDENTITY_HEADER", i.identity_header.clone()));
    env
}

/// Replace (or add) `key` in `env`.
fn set_env(env: &mut Vec<(String, String)>, key: &str, value: impl Into<String>) {
    env.retain(|(k, _)| k != key);
    env.push(kv(key, value));
}

/// Read `secrets/api-key` through `m` and check that every authenticated GET the vault saw for
/// it carried a token of `identity` (the unauthenticated first request gets the 401 challenge
/// and has no identity).
fn assert_reads_as(vault: &TestVault, m: &Mount, identity: &str) {
    let from = mark(vault);
    let value = m
        .read("secrets/api-key")
        .unwrap_or_else(|e| panic!("read as {identity}: {e}\n{}", m.log_text()));
    assert_eq!(value, API_KEY);
    let gets: Vec<LogEntry> = since(vault, from, "GetSecret")
        .into_iter()
        .filter(|e| e.identity.is_some())
        .collect();
    assert!(
        gets.iter().any(|e| e.status == 200),
        "an authenticated GetSecret as {identity}: {:?}\n{}",
        vault.requests(),
        m.log_text()
    );
    for e in &gets {
        assert_eq!(e.identity.as_deref(), Some(identity), "{e:?}");
    }
}

/// Successful token-endpoint requests (`op`) after `mark`, which must all be for `identity`.
fn tokens_for(vault: &TestVault, mark: u64, op: &str, identity: &str) -> Vec<LogEntry> {
    let tokens: Vec<LogEntry> = since(vault, mark, op)
        .into_iter()
        .filter(|e| e.status == 200)
        .collect();
    for e in &tokens {
        assert_eq!(e.identity.as_deref(), Some(identity), "{e:?}");
    }
    tokens
}

#[test]
fn client_secret_reads_as_the_app() {
    let vault = start_vault();
    let m = Mount::start_with_env(&vault, &["--auth", "client-secret"], &secret_env(&vault));
    assert_reads_as(&vault, &m, "app");
    let tokens = tokens_for(&vault, 0, "Token", "app");
    assert!(!tokens.is_empty(), "{:?}", vault.requests());
    assert!(
        tokens
            .iter()
            .all(|e| e.grant.as_deref() == Some("client_secret"))
    );
}

#[test]
fn without_a_tenant_the_vaults_challenge_names_it() {
    let vault = start_vault();
    let mut env = secret_env(&vault);
    env.retain(|(k, _)| k != "AZURE_TENANT_ID");
    let m = Mount::start_with_env(&vault, &[], &env);
    assert_reads_as(&vault, &m, "app");
    // The log says which tenant the challenge named.
    m.wait_for_log("the challenge's tenant", |log| {
        log.contains(&vault.info().tenant_id)
    });
}

/// A testvault whose client certificate's SHA-1 thumbprint differs in base64 and base64url (it
/// has a `+` or `/`), so an `x5t` in the wrong alphabet is refused (AADSTS700027) every time
/// rather than for about half the certificates (azure_identity 1.0 sends standard base64).
fn vault_with_url_sensitive_thumbprint() -> TestVault {
    use base64::Engine;
    for _ in 0..30 {
        let vault = start_vault();
        let pem = std::fs::read(&vault.info().client_certificate_path).unwrap();
        let cert = openssl::x509::X509::from_pem(&pem).expect("certificate in the PEM");
        let sha1 = cert.digest(openssl::hash::MessageDigest::sha1()).unwrap();
        let x5t = base64::engine::general_purpose::STANDARD.encode(sha1);
        if x5t.contains(['+', '/']) {
            return vault;
        }
    }
    panic!("no testvault with a '+' or '/' in its thumbprint in 30 tries");
}

#[test]
fn client_certificate_reads_as_app_cert_from_pem_and_from_pfx() {
    let vault = vault_with_url_sensitive_thumbprint();
    let info = vault.info().clone();
    for file in [
        &info.client_certificate_path,
        &info.client_certificate_pfx_path,
    ] {
        let from = mark(&vault);
        let m = Mount::start_with_env(
            &vault,
            &["--auth", "client-certificate"],
            &certificate_env(&vault, file),
        );
        assert_reads_as(&vault, &m, "app-cert");
        let tokens = tokens_for(&vault, from, "Token", "app-cert");
        assert!(
            !tokens.is_empty(),
            "{}: {:?}",
            file.display(),
            vault.requests()
        );
        assert!(
            tokens
                .iter()
                .all(|e| e.grant.as_deref() == Some("client_certificate"))
        );
    }
}

#[test]
fn workload_identity_reads_as_workload_and_follows_the_rotated_token_file() {
    let vault = start_vault();
    // Short vault tokens: kvfs renews them within seconds, each time with a fresh assertion.
    vault
        .update_settings(|s| s.token_lifetime_secs = 5)
        .unwrap();
    // The service-account token kvfs starts with expires in 3 s (testvault allows no leeway).
    let first_written = Instant::now();
    vault
        .rotate_federated_token(Duration::from_secs(3))
        .unwrap();
    let m = Mount::start_with_env(
        &vault,
        &["--auth", "workload-identity", "--cache-ttl", "1s"],
        &workload_env(&vault),
    );
    assert_reads_as(&vault, &m, "workload");
    assert!(
        tokens_for(&vault, 0, "Token", "workload")
            .iter()
            .any(|e| e.grant.as_deref() == Some("federated")),
        "{:?}",
        vault.requests()
    );

    // kubelet rotates the file; the first token has expired and the vault revokes every token
    // it issued. Only an assertion read from the new file gets kvfs a token now.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(first_written.elapsed()));
    vault
        .rotate_federated_token(Duration::from_secs(3600))
        .unwrap();
    vault.revoke_tokens();
    let from = mark(&vault);
    vault.set_secret("api-key", "after-the-rotation").unwrap();
    wait_until("a read after the rotation", Duration::from_secs(15), || {
        m.read("secrets/api-key").ok().as_deref() == Some("after-the-rotation")
    });
    let tokens = tokens_for(&vault, from, "Token", "workload");
    assert!(
        tokens
            .iter()
            .any(|e| e.grant.as_deref() == Some("federated")),
        "a token from the new file: {:?}\n{}",
        vault.requests(),
        m.log_text()
    );
    let gets: Vec<LogEntry> = since(&vault, from, "GetSecret")
        .into_iter()
        .filter(|e| e.status == 200)
        .collect();
    assert!(!gets.is_empty());
    assert!(
        gets.iter()
            .all(|e| e.identity.as_deref() == Some("workload"))
    );
    // And it keeps working.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(m.read("secrets/api-key").unwrap(), "after-the-rotation");
}

#[test]
fn managed_identity_through_identity_endpoint_system_and_user_assigned() {
    let vault = start_vault();
    let env = app_service_env(&vault);
    {
        let from = mark(&vault);
        let m = Mount::start_with_env(&vault, &["--auth", "managed-identity"], &env);
        assert_reads_as(&vault, &m, "system-mi");
        let tokens = tokens_for(&vault, from, "ManagedIdentityToken", "system-mi");
        assert!(!tokens.is_empty(), "{:?}", vault.requests());
        assert!(tokens.iter().all(|e| e.path == "/msi/token"), "{tokens:?}");
    }
    {
        let from = mark(&vault);
        let user = vault.info().user_assigned_client_id.clone();
        let m = Mount::start_with_env(
            &vault,
            &["--auth", "managed-identity", "--client-id", &user],
            &env,
        );
        assert_reads_as(&vault, &m, "user-mi");
        let tokens = tokens_for(&vault, from, "ManagedIdentityToken", "user-mi");
        assert!(!tokens.is_empty(), "{:?}", vault.requests());
        assert!(tokens.iter().all(|e| e.path == "/msi/token"), "{tokens:?}");
    }
}

#[test]
fn managed_identity_through_the_metadata_endpoint() {
    let vault = start_vault();
    let imds = vault.info().imds_endpoint.clone();
    {
        let from = mark(&vault);
        let m = Mount::start_with_env(
            &vault,
            &["--auth", "managed-identity", "--imds-endpoint", &imds],
            &base_env(),
        );
        assert_reads_as(&vault, &m, "system-mi");
        let tokens = tokens_for(&vault, from, "ManagedIdentityToken", "system-mi");
        assert!(!tokens.is_empty(), "{:?}", vault.requests());
        assert!(
            tokens
                .iter()
                .all(|e| e.path == "/metadata/identity/oauth2/token"),
            "{tokens:?}"
        );
    }
    {
        // The endpoint from KVFS_IMDS_ENDPOINT, a user-assigned identity by client id.
        let from = mark(&vault);
        let user = vault.info().user_assigned_client_id.clone();
        let mut env = base_env();
        set_env(&mut env, "KVFS_IMDS_ENDPOINT", imds.clone());
        let m = Mount::start_with_env(
            &vault,
            &["--auth", "managed-identity", "--client-id", &user],
            &env,
        );
        assert_reads_as(&vault, &m, "user-mi");
        let tokens = tokens_for(&vault, from, "ManagedIdentityToken", "user-mi");
        assert!(!tokens.is_empty(), "{:?}", vault.requests());
        assert!(
            tokens
                .iter()
                .all(|e| e.path == "/metadata/identity/oauth2/token"),
            "{tokens:?}"
        );
    }
}

/// A directory holding a fake `az` that records its arguments in `az.log` beside it and answers
/// `account get-access-token` with a token minted for `cli-user`.
struct FakeAz {
    dir: tempfile::TempDir,
}

impl FakeAz {
    fn new(vault: &TestVault) -> FakeAz {
        let lifetime = Duration::from_secs(3600);
        let token = vault.mint_token("cli-user", lifetime).expect("cli-user");
        let expires_on = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + lifetime.as_secs();
        let local = time::OffsetDateTime::from_unix_timestamp(expires_on as i64).unwrap();
        let expires_on_text = format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.000000",
            local.year(),
            u8::from(local.month()),
            local.day(),
            local.hour(),
            local.minute(),
            local.second()
        );
        let json = serde_json::json!({
            "accessToken": token,
            "expiresOn": expires_on_text,
            "expires_on": expires_on,
            "subscription": "00000000-0000-0000-0000-000000000001",
            "tenant": vault.info().tenant_id,
            "tokenType": "Bearer",
        });
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("az.log");
        let script = format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\ncase \"$*\" in\n*get-access-token*)\ncat <<'EOF'\n{}\nEOF\n;;\n*) echo '{{\"azure-cli\": \"2.67.0\"}}' ;;\nesac\n",
            log.display(),
            serde_json::to_string_pretty(&json).unwrap()
        );
        let az = dir.path().join("az");
        std::fs::write(&az, script).unwrap();
        std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
        FakeAz { dir }
    }

    /// `env` with the fake `az` first on PATH.
    fn on_path(&self, env: &mut Vec<(String, String)>) {
        let path = format!("{}:{}", self.dir.path().display(), path_without_az());
        set_env(env, "PATH", path);
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("az.log")).unwrap_or_default()
    }
}

#[test]
fn azure_cli_uses_the_token_az_prints() {
    let vault = start_vault();
    let az = FakeAz::new(&vault);
    let mut env = base_env();
    az.on_path(&mut env);
    let m = Mount::start_with_env(&vault, &["--auth", "azure-cli"], &env);
    assert_reads_as(&vault, &m, "cli-user");
    let calls = az.calls();
    assert!(
        calls.lines().any(|l| l.contains("account get-access-token")
            && l.contains("https://vault.azure.net/.default")),
        "az was asked for a vault token: {calls:?}"
    );
    assert_eq!(
        vault.count("Token") + vault.count("ManagedIdentityToken"),
        0,
        "the CLI's token is used as it is: {:?}",
        vault.counters()
    );
}

#[test]
fn short_lived_tokens_are_renewed_while_reads_continue() {
    let vault = start_vault();
    vault
        .update_settings(|s| s.token_lifetime_secs = 5)
        .unwrap();
    let secret = Mount::start_with_env(
        &vault,
        &["--auth", "client-secret", "--cache-ttl", "1s"],
        &secret_env(&vault),
    );
    let managed = Mount::start_with_env(
        &vault,
        &["--auth", "managed-identity", "--cache-ttl", "1s"],
        &app_service_env(&vault),
    );
    // A new value every second, read after the TTL: every read is a fresh GET with a valid token.
    for i in 0..12 {
        let value = format!("value-{i}");
        vault.set_secret("api-key", &value).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        for (m, who) in [(&secret, "client-secret"), (&managed, "managed-identity")] {
            let got = m
                .read("secrets/api-key")
                .unwrap_or_else(|e| panic!("{who} read {i}: {e}\n{}", m.log_text()));
            assert_eq!(got, value, "{who} read {i}\n{}", m.log_text());
        }
    }
    let app = tokens_for(&vault, 0, "Token", "app");
    let mi = tokens_for(&vault, 0, "ManagedIdentityToken", "system-mi");
    assert!(app.len() >= 3, "client-secret tokens renewed: {app:?}");
    assert!(mi.len() >= 3, "managed-identity tokens renewed: {mi:?}");
    for identity in ["app", "system-mi"] {
        let ok = vault
            .requests()
            .iter()
            .filter(|e| e.op == "GetSecret" && e.identity.as_deref() == Some(identity))
            .filter(|e| e.status == 200)
            .count();
        assert!(ok >= 12, "{identity}: {ok} successful GETs");
    }
}

#[test]
fn a_token_endpoint_outage_serves_cached_values_and_a_refusal_is_eacces() {
    let vault = start_vault();
    vault
        .update_settings(|s| s.token_lifetime_secs = 2)
        .unwrap();
    let m = Mount::start_with_env(
        &vault,
        &[
            "--auth",
            "client-secret",
            "--cache-ttl",
            "1s",
            "--max-stale",
            "1h",
        ],
        &secret_env(&vault),
    );
    assert_eq!(m.read("secrets/api-key").unwrap(), API_KEY);

    // The token endpoint fails (503) once the token has expired: the last good value is served,
    // a secret never read is EIO.
    vault.add_fault(Fault::status("Token", 503, None));
    std::thread::sleep(Duration::from_millis(2500));
    let from = mark(&vault);
    vault.set_secret("api-key", "not-yet-seen").unwrap();
    assert_eq!(
        m.read("secrets/api-key").unwrap(),
        API_KEY,
        "stale value while no token can be had\n{}",
        m.log_text()
    );
    let e = m.read("secrets/app-config").unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    assert!(
        since(&vault, from, "Token").iter().any(|e| e.status == 503),
        "kvfs asked for a token: {:?}",
        vault.requests()
    );

    // The token endpoint answers again but refuses the identity: EACCES, nothing stale.
    vault.clear_faults();
    vault.add_fault(Fault::status("Token", 401, None));
    wait_until(
        "EACCES once tokens are refused",
        Duration::from_secs(15),
        || {
            m.read("secrets/api-key")
                .err()
                .is_some_and(|e| errno(&e) == libc::EACCES)
        },
    );

    // And tokens again: the new value.
    vault.clear_faults();
    wait_until("recovery", Duration::from_secs(15), || {
        m.read("secrets/api-key").ok().as_deref() == Some("not-yet-seen")
    });
}

#[test]
fn auto_follows_the_documented_order() {
    let vault = start_vault();
    let i = vault.info().clone();
    let az = FakeAz::new(&vault);
    let imds_flag = ["--imds-endpoint", i.imds_endpoint.as_str()];

    // Everything available: client secret first.
    let mut env = secret_env(&vault);
    env.extend(
        app_service_env(&vault)
            .into_iter()
            .filter(|(k, _)| k.starts_with("IDENTITY_")),
    );
    set_env(
        &mut env,
        "AZURE_CLIENT_CERTIFICATE_PATH",
        i.client_certificate_path.display().to_string(),
    );
    set_env(
        &mut env,
        "AZURE_FEDERATED_TOKEN_FILE",
        i.federated_token_file.display().to_string(),
    );
    az.on_path(&mut env);
    let step = |extra: &[&str], env: &[(String, String)], identity: &str, op: &str, path: &str| {
        let from = mark(&vault);
        let m = Mount::start_with_env(&vault, extra, env);
        assert_reads_as(&vault, &m, identity);
        if !op.is_empty() {
            let tokens = tokens_for(&vault, from, op, identity);
            assert!(
                tokens.iter().any(|e| e.path.ends_with(path)),
                "{identity}: {tokens:?}"
            );
        }
    };
    let mut with_auto = vec!["--auth", "auto"];
    with_auto.extend(imds_flag);
    step(&with_auto, &env, "app", "Token", "/oauth2/v2.0/token");

    // No secret: the certificate (the default --auth is auto).
    env.retain(|(k, _)| k != "AZURE_CLIENT_SECRET");
    set_env(&mut env, "AZURE_CLIENT_ID", i.certificate_client_id.clone());
    step(&imds_flag, &env, "app-cert", "Token", "/oauth2/v2.0/token");

    // No certificate: workload identity.
    env.retain(|(k, _)| k != "AZURE_CLIENT_CERTIFICATE_PATH");
    set_env(&mut env, "AZURE_CLIENT_ID", i.workload_client_id.clone());
    step(&imds_flag, &env, "workload", "Token", "/oauth2/v2.0/token");

    // No federated token (nor client id): managed identity through IDENTITY_ENDPOINT.
    env.retain(|(k, _)| k != "AZURE_FEDERATED_TOKEN_FILE" && k != "AZURE_CLIENT_ID");
    step(
        &imds_flag,
        &env,
        "system-mi",
        "ManagedIdentityToken",
        "/msi/token",
    );

    // No IDENTITY_ENDPOINT: the Azure CLI, before the metadata endpoint.
    env.retain(|(k, _)| !k.starts_with("IDENTITY_"));
    step(&imds_flag, &env, "cli-user", "", "");

    // No az either: the metadata endpoint (here from KVFS_IMDS_ENDPOINT).
    set_env(&mut env, "PATH", path_without_az());
    set_env(&mut env, "KVFS_IMDS_ENDPOINT", i.imds_endpoint.clone());
    step(
        &[],
        &env,
        "system-mi",
        "ManagedIdentityToken",
        "/metadata/identity/oauth2/token",
    );
}

/// `name` on the test's PATH or in the sbin directories.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found"))
}

#[test]
fn auto_with_nothing_configured_fails_fast_naming_every_method() {
    let vault = start_vault();
    let (unshare, ip) = (tool("unshare"), tool("ip"));
    let probe = Command::new(&unshare).args(["-n", "true"]).status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "this test needs `unshare -n` (root) so the metadata probe cannot leave the machine"
    );
    let dir = tempfile::tempdir().unwrap();
    let empty_path = tempfile::tempdir().unwrap();
    // A network namespace with only loopback: 169.254.169.254 is unreachable, whatever the host
    // has. kvfs fails before mounting, so it never needs testvault.
    let script = format!("{} link set lo up; exec \"$0\" \"$@\"", ip.display());
    let start = Instant::now();
    let out = Command::new(&unshare)
        .args(["-n", "/bin/sh", "-c", &script, KVFS])
        .args(mount_args(&vault, dir.path(), &[]))
        .env_clear()
        .env("PATH", empty_path.path())
        .output()
        .expect("unshare runs");
    let elapsed = start.elapsed();
    if is_mounted(dir.path()) {
        let _ = Command::new("umount").arg("-l").arg(dir.path()).status();
        panic!("mounted without a credential");
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("kvfs: ")).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    let line = lines[0].to_lowercase();
    for method in [
        "client-secret",
        "client-certificate",
        "workload-identity",
        "managed-identity",
        "azure-cli",
    ] {
        assert!(line.contains(method), "{method} in {line}");
    }
    assert!(
        line.contains("imds") || line.contains("metadata") || line.contains("169.254.169.254"),
        "the metadata probe in {line}"
    );
}

#[test]
fn an_explicit_method_without_its_inputs_fails_in_one_line_naming_them() {
    let vault = start_vault();
    let i = vault.info().clone();
    let dir = tempfile::tempdir().unwrap();
    let mut no_header = base_env();
    no_header.push(kv("IDENTITY_ENDPOINT", i.identity_endpoint.clone()));
    // (--auth, environment, what the error must name)
    let cases = [
        ("client-secret", entra_env(&vault), "AZURE_CLIENT_SECRET"),
        (
            "client-certificate",
            entra_env(&vault),
            "AZURE_CLIENT_CERTIFICATE_PATH",
        ),
        (
            "workload-identity",
            entra_env(&vault),
            "AZURE_FEDERATED_TOKEN_FILE",
        ),
        ("managed-identity", no_header, "IDENTITY_HEADER"),
        ("azure-cli", base_env(), "az"),
    ];
    for (method, env, named) in cases {
        let start = Instant::now();
        let out = Command::new(KVFS)
            .args(mount_args(&vault, dir.path(), &["--auth", method]))
            .env_clear()
            .envs(env)
            .output()
            .unwrap();
        if is_mounted(dir.path()) {
            let _ = Command::new("umount").arg("-l").arg(dir.path()).status();
            panic!("--auth {method} mounted without its inputs");
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{method}: {err}");
        assert!(start.elapsed() < Duration::from_secs(10), "{method}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("kvfs: ")).collect();
        assert_eq!(lines.len(), 1, "{method}: one line: {err}");
        assert!(
            lines[0].contains(method) && lines[0].contains(named),
            "{method}: {}",
            lines[0]
        );
    }
    assert!(vault.requests().is_empty(), "{:?}", vault.requests());
}
