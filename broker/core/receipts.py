"""Receipts: a recipient's signed statement that it got, read or acted on a message.

A receipt is an ``R`` frame with one section, the canonical JSON
:class:`ReceiptBody`. It names the message id *and* the SHA-256 of the
original signed header, so it cannot be moved to another message, and the
recipient who signs it must be one of the message's recipients.

- ``delivered``: signed automatically by the recipient's client once the
  envelope verified and decrypted.
- ``read`` and ``acknowledged``: signed when the application says so
  (acknowledged = a person or system has acted; it may carry a note).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import Field

from . import crypto, frame
from .directory import Actor, ActorStatus, PrincipalKind, VerifiedDirectory
from .envelope import Header
from .errors import FrameError, MalformedInput, ReceiptError
from .keys import Identity
from .limits import MAX_RECEIPT_BYTES
from .wire import Hash, HexId, Millis, Slug, WireModel

RECEIPT_VERSION: Final = 1
_SECTIONS = (MAX_RECEIPT_BYTES,)


class ReceiptKind(StrEnum):
    DELIVERED = "delivered"
    READ = "read"
    ACKNOWLEDGED = "acknowledged"


class ReceiptBody(WireModel):
    v: Literal[1] = RECEIPT_VERSION
    kind: ReceiptKind
    message: HexId
    header_hash: Hash
    sender: Slug  # the original message's sender, to whom the receipt goes
    recipient: Slug  # who signs this receipt
    signer_key: HexId
    at: Millis
    note: Annotated[str, Field(max_length=1000)] | None = None


@dataclass(frozen=True)
class VerifiedReceipt:
    body: ReceiptBody
    signer: Actor
    raw: bytes


def make_receipt(
    me: Identity,
    header: Header,
    header_hash: str,
    kind: ReceiptKind,
    *,
    at: int,
    note: str | None = None,
) -> bytes:
    """Sign a receipt for a message ``me`` received.

    Raises :class:`ReceiptError` if ``me`` is not among its recipients
    (``receipt_not_recipient``), or if the body is invalid or its canonical bytes exceed
    the 4096-byte bound that every verifier enforces (``receipt_malformed``): a note of
    1000 characters fits only if they need few enough bytes.
    """
    if me.principal not in header.recipients:
        raise ReceiptError("only a recipient can sign a receipt", code="receipt_not_recipient")
    try:
        body = ReceiptBody(
            kind=kind,
            message=header.id,
            header_hash=header_hash,
            sender=header.sender,
            recipient=me.principal,
            signer_key=me.signing.key_id,
            at=at,
            note=note,
        )
    except ValueError as exc:
        raise ReceiptError(f"cannot build receipt: {exc}", code="receipt_malformed") from exc
    data = body.to_bytes()
    if len(data) > MAX_RECEIPT_BYTES:  # 1000 characters may need more bytes than the body bound
        raise ReceiptError(
            f"receipt body of {len(data)} bytes exceeds {MAX_RECEIPT_BYTES}; shorten the note",
            code="receipt_malformed",
        )
    return frame.encode(frame.Kind.RECEIPT, me.signing, (data,))


def verify_receipt(data: bytes, directory: VerifiedDirectory, *, now: int) -> VerifiedReceipt:
    """Check a receipt's frame and signature, then parse it; ``now`` is epoch milliseconds.

    Codes: ``receipt_malformed``, ``receipt_unknown_signer``,
    ``receipt_bad_signature``, ``receipt_signer_mismatch``, ``receipt_signer_inactive``,
    ``receipt_key_invalid`` (the key was not usable at the receipt's ``at``, or is revoked
    by ``now``: a stolen key could backdate ``at``).
    """
    try:
        signed = frame.decode(
            data, frame.Kind.RECEIPT, max_bytes=MAX_RECEIPT_BYTES + 128, max_section=_SECTIONS
        )
    except FrameError as exc:
        raise ReceiptError(exc.message, code="receipt_malformed") from exc
    signer = directory.signer(signed.signer_id)
    if signer is None or signer.kind is not PrincipalKind.ACTOR:
        raise ReceiptError("signed by an unknown key", code="receipt_unknown_signer")
    try:
        signed.verify(signer.record.raw)
    except crypto.CryptoFailure as exc:
        raise ReceiptError(
            "receipt signature does not verify", code="receipt_bad_signature"
        ) from exc
    try:
        body = ReceiptBody.parse(signed.sections[0], max_bytes=MAX_RECEIPT_BYTES)
    except MalformedInput as exc:
        raise ReceiptError(exc.message, code="receipt_malformed") from exc
    actor = directory.actor(signer.principal)
    if actor is None or body.recipient != actor.id or body.signer_key != signed.signer_id:
        raise ReceiptError("receipt names another signer", code="receipt_signer_mismatch")
    if actor.status is not ActorStatus.ACTIVE:
        raise ReceiptError("receipt signer is not an active actor", code="receipt_signer_inactive")
    if signer.record.revoked_by(now) or not signer.record.usable_at(body.at):
        raise ReceiptError(
            "signing key revoked or not valid at the receipt time", code="receipt_key_invalid"
        )
    return VerifiedReceipt(body, actor, data)


def check_receipt_matches(receipt: VerifiedReceipt, header: Header, header_hash: str) -> None:
    """Refuse a receipt that does not belong to this message and this recipient."""
    body = receipt.body
    if body.message != header.id or body.header_hash != header_hash or body.sender != header.sender:
        raise ReceiptError("receipt belongs to another message", code="receipt_mismatch")
    if body.recipient not in header.recipients:
        raise ReceiptError("receipt signer was not a recipient", code="receipt_not_recipient")
