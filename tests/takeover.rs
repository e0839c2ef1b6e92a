//! The supervisor/worker split under fire (the proof): workers SIGKILLed in a loop while
//! readers hammer the mount and its single-file bind mounts, a live upgrade by a second
//! `kvfs mount` (also across mount namespaces), the no-resend fallback, stopping under load and
//! recovering a mountpoint whose server is gone. Real FUSE mounts of a testvault; needs root and
//! /dev/fuse, as CI has. Every test prints its counts (`--nocapture` shows them).

mod common;

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{
    KVFS, Mount, alive, children, is_mounted, kvfs_env, kvfs_pids_for, mount_args, mount_detached,
    signal, start_vault, succeed,
};
use testvault::{Fault, FaultAction, TestVault};

/// Secrets the load tests read: `s00` … `s19`.
const SECRETS: usize = 20;
/// The `--cache-ttl` of the load tests.
const TTL: Duration = Duration::from_secs(1);
/// How much older than the TTL allows a value may be before it counts as stale (generous: the
/// point is "no value from long ago", not a timing assertion).
const STALE_SLACK: Duration = Duration::from_secs(5);
/// No read may take longer than this.
const MAX_BLOCK: Duration = Duration::from_secs(5);
/// Reader threads of the load tests.
const READERS: usize = 8;

// ---------------------------------------------------------------------------------------------
// Values that show a torn or mixed read: the whole value follows from (secret, version).

fn secret_name(secret: usize) -> String {
    format!("s{secret:02}")
}

/// `s07:v003:` and 200–2000 bytes of padding determined by the secret and the version.
fn value_of(secret: usize, version: u32) -> String {
    let mut v = format!("s{secret:02}:v{version:03}:");
    let len = 200 + (secret * 131 + version as usize * 977) % 1801;
    v.extend(
        (0..len).map(|i| (b'a' + ((i + secret * 7 + version as usize * 13) % 26) as u8) as char),
    );
    v
}

/// The version a read returned, if it is exactly `value_of(secret, version)` of the secret read.
fn parse_value(secret: usize, bytes: &[u8]) -> Result<u32, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let short = || text.chars().take(24).collect::<String>();
    let rest = text
        .strip_prefix(&format!("s{secret:02}:v"))
        .ok_or_else(|| {
            format!(
                "{} bytes starting {:?}: not {}",
                bytes.len(),
                short(),
                secret_name(secret)
            )
        })?;
    let version: u32 = rest
        .get(..3)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no version in {:?}", short()))?;
    if text != value_of(secret, version) {
        return Err(format!(
            "torn value: {} bytes starting {:?}, expected {} bytes",
            bytes.len(),
            short(),
            value_of(secret, version).len()
        ));
    }
    Ok(version)
}

/// Tiny xorshift generator (no `rand` among the dev-dependencies); the seed is printed.
struct Rng(u64);

impl Rng {
    fn seeded(label: &str) -> Rng {
        let seed = std::env::var("TAKEOVER_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        println!("{label}: seed {seed} (TAKEOVER_SEED={seed} reuses it)");
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from + 1))
    }
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// Wait up to `timeout` for `child`; SIGKILL it if it does not exit.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A kvfs process the test started (a successor, a supervisor in another namespace): SIGTERM,
/// then SIGKILL, on drop.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// `program args…` with the kvfs environment, stderr to `log`.
    fn spawn(program: &str, args: &[String], env: &[(String, String)], log: &Path) -> Proc {
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("{program} starts: {e}"));
        Proc {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Signal it and wait (bounded) for its exit status.
    fn stop_with(&mut self, sig: i32) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id() as i32, sig);
        match wait_exit(&mut child, Duration::from_secs(15)) {
            Some(s) => s,
            None => panic!("kvfs did not exit after signal {sig}: {}", self.log_text()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id() as i32, libc::SIGTERM);
            if wait_exit(&mut child, Duration::from_secs(5)).is_none() {
                eprintln!("a kvfs process had to be killed");
            }
        }
    }
}

/// Reads the part of a log written since the last look.
struct LogTail {
    path: PathBuf,
    offset: u64,
    text: String,
}

impl LogTail {
    fn new(path: &Path) -> LogTail {
        LogTail {
            path: path.to_path_buf(),
            offset: 0,
            text: String::new(),
        }
    }

    /// Whether any line seen so far contains all of `needles`.
    fn has_line(&mut self, needles: &[&str]) -> bool {
        self.read_new();
        self.text
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    }

    /// Whether any line seen so far ends with `needle`.
    fn has_line_ending(&mut self, needle: &str) -> bool {
        self.read_new();
        self.text.lines().any(|l| l.trim_end().ends_with(needle))
    }

    fn read_new(&mut self) {
        use std::io::{Read, Seek, SeekFrom};
        if let Ok(mut f) = std::fs::File::open(&self.path)
            && f.seek(SeekFrom::Start(self.offset)).is_ok()
        {
            let mut new = Vec::new();
            if f.read_to_end(&mut new).is_ok() {
                self.offset += new.len() as u64;
                self.text
                    .push_str(&strip_ansi(&String::from_utf8_lossy(&new)));
            }
        }
    }
}

/// The text without terminal colours (a foreground kvfs colours its log even into a file).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters… final letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The supervisor's current worker, once it serves: a live child of `supervisor` other than
/// `not`, named by the supervisor's "serves the mount" line (or, for the first worker of a
/// mount, simply a live child once the mount answers).
fn wait_new_worker(
    supervisor: i32,
    not: Option<i32>,
    log: &mut LogTail,
    timeout: Duration,
) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        for pid in children(supervisor) {
            if Some(pid) == not {
                continue;
            }
            if not.is_none() || log.has_line_ending(&format!("serves the mount pid={pid}")) {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Mounts.

/// A single-file bind mount, unmounted on drop.
struct BindMount {
    target: PathBuf,
    mounted: bool,
}

impl BindMount {
    fn new(source: &Path, target: &Path) -> BindMount {
        std::fs::write(target, "").unwrap();
        succeed(Command::new("mount").arg("--bind").arg(source).arg(target));
        BindMount {
            target: target.to_path_buf(),
            mounted: true,
        }
    }

    fn unmount(&mut self) {
        if std::mem::take(&mut self.mounted) {
            succeed(Command::new("umount").arg(&self.target));
        }
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.target).status();
        }
    }
}

