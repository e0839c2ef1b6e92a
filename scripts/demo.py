"""Demo driver: see scripts/demo. Prints each step as the shell command a user would type."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

TTL = 2


def sh(cmd: list[str], env=None) -> str:
    print(f"$ {' '.join(cmd)}")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    text = (out.stdout + out.stderr).rstrip()
    if text:
        print(text)
    if out.returncode != 0:
        raise SystemExit(f"demo: `{' '.join(cmd)}` failed")
    return out.stdout


def main(bin_dir: str) -> int:
    kvfs = os.path.join(bin_dir, "kvfs")
    seed = os.path.join(os.path.dirname(__file__), "..", "tests", "testvault", "seed", "sample.json")
    vault = subprocess.Popen([os.path.join(bin_dir, "testvault"), "--seed", seed],
                             stdout=subprocess.PIPE, text=True)
    mnt = tempfile.mkdtemp(prefix="kvfs-demo-")
    mounted = False
    try:
        info = json.loads(vault.stdout.readline())
        print(f"# testvault (local Key Vault) is up at {info['vault_url']}\n")
        env = dict(os.environ,
                   AZURE_TENANT_ID=info["tenant_id"], AZURE_CLIENT_ID=info["client_id"],
                   AZURE_CLIENT_SECRET=info["client_secret"],
                   AZURE_AUTHORITY_HOST=info["authority_host"],
                   # Only loopback: should --auth auto ever reach the metadata probe, it is
                   # refused here rather than sent to 169.254.169.254.
                   KVFS_IMDS_ENDPOINT="http://127.0.0.1:9")
        sh([kvfs, "mount", info["vault_url"], mnt, "--cache-ttl", f"{TTL}s",
            "--ca-file", info["ca_file"], "--no-verify-challenge-resource",
            "--log-file", mnt + ".log"], env=env)
        mounted = True
        sh(["ls", "-l", f"{mnt}/secrets"])
        sh(["cat", f"{mnt}/secrets/db-password"])
        print()
        sh(["ls", f"{mnt}/versions/secrets/db-password"])
        if _has("getfattr"):
            sh(["getfattr", "--absolute-names", "-d", f"{mnt}/secrets/db-password"])

        from azure.identity import ClientSecretCredential
        from azure.keyvault.secrets import SecretClient
        credential = ClientSecretCredential(
            info["tenant_id"], info["client_id"], info["client_secret"],
            authority=info["authority_host"], disable_instance_discovery=True,
            connection_verify=info["ca_file"])
        client = SecretClient(info["vault_url"], credential,
                              verify_challenge_resource=False, connection_verify=info["ca_file"])
        new_value = "rotated-at-" + time.strftime("%H:%M:%S")
        client.set_secret("db-password", new_value)
        print(f"\n# rotated db-password in the vault with Microsoft's SDK; waiting one TTL ({TTL}s)\n")
        time.sleep(TTL + 0.2)
        shown = sh(["cat", f"{mnt}/secrets/db-password"])
        print()
        sh(["ls", f"{mnt}/versions/secrets/db-password"])
        sh([kvfs, "unmount", mnt])
        mounted = False
        if shown.strip() != new_value:
            print("demo: the mount did not show the rotated value", file=sys.stderr)
            return 1
        print("\n# the new value appeared on the next read after the TTL: no restart, no remount")
        return 0
    finally:
        if mounted:
            subprocess.run([kvfs, "unmount", mnt])
        vault.send_signal(signal.SIGTERM)
        vault.wait(timeout=10)
        os.rmdir(mnt)
        if os.path.exists(mnt + ".log"):
            os.remove(mnt + ".log")


def _has(tool: str) -> bool:
    return any(os.access(os.path.join(p, tool), os.X_OK) for p in os.environ.get("PATH", "").split(":"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
