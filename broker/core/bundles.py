"""Offline bundles: signed envelopes carried on removable media when networks fail.

A bundle is a ``B`` frame with one section, the canonical JSON :class:`BundleBody`:
the exporting actor and its signing key, the time, the incident it was made for (or
none) and the items, each a complete signed frame in standard base64 - envelopes
(``E``) still encrypted for their recipients, and key grants (``G``) for messages the
exporter was granted after joining an incident late.

The exporter's signature over the whole bundle makes any change to it (an item added,
removed, reordered or altered) detectable before anything in it is read; each item
then verifies on its own against its sender's key, so a bundle cannot vouch for
content its items' senders did not sign. An importer needs only the directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Final, Literal

from pydantic import Field

from . import crypto, frame
from .directory import ActorStatus, PrincipalKind, VerifiedDirectory
from .errors import BundleError, FrameError, MalformedInput
from .keys import Identity, b64, unb64
from .limits import MAX_ENVELOPE_BYTES, MIB
from .wire import HexId, Millis, Slug, WireModel

BUNDLE_VERSION: Final = 1
MAX_BUNDLE_BYTES: Final = 64 * MIB
MAX_BUNDLE_ITEMS: Final = 5000
# base64 of the largest item: an envelope plus a grant's body and frame
_MAX_ITEM_CHARS: Final = (MAX_ENVELOPE_BYTES + 8 * 1024) * 4 // 3 + 4
_ITEM_KINDS: Final = (frame.Kind.ENVELOPE.value, frame.Kind.GRANT.value)


class BundleBody(WireModel):
    v: Literal[1] = BUNDLE_VERSION
    exporter: Slug
    signer_key: HexId
    created: Millis
    incident: Slug | None = None
    items: Annotated[
        tuple[Annotated[str, Field(min_length=4, max_length=_MAX_ITEM_CHARS)], ...],
        Field(max_length=MAX_BUNDLE_ITEMS),
    ]


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose exporter signature verified; its items are not verified yet."""

    body: BundleBody
    items: tuple[bytes, ...]


def _is_item(item: bytes) -> bool:
    """Looks like an ``E`` or ``G`` frame (magic and kind byte); each verifies on its own."""
    return item[:3] == frame.MAGIC and item[4:5] in _ITEM_KINDS


def make_bundle(
    me: Identity, items: list[bytes], *, created: int, incident: str | None = None
) -> bytes:
    """Sign a bundle of envelope and grant frames. Raises :class:`BundleError`."""
    for item in items:
        if not _is_item(item):
            raise BundleError("a bundle holds envelopes and grants only", code="bundle_malformed")
    try:
        body = BundleBody(
            exporter=me.principal,
            signer_key=me.signing.key_id,
            created=created,
            incident=incident,
            items=tuple(b64(item) for item in items),
        )
    except ValueError as exc:
        raise BundleError(f"cannot build bundle: {exc}", code="bundle_malformed") from exc
    data = body.to_bytes()
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(
            f"bundle of {len(data)} bytes exceeds {MAX_BUNDLE_BYTES}; export a shorter span",
            code="bundle_too_large",
        )
    return frame.encode(frame.Kind.BUNDLE, me.signing, (data,))


def verify_bundle(data: bytes, directory: VerifiedDirectory, *, now: int) -> VerifiedBundle:
    """Check the bundle's frame and the exporter's signature, then decode its items.

    Codes: ``bundle_too_large``, ``bundle_malformed``, ``bundle_unknown_signer``,
    ``bundle_bad_signature``, ``bundle_signer_mismatch``, ``bundle_key_invalid`` (the
    exporter not active, its key revoked by ``now`` or not usable at ``created``).
    Items are only checked to be canonical base64 of an ``E`` or ``G`` frame: each must
    still be verified on its own (``read_envelope``/``decide``, ``verify_grant``).
    """
    try:
        signed = frame.decode(
            data,
            frame.Kind.BUNDLE,
            max_bytes=MAX_BUNDLE_BYTES + 256,
            max_section=(MAX_BUNDLE_BYTES,),
        )
    except FrameError as exc:
        code = "bundle_too_large" if exc.code == "too_large" else "bundle_malformed"
        raise BundleError(f"not a bundle: {exc.message}", code=code) from exc
    signer = directory.signer(signed.signer_id)
    if signer is None or signer.kind is not PrincipalKind.ACTOR:
        raise BundleError(
            "signed by a key the directory does not know", code="bundle_unknown_signer"
        )
    try:
        signed.verify(signer.record.raw)
    except crypto.CryptoFailure as exc:
        raise BundleError(
            "bundle signature does not verify: it was changed after export",
            code="bundle_bad_signature",
        ) from exc
    try:
        body = BundleBody.parse(signed.sections[0], max_bytes=MAX_BUNDLE_BYTES)
    except MalformedInput as exc:
        raise BundleError(exc.message, code="bundle_malformed") from exc
    actor = directory.actor(signer.principal)
    if actor is None or body.exporter != actor.id or body.signer_key != signed.signer_id:
        raise BundleError("bundle names another exporter", code="bundle_signer_mismatch")
    if (
        actor.status is not ActorStatus.ACTIVE
        or signer.record.revoked_by(now)
        or not signer.record.usable_at(body.created)
    ):
        raise BundleError("the exporter or its key is no longer valid", code="bundle_key_invalid")
    try:
        items = tuple(unb64(item) for item in body.items)
    except ValueError as exc:
        raise BundleError("an item is not canonical base64", code="bundle_malformed") from exc
    if not all(_is_item(item) for item in items):
        raise BundleError("a bundle holds envelopes and grants only", code="bundle_malformed")
    return VerifiedBundle(body, items)


__all__ = ["BundleBody", "VerifiedBundle", "make_bundle", "verify_bundle"]
