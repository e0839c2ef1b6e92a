//! `certs/<name>/…`: a certificate version rendered as the files TLS servers and clients expect.
//!
//! Inputs are the two things the vault stores for a certificate version (see
//! `tests/recordings/get_certificate*.json`): `cer`, the leaf's DER from GetCertificate, which
//! is authoritative for the leaf; and the backing secret of the same version, a PFX with an
//! empty password (`application/x-pkcs12`) or PEM text (`application/x-pem-file`), which carries the private
//! key (exportable certificates only) and the rest of the chain.
//!
//! Every format is decoded and encoded by OpenSSL through the `openssl` crate. The chain order
//! is computed here from the names and key identifiers OpenSSL extracts, because neither the
//! vault nor the PFX promises an order (the service keeps whatever was imported).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::{X509, X509Ref};

use super::{RenderError, malformed};

/// The files of one certificate version. All present files are complete.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct CertFiles {
    /// The leaf.
    pub cert_pem: Vec<u8>,
    /// Intermediates, leaf-side first (empty when there are none): `fullchain_pem` without the
    /// leaf.
    pub chain_pem: Vec<u8>,
    /// Leaf then intermediates, ordered by issuer links.
    pub fullchain_pem: Vec<u8>,
    /// PKCS#8 "-----BEGIN PRIVATE KEY-----", only for exportable certificates.
    pub privkey_pem: Option<Vec<u8>>,
    /// Private key then full chain (what the CSI provider writes).
    pub bundle_pem: Option<Vec<u8>>,
    /// PKCS#12: the stored PFX bytes (base64-decoded) for application/x-pkcs12; for an
    /// exportable PEM-backed certificate, a PKCS#12 built from key + full chain with an empty
    /// password.
    pub pfx: Option<Vec<u8>>,
}

/// The private key's renderings are wiped when dropped (the public files need not be).
impl Drop for CertFiles {
    fn drop(&mut self) {
        for private in [&mut self.privkey_pem, &mut self.bundle_pem, &mut self.pfx] {
            zeroize::Zeroize::zeroize(private);
        }
    }
}

impl CertFiles {
    /// The file names in the order a directory listing shows them.
    pub(crate) const NAMES: [&'static str; 6] = [
        "cert.pem",
        "chain.pem",
        "fullchain.pem",
        "privkey.pem",
        "bundle.pem",
        "cert.pfx",
    ];

    /// The bytes of the file `name` ("cert.pem", "cert.pfx", …), if this version has it.
    pub(crate) fn file(&self, name: &str) -> Option<&[u8]> {
        match name {
            "cert.pem" => Some(&self.cert_pem),
            "chain.pem" => Some(&self.chain_pem),
            "fullchain.pem" => Some(&self.fullchain_pem),
            "privkey.pem" => self.privkey_pem.as_deref(),
            "bundle.pem" => self.bundle_pem.as_deref(),
            "cert.pfx" => self.pfx.as_deref(),
            _ => None,
        }
    }

    /// The names of the files present, in a fixed order.
    pub(crate) fn names(&self) -> Vec<&'static str> {
        Self::NAMES
            .into_iter()
            .filter(|name| self.file(name).is_some())
            .collect()
    }
}

/// Lengths and presence only: a `{:?}` in a log line must not print a private key.
impl std::fmt::Debug for CertFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Len(usize);
        impl std::fmt::Debug for Len {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "<{} bytes>", self.0)
            }
        }
        let opt = |v: &Option<Vec<u8>>| v.as_ref().map(|v| Len(v.len()));
        f.debug_struct("CertFiles")
            .field("cert_pem", &Len(self.cert_pem.len()))
            .field("chain_pem", &Len(self.chain_pem.len()))
            .field("fullchain_pem", &Len(self.fullchain_pem.len()))
            .field("privkey_pem", &opt(&self.privkey_pem))
            .field("bundle_pem", &opt(&self.bundle_pem))
            .field("pfx", &opt(&self.pfx))
            .finish()
    }
}

/// What the backing secret contributed.
struct SecretParts {
    /// Certificates in the secret's order (the leaf may be among them).
    certs: Vec<X509>,
    key: Option<PKey<Private>>,
    /// The stored PFX, when the secret is one.
    pfx: Option<Vec<u8>>,
}

/// `cer`: DER of the leaf, as GetCertificate returns it (authoritative). `secret`: the
/// certificate's backing secret of the same version, if it could be read: (contentType, value)
/// where value is standard base64 of a PFX with an empty password (`application/x-pkcs12`) or
/// PEM text (`application/x-pem-file`: PKCS#8 key then certificates). A secret with no private
/// key (non-exportable certificate) gives the public files only; with no secret at all,
/// chain.pem is empty and only cert.pem/chain.pem/fullchain.pem exist.
/// A leaf certificate's DER is a few KiB; 64 KiB leaves room for long SAN lists and no more.
pub(crate) const MAX_CER_BYTES: usize = 64 * 1024;
/// Certificates a backing secret may hold (leaf plus chain); real chains have 2 to 4.
pub(crate) const MAX_CHAIN_CERTS: usize = 32;

