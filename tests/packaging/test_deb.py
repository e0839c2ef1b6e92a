"""The .deb: its metadata, and the installed package mounting through mount(8)'s helper.

The install tests change the machine (dpkg -i, then dpkg -r at the end; a kvfs package already
installed is removed first): CI's machines and the developers' are disposable.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import (kvfs_mounted, kvfs_processes_on, log_path, mounts_at, read_or_none,
                      wait_until)

def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_deb_metadata_and_files(packages):
    assert deb_field(packages.deb, "Package") == "kvfs"
    assert deb_field(packages.deb, "Version").startswith(packages.version + "-")
    depends = deb_field(packages.deb, "Depends")
    names = {d.strip().split()[0] for d in depends.split(",")}
    # dpkg-shlibdeps' answer for the binary: glibc, OpenSSL 3, libgcc. Root mounts through
    # /dev/fuse itself, so fuse3 (fusermount3, for other users' mounts) is only suggested.
    assert {"libc6", "libssl3"} <= names, depends
    assert "fuse3" not in names and "fuse" not in names, depends
    listing = subprocess.run(["dpkg-deb", "-c", str(packages.deb)], check=True,
                             capture_output=True, text=True).stdout
    entries = {}
    for line in listing.splitlines():
        parts = line.split()
        # mode owner size date time path [-> target]
        if "->" in parts:
            entries[parts[parts.index("->") - 1]] = ("link", parts[-1])
        else:
            entries[parts[5]] = (parts[0], None)
    assert entries["./usr/bin/kvfs"][0] == "-rwxr-xr-x"
    assert entries["./sbin/mount.fuse.kvfs"] == ("link", "/usr/bin/kvfs")
    assert entries["./sbin/mount.kvfs"] == ("link", "/usr/bin/kvfs")
    assert entries["./lib/systemd/system/kvfs@.service"][0] == "-rw-r--r--"
    for doc in ["examples/kvfs.env.example", "examples/var-lib-kvfs-myvault.mount",
                "examples/fstab.example", "OPERATIONS.md", "CONFIGURATION.md"]:
        assert f"./usr/share/doc/kvfs/{doc}" in entries, doc


# Where each form's kvfs logs go: a log file (-o log_file=), or the journal as under a systemd mount
# unit, which connects mount(8)'s stderr to the journal and names it in $JOURNAL_STREAM.
FORMS = {"mount -t fuse.kvfs": "journal", "mount -t kvfs": "log_file", "fstab": "log_file"}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_installed_deb_mounts_through_the_mount_helper(installed, vault, workdir, form):
    assert os.path.realpath("/sbin/mount.fuse.kvfs") == "/usr/bin/kvfs"
    mnt = workdir / "kv"
    mnt.mkdir()
    log, log_tmp = log_path("mount-helper-" + form.replace(" ", "_").replace(".", "_"))
    journal = open(log, "ab")
    try:
        # mount(8), run by root, hands its environment to /sbin/mount.fuse.kvfs: the credentials
        # travel there, never on the command line.
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "KVFS_LOG": "kvfs=debug,warn",
               **vault.env()}
        # The options of packaging/systemd/fstab.example, and what points kvfs at testvault.
        options = ["allow_other", "uid=1000", "gid=1000", "cache_ttl=1s", "_netdev", "nofail",
                   "auth=client-secret", f"ca_file={vault.ca_file}",
                   "no_verify_challenge_resource"]
        if FORMS[form] == "journal":
            st = os.fstat(journal.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        else:
            options.append(f"log_file={log}")
        if form == "fstab":
            # An fstab line of the example's shape, in a file of its own (mount -T), so the
            # machine's /etc/fstab is left alone.
            fstab = workdir / "fstab"
            fstab.write_text(f"{vault.url}  {mnt}  fuse.kvfs  {','.join(options)}  0 0\n")
            command = ["mount", "-T", str(fstab), str(mnt)]
        else:
            command = form.split() + [vault.url, str(mnt), "-o", ",".join(options)]
        done = subprocess.run(command, env=env, stdout=journal, stderr=journal, timeout=60)
        assert done.returncode == 0, read_or_none(log)
        # The helper detaches once the mount answers: it is there when mount(8) returns.
        assert kvfs_mounted(mnt), mounts_at(mnt)
        secret = mnt / "secrets" / "db-password"
        assert secret.read_text() == vault.secret_value("db-password")
        st = secret.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1000, 1000, 0o400)
        # The detached kvfs's lines reach the log file or the journal.
        wait_until("the detached kvfs's log lines", 10,
                   lambda: "kvfs::lifecycle::worker: serving" in (read_or_none(log) or ""))

        done = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert not kvfs_mounted(mnt)
        wait_until("the detached kvfs to exit after umount", 15,
                   lambda: not kvfs_processes_on(mnt))
        assert vault.info["client_secret"] not in (read_or_none(log) or "")
    finally:
        journal.close()
        for pid in kvfs_processes_on(mnt):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        if log_tmp is not None:
            shutil.rmtree(log_tmp, ignore_errors=True)
