"""Offline bundles on the client side: the file, and how an imported bundle's items are
put in order and given the context the broker's policy needs.

- :func:`write_new` / :func:`read_bounded` - the bundle file: created with mode 600 and
  never over another file; read only up to a bound.
- :func:`read_items` - a verified bundle's frames as :class:`BundleItem`, each
  envelope (or the envelope inside a key grant) verified, oldest first, so that
  activations and closes are taken before what they allow.
- :func:`originals` - the archived original of a forward and the draft of a press-line
  approval, which :func:`broker.core.decide` needs.
- :func:`steer` - an accepted activation or close applied to the incidents in play.

The client (:meth:`Client.import_bundle`) decides each item with the broker's policy
and admits it the way a NATS delivery is admitted. No asyncio here; the file helpers
are blocking and run in a thread.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from broker.core import (
    CoreError,
    ForwardOrigin,
    Header,
    Incident,
    MessageType,
    PressStage,
    ReferenceKind,
    SignedEnvelope,
    VerifiedDirectory,
    read_envelope,
    verify_grant,
)
from broker.core.bundles import MAX_BUNDLE_BYTES
from broker.core.incidents import closed_by, opened_by

from ._archive import Archive
from ._errors import BundleFileError, BundleRefused

__all__ = [
    "MAX_BUNDLE_FILE_BYTES",
    "BundleItem",
    "originals",
    "read_bounded",
    "read_items",
    "steer",
    "write_new",
]

MAX_BUNDLE_FILE_BYTES = MAX_BUNDLE_BYTES + 256  # the frame around the largest bundle body
STEERING = (MessageType.ACTIVATION, MessageType.INCIDENT_CLOSE)


@dataclass(frozen=True)
class BundleItem:
    """One verified frame of a bundle: an envelope (``E``) or a key grant (``G``)."""

    frame: bytes
    envelope: SignedEnvelope  # the envelope itself, or the one inside the grant
    mine: bool  # addressed to this actor (a grant: granted to it)

    @property
    def header(self) -> Header:
        return self.envelope.header

    @property
    def granted(self) -> bool:
        return self.frame[4:5] == b"G"

    @property
    def steering(self) -> bool:
        """An activation or close: it shapes the incident even when not for this actor."""
        return self.header.type in STEERING


def read_items(
    frames: Iterable[bytes],
    directory: VerifiedDirectory,
    *,
    me: str,
    now: int,
    max_envelope_bytes: int,
) -> tuple[list[BundleItem], list[str]]:
    """The frames that verify as :class:`BundleItem`, oldest first (by created, then id),
    and the error codes of those that do not."""
    items: list[BundleItem] = []
    refused: list[str] = []
    for frame in frames:
        try:
            if frame[4:5] == b"G":
                grant = verify_grant(
                    frame, directory, now=now, max_envelope_bytes=max_envelope_bytes
                )
                items.append(BundleItem(frame, grant.envelope, grant.body.recipient == me))
            else:
                envelope = read_envelope(frame, directory, max_bytes=max_envelope_bytes)
                items.append(BundleItem(frame, envelope, me in envelope.header.recipients))
        except CoreError as exc:
            refused.append(exc.code)
    items.sort(key=lambda i: (i.header.created, i.header.id))
    return items, refused


def originals(
    archive: Archive, header: Header
) -> tuple[ForwardOrigin | None, ForwardOrigin | None]:
    """The archived original of a forward and the draft of an approval, if held."""
    control = header.control
    approval = control is not None and control.press is PressStage.APPROVED
    updates = [r for r in header.references if r.kind is ReferenceKind.UPDATE]
    found: list[ForwardOrigin | None] = []
    for reference in (header.forwarded(), updates[0] if approval and updates else None):
        row = archive.get(reference.message) if reference is not None else None
        found.append(None if row is None else ForwardOrigin(row.header, row.header_hash))
    return found[0], found[1]


def steer(incidents: dict[str, Incident], header: Header) -> None:
    """Apply an accepted activation or close of ``header.incident`` to ``incidents``."""
    if header.incident is None:
        return
    previous = incidents.get(header.incident)
    if header.type is MessageType.ACTIVATION:
        incidents[header.incident] = opened_by(header, previous)
    elif header.type is MessageType.INCIDENT_CLOSE and previous is not None:
        incidents[header.incident] = closed_by(previous, header.created)


def write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (mode 600, never over an existing file) holding ``data``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise BundleFileError(f"{path} exists; a bundle never overwrites", code="exists") from exc
    except OSError as exc:
        raise BundleFileError(f"cannot create {path}: {exc}", code="io") from exc
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        raise BundleFileError(f"cannot write {path}: {exc}", code="io") from exc


def read_bounded(path: Path, bound: int) -> bytes:
    """The file's bytes; a file larger than ``bound`` is refused before it is read whole."""
    try:
        with path.open("rb") as file:
            data = file.read(bound + 1)
    except OSError as exc:
        raise BundleFileError(f"cannot read {path}: {exc}", code="io") from exc
    if len(data) > bound:
        raise BundleRefused(f"{path} is larger than a bundle can be", code="bundle_too_large")
    return data
