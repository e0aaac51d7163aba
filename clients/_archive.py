"""The client's archive: every envelope it sent or received, kept until it expires.

The inbox forgets a message once the application took it; the crisis workflows need
it afterwards: the situation picture is built from the reports held here, a request's
answers are the replies held here, a late joiner is granted a message from here, and
an offline bundle is exported from here. Each row is one message:

- ``sent``: the envelope this client built, and - when it names an incident - the
  content key from :func:`~broker.core.seal_envelope`, so that the originator can grant
  the message to an actor that joins the incident later. The content key opens that
  one message only; it never leaves this file except sealed to a newcomer.
- ``received``: the signed ``E`` frame as it arrived (still encrypted).
- ``granted``: the signed ``G`` frame (the original envelope inside) a late joiner got.

Rows were verified before they were added; the signed header is kept beside the frame
(``header``) so that queries need not verify again, and each row's references are
indexed (``refs``) to find replies, updates and cancellations. A row is kept until its
``expires`` plus the clock leeway (milliseconds here), then :meth:`Archive.purge`
forgets it, as the inbox forgets its seen ids.

    >>> with Archive(tmp / "archive.sqlite") as archive:             # doctest: +SKIP
    ...     archive.add(Direction.SENT, header, header_hash, data, content_key=key)
    ...     [row.message_id for row in archive.of_incident("storm-1")]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from broker.core import CoreError, Header, MessageType, ReferenceKind
from broker.core.limits import MAX_HEADER_BYTES
from clients._errors import StoreError
from clients._sqlite import SqliteStore

__all__ = [
    "MAX_ARCHIVED",
    "MAX_ARCHIVE_ITEM_BYTES",
    "MAX_QUERY_ROWS",
    "Archive",
    "ArchivedMessage",
    "Direction",
]

MAX_ARCHIVED = 200_000  # rows; beyond it nothing new is archived until some expire
# An envelope of the hard 4 MiB ceiling plus a grant's body and frame.
MAX_ARCHIVE_ITEM_BYTES = 4 * 1024 * 1024 + 16 * 1024
MAX_QUERY_ROWS = 20_000  # rows one query returns at most (an incident's messages)
CONTENT_KEY_BYTES = 32

_APPLICATION_ID = 0x53535241  # "SSRA"
_SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE archive (
        message_id  TEXT    PRIMARY KEY,
        direction   TEXT    NOT NULL,
        incident    TEXT,
        sender      TEXT    NOT NULL,
        type        TEXT    NOT NULL,
        created     INTEGER NOT NULL,
        expires     INTEGER NOT NULL,
        header_hash TEXT    NOT NULL,
        header      BLOB    NOT NULL,
        data        BLOB    NOT NULL,
        content_key BLOB
    ) WITHOUT ROWID""",
    "CREATE INDEX archive_incident ON archive (incident, created)",
    "CREATE INDEX archive_expires ON archive (expires)",
    "CREATE INDEX archive_type ON archive (type, created)",
    """CREATE TABLE refs (
        message_id TEXT NOT NULL,
        kind       TEXT NOT NULL,
        target     TEXT NOT NULL,
        PRIMARY KEY (message_id, kind, target)
    ) WITHOUT ROWID""",
    "CREATE INDEX refs_target ON refs (target, kind)",
)
_SELECT = "SELECT direction, header_hash, header, data, content_key FROM archive"
_SELECT_REFERENCING = (
    "SELECT a.direction, a.header_hash, a.header, a.data, a.content_key"
    " FROM refs r JOIN archive a ON a.message_id = r.message_id WHERE r.target = ?"
)
_ORDER = " ORDER BY created, message_id LIMIT ?"


class Direction(StrEnum):
    SENT = "sent"
    RECEIVED = "received"
    GRANTED = "granted"  # arrived as a late joiner's key grant (a ``G`` frame)


