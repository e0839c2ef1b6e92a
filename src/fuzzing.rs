//! Entry points for the fuzz targets (`fuzz/`, see doc/FUZZING.md) and the property tests.
//!
//! Each function takes raw bytes, feeds them to the same code kvfs runs on a vault's answer or a
//! command line, and panics only when an invariant that code promises is broken (a panic is what
//! the fuzzer reports). Errors are normal outcomes: hostile input is supposed to be refused.
//!
//! The fuzz crate calls only these functions, never the parsers directly, so a change of a
//! parser's signature is adapted here, in one place.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::PKey;
use openssl::x509::{X509, X509Ref};

use crate::config;
use crate::render::{cert, key};
use crate::vault::azure;
use crate::vault::{Collection, ObjectProps, valid_name};

// ---------------------------------------------------------------------------------------------
// Key Vault answers
// ---------------------------------------------------------------------------------------------

/// Which answer `vault_response` parses its input as (its first byte, modulo the count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    SecretBundle,
    KeyBundle,
    CertificateBundle,
    SecretList,
    KeyList,
    CertificateList,
}

impl Answer {
    pub(crate) const ALL: [Answer; 6] = [
        Answer::SecretBundle,
        Answer::KeyBundle,
        Answer::CertificateBundle,
        Answer::SecretList,
        Answer::KeyList,
        Answer::CertificateList,
    ];
}

/// A response body parsed with the SDK model kvfs uses for `answer`, then converted to
/// [`ObjectProps`] exactly as kvfs converts it (for a key, its JWK rendered too). Returns the
/// converted objects; an `Err` is a refusal.
pub(crate) fn parse_answer(answer: Answer, body: &[u8]) -> Result<Vec<ObjectProps>, String> {
    use azure_security_keyvault_certificates::models as certs;
    use azure_security_keyvault_keys::models as keys;
    use azure_security_keyvault_secrets::models as secrets;
    let json = |e: serde_json::Error| format!("not the expected JSON: {e}");
    match answer {
        Answer::SecretBundle => {
            let bundle: secrets::Secret = serde_json::from_slice(body).map_err(json)?;
            Ok(vec![azure::secret_props(&bundle, &recorded_vault())?])
        }
        Answer::KeyBundle => {
            let bundle: keys::Key = serde_json::from_slice(body).map_err(json)?;
            let props = azure::key_props(&bundle, &recorded_vault())?;
            // kvfs serialises the SDK's JsonWebKey back to JSON and renders that.
            if let Some(jwk) = &bundle.key {
                let jwk = serde_json::to_value(jwk).map_err(|e| e.to_string())?;
                jwk_pem_value(&jwk);
            }
            Ok(vec![props])
        }
        Answer::CertificateBundle => {
            let bundle: certs::Certificate = serde_json::from_slice(body).map_err(json)?;
            Ok(vec![azure::certificate_props(&bundle, &recorded_vault())?])
        }
        Answer::SecretList => {
            let page: secrets::ListSecretPropertiesResult =
                serde_json::from_slice(body).map_err(json)?;
            Ok(convert(&page.value, azure::secret_item_props))
        }
        Answer::KeyList => {
            let page: keys::ListKeyPropertiesResult = serde_json::from_slice(body).map_err(json)?;
            Ok(convert(&page.value, azure::key_item_props))
        }
        Answer::CertificateList => {
            let page: certs::ListCertificatePropertiesResult =
                serde_json::from_slice(body).map_err(json)?;
            Ok(convert(&page.value, azure::certificate_item_props))
        }
    }
}

/// List items that convert (kvfs skips the others with a warning).
fn convert<T>(
    items: &[T],
    f: fn(&T, &url::Url) -> Result<ObjectProps, String>,
) -> Vec<ObjectProps> {
    let vault = recorded_vault();
    items.iter().filter_map(|i| f(i, &vault).ok()).collect()
}

/// The vault the seed corpus (the recorded responses in tests/recordings) was recorded against.
/// Answers must name the vault kvfs asked, so conversions are checked against this origin; it is
/// only compared with, never contacted.
fn recorded_vault() -> url::Url {
    url::Url::parse("https://cpp-recordings.vault.azure.net/").expect("a valid URL")
}

