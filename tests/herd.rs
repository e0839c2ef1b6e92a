//! Herds of cold readers in separate processes, on fresh mounts: one request per object, and one
//! authentication challenge per mount (`src/vault/challenge.rs`), whichever way the readers come
//! in (`stat`, `open` + read, `ls -l`). Needs root and /dev/fuse.

mod common;

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Mount, is_challenge_probe, start_vault, wait_for_challenge_probe};
use testvault::{Fault, FaultAction, LogEntry, TestVault};

/// Longest a herd may take, from release to the last exit.
const HERD_WAIT: Duration = Duration::from_secs(60);

/// Runs every command in a process of its own, all released at once: each is `sh` waiting in
/// `read` on one shared pipe, and closing the pipe's only writer wakes them together. Returns
/// their outputs, in order; each must succeed.
fn herd(commands: &[Vec<String>]) -> Vec<Output> {
    let (reader, mut writer) = std::io::pipe().expect("pipe");
    let children: Vec<Child> = commands
        .iter()
        .map(|cmd| {
            Command::new("sh")
                .arg("-c")
                .arg(r#"read _ready; exec "$@""#)
                .arg("sh")
                .args(cmd)
                .stdin(Stdio::from(reader.try_clone().expect("dup")))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("sh starts")
        })
        .collect();
    drop(reader);
    // Release once every reader is waiting in `read` (the kernel names the wait in `wchan`), so
    // none is still starting up; should `wchan` say nothing useful, release after a while anyway
    // (the count asserted is the same however ragged the start).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20)
        && !children.iter().all(|c| {
            std::fs::read_to_string(format!("/proc/{}/wchan", c.id()))
                .is_ok_and(|w| w.contains("pipe_read"))
        })
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    // A newline would release only the process that reads it: EOF releases all.
    writer.flush().expect("flush");
    drop(writer);
    children
        .into_iter()
        .zip(commands)
        .map(|(mut child, cmd)| {
            let deadline = Instant::now() + HERD_WAIT;
            while child.try_wait().expect("wait").is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("{cmd:?} did not finish within {HERD_WAIT:?}");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let out = child.wait_with_output().expect("output");
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out
        })
        .collect()
}

fn cmd(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// Every request the vault logged that names `name` (any operation, any status).
fn naming(vault: &TestVault, name: &str) -> Vec<LogEntry> {
    vault
        .requests()
        .into_iter()
        .filter(|e| {
            e.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .collect()
}

fn challenges(vault: &TestVault) -> Vec<LogEntry> {
    vault
        .requests()
        .into_iter()
        .filter(|e| e.status == 401)
        .collect()
}

/// A fresh mount of a fresh vault holding `herd` = `value`, counters and log empty before it.
fn fresh(value: &str) -> (TestVault, Mount) {
    let vault = start_vault();
    vault.set_secret("herd", value).unwrap();
    vault.reset();
    let m = Mount::start(&vault, &["--cache-ttl", "60s"]);
    (vault, m)
}

/// The vault saw one request naming `name` (answered 200) and, once the mount's probe is in,
/// one challenge in all; returns the challenges.
fn one_request_and_one_challenge(vault: &TestVault, name: &str) -> Vec<LogEntry> {
    let asked = naming(vault, name);
    assert_eq!(asked.len(), 1, "one request for the object: {asked:?}");
    assert_eq!(asked[0].status, 200, "{asked:?}");
    wait_for_challenge_probe(vault);
    let challenged = challenges(vault);
    assert_eq!(challenged.len(), 1, "one challenge: {challenged:?}");
    challenged
}

#[test]
fn cold_readers_in_64_processes_make_one_request_and_the_mount_one_challenge() {
    let value = "one-value-for-the-whole-herd";
    let (vault, m) = fresh(value);
    let path = m.path("secrets/herd").display().to_string();
    let outs = herd(&vec![cmd(&["cat", &path]); 64]);
    for out in &outs {
        assert_eq!(String::from_utf8_lossy(&out.stdout), value);
    }
    let challenged = one_request_and_one_challenge(&vault, "herd");
    assert!(is_challenge_probe(&challenged[0]), "{challenged:?}");
    assert_eq!(vault.count("Unauthorized"), 1, "{:?}", vault.counters());

    // The key and certificate clients' first requests get the same challenge, without a request.
    let pem = std::fs::read_to_string(m.path("keys/signing-rsa")).unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    let cert = std::fs::read_to_string(m.path("certs/web/cert.pem")).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    let challenged = challenges(&vault);
    assert_eq!(challenged.len(), 1, "still one challenge: {challenged:?}");
    assert_eq!(vault.count("Unauthorized"), 1, "{:?}", vault.counters());
    for name in ["signing-rsa", "web"] {
        let asked = naming(&vault, name);
        assert!(
            asked.iter().all(|e| e.status == 200),
            "no token-less request for {name}: {asked:?}"
        );
    }
    // Nothing of the value or the token in the log.
    let log = m.log_text();
    assert!(!log.contains(value), "{log}");
}

#[test]
fn stat_open_read_and_ls_of_a_cold_secret_from_many_processes_make_one_request() {
    let value = "the-value-every-path-reads";
    let (vault, m) = fresh(value);
    // A slow first answer, so every path arrives while that request is in flight.
    vault.add_fault(Fault {
        op: "GetSecret".into(),
        name: Some("herd".into()),
        action: FaultAction::Delay { ms: 300 },
        count: Some(1),
    });
    let path = m.path("secrets/herd").display().to_string();
    let dir = m.path("secrets").display().to_string();
    let mut commands = Vec::new();
    for _ in 0..12 {
        commands.push(cmd(&["stat", "-c", "%s", &path])); // lookup + getattr
        commands.push(cmd(&["cat", &path])); // lookup, open, read
        commands.push(cmd(&["head", "-c", "3", &path])); // open, one short read
        commands.push(cmd(&["ls", "-l", &dir])); // readdir, then a lookup of every entry
        commands.push(cmd(&["ls", &dir])); // readdir alone
    }
    let outs = herd(&commands);
    for (c, out) in commands.iter().zip(&outs) {
        let text = String::from_utf8_lossy(&out.stdout);
        match (c[0].as_str(), c.get(1).map(String::as_str)) {
            ("stat", _) => assert_eq!(text.trim(), value.len().to_string()),
            ("cat", _) => assert_eq!(text, value),
            ("head", _) => assert_eq!(text, &value[..3]),
            ("ls", Some("-l")) => assert!(
                text.lines()
                    .any(|l| l.ends_with(" herd") && l.contains(&format!(" {} ", value.len()))),
                "{text}"
            ),
            _ => assert!(text.lines().any(|l| l == "herd"), "{text}"),
        }
    }
    one_request_and_one_challenge(&vault, "herd");
}
