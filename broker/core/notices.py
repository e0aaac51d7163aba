"""Notices: what the broker tells a sender about its message, signed by the broker.

A notice is an ``N`` frame with one section, the canonical JSON
:class:`NoticeBody`, signed by a broker key listed in the directory's
``brokers``. Kinds:

- ``accepted``: the envelope passed the decision and was routed to its recipients.
- ``rejected``: the envelope was refused; ``reason`` is the decision's reason
  code and ``recipients`` the actors concerned, where the reason is about them.
- ``escalation``: ``recipients`` have not confirmed delivery by the deadline
  the priority sets.
- ``overdue``: ``recipients`` have not answered a ``request`` by its deadline.
- ``grant_request``: ``recipients`` (one actor) joined the message's incident; the
  originator's client is asked to grant it the message (see ``grants``).

``submission`` is the SHA-256 of the submitted bytes, so a sender can match a
rejection even when the broker could not read a message id.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import Field

from . import crypto, frame
from .directory import PrincipalKind, VerifiedDirectory
from .errors import CoreError, FrameError, MalformedInput
from .keys import SigningKeyPair
from .wire import Hash, HexId, Millis, Slug, WireModel

NOTICE_VERSION: Final = 1
MAX_NOTICE_BYTES: Final = 16 * 1024
_SECTIONS = (MAX_NOTICE_BYTES,)
ReasonCode = Annotated[str, Field(pattern=r"^[a-z][a-z_]{0,39}$")]


class NoticeError(CoreError):
    """A notice that does not verify; ``code`` says why."""

    code = "notice_invalid"


class NoticeKind(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    ESCALATION = "escalation"
    OVERDUE = "overdue"
    GRANT_REQUEST = "grant_request"


class NoticeBody(WireModel):
    v: Literal[1] = NOTICE_VERSION
    kind: NoticeKind
    broker: Slug
    signer_key: HexId
    to: Slug
    message: HexId | None = None
    header_hash: Hash | None = None
    submission: Hash
    reason: ReasonCode | None = None
    recipients: Annotated[tuple[Slug, ...], Field(max_length=200)] = ()
    at: Millis
    detail: Annotated[str, Field(max_length=500)] = ""


@dataclass(frozen=True)
class BrokerIdentity:
    """The broker's own signing key and its id in the directory's ``brokers``."""

    broker: str
    signing: SigningKeyPair


def make_notice(
    me: BrokerIdentity,
    kind: NoticeKind,
    *,
    to: str,
    submission: bytes,
    at: int,
    message: str | None = None,
    header_hash: str | None = None,
    reason: str | None = None,
    recipients: tuple[str, ...] = (),
    detail: str = "",
) -> bytes:
    """Sign a notice for ``to`` about ``submission`` (the exact bytes it submitted).

    ``detail`` is cut to 500 characters. Raises :class:`NoticeError` (``notice_malformed``)
    if the body is invalid or its canonical bytes exceed the bound every verifier enforces.
    """
    try:
        body = NoticeBody(
            kind=kind,
            broker=me.broker,
            signer_key=me.signing.key_id,
            to=to,
            message=message,
            header_hash=header_hash,
            submission=crypto.sha256(submission).hex(),
            reason=reason,
            recipients=recipients,
            at=at,
            detail=detail[:500],
        )
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        raise NoticeError(f"cannot build notice: {exc}", code="notice_malformed") from exc
    data = body.to_bytes()
    if len(data) > MAX_NOTICE_BYTES:
        raise NoticeError(
            f"notice body of {len(data)} bytes exceeds {MAX_NOTICE_BYTES}", code="notice_malformed"
        )
    return frame.encode(frame.Kind.NOTICE, me.signing, (data,))


def verify_notice(data: bytes, directory: VerifiedDirectory, *, now: int) -> NoticeBody:
    """Check a notice's frame, its broker signature and key validity, then parse it.

    Codes: ``notice_malformed``, ``notice_unknown_signer``, ``notice_bad_signature``,
    ``notice_key_invalid``.
    """
    try:
        signed = frame.decode(
            data, frame.Kind.NOTICE, max_bytes=MAX_NOTICE_BYTES + 128, max_section=_SECTIONS
        )
    except FrameError as exc:
        raise NoticeError(exc.message, code="notice_malformed") from exc
    signer = directory.signer(signed.signer_id)
    if signer is None or signer.kind is not PrincipalKind.BROKER:
        raise NoticeError("not signed by a broker of this directory", code="notice_unknown_signer")
    try:
        signed.verify(signer.record.raw)
    except crypto.CryptoFailure as exc:
        raise NoticeError("notice signature does not verify", code="notice_bad_signature") from exc
    try:
        body = NoticeBody.parse(signed.sections[0], max_bytes=MAX_NOTICE_BYTES)
    except MalformedInput as exc:
        raise NoticeError(exc.message, code="notice_malformed") from exc
    if body.broker != signer.principal or body.signer_key != signed.signer_id:
        raise NoticeError("notice names another broker", code="notice_unknown_signer")
    if signer.record.revoked_by(now) or not signer.record.usable_at(body.at):
        raise NoticeError("broker key not valid", code="notice_key_invalid")
    return body


__all__ = [
    "BrokerIdentity",
    "NoticeBody",
    "NoticeError",
    "NoticeKind",
    "make_notice",
    "verify_notice",
]
