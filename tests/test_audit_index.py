"""The audit index: traces, actor summaries, scope, pagination, hostile input, following.

Events are built with ``broker.audit.audit_event`` exactly as the router builds them;
the follower is tested against an in-memory stream and once against a real
nats-server with the real broker and actors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import pytest

from broker import subjects
from broker.audit import AuditKind, audit_event
from broker.audit_index import (
    MAX_EVENT_BYTES,
    MAX_LIMIT,
    SCHEMA_VERSION,
    UNREADABLE,
    AuditFollower,
    AuditIndex,
    concerns,
)
from broker.bus import JetStreamBus, StreamEntry
from broker.core import canonical, crypto
from broker.errors import NatsUnavailable
from broker.service import Service

from . import nats_fixtures, service_helpers
from .service_helpers import INTERN, SEKRETESS, Actors, now_ms, wait_for_audit, wait_until

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory
running_broker = service_helpers.running_broker
actors = service_helpers.actors

T0 = 1_790_000_000_000
M1 = "a1" * 16
M2 = "b2" * 16
M3 = "c3" * 16
LABEL = {
    "policy": "ssr",
    "classification": "SEKRETESS",
    "tlp": "AMBER",
    "categories": ["taktik"],
    "legal": "OSL 18:13",
}
LABEL_INTERN: dict[str, Any] = {
    "policy": "ssr",
    "classification": "INTERN",
    "tlp": "GREEN",
    "categories": [],
    "legal": None,
}


def event(kind: AuditKind, at: int, key: str, actor: str | None, **fields: Any) -> bytes:
    return audit_event(kind, at=at, broker="ssr-broker", key=key, actor=actor, **fields)[1]


def accepted(message: str, sender: str, to: Iterable[str], at: int, **fields: Any) -> bytes:
    fields = {"status": "actual", "label": LABEL, "priority": "routine"} | fields
    return event(
        AuditKind.ACCEPTED, at, message, sender, message=message, recipients=tuple(to), **fields
    )


def receipt(message: str, recipient: str, kind: str, at: int) -> bytes:
    return event(
        AuditKind.RECEIPT,
        at,
        f"{message}.{recipient}.{kind}",
        recipient,
        message=message,
        recipients=(recipient,),
        status="actual",
        detail=kind,
    )


def rejected(
    submitter: str, reason: str, at: int, *, message: str | None = None, to: Iterable[str] = ()
) -> bytes:
    return event(
        AuditKind.REJECTED,
        at,
        f"{submitter}.{reason}.{at}",
        submitter,
        message=message,
        reason=reason,
        recipients=tuple(to),
        status="actual",
        detail=f"refused: {reason}",
    )


def officer_query(officer: str, actor: str | None, at: int, **fields: Any) -> bytes:
    return event(AuditKind.OFFICER_QUERY, at, f"{officer}.{at}", actor, officer=officer, **fields)


def story() -> list[bytes]:
    """A realistic trail: a message with receipts and an escalation, a refusal, a replay,
    a refused receipt, an officer's queries, a mode change."""
    return [
        accepted(M1, "nacka", ["polisen-stockholm", "sos-alarm", "stockholm"], T0),  # 1
        receipt(M1, "stockholm", "delivered", T0 + 100),  # 2
        receipt(M1, "polisen-stockholm", "delivered", T0 + 150),  # 3
        receipt(M1, "stockholm", "read", T0 + 200),  # 4
        receipt(M1, "stockholm", "acknowledged", T0 + 300),  # 5
        event(  # 6: sos-alarm missed the deadline
            AuditKind.ESCALATION,
            T0 + 60_000,
            M1,
            "nacka",
            message=M1,
            recipients=("sos-alarm",),
            status="actual",
            priority="routine",
            label=LABEL,
        ),
        receipt(M1, "sos-alarm", "delivered", T0 + 61_000),  # 7: late
        rejected(  # 8
            "nacka", "recipient_not_cleared", T0 + 70_000, message=M2, to=["stockholms-hamnar"]
        ),
        rejected("solna", "replay", T0 + 80_000, message=M1),  # 9: someone replays M1
        event(  # 10
            AuditKind.RECEIPT_REJECTED,
            T0 + 90_000,
            "rr",
            "solna",
            reason="receipt_key_invalid",
            detail="signing key revoked",
        ),
        officer_query("sakerhetschef-nacka", "nacka", T0 + 100_000, detail="GET /traffic"),  # 11
        event(  # 12
            AuditKind.MODE_CHANGE,
            T0 + 110_000,
            M3,
            "lansstyrelsen-stockholm",
            message=M3,
            detail="mode is now heightened_alert",
        ),
        accepted(  # 13
            M3,
            "lansstyrelsen-stockholm",
            ["nacka", "solna"],
            T0 + 110_000,
            label=LABEL_INTERN,
            status="exercise",
        ),
    ]


