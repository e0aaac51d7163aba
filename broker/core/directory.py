"""The signed directory: who the actors are, their keys, clearances, groups and officers.

Each version is a canonical JSON document in a ``D`` frame signed by a
registry authority key. Versions form a hash chain: version n+1 names the
SHA-256 of version n's frame bytes in ``previous`` and must be signed by an
authority key that version n lists as usable. A client pins one authority
public key; the first version it accepts must be signed by that key, and
every later one must extend the chain it holds. Key rotation and
revocation are new versions (a new key record; ``revoked_at`` or
``not_after`` set on the old one).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, Self

from pydantic import Field, model_validator

from . import crypto, frame
from .errors import DirectoryError, FrameError, MalformedInput
from .keys import SigningKeyPair, b64, unb64
from .labels import ClassificationName
from .limits import (
    MAX_DIRECTORY_ACTORS,
    MAX_DIRECTORY_BYTES,
    MAX_GROUPS,
    MAX_KEYS_PER_ACTOR,
    MAX_SAFE_INTEGER,
)
from .vocabulary import Role
from .wire import Categories, Hash, HexId, Millis, Name, Slug, SortedSlugs, WireModel

DIRECTORY_VERSION: Final = 1


class KeyRecord(WireModel):
    """One public key with its validity: usable from ``not_before`` until
    ``not_after`` or ``revoked_at``, whichever comes first."""

    key_id: HexId
    public: str
    not_before: Millis
    not_after: Millis
    revoked_at: Millis | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        try:
            raw = unb64(self.public, length=crypto.PUBLIC_KEY_BYTES)
        except ValueError as exc:
            raise ValueError(f"public key: {exc}") from exc
        if crypto.key_id(raw).hex() != self.key_id:
            raise ValueError("key_id does not match the public key")
        if self.not_after <= self.not_before:
            raise ValueError("not_after must be later than not_before")
        return self

    @classmethod
    def for_key(cls, public: bytes, *, not_before: int, not_after: int) -> KeyRecord:
        return cls(
            key_id=crypto.key_id(public).hex(),
            public=b64(public),
            not_before=not_before,
            not_after=not_after,
        )

    @property
    def raw(self) -> bytes:
        return unb64(self.public)

    def revoked_by(self, at: int) -> bool:
        return self.revoked_at is not None and at >= self.revoked_at

    def usable_at(self, at: int) -> bool:
        return self.not_before <= at < self.not_after and not self.revoked_by(at)


Keys = Annotated[tuple[KeyRecord, ...], Field(min_length=1, max_length=MAX_KEYS_PER_ACTOR)]


class ActorKind(StrEnum):
    COUNTY = "county"  # Länsstyrelsen
    MUNICIPALITY = "municipality"
    REGION = "region"  # Region Stockholm
    POLICE = "police"
    MILITARY = "military"
    DISPATCH = "dispatch"  # SOS Alarm
    TRANSPORT = "transport"  # Trafikverket
    COAST_GUARD = "coast_guard"
    PORT = "port"
    FIRE_RESCUE = "fire_rescue"
    ADAPTER = "adapter"  # an automated alert source
    OTHER = "other"


class ActorStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    RETIRED = "retired"


def _unique_ids(items: Iterable[Any], what: str) -> None:
    ids = [item.id for item in items]
    if ids != sorted(set(ids)):
        raise ValueError(f"{what} must be sorted by id without duplicates")


def _unique_key_ids(keys: tuple[KeyRecord, ...]) -> None:
    if len({k.key_id for k in keys}) != len(keys):
        raise ValueError("a key is listed twice")


class Actor(WireModel):
    """A member organisation or one of its systems."""

    id: Slug
    name: Name
    kind: ActorKind
    status: ActorStatus = ActorStatus.ACTIVE
    clearance: ClassificationName
    categories: Categories = ()
    groups: SortedSlugs = ()
    roles: tuple[Role, ...] = ()
    signing_keys: Keys
    encryption_keys: Keys

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if list(self.roles) != sorted(set(self.roles)):
            raise ValueError("roles must be sorted and without duplicates")
        _unique_key_ids(self.signing_keys)
        _unique_key_ids(self.encryption_keys)
        return self

    def has_role(self, role: Role) -> bool:
        return role is Role.MEMBER or role in self.roles

    def encryption_key(self, at: int) -> KeyRecord | None:
        """The newest encryption key usable at ``at``: the one senders wrap for."""
        usable = [k for k in self.encryption_keys if k.usable_at(at)]
        return max(usable, key=lambda k: (k.not_before, k.key_id)) if usable else None


class Group(WireModel):
    id: Slug
    name: Name


class BrokerService(WireModel):
    """A broker process group: its key signs the notices it sends to actors."""

    id: Slug
    name: Name
    signing_keys: Keys


class Officer(WireModel):
    """A security officer (säkerhetschef): ``actor`` is their scope, ``None`` the whole region."""

    id: Slug
    name: Name
    actor: Slug | None
    signing_keys: Keys


class DirectoryDocument(WireModel):
    """One version of the directory, as signed by the authority."""

    v: Literal[1] = DIRECTORY_VERSION
    region: Slug
    version: Annotated[int, Field(ge=1, le=MAX_SAFE_INTEGER)]
    previous: Hash | None
    issued: Millis
    authority_keys: Keys
    actors: Annotated[tuple[Actor, ...], Field(max_length=MAX_DIRECTORY_ACTORS)]
    groups: Annotated[tuple[Group, ...], Field(max_length=MAX_GROUPS)] = ()
    officers: Annotated[tuple[Officer, ...], Field(max_length=MAX_DIRECTORY_ACTORS)] = ()
    brokers: Annotated[tuple[BrokerService, ...], Field(max_length=MAX_GROUPS)] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        _unique_ids(self.actors, "actors")
        _unique_ids(self.groups, "groups")
        _unique_ids(self.officers, "officers")
        _unique_ids(self.brokers, "brokers")
        _unique_key_ids(self.authority_keys)
        if (self.version == 1) != (self.previous is None):
            raise ValueError("version 1 and only version 1 has no previous hash")
        group_ids = {g.id for g in self.groups}
        actor_ids = {a.id for a in self.actors}
        for actor in self.actors:
            unknown = set(actor.groups) - group_ids
            if unknown:
                raise ValueError(f"actor {actor.id} names unknown groups {sorted(unknown)}")
        for officer in self.officers:
            if officer.actor is not None and officer.actor not in actor_ids:
                raise ValueError(f"officer {officer.id} is scoped to unknown actor {officer.actor}")
        signing = [k.key_id for a in self.actors for k in a.signing_keys]
        signing += [k.key_id for o in self.officers for k in o.signing_keys]
        signing += [k.key_id for b in self.brokers for k in b.signing_keys]
        if len(set(signing)) != len(signing):
            raise ValueError("a signing key belongs to two principals")
        return self


class PrincipalKind(StrEnum):
    ACTOR = "actor"
    OFFICER = "officer"
    BROKER = "broker"


@dataclass(frozen=True)
class SignerKey:
    """Who owns a signing key (an actor, an officer or a broker) and the key's record."""

    principal: str
    kind: PrincipalKind
    record: KeyRecord


