//! Running a mount: check the mountpoint (recovering a stale one), build the credential, vault
//! client, cache and filesystem, mount with fuser, report readiness, then serve until SIGTERM or
//! SIGINT (or an external unmount) and unmount cleanly.

use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{self, AuthRequest, Env, Limits};
use crate::cli::{AuthMethod, MountSettings};
use crate::fs::cache::{Cache, CacheConfig};
use crate::fs::core::{FsCore, Ownership};
use crate::fuse::FuseAdapter;
use crate::invalidate::Invalidator;
use crate::vault::azure::{self, AzureVault, AzureVaultOptions};

/// Environment variable naming the fd a detached child reports readiness on (see `daemon`).
pub const READY_FD_ENV: &str = "KVFS_READY_FD";

/// Reports the outcome of mounting to whoever waits for it (the detaching parent), once.
pub struct Readiness {
    pipe: Option<std::fs::File>,
}

impl Readiness {
    /// From `KVFS_READY_FD`, when this process is the detached child.
    pub fn from_env() -> Readiness {
        let pipe = std::env::var(READY_FD_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|fd| *fd > 2)
            // SAFETY: the parent passed this fd for us alone and nothing else in this process
            // owns it; we take ownership exactly once.
            .map(|fd| unsafe { std::fs::File::from_raw_fd(fd) });
        // SAFETY: no other thread is running yet (called first thing in main).
        unsafe { std::env::remove_var(READY_FD_ENV) };
        Readiness { pipe }
    }

    pub fn none() -> Readiness {
        Readiness { pipe: None }
    }

    fn send(&mut self, line: &str) {
        if let Some(mut p) = self.pipe.take() {
            let _ = writeln!(p, "{line}");
        }
    }

    pub fn ready(&mut self) {
        self.send("ready");
    }

    pub fn failed(&mut self, reason: &str) {
        self.send(&format!("error: {reason}"));
    }
}

/// A mountpoint left behind by a killed daemon answers stat() with ENOTCONN. Detach it so we
/// can mount again; if that is not possible, say exactly what to run.
fn prepare_mountpoint(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("mountpoint {} is not a directory", path.display())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(mountpoint = %path.display(), "stale FUSE mount found (Transport endpoint is not connected); detaching it");
            detach(path).map_err(|e| {
                format!(
                    "mountpoint {} is a stale FUSE mount and could not be detached ({e}); run `umount -l {}` and retry",
                    path.display(),
                    path.display()
                )
            })?;
            match std::fs::metadata(path) {
                Ok(m) if m.is_dir() => Ok(()),
                _ => Err(format!(
                    "mountpoint {} is still unusable after detaching a stale mount; run `umount -l {}` and retry",
                    path.display(),
                    path.display()
                )),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("mountpoint {} does not exist", path.display()))
        }
        Err(e) => Err(format!("mountpoint {}: {e}", path.display())),
    }
}

fn c_path(path: &Path) -> Result<std::ffi::CString, String> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))
}

/// Lazy unmount (MNT_DETACH), as `umount -l`.
fn detach(path: &Path) -> Result<(), String> {
    let c = c_path(path)?;
    // SAFETY: c is a valid NUL-terminated path for the duration of the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

/// `kvfs unmount`: a plain unmount; busy mounts are reported, not forced.
pub fn unmount(path: &Path) -> Result<(), String> {
    let c = c_path(path)?;
    // SAFETY: as above.
    let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::EBUSY) => format!(
            "{} is busy: close the files open on it, or detach it with `umount -l {}`",
            path.display(),
            path.display()
        ),
        Some(libc::EINVAL) => format!("{} is not a mount point", path.display()),
        Some(libc::EPERM) => format!(
            "not permitted to unmount {}: run as root (or `fusermount3 -u {}`)",
            path.display(),
            path.display()
        ),
        _ => format!("cannot unmount {}: {e}", path.display()),
    })
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

/// Mount and serve in this process until a signal or an external unmount.
pub fn run(settings: MountSettings, mut readiness: Readiness) -> Result<(), String> {
    let result = mount_and_serve(&settings, &mut readiness);
    if let Err(e) = &result {
        readiness.failed(e);
    }
    result
}

