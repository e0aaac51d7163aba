"""The router's ``_recent``: the message records it wrote last (JSON, revision, time), used
to update a record without reading it first (a receipt follows its message within
seconds). Only a first guess: a record changed behind this broker's back makes the
compare-and-set conflict, the copy is evicted and the record read again, and the change
made elsewhere is kept. Bounded by ``RECENT_RECORDS`` and ``RECENT_RECORD_S``.

Against a real nats-server and a real ``Service`` (its sweep held off, so nothing but the
test writes the records meanwhile)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

import broker.router
from broker import subjects
from broker.bus import JetStreamBus, KvConflict
from broker.core import ReceiptKind, make_receipt
from broker.router import Router

from . import nats_fixtures, service_helpers
from .service_helpers import Actors, BrokerFactory, header_of, now_ms, wait_until

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory
actors = service_helpers.actors

NO_SWEEP_S = 3600.0  # the sweep reads and may write records: not during these tests


class Spy:
    """Counts the router's KV reads of message records and the compare-and-sets it lost."""

    def __init__(self, router: Router) -> None:
        self.reads: Counter[str] = Counter()
        self.conflicts: Counter[str] = Counter()
        bus = router.bus
        kv_get, kv_update = bus.kv_get, bus.kv_update

        async def get(bucket: str, key: str) -> Any:
            if bucket == subjects.MESSAGES_BUCKET:
                self.reads[key] += 1
            return await kv_get(bucket, key)

        async def update(bucket: str, key: str, value: bytes, revision: int) -> int:
            try:
                return await kv_update(bucket, key, value, revision)
            except KvConflict:
                self.conflicts[key] += 1
                raise

        bus.kv_get = get  # type: ignore[method-assign]
        bus.kv_update = update  # type: ignore[method-assign]


async def deliver(net: Actors, sender: str, to: list[str]) -> tuple[str, bytes]:
    data = net.envelope(sender, to)
    await net.submit(sender, data)
    await net.accepted_and_delivered(sender, data)
    return header_of(data, net.directory).id, data


async def send_receipt(net: Actors, actor: str, message_id: str) -> int:
    """``actor``'s signed delivered receipt for a message it received; returns its time."""
    message = net[actor].deliveries[message_id]
    at = now_ms()
    receipt = make_receipt(
        net.identity(actor), message.header, message.header_hash, ReceiptKind.DELIVERED, at=at
    )
    await net.submit(actor, receipt, msg_id=f"receipt.{message_id}.{actor}")
    return at


async def stored(bus: JetStreamBus, message_id: str) -> tuple[dict[str, Any], int]:
    entry = await bus.kv_get(subjects.MESSAGES_BUCKET, message_id)
    assert entry is not None
    return json.loads(entry.value), entry.revision


def forwarded(net: Actors, sender: str, message_id: str) -> set[str]:
    return {r.recipient for r in net[sender].receipts if r.message == message_id}


