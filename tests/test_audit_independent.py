"""An independent check of PROTOCOL.md §21 with hashlib, json and PyNaCl only: a
checkpoint made by the reference code verifies by the written rules, and the
rules refuse a changed event."""

from __future__ import annotations

import hashlib
import json

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from broker.audit import AuditKind, audit_event
from broker.core.auditchain import make_checkpoint
from broker.demo import DemoRegion

from .conftest import NOW


def canonical(doc: dict) -> bytes:  # the subset checkpoints use: ASCII keys, ints, strings
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def independent_check(events: list[bytes], checkpoint_bytes: bytes, broker_public: bytes) -> bool:
    doc = json.loads(checkpoint_bytes)
    signature = bytes.fromhex(doc.pop("signature"))
    try:
        VerifyKey(broker_public).verify(canonical(doc), signature)
    except BadSignatureError:
        return False
    chain = bytes(32)
    for offset, event in enumerate(events):
        seq = doc["first"] + offset
        leaf = hashlib.sha256(event).digest()
        if leaf.hex() != doc["leaves"][offset]:
            return False
        chain = hashlib.sha256(
            b"ssr-audit-chain\x00" + chain + seq.to_bytes(8, "big") + leaf
        ).digest()
    return chain.hex() == doc["chain"] and doc["last"] == doc["first"] + len(events) - 1


def test_a_reference_checkpoint_verifies_by_the_written_rules(region: DemoRegion) -> None:
    events = [
        audit_event(AuditKind.ACCEPTED, at=NOW + i, broker="ssr-broker", key=str(i), actor="nacka",
                    recipients=("solna",), detail="å ä ö")[1]
        for i in range(5)
    ]  # fmt: skip
    checkpoint = make_checkpoint(
        list(enumerate(events, start=1)), after=None, at=NOW, broker=region.broker.broker,
        signer=region.broker.signing,
    )  # fmt: skip
    assert canonical(json.loads(checkpoint.raw)) == checkpoint.raw
    public = region.broker.signing.public
    assert independent_check(events, checkpoint.raw, public)
    changed = [*events[:2], events[2].replace(b"solna", b"solnb"), *events[3:]]
    assert not independent_check(changed, checkpoint.raw, public)
    assert not independent_check(
        events, checkpoint.raw.replace(b'"number":1', b'"number":2'), public
    )
