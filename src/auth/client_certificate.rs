//! Client certificates: the certificate file (PEM or PKCS#12) and the RS256 client assertions
//! signed with its key.

use async_trait::async_trait;
use azure_core::error::ErrorKind;
use azure_core::http::ClientMethodOptions;
use azure_core::time::OffsetDateTime;
use azure_identity::ClientAssertion;

/// A client certificate and its private key, from `AZURE_CLIENT_CERTIFICATE_PATH`.
pub(crate) struct ClientCert {
    pub key: openssl::pkey::PKey<openssl::pkey::Private>,
    pub cert: openssl::x509::X509,
    /// The other certificates in the file (sent as `x5c` with
    /// `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN=1`).
    pub chain: Vec<openssl::x509::X509>,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("subject", &self.cert.subject_name())
            .finish_non_exhaustive()
    }
}

/// Read a certificate file: PEM (private key and certificate, as `az ad sp create-for-rbac
/// --create-cert` and Key Vault's PEM downloads hand it out; the key may be encrypted with
/// `password`) or PKCS#12 (`password`, else empty). In PEM the leaf is the certificate whose
/// public key matches the private key; the others are the chain. RSA only: Entra ID takes RS256
/// client assertions.
pub(crate) fn load_client_certificate(
    bytes: &[u8],
    password: Option<&str>,
) -> Result<ClientCert, String> {
    use openssl::pkcs12::Pkcs12;
    use openssl::pkey::{Id, PKey};
    use openssl::x509::X509;

    let rsa_only = |key: &PKey<openssl::pkey::Private>| {
        if key.id() == Id::RSA {
            Ok(())
        } else {
            Err("only RSA keys can sign client assertions; this key is not RSA".to_string())
        }
    };
    let is_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    if !is_pem {
        let p12 = Pkcs12::from_der(bytes).map_err(|e| format!("neither PEM nor PKCS#12 ({e})"))?;
        let parsed = p12.parse2(password.unwrap_or("")).map_err(|_| {
            if password.is_some() {
                "cannot open the PKCS#12 file: wrong AZURE_CLIENT_CERTIFICATE_PASSWORD?".to_string()
            } else {
                "cannot open the PKCS#12 file: it needs AZURE_CLIENT_CERTIFICATE_PASSWORD"
                    .to_string()
            }
        })?;
        let key = parsed.pkey.ok_or("the PKCS#12 file holds no private key")?;
        rsa_only(&key)?;
        let cert = parsed.cert.ok_or("the PKCS#12 file holds no certificate")?;
        let chain = parsed
            .ca
            .map(|s| s.into_iter().collect())
            .unwrap_or_default();
        return Ok(ClientCert { key, cert, chain });
    }
    // Always with a passphrase (empty when none is given): without one OpenSSL would prompt
    // on the terminal for an encrypted key.
    let key = PKey::private_key_from_pem_passphrase(bytes, password.unwrap_or("").as_bytes())
        .map_err(|_| {
            "no usable private key in the PEM file (it needs the key and the certificate; an encrypted key needs AZURE_CLIENT_CERTIFICATE_PASSWORD)".to_string()
        })?;
    rsa_only(&key)?;
    let mut certs = X509::stack_from_pem(bytes).map_err(|e| format!("bad certificate PEM: {e}"))?;
    let leaf = certs
        .iter()
        .position(|c| c.public_key().is_ok_and(|p| p.public_eq(&key)))
        .ok_or("no certificate in the PEM file matches its private key")?;
    let cert = certs.remove(leaf);
    Ok(ClientCert {
        key,
        cert,
        chain: certs,
    })
}

/// The same key and certificates as PKCS#12 (empty password), for tools that want one.
#[cfg(test)]
pub(crate) fn to_pkcs12(c: &ClientCert) -> Result<Vec<u8>, String> {
    let mut chain = openssl::stack::Stack::new().map_err(|e| e.to_string())?;
    for x in &c.chain {
        chain.push(x.clone()).map_err(|e| e.to_string())?;
    }
    let mut builder = openssl::pkcs12::Pkcs12::builder();
    builder.name("kvfs").pkey(&c.key).cert(&c.cert);
    if !c.chain.is_empty() {
        builder.ca(chain);
    }
    builder
        .build2("")
        .and_then(|p| p.to_der())
        .map_err(|e| format!("cannot build PKCS#12: {e}"))
}

/// Client assertions signed with a certificate's key (RS256), for
/// [`azure_identity::ClientAssertionCredential`].
///
/// Not the crate's `ClientCertificateCredential`: azure_identity 1.0.0 puts the thumbprint in
/// the JWT header's `x5t` as *standard* base64 (`+`, `/`, `=`), where RFC 7515 §4.1.7 requires
/// base64url; a verifier that follows the RFC (testvault does) rejects it for most certificates
/// (AADSTS700027). Here `x5t` and `x5t#S256` are base64url, a fresh assertion is made for every
/// token request, and the same pipeline options (trust, retries) apply.
pub(crate) struct CertificateAssertion {
    client_id: String,
    audience: String,
    key: openssl::pkey::PKey<openssl::pkey::Private>,
    header: String,
}

