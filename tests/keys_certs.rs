//! Keys and certificates on a real FUSE mount of a testvault, checked with tools nobody here
//! wrote: the `openssl` command line, `curl`, `getfattr` and nginx serving the mounted
//! certificate. Needs root and /dev/fuse (as CI has), plus the `nginx` Debian package for the
//! TLS-server test (`.ci/run` installs it).

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{
    Mount, errno, free_port, getfattr, names, sample_seed, set, start_vault, succeed, wait_until,
};
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509NameBuilder};
use serde_json::{Value, json};
use testvault::{Seed, TestVault};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn read_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `openssl <args>`, which must succeed; returns its stdout.
fn openssl(args: &[&str]) -> String {
    text(&succeed(Command::new("openssl").args(args)))
}

/// `openssl <args>` with `input` on stdin (written from another thread so full pipes cannot
/// deadlock); returns the whole output whatever the exit status.
fn openssl_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the openssl command line tool runs");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().expect("openssl ran");
    writer.join().expect("stdin writer");
    out
}

/// A vault REST call with a bearer token, through `curl` trusting only testvault's CA and never a
/// proxy. Panics unless the answer is 2xx; returns the JSON body.
fn rest(vault: &TestVault, method: &str, path_and_query: &str, body: &Value) -> Value {
    let token = vault
        .mint_token("app", Duration::from_secs(600))
        .expect("identity app exists");
    let url = format!("{}{path_and_query}", vault.info().vault_url);
    let mut child = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "20", "--cacert"])
        .arg(&vault.info().ca_file)
        .args(["-X", method, "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
            "-w",
            "\n%{http_code}",
        ])
        .arg(&url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.to_string().as_bytes())
        .expect("write request body");
    let out = child.wait_with_output().expect("curl ran");
    assert!(
        out.status.success(),
        "curl {method} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = text(&out);
    let (body, status) = stdout.rsplit_once('\n').expect("status line");
    assert!(
        status.starts_with('2'),
        "{method} {url} answered {status}: {body}"
    );
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{method} {url}: not JSON ({e}): {body}"))
}

/// The last path segment of a Key Vault id (`…/keys/<name>/<version>` → version).
fn version_of(id: &str) -> String {
    id.rsplit('/').next().expect("id has segments").to_string()
}

/// Each certificate of a PEM file, in file order.
fn certs_in(path: &Path) -> Vec<X509> {
    X509::stack_from_pem(&read_bytes(path))
        .unwrap_or_else(|e| panic!("{} is not a PEM certificate list: {e}", path.display()))
}

/// `CN` of a certificate's subject.
fn cn(cert: &X509) -> String {
    cert.subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .map(|e| e.data().to_string().expect("utf8"))
        .unwrap_or_default()
}

/// The subjects `openssl pkcs7 -print_certs` reports for a PEM file, in file order.
fn subjects_by_openssl(path: &Path) -> Vec<String> {
    let p7 = openssl(&[
        "crl2pkcs7",
        "-nocrl",
        "-certfile",
        path.to_str().expect("utf8 path"),
    ]);
    let out = openssl_stdin(&["pkcs7", "-print_certs", "-noout"], p7.as_bytes());
    assert!(out.status.success(), "openssl pkcs7 -print_certs failed");
    text(&out)
        .lines()
        .filter_map(|l| l.strip_prefix("subject="))
        .map(|s| s.trim().to_string())
        .collect()
}