fn mount_and_serve(settings: &MountSettings, readiness: &mut Readiness) -> Result<(), String> {
    prepare_mountpoint(&settings.mountpoint)?;
    let extra_ca = read_ca_files(settings)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kvfs")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let timeout = Duration::from_secs(10);
    let http = azure::http_client(&extra_ca, timeout)?;
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
    let credential = runtime
        .block_on(auth::select(&request, &env, &http, &Limits::default()))?
        .credential;
    let vault = {
        let _guard = runtime.enter();
        AzureVault::new(AzureVaultOptions {
            vault_url: settings.vault_url.clone(),
            credential,
            extra_ca_pem: extra_ca,
            verify_challenge_resource: settings.verify_challenge_resource,
            request_timeout: timeout,
            max_retries: 2,
        })?
    };
    let cache = Cache::new(
        Arc::new(vault),
        CacheConfig {
            ttl: settings.cache_ttl,
            max_stale: settings.max_stale,
            max_entries: 100_000,
            max_bytes: 256 * 1024 * 1024,
        },
    );
    {
        // Keeps the entries being read fresh ahead of expiry (one list per collection and TTL
        // instead of a GET per object); ends when the cache is dropped.
        let _guard = runtime.enter();
        cache.start_refresher();
    }
    let core = Arc::new(FsCore::with_open_mode(
        cache,
        Ownership {
            uid: settings.uid,
            gid: settings.gid,
            file_mode: settings.file_mode,
            dir_mode: settings.dir_mode,
        },
        settings.cache_ttl,
        settings.open_mode,
    ));
    let adapter = FuseAdapter::new(core.clone(), runtime.handle().clone());

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!(
            "kvfs:{}",
            settings.vault_url.host_str().unwrap_or("vault")
        )),
        fuser::MountOption::Subtype("kvfs".into()),
        fuser::MountOption::RO,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoExec,
        // The kernel checks modes and owners, so 0400 files owned by the mounting user mean
        // what they say.
        fuser::MountOption::DefaultPermissions,
    ];
    // Two session threads (each with its own /dev/fuse clone): one slow request, such as a
    // render, never holds up the rest, and warm answers are given on these threads directly.
    config.n_threads = Some(
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 4),
    );
    config.clone_fd = true;
    config.acl = if settings.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    // Catch SIGTERM/SIGINT before the mount exists: a signal that arrives while mounting, or
    // right after, must unmount cleanly rather than kill the process and leave a stale mount.
    let (mut term, mut int) = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        Ok::<_, String>((term, int))
    })?;
    let session = fuser::Session::new(adapter, &settings.mountpoint, &config)
        .map_err(|e| format!("cannot mount {}: {e}", settings.mountpoint.display()))?;
    // What the cache learns changed (a refresh brought a new version, an object went away), the
    // kernel forgets at once.
    let invalidator = Invalidator::start(&core, session.notifier());
    core.cache()
        .set_change_listener(Arc::new(move |change| invalidator.changed(change)));
    let background = session.spawn().map_err(|e| {
        format!(
            "cannot start serving {}: {e}",
            settings.mountpoint.display()
        )
    })?;
    tracing::info!(
        vault = %settings.vault_url,
        mountpoint = %settings.mountpoint.display(),
        cache_ttl = ?settings.cache_ttl,
        open_mode = ?settings.open_mode,
        "mounted"
    );
    readiness.ready();

    let stop = runtime.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = term.recv() => return Ok::<&str, String>("SIGTERM"),
                _ = int.recv() => return Ok("SIGINT"),
                _ = tick.tick() => {
                    if background.guard.is_finished() {
                        return Ok("external unmount");
                    }
                }
            }
        }
    })?;
    tracing::info!(reason = stop, "unmounting");
    if stop == "external unmount" {
        background
            .join()
            .map_err(|e| format!("session ended with an error: {e}"))?;
    } else {
        background
            .umount_and_join()
            .map_err(|e| format!("cannot unmount {}: {e}", settings.mountpoint.display()))?;
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
