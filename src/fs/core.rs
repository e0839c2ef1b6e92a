//! The filesystem operations, answered from the cache: lookup, getattr, readdir, open/read/release
//! (an open file reads the snapshot it opened) and the `user.kvfs.*` extended attributes.
//! Every mutation is `EROFS`; the FUSE adapter only translates.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use parking_lot::Mutex;

use super::cache::Cache;
use super::error::{Cause, FsError};
use super::inodes::Inodes;
use super::node::{CERT_FILES, Node};
use super::prefetch::{self, Prefetcher};
use crate::metrics;
use crate::render::RenderError;
use crate::render::cert::{self, CertFiles};
use crate::render::key;
use crate::vault::{Collection, ObjectProps, SecretValue};

/// Ownership and modes of everything in the mount.
#[derive(Clone, Debug)]
pub(crate) struct Ownership {
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
}

impl Ownership {
    /// `--file-mode` unless given: the owner reads, nobody else.
    pub(crate) const DEFAULT_FILE_MODE: u16 = 0o400;
    /// `--dir-mode` unless given: the owner lists and enters, nobody else.
    pub(crate) const DEFAULT_DIR_MODE: u16 = 0o500;
}

/// How opens and reads reach the daemon (`--open-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// Every open takes a snapshot of the value and every read of a current value is served from
    /// it (direct I/O): an open descriptor reads the bytes it opened, whatever rotates meanwhile.
    #[default]
    Snapshot,
    /// No open round trip (the kernel is told opens are not implemented) and reads come from the
    /// kernel's page cache, invalidated when the value changes. A descriptor held open across a
    /// rotation reads the new value once the kernel learns of it.
    Cached,
}

/// How the kernel should treat a file just opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Opened {
    pub fh: u64,
    /// The bytes of this inode can never change (an explicit version): the page cache may keep
    /// them across opens. Otherwise reads bypass the page cache and come from the snapshot.
    pub immutable: bool,
}

/// A directory just opened: a handle on its entries as they are now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OpenedDir {
    pub fh: u64,
    /// The entries are those the previous open of this directory got, so whatever the kernel
    /// cached of them then is still right.
    pub unchanged: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
}

/// Attributes of one inode, independent of fuser's types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Attr {
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
pub(crate) struct Entry {
    pub attr: Attr,
    pub ttl: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DirEntry {
    pub ino: u64,
    pub name: String,
    pub kind: Kind,
}

/// The bytes of a file, shared with the cache entry or the rendered memo they come from (a lookup
/// or a read copies nothing).
#[derive(Clone)]
pub(crate) enum Bytes {
    Secret(Arc<SecretValue>),
    Rendered(Arc<Vec<u8>>),
    CertFile(Arc<CertFiles>, &'static str),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Secret(s) => &s.value,
            Bytes::Rendered(b) => b,
            Bytes::CertFile(files, name) => files.file(name).unwrap_or_default(),
        }
    }
}

/// The bytes of one file as they are now, with the metadata of the object version they come from.
pub(crate) struct FileContent {
    pub bytes: Bytes,
    pub props: ObjectProps,
    /// Attributes beyond those of `props` (`user.kvfs.jwk` of a key).
    pub extra_xattrs: Vec<(String, String)>,
}

/// Values never reach logs through `Debug`.
impl std::fmt::Debug for FileContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileContent")
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .field("props", &self.props)
            .finish()
    }
}

/// What a resolved node stands for right now.
enum Resolved {
    Dir {
        mtime: SystemTime,
        ttl: Duration,
        /// For a certificate directory: its files.
        cert: Option<(Arc<CertFiles>, ObjectProps)>,
    },
    File {
        content: Arc<FileContent>,
        ttl: Duration,
    },
}

/// Rendered key and certificate files, by (collection, lower-case name, version). A version never
/// changes, so it is rendered once; a render error is remembered too, so malformed material is
/// logged once rather than on every read.
type Rendered = moka::sync::Cache<(Collection, String, String), Result<RenderedValue, RenderError>>;

#[derive(Clone)]
enum RenderedValue {
    Key { pem: Arc<Vec<u8>>, jwk: String },
    Cert(Arc<CertFiles>),
}

/// An open file: the bytes it opened, and how many opens share its handle.
struct OpenFile {
    content: Arc<FileContent>,
    opens: u32,
}

/// File handles of current values name the version they were opened at (this bit, and a digest
/// of the version id). A successor process that never saw the open can then serve the same
/// bytes, by fetching that version. Opens of the same version of the same inode share a handle.
const VERSIONED_HANDLE: u64 = 1 << 63;

/// The longest name in the tree: Key Vault's limit on object names (version ids and the fixed
/// names are shorter).
pub(crate) const MAX_NAME_LEN: usize = 127;

/// A longer name cannot exist anywhere in the tree; saying `ENAMETOOLONG` (not `ENOENT`) tells
/// the caller why, and costs no vault request.
pub(crate) fn check_name_length(name: &[u8]) -> Result<(), FsError> {
    if name.len() > MAX_NAME_LEN {
        return Err(FsError::NameTooLong);
    }
    Ok(())
}