/// Fuzz target `vault_response`: first byte picks the [`Answer`], the rest is the body.
/// Invariant: every object that converts has a name and version that are safe as file names.
pub fn vault_response(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let answer = Answer::ALL[usize::from(selector) % Answer::ALL.len()];
    if let Ok(objects) = parse_answer(answer, body) {
        for props in &objects {
            assert_safe_props(props);
        }
    }
}

/// What the filesystem relies on: the name is a valid vault name and the version (which
/// becomes a directory entry under `versions/`) is one path component.
pub(crate) fn assert_safe_props(props: &ObjectProps) {
    assert!(valid_name(&props.name), "accepted name {:?}", props.name);
    if let Some(v) = &props.version {
        assert!(is_one_component(v), "accepted version {v:?}");
    }
}

/// Usable as one file name: not empty, not `.`/`..`, no `/` or NUL, at most 255 bytes.
pub(crate) fn is_one_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && s.len() <= 255 && !s.contains(['/', '\0'])
}

/// An object id (`{vault}/{collection}/{name}[/{version}]`) as kvfs parses it.
pub fn parse_object_id(
    id: &str,
    collection: Collection,
) -> Result<(String, Option<String>), String> {
    azure::parse_id(id, collection)
}

// ---------------------------------------------------------------------------------------------
// JWK → PEM
// ---------------------------------------------------------------------------------------------

/// Fuzz target `jwk_pem`: the input is a JWK as JSON.
pub fn jwk_pem(data: &[u8]) {
    if let Ok(jwk) = serde_json::from_slice::<serde_json::Value>(data) {
        jwk_pem_value(&jwk);
    }
}

/// Invariants: a rendered key is a PEM public key OpenSSL reads back to the same PEM; the
/// `user.kvfs.jwk` attribute is a JSON object holding public members only.
fn jwk_pem_value(jwk: &serde_json::Value) {
    if let Ok(pem) = key::public_key_pem(jwk) {
        let parsed = PKey::public_key_from_pem(&pem).expect("rendered PEM reads back");
        let again = parsed.public_key_to_pem().expect("re-encodes");
        assert_eq!(again, pem, "rendered PEM is canonical");
    }
    let attr = key::public_jwk_json(jwk);
    let attr: serde_json::Value = serde_json::from_str(&attr).expect("attribute is JSON");
    let members = attr.as_object().expect("attribute is an object");
    const PUBLIC: [&str; 8] = ["kid", "kty", "key_ops", "n", "e", "crv", "x", "y"];
    assert!(
        members.keys().all(|k| PUBLIC.contains(&k.as_str())),
        "private member in the attribute"
    );
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// How `cert_render` reads its input (its first byte, modulo the count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CertInput {
    /// The rest is `cer` (DER), no backing secret.
    CerOnly,
    /// The rest is a PEM backing secret; `cer` is its first certificate.
    PemSecret,
    /// The rest is a PFX (DER; base64-encoded before rendering, as the vault sends it); `cer`
    /// is its certificate.
    PfxSecret,
    /// `content type\nvalue` of a backing secret for a fixed certificate.
    AnySecret,
}

impl CertInput {
    pub(crate) const ALL: [CertInput; 4] = [
        CertInput::CerOnly,
        CertInput::PemSecret,
        CertInput::PfxSecret,
        CertInput::AnySecret,
    ];
}

