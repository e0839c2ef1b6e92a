//! What `/healthz` and `/readyz` answer.
//!
//! **Does the mount answer?** The only honest test is a request through the kernel: a
//! `statfs(2)` of the mountpoint, which FUSE always forwards (it is never cached) and which the
//! adapter answers on the session thread without touching the vault. The process that serves
//! the mount calls into it here, which is safe only because of where the call is made: on a
//! thread of its own, never a FUSE session thread (which would wait for itself) nor a tokio
//! worker (whose tasks answer requests). The HTTP handler waits for that thread with a timeout,
//! and while a probe is unanswered no second one is started, so a stuck mount costs one parked
//! thread, not one per probe. Probes arriving together (a kubelet asks liveness and readiness at
//! once) share one statfs.
//!
//! **Is it ready?** Mounted, and the vault answered recently or the last answer is younger
//! than `--max-stale` (so cached values are still served): see [`readiness`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::VaultHealth;

/// How long a probe of the mount may take before the mount counts as not answering.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one probe's answer is shared with the probes that arrive after it.
const SHARED_FOR: Duration = Duration::from_millis(500);
/// `FUSE_SUPER_MAGIC`: what statfs reports for a FUSE mount (anything else: not mounted).
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// A probe's answer and when it came.
type Probed = (Instant, Result<(), String>);

#[derive(Clone)]
pub(crate) struct Health {
    mountpoint: PathBuf,
    max_stale: Duration,
    /// A probe thread is waiting for the mount.
    probing: Arc<AtomicBool>,
    /// The last probe's answer, and when it came; held while a probe runs.
    last: Arc<tokio::sync::Mutex<Option<Probed>>>,
    /// This worker is handing the mount over: its own probes would wait for its successor.
    stopping: Arc<AtomicBool>,
    /// An idle predecessor (`--after-handoff wait`) whose successor serves the mount from
    /// another network namespace: alive, never ready.
    handed_over: bool,
}

impl Health {
    pub(crate) fn new(mountpoint: PathBuf, max_stale: Duration) -> Health {
        Health {
            mountpoint,
            max_stale,
            probing: Arc::new(AtomicBool::new(false)),
            last: Arc::new(tokio::sync::Mutex::new(None)),
            stopping: Arc::new(AtomicBool::new(false)),
            handed_over: false,
        }
    }

    /// The answers of a kvfs that handed its mount over and waits for SIGTERM: `/healthz` 200
    /// (the process is fine; restarting it would only take the mount back from its successor),
    /// `/readyz` 503 (it serves nothing).
    pub(crate) fn handed_over() -> Health {
        Health {
            handed_over: true,
            ..Health::new(PathBuf::new(), Duration::ZERO)
        }
    }

    /// From now on every probe fails at once: this worker no longer serves the mount (its
    /// session threads are parking), so a statfs would wait for the successor.
    pub(crate) fn stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// `Ok` when a statfs of the mountpoint (looked up by its path, in this process's mount
    /// namespace) is answered by a FUSE filesystem in time; else the reason in one line.
    pub(crate) async fn mount_answers(&self) -> Result<(), String> {
        const GOING: &str = "this kvfs worker is handing the mount over";
        if self.handed_over {
            return Ok(());
        }
        if self.stopping.load(Ordering::Acquire) {
            return Err(GOING.into());
        }
        let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT;
        let Ok(mut last) = tokio::time::timeout_at(deadline, self.last.lock()).await else {
            return Err(format!(
                "the mount did not answer a statfs within {PROBE_TIMEOUT:?}"
            ));
        };
        if let Some((at, result)) = &*last
            && at.elapsed() < SHARED_FOR
        {
            return result.clone();
        }
        let result = tokio::select! {
            result = self.probe(deadline) => result,
            _ = async {
                while !self.stopping.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            } => Err(GOING.into()),
        };
        *last = Some((Instant::now(), result.clone()));
        result
    }

    async fn probe(&self, deadline: tokio::time::Instant) -> Result<(), String> {
        if self.probing.swap(true, Ordering::AcqRel) {
            return Err("an earlier statfs of the mount is still unanswered".into());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let path = self.mountpoint.clone();
        let probing = self.probing.clone();
        let spawned = std::thread::Builder::new()
            .name("kvfs-health".into())
            .spawn(move || {
                let result = nix::sys::statfs::statfs(&path);
                probing.store(false, Ordering::Release);
                // `f_type`'s width differs between targets (i64 on x86_64).
                #[allow(clippy::unnecessary_cast)]
                let _ = tx.send(result.map(|s| s.filesystem_type().0 as i64));
            });
        if let Err(e) = spawned {
            self.probing.store(false, Ordering::Release);
            return Err(format!("cannot start a probe: {e}"));
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(FUSE_SUPER_MAGIC))) => Ok(()),
            Ok(Ok(Ok(_))) => Err("the mountpoint is not a FUSE mount".into()),
            Ok(Ok(Err(e))) => Err(format!("statfs of the mount failed: {e}")),
            Ok(Err(_)) => Err("the probe of the mount ended without an answer".into()),
            Err(_) => Err(format!(
                "the mount did not answer a statfs within {PROBE_TIMEOUT:?}"
            )),
        }
    }

    /// `Ok` when the mount answers and the vault is usable (see [`readiness`]).
    pub(crate) async fn ready(&self) -> Result<(), String> {
        if self.handed_over {
            return Err(
                "this kvfs handed the mount over to a successor and waits for SIGTERM".into(),
            );
        }
        self.mount_answers().await?;
        readiness(super::vault_health(), self.max_stale)
    }
}

/// Ready unless the vault has been failing (no answer, 5xx, throttled, no token) since its last
/// answer and that answer is older than `max_stale`: cached values are then too old to be
/// served, and reads fail. A worker that has not asked the vault anything yet is ready.
pub(crate) fn readiness(vault: VaultHealth, max_stale: Duration) -> Result<(), String> {
    let secs = |d: Duration| format!("{:.0}s", d.as_secs_f64());
    match (vault.since_ok, vault.since_failure) {
        (_, None) => Ok(()),
        (Some(ok), Some(failed)) if ok <= failed => Ok(()),
        (Some(ok), Some(_)) if ok <= max_stale => Ok(()),
        (Some(ok), Some(_)) => Err(format!(
            "the vault (or its token endpoint) is failing and its last answer was {} ago, past --max-stale ({})",
            secs(ok),
            secs(max_stale)
        )),
        (None, Some(_)) => Err("the vault has not answered since this worker started".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ok: Option<u64>, failed: Option<u64>) -> VaultHealth {
        VaultHealth {
            since_ok: ok.map(Duration::from_secs),
            since_failure: failed.map(Duration::from_secs),
        }
    }

    #[test]
    fn ready_until_an_outage_outlives_max_stale() {
        let max = Duration::from_secs(60);
        assert!(readiness(at(None, None), max).is_ok());
        assert!(readiness(at(Some(5), None), max).is_ok());
        assert!(readiness(at(Some(5), Some(10)), max).is_ok());
        assert!(readiness(at(Some(50), Some(1)), max).is_ok());
        let late = readiness(at(Some(61), Some(1)), max).unwrap_err();
        assert!(late.contains("past --max-stale (60s)"), "{late}");
        assert!(readiness(at(None, Some(1)), max).is_err());
    }

    #[tokio::test]
    async fn a_directory_that_is_not_a_mount_is_not_healthy() {
        let health = Health::new(std::env::temp_dir(), Duration::from_secs(1));
        let e = health.mount_answers().await.unwrap_err();
        assert!(e.contains("not a FUSE mount"), "{e}");
    }
}
