"""Fixtures for tests against real nats-server processes on free loopback ports.

Each test gets its own server in its own ``tmp_path`` (a start takes ~15 ms),
so tests never share JetStream state. Use from ``conftest.py``::

    from .nats_fixtures import *  # noqa: F403

or import the names you need. ``connect_options()`` gives nats-py settings
suited to fault tests: quick reconnects, quick detection of a dead or paused
server, and no tracebacks printed for expected disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest_asyncio
from nats.aio.client import Client as NatsClient

from broker.embedded import EmbeddedNats

__all__ = [
    "CLIENT_CLOSE_TIMEOUT",
    "FIXTURE_STARTUP_TIMEOUT",
    "NatsServerFactory",
    "connect_options",
    "nats_client",
    "nats_server",
    "nats_server_factory",
]

FIXTURE_STARTUP_TIMEOUT = 15.0  # seconds; a start normally takes ~15 ms
CLIENT_CLOSE_TIMEOUT = 5.0  # seconds for nats-py to close, even if the server is gone


async def _ignore_error(exc: Exception) -> None:
    """Fault tests disconnect on purpose; the default callback would print tracebacks."""


def connect_options(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` in tests: fast reconnect, bounded attempts.

    The defaults of nats-py (2 s between reconnects, a ping every 2 minutes)
    would make "server restarted" tests slow and "server paused" tests hang.
    """
    options: dict[str, Any] = {
        "connect_timeout": 2,
        "reconnect_time_wait": 0.05,
        "max_reconnect_attempts": 400,  # about 20 s of trying, then the client gives up
        "ping_interval": 1,
        "max_outstanding_pings": 2,
        "error_cb": _ignore_error,
    }
    options.update(overrides)
    return options


@pytest_asyncio.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A started nats-server with JetStream in ``tmp_path / "nats"``; stopped afterwards."""
    server = EmbeddedNats(tmp_path / "nats", startup_timeout=FIXTURE_STARTUP_TIMEOUT)
    async with server:
        yield server


@pytest_asyncio.fixture
async def nats_client(nats_server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    """A nats-py connection to ``nats_server`` with ``connect_options()``."""
    nc = await nats.connect(nats_server.url, **connect_options())
    try:
        yield nc
    finally:
        await _close(nc)


class NatsServerFactory:
    """Starts any number of servers, each in its own folder; ``close()`` stops them all."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self.servers: list[EmbeddedNats] = []

    async def __call__(self, name: str | None = None, **kwargs: Any) -> EmbeddedNats:
        name = name or f"nats-{len(self.servers)}"
        kwargs.setdefault("server_name", name)
        kwargs.setdefault("startup_timeout", FIXTURE_STARTUP_TIMEOUT)
        server = EmbeddedNats(self._base / name, **kwargs)
        self.servers.append(server)  # before start(): a failed start is cleaned up too
        await server.start()
        return server

    async def close(self) -> None:
        errors: list[BaseException] = []
        for server in reversed(self.servers):
            try:
                await server.stop()
            except Exception as exc:  # stop every server before reporting
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest_asyncio.fixture
async def nats_server_factory(tmp_path: Path) -> AsyncIterator[NatsServerFactory]:
    """``await nats_server_factory("a", **EmbeddedNats kwargs)`` starts another server."""
    factory = NatsServerFactory(tmp_path / "servers")
    try:
        yield factory
    finally:
        await factory.close()


async def _close(nc: NatsClient) -> None:
    if nc.is_closed:
        return
    # Bounded: when the server is gone for good the test's verdict does not depend on this.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(nc.close(), CLIENT_CLOSE_TIMEOUT)
