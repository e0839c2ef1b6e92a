//! Real FUSE mounts of a testvault over HTTPS (401 challenge, real tokens): the semantics of
//! doc/SEMANTICS.md. Needs root and /dev/fuse, as CI has.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use common::{
    KVFS, Mount, errno, is_challenge_probe, is_mounted, kvfs_env, mount_args, mount_detached,
    names, set, start_vault, succeed, unmount, wait_for_challenge_probe, wait_until,
};
use testvault::{Fault, FaultAction};

#[test]
fn lists_and_reads_the_tree_without_fetching_at_mount() {
    let vault = start_vault();
    // Two items per page: listings must follow nextLink across every page.
    vault.update_settings(|s| s.page_size = 2).unwrap();
    vault.reset();
    let m = Mount::start(&vault, &["--cache-ttl", "60s"]);
    // The one request of a mount is the token-less challenge probe, which names no object.
    wait_for_challenge_probe(&vault);
    let at_mount = vault.requests();
    assert!(
        at_mount.len() == 1 && is_challenge_probe(&at_mount[0]),
        "nothing is fetched at mount time: {at_mount:?}"
    );
    assert_eq!(
        names(m.dir.path()),
        set(&["certs", "keys", "secrets", "versions"])
    );
    // Disabled (retired-token) and certificate-backing (web, web-pem, internal-signing) are hidden.
    assert_eq!(
        names(&m.path("secrets")),
        set(&["api-key", "app-config", "connection-string", "db-password"])
    );
    assert_eq!(
        m.read("secrets/db-password").unwrap(),
        "c0rrect-h0rse-battery-staple"
    );
    // Certificate-backing keys are not listed under keys/; certificates are under certs/.
    assert_eq!(names(&m.path("keys")), set(&["signing-ec", "signing-rsa"]));
    assert_eq!(
        names(&m.path("certs")),
        set(&["internal-signing", "web", "web-pem"])
    );
    assert_eq!(
        names(&m.path("versions")),
        set(&["certs", "keys", "secrets"])
    );

    // Every version, each readable by id; the newest equals the current value.
    let versions = names(&m.path("versions/secrets/db-password"));
    assert_eq!(versions.len(), 3);
    let values: BTreeSet<String> = versions
        .iter()
        .map(|v| {
            m.read(&format!("versions/secrets/db-password/{v}"))
                .unwrap()
        })
        .collect();
    assert_eq!(
        values,
        set(&["winter2025!", "spring2026!", "c0rrect-h0rse-battery-staple"])
    );

    // Exact size, 0400/0500 owned by the mounting user, mtime = updated.
    let meta = std::fs::metadata(m.path("secrets/api-key")).unwrap();
    assert_eq!(meta.len(), "sk_test_4eC39HqLyjWDarjtT1zdp7dc".len() as u64);
    assert_eq!(meta.permissions().mode() & 0o777, 0o400);
    // SAFETY: getuid has no preconditions.
    assert_eq!(meta.uid(), unsafe { libc::getuid() });
    let dir_meta = std::fs::metadata(m.path("secrets")).unwrap();
    assert_eq!(dir_meta.permissions().mode() & 0o777, 0o500);
    let age = SystemTime::now()
        .duration_since(meta.modified().unwrap())
        .unwrap_or_default();
    assert!(
        age < Duration::from_secs(600),
        "mtime is the secret's updated time"
    );
}

#[test]
fn a_rotated_value_shows_after_the_ttl_also_through_a_single_file_bind_mount() {
    let vault = start_vault();
    let m = Mount::start(&vault, &["--cache-ttl", "1s"]);
    let target = tempfile::tempdir().unwrap();
    let bound = target.path().join("db-password");
    std::fs::write(&bound, "").unwrap();
    let status = Command::new("mount")
        .arg("--bind")
        .arg(m.path("secrets/db-password"))
        .arg(&bound)
        .status()
        .expect("mount --bind runs");
    assert!(status.success(), "mount --bind of one file");
    let _unbind = scopeguard(&bound);

    assert_eq!(
        m.read("secrets/db-password").unwrap(),
        "c0rrect-h0rse-battery-staple"
    );
    assert_eq!(
        std::fs::read_to_string(&bound).unwrap(),
        "c0rrect-h0rse-battery-staple"
    );
    vault
        .set_secret("db-password", "rotated-and-longer-than-before")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(
        m.read("secrets/db-password").unwrap(),
        "rotated-and-longer-than-before"
    );
    assert_eq!(
        std::fs::read_to_string(&bound).unwrap(),
        "rotated-and-longer-than-before"
    );
    assert_eq!(
        std::fs::metadata(&bound).unwrap().len(),
        "rotated-and-longer-than-before".len() as u64
    );
}

