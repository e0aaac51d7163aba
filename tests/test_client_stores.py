"""The client's on-disk stores (outbox, seen ids) against real SQLite files.

Crash safety is tested with a child process killed by SIGKILL while it
enqueues: every enqueue that returned must survive, exactly once, in order.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import clients._inbox as inbox_module
import clients._outbox as outbox_module
from clients._errors import ClientError, OutboxError, OutboxFull, StoreError
from clients._inbox import Inbox
from clients._outbox import MAX_ITEM_BYTES, Outbox, OutboxItem

REPO = Path(__file__).resolve().parents[1]
FAR_FUTURE = 4_000_000_000


@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    return tmp_path / "nacka.outbox"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- error tree -------------------------------------------------------------


def test_error_tree() -> None:
    assert issubclass(OutboxFull, OutboxError)
    assert issubclass(OutboxError, ClientError)
    assert issubclass(StoreError, ClientError)
    assert OutboxFull("x").code == "outbox_full"
    assert OutboxError("x", code="in_use").code == "in_use"
    assert OutboxError("boom").message == "boom"


# --- outbox -----------------------------------------------------------------


def test_enqueue_keeps_sequence_order(outbox_path: Path) -> None:
    with Outbox(outbox_path, clock=lambda: 1000) as outbox:
        seqs = [outbox.enqueue(f"m{i}", "ssr.in.nacka", b"env%d" % i, FAR_FUTURE) for i in range(5)]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == 5
        items = outbox.pending()
        assert [item.message_id for item in items] == [f"m{i}" for i in range(5)]
        assert items[0] == OutboxItem(seqs[0], "m0", "ssr.in.nacka", b"env0", FAR_FUTURE, 1000)
        assert [item.message_id for item in outbox.pending(limit=2)] == ["m0", "m1"]
        assert len(outbox) == 5


def test_enqueue_is_idempotent_per_message_id(outbox_path: Path) -> None:
    with Outbox(outbox_path) as outbox:
        first = outbox.enqueue("m1", "s", b"a", FAR_FUTURE)
        outbox.enqueue("m2", "s", b"b", FAR_FUTURE)
        assert outbox.enqueue("m1", "s", b"a", FAR_FUTURE) == first
        assert len(outbox) == 2
        assert [item.message_id for item in outbox.pending()] == ["m1", "m2"]


def test_mark_sent_removes_and_sequence_never_goes_back(outbox_path: Path) -> None:
    with Outbox(outbox_path) as outbox:
        outbox.enqueue("m1", "s", b"a", FAR_FUTURE)
        second = outbox.enqueue("m2", "s", b"b", FAR_FUTURE)
        outbox.mark_sent("m2")
        outbox.mark_sent("m2")  # a repeated ack is harmless
        outbox.mark_sent("unknown")
        assert [item.message_id for item in outbox.pending()] == ["m1"]
        assert len(outbox) == 1
        # AUTOINCREMENT: the newest sequence is not reused after it was sent.
        assert outbox.enqueue("m3", "s", b"c", FAR_FUTURE) > second


def test_survives_reopen_with_order_kept(outbox_path: Path) -> None:
    with Outbox(outbox_path) as outbox:
        seqs = [outbox.enqueue(f"m{i}", "s", bytes([i]), FAR_FUTURE) for i in range(10)]
        outbox.mark_sent("m3")
    with Outbox(outbox_path) as outbox:
        assert len(outbox) == 9
        items = outbox.pending()
        assert [item.sequence for item in items] == [s for i, s in enumerate(seqs) if i != 3]
        assert items[0].data == b"\x00"
        assert outbox.enqueue("m10", "s", b"x", FAR_FUTURE) > seqs[-1]


def test_drop_expired(outbox_path: Path) -> None:
    with Outbox(outbox_path) as outbox:
        outbox.enqueue("late", "s", b"", 200)
        outbox.enqueue("keep", "s", b"", 300)
        outbox.enqueue("early", "s", b"", 100)
        assert outbox.drop_expired(now=99) == []
        assert outbox.drop_expired(now=200) == ["late", "early"]  # expires <= now, sequence order
        assert [item.message_id for item in outbox.pending()] == ["keep"]
        assert len(outbox) == 1


def test_item_size_bound(outbox_path: Path) -> None:
    with Outbox(outbox_path) as outbox:
        outbox.enqueue("max", "s", b"\x00" * MAX_ITEM_BYTES, FAR_FUTURE)
        with pytest.raises(OutboxError) as info:
            outbox.enqueue("big", "s", b"\x00" * (MAX_ITEM_BYTES + 1), FAR_FUTURE)
        assert info.value.code == "item_too_large"
        assert not isinstance(info.value, OutboxFull)
        assert len(outbox) == 1


def test_item_count_bound(outbox_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox_module, "MAX_ITEMS", 3)
    with Outbox(outbox_path) as outbox:
        for i in range(3):
            outbox.enqueue(f"m{i}", "s", b"", FAR_FUTURE)
        assert outbox.enqueue("m1", "s", b"", FAR_FUTURE) > 0  # idempotent even when full
        with pytest.raises(OutboxFull):
            outbox.enqueue("m3", "s", b"", FAR_FUTURE)
        outbox.mark_sent("m0")
        outbox.enqueue("m3", "s", b"", FAR_FUTURE)
    with Outbox(outbox_path) as outbox, pytest.raises(OutboxFull):  # count restored on open
        outbox.enqueue("m4", "s", b"", FAR_FUTURE)


@pytest.mark.parametrize(
    ("message_id", "subject", "data", "expires"),
    [
        ("", "s", b"", 1),
        ("x" * 257, "s", b"", 1),
        ("m", "", b"", 1),
        ("m", "s", "text", 1),
        ("m", "s", b"", "1"),
        ("m", "s", b"", True),
    ],
)
def test_malformed_items_are_refused(
    outbox_path: Path, message_id: object, subject: object, data: object, expires: object
) -> None:
    with Outbox(outbox_path) as outbox:
        with pytest.raises(OutboxError):
            outbox.enqueue(message_id, subject, data, expires)  # type: ignore[arg-type]
        with pytest.raises(OutboxError):
            outbox.pending(limit=0)
        assert len(outbox) == 0


def test_closed_outbox_raises(outbox_path: Path) -> None:
    outbox = Outbox(outbox_path)
    outbox.close()
    outbox.close()
    with pytest.raises(OutboxError) as info:
        outbox.enqueue("m", "s", b"", FAR_FUTURE)
    assert info.value.code == "closed"
    with pytest.raises(OutboxError):
        len(outbox)


def test_file_mode_is_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with Outbox(tmp_path / "o") as outbox, Inbox(tmp_path / "s") as seen:
            outbox.enqueue("m", "s", b"", FAR_FUTURE)
            seen.add("m", FAR_FUTURE)
            modes = {p.name: _mode(p) for p in tmp_path.iterdir()}
    finally:
        os.umask(old)
    assert set(modes) >= {"o", "o-wal", "s", "s-wal"}
    assert modes == dict.fromkeys(modes, 0o600)


def test_garbage_file_is_refused_untouched(outbox_path: Path) -> None:
    garbage = b"this is not a database " * 200
    outbox_path.write_bytes(garbage)
    with pytest.raises(OutboxError) as info:
        Outbox(outbox_path)
    assert info.value.code == "not_a_store"
    assert outbox_path.read_bytes() == garbage


def test_foreign_sqlite_file_is_refused_untouched(outbox_path: Path) -> None:
    conn = sqlite3.connect(outbox_path)
    conn.execute("CREATE TABLE contacts (name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(OutboxError, match="not an SSR outbox") as info:
        Outbox(outbox_path)
    assert info.value.code == "not_a_store"
    conn = sqlite3.connect(outbox_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not converted to WAL
    conn.close()


def test_inbox_is_not_an_outbox(tmp_path: Path) -> None:
    Inbox(tmp_path / "f").close()
    with pytest.raises(OutboxError, match="not an SSR outbox") as info:
        Outbox(tmp_path / "f")
    assert info.value.code == "not_a_store"
    Outbox(tmp_path / "g").close()
    with pytest.raises(StoreError, match="not an SSR inbox"):
        Inbox(tmp_path / "g")


@pytest.mark.parametrize("store", [Outbox, Inbox])
def test_unknown_schema_version_is_refused(tmp_path: Path, store: type[Outbox | Inbox]) -> None:
    path = tmp_path / "f"
    store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=2")
    conn.close()
    with pytest.raises(ClientError, match="schema version 2") as info:
        store(path)
    assert info.value.code == "unsupported_version"
    assert isinstance(info.value, store.error)


def test_second_owner_is_refused(outbox_path: Path) -> None:
    with Outbox(outbox_path) as outbox:
        outbox.enqueue("m", "s", b"", FAR_FUTURE)
        # Refused in this process first: a failed open must not drop the owner's
        # POSIX lock (closing any fd of the file would), as the child then shows.
        with pytest.raises(OutboxError) as info:
            Outbox(outbox_path)
        assert info.value.code == "in_use"
        script = (
            "import sys\nfrom clients._outbox import Outbox\n"
            "try:\n    Outbox(sys.argv[1])\nexcept Exception as exc:\n    print(exc.code)\n"
        )
        child = subprocess.run(
            [sys.executable, "-c", script, str(outbox_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert child.stdout.strip() == "in_use"
    Outbox(outbox_path).close()  # free again once the owner closed it


def test_concurrent_enqueues_from_threads(outbox_path: Path) -> None:
    threads_n, per_thread = 4, 200
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    with Outbox(outbox_path) as outbox:
        barrier = threading.Barrier(threads_n)

        def work(t: int) -> None:
            try:
                barrier.wait()
                results[t] = [
                    outbox.enqueue(f"t{t}-{i}", "s", b"x", FAR_FUTURE) for i in range(per_thread)
                ]
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        all_seqs = [s for seqs in results.values() for s in seqs]
        assert len(all_seqs) == len(set(all_seqs)) == threads_n * per_thread
        for seqs in results.values():
            assert seqs == sorted(seqs)  # each sender's order is kept
        items = outbox.pending(limit=threads_n * per_thread)
        assert len(outbox) == len(items) == threads_n * per_thread
        assert [item.sequence for item in items] == sorted(all_seqs)
        by_id = {item.message_id: item.sequence for item in items}
        for t, seqs in results.items():
            assert [by_id[f"t{t}-{i}"] for i in range(per_thread)] == seqs


_CHILD = """
import sys
from clients._outbox import Outbox
outbox = Outbox(sys.argv[1])
for i in range(500):
    seq = outbox.enqueue(f"m{i:03d}", "ssr.in.nacka", b"envelope-%d" % i, 4_000_000_000)
    print(i, seq, flush=True)