fn handle_of(version: &str) -> u64 {
    VERSIONED_HANDLE | (fnv1a(version.bytes()) >> 1)
}

pub(crate) struct FsCore {
    cache: Cache,
    inodes: Inodes,
    rendered: Rendered,
    /// Open files by (inode, handle).
    handles: Mutex<HashMap<(u64, u64), OpenFile>>,
    /// Open directories: their entries, listed once at open (a 10,000-entry directory is read in
    /// dozens of READDIR calls, which must neither relist it nor see it change midway).
    dir_handles: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    /// Per directory inode, a digest of the entries its last open got.
    dir_digests: Mutex<HashMap<u64, u64>>,
    next_handle: AtomicU64,
    owner: Ownership,
    open_mode: OpenMode,
    /// Upper bound on what the kernel may cache (the cache TTL).
    ttl: Duration,
    mounted_at: SystemTime,
    /// Fetches ahead of a program that stats what it lists (`ls -l`).
    prefetch: Prefetcher,
}

const XATTR_PREFIX: &str = "user.kvfs.";

/// Keys fetched at once to learn their types when `keys/` is listed.
const KEY_CHECKS: usize = 16;

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Keys of these types are not shown (symmetric keys release no material).
fn key_listed(props: &ObjectProps, kty: Option<&str>) -> bool {
    props.enabled && !props.managed && kty.is_none_or(key::is_supported)
}

impl FsCore {
    #[cfg(test)]
    pub(crate) fn new(cache: Cache, owner: Ownership, ttl: Duration) -> Self {
        Self::with_open_mode(cache, owner, ttl, OpenMode::Snapshot)
    }

    pub(crate) fn with_open_mode(
        cache: Cache,
        owner: Ownership,
        ttl: Duration,
        open_mode: OpenMode,
    ) -> Self {
        FsCore {
            open_mode,
            prefetch: Prefetcher::new(cache.clone(), prefetch::DEFAULT_CONCURRENCY),
            cache,
            inodes: Inodes::default(),
            rendered: moka::sync::Cache::new(10_000),
            handles: Mutex::new(HashMap::new()),
            dir_handles: Mutex::new(HashMap::new()),
            dir_digests: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            owner,
            ttl,
            mounted_at: SystemTime::now(),
        }
    }

    /// At most `concurrency` prefetches in flight (`--prefetch-concurrency`; 0: no prefetch).
    pub(crate) fn with_prefetch(mut self, concurrency: usize) -> Self {
        self.prefetch = Prefetcher::new(self.cache.clone(), concurrency);
        self
    }

    #[cfg(test)]
    pub(crate) fn prefetcher(&self) -> &Prefetcher {
        &self.prefetch
    }

    /// Resume an inode table (a predecessor's, from its journal), and number directory handles
    /// from `generation << 32`: handles a predecessor gave out never collide with new ones.
    pub(crate) fn resuming(mut self, inodes: Inodes, generation: u32) -> Self {
        self.inodes = inodes;
        self.next_handle = AtomicU64::new((u64::from(generation) << 32) | 1);
        self
    }

    /// Inodes of current values taken over from a predecessor (see
    /// [`Inodes::inherited_current`]).
    pub(crate) fn inherited_current(&self) -> Vec<u64> {
        self.inodes.inherited_current()
    }

    pub(crate) fn cache(&self) -> &Cache {
        &self.cache
    }

    pub(crate) fn open_mode(&self) -> OpenMode {
        self.open_mode
    }

    /// The inodes the kernel may hold for the current (latest-version) form of an object: the
    /// file, or a certificate's directory and its files. What to invalidate when it changes.
    pub(crate) fn inodes_of_latest(&self, collection: Collection, name: &str) -> Vec<u64> {
        let object = Node::Object {
            collection,
            name: name.to_string(),
            version: None,
        };
        let mut nodes = vec![object];
        if collection == Collection::Certificates {
            nodes.extend(CERT_FILES.iter().map(|file| Node::CertFile {
                name: name.to_string(),
                version: None,
                file,
            }));
        }
        nodes
            .iter()
            .filter_map(|n| self.inodes.existing(n))
            .collect()
    }

    /// Where inode `ino` is in the tree, or the name `child` in it (a lookup): `secrets/db`,
    /// `certs/web/cert.pem`. What a failure's log line names (names are not secrets; values
    /// are). `None` for an inode this process does not know.
    pub(crate) fn path_of(&self, ino: u64, child: Option<&str>) -> Option<String> {
        let path = self.inodes.node(ino)?.path();
        Some(match child {
            None => path,
            Some(name) if path.is_empty() => name.to_string(),
            Some(name) => format!("{path}/{name}"),
        })
    }

    /// The inode of a collection's directory (`secrets`, `keys`, `certs`).
    pub(crate) fn collection_inode(&self, collection: Collection) -> Option<u64> {
        self.inodes.existing(&Node::Collection(collection))
    }

