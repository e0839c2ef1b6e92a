//! Credentials: which identity kvfs authenticates as, and the token credentials for each method.
//!
//! `--auth auto` walks a fixed, documented order and never hangs (see [`AUTO_ORDER`]):
//! client-secret, client-certificate, workload-identity, managed identity through
//! `IDENTITY_ENDPOINT`, the Azure CLI (probed with a bounded `az account get-access-token`), then
//! the instance metadata service (probed with one token request bounded to 2 s). The first usable
//! one wins, decided at mount time; if none is usable the error is one line naming each method
//! and why it was not usable.
//!
//! The environment is an input ([`Env`]), not `std::env`, so the decision can be tested.
//!
//! Every credential is wrapped in [`CachedCredential`]: a token is reused until 5 minutes before
//! it expires (or half its lifetime, when that is shorter than 10 minutes), one refresh at a time;
//! a token the vault refuses is dropped and the credential rebuilt, with fresh tokens spaced out
//! while the vault keeps refusing them.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::http::{ClientMethodOptions, ClientOptions};
use azure_core::time::OffsetDateTime;
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientAssertion, ClientAssertionCredential,
    ClientAssertionCredentialOptions, Executor,
};

use crate::cli::AuthMethod;
use crate::vault::azure::{self, error_chain};
use crate::vault::refusals::TokenVerdicts;

/// The scope of every token kvfs asks for.
pub const VAULT_SCOPE: &str = "https://vault.azure.net/.default";
/// The same as a managed-identity `resource`.
pub const VAULT_RESOURCE: &str = "https://vault.azure.net";
/// The instance metadata service, unless `--imds-endpoint`/`KVFS_IMDS_ENDPOINT` says otherwise.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// The order `--auth auto` tries, as its error message names them.
pub const AUTO_ORDER: &[&str] = &[
    "client-secret",
    "client-certificate",
    "workload-identity",
    "managed-identity",
    "azure-cli",
    "instance metadata",
];

const TENANT: &str = "AZURE_TENANT_ID (or --tenant-id)";
const CLIENT: &str = "AZURE_CLIENT_ID (or --client-id)";

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// The environment variables credentials read. Empty values count as unset.
#[derive(Clone, Debug, Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    pub fn from_process() -> Env {
        Env(std::env::vars().collect())
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        Env(pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// What the command line says about identity (flags and `-o` already merged; the environment is
/// consulted here, flags win).
#[derive(Clone, Debug)]
pub struct AuthRequest {
    pub method: AuthMethod,
    pub client_id: Option<String>,
    pub tenant_id: Option<String>,
    /// `--authority-host`, else `AZURE_AUTHORITY_HOST`, else the cloud's.
    pub authority_host: Option<String>,
    /// The cloud's authority host, the last fallback.
    pub cloud_authority_host: String,
    /// `--imds-endpoint`/`-o imds_endpoint=`, else `KVFS_IMDS_ENDPOINT`, else the real one.
    pub imds_endpoint: Option<String>,
}

/// How long `auto` may wait for its probes.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `az account get-access-token`, in the probe and for every later token.
    pub cli_timeout: Duration,
    /// The whole instance-metadata probe (one token request).
    pub imds_probe_timeout: Duration,
    /// One managed-identity token request after the probe.
    pub msi_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            cli_timeout: Duration::from_secs(10),
            imds_probe_timeout: Duration::from_secs(2),
            msi_timeout: Duration::from_secs(10),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The decision
// ---------------------------------------------------------------------------------------------

/// A secret input: compared in tests, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redacted")
    }
}

/// One method with its inputs present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Spec {
    ClientSecret {
        tenant: String,
        client_id: String,
        secret: Redacted,
        authority_host: String,
    },
    ClientCertificate {
        tenant: String,
        client_id: String,
        path: PathBuf,
        password: Option<Redacted>,
        authority_host: String,
        /// `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN`: send `x5c` (subject name/issuer auth).
        send_chain: bool,
    },
    WorkloadIdentity {
        tenant: String,
        client_id: String,
        token_file: PathBuf,
        authority_host: String,
    },
    /// Managed identity, App Service form (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`).
    AppService {
        endpoint: String,
        header: Redacted,
        client_id: Option<String>,
    },
    AzureCli {
        tenant: Option<String>,
        path: Option<String>,
    },
    /// Managed identity through the instance metadata service.
    Imds {
        endpoint: String,
        client_id: Option<String>,
    },
}

impl Spec {
    /// The method's name as `--auth` spells it.
    pub fn method(&self) -> &'static str {
        match self {
            Spec::ClientSecret { .. } => "client-secret",
            Spec::ClientCertificate { .. } => "client-certificate",
            Spec::WorkloadIdentity { .. } => "workload-identity",
            Spec::AppService { .. } | Spec::Imds { .. } => "managed-identity",
            Spec::AzureCli { .. } => "azure-cli",
        }
    }

    /// How the error and log lines name it (`auto` distinguishes the two managed-identity forms).
    pub fn label(&self) -> &'static str {
        match self {
            Spec::Imds { .. } => "instance metadata",
            other => other.method(),
        }
    }
}

/// One step of the plan: a method to try, or why it cannot be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Try(Spec),
    Skip { label: &'static str, reason: String },
}

struct Ids {
    tenant: Option<String>,
    client: Option<String>,
    authority: String,
}

fn ids(req: &AuthRequest, env: &Env) -> Ids {
    Ids {
        tenant: req
            .tenant_id
            .clone()
            .or_else(|| env.get("AZURE_TENANT_ID").map(str::to_string)),
        client: req
            .client_id
            .clone()
            .or_else(|| env.get("AZURE_CLIENT_ID").map(str::to_string)),
        authority: req
            .authority_host
            .clone()
            .or_else(|| env.get("AZURE_AUTHORITY_HOST").map(str::to_string))
            .unwrap_or_else(|| req.cloud_authority_host.clone()),
    }
}

/// The inputs of one method: `Ok` when all are there, else what is missing.
fn inputs(method: AuthMethod, req: &AuthRequest, env: &Env) -> Result<Spec, Vec<&'static str>> {
    let ids = ids(req, env);
    let need = |missing: &mut Vec<&'static str>, v: &Option<String>, name: &'static str| {
        if v.is_none() {
            missing.push(name);
        }
    };
    let var = |name: &str| env.get(name).map(str::to_string);
    let mut missing = Vec::new();
    match method {
        AuthMethod::ClientSecret => {
            let secret = var("AZURE_CLIENT_SECRET");
            need(&mut missing, &secret, "AZURE_CLIENT_SECRET");
            need(&mut missing, &ids.client, CLIENT);
            need(&mut missing, &ids.tenant, TENANT);
            match (secret, ids.client, ids.tenant) {
                (Some(secret), Some(client_id), Some(tenant)) => Ok(Spec::ClientSecret {
                    tenant,
                    client_id,
                    secret: Redacted(secret),
                    authority_host: ids.authority,
                }),
                _ => Err(missing),
            }
        }
        AuthMethod::ClientCertificate => {
            let path = var("AZURE_CLIENT_CERTIFICATE_PATH");
            need(&mut missing, &path, "AZURE_CLIENT_CERTIFICATE_PATH");
            need(&mut missing, &ids.client, CLIENT);
            need(&mut missing, &ids.tenant, TENANT);
            match (path, ids.client, ids.tenant) {
                (Some(path), Some(client_id), Some(tenant)) => Ok(Spec::ClientCertificate {
                    tenant,
                    client_id,
                    path: path.into(),
                    password: var("AZURE_CLIENT_CERTIFICATE_PASSWORD").map(Redacted),
                    authority_host: ids.authority,
                    send_chain: var("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN")
                        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")),
                }),
                _ => Err(missing),
            }
        }
        AuthMethod::WorkloadIdentity => {
            let file = var("AZURE_FEDERATED_TOKEN_FILE");
            need(&mut missing, &file, "AZURE_FEDERATED_TOKEN_FILE");
            need(&mut missing, &ids.client, CLIENT);
            need(&mut missing, &ids.tenant, TENANT);
            match (file, ids.client, ids.tenant) {
                (Some(file), Some(client_id), Some(tenant)) => Ok(Spec::WorkloadIdentity {
                    tenant,
                    client_id,
                    token_file: file.into(),
                    authority_host: ids.authority,
                }),
                _ => Err(missing),
            }
        }
        AuthMethod::ManagedIdentity => match (var("IDENTITY_ENDPOINT"), var("IDENTITY_HEADER")) {
            (Some(endpoint), Some(header)) => Ok(Spec::AppService {
                endpoint,
                header: Redacted(header),
                client_id: ids.client,
            }),
            (Some(_), None) => Err(vec!["IDENTITY_HEADER (IDENTITY_ENDPOINT is set)"]),
            _ => Ok(Spec::Imds {
                endpoint: imds_endpoint(req, env),
                client_id: ids.client,
            }),
        },
        AuthMethod::AzureCli => {
            let path = var("PATH");
            if find_on_path("az", path.as_deref()).is_none() {
                return Err(vec!["az on PATH"]);
            }
            // Only an explicit --tenant-id goes to az: AZURE_TENANT_ID may be set for another
            // method, and `az --tenant` fails for a tenant the user is not logged in to.
            Ok(Spec::AzureCli {
                tenant: req.tenant_id.clone(),
                path,
            })
        }
        AuthMethod::Auto => unreachable!("auto is a plan, not a method"),
    }
}

fn imds_endpoint(req: &AuthRequest, env: &Env) -> String {
    req.imds_endpoint
        .clone()
        .or_else(|| env.get("KVFS_IMDS_ENDPOINT").map(str::to_string))
        .unwrap_or_else(|| DEFAULT_IMDS_ENDPOINT.to_string())
        .trim_end_matches('/')
        .to_string()
}

