//! Where kvfs's log lines go, and how they get there without ever holding up a request.
//!
//! - Lines are handed to a background thread through a bounded queue ([`tracing_appender`]'s
//!   lossy non-blocking writer). A FUSE request that logs never waits on its sink: when stderr is
//!   a pipe nobody drains, or a disk is slow, the queue fills and further lines are dropped and
//!   counted; once the sink takes lines again, one line says how many were lost.
//! - A failure that can repeat on every request goes through [`rate_limited`] (or a
//!   [`RateLimiter`] of its owner's, keyed by a fixed kind or by what failed): a few lines a
//!   minute per key, the next one carrying the number of repeats left out.
//! - `--log-file` is created 0600 (it names the vault's objects and the identity's tenant), and
//!   colour codes go only to a terminal.
//! - `--log-format json` writes one JSON object per line instead of text ([`json`]).
//! - [`flush`] before the process ends: lines still queued are written (bounded by a second or
//!   so, so a stuck sink cannot hold up an exit).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

#[cfg(test)]
pub(crate) mod capture;
pub(crate) mod json;
pub(crate) use json::LineContext;

/// How lines are written: text for people, JSON for log pipelines (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Lines queued for the sink before new ones are dropped. Enough for any burst a healthy sink
/// falls behind on; small enough that a dead sink costs at most a few MiB.
const QUEUE_LINES: usize = 8192;

/// How many lines of one kind [`rate_limited`] lets through per [`WINDOW`].
pub(crate) const BURST: u32 = 3;
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// The background writer's guard: dropping it writes what is queued and stops the thread.
static GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Install a text logger on stderr (or `file`); see [`init_with`].
pub(crate) fn init(file: Option<&Path>) -> Result<(), String> {
    init_with(file, LogFormat::Text, LineContext::default())
}

/// Install the process's logger: the filter from `KVFS_LOG` (default `kvfs=info,warn`), lines to
/// `file` if given (created 0600), else to stderr, in `format`; JSON lines carry `context`.
pub(crate) fn init_with(
    file: Option<&Path>,
    format: LogFormat,
    context: LineContext,
) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KVFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("kvfs=info,warn"));
    let (sink, ansi): (Box<dyn Write + Send>, bool) = match file {
        Some(path) => (Box::new(open_log_file(path)?), false),
        None => (Box::new(std::io::stderr()), std::io::stderr().is_terminal()),
    };
    let json = (format == LogFormat::Json).then(|| context.clone());
    let writer = spawn_writer(sink, json)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .event_format(json::JsonLines { context })
            .init(),
    }
    Ok(())
}

/// Write out what is queued and stop the background writer; lines logged afterwards are lost.
/// Call before the process exits (returning from `main` does not drop statics).
pub fn flush() {
    drop(GUARD.lock().take());
}

/// Open (creating it 0600 if new) the log file for appending. The mode is given to `open(2)`
/// itself, so the file never exists with a wider one, not even for a moment; an existing file
/// keeps the mode its owner gave it.
fn open_log_file(path: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot open log file {}: {e}", path.display()))
}

/// Start the background writer with every signal blocked, so that it never receives one: the
/// supervisor blocks its stop signals and reads them from a signalfd, and a thread that left
/// them unblocked would take a SIGTERM with its default action and end the process mid-step.
fn spawn_writer(
    sink: Box<dyn Write + Send>,
    json: Option<LineContext>,
) -> Result<NonBlocking, String> {
    let all = nix::sys::signal::SigSet::all();
    let mut previous = nix::sys::signal::SigSet::empty();
    nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&all),
        Some(&mut previous),
    )
    .map_err(|e| format!("cannot block signals for the log writer: {e}"))?;
    let dropped = Arc::new(OnceLock::new());
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("kvfs-log")
        .finish(ReportingDrops {
            sink,
            dropped: dropped.clone(),
            reported: 0,
            json,
        });
    let _ = dropped.set(writer.error_counter());
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&previous),
        None,
    );
    *GUARD.lock() = Some(guard);
    Ok(writer)
}

/// The sink as the background thread sees it: before the first line it writes after some were
/// dropped, one line saying how many. Written by that thread, so the report itself is never
/// dropped and never holds up a request.
struct ReportingDrops {
    sink: Box<dyn Write + Send>,
    /// The queue's drop counter (set once the queue exists, which is after this sink).
    dropped: Arc<OnceLock<ErrorCounter>>,
    reported: usize,
    /// `Some` with `--log-format json`: the report is a JSON line too.
    json: Option<LineContext>,
}