/// Fuzz target `cert_render`. Invariants of a rendered version: cert.pem is `cer`; fullchain is
/// cert + chain; the private files come all together or not at all, and the key is the leaf's;
/// every PEM and the PFX read back with OpenSSL.
pub fn cert_render(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let input = CertInput::ALL[usize::from(selector) % CertInput::ALL.len()];
    let (cer, content_type, value): (Vec<u8>, &str, String) = match input {
        CertInput::CerOnly => {
            check_rendered(rest, cert::render(rest, None));
            return;
        }
        CertInput::PemSecret => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let first = X509::stack_from_pem(rest)
                .ok()
                .and_then(|certs| certs.into_iter().next());
            let cer = first.map_or_else(|| fixed_leaf().to_vec(), |c| c.to_der().expect("DER"));
            (cer, "application/x-pem-file", text.to_string())
        }
        CertInput::PfxSecret => {
            let leaf = Pkcs12::from_der(rest)
                .ok()
                .and_then(|p| p.parse2("").ok())
                .and_then(|p| p.cert);
            let cer = leaf.map_or_else(|| fixed_leaf().to_vec(), |c| c.to_der().expect("DER"));
            (cer, "application/x-pkcs12", STANDARD.encode(rest))
        }
        CertInput::AnySecret => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let (content_type, value) = text.split_once('\n').unwrap_or((text, ""));
            let result = cert::render(fixed_leaf(), Some((content_type, value)));
            check_rendered(fixed_leaf(), result);
            return;
        }
    };
    check_rendered(&cer, cert::render(&cer, Some((content_type, &value))));
}

fn check_rendered(cer: &[u8], result: Result<cert::CertFiles, crate::render::RenderError>) {
    let files = match result {
        Ok(files) => files,
        Err(e) => {
            // Messages go to logs: short, and never the material (checked loosely: no long run
            // of the input's base64 could fit in a message this short).
            // (The content type is echoed, cut to 64 characters but Debug-escaped: up to 10
            // bytes each.)
            assert!(e.to_string().len() < 1024, "long error message");
            return;
        }
    };
    let leaf = X509::from_pem(&files.cert_pem).expect("cert.pem reads back");
    assert_eq!(leaf.to_der().expect("DER"), cer, "cert.pem is cer");
    assert_eq!(
        files.fullchain_pem,
        [files.cert_pem.as_slice(), files.chain_pem.as_slice()].concat(),
        "fullchain is cert + chain"
    );
    if !files.chain_pem.is_empty() {
        X509::stack_from_pem(&files.chain_pem).expect("chain.pem reads back");
    }
    let private = [
        files.privkey_pem.is_some(),
        files.bundle_pem.is_some(),
        files.pfx.is_some(),
    ];
    assert!(
        private == [true; 3] || private == [false; 3],
        "private files come together: {private:?}"
    );
    if let (Some(privkey), Some(bundle), Some(pfx)) =
        (&files.privkey_pem, &files.bundle_pem, &files.pfx)
    {
        let key = PKey::private_key_from_pem(privkey).expect("privkey.pem reads back");
        let public = leaf.public_key().expect("leaf key");
        assert!(key.public_eq(&public), "privkey.pem is the leaf's key");
        assert_eq!(
            *bundle,
            [privkey.as_slice(), files.fullchain_pem.as_slice()].concat(),
            "bundle is key + fullchain"
        );
        let opened = Pkcs12::from_der(pfx)
            .expect("cert.pfx is PKCS#12")
            .parse2("")
            .expect("cert.pfx opens with the empty password");
        assert!(opened.pkey.is_some(), "cert.pfx holds the key");
    }
}

/// A certificate for inputs that bring none of their own.
fn fixed_leaf() -> &'static [u8] {
    &pool().fixed_leaf
}

