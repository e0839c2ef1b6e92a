//! bench-loops: the tight timing loops of `scripts/bench` (see doc/BENCHMARKING.md).
//!
//! Every subcommand prints one JSON object on stdout (`watch` prints one per change). Timings are
//! CLOCK_MONOTONIC nanoseconds; file operations are raw `open(2)`/`read(2)`/`close(2)`/`stat(2)`
//! calls, so the loop costs nothing but the system calls it measures.
//!
//! ```text
//! bench-loops orc   [--iters N | --seconds S] [--block B] [--warmup W] [--stdin-stop] PATH...
//! bench-loops stat  [--iters N | --seconds S] [--block B] [--warmup W] PATH...
//! bench-loops first-read PATH...
//! bench-loops concurrent-read PATH THREADS
//! bench-loops read-all PATHS_FILE
//! bench-loops periodic-read PATHS_FILE INTERVAL_MS DURATION_S
//! bench-loops watch PATH INTERVAL_MS          (until stdin closes)
//! bench-loops https-get --ca PEM [--warmup W] URL...   (bearer token from $BENCH_TOKEN)
//! ```

use std::ffi::{CStr, CString};
use std::io::{BufRead, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        die(
            "usage: bench-loops <orc|stat|first-read|concurrent-read|read-all|periodic-read|watch|https-get> ...",
        );
    };
    match cmd.as_str() {
        "orc" => loop_cmd(rest, Op::OpenReadClose),
        "stat" => loop_cmd(rest, Op::Stat),
        "first-read" => first_read(rest),
        "concurrent-read" => concurrent_read(rest),
        "read-all" => read_all(rest),
        "periodic-read" => periodic_read(rest),
        "watch" => watch(rest),
        "https-get" => https_get(rest),
        other => die(&format!("unknown subcommand {other}")),
    }
}

fn die(msg: &str) -> ! {
    eprintln!("bench-loops: {msg}");
    std::process::exit(2)
}

fn cpath(p: &str) -> CString {
    CString::new(std::path::Path::new(p).as_os_str().as_bytes())
        .unwrap_or_else(|_| die(&format!("{p}: NUL in path")))
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// open + read until EOF + close; the bytes read, or the errno.
fn open_read_close(p: &CStr, buf: &mut [u8]) -> Result<usize, i32> {
    // SAFETY: p is NUL-terminated; buf is valid for buf.len() bytes; fd is ours to close.
    unsafe {
        let fd = libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno());
        }
        let mut total = 0usize;
        loop {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n < 0 {
                let e = errno();
                libc::close(fd);
                return Err(e);
            }
            if n == 0 {
                break;
            }
            total += n as usize;
        }
        libc::close(fd);
        Ok(total)
    }
}

/// Like `open_read_close`, keeping the bytes.
fn read_value(p: &CStr, buf: &mut [u8]) -> Result<Vec<u8>, i32> {
    let mut out = Vec::new();
    // SAFETY: as above.
    unsafe {
        let fd = libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno());
        }
        loop {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n < 0 {
                let e = errno();
                libc::close(fd);
                return Err(e);
            }
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        libc::close(fd);
    }
    Ok(out)
}

fn stat_once(p: &CStr) -> Result<u64, i32> {
    // SAFETY: st is plain data written by stat; p is NUL-terminated.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::stat(p.as_ptr(), &mut st) != 0 {
            return Err(errno());
        }
        Ok(st.st_size as u64)
    }
}

struct Stats {
    n: usize,
    p50: u64,
    p90: u64,
    p99: u64,
    min: u64,
    max: u64,
    mean: u64,
}

/// Nearest-rank percentiles.
fn stats(samples: &mut [u64]) -> Stats {
    samples.sort_unstable();
    let n = samples.len();
    if n == 0 {
        return Stats {
            n,
            p50: 0,
            p90: 0,
            p99: 0,
            min: 0,
            max: 0,
            mean: 0,
        };
    }
    let pct = |p: f64| samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    Stats {
        n,
        p50: pct(0.50),
        p90: pct(0.90),
        p99: pct(0.99),
        min: samples[0],
        max: samples[n - 1],
        mean: (samples.iter().map(|&s| s as u128).sum::<u128>() / n as u128) as u64,
    }
}

