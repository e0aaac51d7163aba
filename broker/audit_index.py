"""A queryable SQLite index of the audit stream, for security officers and access reviews.

The audit trail itself lives in the JetStream stream ``SSR_AUDIT`` (append-only,
sealed by checkpoints); this module owns a *derived* copy in one SQLite file per
broker process, so that "everything about message M", "actor A's traffic last
month" and "the refusals of A" are indexed queries instead of stream scans. The
file is disposable: a file written by another schema version, or one that is not
a database at all, is deleted and rebuilt from the stream.

    events(seq PK, kind, at, actor, message, reason, officer, event_id, dup,
           classification, tlp, status, size, leaf, body)
    parties(actor, role, seq, kind, at)   -- one row per actor an event concerns:
                                          -- role 'actor' (who) or 'recipient'

:func:`concerns` is the Python statement of what ``parties`` indexes: an event
concerns an actor when it is the event's ``actor`` (for officer events: the actor
the officer asked about) or one of its ``recipients``.

Hostile or broken input never raises: an event larger than
:data:`MAX_EVENT_BYTES` (refused before parsing), not UTF-8, not JSON, nested
too deeply or with wrong field types is stored as kind ``unreadable`` with its
size and SHA-256, so the gap is visible and sequences stay contiguous. An event
with the id of one already indexed (JetStream's duplicate window had passed) is
stored and listed but marked ``dup`` and left out of every summary.

:class:`AuditFollower` keeps the index current from the stream; it never dies on
bad data and retries while NATS is away.

>>> # index = AuditIndex(data_dir / "audit-index.sqlite")
>>> # await AuditFollower(bus, index).catch_up()
>>> # index.message_trace(message_id)["receipts"]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from broker.core import auditchain, canonical, crypto
from broker.core.errors import CanonicalJsonError

from . import subjects
from .audit import EVENT_FIELDS, AuditKind
from .bus import JetStreamBus
from .errors import NatsUnavailable

__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "MAX_EVENT_BYTES",
    "MAX_LIMIT",
    "REFUSAL_KINDS",
    "SCHEMA_VERSION",
    "UNREADABLE",
    "AuditFollower",
    "AuditIndex",
    "concerns",
]

log = logging.getLogger("ssr.audit_index")

SCHEMA_VERSION: Final = 1
# Refused before parsing: the bounds the audit chain itself applies.
MAX_EVENT_BYTES: Final = auditchain.MAX_EVENT_BYTES
MAX_CHECKPOINT_BYTES: Final = auditchain.MAX_CHECKPOINT_BYTES
MAX_FIELD_CHARS: Final = 256  # ids, reason codes, status values
MAX_DETAIL_CHARS: Final = 2000
MAX_EVENT_RECIPIENTS: Final = 1000
MAX_LIMIT: Final = 1000  # events per query page
MAX_KINDS: Final = 32  # kinds in one filter
MAX_TRACE_EVENTS: Final = 1000  # events listed in a message trace
MAX_TRACE_REFUSALS: Final = 100
MAX_TRACE_RECEIPTS: Final = 10_000
MAX_RECENT_REFUSALS: Final = 50
UNREADABLE: Final = "unreadable"

REFUSAL_KINDS: Final = (
    AuditKind.REJECTED.value,
    AuditKind.RECEIPT_REJECTED.value,
    AuditKind.DIRECTORY_REJECTED.value,
    AuditKind.GRANT_REJECTED.value,
)
OFFICER_KINDS: Final = (AuditKind.OFFICER_QUERY.value, AuditKind.OFFICER_DENIED.value)
RECEIPT_KINDS: Final = ("delivered", "read", "acknowledged")
_KNOWN_KINDS: Final = frozenset(k.value for k in AuditKind)
_CHECKPOINT_MARK: Final = b'"kind":"checkpoint"'
_LABEL_TEXT: Final = ("policy", "classification", "tlp", "legal")
_MAX_WHY_CHARS: Final = 200
_FOREVER: Final = 2**63 - 1
# What actor_traffic groups by: SQL expressions over ``e``, the event row.
_GROUP_BY: Final = {
    "classification": "e.classification",
    "tlp": "e.tlp",
    "status": "e.status",
    "reason": "e.reason",
    "kind": "e.kind",
    "detail": "json_extract(e.body, '$.detail')",
}
_OPTIONAL_TEXT: Final = (
    "actor",
    "message",
    "reason",
    "status",
    "priority",
    "incident",
    "officer",
)
_FIELDS: Final = EVENT_FIELDS

_SCHEMA = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    at INTEGER,
    actor TEXT,
    message TEXT,
    reason TEXT,
    officer TEXT,
    event_id TEXT,
    dup INTEGER NOT NULL DEFAULT 0,
    classification TEXT,
    tlp TEXT,
    status TEXT,
    size INTEGER NOT NULL,
    leaf TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX events_at ON events(at);
CREATE INDEX events_kind ON events(kind, seq);
CREATE INDEX events_actor ON events(actor, kind, at);
CREATE INDEX events_message ON events(message, seq);
CREATE INDEX events_officer ON events(officer, seq);
CREATE INDEX events_event_id ON events(event_id);
CREATE TABLE parties (
    actor TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('actor', 'recipient')),
    seq INTEGER NOT NULL REFERENCES events(seq),
    kind TEXT NOT NULL,
    at INTEGER,
    PRIMARY KEY (actor, seq, role)
) WITHOUT ROWID;
CREATE INDEX parties_at ON parties(actor, at);
CREATE INDEX parties_kind ON parties(actor, role, kind, at);
"""


