//! The filesystem operations, answered from the cache: lookup, getattr, readdir, open/read/release
//! (an open file reads the snapshot it opened) and the `user.kvfs.*` extended attributes.
//! Every mutation is `EROFS`; the FUSE adapter only translates.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use super::cache::Cache;
use super::error::FsError;
use super::inodes::Inodes;
use super::node::Node;
use crate::vault::{Collection, ObjectProps, SecretValue};

/// Ownership and modes of everything in the mount.
#[derive(Clone, Debug)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// Attributes of one inode, independent of fuser's types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

/// An answer the kernel may cache for `ttl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub attr: Attr,
    pub ttl: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub name: String,
    pub kind: Kind,
}

/// What a resolved node stands for right now.
enum Resolved {
    Dir {
        mtime: SystemTime,
        ttl: Duration,
    },
    File {
        secret: Arc<SecretValue>,
        ttl: Duration,
    },
}

pub struct FsCore {
    cache: Cache,
    inodes: Inodes,
    handles: Mutex<HashMap<u64, Arc<SecretValue>>>,
    next_handle: AtomicU64,
    owner: Ownership,
    /// Upper bound on what the kernel may cache (the cache TTL).
    ttl: Duration,
    mounted_at: SystemTime,
}

const XATTR_PREFIX: &str = "user.kvfs.";

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl FsCore {
    pub fn new(cache: Cache, owner: Ownership, ttl: Duration) -> Self {
        FsCore {
            cache,
            inodes: Inodes::default(),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            owner,
            ttl,
            mounted_at: SystemTime::now(),
        }
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    fn attr(&self, ino: u64, resolved: &Resolved) -> Entry {
        match resolved {
            Resolved::Dir { mtime, ttl } => Entry {
                attr: Attr {
                    ino,
                    kind: Kind::Dir,
                    size: 0,
                    perm: self.owner.dir_mode,
                    nlink: 2,
                    uid: self.owner.uid,
                    gid: self.owner.gid,
                    mtime: *mtime,
                },
                ttl: *ttl,
            },
            Resolved::File { secret, ttl } => Entry {
                attr: Attr {
                    ino,
                    kind: Kind::File,
                    size: secret.value.len() as u64,
                    perm: self.owner.file_mode,
                    nlink: 1,
                    uid: self.owner.uid,
                    gid: self.owner.gid,
                    mtime: secret.props.updated.unwrap_or(self.mounted_at),
                },
                ttl: *ttl,
            },
        }
    }

    fn bounded(&self, valid_for: Duration) -> Duration {
        valid_for.min(self.ttl)
    }

    /// Fetch what a node is (through the cache). Hidden objects — disabled ones and those that
    /// back a certificate — are `NotFound`.
    async fn resolve(&self, node: &Node) -> Result<Resolved, FsError> {
        match node {
            Node::Root | Node::Collection(_) | Node::Versions | Node::VersionsOf(_) => {
                Ok(Resolved::Dir {
                    mtime: self.mounted_at,
                    ttl: self.ttl,
                })
            }
            Node::Secret(name) => {
                let got = self.cache.secret(name, None).await?;
                if got.value.props.managed {
                    return Err(FsError::NotFound);
                }
                Ok(Resolved::File {
                    ttl: self.bounded(got.valid_for),
                    secret: got.value,
                })
            }
            Node::SecretVersion(name, version) => {
                let got = self.cache.secret(name, Some(version)).await?;
                if got.value.props.managed {
                    return Err(FsError::NotFound);
                }
                Ok(Resolved::File {
                    ttl: self.bounded(got.valid_for),
                    secret: got.value,
                })
            }
            Node::SecretVersions(name) => {
                let got = self.cache.versions(Collection::Secrets, name).await?;
                let visible: Vec<&ObjectProps> = visible_versions(&got.value).collect();
                if visible.is_empty() {
                    return Err(FsError::NotFound);
                }
                let mtime = visible
                    .iter()
                    .filter_map(|p| p.updated)
                    .max()
                    .unwrap_or(self.mounted_at);
                Ok(Resolved::Dir {
                    mtime,
                    ttl: self.bounded(got.valid_for),
                })
            }
        }
    }

    pub async fn lookup(&self, parent: u64, name: &str) -> Result<Entry, FsError> {
        let parent_node = self.inodes.node(parent).ok_or(FsError::BadHandle)?;
        if !parent_node.is_dir() {
            return Err(FsError::NotDir);
        }
        let node = parent_node.child(name).ok_or(FsError::NotFound)?;
        let resolved = self.resolve(&node).await?;
        let ino = self.inodes.get_or_insert(&node, true);
        Ok(self.attr(ino, &resolved))
    }

    pub async fn getattr(&self, ino: u64) -> Result<Entry, FsError> {
        let node = self.inodes.node(ino).ok_or(FsError::BadHandle)?;
        let resolved = self.resolve(&node).await?;
        Ok(self.attr(ino, &resolved))
    }

    pub fn forget(&self, ino: u64, lookups: u64) {
        self.inodes.forget(ino, lookups);
    }

    /// Every entry of a directory, `.` and `..` first.
    pub async fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let node = self.inodes.node(ino).ok_or(FsError::BadHandle)?;
        if !node.is_dir() {
            return Err(FsError::NotDir);
        }
        let mut children: Vec<(String, Node)> = match &node {
            Node::Root | Node::Versions => node.fixed_children(),
            Node::Collection(Collection::Secrets) | Node::VersionsOf(Collection::Secrets) => {
                let listed = self.cache.list(Collection::Secrets).await?;
                listed
                    .value
                    .iter()
                    .filter(|p| p.enabled && !p.managed)
                    .filter_map(|p| node.child(&p.name).map(|child| (p.name.clone(), child)))
                    .collect()
            }
            Node::SecretVersions(name) => {
                let got = self.cache.versions(Collection::Secrets, name).await?;
                let visible: Vec<(String, Node)> = visible_versions(&got.value)
                    .filter_map(|p| p.version.clone())
                    .filter_map(|v| node.child(&v).map(|child| (v, child)))
                    .collect();
                if visible.is_empty() {
                    return Err(FsError::NotFound);
                }
                visible
            }
            // Keys and certificates get their files with the keys-and-certificates work.
            Node::Collection(_) | Node::VersionsOf(_) => Vec::new(),
            Node::Secret(_) | Node::SecretVersion(..) => return Err(FsError::NotDir),
        };
        children.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = vec![
            DirEntry {
                ino,
                name: ".".into(),
                kind: Kind::Dir,
            },
            DirEntry {
                ino: self.parent_ino(&node),
                name: "..".into(),
                kind: Kind::Dir,
            },
        ];
        out.extend(children.into_iter().map(|(name, child)| DirEntry {
            ino: self.inodes.peek_or_insert(&child),
            kind: if child.is_dir() {
                Kind::Dir
            } else {
                Kind::File
            },
            name,
        }));
        Ok(out)
    }

    fn parent_ino(&self, node: &Node) -> u64 {
        let parent = match node {
            Node::Root | Node::Collection(_) | Node::Versions => Node::Root,
            Node::VersionsOf(_) => Node::Versions,
            Node::Secret(_) => Node::Collection(Collection::Secrets),
            Node::SecretVersions(_) => Node::VersionsOf(Collection::Secrets),
            Node::SecretVersion(name, _) => Node::SecretVersions(name.clone()),
        };
        self.inodes.peek_or_insert(&parent)
    }

    /// Open a file for reading: the handle holds the value as it is now, so a rotation while the
    /// file is open never tears a read.
    pub async fn open(&self, ino: u64, write: bool) -> Result<u64, FsError> {
        if write {
            return Err(FsError::ReadOnly);
        }
        let node = self.inodes.node(ino).ok_or(FsError::BadHandle)?;
        if node.is_dir() {
            return Err(FsError::IsDir);
        }
        let Resolved::File { secret, .. } = self.resolve(&node).await? else {
            return Err(FsError::IsDir);
        };
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, secret);
        Ok(fh)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let handles = self.handles.lock();
        let secret = handles.get(&fh).ok_or(FsError::BadHandle)?;
        let bytes = &secret.value;
        let start = (offset as usize).min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        Ok(bytes[start..end].to_vec())
    }

    pub fn release(&self, fh: u64) {
        self.handles.lock().remove(&fh);
    }

    /// Open file handles (for tests and metrics).
    pub fn open_handles(&self) -> usize {
        self.handles.lock().len()
    }

    async fn props(&self, ino: u64) -> Result<Option<Arc<SecretValue>>, FsError> {
        let node = self.inodes.node(ino).ok_or(FsError::BadHandle)?;
        match self.resolve(&node).await? {
            Resolved::File { secret, .. } => Ok(Some(secret)),
            Resolved::Dir { .. } => Ok(None),
        }
    }

    /// `user.kvfs.version`, `content_type`, `updated`, `expires`, `tags.<tag>`.
    pub async fn listxattr(&self, ino: u64) -> Result<Vec<String>, FsError> {
        Ok(match self.props(ino).await? {
            Some(secret) => xattrs(&secret.props).into_iter().map(|(k, _)| k).collect(),
            None => Vec::new(),
        })
    }

    pub async fn getxattr(&self, ino: u64, name: &str) -> Result<Vec<u8>, FsError> {
        let secret = self.props(ino).await?.ok_or(FsError::NoAttribute)?;
        xattrs(&secret.props)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_bytes())
            .ok_or(FsError::NoAttribute)
    }
}

