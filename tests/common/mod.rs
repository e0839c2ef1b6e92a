//! Real mounts for integration tests: a testvault over HTTPS and the `kvfs` binary mounted on a
//! temporary directory, unmounted (and the daemon stopped) on drop.

// Each test crate uses some of these helpers, and reaches them through its own private `mod common`.
#![allow(dead_code, unreachable_pub)]

pub mod foreign;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testvault::{Options, Seed, TestVault};

pub const KVFS: &str = env!("CARGO_BIN_EXE_kvfs");

/// The names in a directory (panics, naming it, if it cannot be read).
pub fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// `items` as a set, to compare with [`names`].
pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A loopback port free right now (for a server that takes no port 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of `secrets/api-key` in the sample seed (tests/testvault/seed/sample.json).
pub const API_KEY: &str = "sk_test_4eC39HqLyjWDarjtT1zdp7dc";

pub fn sample_seed() -> Seed {
    Seed::from_json(include_str!("../testvault/seed/sample.json")).expect("sample seed parses")
}

pub fn start_vault() -> TestVault {
    TestVault::start(Options {
        seed: Some(sample_seed()),
        ..Default::default()
    })
    .expect("testvault starts")
}

/// Where kvfs's managed-identity probe goes in tests unless a test names testvault's metadata
/// endpoint: a closed loopback port. Should any test ever fall through `--auth auto` to the
/// metadata service, the probe is refused on loopback instead of leaving for 169.254.169.254.
pub const NO_IMDS: &str = "http://127.0.0.1:9";

/// The environment a client-secret mount against `vault` needs.
pub fn kvfs_env(vault: &TestVault) -> Vec<(String, String)> {
    let i = vault.info();
    vec![
        ("KVFS_IMDS_ENDPOINT".into(), NO_IMDS.into()),
        ("AZURE_TENANT_ID".into(), i.tenant_id.clone()),
        ("AZURE_CLIENT_ID".into(), i.client_id.clone()),
        ("AZURE_CLIENT_SECRET".into(), i.client_secret.clone()),
        ("AZURE_AUTHORITY_HOST".into(), i.authority_host.clone()),
        ("KVFS_LOG".into(), "kvfs=debug,warn".into()),
    ]
}

/// `kvfs mount` arguments for `vault` on `dir`, plus `extra`.
pub fn mount_args(vault: &TestVault, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "mount".to_string(),
        vault.info().vault_url.clone(),
        dir.display().to_string(),
        "--ca-file".into(),
        vault.info().ca_file.display().to_string(),
        "--no-verify-challenge-resource".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

pub fn is_mounted(dir: &Path) -> bool {
    let wanted = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
}

/// The directory in which every kvfs log of a test run is kept (scripts/test sets it, and
/// scripts/audit-logs searches the logs there for the values and tokens the run used).
pub const LOG_DIR_ENV: &str = "KVFS_TEST_LOG_DIR";

/// A fresh path for a kvfs log: in `$KVFS_TEST_LOG_DIR` when set (kept after the test), else in
/// a temporary directory that lives as long as the returned guard.
pub fn log_file() -> (PathBuf, Option<tempfile::TempDir>) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    match std::env::var_os(LOG_DIR_ENV) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir).expect("log directory");
            // The test's name (libtest names the thread after it), so a finding names its test.
            let test: String = std::thread::current()
                .name()
                .unwrap_or("test")
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            (
                dir.join(format!("{test}-{}-{n}.log", std::process::id())),
                None,
            )
        }
        None => {
            let logs = tempfile::tempdir().expect("tempdir");
            (logs.path().join("kvfs.log"), Some(logs))
        }
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long a test waits for a line in kvfs's log. kvfs writes its log from a background thread,
/// so a line may land a moment after the operation that caused it (and after the FUSE reply).
pub const LOG_WAIT: Duration = Duration::from_secs(10);

