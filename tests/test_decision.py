"""The broker's decision: every Reason code is reachable and named exactly, Accept is right.

``SCENARIOS`` maps each :class:`Reason` to a builder of one envelope and its
decision context; ``test_every_reason`` runs them all and a guard test keeps
the table complete when a new reason is added. The tests after it cover
variants, boundaries and the accepted paths.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from broker.core import (
    Accept,
    ActorStatus,
    Control,
    Identity,
    Incident,
    IncidentType,
    KeyRecord,
    Label,
    MessageType,
    Mode,
    Policy,
    PressStage,
    Priority,
    Reason,
    ReceiptKind,
    RecipientKey,
    Reference,
    ReferenceKind,
    Reject,
    Status,
    Tlp,
    VerifiedDirectory,
    canonical,
    load_policy,
    make_receipt,
    read_envelope,
)
from broker.core.crypto import seeded_random
from broker.core.decision import ForwardOrigin
from broker.core.envelope import KeyWraps, header_hash
from broker.core.incidents import closed_by, opened_by
from broker.core.limits import MAX_HEADER_BYTES
from broker.core.policy import Limits
from broker.demo import MUNICIPALITIES, DemoRegion

from .conftest import HOUR, NOW
from .envelope_helpers import (
    DEFAULT_TO,
    build_as,
    decide_at,
    edit_directory,
    encryption_key_update,
    header_of,
    impostor,
    origin_of,
    recipient_keys,
    reframe,
    resign,
    signing_key_update,
    split,
    wraps_of,
)

MINUTE = 60_000
SKEW = 120_000  # the default policy's clock leeway


def sekretess(tlp: Tlp = Tlp.AMBER, *categories: str, policy: str = "ssr") -> Label:
    return Label(policy=policy, classification="SEKRETESS", tlp=tlp, categories=categories)


@dataclass
class Case:
    """One envelope and the context to decide it in, plus what the Reject must name."""

    raw: bytes
    context: dict[str, Any] = field(default_factory=dict)
    recipients: tuple[str, ...] = ()
    verified: bool = True  # passed read_envelope: the Reject names message id and sender


Builder = Callable[[DemoRegion, Callable[..., bytes]], Case]
SCENARIOS: dict[Reason, Builder] = {}


def scenario(reason: Reason) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        assert reason not in SCENARIOS
        SCENARIOS[reason] = builder
        return builder

    return register


# --- frame and signature ---------------------------------------------------------


@scenario(Reason.TOO_LARGE)
def _too_large(region, make_envelope):
    policy = Policy(limits=Limits(max_envelope_bytes=1024))
    return Case(make_envelope(payload=b"x" * 1024), {"policy": policy}, verified=False)


@scenario(Reason.UNSUPPORTED_VERSION)
def _unsupported_version(region, make_envelope):
    raw = bytearray(make_envelope())
    raw[3] = 2  # the frame format version byte
    return Case(bytes(raw), verified=False)


@scenario(Reason.MALFORMED)
def _malformed(region, make_envelope):
    # Correctly signed by nacka's real key, but the header is not a header.
    sections = split(make_envelope()).sections
    raw = resign(region.identities["nacka"], (b'{"v":1}', *sections[1:]))
    return Case(raw, verified=False)


@scenario(Reason.UNKNOWN_SENDER_KEY)
def _unknown_sender_key(region, make_envelope):
    return Case(build_as(region, impostor("nacka")), verified=False)


@scenario(Reason.BAD_SIGNATURE)
def _bad_signature(region, make_envelope):
    raw = bytearray(make_envelope())
    raw[-1] ^= 0x01
    return Case(bytes(raw), verified=False)


@scenario(Reason.SENDER_MISMATCH)
def _sender_mismatch(region, make_envelope):
    # Stockholm signs an envelope whose header says nacka sent it.
    raw = resign(region.identities["stockholm"], split(make_envelope()).sections)
    return Case(raw, verified=False)


@scenario(Reason.WRAPS_MISMATCH)
def _wraps_mismatch(region, make_envelope):
    raw = make_envelope()
    header, _, ciphertext = split(raw).sections
    fewer = KeyWraps(wraps=wraps_of(raw).wraps[:2]).to_bytes()
    raw = resign(region.identities["nacka"], (header, fewer, ciphertext))
    return Case(raw, verified=False)


# --- sender, key, times ----------------------------------------------------------


@scenario(Reason.SENDER_INACTIVE)
def _sender_inactive(region, make_envelope):
    directory = edit_directory(region, {"nacka": {"status": ActorStatus.SUSPENDED}})
    return Case(make_envelope(), {"directory": directory})


@scenario(Reason.SENDER_KEY_REVOKED)
def _sender_key_revoked(region, make_envelope):
    directory = edit_directory(
        region, {"nacka": signing_key_update(region, "nacka", revoked_at=NOW + MINUTE)}
    )
    return Case(make_envelope(), {"directory": directory, "now": NOW + 2 * MINUTE})


@scenario(Reason.SENDER_KEY_EXPIRED)
def _sender_key_expired(region, make_envelope):
    directory = edit_directory(
        region, {"nacka": signing_key_update(region, "nacka", not_after=NOW + 30 * MINUTE)}
    )
    return Case(make_envelope(), {"directory": directory, "now": NOW + 31 * MINUTE})


@scenario(Reason.NOT_YET_VALID)
def _not_yet_valid(region, make_envelope):
    return Case(make_envelope(created=NOW + SKEW + 1, expires=NOW + HOUR))


@scenario(Reason.EXPIRED)
def _expired(region, make_envelope):
    return Case(make_envelope(), {"now": NOW + HOUR})


@scenario(Reason.LIFETIME_TOO_LONG)
def _lifetime_too_long(region, make_envelope):
    return Case(make_envelope(expires=NOW + 30 * 24 * HOUR + 1))


@scenario(Reason.REPLAY)
def _replay(region, make_envelope):
    message_id = "ab" * 16
    return Case(make_envelope(message_id=message_id), {"seen": {message_id}})


@scenario(Reason.TOO_MANY_RECIPIENTS)
def _too_many_recipients(region, make_envelope):
    return Case(make_envelope(), {"policy": Policy(limits=Limits(max_recipients=2))})


# --- label and rights ------------------------------------------------------------


@scenario(Reason.LABEL_INVALID)
def _label_invalid(region, make_envelope):
    return Case(make_envelope(label=sekretess(policy="annan-policy")))


@scenario(Reason.ABOVE_CEILING)
def _above_ceiling(region, make_envelope):
    hemlig = Label(policy="ssr", classification="HEMLIG", tlp=Tlp.RED)
    return Case(make_envelope(sender="forsvarsmakten-mmr", label=hemlig))


@scenario(Reason.ABOVE_SENDER_CLEARANCE)
def _above_sender_clearance(region, make_envelope):
    return Case(make_envelope(sender="stockholms-hamnar", label=sekretess()))


@scenario(Reason.TYPE_NOT_ALLOWED)
def _type_not_allowed(region, make_envelope):
    return Case(make_envelope(message_type=MessageType.MODE_CHANGE))


NEW_INCIDENT = {"incident": "storm-2026", "control": Control(incident_type="storm")}


@scenario(Reason.REGION_WIDE_NOT_ALLOWED)
def _region_wide_not_allowed(region, make_envelope):
    to = MUNICIPALITIES[:10]
    raw = make_envelope(
        sender="polisen-stockholm", to=to, message_type=MessageType.ACTIVATION, **NEW_INCIDENT
    )
    return Case(raw)


HEIGHTENED_POLICY = """
[modes.heightened_alert.required_recipients]
situation_report = ["lansstyrelsen-stockholm"]
"""


@scenario(Reason.REQUIRED_RECIPIENT_MISSING)
def _required_recipient_missing(region, make_envelope):
    context = {"policy": load_policy(HEIGHTENED_POLICY), "mode": Mode.HEIGHTENED_ALERT}
    return Case(make_envelope(), context, recipients=("lansstyrelsen-stockholm",))


# --- control fields and incidents -------------------------------------------------

INCIDENT = "storm-2026"
PARTICIPANTS = ("nacka", "polisen-stockholm", "sos-alarm", "stockholm")


def storm(
    make_envelope, *, status: Status = Status.ACTUAL, closed: int | None = None
) -> dict[str, Incident]:
    """The incident polisen-stockholm opened by activating nacka, sos-alarm and stockholm,
    as the broker records it after accepting the activation."""
    activation = make_envelope(
        sender="polisen-stockholm",
        to=("nacka", "sos-alarm", "stockholm"),
        message_type=MessageType.ACTIVATION,
        status=status,
        **NEW_INCIDENT,
    )
    incident = opened_by(header_of(activation), None)
    assert incident.participants == PARTICIPANTS
    if closed is not None:
        incident = closed_by(incident, closed)
    return {INCIDENT: incident}


@scenario(Reason.CONTROL_INVALID)
def _control_invalid(region, make_envelope):
    # A situation report carries no control fields: the broker would act on none of them.
    return Case(make_envelope(control=Control(mode=Mode.ACTIVATED)))


@scenario(Reason.INCIDENT_UNKNOWN)
def _incident_unknown(region, make_envelope):
    return Case(make_envelope(incident=INCIDENT), {"incidents": {}})


@scenario(Reason.INCIDENT_CLOSED)
def _incident_closed(region, make_envelope):
    incidents = storm(make_envelope, closed=NOW - MINUTE)
    return Case(make_envelope(incident=INCIDENT), {"incidents": incidents})


@scenario(Reason.INCIDENT_OWNER_ONLY)
def _incident_owner_only(region, make_envelope):
    # stockholm may close incidents (role activator) and takes part, but does not own it.
    raw = make_envelope(
        sender="stockholm",
        to=("polisen-stockholm",),
        message_type=MessageType.INCIDENT_CLOSE,
        incident=INCIDENT,
    )
    return Case(raw, {"incidents": storm(make_envelope)})


@scenario(Reason.INCIDENT_STATUS_MISMATCH)
def _incident_status_mismatch(region, make_envelope):
    # An exercise incident: actual traffic must not mix into it.
    incidents = storm(make_envelope, status=Status.EXERCISE)
    return Case(make_envelope(incident=INCIDENT), {"incidents": incidents})


@scenario(Reason.NOT_INCIDENT_PARTICIPANT)
def _not_incident_participant(region, make_envelope):
    raw = make_envelope(to=("huddinge", "sos-alarm", "stockholm"), incident=INCIDENT)
    return Case(raw, {"incidents": storm(make_envelope)}, recipients=("huddinge",))


CATALOGUE = Policy(incident_types={"storm": IncidentType(name="Storm")})
PUBLIC = Label(policy="ssr", classification="OFFENTLIG", tlp=Tlp.CLEAR)


@scenario(Reason.INCIDENT_TYPE_UNKNOWN)
def _incident_type_unknown(region, make_envelope):
    raw = make_envelope(
        sender="polisen-stockholm",
        to=("nacka",),
        message_type=MessageType.ACTIVATION,
        incident="vulkan-2026",
        control=Control(incident_type="volcano"),
    )
    return Case(raw, {"policy": CATALOGUE})


@scenario(Reason.PRESS_LINE_UNAPPROVED)
def _press_line_unapproved(region, make_envelope):
    # A press line marked public before the communication lead approved it.
    raw = make_envelope(message_type=MessageType.COMMUNICATION, label=PUBLIC)
    return Case(raw)


@scenario(Reason.PRESS_APPROVAL_NOT_LEAD)
def _press_approval_not_lead(region, make_envelope):
    raw = make_envelope(
        message_type=MessageType.COMMUNICATION,
        incident=INCIDENT,
        label=PUBLIC,
        control=Control(press=PressStage.APPROVED),
    )
    return Case(raw, {"incidents": storm(make_envelope)})


@scenario(Reason.PRESS_DRAFT_UNKNOWN)
def _press_draft_unknown(region, make_envelope):
    raw = make_envelope(
        sender="polisen-stockholm",
        to=("nacka", "sos-alarm", "stockholm"),
        message_type=MessageType.COMMUNICATION,
        incident=INCIDENT,
        label=PUBLIC,
        control=Control(press=PressStage.APPROVED),
    )
    return Case(raw, {"incidents": storm(make_envelope)})


# --- recipients ------------------------------------------------------------------


@scenario(Reason.RECIPIENT_UNKNOWN)
def _recipient_unknown(region, make_envelope):
    ghost = impostor("okand-aktor")
    keys = [
        *recipient_keys(region.directory, ["sos-alarm"]),
        RecipientKey("okand-aktor", ghost.encryption.key_id, ghost.encryption.public),
    ]
    return Case(make_envelope(recipients=keys), recipients=("okand-aktor",))


@scenario(Reason.RECIPIENT_INACTIVE)
def _recipient_inactive(region, make_envelope):
    directory = edit_directory(region, {"sos-alarm": {"status": ActorStatus.RETIRED}})
    return Case(make_envelope(), {"directory": directory}, recipients=("sos-alarm",))


def rotated_sos_alarm(region, *, old_until: int) -> VerifiedDirectory:
    """sos-alarm gets a new encryption key from NOW + 1; the old one ends at ``old_until``."""
    old = region.directory.actor("sos-alarm").encryption_keys[0]
    new_key = Identity.generate("sos-alarm", seeded_random(b"rotated")).encryption.public
    new = KeyRecord.for_key(new_key, not_before=NOW + 1, not_after=old.not_after)
    retired = old.model_copy(update={"not_after": old_until})
    return edit_directory(region, {"sos-alarm": {"encryption_keys": (retired, new)}})


@scenario(Reason.RECIPIENT_KEY_INVALID)
def _recipient_key_invalid(region, make_envelope):
    # sos-alarm rotated its encryption key and the old one has ended; the envelope still
    # wraps for the old one.
    directory = rotated_sos_alarm(region, old_until=NOW + MINUTE)
    return Case(
        make_envelope(),
        {"directory": directory, "now": NOW + 2 * MINUTE},
        recipients=("sos-alarm",),
    )


@scenario(Reason.RECIPIENT_NOT_CLEARED)
def _recipient_not_cleared(region, make_envelope):
    raw = make_envelope(to=("sos-alarm", "stockholms-hamnar"))
    return Case(raw, recipients=("stockholms-hamnar",))


@scenario(Reason.RECIPIENT_LACKS_CATEGORY)
def _recipient_lacks_category(region, make_envelope):
    raw = make_envelope(
        sender="polisen-stockholm",
        to=("sos-alarm", "stockholm", "trafikverket"),
        label=sekretess(Tlp.AMBER, "taktik"),
    )
    return Case(raw, recipients=("stockholm", "trafikverket"))


# --- forwards --------------------------------------------------------------------


def original(make_envelope, label: Label) -> bytes:
    """nacka's original message to polisen-stockholm and sos-alarm."""
    return make_envelope(to=("polisen-stockholm", "sos-alarm"), label=label)


