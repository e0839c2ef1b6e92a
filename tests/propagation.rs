//! Kubernetes mount propagation without a cluster: mount namespaces play the node and a pod.
//!
//! The node's `/var/lib/kvfs` is a temporary directory made a mount point of its own with
//! `rshared` propagation (what a DaemonSet's `mountPropagation: Bidirectional` hostPath needs on
//! the host). A "pod" mount namespace is started *before* kvfs mounts, with slave propagation,
//! and binds the hostPath into a path of its own and makes it `rslave`, as the container runtime
//! does for a `mountPropagation: HostToContainer` volume. Then kvfs mounts the vault under the
//! hostPath in the node's namespace, and the test shows, from inside the pod's namespace:
//!
//! - the mount arrived there (its files list and read), though the pod's namespace predates it;
//! - a single-file bind mount made inside the pod (what kubelet makes for a `subPath`) follows a
//!   rotation of its secret;
//! - nothing flows back: a mount made inside the pod, under its view of the hostPath, does not
//!   appear on the node (that is what `rslave` means, and why consumers cannot disturb the node).
//!
//! The sidecar (packaging/kubernetes/sidecar) the same way: kvfs, in a "sidecar container"
//! namespace whose copy of an emptyDir is in the node's peer group (Bidirectional), mounts on that
//! emptyDir; the mount shows on the node, and an "app container" namespace that then binds the
//! emptyDir in as rslave (HostToContainer) reads the vault through it.
//!
//! Real FUSE mounts of a testvault; needs root, /dev/fuse, `unshare` and `nsenter`, as CI has.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    KVFS, is_mounted, kvfs_env, kvfs_pids_for, mount_args, mount_detached, start_vault, succeed,
    wait_until,
};

/// The bounded wait for anything the test polls for.
const WAIT: Duration = Duration::from_secs(20);

/// A directory bind-mounted on itself (so that it is a mount point of its own), lazily unmounted
/// with everything under it on drop.
struct SelfBind(PathBuf);

impl SelfBind {
    /// Bind `dir` on itself and give the new mount point `propagation` (`--make-rshared`,
    /// `--make-private`, ...).
    fn new(dir: &Path, propagation: &str) -> SelfBind {
        succeed(Command::new("mount").arg("--bind").arg(dir).arg(dir));
        let bind = SelfBind(dir.to_path_buf());
        succeed(Command::new("mount").arg(propagation).arg(dir));
        bind
    }
}

