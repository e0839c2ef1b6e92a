"""Fixtures for the conformance suite: a testvault process per test module, and SDK clients.

The suite checks testvault against code nobody on this project wrote: Microsoft's Python SDKs
(azure-keyvault-*, azure-identity). It never talks to anything but loopback.
"""

import json
import os
import signal
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SEED = REPO / "tests" / "testvault" / "seed" / "sample.json"
RECORDINGS = Path(os.environ.get("KV_RECORDINGS", REPO / "tests" / "recordings"))


def testvault_binary() -> Path:
    explicit = os.environ.get("TESTVAULT_BIN")
    if explicit:
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    for profile in ("debug", "release"):
        candidate = target / profile / "testvault"
        if candidate.exists():
            return candidate
    raise RuntimeError("testvault binary not found: run `cargo build -p testvault` or set TESTVAULT_BIN")


class Vault:
    """A running testvault process and the JSON line it printed."""

    def __init__(self, seed: Path | None = SEED, extra_args=()):
        args = [str(testvault_binary())]
        if seed is not None:
            args += ["--seed", str(seed)]
        args += list(extra_args)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()
            raise RuntimeError(f"testvault did not start: {err}")
        self.info = json.loads(line)
        self.url = self.info["vault_url"]
        self.ca = self.info["ca_file"]
        self._ssl = ssl.create_default_context(cafile=self.ca)

    # ---- control API -------------------------------------------------------
    def control(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.info["control_url"] + path, data=data, method=method,
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=self._ssl) as r:
            return json.loads(r.read() or b"null")

    def counters(self) -> dict:
        return self.control("GET", "/counters")

    def count(self, op: str) -> int:
        return self.counters().get(op, 0)

    def log(self) -> list:
        return self.control("GET", "/log")

    def fault(self, **rule) -> int:
        return self.control("POST", "/faults", rule)["id"]

    def reset(self):
        self.control("POST", "/reset")

    def settings(self, **changes):
        return self.control("PATCH", "/settings", changes)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def vault():
    v = Vault()
    yield v
    v.stop()


@pytest.fixture
def fresh_vault():
    """A vault for tests that change settings or identities in ways others must not see."""
    v = Vault()
    yield v
    v.stop()


@pytest.fixture(scope="module")
def credential(vault):
    from azure.identity import ClientSecretCredential
    return ClientSecretCredential(
        vault.info["tenant_id"], vault.info["client_id"], vault.info["client_secret"],
        authority=vault.info["authority_host"], disable_instance_discovery=True,
        connection_verify=vault.ca)


def client_kwargs(vault):
    # The challenge names https://vault.azure.net, which 127.0.0.1 is not under.
    return dict(verify_challenge_resource=False, connection_verify=vault.ca)


@pytest.fixture(scope="module")
def secrets(vault, credential):
    from azure.keyvault.secrets import SecretClient
    return SecretClient(vault.url, credential, **client_kwargs(vault))


@pytest.fixture(scope="module")
def keys(vault, credential):
    from azure.keyvault.keys import KeyClient
    return KeyClient(vault.url, credential, **client_kwargs(vault))


@pytest.fixture(scope="module")
def certificates(vault, credential):
    from azure.keyvault.certificates import CertificateClient
    return CertificateClient(vault.url, credential, **client_kwargs(vault))


# ---- helpers for the SDK conformance files (test_sdk_*.py) ---------------------------------------

def make_credential(vault, client_id=None, client_secret=None, tenant_id=None, **kwargs):
    """A ClientSecretCredential against this vault's token endpoint (identity `app` by default)."""
    from azure.identity import ClientSecretCredential
    return ClientSecretCredential(
        tenant_id or vault.info["tenant_id"], client_id or vault.info["client_id"],
        client_secret or vault.info["client_secret"],
        authority=vault.info["authority_host"], disable_instance_discovery=True,
        connection_verify=vault.ca, **kwargs)


def make_client(cls, vault, credential=None, **kwargs):
    """An SDK client (SecretClient, KeyClient, CertificateClient) for this vault."""
    return cls(vault.url, credential or make_credential(vault), **client_kwargs(vault), **kwargs)


def control_token(vault, identity="app", **extra) -> str:
    """A vault access token minted by the control API (for raw requests)."""
    return vault.control("POST", "/tokens", {"identity": identity, **extra})["access_token"]


def raw_request(vault, method, path, query=None, token=None, body=None, headers=None):
    """One HTTPS request to the vault without the SDK: (status, headers, parsed JSON body or None).
    `query` is a dict or a list of pairs; nothing is added to it (not even api-version)."""
    import urllib.error
    import urllib.parse
    url = vault.url + path
    if query:
        url += "?" + urllib.parse.urlencode(query)
    h = {"Accept": "application/json", **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, context=vault._ssl) as r:
            status, hdrs, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, e.headers, e.read()
    return status, hdrs, (json.loads(raw) if raw else None)
