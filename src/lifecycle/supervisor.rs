//! The supervisor: the process `kvfs mount` runs as (PID 1 in a container, the main process under
//! systemd). It mounts, keeps the `/dev/fuse` file and everything needed to serve it again (the
//! INIT request, the inode journal), and runs a worker that does
//! the serving. When the worker dies it starts another on the same connection, so the mount, and
//! every bind mount of it, never notices. It answers a successor on the control socket, and
//! unmounts when told to stop.
//!
//! Deliberately small and dull: no async runtime, no vault client, no secret in its memory;
//! poll(2) over a signalfd, the worker's channel and the control socket.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::messages::{FirstToken, FromWorker, Hints, Serve, ToWorker};
use super::worker::WORKER_FD_ENV;
use super::{handoff, paths, sd_notify};
use crate::cli::{AfterHandoff, MountSettings};
use crate::daemon::Readiness;
use crate::fs::journal::Journal;
use crate::fusedev::{self, Liveness};
use crate::ipc::{Channel, Listener, Received};
use crate::metrics::WorkerStarts;

/// Longest a worker may take to build its credential and vault client (`auto` probing is
/// bounded well below this).
const PREPARE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest a prepared worker may take to start serving.
const SERVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Restart policy. A worker that never got to serve (bad credentials, say) is retried after
/// 250 ms, doubling up to 30 s. One that served and died is replaced at once; but when workers
/// keep dying within a second of serving (a request that crashes every worker it is replayed
/// to), after three in a row the supervisor waits 100 ms, doubling up to 2 s, so a crash loop
/// costs little and a reader still never waits long. A second of serving forgets the past.
const QUICK_DEATH: Duration = Duration::from_secs(1);
const FREE_QUICK_DEATHS: u32 = 3;
const QUICK_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));
const START_BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(30));
/// How long a stop waits for the worker before killing it.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How often the supervisor looks whether its connection is still there.
const CONNECTION_CHECK: Duration = Duration::from_secs(1);
/// How long a worker may stay stopped (SIGSTOP, a debugger's stop: state T) before it is
/// replaced. Requests it had read come back to its successor (resend) or fail once; stopped, it
/// would hang them, and every reader after them, until someone sent SIGCONT.
const STOPPED_GRACE: Duration = Duration::from_secs(5);
/// How long the liveness probe of an existing mount waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The test suite's switch for kernels without `FUSE_NOTIFY_RESEND`: workers read through
/// private clones, as they would on such a kernel.
pub(crate) const NO_RESEND_ENV: &str = "KVFS_TEST_NO_RESEND";

/// A FUSE connection and what it takes to serve it again.
pub(super) struct Connection {
    pub fuse: OwnedFd,
    pub init: Vec<u8>,
    pub init_answered: bool,
    pub resend: bool,
    pub journal: OwnedFd,
    /// Clones of `fuse`, one per session thread of a worker, kept here so that requests a worker
    /// had read outlive it (empty without resend: each worker then reads through clones of its
    /// own).
    pub readers: Vec<OwnedFd>,
    /// Of the last worker started.
    pub generation: u32,
    pub hints: Hints,
    /// The `--metrics-addr` socket, bound once for the life of the mount and handed to each
    /// worker (and to a successor), so the port answers across restarts and upgrades.
    pub metrics: Option<std::net::TcpListener>,
    pub starts: WorkerStarts,
}

pub(super) struct Worker {
    pub pid: Pid,
    pub control: Channel,
    /// When it started serving.
    pub serving_since: Option<Instant>,
}

pub(super) struct Supervisor {
    pub settings: MountSettings,
    pub signals: SignalFd,
    pub conn: Connection,
    pub worker: Option<Worker>,
    pub listener: Option<Listener>,
    pub socket_path: PathBuf,
    /// Workers in a row that never served, and that died within [`QUICK_DEATH`] of serving.
    pub failed_starts: u32,
    pub quick_deaths: u32,
    pub restart_at: Option<Instant>,
    /// The worker, and since when it has been seen stopped.
    pub stopped: Option<(Pid, Instant)>,
}

