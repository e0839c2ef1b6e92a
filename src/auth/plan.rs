//! Which methods to try, decided from the command line and an [`Env`] without any I/O but
//! looking for `az` on the given PATH: a [`Spec`] (a method with all its inputs) or the reason
//! it cannot be tried, per step of `--auth auto` (see [`super::AUTO_ORDER`]).

use std::collections::HashMap;
use std::path::PathBuf;

use super::azure_cli::find_on_path;
use super::method::{AUTO_ORDER, AuthMethod};

/// The instance metadata service, unless `--imds-endpoint`/`KVFS_IMDS_ENDPOINT` says otherwise.
pub(crate) const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";

const TENANT: &str = "AZURE_TENANT_ID (or --tenant-id)";
const CLIENT: &str = "AZURE_CLIENT_ID (or --client-id)";

/// The environment variables credentials read. Empty values count as unset.
#[derive(Clone, Debug, Default)]
pub(crate) struct Env(HashMap<String, String>);

impl Env {
    pub(crate) fn from_process() -> Env {
        Env(std::env::vars().collect())
    }

    #[cfg(test)]
    pub(crate) fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        Env(pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect())
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// What the command line says about identity (flags and `-o` already merged; the environment is
/// consulted here, flags win).
#[derive(Clone, Debug)]
pub(crate) struct AuthRequest {
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

/// A secret input: compared in tests, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redacted")
    }
}

/// One method with its inputs present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Spec {
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
    /// The method it is a form of.
    pub(crate) fn method(&self) -> AuthMethod {
        match self {
            Spec::ClientSecret { .. } => AuthMethod::ClientSecret,
            Spec::ClientCertificate { .. } => AuthMethod::ClientCertificate,
            Spec::WorkloadIdentity { .. } => AuthMethod::WorkloadIdentity,
            Spec::AppService { .. } | Spec::Imds { .. } => AuthMethod::ManagedIdentity,
            Spec::AzureCli { .. } => AuthMethod::AzureCli,
        }
    }

    /// How the error and log lines name it (`auto` distinguishes the two managed-identity forms).
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Spec::Imds { .. } => "instance metadata",
            other => other.method().name(),
        }
    }
}

/// One step of the plan: a method to try, or why it cannot be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
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

/// The methods to try, in order, each with its inputs or why it is skipped. Pure: no I/O but
/// looking for `az` on the given PATH.
pub(crate) fn plan(req: &AuthRequest, env: &Env) -> Result<Vec<Step>, String> {
    if req.method != AuthMethod::Auto {
        return match inputs(req.method, req, env) {
            Ok(spec) => Ok(vec![Step::Try(spec)]),
            Err(missing) => Err(format!(
                "--auth {} needs {}",
                req.method,
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
    let mut steps: Vec<Step> = AUTO_ORDER
        .iter()
        .map(|&method| {
            let label = method.name();
            match (method, inputs(method, req, env)) {
                // Only the App Service form here: the metadata service is probed last.
                (_, Ok(Spec::Imds { .. })) => skip(label, vec!["IDENTITY_ENDPOINT"]),
                (_, Ok(spec)) => Step::Try(spec),
                (AuthMethod::AzureCli, Err(_)) => Step::Skip {
                    label,
                    reason: "az not found on PATH".into(),
                },
                (_, Err(missing)) => skip(label, missing),
            }
        })
        .collect();
    steps.push(Step::Try(Spec::Imds {
        endpoint: imds_endpoint(req, env),
        client_id: ids(req, env).client,
    }));
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::testing::request;

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
        assert_eq!(first(2), AuthMethod::ClientSecret);
        assert_eq!(first(3), AuthMethod::ClientCertificate);
        assert_eq!(first(4), AuthMethod::WorkloadIdentity);
        assert_eq!(first(5), AuthMethod::ManagedIdentity);
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
}
