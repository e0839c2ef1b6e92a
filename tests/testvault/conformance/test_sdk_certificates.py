"""Microsoft's azure-keyvault-certificates (and -secrets for the private part), unchanged, against
testvault: read, list, policy, create, import (PFX with and without password, PEM, with a chain),
the backing secret and key, delete; plus the wire forms the SDK hides (`cer`, `x5t`,
`outContentType`) through raw requests."""

import base64
import datetime
import hashlib
import json

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.certificates import (
    CertificateContentType,
    CertificatePolicy,
    KeyCurveName,
    KeyType,
    WellKnownIssuerNames,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from conftest import SEED, control_token, raw_request

SEED_DATA = json.loads(SEED.read_text())
SEED_CERTS = {c["name"]: c for c in SEED_DATA["certificates"]}
PFX = CertificateContentType.pkcs12.value
PEM = CertificateContentType.pem.value
FAST = {"_polling_interval": 0.05}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def same_public_key(a, b) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_key().public_bytes(*fmt) == b.public_key().public_bytes(*fmt)


def name_parts(name) -> set:
    """{(attribute, value)} of an x509.Name or of a Key Vault subject string "CN=a, O=b"."""
    if isinstance(name, str):
        return {tuple(p.strip().split("=", 1)) for p in name.split(",")}
    return {(a.rfc4514_attribute_name, a.value) for a in name}


def read_pfx_secret(secrets, name, version=None):
    """(key, leaf, other certificates) from a certificate's PFX secret (empty password)."""
    s = secrets.get_secret(name, version)
    assert s.properties.content_type == PFX
    key, leaf, extra = pkcs12.load_key_and_certificates(base64.b64decode(s.value), None)
    return s, key, leaf, extra


def read_pem_secret(secrets, name, version=None):
    s = secrets.get_secret(name, version)
    assert s.properties.content_type == PEM
    assert s.value.startswith("-----BEGIN PRIVATE KEY-----"), "PKCS#8 key block first"
    key = serialization.load_pem_private_key(s.value.encode(), None)
    certs = x509.load_pem_x509_certificates(s.value.encode())
    return s, key, certs


# ------------------------------------------------------------------- building test PKI


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, subject_key, issuer, issuer_key, ca: bool, sans=()):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(subject_key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=90))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


class Pki:
    """Root CA -> intermediate CA -> leaves, made with `cryptography`."""

    def __init__(self):
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _cert("Import Test Root", self.root_key, "Import Test Root", self.root_key, True)
        self.int_key = ec.generate_private_key(ec.SECP256R1())
        self.intermediate = _cert("Import Test Intermediate", self.int_key, "Import Test Root",
                                  self.root_key, True)

    def leaf(self, cn, key):
        return _cert(cn, key, "Import Test Intermediate", self.int_key, False, sans=[cn])


@pytest.fixture(scope="module")
def pki():
    return Pki()


@pytest.fixture(scope="module")
def leaf_rsa(pki):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, pki.leaf("rsa.import.test", key)


@pytest.fixture(scope="module")
def leaf_ec(pki):
    key = ec.generate_private_key(ec.SECP384R1())
    return key, pki.leaf("ec.import.test", key)


# ------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("name", list(SEED_CERTS))
def test_get_latest_has_policy_and_version_has_none(certificates, name):
    seed = SEED_CERTS[name]
    latest = certificates.get_certificate(name)
    assert latest.name == name
    assert latest.policy is not None
    assert latest.policy.subject == seed["subject"]
    assert latest.policy.exportable == seed.get("exportable", True)
    assert latest.policy.content_type == (seed.get("content_type") or PFX)
    leaf = x509.load_der_x509_certificate(bytes(latest.cer))
    assert name_parts(leaf.subject) == name_parts(seed["subject"])
    version = latest.properties.version
    assert latest.key_id == f"{certificates.vault_url}/keys/{name}/{version}"
    assert latest.secret_id == f"{certificates.vault_url}/secrets/{name}/{version}"
    by_version = certificates.get_certificate_version(name, version)
    assert by_version.policy is None
    assert bytes(by_version.cer) == bytes(latest.cer)
    assert by_version.properties.version == version
    # nbf/exp mirror the X.509 validity window.
    assert latest.properties.not_before == leaf.not_valid_before_utc
    assert latest.properties.expires_on == leaf.not_valid_after_utc
    assert latest.properties.x509_thumbprint == hashlib.sha1(bytes(latest.cer)).digest()


