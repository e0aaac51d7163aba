"""Incidents: what an ``activation`` opens and what messages naming it must respect.

An ``activation`` with a new incident id and ``control.incident_type`` opens
an incident; its sender is the owner, its recipients plus the sender are the
participants, its label the incident's default label, and its distribution
status (actual, exercise, test) the incident's, so exercise traffic never
mixes with actual. A later ``activation`` by the owner (or an authority) for
the same open incident replaces the participants: that is how actors join
and leave; actors that join get the incident's still-valid messages granted by their
originators (see ``grants``). ``control.communication_lead`` names the participant
whose approval makes a press line public (default: the owner).
``incident_close`` by the owner or an authority closes it.

Every other message naming an incident must come from a participant, go only
to participants, and carry the incident's status.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .envelope import Header, PressStage
from .labels import Label
from .limits import MAX_RECIPIENTS, MAX_REFERENCES
from .vocabulary import MessageType, Priority, ReferenceKind, Status
from .wire import Hash, HexId, Millis, Recipients, Slug, WireModel


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
    communication_lead: Slug | None = None  # approves press lines; None: the owner

    @property
    def lead(self) -> str:
        """The actor whose approval makes a press line public."""
        return self.communication_lead or self.owner

    @property
    def is_open(self) -> bool:
        return self.closed is None


class EntryReference(WireModel):
    kind: ReferenceKind
    message: HexId


class IncidentEntry(WireModel):
    """The broker's index entry for one accepted message naming an incident: header
    metadata only, never content. A client that was offline compares the index with what
    it holds to learn what it is missing (KV ``ssr_index``, key
    ``<incident>.<message id>``)."""

    id: HexId
    incident: Slug
    type: MessageType
    sender: Slug
    recipients: Recipients
    label: Label
    status: Status
    priority: Priority
    created: Millis
    expires: Millis
    header_hash: Hash
    references: Annotated[tuple[EntryReference, ...], Field(max_length=MAX_REFERENCES)] = ()
    press: PressStage | None = None
    deadline: Millis | None = None

    @classmethod
    def of(cls, header: Header, header_hash: str) -> IncidentEntry:
        if header.incident is None:
            raise ValueError("only messages naming an incident are indexed")
        control = header.control
        return cls(
            id=header.id,
            incident=header.incident,
            type=header.type,
            sender=header.sender,
            recipients=header.recipients,
            label=header.label,
            status=header.status,
            priority=header.priority,
            created=header.created,
            expires=header.expires,
            header_hash=header_hash,
            references=tuple(
                EntryReference(kind=r.kind, message=r.message) for r in header.references
            ),
            press=control.press if control else None,
            deadline=control.deadline if control else None,
        )


def opened_by(header: Header, previous: Incident | None) -> Incident:
    """The incident after an accepted ``activation`` (new, or participants replaced)."""
    if header.type is not MessageType.ACTIVATION or header.incident is None:
        raise ValueError("only an activation naming an incident opens one")
    participants = tuple(sorted({header.sender, *header.recipients}))
    lead = header.control.communication_lead if header.control else None
    if previous is not None:
        update: dict[str, object] = {"participants": participants}
        if lead is not None:
            update["communication_lead"] = lead
        return previous.model_copy(update=update)
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
        communication_lead=lead,
    )


def newcomers(previous: Incident | None, current: Incident) -> tuple[str, ...]:
    """Actors taking part in ``current`` who did not in ``previous`` (late joiners); none
    when ``previous`` is None, since the participants of a new incident received all of it."""
    before = set(previous.participants) if previous is not None else set(current.participants)
    return tuple(p for p in current.participants if p not in before)


def closed_by(incident: Incident, at: int) -> Incident:
    return incident.model_copy(update={"closed": at})
