"""Routing in concurrent lanes, against a deterministic in-memory bus whose reads can be
held back: the interleavings that real servers produce only now and then. Each test
failed before its fix (an attacker's review of the lanes, issue 9 item 11)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from broker import subjects
from broker.bus import KvConflict, KvEntry
from broker.core import Control, MessageType, Policy, ReceiptKind, read_envelope
from broker.core.incidents import closed_by, opened_by
from broker.core.receipts import make_receipt
from broker.errors import NatsUnavailable
from broker.lanes import Lanes
from broker.metrics import BrokerMetrics
from broker.router import BrokerState, Router

from .conftest import HOUR, NOW
from .envelope_helpers import header_of

STORM = "storm-2026"


class FakeBus:
    def __init__(self) -> None:
        self.kv: dict[tuple[str, str], tuple[bytes, int]] = {}
        self.rev = 0
        self.published: list[tuple[str, str]] = []
        self.batches: list[list[str]] = []  # the dedupe ids of each publish_many
        self.gates: dict[str, Any] = {}  # key -> coroutine fn awaited before a kv_get returns

    async def publish(self, subject: str, data: bytes, *, msg_id: str) -> int:
        await asyncio.sleep(0)
        self.published.append((subject, msg_id))
        return len(self.published)

    async def publish_many(self, items: list[tuple[str, bytes, str]]) -> list[int]:
        self.batches.append([m for _, _, m in items])
        return [await self.publish(s, d, msg_id=m) for s, d, m in items]

    async def kv_get(self, bucket: str, key: str) -> KvEntry | None:
        found = self.kv.get((bucket, key))  # read "now" ...
        gate = self.gates.get(key)
        if gate is not None:
            await gate()  # ... answered later
        else:
            await asyncio.sleep(0)
        return None if found is None else KvEntry(found[0], found[1])

    async def kv_create(self, bucket: str, key: str, value: bytes) -> int:
        await asyncio.sleep(0)
        if (bucket, key) in self.kv:
            raise KvConflict("exists")
        self.rev += 1
        self.kv[(bucket, key)] = (value, self.rev)
        return self.rev

    async def kv_update(self, bucket: str, key: str, value: bytes, revision: int) -> int:
        await asyncio.sleep(0)
        if self.kv.get((bucket, key), (b"", -1))[1] != revision:
            raise KvConflict("changed")
        self.rev += 1
        self.kv[(bucket, key)] = (value, self.rev)
        return self.rev

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        await asyncio.sleep(0)
        self.rev += 1
        self.kv[(bucket, key)] = (value, self.rev)
        return self.rev

    async def kv_delete(self, bucket: str, key: str) -> None:
        self.kv.pop((bucket, key), None)

    async def kv_keys(self, bucket: str) -> list[str]:
        return [k for (b, k) in self.kv if b == bucket]


def router_for(region, bus: FakeBus, clock=lambda: NOW) -> Router:
    state = BrokerState(
        directory=region.directory, policy=Policy(), pinned_authority=region.authority.public
    )
    return Router(
        bus=bus,  # type: ignore[arg-type]
        state=state,
        identity=region.broker,
        metrics=BrokerMetrics(CollectorRegistry()),
        clock=clock,
    )


def activation(make_envelope: Any, to: tuple[str, ...], created: int = NOW) -> bytes:
    return make_envelope(  # type: ignore[no-any-return]
        sender="polisen-stockholm",
        to=to,
        message_type=MessageType.ACTIVATION,
        incident=STORM,
        control=Control(incident_type="storm"),
        created=created,
    )


def hold_first_read(bus: FakeBus, key: str) -> None:
    """The first read of ``key`` returns (what it read) only after the second returned."""
    second_done = asyncio.Event()
    calls = 0

    async def gate() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await second_done.wait()
        else:
            await asyncio.sleep(0)
            second_done.set()

    bus.gates[key] = gate


SEQUENCES = itertools.count(1)  # stream sequences of the submissions routed here


async def route_together(router: Router, *submissions: tuple[str, bytes]) -> None:
    """Route each ``(actor, data)`` in its own lane, concurrently, as the service does."""
    lanes = Lanes(10)
    for actor, data in submissions:
        subject = subjects.submit_subject(actor)
        lanes.start(
            subject,
            lambda subject=subject, data=data: router.route(
                subject, data, redelivered=False, sequence=next(SEQUENCES)
            ),  # type: ignore[misc]
        )
    assert await lanes.drain(5)


async def test_a_verdict_made_on_a_stale_incident_is_made_again(
    region: Any, make_envelope: Any
) -> None:
    """Another broker closed STORM; this broker's copy still has it open. Two senders'
    reports naming STORM are routed concurrently; the read of the first returns after
    the second lane already refreshed the copy. Both must be refused: nothing may be
    delivered into a closed incident."""
    bus = FakeBus()
    router = router_for(region, bus)
    opened = opened_by(header_of(activation(make_envelope, ("nacka", "sos-alarm"))), None)
    router.state.incidents[STORM] = opened  # this broker's (stale) copy
    closed = closed_by(opened, NOW)
    await bus.kv_put(subjects.STATE_BUCKET, subjects.incident_key(STORM), closed.to_bytes())
    hold_first_read(bus, subjects.incident_key(STORM))
    a = make_envelope(sender="nacka", to=("polisen-stockholm",), incident=STORM)
    b = make_envelope(sender="sos-alarm", to=("polisen-stockholm",), incident=STORM)
    await route_together(router, ("nacka", a), ("sos-alarm", b))
    assert [m for _, m in bus.published if m.startswith("d.")] == []
    assert len([m for _, m in bus.published if m.endswith(".rejected")]) == 2


async def test_messages_after_another_brokers_activation_are_accepted_in_every_lane(
    region: Any, make_envelope: Any
) -> None:
    """Another broker opened STORM; this one has never heard of it. Both concurrent
    reports naming it must be accepted, though one lane's read returns after the other
    lane already took the incident into memory."""
    bus = FakeBus()
    router = router_for(region, bus)
    opened = opened_by(header_of(activation(make_envelope, ("nacka", "sos-alarm"))), None)
    await bus.kv_put(subjects.STATE_BUCKET, subjects.incident_key(STORM), opened.to_bytes())
    hold_first_read(bus, subjects.incident_key(STORM))
    a = make_envelope(sender="nacka", to=("polisen-stockholm",), incident=STORM)
    b = make_envelope(sender="sos-alarm", to=("polisen-stockholm",), incident=STORM)
    await route_together(router, ("nacka", a), ("sos-alarm", b))
    assert [m for _, m in bus.published if m.endswith(".rejected")] == []
    assert len([m for _, m in bus.published if m.endswith(".accepted")]) == 2


async def delivered_once(router: Router, region: Any, make_envelope: Any) -> tuple[Any, str]:
    envelope = make_envelope(sender="nacka", to=("polisen-stockholm",))
    await router.route(
        subjects.submit_subject("nacka"), envelope, redelivered=False, sequence=next(SEQUENCES)
    )
    return header_of(envelope), read_envelope(envelope, region.directory).header_hash


async def forwarded(router: Router, bus: FakeBus, receipt: bytes) -> bool:
    """Route ``receipt`` again; whether it was forwarded to the sender."""
    before = len(bus.published)
    await router.route(
        subjects.submit_subject("polisen-stockholm"),
        receipt,
        redelivered=False,
        sequence=next(SEQUENCES),
    )
    return any(m.startswith("r.") for _, m in bus.published[before:])


async def test_a_second_different_receipt_of_a_recorded_kind_is_not_forwarded(
    region: Any, make_envelope: Any
) -> None:
    """The recipient signs a second ``delivered`` receipt, fresh ``at``, other note, half
    an hour after the first was recorded: beyond JetStream's duplicate window it would
    reach the sender as a second, different receipt."""
    bus = FakeBus()
    now = [NOW]
    router = router_for(region, bus, clock=lambda: now[0])
    header, header_hash = await delivered_once(router, region, make_envelope)
    me = region.identities["polisen-stockholm"]
    first = make_receipt(me, header, header_hash, ReceiptKind.DELIVERED, at=NOW, note="first")
    assert await forwarded(router, bus, first)
    now[0] = NOW + 30 * 60_000
    second = make_receipt(
        me, header, header_hash, ReceiptKind.DELIVERED, at=now[0], note="changed my mind"
    )
    assert not await forwarded(router, bus, second)
    assert await forwarded(router, bus, first) is False  # and the first is beyond its window


async def test_a_future_dated_receipt_is_not_forwarded_on_replays(
    region: Any, make_envelope: Any
) -> None:
    bus = FakeBus()
    now = [NOW]
    router = router_for(region, bus, clock=lambda: now[0])
    header, header_hash = await delivered_once(router, region, make_envelope)
    me = region.identities["polisen-stockholm"]
    receipt = make_receipt(me, header, header_hash, ReceiptKind.DELIVERED, at=NOW + 300 * 24 * HOUR)
    assert await forwarded(router, bus, receipt)  # recorded and forwarded once
    replays = []
    for day in range(1, 6):
        now[0] = NOW + day * 24 * HOUR
        replays.append(await forwarded(router, bus, receipt))
    assert replays == [False] * 5


async def test_the_joins_task_never_drops_a_join_its_activation_has_not_written_yet(
    region: Any, make_envelope: Any
) -> None:
    """An activation adding two newcomers writes their joins, then the incident. The joins
    task, running meanwhile, must not judge a join against the incident before it."""
    bus = FakeBus()
    router = router_for(region, bus)

    async def kv_entries(bucket: str, pattern: str, *, limit: int = 10_000) -> list[Any]:
        await asyncio.sleep(0)
        prefix = pattern.rstrip(">")
        return [
            (k, v)
            for (b, k), (v, _) in list(bus.kv.items())
            if b == bucket and k.startswith(prefix)
        ]

    bus.kv_entries = kv_entries  # type: ignore[attr-defined]
    first = activation(make_envelope, ("sos-alarm",))
    await router.route(
        subjects.submit_subject("polisen-stockholm"),
        first,
        redelivered=False,
        sequence=next(SEQUENCES),
    )
    report = make_envelope(sender="polisen-stockholm", to=("sos-alarm",), incident=STORM)
    await router.route(
        subjects.submit_subject("polisen-stockholm"),
        report,
        redelivered=False,
        sequence=next(SEQUENCES),
    )
    real_put = bus.kv_put
    joins_task: list[asyncio.Task[int]] = []

    async def put(bucket: str, key: str, value: bytes) -> int:
        revision = await real_put(bucket, key, value)
        if key.startswith("join.") and not joins_task:  # the joins task's turn, right now
            joins_task.append(asyncio.create_task(router.process_joins()))
            await asyncio.sleep(0.01)
        return revision

    bus.kv_put = put  # type: ignore[method-assign]
    # A minute later: what came before it is what the newcomers are offered.
    router.clock = lambda: NOW + 60_000
    second = activation(make_envelope, ("sos-alarm", "nacka", "stockholm"), created=NOW + 60_000)
    await router.route(
        subjects.submit_subject("polisen-stockholm"),
        second,
        redelivered=False,
        sequence=next(SEQUENCES),
    )
    await asyncio.wait_for(joins_task[0], 5)
    await router.process_joins()  # the next round: stockholm, queued after the listing
    # Each newcomer's grant requests (for the first activation and the report) went to
    # their originator.
    requested = sorted(m.split(".", 2)[2] for _, m in bus.published if ".grant." in m)
    assert requested == ["grant.nacka", "grant.nacka", "grant.stockholm", "grant.stockholm"]
    assert not [k for (_, k) in bus.kv if k.startswith("join.")]  # both joins done


# --- an accepted message's writes --------------------------------------------------------


async def test_the_audit_event_and_the_deliveries_go_out_as_one_batch_audit_first(
    region: Any, make_envelope: Any
) -> None:
    """A batch cut short must never have delivered what the audit trail lacks; the
    sender's verdict comes after the batch; the event is counted once."""
    bus = FakeBus()
    router = router_for(region, bus)
    to = ("polisen-stockholm", "sos-alarm", "stockholm")
    envelope = make_envelope(sender="nacka", to=to)
    await router.route(
        subjects.submit_subject("nacka"), envelope, redelivered=False, sequence=next(SEQUENCES)
    )
    message = header_of(envelope).id
    assert len(bus.batches) == 1
    (batch,) = bus.batches
    assert batch[0].startswith("a.")
    assert batch[1:] == [f"d.{message}.{r}" for r in to]
    ids = [m for _, m in bus.published]
    assert ids.index(f"n.{message}.accepted") > max(ids.index(m) for m in batch)
    counted = router.metrics.registry.get_sample_value(
        "ssr_broker_audit_events_total", {"kind": "accepted"}
    )
    assert counted == 1


