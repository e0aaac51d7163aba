"""The periodic audit verification reads only what is new since its previous clean check,
still reports on the whole trail, and verifies everything again at start-up, after a
finding and at least every ``audit_full_verify_interval_s``; the directory versions it
verifies against are read once, newer ones as they appear.

Against a real nats-server (the broker's own verify loop is stopped: the tests drive the
checks), plus a few checks of :func:`verify_stream`'s continuation from a checkpoint
against an in-memory stream."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
import pytest_asyncio

from broker import auditlog, subjects
from broker.auditlog import (
    CHECKPOINT_KEY,
    AuditWatch,
    DirectoryCache,
    directory_versions,
    read_trail,
    verify_stream,
)
from broker.bus import KvEntry, StreamEntry
from broker.core import sign_directory, successor
from broker.core.auditchain import Checkpoint, make_checkpoint
from broker.demo import DemoRegion
from broker.router import wall_clock_ms
from broker.service import Service

from . import nats_fixtures, service_helpers
from .conftest import NOW
from .service_helpers import Actors, BrokerFactory
from .test_audit_trail import forge_in_block_files

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory
actors = service_helpers.actors

SLOW = {"audit_seal_interval_s": 3600.0, "audit_verify_interval_s": 3600.0}


@pytest_asyncio.fixture
async def broker(broker_factory: BrokerFactory) -> Service:
    """A broker whose seal and verify loops stay out of the way: the tests drive them."""
    service = await broker_factory(**SLOW)
    for task in service._tasks:
        if task.get_name() == "verify":  # its first check would come 5 s after the start
            task.cancel()
    return service


@pytest_asyncio.fixture
async def net(broker: Service, actors: Actors) -> Actors:
    return await actors.start()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """``(start sequence, entries read)`` of every read of the audit trail for verification."""
    calls: list[tuple[int, int]] = []
    original = auditlog.read_trail

    async def counting(
        bus: Any, start_seq: int = 1, *, limit: int | None = None
    ) -> list[tuple[int, bytes | None]]:
        entries = await original(bus, start_seq, limit=limit)
        calls.append((start_seq, len(entries)))
        return entries

    monkeypatch.setattr(auditlog, "read_trail", counting)
    return calls


async def traffic(net: Actors, count: int) -> None:
    for i in range(count):
        _, data = await net.send("nacka", ["solna", "sos-alarm"], text=f"lägesbild {i}")
        await net.accepted_and_delivered("nacka", data)
    await asyncio.sleep(0.5)  # the receipts' audit events


async def full_report(service: Service) -> dict[str, Any]:
    """The whole trail verified from scratch, as ``ssr audit verify`` does."""
    assert service.bus is not None
    assert service.router is not None
    versions = await directory_versions(service.bus, service.router.state.pinned_authority)
    return (await verify_stream(service.bus, versions)).as_dict()


async def last_seq(service: Service) -> int:
    assert service.bus is not None
    _, last = await service.bus.stream_bounds(subjects.AUDIT_STREAM)
    return last


def full_every(service: Service, seconds: float) -> None:
    service.config = dataclasses.replace(service.config, audit_full_verify_interval_s=seconds)


async def test_a_second_check_reads_only_the_new_part_and_reports_the_whole_trail(
    broker: Service, net: Actors, reads: list[tuple[int, int]]
) -> None:
    await traffic(net, 3)
    await broker.seal_audit()
    await broker.verify_audit()
    total = await last_seq(broker)
    assert reads == [(1, total)]  # start-up: the whole trail
    first = broker.audit_watch.status()
    assert first["verified"] is True
    assert first["events"] == total
    assert broker.audit_watch.full_check_at == broker.audit_watch.checked_at
    sealed = first["sealed_through"]

    await traffic(net, 2)
    await broker.seal_audit()
    reads.clear()
    await broker.verify_audit()
    total = await last_seq(broker)
    assert reads == [(sealed + 1, total - sealed)]  # only what follows the verified seal
    status = broker.audit_watch.status()
    whole = await full_report(broker)
    assert whole["verified"], whole["findings"]
    assert status["verified"] is True
    assert status["events"] == whole["events"] == total
    assert status["sealed_through"] == whole["sealed_through"] > sealed
    assert broker.audit_watch.report is not None
    assert broker.audit_watch.report.checkpoints == whole["checkpoints"] == 2
    assert broker.audit_watch.report.unsealed == whole["unsealed"]
    assert broker.sealer is not None
    latest, _ = await broker.sealer.latest()
    assert latest is not None
    assert status["latest_checkpoint"] == {"number": 2, "hash": latest.hash}
    assert broker.audit_watch.full_check_at != broker.audit_watch.checked_at
    registry = broker.metrics.registry
    assert registry.get_sample_value("ssr_broker_audit_verified") == 1
    assert registry.get_sample_value("ssr_broker_audit_sealed_through") == whole["sealed_through"]


async def test_events_after_the_last_checkpoint_verify_incrementally_once_sealed(
    broker: Service, net: Actors, reads: list[tuple[int, int]]
) -> None:
    await traffic(net, 1)
    await broker.seal_audit()
    await broker.verify_audit()
    sealed = broker.audit_watch.status()["sealed_through"]
    await traffic(net, 1)  # not sealed yet: counted, not vouched for
    reads.clear()
    await broker.verify_audit()
    watch = broker.audit_watch
    assert watch.report is not None
    assert reads == [(sealed + 1, await last_seq(broker) - sealed)]
    assert watch.status()["verified"] is True
    assert watch.report.sealed_through == sealed
    assert watch.report.unsealed == await last_seq(broker) - sealed
    await broker.seal_audit()
    reads.clear()
    await broker.verify_audit()  # still from the same checkpoint: the last clean one
    assert [start for start, _ in reads] == [sealed + 1]
    status = watch.status()
    assert status["verified"] is True
    assert status["sealed_through"] > sealed
    assert status["latest_checkpoint"]["number"] == 2
    assert status["events"] == (await full_report(broker))["events"]


async def test_tampering_with_verified_events_shows_at_the_next_full_check(
    broker: Service, net: Actors, nats_server: Any, reads: list[tuple[int, int]]
) -> None:
    await traffic(net, 3)
    await broker.seal_audit()
    await broker.verify_audit()
    assert broker.audit_watch.status()["verified"] is True
    sealed = broker.audit_watch.status()["sealed_through"]
    assert broker.bus is not None
    entries = await read_trail(broker.bus)
    target_seq, target = next(
        (seq, data) for seq, data in entries if data is not None and b'"kind":"accepted"' in data
    )
    assert target_seq <= sealed
    await forge_in_block_files(broker, nats_server, target)

    reads.clear()
    await broker.verify_audit()  # continues after the seal: the old event is not read
    assert [start for start, _ in reads] == [sealed + 1]
    assert broker.audit_watch.status()["verified"] is True

    full_every(broker, 0)
    reads.clear()
    await broker.verify_audit()  # due: the whole trail again
    assert [start for start, _ in reads] == [1]
    status = broker.audit_watch.status()
    assert status["verified"] is False
    located = {(f["seq"], f["problem"]) for f in status["findings"]}
    # nats-server serves the forged bytes (altered) or drops the damaged message (deleted)
    assert located & {(target_seq, "altered"), (target_seq, "deleted")}, located
    assert broker.metrics.registry.get_sample_value("ssr_broker_audit_verified") == 0

    full_every(broker, 3600)
    reads.clear()
    await broker.verify_audit()  # after a finding the next check is full again
    assert [start for start, _ in reads] == [1]
    assert broker.audit_watch.status()["verified"] is False
    reads.clear()
    await broker.verify_audit()
    assert [start for start, _ in reads] == [1]


async def test_a_truncation_is_found_by_an_incremental_check(
    broker: Service, net: Actors, reads: list[tuple[int, int]]
) -> None:
    await traffic(net, 1)
    await broker.seal_audit()
    await broker.verify_audit()
    sealed = broker.audit_watch.status()["sealed_through"]
    await traffic(net, 1)
    # The bucket gets checkpoint 2 that the stream never received (as if the stream had
    # been cut after it): the bucket is read by every check, also an incremental one.
    sealer = broker.sealer
    assert sealer is not None
    assert broker.bus is not None
    latest, revision = await sealer.latest()
    assert latest is not None
    assert revision is not None
    new = await broker.bus.read_stream(
        subjects.AUDIT_STREAM, subjects.AUDIT_WILDCARD, latest.last + 1, 1000
    )
    ahead = make_checkpoint(
        [(e.seq, e.data) for e in new], after=latest, at=wall_clock_ms(),
        broker=sealer.identity.broker, signer=sealer.identity.signing,
    )  # fmt: skip
    await broker.bus.kv_update(subjects.STATE_BUCKET, CHECKPOINT_KEY, ahead.raw, revision)
    reads.clear()
    await broker.verify_audit()
    assert [start for start, _ in reads] == [sealed + 1]
    status = broker.audit_watch.status()
    assert status["verified"] is False
    assert [f["problem"] for f in status["findings"]] == ["truncated"]
    reads.clear()
    await broker.verify_audit()
    assert [start for start, _ in reads] == [1]
    assert [f["problem"] for f in broker.audit_watch.status()["findings"]] == ["truncated"]


async def test_directory_versions_are_read_once_and_new_ones_picked_up(
    broker: Service, net: Actors, monkeypatch: pytest.MonkeyPatch, live_region: DemoRegion
) -> None:
    await traffic(net, 1)
    await broker.seal_audit()  # (until a checkpoint exists every check is full)
    assert broker.bus is not None
    bus = broker.bus
    here = asyncio.current_task()  # the refresh loop reads the same keys: count ours only
    gets: list[str] = []
    original = bus.kv_get

    async def counting(bucket: str, key: str) -> KvEntry | None:
        if bucket == subjects.DIRECTORY_BUCKET and asyncio.current_task() is here:
            gets.append(key)
        return await original(bucket, key)

    monkeypatch.setattr(bus, "kv_get", counting)
    key = subjects.directory_key
    await broker.verify_audit()
    assert gets == [key(1), key(2)]  # start-up: every version (one) and the end
    cache = broker.audit_watch.directories
    assert [d.version for d in cache.versions] == [1]

    gets.clear()
    await broker.verify_audit()
    assert gets == [key(2)]  # nothing new

    document = successor(live_region.directory, issued=wall_clock_ms())
    await bus.kv_put(
        subjects.DIRECTORY_BUCKET, key(2), sign_directory(document, live_region.authority)
    )
    gets.clear()
    await broker.verify_audit()
    assert gets == [key(2), key(3)]
    assert [d.version for d in cache.versions] == [1, 2]

    full_every(broker, 0)
    gets.clear()
    await broker.verify_audit()  # a full check reads them all again
    assert gets == [key(1), key(2), key(3)]
    assert [d.version for d in cache.versions] == [1, 2]

    # Without a cache, as the CLI and the officers' API call it: every version each time.
    gets.clear()
    assert broker.router is not None
    versions = await directory_versions(bus, broker.router.state.pinned_authority)
    assert [d.version for d in versions] == [1, 2]
    assert gets == [key(1), key(2), key(3)]
    # A cache given to directory_versions is filled and then continued.
    mine = DirectoryCache()
    await directory_versions(bus, broker.router.state.pinned_authority, cache=mine)
    gets.clear()
    again = await directory_versions(bus, broker.router.state.pinned_authority, cache=mine)
    assert [d.version for d in again] == [1, 2]
    assert gets == [key(3)]


# --- continuing from a checkpoint, against an in-memory stream --------------------------------


class MemoryStream:
    """What verify_stream reads of a bus: the audit stream and the bucket's checkpoint."""

    def __init__(
        self, entries: dict[int, bytes], bucket: bytes | None, bounds: tuple[int, int] | None = None
    ) -> None:
        self.entries = entries
        self.bucket = bucket
        self.bounds = bounds

    async def kv_get(self, bucket: str, key: str) -> KvEntry | None:
        if (bucket, key) == (subjects.STATE_BUCKET, CHECKPOINT_KEY) and self.bucket is not None:
            return KvEntry(self.bucket, 1)
        return None

    async def stream_bounds(self, stream: str) -> tuple[int, int]:
        if self.bounds is not None:
            return self.bounds
        return (min(self.entries), max(self.entries)) if self.entries else (0, 0)

    async def read_stream(
        self, stream: str, subject: str, start_seq: int, limit: int
    ) -> list[StreamEntry]:
        found = [
            StreamEntry(s, subject, d) for s, d in sorted(self.entries.items()) if s >= start_seq
        ]
        return found[:limit]