impl ReportingDrops {
    /// The report line for drops not yet reported, if any (counted as reported from now on).
    fn unreported(&mut self) -> Option<String> {
        let dropped = self.dropped.get()?.dropped_lines();
        if dropped <= self.reported {
            return None;
        }
        let lost = dropped - self.reported;
        self.reported = dropped;
        let message = format!("{lost} log lines dropped: the log's reader did not keep up");
        if let Some(context) = &self.json {
            let mut fields = serde_json::Map::new();
            fields.insert("message".into(), message.into());
            fields.insert("dropped_lines".into(), lost.into());
            return Some(json::line(context, "WARN", "kvfs::logging", fields) + "\n");
        }
        let mut line = String::new();
        let _ =
            SystemTime.format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut line));
        line.push_str(&format!("  WARN kvfs::logging: {message}\n"));
        Some(line)
    }
}

impl Write for ReportingDrops {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(report) = self.unreported() {
            self.sink.write_all(report.as_bytes())?;
        }
        self.sink.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sink.flush()
    }
}

/// Whether a line of `kind` may be logged now, process-wide; see [`RateLimiter::allow`].
pub(crate) fn rate_limited(kind: &'static str) -> Option<u64> {
    static GLOBAL: std::sync::OnceLock<RateLimiter> = std::sync::OnceLock::new();
    GLOBAL.get_or_init(RateLimiter::default).allow(kind)
}

/// Log a line through a rate limit: `log_limited!(limiter_or_global, "kind", warn, fields..., "msg")`.
/// The first line after some were held back carries `repeats_suppressed = N`.
#[macro_export]
macro_rules! log_limited {
    (global, $kind:expr, $level:ident, $($rest:tt)+) => {
        if let Some(suppressed) = $crate::logging::rate_limited($kind) {
            $crate::log_limited!(@emit suppressed, $level, $($rest)+);
        }
    };
    ($limiter:expr, $kind:expr, $level:ident, $($rest:tt)+) => {
        if let Some(suppressed) = $limiter.allow($kind) {
            $crate::log_limited!(@emit suppressed, $level, $($rest)+);
        }
    };
    (@emit $suppressed:ident, $level:ident, $($rest:tt)+) => {
        if $suppressed == 0 {
            tracing::$level!($($rest)+);
        } else {
            tracing::$level!(repeats_suppressed = $suppressed, $($rest)+);
        }
    };
}

/// At most `burst` lines per key per [`WINDOW`] ([`BURST`] per kind for the [`Default`] one,
/// keyed by a fixed kind). A failure that repeats on every request (a vault refusing every
/// object, a stale handle read in a loop) shows up a few times a minute with a count, instead of
/// burying everything else in the log.
///
/// Keys may also be made at run time (a request's operation and path): the table then holds at
/// most [`MAX_KEYS`] of them. When it is full of keys seen within the window, a new key shares
/// one overflow window with every other such key, so a storm of distinct failures is still
/// bounded in lines and memory, at the price of a count that covers several keys.
pub(crate) struct RateLimiter<K = &'static str> {
    windows: Mutex<Windows<K>>,
    burst: u32,
}

/// Keys a [`RateLimiter`] tracks at once; a few hundred KiB of keys at most.
pub(crate) const MAX_KEYS: usize = 4096;

struct Windows<K> {
    by_key: HashMap<K, Window>,
    /// Shared by the keys that found the table full.
    overflow: Option<Window>,
}

struct Window {
    started: Instant,
    logged: u32,
    /// Held back since the last line that got through.
    suppressed: u64,
}

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            started: now,
            logged: 0,
            suppressed: 0,
        }
    }

    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) >= WINDOW
    }

    fn allow(&mut self, burst: u32, now: Instant) -> Option<u64> {
        if self.expired(now) {
            self.started = now;
            self.logged = 0;
        }
        if self.logged < burst {
            self.logged += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new(BURST)
    }
}

impl<K: std::hash::Hash + Eq> RateLimiter<K> {
    /// At most `burst` lines per key per [`WINDOW`].
    pub(crate) fn new(burst: u32) -> Self {
        RateLimiter {
            windows: Mutex::new(Windows {
                by_key: HashMap::new(),
                overflow: None,
            }),
            burst,
        }
    }

    /// `Some(n)` if a line of `key` may be logged now, `n` being how many were held back since
    /// the last one that was; `None` if this one is to be held back (and counted).
    pub(crate) fn allow(&self, key: K) -> Option<u64> {
        self.allow_at(key, Instant::now())
    }

    fn allow_at(&self, key: K, now: Instant) -> Option<u64> {
        let mut windows = self.windows.lock();
        let Windows { by_key, overflow } = &mut *windows;
        if !by_key.contains_key(&key) && by_key.len() >= MAX_KEYS {
            // Only when full, so the scan is rare: a key whose window has passed holds nothing
            // a line still has to say except a count of repeats, which is forgotten.
            by_key.retain(|_, w| !w.expired(now));
            if by_key.len() >= MAX_KEYS {
                return overflow
                    .get_or_insert_with(|| Window::new(now))
                    .allow(self.burst, now);
            }
        }
        by_key
            .entry(key)
            .or_insert_with(|| Window::new(now))
            .allow(self.burst, now)
    }
}

