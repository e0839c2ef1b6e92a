"""Microsoft's azure-keyvault-secrets, unchanged, against testvault: every secret operation.

Expected values come from the seed file (`SEED`) or from what the server answered earlier in the
same test, never from constants typed in here.
"""

import json
import math
import time
from datetime import datetime, timedelta, timezone

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.keyvault.secrets import SecretClient

from conftest import SEED, make_client

SEED_DATA = json.loads(SEED.read_text())
SEED_SECRETS = {s["name"]: s for s in SEED_DATA["secrets"]}
SEED_CERTS = {c["name"]: c for c in SEED_DATA["certificates"]}
ENABLED_SEED = [s for s in SEED_DATA["secrets"] if s.get("enabled", True)]
DISABLED_SEED = [s for s in SEED_DATA["secrets"] if not s.get("enabled", True)]
# Every name a freshly seeded vault lists under /secrets: plain secrets and certificate-backed ones.
SEEDED_SECRET_NAMES = set(SEED_SECRETS) | set(SEED_CERTS)


def error_body(e: HttpResponseError) -> dict:
    return e.response.json()["error"]


def fast_delete(client: SecretClient, name: str):
    return client.begin_delete_secret(name, _polling_interval=0.05).result()


def fast_recover(client: SecretClient, name: str):
    return client.begin_recover_deleted_secret(name, _polling_interval=0.05).result()


# ---------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("seed", ENABLED_SEED, ids=lambda s: s["name"])
def test_get_latest_matches_seed(secrets, seed):
    s = secrets.get_secret(seed["name"])
    assert s.value == seed["value"]
    assert s.name == seed["name"]
    assert s.properties.content_type == seed.get("content_type")
    assert (s.properties.tags or {}) == seed.get("tags", {})
    assert s.properties.enabled is True
    assert s.properties.version and len(s.properties.version) == 32
    assert s.id == f"{secrets.vault_url}/secrets/{seed['name']}/{s.properties.version}"
    assert s.properties.managed is None


def test_get_by_version_reads_every_seeded_value(secrets):
    seed = max(SEED_SECRETS.values(), key=lambda s: len(s.get("previous", [])))
    assert seed.get("previous"), "the seed must hold a secret with previous versions"
    versions = list(secrets.list_properties_of_secret_versions(seed["name"]))
    assert len(versions) == len(seed["previous"]) + 1
    values = {}
    for p in versions:
        assert p.name == seed["name"]
        assert p.version
        s = secrets.get_secret(seed["name"], p.version)
        assert s.properties.version == p.version
        assert s.id == p.id
        values[p.version] = s.value
    assert sorted(values.values()) == sorted(seed["previous"] + [seed["value"]])
    latest = secrets.get_secret(seed["name"])
    assert values[latest.properties.version] == seed["value"]
    # The latest is the newest by creation time (list order is by version id, not by time).
    assert latest.properties.created_on == max(p.created_on for p in versions)


def test_latest_is_sent_with_a_trailing_slash(vault, secrets):
    name = ENABLED_SEED[0]["name"]
    before = vault.log()[-1]["seq"] if vault.log() else 0
    assert secrets.get_secret(name).value == ENABLED_SEED[0]["value"]
    gets = [e for e in vault.log() if e["seq"] > before and e["op"] == "GetSecret"]
    assert gets and gets[-1]["status"] == 200
    assert gets[-1]["path"] == f"/secrets/{name}/"
    assert "version" not in gets[-1]


def test_names_are_case_insensitive(secrets):
    seed = ENABLED_SEED[0]
    for variant in (seed["name"].upper(), seed["name"].title(), seed["name"].swapcase()):
        s = secrets.get_secret(variant)
        assert s.value == seed["value"]
        assert s.name.lower() == seed["name"].lower()
    versions_upper = {p.version for p in secrets.list_properties_of_secret_versions(seed["name"].upper())}
    versions = {p.version for p in secrets.list_properties_of_secret_versions(seed["name"])}
    assert versions_upper == versions and versions


def test_unknown_name_is_404(secrets):
    with pytest.raises(ResourceNotFoundError) as e:
        secrets.get_secret("no-such-secret-anywhere")
    assert e.value.status_code == 404
    body = error_body(e.value)
    assert body["code"] == "SecretNotFound"
    assert "no-such-secret-anywhere" in body["message"]


