"""Faults a real vault (or the network in front of it) produces, and how Microsoft's SDK rides them
out against testvault: throttling with and without Retry-After, 5xx, dropped connections, slow
answers, a token revoked mid-session, odd paging; plus the raw protocol edges (the challenge header,
api-version and maxresults checks)."""

import json
import re
import time

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.secrets import SecretClient

from conftest import SEED, control_token, make_client, make_credential, raw_request

SEED_DATA = json.loads(SEED.read_text())
READABLE = next(s for s in SEED_DATA["secrets"] if s.get("enabled", True))
NAME, VALUE = READABLE["name"], READABLE["value"]
SEEDED_SECRET_NAMES = {s["name"] for s in SEED_DATA["secrets"]} | {c["name"] for c in SEED_DATA["certificates"]}
# Quick retries: keep the suite fast while the retry logic stays the SDK's own.
FAST_RETRY = dict(retry_backoff_factor=0.05, retry_backoff_max=1)


@pytest.fixture(scope="module")
def client(vault):
    c = make_client(SecretClient, vault, **FAST_RETRY)
    assert c.get_secret(NAME).value == VALUE  # challenge and token done before any fault
    return c


@pytest.fixture(autouse=True)
def clear_faults(vault):
    vault.control("DELETE", "/faults")
    yield
    vault.control("DELETE", "/faults")
    assert vault.control("GET", "/faults") == []


def gets(vault) -> int:
    return vault.count("GetSecret")


def statuses_since(vault, seq, op="GetSecret"):
    return [e["status"] for e in vault.log() if e["seq"] > seq and e["op"] == op]


def last_seq(vault) -> int:
    log = vault.log()
    return log[-1]["seq"] if log else 0


# ------------------------------------------------------------------------------ throttling


def test_429_without_retry_after_is_retried(vault, client):
    vault.fault(op="GetSecret", kind="status", status=429, count=3)
    before, seq = gets(vault), last_seq(vault)
    start = time.monotonic()
    assert client.get_secret(NAME).value == VALUE
    assert gets(vault) - before == 4
    assert statuses_since(vault, seq) == [429, 429, 429, 200]
    assert time.monotonic() - start < 5


def test_429_body_is_the_services(vault):
    vault.fault(op="GetSecret", kind="status", status=429, count=1)
    status, headers, body = raw_request(vault, "GET", f"/secrets/{NAME}", {"api-version": "7.5"},
                                        token=control_token(vault))
    assert status == 429
    assert body["error"]["code"] == "Throttled"
    assert "too many requests" in body["error"]["message"]
    assert headers.get("Retry-After") is None  # the real service sends none


def test_429_with_retry_after_is_honoured(vault, client):
    vault.fault(op="GetSecret", kind="status", status=429, retry_after=1, count=1)
    status, headers, _ = raw_request(vault, "GET", f"/secrets/{NAME}", {"api-version": "7.5"},
                                     token=control_token(vault))
    assert status == 429 and headers["Retry-After"] == "1"
    vault.fault(op="GetSecret", kind="status", status=429, retry_after=1, count=1)
    before = gets(vault)
    start = time.monotonic()
    assert client.get_secret(NAME).value == VALUE
    elapsed = time.monotonic() - start
    assert gets(vault) - before == 2
    assert 0.9 <= elapsed < 5, f"waited {elapsed:.2f}s for Retry-After: 1"


def test_429_on_a_named_secret_only(vault, client):
    other = next(s for s in SEED_DATA["secrets"] if s.get("enabled", True) and s["name"] != NAME)
    vault.fault(op="GetSecret", name=other["name"], kind="status", status=429, count=2)
    seq = last_seq(vault)
    assert client.get_secret(NAME).value == VALUE
    assert statuses_since(vault, seq) == [200]
    assert client.get_secret(other["name"]).value == other["value"]
    assert statuses_since(vault, seq) == [200, 429, 429, 200]