@dataclass(frozen=True)
class VerifiedDirectory:
    """A directory version whose signature and chain position have been checked."""

    document: DirectoryDocument
    hash: str
    raw: bytes
    _actors: dict[str, Actor] = field(repr=False)
    _signers: dict[str, SignerKey] = field(repr=False)
    _members: dict[str, tuple[str, ...]] = field(repr=False)

    @classmethod
    def _index(cls, document: DirectoryDocument, raw: bytes) -> VerifiedDirectory:
        actors = {a.id: a for a in document.actors}
        owners = [
            *((a.id, PrincipalKind.ACTOR, a.signing_keys) for a in document.actors),
            *((o.id, PrincipalKind.OFFICER, o.signing_keys) for o in document.officers),
            *((b.id, PrincipalKind.BROKER, b.signing_keys) for b in document.brokers),
        ]
        signers = {k.key_id: SignerKey(who, kind, k) for who, kind, keys in owners for k in keys}
        members = {
            g.id: tuple(a.id for a in document.actors if g.id in a.groups) for g in document.groups
        }
        return cls(document, crypto.sha256(raw).hex(), raw, actors, signers, members)

    @property
    def version(self) -> int:
        return self.document.version

    def actor(self, actor_id: str) -> Actor | None:
        return self._actors.get(actor_id)

    def signer(self, key_id: str) -> SignerKey | None:
        return self._signers.get(key_id)

    def members(self, group_id: str) -> tuple[str, ...] | None:
        """Actor ids in a group, or ``None`` if there is no such group."""
        return self._members.get(group_id)

    def officer(self, officer_id: str) -> Officer | None:
        return next((o for o in self.document.officers if o.id == officer_id), None)