def test_unknown_version_is_404(secrets):
    seed = ENABLED_SEED[0]
    real = secrets.get_secret(seed["name"]).properties.version
    # A well-formed version id that is not one of this secret's versions.
    bogus = "".join("0" if c != "0" else "1" for c in real)
    with pytest.raises(ResourceNotFoundError) as e:
        secrets.get_secret(seed["name"], bogus)
    assert e.value.status_code == 404
    body = error_body(e.value)
    assert body["code"] == "SecretNotFound"
    assert f"{seed['name']}/{bogus}" in body["message"]


def test_versions_of_unknown_name_is_empty(secrets):
    assert list(secrets.list_properties_of_secret_versions("never-existed-here")) == []


@pytest.mark.parametrize("seed", DISABLED_SEED, ids=lambda s: s["name"])
def test_disabled_seeded_secret_is_forbidden(secrets, seed):
    with pytest.raises(HttpResponseError) as e:
        secrets.get_secret(seed["name"])
    assert e.value.status_code == 403
    body = error_body(e.value)
    assert body["code"] == "Forbidden"
    assert body["innererror"]["code"] == "SecretDisabled"
    assert e.value.error.code == "Forbidden"
    # Still listed, with enabled false.
    listed = {p.name: p for p in secrets.list_properties_of_secrets()}
    assert listed[seed["name"]].enabled is False


# ------------------------------------------------------------------------------------ lists


def test_list_contains_every_seeded_name_once_without_values(secrets):
    names = [p.name for p in secrets.list_properties_of_secrets()]
    assert SEEDED_SECRET_NAMES <= set(names)
    assert len(names) == len(set(names))


def test_certificate_backed_secrets_are_listed_as_managed(secrets, certificates):
    listed = {p.name: p for p in secrets.list_properties_of_secrets()}
    for name, cert in SEED_CERTS.items():
        p = listed[name]
        assert p.managed is True, name
        expected_ct = cert.get("content_type") or certificates.get_certificate_policy(name).content_type
        assert p.content_type == expected_ct
        assert p.tags == {}
        # Backed by the certificate's current version.
        s = secrets.get_secret(name)
        assert s.properties.managed is True
        assert s.properties.version == certificates.get_certificate(name).properties.version
        assert s.properties.key_id and s.properties.key_id.endswith(f"/keys/{name}/{s.properties.version}")
    for name in SEED_SECRETS:
        assert listed[name].managed is None


def test_list_follows_next_link_across_pages(vault, secrets):
    prefix = "page-item-"
    made = {f"{prefix}{i:02d}" for i in range(60)}
    for n in sorted(made):
        secrets.set_secret(n, n[::-1])
    before = vault.count("GetSecrets")
    pages = [list(page) for page in secrets.list_properties_of_secrets().by_page()]
    requests = vault.count("GetSecrets") - before
    names = [p.name for page in pages for p in page]
    assert len(names) == len(set(names)), "a name came back twice"
    assert made | SEEDED_SECRET_NAMES <= set(names)
    # The service's default page is 25 items; the SDK asked once per page.
    assert len(pages) == math.ceil(len(names) / 25) >= 3
    assert requests == len(pages)
    assert all(len(p) == 25 for p in pages[:-1])


def test_list_with_max_page_size(vault, secrets):
    all_names = {p.name for p in secrets.list_properties_of_secrets()}
    before = vault.count("GetSecrets")
    pages = [[p.name for p in page]
             for page in secrets.list_properties_of_secrets(max_page_size=4).by_page()]
    assert vault.count("GetSecrets") - before == len(pages) == math.ceil(len(all_names) / 4)
    assert all(len(p) <= 4 for p in pages)
    assert sorted(n for p in pages for n in p) == sorted(all_names)


def test_list_with_server_page_size_7(fresh_vault):
    client = make_client(SecretClient, fresh_vault)
    fresh_vault.settings(page_size=7)
    made = {f"bulk-{i:02d}" for i in range(60)}
    for n in sorted(made):
        client.set_secret(n, "v-" + n)
    expected = made | SEEDED_SECRET_NAMES
    before = fresh_vault.count("GetSecrets")
    pages = [[p.name for p in page] for page in client.list_properties_of_secrets().by_page()]
    names = [n for p in pages for n in p]
    assert sorted(names) == sorted(expected), "every name exactly once"
    assert len(pages) == math.ceil(len(expected) / 7)
    assert [len(p) for p in pages[:-1]] == [7] * (len(pages) - 1)
    assert fresh_vault.count("GetSecrets") - before == len(pages)
    # The vault-wide list is sorted by name, case-insensitively, as the service sorts it.
    assert names == sorted(names, key=str.upper)


