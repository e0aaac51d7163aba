"""The signed, hash-chained directory: verification, chain rules, rotation and revocation."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from broker.core import canonical, frame
from broker.core.crypto import seeded_random
from broker.core.directory import (
    Actor,
    ActorKind,
    ActorStatus,
    DirectoryDocument,
    KeyRecord,
    PrincipalKind,
    SignerKey,
    VerifiedDirectory,
    sign_directory,
    successor,
    verify_chain,
    verify_directory,
)
from broker.core.errors import CoreError, DirectoryError
from broker.core.keys import EncryptionKeyPair, SigningKeyPair, b64
from broker.core.limits import MAX_DIRECTORY_BYTES
from broker.core.vocabulary import Role
from broker.demo import MUNICIPALITIES, YEAR_MS, DemoRegion, demo_region

from .conftest import HOUR, NOW

Doc = dict[str, Any]

NEW_AUTHORITY = SigningKeyPair.generate(seeded_random(b"directory-authority-2"))
STRANGER = SigningKeyPair.generate(seeded_random(b"directory-stranger"))


def refused(data: bytes, pinned: bytes, previous: VerifiedDirectory | None = None) -> str:
    """Verify ``data`` expecting a refusal; return its code."""
    with pytest.raises(DirectoryError) as info:
        verify_directory(data, pinned=pinned, previous=previous)
    assert isinstance(info.value, CoreError)
    return info.value.code


def record(
    key: bytes, *, since: int = NOW, until: int = NOW + 2 * YEAR_MS, **extra: Any
) -> KeyRecord:
    return KeyRecord.model_validate(
        KeyRecord.for_key(key, not_before=since, not_after=until).model_dump() | extra
    )


def changed(model: Any, **changes: Any) -> Any:
    """A validated copy of a wire model with ``changes``."""
    return type(model).model_validate(model.model_dump() | changes)


def with_actor(directory: VerifiedDirectory, actor_id: str, **changes: Any) -> tuple[Actor, ...]:
    return tuple(
        changed(a, **changes) if a.id == actor_id else a for a in directory.document.actors
    )


def forged(
    region: DemoRegion, edit: Callable[[Doc], None], key: SigningKeyPair | None = None
) -> bytes:
    """Version 1's document as JSON, edited, canonically encoded and properly signed."""
    doc = canonical.loads(region.directory.document.to_bytes(), max_bytes=MAX_DIRECTORY_BYTES)
    edit(doc)
    body = canonical.dumps(doc)
    return frame.encode(frame.Kind.DIRECTORY, key or region.authority, (body,))


@pytest.fixture(scope="module")
def v1(region: DemoRegion) -> VerifiedDirectory:
    return region.directory


@pytest.fixture(scope="module")
def pinned(region: DemoRegion) -> bytes:
    return region.authority.public


@pytest.fixture(scope="module")
def v2_bytes(region: DemoRegion, v1: VerifiedDirectory) -> bytes:
    return sign_directory(successor(v1, issued=NOW + HOUR), region.authority)


@pytest.fixture(scope="module")
def v2(v2_bytes: bytes, v1: VerifiedDirectory, pinned: bytes) -> VerifiedDirectory:
    return verify_directory(v2_bytes, pinned=pinned, previous=v1)


@pytest.fixture(scope="module")
def v3_bytes(region: DemoRegion, v2: VerifiedDirectory) -> bytes:
    return sign_directory(successor(v2, issued=NOW + 2 * HOUR), region.authority)


# --- version 1 ---------------------------------------------------------------------------


def test_version_1_verifies_against_the_pinned_key(region: DemoRegion, pinned: bytes) -> None:
    verified = verify_directory(region.frame, pinned=pinned)
    assert verified.version == 1
    assert verified.raw == region.frame
    assert verified.hash == hashlib.sha256(region.frame).hexdigest()
    assert verified.document == region.directory.document
    assert verified.document.previous is None
    assert verified.document.region == "ssr"
    assert len(verified.document.actors) == 37


def test_demo_region_is_deterministic(region: DemoRegion) -> None:
    again = demo_region(now=NOW, rand=seeded_random(b"tests-region"))
    assert again.frame == region.frame


def test_wrong_pinned_key(region: DemoRegion) -> None:
    assert refused(region.frame, STRANGER.public) == "directory_unknown_signer"