impl Drop for SelfBind {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A detached kvfs mount at a path: on drop, `kvfs unmount` if it is still mounted, a lazy
/// unmount should that fail, and SIGKILL for any kvfs process still naming the path.
struct NodeMount(PathBuf);

impl Drop for NodeMount {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new(KVFS)
                .arg("unmount")
                .arg(&self.0)
                .stderr(Stdio::null())
                .status();
        }
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
        for pid in kvfs_pids_for(&self.0) {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A mount namespace kept alive by one process (`cat` on a pipe from us). Dropping it kills that
/// process, and with the last process of the namespace every mount made inside it goes. Should
/// the test process die instead, the pipe closes and `cat` exits by itself.
struct Pod {
    child: Child,
}

impl Pod {
    /// A new mount namespace started with `unshare --propagation PROPAGATION`: `slave` (its
    /// mounts are all slaves of ours) or `unchanged` (its copies of our shared mounts are in their
    /// peer groups).
    fn start(propagation: &str) -> Pod {
        let mut child = Command::new("unshare")
            .args(["-m", "--propagation", propagation, "--", "sh", "-c"])
            .arg("echo ready; exec cat >/dev/null")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the pod's first line");
        let pod = Pod { child };
        assert_eq!(line.trim(), "ready", "unshare -m failed to start the pod");
        pod
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `nsenter` into the pod's mount namespace to run `program args`.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.pid().to_string())
            .arg("-m")
            .arg("--")
            .arg(program);
        c
    }

    /// Run `program args` in the pod; it must succeed.
    fn run(&self, program: &str, args: &[&Path]) -> String {
        let out = succeed(self.command(program).args(args));
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Read a file from inside the pod.
    fn read(&self, path: &Path) -> Result<String, String> {
        let out = self
            .command("cat")
            .arg(path)
            .output()
            .expect("nsenter runs");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The pod's mount table (`/proc/PID/mountinfo`).
    fn mountinfo(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid())).expect("mountinfo")
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The optional fields (`shared:N`, `master:N`, ...) of the mount at `path` in `mountinfo`, of
/// the topmost mount there; `None` if nothing is mounted at `path`.
fn propagation_of(mountinfo: &str, path: &Path) -> Option<String> {
    let wanted = path.display().to_string();
    mountinfo
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
        .map(|l| {
            l.split(' ')
                .skip(6)
                .take_while(|f| *f != "-")
                .collect::<Vec<_>>()
                .join(" ")
        })
}

/// The file system type of the topmost mount at `path` in `mountinfo`.
fn fs_type_of(mountinfo: &str, path: &Path) -> Option<String> {
    let wanted = path.display().to_string();
    let line = mountinfo
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(wanted.as_str()))?;
    let (_, after) = line.split_once(" - ")?;
    after.split(' ').next().map(str::to_string)
}

fn mount_ns(pid: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).expect("the mount namespace")
}

#[test]
fn a_node_mount_reaches_a_pod_started_before_it_and_nothing_flows_back() {
    let vault = start_vault();

    // The node: /var/lib/kvfs as an rshared mount point.
    let node = tempfile::tempdir().unwrap();
    let host_path = node.path().join("var-lib-kvfs");
    std::fs::create_dir(&host_path).unwrap();
    let _host_bind = SelfBind::new(&host_path, "--make-rshared");
    let vault_dir = host_path.join("myvault");
    std::fs::create_dir(&vault_dir).unwrap();
    // Directories the pods will mount over, to show whose mounts reach the node.
    let probe = host_path.join("probe");
    std::fs::create_dir(&probe).unwrap();
    let bidirectional_probe = host_path.join("probe-bidirectional");
    std::fs::create_dir(&bidirectional_probe).unwrap();
    // Where the pod's volumes and its subPath file go (directories of the "node", as kubelet's):
    // the vault's directory (the consumers' hostPath /var/lib/kvfs/<vault>), and its parent.
    let pod_root = node.path().join("pod");
    let pod_vault = pod_root.join("vault");
    let pod_volume = pod_root.join("var-lib-kvfs");
    let pod_sub_path = pod_root.join("api-key");
    std::fs::create_dir_all(&pod_vault).unwrap();
    std::fs::create_dir_all(&pod_volume).unwrap();
    std::fs::write(&pod_sub_path, "").unwrap();
    assert!(
        propagation_of(
            &std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
            &host_path
        )
        .is_some_and(|p| p.contains("shared:")),
        "the node's hostPath is not a shared mount"
    );

    // Declared before the pod so that it is dropped after it: the pod's copies go first.
    let _node_mount = NodeMount(vault_dir.clone());

    // The pod, started before kvfs mounts; its runtime binds the hostPaths in as rslave
    // (HostToContainer): the vault's directory, still empty, and /var/lib/kvfs.
    let pod = Pod::start("slave");
    assert_ne!(
        mount_ns(&pod.pid().to_string()),
        mount_ns("self"),
        "the pod has a mount namespace of its own"
    );
    for (source, target) in [(&vault_dir, &pod_vault), (&host_path, &pod_volume)] {
        pod.run("mount", &[Path::new("--rbind"), source, target]);
        pod.run("mount", &[Path::new("--make-rslave"), target]);
        let pod_view = propagation_of(&pod.mountinfo(), target)
            .expect("the pod's volume is a mount point in the pod");
        assert!(
            pod_view.contains("master:") && !pod_view.contains("shared:"),
            "the pod's {} is not a slave of the node's hostPath: `{pod_view}`",
            target.display()
        );
        assert!(
            !is_mounted(target),
            "the pod's volume mount leaked to the node"
        );
    }

    // The node mounts the vault under the hostPath (as the DaemonSet's kvfs does).
    let (log, _logs) = common::log_file();
    let log_arg = log.display().to_string();
    mount_detached(
        &vault,
        &vault_dir,
        &["--cache-ttl", "1s", "--allow-other", "--log-file", &log_arg],
        kvfs_env(&vault),
    );
    assert!(is_mounted(&vault_dir), "kvfs did not mount on the node");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // The pod sees it, in both volumes, and reads through it.
    wait_until("the vault mount to reach the pod", WAIT, || {
        let mounts = pod.mountinfo();
        [&pod_vault, &pod_volume.join("myvault")]
            .iter()
            .all(|p| fs_type_of(&mounts, p).is_some_and(|t| t.starts_with("fuse")))
    });
    assert_eq!(
        pod.read(&pod_volume.join("myvault/secrets/api-key")),
        Ok("sk_test_4eC39HqLyjWDarjtT1zdp7dc".to_string()),
        "reading in the pod's /var/lib/kvfs: {}",
        log_text()
    );
    let listing = pod.run("ls", &[&pod_vault.join("secrets")]);
    for name in ["db-password", "api-key", "connection-string"] {
        assert!(
            listing.lines().any(|l| l == name),
            "`ls secrets` in the pod lacks {name}: {listing:?}\n{}",
            log_text()
        );
    }
    assert_eq!(
        pod.read(&pod_vault.join("secrets/db-password")),
        Ok("c0rrect-h0rse-battery-staple".to_string()),
        "reading in the pod: {}",
        log_text()
    );

    // subPath: one secret bound onto a file inside the pod, read through the bind.
    pod.run(
        "mount",
        &[
            Path::new("--bind"),
            &pod_vault.join("secrets/api-key"),
            &pod_sub_path,
        ],
    );
    assert!(
        !is_mounted(&pod_sub_path),
        "the pod's subPath bind mount leaked to the node"
    );
    assert_eq!(
        pod.read(&pod_sub_path),
        Ok("sk_test_4eC39HqLyjWDarjtT1zdp7dc".to_string()),
        "reading the subPath file: {}",
        log_text()
    );
    vault
        .set_secret("api-key", "rotated-after-the-bind")
        .unwrap();
    wait_until("the subPath file to show the rotated secret", WAIT, || {
        pod.read(&pod_sub_path).as_deref() == Ok("rotated-after-the-bind")
    });
    // The node's own path reads the same value.
    assert_eq!(
        std::fs::read_to_string(vault_dir.join("secrets/api-key")).unwrap(),
        "rotated-after-the-bind"
    );

    // Nothing flows back: a mount inside the pod, under its view of the hostPath, stays there.
    pod.run(
        "mount",
        &[
            Path::new("-t"),
            Path::new("tmpfs"),
            Path::new("pod-only"),
            &pod_volume.join("probe"),
        ],
    );
    pod.run("touch", &[&pod_volume.join("probe/made-in-the-pod")]);
    assert!(
        propagation_of(&pod.mountinfo(), &pod_volume.join("probe")).is_some(),
        "the pod's own mount is not there in the pod"
    );
    assert!(
        !is_mounted(&probe),
        "a mount made in the pod appeared on the node"
    );
    assert!(
        !probe.join("made-in-the-pod").exists(),
        "a file in the pod's own mount shows on the node"
    );

    // The contrast, which shows the check above can see a leak: a namespace whose copy of the
    // hostPath is in the node's peer group (Bidirectional, as the DaemonSet's) does send its
    // mounts to the node.
    let daemon = Pod::start("unchanged");
    daemon.run(
        "mount",
        &[
            Path::new("-t"),
            Path::new("tmpfs"),
            Path::new("daemon-made"),
            &bidirectional_probe,
        ],
    );
    wait_until(
        "a mount made with Bidirectional propagation to reach the node",
        WAIT,
        || is_mounted(&bidirectional_probe),
    );
    drop(daemon);
    succeed(Command::new("umount").arg(&bidirectional_probe));

    // The pod goes (its mounts with it), then the node unmounts cleanly.
    drop(pod);
    common::unmount(&vault_dir);
    wait_until("the node's mount to go", WAIT, || !is_mounted(&vault_dir));
    wait_until("the node's kvfs to exit", WAIT, || {
        kvfs_pids_for(&vault_dir).is_empty()
    });
}

/// A kvfs in a mount namespace of its own (the sidecar container): SIGTERM on drop, SIGKILL if it
/// does not exit within the bounded wait.
struct Sidecar {
    child: Option<Child>,
    log: PathBuf,
    _logs: Option<tempfile::TempDir>,
}

impl Sidecar {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; the exit status, within the bounded wait.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let mut status = None;
        wait_until("the sidecar's kvfs to exit after SIGTERM", WAIT, || {
            status = child.try_wait().expect("wait");
            status.is_some()
        });
        status.expect("exited")
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: as above.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let start = std::time::Instant::now();
            while child.try_wait().ok().flatten().is_none() && start.elapsed() < WAIT {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn a_sidecar_mount_on_an_empty_dir_reaches_the_app_container() {
    let vault = start_vault();
    let node = tempfile::tempdir().unwrap();

    // The node: kubelet's directory is an rshared mount point (kubelet makes it so), and the
    // pod's emptyDir a plain directory in it.
    let kubelet = node.path().join("var-lib-kubelet");
    std::fs::create_dir(&kubelet).unwrap();
    let _kubelet_bind = SelfBind::new(&kubelet, "--make-rshared");
    let empty_dir = kubelet.join("pods/0000/volumes/kubernetes.io~empty-dir/vault");
    std::fs::create_dir_all(&empty_dir).unwrap();
    // The containers' root file systems: private mount points, so that what the containers mount
    // there stays in their namespaces, as in a container runtime.
    let sidecar_root = node.path().join("sidecar-rootfs");
    let app_root = node.path().join("app-rootfs");
    let mut roots = Vec::new();
    for root in [&sidecar_root, &app_root] {
        std::fs::create_dir_all(root.join("vault")).unwrap();
        roots.push(SelfBind::new(root, "--make-private"));
    }
    let sidecar_vault = sidecar_root.join("vault");
    let app_vault = app_root.join("vault");

    // The sidecar container: its copies of the node's shared mounts stay in their peer groups
    // (a runtime does this for a pod with a Bidirectional mount); it binds the emptyDir in,
    // rshared, and kvfs mounts on it.
    let (log, logs) = common::log_file();
    let mut kvfs = vec![KVFS.to_string()];
    kvfs.extend(mount_args(
        &vault,
        &sidecar_vault,
        &["--cache-ttl", "1s", "--allow-other"],
    ));
    kvfs.push("--foreground".into());
    let child = Command::new("unshare")
        .args(["-m", "--propagation", "unchanged", "--", "sh", "-c"])
        .arg(r#"mount --rbind "$1" "$2" && mount --make-rshared "$2" && shift 2 && exec "$@""#)
        .arg("sidecar")
        .arg(&empty_dir)
        .arg(&sidecar_vault)
        .args(&kvfs)
        .envs(kvfs_env(&vault))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("unshare runs");
    let mut sidecar = Sidecar {
        child: Some(child),
        log,
        _logs: logs,
    };

    // Bidirectional: the mount shows on the node, at the emptyDir.
    wait_until(
        "the sidecar's mount to reach the node's emptyDir",
        WAIT,
        || {
            if let Some(status) = sidecar
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("the sidecar exited ({status}): {}", sidecar.log_text());
            }
            fs_type_of(
                &std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
                &empty_dir,
            )
            .is_some_and(|t| t.starts_with("fuse"))
        },
    );
    assert!(
        !is_mounted(&sidecar_vault),
        "the sidecar's own bind of the emptyDir leaked to the node"
    );

    // The app container, started once the sidecar serves (its startupProbe): HostToContainer.
    let app = Pod::start("slave");
    app.run("mount", &[Path::new("--rbind"), &empty_dir, &app_vault]);
    app.run("mount", &[Path::new("--make-rslave"), &app_vault]);
    assert!(
        fs_type_of(&app.mountinfo(), &app_vault).is_some_and(|t| t.starts_with("fuse")),
        "the app does not see the sidecar's mount: {:?}",
        fs_type_of(&app.mountinfo(), &app_vault)
    );
    assert_eq!(
        app.read(&app_vault.join("secrets/db-password")),
        Ok("c0rrect-h0rse-battery-staple".to_string()),
        "reading in the app: {}",
        sidecar.log_text()
    );
    vault
        .set_secret("db-password", "rotated-for-the-app")
        .unwrap();
    wait_until("the app to read the rotated secret", WAIT, || {
        app.read(&app_vault.join("secrets/db-password")).as_deref() == Ok("rotated-for-the-app")
    });

    // The pod ends: the app goes, then the sidecar's SIGTERM unmounts, on the node too.
    drop(app);
    let status = sidecar.stop();
    assert!(
        status.success(),
        "the sidecar's kvfs {status}: {}",
        sidecar.log_text()
    );
    wait_until("the emptyDir's mount to go from the node", WAIT, || {
        !fs_type_of(
            &std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
            &empty_dir,
        )
        .is_some_and(|t| t.starts_with("fuse"))
    });
}
