//! testvault's own behaviour, seen over raw HTTPS with reqwest (no SDK): the challenge, counters,
//! the request log, fault injection, api-version checks and the life cycle of a `TestVault`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testvault::{Fault, FaultAction, Options, TestVault};

mod common;
use common::{http_builder as builder, http_client as client, port_of, sample_seed, start};

const API: &str = "api-version=7.5";

fn token(vault: &TestVault) -> String {
    vault
        .mint_token("app", Duration::from_secs(600))
        .expect("built-in identity app")
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// `GET {base}{path_and_query}`, with a bearer token when given.
async fn get(
    http: &reqwest::Client,
    base: &str,
    path_and_query: &str,
    bearer: Option<&str>,
) -> Answer {
    let mut request = http.get(format!("{base}{path_and_query}"));
    if let Some(t) = bearer {
        request = request.bearer_auth(t);
    }
    answer(request.send().await.expect("request sent")).await
}

#[tokio::test]
async fn unauthenticated_request_gets_the_exact_challenge() {
    let vault = start(Some(sample_seed()));
    let http = client(&vault);
    let info = vault.info().clone();

    let a = get(
        &http,
        &info.vault_url,
        &format!("/secrets/db-password?{API}"),
        None,
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.headers["www-authenticate"].to_str().unwrap(),
        format!(
            "Bearer authorization=\"https://login.windows.net/{}\", resource=\"https://vault.azure.net\"",
            info.tenant_id
        )
    );
    assert_eq!(
        a.headers["content-type"].to_str().unwrap(),
        "application/json; charset=utf-8"
    );
    assert_eq!(
        a.body,
        json!({"error": {"code": "Unauthorized",
                         "message": "AKV10000: Request is missing a Bearer or PoP token."}})
    );

    // Through the *.vault.localhost name the challenge names a resource that passes the SDKs' check.
    let a = get(
        &http,
        &info.vault_host_url,
        &format!("/secrets/db-password?{API}"),
        None,
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.headers["www-authenticate"].to_str().unwrap(),
        format!(
            "Bearer authorization=\"https://login.windows.net/{}\", resource=\"https://vault.localhost:{}\"",
            info.tenant_id,
            port_of(&vault)
        )
    );

    // A token that is not a token: challenged again, with the AKV10022 wording.
    let a = get(
        &http,
        &info.vault_url,
        &format!("/secrets/db-password?{API}"),
        Some("not-a-jwt"),
    )
    .await;
    assert_eq!(a.status, 401);
    assert!(a.headers.contains_key("www-authenticate"));
    assert_eq!(a.body["error"]["code"], "Unauthorized");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("AKV10022"),
        "{}",
        a.body
    );

    // The setting that names the server itself as authority.
    vault
        .update_settings(|s| s.challenge_authority_self = true)
        .unwrap();
    let a = get(&http, &info.vault_url, &format!("/keys?{API}"), None).await;
    assert_eq!(
        a.headers["www-authenticate"].to_str().unwrap(),
        format!(
            "Bearer authorization=\"{}/{}\", resource=\"https://vault.azure.net\"",
            info.authority_host, info.tenant_id
        )
    );

    assert_eq!(vault.count("Unauthorized"), 4);
    assert_eq!(
        vault.count("GetSecret"),
        0,
        "challenged requests are not operations"
    );
}

#[tokio::test]
async fn counters_count_one_get_per_authorised_request() {
    let vault = start(Some(sample_seed()));
    let http = client(&vault);
    let base = vault.info().vault_url.clone();
    let t = token(&vault);

    for name in ["db-password", "api-key", "db-password"] {
        let a = get(&http, &base, &format!("/secrets/{name}?{API}"), Some(&t)).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    for _ in 0..2 {
        let a = get(&http, &base, &format!("/secrets/api-key?{API}"), None).await;
        assert_eq!(a.status, 401);
    }
    let a = get(&http, &base, &format!("/secrets?{API}"), Some(&t)).await;
    assert_eq!(a.status, 200);
    // A failed but authorised read still counts as one request of its operation.
    let a = get(&http, &base, &format!("/secrets/nope?{API}"), Some(&t)).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.body["error"]["code"], "SecretNotFound");

    assert_eq!(vault.count("GetSecret"), 4);
    assert_eq!(vault.count("Unauthorized"), 2);
    assert_eq!(vault.count("GetSecrets"), 1);
    assert_eq!(vault.count("GetKey"), 0);
    let counters = vault.counters();
    assert_eq!(counters.get("GetSecret"), Some(&4));
    assert!(!counters.contains_key("Token"), "no token endpoint use");

    // The log: one entry per request, challenged ones with status 401 and no identity.
    let log: Vec<_> = vault
        .requests()
        .into_iter()
        .filter(|r| r.op == "GetSecret")
        .collect();
    let statuses: Vec<u16> = log.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 401, 401, 404]);
    for r in &log {
        match r.status {
            401 => assert_eq!(r.identity, None),
            _ => {
                assert_eq!(r.identity.as_deref(), Some("app"));
                assert_eq!(
                    r.client_id.as_deref(),
                    Some(vault.info().client_id.as_str())
                );
            }
        }
        assert_eq!(r.method, "GET");
    }
    assert_eq!(log[0].name.as_deref(), Some("db-password"));

    vault.reset();
    assert!(vault.counters().is_empty());
    assert!(vault.requests().is_empty());
}