def test_list_versions_created_order_and_sets(secrets):
    name = "rotating-secret"
    first = secrets.set_secret(name, "first-value")
    time.sleep(1.05)  # `created` has one-second resolution
    second = secrets.set_secret(name, "second-value")
    assert first.properties.version != second.properties.version
    versions = list(secrets.list_properties_of_secret_versions(name))
    assert {p.version for p in versions} == {first.properties.version, second.properties.version}
    for p in versions:
        assert p.id.endswith(f"/secrets/{name}/{p.version}")
    by_created = sorted(versions, key=lambda p: p.created_on)
    assert [p.version for p in by_created] == [first.properties.version, second.properties.version]
    assert by_created[0].created_on < by_created[1].created_on


# ----------------------------------------------------------------------------------- writes


def test_set_secret_rotation(secrets):
    name = "rotation-check"
    v1 = secrets.set_secret(name, "old-value", content_type="text/plain", tags={"gen": "1"})
    assert v1.value == "old-value"
    assert secrets.get_secret(name).value == "old-value"
    v2 = secrets.set_secret(name, "new-value")
    assert v2.properties.version != v1.properties.version
    latest = secrets.get_secret(name)
    assert latest.value == "new-value"
    assert latest.properties.version == v2.properties.version
    # The old version stays readable by its id, with its own attributes.
    old = secrets.get_secret(name, v1.properties.version)
    assert old.value == "old-value"
    assert old.properties.content_type == "text/plain"
    assert old.properties.tags == {"gen": "1"}
    assert latest.properties.tags in (None, {})


def test_update_secret_properties(secrets):
    name = "update-props"
    created = secrets.set_secret(name, "payload")
    version = created.properties.version
    nbf = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1)
    exp = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=30)
    updated = secrets.update_secret_properties(
        name, version, content_type="application/json", tags={"team": "kvfs", "env": "test"},
        not_before=nbf, expires_on=exp)
    assert updated.version == version
    assert updated.content_type == "application/json"
    assert updated.tags == {"team": "kvfs", "env": "test"}
    assert updated.not_before == nbf
    assert updated.expires_on == exp
    assert updated.updated_on >= created.properties.updated_on
    got = secrets.get_secret(name)
    assert got.value == "payload"
    assert got.properties.content_type == "application/json"
    assert got.properties.tags == {"team": "kvfs", "env": "test"}
    assert (got.properties.not_before, got.properties.expires_on) == (nbf, exp)

    # Disable: GET of that version is refused with the service's 403, the list still shows it.
    disabled = secrets.update_secret_properties(name, version, enabled=False)
    assert disabled.enabled is False
    for args in ((name,), (name, version)):
        with pytest.raises(HttpResponseError) as e:
            secrets.get_secret(*args)
        assert e.value.status_code == 403
        body = error_body(e.value)
        assert body["code"] == "Forbidden"
        assert body["innererror"]["code"] == "SecretDisabled"
        assert body["message"] == "Operation get is not allowed on a disabled secret."
    listed = [p for p in secrets.list_properties_of_secrets() if p.name == name]
    assert len(listed) == 1 and listed[0].enabled is False
    (v,) = list(secrets.list_properties_of_secret_versions(name))
    assert v.enabled is False

    # Enable again (latest version, no version given).
    enabled = secrets.update_secret_properties(name, enabled=True)
    assert enabled.enabled is True and enabled.version == version
    assert secrets.get_secret(name).value == "payload"


def test_disabled_older_version_only_blocks_that_version(secrets):
    name = "partly-disabled"
    old = secrets.set_secret(name, "old")
    new = secrets.set_secret(name, "new")
    secrets.update_secret_properties(name, old.properties.version, enabled=False)
    assert secrets.get_secret(name).value == "new"
    with pytest.raises(HttpResponseError) as e:
        secrets.get_secret(name, old.properties.version)
    assert e.value.status_code == 403
    assert error_body(e.value)["innererror"]["code"] == "SecretDisabled"
    assert secrets.get_secret(name, new.properties.version).value == "new"


def test_expired_and_not_yet_valid_secrets_are_still_readable(secrets):
    past = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=2)
    future = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=2)
    secrets.set_secret("expired-secret", "still-here", expires_on=past)
    s = secrets.get_secret("expired-secret")
    assert s.value == "still-here"
    assert s.properties.expires_on == past
    secrets.set_secret("future-secret", "early", not_before=future)
    f = secrets.get_secret("future-secret")
    assert f.value == "early"
    assert f.properties.not_before == future


