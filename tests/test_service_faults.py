"""Fault scenarios against real nats-server processes: shared work, crashes, restarts.

Each scenario checks the delivery guarantee of DESIGN.md §7 where it matters:
every accepted (message, recipient) reaches the recipient's application exactly
once (the client drops message ids it has seen), nothing accepted is lost, and
JetStream's dedupe keeps each ``Nats-Msg-Id`` once in the deliver stream. Every
scenario is bounded (well under a minute each).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import pytest

from broker import subjects
from broker.core import Header, NoticeKind, ReceiptKind, make_receipt
from broker.demo import DemoRegion
from broker.embedded import EmbeddedNats
from broker.errors import NatsUnavailable
from broker.service import Service

from . import nats_fixtures, service_helpers
from .service_helpers import (
    Actors,
    BrokerFactory,
    audit_events,
    delivery_ids,
    header_of,
    metric,
    start_broker_process,
    stream_messages,
    wait_until,
    write_data_dir,
)

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory
actors = service_helpers.actors

pytestmark = pytest.mark.slow

SENDERS = ("nacka", "sos-alarm", "trafikverket", "solna", "lansstyrelsen-stockholm")
RECIPIENTS = ("stockholm", "huddinge", "polisen-stockholm", "region-stockholm")
SCENARIO_TIMEOUT = 45.0


def workload(net: Actors, count: int, per_message: int = 3) -> list[tuple[str, bytes, Header]]:
    """``count`` situation reports from rotating senders, each to ``per_message`` actors."""
    plan = []
    recipients = itertools.cycle(itertools.combinations(RECIPIENTS, per_message))
    for i, sender in zip(range(count), itertools.cycle(SENDERS), strict=False):
        data = net.envelope(sender, next(recipients), text=f"lägesbild {i}")
        plan.append((sender, data, header_of(data, net.directory)))
    return plan


async def publish_all(net: Actors, plan: list[tuple[str, bytes, Header]]) -> None:
    """Publish each submission once (dedupe id per message), retrying through outages."""
    for sender, data, header in plan:
        for attempt in range(200):
            try:
                await net.submit(sender, data, msg_id=f"submit.{header.id}")
                break
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                if attempt == 199:
                    raise
                await asyncio.sleep(0.05)


def accepted_count(net: Actors, plan: list[tuple[str, bytes, Header]]) -> int:
    return sum(bool(net[s].notices_for(h.id, NoticeKind.ACCEPTED)) for s, _, h in plan)


async def assert_exactly_once(net: Actors, plan: list[tuple[str, bytes, Header]]) -> Counter[str]:
    """Every message accepted once, every (message, recipient) at the application once.

    Returns the raw copies per "message/recipient" that arrived more than once (allowed
    after a crash: the application drops them).
    """
    await wait_until(
        lambda: accepted_count(net, plan) == len(plan),
        f"{len(plan)} accepted notices",
        timeout=SCENARIO_TIMEOUT,
    )
    for _, _, header in plan:
        await net.delivered(header.id, header.recipients, timeout=SCENARIO_TIMEOUT)
    rejected = [n for inbox in net.inboxes.values() for n in inbox.notices if n.kind != "accepted"]
    assert rejected == [], "nothing may be refused (a replay would mean a lost message)"
    expected = {(h.id, r) for _, _, h in plan for r in h.recipients}
    delivered = {(m, a) for a, inbox in net.inboxes.items() for m in inbox.deliveries}
    assert delivered == expected
    for sender, _, header in plan:
        assert len(net[sender].notices_for(header.id, NoticeKind.ACCEPTED)) == 1
    assert all(not inbox.refused for inbox in net.inboxes.values())

    assert net.js is not None
    ids = await delivery_ids(net.js)
    deliveries = {i: n for i, n in ids.items() if i.startswith("d.")}
    assert set(deliveries) == {f"d.{m}.{r}" for m, r in expected}
    assert {n for n in ids.values()} == {1}, "JetStream kept a Nats-Msg-Id twice"
    accepted = await audit_events(net.js, "accepted")
    assert Counter(e["message"] for e in accepted) == Counter(h.id for _, _, h in plan)
    return Counter(
        {
            f"{m}/{a}": n
            for a, inbox in net.inboxes.items()
            for m, n in inbox.copies.items()
            if n > 1
        }
    )


async def test_two_brokers_share_one_consumer_and_handle_each_message_once(
    broker_factory: BrokerFactory, actors: Actors
) -> None:
    started = time.monotonic()
    first = await broker_factory(fetch_batch=8)
    second = await broker_factory(fetch_batch=8)
    actors.receipts = False
    net = await actors.start()
    plan = workload(net, 200)

    await publish_all(net, plan)
    duplicates = await assert_exactly_once(net, plan)

    assert duplicates == Counter(), "no fault, so not even a raw duplicate"
    accepted = [
        metric(s, "ssr_broker_envelopes_accepted_total", status="actual") for s in (first, second)
    ]
    assert sum(accepted) == 200
    assert min(accepted) > 0, f"both brokers should have taken work: {accepted}"
    for service in (first, second):
        assert metric(service, "ssr_broker_consumer_redelivered_total") == 0
        assert metric(service, "ssr_broker_errors_total", stage="decide") == 0
    assert time.monotonic() - started < 30


async def test_broker_sigkilled_mid_stream_then_restarted_loses_and_duplicates_nothing(
    tmp_path: Path, nats_server: EmbeddedNats, live_region: DemoRegion, actors: Actors
) -> None:
    data_dir = tmp_path / "data"
    write_data_dir(data_dir, live_region)
    broker = await start_broker_process(data_dir, nats_server.url, ack_wait_s=2.0)
    restarted = None
    try:
        actors.receipts = False
        net = await actors.start()
        plan = workload(net, 300, per_message=4)
        await publish_all(net, plan)
        await wait_until(lambda: accepted_count(net, plan) >= 40, "routing under way")

        assert await broker.kill() == -9
        at_kill = accepted_count(net, plan)
        assert at_kill < len(plan), "the broker finished before it was killed"

        restarted = await start_broker_process(data_dir, nats_server.url, ack_wait_s=2.0)
        duplicates = await assert_exactly_once(net, plan)
    finally:
        await broker.kill()
        if restarted is not None:
            await restarted.kill()
    # Raw duplicates are allowed (and dropped by the client) only for what was in flight.
    assert sum(n - 1 for n in duplicates.values()) <= 16 * 4


async def test_nats_restart_mid_stream_loses_nothing_and_the_broker_reconnects(
    broker_factory: BrokerFactory, actors: Actors, nats_server: EmbeddedNats
) -> None:
    service = await broker_factory(ack_wait_s=3.0)
    actors.receipts = False
    net = await actors.start()
    plan = workload(net, 300)

    publisher = asyncio.create_task(publish_all(net, plan))
    try:
        await wait_until(lambda: accepted_count(net, plan) >= 60, "routing under way")
        await nats_server.restart()
        restarted = time.monotonic()
        await asyncio.wait_for(publisher, SCENARIO_TIMEOUT)
    finally:
        publisher.cancel()
    await assert_exactly_once(net, plan)
    # Requests in flight when the connection dropped are abandoned and retried, not waited
    # out for the 10 s request timeout; what remains is the retry delay and the ack wait.
    assert time.monotonic() - restarted < 9.0

    assert metric(service, "ssr_broker_nats_reconnects_total") >= 1
    assert metric(service, "ssr_broker_nats_disconnects_total") >= 1
    assert metric(service, "ssr_broker_nats_connected") == 1
    assert service.live()
    assert all(service.ready().values())
    # A submission whose ack died with the connection is routed again (idempotently) and
    # not counted again: the broker recognises its own interrupted attempt. It counts when
    # it claims the message id, so only a claim whose reply was lost in the restart itself
    # can go uncounted: never more than the plan, never fewer than plan - redeliveries.
    accepted = metric(service, "ssr_broker_envelopes_accepted_total", status="actual")
    redelivered = metric(service, "ssr_broker_consumer_redelivered_total")
    assert len(plan) - redelivered <= accepted <= len(plan)


async def test_a_stopped_broker_hands_its_in_flight_work_over_promptly(
    broker_factory: BrokerFactory, actors: Actors
) -> None:
    """A graceful stop must not leave fetched submissions waiting out the ack wait (30 s)."""
    first: Service = await broker_factory()
    actors.receipts = False
    net = await actors.start()
    plan = workload(net, 150)
    await publish_all(net, plan)
    await wait_until(lambda: accepted_count(net, plan) >= 10, "routing under way")

    await asyncio.wait_for(first.stop(), 10)
    stopped_at = accepted_count(net, plan)
    assert stopped_at < len(plan), "the broker finished before it was stopped"
    second = await broker_factory()

    started = time.monotonic()
    await wait_until(
        lambda: accepted_count(net, plan) == len(plan), "the second broker finishing", timeout=15
    )
    assert time.monotonic() - started < 10
    await assert_exactly_once(net, plan)
    assert metric(second, "ssr_broker_envelopes_accepted_total", status="actual") > 0


async def test_an_attempt_cut_off_after_the_claim_is_finished_not_refused_as_a_replay(
    broker_factory: BrokerFactory, actors: Actors
) -> None:
    """The broker claimed the message id, then lost NATS before the fan-out; the same
    submission comes back with a delivery count of one (a consumer-leader failover can
    forget the first delivery). It must be finished, not refused as a replay: the
    sender's publish was acknowledged, so refusing it would lose the message."""
    service = await broker_factory()
    actors.receipts = False
    net = await actors.start()
    router = service.router
    assert router is not None
    data = net.envelope("nacka", ["solna", "sos-alarm"])
    header = service_helpers.header_of(data, net.directory)
    fan_out = router._fan_out

    async def cut_off(decision: Any, **batch: Any) -> None:
        raise NatsUnavailable("the node went away")

    router._fan_out = cut_off  # type: ignore[method-assign]
    with pytest.raises(NatsUnavailable):
        await router.route(subjects.submit_subject("nacka"), data, redelivered=False, sequence=1)
    router._fan_out = fan_out  # type: ignore[method-assign]
    await router.route(subjects.submit_subject("nacka"), data, redelivered=False, sequence=1)
    await net.delivered(header.id, header.recipients)
    await wait_until(lambda: net["nacka"].notices_about(data), "the verdict")
    verdicts = [(n.kind, n.reason) for n in net["nacka"].notices_about(data)]
    assert verdicts == [(NoticeKind.ACCEPTED, None)]

    # The same bytes published again (another stream message) are a replay.
    await router.route(subjects.submit_subject("nacka"), data, redelivered=False, sequence=2)
    await wait_until(lambda: len(net["nacka"].notices_about(data)) == 2, "the replay verdict")
    assert net["nacka"].notices_about(data)[-1].reason == "replay"


