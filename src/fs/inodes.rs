//! Inode numbers: one per node (names folded to lower case), stable while the kernel remembers
//! it. Fixed directories are never forgotten; object inodes go when the kernel's lookup count
//! drops to zero. With a [`Journal`], every change is written there before the kernel can see
//! the number, so a successor process resumes the same table.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::journal::{Journal, Record, Replayed};
use super::node::Node;

pub(crate) const ROOT: u64 = 1;

/// Lookup count of an inode taken over from a predecessor: the kernel's real count was not
/// journaled (it changes on every lookup), so the inode is kept for the life of this process.
/// A few hundred bytes per object ever looked up, bounded by the vault's size.
const INHERITED: u64 = u64::MAX / 2;

struct Slot {
    node: Node,
    lookups: u64,
}

struct Table {
    by_key: HashMap<Node, u64>,
    by_ino: HashMap<u64, Slot>,
    next: u64,
}

pub(crate) struct Inodes {
    table: Mutex<Table>,
    journal: Option<Arc<Journal>>,
    /// A failed journal write is logged once: the mount works on, only a restart would lose
    /// the numbers written since.
    journal_failed: AtomicBool,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut by_key = HashMap::new();
        let mut by_ino = HashMap::new();
        by_key.insert(Node::Root, ROOT);
        by_ino.insert(
            ROOT,
            Slot {
                node: Node::Root,
                lookups: 0,
            },
        );
        Inodes {
            table: Mutex::new(Table {
                by_key,
                by_ino,
                next: ROOT + 1,
            }),
            journal: None,
            journal_failed: AtomicBool::new(false),
        }
    }
}

fn is_fixed(node: &Node) -> bool {
    matches!(
        node,
        Node::Root | Node::Collection(_) | Node::Versions | Node::VersionsOf(_)
    )
}

impl Table {
    /// The inode of `node`; a new one is also returned as a journal record.
    fn get_or_insert(&mut self, node: &Node, new: &mut Vec<Record>) -> u64 {
        let key = node.key();
        if let Some(&ino) = self.by_key.get(&key) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_key.insert(key, ino);
        self.by_ino.insert(
            ino,
            Slot {
                node: node.clone(),
                lookups: 0,
            },
        );
        new.push(Record::Insert {
            ino,
            path: node.path(),
        });
        ino
    }
}

impl Inodes {
    /// The table a predecessor journaled, written on to the same journal. Paths that name no
    /// node (a journal from a different tree) are skipped.
    pub(crate) fn resume(journal: Arc<Journal>, replayed: Replayed) -> Inodes {
        let mut inodes = Inodes::default();
        {
            let t = inodes.table.get_mut();
            for (ino, path) in replayed.live {
                let Some(node) = Node::from_path(&path) else {
                    tracing::warn!(ino, path, "inode journal names no node; skipped");
                    continue;
                };
                if node == Node::Root {
                    continue;
                }
                t.next = t.next.max(ino + 1);
                t.by_key.insert(node.key(), ino);
                t.by_ino.insert(
                    ino,
                    Slot {
                        node,
                        lookups: INHERITED,
                    },
                );
            }
            t.next = t.next.max(replayed.next);
        }
        inodes.journal = Some(journal);
        inodes
    }

    /// An empty table written to `journal`.
    pub(crate) fn journaled(journal: Arc<Journal>) -> Inodes {
        Inodes {
            journal: Some(journal),
            ..Inodes::default()
        }
    }

