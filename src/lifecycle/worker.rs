//! The worker: the process that serves a mount. It builds the credential, vault client, cache and
//! filesystem, takes the connection the supervisor hands it (see [`super::adopt`]) and serves
//! until it is told to stop, the connection ends, or it dies, in which case the supervisor starts
//! another one on the same connection.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use super::adopt;
use super::messages::{FirstToken, FromWorker, Hints, Serve, ToWorker};
use crate::auth::{self, AuthMethod, AuthRequest, Env, Limits};
use crate::cli::MountSettings;
use crate::fs::cache::{Cache, CacheConfig};
use crate::fs::core::{FsCore, Ownership};
use crate::fs::inodes::Inodes;
use crate::fs::journal::Journal;
use crate::fuse::FuseAdapter;
use crate::fuse::gate::{self, Gate};
use crate::fusedev;
use crate::http::{DEFAULT_MAX_RETRIES, DEFAULT_REQUEST_TIMEOUT, error_chain, http_client};
use crate::invalidate::Invalidator;
use crate::ipc::{Channel, Received};
use crate::metrics;
use crate::vault::azure::{self, AzureVault, AzureVaultOptions};

/// The environment variable that tells a `kvfs mount` process it is a worker, and on which fd
/// its channel to the supervisor is.
pub(crate) const WORKER_FD_ENV: &str = "KVFS_WORKER_FD";

/// Session threads: one slow request never holds up the rest, and warm answers are given on
/// these threads directly.
pub(crate) fn session_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 4)
}

/// How long a stopping worker waits for its answers before giving up (a vault call's own limit
/// is 10 s per attempt).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping worker waits for the metrics requests it holds.
const HTTP_STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// Run as the worker whose supervisor channel is `control`. Never returns.
pub(crate) fn run(settings: MountSettings, control: Channel) -> ! {
    // Started through /proc/self/exe, the process would be called "exe" in ps and top.
    let _ = nix::sys::prctl::set_name(c"kvfs-worker");
    // Terminal and service-manager signals are the supervisor's to handle: it tells us what to
    // do. A panic anywhere is a crash of the whole worker, which the supervisor restarts.
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: setting a signal's disposition to "ignore" has no preconditions.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    std::panic::set_hook(Box::new(|info| {
        // To the log (a detached worker's stderr goes nowhere). Panic messages are ours and
        // never carry a value.
        tracing::error!("kvfs worker panicked: {info}");
        crate::logging::flush();
        std::process::abort();
    }));
    let code = match serve(settings, &control) {
        Ok(code) => code,
        Err(reason) => {
            let _ = control.send(&FromWorker::Failed { reason }, &[]);
            1
        }
    };
    // Session threads may be parked for good: leave without running destructors, once the
    // queued log lines are out.
    crate::logging::flush();
    std::process::exit(code)
}

fn recv(control: &Channel) -> Result<(ToWorker, Vec<OwnedFd>), String> {
    match control.recv::<ToWorker>(None) {
        Ok(Received::Message(m, fds)) => Ok((m, fds)),
        Ok(Received::Closed) => Err("the supervisor went away".into()),
        Ok(Received::TimedOut) => Err("no word from the supervisor".into()),
        Err(e) => Err(format!("cannot read from the supervisor: {e}")),
    }
}

/// What a prepared worker has before it serves: everything that needs the network or the
/// credential, which is also everything that can fail for reasons the user must hear about.
struct Prepared {
    runtime: tokio::runtime::Runtime,
    cache: Cache,
}

fn serve(mut settings: MountSettings, control: &Channel) -> Result<i32, String> {
    let (message, _) = recv(control)?;
    let ToWorker::Prepare { hints, first_token } = message else {
        return Err(format!("unexpected first message {message:?}"));
    };
    apply_hints(&mut settings, &hints);
    let (prepared, chosen) = prepare(&settings, first_token)?;
    control
        .send(&FromWorker::Prepared { hints: chosen }, &[])
        .map_err(|e| format!("cannot reach the supervisor: {e}"))?;
    let (message, fds) = recv(control)?;
    let ToWorker::Serve(serve) = message else {
        return Err(format!("expected Serve, got {message:?}"));
    };
    let mut fds = fds.into_iter();
    let (Some(connection), Some(journal)) = (fds.next(), fds.next()) else {
        return Err("Serve came without the connection and journal descriptors".into());
    };
    let readers: Vec<OwnedFd> = fds.by_ref().take(serve.readers as usize).collect();
    let metrics = fds.next().filter(|_| serve.metrics);
    let running = start_serving(&settings, prepared, &serve, &connection, journal, readers)?;
    let http = metrics.and_then(|listener| serve_metrics(&settings, &serve, &running, listener));
    control
        .send(&FromWorker::Serving, &[])
        .map_err(|e| format!("cannot reach the supervisor: {e}"))?;
    Ok(wait_for_the_end(&settings, control, running, http))
}

