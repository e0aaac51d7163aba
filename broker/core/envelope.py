"""The envelope: one signed, end-to-end encrypted message (DESIGN.md section 5).

An envelope is an ``E`` frame (see ``frame``) with three sections:

1. **header** - canonical JSON (:class:`Header`): version, message id, type,
   sender and sender key id, sorted recipients, label, distribution status,
   priority, created/expires, incident, references, content type.
2. **wraps** - canonical JSON (:class:`KeyWraps`): for each recipient, in the
   header's order, the 32-byte content key sealed (``crypto_box_seal``) to
   that recipient's X25519 key, with that key's id.
3. **ciphertext** - a 24-byte nonce followed by XChaCha20-Poly1305-IETF of
   the payload under the content key, with SHA-256(header bytes) as
   associated data.

The sender's Ed25519 signature covers all three, so nothing in the header
(label, recipients, times, references) can change without detection; the
AEAD binds the payload to that exact header; and because the recipients
are signed, a recipient cannot pass the message on as if the sender had
addressed someone else.

Verification order (``read_envelope``, then ``open_envelope``): size bound,
frame layout, signer key lookup, signature over the received bytes, and
only then JSON parsing, header checks, unwrapping and decryption.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Final, Literal, ParamSpec, Self

from pydantic import Field, model_validator

from . import crypto, frame
from .crypto import SYSTEM_RANDOM, Random
from .directory import (
    Actor,
    ActorStatus,
    KeyRecord,
    PrincipalKind,
    SignerKey,
    VerifiedDirectory,
)
from .errors import EnvelopeError, FrameError, MalformedInput, OpenError
from .keys import Identity, b64, unb64
from .labels import Label
from .limits import (
    MAX_ENVELOPE_BYTES,
    MAX_HEADER_BYTES,
    MAX_RECIPIENTS,
    MAX_REFERENCES,
    MAX_WRAPS_BYTES,
)
from .policy import Policy
from .vocabulary import MessageType, Mode, Priority, ReferenceKind, Status
from .wire import Hash, HexId, Millis, Recipients, Slug, WireModel

ENVELOPE_VERSION: Final = 1
P = ParamSpec("P")
ContentType = Annotated[str, Field(pattern=r"^[a-z]+/[a-z0-9.+-]+$", max_length=100)]


class Reference(WireModel):
    """A link to an earlier envelope, pinned by the hash of its signed header."""

    kind: ReferenceKind
    message: HexId
    header_hash: Hash


class PressStage(StrEnum):
    """Where a press line (a ``communication`` in an incident) stands."""

    DRAFT = "draft"  # shared with the incident's communicators for comments
    APPROVED = "approved"  # the communication lead's approval: the line may go public


class Control(WireModel):
    """Parameters of messages the broker must read (payloads it cannot).

    ``mode`` for ``mode_change``; for ``activation``: ``incident_type`` (a
    typhändelse from the region's catalogue, e.g. ``storm``) and optionally the
    incident's ``communication_lead``; ``deadline`` (epoch ms) by which a
    ``request``'s recipients should answer; ``press`` for a press line
    (``communication``).
    """

    mode: Mode | None = None
    incident_type: Slug | None = None
    communication_lead: Slug | None = None
    deadline: Millis | None = None
    press: PressStage | None = None


class Header(WireModel):
    """Everything the broker may read about a message; signed by the sender."""

    v: Literal[1] = ENVELOPE_VERSION
    id: HexId
    type: MessageType
    sender: Slug
    sender_key: HexId
    recipients: Recipients
    label: Label
    status: Status
    priority: Priority
    created: Millis
    expires: Millis
    incident: Slug | None = None
    references: Annotated[tuple[Reference, ...], Field(max_length=MAX_REFERENCES)] = ()
    content_type: ContentType = "application/octet-stream"
    control: Control | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.expires <= self.created:
            raise ValueError("expires must be later than created")
        if sum(r.kind is ReferenceKind.FORWARD for r in self.references) > 1:
            raise ValueError("an envelope forwards at most one message")
        return self

    def forwarded(self) -> Reference | None:
        return next((r for r in self.references if r.kind is ReferenceKind.FORWARD), None)


class Wrap(WireModel):
    """The content key sealed to one recipient's encryption key."""

    recipient: Slug
    key_id: HexId
    sealed: Annotated[str, Field(min_length=108, max_length=108)]  # 80 bytes in base64

    @model_validator(mode="after")
    def _sealed_is_base64(self) -> Self:
        unb64(self.sealed, length=crypto.SEAL_OVERHEAD_BYTES + crypto.CONTENT_KEY_BYTES)
        return self


class KeyWraps(WireModel):
    wraps: Annotated[tuple[Wrap, ...], Field(min_length=1, max_length=MAX_RECIPIENTS)]


@dataclass(frozen=True)
class RecipientKey:
    """Whom to wrap the content key for: an actor and its current encryption key."""

    actor: str
    key_id: str
    public: bytes

    @classmethod
    def of(cls, actor: Actor, at: int) -> RecipientKey:
        record = actor.encryption_key(at)
        if record is None:
            raise EnvelopeError(
                f"{actor.id} has no usable encryption key", code="recipient_key_invalid"
            )
        return cls(actor.id, record.key_id, record.raw)


@dataclass(frozen=True)
class SignedEnvelope:
    """An envelope whose signature verified against a directory key; times not yet checked."""

    raw: bytes = field(repr=False)
    header: Header
    header_hash: str
    wraps: tuple[Wrap, ...] = field(repr=False)
    ciphertext: bytes = field(repr=False)
    sender: Actor = field(repr=False)
    sender_key: KeyRecord = field(repr=False)


@dataclass(frozen=True)
class OpenedEnvelope:
    """A verified, decrypted envelope addressed to us."""

    header: Header
    header_hash: str
    payload: bytes = field(repr=False)
    raw: bytes = field(repr=False)


def header_hash(header_bytes: bytes) -> bytes:
    return crypto.sha256(header_bytes)


def new_message_id(rand: Random = SYSTEM_RANDOM) -> str:
    return rand(16).hex()


@dataclass(frozen=True)
class SealedEnvelope:
    """A freshly built envelope and its content key, which only the sender keeps (to grant
    the message to an actor that joins the incident later, see ``grants``)."""

    raw: bytes = field(repr=False)
    content_key: bytes = field(repr=False)
    header: Header
    header_hash: str  # hex, as SignedEnvelope.header_hash


def seal_envelope(
    *,
    sender: Identity,
    recipients: Sequence[RecipientKey],
    label: Label,
    message_type: MessageType,
    payload: bytes,
    created: int,
    expires: int,
    priority: Priority = Priority.ROUTINE,
    status: Status = Status.ACTUAL,
    incident: str | None = None,
    references: Sequence[Reference] = (),
    content_type: str = "application/octet-stream",
    control: Control | None = None,
    message_id: str | None = None,
    rand: Random = SYSTEM_RANDOM,
) -> SealedEnvelope:
    """Sign and encrypt one message; ``created``/``expires`` are epoch milliseconds.

    Randomness comes from ``rand`` in a fixed order (message id if not given,
    content key, nonce, one ephemeral key per recipient in sorted order), so
    a seeded ``rand`` gives reproducible vectors.
    """
    ordered = sorted(recipients, key=lambda r: r.actor)
    if len({r.actor for r in ordered}) != len(ordered):
        raise EnvelopeError("a recipient is listed twice", code="malformed")
    try:
        header = Header(
            id=message_id or new_message_id(rand),
            type=message_type,
            sender=sender.principal,
            sender_key=sender.signing.key_id,
            recipients=tuple(r.actor for r in ordered),
            label=label,
            status=status,
            priority=priority,
            created=created,
            expires=expires,
            incident=incident,
            references=tuple(references),
            content_type=content_type,
            control=control,
        )
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        raise EnvelopeError(f"cannot build header: {exc}", code="malformed") from exc
    header_bytes = header.to_bytes()
    content_key = rand(crypto.CONTENT_KEY_BYTES)
    nonce = rand(crypto.AEAD_NONCE_BYTES)
    ciphertext = nonce + crypto.aead_encrypt(content_key, nonce, payload, header_hash(header_bytes))
    wraps = KeyWraps(wraps=tuple(_wrap(content_key, r, rand) for r in ordered))
    raw = frame.encode(
        frame.Kind.ENVELOPE, sender.signing, (header_bytes, wraps.to_bytes(), ciphertext)
    )
    return SealedEnvelope(raw, content_key, header, header_hash(header_bytes).hex())


def _without_key(seal: Callable[P, SealedEnvelope]) -> Callable[P, bytes]:
    def build(*args: P.args, **kwargs: P.kwargs) -> bytes:
        return seal(*args, **kwargs).raw

    return build


build_envelope = _without_key(seal_envelope)
"""Sign and encrypt one message (arguments as for :func:`seal_envelope`); the envelope's
bytes only, for senders that need not keep the content key."""


def wrap_for(content_key: bytes, recipient: RecipientKey, rand: Random = SYSTEM_RANDOM) -> Wrap:
    """Seal ``content_key`` to one recipient's encryption key."""
    return _wrap(content_key, recipient, rand)


def _wrap(content_key: bytes, recipient: RecipientKey, rand: Random) -> Wrap:
    try:
        sealed = crypto.seal(content_key, recipient.public, rand(crypto.SECRET_KEY_BYTES))
    except crypto.CryptoFailure as exc:
        raise EnvelopeError(
            f"{recipient.actor}'s encryption key is refused by libsodium (small-order point?)",
            code="recipient_key_invalid",
        ) from exc
    return Wrap(recipient=recipient.actor, key_id=recipient.key_id, sealed=b64(sealed))


def _frame(data: bytes, max_bytes: int) -> frame.Frame:
    return frame.decode(
        data,
        frame.Kind.ENVELOPE,
        max_bytes=max_bytes,
        max_section=(MAX_HEADER_BYTES, MAX_WRAPS_BYTES, max_bytes),
    )


def claimed_type(data: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> str | None:
    """The message type an envelope's header claims, *without* checking its signature:
    for scheduling only (which submissions must be routed one at a time), never for a
    decision. None for anything that is not a well-formed envelope frame."""
    try:
        claimed = json.loads(_frame(data, max_bytes).sections[0]).get("type")
    except (FrameError, ValueError, AttributeError, RecursionError):
        return None
    return claimed if isinstance(claimed, str) else None


def _actor_signer(directory: VerifiedDirectory, key_id: str) -> SignerKey:
    signer = directory.signer(key_id)
    if signer is None or signer.kind is not PrincipalKind.ACTOR:
        raise EnvelopeError(
            "signed by a key the directory does not know", code="unknown_sender_key"
        )
    return signer


def check_sender(directory: VerifiedDirectory, header: Header, key_id: str) -> Actor:
    """That ``key_id`` is an actor's signing key in ``directory`` and ``header`` names that
    actor as its sender and the key as its sender key (``unknown_sender_key``,
    ``sender_mismatch``): what :func:`read_envelope` checks besides the signature, for an
    envelope its sender has just sealed. Returns the sender."""
    signer = _actor_signer(directory, key_id)
    sender = directory.actor(signer.principal)
    if sender is None or header.sender != sender.id or header.sender_key != key_id:
        raise EnvelopeError("header sender does not own the signing key", code="sender_mismatch")
    return sender


def read_envelope(
    data: bytes, directory: VerifiedDirectory, *, max_bytes: int = MAX_ENVELOPE_BYTES
) -> SignedEnvelope:
    """Check size, layout and signature, then parse; raise :class:`EnvelopeError` with a code.

    Codes: ``too_large``, ``unsupported_version``, ``malformed``,
    ``unknown_sender_key``, ``bad_signature``, ``sender_mismatch``,
    ``wraps_mismatch``.
    """
    try:
        signed = _frame(data, max_bytes)
    except FrameError as exc:
        code = exc.code if exc.code in {"too_large", "unsupported_version"} else "malformed"
        raise EnvelopeError(exc.message, code=code) from exc
    signer = _actor_signer(directory, signed.signer_id)
    try:
        signed.verify(signer.record.raw)
    except crypto.CryptoFailure as exc:
        raise EnvelopeError("signature does not verify", code="bad_signature") from exc
    header_bytes, wraps_bytes, ciphertext = signed.sections
    try:
        header = Header.parse(header_bytes, max_bytes=MAX_HEADER_BYTES)
        wraps = KeyWraps.parse(wraps_bytes, max_bytes=MAX_WRAPS_BYTES).wraps
    except MalformedInput as exc:
        raise EnvelopeError(exc.message, code="malformed") from exc
    sender = check_sender(directory, header, signed.signer_id)
    if tuple(w.recipient for w in wraps) != header.recipients:
        raise EnvelopeError("key wraps do not match the recipients", code="wraps_mismatch")
    if len(ciphertext) < crypto.AEAD_NONCE_BYTES + crypto.AEAD_TAG_BYTES:
        raise EnvelopeError("ciphertext too short", code="malformed")
    return SignedEnvelope(
        raw=data,
        header=header,
        header_hash=header_hash(header_bytes).hex(),
        wraps=wraps,
        ciphertext=ciphertext,
        sender=sender,
        sender_key=signer.record,
    )


def open_envelope(
    data: bytes,
    *,
    me: Identity,
    directory: VerifiedDirectory,
    policy: Policy,
    now: int,
) -> OpenedEnvelope:
    """Verify and decrypt an envelope addressed to ``me`` (the recipient's check).

    Every cryptographic failure raises :class:`OpenError` with code
    ``invalid``. Other refusals: ``sender_inactive``, ``sender_key_revoked``,
    ``not_yet_valid``, ``expired``, ``lifetime_too_long``, ``not_addressed``,
    ``label_invalid``, ``not_cleared``. Replays are the caller's to drop: it keeps the seen
    ids until ``expires`` plus the policy's clock leeway, as this still opens until then.

    The sender key must have been usable when the envelope was created and
    must not be revoked now: a recipient cannot tell a backdated signature
    from a stolen key from an old one, so revocation refuses both.
    """
    try:
        signed = read_envelope(data, directory, max_bytes=policy.limits.max_envelope_bytes)
    except EnvelopeError as exc:
        raise OpenError("envelope does not verify") from exc
    wrap = next((w for w in signed.wraps if w.recipient == me.principal), None)
    check_openable(
        signed, me=me, directory=directory, policy=policy, now=now, addressed=wrap is not None
    )
    assert wrap is not None
    return decrypt_with(signed, wrap, me)


def check_openable(
    signed: SignedEnvelope,
    *,
    me: Identity,
    directory: VerifiedDirectory,
    policy: Policy,
    now: int,
    addressed: bool = True,
) -> None:
    """The recipient's checks of a verified envelope before it unwraps anything, in order:
    sender active and its key valid, times, addressed to ``me`` (``addressed``), label of
    this policy and within ``me``'s clearance."""
    header = signed.header
    key, limits = signed.sender_key, policy.limits
    if signed.sender.status is not ActorStatus.ACTIVE:
        raise OpenError("sender is not an active actor", code="sender_inactive")
    if key.revoked_by(now) or not key.usable_at(header.created):
        raise OpenError("sender key revoked or not valid when signed", code="sender_key_revoked")
    skew = limits.clock_skew_seconds * 1000
    if header.created > now + skew:
        raise OpenError("created in the future", code="not_yet_valid")
    if header.expires <= now - skew:
        raise OpenError("expired", code="expired")
    if header.expires - header.created > limits.max_lifetime_seconds * 1000:
        raise OpenError("expiry too far after creation", code="lifetime_too_long")
    if not addressed:
        raise OpenError("not addressed to this actor", code="not_addressed")
    if header.label.policy != policy.id:
        raise OpenError("label belongs to another policy", code="label_invalid")
    myself = directory.actor(me.principal)
    ladder = policy.ladder_order
    if (
        myself is None
        or not ladder.knows(header.label.classification)
        or not ladder.knows(myself.clearance)
        or not ladder.cleared_for(myself.clearance, myself.categories, header.label)
    ):
        raise OpenError("label exceeds this actor's clearance", code="not_cleared")


def decrypt_own(signed: SignedEnvelope, content_key: bytes) -> OpenedEnvelope:
    """The sender's side: decrypt an envelope it sent with the content key it kept."""
    try:
        nonce = signed.ciphertext[: crypto.AEAD_NONCE_BYTES]
        body = signed.ciphertext[crypto.AEAD_NONCE_BYTES :]
        payload = crypto.aead_decrypt(content_key, nonce, body, bytes.fromhex(signed.header_hash))
    except crypto.CryptoFailure as exc:
        raise OpenError("envelope cannot be opened") from exc
    return OpenedEnvelope(
        header=signed.header, header_hash=signed.header_hash, payload=payload, raw=signed.raw
    )


def decrypt_with(signed: SignedEnvelope, wrap: Wrap, me: Identity) -> OpenedEnvelope:
    """Unwrap the content key from ``wrap`` with ``me``'s key and decrypt the payload."""
    try:
        if wrap.key_id != me.encryption.key_id:
            raise crypto.CryptoFailure
        # The Wrap model guarantees an 80-byte box, so a box that opens holds 32 bytes.
        content_key = crypto.seal_open(
            unb64(wrap.sealed), me.encryption.secret, me.encryption.public
        )
    except crypto.CryptoFailure as exc:
        raise OpenError("envelope cannot be opened") from exc
    return decrypt_own(signed, content_key)
