"""Helpers for integration tests of the broker service against real nats-server processes.

- ``live_region``: the 37-actor demo region with keys valid from a minute ago (the
  service checks keys and expiry against the real clock).
- ``broker_factory`` / ``running_broker``: a data folder written with
  ``write_region`` and ``Service`` instances connected to the ``nats_server``
  fixture (an external server, so tests can restart it under the broker).
- :class:`Actors`: the actors' side, standing in for their systems. One NATS
  connection and one durable consumer on ``ssr.deliver.*``; each actor opens what
  it receives, keeps the first copy of each message (exactly once to the
  application) while counting every raw copy, verifies notices and receipts, and
  signs ``delivered`` receipts unless it is told to stay silent.
- ``stream_messages`` / ``audit_events`` read a stream back; ``metric`` reads a
  sample from a Service's own registry.

Every wait is bounded (``WAIT`` seconds unless told otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from broker import subjects
from broker.config import BrokerConfig
from broker.core import (
    CoreError,
    Header,
    Identity,
    Label,
    MessageType,
    NoticeBody,
    NoticeKind,
    OpenedEnvelope,
    Policy,
    ReceiptBody,
    ReceiptKind,
    RecipientKey,
    Tlp,
    VerifiedDirectory,
    build_envelope,
    crypto,
    make_receipt,
    open_envelope,
    read_envelope,
    verify_notice,
    verify_receipt,
)
from broker.core import frame as frames
from broker.core.crypto import seeded_random
from broker.demo import DemoRegion, demo_region
from broker.demo_setup import write_region
from broker.embedded import EmbeddedNats
from broker.service import Service

from .nats_fixtures import connect_options

WAIT = 10.0  # seconds: the bound on any single wait
HOUR_MS = 3_600_000
SERVICE_DEFAULTS: dict[str, Any] = {
    "http_port": 0,
    "sweep_interval_s": 0.2,
    "shutdown_timeout_s": 5.0,
}
INTERN = Label(policy="ssr", classification="INTERN", tlp=Tlp.GREEN)
SEKRETESS = Label(policy="ssr", classification="SEKRETESS", tlp=Tlp.AMBER, legal="OSL 18:13")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def sha256_hex(data: bytes) -> str:
    return crypto.sha256(data).hex()


def header_of(data: bytes, directory: VerifiedDirectory) -> Header:
    return read_envelope(data, directory).header


def metric(service: Service, name: str, **labels: str) -> float:
    """A sample from the service's own registry; 0.0 when the series does not exist yet."""
    value = service.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def wait_until(
    predicate: Callable[[], bool], what: str, *, timeout: float = WAIT, interval: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


# --- the region and the broker --------------------------------------------------------------


@pytest.fixture(scope="session")
def live_region() -> DemoRegion:
    """The demo region, its keys valid from a minute before the test session started."""
    return demo_region(now=now_ms() - 60_000, rand=seeded_random(b"service-tests"))


def write_data_dir(data_dir: Path, region: DemoRegion, policy_toml: str | None = None) -> None:
    """A broker data folder for ``region``; ``policy_toml`` replaces deploy/policy.toml."""
    config = BrokerConfig(data_dir=data_dir)
    if policy_toml is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        config.policy_file.write_text(policy_toml, encoding="utf-8")
    write_region(config, region)  # copies deploy/policy.toml only where none was written


@dataclass
class BrokerFactory:
    """Starts ``Service`` instances on ``server`` sharing one data folder; stops them after."""

    data_dir: Path
    server: EmbeddedNats
    region: DemoRegion
    services: list[Service] = field(default_factory=list)
    _written: bool = False

    def config(self, **overrides: Any) -> BrokerConfig:
        return BrokerConfig(
            data_dir=self.data_dir,
            nats_urls=(self.server.url,),
            **{**SERVICE_DEFAULTS, **overrides},
        )

    def write(self, policy_toml: str | None = None) -> None:
        if not self._written:
            write_data_dir(self.data_dir, self.region, policy_toml)
            self._written = True

    async def __call__(self, *, policy_toml: str | None = None, **overrides: Any) -> Service:
        self.write(policy_toml)
        service = Service(self.config(**overrides))
        self.services.append(service)
        await asyncio.wait_for(service.start(), WAIT)
        return service

    async def close(self) -> None:
        for service in reversed(self.services):
            await asyncio.wait_for(service.stop(), WAIT + 5)


@pytest_asyncio.fixture
async def broker_factory(
    tmp_path: Path, nats_server: EmbeddedNats, live_region: DemoRegion
) -> AsyncIterator[BrokerFactory]:
    factory = BrokerFactory(tmp_path / "data", nats_server, live_region)
    try:
        yield factory
    finally:
        await factory.close()


@pytest_asyncio.fixture
async def running_broker(broker_factory: BrokerFactory) -> Service:
    """One Service on the test's nats-server, with the demo region and deploy/policy.toml."""
    return await broker_factory()


@pytest_asyncio.fixture
async def actors(nats_server: EmbeddedNats, live_region: DemoRegion) -> AsyncIterator[Actors]:
    """The actors' side, connected to the test's nats-server (start it after the broker)."""
    network = Actors(nats_server.url, live_region)
    try:
        yield network
    finally:
        await network.close()


# --- the actors' side --------------------------------------------------------------------


@dataclass
class Inbox:
    """What one actor's application has seen."""

    actor: str
    deliveries: dict[str, OpenedEnvelope] = field(default_factory=dict)  # first copy by id
    copies: Counter[str] = field(default_factory=Counter)  # every raw copy, by message id
    notices: list[NoticeBody] = field(default_factory=list)  # redelivered copies dropped
    receipts: list[ReceiptBody] = field(default_factory=list)  # redelivered copies dropped
    refused: list[str] = field(default_factory=list)  # error codes of what did not verify

    def notices_about(self, submitted: bytes) -> list[NoticeBody]:
        digest = sha256_hex(submitted)
        return [n for n in self.notices if n.submission == digest]

    def notices_for(self, message_id: str, kind: NoticeKind | None = None) -> list[NoticeBody]:
        return [
            n for n in self.notices if n.message == message_id and (kind is None or n.kind is kind)
        ]


class Actors:
    """The 37 actors' systems over one NATS connection (see the module docstring)."""

    PUMP_BATCH = 256
    CONSUMER = "test-actors"

    def __init__(
        self,
        url: str,
        region: DemoRegion,
        *,
        policy: Policy | None = None,
        receipts: bool = True,
        silent: Iterable[str] = (),
    ) -> None:
        self.url = url
        self.region = region
        self.directory = region.directory
        self.policy = policy or Policy()
        self.receipts = receipts
        self.silent = set(silent)
        self.inboxes: dict[str, Inbox] = {a: Inbox(a) for a in region.identities}
        self.nc: NatsClient | None = None
        self.js: JetStreamContext | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self.pump_errors = 0
        self._closing = False

    def __getitem__(self, actor: str) -> Inbox:
        return self.inboxes[actor]

    def identity(self, actor: str) -> Identity:
        return self.region.identities[actor]

    async def start(self) -> Actors:
        """Connect and start reading deliveries; the broker must have made its streams."""
        self.nc = await nats.connect(self.url, **connect_options(name="test-actors"))
        self.js = self.nc.jetstream(timeout=5.0)
        self._sub = await self.js.pull_subscribe(
            subjects.DELIVER_WILDCARD,
            durable=self.CONSUMER,
            stream=subjects.DELIVER_STREAM,
            config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT, ack_wait=10.0),
        )
        self._pump_task = asyncio.create_task(self._pump(), name="test-actors-pump")
        return self

    async def close(self) -> None:
        self._closing = True
        if self._pump_task is not None:
            self._pump_task.cancel()
            # Bounded: nats-py's fetch can swallow a cancellation (the loop then sees _closing).
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._pump_task, 5.0)
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.nc.close(), 5.0)

    # --- sending ---------------------------------------------------------------------

    def envelope(
        self,
        sender: str,
        to: Iterable[str],
        *,
        label: Label = INTERN,
        message_type: MessageType = MessageType.SITUATION_REPORT,
        text: str = "Lägesbild: läget är under kontroll",
        created: int | None = None,
        expires: int | None = None,
        **kw: Any,
    ) -> bytes:
        now = now_ms()
        created = now if created is None else created
        keys = [RecipientKey.of(self.directory.actor(a), now) for a in sorted(set(to))]  # type: ignore[arg-type]
        return build_envelope(
            sender=self.identity(sender),
            recipients=keys,
            label=label,
            message_type=message_type,
            payload=json.dumps({"text": text}, ensure_ascii=False).encode(),
            content_type="application/json",
            created=created,
            expires=created + HOUR_MS if expires is None else expires,
            **kw,
        )

    async def submit(self, actor: str, data: bytes, *, msg_id: str | None = None) -> None:
        """Publish on ``actor``'s submit subject; without ``msg_id`` JetStream does not dedupe."""
        assert self.js is not None
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        await self.js.publish(subjects.submit_subject(actor), data, headers=headers)

    async def send(self, sender: str, to: Iterable[str], **kw: Any) -> tuple[Header, bytes]:
        data = self.envelope(sender, to, **kw)
        await self.submit(sender, data)
        return header_of(data, self.directory), data

    # --- waiting for outcomes ---------------------------------------------------------

    async def verdict(self, actor: str, submitted: bytes, *, timeout: float = WAIT) -> NoticeBody:
        """The one accepted/rejected notice ``actor`` gets about the bytes it submitted."""
        inbox = self.inboxes[actor]
        await wait_until(
            lambda: bool(inbox.notices_about(submitted)),
            f"a notice to {actor} about submission {sha256_hex(submitted)[:12]}",
            timeout=timeout,
        )
        notices = inbox.notices_about(submitted)
        assert len(notices) == 1, notices
        return notices[0]

    async def delivered(
        self, message_id: str, recipients: Iterable[str], *, timeout: float = WAIT
    ) -> None:
        pending = set(recipients)
        await wait_until(
            lambda: all(message_id in self.inboxes[r].deliveries for r in pending),
            f"delivery of {message_id[:12]} to {sorted(pending)}",
            timeout=timeout,
        )

    async def accepted_and_delivered(
        self, sender: str, data: bytes, *, timeout: float = WAIT
    ) -> NoticeBody:
        """Assert the broker accepted ``data`` and every recipient's application has it."""
        notice = await self.verdict(sender, data, timeout=timeout)
        assert (notice.kind, notice.reason) == (NoticeKind.ACCEPTED, None), notice
        header = header_of(data, self.directory)
        await self.delivered(header.id, header.recipients, timeout=timeout)
        return notice

    # --- reading deliveries ---------------------------------------------------------------

    async def _pump(self) -> None:
        assert self._sub is not None
        while not self._closing:
            try:
                messages = await self._sub.fetch(self.PUMP_BATCH, timeout=0.2)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except (nats.errors.Error, nats.js.errors.Error, OSError):
                self.pump_errors += 1  # NATS restarting under a fault test: keep trying
                await asyncio.sleep(0.1)
                continue
            for msg in messages:
                await self._handle(msg)
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await msg.ack()

    async def _handle(self, msg: Msg) -> None:
        actor = msg.subject.split(".")[-1]
        inbox = self.inboxes.get(actor)
        if inbox is None:
            return
        data, kind, now = msg.data, msg.data[4:5], now_ms()
        try:
            if kind == frames.Kind.ENVELOPE.value:
                opened = open_envelope(
                    data,
                    me=self.identity(actor),
                    directory=self.directory,
                    policy=self.policy,
                    now=now,
                )
                message_id = opened.header.id
                inbox.copies[message_id] += 1
                if message_id in inbox.deliveries:
                    return  # a duplicate: the application never sees it twice
                inbox.deliveries[message_id] = opened
                if self.receipts and actor not in self.silent:
                    await self._receipt(actor, opened)
            elif kind == frames.Kind.NOTICE.value:
                notice = verify_notice(data, self.directory, now=now)
                notices = {(n.kind, n.submission, n.message) for n in inbox.notices}
                if (notice.kind, notice.submission, notice.message) not in notices:
                    inbox.notices.append(notice)
            elif kind == frames.Kind.RECEIPT.value:
                receipt = verify_receipt(data, self.directory, now=now).body
                receipts = {(r.message, r.recipient, r.kind) for r in inbox.receipts}
                if (receipt.message, receipt.recipient, receipt.kind) not in receipts:
                    inbox.receipts.append(receipt)
            else:
                inbox.refused.append("unknown_kind")
        except CoreError as exc:
            inbox.refused.append(exc.code)

    async def _receipt(self, actor: str, opened: OpenedEnvelope) -> None:
        receipt = make_receipt(
            self.identity(actor),
            opened.header,
            opened.header_hash,
            ReceiptKind.DELIVERED,
            at=now_ms(),
        )
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
            await self.submit(actor, receipt, msg_id=f"receipt.{opened.header.id}.{actor}")


