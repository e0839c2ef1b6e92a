//! The operations testvault answers, named as in the Key Vault REST specification, and the routing
//! from method + path to an operation and its parameters.

use serde::{Deserialize, Serialize};

use crate::error::Kind;

macro_rules! ops {
    ($($op:ident => $action:literal, $coll:literal, $perm:literal;)*) => {
        /// One REST operation. The name is the spec's operation id; counters and the request log use it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum Op { $($op,)* }

        impl Op {
            pub fn name(self) -> &'static str {
                match self { $(Op::$op => stringify!($op),)* }
            }

            /// The RBAC data action the operation needs.
            pub fn data_action(self) -> &'static str {
                match self { $(Op::$op => $action,)* }
            }

            /// The access-policy permission it needs: (collection, permission).
            pub fn policy_permission(self) -> (&'static str, &'static str) {
                match self { $(Op::$op => ($coll, $perm),)* }
            }

            pub fn from_name(name: &str) -> Option<Op> {
                match name { $(stringify!($op) => Some(Op::$op),)* _ => None }
            }
        }
    };
}

ops! {
    GetSecret => "Microsoft.KeyVault/vaults/secrets/getSecret/action", "secrets", "get";
    GetSecrets => "Microsoft.KeyVault/vaults/secrets/readMetadata/action", "secrets", "list";
    GetSecretVersions => "Microsoft.KeyVault/vaults/secrets/readMetadata/action", "secrets", "list";
    SetSecret => "Microsoft.KeyVault/vaults/secrets/setSecret/action", "secrets", "set";
    UpdateSecret => "Microsoft.KeyVault/vaults/secrets/update/action", "secrets", "set";
    DeleteSecret => "Microsoft.KeyVault/vaults/secrets/delete", "secrets", "delete";
    GetDeletedSecret => "Microsoft.KeyVault/vaults/deletedSecrets/read", "secrets", "list";
    GetDeletedSecrets => "Microsoft.KeyVault/vaults/deletedSecrets/read", "secrets", "list";
    PurgeDeletedSecret => "Microsoft.KeyVault/vaults/deletedSecrets/delete", "secrets", "purge";
    RecoverDeletedSecret => "Microsoft.KeyVault/vaults/deletedSecrets/recover/action", "secrets", "recover";
    GetKey => "Microsoft.KeyVault/vaults/keys/read", "keys", "get";
    GetKeys => "Microsoft.KeyVault/vaults/keys/read", "keys", "list";
    GetKeyVersions => "Microsoft.KeyVault/vaults/keys/read", "keys", "list";
    CreateKey => "Microsoft.KeyVault/vaults/keys/create/action", "keys", "create";
    ImportKey => "Microsoft.KeyVault/vaults/keys/import/action", "keys", "import";
    UpdateKey => "Microsoft.KeyVault/vaults/keys/write", "keys", "update";
    DeleteKey => "Microsoft.KeyVault/vaults/keys/delete", "keys", "delete";
    Sign => "Microsoft.KeyVault/vaults/keys/sign/action", "keys", "sign";
    GetDeletedKey => "Microsoft.KeyVault/vaults/deletedKeys/read", "keys", "list";
    GetDeletedKeys => "Microsoft.KeyVault/vaults/deletedKeys/read", "keys", "list";
    PurgeDeletedKey => "Microsoft.KeyVault/vaults/deletedKeys/delete", "keys", "purge";
    RecoverDeletedKey => "Microsoft.KeyVault/vaults/deletedKeys/recover/action", "keys", "recover";
    GetCertificate => "Microsoft.KeyVault/vaults/certificates/read", "certificates", "get";
    GetCertificates => "Microsoft.KeyVault/vaults/certificates/read", "certificates", "list";
    GetCertificateVersions => "Microsoft.KeyVault/vaults/certificates/read", "certificates", "list";
    GetCertificatePolicy => "Microsoft.KeyVault/vaults/certificates/read", "certificates", "get";
    GetCertificateOperation => "Microsoft.KeyVault/vaults/certificates/read", "certificates", "get";
    CreateCertificate => "Microsoft.KeyVault/vaults/certificates/create/action", "certificates", "create";
    ImportCertificate => "Microsoft.KeyVault/vaults/certificates/import/action", "certificates", "import";
    UpdateCertificate => "Microsoft.KeyVault/vaults/certificates/update/action", "certificates", "update";
    DeleteCertificate => "Microsoft.KeyVault/vaults/certificates/delete", "certificates", "delete";
    GetDeletedCertificate => "Microsoft.KeyVault/vaults/deletedCertificates/read", "certificates", "list";
    GetDeletedCertificates => "Microsoft.KeyVault/vaults/deletedCertificates/read", "certificates", "list";
    PurgeDeletedCertificate => "Microsoft.KeyVault/vaults/deletedCertificates/delete", "certificates", "purge";
    RecoverDeletedCertificate => "Microsoft.KeyVault/vaults/deletedCertificates/recover/action", "certificates", "recover";
    // Identity endpoints: no vault permission, listed so faults and counters can name them.
    Token => "", "", "";
    ManagedIdentityToken => "", "", "";
    OpenIdConfiguration => "", "", "";
}

