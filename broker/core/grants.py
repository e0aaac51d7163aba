"""Key grants: how an actor that joins an incident late gets still-valid earlier messages.

An envelope's signature covers its recipients and their key wraps, so nobody can add a
recipient to it. When an actor joins an incident, the broker asks the originator of
each still-valid message of that incident to *grant* it: the originator's client, which
kept the message's content key, seals that key to the newcomer's encryption key and
signs a ``G`` frame with two sections:

1. the canonical JSON :class:`GrantBody`: message id and header hash, originator
   (``sender``) and the key it signs with, newcomer (``recipient``), incident, the new
   wrap (``key_id``, ``sealed``) and the time;
2. the original envelope, byte for byte.

The broker checks the grant against its record and the incident and delivers the frame
to the newcomer, whose client verifies both signatures (the grant's and the envelope's,
by the same actor), runs the recipient's checks (times, label against its clearance)
and decrypts with the granted key. The payload's AEAD binds it to the original header,
so a grant cannot attach other content to a message.

Only the originator can grant (nobody else holds the content key), and only where the
label allows: never TLP:RED or TLP:AMBER+STRICT content (the originator named its
recipients), never a newcomer not cleared for the label (see :func:`grantable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Final, Literal

from pydantic import Field

from . import crypto, frame
from .crypto import SYSTEM_RANDOM, Random
from .directory import Actor, ActorStatus, PrincipalKind, VerifiedDirectory
from .envelope import (
    OpenedEnvelope,
    RecipientKey,
    SignedEnvelope,
    Wrap,
    check_openable,
    decrypt_with,
    read_envelope,
    wrap_for,
)
from .errors import CoreError, EnvelopeError, FrameError, GrantError, MalformedInput, OpenError
from .keys import Identity
from .labels import NEVER_FORWARDED, Label
from .limits import KIB, MAX_ENVELOPE_BYTES
from .policy import Policy
from .wire import Hash, HexId, Millis, Slug, WireModel

GRANT_VERSION: Final = 1
MAX_GRANT_BODY_BYTES: Final = 4 * KIB


class GrantBody(WireModel):
    v: Literal[1] = GRANT_VERSION
    message: HexId
    header_hash: Hash
    sender: Slug  # the originator, who signs the grant
    signer_key: HexId
    recipient: Slug  # the newcomer
    incident: Slug
    key_id: HexId  # the newcomer's encryption key the content key is sealed to
    sealed: Annotated[str, Field(min_length=108, max_length=108)]
    at: Millis


@dataclass(frozen=True)
class VerifiedGrant:
    body: GrantBody
    envelope: SignedEnvelope
    raw: bytes


def grantable(label: Label, newcomer: Actor | None, policy: Policy, now: int) -> str | None:
    """Why ``label``'s content may not be granted to ``newcomer``, or None if it may."""
    if label.tlp in NEVER_FORWARDED:
        return f"TLP:{label.tlp.value} content is never granted to actors it was not sent to"
    if newcomer is None or newcomer.status is not ActorStatus.ACTIVE:
        return "the newcomer is not an active actor"
    if newcomer.encryption_key(now) is None:
        return "the newcomer has no usable encryption key"
    ladder = policy.ladder_order
    if not (
        ladder.knows(label.classification)
        and ladder.knows(newcomer.clearance)
        and ladder.cleared_for(newcomer.clearance, newcomer.categories, label)
    ):
        return "the newcomer is not cleared for the label"
    return None


def make_grant(
    me: Identity,
    envelope: bytes,
    content_key: bytes,
    *,
    newcomer: Actor,
    directory: VerifiedDirectory,
    policy: Policy,
    at: int,
    rand: Random = SYSTEM_RANDOM,
) -> bytes:
    """Grant ``envelope`` (sent by ``me``, naming an incident) to ``newcomer``.

    Raises :class:`GrantError`: the envelope's own codes when the original does not
    verify, ``grant_not_originator``, ``grant_no_incident``, ``grant_already_recipient``,
    ``grant_not_allowed`` (label, TLP or newcomer), ``grant_malformed``.
    """
    try:
        signed = read_envelope(envelope, directory)
    except EnvelopeError as exc:
        raise GrantError(f"the original does not verify: {exc.message}", code=exc.code) from exc
    header = signed.header
    if header.sender != me.principal:
        raise GrantError("only the originator can grant a message", code="grant_not_originator")
    if header.incident is None:
        raise GrantError("only incident messages are granted", code="grant_no_incident")
    if newcomer.id in header.recipients or newcomer.id == header.sender:
        raise GrantError(f"{newcomer.id} already has it", code="grant_already_recipient")
    why = grantable(header.label, newcomer, policy, at)
    if why is not None:
        raise GrantError(why, code="grant_not_allowed")
    try:
        wrap = wrap_for(content_key, RecipientKey.of(newcomer, at), rand)
        body = GrantBody(
            message=header.id,
            header_hash=signed.header_hash,
            sender=me.principal,
            signer_key=me.signing.key_id,
            recipient=newcomer.id,
            incident=header.incident,
            key_id=wrap.key_id,
            sealed=wrap.sealed,
            at=at,
        )
    except (ValueError, CoreError) as exc:
        raise GrantError(f"cannot build grant: {exc}", code="grant_malformed") from exc
    return frame.encode(frame.Kind.GRANT, me.signing, (body.to_bytes(), envelope))