_DIRECTORY_SECTION = (MAX_DIRECTORY_BYTES,)


def sign_directory(document: DirectoryDocument, authority: SigningKeyPair) -> bytes:
    """Sign one directory version with an authority key."""
    return frame.encode(frame.Kind.DIRECTORY, authority, (document.to_bytes(),))


def verify_directory(
    data: bytes, *, pinned: bytes, previous: VerifiedDirectory | None = None
) -> VerifiedDirectory:
    """Verify a version: signature first, then parse, then its place in the chain.

    Without ``previous`` the version must be signed by the ``pinned``
    authority public key. With ``previous`` it must be the next version,
    name ``previous``'s hash and be signed by an authority key that
    ``previous`` lists as usable when it was issued.
    """
    try:
        signed = frame.decode(
            data,
            frame.Kind.DIRECTORY,
            max_bytes=MAX_DIRECTORY_BYTES,
            max_section=_DIRECTORY_SECTION,
        )
    except FrameError as exc:
        raise DirectoryError(f"directory frame: {exc.message}", code="directory_malformed") from exc
    if previous is None:
        trusted = {crypto.key_id(pinned).hex(): pinned}
    else:
        trusted = {k.key_id: k.raw for k in previous.document.authority_keys}
    public = trusted.get(signed.signer_id)
    if public is None:
        raise DirectoryError(
            "signed by a key that is not a trusted authority key", code="directory_unknown_signer"
        )
    try:
        signed.verify(public)
    except crypto.CryptoFailure as exc:
        raise DirectoryError(
            "directory signature does not verify", code="directory_bad_signature"
        ) from exc
    try:
        document = DirectoryDocument.parse(signed.sections[0], max_bytes=MAX_DIRECTORY_BYTES)
    except MalformedInput as exc:
        raise DirectoryError(
            f"directory document: {exc.message}", code="directory_malformed"
        ) from exc
    if previous is None:
        if signed.signer_id not in {k.key_id for k in document.authority_keys}:
            raise DirectoryError(
                "pinned key is not among the version's authority keys",
                code="directory_unknown_signer",
            )
    else:
        _check_successor(document, signed.signer_id, previous)
    return VerifiedDirectory._index(document, data)


def _check_successor(
    document: DirectoryDocument, signer_id: str, previous: VerifiedDirectory
) -> None:
    before = previous.document
    if document.region != before.region:
        raise DirectoryError("version belongs to another region", code="directory_chain_broken")
    if document.version != before.version + 1:
        raise DirectoryError(
            f"version {document.version} does not follow {before.version}",
            code="directory_not_next",
        )
    if document.previous != previous.hash:
        raise DirectoryError(
            "previous hash does not match the known chain", code="directory_chain_broken"
        )
    if document.issued < before.issued:
        raise DirectoryError("issued before the version it follows", code="directory_chain_broken")
    authority = next(k for k in before.authority_keys if k.key_id == signer_id)
    if not authority.usable_at(document.issued):
        raise DirectoryError(
            "authority key was not usable when this version was issued",
            code="directory_unknown_signer",
        )


def verify_chain(versions: Iterable[bytes], *, pinned: bytes) -> VerifiedDirectory:
    """Verify a sequence of versions from one signed by ``pinned``; return the last."""
    current: VerifiedDirectory | None = None
    for data in versions:
        current = verify_directory(data, pinned=pinned, previous=current)
    if current is None:
        raise DirectoryError("no directory versions given", code="directory_malformed")
    return current


def successor(previous: VerifiedDirectory, *, issued: int, **changes: Any) -> DirectoryDocument:
    """The next version's document: ``previous`` with ``changes``, chained to it.

    >>> # doc = successor(current, issued=now_ms, actors=(*current.document.actors, new_actor))
    """
    fields = dict(previous.document) | changes
    fields |= {"version": previous.version + 1, "previous": previous.hash, "issued": issued}
    return DirectoryDocument(**fields)