    /// Write `records` before the caller hands any of them to the kernel (the table is still
    /// locked, so records are in table order), and checkpoint when the journal asks.
    fn journal(&self, t: &Table, records: &[Record]) {
        let Some(journal) = &self.journal else {
            return;
        };
        if records.is_empty() {
            return;
        }
        let result = journal.append(records).and_then(|due| {
            if !due {
                return Ok(());
            }
            let live = t
                .by_ino
                .iter()
                .filter(|(ino, _)| **ino != ROOT)
                .map(|(ino, slot)| (*ino, slot.node.path()));
            journal.checkpoint(live, t.next)
        });
        if let Err(e) = result
            && !self.journal_failed.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "cannot write the inode journal ({e}); a restart of kvfs would lose inode numbers"
            );
        }
    }

    /// The inode of `node`, created if new; counts one kernel lookup when `count_lookup`.
    pub(crate) fn get_or_insert(&self, node: &Node, count_lookup: bool) -> u64 {
        let mut new = Vec::new();
        let mut t = self.table.lock();
        let ino = t.get_or_insert(node, &mut new);
        if count_lookup && let Some(slot) = t.by_ino.get_mut(&ino) {
            slot.lookups = slot.lookups.saturating_add(1);
        }
        self.journal(&t, &new);
        ino
    }

    /// Inode number without counting a lookup (readdir entries).
    pub(crate) fn peek_or_insert(&self, node: &Node) -> u64 {
        self.get_or_insert(node, false)
    }

    /// Inode numbers of many nodes without counting lookups (a listing): one journal write.
    pub(crate) fn peek_or_insert_all<'a>(
        &self,
        nodes: impl IntoIterator<Item = &'a Node>,
    ) -> Vec<u64> {
        let mut new = Vec::new();
        let mut t = self.table.lock();
        let inos = nodes
            .into_iter()
            .map(|n| t.get_or_insert(n, &mut new))
            .collect();
        self.journal(&t, &new);
        inos
    }

    /// The inode of `node` if the kernel may know it (no insertion): what to invalidate when
    /// the object changes.
    pub(crate) fn existing(&self, node: &Node) -> Option<u64> {
        self.table.lock().by_key.get(&node.key()).copied()
    }

    pub(crate) fn node(&self, ino: u64) -> Option<Node> {
        self.table.lock().by_ino.get(&ino).map(|s| s.node.clone())
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub(crate) fn forget(&self, ino: u64, n: u64) {
        let mut t = self.table.lock();
        let remove = match t.by_ino.get_mut(&ino) {
            Some(slot) => {
                slot.lookups = slot.lookups.saturating_sub(n);
                slot.lookups == 0 && !is_fixed(&slot.node)
            }
            None => false,
        };
        if remove && let Some(slot) = t.by_ino.remove(&ino) {
            t.by_key.remove(&slot.node.key());
            self.journal(&t, &[Record::Remove { ino }]);
        }
    }

    /// Inodes taken over from a predecessor that show a current value (no explicit version):
    /// what the kernel may still hold attributes and pages of, as the predecessor saw them.
    pub(crate) fn inherited_current(&self) -> Vec<u64> {
        self.table
            .lock()
            .by_ino
            .iter()
            .filter(|(_, slot)| {
                slot.lookups >= INHERITED
                    && slot.node.version().is_none()
                    && matches!(slot.node, Node::Object { .. } | Node::CertFile { .. })
            })
            .map(|(ino, _)| *ino)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::Collection;

    fn secret(name: &str) -> Node {
        Node::Object {
            collection: Collection::Secrets,
            name: name.into(),
            version: None,
        }
    }

    #[test]
    fn same_object_in_any_case_is_one_inode_until_forgotten() {
        let inodes = Inodes::default();
        let a = inodes.get_or_insert(&secret("Db"), true);
        let b = inodes.get_or_insert(&secret("db"), true);
        assert_eq!(a, b);
        assert_eq!(inodes.node(a), Some(secret("Db")));
        inodes.forget(a, 1);
        assert!(inodes.node(a).is_some());
        inodes.forget(a, 1);
        assert!(inodes.node(a).is_none());
        let c = inodes.get_or_insert(&secret("db"), true);
        assert_ne!(a, c, "a forgotten number is not reused");
    }

    #[test]
    fn a_successor_answers_the_same_numbers_and_keeps_them() {
        let journal = Arc::new(Journal::create().unwrap());
        let first = Inodes::journaled(journal.clone());
        let dir = first.get_or_insert(&Node::Collection(Collection::Secrets), true);
        let db = first.get_or_insert(&secret("Db"), true);
        let gone = first.get_or_insert(&secret("gone"), true);
        first.forget(gone, 1);
        let listed = first.peek_or_insert_all(&[secret("a"), secret("db")]);
        assert_eq!(listed[1], db);

        let (journal, replayed) = Journal::adopt(journal.try_clone_fd().unwrap()).unwrap();
        let second = Inodes::resume(Arc::new(journal), replayed);
        assert_eq!(second.node(db), Some(secret("Db")));
        assert_eq!(second.get_or_insert(&secret("db"), true), db);
        assert_eq!(
            second.get_or_insert(&Node::Collection(Collection::Secrets), true),
            dir
        );
        assert_eq!(second.node(listed[0]), Some(secret("a")));
        assert_eq!(second.node(gone), None);
        let new = second.get_or_insert(&secret("new"), true);
        assert!(new > listed[0] && new != gone, "numbers are never reused");
        // The kernel's count from before is unknown: an inherited inode outlives a forget.
        second.forget(db, 1);
        assert_eq!(second.node(db), Some(secret("Db")));
        assert_eq!(
            {
                let mut v = second.inherited_current();
                v.sort();
                v
            },
            {
                let mut v = vec![db, listed[0]];
                v.sort();
                v
            },
            "inherited files (not directories) are what the kernel may hold stale"
        );
        // What this process handed out itself goes as usual.
        second.forget(new, 1);
        assert_eq!(second.node(new), None);
    }

    #[test]
    fn fixed_directories_stay() {
        let inodes = Inodes::default();
        let v = inodes.get_or_insert(&Node::Versions, true);
        inodes.forget(v, 1);
        assert_eq!(inodes.node(v), Some(Node::Versions));
        inodes.forget(ROOT, 5);
        assert_eq!(inodes.node(ROOT), Some(Node::Root));
    }
}
