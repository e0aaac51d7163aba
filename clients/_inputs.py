"""The caller's arguments turned into checked values, or a :class:`ClientError` that says
what is wrong: key files, the pinned authority key, the policy, expiry, payloads."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from broker import datadir
from broker.core import CoreError, Identity, Policy, load_identity, load_policy
from broker.errors import ConfigError

from ._errors import ConfigurationError, SendError

DEFAULT_LIFETIME = timedelta(hours=24)


def identity(keys: Identity | str | os.PathLike[str]) -> Identity:
    if isinstance(keys, Identity):
        return keys
    try:
        return load_identity(Path(keys))
    except CoreError as exc:
        raise ConfigurationError(exc.message, code="keys") from exc


def identities(
    keys: Identity | str | os.PathLike[str] | Sequence[Identity | str | os.PathLike[str]],
) -> tuple[Identity, ...]:
    """One key file (or identity), or several during a key rotation: the first signs."""
    if isinstance(keys, Identity | str | os.PathLike):
        return (identity(keys),)
    loaded = tuple(identity(k) for k in keys)
    if not loaded:
        raise ConfigurationError("keys: give at least one key file", code="keys")
    return loaded


def authority_key(value: bytes | str | os.PathLike[str]) -> bytes:
    """32 raw bytes, 64 hex digits, or a file holding them (``broker.datadir.authority_key``)."""
    try:
        return datadir.authority_key(value)
    except ConfigError as exc:
        raise ConfigurationError(exc.message, code="authority_key") from exc


def policy(value: Policy | str | os.PathLike[str] | None) -> Policy:
    if value is None:
        return Policy()
    if isinstance(value, Policy):
        return value
    try:
        return load_policy(Path(value).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"policy {value}: cannot read: {exc}", code="policy") from exc
    except CoreError as exc:
        raise ConfigurationError(f"policy {value}: {exc.message}", code="policy") from exc


def expiry(now: int, expires: timedelta | datetime | None) -> int:
    if expires is None:
        return now + int(DEFAULT_LIFETIME.total_seconds() * 1000)
    if isinstance(expires, timedelta):
        return now + int(expires.total_seconds() * 1000)
    if isinstance(expires, datetime):
        if expires.tzinfo is None:
            raise SendError("expires must be timezone-aware", code="invalid_argument")
        return int(expires.timestamp() * 1000)
    raise SendError("expires must be a timedelta or a datetime", code="invalid_argument")


def encode_payload(payload: object) -> tuple[bytes, str]:
    if isinstance(payload, bytes):
        return payload, "application/octet-stream"
    if isinstance(payload, str):
        return payload.encode("utf-8"), "text/plain"
    if isinstance(payload, dict | list):
        try:
            return json.dumps(payload, ensure_ascii=False).encode("utf-8"), "application/json"
        except (TypeError, ValueError) as exc:
            raise SendError(
                f"payload is not JSON-serialisable: {exc}", code="invalid_argument"
            ) from exc
    raise SendError("payload must be bytes, str, dict or list", code="invalid_argument")
