"""Audit events: one JSON document per decision, published to ``ssr.audit.<kind>``.

Every event carries what a security officer needs to answer "who got what, what
was refused and why" — ids, actors, label, reason — and never content. Events are
canonical JSON with a dedupe id so a redelivered submission does not log twice.
A later issue chains and signs them (tamper evidence); the shape already has the
fields that needs (``id``, ``at``, ``broker``).
"""

from __future__ import annotations

from enum import StrEnum

from broker.core import canonical, crypto


class AuditKind(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DELIVERED = "delivered"  # fanned out to every recipient
    RECEIPT = "receipt"
    RECEIPT_REJECTED = "receipt_rejected"
    ESCALATION = "escalation"
    DIRECTORY_CHANGE = "directory_change"
    DIRECTORY_REJECTED = "directory_rejected"
    MODE_CHANGE = "mode_change"
    INCIDENT_CHANGE = "incident_change"
    GRANT_REQUESTED = "grant_requested"  # an originator was asked to grant a late joiner
    GRANT_REFUSED = "grant_refused"  # a late joiner may not have a message (label, TLP)
    GRANTED = "granted"  # an originator's key grant was delivered to the late joiner
    GRANT_REJECTED = "grant_rejected"  # a key grant the broker refused
    REQUEST_OVERDUE = "request_overdue"  # a request's recipients did not answer in time
    OFFICER_QUERY = "officer_query"  # a security officer read the audit trail
    OFFICER_DENIED = "officer_denied"  # an officer asked for something outside their scope
    CHECKPOINT = "checkpoint"  # a signed seal over the trail so far (see broker.auditlog)


EVENT_FIELDS = (
    "v", "id", "kind", "at", "broker", "actor", "message", "reason", "recipients", "status",
    "label", "priority", "incident", "officer", "detail",
)  # fmt: skip
"""Every field of an audit event, in the order ``audit_event`` writes them."""


def audit_event(
    kind: AuditKind,
    *,
    at: int,
    broker: str,
    key: str,
    actor: str | None,
    message: str | None = None,
    reason: str | None = None,
    recipients: tuple[str, ...] = (),
    status: str | None = None,
    label: dict[str, object] | None = None,
    priority: str | None = None,
    incident: str | None = None,
    officer: str | None = None,
    detail: str = "",
) -> tuple[str, bytes]:
    """The dedupe id and canonical bytes of one event; ``key`` makes the id unique."""
    event_id = crypto.sha256(f"{kind.value}\x00{key}".encode()).hex()[:32]
    body = {
        "v": 1,
        "id": event_id,
        "kind": kind.value,
        "at": at,
        "broker": broker,
        "actor": actor,
        "message": message,
        "reason": reason,
        "recipients": list(recipients),
        "status": status,
        "label": label,
        "priority": priority,
        "incident": incident,
        "officer": officer,
        "detail": detail[:500],
    }
    return event_id, canonical.dumps(body)