    fn attr(&self, ino: u64, resolved: &Resolved) -> Entry {
        let (kind, size, perm, nlink, mtime, ttl) = match resolved {
            Resolved::Dir { mtime, ttl, .. } => {
                (Kind::Dir, 0, self.owner.dir_mode, 2, *mtime, *ttl)
            }
            Resolved::File { content, ttl } => (
                Kind::File,
                content.bytes.len() as u64,
                self.owner.file_mode,
                1,
                version_mtime(&content.props, self.mounted_at),
                *ttl,
            ),
        };
        Entry {
            attr: Attr {
                ino,
                kind,
                size,
                perm,
                nlink,
                uid: self.owner.uid,
                gid: self.owner.gid,
                mtime,
            },
            ttl,
        }
    }

    fn bounded(&self, valid_for: Duration) -> Duration {
        valid_for.min(self.ttl)
    }

    /// Render once per version; malformed material is one log line and `EIO`.
    fn render(
        &self,
        collection: Collection,
        props: &ObjectProps,
        make: impl FnOnce() -> Result<RenderedValue, RenderError>,
    ) -> Result<RenderedValue, FsError> {
        let version = props.version.clone().unwrap_or_default();
        let key = (collection, props.name.to_ascii_lowercase(), version.clone());
        let result = self.rendered.get_with(key, || {
            let r = make();
            if let Err(e) = &r {
                tracing::warn!(
                    object = %format!("{}/{}/{version}", collection.as_str(), props.name),
                    "cannot render the vault's material: {e}"
                );
            }
            r
        });
        result.map_err(FsError::from)
    }

    async fn key_file(&self, name: &str, version: Option<&str>) -> Result<Resolved, FsError> {
        let got = self.cache.key(name, version).await?;
        let k = &got.value;
        let kty = k.jwk.get("kty").and_then(|v| v.as_str());
        if !key_listed(&k.props, kty) {
            return Err(FsError::NotFound);
        }
        let RenderedValue::Key { pem, jwk } = self.render(Collection::Keys, &k.props, || {
            Ok(RenderedValue::Key {
                pem: Arc::new(key::public_key_pem(&k.jwk)?),
                jwk: key::public_jwk_json(&k.jwk),
            })
        })?
        else {
            return Err(FsError::Io(Cause::Internal(
                "a key rendered as a certificate",
            )));
        };
        Ok(Resolved::File {
            content: Arc::new(FileContent {
                bytes: Bytes::Rendered(pem),
                props: k.props.clone(),
                extra_xattrs: vec![(format!("{XATTR_PREFIX}jwk"), jwk)],
            }),
            ttl: self.bounded(got.valid_for),
        })
    }