def forward(
    make_envelope,
    of: bytes,
    *,
    to: tuple[str, ...],
    label: Label,
    sender: str = "polisen-stockholm",
    reference: Reference | None = None,
) -> bytes:
    """``sender`` forwards ``of`` to ``to``, pointing at it by id and header hash."""
    if reference is None:
        signed_header = split(of).sections[0]
        reference = Reference(
            kind=ReferenceKind.FORWARD,
            message=header_of(of).id,
            header_hash=header_hash(signed_header).hex(),
        )
    return make_envelope(sender=sender, to=to, label=label, references=(reference,))


@scenario(Reason.FORWARD_ORIGIN_UNKNOWN)
def _forward_origin_unknown(region, make_envelope):
    first = original(make_envelope, sekretess(Tlp.GREEN))
    raw = forward(make_envelope, first, to=("huddinge",), label=sekretess(Tlp.GREEN))
    return Case(raw, {"origin": None})


@scenario(Reason.TLP_FORWARD_FORBIDDEN)
def _tlp_forward_forbidden(region, make_envelope):
    first = original(make_envelope, sekretess(Tlp.RED))
    raw = forward(make_envelope, first, to=("huddinge", "sos-alarm"), label=sekretess(Tlp.RED))
    return Case(raw, {"origin": origin_of(first, region)}, recipients=("huddinge",))


