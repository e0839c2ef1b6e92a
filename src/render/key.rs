//! `keys/<name>`: a key's public JWK rendered as a PEM SubjectPublicKeyInfo.
//!
//! GetKey returns the public part only (tests/recordings/get_key_*.json, obs. 19): RSA `n`/`e`, EC `crv`/`x`/`y`, all
//! base64url without padding. The SPKI is built and encoded by OpenSSL (the `openssl` crate), so
//! the PEM is byte-for-byte what `openssl pkey -pubout` would print for the same key.
//! Symmetric keys (`oct`) have no public part and secp256k1 is not something most consumers of a
//! PEM file can use, so both are `Unsupported` and not listed.

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use serde_json::Value;

use super::{RenderError, malformed};

/// base64url as JWK members use it. The vault sends no padding; padding is tolerated anyway
/// because it changes nothing about the value and other JOSE producers do emit it.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Whether `keys/` lists a key of this kty: RSA, RSA-HSM, EC, EC-HSM.
pub(crate) fn is_supported(kty: &str) -> bool {
    matches!(kty, "RSA" | "RSA-HSM" | "EC" | "EC-HSM")
}

/// PEM SubjectPublicKeyInfo ("-----BEGIN PUBLIC KEY-----") of a JWK: RSA (n, e) and EC on
/// P-256/P-384/P-521 (crv, x, y; base64url without padding; coordinates must be the curve's
/// length).
/// Key Vault's largest RSA keys are 4096 bits; OpenSSL's own ceiling for public-key operations is
/// 16384. A modulus beyond it is no key anyone can use, only work and memory for the renderer.
pub(crate) const MAX_RSA_BITS: u32 = 16_384;
/// Public exponents are 65537 in practice; anything wider than 64 bits is not a real key.
const MAX_RSA_EXPONENT_BITS: i32 = 64;

pub(crate) fn public_key_pem(jwk: &Value) -> Result<Vec<u8>, RenderError> {
    let jwk = jwk
        .as_object()
        .ok_or_else(|| malformed("JWK is not a JSON object"))?;
    let kty = jwk
        .get("kty")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("JWK has no kty"))?;
    if !is_supported(kty) {
        return Err(RenderError::Unsupported(format!("key type {}", short(kty))));
    }
    let pkey = if kty.starts_with("RSA") {
        let n = BigNum::from_slice(&member(jwk, "n")?).map_err(|_| malformed("JWK n"))?;
        let e = BigNum::from_slice(&member(jwk, "e")?).map_err(|_| malformed("JWK e"))?;
        // OpenSSL happily encodes a zero modulus or exponent; no consumer could use it.
        if n.num_bits() == 0 || e.num_bits() == 0 {
            return Err(malformed("RSA JWK with a zero n or e"));
        }
        if n.num_bits() > MAX_RSA_BITS as i32 || e.num_bits() > MAX_RSA_EXPONENT_BITS {
            return Err(malformed(format!(
                "RSA JWK of {} bits (exponent {} bits), over the {MAX_RSA_BITS}-bit limit",
                n.num_bits(),
                e.num_bits()
            )));
        }
        let rsa = Rsa::from_public_components(n, e).map_err(|_| malformed("RSA JWK"))?;
        PKey::from_rsa(rsa).map_err(|_| malformed("RSA JWK"))?
    } else {
        let crv = jwk
            .get("crv")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("EC JWK has no crv"))?;
        let (nid, len) = match crv {
            "P-256" => (Nid::X9_62_PRIME256V1, 32),
            "P-384" => (Nid::SECP384R1, 48),
            "P-521" => (Nid::SECP521R1, 66),
            "P-256K" => return Err(RenderError::Unsupported("EC curve P-256K".into())),
            other => return Err(malformed(format!("unknown EC curve {}", short(other)))),
        };
        let x = member(jwk, "x")?;
        let y = member(jwk, "y")?;
        // JWK coordinates are fixed-length (RFC 7518 §6.2.1.2); a short one means the producer
        // dropped leading zeros or the value was cut, and guessing which would be wrong.
        if x.len() != len || y.len() != len {
            return Err(malformed(format!(
                "EC JWK coordinates must be {len} bytes for {crv}"
            )));
        }
        let group = EcGroup::from_curve_name(nid).map_err(|_| malformed("EC curve"))?;
        let mut ctx = openssl::bn::BigNumContext::new().map_err(|_| malformed("EC JWK"))?;
        // The uncompressed SEC1 point (0x04 ‖ x ‖ y) is decoded by OpenSSL, which checks that
        // the point lies on the curve.
        let mut sec1 = Vec::with_capacity(1 + 2 * len);
        sec1.push(0x04);
        sec1.extend_from_slice(&x);
        sec1.extend_from_slice(&y);
        let point = EcPoint::from_bytes(&group, &sec1, &mut ctx)
            .map_err(|_| malformed("EC JWK point is not on the curve"))?;
        let ec = EcKey::from_public_key(&group, &point).map_err(|_| malformed("EC JWK"))?;
        ec.check_key()
            .map_err(|_| malformed("EC JWK is not a valid public key"))?;
        PKey::from_ec_key(ec).map_err(|_| malformed("EC JWK"))?
    };
    pkey.public_key_to_pem()
        .map_err(|_| malformed("public key does not encode"))
}