"""


def test_sigkill_while_enqueueing_loses_nothing_that_returned(outbox_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(outbox_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    returned: dict[str, int] = {}
    try:
        for line in child.stdout:
            i, seq = map(int, line.split())
            returned[f"m{i:03d}"] = seq
            if len(returned) == 150:
                os.kill(child.pid, signal.SIGKILL)
                break
        returned.update(
            {f"m{int(a):03d}": int(b) for a, b in (ln.split() for ln in child.stdout if ln.strip())}
        )
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert 150 <= len(returned) < 500, "the child should die mid-way"

    with Outbox(outbox_path) as outbox:
        items = outbox.pending(limit=1000)
        ids = [item.message_id for item in items]
        assert len(ids) == len(set(ids)) == len(outbox)
        stored = {item.message_id: item.sequence for item in items}
        for message_id, seq in returned.items():
            assert stored[message_id] == seq
        assert ids == sorted(ids)  # enqueue order == sequence order
        # At most the one in flight at the kill was committed without being reported.
        assert len(ids) - len(returned) <= 1
        # The restarted client re-enqueues everything: nothing is duplicated.
        for i in range(500):
            outbox.enqueue(f"m{i:03d}", "ssr.in.nacka", b"envelope-%d" % i, FAR_FUTURE)
        after = outbox.pending(limit=1000)
        assert [item.message_id for item in after] == [f"m{i:03d}" for i in range(500)]
        assert all(stored[item.message_id] == item.sequence for item in after[: len(stored)])


# --- inbox -------------------------------------------------------------


def test_seen_add_twice_purge_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nacka.seen"
    with Inbox(path, leeway=10) as seen:
        assert seen.add("a", 100) is True
        assert seen.add("a", 100) is False
        assert seen.add("b", 200) is True
        assert "a" in seen
        assert "c" not in seen
        assert 5 not in seen
        assert seen.seen_count == 2
        assert len(seen) == 0
    with Inbox(path, leeway=10) as seen:
        assert "a" in seen
        assert seen.add("a", 100) is False
        assert seen.purge(now=109) == 0  # kept until expires + leeway
        assert seen.purge(now=110) == 1
        assert "a" not in seen
        assert "b" in seen
        assert seen.seen_count == 1
    with Inbox(path) as seen:
        assert "a" not in seen
        assert seen.seen_count == 1


def test_seen_bound_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inbox_module, "MAX_SEEN", 2)
    with Inbox(tmp_path / "s", leeway=0) as seen:
        seen.add("a", 100)
        seen.add("b", 200)
        assert seen.add("a", 100) is False
        with pytest.raises(StoreError) as info:
            seen.add("c", 300)
        assert info.value.code == "full"
        assert seen.purge(now=100) == 1
        assert seen.add("c", 300) is True


def test_seen_refuses_garbage_and_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"\x01" * 4096)
    with pytest.raises(StoreError) as info:
        Inbox(path)
    assert info.value.code == "not_a_store"
    with pytest.raises(StoreError):
        Inbox(tmp_path / "t", leeway=-1)
    with Inbox(tmp_path / "u") as seen:
        with pytest.raises(StoreError):
            seen.add("", 1)
        with pytest.raises(StoreError):
            seen.add("m", "1")  # type: ignore[arg-type]


def test_inbox_admit_take_in_order_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nacka.inbox"
    with Inbox(path, leeway=0) as inbox:
        assert inbox.admit("m1", 100, b"one", received=1)
        assert inbox.admit("m2", 100, b"two", received=2)
        assert not inbox.admit("m1", 100, b"other", received=3)  # seen: nothing queued
        assert len(inbox) == 2
    with Inbox(path, leeway=0) as inbox:
        assert [(i.message_id, i.data) for i in inbox.waiting()] == [
            ("m1", b"one"),
            ("m2", b"two"),
        ]
        inbox.take("m1")
        assert [i.message_id for i in inbox.waiting()] == ["m2"]
        assert "m1" in inbox  # taken, still seen
        assert not inbox.admit("m1", 100, b"one", received=4)
        # An expired id that still waits is kept: forgetting it would allow a duplicate.
        assert inbox.purge(now=1000) == 1
        assert "m1" not in inbox
        assert "m2" in inbox
        inbox.take("m2")
        assert inbox.purge(now=1000) == 1
        assert len(inbox) == 0
        assert inbox.seen_count == 0


def test_inbox_waiting_bound_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inbox_module, "MAX_WAITING", 1)
    with Inbox(tmp_path / "i") as inbox:
        inbox.admit("a", 100, b"x", received=1)
        with pytest.raises(StoreError) as info:
            inbox.admit("b", 100, b"y", received=1)
        assert info.value.code == "full"
        assert "b" not in inbox  # the failed admit recorded nothing
        with pytest.raises(StoreError):
            inbox.admit("c", 100, b"", received=1)
        with pytest.raises(StoreError):
            inbox.waiting(limit=0)
