"""Key grants for late joiners, on the originator's side: whether to grant, as data.

When an actor joins an open incident late, the broker queues the newcomer (KV
``join.<incident>.<actor>``) and, once the incident lists it, asks each originator in
bounded batches for a grant of each still-valid incident message it sent (a
``grant_request`` notice). The originator's client answers from its own archive only:

- :class:`GrantRequest` - the request as read from a verified notice (or None).
- :func:`decide` - :class:`Grant`, :class:`Wait` or :class:`Refuse` (with a code).
  The broker's word is never enough: the message must be one this client sent (id,
  header hash, content key archived), unexpired, and the newcomer a participant of
  the open incident by an activation this client itself verified
  (:func:`~clients._crisis.incident_from_archive`); otherwise a compromised broker
  could collect content keys for anyone.
- :class:`PendingGrants` - the requests that wait for the activation adding the
  newcomer, bounded; the oldest are refused when it is full.

Pure: no I/O. The client looks up the archive and the verified incident, then seals
the grant (:func:`broker.core.make_grant`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from broker.core import Incident, NoticeBody

from ._archive import ArchivedMessage, Direction

__all__ = ["Grant", "GrantRequest", "PendingGrants", "Refuse", "Wait", "decide"]


@dataclass(frozen=True)
class GrantRequest:
    """The broker asks for a grant of ``message`` (``header_hash``) to ``newcomer``."""

    message: str
    header_hash: str
    newcomer: str

    @classmethod
    def of(cls, body: NoticeBody) -> GrantRequest | None:
        """The request a verified ``grant_request`` notice makes; None if it lacks the
        message, its header hash or exactly one newcomer."""
        if body.message is None or body.header_hash is None or len(body.recipients) != 1:
            return None
        return cls(body.message, body.header_hash, body.recipients[0])

    @property
    def key(self) -> tuple[str, str]:
        return (self.message, self.newcomer)


@dataclass(frozen=True)
class Grant:
    """Grant ``row`` (a sent incident message with its content key)."""

    row: ArchivedMessage


@dataclass(frozen=True)
class Wait:
    """The newcomer was not yet seen activated into ``incident``: ask again when an
    activation of it arrives."""

    incident: str


@dataclass(frozen=True)
class Refuse:
    code: str
    why: str


def decide(
    request: GrantRequest, row: ArchivedMessage | None, view: Incident | None, *, now: int
) -> Grant | Wait | Refuse:
    """Whether to grant ``request``: ``row`` is the archived message of that id (if any),
    ``view`` its incident as this client verified it (None: no activation seen)."""
    if (
        row is None
        or row.direction is not Direction.SENT
        or row.content_key is None
        or row.header.incident is None
    ):
        return Refuse("grant_not_ours", "not an incident message this client sent")
    if row.header_hash != request.header_hash:
        return Refuse("grant_hash_mismatch", "another header hash")
    if row.header.expires <= now:
        return Refuse("grant_expired", "the message has expired")
    if view is not None and not view.is_open:
        return Refuse("grant_incident_closed", "the incident is closed")
    if view is None or request.newcomer not in view.participants:
        return Wait(row.header.incident)
    return Grant(row)


class PendingGrants:
    """Grant requests waiting for an activation of their incident, oldest first, at most
    ``bound``. Iterating yields their keys, ``(message, newcomer)``."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self._waiting: OrderedDict[tuple[str, str], tuple[str, GrantRequest]] = OrderedDict()

    def add(self, request: GrantRequest, incident: str) -> list[GrantRequest]:
        """Keep ``request`` until :meth:`take` of ``incident``; returns the oldest
        requests dropped to stay within the bound."""
        self._waiting[request.key] = (incident, request)
        dropped = []
        while len(self._waiting) > self.bound:
            _, (_, old) = self._waiting.popitem(last=False)
            dropped.append(old)
        return dropped

    def discard(self, request: GrantRequest) -> None:
        self._waiting.pop(request.key, None)

    def take(self, incident: str) -> list[GrantRequest]:
        """Remove and return the requests waiting for ``incident``."""
        taken = [k for k, (i, _) in self._waiting.items() if i == incident]
        return [self._waiting.pop(k)[1] for k in taken]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._waiting))

    def __contains__(self, key: object) -> bool:
        return key in self._waiting

    def __len__(self) -> int:
        return len(self._waiting)
