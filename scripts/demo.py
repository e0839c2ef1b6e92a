"""Demo driver: see scripts/demo."""

import json
import signal
import subprocess
import sys
import time


def main(binary: str, seed: str) -> int:
    proc = subprocess.Popen([binary, "--seed", seed], stdout=subprocess.PIPE, text=True)
    try:
        started = time.monotonic()
        info = json.loads(proc.stdout.readline())
        print(f"testvault is up at {info['vault_url']} ({(time.monotonic() - started) * 1000:.0f} ms)")
        print(f"  tenant {info['tenant_id']}, CA {info['ca_file']}")

        from azure.identity import ClientSecretCredential
        from azure.keyvault.secrets import SecretClient

        credential = ClientSecretCredential(
            info["tenant_id"], info["client_id"], info["client_secret"],
            authority=info["authority_host"], disable_instance_discovery=True,
            connection_verify=info["ca_file"])
        client = SecretClient(info["vault_url"], credential,
                              verify_challenge_resource=False, connection_verify=info["ca_file"])

        print("\nsecrets in the vault (certificate-backed ones are marked managed):")
        for p in client.list_properties_of_secrets():
            flags = [f for f, on in (("managed", p.managed), ("disabled", not p.enabled)) if on]
            print(f"  {p.name}{'  [' + ', '.join(flags) + ']' if flags else ''}")

        before = client.get_secret("db-password")
        print(f"\ndb-password = {before.value!r}  (version {before.properties.version})")

        rotated = client.set_secret("db-password", "rotated-" + time.strftime("%H%M%S"))
        print(f"rotated  -> version {rotated.properties.version}")
        after = client.get_secret("db-password")
        print(f"db-password = {after.value!r}")
        old = client.get_secret("db-password", before.properties.version)
        print(f"the previous version still reads {old.value!r}")

        import ssl
        import urllib.request
        ctx = ssl.create_default_context(cafile=info["ca_file"])
        with urllib.request.urlopen(info["control_url"] + "/counters", context=ctx) as r:
            print(f"\nrequests testvault served, by operation: {json.loads(r.read())}")
        return 0 if after.value != before.value else 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
