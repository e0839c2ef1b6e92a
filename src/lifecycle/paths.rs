//! Where a mount's control socket lives by default: one per mountpoint, named after it, so that a
//! second `kvfs mount` for the same directory finds the first without being told.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Longest socket path we make (`sun_path` holds 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 100;

/// `path` made absolute without touching the filesystem at it (a dead FUSE mount hangs a stat):
/// joined to the current directory, `.` and `..` resolved lexically, the parent directory's own
/// symlinks resolved when it can be read.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            _ => {}
        }
    }
    match (out.parent(), out.file_name()) {
        (Some(parent), Some(name)) => match parent.canonicalize() {
            Ok(parent) => parent.join(name),
            Err(_) => out,
        },
        _ => out,
    }
}

/// systemd's path escaping (`systemd-escape --path`): `/var/lib/kvfs/my-vault` becomes
/// `var-lib-kvfs-my\x2dvault`, so distinct paths give distinct names.
pub(crate) fn escape(path: &Path) -> String {
    let text = path.as_os_str().as_bytes();
    let trimmed = text.strip_prefix(b"/").unwrap_or(text);
    let trimmed = trimmed.strip_suffix(b"/").unwrap_or(trimmed);
    if trimmed.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, &b) in trimmed.iter().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The default control socket of `mountpoint` (absolute): under `/run/kvfs` for root, else
/// under `$XDG_RUNTIME_DIR/kvfs` (or `/tmp/kvfs-<uid>`). Names too long for a socket path are
/// replaced by a digest of the mountpoint.
pub(crate) fn control_socket(mountpoint: &Path, euid: u32, runtime_dir: Option<&OsStr>) -> PathBuf {
    let dir = if euid == 0 {
        PathBuf::from("/run/kvfs")
    } else {
        match runtime_dir {
            Some(d) if !d.is_empty() => Path::new(d).join("kvfs"),
            _ => PathBuf::from(format!("/tmp/kvfs-{euid}")),
        }
    };
    let name = format!("{}.sock", escape(mountpoint));
    let path = dir.join(&name);
    if path.as_os_str().len() <= MAX_SOCKET_PATH {
        return path;
    }
    let digest = mountpoint
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    dir.join(format!("mount-{digest:016x}.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_follows_systemd() {
        assert_eq!(
            escape(Path::new("/var/lib/kvfs/my-vault")),
            r"var-lib-kvfs-my\x2dvault"
        );
        assert_eq!(escape(Path::new("/")), "-");
        assert_eq!(escape(Path::new("/mnt/kv/")), "mnt-kv");
        assert_eq!(escape(Path::new("/.hidden/a b")), r"\x2ehidden-a\x20b");
        assert_ne!(escape(Path::new("/a-b")), escape(Path::new("/a/b")));
    }

    #[test]
    fn default_places() {
        assert_eq!(
            control_socket(Path::new("/mnt/kv"), 0, None),
            PathBuf::from("/run/kvfs/mnt-kv.sock")
        );
        assert_eq!(
            control_socket(
                Path::new("/mnt/kv"),
                1000,
                Some(OsStr::new("/run/user/1000"))
            ),
            PathBuf::from("/run/user/1000/kvfs/mnt-kv.sock")
        );
        assert_eq!(
            control_socket(Path::new("/mnt/kv"), 1000, None),
            PathBuf::from("/tmp/kvfs-1000/mnt-kv.sock")
        );
        let long = Path::new("/very").join("x".repeat(150));
        let p = control_socket(&long, 0, None);
        assert!(p.as_os_str().len() <= MAX_SOCKET_PATH);
        assert!(p.starts_with("/run/kvfs"));
        assert_ne!(
            p,
            control_socket(&Path::new("/very").join("y".repeat(150)), 0, None)
        );
    }

    #[test]
    fn absolute_paths_are_lexical_below_the_parent() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        let spelled = dir.path().join("a/../mnt/./");
        assert_eq!(absolute(&spelled), real.join("mnt"));
    }
}
