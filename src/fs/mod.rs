//! The filesystem core: the tree of doc/SEMANTICS.md, inode numbers, attributes, open-file snapshots
//! and the cache in front of the vault. It knows nothing of fuser, so it is tested without a kernel.

pub(crate) mod cache;
pub(crate) mod core;
pub(crate) mod error;
pub(crate) mod inodes;
pub(crate) mod journal;
pub(crate) mod node;
pub(crate) mod prefetch;
