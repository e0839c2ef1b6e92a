//! Key, signature and certificate plumbing for the emulator.
//!
//! Everything that touches key material or X.509 lives here so the HTTP handlers can stay
//! about Key Vault semantics. All cryptography and all ASN.1 goes through OpenSSL: the point
//! of the emulator is to hand clients bytes that real parsers accept, and a hand-rolled
//! encoder would only prove that it agrees with itself.

use std::fmt;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::{DecodePaddingMode, general_purpose};
use openssl::asn1::{Asn1Object, Asn1Time, Asn1TimeRef};
use openssl::bn::{BigNum, BigNumContext, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::error::ErrorStack;
use openssl::hash::{MessageDigest, hash};
use openssl::md::{Md, MdRef};
use openssl::nid::Nid;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{Id, PKey, PKeyRef, Private};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::{Padding, Rsa};
use openssl::sign::RsaPssSaltlen;
use openssl::stack::Stack;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{
    X509, X509Builder, X509Name, X509NameBuilder, X509NameRef, X509Ref, X509ReqBuilder,
};
use serde_json::{Map, Value};

/// A failure worth showing to a client or a test author.
///
/// Kept as a plain message because the emulator turns it straight into a Key Vault error body;
/// the messages are written so they never echo key material back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoError(pub String);

impl CryptoError {
    fn new(msg: impl Into<String>) -> Self {
        CryptoError(msg.into())
    }
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CryptoError {}

impl From<ErrorStack> for CryptoError {
    fn from(e: ErrorStack) -> Self {
        // OpenSSL's error strings name the failing routine and reason, never the data.
        CryptoError(format!("openssl: {e}"))
    }
}

/// The NIST curves Key Vault offers; secp256k1 (`P-256K`) is deliberately absent because
/// nothing under test uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    pub fn jwk_name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }

    pub fn from_jwk_name(name: &str) -> Option<Curve> {
        match name {
            "P-256" => Some(Curve::P256),
            "P-384" => Some(Curve::P384),
            "P-521" => Some(Curve::P521),
            _ => None,
        }
    }

    /// JWK and JWS both demand fixed-width coordinates, so every encoder needs this width.
    pub fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    pub fn nid(self) -> Nid {
        match self {
            Curve::P256 => Nid::X9_62_PRIME256V1,
            Curve::P384 => Nid::SECP384R1,
            Curve::P521 => Nid::SECP521R1,
        }
    }

    fn from_nid(nid: Nid) -> Option<Curve> {
        [Curve::P256, Curve::P384, Curve::P521]
            .into_iter()
            .find(|c| c.nid() == nid)
    }

    fn group(self) -> Result<EcGroup, CryptoError> {
        Ok(EcGroup::from_curve_name(self.nid())?)
    }
}

/// Key type and size, the two things a Key Vault key policy chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySpec {
    Rsa(u32),
    Ec(Curve),
}

/// A private key the vault holds.
///
/// The spec is cached next to the key so that callers describing a key (JWK `kty`, policy
/// `key_size`) never have to go back to OpenSSL.
#[derive(Clone)]
pub struct KeyMaterial {
    pkey: PKey<Private>,
    spec: KeySpec,
}

