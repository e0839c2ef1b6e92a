//! What the fast path must keep: after a change, the next read past the TTL sees the new
//! value even when the kernel's caches are warm — through the mount and through a single-file
//! bind mount, in both `--open-mode`s — and an open descriptor reads one consistent value.
//! Real FUSE mounts of a testvault; needs root and /dev/fuse, as CI has.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Mount, start_vault};

/// A read that starts this long after a change must see it: one TTL (the mounts use 1 s), plus
/// room for the write to land and the read to start.
const PAST_TTL: Duration = Duration::from_millis(1300);

const ORIGINAL: &str = "sk_test_4eC39HqLyjWDarjtT1zdp7dc";

fn mount(vault: &testvault::TestVault, mode: &str) -> Mount {
    Mount::start(vault, &["--cache-ttl", "1s", "--open-mode", mode])
}

/// Unmounts a bind mount when dropped.
struct BindMount(PathBuf);

impl BindMount {
    fn new(source: &Path, target: &Path) -> BindMount {
        std::fs::write(target, "").unwrap();
        let status = Command::new("mount")
            .arg("--bind")
            .arg(source)
            .arg(target)
            .status()
            .expect("mount --bind runs");
        assert!(status.success(), "mount --bind of one file");
        BindMount(target.to_path_buf())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Read `path` many times (so the kernel's dentry, attribute and page caches are all warm),
/// rotate the secret to `new` (the same length as before when `same_size`: only the mtime tells
/// the kernel its pages are stale), and check that reads past the TTL see it.
fn rotation_is_seen_through_warm_caches(mode: &str, same_size: bool) {
    let vault = start_vault();
    let m = mount(&vault, mode);
    let dir = tempfile::tempdir().unwrap();
    let bound = dir.path().join("api-key");
    let _bind = BindMount::new(&m.path("secrets/api-key"), &bound);
    for _ in 0..200 {
        assert_eq!(m.read("secrets/api-key").unwrap(), ORIGINAL);
        assert_eq!(std::fs::read_to_string(&bound).unwrap(), ORIGINAL);
    }
    let new = if same_size {
        ORIGINAL.replace("sk_test", "sk_live")
    } else {
        "rotated-and-of-another-length".to_string()
    };
    vault.set_secret("api-key", &new).unwrap();
    let changed = Instant::now();
    // Until then either value may be read, never anything else.
    while changed.elapsed() < PAST_TTL {
        let got = m.read("secrets/api-key").unwrap();
        assert!(got == ORIGINAL || got == new, "a mixed read: {got:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        m.read("secrets/api-key").unwrap(),
        new,
        "{mode}: through the mount"
    );
    assert_eq!(
        std::fs::read_to_string(&bound).unwrap(),
        new,
        "{mode}: through the bind mount"
    );
    assert_eq!(std::fs::metadata(&bound).unwrap().len(), new.len() as u64);
    assert_eq!(
        std::fs::metadata(m.path("secrets/api-key")).unwrap().len(),
        new.len() as u64
    );
}

#[test]
fn snapshot_mode_follows_a_rotation_through_warm_caches_and_a_bind_mount() {
    rotation_is_seen_through_warm_caches("snapshot", false);
}

#[test]
fn cached_mode_follows_a_rotation_through_warm_caches_and_a_bind_mount() {
    rotation_is_seen_through_warm_caches("cached", false);
}

/// Two versions written within one second have the same `updated` time (Key Vault's times are
/// whole seconds); at the same size, the kernel notices its cached pages are stale only because
/// each version gets its own mtime.
#[test]
fn cached_mode_follows_a_same_second_same_size_rotation() {
    let vault = start_vault();
    let m = mount(&vault, "cached");
    let (first, second) = ("same-size-value-1", "same-size-value-2");
    // Start at the beginning of a wall-clock second, so both writes land inside it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(Duration::from_nanos(
        1_000_000_000 - u64::from(now.subsec_nanos()) + 5_000_000,
    ));
    let started = Instant::now();
    vault.set_secret("api-key", first).unwrap();
    for _ in 0..20 {
        assert_eq!(m.read("secrets/api-key").unwrap(), first);
    }
    vault.set_secret("api-key", second).unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the test machine is too slow to write twice in one second"
    );
    let changed = Instant::now();
    while changed.elapsed() < PAST_TTL {
        let got = m.read("secrets/api-key").unwrap();
        assert!(got == first || got == second, "a mixed read: {got:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(m.read("secrets/api-key").unwrap(), second);
}

#[test]
fn snapshot_mode_an_open_descriptor_reads_the_bytes_it_opened() {
    let vault = start_vault();
    let m = mount(&vault, "snapshot");
    let mut f = std::fs::File::open(m.path("secrets/api-key")).unwrap();
    let mut first = [0u8; 4];
    f.read_exact(&mut first).unwrap();
    vault.set_secret("api-key", "x").unwrap();
    std::thread::sleep(PAST_TTL);
    // A new open (and stat) sees the new value while the old descriptor goes on with its own.
    assert_eq!(m.read("secrets/api-key").unwrap(), "x");
    let mut rest = String::new();
    f.read_to_string(&mut rest).unwrap();
    assert_eq!(
        format!("{}{rest}", String::from_utf8_lossy(&first)),
        ORIGINAL
    );
    let mut again = vec![0u8; 100];
    let n = f.read_at(&mut again, 0).unwrap();
    assert_eq!(&again[..n], ORIGINAL.as_bytes());
}

/// Cached mode has no per-descriptor snapshot (that needs the OPEN round trip it skips): a
/// descriptor reads whole versions, the old one until the kernel learns of the change and the new
/// one after — never a mix of the two within a read.
#[test]
fn cached_mode_an_open_descriptor_reads_whole_versions() {
    let vault = start_vault();
    let m = mount(&vault, "cached");
    let f = std::fs::File::open(m.path("secrets/api-key")).unwrap();
    let read_whole = |f: &std::fs::File| {
        let mut buf = vec![0u8; 4096];
        let n = f.read_at(&mut buf, 0).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    };
    assert_eq!(read_whole(&f), ORIGINAL);
    let new = "a-much-longer-value-than-the-original-one-was";
    vault.set_secret("api-key", new).unwrap();
    let changed = Instant::now();
    while changed.elapsed() < PAST_TTL {
        let got = read_whole(&f);
        assert!(got == ORIGINAL || got == new, "a mixed read: {got:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(read_whole(&f), new);
    // Sequential reads of the same descriptor go on from where they were, in the new version.
    let mut f = f;
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut all = String::new();
    f.read_to_string(&mut all).unwrap();
    assert_eq!(all, new);
}

/// An explicit version never changes; in snapshot mode its pages stay cached across opens, and
/// reading it back after the current value rotated still gives the old bytes.
#[test]
fn versions_read_the_same_bytes_in_both_modes() {
    let vault = start_vault();
    for mode in ["snapshot", "cached"] {
        let m = mount(&vault, mode);
        let versions = m.path("versions/secrets/db-password");
        let mut all: Vec<(String, String)> = std::fs::read_dir(&versions)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let value = std::fs::read_to_string(e.path()).unwrap();
                (e.file_name().to_string_lossy().into_owned(), value)
            })
            .collect();
        all.sort();
        assert!(all.len() >= 2, "{mode}: {all:?}");
        for _ in 0..3 {
            for (version, value) in &all {
                assert_eq!(
                    &std::fs::read_to_string(versions.join(version)).unwrap(),
                    value
                );
            }
        }
    }
}

/// Listings are cached by the kernel too (each `ls` reuses what the last one got while it is
/// unchanged); a created or disabled object still shows in the first listing past the TTL.
#[test]
fn listings_follow_creations_and_removals_through_the_kernel_cache() {
    let vault = start_vault();
    for mode in ["snapshot", "cached"] {
        let m = mount(&vault, mode);
        let list = || -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(m.path("secrets"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let before = list();
        for _ in 0..20 {
            assert_eq!(list(), before);
        }
        let created = format!("created-in-{mode}-mode");
        vault.set_secret(&created, "new").unwrap();
        let removed = before[0].clone();
        vault.set_secret_enabled(&removed, false).unwrap();
        std::thread::sleep(PAST_TTL);
        let after = list();
        assert!(after.contains(&created), "{mode}: {after:?}");
        assert!(!after.contains(&removed), "{mode}: {after:?}");
        vault.set_secret_enabled(&removed, true).unwrap();
    }
}

/// Ahead of the TTL, the background refresh notices the rotation (one list per collection) and
/// kvfs tells the kernel to forget exactly that file: the next read sees the new value although
/// the kernel's own attribute lifetime has not run out and its page cache was warm.
#[test]
fn a_change_found_by_the_background_refresh_reaches_a_warm_page_cache_at_once() {
    let vault = start_vault();
    let mut env = common::kvfs_env(&vault);
    env.push(("KVFS_LOG".into(), "kvfs=debug".into()));
    env.push(("PATH".into(), std::env::var("PATH").unwrap_or_default()));
    let ttl = Duration::from_secs(10);
    let m = Mount::start_with_env(
        &vault,
        &["--cache-ttl", "10s", "--open-mode", "cached"],
        &env,
    );
    let fetched = Instant::now();
    // Read it over and over so the entry is hot and the kernel's caches are warm.
    let mut reads = 0;
    while fetched.elapsed() < Duration::from_millis(500) {
        assert_eq!(m.read("secrets/api-key").unwrap(), ORIGINAL);
        reads += 1;
    }
    assert!(reads > 10);
    let logged_before = m.log_text().len();
    vault.set_secret("api-key", "rotated-value").unwrap();
    let invalidated = || {
        let log = m.log_text();
        let new = &log[logged_before.min(log.len())..];
        new.lines()
            .any(|l| l.contains("kernel caches invalidated") && l.contains("api-key"))
    };
    common::wait_until("the invalidation of secrets/api-key", ttl, || {
        // Keep it hot meanwhile: the refresher only refreshes what is being read.
        let _ = m.read("secrets/api-key");
        invalidated()
    });
    let at = fetched.elapsed();
    assert_eq!(m.read("secrets/api-key").unwrap(), "rotated-value");
    assert!(
        at < ttl,
        "the refresh came {at:?} after the fetch, not ahead of the {ttl:?} TTL"
    );
}
