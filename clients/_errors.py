"""The one exception tree of the client library.

    ClientError                    every error the client library raises
    ├── ConfigurationError         bad keys, authority key, policy or state folder
    ├── Unavailable                NATS cannot be reached and nothing else will do
    ├── DirectoryRefused           a directory version does not verify against the pin
    ├── AddressError               unknown recipient, group or incident; nobody to send to
    ├── SendError                  the envelope cannot be built (label, size, keys, ...)
    ├── ForwardRefused             TLP or the original label forbid this forward
    ├── Rejected                   the broker refused the message (reason code, recipients)
    ├── Expired                    the message expired in the outbox before it left
    ├── DeliveryTimeout            waiting for acceptance or delivery took too long
    ├── ClosedError                the client is closed
    ├── OutboxError                the on-disk outbox cannot be opened, read or written
    │   └── OutboxFull             the outbox is at its item bound; nothing was enqueued
    ├── StoreError                 the on-disk inbox or archive failed
    ├── BundleRefused              an offline bundle does not verify; nothing was imported
    └── BundleFileError            a bundle file cannot be written (exists) or read

Third-party errors (sqlite3, nats, nacl) are mapped to this tree at exactly one
boundary each and never leak. Errors carry ``code`` (and, per class, more
fields), so callers branch on data and never parse messages.
"""

from __future__ import annotations

__all__ = [
    "AddressError",
    "BundleFileError",
    "BundleRefused",
    "ClientError",
    "ClosedError",
    "ConfigurationError",
    "DeliveryTimeout",
    "DirectoryRefused",
    "Expired",
    "ForwardRefused",
    "OutboxError",
    "OutboxFull",
    "Rejected",
    "SendError",
    "StoreError",
    "Unavailable",
]


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


class ConfigurationError(ClientError):
    """A key file, the authority key, the policy or the state folder is unusable."""

    code = "configuration"


class Unavailable(ClientError):
    """NATS cannot be reached (at start, with no verified directory to work offline)."""

    code = "unavailable"


class DirectoryRefused(ClientError):
    """A directory version does not verify against the pinned authority key or the chain."""

    code = "directory_refused"


class AddressError(ClientError):
    """A recipient, group or incident is unknown, or the message would reach nobody.

    Codes: ``unknown_recipient``, ``unknown_group``, ``unknown_incident``, ``no_recipients``.
    """

    code = "no_recipients"


class SendError(ClientError):
    """The envelope cannot be built: bad label or type, too large, a recipient without keys."""

    code = "send_error"


class ForwardRefused(ClientError):
    """TLP forbids forwarding the message, or the forward would lower its label."""

    code = "forward_refused"


class Rejected(ClientError):
    """The broker refused the message; ``code`` is its reason code (see PROTOCOL.md).

    ``recipients`` names the recipients concerned where the reason applies to some.
    """

    code = "rejected"

    def __init__(
        self,
        message: str,
        *,
        code: str,
        message_id: str | None = None,
        recipients: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, code=code)
        self.message_id = message_id
        self.recipients = recipients


class Expired(ClientError):
    """The message expired while it waited in the outbox; it was never submitted."""

    code = "expired"


class DeliveryTimeout(ClientError, TimeoutError):
    """Acceptance or delivery was not confirmed in time; the message may still arrive."""

    code = "timeout"


class ClosedError(ClientError):
    """The client is closed."""

    code = "closed"


class OutboxError(ClientError):
    """The outbox file is unusable: not an outbox, unknown version, in use, or an I/O error."""

    code = "outbox_error"


class OutboxFull(OutboxError):
    """The outbox holds its maximum number of items; the message was not enqueued."""

    code = "outbox_full"


class StoreError(ClientError):
    """The inbox (seen ids and waiting envelopes) or the archive is unusable or full."""

    code = "store_error"


class BundleRefused(ClientError):
    """An offline bundle does not verify (``code`` is the core's: ``bundle_bad_signature``,
    ``bundle_malformed``, ``bundle_unknown_signer``, ``bundle_signer_mismatch``,
    ``bundle_key_invalid``, ``bundle_too_large``); nothing in it was imported."""

    code = "bundle_invalid"


class BundleFileError(ClientError):
    """A bundle file cannot be written or read.

    Codes: ``exists`` (export never overwrites), ``io``, ``bundle_too_large`` (too many
    messages for one bundle: export one incident).
    """

    code = "io"
