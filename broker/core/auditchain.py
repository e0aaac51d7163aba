"""Tamper evidence for the audit trail: signed checkpoints over the audit stream.

The audit stream holds one canonical JSON event per JetStream sequence number.
A **checkpoint** seals a contiguous range ``first..last`` of sequences. It lists
the *leaf* of every event in the range, carries the running *chain* hash after
the range and the hash of the previous checkpoint, and is signed by a broker
key that the directory lists::

    leaf(s)  = SHA-256(event bytes at sequence s)
    chain(0) = 32 zero bytes
    chain(s) = SHA-256("ssr-audit-chain" 0x00 || chain(s-1) || s as 8 bytes big-endian || leaf(s))

Checkpoints are numbered 1, 2, ...; checkpoint n+1 starts right after
checkpoint n (``first = previous.last + 1``) and names its hash
(``previous``), so the checkpoints form a hash chain of their own. A
checkpoint is itself an event (kind ``checkpoint``) on the stream, and the
next checkpoint seals it.

:func:`verify_trail` recomputes everything from the stored events and says
exactly where the trail breaks: an event *altered* (its leaf differs), *moved*
(its leaf belongs at another sequence: reordering), *deleted* (a sealed
sequence is missing), *inserted* (an event where the seal says none can be),
or *truncated* (checkpoints, or sealed events at the end, are missing
compared with the latest checkpoint known from elsewhere: the broker's state
bucket or an export's header). Events after the last checkpoint are
*unsealed*: counted, not yet protected.

Several broker processes may seal the same stream: whoever wins the
compare-and-set of the latest checkpoint in the state bucket publishes it
(``broker.auditlog``); everything here is pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal, Self

from pydantic import Field, model_validator

from . import crypto
from .directory import PrincipalKind, SignerKey, VerifiedDirectory
from .errors import CoreError, MalformedInput
from .keys import SigningKeyPair
from .limits import MAX_SAFE_INTEGER
from .wire import Hash, HexId, Millis, Slug, WireModel

CHECKPOINT_KIND: Final = "checkpoint"
CHECKPOINT_VERSION: Final = 1
MAX_LEAVES: Final = 1024
MAX_CHECKPOINT_BYTES: Final = 64 * 1024 + MAX_LEAVES * 70
MAX_EVENT_BYTES: Final = 64 * 1024
ZERO: Final = bytes(32)
_CHAIN_TAG: Final = b"ssr-audit-chain\x00"


class AuditChainError(CoreError):
    """A checkpoint cannot be built or does not verify (``code`` says why)."""

    code = "checkpoint_invalid"


def leaf(event: bytes) -> bytes:
    return crypto.sha256(event)


def chain_step(previous: bytes, seq: int, leaf_hash: bytes) -> bytes:
    return crypto.sha256(_CHAIN_TAG + previous + seq.to_bytes(8, "big") + leaf_hash)


Leaf = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class CheckpointBody(WireModel):
    """The signed document of a checkpoint (the event's bytes, without ``signature``)."""

    v: Literal[1] = CHECKPOINT_VERSION
    kind: Literal["checkpoint"] = CHECKPOINT_KIND
    number: Annotated[int, Field(ge=1, le=MAX_SAFE_INTEGER)]
    first: Annotated[int, Field(ge=1, le=MAX_SAFE_INTEGER)]
    last: Annotated[int, Field(ge=1, le=MAX_SAFE_INTEGER)]
    leaves: Annotated[tuple[Leaf, ...], Field(min_length=1, max_length=MAX_LEAVES)]
    chain: Hash
    previous: Hash | None
    at: Millis
    broker: Slug
    signer_key: HexId

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.last != self.first + len(self.leaves) - 1:
            raise ValueError("last must be first + number of leaves - 1")
        if (self.number == 1) != (self.previous is None):
            raise ValueError("checkpoint 1 and only checkpoint 1 has no previous hash")
        return self


class SignedCheckpoint(CheckpointBody):
    signature: Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")]

    def body(self) -> CheckpointBody:
        return CheckpointBody(**self.model_dump(exclude={"signature"}))


@dataclass(frozen=True)
class Checkpoint:
    """A parsed checkpoint; ``raw`` is its exact signed bytes (the stored event)."""

    document: SignedCheckpoint
    raw: bytes = field(repr=False)

    number = property(lambda self: self.document.number)
    first = property(lambda self: self.document.first)
    last = property(lambda self: self.document.last)
    leaves = property(lambda self: self.document.leaves)
    chain = property(lambda self: self.document.chain)
    previous = property(lambda self: self.document.previous)
    at = property(lambda self: self.document.at)
    broker = property(lambda self: self.document.broker)
    signer_key = property(lambda self: self.document.signer_key)

    @property
    def hash(self) -> str:
        return crypto.sha256(self.raw).hex()

    def leaf_at(self, seq: int) -> str:
        return str(self.leaves[seq - self.first])


def make_checkpoint(
    entries: Sequence[tuple[int, bytes]],
    *,
    after: Checkpoint | None,
    at: int,
    broker: str,
    signer: SigningKeyPair,
) -> Checkpoint:
    """Seal ``entries`` (consecutive ``(seq, event bytes)`` right after ``after``)."""
    if not entries or len(entries) > MAX_LEAVES:
        raise AuditChainError(f"a checkpoint seals 1..{MAX_LEAVES} events", code="checkpoint_size")
    first = 1 if after is None else after.last + 1
    chain = ZERO if after is None else bytes.fromhex(after.chain)
    leaves = []
    for offset, (seq, event) in enumerate(entries):
        if seq != first + offset:
            raise AuditChainError(
                f"sequence {seq} where {first + offset} was expected: the trail has a gap",
                code="checkpoint_gap",
            )
        leaf_hash = leaf(event)
        chain = chain_step(chain, seq, leaf_hash)
        leaves.append(leaf_hash.hex())
    body = CheckpointBody(
        number=1 if after is None else after.number + 1,
        first=first,
        last=first + len(leaves) - 1,
        leaves=tuple(leaves),
        chain=chain.hex(),
        previous=None if after is None else after.hash,
        at=at,
        broker=broker,
        signer_key=signer.key_id,
    )
    signed = SignedCheckpoint(**body.model_dump(), signature=signer.sign(body.to_bytes()).hex())
    return Checkpoint(signed, signed.to_bytes())


def parse_checkpoint(raw: bytes) -> Checkpoint:
    """Parse a checkpoint event's bytes (shape only; :func:`verify_checkpoint` checks it)."""
    try:
        return Checkpoint(SignedCheckpoint.parse(raw, max_bytes=MAX_CHECKPOINT_BYTES), raw)
    except MalformedInput as exc:
        raise AuditChainError(f"not a well-formed checkpoint: {exc.message}") from exc


def broker_key(
    directories: Iterable[VerifiedDirectory], broker: str, key_id: str, at: int
) -> SignerKey | None:
    """``broker``'s signing key ``key_id`` if it was usable, and not revoked, at ``at``.

    The key's record is taken from the NEWEST directory version that lists it: a
    revocation published later applies to everything the key signed after the
    revocation time, whichever version the signature was first checked against.
    """
    found = None
    for directory in directories:  # oldest first: the last hit is the newest record
        candidate = directory.signer(key_id)
        if candidate is not None:
            found = candidate
    if (
        found is None
        or found.kind is not PrincipalKind.BROKER
        or found.principal != broker
        or not found.record.usable_at(at)
        or found.record.revoked_by(at)
    ):
        return None
    return found


def verify_checkpoint(raw: bytes, directories: Sequence[VerifiedDirectory]) -> Checkpoint:
    """Parse and check a checkpoint: its signature by a broker key that one of
    ``directories`` lists as usable (and not revoked) at the checkpoint's time, and
    that its chain hash follows from its leaves.

    Codes: ``checkpoint_invalid`` (shape), ``checkpoint_unknown_signer``,
    ``checkpoint_bad_signature``, ``checkpoint_inconsistent``.
    """
    checkpoint = parse_checkpoint(raw)
    signer = broker_key(directories, checkpoint.broker, checkpoint.signer_key, checkpoint.at)
    if signer is None:
        raise AuditChainError(
            f"checkpoint {checkpoint.number} is signed by a key no directory gives broker"
            f" {checkpoint.broker!r} at that time",
            code="checkpoint_unknown_signer",
        )
    try:
        crypto.verify(
            signer.record.raw,
            checkpoint.document.body().to_bytes(),
            bytes.fromhex(checkpoint.document.signature),
        )
    except crypto.CryptoFailure as exc:
        raise AuditChainError(
            f"checkpoint {checkpoint.number}: signature does not verify",
            code="checkpoint_bad_signature",
        ) from exc
    return checkpoint


def chain_from(start: bytes, checkpoint: Checkpoint) -> bytes:
    """The chain hash after ``checkpoint``'s range, starting from ``start``."""
    chain = start
    for offset, leaf_hex in enumerate(checkpoint.leaves):
        chain = chain_step(chain, checkpoint.first + offset, bytes.fromhex(leaf_hex))
    return chain


# --- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """Where the trail breaks: ``seq`` (None for the trail as a whole) and what is wrong."""

    seq: int | None
    problem: str  # altered, moved, deleted, inserted, truncated, checkpoint_* (see module doc)
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "problem": self.problem, "detail": self.detail}