    async fn cert_files(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<(Arc<CertFiles>, ObjectProps, Duration), FsError> {
        let got = self.cache.certificate(name, version).await?;
        let c = &got.value;
        if !c.props.enabled {
            return Err(FsError::NotFound);
        }
        let secret = c.secret.as_ref().map(|s| {
            (
                s.props.content_type.as_deref().unwrap_or(""),
                String::from_utf8_lossy(&s.value).into_owned(),
            )
        });
        let RenderedValue::Cert(files) = self.render(Collection::Certificates, &c.props, || {
            let secret = secret.as_ref().map(|(ct, v)| (*ct, v.as_str()));
            Ok(RenderedValue::Cert(Arc::new(cert::render(&c.cer, secret)?)))
        })?
        else {
            return Err(FsError::Io(Cause::Internal(
                "a certificate rendered as a key",
            )));
        };
        Ok((files, c.props.clone(), self.bounded(got.valid_for)))
    }

    /// Fetch what a node is (through the cache). Hidden objects — disabled ones, those that back a
    /// certificate, keys kvfs does not render — are `NotFound`.
    async fn resolve(&self, node: &Node) -> Result<Resolved, FsError> {
        match node {
            Node::Root | Node::Collection(_) | Node::Versions | Node::VersionsOf(_) => {
                Ok(Resolved::Dir {
                    mtime: self.mounted_at,
                    ttl: self.ttl,
                    cert: None,
                })
            }
            Node::Object {
                collection: Collection::Secrets,
                name,
                version,
            } => {
                let got = self.cache.secret(name, version.as_deref()).await?;
                if got.value.props.managed {
                    return Err(FsError::NotFound);
                }
                Ok(Resolved::File {
                    content: Arc::new(FileContent {
                        props: got.value.props.clone(),
                        bytes: Bytes::Secret(got.value),
                        extra_xattrs: Vec::new(),
                    }),
                    ttl: self.bounded(got.valid_for),
                })
            }
            Node::Object {
                collection: Collection::Keys,
                name,
                version,
            } => self.key_file(name, version.as_deref()).await,
            Node::Object {
                collection: Collection::Certificates,
                name,
                version,
            } => {
                let (files, props, ttl) = self.cert_files(name, version.as_deref()).await?;
                Ok(Resolved::Dir {
                    mtime: version_mtime(&props, self.mounted_at),
                    ttl,
                    cert: Some((files, props)),
                })
            }
            Node::CertFile {
                name,
                version,
                file,
            } => {
                let (files, props, ttl) = self.cert_files(name, version.as_deref()).await?;
                files.file(file).ok_or(FsError::NotFound)?;
                Ok(Resolved::File {
                    content: Arc::new(FileContent {
                        bytes: Bytes::CertFile(files, file),
                        props,
                        extra_xattrs: Vec::new(),
                    }),
                    ttl,
                })
            }
            Node::ObjectVersions { collection, name } => {
                let got = self.cache.versions(*collection, name).await?;
                let visible: Vec<&ObjectProps> =
                    visible_versions(*collection, &got.value).collect();
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
                    cert: None,
                })
            }
        }
    }

    pub(crate) async fn lookup(&self, parent: u64, name: &str) -> Result<Entry, FsError> {
        check_name_length(name.as_bytes())?;
        let parent_node = self.inodes.node(parent).ok_or(FsError::BadHandle)?;
        if !parent_node.is_dir() {
            return Err(FsError::NotDir);
        }
        let node = parent_node.child(name).ok_or(FsError::NotFound)?;
        if let Node::Collection(collection) = &parent_node {
            // Before this name is fetched: a run of lookups in listing order gets the names
            // after it fetched ahead.
            self.prefetch.looked_up(*collection, name);
        }
        let resolved = self.resolve(&node).await?;
        let ino = self.inodes.get_or_insert(&node, true);
        Ok(self.attr(ino, &resolved))
    }

    pub(crate) async fn getattr(&self, ino: u64) -> Result<Entry, FsError> {
        let node = self.inodes.node(ino).ok_or(FsError::BadHandle)?;
        let resolved = self.resolve(&node).await?;
        Ok(self.attr(ino, &resolved))
    }

    pub(crate) fn forget(&self, ino: u64, lookups: u64) {
        self.inodes.forget(ino, lookups);
    }

    /// The objects a collection directory shows. Keys are fetched (through the cache) to leave
    /// out the types kvfs does not render, which list items do not name.
    async fn listed_objects(&self, collection: Collection) -> Result<Vec<String>, FsError> {
        let listed = self.cache.list(collection).await?;
        let candidates: Vec<&ObjectProps> = listed
            .value
            .iter()
            .filter(|p| p.enabled && (collection == Collection::Certificates || !p.managed))
            .collect();
        if collection != Collection::Keys {
            return Ok(candidates.iter().map(|p| p.name.clone()).collect());
        }
        // Every key not in the cache is a GET: a few at a time and within the prefetch budget, so
        // that listing a large `keys/` does not send the vault thousands of GETs at once.
        // (Collected first: a stream over a closure that borrows the list is not `Send`.)
        let checks: Vec<_> = candidates
            .iter()
            .map(|p| p.name.clone())
            .map(|name| async move {
                self.prefetch.pace(Collection::Keys, &name).await;
                match self.cache.key(&name, None).await {
                    Ok(k) => {
                        let kty = k.value.jwk.get("kty").and_then(|v| v.as_str());
                        key_listed(&k.value.props, kty).then_some(name)
                    }
                    // A key that cannot be read right now is still listed; reading it says why.
                    Err(_) => Some(name),
                }
            })
            .collect();
        let checked: Vec<Option<String>> = futures::stream::iter(checks)
            .buffered(KEY_CHECKS)
            .collect()
            .await;
        Ok(checked.into_iter().flatten().collect())
    }

    /// Every entry of a directory, `.` and `..` first.
    async fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let node = self.inodes.node(ino).ok_or(FsError::BadHandle)?;
        if !node.is_dir() {
            return Err(FsError::NotDir);
        }
        let names: Vec<String> = match &node {
            Node::Root | Node::Versions => node.fixed_children().into_iter().map(|c| c.0).collect(),
            Node::Collection(c) | Node::VersionsOf(c) => self.listed_objects(*c).await?,
            Node::ObjectVersions { collection, name } => {
                let got = self.cache.versions(*collection, name).await?;
                let visible: Vec<String> = visible_versions(*collection, &got.value)
                    .filter_map(|p| p.version.clone())
                    .collect();
                if visible.is_empty() {
                    return Err(FsError::NotFound);
                }
                visible
            }
            Node::Object { .. } => match self.resolve(&node).await? {
                Resolved::Dir {
                    cert: Some((files, _)),
                    ..
                } => files.names().into_iter().map(str::to_string).collect(),
                _ => return Err(FsError::NotDir),
            },
            Node::CertFile { .. } => return Err(FsError::NotDir),
        };
        let mut children: Vec<(String, Node)> = names
            .into_iter()
            .filter_map(|n| node.child(&n).map(|child| (n, child)))
            .collect();
        // A certificate's files keep their fixed order (cert.pem first); the rest is sorted.
        if !matches!(node, Node::Object { .. }) {
            children.sort_by(|a, b| a.0.cmp(&b.0));
        }
        let mut out = vec![
            DirEntry {
                ino,
                name: ".".into(),
                kind: Kind::Dir,
            },
            DirEntry {
                ino: self.inodes.peek_or_insert(&node.parent()),
                name: "..".into(),
                kind: Kind::Dir,
            },
        ];
        let inos = self
            .inodes
            .peek_or_insert_all(children.iter().map(|(_, c)| c));
        out.extend(
            children
                .into_iter()
                .zip(inos)
                .map(|((name, child), ino)| DirEntry {
                    ino,
                    kind: if child.is_dir() {
                        Kind::Dir
                    } else {
                        Kind::File
                    },
                    name,
                }),
        );
        Ok(out)
    }

    /// Open a directory: list it now (through the cache) and keep the entries for its READDIRs.
    pub(crate) async fn opendir(&self, ino: u64) -> Result<OpenedDir, FsError> {
        let entries = Arc::new(self.readdir(ino).await?);
        let digest = fnv1a(entries.iter().flat_map(|e| {
            e.name
                .bytes()
                .chain(e.ino.to_le_bytes())
                .chain([e.kind as u8, 0])
        }));
        let unchanged = self.dir_digests.lock().insert(ino, digest) == Some(digest);
        self.listed(ino, &entries, unchanged);
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.dir_handles.lock().insert(fh, entries);
        // The open-handles gauge follows what this process holds (handles a predecessor gave
        // out count once this one takes them up, and never go below zero).
        metrics::handles(1);
        Ok(OpenedDir { fh, unchanged })
    }

    /// Tell the prefetcher what a collection directory lists, in the order lookups will come.
    fn listed(&self, ino: u64, entries: &Arc<Vec<DirEntry>>, unchanged: bool) {
        if let Some(Node::Collection(collection)) = self.inodes.node(ino) {
            self.prefetch.listed(collection, entries.clone(), unchanged);
        }
    }

    /// The entries an open directory handle holds.
    pub(crate) fn dir_entries(&self, fh: u64) -> Option<Arc<Vec<DirEntry>>> {
        self.dir_handles.lock().get(&fh).cloned()
    }

    /// The entries of a directory handle this process never opened (a predecessor did): the
    /// directory is listed again, under the same handle.
    pub(crate) async fn reopen_dir(
        &self,
        ino: u64,
        fh: u64,
    ) -> Result<Arc<Vec<DirEntry>>, FsError> {
        let entries = Arc::new(self.readdir(ino).await?);
        self.listed(ino, &entries, false);
        let mut handles = self.dir_handles.lock();
        let held = handles.entry(fh).or_insert_with(|| {
            metrics::handles(1);
            entries
        });
        Ok(held.clone())
    }

    pub(crate) fn releasedir(&self, fh: u64) {
        if self.dir_handles.lock().remove(&fh).is_some() {
            metrics::handles(-1);
        }
    }

    /// Open a file for reading: the handle holds the bytes as they are now, so a rotation while
    /// the file is open never tears a read.
    pub(crate) async fn open(&self, ino: u64, write: bool) -> Result<Opened, FsError> {
        if write {
            return Err(FsError::ReadOnly);
        }
        let node = self.inodes.node(ino).ok_or(FsError::BadHandle)?;
        if node.is_dir() {
            return Err(FsError::IsDir);
        }
        let Resolved::File { content, .. } = self.resolve(&node).await? else {
            return Err(FsError::IsDir);
        };
        let fh = match &content.props.version {
            Some(v) => handle_of(v),
            None => self.next_handle.fetch_add(1, Ordering::Relaxed),
        };
        self.handles
            .lock()
            .entry((ino, fh))
            .and_modify(|f| f.opens += 1)
            .or_insert(OpenFile { content, opens: 1 });
        metrics::handles(1);
        Ok(Opened {
            fh,
            immutable: node.version().is_some(),
        })
    }

    /// Bytes of an open handle (snapshot mode); `None` when this process never opened it (see
    /// [`FsCore::read_reopened`]).
    pub(crate) fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Option<Vec<u8>> {
        let handles = self.handles.lock();
        let file = handles.get(&(ino, fh))?;
        Some(slice(&file.content.bytes, offset, size).to_vec())
    }

    /// Bytes of a handle a predecessor opened: the version the handle names, fetched again.
    pub(crate) async fn read_reopened(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, FsError> {
        let content = self.reopen(ino, fh).await?;
        let bytes = slice(&content.bytes, offset, size).to_vec();
        if let std::collections::hash_map::Entry::Vacant(v) = self.handles.lock().entry((ino, fh)) {
            v.insert(OpenFile { content, opens: 1 });
            metrics::handles(1);
        }
        Ok(bytes)
    }

    /// The bytes handle `fh` of `ino` was opened with: the current value when it is still that
    /// version, else that version by id. A handle that names no version any more (or none at
    /// all) reads the current value.
    async fn reopen(&self, ino: u64, fh: u64) -> Result<Arc<FileContent>, FsError> {
        let node = self.inodes.node(ino).ok_or(FsError::BadHandle)?;
        let Resolved::File { content, .. } = self.resolve(&node).await? else {
            return Err(FsError::IsDir);
        };
        let current = content.props.version.as_deref().map(handle_of);
        if fh & VERSIONED_HANDLE == 0 || current == Some(fh) || node.version().is_some() {
            return Ok(content);
        }
        let (collection, name) = match &node {
            Node::Object {
                collection, name, ..
            } => (*collection, name.clone()),
            Node::CertFile { name, .. } => (Collection::Certificates, name.clone()),
            _ => return Ok(content),
        };
        let versions = self.cache.versions(collection, &name).await?;
        let Some(version) = versions
            .value
            .iter()
            .filter_map(|p| p.version.as_deref())
            .find(|v| handle_of(v) == fh)
        else {
            // Once per read of such a handle: a reader looping on it must not flood the log.
            crate::log_limited!(global, "handle of an unlisted version", warn,
                object = %format!("{}/{name}", collection.as_str()),
                "a file opened before kvfs restarted names a version the vault no longer lists; it reads the current value"
            );
            return Ok(content);
        };
        match self.resolve(&node.at_version(version)).await? {
            Resolved::File { content, .. } => Ok(content),
            Resolved::Dir { .. } => Err(FsError::IsDir),
        }
    }

    /// Bytes of an inode as they are now: reads without an open handle (cached mode, where the
    /// kernel fills its page cache with them). One read is answered from one version.
    pub(crate) async fn read_inode(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, FsError> {
        let node = self.inodes.node(ino).ok_or(FsError::BadHandle)?;
        match self.resolve(&node).await? {
            Resolved::File { content, .. } => Ok(slice(&content.bytes, offset, size).to_vec()),
            Resolved::Dir { .. } => Err(FsError::IsDir),
        }
    }

    pub(crate) fn release(&self, ino: u64, fh: u64) {
        let mut handles = self.handles.lock();
        if let Some(file) = handles.get_mut(&(ino, fh)) {
            metrics::handles(-1);
            file.opens -= 1;
            if file.opens == 0 {
                handles.remove(&(ino, fh));
            }
        }
    }

    /// Open file handles (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn open_handles(&self) -> usize {
        self.handles.lock().values().map(|f| f.opens as usize).sum()
    }

    async fn xattrs_of(&self, ino: u64) -> Result<Vec<(String, String)>, FsError> {
        let node = self.inodes.node(ino).ok_or(FsError::BadHandle)?;
        Ok(match self.resolve(&node).await? {
            Resolved::File { content, .. } => {
                let mut all = xattrs(&content.props);
                all.extend(content.extra_xattrs.iter().cloned());
                all
            }
            Resolved::Dir {
                cert: Some((_, props)),
                ..
            } => xattrs(&props),
            Resolved::Dir { .. } => Vec::new(),
        })
    }

    /// `user.kvfs.version`, `content_type`, `updated`, `expires`, `tags.<tag>` (and `jwk` on keys).
    pub(crate) async fn listxattr(&self, ino: u64) -> Result<Vec<String>, FsError> {
        Ok(self
            .xattrs_of(ino)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    pub(crate) async fn getxattr(&self, ino: u64, name: &str) -> Result<Vec<u8>, FsError> {
        // `ls -l` asks every file for `security.selinux` and ACLs: answer those without
        // resolving the object, as unsupported, which tells `ls` not to ask again.
        if !name.starts_with(XATTR_PREFIX) {
            self.inodes.node(ino).ok_or(FsError::BadHandle)?;
            return Err(if name.starts_with("user.") {
                FsError::NoAttribute
            } else {
                FsError::NotSupported
            });
        }
        self.xattrs_of(ino)
            .await?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_bytes())
            .ok_or(FsError::NoAttribute)
    }
}

fn slice(bytes: &[u8], offset: u64, size: u32) -> &[u8] {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let end = start.saturating_add(size as usize).min(bytes.len());
    &bytes[start..end]
}

/// `mtime` of an object version: its `updated` time, whose whole seconds are what the vault says,
/// with the sub-second part taken from the version id. Key Vault's times have one-second
/// resolution, so two versions written in the same second would otherwise have equal mtimes and,
/// at equal sizes, the kernel could not tell that its cached pages are stale.
fn version_mtime(props: &ObjectProps, fallback: SystemTime) -> SystemTime {
    let Some(updated) = props.updated else {
        return fallback;
    };
    let whole = updated
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| Duration::from_secs(d.as_secs()))
        .unwrap_or_default();
    let nanos = props
        .version
        .as_deref()
        .map_or(0, |v| fnv1a(v.bytes()) % 1_000_000_000);
    SystemTime::UNIX_EPOCH + whole + Duration::from_nanos(nanos)
}

