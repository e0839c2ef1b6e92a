"""The OCI image: what it holds, and a real OCI runtime (runc) running it.

The container test is the deployment of packaging/container/README.md in miniature: kvfs runs
inside the container, privileged with /dev/fuse and the host's network, and mounts the vault on a
host directory bind-mounted with rshared propagation; the host (this test) reads a secret through
that mount, sees a rotation, and after the container's SIGTERM the mount is gone.
"""

import json
import shutil
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import kvfs_mounted, log_path, mounts_at, read_or_none, wait_until

MOUNT_IN_CONTAINER = "/mnt/kv"
CA_IN_CONTAINER = "/etc/kvfs/testvault-ca.pem"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def blob(layout: Path, descriptor: dict) -> Path:
    algo, digest = descriptor["digest"].split(":", 1)
    return layout / "blobs" / algo / digest


def image_parts(packages):
    """The manifest, config and layer list of the image tagged with the crate's version."""
    index = json.loads((packages.layout / "index.json").read_text())
    tagged = [m for m in index["manifests"]
              if m.get("annotations", {}).get("org.opencontainers.image.ref.name")
              == packages.version]
    assert len(tagged) == 1, f"no single manifest tagged {packages.version}: {index}"
    manifest = json.loads(blob(packages.layout, tagged[0]).read_text())
    config = json.loads(blob(packages.layout, manifest["config"]).read_text())
    return manifest, config


def test_image_is_the_binary_its_libraries_and_the_ca_bundle(packages):
    manifest, config = image_parts(packages)
    labels = config["config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == packages.version
    assert labels["org.opencontainers.image.title"] == "kvfs"
    assert labels["org.opencontainers.image.licenses"] == "MIT"
    assert labels["org.opencontainers.image.description"]
    shipped = dict(p.split("=", 1) for p in labels["kvfs.debian-packages"].split())
    assert {"libc6", "libssl3", "ca-certificates"} <= set(shipped), shipped
    assert "unknown" not in shipped.values(), shipped
    assert config["config"]["Entrypoint"] == ["/usr/bin/kvfs"]
    # Manifests that run the command `kvfs` (packaging/kubernetes) find it on the image's PATH.
    path = next(e for e in config["config"]["Env"] if e.startswith("PATH="))
    assert "/usr/bin" in path.removeprefix("PATH=").split(":"), path
    assert config["config"]["StopSignal"] == "SIGTERM"
    assert (config["os"], config["architecture"]) == ("linux", "amd64")

    # One layer, and in it exactly: the binary, the libraries ldd names and the loader, the CA
    # bundle, and empty directories.
    assert len(manifest["layers"]) == 1
    with tarfile.open(blob(packages.layout, manifest["layers"][0]), "r:gz") as t:
        members = t.getmembers()
    files = {"/" + m.name.lstrip("./") for m in members if m.isfile()}
    ldd = subprocess.run(["ldd", str(packages.binary)], check=True, capture_output=True,
                         text=True).stdout
    libs = set()
    for line in ldd.splitlines():
        parts = line.split()
        if "=>" in parts and parts[parts.index("=>") + 1].startswith("/"):
            libs.add(parts[parts.index("=>") + 1])
        elif parts and parts[0].startswith("/"):
            libs.add(parts[0])
    assert any("ld-linux" in lib for lib in libs) and any("libssl" in lib for lib in libs)
    assert files == {"/usr/bin/kvfs", "/etc/ssl/certs/ca-certificates.crt"} | libs, files
    dirs = {"/" + m.name.lstrip("./").rstrip("/") for m in members if m.isdir()}
    assert {"/run/kvfs", "/tmp", "/mnt", "/proc", "/dev", "/sys"} <= dirs
    assert all(m.uid == 0 and m.gid == 0 for m in members)

    # The oci-archive holds the same layout.
    with tarfile.open(packages.archive) as t:
        names = set(t.getnames())
    assert {"./index.json", "./oci-layout"} <= names
    assert f"./blobs/sha256/{manifest['layers'][0]['digest'].split(':')[1]}" in names


def runtime_spec(spec: dict, vault, host_dir: Path, args: list[str], ca_at: str) -> dict:
    """Turn umoci's generated runtime config into a privileged kvfs container: CAP_SYS_ADMIN,
    /dev/fuse, the host's network, the CA file (at `ca_at`) and the shared mount directory
    bound in."""
    process = spec["process"]
    process["terminal"] = False
    process["args"] = args
    # The image's environment (its PATH) as umoci put it in the runtime config, plus the test's.
    env = [e for e in process.get("env", []) if not e.startswith("AZURE_")]
    env += [f"{k}={v}" for k, v in vault.env().items()]
    env.append("KVFS_LOG=kvfs=debug,warn")
    process["env"] = env
    caps = process.setdefault("capabilities", {})
    for kind in ("bounding", "effective", "permitted"):
        have = caps.setdefault(kind, [])
        if "CAP_SYS_ADMIN" not in have:
            have.append("CAP_SYS_ADMIN")
    linux = spec["linux"]
    # The host's network: testvault listens on the host's 127.0.0.1.
    linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] != "network"]
    linux.setdefault("devices", []).append(
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666,
         "uid": 0, "gid": 0})
    resources = linux.setdefault("resources", {})
    resources.setdefault("devices", []).append(
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"})
    # What Docker and Kubernetes (mountPropagation: Bidirectional) do for an rshared volume.
    linux["rootfsPropagation"] = "rshared"
    # A read-only root filesystem (Kubernetes' readOnlyRootFilesystem): kvfs writes only its
    # control socket, under /run/kvfs, and nothing to /tmp; each gets a tmpfs.
    spec["root"]["readonly"] = True
    spec["mounts"] += [
        {"destination": "/run/kvfs", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "noexec", "mode=0700"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777"]},
    ]
    spec["mounts"] += [
        {"destination": MOUNT_IN_CONTAINER, "type": "bind", "source": str(host_dir),
         "options": ["rbind", "rshared", "rw"]},
        {"destination": ca_at, "type": "bind", "source": vault.ca_file,
         "options": ["bind", "ro"]},
    ]
    return spec


@pytest.fixture
def bundle(packages, workdir):
    """The image unpacked by umoci into a runtime bundle (rootfs + config.json)."""
    path = workdir / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{packages.layout}:{packages.version}",
                    str(path)], check=True, capture_output=True)
    return path


