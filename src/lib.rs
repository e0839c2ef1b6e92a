//! kvfs: an Azure Key Vault as a live, read-only filesystem.
//!
//! The modules, bottom layer first. A module imports only from its own layer and those below;
//! doc/ARCHITECTURE.md lists where that does not hold yet, and follows a read, cold and warm,
//! through these modules.
//!
//! Leaves (nothing from the crate):
//! - `config`: option values as text (durations, modes, sizes) and the mount(8) `-o` syntax.
//! - `harden`: no core dumps or ptrace readers; the allocator that zeroes freed memory.
//! - `ipc`: JSON messages and file descriptors between kvfs processes (`SOCK_SEQPACKET`).
//! - `logging`: a sink that never blocks a request, JSON lines, rate limits (`log_limited!`).
//! - `metrics` (root, `health`): the process-wide counters every layer records into.
//! - `fusedev`: what fuser cannot do: mount, clone `/dev/fuse`, resend, abort a connection.
//! - `daemon`: detaching, and the pipe a detached child reports readiness on (`Readiness`).
//! - `http`: the HTTP client, retries (`retry`) and error wording shared by `vault` and `auth`.
//!
//! Vault:
//! - `vault`: the `VaultClient` trait the filesystem reads through, its values and errors.
//! - `vault::azure`: the client over the official `azure_security_keyvault_*` crates.
//! - `vault::guard`: the transport's guards: the vault's origin only, bodies up to a cap.
//! - `vault::challenge`: the authentication challenge, learned once, answered locally.
//! - `vault::clock`: a lower bound on the vault's clock, for revalidation by listing.
//! - `vault::pages`: the checks a listing makes between pages.
//! - `vault::refusals`: the vault's verdict on each token, told to the token cache.
//! - `vault::memory`: an in-memory vault with fault injection (unit tests only).
//!
//! On the vault:
//! - `auth`: which identity kvfs uses; each credential wrapped in a token cache (`token_cache`).
//! - `render`: keys (`key`) and certificates (`cert`) turned into PEM and PFX files.
//!
//! Filesystem (no fuser):
//! - `fs::node`: the tree as data: which node a (parent, name) pair is.
//! - `fs::inodes`, `fs::journal`: inode numbers, journaled so a successor keeps them.
//! - `fs::cache`: the cache in front of the vault (doc/CACHE.md).
//! - `fs::prefetch`: fetches ahead of a program that stats what it lists.
//! - `fs::core`: the operations (lookup, getattr, readdir, open, read, xattrs) on the cache.
//! - `fs::error`: `FsError`, its errno, and the cause an `EIO` or `EACCES` carries.
//!
//! Adapters:
//! - `fuse`: fuser's callbacks to `fs::core` and back; `failures` logs each failed request;
//!   `gate` lets a stopping worker finish the requests in hand.
//! - `invalidate`: what the cache learns changed, dropped from the kernel's caches.
//!
//! Settings:
//! - `cli`: the command line, one table of options, resolved into `MountSettings`
//!   (doc/CONFIGURATION.md).
//!
//! Processes (doc/DESIGN-restarts.md):
//! - `lifecycle`: `supervisor` holds the connection, `worker` serves it, `adopt` takes a live
//!   one up, `handoff` passes it to a new binary.
//! - `metrics::http`, `metrics::scrape`: the `/metrics`, `/healthz` and `/readyz` endpoints.
//!
//! Top:
//! - `mount`: `kvfs mount` and `kvfs unmount`, run as whichever process this is.
//! - `fuzzing`: entry points for the fuzz targets and property tests (doc/FUZZING.md).
//!
//! Only what the binary, the integration tests and the fuzz targets use is `pub`; everything else
//! is `pub(crate)`, so the compiler reports code nothing uses (`unreachable_pub` in Cargo.toml).

pub mod auth;
pub mod cli;
pub mod config;
pub mod daemon;
pub(crate) mod fs;
pub(crate) mod fuse;
pub(crate) mod fusedev;
#[doc(hidden)]
pub mod fuzzing;
pub mod harden;
pub mod http;
pub(crate) mod invalidate;
pub(crate) mod ipc;
pub(crate) mod lifecycle;
pub mod logging;
pub(crate) mod metrics;
pub mod mount;
pub(crate) mod render;
pub mod vault;