async def test_a_receipt_recorded_but_cut_off_before_forwarding_is_forwarded_on_its_return(
    broker_factory: BrokerFactory, actors: Actors
) -> None:
    """The broker recorded a delivered receipt, then lost NATS before forwarding it; the
    same receipt submission comes back with a delivery count of one (a consumer-leader
    failover). It must reach the sender: acknowledging it unforwarded loses the receipt.
    A replay of it beyond the duplicate window is not forwarded again."""
    service = await broker_factory()
    actors.receipts = False
    net = await actors.start()
    router = service.router
    assert router is not None
    data = net.envelope("nacka", ["solna"])
    await net.submit("nacka", data)
    message_id = header_of(data, net.directory).id
    await net.delivered(message_id, ["solna"])
    message = net["solna"].deliveries[message_id]
    receipt = make_receipt(
        net.identity("solna"),
        message.header,
        message.header_hash,
        ReceiptKind.DELIVERED,
        at=service_helpers.now_ms(),
    )
    publish = router.bus.publish

    async def cut_off(subject: str, payload: bytes, *, msg_id: str) -> int:
        if subject == subjects.deliver_subject("nacka") and payload == receipt:
            raise NatsUnavailable("the node went away")
        return await publish(subject, payload, msg_id=msg_id)

    router.bus.publish = cut_off  # type: ignore[method-assign]
    with pytest.raises(NatsUnavailable):
        await router.route(subjects.submit_subject("solna"), receipt, redelivered=False, sequence=1)
    router.bus.publish = publish  # type: ignore[method-assign]
    assert net["nacka"].receipts == []
    await router.route(subjects.submit_subject("solna"), receipt, redelivered=False, sequence=1)
    await wait_until(lambda: len(net["nacka"].receipts) == 1, "the receipt forwarded")

    # Beyond the window (by the router's clock) the same bytes are recorded already and
    # not forwarded: the sender's delivery subject gets no second copy.
    router.resend_window_ms = 0
    forwarded = await stream_messages(
        router.bus.js, subjects.DELIVER_STREAM, subjects.deliver_subject("nacka")
    )
    await asyncio.sleep(0.01)
    await router.route(subjects.submit_subject("solna"), receipt, redelivered=False, sequence=2)
    again = await stream_messages(
        router.bus.js, subjects.DELIVER_STREAM, subjects.deliver_subject("nacka")
    )
    assert len(again) == len(forwarded)
