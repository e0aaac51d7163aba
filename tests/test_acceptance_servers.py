"""Acceptance, issue 9 security items 8 and 12, against real nats-server processes.

- 8 replay: 1 000 captured submissions (250 envelopes, their 750 ``delivered`` receipts)
  re-injected into a real broker at once and again after the streams' duplicate window
  (1 s here) → none accepted: each envelope gets a ``replay`` refusal, each receipt is
  dropped by JetStream or not recorded again; no second delivery, no second receipt
  recorded or forwarded. A recipient re-submitting the sender's envelope on its own
  subject is refused too (item 10 at the broker).
- 12 permissions: a server from the generated per-actor config (``broker/deploy.py``),
  the broker on its own user; every actor against three seeded others tries to publish
  to the other's submit and deliver subjects, subscribe to its deliveries and inbox,
  bind, fetch from, ack on and re-create its durable consumer → all refused by the
  server, while the actor's own consumer binds (the control).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js import api

from broker import deploy, subjects
from broker.config import BrokerConfig, StreamSettings
from broker.core import NoticeKind, OpenedEnvelope, ReceiptKind, make_receipt
from broker.demo import DemoRegion
from broker.service import Service

from . import nats_fixtures, service_helpers
from .acceptance import record
from .nats_fixtures import connect_options
from .service_helpers import (
    SERVICE_DEFAULTS,
    WAIT,
    Actors,
    BrokerFactory,
    delivery_ids,
    metric,
    now_ms,
    wait_until,
    write_data_dir,
)
from .test_deploy_nats import Server, _free_port

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory

pytestmark = pytest.mark.slow

WINDOW_S = 1.0
ENVELOPES = 250
RECIPIENTS = 3
STEP = 30.0  # bound on each phase of the replay scenario


class CapturingActors(Actors):
    """The actors' side, keeping the raw bytes of every receipt it signs."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.signed_receipts: dict[str, bytes] = {}  # msg id -> receipt

    async def _receipt(self, actor: str, opened: OpenedEnvelope) -> None:
        receipt = make_receipt(
            self.identity(actor), opened.header, opened.header_hash, ReceiptKind.DELIVERED,
            at=now_ms(),
        )  # fmt: skip
        msg_id = f"receipt.{opened.header.id}.{actor}"
        self.signed_receipts[msg_id] = receipt
        await self.submit(actor, receipt, msg_id=msg_id)


async def _inject(actors: Actors, items: list[tuple[str, bytes, str | None]]) -> int:
    """Publish every item on its actor's submit subject; the number JetStream dropped."""
    assert actors.js is not None
    dropped = 0
    for start in range(0, len(items), 100):
        acks = await asyncio.gather(*(
            actors.js.publish(subjects.submit_subject(a), data,
                              headers={"Nats-Msg-Id": m} if m else None)
            for a, data, m in items[start : start + 100]
        ))  # fmt: skip
        dropped += sum(bool(ack.duplicate) for ack in acks)
    return dropped


async def _idle(actors: Actors, broker: Service) -> None:
    assert actors.js is not None
    js = actors.js

    async def pending() -> int:
        info = await js.consumer_info(subjects.SUBMIT_STREAM, subjects.BROKER_CONSUMER)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    deadline = time.monotonic() + STEP
    while await pending():
        assert time.monotonic() < deadline, "the broker did not finish in time"
        await asyncio.sleep(0.05)


def _replays(service: Service) -> float:
    return sum(
        metric(service, "ssr_broker_envelopes_rejected_total", reason="replay", status=s)
        for s in ("actual", "exercise", "test")
    )


def _recorded(service: Service) -> float:
    return sum(
        metric(service, "ssr_broker_receipts_total", kind="delivered", status=s)
        for s in ("actual", "exercise", "test")
    )


