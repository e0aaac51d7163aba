"""The ingest state on disk: deduplication, references, open and expired items, bounds."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import clients.adapters.state as state_module
from clients._errors import ClientError, StoreError
from clients._outbox import Outbox
from clients.adapters.model import MsgType, SourceAlert
from clients.adapters.state import (
    MAX_ITEM_ID_CHARS,
    MAX_SOURCE_CHARS,
    MAX_VERSION_CHARS,
    IngestState,
    Sent,
)
from tests.conftest import NOW

REPO = Path(__file__).resolve().parents[1]
M = [f"{i:032x}" for i in range(10)]  # message ids
H = [f"{i:064x}" for i in range(10)]  # header hashes


def alert(item_id: Any = "item-1", version: Any = "v1", **overrides: Any) -> SourceAlert:
    fields: dict[str, Any] = {
        "format": "trafikverket",
        "item_id": item_id,
        "version": version,
        "msg_type": MsgType.ALERT,
        "sent": NOW,
        "event": "Olycka",
    }
    fields.update(overrides)
    return SourceAlert(**fields)


class Clock:
    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ingest.state"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(path: Path, clock: Clock) -> Any:
    with IngestState(path, clock=clock) as opened:
        yield opened


def test_record_then_seen_and_latest(state: IngestState) -> None:
    first = alert(expires=NOW + 3_600_000)
    assert not state.seen("trafikverket", first)
    assert state.latest("trafikverket", "item-1") is None
    state.record("trafikverket", first, M[1], H[1])
    assert state.seen("trafikverket", first)
    assert not state.seen("trafikverket", alert(version="v2"))
    assert not state.seen("datex", first)  # sources are separate
    assert not state.seen("trafikverket", alert(item_id="item-2"))
    assert state.latest("trafikverket", "item-1") == Sent(
        "trafikverket", "item-1", "v1", M[1], H[1], False, NOW + 3_600_000
    )
    assert state.latest("datex", "item-1") is None
    assert len(state) == 1


def test_record_is_idempotent_first_wins(state: IngestState) -> None:
    state.record("s", alert(), M[1], H[1])
    state.record("s", alert(), M[2], H[2])
    assert state.latest("s", "item-1").message_id == M[1]  # type: ignore[union-attr]
    assert len(state) == 1


def test_versions_chain_latest(state: IngestState) -> None:
    state.record("s", alert(version="v1"), M[1], H[1])
    state.record("s", alert(version="v2", msg_type=MsgType.UPDATE), M[2], H[2])
    latest = state.latest("s", "item-1")
    assert latest is not None
    assert (latest.version, latest.message_id, latest.header_hash) == ("v2", M[2], H[2])
    assert [s.version for s in state.open_items("s")] == ["v2"]
    assert state.seen("s", alert(version="v1"))  # an older version reappearing is not resent


def test_skip_counts_as_seen_but_is_no_envelope(state: IngestState) -> None:
    state.skip("s", alert(version="v1"), "unrouted")
    assert state.seen("s", alert(version="v1"))
    assert state.latest("s", "item-1") is None
    assert state.open_items("s") == []
    state.record("s", alert(version="v1"), M[1], H[1])  # first wins: still a skip
    assert state.latest("s", "item-1") is None
    state.record("s", alert(version="v2"), M[2], H[2])
    state.skip("s", alert(version="v3"), "unrouted")
    latest = state.latest("s", "item-1")
    assert latest is not None
    assert latest.version == "v2"
    assert [s.version for s in state.open_items("s")] == ["v2"]
    state.skip("s", alert(version="v4"), "x" * 10_000)  # long reasons are cut, not refused
    assert len(state) == 4


def test_cancel_closes_the_item(state: IngestState) -> None:
    state.record("s", alert("a"), M[1], H[1])
    state.record("s", alert("b"), M[2], H[2])
    state.record("s", alert("a", "v2", msg_type=MsgType.CANCEL), M[3], H[3])
    assert [s.item_id for s in state.open_items("s")] == ["b"]
    cancelled = state.latest("s", "a")
    assert cancelled is not None
    assert cancelled.cancelled
    assert cancelled.message_id == M[3]
    # The item may come back: a new envelope opens it again.
    state.record("s", alert("a", "v3"), M[4], H[4])
    assert [s.item_id for s in state.open_items("s")] == ["b", "a"]


def test_open_items_per_source_oldest_first(state: IngestState) -> None:
    for i, item in enumerate(["x", "y", "z"]):
        state.record("one", alert(item), M[i], H[i])
    state.record("two", alert("x"), M[5], H[5])
    assert [s.item_id for s in state.open_items("one")] == ["x", "y", "z"]
    assert [(s.source, s.message_id) for s in state.open_items("two")] == [("two", M[5])]
    assert state.open_items("three") == []


def test_expired(state: IngestState) -> None:
    state.record("s", alert("early", expires=NOW + 1000), M[1], H[1])
    state.record("s", alert("late", expires=NOW + 5000), M[2], H[2])
    state.record("s", alert("never"), M[3], H[3])
    state.record("s", alert("gone", expires=NOW), M[4], H[4])
    state.record("s", alert("gone", "v2", msg_type=MsgType.CANCEL, expires=NOW), M[5], H[5])
    state.record("other", alert("early", expires=NOW), M[6], H[6])
    assert state.expired("s", NOW) == []
    assert [s.item_id for s in state.expired("s", NOW + 1000)] == ["early"]  # at expiry
    assert [s.item_id for s in state.expired("s", NOW + 10**9)] == ["early", "late"]
    # An update with a later expiry moves it.
    state.record("s", alert("early", "v2", expires=NOW + 10**10), M[7], H[7])
    assert [s.item_id for s in state.expired("s", NOW + 10**9)] == ["late"]


def test_purge_keeps_what_is_still_needed(state: IngestState, clock: Clock) -> None:
    state.record("s", alert("open", "v1"), M[1], H[1])  # superseded below
    state.record("s", alert("open", "v2"), M[2], H[2])  # latest of an open item: kept
    state.record("s", alert("closed", "v1"), M[3], H[3])
    state.record("s", alert("closed", "v2", msg_type=MsgType.CANCEL), M[4], H[4])
    state.skip("s", alert("unrouted"), "unrouted")
    clock.now = NOW + 10_000
    state.skip("s", alert("recent"), "unrouted")
    assert state.purge(NOW) == 0  # strictly older than
    assert state.purge(NOW + 1) == 4
    assert len(state) == 2
    assert state.seen("s", alert("open", "v2"))
    assert state.latest("s", "open") is not None
    assert not state.seen("s", alert("open", "v1"))
    assert state.latest("s", "closed") is None
    assert not state.seen("s", alert("unrouted"))
    assert state.seen("s", alert("recent"))
    assert state.purge(NOW + 1) == 0


def test_survives_restart(path: Path) -> None:
    with IngestState(path) as state:
        state.record("s", alert("a", expires=NOW), M[1], H[1])
        state.record("s", alert("b"), M[2], H[2])
        state.record("s", alert("b", "v2", msg_type=MsgType.CANCEL), M[3], H[3])
        state.skip("s", alert("c"), "unrouted")
    with IngestState(path) as state:
        assert len(state) == 4
        assert state.seen("s", alert("a"))
        assert state.seen("s", alert("c"))
        assert [s.item_id for s in state.open_items("s")] == ["a"]
        assert [s.item_id for s in state.expired("s", NOW)] == ["a"]
        latest = state.latest("s", "b")
        assert latest is not None
        assert latest.cancelled


def test_file_mode_is_0600(path: Path) -> None:
    old = os.umask(0o022)
    try:
        with IngestState(path) as state:
            state.record("s", alert(), M[1], H[1])
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
    finally:
        os.umask(old)
    assert set(modes) >= {"ingest.state", "ingest.state-wal"}
    assert modes == dict.fromkeys(modes, 0o600)


def test_row_bound(state: IngestState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "MAX_ROWS", 3)
    state.record("s", alert("a"), M[1], H[1])
    state.skip("s", alert("b"), "unrouted")
    state.record("s", alert("c"), M[2], H[2])
    state.record("s", alert("c"), M[2], H[2])  # already there: no new row, no error
    with pytest.raises(StoreError) as info:
        state.record("s", alert("d"), M[3], H[3])
    assert info.value.code == "state_full"
    with pytest.raises(StoreError):
        state.skip("s", alert("d"), "unrouted")
    assert not state.seen("s", alert("d"))
    assert len(state) == 3


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("seen", ("s", alert("x" * (MAX_ITEM_ID_CHARS + 1)))),
        ("seen", ("s", alert(version="v" * (MAX_VERSION_CHARS + 1)))),
        ("seen", ("s" * (MAX_SOURCE_CHARS + 1), alert())),
        ("seen", ("", alert())),
        ("seen", ("s", alert(""))),
        ("seen", (None, alert())),
        ("seen", ("s", {"item_id": "a", "version": "v"})),
        ("seen", ("s", alert(item_id=12))),
        ("seen", ("s", alert(version=None))),
        ("seen", ("s", alert("\ud800"))),  # a lone surrogate, as JSON can carry
        ("latest", ("s", "x" * (MAX_ITEM_ID_CHARS + 1))),
        ("latest", ("s", b"item-1")),
        ("record", ("s", alert(), "A" * 32, H[1])),
        ("record", ("s", alert(), M[1][:-1], H[1])),
        ("record", ("s", alert(), M[1], "F" * 64)),
        ("record", ("s", alert(), None, H[1])),
        ("record", ("s", alert(), M[1], 7)),
        ("record", ("s", alert(expires="tomorrow"), M[1], H[1])),
        ("record", ("s", alert(expires=True), M[1], H[1])),
        ("record", ("s", alert(expires=-1), M[1], H[1])),
        ("record", ("s", alert(expires=2**63), M[1], H[1])),
        ("record", ("s", alert("x" * (MAX_ITEM_ID_CHARS + 1)), M[1], H[1])),
        ("skip", ("s", alert(), None)),
        ("skip", ("s", alert(), "\udfff")),
        ("open_items", (["s"],)),
        ("expired", ("s", "now")),
        ("expired", ("s", True)),
        ("expired", ("s", 1.5)),
        ("purge", (-1,)),
        ("purge", (None,)),
    ],
)
def test_hostile_inputs_are_refused(state: IngestState, call: str, args: tuple[Any, ...]) -> None:
    with pytest.raises(StoreError) as info:
        getattr(state, call)(*args)
    assert info.value.code == "invalid_item"
    assert isinstance(info.value, ClientError)
    assert len(state) == 0


def test_odd_but_valid_text_round_trips(state: IngestState) -> None:
    odd = ["a\x00b", "ÅÄÖ 🚒", "'; DROP TABLE item; --", "x" * MAX_ITEM_ID_CHARS, " "]
    for i, item_id in enumerate(odd):
        state.record("s", alert(item_id, "v" * MAX_VERSION_CHARS), M[i], H[i])
    assert [s.item_id for s in state.open_items("s")] == odd
    for item_id in odd:
        assert state.seen("s", alert(item_id, "v" * MAX_VERSION_CHARS))
        assert state.latest("s", item_id) is not None


def test_bad_clock_is_refused_and_nothing_stored(path: Path) -> None:
    with IngestState(path, clock=lambda: -5) as state:
        with pytest.raises(StoreError) as info:
            state.record("s", alert(), M[1], H[1])
        assert info.value.code == "invalid_item"
        assert not state.seen("s", alert())
        assert state.latest("s", "item-1") is None
        assert len(state) == 0


def test_second_owner_is_refused(path: Path) -> None:
    with IngestState(path) as state:
        state.record("s", alert(), M[1], H[1])
        with pytest.raises(StoreError) as info:
            IngestState(path)
        assert info.value.code == "in_use"
        script = (
            "import sys\nfrom clients.adapters.state import IngestState\n"
            "try:\n    IngestState(sys.argv[1])\nexcept Exception as exc:\n    print(exc.code)\n"
        )
        child = subprocess.run(
            [sys.executable, "-c", script, str(path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert child.stdout.strip() == "in_use"
        assert state.seen("s", alert())  # the owner carries on
    IngestState(path).close()  # free again once the owner closed it


def test_other_files_are_refused_untouched(tmp_path: Path) -> None:
    Outbox(tmp_path / "outbox").close()
    with pytest.raises(StoreError, match="not an SSR ingest state") as info:
        IngestState(tmp_path / "outbox")
    assert info.value.code == "not_a_store"
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a database " * 300)
    with pytest.raises(StoreError) as info:
        IngestState(garbage)
    assert info.value.code == "not_a_store"
    assert garbage.read_bytes() == b"not a database " * 300


def test_unknown_schema_version_is_refused(path: Path) -> None:
    IngestState(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=2")
    conn.close()
    with pytest.raises(StoreError, match="schema version 2") as info:
        IngestState(path)
    assert info.value.code == "unsupported_version"


def test_closed_state_raises(path: Path) -> None:
    state = IngestState(path)
    state.close()
    state.close()
    with pytest.raises(StoreError) as info:
        state.seen("s", alert())
    assert info.value.code == "closed"
    with pytest.raises(StoreError):
        state.record("s", alert(), M[1], H[1])
    with pytest.raises(StoreError):
        len(state)
