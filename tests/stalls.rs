//! One slow request never stalls another, names past the vault's limit, mmap, and daemons that
//! stop: real FUSE mounts of a testvault whose Delay fault makes one object slow. Needs root and
//! /dev/fuse, as CI has. Durations are bounded generously: what is checked is that a read does
//! not wait for the slow request (20 s), not how fast it is.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Mount, children, errno, proc_state, signal, start_vault, wait_for_challenge_probe, wait_until,
};
use testvault::{Fault, FaultAction, TestVault};

/// How slow the slow object is: far longer than any other read may take here.
const SLOW: Duration = Duration::from_secs(20);
/// A read that does not wait for the slow request is done well within this.
const NOT_HELD_UP: Duration = Duration::from_secs(10);

fn delay(op: &str, name: Option<&str>, count: Option<u32>) -> Fault {
    Fault {
        op: op.into(),
        name: name.map(str::to_string),
        action: FaultAction::Delay {
            ms: SLOW.as_millis() as u64,
        },
        count,
    }
}

/// Runs `f` on a thread; the receiver gets its result and how long it took.
fn timed<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> mpsc::Receiver<(T, Duration)> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let started = Instant::now();
        let result = f();
        let _ = tx.send((result, started.elapsed()));
    });
    rx
}

fn requests_for(vault: &TestVault, op: &str, name: &str) -> usize {
    vault
        .requests()
        .iter()
        .filter(|r| {
            r.op == op
                && r.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .count()
}

#[test]
fn a_slow_cold_lookup_holds_up_neither_the_listing_nor_other_names() {
    let vault = start_vault();
    let m = Mount::start(&vault, &[]);
    vault.add_fault(delay("GetSecret", Some("db-password"), Some(1)));
    let calls = vault.count("GetSecret");

    let slow = {
        let path = m.path("secrets/db-password");
        timed(move || std::fs::metadata(path).map(|md| md.len()))
    };
    // The slow lookup is at the vault (and so holds whatever the kernel would lock for it).
    wait_until("the slow lookup to reach the vault", NOT_HELD_UP, || {
        vault.count("GetSecret") > calls
    });

    let listing = {
        let path = m.path("secrets");
        timed(move || {
            let mut names: Vec<String> = std::fs::read_dir(path)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        })
    };
    let others: Vec<_> = ["api-key", "connection-string", "app-config"]
        .into_iter()
        .map(|name| {
            let path = m.path(&format!("secrets/{name}"));
            timed(move || std::fs::read_to_string(path).map(|v| v.len()))
        })
        .collect();

    let (names, took) = listing
        .recv_timeout(NOT_HELD_UP)
        .expect("ls secrets is not held up");
    println!("ls secrets took {took:?}");
    assert!(names.contains(&"db-password".to_string()), "{names:?}");
    for other in others {
        let (read, took) = other
            .recv_timeout(NOT_HELD_UP)
            .expect("a first lookup of another name is not held up");
        println!("another name took {took:?}");
        assert!(read.expect("read") > 0);
    }
    assert!(
        slow.try_recv().is_err(),
        "the slow lookup is still waiting for the vault"
    );
    let (size, took) = slow
        .recv_timeout(SLOW * 3)
        .expect("the slow lookup finishes");
    println!("the slow lookup took {took:?}");
    assert!(size.expect("the slow lookup succeeds") > 0);
}

#[test]
fn a_hot_value_whose_refresh_is_slow_is_read_at_once() {
    let vault = start_vault();
    let ttl = Duration::from_secs(2);
    let m = Mount::start(&vault, &["--cache-ttl", "2s"]);
    let expected = m.read("secrets/api-key").unwrap();
    // Every refresh from now on (one GET, or a list revalidating it) takes 20 s.
    vault.add_fault(delay("GetSecret", Some("api-key"), None));
    vault.add_fault(delay("GetSecrets", None, None));
    let gets = vault.count("GetSecret");
    let lists = vault.count("GetSecrets");

    // Keep reading for a few TTLs: the value expires while its refresh is at the vault.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut reads = 0;
    while started.elapsed() < ttl * 4 {
        let path = m.path("secrets/api-key");
        let (value, took) = timed(move || std::fs::read_to_string(path))
            .recv_timeout(NOT_HELD_UP)
            .expect("a read of a cached value does not wait for its refresh");
        assert_eq!(value.expect("read"), expected);
        slowest = slowest.max(took);
        reads += 1;
        thread::sleep(Duration::from_millis(100));
    }
    println!("{reads} reads while refreshes were slow; slowest {slowest:?}");
    assert!(
        vault.count("GetSecret") > gets || vault.count("GetSecrets") > lists,
        "a refresh was under way"
    );
    vault.clear_faults();
}

/// mmap of `path` (shared and private) must give the bytes read(2) does.
fn assert_mmap_matches_read(path: &std::path::Path) {
    let read = std::fs::read(path).unwrap();
    assert!(!read.is_empty(), "{}", path.display());
    for flags in [libc::MAP_SHARED, libc::MAP_PRIVATE] {
        let file = std::fs::File::open(path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        assert_eq!(len, read.len(), "{}", path.display());
        // SAFETY: a fresh read-only mapping of an open file, unmapped below; the bytes are
        // copied out while it is mapped.
        let mapped = unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                flags,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(
                addr,
                libc::MAP_FAILED,
                "mmap of {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
            let bytes = std::slice::from_raw_parts(addr as *const u8, len).to_vec();
            libc::munmap(addr, len);
            bytes
        };
        assert_eq!(mapped, read, "{} (flags {flags})", path.display());
    }
}

#[test]
fn mmap_gives_the_bytes_read_gives_in_every_open_mode() {
    let vault = start_vault();
    for mode in ["snapshot", "cached"] {
        let m = Mount::start(&vault, &["--open-mode", mode]);
        let versions = m.path("versions/secrets/db-password");
        let version = std::fs::read_dir(&versions)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        for path in [
            m.path("secrets/db-password"),
            m.path("keys/signing-rsa"),
            m.path("certs/web/fullchain.pem"),
            version,
        ] {
            println!("{mode}: {}", path.display());
            assert_mmap_matches_read(&path);
        }
    }
}

#[test]
fn a_name_past_127_bytes_is_too_long_and_costs_no_request() {
    let vault = start_vault();
    let m = Mount::start(&vault, &[]);
    // Counted from after the mount's challenge probe, which lands when it lands.
    wait_for_challenge_probe(&vault);
    let before = vault.requests().len();
    for len in [128, 256] {
        let name = "a".repeat(len);
        for dir in ["secrets/", "keys/", "certs/", "versions/secrets/", ""] {
            let err = std::fs::metadata(m.path(&format!("{dir}{name}"))).unwrap_err();
            assert_eq!(errno(&err), libc::ENAMETOOLONG, "{dir}<{len} bytes>");
        }
    }
    assert_eq!(
        vault.requests().len(),
        before,
        "no request for a name the vault cannot have"
    );
    // The longest name the vault allows is asked for, and is simply not there.
    let longest = "a".repeat(127);
    let err = std::fs::metadata(m.path(&format!("secrets/{longest}"))).unwrap_err();
    assert_eq!(errno(&err), libc::ENOENT);
    let seen = Instant::now();
    while requests_for(&vault, "GetSecret", &longest) == 0 {
        assert!(
            seen.elapsed() < NOT_HELD_UP,
            "the vault saw the 127-byte name: {:#?}",
            vault.requests()
        );
        thread::sleep(Duration::from_millis(20));
    }

    let path = std::ffi::CString::new(m.dir.path().as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path and a zeroed statvfs the call fills.
    let namemax = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(path.as_ptr(), &mut st), 0);
        st.f_namemax
    };
    assert_eq!(namemax, 127);
}

// ---------------------------------------------------------------------------------------------
// Stopped daemons.

fn supervisor_and_worker(m: &Mount) -> (i32, i32) {
    let supervisor = m.child.as_ref().expect("running").id() as i32;
    let mut worker = Vec::new();
    wait_until("the worker", NOT_HELD_UP, || {
        worker = children(supervisor);
        worker.len() == 1
    });
    (supervisor, worker[0])
}

#[test]
fn a_stopped_worker_is_replaced_and_readers_get_their_values() {
    let vault = start_vault();
    let m = Mount::start(&vault, &[]);
    let warm = m.read("secrets/api-key").unwrap();
    let (supervisor, worker) = supervisor_and_worker(&m);

    signal(worker, libc::SIGSTOP);
    wait_until("the worker to stop", NOT_HELD_UP, || {
        proc_state(worker) == Some('T')
    });
    // A cold read (needs the vault) and a warm one, both asked of the stopped worker.
    let cold = {
        let path = m.path("secrets/db-password");
        timed(move || std::fs::read_to_string(path))
    };
    let again = {
        let path = m.path("secrets/api-key");
        timed(move || std::fs::read_to_string(path))
    };
    let bound = Duration::from_secs(60);
    let (value, took) = cold.recv_timeout(bound).expect("the cold read is answered");
    println!("cold read across the stopped worker took {took:?}");
    assert_eq!(value.expect("cold read"), "c0rrect-h0rse-battery-staple");
    let (value, took) = again
        .recv_timeout(bound)
        .expect("the warm read is answered");
    println!("warm read across the stopped worker took {took:?}");
    assert_eq!(value.expect("warm read"), warm);

    let now = children(supervisor);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], worker, "a new worker serves");
    assert!(
        m.log_text().contains("has been stopped"),
        "the supervisor said why: {}",
        m.log_text()
    );
}

