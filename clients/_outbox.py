"""The store-and-forward outbox: messages wait on disk until JetStream acknowledged them.

``send`` writes the encrypted envelope here first and returns; a publisher
task drains :meth:`Outbox.pending` in sequence order and calls
:meth:`Outbox.mark_sent` only after JetStream's publish acknowledgement. So a
message survives a NATS outage and a process restart, and per-sender order is
the sequence order. The sequence is SQLite ``AUTOINCREMENT``: it never goes
back, not even after the newest item was sent. Redelivery of an item whose
acknowledgement was lost is harmless because the message id is also the
JetStream ``Nats-Msg-Id`` (within the duplicate window) and recipients keep
seen ids on disk (:mod:`clients._inbox`) beyond it.

The API is synchronous and thread-safe within one process; the async client
calls it through ``asyncio.to_thread``.

    >>> with Outbox(tmp / "nacka.outbox") as outbox:       # doctest: +SKIP
    ...     seq = outbox.enqueue("msg-1", "ssr.in.nacka", b"envelope", expires=1_900_000_000)
    ...     for item in outbox.pending():
    ...         ...  # publish, await the JetStream ack
    ...         outbox.mark_sent(item.message_id)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from clients._errors import OutboxError, OutboxFull
from clients._sqlite import SqliteStore

__all__ = [
    "MAX_ITEMS",
    "MAX_ITEM_BYTES",
    "MAX_MESSAGE_ID_CHARS",
    "MAX_PENDING_BATCH",
    "MAX_SUBJECT_CHARS",
    "Outbox",
    "OutboxItem",
]

# An envelope is at most 4 MiB of payload plus headers, signatures and wrapped keys.
MAX_ITEM_BYTES = 4 * 1024 * 1024 + 64 * 1024
MAX_ITEMS = 100_000
MAX_MESSAGE_ID_CHARS = 256
MAX_SUBJECT_CHARS = 1024
MAX_PENDING_BATCH = 10_000

_APPLICATION_ID = 0x5353524F  # "SSRO"
_SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE outbox (
        sequence   INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT    NOT NULL UNIQUE,
        subject    TEXT    NOT NULL,
        data       BLOB    NOT NULL,
        expires    INTEGER NOT NULL,
        enqueued   INTEGER NOT NULL
    )""",
    "CREATE INDEX outbox_expires ON outbox (expires)",
)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One message waiting to be published."""

    sequence: int
    message_id: str
    subject: str
    data: bytes
    expires: int
    enqueued: int


def _system_clock() -> int:
    return int(time.time())


class Outbox(SqliteStore):
    """A durable FIFO of outgoing envelopes, keyed by message id. One file per actor."""

    KIND = "outbox"
    APPLICATION_ID = _APPLICATION_ID
    SCHEMA_VERSION = _SCHEMA_VERSION
    SCHEMA = _SCHEMA
    SYNCHRONOUS = "FULL"
    error = OutboxError

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], int] = _system_clock
    ) -> None:
        super().__init__(path)
        self._clock = clock
        with self._lock, self._mapped("count"):
            self._count: int = (
                self._connection().execute("SELECT count(*) FROM outbox").fetchone()[0]
            )

    def enqueue(self, message_id: str, subject: str, data: bytes, expires: int) -> int:
        """Store a message durably and return its sequence.

        Enqueueing a message id that is already waiting returns its existing
        sequence and stores nothing (the first enqueue's content is kept).
        Raises :class:`OutboxFull` at :data:`MAX_ITEMS`, :class:`OutboxError`
        for an oversized or malformed item.
        """
        _check_text("message_id", message_id, MAX_MESSAGE_ID_CHARS)
        _check_text("subject", subject, MAX_SUBJECT_CHARS)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise OutboxError("data must be bytes", code="invalid_item")
        data = bytes(data)
        if len(data) > MAX_ITEM_BYTES:
            raise OutboxError(
                f"item of {len(data)} bytes exceeds the bound of {MAX_ITEM_BYTES}",
                code="item_too_large",
            )
        if not isinstance(expires, int) or isinstance(expires, bool):
            raise OutboxError("expires must be an int (Unix seconds)", code="invalid_item")
        with self._lock, self._mapped("enqueue"):
            conn = self._connection()
            with self._transaction(conn):
                row = conn.execute(
                    "SELECT sequence FROM outbox WHERE message_id = ?", (message_id,)
                ).fetchone()
                if row is not None:
                    return int(row[0])
                if self._count >= MAX_ITEMS:
                    raise OutboxFull(f"outbox {self.path} holds {MAX_ITEMS} items")
                cursor = conn.execute(
                    "INSERT INTO outbox (message_id, subject, data, expires, enqueued)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (message_id, subject, data, expires, int(self._clock())),
                )
            self._count += 1
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def pending(self, limit: int = 100) -> list[OutboxItem]:
        """The oldest ``limit`` waiting items, in sequence (= per-sender) order."""
        if not 1 <= limit <= MAX_PENDING_BATCH:
            raise OutboxError(f"limit must be 1..{MAX_PENDING_BATCH}", code="invalid_limit")
        rows = self._select(
            "read",
            "SELECT sequence, message_id, subject, data, expires, enqueued"
            " FROM outbox ORDER BY sequence LIMIT ?",
            (limit,),
        )
        return [OutboxItem(*row) for row in rows]

    def mark_sent(self, message_id: str) -> None:
        """Remove a message once JetStream acknowledged it. Unknown ids are ignored."""
        with self._lock, self._mapped("mark_sent"):
            conn = self._connection()
            with self._transaction(conn):
                removed = conn.execute(
                    "DELETE FROM outbox WHERE message_id = ?", (message_id,)
                ).rowcount
            self._count -= removed

    def drop_expired(self, now: int) -> list[str]:
        """Remove and return (in sequence order) the ids with ``expires <= now``.

        They can never be delivered; the caller reports them as expired.
        """
        with self._lock, self._mapped("drop_expired"):
            conn = self._connection()
            with self._transaction(conn):
                ids = [
                    row[0]
                    for row in conn.execute(
                        "SELECT message_id FROM outbox WHERE expires <= ? ORDER BY sequence",
                        (now,),
                    )
                ]
                conn.execute("DELETE FROM outbox WHERE expires <= ?", (now,))
            self._count -= len(ids)
        return ids

    def __contains__(self, message_id: object) -> bool:
        """Whether ``message_id`` is waiting to be published."""
        if not isinstance(message_id, str):
            return False
        return bool(
            self._select("read", "SELECT 1 FROM outbox WHERE message_id = ?", (message_id,))
        )

    def __len__(self) -> int:
        with self._lock:
            self._connection()
            return self._count


def _check_text(field: str, value: object, bound: int) -> None:
    if not isinstance(value, str) or not value or len(value) > bound:
        raise OutboxError(
            f"{field} must be a non-empty str of at most {bound} chars", code="invalid_item"
        )
