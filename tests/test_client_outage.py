"""Acceptance: the client's outbox across a NATS outage longer than the duplicate window,
with the sending process SIGKILLed twice in the middle.

The sender is ``tests/client_sender.py`` in a process of its own (one state folder
across its three lives); the recipient is a :class:`clients.Client` in this process.
The broker's streams have a 2-second duplicate window, so a message the sender
resubmits after the outage is no longer dropped by JetStream: the broker's replay
guard must refuse it (``replay``) and nothing may reach the recipient twice.

    sender 1   sends, then its publisher freezes right after JetStream stored one message
               (before the outbox forgot it); NATS stops; it sends on offline; SIGKILL
    sender 2   starts offline from its cached directory, sends on; after the duplicate
               window has passed, SIGKILL
    sender 3   starts offline, sends on; NATS comes back; it drains the outbox (first the
               frozen message, a replay now) and finishes

Every sent index must reach the recipient's application exactly once and in send order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext

from broker import subjects
from broker.config import StreamSettings
from broker.core import save_identity
from broker.demo import DemoRegion
from broker.embedded import EmbeddedNats
from broker.service import Service
from clients import Client

from . import nats_fixtures, service_helpers
from .nats_fixtures import connect_options
from .service_helpers import BrokerFactory, audit_events, delivery_ids, metric, wait_until

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory

pytestmark = pytest.mark.slow

SENDER = Path(__file__).with_name("client_sender.py")
COUNT = 60
WINDOW_S = 2.0  # the streams' duplicate window
STEP_TIMEOUT = 20.0  # the bound on each step of the scenario
FINISH_TIMEOUT = 60.0  # sender 3 draining the outbox and sending the rest
EXIT_TIMEOUT = 15.0  # sender 3 closing its client and exiting after "done"


@dataclass
class Sender:
    """One life of the sender process; its stdout is parsed into events."""

    proc: asyncio.subprocess.Process
    sent: dict[int, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, args: list[str], log: Path) -> Sender:
        with open(log, "ab") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(SENDER),
                *args,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, "PYTHONPATH": str(SENDER.parent.parent)},
            )
        sender = cls(proc)
        sender.reader = asyncio.create_task(sender._read())
        return sender

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            text = line.decode().strip()
            self.lines.append(text)
            if text.startswith("sent "):
                _, index, message_id = text.split()
                self.sent[int(index)] = message_id

    def event(self, prefix: str) -> str | None:
        return next((line for line in self.lines if line.startswith(prefix)), None)

    async def wait_for(self, prefix: str, timeout: float = STEP_TIMEOUT) -> str:
        await wait_until(
            lambda: self.event(prefix) is not None or self.proc.returncode is not None,
            f"the sender printing {prefix!r}",
            timeout=timeout,
        )
        line = self.event(prefix)
        assert line is not None, f"the sender exited ({self.proc.returncode}): {self.lines[-5:]}"
        return line

    async def wait_sent(self, count: int) -> None:
        await wait_until(lambda: len(self.sent) >= count, f"{count} sends", timeout=STEP_TIMEOUT)

    async def hold_and_kill(self, hold: Path) -> str:
        """Hold the sender between two sends and SIGKILL it there (by its own pid)."""
        hold.touch()
        holding = await self.wait_for("holding ")
        await self.kill()
        assert self.proc.returncode == -9
        hold.unlink()
        return holding

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await asyncio.wait_for(self.proc.wait(), 10.0)
        if self.reader is not None:
            await asyncio.wait_for(self.reader, 5.0)


async def layout_window(js: JetStreamContext) -> set[float]:
    streams = (subjects.SUBMIT_STREAM, subjects.DELIVER_STREAM, subjects.AUDIT_STREAM)
    return {(await js.stream_info(s)).config.duplicate_window for s in streams}


async def broker_idle(js: JetStreamContext) -> None:
    """Wait until the broker finished (and acknowledged) every submission it was given."""

    async def idle() -> bool:
        info = await js.consumer_info(subjects.SUBMIT_STREAM, subjects.BROKER_CONSUMER)
        return not info.num_pending and not info.num_ack_pending

    deadline = time.monotonic() + STEP_TIMEOUT
    while not await idle():
        assert time.monotonic() < deadline, "the broker did not finish its submissions"
        await asyncio.sleep(0.05)


async def test_outbox_survives_an_outage_beyond_the_duplicate_window_and_two_sigkills(
    tmp_path: Path,
    nats_server: EmbeddedNats,
    broker_factory: BrokerFactory,
    live_region: DemoRegion,
) -> None:
    started = time.monotonic()
    broker = await broker_factory(streams=StreamSettings(duplicate_window_s=WINDOW_S))
    nc = await nats.connect(nats_server.url, **connect_options(name="test-outage"))
    try:
        await scenario(tmp_path, nats_server, broker, nc.jetstream(timeout=5.0), live_region)
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(nc.close(), 5.0)
    print(f"{time.monotonic() - started:.1f} s in all")


async def scenario(
    tmp_path: Path,
    nats_server: EmbeddedNats,
    broker: Service,
    js: JetStreamContext,
    live_region: DemoRegion,
) -> None:
    assert await layout_window(js) == {WINDOW_S}
    received: list[tuple[int, str]] = []  # (index, message id) as the application got them
    recipient = Client.connect(
        servers=[nats_server.url],
        actor="solna",
        keys=live_region.identities["solna"],
        authority_key=live_region.authority.public,
        state_dir=tmp_path / "solna",
    )
    await asyncio.wait_for(recipient.start(), STEP_TIMEOUT)

    async def collect() -> None:
        async for message in recipient.messages():
            received.append((message.json()["index"], message.id))

    collector = asyncio.create_task(collect())
    key = tmp_path / "nacka.key"
    save_identity(key, live_region.identities["nacka"])
    state = tmp_path / "sender"
    args = [
        *("--server", nats_server.url, "--actor", "nacka", "--key", str(key)),
        *("--authority", live_region.authority.public.hex(), "--state-dir", str(state)),
        *("--to", "solna", "--count", str(COUNT)),
    ]
    log = tmp_path / "sender.log"
    senders: list[Sender] = []
    try:
        # Life 1: online; the publisher freezes after JetStream stored a message.
        senders.append(first := await Sender.start(args, log))
        assert await first.wait_for("ready ") == "ready online"
        await first.wait_sent(10)
        (state / "freeze").touch()
        frozen = (await first.wait_for("frozen ")).split()[1]
        await wait_until(
            lambda: frozen in {m for _, m in received},
            "the frozen message reaching the recipient",
            timeout=STEP_TIMEOUT,
        )
        await broker_idle(js)
        await nats_server.stop()
        outage = time.monotonic()
        at = len(first.sent)
        await first.wait_sent(at + 3)  # sending on into the outbox while NATS is down
        held_1 = await first.hold_and_kill(state / "hold")
        (state / "freeze").unlink()

        # Life 2: offline from the cached directory; killed after the window has passed.
        senders.append(second := await Sender.start(args, log))
        assert await second.wait_for("ready ") == "ready offline"
        await second.wait_sent(5)
        await wait_until(
            lambda: time.monotonic() - outage > WINDOW_S + 1.0,
            "the duplicate window passing",
            timeout=STEP_TIMEOUT,
        )
        held_2 = await second.hold_and_kill(state / "hold")

        # Life 3: offline again, then NATS comes back and it finishes.
        senders.append(third := await Sender.start(args, log))
        assert await third.wait_for("ready ") == "ready offline"
        await third.wait_sent(3)
        await nats_server.start()
        outage_s = time.monotonic() - outage
        await third.wait_for("done", timeout=FINISH_TIMEOUT)
        try:  # everything is in JetStream now; a slow exit is reported, not failed here
            assert await asyncio.wait_for(third.proc.wait(), EXIT_TIMEOUT) == 0
        except TimeoutError:
            warnings.warn(
                f"the sender flushed its outbox but had not exited {EXIT_TIMEOUT:g} s later "
                "(Client.close waiting on a receive task that lost its cancellation?)",
                stacklevel=1,
            )
        await wait_until(
            lambda: len(received) >= COUNT, f"{COUNT} messages received", timeout=STEP_TIMEOUT
        )
        await broker_idle(js)
        await asyncio.sleep(0.5)  # room for a duplicate, were there one
    finally:
        for sender in senders:
            await sender.kill()
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
        await recipient.close()

    sent: dict[int, str] = {}
    for sender in senders:
        for index, message_id in sender.sent.items():
            assert index not in sent, f"index {index} sent twice"
            sent[index] = message_id
    assert sorted(sent) == list(range(COUNT))
    counts = Counter(index for index, _ in received)
    lost = sorted(set(sent) - set(counts))
    duplicates = sum(n - 1 for n in counts.values())
    unexpected = [m for i, m in received if sent.get(i) != m]
    print(
        f"\noutage {outage_s:.1f} s (duplicate window {WINDOW_S:g} s); sender killed with "
        f"outbox depth {held_1.split()[2]} and {held_2.split()[2]}; "
        f"sent {len(sent)}: lost {len(lost)}, duplicate {duplicates}, "
        f"unexpected {len(unexpected)}"
    )
    assert (lost, duplicates, unexpected) == ([], 0, [])
    assert [index for index, _ in received] == list(range(COUNT)), "not in send order"

    # The frozen message went to JetStream twice, the second time beyond the window: the
    # broker refused that copy as a replay, and delivered the message once.
    replays = [e for e in await audit_events(js, "rejected") if e["reason"] == "replay"]
    assert [e["message"] for e in replays] == [frozen]
    assert (
        metric(broker, "ssr_broker_envelopes_rejected_total", reason="replay", status="actual") == 1
    )
    assert [e for e in await audit_events(js, "rejected") if e["reason"] != "replay"] == []
    accepted = Counter(e["message"] for e in await audit_events(js, "accepted"))
    assert accepted == Counter(sent.values())
    deliveries = await delivery_ids(js)
    assert {i: n for i, n in deliveries.items() if i.startswith("d.")} == {
        f"d.{m}.solna": 1 for m in sent.values()
    }
