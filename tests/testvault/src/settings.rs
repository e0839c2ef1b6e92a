//! Behaviour a test may change while the server runs.

use serde::{Deserialize, Serialize};

use crate::identities::PermissionModel;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Lifetime of every token the identity endpoints mint.
    pub token_lifetime_secs: i64,
    /// Items per list page when the client sends no `maxresults` (the service's maximum is 25).
    pub page_size: usize,
    /// Shuffle the items inside each list page (the service sorts; clients must not rely on it).
    pub shuffle_lists: bool,
    /// Put an empty page with a `nextLink` before every real page.
    pub empty_pages: bool,
    pub permission_model: PermissionModel,
    /// Name the challenge's authority after this server (`https://127.0.0.1:PORT/{tenant}`) instead of
    /// `https://login.windows.net/{tenant}` as every recorded real challenge does.
    pub challenge_authority_self: bool,
    /// Used in 403 messages, as the real vault names itself.
    pub vault_name: String,
    pub location: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            token_lifetime_secs: 3600,
            page_size: 25,
            shuffle_lists: false,
            empty_pages: false,
            permission_model: PermissionModel::Rbac,
            challenge_authority_self: false,
            vault_name: "testvault".into(),
            location: "local".into(),
        }
    }
}

impl Settings {
    /// Refuse settings a test could not mean.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=25).contains(&self.page_size) {
            return Err(format!("page_size must be 1..=25, got {}", self.page_size));
        }
        if self.token_lifetime_secs < 1 {
            return Err("token_lifetime_secs must be at least 1".into());
        }
        Ok(())
    }
}
