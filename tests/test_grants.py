"""Key grants for late joiners (``broker.core.grants``), hostile input first.

The originator nacka sends an incident message to polisen-stockholm, sos-alarm and
stockholm; solna joins the incident later and is granted the message. Every refusal
names its exact code; forgeries are made with real keys (another actor re-signs, the
originator signs a lie) or keep the original signature, as an attacker would.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker.core import (
    ActorStatus,
    Control,
    GrantBody,
    GrantError,
    Identity,
    IncidentEntry,
    Label,
    MessageType,
    OpenError,
    Policy,
    PressStage,
    Priority,
    RecipientKey,
    Reference,
    ReferenceKind,
    Reject,
    SealedEnvelope,
    Tlp,
    VerifiedDirectory,
    build_envelope,
    decrypt_own,
    grantable,
    make_grant,
    open_envelope,
    open_grant,
    read_envelope,
    seal_envelope,
    verify_grant,
)
from broker.core import frame as frames
from broker.core.crypto import seeded_random
from broker.core.envelope import wrap_for
from broker.core.errors import EnvelopeError
from broker.core.grants import MAX_GRANT_BODY_BYTES
from broker.core.incidents import Incident, newcomers, opened_by
from broker.core.limits import MAX_ENVELOPE_BYTES
from broker.demo import DemoRegion

from .conftest import HOUR, NOW
from .envelope_helpers import (
    DEFAULT_LABEL,
    actor,
    decide_at,
    edit_directory,
    encryption_key_update,
    impostor,
    recipient_keys,
    reframe,
    resign,
    signing_key_update,
)

INCIDENT = "storm-2026"
ORIGINATOR = "nacka"
TO = ("polisen-stockholm", "sos-alarm", "stockholm")
NEWCOMER = "solna"
THIRD = "huddinge"
PAYLOAD = b'{"text": "Lagesbild: storm over Nacka, 3 000 households without power"}'
AT = NOW + 60_000  # when the originator grants


def seal(region: DemoRegion, *, sender: str = ORIGINATOR, **overrides: Any) -> SealedEnvelope:
    to = overrides.pop("to", TO)
    args: dict[str, Any] = {
        "sender": region.identities[sender],
        "recipients": recipient_keys(region.directory, to),
        "label": DEFAULT_LABEL,
        "message_type": MessageType.SITUATION_REPORT,
        "payload": PAYLOAD,
        "created": NOW,
        "expires": NOW + HOUR,
        "incident": INCIDENT,
    }
    args.update(overrides)
    return seal_envelope(**args)


def grant(
    region: DemoRegion,
    sealed: SealedEnvelope,
    *,
    newcomer: str = NEWCOMER,
    me: str = ORIGINATOR,
    directory: VerifiedDirectory | None = None,
    at: int = AT,
) -> bytes:
    directory = directory or region.directory
    return make_grant(
        region.identities[me],
        sealed.raw,
        sealed.content_key,
        newcomer=actor(region, newcomer)
        if directory is region.directory
        else directory.actor(newcomer),  # type: ignore[arg-type]
        directory=directory,
        policy=Policy(),
        at=at,
    )


def verify(raw: bytes, region: DemoRegion, *, now: int = AT + 1_000, **kw: Any):
    return verify_grant(raw, kw.pop("directory", region.directory), now=now, **kw)


def open_as(raw: bytes, region: DemoRegion, me: str = NEWCOMER, *, now: int = AT + 1_000):
    verified = verify(raw, region, now=now)
    return open_grant(
        verified, me=region.identities[me], directory=region.directory, policy=Policy(), now=now
    )


def sections(raw: bytes) -> frames.Frame:
    return frames.decode(
        raw,
        frames.Kind.GRANT,
        max_bytes=MAX_ENVELOPE_BYTES + MAX_GRANT_BODY_BYTES + 256,
        max_section=(MAX_GRANT_BODY_BYTES, MAX_ENVELOPE_BYTES),
    )


def body_of(raw: bytes) -> GrantBody:
    return GrantBody.parse(sections(raw).sections[0], max_bytes=MAX_GRANT_BODY_BYTES)


def forge(signer: Identity, body: GrantBody | bytes, envelope: bytes) -> bytes:
    """A correctly signed G frame of any body and envelope: what a signer could send."""
    data = body if isinstance(body, bytes) else body.to_bytes()
    return resign(signer, (data, envelope), frames.Kind.GRANT)


def keeping_signature(raw: bytes, body: bytes, envelope: bytes | None = None) -> bytes:
    """Changed sections under the original signer id and signature (an attacker's try)."""
    original = sections(raw)
    new = (body, original.sections[1] if envelope is None else envelope)
    return reframe(
        new, signer_id=original.signer, signature=original.signature, kind=frames.Kind.GRANT
    )


def refused(
    code: str, call: Any, *args: Any, error: type[Exception] = GrantError, **kw: Any
) -> None:
    with pytest.raises(error) as caught:
        call(*args, **kw)
    assert caught.value.code == code  # type: ignore[attr-defined]


# --- the round trip ---------------------------------------------------------------


def test_a_late_joiner_opens_the_granted_message(region):
    sealed = seal(region)
    raw = grant(region, sealed)
    assert raw[:5] == b"SSR\x01G"
    assert raw[21] == 2
    frame = sections(raw)
    assert frame.sections[1] == sealed.raw  # the original envelope, byte for byte
    verified = verify(raw, region)
    original = read_envelope(sealed.raw, region.directory)
    assert verified.body == body_of(raw)
    assert verified.body.wire() | {"sealed": None} == {
        "v": 1,
        "message": original.header.id,
        "header_hash": original.header_hash,
        "sender": ORIGINATOR,
        "signer_key": region.identities[ORIGINATOR].signing.key_id,
        "recipient": NEWCOMER,
        "incident": INCIDENT,
        "key_id": region.identities[NEWCOMER].encryption.key_id,
        "sealed": None,
        "at": AT,
    }
    assert verified.envelope.header == original.header
    opened = open_grant(
        verified,
        me=region.identities[NEWCOMER],
        directory=region.directory,
        policy=Policy(),
        now=AT + 1_000,
    )
    assert opened.payload == PAYLOAD
    assert opened.header_hash == original.header_hash
    assert opened.raw == sealed.raw
    assert NEWCOMER not in opened.header.recipients  # the signed recipients never change


def test_the_body_is_canonical_and_within_its_bound(region):
    raw = grant(region, seal(region))
    body = sections(raw).sections[0]
    assert body == json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    assert len(body) < MAX_GRANT_BODY_BYTES
    assert len(raw) == 22 + 4 + len(body) + 4 + len(sections(raw).sections[1]) + 64


def test_a_grant_leaves_the_original_recipients_able_to_open(region):
    sealed = seal(region)
    grant(region, sealed)
    for recipient in TO:
        opened = open_envelope(
            sealed.raw, me=region.identities[recipient], directory=region.directory,
            policy=Policy(), now=AT,
        )  # fmt: skip
        assert opened.payload == PAYLOAD
    signed = read_envelope(sealed.raw, region.directory)
    assert decrypt_own(signed, sealed.content_key).payload == PAYLOAD


# --- who may grant ----------------------------------------------------------------


def test_only_the_originator_can_make_a_grant(region):
    sealed = seal(region)
    refused("grant_not_originator", grant, region, sealed, me="polisen-stockholm")


def test_another_actor_re_signing_the_grant_is_refused(region):
    raw = grant(region, seal(region))
    frame = sections(raw)
    # The same body and envelope, signed by polisen-stockholm's real key.
    resigned = forge(region.identities["polisen-stockholm"], frame.sections[0], frame.sections[1])
    refused("grant_signer_mismatch", verify, resigned, region)
    # Or claiming to be the originator of someone else's message.
    claimed = body_of(raw).model_copy(
        update={
            "sender": "polisen-stockholm",
            "signer_key": region.identities["polisen-stockholm"].signing.key_id,
        }
    )
    forged = forge(region.identities["polisen-stockholm"], claimed, frame.sections[1])
    refused("grant_signer_mismatch", verify, forged, region)


@pytest.mark.parametrize("who", ["impostor", "officer", "broker"])
def test_keys_that_are_no_actor_keys_sign_no_grant(region, who):
    raw = grant(region, seal(region))
    frame = sections(raw)
    key = {
        "impostor": impostor(ORIGINATOR).signing,
        "officer": region.officers["sakerhetschef-nacka"],
        "broker": region.broker.signing,
    }[who]
    forged = frames.encode(frames.Kind.GRANT, key, frame.sections)
    refused("grant_unknown_signer", verify, forged, region)


def test_a_revoked_originator_key_is_refused(region):
    sealed = seal(region)
    raw = grant(region, sealed)
    revoked = edit_directory(
        region, {ORIGINATOR: signing_key_update(region, ORIGINATOR, revoked_at=AT + 5_000)}
    )
    verify(raw, region, directory=revoked, now=AT + 1_000)  # before the revocation: fine
    refused("grant_key_invalid", verify, raw, region, directory=revoked, now=AT + 5_000)
    # A grant dated before the key's validity is refused as well.
    early = body_of(raw).model_copy(update={"at": NOW - HOUR})
    forged = forge(region.identities[ORIGINATOR], early, sealed.raw)
    refused("grant_key_invalid", verify, forged, region)


# --- tampering --------------------------------------------------------------------


def _other_sealed(region: DemoRegion) -> str:
    key = RecipientKey.of(actor(region, NEWCOMER), NOW)
    return wrap_for(bytes(32), key, seeded_random(b"other key")).sealed


TAMPERED: dict[str, Any] = {
    "message": "0" * 32,
    "header_hash": "0" * 64,
    "recipient": THIRD,
    "incident": "flood-2026",
    "key_id": "1" * 32,
    "sealed": _other_sealed,
    "at": AT + 1,
    "sender": "polisen-stockholm",
    "signer_key": "2" * 32,
}


@pytest.mark.parametrize("field", sorted(TAMPERED))
def test_a_tampered_body_with_the_original_signature_is_refused(region, field):
    raw = grant(region, seal(region))
    value = TAMPERED[field]
    value = value(region) if callable(value) else value
    changed = body_of(raw).model_copy(update={field: value}).to_bytes()
    refused("grant_bad_signature", verify, keeping_signature(raw, changed), region)


@pytest.mark.parametrize("field", ["message", "header_hash", "incident"])
def test_a_body_that_names_another_message_or_incident_is_refused(region, field):
    """Even signed by the originator itself, a grant must match the envelope it carries."""
    raw = grant(region, seal(region))
    changed = body_of(raw).model_copy(update={field: TAMPERED[field]})
    forged = forge(region.identities[ORIGINATOR], changed, sections(raw).sections[1])
    refused("grant_mismatch", verify, forged, region)


def test_a_body_readdressed_to_a_third_actor_does_not_open_for_it(region):
    raw = grant(region, seal(region))
    changed = body_of(raw).model_copy(update={"recipient": THIRD})
    forged = forge(region.identities[ORIGINATOR], changed, sections(raw).sections[1])
    verify(forged, region)  # well formed, but the key was sealed to solna
    refused("invalid", open_as, forged, region, THIRD, error=OpenError)
    refused("not_addressed", open_as, forged, region, NEWCOMER, error=OpenError)


@pytest.mark.parametrize("field", ["key_id", "sealed"])
def test_a_body_with_another_wrap_does_not_open(region, field):
    raw = grant(region, seal(region))
    value = TAMPERED[field]
    changed = body_of(raw).model_copy(update={field: value(region) if callable(value) else value})
    forged = forge(region.identities[ORIGINATOR], changed, sections(raw).sections[1])
    verify(forged, region)
    refused("invalid", open_as, forged, region, error=OpenError)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda body: json.dumps(json.loads(body), indent=1).encode(),
        lambda body: body.replace(b'"v":1', b'"extra":1,"v":1'),
        lambda body: body.replace(b'"v":1', b'"v":2'),
        lambda body: body.replace(b',"v":1', b""),
        lambda body: body[:-1],
        lambda body: b"",
        lambda body: b"\xff" * 40,
    ],
    ids=["indented", "unknown_member", "version_2", "missing_member", "cut", "empty", "binary"],
)
def test_a_malformed_body_signed_by_the_originator_is_refused(region, mangle):
    raw = grant(region, seal(region))
    frame = sections(raw)
    forged = forge(region.identities[ORIGINATOR], mangle(frame.sections[0]), frame.sections[1])
    refused("grant_malformed", verify, forged, region)


