"""Known-answer test vectors for second implementations (``schemas/vectors/``).

Everything derives from one seed and fixed times, so ``python -m
broker.vectors schemas/vectors`` writes the same bytes every time and the
test suite regenerates the vectors and compares them with the published
files. Each invalid case names the stage that must refuse it (``broker``:
``decide``; ``recipient``: ``open_envelope``) and the expected reason code.
``notice.json`` holds the broker's signed rejection of one invalid case and
notices that every verifier must refuse. ``grant.json`` holds a key grant of an
incident message to an actor that joined late (and grants that must be refused);
``bundle.json`` an offline bundle of that message and its grant.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.core import (
    Actor,
    ActorKind,
    BrokerIdentity,
    BrokerService,
    Control,
    DirectoryDocument,
    Identity,
    KeyRecord,
    Label,
    MessageType,
    Mode,
    NoticeKind,
    Policy,
    Priority,
    ReceiptKind,
    RecipientKey,
    Reject,
    Role,
    SigningKeyPair,
    Tlp,
    VerifiedDirectory,
    build_envelope,
    decide,
    make_notice,
    make_receipt,
    read_envelope,
    sign_directory,
    successor,
    verify_directory,
)
from broker.core import frame as frames
from broker.core.bundles import make_bundle
from broker.core.crypto import seeded_random
from broker.core.envelope import KeyWraps, seal_envelope
from broker.core.grants import GrantBody, make_grant

SEED = b"ssr-test-vectors-v1"
ISSUED = 1_767_225_600_000  # 2026-01-01T00:00:00Z
CREATED = 1_790_000_000_000  # 2026-09-21T14:13:20Z
EXPIRES = CREATED + 3_600_000
YEAR = 365 * 24 * 3_600_000
PAYLOAD = "Lägesbild 14:00: storm over Nacka, 3 000 households without power.".encode()
SENDER = "nacka"
RECIPIENTS = ("polisen-stockholm", "sos-alarm", "stockholm")
OUTSIDER = "solna"
BROKER = "ssr-broker"
INCIDENT = "storm-2026-09"


@dataclass
class _Fixture:
    authority: SigningKeyPair
    identities: dict[str, Identity]
    broker: BrokerIdentity
    directory: VerifiedDirectory
    rand: Callable[[int], bytes]


def _actor(identity: Identity, kind: ActorKind, clearance: str, **extra: Any) -> Actor:
    def record(public: bytes) -> tuple[KeyRecord, ...]:
        return (KeyRecord.for_key(public, not_before=ISSUED, not_after=ISSUED + 2 * YEAR),)

    return Actor(
        id=identity.principal,
        name=identity.principal.replace("-", " ").title(),
        kind=kind,
        clearance=clearance,
        signing_keys=record(identity.signing.public),
        encryption_keys=record(identity.encryption.public),
        **extra,
    )


def _fixture() -> _Fixture:
    rand = seeded_random(SEED)
    authority = SigningKeyPair.generate(rand)
    kinds = {
        "nacka": (ActorKind.MUNICIPALITY, "SEKRETESS"),
        "polisen-stockholm": (ActorKind.POLICE, "SEKRETESS"),
        "solna": (ActorKind.MUNICIPALITY, "SEKRETESS"),
        "sos-alarm": (ActorKind.DISPATCH, "SEKRETESS"),
        "stockholm": (ActorKind.MUNICIPALITY, "SEKRETESS"),
        "stockholms-hamnar": (ActorKind.PORT, "INTERN"),
    }
    identities = {name: Identity.generate(name, rand) for name in kinds}
    broker = BrokerIdentity(BROKER, SigningKeyPair.generate(rand))
    actors = tuple(
        _actor(
            identities[name],
            kind,
            clearance,
            roles=(Role.ACTIVATOR,) if name == "stockholm" else (),
        )
        for name, (kind, clearance) in kinds.items()
    )
    document = DirectoryDocument(
        region="ssr-vectors",
        version=1,
        previous=None,
        issued=ISSUED,
        authority_keys=(
            KeyRecord.for_key(authority.public, not_before=ISSUED, not_after=ISSUED + 5 * YEAR),
        ),
        actors=actors,
        brokers=(
            BrokerService(
                id=BROKER,
                name="ssr-broker (vectors)",
                signing_keys=(
                    KeyRecord.for_key(
                        broker.signing.public, not_before=ISSUED, not_after=ISSUED + 2 * YEAR
                    ),
                ),
            ),
        ),
    )
    directory = verify_directory(sign_directory(document, authority), pinned=authority.public)
    return _Fixture(authority, identities, broker, directory, rand)


def _label(classification: str = "SEKRETESS", tlp: Tlp = Tlp.AMBER) -> Label:
    return Label(policy="ssr", classification=classification, tlp=tlp, legal="OSL 18:13")


def _envelope(fx: _Fixture, *, to: tuple[str, ...] = RECIPIENTS, **overrides: Any) -> bytes:
    args: dict[str, Any] = {
        "sender": fx.identities[SENDER],
        "recipients": [RecipientKey.of(fx.directory.actor(a), CREATED) for a in to],  # type: ignore[arg-type]
        "label": _label(),
        "message_type": MessageType.SITUATION_REPORT,
        "payload": PAYLOAD,
        "created": CREATED,
        "expires": EXPIRES,
        "priority": Priority.PRIORITY,
        "content_type": "text/plain",
        "rand": fx.rand,
    }
    args.update(overrides)
    return build_envelope(**args)


def _reframe(
    signer: SigningKeyPair,
    header: bytes,
    wraps: bytes,
    ciphertext: bytes,
    signature: bytes | None = None,
) -> bytes:
    """Frame sections; with ``signature`` keep that (stale) signature instead of signing."""
    fresh = frames.encode(frames.Kind.ENVELOPE, signer, (header, wraps, ciphertext))
    return fresh if signature is None else fresh[:-64] + signature


def _header_with(raw: bytes, fx: _Fixture, **changes: Any) -> bytes:
    header = read_envelope(raw, fx.directory).header
    return header.model_copy(update=changes).to_bytes()


def _case(
    name: str, stage: str, reason: str, envelope: bytes, what: str, **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "description": what,
        "stage": stage,
        "reason": reason,
        "envelope": envelope.hex(),
        **extra,
    }


def _invalid_cases(fx: _Fixture, valid: bytes) -> list[dict[str, Any]]:
    decoded = frames.decode(
        valid, frames.Kind.ENVELOPE, max_bytes=1 << 22, max_section=(1 << 22,) * 3
    )
    header, wraps, ciphertext = decoded.sections
    sender = fx.identities[SENDER].signing
    flipped = bytearray(valid)
    flipped[-1] ^= 0x01
    lowered = header.replace(b'"classification":"SEKRETESS"', b'"classification":"OFFENTLIG"')
    outsider_key = RecipientKey.of(fx.directory.actor(OUTSIDER), CREATED)  # type: ignore[arg-type]
    added_header = _header_with(valid, fx, recipients=tuple(sorted((*RECIPIENTS, OUTSIDER))))
    wrap_list = KeyWraps.model_validate_json(wraps).wire()["wraps"]
    extra_wrap = {
        "recipient": OUTSIDER,
        "key_id": outsider_key.key_id,
        "sealed": wrap_list[0]["sealed"],
    }
    added_wraps = KeyWraps.model_validate_json(
        json.dumps({"wraps": sorted([*wrap_list, extra_wrap], key=lambda w: w["recipient"])})
    ).to_bytes()
    truncated = ciphertext[:-1]
    version_2 = bytearray(valid)
    version_2[3] = 2
    stranger = Identity.generate("nacka", fx.rand)
    pretty_header = json.dumps(json.loads(header), indent=1).encode()
    other_sender = _header_with(valid, fx, sender="solna")
    fewer_wraps = KeyWraps.model_validate_json(json.dumps({"wraps": wrap_list[:2]})).to_bytes()
    return [
        _case(
            "bad_signature",
            "broker",
            "bad_signature",
            bytes(flipped),
            "last signature byte flipped",
        ),
        _case(
            "tampered_label",
            "broker",
            "bad_signature",
            _reframe(sender, lowered, wraps, ciphertext, decoded.signature),
            "classification lowered to OFFENTLIG, original signature kept",
        ),
        _case(
            "added_recipient",
            "broker",
            "bad_signature",
            _reframe(sender, added_header, added_wraps, ciphertext, decoded.signature),
            "solna added to recipients and wraps, original signature kept",
        ),
        _case(
            "truncated_ciphertext",
            "broker",
            "bad_signature",
            _reframe(sender, header, wraps, truncated, decoded.signature),
            "last ciphertext byte removed, lengths fixed, original signature kept",
        ),
        _case("truncated_frame", "broker", "malformed", valid[:-10], "frame cut 10 bytes short"),
        _case(
            "unsupported_version",
            "broker",
            "unsupported_version",
            bytes(version_2),
            "format version byte set to 2",
        ),
        _case(
            "unknown_sender_key",
            "broker",
            "unknown_sender_key",
            _envelope(fx, sender=stranger),
            "signed by a key the directory does not list",
        ),
        _case(
            "non_canonical_header",
            "broker",
            "malformed",
            _reframe(sender, pretty_header, wraps, ciphertext),
            "validly signed but the header JSON is indented",
        ),
        _case(
            "sender_mismatch",
            "broker",
            "sender_mismatch",
            _reframe(sender, other_sender, wraps, ciphertext),
            "nacka's key signs a header that claims solna sent it",
        ),
        _case(
            "wraps_mismatch",
            "broker",
            "wraps_mismatch",
            _reframe(sender, header, fewer_wraps, ciphertext),
            "validly signed, one recipient has no key wrap",
        ),
        _case(
            "expired",
            "broker",
            "expired",
            valid,
            "valid envelope checked after its expiry",
            now=EXPIRES + 1,
        ),
        _case(
            "not_yet_valid",
            "broker",
            "not_yet_valid",
            valid,
            "valid envelope checked 10 minutes before its creation",
            now=CREATED - 600_000,
        ),
        _case(
            "replay",
            "broker",
            "replay",
            valid,
            "message id already seen",
            seen=[read_envelope(valid, fx.directory).header.id],
        ),
        _case(
            "above_ceiling",
            "broker",
            "above_ceiling",
            _envelope(fx, label=_label("HEMLIG")),
            "HEMLIG is above the default ceiling SEKRETESS",
        ),
        _case(
            "recipient_not_cleared",
            "broker",
            "recipient_not_cleared",
            _envelope(fx, to=("stockholms-hamnar", "stockholm")),
            "stockholms-hamnar is cleared for INTERN only",
            recipients=["stockholms-hamnar"],
        ),
        _case(
            "type_not_allowed",
            "broker",
            "type_not_allowed",
            _envelope(fx, message_type=MessageType.MODE_CHANGE),
            "only an authority may change the mode",
        ),
        _case(
            "not_addressed",
            "recipient",
            "not_addressed",
            valid,
            "opened by solna, which is not a recipient",
            recipient=OUTSIDER,
        ),
        _case(
            "wrong_recipient_key",
            "recipient",
            "invalid",
            valid,
            "opened by sos-alarm with a secret key that is not its directory key",
            recipient="sos-alarm",
            recipient_secret=Identity.generate("sos-alarm", fx.rand).encryption.secret.hex(),
        ),
        _case(
            "control_invalid",
            "broker",
            "control_invalid",
            _envelope(fx, message_type=MessageType.ALERT, control=Control(mode=Mode.ACTIVATED)),
            "an alert carrying control fields (only mode_change and activation carry them)",
        ),
        _case(
            "incident_unknown",
            "broker",
            "incident_unknown",
            _envelope(fx, incident=INCIDENT),
            f"a situation report naming the incident {INCIDENT}, which no activation opened",
        ),
    ]


def _hexkeys(identity: Identity) -> dict[str, str]:
    return {
        "signing_seed": identity.signing.seed.hex(),
        "signing_public": identity.signing.public.hex(),
        "signing_key_id": identity.signing.key_id,
        "encryption_secret": identity.encryption.secret.hex(),
        "encryption_public": identity.encryption.public.hex(),
        "encryption_key_id": identity.encryption.key_id,
    }


def build_vectors() -> dict[str, Any]:
    """All vector documents by file name."""
    fx = _fixture()
    common = {
        "authority_public": fx.authority.public.hex(),
        "directory": fx.directory.raw.hex(),
        "policy": "the built-in default policy (broker.core.Policy())",
    }
    draws: list[bytes] = []

    def recorded(n: int) -> bytes:
        draws.append(fx.rand(n))
        return draws[-1]

    valid = _envelope(fx, rand=recorded)
    _message_id, content_key, _nonce, *ephemeral = draws  # build_envelope's draw order
    decoded = frames.decode(
        valid, frames.Kind.ENVELOPE, max_bytes=1 << 22, max_section=(1 << 22,) * 3
    )
    signed = read_envelope(valid, fx.directory)
    envelope = {
        **common,
        "description": "nacka sends a SEKRETESS / TLP:AMBER situation report to three recipients",
        "now": CREATED + 1_000,
        "sender": {
            "actor": SENDER,
            **{
                k: v
                for k, v in _hexkeys(fx.identities[SENDER]).items()
                if "public" in k or "key_id" in k
            },
        },
        "recipients": [{"actor": a, **_hexkeys(fx.identities[a])} for a in RECIPIENTS],
        "envelope": valid.hex(),
        "expected": {
            "header": json.loads(decoded.sections[0]),
            "header_bytes": decoded.sections[0].decode(),
            "header_hash": signed.header_hash,
            "wraps": json.loads(decoded.sections[1]),
            "content_key": content_key.hex(),
            "nonce": decoded.sections[2][:24].hex(),
            "ephemeral_secrets": [e.hex() for e in ephemeral],
            "signature": decoded.signature.hex(),
            "plaintext": PAYLOAD.decode(),
            "plaintext_hex": PAYLOAD.hex(),
        },
    }
    cases = _invalid_cases(fx, valid)
    invalid = {**common, "now": CREATED + 1_000, "cases": cases}
    recipient = fx.identities["sos-alarm"]
    receipt = make_receipt(
        recipient, signed.header, signed.header_hash, ReceiptKind.DELIVERED, at=CREATED + 2_000
    )
    receipts = {
        **common,
        "description": "sos-alarm confirms delivery of the valid envelope",
        "now": CREATED + 3_000,
        "envelope": valid.hex(),
        "receipt": receipt.hex(),
        "expected": {
            "body": json.loads(
                frames.decode(
                    receipt, frames.Kind.RECEIPT, max_bytes=1 << 16, max_section=(1 << 16,)
                ).sections[0]
            )
        },
    }
    return {
        "envelope-valid.json": envelope,
        "envelope-invalid.json": invalid,
        "receipt.json": receipts,
        "notice.json": _notices(fx, common, cases),
        "directory-chain.json": _directory_chain(fx),
        **_grant_and_bundle(fx, common),
    }


def _notices(fx: _Fixture, common: dict[str, Any], cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The broker's rejection of the ``recipient_not_cleared`` case, and forgeries of it."""
    (refused,) = (c for c in cases if c["name"] == "recipient_not_cleared")
    submitted = bytes.fromhex(refused["envelope"])
    now = CREATED + 1_000
    decision = decide(
        submitted, directory=fx.directory, policy=Policy(), mode=Mode.ORDINARY, now=now, seen=()
    )
    assert isinstance(decision, Reject)
    assert decision.sender is not None
    sender, at = decision.sender, now + 500

    def rejection(broker: BrokerIdentity, when: int = at) -> bytes:
        return make_notice(
            broker,
            NoticeKind.REJECTED,
            to=sender,
            submission=submitted,
            at=when,
            message=decision.message_id,
            header_hash=read_envelope(submitted, fx.directory).header_hash,
            reason=decision.reason.value,
            recipients=decision.recipients,
            detail=decision.detail,
        )

    notice = rejection(fx.broker)
    body = frames.decode(
        notice, frames.Kind.NOTICE, max_bytes=1 << 16, max_section=(1 << 16,)
    ).sections[0]
    tampered = bytearray(notice)
    tampered[26 + body.index(b"stockholms-hamnar")] ^= 0x01  # the named recipient changed
    other_name = body.replace(f'"broker":"{BROKER}"'.encode(), b'"broker":"annan-broker"')
    return {
        **common,
        "description": "ssr-broker rejects the envelope-invalid case recipient_not_cleared",
        "now": at + 1_000,
        "broker": {
            "id": BROKER,
            "signing_public": fx.broker.signing.public.hex(),
            "signing_key_id": fx.broker.signing.key_id,
        },
        "envelope": submitted.hex(),
        "notice": notice.hex(),
        "expected": {"body": json.loads(body), "body_bytes": body.decode()},
        "invalid": [
            {
                "name": "signed_by_an_actor",
                "description": "the same notice signed by nacka's actor key",
                "notice": rejection(BrokerIdentity(BROKER, fx.identities[SENDER].signing)).hex(),
                "reason": "notice_unknown_signer",
            },
            {
                "name": "other_broker_named",
                "description": "signed by the broker key, but the body names another broker",
                "notice": frames.encode(frames.Kind.NOTICE, fx.broker.signing, (other_name,)).hex(),
                "reason": "notice_unknown_signer",
            },
            {
                "name": "tampered",
                "description": "the named recipient changed (one bit), original signature kept",
                "notice": bytes(tampered).hex(),
                "reason": "notice_bad_signature",
            },
            {
                "name": "before_key_validity",
                "description": "made at a time before the broker key's not_before",
                "notice": rejection(fx.broker, when=ISSUED - 1).hex(),
                "reason": "notice_key_invalid",
            },
        ],
    }