# ------------------------------------------------------------------------------------ 5xx


def test_500_then_503_then_success(vault, client):
    vault.fault(op="GetSecret", kind="status", status=500, count=1)
    vault.fault(op="GetSecret", kind="status", status=503, count=1)
    seq = last_seq(vault)
    assert client.get_secret(NAME).value == VALUE
    assert statuses_since(vault, seq) == [500, 503, 200]


def test_503_forever_surfaces_after_retries(vault):
    c = make_client(SecretClient, vault, retry_total=2, **FAST_RETRY)
    assert c.get_secret(NAME).value == VALUE
    vault.fault(op="GetSecret", kind="status", status=503)
    before = gets(vault)
    with pytest.raises(HttpResponseError) as e:
        c.get_secret(NAME)
    assert e.value.status_code == 503
    err = e.value.response.json()["error"]
    assert err["code"] and err["message"]  # the service's error envelope
    assert gets(vault) - before == 3, "one try and retry_total=2 retries"


def test_fault_on_lists_too(vault, client):
    vault.fault(op="GetSecrets", kind="status", status=503, count=2)
    names = {p.name for p in client.list_properties_of_secrets()}
    assert SEEDED_SECRET_NAMES <= names


# ------------------------------------------------------------------------- the network


def test_dropped_connection_is_retried(vault, client):
    vault.fault(op="GetSecret", kind="drop", count=1)
    before, seq = gets(vault), last_seq(vault)
    assert client.get_secret(NAME).value == VALUE
    assert gets(vault) - before == 2
    drops = [e for e in vault.log() if e["seq"] > seq and e.get("fault") == "drop"]
    assert len(drops) == 1


def test_delay_is_measurable(vault, client):
    start = time.monotonic()
    client.get_secret(NAME)
    baseline = time.monotonic() - start
    vault.fault(op="GetSecret", kind="delay", ms=300, count=1)
    start = time.monotonic()
    assert client.get_secret(NAME).value == VALUE
    delayed = time.monotonic() - start
    assert delayed >= 0.3
    assert delayed >= baseline + 0.25
    assert [e for e in vault.log() if e.get("fault") == "delay 300ms"]


# ---------------------------------------------------------------------------- auth faults


def test_revoked_token_mid_session(vault, client):
    assert client.get_secret(NAME).value == VALUE
    tokens, seq = vault.count("Token"), last_seq(vault)
    vault.fault(op="GetSecret", kind="revoke", count=1)
    assert client.get_secret(NAME).value == VALUE
    assert vault.count("Token") == tokens + 1, "the SDK fetched a new token"
    entries = [e for e in vault.log() if e["seq"] > seq]
    ops = [(e["op"], e["status"]) for e in entries]
    assert ops == [("GetSecret", 401), ("Token", 200), ("GetSecret", 200)]
    # And the session goes on with the new token, no further challenge.
    seq = last_seq(vault)
    assert client.get_secret(NAME).value == VALUE
    assert [(e["op"], e["status"]) for e in vault.log() if e["seq"] > seq] == [("GetSecret", 200)]


def client_credentials_token(vault, claims=None) -> str:
    """A token from the Entra endpoint, as MSAL asks for it (optionally with a `claims` parameter)."""
    import urllib.parse
    import urllib.request
    form = {"grant_type": "client_credentials", "client_id": vault.info["client_id"],
            "client_secret": vault.info["client_secret"], "scope": "https://vault.azure.net/.default"}
    if claims is not None:
        form["claims"] = json.dumps(claims)
    req = urllib.request.Request(
        f"{vault.info['authority_host']}/{vault.info['tenant_id']}/oauth2/v2.0/token",
        data=urllib.parse.urlencode(form).encode(), method="POST")
    with urllib.request.urlopen(req, context=vault._ssl) as r:
        return json.loads(r.read())["access_token"]


