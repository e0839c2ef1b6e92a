//! The misbehaviour faults, each seen over raw HTTPS (no SDK): what a client that trusted the
//! answer would be told.

use std::time::Duration;

use serde_json::Value;
use testvault::{Fault, FaultAction, TestVault};

mod common;
use common::{http_client as client, sample_seed, start};

const API: &str = "api-version=7.5";

fn fault(op: &str, action: FaultAction) -> Fault {
    Fault {
        op: op.into(),
        name: None,
        action,
        count: None,
    }
}

/// `GET {vault}{path_and_query}` with a valid token: status and raw body (or the read error).
async fn get(vault: &TestVault, path_and_query: &str) -> (u16, Result<Vec<u8>, String>) {
    let token = vault
        .mint_token("app", Duration::from_secs(600))
        .expect("built-in identity app");
    let response = client(vault)
        .get(format!("{}{path_and_query}", vault.info().vault_url))
        .bearer_auth(token)
        .send()
        .await
        .expect("answer");
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| e.to_string());
    (status, body)
}

fn json(body: &Result<Vec<u8>, String>) -> Value {
    serde_json::from_slice(body.as_ref().expect("whole body")).expect("JSON")
}

#[tokio::test]
async fn foreign_next_link_points_where_asked() {
    let vault = start(Some(sample_seed()));
    let foreign = "https://127.0.0.2:4443/secrets?$skiptoken=steal";
    vault.add_fault(fault(
        "GetSecrets",
        FaultAction::ForeignNextLink {
            url: foreign.into(),
        },
    ));
    let (status, body) = get(&vault, &format!("/secrets?{API}")).await;
    assert_eq!(status, 200);
    let page = json(&body);
    assert_eq!(page["nextLink"], foreign);
    assert!(!page["value"].as_array().unwrap().is_empty(), "real items");
}

#[tokio::test]
async fn self_link_names_the_page_itself() {
    let vault = start(Some(sample_seed()));
    vault.add_fault(fault("GetSecrets", FaultAction::SelfLink));
    let (_, body) = get(&vault, &format!("/secrets?{API}&maxresults=2")).await;
    assert_eq!(
        json(&body)["nextLink"],
        format!("{}/secrets?{API}&maxresults=2", vault.info().vault_url)
    );
}

#[tokio::test]
async fn link_loop_is_two_pages_linking_to_each_other() {
    let vault = start(Some(sample_seed()));
    vault.add_fault(fault("GetSecrets", FaultAction::LinkLoop));
    let base = &vault.info().vault_url;
    let (_, a) = get(&vault, &format!("/secrets?{API}")).await;
    let to_b = json(&a)["nextLink"].as_str().unwrap().to_string();
    assert!(to_b.contains("skiptoken=loop-b"), "{to_b}");
    let (status, b) = get(&vault, to_b.strip_prefix(base.as_str()).unwrap()).await;
    assert_eq!(status, 200, "the loop page is served, not refused");
    assert_eq!(json(&b)["nextLink"], format!("{base}/secrets?{API}"));
    assert_eq!(vault.count("GetSecrets"), 2);
}

#[tokio::test]
async fn huge_value_is_sent_whole() {
    let vault = start(Some(sample_seed()));
    let bytes = 50 * 1024 * 1024;
    vault.add_fault(fault("GetSecret", FaultAction::HugeValue { bytes }));
    let (status, body) = get(&vault, &format!("/secrets/db-password?{API}")).await;
    assert_eq!(status, 200);
    let secret = json(&body);
    assert_eq!(secret["value"].as_str().unwrap().len() as u64, bytes);
    assert!(
        secret["id"]
            .as_str()
            .unwrap()
            .contains("/secrets/db-password/")
    );
}

#[tokio::test]
async fn truncated_body_ends_mid_way() {
    let vault = start(Some(sample_seed()));
    vault.add_fault(fault("GetSecret", FaultAction::Truncate));
    let (status, body) = get(&vault, &format!("/secrets/db-password?{API}")).await;
    assert_eq!(status, 200);
    assert!(body.is_err(), "the body must not read whole: {body:?}");
}

#[tokio::test]
async fn wrong_shape_is_valid_json_of_another_shape() {
    let vault = start(Some(sample_seed()));
    vault.add_fault(fault("GetSecret", FaultAction::WrongShape));
    let (status, body) = get(&vault, &format!("/secrets/db-password?{API}")).await;
    assert_eq!(status, 200);
    assert!(json(&body).is_array());
}

#[tokio::test]
async fn foreign_id_names_another_host() {
    let vault = start(Some(sample_seed()));
    vault.add_fault(fault(
        "GetSecret",
        FaultAction::ForeignId {
            host: "127.0.0.2:4443".into(),
        },
    ));
    let (_, body) = get(&vault, &format!("/secrets/db-password?{API}")).await;
    let id = json(&body)["id"].as_str().unwrap().to_string();
    assert!(
        id.starts_with("https://127.0.0.2:4443/secrets/db-password/"),
        "{id}"
    );
}
