//! Helpers shared by testvault's integration tests.

use std::net::SocketAddr;

use testvault::{Options, Seed, TestVault};

pub const SAMPLE_SEED: &str = include_str!("../../seed/sample.json");

/// The name `vault_host_url` uses; tests resolve it to 127.0.0.1 themselves.
pub const VAULT_HOST: &str = "testvault.vault.localhost";

pub fn sample_seed() -> Seed {
    Seed::from_json(SAMPLE_SEED).expect("sample seed parses")
}

pub fn start(seed: Option<Seed>) -> TestVault {
    TestVault::start(Options {
        seed,
        ..Default::default()
    })
    .expect("testvault starts")
}

pub fn port_of(vault: &TestVault) -> u16 {
    url::Url::parse(&vault.info().vault_url)
        .expect("vault_url is a URL")
        .port()
        .expect("vault_url has a port")
}

/// A reqwest builder that trusts testvault's CA and nothing else, never uses a proxy, and
/// resolves `testvault.vault.localhost` to the server.
pub fn http_builder(vault: &TestVault) -> reqwest::ClientBuilder {
    let pem = std::fs::read(&vault.info().ca_file).expect("CA file readable");
    let ca = reqwest::Certificate::from_pem(&pem).expect("CA is PEM");
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .no_proxy()
        .resolve(
            VAULT_HOST,
            SocketAddr::from(([127, 0, 0, 1], port_of(vault))),
        )
}

pub fn http_client(vault: &TestVault) -> reqwest::Client {
    http_builder(vault).build().expect("reqwest client builds")
}
