//! What a worker counts, and its Prometheus text (doc/METRICS.md lists every series).
//!
//! Recording is a relaxed atomic add into fixed arrays indexed by small enums: no lock, no
//! allocation, no map lookup on the FUSE request path or in the vault client. Every label value
//! comes from a closed set ([`FuseOp`], [`errno_name`], [`VaultOp`], [`status_index`]), so no
//! object name, version, path or value can ever become a label.
//!
//! The counters live in one process-wide static (`RECORDER`) rather than in a handle passed
//! down: the points that record (FUSE adapter, vault transport, token cache) sit in layers that
//! know nothing of each other, a worker serves exactly one mount, and atomics nobody scrapes cost
//! nothing. What already has counters of its own (the cache) is read at scrape time through
//! [`Sources`], handed to the HTTP server by the worker.
//!
//! Encoding goes through the official `prometheus-client` crate: a `Collector` (`scrape.rs`) walks
//! the arrays on each scrape and emits only the label sets that have been seen, so an idle mount
//! exposes a few dozen lines, not every operation times every errno.

pub(crate) mod health;
pub(crate) mod http;
mod scrape;

pub(crate) use scrape::{Sources, registry, render};

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::NoLabelSet;

/// Latency bucket bounds, in seconds: 100 µs (a warm answer) to 10 s (the vault client's
/// per-attempt limit), roughly ×2.5 apart.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0,
];

/// A histogram of durations in plain atomics (prometheus-client's own takes a lock per
/// observation). Counts are per bucket, not cumulative; the encoder sums them.
pub(crate) struct AtomicHistogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    pub(crate) const fn new() -> Self {
        AtomicHistogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, d: Duration) {
        let seconds = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        // Read the buckets first and derive the count from them, so that a scrape racing an
        // observation never shows a count its buckets do not add up to.
        let mut buckets = [(0.0, 0u64); BUCKETS.len() + 1];
        for (i, slot) in buckets.iter_mut().enumerate() {
            let bound = BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            *slot = (bound, self.buckets[i].load(Ordering::Relaxed));
        }
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self::new()
    }
}

/// Declares a closed enum of label values with its `as_str` and a list of all values.
macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum $name { $($variant,)* }
        impl $name {
            pub(crate) const ALL: &'static [$name] = &[$($name::$variant,)*];
            pub(crate) const COUNT: usize = Self::ALL.len();
            pub(crate) fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }
        }
    };
}

label_enum!(
    /// The FUSE operations the adapter (src/fuse.rs) handles.
    FuseOp {
        Lookup => "lookup",
        Forget => "forget",
        Getattr => "getattr",
        Setattr => "setattr",
        Statfs => "statfs",
        Open => "open",
        Read => "read",
        Write => "write",
        Flush => "flush",
        Release => "release",
        Fsync => "fsync",
        Opendir => "opendir",
        Readdir => "readdir",
        Releasedir => "releasedir",
        Fsyncdir => "fsyncdir",
        Getxattr => "getxattr",
        Listxattr => "listxattr",
        Setxattr => "setxattr",
        Removexattr => "removexattr",
        Ioctl => "ioctl",
        Poll => "poll",
        Lseek => "lseek",
        Mknod => "mknod",
        Mkdir => "mkdir",
        Unlink => "unlink",
        Rmdir => "rmdir",
        Symlink => "symlink",
        Rename => "rename",
        Link => "link",
        Create => "create",
    }
);

/// The errnos kvfs answers with, by name; anything else is `other`.
const ERRNOS: &[(i32, &str)] = &[
    (libc::ENOENT, "ENOENT"),
    (libc::EIO, "EIO"),
    (libc::EACCES, "EACCES"),
    (libc::EPERM, "EPERM"),
    (libc::EROFS, "EROFS"),
    (libc::ENOSYS, "ENOSYS"),
    (libc::ENOTTY, "ENOTTY"),
    (libc::ENODATA, "ENODATA"),
    (libc::ERANGE, "ERANGE"),
    (libc::ENAMETOOLONG, "ENAMETOOLONG"),
    (libc::ENOTDIR, "ENOTDIR"),
    (libc::EISDIR, "EISDIR"),
    (libc::EOPNOTSUPP, "EOPNOTSUPP"),
    (libc::EBADF, "EBADF"),
    (libc::EINVAL, "EINVAL"),
    (libc::EAGAIN, "EAGAIN"),
    (libc::ETIMEDOUT, "ETIMEDOUT"),
];
const ERRNO_OTHER: usize = ERRNOS.len();