async def test_replayed_envelopes_and_receipts_are_never_accepted_twice(
    broker_factory: BrokerFactory, nats_server: Any, live_region: DemoRegion
) -> None:
    started = time.monotonic()
    broker = await broker_factory(streams=StreamSettings(duplicate_window_s=WINDOW_S))
    actors = CapturingActors(nats_server.url, live_region)
    await actors.start()
    try:
        rng = random.Random(9_008)
        everyone = sorted(live_region.identities)
        envelopes: list[tuple[str, bytes]] = []
        for _ in range(ENVELOPES):
            sender = rng.choice(everyone)
            to = rng.sample([a for a in everyone if a != sender], RECIPIENTS)
            envelopes.append((sender, actors.envelope(sender, to)))
        await _inject(actors, [(s, d, None) for s, d in envelopes])
        for sender, data in envelopes:
            await actors.accepted_and_delivered(sender, data, timeout=STEP)
        await wait_until(
            lambda: (
                len(actors.signed_receipts) == ENVELOPES * RECIPIENTS
                and _recorded(broker) == ENVELOPES * RECIPIENTS
            ),
            "every delivered receipt recorded",
            timeout=STEP,
        )
        await _idle(actors, broker)
        receipts = [(m.split(".")[2], r, m) for m, r in actors.signed_receipts.items()]
        captured = [(s, d, None) for s, d in envelopes] + receipts
        assert len(captured) == 1000
        copies_before = sum(sum(i.copies.values()) for i in actors.inboxes.values())
        ids_before = await delivery_ids(actors.js)  # type: ignore[arg-type]
        figures: dict[str, Any] = {"captured": len(captured)}

        # "immediate": straight after capture (capturing takes longer than the 1 s window,
        # so the receipts' own dedupe ids have already expired there, as after a window).
        for phase in ("immediate", "after_window"):
            if phase == "after_window":
                await asyncio.sleep(WINDOW_S + 0.5)
            replays_before = _replays(broker)
            recorded_before = _recorded(broker)
            dropped = await _inject(actors, captured)
            await _idle(actors, broker)
            refused = _replays(broker) - replays_before
            figures[f"{phase}_dropped_by_jetstream"] = dropped
            figures[f"{phase}_replay_refusals"] = int(refused)
            figures[f"{phase}_second_receipts_recorded"] = int(_recorded(broker) - recorded_before)
            # Every envelope refused as a replay (none is dropped: it never had an id).
            assert refused == ENVELOPES, (phase, refused)
            assert _recorded(broker) == recorded_before
        await asyncio.sleep(0.5)  # any (wrong) second delivery has reached the pump
        ids_after = await delivery_ids(actors.js)  # type: ignore[arg-type]
        second_deliveries = sum(
            n - ids_before.get(i, 0) for i, n in ids_after.items() if i.startswith("d.")
        )
        forwarded_again = sum(
            n - ids_before.get(i, 0) for i, n in ids_after.items() if i.startswith("r.")
        )
        copies_after = sum(sum(i.copies.values()) for i in actors.inboxes.values())
        app_receipts = Counter(
            (r.message, r.recipient, r.kind) for i in actors.inboxes.values() for r in i.receipts
        )
        # Every envelope's sender got a replay notice about those exact bytes.
        notified = sum(
            any(n.kind is NoticeKind.REJECTED and n.reason == "replay"
                for n in actors[s].notices_about(d))
            for s, d in envelopes
        )  # fmt: skip
        figures |= {
            "second_deliveries": second_deliveries,
            "second_copies_to_recipients": copies_after - copies_before,
            "receipts_forwarded_again": forwarded_again,
            "receipts_at_senders_apps": sum(app_receipts.values()),
            "senders_notified_replay": notified,
            "seconds": round(time.monotonic() - started, 1),
        }
        record("8 replay", **figures)
        assert notified == ENVELOPES
        assert second_deliveries == 0
        assert copies_after == copies_before
        assert max(app_receipts.values()) == 1
        assert sum(app_receipts.values()) == ENVELOPES * RECIPIENTS
        assert forwarded_again == 0  # a repeated receipt is not forwarded to the sender again

        # Item 10 at the broker: recipients re-submit the sender's envelope as their own.
        resubmitted = [(rng.choice(_recipients(d, live_region)), d) for _, d in envelopes[:20]]
        await _inject(actors, [(r, d, None) for r, d in resubmitted])
        await _idle(actors, broker)
        await wait_until(  # the broker is done; its notices may still be on their way
            lambda: all(
                any(n.kind is NoticeKind.REJECTED for n in actors[r].notices_about(d))
                for r, d in resubmitted
            ),
            "a verdict on every resubmission",
            timeout=STEP,
        )
        mismatch = sum(
            any(n.reason == "sender_mismatch" for n in actors[r].notices_about(d))
            for r, d in resubmitted
        )
        record("10 surreptitious forwarding at the broker", tried=20, refused=mismatch)
        assert mismatch == 20
    finally:
        await actors.close()


def _recipients(data: bytes, region: DemoRegion) -> list[str]:
    return list(service_helpers.header_of(data, region.directory).recipients)


# --- 12: per-actor NATS permissions ----------------------------------------------------------

VICTIMS_PER_ACTOR = 3
REFUSAL_WAIT = 1.0


async def test_cross_actor_access_is_refused_by_the_server(
    tmp_path: Path, live_region: DemoRegion
) -> None:
    data_dir = tmp_path / "data"
    write_data_dir(data_dir, live_region)
    users = deploy.nats_users(live_region.directory)
    options = deploy.DeployOptions(
        port=_free_port(), monitor_port=_free_port(), store_dir=str(tmp_path / "js")
    )
    config = tmp_path / "nats.conf"
    config.write_text(deploy.render_single(users, options))
    urls = {u.name: deploy.client_urls(u, options)[0] for u in users}
    actor_ids = sorted(u.name for u in users if u.name != deploy.BROKER_USER)
    rng = random.Random(9_012)
    victims = {
        a: rng.sample([v for v in actor_ids if v != a], VICTIMS_PER_ACTOR) for a in actor_ids
    }
    async with Server(config, options.monitor_port) as server:
        broker = Service(
            BrokerConfig(
                data_dir=data_dir, nats_urls=(urls[deploy.BROKER_USER],), **SERVICE_DEFAULTS
            )
        )
        await asyncio.wait_for(broker.start(), WAIT)
        try:
            results = await asyncio.gather(*(_attack(a, urls[a], victims[a]) for a in actor_ids))
        finally:
            await asyncio.wait_for(broker.stop(), WAIT + 5)
        log = server.log.read_text()
    outcomes: Counter[str] = Counter()
    attempts = refused = controls = 0
    misses: list[str] = []
    for own_ok, per_attempt in results:
        controls += own_ok
        for name, ok in per_attempt:
            attempts += 1
            refused += ok
            outcomes[f"{name}.refused" if ok else f"{name}.MISSED"] += 1
            if not ok:
                misses.append(name)
    record(
        "12 NATS permissions",
        actors=len(actor_ids),
        pairs=len(actor_ids) * VICTIMS_PER_ACTOR,
        attempts=attempts,
        refused=refused,
        own_consumer_bound=f"{controls}/{len(actor_ids)}",
        violations_logged=log.count("Violation"),
    )
    assert not misses, Counter(misses)
    assert refused == attempts == len(actor_ids) * VICTIMS_PER_ACTOR * 9
    assert controls == len(actor_ids)


