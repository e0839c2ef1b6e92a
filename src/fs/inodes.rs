//! Inode numbers: one per node (names folded to lower case), stable while the kernel remembers
//! it. Fixed directories are never forgotten; object inodes go when the kernel's lookup count
//! drops to zero.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::node::Node;

pub const ROOT: u64 = 1;

struct Slot {
    node: Node,
    lookups: u64,
}

struct Table {
    by_key: HashMap<Node, u64>,
    by_ino: HashMap<u64, Slot>,
    next: u64,
}

pub struct Inodes {
    table: Mutex<Table>,
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
        }
    }
}

fn is_fixed(node: &Node) -> bool {
    matches!(
        node,
        Node::Root | Node::Collection(_) | Node::Versions | Node::VersionsOf(_)
    )
}

impl Inodes {
    /// The inode of `node`, created if new; counts one kernel lookup when `count_lookup`.
    pub fn get_or_insert(&self, node: &Node, count_lookup: bool) -> u64 {
        let key = node.key();
        let mut t = self.table.lock();
        let ino = match t.by_key.get(&key) {
            Some(&ino) => ino,
            None => {
                let ino = t.next;
                t.next += 1;
                t.by_key.insert(key, ino);
                t.by_ino.insert(
                    ino,
                    Slot {
                        node: node.clone(),
                        lookups: 0,
                    },
                );
                ino
            }
        };
        if count_lookup && let Some(slot) = t.by_ino.get_mut(&ino) {
            slot.lookups += 1;
        }
        ino
    }

    /// Inode number without counting a lookup (readdir entries).
    pub fn peek_or_insert(&self, node: &Node) -> u64 {
        self.get_or_insert(node, false)
    }

    /// The inode of `node` if the kernel may know it (no insertion): what to invalidate when
    /// the object changes.
    pub fn existing(&self, node: &Node) -> Option<u64> {
        self.table.lock().by_key.get(&node.key()).copied()
    }

    pub fn node(&self, ino: u64) -> Option<Node> {
        self.table.lock().by_ino.get(&ino).map(|s| s.node.clone())
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
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
        }
    }

    pub fn len(&self) -> usize {
        self.table.lock().by_ino.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    fn fixed_directories_stay() {
        let inodes = Inodes::default();
        let v = inodes.get_or_insert(&Node::Versions, true);
        inodes.forget(v, 1);
        assert_eq!(inodes.node(v), Some(Node::Versions));
        inodes.forget(ROOT, 5);
        assert_eq!(inodes.node(ROOT), Some(Node::Root));
    }
}
