"""The libsodium primitives the protocol uses, and nothing else.

- Ed25519 detached signatures (``crypto_sign_detached``).
- X25519 sealed boxes (``crypto_box_seal``) for wrapping content keys; the
  ephemeral secret can be passed in so known-answer vectors exist. The
  output is byte-identical to libsodium's ``crypto_box_seal``:
  ``epk || crypto_box_easy(m, blake2b(epk || pk, 24), pk, esk)``.
- XChaCha20-Poly1305-IETF (``crypto_aead_xchacha20poly1305_ietf_*``) for the
  payload, with a 24-byte nonce and associated data.
- SHA-256 for hashes and key ids.

Every nacl exception is mapped here, to :class:`CryptoFailure`, which callers
turn into their own opaque error.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import nacl.bindings as sodium
import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.public
import nacl.signing

Random = Callable[[int], bytes]
"""A source of random bytes: ``os.urandom`` in production, a seeded one for vectors."""

SYSTEM_RANDOM: Random = os.urandom

SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
SECRET_KEY_BYTES = 32
CONTENT_KEY_BYTES = 32
AEAD_NONCE_BYTES = 24
AEAD_TAG_BYTES = 16
SEAL_OVERHEAD_BYTES = 48  # ephemeral public key (32) + Poly1305 tag (16)
KEY_ID_BYTES = 16


class CryptoFailure(Exception):
    """Any cryptographic operation that failed; deliberately without detail."""


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def key_id(public_key: bytes) -> bytes:
    """Stable key id: the first 16 bytes of SHA-256 over the raw public key."""
    return sha256(public_key)[:KEY_ID_BYTES]


def signing_public_key(seed: bytes) -> bytes:
    return bytes(nacl.signing.SigningKey(seed).verify_key)


def encryption_public_key(secret: bytes) -> bytes:
    return sodium.crypto_scalarmult_base(secret)


def signer(seed: bytes) -> Callable[[bytes], bytes]:
    """A signing function with the key expanded once (expansion costs as much as a signature)."""
    key = nacl.signing.SigningKey(seed)
    return lambda data: key.sign(data).signature


def verify(public_key: bytes, data: bytes, signature: bytes) -> None:
    """Raise :class:`CryptoFailure` unless ``signature`` is valid for ``data``."""
    try:
        nacl.signing.VerifyKey(public_key).verify(data, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError) as exc:
        raise CryptoFailure from exc


def seal(message: bytes, recipient_public: bytes, ephemeral_secret: bytes) -> bytes:
    """``crypto_box_seal`` with a caller-chosen ephemeral secret key.

    Raises :class:`CryptoFailure` when libsodium refuses the recipient key (a small-order
    point, whose shared secret would be all zeros, or a key of the wrong length).
    """
    ephemeral_public = sodium.crypto_scalarmult_base(ephemeral_secret)
    nonce = nacl.hash.blake2b(
        ephemeral_public + recipient_public, digest_size=24, encoder=nacl.encoding.RawEncoder
    )
    try:
        boxed = sodium.crypto_box(message, nonce, recipient_public, ephemeral_secret)
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, ValueError) as exc:
        raise CryptoFailure from exc
    return ephemeral_public + boxed


def seal_open(
    sealed: bytes, recipient_secret: bytes, recipient_public: bytes | None = None
) -> bytes:
    """Open a sealed box. ``recipient_public`` (the public key of ``recipient_secret``)
    saves deriving it, which costs as much as the opening itself."""
    try:
        if recipient_public is None:
            recipient_public = encryption_public_key(recipient_secret)
        return sodium.crypto_box_seal_open(sealed, recipient_public, recipient_secret)
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, ValueError) as exc:
        raise CryptoFailure from exc


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated: bytes) -> bytes:
    return sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, associated, nonce, key)


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    try:
        return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, associated, nonce, key)
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, ValueError) as exc:
        raise CryptoFailure from exc


def seeded_random(seed: bytes) -> Random:
    """A deterministic byte source (SHA-256 in counter mode) for test vectors and demos.

    Never use it for real keys or nonces: anyone with the seed has them all.
    """
    counter = 0
    buffer = b""

    def take(n: int) -> bytes:
        nonlocal counter, buffer
        while len(buffer) < n:
            buffer += sha256(seed + counter.to_bytes(8, "big"))
            counter += 1
        out, buffer = buffer[:n], buffer[n:]
        return out

    return take
