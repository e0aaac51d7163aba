"""Failover on a real 3-node NATS cluster with R3 streams (DESIGN.md §3 and §10).

Three clustered nats-servers with JetStream on loopback, two broker processes
sharing the work (``StreamSettings(replicas=3)``, all three URLs) and two
:class:`clients.Client` instances, the sender ``nacka`` and the recipient
``solna``, both given all three URLs. The scenario:

    warm-up     a few messages flow end to end
    stream      numbered messages, paced; meanwhile
      - one NATS node is SIGKILLed, later restarted
      - one broker process is SIGKILLed (the other carries on)
    verdict     every message reached the recipient's application exactly once
                (lost 0, duplicate 0, unexpected 0) and the sender's outbox got a
                JetStream acknowledgement again soon after the node kill

Two victims, one run each:

- ``follower``: a node that does not lead the submit stream, the sender's own
  node when it is one. The sender fails over to another server; publishing must
  resume within 10 s (it takes well under one).
- ``submit-leader``: the node leading the submit stream. No publish is stored
  until the two survivors elect a new stream leader (Raft election, 3-6 s
  observed); the client retries a failed publish after 0.2 s doubling up to 1 s
  (``clients/client.py``, ``PUBLISH_RETRY_MAX_S``), so publishing resumes about a
  second after the election: within 10 s here too.

Only processes this test started are signalled, by their own pid; every wait is
bounded and the whole file takes well under two minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from pathlib import Path

import nats
import pytest

from broker import subjects
from broker.demo import DemoRegion
from clients import Client, SendHandle, SendState

from . import service_helpers
from .cluster_helpers import NatsCluster, start_cluster_broker
from .nats_fixtures import connect_options
from .service_helpers import BrokerProcess, wait_until, write_data_dir

live_region = service_helpers.live_region

WARM_UP = 10  # messages sent and received before any fault
COUNT = 150  # numbered messages in the faulted stream
PACE_S = 0.05  # between two sends: the stream lasts about 7.5 s
NODE_KILL_AT = 30  # index (within the stream) at which a NATS node is SIGKILLed
NODE_DOWN_S = 3.0  # how long the node stays dead before it is restarted
BROKER_KILL_AT = 110  # index at which a broker process is SIGKILLed
# Publishing must resume within this long after the node kill (see the module docstring).
RESUME_BOUND_S = {"follower": 10.0, "submit-leader": 10.0}
ACK_WAIT_S = 2.0  # brokers' ack wait: a killed broker's work comes back this soon
STEP_TIMEOUT = 30.0  # the bound on each step
SCENARIO_TIMEOUT = 100.0  # the bound on the whole scenario
POLL_S = 0.01


def client(region: DemoRegion, actor: str, urls: list[str], state_dir: Path) -> Client:
    return Client.connect(
        servers=urls,
        actor=actor,
        keys=region.identities[actor],
        authority_key=region.authority.public,
        state_dir=state_dir,
        connect_timeout=STEP_TIMEOUT,
    )


def connected_port(c: Client) -> int | None:
    """The client port of the server ``c`` is connected to (a test peeks at the transport)."""
    transport = c._transport
    url = transport.bus.nc.connected_url if transport is not None else None
    return url.port if url is not None else None


async def submit_leader(urls: list[str]) -> str:
    """The server name of the node leading the submit stream (where publishes land)."""
    nc = await nats.connect(urls, **connect_options(name="test-cluster"))
    try:
        info = await nc.jetstream(timeout=5.0).stream_info(subjects.SUBMIT_STREAM)
        assert info.cluster is not None
        assert info.cluster.leader, info.cluster
        assert len(info.cluster.replicas or []) == 2, "the submit stream is not R3"
        return info.cluster.leader
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(nc.close(), 5.0)


class SubmitWatch:
    """When each send handle first left QUEUED (JetStream stored it), polled every 10 ms."""

    def __init__(self) -> None:
        self.handles: dict[int, SendHandle] = {}
        self.sent_at: dict[int, float] = {}  # index -> when send() returned
        self.stored_at: dict[int, float] = {}  # index -> when it was seen stored
        self._task: asyncio.Task[None] | None = None

    def add(self, index: int, handle: SendHandle) -> None:
        self.handles[index] = handle
        self.sent_at[index] = time.monotonic()

    def start(self) -> None:
        self._task = asyncio.create_task(self._poll(), name="submit-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self) -> None:
        while True:
            now = time.monotonic()
            for index, handle in self.handles.items():
                if index not in self.stored_at and handle.state is not SendState.QUEUED:
                    self.stored_at[index] = now
            await asyncio.sleep(POLL_S)

    def resumed_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the first store of a message sent after it."""
        later = [at for i, at in self.stored_at.items() if self.sent_at[i] >= moment]
        return min(later) - moment if later else None


