"""``JetStreamBus.read_stream`` against a real nats-server: a few messages are read with a
request each, a long range with a short-lived consumer (the audit trail's sealer, index
and verifier read every event this way)."""

from __future__ import annotations

from typing import Any

import nats
import pytest

from broker.bus import JetStreamBus

from . import nats_fixtures
from .nats_fixtures import connect_options

nats_server = nats_fixtures.nats_server


@pytest.mark.parametrize("count", [5, 40, 700])
async def test_read_stream_gives_the_same_messages_by_either_path(
    nats_server: Any, count: int
) -> None:
    """``JetStreamBus.read_stream`` reads short ranges with a request per message and long
    ones with a short-lived consumer: the same messages, in order, gaps skipped, the limit
    kept, and no consumer left behind."""
    nc = await nats.connect(nats_server.url, **connect_options(name="reader"))
    try:
        js = nc.jetstream(timeout=5.0)
        await js.add_stream(name="READS", subjects=["reads.>"])
        for i in range(count):
            await js.publish(f"reads.{i % 3}", str(i).encode())
        deleted = {2, count // 2, count - 1}
        for seq in deleted:
            await js.delete_msg("READS", seq)
        bus = JetStreamBus(nc, js)
        kept = [seq for seq in range(1, count + 1) if seq not in deleted]

        entries = await bus.read_stream("READS", "reads.>", 1, count)
        assert [e.seq for e in entries] == kept
        assert [e.data for e in entries] == [str(seq - 1).encode() for seq in kept]
        assert [e.subject for e in entries] == [f"reads.{(seq - 1) % 3}" for seq in kept]
        limited = await bus.read_stream("READS", "reads.>", 3, 20)
        assert [e.seq for e in limited] == [s for s in kept if s >= 3][:20]
        assert await bus.read_stream("READS", "reads.>", count + 1, 50) == []
        assert (await js.stream_info("READS")).state.consumer_count == 0
    finally:
        await nc.close()