# --- what an event concerns ---------------------------------------------------------------


def concerns(event: Mapping[str, Any], actor: str) -> bool:
    """Whether ``event`` concerns ``actor``: it is the event's actor or among its recipients.

    For officer events the ``actor`` field holds the actor the officer asked about,
    so an officer's query about A concerns A. Malformed events concern nobody.

    >>> concerns({"actor": "nacka", "recipients": ["solna"]}, "solna")
    True
    """
    if event.get("actor") == actor:
        return True
    recipients = event.get("recipients")
    return isinstance(recipients, list) and actor in recipients


# --- reading one event ----------------------------------------------------------------------


class _Unreadable(Exception):
    """Why an event cannot be indexed as what it claims to be."""


def _text(value: Any, name: str, *, limit: int = MAX_FIELD_CHARS, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or len(value) > limit:
        raise _Unreadable(f"field {name} is not a string of at most {limit} characters")


def _check_label(label: Any) -> None:
    if label is None:
        return
    if not isinstance(label, dict) or len(label) > 16:
        raise _Unreadable("field label is not an object")
    for name, value in label.items():
        if isinstance(value, list) and name not in _LABEL_TEXT:
            if len(value) > 64 or not all(isinstance(v, str) and len(v) <= 256 for v in value):
                raise _Unreadable("a label field is not a list of strings")
        elif value is not None and not (isinstance(value, str) and len(value) <= 256):
            raise _Unreadable("a label field is not a string")


def _check_event(event: Any) -> dict[str, Any]:
    """The event with every standard field present, or :class:`_Unreadable`."""
    if not isinstance(event, dict):
        raise _Unreadable("not a JSON object")
    kind = event.get("kind")
    if kind == AuditKind.CHECKPOINT.value:
        return event  # another module's format: stored, not interpreted
    if not isinstance(kind, str) or kind not in _KNOWN_KINDS:
        raise _Unreadable("unknown kind")
    if event.get("v") != 1 or isinstance(event.get("v"), bool):
        raise _Unreadable("unsupported event version")
    at = event.get("at")
    if not isinstance(at, int) or isinstance(at, bool) or not 0 <= at <= 2**53 - 1:
        raise _Unreadable("field at is not a time in epoch milliseconds")
    _text(event.get("id"), "id", optional=False)
    _text(event.get("broker"), "broker", optional=False)
    for name in _OPTIONAL_TEXT:
        _text(event.get(name), name)
    _text(event.get("detail", ""), "detail", limit=MAX_DETAIL_CHARS, optional=False)
    recipients = event.get("recipients", [])
    if (
        not isinstance(recipients, list)
        or len(recipients) > MAX_EVENT_RECIPIENTS
        or not all(isinstance(r, str) and len(r) <= MAX_FIELD_CHARS for r in recipients)
    ):
        raise _Unreadable("field recipients is not a list of actor ids")
    _check_label(event.get("label"))
    filled = {name: None for name in _FIELDS} | {"recipients": [], "detail": ""}
    return filled | event


def _parse(data: bytes) -> dict[str, Any]:
    """Parse one event with every size bound checked before the parser runs."""
    bound = MAX_EVENT_BYTES
    if len(data) > MAX_EVENT_BYTES and _CHECKPOINT_MARK in data[:1024]:
        bound = MAX_CHECKPOINT_BYTES
    if len(data) > bound:
        raise _Unreadable(f"{len(data)} bytes exceed the bound of {bound}")
    try:
        value = canonical.loads(data, max_bytes=bound, require_canonical=False)
        # Not required to be canonical (this is an index, not a verifier), but what the
        # canonical writer refuses is refused here: nesting deeper than 16, lone surrogates
        # (which SQLite could not store either).
        canonical.dumps(value)
    except CanonicalJsonError as exc:
        raise _Unreadable(exc.message) from exc
    event = _check_event(value)
    if len(data) > MAX_EVENT_BYTES and event.get("kind") != AuditKind.CHECKPOINT.value:
        raise _Unreadable(f"{len(data)} bytes exceed the bound of {MAX_EVENT_BYTES}")
    return event


def _unreadable_event(seq: int, size: int, leaf: str, why: str) -> dict[str, Any]:
    event: dict[str, Any] = {name: None for name in _FIELDS}
    event |= {
        "kind": UNREADABLE,
        "recipients": [],
        "detail": f"unreadable event ({why[:_MAX_WHY_CHARS]}); {size} bytes, sha256 {leaf}",
        "size": size,
        "sha256": leaf,
    }
    return event


# --- the index ------------------------------------------------------------------------------


def _clamp_limit(limit: int) -> int:
    return max(1, min(int(limit), MAX_LIMIT))


def _counts(rows: Iterable[tuple[Any, int]], missing: str = "none") -> dict[str, int]:
    return {(missing if key is None else str(key)): int(n) for key, n in rows}


class AuditIndex:
    """A queryable SQLite index of the audit stream (one file per broker process; rebuilt
    from the stream).

    Thread-safe (one connection behind a lock), so callers may use it from the event loop
    or from worker threads. Every query is bounded: pages of 1..1000 events, traces of
    at most 1000 events, aggregates grouped in SQL. Time windows are ``start <= at < end``
    in epoch milliseconds.

    >>> # index = AuditIndex(Path("/var/lib/ssr/audit-index.sqlite"))
    >>> # index.add([(1, event_bytes)]); index.events(kinds=["rejected"], limit=50)
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = self._open()

    # --- lifecycle ----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # it is only an index: the stream is the truth
        return db

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            db.close()
        except sqlite3.DatabaseError as exc:  # not a database at all
            db.close()
            log.warning("audit index %s unreadable (%s): rebuilding", self.path, exc)
            self._delete_files()
            version, tables = 0, 0
        db = self._connect()
        if version == SCHEMA_VERSION:
            return db
        if tables:
            log.warning(
                "audit index %s has schema %s, not %s: rebuilding from the stream",
                self.path,
                version,
                SCHEMA_VERSION,
            )
            db.close()
            self._delete_files()
            db = self._connect()
        self._create(db)
        return db

    @staticmethod
    def _create(db: sqlite3.Connection) -> None:
        db.execute("BEGIN")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _delete_files(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{self.path}{suffix}").unlink()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def reset(self) -> None:
        """Forget everything (the stream was replaced); the follower then rebuilds."""
        with self._transaction() as db:
            db.execute("DELETE FROM parties")
            db.execute("DELETE FROM events")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    # --- writing ------------------------------------------------------------------------

    def add(self, entries: Iterable[tuple[int, bytes]]) -> int:
        """Index ``(stream seq, event bytes)`` pairs; returns how many sequences were new.

        Idempotent by sequence. Never raises on bad event bytes: they are stored as kind
        ``unreadable``. Pairs whose sequence is not a positive integer are skipped.
        """
        added = 0
        batch = list(entries)  # consumed before the lock: the iterable may query the index
        with self._transaction() as db:
            for seq, data in batch:
                if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
                    log.warning("audit index: entry with sequence %r skipped", seq)
                    continue
                if db.execute("SELECT 1 FROM events WHERE seq = ?", (seq,)).fetchone():
                    continue
                self._insert(db, seq, data)
                added += 1
        return added

    def _insert(self, db: sqlite3.Connection, seq: int, data: Any) -> None:
        raw = bytes(data) if isinstance(data, bytes | bytearray | memoryview) else b""
        size = len(raw)
        leaf = crypto.sha256(raw).hex()
        try:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise _Unreadable(f"{type(data).__name__} instead of bytes")
            event = _parse(raw)
            # Stored with every standard field present (an event from before a field was
            # added reads like a new one); the bytes' hash is kept in ``leaf``.
            body = canonical.dumps(event).decode("utf-8")
        except _Unreadable as exc:
            event = _unreadable_event(seq, size, leaf, str(exc))
            body = json.dumps(event, separators=(",", ":"))  # ASCII: no lone surrogates
        kind = str(event["kind"])
        at = event.get("at")
        if not isinstance(at, int) or isinstance(at, bool):
            at = None
        interpreted = kind not in (UNREADABLE, AuditKind.CHECKPOINT.value)
        event_id = event.get("id") if interpreted else None
        dup = 0
        if (
            event_id is not None
            and db.execute(
                "SELECT 1 FROM events WHERE event_id = ? AND dup = 0", (event_id,)
            ).fetchone()
        ):
            dup = 1
        label = event.get("label") if interpreted else None
        label = label if isinstance(label, dict) else {}
        classification, tlp = label.get("classification"), label.get("tlp")
        db.execute(
            "INSERT INTO events (seq, kind, at, actor, message, reason, officer, event_id, dup,"
            " classification, tlp, status, size, leaf, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                kind,
                at,
                event.get("actor") if interpreted else None,
                event.get("message") if interpreted else None,
                event.get("reason") if interpreted else None,
                event.get("officer") if interpreted else None,
                event_id,
                dup,
                classification if isinstance(classification, str) else None,
                tlp if isinstance(tlp, str) else None,
                event.get("status") if interpreted else None,
                size,
                leaf,
                body,
            ),
        )
        if not interpreted:
            return
        parties = {(event["actor"], "actor")} if event.get("actor") is not None else set()
        parties |= {(r, "recipient") for r in event["recipients"]}
        db.executemany(
            "INSERT OR IGNORE INTO parties (actor, role, seq, kind, at) VALUES (?, ?, ?, ?, ?)",
            [(actor, role, seq, kind, at) for actor, role in parties],
        )

    # --- reading ------------------------------------------------------------------------

    def last_seq(self) -> int:
        """The highest stream sequence indexed (0 when empty)."""
        return int(self._query("SELECT coalesce(max(seq), 0) FROM events")[0][0])

    def leaf(self, seq: int) -> str | None:
        """The SHA-256 (hex) of the event bytes indexed at ``seq``."""
        rows = self._query("SELECT leaf FROM events WHERE seq = ?", (seq,))
        return str(rows[0][0]) if rows else None

    @staticmethod
    def _event(seq: int, body: str) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(body)
        event["seq"] = seq
        return event

    def _events_by_seq(self, seqs: list[int]) -> list[dict[str, Any]]:
        if not seqs:
            return []
        rows = self._query(
            "SELECT seq, body FROM events WHERE seq IN (SELECT value FROM json_each(?))"
            " ORDER BY seq",
            (json.dumps(seqs),),
        )
        return [self._event(seq, body) for seq, body in rows]

    def events(
        self,
        *,
        kinds: Collection[str] = (),
        actor: str | None = None,
        start: int | None = None,
        end: int | None = None,
        after_seq: int = 0,
        limit: int = 100,
        officer: str | None = None,
    ) -> list[dict[str, Any]]:
        """Events in ascending sequence after ``after_seq`` (the JSON fields plus ``seq``).

        ``kinds`` keeps those kinds (at most 32); ``actor`` keeps the events that
        :func:`concerns` the actor; ``officer`` the events an officer caused; ``start``
        and ``end`` bound ``at`` (inclusive, exclusive; unreadable events have no time and
        so only appear without a window). ``limit`` is clamped to 1..1000. For the next
        page pass the last ``seq`` returned as ``after_seq``.
        """
        limit = _clamp_limit(limit)
        kinds = sorted({str(k) for k in ((kinds,) if isinstance(kinds, str) else kinds)})
        kinds = kinds[:MAX_KINDS]
        table = "parties" if actor is not None else "events"
        where = ["seq > ?"]
        params: list[Any] = [int(after_seq)]
        if actor is not None:
            where.append("actor = ?")
            params.append(actor)
        if kinds:
            where.append("kind IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(kinds))
        if start is not None:
            where.append("at >= ?")
            params.append(int(start))
        if end is not None:
            where.append("at < ?")
            params.append(int(end))
        if officer is not None:
            if actor is not None:
                where.append("seq IN (SELECT seq FROM events WHERE officer = ?)")
            else:
                where.append("officer = ?")
            params.append(officer)
        # Only the constant fragments above are joined; every value is a parameter.
        sql = f"SELECT DISTINCT seq FROM {table} WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"  # noqa: S608
        seqs = [int(row[0]) for row in self._query(sql, [*params, limit])]
        return self._events_by_seq(seqs)

    def message_trace(self, message_id: str) -> dict[str, Any] | None:
        """Everything the trail says about one message (never content); None if nothing.

        ``sender``, ``recipients``, ``label``, ``status``, ``priority`` and ``incident``
        come from the ``accepted`` event (or, without one, the escalation or first
        refusal). ``receipts`` maps every recipient to the time the broker recorded each
        receipt kind (None until then). ``events`` lists at most 1000 events
        (``events_truncated`` says when there were more); ``refusals`` at most 100 of
        ``refusals_total``. Duplicated events (same event id) are listed, not counted.
        """
        rows = self._query(
            "SELECT seq, body FROM events WHERE message = ? ORDER BY seq LIMIT ?",
            (message_id, MAX_TRACE_EVENTS + 1),
        )
        if not rows:
            return None
        events = [self._event(seq, body) for seq, body in rows[:MAX_TRACE_EVENTS]]

        def of_kinds(kinds: tuple[str, ...], limit: int) -> list[dict[str, Any]]:
            found = self._query(
                "SELECT seq, body FROM events WHERE message = ? AND dup = 0"
                " AND kind IN (SELECT value FROM json_each(?)) ORDER BY seq LIMIT ?",
                (message_id, json.dumps(kinds), limit),
            )
            return [self._event(seq, body) for seq, body in found]

        accepted = next(iter(of_kinds((AuditKind.ACCEPTED.value,), 1)), None)
        refused = of_kinds(REFUSAL_KINDS, MAX_TRACE_REFUSALS)
        refusals_total = self._query(
            "SELECT count(*) FROM events WHERE message = ? AND dup = 0"
            " AND kind IN (SELECT value FROM json_each(?))",
            (message_id, json.dumps(REFUSAL_KINDS)),
        )[0][0]
        escalations = of_kinds((AuditKind.ESCALATION.value,), MAX_TRACE_REFUSALS)
        source = accepted or (escalations[0] if escalations else None)
        source = source or (refused[0] if refused else events[0])
        recipients = list(accepted["recipients"]) if accepted else []
        receipts: dict[str, dict[str, int | None]] = {
            r: dict.fromkeys(RECEIPT_KINDS) for r in recipients
        }
        for receipt in of_kinds((AuditKind.RECEIPT.value,), MAX_TRACE_RECEIPTS):
            kind = receipt.get("detail")
            if kind not in RECEIPT_KINDS or not receipt["recipients"]:
                continue
            marks = receipts.setdefault(receipt["recipients"][0], dict.fromkeys(RECEIPT_KINDS))
            earlier = marks[kind]
            if earlier is None or receipt["at"] < earlier:
                marks[kind] = receipt["at"]
        escalated: list[str] = []
        for escalation in escalations:
            escalated.extend(r for r in escalation["recipients"] if r not in escalated)
        return {
            "message": message_id,
            "sender": source.get("actor"),
            "recipients": recipients,
            "label": source.get("label"),
            "status": source.get("status"),
            "priority": source.get("priority"),
            "incident": source.get("incident"),
            "accepted_at": accepted["at"] if accepted else None,
            "refusals": [
                {
                    "seq": e["seq"],
                    "kind": e["kind"],
                    "actor": e["actor"],
                    "at": e["at"],
                    "reason": e["reason"],
                    "recipients": e["recipients"],
                    "detail": e["detail"],
                }
                for e in refused
            ],
            "refusals_total": int(refusals_total),
            "receipts": receipts,
            "escalated": escalated,
            "events": events,
            "events_truncated": len(rows) > MAX_TRACE_EVENTS,
        }

    # --- per-actor summaries ----------------------------------------------------------------

    def _grouped(
        self, expression: str, role: str, kinds: tuple[str, ...], actor: str, start: int, end: int
    ) -> dict[str, int]:
        """Counts of ``expression`` (one of ``_GROUP_BY``) over the actor's events."""
        rows = self._query(
            f"SELECT {_GROUP_BY[expression]} AS k, count(*)"  # noqa: S608 - a constant
            " FROM parties p JOIN events e ON e.seq = p.seq"
            " WHERE p.actor = ? AND p.role = ? AND p.kind IN (SELECT value FROM json_each(?))"
            " AND p.at >= ? AND p.at < ? AND e.dup = 0 GROUP BY k",
            (actor, role, json.dumps(kinds), start, end),
        )
        return _counts(rows)

    def _flow(self, role: str, actor: str, start: int, end: int) -> dict[str, Any]:
        kinds = (AuditKind.ACCEPTED.value,)
        by_classification = self._grouped("classification", role, kinds, actor, start, end)
        categories = self._query(
            "SELECT c.value, count(*) FROM parties p JOIN events e ON e.seq = p.seq,"
            " json_each(e.body, '$.label.categories') c"
            " WHERE p.actor = ? AND p.role = ? AND p.kind = ? AND p.at >= ? AND p.at < ?"
            " AND e.dup = 0 GROUP BY c.value",
            (actor, role, AuditKind.ACCEPTED.value, start, end),
        )
        return {
            "total": sum(by_classification.values()),
            "by_classification": by_classification,
            "by_tlp": self._grouped("tlp", role, kinds, actor, start, end),
            "by_status": self._grouped("status", role, kinds, actor, start, end),
            "by_category": _counts(categories),
        }

    def actor_traffic(self, actor: str, start: int, end: int) -> dict[str, Any]:
        """One actor's traffic in ``start <= at < end``.

        ``sent``/``received``: accepted messages by/to the actor, by classification, TLP,
        status and category. ``refused``: refusals of the actor's own submissions (the
        ``recent`` 50, newest first). ``named_in_refusals``: refusals of others' messages
        that name the actor as the recipient at fault (e.g. ``recipient_not_cleared``).
        ``receipts_signed``: receipts the actor signed, by kind. ``escalations``: messages
        whose delivery the actor did not confirm in time; ``escalations_as_sender``: the
        actor's own messages that escalated.
        """
        start, end = int(start), int(end)
        by_reason = self._grouped("reason", "actor", REFUSAL_KINDS, actor, start, end)
        recent_rows = self._query(
            "SELECT e.seq, e.body FROM parties p JOIN events e ON e.seq = p.seq"
            " WHERE p.actor = ? AND p.role = 'actor'"
            " AND p.kind IN (SELECT value FROM json_each(?)) AND p.at >= ? AND p.at < ?"
            " AND e.dup = 0 ORDER BY e.seq DESC LIMIT ?",
            (actor, json.dumps(REFUSAL_KINDS), start, end, MAX_RECENT_REFUSALS),
        )
        named = self._grouped("reason", "recipient", (AuditKind.REJECTED.value,), actor, start, end)
        signed = self._grouped(
            "detail",
            "actor",
            (AuditKind.RECEIPT.value,),
            actor,
            start,
            end,
        )
        escalation = (AuditKind.ESCALATION.value,)
        return {
            "actor": actor,
            "from": start,
            "to": end,
            "sent": self._flow("actor", actor, start, end),
            "received": self._flow("recipient", actor, start, end),
            "refused": {
                "total": sum(by_reason.values()),
                "by_reason": by_reason,
                "recent": [self._event(seq, body) for seq, body in recent_rows],
            },
            "named_in_refusals": {"total": sum(named.values()), "by_reason": named},
            "receipts_signed": {kind: signed.get(kind, 0) for kind in RECEIPT_KINDS},
            "escalations": sum(
                self._grouped("kind", "recipient", escalation, actor, start, end).values()
            ),
            "escalations_as_sender": sum(
                self._grouped("kind", "actor", escalation, actor, start, end).values()
            ),
        }

    def refusals(
        self,
        actor: str,
        start: int,
        end: int,
        *,
        reasons: Collection[str] = (),
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Refusals of ``actor``'s own submissions in the window, newest first; ``reasons``
        keeps only those reason codes. ``limit`` is clamped to 1..1000."""
        rows = self._query(
            "SELECT seq, body FROM events WHERE actor = ?"
            " AND kind IN (SELECT value FROM json_each(?)) AND at >= ? AND at < ? AND dup = 0"
            " AND (? = '[]' OR reason IN (SELECT value FROM json_each(?)))"
            " ORDER BY seq DESC LIMIT ?",
            (
                actor,
                json.dumps(REFUSAL_KINDS),
                int(start),
                int(end),
                *[json.dumps(sorted(reasons))] * 2,
                _clamp_limit(limit),
            ),
        )
        return [self._event(seq, body) for seq, body in rows]

    def last_activity(self, actor: str, before: int | None = None) -> int | None:
        """The latest ``at`` (before ``before``) of an event concerning ``actor``, not counting
        security officers' queries about the actor (reviewing an actor is not its activity)."""
        rows = self._query(
            "SELECT max(at) FROM parties WHERE actor = ? AND at < ?"
            " AND kind NOT IN (SELECT value FROM json_each(?))",
            (actor, _FOREVER if before is None else int(before), json.dumps(OFFICER_KINDS)),
        )
        return None if rows[0][0] is None else int(rows[0][0])

    def active(self, actor: str, start: int, end: int) -> bool:
        """Whether an event other than an officer's query concerns ``actor`` in the window."""
        rows = self._query(
            "SELECT 1 FROM parties WHERE actor = ? AND at >= ? AND at < ?"
            " AND kind NOT IN (SELECT value FROM json_each(?)) LIMIT 1",
            (actor, int(start), int(end), json.dumps(OFFICER_KINDS)),
        )
        return bool(rows)

    def kind_counts(self) -> dict[str, int]:
        """How many events of each kind are indexed (for health pages and tests)."""
        return _counts(self._query("SELECT kind, count(*) FROM events GROUP BY kind"))


# --- following the stream -------------------------------------------------------------------


class AuditFollower:
    """Keeps an AuditIndex current from the stream.

    Reads ``SSR_AUDIT`` from ``index.last_seq() + 1`` in batches. On its first catch-up
    (and whenever the stream is shorter than the index) it checks that the event the index
    holds last is still the stream's event at that sequence; if not, the stream was
    replaced (a new NATS deployment) and the index is rebuilt from scratch.

    >>> # stop = asyncio.Event(); task = asyncio.create_task(AuditFollower(bus, index).run(stop))
    """

    def __init__(self, bus: JetStreamBus, index: AuditIndex, *, batch: int = 500) -> None:
        self.bus = bus
        self.index = index
        self.batch = max(1, min(int(batch), 10_000))
        self._checked = False

    async def _check_stream(self) -> None:
        last = self.index.last_seq()
        if last == 0:
            self._checked = True
            return
        first, stream_last = await self.bus.stream_bounds(subjects.AUDIT_STREAM)
        if self._checked and stream_last >= last:
            return
        replaced = stream_last < last
        if not replaced and last >= first:
            entries = await self.bus.read_stream(
                subjects.AUDIT_STREAM, subjects.AUDIT_WILDCARD, last, 1
            )
            held = self.index.leaf(last)
            replaced = not entries or entries[0].seq != last
            replaced = replaced or crypto.sha256(entries[0].data).hex() != held
        if replaced:
            log.warning(
                "audit index: the stream no longer holds the indexed event %d: rebuilding", last
            )
            self.index.reset()
        self._checked = True

    async def catch_up(self, *, stop: asyncio.Event | None = None) -> int:
        """Read from ``last_seq() + 1`` to the end of the stream; returns events added.

        Raises :class:`NatsUnavailable` when NATS cannot be read (nothing is lost: the next
        call continues where this one stopped). ``stop`` ends it between batches.
        """
        await self._check_stream()
        added = 0
        while stop is None or not stop.is_set():
            entries = await self.bus.read_stream(
                subjects.AUDIT_STREAM,
                subjects.AUDIT_WILDCARD,
                self.index.last_seq() + 1,
                self.batch,
            )
            if not entries:
                break
            added += self.index.add((e.seq, e.data) for e in entries)
            if len(entries) < self.batch:
                break
        return added

    async def run(self, stop: asyncio.Event, interval: float = 0.5) -> None:
        """Catch up every ``interval`` seconds until ``stop`` is set.

        NATS outages are logged once and retried; any other failure (a full disk, a bug)
        is logged and retried too, so the follower never dies on bad data.
        """
        problem = ""
        while not stop.is_set():
            try:
                added = await self.catch_up(stop=stop)
                if problem:
                    log.info("audit index: catching up again (%d events)", added)
                problem = ""
            except NatsUnavailable as exc:
                text = f"NATS unavailable: {exc.message}"
                log.log(logging.DEBUG if text == problem else logging.WARNING, "audit index: %s",
                        text)  # fmt: skip
                problem = text
            except Exception as exc:  # never die: log, wait, retry
                text = f"{type(exc).__name__}: {exc}"
                if text != problem:
                    log.exception("audit index: catch-up failed; retrying")
                problem = text
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