/// Fuzz target `chain_order`: the first byte picks the leaf from a pool of related
/// certificates (a root, its rollover twin with the same name, intermediates with and without
/// key identifiers, mutual cross-signs, an unrelated one), each further byte adds a pool
/// certificate to the secret's list (repeats allowed). Invariants: the order is a permutation
/// of the input (nothing dropped or invented), the first certificate is an issuer of the leaf whenever
/// one is present and none of them is a root (by name, and by key identifier where both carry
/// one), and self-signed roots come last.
pub fn chain_order(data: &[u8]) {
    let Some((&leaf_index, picks)) = data.split_first() else {
        return;
    };
    let certs = &pool().certs;
    let leaf = &certs[usize::from(leaf_index) % certs.len()];
    let given: Vec<X509> = picks
        .iter()
        .take(24)
        .map(|&i| certs[usize::from(i) % certs.len()].clone())
        .collect();
    // As `render` does: the leaf itself and repeats are removed before ordering.
    let mut seen = vec![leaf.to_der().expect("DER")];
    let given: Vec<X509> = given
        .into_iter()
        .filter(|c| {
            let der = c.to_der().expect("DER");
            let new = !seen.contains(&der);
            seen.push(der);
            new
        })
        .collect();
    let ordered = cert::order_chain(leaf, given.clone());

    let mut before: Vec<Vec<u8>> = given.iter().map(|c| c.to_der().expect("DER")).collect();
    let mut after: Vec<Vec<u8>> = ordered.iter().map(|c| c.to_der().expect("DER")).collect();
    before.sort();
    after.sort();
    assert_eq!(before, after, "the order is a permutation of the input");

    // A possible issuer: the leaf's issuer name, and key identifiers that agree where both
    // are present (a same-named CA with another key is not the leaf's issuer).
    let issues_leaf = |c: &X509Ref| {
        let ids_agree = match (leaf.authority_key_id(), c.subject_key_id()) {
            (Some(aki), Some(ski)) => aki.as_slice() == ski.as_slice(),
            _ => true,
        };
        cert::names_equal(c.subject_name(), leaf.issuer_name()) && ids_agree
    };
    if !cert::is_self_signed(leaf)
        && given.iter().any(|c| issues_leaf(c))
        // A root that issued the leaf goes last, by design, even when a cross-signed copy of it
        // is also present.
        && !given.iter().any(|c| issues_leaf(c) && cert::is_self_signed(c))
        && let Some(first) = ordered.first()
    {
        assert!(
            issues_leaf(first),
            "the leaf's issuer comes first: {data:?}"
        );
    }
    if let Some(first_root) = ordered.iter().position(|c| cert::is_self_signed(c)) {
        assert!(
            ordered[first_root..]
                .iter()
                .all(|c| cert::is_self_signed(c)),
            "roots come last"
        );
    }
}

struct Pool {
    certs: Vec<X509>,
    fixed_leaf: Vec<u8>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(build_pool)
}

fn build_pool() -> Pool {
    use pool_builder::issue;
    let root = issue("Fuzz Root", None, true, true);
    // The same name, another key: a CA key rollover.
    let root2 = issue("Fuzz Root", None, true, true);
    let int = issue("Fuzz Intermediate", Some(&root), true, true);
    let int2 = issue("Fuzz Intermediate", Some(&root2), true, true);
    let int_no_ids = issue("Fuzz Intermediate", Some(&root), true, false);
    let leaf = issue("leaf.fuzz.test", Some(&int), false, true);
    let leaf_no_ids = issue("leaf2.fuzz.test", Some(&int_no_ids), false, false);
    // Two CAs that sign each other: a loop by names.
    let a = issue("Fuzz Cross A", None, true, true);
    let b = issue("Fuzz Cross B", Some(&a), true, true);
    let a_by_b = issue_as("Fuzz Cross A", &a, &b);
    let leaf_cross = issue("cross.fuzz.test", Some(&b), false, true);
    let unrelated = issue("Unrelated Root", None, true, false);
    let fixed_leaf = leaf.cert.to_der().expect("DER");
    let certs = [
        root,
        root2,
        int,
        int2,
        int_no_ids,
        leaf,
        leaf_no_ids,
        a,
        b,
        a_by_b,
        leaf_cross,
        unrelated,
    ]
    .into_iter()
    .map(|i| i.cert)
    .collect();
    Pool { certs, fixed_leaf }
}

/// `subject` (keeping its key) re-issued by `issuer`: a cross-signed certificate.
fn issue_as(
    name: &str,
    subject: &pool_builder::Issued,
    issuer: &pool_builder::Issued,
) -> pool_builder::Issued {
    pool_builder::issue_with_key(name, subject.key.clone(), Some(issuer), true, true)
}

