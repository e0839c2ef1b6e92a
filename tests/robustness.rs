//! What keeps a mount safe and quiet under ordinary abuse, on real mounts: `isatty` on every
//! open, a log pipe nobody reads, a debugger or core dump, the log file's mode and contents, and
//! the one line a failed request leaves however often it fails.

mod common;

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{API_KEY, KVFS, Mount, children, kvfs_env, mount_args, start_vault, wait_until};

/// The environment of a client-secret mount at kvfs's default log level.
fn default_level_env(vault: &testvault::TestVault) -> Vec<(String, String)> {
    let mut env = kvfs_env(vault);
    env.retain(|(k, _)| k != "KVFS_LOG");
    env.push(("PATH".into(), std::env::var("PATH").unwrap_or_default()));
    env
}

#[test]
fn isatty_on_every_open_is_false_and_logs_nothing() {
    let vault = start_vault();
    let m = Mount::start_with_env(&vault, &[], &default_level_env(&vault));
    let file = m.path("secrets/api-key");
    // Python's open() asks isatty() (an ioctl) of every file it opens in buffered mode.
    let script = r#"
import sys
path = sys.argv[1]
ttys = 0
for _ in range(1000):
    with open(path) as f:
        ttys += f.isatty()
        assert f.read() == sys.argv[2]
print(ttys)
"#;
    let out = common::succeed(
        Command::new("python3")
            .args(["-c", script])
            .arg(&file)
            .arg(API_KEY),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    // Stop the mount: its last lines are written before it exits, so the log is complete.
    let mut m = m;
    let status = m.stop();
    assert!(status.success(), "{status}: {}", m.log_text());
    let log = m.log_text();
    let lines: Vec<&str> = log.lines().collect();
    println!(
        "log after 1000 opens: {} lines, {} bytes",
        lines.len(),
        log.len()
    );
    assert!(
        !log.to_lowercase().contains("ioctl"),
        "an ioctl was logged:\n{log}"
    );
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("WARN") && !l.contains("ERROR")),
        "{log}"
    );
    // Start-up and shut-down lines only, not one per open.
    assert!(lines.len() < 50, "{log}");
}

/// `kvfs mount --foreground` with stderr the write end of a pipe whose read end is returned.
fn mount_logging_to_a_pipe(
    vault: &testvault::TestVault,
    dir: &Path,
    env: Vec<(String, String)>,
) -> (std::process::Child, std::fs::File) {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 just returned these two fresh descriptors, owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The smallest pipe the kernel allows (one page): it fills after a few lines.
    // SAFETY: F_SETPIPE_SZ on a pipe we own.
    unsafe { libc::fcntl(write_end.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    let mut args = mount_args(vault, dir, &[]);
    args.push("--foreground".into());
    let child = Command::new(KVFS)
        .args(&args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(write_end))
        .spawn()
        .expect("kvfs starts");
    (child, std::fs::File::from(read_end))
}

#[test]
fn a_log_pipe_nobody_reads_never_blocks_a_request() {
    let vault = start_vault();
    let dir = tempfile::tempdir().unwrap();
    let mut env = kvfs_env(&vault);
    // Everything, fuser's line per request included: the pipe is full within a few requests.
    env.retain(|(k, _)| k != "KVFS_LOG");
    env.push(("KVFS_LOG".into(), "debug".into()));
    let (mut child, mut pipe) = mount_logging_to_a_pipe(&vault, dir.path(), env);
    let stop = |child: &mut std::process::Child| {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    };
    // Nobody reads the pipe from here until all reads are done.
    wait_until("the mount", Duration::from_secs(30), || {
        common::is_mounted(dir.path())
    });
    let file = dir.path().join("secrets/api-key");
    let names = dir.path().join("secrets");
    const READS: usize = 5000;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let reader = {
        let (file, names) = (file.clone(), names.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            for i in 0..READS {
                let value = std::fs::read_to_string(&file).expect("read");
                assert_eq!(value, API_KEY);
                // A name never looked up is a request the kernel cannot answer from its caches:
                // at least one line logged per iteration.
                let missing = std::fs::metadata(names.join(format!("no-such-{i}")));
                assert_eq!(
                    missing.map(|_| ()).map_err(|e| e.kind()),
                    Err(std::io::ErrorKind::NotFound)
                );
                if i % 100 == 0 {
                    assert!(std::fs::read_dir(&names).expect("list").count() > 0);
                }
            }
            let _ = done_tx.send(started.elapsed());
        })
    };
    // Generous: the bound is on hanging, not on speed (a blocked logger hangs for ever).
    let took = match done_rx.recv_timeout(Duration::from_secs(120)) {
        Ok(took) => took,
        Err(_) => {
            stop(&mut child);
            panic!("{READS} reads did not complete in 120 s with the log pipe full");
        }
    };
    reader.join().unwrap();
    println!("{READS} reads with an undrained log pipe took {took:?}");
    // Now drain the pipe: kvfs catches up and says how many lines it dropped.
    let drained = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let drained = drained.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                drained.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
    }
    let text = || String::from_utf8_lossy(&drained.lock().unwrap()).into_owned();
    wait_until(
        "the report of dropped lines",
        Duration::from_secs(30),
        || {
            // Each read logs (at debug), and the next line logged after drops carries the report.
            let _ = std::fs::read_to_string(&file);
            text().contains("log lines dropped")
        },
    );
    let log = text();
    let dropped: usize = log
        .lines()
        .filter_map(|l| l.split_once("kvfs::logging: "))
        .filter_map(|(_, rest)| rest.split(' ').next()?.parse::<usize>().ok())
        .sum();
    println!(
        "{} bytes of log drained afterwards; {dropped} lines reported dropped",
        log.len()
    );
    assert!(dropped > 0);
    assert!(!log.contains('\x1b'), "colour codes on a pipe");
    stop(&mut child);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    wait_until("the unmount", Duration::from_secs(10), || {
        !common::is_mounted(dir.path())
    });
}