impl fmt::Debug for KeyMaterial {
    /// Only the spec: keys end up in `{:?}` of bundles and test failures, which get logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// What a signing algorithm name means on the wire.
enum SigAlg {
    Pkcs1(&'static MdRef),
    Pss(&'static MdRef),
    Ecdsa(Curve),
}

fn parse_sig_alg(alg: &str) -> Result<(SigAlg, usize), CryptoError> {
    Ok(match alg {
        "RS256" => (SigAlg::Pkcs1(Md::sha256()), 32),
        "RS384" => (SigAlg::Pkcs1(Md::sha384()), 48),
        "RS512" => (SigAlg::Pkcs1(Md::sha512()), 64),
        "PS256" => (SigAlg::Pss(Md::sha256()), 32),
        "PS384" => (SigAlg::Pss(Md::sha384()), 48),
        "PS512" => (SigAlg::Pss(Md::sha512()), 64),
        "ES256" => (SigAlg::Ecdsa(Curve::P256), 32),
        "ES384" => (SigAlg::Ecdsa(Curve::P384), 48),
        "ES512" => (SigAlg::Ecdsa(Curve::P521), 64),
        other => {
            return Err(CryptoError(format!(
                "unsupported signature algorithm '{other}'"
            )));
        }
    })
}

/// Generate several keys at once on all cores: RSA generation dominates testvault's start-up
/// (a seeded vault needs eight RSA keys), and one key per core at a time is what keeps start-up
/// well under a second.
pub fn generate_many(specs: &[KeySpec]) -> Result<Vec<KeyMaterial>, CryptoError> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
        .min(specs.len().max(1));
    let mut slots: Vec<Option<Result<KeyMaterial, CryptoError>>> = vec![None; specs.len()];
    std::thread::scope(|scope| {
        let chunks: Vec<_> = slots
            .chunks_mut(specs.len().div_ceil(workers).max(1))
            .collect();
        let mut start = 0;
        for chunk in chunks {
            let part = &specs[start..start + chunk.len()];
            start += chunk.len();
            scope.spawn(move || {
                for (slot, spec) in chunk.iter_mut().zip(part) {
                    *slot = Some(KeyMaterial::generate(*spec));
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|s| s.expect("every slot is filled"))
        .collect()
}

impl KeyMaterial {
    pub fn generate(spec: KeySpec) -> Result<Self, CryptoError> {
        let pkey = match spec {
            KeySpec::Rsa(bits @ (2048 | 3072 | 4096)) => PKey::from_rsa(Rsa::generate(bits)?)?,
            KeySpec::Rsa(bits) => {
                return Err(CryptoError(format!(
                    "unsupported RSA key size {bits}; use 2048, 3072 or 4096"
                )));
            }
            KeySpec::Ec(curve) => {
                let group = curve.group()?;
                PKey::from_ec_key(EcKey::generate(&group)?)?
            }
        };
        Ok(KeyMaterial { pkey, spec })
    }

    /// Import from a JWK JSON object that includes private members. kty "RSA"/"RSA-HSM" needs n,e,d,p,q
    /// (dp,dq,qi computed when absent); "EC"/"EC-HSM" needs crv,x,y,d. Errors name the missing/invalid member.
    ///
    /// CRT members are optional because clients that build JWKs by hand often omit them, and
    /// the vault only needs them for speed.
    pub fn from_private_jwk(jwk: &Value) -> Result<Self, CryptoError> {
        let obj = jwk
            .as_object()
            .ok_or_else(|| CryptoError::new("JWK must be a JSON object"))?;
        let kty = obj
            .get("kty")
            .and_then(Value::as_str)
            .ok_or_else(|| CryptoError::new("JWK is missing 'kty'"))?;
        match kty {
            "RSA" | "RSA-HSM" => Self::from_rsa_jwk(obj),
            "EC" | "EC-HSM" => Self::from_ec_jwk(obj),
            other => Err(CryptoError(format!("unsupported JWK kty '{other}'"))),
        }
    }

    fn from_rsa_jwk(obj: &Map<String, Value>) -> Result<Self, CryptoError> {
        let n = jwk_bn(obj, "n")?;
        let e = jwk_bn(obj, "e")?;
        let d = jwk_bn(obj, "d")?;
        let p = jwk_bn(obj, "p")?;
        let q = jwk_bn(obj, "q")?;
        let mut ctx = BigNumContext::new()?;
        let one = BigNum::from_u32(1)?;
        let dp = match jwk_bn_opt(obj, "dp")? {
            Some(v) => v,
            None => {
                let mut pm1 = BigNum::new()?;
                pm1.checked_sub(&p, &one)?;
                let mut dp = BigNum::new()?;
                dp.nnmod(&d, &pm1, &mut ctx)?;
                dp
            }
        };
        let dq = match jwk_bn_opt(obj, "dq")? {
            Some(v) => v,
            None => {
                let mut qm1 = BigNum::new()?;
                qm1.checked_sub(&q, &one)?;
                let mut dq = BigNum::new()?;
                dq.nnmod(&d, &qm1, &mut ctx)?;
                dq
            }
        };
        let qi = match jwk_bn_opt(obj, "qi")? {
            Some(v) => v,
            None => {
                let mut qi = BigNum::new()?;
                qi.mod_inverse(&q, &p, &mut ctx)
                    .map_err(|_| CryptoError::new("JWK member 'q' has no inverse modulo 'p'"))?;
                qi
            }
        };
        let rsa = Rsa::from_private_components(n, e, d, p, q, dp, dq, qi)?;
        if !rsa.check_key().unwrap_or(false) {
            return Err(CryptoError::new(
                "JWK RSA members are inconsistent: 'n', 'e', 'd', 'p', 'q' (and CRT values) do not form one key",
            ));
        }
        Self::from_pkey(PKey::from_rsa(rsa)?)
    }

    fn from_ec_jwk(obj: &Map<String, Value>) -> Result<Self, CryptoError> {
        let crv = obj
            .get("crv")
            .and_then(Value::as_str)
            .ok_or_else(|| CryptoError::new("JWK is missing 'crv'"))?;
        let curve = Curve::from_jwk_name(crv).ok_or_else(|| {
            CryptoError(format!("JWK member 'crv' has unsupported curve '{crv}'"))
        })?;
        let len = curve.coordinate_len();
        let x = jwk_bytes(obj, "x")?;
        let y = jwk_bytes(obj, "y")?;
        let d = jwk_bytes(obj, "d")?;
        for (name, bytes) in [("x", &x), ("y", &y), ("d", &d)] {
            // Shorter is tolerated (a leading zero dropped by a sloppy encoder); longer cannot be
            // a value on this curve.
            if bytes.is_empty() || bytes.len() > len {
                return Err(CryptoError(format!(
                    "JWK member '{name}' must be {len} bytes for {crv}, got {}",
                    bytes.len()
                )));
            }
        }
        let group = curve.group()?;
        let x = BigNum::from_slice(&x)?;
        let y = BigNum::from_slice(&y)?;
        let d = BigNum::from_slice(&d)?;
        let public = EcKey::from_public_key_affine_coordinates(&group, &x, &y).map_err(|_| {
            CryptoError(format!("JWK members 'x' and 'y' are not a point on {crv}"))
        })?;
        let key = EcKey::from_private_components(&group, &d, public.public_key())
            .map_err(|_| CryptoError::new("JWK member 'd' is not a valid private scalar"))?;
        key.check_key().map_err(|_| {
            CryptoError::new("JWK member 'd' does not match the public point 'x'/'y'")
        })?;
        Self::from_pkey(PKey::from_ec_key(key)?)
    }

    pub fn from_pkey(pkey: PKey<Private>) -> Result<Self, CryptoError> {
        let spec = match pkey.id() {
            Id::RSA => KeySpec::Rsa(pkey.bits()),
            Id::EC => {
                let ec = pkey.ec_key()?;
                let curve = ec
                    .group()
                    .curve_name()
                    .and_then(Curve::from_nid)
                    .ok_or_else(|| {
                        CryptoError::new(
                            "unsupported EC curve; only P-256, P-384 and P-521 are supported",
                        )
                    })?;
                KeySpec::Ec(curve)
            }
            _ => {
                return Err(CryptoError::new(
                    "unsupported key type; only RSA and EC (P-256, P-384, P-521) keys are supported",
                ));
            }
        };
        Ok(KeyMaterial { pkey, spec })
    }

    pub fn pkey(&self) -> &PKey<Private> {
        &self.pkey
    }

    pub fn spec(&self) -> KeySpec {
        self.spec
    }

    pub fn kty(&self) -> &'static str {
        match self.spec {
            KeySpec::Rsa(_) => "RSA",
            KeySpec::Ec(_) => "EC",
        }
    }

    /// Public members only: {"kty","n","e"} or {"kty","crv","x","y"}; caller adds kid/key_ops.
    pub fn public_jwk(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("kty".into(), Value::from(self.kty()));
        match self.spec {
            KeySpec::Rsa(_) => {
                let rsa = self.pkey.rsa().expect("RSA spec holds an RSA key");
                m.insert("n".into(), Value::from(b64url(&rsa.n().to_vec())));
                m.insert("e".into(), Value::from(b64url(&rsa.e().to_vec())));
            }
            KeySpec::Ec(curve) => {
                let (x, y) = self
                    .ec_coordinates(curve)
                    .expect("EC key has affine coordinates");
                m.insert("crv".into(), Value::from(curve.jwk_name()));
                m.insert("x".into(), Value::from(b64url(&x)));
                m.insert("y".into(), Value::from(b64url(&y)));
            }
        }
        m
    }

    fn ec_coordinates(&self, curve: Curve) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        let ec = self.pkey.ec_key()?;
        let mut ctx = BigNumContext::new()?;
        let mut x = BigNum::new()?;
        let mut y = BigNum::new()?;
        ec.public_key()
            .affine_coordinates(ec.group(), &mut x, &mut y, &mut ctx)?;
        let len = curve.coordinate_len() as i32;
        Ok((x.to_vec_padded(len)?, y.to_vec_padded(len)?))
    }

    /// Key Vault signs a digest the client computed, so the hash step is skipped here and the
    /// digest length is checked instead; a wrong length is a client bug the real service rejects.
    pub fn sign_digest(&self, alg: &str, digest: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let (sig_alg, digest_len) = parse_sig_alg(alg)?;
        check_digest_len(alg, digest, digest_len)?;
        match sig_alg {
            SigAlg::Pkcs1(md) | SigAlg::Pss(md) => {
                self.require_rsa(alg)?;
                let mut ctx = PkeyCtx::new(&self.pkey)?;
                ctx.sign_init()?;
                configure_rsa_ctx(&mut ctx, &sig_alg, md)?;
                let mut sig = Vec::new();
                ctx.sign_to_vec(digest, &mut sig)?;
                Ok(sig)
            }
            SigAlg::Ecdsa(curve) => {
                self.require_curve(alg, curve)?;
                let ec = self.pkey.ec_key()?;
                let sig = EcdsaSig::sign(digest, &ec)?;
                let len = curve.coordinate_len() as i32;
                let mut out = sig.r().to_vec_padded(len)?;
                out.extend(sig.s().to_vec_padded(len)?);
                Ok(out)
            }
        }
    }

    /// `Ok(false)` for any signature that does not verify, including malformed ones, because
    /// Key Vault answers `{"value": false}` rather than an error for those; errors are reserved
    /// for requests that could never succeed (wrong algorithm for the key, wrong digest size).
    pub fn verify_digest(
        &self,
        alg: &str,
        digest: &[u8],
        signature: &[u8],
    ) -> Result<bool, CryptoError> {
        let (sig_alg, digest_len) = parse_sig_alg(alg)?;
        check_digest_len(alg, digest, digest_len)?;
        match sig_alg {
            SigAlg::Pkcs1(md) | SigAlg::Pss(md) => {
                self.require_rsa(alg)?;
                let mut ctx = PkeyCtx::new(&self.pkey)?;
                ctx.verify_init()?;
                configure_rsa_ctx(&mut ctx, &sig_alg, md)?;
                Ok(ctx.verify(digest, signature).unwrap_or(false))
            }
            SigAlg::Ecdsa(curve) => {
                self.require_curve(alg, curve)?;
                let len = curve.coordinate_len();
                if signature.len() != 2 * len {
                    return Ok(false);
                }
                let r = BigNum::from_slice(&signature[..len])?;
                let s = BigNum::from_slice(&signature[len..])?;
                let Ok(sig) = EcdsaSig::from_private_components(r, s) else {
                    return Ok(false);
                };
                let ec = self.pkey.ec_key()?;
                Ok(sig.verify(digest, &ec).unwrap_or(false))
            }
        }
    }

    fn require_rsa(&self, alg: &str) -> Result<(), CryptoError> {
        match self.spec {
            KeySpec::Rsa(_) => Ok(()),
            KeySpec::Ec(_) => Err(CryptoError(format!("algorithm {alg} requires an RSA key"))),
        }
    }

    fn require_curve(&self, alg: &str, curve: Curve) -> Result<(), CryptoError> {
        match self.spec {
            KeySpec::Ec(c) if c == curve => Ok(()),
            _ => Err(CryptoError(format!(
                "algorithm {alg} requires an EC key on {}",
                curve.jwk_name()
            ))),
        }
    }

    pub fn private_pkcs8_pem(&self) -> String {
        let pem = self
            .pkey
            .private_key_to_pem_pkcs8()
            .expect("PKCS#8 encoding of a valid key");
        String::from_utf8(pem).expect("PEM is ASCII")
    }

    pub fn public_spki_pem(&self) -> String {
        let pem = self
            .pkey
            .public_key_to_pem()
            .expect("SPKI encoding of a valid key");
        String::from_utf8(pem).expect("PEM is ASCII")
    }

    /// True when `cert`'s public key is this key's public key.
    pub fn matches_cert(&self, cert: &X509) -> bool {
        matches_cert_ref(&self.pkey, cert)
    }
}

fn matches_cert_ref(pkey: &PKeyRef<Private>, cert: &X509Ref) -> bool {
    cert.public_key()
        .map(|public| public.public_eq(pkey))
        .unwrap_or(false)
}

fn check_digest_len(alg: &str, digest: &[u8], expected: usize) -> Result<(), CryptoError> {
    if digest.len() == expected {
        Ok(())
    } else {
        Err(CryptoError(format!(
            "digest for {alg} must be {expected} bytes, got {}",
            digest.len()
        )))
    }
}

fn configure_rsa_ctx<T>(ctx: &mut PkeyCtx<T>, alg: &SigAlg, md: &MdRef) -> Result<(), CryptoError> {
    match alg {
        SigAlg::Pss(_) => {
            ctx.set_rsa_padding(Padding::PKCS1_PSS)?;
            ctx.set_signature_md(md)?;
            ctx.set_rsa_mgf1_md(md)?;
            ctx.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
        }
        _ => {
            ctx.set_rsa_padding(Padding::PKCS1)?;
            ctx.set_signature_md(md)?;
        }
    }
    Ok(())
}

fn jwk_bytes_opt(obj: &Map<String, Value>, name: &str) -> Result<Option<Vec<u8>>, CryptoError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => b64url_decode(s)
            .map(Some)
            .map_err(|_| CryptoError(format!("JWK member '{name}' is not valid base64url"))),
        Some(_) => Err(CryptoError(format!("JWK member '{name}' must be a string"))),
    }
}

fn jwk_bytes(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>, CryptoError> {
    jwk_bytes_opt(obj, name)?.ok_or_else(|| CryptoError(format!("JWK is missing '{name}'")))
}

fn jwk_bn_opt(obj: &Map<String, Value>, name: &str) -> Result<Option<BigNum>, CryptoError> {
    match jwk_bytes_opt(obj, name)? {
        None => Ok(None),
        Some(b) if b.is_empty() => Err(CryptoError(format!("JWK member '{name}' is empty"))),
        Some(b) => Ok(Some(BigNum::from_slice(&b)?)),
    }
}

fn jwk_bn(obj: &Map<String, Value>, name: &str) -> Result<BigNum, CryptoError> {
    jwk_bn_opt(obj, name)?.ok_or_else(|| CryptoError(format!("JWK is missing '{name}'")))
}

/// The parts of a certificate the Key Vault API surfaces, precomputed once so handlers do
/// not have to know OpenSSL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub der: Vec<u8>,
    pub x5t: String,
    pub serial_hex: String,
    pub subject: String,
    pub issuer: String,
    pub not_before: i64,
    pub not_after: i64,
}

pub fn cert_info(cert: &X509) -> CertInfo {
    let der = cert.to_der().expect("DER encoding of a parsed certificate");
    let serial_hex = cert
        .serial_number()
        .to_bn()
        .and_then(|bn| bn.to_hex_str().map(|s| s.to_string()))
        .map(|s| s.to_ascii_uppercase())
        .unwrap_or_default();
    CertInfo {
        x5t: sha1_b64url(&der),
        serial_hex,
        subject: format_name(cert.subject_name()),
        issuer: format_name(cert.issuer_name()),
        not_before: asn1_to_unix(cert.not_before()),
        not_after: asn1_to_unix(cert.not_after()),
        der,
    }
}

fn asn1_to_unix(t: &Asn1TimeRef) -> i64 {
    let Ok(epoch) = Asn1Time::from_unix(0) else {
        return 0;
    };
    match epoch.diff(t) {
        Ok(d) => i64::from(d.days) * 86_400 + i64::from(d.secs),
        Err(_) => 0,
    }
}

/// Renders a name the way Key Vault shows `subject` ("CN=a, O=b"), in certificate order,
/// because clients compare the policy subject they sent with what comes back.
fn format_name(name: &X509NameRef) -> String {
    let mut parts = Vec::new();
    for entry in name.entries() {
        let nid = entry.object().nid();
        let key = match nid {
            Nid::COMMONNAME => "CN".to_string(),
            Nid::ORGANIZATIONNAME => "O".to_string(),
            Nid::ORGANIZATIONALUNITNAME => "OU".to_string(),
            Nid::COUNTRYNAME => "C".to_string(),
            Nid::STATEORPROVINCENAME => "ST".to_string(),
            Nid::LOCALITYNAME => "L".to_string(),
            Nid::PKCS9_EMAILADDRESS => "E".to_string(),
            Nid::DOMAINCOMPONENT => "DC".to_string(),
            Nid::UNDEF => entry.object().to_string(),
            other => other
                .short_name()
                .map(str::to_string)
                .unwrap_or_else(|_| entry.object().to_string()),
        };
        let value = entry
            .data()
            .to_string()
            .unwrap_or_else(|_| hex::encode(entry.data().as_slice()));
        parts.push(format!("{key}={}", quote_dn_value(&value)));
    }
    parts.join(", ")
}

fn quote_dn_value(v: &str) -> String {
    let needs_quotes = v.is_empty()
        || v.starts_with(' ')
        || v.ends_with(' ')
        || v.chars()
            .any(|c| matches!(c, ',' | '+' | '=' | '"' | '\n' | '<' | '>' | '#' | ';'));
    if needs_quotes {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

/// Splits "CN=a, O=\"b, c\"" into attribute pairs; quoting follows the Windows/Key Vault style
/// (double quotes, `""` inside), with `\` escapes accepted too since RFC 4514 users write them.
fn split_subject(subject: &str) -> Result<Vec<(String, String)>, CryptoError> {
    let mut out = Vec::new();
    let mut chars = subject.chars().peekable();
    loop {
        let mut key = String::new();
        loop {
            match chars.next() {
                Some('=') => break,
                Some(c) => key.push(c),
                None => {
                    return Err(CryptoError(format!(
                        "invalid subject '{subject}': expected NAME=value"
                    )));
                }
            }
        }
        let key = key.trim().to_string();
        if key.is_empty() {
            return Err(CryptoError(format!(
                "invalid subject '{subject}': attribute name is empty"
            )));
        }
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut value = String::new();
        let mut at_end = false;
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => {
                        return Err(CryptoError(format!(
                            "invalid subject '{subject}': unterminated quote"
                        )));
                    }
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        value.push('"');
                    }
                    Some('"') => break,
                    Some(c) => value.push(c),
                }
            }
            while chars.peek() == Some(&' ') {
                chars.next();
            }
            match chars.next() {
                None => at_end = true,
                Some(',' | ';') => {}
                Some(_) => {
                    return Err(CryptoError(format!(
                        "invalid subject '{subject}': text after closing quote"
                    )));
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        at_end = true;
                        break;
                    }
                    Some(',' | ';') => break,
                    Some('\\') => {
                        if let Some(c) = chars.next() {
                            value.push(c);
                        }
                    }
                    Some(c) => value.push(c),
                }
            }
            value = value.trim_end().to_string();
            if value.is_empty() {
                return Err(CryptoError(format!(
                    "invalid subject '{subject}': empty value for {key}"
                )));
            }
        }
        out.push((key, value));
        if at_end {
            return Ok(out);
        }
    }
}

