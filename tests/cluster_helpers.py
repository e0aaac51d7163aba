"""A 3-node nats-server cluster with JetStream on loopback, and brokers to run on it.

Three :class:`~broker.embedded.EmbeddedNats` servers, each in its own folder with
a distinct ``server_name``, joined by a ``cluster {}`` block passed through
``config_extra`` (route ports picked once, so a killed node restarts on the same
routes). :meth:`NatsCluster.wait_for_meta_leader` polls every node's ``/jsz``
until all agree on a JetStream meta leader, then :meth:`NatsCluster.wait_for_placement`
until an R3 stream can be placed. :func:`start_cluster_broker` runs a
broker in a separate process (so it can be SIGKILLed) with all three URLs and
``StreamSettings(replicas=3)`` (and, if given, a short duplicate window).

Only processes started here are ever signalled, by their own pid (see
``EmbeddedNats`` and ``BrokerProcess``). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.errors
import nats.js.errors
from nats.js import api

from broker.config import StreamSettings
from broker.embedded import EmbeddedNats
from broker.errors import EmbeddedNatsError

from .nats_fixtures import FIXTURE_STARTUP_TIMEOUT, connect_options
from .service_helpers import BrokerProcess

__all__ = ["CLUSTER_NAME", "NatsCluster", "start_cluster_broker"]

CLUSTER_NAME = "ssr-test"
CLUSTER_SIZE = 3
META_LEADER_TIMEOUT = 20.0  # seconds for the cluster to elect a JetStream meta leader
JSZ_REQUEST_TIMEOUT = 1.0
POLL_INTERVAL = 0.1
PLACEMENT_PROBE = "TEST_PLACEMENT_PROBE"
PLACEMENT_REFUSED = "no suitable peers for placement"
PLACEMENT_RETRY_S = 1.0
BROKER_START_ATTEMPTS = 3
BROKER_START_TIMEOUT = 30.0
BROKER_READY_TEXT = "ready; NATS"
START_ATTEMPTS = 3  # fresh ports to try when one was taken between the pick and the bind

# The service in its own process with all cluster URLs, R3 streams and test timings
# (a short ack wait, so a killed broker's unacknowledged submissions come back in seconds).
CLUSTER_BROKER_PROCESS = """
import asyncio, logging, sys
from pathlib import Path
from broker.config import BrokerConfig, StreamSettings
from broker.service import Service
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
config = BrokerConfig(
    data_dir=Path(sys.argv[1]), nats_urls=tuple(sys.argv[2].split(",")), http_port=0,
    ack_wait_s=float(sys.argv[3]), sweep_interval_s=0.5, fetch_batch=16,
    streams=StreamSettings(replicas=3, duplicate_window_s=float(sys.argv[4])),
)
asyncio.run(Service(config).run())
"""


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 a moment ago: all sockets are held open
    until every port is picked, so a node's client port never lands on another's route."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def cluster_block(listen_port: int, route_ports: list[int], name: str = CLUSTER_NAME) -> str:
    """The ``cluster {}`` config of one node; routes to every node (its own is ignored)."""
    routes = ", ".join(json.dumps(f"nats-route://127.0.0.1:{p}") for p in route_ports)
    return "\n".join(
        [
            "cluster {",
            f"  name: {json.dumps(name)}",
            f"  listen: {json.dumps(f'127.0.0.1:{listen_port}')}",
            f"  routes: [{routes}]",
            "}",
        ]
    )


@dataclass
class NatsCluster:
    """Three clustered nats-servers under ``base``; ``close()`` stops them all."""

    base: Path
    nodes: list[EmbeddedNats] = field(default_factory=list)
    # A name of its own: a node of another test's cluster that is still routing to a port
    # this cluster now listens on (that node's peer was killed) is refused, not joined.
    name: str = field(default_factory=lambda: f"{CLUSTER_NAME}-{secrets.token_hex(4)}")

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node(self, server_name: str) -> EmbeddedNats:
        return next(n for n in self.nodes if n.server_name == server_name)

    async def start(self) -> NatsCluster:
        """Start all nodes at once (each waits only for its own /healthz), then the leader.

        All ports are pinned up front; if another process took one meanwhile, the
        whole cluster is stopped and tried again on fresh ports.
        """
        for attempt in range(1, START_ATTEMPTS + 1):
            ports = _free_ports(3 * CLUSTER_SIZE)
            route_ports = ports[:CLUSTER_SIZE]
            self.nodes = [
                EmbeddedNats(
                    self.base / f"attempt-{attempt}" / f"node-{i + 1}",
                    server_name=f"node-{i + 1}",
                    port=ports[CLUSTER_SIZE + i],
                    monitor_port=ports[2 * CLUSTER_SIZE + i],
                    config_extra=cluster_block(route_ports[i], route_ports, self.name),
                    startup_timeout=FIXTURE_STARTUP_TIMEOUT,
                )
                for i in range(CLUSTER_SIZE)
            ]
            results = await asyncio.gather(
                *(node.start() for node in self.nodes), return_exceptions=True
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            if not errors:
                break
            await self.close()
            if attempt == START_ATTEMPTS or not all(
                isinstance(e, EmbeddedNatsError) and "address already in use" in e.log_tail
                for e in errors
            ):
                raise errors[0]
        await self.wait_for_meta_leader()
        await self.wait_for_placement()
        return self

    async def close(self) -> None:
        errors: list[BaseException] = []
        for node in reversed(self.nodes):
            try:
                await node.stop()
            except Exception as exc:  # stop every node before reporting
                errors.append(exc)
        if errors:
            raise errors[0]

    async def jsz(self, node: EmbeddedNats) -> dict[str, Any] | None:
        """One node's ``/jsz`` (None when it does not answer)."""
        timeout = aiohttp.ClientTimeout(total=JSZ_REQUEST_TIMEOUT)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(f"{node.monitor_url}/jsz") as response,
            ):
                if response.status != 200:
                    return None
                data: dict[str, Any] = await response.json()
                return data
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def meta_leader(self) -> str | None:
        """The meta leader every running node agrees on, with all peers current; else None."""
        leaders: set[str] = set()
        for node in self.nodes:
            if node.pid is None:
                continue
            info = await self.jsz(node)
            meta = (info or {}).get("meta_cluster") or {}
            if not meta.get("leader") or meta.get("cluster_size") != CLUSTER_SIZE:
                return None
            replicas = meta.get("replicas") or []
            if node.server_name == meta["leader"] and not all(r.get("current") for r in replicas):
                return None
            leaders.add(meta["leader"])
        return leaders.pop() if len(leaders) == 1 else None

    async def wait_for_meta_leader(self, timeout: float = META_LEADER_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while (leader := await self.meta_leader()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"no JetStream meta leader within {timeout:g} s")
            await asyncio.sleep(POLL_INTERVAL)
        return leader

    async def wait_for_placement(self, timeout: float = META_LEADER_TIMEOUT) -> float:
        """Wait until an R3 stream can be placed (create a probe, delete it); returns the
        seconds waited. The meta leader agrees on peers before it has heard every server's
        JetStream stats: meanwhile a broker creating its streams is refused "no suitable
        peers for placement, peer offline" and exits."""
        started = time.monotonic()
        nc = await nats.connect(self.urls, **connect_options(name="test-placement"))
        try:
            js = nc.jetstream(timeout=2.0)
            while True:
                try:
                    await js.add_stream(
                        name=PLACEMENT_PROBE,
                        subjects=[f"{PLACEMENT_PROBE}.probe"],
                        num_replicas=CLUSTER_SIZE,
                        storage=api.StorageType.MEMORY,
                    )
                    await js.delete_stream(PLACEMENT_PROBE)
                    return time.monotonic() - started
                except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                    if time.monotonic() - started > timeout:
                        raise AssertionError(
                            f"no R{CLUSTER_SIZE} stream placed within {timeout:g} s"
                        ) from None
                    await asyncio.sleep(POLL_INTERVAL)
        finally:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(nc.close(), 5.0)


async def start_cluster_broker(
    data_dir: Path,
    urls: list[str],
    *,
    ack_wait_s: float,
    duplicate_window_s: float = StreamSettings().duplicate_window_s,
) -> BrokerProcess:
    """A broker process on the cluster (all URLs, R3 streams); ready when it says so.

    A broker that exits at start because the meta leader refused to place its streams
    ("no suitable peers for placement", seen now and then on a loaded machine right after
    a cluster formed) is started again, at most BROKER_START_ATTEMPTS times.
    """
    args = [
        *("-c", CLUSTER_BROKER_PROCESS, str(data_dir), ",".join(urls)),
        *(str(ack_wait_s), str(duplicate_window_s)),
    ]
    for attempt in range(1, BROKER_START_ATTEMPTS + 1):
        process = await _start_broker(args)
        if process.proc.returncode is None:
            return process
        if attempt == BROKER_START_ATTEMPTS or not any(
            PLACEMENT_REFUSED in line for line in process.output
        ):
            raise AssertionError(
                "broker process did not become ready:\n" + "\n".join(process.output[-30:])
            )
        await asyncio.sleep(PLACEMENT_RETRY_S)
    raise AssertionError("unreachable")


async def _start_broker(args: list[str]) -> BrokerProcess:
    """Start ``python <args>``; return once it is ready, or has exited (returncode set)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    process = BrokerProcess(proc)
    ready = asyncio.Event()

    async def read() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace").rstrip()
            process.output.append(text)
            if BROKER_READY_TEXT in text:
                ready.set()

    process._reader = asyncio.create_task(read())
    waits = {asyncio.create_task(ready.wait()), asyncio.create_task(proc.wait())}
    try:
        done, _ = await asyncio.wait(
            waits, timeout=BROKER_START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in waits:
            task.cancel()
    if not done:
        await process.kill()
        raise AssertionError(
            "broker process did not become ready:\n" + "\n".join(process.output[-30:])
        )
    if proc.returncode is not None:
        await process.wait(10.0)  # reap it and read its last words
    return process
