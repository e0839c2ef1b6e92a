//! The server's shared state: vault contents, identities, tokens, faults, counters and settings.

use parking_lot::{Mutex, RwLock};

use crate::crypto::Authority;
use crate::faults::Faults;
use crate::identities::Directory;
use crate::observe::Observed;
use crate::settings::Settings;
use crate::store::Store;
use crate::tokens::TokenIssuer;

pub struct State {
    pub store: Mutex<Store>,
    pub directory: RwLock<Directory>,
    pub tokens: TokenIssuer,
    pub faults: Mutex<Faults>,
    pub observed: Mutex<Observed>,
    pub settings: RwLock<Settings>,
    /// Root of every certificate testvault makes: its TLS leaf, the client certificate, seed chains.
    pub ca: Authority,
    /// Issues the leaves of seeded certificates "with a chain".
    pub intermediate: Authority,
    /// Filled in once the listeners are bound.
    pub info: RwLock<crate::Info>,
}