/// Small certificates for the chain pool (EC P-256: fast to make).
mod pool_builder {
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private};
    use openssl::x509::extension::{
        AuthorityKeyIdentifier, BasicConstraints, SubjectKeyIdentifier,
    };
    use openssl::x509::{X509, X509Builder, X509NameBuilder};

    pub(super) struct Issued {
        pub cert: X509,
        pub key: PKey<Private>,
    }

    pub(super) fn issue(cn: &str, issuer: Option<&Issued>, ca: bool, ids: bool) -> Issued {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("curve");
        let key = PKey::from_ec_key(EcKey::generate(&group).expect("key")).expect("key");
        issue_with_key(cn, key, issuer, ca, ids)
    }

    pub(super) fn issue_with_key(
        cn: &str,
        key: PKey<Private>,
        issuer: Option<&Issued>,
        ca: bool,
        ids: bool,
    ) -> Issued {
        let mut name = X509NameBuilder::new().expect("name");
        name.append_entry_by_nid(Nid::COMMONNAME, cn).expect("cn");
        let name = name.build();
        let mut b = X509Builder::new().expect("builder");
        b.set_version(2).expect("v3");
        let mut serial = BigNum::new().expect("bn");
        serial
            .rand(120, MsbOption::MAYBE_ZERO, false)
            .expect("serial");
        b.set_serial_number(&serial.to_asn1_integer().expect("int"))
            .expect("serial");
        b.set_subject_name(&name).expect("subject");
        b.set_issuer_name(issuer.map_or(&*name, |i| i.cert.subject_name()))
            .expect("issuer");
        b.set_pubkey(&key).expect("pubkey");
        b.set_not_before(&Asn1Time::days_from_now(0).expect("time"))
            .expect("nb");
        b.set_not_after(&Asn1Time::days_from_now(30).expect("time"))
            .expect("na");
        if ca {
            let bc = BasicConstraints::new().critical().ca().build().expect("bc");
            b.append_extension(bc).expect("bc");
        }
        if ids {
            let ctx = b.x509v3_context(issuer.map(|i| &*i.cert), None);
            let ski = SubjectKeyIdentifier::new().build(&ctx).expect("ski");
            b.append_extension(ski).expect("ski");
            let ctx = b.x509v3_context(issuer.map(|i| &*i.cert), None);
            let aki = AuthorityKeyIdentifier::new()
                .keyid(true)
                .build(&ctx)
                .expect("aki");
            b.append_extension(aki).expect("aki");
        }
        b.sign(issuer.map_or(&key, |i| &i.key), MessageDigest::sha256())
            .expect("sign");
        Issued {
            cert: b.build(),
            key,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

/// Fuzz target `mount_options`: `vault\n-o text`. Invariants: `-o` parsing is stable (printing
/// the parsed options and parsing them again gives the same options); the command line's parsing
/// (`-o` rewritten into flags, then clap) and resolution never panic,
/// is deterministic, and does not depend on how the options are split across `-o` arguments;
/// a resolved vault URL is https with a host.
pub fn mount_options(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (vault, options) = text.split_once('\n').unwrap_or(("myvault", text));
    let parsed = config::parse_o(options);
    assert_eq!(
        config::parse_o(&print_options(&parsed)),
        parsed,
        "-o parsing is stable"
    );

    // Each `-o` argument after a comma (which `-o` parsing drops) so that clap takes it as
    // `-o`'s value even when it starts with `-`; the vault after `--`, for the same reason.
    let resolve = |options: Vec<String>| {
        let mut args: Vec<String> = options
            .into_iter()
            .flat_map(|o| ["-o".to_string(), format!(",{o}")])
            .collect();
        args.extend(["--".into(), vault.to_string(), "/mnt/kv".into()]);
        format!("{:?}", crate::cli::mount_settings(args, 1000, 1000))
    };
    let whole = resolve(vec![options.to_string()]);
    assert_eq!(whole, resolve(vec![options.to_string()]), "deterministic");
    if let Some((first, second)) = options.split_once(',') {
        assert_eq!(
            whole,
            resolve(vec![first.to_string(), second.to_string()]),
            "-o a,b is -o a -o b"
        );
    }
    if let Ok(url) = crate::cli::vault_url(vault, crate::cli::Cloud::Public) {
        assert_eq!(url.scheme(), "https");
        assert!(url.host_str().is_some_and(|h| !h.is_empty()), "{url}");
    }
}

/// Options back in `-o` form: `key=value,flag`.
pub fn print_options(options: &[config::MountOpt]) -> String {
    options
        .iter()
        .map(|o| match &o.value {
            Some(v) => format!("{}={v}", o.key),
            None => o.key.clone(),
        })
        .collect::<Vec<_>>()
        .join(",")
}
