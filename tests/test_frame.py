"""The binary frame around every signed object: layout, bounds and the signature check."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core import crypto
from broker.core.crypto import seeded_random
from broker.core.errors import FrameError, MalformedInput
from broker.core.frame import FORMAT_VERSION, MAGIC, Frame, Kind, decode, encode
from broker.core.keys import SigningKeyPair

SIGNER = SigningKeyPair.generate(seeded_random(b"frame-signer"))
OTHER = SigningKeyPair.generate(seeded_random(b"frame-other"))
BIG = 1 << 20
LIMITS = {
    Kind.ENVELOPE: (BIG, BIG, BIG),
    Kind.RECEIPT: (BIG,),
    Kind.DIRECTORY: (BIG,),
    Kind.NOTICE: (BIG,),
    Kind.GRANT: (BIG, BIG),
    Kind.BUNDLE: (BIG,),
}
SECTIONS = {
    Kind.ENVELOPE: (b'{"header":1}', b"wraps", b"ciphertext"),
    Kind.RECEIPT: (b'{"receipt":1}',),
    Kind.DIRECTORY: (b'{"directory":1}',),
    Kind.NOTICE: (b'{"notice":1}',),
    Kind.GRANT: (b'{"grant":1}', b"envelope"),
    Kind.BUNDLE: (b'{"bundle":1}',),
}


def read(data: bytes, kind: Kind = Kind.RECEIPT, **bounds: object) -> Frame:
    return decode(
        data,
        kind,
        max_bytes=bounds.get("max_bytes", BIG),  # type: ignore[arg-type]
        max_section=bounds.get("max_section", LIMITS[kind]),  # type: ignore[arg-type]
    )


def refused(data: bytes, kind: Kind = Kind.RECEIPT, **bounds: object) -> FrameError:
    with pytest.raises(FrameError) as info:
        read(data, kind, **bounds)
    return info.value


def layout(
    body: bytes,
    *,
    magic: bytes = MAGIC,
    version: int = FORMAT_VERSION,
    kind: bytes = b"R",
    signer: bytes = bytes(16),
    count: int = 1,
    signature: bytes = bytes(64),
) -> bytes:
    """Hand-built frame bytes (signature not valid) to exercise the layout checks."""
    return magic + bytes([version]) + kind + signer + bytes([count]) + body + signature


def section(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


# --- encoding ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
def test_round_trip(kind: Kind) -> None:
    data = encode(kind, SIGNER, SECTIONS[kind])
    frame = read(data, kind)
    assert frame.kind is kind
    assert frame.sections == SECTIONS[kind]
    assert frame.signer == crypto.key_id(SIGNER.public)
    assert frame.signer_id == SIGNER.key_id
    assert frame.signed == data[:-64]
    assert frame.signature == data[-64:]
    frame.verify(SIGNER.public)


def test_byte_layout() -> None:
    data = encode(Kind.ENVELOPE, SIGNER, (b"h", b"", b"ct"))
    assert data[:3] == b"SSR"
    assert data[3] == 1
    assert data[4:5] == b"E"
    assert data[5:21] == bytes.fromhex(SIGNER.key_id)
    assert data[21] == 3
    body = b"\x00\x00\x00\x01h" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x02ct"
    assert data[22:-64] == body
    assert len(data) == 22 + len(body) + 64
    crypto.verify(SIGNER.public, data[:-64], data[-64:])


def test_kind_codes_and_section_counts() -> None:
    assert [(k.value, k.sections) for k in Kind] == [
        (b"E", 3),
        (b"R", 1),
        (b"D", 1),
        (b"N", 1),
        (b"G", 2),
        (b"B", 1),
    ]


def test_encoding_is_deterministic() -> None:
    assert encode(Kind.RECEIPT, SIGNER, (b"x",)) == encode(Kind.RECEIPT, SIGNER, (b"x",))


@pytest.mark.parametrize(
    ("kind", "sections"),
    [
        (Kind.ENVELOPE, (b"a",)),
        (Kind.RECEIPT, ()),
        (Kind.DIRECTORY, (b"a", b"b")),
        (Kind.NOTICE, (b"a", b"b")),
    ],
)
def test_encode_refuses_wrong_section_count(kind: Kind, sections: tuple[bytes, ...]) -> None:
    with pytest.raises(ValueError, match=f"{kind.sections} sections"):
        encode(kind, SIGNER, sections)


def test_empty_sections_are_allowed() -> None:
    frame = read(encode(Kind.ENVELOPE, SIGNER, (b"", b"", b"")), Kind.ENVELOPE)
    assert frame.sections == (b"", b"", b"")


# --- layout errors -----------------------------------------------------------------------


def test_hand_built_layout_is_valid() -> None:
    # The helper itself must produce a frame decode accepts, or the tests below prove little.
    frame = read(layout(section(b"abc")))
    assert frame.sections == (b"abc",)
    assert frame.signer == bytes(16)


def test_frame_error_is_malformed_input() -> None:
    error = refused(b"")
    assert isinstance(error, MalformedInput)
    assert error.code == "malformed"


def test_too_large() -> None:
    data = encode(Kind.RECEIPT, SIGNER, (b"x" * 100,))
    assert read(data, max_bytes=len(data)).sections == (b"x" * 100,)
    error = refused(data, max_bytes=len(data) - 1)
    assert error.code == "too_large"
    assert f"{len(data)} bytes exceeds the bound of {len(data) - 1}" in error.message


@pytest.mark.parametrize("size", [0, 1, 21, 85])
def test_too_short(size: int) -> None:
    error = refused(encode(Kind.RECEIPT, SIGNER, (b"",))[:size])
    assert error.code == "malformed"
    assert "too short" in error.message


def test_shortest_frame_is_prefix_and_signature() -> None:
    # 22 + 64 bytes passes the length gate and then fails on the missing section length.
    error = refused(layout(b""))
    assert "truncated section length" in error.message


@pytest.mark.parametrize("magic", [b"SSS", b"ssr", b"\x00\x00\x00", b"RSS"])
def test_bad_magic(magic: bytes) -> None:
    error = refused(layout(section(b"x"), magic=magic))
    assert error.code == "malformed"
    assert "bad magic" in error.message


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unsupported_version(version: int) -> None:
    error = refused(layout(section(b"x"), version=version))
    assert error.code == "unsupported_version"
    assert f"version {version}" in error.message


def test_version_is_checked_on_a_real_frame() -> None:
    data = bytearray(encode(Kind.RECEIPT, SIGNER, (b"x",)))
    data[3] = 2
    assert refused(bytes(data)).code == "unsupported_version"


@pytest.mark.parametrize(
    ("data_kind", "expected"),
    [
        (Kind.RECEIPT, Kind.DIRECTORY),
        (Kind.DIRECTORY, Kind.RECEIPT),
        (Kind.ENVELOPE, Kind.RECEIPT),
        (Kind.NOTICE, Kind.RECEIPT),
        (Kind.RECEIPT, Kind.NOTICE),
    ],
)
def test_wrong_kind(data_kind: Kind, expected: Kind) -> None:
    data = encode(data_kind, SIGNER, SECTIONS[data_kind])
    error = refused(data, expected)
    assert error.code == "wrong_kind"
    assert f"expected a {expected.name.lower()} frame" in error.message


def test_unknown_kind_byte() -> None:
    assert refused(layout(section(b"x"), kind=b"X")).code == "wrong_kind"


@pytest.mark.parametrize("count", [0, 2, 3, 255])
def test_wrong_section_count(count: int) -> None:
    error = refused(layout(section(b"x"), count=count))
    assert error.code == "malformed"
    assert f"expected 1 sections, found {count}" in error.message


def test_envelope_with_one_section_count_is_refused() -> None:
    error = refused(layout(section(b"x"), kind=b"E", count=1), Kind.ENVELOPE)
    assert "expected 3 sections, found 1" in error.message


@pytest.mark.parametrize("partial", [b"", b"\x00", b"\x00\x00\x00"])
def test_truncated_section_length(partial: bytes) -> None:
    error = refused(layout(partial))
    assert error.code == "malformed"
    assert "truncated section length" in error.message


def test_truncated_length_in_a_later_section() -> None:
    body = section(b"header") + section(b"wraps") + b"\x00\x00"
    error = refused(layout(body, kind=b"E", count=3), Kind.ENVELOPE)
    assert "truncated section length" in error.message


@pytest.mark.parametrize("claimed", [2, 100, 0xFFFFFFFF])
def test_truncated_section(claimed: int) -> None:
    body = struct.pack(">I", claimed) + b"x"
    error = refused(layout(body), max_section=(0xFFFFFFFF,))
    assert error.code == "malformed"
    assert "truncated section" in error.message
    assert "length" not in error.message


def test_a_section_may_not_reach_into_the_signature() -> None:
    # The length claims 10 bytes; 10 bytes exist only if the signature is counted.
    data = layout(struct.pack(">I", 10))
    assert "truncated section" in refused(data).message


def test_trailing_bytes() -> None:
    data = encode(Kind.RECEIPT, SIGNER, (b"x",))
    tampered = data[:-64] + b"\x00" + data[-64:]
    error = refused(tampered)
    assert error.code == "malformed"
    assert "trailing bytes" in error.message
    assert "trailing bytes" in refused(layout(section(b"x") + b"junk")).message


def test_section_too_large() -> None:
    data = encode(Kind.RECEIPT, SIGNER, (b"x" * 10,))
    assert read(data, max_section=(10,)).sections == (b"x" * 10,)
    error = refused(data, max_section=(9,))
    assert error.code == "too_large"
    assert "section of 10 bytes exceeds 9" in error.message


def test_section_bounds_apply_per_section() -> None:
    data = encode(Kind.ENVELOPE, SIGNER, (b"h", b"w" * 5, b"c"))
    assert refused(data, Kind.ENVELOPE, max_section=(1, 4, 1)).code == "too_large"
    assert read(data, Kind.ENVELOPE, max_section=(1, 5, 1)).sections[1] == b"w" * 5


def test_huge_claimed_length_is_refused_by_the_bound_first() -> None:
    body = struct.pack(">I", 0xFFFFFFFF)
    assert refused(layout(body)).code == "too_large"


# --- signature ---------------------------------------------------------------------------


def test_verify_with_the_wrong_key() -> None:
    frame = read(encode(Kind.RECEIPT, SIGNER, (b"x",)))
    with pytest.raises(crypto.CryptoFailure):
        frame.verify(OTHER.public)


def test_verify_refuses_a_signature_by_another_key_under_a_forged_key_id() -> None:
    forged = bytearray(encode(Kind.RECEIPT, OTHER, (b"x",)))
    forged[5:21] = bytes.fromhex(SIGNER.key_id)
    # Re-sign the new prefix with OTHER so only the key, not the bytes, is wrong.
    signed = bytes(forged[:-64])
    frame = read(signed + OTHER.sign(signed))
    assert frame.signer_id == SIGNER.key_id
    with pytest.raises(crypto.CryptoFailure):
        frame.verify(SIGNER.public)
    # The signature is OTHER's, but the frame names SIGNER: the key id must match too.
    crypto.verify(OTHER.public, frame.signed, frame.signature)
    with pytest.raises(crypto.CryptoFailure):
        frame.verify(OTHER.public)


@pytest.mark.parametrize("position", [0, 4, 5, 21, 25, -65, -1])
def test_any_changed_byte_fails_verification_or_layout(position: int) -> None:
    data = bytearray(encode(Kind.RECEIPT, SIGNER, (b"payload",)))
    data[position] ^= 0x01
    try:
        frame = read(bytes(data))
    except FrameError:
        return
    with pytest.raises(crypto.CryptoFailure):
        frame.verify(SIGNER.public)


def test_kind_byte_is_signed() -> None:
    # A receipt frame relabelled as a directory frame parses, but its signature fails.
    data = bytearray(encode(Kind.RECEIPT, SIGNER, (b"x",)))
    data[4:5] = b"D"
    frame = read(bytes(data), Kind.DIRECTORY)
    with pytest.raises(crypto.CryptoFailure):
        frame.verify(SIGNER.public)


def test_verify_with_a_malformed_public_key() -> None:
    frame = read(encode(Kind.RECEIPT, SIGNER, (b"x",)))
    with pytest.raises(crypto.CryptoFailure):
        frame.verify(b"short")


# --- properties --------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.tuples(st.binary(max_size=64), st.binary(max_size=64), st.binary(max_size=64)))
def test_round_trip_property(sections: tuple[bytes, bytes, bytes]) -> None:
    data = encode(Kind.ENVELOPE, SIGNER, sections)
    frame = read(data, Kind.ENVELOPE)
    assert frame.sections == sections
    frame.verify(SIGNER.public)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(list(Kind)))
def test_arbitrary_bytes_give_a_frame_or_frame_error(data: bytes, kind: Kind) -> None:
    data = MAGIC + bytes([1]) + kind.value + data
    try:
        frame = read(data, kind)
    except FrameError:
        return
    assert frame.signed + frame.signature == data


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(list(Kind)),
    st.lists(st.binary(max_size=8), max_size=4),
    st.binary(max_size=80),
)
def test_frame_like_bytes_give_a_frame_or_frame_error(
    kind: Kind, parts: list[bytes], tail: bytes
) -> None:
    data = layout(b"".join(map(section, parts)) + tail, kind=kind.value, count=kind.sections)
    data = data[:-64]  # the tail stands in for the signature, short or long
    try:
        frame = read(data, kind)
    except FrameError:
        return
    assert len(frame.sections) == kind.sections
    assert frame.signed + frame.signature == data
    assert len(frame.signature) == 64