/// Unmounts a bind mount when dropped.
struct Unbind(std::path::PathBuf);
impl Drop for Unbind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
fn scopeguard(p: &std::path::Path) -> Unbind {
    Unbind(p.to_path_buf())
}

#[test]
fn an_open_file_keeps_reading_the_value_it_opened() {
    use std::io::{Read, Seek, SeekFrom};
    let vault = start_vault();
    let m = Mount::start(&vault, &["--cache-ttl", "1s"]);
    let mut f = std::fs::File::open(m.path("secrets/api-key")).unwrap();
    let mut first = [0u8; 4];
    f.read_exact(&mut first).unwrap();
    vault.set_secret("api-key", "completely-different").unwrap();
    std::thread::sleep(Duration::from_millis(1300));
    let mut rest = String::new();
    f.read_to_string(&mut rest).unwrap();
    assert_eq!(
        format!("{}{rest}", String::from_utf8_lossy(&first)),
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
    );
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut again = String::new();
    f.read_to_string(&mut again).unwrap();
    assert_eq!(again, "sk_test_4eC39HqLyjWDarjtT1zdp7dc");
    assert_eq!(m.read("secrets/api-key").unwrap(), "completely-different");
}

#[test]
fn concurrent_readers_of_a_cold_secret_make_one_request() {
    let vault = start_vault();
    let m = Mount::start(&vault, &["--cache-ttl", "60s"]);
    vault.reset();
    // Make the vault slow so every reader arrives while the first request is in flight.
    vault.add_fault(Fault {
        op: "GetSecret".into(),
        name: None,
        action: FaultAction::Delay { ms: 300 },
        count: Some(1),
    });
    let path = Arc::new(m.path("secrets/connection-string"));
    let barrier = Arc::new(Barrier::new(32));
    let readers: Vec<_> = (0..32)
        .map(|_| {
            let (path, barrier) = (path.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                std::fs::read_to_string(&*path).expect("read")
            })
        })
        .collect();
    for r in readers {
        assert!(r.join().unwrap().starts_with("Server=tcp:db.example.test"));
    }
    assert_eq!(vault.count("GetSecret"), 1, "{:?}", vault.counters());
}

#[test]
fn an_outage_serves_cached_values_and_eio_for_never_read_ones() {
    let vault = start_vault();
    let m = Mount::start(&vault, &["--cache-ttl", "1s", "--max-stale", "1h"]);
    assert_eq!(
        m.read("secrets/api-key").unwrap(),
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
    );
    let outage = vault.add_fault(Fault::status("*", 503, None));
    std::thread::sleep(Duration::from_millis(1200));
    // Past the TTL, during the outage: the last good value.
    assert_eq!(
        m.read("secrets/api-key").unwrap(),
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
    );
    // Never fetched: EIO.
    let e = m.read("secrets/app-config").unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    // Recovery: once the vault answers again, new values arrive.
    let _ = outage;
    vault.clear_faults();
    vault.set_secret("api-key", "after-the-outage").unwrap();
    wait_until("recovery after the outage", Duration::from_secs(20), || {
        m.read("secrets/api-key").ok().as_deref() == Some("after-the-outage")
            && m.read("secrets/app-config").is_ok()
    });
    m.wait_for_log("the outage", |log| {
        log.contains("503") || log.to_lowercase().contains("unavailable")
    });
}

#[test]
fn disabled_and_invalid_names_are_enoent_and_invalid_ones_cost_nothing() {
    let vault = start_vault();
    let m = Mount::start(&vault, &["--cache-ttl", "1s"]);
    let e = m.read("secrets/retired-token").unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT);
    assert_eq!(
        m.read("secrets/db-password").unwrap(),
        "c0rrect-h0rse-battery-staple"
    );
    vault.set_secret_enabled("db-password", false).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let e = m.read("secrets/db-password").unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT, "a disabled secret disappears");
    assert!(!names(&m.path("secrets")).contains("db-password"));

    vault.reset();
    for bad in ["bad_name", "a.b", "x y"] {
        let e = std::fs::metadata(m.path(&format!("secrets/{bad}"))).unwrap_err();
        assert_eq!(errno(&e), libc::ENOENT, "{bad}");
    }
    // Longer than any vault name: says so (tests/stalls.rs covers every directory).
    let e = std::fs::metadata(m.path(&format!("secrets/{}", "n".repeat(128)))).unwrap_err();
    assert_eq!(errno(&e), libc::ENAMETOOLONG);
    let e = std::fs::metadata(m.path("versions/secrets/api-key/not-a-version")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT);
    assert_eq!(vault.count("GetSecret"), 0, "{:?}", vault.counters());
    // Unknown names are negative-cached: a second look costs nothing within the TTL.
    let _ = std::fs::metadata(m.path("secrets/no-such-secret"));
    let _ = std::fs::metadata(m.path("secrets/no-such-secret"));
    assert_eq!(vault.count("GetSecret"), 1, "{:?}", vault.counters());
}