def _directory_chain(fx: _Fixture) -> dict[str, Any]:
    v1 = fx.directory
    new_nacka = Identity.generate("nacka", fx.rand)
    rotated = []
    for actor in v1.document.actors:
        if actor.id == "nacka":
            old = actor.signing_keys[0].model_copy(update={"not_after": CREATED + 600_000})
            new = KeyRecord.for_key(
                new_nacka.signing.public, not_before=CREATED, not_after=CREATED + 2 * YEAR
            )
            actor = actor.model_copy(update={"signing_keys": (old, new)})
        rotated.append(actor)
    v2_raw = sign_directory(successor(v1, issued=CREATED, actors=tuple(rotated)), fx.authority)
    v2 = verify_directory(v2_raw, pinned=fx.authority.public, previous=v1)
    revoked = []
    for actor in v2.document.actors:
        if actor.id == "solna":
            keys = tuple(
                k.model_copy(update={"revoked_at": CREATED + 3_600_000}) for k in actor.signing_keys
            )
            actor = actor.model_copy(update={"signing_keys": keys})
        revoked.append(actor)
    v3_raw = sign_directory(
        successor(v2, issued=CREATED + 3_600_000, actors=tuple(revoked)), fx.authority
    )
    v3 = verify_directory(v3_raw, pinned=fx.authority.public, previous=v2)
    forger = SigningKeyPair.generate(fx.rand)
    forged = sign_directory(
        successor(v2, issued=CREATED + 3_600_000, actors=tuple(revoked)), forger
    )
    return {
        "description": "v1; v2 rotates nacka's signing key; v3 revokes solna's signing key",
        "authority_public": fx.authority.public.hex(),
        "versions": [v.raw.hex() for v in (v1, v2, v3)],
        "expected_hashes": [v.hash for v in (v1, v2, v3)],
        "invalid": [
            {
                "name": "forged_v3",
                "description": "v3 signed by a key that is no authority key",
                "previous": 2,
                "version": forged.hex(),
                "reason": "directory_unknown_signer",
            },
            {
                "name": "reordered",
                "description": "v3 offered directly after v1",
                "previous": 1,
                "version": v3_raw.hex(),
                "reason": "directory_not_next",
            },
            {
                "name": "tampered_v2",
                "description": "v2 with one byte of its document changed",
                "previous": 1,
                "version": _flip_inside(v2_raw).hex(),
                "reason": "directory_bad_signature",
            },
        ],
    }


