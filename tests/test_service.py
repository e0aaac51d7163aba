"""The broker service against a real nats-server: routing, refusals, receipts, state, HTTP.

Each test gets its own nats-server, data folder and ``Service``; the actors' side
is :class:`tests.service_helpers.Actors`. Outcomes are checked where an operator
or an actor would see them: signed notices (verified), deliveries opened by the
recipients, the SSR_AUDIT stream, KV buckets and the service's metrics.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from broker import subjects
from broker.config import BrokerConfig
from broker.core import (
    Control,
    EncryptionKeyPair,
    Identity,
    Incident,
    Label,
    MessageType,
    Mode,
    NoticeKind,
    Reason,
    ReceiptKind,
    RecipientKey,
    Reference,
    ReferenceKind,
    SigningKeyPair,
    Status,
    Tlp,
    build_envelope,
    make_receipt,
    read_envelope,
    sign_directory,
    successor,
)
from broker.demo import DemoRegion
from broker.embedded import EmbeddedNats, EmbeddedState
from broker.errors import NatsUnavailable
from broker.router import MessageRecord
from broker.service import Service

from . import nats_fixtures, service_helpers
from .service_helpers import (
    INTERN,
    SEKRETESS,
    Actors,
    BrokerFactory,
    BrokerProcess,
    audit_events,
    header_of,
    metric,
    now_ms,
    sha256_hex,
    wait_for_audit,
    wait_until,
    write_data_dir,
)

# Fixtures bound to names here (pytest finds fixtures by module attribute).
nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory
running_broker = service_helpers.running_broker
actors = service_helpers.actors

ACCEPTED = "ssr_broker_envelopes_accepted_total"
REJECTED = "ssr_broker_envelopes_rejected_total"
RECEIVED = "ssr_broker_envelopes_received_total"
TO = ("solna", "sos-alarm", "stockholm")


@pytest_asyncio.fixture
async def net(running_broker: Service, actors: Actors) -> Actors:
    return await actors.start()


async def message_record(service: Service, message_id: str) -> MessageRecord:
    assert service.bus is not None
    entry = await service.bus.kv_get(subjects.MESSAGES_BUCKET, message_id)
    assert entry is not None, f"no record for {message_id}"
    return MessageRecord.model_validate_json(entry.value)


async def good_message_still_routed(net: Actors) -> None:
    _, data = await net.send("nacka", ["stockholm"], text="still working")
    await net.accepted_and_delivered("nacka", data)


# --- the happy path ------------------------------------------------------------------------


async def test_accepted_delivered_once_receipts_forwarded_and_audited(
    running_broker: Service, net: Actors
) -> None:
    header, data = await net.send("nacka", TO, text="Lägesbild 14:00")

    notice = await net.accepted_and_delivered("nacka", data)
    assert notice.message == header.id
    assert notice.header_hash == read_envelope(data, net.directory).header_hash
    assert notice.recipients == TO
    assert notice.broker == "ssr-broker"
    for recipient in TO:
        opened = net[recipient].deliveries[header.id]
        assert json.loads(opened.payload) == {"text": "Lägesbild 14:00"}
        assert net[recipient].copies[header.id] == 1
        assert net[recipient].refused == []
    assert header.id not in net["nacka"].deliveries  # the sender is not a recipient

    # Each recipient's delivered receipt comes back to the sender, and is recorded.
    await wait_until(lambda: len(net["nacka"].receipts) == 3, "three receipts to nacka")
    assert {(r.message, r.recipient, r.kind) for r in net["nacka"].receipts} == {
        (header.id, r, ReceiptKind.DELIVERED) for r in TO
    }
    record = await message_record(running_broker, header.id)
    assert record.submitted_by == "nacka"
    assert record.unconfirmed() == ()
    assert set(record.receipts) == set(TO)
    assert all(set(kinds) == {"delivered"} for kinds in record.receipts.values())

    assert running_broker.bus is not None
    js = running_broker.bus.js
    [accepted] = await audit_events(js, "accepted")
    assert accepted["message"] == header.id
    assert accepted["actor"] == "nacka"
    assert accepted["recipients"] == list(TO)
    assert accepted["status"] == "actual"
    assert accepted["priority"] == "routine"
    assert accepted["label"]["classification"] == "INTERN"
    assert accepted["broker"] == "ssr-broker"
    receipts = await wait_for_audit(js, "receipt", lambda e: e["message"] == header.id, count=3)
    assert sorted(e["recipients"][0] for e in receipts) == sorted(TO)
    assert {e["detail"] for e in receipts} == {"delivered"}
    assert await audit_events(js, "rejected") == []

    m = running_broker
    assert metric(m, RECEIVED, status="actual") == 1
    assert metric(m, ACCEPTED, status="actual") == 1
    assert metric(m, ACCEPTED, status="exercise") == 0
    labels = {"classification": "INTERN", "priority": "routine", "status": "actual"}
    assert metric(m, "ssr_broker_deliveries_total", **labels) == 3
    assert metric(m, "ssr_broker_receipts_total", kind="delivered", status="actual") == 3
    assert metric(m, "ssr_broker_notices_sent_total", kind="accepted") == 1
    assert metric(m, "ssr_broker_audit_events_total", kind="accepted") == 1
    assert metric(m, "ssr_broker_audit_events_total", kind="receipt") == 3


async def test_exercise_traffic_is_counted_and_audited_as_exercise(
    running_broker: Service, net: Actors
) -> None:
    header, data = await net.send(
        "sos-alarm", ["nacka", "polisen-stockholm"], status=Status.EXERCISE
    )

    await net.accepted_and_delivered("sos-alarm", data)
    assert net["nacka"].deliveries[header.id].header.status is Status.EXERCISE
    assert metric(running_broker, ACCEPTED, status="exercise") == 1
    assert metric(running_broker, ACCEPTED, status="actual") == 0
    assert metric(running_broker, RECEIVED, status="exercise") == 1
    labels = {"classification": "INTERN", "priority": "routine", "status": "exercise"}
    assert metric(running_broker, "ssr_broker_deliveries_total", **labels) == 2
    await wait_until(lambda: len(net["sos-alarm"].receipts) == 2, "two receipts")
    assert (
        metric(running_broker, "ssr_broker_receipts_total", kind="delivered", status="exercise")
        == 2
    )
    assert running_broker.bus is not None
    [event] = await audit_events(running_broker.bus.js, "accepted")
    assert (event["message"], event["status"]) == (header.id, "exercise")


# --- bad input -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """A bad submission and what the broker must answer."""

    actor: str  # whose submit subject it goes to; the notice goes there
    data: bytes
    reason: Reason
    status: str = "actual"  # metric/audit status: "unknown" when the header does not verify
    message: str | None = None  # message id the notice names, where the envelope verified
    recipients: tuple[str, ...] = ()


BadCase = Callable[[Actors], Awaitable[Bad]]


async def garbage(net: Actors) -> Bad:
    return Bad("nacka", b"\x00\xffthis is not a frame at all", Reason.MALFORMED, "unknown")


async def oversized(net: Actors) -> Bad:
    # Over the policy's 1 MiB, under the stream's 4 MiB + 64 KiB.
    data = net.envelope("nacka", ["stockholm"], text="x" * (1024 * 1024 + 10_000))
    assert 1024 * 1024 < len(data) < 4 * 1024 * 1024
    # Refused before verification, so the notice names no message; the metric and audit
    # still read the (verifying) header's status.
    return Bad("nacka", data, Reason.TOO_LARGE)


async def unknown_sender_key(net: Actors) -> Bad:
    impostor = Identity.generate("nacka")  # says it is Nacka, with a key nobody registered
    now = now_ms()
    data = build_envelope(
        sender=impostor,
        recipients=[RecipientKey.of(net.directory.actor("stockholm"), now)],  # type: ignore[arg-type]
        label=INTERN,
        message_type=MessageType.SITUATION_REPORT,
        payload=b"{}",
        created=now,
        expires=now + 3_600_000,
    )
    return Bad("nacka", data, Reason.UNKNOWN_SENDER_KEY, "unknown")


async def bad_signature(net: Actors) -> Bad:
    data = bytearray(net.envelope("nacka", ["stockholm"]))
    data[-1] ^= 0x01
    return Bad("nacka", bytes(data), Reason.BAD_SIGNATURE, "unknown")


async def replay(net: Actors) -> Bad:
    header, data = await net.send("nacka", ["stockholm"])
    await net.accepted_and_delivered("nacka", data)
    return Bad("nacka", data, Reason.REPLAY, message=header.id)


async def expired(net: Actors) -> Bad:
    # Created after the sender's key became valid (a minute before the session), expired now.
    created = now_ms() - 10_000
    data = net.envelope("nacka", ["stockholm"], created=created, expires=created + 9_000)
    return Bad("nacka", data, Reason.EXPIRED, message=header_of(data, net.directory).id)


async def unknown_recipient(net: Actors) -> Bad:
    stranger = EncryptionKeyPair.generate()
    now = now_ms()
    data = build_envelope(
        sender=net.identity("nacka"),
        recipients=[
            RecipientKey.of(net.directory.actor("stockholm"), now),  # type: ignore[arg-type]
            RecipientKey("okand-aktor", stranger.key_id, stranger.public),
        ],
        label=INTERN,
        message_type=MessageType.SITUATION_REPORT,
        payload=b"{}",
        created=now,
        expires=now + 3_600_000,
    )
    return Bad(
        "nacka",
        data,
        Reason.RECIPIENT_UNKNOWN,
        message=header_of(data, net.directory).id,
        recipients=("okand-aktor",),
    )


async def above_ceiling(net: Actors) -> Bad:
    hemlig = Label(policy="ssr", classification="HEMLIG", tlp=Tlp.RED)
    data = net.envelope("forsvarsmakten-mmr", ["stockholm"], label=hemlig)
    message = header_of(data, net.directory).id
    return Bad("forsvarsmakten-mmr", data, Reason.ABOVE_CEILING, message=message)


async def tlp_red_forward(net: Actors) -> Bad:
    red = Label(policy="ssr", classification="INTERN", tlp=Tlp.RED)
    original, data = await net.send("nacka", ["stockholm"], label=red)
    await net.accepted_and_delivered("nacka", data)
    reference = Reference(
        kind=ReferenceKind.FORWARD,
        message=original.id,
        header_hash=read_envelope(data, net.directory).header_hash,
    )
    forward = net.envelope("stockholm", ["solna"], label=red, references=(reference,))
    return Bad(
        "stockholm",
        forward,
        Reason.TLP_FORWARD_FORBIDDEN,
        message=header_of(forward, net.directory).id,
        recipients=("solna",),
    )


async def unauthorised_mode_change(net: Actors) -> Bad:
    data = net.envelope(
        "nacka",
        ["stockholm"],
        message_type=MessageType.MODE_CHANGE,
        control=Control(mode=Mode.HEIGHTENED_ALERT),
    )
    return Bad("nacka", data, Reason.TYPE_NOT_ALLOWED, message=header_of(data, net.directory).id)


async def recipient_not_cleared(net: Actors) -> Bad:
    data = net.envelope("nacka", ["stockholm", "stockholms-hamnar"], label=SEKRETESS)
    return Bad(
        "nacka",
        data,
        Reason.RECIPIENT_NOT_CLEARED,
        message=header_of(data, net.directory).id,
        recipients=("stockholms-hamnar",),  # cleared for INTERN only
    )


async def on_another_actors_subject(net: Actors) -> Bad:
    data = net.envelope("nacka", ["stockholm"])
    message = header_of(data, net.directory).id
    return Bad("solna", data, Reason.SENDER_MISMATCH, message=message)


BAD_CASES: dict[str, BadCase] = {
    "garbage": garbage,
    "oversized": oversized,
    "unknown_sender_key": unknown_sender_key,
    "bad_signature": bad_signature,
    "replay": replay,
    "expired": expired,
    "unknown_recipient": unknown_recipient,
    "above_ceiling": above_ceiling,
    "recipient_not_cleared": recipient_not_cleared,
    "tlp_red_forward": tlp_red_forward,
    "unauthorised_mode_change": unauthorised_mode_change,
    "sender_mismatch": on_another_actors_subject,
}


@pytest.mark.parametrize("case", BAD_CASES.values(), ids=BAD_CASES.keys())
async def test_bad_envelope_is_refused_with_notice_audit_and_metric(
    running_broker: Service, net: Actors, case: BadCase
) -> None:
    bad = await case(net)
    deliveries_before = {a: set(inbox.deliveries) for a, inbox in net.inboxes.items()}

    await net.submit(bad.actor, bad.data)

    inbox = net[bad.actor]
    await wait_until(
        lambda: any(n.kind is NoticeKind.REJECTED for n in inbox.notices_about(bad.data)),
        f"a rejected notice to {bad.actor}",
    )
    [notice] = [n for n in inbox.notices_about(bad.data) if n.kind is NoticeKind.REJECTED]
    assert notice.reason == bad.reason.value
    assert notice.to == bad.actor
    assert notice.message == bad.message
    assert notice.recipients == bad.recipients
    assert notice.submission == sha256_hex(bad.data)

    service = running_broker
    assert metric(service, REJECTED, reason=bad.reason.value, status=bad.status) == 1
    assert metric(service, "ssr_broker_notices_sent_total", kind="rejected") == 1
    assert service.bus is not None
    [event] = await wait_for_audit(service.bus.js, "rejected", lambda e: True)
    assert event["reason"] == bad.reason.value
    assert event["actor"] == bad.actor
    assert event["message"] == bad.message
    assert event["status"] == bad.status
    assert event["recipients"] == list(bad.recipients)

    # Nothing of the refused submission reached anyone, and the broker carries on.
    await good_message_still_routed(net)
    for actor, before in deliveries_before.items():
        new = set(net[actor].deliveries) - before
        assert bad.message not in new
    assert service.live()
    assert metric(service, "ssr_broker_errors_total", stage="decide") == 0


async def test_bad_receipts_are_refused_and_counted(running_broker: Service, net: Actors) -> None:
    garbage_receipt = b"SSR\x01R" + bytes(40)
    never_sent = read_envelope(net.envelope("nacka", ["stockholm"]), net.directory)
    unknown = make_receipt(
        net.identity("stockholm"),
        never_sent.header,
        never_sent.header_hash,
        ReceiptKind.DELIVERED,
        at=now_ms(),
    )
    header, data = await net.send("nacka", ["stockholm"])
    await net.accepted_and_delivered("nacka", data)
    await wait_until(lambda: len(net["nacka"].receipts) == 1, "stockholm's receipt")
    opened = net["stockholm"].deliveries[header.id]
    # Stockholm's genuine receipt, published by Solna; and Stockholm repeating its receipt.
    misplaced = make_receipt(
        net.identity("stockholm"),
        opened.header,
        opened.header_hash,
        ReceiptKind.DELIVERED,
        at=now_ms(),
    )
    cases = (
        ("stockholm", garbage_receipt, "receipt_malformed"),
        ("stockholm", unknown, "receipt_unknown_message"),
        ("solna", misplaced, "receipt_signer_mismatch"),
    )
    for actor, receipt, _ in cases:
        await net.submit(actor, receipt)
    await net.submit("stockholm", misplaced)  # a repeat: recorded already, not refused

    for actor, receipt, reason in cases:
        notice = await net.verdict(actor, receipt)
        assert (notice.kind, notice.reason, notice.message) == (NoticeKind.REJECTED, reason, None)
        name = "ssr_broker_receipts_rejected_total"
        assert metric(running_broker, name, reason=reason) == 1
    assert running_broker.bus is not None
    events = await wait_for_audit(
        running_broker.bus.js, "receipt_rejected", lambda e: True, count=3
    )
    assert sorted((e["actor"], e["reason"]) for e in events) == sorted(
        (actor, reason) for actor, _, reason in cases
    )

    await good_message_still_routed(net)  # routed after the repeat: the repeat is handled
    await wait_until(lambda: len(net["nacka"].receipts) == 2, "the good message's receipt")
    assert [r.message for r in net["nacka"].receipts].count(header.id) == 1
    name = "ssr_broker_receipts_total"
    assert metric(running_broker, name, kind="delivered", status="actual") == 2
    record = await message_record(running_broker, header.id)
    assert set(record.receipts) == {"stockholm"}
    assert net["stockholm"].notices_about(misplaced) == []


# --- mode and incidents --------------------------------------------------------------------


async def test_mode_change_by_the_authority_applies_the_overlay(
    running_broker: Service, net: Actors
) -> None:
    # Ordinary mode: a situation report need not go to Länsstyrelsen.
    _, before = await net.send("nacka", ["stockholm"])
    await net.accepted_and_delivered("nacka", before)
    assert metric(running_broker, "ssr_broker_mode", mode="ordinary") == 1

    header, change = await net.send(
        "lansstyrelsen-stockholm",
        ["nacka", "stockholm"],
        message_type=MessageType.MODE_CHANGE,
        control=Control(mode=Mode.HEIGHTENED_ALERT),
        text="Höjd beredskap",
    )
    await net.accepted_and_delivered("lansstyrelsen-stockholm", change)

    assert running_broker.bus is not None
    entry = await running_broker.bus.kv_get(subjects.STATE_BUCKET, subjects.MODE_KEY)
    assert entry is not None
    assert entry.value == b"heightened_alert"
    assert metric(running_broker, "ssr_broker_mode", mode="heightened_alert") == 1
    assert metric(running_broker, "ssr_broker_mode", mode="ordinary") == 0
    [event] = await audit_events(running_broker.bus.js, "mode_change")
    assert (event["message"], event["actor"]) == (header.id, "lansstyrelsen-stockholm")
    assert "heightened_alert" in event["detail"]

    # Höjd beredskap: every situation report must also go to Länsstyrelsen.
    _, refused = await net.send("nacka", ["stockholm"])
    notice = await net.verdict("nacka", refused)
    assert (notice.kind, notice.reason) == (NoticeKind.REJECTED, "required_recipient_missing")
    assert notice.recipients == ("lansstyrelsen-stockholm",)
    _, fixed = await net.send("nacka", ["lansstyrelsen-stockholm", "stockholm"])
    await net.accepted_and_delivered("nacka", fixed)


async def test_incident_opens_limits_participants_and_closes(
    running_broker: Service, net: Actors
) -> None:
    incident = "storm-ylva"
    service = running_broker
    assert service.bus is not None
    _, activation = await net.send(
        "lansstyrelsen-stockholm",
        ["nacka", "stockholm"],
        message_type=MessageType.ACTIVATION,
        incident=incident,
        control=Control(incident_type="storm"),
    )
    await net.accepted_and_delivered("lansstyrelsen-stockholm", activation)
    entry = await service.bus.kv_get(subjects.STATE_BUCKET, subjects.incident_key(incident))
    assert entry is not None
    record = Incident.parse(entry.value, max_bytes=64 * 1024)
    assert (record.type, record.owner, record.is_open) == ("storm", "lansstyrelsen-stockholm", True)
    assert record.participants == ("lansstyrelsen-stockholm", "nacka", "stockholm")
    assert metric(service, "ssr_broker_open_incidents", status="actual") == 1

    # Inside the incident: only to participants.
    _, inside = await net.send("nacka", ["stockholm"], incident=incident)
    await net.accepted_and_delivered("nacka", inside)
    _, outside = await net.send("nacka", ["solna", "stockholm"], incident=incident)
    notice = await net.verdict("nacka", outside)
    assert (notice.kind, notice.reason, notice.recipients) == (
        NoticeKind.REJECTED,
        "not_incident_participant",
        ("solna",),
    )

    # Closed by its owner; afterwards nothing more in it.
    _, close = await net.send(
        "lansstyrelsen-stockholm",
        ["nacka", "stockholm"],
        message_type=MessageType.INCIDENT_CLOSE,
        incident=incident,
    )
    await net.accepted_and_delivered("lansstyrelsen-stockholm", close)
    entry = await service.bus.kv_get(subjects.STATE_BUCKET, subjects.incident_key(incident))
    assert entry is not None
    assert not Incident.parse(entry.value, max_bytes=64 * 1024).is_open
    assert metric(service, "ssr_broker_open_incidents", status="actual") == 0
    _, late = await net.send("nacka", ["stockholm"], incident=incident)
    notice = await net.verdict("nacka", late)
    assert (notice.kind, notice.reason) == (NoticeKind.REJECTED, "incident_closed")

    events = await audit_events(service.bus.js, "incident_change")
    assert [(e["incident"], e["actor"]) for e in events] == [
        (incident, "lansstyrelsen-stockholm")
    ] * 2
    assert [e["detail"] for e in events] == ["open (storm)", "closed"]


async def test_state_changes_apply_to_the_very_next_message(
    broker_factory: BrokerFactory, actors: Actors
) -> None:
    """The periodic state refresh must never roll back a change the router just made."""
    service = await broker_factory(sweep_interval_s=0.005)  # refresh all the time
    net = await actors.start()
    pairs = []
    for i in range(12):
        incident = f"brand-{i}"
        activation = net.envelope(
            "lansstyrelsen-stockholm",
            ["nacka", "stockholm"],
            message_type=MessageType.ACTIVATION,
            incident=incident,
            control=Control(incident_type="major-accident"),
        )
        follow_up = net.envelope("nacka", ["stockholm"], incident=incident)
        await net.submit("lansstyrelsen-stockholm", activation)
        await net.submit("nacka", follow_up)
        pairs.append((activation, follow_up))
    for activation, follow_up in pairs:
        assert (
            await net.verdict("lansstyrelsen-stockholm", activation)
        ).kind is NoticeKind.ACCEPTED
        notice = await net.verdict("nacka", follow_up)
        assert (notice.kind, notice.reason) == (NoticeKind.ACCEPTED, None)
    assert metric(service, "ssr_broker_open_incidents", status="actual") == 12


async def test_an_incident_opened_through_one_broker_is_known_to_the_other(
    broker_factory: BrokerFactory, actors: Actors
) -> None:
    """Two brokers share the work; the one that did not open the incident must not refuse
    its traffic as unknown while it waits for its next state refresh."""
    first = await broker_factory(sweep_interval_s=30.0, fetch_batch=1)
    second = await broker_factory(sweep_interval_s=30.0, fetch_batch=1)
    net = await actors.start()
    pairs = []
    for i in range(8):
        incident = f"vatten-{i}"
        activation = net.envelope(
            "lansstyrelsen-stockholm",
            ["nacka", "stockholm"],
            message_type=MessageType.ACTIVATION,
            incident=incident,
            control=Control(incident_type="water-supply"),
        )
        await net.submit("lansstyrelsen-stockholm", activation)
        await net.accepted_and_delivered("lansstyrelsen-stockholm", activation)
        follow_up = net.envelope("nacka", ["stockholm"], incident=incident)
        await net.submit("nacka", follow_up)
        pairs.append(follow_up)
    for follow_up in pairs:
        notice = await net.verdict("nacka", follow_up)
        assert (notice.kind, notice.reason) == (NoticeKind.ACCEPTED, None)
    accepted = [metric(s, ACCEPTED, status="actual") for s in (first, second)]
    assert sum(accepted) == 16


# --- escalation ----------------------------------------------------------------------------

TINY_DEADLINES = """
format = 1
id = "ssr"
version = 2

