//! Who may call the vault: the tenant's app registrations, managed identities and users, and what
//! their role assignments (RBAC) or access policies allow.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::{Authority, CertRequest, KeyMaterial, KeySpec};
use crate::error::VaultError;
use crate::ops::Op;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    /// An app registration (service principal): client secret, certificate or federated credential.
    #[default]
    App,
    /// A system-assigned managed identity (the one used when no id is given).
    SystemAssigned,
    /// A user-assigned managed identity, chosen by client id, object id or resource id.
    UserAssigned,
    /// A signed-in user (what `az login` gives).
    User,
}

/// A federated identity credential: which external tokens the app trusts (workload identity).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Federation {
    pub issuer: String,
    pub subject: String,
    pub audience: String,
}

/// A certificate registered on an app: its thumbprints (base64url SHA-1 and SHA-256 of the DER,
/// as JWT `x5t` / `x5t#S256` carry them) and its public key.
#[derive(Clone, Debug)]
pub struct RegisteredCertificate {
    pub x5t: String,
    pub x5t_s256: String,
    pub public: openssl::pkey::PKey<openssl::pkey::Public>,
}

/// Access-policy permissions (the vault's older permission model).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessPolicy {
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub certificates: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    pub kind: IdentityKind,
    pub tenant_id: String,
    pub client_id: String,
    pub object_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// base64url SHA-1 thumbprints of the certificates registered for the app.
    #[serde(default)]
    pub certificate_thumbprints: Vec<String>,
    #[serde(skip)]
    pub certificate_keys: Vec<RegisteredCertificate>,
    #[serde(default)]
    pub federations: Vec<Federation>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub access_policy: AccessPolicy,
}

/// Data actions a built-in Key Vault role grants. `*` at the end matches any suffix.
fn role_actions(role: &str) -> &'static [&'static str] {
    match role {
        "Key Vault Administrator" => &["Microsoft.KeyVault/vaults/*"],
        "Key Vault Secrets Officer" => &[
            "Microsoft.KeyVault/vaults/secrets/*",
            "Microsoft.KeyVault/vaults/deletedSecrets/*",
        ],
        "Key Vault Secrets User" => &[
            "Microsoft.KeyVault/vaults/secrets/getSecret/action",
            "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
        ],
        "Key Vault Certificates Officer" => &[
            "Microsoft.KeyVault/vaults/certificates/*",
            "Microsoft.KeyVault/vaults/deletedCertificates/*",
            "Microsoft.KeyVault/vaults/secrets/getSecret/action",
            "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
            "Microsoft.KeyVault/vaults/keys/read",
        ],
        "Key Vault Certificate User" => &[
            "Microsoft.KeyVault/vaults/certificates/read",
            "Microsoft.KeyVault/vaults/secrets/getSecret/action",
            "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
            "Microsoft.KeyVault/vaults/keys/read",
        ],
        "Key Vault Crypto Officer" => &[
            "Microsoft.KeyVault/vaults/keys/*",
            "Microsoft.KeyVault/vaults/deletedKeys/*",
        ],
        "Key Vault Crypto User" => &[
            "Microsoft.KeyVault/vaults/keys/read",
            "Microsoft.KeyVault/vaults/keys/sign/action",
            "Microsoft.KeyVault/vaults/keys/verify/action",
        ],
        "Key Vault Reader" => &[
            "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
            "Microsoft.KeyVault/vaults/keys/read",
            "Microsoft.KeyVault/vaults/certificates/read",
        ],
        _ => &[],
    }
}

pub const KNOWN_ROLES: &[&str] = &[
    "Key Vault Administrator",
    "Key Vault Secrets Officer",
    "Key Vault Secrets User",
    "Key Vault Certificates Officer",
    "Key Vault Certificate User",
    "Key Vault Crypto Officer",
    "Key Vault Crypto User",
    "Key Vault Reader",
];

fn action_matches(pattern: &str, action: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => action
            .to_ascii_lowercase()
            .starts_with(&prefix.to_ascii_lowercase()),
        None => pattern.eq_ignore_ascii_case(action),
    }
}

/// How the vault decides: Azure RBAC (default for new vaults) or access policies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PermissionModel {
    #[default]
    Rbac,
    AccessPolicy,
}