fn parse_subject(subject: &str) -> Result<X509Name, CryptoError> {
    let trimmed = subject.trim();
    if trimmed.is_empty() {
        return Err(CryptoError::new("certificate subject is empty"));
    }
    let mut builder = X509NameBuilder::new()?;
    for (key, value) in split_subject(trimmed)? {
        let field = match key.to_ascii_uppercase().as_str() {
            "CN" => "CN",
            "O" => "O",
            "OU" => "OU",
            "C" => "C",
            "ST" | "S" => "ST",
            "L" => "L",
            "E" | "EMAIL" | "EMAILADDRESS" => "emailAddress",
            "DC" => "DC",
            "STREET" => "street",
            "SERIALNUMBER" => "serialNumber",
            _ => key.as_str(),
        };
        builder
            .append_entry_by_text(field, &value)
            .map_err(|_| CryptoError(format!("invalid subject attribute {key}={value}")))?;
    }
    Ok(builder.build())
}

/// What a certificate policy asks for when the vault creates a self-signed certificate.
#[derive(Clone, Debug, Default)]
pub struct CertRequest {
    pub subject: String,
    pub dns_names: Vec<String>,
    pub emails: Vec<String>,
    pub ekus: Vec<String>,
    pub key_usage: Vec<String>,
    pub validity_months: u32,
}

/// The real service backdates certificates by about ten minutes so that clients with a
/// slightly slow clock accept them straight away; tests may rely on that.
const BACKDATE_SECS: i64 = 600;
const DAY_SECS: i64 = 86_400;

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Version 3 certificate skeleton with a random positive 16-byte serial (top bits `01`, so
/// the DER integer is always exactly 16 bytes and needs no sign byte) and the backdated
/// validity every certificate here shares.
fn cert_builder(
    subject: &X509NameRef,
    issuer: &X509NameRef,
    public: &PKeyRef<Private>,
    valid_secs: i64,
) -> Result<X509Builder, CryptoError> {
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::ONE, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(subject)?;
    b.set_issuer_name(issuer)?;
    b.set_pubkey(public)?;
    let now = now_unix();
    let not_before = Asn1Time::from_unix(now - BACKDATE_SECS)?;
    let not_after = Asn1Time::from_unix(now + valid_secs)?;
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    Ok(b)
}

fn key_usage_ext(names: &[String]) -> Result<Option<openssl::x509::X509Extension>, CryptoError> {
    if names.is_empty() {
        return Ok(None);
    }
    let mut ku = KeyUsage::new();
    ku.critical();
    for name in names {
        match name.to_ascii_lowercase().as_str() {
            "digitalsignature" => ku.digital_signature(),
            "nonrepudiation" => ku.non_repudiation(),
            "keyencipherment" => ku.key_encipherment(),
            "dataencipherment" => ku.data_encipherment(),
            "keyagreement" => ku.key_agreement(),
            "keycertsign" => ku.key_cert_sign(),
            "crlsign" => ku.crl_sign(),
            "encipheronly" => ku.encipher_only(),
            "decipheronly" => ku.decipher_only(),
            _ => return Err(CryptoError(format!("unknown key usage '{name}'"))),
        };
    }
    Ok(Some(ku.build()?))
}

fn eku_ext(oids: &[String]) -> Result<Option<openssl::x509::X509Extension>, CryptoError> {
    if oids.is_empty() {
        return Ok(None);
    }
    let mut eku = ExtendedKeyUsage::new();
    for oid in oids {
        // Only dotted OIDs: the policy format carries them that way and accepting OpenSSL's
        // short names would let a typo silently mean something else.
        let dotted = !oid.is_empty()
            && oid
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !dotted || Asn1Object::from_str(oid).is_err() {
            return Err(CryptoError(format!(
                "invalid extended key usage OID '{oid}'"
            )));
        }
        eku.other(oid);
    }
    Ok(Some(eku.build()?))
}

fn san_ext(
    builder: &X509Builder,
    issuer: Option<&X509Ref>,
    dns: &[String],
    emails: &[String],
    ips: &[IpAddr],
) -> Result<Option<openssl::x509::X509Extension>, CryptoError> {
    if dns.is_empty() && emails.is_empty() && ips.is_empty() {
        return Ok(None);
    }
    let mut san = SubjectAlternativeName::new();
    for d in dns {
        san.dns(d);
    }
    for e in emails {
        san.email(e);
    }
    for ip in ips {
        san.ip(&ip.to_string());
    }
    let ext = san
        .build(&builder.x509v3_context(issuer, None))
        .map_err(|_| CryptoError::new("invalid subject alternative name"))?;
    Ok(Some(ext))
}

/// Self-signed leaf: random positive 16-byte serial, SHA-256 signature (ECDSA for EC keys), notBefore = now - 10 min,
/// notAfter = now + validity_months*30 days (approximately, as the service), basicConstraints CA:false, SKI, and the extensions requested.
pub fn self_signed(key: &KeyMaterial, req: &CertRequest) -> Result<X509, CryptoError> {
    let subject = parse_subject(&req.subject)?;
    let months = if req.validity_months == 0 {
        12
    } else {
        req.validity_months
    };
    let mut b = cert_builder(
        &subject,
        &subject,
        &key.pkey,
        i64::from(months) * 30 * DAY_SECS,
    )?;
    b.append_extension(BasicConstraints::new().build()?)?;
    if let Some(ext) = key_usage_ext(&req.key_usage)? {
        b.append_extension(ext)?;
    }
    if let Some(ext) = eku_ext(&req.ekus)? {
        b.append_extension(ext)?;
    }
    if let Some(ext) = san_ext(&b, None, &req.dns_names, &req.emails, &[])? {
        b.append_extension(ext)?;
    }
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    b.sign(&key.pkey, MessageDigest::sha256())?;
    Ok(b.build())
}

/// A certificate authority (root or intermediate) used to build chains for seeds and the server's own TLS.
#[derive(Clone, Debug)]
pub struct Authority {
    pub cert: X509,
    pub key: KeyMaterial,
}

impl Authority {
    pub fn new_root(common_name: &str) -> Result<Authority, CryptoError> {
        let key = KeyMaterial::generate(KeySpec::Ec(Curve::P256))?;
        let name = cn_name(common_name)?;
        let mut b = cert_builder(&name, &name, &key.pkey, 3650 * DAY_SECS)?;
        b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()?,
        )?;
        let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
        b.append_extension(ski)?;
        b.sign(&key.pkey, MessageDigest::sha256())?;
        Ok(Authority {
            cert: b.build(),
            key,
        })
    }

    pub fn issue_intermediate(&self, common_name: &str) -> Result<Authority, CryptoError> {
        let key = KeyMaterial::generate(KeySpec::Ec(Curve::P256))?;
        let name = cn_name(common_name)?;
        let mut b = cert_builder(&name, self.cert.subject_name(), &key.pkey, 1826 * DAY_SECS)?;
        b.append_extension(BasicConstraints::new().critical().ca().pathlen(0).build()?)?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()?,
        )?;
        self.append_key_ids(&mut b)?;
        b.sign(&self.key.pkey, MessageDigest::sha256())?;
        Ok(Authority {
            cert: b.build(),
            key,
        })
    }

    /// Leaf certificate for `key` signed by this authority: CA:false, digitalSignature+keyEncipherment (only digitalSignature for EC keys),
    /// EKU serverAuth+clientAuth, SKI + AKI, SANs (dns and IP), validity in days, notBefore now - 10 min.
    ///
    /// `req.subject` may be empty when there is a DNS name (the name becomes the CN, as TLS
    /// server certificates usually have it); non-empty `req.key_usage` / `req.ekus` replace
    /// the defaults so seeds can model unusual certificates.
    pub fn issue_leaf(
        &self,
        key: &KeyMaterial,
        req: &CertRequest,
        ip_sans: &[IpAddr],
        validity_days: u32,
    ) -> Result<X509, CryptoError> {
        let subject = if req.subject.trim().is_empty() {
            match req.dns_names.first() {
                Some(dns) => cn_name(dns)?,
                None => return Err(CryptoError::new("certificate subject is empty")),
            }
        } else {
            parse_subject(&req.subject)?
        };
        let mut b = cert_builder(
            &subject,
            self.cert.subject_name(),
            &key.pkey,
            i64::from(validity_days) * DAY_SECS,
        )?;
        b.append_extension(BasicConstraints::new().build()?)?;
        let ku = if req.key_usage.is_empty() {
            let mut ku = KeyUsage::new();
            ku.critical().digital_signature();
            if matches!(key.spec, KeySpec::Rsa(_)) {
                ku.key_encipherment();
            }
            ku.build()?
        } else {
            key_usage_ext(&req.key_usage)?.expect("non-empty key usage")
        };
        b.append_extension(ku)?;
        let eku = if req.ekus.is_empty() {
            ExtendedKeyUsage::new()
                .server_auth()
                .client_auth()
                .build()?
        } else {
            eku_ext(&req.ekus)?.expect("non-empty EKU")
        };
        b.append_extension(eku)?;
        if let Some(ext) = san_ext(&b, Some(&self.cert), &req.dns_names, &req.emails, ip_sans)? {
            b.append_extension(ext)?;
        }
        self.append_key_ids(&mut b)?;
        b.sign(&self.key.pkey, MessageDigest::sha256())?;
        Ok(b.build())
    }

    fn append_key_ids(&self, b: &mut X509Builder) -> Result<(), CryptoError> {
        let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(Some(&self.cert), None))?;
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(&self.cert), None))?;
        b.append_extension(ski)?;
        b.append_extension(aki)?;
        Ok(())
    }
}