[receipt_deadlines]
routine = 2
priority = 1
immediate = 1
flash = 1
"""


async def test_escalation_names_the_silent_recipient_exactly_once_with_two_brokers(
    broker_factory: BrokerFactory, actors: Actors
) -> None:
    first = await broker_factory(policy_toml=TINY_DEADLINES)
    second = await broker_factory()  # same data folder: same policy, second sweeper
    actors.silent = {"solna"}
    net = await actors.start()
    header, data = await net.send("nacka", ["solna", "stockholm"])
    await net.accepted_and_delivered("nacka", data)

    await wait_until(
        lambda: bool(net["nacka"].notices_for(header.id, NoticeKind.ESCALATION)),
        "an escalation notice",
        timeout=8.0,
    )
    await asyncio.sleep(1.0)  # several more sweeps of both brokers
    [escalation] = net["nacka"].notices_for(header.id, NoticeKind.ESCALATION)
    assert escalation.recipients == ("solna",)
    assert escalation.to == "nacka"
    assert escalation.header_hash == read_envelope(data, net.directory).header_hash
    [receipt] = net["nacka"].receipts
    assert receipt.recipient == "stockholm"

    assert first.bus is not None
    events = await audit_events(first.bus.js, "escalation")
    assert [(e["message"], e["recipients"]) for e in events] == [(header.id, ["solna"])]
    name = "ssr_broker_escalations_total"
    counts = [metric(s, name, priority="routine", status="actual") for s in (first, second)]
    assert sorted(counts) == [0, 1]
    record = await message_record(first, header.id)
    assert record.escalated
    assert record.unconfirmed() == ("solna",)


# --- the directory -------------------------------------------------------------------------


async def test_directory_update_verified_against_the_authority(
    running_broker: Service, net: Actors
) -> None:
    region = net.region
    current = region.directory
    document = successor(current, issued=now_ms())
    update = sign_directory(document, region.authority)
    forged = sign_directory(successor(current, issued=now_ms()), SigningKeyPair.generate())
    service = running_broker
    assert service.bus is not None

    await net.submit("lansstyrelsen-stockholm", update)
    notice = await net.verdict("lansstyrelsen-stockholm", update)
    assert (notice.kind, notice.reason) == (NoticeKind.ACCEPTED, None)
    assert notice.detail == "directory version 2"
    entry = await service.bus.kv_get(subjects.DIRECTORY_BUCKET, subjects.directory_key(2))
    assert entry is not None
    assert entry.value == update
    assert metric(service, "ssr_broker_directory_version") == 2
    [change] = await audit_events(service.bus.js, "directory_change")
    assert change["actor"] == "lansstyrelsen-stockholm"

    await net.submit("nacka", forged)
    notice = await net.verdict("nacka", forged)
    assert (notice.kind, notice.reason) == (NoticeKind.REJECTED, "directory_unknown_signer")
    assert await service.bus.kv_get(subjects.DIRECTORY_BUCKET, subjects.directory_key(3)) is None
    [refusal] = await wait_for_audit(service.bus.js, "directory_rejected", lambda e: True)
    assert (refusal["actor"], refusal["reason"]) == ("nacka", "directory_unknown_signer")
    assert metric(service, "ssr_broker_directory_version") == 2
    await good_message_still_routed(net)


# --- HTTP and lifecycle --------------------------------------------------------------------


async def test_http_health_readiness_and_metrics(running_broker: Service, net: Actors) -> None:
    _, data = await net.send("nacka", ["stockholm"])
    await net.accepted_and_delivered("nacka", data)
    assert running_broker.http is not None
    base = running_broker.http.url
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(f"{base}/healthz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}
        async with session.get(f"{base}/readyz") as response:
            assert response.status == 200
            assert await response.json() == {
                "status": "ready",
                "checks": {"nats_connected": True, "streams_ready": True, "consuming": True},
            }
        async with session.get(f"{base}/metrics") as response:
            assert response.status == 200
            text = await response.text()
    assert 'ssr_broker_envelopes_accepted_total{status="actual"} 1.0' in text
    assert "ssr_broker_nats_connected 1.0" in text
    assert 'ssr_broker_mode{mode="ordinary"} 1.0' in text


async def test_start_fails_promptly_when_nats_is_unreachable(
    tmp_path: Path, live_region: DemoRegion
) -> None:
    with socket.socket() as probe:  # a loopback port that nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    write_data_dir(tmp_path / "data", live_region)
    config = BrokerConfig(
        data_dir=tmp_path / "data",
        nats_urls=(f"nats://127.0.0.1:{port}",),
        http_port=0,
        nats_startup_timeout_s=1.0,
    )
    service = Service(config)
    with pytest.raises(NatsUnavailable, match="cannot connect to NATS"):
        await asyncio.wait_for(service.start(), 10)
    assert service.http is None
    assert not service.live()


async def test_a_failed_start_leaves_nothing_running(
    tmp_path: Path, live_region: DemoRegion
) -> None:
    """HTTP port taken: start fails, and the embedded nats-server it started is stopped."""
    write_data_dir(tmp_path / "data", live_region)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = BrokerConfig(data_dir=tmp_path / "data", http_port=taken.getsockname()[1])
        service = Service(config)  # no NATS URL: embedded nats-server in the data folder
        with pytest.raises(OSError, match="address already in use"):
            await asyncio.wait_for(service.start(), 20)
    assert service.embedded is not None
    assert service.embedded.state is EmbeddedState.STOPPED
    assert service.embedded.returncode is not None
    assert service.bus is not None
    assert service.bus.nc.is_closed
    assert service.ready() == {
        "nats_connected": False,
        "streams_ready": True,
        "consuming": False,
    }


async def test_stop_closes_everything(broker_factory: BrokerFactory) -> None:
    service = await broker_factory()
    assert service.bus is not None
    assert service.http is not None
    url = service.http.url
    await asyncio.wait_for(service.stop(), 10)
    assert service.bus.nc.is_closed
    assert not service.live()
    assert service.ready()["nats_connected"] is False
    assert metric(service, "ssr_broker_nats_connected") == 0
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"{url}/healthz")
    await asyncio.wait_for(service.stop(), 10)  # idempotent


async def test_sigterm_stops_the_broker_process_cleanly(
    tmp_path: Path, nats_server: EmbeddedNats, live_region: DemoRegion
) -> None:
    data_dir = tmp_path / "data"
    write_data_dir(data_dir, live_region)
    args = ["-m", "broker", "--data-dir", str(data_dir), "--nats", nats_server.url]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = await BrokerProcess.start(
        [*args, "--no-demo", "--http-port", "0"], ready_text="broker running", env=env
    )
    try:
        process.terminate()
        code = await process.wait(10.0)
    finally:
        await process.kill()
    assert code == 0, "\n".join(process.output)
    assert any("stopped cleanly" in line for line in process.output)


async def test_a_mode_change_reaches_every_broker_at_once(
    broker_factory: BrokerFactory, net: Actors
) -> None:
    # Refreshes every 60 s: only the KV watch can bring the change within the wait below.
    first = await broker_factory(sweep_interval_s=60.0)
    second = await broker_factory(sweep_interval_s=60.0)
    _, change = await net.send(
        "lansstyrelsen-stockholm",
        ["nacka"],
        message_type=MessageType.MODE_CHANGE,
        control=Control(mode=Mode.HEIGHTENED_ALERT),
        text="Höjd beredskap",
    )
    await net.accepted_and_delivered("lansstyrelsen-stockholm", change)
    for service in (first, second):
        assert service.router is not None
        router = service.router
        await wait_until(
            lambda router=router: router.state.mode is Mode.HEIGHTENED_ALERT,
            "the new mode at both brokers",
            timeout=3.0,
        )
        assert metric(service, "ssr_broker_mode", mode="heightened_alert") == 1
