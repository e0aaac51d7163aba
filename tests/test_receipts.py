"""Receipts: signed by a recipient, bound to one message and its header hash, refused
with a precise code otherwise, and never an exception other than ReceiptError."""

from __future__ import annotations

import pytest

from broker.core import (
    ActorStatus,
    Identity,
    ReceiptBody,
    ReceiptError,
    ReceiptKind,
    check_receipt_matches,
    make_receipt,
    read_envelope,
    verify_receipt,
)
from broker.core import frame as frame_module
from broker.core.limits import MAX_RECEIPT_BYTES

from .conftest import HOUR, NOW
from .envelope_helpers import edit_directory, impostor, resign, signing_key_update

AT = NOW + 5_000


@pytest.fixture
def message(region, make_envelope):
    """nacka's envelope to polisen-stockholm, sos-alarm and stockholm, as the broker saw it."""
    signed = read_envelope(make_envelope(), region.directory)
    return signed.header, signed.header_hash


def receipt_code(data: bytes, directory, now: int = AT) -> str:
    with pytest.raises(ReceiptError) as caught:
        verify_receipt(data, directory, now=now)
    return caught.value.code


def body(message, **update) -> ReceiptBody:
    header, hash_ = message
    fields = {
        "kind": ReceiptKind.DELIVERED,
        "message": header.id,
        "header_hash": hash_,
        "sender": header.sender,
        "recipient": "sos-alarm",
        "signer_key": "00" * 16,
        "at": AT,
        "note": None,
    }
    return ReceiptBody(**(fields | update))


# --- the good path ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "note"),
    [
        (ReceiptKind.DELIVERED, None),
        (ReceiptKind.READ, None),
        (ReceiptKind.ACKNOWLEDGED, "Räddningsledare informerad, resurser på väg"),
    ],
)
@pytest.mark.parametrize("recipient", ["polisen-stockholm", "sos-alarm", "stockholm"])
def test_make_verify_check(kind, note, recipient, region, message):
    header, hash_ = message
    me = region.identities[recipient]
    data = make_receipt(me, header, hash_, kind, at=AT, note=note)
    receipt = verify_receipt(data, region.directory, now=AT)
    assert receipt.raw == data
    assert receipt.signer.id == recipient
    assert receipt.body == ReceiptBody(
        kind=kind,
        message=header.id,
        header_hash=hash_,
        sender="nacka",
        recipient=recipient,
        signer_key=me.signing.key_id,
        at=AT,
        note=note,
    )
    check_receipt_matches(receipt, header, hash_)  # does not raise


def test_receipt_is_deterministic_and_small(region, message):
    header, hash_ = message
    me = region.identities["sos-alarm"]
    one = make_receipt(me, header, hash_, ReceiptKind.READ, at=AT)
    assert one == make_receipt(me, header, hash_, ReceiptKind.READ, at=AT)  # Ed25519
    assert len(one) < MAX_RECEIPT_BYTES


def test_longest_note_fits(region, message):
    header, hash_ = message
    note = "å" * 1000  # 2000 bytes of UTF-8
    data = make_receipt(
        region.identities["sos-alarm"], header, hash_, ReceiptKind.ACKNOWLEDGED, at=AT, note=note
    )
    assert verify_receipt(data, region.directory, now=AT).body.note == note


# --- making ----------------------------------------------------------------------


@pytest.mark.parametrize("who", ["huddinge", "nacka"])  # a stranger; the original sender
def test_only_a_recipient_can_make_one(who, region, message):
    header, hash_ = message
    with pytest.raises(ReceiptError) as caught:
        make_receipt(region.identities[who], header, hash_, ReceiptKind.DELIVERED, at=AT)
    assert caught.value.code == "receipt_not_recipient"


@pytest.mark.parametrize(
    ("hash_", "at", "note"),
    [
        ("not-a-hash", AT, None),
        ("AB" * 32, AT, None),  # upper-case hex is not the wire form
        (None, -1, None),
        (None, AT, "x" * 1001),
    ],
    ids=["hash-not-hex", "hash-upper-case", "negative-time", "note-too-long"],
)
def test_make_refuses_a_bad_body(hash_, at, note, region, message):
    header, good_hash = message
    with pytest.raises(ReceiptError) as caught:
        make_receipt(
            region.identities["sos-alarm"],
            header,
            hash_ or good_hash,
            ReceiptKind.READ,
            at=at,
            note=note,
        )
    assert caught.value.code == "receipt_malformed"