fn cn_name(common_name: &str) -> Result<X509Name, CryptoError> {
    if common_name.trim().is_empty() {
        return Err(CryptoError::new("common name is empty"));
    }
    let mut b = X509NameBuilder::new()?;
    b.append_entry_by_nid(Nid::COMMONNAME, common_name)
        .map_err(|_| CryptoError(format!("invalid common name '{common_name}'")))?;
    Ok(b.build())
}

/// A certificate as the vault stores it: leaf, then the other certificates in the order they were given, and the private key.
#[derive(Clone, Debug)]
pub struct CertBundle {
    pub leaf: X509,
    pub chain: Vec<X509>,
    pub key: KeyMaterial,
}

/// Parse an import-certificate `value`. `pem == true` (or the text starts with "-----BEGIN"): PEM text with one private key
/// (PKCS#8 "PRIVATE KEY", PKCS#1 "RSA PRIVATE KEY", SEC1 "EC PRIVATE KEY") and one or more CERTIFICATE blocks in any order;
/// the leaf is the certificate whose public key matches the private key; the others keep their given order.
/// Otherwise: standard base64 (whitespace tolerated) of a PKCS#12 decrypted with `password` (None = empty);
/// leaf = the certificate matching the key, others keep their order. Errors: no key, no certificate, no certificate matching
/// the key, wrong password, bad base64 — each a clear message that never includes key material.
pub fn parse_import(
    value: &str,
    password: Option<&str>,
    pem: bool,
) -> Result<CertBundle, CryptoError> {
    if pem || value.trim_start().starts_with("-----BEGIN") {
        parse_pem_import(value, password)
    } else {
        parse_pfx_import(value, password)
    }
}

/// Yields `(label, whole block)` for each PEM block; text between blocks is ignored, as
/// OpenSSL does, so "Bag Attributes" headers from `openssl pkcs12 -nodes` do not get in the way.
fn pem_blocks(text: &str) -> Result<Vec<(String, String)>, CryptoError> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let label_end = after
            .find("-----")
            .ok_or_else(|| CryptoError::new("malformed PEM: BEGIN line is not terminated"))?;
        let label = after[..label_end].to_string();
        let end_marker = format!("-----END {label}-----");
        let end = rest[start..]
            .find(&end_marker)
            .ok_or_else(|| CryptoError(format!("malformed PEM: missing END line for '{label}'")))?;
        let block_end = start + end + end_marker.len();
        let mut block = rest[start..block_end].to_string();
        block.push('\n');
        blocks.push((label, block));
        rest = &rest[block_end..];
    }
    Ok(blocks)
}

fn parse_pem_import(value: &str, password: Option<&str>) -> Result<CertBundle, CryptoError> {
    let text = value.replace("\r\n", "\n");
    let mut key: Option<PKey<Private>> = None;
    let mut certs = Vec::new();
    for (label, block) in pem_blocks(&text)? {
        if label == "CERTIFICATE" || label == "TRUSTED CERTIFICATE" || label == "X509 CERTIFICATE" {
            let cert = X509::from_pem(block.as_bytes()).map_err(|_| {
                CryptoError::new("PEM contains a CERTIFICATE block that is not a valid certificate")
            })?;
            certs.push(cert);
        } else if label.ends_with("PRIVATE KEY") {
            if key.is_some() {
                return Err(CryptoError::new("PEM contains more than one private key"));
            }
            // Always the passphrase form: with no passphrase OpenSSL would otherwise prompt on
            // the terminal for an encrypted key, hanging a headless server.
            let pass = password.unwrap_or("");
            let parsed = PKey::private_key_from_pem_passphrase(block.as_bytes(), pass.as_bytes())
                .map_err(|_| {
                if label.contains("ENCRYPTED") || block.contains("ENCRYPTED") {
                    CryptoError::new(
                        "PEM private key is encrypted and the password is missing or wrong",
                    )
                } else {
                    CryptoError(format!("PEM block '{label}' is not a valid private key"))
                }
            })?;
            key = Some(parsed);
        }
    }
    let key = key.ok_or_else(|| CryptoError::new("PEM contains no private key"))?;
    build_bundle(key, certs, "PEM")
}

/// Builds the bundle from an unordered certificate list: the leaf is found by key, because
/// neither PEM nor PKCS#12 inputs reliably put it first.
fn build_bundle(
    key: PKey<Private>,
    certs: Vec<X509>,
    source: &str,
) -> Result<CertBundle, CryptoError> {
    if certs.is_empty() {
        return Err(CryptoError(format!("{source} contains no certificate")));
    }
    let key = KeyMaterial::from_pkey(key)?;
    let idx = certs
        .iter()
        .position(|c| key.matches_cert(c))
        .ok_or_else(|| {
            CryptoError(format!(
                "{source} contains no certificate matching the private key"
            ))
        })?;
    let mut chain = certs;
    let leaf = chain.remove(idx);
    Ok(CertBundle { leaf, chain, key })
}

/// OpenSSL 3 keeps RC2-40 and friends in the legacy provider; PFX files exported by older
/// Windows and Java tools use them, so it is loaded on first need and kept for the process.
fn ensure_legacy_provider() -> bool {
    static LEGACY: OnceLock<Option<openssl::provider::Provider>> = OnceLock::new();
    LEGACY
        .get_or_init(|| openssl::provider::Provider::try_load(None, "legacy", true).ok())
        .is_some()
}

fn parse_pfx_import(value: &str, password: Option<&str>) -> Result<CertBundle, CryptoError> {
    let der = b64std_decode(value).map_err(|_| {
        CryptoError::new(
            "certificate value is neither PEM nor valid base64 of a PKCS#12 (PFX) file",
        )
    })?;
    let p12 = Pkcs12::from_der(&der)
        .map_err(|_| CryptoError::new("certificate value is not a valid PKCS#12 (PFX) file"))?;
    let pass = password.unwrap_or("");
    let parsed = match p12.parse2(pass) {
        Ok(p) => p,
        Err(first) => {
            let mac_failure = first
                .errors()
                .iter()
                .any(|e| e.reason().is_some_and(|r| r.contains("mac verify failure")));
            if mac_failure {
                return Err(CryptoError::new(
                    "wrong password for the PKCS#12 (PFX) file",
                ));
            }
            if !ensure_legacy_provider() {
                return Err(CryptoError(format!(
                    "cannot decrypt the PKCS#12 (PFX) file: {first}"
                )));
            }
            p12.parse2(pass)
                .map_err(|e| CryptoError(format!("cannot decrypt the PKCS#12 (PFX) file: {e}")))?
        }
    };
    let key = parsed
        .pkey
        .ok_or_else(|| CryptoError::new("PKCS#12 (PFX) file contains no private key"))?;
    // Round-trip through DER to drop the friendlyName/localKeyId "aux" data OpenSSL attaches
    // while parsing; left in place it would be duplicated when the vault re-exports the PFX.
    let mut certs = Vec::new();
    let leaf = parsed.cert.iter().map(|c| &**c);
    for c in leaf.chain(parsed.ca.iter().flatten()) {
        certs.push(X509::from_der(&c.to_der()?)?);
    }
    build_bundle(key, certs, "PKCS#12 (PFX) file")
}

