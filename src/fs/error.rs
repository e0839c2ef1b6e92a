//! Filesystem errors, the errno each one becomes, and the cause an `EIO` or `EACCES` carries.

use std::sync::Arc;

use crate::render::RenderError;
use crate::vault::VaultError;

/// Why a request failed with `EIO` or `EACCES`: what the layer below said. Shared, because one
/// cached failure is handed to every reader that meets it. Its text is the lower layer's, which
/// never holds a value: vault errors describe secret bundles by position only, and render errors
/// describe what failed, never the material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Cause {
    /// The vault refused or failed the request.
    #[error(transparent)]
    Vault(Arc<VaultError>),
    /// The vault's key or certificate material does not render.
    #[error(transparent)]
    Render(Arc<RenderError>),
    /// A state of kvfs's own that should not occur; naming it beats a bare `EIO`.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FsError {
    /// No such object, an invalid name, a disabled or certificate-backed object.
    #[error("no such file or directory")]
    NotFound,
    /// 401/403 from the vault.
    #[error("permission denied")]
    AccessDenied(#[source] Cause),
    /// The vault failed and there is no value to serve, or its material does not render.
    #[error("input/output error")]
    Io(#[source] Cause),
    /// Every mutation of a read-only tree.
    #[error("read-only file system")]
    ReadOnly,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    /// An extended attribute the object does not have.
    #[error("no such attribute")]
    NoAttribute,
    /// An extended-attribute namespace kvfs has nothing in (`security.*`, `system.*`, …).
    /// Saying so, rather than "no such attribute", lets `ls -l` stop asking every file for
    /// SELinux labels and ACLs once it has seen it for the filesystem.
    #[error("operation not supported")]
    NotSupported,
    /// A name longer than any vault object's can be (Key Vault allows 127 bytes).
    #[error("file name too long")]
    NameTooLong,
    /// An unknown inode or file handle (the kernel asked about something forgotten).
    #[error("bad file handle")]
    BadHandle,
}

impl FsError {
    pub(crate) fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::AccessDenied(_) => libc::EACCES,
            FsError::Io(_) => libc::EIO,
            FsError::ReadOnly => libc::EROFS,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NoAttribute => libc::ENODATA,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::BadHandle => libc::EBADF,
        }
    }

    /// The errno's symbolic name (`EIO`), for log fields an operator filters on: the same
    /// names the metrics' `errno` label uses.
    pub(crate) fn errno_name(&self) -> &'static str {
        crate::metrics::errno_name(self.errno())
    }

    /// What went wrong below the filesystem, for the failures that have a cause (`EIO`,
    /// `EACCES`). The other errors are answers about the tree itself (no such name, read-only)
    /// and have none.
    pub(crate) fn cause(&self) -> Option<&Cause> {
        match self {
            FsError::AccessDenied(cause) | FsError::Io(cause) => Some(cause),
            _ => None,
        }
    }
}

impl From<VaultError> for FsError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::NotFound | VaultError::Disabled => FsError::NotFound,
            VaultError::Unauthorized(_) | VaultError::Forbidden(_) => {
                FsError::AccessDenied(Cause::Vault(Arc::new(e)))
            }
            VaultError::Throttled | VaultError::Unavailable(_) | VaultError::Unexpected(_) => {
                FsError::Io(Cause::Vault(Arc::new(e)))
            }
        }
    }
}

/// A key type kvfs does not render is not there (it is not listed either); material that does
/// not parse is an `EIO` that says why.
impl From<RenderError> for FsError {
    fn from(e: RenderError) -> Self {
        match e {
            RenderError::Unsupported(_) => FsError::NotFound,
            RenderError::Malformed(_) => FsError::Io(Cause::Render(Arc::new(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_errors_map_to_the_errno_of_semantics_md() {
        assert_eq!(FsError::from(VaultError::NotFound).errno(), libc::ENOENT);
        assert_eq!(FsError::from(VaultError::Disabled).errno(), libc::ENOENT);
        assert_eq!(
            FsError::from(VaultError::Forbidden("x".into())).errno(),
            libc::EACCES
        );
        assert_eq!(
            FsError::from(VaultError::Unauthorized("x".into())).errno(),
            libc::EACCES
        );
        assert_eq!(FsError::from(VaultError::Throttled).errno(), libc::EIO);
        assert_eq!(
            FsError::from(VaultError::Unavailable("x".into())).errno(),
            libc::EIO
        );
        assert_eq!(FsError::ReadOnly.errno(), libc::EROFS);
        assert_eq!(FsError::NameTooLong.errno(), libc::ENAMETOOLONG);
    }

    #[test]
    fn failures_keep_the_vaults_error_as_their_cause() {
        let refused = VaultError::Forbidden("lacks Key Vault Secrets User".into());
        let e = FsError::from(refused.clone());
        assert_eq!(e.cause(), Some(&Cause::Vault(Arc::new(refused.clone()))));
        assert_eq!(e.errno_name(), "EACCES");
        // The cause is the error's source, and the text an operator reads.
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(source.to_string(), refused.to_string());
        assert_eq!(
            e.to_string(),
            "permission denied",
            "the errno's text is unchanged"
        );

        let failing = VaultError::Unavailable("GetSecret: HTTP 503 ServiceUnavailable".into());
        let e = FsError::from(failing.clone());
        assert_eq!(e.errno_name(), "EIO");
        assert_eq!(
            e.cause().map(ToString::to_string),
            Some(failing.to_string())
        );
        // A clone shares the cause rather than copying its text.
        let (Some(Cause::Vault(a)), Some(Cause::Vault(b))) =
            (e.cause(), e.clone().cause().cloned())
        else {
            panic!("a vault cause");
        };
        assert!(Arc::ptr_eq(a, &b));
    }

    #[test]
    fn answers_about_the_tree_have_no_cause() {
        for e in [
            FsError::from(VaultError::NotFound),
            FsError::from(VaultError::Disabled),
            FsError::from(RenderError::Unsupported("oct".into())),
            FsError::ReadOnly,
            FsError::NoAttribute,
            FsError::BadHandle,
        ] {
            assert_eq!(e.cause(), None, "{e:?}");
        }
    }

    #[test]
    fn malformed_material_is_an_io_error_that_says_why() {
        let e = FsError::from(RenderError::Malformed("the PFX does not parse".into()));
        assert_eq!(e.errno(), libc::EIO);
        assert_eq!(
            e.cause().map(ToString::to_string).as_deref(),
            Some("malformed material: the PFX does not parse")
        );
    }
}
