"""Notices: what the broker tells a sender, signed by a broker key of the directory.

A notice round-trips through make_notice and verify_notice; every NoticeError code is
reached by the fault it names (garbage, another frame kind, a key that is not a broker's,
a tampered byte, a body naming another broker or key, a revoked or out-of-date broker
key), and the builder refuses what no verifier would accept.
"""

from __future__ import annotations

import json

import pytest

from broker.core import (
    BrokerIdentity,
    BrokerService,
    Decision,
    NoticeBody,
    NoticeError,
    NoticeKind,
    Reject,
    SigningKeyPair,
    VerifiedDirectory,
    crypto,
    make_notice,
    sign_directory,
    successor,
    verify_directory,
    verify_notice,
)
from broker.core import frame as frame_module
from broker.core.crypto import seeded_random
from broker.core.directory import KeyRecord, PrincipalKind
from broker.core.notices import MAX_NOTICE_BYTES
from broker.demo import DemoRegion

from .conftest import HOUR, NOW
from .envelope_helpers import decide_at, header_of, resign

AT = NOW + 5_000
MINUTE = 60_000


def notice_code(data: bytes, directory: VerifiedDirectory, now: int = AT) -> str:
    with pytest.raises(NoticeError) as caught:
        verify_notice(data, directory, now=now)
    assert caught.value.message
    return caught.value.code


def body_of(data: bytes) -> bytes:
    decoded = frame_module.decode(
        data, frame_module.Kind.NOTICE, max_bytes=1 << 20, max_section=(1 << 20,)
    )
    return decoded.sections[0]


def rejection(region: DemoRegion, raw: bytes, decision: Decision, **extra) -> bytes:
    """The broker's rejection notice for ``decision``, as the service would sign it."""
    assert isinstance(decision, Reject)
    return make_notice(
        region.broker,
        NoticeKind.REJECTED,
        to=decision.sender or "nacka",
        submission=raw,
        at=AT,
        message=decision.message_id,
        reason=decision.reason.value,
        recipients=decision.recipients,
        detail=decision.detail,
        **extra,
    )


def with_broker_key(region: DemoRegion, record: KeyRecord) -> VerifiedDirectory:
    """Version 2 of the demo directory where the broker's only key record is ``record``,
    signed by the demo authority and verified as the successor of version 1."""
    (service,) = region.directory.document.brokers
    edited = service.model_copy(update={"signing_keys": (record,)})
    document = successor(region.directory, issued=NOW, brokers=(edited,))
    return verify_directory(
        sign_directory(document, region.authority),
        pinned=region.authority.public,
        previous=region.directory,
    )


def broker_record(region: DemoRegion) -> KeyRecord:
    (service,) = region.directory.document.brokers
    (record,) = service.signing_keys
    return record


# --- the good path ---------------------------------------------------------------


def test_the_demo_directory_lists_the_broker(region):
    (service,) = region.directory.document.brokers
    assert isinstance(service, BrokerService)
    assert service.id == region.broker.broker == "ssr-broker"
    signer = region.directory.signer(region.broker.signing.key_id)
    assert signer is not None
    assert (signer.principal, signer.kind) == ("ssr-broker", PrincipalKind.BROKER)
    assert signer.record.raw == region.broker.signing.public


def test_rejection_round_trip(region, make_envelope):
    raw = make_envelope(to=("sos-alarm", "stockholms-hamnar"))
    decision = decide_at(raw, region)
    data = rejection(region, raw, decision)
    body = verify_notice(data, region.directory, now=AT)
    assert body == NoticeBody(
        kind=NoticeKind.REJECTED,
        broker="ssr-broker",
        signer_key=region.broker.signing.key_id,
        to="nacka",
        message=header_of(raw).id,
        header_hash=None,
        submission=crypto.sha256(raw).hex(),
        reason="recipient_not_cleared",
        recipients=("stockholms-hamnar",),
        at=AT,
        detail="recipients refused by policy",
    )
    assert data[:5] == b"SSR\x01N"
    assert data[5:21] == bytes.fromhex(region.broker.signing.key_id)
    assert data[21] == 1
    assert body_of(data) == body.to_bytes()