fn apply_hints(settings: &mut MountSettings, hints: &Hints) {
    if settings.auth == AuthMethod::Auto
        && let Some(method) = hints.auth.as_deref().and_then(|name| name.parse().ok())
    {
        settings.auth = method;
    }
    if settings.tenant_id.is_none() {
        settings.tenant_id.clone_from(&hints.tenant_id);
    }
}

fn read_ca_files(settings: &MountSettings) -> Result<Vec<Vec<u8>>, String> {
    let mut files = settings.ca_files.clone();
    if let Some(f) = std::env::var_os("SSL_CERT_FILE") {
        files.push(f.into());
    }
    files
        .iter()
        .map(|f| std::fs::read(f).map_err(|e| format!("cannot read CA file {}: {e}", f.display())))
        .collect()
}

/// What the settings say about identity, for [`auth::select`] (which reads the environment).
fn auth_request(settings: &MountSettings) -> AuthRequest {
    AuthRequest {
        method: settings.auth,
        client_id: settings.client_id.clone(),
        tenant_id: settings.tenant_id.clone(),
        authority_host: settings.authority_host.clone(),
        cloud_authority_host: settings.cloud.authority_host().to_string(),
        imds_endpoint: settings.imds_endpoint.clone(),
    }
}

/// Whether the chosen (or an `auto`-eligible) method needs a tenant: those that talk to Entra ID
/// as an app. Only then is the vault asked for its tenant.
fn needs_tenant(request: &AuthRequest, env: &Env) -> bool {
    match request.method {
        AuthMethod::ClientSecret | AuthMethod::ClientCertificate | AuthMethod::WorkloadIdentity => {
            true
        }
        AuthMethod::Auto => [
            "AZURE_CLIENT_SECRET",
            "AZURE_CLIENT_CERTIFICATE_PATH",
            "AZURE_FEDERATED_TOKEN_FILE",
        ]
        .iter()
        .any(|v| env.get(v).is_some()),
        _ => false,
    }
}

