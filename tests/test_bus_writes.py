"""``JetStreamBus`` writes against a real nats-server: stream publishes and KV writes go
out with a reply subject under one inbox subscription (``broker.bus._Acks``) and resolve a
future per token. Sequences and dedupe, KV create / compare-and-set / put / re-create after
a delete, the mapping of refusals (no stream, too large, a lost compare-and-set, a full
per-subject backlog), a publish timing out against a frozen server, every publish in flight
failed at once when the connection drops, and the same bus working again afterwards.

Every wait is bounded; only the nats-server process the fixture started is signalled
(``EmbeddedNats.pause/resume/kill`` signal it through its own pidfd or pid).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import nats.js.errors
import pytest
import pytest_asyncio
from nats.js import api

import broker.bus
from broker.bus import (
    JetStreamBus,
    KvConflict,
    PublishRefused,
    SubmitBacklogFull,
)
from broker.embedded import EmbeddedNats, EmbeddedState
from broker.errors import NatsUnavailable

from . import nats_fixtures
from .nats_fixtures import NatsServerFactory

nats_server = nats_fixtures.nats_server
nats_server_factory = nats_fixtures.nats_server_factory

STREAM = "WRITES"
BUCKET = "WRITESKV"
WAIT = 10.0  # seconds: the bound on any single wait in these tests


async def _quiet(exc: Exception) -> None:
    """Fault tests drop the connection on purpose; nats-py would print each attempt."""


async def open_bus(url: str) -> JetStreamBus:
    """A bus as the broker connects it (``JetStreamBus.connect``: its disconnected callback
    wires the drop watch), with a stream on ``writes.>`` and a KV bucket bound."""
    bus = await JetStreamBus.connect((url,), name="bus-writes", options={"error_cb": _quiet})
    with contextlib.suppress(nats.js.errors.BadRequestError):  # already made (a reconnect)
        await bus.js.add_stream(name=STREAM, subjects=["writes.>"], storage=api.StorageType.FILE)
    try:
        await bus.js.key_value(BUCKET)
    except nats.js.errors.BucketNotFoundError:
        await bus.js.create_key_value(api.KeyValueConfig(bucket=BUCKET, history=1))
    await bus.bind_buckets(BUCKET)
    return bus


@pytest_asyncio.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[JetStreamBus]:
    bus = await open_bus(nats_server.url)
    try:
        yield bus
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(bus.close(), 5.0)


async def stream_count(bus: JetStreamBus, stream: str = STREAM) -> int:
    info = await asyncio.wait_for(bus.js.stream_info(stream), WAIT)
    return int(info.state.messages)


def in_flight(bus: JetStreamBus) -> int:
    """Publishes the ack path still waits for (each must be cleaned up, however it ends)."""
    return len(bus._acks._waiting)


# --- publish ---------------------------------------------------------------------------


async def test_publish_returns_increasing_sequences_and_dedupes_by_msg_id(
    bus: JetStreamBus,
) -> None:
    first = await bus.publish("writes.a", b"one", msg_id="m1")
    second = await bus.publish("writes.b", b"two", msg_id="m2")
    third = await bus.publish("writes.a", b"three", msg_id="m3")
    assert (first, second, third) == (1, 2, 3)

    # The same Nats-Msg-Id within the duplicate window: the first one's sequence, no new
    # message (even with other bytes on another subject).
    again = await bus.publish("writes.c", b"something else", msg_id="m2")
    assert again == second
    assert await stream_count(bus) == 3
    stored = await bus.js.get_msg(STREAM, seq=second)
    assert (stored.subject, stored.data) == ("writes.b", b"two")

    assert await bus.publish("writes.a", b"four", msg_id="m4") == 4
    assert await stream_count(bus) == 4
    assert in_flight(bus) == 0


async def test_many_concurrent_publishes_get_distinct_sequences(bus: JetStreamBus) -> None:
    count = 500
    started = time.monotonic()
    sequences = await asyncio.wait_for(
        asyncio.gather(
            *(
                bus.publish(f"writes.{i % 7}", str(i).encode(), msg_id=f"many.{i}")
                for i in range(count)
            )
        ),
        WAIT,
    )
    assert sorted(sequences) == list(range(1, count + 1))
    assert await stream_count(bus) == count
    # Each future got its own ack: the message stored at a publish's sequence is its own.
    for i in (0, 1, 137, 250, count - 1):
        stored = await bus.js.get_msg(STREAM, seq=sequences[i])
        assert (stored.subject, stored.data) == (f"writes.{i % 7}", str(i).encode())
    assert in_flight(bus) == 0
    assert time.monotonic() - started < WAIT


async def test_publish_many_returns_each_sequence_in_order_and_dedupes(bus: JetStreamBus) -> None:
    items = [(f"writes.{i % 3}", str(i).encode(), f"batch.{i}") for i in range(40)]
    sequences = await asyncio.wait_for(bus.publish_many(items), WAIT)
    assert sequences == list(range(1, 41))
    for i in (0, 17, 39):
        stored = await bus.js.get_msg(STREAM, seq=sequences[i])
        assert (stored.subject, stored.data) == (items[i][0], items[i][1])
    # The same batch again (a resumed fan-out): every publish is a duplicate, nothing stored.
    assert await asyncio.wait_for(bus.publish_many(items), WAIT) == sequences
    assert await stream_count(bus) == 40
    assert in_flight(bus) == 0


async def test_publish_many_with_one_refused_raises_and_keeps_the_others(
    bus: JetStreamBus,
) -> None:
    items = [("writes.a", b"1", "r1"), ("nostream.here", b"2", "r2"), ("writes.b", b"3", "r3")]
    with pytest.raises(NatsUnavailable):
        await asyncio.wait_for(bus.publish_many(items), WAIT)
    assert await stream_count(bus) == 2  # the two a stream binds are stored
    assert in_flight(bus) == 0


async def test_publish_to_a_subject_no_stream_binds_fails_at_once(bus: JetStreamBus) -> None:
    started = time.monotonic()
    with pytest.raises(NatsUnavailable) as caught:
        await bus.publish("nostream.here", b"lost", msg_id="n1")
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"no responders should be immediate, took {elapsed:.2f} s"
    assert elapsed < broker.bus.PUBLISH_TIMEOUT_S / 5
    assert isinstance(caught.value.__cause__, nats.js.errors.NoStreamResponseError)
    assert in_flight(bus) == 0
    assert await bus.publish("writes.a", b"fine", msg_id="n2") == 1


async def test_a_payload_above_max_payload_is_refused_for_good(
    nats_server_factory: NatsServerFactory,
) -> None:
    limit = 64 * 1024
    server = await nats_server_factory("small", max_payload=limit)
    bus = await open_bus(server.url)
    try:
        assert bus.nc.max_payload == limit
        with pytest.raises(PublishRefused) as caught:
            await bus.publish("writes.big", b"x" * (limit + 1), msg_id="big")
        assert caught.value.code == "too_large"
        assert not isinstance(caught.value, NatsUnavailable)  # not worth a retry
        assert in_flight(bus) == 0
        # At the limit it goes through, and nothing of the refused one was stored.
        assert await bus.publish("writes.big", b"x" * (limit - 512), msg_id="fits") == 1
        assert await stream_count(bus) == 1
    finally:
        await asyncio.wait_for(bus.close(), 5.0)


async def test_a_publish_beyond_a_per_subject_limit_is_backlog_full(bus: JetStreamBus) -> None:
    await bus.js.add_stream(
        name="CAPPED",
        subjects=["capped.>"],
        max_msgs_per_subject=2,
        discard=api.DiscardPolicy.NEW,
        discard_new_per_subject=True,
    )
    assert await bus.publish("capped.a", b"1", msg_id="c1") == 1
    assert await bus.publish("capped.a", b"2", msg_id="c2") == 2
    with pytest.raises(SubmitBacklogFull) as caught:
        await bus.publish("capped.a", b"3", msg_id="c3")
    assert isinstance(caught.value, NatsUnavailable)  # a caller retries it later
    assert caught.value.code == "submit_backlog_full"
    assert await bus.publish("capped.b", b"other subject", msg_id="c4") == 3
    assert await stream_count(bus, "CAPPED") == 3


# --- KV ----------------------------------------------------------------------------------


async def test_kv_create_update_put_and_recreate_after_delete(bus: JetStreamBus) -> None:
    created = await bus.kv_create(BUCKET, "alpha", b"v1")
    assert created > 0
    with pytest.raises(KvConflict):
        await bus.kv_create(BUCKET, "alpha", b"again")
    entry = await bus.kv_get(BUCKET, "alpha")
    assert entry is not None
    assert (entry.value, entry.revision) == (b"v1", created)

    updated = await bus.kv_update(BUCKET, "alpha", b"v2", created)
    assert updated > created
    with pytest.raises(KvConflict):  # the revision before the update: stale
        await bus.kv_update(BUCKET, "alpha", b"lost", created)
    with pytest.raises(KvConflict):  # a revision that never was this key's
        await bus.kv_update(BUCKET, "alpha", b"lost", updated + 100)
    entry = await bus.kv_get(BUCKET, "alpha")
    assert entry is not None
    assert (entry.value, entry.revision) == (b"v2", updated)

    put = await bus.kv_put(BUCKET, "alpha", b"v3")
    assert put > updated
    put_new = await bus.kv_put(BUCKET, "beta", b"b1")
    assert put_new > put
    assert await bus.kv_get(BUCKET, "beta") == broker.bus.KvEntry(b"b1", put_new)
    with pytest.raises(KvConflict):  # kv_put made the key: a create must not overwrite it
        await bus.kv_create(BUCKET, "beta", b"b2")

    # A key behind a delete marker is created again (nats-py's create, the fallback path).
    await bus.kv_delete(BUCKET, "alpha")
    assert await bus.kv_get(BUCKET, "alpha") is None
    recreated = await bus.kv_create(BUCKET, "alpha", b"reborn")
    assert recreated > put_new
    assert await bus.kv_get(BUCKET, "alpha") == broker.bus.KvEntry(b"reborn", recreated)
    with pytest.raises(KvConflict):  # and only once
        await bus.kv_create(BUCKET, "alpha", b"twice")
    assert in_flight(bus) == 0


async def test_concurrent_kv_creates_of_one_key_let_exactly_one_win(bus: JetStreamBus) -> None:
    async def create(i: int) -> int | None:
        try:
            return await bus.kv_create(BUCKET, "contested", str(i).encode())
        except KvConflict:
            return None

    results = await asyncio.wait_for(asyncio.gather(*(create(i) for i in range(20))), WAIT)
    winners = [(i, r) for i, r in enumerate(results) if r is not None]
    assert len(winners) == 1
    [(winner, revision)] = winners
    assert await bus.kv_get(BUCKET, "contested") == broker.bus.KvEntry(
        str(winner).encode(), revision
    )


async def test_kv_writes_to_an_unbound_bucket_or_an_invalid_key_are_refused(
    bus: JetStreamBus,
) -> None:
    with pytest.raises(KeyError):
        await bus.kv_put("NOSUCHBUCKET", "k", b"v")
    with pytest.raises((nats.js.errors.InvalidKeyError, NatsUnavailable)):
        await bus.kv_put(BUCKET, "bad key*", b"v")
    assert in_flight(bus) == 0


# --- timeouts and drops ------------------------------------------------------------------


async def test_a_publish_to_a_frozen_server_times_out_as_nats_unavailable(
    bus: JetStreamBus, nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker.bus, "PUBLISH_TIMEOUT_S", 0.3)
    await nats_server.pause()  # SIGSTOP: the connection stays open, nothing is answered
    try:
        started = time.monotonic()
        with pytest.raises(NatsUnavailable) as caught:
            await asyncio.wait_for(bus.publish("writes.a", b"late", msg_id="t1"), WAIT)
        elapsed = time.monotonic() - started
        assert isinstance(caught.value.__cause__, TimeoutError)
        assert 0.25 <= elapsed < 2.0, f"timed out after {elapsed:.2f} s, not ~0.3 s"
        assert in_flight(bus) == 0
    finally:
        await nats_server.resume()
    # The frozen server stores the first publish once it runs again (its ack finds no one
    # waiting); a retry with the same id is the same message.
    assert await asyncio.wait_for(bus.publish("writes.a", b"late", msg_id="t1"), WAIT) == 1
    assert await asyncio.wait_for(bus.publish("writes.a", b"next", msg_id="t2"), WAIT) == 2


@pytest.mark.parametrize("write", ["kv_update", "kv_put", "kv_create"])
async def test_a_kv_write_to_a_frozen_server_times_out_as_nats_unavailable(
    bus: JetStreamBus, nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    """Every KV write raises only NatsUnavailable (or KvConflict) on a transport failure:
    the router promises callers nothing else."""
    revision = await bus.kv_put(BUCKET, "k", b"v0")
    monkeypatch.setattr(broker.bus, "PUBLISH_TIMEOUT_S", 0.3)
    await nats_server.pause()
    try:
        calls = {
            "kv_update": lambda: bus.kv_update(BUCKET, "k", b"v1", revision),
            "kv_put": lambda: bus.kv_put(BUCKET, "k", b"v1"),
            "kv_create": lambda: bus.kv_create(BUCKET, "fresh", b"v1"),
        }
        with pytest.raises(NatsUnavailable) as caught:
            await asyncio.wait_for(calls[write](), WAIT)
        assert isinstance(caught.value.__cause__, TimeoutError)
    finally:
        await nats_server.resume()


async def test_a_dropped_connection_fails_every_publish_in_flight_at_once_then_recovers(
    bus: JetStreamBus, nats_server: EmbeddedNats
) -> None:
    before = await bus.publish("writes.a", b"before", msg_id="before")
    assert before == 1
    pid = nats_server.pid
    assert pid is not None

    await nats_server.pause()  # acks never come
    count = 200
    pending = [
        asyncio.ensure_future(bus.publish(f"writes.{i % 5}", str(i).encode(), msg_id=f"f.{i}"))
        for i in range(count)
    ]
    pending.append(asyncio.ensure_future(bus.kv_put(BUCKET, "during", b"drop")))
    try:
        await asyncio.sleep(0.3)  # they are all sent and waiting for their acks
        assert not any(p.done() for p in pending)
        assert in_flight(bus) == count + 1
        dropped = time.monotonic()
        nats_server.kill()  # SIGKILL the frozen server: the connection drops
        results = await asyncio.wait_for(
            asyncio.gather(*pending, return_exceptions=True), broker.bus.PUBLISH_TIMEOUT_S / 2
        )
        elapsed = time.monotonic() - dropped
    finally:
        for p in pending:
            p.cancel()
        if nats_server.state is EmbeddedState.PAUSED:
            await nats_server.resume()
    assert elapsed < 2.0, f"in-flight publishes failed only after {elapsed:.2f} s"
    failures = [type(r).__name__ for r in results if not isinstance(r, NatsUnavailable)]
    assert failures == [], f"not NatsUnavailable: {failures[:5]}"
    assert in_flight(bus) == 0
    assert not bus.connected

    # Back on the same port and store: nats-py reconnects and renews the inbox
    # subscription; the same bus publishes again.
    await nats_server.restart()
    assert nats_server.pid != pid

    async def published() -> int:
        while True:
            try:
                return await bus.publish("writes.a", b"after", msg_id="after")
            except NatsUnavailable:
                await asyncio.sleep(0.1)

    after = await asyncio.wait_for(published(), WAIT)
    assert bus.connected
    assert after == before + 1, "what never reached the server must not have been stored"
    assert await bus.publish("writes.a", b"after", msg_id="after") == after  # dedupe kept
    assert await bus.kv_create(BUCKET, "after", b"ok") > 0
    again = await asyncio.wait_for(
        asyncio.gather(*(bus.publish("writes.b", b"x", msg_id=f"a.{i}") for i in range(50))),
        WAIT,
    )
    assert sorted(again) == list(range(after + 1, after + 51))
    assert in_flight(bus) == 0


async def test_a_publish_made_while_reconnecting_goes_through_once_the_server_is_back(
    bus: JetStreamBus, nats_server: EmbeddedNats
) -> None:
    assert await bus.publish("writes.a", b"first", msg_id="r0") == 1
    nats_server.kill()
    # nats-py notices the closed socket and starts reconnecting.
    deadline = time.monotonic() + WAIT
    while bus.connected:
        assert time.monotonic() < deadline, "the drop was never noticed"
        await asyncio.sleep(0.01)
    # Sent while disconnected: nats-py buffers it, and the drop that already happened
    # must not fail it (nor may an old drop future).
    waiting = asyncio.ensure_future(bus.publish("writes.a", b"buffered", msg_id="r1"))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await nats_server.restart()
    assert await asyncio.wait_for(waiting, WAIT) == 2
    assert in_flight(bus) == 0
