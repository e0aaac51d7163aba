"""The published test vectors are current, and the implementation agrees with them."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from broker.core import (
    Accept,
    BundleError,
    DirectoryError,
    EncryptionKeyPair,
    EnvelopeError,
    GrantBody,
    GrantError,
    Identity,
    Mode,
    NoticeError,
    OpenError,
    Policy,
    Reject,
    SigningKeyPair,
    check_receipt_matches,
    decide,
    decrypt_own,
    open_envelope,
    open_grant,
    read_envelope,
    verify_bundle,
    verify_chain,
    verify_directory,
    verify_grant,
    verify_notice,
    verify_receipt,
)
from broker.core.crypto import sha256
from broker.core.envelope import RecipientKey, wrap_for
from broker.schemagen import build_schemas
from broker.vectors import build_vectors, render

VECTORS = Path(__file__).resolve().parent.parent / "schemas" / "vectors"
BUILT = build_vectors()


def load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def directory_of(vector: dict):
    return verify_directory(
        bytes.fromhex(vector["directory"]), pinned=bytes.fromhex(vector["authority_public"])
    )


@pytest.mark.parametrize("name", sorted(BUILT))
def test_published_vectors_match_regenerated(name):
    assert (VECTORS / name).read_text(encoding="utf-8") == render(BUILT[name]), (
        f"schemas/vectors/{name} is stale: run `make vectors`"
    )


def test_no_unexpected_vector_files():
    assert sorted(p.name for p in VECTORS.glob("*.json")) == sorted(BUILT)


def identity(actor: str, keys: dict) -> Identity:
    return Identity(
        actor,
        SigningKeyPair(bytes.fromhex(keys["signing_seed"])),
        EncryptionKeyPair(bytes.fromhex(keys["encryption_secret"])),
    )


def test_valid_envelope_opens_for_each_recipient():
    vector = load("envelope-valid.json")
    directory = directory_of(vector)
    raw = bytes.fromhex(vector["envelope"])
    decision = decide(
        raw, directory=directory, policy=Policy(), mode=Mode.ORDINARY, now=vector["now"], seen=()
    )
    assert isinstance(decision, Accept)
    assert decision.envelope.header.wire() == vector["expected"]["header"]
    assert decision.envelope.header_hash == vector["expected"]["header_hash"]
    assert len(vector["recipients"]) == 3
    for recipient in vector["recipients"]:
        me = identity(recipient["actor"], recipient)
        opened = open_envelope(raw, me=me, directory=directory, policy=Policy(), now=vector["now"])
        assert opened.payload.decode() == vector["expected"]["plaintext"]


def test_invalid_cases_are_refused_with_their_reason():
    vector = load("envelope-invalid.json")
    directory = directory_of(vector)
    recipients = {r["actor"]: r for r in load("envelope-valid.json")["recipients"]}
    assert len(vector["cases"]) >= 10
    for case in vector["cases"]:
        raw = bytes.fromhex(case["envelope"])
        now = case.get("now", vector["now"])
        if case["stage"] == "broker":
            decision = decide(
                raw,
                directory=directory,
                policy=Policy(),
                mode=Mode.ORDINARY,
                now=now,
                seen=set(case.get("seen", [])),
            )
            assert isinstance(decision, Reject), case["name"]
            assert decision.reason == case["reason"], case["name"]
            assert list(decision.recipients) == case.get("recipients", []), case["name"]
        else:
            actor = case["recipient"]
            keys = dict(recipients.get(actor, {}))
            if "recipient_secret" in case:
                keys["encryption_secret"] = case["recipient_secret"]
            me = (
                identity(actor, keys)
                if keys
                else Identity.generate(actor)  # an outsider: no keys in the vectors
            )
            with pytest.raises(OpenError) as caught:
                open_envelope(raw, me=me, directory=directory, policy=Policy(), now=now)
            assert caught.value.code == case["reason"], case["name"]


def test_receipt_vector_verifies_and_matches_its_message():
    vector = load("receipt.json")
    directory = directory_of(vector)
    receipt = verify_receipt(bytes.fromhex(vector["receipt"]), directory, now=vector["now"])
    assert receipt.body.wire() == vector["expected"]["body"]
    envelope = read_envelope(bytes.fromhex(vector["envelope"]), directory)
    check_receipt_matches(receipt, envelope.header, envelope.header_hash)


def test_notice_vector_verifies_and_names_the_refused_envelope():
    vector = load("notice.json")
    directory = directory_of(vector)
    body = verify_notice(bytes.fromhex(vector["notice"]), directory, now=vector["now"])
    assert body.wire() == vector["expected"]["body"]
    assert body.to_bytes() == vector["expected"]["body_bytes"].encode()
    assert body.broker == vector["broker"]["id"]
    assert body.signer_key == vector["broker"]["signing_key_id"]
    submitted = bytes.fromhex(vector["envelope"])
    assert body.submission == sha256(submitted).hex()
    decision = decide(
        submitted, directory=directory, policy=Policy(), mode=Mode.ORDINARY, now=body.at, seen=()
    )
    assert isinstance(decision, Reject)
    assert (body.reason, body.recipients, body.message, body.to) == (
        decision.reason.value,
        decision.recipients,
        decision.message_id,
        decision.sender,
    )
    envelope = read_envelope(submitted, directory)
    assert body.header_hash == envelope.header_hash
    assert len(vector["invalid"]) >= 4
    for case in vector["invalid"]:
        with pytest.raises(NoticeError) as caught:
            verify_notice(bytes.fromhex(case["notice"]), directory, now=vector["now"])
        assert caught.value.code == case["reason"], case["name"]


def test_directory_chain_vector():
    vector = load("directory-chain.json")
    pinned = bytes.fromhex(vector["authority_public"])
    versions = [bytes.fromhex(v) for v in vector["versions"]]
    chain = []
    for raw in versions:
        chain.append(verify_directory(raw, pinned=pinned, previous=chain[-1] if chain else None))
    assert [v.hash for v in chain] == vector["expected_hashes"]
    assert verify_chain(versions, pinned=pinned).version == 3
    for case in vector["invalid"]:
        with pytest.raises(DirectoryError) as caught:
            verify_directory(
                bytes.fromhex(case["version"]), pinned=pinned, previous=chain[case["previous"] - 1]
            )
        assert caught.value.code == case["reason"], case["name"]


def test_grant_vector_verifies_and_opens_for_the_newcomer():
    vector = load("grant.json")
    directory = directory_of(vector)
    raw = bytes.fromhex(vector["grant"])
    grant = verify_grant(raw, directory, now=vector["now"])
    expected = vector["expected"]
    assert grant.body.wire() == expected["body"]
    assert grant.body.to_bytes() == expected["body_bytes"].encode()
    assert grant.envelope.raw == bytes.fromhex(vector["envelope"])
    assert grant.envelope.header_hash == expected["header_hash"] == grant.body.header_hash
    assert grant.envelope.header.incident == vector["incident"]
    assert vector["newcomer"]["actor"] not in grant.envelope.header.recipients
    me = identity(vector["newcomer"]["actor"], vector["newcomer"])
    opened = open_grant(grant, me=me, directory=directory, policy=Policy(), now=vector["now"])
    assert opened.payload == bytes.fromhex(expected["plaintext_hex"])
    assert opened.payload.decode() == expected["plaintext"]
    signed = read_envelope(bytes.fromhex(vector["envelope"]), directory)
    assert decrypt_own(signed, bytes.fromhex(expected["content_key"])).payload == opened.payload
    jsonschema.validate(expected["body"], build_schemas()["grant-body"])


def test_grant_vector_sealed_key_comes_from_its_published_draw():
    vector = load("grant.json")
    directory = directory_of(vector)
    expected = vector["expected"]
    draws = [bytes.fromhex(expected["ephemeral_secret"])]
    nacka = load("envelope-valid.json")["sender"]
    assert nacka["signing_key_id"] == vector["originator"]["signing_key_id"]
    # The sealed key is the content key sealed with the published ephemeral secret (the
    # independent test rebuilds the whole frame from Appendix A's stream).
    newcomer = directory.actor(vector["newcomer"]["actor"])
    assert newcomer is not None
    body = GrantBody.parse(expected["body_bytes"].encode(), max_bytes=4096)
    wrap = wrap_for(
        bytes.fromhex(expected["content_key"]),
        RecipientKey.of(newcomer, body.at),
        lambda n: draws.pop(0)[:n],
    )
    assert (wrap.key_id, wrap.sealed) == (body.key_id, body.sealed)


@pytest.mark.parametrize("case", load("grant.json")["invalid"], ids=lambda c: c["name"])
def test_grant_vector_invalid_cases(case):
    vector = load("grant.json")
    directory = directory_of(vector)
    now = case.get("now", vector["now"])
    raw = bytes.fromhex(case["grant"])
    if case["stage"] == "verify":
        with pytest.raises(GrantError) as caught:
            verify_grant(raw, directory, now=now)
    else:
        grant = verify_grant(raw, directory, now=vector["now"])
        actor = case.get("recipient", vector["newcomer"]["actor"])
        me = (
            identity(actor, vector["newcomer"])
            if actor == vector["newcomer"]["actor"]
            else Identity.generate(actor)
        )
        with pytest.raises((GrantError, OpenError)) as caught:
            open_grant(grant, me=me, directory=directory, policy=Policy(), now=now)
    assert caught.value.code == case["reason"]


def test_bundle_vector_verifies_and_each_item_verifies():
    vector = load("bundle.json")
    directory = directory_of(vector)
    bundle = verify_bundle(bytes.fromhex(vector["bundle"]), directory, now=vector["now"])
    assert bundle.body.wire() == vector["expected"]["body"]
    assert [item.hex() for item in bundle.items] == vector["expected"]["items"]
    envelope, grant = bundle.items
    assert envelope == bytes.fromhex(load("grant.json")["envelope"])
    read_envelope(envelope, directory)
    verify_grant(grant, directory, now=vector["now"])
    jsonschema.validate(vector["expected"]["body"], build_schemas()["bundle-body"])
    for case in vector["invalid"]:
        with pytest.raises(BundleError) as caught:
            verify_bundle(bytes.fromhex(case["bundle"]), directory, now=vector["now"])
        assert caught.value.code == case["reason"], case["name"]
    tampered = vector["tampered_item"]
    inside = verify_bundle(bytes.fromhex(tampered["bundle"]), directory, now=vector["now"])
    with pytest.raises(EnvelopeError) as refused:
        read_envelope(inside.items[0], directory)
    assert [refused.value.code, None] == tampered["item_reasons"]
    verify_grant(inside.items[1], directory, now=vector["now"])
