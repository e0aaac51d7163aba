"""Machinery of the reliability acceptance scenarios (``tests/test_acceptance_reliability.py``).

- :func:`plan_traffic` pre-builds signed envelopes in the test process (core
  ``build_envelope``, the live demo region) with fan-outs drawn from
  :data:`FAN_OUT_WEIGHTS`, and asks the pure policy (``decide`` with
  ``deploy/policy.toml``) which of them the broker must refuse: that is the oracle
  for *unauthorised*.
- :class:`Network` is the actors' side of ``service_helpers.Actors`` (it opens what it
  receives, keeps the first copy of each message, signs ``delivered`` receipts) on a
  connection that knows every server of a cluster.
- :class:`Publisher` submits the plan through its own connection, retrying each
  submission under its dedupe id until JetStream acknowledges it, and notes when each
  acknowledgement came (to measure how soon publishing resumes after a fault).
- :func:`jepsen_counts` turns what was acknowledged, delivered and stored into the
  Jepsen counts of ``tests/acceptance.py``.
- :func:`verified_audit` verifies the whole stored audit trail once it is sealed.

Every wait is bounded; only processes the tests started are signalled, by their pid.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from broker import subjects
from broker.auditlog import directory_versions, verify_stream
from broker.bus import JetStreamBus
from broker.core import (
    Accept,
    Label,
    MessageType,
    Mode,
    NoticeKind,
    OpenedEnvelope,
    Policy,
    ReceiptKind,
    RecipientKey,
    build_envelope,
    decide,
    make_receipt,
)
from broker.core.auditchain import TrailReport
from broker.core.policy import load_policy
from broker.demo import DemoRegion

from .nats_fixtures import connect_options
from .service_helpers import HOUR_MS, INTERN, SEKRETESS, Actors, header_of, now_ms

__all__ = [
    "FAN_OUT_WEIGHTS",
    "AuditCounts",
    "Network",
    "Planned",
    "Publisher",
    "audit_counts",
    "close",
    "complete_audit",
    "connect",
    "consumer_state",
    "deploy_policy",
    "draw_fan_out",
    "envelope",
    "fan_out_figures",
    "jepsen_counts",
    "plan_traffic",
    "read_back",
    "stored_ids",
    "stream_leader",
    "verified_audit",
    "wait_for",
    "wait_streams_current",
]

DEPLOY_POLICY = Path(__file__).parent.parent / "deploy" / "policy.toml"

# Fan-out of a planned message: 1..37 recipients (every actor of the demo region), weighted
# to small fan-outs as real traffic is: P(k) proportional to 1/k^2 (Zipf, s = 2). Mean about
# 2.6 recipients; P(1) = 0.62, P(2) = 0.15, P(3) = 0.07, P(k >= 10) = 0.06, P(37) = 0.0004.
# Every plan also holds one message to all 37 actors, so the widest fan-out always occurs.
MAX_FAN_OUT = 37
FAN_OUT_WEIGHTS: tuple[float, ...] = tuple(1 / k**2 for k in range(1, MAX_FAN_OUT + 1))

# One planned message in REFUSED_EVERY is SEKRETESS and names Stockholms Hamnar (cleared
# for INTERN only) among its recipients: the broker must refuse the whole message.
REFUSED_EVERY = 50
NOT_CLEARED = "stockholms-hamnar"

# One publish attempt waits this long for JetStream's ack. Short, because a stream whose
# leader died answers nothing until the survivors elect a new one (nats-server's Raft
# campaigns 4-9 s after the last heartbeat): an attempt still waiting then would hide
# the moment publishing could resume. A retried attempt is harmless (same dedupe id).
PUBLISH_TIMEOUT_S = 0.5
PUBLISH_GIVE_UP_S = 45.0  # one submission is retried this long at most
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 0.25
READ_BATCH = 1000
STEP_S = 30.0  # the bound on one wait in these helpers


def deploy_policy() -> Policy:
    """The policy every test broker runs (``write_data_dir`` copies deploy/policy.toml)."""
    return load_policy(DEPLOY_POLICY.read_text(encoding="utf-8"))


def draw_fan_out(rng: random.Random) -> int:
    return rng.choices(range(1, MAX_FAN_OUT + 1), FAN_OUT_WEIGHTS)[0]


def envelope(
    region: DemoRegion,
    sender: str,
    to: Iterable[str],
    payload: bytes,
    *,
    label: Label = INTERN,
    message_type: MessageType = MessageType.SITUATION_REPORT,
) -> bytes:
    """A signed envelope from ``sender`` to ``to``, created now and valid for an hour."""
    now = now_ms()
    directory = region.directory
    keys = [RecipientKey.of(directory.actor(a), now) for a in sorted(set(to))]  # type: ignore[arg-type]
    return build_envelope(
        sender=region.identities[sender],
        recipients=keys,
        label=label,
        message_type=message_type,
        payload=payload,
        content_type="application/json",
        created=now,
        expires=now + HOUR_MS,
    )


@dataclass(frozen=True)
class Planned:
    """One pre-built submission and what the policy says about it."""

    index: int
    sender: str
    data: bytes
    message_id: str
    recipients: tuple[str, ...]
    authorised: bool  # the policy accepts it: every recipient may have it

    @property
    def pairs(self) -> set[tuple[str, str]]:
        return {(self.message_id, r) for r in self.recipients}


def plan_traffic(region: DemoRegion, count: int, rng: random.Random) -> list[Planned]:
    """``count`` envelopes from random senders to random recipients (see FAN_OUT_WEIGHTS);
    message 0 goes to all 37 actors, every REFUSED_EVERY-th one must be refused."""
    actors = sorted(region.identities)
    cleared = sorted(a for a in actors if a != NOT_CLEARED)
    policy = deploy_policy()
    plan = []
    for index in range(count):
        payload = f'{{"index": {index}}}'.encode()
        if index % REFUSED_EVERY == REFUSED_EVERY - 1:
            sender = rng.choice(cleared)
            others = rng.sample(cleared, draw_fan_out(rng) - 1)
            to = [NOT_CLEARED, *others]
            data = envelope(region, sender, to, payload, label=SEKRETESS)
        else:
            sender = rng.choice(actors)
            to = actors if index == 0 else rng.sample(actors, draw_fan_out(rng))
            data = envelope(region, sender, to, payload)
        verdict = decide(
            data,
            directory=region.directory,
            policy=policy,
            mode=Mode.ORDINARY,
            now=now_ms(),
            seen=(),
        )
        header = header_of(data, region.directory)
        plan.append(
            Planned(
                index=index,
                sender=sender,
                data=data,
                message_id=header.id,
                recipients=header.recipients,
                authorised=isinstance(verdict, Accept),
            )
        )
    return plan


def fan_out_figures(plan: Sequence[Planned]) -> dict[str, Any]:
    sizes = [len(p.recipients) for p in plan]
    return {
        "envelopes": len(plan),
        "fan_out_mean": round(sum(sizes) / len(sizes), 2),
        "fan_out_max": max(sizes),
        "pairs": sum(sizes),
        "refused_by_policy": sum(not p.authorised for p in plan),
    }


# --- the actors' side ----------------------------------------------------------------------


class Network(Actors):
    """``Actors`` on a connection to every server in ``urls`` (it fails over between them).

    Its ``delivered`` receipts go through a queue that retries each until JetStream has it,
    as the client's outbox does (``Actors`` gives a receipt up when its publish fails, which
    a paused stream leader makes happen).
    """

    def __init__(self, urls: Sequence[str], region: DemoRegion, **kwargs: Any) -> None:
        super().__init__(urls[0], region, **kwargs)
        self.urls = list(urls)
        self._outbox: asyncio.Queue[tuple[str, bytes, str]] = asyncio.Queue()
        self._outbox_task: asyncio.Task[None] | None = None
        self.receipt_retries = 0
        self.receipts_given_up = 0

    async def start(self) -> Network:
        self.nc = await nats.connect(self.urls, **connect_options(name="test-actors"))
        self.js = self.nc.jetstream(timeout=5.0)
        self._sub = await self.js.pull_subscribe(
            subjects.DELIVER_WILDCARD,
            durable=self.CONSUMER,
            stream=subjects.DELIVER_STREAM,
            config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT, ack_wait=10.0),
        )
        self._pump_task = asyncio.create_task(self._pump(), name="test-actors-pump")
        self._outbox_task = asyncio.create_task(self._send_receipts(), name="test-receipts")
        return self

    async def close(self) -> None:
        if self._outbox_task is not None:
            self._outbox_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._outbox_task
        await super().close()

    async def _receipt(self, actor: str, opened: OpenedEnvelope) -> None:
        receipt = make_receipt(
            self.identity(actor),
            opened.header,
            opened.header_hash,
            ReceiptKind.DELIVERED,
            at=now_ms(),
        )
        self._outbox.put_nowait((actor, receipt, f"receipt.{opened.header.id}.{actor}"))

    async def _send_receipts(self) -> None:
        assert self.js is not None
        while True:
            actor, receipt, msg_id = await self._outbox.get()
            started = time.monotonic()
            while True:
                try:
                    await self.js.publish(
                        subjects.submit_subject(actor),
                        receipt,
                        timeout=PUBLISH_TIMEOUT_S,
                        headers={"Nats-Msg-Id": msg_id},
                    )
                    break
                except (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError):
                    self.receipt_retries += 1
                    if time.monotonic() - started > PUBLISH_GIVE_UP_S:
                        self.receipts_given_up += 1
                        break
                    await asyncio.sleep(RETRY_MAX_S)

    # Cheap running totals, for progress and for "everything arrived" waits.

    def deliveries(self) -> int:
        return sum(len(inbox.deliveries) for inbox in self.inboxes.values())

    def notices(self) -> int:
        return sum(len(inbox.notices) for inbox in self.inboxes.values())

    def forwarded_receipts(self) -> int:
        return sum(len(inbox.receipts) for inbox in self.inboxes.values())

    def delivered_pairs(self) -> set[tuple[str, str]]:
        return {(m, a) for a, inbox in self.inboxes.items() for m in inbox.deliveries}

    def receipt_pairs(self) -> Counter[tuple[str, str]]:
        """(message, recipient) of every ``delivered`` receipt forwarded to its sender."""
        return Counter(
            (r.message, r.recipient)
            for inbox in self.inboxes.values()
            for r in inbox.receipts
            if r.kind is ReceiptKind.DELIVERED
        )

    def redelivered_copies(self) -> int:
        """Raw copies the actors' side dropped because it had the message already."""
        return sum(n - 1 for inbox in self.inboxes.values() for n in inbox.copies.values())

    def verdicts(self) -> dict[str, list[tuple[NoticeKind, str | None]]]:
        """(kind, reason) of the notices per message id, as the senders got them."""
        found: dict[str, list[tuple[NoticeKind, str | None]]] = {}
        for inbox in self.inboxes.values():
            for notice in inbox.notices:
                if notice.message is not None:
                    reason = None if notice.reason is None else str(notice.reason)
                    found.setdefault(notice.message, []).append((notice.kind, reason))
        return found

    def refusal_reasons(self) -> Counter[str]:
        return Counter(
            str(n.reason)
            for inbox in self.inboxes.values()
            for n in inbox.notices
            if n.kind is NoticeKind.REJECTED
        )