def test_get_certificate_policy(certificates):
    for name, seed in SEED_CERTS.items():
        policy = certificates.get_certificate_policy(name)
        assert policy.subject == seed["subject"]
        assert policy.content_type == (seed.get("content_type") or PFX)
        assert policy.exportable == seed.get("exportable", True)
        assert policy.key_type == (KeyType.ec if seed.get("key") == "EC" else KeyType.rsa)
        assert policy.issuer_name


def test_certificate_404s(certificates):
    with pytest.raises(ResourceNotFoundError) as e:
        certificates.get_certificate("no-such-cert")
    assert e.value.response.json()["error"]["code"] == "CertificateNotFound"
    name = next(iter(SEED_CERTS))
    with pytest.raises(ResourceNotFoundError):
        certificates.get_certificate_version(name, "0" * 32)
    with pytest.raises(ResourceNotFoundError):
        certificates.get_certificate_policy("no-such-cert")
    assert list(certificates.list_properties_of_certificate_versions("no-such-cert")) == []


def test_list_certificates_and_versions(certificates):
    listed = {p.name: p for p in certificates.list_properties_of_certificates()}
    assert set(SEED_CERTS) <= set(listed)
    for name in SEED_CERTS:
        latest = certificates.get_certificate(name)
        item = listed[name]
        assert item.id == f"{certificates.vault_url}/certificates/{name}"
        assert item.x509_thumbprint == latest.properties.x509_thumbprint
        versions = list(certificates.list_properties_of_certificate_versions(name))
        assert len(versions) == SEED_CERTS[name].get("versions", 1)
        assert latest.properties.version in {v.version for v in versions}


def test_seeded_web_chain_verifies_to_the_vault_ca(vault, secrets, certificates):
    name = next(n for n, c in SEED_CERTS.items() if c.get("issuer", "chain") == "chain"
                and c.get("exportable", True) and (c.get("content_type") or PFX) == PFX)
    _, key, leaf, extra = read_pfx_secret(secrets, name)
    assert key is not None and same_public_key(key, leaf)
    assert len(extra) >= 1
    intermediate = extra[0]
    ca = x509.load_pem_x509_certificate(open(vault.ca, "rb").read())
    leaf.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(ca)
    assert leaf.public_bytes(serialization.Encoding.DER) == bytes(certificates.get_certificate(name).cer)
    dns = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(dns.get_values_for_type(x509.DNSName)) == set(SEED_CERTS[name]["dns_names"])


def test_seeded_pem_certificate_secret(secrets, certificates):
    for name, seed in SEED_CERTS.items():
        if seed.get("content_type") != PEM:
            continue
        s, key, certs = read_pem_secret(secrets, name)
        cert = certificates.get_certificate(name)
        assert certs[0].public_bytes(serialization.Encoding.DER) == bytes(cert.cer)
        assert same_public_key(key, certs[0])
        assert s.properties.managed is True
        assert s.properties.key_id == cert.key_id


def test_non_exportable_certificate_secret_has_no_private_key(secrets, certificates):
    names = [n for n, c in SEED_CERTS.items() if c.get("exportable", True) is False]
    assert names, "the seed must hold a non-exportable certificate"
    for name in names:
        cert = certificates.get_certificate(name)
        assert cert.policy.exportable is False
        s = secrets.get_secret(name)
        assert s.properties.content_type == PFX
        key, leaf, extra = pkcs12.load_key_and_certificates(base64.b64decode(s.value), None)
        assert key is None
        ders = [c.public_bytes(serialization.Encoding.DER) for c in ([leaf] if leaf else []) + extra]
        assert bytes(cert.cer) in ders, "the public certificate is still there"
        assert "PRIVATE KEY" not in base64.b64decode(s.value).decode("latin-1")