/// PKCS#12 with an empty password, base64 standard padded, leaf first then the chain. With
/// include_key=false, certificates only.
///
/// PBE-SHA1-3DES for both bags, a SHA-1 MAC and 2000 iterations rather than OpenSSL 3's
/// AES/SHA-256 defaults, because that is what the service emits and clients under test must
/// cope with exactly that; older consumers (Windows before Server 2019, Java 8) also cannot
/// read the newer form.
pub fn to_pfx_base64(bundle: &CertBundle, include_key: bool) -> Result<String, CryptoError> {
    let mut b = Pkcs12::builder();
    b.key_algorithm(Nid::PBE_WITHSHA1AND3_KEY_TRIPLEDES_CBC)
        .cert_algorithm(Nid::PBE_WITHSHA1AND3_KEY_TRIPLEDES_CBC)
        .key_iter(2000)
        .mac_iter(2000)
        .mac_md(MessageDigest::sha1())
        .cert(&bundle.leaf);
    if include_key {
        b.pkey(&bundle.key.pkey);
    }
    if !bundle.chain.is_empty() {
        let mut stack = Stack::new()?;
        for c in &bundle.chain {
            stack.push(c.clone())?;
        }
        b.ca(stack);
    }
    let p12 = b.build2("")?;
    Ok(b64std(&p12.to_der()?))
}

/// PEM as the service stores it: the PKCS#8 `PRIVATE KEY` block, then the leaf and chain
/// certificates, 64-column lines, `\n` endings and a trailing newline, so byte comparisons
/// against recorded service output hold. With include_key=false, certificates only.
pub fn to_pem(bundle: &CertBundle, include_key: bool) -> String {
    let mut out = String::new();
    if include_key {
        out.push_str(&bundle.key.private_pkcs8_pem());
    }
    out.push_str(&certs_pem(std::slice::from_ref(&bundle.leaf)));
    out.push_str(&certs_pem(&bundle.chain));
    out
}

/// Concatenated CERTIFICATE PEM blocks.
pub fn certs_pem(certs: &[X509]) -> String {
    certs
        .iter()
        .map(|c| {
            String::from_utf8(c.to_pem().expect("PEM encoding of a certificate"))
                .expect("PEM is ASCII")
        })
        .collect()
}

/// DER PKCS#10 request for `key` with `subject`, standard base64 (what a pending certificate operation shows as `csr`).
pub fn csr_base64(key: &KeyMaterial, subject: &str) -> Result<String, CryptoError> {
    let name = parse_subject(subject)?;
    let mut b = X509ReqBuilder::new()?;
    b.set_version(0)?;
    b.set_subject_name(&name)?;
    b.set_pubkey(&key.pkey)?;
    b.sign(&key.pkey, MessageDigest::sha256())?;
    Ok(b64std(&b.build().to_der()?))
}

/// Decoding is lenient about padding because JOSE forbids it but some clients send it anyway.
const URL_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