impl std::fmt::Debug for CertificateAssertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAssertion")
            .field("client_id", &self.client_id)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

const ASSERTION_LIFETIME_SECS: i64 = 600;

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl CertificateAssertion {
    /// `audience` is the token endpoint (`{authority}/{tenant}/oauth2/v2.0/token`).
    pub(crate) fn new(
        client_id: &str,
        audience: &str,
        cert: ClientCert,
        send_chain: bool,
    ) -> Result<CertificateAssertion, String> {
        use base64::Engine;
        use openssl::hash::MessageDigest;
        let digest = |md| {
            cert.cert
                .digest(md)
                .map(|d| b64url(&d))
                .map_err(|e| format!("certificate thumbprint: {e}"))
        };
        let mut header = serde_json::json!({
            "alg": "RS256",
            "typ": "JWT",
            "x5t": digest(MessageDigest::sha1())?,
            "x5t#S256": digest(MessageDigest::sha256())?,
        });
        if send_chain {
            let x5c = std::iter::once(&cert.cert)
                .chain(&cert.chain)
                .map(|c| {
                    c.to_der()
                        .map(|d| base64::engine::general_purpose::STANDARD.encode(d))
                        .map_err(|e| e.to_string())
                })
                .collect::<Result<Vec<_>, _>>()?;
            header["x5c"] = serde_json::json!(x5c);
        }
        Ok(CertificateAssertion {
            client_id: client_id.to_string(),
            audience: audience.to_string(),
            key: cert.key,
            header: b64url(header.to_string().as_bytes()),
        })
    }

    /// A signed assertion valid from `now` for ten minutes.
    pub(crate) fn assertion(&self, now: i64) -> Result<String, String> {
        use openssl::hash::MessageDigest;
        use openssl::sign::Signer;
        let mut jti = [0u8; 16];
        openssl::rand::rand_bytes(&mut jti).map_err(|e| e.to_string())?;
        let claims = serde_json::json!({
            "aud": self.audience,
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": b64url(&jti),
            "iat": now,
            "nbf": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!("{}.{}", self.header, b64url(claims.to_string().as_bytes()));
        let mut signer =
            Signer::new(MessageDigest::sha256(), &self.key).map_err(|e| e.to_string())?;
        signer
            .update(signing_input.as_bytes())
            .map_err(|e| e.to_string())?;
        let signature = signer.sign_to_vec().map_err(|e| e.to_string())?;
        Ok(format!("{signing_input}.{}", b64url(&signature)))
    }
}

#[async_trait]
impl ClientAssertion for CertificateAssertion {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        self.assertion(OffsetDateTime::now_utc().unix_timestamp())
            .map_err(|e| {
                azure_core::Error::with_message(
                    ErrorKind::Credential,
                    format!("cannot sign the client assertion: {e}"),
                )
            })
    }
}

/// `{authority}/{tenant}/oauth2/v2.0/token`, as the crate builds it.
pub(super) fn token_endpoint(authority_host: &str, tenant: &str) -> Result<String, String> {
    let base = url::Url::parse(authority_host)
        .map_err(|e| format!("authority host {authority_host:?}: {e}"))?;
    base.join(&format!("/{tenant}/oauth2/v2.0/token"))
        .map(String::from)
        .map_err(|e| format!("tenant {tenant:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::testing::{closed_endpoint, request, selected_token, vault, vault_http};
    use crate::auth::{AuthMethod, Env};

    fn rsa_cert(
        cn: &str,
    ) -> (
        openssl::pkey::PKey<openssl::pkey::Private>,
        openssl::x509::X509,
    ) {
        let key =
            openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        let cert = self_signed(&key, cn);
        (key, cert)
    }

    fn self_signed(
        key: &openssl::pkey::PKey<openssl::pkey::Private>,
        cn: &str,
    ) -> openssl::x509::X509 {
        use openssl::asn1::Asn1Time;
        use openssl::x509::{X509, X509NameBuilder};
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", cn).unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(key, openssl::hash::MessageDigest::sha256()).unwrap();
        b.build()
    }

    #[test]
    fn pem_key_and_certificate_load_in_either_order() {
        let (key, cert) = rsa_cert("leaf");
        let (_, other) = rsa_cert("intermediate");
        let key_pem = key.private_key_to_pem_pkcs8().unwrap();
        let cert_pem = cert.to_pem().unwrap();
        let other_pem = other.to_pem().unwrap();
        for file in [
            [key_pem.clone(), cert_pem.clone(), other_pem.clone()].concat(),
            [other_pem.clone(), cert_pem.clone(), key_pem.clone()].concat(),
        ] {
            let c = load_client_certificate(&file, None).unwrap();
            assert!(c.key.public_eq(&key));
            assert_eq!(c.cert.to_der().unwrap(), cert.to_der().unwrap());
            assert_eq!(c.chain.len(), 1);
            assert_eq!(c.chain[0].to_der().unwrap(), other.to_der().unwrap());
            // PEM → PKCS#12 → the same key and certificates.
            let der = to_pkcs12(&c).unwrap();
            let back = load_client_certificate(&der, None).unwrap();
            assert!(back.key.public_eq(&key));
            assert_eq!(back.cert.to_der().unwrap(), cert.to_der().unwrap());
            assert_eq!(back.chain.len(), 1);
        }
        // An encrypted key with its password; without it, an error (never a terminal prompt).
        let encrypted = key
            .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"pw")
            .unwrap();
        let file = [encrypted, cert_pem.clone()].concat();
        assert!(load_client_certificate(&file, Some("pw")).is_ok());
        assert!(
            load_client_certificate(&file, None)
                .unwrap_err()
                .contains("AZURE_CLIENT_CERTIFICATE_PASSWORD")
        );
        // A key without its certificate; a certificate without its key.
        assert!(
            load_client_certificate(&[key_pem, other_pem].concat(), None)
                .unwrap_err()
                .contains("matches")
        );
        assert!(
            load_client_certificate(&cert_pem, None)
                .unwrap_err()
                .contains("private key")
        );
    }

    #[test]
    fn pkcs12_loads_with_its_password_and_other_keys_are_refused() {
        let (key, cert) = rsa_cert("leaf");
        let p12 = openssl::pkcs12::Pkcs12::builder()
            .name("x")
            .pkey(&key)
            .cert(&cert)
            .build2("secret")
            .unwrap()
            .to_der()
            .unwrap();
        assert!(load_client_certificate(&p12, Some("secret")).is_ok());
        assert!(
            load_client_certificate(&p12, None)
                .unwrap_err()
                .contains("needs AZURE_CLIENT_CERTIFICATE_PASSWORD")
        );
        assert!(
            load_client_certificate(&p12, Some("nope"))
                .unwrap_err()
                .contains("wrong")
        );
        assert!(
            load_client_certificate(b"garbage", None)
                .unwrap_err()
                .contains("neither PEM nor PKCS#12")
        );
        let ec = openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap();
        let ec = openssl::pkey::PKey::from_ec_key(ec).unwrap();
        let ec_cert = self_signed(&ec, "ec");
        let file = [
            ec.private_key_to_pem_pkcs8().unwrap(),
            ec_cert.to_pem().unwrap(),
        ]
        .concat();
        assert!(
            load_client_certificate(&file, None)
                .unwrap_err()
                .contains("only RSA")
        );
    }

    #[test]
    fn certificate_assertions_are_rs256_jwts_naming_the_certificate_in_base64url() {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (key, cert) = rsa_cert("leaf");
        let (_, other) = rsa_cert("intermediate");
        let pem = [
            key.private_key_to_pem_pkcs8().unwrap(),
            cert.to_pem().unwrap(),
            other.to_pem().unwrap(),
        ]
        .concat();
        let endpoint = "https://login.example/tenant/oauth2/v2.0/token";
        for send_chain in [false, true] {
            let c = load_client_certificate(&pem, None).unwrap();
            let a = CertificateAssertion::new("client", endpoint, c, send_chain).unwrap();
            let jwt = a.assertion(1_700_000_000).unwrap();
            let parts: Vec<&str> = jwt.split('.').collect();
            assert_eq!(parts.len(), 3);
            let header: serde_json::Value =
                serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
            let claims: serde_json::Value =
                serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
            let sha1 = cert.digest(openssl::hash::MessageDigest::sha1()).unwrap();
            assert_eq!(header["alg"], "RS256");
            assert_eq!(header["x5t"], b64.encode(sha1));
            assert_eq!(header.get("x5c").is_some(), send_chain);
            if send_chain {
                assert_eq!(header["x5c"].as_array().unwrap().len(), 2);
            }
            assert_eq!(claims["aud"], endpoint);
            assert_eq!(
                (&claims["iss"], &claims["sub"]),
                (&"client".into(), &"client".into())
            );
            assert_eq!(claims["exp"], 1_700_000_600);
            let public = cert.public_key().unwrap();
            let mut verifier =
                openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &public)
                    .unwrap();
            verifier
                .update(format!("{}.{}", parts[0], parts[1]).as_bytes())
                .unwrap();
            assert!(verifier.verify(&b64.decode(parts[2]).unwrap()).unwrap());
        }
        assert_eq!(
            token_endpoint("https://login.example/", "t").unwrap(),
            "https://login.example/t/oauth2/v2.0/token"
        );
    }

    #[tokio::test]
    async fn client_certificate_from_pem_against_testvault() {
        let v = vault(3600);
        let i = v.info().clone();
        for path in [&i.client_certificate_path, &i.client_certificate_pfx_path] {
            let env = Env::from_pairs([
                ("AZURE_TENANT_ID", i.tenant_id.clone()),
                ("AZURE_CLIENT_ID", i.certificate_client_id.clone()),
                ("AZURE_AUTHORITY_HOST", i.authority_host.clone()),
                ("AZURE_CLIENT_CERTIFICATE_PATH", path.display().to_string()),
            ]);
            let mut req = request(AuthMethod::Auto);
            req.imds_endpoint = Some(closed_endpoint());
            selected_token(&req, &env, &vault_http(&v), AuthMethod::ClientCertificate).await;
        }
        assert_eq!(v.count("Token"), 2);
    }
}