def test_a_sealed_key_that_is_not_canonical_base64_is_refused(region):
    raw = grant(region, seal(region))
    body = body_of(raw)
    last = body.sealed[-1]
    bad = body.sealed[:-1] + ("!" if last != "!" else "?")
    changed = sections(raw).sections[0].replace(body.sealed.encode(), bad.encode())
    forged = forge(region.identities[ORIGINATOR], changed, sections(raw).sections[1])
    refused("grant_malformed", verify, forged, region)


def test_the_envelope_swapped_for_another_message_of_the_same_sender_is_refused(region):
    first, second = seal(region), seal(region, payload=b"another message")
    raw = grant(region, first)
    body = sections(raw).sections[0]
    refused("grant_bad_signature", verify, keeping_signature(raw, body, second.raw), region)
    forged = forge(region.identities[ORIGINATOR], body, second.raw)
    refused("grant_mismatch", verify, forged, region)


def test_an_envelope_of_another_sender_is_refused(region):
    other = seal(region, sender="polisen-stockholm", to=("nacka", "sos-alarm", "stockholm"))
    raw = grant(region, seal(region))
    body = body_of(raw).model_copy(
        update={
            "message": read_envelope(other.raw, region.directory).header.id,
            "header_hash": read_envelope(other.raw, region.directory).header_hash,
        }
    )
    forged = forge(region.identities[ORIGINATOR], body, other.raw)
    refused("grant_signer_mismatch", verify, forged, region)