fn find_on_path(program: &str, path: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(OsStr::new(path?))
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The methods to try, in order, each with its inputs or why it is skipped. Pure: no I/O but
/// looking for `az` on the given PATH.
pub fn plan(req: &AuthRequest, env: &Env) -> Result<Vec<Step>, String> {
    if req.method != AuthMethod::Auto {
        return match inputs(req.method, req, env) {
            Ok(spec) => Ok(vec![Step::Try(spec)]),
            Err(missing) => Err(format!(
                "--auth {} needs {}",
                method_name(req.method),
                missing.join(", ")
            )),
        };
    }
    // When the method's own variable is missing, that is all there is to say; when only the
    // ids are, name them.
    let skip = |label: &'static str, missing: Vec<&'static str>| {
        let own = missing.first().filter(|m| !m.contains("(or "));
        let shown = match own {
            Some(m) => vec![*m],
            None => missing,
        };
        Step::Skip {
            label,
            reason: format!("{} not set", shown.join(" and ")),
        }
    };
    let mut steps = Vec::new();
    for (method, label) in [
        (AuthMethod::ClientSecret, "client-secret"),
        (AuthMethod::ClientCertificate, "client-certificate"),
        (AuthMethod::WorkloadIdentity, "workload-identity"),
    ] {
        steps.push(match inputs(method, req, env) {
            Ok(spec) => Step::Try(spec),
            Err(missing) => skip(label, missing),
        });
    }
    steps.push(match inputs(AuthMethod::ManagedIdentity, req, env) {
        Ok(spec @ Spec::AppService { .. }) => Step::Try(spec),
        Ok(_) => skip("managed-identity", vec!["IDENTITY_ENDPOINT"]),
        Err(missing) => skip("managed-identity", missing),
    });
    steps.push(match inputs(AuthMethod::AzureCli, req, env) {
        Ok(spec) => Step::Try(spec),
        Err(_) => Step::Skip {
            label: "azure-cli",
            reason: "az not found on PATH".into(),
        },
    });
    steps.push(Step::Try(Spec::Imds {
        endpoint: imds_endpoint(req, env),
        client_id: ids(req, env).client,
    }));
    Ok(steps)
}

pub fn method_name(method: AuthMethod) -> &'static str {
    match method {
        AuthMethod::Auto => "auto",
        AuthMethod::ClientSecret => "client-secret",
        AuthMethod::ClientCertificate => "client-certificate",
        AuthMethod::WorkloadIdentity => "workload-identity",
        AuthMethod::ManagedIdentity => "managed-identity",
        AuthMethod::AzureCli => "azure-cli",
    }
}

/// The credential chosen, and by which method.
pub struct Selected {
    pub method: &'static str,
    pub credential: Arc<dyn TokenCredential>,
    /// The same credential, to be told which of its tokens the vault refused.
    pub verdicts: Arc<dyn TokenVerdicts>,
}

impl std::fmt::Debug for Selected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selected")
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// Decide the credential (probing the Azure CLI and the metadata service in `auto` mode) and
/// build it. `http` is the shared client: the Entra ID credentials use it (same trust, same
/// timeouts).
pub async fn select(
    req: &AuthRequest,
    env: &Env,
    http: &reqwest::Client,
    limits: &Limits,
) -> Result<Selected, String> {
    let steps = plan(req, env)?;
    let auto = req.method == AuthMethod::Auto;
    let mut skipped: Vec<String> = Vec::new();
    for step in steps {
        let spec = match step {
            Step::Skip { label, reason } => {
                skipped.push(format!("{label}: {reason}"));
                continue;
            }
            Step::Try(spec) => spec,
        };
        let label = spec.label();
        let credential = match build(&spec, http, limits) {
            Ok(c) => c,
            Err(e) if auto => {
                tracing::warn!("auth auto: {label}: {e}");
                skipped.push(format!("{label}: {e}"));
                continue;
            }
            Err(e) => return Err(one_line(&format!("--auth {}: {e}", spec.method()))),
        };
        if auto && let Some(reason) = probe(&spec, credential.as_ref(), limits).await {
            skipped.push(format!("{label}: {reason}"));
            continue;
        }
        tracing::info!(
            method = spec.method(),
            source = label,
            "authenticating with {}",
            describe(&spec)
        );
        return Ok(Selected {
            method: spec.method(),
            verdicts: credential.clone(),
            credential,
        });
    }
    Err(one_line(&format!(
        "no credential found (auto): {}",
        skipped.join("; ")
    )))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// For the log line: which identity, never a secret.
fn describe(spec: &Spec) -> String {
    match spec {
        Spec::ClientSecret { client_id, .. } => format!("client secret of app {client_id}"),
        Spec::ClientCertificate {
            client_id, path, ..
        } => format!("certificate {} of app {client_id}", path.display()),
        Spec::WorkloadIdentity {
            client_id,
            token_file,
            ..
        } => format!(
            "workload identity {client_id} (token file {})",
            token_file.display()
        ),
        Spec::AppService { client_id, .. } => format!(
            "managed identity ({}) through IDENTITY_ENDPOINT",
            client_id.as_deref().unwrap_or("system-assigned")
        ),
        Spec::AzureCli { .. } => "the Azure CLI's logged-in account".into(),
        Spec::Imds {
            endpoint,
            client_id,
        } => format!(
            "managed identity ({}) through the instance metadata service at {endpoint}",
            client_id.as_deref().unwrap_or("system-assigned")
        ),
    }
}

/// `auto` only: whether a probed method works; `None` when it does. The token it got stays in
/// the credential's cache.
async fn probe(spec: &Spec, credential: &dyn TokenCredential, limits: &Limits) -> Option<String> {
    let (limit, what) = match spec {
        // A little over the executor's own limit, which kills az and says so.
        Spec::AzureCli { .. } => (
            limits.cli_timeout + Duration::from_secs(1),
            "az account get-access-token".to_string(),
        ),
        Spec::Imds { endpoint, .. } => (limits.imds_probe_timeout, endpoint.clone()),
        _ => return None,
    };
    match tokio::time::timeout(limit, credential.get_token(&[VAULT_SCOPE], None)).await {
        Ok(Ok(_)) => None,
        Err(_) => Some(format!("no answer from {what} within {}", human(limit))),
        Ok(Err(e)) => Some(match spec {
            Spec::Imds { endpoint, .. } if is_transient(&e) => {
                format!("no answer from {endpoint} ({})", root_cause(&e))
            }
            _ if is_transient(&e) => root_cause(&e),
            _ => plain_reason(&error_chain(&e)),
        }),
    }
}

/// The crate's wrapping of az's own words, removed: "AzureCliCredential authentication failed.
/// timed out error: …", "To troubleshoot, visit …".
fn plain_reason(chain: &str) -> String {
    let mut text = chain.to_string();
    if let Some(i) = text.find(" To troubleshoot, visit ") {
        text.truncate(i);
    }
    for prefix in [
        "AzureCliCredential authentication failed. ",
        "timed out error: ",
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            text = rest.to_string();
        }
    }
    text.trim().to_string()
}

/// The innermost error's message ("tcp connect error: Connection refused (os error 111)").
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut e = err;
    while let Some(next) = e.source() {
        e = next;
    }
    e.to_string()
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn is_transient(err: &azure_core::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(core) = e.downcast_ref::<azure_core::Error>()
            && matches!(core.kind(), ErrorKind::Io | ErrorKind::Connection)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// The token source is down, slow or throttling (rather than refusing the identity): transport
/// failures, and HTTP 408, 429 and 5xx answers.
fn token_source_down(err: &azure_core::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(ErrorKind::HttpResponse { status, .. }) =
            e.downcast_ref::<azure_core::Error>().map(|c| c.kind())
        {
            let status = u16::from(*status);
            if status == 408 || status == 429 || status >= 500 {
                return true;
            }
        }
        next = e.source();
    }
    is_transient(err)
}

fn entra_options(http: &reqwest::Client, authority_host: &str) -> ClientOptions {
    let mut options = azure::credential_client_options(http);
    // `CustomConfiguration` is non-exhaustive: start from its default and set the host.
    let mut cloud = CustomConfiguration::default();
    cloud.authority_host = authority_host.to_string();
    options.cloud = Some(Arc::new(CloudConfiguration::Custom(cloud)));
    options
}

/// The credential for one spec, wrapped in the token cache, which builds it again (from the
/// same spec, re-reading a certificate file) whenever the vault refuses a token.
pub fn build(
    spec: &Spec,
    http: &reqwest::Client,
    limits: &Limits,
) -> Result<Arc<CachedCredential>, String> {
    let (spec, http, limits) = (spec.clone(), http.clone(), *limits);
    let rebuild: Rebuild = Arc::new(move || build_uncached(&spec, &http, &limits));
    Ok(Arc::new(CachedCredential::rebuildable(rebuild)?))
}

/// The credential for one spec, as the method makes it (some keep a token cache of their own).
fn build_uncached(
    spec: &Spec,
    http: &reqwest::Client,
    limits: &Limits,
) -> Result<Arc<dyn TokenCredential>, String> {
    let inner: Arc<dyn TokenCredential> = match spec {
        Spec::ClientSecret {
            tenant,
            client_id,
            secret,
            authority_host,
        } => azure::client_secret_credential(
            tenant,
            client_id,
            secret.0.clone(),
            Some(authority_host),
            http,
        )?,
        Spec::ClientCertificate {
            tenant,
            client_id,
            path,
            password,
            authority_host,
            send_chain,
        } => {
            let bytes =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let cert = load_client_certificate(&bytes, password.as_ref().map(|p| p.0.as_str()))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let audience = token_endpoint(authority_host, tenant)?;
            let assertion = CertificateAssertion::new(client_id, &audience, cert, *send_chain)?;
            ClientAssertionCredential::new(
                tenant.clone(),
                client_id.clone(),
                assertion,
                Some(ClientAssertionCredentialOptions {
                    client_options: entra_options(http, authority_host),
                }),
            )
            .map_err(|e| error_chain(&e))?
        }
        Spec::WorkloadIdentity {
            tenant,
            client_id,
            token_file,
            authority_host,
        } => ClientAssertionCredential::new(
            tenant.clone(),
            client_id.clone(),
            FederatedTokenFile {
                path: token_file.clone(),
            },
            Some(ClientAssertionCredentialOptions {
                client_options: entra_options(http, authority_host),
            }),
        )
        .map_err(|e| error_chain(&e))?,
        Spec::AppService {
            endpoint,
            header,
            client_id,
        } => Arc::new(MsiCredential::app_service(
            endpoint,
            &header.0,
            client_id.clone(),
            limits.msi_timeout,
        )?),
        Spec::AzureCli { tenant, path } => {
            AzureCliCredential::new(Some(AzureCliCredentialOptions {
                tenant_id: tenant.clone(),
                executor: Some(Arc::new(BoundedExecutor {
                    timeout: limits.cli_timeout,
                    path: path.as_ref().map(OsString::from),
                })),
                ..Default::default()
            }))
            .map_err(|e| error_chain(&e))?
        }
        Spec::Imds {
            endpoint,
            client_id,
        } => Arc::new(MsiCredential::imds(
            endpoint,
            client_id.clone(),
            limits.msi_timeout,
        )?),
    };
    Ok(inner)
}