def seal(
    region: DemoRegion, trail: dict[int, bytes], after: Checkpoint | None, at: int
) -> Checkpoint:
    first = 1 if after is None else after.last + 1
    checkpoint = make_checkpoint(
        [(s, trail[s]) for s in range(first, max(trail) + 1)], after=after, at=at,
        broker=region.broker.broker, signer=region.broker.signing,
    )  # fmt: skip
    trail[max(trail) + 1] = checkpoint.raw
    return checkpoint


def event(n: int) -> bytes:
    return b'{"kind":"accepted","n":%d}' % n


@pytest.fixture
def trail(region: DemoRegion) -> tuple[dict[int, bytes], Checkpoint, Checkpoint]:
    """Events 1-3, checkpoint 1 (at 4), events 5-6, checkpoint 2 (at 7), event 8."""
    entries = {1: event(1), 2: event(2), 3: event(3)}
    first = seal(region, entries, None, NOW)
    entries.update({5: event(5), 6: event(6)})
    second = seal(region, entries, first, NOW + 1)
    entries[8] = event(8)
    return entries, first, second


async def check(
    region: DemoRegion, stream: MemoryStream, start: Checkpoint | None
) -> tuple[int, int, int, list[tuple[int | None, str]]]:
    report = await verify_stream(stream, [region.directory], start=start)  # type: ignore[arg-type]
    problems = [(f.seq, f.problem) for f in report.findings]
    return report.events, report.checkpoints, report.sealed_through, problems


