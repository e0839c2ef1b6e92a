//! Real mounts against a testvault that misbehaves on purpose (see `FaultAction`'s misbehaviour
//! faults), and a foreign listener that counts whatever reaches it. For each case: the errno a
//! reader gets, how many requests the vault saw, the worker's memory, and that the foreign
//! listener received nothing — the token never leaves the vault.

mod common;

use std::time::Duration;

use common::foreign::Foreign;
use common::{Mount, errno, start_vault, wait_until};
use testvault::{Fault, FaultAction, TestVault};

const GENEROUS: Duration = Duration::from_secs(30);

fn fault(op: &str, name: Option<&str>, action: FaultAction) -> Fault {
    Fault {
        op: op.into(),
        name: name.map(str::to_string),
        action,
        count: None,
    }
}

/// The errno of listing `rel` (opendir and every readdir), or `None` if it lists.
fn list_errno(m: &Mount, rel: &str) -> Option<i32> {
    match std::fs::read_dir(m.path(rel)) {
        Err(e) => Some(errno(&e)),
        Ok(entries) => entries.filter_map(Result::err).map(|e| errno(&e)).next(),
    }
}

fn read_errno(m: &Mount, rel: &str) -> Option<i32> {
    m.read(rel).err().map(|e| errno(&e))
}

/// The FUSE worker: the foreground process's child.
fn worker_pid(m: &Mount) -> i32 {
    let supervisor = m.child.as_ref().expect("running").id();
    let mut pid = None;
    wait_until("the worker process", GENEROUS, || {
        pid = std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .find_map(|p| p.parse().ok());
        pid.is_some()
    });
    pid.unwrap()
}

