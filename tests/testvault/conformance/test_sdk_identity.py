"""azure-identity's credentials, unchanged, against testvault's token endpoints, and the vault's
answers to whoever holds the token: client secret, client certificate, workload identity, managed
identity (App Service and IMDS forms), a foreign tenant, RBAC and access policies, short-lived tokens.

Every connection must stay on loopback: a guard refuses any other address (IMDS's real
169.254.169.254 included)."""

import ipaddress
import json
import socket
import time

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.identity import (
    CertificateCredential,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)
from azure.keyvault.keys import KeyClient
from azure.keyvault.secrets import SecretClient

from conftest import SEED, client_kwargs, make_client, make_credential, raw_request

SEED_DATA = json.loads(SEED.read_text())
READABLE = next(s for s in SEED_DATA["secrets"] if s.get("enabled", True))
SEED_KEY = SEED_DATA["keys"][0]["name"]

# Environment variables that steer azure-identity's managed-identity detection.
MI_ENV = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT",
          "MSI_ENDPOINT", "MSI_SECRET", "AZURE_POD_IDENTITY_AUTHORITY_HOST",
          "AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_AUTHORITY_HOST")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Fail any connection to an address that is not loopback."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def check(address):
        if isinstance(address, tuple):
            host = address[0]
            try:
                ok = ipaddress.ip_address(host).is_loopback
            except ValueError:
                ok = host == "localhost"
            if not ok:
                raise AssertionError(f"connection to non-loopback address {address}")

    def connect(self, address):
        check(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    for var in MI_ENV:
        monkeypatch.delenv(var, raising=False)


def new_entries(vault, since: int):
    return [e for e in vault.log() if e["seq"] > since]


def last_seq(vault) -> int:
    log = vault.log()
    return log[-1]["seq"] if log else 0


def assert_token_then_read(vault, since, identity, grant, token_op="Token"):
    """The log shows a token issued to `identity` by `grant`, then vault reads as that identity."""
    entries = new_entries(vault, since)
    tokens = [e for e in entries if e["op"] == token_op and e["status"] == 200]
    assert tokens, f"no {token_op} request in {entries}"
    assert {e["identity"] for e in tokens} == {identity}
    assert {e["grant"] for e in tokens} == {grant}
    reads = [e for e in entries if e["op"] == "GetSecret" and e["status"] == 200]
    assert reads and all(e["identity"] == identity for e in reads)
    return entries


# -------------------------------------------------------------------------- app identities


def test_client_secret_credential(vault):
    since = last_seq(vault)
    client = make_client(SecretClient, vault)
    assert client.get_secret(READABLE["name"]).value == READABLE["value"]
    entries = assert_token_then_read(vault, since, "app", "client_secret")
    # Anything refused was refused for want of a token (the challenge), never for the identity.
    assert all("identity" not in e for e in entries if e["status"] == 401)
    token = next(e for e in entries if e["op"] == "Token")
    assert token["path"] == f"/{vault.info['tenant_id']}/oauth2/v2.0/token"
    assert token["client_id"] == vault.info["client_id"]


def test_wrong_client_secret(vault):
    since = last_seq(vault)
    cred = make_credential(vault, client_secret="not-the-secret")
    with pytest.raises(ClientAuthenticationError) as e:
        make_client(SecretClient, vault, cred).get_secret(READABLE["name"])
    assert "AADSTS7000215" in e.value.message
    tokens = [x for x in new_entries(vault, since) if x["op"] == "Token"]
    assert tokens and all(x["status"] == 401 for x in tokens)
    assert not [x for x in new_entries(vault, since) if x["op"] == "GetSecret" and x["status"] == 200]


def test_unknown_client_id(vault):
    cred = make_credential(vault, client_id="00000000-0000-0000-0000-00000000abcd")
    with pytest.raises(ClientAuthenticationError) as e:
        cred.get_token("https://vault.azure.net/.default")
    assert "AADSTS700016" in e.value.message


def test_unknown_tenant(vault):
    bogus = "0badc0de-0000-4000-8000-000000000000"
    assert bogus not in (vault.info["tenant_id"], vault.info["other_tenant_id"])
    since = last_seq(vault)
    cred = make_credential(vault, tenant_id=bogus)
    with pytest.raises(ClientAuthenticationError):
        cred.get_token("https://vault.azure.net/.default")
    entries = new_entries(vault, since)
    assert entries and all(bogus in e["path"] and e["status"] == 400 for e in entries)
    # The token endpoint itself names the problem with Entra ID's code.
    import urllib.parse
    import urllib.request
    form = urllib.parse.urlencode({
        "grant_type": "client_credentials", "client_id": vault.info["client_id"],
        "client_secret": vault.info["client_secret"], "scope": "https://vault.azure.net/.default"})
    req = urllib.request.Request(f"{vault.info['authority_host']}/{bogus}/oauth2/v2.0/token",
                                 data=form.encode(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(req, context=vault._ssl)
    body = json.loads(http.value.read())
    assert http.value.code == 400
    assert body["error_codes"] == [90002]
    assert body["error_description"].startswith("AADSTS90002")


@pytest.mark.parametrize("path_key", ["client_certificate_path", "client_certificate_pfx_path"])
def test_certificate_credential(vault, path_key):
    since = last_seq(vault)
    cred = CertificateCredential(
        vault.info["tenant_id"], vault.info["certificate_client_id"],
        certificate_path=str(vault.info[path_key]), authority=vault.info["authority_host"],
        disable_instance_discovery=True, connection_verify=vault.ca)
    client = make_client(SecretClient, vault, cred)
    assert client.get_secret(READABLE["name"]).value == READABLE["value"]
    entries = assert_token_then_read(vault, since, "app-cert", "client_certificate")
    assert all(e["client_id"] == vault.info["certificate_client_id"]
               for e in entries if e.get("identity") == "app-cert")


def test_certificate_of_another_app_is_refused(vault):
    """The app-cert certificate presented for the client-secret app: no token."""
    cred = CertificateCredential(
        vault.info["tenant_id"], vault.info["client_id"],
        certificate_path=str(vault.info["client_certificate_path"]),
        authority=vault.info["authority_host"], disable_instance_discovery=True,
        connection_verify=vault.ca)
    with pytest.raises(ClientAuthenticationError) as e:
        cred.get_token("https://vault.azure.net/.default")
    assert "AADSTS" in e.value.message


def test_workload_identity_credential(vault):
    since = last_seq(vault)
    cred = WorkloadIdentityCredential(
        tenant_id=vault.info["tenant_id"], client_id=vault.info["workload_client_id"],
        token_file_path=str(vault.info["federated_token_file"]),
        authority=vault.info["authority_host"], disable_instance_discovery=True,
        connection_verify=vault.ca)
    client = make_client(SecretClient, vault, cred)
    assert client.get_secret(READABLE["name"]).value == READABLE["value"]
    assert_token_then_read(vault, since, "workload", "federated")


def test_workload_identity_with_untrusted_assertion_is_refused(vault, tmp_path):
    forged = tmp_path / "token"
    # A structurally valid JWT the trusted issuer never signed.
    forged.write_text(open(vault.info["federated_token_file"]).read().rsplit(".", 1)[0] + ".c2ln")
    cred = WorkloadIdentityCredential(
        tenant_id=vault.info["tenant_id"], client_id=vault.info["workload_client_id"],
        token_file_path=str(forged), authority=vault.info["authority_host"],
        disable_instance_discovery=True, connection_verify=vault.ca)
    with pytest.raises(ClientAuthenticationError) as e:
        cred.get_token("https://vault.azure.net/.default")
    assert "AADSTS7" in e.value.message  # Entra's federated-credential errors are 7002xx


# ----------------------------------------------------------------------- managed identity


def identity_names(vault):
    return {i["client_id"]: name for name, i in vault.control("GET", "/identities").items()}


def mi_credential(vault, which):
    """(credential, client id of the identity that should get the token)."""
    user = vault.info["user_assigned_client_id"]
    if which == "system":
        return ManagedIdentityCredential(), vault.info["system_assigned_client_id"]
    if which == "user-client-id":
        return ManagedIdentityCredential(client_id=user), user
    if which == "user-resource-id":
        return ManagedIdentityCredential(
            identity_config={"resource_id": vault.info["user_assigned_resource_id"]}), user
    assert which == "user-object-id"
    return ManagedIdentityCredential(
        identity_config={"object_id": vault.info["user_assigned_object_id"]}), user


MI_KINDS = ["system", "user-client-id", "user-resource-id", "user-object-id"]


@pytest.mark.parametrize("which", MI_KINDS)
def test_managed_identity_app_service(vault, monkeypatch, which):
    monkeypatch.setenv("IDENTITY_ENDPOINT", vault.info["identity_endpoint"])
    monkeypatch.setenv("IDENTITY_HEADER", vault.info["identity_header"])
    cred, expected = mi_credential(vault, which)
    since = last_seq(vault)
    client = make_client(SecretClient, vault, cred)
    assert client.get_secret(READABLE["name"]).value == READABLE["value"]
    name = identity_names(vault)[expected]
    entries = assert_token_then_read(vault, since, name, "managed_identity",
                                     token_op="ManagedIdentityToken")
    mi = [e for e in entries if e["op"] == "ManagedIdentityToken"]
    assert all(e["path"] == "/msi/token" for e in mi)


def test_managed_identity_app_service_wrong_header(vault, monkeypatch):
    monkeypatch.setenv("IDENTITY_ENDPOINT", vault.info["identity_endpoint"])
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-header")
    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential().get_token("https://vault.azure.net/.default")


@pytest.mark.parametrize("which", MI_KINDS)
def test_managed_identity_imds(vault, monkeypatch, which):
    # azure-identity's documented override of the IMDS host; nothing else set, so it picks IMDS.
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", vault.info["imds_endpoint"])
    cred, expected = mi_credential(vault, which)
    since = last_seq(vault)
    client = make_client(SecretClient, vault, cred)
    assert client.get_secret(READABLE["name"]).value == READABLE["value"]
    name = identity_names(vault)[expected]
    entries = assert_token_then_read(vault, since, name, "managed_identity",
                                     token_op="ManagedIdentityToken")
    mi = [e for e in entries if e["op"] == "ManagedIdentityToken" and e["status"] == 200]
    assert all(e["path"] == "/metadata/identity/oauth2/token" for e in mi)


def test_managed_identity_imds_unknown_client_id(vault, monkeypatch):
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", vault.info["imds_endpoint"])
    cred = ManagedIdentityCredential(client_id="11111111-2222-3333-4444-555555555555")
    with pytest.raises(ClientAuthenticationError):
        cred.get_token("https://vault.azure.net/.default")


# ------------------------------------------------------------------------- foreign tenant


def test_token_from_foreign_tenant_is_refused(vault):
    identities = vault.control("GET", "/identities")
    foreign = identities["foreign-app"]
    assert foreign["tenant_id"] == vault.info["other_tenant_id"] != vault.info["tenant_id"]
    cred = make_credential(vault, client_id=foreign["client_id"],
                           client_secret=foreign["client_secret"],
                           tenant_id=vault.info["other_tenant_id"])
    token = cred.get_token("https://vault.azure.net/.default").token  # the foreign tenant issues it
    status, headers, body = raw_request(vault, "GET", f"/secrets/{READABLE['name']}",
                                        {"api-version": "7.5"}, token=token)
    assert status == 401
    assert body["error"]["code"] == "Unauthorized"
    assert body["error"]["message"].startswith("AKV10032")
    assert vault.info["other_tenant_id"] in body["error"]["message"]
    assert headers["WWW-Authenticate"] == (
        f'Bearer authorization="https://login.windows.net/{vault.info["tenant_id"]}", '
        'resource="https://vault.azure.net"')

    class ForeignToken:
        """Hands the SDK the foreign tenant's token whatever tenant the challenge names."""

        def get_token(self, *scopes, claims=None, tenant_id=None, enable_cae=False, **kwargs):
            return cred.get_token(*scopes)

    client = SecretClient(vault.url, ForeignToken(), **client_kwargs(vault))
    with pytest.raises(ClientAuthenticationError) as e:
        client.get_secret(READABLE["name"])
    assert e.value.status_code == 401
    assert "AKV10032" in e.value.message


# ------------------------------------------------------------------------- authorisation


def test_rbac_secrets_user_reads_secrets_but_not_keys(vault):
    reader = vault.control("POST", "/identities", {"name": "reader", "roles": ["Key Vault Secrets User"]})
    assert reader["client_id"] and reader["client_secret"]
    cred = make_credential(vault, client_id=reader["client_id"], client_secret=reader["client_secret"])
    secrets = make_client(SecretClient, vault, cred)
    assert secrets.get_secret(READABLE["name"]).value == READABLE["value"]
    assert READABLE["name"] in {p.name for p in secrets.list_properties_of_secrets()}

    keys = make_client(KeyClient, vault, cred)
    with pytest.raises(HttpResponseError) as e:
        keys.get_key(SEED_KEY)
    assert e.value.status_code == 403
    err = e.value.response.json()["error"]
    assert err["code"] == "Forbidden"
    assert err["innererror"]["code"] == "ForbiddenByRbac"
    assert "Microsoft.KeyVault/vaults/keys/read" in err["message"]
    assert "Microsoft.KeyVault/vaults/keys/read" in e.value.message
    assert f"appid={reader['client_id']}" in err["message"]

    with pytest.raises(HttpResponseError) as e:
        secrets.set_secret("reader-may-not-write", "x")
    assert e.value.status_code == 403
    assert "Microsoft.KeyVault/vaults/secrets/setSecret/action" in e.value.response.json()["error"]["message"]
    log = [x for x in vault.log() if x.get("identity") == "reader"]
    assert {x["status"] for x in log if x["op"] == "GetKey"} == {403}


def test_access_policy_model(fresh_vault):
    fresh_vault.settings(permission_model="access_policy")
    lister = fresh_vault.control("POST", "/identities",
                                 {"name": "lister", "access_policy": {"secrets": ["list"]}})
    cred = make_credential(fresh_vault, client_id=lister["client_id"],
                           client_secret=lister["client_secret"])
    client = make_client(SecretClient, fresh_vault, cred)
    names = {p.name for p in client.list_properties_of_secrets()}
    assert READABLE["name"] in names
    with pytest.raises(HttpResponseError) as e:
        client.get_secret(READABLE["name"])
    assert e.value.status_code == 403
    err = e.value.response.json()["error"]
    assert err["code"] == "Forbidden"
    assert err["innererror"]["code"] == "AccessDenied"
    assert "does not have secrets get permission" in err["message"]
    assert lister["client_id"] in err["message"]
    # The built-in app holds every permission under this model too.
    assert make_client(SecretClient, fresh_vault).get_secret(READABLE["name"]).value == READABLE["value"]


# --------------------------------------------------------------------- token lifetime


def test_short_token_lifetime_sdk_keeps_working(fresh_vault):
    fresh_vault.settings(token_lifetime_secs=2)
    client = make_client(SecretClient, fresh_vault)
    assert client.get_secret(READABLE["name"]).value == READABLE["value"]
    tokens = fresh_vault.count("Token")
    assert tokens >= 1
    time.sleep(2.2)
    assert client.get_secret(READABLE["name"]).value == READABLE["value"]
    assert fresh_vault.count("Token") > tokens
    reads = [e for e in fresh_vault.log() if e["op"] == "GetSecret" and e["status"] == 200]
    assert len(reads) == 2


def test_expired_token_gets_a_fresh_challenge(fresh_vault):
    """A credential that overstates its token's lifetime: the vault refuses the expired token with
    the challenge, and the SDK asks the credential again."""
    calls = []

    class Overstating:
        def get_token(self, *scopes, claims=None, tenant_id=None, enable_cae=False, **kwargs):
            minted = fresh_vault.control("POST", "/tokens", {"identity": "app", "lifetime_secs": 2})
            calls.append(minted["expires_on"])
            return AccessToken(minted["access_token"], int(time.time()) + 3600)

    client = SecretClient(fresh_vault.url, Overstating(), **client_kwargs(fresh_vault))
    assert client.get_secret(READABLE["name"]).value == READABLE["value"]
    assert len(calls) == 1
    unauthorized = fresh_vault.count("Unauthorized")
    time.sleep(2.1)  # past the real (2 s, whole-second) expiry
    assert client.get_secret(READABLE["name"]).value == READABLE["value"]
    assert len(calls) == 2
    assert fresh_vault.count("Unauthorized") == unauthorized + 1
    statuses = [e["status"] for e in fresh_vault.log() if e["op"] == "GetSecret"]
    assert statuses[-2:] == [401, 200]