# --- the sweep reads what is due, and the rest in bounded turns ----------------------------


def count_record_reads(bus: FakeBus) -> list[str]:
    """The message records read from ``bus`` from now on."""
    reads: list[str] = []
    kv_get = bus.kv_get

    async def counted(bucket: str, key: str) -> KvEntry | None:
        if bucket == subjects.MESSAGES_BUCKET:
            reads.append(key)
        return await kv_get(bucket, key)

    bus.kv_get = counted  # type: ignore[method-assign]
    return reads


async def route_from_nacka(router: Router, make_envelope: Any, count: int) -> list[str]:
    """Route ``count`` messages from nacka to the police; their ids."""
    ids = []
    for _ in range(count):
        envelope = make_envelope(sender="nacka", to=("polisen-stockholm",))
        await router.route(
            subjects.submit_subject("nacka"), envelope, redelivered=False, sequence=next(SEQUENCES)
        )
        ids.append(header_of(envelope).id)
    return ids


async def test_the_sweep_reads_its_own_due_messages_and_a_bounded_slice_of_the_rest(
    region: Any, make_envelope: Any
) -> None:
    bus = FakeBus()
    now = [NOW]
    router = router_for(region, bus, clock=lambda: now[0])
    reads = count_record_reads(bus)
    own = await route_from_nacka(router, make_envelope, 12)
    elsewhere = router_for(region, bus, clock=lambda: now[0])

    async def from_another_broker() -> str:
        other = make_envelope(sender="solna", to=("stockholm",))
        await elsewhere.route(
            subjects.submit_subject("solna"), other, redelivered=False, sequence=next(SEQUENCES)
        )
        return header_of(other).id

    known = await from_another_broker()
    reads.clear()
    for _ in range(5):  # a whole round of the listing, three keys a sweep; nothing due yet
        assert await router.sweep(limit=3) == 0
    assert reads == [known]  # its own are followed (_due): only the unknown one is read
    # Another broker's message this one has never read: only the turn-by-turn reading,
    # after its deadline, finds it.
    unknown = await from_another_broker()

    now[0] = NOW + 2 * HOUR  # every delivery deadline has passed
    reads.clear()
    chased = await router.sweep(limit=3)  # the twelve and the known one at once
    assert chased >= 13
    assert {*own, known} <= set(reads)

    def escalated() -> set[str]:
        return {m.split(".")[1] for _, m in bus.published if m.endswith(".escalation")}

    for _ in range(6):  # the unknown one comes up in its turn
        if unknown in escalated():
            break
        chased += await router.sweep(limit=3)
    assert escalated() == {*own, known, unknown}
    assert chased == 14  # each once
    reads.clear()
    for _ in range(10):  # two more rounds
        assert await router.sweep(limit=3) == 0
    assert reads == []  # every record seen through: none is read again