/// `openssl verify -CAfile <ca> [-untrusted <chain>] <cert>` must print `<cert>: OK`.
fn assert_verifies(ca: &Path, chain: Option<&Path>, cert: &Path) {
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(ca);
    if let Some(chain) = chain {
        cmd.arg("-untrusted").arg(chain);
    }
    cmd.arg(cert);
    let out = cmd.output().expect("openssl verify runs");
    assert!(
        out.status.success() && text(&out).trim_end().ends_with(": OK"),
        "openssl verify of {} failed: {}{}",
        cert.display(),
        text(&out),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The SubjectPublicKeyInfo PEM of a private key file and of a certificate, by the openssl CLI.
fn pubkey_of_private(key: &Path) -> String {
    openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"])
}
fn pubkey_of_cert(cert: &Path) -> String {
    openssl(&["x509", "-in", cert.to_str().unwrap(), "-pubkey", "-noout"])
}

fn serial_of_file(cert: &Path) -> String {
    openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-serial"])
        .trim()
        .to_string()
}

/// Raw P-256 `r || s` (what Key Vault returns for ES256) as a DER `ECDSA-Sig-Value`.
fn ecdsa_raw_to_der(raw: &[u8]) -> Vec<u8> {
    assert_eq!(raw.len(), 64, "ES256 signature is r||s, 32 bytes each");
    let r = BigNum::from_slice(&raw[..32]).unwrap();
    let s = BigNum::from_slice(&raw[32..]).unwrap();
    EcdsaSig::from_private_components(r, s)
        .unwrap()
        .to_der()
        .unwrap()
}

/// `openssl dgst -sha256 -verify <pubkey> -signature <sig> <data>`.
fn dgst_verify(pubkey: &Path, sig: &Path, data: &Path) -> Output {
    Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(pubkey)
        .arg("-signature")
        .arg(sig)
        .arg(data)
        .output()
        .expect("openssl dgst runs")
}

// ---------------------------------------------------------------------------------------------
// 1. Keys
// ---------------------------------------------------------------------------------------------

#[test]
fn keys_are_public_key_pems_that_verify_vault_signatures() {
    let vault = start_vault();
    let m = Mount::start(&vault, &["--cache-ttl", "1s"]);
    let work = tempfile::tempdir().unwrap();

    assert_eq!(
        names(&m.path("keys")),
        set(&["signing-ec", "signing-rsa"]),
        "keys/ lists the two plain keys and none of the certificate-backing ones"
    );

    let data = work.path().join("data.bin");
    std::fs::write(
        &data,
        b"kvfs: bytes signed by the vault, verified by openssl\n",
    )
    .unwrap();
    let digest = openssl::sha::sha256(&read_bytes(&data));
    let tampered = work.path().join("tampered.bin");
    std::fs::write(&tampered, b"kvfs: bytes NOT signed by the vault\n").unwrap();

    for (name, alg) in [("signing-rsa", "RS256"), ("signing-ec", "ES256")] {
        let key = m.path(&format!("keys/{name}"));
        let pem = std::fs::read_to_string(&key).unwrap();
        assert!(
            pem.starts_with("-----BEGIN PUBLIC KEY-----\n")
                && pem.ends_with("-----END PUBLIC KEY-----\n"),
            "keys/{name} is one SubjectPublicKeyInfo PEM block: {pem:?}"
        );
        succeed(
            Command::new("openssl")
                .args(["pkey", "-pubin", "-noout", "-in"])
                .arg(&key),
        );

        // The current version, then a signature by it (testvault routes sign only with a
        // version segment, as `/keys/{name}/{version}/sign`).
        let current = rest(
            &vault,
            "GET",
            &format!("/keys/{name}?api-version=7.5"),
            &json!({}),
        );
        let current_version = version_of(current["key"]["kid"].as_str().expect("kid"));
        let answer = rest(
            &vault,
            "POST",
            &format!("/keys/{name}/{current_version}/sign?api-version=7.5"),
            &json!({"alg": alg, "value": URL_SAFE_NO_PAD.encode(digest)}),
        );
        let raw = URL_SAFE_NO_PAD
            .decode(answer["value"].as_str().expect("signature value"))
            .expect("base64url signature");
        let der = if alg == "ES256" {
            ecdsa_raw_to_der(&raw)
        } else {
            raw
        };
        let sig = work.path().join(format!("{name}.sig"));
        std::fs::write(&sig, der).unwrap();
        let ok = dgst_verify(&key, &sig, &data);
        assert!(
            ok.status.success() && text(&ok).contains("Verified OK"),
            "the vault's {alg} signature does not verify against keys/{name}: {}{}",
            text(&ok),
            String::from_utf8_lossy(&ok.stderr)
        );
        let bad = dgst_verify(&key, &sig, &tampered);
        assert!(
            !bad.status.success(),
            "a signature over other bytes must not verify against keys/{name}"
        );

        // The current version (the one that signed) is the file's version and its versions/ copy.
        let kid_version = version_of(answer["kid"].as_str().expect("kid"));
        assert_eq!(kid_version, current_version);
        assert_eq!(
            getfattr(&key, "user.kvfs.version").expect("user.kvfs.version"),
            kid_version,
            "user.kvfs.version of keys/{name}"
        );
        assert_eq!(
            read_bytes(&m.path(&format!("versions/keys/{name}/{kid_version}"))),
            pem.as_bytes(),
            "versions/keys/{name}/<current> equals keys/{name}"
        );
    }

    // Both versions of signing-rsa, each a distinct PEM public key.
    let versions = names(&m.path("versions/keys/signing-rsa"));
    assert_eq!(
        versions.len(),
        2,
        "signing-rsa has 2 versions: {versions:?}"
    );
    let pems: BTreeSet<String> = versions
        .iter()
        .map(|v| {
            let p = m.path(&format!("versions/keys/signing-rsa/{v}"));
            succeed(
                Command::new("openssl")
                    .args(["pkey", "-pubin", "-noout", "-in"])
                    .arg(&p),
            );
            std::fs::read_to_string(&p).unwrap()
        })
        .collect();
    assert_eq!(pems.len(), 2, "the two versions are different keys");

    // Disable signing-ec in the vault: gone from keys/ after the TTL, and reads as ENOENT.
    let current = rest(
        &vault,
        "GET",
        "/keys/signing-ec?api-version=7.5",
        &json!({}),
    );
    let version = version_of(current["key"]["kid"].as_str().expect("kid"));
    let patched = rest(
        &vault,
        "PATCH",
        &format!("/keys/signing-ec/{version}?api-version=7.5"),
        &json!({"attributes": {"enabled": false}}),
    );
    assert_eq!(patched["attributes"]["enabled"], json!(false));
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(
        names(&m.path("keys")),
        set(&["signing-rsa"]),
        "a disabled key is not listed once the TTL has passed"
    );
    let e = std::fs::read(m.path("keys/signing-ec")).expect_err("disabled key is not readable");
    assert_eq!(errno(&e), libc::ENOENT, "disabled key reads as ENOENT: {e}");
    // Symmetric (oct) keys are not covered: testvault cannot create them.
}

// ---------------------------------------------------------------------------------------------
// 2. Certificates
// ---------------------------------------------------------------------------------------------

const ALL_CERT_FILES: [&str; 6] = [
    "bundle.pem",
    "cert.pem",
    "cert.pfx",
    "chain.pem",
    "fullchain.pem",
    "privkey.pem",
];

/// Checks every file of an exportable certificate directory against the others with openssl.
fn check_exportable_cert_dir(dir: &Path) {
    let f = |n: &str| dir.join(n);
    assert_eq!(names(dir), set(&ALL_CERT_FILES), "{}", dir.display());

    let cert = read_bytes(&f("cert.pem"));
    let chain = read_bytes(&f("chain.pem"));
    let fullchain = read_bytes(&f("fullchain.pem"));
    let privkey = read_bytes(&f("privkey.pem"));
    let bundle = read_bytes(&f("bundle.pem"));
    assert_eq!(
        certs_in(&f("cert.pem")).len(),
        1,
        "cert.pem holds only the leaf"
    );
    assert_eq!(
        fullchain,
        [cert.as_slice(), chain.as_slice()].concat(),
        "{}/fullchain.pem = cert.pem + chain.pem",
        dir.display()
    );
    assert_eq!(
        bundle,
        [privkey.as_slice(), fullchain.as_slice()].concat(),
        "{}/bundle.pem = privkey.pem + fullchain.pem",
        dir.display()
    );
    assert!(
        privkey.starts_with(b"-----BEGIN PRIVATE KEY-----\n"),
        "{}/privkey.pem is PKCS#8",
        dir.display()
    );
    assert_eq!(
        pubkey_of_private(&f("privkey.pem")),
        pubkey_of_cert(&f("cert.pem")),
        "{}/privkey.pem is the key of cert.pem",
        dir.display()
    );

    // The PFX opens with an empty password. OpenSSL 3.0 reads the service's PBE-SHA1-3DES
    // without -legacy (only RC2-40 needs the legacy provider).
    let pfx = f("cert.pfx").to_str().unwrap().to_string();
    let from_pfx = openssl(&[
        "pkcs12", "-in", &pfx, "-passin", "pass:", "-nokeys", "-clcerts",
    ]);
    let leaf_from_pfx = X509::from_pem(from_pfx.as_bytes()).expect("a certificate in cert.pfx");
    assert_eq!(
        leaf_from_pfx.to_der().unwrap(),
        X509::from_pem(&cert).unwrap().to_der().unwrap(),
        "{}/cert.pfx holds cert.pem",
        dir.display()
    );
    let key_from_pfx = openssl(&[
        "pkcs12", "-in", &pfx, "-passin", "pass:", "-nocerts", "-nodes",
    ]);
    let key_from_pfx = PKey::private_key_from_pem(key_from_pfx.as_bytes()).expect("key in PFX");
    assert_eq!(
        String::from_utf8(key_from_pfx.public_key_to_pem().unwrap()).unwrap(),
        pubkey_of_cert(&f("cert.pem")),
        "{}/cert.pfx holds the key of cert.pem",
        dir.display()
    );
}

#[test]
fn certificate_directories_hold_files_openssl_accepts() {
    let vault = start_vault();
    let m = Mount::start(&vault, &["--cache-ttl", "1s"]);
    let ca = vault.info().ca_file.clone();

    assert_eq!(
        names(&m.path("certs")),
        set(&["internal-signing", "web", "web-pem"])
    );

    // web: PKCS#12-backed, issued by testvault's intermediate.
    check_exportable_cert_dir(&m.path("certs/web"));
    assert_verifies(
        &ca,
        Some(&m.path("certs/web/chain.pem")),
        &m.path("certs/web/cert.pem"),
    );
    let chain = certs_in(&m.path("certs/web/chain.pem"));
    assert_eq!(
        chain.iter().map(cn).collect::<Vec<_>>(),
        ["testvault Intermediate CA"],
        "chain.pem of web is the intermediate"
    );
    assert_eq!(
        cn(&certs_in(&m.path("certs/web/cert.pem"))[0]),
        "web.example.test"
    );

    // web-pem: PEM-backed, self-signed EC: the same files; its chain is empty.
    check_exportable_cert_dir(&m.path("certs/web-pem"));
    let web_pem = m.path("certs/web-pem/cert.pem");
    assert_verifies(&web_pem, None, &web_pem);
    assert!(
        certs_in_or_empty(&m.path("certs/web-pem/chain.pem")).is_empty(),
        "a self-signed certificate has no intermediates"
    );

    // internal-signing: not exportable, so no key material at all.
    assert_eq!(
        names(&m.path("certs/internal-signing")),
        set(&["cert.pem", "chain.pem", "fullchain.pem"])
    );
    assert_verifies(
        &ca,
        Some(&m.path("certs/internal-signing/chain.pem")),
        &m.path("certs/internal-signing/cert.pem"),
    );
    for absent in ["privkey.pem", "bundle.pem", "cert.pfx"] {
        let e = std::fs::metadata(m.path(&format!("certs/internal-signing/{absent}")))
            .expect_err("no key material for a non-exportable certificate");
        assert_eq!(errno(&e), libc::ENOENT, "{absent}: {e}");
    }

    // Versions: one version directory for web, same files, and the version xattr names it.
    let versions = names(&m.path("versions/certs/web"));
    assert_eq!(versions.len(), 1, "{versions:?}");
    let version = versions.into_iter().next().unwrap();
    let vdir = m.path(&format!("versions/certs/web/{version}"));
    assert_eq!(names(&vdir), set(&ALL_CERT_FILES));
    assert_eq!(
        read_bytes(&vdir.join("cert.pem")),
        read_bytes(&m.path("certs/web/cert.pem"))
    );
    assert_eq!(
        getfattr(&m.path("certs/web/cert.pem"), "user.kvfs.version").expect("user.kvfs.version"),
        version,
        "user.kvfs.version of certs/web/cert.pem is its version directory's name"
    );
    assert_eq!(
        getfattr(&vdir.join("cert.pem"), "user.kvfs.version").expect("user.kvfs.version"),
        version
    );

    // Certificate-backing keys and secrets are not listed.
    let backing = set(&["web", "web-pem", "internal-signing"]);
    for dir in ["keys", "secrets"] {
        let listed = names(&m.path(dir));
        assert!(
            listed.is_disjoint(&backing),
            "{dir}/ lists certificate-backing objects: {listed:?}"
        );
        for name in &backing {
            let e = std::fs::metadata(m.path(&format!("{dir}/{name}")))
                .expect_err("certificate-backing objects are not under keys/ or secrets/");
            assert_eq!(errno(&e), libc::ENOENT, "{dir}/{name}: {e}");
        }
    }
}

/// Certificates in a PEM file that may be empty.
fn certs_in_or_empty(path: &Path) -> Vec<X509> {
    let bytes = read_bytes(path);
    if bytes.is_empty() {
        Vec::new()
    } else {
        certs_in(path)
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Chain order
// ---------------------------------------------------------------------------------------------

fn p256_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// A certificate for `subject_cn` with `key`, signed by `issuer` (self-signed when `None`).
fn issue(
    subject_cn: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    ca: bool,
) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, subject_cn)
        .unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(120, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map_or(&*name, |(c, _)| c.subject_name()))
        .unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    if ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
    } else {
        b.append_extension(BasicConstraints::new().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .build()
                .unwrap(),
        )
        .unwrap();
        let san = SubjectAlternativeName::new()
            .dns("chain.example.test")
            .build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None))
            .unwrap();
        b.append_extension(san).unwrap();
    }
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None))
        .unwrap();
    b.append_extension(ski).unwrap();
    if let Some((issuer_cert, _)) = issuer {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(issuer_cert), None))
            .unwrap();
        b.append_extension(aki).unwrap();
    }
    let signer = issuer.map_or(key, |(_, k)| k);
    b.sign(signer, MessageDigest::sha256()).unwrap();
    b.build()
}