@dataclass(frozen=True)
class ArchivedMessage:
    """One archived message: its verified header and the signed frame it came in."""

    direction: Direction
    header: Header
    header_hash: str
    data: bytes = field(repr=False)  # E frame (sent, received) or G frame (granted)
    content_key: bytes | None = field(default=None, repr=False)  # sent incident messages

    @property
    def message_id(self) -> str:
        return self.header.id

    def references(self, kind: ReferenceKind) -> tuple[str, ...]:
        return tuple(r.message for r in self.header.references if r.kind is kind)


class Archive(SqliteStore):
    """Sent, received and granted envelopes until ``expires + leeway`` (milliseconds).

    At :data:`MAX_ARCHIVED` rows :meth:`add` raises :class:`StoreError` (code ``full``);
    the client logs it and carries on, since the archive serves the workflows, not
    delivery.
    """

    KIND = "archive"
    APPLICATION_ID = _APPLICATION_ID
    SCHEMA_VERSION = _SCHEMA_VERSION
    SCHEMA = _SCHEMA
    SYNCHRONOUS = "NORMAL"  # losing the last rows in a power cut loses no message
    error = StoreError

    def __init__(self, path: str | os.PathLike[str], *, leeway_ms: int = 600_000) -> None:
        if leeway_ms < 0:
            raise StoreError("leeway must not be negative", code="invalid_argument")
        super().__init__(path)
        self.leeway_ms = leeway_ms
        with self._lock, self._mapped("count"):
            self._count: int = (
                self._connection().execute("SELECT count(*) FROM archive").fetchone()[0]
            )

    def add(
        self,
        direction: Direction,
        header: Header,
        header_hash: str,
        data: bytes,
        *,
        content_key: bytes | None = None,
    ) -> bool:
        """Archive one verified message; False if its id is archived already (the first
        copy is kept)."""
        direction = Direction(direction)
        if not isinstance(data, bytes) or not data or len(data) > MAX_ARCHIVE_ITEM_BYTES:
            raise StoreError(
                f"data must be 1..{MAX_ARCHIVE_ITEM_BYTES} bytes", code="invalid_argument"
            )
        if content_key is not None and (
            direction is not Direction.SENT or len(content_key) != CONTENT_KEY_BYTES
        ):
            raise StoreError(
                "only a sent message keeps its 32-byte content key", code="invalid_argument"
            )
        header_bytes = header.to_bytes()
        if len(header_bytes) > MAX_HEADER_BYTES or len(header_hash) != 64:
            raise StoreError("header or header hash out of bounds", code="invalid_argument")
        with self._lock, self._mapped("add"):
            conn = self._connection()
            with self._transaction(conn):
                known = conn.execute(
                    "SELECT 1 FROM archive WHERE message_id = ?", (header.id,)
                ).fetchone()
                if known is not None:
                    return False
                if self._count >= MAX_ARCHIVED:
                    raise StoreError(
                        f"archive {self.path} holds {MAX_ARCHIVED} messages", code="full"
                    )
                conn.execute(
                    "INSERT INTO archive (message_id, direction, incident, sender, type,"
                    " created, expires, header_hash, header, data, content_key)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        header.id,
                        direction.value,
                        header.incident,
                        header.sender,
                        header.type.value,
                        header.created,
                        header.expires,
                        header_hash,
                        header_bytes,
                        data,
                        content_key,
                    ),
                )
                conn.executemany(
                    "INSERT OR IGNORE INTO refs (message_id, kind, target) VALUES (?, ?, ?)",
                    [(header.id, r.kind.value, r.message) for r in header.references],
                )
            self._count += 1
            return True

    def remove(self, message_id: str) -> bool:
        """Forget one message (a sent one the broker refused); True if it was archived."""
        with self._lock, self._mapped("remove"):
            conn = self._connection()
            with self._transaction(conn):
                conn.execute("DELETE FROM refs WHERE message_id = ?", (message_id,))
                removed = conn.execute(
                    "DELETE FROM archive WHERE message_id = ?", (message_id,)
                ).rowcount
            self._count -= removed
        return bool(removed)

    def get(self, message_id: str) -> ArchivedMessage | None:
        rows = self._select("get", _SELECT + " WHERE message_id = ?", (message_id,))
        return self._row(rows[0]) if rows else None

    def __contains__(self, message_id: object) -> bool:
        if not isinstance(message_id, str):
            return False
        return bool(
            self._select("read", "SELECT 1 FROM archive WHERE message_id = ?", (message_id,))
        )

    def of_incident(
        self, incident: str, types: tuple[MessageType, ...] = ()
    ) -> list[ArchivedMessage]:
        """The incident's messages (of ``types``, default all), oldest first."""
        sql = _SELECT + " WHERE incident = ?"
        params: tuple[object, ...] = (incident,)
        if types:  # only "?" placeholders are joined into the statement
            sql += " AND type IN (" + ", ".join("?" for _ in types) + ")"
            params += tuple(t.value for t in types)
        rows = self._select("of_incident", sql + _ORDER, (*params, MAX_QUERY_ROWS))
        return [m for m in map(self._row, rows) if m is not None]

    def of_type(
        self, message_type: MessageType, *, direction: Direction | None = None
    ) -> list[ArchivedMessage]:
        """Every archived message of one type (and direction), oldest first."""
        sql = _SELECT + " WHERE type = ?"
        params: tuple[object, ...] = (message_type.value,)
        if direction is not None:
            sql += " AND direction = ?"
            params += (Direction(direction).value,)
        rows = self._select("of_type", sql + _ORDER, (*params, MAX_QUERY_ROWS))
        return [m for m in map(self._row, rows) if m is not None]

    def referencing(self, target: str, kind: ReferenceKind | None = None) -> list[ArchivedMessage]:
        """Archived messages that reference ``target`` (with ``kind``), oldest first."""
        sql = _SELECT_REFERENCING
        params: tuple[object, ...] = (target,)
        if kind is not None:
            sql += " AND r.kind = ?"
            params += (kind.value,)
        rows = self._select(
            "referencing",
            sql + " ORDER BY a.created, a.message_id LIMIT ?",
            (*params, MAX_QUERY_ROWS),
        )
        return [m for m in map(self._row, rows) if m is not None]

    def frames(self, *, incident: str | None, now: int) -> list[bytes]:
        """The signed frames of the unexpired messages (of ``incident``, or all), oldest
        first: what an offline bundle carries."""
        sql = "SELECT data FROM archive WHERE expires > ?"
        params: tuple[object, ...] = (now,)
        if incident is not None:
            sql += " AND incident = ?"
            params += (incident,)
        rows = self._select(
            "frames", sql + " ORDER BY created, message_id LIMIT ?", (*params, MAX_QUERY_ROWS)
        )
        return [bytes(row[0]) for row in rows]

    def purge(self, now: int) -> int:
        """Forget the messages with ``expires + leeway <= now`` (ms); return how many."""
        with self._lock, self._mapped("purge"):
            conn = self._connection()
            with self._transaction(conn):
                cutoff = now - self.leeway_ms
                conn.execute(
                    "DELETE FROM refs WHERE message_id IN"
                    " (SELECT message_id FROM archive WHERE expires <= ?)",
                    (cutoff,),
                )
                removed = conn.execute("DELETE FROM archive WHERE expires <= ?", (cutoff,)).rowcount
            self._count -= removed
        return removed

    def __len__(self) -> int:
        with self._lock:
            self._connection()
            return self._count

    @staticmethod
    def _row(row: Any) -> ArchivedMessage | None:
        direction, header_hash, header_bytes, data, content_key = row
        try:
            header = Header.parse(bytes(header_bytes), max_bytes=MAX_HEADER_BYTES)
        except CoreError:  # written by this library after verification: damage, not input
            return None
        return ArchivedMessage(
            Direction(str(direction)),
            header,
            str(header_hash),
            bytes(data),
            None if content_key is None else bytes(content_key),
        )
