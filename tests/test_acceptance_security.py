"""Acceptance, issue 9 security items 7, 9 and 10, against the real core (real keys, real
signatures, directories signed by the demo authority); every matrix is enumerated, not
sampled, and its figures recorded.

- 7 tamper matrix: a relay edits one header field of a valid envelope and either leaves
  the original signature, or re-signs with another actor's real key (its own key id in
  the frame, or the sender's) → refused by the broker's ``decide`` or by every recipient's
  ``open_envelope``; recorded refused/total per field.
- 9 keys: a poisoned directory version (not signed by the authority), envelopes under a
  key the directory never listed, a revoked key used after revocation, clock skew beyond
  the leeway → refused; within the leeway → accepted by broker and recipient.
- 10 surreptitious forwarding (a recipient re-addresses the sender's envelope, six ways,
  plus the unchanged bytes handed to another actor) and receipt forgery (edited, moved
  to another message or recipient, signed by the wrong principal) → refused, checked the
  way the broker's router checks a receipt (``verify_receipt``, the subject's actor,
  ``check_receipt_matches``).

Items 8 (replay) and 12 (NATS permissions) run against real servers in
``tests/test_acceptance_servers.py``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from broker.core import (
    Accept,
    Control,
    DirectoryError,
    Header,
    Identity,
    MessageType,
    Mode,
    OpenError,
    Policy,
    Priority,
    ReceiptError,
    ReceiptKind,
    Reference,
    ReferenceKind,
    Reject,
    SealedEnvelope,
    Status,
    Tlp,
    canonical,
    check_receipt_matches,
    crypto,
    make_receipt,
    read_envelope,
    seal_envelope,
    sign_directory,
    successor,
    verify_directory,
    verify_receipt,
)
from broker.core import frame as frames
from broker.core.directory import KeyRecord
from broker.core.envelope import KeyWraps, Wrap
from broker.core.incidents import opened_by
from broker.core.keys import b64
from broker.demo import DemoRegion

from .acceptance import record
from .conftest import HOUR, NOW
from .envelope_helpers import (
    DEFAULT_LABEL,
    DEFAULT_TO,
    build_as,
    decide_at,
    edit_directory,
    impostor,
    open_as,
    recipient_keys,
    reframe,
    reframe_keeping_signature,
    resign,
    signing_key_update,
    split,
)
from .test_properties import FORWARD_STRATEGIES, _readdress

SKEW = Policy().limits.clock_skew_seconds * 1000
RELAYS = ("huddinge", "sos-alarm")  # a bystander actor and one of the recipients


def refused_everywhere(
    raw: bytes, region: DemoRegion, recipients: set[str], **decide_kw: Any
) -> tuple[bool, bool]:
    """(broker refused, every recipient refused)."""
    broker = isinstance(decide_at(raw, region, **decide_kw), Reject)
    opened = 0
    for recipient in sorted(recipients & set(region.identities)):
        try:
            open_as(raw, region, recipient)
            opened += 1
        except OpenError:
            pass
    return broker, opened == 0


# --- 7: tamper matrix -------------------------------------------------------------------------


def _bases(region: DemoRegion) -> dict[str, tuple[SealedEnvelope, dict[str, Any]]]:
    """A plain situation report with a reference, and an activation with an incident and
    control fields; each with what ``decide`` needs to accept it."""
    reply = Reference(kind=ReferenceKind.REPLY, message="0a" * 16, header_hash="0b" * 32)
    report = seal_envelope(
        sender=region.identities["nacka"],
        recipients=recipient_keys(region.directory, DEFAULT_TO),
        label=DEFAULT_LABEL,
        message_type=MessageType.SITUATION_REPORT,
        payload=b'{"text": "Storm warning"}',
        created=NOW,
        expires=NOW + HOUR,
        references=(reply,),
    )
    activation = seal_envelope(
        sender=region.identities["polisen-stockholm"],
        recipients=recipient_keys(region.directory, ("nacka", "sos-alarm")),
        label=DEFAULT_LABEL,
        message_type=MessageType.ACTIVATION,
        payload=b"{}",
        created=NOW,
        expires=NOW + HOUR,
        incident="storm-2026",
        control=Control(incident_type="storm"),
    )
    header = read_envelope(activation.raw, region.directory).header
    incidents = {"storm-2026": opened_by(header, None)}
    return {"report": (report, {}), "activation": (activation, {"incidents": incidents})}


Edit = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = doc
        for part in parents:
            target = target[part]
        target[last] = value

    return edit


def _shift(name: str, delta: int) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        doc[name] += delta

    return edit


def _recipients(change: Callable[[list[str]], list[str]]) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        doc["recipients"] = sorted(set(change(list(doc["recipients"]))))

    return edit


OTHER_KEY = "ab" * 16
TAMPER_FIELDS: dict[str, list[Edit]] = {
    "label": [_set("label.classification", c) for c in ("OFFENTLIG", "INTERN", "KONFIDENTIELL")]
    + [_set("label.tlp", t.value) for t in (Tlp.CLEAR, Tlp.GREEN, Tlp.RED, Tlp.AMBER_STRICT)]
    + [_set("label.categories", ["taktik"]), _set("label.legal", None)]
    + [_set("label.policy", "annan")],
    "recipients": [
        _recipients(lambda r: [*r, "huddinge"]),
        _recipients(lambda r: r[1:]),
        _recipients(lambda r: [*r[1:], "solna"]),
        _recipients(lambda r: [*r, "zzz-okand"]),
    ],
    "sender": [_set("sender", s) for s in ("stockholm", "huddinge", "sos-alarm")],
    "id": [_set("id", "00" * 16), _set("id", "ff" * 16)],
    "times": [_shift("created", d) for d in (-60_000, -1, 1, 60_000)]
    + [_shift("expires", d) for d in (-60_000, -1, 1, HOUR)],
    "key_id": [_set("sender_key", OTHER_KEY)],  # and the relay's own key id, added below
    "incident": [_set("incident", i) for i in (None, "storm-2026", "annan-handelse")],
    "references": [
        _set("references", []),
        _set(
            "references",
            [{"kind": "forward", "message": "0c" * 16, "header_hash": "0d" * 32}],
        ),
        _set(
            "references",
            [{"kind": "reply", "message": "0e" * 16, "header_hash": "0b" * 32}],
        ),
    ],
    "type": [_set("type", t.value) for t in MessageType],
    "status": [_set("status", s.value) for s in Status],
    "priority": [_set("priority", p.value) for p in Priority],
    "control": [
        _set("control", {"mode": Mode.HEIGHTENED_ALERT.value, "incident_type": None}),
        _set("control", {"mode": None, "incident_type": "power-outage"}),
        _set("control", None),
    ],
}


def _tampered(
    region: DemoRegion, base: SealedEnvelope, edit: Edit
) -> tuple[bytes, bytes, bytes, set[str]] | None:
    """Edited header, matching wraps (sealing the real content key for the edited
    recipients, as a recipient who opened it could), ciphertext; None if a no-op."""
    header, wraps, ciphertext = split(base.raw).sections
    doc = json.loads(header)
    before = json.loads(header)
    edit(doc)
    if doc == before:
        return None
    if doc["recipients"] != before["recipients"]:
        sealed = []
        for recipient in doc["recipients"]:
            identity = region.identities.get(recipient) or region.identities["solna"]
            box = crypto.seal(base.content_key, identity.encryption.public, b"\x05" * 32)
            sealed.append(
                Wrap(recipient=recipient, key_id=identity.encryption.key_id, sealed=b64(box))
            )
        wraps = KeyWraps(wraps=tuple(sealed)).to_bytes()
    edited = canonical.dumps(doc)
    return edited, wraps, ciphertext, {*doc["recipients"], *before["recipients"]}


def test_tamper_matrix_is_refused_by_broker_or_every_recipient(region: DemoRegion) -> None:
    totals: dict[str, dict[str, int]] = {}
    for base, decide_kw in _bases(region).values():
        assert isinstance(decide_at(base.raw, region, **decide_kw), Accept)
        original = split(base.raw)
        for field, edits in TAMPER_FIELDS.items():
            own_key_ids = [_set("sender_key", region.identities[r].signing.key_id) for r in RELAYS]
            for edit in edits + (own_key_ids if field == "key_id" else []):
                tampered = _tampered(region, base, edit)
                if tampered is None:
                    continue
                *sections, recipients = tampered
                forgeries = {
                    "original_signature": reframe_keeping_signature(base.raw, tuple(sections)),
                }
                for relay in RELAYS:
                    ours = resign(region.identities[relay], tuple(sections))
                    forgeries[f"resigned_by_{relay}"] = ours
                    forgeries[f"resigned_by_{relay}_under_sender_key_id"] = reframe(
                        tuple(sections), signer_id=original.signer, signature=ours[-64:]
                    )
                for how, raw in forgeries.items():
                    mode = "original" if how == "original_signature" else "resigned"
                    counts = totals.setdefault(f"{field}.{mode}", {"refused": 0, "total": 0})
                    broker, recipients_refused = refused_everywhere(
                        raw, region, recipients, **decide_kw
                    )
                    counts["total"] += 1
                    counts["refused"] += broker and recipients_refused
    for name, counts in totals.items():
        record("7 tamper matrix", **{name: f"{counts['refused']}/{counts['total']}"})
    fields = {name.split(".")[0] for name in totals}
    assert fields == set(TAMPER_FIELDS)
    misses = {n: c for n, c in totals.items() if c["refused"] != c["total"]}
    assert not misses, misses
    total = sum(c["total"] for c in totals.values())
    record("7 tamper matrix", total=total, refused_pct=100.0)
    assert total >= 500


def test_tamper_fields_cover_the_signed_header() -> None:
    """Every header field the brief names is in the matrix (content_type and v are
    covered by tests/test_properties.py)."""
    edited = {
        "label",
        "recipients",
        "sender",
        "id",
        "created",
        "expires",
        "sender_key",
        "incident",
        "references",
        "type",
        "status",
        "priority",
        "control",
    }
    assert edited <= set(Header.model_fields)
    assert set(Header.model_fields) - edited <= {"content_type", "v"}


# --- 9: keys ----------------------------------------------------------------------------------


def test_poisoned_directory_versions_are_refused(region: DemoRegion) -> None:
    """An attacker's directory version giving nacka the attacker's signing key: signed by
    the attacker, by nacka's own actor key, by the broker, by an officer, or the real
    version's signature kept over the edited document — none verifies, neither as the
    next version nor as a first one pinned to the authority."""
    attacker = impostor("nacka", b"poisoner")
    record_ = KeyRecord.for_key(
        attacker.signing.public, not_before=NOW - HOUR, not_after=NOW + HOUR
    )
    actors = tuple(
        a.model_copy(update={"signing_keys": (record_,)}) if a.id == "nacka" else a
        for a in region.directory.document.actors
    )
    document = successor(region.directory, issued=NOW, actors=actors)
    genuine = sign_directory(document, region.authority)
    assert verify_directory(genuine, pinned=region.authority.public, previous=region.directory)
    body = split_directory(genuine)
    signers = {
        "attacker": attacker.signing,
        "actor": region.identities["nacka"].signing,
        "broker": region.broker.signing,
        "officer": region.officers["sakerhetschef-nacka"],
    }
    poisoned = {
        name: frames.encode(frames.Kind.DIRECTORY, key, (body,)) for name, key in signers.items()
    }
    current = frames.decode(
        region.directory.raw, frames.Kind.DIRECTORY, max_bytes=1 << 23, max_section=(1 << 23,)
    )
    poisoned["authority_signature_kept"] = reframe(
        (body,), signer_id=current.signer, signature=current.signature, kind=frames.Kind.DIRECTORY
    )
    tried = refused = 0
    for raw in poisoned.values():
        for previous in (region.directory, None):
            tried += 1
            try:
                verify_directory(raw, pinned=region.authority.public, previous=previous)
            except DirectoryError:
                refused += 1
    # Envelopes and receipts under the poisoned key, against the directory everyone holds.
    forged = build_as(region, attacker)
    env_refused = refused_everywhere(forged, region, set(DEFAULT_TO)) == (True, True)
    signed = read_envelope(build_as(region, region.identities["nacka"]), region.directory)
    receipt = make_receipt(
        impostor("sos-alarm", b"poisoner"), signed.header, signed.header_hash,
        ReceiptKind.DELIVERED, at=NOW,
    )  # fmt: skip
    with pytest.raises(ReceiptError):
        verify_receipt(receipt, region.directory, now=NOW)
    record(
        "9 keys: poisoned directory",
        versions_tried=tried,
        versions_refused=refused,
        envelope_under_poisoned_key_refused=int(env_refused),
        receipt_under_poisoned_key_refused=1,
    )
    assert refused == tried == 10
    assert env_refused


def split_directory(raw: bytes) -> bytes:
    return frames.decode(
        raw, frames.Kind.DIRECTORY, max_bytes=1 << 23, max_section=(1 << 23,)
    ).sections[0]


def test_a_revoked_key_is_refused_after_revocation(region: DemoRegion) -> None:
    """nacka's signing key revoked at R: envelopes created after R (and everything checked
    after R) are refused by broker and recipients, receipts signed by a revoked key too;
    before R the same key is accepted."""
    revoked_at = NOW + 10 * 60_000
    directory = edit_directory(region, {
        "nacka": signing_key_update(region, "nacka", revoked_at=revoked_at),
        "sos-alarm": signing_key_update(region, "sos-alarm", revoked_at=revoked_at),
    })  # fmt: skip
    policy = Policy()
    codes: set[str] = set()
    tried = refused = 0
    for created_after in (0, 1, 60_000, 5 * 60_000):
        created = revoked_at + created_after
        raw = build_as(region, region.identities["nacka"], created=created, expires=created + HOUR)
        for check_after in (0, 1, 30_000):
            now = created + check_after
            tried += 1
            decision = decide_at(raw, region, directory=directory, now=now)
            opened = 0
            for recipient in DEFAULT_TO:
                try:
                    open_as(raw, region, recipient, directory=directory, now=now, policy=policy)
                    opened += 1
                except OpenError as exc:
                    codes.add(exc.code)
            refused += isinstance(decision, Reject) and opened == 0
    # An envelope signed before R but checked after it: refused too (the recipient cannot
    # tell a backdated signature from an old one, DESIGN.md §4).
    before = build_as(region, region.identities["nacka"], created=revoked_at - 60_000)
    tried += 1
    refused += refused_everywhere(before, region, set(DEFAULT_TO), directory=directory,
                                  now=revoked_at + 1) == (True, True)  # fmt: skip
    # Receipts signed by the revoked key.
    signed = read_envelope(build_as(region, region.identities["nacka"]), region.directory)
    receipt_refused = 0
    for at in (revoked_at, revoked_at + 60_000):
        receipt = make_receipt(
            region.identities["sos-alarm"], signed.header, signed.header_hash,
            ReceiptKind.DELIVERED, at=at,
        )  # fmt: skip
        try:
            verify_receipt(receipt, directory, now=at)
        except ReceiptError as exc:
            receipt_refused += exc.code == "receipt_key_invalid"
    # Control: before revocation the key is good for broker and recipients.
    good = build_as(region, region.identities["nacka"], created=revoked_at - 60_000)
    accepted_before = isinstance(
        decide_at(good, region, directory=directory, now=revoked_at - 30_000), Accept
    )
    for recipient in DEFAULT_TO:
        open_as(good, region, recipient, directory=directory, now=revoked_at - 30_000)
    record(
        "9 keys: revoked key",
        envelopes_tried=tried,
        envelopes_refused=refused,
        receipts_tried=2,
        receipts_refused=receipt_refused,
        accepted_before_revocation=int(accepted_before),
    )
    assert refused == tried
    assert codes <= {"sender_key_revoked", "invalid"}
    assert receipt_refused == 2
    assert accepted_before


def test_clock_skew_beyond_the_leeway_is_refused_and_within_accepted(region: DemoRegion):
    rng = random.Random(9_009)
    beyond = [1, 2, 1000, 60_000, HOUR] + [rng.randint(1, 10 * SKEW) for _ in range(20)]
    within = [0, 1, SKEW // 2, SKEW - 1, SKEW] + [rng.randint(0, SKEW) for _ in range(20)]
    refused = accepted = 0
    for ahead in beyond:
        raw = build_as(region, region.identities["nacka"], created=NOW + SKEW + ahead,
                       expires=NOW + SKEW + ahead + HOUR)  # fmt: skip
        decision = decide_at(raw, region)
        codes = set()
        for recipient in DEFAULT_TO:
            with pytest.raises(OpenError) as caught:
                open_as(raw, region, recipient)
            codes.add(caught.value.code)
        refused += decision.reason.value == "not_yet_valid" and codes == {"not_yet_valid"}  # type: ignore[union-attr]
    for ahead in within:
        raw = build_as(region, region.identities["nacka"], created=NOW + ahead,
                       expires=NOW + ahead + HOUR)  # fmt: skip
        ok = isinstance(decide_at(raw, region), Accept)
        for recipient in DEFAULT_TO:
            open_as(raw, region, recipient)  # raises if refused
        accepted += ok
    # Expiry: the recipient allows the same leeway after ``expires``; the broker routes
    # nothing that has expired by its own clock (no leeway there, by design).
    late_refused = late_accepted = broker_late = 0
    then = NOW + 3 * HOUR  # the clock of the late checks (the demo keys start at NOW)
    for late in beyond:
        raw = build_as(region, region.identities["nacka"], expires=then - SKEW - late + 1)
        for recipient in DEFAULT_TO:
            with pytest.raises(OpenError) as caught:
                open_as(raw, region, recipient, now=then)
            assert caught.value.code == "expired"
        late_refused += 1
    for late in within:
        expires = then - late + 1
        raw = build_as(region, region.identities["nacka"], expires=expires)
        for recipient in DEFAULT_TO:
            open_as(raw, region, recipient, now=then)
        late_accepted += 1
        broker_late += isinstance(decide_at(raw, region, now=then), Reject) or expires > then
    record(
        "9 keys: clock skew",
        leeway_ms=SKEW,
        created_beyond_tried=len(beyond),
        created_beyond_refused=refused,
        created_within_tried=len(within),
        created_within_accepted=accepted,
        expired_beyond_refused_by_recipient=f"{late_refused}/{len(beyond)}",
        expired_within_accepted_by_recipient=f"{late_accepted}/{len(within)}",
    )
    assert refused == len(beyond)
    assert accepted == len(within)
    assert broker_late == len(within)


# --- 10: surreptitious forwarding and receipt forgery ----------------------------------------


def test_surreptitious_forwarding_is_refused(region: DemoRegion) -> None:
    """Every recipient of nacka's envelope re-addresses it to five seeded outsiders in
    every way of ``tests/test_properties.py`` (exhaustively here) and hands over the
    unchanged bytes: never accepted as nacka's message to the outsider."""
    sample = build_as(region, region.identities["nacka"])
    rng = random.Random(9_010)
    outsiders = sorted(
        a for a in region.identities
        if a not in DEFAULT_TO and a not in {"nacka", "stockholms-hamnar"}
    )  # fmt: skip
    tried = refused = 0
    for b in DEFAULT_TO:
        for c in rng.sample(outsiders, 5):
            for how in (*FORWARD_STRATEGIES, "unchanged-bytes"):
                if how == "honest-resend":
                    continue  # b's own message, with b as its sender: allowed
                tried += 1
                if how == "unchanged-bytes":
                    with pytest.raises(OpenError) as caught:
                        open_as(sample, region, c)
                    refused += caught.value.code == "not_addressed"
                    continue
                forged = _readdress(region, sample, b, c, how)
                refused += refused_everywhere(forged, region, {c}) == (True, True)
    # An honest re-send never claims nacka: it is b's.
    honest = _readdress(region, sample, "sos-alarm", "huddinge", "honest-resend")
    assert open_as(honest, region, "huddinge").header.sender == "sos-alarm"
    record("10 surreptitious forwarding", tried=tried, refused=refused)
    assert refused == tried == 3 * 5 * len(FORWARD_STRATEGIES)