@pytest.fixture
def index(tmp_path: Path) -> Iterable[AuditIndex]:
    ix = AuditIndex(tmp_path / "audit.sqlite")
    try:
        yield ix
    finally:
        ix.close()


@pytest.fixture
def loaded(index: AuditIndex) -> AuditIndex:
    assert index.add(enumerate(story(), start=1)) == len(story())
    return index


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events]


# --- message traces ---------------------------------------------------------------------------


def test_trace_of_an_accepted_message_with_receipts_escalation_and_a_replay(
    loaded: AuditIndex,
) -> None:
    trace = loaded.message_trace(M1)
    assert trace is not None
    assert trace["message"] == M1
    assert trace["sender"] == "nacka"  # not solna, whose replay was refused
    assert trace["recipients"] == ["polisen-stockholm", "sos-alarm", "stockholm"]
    assert trace["label"] == LABEL
    assert (trace["status"], trace["priority"], trace["incident"]) == ("actual", "routine", None)
    assert trace["accepted_at"] == T0
    assert trace["receipts"] == {
        "polisen-stockholm": {"delivered": T0 + 150, "read": None, "acknowledged": None},
        "sos-alarm": {"delivered": T0 + 61_000, "read": None, "acknowledged": None},
        "stockholm": {"delivered": T0 + 100, "read": T0 + 200, "acknowledged": T0 + 300},
    }
    assert trace["escalated"] == ["sos-alarm"]
    [refusal] = trace["refusals"]
    assert refusal | {"detail": ""} == {
        "seq": 9,
        "kind": "rejected",
        "actor": "solna",
        "at": T0 + 80_000,
        "reason": "replay",
        "recipients": [],
        "detail": "",
    }
    assert trace["refusals_total"] == 1
    assert seqs(trace["events"]) == [1, 2, 3, 4, 5, 6, 7, 9]
    assert trace["events_truncated"] is False
    # Only what the audit event carries: ids, actors, label, times; never content.
    assert all("payload" not in e and "text" not in e for e in trace["events"])


def test_trace_of_a_refused_message_and_of_an_unknown_one(loaded: AuditIndex) -> None:
    trace = loaded.message_trace(M2)
    assert trace is not None
    assert trace["sender"] == "nacka"
    assert trace["accepted_at"] is None
    assert trace["recipients"] == []
    assert trace["receipts"] == {}
    assert trace["escalated"] == []
    assert [(r["reason"], r["recipients"]) for r in trace["refusals"]] == [
        ("recipient_not_cleared", ["stockholms-hamnar"])
    ]
    assert loaded.message_trace("ff" * 16) is None


def test_trace_of_a_control_message_lists_its_mode_change(loaded: AuditIndex) -> None:
    trace = loaded.message_trace(M3)
    assert trace is not None
    assert [e["kind"] for e in trace["events"]] == ["mode_change", "accepted"]
    assert trace["status"] == "exercise"
    assert trace["receipts"] == {
        r: {"delivered": None, "read": None, "acknowledged": None} for r in ("nacka", "solna")
    }


# --- writing: idempotence, duplicates, rebuilds ---------------------------------------------