pub(crate) fn render(cer: &[u8], secret: Option<(&str, &str)>) -> Result<CertFiles, RenderError> {
    if cer.len() > MAX_CER_BYTES {
        return Err(malformed(format!(
            "certificate (cer) of {} bytes, over the {MAX_CER_BYTES}-byte limit",
            cer.len()
        )));
    }
    // The backing secret's value is bounded by the vault layer (Key Vault's 25,600 bytes); the
    // number of certificates in it is bounded here.
    let leaf = X509::from_der(cer).map_err(|_| malformed("certificate (cer) is not DER X.509"))?;
    let leaf_der = der(&leaf)?;
    // d2i stops at the end of the first structure; trailing bytes mean `cer` is not one
    // certificate, and serving a prefix of it would hide that.
    if leaf_der.len() != cer.len() {
        return Err(malformed("certificate (cer) has trailing bytes"));
    }

    let parts = match secret {
        None => SecretParts {
            certs: Vec::new(),
            key: None,
            pfx: None,
        },
        Some((content_type, value)) => parse_secret(content_type, value)?,
    };

    if let Some(key) = &parts.key {
        let leaf_key = leaf
            .public_key()
            .map_err(|_| malformed("certificate public key does not parse"))?;
        // Serving a key for another certificate (a secret of another version, a mixed-up
        // import) would make every TLS handshake fail in a way far from the cause.
        if !key.public_eq(&leaf_key) {
            return Err(malformed(
                "private key in the backing secret does not match the certificate",
            ));
        }
    }

    // The other certificates: the secret's, without the leaf and without repeats (the same
    // certificate twice adds nothing to a chain), in the secret's order.
    let mut others: Vec<(X509, Vec<u8>)> = Vec::new();
    for cert in parts.certs {
        let d = der(&cert)?;
        if d != leaf_der && others.iter().all(|(_, seen)| *seen != d) {
            others.push((cert, d));
        }
    }
    let chain = order_chain(&leaf, others.into_iter().map(|(c, _)| c).collect());

    let cert_pem = pem(&leaf)?;
    let mut chain_pem = Vec::new();
    for cert in &chain {
        chain_pem.extend(pem(cert)?);
    }
    let fullchain_pem = [cert_pem.as_slice(), chain_pem.as_slice()].concat();

    let (privkey_pem, bundle_pem, pfx) = match &parts.key {
        None => (None, None, None),
        Some(key) => {
            // Re-encoded by OpenSSL rather than copied from the secret, so privkey.pem is
            // always unencrypted PKCS#8 with 64-character lines whatever the import looked like.
            let privkey = key
                .private_key_to_pem_pkcs8()
                .map_err(|_| malformed("private key does not encode as PKCS#8"))?;
            let bundle = [privkey.as_slice(), fullchain_pem.as_slice()].concat();
            let pfx = match parts.pfx {
                Some(stored) => stored,
                None => build_pfx(key, &leaf, &chain)?,
            };
            (Some(privkey), Some(bundle), Some(pfx))
        }
    };

    Ok(CertFiles {
        cert_pem,
        chain_pem,
        fullchain_pem,
        privkey_pem,
        bundle_pem,
        pfx,
    })
}

/// Decodes the backing secret into its certificates, key and (for a PFX) stored bytes.
fn parse_secret(content_type: &str, value: &str) -> Result<SecretParts, RenderError> {
    // Media types are case-insensitive; parameters (`; charset=…`) are not expected but would
    // not change the format.
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    // Checked here too, so rendering is bounded whoever calls it.
    if value.len() > crate::vault::MAX_SECRET_VALUE_BYTES {
        return Err(malformed(format!(
            "backing secret of {} bytes, over the {}-byte limit",
            value.len(),
            crate::vault::MAX_SECRET_VALUE_BYTES
        )));
    }
    let parts = match media.as_str() {
        "application/x-pkcs12" => parse_pkcs12(value),
        "application/x-pem-file" => parse_pem(value),
        _ => Err(malformed(format!(
            "backing secret has content type {:?}, expected application/x-pkcs12 or \
             application/x-pem-file",
            content_type.chars().take(64).collect::<String>()
        ))),
    }?;
    if parts.certs.len() > MAX_CHAIN_CERTS {
        return Err(malformed(format!(
            "backing secret holds {} certificates, over the limit of {MAX_CHAIN_CERTS}",
            parts.certs.len()
        )));
    }
    if let Some(key) = &parts.key
        && key.bits() > crate::render::key::MAX_RSA_BITS
    {
        return Err(malformed(format!(
            "backing secret's private key has {} bits, over the {}-bit limit",
            key.bits(),
            crate::render::key::MAX_RSA_BITS
        )));
    }
    Ok(parts)
}

fn parse_pkcs12(value: &str) -> Result<SecretParts, RenderError> {
    // The vault sends one line, but a value imported through other tools may be wrapped.
    let compact: String = value.split_ascii_whitespace().collect();
    let bytes = STANDARD
        .decode(compact)
        .map_err(|_| malformed("backing secret (PKCS#12) is not base64"))?;
    let p12 = Pkcs12::from_der(&bytes)
        .map_err(|_| malformed("backing secret is not a PKCS#12 structure"))?;
    // Key Vault never keeps an import password (obs. 16 in tests/recordings/README.md): the PFX
    // is protected by the empty one.
    // OpenSSL's PKCS12_parse tries both the empty and the absent password for "".
    let parsed = p12
        .parse2("")
        .map_err(|_| malformed("backing secret (PKCS#12) does not open with an empty password"))?;
    let mut certs = Vec::new();
    certs.extend(parsed.cert);
    if let Some(ca) = parsed.ca {
        certs.extend(ca);
    }
    if certs.is_empty() {
        return Err(malformed("backing secret (PKCS#12) holds no certificate"));
    }
    // A PFX without a key is a non-exportable certificate's: cert.pfx is only served with a key.
    let pfx = parsed.pkey.is_some().then_some(bytes);
    Ok(SecretParts {
        certs,
        key: parsed.pkey,
        pfx,
    })
}

