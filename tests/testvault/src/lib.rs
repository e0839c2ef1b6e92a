//! testvault: a local Azure Key Vault data plane, faithful enough that Microsoft's SDKs use it
//! unchanged, with the Entra ID and managed-identity token endpoints beside it, fault injection,
//! counters and a request log for tests. Not shipped in kvfs.
//!
//! ```no_run
//! let vault = testvault::TestVault::start(testvault::Options::default()).unwrap();
//! println!("{}", vault.info().vault_url);
//! vault.set_secret("db-password", "hunter2").unwrap();
//! assert_eq!(vault.count("GetSecret"), 0);
//! ```

pub mod audit;
pub mod control;
pub mod crypto;
pub mod entra;
pub mod error;
pub mod faults;
pub mod identities;
pub mod misbehave;
pub mod observe;
pub mod ops;
pub mod paging;
pub mod seed;
pub mod server;
pub mod settings;
pub mod state;
pub mod store;
pub mod tokens;
pub mod vault;
pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openssl::ssl::{SslAcceptor, SslMethod};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;

pub use faults::{Fault, FaultAction};
pub use identities::IdentitySpec;
pub use observe::LogEntry;
pub use seed::Seed;
pub use settings::Settings;

use crate::crypto::{Authority, CertRequest, KeyMaterial, KeySpec};
use crate::state::State;

/// What a client needs to talk to a running testvault. Printed as one JSON line by the binary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Info {
    /// `https://127.0.0.1:PORT`; the challenge names `resource="https://vault.azure.net"`, so
    /// clients must turn their challenge-resource check off (or use `vault_host_url`).
    pub vault_url: String,
    /// `https://testvault.vault.localhost:PORT`; resolve the name to 127.0.0.1 yourself. The
    /// challenge then names `https://vault.localhost:PORT`, which passes the SDKs' resource check.
    pub vault_host_url: String,
    /// PEM of the CA that signed the server's certificate (and every certificate testvault makes).
    pub ca_file: PathBuf,
    /// For `AZURE_AUTHORITY_HOST`: the token endpoint is `{authority_host}/{tenant}/oauth2/v2.0/token`.
    pub authority_host: String,
    pub tenant_id: String,
    /// A tenant the vault does not belong to (its app `foreign-app` gets tokens the vault refuses).
    pub other_tenant_id: String,
    /// Identity `app`: client id and secret (`AZURE_CLIENT_ID` / `AZURE_CLIENT_SECRET`).
    pub client_id: String,
    pub client_secret: String,
    /// Identity `app-cert`: its certificate as PEM (key + certificate) and as PKCS#12 (empty password).
    pub certificate_client_id: String,
    pub client_certificate_path: PathBuf,
    pub client_certificate_pfx_path: PathBuf,
    /// Identity `workload`: `AZURE_CLIENT_ID` and `AZURE_FEDERATED_TOKEN_FILE` for workload identity.
    pub workload_client_id: String,
    pub federated_token_file: PathBuf,
    /// Managed identity, App Service form: `IDENTITY_ENDPOINT` / `IDENTITY_HEADER` (plain HTTP).
    pub identity_endpoint: String,
    pub identity_header: String,
    /// Managed identity, instance-metadata form: `{imds_endpoint}/metadata/identity/oauth2/token`
    /// (plain HTTP, `Metadata: true`).
    pub imds_endpoint: String,
    pub system_assigned_client_id: String,
    pub user_assigned_client_id: String,
    pub user_assigned_object_id: String,
    pub user_assigned_resource_id: String,
    /// Identity `cli-user`: mint its token with `POST {control_url}/tokens` (for a fake `az`).
    pub cli_user_client_id: String,
    /// Base of the test-control API.
    pub control_url: String,
    pub state_dir: PathBuf,
    pub pid: u32,
}

/// How to start a testvault.
#[derive(Clone, Debug)]
pub struct Options {
    /// HTTPS listener (vault, Entra ID endpoints, control API). Port 0 picks a free one.
    pub listen: SocketAddr,
    /// Plain-HTTP listener for the managed-identity endpoints. Port 0 picks a free one.
    pub msi_listen: SocketAddr,
    pub seed: Option<Seed>,
    /// Where to write the CA, client certificate and federated token; a fresh temporary directory
    /// (removed on stop) when `None`.
    pub state_dir: Option<PathBuf>,
    /// Fixed tenant id; random when `None`.
    pub tenant_id: Option<String>,
    pub settings: Settings,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            msi_listen: "127.0.0.1:0".parse().expect("valid address"),
            seed: None,
            state_dir: None,
            tenant_id: None,
            settings: Settings::default(),
        }
    }
}

/// A running testvault. Stops (and removes its temporary state directory) when dropped.
pub struct TestVault {
    state: Arc<State>,
    info: Info,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
    remove_state_dir: bool,
}

fn err(context: &str) -> impl Fn(String) -> std::io::Error + '_ {
    move |e| std::io::Error::other(format!("{context}: {e}"))
}

fn io_err<E: std::fmt::Display>(context: &str) -> impl Fn(E) -> std::io::Error + '_ {
    move |e| std::io::Error::other(format!("{context}: {e}"))
}