/// The JWK with public members only (kid, kty, key_ops, n, e, crv, x, y), compact JSON: the
/// `user.kvfs.jwk` extended attribute.
pub(crate) fn public_jwk_json(jwk: &Value) -> String {
    // An allow-list, not a deny-list: should a private member ever appear (`d`, `p`, `k` …) it
    // must not reach an extended attribute any local user may read.
    const PUBLIC: [&str; 8] = ["kid", "kty", "key_ops", "n", "e", "crv", "x", "y"];
    // Written member by member so the order is the JWK's conventional one whatever serde_json's
    // map ordering is.
    let mut out = String::from("{");
    if let Some(obj) = jwk.as_object() {
        for name in PUBLIC {
            if let Some(value) = obj.get(name) {
                if out.len() > 1 {
                    out.push(',');
                }
                out.push_str(&Value::from(name).to_string());
                out.push(':');
                out.push_str(&value.to_string());
            }
        }
    }
    out.push('}');
    out
}

/// A base64url member of the JWK, decoded.
fn member(jwk: &serde_json::Map<String, Value>, name: &str) -> Result<Vec<u8>, RenderError> {
    let text = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| malformed(format!("JWK has no {name}")))?;
    let bytes = BASE64URL
        .decode(text)
        .map_err(|_| malformed(format!("JWK {name} is not base64url")))?;
    if bytes.is_empty() {
        return Err(malformed(format!("JWK {name} is empty")));
    }
    Ok(bytes)
}

