"""Worker processes of the benchmark; ``bench/run.py`` starts them, one role each.

    python bench/workers.py raw-consume  '<json args>'   # scenario 1 and 4 (raw side)
    python bench/workers.py drain        '<json args>'   # scenarios 2 and 5
    python bench/workers.py recipients   '<json args>'   # scenarios 3 and 4 (secure side)

Each worker talks to the runner in JSON lines on stdout (``{"ready": true}`` first)
and reads nothing but an optional ``stop`` line on stdin. Every loop is bounded by
``deadline_s`` from the arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import nats.errors
from benchlib import emit, now_ns, read_stamp
from nats.js import api

FETCH = 256
PROGRESS_S = 0.05


async def raw_consume(args: dict[str, Any]) -> None:
    """A pull consumer that fetches and acks ``count`` messages, then reports.

    With ``latency`` it also reports each message's publish→receive time (µs),
    from the stamp the publisher put in the payload.
    """
    nc = await nats.connect(args["url"], name="bench-raw-consumer")
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        args["subject"],
        durable=args["durable"],
        stream=args["stream"],
        config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=20_000),
    )
    emit(ready=True)
    count, first, last = 0, 0, 0
    latencies: list[float] = []
    deadline = time.monotonic() + args["deadline_s"]
    while count < args["count"] and time.monotonic() < deadline:
        try:
            msgs = await sub.fetch(FETCH, timeout=0.5)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        for msg in msgs:
            received = now_ns()
            if args["latency"]:
                latencies.append((received - read_stamp(msg.data)[1]) / 1000)
            await msg.ack()
            count += 1
            first = first or received
            last = received
    emit(done=True, count=count, first_ns=first, last_ns=last, latency_us=latencies)
    await nc.close()


async def drain(args: dict[str, Any]) -> None:
    """A trivial consumer of every actor's deliveries: fetch, count, ack.

    Reports cumulative counts (envelope frames separately) every 50 ms while they
    change, with the arrival time of the last envelope; runs until stopped.
    """
    nc = await nats.connect(args["url"], name="bench-drain")
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        args["subject"],
        durable=args["durable"],
        stream=args["stream"],
        config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=20_000),
    )
    counts: Counter[str] = Counter()
    last_e = 0
    emit(ready=True)
    stop = asyncio.Event()

    async def report() -> None:
        shown: tuple[int, int] = (-1, -1)
        while not stop.is_set():
            now = (counts["E"], counts["all"])
            if now != shown:
                emit(e=now[0], all=now[1], t_last_e=last_e)
                shown = now
            await asyncio.sleep(PROGRESS_S)

    reporter = asyncio.create_task(report())
    watcher = asyncio.create_task(_stdin_stop(stop))
    deadline = time.monotonic() + args["deadline_s"]
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            msgs = await sub.fetch(FETCH, timeout=0.5)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        for msg in msgs:
            counts["all"] += 1
            if msg.data[4:5] == b"E":
                counts["E"] += 1
                last_e = now_ns()
            await msg.ack()
    stop.set()
    await reporter
    watcher.cancel()
    emit(done=True, e=counts["E"], all=counts["all"], t_last_e=last_e)
    await nc.close()


async def recipients(args: dict[str, Any]) -> None:
    """Client-library recipients: each verifies, decrypts, returns a signed delivered
    receipt (the client does it on admission) and hands the message to this "application",
    which records the sender→recipient latency per phase byte of the payload."""
    from clients import Client  # only this role needs the client library

    data_dir = Path(args["data_dir"])
    state_root = Path(args["state_root"])
    actors: list[str] = args["actors"]
    latencies: dict[str, list[float]] = {}
    counts: Counter[str] = Counter()  # "<actor>:<phase>"
    stop = asyncio.Event()
    clients = [
        Client.connect(
            servers=[args["url"]],
            actor=actor,
            keys=data_dir / "keys" / f"{actor}.key",
            authority_key=data_dir / "authority.pub",
            state_dir=state_root / actor,
            policy=data_dir / "policy.toml",
        )
        for actor in actors
    ]
    started: list[Any] = []
    try:
        for client in clients:
            await client.start()
            started.append(client)

        async def application(client: Any) -> None:
            async for message in client.messages():
                received = now_ns()
                phase, sent = read_stamp(message.payload)
                key = phase.decode("ascii", "replace")
                latencies.setdefault(key, []).append((received - sent) / 1000)
                counts[f"{client.actor}:{key}"] += 1
                if stop.is_set():
                    return

        apps = [asyncio.create_task(application(c)) for c in clients]
        emit(ready=True)

        async def report() -> None:
            shown: dict[str, int] = {}
            while not stop.is_set():
                if dict(counts) != shown:
                    shown = dict(counts)
                    emit(counts=shown)
                await asyncio.sleep(PROGRESS_S)

        reporter = asyncio.create_task(report())
        await _stdin_stop(stop, args["deadline_s"])
        stop.set()
        await reporter
        for app in apps:
            app.cancel()
        await asyncio.gather(*apps, return_exceptions=True)
        emit(
            done=True,
            counts=dict(counts),
            refused=sum(c.refused for c in clients),
            latency_us=latencies,
        )
    finally:
        for client in started:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 10)


async def _stdin_stop(stop: asyncio.Event, timeout: float | None = None) -> None:
    """Set ``stop`` when the runner writes a line (or closes stdin), or after ``timeout``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.readline(), timeout)
    finally:
        transport.close()
        stop.set()


ROLES = {"raw-consume": raw_consume, "drain": drain, "recipients": recipients}


def main() -> None:
    role, raw_args = sys.argv[1], sys.argv[2]
    asyncio.run(ROLES[role](json.loads(raw_args)))


if __name__ == "__main__":
    main()
