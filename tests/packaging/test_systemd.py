"""The systemd units: `systemd-analyze verify`, and kvfs@.service's commands run as systemd would.

systemd is not PID 1 on the test machines, so no unit can be started. What can be checked is
checked: the units verify (as written in the repository, and as installed by the .deb), and
the installed kvfs@.service's ExecStartPre/ExecStart/ExecReload lines, expanded the way systemd
expands them (specifiers, Environment= then EnvironmentFile=, ${VAR} and $VAR), run with a
NOTIFY_SOCKET that this test reads: READY=1 from the main process, MAINPID= from a reload's
successor, and the unit's KillSignal ending the mount. Of the hardening, CapabilityBoundingSet=
and NoNewPrivileges= are applied (setpriv); the others (seccomp, device and address-family
filters) need systemd itself and are not exercised.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from conftest import (REPO, kvfs_mounted, kvfs_processes_on, log_path, mounts_at, read_or_none,
                      wait_until)

REPO_UNITS = ["kvfs@.service", "var-lib-kvfs-myvault.mount"]


def verify(paths: list[str]) -> str:
    done = subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True, text=True,
                          timeout=60)
    out = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and not out, out
    return out


def test_repository_units_verify(packages, workdir):
    """The units as written, before any install: `verify` checks that ExecStart's program exists,
    so /usr/bin/kvfs is pointed at the release binary in a copy of the unit."""
    for name in REPO_UNITS:
        text = (REPO / "packaging" / "systemd" / name).read_text()
        (workdir / name).write_text(text.replace("/usr/bin/kvfs", str(packages.binary)))
    verify([str(workdir / name) for name in REPO_UNITS])


def test_installed_units_verify(installed):
    verify(["/lib/systemd/system/kvfs@.service",
            "/usr/share/doc/kvfs/examples/var-lib-kvfs-myvault.mount"])


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, value = line.split("=", 1)
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def expand(command: str, env: dict[str, str]) -> list[str]:
    """systemd's expansion of a command line without quotes: `$VAR` alone is split at
    whitespace into words (none if empty), `${VAR}` is substituted as it is."""
    words = []
    for word in command.split():
        alone = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if alone:
            words += env.get(alone.group(1), "").split()
        else:
            words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}",
                                lambda m: env.get(m.group(1), ""), word))
    return words


def service_environment(unit: dict, instance: str, env_file: Path) -> dict[str, str]:
    env = {}
    for assignment in unit["Environment"]:
        key, value = assignment.replace("%i", instance).split("=", 1)
        env[key] = value
    # EnvironmentFile= wins over Environment=.
    for line in env_file.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


class NotifySocket:
    """The socket systemd gives a Type=notify service, read by the test."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[dict[str, str]] = []

    def wait_for(self, what: str, timeout: float, matches) -> dict:
        def received():
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                data = None
            if data:
                self.messages.append(dict(line.split("=", 1) for line in data.splitlines()
                                          if "=" in line))
            return next((m for m in self.messages if matches(m)), None)
        return wait_until(what, timeout, received, interval=0)

    def close(self):
        self.sock.close()