# --- matching its message --------------------------------------------------------


def test_receipt_for_another_message(region, make_envelope, message):
    header, hash_ = message
    other = read_envelope(make_envelope(), region.directory)
    data = make_receipt(region.identities["sos-alarm"], header, hash_, ReceiptKind.DELIVERED, at=AT)
    receipt = verify_receipt(data, region.directory, now=AT)
    with pytest.raises(ReceiptError) as caught:
        check_receipt_matches(receipt, other.header, other.header_hash)
    assert caught.value.code == "receipt_mismatch"


def test_receipt_for_another_header_hash(region, message):
    """Same message id, other header bytes: the receipt cannot be moved onto it."""
    header, hash_ = message
    data = make_receipt(region.identities["sos-alarm"], header, hash_, ReceiptKind.DELIVERED, at=AT)
    receipt = verify_receipt(data, region.directory, now=AT)
    with pytest.raises(ReceiptError) as caught:
        check_receipt_matches(receipt, header, "ff" * 32)
    assert caught.value.code == "receipt_mismatch"


def test_receipt_naming_another_original_sender(region, message):
    header, hash_ = message
    data = make_receipt(region.identities["sos-alarm"], header, hash_, ReceiptKind.DELIVERED, at=AT)
    receipt = verify_receipt(data, region.directory, now=AT)
    claimed = header.model_copy(update={"sender": "stockholm"})
    with pytest.raises(ReceiptError) as caught:
        check_receipt_matches(receipt, claimed, hash_)
    assert caught.value.code == "receipt_mismatch"


def test_receipt_from_an_actor_not_among_the_recipients(region, message):
    """Defence in depth: even with the right id and hash, the signer must be a recipient."""
    header, hash_ = message
    data = make_receipt(region.identities["sos-alarm"], header, hash_, ReceiptKind.DELIVERED, at=AT)
    receipt = verify_receipt(data, region.directory, now=AT)
    fewer = header.model_copy(update={"recipients": ("polisen-stockholm", "stockholm")})
    with pytest.raises(ReceiptError) as caught:
        check_receipt_matches(receipt, fewer, hash_)
    assert caught.value.code == "receipt_not_recipient"


# --- the signer ------------------------------------------------------------------


def test_receipt_signed_by_an_officer_key(region, message):
    officer = Identity(
        "sos-alarm",
        region.officers["sakerhetschef-lansstyrelsen"],
        region.identities["sos-alarm"].encryption,
    )
    header, hash_ = message
    data = make_receipt(officer, header, hash_, ReceiptKind.DELIVERED, at=AT)
    assert receipt_code(data, region.directory) == "receipt_unknown_signer"


def test_receipt_signed_by_an_unknown_key(region, message):
    header, hash_ = message
    data = make_receipt(impostor("sos-alarm"), header, hash_, ReceiptKind.DELIVERED, at=AT)
    assert receipt_code(data, region.directory) == "receipt_unknown_signer"


def test_receipt_body_naming_another_recipient(region, message):
    """sos-alarm signs a body that says stockholm confirms."""
    sos = region.identities["sos-alarm"]
    forged = body(message, recipient="stockholm", signer_key=sos.signing.key_id)
    data = resign(sos, (forged.to_bytes(),), frame_module.Kind.RECEIPT)
    assert receipt_code(data, region.directory) == "receipt_signer_mismatch"


def test_receipt_body_naming_another_signer_key(region, message):
    sos = region.identities["sos-alarm"]
    forged = body(
        message, recipient="sos-alarm", signer_key=region.identities["stockholm"].signing.key_id
    )
    data = resign(sos, (forged.to_bytes(),), frame_module.Kind.RECEIPT)
    assert receipt_code(data, region.directory) == "receipt_signer_mismatch"


