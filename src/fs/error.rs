//! Filesystem errors and the errno each one becomes.

use crate::vault::VaultError;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    /// No such object, an invalid name, a disabled or certificate-backed object.
    #[error("no such file or directory")]
    NotFound,
    /// 401/403 from the vault (the cache has logged what is missing).
    #[error("permission denied")]
    AccessDenied,
    /// The vault failed and there is no value to serve.
    #[error("input/output error")]
    Io,
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
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::AccessDenied => libc::EACCES,
            FsError::Io => libc::EIO,
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
    pub fn errno_name(&self) -> &'static str {
        crate::metrics::errno_name(self.errno())
    }
}

impl From<VaultError> for FsError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::NotFound | VaultError::Disabled => FsError::NotFound,
            VaultError::Unauthorized(_) | VaultError::Forbidden(_) => FsError::AccessDenied,
            VaultError::Throttled | VaultError::Unavailable(_) | VaultError::Unexpected(_) => {
                FsError::Io
            }
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
}
