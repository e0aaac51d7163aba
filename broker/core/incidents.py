"""Incidents: what an ``activation`` opens and what messages naming it must respect.

An ``activation`` with a new incident id and ``control.incident_type`` opens
an incident; its sender is the owner, its recipients plus the sender are the
participants, its label the incident's default label, and its distribution
status (actual, exercise, test) the incident's, so exercise traffic never
mixes with actual. A later ``activation`` by the owner (or an authority) for
the same open incident replaces the participants: that is how actors join
and leave. ``incident_close`` by the owner or an authority closes it.

Every other message naming an incident must come from a participant, go only
to participants, and carry the incident's status.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .envelope import Header
from .labels import Label
from .limits import MAX_RECIPIENTS
from .vocabulary import MessageType, Status
from .wire import Millis, Slug, WireModel


class Incident(WireModel):
    """The broker's record of one incident (kept in its state store)."""

    id: Slug
    type: Slug
    owner: Slug
    label: Label
    status: Status
    participants: Annotated[tuple[Slug, ...], Field(max_length=MAX_RECIPIENTS + 1)]
    opened: Millis
    closed: Millis | None = None

    @property
    def is_open(self) -> bool:
        return self.closed is None


def opened_by(header: Header, previous: Incident | None) -> Incident:
    """The incident after an accepted ``activation`` (new, or participants replaced)."""
    if header.type is not MessageType.ACTIVATION or header.incident is None:
        raise ValueError("only an activation naming an incident opens one")
    participants = tuple(sorted({header.sender, *header.recipients}))
    if previous is not None:
        return previous.model_copy(update={"participants": participants})
    if header.control is None or header.control.incident_type is None:
        raise ValueError("a new incident needs control.incident_type")  # decide() refuses it
    return Incident(
        id=header.incident,
        type=header.control.incident_type,
        owner=header.sender,
        label=header.label,
        status=header.status,
        participants=participants,
        opened=header.created,
    )


def closed_by(incident: Incident, at: int) -> Incident:
    return incident.model_copy(update={"closed": at})