fn pem(cert: &X509) -> String {
    String::from_utf8(cert.to_pem().unwrap()).unwrap()
}

#[test]
fn a_shuffled_imported_chain_is_rendered_leaf_first_by_issuer_links() {
    let vault = start_vault();
    // root → intermediate 1 → intermediate 2 → leaf: with two intermediates neither the input
    // order nor its reverse is the issuer order, so only following issuer links gets it right.
    let root_key = p256_key();
    let root = issue("kvfs-test Root CA", &root_key, None, true);
    let int1_key = p256_key();
    let int1 = issue(
        "kvfs-test Intermediate 1",
        &int1_key,
        Some((&root, &root_key)),
        true,
    );
    let int2_key = p256_key();
    let int2 = issue(
        "kvfs-test Intermediate 2",
        &int2_key,
        Some((&int1, &int1_key)),
        true,
    );
    let leaf_key = p256_key();
    let leaf = issue(
        "chain.example.test",
        &leaf_key,
        Some((&int2, &int2_key)),
        false,
    );
    let leaf_key_pem = String::from_utf8(leaf_key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    // Shuffled: root, leaf key, leaf, intermediate 1, intermediate 2.
    let shuffled = [pem(&root), leaf_key_pem, pem(&leaf), pem(&int1), pem(&int2)].concat();
    let imported = rest(
        &vault,
        "POST",
        "/certificates/shuffled-chain/import?api-version=7.5",
        &json!({
            "value": shuffled,
            "policy": {"secret_props": {"contentType": "application/x-pem-file"}},
        }),
    );
    assert!(imported["id"].as_str().is_some(), "{imported}");

    let m = Mount::start(&vault, &["--cache-ttl", "1s"]);
    let dir = m.path("certs/shuffled-chain");
    assert_eq!(names(&dir), set(&ALL_CERT_FILES));
    let want = [
        "CN = chain.example.test",
        "CN = kvfs-test Intermediate 2",
        "CN = kvfs-test Intermediate 1",
        "CN = kvfs-test Root CA",
    ];
    assert_eq!(
        subjects_by_openssl(&dir.join("fullchain.pem")),
        want,
        "fullchain.pem is leaf, then each certificate's issuer"
    );
    assert_eq!(
        subjects_by_openssl(&dir.join("chain.pem")),
        want[1..],
        "chain.pem is the intermediates (and root), leaf-side first"
    );
    assert_eq!(subjects_by_openssl(&dir.join("cert.pem")), want[..1]);
    // The exact certificates we made, in issuer order.
    let full: Vec<Vec<u8>> = certs_in(&dir.join("fullchain.pem"))
        .iter()
        .map(|c| c.to_der().unwrap())
        .collect();
    let expected: Vec<Vec<u8>> = [&leaf, &int2, &int1, &root]
        .iter()
        .map(|c| c.to_der().unwrap())
        .collect();
    assert_eq!(full, expected);
    check_exportable_cert_dir(&dir);

    let work = tempfile::tempdir().unwrap();
    let root_file = work.path().join("root.pem");
    std::fs::write(&root_file, pem(&root)).unwrap();
    assert_verifies(
        &root_file,
        Some(&dir.join("chain.pem")),
        &dir.join("cert.pem"),
    );
    // Without the chain, the leaf does not verify: the intermediates really come from chain.pem.
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&root_file)
        .arg(dir.join("cert.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "leaf verified without its chain?");
    // bundle.pem: the key, then the chain in issuer order.
    let bundle = std::fs::read_to_string(dir.join("bundle.pem")).unwrap();
    assert!(bundle.starts_with("-----BEGIN PRIVATE KEY-----\n"));
}

// ---------------------------------------------------------------------------------------------
// 4. nginx serves the mounted certificate and picks up a renewal on reload
// ---------------------------------------------------------------------------------------------

fn nginx_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed: this test needs the Debian package `nginx` \
                 (apt-get install -y nginx; .ci/run installs it)"
            )
        })
}

