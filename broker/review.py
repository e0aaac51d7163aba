"""Access reviews and directory history for security officers: pure functions, no I/O.

An *access review* asks, for one actor and period, whether what the directory
grants still matches what the actor does: a clearance above anything it
received, keys about to expire or already revoked (and attempts to use them),
refusals, no activity at all. The *directory history* says, version by version,
who changed what in the signed directory (clearances, categories, keys,
officers) and which authority key signed it; :func:`scoped_history` cuts it down
to one actor for that actor's officer.

Everything here reads an :class:`~broker.audit_index.AuditIndex` and verified
directory versions; the clock (``now``) is passed in.

>>> # report = access_review(index, directory, policy, "nacka", start, end, now=now_ms)
>>> # history = directory_history([v1, v2, v3]); scoped_history(history, "nacka")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from enum import Enum
from typing import Any, Final

from broker.core import Actor, ActorStatus, KeyRecord, Policy, VerifiedDirectory
from broker.core import frame as frames
from broker.core.limits import MAX_DIRECTORY_BYTES

from .audit_index import AuditIndex
from .errors import BrokerError

__all__ = [
    "DAY_MS",
    "EXPIRING_DAYS",
    "KEY_REFUSALS",
    "UnknownActor",
    "access_review",
    "directory_history",
    "dormant_actors",
    "scoped_history",
]

DAY_MS: Final = 24 * 3600 * 1000
EXPIRING_DAYS: Final = 30  # a key with fewer days left is "expiring"
KEY_REFUSALS: Final = ("sender_key_revoked", "receipt_key_invalid")
MAX_KEY_ATTEMPTS: Final = 100  # refusal events listed in a review
NOT_CLEARED: Final = ("recipient_not_cleared", "recipient_lacks_category")


class UnknownActor(BrokerError, LookupError):
    """The directory has no actor with this id."""

    code = "unknown_actor"

    def __init__(self, actor: str) -> None:
        super().__init__(f"no actor {actor!r} in the directory")
        self.actor = actor


# --- access review ----------------------------------------------------------------------------


def _key_state(record: KeyRecord, now: int) -> str:
    if record.revoked_by(now):
        return "revoked"
    if now >= record.not_after:
        return "expired"
    if now < record.not_before:
        return "pending"  # published ahead of a rotation, not usable yet
    if record.not_after - now < EXPIRING_DAYS * DAY_MS:
        return "expiring"
    return "valid"


def _keys(actor: Actor, now: int) -> list[dict[str, Any]]:
    keys = []
    for kind, records in (("signing", actor.signing_keys), ("encryption", actor.encryption_keys)):
        for record in sorted(records, key=lambda r: (r.not_before, r.key_id)):
            keys.append(
                {
                    "key_id": record.key_id,
                    "kind": kind,
                    "not_before": record.not_before,
                    "not_after": record.not_after,
                    "revoked_at": record.revoked_at,
                    "days_left": max(0, (record.not_after - now) // DAY_MS),
                    "state": _key_state(record, now),
                }
            )
    return keys


def _clearance(actor: Actor, policy: Policy, traffic: dict[str, Any]) -> dict[str, Any]:
    ladder = policy.ladder_order
    held = actor.clearance
    received = [c for c in traffic["received"]["by_classification"] if ladder.knows(c)]
    highest = max(received, key=ladder.rank) if received else None
    unused: list[str] = []
    if ladder.knows(held):
        floor = -1 if highest is None else ladder.rank(highest)
        unused = [
            level for level in ladder.levels if floor < ladder.rank(level) <= ladder.rank(held)
        ]
    used_categories = set(traffic["received"]["by_category"])
    notes = []
    if highest is None:
        notes.append(
            f"clearance {held}, nothing received in the period: consider whether it is needed"
        )
    elif unused:
        notes.append(f"clearance {held}, nothing above {highest} received: consider lowering")
    else:
        notes.append(f"clearance {held}, used up to {highest}")
    if ladder.knows(held) and not ladder.at_most(held, policy.ceiling):
        notes.append(f"{held} is above the broker's ceiling {policy.ceiling}: never routed here")
    refused_for = sum(traffic["named_in_refusals"]["by_reason"].get(r, 0) for r in NOT_CLEARED)
    if refused_for:
        notes.append(
            f"{refused_for} messages refused because the actor lacked clearance or categories:"
            " consider raising"
        )
    return {
        "held": held,
        "categories": list(actor.categories),
        "highest_received": highest,
        "unused_levels": unused,
        "unused_categories": [c for c in actor.categories if c not in used_categories],
        "note": "; ".join(notes),
    }


def access_review(
    index: AuditIndex,
    directory: VerifiedDirectory,
    policy: Policy,
    actor: str,
    start: int,
    end: int,
    now: int,
) -> dict[str, Any]:
    """The access review report for one actor and the period ``start <= at < end``.

    ``clearance`` compares the level held with the highest level received;
    ``keys`` lists every key with its state at ``now`` (``expiring``: fewer than 30
    days left; ``pending``: not valid yet); ``revoked_key_attempts`` the actor's
    refusals for a revoked or invalid key (at most 100); ``dormant`` is True when no
    event concerns the actor in the period (officers' queries about it do not count).
    Raises :class:`UnknownActor` when the directory has no such actor.
    """
    found = directory.actor(actor)
    if found is None:
        raise UnknownActor(actor)
    traffic = index.actor_traffic(actor, start, end)
    return {
        "actor": actor,
        "name": found.name,
        "status": found.status.value,
        "directory_version": directory.version,
        "from": start,
        "to": end,
        "generated": now,
        "clearance": _clearance(found, policy, traffic),
        "keys": _keys(found, now),
        "revoked_key_attempts": index.refusals(
            actor, start, end, reasons=KEY_REFUSALS, limit=MAX_KEY_ATTEMPTS
        ),
        "refused": {
            "total": traffic["refused"]["total"],
            "by_reason": traffic["refused"]["by_reason"],
        },
        "dormant": not index.active(actor, start, end),
        "last_activity": index.last_activity(actor, before=end),
        "traffic": traffic,
    }


def dormant_actors(
    index: AuditIndex, directory: VerifiedDirectory, start: int, end: int
) -> list[str]:
    """Active actors (by directory status) with no event concerning them in the period.

    Suspended and retired actors are left out: they are quiet by design.
    """
    return [
        a.id
        for a in directory.document.actors
        if a.status is ActorStatus.ACTIVE and not index.active(a.id, start, end)
    ]


# --- directory history ------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON value for a change's ``from``/``to``."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _change(
    who: tuple[str, str], change: str, before: Any = None, after: Any = None, **more: Any
) -> dict[str, Any]:
    return {
        who[0]: who[1],
        "change": change,
        "from": _plain(before),
        "to": _plain(after),
        "key_id": None,
    } | more


def _key_changes(
    who: tuple[str, str], kind: str, before: Iterable[KeyRecord], after: Iterable[KeyRecord]
) -> list[dict[str, Any]]:
    old = {k.key_id: k for k in before}
    new = {k.key_id: k for k in after}
    changes = []
    for key_id, record in new.items():
        common = {"key_id": key_id, "key_kind": kind}
        previous = old.get(key_id)
        if previous is None:
            validity = {"not_before": record.not_before, "not_after": record.not_after}
            changes.append(_change(who, "key_added", None, validity, **common))
            continue
        if previous.revoked_at != record.revoked_at:
            change = "key_revoked" if previous.revoked_at is None else "key_revocation_changed"
            changes.append(_change(who, change, previous.revoked_at, record.revoked_at, **common))
        if previous.not_after != record.not_after:
            changes.append(
                _change(who, "key_expiry_changed", previous.not_after, record.not_after, **common)
            )
        if previous.not_before != record.not_before:
            changes.append(
                _change(who, "key_start_changed", previous.not_before, record.not_before, **common)
            )
    for key_id in sorted(old.keys() - new.keys()):
        changes.append(_change(who, "key_removed", key_id=key_id, key_kind=kind))
    return changes


def _field_changes(
    who: tuple[str, str], before: Any, after: Any, fields: Sequence[str], **more: Any
) -> list[dict[str, Any]]:
    return [
        _change(who, name, getattr(before, name), getattr(after, name), **more)
        for name in fields
        if getattr(before, name) != getattr(after, name)
    ]


_ACTOR_FIELDS: Final = ("name", "kind", "status", "clearance", "categories", "groups", "roles")


def _principal_changes(
    role: str,
    before: Sequence[Any],
    after: Sequence[Any],
    fields: Sequence[str],
    key_sets: Sequence[tuple[str, str]],
    extra: Callable[[Any], dict[str, Any]] = lambda _: {},
) -> list[dict[str, Any]]:
    """Changes to one kind of principal (actors, officers, brokers) between two versions."""
    old = {p.id: p for p in before}
    new = {p.id: p for p in after}
    changes: list[dict[str, Any]] = []
    for pid in sorted(old.keys() | new.keys()):
        who = (role, pid)
        if pid not in old:
            more = extra(new[pid])
            changes.append(_change(who, "added", **more))
            for attribute, kind in key_sets:
                key_changes = _key_changes(who, kind, (), getattr(new[pid], attribute))
                changes += [c | more for c in key_changes]
            continue
        if pid not in new:
            changes.append(_change(who, "removed", **extra(old[pid])))
            continue
        more = extra(new[pid])
        changes += _field_changes(who, old[pid], new[pid], fields, **more)
        for attribute, kind in key_sets:
            key_changes = _key_changes(
                who, kind, getattr(old[pid], attribute), getattr(new[pid], attribute)
            )
            changes += [c | more for c in key_changes]
    return changes


def _officer_scope(officer: Any) -> dict[str, Any]:
    return {"scope": officer.actor}


def _changes(before: VerifiedDirectory | None, after: VerifiedDirectory) -> list[dict[str, Any]]:
    old = before.document if before is not None else None
    new = after.document
    region = ("authority", new.region)
    changes = _key_changes(
        region, "authority", old.authority_keys if old else (), new.authority_keys
    )
    changes += _principal_changes(
        "actor",
        old.actors if old else (),
        new.actors,
        _ACTOR_FIELDS,
        (("signing_keys", "signing"), ("encryption_keys", "encryption")),
    )
    officers = _principal_changes(
        "officer",
        old.officers if old else (),
        new.officers,
        ("name",),
        (("signing_keys", "signing"),),
        _officer_scope,
    )
    # A change of scope is reported as such (``from``/``to`` the scoped actor).
    if old is not None:
        before_scope = {o.id: o.actor for o in old.officers}
        for officer in new.officers:
            if officer.id in before_scope and before_scope[officer.id] != officer.actor:
                officers.append(
                    _change(
                        ("officer", officer.id),
                        "scope",
                        before_scope[officer.id],
                        officer.actor,
                        scope=officer.actor,
                    )
                )
    changes += officers
    changes += _principal_changes(
        "broker",
        old.brokers if old else (),
        new.brokers,
        ("name",),
        (("signing_keys", "signing"),),
    )
    changes += _principal_changes("group", old.groups if old else (), new.groups, ("name",), ())
    return changes


def _signer_id(version: VerifiedDirectory) -> str:
    signed = frames.decode(
        version.raw,
        frames.Kind.DIRECTORY,
        max_bytes=MAX_DIRECTORY_BYTES,
        max_section=(MAX_DIRECTORY_BYTES,),
    )
    return signed.signer_id


def directory_history(versions: Sequence[VerifiedDirectory]) -> list[dict[str, Any]]:
    """Per version, oldest first: who signed it and what changed from the one before.

    Each change names its principal (``"actor"``, ``"officer"``, ``"broker"``,
    ``"group"`` or ``"authority"``: the id), ``change`` (``added``, ``removed``, a field
    name such as ``clearance``/``categories``/``status``/``groups``, or ``key_added``,
    ``key_revoked``, ``key_expiry_changed``, ...), ``from``, ``to`` and ``key_id`` (key
    changes also carry ``key_kind``; officer changes their ``scope``). Version 1 lists
    everything as added; a list that starts later marks its first entry ``baseline``
    with no changes. ``signed_by`` is the authority key id in the version's frame.
    """
    ordered = sorted(versions, key=lambda v: v.version)
    history = []
    previous: VerifiedDirectory | None = None
    for version in ordered:
        entry: dict[str, Any] = {
            "version": version.version,
            "hash": version.hash,
            "previous": version.document.previous,
            "issued": version.document.issued,
            "signed_by": _signer_id(version),
        }
        if previous is None and version.version > 1:
            entry |= {"baseline": True, "changes": []}
        else:
            entry["changes"] = _changes(previous, version)
        history.append(entry)
        previous = version
    return history


def _concerns(change: dict[str, Any], actor: str) -> bool:
    if change.get("actor") == actor:
        return True
    if "officer" in change:  # the actor's own officers: added, keys, scope moved to/from
        return actor in (
            change.get("scope"),
            change["from"] if change["change"] == "scope" else None,
        )
    return False


def scoped_history(history: list[dict[str, Any]], actor: str) -> list[dict[str, Any]]:
    """``history`` with only the changes concerning ``actor``: its own record and keys, and
    the officers scoped to it. Every version stays listed (the chain itself is not secret)."""
    return [
        entry | {"changes": [c for c in entry["changes"] if _concerns(c, actor)]}
        for entry in history
    ]
