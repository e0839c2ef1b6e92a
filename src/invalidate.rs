//! Kernel cache invalidation: when the daemon learns that an object changed (a refresh brought a
//! new version, or the object went away), the kernel forgets exactly that object's inodes —
//! attributes and cached pages — and its name in the collection directory, through fuser's
//! notifier, so the next `stat` or read asks again instead of waiting out a kernel TTL.
//!
//! Notifications are written from a thread of their own, never from a request handler: the
//! kernel may wait on pages a pending read holds while it processes one, and that read's answer
//! must not be stuck behind it.

use std::sync::mpsc;
use std::sync::{Arc, Weak};

use fuser::{INodeNo, Notifier};

use crate::fs::cache::Change;
use crate::fs::core::FsCore;
use crate::fs::node::collection_dir;

/// Sends invalidations for [`Change`] events; cheap to clone, never blocks the caller.
#[derive(Clone)]
pub(crate) struct Invalidator {
    tx: mpsc::Sender<Change>,
}

/// Where the notifications go: the kernel in production, a recorder in tests.
pub(crate) trait KernelCache: Send + 'static {
    /// Drop the attributes and cached pages of `ino`.
    fn inval_inode(&self, ino: u64) -> std::io::Result<()>;
    /// Drop the dentry `name` in directory `parent`.
    fn inval_entry(&self, parent: u64, name: &str) -> std::io::Result<()>;
}

impl KernelCache for Notifier {
    fn inval_inode(&self, ino: u64) -> std::io::Result<()> {
        // Offset 0, length 0: attributes and every cached page.
        Notifier::inval_inode(self, INodeNo(ino), 0, 0)
    }

    fn inval_entry(&self, parent: u64, name: &str) -> std::io::Result<()> {
        Notifier::inval_entry(self, INodeNo(parent), name.as_ref())
    }
}

impl Invalidator {
    /// Start the notification thread. It ends when every `Invalidator` clone is dropped or the
    /// filesystem is gone (it holds the core weakly: the core's cache holds the `Invalidator`).
    pub(crate) fn start(core: &Arc<FsCore>, kernel: impl KernelCache) -> Invalidator {
        let (tx, rx) = mpsc::channel::<Change>();
        let core: Weak<FsCore> = Arc::downgrade(core);
        let spawned = std::thread::Builder::new()
            .name("kvfs-invalidate".into())
            .spawn(move || {
                for change in rx {
                    let Some(core) = core.upgrade() else { break };
                    apply(&core, &kernel, &change);
                }
            });
        if let Err(e) = spawned {
            // Without it the kernel still revalidates once its (short) TTLs run out.
            tracing::warn!("cannot start the kernel invalidation thread: {e}");
        }
        Invalidator { tx }
    }

    pub(crate) fn changed(&self, change: Change) {
        // A send fails only once the thread is gone (unmounting): nothing left to invalidate.
        let _ = self.tx.send(change);
    }
}

fn apply(core: &FsCore, kernel: &impl KernelCache, change: &Change) {
    let (collection, name) = match change {
        Change::Object { collection, name } => (*collection, Some(name.as_str())),
        Change::Listing(collection) => (*collection, None),
    };
    let Some(dir) = core.collection_inode(collection) else {
        // The kernel never looked into this collection: it caches nothing of it.
        return;
    };
    let report = |what: &str, r: std::io::Result<()>| match r {
        // ENOENT: the kernel had already forgotten it.
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
            tracing::debug!(what, "kernel invalidation failed: {e}")
        }
        _ => {}
    };
    match name {
        Some(name) => {
            for ino in core.inodes_of_latest(collection, name) {
                report("inode", kernel.inval_inode(ino));
            }
            // The dentry too, so a deleted object stops resolving and a created one is looked
            // up again (a cached negative entry would hide it until its TTL).
            report("entry", kernel.inval_entry(dir, name));
            let lower = name.to_ascii_lowercase();
            if lower != name {
                report("entry", kernel.inval_entry(dir, &lower));
            }
        }
        None => report("directory", kernel.inval_inode(dir)),
    }
    tracing::debug!(
        collection = collection_dir(collection),
        ?name,
        "kernel caches invalidated"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::cache::{Cache, CacheConfig};
    use crate::fs::core::Ownership;
    use crate::fs::inodes::ROOT;
    use crate::vault::Collection;
    use crate::vault::memory::MemoryVault;
    use parking_lot::Mutex;
    use std::time::Duration;

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl KernelCache for Recorder {
        fn inval_inode(&self, ino: u64) -> std::io::Result<()> {
            self.0.lock().push(format!("inode {ino}"));
            Ok(())
        }
        fn inval_entry(&self, parent: u64, name: &str) -> std::io::Result<()> {
            self.0.lock().push(format!("entry {parent}/{name}"));
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_changed_object_invalidates_exactly_its_inodes_and_name() {
        let vault = Arc::new(MemoryVault::new());
        vault.set_secret("db", b"one");
        vault.set_secret("other", b"x");
        let cache = Cache::new(vault, CacheConfig::default());
        let owner = Ownership {
            uid: 0,
            gid: 0,
            file_mode: 0o400,
            dir_mode: 0o500,
        };
        let core = Arc::new(FsCore::new(cache, owner, Duration::from_secs(60)));
        let recorder = Recorder::default();
        let apply_one = |c: Change| apply(&core, &recorder, &c);

        // Nothing looked up yet: the kernel holds nothing, so nothing is sent.
        apply_one(Change::Object {
            collection: Collection::Secrets,
            name: "db".into(),
        });
        assert!(recorder.0.lock().is_empty());

        let dir = core.lookup(ROOT, "secrets").await.unwrap().attr.ino;
        let db = core.lookup(dir, "db").await.unwrap().attr.ino;
        core.lookup(dir, "other").await.unwrap();
        apply_one(Change::Object {
            collection: Collection::Secrets,
            name: "DB".into(),
        });
        assert_eq!(
            *recorder.0.lock(),
            [
                format!("inode {db}"),
                format!("entry {dir}/DB"),
                format!("entry {dir}/db")
            ]
        );
        recorder.0.lock().clear();
        apply_one(Change::Listing(Collection::Secrets));
        assert_eq!(*recorder.0.lock(), [format!("inode {dir}")]);
    }
}
