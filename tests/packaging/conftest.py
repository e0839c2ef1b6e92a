"""Fixtures for the packaging tests: the packages scripts/package made, and a testvault.

Everything runs on loopback: testvault listens on 127.0.0.1 only, and the container shares the
host's network. Every wait is bounded and polled; mounts, containers and temporary directories
are cleaned up by the fixtures whether the test passed or not.
"""

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
PACKAGE = TARGET / "package"
SEED = REPO / "tests" / "testvault" / "seed" / "sample.json"
# A closed loopback port: should kvfs ever fall through to the managed-identity probe, it is
# refused on loopback instead of leaving the machine.
NO_IMDS = "http://127.0.0.1:9"


def cargo_version() -> str:
    out = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1"],
        cwd=REPO, check=True, capture_output=True, text=True).stdout
    return next(p for p in json.loads(out)["packages"] if p["name"] == "kvfs")["version"]


def wait_until(what: str, timeout: float, check, interval: float = 0.05):
    """Poll `check` until it returns a true value (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def mounts_at(path: Path) -> list[str]:
    """The filesystem types mounted at `path` in this (the host's) mount namespace, in order."""
    wanted = str(path)
    types = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[4] == wanted:
                types.append(fields[sep + 1])
    return types


def kvfs_mounted(path: Path) -> bool:
    return "fuse.kvfs" in mounts_at(path)


def read_or_none(path: Path):
    try:
        return path.read_text()
    except OSError:
        return None


def log_path(name: str) -> tuple[Path, Path | None]:
    """Where a kvfs log goes: $KVFS_TEST_LOG_DIR when set (scripts/audit-logs then searches it
    for the values and tokens the run used), else a temporary directory (returned, to remove)."""
    shared = os.environ.get("KVFS_TEST_LOG_DIR")
    if shared:
        Path(shared).mkdir(parents=True, exist_ok=True)
        return Path(shared) / f"packaging-{name}-{os.getpid()}.log", None
    tmp = Path(tempfile.mkdtemp(prefix="kvfs-pkg-log-"))
    return tmp / f"{name}.log", tmp


class Packages:
    def __init__(self):
        self.version = cargo_version()
        self.dir = PACKAGE
        self.layout = PACKAGE / "oci"
        self.archive = PACKAGE / f"kvfs_{self.version}_oci.tar"
        self.rootfs = PACKAGE / "rootfs"
        debs = sorted(PACKAGE.glob(f"kvfs_{self.version}-*.deb"))
        self.deb = debs[-1] if debs else None
        self.binary = TARGET / "release" / "kvfs"


@pytest.fixture(scope="session")
def packages() -> Packages:
    """The image and the .deb: made by scripts/package (the driver, scripts/test-packaging, runs
    it first and sets KVFS_PACKAGED=1; run alone, pytest runs it here)."""
    if os.environ.get("KVFS_PACKAGED") != "1":
        subprocess.run([str(REPO / "scripts" / "package")], cwd=REPO, check=True)
    p = Packages()
    assert (p.layout / "index.json").is_file(), "scripts/package made no image layout"
    assert p.deb is not None, "scripts/package made no .deb"
    return p


def testvault_binary() -> Path:
    explicit = os.environ.get("TESTVAULT_BIN")
    if explicit:
        return Path(explicit)
    for profile in ("debug", "release"):
        candidate = TARGET / profile / "testvault"
        if candidate.exists():
            return candidate
    raise RuntimeError("testvault binary not found: run `cargo build -p testvault`")


class Vault:
    """A running testvault (sample seed) and the JSON line it printed."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [str(testvault_binary()), "--seed", str(SEED)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            raise RuntimeError("testvault did not start")
        self.info = json.loads(line)
        self.url = self.info["vault_url"]
        self.ca_file = self.info["ca_file"]
        self._ssl = ssl.create_default_context(cafile=self.ca_file)

    def control(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.info["control_url"] + path, data=data, method=method,
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self._ssl, timeout=10) as r:
            return json.loads(r.read() or b"null")

    def set_secret(self, name: str, value: str):
        """A new current version of secret `name` (what a rotation does)."""
        self.control("POST", "/seed", {"secrets": [{"name": name, "value": value}]})

    def secret_value(self, name: str) -> str:
        with open(SEED) as f:
            return next(s["value"] for s in json.load(f)["secrets"] if s["name"] == name)

    def env(self) -> dict:
        """The environment of a client-secret kvfs against this vault."""
        return {
            "AZURE_TENANT_ID": self.info["tenant_id"],
            "AZURE_CLIENT_ID": self.info["client_id"],
            "AZURE_CLIENT_SECRET": self.info["client_secret"],
            "AZURE_AUTHORITY_HOST": self.info["authority_host"],
            "KVFS_IMDS_ENDPOINT": NO_IMDS,
        }

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def vault():
    v = Vault()
    try:
        yield v
    finally:
        v.stop()


def unmount_all(path: Path):
    """Unmount everything stacked on `path` (lazily: a dead FUSE mount must not block cleanup)."""
    for _ in range(8):
        if not mounts_at(path):
            return
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def workdir():
    """A temporary directory, removed at the end with whatever is still mounted under it."""
    d = Path(tempfile.mkdtemp(prefix="kvfs-pkg-"))
    try:
        yield d
    finally:
        with open("/proc/self/mountinfo") as f:
            below = [line.split()[4] for line in f if line.split()[4].startswith(str(d) + "/")]
        for m in sorted(below, key=len, reverse=True):
            unmount_all(Path(m))
        unmount_all(d)
        shutil.rmtree(d, ignore_errors=True)


def kvfs_processes_on(mountpoint: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"kvfs") and str(mountpoint).encode() in args:
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="session")
def installed(packages):
    """The .deb installed with dpkg -i for the session, removed (dpkg -r) at its end."""
    if subprocess.run(["dpkg", "-s", "kvfs"], capture_output=True).returncode == 0:
        # Left by a run that was killed before its dpkg -r (the test machines are disposable).
        print("removing an installed kvfs package first")
        subprocess.run(["dpkg", "-r", "kvfs"], check=True, capture_output=True)
    subprocess.run(["dpkg", "-i", str(packages.deb)], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["dpkg", "-r", "kvfs"], check=True, capture_output=True)
        assert not Path("/usr/bin/kvfs").exists()
        assert not os.path.lexists("/sbin/mount.fuse.kvfs")
