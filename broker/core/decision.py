"""The broker's policy decision: a pure function from an envelope and its context to a verdict.

``decide(raw, ...)`` returns :class:`Accept` or :class:`Reject`; it never
raises for bad input. It fails closed: every check must pass, and the first
that does not names its :class:`Reason`. The checks, in order:

    size  ->  frame and signature  ->  sender and key validity  ->  times
    ->  replay  ->  recipient count  ->  label vs policy, ceiling, sender
    ->  message-type rights  ->  mode's required recipients
    ->  control fields fit the type (incident type in the catalogue)
    ->  incident (known, open, owner, participants, status)
    ->  press lines (only the lead's approval of a known draft may go public)
    ->  each recipient (known, active, key, clearance, categories)
    ->  forward rules (TLP, label never lowered)

A rejection names the recipients concerned where the reason is about
recipients, so the sender can fix exactly those.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from .directory import ActorStatus, VerifiedDirectory
from .envelope import Header, PressStage, SignedEnvelope, read_envelope
from .errors import EnvelopeError
from .incidents import Incident
from .labels import NEVER_FORWARDED, Tlp
from .policy import Policy
from .vocabulary import MessageType, Mode, ReferenceKind, Role, Status


class Reason(StrEnum):
    """Why the broker refused an envelope; stable codes for senders, audit and metrics."""

    TOO_LARGE = "too_large"
    UNSUPPORTED_VERSION = "unsupported_version"
    MALFORMED = "malformed"
    UNKNOWN_SENDER_KEY = "unknown_sender_key"
    BAD_SIGNATURE = "bad_signature"
    SENDER_MISMATCH = "sender_mismatch"
    WRAPS_MISMATCH = "wraps_mismatch"
    SENDER_INACTIVE = "sender_inactive"
    SENDER_KEY_REVOKED = "sender_key_revoked"
    SENDER_KEY_EXPIRED = "sender_key_expired"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    LIFETIME_TOO_LONG = "lifetime_too_long"
    REPLAY = "replay"
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    LABEL_INVALID = "label_invalid"
    ABOVE_CEILING = "above_ceiling"
    ABOVE_SENDER_CLEARANCE = "above_sender_clearance"
    TYPE_NOT_ALLOWED = "type_not_allowed"
    REGION_WIDE_NOT_ALLOWED = "region_wide_not_allowed"
    REQUIRED_RECIPIENT_MISSING = "required_recipient_missing"
    RECIPIENT_UNKNOWN = "recipient_unknown"
    RECIPIENT_INACTIVE = "recipient_inactive"
    RECIPIENT_KEY_INVALID = "recipient_key_invalid"
    RECIPIENT_NOT_CLEARED = "recipient_not_cleared"
    RECIPIENT_LACKS_CATEGORY = "recipient_lacks_category"
    FORWARD_ORIGIN_UNKNOWN = "forward_origin_unknown"
    TLP_FORWARD_FORBIDDEN = "tlp_forward_forbidden"
    TLP_AMBER_UNAPPROVED = "tlp_amber_unapproved"
    FORWARD_LABEL_LOWERED = "forward_label_lowered"
    CONTROL_INVALID = "control_invalid"
    INCIDENT_UNKNOWN = "incident_unknown"
    INCIDENT_CLOSED = "incident_closed"
    INCIDENT_OWNER_ONLY = "incident_owner_only"
    INCIDENT_STATUS_MISMATCH = "incident_status_mismatch"
    NOT_INCIDENT_PARTICIPANT = "not_incident_participant"
    INCIDENT_TYPE_UNKNOWN = "incident_type_unknown"
    PRESS_LINE_UNAPPROVED = "press_line_unapproved"
    PRESS_APPROVAL_NOT_LEAD = "press_approval_not_lead"
    PRESS_DRAFT_UNKNOWN = "press_draft_unknown"
    # Not a decide() outcome: the router refuses a verified envelope whose sender is over
    # its delivery budget (broker.core.ratelimit), around the pure decision.
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True)
class Accept:
    """Route the envelope to ``recipients``; confirm delivery by ``receipt_deadline``."""

    envelope: SignedEnvelope
    receipt_deadline: int

    @property
    def message_id(self) -> str:
        return self.envelope.header.id

    @property
    def recipients(self) -> tuple[str, ...]:
        return self.envelope.header.recipients

    @property
    def status(self) -> Status:
        return self.envelope.header.status


@dataclass(frozen=True)
class Reject:
    """Refuse the envelope.

    ``message_id`` and ``sender`` are set once the envelope verified completely (signature,
    header, sender owns the key, wraps match) and so name a real sender to notify; refusals
    before that carry neither.
    """

    reason: Reason
    detail: str
    recipients: tuple[str, ...] = ()
    message_id: str | None = None
    sender: str | None = None


Decision = Accept | Reject


@dataclass(frozen=True)
class ForwardOrigin:
    """What the broker knows of the envelope a forward refers to.

    ``header`` is the original's verified header and ``header_hash`` its hash;
    ``approved`` holds the actors the originator approved for onward sharing
    of TLP:AMBER content.
    """

    header: Header
    header_hash: str
    approved: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class _Refusal(Exception):
    reason: Reason
    detail: str
    recipients: tuple[str, ...] = ()


def decide(
    raw: bytes,
    *,
    directory: VerifiedDirectory,
    policy: Policy,
    mode: Mode,
    now: int,
    seen: Container[str],
    origin: ForwardOrigin | None = None,
    incidents: Mapping[str, Incident] | None = None,
    draft: ForwardOrigin | None = None,
) -> Decision:
    """Decide one submitted envelope. ``seen`` holds message ids already accepted.

    ``origin`` is the referenced original when the envelope is a forward
    (the broker looks it up by the forward reference); without it a forward
    is refused. ``incidents`` holds the incidents the broker knows, by id.
    ``draft`` is the press-line draft an approval refers to (looked up the same way);
    without it an approval is refused.
    """
    try:
        envelope = read_envelope(raw, directory, max_bytes=policy.limits.max_envelope_bytes)
    except EnvelopeError as exc:
        return Reject(Reason(exc.code), exc.message)
    header = envelope.header
    try:
        _check(
            envelope,
            directory=directory,
            policy=policy,
            mode=mode,
            now=now,
            seen=seen,
            origin=origin,
            incidents=incidents or {},
            draft=draft,
        )
    except _Refusal as refusal:
        return Reject(refusal.reason, refusal.detail, refusal.recipients, header.id, header.sender)
    deadline = now + policy.receipt_deadline_ms(header.priority, mode)
    return Accept(envelope, deadline)


def _check(
    envelope: SignedEnvelope,
    *,
    directory: VerifiedDirectory,
    policy: Policy,
    mode: Mode,
    now: int,
    seen: Container[str],
    origin: ForwardOrigin | None,
    incidents: Mapping[str, Incident],
    draft: ForwardOrigin | None,
) -> None:
    header, sender, key = envelope.header, envelope.sender, envelope.sender_key
    limits = policy.limits
    skew = limits.clock_skew_seconds * 1000
    if sender.status is not ActorStatus.ACTIVE:
        raise _Refusal(Reason.SENDER_INACTIVE, f"sender {sender.id} is {sender.status.value}")
    if key.revoked_by(now) or key.revoked_by(header.created):
        raise _Refusal(Reason.SENDER_KEY_REVOKED, "sender key is revoked")
    if not (key.usable_at(now) and key.usable_at(header.created)):
        raise _Refusal(Reason.SENDER_KEY_EXPIRED, "sender key is outside its validity")
    if header.created > now + skew:
        raise _Refusal(Reason.NOT_YET_VALID, "created in the future beyond the clock leeway")
    if header.expires <= now:
        raise _Refusal(Reason.EXPIRED, "message expired")
    if header.expires - header.created > limits.max_lifetime_seconds * 1000:
        raise _Refusal(Reason.LIFETIME_TOO_LONG, "expiry too far after creation")
    if header.id in seen:
        raise _Refusal(Reason.REPLAY, "message id already seen")
    if len(header.recipients) > limits.max_recipients:
        raise _Refusal(Reason.TOO_MANY_RECIPIENTS, f"more than {limits.max_recipients} recipients")
    _check_label(header, envelope, policy)
    _check_rights(header, envelope, policy, mode)
    _check_control(header, policy)
    _check_incident(header, envelope, incidents)
    _check_press(header, policy, incidents, draft)
    _check_recipients(envelope, directory, policy, now)
    if header.forwarded() is not None:
        _check_forward(header, policy, origin)


def _check_label(header: Header, envelope: SignedEnvelope, policy: Policy) -> None:
    ladder, label = policy.ladder_order, header.label
    if label.policy != policy.id or not ladder.knows(label.classification):
        raise _Refusal(Reason.LABEL_INVALID, "label does not belong to this policy")
    if not ladder.at_most(label.classification, policy.ceiling):
        raise _Refusal(
            Reason.ABOVE_CEILING,
            f"{label.classification} is above the accreditation ceiling {policy.ceiling}; "
            "this system is not approved for that level",
        )
    sender = envelope.sender
    if not ladder.knows(sender.clearance) or not ladder.cleared_for(
        sender.clearance, sender.categories, label
    ):
        raise _Refusal(Reason.ABOVE_SENDER_CLEARANCE, "label exceeds the sender's own clearance")


def _check_rights(header: Header, envelope: SignedEnvelope, policy: Policy, mode: Mode) -> None:
    sender = envelope.sender
    roles = policy.allowed_roles(header.type, mode)
    if roles is not None and not any(sender.has_role(r) for r in roles):
        raise _Refusal(Reason.TYPE_NOT_ALLOWED, f"{sender.id} may not send {header.type.value}")
    region_wide = policy.region_wide_activation
    if (
        header.type is MessageType.ACTIVATION
        and len(header.recipients) >= region_wide.min_recipients
        and not any(sender.has_role(r) for r in region_wide.roles)
    ):
        raise _Refusal(Reason.REGION_WIDE_NOT_ALLOWED, "only an authority may activate region-wide")
    missing = tuple(  # the sender need not address itself
        r
        for r in policy.required_recipients(header.type, mode)
        if r not in header.recipients and r != header.sender
    )
    if missing:
        raise _Refusal(
            Reason.REQUIRED_RECIPIENT_MISSING,
            f"in mode {mode.value} a {header.type.value} must also go to these actors",
            missing,
        )


def _check_control(header: Header, policy: Policy) -> None:
    control, kind = header.control, header.type
    fields = set() if control is None else set(control.model_dump(exclude_none=True))
    if kind is MessageType.MODE_CHANGE:
        ok = fields == {"mode"}
    elif kind is MessageType.ACTIVATION:
        ok = control is not None and header.incident is not None
        ok = ok and fields <= {"incident_type", "communication_lead"}
        lead = control.communication_lead if control else None
        if lead is not None and lead not in (header.sender, *header.recipients):
            raise _Refusal(Reason.CONTROL_INVALID, "the communication lead must take part")
    elif kind is MessageType.REQUEST:
        ok = fields <= {"deadline"}
        deadline = control.deadline if control else None
        if deadline is not None and not header.created < deadline <= header.expires:
            raise _Refusal(
                Reason.CONTROL_INVALID, "a request's deadline must fall within its lifetime"
            )
    elif kind is MessageType.COMMUNICATION:
        ok = fields <= {"press"} and (not fields or header.incident is not None)
    else:
        ok = control is None
    if kind is MessageType.INCIDENT_CLOSE and header.incident is None:
        ok = False
    if not ok:
        raise _Refusal(Reason.CONTROL_INVALID, f"{kind.value} with wrong control fields")
    incident_type = control.incident_type if control else None
    if incident_type is not None and not policy.knows_incident_type(incident_type):
        known = ", ".join(sorted(policy.incident_types))
        raise _Refusal(
            Reason.INCIDENT_TYPE_UNKNOWN,
            f"{incident_type!r} is not in the catalogue of incident types ({known})",
        )


def _check_press(
    header: Header,
    policy: Policy,
    incidents: Mapping[str, Incident],
    draft: ForwardOrigin | None,
) -> None:
    """Only an approved press line goes public: a ``communication`` marked with the lowest
    classification or TLP:CLEAR must be the incident's communication lead's approval of
    a draft of that incident."""
    if header.type is not MessageType.COMMUNICATION:
        return
    stage = header.control.press if header.control else None
    # Either marking says "public": OFFENTLIG (no secrecy) or TLP:CLEAR (no limit on sharing).
    public = header.label.tlp is Tlp.CLEAR or header.label.classification == policy.ladder[0]
    if stage is not PressStage.APPROVED:
        if public:
            raise _Refusal(
                Reason.PRESS_LINE_UNAPPROVED,
                f"only an approved press line may be {policy.ladder[0]} or TLP:CLEAR",
            )
        return
    incident = incidents.get(header.incident or "")
    if incident is None or header.sender != incident.lead:
        raise _Refusal(
            Reason.PRESS_APPROVAL_NOT_LEAD,
            "only the incident's communication lead approves press lines",
        )
    updates = [r for r in header.references if r.kind is ReferenceKind.UPDATE]
    if (
        len(updates) != 1
        or draft is None
        or draft.header.id != updates[0].message
        or draft.header_hash != updates[0].header_hash
        or draft.header.type is not MessageType.COMMUNICATION
        or draft.header.control is None
        or draft.header.control.press is not PressStage.DRAFT
        or draft.header.incident != header.incident
    ):
        raise _Refusal(
            Reason.PRESS_DRAFT_UNKNOWN,
            "an approval must update exactly one known draft of the same incident",
        )


def _check_incident(
    header: Header, envelope: SignedEnvelope, incidents: Mapping[str, Incident]
) -> None:
    if header.incident is None:
        return
    incident = incidents.get(header.incident)
    may_steer = incident is not None and (
        incident.owner == header.sender or envelope.sender.has_role(Role.AUTHORITY)
    )
    if header.type is MessageType.ACTIVATION:
        if incident is None:
            if header.control is None or header.control.incident_type is None:
                raise _Refusal(Reason.CONTROL_INVALID, "a new incident needs incident_type")
            return
        if not incident.is_open:
            raise _Refusal(Reason.INCIDENT_CLOSED, f"incident {incident.id} is closed")
        if not may_steer:
            raise _Refusal(Reason.INCIDENT_OWNER_ONLY, "only the owner or an authority may do that")
    elif incident is None:
        raise _Refusal(Reason.INCIDENT_UNKNOWN, f"no incident {header.incident}")
    elif not incident.is_open:
        raise _Refusal(Reason.INCIDENT_CLOSED, f"incident {incident.id} is closed")
    elif header.type is MessageType.INCIDENT_CLOSE:
        if not may_steer:
            raise _Refusal(Reason.INCIDENT_OWNER_ONLY, "only the owner or an authority may do that")
    elif header.sender not in incident.participants:
        raise _Refusal(Reason.NOT_INCIDENT_PARTICIPANT, "sender does not take part in the incident")
    else:
        outside = tuple(r for r in header.recipients if r not in incident.participants)
        if outside:
            raise _Refusal(
                Reason.NOT_INCIDENT_PARTICIPANT, "recipients outside the incident", outside
            )
    if incident is not None and header.status is not incident.status:
        raise _Refusal(
            Reason.INCIDENT_STATUS_MISMATCH,
            f"incident {incident.id} is {incident.status.value} traffic; "
            f"this message is {header.status.value}",
        )


def _check_recipients(
    envelope: SignedEnvelope, directory: VerifiedDirectory, policy: Policy, now: int
) -> None:
    ladder, label = policy.ladder_order, envelope.header.label
    found: dict[Reason, list[str]] = {}
    for wrap in envelope.wraps:
        actor = directory.actor(wrap.recipient)
        usable = {k.key_id for k in actor.encryption_keys if k.usable_at(now)} if actor else set()
        if actor is None:
            reason = Reason.RECIPIENT_UNKNOWN
        elif actor.status is not ActorStatus.ACTIVE:
            reason = Reason.RECIPIENT_INACTIVE
        elif wrap.key_id not in usable:  # any usable key: rotations overlap
            reason = Reason.RECIPIENT_KEY_INVALID
        elif not ladder.knows(actor.clearance) or ladder.rank(actor.clearance) < ladder.rank(
            label.classification
        ):
            reason = Reason.RECIPIENT_NOT_CLEARED
        elif not set(label.categories) <= set(actor.categories):
            reason = Reason.RECIPIENT_LACKS_CATEGORY
        else:
            continue
        found.setdefault(reason, []).append(wrap.recipient)
    for reason in _RECIPIENT_REASONS:  # report the most basic problem first
        if reason in found:
            raise _Refusal(reason, "recipients refused by policy", tuple(found[reason]))


_RECIPIENT_REASONS = (
    Reason.RECIPIENT_UNKNOWN,
    Reason.RECIPIENT_INACTIVE,
    Reason.RECIPIENT_KEY_INVALID,
    Reason.RECIPIENT_NOT_CLEARED,
    Reason.RECIPIENT_LACKS_CATEGORY,
)


def _check_forward(header: Header, policy: Policy, origin: ForwardOrigin | None) -> None:
    reference = header.forwarded()
    assert reference is not None
    if (
        origin is None
        or origin.header.id != reference.message
        or origin.header_hash != reference.header_hash
    ):
        raise _Refusal(
            Reason.FORWARD_ORIGIN_UNKNOWN, "the forwarded message is not known to the broker"
        )
    original, ladder = origin.header, policy.ladder_order
    # An original accepted under an older ladder may carry a level this one lacks; the
    # labels cannot then be compared, and an incomparable forward is refused (fail closed).
    if not ladder.knows(original.label.classification) or not ladder.dominates(
        header.label, original.label
    ):
        raise _Refusal(
            Reason.FORWARD_LABEL_LOWERED, "a forward must carry at least the original label"
        )
    already = {*original.recipients, original.sender}
    new = tuple(r for r in header.recipients if r not in already)
    if not new:
        return
    if original.label.tlp in NEVER_FORWARDED:
        raise _Refusal(
            Reason.TLP_FORWARD_FORBIDDEN,
            f"TLP:{original.label.tlp.value} is never forwarded to other actors",
            new,
        )
    if original.label.tlp is Tlp.AMBER:
        unapproved = tuple(r for r in new if r not in origin.approved)
        if unapproved:
            raise _Refusal(
                Reason.TLP_AMBER_UNAPPROVED,
                "TLP:AMBER onward sharing needs the originator's approval",
                unapproved,
            )
