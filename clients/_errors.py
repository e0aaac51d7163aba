"""The one exception tree of the client library.

    ClientError                    every error the client library raises
    ├── OutboxError                the on-disk outbox cannot be opened, read or written
    │   └── OutboxFull             the outbox is at its item bound; nothing was enqueued
    └── StoreError                 the on-disk store of seen message ids failed

More branches (connection, rejection, verification) are added as the client
grows. Third-party errors (sqlite3, nats, nacl) are mapped to this tree at
exactly one boundary each and never leak. Errors carry ``code`` (and, per
class, more fields), so callers branch on data and never parse messages.
"""

from __future__ import annotations

__all__ = ["ClientError", "OutboxError", "OutboxFull", "StoreError"]


class ClientError(Exception):
    """Root of every error raised by the client library."""

    code: str = "client_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class OutboxError(ClientError):
    """The outbox file is unusable: not an outbox, unknown version, in use, or an I/O error."""

    code = "outbox_error"


class OutboxFull(OutboxError):
    """The outbox holds its maximum number of items; the message was not enqueued."""

    code = "outbox_full"


class StoreError(ClientError):
    """The store of seen message ids is unusable or full."""

    code = "store_error"