fn parse_pem(value: &str) -> Result<SecretParts, RenderError> {
    // PEM_read_bio_X509 skips blocks of other types (the private key) and fails on a broken
    // CERTIFICATE block.
    let certs = X509::stack_from_pem(value.as_bytes())
        .map_err(|_| malformed("backing secret (PEM) has a certificate that does not parse"))?;
    // Whether a key is there at all decides "non-exportable" versus "broken": OpenSSL's key
    // reader reports both as the same failure, so look for the BEGIN line of any private key
    // label (PRIVATE KEY, RSA PRIVATE KEY, EC PRIVATE KEY, ENCRYPTED PRIVATE KEY) first.
    let key_blocks = value
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("-----BEGIN ") && l.ends_with("PRIVATE KEY-----"))
        .count();
    let key = match key_blocks {
        0 => None,
        // An encrypted key cannot be used without a password the vault never has.
        1 => Some(PKey::private_key_from_pem(value.as_bytes()).map_err(|_| {
            malformed("backing secret (PEM) has a private key that does not parse")
        })?),
        _ => {
            return Err(malformed(
                "backing secret (PEM) has more than one private key",
            ));
        }
    };
    if certs.is_empty() {
        return Err(malformed("backing secret (PEM) holds no certificate"));
    }
    Ok(SecretParts {
        certs,
        key,
        pfx: None,
    })
}

/// Orders the non-leaf certificates: the links from the leaf first, then the ones the links do
/// not reach in the secret's order, then self-signed roots (the linked one first). Nothing is
/// dropped: a certificate kvfs cannot place may still be one a client needs.
pub(crate) fn order_chain(leaf: &X509Ref, mut remaining: Vec<X509>) -> Vec<X509> {
    let mut linked: Vec<X509> = Vec::new();
    let mut current: X509 = leaf.to_owned();
    // A self-signed certificate ends the path: its issuer is itself, and following the name
    // again could pick up a cross-signed copy of the same CA.
    while !is_self_signed(&current) {
        let Some(i) = next_link(&current, &remaining) else {
            break;
        };
        let next = remaining.remove(i);
        linked.push(next.clone());
        current = next;
    }
    let mut roots: Vec<X509> = Vec::new();
    if linked.last().is_some_and(|c| is_self_signed(c)) {
        roots.extend(linked.pop());
    }
    let (unlinked_roots, unlinked): (Vec<X509>, Vec<X509>) =
        remaining.into_iter().partition(|c| is_self_signed(c));
    roots.extend(unlinked_roots);
    linked.into_iter().chain(unlinked).chain(roots).collect()
}

/// The index of the certificate that issued `current`: its subject is `current`'s issuer and,
/// when both identifiers are present, its subject key identifier is `current`'s authority key
/// identifier. A candidate whose identifiers match beats one that lacks them (two CAs may share
/// a name across a key rollover); otherwise the secret's order decides.
fn next_link(current: &X509Ref, candidates: &[X509]) -> Option<usize> {
    let aki = current.authority_key_id().map(|id| id.as_slice());
    let mut by_name_only = None;
    for (i, candidate) in candidates.iter().enumerate() {
        if !names_equal(candidate.subject_name(), current.issuer_name()) {
            continue;
        }
        match (aki, candidate.subject_key_id().map(|id| id.as_slice())) {
            (Some(aki), Some(ski)) if aki == ski => return Some(i),
            (Some(_), Some(_)) => {}
            _ => {
                by_name_only.get_or_insert(i);
            }
        }
    }
    by_name_only
}

/// Self-issued with consistent key identifiers: a root. No signature check: this only decides
/// where a certificate goes in the file, never whether it is trusted.
pub(crate) fn is_self_signed(cert: &X509Ref) -> bool {
    if !names_equal(cert.subject_name(), cert.issuer_name()) {
        return false;
    }
    match (cert.authority_key_id(), cert.subject_key_id()) {
        (Some(aki), Some(ski)) => aki.as_slice() == ski.as_slice(),
        _ => true,
    }
}

/// X509_NAME_cmp, which compares canonical encodings the way chain verification does.
pub(crate) fn names_equal(a: &openssl::x509::X509NameRef, b: &openssl::x509::X509NameRef) -> bool {
    matches!(a.try_cmp(b), Ok(std::cmp::Ordering::Equal))
}

/// A PKCS#12 for a PEM-backed exportable certificate: key, leaf and chain, empty password.
fn build_pfx(key: &PKey<Private>, leaf: &X509Ref, chain: &[X509]) -> Result<Vec<u8>, RenderError> {
    let fail = |_| malformed("could not build a PKCS#12 from the key and certificates");
    let mut ca = Stack::new().map_err(fail)?;
    for cert in chain {
        ca.push(cert.clone()).map_err(fail)?;
    }
    let mut builder = Pkcs12::builder();
    builder.pkey(key).cert(leaf).ca(ca);
    // The same algorithms as the PFX Key Vault itself produces (3DES bags, SHA-1 MAC): with an
    // empty password they protect nothing either way, and older Windows and Java releases open
    // no other. Named explicitly because OpenSSL's defaults differ between 1.1 (RC2, which
    // OpenSSL 3 only has in its legacy provider) and 3.x (AES-256 with PBKDF2).
    builder
        .key_algorithm(Nid::PBE_WITHSHA1AND3_KEY_TRIPLEDES_CBC)
        .cert_algorithm(Nid::PBE_WITHSHA1AND3_KEY_TRIPLEDES_CBC)
        .mac_md(MessageDigest::sha1());
    builder.build2("").map_err(fail)?.to_der().map_err(fail)
}

