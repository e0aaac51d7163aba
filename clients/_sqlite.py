"""What the client's on-disk SQLite stores share: opening, identity, locking, error mapping.

Each store is one file owned by one process. The file is created with mode
0600 (SQLite gives its ``-wal`` file the same mode), opened in WAL mode with
``locking_mode=EXCLUSIVE`` so a second process fails fast instead of
interleaving with the owner, and identified by ``PRAGMA application_id``
(which kind of store) and ``PRAGMA user_version`` (schema version), both
checked before anything is written. All ``sqlite3`` errors are mapped to the
store's own :class:`~clients._errors.ClientError` subclass here, and only here.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from clients._errors import ClientError

__all__ = ["FILE_MODE", "SqliteStore"]

FILE_MODE = 0o600


class SqliteStore:
    """Base of the on-disk stores: one connection, one lock, explicit close."""

    # Set by each subclass.
    KIND: str
    APPLICATION_ID: int
    SCHEMA_VERSION: int
    SCHEMA: tuple[str, ...]
    SYNCHRONOUS: str = "FULL"
    error: type[ClientError] = ClientError

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        # Create the file ourselves so it is born 0600. Only when it does not exist:
        # closing any descriptor of a file drops this process's POSIX locks on it,
        # which would silently release the lock of an owner in this same process.
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE))
        except FileExistsError:
            pass
        except OSError as exc:
            raise self.error(f"cannot create {self.KIND} {self.path}: {exc}", code="io") from exc
        self._conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self.error(f"cannot open {self.KIND} {self.path}: {exc}", code="io") from exc
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        with self._mapped("open"):
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            # Identity first, so a foreign file is never converted to WAL or written.
            app_id, version = self._identity(conn)
            fresh = app_id == 0 and version == 0 and self._is_empty(conn)
            if not fresh:
                self._check_identity(app_id, version)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise self.error(f"{self.KIND} {self.path}: cannot enable WAL", code="io")
            conn.execute(f"PRAGMA synchronous={self.SYNCHRONOUS}")
            if fresh:
                with self._transaction(conn):
                    # Re-check under the write lock: nobody else may have initialised it.
                    if self._identity(conn) != (0, 0) or not self._is_empty(conn):
                        raise self.error(f"{self.KIND} {self.path} changed while opening")
                    for statement in self.SCHEMA:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA application_id={int(self.APPLICATION_ID)}")
                    conn.execute(f"PRAGMA user_version={int(self.SCHEMA_VERSION)}")

    @staticmethod
    def _identity(conn: sqlite3.Connection) -> tuple[int, int]:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        return int(app_id), int(version)

    @staticmethod
    def _is_empty(conn: sqlite3.Connection) -> bool:
        return int(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]) == 0

    def _check_identity(self, app_id: int, version: int) -> None:
        if app_id != self.APPLICATION_ID:
            raise self.error(
                f"{self.path} is not an SSR {self.KIND} file (application_id {app_id:#x},"
                f" expected {self.APPLICATION_ID:#x})",
                code="not_a_store",
            )
        if version != self.SCHEMA_VERSION:
            raise self.error(
                f"{self.KIND} {self.path} has schema version {version};"
                f" this library reads version {self.SCHEMA_VERSION}",
                code="unsupported_version",
            )

    @contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        """Map every ``sqlite3`` error raised inside to this store's error class."""
        try:
            yield
        except sqlite3.Error as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise self.error(
                    f"{self.KIND} {self.path} is in use by another process", code="in_use"
                ) from exc
            if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
                raise self.error(
                    f"{self.path} is not an SSR {self.KIND} file (not an SQLite database)",
                    code="not_a_store",
                ) from exc
            raise self.error(f"{self.KIND} {self.path}: {what} failed: {text}", code="io") from exc

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _select(self, what: str, sql: str, params: tuple[object, ...]) -> list[Any]:
        """Rows of one read-only statement, under the lock, errors mapped."""
        with self._lock, self._mapped(what):
            return self._connection().execute(sql, params).fetchall()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise self.error(f"{self.KIND} {self.path} is closed", code="closed")
        return self._conn

    def close(self) -> None:
        """Close the file; further calls raise. Closing twice is harmless."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with self._mapped("close"):
                conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
