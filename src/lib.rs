//! kvfs: an Azure Key Vault as a live, read-only filesystem.
//!
//! Three layers, dependencies in one direction: [`vault`] (a client trait over Key Vault),
//! [`fs`] (the filesystem core: tree, inodes, attributes, cache — no FUSE), and [`fuse`] (a thin
//! adapter from fuser's callbacks to the core). [`cli`] and `main.rs` wire them to a mount.

pub mod auth;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod fs;
pub mod fuse;
pub mod fusedev;
#[doc(hidden)]
pub mod fuzzing;
pub mod harden;
pub mod http;
pub mod invalidate;
pub mod ipc;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod mount;
pub mod render;
pub mod vault;