NEWCOMER = "solna"
GRANTED_AT = CREATED + 60_000
GRANT_PAYLOAD = "Lägesbild 15:00: the storm has moved north; Nacka reports 1 200 households still without power.".encode()  # noqa: E501
_GRANT_SECTIONS = (4096, 1 << 22)


def _grant_and_bundle(fx: _Fixture, common: dict[str, Any]) -> dict[str, Any]:
    """solna joins the incident late; nacka grants it an earlier message and bundles both.

    Drawn from the stream after every other vector, so the earlier files do not change.
    """
    draws: list[bytes] = []

    def recorded(n: int) -> bytes:
        draws.append(fx.rand(n))
        return draws[-1]

    nacka, newcomer = fx.identities[SENDER], fx.directory.actor(NEWCOMER)
    assert newcomer is not None
    sealed = seal_envelope(
        sender=nacka,
        recipients=[RecipientKey.of(fx.directory.actor(a), CREATED) for a in RECIPIENTS],  # type: ignore[arg-type]
        label=_label(),
        message_type=MessageType.SITUATION_REPORT,
        payload=GRANT_PAYLOAD,
        created=CREATED,
        expires=EXPIRES,
        priority=Priority.PRIORITY,
        incident=INCIDENT,
        content_type="text/plain",
        rand=recorded,
    )
    _id, content_key, _nonce, *_ephemeral = draws
    draws.clear()
    grant = make_grant(
        nacka,
        sealed.raw,
        sealed.content_key,
        newcomer=newcomer,
        directory=fx.directory,
        policy=Policy(),
        at=GRANTED_AT,
        rand=recorded,
    )
    (grant_ephemeral,) = draws
    decoded = frames.decode(
        grant, frames.Kind.GRANT, max_bytes=1 << 23, max_section=_GRANT_SECTIONS
    )
    body_bytes, envelope = decoded.sections
    body = GrantBody.parse(body_bytes, max_bytes=4096)
    signed = read_envelope(envelope, fx.directory)

    def grant_with(signer: SigningKeyPair, **changes: Any) -> bytes:
        changed = body.model_copy(update=changes).to_bytes()
        return frames.encode(frames.Kind.GRANT, signer, (changed, envelope))

    other = _envelope(fx, incident=INCIDENT, payload=b"another message of the incident")
    flipped = bytearray(grant)
    flipped[26 + body_bytes.index(NEWCOMER.encode())] ^= 0x01  # the newcomer renamed
    polisen = fx.identities["polisen-stockholm"]
    red = seal_envelope(
        sender=nacka,
        recipients=[RecipientKey.of(fx.directory.actor(a), CREATED) for a in RECIPIENTS],  # type: ignore[arg-type]
        label=_label(tlp=Tlp.RED),
        message_type=MessageType.SITUATION_REPORT,
        payload=b"TLP:RED: only for the named recipients",
        created=CREATED,
        expires=EXPIRES,
        incident=INCIDENT,
        rand=fx.rand,
    )
    red_signed = read_envelope(red.raw, fx.directory)
    red_wrap = GrantBody(
        **{
            **body.wire(),
            "message": red_signed.header.id,
            "header_hash": red_signed.header_hash,
        }
    )
    red_grant = frames.encode(frames.Kind.GRANT, nacka.signing, (red_wrap.to_bytes(), red.raw))
    verify_at = GRANTED_AT + 1_000
    grant_vector = {
        **common,
        "description": (
            f"{NEWCOMER} joined incident {INCIDENT} late; nacka grants it an earlier "
            "SEKRETESS / TLP:AMBER situation report of the incident"
        ),
        "now": verify_at,
        "incident": INCIDENT,
        "originator": {
            "actor": SENDER,
            "signing_public": nacka.signing.public.hex(),
            "signing_key_id": nacka.signing.key_id,
        },
        "newcomer": {"actor": NEWCOMER, **_hexkeys(fx.identities[NEWCOMER])},
        "envelope": sealed.raw.hex(),
        "grant": grant.hex(),
        "expected": {
            "body": json.loads(body_bytes),
            "body_bytes": body_bytes.decode(),
            "header_hash": signed.header_hash,
            "content_key": content_key.hex(),
            "ephemeral_secret": grant_ephemeral.hex(),
            "signature": decoded.signature.hex(),
            "plaintext": GRANT_PAYLOAD.decode(),
            "plaintext_hex": GRANT_PAYLOAD.hex(),
        },
        "invalid": [
            {
                "name": "signed_by_another_actor",
                "description": "the same grant signed by polisen-stockholm's key",
                "grant": frames.encode(frames.Kind.GRANT, polisen.signing, decoded.sections).hex(),
                "stage": "verify",
                "reason": "grant_signer_mismatch",
            },
            {
                "name": "tampered",
                "description": "the newcomer renamed (one bit), original signature kept",
                "grant": bytes(flipped).hex(),
                "stage": "verify",
                "reason": "grant_bad_signature",
            },
            {
                "name": "envelope_swapped",
                "description": "signed by nacka, but carries another message of the incident",
                "grant": frames.encode(frames.Kind.GRANT, nacka.signing, (body_bytes, other)).hex(),
                "stage": "verify",
                "reason": "grant_mismatch",
            },
            {
                "name": "already_recipient",
                "description": "signed by nacka, granting the message to one of its recipients",
                "grant": grant_with(
                    nacka.signing,
                    recipient="sos-alarm",
                    key_id=fx.identities["sos-alarm"].encryption.key_id,
                ).hex(),
                "stage": "verify",
                "reason": "grant_already_recipient",
            },
            {
                "name": "an_envelope",
                "description": "an E frame offered as a grant",
                "grant": sealed.raw.hex(),
                "stage": "verify",
                "reason": "grant_malformed",
            },
            {
                "name": "red",
                "description": "a TLP:RED message granted by a client that skipped the rule",
                "grant": red_grant.hex(),
                "stage": "open",
                "reason": "grant_not_allowed",
            },
            {
                "name": "not_addressed",
                "description": "the valid grant opened by stockholms-hamnar",
                "grant": grant.hex(),
                "stage": "open",
                "recipient": "stockholms-hamnar",
                "reason": "not_addressed",
            },
            {
                "name": "expired",
                "description": "the valid grant opened after the message expired (+ leeway)",
                "grant": grant.hex(),
                "stage": "open",
                "now": EXPIRES + 120_000,
                "reason": "expired",
            },
        ],
    }
    return {"grant.json": grant_vector, "bundle.json": _bundle(fx, common, sealed.raw, grant)}