// ---------------------------------------------------------------------------------------------
// Client certificates
// ---------------------------------------------------------------------------------------------

/// A client certificate and its private key, from `AZURE_CLIENT_CERTIFICATE_PATH`.
pub struct ClientCert {
    pub key: openssl::pkey::PKey<openssl::pkey::Private>,
    pub cert: openssl::x509::X509,
    /// The other certificates in the file (sent as `x5c` with
    /// `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN=1`).
    pub chain: Vec<openssl::x509::X509>,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("subject", &self.cert.subject_name())
            .finish_non_exhaustive()
    }
}

/// Read a certificate file: PEM (private key and certificate, as `az ad sp create-for-rbac
/// --create-cert` and Key Vault's PEM downloads hand it out; the key may be encrypted with
/// `password`) or PKCS#12 (`password`, else empty). In PEM the leaf is the certificate whose
/// public key matches the private key; the others are the chain. RSA only: Entra ID takes RS256
/// client assertions.
pub fn load_client_certificate(bytes: &[u8], password: Option<&str>) -> Result<ClientCert, String> {
    use openssl::pkcs12::Pkcs12;
    use openssl::pkey::{Id, PKey};
    use openssl::x509::X509;

    let rsa_only = |key: &PKey<openssl::pkey::Private>| {
        if key.id() == Id::RSA {
            Ok(())
        } else {
            Err("only RSA keys can sign client assertions; this key is not RSA".to_string())
        }
    };
    let is_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    if !is_pem {
        let p12 = Pkcs12::from_der(bytes).map_err(|e| format!("neither PEM nor PKCS#12 ({e})"))?;
        let parsed = p12.parse2(password.unwrap_or("")).map_err(|_| {
            if password.is_some() {
                "cannot open the PKCS#12 file: wrong AZURE_CLIENT_CERTIFICATE_PASSWORD?".to_string()
            } else {
                "cannot open the PKCS#12 file: it needs AZURE_CLIENT_CERTIFICATE_PASSWORD"
                    .to_string()
            }
        })?;
        let key = parsed.pkey.ok_or("the PKCS#12 file holds no private key")?;
        rsa_only(&key)?;
        let cert = parsed.cert.ok_or("the PKCS#12 file holds no certificate")?;
        let chain = parsed
            .ca
            .map(|s| s.into_iter().collect())
            .unwrap_or_default();
        return Ok(ClientCert { key, cert, chain });
    }
    // Always with a passphrase (empty when none is given): without one OpenSSL would prompt
    // on the terminal for an encrypted key.
    let key = PKey::private_key_from_pem_passphrase(bytes, password.unwrap_or("").as_bytes())
        .map_err(|_| {
            "no usable private key in the PEM file (it needs the key and the certificate; an encrypted key needs AZURE_CLIENT_CERTIFICATE_PASSWORD)".to_string()
        })?;
    rsa_only(&key)?;
    let mut certs = X509::stack_from_pem(bytes).map_err(|e| format!("bad certificate PEM: {e}"))?;
    let leaf = certs
        .iter()
        .position(|c| c.public_key().is_ok_and(|p| p.public_eq(&key)))
        .ok_or("no certificate in the PEM file matches its private key")?;
    let cert = certs.remove(leaf);
    Ok(ClientCert {
        key,
        cert,
        chain: certs,
    })
}

/// The same key and certificates as PKCS#12 (empty password), for tools that want one.
pub fn to_pkcs12(c: &ClientCert) -> Result<Vec<u8>, String> {
    let mut chain = openssl::stack::Stack::new().map_err(|e| e.to_string())?;
    for x in &c.chain {
        chain.push(x.clone()).map_err(|e| e.to_string())?;
    }
    let mut builder = openssl::pkcs12::Pkcs12::builder();
    builder.name("kvfs").pkey(&c.key).cert(&c.cert);
    if !c.chain.is_empty() {
        builder.ca(chain);
    }
    builder
        .build2("")
        .and_then(|p| p.to_der())
        .map_err(|e| format!("cannot build PKCS#12: {e}"))
}

/// Client assertions signed with a certificate's key (RS256), for [`ClientAssertionCredential`].
///
/// Not the crate's `ClientCertificateCredential`: azure_identity 1.0.0 puts the thumbprint in
/// the JWT header's `x5t` as *standard* base64 (`+`, `/`, `=`), where RFC 7515 §4.1.7 requires
/// base64url; a verifier that follows the RFC (testvault does) rejects it for most certificates
/// (AADSTS700027). Here `x5t` and `x5t#S256` are base64url, a fresh assertion is made for every
/// token request, and the same pipeline options (trust, retries) apply.
pub struct CertificateAssertion {
    client_id: String,
    audience: String,
    key: openssl::pkey::PKey<openssl::pkey::Private>,
    header: String,
}

impl std::fmt::Debug for CertificateAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAssertion")
            .field("client_id", &self.client_id)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