/// Lazily unmounts `dir` and kills any kvfs process naming it, on drop (for detached mounts).
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
        for pid in kvfs_pids_for(&self.0) {
            signal(pid, libc::SIGKILL);
        }
    }
}

/// `s00` … `s19` at version 1; their version ids.
fn seed_secrets(vault: &TestVault) -> Vec<String> {
    (0..SECRETS)
        .map(|s| vault.set_secret(&secret_name(s), &value_of(s, 1)).unwrap())
        .collect()
}

/// Env for a kvfs process started by hand: the vault's credential, PATH, and `extra`.
fn env_with(vault: &TestVault, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = kvfs_env(vault);
    env.push(("PATH".into(), std::env::var("PATH").unwrap_or_default()));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn ino_dev(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (m.ino(), m.dev())
}

fn errno_name(e: i32) -> String {
    format!("{e} ({})", std::io::Error::from_raw_os_error(e))
}

// ---------------------------------------------------------------------------------------------
// Load: readers and a rotator.

/// When each version of each secret was being set: `[secret][version - 1] = (call, returned)`.
type Rotations = Arc<Mutex<Vec<Vec<(Instant, Option<Instant>)>>>>;

#[derive(Default)]
struct Stats {
    reads: u64,
    /// errno → count.
    errors: BTreeMap<i32, u64>,
    /// The first few failures, in words.
    failures: Vec<String>,
    /// Whole values of an unexpected secret, torn values, unknown or stale versions.
    bad: Vec<String>,
    bad_count: u64,
    max_latency: Duration,
    over_max_block: u64,
    /// (secret, version, read ended) of every good read, checked for freshness at the end.
    samples: Vec<(u8, u32, Instant)>,
}

impl Stats {
    fn summary(&self) -> String {
        format!(
            "{} reads, {} failed {}, {} bad, max read latency {:?}",
            self.reads,
            self.error_count(),
            self.errors_in_words(),
            self.bad_count,
            self.max_latency
        )
    }

    fn merge(&mut self, other: Stats) {
        self.reads += other.reads;
        for (e, n) in other.errors {
            *self.errors.entry(e).or_default() += n;
        }
        self.failures.extend(other.failures);
        self.failures.truncate(20);
        self.bad.extend(other.bad);
        self.bad.truncate(20);
        self.bad_count += other.bad_count;
        self.max_latency = self.max_latency.max(other.max_latency);
        self.over_max_block += other.over_max_block;
        self.samples.extend(other.samples);
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn errors_in_words(&self) -> String {
        let parts: Vec<String> = self
            .errors
            .iter()
            .map(|(e, n)| format!("{}: {n}", errno_name(*e)))
            .collect();
        format!("{{{}}}", parts.join(", "))
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    readers: Vec<JoinHandle<Stats>>,
    rotator: Option<JoinHandle<u64>>,
    rotations: Rotations,
}

impl Load {
    /// `READERS` threads reading random `targets` (secret, path) until stopped; with `vault`, a
    /// rotator that sets a new version of a random secret every 150–450 ms (`first` first).
    fn start(
        seed: u64,
        targets: Vec<(usize, PathBuf)>,
        vault: Option<Arc<TestVault>>,
        first: usize,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let rotations: Rotations = Arc::new(Mutex::new(vec![Vec::new(); SECRETS]));
        {
            // Version 1 was set before the mount.
            let now = Instant::now();
            for r in rotations.lock().unwrap().iter_mut() {
                r.push((now, Some(now)));
            }
        }
        let targets = Arc::new(targets);
        let mut seeds = Rng(seed | 1);
        let readers = (0..READERS)
            .map(|_| {
                let (stop, targets) = (stop.clone(), targets.clone());
                let mut rng = Rng(seeds.next() | 1);
                std::thread::spawn(move || {
                    let mut stats = Stats::default();
                    while !stop.load(Ordering::Relaxed) {
                        let (secret, path) = &targets[rng.below(targets.len())];
                        let started = Instant::now();
                        let result = std::fs::read(path);
                        let ended = Instant::now();
                        let took = ended - started;
                        stats.reads += 1;
                        stats.max_latency = stats.max_latency.max(took);
                        if took > MAX_BLOCK {
                            stats.over_max_block += 1;
                        }
                        match result {
                            Ok(bytes) => match parse_value(*secret, &bytes) {
                                Ok(v) => stats.samples.push((*secret as u8, v, ended)),
                                Err(e) => {
                                    stats.bad_count += 1;
                                    if stats.bad.len() < 5 {
                                        stats.bad.push(format!("{}: {e}", path.display()));
                                    }
                                }
                            },
                            Err(e) => {
                                let n = e.raw_os_error().unwrap_or(-1);
                                *stats.errors.entry(n).or_default() += 1;
                                if stats.failures.len() < 5 {
                                    stats
                                        .failures
                                        .push(format!("{}: {e} after {took:?}", path.display()));
                                }
                            }
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    stats
                })
            })
            .collect();
        let rotator = vault.map(|vault| {
            let (stop, rotations) = (stop.clone(), rotations.clone());
            let mut rng = Rng(seeds.next() | 1);
            std::thread::spawn(move || {
                let mut count = 0u64;
                let mut next = first;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(rng.millis(150, 450));
                    let version = {
                        let mut r = rotations.lock().unwrap();
                        r[next].push((Instant::now(), None));
                        r[next].len() as u32
                    };
                    vault
                        .set_secret(&secret_name(next), &value_of(next, version))
                        .unwrap();
                    rotations.lock().unwrap()[next][version as usize - 1].1 = Some(Instant::now());
                    count += 1;
                    next = rng.below(SECRETS);
                }
                count
            })
        });
        Load {
            stop,
            readers,
            rotator,
            rotations,
        }
    }

    /// Stop and collect; every good read is checked for freshness against the rotations.
    fn finish(mut self) -> (Stats, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let mut stats = Stats::default();
        for r in self.readers.drain(..) {
            stats.merge(r.join().expect("reader thread"));
        }
        let rotated = self
            .rotator
            .take()
            .map_or(0, |r| r.join().expect("rotator thread"));
        let rotations = self.rotations.lock().unwrap();
        let mut stale = 0u64;
        for &(secret, version, ended) in &stats.samples {
            let log = &rotations[secret as usize];
            let problem = match log.get(version as usize - 1) {
                None => Some("a version never set".to_string()),
                Some((set, _)) if *set > ended => {
                    Some("a version set after the read ended".to_string())
                }
                Some(_) => match log.get(version as usize) {
                    // Replaced: it was current until the next version's set returned.
                    Some((_, Some(replaced))) if *replaced + TTL + STALE_SLACK < ended => {
                        Some(format!("stale by {:?}", ended - *replaced))
                    }
                    _ => None,
                },
            };
            if let Some(p) = problem {
                stale += 1;
                stats.bad_count += 1;
                if stats.bad.len() < 20 {
                    stats
                        .bad
                        .push(format!("{} v{version}: {p}", secret_name(secret as usize)));
                }
            }
        }
        if stale > 0 {
            println!("stale reads: {stale}");
        }
        (stats, rotated)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // On a failed test: let the threads go (their reads end when the mount does).
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Wait until `who` (a new kvfs) logs that it took the mount over; panic if it exits first.
fn wait_for_takeover(label: &str, who: &str, successor: &mut Proc) {
    let mut log = LogTail::new(&successor.log);
    common::wait_until(
        &format!("{who} to take the mount over"),
        Duration::from_secs(60),
        || {
            if let Some(s) = successor.try_wait() {
                panic!("{label}: {who} exited ({s}): {}", successor.log_text());
            }
            log.has_line(&["took the mount over"])
        },
    );
}

fn assert_clean(what: &str, stats: &Stats, log: &str) {
    assert!(
        stats.error_count() == 0 && stats.bad_count == 0 && stats.over_max_block == 0,
        "{what}: {} failed reads {} {:?}, {} bad values {:?}, {} reads over {MAX_BLOCK:?} (max {:?})\n--- log ---\n{}",
        stats.error_count(),
        stats.errors_in_words(),
        stats.failures,
        stats.bad_count,
        stats.bad,
        stats.over_max_block,
        stats.max_latency,
        tail(log, 60)
    );
    assert!(stats.reads > 0, "{what}: no reads at all");
}

fn tail(log: &str, lines: usize) -> String {
    let log = strip_ansi(log);
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Bind mounts of `secrets/s00` … `s03` under `dir`, with the (ino, dev) each shows.
fn bind_secrets(mount: &Path, dir: &Path) -> Vec<(usize, BindMount, (u64, u64))> {
    (0..4)
        .map(|s| {
            let target = dir.join(secret_name(s));
            let bind = BindMount::new(&mount.join(format!("secrets/{}", secret_name(s))), &target);
            let id = ino_dev(&target);
            (s, bind, id)
        })
        .collect()
}

/// Every secret through the mount, and the bound ones through their bind mounts.
fn targets(mount: &Path, binds: &[(usize, BindMount, (u64, u64))]) -> Vec<(usize, PathBuf)> {
    let mut t: Vec<(usize, PathBuf)> = (0..SECRETS)
        .map(|s| (s, mount.join(format!("secrets/{}", secret_name(s)))))
        .collect();
    for (s, b, _) in binds {
        // Twice each, so the bind mounts get a fair share of the reads.
        t.push((*s, b.target.clone()));
        t.push((*s, b.target.clone()));
    }
    t
}

fn assert_binds_unchanged(binds: &[(usize, BindMount, (u64, u64))], mount: &Path) {
    for (s, b, before) in binds {
        let now = ino_dev(&b.target);
        assert_eq!(
            now,
            *before,
            "{}: (st_ino, st_dev) of the bind mount changed",
            secret_name(*s)
        );
        let through_mount = ino_dev(&mount.join(format!("secrets/{}", secret_name(*s))));
        assert_eq!(
            through_mount,
            *before,
            "{}: the mount shows another inode",
            secret_name(*s)
        );
    }
}

/// Everything `fd` reads from offset 0, with pread.
fn pread_all(f: &std::fs::File) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = f.read_at(&mut buf, out.len() as u64)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Crash loop.

/// How long the crash loop waits for a killed worker's successor before it stops killing.
const RESTART_WAIT: Duration = Duration::from_secs(20);

/// Kill the worker `kills` times, 100–600 ms after its successor serves, while readers read
/// every secret through the mount and four of them through single-file bind mounts, and a
/// rotator sets new versions.
fn crash_loop(mode: &str, kills: usize) {
    let label = format!("crash loop ({mode}, {kills} kills)");
    let mut rng = Rng::seeded(&label);
    let vault = Arc::new(start_vault());
    seed_secrets(&vault);
    let mut m = Mount::start(&vault, &["--cache-ttl", "1s", "--open-mode", mode]);
    let mnt = m.dir.path().to_path_buf();
    let supervisor = m.child.as_ref().unwrap().id() as i32;
    let mut log = LogTail::new(&m.log);
    let mut worker = wait_new_worker(supervisor, None, &mut log, Duration::from_secs(10))
        .expect("a first worker");

    let bind_dir = tempfile::tempdir().unwrap();
    let mut binds = bind_secrets(&mnt, bind_dir.path());
    // Opened before the first kill; the rotator changes this secret first.
    const OPENED: usize = 5;
    let opened = std::fs::File::open(mnt.join(format!("secrets/{}", secret_name(OPENED)))).unwrap();
    let at_open = pread_all(&opened).unwrap();
    let opened_version = parse_value(OPENED, &at_open).unwrap();

    let load = Load::start(
        rng.next(),
        targets(&mnt, &binds),
        Some(vault.clone()),
        OPENED,
    );
    let started = Instant::now();
    // Kill to "a new worker serves the mount".
    let mut restarts = Vec::new();
    let mut gave_up = None;
    for kill in 1..=kills {
        std::thread::sleep(rng.millis(100, 600));
        signal(worker, libc::SIGKILL);
        let killed = Instant::now();
        let mut next = wait_new_worker(supervisor, Some(worker), &mut log, RESTART_WAIT);
        if next.is_none() {
            // Stop killing, but let the restart come (the supervisor's backoff is at most 30 s)
            // so that the readers' counts below are complete.
            gave_up = Some(kill);
            next = wait_new_worker(supervisor, Some(worker), &mut log, RESTART_WAIT);
        }
        let Some(next) = next else {
            drop(load);
            panic!(
                "{label}: no new worker serving within {:?} of kill {kill}\n--- log ---\n{}",
                2 * RESTART_WAIT,
                tail(&m.log_text(), 40)
            );
        };
        worker = next;
        restarts.push(killed.elapsed());
        if gave_up.is_some() {
            break;
        }
    }
    // Readers go on for a moment with the last worker.
    std::thread::sleep(Duration::from_millis(1500));
    let (stats, rotated) = load.finish();
    let after = pread_all(&opened);
    let mut sorted = restarts.clone();
    sorted.sort();
    let backoffs: Vec<String> = strip_ansi(&m.log_text())
        .lines()
        .filter_map(|l| {
            l.split_once("keep dying; next start in ")
                .map(|(_, t)| t.to_string())
        })
        .collect();
    println!(
        "{label}: {} kills in {:?}, {} reads, {} failed {}, {} bad, {} rotations, max read latency {:?}, reads over {MAX_BLOCK:?}: {}, ENOTCONN {}",
        restarts.len(),
        started.elapsed(),
        stats.reads,
        stats.error_count(),
        stats.errors_in_words(),
        stats.bad_count,
        rotated,
        stats.max_latency,
        stats.over_max_block,
        stats.errors.get(&libc::ENOTCONN).copied().unwrap_or(0),
    );
    println!(
        "{label}: kill to new worker serving: median {:?}, max {:?}; supervisor backoffs: {backoffs:?}",
        sorted.get(sorted.len() / 2).copied().unwrap_or_default(),
        sorted.last().copied().unwrap_or_default(),
    );
    assert!(
        gave_up.is_none(),
        "{label}: no new worker served within {RESTART_WAIT:?} of kill {} (the supervisor's restart backoff: {backoffs:?}); reads blocked up to {:?}",
        gave_up.unwrap_or_default(),
        stats.max_latency
    );
    assert_clean(&label, &stats, &m.log_text());
    assert!(
        !m.log_text().contains("cannot resend"),
        "{label}: this kernel should resend what a killed worker had read"
    );
    assert_binds_unchanged(&binds, &mnt);
    let after = after
        .unwrap_or_else(|e| panic!("{label}: the descriptor opened before the first kill: {e}"));
    if mode == "snapshot" {
        assert!(
            after == at_open,
            "{label}: the descriptor opened at v{opened_version} now reads other bytes"
        );
    } else {
        let v = parse_value(OPENED, &after)
            .unwrap_or_else(|e| panic!("{label}: the early descriptor: {e}"));
        println!("{label}: the early descriptor read v{opened_version} at open, v{v} at the end");
    }
    drop(opened);
    for (_, b, _) in binds.iter_mut() {
        b.unmount();
    }
    let status = m.stop();
    assert!(
        status.success(),
        "{label}: exit status {status}: {}",
        tail(&m.log_text(), 30)
    );
    assert!(!is_mounted(&mnt), "{label}: still mounted after SIGTERM");
}

/// The crash loop: 20 kills, at random moments 100–600 ms apart, so the supervisor's
/// crash-loop backoff (after three quick deaths, 100 ms doubling to 2 s) is exercised too and
/// still keeps every read under the 5 s bound.
#[test]
fn crash_loop_snapshot_mode() {
    crash_loop("snapshot", 20);
}

#[test]
fn crash_loop_cached_mode() {
    crash_loop("cached", 20);
}

// ---------------------------------------------------------------------------------------------
// 2. Upgrade.

fn upgrade(wait_mode: bool) {
    let label = if wait_mode {
        "upgrade (--after-handoff wait)"
    } else {
        "upgrade"
    };
    let vault = Arc::new(start_vault());
    seed_secrets(&vault);
    let mut extra = vec!["--cache-ttl", "1s"];
    if wait_mode {
        extra.extend(["--after-handoff", "wait"]);
    }
    let mut m = Mount::start(&vault, &extra);
    let mnt = m.dir.path().to_path_buf();
    let first_supervisor = m.child.as_ref().unwrap().id() as i32;
    let mut first_log = LogTail::new(&m.log);
    let first_worker = wait_new_worker(
        first_supervisor,
        None,
        &mut first_log,
        Duration::from_secs(10),
    )
    .expect("a worker");
    let dev = ino_dev(&mnt).1;
    let bind_dir = tempfile::tempdir().unwrap();
    let mut binds = bind_secrets(&mnt, bind_dir.path());
    let load = Load::start(
        Rng::seeded(label).next(),
        targets(&mnt, &binds),
        Some(vault.clone()),
        0,
    );
    std::thread::sleep(Duration::from_secs(1));

    let logs = tempfile::tempdir().unwrap();
    let mut args = mount_args(&vault, &mnt, &extra);
    args.push("--foreground".into());
    let handoff_started = Instant::now();
    let mut successor = Proc::spawn(
        KVFS,
        &args,
        &env_with(&vault, &[]),
        &logs.path().join("successor.log"),
    );
    wait_for_takeover(label, "the successor", &mut successor);
    let took = handoff_started.elapsed();
    let first_status = if wait_mode {
        // It stays, idle, after handing over.
        common::wait_until(
            "the first kvfs to say it handed over",
            Duration::from_secs(10),
            || first_log.has_line(&["handed the mount over"]),
        );
        std::thread::sleep(Duration::from_millis(500));
        let child = m.child.as_mut().unwrap();
        assert!(
            child.try_wait().unwrap().is_none(),
            "{label}: the first supervisor exited: {}",
            m.log_text()
        );
        assert!(alive(first_supervisor));
        let status = m.stop();
        assert!(
            is_mounted(&mnt),
            "{label}: SIGTERM after the handoff unmounted: {}",
            m.log_text()
        );
        status
    } else {
        let mut child = m.child.take().unwrap();
        wait_exit(&mut child, Duration::from_secs(30)).unwrap_or_else(|| {
            panic!(
                "{label}: the first supervisor did not exit: {}",
                m.log_text()
            )
        })
    };
    // Whatever of the first generation is left goes.
    for pid in [first_supervisor, first_worker] {
        if alive(pid) {
            println!("{label}: pid {pid} of the first kvfs still alive; SIGKILL");
            signal(pid, libc::SIGKILL);
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    let (stats, rotated) = load.finish();
    println!(
        "{label}: takeover in {took:?}, {}, {rotated} rotations, first supervisor {first_status}",
        stats.summary()
    );
    assert_clean(
        label,
        &stats,
        &format!(
            "{}\n--- successor ---\n{}",
            m.log_text(),
            successor.log_text()
        ),
    );
    assert!(
        first_status.success(),
        "{label}: the first supervisor {first_status}: {}",
        m.log_text()
    );
    assert!(is_mounted(&mnt), "{label}: the mount is gone");
    assert_eq!(ino_dev(&mnt).1, dev, "{label}: st_dev changed");
    assert_binds_unchanged(&binds, &mnt);
    // The new processes serve.
    let new_worker = children(successor.pid());
    assert_eq!(
        new_worker.len(),
        1,
        "{label}: the successor's workers: {new_worker:?}"
    );
    assert!(!alive(first_worker), "{label}: the first worker still runs");
    let mut after = 0;
    for s in 0..SECRETS {
        let bytes = std::fs::read(mnt.join(format!("secrets/{}", secret_name(s)))).unwrap();
        parse_value(s, &bytes).unwrap();
        after += 1;
    }
    println!(
        "{label}: {after} reads after the handoff, served by worker {}",
        new_worker[0]
    );
    for (_, b, _) in binds.iter_mut() {
        b.unmount();
    }
    let status = successor.stop_with(libc::SIGTERM);
    assert!(
        status.success(),
        "{label}: the successor {status}: {}",
        successor.log_text()
    );
    assert!(
        !is_mounted(&mnt),
        "{label}: still mounted after the successor's SIGTERM"
    );
}

#[test]
fn upgrade_under_load_hands_the_live_mount_over() {
    upgrade(false);
}

#[test]
fn upgrade_with_after_handoff_wait_keeps_the_old_supervisor_until_sigterm() {
    upgrade(true);
}

// ---------------------------------------------------------------------------------------------
// 3. Upgrade across mount namespaces.

#[test]
fn upgrade_across_mount_namespaces() {
    let label = "upgrade across namespaces";
    let vault = Arc::new(start_vault());
    seed_secrets(&vault);
    // The directory both "pods" share with the host, as a DaemonSet's bidirectional hostPath.
    let shared = tempfile::tempdir().unwrap();
    let shared_path = shared.path().to_path_buf();
    succeed(
        Command::new("mount")
            .arg("--bind")
            .arg(&shared_path)
            .arg(&shared_path),
    );
    let _shared_bind = Cleanup(shared_path.clone());
    succeed(
        Command::new("mount")
            .arg("--make-rshared")
            .arg(&shared_path),
    );
    let mnt = shared_path.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _mnt_guard = Cleanup(mnt.clone());
    let socket = shared_path.join("kvfs.sock");
    let socket_arg = socket.display().to_string();
    let mut args = vec![
        "-m".to_string(),
        "--propagation".into(),
        "unchanged".into(),
        KVFS.into(),
    ];
    args.extend(mount_args(
        &vault,
        &mnt,
        &["--cache-ttl", "1s", "--control-socket", &socket_arg],
    ));
    args.push("--foreground".into());
    let logs = tempfile::tempdir().unwrap();
    let env = env_with(&vault, &[]);

    let mut first = Proc::spawn("unshare", &args, &env, &logs.path().join("first.log"));
    common::wait_until(
        "the mount made in the first namespace to show in ours",
        Duration::from_secs(20),
        || {
            if let Some(s) = first.try_wait() {
                panic!("{label}: the first kvfs exited ({s}): {}", first.log_text());
            }
            is_mounted(&mnt)
        },
    );
    // Mounted, and served.
    common::wait_until("the first kvfs to listen", Duration::from_secs(10), || {
        socket.exists()
    });
    let ns = |pid: &str| {
        std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
            .unwrap_or_else(|e| panic!("{label}: the mount namespace of {pid}: {e}"))
    };
    let first_ns = ns(&first.pid().to_string());
    let dev = ino_dev(&mnt).1;
    let bind_dir = tempfile::tempdir().unwrap();
    let mut binds = bind_secrets(&mnt, bind_dir.path());
    let load = Load::start(
        Rng::seeded(label).next(),
        targets(&mnt, &binds),
        Some(vault.clone()),
        0,
    );
    std::thread::sleep(Duration::from_secs(1));

    let started = Instant::now();
    let mut second = Proc::spawn("unshare", &args, &env, &logs.path().join("second.log"));
    wait_for_takeover(label, "the second kvfs", &mut second);
    let took = started.elapsed();
    let namespaces = [ns("self"), first_ns, ns(&second.pid().to_string())];
    assert!(
        namespaces[0] != namespaces[1]
            && namespaces[1] != namespaces[2]
            && namespaces[0] != namespaces[2],
        "{label}: three mount namespaces: {namespaces:?}"
    );
    let mut child = first.child.take().unwrap();
    let first_status = wait_exit(&mut child, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{label}: the first kvfs did not exit: {}", first.log_text()));
    std::thread::sleep(Duration::from_millis(1500));
    let (stats, rotated) = load.finish();
    println!(
        "{label}: takeover in {took:?}, {}, {rotated} rotations, first kvfs {first_status}",
        stats.summary()
    );
    assert_clean(
        label,
        &stats,
        &format!(
            "{}\n--- second ---\n{}",
            first.log_text(),
            second.log_text()
        ),
    );
    assert!(
        first_status.success(),
        "{label}: the first kvfs {first_status}: {}",
        first.log_text()
    );
    assert!(
        is_mounted(&mnt),
        "{label}: the mount is gone from our namespace"
    );
    assert_eq!(ino_dev(&mnt).1, dev, "{label}: st_dev changed");
    assert_binds_unchanged(&binds, &mnt);
    for s in 0..SECRETS {
        parse_value(
            s,
            &std::fs::read(mnt.join(format!("secrets/{}", secret_name(s)))).unwrap(),
        )
        .unwrap();
    }
    for (_, b, _) in binds.iter_mut() {
        b.unmount();
    }
    let status = second.stop_with(libc::SIGTERM);
    assert!(
        status.success(),
        "{label}: the second kvfs {status}: {}",
        second.log_text()
    );
    common::wait_until(
        "the unmount to propagate to our namespace",
        Duration::from_secs(5),
        || !is_mounted(&mnt),
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Without resend.

#[test]
fn without_resend_reads_in_flight_at_a_kill_fail_once_and_none_hangs() {
    let label = "without resend";
    let vault = start_vault();
    let versions = seed_secrets(&vault);
    let env = env_with(&vault, &[("KVFS_TEST_NO_RESEND", "1")]);
    let m = Mount::start_with_env(&vault, &["--cache-ttl", "60s"], &env);
    let mnt = m.dir.path().to_path_buf();
    let supervisor = m.child.as_ref().unwrap().id() as i32;
    let mut log = LogTail::new(&m.log);
    let worker =
        wait_new_worker(supervisor, None, &mut log, Duration::from_secs(10)).expect("a worker");
    // The kernel serialises LOOKUPs within one directory (kvfs does not negotiate
    // FUSE_PARALLEL_DIROPS), and a cold file's vault call happens in its LOOKUP: so that several
    // reads are in the worker at once, all but one go through their own directory,
    // `versions/secrets/<name>/<version>`. The listings are warm; the values are cold.
    const COLD: usize = 6;
    let paths: Vec<PathBuf> = (0..COLD)
        .map(|s| match s {
            0 => mnt.join(format!("secrets/{}", secret_name(s))),
            _ => {
                let dir = mnt.join(format!("versions/secrets/{}", secret_name(s)));
                assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
                dir.join(&versions[s])
            }
        })
        .collect();
    assert_eq!(
        std::fs::read_dir(mnt.join("secrets")).unwrap().count(),
        SECRETS + 4
    );
    vault.reset();
    vault.add_fault(Fault {
        op: "GetSecret".into(),
        name: None,
        action: FaultAction::Delay { ms: 2000 },
        count: Some(2 * COLD as u32),
    });
    let (tx, rx) = mpsc::channel();
    for (s, path) in paths.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let result = std::fs::read(&path);
            let _ = tx.send((s, result, Instant::now(), started.elapsed()));
        });
    }
    drop(tx);
    // The reads are in the worker, waiting for the vault.
    common::wait_until(
        "the cold reads to reach the vault",
        Duration::from_secs(5),
        || vault.count("GetSecret") >= COLD as u64,
    );
    std::thread::sleep(Duration::from_millis(200));
    signal(worker, libc::SIGKILL);
    let killed = Instant::now();
    vault.clear_faults();
    let deadline = killed + MAX_BLOCK;
    let mut outcomes = BTreeMap::new();
    while outcomes.len() < COLD {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((s, result, ended, took)) => {
                let after_kill = ended.saturating_duration_since(killed);
                let outcome = match result {
                    Ok(bytes) => {
                        parse_value(s, &bytes).unwrap_or_else(|e| panic!("{label}: {e}"));
                        "ok".to_string()
                    }
                    Err(e) => errno_name(e.raw_os_error().unwrap_or(-1)),
                };
                outcomes.insert(s, (outcome, took, after_kill));
            }
            Err(_) => break,
        }
    }
    let new_worker = wait_new_worker(supervisor, Some(worker), &mut log, Duration::from_secs(10));
    let mut later = 0;
    let mut later_failed = Vec::new();
    for s in 0..SECRETS {
        match std::fs::read(mnt.join(format!("secrets/{}", secret_name(s)))) {
            Ok(bytes) => {
                assert_eq!(parse_value(s, &bytes), Ok(1));
                later += 1;
            }
            Err(e) => later_failed.push(format!("{}: {e}", secret_name(s))),
        }
    }
    let mut by_outcome: BTreeMap<&str, usize> = BTreeMap::new();
    for (o, _, _) in outcomes.values() {
        *by_outcome.entry(o.as_str()).or_default() += 1;
    }
    println!(
        "{label}: {} of {COLD} in-flight reads answered within {MAX_BLOCK:?} of the kill: {by_outcome:?}; {later} of {SECRETS} reads afterwards ok",
        outcomes.len()
    );
    for (s, (o, took, after_kill)) in &outcomes {
        println!(
            "  {}: {o} after {took:?} ({after_kill:?} after the kill)",
            secret_name(*s)
        );
    }
    assert_eq!(
        outcomes.len(),
        COLD,
        "{label}: reads hung past {MAX_BLOCK:?} after the kill: {}",
        tail(&m.log_text(), 30)
    );
    assert!(
        m.log_text().contains("cannot resend"),
        "{label}: KVFS_TEST_NO_RESEND had no effect"
    );
    assert!(
        new_worker.is_some(),
        "{label}: no new worker: {}",
        tail(&m.log_text(), 30)
    );
    assert!(
        later_failed.is_empty(),
        "{label}: reads after the restart failed: {later_failed:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Stop under load.

/// What one stop under load came to.
struct Stopped {
    status: ExitStatus,
    /// Still in our mount table after the supervisor exited.
    mounted: bool,
    /// Files were open, so the unmount was lazy.
    lazy: bool,
    /// What listing the mountpoint afterwards gave: the entries of the empty directory, not
    /// ENOTCONN of a dead mount.
    listing: std::io::Result<usize>,
    reads: u64,
}

/// Mount, put readers on it, signal the supervisor, wait (bounded) for it to exit.
fn stop_trial(vault: &TestVault, sig: i32, seed: u64) -> Stopped {
    let mut m = Mount::start(vault, &["--cache-ttl", "1s"]);
    let mnt = m.dir.path().to_path_buf();
    let load = Load::start(seed, targets(&mnt, &[]), None, 0);
    // Until the readers are well under way.
    std::thread::sleep(Duration::from_millis(400));
    let mut child = m.child.take().unwrap();
    signal(child.id() as i32, sig);
    let status = wait_exit(&mut child, Duration::from_secs(15))
        .unwrap_or_else(|| panic!("kvfs did not exit after signal {sig}: {}", m.log_text()));
    let mounted = is_mounted(&mnt);
    let listing = std::fs::read_dir(&mnt).map(|d| d.count());
    // (Reads after the unmount fail, of course: not counted.)
    let (stats, _) = load.finish();
    Stopped {
        status,
        mounted,
        lazy: m.log_text().contains("detaching it"),
        listing,
        reads: stats.reads,
    }
}

#[test]
fn stop_under_load_unmounts_and_exits_zero() {
    let label = "stop under load";
    let mut rng = Rng::seeded(label);
    let vault = start_vault();
    seed_secrets(&vault);
    let trials: Vec<Stopped> = (0..10)
        .map(|_| stop_trial(&vault, libc::SIGTERM, rng.next()))
        .collect();
    let ok = trials
        .iter()
        .filter(|t| t.status.success() && !t.mounted)
        .count();
    println!(
        "{label}: SIGTERM: {ok}/10 trials exit 0 and unmounted ({} of them lazily, files being open); reads per trial before the stop {:?}",
        trials.iter().filter(|t| t.lazy).count(),
        trials.iter().map(|t| t.reads).collect::<Vec<_>>()
    );
    for (i, t) in trials.iter().enumerate() {
        assert!(t.status.success(), "{label}: trial {i}: {}", t.status);
        assert!(!t.mounted, "{label}: trial {i}: still mounted");
        assert_eq!(t.listing.as_ref().ok(), Some(&0), "{label}: trial {i}");
    }

    // SIGHUP too, and nothing dead is left on the mountpoint.
    let t = stop_trial(&vault, libc::SIGHUP, rng.next());
    println!(
        "{label}: SIGHUP: {}, mounted after: {}, lazily: {}, the mountpoint lists {:?}, {} reads",
        t.status, t.mounted, t.lazy, t.listing, t.reads
    );
    assert!(t.status.success(), "{label}: SIGHUP: {}", t.status);
    assert!(!t.mounted, "{label}: SIGHUP left a mount");
    assert_eq!(
        t.listing
            .unwrap_or_else(|e| panic!("{label}: SIGHUP left a dead mountpoint: {e}")),
        0
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Dead supervisor; dead connection.

/// The read in flight fails: mostly with ECONNABORTED (the kernel ends what the dead worker had
/// read), sometimes with EIO: the kernel closes the supervisor's descriptors before it sends the
/// worker its parent-death SIGKILL, so the worker may see its channel close first, exit by
/// itself ("the supervisor went away") and have fuser answer what it held with EIO ("Reply not
/// sent … replying with I/O error"). Either is an error within the bound, as asked.
#[test]
fn a_dead_supervisor_fails_blocked_readers_and_a_new_mount_replaces_it() {
    let label = "dead supervisor";
    let vault = start_vault();
    let mut m = Mount::start(&vault, &["--cache-ttl", "60s"]);
    let mnt = m.dir.path().to_path_buf();
    let _cleanup = Cleanup(mnt.clone());
    assert_eq!(
        m.read("secrets/api-key").unwrap(),
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
    );
    let supervisor = m.child.as_ref().unwrap().id() as i32;
    let mut log = LogTail::new(&m.log);
    let worker =
        wait_new_worker(supervisor, None, &mut log, Duration::from_secs(10)).expect("a worker");
    vault.reset();
    vault.add_fault(Fault {
        op: "GetSecret".into(),
        name: Some("connection-string".into()),
        action: FaultAction::Delay { ms: 10_000 },
        count: Some(1),
    });
    let (tx, rx) = mpsc::channel();
    let path = m.path("secrets/connection-string");
    std::thread::spawn(move || {
        let result = std::fs::read(&path);
        let _ = tx.send((result, Instant::now()));
    });
    common::wait_until(
        "the cold read to reach the vault",
        Duration::from_secs(5),
        || vault.count("GetSecret") >= 1,
    );
    std::thread::sleep(Duration::from_millis(200));
    let mut child = m.child.take().unwrap();
    signal(supervisor, libc::SIGKILL);
    let killed = Instant::now();
    let _ = child.wait();
    let (result, ended) = rx.recv_timeout(MAX_BLOCK).unwrap_or_else(|_| {
        panic!("{label}: the blocked read still hangs {MAX_BLOCK:?} after the supervisor died")
    });
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => errno_name(e.raw_os_error().unwrap_or(-1)),
    };
    let worker_gone = {
        let start = Instant::now();
        while alive(worker) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        !alive(worker)
    };
    vault.clear_faults();
    let (log2, _logs) = common::log_file();
    let log2_arg = log2.display().to_string();
    let remount = Instant::now();
    mount_detached(&vault, &mnt, &["--log-file", &log2_arg], kvfs_env(&vault));
    let remount_took = remount.elapsed();
    let value = std::fs::read_to_string(mnt.join("secrets/connection-string"));
    println!(
        "{label}: blocked read ended with {outcome} {:?} after the kill; worker gone: {worker_gone}; remount took {remount_took:?}; read after: {}",
        ended.saturating_duration_since(killed),
        if value.is_ok() { "ok" } else { "failed" }
    );
    assert!(
        result.is_err(),
        "{label}: the read in flight when everything died succeeded"
    );
    assert!(worker_gone, "{label}: the worker outlived its supervisor");
    assert!(
        value
            .as_deref()
            .is_ok_and(|v| v.starts_with("Server=tcp:db.example.test")),
        "{label}: {value:?}: {}",
        std::fs::read_to_string(&log2).unwrap_or_default()
    );
    common::unmount(&mnt);
    common::wait_until("the detached kvfs to exit", Duration::from_secs(10), || {
        kvfs_pids_for(&mnt).is_empty()
    });
}

/// A FUSE mount made by hand that nobody serves: its `/dev/fuse` is held open here and never
/// read. Dropping it closes the device (which ends the connection) and detaches the mount.
struct DeadConnection {
    dir: PathBuf,
    fuse: Option<OwnedFd>,
}

impl DeadConnection {
    fn mount(dir: &Path) -> DeadConnection {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: a plain open(2) of a constant path.
        let fd = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        assert!(
            fd >= 0,
            "open /dev/fuse: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: open just returned this descriptor, owned by nobody else.
        let fuse = unsafe { OwnedFd::from_raw_fd(fd) };
        let target = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        let data = std::ffi::CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            fuse.as_raw_fd()
        ))
        .unwrap();
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"kvfs:dead".as_ptr(),
                target.as_ptr(),
                c"fuse.kvfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount(2) of a FUSE connection: {}",
            std::io::Error::last_os_error()
        );
        DeadConnection {
            dir: dir.to_path_buf(),
            fuse: Some(fuse),
        }
    }
}

impl Drop for DeadConnection {
    fn drop(&mut self) {
        drop(self.fuse.take());
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn a_connection_nobody_serves_is_aborted_by_a_new_mount() {
    let label = "dead connection";
    let vault = start_vault();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().to_path_buf();
    let _cleanup = Cleanup(mnt.clone());
    let dead = DeadConnection::mount(&mnt);
    assert!(is_mounted(&mnt));
    // A stat on it hangs: nobody will ever answer.
    let (tx, rx) = mpsc::channel();
    {
        let mnt = mnt.clone();
        std::thread::spawn(move || {
            let result = std::fs::metadata(&mnt);
            let _ = tx.send((result.map(|m| m.dev()), Instant::now()));
        });
    }
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "{label}: the stat on a connection nobody serves answered"
    );

    let (log, _logs) = common::log_file();
    let log_arg = log.display().to_string();
    let started = Instant::now();
    let out = Command::new(KVFS)
        .args(mount_args(&vault, &mnt, &["--log-file", &log_arg]))
        .envs(kvfs_env(&vault))
        .output()
        .expect("kvfs runs");
    let took = started.elapsed();
    let stat = rx.recv_timeout(MAX_BLOCK);
    let value = std::fs::read_to_string(mnt.join("secrets/api-key"));
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    println!(
        "{label}: kvfs mount {} in {took:?}; hung stat: {}; read through the new mount: {}",
        out.status,
        match &stat {
            Ok((Ok(_), _)) => "answered".to_string(),
            Ok((Err(e), at)) => format!(
                "{} {:?} into the kvfs mount command",
                errno_name(e.raw_os_error().unwrap_or(-1)),
                at.saturating_duration_since(started)
            ),
            Err(_) => "still hanging".to_string(),
        },
        if value.is_ok() { "ok" } else { "failed" }
    );
    assert!(
        out.status.success(),
        "{label}: kvfs mount failed: {}\n{log_text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (stat, _) = stat.unwrap_or_else(|_| {
        panic!("{label}: the stat still hangs after the new mount: {log_text}")
    });
    assert!(
        stat.is_err(),
        "{label}: the hung stat came back with attributes"
    );
    assert_eq!(value.unwrap(), "sk_test_4eC39HqLyjWDarjtT1zdp7dc");
    assert!(log_text.contains("aborting it"), "{log_text}");
    common::unmount(&mnt);
    common::wait_until("the detached kvfs to exit", Duration::from_secs(10), || {
        kvfs_pids_for(&mnt).is_empty()
    });
    drop(dead);
}

/// A successor that cannot authenticate gives up before the running kvfs stops anything: the
/// upgrade fails in one line and the mount goes on being served by the old processes.
#[test]
fn an_upgrade_whose_credential_fails_leaves_the_running_kvfs_serving() {
    let vault = start_vault();
    let mut m = Mount::start(&vault, &[]);
    let mnt = m.dir.path().to_path_buf();
    let supervisor = m.child.as_ref().unwrap().id() as i32;
    let worker = children(supervisor);
    let dev = ino_dev(&mnt).1;
    let mut env = kvfs_env(&vault);
    env.retain(|(k, _)| k != "AZURE_CLIENT_SECRET");
    env.push(("AZURE_CLIENT_SECRET".into(), "not-the-secret".into()));
    let out = Command::new(KVFS)
        .args(mount_args(&vault, &mnt, &[]))
        .envs(env)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the upgrade must fail: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("kvfs: ")).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(lines[0].contains("token"), "{}", lines[0]);
    assert!(alive(supervisor), "the running supervisor stays");
    assert_eq!(children(supervisor), worker, "and so does its worker");
    assert_eq!(ino_dev(&mnt).1, dev, "the same mount");
    assert_eq!(
        std::fs::read_to_string(mnt.join("secrets/api-key")).unwrap(),
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
    );
    assert!(m.stop().success());
    assert!(!is_mounted(&mnt));
}