/// Who the caller is, as the vault sees it in the token.
#[derive(Clone, Debug)]
pub struct Caller {
    pub identity: String,
    pub client_id: String,
    pub object_id: String,
    pub tenant_id: String,
}

impl Caller {
    fn describe(&self) -> String {
        format!(
            "appid={};oid={};iss=https://sts.windows.net/{}/",
            self.client_id, self.object_id, self.tenant_id
        )
    }
}

/// Where the vault "lives", for messages that name it.
pub struct VaultPlace<'a> {
    pub vault_name: &'a str,
    pub location: &'a str,
}

impl Identity {
    /// RBAC or access-policy check for one operation on one object; the 403 says exactly what is missing.
    pub fn authorize(
        &self,
        model: PermissionModel,
        op: Op,
        object_path: &str,
        caller: &Caller,
        place: &VaultPlace<'_>,
    ) -> Result<(), VaultError> {
        let vault = format!("{};location={}", place.vault_name, place.location);
        match model {
            PermissionModel::Rbac => {
                let action = op.data_action();
                let granted = self
                    .roles
                    .iter()
                    .flat_map(|r| role_actions(r).iter())
                    .any(|p| action_matches(p, action));
                if granted {
                    return Ok(());
                }
                Err(VaultError::new(
                    403,
                    "Forbidden",
                    format!(
                        "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: {}\r\nAction: '{action}'\r\nResource: '/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/testvault-rg/providers/microsoft.keyvault/vaults/{}{}'\r\nAssignment: (not found)\r\nDenyAssignmentId: null\r\nDecisionReason: 'DeniedWithNoValidRBAC' \r\nVault: {vault}\r\n",
                        caller.describe(),
                        place.vault_name,
                        object_path.to_ascii_lowercase(),
                    ),
                )
                .with_inner("ForbiddenByRbac"))
            }
            PermissionModel::AccessPolicy => {
                let (collection, permission) = op.policy_permission();
                let list = match collection {
                    "secrets" => &self.access_policy.secrets,
                    "keys" => &self.access_policy.keys,
                    _ => &self.access_policy.certificates,
                };
                if list
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(permission) || p == "all")
                {
                    return Ok(());
                }
                Err(VaultError::new(
                    403,
                    "Forbidden",
                    format!(
                        "The user, group or application '{}' does not have {collection} {permission} permission on key vault '{vault}'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287",
                        caller.describe()
                    ),
                )
                .with_inner("AccessDenied"))
            }
        }
    }
}

/// Files and values a test needs to authenticate as the built-in identities.
#[derive(Clone, Debug, Default)]
pub struct ClientCertificate {
    /// Private key then certificate, PEM.
    pub pem: String,
    /// PKCS#12 with an empty password (what `azure_identity` accepts).
    pub pfx_der: Vec<u8>,
}

/// Everything the tenant knows about identities.
#[derive(Clone, Debug)]
pub struct Directory {
    pub tenant_id: String,
    /// A second tenant, so a token from the wrong tenant can be tested.
    pub other_tenant_id: String,
    pub identities: BTreeMap<String, Identity>,
    pub client_certificate: ClientCertificate,
    /// Signs federated (service account) tokens; its issuer is trusted by the `workload` app.
    pub oidc_key: KeyMaterial,
    pub oidc_issuer: String,
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn all_access() -> AccessPolicy {
    let all = vec!["all".to_string()];
    AccessPolicy {
        secrets: all.clone(),
        keys: all.clone(),
        certificates: all,
    }
}

/// Input for adding an identity at run time.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct IdentitySpec {
    pub name: String,
    #[serde(default)]
    pub kind: IdentityKind,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    #[serde(default)]
    pub access_policy: Option<AccessPolicy>,
}