/// FNV-1a: a digest that is the same in every run and build (unlike the std hasher), which
/// mtimes and listing digests need. Not for anything adversarial.
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn visible_versions(
    collection: Collection,
    all: &[ObjectProps],
) -> impl Iterator<Item = &ObjectProps> {
    all.iter()
        .filter(move |p| p.enabled && (collection == Collection::Certificates || !p.managed))
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
        let fh = core.open(ino, false).await?.fh;
        let bytes = core.read(ino, fh, 0, 1 << 20).ok_or(FsError::BadHandle)?;
        core.release(ino, fh);
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
        let fh = core.open(e.attr.ino, false).await.unwrap().fh;
        let ino = e.attr.ino;
        assert_eq!(core.read(ino, fh, 2, 3).unwrap(), b"nte");
        assert_eq!(core.read(ino, fh, 100, 3).unwrap(), b"");
        core.release(ino, fh);
        assert_eq!(core.read(ino, fh, 0, 1), None);
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
    async fn names_past_the_vault_limit_are_too_long_without_a_request() {
        let vault = Arc::new(MemoryVault::new());
        let longest = "a".repeat(MAX_NAME_LEN);
        vault.set_secret(&longest, b"v");
        let core = core_with(vault.clone(), Duration::from_secs(60));
        path(&core, &format!("secrets/{longest}")).await.unwrap();
        let calls = vault.calls("get_secret");
        for dir in ["secrets", "keys", "certs", "versions/secrets", ""] {
            assert_eq!(
                path(&core, &format!("{dir}/a{longest}")).await.unwrap_err(),
                FsError::NameTooLong,
                "{dir}"
            );
        }
        assert_eq!(vault.calls("get_secret"), calls);
        assert_eq!(vault.calls("get_key") + vault.calls("get_certificate"), 0);
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
        let fh = core.open(e.attr.ino, false).await.unwrap().fh;
        vault.set_secret("db", b"new");
        assert_eq!(read_all(&core, e.attr.ino).await.unwrap(), "new");
        assert_eq!(core.read(e.attr.ino, fh, 0, 100).unwrap(), b"old-value");
        core.release(e.attr.ino, fh);
        assert_eq!(core.open_handles(), 0);
    }

    #[tokio::test]
    async fn a_successor_serves_the_same_inodes_handles_and_bytes() {
        use crate::fs::journal::Journal;
        let vault = Arc::new(MemoryVault::new());
        vault.set_secret("db", b"old-value");
        let journal = Arc::new(Journal::create().unwrap());
        let first = core_with(vault.clone(), Duration::ZERO)
            .resuming(Inodes::journaled(journal.clone()), 1);
        let e = path(&first, "secrets/db").await.unwrap();
        let ino = e.attr.ino;
        let opened = first.open(ino, false).await.unwrap().fh;
        let twice = first.open(ino, false).await.unwrap().fh;
        assert_eq!(opened, twice, "opens of one version share a handle");
        let dir = path(&first, "secrets").await.unwrap().attr.ino;
        let listing = first.opendir(dir).await.unwrap().fh;
        vault.set_secret("db", b"new");

        // The successor: same vault, a fresh cache, the journal's table.
        let (journal, replayed) = Journal::adopt(journal.try_clone_fd().unwrap()).unwrap();
        let second = core_with(vault.clone(), Duration::ZERO)
            .resuming(Inodes::resume(Arc::new(journal), replayed), 2);
        assert_eq!(second.getattr(ino).await.unwrap().attr.size, 3);
        assert_eq!(second.read(ino, opened, 0, 100), None, "never opened here");
        assert_eq!(
            second.read_reopened(ino, opened, 0, 100).await.unwrap(),
            b"old-value",
            "a descriptor opened before the restart reads the version it opened"
        );
        assert_eq!(second.read(ino, opened, 4, 100).unwrap(), b"value");
        second.release(ino, opened);
        assert_eq!(read_all(&second, ino).await.unwrap(), "new");
        let entries = second.reopen_dir(dir, listing).await.unwrap();
        assert_eq!(names(&entries), ["db"]);
        let fresh = second.opendir(dir).await.unwrap().fh;
        assert_ne!(
            fresh, listing,
            "new handles never collide with inherited ones"
        );
        assert_eq!(path(&second, "secrets/db").await.unwrap().attr.ino, ino);
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
        for other_namespace in ["security.selinux", "system.posix_acl_access"] {
            assert_eq!(
                core.getxattr(e.attr.ino, other_namespace)
                    .await
                    .unwrap_err(),
                FsError::NotSupported
            );
        }
        assert_eq!(
            core.getxattr(ROOT, "user.kvfs.version").await.unwrap_err(),
            FsError::NoAttribute
        );
    }

    #[tokio::test]
    async fn paths_name_an_inode_or_a_name_in_it_as_the_tree_shows_them() {
        let vault = Arc::new(MemoryVault::new());
        vault.set_secret("db", b"x");
        let core = core_with(vault, Duration::from_secs(60));
        let secrets = path(&core, "secrets").await.unwrap().attr.ino;
        let db = path(&core, "secrets/db").await.unwrap().attr.ino;
        assert_eq!(core.path_of(db, None).as_deref(), Some("secrets/db"));
        assert_eq!(
            core.path_of(secrets, Some("db-password")).as_deref(),
            Some("secrets/db-password")
        );
        assert_eq!(core.path_of(ROOT, Some("certs")).as_deref(), Some("certs"));
        assert_eq!(core.path_of(ROOT, None).as_deref(), Some(""));
        assert_eq!(core.path_of(999_999, None), None);
    }

    #[tokio::test]
    async fn vault_failures_become_errnos() {
        let vault = Arc::new(MemoryVault::new());
        vault.set_secret("db", b"x");
        let core = core_with(vault.clone(), Duration::from_secs(60));
        let refused = VaultError::Forbidden("Key Vault Secrets User".into());
        vault.fail_with(Some(refused.clone()));
        assert_eq!(
            path(&core, "secrets/db").await.unwrap_err(),
            FsError::AccessDenied(Cause::Vault(Arc::new(refused)))
        );
        let failing = VaultError::Unavailable("503".into());
        vault.fail_with(Some(failing.clone()));
        assert_eq!(
            path(&core, "secrets/other").await.unwrap_err(),
            FsError::Io(Cause::Vault(Arc::new(failing)))
        );
    }

    fn b64url(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa_jwk() -> serde_json::Value {
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        serde_json::json!({
            "kty": "RSA",
            "n": b64url(&rsa.n().to_vec()),
            "e": b64url(&rsa.e().to_vec()),
        })
    }

    #[tokio::test]
    async fn keys_render_to_pem_and_unsupported_or_broken_ones_do_not() {
        let vault = Arc::new(MemoryVault::new());
        vault.set_key("signing", rsa_jwk());
        vault.set_key("symmetric", serde_json::json!({ "kty": "oct" }));
        vault.set_key(
            "broken",
            serde_json::json!({ "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA" }),
        );
        let core = core_with(vault, Duration::from_secs(60));
        let keys = path(&core, "keys").await.unwrap();
        let listed = core.readdir(keys.attr.ino).await.unwrap();
        assert_eq!(
            names(&listed),
            ["broken", "signing"],
            "oct keys are not listed"
        );
        let e = path(&core, "keys/signing").await.unwrap();
        let pem = read_all(&core, e.attr.ino).await.unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(e.attr.size, pem.len() as u64);
        let jwk = core.getxattr(e.attr.ino, "user.kvfs.jwk").await.unwrap();
        assert!(String::from_utf8(jwk).unwrap().contains("\"kty\":\"RSA\""));
        assert_eq!(
            path(&core, "keys/symmetric").await.unwrap_err(),
            FsError::NotFound
        );
        let broken = path(&core, "keys/broken").await.unwrap_err();
        assert!(
            matches!(broken.cause(), Some(Cause::Render(r)) if matches!(**r, RenderError::Malformed(_))),
            "{broken:?}"
        );
        assert_eq!(broken.errno(), libc::EIO);
    }

    fn self_signed() -> (Vec<u8>, String) {
        use openssl::{asn1::Asn1Time, bn::BigNum, hash::MessageDigest, pkey::PKey, x509};
        let key = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        let mut name = x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "core-test").unwrap();
        let name = name.build();
        let mut b = x509::X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(7).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
            .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let cert = b.build();
        let pem = format!(
            "{}{}",
            String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
            String::from_utf8(cert.to_pem().unwrap()).unwrap()
        );
        (cert.to_der().unwrap(), pem)
    }

    #[tokio::test]
    async fn certificates_are_directories_of_one_version() {
        let vault = Arc::new(MemoryVault::new());
        let (der, pem) = self_signed();
        let v1 = vault.set_certificate("web", der.clone(), Some(("application/x-pem-file", &pem)));
        let public_only = pem[pem.find("-----BEGIN CERTIFICATE-----").unwrap()..].to_string();
        vault.set_certificate(
            "internal",
            der.clone(),
            Some(("application/x-pem-file", &public_only)),
        );
        let core = core_with(vault.clone(), Duration::ZERO);
        let web = path(&core, "certs/web").await.unwrap();
        assert_eq!(web.attr.kind, Kind::Dir);
        let files = core.readdir(web.attr.ino).await.unwrap();
        assert_eq!(
            names(&files),
            CERT_FILES,
            "every file, in their fixed order"
        );
        let internal = path(&core, "certs/internal").await.unwrap();
        let files = core.readdir(internal.attr.ino).await.unwrap();
        assert_eq!(names(&files), ["cert.pem", "chain.pem", "fullchain.pem"]);
        assert_eq!(
            path(&core, "certs/internal/privkey.pem").await.unwrap_err(),
            FsError::NotFound
        );
        // A renewal makes a new version; the old one stays under versions/.
        let cert_file = path(&core, "certs/web/cert.pem").await.unwrap();
        let before = read_all(&core, cert_file.attr.ino).await.unwrap();
        let (der2, pem2) = self_signed();
        vault.set_certificate("web", der2, Some(("application/x-pem-file", &pem2)));
        let after = read_all(&core, cert_file.attr.ino).await.unwrap();
        assert_ne!(before, after);
        let old = path(&core, &format!("versions/certs/web/{v1}/cert.pem"))
            .await
            .unwrap();
        assert_eq!(read_all(&core, old.attr.ino).await.unwrap(), before);
        assert_eq!(
            core.getxattr(old.attr.ino, "user.kvfs.version")
                .await
                .unwrap(),
            v1.as_bytes()
        );
    }
}