async def test_continuing_from_a_checkpoint_covers_the_part_after_it(
    region: DemoRegion, trail: tuple[dict[int, bytes], Checkpoint, Checkpoint]
) -> None:
    entries, first, second = trail
    stream = MemoryStream(entries, second.raw)
    assert await check(region, stream, None) == (8, 2, 6, [])
    # checkpoint 1's own event (sequence 4) is read, sealed by checkpoint 2
    assert await check(region, stream, first) == (5, 1, 6, [])
    assert await check(region, stream, second) == (2, 0, 6, [])
    # the whole trail's report from the earlier part and the new one
    watch = AuditWatch()
    plan = watch.begin(3600)
    assert plan.full
    whole = await verify_stream(stream, [region.directory])  # type: ignore[arg-type]
    watch.finish(plan, whole, NOW)
    entries[9] = event(9)
    third = seal(region, entries, second, NOW + 2)
    stream.bucket = third.raw
    plan = watch.begin(3600)
    assert plan.start == second
    part = await verify_stream(stream, [region.directory], start=plan.start)  # type: ignore[arg-type]
    report = watch.finish(plan, part, NOW + 3)
    counts = (report.events, report.checkpoints, report.sealed_through, report.unsealed)
    assert counts == (10, 3, 9, 1)
    assert report.latest == third
    assert watch.full_check_at == NOW