def test_set_secret_attributes_round_trip(secrets):
    s = secrets.set_secret("born-disabled", "x", enabled=False, content_type="text/csv", tags={"a": "b"})
    assert s.properties.enabled is False
    assert s.properties.content_type == "text/csv"
    with pytest.raises(HttpResponseError) as e:
        secrets.get_secret("born-disabled")
    assert e.value.status_code == 403


# ------------------------------------------------------------------------ delete / recover


def test_delete_get_deleted_recover_purge(secrets):
    name = "short-lived"
    created = secrets.set_secret(name, "ephemeral", tags={"k": "v"})
    deleted = fast_delete(secrets, name)
    assert deleted.name == name
    assert deleted.recovery_id and deleted.recovery_id.endswith(f"/deletedsecrets/{name}")
    assert deleted.deleted_date is not None
    assert deleted.scheduled_purge_date > deleted.deleted_date
    assert deleted.properties.version == created.properties.version

    with pytest.raises(ResourceNotFoundError):
        secrets.get_secret(name)
    assert name not in {p.name for p in secrets.list_properties_of_secrets()}

    got = secrets.get_deleted_secret(name)
    assert got.recovery_id == deleted.recovery_id
    assert got.properties.version == created.properties.version
    assert got.properties.tags == {"k": "v"}

    # The name is taken while the secret sits in the recycle bin.
    with pytest.raises(HttpResponseError) as e:
        secrets.set_secret(name, "reuse")
    assert e.value.status_code == 409
    assert isinstance(e.value, ResourceExistsError)
    body = error_body(e.value)
    assert body["code"] == "Conflict"
    assert body["innererror"]["code"] == "ObjectIsDeletedButRecoverable"

    recovered = fast_recover(secrets, name)
    assert recovered.name == name
    assert secrets.get_secret(name).value == "ephemeral"
    assert secrets.get_secret(name, created.properties.version).value == "ephemeral"
    with pytest.raises(ResourceNotFoundError):
        secrets.get_deleted_secret(name)

    fast_delete(secrets, name)
    assert secrets.purge_deleted_secret(name) is None
    with pytest.raises(ResourceNotFoundError) as e:
        secrets.get_deleted_secret(name)
    assert e.value.status_code == 404
    with pytest.raises(ResourceNotFoundError):
        secrets.get_secret(name)
    # Purged: the name is free again, with a brand-new history.
    again = secrets.set_secret(name, "second-life")
    assert [p.version for p in secrets.list_properties_of_secret_versions(name)] == [again.properties.version]


def test_delete_unknown_secret_is_404(secrets):
    with pytest.raises(ResourceNotFoundError):
        secrets.begin_delete_secret("not-there-to-delete", _polling_interval=0.05)
    with pytest.raises(ResourceNotFoundError):
        secrets.get_deleted_secret("not-there-to-delete")
    with pytest.raises(ResourceNotFoundError):
        secrets.purge_deleted_secret("not-there-to-delete")


def test_certificate_backed_secret_cannot_be_set_or_deleted_directly(secrets):
    """The key and secret of a certificate change only through the certificate."""
    name = next(iter(SEED_CERTS))
    before = secrets.get_secret(name).properties.version
    with pytest.raises(HttpResponseError) as e:
        secrets.set_secret(name, "overwrite")
    assert e.value.status_code in (403, 409)
    with pytest.raises(HttpResponseError) as e:
        secrets.begin_delete_secret(name, _polling_interval=0.05).result()
    assert e.value.status_code in (403, 409)
    assert secrets.get_secret(name).properties.version == before
    assert name in {p.name for p in secrets.list_properties_of_secrets()}


def test_list_deleted_secrets(secrets):
    for name in ("in-the-bin-a", "in-the-bin-b"):
        secrets.set_secret(name, "x", tags={"bin": name})
        fast_delete(secrets, name)
    deleted = {d.name: d for d in secrets.list_deleted_secrets()}
    for name in ("in-the-bin-a", "in-the-bin-b"):
        d = deleted[name]
        assert d.recovery_id == f"{secrets.vault_url}/deletedsecrets/{name}"
        assert d.deleted_date is not None and d.scheduled_purge_date > d.deleted_date
        assert d.properties.tags == {"bin": name}
        assert d.id == f"{secrets.vault_url}/secrets/{name}"
    live = {p.name for p in secrets.list_properties_of_secrets()}
    assert not (set(deleted) & live)
    secrets.purge_deleted_secret("in-the-bin-a")
    after = {d.name for d in secrets.list_deleted_secrets(max_page_size=1)}
    assert "in-the-bin-a" not in after and "in-the-bin-b" in after