fn visible_versions(all: &[ObjectProps]) -> impl Iterator<Item = &ObjectProps> {
    all.iter().filter(|p| p.enabled && !p.managed)
}

fn xattrs(p: &ObjectProps) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut put = |k: &str, v: String| out.push((format!("{XATTR_PREFIX}{k}"), v));
    if let Some(v) = &p.version {
        put("version", v.clone());
    }
    if let Some(ct) = &p.content_type {
        put("content_type", ct.clone());
    }
    if let Some(t) = p.updated {
        put("updated", rfc3339(t));
    }
    if let Some(t) = p.expires {
        put("expires", rfc3339(t));
    }
    for (k, v) in &p.tags {
        put(&format!("tags.{k}"), v.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::cache::CacheConfig;
    use crate::fs::inodes::ROOT;
    use crate::vault::VaultError;
    use crate::vault::memory::MemoryVault;

    fn core_with(vault: Arc<MemoryVault>, ttl: Duration) -> FsCore {
        let cache = Cache::new(
            vault,
            CacheConfig {
                ttl,
                max_stale: Duration::from_secs(3600),
                max_entries: 1000,
                max_bytes: 1 << 20,
            },
        );
        FsCore::new(
            cache,
            Ownership {
                uid: 1000,
                gid: 1000,
                file_mode: 0o400,
                dir_mode: 0o500,
            },
            ttl,
        )
    }

    async fn path(core: &FsCore, p: &str) -> Result<Entry, FsError> {
        let mut ino = ROOT;
        let mut entry = core.getattr(ROOT).await?;
        for part in p.split('/').filter(|s| !s.is_empty()) {
            entry = core.lookup(ino, part).await?;
            ino = entry.attr.ino;
        }
        Ok(entry)
    }

    async fn read_all(core: &FsCore, ino: u64) -> Result<String, FsError> {
        let fh = core.open(ino, false).await?;
        let bytes = core.read(fh, 0, 1 << 20)?;
        core.release(fh);
        Ok(String::from_utf8(bytes).unwrap())
    }

    fn names(entries: &[DirEntry]) -> Vec<String> {
        entries.iter().skip(2).map(|e| e.name.clone()).collect()
    }

    #[tokio::test]
    async fn tree_listing_hides_disabled_and_managed() {
        let vault = Arc::new(MemoryVault::new());
        vault.set_secret("b-secret", b"two");
        vault.set_secret("a-secret", b"one");
        vault.set_secret("off", b"x");
        vault.set_enabled("off", false);
        vault.set_secret("web-cert", b"pfx");
        vault.set_managed("web-cert");
        let core = core_with(vault.clone(), Duration::from_secs(60));
        assert_eq!(
            vault.calls("list"),
            0,
            "nothing fetched before the first access"
        );
        let root = core.readdir(ROOT).await.unwrap();
        assert_eq!(names(&root), ["certs", "keys", "secrets", "versions"]);
        let secrets = path(&core, "secrets").await.unwrap();
        let listed = core.readdir(secrets.attr.ino).await.unwrap();
        assert_eq!(names(&listed), ["a-secret", "b-secret"]);
        assert_eq!(listed[1].ino, ROOT, "`..` of /secrets is the root");
        for hidden in ["off", "web-cert"] {
            assert_eq!(
                path(&core, &format!("secrets/{hidden}")).await.unwrap_err(),
                FsError::NotFound
            );
        }
    }

    #[tokio::test]
    async fn file_attributes_and_reads() {
        let vault = Arc::new(MemoryVault::new());
        vault.set_secret("db", b"hunter2");
        let core = core_with(vault, Duration::from_secs(60));
        let e = path(&core, "secrets/db").await.unwrap();
        assert_eq!(e.attr.kind, Kind::File);
        assert_eq!(e.attr.size, 7);
        assert_eq!((e.attr.perm, e.attr.uid, e.attr.gid), (0o400, 1000, 1000));
        assert!(e.ttl <= Duration::from_secs(60));
        assert_eq!(read_all(&core, e.attr.ino).await.unwrap(), "hunter2");
        let fh = core.open(e.attr.ino, false).await.unwrap();
        assert_eq!(core.read(fh, 2, 3).unwrap(), b"nte");
        assert_eq!(core.read(fh, 100, 3).unwrap(), b"");
        core.release(fh);
        assert_eq!(core.read(fh, 0, 1).unwrap_err(), FsError::BadHandle);
        assert_eq!(
            core.open(e.attr.ino, true).await.unwrap_err(),
            FsError::ReadOnly
        );
        let dir = path(&core, "secrets").await.unwrap();
        assert_eq!(
            core.open(dir.attr.ino, false).await.unwrap_err(),
            FsError::IsDir
        );
        assert_eq!(dir.attr.perm, 0o500);
    }

    #[tokio::test]
    async fn names_are_case_insensitive_and_invalid_ones_cost_nothing() {
        let vault = Arc::new(MemoryVault::new());
        vault.set_secret("Db-Password", b"v");
        let core = core_with(vault.clone(), Duration::from_secs(60));
        let a = path(&core, "secrets/db-password").await.unwrap();
        let b = path(&core, "secrets/DB-PASSWORD").await.unwrap();
        assert_eq!(a.attr.ino, b.attr.ino);
        let before = vault.calls("get_secret");
        for bad in ["a_b", "..x", "sp ace"] {
            assert_eq!(
                path(&core, &format!("secrets/{bad}")).await.unwrap_err(),
                FsError::NotFound
            );
        }
        assert_eq!(vault.calls("get_secret"), before);
    }

    #[tokio::test]
    async fn versions_tree() {
        let vault = Arc::new(MemoryVault::new());
        let v1 = vault.set_secret("db", b"one");
        let v2 = vault.set_secret("db", b"two");
        let core = core_with(vault, Duration::from_secs(60));
        let dir = path(&core, "versions/secrets/db").await.unwrap();
        assert_eq!(dir.attr.kind, Kind::Dir);
        let listed = core.readdir(dir.attr.ino).await.unwrap();
        let mut want = vec![v1.clone(), v2.clone()];
        want.sort();
        assert_eq!(names(&listed), want);
        let e = path(&core, &format!("versions/secrets/db/{v1}"))
            .await
            .unwrap();
        assert_eq!(read_all(&core, e.attr.ino).await.unwrap(), "one");
        assert_eq!(
            path(&core, "versions/secrets/missing").await.unwrap_err(),
            FsError::NotFound
        );
    }

    #[tokio::test]
    async fn an_open_handle_keeps_its_snapshot_across_a_rotation() {
        let vault = Arc::new(MemoryVault::new());
        vault.set_secret("db", b"old-value");
        let core = core_with(vault.clone(), Duration::ZERO);
        let e = path(&core, "secrets/db").await.unwrap();
        let fh = core.open(e.attr.ino, false).await.unwrap();
        vault.set_secret("db", b"new");
        assert_eq!(read_all(&core, e.attr.ino).await.unwrap(), "new");
        assert_eq!(core.read(fh, 0, 100).unwrap(), b"old-value");
        core.release(fh);
        assert_eq!(core.open_handles(), 0);
    }

    #[tokio::test]
    async fn xattrs_describe_the_secret() {
        let vault = Arc::new(MemoryVault::new());
        let v = vault.set_secret("db", b"x");
        vault.set_tag("db", "owner", "platform");
        let core = core_with(vault, Duration::from_secs(60));
        let e = path(&core, "secrets/db").await.unwrap();
        let names = core.listxattr(e.attr.ino).await.unwrap();
        assert!(names.contains(&"user.kvfs.version".to_string()));
        assert!(names.contains(&"user.kvfs.tags.owner".to_string()));
        assert_eq!(
            core.getxattr(e.attr.ino, "user.kvfs.version")
                .await
                .unwrap(),
            v.as_bytes()
        );
        assert_eq!(
            core.getxattr(e.attr.ino, "user.kvfs.content_type")
                .await
                .unwrap(),
            b"text/plain"
        );
        assert_eq!(
            core.getxattr(e.attr.ino, "user.other").await.unwrap_err(),
            FsError::NoAttribute
        );
        assert_eq!(
            core.getxattr(ROOT, "user.kvfs.version").await.unwrap_err(),
            FsError::NoAttribute
        );
    }

    #[tokio::test]
    async fn vault_failures_become_errnos() {
        let vault = Arc::new(MemoryVault::new());
        vault.set_secret("db", b"x");
        let core = core_with(vault.clone(), Duration::from_secs(60));
        vault.fail_with(Some(VaultError::Forbidden("Key Vault Secrets User".into())));
        assert_eq!(
            path(&core, "secrets/db").await.unwrap_err(),
            FsError::AccessDenied
        );
        vault.fail_with(Some(VaultError::Unavailable("503".into())));
        assert_eq!(path(&core, "secrets/other").await.unwrap_err(), FsError::Io);
    }
}
