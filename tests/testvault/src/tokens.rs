//! Access tokens: minted by the token endpoints, checked by the vault.
//!
//! Tokens are real JWTs (HS256 with a key only this process knows) carrying the claims Entra ID
//! puts in app tokens (`aud`, `iss`, `tid`, `appid`, `oid`, `exp`), plus `xms_tv_*` claims naming
//! the testvault identity and how the token was obtained, so tests can see who called.
//! Revocation bumps a generation number: tokens minted before it are refused with a fresh challenge.

use std::sync::atomic::{AtomicU64, Ordering};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::identities::Identity;
use crate::store::now;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub aud: String,
    pub iss: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub tid: String,
    pub appid: String,
    pub oid: String,
    pub sub: String,
    pub idtyp: String,
    /// testvault identity name.
    pub xms_tv_identity: String,
    /// How the token was obtained: client_secret, client_certificate, federated, managed_identity, minted.
    pub xms_tv_grant: String,
    /// Revocation generation at minting time.
    pub xms_tv_gen: u64,
    /// Client capabilities the token request declared (`CP1`: the client handles CAE claims
    /// challenges), as Entra ID records them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xms_cc: Vec<String>,
}

impl Claims {
    /// Whether the client declared capability `CP1` (continuous access evaluation).
    pub fn handles_claims_challenges(&self) -> bool {
        self.xms_cc.iter().any(|c| c.eq_ignore_ascii_case("CP1"))
    }
}

/// Why the vault refuses a bearer token; each maps to a 401 with the challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenProblem {
    Missing,
    Malformed,
    Expired,
    Revoked,
    /// Revoked, and the token says its client handles claims challenges (CAE): the vault answers
    /// with a claims challenge, which makes the client fetch a new token instead of a cached one.
    RevokedClaimsChallenge,
    WrongAudience(String),
    WrongIssuer(String),
}

impl TokenProblem {
    /// The AKV message the service sends for this problem.
    pub fn message(&self, expected_audience: &str, tenant: &str) -> String {
        match self {
            TokenProblem::Missing => "AKV10000: Request is missing a Bearer or PoP token.".into(),
            TokenProblem::Malformed => {
                "AKV10022: Invalid token: the token is not a valid JWT.".into()
            }
            TokenProblem::Expired => {
                "AKV10010: Token validation failed: the token is expired.".into()
            }
            TokenProblem::Revoked | TokenProblem::RevokedClaimsChallenge => {
                "AKV10010: Token validation failed: the token has been revoked.".into()
            }
            TokenProblem::WrongAudience(found) => {
                format!("AKV10022: Invalid audience. Expected {expected_audience}, found: {found}.")
            }
            TokenProblem::WrongIssuer(found) => format!(
                "AKV10032: Invalid issuer. Expected one of https://sts.windows.net/{tenant}/, found {found}."
            ),
        }
    }
}

pub struct TokenIssuer {
    key: Vec<u8>,
    generation: AtomicU64,
}

impl Default for TokenIssuer {
    fn default() -> Self {
        let key: [u8; 32] = rand::rng().random();
        TokenIssuer {
            key: key.to_vec(),
            generation: AtomicU64::new(0),
        }
    }
}

impl TokenIssuer {
    /// A token for `identity` with audience `audience`, valid `lifetime_secs` from now.
    pub fn mint(
        &self,
        identity: &Identity,
        audience: &str,
        lifetime_secs: i64,
        grant: &str,
    ) -> (String, Claims) {
        self.mint_with_capabilities(identity, audience, lifetime_secs, grant, Vec::new())
    }

