//! The collector behind `/metrics`: walks the recorder's arrays (and the cache's own counters)
//! at each scrape and encodes what has been seen, through `prometheus-client`.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::registry::Registry;

use super::{ERRNOS, FuseOp, RECORDER, STATUSES, VaultOp, WorkerStarts};
use crate::fs::cache::{Cache, CacheStats};

/// What a scrape reads besides the recorder: the worker's cache and how it came to serve.
pub(crate) struct Sources {
    pub cache: Option<Cache>,
    pub starts: WorkerStarts,
}

/// The collector behind `/metrics`.
struct Scrape {
    sources: Sources,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

fn counter(encoder: &mut prometheus_client::encoding::MetricEncoder, v: u64) -> std::fmt::Result {
    encoder.encode_counter::<NoLabelSet, u64, f64>(&v, None::<&Exemplar<NoLabelSet, f64>>)
}

/// `name` (a counter without its `_total`) with one sample per label set.
fn counters<'a>(
    out: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'a str, &'a str)>, u64)>,
) -> std::fmt::Result {
    let mut metric = out.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        counter(&mut metric.encode_family(&labels)?, v)?;
    }
    Ok(())
}

fn gauge(out: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    out.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

impl Collector for Scrape {
    fn encode(&self, mut out: DescriptorEncoder) -> std::fmt::Result {
        let r = &RECORDER;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Build info: the version only.
        let version = [("version", env!("CARGO_PKG_VERSION"))];
        out.encode_descriptor(
            "kvfs_build_info",
            "The running kvfs build (always 1).",
            None,
            MetricType::Gauge,
        )?
        .encode_family(&version)?
        .encode_gauge(&1i64)?;

        let ops = || FuseOp::ALL.iter().map(|&op| (op, &r.fuse[op as usize]));
        counters(
            &mut out,
            "kvfs_fuse_requests",
            "FUSE requests received, by operation.",
            ops()
                .filter(|(_, c)| load(&c.requests) > 0)
                .map(|(op, c)| (vec![("op", op.as_str())], load(&c.requests))),
        )?;
        let mut errors = Vec::new();
        for (op, c) in ops() {
            for (i, n) in c.errors.iter().enumerate() {
                let n = load(n);
                if n > 0 {
                    let name = ERRNOS.get(i).map_or("other", |&(_, s)| s);
                    errors.push((vec![("op", op.as_str()), ("errno", name)], n));
                }
            }
        }
        counters(
            &mut out,
            "kvfs_fuse_errors",
            "FUSE requests answered with an error, by operation and errno.",
            errors,
        )?;
        {
            let mut metric = out.encode_descriptor(
                "kvfs_fuse_request_duration_seconds",
                "Time from receiving a FUSE request to answering it, by operation.",
                None,
                MetricType::Histogram,
            )?;
            for (op, c) in ops().filter(|(_, c)| c.latency.count() > 0) {
                let labels = [("op", op.as_str())];
                c.latency.encode(metric.encode_family(&labels)?)?;
            }
        }

        let vops = || VaultOp::ALL.iter().map(|&op| (op, &r.vault[op as usize]));
        let mut requests = Vec::new();
        for (op, c) in vops() {
            for (i, n) in c.by_status.iter().enumerate() {
                let n = load(n);
                if n > 0 {
                    requests.push((vec![("op", op.as_str()), ("status", STATUSES[i])], n));
                }
            }
        }
        counters(
            &mut out,
            "kvfs_vault_requests",
            "HTTP requests to the vault (each attempt), by operation and status (error: no answer).",
            requests,
        )?;
        {
            let mut metric = out.encode_descriptor(
                "kvfs_vault_request_duration_seconds",
                "Time from sending an HTTP request to the vault to its answer's headers.",
                None,
                MetricType::Histogram,
            )?;
            for (op, c) in vops().filter(|(_, c)| c.latency.count() > 0) {
                let labels = [("op", op.as_str())];
                c.latency.encode(metric.encode_family(&labels)?)?;
            }
        }

        counters(
            &mut out,
            "kvfs_token_requests",
            "Access token requests to the identity provider, by result.",
            [
                (vec![("result", "ok")], load(&r.token_ok)),
                (vec![("result", "error")], load(&r.token_failed)),
            ],
        )?;
        gauge(
            &mut out,
            "kvfs_open_handles",
            "File and directory handles this worker gave out and the kernel holds.",
            r.open_handles.load(Ordering::Relaxed).max(0),
        )?;
        let starts = self.sources.starts;
        counters(
            &mut out,
            "kvfs_worker_starts",
            "Workers started on a live mount over the life of the mount, by kind (replacement: after a worker died; takeover: a new kvfs took the mount over).",
            [
                (vec![("kind", "replacement")], starts.replacements),
                (vec![("kind", "takeover")], starts.takeovers),
            ],
        )?;
        if let Some(cache) = &self.sources.cache {
            encode_cache(&mut out, &cache.stats())?;
        }
        Ok(())
    }
}

fn encode_cache(out: &mut DescriptorEncoder, s: &CacheStats) -> std::fmt::Result {
    let plain: [(&str, &str, u64); 7] = [
        (
            "kvfs_cache_hits",
            "Reads answered from a fresh cache entry.",
            s.hits,
        ),
        (
            "kvfs_cache_misses",
            "Reads that needed a vault call (including background refreshes).",
            s.misses,
        ),
        (
            "kvfs_cache_coalesced",
            "Reads that waited for a vault call another read had started.",
            s.coalesced,
        ),
        (
            "kvfs_cache_stale_served",
            "Reads answered with the last good value past its TTL because the vault was failing.",
            s.stale_served,
        ),
        (
            "kvfs_cache_revalidated",
            "Entries made fresh again by a listing that showed them unchanged, without a GET.",
            s.revalidated,
        ),
        (
            "kvfs_cache_list_revalidations",
            "Listings applied to the cached entries of their collection.",
            s.list_revalidations,
        ),
        (
            "kvfs_cache_background_refreshes",
            "Vault calls made ahead of expiry by the background refresher.",
            s.background_fetches,
        ),
    ];
    for (name, help, v) in plain {
        counters(out, name, help, [(Vec::new(), v)])?;
    }
    gauge(
        out,
        "kvfs_cache_objects",
        "Entries held in the cache (values, listings, and remembered absences).",
        i64::try_from(s.entries).unwrap_or(i64::MAX),
    )?;
    gauge(
        out,
        "kvfs_cache_bytes",
        "Weighted size of the cache: value bytes plus a fixed overhead per entry.",
        i64::try_from(s.bytes).unwrap_or(i64::MAX),
    )
}

/// The body of `/metrics` (Prometheus text format 0.0.4).
pub(crate) fn render(registry: &Registry) -> String {
    let mut text = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail; a collector error would be ours, and the body says so.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, registry) {
        text = format!("# encoding failed: {e}\n");
    }
    text
}

/// The registry a worker serves: every series above, read at each scrape.
pub(crate) fn registry(sources: Sources) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape { sources }));
    registry
}