def test_wire_cer_and_x5t(vault, certificates, secrets):
    token = control_token(vault)
    for name in SEED_CERTS:
        status, _, body = raw_request(vault, "GET", f"/certificates/{name}",
                                      {"api-version": "7.5"}, token=token)
        assert status == 200
        der = base64.b64decode(body["cer"], validate=True)  # standard base64, padded
        assert len(body["cer"]) % 4 == 0
        assert body["x5t"] == b64url(hashlib.sha1(der).digest())
        assert "=" not in body["x5t"] and len(body["x5t"]) == 27
        assert der == bytes(certificates.get_certificate(name).cer)
        x509.load_der_x509_certificate(der)
        # The same DER is the first certificate in the backing secret.
        if SEED_CERTS[name].get("exportable", True):
            if (SEED_CERTS[name].get("content_type") or PFX) == PFX:
                _, _, leaf, _ = read_pfx_secret(secrets, name)
            else:
                leaf = read_pem_secret(secrets, name)[2][0]
            assert leaf.public_bytes(serialization.Encoding.DER) == der


def test_out_content_type_converts_pfx_secret_to_pem(vault, certificates):
    """outContentType (2025-07-01+) is not exposed by the Python SDK: raw GET with a vault token."""
    token = control_token(vault)
    name = next(n for n, c in SEED_CERTS.items()
                if c.get("exportable", True) and (c.get("content_type") or PFX) == PFX)
    cert = certificates.get_certificate(name)
    status, _, plain = raw_request(vault, "GET", f"/secrets/{name}", {"api-version": "2025-07-01"},
                                   token=token)
    assert status == 200 and plain["contentType"] == PFX
    status, _, body = raw_request(
        vault, "GET", f"/secrets/{name}/{cert.properties.version}",
        {"api-version": "2025-07-01", "outContentType": PEM}, token=token)
    assert status == 200
    assert body["contentType"] == PEM
    assert body["id"] == plain["id"]
    assert body["value"].startswith("-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(body["value"].encode(), None)
    certs = x509.load_pem_x509_certificates(body["value"].encode())
    assert certs[0].public_bytes(serialization.Encoding.DER) == bytes(cert.cer)
    assert same_public_key(key, certs[0])
    pfx_key, _, _ = pkcs12.load_key_and_certificates(base64.b64decode(plain["value"]), None)
    assert same_public_key(key, pfx_key)
    # A plain secret is returned unchanged; an unsupported target type is refused.
    plain_secret = SEED_DATA["secrets"][0]["name"]
    status, _, same = raw_request(vault, "GET", f"/secrets/{plain_secret}",
                                  {"api-version": "2025-07-01", "outContentType": PEM}, token=token)
    assert status == 200 and same["value"] == SEED_DATA["secrets"][0]["value"]
    status, _, err = raw_request(vault, "GET", f"/secrets/{name}",
                                 {"api-version": "2025-07-01", "outContentType": "text/plain"},
                                 token=token)
    assert status == 400 and err["error"]["code"] == "BadParameter"


# -------------------------------------------------------------------------------- create


def test_create_with_default_policy(vault, certificates, secrets, keys):
    policy = CertificatePolicy.get_default()
    before = vault.count("GetCertificateOperation")
    cert = certificates.begin_create_certificate("created-default", policy, **FAST).result()
    assert vault.count("GetCertificateOperation") > before, "the poller polled the pending operation"
    assert cert.name == "created-default"
    assert cert.policy.subject == policy.subject
    assert cert.policy.issuer_name == WellKnownIssuerNames.self
    leaf = x509.load_der_x509_certificate(bytes(cert.cer))
    assert name_parts(leaf.subject) == name_parts(policy.subject)
    leaf.verify_directly_issued_by(leaf)  # self-signed
    assert isinstance(leaf.public_key(), rsa.RSAPublicKey)
    assert leaf.public_key().key_size == 2048
    _, key, pfx_leaf, _ = read_pfx_secret(secrets, "created-default", cert.properties.version)
    assert pfx_leaf.public_bytes(serialization.Encoding.DER) == bytes(cert.cer)
    assert same_public_key(key, leaf)
    # The backing key carries the same public key, same version.
    k = keys.get_key("created-default", cert.properties.version)
    assert k.properties.managed is True
    assert int.from_bytes(k.key.n, "big") == leaf.public_key().public_numbers().n
    op = certificates.get_certificate_operation("created-default")
    assert op.status.lower() == "completed"
    assert op.csr


def test_create_ec_pem_certificate(certificates, secrets):
    policy = CertificatePolicy(
        issuer_name=WellKnownIssuerNames.self, subject="CN=ec-created.example.test",
        san_dns_names=["ec-created.example.test"], key_type=KeyType.ec,
        key_curve_name=KeyCurveName.p_384, content_type=CertificateContentType.pem,
        exportable=True, validity_in_months=6)
    cert = certificates.begin_create_certificate("created-ec-pem", policy, tags={"k": "v"},
                                                 **FAST).result()
    assert cert.policy.content_type == CertificateContentType.pem
    assert cert.policy.key_type == KeyType.ec
    assert cert.policy.key_curve_name == KeyCurveName.p_384
    assert cert.properties.tags == {"k": "v"}
    leaf = x509.load_der_x509_certificate(bytes(cert.cer))
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert leaf.public_key().curve.name == "secp384r1"
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["ec-created.example.test"]
    s, key, certs = read_pem_secret(secrets, "created-ec-pem", cert.properties.version)
    assert certs[0].public_bytes(serialization.Encoding.DER) == bytes(cert.cer)
    assert same_public_key(key, leaf)


def test_create_new_version_and_list_versions(certificates):
    policy = CertificatePolicy.get_default()
    first = certificates.begin_create_certificate("two-versions", policy, **FAST).result()
    second = certificates.begin_create_certificate("two-versions", policy, **FAST).result()
    assert first.properties.version != second.properties.version
    versions = {v.version for v in certificates.list_properties_of_certificate_versions("two-versions")}
    assert versions == {first.properties.version, second.properties.version}
    assert certificates.get_certificate("two-versions").properties.version == second.properties.version
    old = certificates.get_certificate_version("two-versions", first.properties.version)
    assert bytes(old.cer) == bytes(first.cer)
    assert "two-versions" in {p.name for p in certificates.list_properties_of_certificates()}


# -------------------------------------------------------------------------------- import


def test_import_pfx_without_password(certificates, secrets, pki, leaf_rsa):
    key, leaf = leaf_rsa
    blob = pkcs12.serialize_key_and_certificates(
        b"rsa-import", key, leaf, [pki.intermediate], serialization.NoEncryption())
    cert = certificates.import_certificate("imported-pfx", blob, tags={"src": "pfx"})
    assert bytes(cert.cer) == leaf.public_bytes(serialization.Encoding.DER)
    assert cert.properties.tags == {"src": "pfx"}
    assert cert.policy.content_type == CertificateContentType.pkcs12
    assert cert.properties.x509_thumbprint == leaf.fingerprint(hashes.SHA1())
    s, got_key, got_leaf, extra = read_pfx_secret(secrets, "imported-pfx", cert.properties.version)
    assert got_leaf == leaf
    assert got_key.private_numbers() == key.private_numbers()
    assert pki.intermediate in extra
    got_leaf.verify_directly_issued_by(pki.intermediate)
    assert s.properties.managed is True


def test_import_pfx_with_password(certificates, secrets, pki, leaf_ec):
    key, leaf = leaf_ec
    blob = pkcs12.serialize_key_and_certificates(
        b"ec-import", key, leaf, [pki.intermediate],
        serialization.BestAvailableEncryption(b"import-password"))
    cert = certificates.import_certificate("imported-pfx-pw", blob, password="import-password")
    assert bytes(cert.cer) == leaf.public_bytes(serialization.Encoding.DER)
    # The backing PFX comes back with an empty password, never the import password.
    _, got_key, got_leaf, extra = read_pfx_secret(secrets, "imported-pfx-pw")
    assert got_leaf == leaf
    assert got_key.private_numbers() == key.private_numbers()
    assert pki.intermediate in extra


def test_import_pfx_with_wrong_password_is_refused(certificates, pki, leaf_ec):
    key, leaf = leaf_ec
    blob = pkcs12.serialize_key_and_certificates(
        b"x", key, leaf, None, serialization.BestAvailableEncryption(b"right"))
    with pytest.raises(HttpResponseError) as e:
        certificates.import_certificate("imported-wrong-pw", blob, password="wrong")
    assert e.value.status_code == 400
    assert e.value.response.json()["error"]["code"] == "BadParameter"
    with pytest.raises(ResourceNotFoundError):
        certificates.get_certificate("imported-wrong-pw")


def test_import_pem(certificates, secrets, pki, leaf_rsa):
    key, leaf = leaf_rsa
    pem = (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
           + leaf.public_bytes(serialization.Encoding.PEM)
           + pki.intermediate.public_bytes(serialization.Encoding.PEM))
    policy = CertificatePolicy(issuer_name=WellKnownIssuerNames.unknown,
                               content_type=CertificateContentType.pem)
    cert = certificates.import_certificate("imported-pem", pem, policy=policy)
    assert bytes(cert.cer) == leaf.public_bytes(serialization.Encoding.DER)
    assert cert.policy.content_type == CertificateContentType.pem
    s, got_key, certs = read_pem_secret(secrets, "imported-pem", cert.properties.version)
    assert certs[0] == leaf
    assert pki.intermediate in certs[1:]
    assert got_key.private_numbers() == key.private_numbers()


def test_import_pem_as_plain_text_raw(vault, certificates, secrets, pki, leaf_ec):
    """Other SDKs (.NET, JS) send PEM as text rather than base64; the service takes both."""
    key, leaf = leaf_ec
    pem = (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
           + leaf.public_bytes(serialization.Encoding.PEM)).decode()
    status, _, body = raw_request(
        vault, "POST", "/certificates/imported-pem-text/import", {"api-version": "7.5"},
        token=control_token(vault),
        body={"value": pem, "policy": {"secret_props": {"contentType": PEM}}})
    assert status == 200, body
    assert base64.b64decode(body["cer"]) == leaf.public_bytes(serialization.Encoding.DER)
    _, got_key, certs = read_pem_secret(secrets, "imported-pem-text")
    assert certs[0] == leaf
    assert got_key.private_numbers() == key.private_numbers()
    assert certificates.get_certificate_policy("imported-pem-text").content_type == PEM


def test_import_non_exportable_keeps_key_private(certificates, secrets, pki, leaf_ec):
    key, leaf = leaf_ec
    blob = pkcs12.serialize_key_and_certificates(b"ne", key, leaf, None, serialization.NoEncryption())
    # The SDK drops key_props when `exportable=False` is all it has, so name the key type too.
    policy = CertificatePolicy(issuer_name=WellKnownIssuerNames.unknown, exportable=False,
                               key_type=KeyType.ec, key_curve_name=KeyCurveName.p_384,
                               content_type=CertificateContentType.pkcs12)
    cert = certificates.import_certificate("imported-non-exportable", blob, policy=policy)
    assert cert.policy.exportable is False
    s = secrets.get_secret("imported-non-exportable")
    got_key, got_leaf, extra = pkcs12.load_key_and_certificates(base64.b64decode(s.value), None)
    assert got_key is None
    assert leaf in ([got_leaf] if got_leaf else []) + extra


# ------------------------------------------------------------------------ update / delete


def test_update_certificate_properties_disables_the_secret(certificates, secrets):
    cert = certificates.begin_create_certificate("toggle-cert", CertificatePolicy.get_default(),
                                                 **FAST).result()
    updated = certificates.update_certificate_properties("toggle-cert", enabled=False,
                                                         tags={"state": "off"})
    assert updated.properties.enabled is False
    assert updated.properties.tags == {"state": "off"}
    # The certificate is still readable; its private part (the secret) is not.
    assert certificates.get_certificate("toggle-cert").properties.enabled is False
    with pytest.raises(HttpResponseError) as e:
        secrets.get_secret("toggle-cert", cert.properties.version)
    assert e.value.status_code == 403
    assert e.value.response.json()["error"]["innererror"]["code"] == "SecretDisabled"
    certificates.update_certificate_properties("toggle-cert", enabled=True)
    assert secrets.get_secret("toggle-cert").properties.version == cert.properties.version


def test_delete_certificate_takes_key_and_secret_along(certificates, secrets, keys):
    name = "delete-cert"
    cert = certificates.begin_create_certificate(name, CertificatePolicy.get_default(), **FAST).result()
    assert name in {p.name for p in secrets.list_properties_of_secrets()}
    assert name in {p.name for p in keys.list_properties_of_keys()}
    deleted = certificates.begin_delete_certificate(name, **FAST).result()
    assert deleted.name == name
    assert deleted.recovery_id.endswith(f"/deletedcertificates/{name}")
    assert bytes(deleted.cer) == bytes(cert.cer)
    assert name not in {p.name for p in certificates.list_properties_of_certificates()}
    assert name not in {p.name for p in secrets.list_properties_of_secrets()}
    assert name not in {p.name for p in keys.list_properties_of_keys()}
    with pytest.raises(ResourceNotFoundError):
        certificates.get_certificate(name)
    with pytest.raises(ResourceNotFoundError):
        secrets.get_secret(name)
    with pytest.raises(ResourceNotFoundError):
        keys.get_key(name)
    assert certificates.get_deleted_certificate(name).properties.version == cert.properties.version

    recovered = certificates.begin_recover_deleted_certificate(name, **FAST).result()
    assert recovered.properties.version == cert.properties.version
    assert secrets.get_secret(name).properties.version == cert.properties.version
    assert keys.get_key(name).properties.version == cert.properties.version

    certificates.begin_delete_certificate(name, **FAST).result()
    certificates.purge_deleted_certificate(name)
    with pytest.raises(ResourceNotFoundError):
        certificates.get_deleted_certificate(name)
    with pytest.raises(ResourceNotFoundError):
        secrets.get_deleted_secret(name)
    again = certificates.begin_create_certificate(name, CertificatePolicy.get_default(), **FAST).result()
    assert [v.version for v in certificates.list_properties_of_certificate_versions(name)] == \
        [again.properties.version]


def test_list_deleted_certificates(certificates, secrets, keys):
    cert = certificates.begin_create_certificate("bin-cert", CertificatePolicy.get_default(), **FAST).result()
    certificates.begin_delete_certificate("bin-cert", **FAST).result()
    deleted = {d.name: d for d in certificates.list_deleted_certificates()}
    d = deleted["bin-cert"]
    assert d.recovery_id == f"{certificates.vault_url}/deletedcertificates/bin-cert"
    assert d.properties.x509_thumbprint == cert.properties.x509_thumbprint
    assert d.deleted_on is not None and d.scheduled_purge_date > d.deleted_on
    # Its key and secret went to their recycle bins with it.
    assert "bin-cert" in {x.name for x in secrets.list_deleted_secrets()}
    assert "bin-cert" in {x.name for x in keys.list_deleted_keys()}