    /// `mint`, recording the client capabilities (`xms_cc`) the token request declared.
    pub fn mint_with_capabilities(
        &self,
        identity: &Identity,
        audience: &str,
        lifetime_secs: i64,
        grant: &str,
        capabilities: Vec<String>,
    ) -> (String, Claims) {
        let t = now();
        let claims = Claims {
            aud: audience.to_string(),
            iss: format!("https://sts.windows.net/{}/", identity.tenant_id),
            iat: t,
            nbf: t - 300,
            exp: t + lifetime_secs.max(1),
            tid: identity.tenant_id.clone(),
            appid: identity.client_id.clone(),
            oid: identity.object_id.clone(),
            sub: identity.object_id.clone(),
            idtyp: if identity.kind == crate::identities::IdentityKind::User {
                "user".into()
            } else {
                "app".into()
            },
            xms_tv_identity: identity.name.clone(),
            xms_tv_grant: grant.to_string(),
            xms_tv_gen: self.generation.load(Ordering::SeqCst),
            xms_cc: capabilities,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&self.key),
        )
        .expect("HS256 encoding cannot fail");
        crate::audit::record(crate::audit::Kind::Token, &token);
        (token, claims)
    }

    /// Every token minted so far stops working.
    pub fn revoke_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Check a bearer token for this vault: signature, lifetime, revocation, audience, tenant.
    pub fn validate(
        &self,
        token: &str,
        accepted_audiences: &[String],
        tenant: &str,
    ) -> Result<Claims, TokenProblem> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_aud = false;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Claims>(
            token,
            &DecodingKey::from_secret(&self.key),
            &validation,
        )
        .map_err(|_| TokenProblem::Malformed)?;
        let claims = data.claims;
        if claims.exp <= now() {
            return Err(TokenProblem::Expired);
        }
        if claims.xms_tv_gen < self.generation.load(Ordering::SeqCst) {
            return Err(if claims.handles_claims_challenges() {
                TokenProblem::RevokedClaimsChallenge
            } else {
                TokenProblem::Revoked
            });
        }
        if !accepted_audiences
            .iter()
            .any(|a| a.trim_end_matches('/') == claims.aud)
        {
            return Err(TokenProblem::WrongAudience(claims.aud));
        }
        if !claims.tid.eq_ignore_ascii_case(tenant) {
            return Err(TokenProblem::WrongIssuer(claims.iss));
        }
        Ok(claims)
    }
}

/// The resource (audience) a v2 scope names: `https://vault.azure.net/.default` → `https://vault.azure.net`.
pub fn audience_from_scope(scope: &str) -> Option<String> {
    scope
        .split_whitespace()
        .find_map(|s| s.strip_suffix("/.default"))
        .map(|s| s.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identities::{AccessPolicy, IdentityKind};

    fn identity(tenant: &str) -> Identity {
        Identity {
            name: "app".into(),
            kind: IdentityKind::App,
            tenant_id: tenant.into(),
            client_id: "cid".into(),
            object_id: "oid".into(),
            resource_id: None,
            client_secret: None,
            certificate_thumbprints: vec![],
            certificate_keys: vec![],
            federations: vec![],
            roles: vec![],
            access_policy: AccessPolicy::default(),
        }
    }

    const AUD: &str = "https://vault.azure.net";

    #[test]
    fn minted_token_validates_and_names_the_identity() {
        let issuer = TokenIssuer::default();
        let (token, _) = issuer.mint(&identity("t1"), AUD, 60, "client_secret");
        let claims = issuer.validate(&token, &[AUD.into()], "t1").unwrap();
        assert_eq!(claims.xms_tv_identity, "app");
        assert_eq!(claims.appid, "cid");
    }

    #[test]
    fn revocation_audience_tenant_and_forgery_are_refused() {
        let issuer = TokenIssuer::default();
        let (token, _) = issuer.mint(&identity("t1"), AUD, 60, "client_secret");
        assert!(matches!(
            issuer.validate(&token, &["https://other".into()], "t1"),
            Err(TokenProblem::WrongAudience(_))
        ));
        assert!(matches!(
            issuer.validate(&token, &[AUD.into()], "t2"),
            Err(TokenProblem::WrongIssuer(_))
        ));
        let other = TokenIssuer::default();
        assert_eq!(
            other.validate(&token, &[AUD.into()], "t1"),
            Err(TokenProblem::Malformed)
        );
        issuer.revoke_all();
        assert_eq!(
            issuer.validate(&token, &[AUD.into()], "t1"),
            Err(TokenProblem::Revoked)
        );
        let (fresh, _) = issuer.mint(&identity("t1"), AUD, 60, "client_secret");
        assert!(issuer.validate(&fresh, &[AUD.into()], "t1").is_ok());
    }

    #[test]
    fn revoked_cae_capable_token_gets_the_claims_challenge() {
        let issuer = TokenIssuer::default();
        let (cae, _) = issuer.mint_with_capabilities(
            &identity("t1"),
            AUD,
            60,
            "client_secret",
            vec!["CP1".into()],
        );
        let (plain, _) = issuer.mint(&identity("t1"), AUD, 60, "client_secret");
        assert!(
            issuer
                .validate(&cae, &[AUD.into()], "t1")
                .unwrap()
                .handles_claims_challenges()
        );
        issuer.revoke_all();
        assert_eq!(
            issuer.validate(&cae, &[AUD.into()], "t1"),
            Err(TokenProblem::RevokedClaimsChallenge)
        );
        assert_eq!(
            issuer.validate(&plain, &[AUD.into()], "t1"),
            Err(TokenProblem::Revoked)
        );
    }

    #[test]
    fn scope_to_audience() {
        assert_eq!(
            audience_from_scope("https://vault.azure.net/.default").as_deref(),
            Some("https://vault.azure.net")
        );
        assert_eq!(audience_from_scope("openid profile"), None);
    }
}
