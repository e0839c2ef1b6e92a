//! A planned upgrade: a new `kvfs mount` for a mountpoint that a running kvfs serves takes the
//! live connection over through the control socket, instead of stacking a second mount on top.
//!
//! ```text
//! successor                                incumbent (its worker serves throughout)
//!   Hello {version, vault}          ---->  checks the peer (SO_PEERCRED) and the vault
//!                                   <----  Offer {INIT, ...} + /dev/fuse and journal fds
//!   starts a worker, which prepares
//!   (credential, vault client)
//!   Ready                           ---->  stops its worker: no more reads, answers in flight
//!                                   <----  Stopped
//!   its worker serves (resend first)
//!   Done                            ---->  closes its control socket
//!                                   <----  Bye; then exits, or idles until SIGTERM,
//!   listens on the control socket            never unmounting
//! ```
//!
//! Requests that arrive while neither worker reads wait in the kernel's queue: nothing fails.
//! If the successor gives up before `Ready` the incumbent carries on as if nothing happened; if
//! it vanishes after, the incumbent starts a worker of its own again.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signalfd::SignalFd;

use super::messages::{FirstToken, FromWorker, Handoff, ToWorker};
use super::supervisor::{
    Connection, Supervisor, Worker, end_worker, prepare_worker, reap, spawn_worker, wait_worker,
};
use crate::cli::MountSettings;
use crate::ipc::{Channel, Peer, Received};

/// How long each side waits for the other at each step. The successor's worker may probe for a
/// credential (bounded well below this); a stopping worker drains for at most 30 s.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const OFFER_TIMEOUT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(300);
const STOPPED_TIMEOUT: Duration = Duration::from_secs(60);
const DONE_TIMEOUT: Duration = Duration::from_secs(60);
const DRAINED_TIMEOUT: Duration = Duration::from_secs(40);

