"""Message ids the application has already been given, kept on disk until they expire.

JetStream deduplicates publishes only within its duplicate window, and a
receipt can be lost after the application saw a message, so the client
remembers every delivered id until the message's ``expires`` plus a leeway
(clock skew between sender and recipient). After that the broker refuses the
message anyway, so the id can be forgotten by :meth:`SeenStore.purge`.

    >>> with SeenStore(tmp / "nacka.seen") as seen:        # doctest: +SKIP
    ...     if seen.add(message.id, message.expires):
    ...         yield message        # first time: hand it to the application
"""

from __future__ import annotations

import os

from clients._errors import StoreError
from clients._sqlite import SqliteStore

__all__ = ["DEFAULT_LEEWAY_SECONDS", "MAX_SEEN", "SeenStore"]

MAX_SEEN = 1_000_000
DEFAULT_LEEWAY_SECONDS = 600
_MAX_MESSAGE_ID_CHARS = 256

_APPLICATION_ID = 0x53535253  # "SSRS"
_SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE seen (
        message_id TEXT    PRIMARY KEY,
        expires    INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX seen_expires ON seen (expires)",
)


class SeenStore(SqliteStore):
    """A durable set of seen message ids, each kept until ``expires + leeway``.

    When :data:`MAX_SEEN` ids are held and none can be purged, :meth:`add`
    raises :class:`StoreError` rather than forget an id and risk a duplicate.
    """

    KIND = "seen store"
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
            self._count: int = self._connection().execute("SELECT count(*) FROM seen").fetchone()[0]

    def add(self, message_id: str, expires: int) -> bool:
        """Record ``message_id``; True if it is new, False if it was already seen."""
        if (
            not isinstance(message_id, str)
            or not message_id
            or len(message_id) > _MAX_MESSAGE_ID_CHARS
        ):
            raise StoreError(
                f"message_id must be a non-empty str of at most {_MAX_MESSAGE_ID_CHARS} chars",
                code="invalid_argument",
            )
        if not isinstance(expires, int) or isinstance(expires, bool):
            raise StoreError("expires must be an int (Unix seconds)", code="invalid_argument")
        with self._lock, self._mapped("add"):
            conn = self._connection()
            with self._transaction(conn):
                if self._count >= MAX_SEEN:
                    known = conn.execute(
                        "SELECT 1 FROM seen WHERE message_id = ?", (message_id,)
                    ).fetchone()
                    if known is not None:
                        return False
                    raise StoreError(f"seen store {self.path} holds {MAX_SEEN} ids", code="full")
                conn.execute(
                    "INSERT OR IGNORE INTO seen (message_id, expires) VALUES (?, ?)",
                    (message_id, expires),
                )
                added = int(conn.execute("SELECT changes()").fetchone()[0]) == 1
            if added:
                self._count += 1
            return added

    def __contains__(self, message_id: object) -> bool:
        if not isinstance(message_id, str):
            return False
        with self._lock, self._mapped("read"):
            row = (
                self._connection()
                .execute("SELECT 1 FROM seen WHERE message_id = ?", (message_id,))
                .fetchone()
            )
        return row is not None

    def purge(self, now: int) -> int:
        """Forget ids whose ``expires + leeway <= now``; return how many were forgotten."""
        with self._lock, self._mapped("purge"):
            conn = self._connection()
            with self._transaction(conn):
                removed = conn.execute(
                    "DELETE FROM seen WHERE expires <= ?", (now - self.leeway,)
                ).rowcount
            self._count -= removed
        return removed

    def __len__(self) -> int:
        with self._lock:
            self._connection()
            return int(self._count)