def test_a_tampered_envelope_inside_a_re_signed_grant_is_refused(region):
    sealed = seal(region)
    raw = grant(region, sealed)
    envelope = bytearray(sealed.raw)
    envelope[-1] ^= 0x01  # the envelope's own signature
    forged = forge(region.identities[ORIGINATOR], sections(raw).sections[0], bytes(envelope))
    refused("bad_signature", verify, forged, region)
    refused("bad_signature", make_grant, region.identities[ORIGINATOR], bytes(envelope),
            sealed.content_key, newcomer=actor(region, NEWCOMER), directory=region.directory,
            policy=Policy(), at=AT)  # fmt: skip


# --- who may receive ----------------------------------------------------------------


@pytest.mark.parametrize("newcomer", [*TO, ORIGINATOR])
def test_an_actor_that_already_has_the_message_gets_no_grant(region, newcomer):
    sealed = seal(region)
    refused("grant_already_recipient", grant, region, sealed, newcomer=newcomer)
    raw = grant(region, sealed)
    changed = body_of(raw).model_copy(
        update={
            "recipient": newcomer,
            "key_id": region.identities[newcomer].encryption.key_id,
        }
    )
    forged = forge(region.identities[ORIGINATOR], changed, sealed.raw)
    refused("grant_already_recipient", verify, forged, region)


