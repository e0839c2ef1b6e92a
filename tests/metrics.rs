//! The metrics and health endpoints (`--metrics-addr`) of a real mount against testvault:
//! series that move with reads, errors and cache hits; no object name or value in any of it;
//! `/healthz` and `/readyz` (including an outage past `--max-stale`); the port answering across
//! a worker kill and a takeover; and a real Prometheus scraping it (`promtool` checks the text).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    API_KEY, KVFS, Mount, free_port, kvfs_env, mount_args, sample_seed, start_vault, wait_until,
};
use testvault::faults::Fault;

/// Every wait in this file is bounded by this (the machines are busy; nothing is timed).
const WAIT: Duration = Duration::from_secs(30);

/// One HTTP/1.1 answer: status and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

/// `GET path` on `addr`, one connection per request; `Err` for anything but an HTTP answer.
fn get(addr: SocketAddr, path: &str) -> Result<Answer, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8(raw).map_err(|e| format!("not UTF-8: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok(Answer {
        status,
        body: body.to_string(),
    })
}

/// `GET path`, retried until it gives an HTTP answer (a worker may be restarting).
fn get_ok(addr: SocketAddr, path: &str) -> Answer {
    let start = Instant::now();
    loop {
        match get(addr, path) {
            Ok(a) => return a,
            Err(e) => assert!(start.elapsed() < WAIT, "GET {path}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The endpoint's address, from the supervisor's log line (the tests bind port 0).
fn metrics_addr(m: &Mount) -> SocketAddr {
    let marker = "endpoints listening addr=";
    let log = m.wait_for_log("the metrics address", |t| t.contains(marker));
    let at = log.find(marker).unwrap() + marker.len();
    log[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .expect("an address")
}

/// The value of one sample (`name{labels}` exactly as exposed), zero when absent.
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The scrape says the mount has started exactly one worker of `kind` since it was mounted.
fn assert_one_start(body: &str, kind: &str) {
    let series = format!("kvfs_worker_starts_total{{kind=\"{kind}\"}}");
    assert_eq!(sample(body, &series), 1.0, "{body}");
}

fn scrape(addr: SocketAddr) -> String {
    let a = get_ok(addr, "/metrics");
    assert_eq!(a.status, 200, "{a:?}");
    a.body
}

/// No seed object's name, and no secret value (current or older), anywhere in `text`.
fn assert_no_names_or_values(text: &str) {
    let seed = sample_seed();
    let mut forbidden: Vec<String> = Vec::new();
    for s in &seed.secrets {
        forbidden.push(s.name.clone());
        forbidden.push(s.value.clone());
        forbidden.extend(s.previous.iter().cloned());
    }
    forbidden.extend(seed.keys.iter().map(|k| k.name.clone()));
    forbidden.extend(seed.certificates.iter().map(|c| c.name.clone()));
    for f in forbidden {
        assert!(
            !text.contains(&f),
            "{f:?} appears in the endpoint's answer:\n{text}"
        );
    }
}

fn mount_with_metrics(vault: &testvault::TestVault, extra: &[&str]) -> (Mount, SocketAddr) {
    let mut args = vec!["--metrics-addr", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let m = Mount::start(vault, &args);
    let addr = metrics_addr(&m);
    (m, addr)
}

#[test]
fn reads_errors_and_cache_hits_show_in_the_series_and_no_name_or_value_does() {
    let vault = start_vault();
    let (m, addr) = mount_with_metrics(&vault, &[]);
    let before = scrape(addr);
    assert!(
        before.contains(&format!(
            "kvfs_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{before}"
    );
    let get_200 = "kvfs_vault_requests_total{op=\"get_secret\",status=\"200\"}";
    let hits = "kvfs_cache_hits_total";
    let enoent = "kvfs_fuse_errors_total{op=\"lookup\",errno=\"ENOENT\"}";

    // A cold read: one GET of the secret, answered 200.
    assert_eq!(
        m.read("secrets/db-password").unwrap(),
        "c0rrect-h0rse-battery-staple"
    );
    let cold = scrape(addr);
    assert_eq!(sample(&cold, get_200) - sample(&before, get_200), 1.0);
    assert!(sample(&cold, "kvfs_fuse_requests_total{op=\"read\"}") >= 1.0);
    assert!(sample(&cold, "kvfs_fuse_requests_total{op=\"lookup\"}") >= 1.0);
    assert!(
        sample(
            &cold,
            "kvfs_fuse_request_duration_seconds_count{op=\"read\"}"
        ) >= 1.0,
        "{cold}"
    );
    assert!(
        sample(
            &cold,
            "kvfs_vault_request_duration_seconds_count{op=\"get_secret\"}"
        ) >= 1.0
    );
    assert!(sample(&cold, "kvfs_token_requests_total{result=\"ok\"}") >= 1.0);
    assert!(sample(&cold, "kvfs_cache_objects") >= 1.0);
    assert!(sample(&cold, "kvfs_cache_bytes") > 0.0);

    // A second read within the TTL: a cache hit, no GET.
    m.read("secrets/db-password").unwrap();
    let warm = scrape(addr);
    assert_eq!(sample(&warm, get_200), sample(&cold, get_200));
    assert!(sample(&warm, hits) > sample(&cold, hits), "{warm}");

    // A name the vault does not have: an ENOENT lookup.
    let missing = std::fs::metadata(m.path("secrets/no-such-secret")).unwrap_err();
    assert_eq!(common::errno(&missing), libc::ENOENT);
    let after = scrape(addr);
    assert!(sample(&after, enoent) >= 1.0, "{after}");
    assert!(sample(&after, enoent) > sample(&warm, enoent));

    // Reads of everything else the seed has, so that every name went through the mount.
    for dir in ["secrets", "keys", "certs"] {
        for entry in std::fs::read_dir(m.path(dir)).unwrap() {
            let _ = std::fs::metadata(entry.unwrap().path());
        }
    }
    let _ = m.read("secrets/api-key");
    let all = scrape(addr);
    assert_no_names_or_values(&all);

    // An open file is a handle until the kernel releases it (asynchronously, after close).
    let held = std::fs::File::open(m.path("secrets/api-key")).unwrap();
    assert!(sample(&scrape(addr), "kvfs_open_handles") >= 1.0);
    drop(held);
    wait_until("the handles to be released", WAIT, || {
        sample(&scrape(addr), "kvfs_open_handles") == 0.0
    });

    let health = get_ok(addr, "/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = get_ok(addr, "/readyz");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ok\n"));
    assert_eq!(get_ok(addr, "/nope").status, 404);
    assert_eq!(get_ok(addr, "/metrics/secrets").status, 404);
    // A healthy scrape logs nothing at the default level (the tests log at debug: look for
    // warnings and errors only).
    let log = m.log_text();
    assert!(
        !log.lines()
            .any(|l| l.contains("metrics") && (l.contains(" WARN ") || l.contains(" ERROR "))),
        "{log}"
    );
}

#[test]
fn readyz_fails_with_a_reason_once_an_outage_outlives_max_stale_and_recovers() {
    let vault = start_vault();
    let (m, addr) = mount_with_metrics(&vault, &["--cache-ttl", "1s", "--max-stale", "2s"]);
    m.read("secrets/api-key").unwrap();
    let ready = get_ok(addr, "/readyz");
    assert_eq!(ready.status, 200, "{ready:?}");

    vault.add_fault(Fault::status("GetSecret", 503, None));
    let mut last = None;
    wait_until("/readyz to fail", WAIT, || {
        // Reads keep asking the vault (the cache's retries are paced); the answer may be the
        // stale value or, past --max-stale, an error.
        let _ = m.read("secrets/api-key");
        let a = get_ok(addr, "/readyz");
        let failed = a.status == 503;
        last = Some(a);
        failed
    });
    let reason = last.unwrap().body;
    assert!(reason.contains("past --max-stale (2s)"), "{reason:?}");
    assert_eq!(reason.lines().count(), 1, "{reason:?}");
    assert_no_names_or_values(&reason);
    // The mount itself still answers.
    assert_eq!(get_ok(addr, "/healthz").status, 200);

    vault.clear_faults();
    wait_until("/readyz to recover", WAIT, || {
        let _ = m.read("secrets/api-key");
        get_ok(addr, "/readyz").status == 200
    });
    let body = scrape(addr);
    assert!(
        sample(
            &body,
            "kvfs_vault_requests_total{op=\"get_secret\",status=\"503\"}"
        ) >= 1.0,
        "{body}"
    );
}

/// The supervisor's only child: its worker.
fn worker_of(supervisor: u32) -> Option<i32> {
    let children =
        std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children")).ok()?;
    let pids: Vec<i32> = children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    (pids.len() == 1).then(|| pids[0])
}

#[test]
fn the_port_answers_across_a_worker_kill() {
    let vault = start_vault();
    let (m, addr) = mount_with_metrics(&vault, &[]);
    m.read("secrets/api-key").unwrap();
    assert_eq!(get_ok(addr, "/healthz").status, 200);
    let supervisor = m.child.as_ref().unwrap().id();
    let mut first = None;
    wait_until("the worker", WAIT, || {
        first = worker_of(supervisor);
        first.is_some()
    });
    let first = first.unwrap();
    // SAFETY: a signal to a process this test started (through the supervisor).
    unsafe { libc::kill(first, libc::SIGKILL) };
    wait_until("a new worker", WAIT, || {
        worker_of(supervisor).is_some_and(|w| w != first)
    });
    // The same socket, now served by the replacement: connections made meanwhile waited.
    let health = get_ok(addr, "/healthz");
    assert_eq!(health.status, 200, "{health:?}");
    let body = scrape(addr);
    assert_one_start(&body, "replacement");
    assert_eq!(m.read("secrets/api-key").unwrap(), API_KEY);
}

#[test]
fn the_port_answers_throughout_a_takeover() {
    let vault = start_vault();
    let (mut m, addr) = mount_with_metrics(&vault, &[]);
    m.read("secrets/api-key").unwrap();
    // A client polling all along: every request gets an HTTP answer (503 is allowed while the
    // old worker hands over), none is refused or cut.
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let done = done.clone();
        std::thread::spawn(move || {
            let (mut answers, mut failures) = (0u32, Vec::new());
            while !done.load(Ordering::Relaxed) {
                match get(addr, "/healthz") {
                    Ok(_) => answers += 1,
                    Err(e) => failures.push(e),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (answers, failures)
        })
    };
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("successor.log");
    let mut args = mount_args(&vault, m.dir.path(), &["--metrics-addr", "127.0.0.1:0"]);
    args.push("--foreground".into());
    let mut successor = Command::new(KVFS)
        .args(&args)
        .envs(kvfs_env(&vault))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _stop = StopOnDrop(&mut successor);
    let text = common::wait_for_log(&log, "the takeover", |t| t.contains("took the mount over"));
    let pause = text
        .lines()
        .find(|l| l.contains("took the mount over"))
        .and_then(|l| l.split("pause_ms=").nth(1))
        .unwrap_or("?");
    println!("takeover: readers paused for {pause} ms");
    let mut first = m.child.take().unwrap();
    wait_until("the first kvfs to exit", WAIT, || {
        first.try_wait().unwrap().is_some()
    });
    assert!(
        common::wait_for_log(&log, "the inherited socket", |t| t
            .contains("serving on the socket taken over"))
        .contains(&addr.to_string())
    );
    let health = get_ok(addr, "/healthz");
    assert_eq!(health.status, 200, "{health:?}");
    done.store(true, Ordering::Relaxed);
    let (answers, failures) = poller.join().unwrap();
    println!(
        "takeover: {answers} answers to /healthz, {} failures",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "requests without an answer: {failures:?}"
    );
    let body = scrape(addr);
    assert_one_start(&body, "takeover");
    assert_eq!(m.read("secrets/api-key").unwrap(), API_KEY);
}

/// SIGTERM (then SIGKILL) a child on drop, so a failed test leaves no kvfs behind.
struct StopOnDrop<'a>(&'a mut Child);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while self.0.try_wait().ok().flatten().is_none()
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_port_that_is_taken_fails_the_mount_with_one_line() {
    let vault = start_vault();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut args = mount_args(&vault, dir.path(), &["--metrics-addr", &addr]);
    args.push("--foreground".into());
    let out = Command::new(KVFS)
        .args(&args)
        .envs(kvfs_env(&vault))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("kvfs: cannot listen for metrics on ") && last.contains(&addr),
        "{stderr}"
    );
    assert!(!common::is_mounted(dir.path()));
    // Detached, the same line comes back from the daemon to the command.
    let out = Command::new(KVFS)
        .args(mount_args(&vault, dir.path(), &["--metrics-addr", &addr]))
        .envs(kvfs_env(&vault))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("kvfs: cannot listen for metrics on ") && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(!common::is_mounted(dir.path()));
    drop(taken);

    let out = Command::new(KVFS)
        .args(mount_args(
            &vault,
            dir.path(),
            &["--metrics-addr", "nowhere"],
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("kvfs: --metrics-addr: invalid address"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// A real Prometheus.

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

fn require(binary: &str) {
    assert!(
        Path::new(binary).exists(),
        "{binary} is missing: install Debian's `prometheus` package (apt-get install prometheus; \
         it brings prometheus and promtool), which this test runs against the mount"
    );
}

#[test]
fn promtool_finds_the_exposition_clean_and_prometheus_scrapes_it() {
    require(PROMETHEUS);
    require(PROMTOOL);
    let vault = start_vault();
    let (m, addr) = mount_with_metrics(&vault, &[]);
    m.read("secrets/api-key").unwrap();
    let _ = std::fs::metadata(m.path("secrets/no-such-secret"));
    let body = scrape(addr);

    // promtool lints what it reads on stdin: nothing to say is clean.
    let mut lint = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{body}"
    );

    // Prometheus itself, scraping every second.
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: kvfs\n    static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let mut prometheus = None;
    let mut web = None;
    // Its port is picked free, then bound by Prometheus: retried if someone took it meanwhile.
    for _ in 0..5 {
        let port = free_port();
        let mut child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        let web_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let start = Instant::now();
        let up = loop {
            if child.try_wait().unwrap().is_some() {
                break false;
            }
            if get(web_addr, "/-/ready").is_ok_and(|a| a.status == 200) {
                break true;
            }
            if start.elapsed() > WAIT {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if up {
            prometheus = Some(child);
            web = Some(web_addr);
            break;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let prometheus_log =
        || std::fs::read_to_string(work.path().join("prometheus.log")).unwrap_or_default();
    let mut prometheus =
        prometheus.unwrap_or_else(|| panic!("prometheus did not start: {}", prometheus_log()));
    let _stop = StopOnDrop(&mut prometheus);
    let web = web.unwrap();

    let query = |q: &str| get_ok(web, &format!("/api/v1/query?query={q}")).body;
    for (q, want) in [
        (
            "kvfs_build_info",
            format!("\"version\":\"{}\"", env!("CARGO_PKG_VERSION")),
        ),
        (
            "kvfs_fuse_requests_total%7Bop%3D%22lookup%22%7D",
            "\"op\":\"lookup\"".to_string(),
        ),
    ] {
        let mut last = String::new();
        let start = Instant::now();
        while !last.contains(&want) {
            assert!(
                start.elapsed() < WAIT,
                "Prometheus never returned {q}: {last}\n{}",
                prometheus_log()
            );
            std::thread::sleep(Duration::from_millis(200));
            last = query(q);
        }
        assert!(last.contains("\"status\":\"success\""), "{last}");
    }
    // The scrape itself was healthy.
    let up = query("up");
    assert!(up.contains("\"1\"]"), "{up}");
}

/// A thread in a network namespace of its own (loopback up), which runs what it is sent:
/// sockets it binds and processes it starts are in that namespace, like a second pod's.
struct NetNs {
    jobs: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl NetNs {
    fn new() -> NetNs {
        let (jobs, inbox) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let (ready, started) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: unshare affects this thread only (a network namespace is per task).
            let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            let up = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status();
            let _ = ready.send(unshared == 0 && up.is_ok_and(|s| s.success()));
            for job in inbox {
                job();
            }
        });
        assert!(
            started.recv().unwrap(),
            "cannot make a network namespace (unshare CLONE_NEWNET, ip link set lo up)"
        );
        NetNs { jobs }
    }

    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .unwrap();
        rx.recv().unwrap()
    }

    /// Connections to `port` on this namespace's loopback reach `port` on the test's own.
    fn forward(&self, port: u16) {
        let listener = self
            .run(move || std::net::TcpListener::bind(("127.0.0.1", port)))
            .unwrap();
        std::thread::spawn(move || {
            for inside in listener.incoming().flatten() {
                let Ok(outside) = TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    })
                };
                pipe(inside.try_clone().unwrap(), outside.try_clone().unwrap());
                pipe(outside, inside);
            }
        });
    }
}

#[test]
fn a_successor_in_another_network_namespace_binds_its_own_port_and_the_idle_one_stays_alive() {
    // The rolling update of a DaemonSet: the new pod (another network namespace) takes the mount
    // over from the old one, which waits for SIGTERM. The new pod's probes must reach the new
    // kvfs on its own address, and the old pod's liveness probe must keep passing, or the
    // kubelet would restart it and the restarted kvfs take the mount back.
    let vault = start_vault();
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let mut m = Mount::start(
        &vault,
        &["--metrics-addr", &metrics, "--after-handoff", "wait"],
    );
    m.read("secrets/api-key").unwrap();
    let old = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(get_ok(old, "/readyz").status, 200);

    let pod = NetNs::new();
    let vault_port = url::Url::parse(&vault.info().vault_url)
        .unwrap()
        .port()
        .unwrap();
    pod.forward(vault_port);
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("successor.log");
    let mut args = mount_args(&vault, m.dir.path(), &["--metrics-addr", &metrics]);
    args.push("--foreground".into());
    let (env, log_file) = (kvfs_env(&vault), std::fs::File::create(&log).unwrap());
    let mut successor = pod
        .run(move || {
            Command::new(KVFS)
                .args(&args)
                .envs(env)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
        })
        .unwrap();
    let _stop = StopOnDrop(&mut successor);
    let text = common::wait_for_log(&log, "the takeover", |t| t.contains("took the mount over"));
    assert!(
        !text.contains("serving on the socket taken over"),
        "the successor took a socket of another network namespace:\n{text}"
    );
    // The old kvfs: alive, not ready, and still waiting (not exited, not restarted).
    let health = get_ok(old, "/healthz");
    assert_eq!(health.status, 200, "{health:?}");
    let ready = get(old, "/readyz").unwrap();
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(ready.body.contains("handed the mount over"), "{ready:?}");
    assert!(m.child.as_mut().unwrap().try_wait().unwrap().is_none());
    // The new kvfs answers on the same address in its own namespace, and serves the mount.
    let inside = pod.run(move || get(old, "/readyz")).unwrap();
    assert_eq!(inside.status, 200, "{inside:?}");
    let body = pod.run(move || scrape(old));
    assert_one_start(&body, "takeover");
    assert_eq!(m.read("secrets/api-key").unwrap(), API_KEY);
}