#[test]
fn every_mutation_is_erofs() {
    let vault = start_vault();
    let m = Mount::start(&vault, &[]);
    let file = m.path("secrets/api-key");
    assert_eq!(m.read("secrets/api-key").unwrap().len(), 32);
    let checks: Vec<(&str, std::io::Result<()>)> = vec![
        ("write", std::fs::write(&file, "x")),
        (
            "append",
            std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .map(|_| ()),
        ),
        (
            "touch new",
            std::fs::File::create(m.path("secrets/new-one")).map(|_| ()),
        ),
        ("rm", std::fs::remove_file(&file)),
        ("mv", std::fs::rename(&file, m.path("secrets/moved"))),
        (
            "chmod",
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)),
        ),
        ("mkdir", std::fs::create_dir(m.path("secrets/dir"))),
        ("rmdir", std::fs::remove_dir(m.path("keys"))),
    ];
    for (what, result) in checks {
        let e = result.expect_err(what);
        assert_eq!(errno(&e), libc::EROFS, "{what}: {e}");
    }
    let touch = Command::new("touch").arg(&file).output().unwrap();
    assert!(!touch.status.success());
    assert!(String::from_utf8_lossy(&touch.stderr).contains("Read-only file system"));
}

fn read_as(uid: u32, path: &std::path::Path) -> std::process::Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "cat",
        ])
        .arg(path)
        .output()
        .expect("setpriv runs")
}

#[test]
fn other_users_need_allow_other_and_modes_that_let_them() {
    let vault = start_vault();
    let nobody = 65534;
    {
        let m = Mount::start(&vault, &[]);
        let out = read_as(nobody, &m.path("secrets/api-key"));
        assert!(
            !out.status.success(),
            "without --allow-other another uid cannot read"
        );
    }
    {
        let m = Mount::start(&vault, &["--allow-other"]);
        let out = read_as(nobody, &m.path("secrets/api-key"));
        assert!(!out.status.success(), "0400 root-owned files stay private");
    }
    {
        let m = Mount::start(
            &vault,
            &["--allow-other", "--uid", "65534", "--gid", "65534"],
        );
        let out = read_as(nobody, &m.path("secrets/api-key"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
        );
    }
    {
        let m = Mount::start(&vault, &["-o", "allow_other,file_mode=0444,dir_mode=0555"]);
        let out = read_as(nobody, &m.path("secrets/api-key"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn extended_attributes_describe_the_object() {
    let vault = start_vault();
    let m = Mount::start(&vault, &[]);
    let file = m.path("secrets/db-password");
    let get = |name: &str| common::getfattr(&file, name);
    if Command::new("getfattr").arg("--version").output().is_err() {
        // Fall back to the syscall when the attr tools are not installed.
        let v = xattr_syscall(&file, "user.kvfs.version").expect("version xattr");
        assert_eq!(v.len(), 32);
        return;
    }
    let version = get("user.kvfs.version").expect("version");
    assert_eq!(version.len(), 32);
    assert!(names(&m.path("versions/secrets/db-password")).contains(&version));
    assert_eq!(get("user.kvfs.content_type").as_deref(), Some("text/plain"));
    assert_eq!(get("user.kvfs.tags.owner").as_deref(), Some("platform"));
    assert!(get("user.kvfs.updated").unwrap().contains('T'));
    assert_eq!(get("user.kvfs.nothing"), None);
}

fn xattr_syscall(path: &std::path::Path, name: &str) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 1024];
    // SAFETY: valid C strings and a buffer of the length passed.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| String::from_utf8_lossy(&buf[..len as usize]).into_owned())
}

#[test]
fn sigterm_unmounts_cleanly_and_exits_zero() {
    let vault = start_vault();
    let mut m = Mount::start(&vault, &[]);
    assert!(m.read("secrets/api-key").is_ok());
    let status = m.stop();
    assert!(status.success(), "exit status {status}: {}", m.log_text());
    assert!(!is_mounted(m.dir.path()));

    // SIGINT (Ctrl-C in a foreground kvfs) does the same, once it serves (the mount shows in
    // mountinfo before the worker answers; a signal before then is an interrupted start, exit 1).
    let mut m = Mount::start(&vault, &[]);
    assert!(m.read("secrets/api-key").is_ok());
    let mut child = m.child.take().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}: {}", m.log_text());
    assert!(!is_mounted(m.dir.path()));
}

#[test]
fn detached_mount_answers_before_the_command_returns_and_unmount_ends_it() {
    let vault = start_vault();
    let dir = tempfile::tempdir().unwrap();
    mount_detached(&vault, dir.path(), &[], kvfs_env(&vault));
    assert!(is_mounted(dir.path()), "mounted when the command returns");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secrets/api-key")).unwrap(),
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
    );
    unmount(dir.path());
    assert!(!is_mounted(dir.path()));
}

#[test]
fn a_failed_mount_says_why_in_one_line() {
    let vault = start_vault();
    let missing = std::path::Path::new("/nonexistent/kvfs-test-mountpoint");
    for args in [
        mount_args(&vault, missing, &[]),
        mount_args(&vault, missing, &["--foreground"]),
        mount_args(
            &vault,
            std::env::temp_dir().as_path(),
            &["--cache-ttl", "soon"],
        ),
    ] {
        let out = Command::new(KVFS)
            .args(&args)
            .envs(kvfs_env(&vault))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("kvfs: ")).collect();
        assert_eq!(lines.len(), 1, "one clear line: {err}");
    }
}