@scenario(Reason.TLP_AMBER_UNAPPROVED)
def _tlp_amber_unapproved(region, make_envelope):
    first = original(make_envelope, sekretess(Tlp.AMBER))
    raw = forward(make_envelope, first, to=("huddinge", "solna"), label=sekretess(Tlp.AMBER))
    origin = origin_of(first, region, approved={"huddinge"})
    return Case(raw, {"origin": origin}, recipients=("solna",))


@scenario(Reason.FORWARD_LABEL_LOWERED)
def _forward_label_lowered(region, make_envelope):
    first = original(make_envelope, sekretess(Tlp.AMBER))
    raw = forward(make_envelope, first, to=("sos-alarm",), label=sekretess(Tlp.GREEN))
    return Case(raw, {"origin": origin_of(first, region)})


# --- the table, run --------------------------------------------------------------


# Reasons the router gives around decide(), never decide() itself (tested with the broker).
ROUTER_REASONS = {Reason.RATE_LIMITED}


def test_every_reason_has_a_scenario():
    assert set(SCENARIOS) == set(Reason) - ROUTER_REASONS


@pytest.mark.parametrize("reason", [r for r in Reason if r not in ROUTER_REASONS], ids=str)
def test_every_reason(reason, region, make_envelope):
    case = SCENARIOS[reason](region, make_envelope)
    decision = decide_at(case.raw, region, **case.context)
    assert isinstance(decision, Reject), decision
    assert decision.reason is reason, decision.detail
    assert decision.recipients == case.recipients
    if case.verified:
        header = header_of(case.raw)
        assert (decision.message_id, decision.sender) == (header.id, header.sender)
    else:
        assert (decision.message_id, decision.sender) == (None, None)
    assert decision.detail


@pytest.mark.parametrize(
    "reason",
    [
        Reason.TOO_LARGE,
        Reason.SENDER_INACTIVE,
        Reason.SENDER_KEY_REVOKED,
        Reason.SENDER_KEY_EXPIRED,
        Reason.EXPIRED,
        Reason.REPLAY,
        Reason.TOO_MANY_RECIPIENTS,
        Reason.REQUIRED_RECIPIENT_MISSING,
        Reason.RECIPIENT_INACTIVE,
        Reason.RECIPIENT_KEY_INVALID,
        Reason.INCIDENT_TYPE_UNKNOWN,
    ],
    ids=str,
)
def test_the_same_envelope_is_accepted_without_the_fault(reason, region, make_envelope):
    """Where the fault is in the context (directory, clock, policy, seen ids), the very
    same envelope passes in the default context: the refusal comes from that fault."""
    case = SCENARIOS[reason](region, make_envelope)
    assert isinstance(decide_at(case.raw, region), Accept)


# --- frame and signature variants ------------------------------------------------


def test_a_section_above_its_bound_is_too_large(region, make_envelope):
    _, wraps, ciphertext = split(make_envelope()).sections
    raw = resign(region.identities["nacka"], (b" " * (MAX_HEADER_BYTES + 1), wraps, ciphertext))
    decision = decide_at(raw, region)
    assert isinstance(decision, Reject)
    assert decision.reason is Reason.TOO_LARGE


def test_size_bound_is_inclusive(region, make_envelope):
    raw = make_envelope(payload=b"x" * 100)
    exact = Policy(limits=Limits(max_envelope_bytes=len(raw)))
    assert isinstance(decide_at(raw, region, policy=exact), Accept)
    below = Policy(limits=Limits(max_envelope_bytes=len(raw) - 1))
    assert decide_at(raw, region, policy=below).reason is Reason.TOO_LARGE


def _nacka_signed(region, make_envelope, edit):
    sections = list(split(make_envelope()).sections)
    edit(sections)
    return resign(region.identities["nacka"], tuple(sections))


def _short_ciphertext(sections):
    sections[2] = sections[2][:39]


def _non_canonical_header(sections):
    sections[0] = sections[0].replace(b'"v":1', b'"v": 1')


def _wraps_not_json(sections):
    sections[1] = b"\xff\xfe"


def _header_with_extra_field(sections):
    sections[0] = sections[0][:-1] + b',"x":1}'


def _two_forwards(sections):
    doc = json.loads(sections[0])
    doc["references"] = [
        {"header_hash": f"{i:064x}", "kind": "forward", "message": f"{i:032x}"} for i in (1, 2)
    ]
    sections[0] = canonical.dumps(doc)


def _sealed_not_80_bytes(sections):
    doc = json.loads(sections[1])
    doc["wraps"][0]["sealed"] = "A" * 108  # 81 bytes of base64: not a sealed content key
    sections[1] = canonical.dumps(doc)


def _sealed_not_base64(sections):
    doc = json.loads(sections[1])
    doc["wraps"][0]["sealed"] = "!" * 108
    sections[1] = canonical.dumps(doc)


MALFORMED_EDITS = {
    "wrap-sealed-not-80-bytes": _sealed_not_80_bytes,
    "wrap-sealed-not-base64": _sealed_not_base64,
    "header-forwards-two-messages": _two_forwards,
    "ciphertext-shorter-than-nonce-and-tag": _short_ciphertext,
    "header-not-canonical": _non_canonical_header,
    "wraps-not-utf8-json": _wraps_not_json,
    "header-unknown-field": _header_with_extra_field,
}


@pytest.mark.parametrize("edit", MALFORMED_EDITS.values(), ids=MALFORMED_EDITS.keys())
def test_signed_but_malformed_sections(edit, region, make_envelope):
    decision = decide_at(_nacka_signed(region, make_envelope, edit), region)
    assert isinstance(decision, Reject)
    assert decision.reason is Reason.MALFORMED
    assert decision.message_id is None


def _truncate(raw):
    return raw[:40]


def _bad_magic(raw):
    return b"XSR" + raw[3:]


def _trailing(raw):
    return raw + b"\x00"


def _empty(raw):
    return b""


def _receipt_kind(raw):
    return raw[:4] + b"R" + raw[5:]


def _section_count(raw):
    return raw[:21] + b"\x02" + raw[22:]


FRAME_DAMAGE = {
    "truncated": _truncate,
    "bad-magic": _bad_magic,
    "trailing-byte": _trailing,
    "empty": _empty,
    "receipt-kind-byte": _receipt_kind,
    "two-sections": _section_count,
}


@pytest.mark.parametrize("damage", FRAME_DAMAGE.values(), ids=FRAME_DAMAGE.keys())
def test_broken_frames_are_malformed(damage, region, make_envelope):
    decision = decide_at(damage(make_envelope()), region)
    assert isinstance(decision, Reject)
    assert decision.reason is Reason.MALFORMED


