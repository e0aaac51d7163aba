"""Reading what the broker needs from its data folder (layout in ``broker.config``)."""

from __future__ import annotations

import os
from pathlib import Path

from broker.core import (
    CoreError,
    Policy,
    VerifiedDirectory,
    crypto,
    load_identity,
    load_policy,
    verify_chain,
)
from broker.core.notices import BrokerIdentity

from .config import BrokerConfig
from .errors import ConfigError

MAX_AUTHORITY_KEY_FILE_BYTES = 4096  # 64 hex digits and a newline; room for white space
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def authority_key(value: bytes | str | os.PathLike[str]) -> bytes:
    """The pinned authority public key from 32 raw bytes, 64 hex digits (a ``str``), or
    a file holding the 64 hex digits (any other ``str``, or a path).

    The one parser of the key for the broker, the client library and ``ssr``: anything
    unusable (bad hex, a wrong length, a missing or unreadable file, a folder, a file
    larger than :data:`MAX_AUTHORITY_KEY_FILE_BYTES`) is a :class:`ConfigError` with
    ``field="authority_key"`` and a message that says which. A file is read at most one
    byte past the bound, whatever it is (a pipe, a device).
    """
    if isinstance(value, bytes):
        if len(value) != crypto.PUBLIC_KEY_BYTES:
            raise _key_error(f"authority key must be 32 bytes (64 hex digits), not {len(value)}")
        return value
    if isinstance(value, str) and _is_key_hex(value.strip()):
        return bytes.fromhex(value.strip())
    path = Path(value)
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_AUTHORITY_KEY_FILE_BYTES + 1)
    except (OSError, ValueError) as exc:  # ValueError: a NUL character in the name
        strerror = exc.strerror if isinstance(exc, OSError) else None
        reason = "a folder, not a file" if path.is_dir() else (strerror or str(exc))
        if isinstance(value, str):
            shown = value if len(value) <= 80 else value[:77] + "..."
            raise _key_error(
                f"authority key {shown!r}: not 64 hex digits, nor a readable file ({reason})"
            ) from exc
        raise _key_error(f"{path}: cannot read the authority key: {reason}") from exc
    if len(raw) > MAX_AUTHORITY_KEY_FILE_BYTES:
        raise _key_error(
            f"{path}: larger than {MAX_AUTHORITY_KEY_FILE_BYTES} bytes; "
            "need the authority public key as 64 hex digits"
        )
    text = raw.decode("ascii", "replace").strip()
    if not _is_key_hex(text):
        raise _key_error(f"{path}: need the authority public key as 64 hex digits")
    return bytes.fromhex(text)


def _is_key_hex(text: str) -> bool:
    return len(text) == 2 * crypto.PUBLIC_KEY_BYTES and _HEX_DIGITS.issuperset(text)


def _key_error(message: str) -> ConfigError:
    return ConfigError(message, field="authority_key")


def pinned_authority(config: BrokerConfig) -> bytes:
    """The pinned authority key of the data folder (``authority.pub``)."""
    return authority_key(config.authority_key_file)


def directory_files(config: BrokerConfig) -> list[bytes]:
    """The signed directory versions in the data folder, oldest first (by file name)."""
    folder = config.directory_dir
    files = sorted(folder.glob("*.dir")) if folder.is_dir() else []
    if not files:
        raise ConfigError(f"no signed directory versions (*.dir) in {folder}")
    return [path.read_bytes() for path in files]


def verified_directory(versions: list[bytes], pinned: bytes) -> VerifiedDirectory:
    try:
        return verify_chain(versions, pinned=pinned)
    except CoreError as exc:
        raise ConfigError(f"directory does not verify ({exc.code}): {exc.message}") from exc


def broker_identity(config: BrokerConfig, directory: VerifiedDirectory) -> BrokerIdentity:
    try:
        identity = load_identity(config.broker_key_file)
    except CoreError as exc:
        raise ConfigError(exc.message, field="broker_key_file") from exc
    ids = {b.id for b in directory.document.brokers}
    if identity.principal not in ids:
        raise ConfigError(
            f"broker key is for {identity.principal!r}, which the directory does not list "
            f"as a broker ({', '.join(sorted(ids)) or 'none listed'})"
        )
    return BrokerIdentity(identity.principal, identity.signing)


def policy(config: BrokerConfig) -> Policy:
    path: Path = config.policy_file
    if not path.exists():
        return Policy()
    try:
        return load_policy(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    except CoreError as exc:
        raise ConfigError(f"{path}: {exc.message}", field="policy") from exc