#[test]
fn mounting_over_a_stale_mount_recovers_it() {
    let vault = start_vault();
    let mut m = Mount::start(&vault, &[]);
    // The mount shows before its INIT is answered, and a kill in that window fails the
    // connection's start (ECONNREFUSED) instead of leaving a served mount behind: read first.
    assert_eq!(
        m.read("secrets/api-key").unwrap(),
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
    );
    // Kill the daemon so the kernel keeps a mount nobody serves.
    let mut child = m.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // A request caught in flight fails with ECONNABORTED, later ones with ENOTCONN.
    // A name never looked up, so the kernel cannot answer from its caches.
    let e = std::fs::metadata(m.path("keys/never-looked-up")).unwrap_err();
    assert!(
        [libc::ENOTCONN, libc::ECONNABORTED].contains(&errno(&e)),
        "{e}"
    );
    mount_detached(&vault, m.dir.path(), &[], kvfs_env(&vault));
    assert_eq!(
        m.read("secrets/api-key").unwrap(),
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
    );
    unmount(m.dir.path());
}

#[test]
fn a_missing_role_is_eacces_with_a_log_line_naming_it() {
    let vault = start_vault();
    let reader = vault
        .add_identity(testvault::IdentitySpec {
            name: "metadata-reader".into(),
            roles: Some(vec!["Key Vault Reader".into()]),
            ..Default::default()
        })
        .expect("identity added");
    let dir = tempfile::tempdir().unwrap();
    let (log, _logs) = common::log_file();
    let mut env = kvfs_env(&vault);
    for (k, v) in env.iter_mut() {
        match k.as_str() {
            "AZURE_CLIENT_ID" => *v = reader.client_id.clone(),
            "AZURE_CLIENT_SECRET" => *v = reader.client_secret.clone().expect("app secret"),
            _ => {}
        }
    }
    let log_arg = log.display().to_string();
    mount_detached(&vault, dir.path(), &["--log-file", &log_arg], env);
    // Listing needs only metadata, which a Reader has; the value needs Key Vault Secrets User.
    assert!(names(&dir.path().join("secrets")).contains("api-key"));
    let e = std::fs::read_to_string(dir.path().join("secrets/api-key")).unwrap_err();
    assert_eq!(errno(&e), libc::EACCES, "{e}");
    let text = common::wait_for_log(&log, "the missing role", |t| {
        t.contains("Key Vault Secrets User")
    });
    assert!(
        !text.contains("sk_test_4eC39HqLyjWDarjtT1zdp7dc"),
        "no values in logs"
    );
    unmount(dir.path());
}

#[test]
fn the_mount_helper_form_takes_o_options_as_fstab_gives_them() {
    let vault = start_vault();
    let bin = tempfile::tempdir().unwrap();
    let helper = bin.path().join("mount.fuse.kvfs");
    std::os::unix::fs::symlink(KVFS, &helper).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = format!(
        "rw,nofail,allow_other,uid=65534,cache_ttl=30s,ca_file={},no_verify_challenge_resource",
        vault.info().ca_file.display()
    );
    succeed(
        Command::new(&helper)
            .arg(&vault.info().vault_url)
            .arg(dir.path())
            .args(["-n", "-o", &options])
            .envs(kvfs_env(&vault)),
    );
    let meta = std::fs::metadata(dir.path().join("secrets/api-key")).unwrap();
    assert_eq!(meta.uid(), 65534);
    unmount(dir.path());
}

#[test]
fn a_mount_right_after_an_unmount_mounts_afresh() {
    // The unmounted kvfs may still be on its way out (and was listening for a successor):
    // the next mount must not try to take its mount over, nor fail.
    let vault = start_vault();
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        mount_detached(&vault, dir.path(), &[], kvfs_env(&vault));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("secrets/api-key")).unwrap(),
            "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
            "round {round}"
        );
        unmount(dir.path());
    }
    assert!(!is_mounted(dir.path()));
}