@pytest.mark.parametrize("kind", list(NoticeKind))
def test_every_kind_round_trips(kind, region, make_envelope):
    raw = make_envelope()
    header = header_of(raw)
    data = make_notice(
        region.broker,
        kind,
        to="nacka",
        submission=raw,
        at=AT,
        message=header.id,
        header_hash="ab" * 32,
        recipients=("sos-alarm",) if kind is NoticeKind.ESCALATION else (),
    )
    body = verify_notice(data, region.directory, now=AT)
    assert body.kind is kind
    assert (body.message, body.header_hash, body.reason, body.detail) == (
        header.id,
        "ab" * 32,
        None,
        "",
    )


def test_a_notice_about_unreadable_bytes_names_only_their_hash(region):
    """A frame the broker could not read has no message id or sender; the notice still
    lets the submitter match it by the SHA-256 of what it sent."""
    garbage = b"not an envelope"
    decision = decide_at(garbage, region)
    assert isinstance(decision, Reject)
    assert (decision.message_id, decision.sender) == (None, None)
    body = verify_notice(rejection(region, garbage, decision), region.directory, now=AT)
    assert body.message is None
    assert body.submission == crypto.sha256(garbage).hex()
    assert body.reason == "malformed"


def test_the_body_is_canonical_with_every_field(region):
    data = make_notice(region.broker, NoticeKind.ACCEPTED, to="nacka", submission=b"x", at=AT)
    doc = json.loads(body_of(data))
    assert set(doc) == set(NoticeBody.model_fields)
    assert doc["v"] == 1
    assert (doc["message"], doc["header_hash"], doc["reason"]) == (None, None, None)
    assert (doc["recipients"], doc["detail"]) == ([], "")


def test_oversized_detail_is_cut_to_500_characters(region):
    detail = "ä" * 499 + "bc" + "d" * 100
    data = make_notice(
        region.broker, NoticeKind.REJECTED, to="nacka", submission=b"x", at=AT, detail=detail
    )
    body = verify_notice(data, region.directory, now=AT)
    assert body.detail == "ä" * 499 + "b"
    assert len(body.detail) == 500


def test_a_detail_of_exactly_500_characters_is_kept(region):
    detail = "x" * 500
    data = make_notice(
        region.broker, NoticeKind.REJECTED, to="nacka", submission=b"x", at=AT, detail=detail
    )
    assert verify_notice(data, region.directory, now=AT).detail == detail


# --- notice_malformed --------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"SSR\x01N" + b"\x00" * 100, b"\xff" * 200],
    ids=["empty", "garbage", "zeros-behind-a-prefix", "ones"],
)
def test_garbage_is_malformed(data, region):
    assert notice_code(data, region.directory) == "notice_malformed"


def test_another_frame_kind_is_malformed(region, make_envelope):
    """An envelope, a receipt or a directory frame is no notice, whoever signed it."""
    assert notice_code(make_envelope(), region.directory) == "notice_malformed"
    assert notice_code(region.directory.raw, region.directory) == "notice_malformed"
    data = make_notice(region.broker, NoticeKind.ACCEPTED, to="nacka", submission=b"x", at=AT)
    as_receipt = resign(region.broker.signing, (body_of(data),), frame_module.Kind.RECEIPT)
    assert notice_code(as_receipt, region.directory) == "notice_malformed"


def test_a_wrong_format_version_is_malformed(region):
    data = bytearray(
        make_notice(region.broker, NoticeKind.ACCEPTED, to="nacka", submission=b"x", at=AT)
    )
    data[3] = 2
    assert notice_code(bytes(data), region.directory) == "notice_malformed"


def test_an_oversized_frame_is_malformed(region):
    big = resign(region.broker.signing, (b" " * (MAX_NOTICE_BYTES + 1),), frame_module.Kind.NOTICE)
    assert notice_code(big, region.directory) == "notice_malformed"


def _edit(data: bytes, **changes) -> bytes:
    doc = json.loads(body_of(data))
    doc.update(changes)
    return json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