impl Op {
    /// The object kind an operation works on (for error wording), if it is a vault operation.
    pub fn kind(self) -> Option<Kind> {
        match self.policy_permission().0 {
            "secrets" => Some(Kind::Secret),
            "keys" => Some(Kind::Key),
            "certificates" => Some(Kind::Certificate),
            _ => None,
        }
    }
}

/// A routed vault request: the operation, the object name and version when the path has them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub op: Op,
    pub name: Option<String>,
    pub version: Option<String>,
}

/// Why a path/method did not route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoRoute {
    NotFound,
    MethodNotAllowed,
}

fn route(op: Op, name: Option<&str>, version: Option<&str>) -> Result<Route, NoRoute> {
    Ok(Route {
        op,
        name: name.map(str::to_string),
        version: version.filter(|v| !v.is_empty()).map(str::to_string),
    })
}

/// Map a vault request to its operation. `path` is the URL path without the query. An empty
/// version segment (`/secrets/x/`) means latest, as the SDKs send it.
pub fn route_vault(method: &str, path: &str) -> Result<Route, NoRoute> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let segments: Vec<&str> = trimmed.split('/').collect();
    let lower: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    let m = method.to_ascii_uppercase();
    let m = m.as_str();
    let collection = lower.first().map(String::as_str).unwrap_or("");
    let name = segments.get(1).copied().filter(|s| !s.is_empty());
    let third = segments.get(2).copied();
    let third_lower = lower.get(2).map(String::as_str);
    let fourth_lower = lower.get(3).map(String::as_str);
    let too_long = |n: usize| segments.len() > n && segments[n..].iter().any(|s| !s.is_empty());
    use Op::*;
    let not_allowed = Err(NoRoute::MethodNotAllowed);
    match collection {
        "secrets" | "keys" | "certificates" => {}
        "deletedsecrets" | "deletedkeys" | "deletedcertificates" => {
            let Some(name) = name else {
                // The collection itself: GET lists the soft-deleted objects.
                if too_long(2) {
                    return Err(NoRoute::NotFound);
                }
                return match (collection, m) {
                    ("deletedsecrets", "GET") => route(GetDeletedSecrets, None, None),
                    ("deletedkeys", "GET") => route(GetDeletedKeys, None, None),
                    ("deletedcertificates", "GET") => route(GetDeletedCertificates, None, None),
                    _ => not_allowed,
                };
            };
            let (get, purge, recover) = match collection {
                "deletedsecrets" => (GetDeletedSecret, PurgeDeletedSecret, RecoverDeletedSecret),
                "deletedkeys" => (GetDeletedKey, PurgeDeletedKey, RecoverDeletedKey),
                _ => (
                    GetDeletedCertificate,
                    PurgeDeletedCertificate,
                    RecoverDeletedCertificate,
                ),
            };
            return match (third_lower, m) {
                (None | Some(""), "GET") if !too_long(3) => route(get, Some(name), None),
                (None | Some(""), "DELETE") if !too_long(3) => route(purge, Some(name), None),
                (Some("recover"), "POST") if !too_long(3) => route(recover, Some(name), None),
                (None | Some("") | Some("recover"), _) => not_allowed,
                _ => Err(NoRoute::NotFound),
            };
        }
        _ => return Err(NoRoute::NotFound),
    }
    let Some(name) = name else {
        if segments.len() > 2 || segments.get(1).is_some_and(|s| !s.is_empty()) {
            return Err(NoRoute::NotFound);
        }
        return match (collection, m) {
            ("secrets", "GET") => route(GetSecrets, None, None),
            ("keys", "GET") => route(GetKeys, None, None),
            ("certificates", "GET") => route(GetCertificates, None, None),
            _ => not_allowed,
        };
    };
    if segments.len() > 2 && segments[1].is_empty() {
        return Err(NoRoute::NotFound);
    }
    // Second-level keywords come before the "it is a version" reading: versions are 32 hex digits.
    match (collection, third_lower, m) {
        (_, Some("versions"), "GET") if !too_long(3) => {
            let op = match collection {
                "secrets" => GetSecretVersions,
                "keys" => GetKeyVersions,
                _ => GetCertificateVersions,
            };
            return route(op, Some(name), None);
        }
        ("keys", Some("create"), "POST") if !too_long(3) => {
            return route(CreateKey, Some(name), None);
        }
        ("certificates", Some("create"), "POST") if !too_long(3) => {
            return route(CreateCertificate, Some(name), None);
        }
        ("certificates", Some("import"), "POST") if !too_long(3) => {
            return route(ImportCertificate, Some(name), None);
        }
        ("certificates", Some("pending"), "GET") if !too_long(3) => {
            return route(GetCertificateOperation, Some(name), None);
        }
        ("certificates", Some("policy"), "GET") if !too_long(3) => {
            return route(GetCertificatePolicy, Some(name), None);
        }
        ("keys", Some(_), "POST") if fourth_lower == Some("sign") && !too_long(4) => {
            return route(Sign, Some(name), third);
        }
        _ => {}
    }
    if too_long(3) {
        return Err(NoRoute::NotFound);
    }
    let version = third;
    let has_version = version.is_some_and(|v| !v.is_empty());
    match (collection, m) {
        ("secrets", "GET") => route(GetSecret, Some(name), version),
        ("secrets", "PUT") if !has_version => route(SetSecret, Some(name), None),
        ("secrets", "PATCH") => route(UpdateSecret, Some(name), version),
        ("secrets", "DELETE") if !has_version => route(DeleteSecret, Some(name), None),
        ("keys", "GET") => route(GetKey, Some(name), version),
        ("keys", "PUT") if !has_version => route(ImportKey, Some(name), None),
        ("keys", "PATCH") => route(UpdateKey, Some(name), version),
        ("keys", "DELETE") if !has_version => route(DeleteKey, Some(name), None),
        ("certificates", "GET") => route(GetCertificate, Some(name), version),
        ("certificates", "PATCH") => route(UpdateCertificate, Some(name), version),
        ("certificates", "DELETE") if !has_version => route(DeleteCertificate, Some(name), None),
        _ => not_allowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: &str, path: &str) -> Op {
        route_vault(method, path).unwrap().op
    }

    #[test]
    fn routes_latest_with_and_without_trailing_slash() {
        let a = route_vault("GET", "/secrets/db-password").unwrap();
        let b = route_vault("GET", "/secrets/db-password/").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.op, Op::GetSecret);
        assert_eq!(a.version, None);
        let c = route_vault("GET", "/Secrets/x/0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(
            c.version.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
    }

    #[test]
    fn routes_every_operation() {
        assert_eq!(op("GET", "/secrets"), Op::GetSecrets);
        assert_eq!(op("GET", "/secrets/"), Op::GetSecrets);
        assert_eq!(op("GET", "/secrets/a/versions"), Op::GetSecretVersions);
        assert_eq!(op("PUT", "/secrets/a"), Op::SetSecret);
        assert_eq!(op("PATCH", "/secrets/a/"), Op::UpdateSecret);
        assert_eq!(op("DELETE", "/secrets/a"), Op::DeleteSecret);
        assert_eq!(op("GET", "/deletedsecrets/a"), Op::GetDeletedSecret);
        assert_eq!(op("GET", "/deletedsecrets"), Op::GetDeletedSecrets);
        assert_eq!(op("GET", "/deletedkeys/"), Op::GetDeletedKeys);
        assert_eq!(
            op("GET", "/deletedcertificates"),
            Op::GetDeletedCertificates
        );
        assert_eq!(op("DELETE", "/deletedsecrets/a"), Op::PurgeDeletedSecret);
        assert_eq!(
            op("POST", "/deletedsecrets/a/recover"),
            Op::RecoverDeletedSecret
        );
        assert_eq!(op("POST", "/keys/k/create"), Op::CreateKey);
        assert_eq!(op("PUT", "/keys/k"), Op::ImportKey);
        assert_eq!(op("POST", "/keys/k/abc/sign"), Op::Sign);
        assert_eq!(op("POST", "/keys/k//sign"), Op::Sign);
        assert_eq!(op("GET", "/keys"), Op::GetKeys);
        assert_eq!(op("POST", "/certificates/c/create"), Op::CreateCertificate);
        assert_eq!(op("POST", "/certificates/c/import"), Op::ImportCertificate);
        assert_eq!(
            op("GET", "/certificates/c/pending"),
            Op::GetCertificateOperation
        );
        assert_eq!(
            op("GET", "/certificates/c/policy"),
            Op::GetCertificatePolicy
        );
        assert_eq!(
            op("GET", "/certificates/c/versions"),
            Op::GetCertificateVersions
        );
        assert_eq!(op("DELETE", "/certificates/c"), Op::DeleteCertificate);
        // Keywords are only keywords in the third position: a secret may be named "versions".
        assert_eq!(op("GET", "/secrets/versions"), Op::GetSecret);
    }

    #[test]
    fn rejects_what_is_not_an_operation() {
        assert_eq!(route_vault("GET", "/nothing"), Err(NoRoute::NotFound));
        assert_eq!(route_vault("GET", "/secrets/a/b/c"), Err(NoRoute::NotFound));
        assert_eq!(
            route_vault("POST", "/secrets/a"),
            Err(NoRoute::MethodNotAllowed)
        );
        assert_eq!(
            route_vault("PUT", "/secrets"),
            Err(NoRoute::MethodNotAllowed)
        );
        assert_eq!(Op::from_name("GetSecret"), Some(Op::GetSecret));
        assert_eq!(Op::from_name("Nope"), None);
    }
}