def test_a_receipt_frame_is_not_an_envelope(region, make_envelope):
    raw = make_envelope()
    receipt = make_receipt(
        region.identities["sos-alarm"],
        header_of(raw),
        "00" * 32,
        ReceiptKind.DELIVERED,
        at=NOW,
    )
    decision = decide_at(receipt, region)
    assert isinstance(decision, Reject)
    assert decision.reason is Reason.MALFORMED


def test_an_officer_key_cannot_send_envelopes(region, make_envelope):
    officer = region.officers["sakerhetschef-nacka"]
    raw = build_as(region, Identity("nacka", officer, region.identities["nacka"].encryption))
    decision = decide_at(raw, region)
    assert isinstance(decision, Reject)
    assert decision.reason is Reason.UNKNOWN_SENDER_KEY


def test_a_flipped_signer_id_names_an_unknown_key(region, make_envelope):
    raw = bytearray(make_envelope())
    raw[5] ^= 0x01  # first byte of the signer key id
    decision = decide_at(bytes(raw), region)
    assert isinstance(decision, Reject)
    assert decision.reason is Reason.UNKNOWN_SENDER_KEY


def test_another_actors_signature_under_the_senders_key_id(region, make_envelope):
    """Claiming nacka's key id but signing with stockholm's key is a bad signature."""
    raw = make_envelope()
    original = split(raw)
    forged = resign(region.identities["stockholm"], original.sections)
    reframed = reframe(original.sections, signer_id=original.signer, signature=forged[-64:])
    decision = decide_at(reframed, region)
    assert isinstance(decision, Reject)
    assert decision.reason is Reason.BAD_SIGNATURE


def test_header_naming_another_sender_key_is_sender_mismatch(region, make_envelope):
    raw = make_envelope()
    _, wraps, ciphertext = split(raw).sections
    header = header_of(raw).model_copy(
        update={"sender_key": region.identities["stockholm"].signing.key_id}
    )
    forged = resign(region.identities["nacka"], (header.to_bytes(), wraps, ciphertext))
    decision = decide_at(forged, region)
    assert isinstance(decision, Reject)
    assert decision.reason is Reason.SENDER_MISMATCH


def test_wraps_in_another_order_are_a_mismatch(region, make_envelope):
    raw = make_envelope()
    header, _, ciphertext = split(raw).sections
    reversed_wraps = KeyWraps(wraps=tuple(reversed(wraps_of(raw).wraps))).to_bytes()
    forged = resign(region.identities["nacka"], (header, reversed_wraps, ciphertext))
    decision = decide_at(forged, region)
    assert isinstance(decision, Reject)
    assert decision.reason is Reason.WRAPS_MISMATCH


# --- sender and time variants ----------------------------------------------------


def test_key_revoked_before_creation_is_revoked(region, make_envelope):
    directory = edit_directory(
        region, {"nacka": signing_key_update(region, "nacka", revoked_at=NOW)}
    )
    decision = decide_at(make_envelope(), region, directory=directory)
    assert isinstance(decision, Reject)
    assert decision.reason is Reason.SENDER_KEY_REVOKED


def test_key_not_yet_valid_at_creation_is_expired(region, make_envelope):
    directory = edit_directory(
        region, {"nacka": signing_key_update(region, "nacka", not_before=NOW + MINUTE)}
    )
    decision = decide_at(make_envelope(), region, directory=directory, now=NOW + 2 * MINUTE)
    assert isinstance(decision, Reject)
    assert decision.reason is Reason.SENDER_KEY_EXPIRED


def test_suspended_sender_is_refused_even_with_a_valid_key(region, make_envelope):
    directory = edit_directory(region, {"nacka": {"status": ActorStatus.SUSPENDED}})
    decision = decide_at(make_envelope(), region, directory=directory)
    assert decision.reason is Reason.SENDER_INACTIVE
    assert decision.sender == "nacka"


@pytest.mark.parametrize(
    ("created", "now", "accepted"),
    [
        (NOW + SKEW, NOW, True),  # exactly at the leeway
        (NOW + SKEW + 1, NOW, False),
        (NOW, NOW + HOUR - 1, True),  # one millisecond before expiry
        (NOW, NOW + HOUR, False),
    ],
)
def test_time_boundaries(created, now, accepted, region, make_envelope):
    raw = make_envelope(created=created, expires=NOW + HOUR)
    assert isinstance(decide_at(raw, region, now=now), Accept) is accepted


def test_lifetime_boundary(region, make_envelope):
    exactly = make_envelope(expires=NOW + 30 * 24 * HOUR)
    assert isinstance(decide_at(exactly, region), Accept)


def test_replay_needs_the_same_id(region, make_envelope):
    raw = make_envelope(message_id="cd" * 16)
    assert isinstance(decide_at(raw, region, seen={"ab" * 16}), Accept)
    assert decide_at(raw, region, seen={"cd" * 16}).reason is Reason.REPLAY


def test_recipient_count_bound_is_inclusive(region, make_envelope):
    raw = make_envelope()
    assert isinstance(
        decide_at(raw, region, policy=Policy(limits=Limits(max_recipients=3))), Accept
    )


# --- label and rights variants ---------------------------------------------------


def test_above_ceiling_even_when_the_sender_is_cleared(region, make_envelope):
    label = Label(policy="ssr", classification="HEMLIG", tlp=Tlp.AMBER)
    raw = make_envelope(sender="forsvarsmakten-mmr", to=("forsvarsmakten-mmr",), label=label)
    assert decide_at(raw, region).reason is Reason.ABOVE_CEILING
    raised = Policy(ceiling="HEMLIG")
    assert isinstance(decide_at(raw, region, policy=raised), Accept)


def test_label_level_not_on_the_ladder_is_invalid(region, make_envelope):
    label = Label(policy="ssr", classification="TOPPHEMLIG", tlp=Tlp.RED)
    assert decide_at(make_envelope(label=label), region).reason is Reason.LABEL_INVALID


def test_sender_lacking_a_category_is_above_its_clearance(region, make_envelope):
    raw = make_envelope(to=("sos-alarm",), label=sekretess(Tlp.AMBER, "taktik"))
    decision = decide_at(raw, region)
    assert decision.reason is Reason.ABOVE_SENDER_CLEARANCE
    assert decision.recipients == ()


def test_sender_at_its_own_clearance_is_allowed(region, make_envelope):
    intern = Label(policy="ssr", classification="INTERN", tlp=Tlp.GREEN)
    raw = make_envelope(sender="stockholms-hamnar", label=intern)
    assert isinstance(decide_at(raw, region), Accept)


STOCKHOLMS_INCIDENT = {
    "vatten-2026": Incident(
        id="vatten-2026",
        type="water-supply",
        owner="stockholm",
        label=sekretess(),
        status=Status.ACTUAL,
        participants=("sos-alarm", "stockholm"),
        opened=NOW - HOUR,
    )
}
NEEDS: dict[MessageType, dict[str, Any]] = {
    MessageType.MODE_CHANGE: {"control": Control(mode=Mode.ACTIVATED)},
    MessageType.ACTIVATION: NEW_INCIDENT,
    MessageType.INCIDENT_CLOSE: {"incident": "vatten-2026"},
    MessageType.RELABEL: {},
    MessageType.ALERT: {},
}


@pytest.mark.parametrize(
    ("sender", "message_type", "accepted"),
    [
        ("nacka", MessageType.MODE_CHANGE, False),
        ("nacka", MessageType.RELABEL, False),
        ("nacka", MessageType.ACTIVATION, False),
        ("nacka", MessageType.INCIDENT_CLOSE, False),
        ("polisen-stockholm", MessageType.MODE_CHANGE, False),
        ("lansstyrelsen-stockholm", MessageType.MODE_CHANGE, True),
        ("polisen-stockholm", MessageType.ACTIVATION, True),
        ("stockholm", MessageType.INCIDENT_CLOSE, True),
        ("nacka", MessageType.ALERT, True),
    ],
)
def test_type_rights(sender, message_type, accepted, region, make_envelope):
    """Each type with the control fields it needs, so only the sender's rights decide."""
    raw = make_envelope(
        sender=sender, to=("sos-alarm",), message_type=message_type, **NEEDS[message_type]
    )
    decision = decide_at(raw, region, incidents=STOCKHOLMS_INCIDENT)
    if accepted:
        assert isinstance(decision, Accept), decision
    else:
        assert decision.reason is Reason.TYPE_NOT_ALLOWED