# --- submitting --------------------------------------------------------------------------


@dataclass
class Publisher:
    """Submits planned envelopes over its own connection; one at a time, each retried
    under the dedupe id ``submit.<message id>`` until JetStream acknowledged it."""

    js: JetStreamContext
    acked: dict[str, float] = field(default_factory=dict)  # message id -> when acknowledged
    ack_times: list[float] = field(default_factory=list)  # ascending (one publish at a time)
    failed_attempts: int = 0
    slowest_s: float = 0.0  # the longest a single submission took, retries included
    unpaced: asyncio.Event = field(default_factory=asyncio.Event)  # set: the rest at once

    async def submit(self, item: Planned) -> None:
        started = time.monotonic()
        delay = RETRY_FIRST_S
        while True:
            try:
                await self.js.publish(
                    subjects.submit_subject(item.sender),
                    item.data,
                    timeout=PUBLISH_TIMEOUT_S,
                    headers={"Nats-Msg-Id": f"submit.{item.message_id}"},
                )
                break
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError) as exc:
                self.failed_attempts += 1
                if time.monotonic() - started > PUBLISH_GIVE_UP_S:
                    raise AssertionError(
                        f"submission {item.index} not acknowledged in {PUBLISH_GIVE_UP_S:g} s"
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX_S)
        now = time.monotonic()
        self.acked[item.message_id] = now
        self.ack_times.append(now)
        self.slowest_s = max(self.slowest_s, now - started)

    async def run(self, plan: Sequence[Planned], *, rate: float | None = None) -> None:
        """Submit ``plan`` in order; with ``rate``, at most that many per second until
        ``unpaced`` is set (the faults are over), then the rest as fast as it goes."""
        started = time.monotonic()
        for i, item in enumerate(plan):
            if rate is not None and not self.unpaced.is_set():
                ahead = started + i / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            await self.submit(item)

    def resumed_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the first acknowledgement after it (None: none yet)."""
        at = bisect.bisect_right(self.ack_times, moment)
        return self.ack_times[at] - moment if at < len(self.ack_times) else None


async def connect(urls: Sequence[str], name: str) -> NatsClient:
    return await nats.connect(list(urls), **connect_options(name=name))


async def close(nc: NatsClient) -> None:
    if not nc.is_closed:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(nc.close(), 5.0)


# --- reading back and counting ---------------------------------------------------------------


async def read_back(
    js: JetStreamContext, stream: str, subject: str, *, headers_only: bool = False
) -> list[Msg]:
    """Every message on ``subject`` in ``stream``, oldest first (bounded by STEP_S)."""
    sub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.ALL,
            headers_only=headers_only,
            inactive_threshold=30.0,
        ),
    )
    try:
        remaining = int((await sub.consumer_info()).num_pending or 0)
        found: list[Msg] = []
        deadline = time.monotonic() + STEP_S
        while remaining > 0 and time.monotonic() < deadline:
            try:
                batch = await sub.fetch(min(remaining, READ_BATCH), timeout=2.0)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            found.extend(batch)
            remaining -= len(batch)
        assert remaining <= 0, f"{remaining} messages of {stream} not read back in time"
        return found
    finally:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            await sub.unsubscribe()


async def stored_ids(js: JetStreamContext) -> Counter[str]:
    """How often each ``Nats-Msg-Id`` is stored in the deliver stream."""
    msgs = await read_back(
        js, subjects.DELIVER_STREAM, subjects.DELIVER_WILDCARD, headers_only=True
    )
    return Counter((m.headers or {}).get("Nats-Msg-Id", "") for m in msgs)


@dataclass(frozen=True)
class AuditCounts:
    """The audit events of the run, counted per message (and recipient)."""

    accepted: Counter[str]  # message id -> accepted events
    rejected: Counter[str]  # message id -> rejected events, replays left out
    receipts: Counter[tuple[str, str]]  # (message, recipient) -> delivered-receipt events
    reasons: Counter[str]  # rejected events by reason


async def complete_audit(
    js: JetStreamContext, plan: Sequence[Planned], *, timeout: float = STEP_S
) -> tuple[AuditCounts, float]:
    """The audit counts once every authorised message has its ``accepted`` event and every
    authorised pair its receipt event (a broker audits just after it forwarded a receipt);
    the last counts when the time is up. Returns them and the seconds waited."""
    accepted = {p.message_id for p in plan if p.authorised}
    pairs = {pair for p in plan if p.authorised for pair in p.pairs}
    started = time.monotonic()
    while True:
        counts = await audit_counts(js)
        complete = set(counts.accepted) >= accepted and set(counts.receipts) >= pairs
        waited = time.monotonic() - started
        if complete or waited > timeout:
            return counts, waited
        await asyncio.sleep(0.5)


async def audit_counts(js: JetStreamContext) -> AuditCounts:
    accepted: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    receipts: Counter[tuple[str, str]] = Counter()
    reasons: Counter[str] = Counter()
    for msg in await read_back(js, subjects.AUDIT_STREAM, subjects.AUDIT_WILDCARD):
        kind = msg.subject.rsplit(".", 1)[-1]
        if kind not in ("accepted", "rejected", "receipt"):
            continue
        event = json.loads(msg.data)
        if kind == "accepted":
            accepted[event["message"]] += 1
        elif kind == "rejected":
            reasons[event["reason"]] += 1
            if event["reason"] != "replay":
                rejected[event.get("message") or ""] += 1
        elif event.get("detail") == ReceiptKind.DELIVERED.value:
            receipts[(event["message"], event["recipients"][0])] += 1
    return AuditCounts(accepted, rejected, receipts, reasons)


def jepsen_counts(
    plan: Sequence[Planned], acked: Iterable[str], net: Network, stored: Counter[str]
) -> dict[str, int]:
    """The Jepsen counts over (message, recipient) pairs.

    lost: a pair of an acknowledged, authorised message that never reached the recipient;
    unexpected: a delivery of a message never sent; duplicate: a pair the application got
    twice, or whose dedupe id ``d.<message>.<recipient>`` the deliver stream holds twice
    (the actors' side drops copies by id like the client, so both are counted);
    unauthorised: a delivery of a sent message to a recipient the policy refuses.
    """
    sent = {p.message_id for p in plan}
    authorised = {pair for p in plan if p.authorised for pair in p.pairs}
    acked_ids = set(acked)
    acked_pairs = {(m, r) for m, r in authorised if m in acked_ids}
    delivered = net.delivered_pairs()
    in_stream = {k: n for k, n in stored.items() if k.startswith("d.")}
    return {
        "acked": len(acked_ids),
        "delivered": len(delivered),
        "lost": len(acked_pairs - delivered),
        "unexpected": sum(m not in sent for m, _ in delivered),
        "duplicate": sum(n > 1 for n in in_stream.values()),
        "unauthorised": sum(m in sent and (m, r) not in authorised for m, r in delivered),
        "redelivered_copies_dropped": net.redelivered_copies(),
    }


# --- the cluster and the audit trail ---------------------------------------------------------


async def wait_streams_current(js: JetStreamContext, timeout: float = STEP_S) -> float:
    """Wait until every stream (KV buckets too) has a leader and all replicas current;
    returns the seconds waited."""
    started = time.monotonic()
    while True:
        try:
            infos = await js.streams_info()
            if infos and all(
                i.cluster is not None
                and i.cluster.leader
                and all(r.current and not r.offline for r in i.cluster.replicas or [])
                for i in infos
            ):
                return time.monotonic() - started
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
            pass
        if time.monotonic() - started > timeout:
            raise AssertionError(f"streams not all current within {timeout:g} s")
        await asyncio.sleep(0.1)


async def stream_leader(js: JetStreamContext, stream: str, timeout: float = STEP_S) -> str:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
            info = await js.stream_info(stream)
            if info.cluster is not None and info.cluster.leader:
                return info.cluster.leader
        if time.monotonic() > deadline:
            raise AssertionError(f"no leader of {stream} within {timeout:g} s")
        await asyncio.sleep(0.1)


async def verified_audit(
    urls: Sequence[str], pinned: bytes, *, timeout: float = STEP_S
) -> TrailReport:
    """The report on the whole stored audit trail once the brokers sealed all of it (all
    events but the latest checkpoint itself); the last report when the time is up."""
    bus = await JetStreamBus.connect(tuple(urls), name="test-audit", startup_timeout=10.0)
    try:
        await bus.bind_buckets(subjects.STATE_BUCKET, subjects.DIRECTORY_BUCKET)
        versions = await directory_versions(bus, pinned)
        deadline = time.monotonic() + timeout
        while True:
            report = await verify_stream(bus, versions)
            if (report.verified and report.unsealed <= 1) or time.monotonic() > deadline:
                return report
            await asyncio.sleep(0.5)
    finally:
        await bus.close()


async def consumer_state(js: JetStreamContext) -> str:
    """The broker's and the actors' consumers, for a failure message."""
    parts = []
    for stream, durable in (
        (subjects.SUBMIT_STREAM, subjects.BROKER_CONSUMER),
        (subjects.DELIVER_STREAM, Network.CONSUMER),
    ):
        try:
            info = await js.consumer_info(stream, durable)
            parts.append(
                f"{durable}: pending {info.num_pending}, ack pending {info.num_ack_pending}, "
                f"redelivered {info.num_redelivered}, delivered {info.delivered}, "
                f"ack floor {info.ack_floor}"
            )
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            parts.append(f"{durable}: {exc!r}")
    return "; ".join(parts)


async def wait_for(predicate: Any, what: str, *, timeout: float, interval: float = 0.1) -> float:
    """Poll ``predicate`` until true; returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic() - started