async def _attack(actor: str, url: str, victims: list[str]) -> tuple[bool, list[tuple[str, bool]]]:
    """``actor``'s attempts on each victim; (own consumer bound, [(attempt, refused)])."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    nc = await nats.connect(
        url, **connect_options(error_cb=on_error, inbox_prefix=f"_INBOX_{actor}".encode())
    )
    js = nc.jetstream(timeout=REFUSAL_WAIT)
    try:
        own = await js.pull_subscribe(
            subjects.deliver_subject(actor),
            durable=f"ssr-client-{actor}",
            stream=subjects.DELIVER_STREAM,
            config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT),
        )
        own_ok = (await own.consumer_info()).name == f"ssr-client-{actor}"
        attempts = [a for v in victims for a in _attempts(nc, js, actor, v)]

        async def attempt(name: str, verb: str, subject: str, op: Any) -> tuple[str, bool]:
            answered = False
            sub = None
            if op is None:
                sub = await nc.subscribe(subject)
                await nc.flush(timeout=REFUSAL_WAIT)
            else:
                try:
                    await op()
                    answered = name != "publish_deliver"  # a core publish never answers
                except Exception:  # any failure is a refusal; the -ERR decides below
                    answered = False
            deadline = time.monotonic() + REFUSAL_WAIT
            while time.monotonic() < deadline:
                if any("permissions violation" in e and verb in e and subject.lower() in e
                       for e in errors):  # fmt: skip
                    break
                await asyncio.sleep(0.02)
            violation = any(
                "permissions violation" in e and verb in e and subject.lower() in e for e in errors
            )
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            return name, violation and not answered

        done = await asyncio.gather(*(attempt(*a) for a in attempts))
        return own_ok, list(done)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 5.0)


def _attempts(nc: Any, js: Any, actor: str, victim: str) -> list[tuple[str, str, str, Any]]:
    """(name, verb in the server's -ERR, subject, operation or None for a subscribe)."""
    deliver, durable = subjects.DELIVER_STREAM, f"ssr-client-{victim}"
    submit, delivery = subjects.submit_subject(victim), subjects.deliver_subject(victim)
    info = f"$JS.API.CONSUMER.INFO.{deliver}.{durable}"
    fetch = f"$JS.API.CONSUMER.MSG.NEXT.{deliver}.{durable}"
    ack = f"$JS.ACK.{deliver}.{durable}.1.1.1.1.0"
    recreate = f"$JS.API.CONSUMER.CREATE.{deliver}.{durable}.{delivery}"
    own_name = f"$JS.API.CONSUMER.CREATE.{deliver}.ssr-client-{actor}.{delivery}"

    def consumer(name: str) -> bytes:
        config = {"durable_name": name, "filter_subject": delivery, "ack_policy": "explicit"}
        return json.dumps({"stream_name": deliver, "config": config}).encode()

    async def publish_submit() -> Any:
        return await js.publish(submit, b"x", timeout=REFUSAL_WAIT)

    async def publish_deliver() -> Any:
        return await nc.publish(delivery, b"x")

    async def bind() -> Any:
        return await js.pull_subscribe(delivery, durable=durable, stream=deliver)

    def request(subject: str, body: bytes = b"") -> Any:
        async def op() -> Any:
            return await nc.request(subject, body, timeout=REFUSAL_WAIT)

        return op

    return [
        ("publish_submit", "publish", submit, publish_submit),
        ("publish_deliver", "publish", delivery, publish_deliver),
        ("subscribe_deliver", "subscription", delivery, None),
        ("subscribe_inbox", "subscription", f"_INBOX_{victim}.>", None),
        ("bind_durable", "publish", info, bind),
        ("fetch_durable", "publish", fetch, request(fetch, b'{"batch":1}')),
        ("ack_durable", "publish", ack, request(ack)),
        ("recreate_durable", "publish", recreate, request(recreate, consumer(durable))),
        (
            "own_durable_on_victim_filter",
            "publish",
            own_name,
            request(own_name, consumer(f"ssr-client-{actor}")),
        ),
    ]