fn stats_json(s: &Stats) -> String {
    format!(
        "\"n\":{},\"p50_ns\":{},\"p90_ns\":{},\"p99_ns\":{},\"min_ns\":{},\"max_ns\":{},\"mean_ns\":{}",
        s.n, s.p50, s.p90, s.p99, s.min, s.max, s.mean
    )
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[derive(Clone, Copy)]
enum Op {
    OpenReadClose,
    Stat,
}

struct LoopOpts {
    iters: Option<usize>,
    seconds: Option<f64>,
    block: usize,
    warmup: usize,
    stdin_stop: bool,
    paths: Vec<String>,
}

fn parse_loop_opts(args: &[String]) -> LoopOpts {
    let mut o = LoopOpts {
        iters: None,
        seconds: None,
        block: 500,
        warmup: 1000,
        stdin_stop: false,
        paths: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .unwrap_or_else(|| die(&format!("{name} needs a value")))
                .clone()
        };
        match a.as_str() {
            "--iters" => o.iters = Some(val("--iters").parse().unwrap_or_else(|_| die("--iters"))),
            "--seconds" => {
                o.seconds = Some(
                    val("--seconds")
                        .parse()
                        .unwrap_or_else(|_| die("--seconds")),
                )
            }
            "--block" => o.block = val("--block").parse().unwrap_or_else(|_| die("--block")),
            "--warmup" => o.warmup = val("--warmup").parse().unwrap_or_else(|_| die("--warmup")),
            "--stdin-stop" => o.stdin_stop = true,
            p => o.paths.push(p.to_string()),
        }
    }
    if o.paths.is_empty() {
        die("no path given");
    }
    if o.iters.is_none() && o.seconds.is_none() {
        o.iters = Some(10_000);
    }
    o.block = o.block.max(1);
    o
}