/// Wait until the log at `path` satisfies `found` (bounded by [`LOG_WAIT`]); returns its text.
/// Check what must *not* be in a log on the text this returns, once the awaited line is there.
pub fn wait_for_log(path: &Path, what: &str, found: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if found(&text) {
            return text;
        }
        assert!(
            start.elapsed() < LOG_WAIT,
            "timed out waiting for {what} in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A foreground `kvfs mount` process and its mountpoint.
pub struct Mount {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub log: PathBuf,
    _logs: Option<tempfile::TempDir>,
}

impl Mount {
    /// Mount `vault` with `--foreground` and wait until the kernel shows the mount.
    pub fn start(vault: &TestVault, extra: &[&str]) -> Mount {
        Self::spawn(vault, extra, |c| {
            c.envs(kvfs_env(vault));
        })
    }

    /// Like [`Mount::start`], but kvfs gets exactly `env` (the test's own environment is cleared,
    /// so no stray `AZURE_*`/`IDENTITY_*` variable can pick the credential; pass `PATH` yourself).
    pub fn start_with_env(vault: &TestVault, extra: &[&str], env: &[(String, String)]) -> Mount {
        Self::spawn(vault, extra, |c| {
            c.env_clear().envs(env.iter().cloned());
        })
    }

    fn spawn(vault: &TestVault, extra: &[&str], set_env: impl FnOnce(&mut Command)) -> Mount {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, logs) = log_file();
        let mut args = mount_args(vault, dir.path(), extra);
        args.push("--foreground".into());
        let mut command = Command::new(KVFS);
        command.args(&args);
        set_env(&mut command);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("kvfs starts");
        let mut m = Mount {
            dir,
            child: Some(child),
            log,
            _logs: logs,
        };
        let path = m.dir.path().to_path_buf();
        let start = Instant::now();
        while !is_mounted(&path) {
            if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("kvfs exited before mounting ({status}): {}", m.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "mount did not appear: {}",
                m.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn read(&self, rel: &str) -> std::io::Result<String> {
        std::fs::read_to_string(self.path(rel))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// [`wait_for_log`] on this mount's log.
    pub fn wait_for_log(&self, what: &str, found: impl Fn(&str) -> bool) -> String {
        wait_for_log(&self.log, what, found)
    }

    /// SIGTERM the daemon; returns its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            if start.elapsed() > Duration::from_secs(15) {
                let _ = child.kill();
                panic!("kvfs did not exit after SIGTERM: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: as above.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none()
                && start.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(self.dir.path()) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// The errno of an I/O error (panics if it has none).
pub fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error()
        .unwrap_or_else(|| panic!("no errno in {e}"))
}

/// Run a command to completion and insist it succeeded, showing its stderr if not.
pub fn succeed(command: &mut Command) -> std::process::Output {
    let out = command.output().expect("command runs");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        command,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `kvfs mount` (detached) with `env`; returns once mounted.
pub fn mount_detached(vault: &TestVault, dir: &Path, extra: &[&str], env: Vec<(String, String)>) {
    succeed(
        Command::new(KVFS)
            .args(mount_args(vault, dir, extra))
            .envs(env),
    );
}

/// `kvfs unmount`, which must succeed.
pub fn unmount(dir: &Path) {
    succeed(Command::new(KVFS).arg("unmount").arg(dir));
}

/// The last sequence number in `vault`'s request log (entries after it are new).
pub fn mark(vault: &TestVault) -> u64 {
    vault.requests().last().map_or(0, |e| e.seq)
}

/// The requests for operation `op` that `vault` logged after `mark`.
pub fn since(vault: &TestVault, mark: u64, op: &str) -> Vec<testvault::LogEntry> {
    vault
        .requests()
        .into_iter()
        .filter(|e| e.seq > mark && e.op == op)
        .collect()
}

/// `kvfs` processes (supervisors and workers) whose arguments name `dir`.
pub fn kvfs_pids_for(dir: &Path) -> Vec<i32> {
    let wanted = dir.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_kvfs = args.iter().any(|a| a.ends_with(b"kvfs"));
        if is_kvfs && args.contains(&wanted.as_bytes()) && pid != std::process::id() as i32 {
            pids.push(pid);
        }
    }
    pids
}

/// Whether `e` is kvfs's challenge probe: a token-less request answered 401 that names no
/// object (see `src/vault/challenge.rs`).
pub fn is_challenge_probe(e: &testvault::LogEntry) -> bool {
    e.status == 401 && e.name.is_none() && e.identity.is_none()
}

/// Wait until a fresh mount's background challenge probe has reached `vault` (it is sent when
/// the worker starts, and may land after the mount appears), so that it does not land in the
/// middle of what a test counts.
pub fn wait_for_challenge_probe(vault: &TestVault) {
    wait_until("the challenge probe", Duration::from_secs(15), || {
        vault.requests().iter().any(is_challenge_probe)
    });
}

/// The state letter of `/proc/PID/stat` (`R`, `S`, `Z`, …), `None` once the process is gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    proc_state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

/// Live children of `pid` (a supervisor's worker).
pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p| alive(*p))
        .collect()
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: sending a signal has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) };
}

/// `getfattr --only-values -n <name> <path>`: the attribute's value, `None` when getfattr fails
/// (no such attribute, or the file is gone).
pub fn getfattr(path: &Path, name: &str) -> Option<String> {
    let out = Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(path)
        .output()
        .expect("getfattr (Debian package attr) is needed by these tests");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
