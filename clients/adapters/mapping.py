"""From a routed source alert to the keyword arguments of :meth:`Client.send`.

Pure: no I/O, the clock passed in. The envelope is always of type ``alert``; what
the source meant (a new alert, an update, a cancel) travels in the payload's
``msg_type`` and in the envelope's references:

=========  ==========================  ==============  ==========================
source     previous envelope           effective type  references
=========  ==========================  ==============  ==========================
alert      none, or a cancel           alert           none
alert      an open one                 update          UPDATE -> previous
update     none                        update          none
update     any                         update          UPDATE -> previous
cancel     an open one                 cancel          CANCEL -> previous
cancel     none, or already a cancel   cancel          nothing to cancel: the
                                                       runtime skips it
=========  ==========================  ==============  ==========================

A source may re-issue an item as "alert" in a new version (Trafikverket and DATEX
have no update type); once recipients have an envelope for it, that is an update.
After a cancel the item starts afresh.

    >>> args = send_arguments("vma", alert, route, state.latest("vma", alert.item_id),
    ...                       policy=policy, now_ms=now)         # doctest: +SKIP
    >>> handle = await client.send(**args)                       # doctest: +SKIP
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from broker.core import MessageType, Policy, Reference, ReferenceKind, Status
from clients.adapters.model import MsgType, SourceAlert
from clients.adapters.rules import Route
from clients.adapters.state import Sent

__all__ = [
    "DEFAULT_LIFETIME_S",
    "MIN_LIFETIME_S",
    "effective_type",
    "lifetime_s",
    "nothing_to_cancel",
    "payload",
    "send_arguments",
]

DEFAULT_LIFETIME_S = 86_400  # an alert without a future expiry lives a day
MIN_LIFETIME_S = 60  # an envelope lives at least this long (unless the policy allows less)


def effective_type(alert: SourceAlert, previous: Sent | None) -> MsgType:
    """What the envelope means to recipients, given the previous envelope for the item.

    An ALERT with an open previous envelope is an UPDATE. A CANCEL is returned as
    CANCEL even when there is nothing to cancel (``previous`` is ``None`` or already a
    cancel): recipients never had the item, so the runtime skips it (see
    :func:`nothing_to_cancel`).
    """
    if alert.msg_type == MsgType.ALERT and previous is not None and not previous.cancelled:
        return MsgType.UPDATE
    return MsgType(alert.msg_type)


def nothing_to_cancel(alert: SourceAlert, previous: Sent | None) -> bool:
    """A CANCEL for an item recipients do not hold open: send nothing."""
    return alert.msg_type == MsgType.CANCEL and (previous is None or previous.cancelled)


def send_arguments(
    source: str,
    alert: SourceAlert,
    route: Route,
    previous: Sent | None,
    *,
    policy: Policy,
    now_ms: int,
    default_lifetime_s: float = DEFAULT_LIFETIME_S,
) -> dict[str, Any]:
    """Exactly the keyword arguments of :meth:`Client.send` for this alert and route.

    ``expires`` is a :class:`~datetime.timedelta`: until the alert's own expiry when
    that is in the future, else ``default_lifetime_s``; at least :data:`MIN_LIFETIME_S`
    and never more than the policy's ``max_lifetime_seconds`` (which wins if it is
    shorter). ``status`` is the route's if it names one, else the alert's; but exercise
    or test traffic is never turned into actual by a rule.
    """
    kind = effective_type(alert, previous)
    return {
        "to": list(route.to),
        "groups": list(route.groups),
        "incident": route.incident,
        "payload": payload(source, alert, kind),
        "label": route.label,
        "tlp": route.tlp,
        "priority": route.priority,
        "type": MessageType.ALERT.value,
        "status": _status(route, alert),
        "expires": timedelta(seconds=lifetime_s(alert, policy, now_ms, default_lifetime_s)),
        "references": _references(kind, previous),
    }


def payload(source: str, alert: SourceAlert, kind: MsgType | None = None) -> dict[str, Any]:
    """The JSON payload of an alert envelope; ``kind`` is the effective type."""
    return {
        "source": source,
        "format": alert.format,
        "item_id": alert.item_id,
        "version": alert.version,
        "msg_type": str(kind or alert.msg_type),
        "event": alert.event,
        "severity": str(alert.severity),
        "urgency": alert.urgency,
        "certainty": alert.certainty,
        "status": alert.status,
        "sent": alert.sent,
        "expires": alert.expires,
        "categories": list(alert.categories),
        "sender": alert.sender,
        "areas": [
            {
                "description": area.description,
                "counties": list(area.counties),
                "municipalities": list(area.municipalities),
                "geometry": area.geometry,
            }
            for area in alert.areas
        ],
        "infos": [
            {
                "language": info.language,
                "event": info.event,
                "headline": info.headline,
                "description": info.description,
                "instruction": info.instruction,
                "web": info.web,
            }
            for info in alert.infos
        ],
    }


def lifetime_s(
    alert: SourceAlert,
    policy: Policy,
    now_ms: int,
    default_lifetime_s: float = DEFAULT_LIFETIME_S,
) -> int:
    """Whole seconds the envelope lives (see :func:`send_arguments`)."""
    expires = alert.expires
    if isinstance(expires, int) and expires > now_ms:
        wanted = -(-(expires - now_ms) // 1000)  # round up: never end before the alert
    else:
        wanted = math.ceil(default_lifetime_s)  # the ingest configuration gives a float
    return min(max(wanted, MIN_LIFETIME_S), policy.limits.max_lifetime_seconds)


def _status(route: Route, alert: SourceAlert) -> str:
    own = str(alert.status)
    if route.status is None:
        return own
    if route.status == Status.ACTUAL and own != Status.ACTUAL:
        return own  # a rule never promotes exercise or test traffic to actual
    return route.status


def _references(kind: MsgType, previous: Sent | None) -> list[Reference]:
    if previous is None:
        return []
    if kind == MsgType.CANCEL:
        if previous.cancelled:
            return []  # nothing to cancel; the runtime skips it
        ref_kind = ReferenceKind.CANCEL
    elif kind == MsgType.UPDATE:
        ref_kind = ReferenceKind.UPDATE
    else:
        return []  # a new alert after a cancel
    return [Reference(kind=ref_kind, message=previous.message_id, header_hash=previous.header_hash)]