def test_a_message_without_an_incident_is_not_granted(region):
    sealed = seal(region, incident=None)
    refused("grant_no_incident", grant, region, sealed)
    named = grant(region, seal(region))
    forged = forge(region.identities[ORIGINATOR], sections(named).sections[0], sealed.raw)
    refused("grant_mismatch", verify, forged, region)  # the body names an incident, it does not


def _forged_grant(region: DemoRegion, sealed: SealedEnvelope, newcomer: str = NEWCOMER) -> bytes:
    """What a modified originator client could sign, bypassing make_grant's checks."""
    signed = read_envelope(sealed.raw, region.directory)
    wrap = wrap_for(sealed.content_key, RecipientKey.of(actor(region, newcomer), AT))
    body = GrantBody(
        message=signed.header.id,
        header_hash=signed.header_hash,
        sender=ORIGINATOR,
        signer_key=region.identities[ORIGINATOR].signing.key_id,
        recipient=newcomer,
        incident=INCIDENT,
        key_id=wrap.key_id,
        sealed=wrap.sealed,
        at=AT,
    )
    return forge(region.identities[ORIGINATOR], body, sealed.raw)


@pytest.mark.parametrize("tlp", [Tlp.RED, Tlp.AMBER_STRICT])
def test_red_and_amber_strict_content_is_never_granted(region, tlp):
    label = DEFAULT_LABEL.model_copy(update={"tlp": tlp})
    sealed = seal(region, label=label)
    assert grantable(label, actor(region, NEWCOMER), Policy(), AT) is not None
    refused("grant_not_allowed", grant, region, sealed)
    forged = _forged_grant(region, sealed)
    verify(forged, region)  # the broker's own checks refuse it; the newcomer's client too:
    refused("grant_not_allowed", open_as, forged, region)


