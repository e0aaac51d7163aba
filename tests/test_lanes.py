"""broker.lanes: in order per key, concurrent across keys, bounded; keyed locks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from broker import subjects
from broker.config import BrokerConfig
from broker.core import MessageType, Policy
from broker.core.envelope import claimed_type
from broker.demo import DemoRegion
from broker.errors import ConfigError
from broker.lanes import Job, KeyedLocks, Lanes
from broker.metrics import BrokerMetrics
from broker.router import BrokerState, Router

from .envelope_helpers import build_as, reframe_keeping_signature, resign, split


def recorder(log: list[str], gate: asyncio.Event) -> Callable[..., Job]:
    """Jobs that note their start and end in ``log``; ``wait=True`` ones wait for ``gate``."""

    def job(name: str, wait: bool = False) -> Job:
        async def run() -> None:
            log.append(f"start {name}")
            if wait:
                await gate.wait()
            await asyncio.sleep(0)
            log.append(f"end {name}")

        return run

    return job


async def test_jobs_of_one_key_run_in_order_and_keys_run_concurrently() -> None:
    lanes = Lanes(limit=10)
    log: list[str] = []
    gate = asyncio.Event()
    job = recorder(log, gate)

    lanes.start("flood", job("f1", wait=True))
    lanes.start("flood", job("f2"))
    lanes.start("other", job("o1"))
    await asyncio.sleep(0.05)
    # The other sender's job finished while the flood's first was still waiting, and the
    # flood's second has not begun.
    assert log == ["start f1", "start o1", "end o1"]
    assert lanes.held == 2
    gate.set()
    assert await lanes.drain(1.0)
    assert log[3:] == ["end f1", "start f2", "end f2"]
    assert lanes.held == 0
    assert lanes.room() == 10


async def test_a_failing_job_does_not_stop_its_lane() -> None:
    lanes = Lanes(limit=4)
    done: list[int] = []

    async def fails() -> None:
        raise RuntimeError("a bug")

    async def works() -> None:
        done.append(1)

    lanes.start("a", fails)
    lanes.start("a", works)
    assert await lanes.drain(1.0)
    assert done == [1]


async def test_admission_is_bounded_and_room_comes_back() -> None:
    lanes = Lanes(limit=2)
    gate = asyncio.Event()

    async def blocked() -> None:
        await gate.wait()

    lanes.start("a", blocked)
    lanes.start("b", blocked)
    assert lanes.room() == 0
    lanes.start("c", blocked)  # already taken: it runs, and room goes below zero
    assert lanes.room() == -1
    waiter = asyncio.create_task(lanes.wait_for_room())
    await asyncio.sleep(0.02)
    assert not waiter.done()
    gate.set()
    await asyncio.wait_for(waiter, 1.0)
    assert lanes.room() >= 1
    assert await lanes.drain(1.0)
    assert lanes.room() == 2


async def test_drain_reports_jobs_still_running_and_cancel_ends_them() -> None:
    lanes = Lanes(limit=2)
    lanes.start("a", lambda: asyncio.sleep(30))
    assert not await lanes.drain(0.05)
    lanes.cancel()
    assert await lanes.drain(1.0)


async def test_a_barrier_runs_alone_between_what_came_before_and_after() -> None:
    lanes = Lanes(limit=10)
    log: list[str] = []
    gate = asyncio.Event()
    job = recorder(log, gate)

    lanes.start("a", job("a1", wait=True))
    lanes.start("b", job("activation"), barrier=True)
    lanes.start("c", job("c1"))  # another sender, after the barrier
    await asyncio.sleep(0.05)
    assert log == ["start a1"]  # the barrier waits for a1, and c1 for the barrier
    gate.set()
    assert await lanes.drain(1.0)
    assert log == ["start a1", "end a1", "start activation", "end activation", "start c1", "end c1"]


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Lanes(limit=0)
    with pytest.raises(ConfigError) as caught:
        BrokerConfig(data_dir=__import__("pathlib").Path("x"), max_in_flight=0)
    assert caught.value.field == "max_in_flight"


async def test_keyed_locks_serialise_one_key_and_are_dropped_when_free() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    overlap = 0

    async def use(key: str) -> None:
        nonlocal overlap
        async with locks.hold(key):
            if key in inside:
                overlap += 1
            inside.append(key)
            await asyncio.sleep(0.01)
            inside.remove(key)

    started = asyncio.get_running_loop().time()
    await asyncio.gather(*(use("m1") for _ in range(5)), *(use(f"k{i}") for i in range(5)))
    elapsed = asyncio.get_running_loop().time() - started
    assert overlap == 0
    assert elapsed >= 0.05  # the five holders of m1 took turns
    assert len(locks) == 0


# --- which submissions are barriers: the unverified peek --------------------------------


def test_claimed_type_reads_the_header_and_refuses_nothing_it_cannot_read(
    region: DemoRegion,
) -> None:
    sender = region.identities["lansstyrelsen-stockholm"]
    activation = build_as(region, sender, message_type=MessageType.ACTIVATION, incident="storm-1")
    report = build_as(region, sender)
    assert claimed_type(activation) == "activation"
    assert claimed_type(report) == "situation_report"
    header, wraps, body = split(report).sections
    hostile = [
        b"",
        b"SSR",
        b"SSR\x01E" + b"\xff" * 64,  # not a frame
        report[:-1],  # truncated
        resign(sender, (b"[" * 50_000 + b"]" * 50_000, wraps, body)),  # too deep, too large
        resign(sender, (b"[" * 4_000 + b"]" * 4_000, wraps, body)),  # deep, within bounds
        resign(sender, (b'{"type": {"nested": 1}}', wraps, body)),
        resign(sender, (b'["activation"]', wraps, body)),
        resign(sender, (b"\xff\xfe not json", wraps, body)),
    ]
    assert [claimed_type(data) for data in hostile] == [None] * len(hostile)
    # A forged claim is read as claimed (it only makes the submission a barrier); the
    # decision is made on the verified header.
    forged = resign(sender, (header.replace(b"situation_report", b"activation"), wraps, body))
    assert claimed_type(forged) == "activation"


def test_a_router_routes_state_changes_and_directory_versions_alone(region: DemoRegion) -> None:
    router = Router(
        bus=None,  # type: ignore[arg-type]
        state=BrokerState(
            directory=region.directory, policy=Policy(), pinned_authority=region.authority.public
        ),
        identity=region.broker,
        metrics=BrokerMetrics(CollectorRegistry()),
    )
    county = "lansstyrelsen-stockholm"
    on_own = subjects.submit_subject(county)
    sender = region.identities[county]
    for message_type in (MessageType.ACTIVATION, MessageType.INCIDENT_CLOSE):
        data = build_as(region, sender, message_type=message_type, incident="storm-1")
        assert router.is_barrier(on_own, data), message_type
    mode = build_as(region, sender, message_type=MessageType.MODE_CHANGE)
    assert router.is_barrier(on_own, mode)
    assert router.is_barrier(on_own, region.directory.raw)
    assert not router.is_barrier(on_own, build_as(region, sender))
    assert not router.is_barrier(on_own, b"SSR\x01R" + b"\x00" * 40)  # a receipt
    assert not router.is_barrier(on_own, b"junk")

    # Only a claim its sender signed, on its own subject: forged, re-signed by someone
    # else, or published on another actor's subject, it is routed like any other.
    header, wraps, body = split(mode).sections
    forged = split(build_as(region, sender))
    claim = forged.sections[0].replace(b"situation_report", b"mode_change")
    unsigned = reframe_keeping_signature(build_as(region, sender), (claim, *forged.sections[1:]))
    assert claimed_type(unsigned) == "mode_change"
    assert not router.is_barrier(on_own, unsigned)
    assert not router.is_barrier(on_own, resign(region.identities["nacka"], (header, wraps, body)))
    assert not router.is_barrier(subjects.submit_subject("nacka"), mode)