#[test]
fn with_the_whole_daemon_stopped_readers_fail_after_the_hang_timeout() {
    let vault = start_vault();
    let mut m = Mount::start(&vault, &["--hang-timeout", "1s"]);
    m.read("secrets/api-key").unwrap();
    let log = m.log_text();
    assert!(
        log.contains("the kernel fails requests that wait longer than the hang timeout"),
        "this kernel takes a request timeout: {log}"
    );
    let (supervisor, worker) = supervisor_and_worker(&m);
    for pid in [supervisor, worker] {
        signal(pid, libc::SIGSTOP);
    }
    let cold = {
        let path = m.path("secrets/db-password");
        timed(move || std::fs::read_to_string(path))
    };
    // The kernel looks at request ages every 15 s (a read failed after 30 s with a 1 s timeout
    // here): fail within a generous bound.
    let outcome = cold.recv_timeout(Duration::from_secs(90));
    for pid in [worker, supervisor] {
        signal(pid, libc::SIGCONT);
    }
    let (result, took) = outcome.expect("the read fails instead of hanging");
    println!("the read failed after {took:?}: {result:?}");
    let err = result.expect_err("nobody could answer it");
    // ECONNABORTED for a request the abort ended, ENOTCONN for one made after it.
    assert!(
        [libc::ECONNABORTED, libc::ENOTCONN].contains(&errno(&err)),
        "{err}"
    );
    let after = m.read("secrets/api-key").unwrap_err();
    assert_eq!(errno(&after), libc::ENOTCONN, "{after}");
    // The connection is gone: kvfs notices and exits; the mount is left for a new kvfs mount
    // (or umount) to clear, like any dead FUSE mount.
    let child = m.child.as_mut().unwrap();
    wait_until("kvfs to exit", Duration::from_secs(30), || {
        child.try_wait().ok().flatten().is_some()
    });
}