@pytest.mark.parametrize("tlp", [Tlp.CLEAR, Tlp.GREEN, Tlp.AMBER])
def test_other_tlp_may_be_granted(region, tlp):
    label = DEFAULT_LABEL.model_copy(update={"tlp": tlp})
    assert grantable(label, actor(region, NEWCOMER), Policy(), AT) is None
    assert open_as(grant(region, seal(region, label=label)), region).payload == PAYLOAD


def test_a_newcomer_not_cleared_for_the_label_is_refused(region):
    sealed = seal(region)  # SEKRETESS; stockholms-hamnar is cleared INTERN
    hamnar = actor(region, "stockholms-hamnar")
    assert grantable(DEFAULT_LABEL, hamnar, Policy(), AT) is not None
    refused("grant_not_allowed", grant, region, sealed, newcomer="stockholms-hamnar")
    forged = _forged_grant(region, sealed, "stockholms-hamnar")
    refused("not_cleared", open_as, forged, region, "stockholms-hamnar", error=OpenError)


def test_a_newcomer_lacking_a_category_is_refused(region):
    label = DEFAULT_LABEL.model_copy(update={"categories": ("taktik",)})
    sealed = seal(region, label=label, to=("polisen-stockholm", "sos-alarm"))
    assert grantable(label, actor(region, NEWCOMER), Policy(), AT) is not None
    refused("grant_not_allowed", grant, region, sealed)
    refused("not_cleared", open_as, _forged_grant(region, sealed), region, error=OpenError)
    # kustbevakningen holds "taktik": it may be granted the message.
    assert open_as(grant(region, sealed, newcomer="kustbevakningen"), region, "kustbevakningen")


def test_a_label_off_the_ladder_is_not_granted(region):
    label = Label(policy="ssr", classification="TOPPHEMLIG", tlp=Tlp.AMBER)
    assert grantable(label, actor(region, NEWCOMER), Policy(), AT) is not None


@pytest.mark.parametrize(
    "change",
    [
        {"status": ActorStatus.SUSPENDED},
        {"status": ActorStatus.RETIRED},
        "encryption_revoked",
        "encryption_expired",
    ],
    ids=str,
)
def test_a_suspended_or_keyless_newcomer_is_refused(region, change):
    if change == "encryption_revoked":
        change = encryption_key_update(region, NEWCOMER, revoked_at=NOW)
    elif change == "encryption_expired":
        change = encryption_key_update(region, NEWCOMER, not_after=AT)
    directory = edit_directory(region, {NEWCOMER: change})
    newcomer = directory.actor(NEWCOMER)
    assert grantable(DEFAULT_LABEL, newcomer, Policy(), AT) is not None
    refused("grant_not_allowed", grant, region, seal(region), directory=directory)


def test_an_unknown_newcomer_is_not_grantable():
    assert grantable(DEFAULT_LABEL, None, Policy(), AT) is not None


# --- the newcomer's checks ------------------------------------------------------------


def test_a_grant_opened_by_a_third_actor_is_not_addressed(region):
    raw = grant(region, seal(region))
    refused("not_addressed", open_as, raw, region, THIRD, error=OpenError)
    refused("not_addressed", open_as, raw, region, "polisen-stockholm", error=OpenError)


def test_an_expired_message_does_not_open(region):
    raw = grant(region, seal(region))
    leeway = Policy().limits.clock_skew_seconds * 1000
    assert open_as(raw, region, now=NOW + HOUR + leeway - 1).payload == PAYLOAD
    refused("expired", open_as, raw, region, now=NOW + HOUR + leeway, error=OpenError)


