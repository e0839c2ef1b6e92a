//! The audit trail of a test run: every secret value testvault served and every credential it
//! minted or accepted, appended as JSON lines to a file in `$TESTVAULT_AUDIT_DIR` (one file per
//! process), so `scripts/audit-logs` can search every log of the run for them afterwards.
//!
//! Nothing is recorded when the variable is unset. Each record is one `write` of one line to a
//! file opened with `O_APPEND`, so records of concurrent servers in one process never interleave.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use parking_lot::Mutex;
use serde_json::json;

/// The environment variable naming the audit directory.
pub const AUDIT_DIR_ENV: &str = "TESTVAULT_AUDIT_DIR";

/// What a record is, for the search: values are searched in several encodings, tokens also
/// by their JWT segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A secret's value as GetSecret answered it (a certificate's PFX or PEM too).
    SecretValue,
    /// An access token testvault minted.
    Token,
    /// A client secret a token request presented and testvault accepted.
    ClientSecret,
    /// A client assertion (a signed JWT: client certificate or workload identity) accepted.
    Assertion,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::SecretValue => "secret_value",
            Kind::Token => "token",
            Kind::ClientSecret => "client_secret",
            Kind::Assertion => "assertion",
        }
    }
}

/// Values longer than this (a test's oversized body) are recorded by their first this many
/// bytes: a log holding any of it still matches, and the audit file stays small.
const MAX_RECORDED: usize = 64 * 1024;

/// Appends one record, when auditing is on. Failures to write are reported on stderr once and
/// otherwise ignored: the audit must not change how testvault answers.
pub fn record(kind: Kind, value: &str) {
    let Some(file) = audit_file() else {
        return;
    };
    let mut end = value.len().min(MAX_RECORDED);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let value = &value[..end];
    let mut line = json!({ "kind": kind.as_str(), "value": value }).to_string();
    line.push('\n');
    let mut file = file.lock();
    if let Err(e) = file.write_all(line.as_bytes()) {
        static REPORTED: OnceLock<()> = OnceLock::new();
        REPORTED.get_or_init(|| eprintln!("testvault: audit file: {e}"));
    }
}

fn audit_file() -> Option<&'static Mutex<File>> {
    static FILE: OnceLock<Option<Mutex<File>>> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = PathBuf::from(std::env::var_os(AUDIT_DIR_ENV)?);
        let open = || {
            std::fs::create_dir_all(&dir)?;
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("testvault-{}.jsonl", std::process::id())))
        };
        match open() {
            Ok(file) => Some(Mutex::new(file)),
            Err(e) => {
                eprintln!(
                    "testvault: cannot open the audit file in {}: {e}",
                    dir.display()
                );
                None
            }
        }
    })
    .as_ref()
}
