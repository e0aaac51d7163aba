"""Acceptance, issue 9 (reliability): five fault scenarios with Jepsen counts.

Each scenario records its figures with ``tests.acceptance.record`` (printed in one table
at the end of the run) and fails on any lost, unexpected, duplicate or unauthorised
delivery (see ``tests/acceptance.py`` for the vocabulary). Traffic is pre-built in the
test process (``tests/acceptance_helpers.py``: signed envelopes from random senders to
1-37 recipients, weighted to small fan-outs, one in 50 refused by the policy) and the
actors' side is the ``Actors`` stand-in, except in scenarios 4 and 5, which need real
clients (an on-disk outbox; a durable consumer that catches up).

    1 node kills    3-node cluster, R3; a random node SIGKILLed every few seconds while
                    envelopes are submitted, restarted, and rejoined before the next
                    kill; publishing resumes within 10 s of each kill
    2 broker crash  the broker SIGKILLed at 10 random points of the routing (envelopes
                    and their receipts) and restarted; receipts = deliveries; the audit
                    trail verifies
    3 pause         the leader of a stream SIGSTOPped for 5 s, three times (the submit,
                    deliver and audit streams in turn); the criteria of 1 and 2
    4 long outage   the whole cluster down for longer than the duplicate window while a
                    sending client keeps filling its outbox and is SIGKILLed twice (the
                    single-server scenario of test_client_outage.py, on the cluster)
    5 slow consumer a recipient offline for the whole run catches up completely;
                    envelopes at the size bound pass, one byte over is refused

The randomness of each scenario comes from its own recorded seed. The whole file is
budgeted at about five minutes of wall time on two cores: the envelope counts below
are the largest that fit (see each constant).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from broker import subjects
from broker.core import NoticeKind, save_identity
from broker.core import crypto as core_crypto
from broker.demo import DemoRegion
from broker.embedded import EmbeddedNats
from clients import Client

from . import nats_fixtures, service_helpers
from .acceptance import record
from .acceptance_helpers import (
    Network,
    Planned,
    Publisher,
    close,
    complete_audit,
    connect,
    consumer_state,
    envelope,
    fan_out_figures,
    jepsen_counts,
    plan_traffic,
    stored_ids,
    stream_leader,
    verified_audit,
    wait_for,
    wait_streams_current,
)
from .cluster_helpers import NatsCluster, start_cluster_broker
from .service_helpers import (
    BrokerFactory,
    BrokerProcess,
    audit_events,
    metric,
    start_broker_process,
    write_data_dir,
)
from .test_client_outage import Sender, broker_idle, layout_window

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory

pytestmark = pytest.mark.slow

RESUME_BOUND_S = 10.0  # publishing must resume this soon after each fault
ACK_WAIT_S = 2.0  # the brokers' ack wait: a killed broker's work comes back this soon
NO_WRONG_VERDICT = {
    "accepted_not_once": 0,
    "wrongly_refused": 0,
    "refusals_missed": 0,
    "replays_refused": 0,
}
SETTLE_S = 1.0  # after everything arrived: room for a late duplicate, were there one
DRAIN_TIMEOUT_S = 90.0  # the bound on routing what was submitted


@dataclass
class Fault:
    """One injected fault and how soon publishing came back."""

    target: str
    at: float  # monotonic
    held_s: float  # how long the node or broker was down (or paused)
    resumed_s: float | None = None
    rejoined_s: float = 0.0  # from the restart (or SIGCONT) to every stream current again
    note: str = ""

    def summary(self) -> str:
        resumed = "-" if self.resumed_s is None else f"{self.resumed_s:.1f}"
        return f"{self.target}{self.note}:{resumed}/{self.rejoined_s:.1f}"


async def stop_all(
    brokers: list[BrokerProcess],
    nets: list[Network],
    ncs: list[NatsClient],
    cluster: NatsCluster | None,
) -> None:
    for net in nets:
        await net.close()
    for nc in ncs:
        await close(nc)
    for broker in brokers:
        await broker.kill()
    if cluster is not None:
        await cluster.close()


async def drained(net: Network, plan: list[Planned], *, receipts: bool) -> float:
    """Wait until every submission got its notice and every authorised pair arrived (and,
    with ``receipts``, its delivered receipt reached the sender); returns the seconds."""
    pairs = sum(len(p.recipients) for p in plan if p.authorised)
    try:
        waited = await wait_for(
            lambda: (
                net.notices() >= len(plan)
                and net.deliveries() >= pairs
                and (not receipts or net.forwarded_receipts() >= pairs)
            ),
            f"{len(plan)} notices, {pairs} deliveries" + (" and receipts" if receipts else ""),
            timeout=DRAIN_TIMEOUT_S,
            interval=0.2,
        )
    except AssertionError as exc:
        assert net.js is not None
        delivered = net.delivered_pairs()
        verdicts = net.verdicts()
        missing = {
            p.message_id: (
                sorted(set(p.recipients) - {r for m, r in delivered if m == p.message_id}),
                verdicts.get(p.message_id),
            )
            for p in plan
            if p.authorised and not p.pairs <= delivered
        }
        raise AssertionError(
            f"{exc}: {net.notices()} notices, {net.deliveries()} deliveries, "
            f"{net.forwarded_receipts()} receipts, {net.pump_errors} pump errors; "
            f"{await consumer_state(net.js)}; undelivered (message: recipients, notices): "
            f"{dict(list(missing.items())[:10])}"
        ) from None
    await asyncio.sleep(SETTLE_S)
    return waited


def verdict_figures(net: Network, plan: list[Planned]) -> dict[str, int]:
    """What the senders were told: every authorised message accepted exactly once, every
    other one refused for its policy reason, and how many submissions came twice.

    A second copy of a submission is refused as a ``replay`` after the first was accepted
    (the broker's guard behind JetStream's dedupe): counted, not a failure; it delivers
    nothing.
    """
    verdicts = net.verdicts()
    accepted_not_once = wrongly_refused = refusals_missed = replays = 0
    for p in plan:
        kinds = verdicts.get(p.message_id, [])
        refusals = [r for k, r in kinds if k is NoticeKind.REJECTED and r != "replay"]
        replays += sum(r == "replay" for _, r in kinds)
        if p.authorised:
            accepted_not_once += sum(k is NoticeKind.ACCEPTED for k, _ in kinds) != 1
            wrongly_refused += bool(refusals)
        else:
            refusals_missed += refusals != ["recipient_not_cleared"]
    return {
        "accepted_not_once": accepted_not_once,
        "wrongly_refused": wrongly_refused,
        "refusals_missed": refusals_missed,
        "replays_refused": replays,
    }


# --- 1. NATS node kills ------------------------------------------------------------------------

S1_SEED = 9_001
# 5,000 envelopes (about 13,000 deliveries), submitted at S1_RATE so the stream lasts about
# 55 s and meets five or six kills: a kill cycle is the gap, the time down, and about 5 s
# for the restarted node to be current in every stream again (checked before the next
# kill, so never two nodes are down or behind at once). The two brokers route about 70
# envelopes/s here under the kills (R3, two cores): they finish about 30 s after the last
# submission.
S1_ENVELOPES = 5_000
S1_RATE = 90.0  # submissions per second
S1_GAP_S = (1.0, 3.0)  # from a node's rejoining to the next kill
S1_DOWN_S = (1.0, 2.5)  # how long a killed node stays down
S1_MAX_KILLS = 12
S1_TIMEOUT_S = 170.0


async def test_1_nats_node_kills_lose_nothing_and_publishing_resumes(
    tmp_path: Path, live_region: DemoRegion
) -> None:
    started = time.monotonic()
    rng = random.Random(S1_SEED)
    cluster = NatsCluster(tmp_path / "cluster")
    brokers: list[BrokerProcess] = []
    nets: list[Network] = []
    ncs: list[NatsClient] = []
    faults: list[Fault] = []
    publishing: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(S1_TIMEOUT_S):
            await cluster.start()
            urls = cluster.urls
            for name in ("broker-a", "broker-b"):
                write_data_dir(tmp_path / name, live_region)
                brokers.append(
                    await start_cluster_broker(tmp_path / name, urls, ack_wait_s=ACK_WAIT_S)
                )
            plan = plan_traffic(live_region, S1_ENVELOPES, rng)
            net = Network(urls, live_region, receipts=False)
            nets.append(await net.start())
            observer = await connect(urls, "test-observer")
            publisher_nc = await connect(urls, "test-publisher")
            ncs += [observer, publisher_nc]
            observer_js = observer.jetstream(timeout=2.0)
            publisher = Publisher(publisher_nc.jetstream(timeout=5.0))
            publishing = asyncio.create_task(publisher.run(plan, rate=S1_RATE), name="publish")
            publish_started = time.monotonic()

            def left_s() -> float:  # seconds of submissions still to go at the set rate
                return (len(plan) - len(publisher.acked)) / S1_RATE

            while len(faults) < S1_MAX_KILLS:
                await asyncio.sleep(rng.uniform(*S1_GAP_S))
                if publishing.done() or left_s() < RESUME_BOUND_S:
                    break  # a kill now could outlast the submissions it is measured by
                victim = rng.choice(cluster.nodes)
                leads = await stream_leader(observer_js, subjects.SUBMIT_STREAM)
                victim.kill()
                fault = Fault(victim.server_name, time.monotonic(), rng.uniform(*S1_DOWN_S))
                fault.note = "*" if leads == victim.server_name else ""
                faults.append(fault)
                await asyncio.sleep(fault.held_s)
                await victim.restart()
                back = time.monotonic()
                await cluster.wait_for_meta_leader()
                await wait_streams_current(observer_js)
                fault.rejoined_s = time.monotonic() - back
            publisher.unpaced.set()
            await publishing
            publish_s = time.monotonic() - publish_started
            drain_s = await drained(net, plan, receipts=False)
            assert net.js is not None
            stored = await stored_ids(net.js)
    finally:
        if publishing is not None:
            publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await publishing
        await stop_all(brokers, nets, ncs, cluster)

    for fault in faults:
        fault.resumed_s = publisher.resumed_after(fault.at)
    resumed = [f.resumed_s for f in faults]
    counts = jepsen_counts(plan, publisher.acked, net, stored)
    verdicts = verdict_figures(net, plan)
    record(
        "reliability 1: NATS node kills",
        seed=S1_SEED,
        **fan_out_figures(plan),
        kills=len(faults),
        killed=" ".join(f.summary() for f in faults),
        resume_max_s=max((r for r in resumed if r is not None), default=-1.0),
        **counts,
        **verdicts,
        publish_retries=publisher.failed_attempts,
        publish_s=round(publish_s, 1),
        drain_after_publish_s=round(drain_s, 1),
        wall_s=round(time.monotonic() - started, 1),
    )
    assert len(faults) >= 3, "the stream was too short for the kills"
    assert None not in resumed, resumed
    assert max(r for r in resumed if r is not None) < RESUME_BOUND_S, resumed
    assert (counts["lost"], counts["unexpected"], counts["duplicate"]) == (0, 0, 0), counts
    assert counts["unauthorised"] == 0, counts
    assert counts["acked"] == len(plan)
    assert verdicts | {"replays_refused": 0} == NO_WRONG_VERDICT, verdicts


# --- 2. broker crash ---------------------------------------------------------------------------

S2_SEED = 9_002
# 5,000 envelopes and their ~13,000 receipts (each receipt is a submission the broker
# routes too): with routing in lanes (broker/lanes.py) about 120 s with the ten kills on
# two shared cores (it was 167 s when one broker routed one submission at a time).
S2_ENVELOPES = 5_000
S2_KILLS = 10
S2_KILL_SPAN = (0.05, 0.9)  # kill points: fractions of the routing work, drawn at random
S2_KILL_JITTER_S = 0.1  # and a random delay after each point, so kills land anywhere
S2_TIMEOUT_S = 260.0


async def test_2_broker_sigkilled_ten_times_delivers_every_pair_once_with_receipts(
    tmp_path: Path, nats_server: EmbeddedNats, live_region: DemoRegion
) -> None:
    started = time.monotonic()
    rng = random.Random(S2_SEED)
    data_dir = tmp_path / "broker"
    write_data_dir(data_dir, live_region)
    brokers: list[BrokerProcess] = []
    nets: list[Network] = []
    ncs: list[NatsClient] = []
    faults: list[Fault] = []
    publishing: asyncio.Task[None] | None = None
    url = nats_server.url
    try:
        async with asyncio.timeout(S2_TIMEOUT_S):
            brokers.append(await start_broker_process(data_dir, url, ack_wait_s=ACK_WAIT_S))
            fractions = sorted(rng.uniform(*S2_KILL_SPAN) for _ in range(S2_KILLS))
            plan = plan_traffic(live_region, S2_ENVELOPES, rng)
            pairs = sum(len(p.recipients) for p in plan if p.authorised)
            net = Network([url], live_region, receipts=True)
            nets.append(await net.start())
            publisher_nc = await connect([url], "test-publisher")
            ncs.append(publisher_nc)
            publisher = Publisher(publisher_nc.jetstream(timeout=5.0))
            publishing = asyncio.create_task(publisher.run(plan), name="publish")

            # The routing work: one notice per envelope, one forwarded receipt per pair.
            work = len(plan) + pairs
            points = [int(work * f) for f in fractions]
            progress_at_kill = []
            for point in points:
                await wait_for(
                    lambda point=point: net.notices() + net.forwarded_receipts() >= point,
                    f"routing progress {point}/{work}",
                    timeout=DRAIN_TIMEOUT_S,
                    interval=0.02,
                )
                await asyncio.sleep(rng.uniform(0, S2_KILL_JITTER_S))
                progress_at_kill.append(net.notices() + net.forwarded_receipts())
                victim = brokers[-1]
                assert await victim.kill() == -9
                killed_at = time.monotonic()
                brokers.append(await start_broker_process(data_dir, url, ack_wait_s=ACK_WAIT_S))
                faults.append(Fault(f"pid {victim.pid}", killed_at, time.monotonic() - killed_at))
            await publishing
            drain_s = await drained(net, plan, receipts=True)
            assert net.js is not None
            stored = await stored_ids(net.js)
            audited, audit_lag_s = await complete_audit(net.js, plan)
            report = await verified_audit([url], live_region.authority.public)
    finally:
        if publishing is not None:
            publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await publishing
        await stop_all(brokers, nets, ncs, None)

    counts = jepsen_counts(plan, publisher.acked, net, stored)
    verdicts = verdict_figures(net, plan)
    authorised = {pair for p in plan if p.authorised for pair in p.pairs}
    receipts = net.receipt_pairs()
    record(
        "reliability 2: broker crash",
        seed=S2_SEED,
        **fan_out_figures(plan),
        broker_kills=len(faults),
        kill_points=" ".join(f"{100 * p / work:.0f}%" for p in progress_at_kill),
        broker_restart_s_max=round(max(f.held_s for f in faults), 2),
        **counts,
        **verdicts,
        receipts=sum(receipts.values()),
        receipt_retries=net.receipt_retries,
        audit_receipt_events=sum(audited.receipts.values()),
        audit_lag_s=round(audit_lag_s, 1),
        audit_events=report.events,
        audit_verified=report.verified,
        drain_after_last_kill_s=round(drain_s, 1),
        wall_s=round(time.monotonic() - started, 1),
    )
    assert len(faults) == S2_KILLS
    assert (counts["lost"], counts["unexpected"], counts["duplicate"]) == (0, 0, 0), counts
    assert counts["unauthorised"] == 0, counts
    assert verdicts | {"replays_refused": 0} == NO_WRONG_VERDICT, verdicts
    assert net.delivered_pairs() == authorised  # every authorised pair exactly once
    assert set(receipts) == authorised  # receipts = deliveries
    assert set(receipts.values()) == {1}
    assert audited.receipts == Counter(dict.fromkeys(authorised, 1))
    assert audited.accepted == Counter(p.message_id for p in plan if p.authorised)
    assert audited.rejected == Counter(p.message_id for p in plan if not p.authorised)
    assert set(audited.reasons) <= {"recipient_not_cleared", "replay"}
    assert net.receipts_given_up == 0
    assert report.verified, report.as_dict()["findings"]


# --- 3. pause -----------------------------------------------------------------------------------

S3_SEED = 9_003
# 1,200 envelopes with receipts, at S3_RATE while the pauses go on (three 5-second pauses
# with the cluster current again in between take about 30 s), then the rest at once.
S3_ENVELOPES = 1_200
S3_RATE = 25.0
S3_PAUSE_S = 5.0
S3_STREAMS = (subjects.SUBMIT_STREAM, subjects.DELIVER_STREAM, subjects.AUDIT_STREAM)
S3_GAP_S = (1.5, 3.0)  # from the cluster being current again to the next pause
S3_TIMEOUT_S = 150.0


async def test_3_stream_leader_paused_three_times_loses_nothing(
    tmp_path: Path, live_region: DemoRegion
) -> None:
    started = time.monotonic()
    rng = random.Random(S3_SEED)
    cluster = NatsCluster(tmp_path / "cluster")
    brokers: list[BrokerProcess] = []
    nets: list[Network] = []
    ncs: list[NatsClient] = []
    faults: list[Fault] = []
    publishing: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(S3_TIMEOUT_S):
            await cluster.start()
            urls = cluster.urls
            for name in ("broker-a", "broker-b"):
                write_data_dir(tmp_path / name, live_region)
                brokers.append(
                    await start_cluster_broker(tmp_path / name, urls, ack_wait_s=ACK_WAIT_S)
                )
            plan = plan_traffic(live_region, S3_ENVELOPES, rng)
            net = Network(urls, live_region, receipts=True)
            nets.append(await net.start())
            observer = await connect(urls, "test-observer")
            publisher_nc = await connect(urls, "test-publisher")
            ncs += [observer, publisher_nc]
            observer_js = observer.jetstream(timeout=2.0)
            publisher = Publisher(publisher_nc.jetstream(timeout=5.0))
            publishing = asyncio.create_task(publisher.run(plan, rate=S3_RATE), name="publish")

            for stream in S3_STREAMS:
                await asyncio.sleep(rng.uniform(*S3_GAP_S))
                assert not publishing.done(), "the stream ended before the pauses did"
                leader = cluster.node(await stream_leader(observer_js, stream))
                await leader.pause()
                fault = Fault(f"{leader.server_name}/{stream}", time.monotonic(), S3_PAUSE_S)
                faults.append(fault)
                await asyncio.sleep(S3_PAUSE_S)
                await leader.resume()
                await cluster.wait_for_meta_leader()
                await wait_streams_current(observer_js)
                fault.rejoined_s = time.monotonic() - fault.at - S3_PAUSE_S
            await wait_for(
                lambda: publisher.resumed_after(faults[-1].at) is not None,
                "publishing to resume after the last pause",
                timeout=2 * RESUME_BOUND_S,
            )
            publisher.unpaced.set()
            await publishing
            drain_s = await drained(net, plan, receipts=True)
            assert net.js is not None
            stored = await stored_ids(net.js)
            audited, audit_lag_s = await complete_audit(net.js, plan)
            report = await verified_audit(urls, live_region.authority.public)
    finally:
        if publishing is not None:
            publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await publishing
        await stop_all(brokers, nets, ncs, cluster)

    for fault in faults:
        fault.resumed_s = publisher.resumed_after(fault.at)
    resumed = [f.resumed_s for f in faults]
    counts = jepsen_counts(plan, publisher.acked, net, stored)
    verdicts = verdict_figures(net, plan)
    authorised = {pair for p in plan if p.authorised for pair in p.pairs}
    receipts = net.receipt_pairs()
    record(
        "reliability 3: leader paused",
        seed=S3_SEED,
        **fan_out_figures(plan),
        pauses=len(faults),
        paused=" ".join(f.summary() for f in faults),
        resume_max_s=max((r for r in resumed if r is not None), default=-1.0),
        **counts,
        **verdicts,
        receipts=sum(receipts.values()),
        receipt_retries=net.receipt_retries,
        audit_receipt_events=sum(audited.receipts.values()),
        audit_lag_s=round(audit_lag_s, 1),
        audit_events=report.events,
        audit_verified=report.verified,
        publish_retries=publisher.failed_attempts,
        drain_after_publish_s=round(drain_s, 1),
        wall_s=round(time.monotonic() - started, 1),
    )
    assert len(faults) == len(S3_STREAMS)
    assert None not in resumed, resumed
    assert max(r for r in resumed if r is not None) < RESUME_BOUND_S, resumed
    assert (counts["lost"], counts["unexpected"], counts["duplicate"]) == (0, 0, 0), counts
    assert counts["unauthorised"] == 0, counts
    assert verdicts | {"replays_refused": 0} == NO_WRONG_VERDICT, verdicts
    assert net.delivered_pairs() == authorised
    assert set(receipts) == authorised
    assert set(receipts.values()) == {1}
    assert audited.receipts == Counter(dict.fromkeys(authorised, 1))
    assert audited.accepted == Counter(p.message_id for p in plan if p.authorised)
    assert audited.rejected == Counter(p.message_id for p in plan if not p.authorised)
    assert net.receipts_given_up == 0
    assert report.verified, report.as_dict()["findings"]


# --- 4. long outage -------------------------------------------------------------------------

S4_COUNT = 60
S4_WINDOW_S = 2.0  # the streams' duplicate window; the outage lasts well beyond it
S4_STEP_S = 20.0
S4_FINISH_S = 60.0
S4_TIMEOUT_S = 120.0


async def test_4_whole_cluster_down_beyond_the_duplicate_window_sender_killed_twice(
    tmp_path: Path, live_region: DemoRegion
) -> None:
    """test_client_outage.py's scenario on the 3-node cluster: the sender (one state folder,
    three lives) keeps sending into its outbox while every node is down."""
    started = time.monotonic()
    cluster = NatsCluster(tmp_path / "cluster")
    brokers: list[BrokerProcess] = []
    ncs: list[NatsClient] = []
    senders: list[Sender] = []
    received: list[tuple[int, str]] = []
    recipient: Client | None = None
    collector: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(S4_TIMEOUT_S):
            await cluster.start()
            urls = cluster.urls
            write_data_dir(tmp_path / "broker", live_region)
            brokers.append(
                await start_cluster_broker(
                    tmp_path / "broker",
                    urls,
                    ack_wait_s=ACK_WAIT_S,
                    duplicate_window_s=S4_WINDOW_S,
                )
            )
            nc = await connect(urls, "test-observer")
            ncs.append(nc)
            js = nc.jetstream(timeout=5.0)
            assert await layout_window(js) == {S4_WINDOW_S}
            recipient = Client.connect(
                servers=urls,
                actor="solna",
                keys=live_region.identities["solna"],
                authority_key=live_region.authority.public,
                state_dir=tmp_path / "solna",
                connect_timeout=S4_STEP_S,
            )
            await asyncio.wait_for(recipient.start(), S4_STEP_S)

            async def collect() -> None:
                assert recipient is not None
                async for message in recipient.messages():
                    received.append((message.json()["index"], message.id))

            collector = asyncio.create_task(collect(), name="collect")
            key = tmp_path / "nacka.key"
            save_identity(key, live_region.identities["nacka"])
            state = tmp_path / "sender"
            args = [
                *("--server", cluster.nodes[0].url, "--actor", "nacka", "--key", str(key)),
                *("--authority", live_region.authority.public.hex()),
                *("--state-dir", str(state), "--to", "solna", "--count", str(S4_COUNT)),
            ]
            log = tmp_path / "sender.log"

            # Life 1: online; its publisher freezes after JetStream stored one message.
            senders.append(first := await Sender.start(args, log))
            assert await first.wait_for("ready ") == "ready online"
            await first.wait_sent(10)
            (state / "freeze").touch()
            frozen = (await first.wait_for("frozen ")).split()[1]
            await wait_for(
                lambda: frozen in {m for _, m in received},
                "the frozen message reaching the recipient",
                timeout=S4_STEP_S,
            )
            await broker_idle(js)
            for node in cluster.nodes:  # the whole cluster crashes
                node.kill()
            outage = time.monotonic()
            at = len(first.sent)
            await first.wait_sent(at + 3)  # sending on into the outbox while NATS is down
            held_1 = await first.hold_and_kill(state / "hold")
            (state / "freeze").unlink()

            # Life 2: offline from its cached directory; killed after the window passed.
            senders.append(second := await Sender.start(args, log))
            assert await second.wait_for("ready ") == "ready offline"
            await second.wait_sent(5)
            await wait_for(
                lambda: time.monotonic() - outage > S4_WINDOW_S + 1.0,
                "the duplicate window passing",
                timeout=S4_STEP_S,
            )
            held_2 = await second.hold_and_kill(state / "hold")

            # Life 3: offline again; the cluster comes back and the sender finishes.
            senders.append(third := await Sender.start(args, log))
            assert await third.wait_for("ready ") == "ready offline"
            await third.wait_sent(3)
            await asyncio.gather(*(node.restart() for node in cluster.nodes))
            outage_s = time.monotonic() - outage
            await cluster.wait_for_meta_leader()
            await third.wait_for("done", timeout=S4_FINISH_S)
            await wait_for(
                lambda: len(received) >= S4_COUNT,
                f"{S4_COUNT} messages received",
                timeout=S4_STEP_S,
            )
            await broker_idle(js)
            await asyncio.sleep(SETTLE_S)
            drained_s = time.monotonic() - outage - outage_s
            replays = await audit_events(js, "rejected")
            accepted = Counter(e["message"] for e in await audit_events(js, "accepted"))
            stored = await stored_ids(js)
    finally:
        for sender in senders:
            await sender.kill()
        if collector is not None:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
        if recipient is not None:
            await recipient.close()
        await stop_all(brokers, [], ncs, cluster)

    sent: dict[int, str] = {}
    for sender in senders:
        for index, message_id in sender.sent.items():
            assert index not in sent, f"index {index} sent twice"
            sent[index] = message_id
    copies = Counter(index for index, _ in received)
    order_kept = [index for index, _ in received] == sorted(copies)
    figures = {
        "lost": len(set(sent) - set(copies)),
        "unexpected": sum(sent.get(i) != m for i, m in received),
        "duplicate": sum(n - 1 for n in copies.values())
        + sum(n > 1 for k, n in stored.items() if k.startswith("d.")),
    }
    record(
        "reliability 4: long outage",
        sent=len(sent),
        received=len(received),
        outage_s=round(outage_s, 1),
        duplicate_window_s=S4_WINDOW_S,
        sender_kills=2,
        outbox_depth_at_kills=f"{held_1.split()[2]} {held_2.split()[2]}",
        **figures,
        order_kept=order_kept,
        replays_refused=sum(e["reason"] == "replay" for e in replays),
        drain_after_outage_s=round(drained_s, 1),
        wall_s=round(time.monotonic() - started, 1),
    )
    assert sorted(sent) == list(range(S4_COUNT))
    assert figures == {"lost": 0, "unexpected": 0, "duplicate": 0}, figures
    assert order_kept, [index for index, _ in received]
    # The frozen message went to JetStream twice, the second time after the window: the
    # broker refused that copy as a replay and delivered the message once.
    assert [(e["reason"], e["message"]) for e in replays] == [("replay", frozen)]
    assert accepted == Counter(sent.values())


# --- 5. slow consumer and large messages ------------------------------------------------------

S5_SEED = 9_005
S5_COUNT = 400  # envelopes to the offline recipient (the sized ones among them)
S5_SENDERS = ("nacka", "sos-alarm", "trafikverket")
S5_AT_BOUND = 4  # envelopes of exactly the policy's max_envelope_bytes
S5_CATCH_UP_S = 60.0
S5_TIMEOUT_S = 120.0
OFFLINE = "solna"


def sized_envelope(
    region: DemoRegion, sender: str, to: list[str], index: int, size: int
) -> tuple[bytes, bytes]:
    """An envelope of exactly ``size`` bytes, and its payload (the padding in the payload
    grows the ciphertext byte for byte)."""
    pad = 0
    for _ in range(4):
        payload = json.dumps({"index": index, "pad": "x" * pad}).encode()
        data = envelope(region, sender, to, payload)
        if len(data) == size:
            return data, payload
        pad += size - len(data)
    raise AssertionError(f"no envelope of exactly {size} bytes")


async def test_5_offline_recipient_catches_up_and_the_size_bound_holds(
    tmp_path: Path,
    broker_factory: BrokerFactory,
    nats_server: EmbeddedNats,
    live_region: DemoRegion,
) -> None:
    started = time.monotonic()
    rng = random.Random(S5_SEED)
    broker = await broker_factory()
    assert broker.router is not None
    bound = broker.router.state.policy.limits.max_envelope_bytes
    url = nats_server.url
    actors = sorted(live_region.identities)

    def offline_client() -> Client:
        return Client.connect(
            servers=[url],
            actor=OFFLINE,
            keys=live_region.identities[OFFLINE],
            authority_key=live_region.authority.public,
            state_dir=tmp_path / OFFLINE,
            connect_timeout=10.0,
        )

    # The recipient's system registers (its durable consumer exists), then goes offline.
    async with offline_client():
        pass

    sized_at = set(rng.sample(range(1, S5_COUNT), S5_AT_BOUND))
    plan: list[Planned] = []
    sized_digests: dict[int, str] = {}
    for index in range(S5_COUNT):
        sender = S5_SENDERS[index % len(S5_SENDERS)]
        if index in sized_at:
            to = [OFFLINE]
            data, payload = sized_envelope(live_region, sender, to, index, bound)
            sized_digests[index] = core_crypto.sha256(payload).hex()
        else:
            others = rng.sample([a for a in actors if a != OFFLINE], rng.randint(0, 3))
            to = [OFFLINE, *others]
            data = envelope(live_region, sender, to, json.dumps({"index": index}).encode())
        header = service_helpers.header_of(data, live_region.directory)
        plan.append(Planned(index, sender, data, header.id, header.recipients, True))
    over, _ = sized_envelope(live_region, "nacka", [OFFLINE], S5_COUNT, bound + 1)
    over_id = service_helpers.header_of(over, live_region.directory).id
    plan.append(Planned(S5_COUNT, "nacka", over, over_id, (OFFLINE,), False))

    net = Network([url], live_region, receipts=True, silent=[OFFLINE])
    publisher_nc = await connect([url], "test-publisher")
    received: list[tuple[int, str, str, str]] = []  # index, id, sender, payload digest
    try:
        async with asyncio.timeout(S5_TIMEOUT_S):
            await net.start()
            publisher = Publisher(publisher_nc.jetstream(timeout=10.0))
            await publisher.run(plan)
            await wait_for(
                lambda: net.notices() >= len(plan), "every notice", timeout=S5_CATCH_UP_S
            )
            (refusal,) = net["nacka"].notices_about(over)  # the one-byte-over envelope
            assert net.js is not None
            refused_events = await audit_events(net.js, "rejected")
            backlog = S5_COUNT

            catch_up_started = time.monotonic()
            async with offline_client() as recipient:

                async def collect() -> None:
                    async for message in recipient.messages():
                        digest = core_crypto.sha256(message.payload).hex()
                        index = message.json()["index"]
                        received.append((index, message.id, message.sender, digest))

                collector = asyncio.create_task(collect(), name="collect")
                try:
                    await wait_for(
                        lambda: len(received) >= backlog,
                        f"{backlog} messages caught up",
                        timeout=S5_CATCH_UP_S,
                        interval=0.05,
                    )
                    catch_up_s = time.monotonic() - catch_up_started
                    await asyncio.sleep(SETTLE_S)
                finally:
                    collector.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await collector
    finally:
        await close(publisher_nc)
        await net.close()

    expected = {p.message_id: p for p in plan if p.authorised}
    ids = Counter(m for _, m, _, _ in received)
    per_sender: dict[str, list[int]] = {}
    for index, _, sender, _ in received:
        per_sender.setdefault(sender, []).append(index)
    order_kept = all(seq == sorted(seq) for seq in per_sender.values())
    at_bound = [i for i, _, _, digest in received if sized_digests.get(i) == digest]
    figures = {
        "lost": len(set(expected) - set(ids)),
        "unexpected": sum(m not in expected for m in ids),
        "duplicate": sum(n - 1 for n in ids.values()),
    }
    record(
        "reliability 5: slow consumer, size bound",
        seed=S5_SEED,
        backlog=backlog,
        backlog_mib=round(sum(len(p.data) for p in expected.values()) / 2**20, 1),
        caught_up=len(ids),
        catch_up_s=round(catch_up_s, 1),
        catch_up_per_s=round(len(received) / catch_up_s),
        **figures,
        order_kept=order_kept,
        bound_bytes=bound,
        at_bound_delivered=len(at_bound),
        over_bound_refused=f"{refusal.kind.value}:{refusal.reason}",
        refusal_detail=refusal.detail,
        wall_s=round(time.monotonic() - started, 1),
    )
    assert figures == {"lost": 0, "unexpected": 0, "duplicate": 0}, figures
    assert order_kept, per_sender
    assert len(at_bound) == S5_AT_BOUND
    assert over_id not in ids
    assert (refusal.kind, refusal.reason) == (NoticeKind.REJECTED, "too_large")
    assert str(bound + 1) in refusal.detail, refusal.detail
    assert str(bound) in refusal.detail, refusal.detail
    assert (
        metric(broker, "ssr_broker_envelopes_rejected_total", reason="too_large", status="actual")
        == 1
    )
    assert [(e["reason"], e["actor"]) for e in refused_events] == [("too_large", "nacka")]