fn expect(channel: &Channel, timeout: Duration) -> Result<(Handoff, Vec<OwnedFd>), String> {
    match channel.recv::<Handoff>(Some(timeout)) {
        Ok(Received::Message(m, fds)) => Ok((m, fds)),
        Ok(Received::Closed) => Err("the other kvfs went away".into()),
        Ok(Received::TimedOut) => Err(format!("no answer within {timeout:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// What an incumbent offers: the connection, and what is needed to serve it (still without
/// readers of our own).
pub(super) struct Offer {
    incumbent: Channel,
    conn: Connection,
}

/// Only root or our own user may take a mount from us or hand us one: a socket planted where
/// someone else can write is not a kvfs to trust.
fn trusted_peer(channel: &Channel) -> Result<Peer, String> {
    let peer = channel.peer().map_err(|e| e.to_string())?;
    let euid = nix::unistd::geteuid().as_raw();
    if peer.uid != 0 && peer.uid != euid {
        return Err(format!(
            "uid {} (pid {}) is neither root nor us",
            peer.uid, peer.pid
        ));
    }
    Ok(peer)
}

/// Tell the incumbent we are not taking over after all.
fn abort(incumbent: &Channel, reason: &str) {
    let reason = reason.to_string();
    let _ = incumbent.send(&Handoff::Abort { reason }, &[]);
}

fn refusal(settings: &MountSettings, e: impl std::fmt::Display) -> String {
    format!(
        "cannot take {} over from the kvfs serving it: {e}",
        settings.mountpoint.display()
    )
}

/// The successor's first step: ask the kvfs listening on `incumbent` for its mount. `None` when
/// it went away before offering anything (it was stopping), so a fresh mount is in order.
pub(super) fn ask(
    settings: &MountSettings,
    socket_path: &std::path::Path,
    incumbent: Channel,
) -> Result<Option<Offer>, String> {
    trusted_peer(&incumbent)
        .map_err(|e| refusal(settings, format!("{}: {e}", socket_path.display())))?;
    let hello = Handoff::Hello {
        version: env!("CARGO_PKG_VERSION").into(),
        vault_url: settings.vault_url.to_string(),
    };
    if incumbent.send(&hello, &[]).is_err() {
        return Ok(None);
    }
    let (message, fds) = match incumbent.recv::<Handoff>(Some(OFFER_TIMEOUT)) {
        Ok(Received::Message(m, fds)) => (m, fds),
        Ok(Received::Closed) => return Ok(None),
        Ok(Received::TimedOut) => {
            return Err(refusal(
                settings,
                format!("no answer within {OFFER_TIMEOUT:?}"),
            ));
        }
        Err(e) => return Err(refusal(settings, e)),
    };
    let (init, resend, generation, hints, metrics, starts) = match message {
        Handoff::Offer {
            init,
            resend,
            generation,
            hints,
            metrics,
            starts,
        } => (init, resend, generation, hints, metrics, starts),
        Handoff::Refused { reason } => return Err(refusal(settings, reason)),
        other => return Err(refusal(settings, format!("unexpected {other:?}"))),
    };
    let mut fds = fds.into_iter();
    let (Some(fuse), Some(journal)) = (fds.next(), fds.next()) else {
        return Err(refusal(settings, "the offer came without its descriptors"));
    };
    let metrics = fds
        .next()
        .filter(|_| metrics)
        .map(std::net::TcpListener::from);
    let conn = Connection {
        fuse,
        init,
        init_answered: true,
        resend,
        journal,
        readers: Vec::new(),
        generation,
        hints,
        metrics,
        starts,
    };
    Ok(Some(Offer { incumbent, conn }))
}

/// The successor's side: take the mount `offer` describes over.
pub(super) fn take_over(
    settings: MountSettings,
    signals: SignalFd,
    socket_path: PathBuf,
    offer: Offer,
) -> Result<Supervisor, String> {
    let mountpoint = settings.mountpoint.display().to_string();
    let Offer {
        incumbent,
        mut conn,
    } = offer;
    tracing::info!(mountpoint, "taking the mount over from the kvfs serving it");
    conn.metrics = match metrics_listener(&settings, conn.metrics.take()) {
        Ok(l) => l,
        Err(reason) => {
            abort(&incumbent, &reason);
            return Err(reason);
        }
    };
    conn.starts.takeovers += 1;

    let (pid, control) = spawn_worker()?;
    let mut worker = Worker {
        pid,
        control,
        serving_since: None,
    };
    let hints = conn.hints.clone();
    conn.hints = match prepare_worker(&mut worker, &signals, hints, FirstToken::Require) {
        Ok(h) => h,
        Err(reason) => {
            end_worker(&worker);
            abort(&incumbent, &reason);
            return Err(reason);
        }
    };
    // Clones of our own to read from: the incumbent's go with it (they hold nothing once its
    // worker has drained).
    conn.readers = super::supervisor::readers_for(&conn.fuse, conn.resend)
        .inspect_err(|_| end_worker(&worker))?;
    let mut supervisor = Supervisor::new(settings, signals, socket_path, conn);
    let started = std::time::Instant::now();
    incumbent
        .send(&Handoff::Ready, &[])
        .map_err(|e| refusal(&supervisor.settings, e))
        .inspect_err(|_| end_worker(&worker))?;
    match incumbent.recv::<Handoff>(Some(STOPPED_TIMEOUT)) {
        Ok(Received::Message(Handoff::Stopped, _)) => {}
        // Gone after `Ready`: its worker died with it (or is stopping), and what it had read
        // comes back to ours through the resend. We hold the connection now.
        Ok(Received::Closed) => {
            tracing::warn!("the kvfs we took over from went away mid-handoff; serving on");
        }
        Ok(Received::Message(other, _)) => {
            end_worker(&worker);
            return Err(refusal(
                &supervisor.settings,
                format!("unexpected {other:?}"),
            ));
        }
        Ok(Received::TimedOut) | Err(_) => {
            end_worker(&worker);
            let reason = "the kvfs serving the mount did not stop in time";
            abort(&incumbent, reason);
            return Err(refusal(&supervisor.settings, reason));
        }
    }
    supervisor
        .serve_with(&mut worker)
        .inspect_err(|_| end_worker(&worker))?;
    supervisor.worker = Some(worker);
    tracing::info!(
        pause_ms = started.elapsed().as_millis() as u64,
        "took the mount over"
    );
    let _ = incumbent.send(&Handoff::Done, &[]);
    // The incumbent frees the control socket before it says goodbye.
    let _ = expect(&incumbent, Duration::from_secs(5));
    supervisor.after_first_serving();
    Ok(supervisor)
}

/// The metrics socket a successor serves on: the incumbent's when it listens where we are told
/// to (the same socket, so the port never stops answering), a new one when the address changed,
/// none when metrics are off.
fn metrics_listener(
    settings: &MountSettings,
    inherited: Option<std::net::TcpListener>,
) -> Result<Option<std::net::TcpListener>, String> {
    let Some(wanted) = settings.metrics_addr else {
        return Ok(None);
    };
    if let Some(l) = inherited
        && let Ok(have) = l.local_addr()
        && have.ip() == wanted.ip()
        && (have.port() == wanted.port() || wanted.port() == 0)
    {
        tracing::info!(addr = %have, "metrics and health endpoints: serving on the socket taken over");
        return Ok(Some(l));
    }
    super::supervisor::bind_metrics(wanted).map(Some)
}

impl Supervisor {
    /// The incumbent's side, when someone connects to the control socket. True when the mount
    /// now belongs to a successor.
    pub(super) fn hand_over_if_asked(&mut self) -> bool {
        let Some(listener) = &self.listener else {
            return false;
        };
        let channel = match listener.accept(Some(Duration::ZERO)) {
            Ok(Some(c)) => c,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!("control socket: {e}");
                return false;
            }
        };
        match self.hand_over(&channel) {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!("handoff to a successor failed: {e}");
                false
            }
        }
    }

    fn hand_over(&mut self, successor: &Channel) -> Result<bool, String> {
        let peer = trusted_peer(successor).map_err(|e| format!("refused a connection: {e}"))?;
        let (hello, _) = expect(successor, HELLO_TIMEOUT)?;
        let Handoff::Hello { version, vault_url } = hello else {
            return Err(format!("unexpected {hello:?}"));
        };
        if vault_url != self.settings.vault_url.as_str() {
            let reason = format!(
                "{} serves {}, not {vault_url}",
                self.settings.mountpoint.display(),
                self.settings.vault_url
            );
            let _ = successor.send(&Handoff::Refused { reason }, &[]);
            return Ok(false);
        }
        tracing::info!(
            pid = peer.pid,
            version,
            "a successor asks for the mount; offering it"
        );
        let offer = Handoff::Offer {
            init: self.conn.init.clone(),
            resend: self.conn.resend,
            generation: self.conn.generation,
            hints: self.conn.hints.clone(),
            metrics: self.conn.metrics.is_some(),
            starts: self.conn.starts,
        };
        let mut fds = vec![self.conn.fuse.as_fd(), self.conn.journal.as_fd()];
        fds.extend(self.conn.metrics.as_ref().map(|l| l.as_fd()));
        successor
            .send(&offer, &fds)
            .map_err(|e| format!("cannot send the offer: {e}"))?;
        match expect(successor, READY_TIMEOUT)? {
            (Handoff::Ready, _) => {}
            (Handoff::Abort { reason }, _) => {
                tracing::info!("the successor gave up ({reason}); serving on");
                return Ok(false);
            }
            (other, _) => return Err(format!("unexpected {other:?}")),
        }
        self.stop_worker_for_handoff();
        if successor.send(&Handoff::Stopped, &[]).is_err() {
            return self.take_back("the successor went away");
        }
        match expect(successor, DONE_TIMEOUT) {
            Ok((Handoff::Done, _)) => {}
            Ok((other, _)) => return self.take_back(&format!("unexpected {other:?}")),
            Err(e) => return self.take_back(&e),
        }
        // Free the control socket for the successor, then let go.
        self.listener = None;
        let _ = successor.send(&Handoff::Bye, &[]);
        tracing::info!("handed the mount over to a successor");
        Ok(true)
    }

    /// Our worker stops reading and answers what it holds, then exits.
    fn stop_worker_for_handoff(&mut self) {
        let Some(worker) = self.worker.take() else {
            return;
        };
        if worker.control.send(&ToWorker::Stop, &[]).is_ok() {
            match wait_worker(&worker, &self.signals, DRAINED_TIMEOUT) {
                Ok(FromWorker::Drained) => {}
                Ok(other) => tracing::warn!(message = ?other, "the stopping worker said"),
                Err(e) => tracing::warn!("the worker did not drain: {e}"),
            }
        }
        reap(worker.pid, Duration::from_secs(5));
    }

    /// The successor failed after our worker stopped: serve again ourselves.
    fn take_back(&mut self, why: &str) -> Result<bool, String> {
        tracing::warn!("the successor did not take over ({why}); serving on");
        if let Err(e) = self.start_worker() {
            tracing::warn!("the new worker failed: {e}");
            self.restart_at = Some(std::time::Instant::now());
        }
        Ok(false)
    }
}
