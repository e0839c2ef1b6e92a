//! The Key Vault error envelope and the errors the data plane answers with.
//!
//! Messages follow the real service word for word where a recording or a public issue shows them
//! (see `tests/recordings/` at the top of the repository), because clients and humans grep for
//! them.

use serde_json::{Value, json};

/// The three object collections; they share most behaviour and differ in wording.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Secret,
    Key,
    Certificate,
}

impl Kind {
    /// Lower-case word used in messages ("A secret with …").
    pub fn word(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Key => "key",
            Kind::Certificate => "certificate",
        }
    }

    /// Capitalised word used in error codes ("SecretNotFound").
    pub fn title(self) -> &'static str {
        match self {
            Kind::Secret => "Secret",
            Kind::Key => "Key",
            Kind::Certificate => "Certificate",
        }
    }

    /// Path segment of the collection (`/secrets`, `/keys`, `/certificates`).
    pub fn collection(self) -> &'static str {
        match self {
            Kind::Secret => "secrets",
            Kind::Key => "keys",
            Kind::Certificate => "certificates",
        }
    }

    /// Path segment of the soft-deleted collection.
    pub fn deleted_collection(self) -> &'static str {
        match self {
            Kind::Secret => "deletedsecrets",
            Kind::Key => "deletedkeys",
            Kind::Certificate => "deletedcertificates",
        }
    }
}

/// An error as the vault puts it on the wire: status, `error.code`, message, optional `innererror.code`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub inner: Option<String>,
}

impl VaultError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        VaultError {
            status,
            code: code.to_string(),
            message: message.into(),
            inner: None,
        }
    }

    pub fn with_inner(mut self, inner: &str) -> Self {
        self.inner = Some(inner.to_string());
        self
    }

    pub fn bad_parameter(message: impl Into<String>) -> Self {
        Self::new(400, "BadParameter", message)
    }

    /// 404 with the exact wording of the service; `what` is `name` or `name/version`.
    pub fn not_found(kind: Kind, what: &str) -> Self {
        Self::new(
            404,
            &format!("{}NotFound", kind.title()),
            format!(
                "A {} with (name/id) {what} was not found in this key vault. If you recently deleted this {} you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182",
                kind.word(),
                kind.word()
            ),
        )
    }

    pub fn deleted_not_found(kind: Kind, name: &str) -> Self {
        Self::new(
            404,
            &format!("{}NotFound", kind.title()),
            format!("Deleted {} not found: {name}", kind.title()),
        )
    }

    pub fn secret_disabled() -> Self {
        Self::new(
            403,
            "Forbidden",
            "Operation get is not allowed on a disabled secret.",
        )
        .with_inner("SecretDisabled")
    }

    pub fn key_disabled(operation: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!("Operation {operation} is not allowed on a disabled key."),
        )
        .with_inner("KeyDisabled")
    }

    /// Writes aimed at the key or secret that backs a certificate go through the certificate.
    pub fn managed_object(kind: Kind, operation: &str) -> Self {
        Self::new(
            403,
            "Forbidden",
            format!(
                "Operation {operation} is not allowed on a managed {}. Use the certificate instead.",
                kind.word()
            ),
        )
    }

    pub fn deleted_but_recoverable(kind: Kind, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "{} {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the {} can be recovered or purged.",
                kind.title(),
                kind.word()
            ),
        )
        .with_inner("ObjectIsDeletedButRecoverable")
    }

    pub fn throttled() -> Self {
        Self::new(
            429,
            "Throttled",
            "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached",
        )
    }

    pub fn server_error(status: u16) -> Self {
        match status {
            503 => Self::new(
                503,
                "ServiceUnavailable",
                "The service is temporarily unavailable. Please retry later.",
            ),
            _ => Self::new(
                status,
                "InternalServerError",
                "An unexpected error occurred while processing the request.",
            ),
        }
    }

    pub fn unauthorized(message: &str) -> Self {
        Self::new(401, "Unauthorized", message)
    }

    /// The `{"error": {...}}` envelope.
    pub fn body(&self) -> Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(inner) = &self.inner {
            error["innererror"] = json!({ "code": inner });
        }
        json!({ "error": error })
    }
}

impl std::fmt::Display for VaultError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for VaultError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_secret_envelope_matches_the_recording() {
        let body = VaultError::secret_disabled().body();
        assert_eq!(
            body.to_string(),
            r#"{"error":{"code":"Forbidden","message":"Operation get is not allowed on a disabled secret.","innererror":{"code":"SecretDisabled"}}}"#
        );
    }

    #[test]
    fn not_found_names_the_version_when_given() {
        let e = VaultError::not_found(Kind::Secret, "somesecret/0000");
        assert_eq!(e.status, 404);
        assert_eq!(e.code, "SecretNotFound");
        assert!(
            e.message
                .starts_with("A secret with (name/id) somesecret/0000 was not found")
        );
        assert!(e.body()["error"].get("innererror").is_none());
    }
}