def confinement(unit: dict) -> list[str]:
    """The unit's CapabilityBoundingSet= and NoNewPrivileges=, applied as systemd applies them
    (setpriv, util-linux): kvfs runs with CAP_SYS_ADMIN as its only capability."""
    caps = [c.lower().removeprefix("cap_") for c in unit["CapabilityBoundingSet"][0].split()]
    command = ["setpriv", "--bounding-set", "-all," + ",".join("+" + c for c in caps),
               "--inh-caps=-all"]
    if unit.get("NoNewPrivileges") == ["yes"]:
        command.append("--no-new-privs")
    return command


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_service_commands_start_notify_reload_and_stop(installed, vault, workdir):
    unit_path = Path("/lib/systemd/system/kvfs@.service")
    unit = unit_settings(unit_path)
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["all"]
    assert unit["KillSignal"] == ["SIGTERM"] and unit["KillMode"] == ["mixed"]
    assert unit["EnvironmentFile"] == ["/etc/kvfs/%i.env"]
    instance = "testvault"
    mountpoint = workdir / "mnt" / instance
    # The journal: systemd connects a service's stderr to it and names the stream in
    # $JOURNAL_STREAM (DEVICE:INODE). Here a file stands in for it.
    log, log_tmp = log_path("service")
    journal = open(log, "ab")
    st = os.fstat(journal.fileno())
    journal_stream = f"{st.st_dev}:{st.st_ino}"
    # What an operator puts in /etc/kvfs/testvault.env (here in the test's directory, so that
    # the machine's /etc is left alone).
    env_file = workdir / f"{instance}.env"
    env_lines = [f"{k}={v}" for k, v in vault.env().items()] + [
        f"KVFS_VAULT={vault.url}",
        f"KVFS_MOUNTPOINT={mountpoint}",
        "KVFS_OPTIONS=--auth client-secret --ca-file " + vault.ca_file +
        " --no-verify-challenge-resource --cache-ttl 1s",
        "KVFS_LOG=kvfs=debug,warn",
    ]
    env_file.write_text("\n".join(env_lines) + "\n")
    env = service_environment(unit, instance, env_file)
    assert env["KVFS_MOUNTPOINT"] == str(mountpoint)
    notify = NotifySocket(workdir / "notify.sock")
    process_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NOTIFY_SOCKET": str(notify.path),
                   "JOURNAL_STREAM": journal_stream, **env}
    main = None
    successor = None
    try:
        umask = int(unit.get("UMask", ["0022"])[0], 8)
        for pre in unit["ExecStartPre"]:
            subprocess.run(confinement(unit) + expand(pre.lstrip("-"), env), env=process_env,
                           check=False, timeout=10, preexec_fn=lambda: os.umask(umask))
        # Created, with a parent that other users (an --allow-other mount's readers) can search.
        assert mountpoint.is_dir()
        assert mountpoint.parent.stat().st_mode & 0o777 == 0o755
        start = expand(unit["ExecStart"][0], env)
        assert start[:2] == ["/usr/bin/kvfs", "mount"] and "--foreground" in start
        main = subprocess.Popen(confinement(unit) + start, env=process_env,
                                stdin=subprocess.DEVNULL, stdout=journal, stderr=journal,
                                preexec_fn=lambda: os.umask(umask))
        ready = notify.wait_for("READY=1 from the service's main process", 30,
                                lambda m: m.get("READY") == "1")
        assert ready.get("MAINPID", str(main.pid)) == str(main.pid)
        assert kvfs_mounted(mountpoint), mounts_at(mountpoint)
        secret = mountpoint / "secrets" / "db-password"
        assert secret.read_text() == vault.secret_value("db-password")

        # systemctl reload: the new kvfs takes the mount over and names itself the main process.
        reload_command = expand(unit["ExecReload"][0], env)
        done = subprocess.run(confinement(unit) + reload_command, env=process_env,
                              stdin=subprocess.DEVNULL, stdout=journal, stderr=journal,
                              timeout=60, preexec_fn=lambda: os.umask(umask))
        assert done.returncode == 0, read_or_none(log)
        handed = notify.wait_for("MAINPID= from the successor", 30,
                                 lambda m: m.get("MAINPID") not in (None, str(main.pid)))
        successor = int(handed["MAINPID"])
        assert alive(successor)
        main.wait(timeout=30)
        assert main.returncode == 0, read_or_none(log)
        assert kvfs_mounted(mountpoint)
        assert secret.read_text() == vault.secret_value("db-password")
        # The successor, detached from ExecReload's process, still logs to the journal.
        wait_until("the successor's lines in the journal", 10,
                   lambda: (read_or_none(log) or "").count("kvfs::lifecycle::worker: serving")
                   >= 2)

        # systemctl stop: KillSignal to the main process (KillMode=mixed), which unmounts.
        os.kill(successor, getattr(signal, unit["KillSignal"][0]))
        wait_until("the main process to exit after SIGTERM", 30, lambda: not alive(successor))
        assert not kvfs_mounted(mountpoint), mounts_at(mountpoint)
        wait_until("every kvfs of the unit to exit", 15,
                   lambda: not kvfs_processes_on(mountpoint))
        assert vault.info["client_secret"] not in (read_or_none(log) or "")
    finally:
        for pid in kvfs_processes_on(mountpoint):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if main is not None and main.poll() is None:
            main.kill()
            main.wait(timeout=10)
        notify.close()
        journal.close()
        if log_tmp is not None:
            shutil.rmtree(log_tmp, ignore_errors=True)