const ASSERTION_LIFETIME_SECS: i64 = 600;

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl CertificateAssertion {
    /// `audience` is the token endpoint (`{authority}/{tenant}/oauth2/v2.0/token`).
    pub fn new(
        client_id: &str,
        audience: &str,
        cert: ClientCert,
        send_chain: bool,
    ) -> Result<CertificateAssertion, String> {
        use base64::Engine;
        use openssl::hash::MessageDigest;
        let digest = |md| {
            cert.cert
                .digest(md)
                .map(|d| b64url(&d))
                .map_err(|e| format!("certificate thumbprint: {e}"))
        };
        let mut header = serde_json::json!({
            "alg": "RS256",
            "typ": "JWT",
            "x5t": digest(MessageDigest::sha1())?,
            "x5t#S256": digest(MessageDigest::sha256())?,
        });
        if send_chain {
            let x5c = std::iter::once(&cert.cert)
                .chain(&cert.chain)
                .map(|c| {
                    c.to_der()
                        .map(|d| base64::engine::general_purpose::STANDARD.encode(d))
                        .map_err(|e| e.to_string())
                })
                .collect::<Result<Vec<_>, _>>()?;
            header["x5c"] = serde_json::json!(x5c);
        }
        Ok(CertificateAssertion {
            client_id: client_id.to_string(),
            audience: audience.to_string(),
            key: cert.key,
            header: b64url(header.to_string().as_bytes()),
        })
    }

    /// A signed assertion valid from `now` for ten minutes.
    pub fn assertion(&self, now: i64) -> Result<String, String> {
        use openssl::hash::MessageDigest;
        use openssl::sign::Signer;
        let mut jti = [0u8; 16];
        openssl::rand::rand_bytes(&mut jti).map_err(|e| e.to_string())?;
        let claims = serde_json::json!({
            "aud": self.audience,
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": b64url(&jti),
            "iat": now,
            "nbf": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!("{}.{}", self.header, b64url(claims.to_string().as_bytes()));
        let mut signer =
            Signer::new(MessageDigest::sha256(), &self.key).map_err(|e| e.to_string())?;
        signer
            .update(signing_input.as_bytes())
            .map_err(|e| e.to_string())?;
        let signature = signer.sign_to_vec().map_err(|e| e.to_string())?;
        Ok(format!("{signing_input}.{}", b64url(&signature)))
    }
}

#[async_trait]
impl ClientAssertion for CertificateAssertion {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        self.assertion(OffsetDateTime::now_utc().unix_timestamp())
            .map_err(|e| {
                azure_core::Error::with_message(
                    ErrorKind::Credential,
                    format!("cannot sign the client assertion: {e}"),
                )
            })
    }
}

/// `{authority}/{tenant}/oauth2/v2.0/token`, as the crate builds it.
fn token_endpoint(authority_host: &str, tenant: &str) -> Result<String, String> {
    let base = url::Url::parse(authority_host)
        .map_err(|e| format!("authority host {authority_host:?}: {e}"))?;
    base.join(&format!("/{tenant}/oauth2/v2.0/token"))
        .map(String::from)
        .map_err(|e| format!("tenant {tenant:?}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Workload identity
// ---------------------------------------------------------------------------------------------

/// The federated token, read from its file on every token request: kubelet rotates the file
/// (hourly by default) and `WorkloadIdentityCredential` would keep an old one for 600 s.
#[derive(Debug, Clone)]
pub struct FederatedTokenFile {
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

// ---------------------------------------------------------------------------------------------
// Azure CLI
// ---------------------------------------------------------------------------------------------

/// Runs `az` (through the crate's `/bin/sh -c`) with a hard timeout, killing it when it runs
/// over, and with the PATH kvfs was given.
#[derive(Debug)]
struct BoundedExecutor {
    timeout: Duration,
    path: Option<OsString>,
}

#[async_trait]
impl Executor for BoundedExecutor {
    async fn run(&self, program: &OsStr, args: &[&OsStr]) -> std::io::Result<std::process::Output> {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // Its own process group, so a hung `az` (a child of the shell) dies with the shell.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(path) = &self.path {
            cmd.env("PATH", path);
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(out) => out,
            Err(_) => {
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    // SAFETY: plain syscall; the group is the one this call created.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("az did not answer within {}", human(self.timeout)),
                ))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Managed identity
// ---------------------------------------------------------------------------------------------

/// Managed identity over HTTP, both forms: the instance metadata service and App Service's
/// `IDENTITY_ENDPOINT`.
///
/// Hand-written rather than the crate's `ManagedIdentityCredential` because that one hard-codes
/// the metadata service at 169.254.169.254 (tests and `--imds-endpoint` need another address)
/// and retries connection failures for about 72 s whatever retry options it is given, which
/// would stall `auto` and every read during an outage. It also picks its source from the
/// process environment, which would make `auto`'s decision (taken from an [`Env`]) and the
/// credential disagree. Here each request has a bounded timeout and no retries: the cache and
/// the vault client's retry policy decide what happens next.
#[derive(Debug)]
pub struct MsiCredential {
    url: url::Url,
    header: (&'static str, String),
    client_id: Option<String>,
    http: reqwest::Client,
    timeout: Duration,
}

impl MsiCredential {
    /// `GET {endpoint}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=…` with
    /// `Metadata: true`.
    pub fn imds(
        endpoint: &str,
        client_id: Option<String>,
        timeout: Duration,
    ) -> Result<MsiCredential, String> {
        #[cfg(test)]
        assert!(
            !endpoint.contains("169.254.169.254"),
            "tests must never reach the real instance metadata service"
        );
        let base = endpoint.trim_end_matches('/');
        let mut url = parse_http_url(&format!("{base}/metadata/identity/oauth2/token"))
            .map_err(|e| format!("--imds-endpoint {endpoint:?}: {e}"))?;
        url.query_pairs_mut()
            .append_pair("api-version", "2018-02-01");
        Self::new(url, ("Metadata", "true".into()), client_id, timeout)
    }

    /// `GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=…` with `X-IDENTITY-HEADER`.
    pub fn app_service(
        endpoint: &str,
        header: &str,
        client_id: Option<String>,
        timeout: Duration,
    ) -> Result<MsiCredential, String> {
        let mut url =
            parse_http_url(endpoint).map_err(|e| format!("IDENTITY_ENDPOINT {endpoint:?}: {e}"))?;
        url.query_pairs_mut()
            .append_pair("api-version", "2019-08-01");
        Self::new(
            url,
            ("X-IDENTITY-HEADER", header.to_string()),
            client_id,
            timeout,
        )
    }

    fn new(
        url: url::Url,
        header: (&'static str, String),
        client_id: Option<String>,
        timeout: Duration,
    ) -> Result<MsiCredential, String> {
        // Its own client: these endpoints are link-local or loopback, and must never go through
        // an HTTP(S)_PROXY from the environment.
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {}", error_chain(&e)))?;
        Ok(MsiCredential {
            url,
            header,
            client_id,
            http,
            timeout,
        })
    }

    /// The request URL for one scope.
    pub fn request_url(&self, scope: &str) -> url::Url {
        let mut url = self.url.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("resource", resource_of(scope));
            if let Some(id) = &self.client_id {
                q.append_pair("client_id", id);
            }
        }
        url
    }
}

fn parse_http_url(s: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(s).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("not an http:// URL".into());
    }
    Ok(url)
}

/// `https://vault.azure.net/.default` → `https://vault.azure.net`.
fn resource_of(scope: &str) -> &str {
    scope.strip_suffix("/.default").unwrap_or(scope)
}

#[async_trait]
impl TokenCredential for MsiCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let [scope] = scopes else {
            return Err(azure_core::Error::with_message(
                ErrorKind::Credential,
                "managed identity takes exactly one scope",
            ));
        };
        let url = self.request_url(scope);
        let where_ = format!(
            "managed identity endpoint {}",
            url.origin().ascii_serialization()
        );
        let answer = self
            .http
            .get(url)
            .header(self.header.0, &self.header.1)
            .timeout(self.timeout)
            .send()
            .await;
        let response = answer.map_err(|e| {
            let inner = azure_core::Error::new(ErrorKind::Connection, e);
            azure_core::Error::with_error(
                ErrorKind::Credential,
                inner,
                format!("{where_}: no answer"),
            )
        })?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| {
            let inner = azure_core::Error::new(ErrorKind::Io, e);
            azure_core::Error::with_error(
                ErrorKind::Credential,
                inner,
                format!("{where_}: answer cut short"),
            )
        })?;
        if !(200..300).contains(&status) {
            let detail = msi_error_text(&body);
            let message = format!("{where_} answered HTTP {status}: {detail}");
            return Err(if status == 408 || status == 429 || status >= 500 {
                let inner = ErrorKind::HttpResponse {
                    status: azure_core::http::StatusCode::from(status),
                    error_code: None,
                    raw_response: None,
                }
                .into_error();
                azure_core::Error::with_error(ErrorKind::Credential, inner, message)
            } else {
                azure_core::Error::with_message(ErrorKind::Credential, message)
            });
        }
        parse_msi_token(&body, OffsetDateTime::now_utc()).map_err(|e| {
            azure_core::Error::with_message(ErrorKind::Credential, format!("{where_}: {e}"))
        })
    }
}

/// The interesting part of a managed-identity error body (IMDS: `error_description`; App
/// Service: `message`), else its first line.
fn msi_error_text(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    for key in ["error_description", "message", "error"] {
        if let Some(s) = v.get(key).and_then(|x| x.as_str()) {
            return s.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        "(no body)".into()
    } else {
        line.chars().take(200).collect()
    }
}

/// A managed-identity token answer: `access_token` and `expires_on` (Unix seconds, as a string
/// in both IMDS and App Service answers, sometimes a number), else `expires_in` from `now`.
pub fn parse_msi_token(body: &[u8], now: OffsetDateTime) -> Result<AccessToken, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    let token = v
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or("answer has no access_token")?;
    let number = |key: &str| -> Option<i64> {
        match v.get(key)? {
            serde_json::Value::String(s) => s.trim().parse().ok(),
            serde_json::Value::Number(n) => n.as_i64(),
            _ => None,
        }
    };
    let expires_on = match (number("expires_on"), number("expires_in")) {
        (Some(at), _) => OffsetDateTime::from_unix_timestamp(at)
            .map_err(|_| format!("expires_on {at} is out of range"))?,
        (None, Some(secs)) => now + azure_core::time::Duration::seconds(secs),
        (None, None) => return Err("answer has neither expires_on nor expires_in".into()),
    };
    Ok(AccessToken::new(Secret::new(token.to_string()), expires_on))
}

// ---------------------------------------------------------------------------------------------
// Token cache
// ---------------------------------------------------------------------------------------------

/// A token source that timed out (a hung `az`) is an outage, not a refusal: say so in the
/// chain (an `Io` error) so the vault client's mapping keeps serving cached values.
fn mark_timeouts_transient(e: azure_core::Error) -> azure_core::Error {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut timed_out = false;
    while let Some(x) = next {
        timed_out |= x
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        next = x.source();
    }
    if !timed_out || is_transient(&e) {
        return e;
    }
    azure_core::Error::with_error(
        ErrorKind::Credential,
        azure_core::Error::with_message(ErrorKind::Io, root_cause(&e)),
        "the token source timed out",
    )
}

/// When a token obtained at `obtained` and expiring at `expires` should be replaced: 5 minutes
/// before it expires, or halfway through its life when that is shorter than 10 minutes (so short
/// test tokens are still reused, and still renewed while reads go on).
pub fn refresh_at(obtained: OffsetDateTime, expires: OffsetDateTime) -> OffsetDateTime {
    let lifetime = expires - obtained;
    let margin = if lifetime < azure_core::time::Duration::minutes(10) {
        lifetime / 2
    } else {
        azure_core::time::Duration::minutes(5)
    };
    expires - margin
}

/// A failed refresh still returns the old token while it has at least this long to live.
const STALE_TOKEN_FLOOR: azure_core::time::Duration = azure_core::time::Duration::seconds(30);

/// The longest wait between two fresh-token attempts while the vault refuses every token.
pub const MAX_FRESH_TOKEN_DELAY: Duration = Duration::from_secs(60);

/// How long to wait before the next fresh token after `strikes` refused tokens (or failed
/// attempts) in a row: none after the first, then 1 s, 2 s, 4 s … up to
/// [`MAX_FRESH_TOKEN_DELAY`]. A vault that refuses every token hears from kvfs about once a minute.
pub fn fresh_token_delay(strikes: u32) -> Duration {
    match strikes {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 2).min(6)).min(MAX_FRESH_TOKEN_DELAY),
    }
}

type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// Builds the credential a [`CachedCredential`] wraps afresh. The official credentials keep a
/// token cache of their own (renewing only inside 5 minutes of expiry) that would hand back the
/// very token the vault refused; a new credential has an empty one.
pub type Rebuild = Arc<dyn Fn() -> Result<Arc<dyn TokenCredential>, String> + Send + Sync>;

struct CachedToken {
    token: AccessToken,
    refresh_at: OffsetDateTime,
    /// The vault has authenticated a request made with it.
    accepted: bool,
    /// The vault answered 401 to it: never handed out again.
    refused: bool,
}

/// Refused tokens and failed token requests since the vault last accepted a token.
#[derive(Default)]
struct Strikes {
    count: u32,
    /// No fresh token is asked for before then.
    not_before: Option<OffsetDateTime>,
}

/// Reuses each scope's token until [`refresh_at`], one refresh at a time. When a refresh fails
/// and the old token still has [`STALE_TOKEN_FLOOR`] to live, the old token is served (and the
/// failure logged), so a token endpoint blip does not fail reads.
///
/// It is also told the vault's verdict on each token ([`TokenVerdicts`], through the vault
/// client's pipeline). A token the vault refuses (401: revoked, or a continuous-access-evaluation
/// event) is dropped and the credential rebuilt, so the next token is newly issued rather than
/// the refused one from the credential's own cache. Fresh tokens after a refusal are spaced by
/// [`fresh_token_delay`]; in between, `get_token` fails at once (the read is `EACCES`) without
/// asking the token endpoint or the vault. The spacing resets when the vault accepts a token.
pub struct CachedCredential {
    inner: parking_lot::Mutex<Arc<dyn TokenCredential>>,
    rebuild: Option<Rebuild>,
    clock: Clock,
    tokens: parking_lot::Mutex<HashMap<String, CachedToken>>,
    strikes: parking_lot::Mutex<Strikes>,
    /// One token request at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for CachedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedCredential").finish_non_exhaustive()
    }
}