@pytest.mark.parametrize(
    "at",
    [NOW - 1, NOW + 2 * 365 * 24 * HOUR],
    ids=["before-key-validity", "at-key-expiry"],
)
def test_receipt_at_a_time_the_key_was_not_usable(at, region, message):
    header, hash_ = message
    data = make_receipt(region.identities["sos-alarm"], header, hash_, ReceiptKind.READ, at=at)
    assert receipt_code(data, region.directory) == "receipt_key_invalid"


def test_receipt_after_the_key_was_revoked(region, message):
    revoked = edit_directory(
        region, {"sos-alarm": signing_key_update(region, "sos-alarm", revoked_at=AT)}
    )
    header, hash_ = message
    me = region.identities["sos-alarm"]
    before = make_receipt(me, header, hash_, ReceiptKind.DELIVERED, at=AT - 1)
    assert verify_receipt(before, revoked, now=AT - 1).body.at == AT - 1
    at_revocation = make_receipt(me, header, hash_, ReceiptKind.DELIVERED, at=AT)
    assert receipt_code(at_revocation, revoked, now=AT) == "receipt_key_invalid"
    # Once the key is revoked, a receipt claiming an earlier time is refused too: a stolen
    # key could backdate ``at``.
    assert receipt_code(before, revoked, now=AT) == "receipt_key_invalid"


def test_receipt_from_a_suspended_actor(region, message):
    suspended = edit_directory(region, {"sos-alarm": {"status": ActorStatus.SUSPENDED}})
    header, hash_ = message
    data = make_receipt(region.identities["sos-alarm"], header, hash_, ReceiptKind.READ, at=AT)
    assert receipt_code(data, suspended) == "receipt_signer_inactive"


# --- damaged and hostile input ---------------------------------------------------


@pytest.fixture
def good_receipt(region, message) -> bytes:
    header, hash_ = message
    return make_receipt(
        region.identities["sos-alarm"], header, hash_, ReceiptKind.ACKNOWLEDGED, at=AT, note="ok"
    )


def expected_code(position: int) -> str:
    """Where a flipped byte sits in an R frame decides the refusal."""
    if 5 <= position < 21:
        return "receipt_unknown_signer"  # the signer key id
    if position < 26:
        return "receipt_malformed"  # magic, version, kind, section count, section length
    return "receipt_bad_signature"  # the body or the signature itself


def test_every_flipped_byte_is_refused(region, good_receipt):
    for position in range(len(good_receipt)):
        for mask in (0x01, 0x80):
            damaged = bytearray(good_receipt)
            damaged[position] ^= mask
            code = receipt_code(bytes(damaged), region.directory)
            assert code == expected_code(position), (position, mask, code)


def test_signed_garbage_body_is_malformed(region):
    data = resign(region.identities["sos-alarm"], (b"{not json",), frame_module.Kind.RECEIPT)
    assert receipt_code(data, region.directory) == "receipt_malformed"


def test_signed_non_canonical_body_is_malformed(region, message):
    sos = region.identities["sos-alarm"]
    good = body(message, signer_key=sos.signing.key_id).to_bytes()
    spaced = good.replace(b'"kind":', b'"kind": ')
    data = resign(sos, (spaced,), frame_module.Kind.RECEIPT)
    assert receipt_code(data, region.directory) == "receipt_malformed"


def test_oversized_receipt_is_malformed(region):
    huge = resign(
        region.identities["sos-alarm"], (b"x" * (MAX_RECEIPT_BYTES + 1),), frame_module.Kind.RECEIPT
    )
    assert receipt_code(huge, region.directory) == "receipt_malformed"
    assert receipt_code(b"\x00" * (10 * MAX_RECEIPT_BYTES), region.directory) == (
        "receipt_malformed"
    )


def test_an_envelope_is_not_a_receipt(region, make_envelope):
    assert receipt_code(make_envelope(), region.directory) == "receipt_malformed"


@pytest.mark.parametrize(
    "data",
    [b"", b"SSR", b"SSR\x01R", b"\xff" * 200, b"SSR\x01R" + b"\x00" * 200, b"SSR" * 40],
    ids=["empty", "magic-only", "prefix-only", "ff-bytes", "zero-body", "repeated-magic"],
)
def test_garbage_is_malformed(data, region):
    assert receipt_code(data, region.directory) == "receipt_malformed"