def test_mode_overlay_rights(region, make_envelope):
    policy = load_policy('[modes.activated.rights]\ncommunication = ["authority"]\n')
    raw = make_envelope(message_type=MessageType.COMMUNICATION)
    assert isinstance(decide_at(raw, region, policy=policy, mode=Mode.ORDINARY), Accept)
    refused = decide_at(raw, region, policy=policy, mode=Mode.ACTIVATED)
    assert refused.reason is Reason.TYPE_NOT_ALLOWED
    by_authority = make_envelope(
        sender="lansstyrelsen-stockholm", message_type=MessageType.COMMUNICATION
    )
    assert isinstance(decide_at(by_authority, region, policy=policy, mode=Mode.ACTIVATED), Accept)


@pytest.mark.parametrize(
    ("sender", "count", "accepted"),
    [
        ("polisen-stockholm", 9, True),
        ("polisen-stockholm", 10, False),
        ("polisen-stockholm", 26, False),
        ("lansstyrelsen-stockholm", 10, True),
        ("lansstyrelsen-stockholm", 26, True),
    ],
)
def test_region_wide_activation(sender, count, accepted, region, make_envelope):
    raw = make_envelope(
        sender=sender,
        to=MUNICIPALITIES[:count],
        message_type=MessageType.ACTIVATION,
        **NEW_INCIDENT,
    )
    decision = decide_at(raw, region)
    if accepted:
        assert isinstance(decision, Accept), decision
    else:
        assert decision.reason is Reason.REGION_WIDE_NOT_ALLOWED


def test_region_wide_applies_to_activations_only(region, make_envelope):
    raw = make_envelope(sender="polisen-stockholm", to=MUNICIPALITIES[:20])
    assert isinstance(decide_at(raw, region), Accept)


def test_required_recipient_need_not_address_itself(region, make_envelope):
    policy = load_policy(HEIGHTENED_POLICY)
    raw = make_envelope(sender="lansstyrelsen-stockholm")
    assert isinstance(decide_at(raw, region, policy=policy, mode=Mode.HEIGHTENED_ALERT), Accept)


def test_required_recipients_only_in_their_mode_and_type(region, make_envelope):
    policy = load_policy(HEIGHTENED_POLICY)
    raw = make_envelope()
    assert isinstance(decide_at(raw, region, policy=policy, mode=Mode.ORDINARY), Accept)
    alert = make_envelope(message_type=MessageType.ALERT)
    assert isinstance(decide_at(alert, region, policy=policy, mode=Mode.HEIGHTENED_ALERT), Accept)
    included = make_envelope(to=(*DEFAULT_TO, "lansstyrelsen-stockholm"))
    assert isinstance(
        decide_at(included, region, policy=policy, mode=Mode.HEIGHTENED_ALERT), Accept
    )


# --- control fields and incident checks: variants and order ----------------------

CONTROL_INVALID = {
    "mode-change-without-control": ("lansstyrelsen-stockholm", MessageType.MODE_CHANGE, {}),
    "mode-change-without-mode": (
        "lansstyrelsen-stockholm", MessageType.MODE_CHANGE, {"control": Control()}
    ),
    "mode-change-with-incident-type": (
        "lansstyrelsen-stockholm",
        MessageType.MODE_CHANGE,
        {"control": Control(mode=Mode.ACTIVATED, incident_type="storm")},
    ),
    "activation-without-control": (
        "polisen-stockholm", MessageType.ACTIVATION, {"incident": INCIDENT}
    ),
    "activation-with-a-mode": (
        "polisen-stockholm",
        MessageType.ACTIVATION,
        {"incident": INCIDENT, "control": Control(mode=Mode.ACTIVATED, incident_type="storm")},
    ),
    "activation-without-incident": (
        "polisen-stockholm", MessageType.ACTIVATION, {"control": Control(incident_type="storm")}
    ),
    "new-incident-without-type": (
        "polisen-stockholm",
        MessageType.ACTIVATION,
        {"incident": "ny-handelse", "control": Control()},  # not among the known incidents
    ),
    "incident-close-without-incident": ("stockholm", MessageType.INCIDENT_CLOSE, {}),
    "incident-close-with-control": (
        "stockholm", MessageType.INCIDENT_CLOSE, {"incident": INCIDENT, "control": Control()}
    ),
    "relabel-with-control": (
        "lansstyrelsen-stockholm", MessageType.RELABEL, {"control": Control(mode=Mode.ORDINARY)}
    ),
    "alert-with-empty-control": ("nacka", MessageType.ALERT, {"control": Control()}),
}  # fmt: skip


@pytest.mark.parametrize(
    ("sender", "message_type", "fields"), CONTROL_INVALID.values(), ids=CONTROL_INVALID.keys()
)
def test_control_fields_must_fit_the_type(sender, message_type, fields, region, make_envelope):
    raw = make_envelope(sender=sender, to=("sos-alarm",), message_type=message_type, **fields)
    decision = decide_at(raw, region, incidents=storm(make_envelope))
    assert isinstance(decision, Reject)
    assert (decision.reason, decision.recipients) == (Reason.CONTROL_INVALID, ())
    assert (decision.message_id, decision.sender) == (header_of(raw).id, sender)


def test_rights_are_checked_before_control_fields(region, make_envelope):
    raw = make_envelope(message_type=MessageType.MODE_CHANGE)  # nacka, and no control
    assert decide_at(raw, region).reason is Reason.TYPE_NOT_ALLOWED


def test_region_wide_is_checked_before_control_fields(region, make_envelope):
    raw = make_envelope(
        sender="polisen-stockholm", to=MUNICIPALITIES[:10], message_type=MessageType.ACTIVATION
    )
    assert decide_at(raw, region).reason is Reason.REGION_WIDE_NOT_ALLOWED


def test_required_recipients_are_checked_before_the_incident(region, make_envelope):
    policy = load_policy(HEIGHTENED_POLICY)
    raw = make_envelope(incident="okand-handelse")
    decision = decide_at(raw, region, policy=policy, mode=Mode.HEIGHTENED_ALERT)
    assert decision.reason is Reason.REQUIRED_RECIPIENT_MISSING


def test_control_fields_are_checked_before_the_incident(region, make_envelope):
    raw = make_envelope(incident="okand-handelse", control=Control(mode=Mode.ACTIVATED))
    assert decide_at(raw, region).reason is Reason.CONTROL_INVALID


def test_the_incident_is_checked_before_each_recipient(region, make_envelope):
    """stockholms-hamnar is both outside the incident and not cleared for the label:
    the incident rule names it first."""
    raw = make_envelope(to=("sos-alarm", "stockholms-hamnar"), incident=INCIDENT)
    decision = decide_at(raw, region, incidents=storm(make_envelope))
    assert (decision.reason, decision.recipients) == (
        Reason.NOT_INCIDENT_PARTICIPANT,
        ("stockholms-hamnar",),
    )
    plain = make_envelope(to=("sos-alarm", "stockholms-hamnar"))
    assert decide_at(plain, region).reason is Reason.RECIPIENT_NOT_CLEARED


# --- recipient variants ----------------------------------------------------------


