//! Rendering: turning what the vault returns into the bytes of kvfs's files.
//!
//! - [`key`]: a key's public JWK (GetKey) becomes `keys/<name>`, a PEM SubjectPublicKeyInfo, and
//!   the `user.kvfs.jwk` extended attribute.
//! - [`cert`]: a certificate's DER (`cer` of GetCertificate) and its backing secret of the same
//!   version (PKCS#12 or PEM) become `certs/<name>/{cert.pem, chain.pem, fullchain.pem,
//!   privkey.pem, bundle.pem, cert.pfx}`.
//!
//! All DER, PEM, PKCS#8, PKCS#12 and X.509 work is done by OpenSSL through the `openssl` crate;
//! nothing here parses or encodes those formats by hand. The only things decoded in Rust are the
//! base64 envelopes of the vault's JSON (base64url JWK members, the standard-base64 PFX value),
//! and the only text inspection is looking for a `-----BEGIN … PRIVATE KEY-----` line to tell
//! "this PEM secret has no key" (a non-exportable certificate) from "its key does not parse".
//!
//! Rendering is pure and all-or-nothing: a function returns every file complete or an error,
//! never a partial file, so the filesystem can cache the result and serve a stable size.
//! Error messages describe what failed, never the material itself: they end up in logs.

pub(crate) mod cert;
pub(crate) mod key;

/// Why the vault's material could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RenderError {
    /// The key type is not one kvfs renders (oct, oct-HSM, P-256K, …): such keys are not listed.
    #[error("unsupported key: {0}")]
    Unsupported(String),
    /// Material from the vault that does not parse (bad base64, broken PFX, unknown curve, key not
    /// matching the certificate …). Never includes key material in the message.
    #[error("malformed material: {0}")]
    Malformed(String),
}

/// A `Malformed` error with a fixed description: callers pass text they wrote, never input.
pub(crate) fn malformed(what: impl Into<String>) -> RenderError {
    RenderError::Malformed(what.into())
}

/// Helpers shared by the tests of [`key`] and [`cert`]: the recorded vault responses and the
/// real `openssl` command line (the point of those tests is that independent tooling accepts
/// what kvfs renders, not just our own use of the same library).
#[cfg(test)]
pub(crate) mod test_support {
    use std::io::Write;
    use std::path::PathBuf;
    use std::process::{Command, Output, Stdio};

    /// The directory of recorded Key Vault responses (`tests/recordings`).
    pub(crate) fn recordings_dir() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/recordings"))
    }

    /// The response bodies of every example in a recording file. Panics when the recordings are
    /// missing: silently skipping would turn these tests into no-ops.
    pub(crate) fn recorded_bodies(file: &str) -> Vec<serde_json::Value> {
        let path = recordings_dir().join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "recording {} is missing ({e}); the render tests need tests/recordings",
                path.display()
            )
        });
        let doc: serde_json::Value = serde_json::from_str(&text).expect("recording is JSON");
        let bodies: Vec<_> = doc["examples"]
            .as_array()
            .expect("recording has examples")
            .iter()
            .map(|e| e["response"]["body"].clone())
            .collect();
        assert!(!bodies.is_empty(), "{file} has no examples");
        bodies
    }

    /// Runs the `openssl` CLI with `stdin` piped in. Panics if the binary is absent (CI installs
    /// it with libssl-dev's toolchain), so a missing tool is a failure, not a silent pass.
    pub(crate) fn openssl(args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the openssl command line tool is needed by the render tests");
        // Write on another thread: a large input and a chatty command could otherwise deadlock
        // on full pipes.
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let input = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            // openssl may exit before reading everything (e.g. on a parse error): ignore EPIPE.
            let _ = pipe.write_all(&input);
        });
        let out = child.wait_with_output().expect("openssl ran");
        writer.join().expect("stdin writer");
        out
    }

    /// Asserts that an `openssl` run succeeded, showing its stderr otherwise.
    pub(crate) fn assert_ok(out: &Output, what: &str) {
        assert!(
            out.status.success(),
            "openssl rejected {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Asserts that every PEM block in `pem` has lines of at most 64 characters and that the text
    /// ends with a newline (what OpenSSL and every PEM reader expect).
    pub(crate) fn assert_pem_shape(pem: &[u8]) {
        let text = std::str::from_utf8(pem).expect("PEM is ASCII");
        assert!(
            text.starts_with("-----BEGIN "),
            "PEM starts with a BEGIN line"
        );
        assert!(
            text.ends_with("-----\n"),
            "PEM ends with an END line and a newline"
        );
        for line in text.lines() {
            assert!(
                line.len() <= 64 || line.starts_with("-----"),
                "long line {line:?}"
            );
        }
    }

    /// Asserts that an error message carries none of `material` (long runs of base64 characters
    /// from a secret value or key): error messages go to logs.
    pub(crate) fn assert_no_material(message: &str, material: &str) {
        let runs = material
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/'))
            .filter(|run| run.len() >= 12);
        for run in runs {
            for window in run.as_bytes().windows(12).step_by(4) {
                let window = std::str::from_utf8(window).expect("ASCII");
                assert!(
                    !message.contains(window),
                    "error message {message:?} contains material {window:?}"
                );
            }
        }
        assert!(message.len() < 200, "error message is short: {message:?}");
    }
}