fn errno_index(errno: i32) -> usize {
    ERRNOS
        .iter()
        .position(|&(n, _)| n == errno)
        .unwrap_or(ERRNO_OTHER)
}

/// The label value of an errno: its name, or `other`.
pub(crate) fn errno_name(errno: i32) -> &'static str {
    ERRNOS.get(errno_index(errno)).map_or("other", |&(_, s)| s)
}

label_enum!(
    /// What a request to the vault was for, from its method and path (never its name or
    /// version).
    VaultOp {
        GetSecret => "get_secret",
        GetKey => "get_key",
        GetCertificate => "get_certificate",
        ListSecrets => "list_secrets",
        ListKeys => "list_keys",
        ListCertificates => "list_certificates",
        ListSecretVersions => "list_secret_versions",
        ListKeyVersions => "list_key_versions",
        ListCertificateVersions => "list_certificate_versions",
        Other => "other",
    }
);

impl VaultOp {
    /// Key Vault's REST paths: `/{collection}`, `/{collection}/{name}[/{version}]`,
    /// `/{collection}/{name}/versions`. Only the shape is looked at.
    pub(crate) fn classify(method: &str, path: &str) -> VaultOp {
        if method != "GET" {
            return VaultOp::Other;
        }
        let mut parts = path.trim_matches('/').split('/');
        let (get, list, versions) = match parts.next() {
            Some("secrets") => (
                VaultOp::GetSecret,
                VaultOp::ListSecrets,
                VaultOp::ListSecretVersions,
            ),
            Some("keys") => (VaultOp::GetKey, VaultOp::ListKeys, VaultOp::ListKeyVersions),
            Some("certificates") => (
                VaultOp::GetCertificate,
                VaultOp::ListCertificates,
                VaultOp::ListCertificateVersions,
            ),
            _ => return VaultOp::Other,
        };
        // Without collecting: this runs on every request to the vault.
        match (parts.next(), parts.next(), parts.next()) {
            (None, _, _) => list,
            (Some(_), Some("versions"), None) => versions,
            (Some(_), _, None) => get,
            _ => VaultOp::Other,
        }
    }
}

/// Status labels: the codes Key Vault is documented to answer, then classes for the rest, then
/// `error` for a request that got no HTTP answer (connection, TLS, timeout).
const STATUSES: &[&str] = &[
    "200", "204", "400", "401", "403", "404", "409", "429", "500", "502", "503", "504", "1xx",
    "2xx", "3xx", "4xx", "5xx", "error",
];
const STATUS_ERROR: usize = STATUSES.len() - 1;

/// The codes of [`STATUSES`] that are labelled exactly.
const EXACT: [u16; 12] = [200, 204, 400, 401, 403, 404, 409, 429, 500, 502, 503, 504];

/// The index in `STATUSES` of an HTTP status (`None`: no answer). No allocation: it runs on
/// every vault request.
pub(crate) fn status_index(status: Option<u16>) -> usize {
    match status {
        None => STATUS_ERROR,
        Some(code) => match EXACT.iter().position(|&c| c == code) {
            Some(i) => i,
            None if (100..600).contains(&code) => EXACT.len() + usize::from(code / 100) - 1,
            None => STATUS_ERROR,
        },
    }
}

#[derive(Default)]
struct FuseCounters {
    requests: AtomicU64,
    errors: [AtomicU64; ERRNOS.len() + 1],
    latency: AtomicHistogram,
}

