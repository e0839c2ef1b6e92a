//! Seed documents: the objects a vault starts with (or that a test adds in one go).
//! Applying a seed to a name that exists adds a new version, so a seed can also rotate.

use serde::{Deserialize, Serialize};

use crate::crypto::{self, CertBundle, CertRequest, Curve, KeyMaterial, KeySpec};
use crate::state::State;
use crate::store::{AttributePatch, CertInput, KeyInput, SecretInput, Tags};
use crate::vault::{self, PEM, PKCS12};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    #[serde(default)]
    pub secrets: Vec<SeedSecret>,
    #[serde(default)]
    pub keys: Vec<SeedKey>,
    #[serde(default)]
    pub certificates: Vec<SeedCertificate>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedSecret {
    pub name: String,
    /// The current value.
    pub value: String,
    /// Older values, oldest first; each becomes a version before the current one.
    #[serde(default)]
    pub previous: Vec<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub tags: Option<Tags>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub not_before: Option<i64>,
    #[serde(default)]
    pub expires: Option<i64>,
    /// Seconds ago that every version was written (`created`/`updated`), for a vault filled
    /// long before it is read; default: now.
    #[serde(default)]
    pub written_ago_s: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedKey {
    pub name: String,
    /// RSA, RSA-HSM, EC or EC-HSM.
    #[serde(default = "rsa")]
    pub kty: String,
    /// RSA modulus bits (2048, 3072, 4096).
    #[serde(default)]
    pub size: Option<u32>,
    /// P-256, P-384 or P-521.
    #[serde(default)]
    pub curve: Option<String>,
    #[serde(default = "one")]
    pub versions: u32,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub tags: Option<Tags>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedCertificate {
    pub name: String,
    pub subject: String,
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// `chain`: leaf issued by testvault's intermediate CA (chain = intermediate);
    /// `self`: self-signed.
    #[serde(default = "chain")]
    pub issuer: String,
    /// application/x-pkcs12 (default) or application/x-pem-file.
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default = "yes")]
    pub exportable: bool,
    /// RSA (2048) or EC (P-256).
    #[serde(default = "rsa")]
    pub key: String,
    #[serde(default = "year")]
    pub validity_days: u32,
    #[serde(default = "one")]
    pub versions: u32,
    #[serde(default)]
    pub tags: Option<Tags>,
}

fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn rsa() -> String {
    "RSA".into()
}
fn chain() -> String {
    "chain".into()
}
fn year() -> u32 {
    365
}

impl Seed {
    pub fn from_json(text: &str) -> Result<Seed, String> {
        serde_json::from_str(text).map_err(|e| format!("invalid seed: {e}"))
    }
}

fn key_spec(kty: &str, size: Option<u32>, curve: Option<&str>) -> Result<KeySpec, String> {
    match kty {
        "RSA" | "RSA-HSM" => match size.unwrap_or(2048) {
            s @ (2048 | 3072 | 4096) => Ok(KeySpec::Rsa(s)),
            s => Err(format!("RSA size {s} is not 2048, 3072 or 4096")),
        },
        "EC" | "EC-HSM" => {
            let c = curve.unwrap_or("P-256");
            Curve::from_jwk_name(c)
                .map(KeySpec::Ec)
                .ok_or_else(|| format!("unknown curve {c}"))
        }
        other => Err(format!("unsupported key type {other}")),
    }
}