async def test_a_stream_that_lost_the_verified_part_is_reported(
    region: DemoRegion, trail: tuple[dict[int, bytes], Checkpoint, Checkpoint]
) -> None:
    entries, first, second = trail
    # Cut back to before checkpoint 2's range, the bucket rewound along with it.
    short = {s: d for s, d in entries.items() if s <= 2}
    problems = (await check(region, MemoryStream(short, first.raw), second))[3]
    assert (None, "truncated") in problems
    # The oldest events removed (a purge, or a maximum age on the stream).
    later = {s: d for s, d in entries.items() if s >= 3}
    problems = (await check(region, MemoryStream(later, second.raw), second))[3]
    assert problems == [(1, "deleted")]
    # (the next check is full and names every missing sequence)
    problems = (await check(region, MemoryStream(later, second.raw), None))[3]
    assert {(1, "deleted"), (2, "deleted")} <= set(problems)


async def test_a_checkpoint_differing_from_the_verified_one_is_reported(
    region: DemoRegion, trail: tuple[dict[int, bytes], Checkpoint, Checkpoint]
) -> None:
    entries, first, second = trail
    # Another checkpoint 2 (a broker key's holder re-sealing): in the bucket, and stored.
    rival_trail = {s: d for s, d in entries.items() if s <= 6}
    rival = seal(region, rival_trail, first, NOW + 5)
    problems = (await check(region, MemoryStream(entries, rival.raw), second))[3]
    assert (None, "checkpoint_conflict") in problems
    changed = dict(entries)
    changed[7] = rival.raw
    problems = (await check(region, MemoryStream(changed, second.raw), second))[3]
    assert (7, "checkpoint_conflict") in problems