def test_add_is_idempotent_by_sequence(index: AuditIndex) -> None:
    events = list(enumerate(story(), start=1))
    assert index.add(events[:5]) == 5
    assert index.add(events[:5]) == 0
    assert index.add(events) == len(events) - 5
    assert index.add([*events, *events]) == 0
    assert index.last_seq() == len(events)
    assert seqs(index.events(limit=MAX_LIMIT)) == list(range(1, len(events) + 1))


def test_an_event_repeated_after_the_dedupe_window_is_listed_but_counted_once(
    index: AuditIndex,
) -> None:
    first = accepted(M1, "nacka", ["solna"], T0)
    index.add([(1, first), (2, receipt(M1, "solna", "delivered", T0 + 5)), (3, first)])
    assert seqs(index.events()) == [1, 2, 3]
    assert index.actor_traffic("nacka", T0, T0 + 10)["sent"]["total"] == 1
    assert index.actor_traffic("solna", T0, T0 + 10)["received"]["total"] == 1
    trace = index.message_trace(M1)
    assert trace is not None
    assert trace["accepted_at"] == T0
    assert len(trace["events"]) == 3


def test_a_file_of_another_schema_version_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    index = AuditIndex(path)
    index.add(enumerate(story(), start=1))
    index.close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    rebuilt = AuditIndex(path)
    try:
        assert rebuilt.last_seq() == 0  # emptied: the follower refills it from the stream
        assert rebuilt.add(enumerate(story(), start=1)) == len(story())
        assert rebuilt.message_trace(M1) is not None
    finally:
        rebuilt.close()
    # And one that is reopened with the same schema keeps its content.
    again = AuditIndex(path)
    try:
        assert again.last_seq() == len(story())
    finally:
        again.close()