fn prepare(settings: &MountSettings, first_token: FirstToken) -> Result<(Prepared, Hints), String> {
    let extra_ca = read_ca_files(settings)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kvfs")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let timeout = DEFAULT_REQUEST_TIMEOUT;
    let http = http_client(&extra_ca, timeout)?;
    let env = Env::from_process();
    let mut request = auth_request(settings);
    if request.tenant_id.is_none()
        && env.get("AZURE_TENANT_ID").is_none()
        && needs_tenant(&request, &env)
    {
        // No tenant configured: take the vault's own, from its 401 challenge, as the SDKs do.
        match runtime.block_on(azure::tenant_from_challenge(&http, &settings.vault_url)) {
            Ok(tenant) => {
                tracing::info!(%tenant, "tenant taken from the vault's challenge");
                request.tenant_id = Some(tenant);
            }
            Err(e) => tracing::warn!("no tenant configured and none learned from the vault: {e}"),
        }
    }
    // Decided before mounting: `auto` probes (bounded) and fails with one line if nothing works.
    let selected = runtime.block_on(auth::select(&request, &env, &http, &Limits::default()))?;
    let hints = Hints {
        auth: Some(selected.method.to_string()),
        tenant_id: request.tenant_id.clone(),
    };
    // Replacing a worker, or taking over from one: the first token now (bounded), so readers
    // waiting on the mount do not wait for Entra ID too. In an upgrade this happens while the
    // old worker still serves, and a successor that cannot authenticate gives up here.
    if first_token != FirstToken::Later {
        let scope = token_scope(settings);
        let credential = selected.credential.clone();
        let got = runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                credential.get_token(&[scope.as_str()], None),
            )
            .await
        });
        let failure = match got {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(error_chain(&e)),
            Err(_) => Some("no token within 5 s".to_string()),
        };
        match (failure, first_token) {
            (Some(why), FirstToken::Require) => {
                return Err(format!(
                    "cannot get a token ({} method): {why}",
                    selected.method
                ));
            }
            (Some(why), _) => tracing::debug!("no token ahead of serving: {why}"),
            (None, _) => {}
        }
    }
    let vault = {
        let _guard = runtime.enter();
        AzureVault::new(AzureVaultOptions {
            vault_url: settings.vault_url.clone(),
            credential: selected.credential,
            token_verdicts: Some(selected.verdicts),
            extra_ca_pem: extra_ca,
            verify_challenge_resource: settings.verify_challenge_resource,
            request_timeout: timeout,
            max_retries: DEFAULT_MAX_RETRIES,
        })?
    };
    let vault = Arc::new(vault);
    // The challenge the vault clients need before their first token, learned in the background
    // (one token-less request naming no object), so the first reader does not wait for it. It
    // never fails or holds up the mount: without an answer, the first read asks again.
    runtime.spawn({
        let vault = vault.clone();
        async move { vault.learn_challenge().await }
    });
    let cache = Cache::new(
        vault,
        CacheConfig {
            ttl: settings.cache_ttl,
            max_stale: settings.max_stale,
            ..CacheConfig::default()
        },
    );
    Ok((Prepared { runtime, cache }, hints))
}

/// The scope of a vault's tokens: its DNS suffix (`myvault.vault.azure.cn` gives
/// `https://vault.azure.cn/.default`, what its challenge will name), or the cloud's for a vault
/// addressed another way.
fn token_scope(settings: &MountSettings) -> String {
    let host = settings.vault_url.host_str().unwrap_or_default();
    let suffix = host
        .split_once('.')
        .map(|(_, rest)| rest)
        .filter(|rest| rest.starts_with("vault.") && rest.contains('.'))
        .unwrap_or(settings.cloud.vault_suffix());
    format!("https://{suffix}/.default")
}

struct Running {
    /// Held for as long as the worker lives: the tasks answering requests, refreshing the cache
    /// and serving the metrics endpoint run on it.
    runtime: tokio::runtime::Runtime,
    sessions: Vec<fuser::BackgroundSession>,
    gate: Arc<Gate>,
    core: Arc<FsCore>,
}

