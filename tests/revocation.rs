//! A token the vault stops honouring mid-session (revocation, a continuous-access-evaluation
//! event), on real mounts against testvault: kvfs drops it and gets a new one, with and without
//! a claims challenge, for an app and for a managed identity; a vault that refuses every token
//! hears from kvfs rarely, and is served again once it stops refusing. Needs root and /dev/fuse.

mod common;

use std::time::{Duration, Instant};

use common::{LOG_WAIT, Mount, errno, kvfs_env, mark, since, start_vault, wait_until};
use testvault::{Fault, FaultAction, TestVault};

/// Every vault operation a mount reading secrets makes (the token endpoints stay untouched).
const SECRET_OPS: &[&str] = &["GetSecret", "GetSecrets", "GetSecretVersions"];

/// Vault requests (any secret operation) after `mark` answered `status`.
fn answered(vault: &TestVault, mark: u64, status: u16) -> usize {
    SECRET_OPS
        .iter()
        .flat_map(|op| since(vault, mark, op))
        .filter(|e| e.status == status)
        .count()
}

fn revoke_once(vault: &TestVault, action: FaultAction) {
    vault.add_fault(Fault {
        op: "GetSecret".into(),
        name: Some("api-key".into()),
        action,
        count: Some(1),
    });
}

/// Revoke the token in use (the next GET of `api-key` is refused with `action`'s challenge) and
/// change the value; returns how long until a read showed the new value. The reads in between
/// must all succeed or be the old value: the refused request is retried with a new token.
fn revoke_and_recover(
    vault: &TestVault,
    m: &Mount,
    action: FaultAction,
    token_op: &str,
) -> Duration {
    assert_eq!(m.read("secrets/api-key").unwrap(), "before");
    let from = mark(vault);
    revoke_once(vault, action.clone());
    vault.set_secret("api-key", "after").unwrap();
    let started = Instant::now();
    let mut failures = Vec::new();
    wait_until("the new value", Duration::from_secs(20), || {
        match m.read("secrets/api-key") {
            Ok(v) => v == "after",
            Err(e) => {
                failures.push(errno(&e));
                false
            }
        }
    });
    let took = started.elapsed();
    let refused = answered(vault, from, 401);
    // From the refusal to the vault's next good answer, by the vault's own clock.
    let gets = since(vault, from, "GetSecret");
    let first_refusal = gets.iter().find(|e| e.status == 401).map(|e| e.at_ms);
    let recovered_ms = first_refusal.and_then(|at| {
        gets.iter()
            .find(|e| e.status == 200 && e.at_ms >= at)
            .map(|e| e.at_ms - at)
    });
    let new_tokens = since(vault, from, token_op)
        .iter()
        .filter(|e| e.status == 200)
        .count();
    eprintln!(
        "{action:?} via {token_op}: new value after {took:?}, the vault's next 200 {recovered_ms:?} ms \
         after the refusal; {refused} refused request(s), {new_tokens} new token(s), failed reads {failures:?}"
    );
    assert!(recovered_ms.is_some(), "a good answer after the refusal");
    assert!(
        failures.is_empty(),
        "no read failed: {failures:?}\n{}",
        m.log_text()
    );
    // The revoked request, and any other in flight with the same token at that moment.
    assert!(
        (1..=3).contains(&refused),
        "{refused} refusals: {:?}",
        vault.requests()
    );
    assert_eq!(new_tokens, 1, "one new token: {:?}", vault.requests());
    let log = m.log_text();
    assert!(
        log.contains("the vault refused an access token it had accepted"),
        "{log}"
    );
    took
}

fn mount_with_short_ttl(vault: &TestVault, env: Vec<(String, String)>, auth: &str) -> Mount {
    vault.set_secret("api-key", "before").unwrap();
    Mount::start_with_env(vault, &["--auth", auth, "--cache-ttl", "1s"], &env)
}

#[test]
fn a_revoked_token_is_replaced_and_the_read_recovers() {
    let vault = start_vault();
    let mut env = kvfs_env(&vault);
    env.push(("PATH".into(), std::env::var("PATH").unwrap_or_default()));
    let m = mount_with_short_ttl(&vault, env, "client-secret");
    revoke_and_recover(&vault, &m, FaultAction::RevokeBare, "Token");
    // The same again: the second revocation is handled like the first (nothing left paused).
    vault.set_secret("api-key", "before").unwrap();
    wait_until("the old value back", Duration::from_secs(10), || {
        m.read("secrets/api-key").ok().as_deref() == Some("before")
    });
    revoke_and_recover(&vault, &m, FaultAction::RevokeBare, "Token");
}

