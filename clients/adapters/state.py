"""What an ingest has already done, on disk: deduplication and references across restarts.

One row per (source, item id, version): either the envelope sent for it (its message
id and header hash, so a later update or cancel can reference it) or a deliberate
skip with its reason (an unrouted alert is not retried for that version). Each item's
most recent *sent* row is its "latest"; an item is open while its latest envelope was
not a cancel. The runtime asks :meth:`IngestState.seen` before it sends,
:meth:`IngestState.latest` for references, and :meth:`IngestState.open_items` and
:meth:`IngestState.expired` to cancel what disappeared from a feed or ran out.

The file is an :class:`~clients._sqlite.SqliteStore` (one owner, WAL, mode 0600).
Every method is synchronous and thread-safe; an async runtime calls it through
``asyncio.to_thread``. Bad input (wrong types, ids longer than the bounds, text
that is not encodable) raises :class:`StoreError` with code ``invalid_item`` and
stores nothing; a full store raises code ``state_full``.

    >>> with IngestState(tmp / "ingest.state") as state:     # doctest: +SKIP
    ...     if not state.seen("vma", alert):
    ...         previous = state.latest("vma", alert.item_id)
    ...         handle = await client.send(**send_arguments("vma", alert, route, previous, ...))
    ...         state.record("vma", alert, handle.message_id, handle.header_hash)
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from clients._errors import StoreError
from clients._sqlite import SqliteStore
from clients.adapters.model import MsgType, SourceAlert

__all__ = [
    "MAX_ITEM_ID_CHARS",
    "MAX_REASON_CHARS",
    "MAX_ROWS",
    "MAX_SOURCE_CHARS",
    "MAX_VERSION_CHARS",
    "IngestState",
    "Sent",
]

MAX_ROWS = 500_000  # sent and skipped rows together; purge() makes room
MAX_SOURCE_CHARS = 64
MAX_ITEM_ID_CHARS = 1024
MAX_VERSION_CHARS = 256
MAX_REASON_CHARS = 500  # longer reasons are cut, not refused
_MAX_MILLIS = 2**53 - 1  # the protocol's largest time (MAX_SAFE_INTEGER)

_MESSAGE_ID = re.compile(r"[0-9a-f]{32}")
_HEADER_HASH = re.compile(r"[0-9a-f]{64}")

_APPLICATION_ID = 0x53535241  # "SSRA": adapters
_SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE item (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        source      TEXT    NOT NULL,
        item_id     TEXT    NOT NULL,
        version     TEXT    NOT NULL,
        message_id  TEXT,                       -- NULL: skipped, never sent
        header_hash TEXT,
        cancelled   INTEGER NOT NULL DEFAULT 0, -- the envelope was a cancel
        latest      INTEGER NOT NULL DEFAULT 0, -- the item's most recent sent row
        expires     INTEGER,                    -- the alert's own expiry, epoch ms
        reason      TEXT,                       -- why it was skipped
        recorded    INTEGER NOT NULL,           -- epoch ms, for purge
        UNIQUE (source, item_id, version)
    )""",
    "CREATE INDEX item_latest ON item (source, item_id) WHERE latest = 1",
    "CREATE INDEX item_recorded ON item (recorded)",
)


@dataclass(frozen=True, slots=True)
class Sent:
    """The envelope sent for one version of an item."""

    source: str
    item_id: str
    version: str
    message_id: str
    header_hash: str
    cancelled: bool  # it was a cancel: the item is closed
    expires: int | None  # the alert's own expiry (epoch ms), if it had one


