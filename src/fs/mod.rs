//! The filesystem core: the tree of doc/SEMANTICS.md, inode numbers, attributes, open-file snapshots
//! and the cache in front of the vault. It knows nothing of fuser, so it is tested without a kernel.

pub mod cache;
pub mod core;
pub mod error;
pub mod inodes;
pub mod journal;
pub mod node;
pub mod prefetch;