/// The same loop on every path, interleaved in blocks of `block` iterations (A-block, B-block,
/// A-block, …) so that drift on the machine lands on every path alike.
fn loop_cmd(args: &[String], op: Op) {
    let o = parse_loop_opts(args);
    let paths: Vec<CString> = o.paths.iter().map(|p| cpath(p)).collect();
    let mut buf = vec![0u8; 64 * 1024];
    let mut run = |p: &CStr| -> Result<(), i32> {
        match op {
            Op::OpenReadClose => open_read_close(p, &mut buf).map(|_| ()),
            Op::Stat => stat_once(p).map(|_| ()),
        }
    };
    for p in &paths {
        for _ in 0..o.warmup {
            if let Err(e) = run(p) {
                die(&format!(
                    "{}: {}",
                    p.to_string_lossy(),
                    std::io::Error::from_raw_os_error(e)
                ));
            }
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    if o.stdin_stop {
        stop_when_stdin_closes(stop.clone());
    }
    let mut samples: Vec<Vec<u64>> = paths.iter().map(|_| Vec::new()).collect();
    let mut errors = vec![0usize; paths.len()];
    let started = Instant::now();
    let deadline = o.seconds.map(Duration::from_secs_f64);
    let mut done = 0usize;
    loop {
        if let Some(n) = o.iters
            && done >= n
        {
            break;
        }
        if let Some(d) = deadline
            && started.elapsed() >= d
        {
            break;
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let this_block = o.iters.map_or(o.block, |n| o.block.min(n - done));
        for (i, p) in paths.iter().enumerate() {
            for _ in 0..this_block {
                let t0 = Instant::now();
                let r = run(p);
                let dt = t0.elapsed().as_nanos() as u64;
                match r {
                    Ok(()) => samples[i].push(dt),
                    Err(_) => errors[i] += 1,
                }
            }
        }
        done += this_block;
    }
    let parts: Vec<String> = o
        .paths
        .iter()
        .zip(samples.iter_mut())
        .zip(errors.iter())
        .map(|((p, s), e)| {
            format!(
                "{{\"path\":{},{},\"errors\":{}}}",
                json_str(p),
                stats_json(&stats(s)),
                e
            )
        })
        .collect();
    println!(
        "{{\"op\":\"{}\",\"results\":[{}]}}",
        match op {
            Op::OpenReadClose => "open_read_close",
            Op::Stat => "stat",
        },
        parts.join(",")
    );
}

/// stat + open + read + close of each path, once, timed per path.
fn first_read(args: &[String]) {
    if args.is_empty() {
        die("first-read PATH...");
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut samples = Vec::new();
    let mut per = Vec::new();
    let mut errors = 0usize;
    for p in args {
        let c = cpath(p);
        let t0 = Instant::now();
        let r = stat_once(&c).and_then(|_| open_read_close(&c, &mut buf));
        let dt = t0.elapsed().as_nanos() as u64;
        match r {
            Ok(_) => {
                samples.push(dt);
                per.push(dt.to_string());
            }
            Err(e) => {
                errors += 1;
                eprintln!("bench-loops: {p}: {}", std::io::Error::from_raw_os_error(e));
                per.push("null".into());
            }
        }
    }
    println!(
        "{{{},\"errors\":{},\"each_ns\":[{}]}}",
        stats_json(&stats(&mut samples)),
        errors,
        per.join(",")
    );
}

/// THREADS threads released together by a barrier, each open + read + close of PATH once.
fn concurrent_read(args: &[String]) {
    let [path, threads] = args else {
        die("concurrent-read PATH THREADS");
    };
    let threads: usize = threads.parse().unwrap_or_else(|_| die("THREADS"));
    let path = Arc::new(cpath(path));
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let path = path.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                barrier.wait();
                let t0 = Instant::now();
                let r = read_value(&path, &mut buf);
                (t0.elapsed().as_nanos() as u64, r)
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut errors = 0usize;
    let mut values = std::collections::BTreeSet::new();
    for h in handles {
        let (dt, r) = h.join().unwrap_or_else(|_| die("reader thread panicked"));
        match r {
            Ok(v) => {
                samples.push(dt);
                values.insert(v);
            }
            Err(_) => errors += 1,
        }
    }
    println!(
        "{{{},\"errors\":{},\"distinct_values\":{}}}",
        stats_json(&stats(&mut samples)),
        errors,
        values.len()
    );
}

fn read_paths_file(file: &str) -> Vec<CString> {
    let f = std::fs::File::open(file).unwrap_or_else(|e| die(&format!("{file}: {e}")));
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter(|l| !l.is_empty())
        .map(|l| cpath(&l))
        .collect()
}

/// open + read + close of every path in the file, once each.
fn read_all(args: &[String]) {
    let [file] = args else {
        die("read-all PATHS_FILE");
    };
    let paths = read_paths_file(file);
    let mut buf = vec![0u8; 64 * 1024];
    let (mut ok, mut errors, mut bytes) = (0usize, 0usize, 0usize);
    let t0 = Instant::now();
    for p in &paths {
        match open_read_close(p, &mut buf) {
            Ok(n) => {
                ok += 1;
                bytes += n;
            }
            Err(_) => errors += 1,
        }
    }
    println!(
        "{{\"ok\":{ok},\"errors\":{errors},\"bytes\":{bytes},\"elapsed_ns\":{}}}",
        t0.elapsed().as_nanos()
    );
}

/// Every INTERVAL_MS, read every path once (a pass), for DURATION_S.
fn periodic_read(args: &[String]) {
    let [file, interval_ms, duration_s] = args else {
        die("periodic-read PATHS_FILE INTERVAL_MS DURATION_S");
    };
    let paths = read_paths_file(file);
    let interval =
        Duration::from_millis(interval_ms.parse().unwrap_or_else(|_| die("INTERVAL_MS")));
    let duration =
        Duration::from_secs_f64(duration_s.parse().unwrap_or_else(|_| die("DURATION_S")));
    let mut buf = vec![0u8; 64 * 1024];
    let (mut passes, mut reads, mut errors, mut late) = (0u64, 0u64, 0u64, 0u64);
    let mut pass_ns = Vec::new();
    let start = Instant::now();
    let mut next = start;
    while start.elapsed() < duration {
        let t0 = Instant::now();
        for p in &paths {
            match open_read_close(p, &mut buf) {
                Ok(_) => reads += 1,
                Err(_) => errors += 1,
            }
        }
        let dt = t0.elapsed();
        pass_ns.push(dt.as_nanos() as u64);
        passes += 1;
        if dt > interval {
            late += 1;
        }
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    println!(
        "{{\"passes\":{passes},\"reads\":{reads},\"errors\":{errors},\"late_passes\":{late},\"elapsed_ns\":{},\"pass\":{{{}}}}}",
        start.elapsed().as_nanos(),
        stats_json(&stats(&mut pass_ns))
    );
}

fn stop_when_stdin_closes(stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        stop.store(true, Ordering::SeqCst);
    });
}

/// Read PATH every INTERVAL_MS; print `{"t_ns": CLOCK_MONOTONIC, "value": ...}` for the first
/// value and for every change, until stdin is closed.
fn watch(args: &[String]) {
    let [path, interval_ms] = args else {
        die("watch PATH INTERVAL_MS");
    };
    let interval =
        Duration::from_millis(interval_ms.parse().unwrap_or_else(|_| die("INTERVAL_MS")));
    let c = cpath(path);
    let stop = Arc::new(AtomicBool::new(false));
    stop_when_stdin_closes(stop.clone());
    let mut buf = vec![0u8; 64 * 1024];
    let mut last: Option<Vec<u8>> = None;
    let mut reads = 0u64;
    let mut errors = 0u64;
    let out = std::io::stdout();
    while !stop.load(Ordering::SeqCst) {
        let r = read_value(&c, &mut buf);
        let t = now_ns();
        reads += 1;
        match r {
            Ok(v) => {
                if last.as_ref() != Some(&v) {
                    let mut o = out.lock();
                    let _ = writeln!(
                        o,
                        "{{\"t_ns\":{t},\"value\":{}}}",
                        json_str(&String::from_utf8_lossy(&v))
                    );
                    let _ = o.flush();
                    last = Some(v);
                }
            }
            Err(_) => errors += 1,
        }
        std::thread::sleep(interval);
    }
    let mut o = out.lock();
    let _ = writeln!(o, "{{\"done\":true,\"reads\":{reads},\"errors\":{errors}}}");
}

/// One GET per URL over one warm keep-alive connection (after `--warmup` GETs of the first URL),
/// with `Authorization: Bearer $BENCH_TOKEN`, trusting the CA in `--ca`.
fn https_get(args: &[String]) {
    let mut ca = None;
    let mut warmup = 5usize;
    let mut urls = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ca" => ca = it.next().cloned(),
            "--warmup" => {
                warmup = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| die("--warmup"))
            }
            u => urls.push(u.to_string()),
        }
    }
    let ca = ca.unwrap_or_else(|| die("https-get needs --ca PEM"));
    if urls.is_empty() {
        die("https-get needs a URL");
    }
    let token = std::env::var("BENCH_TOKEN").unwrap_or_else(|_| die("BENCH_TOKEN is not set"));
    let pem = std::fs::read(&ca).unwrap_or_else(|e| die(&format!("{ca}: {e}")));
    let certs =
        reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_else(|e| die(&format!("{ca}: {e}")));
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_merge(certs)
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| die(&format!("HTTP client: {e}")));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&format!("runtime: {e}")));
    rt.block_on(async move {
        let get = |url: String| {
            let client = &client;
            let token = &token;
            async move {
                let t0 = Instant::now();
                let resp = client
                    .get(&url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap_or_else(|e| die(&format!("GET {url}: {e}")));
                let status = resp.status();
                let body = resp
                    .bytes()
                    .await
                    .unwrap_or_else(|e| die(&format!("GET {url}: {e}")));
                let dt = t0.elapsed().as_nanos() as u64;
                if !status.is_success() {
                    die(&format!(
                        "GET {url}: {status}: {}",
                        String::from_utf8_lossy(&body)
                    ));
                }
                dt
            }
        };
        for _ in 0..warmup {
            get(urls[0].clone()).await;
        }
        let mut samples = Vec::new();
        for u in &urls {
            samples.push(get(u.clone()).await);
        }
        println!("{{{}}}", stats_json(&stats(&mut samples)));
    });
}