def router_accepts_receipt(raw: bytes, subject_actor: str, region: DemoRegion,
                           header: Header, header_hash: str) -> bool:  # fmt: skip
    """The broker router's receipt checks (``broker/router.py`` ``_receipt``)."""
    try:
        receipt = verify_receipt(raw, region.directory, now=NOW)
        if receipt.body.recipient != subject_actor:
            return False
        check_receipt_matches(receipt, header, header_hash)
    except ReceiptError:
        return False
    return True


def _receipt_doc(raw: bytes) -> dict[str, Any]:
    decoded = frames.decode(raw, frames.Kind.RECEIPT, max_bytes=1 << 14, max_section=(1 << 14,))
    return json.loads(decoded.sections[0])


def test_receipt_forgery_is_refused(region: DemoRegion) -> None:
    nacka = region.identities["nacka"]
    first = read_envelope(build_as(region, nacka), region.directory)
    second = read_envelope(build_as(region, nacka, to=("huddinge", "solna")), region.directory)
    genuine = {
        r: make_receipt(region.identities[r], first.header, first.header_hash, kind, at=NOW)
        for r in DEFAULT_TO
        for kind in (ReceiptKind.DELIVERED,)
    }
    for r, raw in genuine.items():
        assert router_accepts_receipt(raw, r, region, first.header, first.header_hash)

    def signed_as(who: Identity | Any, doc: dict[str, Any]) -> bytes:
        return resign(who, (canonical.dumps(doc),), frames.Kind.RECEIPT)

    forgeries: dict[str, list[tuple[bytes, str, Header, str]]] = {}

    def add(name: str, raw: bytes, subject: str, header: Header = first.header,
            hh: str = first.header_hash) -> None:  # fmt: skip
        forgeries.setdefault(name, []).append((raw, subject, header, hh))

    outsiders = ("huddinge", "solna", "stockholms-hamnar", "trafikverket")
    kinds = [k.value for k in ReceiptKind]
    for r, raw in genuine.items():
        doc = _receipt_doc(raw)
        original = frames.decode(raw, frames.Kind.RECEIPT, max_bytes=1 << 14,
                                 max_section=(1 << 14,))  # fmt: skip
        me = region.identities[r]
        # Moved to another message: the same receipt shown for the second message.
        add("moved_to_other_message", raw, r, second.header, second.header_hash)
        # Re-signed by the recipient naming the other message (id only, id and hash).
        add("resigned_other_message_id", signed_as(me, {**doc, "message": second.header.id}), r)
        add("resigned_other_message", signed_as(me, {**doc, "message": second.header.id,
            "header_hash": second.header_hash, "sender": "nacka"}), r,
            second.header, second.header_hash)  # fmt: skip
        # Edited under the original signature: recipient, kind, message, hash, time.
        for field, value in (("recipient", outsiders[0]), ("message", second.header.id),
                             ("header_hash", second.header_hash), ("at", NOW + 1),
                             *(("kind", k) for k in kinds if k != doc["kind"])):  # fmt: skip
            edited = canonical.dumps({**doc, field: value})
            add(f"edited_{field}_signature_kept", reframe(
                (edited,), signer_id=original.signer, signature=original.signature,
                kind=frames.Kind.RECEIPT), r if field != "recipient" else value)  # fmt: skip
        # Moved to another recipient: the genuine receipt submitted on another's subject.
        for other in DEFAULT_TO:
            if other != r:
                add("moved_to_other_recipient_subject", raw, other)
        for outsider in outsiders:
            o = region.identities[outsider]
            # An outsider claims to be r: signs r's body with its own key.
            add("outsider_claims_recipient", signed_as(o, doc), r)
            add("outsider_claims_recipient", signed_as(o, doc), outsider)
            # An outsider signs a receipt in its own name for a message not sent to it.
            own = signed_as(o, {**doc, "recipient": outsider, "signer_key": o.signing.key_id})
            add("outsider_own_receipt", own, outsider)
            # An impostor key (never in the directory) in r's name.
            fake = make_receipt(impostor(r, outsider.encode()), first.header, first.header_hash,
                                ReceiptKind.DELIVERED, at=NOW)  # fmt: skip
            add("impostor_key", fake, r)
        # The sender, the broker, the authority and an officer signing r's receipt.
        for name, key in (("sender", nacka.signing), ("broker", region.broker.signing),
                          ("authority", region.authority),
                          ("officer", region.officers["sakerhetschef-nacka"])):  # fmt: skip
            add(f"signed_by_{name}", signed_as(key, {**doc, "signer_key": key.key_id}), r)
            add(f"signed_by_{name}", signed_as(key, doc), r)
    figures: dict[str, str] = {}
    total = refused = 0
    for name, cases in forgeries.items():
        ok = sum(not router_accepts_receipt(raw, s, region, h, hh) for raw, s, h, hh in cases)
        figures[name] = f"{ok}/{len(cases)}"
        total += len(cases)
        refused += ok
    record("10 receipt forgery", tried=total, refused=refused, **figures)
    assert refused == total
    assert total >= 100