fn start_serving(
    settings: &MountSettings,
    prepared: Prepared,
    serve: &Serve,
    connection: &OwnedFd,
    journal: OwnedFd,
    readers: Vec<OwnedFd>,
) -> Result<Running, String> {
    let Prepared { runtime, cache } = prepared;
    let (journal, replayed) =
        Journal::adopt(journal).map_err(|e| format!("cannot read the inode journal: {e}"))?;
    let journal = Arc::new(journal);
    let inodes = if replayed.live.is_empty() {
        Inodes::journaled(journal)
    } else {
        tracing::debug!(
            inodes = replayed.live.len(),
            "resuming the inode table of a predecessor"
        );
        Inodes::resume(journal, replayed)
    };
    {
        // Keeps the entries being read fresh ahead of expiry; ends when the cache is dropped.
        let _guard = runtime.enter();
        cache.start_refresher();
    }
    let core = Arc::new(
        FsCore::with_open_mode(
            cache,
            Ownership {
                uid: settings.uid,
                gid: settings.gid,
                file_mode: settings.file_mode,
                dir_mode: settings.dir_mode,
            },
            settings.cache_ttl,
            settings.open_mode,
        )
        .with_prefetch(settings.prefetch_concurrency)
        .resuming(inodes, serve.generation),
    );
    let gate = Arc::new(Gate::default());
    let acl = if settings.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    // One fuser session per thread, each reading a /dev/fuse file of its own (one file shared
    // by all threads costs about a third more per request). With resend, these are clones the
    // supervisor keeps open, so that what a dead worker had read stays with a live file, to be
    // resent to the next one. Without, they are clones of our own: when we die the kernel fails
    // what we had read (ECONNABORTED) instead of keeping it for a resend that cannot come.
    let readers = if serve.resend && !readers.is_empty() {
        readers
    } else {
        (0..session_threads())
            .map(|_| fusedev::clone_dev(connection.as_fd()))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| format!("cannot clone the FUSE connection: {e}"))?
    };
    let mut sessions = Vec::with_capacity(readers.len());
    for (i, reader) in readers.into_iter().enumerate() {
        let adapter = FuseAdapter::new(core.clone(), runtime.handle().clone(), gate.clone());
        let mut config = fuser::Config::default();
        config.n_threads = Some(1);
        config.clone_fd = false;
        config.acl = acl;
        let session = adopt::session(
            adapter,
            connection.as_fd(),
            reader,
            &serve.init,
            // Only the first session answers the kernel's INIT, if nobody did yet.
            serve.init_answered || i > 0,
            hang_timeout_seconds(settings.hang_timeout),
            acl,
            config,
        )
        .map_err(|e| format!("cannot take up the FUSE connection: {e}"))?;
        sessions.push(session);
    }
    let session = &sessions[0];
    // What the cache learns changed, the kernel forgets at once.
    let invalidator = Invalidator::start(&core, session.notifier());
    core.cache()
        .set_change_listener(Arc::new(move |change| invalidator.changed(change)));
    // What the kernel caches of current values was shown by a predecessor, which may have seen
    // an older version than we will serve: a page filled from our bytes next to attributes from
    // its answer would be a torn read. Drop those attributes now, before anything is served
    // (attributes only: dropping pages would wait on reads in flight, which nobody serves yet),
    // and the pages once we serve.
    let inherited = core.inherited_current();
    if !inherited.is_empty() {
        let notifier = session.notifier();
        for &ino in &inherited {
            let _ = notifier.inval_inode(fuser::INodeNo(ino), -1, 0);
        }
        let notifier = session.notifier();
        let _ = std::thread::Builder::new()
            .name("kvfs-inherited".into())
            .spawn(move || {
                for ino in inherited {
                    let _ = notifier.inval_inode(fuser::INodeNo(ino), 0, 0);
                }
            });
    }
    if serve.init_answered && serve.resend {
        // Whatever a predecessor read and did not answer comes back to us. Before INIT is
        // answered there is nothing to resend (and INIT itself must not come back).
        if let Err(e) = fusedev::notify_resend(connection.as_fd()) {
            tracing::warn!("cannot ask the kernel to resend unanswered requests: {e}");
        }
    }
    let sessions = sessions
        .into_iter()
        .map(|s| s.spawn())
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| format!("cannot start serving: {e}"))?;
    tracing::info!(
        vault = %settings.vault_url,
        mountpoint = %settings.mountpoint.display(),
        cache_ttl = ?settings.cache_ttl,
        open_mode = ?settings.open_mode,
        prefetch_concurrency = settings.prefetch_concurrency,
        resumed = serve.init_answered,
        "serving"
    );
    Ok(Running {
        runtime,
        sessions,
        gate,
        core,
    })
}

/// The metrics and health endpoints, on the socket the supervisor bound (see `metrics::http`).
/// A failure here is logged, not fatal: the mount matters more than its metrics.
fn serve_metrics(
    settings: &MountSettings,
    serve: &Serve,
    running: &Running,
    listener: OwnedFd,
) -> Option<metrics::http::Server> {
    let registry = metrics::registry(metrics::Sources {
        cache: Some(running.core.cache().clone()),
        starts: serve.starts,
    });
    let health = metrics::health::Health::new(settings.mountpoint.clone(), settings.max_stale);
    let listener = std::net::TcpListener::from(listener);
    let cache = Some(running.core.cache().clone());
    metrics::http::spawn(listener, registry, health, cache, running.runtime.handle())
        .inspect_err(|e| tracing::warn!("cannot serve the metrics endpoint: {e}"))
        .ok()
}

/// Serve until told to stop (drain, say so, exit 0), until the connection ends (exit 0), or
/// until the supervisor is gone (exit 1: nothing would restart us). The process then exits
/// without tearing anything down: dropping the runtime or the session would answer requests
/// still in hand with EIO, which a successor should answer instead (or the kernel fail).
fn wait_for_the_end(
    settings: &MountSettings,
    control: &Channel,
    running: Running,
    http: Option<metrics::http::Server>,
) -> i32 {
    let code = serve_until_the_end(settings, control, &running, http.as_ref());
    std::mem::forget(running);
    code
}