/// The server's TLS identity: a leaf for every loopback name, signed by the CA (rustls refuses a
/// leaf that is itself a CA, so the two are separate).
fn tls_acceptor(ca: &Authority) -> std::io::Result<SslAcceptor> {
    let key = KeyMaterial::generate(KeySpec::Ec(crypto::Curve::P256)).map_err(io_err("TLS key"))?;
    let leaf = ca
        .issue_leaf(
            &key,
            &CertRequest {
                subject: "CN=localhost".into(),
                dns_names: vec![
                    "localhost".into(),
                    "vault.localhost".into(),
                    "*.vault.localhost".into(),
                ],
                ..Default::default()
            },
            &["127.0.0.1".parse().expect("ip"), "::1".parse().expect("ip")],
            365,
        )
        .map_err(io_err("TLS certificate"))?;
    let mut builder =
        SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(io_err("TLS"))?;
    builder
        .set_private_key(key.pkey())
        .map_err(io_err("TLS key"))?;
    builder
        .set_certificate(&leaf)
        .map_err(io_err("TLS certificate"))?;
    builder
        .add_extra_chain_cert(ca.cert.clone())
        .map_err(io_err("TLS chain"))?;
    builder.check_private_key().map_err(io_err("TLS key"))?;
    Ok(builder.build())
}