impl Directory {
    /// The built-in identities, each a Key Vault Administrator:
    /// `app` (client secret), `app-cert` (client certificate), `workload` (federated credential),
    /// `system-mi` and `user-mi` (managed identities), `cli-user` (a user for `az`), and
    /// `foreign-app` in another tenant.
    pub fn builtin(tenant_id: Option<String>, ca: &Authority) -> Result<Directory, String> {
        let tenant_id = tenant_id.unwrap_or_else(uuid);
        let other_tenant_id = uuid();
        let mut keys = crate::crypto::generate_many(&[KeySpec::Rsa(2048), KeySpec::Rsa(2048)])
            .map_err(|e| e.to_string())?;
        let (cert_key, oidc_key) = (keys.pop().expect("two keys"), keys.pop().expect("two keys"));
        let oidc_issuer = "https://oidc.testvault.localhost/cluster".to_string();

        let cert = ca
            .issue_leaf(
                &cert_key,
                &CertRequest {
                    subject: "CN=kvfs-test-client".into(),
                    ..Default::default()
                },
                &[],
                365,
            )
            .map_err(|e| e.to_string())?;
        let der = cert.to_der().map_err(|e| e.to_string())?;
        let registered = RegisteredCertificate {
            x5t: crate::crypto::sha1_b64url(&der),
            x5t_s256: crate::crypto::sha256_b64url(&der),
            public: cert.public_key().map_err(|e| e.to_string())?,
        };
        let pfx = openssl::pkcs12::Pkcs12::builder()
            .name("kvfs-test-client")
            .pkey(cert_key.pkey())
            .cert(&cert)
            .build2("")
            .and_then(|p| p.to_der())
            .map_err(|e| e.to_string())?;
        let client_certificate = ClientCertificate {
            pem: format!(
                "{}{}",
                cert_key.private_pkcs8_pem(),
                crate::crypto::certs_pem(std::slice::from_ref(&cert))
            ),
            pfx_der: pfx,
        };

        let admin = vec!["Key Vault Administrator".to_string()];
        let make = |name: &str, kind: IdentityKind, tenant: &str| Identity {
            name: name.to_string(),
            kind,
            tenant_id: tenant.to_string(),
            client_id: uuid(),
            object_id: uuid(),
            resource_id: None,
            client_secret: None,
            certificate_thumbprints: Vec::new(),
            certificate_keys: Vec::new(),
            federations: Vec::new(),
            roles: admin.clone(),
            access_policy: all_access(),
        };
        let mut ids = BTreeMap::new();
        let mut app = make("app", IdentityKind::App, &tenant_id);
        app.client_secret = Some(format!("tv~{}", uuid().replace('-', "")));
        ids.insert(app.name.clone(), app);
        let mut app_cert = make("app-cert", IdentityKind::App, &tenant_id);
        app_cert.certificate_thumbprints = vec![registered.x5t.clone()];
        app_cert.certificate_keys = vec![registered];
        ids.insert(app_cert.name.clone(), app_cert);
        let mut workload = make("workload", IdentityKind::App, &tenant_id);
        workload.federations = vec![Federation {
            issuer: oidc_issuer.clone(),
            subject: "system:serviceaccount:kvfs-system:kvfs".into(),
            audience: "api://AzureADTokenExchange".into(),
        }];
        ids.insert(workload.name.clone(), workload);
        ids.insert(
            "system-mi".into(),
            make("system-mi", IdentityKind::SystemAssigned, &tenant_id),
        );
        let mut user_mi = make("user-mi", IdentityKind::UserAssigned, &tenant_id);
        user_mi.resource_id = Some(
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/testvault-rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kvfs-user-mi".into(),
        );
        ids.insert(user_mi.name.clone(), user_mi);
        ids.insert(
            "cli-user".into(),
            make("cli-user", IdentityKind::User, &tenant_id),
        );
        let mut foreign = make("foreign-app", IdentityKind::App, &other_tenant_id);
        foreign.client_secret = Some(format!("tv~{}", uuid().replace('-', "")));
        ids.insert(foreign.name.clone(), foreign);

        Ok(Directory {
            tenant_id,
            other_tenant_id,
            identities: ids,
            client_certificate,
            oidc_key,
            oidc_issuer,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Identity> {
        self.identities.get(name)
    }

    /// Look an identity up by client id (case-insensitive, as GUIDs are).
    pub fn by_client_id(&self, client_id: &str) -> Option<&Identity> {
        self.identities
            .values()
            .find(|i| i.client_id.eq_ignore_ascii_case(client_id))
    }

    /// A name or a client id.
    pub fn find(&self, name_or_client_id: &str) -> Option<&Identity> {
        self.get(name_or_client_id)
            .or_else(|| self.by_client_id(name_or_client_id))
    }

    pub fn tenant_known(&self, tenant: &str) -> bool {
        tenant.eq_ignore_ascii_case(&self.tenant_id)
            || tenant.eq_ignore_ascii_case(&self.other_tenant_id)
    }

    /// Add (or replace) an identity; unknown role names are refused so a typo cannot pass silently.
    pub fn add(&mut self, spec: IdentitySpec) -> Result<Identity, String> {
        if spec.name.is_empty() {
            return Err("identity name must not be empty".into());
        }
        if let Some(roles) = &spec.roles
            && let Some(bad) = roles.iter().find(|r| !KNOWN_ROLES.contains(&r.as_str()))
        {
            return Err(format!(
                "unknown role {bad:?}; known roles: {}",
                KNOWN_ROLES.join(", ")
            ));
        }
        let client_secret = match spec.kind {
            IdentityKind::App => Some(
                spec.client_secret
                    .unwrap_or_else(|| format!("tv~{}", uuid().replace('-', ""))),
            ),
            _ => None,
        };
        let identity = Identity {
            name: spec.name.clone(),
            kind: spec.kind,
            tenant_id: spec.tenant_id.unwrap_or_else(|| self.tenant_id.clone()),
            client_id: spec.client_id.unwrap_or_else(uuid),
            object_id: uuid(),
            resource_id: None,
            client_secret,
            certificate_thumbprints: Vec::new(),
            certificate_keys: Vec::new(),
            federations: Vec::new(),
            roles: spec.roles.unwrap_or_default(),
            access_policy: spec.access_policy.unwrap_or_default(),
        };
        self.identities.insert(spec.name, identity.clone());
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            identity: "x".into(),
            client_id: "c".into(),
            object_id: "o".into(),
            tenant_id: "t".into(),
        }
    }

    fn identity(roles: &[&str], policy: AccessPolicy) -> Identity {
        Identity {
            name: "x".into(),
            kind: IdentityKind::App,
            tenant_id: "t".into(),
            client_id: "c".into(),
            object_id: "o".into(),
            resource_id: None,
            client_secret: None,
            certificate_thumbprints: vec![],
            certificate_keys: vec![],
            federations: vec![],
            roles: roles.iter().map(|s| s.to_string()).collect(),
            access_policy: policy,
        }
    }

    const PLACE: VaultPlace<'static> = VaultPlace {
        vault_name: "testvault",
        location: "local",
    };

    #[test]
    fn secrets_user_reads_secrets_but_not_keys() {
        let id = identity(&["Key Vault Secrets User"], AccessPolicy::default());
        let c = caller();
        assert!(
            id.authorize(
                PermissionModel::Rbac,
                Op::GetSecret,
                "/secrets/a",
                &c,
                &PLACE
            )
            .is_ok()
        );
        assert!(
            id.authorize(
                PermissionModel::Rbac,
                Op::GetSecrets,
                "/secrets",
                &c,
                &PLACE
            )
            .is_ok()
        );
        let e = id
            .authorize(PermissionModel::Rbac, Op::GetKey, "/keys/k", &c, &PLACE)
            .unwrap_err();
        assert_eq!(e.status, 403);
        assert_eq!(e.inner.as_deref(), Some("ForbiddenByRbac"));
        assert!(
            e.message
                .contains("Action: 'Microsoft.KeyVault/vaults/keys/read'")
        );
        assert!(
            id.authorize(
                PermissionModel::Rbac,
                Op::SetSecret,
                "/secrets/a",
                &c,
                &PLACE
            )
            .is_err()
        );
    }

    #[test]
    fn access_policy_names_the_missing_permission() {
        let id = identity(
            &[],
            AccessPolicy {
                secrets: vec!["list".into()],
                ..Default::default()
            },
        );
        let c = caller();
        let e = id
            .authorize(
                PermissionModel::AccessPolicy,
                Op::GetSecret,
                "/secrets/a",
                &c,
                &PLACE,
            )
            .unwrap_err();
        assert_eq!(e.inner.as_deref(), Some("AccessDenied"));
        assert!(e.message.contains(
            "does not have secrets get permission on key vault 'testvault;location=local'"
        ));
        assert!(
            id.authorize(
                PermissionModel::AccessPolicy,
                Op::GetSecrets,
                "/secrets",
                &c,
                &PLACE
            )
            .is_ok()
        );
    }
}