@pytest.mark.parametrize(
    "edit",
    [
        lambda data: body_of(data).replace(b'"v":1', b'"v": 1'),  # not canonical
        lambda data: _edit(data, v=2),
        lambda data: _edit(data, kind="forwarded"),
        lambda data: _edit(data, reason="Not A Code"),
        lambda data: _edit(data, extra=1),
        lambda data: _edit(data, detail="x" * 501),
        lambda data: b"[]",
    ],
    ids=[
        "not-canonical",
        "version-2",
        "unknown-kind",
        "bad-reason-code",
        "unknown-member",
        "detail-too-long",
        "not-an-object",
    ],
)
def test_a_correctly_signed_bad_body_is_malformed(edit, region):
    data = make_notice(region.broker, NoticeKind.ACCEPTED, to="nacka", submission=b"x", at=AT)
    forged = resign(region.broker.signing, (edit(data),), frame_module.Kind.NOTICE)
    assert notice_code(forged, region.directory) == "notice_malformed"


# --- notice_unknown_signer -----------------------------------------------------------


def _as_broker(region: DemoRegion, key: SigningKeyPair, name: str = "ssr-broker") -> bytes:
    return make_notice(
        BrokerIdentity(name, key), NoticeKind.ACCEPTED, to="nacka", submission=b"x", at=AT
    )


@pytest.mark.parametrize("who", ["actor", "officer", "authority", "stranger"])
def test_only_a_broker_key_signs_notices(who, region):
    """An actor's or an officer's key is in the directory, but not as a broker's: a
    sender must not take a notice forged by another actor (or by itself) as the
    broker's word."""
    key = {
        "actor": region.identities["nacka"].signing,
        "officer": region.officers["sakerhetschef-nacka"],
        "authority": region.authority,
        "stranger": SigningKeyPair.generate(seeded_random(b"not-a-broker")),
    }[who]
    assert notice_code(_as_broker(region, key), region.directory) == "notice_unknown_signer"


def test_a_flipped_signer_id_names_an_unknown_key(region):
    data = bytearray(_as_broker(region, region.broker.signing))
    data[5] ^= 0x01
    assert notice_code(bytes(data), region.directory) == "notice_unknown_signer"


def test_a_body_naming_another_broker_is_refused(region):
    """The broker's real key signs a body that claims to come from another broker."""
    data = _as_broker(region, region.broker.signing, name="annan-broker")
    assert notice_code(data, region.directory) == "notice_unknown_signer"


def test_a_body_naming_another_key_is_refused(region):
    data = _as_broker(region, region.broker.signing)
    forged_body = _edit(data, signer_key="00" * 16)
    forged = resign(region.broker.signing, (forged_body,), frame_module.Kind.NOTICE)
    assert notice_code(forged, region.directory) == "notice_unknown_signer"


# --- notice_bad_signature ------------------------------------------------------------


@pytest.mark.parametrize(
    "offset", [26, 27, 60, -65, -30, -1], ids=["body-0", "body-1", "body-34", "body-last",
                                                "signature-34", "signature-last"]
)  # fmt: skip
def test_a_tampered_byte_breaks_the_signature(offset, region):
    data = bytearray(_as_broker(region, region.broker.signing))
    data[offset] ^= 0x01
    assert notice_code(bytes(data), region.directory) == "notice_bad_signature"


def test_an_edited_reason_under_the_original_signature_is_refused(region, make_envelope):
    raw = make_envelope(to=("sos-alarm", "stockholms-hamnar"))
    data = rejection(region, raw, decide_at(raw, region))
    edited = body_of(data).replace(b"recipient_not_cleared", b"recipient_unknown_xxxx")
    forged = data[:22] + len(edited).to_bytes(4, "big") + edited + data[-64:]
    assert notice_code(forged, region.directory) == "notice_bad_signature"


def test_another_brokers_signature_under_the_brokers_key_id(region):
    data = _as_broker(region, region.broker.signing)
    other = _as_broker(region, SigningKeyPair.generate(seeded_random(b"other-broker")))
    forged = data[:-64] + other[-64:]
    assert notice_code(forged, region.directory) == "notice_bad_signature"


# --- notice_key_invalid -------------------------------------------------------------


