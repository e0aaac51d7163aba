"""The one exception tree of the protocol core.

    CoreError                      every error the core raises
    ├── MalformedInput             bytes or documents that do not parse or validate
    │   ├── CanonicalJsonError     not strict, canonical (RFC 8785 subset) JSON
    │   └── FrameError             the binary frame around a signed object is broken
    ├── KeyFileError               a key file is unreadable, malformed or too open
    ├── PolicyError                a policy file is invalid (names the line or field)
    ├── DirectoryError             a directory version is refused (code says why)
    ├── EnvelopeError              an envelope is refused at build or verification (code)
    │   └── OpenError              the recipient cannot open it (crypto failures opaque)
    ├── ReceiptError               a receipt is refused (code)
    ├── NoticeError                a broker notice does not verify (code; in ``notices``)
    ├── GrantError                 a late joiner's key grant is refused (code)
    └── BundleError                an offline bundle is refused (code)

Errors carry fields (``code``, ``field``, ``line``), not just strings, so the
shells can map them to reason codes, HTTP statuses and exit codes without
parsing messages. Third-party errors (nacl, pydantic, json, tomllib) never
leave the core: each module maps them at its boundary.
"""

from __future__ import annotations


class CoreError(Exception):
    """Root of every error raised by ``broker.core``."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class MalformedInput(CoreError):
    """Input that does not parse or does not match its schema."""

    code = "malformed"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.field = field


class CanonicalJsonError(MalformedInput):
    """JSON that is not in the strict canonical form the protocol requires."""


class FrameError(MalformedInput):
    """A signed frame whose binary layout is broken (magic, version, lengths)."""


class KeyFileError(CoreError):
    """A key file that cannot be used; the message says which and why."""

    code = "key_file"


class PolicyError(CoreError):
    """An invalid policy file. ``field`` is a dotted path, ``line`` is 1-based when known."""

    code = "policy_invalid"

    def __init__(self, message: str, *, field: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.line = line


class DirectoryError(CoreError):
    """A directory version that does not verify or does not extend the known chain."""

    code = "directory_invalid"


class EnvelopeError(CoreError):
    """An envelope that cannot be built or does not verify; ``code`` is a reason code."""

    code = "envelope_invalid"


class OpenError(EnvelopeError):
    """The recipient refuses to open an envelope.

    Every cryptographic failure (unknown key, bad signature, wrong wrap,
    failed decryption) carries the single code ``invalid`` so that the error
    is no oracle. Non-cryptographic refusals keep their own codes
    (``expired``, ``not_addressed``, ``not_cleared``, ...).
    """

    code = "invalid"


class ReceiptError(CoreError):
    """A receipt that does not verify or does not match its message."""

    code = "receipt_invalid"


class GrantError(CoreError):
    """A late joiner's key grant that cannot be built, does not verify or does not open."""

    code = "grant_invalid"


class BundleError(CoreError):
    """An offline bundle that cannot be built or does not verify."""

    code = "bundle_invalid"