/// An nginx master started as a daemon with its own prefix, config, pid file and error log;
/// stopped (`nginx -s stop`, then SIGKILL) when dropped, also on panic.
struct Nginx {
    bin: PathBuf,
    prefix: tempfile::TempDir,
    pid: Option<i32>,
}

impl Nginx {
    fn conf(&self) -> PathBuf {
        self.prefix.path().join("nginx.conf")
    }
    fn error_log(&self) -> PathBuf {
        self.prefix.path().join("error.log")
    }
    fn pid_file(&self) -> PathBuf {
        self.prefix.path().join("nginx.pid")
    }
    fn log_text(&self) -> String {
        std::fs::read_to_string(self.error_log()).unwrap_or_default()
    }

    /// `nginx -p <prefix> -c <conf> -e <error log> [extra]`.
    fn command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-p")
            .arg(format!("{}/", self.prefix.path().display()))
            .arg("-c")
            .arg(self.conf())
            .arg("-e")
            .arg(self.error_log())
            .args(extra)
            .stdin(Stdio::null());
        cmd
    }

    fn start(port: u16, cert: &Path, key: &Path) -> Nginx {
        let mut n = Nginx {
            bin: nginx_binary(),
            prefix: tempfile::tempdir().unwrap(),
            pid: None,
        };
        let conf = format!(
            r#"user root;
daemon on;
master_process on;
worker_processes 1;
pid {pid};
error_log {err} info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name web.example.test;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ default_type text/plain; return 200 "ok"; }}
    }}
}}
"#,
            pid = n.pid_file().display(),
            err = n.error_log().display(),
            p = n.prefix.path().display(),
            cert = cert.display(),
            key = key.display(),
        );
        std::fs::write(n.conf(), conf).unwrap();
        let out = n.command(&[]).output().expect("nginx runs");
        assert!(
            out.status.success(),
            "nginx did not start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            n.log_text()
        );
        wait_until("nginx pid file", Duration::from_secs(10), || {
            n.pid = std::fs::read_to_string(n.pid_file())
                .ok()
                .and_then(|s| s.trim().parse().ok());
            n.pid.is_some()
        });
        n
    }

    fn reload(&self) {
        let out = self
            .command(&["-s", "reload"])
            .output()
            .expect("nginx runs");
        assert!(
            out.status.success(),
            "nginx -s reload: {}{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Also when start() panicked before it recorded the pid.
        let from_file = || {
            std::fs::read_to_string(self.pid_file())
                .ok()
                .and_then(|s| s.trim().parse().ok())
        };
        let Some(pid) = self.pid.or_else(from_file) else {
            return;
        };
        let _ = self.command(&["-s", "stop"]).output();
        // SAFETY: signal 0 only checks that the process exists.
        let alive = || unsafe { libc::kill(pid, 0) } == 0;
        let start = Instant::now();
        while alive() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive() {
            // SAFETY: signalling the nginx master this guard started (by its pid file).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// `curl --cacert <ca> --resolve web.example.test:<port>:127.0.0.1 https://web.example.test:<port>/`.
fn curl_web(ca: &Path, port: u16) -> Output {
    Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "--noproxy",
            "*",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("web.example.test:{port}:127.0.0.1"))
        .arg(format!("https://web.example.test:{port}/"))
        .output()
        .expect("curl runs")
}

/// The serial of the certificate nginx serves (`openssl s_client … | openssl x509 -serial`),
/// and whether s_client verified the served chain against `ca`.
fn served_serial(ca: &Path, port: u16) -> (String, bool) {
    try_served_serial(ca, port).unwrap_or_else(|e| panic!("no certificate from s_client: {e}"))
}

fn try_served_serial(ca: &Path, port: u16) -> Result<(String, bool), String> {
    let out = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", "web.example.test", "-CAfile"])
        .arg(ca)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client runs");
    let x509 = openssl_stdin(&["x509", "-noout", "-serial"], &out.stdout);
    if !x509.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let verified = text(&out).contains("Verify return code: 0 (ok)");
    Ok((text(&x509).trim().to_string(), verified))
}

#[test]
fn nginx_serves_the_mounted_certificate_and_a_renewal_after_reload() {
    let vault = start_vault();
    let m = Mount::start(&vault, &["--cache-ttl", "1s"]);
    let ca = vault.info().ca_file.clone();
    let port = free_port();
    let cert_file = m.path("certs/web/cert.pem");
    let nginx = Nginx::start(
        port,
        &m.path("certs/web/fullchain.pem"),
        &m.path("certs/web/privkey.pem"),
    );

    // curl trusts only the root: the handshake succeeds only if nginx sends the intermediate
    // from fullchain.pem.
    let out = curl_web(&ca, port);
    assert!(
        out.status.success(),
        "curl through nginx failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        nginx.log_text()
    );
    assert_eq!(text(&out), "ok");
    let (first, verified) = served_serial(&ca, port);
    assert!(
        verified,
        "s_client verifies the served chain against the root"
    );
    let first_file = serial_of_file(&cert_file);
    assert_eq!(first, first_file, "nginx serves certs/web/cert.pem");

    // Renew `web` in the vault: the same seed entry adds a new version.
    let sample = sample_seed();
    let renewal = Seed {
        certificates: sample
            .certificates
            .into_iter()
            .filter(|c| c.name == "web")
            .collect(),
        ..Default::default()
    };
    assert_eq!(renewal.certificates.len(), 1);
    vault.apply_seed(&renewal).expect("renewal");
    std::thread::sleep(Duration::from_millis(1300));
    let renewed_file = serial_of_file(&cert_file);
    assert_ne!(
        renewed_file, first_file,
        "certs/web/cert.pem shows the renewed certificate after the TTL"
    );
    assert_eq!(names(&m.path("versions/certs/web")).len(), 2);

    nginx.reload();
    // Reload is asynchronous: new workers take over once the master has re-read the files.
    let mut served = first.clone();
    let start = Instant::now();
    while served != renewed_file && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        if let Ok((serial, _)) = try_served_serial(&ca, port) {
            served = serial;
        }
    }
    assert_eq!(
        served,
        renewed_file,
        "after reload nginx serves the renewed certificate; nginx error log:\n{}",
        nginx.log_text()
    );
    let (_, verified) = served_serial(&ca, port);
    assert!(verified, "the renewed chain verifies");
    let out = curl_web(&ca, port);
    assert!(
        out.status.success() && text(&out) == "ok",
        "curl after renewal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        common::is_mounted(m.dir.path()),
        "the same kvfs mount served both versions"
    );
    drop(nginx);
}