impl<K> std::fmt::Debug for RateLimiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::fmt::MakeWriter;

    #[test]
    fn a_burst_per_window_then_one_line_with_the_count_held_back() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        let first: Vec<_> = (0..10).map(|_| limiter.allow_at("refused", t0)).collect();
        assert_eq!(&first[..3], &[Some(0), Some(0), Some(0)]);
        assert!(first[3..].iter().all(Option::is_none));
        // Other kinds have their own budget.
        assert_eq!(limiter.allow_at("failing", t0), Some(0));
        // Still within the window: held back.
        assert_eq!(limiter.allow_at("refused", t0 + WINDOW / 2), None);
        // The next window's first line says how many were left out.
        assert_eq!(limiter.allow_at("refused", t0 + WINDOW), Some(8));
        assert_eq!(limiter.allow_at("refused", t0 + WINDOW), Some(0));
    }

    #[test]
    fn run_time_keys_have_a_window_each_and_the_table_stays_bounded() {
        let limiter = RateLimiter::<(&str, String)>::new(1);
        let t0 = Instant::now();
        let key = |path: &str| ("read", path.to_string());
        // The first of each key, then nothing for the rest of the window.
        assert_eq!(limiter.allow_at(key("secrets/a"), t0), Some(0));
        for _ in 0..49 {
            assert_eq!(limiter.allow_at(key("secrets/a"), t0), None);
        }
        assert_eq!(limiter.allow_at(key("secrets/b"), t0), Some(0));
        assert_eq!(limiter.allow_at(key("secrets/a"), t0 + WINDOW), Some(49));

        // Fill the table: a key beyond it shares the overflow window.
        let later = t0 + 2 * WINDOW;
        for i in 0..MAX_KEYS {
            assert_eq!(limiter.allow_at(key(&format!("full/{i}")), later), Some(0));
        }
        assert_eq!(limiter.windows.lock().by_key.len(), MAX_KEYS);
        assert_eq!(limiter.allow_at(key("extra/1"), later), Some(0));
        assert_eq!(limiter.allow_at(key("extra/2"), later), None);
        assert_eq!(limiter.allow_at(key("extra/3"), later), None);
        assert_eq!(limiter.windows.lock().by_key.len(), MAX_KEYS);
        // Once the window has passed, old keys make room for new ones.
        let after = later + WINDOW;
        assert_eq!(limiter.allow_at(key("extra/4"), after), Some(0));
        assert_eq!(limiter.windows.lock().by_key.len(), 1);
        assert_eq!(limiter.allow_at(key("extra/4"), after), None);
    }

    #[test]
    fn the_log_file_is_created_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kvfs.log");
        drop(open_log_file(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    #[test]
    fn drops_are_counted_and_reported_in_one_line_once_the_sink_takes_lines_again() {
        /// A sink that holds the writer thread until the test opens it.
        #[derive(Clone)]
        struct Gated {
            open: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
            out: Arc<std::sync::Mutex<Vec<u8>>>,
        }
        impl Write for Gated {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let (open, changed) = &*self.open;
                let mut is_open = open.lock().unwrap();
                while !*is_open {
                    is_open = changed.wait(is_open).unwrap();
                }
                self.out.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Gated {
            open: Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new())),
            out: Arc::new(std::sync::Mutex::new(Vec::new())),
        };
        let dropped = Arc::new(OnceLock::new());
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(4)
            .finish(ReportingDrops {
                sink: Box::new(sink.clone()),
                dropped: dropped.clone(),
                reported: 0,
                json: None,
            });
        let counter = writer.error_counter();
        let _ = dropped.set(writer.error_counter());
        // The sink is shut: the thread holds one line, four wait, the rest are dropped, and
        // none of this waits.
        for i in 0..100 {
            writer
                .make_writer()
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        let lost = counter.dropped_lines();
        assert!(lost >= 90, "{lost}");
        *sink.open.0.lock().unwrap() = true;
        sink.open.1.notify_all();
        // Once the thread has caught up, a line gets through again.
        let start = Instant::now();
        loop {
            let before = counter.dropped_lines();
            writer.make_writer().write_all(b"after\n").unwrap();
            if counter.dropped_lines() == before {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "never drained");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(guard);
        let out = String::from_utf8(sink.out.lock().unwrap().clone()).unwrap();
        // Every dropped line is in exactly one report.
        let reported: usize = out
            .lines()
            .filter_map(|l| l.split_once("kvfs::logging: "))
            .filter_map(|(_, rest)| rest.split(' ').next()?.parse::<usize>().ok())
            .sum();
        assert_eq!(reported, counter.dropped_lines(), "{out}");
        assert!(out.ends_with("after\n"), "{out}");
    }
}