def test_an_actor_key_is_not_a_pin(region: DemoRegion) -> None:
    assert refused(region.frame, region.identities["nacka"].signing.public) == (
        "directory_unknown_signer"
    )


def test_pinned_key_must_be_listed_as_an_authority_key(region: DemoRegion) -> None:
    def list_other_authority(doc: Doc) -> None:
        doc["authority_keys"] = [record(STRANGER.public).wire()]

    data = forged(region, list_other_authority)
    with pytest.raises(DirectoryError, match="not among the version's authority keys") as info:
        verify_directory(data, pinned=region.authority.public)
    assert info.value.code == "directory_unknown_signer"


def test_a_well_forged_document_verifies(region: DemoRegion, pinned: bytes) -> None:
    # The helper below must yield valid frames when nothing is edited, or the
    # malformed-document tests would pass for the wrong reason.
    assert verify_directory(forged(region, lambda doc: None), pinned=pinned).version == 1


@pytest.mark.parametrize(
    ("where", "code"),
    [
        (lambda n: 0, "directory_malformed"),  # magic
        (lambda n: 3, "directory_malformed"),  # format version
        (lambda n: 4, "directory_malformed"),  # kind
        (lambda n: 5, "directory_unknown_signer"),  # signer key id
        (lambda n: 21, "directory_malformed"),  # section count
        (lambda n: 22, "directory_malformed"),  # section length
        (lambda n: 30, "directory_bad_signature"),  # document
        (lambda n: n // 2, "directory_bad_signature"),  # document
        (lambda n: n - 65, "directory_bad_signature"),  # last document byte
        (lambda n: n - 64, "directory_bad_signature"),  # signature
        (lambda n: n - 1, "directory_bad_signature"),  # signature
    ],
)
def test_tampered_byte(
    region: DemoRegion, pinned: bytes, where: Callable[[int], int], code: str
) -> None:
    data = bytearray(region.frame)
    data[where(len(data))] ^= 0x01
    assert refused(bytes(data), pinned) == code


@pytest.mark.parametrize("cut", [1, 64, 100])
def test_truncated_frame(region: DemoRegion, pinned: bytes, cut: int) -> None:
    assert refused(region.frame[:-cut], pinned) == "directory_malformed"


def test_appended_bytes(region: DemoRegion, pinned: bytes) -> None:
    assert refused(region.frame + b"\x00", pinned) == "directory_malformed"


def test_oversized_frame(pinned: bytes) -> None:
    with pytest.raises(DirectoryError, match="exceeds") as info:
        verify_directory(b"\x00" * (MAX_DIRECTORY_BYTES + 1), pinned=pinned)
    assert info.value.code == "directory_malformed"


def test_a_receipt_frame_is_not_a_directory(region: DemoRegion, pinned: bytes) -> None:
    body = region.directory.document.to_bytes()
    data = frame.encode(frame.Kind.RECEIPT, region.authority, (body,))
    assert refused(data, pinned) == "directory_malformed"


def test_garbage(pinned: bytes) -> None:
    assert refused(b"", pinned) == "directory_malformed"
    assert refused(b"SSR" + bytes(200), pinned) == "directory_malformed"


# --- documents that do not validate, inside validly signed frames ------------------------


def _dup_actor(doc: Doc) -> None:
    doc["actors"].insert(1, doc["actors"][0])


def _unsorted_actors(doc: Doc) -> None:
    doc["actors"][0], doc["actors"][1] = doc["actors"][1], doc["actors"][0]


def _unknown_group(doc: Doc) -> None:
    doc["actors"][0]["groups"] = [*doc["actors"][0]["groups"], "zzz-okand"]


def _officer_scope(doc: Doc) -> None:
    doc["officers"][1]["actor"] = "atlantis"


def _shared_signing_key(doc: Doc) -> None:
    doc["officers"][0]["signing_keys"] = doc["actors"][0]["signing_keys"]


def _shared_key_between_actors(doc: Doc) -> None:
    doc["actors"][1]["signing_keys"] = doc["actors"][0]["signing_keys"]


def _v1_with_previous(doc: Doc) -> None:
    doc["previous"] = "0" * 64


def _v2_without_previous(doc: Doc) -> None:
    doc["version"] = 2


def _key_id_mismatch(doc: Doc) -> None:
    doc["actors"][0]["signing_keys"][0]["key_id"] = "0" * 32


def _not_after_before(doc: Doc) -> None:
    key = doc["actors"][0]["encryption_keys"][0]
    key["not_after"] = key["not_before"]


def _bad_base64(doc: Doc) -> None:
    doc["actors"][0]["signing_keys"][0]["public"] = "not base64!"


def _short_key(doc: Doc) -> None:
    doc["actors"][0]["signing_keys"][0]["public"] = b64(bytes(31))


def _key_twice(doc: Doc) -> None:
    keys = doc["actors"][0]["encryption_keys"]
    keys.append(keys[0])


def _authority_twice(doc: Doc) -> None:
    doc["authority_keys"].append(doc["authority_keys"][0])


def _unsorted_groups(doc: Doc) -> None:
    doc["groups"].reverse()


def _dup_officer(doc: Doc) -> None:
    doc["officers"][1] = {**doc["officers"][0]}


def _unsorted_roles(doc: Doc) -> None:
    actor = next(a for a in doc["actors"] if a["id"] == "lansstyrelsen-stockholm")
    actor["roles"] = ["authority", "activator"]


def _unsorted_categories(doc: Doc) -> None:
    actor = next(a for a in doc["actors"] if a["id"] == "forsvarsmakten-mmr")
    actor["categories"] = ["taktik", "infrastruktur"]


def _no_keys(doc: Doc) -> None:
    doc["actors"][0]["signing_keys"] = []


def _format_2(doc: Doc) -> None:
    doc["v"] = 2


def _unknown_field(doc: Doc) -> None:
    doc["comment"] = "hello"


def _missing_default_field(doc: Doc) -> None:
    del doc["officers"]  # valid to the model (it has a default) but not the one encoding


def _bad_kind(doc: Doc) -> None:
    doc["actors"][0]["kind"] = "spaceship"


def _bad_clearance(doc: Doc) -> None:
    doc["actors"][0]["clearance"] = "sekretess"


def _negative_time(doc: Doc) -> None:
    doc["issued"] = -1


def _version_zero(doc: Doc) -> None:
    doc["version"] = 0


def _not_an_object(doc: Doc) -> None:
    doc.clear()


MALFORMED = {
    "duplicate actor ids": (_dup_actor, "actors must be sorted by id without duplicates"),
    "unsorted actors": (_unsorted_actors, "actors must be sorted by id without duplicates"),
    "unknown group": (_unknown_group, "names unknown groups ['zzz-okand']"),
    "officer scoped to unknown actor": (_officer_scope, "scoped to unknown actor atlantis"),
    "officer shares an actor key": (_shared_signing_key, "a signing key belongs to two principals"),
    "two actors share a key": (_shared_key_between_actors, "belongs to two principals"),
    "version 1 with previous": (_v1_with_previous, "version 1 and only version 1"),
    "version 2 without previous": (_v2_without_previous, "version 1 and only version 1"),
    "key id mismatch": (_key_id_mismatch, "key_id does not match the public key"),
    "not_after not after not_before": (_not_after_before, "not_after must be later"),
    "bad base64": (_bad_base64, "public key: not standard base64"),
    "short key": (_short_key, "public key: expected 32 bytes, got 31"),
    "key listed twice": (_key_twice, "a key is listed twice"),
    "authority key listed twice": (_authority_twice, "a key is listed twice"),
    "unsorted groups": (_unsorted_groups, "groups must be sorted"),
    "duplicate officer": (_dup_officer, "officers must be sorted"),
    "unsorted roles": (_unsorted_roles, "roles must be sorted"),
    "unsorted categories": (_unsorted_categories, "must be sorted and without duplicates"),
    "actor without keys": (_no_keys, "signing_keys"),
    "format 2": (_format_2, "at v"),
    "unknown field": (_unknown_field, "at comment"),
    "missing default field": (_missing_default_field, "not in canonical form"),
    "unknown actor kind": (_bad_kind, "kind"),
    "bad clearance": (_bad_clearance, "clearance"),
    "negative time": (_negative_time, "at issued"),
    "version 0": (_version_zero, "at version"),
    "empty object": (_not_an_object, "invalid DirectoryDocument"),
}


@pytest.mark.parametrize(("edit", "words"), list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_document_in_a_signed_frame(
    region: DemoRegion, pinned: bytes, edit: Callable[[Doc], None], words: str
) -> None:
    with pytest.raises(DirectoryError) as info:
        verify_directory(forged(region, edit), pinned=pinned)
    assert info.value.code == "directory_malformed"
    assert words in info.value.message


def test_non_canonical_json_in_a_signed_frame(region: DemoRegion, pinned: bytes) -> None:
    body = region.directory.document.to_bytes().replace(b'"region":', b'"region": ')
    data = frame.encode(frame.Kind.DIRECTORY, region.authority, (body,))
    assert refused(data, pinned) == "directory_malformed"
    duplicated = region.directory.document.to_bytes()[:-1] + b',"region":"ssr"}'
    data = frame.encode(frame.Kind.DIRECTORY, region.authority, (duplicated,))
    assert refused(data, pinned) == "directory_malformed"


def test_malformed_document_is_refused_only_after_the_signature(region: DemoRegion) -> None:
    # A broken document signed by a stranger is refused as an unknown signer, not parsed.
    data = forged(region, _dup_actor, key=STRANGER)
    assert refused(data, region.authority.public) == "directory_unknown_signer"


def test_document_validation_errors_at_construction(v1: VerifiedDirectory) -> None:
    fields = dict(v1.document)
    with pytest.raises(ValidationError, match="version 1 and only version 1"):
        DirectoryDocument(**(fields | {"previous": "a" * 64}))
    with pytest.raises(ValidationError, match="sorted by id"):
        DirectoryDocument(**(fields | {"actors": tuple(reversed(fields["actors"]))}))


# --- the chain ---------------------------------------------------------------------------


def test_chain_extension(
    v1: VerifiedDirectory, v2: VerifiedDirectory, v3_bytes: bytes, pinned: bytes
) -> None:
    assert v2.version == 2
    assert v2.document.previous == v1.hash
    assert v2.document.issued == NOW + HOUR
    assert v2.document.actors == v1.document.actors
    v3 = verify_directory(v3_bytes, pinned=pinned, previous=v2)
    assert v3.version == 3
    assert v3.document.previous == v2.hash


def test_verify_chain(region: DemoRegion, v2_bytes: bytes, v3_bytes: bytes, pinned: bytes) -> None:
    last = verify_chain([region.frame, v2_bytes, v3_bytes], pinned=pinned)
    assert last.version == 3
    assert verify_chain(iter([region.frame]), pinned=pinned).version == 1


def test_verify_chain_of_nothing(pinned: bytes) -> None:
    with pytest.raises(DirectoryError, match="no directory versions") as info:
        verify_chain([], pinned=pinned)
    assert info.value.code == "directory_malformed"


def test_verify_chain_stops_at_the_first_bad_version(
    region: DemoRegion, v2_bytes: bytes, pinned: bytes
) -> None:
    with pytest.raises(DirectoryError) as info:
        verify_chain([region.frame, v2_bytes, b"junk"], pinned=pinned)
    assert info.value.code == "directory_malformed"
    with pytest.raises(DirectoryError) as info:
        verify_chain([region.frame, v2_bytes], pinned=STRANGER.public)
    assert info.value.code == "directory_unknown_signer"


def test_reordered_versions(
    region: DemoRegion, v2_bytes: bytes, v3_bytes: bytes, pinned: bytes
) -> None:
    with pytest.raises(DirectoryError) as info:
        verify_chain([region.frame, v3_bytes, v2_bytes], pinned=pinned)
    assert info.value.code == "directory_not_next"
    assert "version 3 does not follow 1" in info.value.message


def test_going_back_a_version(v2: VerifiedDirectory, region: DemoRegion, pinned: bytes) -> None:
    assert refused(region.frame, pinned, previous=v2) == "directory_not_next"


def test_the_same_version_again(v2: VerifiedDirectory, v2_bytes: bytes, pinned: bytes) -> None:
    assert refused(v2_bytes, pinned, previous=v2) == "directory_not_next"


def test_skipped_version(region: DemoRegion, v1: VerifiedDirectory, pinned: bytes) -> None:
    skipping = successor(v1, issued=NOW + HOUR, version=3)  # overridden by successor
    assert skipping.version == 2
    fields = dict(skipping) | {"version": 3}
    data = sign_directory(DirectoryDocument(**fields), region.authority)
    assert refused(data, pinned, previous=v1) == "directory_not_next"


def test_wrong_previous_hash(region: DemoRegion, v1: VerifiedDirectory, pinned: bytes) -> None:
    fields = dict(successor(v1, issued=NOW + HOUR)) | {"previous": hashlib.sha256(b"x").hexdigest()}
    data = sign_directory(DirectoryDocument(**fields), region.authority)
    with pytest.raises(DirectoryError, match="previous hash") as info:
        verify_directory(data, pinned=pinned, previous=v1)
    assert info.value.code == "directory_chain_broken"


def test_a_fork_is_refused(
    region: DemoRegion, v1: VerifiedDirectory, v2: VerifiedDirectory, pinned: bytes
) -> None:
    # Another version 2 (a fork) cannot be followed by v2's successor.
    fork = verify_directory(
        sign_directory(successor(v1, issued=NOW + 2 * HOUR), region.authority),
        pinned=pinned,
        previous=v1,
    )
    assert fork.hash != v2.hash
    after_v2 = sign_directory(successor(v2, issued=NOW + 3 * HOUR), region.authority)
    assert refused(after_v2, pinned, previous=fork) == "directory_chain_broken"


def test_other_region(region: DemoRegion, v1: VerifiedDirectory, pinned: bytes) -> None:
    data = sign_directory(successor(v1, issued=NOW + HOUR, region="other"), region.authority)
    with pytest.raises(DirectoryError, match="another region") as info:
        verify_directory(data, pinned=pinned, previous=v1)
    assert info.value.code == "directory_chain_broken"


def test_issued_going_backwards(region: DemoRegion, v1: VerifiedDirectory, pinned: bytes) -> None:
    data = sign_directory(successor(v1, issued=NOW - 1), region.authority)
    with pytest.raises(DirectoryError, match="issued before") as info:
        verify_directory(data, pinned=pinned, previous=v1)
    assert info.value.code == "directory_chain_broken"


def test_issued_at_the_same_time_is_allowed(
    region: DemoRegion, v1: VerifiedDirectory, pinned: bytes
) -> None:
    data = sign_directory(successor(v1, issued=NOW), region.authority)
    assert verify_directory(data, pinned=pinned, previous=v1).version == 2


def test_signed_by_a_non_authority_key(
    region: DemoRegion, v1: VerifiedDirectory, pinned: bytes
) -> None:
    document = successor(v1, issued=NOW + HOUR)
    for key in (STRANGER, region.identities["lansstyrelsen-stockholm"].signing):
        assert refused(sign_directory(document, key), pinned, previous=v1) == (
            "directory_unknown_signer"
        )


def test_with_previous_the_pin_is_not_enough(region: DemoRegion, v1: VerifiedDirectory) -> None:
    # Once a chain is known, trust comes from it, not from the pin passed in.
    data = sign_directory(successor(v1, issued=NOW + HOUR), STRANGER)
    assert refused(data, STRANGER.public, previous=v1) == "directory_unknown_signer"


def test_a_tampered_successor(
    region: DemoRegion, v1: VerifiedDirectory, v2_bytes: bytes, pinned: bytes
) -> None:
    data = bytearray(v2_bytes)
    data[100] ^= 0x01
    assert refused(bytes(data), pinned, previous=v1) == "directory_bad_signature"


# --- authority keys: rotation, revocation, expiry ----------------------------------------


def _with_authorities(
    region: DemoRegion, previous: VerifiedDirectory, keys: tuple[KeyRecord, ...], issued: int
) -> VerifiedDirectory:
    data = sign_directory(successor(previous, issued=issued, authority_keys=keys), region.authority)
    return verify_directory(data, pinned=region.authority.public, previous=previous)


def test_authority_key_rotation(region: DemoRegion, v1: VerifiedDirectory, pinned: bytes) -> None:
    old = v1.document.authority_keys[0]
    # v2 (signed by the old key) adds the new key.
    v2 = _with_authorities(region, v1, (old, record(NEW_AUTHORITY.public)), NOW + HOUR)
    # v3 signed by the new key is accepted; it revokes the old key from now on.
    revoked_old = changed(old, revoked_at=NOW + 2 * HOUR)
    v3_doc = successor(
        v2, issued=NOW + 2 * HOUR, authority_keys=(revoked_old, v2.document.authority_keys[1])
    )
    v3 = verify_directory(sign_directory(v3_doc, NEW_AUTHORITY), pinned=pinned, previous=v2)
    assert v3.version == 3
    # v4 by the revoked old key is refused; v4 by the new key is fine.
    v4_doc = successor(v3, issued=NOW + 3 * HOUR)
    assert refused(sign_directory(v4_doc, region.authority), pinned, previous=v3) == (
        "directory_unknown_signer"
    )
    assert (
        verify_directory(sign_directory(v4_doc, NEW_AUTHORITY), pinned=pinned, previous=v3).version
        == 4
    )
    # The new key cannot start a chain from the old pin.
    assert refused(sign_directory(v4_doc, NEW_AUTHORITY), pinned) == "directory_unknown_signer"


def test_a_new_authority_key_is_not_trusted_before_it_is_listed(
    v1: VerifiedDirectory, pinned: bytes
) -> None:
    # v2 signed by a key that v2 itself introduces: v1 does not list it.
    document = successor(
        v1,
        issued=NOW + HOUR,
        authority_keys=(*v1.document.authority_keys, record(NEW_AUTHORITY.public)),
    )
    assert refused(sign_directory(document, NEW_AUTHORITY), pinned, previous=v1) == (
        "directory_unknown_signer"
    )


@pytest.mark.parametrize(
    ("revoked_at", "issued", "accepted"),
    [
        (NOW + 3 * HOUR, NOW + 2 * HOUR, True),  # issued before the revocation
        (NOW + 3 * HOUR, NOW + 3 * HOUR, False),  # issued at the revocation time
        (NOW + 3 * HOUR, NOW + 4 * HOUR, False),  # issued after it
    ],
)
def test_authority_key_revoked_at_issue_time(
    region: DemoRegion,
    v1: VerifiedDirectory,
    pinned: bytes,
    revoked_at: int,
    issued: int,
    accepted: bool,
) -> None:
    old = v1.document.authority_keys[0]
    keys = (changed(old, revoked_at=revoked_at), record(NEW_AUTHORITY.public))
    v2 = _with_authorities(region, v1, keys, NOW + HOUR)
    data = sign_directory(successor(v2, issued=issued), region.authority)
    if accepted:
        assert verify_directory(data, pinned=pinned, previous=v2).version == 3
    else:
        with pytest.raises(DirectoryError, match="not usable when this version was issued") as info:
            verify_directory(data, pinned=pinned, previous=v2)
        assert info.value.code == "directory_unknown_signer"
        # The key that was not revoked can still sign the same document.
        assert (
            verify_directory(
                sign_directory(successor(v2, issued=issued), NEW_AUTHORITY),
                pinned=pinned,
                previous=v2,
            ).version
            == 3
        )


def test_authority_key_expired_at_issue_time(
    region: DemoRegion, v1: VerifiedDirectory, pinned: bytes
) -> None:
    old = v1.document.authority_keys[0]
    expiring = changed(old, not_after=NOW + 2 * HOUR)
    v2 = _with_authorities(region, v1, (expiring,), NOW + HOUR)
    ok = sign_directory(successor(v2, issued=NOW + 2 * HOUR - 1), region.authority)
    assert verify_directory(ok, pinned=pinned, previous=v2).version == 3
    late = sign_directory(successor(v2, issued=NOW + 2 * HOUR), region.authority)
    assert refused(late, pinned, previous=v2) == "directory_unknown_signer"


def test_authority_key_not_yet_valid_at_issue_time(
    region: DemoRegion, v1: VerifiedDirectory, pinned: bytes
) -> None:
    future = record(NEW_AUTHORITY.public, since=NOW + 5 * HOUR)
    v2 = _with_authorities(region, v1, (*v1.document.authority_keys, future), NOW + HOUR)
    early = sign_directory(successor(v2, issued=NOW + 2 * HOUR), NEW_AUTHORITY)
    assert refused(early, pinned, previous=v2) == "directory_unknown_signer"
    on_time = sign_directory(successor(v2, issued=NOW + 5 * HOUR), NEW_AUTHORITY)
    assert verify_directory(on_time, pinned=pinned, previous=v2).version == 3


# --- actor keys: rotation and revocation -------------------------------------------------


def test_actor_signing_key_rotation_and_revocation(
    region: DemoRegion, v1: VerifiedDirectory, pinned: bytes
) -> None:
    nacka = v1.actor("nacka")
    assert nacka is not None
    old = nacka.signing_keys[0]
    new_key = SigningKeyPair.generate(seeded_random(b"nacka-2"))
    revoke_at = NOW + 2 * HOUR
    actors = with_actor(
        v1,
        "nacka",
        signing_keys=(
            changed(old, revoked_at=revoke_at).model_dump(),
            record(new_key.public, since=NOW + HOUR).model_dump(),
        ),
    )
    data = sign_directory(successor(v1, issued=NOW + HOUR, actors=actors), region.authority)
    v2 = verify_directory(data, pinned=pinned, previous=v1)

    old_signer = v2.signer(old.key_id)
    new_signer = v2.signer(new_key.key_id)
    assert old_signer is not None
    assert new_signer is not None
    assert (old_signer.principal, old_signer.kind) == ("nacka", PrincipalKind.ACTOR)
    assert new_signer.principal == "nacka"
    # The revoked key is usable before its revocation time and never after.
    assert old_signer.record.usable_at(revoke_at - 1)
    assert not old_signer.record.usable_at(revoke_at)
    assert not old_signer.record.usable_at(revoke_at + YEAR_MS)
    assert old_signer.record.revoked_by(revoke_at)
    assert not old_signer.record.revoked_by(revoke_at - 1)
    assert new_signer.record.usable_at(revoke_at)
    assert not new_signer.record.usable_at(NOW)  # not yet valid
    # In v1 the old key was never revoked.
    v1_signer = v1.signer(old.key_id)
    assert v1_signer is not None
    assert v1_signer.record.usable_at(revoke_at)


def test_encryption_key_picks_the_newest_usable(
    region: DemoRegion, v1: VerifiedDirectory, pinned: bytes
) -> None:
    nacka = v1.actor("nacka")
    assert nacka is not None
    first = nacka.encryption_keys[0]
    second_pair = EncryptionKeyPair.generate(seeded_random(b"nacka-enc-2"))
    third_pair = EncryptionKeyPair.generate(seeded_random(b"nacka-enc-3"))
    second = record(second_pair.public, since=NOW + HOUR)
    third = record(third_pair.public, since=NOW + 2 * HOUR, revoked_at=NOW + 3 * HOUR)
    actors = with_actor(
        v1, "nacka", encryption_keys=tuple(k.model_dump() for k in (first, second, third))
    )
    v2 = verify_directory(
        sign_directory(successor(v1, issued=NOW + HOUR, actors=actors), region.authority),
        pinned=pinned,
        previous=v1,
    )
    actor = v2.actor("nacka")
    assert actor is not None

    def key_at(at: int) -> str | None:
        chosen = actor.encryption_key(at)
        return chosen.key_id if chosen else None

    assert key_at(NOW - 1) is None  # nothing valid yet
    assert key_at(NOW) == first.key_id
    assert key_at(NOW + HOUR) == second.key_id  # newer wins
    assert key_at(NOW + 2 * HOUR) == third.key_id
    assert key_at(NOW + 3 * HOUR) == second.key_id  # the newest was revoked
    assert key_at(first.not_after) is None  # all expired (same expiry for all)


def test_encryption_key_tie_breaks_on_key_id(v1: VerifiedDirectory) -> None:
    pairs = [EncryptionKeyPair.generate(seeded_random(bytes([i]))) for i in range(3)]
    records = tuple(record(p.public) for p in pairs)
    nacka = v1.actor("nacka")
    assert nacka is not None
    actor = changed(nacka, encryption_keys=tuple(r.model_dump() for r in records))
    chosen = actor.encryption_key(NOW)
    assert chosen is not None
    assert chosen.key_id == max(r.key_id for r in records)


# --- VerifiedDirectory helpers -----------------------------------------------------------


def test_actor_lookup(v1: VerifiedDirectory) -> None:
    nacka = v1.actor("nacka")
    assert nacka is not None
    assert nacka.kind is ActorKind.MUNICIPALITY
    assert nacka.status is ActorStatus.ACTIVE
    assert nacka.clearance == "SEKRETESS"
    assert v1.actor("atlantis") is None
    assert v1.actor("") is None


def test_signer_lookup(region: DemoRegion, v1: VerifiedDirectory) -> None:
    nacka = region.identities["nacka"]
    signer = v1.signer(nacka.signing.key_id)
    assert isinstance(signer, SignerKey)
    assert signer.principal == "nacka"
    assert signer.kind is PrincipalKind.ACTOR
    assert signer.record.raw == nacka.signing.public

    officer_key = region.officers["sakerhetschef-nacka"]
    officer = v1.signer(officer_key.key_id)
    assert officer is not None
    assert (officer.principal, officer.kind) == ("sakerhetschef-nacka", PrincipalKind.OFFICER)

    assert v1.signer(region.authority.key_id) is None  # the authority signs no envelopes
    assert v1.signer(nacka.encryption.key_id) is None  # an encryption key is no signer
    assert v1.signer("0" * 32) is None


def test_group_members(v1: VerifiedDirectory) -> None:
    assert v1.members("kommuner") == tuple(sorted(MUNICIPALITIES))
    assert v1.members("blaljus") == (
        "brandkaren-attunda",
        "polisen-stockholm",
        "region-stockholm",
        "sodertorns-brandforsvar",
        "sos-alarm",
        "storstockholms-brandforsvar",
    )
    assert v1.members("kommunikatorer") == ("lansstyrelsen-stockholm", "nacka", "stockholm")
    assert v1.members("atlantis") is None


def test_group_without_members(region: DemoRegion, v1: VerifiedDirectory, pinned: bytes) -> None:
    def add_empty_group(doc: Doc) -> None:
        doc["groups"].append({"id": "zz-tom", "name": "Tom grupp"})

    verified = verify_directory(forged(region, add_empty_group), pinned=pinned)
    assert verified.members("zz-tom") == ()


def test_officer_lookup(v1: VerifiedDirectory) -> None:
    regional = v1.officer("sakerhetschef-lansstyrelsen")
    local = v1.officer("sakerhetschef-nacka")
    assert regional is not None
    assert local is not None
    assert regional.actor is None  # the whole region
    assert local.actor == "nacka"
    assert v1.officer("nacka") is None  # an actor is not an officer


def test_roles(v1: VerifiedDirectory) -> None:
    county = v1.actor("lansstyrelsen-stockholm")
    nacka = v1.actor("nacka")
    assert county is not None
    assert nacka is not None
    assert county.has_role(Role.AUTHORITY)
    assert county.has_role(Role.ACTIVATOR)
    assert nacka.has_role(Role.MEMBER)  # every actor is a member
    assert not nacka.has_role(Role.AUTHORITY)
    assert not nacka.has_role(Role.ACTIVATOR)


# --- key records -------------------------------------------------------------------------


def test_key_record_validity_window() -> None:
    key = record(STRANGER.public, since=1000, until=2000)
    assert key.key_id == STRANGER.key_id
    assert key.raw == STRANGER.public
    assert not key.usable_at(999)
    assert key.usable_at(1000)
    assert key.usable_at(1999)
    assert not key.usable_at(2000)
    assert not key.revoked_by(10**12)
    revoked = changed(key, revoked_at=1500)
    assert revoked.usable_at(1499)
    assert not revoked.usable_at(1500)
    assert revoked.revoked_by(1500)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"key_id": "f" * 32}, "key_id does not match"),
        ({"not_after": 1000}, "not_after must be later"),
        ({"not_after": 999}, "not_after must be later"),
        ({"public": "AAAA"}, "expected 32 bytes"),
        ({"public": "AA=A" * 11}, "not standard base64"),
        ({"key_id": "ABCD" * 8}, "pattern"),
    ],
)
def test_key_record_validation(changes: dict[str, Any], words: str) -> None:
    fields = record(STRANGER.public, since=1000, until=2000).model_dump() | changes
    with pytest.raises(ValidationError, match=words):
        KeyRecord.model_validate(fields)


def test_successor_keeps_everything_but_the_chain_fields(v1: VerifiedDirectory) -> None:
    document = successor(v1, issued=NOW + 5)
    assert document.version == 2
    assert document.previous == v1.hash
    assert document.issued == NOW + 5
    unchanged = {"v", "region", "authority_keys", "actors", "groups", "officers"}
    assert {name: getattr(document, name) for name in unchanged} == {
        name: getattr(v1.document, name) for name in unchanged
    }
    # Chain fields cannot be overridden through **changes.
    forced = successor(v1, issued=NOW + 5, version=9)
    assert (forced.version, forced.previous) == (2, v1.hash)