# How kvfs in the container trusts testvault's CA: --ca-file naming a bound file, or that CA bound
# over the image's system bundle (which shows that kvfs reads the bundle where the image has it).
TRUST = {
    "ca-file": (CA_IN_CONTAINER, ["--ca-file", CA_IN_CONTAINER]),
    "system-bundle": (SYSTEM_BUNDLE, []),
}


@pytest.mark.parametrize("trust", sorted(TRUST))
def test_runc_runs_the_image_and_the_host_reads_through_its_mount(packages, vault, bundle,
                                                                  workdir, trust):
    ca_at, ca_args = TRUST[trust]
    if shutil.which("runc") is None:
        pytest.fail("runc is not installed (apt-get install runc)")
    host_dir = workdir / "kv"
    host_dir.mkdir()
    # The host side of an rshared volume must itself be a shared mount (Docker refuses
    # otherwise); a bind mount of the directory onto itself makes one.
    subprocess.run(["mount", "--bind", str(host_dir), str(host_dir)], check=True)
    subprocess.run(["mount", "--make-shared", str(host_dir)], check=True)

    # The command as the Kubernetes manifests give it: `kvfs`, found on the image's PATH.
    args = ["kvfs", "mount", vault.url, MOUNT_IN_CONTAINER, "--foreground",
            "--auth", "client-secret", *ca_args,
            "--no-verify-challenge-resource", "--cache-ttl", "1s"]
    config = bundle / "config.json"
    config.write_text(json.dumps(runtime_spec(json.loads(config.read_text()), vault, host_dir,
                                              args, ca_at)))

    name = f"kvfs-test-{uuid.uuid4().hex[:12]}"
    log, log_tmp = log_path(f"container-{trust}")
    runc = ["runc"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(runc + ["run", "--bundle", str(bundle), name],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        def mounted():
            if proc.poll() is not None:
                raise AssertionError(f"the container exited ({proc.returncode}): "
                                     f"{read_or_none(log)}")
            return kvfs_mounted(host_dir)
        wait_until("the container's kvfs mount on the host", 30, mounted)

        secret = host_dir / "secrets" / "db-password"
        assert secret.read_text() == vault.secret_value("db-password")

        rotated = f"rotated-{uuid.uuid4().hex}"
        vault.set_secret("db-password", rotated)
        started = time.monotonic()
        wait_until("the rotated value through the container's mount", 20,
                   lambda: read_or_none(secret) == rotated, interval=0.2)
        print(f"rotation seen on the host after {time.monotonic() - started:.2f}s")

        # Stop: SIGTERM to the container's init (the kvfs supervisor), which unmounts.
        subprocess.run(runc + ["kill", name, "TERM"], check=True, capture_output=True)
        proc.wait(timeout=30)
        assert proc.returncode == 0, read_or_none(log)
        assert not kvfs_mounted(host_dir), mounts_at(host_dir)
        text = read_or_none(log) or ""
        assert vault.info["client_secret"] not in text and rotated not in text
    finally:
        if proc.poll() is None:
            subprocess.run(runc + ["kill", name, "KILL"], capture_output=True)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run(runc + ["delete", "--force", name], capture_output=True)
        if log_tmp is not None:
            shutil.rmtree(log_tmp, ignore_errors=True)
