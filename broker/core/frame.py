"""The binary frame around every signed object: envelopes, receipts, directory versions.

    offset  size  field
    0       3     magic "SSR"
    3       1     format version, 0x01
    4       1     kind: "E" envelope, "R" receipt, "D" directory version, "N" notice,
                  "G" key grant, "B" offline bundle
    5       16    signer key id (first 16 bytes of SHA-256 of the Ed25519 public key)
    21      1     number of sections n (E: 3, G: 2, R, D, N, B: 1)
    22      ...   n times: 4-byte big-endian length L, then L bytes
    end-64  64    Ed25519 signature over every byte before it

The signer's key id sits outside the sections so a verifier can find the
key and check the signature over the exact received bytes before it parses
any JSON. The kind byte is signed, so a signature can never be moved from
one kind of object to another.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum

from . import crypto
from .errors import FrameError
from .keys import SigningKeyPair

MAGIC = b"SSR"
FORMAT_VERSION = 1
_PREFIX = struct.Struct(">3sBc16sB")
_LENGTH = struct.Struct(">I")


class Kind(Enum):
    ENVELOPE = b"E"
    RECEIPT = b"R"
    DIRECTORY = b"D"
    NOTICE = b"N"
    GRANT = b"G"
    BUNDLE = b"B"

    @property
    def sections(self) -> int:
        return {Kind.ENVELOPE: 3, Kind.GRANT: 2}.get(self, 1)


@dataclass(frozen=True)
class Frame:
    """A decoded frame; nothing in it is verified yet except its layout."""

    kind: Kind
    signer: bytes
    sections: tuple[bytes, ...]
    signed: bytes
    signature: bytes

    @property
    def signer_id(self) -> str:
        return self.signer.hex()

    def verify(self, public_key: bytes) -> None:
        """Raise :class:`crypto.CryptoFailure` unless the signature is ``public_key``'s."""
        if crypto.key_id(public_key) != self.signer:
            raise crypto.CryptoFailure
        crypto.verify(public_key, self.signed, self.signature)


def encode(kind: Kind, signer: SigningKeyPair, sections: tuple[bytes, ...]) -> bytes:
    if len(sections) != kind.sections:
        raise ValueError(f"a {kind.name} frame has {kind.sections} sections")
    parts = [
        _PREFIX.pack(MAGIC, FORMAT_VERSION, kind.value, crypto.key_id(signer.public), len(sections))
    ]
    for section in sections:
        parts.append(_LENGTH.pack(len(section)))
        parts.append(section)
    signed = b"".join(parts)
    return signed + signer.sign(signed)


def decode(data: bytes, kind: Kind, *, max_bytes: int, max_section: tuple[int, ...]) -> Frame:
    """Split ``data`` into its parts, checking layout and bounds only."""
    if len(data) > max_bytes:
        raise FrameError(f"{len(data)} bytes exceeds the bound of {max_bytes}", code="too_large")
    minimum = _PREFIX.size + crypto.SIGNATURE_BYTES
    if len(data) < minimum:
        raise FrameError("too short to be a frame")
    magic, version, kind_byte, signer, count = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise FrameError("not an ssr frame (bad magic)")
    if version != FORMAT_VERSION:
        raise FrameError(f"unsupported format version {version}", code="unsupported_version")
    if kind_byte != kind.value:
        raise FrameError(f"expected a {kind.name.lower()} frame", code="wrong_kind")
    if count != kind.sections:
        raise FrameError(f"expected {kind.sections} sections, found {count}")
    body_end = len(data) - crypto.SIGNATURE_BYTES
    offset = _PREFIX.size
    sections = []
    for limit in max_section:
        if offset + _LENGTH.size > body_end:
            raise FrameError("truncated section length")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if length > limit:
            raise FrameError(f"section of {length} bytes exceeds {limit}", code="too_large")
        if offset + length > body_end:
            raise FrameError("truncated section")
        sections.append(data[offset : offset + length])
        offset += length
    if offset != body_end:
        raise FrameError("trailing bytes after the last section")
    return Frame(kind, signer, tuple(sections), data[:body_end], data[body_end:])