fn der(cert: &X509Ref) -> Result<Vec<u8>, RenderError> {
    cert.to_der()
        .map_err(|_| malformed("certificate does not encode as DER"))
}

fn pem(cert: &X509Ref) -> Result<Vec<u8>, RenderError> {
    cert.to_pem()
        .map_err(|_| malformed("certificate does not encode as PEM"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::test_support::{
        assert_no_material, assert_ok, assert_pem_shape, openssl, recorded_bodies,
    };
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::rsa::Rsa;
    use openssl::x509::extension::{
        AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage,
        SubjectAlternativeName, SubjectKeyIdentifier,
    };
    use openssl::x509::{X509Builder, X509NameBuilder};

    const PKCS12: &str = "application/x-pkcs12";
    const PEM: &str = "application/x-pem-file";

    // ---- recorded material ----

    /// (cer DER, x5t) of each recorded GetCertificate.
    fn recorded_cers() -> Vec<(Vec<u8>, String)> {
        recorded_bodies("get_certificate.json")
            .iter()
            .map(|b| {
                let cer = STANDARD.decode(b["cer"].as_str().unwrap()).unwrap();
                (cer, b["x5t"].as_str().unwrap().to_string())
            })
            .collect()
    }

    /// The recorded backing secret value of the given content type.
    fn recorded_secret(content_type: &str) -> String {
        recorded_bodies("get_certificate_secret.json")
            .iter()
            .find(|b| b["contentType"] == content_type)
            .unwrap_or_else(|| panic!("no recorded {content_type} secret"))["value"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The leaf's DER inside a recorded secret. The recordings hold no GetCertificate of the
    /// two certificates whose secrets they hold, so the tests take `cer` from the secret itself.
    fn leaf_of_recorded(content_type: &str) -> Vec<u8> {
        let value = recorded_secret(content_type);
        let cert = if content_type == PKCS12 {
            let p12 = Pkcs12::from_der(&STANDARD.decode(value).unwrap()).unwrap();
            p12.parse2("").unwrap().cert.unwrap()
        } else {
            X509::stack_from_pem(value.as_bytes()).unwrap().remove(0)
        };
        cert.to_der().unwrap()
    }

    // ---- the openssl command line ----

    fn assert_cli_accepts_cert(pem: &[u8]) {
        assert_ok(&openssl(&["x509", "-noout"], pem), "cert.pem");
    }

    /// The private key's public half, as the CLI derives it, is the certificate's public key.
    fn assert_cli_key_matches_cert(privkey: &[u8], cert: &[u8]) {
        let from_key = openssl(&["pkey", "-pubout"], privkey);
        assert_ok(&from_key, "privkey.pem");
        let from_cert = openssl(&["x509", "-pubkey", "-noout"], cert);
        assert_ok(&from_cert, "cert.pem");
        assert!(from_key.stdout.starts_with(b"-----BEGIN PUBLIC KEY-----"));
        assert_eq!(
            from_key.stdout, from_cert.stdout,
            "privkey.pem does not match cert.pem"
        );
    }

    /// Opens a PFX with an empty password and returns the certificates the CLI printed. OpenSSL
    /// 3 refuses RC2/RC4/DES PFX files without `-legacy`; if the plain call fails, the legacy
    /// provider is tried and that is reported, so a vault PFX using such algorithms is seen.
    fn cli_open_pfx(pfx: &[u8]) -> (Vec<X509>, bool) {
        let plain = openssl(&["pkcs12", "-passin", "pass:", "-nokeys"], pfx);
        let (out, legacy) = if plain.status.success() {
            (plain, false)
        } else {
            eprintln!(
                "openssl pkcs12 without -legacy failed ({}); retrying with -legacy",
                String::from_utf8_lossy(&plain.stderr).trim()
            );
            let legacy = openssl(&["pkcs12", "-legacy", "-passin", "pass:", "-nokeys"], pfx);
            (legacy, true)
        };
        assert_ok(&out, "cert.pfx (empty password)");
        (X509::stack_from_pem(&out.stdout).unwrap(), legacy)
    }

    // ---- building chains ----

    fn ec_key() -> PKey<Private> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
    }

    struct Issued {
        cert: X509,
        key: PKey<Private>,
    }

    /// A certificate named `cn`, issued by `issuer` (self-signed when `None`), a CA when `ca`,
    /// with subject/authority key identifiers when `ids`.
    fn issue(cn: &str, issuer: Option<&Issued>, ca: bool, ids: bool) -> Issued {
        let key = ec_key();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        let mut serial = BigNum::new().unwrap();
        serial.rand(120, MsbOption::MAYBE_ZERO, false).unwrap();
        b.set_serial_number(&serial.to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(issuer.map_or(&*name, |i| i.cert.subject_name()))
            .unwrap();
        b.set_pubkey(&key).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        b.set_not_before(&Asn1Time::from_unix(now - 3600).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(now + 30 * 86400).unwrap())
            .unwrap();
        if ca {
            let bc = BasicConstraints::new().critical().ca().build().unwrap();
            b.append_extension(bc).unwrap();
            let ku = KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build();
            b.append_extension(ku.unwrap()).unwrap();
        } else {
            let ku = KeyUsage::new().critical().digital_signature().build();
            b.append_extension(ku.unwrap()).unwrap();
            let eku = ExtendedKeyUsage::new().server_auth().build().unwrap();
            b.append_extension(eku).unwrap();
            let ctx = b.x509v3_context(issuer.map(|i| &*i.cert), None);
            let san = SubjectAlternativeName::new().dns(cn).build(&ctx).unwrap();
            b.append_extension(san).unwrap();
        }
        if ids {
            let ctx = b.x509v3_context(issuer.map(|i| &*i.cert), None);
            let ski = SubjectKeyIdentifier::new().build(&ctx).unwrap();
            b.append_extension(ski).unwrap();
            // Built after the SKI: for a self-signed certificate OpenSSL takes the AKI from it.
            let ctx = b.x509v3_context(issuer.map(|i| &*i.cert), None);
            let aki = AuthorityKeyIdentifier::new()
                .keyid(true)
                .build(&ctx)
                .unwrap();
            b.append_extension(aki).unwrap();
        }
        b.sign(issuer.map_or(&key, |i| &i.key), MessageDigest::sha256())
            .unwrap();
        Issued {
            cert: b.build(),
            key,
        }
    }

    /// Root CA → intermediate → leaf.
    fn chain(ids: bool) -> (Issued, Issued, Issued) {
        let root = issue("kvfs test root", None, true, ids);
        let int = issue("kvfs test intermediate", Some(&root), true, ids);
        let leaf = issue("leaf.kvfs.test", Some(&int), false, ids);
        (root, int, leaf)
    }

    fn pem_of(certs: &[&X509]) -> Vec<u8> {
        certs.iter().flat_map(|c| c.to_pem().unwrap()).collect()
    }

    /// A PEM secret as the vault stores it: the PKCS#8 key (if any), then certificates.
    fn pem_secret(key: Option<&PKey<Private>>, certs: &[&X509]) -> String {
        let mut out = key.map_or(Vec::new(), |k| k.private_key_to_pem_pkcs8().unwrap());
        out.extend(pem_of(certs));
        String::from_utf8(out).unwrap()
    }

    fn pkcs12_secret(key: Option<&PKey<Private>>, cert: &X509, ca: &[&X509], pass: &str) -> String {
        let mut stack = Stack::new().unwrap();
        for c in ca {
            stack.push((*c).clone()).unwrap();
        }
        let mut b = Pkcs12::builder();
        if let Some(key) = key {
            b.pkey(key);
        }
        b.cert(cert).ca(stack);
        STANDARD.encode(b.build2(pass).unwrap().to_der().unwrap())
    }

    fn subjects(pem: &[u8]) -> Vec<String> {
        X509::stack_from_pem(pem)
            .unwrap()
            .iter()
            .map(|c| {
                let cn = c.subject_name().entries_by_nid(Nid::COMMONNAME).next();
                cn.unwrap().data().to_string().unwrap()
            })
            .collect()
    }

    fn der_of(pem: &[u8]) -> Vec<Vec<u8>> {
        X509::stack_from_pem(pem)
            .unwrap()
            .iter()
            .map(|c| c.to_der().unwrap())
            .collect()
    }

    fn assert_all_pem_shaped(files: &CertFiles) {
        assert_pem_shape(&files.cert_pem);
        assert_pem_shape(&files.fullchain_pem);
        if !files.chain_pem.is_empty() {
            assert_pem_shape(&files.chain_pem);
        }
        for pem in [&files.privkey_pem, &files.bundle_pem]
            .into_iter()
            .flatten()
        {
            assert_pem_shape(pem);
        }
        assert_eq!(
            files.fullchain_pem,
            [files.cert_pem.as_slice(), files.chain_pem.as_slice()].concat()
        );
        if let (Some(key), Some(bundle)) = (&files.privkey_pem, &files.bundle_pem) {
            assert_eq!(*bundle, [key.as_slice(), &files.fullchain_pem].concat());
        }
    }

    fn malformed_message(result: Result<CertFiles, RenderError>) -> String {
        match result {
            Err(RenderError::Malformed(message)) => message,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn absurd_sizes_are_refused_before_parsing() {
        let message = malformed_message(render(&vec![0x30; MAX_CER_BYTES + 1], None));
        assert!(message.contains("over the 65536-byte limit"), "{message}");
        let leaf = leaf_of_recorded(PEM);
        let pem = recorded_secret(PEM);
        let huge = format!("{pem}{}", " ".repeat(crate::vault::MAX_SECRET_VALUE_BYTES));
        let message = malformed_message(render(&leaf, Some((PEM, &huge))));
        assert!(message.contains("backing secret of"), "{message}");
    }

    // ---- recorded certificates and secrets ----

    #[test]
    fn recorded_certificates_render_the_public_files() {
        let cers = recorded_cers();
        assert_eq!(cers.len(), 3);
        for (cer, x5t) in cers {
            let files = render(&cer, None).unwrap();
            assert_eq!(files.names(), ["cert.pem", "chain.pem", "fullchain.pem"]);
            assert!(files.chain_pem.is_empty());
            assert_eq!(files.fullchain_pem, files.cert_pem);
            assert_all_pem_shaped(&files);
            assert_cli_accepts_cert(&files.cert_pem);
            // cert.pem is exactly the vault's certificate: its SHA-1 is the recorded x5t.
            let back = X509::from_pem(&files.cert_pem).unwrap();
            assert_eq!(back.to_der().unwrap(), cer);
            let sha1 = back.digest(MessageDigest::sha1()).unwrap();
            assert_eq!(URL_SAFE_NO_PAD.encode(sha1), x5t);
        }
    }

    #[test]
    fn recorded_pkcs12_secret_renders_every_file() {
        let value = recorded_secret(PKCS12);
        let leaf = leaf_of_recorded(PKCS12);
        let files = render(&leaf, Some((PKCS12, &value))).unwrap();
        assert_eq!(
            files.names(),
            [
                "cert.pem",
                "chain.pem",
                "fullchain.pem",
                "privkey.pem",
                "bundle.pem",
                "cert.pfx"
            ]
        );
        assert!(
            files.chain_pem.is_empty(),
            "the recorded PFX holds one certificate"
        );
        assert_all_pem_shaped(&files);
        assert_cli_accepts_cert(&files.cert_pem);
        let privkey = files.privkey_pem.as_ref().unwrap();
        assert!(privkey.starts_with(b"-----BEGIN PRIVATE KEY-----\n"));
        assert_cli_key_matches_cert(privkey, &files.cert_pem);
        // cert.pfx is the stored PFX, byte for byte.
        let pfx = files.pfx.as_ref().unwrap();
        assert_eq!(*pfx, STANDARD.decode(&value).unwrap());
        let (certs, legacy) = cli_open_pfx(pfx);
        if legacy {
            eprintln!("note: the recorded vault PFX (3DES) needed openssl pkcs12 -legacy here");
        }
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].to_der().unwrap(), leaf);
    }

    #[test]
    fn recorded_pem_secret_renders_every_file_and_a_pfx() {
        let value = recorded_secret(PEM);
        let leaf = leaf_of_recorded(PEM);
        let files = render(&leaf, Some((PEM, &value))).unwrap();
        assert_eq!(files.names().len(), 6);
        assert_all_pem_shaped(&files);
        assert_cli_accepts_cert(&files.cert_pem);
        let privkey = files.privkey_pem.as_ref().unwrap();
        assert_cli_key_matches_cert(privkey, &files.cert_pem);
        // The vault's PEM is already PKCS#8 then the certificate, 64-column: OpenSSL re-encodes
        // it to the same bytes, so bundle.pem is the secret value itself.
        assert_eq!(files.bundle_pem.as_deref(), Some(value.as_bytes()));
        // A PFX is built, with an empty password, holding the key and the leaf.
        let pfx = files.pfx.as_ref().unwrap();
        let (certs, legacy) = cli_open_pfx(pfx);
        assert!(
            !legacy,
            "the PFX kvfs builds opens without OpenSSL 3's legacy provider"
        );
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].to_der().unwrap(), leaf);
        let parsed = Pkcs12::from_der(pfx).unwrap().parse2("").unwrap();
        let key = parsed.pkey.unwrap();
        let cert_key = X509::from_der(&leaf).unwrap().public_key().unwrap();
        assert!(key.public_eq(&cert_key));
    }

    #[test]
    fn recorded_secret_of_another_certificate_is_rejected() {
        // GetCertificate's leaf with the backing secret of a different recorded certificate:
        // the key cannot match, and nothing may be served.
        let (cer, _) = recorded_cers().remove(0);
        for content_type in [PKCS12, PEM] {
            let value = recorded_secret(content_type);
            let message = malformed_message(render(&cer, Some((content_type, &value))));
            assert!(message.contains("does not match"), "{message}");
            assert_no_material(&message, &value);
        }
    }

    // ---- chains ----

    #[test]
    fn shuffled_chain_is_ordered_leaf_intermediate_root_and_verifies() {
        let (root, int, leaf) = chain(true);
        let shuffled = [&root.cert, &leaf.cert, &int.cert];
        let leaf_der = leaf.cert.to_der().unwrap();
        let secrets = [
            (PEM, pem_secret(Some(&leaf.key), &shuffled)),
            (
                PKCS12,
                pkcs12_secret(Some(&leaf.key), &leaf.cert, &[&root.cert, &int.cert], ""),
            ),
        ];
        for (content_type, value) in secrets {
            let files = render(&leaf_der, Some((content_type, &value))).unwrap();
            assert_all_pem_shaped(&files);
            assert_eq!(
                subjects(&files.fullchain_pem),
                ["leaf.kvfs.test", "kvfs test intermediate", "kvfs test root"],
                "{content_type}"
            );
            assert_eq!(
                der_of(&files.chain_pem),
                [int.cert.to_der().unwrap(), root.cert.to_der().unwrap()]
            );

            let dir = tempfile::tempdir().unwrap();
            let write = |name: &str, bytes: &[u8]| {
                let path = dir.path().join(name);
                std::fs::write(&path, bytes).unwrap();
                path.to_str().unwrap().to_string()
            };
            let root_pem = write("root.pem", &root.cert.to_pem().unwrap());
            let chain_pem = write("chain.pem", &files.chain_pem);
            let cert_pem = write("cert.pem", &files.cert_pem);
            let out = openssl(
                &[
                    "verify",
                    "-CAfile",
                    &root_pem,
                    "-untrusted",
                    &chain_pem,
                    &cert_pem,
                ],
                b"",
            );
            assert_ok(&out, "the chain (openssl verify)");
            assert!(String::from_utf8_lossy(&out.stdout).contains(": OK"));

            assert_cli_key_matches_cert(files.privkey_pem.as_ref().unwrap(), &files.cert_pem);
            let (certs, _) = cli_open_pfx(files.pfx.as_ref().unwrap());
            assert_eq!(
                certs.len(),
                3,
                "{content_type}: the PFX holds the whole chain"
            );
        }
    }

    #[test]
    fn chain_without_key_identifiers_orders_by_name() {
        let (root, int, leaf) = chain(false);
        assert!(leaf.cert.authority_key_id().is_none());
        assert!(int.cert.subject_key_id().is_none());
        let value = pem_secret(None, &[&root.cert, &int.cert, &leaf.cert]);
        let files = render(&leaf.cert.to_der().unwrap(), Some((PEM, &value))).unwrap();
        assert_eq!(
            subjects(&files.fullchain_pem),
            ["leaf.kvfs.test", "kvfs test intermediate", "kvfs test root"]
        );
    }

    #[test]
    fn key_identifiers_pick_the_right_issuer_among_same_named_ones() {
        let root = issue("kvfs test root", None, true, true);
        // Two intermediates with one name (a key rollover); the leaf is issued by the second.
        let old = issue("kvfs test intermediate", Some(&root), true, true);
        let new = issue("kvfs test intermediate", Some(&root), true, true);
        let leaf = issue("leaf.kvfs.test", Some(&new), false, true);
        let value = pem_secret(None, &[&old.cert, &root.cert, &new.cert]);
        let files = render(&leaf.cert.to_der().unwrap(), Some((PEM, &value))).unwrap();
        // The old one is not reached by the links but is kept, before the root.
        assert_eq!(
            der_of(&files.chain_pem),
            [
                new.cert.to_der().unwrap(),
                old.cert.to_der().unwrap(),
                root.cert.to_der().unwrap()
            ]
        );
    }

    #[test]
    fn unrelated_certificates_are_kept_after_the_linked_ones() {
        let (root, int, leaf) = chain(true);
        let other_root = issue("other root", None, true, true);
        let unrelated = issue("unrelated", Some(&other_root), false, true);
        let leaf_der = leaf.cert.to_der().unwrap();

        // No root in the secret: the unrelated certificate ends the chain.
        let value = pem_secret(None, &[&unrelated.cert, &int.cert]);
        let files = render(&leaf_der, Some((PEM, &value))).unwrap();
        assert_eq!(
            subjects(&files.fullchain_pem),
            ["leaf.kvfs.test", "kvfs test intermediate", "unrelated"]
        );

        // With roots: linked, then unlinked in the secret's order, then roots (the linked
        // root first), and the leaf repeated in the secret appears once.
        let value = pem_secret(
            None,
            &[
                &other_root.cert,
                &unrelated.cert,
                &root.cert,
                &leaf.cert,
                &int.cert,
            ],
        );
        let files = render(&leaf_der, Some((PEM, &value))).unwrap();
        assert_eq!(
            subjects(&files.fullchain_pem),
            [
                "leaf.kvfs.test",
                "kvfs test intermediate",
                "unrelated",
                "kvfs test root",
                "other root"
            ]
        );

        // A certificate listed twice is served once.
        let value = pem_secret(None, &[&int.cert, &int.cert]);
        let files = render(&leaf_der, Some((PEM, &value))).unwrap();
        assert_eq!(subjects(&files.chain_pem), ["kvfs test intermediate"]);
    }

    // ---- which files exist ----

    #[test]
    fn non_exportable_certificate_has_public_files_only() {
        let (root, int, leaf) = chain(true);
        let leaf_der = leaf.cert.to_der().unwrap();
        let secrets = [
            (PEM, pem_secret(None, &[&leaf.cert, &int.cert, &root.cert])),
            (
                PKCS12,
                pkcs12_secret(None, &leaf.cert, &[&int.cert, &root.cert], ""),
            ),
        ];
        for (content_type, value) in secrets {
            let files = render(&leaf_der, Some((content_type, &value))).unwrap();
            assert_eq!(files.names(), ["cert.pem", "chain.pem", "fullchain.pem"]);
            assert_eq!(files.privkey_pem, None);
            assert_eq!(files.bundle_pem, None);
            assert_eq!(files.pfx, None, "{content_type}");
            assert_eq!(subjects(&files.chain_pem).len(), 2, "{content_type}");
            assert_eq!(files.file("cert.pfx"), None);
        }
    }

    #[test]
    fn no_secret_gives_the_leaf_only() {
        let (_, _, leaf) = chain(true);
        let files = render(&leaf.cert.to_der().unwrap(), None).unwrap();
        assert_eq!(files.names(), ["cert.pem", "chain.pem", "fullchain.pem"]);
        assert_eq!(files.file("chain.pem"), Some(&[][..]));
        assert_eq!(files.file("fullchain.pem"), Some(files.cert_pem.as_slice()));
        assert_eq!(files.file("privkey.pem"), None);
        assert_eq!(files.file("nonexistent"), None);
    }

    #[test]
    fn pem_backed_exportable_certificate_gets_a_pfx_with_an_empty_password() {
        // An RSA leaf this time (the chain helper makes EC keys).
        let (_, int, _) = chain(true);
        let rsa = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut ec_leaf = issue("rsa.kvfs.test", Some(&int), false, true);
        // Re-issue with the RSA key: same name and issuer, new key.
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(ec_leaf.cert.subject_name()).unwrap();
        b.set_issuer_name(ec_leaf.cert.issuer_name()).unwrap();
        b.set_serial_number(ec_leaf.cert.serial_number()).unwrap();
        b.set_not_before(ec_leaf.cert.not_before()).unwrap();
        b.set_not_after(ec_leaf.cert.not_after()).unwrap();
        b.set_pubkey(&rsa).unwrap();
        b.sign(&int.key, MessageDigest::sha256()).unwrap();
        ec_leaf.cert = b.build();
        let leaf = Issued {
            cert: ec_leaf.cert,
            key: rsa,
        };

        let value = pem_secret(Some(&leaf.key), &[&leaf.cert, &int.cert]);
        let files = render(&leaf.cert.to_der().unwrap(), Some((PEM, &value))).unwrap();
        let pfx = files.pfx.as_ref().unwrap();
        let (certs, legacy) = cli_open_pfx(pfx);
        assert!(!legacy);
        assert_eq!(certs.len(), 2);
        let parsed = Pkcs12::from_der(pfx).unwrap().parse2("").unwrap();
        assert!(parsed.pkey.unwrap().public_eq(&leaf.key));
        assert_eq!(
            parsed.cert.unwrap().to_der().unwrap(),
            leaf.cert.to_der().unwrap()
        );
        assert_eq!(parsed.ca.unwrap().len(), 1);
        // The key comes out with the CLI and an empty password too.
        let out = openssl(&["pkcs12", "-passin", "pass:", "-nocerts", "-nodes"], pfx);
        assert_ok(&out, "the key in cert.pfx");
        assert_cli_key_matches_cert(&out.stdout, &files.cert_pem);
    }

    // ---- malformed input ----

    #[test]
    fn malformed_inputs_are_errors_without_material() {
        let (root, int, leaf) = chain(true);
        let leaf_der = leaf.cert.to_der().unwrap();
        let key_pem = String::from_utf8(leaf.key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        let good_pfx = STANDARD
            .decode(pkcs12_secret(Some(&leaf.key), &leaf.cert, &[&int.cert], ""))
            .unwrap();
        let cert_block = String::from_utf8(int.cert.to_pem().unwrap()).unwrap();
        let other_key = ec_key();

        let secret_cases: Vec<(&str, &str, String)> = vec![
            ("bad base64", PKCS12, "@@not base64@@".into()),
            (
                "truncated PFX",
                PKCS12,
                STANDARD.encode(&good_pfx[..good_pfx.len() / 2]),
            ),
            (
                "password-protected PFX",
                PKCS12,
                pkcs12_secret(Some(&leaf.key), &leaf.cert, &[], "hunter2"),
            ),
            ("PFX labelled as PEM", PEM, STANDARD.encode(&good_pfx)),
            ("garbage PEM", PEM, "this is not PEM at all\n".into()),
            (
                "garbage certificate block",
                PEM,
                "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n".into(),
            ),
            (
                "garbage key block",
                PEM,
                format!(
                    "-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END PRIVATE KEY-----\n{cert_block}"
                ),
            ),
            (
                "two keys",
                PEM,
                format!("{key_pem}{key_pem}{}", pem_secret(None, &[&leaf.cert])),
            ),
            (
                "key of another certificate (PEM)",
                PEM,
                pem_secret(Some(&other_key), &[&leaf.cert, &int.cert]),
            ),
            (
                "key of another certificate (PFX)",
                PKCS12,
                pkcs12_secret(Some(&root.key), &root.cert, &[], ""),
            ),
            (
                "unknown content type",
                "text/plain",
                pem_secret(Some(&leaf.key), &[&leaf.cert]),
            ),
        ];
        for (what, content_type, value) in &secret_cases {
            let message = malformed_message(render(&leaf_der, Some((content_type, value))));
            assert_no_material(&message, value);
            assert_no_material(&message, &key_pem);
            eprintln!("{what}: {message}");
        }

        let cer_cases: Vec<(&str, Vec<u8>)> = vec![
            ("not DER", b"not a certificate".to_vec()),
            ("PEM instead of DER", leaf.cert.to_pem().unwrap()),
            ("truncated DER", leaf_der[..leaf_der.len() - 10].to_vec()),
            ("trailing bytes", [leaf_der.as_slice(), &[0]].concat()),
            ("empty", Vec::new()),
        ];
        for (what, cer) in cer_cases {
            let message = malformed_message(render(&cer, None));
            assert!(message.contains("cer"), "{what}: {message}");
        }
    }

    #[test]
    fn debug_shows_lengths_not_material() {
        let (_, int, leaf) = chain(true);
        let value = pem_secret(Some(&leaf.key), &[&leaf.cert, &int.cert]);
        let files = render(&leaf.cert.to_der().unwrap(), Some((PEM, &value))).unwrap();
        let debug = format!("{files:?}");
        assert!(!debug.contains("-----"), "{debug}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
        assert_no_material(&debug, &value);
        let len = files.privkey_pem.as_ref().unwrap().len();
        assert!(
            debug.contains(&format!("privkey_pem: Some(<{len} bytes>)")),
            "{debug}"
        );
        let none = render(&leaf.cert.to_der().unwrap(), None).unwrap();
        assert!(format!("{none:?}").contains("pfx: None"));
    }
}