#[tokio::test]
async fn request_log_never_contains_secret_values() {
    let seed = sample_seed();
    let vault = start(Some(seed.clone()));
    let http = client(&vault);
    let info = vault.info().clone();
    let t = token(&vault);

    let mut values: Vec<String> = Vec::new();
    for s in &seed.secrets {
        values.push(s.value.clone());
        values.extend(s.previous.iter().cloned());
    }

    // Read every version of every secret (values travel in the answers), list them, read the
    // certificates' secrets, write one through PUT, and get a token with the client secret.
    for s in &seed.secrets {
        let versions = get(
            &http,
            &info.vault_url,
            &format!("/secrets/{}/versions?{API}", s.name),
            Some(&t),
        )
        .await;
        for item in versions.body["value"].as_array().unwrap() {
            let id = item["id"].as_str().unwrap();
            let version = id.rsplit('/').next().unwrap();
            let a = get(
                &http,
                &info.vault_url,
                &format!("/secrets/{}/{version}?{API}", s.name),
                Some(&t),
            )
            .await;
            if a.status == 200 {
                assert!(values.contains(&a.body["value"].as_str().unwrap().to_string()));
            } else {
                assert_eq!((a.status, s.enabled), (403, false), "{}", a.body);
            }
        }
    }
    for c in &seed.certificates {
        let a = get(
            &http,
            &info.vault_url,
            &format!("/secrets/{}?{API}", c.name),
            Some(&t),
        )
        .await;
        assert_eq!(a.status, 200);
        values.push(a.body["value"].as_str().unwrap().to_string());
    }
    let put = http
        .put(format!("{}/secrets/written-by-put?{API}", info.vault_url))
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body(json!({"value": "put-value-7f3a9c"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    values.push("put-value-7f3a9c".into());

    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", &info.client_id)
        .append_pair("client_secret", &info.client_secret)
        .append_pair("grant_type", "client_credentials")
        .append_pair("scope", "https://vault.azure.net/.default")
        .finish();
    let tok = http
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            info.authority_host, info.tenant_id
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    let tok = answer(tok).await;
    assert_eq!(tok.status, 200, "{}", tok.body);
    let access_token = tok.body["access_token"].as_str().unwrap().to_string();
    values.push(info.client_secret.clone());
    values.push(access_token);
    values.push(t.clone());

    let log = vault.requests();
    assert_eq!(
        log.len(),
        17,
        "5 version lists, 7 versions, 3 certificate secrets, 1 PUT, 1 token"
    );
    assert!(
        log.iter()
            .any(|r| r.op == "Token" && r.grant.as_deref() == Some("client_secret"))
    );
    let text =
        serde_json::to_string(&log).unwrap() + &serde_json::to_string(&vault.counters()).unwrap();
    for v in &values {
        assert!(
            !text.contains(v.as_str()),
            "request log contains a value: {v:.40}"
        );
    }
}

#[tokio::test]
async fn drop_fault_closes_the_connection() {
    let vault = start(Some(sample_seed()));
    // No pooled connections: each request opens its own, so nothing retries on a reused one.
    let http = builder(&vault).pool_max_idle_per_host(0).build().unwrap();
    let base = vault.info().vault_url.clone();
    let t = token(&vault);

    vault.add_fault(Fault {
        op: "GetSecret".into(),
        name: Some("api-key".into()),
        action: FaultAction::Drop,
        count: Some(1),
    });
    // Another name is not affected.
    assert_eq!(
        get(
            &http,
            &base,
            &format!("/secrets/db-password?{API}"),
            Some(&t)
        )
        .await
        .status,
        200
    );

    let result = http
        .get(format!("{base}/secrets/api-key?{API}"))
        .bearer_auth(&t)
        .send()
        .await;
    let err = match result {
        Ok(r) => panic!("expected a dropped connection, got HTTP {}", r.status()),
        Err(e) => e,
    };
    assert!(err.is_request() || err.is_connect(), "{err:?}");
    assert!(err.status().is_none());

    // Used up: the next one is answered.
    assert_eq!(
        get(&http, &base, &format!("/secrets/api-key?{API}"), Some(&t))
            .await
            .status,
        200
    );
    let dropped: Vec<_> = vault
        .requests()
        .into_iter()
        .filter(|r| r.fault.as_deref() == Some("drop"))
        .collect();
    assert_eq!(dropped.len(), 1);
    assert_eq!(vault.count("GetSecret"), 3);
}

#[tokio::test]
async fn delay_fault_holds_the_answer() {
    let vault = start(Some(sample_seed()));
    let http = client(&vault);
    let base = vault.info().vault_url.clone();
    let t = token(&vault);
    let path = format!("/secrets/api-key?{API}");

    vault.add_fault(Fault {
        op: "GetSecret".into(),
        name: None,
        action: FaultAction::Delay { ms: 400 },
        count: Some(1),
    });
    let started = Instant::now();
    let a = get(&http, &base, &path, Some(&t)).await;
    let elapsed = started.elapsed();
    assert_eq!(a.status, 200);
    assert_eq!(a.body["value"], "sk_test_4eC39HqLyjWDarjtT1zdp7dc");
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");

    // A client with a shorter timeout gives up.
    vault.add_fault(Fault {
        op: "GetSecret".into(),
        name: None,
        action: FaultAction::Delay { ms: 1000 },
        count: Some(1),
    });
    let impatient = builder(&vault)
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let err = impatient
        .get(format!("{base}{path}"))
        .bearer_auth(&t)
        .send()
        .await
        .expect_err("times out");
    assert!(err.is_timeout(), "{err:?}");

    let delayed = vault
        .requests()
        .iter()
        .filter(|r| r.fault.as_deref().is_some_and(|f| f.starts_with("delay")))
        .count();
    assert!(delayed >= 1);
}

#[tokio::test]
async fn api_version_is_checked() {
    let vault = start(Some(sample_seed()));
    let http = client(&vault);
    let base = vault.info().vault_url.clone();
    let t = token(&vault);

    let a = get(
        &http,
        &base,
        "/secrets/api-key?api-version=1999-01-01",
        Some(&t),
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.body,
        json!({"error": {"code": "BadParameter",
            "message": "The specified version (1999-01-01) is not recognized. Consider using the latest supported version (2026-04-01)."}})
    );

    let a = get(&http, &base, "/secrets/api-key", Some(&t)).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["error"]["code"], "BadParameter");

    for version in ["7.0", "7.6", "2025-07-01", "2026-04-01"] {
        let a = get(
            &http,
            &base,
            &format!("/secrets/api-key?api-version={version}"),
            Some(&t),
        )
        .await;
        assert_eq!(a.status, 200, "api-version {version}: {}", a.body);
    }
}

#[tokio::test]
async fn dropped_testvault_stops_and_removes_its_state_dir() {
    let vault = start(None);
    let info = vault.info().clone();
    assert!(info.state_dir.is_dir());
    assert!(info.ca_file.is_file());
    // No connection pool, so the request after the drop needs a new connection.
    let http = builder(&vault).pool_max_idle_per_host(0).build().unwrap();
    assert_eq!(
        get(&http, &info.vault_url, &format!("/secrets?{API}"), None)
            .await
            .status,
        401
    );

    let started = Instant::now();
    drop(vault);
    assert!(started.elapsed() < Duration::from_secs(5), "stops promptly");
    assert!(!info.state_dir.exists(), "temporary state dir removed");
    let result = http
        .get(format!("{}/secrets?{API}", info.vault_url))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(result.is_err(), "nothing listens after drop");

    // A caller-given state dir is left in place.
    let dir = std::env::temp_dir().join(format!("testvault-api-{}", std::process::id()));
    let vault = TestVault::start(Options {
        state_dir: Some(dir.clone()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(vault.info().state_dir, dir);
    assert!(dir.join("ca.pem").is_file());
    vault.stop();
    assert!(dir.is_dir(), "a given state dir is not removed");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn two_testvaults_run_side_by_side() {
    let a = start(None);
    let b = start(None);
    assert_ne!(port_of(&a), port_of(&b));
    assert_ne!(a.info().state_dir, b.info().state_dir);
    a.set_secret("shared-name", "value-in-a").unwrap();
    b.set_secret("shared-name", "value-in-b").unwrap();

    let (http_a, http_b) = (client(&a), client(&b));
    let (ta, tb) = (token(&a), token(&b));
    let path = format!("/secrets/shared-name?{API}");
    let got_a = get(&http_a, &a.info().vault_url, &path, Some(&ta)).await;
    let got_b = get(&http_b, &b.info().vault_url, &path, Some(&tb)).await;
    assert_eq!(got_a.body["value"], "value-in-a");
    assert_eq!(got_b.body["value"], "value-in-b");

    // Each has its own token key and its own CA.
    let cross = get(&http_b, &b.info().vault_url, &path, Some(&ta)).await;
    assert_eq!(
        cross.status, 401,
        "a token of one vault is refused by the other"
    );
    let wrong_ca = http_a
        .get(format!("{}{path}", b.info().vault_url))
        .send()
        .await;
    assert!(wrong_ca.is_err(), "a's CA does not vouch for b's server");

    assert_eq!(a.count("GetSecret"), 1);
    assert_eq!(b.count("GetSecret"), 1);
    assert_eq!(b.count("Unauthorized"), 1);

    drop(a);
    assert_eq!(
        get(&http_b, &b.info().vault_url, &path, Some(&tb))
            .await
            .status,
        200,
        "stopping one leaves the other running"
    );
}

/// Both revocation faults: the token in use stops working from that request on, and a token
/// minted afterwards works. What differs is the challenge the refusal carries.
async fn revoke_once(vault: &TestVault, action: FaultAction) -> Answer {
    let http = client(vault);
    let base = vault.info().vault_url.clone();
    let path = format!("/secrets/api-key?{API}");
    let before = token(vault);
    assert_eq!(get(&http, &base, &path, Some(&before)).await.status, 200);
    vault.add_fault(Fault {
        op: "GetSecret".into(),
        name: None,
        action,
        count: Some(1),
    });
    let refused = get(&http, &base, &path, Some(&before)).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.body["error"]["code"], "Unauthorized");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("AKV10010"),
        "{}",
        refused.body
    );
    // Revoked for good, not just for the faulted request.
    assert_eq!(get(&http, &base, &path, Some(&before)).await.status, 401);
    let after = token(vault);
    let a = get(&http, &base, &path, Some(&after)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["value"], "sk_test_4eC39HqLyjWDarjtT1zdp7dc");
    refused
}

#[tokio::test]
async fn revoke_bare_fault_answers_the_plain_challenge() {
    let vault = start(Some(sample_seed()));
    let refused = revoke_once(&vault, FaultAction::RevokeBare).await;
    assert_eq!(
        refused.headers["www-authenticate"].to_str().unwrap(),
        format!(
            "Bearer authorization=\"https://login.windows.net/{}\", resource=\"https://vault.azure.net\"",
            vault.info().tenant_id
        )
    );
    let faulted: Vec<_> = vault
        .requests()
        .into_iter()
        .filter_map(|r| r.fault)
        .collect();
    assert_eq!(faulted, ["revoke_bare"]);
}

#[tokio::test]
async fn revoke_with_claims_fault_sends_a_claims_challenge() {
    use base64::Engine;
    let vault = start(Some(sample_seed()));
    let refused = revoke_once(&vault, FaultAction::RevokeWithClaims).await;
    let header = refused.headers["www-authenticate"].to_str().unwrap();
    assert!(header.starts_with("Bearer authorization=\""), "{header}");
    assert!(header.contains("error=\"invalid_token\""), "{header}");
    assert!(!header.contains("resource="), "{header}");
    let claims = header
        .split("claims=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a claims parameter");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["access_token"]["nbf"]["essential"], true);
    let faulted: Vec<_> = vault
        .requests()
        .into_iter()
        .filter_map(|r| r.fault)
        .collect();
    assert_eq!(faulted, ["revoke_with_claims"]);
}
