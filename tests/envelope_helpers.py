"""Helpers for the envelope, decision, receipt and property tests.

- directory edits: a signed, verified successor of the demo directory with
  some actors changed (suspended, key revoked or rotated, clearance lowered);
- frame surgery: split an envelope into its sections, re-sign edited sections
  with a real key (``resign``), or re-frame them keeping the original signature
  (``reframe``), which is how an attacker without the sender's key would try;
- short forms for calling ``decide`` and ``open_envelope`` at the test clock.

No mocks: every directory is signed by the demo authority and verified as a
successor of the demo directory, every envelope is real crypto.
"""

from __future__ import annotations

import struct
from collections.abc import Container, Iterable, Mapping
from typing import Any

from broker.core import (
    Actor,
    Decision,
    ForwardOrigin,
    Header,
    Identity,
    Incident,
    Label,
    MessageType,
    Mode,
    OpenedEnvelope,
    Policy,
    RecipientKey,
    Tlp,
    VerifiedDirectory,
    build_envelope,
    decide,
    open_envelope,
    read_envelope,
    sign_directory,
    successor,
    verify_directory,
)
from broker.core import frame as frame_module
from broker.core.envelope import KeyWraps
from broker.core.keys import EncryptionKeyPair, SigningKeyPair
from broker.core.limits import MAX_ENVELOPE_BYTES
from broker.demo import DemoRegion

from .conftest import HOUR, NOW

_ANY_SIZE = (MAX_ENVELOPE_BYTES, MAX_ENVELOPE_BYTES, MAX_ENVELOPE_BYTES)


# --- directories -----------------------------------------------------------------


def edit_directory(
    region: DemoRegion, changes: Mapping[str, Mapping[str, Any]], *, issued: int = NOW
) -> VerifiedDirectory:
    """Version 2 of the demo directory with ``changes[actor_id]`` applied to those actors.

    The document is signed by the demo authority and verified as the successor of
    version 1, exactly as a client would accept it.
    """
    unknown = set(changes) - {a.id for a in region.directory.document.actors}
    assert not unknown, f"no such actors: {unknown}"
    actors = tuple(
        a.model_copy(update=dict(changes[a.id])) if a.id in changes else a
        for a in region.directory.document.actors
    )
    document = successor(region.directory, issued=issued, actors=actors)
    return verify_directory(
        sign_directory(document, region.authority),
        pinned=region.authority.public,
        previous=region.directory,
    )


def actor(region: DemoRegion, actor_id: str) -> Actor:
    found = region.directory.actor(actor_id)
    assert found is not None, actor_id
    return found


def signing_key_update(region: DemoRegion, actor_id: str, **update: Any) -> dict[str, Any]:
    """``changes`` entry that edits the actor's (only) signing key record."""
    (record,) = actor(region, actor_id).signing_keys
    return {"signing_keys": (record.model_copy(update=update),)}


def encryption_key_update(region: DemoRegion, actor_id: str, **update: Any) -> dict[str, Any]:
    """``changes`` entry that edits the actor's (only) encryption key record."""
    (record,) = actor(region, actor_id).encryption_keys
    return {"encryption_keys": (record.model_copy(update=update),)}


def recipient_keys(
    directory: VerifiedDirectory, actor_ids: Iterable[str], *, at: int = NOW
) -> list[RecipientKey]:
    keys = []
    for actor_id in actor_ids:
        found = directory.actor(actor_id)
        assert found is not None, actor_id
        keys.append(RecipientKey.of(found, at))
    return keys


DEFAULT_TO = ("polisen-stockholm", "sos-alarm", "stockholm")
DEFAULT_LABEL = Label(policy="ssr", classification="SEKRETESS", tlp=Tlp.AMBER, legal="OSL 18:13")


def build_as(
    region: DemoRegion, sender: Identity, to: Iterable[str] = DEFAULT_TO, **overrides: Any
) -> bytes:
    """Like the ``make_envelope`` fixture, but for any identity (an impostor, an officer)."""
    args: dict[str, Any] = {
        "sender": sender,
        "recipients": recipient_keys(region.directory, to),
        "label": DEFAULT_LABEL,
        "message_type": MessageType.SITUATION_REPORT,
        "payload": b'{"text": "Storm warning for the archipelago"}',
        "created": NOW,
        "expires": NOW + HOUR,
    }
    args.update(overrides)
    return build_envelope(**args)