impl CachedCredential {
    pub fn new(inner: Arc<dyn TokenCredential>) -> CachedCredential {
        Self::with_clock(inner, Arc::new(OffsetDateTime::now_utc))
    }

    /// A cache that builds its credential with `rebuild`, again after each refused token.
    pub fn rebuildable(rebuild: Rebuild) -> Result<CachedCredential, String> {
        let mut c = Self::new(rebuild()?);
        c.rebuild = Some(rebuild);
        Ok(c)
    }

    pub fn with_clock(inner: Arc<dyn TokenCredential>, clock: Clock) -> CachedCredential {
        CachedCredential {
            inner: parking_lot::Mutex::new(inner),
            rebuild: None,
            clock,
            tokens: parking_lot::Mutex::new(HashMap::new()),
            strikes: parking_lot::Mutex::new(Strikes::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The cached token of `key`, if it may still be handed out without a refresh.
    fn current(&self, key: &str, now: OffsetDateTime) -> Option<AccessToken> {
        let tokens = self.tokens.lock();
        let c = tokens.get(key)?;
        (!c.refused && now < c.refresh_at).then(|| c.token.clone())
    }

    /// One more strike; returns the wait before the next fresh token.
    fn strike(&self, now: OffsetDateTime) -> Duration {
        let mut s = self.strikes.lock();
        s.count = s.count.saturating_add(1);
        let delay = fresh_token_delay(s.count);
        s.not_before = Some(now + delay);
        delay
    }

    /// After a refusal: the wait left before a fresh token may be asked for, if any.
    fn backoff_left(&self, now: OffsetDateTime) -> Option<Duration> {
        let s = self.strikes.lock();
        let left = s.not_before? - now;
        (left > azure_core::time::Duration::ZERO)
            .then(|| Duration::try_from(left).unwrap_or_default())
    }

    /// A new credential (with an empty cache of its own), where one can be built.
    fn rebuild_inner(&self, now: OffsetDateTime) -> azure_core::Result<()> {
        let Some(rebuild) = &self.rebuild else {
            return Ok(());
        };
        match rebuild() {
            Ok(c) => {
                *self.inner.lock() = c;
                Ok(())
            }
            Err(e) => {
                self.strike(now);
                Err(azure_core::Error::with_message(ErrorKind::Credential, e))
            }
        }
    }
}

/// The answer while fresh tokens are spaced out after refusals. Not transient: the read is
/// `EACCES`, not a stale value (see doc/SEMANTICS.md).
fn waiting_error(wait: Duration) -> azure_core::Error {
    azure_core::Error::with_message(
        ErrorKind::Credential,
        format!(
            "the vault refused the last access token; the next one is asked for in {}s",
            wait.as_secs_f64().ceil()
        ),
    )
}

#[async_trait]
impl TokenCredential for CachedCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let key = scopes.join(" ");
        if let Some(token) = self.current(&key, (self.clock)()) {
            return Ok(token);
        }
        let _one = self.fetching.lock().await;
        let now = (self.clock)();
        if let Some(token) = self.current(&key, now) {
            return Ok(token);
        }
        let refused = self
            .tokens
            .lock()
            .get(&key)
            .filter(|c| c.refused)
            .map(|c| c.token.token.secret().to_string());
        let after_strikes = refused.is_some() || self.strikes.lock().count > 0;
        if after_strikes {
            if let Some(wait) = self.backoff_left(now) {
                return Err(waiting_error(wait));
            }
            self.rebuild_inner(now)?;
        }
        let inner = self.inner.lock().clone();
        let got = inner.get_token(scopes, options).await;
        crate::metrics::token_request(got.is_ok());
        match got {
            Ok(token) => {
                let now = (self.clock)();
                if refused.as_deref() == Some(token.token.secret()) {
                    // Only a token source with a cache kvfs cannot empty does this (az's own).
                    tracing::warn!(
                        "the token source handed back the access token the vault refused; it will be refused again"
                    );
                }
                self.tokens.lock().insert(
                    key,
                    CachedToken {
                        refresh_at: refresh_at(now, token.expires_on),
                        token: token.clone(),
                        accepted: false,
                        refused: false,
                    },
                );
                Ok(token)
            }
            Err(e) => {
                let e = mark_timeouts_transient(e);
                // A token source that refuses (not one that is down) is paced like a vault
                // that refuses: its answer will not change from one read to the next.
                if after_strikes || !token_source_down(&e) {
                    self.strike(now);
                }
                let tokens = self.tokens.lock();
                match tokens.get(&key) {
                    Some(c) if !c.refused && c.token.expires_on - now >= STALE_TOKEN_FLOOR => {
                        tracing::warn!(
                            "could not renew the access token, using the current one until it expires: {}",
                            error_chain(&e)
                        );
                        Ok(c.token.clone())
                    }
                    _ => Err(e),
                }
            }
        }
    }
}

impl TokenVerdicts for CachedCredential {
    fn accepted(&self, token: &str) {
        let mut tokens = self.tokens.lock();
        let Some(c) = tokens
            .values_mut()
            .find(|c| c.token.token.secret() == token)
        else {
            return;
        };
        c.accepted = true;
        drop(tokens);
        let mut s = self.strikes.lock();
        if s.count > 0 {
            tracing::info!(
                refused = s.count,
                "the vault accepts the new access token; reads are served again"
            );
            *s = Strikes::default();
        }
    }

    fn refused(&self, token: &str, claims: Option<&str>) -> Option<String> {
        let now = (self.clock)();
        let mut tokens = self.tokens.lock();
        let Some((scope, c)) = tokens
            .iter_mut()
            .find(|(_, c)| c.token.token.secret() == token)
        else {
            // A token already replaced (a request that was in flight with it): the SDK's retry
            // gets the current one.
            return tokens.keys().next().cloned();
        };
        let scope = scope.clone();
        if c.refused {
            return Some(scope);
        }
        c.refused = true;
        let was_accepted = c.accepted;
        drop(tokens);
        let delay = self.strike(now);
        // A claims challenge asks for a token issued after the event; a new token is that. The
        // claims themselves cannot be passed on: azure_identity 1.0's `TokenRequestOptions` has
        // no field for them and the managed-identity endpoints take none.
        let how = if claims.is_some() {
            "401 with a claims challenge"
        } else {
            "401"
        };
        if was_accepted {
            tracing::warn!(
                "the vault refused an access token it had accepted ({how}: revoked, or a continuous access evaluation event); getting a new one"
            );
        } else {
            tracing::warn!(
                next_in = ?delay,
                "the vault refused a new access token too ({how}); asking for another after a pause"
            );
        }
        Some(scope)
    }
}

#[cfg(test)]
mod tests {
    //! Nothing here reaches 169.254.169.254 or Azure: every request names a loopback endpoint
    //! (a closed port or a testvault), and every environment is an explicit [`Env`].

    use std::sync::atomic::{AtomicUsize, Ordering};

    use azure_core::time::Duration as TimeDelta;
    use parking_lot::Mutex;

    use super::*;

    fn request(method: AuthMethod) -> AuthRequest {
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
    fn closed_endpoint() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}")
    }