#[derive(Default)]
struct VaultCounters {
    by_status: [AtomicU64; STATUSES.len()],
    latency: AtomicHistogram,
}

/// Every counter a worker records. One static instance, `RECORDER` (see the module's docs).
pub(crate) struct Recorder {
    fuse: [FuseCounters; FuseOp::COUNT],
    vault: [VaultCounters; VaultOp::COUNT],
    token_ok: AtomicU64,
    token_failed: AtomicU64,
    open_handles: AtomicI64,
    /// Milliseconds since [`EPOCH`] of the last vault answer that was an answer (2xx, 404),
    /// and of the last failure (no answer, 5xx, 429): what `/readyz` judges the vault by.
    vault_ok_at: AtomicU64,
    vault_failed_at: AtomicU64,
}

static RECORDER: Recorder = Recorder {
    fuse: [const {
        FuseCounters {
            requests: AtomicU64::new(0),
            errors: [const { AtomicU64::new(0) }; ERRNOS.len() + 1],
            latency: AtomicHistogram::new(),
        }
    }; FuseOp::COUNT],
    vault: [const {
        VaultCounters {
            by_status: [const { AtomicU64::new(0) }; STATUSES.len()],
            latency: AtomicHistogram::new(),
        }
    }; VaultOp::COUNT],
    token_ok: AtomicU64::new(0),
    token_failed: AtomicU64::new(0),
    open_handles: AtomicI64::new(0),
    vault_ok_at: AtomicU64::new(0),
    vault_failed_at: AtomicU64::new(0),
};

static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Milliseconds since the process's first use of the clock here, plus one (zero means never).
fn now_ms() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// One FUSE request being answered: counted when started, its latency and outcome when dropped
/// (success, unless [`FuseRequest::fail`] said otherwise).
pub(crate) struct FuseRequest {
    op: FuseOp,
    started: Instant,
    errno: i32,
}

impl FuseRequest {
    /// The request failed with `errno`.
    pub(crate) fn fail(mut self, errno: i32) {
        self.errno = errno;
    }
}

