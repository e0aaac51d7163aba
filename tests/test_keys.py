"""Key pairs, key ids, strict base64 and secret key files."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core import canonical, crypto
from broker.core.crypto import seeded_random
from broker.core.errors import CanonicalJsonError, CoreError, KeyFileError
from broker.core.keys import (
    KEY_FILE_KIND,
    KEY_FILE_VERSION,
    MAX_KEY_FILE_BYTES,
    EncryptionKeyPair,
    Identity,
    SigningKeyPair,
    b64,
    load_identity,
    save_identity,
    unb64,
)

# RFC 8032 section 7.1, test 1 (Ed25519, empty message).
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
    "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
# RFC 7748 section 6.1 (X25519, Alice).
RFC7748_SECRET = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
RFC7748_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")


@pytest.fixture
def identity() -> Identity:
    return Identity.generate("nacka", seeded_random(b"test-keys"))


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """A permissive umask, so the file mode seen is the one the code asked for."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def key_file(**changes: Any) -> bytes:
    doc: dict[str, Any] = {
        "kind": KEY_FILE_KIND,
        "v": KEY_FILE_VERSION,
        "principal": "nacka",
        "signing_seed": b64(bytes(32)),
        "encryption_secret": b64(bytes(range(32))),
    }
    for name, value in changes.items():
        if value is ...:
            del doc[name]
        else:
            doc[name] = value
    return canonical.dumps(doc)


