"""Microsoft's azure-keyvault-keys, unchanged, against testvault: create, import, read, list,
update, delete, and remote signing checked with `cryptography` against the public JWK."""

import hashlib
import json

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.keyvault.keys import JsonWebKey, KeyCurveName, KeyType
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from conftest import SEED, client_kwargs

SEED_DATA = json.loads(SEED.read_text())
SEED_KEYS = {k["name"]: k for k in SEED_DATA["keys"]}
SEED_CERTS = {c["name"]: c for c in SEED_DATA["certificates"]}

RSA_SIZES = (2048, 3072, 4096)
CURVES = {
    KeyCurveName.p_256: (ec.SECP256R1(), 32),
    KeyCurveName.p_384: (ec.SECP384R1(), 48),
    KeyCurveName.p_521: (ec.SECP521R1(), 66),
}


def to_bytes(n: int, length: int | None = None) -> bytes:
    return n.to_bytes(length or (n.bit_length() + 7) // 8, "big")


def from_bytes(b: bytes) -> int:
    return int.from_bytes(b, "big")


def public_key_of(jwk: JsonWebKey):
    """The `cryptography` public key a JWK describes."""
    if jwk.kty in (KeyType.rsa, KeyType.rsa_hsm):
        return rsa.RSAPublicNumbers(from_bytes(jwk.e), from_bytes(jwk.n)).public_key()
    curve = CURVES[KeyCurveName(jwk.crv)][0]
    return ec.EllipticCurvePublicNumbers(from_bytes(jwk.x), from_bytes(jwk.y), curve).public_key()


def crypto_client(vault, credential, key):
    return CryptographyClient(key, credential, **client_kwargs(vault))


@pytest.fixture(scope="module")
def created_keys(keys):
    """One key of each kind, made once per module (RSA-4096 generation is the slow one)."""
    out = {}
    for size in RSA_SIZES:
        out[f"rsa-{size}"] = keys.create_rsa_key(f"made-rsa-{size}", size=size)
    for crv in CURVES:
        out[f"ec-{crv.value}"] = keys.create_ec_key(f"made-ec-{crv.value.lower()}", curve=crv)
    return out


# ---------------------------------------------------------------------------------- create


@pytest.mark.parametrize("size", RSA_SIZES)
def test_create_rsa_jwk_sizes(keys, created_keys, size):
    k = created_keys[f"rsa-{size}"]
    assert k.key_type == KeyType.rsa
    assert len(k.key.n) == size // 8
    assert from_bytes(k.key.n).bit_length() == size
    assert from_bytes(k.key.e) == 65537
    for private in ("d", "p", "q", "dp", "dq", "qi"):
        assert getattr(k.key, private) is None, f"private member {private} was returned"
    assert set(k.key_operations) >= {"sign", "verify"}
    assert k.properties.enabled is True
    assert k.id == f"{keys.vault_url}/keys/{k.name}/{k.properties.version}"
    again = keys.get_key(k.name)
    assert again.key.n == k.key.n and again.key.e == k.key.e
    assert again.properties.version == k.properties.version


@pytest.mark.parametrize("crv", list(CURVES), ids=lambda c: c.value)
def test_create_ec_jwk_sizes(keys, created_keys, crv):
    k = created_keys[f"ec-{crv.value}"]
    curve, length = CURVES[crv]
    assert k.key_type == KeyType.ec
    assert k.key.crv == crv
    assert len(k.key.x) == length and len(k.key.y) == length
    assert k.key.d is None
    # The point is on the curve (cryptography refuses it otherwise).
    public_key_of(k.key)
    assert set(k.key_operations) >= {"sign", "verify"}
    again = keys.get_key(k.name, k.properties.version)
    assert (again.key.x, again.key.y) == (k.key.x, k.key.y)


def test_create_key_with_attributes_and_tags(keys):
    k = keys.create_rsa_key("tagged-rsa", size=2048, tags={"purpose": "test"}, enabled=False,
                            key_operations=["sign", "verify"])
    assert k.properties.tags == {"purpose": "test"}
    assert k.properties.enabled is False
    assert sorted(k.key_operations) == ["sign", "verify"]
    got = keys.get_key("tagged-rsa")
    assert got.properties.tags == {"purpose": "test"} and got.properties.enabled is False


# ------------------------------------------------------------------------------------ read


@pytest.mark.parametrize("name", list(SEED_KEYS))
def test_seeded_keys_match_seed(keys, name):
    seed = SEED_KEYS[name]
    k = keys.get_key(name)
    versions = list(keys.list_properties_of_key_versions(name))
    assert len(versions) == seed.get("versions", 1)
    if seed.get("kty", "RSA").startswith("RSA"):
        assert len(k.key.n) * 8 == seed.get("size", 2048)
    else:
        assert k.key.crv == seed.get("curve", "P-256")
    for v in versions:
        got = keys.get_key(name, v.version)
        assert got.properties.version == v.version
        assert got.id == v.id
    latest = max(versions, key=lambda v: v.created_on)
    assert k.properties.created_on == latest.created_on


def test_get_key_case_insensitive_and_404(keys):
    name = next(iter(SEED_KEYS))
    assert keys.get_key(name.upper()).key.kid == keys.get_key(name).key.kid
    with pytest.raises(ResourceNotFoundError) as e:
        keys.get_key("no-such-key")
    assert e.value.status_code == 404
    assert e.value.response.json()["error"]["code"] == "KeyNotFound"
    version = keys.get_key(name).properties.version
    with pytest.raises(ResourceNotFoundError):
        keys.get_key(name, "".join("1" if c == "0" else "0" for c in version))
    assert list(keys.list_properties_of_key_versions("no-such-key")) == []


def test_list_keys_includes_managed_certificate_keys(keys, created_keys):
    listed = {p.name: p for p in keys.list_properties_of_keys()}
    names = [p.name for p in keys.list_properties_of_keys()]
    assert len(names) == len(set(names))
    assert set(SEED_KEYS) <= set(listed)
    assert {k.name for k in created_keys.values()} <= set(listed)
    for name in SEED_CERTS:
        assert listed[name].managed is True, name
    for name in SEED_KEYS:
        assert listed[name].managed is None
        # List items carry base ids (kid without version).
        assert listed[name].id == f"{keys.vault_url}/keys/{name}"
        assert listed[name].version is None


def test_list_key_versions(keys):
    name = "versioned-key"
    made = [keys.create_ec_key(name, curve=KeyCurveName.p_256) for _ in range(3)]
    listed = list(keys.list_properties_of_key_versions(name))
    assert {p.version for p in listed} == {m.properties.version for m in made}
    for p in listed:
        assert p.id == f"{keys.vault_url}/keys/{name}/{p.version}"
    assert keys.get_key(name).properties.version == made[-1].properties.version
    for m in made:
        assert keys.get_key(name, m.properties.version).key.x == m.key.x


# ---------------------------------------------------------------------------------- import


@pytest.fixture(scope="module")
def local_rsa():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def local_ec():
    return ec.generate_private_key(ec.SECP256R1())


def rsa_private_jwk(key) -> JsonWebKey:
    priv = key.private_numbers()
    pub = priv.public_numbers
    size = (pub.n.bit_length() + 7) // 8
    half = size // 2
    return JsonWebKey(
        kty=KeyType.rsa, key_ops=["sign", "verify"],
        n=to_bytes(pub.n, size), e=to_bytes(pub.e), d=to_bytes(priv.d, size),
        p=to_bytes(priv.p, half), q=to_bytes(priv.q, half),
        dp=to_bytes(priv.dmp1, half), dq=to_bytes(priv.dmq1, half), qi=to_bytes(priv.iqmp, half))


def ec_private_jwk(key, crv: KeyCurveName, length: int) -> JsonWebKey:
    priv = key.private_numbers()
    return JsonWebKey(
        kty=KeyType.ec, crv=crv, key_ops=["sign", "verify"],
        x=to_bytes(priv.public_numbers.x, length), y=to_bytes(priv.public_numbers.y, length),
        d=to_bytes(priv.private_value, length))


def test_import_rsa_key(keys, local_rsa):
    imported = keys.import_key("imported-rsa", rsa_private_jwk(local_rsa), tags={"origin": "import"})
    pub = local_rsa.public_key().public_numbers()
    assert from_bytes(imported.key.n) == pub.n
    assert from_bytes(imported.key.e) == pub.e
    assert imported.key.d is None and imported.key.p is None
    assert imported.properties.tags == {"origin": "import"}
    got = keys.get_key("imported-rsa")
    assert got.key.n == imported.key.n and got.key.d is None


def test_import_ec_key(keys, local_ec):
    imported = keys.import_key("imported-ec", ec_private_jwk(local_ec, KeyCurveName.p_256, 32))
    pub = local_ec.public_key().public_numbers()
    assert imported.key.crv == KeyCurveName.p_256
    assert (from_bytes(imported.key.x), from_bytes(imported.key.y)) == (pub.x, pub.y)
    assert imported.key.d is None
    assert keys.get_key("imported-ec").key.x == imported.key.x


def test_imported_keys_sign_with_the_imported_private_key(vault, credential, keys, local_rsa, local_ec):
    """The signature verifies with *our* public key: the server really holds the imported key."""
    digest = hashlib.sha256(b"imported key signs this").digest()
    rsa_key = keys.import_key("imported-rsa-sign", rsa_private_jwk(local_rsa))
    sig = crypto_client(vault, credential, rsa_key).sign(SignatureAlgorithm.rs256, digest).signature
    local_rsa.public_key().verify(sig, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    ec_key = keys.import_key("imported-ec-sign", ec_private_jwk(local_ec, KeyCurveName.p_256, 32))
    sig = crypto_client(vault, credential, ec_key).sign(SignatureAlgorithm.es256, digest).signature
    r, s = from_bytes(sig[:32]), from_bytes(sig[32:])
    local_ec.public_key().verify(utils.encode_dss_signature(r, s), digest,
                                 ec.ECDSA(utils.Prehashed(hashes.SHA256())))


# -------------------------------------------------------------------------------- crypto


SIGN_CASES = [
    # (key in created_keys, algorithm, hash)
    ("rsa-2048", SignatureAlgorithm.rs256, hashes.SHA256()),
    ("rsa-3072", SignatureAlgorithm.ps256, hashes.SHA256()),
    ("rsa-4096", SignatureAlgorithm.rs512, hashes.SHA512()),
    ("ec-P-256", SignatureAlgorithm.es256, hashes.SHA256()),
    ("ec-P-384", SignatureAlgorithm.es384, hashes.SHA384()),
    ("ec-P-521", SignatureAlgorithm.es512, hashes.SHA512()),
]


@pytest.mark.parametrize("which,alg,hash_alg", SIGN_CASES, ids=[c[1].value for c in SIGN_CASES])
def test_sign_verifies_against_public_jwk(vault, credential, created_keys, which, alg, hash_alg):
    key = created_keys[which]
    h = hashes.Hash(hash_alg)
    h.update(f"payload for {alg.value}".encode())
    digest = h.finalize()
    before = vault.count("Sign")
    result = crypto_client(vault, credential, key).sign(alg, digest)
    assert vault.count("Sign") == before + 1, "sign must run in the vault"
    assert result.key_id == key.id
    assert result.algorithm == alg
    public = public_key_of(key.key)
    sig = result.signature
    if key.key_type == KeyType.rsa:
        assert len(sig) == len(key.key.n)
        if alg.value.startswith("PS"):
            pad = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
        else:
            pad = padding.PKCS1v15()
        public.verify(sig, digest, pad, utils.Prehashed(hash_alg))
    else:
        n = len(key.key.x)
        assert len(sig) == 2 * n, "JWS form: r || s, each the coordinate size"
        der = utils.encode_dss_signature(from_bytes(sig[:n]), from_bytes(sig[n:]))
        public.verify(der, digest, ec.ECDSA(utils.Prehashed(hash_alg)))
        with pytest.raises(InvalidSignature):
            public.verify(der, bytes(len(digest)), ec.ECDSA(utils.Prehashed(hash_alg)))
    # The SDK verifies locally with the JWK the vault returned.
    assert crypto_client(vault, credential, key).verify(alg, digest, sig).is_valid


def test_sign_by_key_id_fetches_the_key_first(vault, credential, keys, created_keys):
    key = created_keys["ec-P-256"]
    digest = hashlib.sha256(b"by id").digest()
    before = vault.count("GetKey")
    result = crypto_client(vault, credential, key.id).sign(SignatureAlgorithm.es256, digest)
    assert vault.count("GetKey") > before, "CryptographyClient reads the key before signing"
    der = utils.encode_dss_signature(from_bytes(result.signature[:32]), from_bytes(result.signature[32:]))
    public_key_of(key.key).verify(der, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


# ------------------------------------------------------------------------ update / delete


def test_update_key_properties_disable_then_get(vault, credential, keys):
    k = keys.create_ec_key("disable-me", curve=KeyCurveName.p_256)
    updated = keys.update_key_properties("disable-me", enabled=False, tags={"state": "off"})
    assert updated.properties.enabled is False
    assert updated.properties.tags == {"state": "off"}
    assert updated.properties.version == k.properties.version
    got = keys.get_key("disable-me")  # a disabled key is still readable
    assert got.properties.enabled is False
    assert got.key.x == k.key.x
    listed = {p.name: p for p in keys.list_properties_of_keys()}
    assert listed["disable-me"].enabled is False
    with pytest.raises(HttpResponseError) as e:
        crypto_client(vault, credential, got).sign(SignatureAlgorithm.es256, hashlib.sha256(b"x").digest())
    assert e.value.status_code == 403
    assert e.value.response.json()["error"]["innererror"]["code"] == "KeyDisabled"
    again = keys.update_key_properties("disable-me", k.properties.version, enabled=True)
    assert again.properties.enabled is True
    sig = crypto_client(vault, credential, again).sign(SignatureAlgorithm.es256,
                                                       hashlib.sha256(b"x").digest())
    assert len(sig.signature) == 64


def test_update_key_operations(keys):
    keys.create_rsa_key("ops-key", size=2048)
    updated = keys.update_key_properties("ops-key", key_operations=["verify"])
    assert updated.key_operations == ["verify"]
    assert keys.get_key("ops-key").key_operations == ["verify"]


def test_delete_recover_purge_key(keys):
    made = keys.create_ec_key("doomed-key", curve=KeyCurveName.p_384)
    deleted = keys.begin_delete_key("doomed-key", _polling_interval=0.05).result()
    assert deleted.name == "doomed-key"
    assert deleted.recovery_id.endswith("/deletedkeys/doomed-key")
    assert deleted.key.x == made.key.x
    assert deleted.scheduled_purge_date > deleted.deleted_date
    with pytest.raises(ResourceNotFoundError):
        keys.get_key("doomed-key")
    assert "doomed-key" not in {p.name for p in keys.list_properties_of_keys()}
    assert keys.get_deleted_key("doomed-key").properties.version == made.properties.version
    with pytest.raises(ResourceExistsError) as e:
        keys.create_ec_key("doomed-key")
    assert e.value.status_code == 409
    recovered = keys.begin_recover_deleted_key("doomed-key", _polling_interval=0.05).result()
    assert recovered.key.x == made.key.x
    assert keys.get_key("doomed-key").properties.version == made.properties.version
    keys.begin_delete_key("doomed-key", _polling_interval=0.05).result()
    keys.purge_deleted_key("doomed-key")
    with pytest.raises(ResourceNotFoundError):
        keys.get_deleted_key("doomed-key")
    fresh = keys.create_ec_key("doomed-key")
    assert fresh.properties.version != made.properties.version


def test_list_deleted_keys(keys):
    made = keys.create_ec_key("listed-in-bin")
    keys.begin_delete_key("listed-in-bin", _polling_interval=0.05).result()
    deleted = {d.name: d for d in keys.list_deleted_keys()}
    d = deleted["listed-in-bin"]
    assert d.recovery_id == f"{keys.vault_url}/deletedkeys/listed-in-bin"
    assert d.properties.version is None  # list items carry base ids
    assert d.deleted_date is not None and d.scheduled_purge_date > d.deleted_date
    assert "listed-in-bin" not in {p.name for p in keys.list_properties_of_keys()}
    recovered = keys.begin_recover_deleted_key("listed-in-bin", _polling_interval=0.05).result()
    assert recovered.properties.version == made.properties.version
    assert "listed-in-bin" not in {d.name for d in keys.list_deleted_keys()}