@pytest.mark.slow
@pytest.mark.parametrize("victim_role", ["follower", "submit-leader"])
async def test_cluster_node_and_broker_killed_mid_stream_deliver_exactly_once(
    tmp_path: Path, live_region: DemoRegion, victim_role: str
) -> None:
    started = time.monotonic()
    cluster = NatsCluster(tmp_path / "cluster")
    brokers: list[BrokerProcess] = []
    clients: list[Client] = []
    received: list[tuple[int, str]] = []  # (index, message id) as the application got them
    watch = SubmitWatch()
    collector: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            await cluster.start()
            urls = cluster.urls
            for name in ("broker-a", "broker-b"):
                write_data_dir(tmp_path / name, live_region)
                brokers.append(
                    await start_cluster_broker(tmp_path / name, urls, ack_wait_s=ACK_WAIT_S)
                )
            recipient = client(live_region, "solna", urls, tmp_path / "solna")
            sender = client(live_region, "nacka", urls, tmp_path / "nacka")
            for c in (recipient, sender):
                clients.append(c)
                await asyncio.wait_for(c.start(), STEP_TIMEOUT)

            async def collect() -> None:
                async for message in recipient.messages():
                    received.append((message.json()["index"], message.id))

            collector = asyncio.create_task(collect(), name="collect")
            watch.start()

            async def send(index: int) -> None:
                handle = await sender.send(
                    to=["solna"],
                    payload={"index": index},
                    label="INTERN",
                    tlp="GREEN",
                    type="situation_report",
                )
                watch.add(index, handle)

            # Warm-up: messages flow end to end before any fault.
            for index in range(WARM_UP):
                await send(index)
            await wait_until(
                lambda: len(received) >= WARM_UP, "the warm-up messages", timeout=STEP_TIMEOUT
            )

            # The stream, with a NATS node and a broker killed in the middle of it.
            leader = cluster.node(await submit_leader(urls))
            if victim_role == "submit-leader":
                victim = leader
            else:
                followers = [n for n in cluster.nodes if n is not leader]
                mine = [n for n in followers if n.port == connected_port(sender)]
                victim = (mine or followers)[0]
            sender_on_victim = connected_port(sender) == victim.port
            node_killed_at = broker_killed_at = 0.0
            restart: asyncio.Task[None] | None = None

            node_back_at: list[float] = []

            async def restart_later() -> None:
                await asyncio.sleep(NODE_DOWN_S)
                await victim.restart()
                node_back_at.append(time.monotonic())

            for index in range(WARM_UP, WARM_UP + COUNT):
                if index == WARM_UP + NODE_KILL_AT:
                    victim.kill()
                    node_killed_at = time.monotonic()
                    restart = asyncio.create_task(restart_later(), name="restart-node")
                if index == WARM_UP + BROKER_KILL_AT:
                    assert await brokers[0].kill() == -9
                    broker_killed_at = time.monotonic()
                await send(index)
                await asyncio.sleep(PACE_S)
            assert restart is not None
            await asyncio.wait_for(restart, STEP_TIMEOUT)
            node_restarted_after = node_back_at[0] - node_killed_at

            total = WARM_UP + COUNT
            await wait_until(
                lambda: len(watch.stored_at) >= total, "the outbox draining", timeout=STEP_TIMEOUT
            )
            await wait_until(
                lambda: len({i for i, _ in received}) >= total,
                f"{total} messages received",
                timeout=STEP_TIMEOUT,
            )
            await asyncio.sleep(
                ACK_WAIT_S + 1.0
            )  # room for a redelivered duplicate, were there one
            await cluster.wait_for_meta_leader()  # the restarted node rejoined
    finally:
        await watch.stop()
        if collector is not None:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
        for c in reversed(clients):
            await c.close()
        for broker in brokers:
            await broker.kill()
        await cluster.close()

    sent = {i: h.message_id for i, h in watch.handles.items()}
    copies = Counter(i for i, _ in received)
    lost = sorted(set(sent) - set(copies))
    duplicate = sorted(i for i, n in copies.items() if n > 1)
    unexpected = sorted({i for i, m in received if sent.get(i) != m})
    resume_s = watch.resumed_after(node_killed_at)
    print(
        f"\ncluster failover ({victim_role}): killed {victim.server_name} "
        f"(sender connected to it: {sender_on_victim}), back up "
        f"after {node_restarted_after:.1f} s; SIGKILLed broker pid {brokers[0].pid} "
        f"{broker_killed_at - node_killed_at:.1f} s after the node kill\n"
        f"sent {len(sent)}, received {len(received)}: lost {len(lost)}, "
        f"duplicate {len(duplicate)}, unexpected {len(unexpected)}; "
        f"publishing resumed {resume_s if resume_s is None else round(resume_s, 2)} s "
        f"after the node kill; {time.monotonic() - started:.1f} s in all"
    )
    assert (lost, duplicate, unexpected) == ([], [], [])
    assert len(received) == len(sent)
    assert resume_s is not None
    assert resume_s < RESUME_BOUND_S[victim_role]
    assert brokers[1].proc.returncode == -9, "the surviving broker ran to the end"


# --- deploy/docker-compose.yml (no YAML library in the environment: a structural check) ---

COMPOSE = Path(__file__).parent.parent / "deploy" / "docker-compose.yml"


def test_compose_file_has_the_cluster_brokers_and_prometheus() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    assert "\t" not in text, "YAML forbids tabs for indentation"
    top = re.findall(r"^([a-z][\w-]*):", text, re.MULTILINE)
    assert top == ["name", "x-nats", "x-broker", "services", "volumes"]
    services_block = text.split("\nservices:\n", 1)[1].split("\nvolumes:\n", 1)[0]
    services = re.findall(r"^  ([\w-]+):$", services_block, re.MULTILINE)
    assert services == ["nats-1", "nats-2", "nats-3", "broker-1", "broker-2", "prometheus"]
    for line in text.splitlines():  # every non-comment line indented by an even amount
        if line.strip() and not line.lstrip().startswith("#"):
            assert (len(line) - len(line.lstrip(" "))) % 2 == 0, line
    for n in (1, 2, 3):
        assert f"./nats/node-{n}.conf:/etc/nats/nats-server.conf:ro" in text
        assert f"@127.0.0.1:{4221 + n}" in text
    assert text.count('SSR_REPLICAS: "3"') == 2
    assert "./prometheus:/etc/prometheus:ro" in text
    assert (COMPOSE.parent / "prometheus" / "prometheus.yml").is_file()