def write_private(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def refused(data: bytes) -> KeyFileError:
    with pytest.raises(KeyFileError) as info:
        Identity.from_bytes(data)
    assert info.value.code == "key_file"
    return info.value


# --- key pairs and key ids ---------------------------------------------------------------


def test_signing_key_matches_rfc8032_vector() -> None:
    pair = SigningKeyPair(RFC8032_SEED)
    assert pair.public == RFC8032_PUBLIC
    assert pair.sign(b"") == RFC8032_SIGNATURE
    crypto.verify(pair.public, b"", pair.sign(b""))


def test_encryption_key_matches_rfc7748_vector() -> None:
    assert EncryptionKeyPair(RFC7748_SECRET).public == RFC7748_PUBLIC


def test_key_id_is_first_16_bytes_of_sha256_of_the_public_key() -> None:
    pair = SigningKeyPair(RFC8032_SEED)
    assert pair.key_id == hashlib.sha256(RFC8032_PUBLIC).digest()[:16].hex()
    assert len(pair.key_id) == 32
    assert pair.key_id == pair.key_id.lower()
    enc = EncryptionKeyPair(RFC7748_SECRET)
    assert enc.key_id == hashlib.sha256(RFC7748_PUBLIC).hexdigest()[:32]


def test_key_id_is_stable_across_instances_and_file_round_trips(identity: Identity) -> None:
    again = Identity.from_bytes(identity.to_bytes())
    assert again.signing.key_id == identity.signing.key_id
    assert again.encryption.key_id == identity.encryption.key_id
    assert SigningKeyPair(identity.signing.seed).key_id == identity.signing.key_id


def test_generate_uses_the_random_source() -> None:
    a = Identity.generate("x", seeded_random(b"same"))
    b = Identity.generate("x", seeded_random(b"same"))
    c = Identity.generate("x", seeded_random(b"other"))
    assert a == b
    assert a.signing.key_id != c.signing.key_id
    assert a.signing.seed != a.encryption.secret  # two draws, not one reused


def test_generate_with_system_randomness_gives_distinct_keys() -> None:
    first, second = Identity.generate("x"), Identity.generate("x")
    assert first.signing.seed != second.signing.seed
    assert first.encryption.secret != second.encryption.secret
    assert len(SigningKeyPair.generate().seed) == 32
    assert len(EncryptionKeyPair.generate().secret) == 32


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_key_pairs_refuse_wrong_secret_length(size: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SigningKeyPair(bytes(size))
    with pytest.raises(ValueError, match="32 bytes"):
        EncryptionKeyPair(bytes(size))


def test_signatures_verify_and_bind_the_data(identity: Identity) -> None:
    signature = identity.signing.sign(b"data")
    crypto.verify(identity.signing.public, b"data", signature)
    with pytest.raises(crypto.CryptoFailure):
        crypto.verify(identity.signing.public, b"datA", signature)


def test_repr_never_shows_secrets(identity: Identity) -> None:
    secrets = [identity.signing.seed, identity.encryption.secret]
    for text in (repr(identity), str(identity), repr(identity.signing), repr(identity.encryption)):
        for secret in secrets:
            assert secret.hex() not in text
            assert b64(secret) not in text
            assert repr(secret) not in text
    assert repr(identity.signing) == f"SigningKeyPair(key_id={identity.signing.key_id})"
    assert repr(identity.encryption) == f"EncryptionKeyPair(key_id={identity.encryption.key_id})"
    assert "nacka" in repr(identity)


# --- Identity bytes ----------------------------------------------------------------------


def test_identity_bytes_round_trip(identity: Identity) -> None:
    data = identity.to_bytes()
    assert Identity.from_bytes(data) == identity
    assert canonical.loads(data, max_bytes=MAX_KEY_FILE_BYTES) == {
        "kind": "ssr-secret-keys",
        "v": 1,
        "principal": "nacka",
        "signing_seed": b64(identity.signing.seed),
        "encryption_secret": b64(identity.encryption.secret),
    }


def test_key_file_helper_builds_a_valid_file() -> None:
    loaded = Identity.from_bytes(key_file())
    assert loaded.principal == "nacka"
    assert loaded.signing.seed == bytes(32)
    assert loaded.encryption.secret == bytes(range(32))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"not json", "not canonical JSON"),
        (b"\xff\xfe", "not canonical JSON"),
        (b'{"v": 1}', "not canonical JSON"),
        (b"x" * (MAX_KEY_FILE_BYTES + 1), "not canonical JSON"),
        (b"[]", "not an ssr secret key file"),
        (b'"ssr-secret-keys"', "not an ssr secret key file"),
        (key_file(kind="ssr-public-keys"), "not an ssr secret key file"),
        (key_file(kind=...), "not an ssr secret key file"),
        (key_file(v=2), "unsupported key file version 2"),
        (key_file(v=0), "unsupported key file version 0"),
        (key_file(v="1"), "unsupported key file version '1'"),
        (key_file(v=True), "unsupported key file version True"),
        (key_file(v=...), "unsupported key file version None"),
        (key_file(extra="x"), "missing or unknown fields"),
        (key_file(encryption_secret=...), "missing or unknown fields"),
        (key_file(principal=""), "no principal"),
        (key_file(principal=7), "no principal"),
        (key_file(principal=None), "no principal"),
        (key_file(signing_seed="!!!!"), "malformed key"),
        (key_file(signing_seed=b64(bytes(32))[:-1]), "malformed key"),  # padding cut
        (key_file(signing_seed=b64(bytes(31))), "expected 32 bytes, got 31"),
        (key_file(encryption_secret=b64(bytes(33))), "expected 32 bytes, got 33"),
        (key_file(encryption_secret=12), "malformed key"),
        (key_file(encryption_secret=None), "malformed key"),
        (key_file(signing_seed=["AAAA"]), "malformed key"),
        (key_file(signing_seed=b64(bytes(32)).replace("=", "B")), "malformed key"),
    ],
)
def test_from_bytes_refuses(data: bytes, words: str) -> None:
    assert words in refused(data).message


def test_key_file_error_is_a_core_error() -> None:
    assert isinstance(refused(b"[]"), CoreError)


# --- strict base64 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ("", b""),
        ("AA==", b"\x00"),
        ("AAA=", b"\x00\x00"),
        ("AAAA", b"\x00\x00\x00"),
        ("+/8=", b"\xfb\xff"),
    ],
)
def test_unb64_accepts_standard_base64(text: str, data: bytes) -> None:
    assert unb64(text) == data
    assert b64(data) == text


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("QR==", "canonical"),  # decodes to b"A" but the unused bits are not zero
        ("AB==", "canonical"),
        ("AAB=", "canonical"),
        ("QQ", "standard base64"),  # padding missing
        ("QQ=", "standard base64"),
        ("QQ===", "standard base64"),
        ("-_8=", "standard base64"),  # URL-safe alphabet
        ("QQ==\n", "standard base64"),
        (" QQ==", "standard base64"),
        ("QQ==QQ==", "standard base64"),
        ("åäö=", "standard base64"),  # not ASCII
    ],
)
def test_unb64_refuses(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        unb64(text)


def test_unb64_checks_length() -> None:
    assert unb64(b64(bytes(32)), length=32) == bytes(32)
    with pytest.raises(ValueError, match="expected 32 bytes, got 16"):
        unb64(b64(bytes(16)), length=32)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=80))