def test_recipient_problems_report_the_most_basic_first(region, make_envelope):
    ghost = impostor("okand-aktor")
    keys = [
        *recipient_keys(region.directory, ["stockholms-hamnar", "sos-alarm"]),
        RecipientKey("okand-aktor", ghost.encryption.key_id, ghost.encryption.public),
    ]
    decision = decide_at(make_envelope(recipients=keys), region)
    assert decision.reason is Reason.RECIPIENT_UNKNOWN
    assert decision.recipients == ("okand-aktor",)


def test_recipient_problems_in_order_of_precedence(region):
    """Remove the recipients named by each refusal in turn: the reasons come in the
    documented order, each naming all and only its recipients."""
    directory = edit_directory(
        region,
        {
            "sos-alarm": {"status": ActorStatus.SUSPENDED},
            "kustbevakningen": encryption_key_update(region, "kustbevakningen", revoked_at=NOW),
        },
    )
    ghosts = [impostor(name) for name in ("okand-a", "okand-b")]
    keys = {
        g.principal: RecipientKey(g.principal, g.encryption.key_id, g.encryption.public)
        for g in ghosts
    }
    for actor_id in ("sos-alarm", "kustbevakningen", "stockholms-hamnar", "trafikverket"):
        keys[actor_id] = RecipientKey.of(region.directory.actor(actor_id), NOW)
    keys["brandkaren-attunda"] = RecipientKey.of(region.directory.actor("brandkaren-attunda"), NOW)
    expected = [
        (Reason.RECIPIENT_UNKNOWN, ("okand-a", "okand-b")),
        (Reason.RECIPIENT_INACTIVE, ("sos-alarm",)),
        (Reason.RECIPIENT_KEY_INVALID, ("kustbevakningen",)),
        (Reason.RECIPIENT_NOT_CLEARED, ("stockholms-hamnar",)),
        (Reason.RECIPIENT_LACKS_CATEGORY, ("trafikverket",)),
    ]
    label = sekretess(Tlp.AMBER, "taktik")
    for reason, named in expected:
        raw = build_as(
            region, region.identities["polisen-stockholm"], (), recipients=list(keys.values()),
            label=label,
        )  # fmt: skip
        decision = decide_at(raw, region, directory=directory)
        assert (decision.reason, decision.recipients) == (reason, named)
        for actor_id in named:
            del keys[actor_id]
    raw = build_as(
        region, region.identities["polisen-stockholm"], (), recipients=list(keys.values()),
        label=label,
    )  # fmt: skip
    assert isinstance(decide_at(raw, region, directory=directory), Accept)


@pytest.mark.parametrize("status", [ActorStatus.SUSPENDED, ActorStatus.RETIRED])
def test_every_inactive_status_is_refused(status, region, make_envelope):
    sender_off = edit_directory(region, {"nacka": {"status": status}})
    assert decide_at(make_envelope(), region, directory=sender_off).reason is (
        Reason.SENDER_INACTIVE
    )
    recipient_off = edit_directory(region, {"stockholm": {"status": status}})
    decision = decide_at(make_envelope(), region, directory=recipient_off)
    assert (decision.reason, decision.recipients) == (Reason.RECIPIENT_INACTIVE, ("stockholm",))


def test_key_revoked_between_now_and_a_creation_time_within_the_leeway(region, make_envelope):
    """Created 90 s ahead of the broker's clock (inside the leeway), after the key's
    revocation: revoked, although the key is not yet revoked at the broker's now."""
    directory = edit_directory(
        region, {"nacka": signing_key_update(region, "nacka", revoked_at=NOW + MINUTE)}
    )
    raw = make_envelope(created=NOW + 90_000, expires=NOW + HOUR)
    decision = decide_at(raw, region, directory=directory, now=NOW)
    assert decision.reason is Reason.SENDER_KEY_REVOKED


def test_wrap_for_the_previous_key_is_accepted_while_rotations_overlap(region, make_envelope):
    directory = rotated_sos_alarm(region, old_until=NOW + 30 * MINUTE)
    sos = directory.actor("sos-alarm")
    assert sos.encryption_key(NOW + MINUTE).key_id != sos.encryption_keys[0].key_id
    raw = make_envelope()  # wrapped for the old key
    assert isinstance(decide_at(raw, region, directory=directory, now=NOW + MINUTE), Accept)
    ended = decide_at(raw, region, directory=directory, now=NOW + 30 * MINUTE)
    assert (ended.reason, ended.recipients) == (Reason.RECIPIENT_KEY_INVALID, ("sos-alarm",))


def test_recipient_key_revoked_without_replacement(region, make_envelope):
    directory = edit_directory(
        region, {"sos-alarm": encryption_key_update(region, "sos-alarm", revoked_at=NOW)}
    )
    decision = decide_at(make_envelope(), region, directory=directory)
    assert decision.reason is Reason.RECIPIENT_KEY_INVALID
    assert decision.recipients == ("sos-alarm",)


def test_wrap_for_the_wrong_key_id_is_invalid(region, make_envelope):
    """A wrap naming another key id than the recipient's current one is refused."""
    sos = region.directory.actor("sos-alarm")
    other = region.directory.actor("polisen-stockholm").encryption_keys[0]
    keys = [RecipientKey("sos-alarm", other.key_id, other.raw)]
    assert sos.encryption_keys[0].key_id != other.key_id
    decision = decide_at(make_envelope(recipients=keys), region)
    assert decision.reason is Reason.RECIPIENT_KEY_INVALID


def test_recipient_with_clearance_off_the_ladder_is_not_cleared(region, make_envelope):
    directory = edit_directory(region, {"sos-alarm": {"clearance": "OKLASSAD"}})
    decision = decide_at(make_envelope(), region, directory=directory)
    assert decision.reason is Reason.RECIPIENT_NOT_CLEARED
    assert decision.recipients == ("sos-alarm",)


def test_recipient_with_higher_clearance_and_all_categories(region, make_envelope):
    raw = make_envelope(
        sender="polisen-stockholm",
        to=("forsvarsmakten-mmr", "sos-alarm"),
        label=sekretess(Tlp.AMBER, "taktik"),
    )
    assert isinstance(decide_at(raw, region), Accept)


# --- forwards --------------------------------------------------------------------


@pytest.mark.parametrize("tlp", [Tlp.RED, Tlp.AMBER_STRICT])
def test_red_and_amber_strict_never_go_to_new_actors(tlp, region, make_envelope):
    first = original(make_envelope, sekretess(tlp))
    raw = forward(make_envelope, first, to=("huddinge", "solna"), label=sekretess(tlp))
    origin = origin_of(first, region, approved={"huddinge", "solna"})  # approval does not help
    decision = decide_at(raw, region, origin=origin)
    assert decision.reason is Reason.TLP_FORWARD_FORBIDDEN
    assert decision.recipients == ("huddinge", "solna")


@pytest.mark.parametrize("tlp", [Tlp.RED, Tlp.AMBER_STRICT, Tlp.AMBER])
def test_forward_within_the_original_audience_is_accepted(tlp, region, make_envelope):
    """Back to the originator and to the other original recipient: nobody new."""
    first = original(make_envelope, sekretess(tlp))
    raw = forward(make_envelope, first, to=("nacka", "sos-alarm"), label=sekretess(tlp))
    assert isinstance(decide_at(raw, region, origin=origin_of(first, region)), Accept)


def test_amber_forward_with_approval_is_accepted(region, make_envelope):
    first = original(make_envelope, sekretess(Tlp.AMBER))
    raw = forward(make_envelope, first, to=("huddinge", "solna"), label=sekretess(Tlp.AMBER))
    unapproved = decide_at(raw, region, origin=origin_of(first, region))
    assert unapproved.reason is Reason.TLP_AMBER_UNAPPROVED
    assert unapproved.recipients == ("huddinge", "solna")
    approved = origin_of(first, region, approved={"huddinge", "solna"})
    decision = decide_at(raw, region, origin=approved)
    assert isinstance(decision, Accept)
    assert decision.recipients == ("huddinge", "solna")