@dataclass(frozen=True)
class TrailReport:
    """The outcome of :func:`verify_trail`."""

    events: int  # entries examined
    checkpoints: int  # valid checkpoints found
    sealed_through: int  # last sequence covered by an unbroken run of checkpoints from 1
    unsealed: int  # entries after the last checkpoint's range
    findings: tuple[Finding, ...]
    latest: Checkpoint | None

    @property
    def verified(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {
            "verified": self.verified,
            "events": self.events,
            "checkpoints": self.checkpoints,
            "sealed_through": self.sealed_through,
            "unsealed": self.unsealed,
            "findings": [f.as_dict() for f in self.findings],
        }


REDACTED: Final = None
"""An entry whose event bytes are left out (an export filtered by actor): its seal stands,
but it cannot be compared."""


def verify_trail(
    entries: Sequence[tuple[int, bytes | None]],
    directories: Sequence[VerifiedDirectory],
    *,
    expected: Mapping[str, Any] | None = None,
    start: Checkpoint | None = None,
    through: int | None = None,
    max_findings: int = 1000,
) -> TrailReport:
    """Check stored ``(seq, event bytes)`` entries against the checkpoints among them.

    ``entries`` are in the order they are stored (an export's order, or the stream's).
    An entry with bytes ``None`` is redacted: its leaf is taken on trust from the seal.
    ``expected`` is the latest checkpoint known from elsewhere (``{"number", "hash"}``),
    to detect truncation. ``start`` is a verified checkpoint the entries continue from
    (an export of a later part of the trail); without it the trail starts at sequence 1.
    ``through`` is the last sequence the store says it holds (missing ones are deleted).
    """
    findings: list[Finding] = []

    def found(seq: int | None, problem: str, detail: str) -> None:
        if len(findings) < max_findings:
            findings.append(Finding(seq, problem, detail))

    stored: dict[int, bytes | None] = {}
    previous_seq = 0
    for seq, data in entries:
        if seq in stored:
            found(seq, "inserted", f"sequence {seq} appears twice")
            continue
        if seq <= previous_seq:
            found(seq, "moved", f"sequence {seq} stored after sequence {previous_seq}")
        previous_seq = max(previous_seq, seq)
        stored[seq] = data

    # The checkpoints: verified, then linked into one run from ``start``.
    by_number: dict[int, Checkpoint] = {}
    for seq, data in stored.items():
        if data is None or not _is_checkpoint(data):
            continue
        try:
            checkpoint = verify_checkpoint(data, directories)
        except AuditChainError as exc:
            found(seq, exc.code, exc.message)
            continue
        if checkpoint.last >= seq:
            found(seq, "checkpoint_inconsistent", "a checkpoint seals its own position")
            continue
        known = by_number.get(checkpoint.number)
        if known is not None and known.hash != checkpoint.hash:
            found(seq, "checkpoint_conflict", f"two different checkpoints {checkpoint.number}")
            continue
        by_number[checkpoint.number] = checkpoint

    run: list[Checkpoint] = []
    after, chain = start, ZERO if start is None else bytes.fromhex(start.chain)
    number = 1 if start is None else start.number + 1
    while number in by_number:
        checkpoint = by_number[number]
        first = 1 if after is None else after.last + 1
        if checkpoint.first != first or checkpoint.previous != (after.hash if after else None):
            found(
                None, "checkpoint_chain_broken", f"checkpoint {number} does not follow {number - 1}"
            )
            break
        if after is not None and checkpoint.at < after.at:
            found(None, "checkpoint_inconsistent", f"checkpoint {number} predates {number - 1}")
            break
        chain = chain_from(chain, checkpoint)
        if chain.hex() != checkpoint.chain:
            found(None, "checkpoint_inconsistent", f"checkpoint {number}: chain hash differs")
            break
        run.append(checkpoint)
        after, number = checkpoint, number + 1
    stray = sorted(n for n in by_number if n > number)
    if stray and number not in by_number:
        found(
            None,
            "checkpoint_missing",
            f"checkpoint {number} is missing; {len(stray)} later ones are stranded",
        )

    # Every sealed sequence against its leaf.
    for checkpoint in run:
        leaves_here = {
            leaf_hex: checkpoint.first + i for i, leaf_hex in enumerate(checkpoint.leaves)
        }
        for seq in range(checkpoint.first, checkpoint.last + 1):
            if seq not in stored:
                found(seq, "deleted", f"sealed by checkpoint {checkpoint.number}, not stored")
                continue
            data = stored[seq]
            if data is REDACTED:
                continue
            actual = leaf(data).hex()
            if actual == checkpoint.leaf_at(seq):
                continue
            elsewhere = leaves_here.get(actual)
            if elsewhere is not None:
                found(seq, "moved", f"holds the event sealed at sequence {elsewhere}")
            else:
                found(seq, "altered", f"differs from what checkpoint {checkpoint.number} sealed")
    latest = run[-1] if run else start
    sealed_through = latest.last if latest is not None else 0
    first_seq = 1 if start is None else start.last + 1
    for seq in stored:
        if seq < first_seq:
            found(seq, "inserted", f"sequence {seq} lies before the part this trail covers")

    if expected is not None:
        want = expected.get("number")
        if not isinstance(want, int) or isinstance(want, bool) or not 0 <= want <= MAX_SAFE_INTEGER:
            want = 0
            found(None, "checkpoint_invalid", "the expected latest checkpoint is malformed")
        have = latest.number if latest is not None else 0
        if want > have:
            found(
                None,
                "truncated",
                f"the latest checkpoint is {want} ({str(expected.get('hash', ''))[:16]}...),"
                f" the trail holds checkpoints up to {have}: everything after sequence"
                f" {sealed_through} may be missing",
            )
        elif want and run and want in by_number and by_number[want].hash != expected.get("hash"):
            found(None, "checkpoint_conflict", f"checkpoint {want} differs from the one expected")
    # After the last seal nothing vouches for the events, but a missing sequence there is
    # still a deletion (JetStream numbers without gaps and the stream refuses deletes).
    tail_end = max([through or 0, *(seq for seq in stored if seq > sealed_through)], default=0)
    for seq in range(sealed_through + 1, tail_end + 1):
        if seq not in stored:
            found(seq, "deleted", "missing after the last checkpoint (not sealed yet)")
    unsealed = sum(1 for seq in stored if seq > sealed_through)
    return TrailReport(
        events=len(stored),
        checkpoints=len(run),
        sealed_through=sealed_through,
        unsealed=unsealed,
        findings=tuple(sorted(findings, key=lambda f: (f.seq is None, f.seq or 0))),
        latest=latest,
    )


def _is_checkpoint(data: bytes) -> bool:
    # Cheap test before parsing: events are canonical JSON with sorted keys.
    return b'"kind":"checkpoint"' in data[:4096] or b'"kind":"checkpoint"' in data[-8192:]


__all__ = [
    "CHECKPOINT_KIND",
    "MAX_LEAVES",
    "REDACTED",
    "AuditChainError",
    "Checkpoint",
    "CheckpointBody",
    "Finding",
    "TrailReport",
    "chain_from",
    "chain_step",
    "leaf",
    "make_checkpoint",
    "parse_checkpoint",
    "verify_checkpoint",
    "verify_trail",
]
