"""The published test vectors are current, and the implementation agrees with them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.core import (
    Accept,
    DirectoryError,
    EncryptionKeyPair,
    Identity,
    Mode,
    NoticeError,
    OpenError,
    Policy,
    Reject,
    SigningKeyPair,
    check_receipt_matches,
    decide,
    open_envelope,
    read_envelope,
    verify_chain,
    verify_directory,
    verify_notice,
    verify_receipt,
)
from broker.core.crypto import sha256
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