#[test]
fn a_claims_challenge_gets_a_new_token_and_the_read_recovers() {
    let vault = start_vault();
    let mut env = kvfs_env(&vault);
    env.push(("PATH".into(), std::env::var("PATH").unwrap_or_default()));
    let m = mount_with_short_ttl(&vault, env, "client-secret");
    revoke_and_recover(&vault, &m, FaultAction::RevokeWithClaims, "Token");
    assert!(
        m.log_text().contains("401 with a claims challenge"),
        "{}",
        m.log_text()
    );
}

#[test]
fn a_managed_identity_token_is_replaced_too() {
    let vault = start_vault();
    let i = vault.info().clone();
    let env = vec![
        ("PATH".into(), "/usr/bin:/bin".into()),
        ("KVFS_LOG".into(), "kvfs=debug,warn".into()),
        ("KVFS_IMDS_ENDPOINT".into(), common::NO_IMDS.into()),
        ("IDENTITY_ENDPOINT".into(), i.identity_endpoint.clone()),
        ("IDENTITY_HEADER".into(), i.identity_header.clone()),
    ];
    let m = mount_with_short_ttl(&vault, env, "managed-identity");
    revoke_and_recover(&vault, &m, FaultAction::RevokeBare, "ManagedIdentityToken");
    vault.set_secret("api-key", "before").unwrap();
    wait_until("the old value back", Duration::from_secs(10), || {
        m.read("secrets/api-key").ok().as_deref() == Some("before")
    });
    revoke_and_recover(
        &vault,
        &m,
        FaultAction::RevokeWithClaims,
        "ManagedIdentityToken",
    );
}

#[test]
fn a_vault_that_refuses_every_token_is_asked_rarely_and_served_again_after() {
    let vault = start_vault();
    let mut env = kvfs_env(&vault);
    env.push(("PATH".into(), std::env::var("PATH").unwrap_or_default()));
    let m = mount_with_short_ttl(&vault, env, "client-secret");
    assert_eq!(m.read("secrets/api-key").unwrap(), "before");

    // Every token, old or new, is refused on every secret operation.
    let from = mark(&vault);
    for op in SECRET_OPS {
        vault.add_fault(Fault {
            op: (*op).into(),
            name: None,
            action: FaultAction::RevokeBare,
            count: None,
        });
    }
    // A value read within the last TTL is still served from the cache (see doc/SEMANTICS.md);
    // the first read that asks the vault is refused.
    wait_until("the first refusal", Duration::from_secs(10), || {
        m.read("secrets/api-key")
            .is_err_and(|e| errno(&e) == libc::EACCES)
    });
    let window = Duration::from_secs(30);
    let started = Instant::now();
    let (mut reads, mut eacces) = (0u32, 0u32);
    while started.elapsed() < window {
        reads += 1;
        match m.read("secrets/api-key") {
            Err(e) if errno(&e) == libc::EACCES => eacces += 1,
            Err(e) => panic!("read failed with {e}, not EACCES\n{}", m.log_text()),
            Ok(v) => panic!("a refused identity read {v:?}\n{}", m.log_text()),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let tokens = since(&vault, from, "Token")
        .iter()
        .filter(|e| e.status == 200)
        .count();
    let refused = answered(&vault, from, 401);
    eprintln!(
        "{reads} reads in {window:?}, all EACCES ({eacces}); {tokens} new tokens, {refused} refused requests"
    );
    assert_eq!(eacces, reads);
    // Fresh tokens at 0, 0, 1, 3, 7, 15 and 31 s after the first refusal: about 6 in 30 s. A
    // client without backoff asks once per read (hundreds).
    assert!(
        (3..=10).contains(&tokens),
        "{tokens} token requests in {window:?}\n{}",
        m.log_text()
    );
    assert!(
        refused <= 2 * tokens + 2,
        "{refused} refused vault requests for {tokens} tokens"
    );

    // The vault honours tokens again: served within the next fresh-token attempt (at most a
    // minute away) and the one after it.
    vault.clear_faults();
    vault.set_secret("api-key", "after").unwrap();
    let cleared = Instant::now();
    wait_until("reads served again", Duration::from_secs(90), || {
        m.read("secrets/api-key").ok().as_deref() == Some("after")
    });
    eprintln!(
        "served again {:?} after the vault stopped refusing",
        cleared.elapsed()
    );
    // Logged off the request path (kvfs never blocks a read on its log), so it may land a
    // moment after the read it was about.
    wait_until("the recovery is logged", LOG_WAIT, || {
        m.log_text()
            .contains("the vault accepts the new access token")
    });
}