async def test_a_receipt_on_a_record_changed_elsewhere_keeps_both_changes(
    broker_factory: BrokerFactory, actors: Actors
) -> None:
    service = await broker_factory(sweep_interval_s=NO_SWEEP_S)
    router = service.router
    assert router is not None
    actors.receipts = False  # the test sends each receipt itself
    net = await actors.start()
    message_id, _ = await deliver(net, "nacka", ["solna", "sos-alarm", "stockholm"])
    assert message_id in router._recent  # the claim was remembered as written
    remembered = router._recent[message_id][1]

    # Another broker (here: a plain bus on the actors' connection) changes the record.
    assert net.nc is not None
    assert net.js is not None
    elsewhere = JetStreamBus(net.nc, net.js)
    await elsewhere.bind_buckets(subjects.MESSAGES_BUCKET)
    record, revision = await stored(elsewhere, message_id)
    assert revision == remembered
    record["escalated"] = True
    record["receipts"]["sos-alarm"] = {"delivered": 1234}
    changed = await elsewhere.kv_update(
        subjects.MESSAGES_BUCKET, message_id, json.dumps(record).encode(), revision
    )
    assert router._recent[message_id][1] == remembered < changed  # the copy is stale

    spy = Spy(router)
    at = await send_receipt(net, "solna", message_id)
    await wait_until(lambda: "solna" in forwarded(net, "nacka", message_id), "solna's receipt")

    final, final_revision = await stored(elsewhere, message_id)
    assert final["escalated"] is True, "the change made elsewhere was lost"
    assert final["receipts"] == {"sos-alarm": {"delivered": 1234}, "solna": {"delivered": at}}
    assert final_revision > changed
    # The stale copy was tried first, lost its compare-and-set, and the record was read.
    assert spy.conflicts[message_id] == 1
    assert spy.reads[message_id] == 1
    assert router._recent[message_id][1] == final_revision  # remembered as written now

    # The next receipt updates the fresh copy: no read, no conflict.
    at2 = await send_receipt(net, "stockholm", message_id)
    await wait_until(
        lambda: "stockholm" in forwarded(net, "nacka", message_id), "stockholm's receipt"
    )
    final, _ = await stored(elsewhere, message_id)
    assert final["escalated"] is True
    assert final["receipts"] == {
        "sos-alarm": {"delivered": 1234},
        "solna": {"delivered": at},
        "stockholm": {"delivered": at2},
    }
    assert spy.conflicts[message_id] == 1
    assert spy.reads[message_id] == 1
    assert forwarded(net, "nacka", message_id) == {"solna", "stockholm"}  # not sos-alarm's
    assert [r.recipient for r in net["nacka"].receipts].count("solna") == 1


async def test_the_recent_records_stay_bounded(
    broker_factory: BrokerFactory, actors: Actors, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker.router, "RECENT_RECORDS", 3)
    service = await broker_factory(sweep_interval_s=NO_SWEEP_S)
    router = service.router
    assert router is not None
    actors.receipts = False
    net = await actors.start()
    ids = []
    for i in range(6):  # one after another: the order they are remembered in is known
        message_id, _ = await deliver(net, ("nacka", "solna")[i % 2], ["stockholm"])
        ids.append(message_id)
        assert len(router._recent) <= 3
    assert list(router._recent) == ids[-3:]  # the oldest were evicted
    assert router._recent_record(ids[0]) is None
    assert router._recent_record(ids[-1]) is not None

    # A receipt for an evicted message reads the record and is recorded all the same.
    spy = Spy(router)
    at = await send_receipt(net, "stockholm", ids[0])
    await wait_until(lambda: "stockholm" in forwarded(net, "nacka", ids[0]), "the receipt")
    assert spy.reads[ids[0]] == 1
    record, _ = await stored(router.bus, ids[0])
    assert record["receipts"] == {"stockholm": {"delivered": at}}
    assert len(router._recent) <= 3
    assert list(router._recent)[-1] == ids[0]  # remembered again, as the newest


async def test_a_recent_record_too_old_is_not_used(
    broker_factory: BrokerFactory, actors: Actors, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = await broker_factory(sweep_interval_s=NO_SWEEP_S)
    router = service.router
    assert router is not None
    actors.receipts = False
    net = await actors.start()
    message_id, _ = await deliver(net, "nacka", ["solna"])
    assert router._recent_record(message_id) is not None
    monkeypatch.setattr(broker.router, "RECENT_RECORD_S", 0.0)
    assert router._recent_record(message_id) is None

    spy = Spy(router)
    at = await send_receipt(net, "solna", message_id)
    await wait_until(lambda: "solna" in forwarded(net, "nacka", message_id), "the receipt")
    assert spy.reads[message_id] == 1  # read from KV, not taken from the old copy
    assert spy.conflicts[message_id] == 0
    record, _ = await stored(router.bus, message_id)
    assert record["receipts"] == {"solna": {"delivered": at}}