/// Run `command` with CAP_SYS_PTRACE out of its bounding set: as root, but unable to inspect a
/// process that is not dumpable. (The kernel also wants the inspector's capabilities to cover
/// the target's, so the targets here run without it too: then only "dumpable" decides.)
fn without_cap_sys_ptrace(command: &mut Command) -> &mut Command {
    /// linux/capability.h
    const CAP_SYS_PTRACE: libc::c_ulong = 19;
    // SAFETY: only prctl (async-signal-safe) between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_PTRACE, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Whether `/proc/<pid>/mem` (what gdb and gcore read a process through) opens for a process
/// without CAP_SYS_PTRACE: the kernel allows it only if `pid` is dumpable.
fn mem_opens(pid: u32) -> Result<(), String> {
    let out = without_cap_sys_ptrace(Command::new("dd").arg(format!("if=/proc/{pid}/mem")).args([
        "of=/dev/null",
        "count=0",
        "status=none",
    ]))
    .output()
    .expect("dd runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// `Max core file size` of `pid`: (soft, hard).
fn core_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("a core limit");
    let mut fields = line["Max core file size".len()..].split_whitespace();
    (
        fields.next().unwrap().to_string(),
        fields.next().unwrap().to_string(),
    )
}

#[test]
fn the_supervisor_and_worker_cannot_be_dumped_or_inspected() {
    let vault = start_vault();
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("kvfs.log");
    let mut args = mount_args(&vault, dir.path(), &[]);
    args.push("--foreground".into());
    // kvfs needs no CAP_SYS_PTRACE; without it, only "dumpable" decides below.
    let mut supervisor = without_cap_sys_ptrace(
        Command::new(KVFS)
            .args(&args)
            .envs(kvfs_env(&vault))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .spawn()
    .expect("kvfs starts");
    let pid = supervisor.id();
    let stop = |supervisor: &mut std::process::Child| {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let _ = supervisor.wait();
    };
    let started = Instant::now();
    while !common::is_mounted(dir.path()) {
        if started.elapsed() > Duration::from_secs(30) {
            stop(&mut supervisor);
            panic!(
                "no mount: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secrets/api-key")).unwrap(),
        API_KEY
    );
    let mut worker = None;
    wait_until("a worker", Duration::from_secs(15), || {
        worker = children(pid as i32).first().map(|&w| w as u32);
        worker.is_some()
    });
    let worker = worker.unwrap();
    // The method works: a dumpable process started the same way can be read.
    let mut sleeper = without_cap_sys_ptrace(Command::new("sleep").arg("60"))
        .spawn()
        .unwrap();
    let control = mem_opens(sleeper.id());
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let mut failures = Vec::new();
    if let Err(e) = control {
        failures.push(format!("a dumpable process's memory did not open: {e}"));
    }
    for (who, pid) in [("supervisor", pid), ("worker", worker)] {
        let mem = mem_opens(pid);
        let limit = core_limit(pid);
        println!("{who} {pid}: its memory: {mem:?}; core limit {limit:?}");
        if mem.is_ok() {
            failures.push(format!("the {who}'s memory opened"));
        }
        if limit != ("0".into(), "0".into()) {
            failures.push(format!("the {who}'s core limit is {limit:?}"));
        }
    }
    // Still serving after all that.
    let value = std::fs::read_to_string(dir.path().join("secrets/api-key"));
    stop(&mut supervisor);
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(value.unwrap(), API_KEY);
}

#[test]
fn the_log_file_is_owner_only_and_plain_text() {
    let vault = start_vault();
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("kvfs.log");
    let mut args = mount_args(&vault, dir.path(), &["--log-file"]);
    args.push(log.display().to_string());
    // A permissive umask, so only the mode kvfs asks for at creation keeps others out.
    let mut command = Command::new(KVFS);
    command.args(&args).envs(kvfs_env(&vault));
    // SAFETY: umask is async-signal-safe and cannot fail.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    common::succeed(&mut command);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secrets/api-key")).unwrap(),
        API_KEY
    );
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "log file mode {mode:o}");
    let text = common::wait_for_log(&log, "a logged line", |t| {
        t.contains("INFO") || t.contains("DEBUG")
    });
    common::unmount(dir.path());
    assert!(
        !text.contains('\x1b'),
        "colour codes in the log file:\n{text}"
    );
    assert!(!text.contains(API_KEY), "a value in the log");
}

#[test]
fn json_log_lines_name_mount_vault_kind_op_errno_and_cause() {
    let vault = start_vault();
    let mut m = Mount::start_with_env(
        &vault,
        &["--log-format", "json", "--cache-ttl", "1s"],
        &default_level_env(&vault),
    );
    assert_eq!(m.read("secrets/api-key").unwrap(), API_KEY);
    let _outage = vault.add_fault(testvault::Fault::status("*", 503, None));
    let e = m.read("secrets/app-config").unwrap_err();
    assert_eq!(common::errno(&e), libc::EIO, "{e}");
    let text = m.wait_for_log("the failure's JSON line", |t| {
        t.contains("\"errno\":\"EIO\"")
    });
    m.stop();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let mount = m.dir.path().display().to_string();
    let host = url::Url::parse(&vault.info().vault_url).unwrap();
    let vault_host = format!("{}:{}", host.host_str().unwrap(), host.port().unwrap());
    for line in &lines {
        assert_eq!(line["mount"], mount.as_str(), "{line}");
        assert_eq!(line["vault"], vault_host.as_str(), "{line}");
        assert!(
            line["timestamp"].is_string() && line["level"].is_string(),
            "{line}"
        );
    }
    let failure = lines
        .iter()
        .find(|l| l["errno"] == "EIO")
        .expect("a failure line");
    assert_eq!(failure["kind"], "secrets", "{failure}");
    assert_eq!(failure["object"], "secrets/app-config", "{failure}");
    assert_eq!(failure["op"], "get", "{failure}");
    assert!(
        failure["cause"].as_str().unwrap().contains("503"),
        "{failure}"
    );
    assert!(!text.contains(API_KEY), "a value in the log");
}

/// The JSON lines in `text` that tell of a request on `path` that failed (the FUSE boundary's,
/// not the cache's, which name an `object`).
fn request_failures(text: &str, path: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "kvfs::fuse::failures" && l["path"] == path)
        .collect()
}