@pytest.mark.parametrize("tlp", [Tlp.GREEN, Tlp.CLEAR])
def test_green_and_clear_forward_to_new_actors_is_accepted(tlp, region, make_envelope):
    first = original(make_envelope, sekretess(tlp))
    raw = forward(make_envelope, first, to=("huddinge", "solna"), label=sekretess(tlp))
    assert isinstance(decide_at(raw, region, origin=origin_of(first, region)), Accept)


def test_forward_may_raise_the_label(region, make_envelope):
    first = original(make_envelope, sekretess(Tlp.GREEN))
    raw = forward(make_envelope, first, to=("huddinge",), label=sekretess(Tlp.AMBER))
    origin = origin_of(first, region, approved={"huddinge"})
    assert isinstance(decide_at(raw, region, origin=origin), Accept)


LOWERED = {
    "tlp": (sekretess(Tlp.AMBER), sekretess(Tlp.GREEN)),
    "classification": (
        sekretess(Tlp.GREEN),
        Label(policy="ssr", classification="INTERN", tlp=Tlp.GREEN),
    ),
    "category-dropped": (sekretess(Tlp.GREEN, "taktik"), sekretess(Tlp.GREEN)),
}


@pytest.mark.parametrize(("before", "after"), LOWERED.values(), ids=LOWERED.keys())
def test_forward_never_lowers_the_label(before, after, region, make_envelope):
    first = make_envelope(sender="polisen-stockholm", to=("sos-alarm",), label=before)
    raw = forward(make_envelope, first, sender="sos-alarm", to=("polisen-stockholm",), label=after)
    decision = decide_at(raw, region, origin=origin_of(first, region))
    assert decision.reason is Reason.FORWARD_LABEL_LOWERED
    assert decision.recipients == ()


@pytest.mark.parametrize(
    "original_label",
    [
        Label(policy="ssr", classification="GAMMAL NIVA", tlp=Tlp.GREEN),  # level since removed
        sekretess(Tlp.GREEN, policy="annan-policy"),
    ],
    ids=["level-off-the-current-ladder", "other-policy"],
)
def test_forward_of_an_incomparable_original_is_refused(original_label, region, make_envelope):
    """Regression: an original accepted under an older ladder made decide() raise KeyError
    instead of returning a Reject; a label that cannot be compared fails closed."""
    first = original(make_envelope, sekretess(Tlp.GREEN))
    raw = forward(make_envelope, first, to=("huddinge",), label=sekretess(Tlp.GREEN))
    known = origin_of(first, region)
    stored = known.header.model_copy(update={"label": original_label})
    decision = decide_at(raw, region, origin=ForwardOrigin(stored, known.header_hash))
    assert isinstance(decision, Reject)
    assert decision.reason is Reason.FORWARD_LABEL_LOWERED


def _other_message(region, make_envelope, first):
    other = make_envelope(to=("sos-alarm",), label=sekretess(Tlp.GREEN))
    return origin_of(other, region)


def _other_hash(region, make_envelope, first):
    origin = origin_of(first, region)
    return ForwardOrigin(origin.header, "00" * 32, origin.approved)


def _other_id(region, make_envelope, first):
    """The broker's store returned another message's header under the right hash."""
    other = make_envelope(to=("sos-alarm",), label=sekretess(Tlp.GREEN))
    return ForwardOrigin(origin_of(other, region).header, origin_of(first, region).header_hash)


def _no_origin(region, make_envelope, first):
    return None


ORIGIN_MISMATCH = {
    "no-origin": _no_origin,
    "origin-is-another-message": _other_message,
    "origin-hash-differs": _other_hash,
    "origin-id-differs": _other_id,
}


@pytest.mark.parametrize("origin", ORIGIN_MISMATCH.values(), ids=ORIGIN_MISMATCH.keys())
def test_forward_origin_must_match_the_reference(origin, region, make_envelope):
    first = original(make_envelope, sekretess(Tlp.GREEN))
    raw = forward(make_envelope, first, to=("huddinge",), label=sekretess(Tlp.GREEN))
    decision = decide_at(raw, region, origin=origin(region, make_envelope, first))
    assert decision.reason is Reason.FORWARD_ORIGIN_UNKNOWN


def test_non_forward_references_need_no_origin(region, make_envelope):
    first = original(make_envelope, sekretess(Tlp.RED))
    reply = Reference(kind=ReferenceKind.REPLY, message=header_of(first).id, header_hash="00" * 32)
    raw = make_envelope(
        sender="polisen-stockholm", to=("huddinge",), label=sekretess(Tlp.RED), references=(reply,)
    )
    assert isinstance(decide_at(raw, region), Accept)


# --- Accept ----------------------------------------------------------------------


def test_accept_carries_the_verified_envelope(region, make_envelope):
    raw = make_envelope(message_id="ef" * 16)
    decision = decide_at(raw, region)
    assert isinstance(decision, Accept)
    assert decision.message_id == "ef" * 16
    assert decision.recipients == DEFAULT_TO
    assert decision.status is Status.ACTUAL
    assert decision.envelope.raw == raw
    assert decision.envelope.sender.id == "nacka"
    assert decision.envelope.header_hash == read_envelope(raw, region.directory).header_hash


@pytest.mark.parametrize(
    ("priority", "seconds"),
    [
        (Priority.ROUTINE, 3600),
        (Priority.PRIORITY, 900),
        (Priority.IMMEDIATE, 300),
        (Priority.FLASH, 60),
    ],
)
def test_receipt_deadline_per_priority(priority, seconds, region, make_envelope):
    now = NOW + 5 * MINUTE
    decision = decide_at(make_envelope(priority=priority), region, now=now)
    assert isinstance(decision, Accept)
    assert decision.receipt_deadline == now + seconds * 1000


OVERLAY_POLICY = """
[receipt_deadlines]
routine = 7200
priority = 600
immediate = 120
flash = 45

[modes.heightened_alert.receipt_deadlines]
flash = 15
routine = 1800
"""


@pytest.mark.parametrize(
    ("mode", "priority", "seconds"),
    [
        (Mode.ORDINARY, Priority.FLASH, 45),
        (Mode.ORDINARY, Priority.ROUTINE, 7200),
        (Mode.HEIGHTENED_ALERT, Priority.FLASH, 15),
        (Mode.HEIGHTENED_ALERT, Priority.ROUTINE, 1800),
        (Mode.HEIGHTENED_ALERT, Priority.IMMEDIATE, 120),  # not in the overlay: base value
        (Mode.ACTIVATED, Priority.FLASH, 45),  # no overlay for this mode
    ],
)
def test_receipt_deadline_per_mode_overlay(mode, priority, seconds, region, make_envelope):
    policy = load_policy(OVERLAY_POLICY)
    decision = decide_at(make_envelope(priority=priority), region, policy=policy, mode=mode)
    assert isinstance(decision, Accept)
    assert decision.receipt_deadline == NOW + seconds * 1000


@pytest.mark.parametrize("status", list(Status))
def test_status_is_carried(status, region, make_envelope):
    decision = decide_at(make_envelope(status=status), region)
    assert isinstance(decision, Accept)
    assert decision.status is status
    assert decision.envelope.header.status is status


def test_exercise_traffic_follows_the_same_rules(region, make_envelope):
    raw = make_envelope(status=Status.EXERCISE, message_type=MessageType.MODE_CHANGE)
    decision = decide_at(raw, region)
    assert decision.reason is Reason.TYPE_NOT_ALLOWED


