"""The crisis workflows' views, built from the archive: pure functions, no I/O.

- :func:`situation_picture` - the lägesbild of an incident: per actor its latest
  unexpired ``situation_report``, and the history of every report with its state.
- :func:`request_status` - who answered a ``request`` (a reply from a recipient) and
  who is overdue.
- :func:`press_lines` - the press lines of an incident: drafts, comments, approvals.
- :func:`incident_from_archive` - an incident's owner, participants and lead as this
  client has itself verified them (its archived activations), not as the broker says.
- :func:`press_recipients` - who a draft press line goes to.

The client reads the archive and decrypts on demand (``payload`` callables); these
functions only decide. Times are epoch milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from broker.core import (
    Header,
    Incident,
    IncidentEntry,
    Label,
    MessageType,
    Policy,
    PressStage,
    ReferenceKind,
    Role,
    Status,
    VerifiedDirectory,
)
from broker.core.incidents import closed_by, opened_by

from ._archive import ArchivedMessage, Direction

__all__ = [
    "ImportResult",
    "PressComment",
    "PressLine",
    "RequestStatus",
    "SituationEntry",
    "SituationPicture",
    "incident_from_archive",
    "missing_entries",
    "press_lines",
    "press_recipients",
    "request_status",
    "situation_picture",
]

Payload = Callable[[ArchivedMessage], bytes | None]
EntryState = Literal["current", "superseded", "cancelled", "expired"]


@dataclass(frozen=True)
class SituationEntry:
    """One situation report in a picture. ``payload`` is None when it cannot be opened
    any more (expired, or the directory no longer vouches for it)."""

    actor: str
    message_id: str
    created: int
    expires: int
    status: Status
    label: Label
    state: EntryState
    granted: bool  # it reached this actor as a late joiner's key grant
    content_type: str
    payload: bytes | None = field(default=None, repr=False)

    @property
    def text(self) -> str | None:
        return None if self.payload is None else self.payload.decode("utf-8", "replace")

    def json(self) -> Any:
        """The payload parsed as JSON; raises :class:`ValueError` if it is not JSON or
        could not be opened."""
        if self.payload is None:
            raise ValueError(f"{self.message_id}: the payload cannot be opened")
        return json.loads(self.payload)


@dataclass(frozen=True)
class SituationPicture:
    """An incident's lägesbild as this client holds it.

    ``current`` maps each actor to its latest unexpired, not superseded or cancelled
    report; ``history`` holds every archived report, oldest first, with its state.
    ``missing`` lists the broker's index entries of messages to or from this actor that
    it does not hold (``None`` when the broker could not be asked: ``online`` False).
    """

    incident: str
    at: int
    current: dict[str, SituationEntry]
    history: tuple[SituationEntry, ...]
    missing: tuple[IncidentEntry, ...] | None
    online: bool


@dataclass(frozen=True)
class RequestStatus:
    """A ``request`` this client sent: who answered, who has not, who is overdue.

    ``answers`` maps a recipient to the id of its first reply; ``overdue`` lists the
    unanswered recipients once the deadline passed (empty before, or without deadline).
    """

    message_id: str
    incident: str | None
    created: int
    expires: int
    deadline: int | None
    recipients: tuple[str, ...]
    answers: dict[str, str]
    unanswered: tuple[str, ...]
    overdue: tuple[str, ...]


@dataclass(frozen=True)
class PressComment:
    actor: str
    message_id: str
    created: int
    text: str | None


@dataclass(frozen=True)
class PressLine:
    """A press line of an incident: its draft, the comments this client holds, and the
    lead's approval. ``author``/``text`` are None when this client has only the approval
    (it was not among the draft's communicators)."""

    draft_id: str
    incident: str
    status: Status
    author: str | None
    created: int | None
    text: str | None
    state: Literal["draft", "approved"]
    comments: tuple[PressComment, ...] = ()
    approved_by: str | None = None
    approval_id: str | None = None
    approved_at: int | None = None
    approved_text: str | None = None


@dataclass(frozen=True)
class ImportResult:
    """What :meth:`Client.import_bundle` did with a bundle's items."""

    admitted: int  # new messages for this actor, handed to the application
    duplicates: int  # already seen (from NATS or an earlier import)
    not_for_me: int  # addressed to other actors: skipped
    refused: int  # did not verify or open, or the broker's policy refuses it


def _text(payload: bytes | None) -> str | None:
    return None if payload is None else payload.decode("utf-8", "replace")


def situation_picture(
    incident: str,
    rows: Iterable[ArchivedMessage],
    *,
    now: int,
    payload: Payload,
    missing: Sequence[IncidentEntry] | None,
) -> SituationPicture:
    """The picture from the incident's archived messages (reports, and the messages that
    update or cancel them). Only a report's own sender can supersede or cancel it."""
    rows = list(rows)
    reports = [r for r in rows if r.header.type is MessageType.SITUATION_REPORT]
    by_id = {r.message_id: r for r in rows}
    cancelled: set[str] = set()
    superseded: set[str] = set()
    for row in rows:
        for kind, into in ((ReferenceKind.CANCEL, cancelled), (ReferenceKind.UPDATE, superseded)):
            for target in row.references(kind):
                original = by_id.get(target)
                if original is not None and original.header.sender == row.header.sender:
                    into.add(target)
    latest: dict[str, ArchivedMessage] = {}
    for report in reports:  # oldest first, so the last one kept is the newest
        latest[report.header.sender] = report
    for report in reports:
        if latest[report.header.sender] is not report:
            superseded.add(report.message_id)
    history: list[SituationEntry] = []
    current: dict[str, SituationEntry] = {}
    for report in reports:
        header = report.header
        state: EntryState
        if report.message_id in cancelled:
            state = "cancelled"
        elif report.message_id in superseded:
            state = "superseded"
        elif header.expires <= now:
            state = "expired"
        else:
            state = "current"
        entry = SituationEntry(
            actor=header.sender,
            message_id=header.id,
            created=header.created,
            expires=header.expires,
            status=header.status,
            label=header.label,
            state=state,
            granted=report.direction is Direction.GRANTED,
            content_type=header.content_type,
            payload=payload(report) if state != "expired" else None,
        )
        history.append(entry)
        if state == "current":
            current[header.sender] = entry
    return SituationPicture(
        incident=incident,
        at=now,
        current=current,
        history=tuple(history),
        missing=None if missing is None else tuple(missing),
        online=missing is not None,
    )


def missing_entries(
    entries: Iterable[IncidentEntry],
    *,
    incident: str,
    me: str,
    now: int,
    held: Callable[[str], bool],
) -> list[IncidentEntry]:
    """The index entries of ``incident`` to or from ``me``, unexpired, that ``held`` says
    this client does not have; oldest first."""
    found = [
        e
        for e in entries
        if e.incident == incident
        and e.expires > now
        and (e.sender == me or me in e.recipients)
        and not held(e.id)
    ]
    return sorted(found, key=lambda e: (e.created, e.id))


def request_status(
    request: ArchivedMessage, replies: Iterable[ArchivedMessage], *, now: int
) -> RequestStatus:
    """Who of ``request``'s recipients answered with a reply (the first one counts)."""
    header = request.header
    deadline = header.control.deadline if header.control else None
    answers: dict[str, str] = {}
    for reply in sorted(replies, key=lambda r: (r.header.created, r.message_id)):
        sender = reply.header.sender
        if (
            sender in header.recipients
            and sender not in answers
            and request.message_id in reply.references(ReferenceKind.REPLY)
        ):
            answers[sender] = reply.message_id
    unanswered = tuple(r for r in header.recipients if r not in answers)
    overdue = unanswered if deadline is not None and deadline <= now else ()
    return RequestStatus(
        message_id=header.id,
        incident=header.incident,
        created=header.created,
        expires=header.expires,
        deadline=deadline,
        recipients=header.recipients,
        answers=answers,
        unanswered=unanswered,
        overdue=overdue,
    )


def _press(row: ArchivedMessage) -> PressStage | None:
    header = row.header
    if header.type is not MessageType.COMMUNICATION or header.control is None:
        return None
    return header.control.press


def press_lines(
    incident: str,
    rows: Iterable[ArchivedMessage],
    *,
    payload: Payload,
    view: Incident | None,
) -> list[PressLine]:
    """The incident's press lines, oldest draft first. A comment is a ``communication``
    replying to a draft; an approval an ``approved`` one updating it.

    ``view`` is the incident as this client verified it (:func:`incident_from_archive`):
    an approval counts only from its lead, with the incident's (and the draft's) status;
    of several, the lead's latest. Anyone else's "approval" is ignored, however dated.
    """
    rows = sorted(rows, key=lambda r: (r.header.created, r.message_id))
    drafts = {r.message_id: r for r in rows if _press(r) is PressStage.DRAFT}
    approvals: dict[str, ArchivedMessage] = {}
    comments: dict[str, list[PressComment]] = {}
    for row in rows:
        stage = _press(row)
        if stage is PressStage.APPROVED:
            if view is None or not _approves(row.header, view):
                continue
            for target in row.references(ReferenceKind.UPDATE)[:1]:
                draft = drafts.get(target)
                if draft is None or draft.header.status is row.header.status:
                    approvals[target] = row  # oldest first: the latest one stays
        elif stage is None and row.header.type is MessageType.COMMUNICATION:
            for target in row.references(ReferenceKind.REPLY):
                if target in drafts:
                    comments.setdefault(target, []).append(
                        PressComment(
                            row.header.sender,
                            row.message_id,
                            row.header.created,
                            _text(payload(row)),
                        )
                    )
    lines: list[PressLine] = []
    for draft_id in sorted(
        {*drafts, *approvals},
        key=lambda d: (drafts[d] if d in drafts else approvals[d]).header.created,
    ):
        draft, approval = drafts.get(draft_id), approvals.get(draft_id)
        known = draft or approval
        assert known is not None
        lines.append(
            PressLine(
                draft_id=draft_id,
                incident=incident,
                status=known.header.status,
                author=draft.header.sender if draft else None,
                created=draft.header.created if draft else None,
                text=_text(payload(draft)) if draft else None,
                state="approved" if approval else "draft",
                comments=tuple(comments.get(draft_id, ())),
                approved_by=approval.header.sender if approval else None,
                approval_id=approval.message_id if approval else None,
                approved_at=approval.header.created if approval else None,
                approved_text=_text(payload(approval)) if approval else None,
            )
        )
    return lines


def _approves(header: Header, view: Incident) -> bool:
    return (
        header.incident == view.id and header.sender == view.lead and header.status is view.status
    )


def incident_from_archive(
    incident: str, rows: Iterable[ArchivedMessage], *, directory: VerifiedDirectory
) -> Incident | None:
    """The incident as this client's archived activations and closes show it, oldest
    first: the first activation's sender owns it. A later activation counts only if its
    sender is the owner or an authority in ``directory`` (this client's verified one) and
    it carries the first one's status: its sender and recipients then take part, and a
    communication lead it names leads (default: the owner). An ``incident_close`` by the
    same closes it (``closed`` set); nothing after it counts. Anyone else's activation or
    close is ignored: a forged one must not make its recipients participants (the
    originators grant content keys to participants). None without an activation.
    """
    view: Incident | None = None
    ordered = sorted(rows, key=lambda r: (r.header.created, r.message_id))
    for row in ordered:
        header = row.header
        if header.incident != incident:
            continue
        if header.type is MessageType.ACTIVATION and view is None:
            control = header.control
            view = Incident(
                id=incident,
                type=(control.incident_type if control else None) or "unknown",
                owner=header.sender,
                label=header.label,
                status=header.status,
                participants=tuple(sorted({header.sender, *header.recipients})),
                opened=header.created,
                communication_lead=control.communication_lead if control else None,
            )
        elif view is None or not _may_steer(header, view, directory):
            continue
        elif header.type is MessageType.ACTIVATION:
            view = opened_by(header, view)
        elif header.type is MessageType.INCIDENT_CLOSE:
            return closed_by(view, header.created)
    return view


def _may_steer(header: Header, view: Incident, directory: VerifiedDirectory) -> bool:
    """The owner or an authority, with the incident's status."""
    if header.status is not view.status:
        return False
    if header.sender == view.owner:
        return True
    actor = directory.actor(header.sender)
    return actor is not None and actor.has_role(Role.AUTHORITY)


def press_recipients(
    incident: Incident, policy: Policy, directory: VerifiedDirectory, me: str
) -> tuple[str, ...]:
    """A draft's recipients: the participants in the incident type's communicators group,
    and the lead; without any, every participant. Never ``me``."""
    template = policy.incident_type(incident.type)
    chosen: set[str] = set()
    if template is not None and template.communicators is not None:
        members = directory.members(template.communicators) or ()
        chosen.update(m for m in members if m in incident.participants)
    chosen.add(incident.lead)
    chosen.discard(me)
    if not chosen:
        chosen = set(incident.participants) - {me}
    return tuple(sorted(chosen))