def test_a_newcomer_with_the_wrong_secret_gets_the_opaque_code(region):
    raw = grant(region, seal(region))
    verified = verify(raw, region)
    me = impostor(NEWCOMER)
    with pytest.raises(OpenError) as caught:
        open_grant(verified, me=me, directory=region.directory, policy=Policy(), now=AT + 1_000)
    assert caught.value.code == "invalid"


# --- broken frames --------------------------------------------------------------------


def test_truncated_garbage_and_oversized_frames_are_malformed(region):
    raw = grant(region, seal(region))
    for broken in (raw[:-1], raw[:-10], raw[:85], raw[:22], b"", b"SSR", bytes(200),
                   seeded_random(b"garbage")(len(raw)), raw + b"\x00"):  # fmt: skip
        refused("grant_malformed", verify, broken, region)
    # Bounds: a grant carrying a larger envelope than the policy allows.
    refused("grant_malformed", verify, raw, region, max_envelope_bytes=1024)
    huge = raw[:21] + b"\x02" + (MAX_GRANT_BODY_BYTES + 1).to_bytes(4, "big") + bytes(100)
    refused("grant_malformed", verify, huge + bytes(64), region)
    oversized = bytes(MAX_ENVELOPE_BYTES + MAX_GRANT_BODY_BYTES + 257)
    refused("grant_malformed", verify, oversized, region)


def test_a_section_count_other_than_two_is_malformed(region):
    sealed = seal(region)
    raw = grant(region, sealed)
    frame = sections(raw)
    three = reframe(
        (*frame.sections, b""), signer_id=frame.signer, signature=frame.signature,
        kind=frames.Kind.GRANT,
    )  # fmt: skip
    refused("grant_malformed", verify, three, region)
    version_2 = bytearray(raw)
    version_2[3] = 2
    refused("grant_malformed", verify, bytes(version_2), region)


def test_frame_kinds_are_not_interchangeable(region, make_envelope):
    sealed = seal(region)
    raw = grant(region, sealed)
    refused("grant_malformed", verify, sealed.raw, region)  # an E frame is no grant
    with pytest.raises(EnvelopeError) as caught:
        read_envelope(raw, region.directory)  # a G frame is no envelope
    assert getattr(caught.value, "code", None) == "malformed"
    decision = decide_at(raw, region)
    assert isinstance(decision, Reject)
    assert decision.reason == "malformed"
    as_envelope = bytearray(raw)
    as_envelope[4] = ord("E")  # relabelled: the section count no longer fits, nor the signature
    decision = decide_at(bytes(as_envelope), region)
    assert isinstance(decision, Reject)
    assert decision.reason == "malformed"


def test_no_single_bit_flip_of_a_grant_verifies_or_opens(region):
    """Every byte position of a small grant, one bit each: nothing opens."""
    sealed = seal(region, to=("polisen-stockholm",), payload=b"x")
    raw = grant(region, sealed)
    assert len(raw) < 2_000
    for position in range(len(raw)):
        flipped = bytearray(raw)
        flipped[position] ^= 1 << (position % 8)
        with pytest.raises(GrantError):
            verify(bytes(flipped), region)


# --- seal_envelope and decrypt_own ---------------------------------------------------------


def test_seal_envelope_is_build_envelope_with_the_content_key(region):
    args: dict[str, Any] = {
        "sender": region.identities[ORIGINATOR],
        "recipients": recipient_keys(region.directory, TO),
        "label": DEFAULT_LABEL,
        "message_type": MessageType.SITUATION_REPORT,
        "payload": PAYLOAD,
        "created": NOW,
        "expires": NOW + HOUR,
    }
    sealed = seal_envelope(**args, rand=seeded_random(b"same"))
    assert sealed.raw == build_envelope(**args, rand=seeded_random(b"same"))
    assert len(sealed.content_key) == 32
    assert "content_key" not in repr(sealed) or sealed.content_key.hex() not in repr(sealed)
    signed = read_envelope(sealed.raw, region.directory)
    assert decrypt_own(signed, sealed.content_key).payload == PAYLOAD