def _bundle(fx: _Fixture, common: dict[str, Any], envelope: bytes, grant: bytes) -> dict[str, Any]:
    nacka = fx.identities[SENDER]
    created = GRANTED_AT + 600_000
    bundle = make_bundle(nacka, [envelope, grant], created=created, incident=INCIDENT)
    decoded = frames.decode(bundle, frames.Kind.BUNDLE, max_bytes=1 << 27, max_section=(1 << 27,))
    (body_bytes,) = decoded.sections
    body = json.loads(body_bytes)

    def signed_bundle(signer: SigningKeyPair, **changes: Any) -> bytes:
        changed = json.dumps(
            {**body, **changes}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
        return frames.encode(frames.Kind.BUNDLE, signer, (changed,))

    flipped = bytearray(bundle)
    flipped[26 + 200] ^= 0x01
    bad_item = bytearray(envelope)
    bad_item[60] ^= 0x01  # inside the header: the envelope's own signature fails
    tampered_item = make_bundle(nacka, [bytes(bad_item), grant], created=created, incident=INCIDENT)
    return {
        **common,
        "description": "nacka exports the incident message and its grant to solna for carrying",
        "now": created + 1_000,
        "exporter": {
            "actor": SENDER,
            "signing_public": nacka.signing.public.hex(),
            "signing_key_id": nacka.signing.key_id,
        },
        "bundle": bundle.hex(),
        "expected": {
            "body": body,
            "items": [envelope.hex(), grant.hex()],
            "signature": decoded.signature.hex(),
        },
        "invalid": [
            {
                "name": "tampered",
                "description": "one bit of the body changed, original signature kept",
                "bundle": bytes(flipped).hex(),
                "reason": "bundle_bad_signature",
            },
            {
                "name": "unknown_exporter",
                "description": "signed by a key the directory does not list",
                "bundle": signed_bundle(SigningKeyPair.generate(fx.rand)).hex(),
                "reason": "bundle_unknown_signer",
            },
            {
                "name": "other_exporter_named",
                "description": "signed by nacka, the body names solna as the exporter",
                "bundle": signed_bundle(nacka.signing, exporter=NEWCOMER).hex(),
                "reason": "bundle_signer_mismatch",
            },
            {
                "name": "item_not_base64",
                "description": "signed by nacka, an item is not base64",
                "bundle": signed_bundle(nacka.signing, items=["not base64!"]).hex(),
                "reason": "bundle_malformed",
            },
            {
                "name": "item_not_a_frame",
                "description": "signed by nacka, an item is the directory (a D frame)",
                "bundle": signed_bundle(
                    nacka.signing, items=[base64.b64encode(fx.directory.raw).decode()]
                ).hex(),
                "reason": "bundle_malformed",
            },
        ],
        "tampered_item": {
            "description": (
                "a bundle that verifies, holding an envelope changed before export: the item "
                "fails its own verification (bad_signature) and the grant still verifies"
            ),
            "bundle": tampered_item.hex(),
            "item_reasons": ["bad_signature", None],
        },
    }


def _flip_inside(raw: bytes) -> bytes:
    changed = bytearray(raw)
    changed[100] ^= 0x20
    return bytes(changed)


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    target = Path(argv[1] if len(argv) > 1 else "schemas/vectors")
    target.mkdir(parents=True, exist_ok=True)
    for name, document in build_vectors().items():
        (target / name).write_text(render(document), encoding="utf-8")
        print(f"wrote {target / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