def impostor(principal: str, seed: bytes = b"impostor") -> Identity:
    """An identity that claims ``principal`` but holds keys the directory never listed."""
    return Identity(
        principal,
        SigningKeyPair(seed.ljust(32, b"s")[:32]),
        EncryptionKeyPair(seed.ljust(32, b"e")[:32]),
    )


# --- frames ----------------------------------------------------------------------


def split(raw: bytes) -> frame_module.Frame:
    """The layout of an envelope frame, without checking its signature."""
    return frame_module.decode(
        raw, frame_module.Kind.ENVELOPE, max_bytes=MAX_ENVELOPE_BYTES, max_section=_ANY_SIZE
    )


def header_of(raw: bytes) -> Header:
    """The header an envelope carries, parsed without verification."""
    return Header.parse(split(raw).sections[0], max_bytes=MAX_ENVELOPE_BYTES)


def wraps_of(raw: bytes) -> KeyWraps:
    return KeyWraps.parse(split(raw).sections[1], max_bytes=MAX_ENVELOPE_BYTES)


def resign(
    signer: Identity | SigningKeyPair,
    sections: tuple[bytes, ...],
    kind: frame_module.Kind = frame_module.Kind.ENVELOPE,
) -> bytes:
    """A correctly signed frame of ``sections`` under ``signer``'s real key."""
    key = signer.signing if isinstance(signer, Identity) else signer
    return frame_module.encode(kind, key, sections)


def reframe(
    sections: tuple[bytes, ...],
    *,
    signer_id: bytes,
    signature: bytes,
    kind: frame_module.Kind = frame_module.Kind.ENVELOPE,
) -> bytes:
    """A frame of ``sections`` carrying a given signer id and signature (not re-signed)."""
    parts = [struct.pack(">3sBc16sB", b"SSR", 1, kind.value, signer_id, len(sections))]
    for section in sections:
        parts.append(struct.pack(">I", len(section)))
        parts.append(section)
    return b"".join(parts) + signature


def reframe_keeping_signature(raw: bytes, sections: tuple[bytes, ...]) -> bytes:
    """Replace an envelope's sections but keep its signer id and original signature."""
    original = split(raw)
    return reframe(sections, signer_id=original.signer, signature=original.signature)


def flip_bit(raw: bytes, bit: int) -> bytes:
    data = bytearray(raw)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


# --- decide and open at the test clock -------------------------------------------


def decide_at(
    raw: bytes,
    region: DemoRegion,
    *,
    policy: Policy | None = None,
    directory: VerifiedDirectory | None = None,
    mode: Mode = Mode.ORDINARY,
    now: int = NOW,
    seen: Container[str] = frozenset(),
    origin: ForwardOrigin | None = None,
    incidents: Mapping[str, Incident] | None = None,
    draft: ForwardOrigin | None = None,
) -> Decision:
    return decide(
        raw,
        directory=directory or region.directory,
        policy=policy or Policy(),
        mode=mode,
        now=now,
        seen=seen,
        origin=origin,
        incidents=incidents,
        draft=draft,
    )


def open_as(
    raw: bytes,
    region: DemoRegion,
    me: str | Identity,
    *,
    policy: Policy | None = None,
    directory: VerifiedDirectory | None = None,
    now: int = NOW,
) -> OpenedEnvelope:
    identity = region.identities[me] if isinstance(me, str) else me
    return open_envelope(
        raw,
        me=identity,
        directory=directory or region.directory,
        policy=policy or Policy(),
        now=now,
    )


def origin_of(raw: bytes, region: DemoRegion, approved: Iterable[str] = ()) -> ForwardOrigin:
    """What the broker knows of an accepted original, for forward decisions."""
    signed = read_envelope(raw, region.directory)
    return ForwardOrigin(signed.header, signed.header_hash, frozenset(approved))