fn serve_until_the_end(
    settings: &MountSettings,
    control: &Channel,
    running: &Running,
    http: Option<&metrics::http::Server>,
) -> i32 {
    loop {
        if running.sessions.iter().any(|s| s.guard.is_finished()) {
            tracing::info!("the connection ended (unmounted)");
            let _ = control.send(&FromWorker::Ended, &[]);
            return 0;
        }
        match control.recv::<ToWorker>(Some(Duration::from_millis(250))) {
            Ok(Received::TimedOut) => continue,
            Ok(Received::Message(ToWorker::Stop, _)) => {
                // The endpoints stop accepting first, so new connections queue for the
                // successor; what they hold is answered while the FUSE requests drain (no
                // answer there waits on the mount once stopping), and waited for after.
                if let Some(http) = http {
                    http.stop();
                }
                drain(settings, running);
                if let Some(http) = http {
                    http.finish(HTTP_STOP_TIMEOUT);
                }
                let _ = control.send(&FromWorker::Drained, &[]);
                return 0;
            }
            Ok(Received::Message(other, _)) => {
                tracing::warn!(message = ?other, "unexpected message from the supervisor");
            }
            Ok(Received::Closed) | Err(_) => {
                tracing::warn!("the supervisor went away; the worker stops");
                return 1;
            }
        }
    }
}

/// Stop taking requests and answer the ones in hand (see [`crate::fuse::gate`]).
fn drain(settings: &MountSettings, running: &Running) {
    // O_PATH: no OPENDIR request, just a handle on the mount's root to send GETATTRs to. (Not
    // kept open while serving: it would make the mount busy for `umount`.)
    let root = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(&settings.mountpoint)
            .ok()
            .map(OwnedFd::from)
    };
    let threads = running.sessions.len();
    let stopped = running.gate.close(
        threads,
        || {
            if let Some(root) = &root {
                gate::wake_session_threads(root.as_fd(), threads);
            }
        },
        DRAIN_TIMEOUT,
    );
    // Changes seen from now on are the successor's to tell the kernel about.
    running.core.cache().set_change_listener(Arc::new(|_| {}));
    if !stopped {
        let (parked, owed) = running.gate.state();
        tracing::warn!(
            parked,
            owed,
            "could not stop every session thread in time; the successor has unanswered requests resent"
        );
    }
}

/// `--hang-timeout` as the kernel takes it: whole seconds, rounded up, at most u16::MAX
/// (about 18 h); `None` for zero (off).
fn hang_timeout_seconds(timeout: Duration) -> Option<u16> {
    if timeout.is_zero() {
        return None;
    }
    let seconds = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    Some(u16::try_from(seconds).unwrap_or(u16::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hang_timeout_in_whole_seconds_rounded_up() {
        assert_eq!(hang_timeout_seconds(Duration::ZERO), None);
        assert_eq!(hang_timeout_seconds(Duration::from_millis(1)), Some(1));
        assert_eq!(hang_timeout_seconds(Duration::from_secs(120)), Some(120));
        assert_eq!(hang_timeout_seconds(Duration::from_millis(1500)), Some(2));
        assert_eq!(
            hang_timeout_seconds(Duration::from_secs(86_400)),
            Some(u16::MAX)
        );
    }

    fn scope(vault: &str) -> String {
        token_scope(&crate::cli::mount_settings([vault, "/mnt/kv"], 0, 0).unwrap())
    }

    #[test]
    fn the_first_token_is_for_the_vaults_own_cloud() {
        assert_eq!(scope("myvault"), "https://vault.azure.net/.default");
        assert_eq!(
            scope("https://myvault.vault.azure.cn"),
            "https://vault.azure.cn/.default"
        );
        assert_eq!(
            scope("https://myvault.vault.usgovcloudapi.net/"),
            "https://vault.usgovcloudapi.net/.default"
        );
        assert_eq!(
            scope("https://127.0.0.1:8443"),
            "https://vault.azure.net/.default"
        );
    }
}