def test_decide_does_not_depend_on_the_seen_container_type(region, make_envelope):
    raw = make_envelope(message_id="12" * 16)
    for seen in ({"12" * 16}, ["12" * 16], frozenset({"12" * 16}), {"12" * 16: 1}):
        decision = decide_at(raw, region, seen=seen)
        assert decision.reason is Reason.REPLAY


def test_a_rejection_never_carries_payload(region, make_envelope):
    secret = b"klassificerat innehall som aldrig far lacka"
    raw = make_envelope(payload=secret, to=("stockholms-hamnar",))
    decision = decide_at(raw, region)
    assert isinstance(decision, Reject)
    assert secret.decode() not in repr(decision)


def test_the_reserved_receipt_type_is_refused_by_default(region, make_envelope):
    raw = make_envelope(sender="lansstyrelsen-stockholm", message_type=MessageType.RECEIPT)
    decision = decide_at(raw, region)
    assert isinstance(decision, Reject)
    assert decision.reason is Reason.TYPE_NOT_ALLOWED


# --- press lines, requests, the catalogue ----------------------------------------


def _draft(make_envelope, sender="nacka"):
    return make_envelope(
        sender=sender,
        to=tuple(p for p in PARTICIPANTS if p != sender),
        message_type=MessageType.COMMUNICATION,
        incident=INCIDENT,
        control=Control(press=PressStage.DRAFT),
    )


def _approval(make_envelope, draft_raw, *, sender="polisen-stockholm", label=PUBLIC):
    draft = header_of(draft_raw)
    return make_envelope(
        sender=sender,
        to=tuple(p for p in PARTICIPANTS if p != sender),
        message_type=MessageType.COMMUNICATION,
        incident=INCIDENT,
        label=label,
        control=Control(press=PressStage.APPROVED),
        references=(
            Reference(
                kind=ReferenceKind.UPDATE,
                message=draft.id,
                header_hash=header_hash(split(draft_raw).sections[0]).hex(),
            ),
        ),
    )


def test_the_leads_approval_of_a_known_draft_goes_public(region, make_envelope):
    draft_raw = _draft(make_envelope)
    incidents = storm(make_envelope)
    assert isinstance(decide_at(draft_raw, region, incidents=incidents), Accept)
    approval = _approval(make_envelope, draft_raw)
    decision = decide_at(approval, region, incidents=incidents, draft=origin_of(draft_raw, region))
    assert isinstance(decision, Accept), decision


def test_a_draft_may_not_be_public(region, make_envelope):
    raw = make_envelope(
        message_type=MessageType.COMMUNICATION,
        incident=INCIDENT,
        label=PUBLIC,
        control=Control(press=PressStage.DRAFT),
        to=("polisen-stockholm", "sos-alarm", "stockholm"),
    )
    decision = decide_at(raw, region, incidents=storm(make_envelope))
    assert decision.reason is Reason.PRESS_LINE_UNAPPROVED


@pytest.mark.parametrize("fault", ["other-message", "not-a-draft", "other-incident", "hash"])
def test_an_approval_must_name_the_draft_it_approves(fault, region, make_envelope):
    draft_raw = _draft(make_envelope)
    approval = _approval(make_envelope, draft_raw)
    incidents = storm(make_envelope)
    if fault == "other-message":
        known = origin_of(_draft(make_envelope), region)
    elif fault == "not-a-draft":
        report = make_envelope(incident=INCIDENT, to=("sos-alarm",))
        known = origin_of(report, region)
        approval = _approval(make_envelope, report)
    elif fault == "other-incident":
        other = make_envelope(
            message_type=MessageType.COMMUNICATION, control=Control(press=PressStage.DRAFT)
        )
        known = origin_of(other, region)
        approval = _approval(make_envelope, other)
    else:
        original = origin_of(draft_raw, region)
        known = ForwardOrigin(original.header, "0" * 64)
    decision = decide_at(approval, region, incidents=incidents, draft=known)
    assert decision.reason is Reason.PRESS_DRAFT_UNKNOWN


def test_a_named_communication_lead_approves_instead_of_the_owner(region, make_envelope):
    incidents = storm(make_envelope)
    incidents[INCIDENT] = incidents[INCIDENT].model_copy(update={"communication_lead": "stockholm"})
    draft_raw = _draft(make_envelope)
    by_owner = _approval(make_envelope, draft_raw)
    by_lead = _approval(make_envelope, draft_raw, sender="stockholm")
    known = origin_of(draft_raw, region)
    assert decide_at(by_owner, region, incidents=incidents, draft=known).reason is (
        Reason.PRESS_APPROVAL_NOT_LEAD
    )
    assert isinstance(decide_at(by_lead, region, incidents=incidents, draft=known), Accept)


def test_the_communication_lead_must_take_part(region, make_envelope):
    raw = make_envelope(
        sender="polisen-stockholm",
        to=("nacka",),
        message_type=MessageType.ACTIVATION,
        incident="ny-2026",
        control=Control(incident_type="storm", communication_lead="huddinge"),
    )
    assert decide_at(raw, region).reason is Reason.CONTROL_INVALID
    ok = make_envelope(
        sender="polisen-stockholm",
        to=("nacka",),
        message_type=MessageType.ACTIVATION,
        incident="ny-2026",
        control=Control(incident_type="storm", communication_lead="nacka"),
    )
    decision = decide_at(ok, region)
    assert isinstance(decision, Accept)
    assert opened_by(decision.envelope.header, None).lead == "nacka"


@pytest.mark.parametrize(
    ("deadline", "accepted"),
    [(NOW + MINUTE, True), (NOW + HOUR, True), (NOW, False), (NOW + HOUR + 1, False)],
)
def test_a_request_deadline_falls_within_its_lifetime(deadline, accepted, region, make_envelope):
    raw = make_envelope(message_type=MessageType.REQUEST, control=Control(deadline=deadline))
    decision = decide_at(raw, region)
    assert isinstance(decision, Accept) is accepted
    if not accepted:
        assert decision.reason is Reason.CONTROL_INVALID


@pytest.mark.parametrize(
    ("message_type", "control"),
    [
        (MessageType.SITUATION_REPORT, Control(deadline=NOW + MINUTE)),
        (MessageType.REQUEST, Control(press=PressStage.DRAFT)),
        (MessageType.COMMUNICATION, Control(deadline=NOW + MINUTE)),
        (MessageType.COMMUNICATION, Control(press=PressStage.DRAFT)),  # no incident
        (MessageType.ALERT, Control(communication_lead="nacka")),
    ],
    ids=str,
)
def test_new_control_fields_only_where_they_belong(message_type, control, region, make_envelope):
    raw = make_envelope(message_type=message_type, control=control)
    assert decide_at(raw, region).reason is Reason.CONTROL_INVALID


def test_a_catalogue_accepts_its_own_types(region, make_envelope):
    raw = make_envelope(
        sender="polisen-stockholm",
        to=("nacka",),
        message_type=MessageType.ACTIVATION,
        **NEW_INCIDENT,
    )
    assert isinstance(decide_at(raw, region, policy=CATALOGUE), Accept)


@pytest.mark.parametrize(
    "label",
    [
        Label(policy="ssr", classification="INTERN", tlp=Tlp.CLEAR),
        Label(policy="ssr", classification="OFFENTLIG", tlp=Tlp.GREEN),
    ],
    ids=["intern-clear", "offentlig-green"],
)
def test_either_public_marking_needs_an_approval(label, region, make_envelope):
    """OFFENTLIG alone or TLP:CLEAR alone already says "anyone may have it"."""
    raw = make_envelope(message_type=MessageType.COMMUNICATION, label=label)
    assert decide_at(raw, region).reason is Reason.PRESS_LINE_UNAPPROVED
    other = make_envelope(message_type=MessageType.SITUATION_REPORT, label=label)
    assert isinstance(decide_at(other, region), Accept)  # the rule is about press lines