def test_b64_round_trip(data: bytes) -> None:
    assert unb64(b64(data), length=len(data)) == data


# --- key files on disk -------------------------------------------------------------------


def test_save_identity_writes_mode_0600(
    tmp_path: Path, identity: Identity, umask_zero: None
) -> None:
    path = tmp_path / "nacka.key"
    save_identity(path, identity)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == identity.to_bytes()
    assert load_identity(path) == identity


def test_save_identity_refuses_to_overwrite(tmp_path: Path, identity: Identity) -> None:
    path = tmp_path / "nacka.key"
    path.write_bytes(b"precious")
    with pytest.raises(KeyFileError, match="exists; refusing to overwrite") as info:
        save_identity(path, identity)
    assert info.value.code == "key_file"
    assert path.read_bytes() == b"precious"


def test_save_identity_refuses_through_a_symlink(tmp_path: Path, identity: Identity) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "link.key").symlink_to(target)
    with pytest.raises(KeyFileError, match="exists"):
        save_identity(tmp_path / "link.key", identity)
    assert not target.exists()


def test_save_identity_that_cannot_be_encoded_leaves_no_file(tmp_path: Path) -> None:
    broken = Identity(
        "nacka" + chr(0xD800), SigningKeyPair(bytes(32)), EncryptionKeyPair(bytes(32))
    )
    path = tmp_path / "broken.key"
    with pytest.raises(CanonicalJsonError):
        save_identity(path, broken)
    assert not path.exists()  # an empty file would block the next, correct attempt


def test_save_identity_reports_an_uncreatable_path(tmp_path: Path, identity: Identity) -> None:
    with pytest.raises(KeyFileError, match="cannot create"):
        save_identity(tmp_path / "missing-dir" / "nacka.key", identity)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_load_identity_accepts_owner_only_modes(
    tmp_path: Path, identity: Identity, mode: int
) -> None:
    path = write_private(tmp_path / "k", identity.to_bytes(), mode)
    assert load_identity(path) == identity


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o610, 0o601])
def test_load_identity_refuses_group_or_world_access(
    tmp_path: Path, identity: Identity, mode: int
) -> None:
    path = write_private(tmp_path / "k", identity.to_bytes(), mode)
    with pytest.raises(KeyFileError) as info:
        load_identity(path)
    message = info.value.message
    assert f"chmod 600 {path}" in message
    assert f"mode {mode:o}" in message
    assert "group or others" in message


def test_load_identity_refuses_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_identity(directory)


def test_load_identity_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        load_identity(tmp_path / "absent.key")


def test_load_identity_refuses_an_oversized_file(tmp_path: Path) -> None:
    path = write_private(tmp_path / "k", b" " * (MAX_KEY_FILE_BYTES + 1))
    with pytest.raises(KeyFileError, match="too large to be a key file"):
        load_identity(path)


def test_load_identity_accepts_a_file_of_exactly_the_bound(tmp_path: Path) -> None:
    # Size is checked before parsing: a file of exactly the bound reaches the parser.
    path = write_private(tmp_path / "k", b" " * MAX_KEY_FILE_BYTES)
    with pytest.raises(KeyFileError, match="not canonical JSON"):
        load_identity(path)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"garbage", "not canonical JSON"),
        (b"", "not canonical JSON"),
        (key_file(kind="something-else"), "not an ssr secret key file"),
        (key_file(v=2), "unsupported key file version"),
        (key_file(extra=1), "missing or unknown fields"),
        (key_file(signing_seed="AAA"), "malformed key"),
        (key_file(signing_seed=b64(bytes(16))), "expected 32 bytes"),
    ],
)
def test_load_identity_refuses_bad_contents(tmp_path: Path, data: bytes, words: str) -> None:
    path = write_private(tmp_path / "k", data)
    with pytest.raises(KeyFileError, match=words):
        load_identity(path)