    fn skips(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Skip { label, reason } => Some(format!("{label}: {reason}")),
                Step::Try(_) => None,
            })
            .collect()
    }

    #[test]
    fn auto_with_nothing_set_only_tries_the_metadata_service() {
        let mut req = request(AuthMethod::Auto);
        req.imds_endpoint = Some("http://127.0.0.1:9/".into());
        let steps = plan(&req, &Env::from_pairs([("PATH", "/nonexistent")])).unwrap();
        assert_eq!(
            skips(&steps),
            [
                "client-secret: AZURE_CLIENT_SECRET not set",
                "client-certificate: AZURE_CLIENT_CERTIFICATE_PATH not set",
                "workload-identity: AZURE_FEDERATED_TOKEN_FILE not set",
                "managed-identity: IDENTITY_ENDPOINT not set",
                "azure-cli: az not found on PATH",
            ]
        );
        assert_eq!(
            steps.last(),
            Some(&Step::Try(Spec::Imds {
                endpoint: "http://127.0.0.1:9".into(),
                client_id: None
            }))
        );
        // The default endpoint is the real one (never contacted in tests).
        let steps = plan(&request(AuthMethod::Auto), &Env::default()).unwrap();
        assert!(
            matches!(steps.last(), Some(Step::Try(Spec::Imds { endpoint, .. })) if endpoint == DEFAULT_IMDS_ENDPOINT)
        );
        // KVFS_IMDS_ENDPOINT, unless the flag says otherwise.
        let env = Env::from_pairs([("KVFS_IMDS_ENDPOINT", "http://127.0.0.1:7")]);
        let steps = plan(&request(AuthMethod::Auto), &env).unwrap();
        assert!(
            matches!(steps.last(), Some(Step::Try(Spec::Imds { endpoint, .. })) if endpoint == "http://127.0.0.1:7")
        );
        let steps = plan(&req, &env).unwrap();
        assert!(
            matches!(steps.last(), Some(Step::Try(Spec::Imds { endpoint, .. })) if endpoint == "http://127.0.0.1:9")
        );
    }

    #[test]
    fn auto_order_follows_the_environment() {
        let all = [
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "s"),
            ("AZURE_CLIENT_CERTIFICATE_PATH", "/cert.pem"),
            ("AZURE_FEDERATED_TOKEN_FILE", "/token"),
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token"),
            ("IDENTITY_HEADER", "h"),
        ];
        let first = |n: usize| {
            let env = Env::from_pairs(all[..2].iter().chain(&all[n..]).copied());
            let steps = plan(&request(AuthMethod::Auto), &env).unwrap();
            steps
                .into_iter()
                .find_map(|s| match s {
                    Step::Try(spec) => Some(spec.method()),
                    Step::Skip { .. } => None,
                })
                .unwrap()
        };
        assert_eq!(first(2), "client-secret");
        assert_eq!(first(3), "client-certificate");
        assert_eq!(first(4), "workload-identity");
        assert_eq!(first(5), "managed-identity");
        // The secret without a tenant is skipped, saying why.
        let env = Env::from_pairs([("AZURE_CLIENT_ID", "c"), ("AZURE_CLIENT_SECRET", "s")]);
        let steps = plan(&request(AuthMethod::Auto), &env).unwrap();
        assert_eq!(
            steps[0],
            Step::Skip {
                label: "client-secret",
                reason: "AZURE_TENANT_ID (or --tenant-id) not set".into()
            }
        );
        // Flags win over the environment, and the authority host falls back to the cloud's.
        let mut req = request(AuthMethod::Auto);
        req.tenant_id = Some("flag-tenant".into());
        let env = Env::from_pairs([
            ("AZURE_TENANT_ID", "env-tenant"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "s"),
        ]);
        let Step::Try(Spec::ClientSecret {
            tenant,
            authority_host,
            ..
        }) = &plan(&req, &env).unwrap()[0]
        else {
            panic!("client secret first");
        };
        assert_eq!(tenant, "flag-tenant");
        assert_eq!(authority_host, "https://login.microsoftonline.com");
        // IDENTITY_ENDPOINT without its header is not usable.
        let env = Env::from_pairs([("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token")]);
        assert!(
            skips(&plan(&request(AuthMethod::Auto), &env).unwrap()).contains(
                &"managed-identity: IDENTITY_HEADER (IDENTITY_ENDPOINT is set) not set".to_string()
            )
        );
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let env = Env::from_pairs([
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "hunter2"),
            ("AZURE_CLIENT_CERTIFICATE_PATH", "/c.pfx"),
            ("AZURE_CLIENT_CERTIFICATE_PASSWORD", "hunter3"),
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token"),
            ("IDENTITY_HEADER", "hunter4"),
        ]);
        let steps = plan(&request(AuthMethod::Auto), &env).unwrap();
        let shown = format!("{steps:?}");
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.contains("Redacted"));
    }

    #[test]
    fn an_explicit_method_names_what_is_missing() {
        let env = Env::from_pairs([("AZURE_CLIENT_ID", "c")]);
        let err = |m| plan(&request(m), &env).unwrap_err();
        assert_eq!(
            err(AuthMethod::ClientSecret),
            "--auth client-secret needs AZURE_CLIENT_SECRET, AZURE_TENANT_ID (or --tenant-id)"
        );
        assert_eq!(
            err(AuthMethod::ClientCertificate),
            "--auth client-certificate needs AZURE_CLIENT_CERTIFICATE_PATH, AZURE_TENANT_ID (or --tenant-id)"
        );
        assert_eq!(
            err(AuthMethod::WorkloadIdentity),
            "--auth workload-identity needs AZURE_FEDERATED_TOKEN_FILE, AZURE_TENANT_ID (or --tenant-id)"
        );
        assert_eq!(
            err(AuthMethod::AzureCli),
            "--auth azure-cli needs az on PATH"
        );
        // Managed identity needs nothing: the App Service form when its variables are set, else
        // the metadata service (user-assigned by client id).
        let steps = plan(&request(AuthMethod::ManagedIdentity), &env).unwrap();
        assert_eq!(
            steps,
            [Step::Try(Spec::Imds {
                endpoint: DEFAULT_IMDS_ENDPOINT.into(),
                client_id: Some("c".into())
            })]
        );
        let env = Env::from_pairs([
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token"),
            ("IDENTITY_HEADER", "h"),
        ]);
        assert!(matches!(
            &plan(&request(AuthMethod::ManagedIdentity), &env).unwrap()[..],
            [Step::Try(Spec::AppService {
                client_id: None,
                ..
            })]
        ));
    }

    #[tokio::test]
    async fn auto_fails_with_one_line_naming_every_method() {
        let endpoint = closed_endpoint();
        let mut req = request(AuthMethod::Auto);
        req.imds_endpoint = Some(endpoint.clone());
        let http = azure::http_client(&[], Duration::from_secs(5)).unwrap();
        let started = std::time::Instant::now();
        let err = select(
            &req,
            &Env::from_pairs([("PATH", "/nonexistent")]),
            &http,
            &Limits::default(),
        )
        .await
        .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(!err.contains('\n'), "{err}");
        assert!(
            err.starts_with(
                "no credential found (auto): client-secret: AZURE_CLIENT_SECRET not set; client-certificate: AZURE_CLIENT_CERTIFICATE_PATH not set; workload-identity: AZURE_FEDERATED_TOKEN_FILE not set; managed-identity: IDENTITY_ENDPOINT not set; "
            ),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "; azure-cli: az not found on PATH; instance metadata: no answer from {endpoint}"
            )),
            "{err}"
        );
    }

    #[tokio::test]
    async fn auto_probe_of_a_silent_metadata_service_gives_up_in_time() {
        // Accepts connections and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let mut req = request(AuthMethod::Auto);
        req.imds_endpoint = Some(endpoint.clone());
        let http = azure::http_client(&[], Duration::from_secs(5)).unwrap();
        let limits = Limits {
            imds_probe_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let started = std::time::Instant::now();
        let err = select(&req, &Env::default(), &http, &limits)
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            err.ends_with(&format!(
                "instance metadata: no answer from {endpoint} within 300ms"
            )),
            "{err}"
        );
        drop(listener);
    }

    // ---- certificates ----

    fn rsa_cert(
        cn: &str,
    ) -> (
        openssl::pkey::PKey<openssl::pkey::Private>,
        openssl::x509::X509,
    ) {
        let key =
            openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        let cert = self_signed(&key, cn);
        (key, cert)
    }

    fn self_signed(
        key: &openssl::pkey::PKey<openssl::pkey::Private>,
        cn: &str,
    ) -> openssl::x509::X509 {
        use openssl::asn1::Asn1Time;
        use openssl::x509::{X509, X509NameBuilder};
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", cn).unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(key, openssl::hash::MessageDigest::sha256()).unwrap();
        b.build()
    }

    #[test]
    fn pem_key_and_certificate_load_in_either_order() {
        let (key, cert) = rsa_cert("leaf");
        let (_, other) = rsa_cert("intermediate");
        let key_pem = key.private_key_to_pem_pkcs8().unwrap();
        let cert_pem = cert.to_pem().unwrap();
        let other_pem = other.to_pem().unwrap();
        for file in [
            [key_pem.clone(), cert_pem.clone(), other_pem.clone()].concat(),
            [other_pem.clone(), cert_pem.clone(), key_pem.clone()].concat(),
        ] {
            let c = load_client_certificate(&file, None).unwrap();
            assert!(c.key.public_eq(&key));
            assert_eq!(c.cert.to_der().unwrap(), cert.to_der().unwrap());
            assert_eq!(c.chain.len(), 1);
            assert_eq!(c.chain[0].to_der().unwrap(), other.to_der().unwrap());
            // PEM → PKCS#12 → the same key and certificates.
            let der = to_pkcs12(&c).unwrap();
            let back = load_client_certificate(&der, None).unwrap();
            assert!(back.key.public_eq(&key));
            assert_eq!(back.cert.to_der().unwrap(), cert.to_der().unwrap());
            assert_eq!(back.chain.len(), 1);
        }
        // An encrypted key with its password; without it, an error (never a terminal prompt).
        let encrypted = key
            .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"pw")
            .unwrap();
        let file = [encrypted, cert_pem.clone()].concat();
        assert!(load_client_certificate(&file, Some("pw")).is_ok());
        assert!(
            load_client_certificate(&file, None)
                .unwrap_err()
                .contains("AZURE_CLIENT_CERTIFICATE_PASSWORD")
        );
        // A key without its certificate; a certificate without its key.
        assert!(
            load_client_certificate(&[key_pem, other_pem].concat(), None)
                .unwrap_err()
                .contains("matches")
        );
        assert!(
            load_client_certificate(&cert_pem, None)
                .unwrap_err()
                .contains("private key")
        );
    }

    #[test]
    fn pkcs12_loads_with_its_password_and_other_keys_are_refused() {
        let (key, cert) = rsa_cert("leaf");
        let p12 = openssl::pkcs12::Pkcs12::builder()
            .name("x")
            .pkey(&key)
            .cert(&cert)
            .build2("secret")
            .unwrap()
            .to_der()
            .unwrap();
        assert!(load_client_certificate(&p12, Some("secret")).is_ok());
        assert!(
            load_client_certificate(&p12, None)
                .unwrap_err()
                .contains("needs AZURE_CLIENT_CERTIFICATE_PASSWORD")
        );
        assert!(
            load_client_certificate(&p12, Some("nope"))
                .unwrap_err()
                .contains("wrong")
        );
        assert!(
            load_client_certificate(b"garbage", None)
                .unwrap_err()
                .contains("neither PEM nor PKCS#12")
        );
        let ec = openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap();
        let ec = openssl::pkey::PKey::from_ec_key(ec).unwrap();
        let ec_cert = self_signed(&ec, "ec");
        let file = [
            ec.private_key_to_pem_pkcs8().unwrap(),
            ec_cert.to_pem().unwrap(),
        ]
        .concat();
        assert!(
            load_client_certificate(&file, None)
                .unwrap_err()
                .contains("only RSA")
        );
    }

    #[test]
    fn certificate_assertions_are_rs256_jwts_naming_the_certificate_in_base64url() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (key, cert) = rsa_cert("leaf");
        let (_, other) = rsa_cert("intermediate");
        let pem = [
            key.private_key_to_pem_pkcs8().unwrap(),
            cert.to_pem().unwrap(),
            other.to_pem().unwrap(),
        ]
        .concat();
        let endpoint = "https://login.example/tenant/oauth2/v2.0/token";
        for send_chain in [false, true] {
            let c = load_client_certificate(&pem, None).unwrap();
            let a = CertificateAssertion::new("client", endpoint, c, send_chain).unwrap();
            let jwt = a.assertion(1_700_000_000).unwrap();
            let parts: Vec<&str> = jwt.split('.').collect();
            assert_eq!(parts.len(), 3);
            let header: serde_json::Value =
                serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
            let claims: serde_json::Value =
                serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
            let sha1 = cert.digest(openssl::hash::MessageDigest::sha1()).unwrap();
            assert_eq!(header["alg"], "RS256");
            assert_eq!(header["x5t"], b64.encode(sha1));
            assert_eq!(header.get("x5c").is_some(), send_chain);
            if send_chain {
                assert_eq!(header["x5c"].as_array().unwrap().len(), 2);
            }
            assert_eq!(claims["aud"], endpoint);
            assert_eq!(
                (&claims["iss"], &claims["sub"]),
                (&"client".into(), &"client".into())
            );
            assert_eq!(claims["exp"], 1_700_000_600);
            let public = cert.public_key().unwrap();
            let mut verifier =
                openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &public)
                    .unwrap();
            verifier
                .update(format!("{}.{}", parts[0], parts[1]).as_bytes())
                .unwrap();
            assert!(verifier.verify(&b64.decode(parts[2]).unwrap()).unwrap());
        }
        assert_eq!(
            token_endpoint("https://login.example/", "t").unwrap(),
            "https://login.example/t/oauth2/v2.0/token"
        );
    }

    // ---- managed identity answers ----

    #[test]
    fn managed_identity_answers_parse() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let imds = br#"{"access_token":"eyJ0","client_id":"c","expires_in":"3599","expires_on":"1700003599","ext_expires_in":"3599","not_before":"1699999999","resource":"https://vault.azure.net","token_type":"Bearer"}"#;
        let t = parse_msi_token(imds, now).unwrap();
        assert_eq!(t.token.secret(), "eyJ0");
        assert_eq!(t.expires_on.unix_timestamp(), 1_700_003_599);
        let numeric = br#"{"access_token":"a","expires_on":1700000100}"#;
        assert_eq!(
            parse_msi_token(numeric, now)
                .unwrap()
                .expires_on
                .unix_timestamp(),
            1_700_000_100
        );
        let only_in = br#"{"access_token":"a","expires_in":"60"}"#;
        assert_eq!(
            parse_msi_token(only_in, now)
                .unwrap()
                .expires_on
                .unix_timestamp(),
            1_700_000_060
        );
        assert!(
            parse_msi_token(br#"{"expires_on":"1"}"#, now)
                .unwrap_err()
                .contains("access_token")
        );
        assert!(
            parse_msi_token(br#"{"access_token":"a"}"#, now)
                .unwrap_err()
                .contains("expires")
        );
        assert!(
            parse_msi_token(b"<html>", now)
                .unwrap_err()
                .contains("not JSON")
        );
        assert_eq!(
            msi_error_text(
                br#"{"error":"invalid_request","error_description":"Identity not found"}"#
            ),
            "Identity not found"
        );
        assert_eq!(
            msi_error_text(br#"{"statusCode":400,"message":"No managed identity"}"#),
            "No managed identity"
        );
        assert_eq!(msi_error_text(b""), "(no body)");
    }

    #[test]
    fn managed_identity_requests_name_the_resource_and_identity() {
        let c = MsiCredential::imds(
            "http://127.0.0.1:9/",
            Some("abc".into()),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            c.request_url(VAULT_SCOPE).as_str(),
            "http://127.0.0.1:9/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id=abc"
        );
        let c = MsiCredential::app_service(
            "http://127.0.0.1:9/msi/token",
            "h",
            None,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            c.request_url(VAULT_SCOPE).as_str(),
            "http://127.0.0.1:9/msi/token?api-version=2019-08-01&resource=https%3A%2F%2Fvault.azure.net"
        );
        assert!(MsiCredential::imds("127.0.0.1", None, Duration::from_secs(1)).is_err());
    }

    // ---- the token cache ----

    #[test]
    fn tokens_are_renewed_five_minutes_early_or_halfway_when_short() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let at = |life: TimeDelta| refresh_at(t0, t0 + life) - t0;
        assert_eq!(at(TimeDelta::hours(1)), TimeDelta::minutes(55));
        assert_eq!(at(TimeDelta::minutes(10)), TimeDelta::minutes(5));
        assert_eq!(at(TimeDelta::minutes(9)), TimeDelta::seconds(270));
        assert_eq!(at(TimeDelta::seconds(5)), TimeDelta::milliseconds(2500));
    }

    /// Counts fetches; each token lives `life`, from the shared clock; fails while `fail` is set.
    #[derive(Debug)]
    struct Counting {
        now: Arc<Mutex<OffsetDateTime>>,
        life: TimeDelta,
        calls: AtomicUsize,
        fail: Mutex<bool>,
    }

    #[async_trait]
    impl TokenCredential for Counting {
        async fn get_token(
            &self,
            _: &[&str],
            _: Option<TokenRequestOptions<'_>>,
        ) -> azure_core::Result<AccessToken> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if *self.fail.lock() {
                let inner = azure_core::Error::with_message(ErrorKind::Connection, "refused");
                return Err(azure_core::Error::with_error(
                    ErrorKind::Credential,
                    inner,
                    "down",
                ));
            }
            Ok(AccessToken::new(
                Secret::new(format!("token-{n}")),
                *self.now.lock() + self.life,
            ))
        }
    }

    fn cached(life: TimeDelta) -> (CachedCredential, Arc<Counting>, Arc<Mutex<OffsetDateTime>>) {
        let now = Arc::new(Mutex::new(
            OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
        ));
        let inner = Arc::new(Counting {
            now: now.clone(),
            life,
            calls: AtomicUsize::new(0),
            fail: Mutex::new(false),
        });
        let clock = now.clone();
        let c = CachedCredential::with_clock(inner.clone(), Arc::new(move || *clock.lock()));
        (c, inner, now)
    }

    async fn token(c: &CachedCredential) -> azure_core::Result<String> {
        c.get_token(&[VAULT_SCOPE], None)
            .await
            .map(|t| t.token.secret().to_string())
    }

    #[tokio::test]
    async fn the_cache_reuses_a_token_until_its_refresh_time() {
        let (c, inner, now) = cached(TimeDelta::seconds(5));
        assert_eq!(token(&c).await.unwrap(), "token-1");
        *now.lock() += TimeDelta::seconds(2);
        assert_eq!(token(&c).await.unwrap(), "token-1");
        *now.lock() += TimeDelta::milliseconds(600);
        assert_eq!(
            token(&c).await.unwrap(),
            "token-2",
            "renewed halfway through a 5 s life"
        );
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);

        let (c, inner, now) = cached(TimeDelta::hours(1));
        assert_eq!(token(&c).await.unwrap(), "token-1");
        *now.lock() += TimeDelta::minutes(54);
        assert_eq!(token(&c).await.unwrap(), "token-1");
        *now.lock() += TimeDelta::minutes(2);
        // The endpoint is down 4 minutes before expiry: the current token is still served.
        *inner.fail.lock() = true;
        assert_eq!(token(&c).await.unwrap(), "token-1");
        // Less than 30 s left: the failure is the answer, and it stays transient.
        *now.lock() += TimeDelta::seconds(230);
        let err = token(&c).await.unwrap_err();
        assert!(is_transient(&err));
        *inner.fail.lock() = false;
        assert_eq!(token(&c).await.unwrap(), "token-4");
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_refresh() {
        let (c, inner, _) = cached(TimeDelta::hours(1));
        let c = Arc::new(c);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { token(&c).await.unwrap() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), "token-1");
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
    }

    // ---- refused tokens ----

    #[test]
    fn fresh_tokens_after_refusals_wait_0_1_2_4_up_to_60_seconds() {
        let delays: Vec<u64> = (1..=10).map(|n| fresh_token_delay(n).as_secs()).collect();
        assert_eq!(delays, [0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(fresh_token_delay(u32::MAX), MAX_FRESH_TOKEN_DELAY);
    }

    #[tokio::test]
    async fn a_refused_token_is_replaced_at_once_then_fresh_tokens_back_off() {
        let (c, inner, now) = cached(TimeDelta::hours(1));
        assert_eq!(token(&c).await.unwrap(), "token-1");
        c.accepted("token-1");
        assert_eq!(c.refused("token-1", None).as_deref(), Some(VAULT_SCOPE));
        // Revoked mid-session: a new token at once.
        assert_eq!(token(&c).await.unwrap(), "token-2");
        // The vault refuses every token: each next one waits twice as long, up to a minute;
        // meanwhile the answer is an error (not transient: EACCES), without a token request.
        let mut n = 2;
        for wait in [1, 2, 4, 8, 16, 32, 60, 60] {
            c.refused(&format!("token-{n}"), None);
            *now.lock() += TimeDelta::seconds(wait - 1);
            let err = token(&c).await.unwrap_err();
            assert!(!token_source_down(&err), "{}", error_chain(&err));
            assert!(
                error_chain(&err).contains("refused"),
                "{}",
                error_chain(&err)
            );
            assert_eq!(inner.calls.load(Ordering::SeqCst), n);
            *now.lock() += TimeDelta::seconds(1);
            n += 1;
            assert_eq!(token(&c).await.unwrap(), format!("token-{n}"));
        }
        // A refusal reported twice (requests in flight together) counts once.
        c.refused(&format!("token-{n}"), None);
        c.refused(&format!("token-{n}"), None);
        *now.lock() += TimeDelta::seconds(60);
        n += 1;
        assert_eq!(token(&c).await.unwrap(), format!("token-{n}"));
        // Accepted: the pause is over, and the next revocation is handled at once again.
        c.accepted(&format!("token-{n}"));
        c.refused(&format!("token-{n}"), Some("eyJ9"));
        n += 1;
        assert_eq!(token(&c).await.unwrap(), format!("token-{n}"));
        // A token already replaced still names the scope (the SDK's retry takes the current one).
        assert_eq!(c.refused("token-1", None).as_deref(), Some(VAULT_SCOPE));
        assert_eq!(token(&c).await.unwrap(), format!("token-{n}"));
    }

    #[tokio::test]
    async fn a_refused_token_is_never_handed_out_again() {
        let (c, inner, _) = cached(TimeDelta::hours(1));
        assert_eq!(token(&c).await.unwrap(), "token-1");
        c.refused("token-1", None);
        // The token source is down: the refused token has an hour left but is not served.
        *inner.fail.lock() = true;
        assert!(token(&c).await.is_err());
        // And the next attempt waits its turn.
        let err = token(&c).await.unwrap_err();
        assert!(
            error_chain(&err).contains("next one"),
            "{}",
            error_chain(&err)
        );
    }

    /// A credential with a token cache of its own (as azure_identity's are): every instance
    /// hands out one token, forever.
    #[derive(Debug)]
    struct SelfCaching(String);

    #[async_trait]
    impl TokenCredential for SelfCaching {
        async fn get_token(
            &self,
            _: &[&str],
            _: Option<TokenRequestOptions<'_>>,
        ) -> azure_core::Result<AccessToken> {
            Ok(AccessToken::new(
                Secret::new(self.0.clone()),
                OffsetDateTime::now_utc() + TimeDelta::hours(1),
            ))
        }
    }

    #[tokio::test]
    async fn the_credential_is_rebuilt_so_its_own_cache_cannot_hand_back_the_refused_token() {
        let built = Arc::new(AtomicUsize::new(0));
        let counter = built.clone();
        let c = CachedCredential::rebuildable(Arc::new(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Arc::new(SelfCaching(format!("instance-{n}"))) as Arc<dyn TokenCredential>)
        }))
        .unwrap();
        assert_eq!(token(&c).await.unwrap(), "instance-1");
        c.accepted("instance-1");
        c.refused("instance-1", None);
        assert_eq!(token(&c).await.unwrap(), "instance-2");
        assert_eq!(built.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_token_endpoint_that_is_down_is_not_paused() {
        let (c, inner, _) = cached(TimeDelta::hours(1));
        *inner.fail.lock() = true;
        // `Counting` fails with a connection error: down, not refusing; no pause.
        for _ in 0..3 {
            assert!(token(&c).await.is_err());
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
        *inner.fail.lock() = false;
        assert_eq!(token(&c).await.unwrap(), "token-4");
    }

    // ---- Azure CLI ----

    fn fake_az(dir: &std::path::Path, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("az");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn auto_uses_a_logged_in_az_and_skips_a_hung_one() {
        let dir = tempfile::tempdir().unwrap();
        let expires = OffsetDateTime::now_utc().unix_timestamp() + 3600;
        fake_az(
            dir.path(),
            &format!(
                r#"case "$*" in *"get-access-token -o json --scope https://vault.azure.net/.default"*) ;; *) exit 2;; esac
echo '{{"accessToken":"cli-token","tokenType":"Bearer","expires_on":{expires}}}'"#
            ),
        );
        let path = format!("{}:/usr/bin:/bin", dir.path().display());
        let mut req = request(AuthMethod::Auto);
        req.imds_endpoint = Some(closed_endpoint());
        let http = azure::http_client(&[], Duration::from_secs(5)).unwrap();
        let env = Env::from_pairs([("PATH", path.as_str())]);
        let selected = select(&req, &env, &http, &Limits::default()).await.unwrap();
        assert_eq!(selected.method, "azure-cli");
        let t = selected
            .credential
            .get_token(&[VAULT_SCOPE], None)
            .await
            .unwrap();
        assert_eq!(t.token.secret(), "cli-token");

        // Not logged in: az's own words.
        fake_az(
            dir.path(),
            "echo 'Please run az login to setup account.' >&2; exit 1",
        );
        let err = select(&req, &env, &http, &Limits::default())
            .await
            .unwrap_err();
        assert!(
            err.contains("azure-cli: ") && err.contains("az login"),
            "{err}"
        );

        // Hung: given up on after the limit, and the next method is tried.
        fake_az(dir.path(), "sleep 30");
        let limits = Limits {
            cli_timeout: Duration::from_millis(500),
            ..Limits::default()
        };
        let started = std::time::Instant::now();
        let err = select(&req, &env, &http, &limits).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        // After mounting, a hung az is an outage (cached values keep being served), not a
        // refusal.
        let mut explicit = request(AuthMethod::AzureCli);
        explicit.imds_endpoint = req.imds_endpoint.clone();
        let cli = select(&explicit, &env, &http, &limits).await.unwrap();
        let e = cli
            .credential
            .get_token(&[VAULT_SCOPE], None)
            .await
            .unwrap_err();
        assert!(is_transient(&e), "{}", error_chain(&e));
        assert_eq!(
            error_chain(&e),
            "the token source timed out: az did not answer within 500ms"
        );
        assert!(
            err.contains("azure-cli: az did not answer within 500ms; instance metadata: "),
            "{err}"
        );
    }

    // ---- against testvault ----

    fn vault(lifetime_secs: i64) -> testvault::TestVault {
        let mut options = testvault::Options::default();
        options.settings.token_lifetime_secs = lifetime_secs;
        testvault::TestVault::start(options).expect("testvault starts")
    }

    fn vault_http(v: &testvault::TestVault) -> reqwest::Client {
        let ca = std::fs::read(&v.info().ca_file).unwrap();
        azure::http_client(&[ca], Duration::from_secs(10)).unwrap()
    }

    #[tokio::test]
    async fn imds_credential_against_testvault() {
        let v = vault(3600);
        let i = v.info().clone();
        // auto with nothing else set probes the metadata service and keeps the token it got.
        let mut req = request(AuthMethod::Auto);
        req.imds_endpoint = Some(i.imds_endpoint.clone());
        let selected = select(&req, &Env::default(), &vault_http(&v), &Limits::default())
            .await
            .unwrap();
        assert_eq!(selected.method, "managed-identity");
        selected
            .credential
            .get_token(&[VAULT_SCOPE], None)
            .await
            .unwrap();
        selected
            .credential
            .get_token(&[VAULT_SCOPE], None)
            .await
            .unwrap();
        assert_eq!(v.count("ManagedIdentityToken"), 1);
        let log = v.requests();
        assert_eq!(
            log.last().unwrap().client_id.as_deref(),
            Some(i.system_assigned_client_id.as_str())
        );

        // User-assigned by client id, explicitly.
        let mut req = request(AuthMethod::ManagedIdentity);
        req.client_id = Some(i.user_assigned_client_id.clone());
        req.imds_endpoint = Some(i.imds_endpoint.clone());
        let selected = select(&req, &Env::default(), &vault_http(&v), &Limits::default())
            .await
            .unwrap();
        let t = selected
            .credential
            .get_token(&[VAULT_SCOPE], None)
            .await
            .unwrap();
        assert!(t.expires_on > OffsetDateTime::now_utc() + TimeDelta::minutes(50));
        assert_eq!(
            v.requests().last().unwrap().client_id.as_deref(),
            Some(i.user_assigned_client_id.as_str())
        );

        // An unknown identity is refused (not transient: the vault client maps it to EACCES).
        let c = MsiCredential::imds(
            &i.imds_endpoint,
            Some("nobody".into()),
            Duration::from_secs(5),
        )
        .unwrap();
        let err = c.get_token(&[VAULT_SCOPE], None).await.unwrap_err();
        assert!(!is_transient(&err));
        assert!(
            error_chain(&err).contains("HTTP 400"),
            "{}",
            error_chain(&err)
        );

        // The App Service form, from the environment.
        let env = Env::from_pairs([
            ("IDENTITY_ENDPOINT", i.identity_endpoint.as_str()),
            ("IDENTITY_HEADER", i.identity_header.as_str()),
        ]);
        let mut req = request(AuthMethod::Auto);
        req.imds_endpoint = Some(closed_endpoint());
        let selected = select(&req, &env, &vault_http(&v), &Limits::default())
            .await
            .unwrap();
        assert_eq!(selected.method, "managed-identity");
        selected
            .credential
            .get_token(&[VAULT_SCOPE], None)
            .await
            .unwrap();
        assert_eq!(v.requests().last().unwrap().path, "/msi/token");
    }

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
        let selected = select(
            &request(AuthMethod::WorkloadIdentity),
            &env,
            &vault_http(&v),
            &Limits::default(),
        )
        .await
        .unwrap();
        let c = selected.credential;
        c.get_token(&[VAULT_SCOPE], None).await.unwrap();
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

    #[tokio::test]
    async fn client_certificate_from_pem_against_testvault() {
        let v = vault(3600);
        let i = v.info().clone();
        for path in [&i.client_certificate_path, &i.client_certificate_pfx_path] {
            let env = Env::from_pairs([
                ("AZURE_TENANT_ID", i.tenant_id.clone()),
                ("AZURE_CLIENT_ID", i.certificate_client_id.clone()),
                ("AZURE_AUTHORITY_HOST", i.authority_host.clone()),
                ("AZURE_CLIENT_CERTIFICATE_PATH", path.display().to_string()),
            ]);
            let mut req = request(AuthMethod::Auto);
            req.imds_endpoint = Some(closed_endpoint());
            let selected = select(&req, &env, &vault_http(&v), &Limits::default())
                .await
                .unwrap();
            assert_eq!(selected.method, "client-certificate");
            selected
                .credential
                .get_token(&[VAULT_SCOPE], None)
                .await
                .unwrap();
        }
        assert_eq!(v.count("Token"), 2);
    }
}