# --- reading streams back --------------------------------------------------------------------


async def stream_messages(js: JetStreamContext, stream: str, subject: str) -> list[Msg]:
    """Every message on ``subject`` in ``stream``, oldest first (an ephemeral consumer)."""
    sub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.ALL,
            inactive_threshold=30.0,
        ),
    )
    try:
        info = await sub.consumer_info()
        remaining = int(info.num_pending or 0)
        found: list[Msg] = []
        deadline = time.monotonic() + WAIT
        while remaining > 0 and time.monotonic() < deadline:
            try:
                batch = await sub.fetch(min(remaining, 512), timeout=2.0)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            found.extend(batch)
            remaining -= len(batch)
        assert remaining <= 0, f"{remaining} messages of {stream} not read back in time"
        return found
    finally:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            await sub.unsubscribe()


async def audit_events(js: JetStreamContext, kind: str | None = None) -> list[dict[str, Any]]:
    subject = subjects.audit_subject(kind) if kind else subjects.AUDIT_WILDCARD
    return [json.loads(m.data) for m in await stream_messages(js, subjects.AUDIT_STREAM, subject)]


async def wait_for_audit(
    js: JetStreamContext,
    kind: str,
    match: Callable[[dict[str, Any]], bool],
    *,
    count: int = 1,
    timeout: float = WAIT,
) -> list[dict[str, Any]]:
    """Poll the audit stream until ``count`` events of ``kind`` match; returns them all."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in await audit_events(js, kind) if match(e)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def delivery_ids(js: JetStreamContext) -> Counter[str]:
    """How often each ``Nats-Msg-Id`` occurs on the deliver stream (JetStream keeps ids)."""
    ids: Counter[str] = Counter()
    for msg in await stream_messages(js, subjects.DELIVER_STREAM, subjects.DELIVER_WILDCARD):
        ids[(msg.headers or {}).get("Nats-Msg-Id", "")] += 1
    return ids


# --- a broker in its own process ------------------------------------------------------------

# The service as a separate process with test timings (a short ack wait, so a
# killed broker's unacknowledged submissions come back within seconds).
BROKER_PROCESS = """
import asyncio, logging, sys
from pathlib import Path
from broker.config import BrokerConfig
from broker.service import Service
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
config = BrokerConfig(
    data_dir=Path(sys.argv[1]), nats_urls=(sys.argv[2],), http_port=0,
    ack_wait_s=float(sys.argv[3]), sweep_interval_s=0.5, fetch_batch=16,
)
asyncio.run(Service(config).run())
"""


@dataclass
class BrokerProcess:
    """A broker started with ``python <args>``; ``output`` collects its stdout and stderr."""

    proc: asyncio.subprocess.Process
    output: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(
        cls,
        args: list[str],
        *,
        ready_text: str,
        timeout: float = 20.0,
        env: dict[str, str] | None = None,
    ) -> BrokerProcess:
        """Start ``python <args>`` and wait for ``ready_text`` in its output."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        process = cls(proc)
        ready = asyncio.Event()

        async def read() -> None:
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                text = line.decode(errors="replace").rstrip()
                process.output.append(text)
                if ready_text in text:
                    ready.set()

        process._reader = asyncio.create_task(read())
        try:
            await asyncio.wait_for(ready.wait(), timeout)
        except TimeoutError:
            await process.kill()
            raise AssertionError(
                "broker process did not become ready:\n" + "\n".join(process.output[-30:])
            ) from None
        return process

    async def kill(self) -> int:
        """SIGKILL this process (by its own pid, if still running) and reap it."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        return await self.wait(10.0)

    def terminate(self) -> None:
        """SIGTERM this process (by its own pid), as a service manager stops it."""
        if self.proc.returncode is None:
            self.proc.terminate()

    async def wait(self, timeout: float) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reader, 5.0)
        return code


async def start_broker_process(data_dir: Path, url: str, *, ack_wait_s: float) -> BrokerProcess:
    return await BrokerProcess.start(
        ["-c", BROKER_PROCESS, str(data_dir), url, str(ack_wait_s)], ready_text="ready; NATS"
    )