/// Add everything in `seed` to the vault. Stops at the first object it cannot add.
pub fn apply(state: &State, seed: &Seed) -> Result<(), String> {
    for s in &seed.secrets {
        let values = s.previous.iter().chain(std::iter::once(&s.value));
        let count = s.previous.len() + 1;
        for (i, value) in values.enumerate() {
            let last = i + 1 == count;
            let input = SecretInput {
                value: value.clone(),
                content_type: s.content_type.clone(),
                attributes: AttributePatch {
                    enabled: Some(!last || s.enabled),
                    nbf: Some(s.not_before),
                    exp: Some(s.expires),
                },
                tags: s.tags.clone(),
                written_at: s.written_ago_s.map(|ago| crate::store::now() - ago),
            };
            state
                .store
                .lock()
                .set_secret(&s.name, input)
                .map_err(|e| format!("secret {}: {}", s.name, e.message))?;
        }
    }
    // Generate every key first, on all cores, then add the objects in seed order.
    let mut specs = Vec::new();
    for k in &seed.keys {
        let spec = key_spec(&k.kty, k.size, k.curve.as_deref())
            .map_err(|e| format!("key {}: {e}", k.name))?;
        specs.extend(std::iter::repeat_n(spec, k.versions.max(1) as usize));
    }
    for c in &seed.certificates {
        let spec = cert_key_spec(c)?;
        specs.extend(std::iter::repeat_n(spec, c.versions.max(1) as usize));
    }
    let mut generated = crypto::generate_many(&specs)
        .map_err(|e| format!("key generation: {e}"))?
        .into_iter();
    let mut next_key = || generated.next().expect("one key per spec");
    for k in &seed.keys {
        for i in 0..k.versions.max(1) {
            let last = i + 1 == k.versions.max(1);
            let input = KeyInput {
                key: next_key(),
                hsm: k.kty.ends_with("-HSM"),
                key_ops: None,
                attributes: AttributePatch {
                    enabled: Some(!last || k.enabled),
                    ..Default::default()
                },
                tags: k.tags.clone(),
            };
            state
                .store
                .lock()
                .add_key(&k.name, input)
                .map_err(|e| format!("key {}: {}", k.name, e.message))?;
        }
    }
    for c in &seed.certificates {
        for _ in 0..c.versions.max(1) {
            add_certificate(state, c, next_key())
                .map_err(|e| format!("certificate {}: {e}", c.name))?;
        }
    }
    Ok(())
}

fn cert_key_spec(c: &SeedCertificate) -> Result<KeySpec, String> {
    match c.key.as_str() {
        "RSA" => Ok(KeySpec::Rsa(2048)),
        "EC" => Ok(KeySpec::Ec(Curve::P256)),
        other => Err(format!(
            "certificate {}: key must be RSA or EC, not {other}",
            c.name
        )),
    }
}

fn add_certificate(state: &State, c: &SeedCertificate, key: KeyMaterial) -> Result<(), String> {
    let content_type = c.content_type.clone().unwrap_or_else(|| PKCS12.into());
    if content_type != PKCS12 && content_type != PEM {
        return Err(format!("content_type must be {PKCS12} or {PEM}"));
    }
    let request = CertRequest {
        subject: c.subject.clone(),
        dns_names: c.dns_names.clone(),
        ekus: vec!["1.3.6.1.5.5.7.3.1".into(), "1.3.6.1.5.5.7.3.2".into()],
        key_usage: vec!["digitalSignature".into(), "keyEncipherment".into()],
        validity_months: (c.validity_days / 30).max(1),
        ..Default::default()
    };
    let (leaf, chain, issuer) = match c.issuer.as_str() {
        "chain" => (
            state
                .intermediate
                .issue_leaf(&key, &request, &[], c.validity_days)
                .map_err(|e| e.to_string())?,
            vec![state.intermediate.cert.clone()],
            "Unknown",
        ),
        "self" => (
            crypto::self_signed(&key, &request).map_err(|e| e.to_string())?,
            Vec::new(),
            "Self",
        ),
        other => return Err(format!("issuer must be chain or self, not {other}")),
    };
    let bundle = CertBundle { leaf, chain, key };
    let mut policy = vault::complete_policy(
        None,
        vault::default_policy_for(Some(&bundle), &content_type, issuer),
    );
    policy["key_props"]["exportable"] = serde_json::json!(c.exportable);
    let secret_value =
        vault::secret_value_for(&bundle, &content_type, c.exportable).map_err(|e| e.message)?;
    let input = CertInput {
        bundle,
        policy,
        attributes: AttributePatch::default(),
        tags: c.tags.clone(),
        operation: None,
    };
    state
        .store
        .lock()
        .add_certificate(&c.name, input, &content_type, secret_value)
        .map_err(|e| e.message)?;
    Ok(())
}