def test_revoked_token_challenge_depends_on_client_capabilities(vault, client):
    """A token whose request declared CAE capability CP1 (as the Python SDK's does) gets a claims
    challenge once revoked, which makes MSAL skip its cache; any other token the plain challenge."""
    import base64
    cae = client_credentials_token(vault, {"access_token": {"xms_cc": {"values": ["CP1"]}}})
    plain = client_credentials_token(vault)
    for token in (cae, plain):
        status, _, _ = raw_request(vault, "GET", f"/secrets/{NAME}", {"api-version": "7.5"}, token=token)
        assert status == 200
    vault.control("POST", "/revoke-tokens")
    authority = f"https://login.windows.net/{vault.info['tenant_id']}"

    status, headers, body = raw_request(vault, "GET", f"/secrets/{NAME}", {"api-version": "7.5"},
                                        token=plain)
    assert status == 401
    assert body["error"]["code"] == "Unauthorized"
    assert body["error"]["message"].startswith("AKV")
    assert headers["WWW-Authenticate"] == f'Bearer authorization="{authority}", resource="https://vault.azure.net"'

    status, headers, body = raw_request(vault, "GET", f"/secrets/{NAME}", {"api-version": "7.5"},
                                        token=cae)
    assert status == 401
    assert body["error"]["code"] == "Unauthorized"
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer authorization="{authority}", ')
    assert 'error="invalid_token"' in challenge
    encoded = re.search(r'claims="([^"]+)"', challenge).group(1)
    claims = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    assert claims["access_token"]["nbf"]["essential"] is True
    assert abs(int(claims["access_token"]["nbf"]["value"]) - time.time()) < 60
    # The SDK, whose token was revoked too, gets through with a fresh one.
    tokens = vault.count("Token")
    assert client.get_secret(NAME).value == VALUE
    assert vault.count("Token") == tokens + 1


def test_challenge_header_exact(vault):
    status, headers, body = raw_request(vault, "GET", f"/secrets/{NAME}", {"api-version": "7.5"})
    assert status == 401
    assert headers["WWW-Authenticate"] == (
        f'Bearer authorization="https://login.windows.net/{vault.info["tenant_id"]}", '
        'resource="https://vault.azure.net"')
    assert body == {"error": {"code": "Unauthorized",
                              "message": "AKV10000: Request is missing a Bearer or PoP token."}}
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    # A token that is not one of ours gets the same challenge.
    status, headers, _ = raw_request(vault, "GET", f"/secrets/{NAME}", {"api-version": "7.5"},
                                     token="not.a.jwt")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer authorization=")


# ------------------------------------------------------------------------- api-version


def test_unknown_api_version(vault):
    token = control_token(vault)
    status, _, body = raw_request(vault, "GET", f"/secrets/{NAME}", {"api-version": "1999-01-01"},
                                  token=token)
    assert status == 400
    assert body["error"]["code"] == "BadParameter"
    m = re.fullmatch(r"The specified version \(1999-01-01\) is not recognized\. "
                     r"Consider using the latest supported version \((.+)\)\.", body["error"]["message"])
    assert m, body["error"]["message"]
    # The version the message recommends is one the service accepts.
    status, _, ok = raw_request(vault, "GET", f"/secrets/{NAME}", {"api-version": m.group(1)},
                                token=token)
    assert status == 200 and ok["value"] == VALUE


def test_missing_api_version(vault):
    status, _, body = raw_request(vault, "GET", f"/secrets/{NAME}", token=control_token(vault))
    assert status == 400
    assert body["error"]["code"] == "BadParameter"


@pytest.mark.parametrize("api_version", ["7.0", "7.2", "7.3", "7.4", "7.5", "7.6", "7.6-preview.2",
                                         "2025-07-01", "2026-04-01"])
def test_known_api_versions(vault, api_version):
    status, _, body = raw_request(vault, "GET", f"/secrets/{NAME}/", {"api-version": api_version},
                                  token=control_token(vault))
    assert status == 200 and body["value"] == VALUE