@pytest.mark.parametrize(
    "content",
    [b"this is not sqlite at all" * 100, b""],
    ids=["garbage", "empty"],
)
def test_a_file_that_is_not_an_index_is_replaced(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "audit.sqlite"
    path.write_bytes(content)
    index = AuditIndex(path)
    try:
        assert index.last_seq() == 0
        assert index.add([(1, story()[0])]) == 1
    finally:
        index.close()


def test_a_foreign_database_at_the_path_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE something (x)")
    db.close()
    index = AuditIndex(path)
    try:
        assert index.add([(1, story()[0])]) == 1
        assert index.message_trace(M1) is not None
    finally:
        index.close()


# --- hostile input ------------------------------------------------------------------------------


def _body(**changes: Any) -> bytes:
    body = json.loads(story()[0])
    body.update(changes)
    return json.dumps(body).encode()


HOSTILE: dict[str, Any] = {
    "garbage": b"\x00\x01garbage\xff",
    "empty": b"",
    "not_utf8": b'{"kind":"accepted","actor":"\xff\xfe"}',
    "truncated": story()[0][:-5],
    "array": b"[1,2,3]",
    "string": b'"accepted"',
    "nesting_bomb": b"[" * 32_000 + b"]" * 32_000,  # just under 64 KiB: the parser refuses
    "nesting_bomb_oversized": b"[" * 50_000 + b"]" * 50_000,  # refused before parsing
    "nesting_under_the_size_bound": b'{"kind":"accepted","x":'
    + b"[" * 20_000
    + b"]" * 20_000
    + b"}",
    "deep_but_parseable": _body(label={"a": json.loads("[" * 20 + '"x"' + "]" * 20)}),
    "detail_is_null": _body(detail=None),
    "huge_detail": _body(detail="x" * (MAX_EVENT_BYTES + 1)),
    "at_is_text": _body(at="yesterday"),
    "at_is_bool": _body(at=True),
    "at_negative": _body(at=-1),
    "at_is_float": b'{"v":1,"kind":"accepted","at":1.5,"id":"x","broker":"b"}',
    "at_too_big": _body(at=2**60),
    "recipients_is_text": _body(recipients="nacka"),
    "recipients_hold_numbers": _body(recipients=[1, 2]),
    "too_many_recipients": _body(recipients=[f"a{i}" for i in range(1001)]),
    "actor_is_object": _body(actor={"id": "nacka"}),
    "label_is_list": _body(label=["SEKRETESS"]),
    "label_classification_is_list": _body(label={"classification": ["HEMLIG"]}),
    "unknown_kind": _body(kind="exfiltrate"),
    "kind_missing": _body(kind=None),
    "version_2": _body(v=2),
    "version_true": _body(v=True),
    "id_missing": _body(id=None),
    "lone_surrogate": _body(actor="\ud800"),
    "nan": b'{"v":1,"kind":"accepted","at":NaN,"id":"x","broker":"b"}',
    "duplicate_member": b'{"v":1,"kind":"accepted","kind":"rejected","at":1,"id":"x"}',
    "not_bytes_none": None,
    "not_bytes_text": story()[0].decode(),
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_events_are_stored_as_unreadable_and_never_raise(
    index: AuditIndex, data: Any
) -> None:
    assert index.add([(1, data), (2, story()[0])]) == 2
    [bad, good] = index.events()
    assert bad["kind"] == UNREADABLE, bad
    assert bad["seq"] == 1
    assert bad["at"] is None
    assert bad["actor"] is None
    raw = data if isinstance(data, bytes) else b""
    assert bad["sha256"] == crypto.sha256(raw).hex()
    assert bad["size"] == len(raw)
    assert len(bad["detail"]) < 600  # the reason is short, whatever the input held
    assert good["kind"] == "accepted"
    assert index.events(kinds=[UNREADABLE]) == [bad]
    assert index.events(start=0, end=2**53) == [good]  # no time: outside every window
    assert index.message_trace(M1) is not None


def test_an_event_over_64_kib_is_refused_before_parsing(
    index: AuditIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[int] = []
    real = canonical.loads

    def spy(data: bytes, **kw: Any) -> Any:
        parsed.append(len(data))
        return real(data, **kw)

    monkeypatch.setattr(canonical, "loads", spy)
    huge = _body(detail="x" * MAX_EVENT_BYTES)
    index.add([(1, huge), (2, story()[1])])
    assert parsed == [len(story()[1])]
    assert index.events()[0]["kind"] == UNREADABLE


def test_detail_is_bounded_to_2000_characters(index: AuditIndex) -> None:
    index.add([(1, _body(detail="x" * 10_000))])
    assert index.events()[0]["kind"] == UNREADABLE  # detail is bounded to 2000 characters
    index.add([(2, _body(detail="x" * 1500, id="other"))])
    assert index.events(after_seq=1)[0]["kind"] == "accepted"


def test_bad_sequences_are_skipped(index: AuditIndex) -> None:
    entries = cast(Any, [(0, story()[0]), (-4, story()[0]), ("7", story()[0]), (True, b"")])
    assert index.add(entries) == 0
    assert index.last_seq() == 0


def test_checkpoints_are_stored_but_not_interpreted(index: AuditIndex) -> None:
    leaves = ["ab" * 32] * 1024  # a full checkpoint is larger than an ordinary event
    checkpoint = canonical.dumps(
        {"at": T0, "broker": "ssr-broker", "chain": "00" * 32, "first": 1, "kind": "checkpoint",
         "last": 1024, "leaves": leaves, "number": 1, "previous": None, "v": 1}
    )  # fmt: skip
    assert len(checkpoint) > MAX_EVENT_BYTES
    index.add([(1, story()[0]), (2, checkpoint), (3, b'{"kind":"checkpoint"}')])
    first, second = index.events(kinds=["checkpoint"])
    assert first["seq"] == 2
    assert first["leaves"] == leaves
    assert first["at"] == T0
    assert second == {"kind": "checkpoint", "seq": 3}
    assert index.events(actor="ssr-broker") == []  # it concerns no actor
    assert index.events(start=T0, end=T0 + 1) == [index.events()[0], first]
    # Only checkpoints get the larger bound, whatever an event holds near its start.
    disguised = {"a": {"kind": "checkpoint"}} | json.loads(_body(detail="x" * MAX_EVENT_BYTES))
    index.add([(4, json.dumps(disguised).encode())])
    assert index.events(after_seq=3)[0]["kind"] == UNREADABLE


def test_missing_optional_fields_read_as_null(index: AuditIndex) -> None:
    old = json.loads(story()[0])
    del old["officer"], old["incident"], old["detail"]
    index.add([(1, canonical.dumps(old))])
    [stored] = index.events()
    assert (stored["officer"], stored["incident"], stored["detail"]) == (None, None, "")


# --- queries: pagination, windows, scope ----------------------------------------------------


def test_pagination_with_after_seq(index: AuditIndex) -> None:
    events = [
        accepted(f"{i:032x}", "nacka", ["solna"], T0 + i)
        if i % 2
        else rejected("solna", "expired", T0 + i)
        for i in range(1, 26)
    ]
    index.add(enumerate(events, start=1))
    pages: list[list[int]] = []
    after = 0
    while page := index.events(after_seq=after, limit=10):
        pages.append(seqs(page))
        after = page[-1]["seq"]
    assert pages == [list(range(1, 11)), list(range(11, 21)), list(range(21, 26))]
    assert seqs(index.events(kinds=["rejected"], after_seq=10, limit=3)) == [12, 14, 16]
    assert seqs(index.events(actor="nacka", after_seq=20)) == [21, 23, 25]
    assert len(index.events(limit=0)) == 1  # limits are clamped to 1..1000
    assert len(index.events(limit=10**9)) == 25
    assert index.events(kinds="rejected", limit=1)[0]["kind"] == "rejected"


def test_limit_is_bounded_to_1000(index: AuditIndex) -> None:
    index.add((i, accepted(f"{i:032x}", "nacka", ["solna"], T0 + i)) for i in range(1, 1100))
    assert len(index.events(limit=5000)) == MAX_LIMIT
    assert len(index.events(actor="solna", limit=5000)) == MAX_LIMIT


def test_time_windows_are_inclusive_start_exclusive_end(loaded: AuditIndex) -> None:
    assert seqs(loaded.events(start=T0 + 100, end=T0 + 200)) == [2, 3]
    assert seqs(loaded.events(start=T0 + 100, end=T0 + 201)) == [2, 3, 4]
    assert seqs(loaded.events(end=T0 + 100)) == [1]
    assert seqs(loaded.events(start=T0 + 110_000)) == [12, 13]
    assert seqs(loaded.events(actor="stockholm", start=T0 + 200, end=T0 + 300)) == [4]
    assert loaded.events(start=T0 + 5, end=T0) == []
    traffic = loaded.actor_traffic("nacka", T0 + 1, T0 + 110_000)
    assert traffic["sent"]["total"] == 0
    assert traffic["received"]["total"] == 0
    assert traffic["refused"]["total"] == 1


@pytest.mark.parametrize(
    "actor",
    ["nacka", "solna", "stockholm", "sos-alarm", "stockholms-hamnar", "lansstyrelsen-stockholm",
     "sakerhetschef-nacka", "nobody"],
)  # fmt: skip
def test_actor_scope_is_exactly_concerns(loaded: AuditIndex, actor: str) -> None:
    everything = loaded.events(limit=MAX_LIMIT)
    assert loaded.events(actor=actor) == [e for e in everything if concerns(e, actor)]


def test_concerns() -> None:
    query = json.loads(officer_query("sakerhetschef-nacka", "nacka", T0))
    assert concerns(query, "nacka")  # the actor the officer asked about
    assert not concerns(query, "sakerhetschef-nacka")  # the officer is not an actor
    assert concerns({"actor": None, "recipients": ["solna"]}, "solna")
    assert not concerns({"actor": None, "recipients": "solna"}, "solna")  # malformed: nobody
    assert not concerns({}, "solna")


def test_filters_combine_and_officers_are_queryable(loaded: AuditIndex) -> None:
    loaded.add([(14, officer_query("sakerhetschef-lansstyrelsen", None, T0 + 120_000))])
    assert seqs(loaded.events(officer="sakerhetschef-nacka")) == [11]
    assert seqs(loaded.events(officer="sakerhetschef-lansstyrelsen")) == [14]
    assert seqs(loaded.events(actor="nacka", officer="sakerhetschef-nacka")) == [11]
    assert seqs(loaded.events(actor="nacka", kinds=["accepted", "rejected"])) == [1, 8, 13]
    assert seqs(loaded.events(actor="nacka", kinds=["nothing"])) == []


def test_actor_queries_use_indexes(loaded: AuditIndex) -> None:
    plans: list[str] = []
    db = loaded._db
    original = db

    class Recorder:
        def execute(self, sql: str, params: Any = ()) -> Any:
            if sql.lstrip().upper().startswith("SELECT"):
                plan = original.execute("EXPLAIN QUERY PLAN " + sql, params)
                plans.extend(row[3] for row in plan)
            return original.execute(sql, params)

    loaded._db = cast(Any, Recorder())
    try:
        loaded.events(actor="nacka", start=T0, end=T0 + 10**6, kinds=["accepted"])
        loaded.actor_traffic("nacka", T0, T0 + 10**6)
        loaded.message_trace(M1)
        loaded.refusals("nacka", T0, T0 + 10**6)
        loaded.last_activity("nacka", T0 + 10**6)
    finally:
        loaded._db = original
    full_scans = [p for p in plans if p.startswith("SCAN") and "VIRTUAL TABLE" not in p]
    assert full_scans == [], plans


# --- summaries ----------------------------------------------------------------------------------


def test_actor_traffic(loaded: AuditIndex) -> None:
    nacka = loaded.actor_traffic("nacka", T0, T0 + 10**6)
    assert nacka["actor"] == "nacka"
    assert (nacka["from"], nacka["to"]) == (T0, T0 + 10**6)
    assert nacka["sent"] == {
        "total": 1,
        "by_classification": {"SEKRETESS": 1},
        "by_tlp": {"AMBER": 1},
        "by_status": {"actual": 1},
        "by_category": {"taktik": 1},
    }
    assert nacka["received"]["total"] == 1
    assert nacka["received"]["by_classification"] == {"INTERN": 1}
    assert nacka["received"]["by_status"] == {"exercise": 1}
    assert nacka["refused"]["total"] == 1
    assert nacka["refused"]["by_reason"] == {"recipient_not_cleared": 1}
    assert seqs(nacka["refused"]["recent"]) == [8]
    assert nacka["escalations"] == 0
    assert nacka["escalations_as_sender"] == 1
    assert nacka["receipts_signed"] == {"delivered": 0, "read": 0, "acknowledged": 0}

    stockholm = loaded.actor_traffic("stockholm", T0, T0 + 10**6)
    assert stockholm["received"]["total"] == 1
    assert stockholm["sent"]["total"] == 0
    assert stockholm["receipts_signed"] == {"delivered": 1, "read": 1, "acknowledged": 1}

    sos = loaded.actor_traffic("sos-alarm", T0, T0 + 10**6)
    assert sos["escalations"] == 1
    assert sos["receipts_signed"]["delivered"] == 1

    solna = loaded.actor_traffic("solna", T0, T0 + 10**6)
    assert solna["refused"]["by_reason"] == {"replay": 1, "receipt_key_invalid": 1}
    assert seqs(solna["refused"]["recent"]) == [10, 9]  # newest first

    hamnar = loaded.actor_traffic("stockholms-hamnar", T0, T0 + 10**6)
    assert hamnar["named_in_refusals"] == {
        "total": 1,
        "by_reason": {"recipient_not_cleared": 1},
    }
    assert hamnar["refused"]["total"] == 0


def test_recent_refusals_are_bounded(index: AuditIndex) -> None:
    index.add((i, rejected("solna", "expired", T0 + i)) for i in range(1, 121))
    traffic = index.actor_traffic("solna", T0, T0 + 1000)
    assert traffic["refused"]["total"] == 120
    assert seqs(traffic["refused"]["recent"]) == list(range(120, 70, -1))


def test_activity_leaves_out_officer_queries(loaded: AuditIndex) -> None:
    loaded.add([(14, officer_query("sakerhetschef-nacka", "nacka", T0 + 500_000))])
    assert loaded.last_activity("nacka") == T0 + 110_000
    assert loaded.last_activity("nacka", before=T0 + 110_000) == T0 + 70_000
    assert not loaded.active("nacka", T0 + 200_000, T0 + 10**6)
    assert loaded.active("nacka", T0, T0 + 1)
    assert loaded.last_activity("nobody") is None


def test_trace_lists_are_bounded(index: AuditIndex) -> None:
    replays = ((i, rejected(f"a{i % 7}", "replay", T0 + i, message=M1)) for i in range(2, 1200))
    index.add([(1, accepted(M1, "nacka", ["solna"], T0)), *replays])
    trace = index.message_trace(M1)
    assert trace is not None
    assert len(trace["events"]) == 1000
    assert trace["events_truncated"] is True
    assert len(trace["refusals"]) == 100
    assert trace["refusals_total"] == 1198
    assert trace["sender"] == "nacka"


# --- following the stream ---------------------------------------------------------------------


class MemoryStream:
    """The two bus calls the follower makes, over a list; ``down`` simulates an outage."""

    def __init__(self, events: Iterable[bytes] = (), *, first: int = 1) -> None:
        self.entries = [
            StreamEntry(seq, "ssr.audit.x", data) for seq, data in enumerate(events, start=first)
        ]
        self.down = False
        self.reads = 0

    def append(self, data: bytes) -> None:
        last = self.entries[-1].seq if self.entries else 0
        self.entries.append(StreamEntry(last + 1, "ssr.audit.x", data))

    async def stream_bounds(self, stream: str) -> tuple[int, int]:
        if self.down:
            raise NatsUnavailable("down")
        if not self.entries:
            return 0, 0
        return self.entries[0].seq, self.entries[-1].seq

    async def read_stream(
        self, stream: str, subject: str, start_seq: int, limit: int
    ) -> list[StreamEntry]:
        assert (stream, subject) == (subjects.AUDIT_STREAM, subjects.AUDIT_WILDCARD)
        if self.down:
            raise NatsUnavailable("down")
        self.reads += 1
        return [e for e in self.entries if e.seq >= start_seq][:limit]


def follower(stream: MemoryStream, index: AuditIndex, batch: int = 500) -> AuditFollower:
    return AuditFollower(cast(JetStreamBus, stream), index, batch=batch)


async def test_catch_up_reads_in_batches_until_the_end(index: AuditIndex) -> None:
    stream = MemoryStream(story())
    assert await follower(stream, index, batch=4).catch_up() == len(story())
    assert stream.reads == 4  # 4 + 4 + 4 + 1
    assert index.last_seq() == len(story())
    stream.append(rejected("nacka", "expired", T0 + 10**6))
    assert await follower(stream, index, batch=4).catch_up() == 1
    assert index.events(after_seq=len(story()))[0]["reason"] == "expired"


async def test_catch_up_after_old_events_aged_out(index: AuditIndex) -> None:
    stream = MemoryStream(story()[5:], first=6)
    assert await follower(stream, index).catch_up() == len(story()) - 5
    assert seqs(index.events())[0] == 6


async def test_a_replaced_stream_rebuilds_the_index(index: AuditIndex) -> None:
    await follower(MemoryStream(story()), index).catch_up()
    shorter = MemoryStream([rejected("solna", "expired", T0)])
    assert await follower(shorter, index).catch_up() == 1
    assert [e["reason"] for e in index.events()] == ["expired"]
    # Same length, other content: detected by the hash of the last event.
    other = MemoryStream([rejected("nacka", "replay", T0)])
    assert await follower(other, index).catch_up() == 1
    assert [e["actor"] for e in index.events()] == ["nacka"]


async def test_run_survives_outages_and_bad_data(
    index: AuditIndex, caplog: pytest.LogCaptureFixture
) -> None:
    stream = MemoryStream([b"garbage", story()[0]])
    stream.down = True
    stop = asyncio.Event()
    task = asyncio.create_task(follower(stream, index).run(stop, interval=0.01))
    with caplog.at_level(logging.WARNING, logger="ssr.audit_index"):
        await asyncio.sleep(0.05)
        assert index.last_seq() == 0
        stream.down = False
        await wait_until(lambda: index.last_seq() == 2, "the follower to catch up", timeout=5)
        stream.append(b"\xff" * 10)
        stream.append(story()[1])
        await wait_until(lambda: index.last_seq() == 4, "the follower to go on", timeout=5)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert [e["kind"] for e in index.events()] == [UNREADABLE, "accepted", UNREADABLE, "receipt"]
    warnings = [r for r in caplog.records if "NATS unavailable" in r.getMessage()]
    assert len(warnings) == 1  # said once, not every 10 ms


# --- against a real nats-server and the real broker ---------------------------------------------


async def test_follower_indexes_real_broker_traffic(
    running_broker: Service, actors: Actors, tmp_path: Path
) -> None:
    net = await actors.start()
    start = now_ms() - 1000
    to = ["solna", "sos-alarm", "stockholm"]
    first, first_data = await net.send("nacka", to, text="Lägesbild 1")
    _, second_data = await net.send("nacka", ["stockholm"], label=SEKRETESS)
    refused = net.envelope("nacka", ["stockholm", "stockholms-hamnar"], label=SEKRETESS)
    await net.submit("nacka", refused)
    await net.accepted_and_delivered("nacka", first_data)
    await net.accepted_and_delivered("nacka", second_data)
    await net.verdict("nacka", refused)
    assert running_broker.bus is not None
    js = running_broker.bus.js
    # The broker notifies the sender before it writes the audit event: wait for those too.
    assert len(await wait_for_audit(js, "accepted", lambda e: e["actor"] == "nacka", count=2)) == 2
    assert len(await wait_for_audit(js, "rejected", lambda e: e["actor"] == "nacka")) == 1
    receipts = await wait_for_audit(js, "receipt", lambda e: e["actor"] in to, count=len(to) + 1)
    assert len(receipts) == len(to) + 1

    index = AuditIndex(tmp_path / "index" / "audit.sqlite")
    try:
        added = await AuditFollower(running_broker.bus, index, batch=3).catch_up()
        assert added == index.last_seq() >= 7  # 2 accepted, 4 receipts, 1 rejected, ...
        end = now_ms() + 1000

        trace = index.message_trace(first.id)
        assert trace is not None
        assert (trace["sender"], trace["recipients"]) == ("nacka", to)
        assert trace["label"]["classification"] == INTERN.classification
        assert trace["status"] == "actual"
        assert trace["priority"] == "routine"
        assert start <= trace["accepted_at"] <= end
        assert all(marks["delivered"] is not None for marks in trace["receipts"].values())
        assert set(trace["receipts"]) == set(to)
        assert trace["refusals"] == []
        assert trace["escalated"] == []

        nacka = index.actor_traffic("nacka", start, end)
        assert nacka["sent"]["total"] == 2
        assert nacka["sent"]["by_classification"] == {"INTERN": 1, "SEKRETESS": 1}
        assert nacka["refused"]["by_reason"] == {"recipient_not_cleared": 1}
        [refusal] = nacka["refused"]["recent"]
        assert refusal["recipients"] == ["stockholms-hamnar"]

        stockholm = index.actor_traffic("stockholm", start, end)
        assert stockholm["received"]["total"] == 2
        assert stockholm["receipts_signed"]["delivered"] == 2
        hamnar = index.actor_traffic("stockholms-hamnar", start, end)
        assert hamnar["named_in_refusals"]["by_reason"] == {"recipient_not_cleared": 1}
        assert hamnar["received"]["total"] == 0

        # Caught up to the end of the stream (which other writers may extend meanwhile).
        _, last = await running_broker.bus.stream_bounds(subjects.AUDIT_STREAM)
        await AuditFollower(running_broker.bus, index).catch_up()
        assert index.last_seq() >= last
        assert seqs(index.events(limit=MAX_LIMIT)) == list(range(1, index.last_seq() + 1))
    finally:
        index.close()
