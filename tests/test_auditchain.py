"""The audit trail's tamper evidence (broker.core.auditchain): every edit, deletion,
reordering and truncation of sealed events is detected and located."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.audit import AuditKind, audit_event
from broker.core import SigningKeyPair, sign_directory, successor, verify_directory
from broker.core.auditchain import (
    MAX_LEAVES,
    AuditChainError,
    Checkpoint,
    chain_step,
    leaf,
    make_checkpoint,
    parse_checkpoint,
    verify_checkpoint,
    verify_trail,
)
from broker.demo import DemoRegion

from .conftest import NOW

Entries = list[tuple[int, bytes | None]]


def event(i: int) -> bytes:
    return audit_event(
        AuditKind.ACCEPTED, at=NOW + i, broker="ssr-broker", key=f"m{i}", actor="nacka",
        message=f"{i:032x}", recipients=("solna",), detail=f"event {i}",
    )[1]  # fmt: skip


def sealed_trail(region: DemoRegion, sizes: tuple[int, ...]) -> tuple[Entries, list[Checkpoint]]:
    """Events interleaved with checkpoints as a broker writes them: each checkpoint
    seals everything before it (including the previous checkpoint)."""
    entries: Entries = []
    checkpoints: list[Checkpoint] = []
    for size in sizes:
        for _ in range(size):
            entries.append((len(entries) + 1, event(len(entries))))
        after = checkpoints[-1] if checkpoints else None
        start = 0 if after is None else after.last
        todo = [(s, e) for s, e in entries[start:] if e is not None]
        checkpoint = make_checkpoint(
            todo, after=after, at=NOW + len(entries), broker=region.broker.broker,
            signer=region.broker.signing,
        )  # fmt: skip
        checkpoints.append(checkpoint)
        entries.append((len(entries) + 1, checkpoint.raw))
    return entries, checkpoints


def problems(report: object) -> list[tuple[int | None, str]]:
    return [(f.seq, f.problem) for f in report.findings]  # type: ignore[attr-defined]


@pytest.fixture
def trail(region: DemoRegion) -> tuple[Entries, list[Checkpoint]]:
    return sealed_trail(region, (5, 3, 4))


def test_an_untouched_trail_verifies(region: DemoRegion, trail) -> None:
    entries, checkpoints = trail
    report = verify_trail(
        entries, [region.directory], expected={"number": 3, "hash": checkpoints[-1].hash}
    )
    assert report.verified, report.findings
    assert report.checkpoints == 3
    # 5 events, cp1, 3 events, cp2, 4 events, cp3: cp3 seals up to the 4th event of round 3.
    assert report.sealed_through == 14
    assert report.unsealed == 1  # the last checkpoint itself
    assert report.latest == checkpoints[-1]


def test_chain_is_the_documented_formula(region: DemoRegion, trail) -> None:
    entries, checkpoints = trail
    chain = bytes(32)
    for seq, data in entries[: checkpoints[0].last]:
        assert data is not None
        chain = chain_step(chain, seq, leaf(data))
    assert chain.hex() == checkpoints[0].chain


def edit(entries: Entries, seq: int, change: Callable[[bytes], bytes | None]) -> Entries:
    out: Entries = []
    for s, data in entries:
        if s == seq:
            assert data is not None
            new = change(data)
            if new is None:
                continue  # deleted
            out.append((s, new))
        else:
            out.append((s, data))
    return out


@pytest.mark.parametrize("seq", [1, 3, 7, 12])
def test_an_altered_event_is_located(region: DemoRegion, trail, seq: int) -> None:
    entries, _ = trail
    tampered = edit(entries, seq, lambda d: d.replace(b"nacka", b"nackb"))
    assert problems(verify_trail(tampered, [region.directory])) == [(seq, "altered")]


@pytest.mark.parametrize("seq", [2, 8])
def test_a_deleted_event_is_located(region: DemoRegion, trail, seq: int) -> None:
    entries, _ = trail
    tampered = edit(entries, seq, lambda d: None)
    assert problems(verify_trail(tampered, [region.directory])) == [(seq, "deleted")]


def test_swapped_events_are_located_as_moved(region: DemoRegion, trail) -> None:
    entries, _ = trail
    data = dict(entries)
    tampered = [(s, data[4] if s == 2 else data[2] if s == 4 else d) for s, d in entries]
    assert problems(verify_trail(tampered, [region.directory])) == [(2, "moved"), (4, "moved")]


def test_reordered_storage_is_located(region: DemoRegion, trail) -> None:
    entries, _ = trail
    tampered = list(entries)
    tampered[2], tampered[3] = tampered[3], tampered[2]  # seq 4 stored before seq 3
    assert problems(verify_trail(tampered, [region.directory])) == [(3, "moved")]


def test_truncation_is_detected_against_the_latest_known_checkpoint(
    region: DemoRegion, trail
) -> None:
    entries, checkpoints = trail
    expected = {"number": 3, "hash": checkpoints[-1].hash}
    # Cut the trail after checkpoint 2 (its events and checkpoint 3 are gone).
    cut = [(s, d) for s, d in entries if s <= checkpoints[1].last + 1]
    report = verify_trail(cut, [region.directory], expected=expected)
    assert problems(report) == [(None, "truncated")]
    assert "after sequence 9 " in report.findings[0].detail
    # Cut inside a sealed range, keeping the checkpoints: the missing events are named.
    holes = [(s, d) for s, d in entries if not 11 <= s <= 13]
    assert problems(verify_trail(holes, [region.directory], expected=expected)) == [
        (11, "deleted"), (12, "deleted"), (13, "deleted"),
    ]  # fmt: skip


def test_a_forged_or_foreign_checkpoint_is_refused(region: DemoRegion, trail) -> None:
    entries, checkpoints = trail
    impostor = SigningKeyPair.generate()
    forged = make_checkpoint(
        [(s, d) for s, d in entries[:5] if d is not None], after=None, at=NOW,
        broker=region.broker.broker, signer=impostor,
    )  # fmt: skip
    tampered = [(s, forged.raw if s == 6 else d) for s, d in entries]
    report = verify_trail(tampered, [region.directory])
    assert (6, "checkpoint_unknown_signer") in problems(report)
    assert not report.verified
    # A checkpoint re-signed over altered leaves by someone without the key: bad signature.
    doc = checkpoints[0].document.model_copy(update={"chain": "00" * 32})
    with pytest.raises(AuditChainError) as info:
        verify_checkpoint(doc.to_bytes(), [region.directory])
    assert info.value.code == "checkpoint_bad_signature"


def test_a_revoked_broker_key_still_verifies_what_it_signed_before(region: DemoRegion) -> None:
    entries, _ = sealed_trail(region, (3,))
    brokers = tuple(
        b.model_copy(update={"signing_keys": tuple(
            k.model_copy(update={"revoked_at": NOW + 1_000_000}) for k in b.signing_keys
        )})
        for b in region.directory.document.brokers
    )  # fmt: skip
    later = verify_directory(
        sign_directory(successor(region.directory, issued=NOW + 2_000_000, brokers=brokers),
                       region.authority),
        pinned=region.authority.public, previous=region.directory,
    )  # fmt: skip
    assert verify_trail(entries, [later]).verified
    late = make_checkpoint(
        [(s, d) for s, d in entries if d is not None][:1], after=None, at=NOW + 3_000_000,
        broker=region.broker.broker, signer=region.broker.signing,
    )  # fmt: skip
    with pytest.raises(AuditChainError) as info:
        verify_checkpoint(late.raw, [later])
    assert info.value.code == "checkpoint_unknown_signer"


def test_checkpoint_shape_and_bounds(region: DemoRegion) -> None:
    with pytest.raises(AuditChainError) as info:
        make_checkpoint([], after=None, at=NOW, broker="b", signer=region.broker.signing)
    assert info.value.code == "checkpoint_size"
    with pytest.raises(AuditChainError) as info:
        make_checkpoint([(2, b"x")], after=None, at=NOW, broker="b", signer=region.broker.signing)
    assert info.value.code == "checkpoint_gap"
    too_many = [(i + 1, b"e") for i in range(MAX_LEAVES + 1)]
    with pytest.raises(AuditChainError):
        make_checkpoint(too_many, after=None, at=NOW, broker="b", signer=region.broker.signing)
    for garbage in (b"", b"{}", b"\xff" * 10, b'{"kind":"checkpoint"}', b"[" * 10_000):
        with pytest.raises(AuditChainError):
            parse_checkpoint(garbage)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_single_change_to_sealed_events_is_detected(
    region: DemoRegion, data: st.DataObject
) -> None:
    entries, checkpoints = sealed_trail(region, (4, 4))
    sealed = [s for s, d in entries if s <= checkpoints[-1].last]
    seq = data.draw(st.sampled_from(sealed))
    action = data.draw(st.sampled_from(["flip", "delete", "duplicate"]))
    original = dict(entries)[seq]
    assert original is not None
    if action == "flip":
        position = data.draw(st.integers(0, len(original) - 1))
        bit = data.draw(st.integers(0, 7))
        changed = bytearray(original)
        changed[position] ^= 1 << bit
        tampered = edit(entries, seq, lambda d: bytes(changed))
    elif action == "delete":
        tampered = edit(entries, seq, lambda d: None)
    else:
        tampered = [*entries, (seq, original)]
    report = verify_trail(
        tampered, [region.directory], expected={"number": 2, "hash": checkpoints[-1].hash}
    )
    assert not report.verified


def signed_doc(region: DemoRegion, **fields: object) -> bytes:
    """A checkpoint document signed with the real broker key, whatever it says."""
    from broker.core.auditchain import CheckpointBody, SignedCheckpoint

    body = CheckpointBody.model_construct(**{"v": 1, "kind": "checkpoint", **fields})
    unsigned = body.to_bytes()
    signature = region.broker.signing.sign(unsigned).hex()
    return SignedCheckpoint.model_construct(**body.model_dump(), signature=signature).to_bytes()


def test_structural_refusals_and_rare_findings(region: DemoRegion) -> None:
    from broker.core import canonical

    entries, checkpoints = sealed_trail(region, (3, 3))
    doc = json.loads(checkpoints[0].raw)
    for change in ({"last": doc["last"] + 1}, {"previous": "00" * 32}):
        with pytest.raises(AuditChainError):
            parse_checkpoint(canonical.dumps(doc | change))

    # A checkpoint stored inside its own range; another, different checkpoint 1.
    own = make_checkpoint([(1, event(0))], after=None, at=NOW, broker=region.broker.broker,
                          signer=region.broker.signing)  # fmt: skip
    rival = make_checkpoint([(s, d) for s, d in entries[:2] if d], after=None, at=NOW,
                            broker=region.broker.broker, signer=region.broker.signing)  # fmt: skip
    weird = [(1, own.raw), *entries[1:], (99, rival.raw)]
    found = problems(verify_trail(weird, [region.directory], max_findings=3))
    assert (1, "checkpoint_inconsistent") in found
    assert len(found) == 3  # bounded

    conflict = [*entries, (99, rival.raw)]
    assert (99, "checkpoint_conflict") in problems(verify_trail(conflict, [region.directory]))

    # Checkpoint 2 chained to another checkpoint 1 than the one stored.
    other = make_checkpoint([(s, d) for s, d in entries[:2] if d], after=None, at=NOW,
                            broker=region.broker.broker, signer=region.broker.signing)  # fmt: skip
    second = make_checkpoint([(3, b"x")], after=other, at=NOW, broker=region.broker.broker,
                             signer=region.broker.signing)  # fmt: skip
    broken = [(s, second.raw if d == checkpoints[1].raw else d) for s, d in entries]
    assert (None, "checkpoint_chain_broken") in problems(verify_trail(broken, [region.directory]))

    # Signed by the real key, but its chain hash does not follow from its leaves.
    lying = signed_doc(
        region, number=1, first=1, last=3, leaves=tuple(leaf(d).hex() for _, d in entries[:3] if d),
        chain="11" * 32, previous=None, at=NOW, broker=region.broker.broker,
        signer_key=region.broker.signing.key_id,
    )  # fmt: skip
    liar = [*entries[:3], (4, lying)]
    assert (None, "checkpoint_inconsistent") in problems(verify_trail(liar, [region.directory]))

    # Redacted entries are taken on trust; an entry before the part covered is inserted.
    redacted = [(s, None if s == 2 else d) for s, d in entries]
    assert verify_trail(redacted, [region.directory]).verified
    start = checkpoints[0]
    later = [(s, d) for s, d in entries if s > start.last]
    assert verify_trail(later, [region.directory], start=start).verified
    early = [(1, entries[0][1]), *later]
    assert (1, "inserted") in problems(verify_trail(early, [region.directory], start=start))

    # The expected latest checkpoint has another hash than the one stored.
    report = verify_trail(entries, [region.directory], expected={"number": 2, "hash": "ab" * 32})
    assert problems(report) == [(None, "checkpoint_conflict")]
    as_dict = report.as_dict()
    assert as_dict["verified"] is False
    assert as_dict["findings"][0] == {"seq": None, "problem": "checkpoint_conflict",
                                      "detail": report.findings[0].detail}  # fmt: skip


def test_review_findings_stay_fixed(region: DemoRegion) -> None:
    """Regression tests for the security review of the audit trail."""
    entries, _ = sealed_trail(region, (3, 3))
    # A deletion after the last checkpoint is a deletion too (JetStream numbers without gaps).
    tail = [*entries, (len(entries) + 1, event(100)), (len(entries) + 3, event(101))]
    assert (len(entries) + 2, "deleted") in problems(verify_trail(tail, [region.directory]))
    # ... and so is one at the very end, given the stream's last sequence.
    report = verify_trail(entries[:-1], [region.directory], through=len(entries))
    assert problems(report) == [(len(entries), "deleted")]

    # A broker key revoked in a later version: its later checkpoints are refused even
    # when the older version (without the revocation) is among the directories.
    revoked_at = NOW + 5
    brokers = tuple(
        b.model_copy(update={"signing_keys": tuple(
            k.model_copy(update={"revoked_at": revoked_at}) for k in b.signing_keys
        )})
        for b in region.directory.document.brokers
    )  # fmt: skip
    v2 = verify_directory(
        sign_directory(successor(region.directory, issued=NOW + 6, brokers=brokers),
                       region.authority),
        pinned=region.authority.public, previous=region.directory,
    )  # fmt: skip
    late = make_checkpoint([(1, event(0))], after=None, at=revoked_at + 1,
                           broker=region.broker.broker, signer=region.broker.signing)  # fmt: skip
    with pytest.raises(AuditChainError) as info:
        verify_checkpoint(late.raw, [region.directory, v2])
    assert info.value.code == "checkpoint_unknown_signer"

    # Checkpoint times never go backwards.
    first = make_checkpoint([(1, event(0))], after=None, at=NOW + 100,
                            broker=region.broker.broker, signer=region.broker.signing)  # fmt: skip
    second = make_checkpoint([(2, first.raw)], after=first, at=NOW + 50,
                             broker=region.broker.broker, signer=region.broker.signing)  # fmt: skip
    backwards = [(1, event(0)), (2, first.raw), (3, second.raw)]
    assert (None, "checkpoint_inconsistent") in problems(
        verify_trail(backwards, [region.directory])
    )

    # A malformed expectation is a finding, not a crash.
    for bad in ({"number": "x"}, {"number": [1]}, {"number": True}, {"number": -1}):
        report = verify_trail(entries, [region.directory], expected=bad)
        assert (None, "checkpoint_invalid") in problems(report)