fn make_state_dir(given: Option<PathBuf>) -> std::io::Result<(PathBuf, bool)> {
    match given {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            Ok((dir, false))
        }
        None => {
            let dir = std::env::temp_dir().join(format!(
                "testvault-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ));
            std::fs::create_dir_all(&dir)?;
            Ok((dir, true))
        }
    }
}

impl TestVault {
    /// Start a server on its own thread and runtime; returns once it accepts connections.
    pub fn start(options: Options) -> std::io::Result<TestVault> {
        options.settings.check().map_err(err("settings"))?;
        let ca = Authority::new_root("testvault Root CA").map_err(io_err("CA"))?;
        let intermediate = ca
            .issue_intermediate("testvault Intermediate CA")
            .map_err(io_err("intermediate CA"))?;
        let acceptor = Arc::new(tls_acceptor(&ca)?);
        let directory = identities::Directory::builtin(options.tenant_id.clone(), &ca)
            .map_err(err("identities"))?;

        let (state_dir, remove_state_dir) = make_state_dir(options.state_dir.clone())?;
        let ca_file = state_dir.join("ca.pem");
        std::fs::write(&ca_file, crypto::certs_pem(std::slice::from_ref(&ca.cert)))?;
        let cert_pem = state_dir.join("client-cert.pem");
        std::fs::write(&cert_pem, &directory.client_certificate.pem)?;
        let cert_pfx = state_dir.join("client-cert.pfx");
        std::fs::write(&cert_pfx, &directory.client_certificate.pfx_der)?;

        let listener = std::net::TcpListener::bind(options.listen)?;
        listener.set_nonblocking(true)?;
        let msi_listener = std::net::TcpListener::bind(options.msi_listen)?;
        msi_listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let ip = listener.local_addr()?.ip();
        let msi_addr = msi_listener.local_addr()?;
        let host = match ip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        let https = format!("https://{host}:{port}");
        let id = |name: &str| directory.get(name).cloned().expect("built-in identity");
        let (app, app_cert, workload, system_mi, user_mi, cli_user) = (
            id("app"),
            id("app-cert"),
            id("workload"),
            id("system-mi"),
            id("user-mi"),
            id("cli-user"),
        );
        let info = Info {
            vault_url: https.clone(),
            vault_host_url: format!("https://testvault.vault.localhost:{port}"),
            ca_file,
            authority_host: https.clone(),
            tenant_id: directory.tenant_id.clone(),
            other_tenant_id: directory.other_tenant_id.clone(),
            client_id: app.client_id.clone(),
            client_secret: app.client_secret.clone().unwrap_or_default(),
            certificate_client_id: app_cert.client_id.clone(),
            client_certificate_path: cert_pem,
            client_certificate_pfx_path: cert_pfx,
            workload_client_id: workload.client_id.clone(),
            federated_token_file: state_dir.join("federated-token"),
            identity_endpoint: format!("http://{msi_addr}/msi/token"),
            identity_header: uuid::Uuid::new_v4().simple().to_string(),
            imds_endpoint: format!("http://{msi_addr}"),
            system_assigned_client_id: system_mi.client_id.clone(),
            user_assigned_client_id: user_mi.client_id.clone(),
            user_assigned_object_id: user_mi.object_id.clone(),
            user_assigned_resource_id: user_mi.resource_id.clone().unwrap_or_default(),
            cli_user_client_id: cli_user.client_id.clone(),
            control_url: format!("{https}/_testvault"),
            state_dir: state_dir.clone(),
            pid: std::process::id(),
        };

        let state = Arc::new(State {
            store: Mutex::new(store::Store::default()),
            directory: RwLock::new(directory),
            tokens: tokens::TokenIssuer::default(),
            faults: Mutex::new(faults::Faults::default()),
            observed: Mutex::new(observe::Observed::default()),
            settings: RwLock::new(options.settings.clone()),
            ca,
            intermediate,
            info: RwLock::new(info.clone()),
        });
        let token =
            control::federated_token(&state, None, None, 3600).map_err(err("federated token"))?;
        control::write_atomically(&info.federated_token_file, token.as_bytes())?;
        if let Some(seed) = &options.seed {
            seed::apply(&state, seed).map_err(err("seed"))?;
        }

        let (tx, rx) = tokio::sync::watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("testvault".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listeners = (
                        tokio::net::TcpListener::from_std(listener),
                        tokio::net::TcpListener::from_std(msi_listener),
                    );
                    let (tls, plain) = match listeners {
                        (Ok(a), Ok(b)) => (a, b),
                        (Err(e), _) | (_, Err(e)) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let a = tokio::spawn(server::serve_tls(
                        tls,
                        acceptor,
                        thread_state.clone(),
                        rx.clone(),
                    ));
                    let b = tokio::spawn(server::serve_plain(plain, thread_state, rx));
                    let _ = tokio::join!(a, b);
                });
                runtime.shutdown_timeout(Duration::from_secs(2));
            })?;
        ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("testvault thread ended before it was ready"))??;
        Ok(TestVault {
            state,
            info,
            shutdown: Some(tx),
            thread: Some(thread),
            remove_state_dir,
        })
    }

    pub fn info(&self) -> &Info {
        &self.info
    }

    /// Add (or rotate) objects.
    pub fn apply_seed(&self, seed: &Seed) -> Result<(), String> {
        seed::apply(&self.state, seed)
    }

    /// Set a new version of a plain secret; returns its version id.
    pub fn set_secret(&self, name: &str, value: &str) -> Result<String, error::VaultError> {
        let (_, v) = self.state.store.lock().set_secret(
            name,
            store::SecretInput {
                value: value.to_string(),
                ..Default::default()
            },
        )?;
        Ok(v.version)
    }

    /// Enable or disable the latest version of a secret.
    pub fn set_secret_enabled(&self, name: &str, enabled: bool) -> Result<(), error::VaultError> {
        self.state.store.lock().update_secret(
            name,
            None,
            None,
            &store::AttributePatch {
                enabled: Some(enabled),
                ..Default::default()
            },
            None,
        )?;
        Ok(())
    }

    /// Soft-delete then purge a secret.
    pub fn remove_secret(&self, name: &str) -> Result<(), error::VaultError> {
        let mut store = self.state.store.lock();
        store.delete_secret(name)?;
        store.purge(error::Kind::Secret, name)
    }

    pub fn add_fault(&self, fault: Fault) -> u64 {
        self.state.faults.lock().add(fault)
    }

    pub fn clear_faults(&self) {
        self.state.faults.lock().clear();
    }

    /// Every token issued so far gets a 401 challenge from now on.
    pub fn revoke_tokens(&self) {
        self.state.tokens.revoke_all();
    }

    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.state.observed.lock().counters()
    }

    /// Requests of one operation (authenticated ones; `Unauthorized` counts the challenges).
    pub fn count(&self, op: &str) -> u64 {
        self.counters().get(op).copied().unwrap_or(0)
    }

    pub fn requests(&self) -> Vec<LogEntry> {
        self.state.observed.lock().log()
    }

    /// Clear counters, the request log and faults (objects stay).
    pub fn reset(&self) {
        self.state.observed.lock().reset();
        self.state.faults.lock().clear();
    }

    /// A vault token for a built-in or added identity (by name or client id).
    pub fn mint_token(&self, identity: &str, lifetime: Duration) -> Option<String> {
        let directory = self.state.directory.read();
        let id = directory.find(identity)?;
        Some(
            self.state
                .tokens
                .mint(
                    id,
                    "https://vault.azure.net",
                    lifetime.as_secs() as i64,
                    "minted",
                )
                .0,
        )
    }

    pub fn add_identity(&self, spec: IdentitySpec) -> Result<identities::Identity, String> {
        self.state.directory.write().add(spec)
    }

    pub fn settings(&self) -> Settings {
        self.state.settings.read().clone()
    }

    pub fn update_settings(&self, change: impl FnOnce(&mut Settings)) -> Result<(), String> {
        let mut s = self.state.settings.read().clone();
        change(&mut s);
        s.check()?;
        *self.state.settings.write() = s;
        Ok(())
    }

    /// Write a fresh federated token to `info().federated_token_file` (kubelet's rotation).
    pub fn rotate_federated_token(&self, lifetime: Duration) -> Result<String, String> {
        let token = control::federated_token(&self.state, None, None, lifetime.as_secs() as i64)?;
        control::write_atomically(&self.info.federated_token_file, token.as_bytes())
            .map_err(|e| e.to_string())?;
        Ok(token)
    }

    /// Stop serving and wait for the server thread.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if self.remove_state_dir {
            let _ = std::fs::remove_dir_all(&self.info.state_dir);
            self.remove_state_dir = false;
        }
    }
}

impl Drop for TestVault {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}