fn refuse_secret(vault: &testvault::TestVault, name: &str, status: u16) {
    vault.add_fault(testvault::Fault {
        op: "GetSecret".into(),
        name: Some(name.into()),
        action: testvault::FaultAction::Status {
            status,
            retry_after: None,
        },
        count: None,
    });
}

#[test]
fn a_failed_request_leaves_one_line_with_op_path_errno_and_cause_and_a_missing_name_none() {
    let vault = start_vault();
    let mut m = Mount::start_with_env(
        &vault,
        &["--log-format", "json"],
        &default_level_env(&vault),
    );
    // A missing name is an answer, not a failure: nothing to log.
    for _ in 0..5 {
        let e = std::fs::metadata(m.path("secrets/no-such-secret")).unwrap_err();
        assert_eq!(common::errno(&e), libc::ENOENT, "{e}");
    }
    refuse_secret(&vault, "app-config", 503);
    refuse_secret(&vault, "db-password", 403);
    // A reader failing in a loop.
    for _ in 0..50 {
        let e = m.read("secrets/app-config").unwrap_err();
        assert_eq!(common::errno(&e), libc::EIO, "{e}");
    }
    let e = m.read("secrets/db-password").unwrap_err();
    assert_eq!(common::errno(&e), libc::EACCES, "{e}");
    // A failure's line is queued before its reply, so once the last failure's line is in the
    // log every earlier one is too.
    m.wait_for_log("the line of the refused read", |t| {
        !request_failures(t, "secrets/db-password").is_empty()
    });
    m.stop();
    let text = m.log_text();

    let failing = request_failures(&text, "secrets/app-config");
    assert_eq!(failing.len(), 1, "50 failed reads, one line:\n{text}");
    let line = &failing[0];
    // `cat` fails where the kernel first asks: the lookup of the name.
    assert_eq!(line["op"], "lookup", "{line}");
    assert_eq!(line["errno"], "EIO", "{line}");
    assert!(line["cause"].as_str().unwrap().contains("503"), "{line}");

    let refused = request_failures(&text, "secrets/db-password");
    assert_eq!(refused.len(), 1, "{text}");
    assert_eq!(refused[0]["errno"], "EACCES", "{}", refused[0]);
    assert!(
        refused[0]["cause"]
            .as_str()
            .unwrap()
            .starts_with("access denied"),
        "{}",
        refused[0]
    );

    assert!(!text.contains("no-such-secret"), "ENOENT logged:\n{text}");
    assert!(!text.contains(API_KEY), "a value in the log");
}