impl Drop for FuseRequest {
    fn drop(&mut self) {
        let c = &RECORDER.fuse[self.op as usize];
        c.latency.observe(self.started.elapsed());
        if self.errno != 0 {
            c.errors[errno_index(self.errno)].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Start timing a FUSE request of kind `op`.
pub(crate) fn fuse_request(op: FuseOp) -> FuseRequest {
    RECORDER.fuse[op as usize]
        .requests
        .fetch_add(1, Ordering::Relaxed);
    FuseRequest {
        op,
        started: Instant::now(),
        errno: 0,
    }
}

/// One HTTP request to the vault and its outcome (`None`: no HTTP answer).
pub(crate) fn vault_request(op: VaultOp, status: Option<u16>, took: Duration) {
    let c = &RECORDER.vault[op as usize];
    c.by_status[status_index(status)].fetch_add(1, Ordering::Relaxed);
    c.latency.observe(took);
    // A 4xx other than throttling is the vault answering (a name that is not there, a token it
    // refuses): it is reachable. Authentication trouble shows in its own series.
    let reachable = matches!(status, Some(s) if s < 500 && s != 429);
    let at = if reachable {
        &RECORDER.vault_ok_at
    } else {
        &RECORDER.vault_failed_at
    };
    at.store(now_ms(), Ordering::Relaxed);
}

/// A token request to the identity provider (not one answered from the token cache). A
/// failure counts against readiness like a vault that does not answer: no read can reach it.
pub(crate) fn token_request(ok: bool) {
    if ok {
        RECORDER.token_ok.fetch_add(1, Ordering::Relaxed);
    } else {
        RECORDER.token_failed.fetch_add(1, Ordering::Relaxed);
        RECORDER.vault_failed_at.store(now_ms(), Ordering::Relaxed);
    }
}

/// A file or directory handle taken (`+1`) or released (`-1`) by the filesystem core, which
/// counts only the handles it holds (see `FsCore::release`).
pub(crate) fn handles(delta: i64) {
    RECORDER.open_handles.fetch_add(delta, Ordering::Relaxed);
}

/// How the vault has been answering, for `/readyz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct VaultHealth {
    /// Since the last answer, if any.
    pub since_ok: Option<Duration>,
    /// Since the last failure, if any.
    pub since_failure: Option<Duration>,
}

pub(crate) fn vault_health() -> VaultHealth {
    let now = now_ms();
    let since = |a: &AtomicU64| match a.load(Ordering::Relaxed) {
        0 => None,
        t => Some(Duration::from_millis(now.saturating_sub(t))),
    };
    VaultHealth {
        since_ok: since(&RECORDER.vault_ok_at),
        since_failure: since(&RECORDER.vault_failed_at),
    }
}

/// Why a worker came to serve, counted over the life of the mount (the supervisor keeps the
/// counts and hands them to each worker, and a handoff passes them on), so they survive the
/// worker restarts they count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct WorkerStarts {
    /// Workers started on the mount after one died (crash, kill, OOM).
    pub replacements: u64,
    /// Times a new `kvfs mount` took the live mount over from a running one.
    pub takeovers: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_paths_are_classified_by_shape_only() {
        let c = VaultOp::classify;
        assert_eq!(c("GET", "/secrets"), VaultOp::ListSecrets);
        assert_eq!(c("GET", "/secrets/"), VaultOp::ListSecrets);
        assert_eq!(c("GET", "/secrets/db"), VaultOp::GetSecret);
        assert_eq!(c("GET", "/secrets/db/0123abcd"), VaultOp::GetSecret);
        assert_eq!(
            c("GET", "/secrets/db/versions"),
            VaultOp::ListSecretVersions
        );
        assert_eq!(c("GET", "/keys/k"), VaultOp::GetKey);
        assert_eq!(c("GET", "/certificates"), VaultOp::ListCertificates);
        assert_eq!(
            c("GET", "/certificates/c/versions"),
            VaultOp::ListCertificateVersions
        );
        assert_eq!(c("GET", "/secrets/a/b/c"), VaultOp::Other);
        assert_eq!(c("POST", "/secrets/db"), VaultOp::Other);
        assert_eq!(c("GET", "/"), VaultOp::Other);
    }

    #[test]
    fn statuses_and_errnos_map_to_closed_sets() {
        assert_eq!(STATUSES[status_index(Some(200))], "200");
        assert_eq!(STATUSES[status_index(Some(418))], "4xx");
        assert_eq!(STATUSES[status_index(Some(307))], "3xx");
        assert_eq!(STATUSES[status_index(Some(999))], "error");
        assert_eq!(STATUSES[status_index(None)], "error");
        assert_eq!(errno_name(libc::ENOENT), "ENOENT");
        assert_eq!(errno_name(12345), "other");
    }

    #[test]
    fn histograms_put_each_duration_in_one_bucket() {
        let h = AtomicHistogram::new();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.count(), 3);
        assert_eq!(h.buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(h.buckets[BUCKETS.len()].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_scrape_is_prometheus_text_with_recorded_series() {
        drop(fuse_request(FuseOp::Lookup));
        fuse_request(FuseOp::Lookup).fail(libc::ENOENT);
        vault_request(VaultOp::GetSecret, Some(200), Duration::from_millis(2));
        let text = render(&registry(Sources {
            cache: None,
            starts: WorkerStarts::default(),
        }));
        assert!(text.contains("kvfs_build_info{version=\""), "{text}");
        assert!(
            text.contains("# TYPE kvfs_fuse_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains("kvfs_fuse_errors_total{op=\"lookup\",errno=\"ENOENT\"}"),
            "{text}"
        );
        assert!(
            text.contains("kvfs_vault_requests_total{op=\"get_secret\",status=\"200\"}"),
            "{text}"
        );
        assert!(
            text.contains("kvfs_fuse_request_duration_seconds_bucket{op=\"lookup\",le=\"+Inf\"}"),
            "{text}"
        );
    }
}
