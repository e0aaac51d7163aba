"""Key pairs, key ids and key files of actors, officers and the authority.

Every identity holds an Ed25519 signing key and (actors) an X25519
encryption key. A key id is the hex of the first 16 bytes of SHA-256 over
the raw public key (see ``crypto.key_id``), stable across file formats.

Secret key files are canonical JSON written with mode 0600 and refused on
load when group or others may read them, as ssh does: a secret key that
others could have read is no longer a secret.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from . import canonical, crypto
from .crypto import SYSTEM_RANDOM, Random
from .errors import CanonicalJsonError, KeyFileError

KEY_FILE_KIND = "ssr-secret-keys"
KEY_FILE_VERSION = 1
MAX_KEY_FILE_BYTES = 4096


def b64(data: bytes) -> str:
    """Standard base64 (RFC 4648 section 4) with padding: the protocol's one encoding."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, *, length: int | None = None) -> bytes:
    """Strict base64 decode; raises ``ValueError`` on bad alphabet, padding or length."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("not standard base64") from exc
    if b64(data) != text:
        raise ValueError("base64 not in canonical form")
    if length is not None and len(data) != length:
        raise ValueError(f"expected {length} bytes, got {len(data)}")
    return data


@dataclass(frozen=True, repr=False)
class SigningKeyPair:
    """An Ed25519 key pair held by its 32-byte seed."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != crypto.SECRET_KEY_BYTES:
            raise ValueError("an Ed25519 seed is 32 bytes")

    @classmethod
    def generate(cls, rand: Random = SYSTEM_RANDOM) -> SigningKeyPair:
        return cls(rand(crypto.SECRET_KEY_BYTES))

    # Derived values are cached: deriving a public key costs as much as a signature.
    @cached_property
    def public(self) -> bytes:
        return crypto.signing_public_key(self.seed)

    @cached_property
    def key_id(self) -> str:
        return crypto.key_id(self.public).hex()

    @cached_property
    def _signer(self) -> Callable[[bytes], bytes]:
        return crypto.signer(self.seed)

    def sign(self, data: bytes) -> bytes:
        return self._signer(data)

    def __repr__(self) -> str:  # never print a secret
        return f"SigningKeyPair(key_id={self.key_id})"


@dataclass(frozen=True, repr=False)
class EncryptionKeyPair:
    """An X25519 key pair held by its 32-byte secret scalar."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != crypto.SECRET_KEY_BYTES:
            raise ValueError("an X25519 secret key is 32 bytes")

    @classmethod
    def generate(cls, rand: Random = SYSTEM_RANDOM) -> EncryptionKeyPair:
        return cls(rand(crypto.SECRET_KEY_BYTES))

    @cached_property
    def public(self) -> bytes:
        return crypto.encryption_public_key(self.secret)

    @cached_property
    def key_id(self) -> str:
        return crypto.key_id(self.public).hex()

    def __repr__(self) -> str:
        return f"EncryptionKeyPair(key_id={self.key_id})"


@dataclass(frozen=True)
class Identity:
    """The secret keys of one principal: an actor, an officer or the authority.

    >>> me = Identity.generate("nacka")
    >>> len(me.signing.key_id)
    32
    """

    principal: str
    signing: SigningKeyPair
    encryption: EncryptionKeyPair

    @classmethod
    def generate(cls, principal: str, rand: Random = SYSTEM_RANDOM) -> Identity:
        return cls(principal, SigningKeyPair.generate(rand), EncryptionKeyPair.generate(rand))

    def to_bytes(self) -> bytes:
        return canonical.dumps(
            {
                "kind": KEY_FILE_KIND,
                "v": KEY_FILE_VERSION,
                "principal": self.principal,
                "signing_seed": b64(self.signing.seed),
                "encryption_secret": b64(self.encryption.secret),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Identity:
        try:
            doc = canonical.loads(data, max_bytes=MAX_KEY_FILE_BYTES)
        except CanonicalJsonError as exc:
            raise KeyFileError(f"key file is not canonical JSON: {exc.message}") from exc
        if not isinstance(doc, dict) or doc.get("kind") != KEY_FILE_KIND:
            raise KeyFileError("not an ssr secret key file")
        version = doc.get("v")
        if isinstance(version, bool) or version != KEY_FILE_VERSION:  # true == 1 in Python
            raise KeyFileError(f"unsupported key file version {version!r}")
        if set(doc) != {"kind", "v", "principal", "signing_seed", "encryption_secret"}:
            raise KeyFileError("key file has missing or unknown fields")
        principal = doc["principal"]
        if not isinstance(principal, str) or not principal:
            raise KeyFileError("key file has no principal")
        try:
            seed = unb64(doc["signing_seed"], length=crypto.SECRET_KEY_BYTES)
            secret = unb64(doc["encryption_secret"], length=crypto.SECRET_KEY_BYTES)
        except (ValueError, AttributeError) as exc:
            raise KeyFileError(f"key file holds a malformed key: {exc}") from exc
        return cls(principal, SigningKeyPair(seed), EncryptionKeyPair(secret))


def save_identity(path: Path, identity: Identity) -> None:
    """Write a new secret key file readable by its owner only; never overwrite one."""
    data = identity.to_bytes()  # before creating: a failure must not leave an empty key file
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{path} exists; refusing to overwrite a key file") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _check_private(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"{path} is not a regular file")
    if info.st_mode & 0o077:
        raise KeyFileError(
            f"{path} is accessible by group or others (mode {stat.S_IMODE(info.st_mode):o}); "
            "run: chmod 600 " + str(path)
        )


def load_identity(path: Path) -> Identity:
    """Read a secret key file; refuse one that group or others can read or write."""
    try:
        _check_private(path, path.stat())  # before opening: a FIFO would block the open
        with path.open("rb") as handle:
            _check_private(path, os.fstat(handle.fileno()))  # the file actually opened
            data = handle.read(MAX_KEY_FILE_BYTES + 1)  # bounded, whatever the file's size
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path} is too large to be a key file")
    return Identity.from_bytes(data)
