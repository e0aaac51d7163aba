"""The client's inbox: verified envelopes waiting for the application, and every id seen.

The receive loop *admits* an envelope once it verified and decrypted: in one
transaction its id joins the seen set and its signed bytes join the waiting
queue. Only then is the JetStream delivery acknowledged, so a crash loses
nothing and a redelivery is recognised. The application *takes* waiting
envelopes in arrival order; a taken envelope is gone from the queue but its
id stays seen until the message's ``expires`` plus a leeway (clock skew
between sender and recipient). After that the broker and the recipient
refuse the message anyway, so :meth:`Inbox.purge` may forget the id.

JetStream deduplicates publishes only within its duplicate window, and a
receipt or an acknowledgement can be lost after a message was admitted, so
this seen set is what makes delivery exactly once to the application.

    >>> with Inbox(tmp / "nacka.inbox") as inbox:          # doctest: +SKIP
    ...     if inbox.admit(header.id, expires, data, received=now):
    ...         ...   # new: send the delivered receipt
    ...     for item in inbox.waiting():
    ...         handle(item); inbox.take(item.message_id)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from clients._errors import StoreError
from clients._sqlite import SqliteStore

__all__ = ["DEFAULT_LEEWAY_SECONDS", "MAX_SEEN", "MAX_WAITING", "Inbox", "InboxItem"]

MAX_SEEN = 1_000_000
MAX_WAITING = 100_000
DEFAULT_LEEWAY_SECONDS = 600
_MAX_MESSAGE_ID_CHARS = 256
_MAX_BATCH = 10_000

_APPLICATION_ID = 0x53535249  # "SSRI"
_SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE seen (
        message_id TEXT    PRIMARY KEY,
        expires    INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX seen_expires ON seen (expires)",
    """CREATE TABLE waiting (
        sequence   INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT    NOT NULL UNIQUE,
        data       BLOB    NOT NULL,
        received   INTEGER NOT NULL
    )""",
)


@dataclass(frozen=True, slots=True)
class InboxItem:
    """One admitted envelope the application has not taken yet."""

    sequence: int
    message_id: str
    data: bytes
    received: int  # epoch milliseconds when it was admitted


class Inbox(SqliteStore):
    """Seen ids (kept until ``expires + leeway``, in seconds) and the waiting queue.

    When :data:`MAX_SEEN` ids are held and none can be purged, or :data:`MAX_WAITING`
    envelopes wait, :meth:`admit` raises :class:`StoreError` rather than forget an id
    and risk a duplicate; the delivery stays unacknowledged in JetStream meanwhile.
    """

    KIND = "inbox"
    APPLICATION_ID = _APPLICATION_ID
    SCHEMA_VERSION = _SCHEMA_VERSION
    SCHEMA = _SCHEMA
    SYNCHRONOUS = "FULL"
    error = StoreError

    def __init__(
        self, path: str | os.PathLike[str], *, leeway: int = DEFAULT_LEEWAY_SECONDS
    ) -> None:
        if leeway < 0:
            raise StoreError("leeway must not be negative", code="invalid_argument")
        super().__init__(path)
        self.leeway = leeway
        with self._lock, self._mapped("count"):
            conn = self._connection()
            self._seen: int = conn.execute("SELECT count(*) FROM seen").fetchone()[0]
            self._waiting: int = conn.execute("SELECT count(*) FROM waiting").fetchone()[0]

    def add(self, message_id: str, expires: int) -> bool:
        """Record ``message_id`` as seen without queueing it; True if it is new."""
        return self._admit(message_id, expires, None, 0)

    def admit(self, message_id: str, expires: int, data: bytes, received: int) -> bool:
        """Record the id and queue the envelope, atomically; False (and nothing queued)
        if the id was seen before."""
        if not isinstance(data, bytes) or not data:
            raise StoreError("data must be non-empty bytes", code="invalid_argument")
        return self._admit(message_id, expires, data, received)

    def _admit(self, message_id: str, expires: int, data: bytes | None, received: int) -> bool:
        _check_id(message_id)
        for name, value in (("expires", expires), ("received", received)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise StoreError(f"{name} must be an int", code="invalid_argument")
        with self._lock, self._mapped("admit"):
            conn = self._connection()
            with self._transaction(conn):
                known = conn.execute(
                    "SELECT 1 FROM seen WHERE message_id = ?", (message_id,)
                ).fetchone()
                if known is not None:
                    return False
                if self._seen >= MAX_SEEN:
                    raise StoreError(f"inbox {self.path} holds {MAX_SEEN} seen ids", code="full")
                if data is not None and self._waiting >= MAX_WAITING:
                    raise StoreError(
                        f"inbox {self.path} holds {MAX_WAITING} waiting envelopes", code="full"
                    )
                conn.execute(
                    "INSERT INTO seen (message_id, expires) VALUES (?, ?)", (message_id, expires)
                )
                if data is not None:
                    conn.execute(
                        "INSERT INTO waiting (message_id, data, received) VALUES (?, ?, ?)",
                        (message_id, data, received),
                    )
            self._seen += 1
            self._waiting += data is not None
            return True

    def waiting(self, limit: int = 100) -> list[InboxItem]:
        """The oldest ``limit`` waiting envelopes, in the order they were admitted."""
        if not 1 <= limit <= _MAX_BATCH:
            raise StoreError(f"limit must be 1..{_MAX_BATCH}", code="invalid_argument")
        rows = self._select(
            "read",
            "SELECT sequence, message_id, data, received FROM waiting ORDER BY sequence LIMIT ?",
            (limit,),
        )
        return [InboxItem(*row) for row in rows]

    def take(self, message_id: str) -> None:
        """Remove a waiting envelope (the application has it); its id stays seen."""
        with self._lock, self._mapped("take"):
            conn = self._connection()
            with self._transaction(conn):
                removed = conn.execute(
                    "DELETE FROM waiting WHERE message_id = ?", (message_id,)
                ).rowcount
            self._waiting -= removed

    def __contains__(self, message_id: object) -> bool:
        """Whether the id was seen (waiting or taken)."""
        if not isinstance(message_id, str):
            return False
        return bool(self._select("read", "SELECT 1 FROM seen WHERE message_id = ?", (message_id,)))

    def purge(self, now: int) -> int:
        """Forget seen ids whose ``expires + leeway <= now`` (seconds) and that no longer
        wait; return how many were forgotten."""
        with self._lock, self._mapped("purge"):
            conn = self._connection()
            with self._transaction(conn):
                removed = conn.execute(
                    "DELETE FROM seen WHERE expires <= ?"
                    " AND message_id NOT IN (SELECT message_id FROM waiting)",
                    (now - self.leeway,),
                ).rowcount
            self._seen -= removed
        return removed

    @property
    def seen_count(self) -> int:
        with self._lock:
            self._connection()
            return self._seen

    def __len__(self) -> int:
        """How many envelopes wait for the application."""
        with self._lock:
            self._connection()
            return self._waiting


def _check_id(message_id: object) -> None:
    if not isinstance(message_id, str) or not message_id or len(message_id) > _MAX_MESSAGE_ID_CHARS:
        raise StoreError(
            f"message_id must be a non-empty str of at most {_MAX_MESSAGE_ID_CHARS} chars",
            code="invalid_argument",
        )