def verify_grant(
    data: bytes,
    directory: VerifiedDirectory,
    *,
    now: int,
    max_envelope_bytes: int = MAX_ENVELOPE_BYTES,
) -> VerifiedGrant:
    """Check a grant's frame and signature, then the envelope it carries.

    Codes: ``grant_malformed``, ``grant_unknown_signer``, ``grant_bad_signature``,
    ``grant_signer_mismatch`` (not the envelope's sender), ``grant_key_invalid``,
    ``grant_mismatch`` (names another message or incident), ``grant_already_recipient``,
    and the envelope's own codes.
    """
    try:
        signed = frame.decode(
            data,
            frame.Kind.GRANT,
            max_bytes=max_envelope_bytes + MAX_GRANT_BODY_BYTES + 256,
            max_section=(MAX_GRANT_BODY_BYTES, max_envelope_bytes),
        )
    except FrameError as exc:
        raise GrantError(exc.message, code="grant_malformed") from exc
    signer = directory.signer(signed.signer_id)
    if signer is None or signer.kind is not PrincipalKind.ACTOR:
        raise GrantError("signed by an unknown key", code="grant_unknown_signer")
    try:
        signed.verify(signer.record.raw)
    except crypto.CryptoFailure as exc:
        raise GrantError("grant signature does not verify", code="grant_bad_signature") from exc
    try:
        body = GrantBody.parse(signed.sections[0], max_bytes=MAX_GRANT_BODY_BYTES)
        Wrap(recipient=body.recipient, key_id=body.key_id, sealed=body.sealed)
    except (MalformedInput, ValueError) as exc:
        raise GrantError(f"grant body: {exc}", code="grant_malformed") from exc
    if body.sender != signer.principal or body.signer_key != signed.signer_id:
        raise GrantError("grant names another signer", code="grant_signer_mismatch")
    # ``at`` is the grantor's word: the key must be valid then *and* now, so an expired
    # key cannot grant by backdating; and the originator must still be an active actor.
    originator = directory.actor(signer.principal)
    if (
        signer.record.revoked_by(now)
        or not signer.record.usable_at(body.at)
        or not signer.record.usable_at(now)
        or originator is None
        or originator.status is not ActorStatus.ACTIVE
    ):
        raise GrantError("grant signing key or its actor not valid", code="grant_key_invalid")
    try:
        envelope = read_envelope(signed.sections[1], directory, max_bytes=max_envelope_bytes)
    except EnvelopeError as exc:
        raise GrantError(f"the granted envelope: {exc.message}", code=exc.code) from exc
    header = envelope.header
    if header.sender != body.sender:
        raise GrantError("only the originator can grant a message", code="grant_signer_mismatch")
    if (
        header.id != body.message
        or envelope.header_hash != body.header_hash
        or header.incident != body.incident
    ):
        raise GrantError("grant does not match the envelope it carries", code="grant_mismatch")
    if body.recipient in header.recipients or body.recipient == header.sender:
        raise GrantError("the newcomer is already a recipient", code="grant_already_recipient")
    return VerifiedGrant(body, envelope, data)


def open_grant(
    grant: VerifiedGrant, *, me: Identity, directory: VerifiedDirectory, policy: Policy, now: int
) -> OpenedEnvelope:
    """The newcomer's side: the recipient's checks, then decrypt with the granted key.

    Raises :class:`~.errors.OpenError` (codes as :func:`~.envelope.open_envelope`, with
    ``not_addressed`` when the grant names another actor) or :class:`GrantError`
    (``grant_not_allowed`` for TLP:RED and AMBER+STRICT content).
    """
    body = grant.body
    if body.recipient != me.principal:
        raise OpenError("grant is for another actor", code="not_addressed")
    if grant.envelope.header.label.tlp in NEVER_FORWARDED:
        raise GrantError("this label is never granted", code="grant_not_allowed")
    check_openable(grant.envelope, me=me, directory=directory, policy=policy, now=now)
    wrap = Wrap(recipient=body.recipient, key_id=body.key_id, sealed=body.sealed)
    return decrypt_with(grant.envelope, wrap, me)


__all__ = ["GrantBody", "VerifiedGrant", "grantable", "make_grant", "open_grant", "verify_grant"]