/// Resident memory of `pid` in KiB (`VmRSS`).
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("worker status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// Waits for `needle` in the log, then returns the log.
fn log_with(m: &Mount, needle: &str) -> String {
    wait_until(&format!("a log line with {needle:?}"), GENEROUS, || {
        m.log_text().contains(needle)
    });
    m.log_text()
}

fn assert_untouched(foreign: &Foreign) {
    assert_eq!(
        foreign.connections(),
        0,
        "a connection reached {}",
        foreign.addr
    );
    assert_eq!(foreign.bytes(), 0, "bytes reached {}", foreign.addr);
}

fn assert_no_token_in(log: &str) {
    assert!(!log.contains("Bearer "), "a token in the log:\n{log}");
    assert!(!log.contains("eyJ"), "a JWT in the log:\n{log}");
}

/// A mount that has listed and read normally once (so a token was fetched and used).
fn warmed(vault: &TestVault) -> Mount {
    let m = Mount::start(vault, &[]);
    assert_eq!(list_errno(&m, "secrets"), None);
    m
}

#[test]
fn a_next_link_to_another_port_or_address_fails_the_listing_and_sends_nothing() {
    for ip in ["127.0.0.1", "127.0.0.2"] {
        let vault = start_vault();
        let foreign = Foreign::start(ip);
        vault.add_fault(fault(
            "GetKeys",
            None,
            FaultAction::ForeignNextLink {
                url: format!("{}/keys?$skiptoken=steal", foreign.origin()),
            },
        ));
        let m = warmed(&vault);
        assert_eq!(list_errno(&m, "keys"), Some(libc::EIO), "{ip}");
        let log = log_with(&m, "not at the vault");
        assert!(log.contains(&foreign.origin()), "the log names the origin");
        assert!(!log.contains("skiptoken=steal"), "only the origin is named");
        assert_no_token_in(&log);
        assert!(vault.count("GetKeys") <= 3, "{}", vault.count("GetKeys"));
        // Other directories are unaffected.
        assert_eq!(read_errno(&m, "secrets/db-password"), None);
        std::thread::sleep(Duration::from_millis(200));
        assert_untouched(&foreign);
    }
}

#[test]
fn paging_loops_stop_after_a_few_requests_with_eio() {
    for (action, max_requests) in [(FaultAction::SelfLink, 1), (FaultAction::LinkLoop, 2)] {
        let vault = start_vault();
        let m = warmed(&vault);
        let worker = worker_pid(&m);
        let before = rss_kib(worker);
        vault.add_fault(fault("GetKeys", None, action.clone()));
        assert_eq!(list_errno(&m, "keys"), Some(libc::EIO), "{action:?}");
        log_with(&m, "paging loop");
        let requests = vault.count("GetKeys");
        // One failed listing reads at most `max_requests` pages; the filesystem may retry once.
        assert!(
            (1..=max_requests * 2).contains(&requests),
            "{action:?}: {requests} list requests"
        );
        let after = rss_kib(worker);
        eprintln!("{action:?}: {requests} list requests, worker RSS {before} -> {after} KiB");
        assert!(
            after < before + 64 * 1024,
            "{action:?}: {before} -> {after} KiB"
        );
    }
}

#[test]
fn a_50_mib_value_is_refused_without_holding_it() {
    let vault = start_vault();
    let m = warmed(&vault);
    let worker = worker_pid(&m);
    let before = rss_kib(worker);
    vault.add_fault(fault(
        "GetSecret",
        Some("db-password"),
        FaultAction::HugeValue {
            bytes: 50 * 1024 * 1024,
        },
    ));
    assert_eq!(read_errno(&m, "secrets/db-password"), Some(libc::EIO));
    let log = log_with(&m, "byte cap");
    assert!(!log.contains("AAAAAAAA"), "no part of the value in the log");
    let requests = vault.count("GetSecret");
    assert!(requests <= 3, "{requests} reads of the secret");
    let after = rss_kib(worker);
    eprintln!("50 MiB value: {requests} GetSecret, worker RSS {before} -> {after} KiB");
    assert!(after < before + 64 * 1024, "{before} -> {after} KiB");
    // A neighbour reads.
    assert_eq!(read_errno(&m, "secrets/api-key"), None);
}

#[test]
fn a_value_over_key_vaults_limit_is_refused_with_its_size_logged() {
    let vault = start_vault();
    vault.add_fault(fault(
        "GetSecret",
        Some("db-password"),
        FaultAction::HugeValue { bytes: 100_000 },
    ));
    let m = warmed(&vault);
    assert_eq!(read_errno(&m, "secrets/db-password"), Some(libc::EIO));
    let log = log_with(&m, "100000-byte value");
    assert!(log.contains("25600-byte limit"), "{log}");
    assert!(!log.contains("AAAAAAAA"));
    assert_eq!(read_errno(&m, "secrets/api-key"), None);
}

#[test]
fn truncated_and_wrong_shaped_answers_fail_that_read_only() {
    for (action, needle) in [
        (FaultAction::Truncate, "vault failing"),
        (FaultAction::WrongShape, "not a secret bundle"),
    ] {
        let vault = start_vault();
        vault.add_fault(fault("GetSecret", Some("db-password"), action.clone()));
        let m = warmed(&vault);
        assert_eq!(
            read_errno(&m, "secrets/db-password"),
            Some(libc::EIO),
            "{action:?}"
        );
        log_with(&m, needle);
        assert_eq!(read_errno(&m, "secrets/api-key"), None, "{action:?}");
        assert_eq!(list_errno(&m, "secrets"), None, "{action:?}");
        let requests = vault.count("GetSecret");
        assert!(requests <= 8, "{action:?}: {requests}");
    }
}

#[test]
fn an_answer_naming_another_host_is_refused_and_nothing_goes_there() {
    let vault = start_vault();
    let foreign = Foreign::start("127.0.0.2");
    vault.add_fault(fault(
        "GetSecret",
        Some("db-password"),
        FaultAction::ForeignId {
            host: foreign.addr.to_string(),
        },
    ));
    let m = warmed(&vault);
    assert_eq!(read_errno(&m, "secrets/db-password"), Some(libc::EIO));
    let log = log_with(&m, "names another host");
    assert_no_token_in(&log);
    assert_eq!(read_errno(&m, "secrets/api-key"), None);
    // A listing whose ids all name the other host lists nothing of it.
    vault.add_fault(fault(
        "GetCertificates",
        None,
        FaultAction::ForeignId {
            host: foreign.addr.to_string(),
        },
    ));
    let certs: Vec<_> = std::fs::read_dir(m.path("certs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(certs.is_empty(), "{certs:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_untouched(&foreign);
}
