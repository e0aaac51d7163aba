"""A 3-node nats-server cluster with JetStream on loopback, and brokers to run on it.

Three :class:`~broker.embedded.EmbeddedNats` servers, each in its own folder with
a distinct ``server_name``, joined by a ``cluster {}`` block passed through
``config_extra`` (route ports picked once, so a killed node restarts on the same
routes). :meth:`NatsCluster.wait_for_meta_leader` polls every node's ``/jsz``
until all agree on a JetStream meta leader. :func:`start_cluster_broker` runs a
broker in a separate process (so it can be SIGKILLed) with all three URLs and
``StreamSettings(replicas=3)``.

Only processes started here are ever signalled, by their own pid (see
``EmbeddedNats`` and ``BrokerProcess``). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from broker.embedded import EmbeddedNats
from broker.errors import EmbeddedNatsError

from .nats_fixtures import FIXTURE_STARTUP_TIMEOUT
from .service_helpers import BrokerProcess

__all__ = ["CLUSTER_NAME", "NatsCluster", "start_cluster_broker"]

CLUSTER_NAME = "ssr-test"
CLUSTER_SIZE = 3
META_LEADER_TIMEOUT = 20.0  # seconds for the cluster to elect a JetStream meta leader
JSZ_REQUEST_TIMEOUT = 1.0
POLL_INTERVAL = 0.1
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
    streams=StreamSettings(replicas=3),
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


def cluster_block(listen_port: int, route_ports: list[int]) -> str:
    """The ``cluster {}`` config of one node; routes to every node (its own is ignored)."""
    routes = ", ".join(json.dumps(f"nats-route://127.0.0.1:{p}") for p in route_ports)
    return "\n".join(
        [
            "cluster {",
            f"  name: {json.dumps(CLUSTER_NAME)}",
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
                    config_extra=cluster_block(route_ports[i], route_ports),
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


async def start_cluster_broker(
    data_dir: Path, urls: list[str], *, ack_wait_s: float
) -> BrokerProcess:
    """A broker process on the cluster (all URLs, R3 streams); ready when it says so."""
    return await BrokerProcess.start(
        ["-c", CLUSTER_BROKER_PROCESS, str(data_dir), ",".join(urls), str(ack_wait_s)],
        ready_text="ready; NATS",
        timeout=30.0,
    )