const STD_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub fn b64url(bytes: &[u8]) -> String {
    general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn b64url_decode(text: &str) -> Result<Vec<u8>, CryptoError> {
    URL_LENIENT
        .decode(text.trim())
        .map_err(|e| CryptoError(format!("invalid base64url: {e}")))
}

pub fn b64std(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Whitespace is stripped first because PFX values arrive wrapped at 64 or 76 columns from
/// `openssl base64` and PowerShell alike.
pub fn b64std_decode(text: &str) -> Result<Vec<u8>, CryptoError> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    STD_LENIENT
        .decode(compact)
        .map_err(|e| CryptoError(format!("invalid base64: {e}")))
}

pub fn sha1_b64url(bytes: &[u8]) -> String {
    b64url(&hash(MessageDigest::sha1(), bytes).expect("SHA-1 is available"))
}

pub fn sha256_b64url(bytes: &[u8]) -> String {
    b64url(&hash(MessageDigest::sha256(), bytes).expect("SHA-256 is available"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ec::EcKey;
    use openssl::pkey::Public;
    use openssl::sign::Verifier;
    use openssl::x509::X509Req;
    use openssl::x509::X509StoreContext;
    use openssl::x509::store::X509StoreBuilder;
    use serde_json::json;
    use std::sync::OnceLock;

    fn rsa2048() -> &'static KeyMaterial {
        static K: OnceLock<KeyMaterial> = OnceLock::new();
        K.get_or_init(|| KeyMaterial::generate(KeySpec::Rsa(2048)).unwrap())
    }

    fn ec(curve: Curve) -> KeyMaterial {
        KeyMaterial::generate(KeySpec::Ec(curve)).unwrap()
    }

    fn public_from_jwk(jwk: &Map<String, Value>) -> PKey<Public> {
        let get = |k: &str| b64url_decode(jwk[k].as_str().unwrap()).unwrap();
        match jwk["kty"].as_str().unwrap() {
            "RSA" => {
                let n = BigNum::from_slice(&get("n")).unwrap();
                let e = BigNum::from_slice(&get("e")).unwrap();
                PKey::from_rsa(Rsa::from_public_components(n, e).unwrap()).unwrap()
            }
            "EC" => {
                let curve = Curve::from_jwk_name(jwk["crv"].as_str().unwrap()).unwrap();
                let group = EcGroup::from_curve_name(curve.nid()).unwrap();
                let x = BigNum::from_slice(&get("x")).unwrap();
                let y = BigNum::from_slice(&get("y")).unwrap();
                let key = EcKey::from_public_key_affine_coordinates(&group, &x, &y).unwrap();
                PKey::from_ec_key(key).unwrap()
            }
            other => panic!("unexpected kty {other}"),
        }
    }

    /// The test exports private members itself so the import path is checked against
    /// OpenSSL's own view of the key, not against our exporter.
    fn private_jwk(key: &KeyMaterial, with_crt: bool) -> Value {
        let mut m = key.public_jwk();
        match key.spec() {
            KeySpec::Rsa(_) => {
                let rsa = key.pkey().rsa().unwrap();
                m.insert("d".into(), b64url(&rsa.d().to_vec()).into());
                m.insert("p".into(), b64url(&rsa.p().unwrap().to_vec()).into());
                m.insert("q".into(), b64url(&rsa.q().unwrap().to_vec()).into());
                if with_crt {
                    m.insert("dp".into(), b64url(&rsa.dmp1().unwrap().to_vec()).into());
                    m.insert("dq".into(), b64url(&rsa.dmq1().unwrap().to_vec()).into());
                    m.insert("qi".into(), b64url(&rsa.iqmp().unwrap().to_vec()).into());
                }
            }
            KeySpec::Ec(curve) => {
                let ec = key.pkey().ec_key().unwrap();
                let d = ec
                    .private_key()
                    .to_vec_padded(curve.coordinate_len() as i32)
                    .unwrap();
                m.insert("d".into(), b64url(&d).into());
            }
        }
        Value::Object(m)
    }

    fn sha(md: MessageDigest, data: &[u8]) -> Vec<u8> {
        hash(md, data).unwrap().to_vec()
    }

    #[test]
    fn curve_names_round_trip() {
        for (curve, name, len) in [
            (Curve::P256, "P-256", 32),
            (Curve::P384, "P-384", 48),
            (Curve::P521, "P-521", 66),
        ] {
            assert_eq!(curve.jwk_name(), name);
            assert_eq!(Curve::from_jwk_name(name), Some(curve));
            assert_eq!(curve.coordinate_len(), len);
        }
        assert_eq!(Curve::from_jwk_name("P-256K"), None);
        assert_eq!(Curve::from_jwk_name("p-256"), None);
    }

    #[test]
    fn generated_keys_round_trip_through_public_jwk() {
        let mut keys = vec![rsa2048().clone()];
        keys.extend([Curve::P256, Curve::P384, Curve::P521].map(ec));
        for key in keys {
            let jwk = key.public_jwk();
            assert_eq!(jwk["kty"], key.kty());
            let rebuilt = public_from_jwk(&jwk);
            assert_eq!(
                rebuilt.public_key_to_der().unwrap(),
                key.pkey().public_key_to_der().unwrap(),
                "{:?}",
                key.spec()
            );
            assert!(!jwk.contains_key("d"), "public JWK leaked a private member");
            match key.spec() {
                KeySpec::Rsa(bits) => {
                    assert_eq!(bits, 2048);
                    assert_eq!(key.kty(), "RSA");
                    assert_eq!(jwk["e"], "AQAB");
                    assert_eq!(
                        b64url_decode(jwk["n"].as_str().unwrap()).unwrap().len(),
                        256
                    );
                    let keys: Vec<_> = jwk.keys().map(String::as_str).collect();
                    assert_eq!(keys.len(), 3);
                }
                KeySpec::Ec(curve) => {
                    assert_eq!(key.kty(), "EC");
                    assert_eq!(jwk["crv"], curve.jwk_name());
                    assert_eq!(jwk.len(), 4);
                }
            }
        }
    }

    #[test]
    fn large_rsa_sizes_generate_and_bad_sizes_are_refused() {
        for bits in [3072, 4096] {
            let key = KeyMaterial::generate(KeySpec::Rsa(bits)).unwrap();
            assert_eq!(key.spec(), KeySpec::Rsa(bits));
            let jwk = key.public_jwk();
            let n = b64url_decode(jwk["n"].as_str().unwrap()).unwrap();
            assert_eq!(n.len() * 8, bits as usize);
            let rebuilt = public_from_jwk(&jwk);
            assert!(rebuilt.public_eq(key.pkey()));
        }
        let err = KeyMaterial::generate(KeySpec::Rsa(1024)).unwrap_err();
        assert!(err.0.contains("1024"), "{err}");
    }

    #[test]
    fn ec_jwk_coordinates_are_fixed_length() {
        // P-521 coordinates usually have a zero top byte, so several keys exercise padding.
        for curve in [Curve::P256, Curve::P384, Curve::P521] {
            for _ in 0..4 {
                let jwk = ec(curve).public_jwk();
                for member in ["x", "y"] {
                    let s = jwk[member].as_str().unwrap();
                    assert!(!s.contains('='), "padding in {s}");
                    assert_eq!(b64url_decode(s).unwrap().len(), curve.coordinate_len());
                }
            }
        }
    }

    #[test]
    fn private_jwk_import_round_trips() {
        let rsa = rsa2048();
        for with_crt in [true, false] {
            let imported = KeyMaterial::from_private_jwk(&private_jwk(rsa, with_crt)).unwrap();
            assert_eq!(imported.spec(), KeySpec::Rsa(2048));
            assert_eq!(
                imported.pkey().private_key_to_pkcs8().unwrap(),
                rsa.pkey().private_key_to_pkcs8().unwrap()
            );
        }
        let mut hsm = private_jwk(rsa, false);
        hsm["kty"] = json!("RSA-HSM");
        assert!(KeyMaterial::from_private_jwk(&hsm).is_ok());

        for curve in [Curve::P256, Curve::P384, Curve::P521] {
            let key = ec(curve);
            let imported = KeyMaterial::from_private_jwk(&private_jwk(&key, false)).unwrap();
            assert_eq!(imported.spec(), KeySpec::Ec(curve));
            assert!(imported.pkey().public_eq(key.pkey()));
            assert_eq!(
                imported.pkey().ec_key().unwrap().private_key().to_vec(),
                key.pkey().ec_key().unwrap().private_key().to_vec()
            );
            // A signature from the import verifies under the original.
            let digest = vec![7u8; 32];
            if curve == Curve::P256 {
                let sig = imported.sign_digest("ES256", &digest).unwrap();
                assert!(key.verify_digest("ES256", &digest, &sig).unwrap());
            }
        }
    }

    #[test]
    fn private_jwk_errors_name_the_member() {
        let mut rsa = private_jwk(rsa2048(), true);
        rsa.as_object_mut().unwrap().remove("d");
        let err = KeyMaterial::from_private_jwk(&rsa).unwrap_err();
        assert_eq!(err.0, "JWK is missing 'd'");

        let key = ec(Curve::P256);
        let mut ecj = private_jwk(&key, false);
        ecj.as_object_mut().unwrap().remove("d");
        assert_eq!(
            KeyMaterial::from_private_jwk(&ecj).unwrap_err().0,
            "JWK is missing 'd'"
        );

        let mut bad = private_jwk(&key, false);
        bad["x"] = json!("!!!");
        let err = KeyMaterial::from_private_jwk(&bad).unwrap_err();
        assert!(err.0.contains("'x'"), "{err}");

        let mut wrong_d = private_jwk(&key, false);
        wrong_d["d"] = private_jwk(&ec(Curve::P256), false)["d"].clone();
        let err = KeyMaterial::from_private_jwk(&wrong_d).unwrap_err();
        assert!(err.0.contains("'d'"), "{err}");

        let mut crv = private_jwk(&key, false);
        crv["crv"] = json!("P-192");
        assert!(
            KeyMaterial::from_private_jwk(&crv)
                .unwrap_err()
                .0
                .contains("'crv'")
        );

        let err = KeyMaterial::from_private_jwk(&json!({"kty": "oct", "k": "AAAA"})).unwrap_err();
        assert!(err.0.contains("oct"), "{err}");
        let err = KeyMaterial::from_private_jwk(&json!({"n": "AQAB"})).unwrap_err();
        assert!(err.0.contains("'kty'"), "{err}");
    }

    #[test]
    fn sign_and_verify_every_algorithm() {
        let message = b"the quick brown fox";
        let rsa = rsa2048();
        let cases: Vec<(&str, KeyMaterial, MessageDigest, usize)> = vec![
            ("RS256", rsa.clone(), MessageDigest::sha256(), 256),
            ("RS384", rsa.clone(), MessageDigest::sha384(), 256),
            ("RS512", rsa.clone(), MessageDigest::sha512(), 256),
            ("PS256", rsa.clone(), MessageDigest::sha256(), 256),
            ("PS384", rsa.clone(), MessageDigest::sha384(), 256),
            ("PS512", rsa.clone(), MessageDigest::sha512(), 256),
            ("ES256", ec(Curve::P256), MessageDigest::sha256(), 64),
            ("ES384", ec(Curve::P384), MessageDigest::sha384(), 96),
            ("ES512", ec(Curve::P521), MessageDigest::sha512(), 132),
        ];
        for (alg, key, md, sig_len) in cases {
            let digest = sha(md, message);
            let sig = key.sign_digest(alg, &digest).unwrap();
            assert_eq!(sig.len(), sig_len, "{alg}");
            assert!(key.verify_digest(alg, &digest, &sig).unwrap(), "{alg}");
            let mut tampered = sig.clone();
            tampered[sig_len / 2] ^= 1;
            assert!(
                !key.verify_digest(alg, &digest, &tampered).unwrap(),
                "{alg}"
            );
            // A short signature. Not `sig[1..]`: an RSA signature that happens to start with a
            // zero byte is the same number without it, and OpenSSL rightly accepts that.
            assert!(
                !key.verify_digest(alg, &digest, &sig[..sig_len - 1])
                    .unwrap(),
                "{alg}"
            );
            let other = sha(md, b"another message");
            assert!(!key.verify_digest(alg, &other, &sig).unwrap(), "{alg}");
            // A digest of the wrong size is a request error, not a failed verification.
            assert!(key.sign_digest(alg, &digest[1..]).is_err(), "{alg}");
            assert!(key.verify_digest(alg, &digest[1..], &sig).is_err(), "{alg}");
        }
    }

    #[test]
    fn signatures_verify_with_plain_openssl() {
        let message = b"independent check";
        let digest = sha(MessageDigest::sha256(), message);

        let rsa = rsa2048();
        let sig = rsa.sign_digest("RS256", &digest).unwrap();
        let mut v = Verifier::new(MessageDigest::sha256(), rsa.pkey()).unwrap();
        v.update(message).unwrap();
        assert!(v.verify(&sig).unwrap());
        // PKCS#1 v1.5 is deterministic: recovering the padded block shows the DigestInfo.
        let mut recovered = vec![0u8; 256];
        let n = rsa
            .pkey()
            .rsa()
            .unwrap()
            .public_decrypt(&sig, &mut recovered, Padding::PKCS1)
            .unwrap();
        let mut digest_info = hex::decode("3031300d060960864801650304020105000420").unwrap();
        digest_info.extend(&digest);
        assert_eq!(&recovered[..n], &digest_info[..]);

        let sig = rsa.sign_digest("PS256", &digest).unwrap();
        let mut v = Verifier::new(MessageDigest::sha256(), rsa.pkey()).unwrap();
        v.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
        v.set_rsa_mgf1_md(MessageDigest::sha256()).unwrap();
        v.set_rsa_pss_saltlen(RsaPssSaltlen::custom(32)).unwrap();
        v.update(message).unwrap();
        assert!(v.verify(&sig).unwrap());

        for (alg, curve, md) in [
            ("ES256", Curve::P256, MessageDigest::sha256()),
            ("ES512", Curve::P521, MessageDigest::sha512()),
        ] {
            let key = ec(curve);
            let digest = sha(md, message);
            let raw = key.sign_digest(alg, &digest).unwrap();
            let len = curve.coordinate_len();
            let r = BigNum::from_slice(&raw[..len]).unwrap();
            let s = BigNum::from_slice(&raw[len..]).unwrap();
            let der = EcdsaSig::from_private_components(r, s)
                .unwrap()
                .to_der()
                .unwrap();
            let mut v = Verifier::new(md, key.pkey()).unwrap();
            v.update(message).unwrap();
            assert!(v.verify(&der).unwrap(), "{alg}");
        }
    }

    #[test]
    fn algorithm_must_fit_the_key() {
        let digest = [1u8; 32];
        let p256 = ec(Curve::P256);
        assert!(
            p256.sign_digest("RS256", &digest)
                .unwrap_err()
                .0
                .contains("RSA")
        );
        assert!(
            rsa2048()
                .sign_digest("ES256", &digest)
                .unwrap_err()
                .0
                .contains("P-256")
        );
        let p384 = ec(Curve::P384);
        assert!(p384.sign_digest("ES256", &digest).is_err());
        assert!(
            p256.sign_digest("HS256", &digest)
                .unwrap_err()
                .0
                .contains("HS256")
        );
    }

    fn web_request() -> CertRequest {
        CertRequest {
            subject: "CN=web.example.test, O=Contoso".into(),
            dns_names: vec!["web.example.test".into(), "www.example.test".into()],
            emails: vec!["admin@example.test".into()],
            ekus: vec!["1.3.6.1.5.5.7.3.1".into(), "1.3.6.1.5.5.7.3.2".into()],
            key_usage: vec!["digitalSignature".into(), "keyEncipherment".into()],
            validity_months: 0,
        }
    }

    fn dns_sans(cert: &X509) -> Vec<String> {
        cert.subject_alt_names()
            .map(|s| {
                s.iter()
                    .filter_map(|n| n.dnsname().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn text(cert: &X509) -> String {
        String::from_utf8(cert.to_text().unwrap()).unwrap()
    }

    #[test]
    fn self_signed_honours_the_request() {
        let key = rsa2048();
        let before = now_unix();
        let cert = self_signed(key, &web_request()).unwrap();
        let info = cert_info(&cert);
        assert_eq!(info.subject, "CN=web.example.test, O=Contoso");
        assert_eq!(info.issuer, info.subject);
        assert_eq!(dns_sans(&cert), ["web.example.test", "www.example.test"]);
        let emails: Vec<_> = cert
            .subject_alt_names()
            .unwrap()
            .iter()
            .filter_map(|n| n.email().map(str::to_string))
            .collect();
        assert_eq!(emails, ["admin@example.test"]);
        let t = text(&cert);
        assert!(t.contains("TLS Web Server Authentication"), "{t}");
        assert!(t.contains("TLS Web Client Authentication"), "{t}");
        assert!(t.contains("Digital Signature, Key Encipherment"), "{t}");
        assert!(t.contains("CA:FALSE"), "{t}");
        assert!(cert.subject_key_id().is_some());
        assert!(
            (before - 600 - 5..=before - 600 + 5).contains(&info.not_before),
            "{info:?}"
        );
        let expected_after = before + 12 * 30 * 86_400;
        assert!((expected_after - 5..=expected_after + 5).contains(&info.not_after));
        assert!(cert.verify(key.pkey()).unwrap());
        assert!(key.matches_cert(&cert));
        assert_eq!(
            cert.signature_algorithm().object().nid(),
            Nid::SHA256WITHRSAENCRYPTION
        );
        assert_eq!(info.serial_hex.len(), 32, "{}", info.serial_hex);
        assert!(
            info.serial_hex
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        );

        let ec_key = ec(Curve::P384);
        let req = CertRequest {
            subject: "CN=\"Smith, J\", OU=Dev".into(),
            validity_months: 3,
            ..Default::default()
        };
        let cert = self_signed(&ec_key, &req).unwrap();
        assert_eq!(
            cert.signature_algorithm().object().nid(),
            Nid::ECDSA_WITH_SHA256
        );
        let info = cert_info(&cert);
        assert_eq!(info.subject, "CN=\"Smith, J\", OU=Dev");
        assert!((info.not_after - info.not_before - (90 * 86_400 + 600)).abs() <= 2);
        assert!(cert.subject_alt_names().is_none());
        assert!(!ec_key.matches_cert(&self_signed(&ec(Curve::P384), &req).unwrap()));
    }

    #[test]
    fn self_signed_rejects_bad_requests() {
        let key = ec(Curve::P256);
        let empty = CertRequest::default();
        assert_eq!(
            self_signed(&key, &empty).unwrap_err().0,
            "certificate subject is empty"
        );
        for (field, req) in [
            (
                "eku",
                CertRequest {
                    ekus: vec!["serverAuth".into()],
                    ..web_request()
                },
            ),
            (
                "ku",
                CertRequest {
                    key_usage: vec!["sign".into()],
                    ..web_request()
                },
            ),
            (
                "subject",
                CertRequest {
                    subject: "just text".into(),
                    ..web_request()
                },
            ),
            (
                "country",
                CertRequest {
                    subject: "CN=a, C=USA".into(),
                    ..web_request()
                },
            ),
        ] {
            assert!(self_signed(&key, &req).is_err(), "{field}");
        }
    }

    fn chain() -> (Authority, Authority) {
        let root = Authority::new_root("Test Root CA").unwrap();
        let int = root.issue_intermediate("Test Intermediate CA").unwrap();
        (root, int)
    }

    #[test]
    fn authority_chain_verifies_with_x509_store() {
        let (root, int) = chain();
        assert_eq!(cert_info(&root.cert).subject, "CN=Test Root CA");
        assert_eq!(cert_info(&int.cert).issuer, "CN=Test Root CA");
        assert_eq!(int.cert.pathlen(), Some(0));
        assert!(int.cert.authority_key_id().is_some());
        let root_info = cert_info(&root.cert);
        assert!((root_info.not_after - root_info.not_before - (3650 * 86_400 + 600)).abs() <= 2);

        let leaf_key = ec(Curve::P256);
        let req = CertRequest {
            subject: "CN=localhost".into(),
            dns_names: vec!["localhost".into()],
            ..Default::default()
        };
        let ips: [IpAddr; 2] = ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        let leaf = int.issue_leaf(&leaf_key, &req, &ips, 30).unwrap();
        let t = text(&leaf);
        assert!(t.contains("IP Address:127.0.0.1"), "{t}");
        assert!(
            t.contains("Digital Signature") && !t.contains("Key Encipherment"),
            "{t}"
        );
        assert!(t.contains("TLS Web Server Authentication, TLS Web Client Authentication"));
        assert_eq!(
            leaf.authority_key_id().unwrap().as_slice(),
            int.cert.subject_key_id().unwrap().as_slice()
        );
        let info = cert_info(&leaf);
        assert_eq!(info.issuer, "CN=Test Intermediate CA");
        assert!((info.not_after - info.not_before - (30 * 86_400 + 600)).abs() <= 2);

        let rsa_leaf = int
            .issue_leaf(
                rsa2048(),
                &CertRequest {
                    subject: String::new(),
                    ..req.clone()
                },
                &[],
                1,
            )
            .unwrap();
        assert_eq!(cert_info(&rsa_leaf).subject, "CN=localhost");
        assert!(text(&rsa_leaf).contains("Digital Signature, Key Encipherment"));

        let mut store = X509StoreBuilder::new().unwrap();
        store.add_cert(root.cert.clone()).unwrap();
        let store = store.build();
        for cert in [&leaf, &rsa_leaf] {
            let mut untrusted = Stack::new().unwrap();
            untrusted.push(int.cert.clone()).unwrap();
            let mut ctx = X509StoreContext::new().unwrap();
            let ok = ctx
                .init(&store, cert, &untrusted, |c| {
                    let ok = c.verify_cert()?;
                    assert_eq!(c.error().as_raw(), 0, "{}", c.error());
                    Ok(ok)
                })
                .unwrap();
            assert!(ok);
            // Without the intermediate the chain must not build.
            let empty = Stack::new().unwrap();
            let mut ctx = X509StoreContext::new().unwrap();
            assert!(!ctx.init(&store, cert, &empty, |c| c.verify_cert()).unwrap());
        }
    }

    /// root, intermediate, RSA leaf and the bundle the vault would store for it.
    fn rsa_bundle() -> CertBundle {
        let (root, int) = chain();
        let key = rsa2048().clone();
        let leaf = int.issue_leaf(&key, &web_request(), &[], 90).unwrap();
        CertBundle {
            leaf,
            chain: vec![int.cert, root.cert],
            key,
        }
    }

    fn ders(certs: &[X509]) -> Vec<Vec<u8>> {
        certs.iter().map(|c| c.to_der().unwrap()).collect()
    }

    #[test]
    fn parse_import_pem_finds_leaf_by_key_in_any_order() {
        let b = rsa_bundle();
        let (int, root) = (&b.chain[0], &b.chain[1]);
        let pkcs1 =
            String::from_utf8(b.key.pkey().rsa().unwrap().private_key_to_pem().unwrap()).unwrap();
        assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let text = format!(
            "{}{}{}{}",
            certs_pem(std::slice::from_ref(root)),
            certs_pem(std::slice::from_ref(&b.leaf)),
            pkcs1,
            certs_pem(std::slice::from_ref(int)),
        )
        .replace('\n', "\r\n");
        let parsed = parse_import(&text, None, false).unwrap();
        assert_eq!(parsed.leaf.to_der().unwrap(), b.leaf.to_der().unwrap());
        assert_eq!(ders(&parsed.chain), ders(&[root.clone(), int.clone()]));
        assert!(parsed.key.pkey().public_eq(b.key.pkey()));

        // SEC1 EC key, pem flag set explicitly, leading whitespace.
        let key = ec(Curve::P384);
        let cert = self_signed(
            &key,
            &CertRequest {
                subject: "CN=ec".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let sec1 =
            String::from_utf8(key.pkey().ec_key().unwrap().private_key_to_pem().unwrap()).unwrap();
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        let text = format!("\n  {}{}", certs_pem(std::slice::from_ref(&cert)), sec1);
        let parsed = parse_import(&text, None, true).unwrap();
        assert_eq!(parsed.key.spec(), KeySpec::Ec(Curve::P384));
        assert!(parsed.chain.is_empty());
    }

    #[test]
    fn parse_import_pem_errors() {
        let b = rsa_bundle();
        let leaf_pem = certs_pem(std::slice::from_ref(&b.leaf));
        let key_pem = b.key.private_pkcs8_pem();
        let other = ec(Curve::P256).private_pkcs8_pem();
        let cases = [
            (leaf_pem.clone(), "no private key"),
            (key_pem.clone(), "no certificate"),
            (format!("{other}{leaf_pem}"), "no certificate matching"),
            (
                format!("{key_pem}{other}{leaf_pem}"),
                "more than one private key",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n".to_string(),
                "missing END",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_import(&text, None, true).unwrap_err();
            assert!(err.0.contains(expected), "{err} / {expected}");
            assert!(!err.0.contains("BEGIN") && !err.0.contains("MII"), "{err}");
        }
    }

    fn pfx_with_password(b: &CertBundle, password: &str) -> String {
        let mut stack = Stack::new().unwrap();
        for c in &b.chain {
            stack.push(c.clone()).unwrap();
        }
        // OpenSSL 3 defaults (AES-256, SHA-256 MAC): the modern shape clients produce.
        let p12 = Pkcs12::builder()
            .name("friendly")
            .pkey(b.key.pkey())
            .cert(&b.leaf)
            .ca(stack)
            .build2(password)
            .unwrap();
        // Wrapped at 76 columns the way `base64` tools emit it.
        let flat = b64std(&p12.to_der().unwrap());
        flat.as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn parse_import_pfx_with_password() {
        let b = rsa_bundle();
        let value = pfx_with_password(&b, "s3cret!");
        let parsed = parse_import(&value, Some("s3cret!"), false).unwrap();
        assert_eq!(parsed.leaf.to_der().unwrap(), b.leaf.to_der().unwrap());
        assert_eq!(ders(&parsed.chain), ders(&b.chain));
        assert!(parsed.key.pkey().public_eq(b.key.pkey()));

        let err = parse_import(&value, Some("wrong"), false).unwrap_err();
        assert!(err.0.contains("password"), "{err}");
        let err = parse_import(&value, None, false).unwrap_err();
        assert!(err.0.contains("password"), "{err}");

        let err = parse_import("this is not base64 at all!", None, false).unwrap_err();
        assert!(err.0.contains("base64"), "{err}");
        let err = parse_import(&b64std(b"not a pfx"), None, false).unwrap_err();
        assert!(err.0.contains("PKCS#12"), "{err}");
    }

    /// RC2-40 certificate bag, as `openssl pkcs12 -export -legacy` and older Windows/Java
    /// tools write it; a throwaway P-256 key made only for this fixture (password "pw").
    const LEGACY_RC2_PFX: &str = "\
MIIDkgIBAzCCA1gGCSqGSIb3DQEHAaCCA0kEggNFMIIDQTCCAjcGCSqGSIb3DQEHBqCCAigwggIk\
AgEAMIICHQYJKoZIhvcNAQcBMBwGCiqGSIb3DQEMAQYwDgQIXQIMgt9ZyxkCAggAgIIB8OVISG8Z\
7sOzN0kW5qO8GptA+dmeT99PVlV9H6juUx68JXaWNxYrituKyPAzDBvpntKsmVvVUAj8Oc4fycWE\
WIIB/e6e46KuT2Pzm/YikfINHHZtAiY5/b99T9sSiPpheEPNhm/02dsnkohFMJQbQ1d/flGPHT7N\
GkfPvzwyJJnfUXFfHxtMLvG3cLulFuvgcDaA2ImsoM2jPmrGNS865AQ5bFhvdL3UOlOcR7k6A3PP\
LJLRMVW1Fy1XEFv58PcMgiFHWU/RBLVT7mucTztYzE57VYCYcs2IdXzex2g17WZwMGaFjR58vyOu\
lmvFzA2dYFkuXjQQr0TVIXjAlotBw61+EY4t7m+H2miPnirSjiD0G4HhmbcFG9dtLimcfpEuk1R5\
Nvcg5fuyNk1538RV+kpDyHOLsGBjao2ITHFCJ0I5MfqyjaxeBd5BHHT6omMlXPbuMoo9V9n5erQj\
tC6zP5vGJewKJLMyyxHoSLD37LpzmDRNy0QRvh9hceUE+e+Fq/6fWaHGWa4eZj36VuEADYqQaM+2\
jLaMQf5boi76Lvha4A1gHYQBKFK+RaFGUFVohdOQNWtgPAiSr8LnL0Ghzs7lX2WNZ7skUPAy6IoH\
XTcEtaf/Ms0n1PVW4/COKVBTTXt8R0njyxZsNojwzuAYCpMwggECBgkqhkiG9w0BBwGggfQEgfEw\
ge4wgesGCyqGSIb3DQEMCgECoIG0MIGxMBwGCiqGSIb3DQEMAQMwDgQICFssn1z2H2ACAggABIGQ\
RSbJ9ezudJwxR3ruOIyxBwEqgsZv9RoRA/hwessPS0vuc0Ugn3GTYVgr7erM8cD4fYh6WaurYyhs\
4biGKYCeUDpnaRbto/PuCgvUgyXQHFRoF6Qw3gN9Dq4uA5DXT/9CdUItHLTHKrr4Wz03t0Xwn5KT\
AaSrAf3jW1uBxBKP3n4Y8vF1tC66CzFhwvcXOXk1MSUwIwYJKoZIhvcNAQkVMRYEFBxqv7satF/L\
8eBN/qgpCB8BqeyBMDEwITAJBgUrDgMCGgUABBTJqtmNFEGivnTG0yrRMD51QkgWRAQISjfjx1cD\
yZgCAggA";

    #[test]
    fn parse_import_pfx_with_legacy_rc2_encryption() {
        let parsed = parse_import(LEGACY_RC2_PFX, Some("pw"), false).unwrap();
        assert_eq!(cert_info(&parsed.leaf).subject, "CN=legacy.example.test");
        assert_eq!(parsed.key.spec(), KeySpec::Ec(Curve::P256));
        assert!(parsed.key.matches_cert(&parsed.leaf));
        let err = parse_import(LEGACY_RC2_PFX, Some("nope"), false).unwrap_err();
        assert!(err.0.contains("password"), "{err}");
    }

    #[test]
    fn pfx_export_round_trips_with_service_algorithms() {
        let b = rsa_bundle();
        let value = to_pfx_base64(&b, true).unwrap();
        // Canonical padded standard base64, no line breaks.
        assert_eq!(b64std(&b64std_decode(&value).unwrap()), value);
        let parsed = parse_import(&value, None, false).unwrap();
        assert_eq!(parsed.leaf.to_der().unwrap(), b.leaf.to_der().unwrap());
        assert_eq!(ders(&parsed.chain), ders(&b.chain));
        assert_eq!(
            parsed.key.pkey().private_key_to_pkcs8().unwrap(),
            b.key.pkey().private_key_to_pkcs8().unwrap()
        );
        // Re-exporting what was imported must not accumulate attributes.
        assert_eq!(to_pfx_base64(&parsed, true).unwrap().len(), value.len());

        // pbeWithSHAAnd3-KeyTripleDES-CBC for both bags, SHA-1 MAC, 2000 iterations.
        let der = b64std_decode(&value).unwrap();
        let pbe_3des = hex::decode("060a2a864886f70d010c0103").unwrap();
        let sha1 = hex::decode("06052b0e03021a").unwrap();
        let count = |needle: &[u8]| der.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(count(&pbe_3des), 2);
        assert_eq!(count(&sha1), 1);
        assert!(count(&hex::decode("020207d0").unwrap()) >= 3);

        let certs_only = to_pfx_base64(&b, false).unwrap();
        let p12 = Pkcs12::from_der(&b64std_decode(&certs_only).unwrap()).unwrap();
        let p = p12.parse2("").unwrap();
        assert!(p.pkey.is_none());
        let n = p.cert.iter().count() + p.ca.map(|s| s.len()).unwrap_or(0);
        assert_eq!(n, 3);
        let err = parse_import(&certs_only, None, false).unwrap_err();
        assert!(err.0.contains("no private key"), "{err}");
    }

    #[test]
    fn pem_export_has_the_service_layout() {
        let b = rsa_bundle();
        let pem = to_pem(&b, true);
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.ends_with("-----END CERTIFICATE-----\n"));
        assert!(!pem.contains('\r'));
        assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 3);
        let mut saw_full_line = false;
        for line in pem.lines() {
            assert!(line.len() <= 64, "{line}");
            saw_full_line |= line.len() == 64 && !line.starts_with("-----");
        }
        assert!(saw_full_line);
        let parsed = parse_import(&pem, None, true).unwrap();
        assert_eq!(parsed.leaf.to_der().unwrap(), b.leaf.to_der().unwrap());
        assert_eq!(ders(&parsed.chain), ders(&b.chain));

        let certs = to_pem(&b, false);
        assert!(certs.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(!certs.contains("PRIVATE"));
        let pos_leaf = certs
            .find(&certs_pem(std::slice::from_ref(&b.leaf)))
            .unwrap();
        assert_eq!(pos_leaf, 0);
    }

    #[test]
    fn cert_info_fingerprints_and_serial() {
        let key = ec(Curve::P256);
        let cert = self_signed(&key, &web_request()).unwrap();
        let info = cert_info(&cert);
        let der = cert.to_der().unwrap();
        assert_eq!(info.der, der);
        let sha1 = sha(MessageDigest::sha1(), &der);
        assert_eq!(b64url_decode(&info.x5t).unwrap(), sha1);
        assert_eq!(info.x5t, sha1_b64url(&der));
        assert_eq!(info.x5t.len(), 27);
        assert_eq!(
            b64url_decode(&sha256_b64url(&der)).unwrap(),
            sha(MessageDigest::sha256(), &der)
        );
        let serial = cert.serial_number().to_bn().unwrap().to_vec();
        assert_eq!(info.serial_hex, hex::encode_upper(serial));
        assert!(!info.serial_hex.starts_with("00"));
    }

    #[test]
    fn key_material_debug_hides_private_members() {
        let rsa = rsa2048();
        let dbg = format!("{rsa:?}");
        assert_eq!(dbg, "KeyMaterial { spec: Rsa(2048), .. }");
        let d = rsa.pkey().rsa().unwrap().d().to_vec();
        assert!(!dbg.contains(&hex::encode(&d[..4])));
        assert!(!dbg.contains(&b64url(&d)[..6]));
        let key = ec(Curve::P521);
        assert_eq!(format!("{key:?}"), "KeyMaterial { spec: Ec(P521), .. }");
        let bundle_dbg = format!("{:?}", rsa_bundle());
        assert!(!bundle_dbg.contains("PRIVATE"));
        assert!(!bundle_dbg.contains(&hex::encode(&d[..4])));
    }

    #[test]
    fn pem_helpers_encode_keys() {
        let key = ec(Curve::P256);
        let private = key.private_pkcs8_pem();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let public = key.public_spki_pem();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        let parsed = PKey::public_key_from_pem(public.as_bytes()).unwrap();
        assert!(parsed.public_eq(key.pkey()));
        let reparsed = PKey::private_key_from_pem(private.as_bytes()).unwrap();
        assert!(
            KeyMaterial::from_pkey(reparsed)
                .unwrap()
                .pkey()
                .public_eq(key.pkey())
        );
        let ed = PKey::generate_ed25519().unwrap();
        assert!(KeyMaterial::from_pkey(ed).is_err());
    }

    #[test]
    fn csr_carries_key_and_subject() {
        let key = ec(Curve::P256);
        let csr = csr_base64(&key, "CN=pending.example.test, O=Contoso").unwrap();
        let req = X509Req::from_der(&b64std_decode(&csr).unwrap()).unwrap();
        assert!(req.verify(key.pkey()).unwrap());
        assert!(req.public_key().unwrap().public_eq(key.pkey()));
        assert_eq!(
            format_name(req.subject_name()),
            "CN=pending.example.test, O=Contoso"
        );
        assert!(csr_base64(&key, "").is_err());
    }

    #[test]
    fn base64_helpers() {
        let data = [0xfbu8, 0xff, 0xfe, 0x01];
        assert_eq!(b64url(&data), "-__-AQ");
        assert_eq!(b64url_decode("-__-AQ").unwrap(), data);
        assert_eq!(b64url_decode("-__-AQ==").unwrap(), data);
        assert!(b64url_decode("+//+AQ").is_err());
        assert_eq!(b64std(&data), "+//+AQ==");
        assert_eq!(b64std_decode(" +//+\r\nAQ==\n").unwrap(), data);
        assert!(b64std_decode("@@@").is_err());
    }

    #[test]
    fn subject_parsing_and_formatting() {
        let name = parse_subject(
            "CN=a.example, OU=Eng; O=Contoso, L=Redmond, ST=WA, C=US, E=x@example.test, DC=example",
        )
        .unwrap();
        assert_eq!(
            format_name(&name),
            "CN=a.example, OU=Eng, O=Contoso, L=Redmond, ST=WA, C=US, E=x@example.test, DC=example"
        );
        let quoted = parse_subject(r#"CN="a ""b"", c""#).unwrap();
        assert_eq!(format_name(&quoted), r#"CN="a ""b"", c""#);
        let escaped = parse_subject(r"CN=a\, b").unwrap();
        assert_eq!(format_name(&escaped), "CN=\"a, b\"");
        assert!(parse_subject("CN=").is_err());
        assert!(parse_subject("=x").is_err());
        assert!(parse_subject("CN=\"open").is_err());
        assert!(parse_subject("NOPE=x").is_err());
    }
}