async def test_a_bucket_rolled_back_behind_the_verified_checkpoint_is_reported(
    region: DemoRegion, trail: tuple[dict[int, bytes], Checkpoint, Checkpoint]
) -> None:
    """Someone with NATS rights sets the bucket back to checkpoint 1 after checkpoint 2
    was verified; the sealer then seals a second checkpoint 2 over what follows: both
    show at once, not only at the next full check."""
    entries, first, second = trail
    problems = (await check(region, MemoryStream(entries, first.raw), second))[3]
    assert (None, "checkpoint_conflict") in problems
    resealed = dict(entries)
    resealed[9] = first.raw  # an older checkpoint stored after the verified one
    problems = (await check(region, MemoryStream(resealed, second.raw), second))[3]
    assert (9, "checkpoint_conflict") in problems


async def test_after_a_failure_a_sealing_stop_or_the_interval_the_check_is_full(
    region: DemoRegion,
    trail: tuple[dict[int, bytes], Checkpoint, Checkpoint],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entries, _, second = trail
    stream = MemoryStream(entries, second.raw)
    clock = [1000.0]
    monkeypatch.setattr(auditlog.time, "monotonic", lambda: clock[0])
    watch = AuditWatch()

    async def run(plan: auditlog.AuditCheck) -> None:
        part = await verify_stream(stream, [region.directory], start=plan.start)  # type: ignore[arg-type]
        watch.finish(plan, part, NOW)

    await run(watch.begin(60))
    assert watch.begin(60).start == second  # planned, then failed: never finished
    assert watch.begin(60).full  # so the next one is full
    await run(watch.begin(60))
    watch.seal_error = "audit event 9 is missing from the stream: sealing stops here"
    assert watch.begin(60).full
    watch.seal_error = None
    await run(watch.begin(60))
    clock[0] += 59.0
    plan = watch.begin(60)
    assert not plan.full
    await run(plan)
    clock[0] += 1.0
    assert watch.begin(60).full  # a minute since the last full check began
