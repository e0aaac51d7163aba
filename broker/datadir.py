"""Reading what the broker needs from its data folder (layout in ``broker.config``)."""

from __future__ import annotations

from pathlib import Path

from broker.core import (
    CoreError,
    Policy,
    VerifiedDirectory,
    load_identity,
    load_policy,
    verify_chain,
)
from broker.core.notices import BrokerIdentity

from .config import BrokerConfig
from .errors import ConfigError


def pinned_authority(config: BrokerConfig) -> bytes:
    path = config.authority_key_file
    try:
        text = path.read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: need the authority public key as 64 hex digits") from exc
    if len(key) != 32:
        raise ConfigError(f"{path}: need the authority public key as 64 hex digits")
    return key


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