/// What the supervisor's poll reported.
pub(super) enum Event {
    Message(FromWorker),
    /// The worker's process ended; its status in words.
    WorkerGone(String),
    Stop(&'static str),
    Successor,
    /// The connection is gone (unmounted from outside, or aborted).
    ConnectionGone,
    Timeout,
}

/// `kvfs mount` in the foreground: take the mount over from a running kvfs, or mount afresh;
/// then supervise until stopped.
pub(crate) fn run(mut settings: MountSettings, readiness: &mut Readiness) -> Result<(), String> {
    settings.mountpoint = paths::absolute(&settings.mountpoint);
    let signals = block_signals()?;
    let euid = nix::unistd::geteuid().as_raw();
    let socket_path = settings.control_socket.clone().unwrap_or_else(|| {
        paths::control_socket(
            &settings.mountpoint,
            euid,
            std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
        )
    });
    if euid == 0 {
        // Under memory pressure the worker, which holds the cache, is the one to go: the
        // supervisor restarts it. Best effort (a container may not allow it).
        let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    }
    let offer = match Channel::connect(&socket_path) {
        Ok(incumbent) => handoff::ask(&settings, &socket_path, incumbent)?,
        Err(_) => None,
    };
    let supervisor = match offer {
        Some(offer) => handoff::take_over(settings, signals, socket_path, offer)?,
        None => {
            prepare_mountpoint(&settings, &socket_path)?;
            Supervisor::mount(settings, signals, socket_path)?
        }
    };
    readiness.ready();
    sd_notify::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
    supervisor.serve()
}

/// SIGTERM, SIGINT and SIGHUP stop the mount; SIGCHLD says the worker ended. All are read from a
/// signalfd, so none can arrive between two steps and kill the process with the mount half-made.
fn block_signals() -> Result<SignalFd, String> {
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        mask.add(s);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(|e| format!("cannot block signals: {e}"))?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| format!("cannot read signals: {e}"))
}

/// Make the mountpoint usable: a stale mount left by a killed kvfs is detached; a connection that
/// nothing serves any more is aborted first (its readers would hang for ever); a live kvfs whose
/// supervisor cannot be reached is an error, not something to stack a second mount on.
fn prepare_mountpoint(settings: &MountSettings, socket: &std::path::Path) -> Result<(), String> {
    let path = &settings.mountpoint;
    let top = fusedev::mounts_at(path)
        .ok()
        .and_then(|mounts| mounts.into_iter().last());
    if let Some(top) = top.filter(|m| m.fuse_connection().is_some()) {
        match fusedev::probe(path, PROBE_TIMEOUT) {
            Liveness::Answers if top.fstype == "fuse.kvfs" => {
                return Err(format!(
                    "{} is already mounted by a kvfs whose supervisor does not answer at {}: unmount it first, or give --control-socket the socket it listens on",
                    path.display(),
                    socket.display()
                ));
            }
            Liveness::Answers => {}
            Liveness::NotConnected => {
                tracing::warn!(mountpoint = %path.display(), "stale FUSE mount found (Transport endpoint is not connected); detaching it");
                detach(path)?;
            }
            Liveness::NoAnswer => {
                let id = top.fuse_connection().unwrap_or_default();
                tracing::warn!(
                    mountpoint = %path.display(),
                    connection = id,
                    "the FUSE connection at the mountpoint answers nothing (its kvfs is gone); aborting it and detaching the mount"
                );
                fusedev::abort_connection(id).map_err(|e| {
                    format!(
                        "{} is a FUSE mount nobody serves, and its connection {id} cannot be aborted ({e}); run `echo 1 > /sys/fs/fuse/connections/{id}/abort; umount -l {}`",
                        path.display(),
                        path.display()
                    )
                })?;
                detach(path)?;
            }
        }
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("mountpoint {} is not a directory", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("mountpoint {} does not exist", path.display()))
        }
        Err(e) => Err(format!("mountpoint {}: {e}", path.display())),
    }
}

fn detach(path: &std::path::Path) -> Result<(), String> {
    fusedev::unmount(path, true).map_err(|e| {
        format!(
            "mountpoint {} is a dead FUSE mount and could not be detached ({e}); run `umount -l {}` and retry",
            path.display(),
            path.display()
        )
    })
}