def test_decrypt_own_with_another_key_is_the_opaque_error(region):
    sealed = seal(region)
    signed = read_envelope(sealed.raw, region.directory)
    with pytest.raises(OpenError) as caught:
        decrypt_own(signed, bytes(32))
    assert caught.value.code == "invalid"
    other = seal(region)
    with pytest.raises(OpenError):
        decrypt_own(signed, other.content_key)


# --- the incident index entry ------------------------------------------------------------


def test_an_index_entry_holds_header_metadata_only(region):
    draft = seal(region, message_type=MessageType.COMMUNICATION,
                 control=Control(press=PressStage.DRAFT), priority=Priority.IMMEDIATE)  # fmt: skip
    signed = read_envelope(draft.raw, region.directory)
    reply_to = Reference(kind=ReferenceKind.REPLY, message="a" * 32, header_hash="b" * 64)
    request = seal(region, message_type=MessageType.REQUEST, control=Control(deadline=NOW + 60_000),
                   references=(reply_to,))  # fmt: skip
    entry = IncidentEntry.of(signed.header, signed.header_hash)
    assert entry.wire() == {
        "id": signed.header.id,
        "incident": INCIDENT,
        "type": "communication",
        "sender": ORIGINATOR,
        "recipients": list(TO),
        "label": DEFAULT_LABEL.wire(),
        "status": "actual",
        "priority": "immediate",
        "created": NOW,
        "expires": NOW + HOUR,
        "header_hash": signed.header_hash,
        "references": [],
        "press": "draft",
        "deadline": None,
    }
    asked = read_envelope(request.raw, region.directory)
    entry = IncidentEntry.of(asked.header, asked.header_hash)
    assert entry.deadline == NOW + 60_000
    assert entry.press is None
    assert entry.wire()["references"] == [{"kind": "reply", "message": "a" * 32}]
    assert IncidentEntry.parse(entry.to_bytes(), max_bytes=1 << 16) == entry
    text = entry.to_bytes()
    assert PAYLOAD not in text
    assert b"sealed" not in text
    assert b"wraps" not in text


def test_only_incident_messages_are_indexed(region):
    signed = read_envelope(seal(region, incident=None).raw, region.directory)
    with pytest.raises(ValueError, match="only messages naming an incident"):
        IncidentEntry.of(signed.header, signed.header_hash)


def test_newcomers_are_the_participants_an_activation_adds(region):
    def activation(to: tuple[str, ...], lead: str | None = None) -> Any:
        raw = build_envelope(
            sender=region.identities["polisen-stockholm"],
            recipients=recipient_keys(region.directory, to),
            label=DEFAULT_LABEL,
            message_type=MessageType.ACTIVATION,
            payload=b"",
            created=NOW,
            expires=NOW + HOUR,
            incident=INCIDENT,
            control=Control(incident_type="storm", communication_lead=lead),
        )
        return read_envelope(raw, region.directory).header

    first = opened_by(activation(("nacka", "sos-alarm")), None)
    assert newcomers(None, first) == ()
    assert first.lead == "polisen-stockholm"  # the owner, when no lead is named
    second = opened_by(activation(("nacka", "solna", "sos-alarm"), lead="nacka"), first)
    assert newcomers(first, second) == ("solna",)
    assert second.lead == "nacka"
    assert second.owner == "polisen-stockholm"
    assert isinstance(second, Incident)


def test_an_expired_originator_key_cannot_grant_by_backdating(region):
    """``at`` is the grantor's word: a key past its ``not_after`` is refused even when the
    grant claims a time inside the key's validity."""
    sealed = seal(region)
    raw = grant(region, sealed)
    expired = edit_directory(
        region, {ORIGINATOR: signing_key_update(region, ORIGINATOR, not_after=AT + 5_000)}
    )
    verify(raw, region, directory=expired, now=AT + 1_000)  # the key is still valid: fine
    refused("grant_key_invalid", verify, raw, region, directory=expired, now=AT + 5_000)


@pytest.mark.parametrize("status", [ActorStatus.SUSPENDED, ActorStatus.RETIRED], ids=str)
def test_an_originator_no_longer_active_cannot_grant(region, status):
    raw = grant(region, seal(region))
    changed = edit_directory(region, {ORIGINATOR: {"status": status}})
    refused("grant_key_invalid", verify, raw, region, directory=changed)
