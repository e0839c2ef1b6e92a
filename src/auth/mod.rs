//! Credentials: which identity kvfs authenticates as, and the token credentials for each method.
//!
//! `--auth auto` walks a fixed, documented order and never hangs (see [`AUTO_ORDER`]):
//! client-secret, client-certificate, workload-identity, managed identity through
//! `IDENTITY_ENDPOINT`, the Azure CLI (probed with a bounded `az account get-access-token`), then
//! the instance metadata service (probed with one token request bounded to 2 s). The first usable
//! one wins, decided at mount time; if none is usable the error is one line naming each method
//! and why it was not usable.
//!
//! The environment is an input ([`Env`]), not `std::env`, so the decision can be tested.
//!
//! Every credential is wrapped in [`CachedCredential`]: a token is reused until 5 minutes before
//! it expires (or half its lifetime, when that is shorter than 10 minutes), one refresh at a time;
//! a token the vault refuses is dropped and the credential rebuilt, with fresh tokens spaced out
//! while the vault keeps refusing them.
//!
//! The modules, in the order a mount uses them:
//! - `method`: the `--auth` methods and their names, one table.
//! - `plan`: the steps to try, from the command line and the environment (pure).
//! - `select`: trying them (`auto` probes) and the one-line reasons.
//! - `build`: the credential for a step; `entra` (client secret, and the options of every Entra
//!   ID app credential), `client_certificate`, `workload_identity`, `managed_identity` and
//!   `azure_cli` are the methods.
//! - `token_cache`: the cache every credential is wrapped in, told the vault's verdicts.
//! - `failure`: outage or refusal, and how a failure is worded.
//!
//! HTTP and TLS setup comes from [`crate::http`]; the vault's side of token verdicts is
//! [`crate::vault::refusals`].

mod azure_cli;
mod build;
mod client_certificate;
mod entra;
mod failure;
mod managed_identity;
mod method;
mod plan;
mod select;
#[cfg(test)]
mod testing;
mod token_cache;
mod workload_identity;

pub use entra::client_secret_credential;
pub(crate) use method::AuthMethod;
pub(crate) use plan::{AuthRequest, Env};
pub(crate) use select::{Limits, select};

/// The scope of every token kvfs asks for.
pub(crate) const VAULT_SCOPE: &str = "https://vault.azure.net/.default";