def test_a_revoked_broker_key(region):
    """The authority revokes the broker's key at NOW + 1 min in directory version 2."""
    revoked = broker_record(region).model_copy(update={"revoked_at": NOW + MINUTE})
    v2 = with_broker_key(region, revoked)
    before = make_notice(
        region.broker, NoticeKind.ACCEPTED, to="nacka", submission=b"x", at=NOW + 1
    )
    # Made and checked before the revocation: still valid.
    assert verify_notice(before, v2, now=NOW + 2).at == NOW + 1
    # Checked after it: refused, even though it was made before (a stolen key could
    # backdate `at`).
    assert notice_code(before, v2, now=NOW + MINUTE) == "notice_key_invalid"
    after = make_notice(
        region.broker, NoticeKind.ACCEPTED, to="nacka", submission=b"x", at=NOW + MINUTE
    )
    assert notice_code(after, v2, now=NOW + MINUTE) == "notice_key_invalid"
    # The first directory, which does not know of the revocation, still accepts it.
    assert verify_notice(after, region.directory, now=NOW + MINUTE).at == NOW + MINUTE


@pytest.mark.parametrize(
    "at",
    [NOW - 1, NOW + 2 * HOUR, NOW + 2 * HOUR + 1],
    ids=["before-not-before", "at-not-after", "after-not-after"],
)
def test_a_broker_key_not_usable_at_the_notice_time(at, region):
    """The broker key is valid from NOW until NOW + 2 h in this version."""
    short = broker_record(region).model_copy(update={"not_after": NOW + 2 * HOUR})
    v2 = with_broker_key(region, short)
    data = make_notice(region.broker, NoticeKind.ACCEPTED, to="nacka", submission=b"x", at=at)
    assert notice_code(data, v2, now=NOW + HOUR) == "notice_key_invalid"
    inside = make_notice(
        region.broker, NoticeKind.ACCEPTED, to="nacka", submission=b"x", at=NOW + 2 * HOUR - 1
    )
    assert verify_notice(inside, v2, now=NOW + HOUR).at == NOW + 2 * HOUR - 1


def test_a_rotated_broker_key_verifies_only_when_listed(region):
    new = BrokerIdentity("ssr-broker", SigningKeyPair.generate(seeded_random(b"broker-2")))
    data = make_notice(new, NoticeKind.ACCEPTED, to="nacka", submission=b"x", at=AT)
    assert notice_code(data, region.directory) == "notice_unknown_signer"
    record = KeyRecord.for_key(new.signing.public, not_before=NOW, not_after=NOW + 24 * HOUR)
    v2 = with_broker_key(region, record)
    assert verify_notice(data, v2, now=AT).signer_key == new.signing.key_id
    old = _as_broker(region, region.broker.signing)
    assert notice_code(old, v2) == "notice_unknown_signer"


# --- the builder refuses what no verifier accepts -------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"reason": "Not A Code"},
        {"to": "Nacka Kommun"},
        {"message": "not-hex"},
        {"header_hash": "00"},
        {"at": -1},
        {"recipients": ("ok", "Not A Slug")},
    ],
    ids=["reason", "to", "message", "header-hash", "at", "recipients"],
)
def test_make_notice_refuses_an_invalid_body(bad, region):
    fields = {"to": "nacka", "submission": b"x", "at": AT} | bad
    with pytest.raises(NoticeError) as caught:
        make_notice(region.broker, NoticeKind.REJECTED, **fields)
    assert caught.value.code == "notice_malformed"


def test_make_notice_refuses_a_body_above_the_verifiers_bound(region):
    """200 recipients with 64-character ids and a detail of control characters (each
    written as a 6-byte escape) make a valid body longer than 16 KiB."""
    recipients = tuple(f"{i:03d}" + "a" * 61 for i in range(200))
    with pytest.raises(NoticeError) as caught:
        make_notice(
            region.broker,
            NoticeKind.ESCALATION,
            to="nacka",
            submission=b"x",
            at=AT,
            recipients=recipients,
            detail="\x01" * 500,
        )
    assert caught.value.code == "notice_malformed"
    fits = make_notice(
        region.broker, NoticeKind.ESCALATION, to="nacka", submission=b"x", at=AT,
        recipients=recipients, detail="x" * 500,
    )  # fmt: skip
    assert verify_notice(fits, region.directory, now=AT).recipients == recipients
