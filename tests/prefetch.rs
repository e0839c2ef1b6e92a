//! Prefetch on a real mount (src/fs/prefetch.rs): a cold `ls -l` of a collection fetches each
//! value once, ahead of the lookups; a plain `ls` or a single read fetches nothing ahead.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Mount, mark, since, start_vault};
use testvault::{Fault, FaultAction, TestVault};

const N: usize = 300;

fn name(i: usize) -> String {
    format!("pf-{i:03}")
}

/// Values of different lengths, so a wrong size shows.
fn value(i: usize) -> String {
    "x".repeat(1 + i % 40)
}

/// A vault of `N` more secrets that answers every GET 5 ms late, as a real one does.
fn slow_vault() -> TestVault {
    let vault = start_vault();
    for i in 0..N {
        vault.set_secret(&name(i), &value(i)).unwrap();
    }
    vault.add_fault(Fault {
        op: "GetSecret".into(),
        name: None,
        action: FaultAction::Delay { ms: 5 },
        count: None,
    });
    vault
}

fn ls(args: &[&str], dir: &std::path::Path) -> String {
    let out = Command::new("ls")
        .args(args)
        .arg(dir)
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// GetSecret requests per secret name since `from`.
fn gets_by_name(vault: &TestVault, from: u64) -> HashMap<String, usize> {
    let mut by_name = HashMap::new();
    for e in since(vault, from, "GetSecret") {
        *by_name.entry(e.name.unwrap_or_default()).or_default() += 1;
    }
    by_name
}

#[test]
fn a_cold_ls_l_gets_every_size_right_with_one_get_per_value() {
    let vault = slow_vault();
    let m = Mount::start(&vault, &["--cache-ttl", "10m"]);
    let from = mark(&vault);
    let listing = ls(&["-l"], &m.path("secrets"));
    let sizes: HashMap<&str, u64> = listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[8], f[4].parse().unwrap())
        })
        .collect();
    for i in 0..N {
        assert_eq!(sizes.get(name(i).as_str()), Some(&(value(i).len() as u64)));
    }
    let gets = gets_by_name(&vault, from);
    let twice: Vec<_> = gets.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "fetched more than once: {twice:?}");
    let total: usize = gets.values().sum();
    assert!(
        total <= sizes.len() + 2,
        "{total} GETs for {} files",
        sizes.len()
    );
    assert!(m.log_text().contains("prefetch_concurrency=16"));
}

#[test]
fn a_plain_ls_and_a_single_read_fetch_nothing_ahead() {
    let vault = slow_vault();
    let m = Mount::start(&vault, &["--cache-ttl", "10m"]);
    let from = mark(&vault);
    let names = ls(&[], &m.path("secrets"));
    assert!(names.lines().any(|l| l == name(0)));
    // A glob, and `find -name`, list too and look nothing up.
    let found = Command::new("find")
        .arg(m.path("secrets"))
        .args(["-name", "pf-1*"])
        .output()
        .unwrap();
    assert!(found.status.success());
    assert_eq!(m.read(&format!("secrets/{}", name(7))).unwrap(), value(7));
    // A prefetch starts with the lookup that triggers it: had one started, its GETs would be
    // at the vault by now. Watch the log a little longer anyway.
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        let gets = gets_by_name(&vault, from);
        assert_eq!(gets.len(), 1, "{gets:?}");
        assert_eq!(gets.get(&name(7)), Some(&1));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn with_prefetch_off_ls_l_fetches_one_value_per_lookup() {
    let vault = slow_vault();
    let m = Mount::start(
        &vault,
        &["--cache-ttl", "10m", "--prefetch-concurrency", "0"],
    );
    let from = mark(&vault);
    let listing = ls(&["-l"], &m.path("secrets"));
    let files = listing.lines().filter(|l| l.starts_with('-')).count();
    assert!(files >= N);
    let gets = gets_by_name(&vault, from);
    assert_eq!(gets.values().sum::<usize>(), files);
    assert!(m.log_text().contains("prefetch_concurrency=0"));
}