/// A vault-supplied name (kty, crv) for an error message, bounded in length.
fn short(s: &str) -> String {
    format!("{:?}", s.chars().take(32).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::test_support::{assert_ok, assert_pem_shape, openssl, recorded_bodies};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use openssl::bn::BigNumContext;
    use openssl::ec::PointConversionForm;
    use serde_json::json;

    fn b64u(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn unb64u(text: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(text)
            .expect("recorded member is base64url")
    }

    /// The CLI accepts the PEM as a public key.
    fn assert_cli_accepts(pem: &[u8]) {
        assert_ok(
            &openssl(&["pkey", "-pubin", "-noout"], pem),
            "the public key",
        );
    }

    #[test]
    fn recorded_rsa_keys_render_to_spki_the_cli_accepts() {
        let bodies = recorded_bodies("get_key_rsa.json");
        assert_eq!(bodies.len(), 2);
        for body in bodies {
            let jwk = &body["key"];
            let pem = public_key_pem(jwk).expect("recorded RSA key renders");
            assert!(pem.starts_with(b"-----BEGIN PUBLIC KEY-----\n"));
            assert_pem_shape(&pem);
            assert_cli_accepts(&pem);

            // The modulus the CLI reads back is the JWK's.
            let out = openssl(&["rsa", "-pubin", "-noout", "-modulus"], &pem);
            assert_ok(&out, "the RSA public key");
            let printed = String::from_utf8(out.stdout).unwrap();
            let n = unb64u(jwk["n"].as_str().unwrap());
            let hex: String = n.iter().map(|b| format!("{b:02X}")).collect();
            assert_eq!(printed.trim(), format!("Modulus={hex}"));
            assert_eq!(n.len(), 256, "recorded keys are RSA 2048");

            let key = PKey::public_key_from_pem(&pem).unwrap().rsa().unwrap();
            assert_eq!(key.n().to_vec(), n);
            assert_eq!(key.e().to_vec(), unb64u(jwk["e"].as_str().unwrap()));
        }
    }

    #[test]
    fn recorded_ec_keys_render_to_spki_the_cli_accepts() {
        let bodies = recorded_bodies("get_key_ec.json");
        let mut curves = Vec::new();
        for body in bodies {
            let jwk = &body["key"];
            let crv = jwk["crv"].as_str().unwrap();
            curves.push(crv.to_string());
            let pem = public_key_pem(jwk).expect("recorded EC key renders");
            assert!(pem.starts_with(b"-----BEGIN PUBLIC KEY-----\n"));
            assert_pem_shape(&pem);
            assert_cli_accepts(&pem);
            // The CLI names the curve the JWK names.
            let out = openssl(&["pkey", "-pubin", "-noout", "-text"], &pem);
            assert_ok(&out, "the EC public key");
            let text = String::from_utf8(out.stdout).unwrap();
            let nist = format!("NIST CURVE: {crv}");
            assert!(text.contains(&nist), "{text}");

            // The point read back is the JWK's x and y.
            let ec = PKey::public_key_from_pem(&pem).unwrap().ec_key().unwrap();
            let mut ctx = BigNumContext::new().unwrap();
            let point = ec
                .public_key()
                .to_bytes(ec.group(), PointConversionForm::UNCOMPRESSED, &mut ctx)
                .unwrap();
            let mut expected = vec![4u8];
            expected.extend(unb64u(jwk["x"].as_str().unwrap()));
            expected.extend(unb64u(jwk["y"].as_str().unwrap()));
            assert_eq!(point, expected);
        }
        assert!(curves.iter().any(|c| c == "P-256"), "{curves:?}");
        assert!(curves.iter().any(|c| c == "P-384"), "{curves:?}");
    }

    #[test]
    fn generated_rsa_key_round_trips() {
        let rsa = Rsa::generate(2048).unwrap();
        let pkey = PKey::from_rsa(rsa.clone()).unwrap();
        for kty in ["RSA", "RSA-HSM"] {
            let jwk = json!({
                "kid": "https://v.vault.azure.net/keys/k/1",
                "kty": kty,
                "n": b64u(&rsa.n().to_vec()),
                "e": b64u(&rsa.e().to_vec()),
            });
            let pem = public_key_pem(&jwk).unwrap();
            assert_eq!(pem, pkey.public_key_to_pem().unwrap(), "{kty}");
        }
    }

    fn ec_jwk(nid: Nid, crv: &str, kty: &str) -> (Value, Vec<u8>) {
        let group = EcGroup::from_curve_name(nid).unwrap();
        let ec = EcKey::generate(&group).unwrap();
        let len = (group.degree() as i32 + 7) / 8;
        let mut ctx = BigNumContext::new().unwrap();
        let mut x = BigNum::new().unwrap();
        let mut y = BigNum::new().unwrap();
        ec.public_key()
            .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
            .unwrap();
        let jwk = json!({
            "kty": kty,
            "crv": crv,
            "x": b64u(&x.to_vec_padded(len).unwrap()),
            "y": b64u(&y.to_vec_padded(len).unwrap()),
        });
        let spki = PKey::from_ec_key(ec).unwrap().public_key_to_pem().unwrap();
        (jwk, spki)
    }

    #[test]
    fn generated_ec_keys_round_trip_on_every_curve() {
        for (nid, crv, len) in [
            (Nid::X9_62_PRIME256V1, "P-256", 32),
            (Nid::SECP384R1, "P-384", 48),
            (Nid::SECP521R1, "P-521", 66),
        ] {
            for kty in ["EC", "EC-HSM"] {
                let (jwk, spki) = ec_jwk(nid, crv, kty);
                assert_eq!(unb64u(jwk["x"].as_str().unwrap()).len(), len);
                let pem = public_key_pem(&jwk).unwrap();
                assert_eq!(pem, spki, "{crv} {kty}");
            }
        }
        // A few more P-521 keys: their x often starts with zero bytes, which must be kept.
        for _ in 0..8 {
            let (jwk, spki) = ec_jwk(Nid::SECP521R1, "P-521", "EC");
            assert_eq!(public_key_pem(&jwk).unwrap(), spki);
        }
    }

    #[test]
    fn unsupported_key_types_and_curves() {
        for kty in ["oct", "oct-HSM", "OKP", "rsa"] {
            assert!(!is_supported(kty), "{kty}");
            let err = public_key_pem(&json!({"kty": kty, "k": "c2VjcmV0"})).unwrap_err();
            assert!(matches!(err, RenderError::Unsupported(_)), "{kty}: {err:?}");
        }
        for kty in ["RSA", "RSA-HSM", "EC", "EC-HSM"] {
            assert!(is_supported(kty), "{kty}");
        }
        let k1 = json!({"kty": "EC", "crv": "P-256K", "x": b64u(&[1; 32]), "y": b64u(&[2; 32])});
        assert_eq!(
            public_key_pem(&k1),
            Err(RenderError::Unsupported("EC curve P-256K".into()))
        );
    }

    #[test]
    fn malformed_jwks() {
        let (good, _) = ec_jwk(Nid::X9_62_PRIME256V1, "P-256", "EC");
        let with = |name: &str, value: Value| {
            let mut jwk = good.clone();
            jwk[name] = value;
            jwk
        };
        let x = unb64u(good["x"].as_str().unwrap());
        let cases = [
            ("bad base64", with("x", json!("not*base64!"))),
            ("short coordinate", with("x", json!(b64u(&x[1..])))),
            (
                "long coordinate",
                with("x", json!(b64u(&[&[0u8][..], &x].concat()))),
            ),
            ("off-curve point", with("y", json!(b64u(&[7; 32])))),
            ("unknown curve", with("crv", json!("P-999"))),
            ("missing y", {
                let mut jwk = good.clone();
                jwk.as_object_mut().unwrap().remove("y");
                jwk
            }),
            ("missing kty", json!({"n": "AQAB", "e": "AQAB"})),
            ("not an object", json!("RSA")),
            ("RSA bad n", json!({"kty": "RSA", "n": "%%%", "e": "AQAB"})),
            ("RSA missing e", json!({"kty": "RSA", "n": "AQAB"})),
            ("RSA zero n", json!({"kty": "RSA", "n": "AA", "e": "AQAB"})),
            (
                "RSA modulus over the limit",
                json!({"kty": "RSA", "n": b64u(&[0xff; 16_384 / 8 + 1]), "e": "AQAB"}),
            ),
            (
                "RSA exponent of 72 bits",
                json!({"kty": "RSA", "n": b64u(&[0xff; 256]), "e": b64u(&[1; 9])}),
            ),
            (
                "RSA standard base64",
                json!({"kty": "RSA", "n": "ab+/", "e": "AQAB"}),
            ),
        ];
        for (what, jwk) in cases {
            let err = public_key_pem(&jwk).unwrap_err();
            assert!(matches!(err, RenderError::Malformed(_)), "{what}: {err:?}");
        }
    }

    #[test]
    fn public_jwk_keeps_public_members_only_in_a_fixed_order() {
        let jwk = json!({
            "y": "yy", "x": "xx", "crv": "P-256", "kty": "EC", "d": "PRIVATE",
            "key_ops": ["sign", "verify"], "kid": "https://v/keys/k/1", "p": "PRIVATE",
        });
        assert_eq!(
            public_jwk_json(&jwk),
            r#"{"kid":"https://v/keys/k/1","kty":"EC","key_ops":["sign","verify"],"crv":"P-256","x":"xx","y":"yy"}"#
        );
        let rsa = json!({"kty": "RSA", "n": "nn", "e": "AQAB", "dp": "x", "qi": "x", "dq": "x", "q": "x"});
        assert_eq!(
            public_jwk_json(&rsa),
            r#"{"kty":"RSA","n":"nn","e":"AQAB"}"#
        );
        assert_eq!(public_jwk_json(&json!(null)), "{}");

        // The recorded JWKs survive unchanged (they have public members only).
        for body in recorded_bodies("get_key_rsa.json")
            .into_iter()
            .chain(recorded_bodies("get_key_ec.json"))
        {
            let out: Value = serde_json::from_str(&public_jwk_json(&body["key"])).unwrap();
            assert_eq!(out, body["key"]);
        }
    }
}