def _system_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class IngestState(SqliteStore):
    """Sent and skipped (source, item id, version) rows of one ingest process."""

    KIND = "ingest state"
    APPLICATION_ID = _APPLICATION_ID
    SCHEMA_VERSION = _SCHEMA_VERSION
    SCHEMA = _SCHEMA
    SYNCHRONOUS = "FULL"
    error = StoreError

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], int] = _system_clock_ms
    ) -> None:
        super().__init__(path)
        self._clock = clock  # epoch milliseconds, stamped on each row for purge()
        with self._lock, self._mapped("count"):
            self._count: int = self._connection().execute("SELECT count(*) FROM item").fetchone()[0]

    def seen(self, source: str, alert: SourceAlert) -> bool:
        """Whether this version of the item was already sent or deliberately skipped."""
        source, item_id, version = _key(source, alert)
        return bool(
            self._select(
                "seen",
                "SELECT 1 FROM item WHERE source = ? AND item_id = ? AND version = ?",
                (source, item_id, version),
            )
        )

    def latest(self, source: str, item_id: str) -> Sent | None:
        """The last envelope sent for this item (cancel included), or ``None``."""
        source = _text("source", source, MAX_SOURCE_CHARS)
        item_id = _text("item_id", item_id, MAX_ITEM_ID_CHARS)
        rows = self._select(
            "latest",
            "SELECT source, item_id, version, message_id, header_hash, cancelled, expires"
            " FROM item WHERE source = ? AND item_id = ? AND latest = 1",
            (source, item_id),
        )
        return _sent(rows[0]) if rows else None

    def record(self, source: str, alert: SourceAlert, message_id: str, header_hash: str) -> None:
        """Remember the envelope sent for this version; it becomes the item's latest.

        Idempotent: a version already recorded or skipped is left as it is (first wins).
        """
        key = _key(source, alert)
        if not isinstance(message_id, str) or not _MESSAGE_ID.fullmatch(message_id):
            raise StoreError("message_id must be 32 lowercase hex digits", code="invalid_item")
        if not isinstance(header_hash, str) or not _HEADER_HASH.fullmatch(header_hash):
            raise StoreError("header_hash must be 64 lowercase hex digits", code="invalid_item")
        cancelled = int(alert.msg_type == MsgType.CANCEL)
        expires = _expires(alert.expires)
        self._insert(key, (message_id, header_hash, cancelled, expires, None))

    def skip(self, source: str, alert: SourceAlert, reason: str) -> None:
        """Remember that this version is deliberately not sent (e.g. unrouted).

        It counts as seen and is never retried; the item's latest envelope is unchanged.
        """
        key = _key(source, alert)
        if not isinstance(reason, str):
            raise StoreError("reason must be a str", code="invalid_item")
        reason = _encodable("reason", reason[:MAX_REASON_CHARS])
        self._insert(key, (None, None, 0, None, reason))

    def open_items(self, source: str) -> list[Sent]:
        """The latest envelope of every item of ``source`` not cancelled, oldest first."""
        source = _text("source", source, MAX_SOURCE_CHARS)
        rows = self._select(
            "open_items",
            "SELECT source, item_id, version, message_id, header_hash, cancelled, expires FROM item"
            " WHERE source = ? AND latest = 1 AND cancelled = 0 ORDER BY seq",
            (source,),
        )
        return [_sent(row) for row in rows]

    def expired(self, source: str, now_ms: int) -> list[Sent]:
        """The open items of ``source`` whose alert expired at or before ``now_ms``."""
        source = _text("source", source, MAX_SOURCE_CHARS)
        now_ms = _millis("now_ms", now_ms)
        rows = self._select(
            "expired",
            "SELECT source, item_id, version, message_id, header_hash, cancelled, expires"
            " FROM item WHERE source = ? AND latest = 1"
            " AND cancelled = 0 AND expires IS NOT NULL AND expires <= ? ORDER BY seq",
            (source, now_ms),
        )
        return [_sent(row) for row in rows]

    def purge(self, older_than_ms: int) -> int:
        """Forget rows recorded before ``older_than_ms``; returns how many.

        The latest envelope of an open item is kept whatever its age: a later update or
        cancel must still reference it, and a feed that still carries it must not cause
        a resend. Choose the horizon longer than a feed keeps its items: a forgotten
        version that reappears is treated as new.
        """
        older_than_ms = _millis("older_than_ms", older_than_ms)
        with self._lock, self._mapped("purge"):
            conn = self._connection()
            with self._transaction(conn):
                removed = conn.execute(
                    "DELETE FROM item WHERE recorded < ? AND NOT (latest = 1 AND cancelled = 0)",
                    (older_than_ms,),
                ).rowcount
            self._count -= removed
        return int(removed)

    def __len__(self) -> int:
        with self._lock:
            self._connection()
            return self._count

    def _insert(
        self,
        key: tuple[str, str, str],
        values: tuple[str | None, str | None, int, int | None, str | None],
    ) -> None:
        source, item_id, _ = key
        message_id = values[0]
        with self._lock, self._mapped("record"):
            conn = self._connection()
            with self._transaction(conn):
                if _exists(conn, key):
                    return
                if self._count >= MAX_ROWS:
                    raise StoreError(
                        f"{self.KIND} {self.path} holds {MAX_ROWS} rows; purge old ones",
                        code="state_full",
                    )
                if message_id is not None:
                    conn.execute(
                        "UPDATE item SET latest = 0"
                        " WHERE source = ? AND item_id = ? AND latest = 1",
                        (source, item_id),
                    )
                conn.execute(
                    "INSERT INTO item (source, item_id, version, message_id, header_hash,"
                    " cancelled, latest, expires, reason, recorded)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        *key,
                        *values[:3],
                        int(message_id is not None),
                        *values[3:],
                        _millis("clock", self._clock()),
                    ),
                )
            self._count += 1


def _exists(conn: sqlite3.Connection, key: tuple[str, str, str]) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM item WHERE source = ? AND item_id = ? AND version = ?", key
        ).fetchone()
        is not None
    )


def _sent(row: tuple[str, str, str, str, str, int, int | None]) -> Sent:
    source, item_id, version, message_id, header_hash, cancelled, expires = row
    return Sent(source, item_id, version, message_id, header_hash, bool(cancelled), expires)


def _key(source: object, alert: object) -> tuple[str, str, str]:
    if not isinstance(alert, SourceAlert):
        raise StoreError("alert must be a SourceAlert", code="invalid_item")
    return (
        _text("source", source, MAX_SOURCE_CHARS),
        _text("item_id", alert.item_id, MAX_ITEM_ID_CHARS),
        _text("version", alert.version, MAX_VERSION_CHARS),
    )


def _text(field: str, value: object, bound: int) -> str:
    if not isinstance(value, str) or not value or len(value) > bound:
        raise StoreError(
            f"{field} must be a non-empty str of at most {bound} characters", code="invalid_item"
        )
    return _encodable(field, value)


def _encodable(field: str, value: str) -> str:
    # Lone surrogates (from JSON "\ud800") cannot be stored; sqlite3 would raise a
    # UnicodeEncodeError, outside the store's error mapping.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise StoreError(f"{field} is not encodable as UTF-8", code="invalid_item") from None
    return value


def _millis(field: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_MILLIS:
        raise StoreError(f"{field} must be an int of epoch milliseconds", code="invalid_item")
    return value


def _expires(value: object) -> int | None:
    return None if value is None else _millis("expires", value)