/// Start a worker: this same binary (`/proc/self/exe`, so a package upgrade that replaced the
/// file on disk does not mix versions), with the same arguments, its channel on fd 3.
pub(super) fn spawn_worker() -> Result<(Pid, Channel), String> {
    let (ours, theirs) = Channel::pair().map_err(|e| format!("cannot create a channel: {e}"))?;
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("kvfs"));
    let theirs = theirs.into_fd();
    let theirs_raw = theirs.as_raw_fd();
    let parent = std::process::id() as i32;
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0(arg0)
        .args(args)
        .env(WORKER_FD_ENV, "3")
        .stdin(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec (dup2, prctl, sigprocmask,
    // setpgid, getppid, _exit).
    unsafe {
        command.pre_exec(move || {
            // dup2 clears close-on-exec on the new descriptor, so the worker keeps it.
            if libc::dup2(theirs_raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The worker must not outlive the supervisor: with nobody to restart it, a mount it
            // alone held would look alive and serve on without supervision.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            // The supervisor's signal mask is inherited across exec; the worker wants its own.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            // Its own process group: a terminal's Ctrl-C is for the supervisor to handle.
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start a kvfs worker: {e}"))?;
    drop(theirs);
    Ok((Pid::from_raw(child.id() as i32), ours))
}

fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, signal, core) => {
            format!(
                "was killed by {signal}{}",
                if core { " (core dumped)" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}

impl Supervisor {
    /// A supervisor of `conn` with no worker yet.
    pub(super) fn new(
        settings: MountSettings,
        signals: SignalFd,
        socket_path: PathBuf,
        conn: Connection,
    ) -> Supervisor {
        Supervisor {
            settings,
            signals,
            conn,
            worker: None,
            listener: None,
            socket_path,
            failed_starts: 0,
            quick_deaths: 0,
            restart_at: None,
            stopped: None,
        }
    }

    /// A new mount: prepare a worker (so bad credentials fail before anything is mounted), mount,
    /// take the kernel's INIT, and have the worker answer it and serve.
    fn mount(
        settings: MountSettings,
        signals: SignalFd,
        socket_path: PathBuf,
    ) -> Result<Supervisor, String> {
        // Before anything else: a port that is taken fails the mount before it exists.
        let metrics = settings.metrics_addr.map(bind_metrics).transpose()?;
        let (pid, control) = spawn_worker()?;
        let mut worker = Worker {
            pid,
            control,
            serving_since: None,
        };
        let hints = match prepare_worker(&mut worker, &signals, Hints::default(), FirstToken::Later)
        {
            Ok(hints) => hints,
            Err(e) => {
                end_worker(&worker);
                return Err(e);
            }
        };
        let fuse = fusedev::mount(&fusedev::MountSpec {
            mountpoint: &settings.mountpoint,
            fsname: &format!("kvfs:{}", settings.vault_url.host_str().unwrap_or("vault")),
            subtype: "kvfs",
            allow_other: settings.allow_other,
            // The kernel checks modes and owners, so 0400 files owned by the mounting user
            // mean what they say.
            default_permissions: true,
        })
        .inspect_err(|_| end_worker(&worker))?;
        let init = fusedev::read_init(fuse.as_fd()).map_err(|e| {
            end_worker(&worker);
            let _ = fusedev::unmount(&settings.mountpoint, true);
            format!("no INIT from the kernel on the new mount: {e}")
        })?;
        let kernel = fusedev::InitRequest::parse(&init)?;
        let resend = kernel.has_resend() && std::env::var_os(NO_RESEND_ENV).is_none();
        if !resend {
            tracing::info!(
                protocol = format!("{}.{}", kernel.major, kernel.minor),
                "the kernel cannot resend requests (FUSE_NOTIFY_RESEND, Linux 6.9+): requests a crashed worker had read fail once instead"
            );
        }
        let journal = Journal::create()
            .and_then(|j| j.try_clone_fd())
            .map_err(|e| format!("cannot create the inode journal: {e}"))?;
        let readers = readers_for(&fuse, resend)?;
        let conn = Connection {
            fuse,
            init,
            init_answered: false,
            resend,
            journal,
            readers,
            generation: 0,
            hints,
            metrics,
            starts: WorkerStarts::default(),
        };
        let mut supervisor = Supervisor::new(settings, signals, socket_path, conn);
        if let Err(e) = supervisor.serve_with(&mut worker) {
            end_worker(&worker);
            let _ = fusedev::unmount(&supervisor.settings.mountpoint, true);
            return Err(e);
        }
        supervisor.worker = Some(worker);
        supervisor.after_first_serving();
        Ok(supervisor)
    }

    /// Once a worker serves: listen for a successor.
    pub(super) fn after_first_serving(&mut self) {
        self.conn.init_answered = true;
        match Listener::bind(&self.socket_path) {
            Ok(l) => self.listener = Some(l),
            Err(e) => tracing::warn!(
                socket = %self.socket_path.display(),
                "cannot listen for a successor, so an upgrade will mean a remount: {e}"
            ),
        }
    }

    /// Hand `worker` the connection and wait until it serves.
    pub(super) fn serve_with(&mut self, worker: &mut Worker) -> Result<(), String> {
        self.conn.generation += 1;
        let message = ToWorker::Serve(Serve {
            init: self.conn.init.clone(),
            init_answered: self.conn.init_answered,
            resend: self.conn.resend,
            generation: self.conn.generation,
            readers: self.conn.readers.len() as u32,
            metrics: self.conn.metrics.is_some(),
            starts: self.conn.starts,
        });
        let mut fds = vec![self.conn.fuse.as_fd(), self.conn.journal.as_fd()];
        fds.extend(self.conn.readers.iter().map(|r| r.as_fd()));
        fds.extend(self.conn.metrics.as_ref().map(|l| l.as_fd()));
        worker
            .control
            .send(&message, &fds)
            .map_err(|e| format!("cannot reach the worker: {e}"))?;
        match wait_worker(worker, &self.signals, SERVE_TIMEOUT)? {
            FromWorker::Serving => {
                worker.serving_since = Some(Instant::now());
                Ok(())
            }
            FromWorker::Failed { reason } => Err(reason),
            other => Err(format!("unexpected answer from the worker: {other:?}")),
        }
    }

    /// Serve until stopped, restarting workers as they die and answering successors.
    fn serve(mut self) -> Result<(), String> {
        loop {
            if self.worker.is_none() && self.restart_at.is_some_and(|t| Instant::now() >= t) {
                self.restart_at = None;
                if let Err(e) = self.start_worker() {
                    tracing::warn!("the new worker failed: {e}");
                    self.schedule_restart(None);
                }
                continue;
            }
            match self.wait(self.restart_at) {
                Event::Timeout => {}
                Event::Stop(signal) => return self.stop(signal),
                Event::ConnectionGone => return self.connection_ended(),
                Event::Message(FromWorker::Ended) => return self.connection_ended(),
                Event::Message(other) => {
                    tracing::debug!(message = ?other, "message from the worker ignored")
                }
                Event::WorkerGone(status) => {
                    let served = self
                        .worker
                        .take()
                        .and_then(|w| w.serving_since)
                        .map(|t| t.elapsed());
                    tracing::warn!("the kvfs worker {status}; starting another on the same mount");
                    self.schedule_restart(served);
                }
                Event::Successor => {
                    if self.hand_over_if_asked() {
                        return self.after_handoff();
                    }
                }
            }
        }
    }

    /// When to start the next worker, given how long the last one served (`None`: never).
    fn schedule_restart(&mut self, served: Option<Duration>) {
        let delay = next_delay(&mut self.failed_starts, &mut self.quick_deaths, served);
        if !delay.is_zero() {
            tracing::warn!(
                failed_starts = self.failed_starts,
                quick_deaths = self.quick_deaths,
                "kvfs workers keep dying; next start in {delay:?}"
            );
        }
        self.restart_at = Some(Instant::now() + delay);
    }

    /// A replacement worker on the same connection.
    pub(super) fn start_worker(&mut self) -> Result<(), String> {
        self.conn.starts.replacements += 1;
        let (pid, control) = spawn_worker()?;
        let mut worker = Worker {
            pid,
            control,
            serving_since: None,
        };
        let result = prepare_worker(
            &mut worker,
            &self.signals,
            self.conn.hints.clone(),
            FirstToken::Try,
        )
        .and_then(|_| self.serve_with(&mut worker));
        match result {
            Ok(()) => {
                tracing::info!(pid = pid.as_raw(), "a new kvfs worker serves the mount");
                self.worker = Some(worker);
                Ok(())
            }
            Err(e) => {
                end_worker(&worker);
                Err(e)
            }
        }
    }

    /// Whether the connection is gone (unmounted from outside, or aborted): `/dev/fuse` then
    /// reports POLLERR. Asked with a zero timeout, never waited on: a poll(2) waiting on
    /// `/dev/fuse` joins the queue the kernel wakes for every request, and the supervisor would
    /// be scheduled once per request, which doubled the cost of a read on two CPUs.
    fn connection_gone(&self) -> bool {
        let mut fds = [PollFd::new(self.conn.fuse.as_fd(), PollFlags::empty())];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// Wait for the next thing to happen, until `deadline`.
    pub(super) fn wait(&mut self, deadline: Option<Instant>) -> Event {
        loop {
            // The worker says when the connection ends under it; without a worker (between
            // restarts, after a handoff) the connection is looked at once a second.
            let tick = Instant::now() + CONNECTION_CHECK;
            let wake = deadline.map_or(tick, |d| d.min(tick));
            let left = wake.saturating_duration_since(Instant::now());
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Event::Timeout;
            }
            let timeout = PollTimeout::try_from(left.max(Duration::from_millis(1)))
                .unwrap_or(PollTimeout::MAX);
            let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
            let worker_at = self.worker.as_ref().map(|w| {
                fds.push(PollFd::new(w.control.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let listener_at = self.listener.as_ref().map(|l| {
                fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
            let signals_ready = ready(0);
            let worker_ready = worker_at.is_some_and(ready);
            let successor = listener_at.is_some_and(ready);
            drop(fds);
            if signals_ready && let Some(event) = self.read_signals() {
                return event;
            }
            if worker_ready && let Some(w) = &self.worker {
                match w.control.recv::<FromWorker>(Some(Duration::ZERO)) {
                    Ok(Received::Message(m, _)) => return Event::Message(m),
                    Ok(Received::TimedOut) => {}
                    Ok(Received::Closed) | Err(_) => {
                        return Event::WorkerGone(reap(w.pid, STOP_GRACE));
                    }
                }
            }
            if self.connection_gone() {
                return Event::ConnectionGone;
            }
            self.end_a_stopped_worker();
            if successor {
                return Event::Successor;
            }
        }
    }

    /// Kill the worker once it has been stopped for [`STOPPED_GRACE`]: its death is then seen
    /// like any other (SIGCHLD) and a new worker takes over at once.
    fn end_a_stopped_worker(&mut self) {
        let Some(pid) = self.worker.as_ref().map(|w| w.pid) else {
            self.stopped = None;
            return;
        };
        if !is_stopped(pid) {
            self.stopped = None;
            return;
        }
        let since = match self.stopped {
            Some((p, since)) if p == pid => since,
            _ => {
                self.stopped = Some((pid, Instant::now()));
                return;
            }
        };
        if since.elapsed() >= STOPPED_GRACE {
            tracing::warn!(
                pid = pid.as_raw(),
                "the kvfs worker has been stopped for {STOPPED_GRACE:?} (SIGSTOP?); replacing it so that readers are answered"
            );
            let _ = kill(pid, Signal::SIGKILL);
            self.stopped = None;
        }
    }

    fn read_signals(&mut self) -> Option<Event> {
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGTERM) => return Some(Event::Stop("SIGTERM")),
                Ok(Signal::SIGINT) => return Some(Event::Stop("SIGINT")),
                Ok(Signal::SIGHUP) => return Some(Event::Stop("SIGHUP")),
                Ok(Signal::SIGCHLD) => {
                    if let Some(w) = &self.worker
                        && let Ok(status) = waitpid(w.pid, Some(WaitPidFlag::WNOHANG))
                        && status != WaitStatus::StillAlive
                    {
                        return Some(Event::WorkerGone(describe(status)));
                    }
                    // Reap anything else (a worker we gave up on).
                    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                        if status == WaitStatus::StillAlive {
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Stop means stop: unmount (lazily when files are open, so it always goes), let the worker
    /// go, exit 0.
    fn stop(mut self, signal: &str) -> Result<(), String> {
        tracing::info!(reason = signal, "unmounting");
        sd_notify::notify("STOPPING=1");
        self.listener = None;
        let path = self.settings.mountpoint.clone();
        match fusedev::unmount(&path, false) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                tracing::info!("files are open on the mount; detaching it");
                if let Err(e) = fusedev::unmount(&path, true) {
                    tracing::warn!("cannot detach {}: {e}", path.display());
                }
            }
            Err(e) => tracing::warn!("cannot unmount {}: {e}", path.display()),
        }
        // Unmounted, or detached with files still open: either way nothing more is to be
        // served (an open file reads ENOTCONN once the connection closes with us).
        if let Some(worker) = self.worker.take() {
            end_worker(&worker);
        }
        Ok(())
    }

    /// The mount went away under us (`umount`, `kvfs unmount`): the worker ends too.
    fn connection_ended(mut self) -> Result<(), String> {
        tracing::info!(reason = "external unmount", "unmounting");
        // A new mount on this directory must not find us listening while we go.
        self.listener = None;
        if let Some(worker) = self.worker.take() {
            reap(worker.pid, STOP_GRACE);
        }
        Ok(())
    }

    /// A successor took the mount over: exit without unmounting, or idle until told to stop.
    fn after_handoff(mut self) -> Result<(), String> {
        // Still ours only when the successor is in another network namespace (see
        // `hand_over`): while we wait, it says we are alive and not ready, so that a liveness
        // probe does not restart us (a restarted kvfs would take the mount back).
        let metrics = self.conn.metrics.take();
        if self.settings.after_handoff == AfterHandoff::Wait {
            tracing::info!("handed over; waiting for SIGTERM (which will not unmount)");
            self.listener = None;
            let _endpoints = metrics.and_then(|listener| {
                crate::metrics::http::serve_handed_over(listener, self.conn.starts)
                    .inspect_err(|e| tracing::warn!("cannot serve the metrics endpoint: {e}"))
                    .ok()
            });
            loop {
                if let Event::Stop(_) = self.wait(None) {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Bind the `--metrics-addr` socket (std sets `SO_REUSEADDR`, so a port left in TIME_WAIT by a
/// previous kvfs is reusable). A port that is taken is a one-line error.
pub(super) fn bind_metrics(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, String> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| format!("cannot listen for metrics on {addr} (--metrics-addr): {e}"))?;
    let bound = listener.local_addr().map_or(addr, |a| a);
    tracing::info!(addr = %bound, "metrics and health endpoints listening");
    Ok(listener)
}

/// Whether `pid` is stopped by a signal (state `T` in `/proc/<pid>/stat`; not `t`, a tracee a
/// debugger holds on purpose).
fn is_stopped(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| process_state(&stat) == Some('T'))
}

/// The state letter of a `/proc/<pid>/stat` line: the first field after the command name, which
/// is in parentheses and may itself contain spaces and parentheses.
fn process_state(stat: &str) -> Option<char> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.trim_start().chars().next()
}

/// The clones of a connection the workers read from (see [`Connection::readers`]).
pub(super) fn readers_for(fuse: &OwnedFd, resend: bool) -> Result<Vec<OwnedFd>, String> {
    if !resend {
        return Ok(Vec::new());
    }
    (0..super::worker::session_threads())
        .map(|_| fusedev::clone_dev(fuse.as_fd()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| format!("cannot clone the FUSE connection: {e}"))
}

/// The restart policy (see [`QUICK_DEATH`]), as a pure function of the counters.
fn next_delay(
    failed_starts: &mut u32,
    quick_deaths: &mut u32,
    served: Option<Duration>,
) -> Duration {
    let doubling =
        |(first, max): (Duration, Duration), n: u32| first.saturating_mul(1 << n.min(16)).min(max);
    match served {
        None => {
            *failed_starts += 1;
            doubling(START_BACKOFF, *failed_starts - 1)
        }
        Some(d) => {
            *failed_starts = 0;
            if d >= QUICK_DEATH {
                *quick_deaths = 0;
                return Duration::ZERO;
            }
            *quick_deaths += 1;
            if *quick_deaths <= FREE_QUICK_DEATHS {
                Duration::ZERO
            } else {
                doubling(QUICK_BACKOFF, *quick_deaths - FREE_QUICK_DEATHS - 1)
            }
        }
    }
}

/// Ask a new worker to prepare; the hints it settled on.
pub(super) fn prepare_worker(
    worker: &mut Worker,
    signals: &SignalFd,
    hints: Hints,
    first_token: FirstToken,
) -> Result<Hints, String> {
    worker
        .control
        .send(&ToWorker::Prepare { hints, first_token }, &[])
        .map_err(|e| format!("cannot reach the worker: {e}"))?;
    match wait_worker(worker, signals, PREPARE_TIMEOUT)? {
        FromWorker::Prepared { hints } => Ok(hints),
        FromWorker::Failed { reason } => Err(reason),
        other => Err(format!("unexpected answer from the worker: {other:?}")),
    }
}

/// The worker's next message, within `timeout`; a stop signal or the worker's death is an error.
pub(super) fn wait_worker(
    worker: &Worker,
    signals: &SignalFd,
    timeout: Duration,
) -> Result<FromWorker, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("the worker did not answer within {timeout:?}"));
        }
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(worker.control.as_fd(), PollFlags::POLLIN),
        ];
        let t = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, t) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("poll failed: {e}")),
        }
        let signalled = fds[0].revents().is_some_and(|r| !r.is_empty());
        let answered = fds[1].revents().is_some_and(|r| !r.is_empty());
        if signalled {
            while let Ok(Some(info)) = signals.read_signal() {
                let stop = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];
                if let Ok(signal) = Signal::try_from(info.ssi_signo as i32)
                    && stop.contains(&signal)
                {
                    // Raised again (it stays pending: it is blocked) so that the main loop
                    // sees it and stops once this step has been abandoned.
                    let _ = nix::sys::signal::raise(signal);
                    return Err(format!("interrupted by {signal}"));
                }
            }
        }
        if answered {
            return match worker.control.recv::<FromWorker>(Some(Duration::ZERO)) {
                Ok(Received::Message(m, _)) => Ok(m),
                Ok(Received::TimedOut) => continue,
                Ok(Received::Closed) | Err(_) => Err(format!(
                    "the worker {}",
                    reap(worker.pid, Duration::from_secs(1))
                )),
            };
        }
    }
}

/// Wait up to `grace` for `pid` to exit, then kill it; its status in words.
pub(super) fn reap(pid: Pid, grace: Duration) -> String {
    let deadline = Instant::now() + grace;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => return describe(status),
            Err(e) => return format!("is gone ({e})"),
        }
        if Instant::now() >= deadline {
            let _ = kill(pid, Signal::SIGKILL);
            return waitpid(pid, None)
                .map(describe)
                .unwrap_or_else(|e| format!("is gone ({e})"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kill a worker that will not be used and collect it.
pub(super) fn end_worker(worker: &Worker) {
    let _ = kill(worker.pid, Signal::SIGKILL);
    let _ = waitpid(worker.pid, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_worker_that_served_is_replaced_at_once_and_a_crash_loop_backs_off_a_little() {
        let (mut starts, mut quick) = (0, 0);
        let mut next = |served| next_delay(&mut starts, &mut quick, served);
        assert_eq!(next(Some(Duration::from_secs(3600))), Duration::ZERO);
        // Killed again and again shortly after serving: three free, then 100 ms doubling to 2 s.
        let delays: Vec<Duration> = (0..10).map(|_| next(Some(ms(50)))).collect();
        assert_eq!(
            delays,
            [0, 0, 0, 100, 200, 400, 800, 1600, 2000, 2000].map(ms)
        );
        // A second of serving forgets the quick deaths.
        assert_eq!(next(Some(Duration::from_secs(2))), Duration::ZERO);
        assert_eq!(next(Some(ms(10))), Duration::ZERO);
    }

    #[test]
    fn process_state_is_read_past_a_command_name_with_spaces_and_parentheses() {
        assert_eq!(process_state("42 (kvfs) T 1 42 42 0 -1"), Some('T'));
        assert_eq!(process_state("42 (a) b) (c) S 1 42"), Some('S'));
        assert_eq!(process_state("garbage"), None);
        assert!(!is_stopped(Pid::this()));
    }

    #[test]
    fn a_worker_that_never_serves_is_retried_with_a_growing_pause() {
        let (mut starts, mut quick) = (0, 0);
        let delays: Vec<Duration> = (0..10)
            .map(|_| next_delay(&mut starts, &mut quick, None))
            .collect();
        assert_eq!(
            delays,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000].map(ms)
        );
        assert_eq!(
            next_delay(&mut starts, &mut quick, Some(Duration::from_secs(60))),
            Duration::ZERO
        );
        assert_eq!(starts, 0);
    }
}