@pytest.mark.parametrize("maxresults,ok", [("0", False), ("1", True), ("25", True), ("26", False),
                                           ("x", False)])
def test_maxresults_bounds(vault, maxresults, ok):
    status, _, body = raw_request(vault, "GET", "/secrets",
                                  {"api-version": "7.5", "maxresults": maxresults},
                                  token=control_token(vault))
    if ok:
        assert status == 200
        assert 1 <= len(body["value"]) <= int(maxresults)
        assert "nextLink" in body
    else:
        assert status == 400
        assert body["error"]["code"] == "BadParameter"


# ------------------------------------------------------------------------------- paging


def test_empty_intermediate_pages(fresh_vault):
    client = make_client(SecretClient, fresh_vault)
    fresh_vault.settings(empty_pages=True, page_size=3)
    before = fresh_vault.count("GetSecrets")
    pages = [[p.name for p in page] for page in client.list_properties_of_secrets().by_page()]
    names = [n for p in pages for n in p]
    assert sorted(names) == sorted(SEEDED_SECRET_NAMES)
    assert any(p == [] for p in pages), "the server did put empty pages in"
    assert fresh_vault.count("GetSecrets") - before == len(pages)
    # Versions lists too.
    seed = max(SEED_DATA["secrets"], key=lambda s: len(s.get("previous", [])))
    versions = list(client.list_properties_of_secret_versions(seed["name"]))
    assert len(versions) == len(seed.get("previous", [])) + 1


def test_shuffled_lists(fresh_vault):
    client = make_client(SecretClient, fresh_vault)
    for i in range(30):
        client.set_secret(f"shuffle-{i:02d}", str(i))
    expected = SEEDED_SECRET_NAMES | {f"shuffle-{i:02d}" for i in range(30)}
    ordered = [p.name for p in client.list_properties_of_secrets(max_page_size=10)]
    fresh_vault.settings(shuffle_lists=True)
    shuffled = [[p.name for p in client.list_properties_of_secrets(max_page_size=10)] for _ in range(3)]
    for names in shuffled:
        assert sorted(names) == sorted(expected)
    assert sorted(ordered) == sorted(expected)
    assert any(names != ordered for names in shuffled), "the order never changed"


# ------------------------------------------------------- challenge-resource check kept on


def test_sdk_with_challenge_resource_check_on(vault, monkeypatch):
    """Through `vault_host_url` (`*.vault.localhost`) the challenge names
    `https://vault.localhost:PORT`, so the SDK's resource check can stay on — also after a
    revoked token's claims challenge."""
    import socket
    from urllib.parse import urlsplit
    host = urlsplit(vault.info["vault_host_url"]).hostname
    real = socket.getaddrinfo

    def resolve(name, *args, **kwargs):  # the name resolves to loopback, as a test harness would make it
        return real("127.0.0.1" if name == host else name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    client = SecretClient(vault.info["vault_host_url"], make_credential(vault),
                          connection_verify=vault.ca, **FAST_RETRY)
    s = client.get_secret(NAME)
    assert s.value == VALUE
    assert s.id.startswith(vault.info["vault_host_url"] + "/secrets/")
    port = urlsplit(vault.info["vault_host_url"]).port
    tokens = vault.count("Token")
    vault.fault(op="GetSecret", kind="revoke", count=1)
    assert client.get_secret(NAME).value == VALUE
    assert vault.count("Token") == tokens + 1
    # The challenge as the SDK saw it.
    import urllib.error
    import urllib.request
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{vault.info['vault_host_url']}/secrets/{NAME}?api-version=7.5",
                               context=vault._ssl)
    assert e.value.code == 401
    assert e.value.headers["WWW-Authenticate"] == (
        f'Bearer authorization="https://login.windows.net/{vault.info["tenant_id"]}", '
        f'resource="https://vault.localhost:{port}"')