async def test_beyond_the_bound_records_seen_through_are_read_in_turn_until_some_expire(
    region: Any, make_envelope: Any, monkeypatch: Any
) -> None:
    """At most SETTLED_RECORDS are remembered: one more is read in turn again (and nothing
    is sent twice), so the bound costs reads, never a missed escalation; a remembered
    record that expired from the bucket makes room at the next listing."""
    monkeypatch.setattr("broker.router.SETTLED_RECORDS", 2)
    bus = FakeBus()
    now = [NOW]
    router = router_for(region, bus, clock=lambda: now[0])
    reads = count_record_reads(bus)
    ids = sorted(await route_from_nacka(router, make_envelope, 3))
    now[0] = NOW + 2 * HOUR
    assert await router.sweep(limit=10) == 3  # all three due: each escalated once
    reads.clear()
    assert await router.sweep(limit=10) == 0
    assert reads == ids[2:]  # the first two seen through are remembered, the third not
    del bus.kv[(subjects.MESSAGES_BUCKET, ids[0])]  # the oldest record expires
    reads.clear()
    assert await router.sweep(limit=10) == 0
    assert reads == ids[2:]  # read again, and now remembered in the room made
    reads.clear()
    assert await router.sweep(limit=10) == 0
    assert reads == []
    assert sum(m.endswith(".escalation") for _, m in bus.published) == 3


async def test_a_chase_that_fails_is_tried_again_on_the_next_sweep(
    region: Any, make_envelope: Any
) -> None:
    """The escalation of a record cannot be published (NATS is away): the sweep fails,
    and the next one escalates it with the rest, not a whole round of the listing later."""
    bus = FakeBus()
    now = [NOW]
    router = router_for(region, bus, clock=lambda: now[0])
    ids = sorted(await route_from_nacka(router, make_envelope, 5))
    publish = bus.publish
    failing = [True]

    async def flaky(subject: str, data: bytes, *, msg_id: str) -> int:
        if failing[0] and msg_id.endswith(".escalation"):
            failing[0] = False
            raise NatsUnavailable("the node went away")
        return await publish(subject, data, msg_id=msg_id)

    bus.publish = flaky  # type: ignore[method-assign]
    now[0] = NOW + 2 * HOUR
    with pytest.raises(NatsUnavailable):
        await router.sweep(limit=1)  # the first record's escalation fails
    assert await router.sweep(limit=1) == 5  # all five, the first among them
    escalated = sorted(m.split(".")[1] for _, m in bus.published if m.endswith(".escalation"))
    assert escalated == ids
