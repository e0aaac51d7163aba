"""Crisis workflows through a real nats-server and the real broker.

The incident message index, key grants for actors that join an incident late, requests
with an answer deadline, press lines, and exercise incidents kept apart from actual ones.
The actors' side is :class:`tests.service_helpers.Actors`; envelopes whose content key a
test needs (to grant them) are sealed here with ``seal_envelope``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest_asyncio

from broker import subjects
from broker.core import (
    Control,
    EncryptionKeyPair,
    GrantBody,
    Header,
    IncidentEntry,
    Label,
    MessageType,
    NoticeBody,
    NoticeKind,
    Policy,
    PressStage,
    RecipientKey,
    Reference,
    ReferenceKind,
    SealedEnvelope,
    Status,
    Tlp,
    VerifiedDirectory,
    crypto,
    make_grant,
    open_grant,
    read_envelope,
    seal_envelope,
    verify_grant,
    verify_notice,
)
from broker.core import frame as frames
from broker.core.envelope import wrap_for
from broker.router import MessageRecord
from broker.service import Service

from . import nats_fixtures, service_helpers
from .service_helpers import (
    HOUR_MS,
    INTERN,
    SEKRETESS,
    WAIT,
    Actors,
    BrokerFactory,
    audit_events,
    metric,
    now_ms,
    stream_messages,
    wait_for_audit,
    wait_until,
)

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory
actors = service_helpers.actors

LST = "lansstyrelsen-stockholm"
RED = Label(policy="ssr", classification="INTERN", tlp=Tlp.RED)
STRICT = Label(policy="ssr", classification="INTERN", tlp=Tlp.AMBER_STRICT)
PUBLIC = Label(policy="ssr", classification="OFFENTLIG", tlp=Tlp.CLEAR)
GREEN = INTERN


@pytest_asyncio.fixture
async def service(broker_factory: BrokerFactory) -> Service:
    # Sweeps run only when a test calls them (it moves the router's clock first).
    return await broker_factory(sweep_interval_s=3600.0)


@pytest_asyncio.fixture
async def net(service: Service, actors: Actors) -> Actors:
    return await actors.start()


# --- helpers ----------------------------------------------------------------------------


def seal(net: Actors, sender: str, to: Iterable[str], **kw: Any) -> SealedEnvelope:
    """An envelope and its content key (what the sender's client keeps to grant it)."""
    now = now_ms()
    created = kw.pop("created", now)
    args: dict[str, Any] = {
        "label": GREEN,
        "message_type": MessageType.SITUATION_REPORT,
        "expires": created + HOUR_MS,
    } | kw
    return seal_envelope(
        sender=net.identity(sender),
        recipients=[RecipientKey.of(net.directory.actor(a), now) for a in sorted(set(to))],  # type: ignore[arg-type]
        payload=json.dumps({"text": f"from {sender}"}).encode(),
        content_type="application/json",
        created=created,
        **args,
    )


def header(net: Actors, data: bytes) -> Header:
    return read_envelope(data, net.directory).header


async def accepted(net: Actors, sender: str, data: bytes) -> Header:
    await net.submit(sender, data)
    notice = await net.verdict(sender, data)
    assert (notice.kind, notice.reason) == (NoticeKind.ACCEPTED, None), notice
    return header(net, data)


async def refused(net: Actors, sender: str, data: bytes) -> NoticeBody:
    await net.submit(sender, data)
    notice = await net.verdict(sender, data)
    assert notice.kind is NoticeKind.REJECTED, notice
    return notice


async def activate(
    net: Actors, incident: str, to: Iterable[str], *, status: Status = Status.ACTUAL, **control: Any
) -> Header:
    data = net.envelope(
        LST,
        to,
        message_type=MessageType.ACTIVATION,
        incident=incident,
        status=status,
        control=Control(incident_type=control.pop("incident_type", "storm"), **control),
    )
    return await accepted(net, LST, data)


async def notices(service: Service, actor: str, kind: NoticeKind, count: int) -> list[NoticeBody]:
    """Poll ``actor``'s delivery stream until ``count`` verified notices of ``kind`` are
    there. (The ``Actors`` inbox keeps one notice per message and kind; grant requests for
    two newcomers differ only in ``recipients``.)"""
    assert service.bus is not None
    subject = subjects.deliver_subject(actor)
    deadline = time.monotonic() + WAIT
    while True:
        found = [
            body
            for m in await stream_messages(service.bus.js, subjects.DELIVER_STREAM, subject)
            if m.data[4:5] == frames.Kind.NOTICE.value
            and (body := verify_notice(m.data, directory(service), now=now_ms())).kind is kind
        ]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, f"{len(found)} of {count} {kind.value} notices to {actor}"
            return found
        await asyncio.sleep(0.05)


def directory(service: Service) -> VerifiedDirectory:
    assert service.router is not None
    return service.router.state.directory


async def deliveries_with_id(service: Service, actor: str, msg_id: str) -> list[bytes]:
    """Poll ``actor``'s deliveries until one carries the dedupe id ``msg_id``."""
    assert service.bus is not None
    subject = subjects.deliver_subject(actor)
    deadline = time.monotonic() + WAIT
    while True:
        found = [
            m.data
            for m in await stream_messages(service.bus.js, subjects.DELIVER_STREAM, subject)
            if (m.headers or {}).get("Nats-Msg-Id") == msg_id
        ]
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def record(service: Service, message_id: str) -> MessageRecord:
    assert service.bus is not None
    entry = await service.bus.kv_get(subjects.MESSAGES_BUCKET, message_id)
    assert entry is not None
    return MessageRecord.model_validate_json(entry.value)


def forged_grant(
    net: Actors,
    signer: str,
    sealed: SealedEnvelope,
    newcomer: str,
    *,
    at: int,
    to_key: RecipientKey | None = None,
) -> bytes:
    """A grant built without ``make_grant``'s checks (the client would refuse to)."""
    envelope = read_envelope(sealed.raw, net.directory)
    actor = net.directory.actor(newcomer)
    assert actor is not None
    wrap = wrap_for(sealed.content_key, to_key or RecipientKey.of(actor, at))
    identity = net.identity(signer)
    body = GrantBody(
        message=envelope.header.id,
        header_hash=envelope.header_hash,
        sender=signer,
        signer_key=identity.signing.key_id,
        recipient=newcomer,
        incident=envelope.header.incident or "none",
        key_id=wrap.key_id,
        sealed=wrap.sealed,
        at=at,
    )
    return frames.encode(frames.Kind.GRANT, identity.signing, (body.to_bytes(), sealed.raw))


def stray_key(actor: str) -> RecipientKey:
    """An encryption key the directory does not list for ``actor``."""
    pair = EncryptionKeyPair.generate()
    return RecipientKey(actor, pair.key_id, pair.public)


def grant(net: Actors, sender: str, sealed: SealedEnvelope, newcomer: str) -> bytes:
    actor = net.directory.actor(newcomer)
    assert actor is not None
    return make_grant(
        net.identity(sender),
        sealed.raw,
        sealed.content_key,
        newcomer=actor,
        directory=net.directory,
        policy=Policy(),
        at=now_ms(),
    )


@dataclass
class Storm:
    """An incident of LST, nacka and stockholm with nacka's messages in it."""

    incident: str
    green: SealedEnvelope
    red: SealedEnvelope
    strict: SealedEnvelope
    secret: SealedEnvelope


async def storm_with_messages(net: Actors, incident: str = "storm-ylva") -> Storm:
    await activate(net, incident, ["nacka", "stockholm"])
    storm = Storm(
        incident,
        green=seal(net, "nacka", ["stockholm", LST], incident=incident),
        red=seal(net, "nacka", ["stockholm"], incident=incident, label=RED),
        strict=seal(net, "nacka", ["stockholm"], incident=incident, label=STRICT),
        secret=seal(net, "nacka", ["stockholm"], incident=incident, label=SEKRETESS),
    )
    for sealed in (storm.green, storm.red, storm.strict, storm.secret):
        await accepted(net, "nacka", sealed.raw)
    return storm


# --- the index and late joiners ----------------------------------------------------------


async def test_index_and_grant_requests_for_a_late_joiner(service: Service, net: Actors) -> None:
    assert service.bus is not None
    storm = await storm_with_messages(net)
    # Every accepted message naming the incident is indexed, header metadata only.
    keys = await service.bus.kv_keys(
        subjects.INDEX_BUCKET, subjects.index_prefix(storm.incident) + ">"
    )
    assert len(keys) == 5  # the activation and nacka's four messages
    green = read_envelope(storm.green.raw, net.directory)
    entry = await service.bus.kv_get(
        subjects.INDEX_BUCKET, subjects.index_key(storm.incident, green.header.id)
    )
    assert entry is not None
    assert IncidentEntry.parse(entry.value, max_bytes=65536) == IncidentEntry.of(
        green.header, green.header_hash
    )

    # solna and Stockholms Hamnar (cleared for INTERN only) join.
    await activate(net, storm.incident, ["nacka", "stockholm", "solna", "stockholms-hamnar"])

    # nacka is asked for the green message (both may have it) and the SEKRETESS one (solna
    # only); never for TLP:RED or AMBER+STRICT content.
    requests = await notices(service, "nacka", NoticeKind.GRANT_REQUEST, 3)
    assert {(n.message, n.recipients) for n in requests} == {
        (green.header.id, ("solna",)),
        (green.header.id, ("stockholms-hamnar",)),
        (header(net, storm.secret.raw).id, ("solna",)),
    }
    notice = next(
        n for n in requests if n.recipients == ("solna",) and n.message == green.header.id
    )
    assert notice.to == "nacka"
    assert notice.header_hash == green.header_hash
    assert notice.submission == crypto.sha256(green.header.to_bytes()).hex()
    assert notice.detail == f"solna joined incident {storm.incident}"
    # LST's first activation did not go to the newcomers either: LST is asked too.
    lst_requests = await notices(service, LST, NoticeKind.GRANT_REQUEST, 2)
    assert {n.recipients for n in lst_requests} == {("solna",), ("stockholms-hamnar",)}

    events = await wait_for_audit(
        service.bus.js, "grant_requested", lambda e: e["actor"] == "nacka", count=3
    )
    assert {(e["message"], tuple(e["recipients"])) for e in events} == {
        (n.message, n.recipients) for n in requests
    }
    assert {(e["incident"], e["status"]) for e in events} == {(storm.incident, "actual")}
    refused_events = await wait_for_audit(
        service.bus.js, "grant_refused", lambda e: e["actor"] == "nacka", count=5
    )
    refused_pairs = {(e["message"], e["recipients"][0]) for e in refused_events}
    for sealed in (storm.red, storm.strict):
        for newcomer in ("solna", "stockholms-hamnar"):
            assert (header(net, sealed.raw).id, newcomer) in refused_pairs
    assert (header(net, storm.secret.raw).id, "stockholms-hamnar") in refused_pairs
    assert len(refused_pairs) == 5
    assert {e["reason"] for e in refused_events} == {"grant_not_allowed"}
    assert metric(service, "ssr_broker_grant_requests_total", status="actual") == 5
    assert metric(service, "ssr_broker_grants_refused_total", status="actual") == 5
    assert metric(service, "ssr_broker_notices_sent_total", kind="grant_request") == 5


async def test_a_grant_reaches_the_newcomer_and_opens_there(service: Service, net: Actors) -> None:
    assert service.bus is not None
    storm = await storm_with_messages(net)
    await activate(net, storm.incident, ["nacka", "stockholm", "solna"])
    green = header(net, storm.green.raw)
    await notices(service, "nacka", NoticeKind.GRANT_REQUEST, 1)

    data = grant(net, "nacka", storm.green, "solna")
    await net.submit("nacka", data)  # a grant gets no accepted notice: it is delivered
    [delivered] = await deliveries_with_id(service, "solna", f"g.{green.id}.solna")
    assert delivered == data  # delivered unchanged
    opened = open_grant(
        verify_grant(delivered, net.directory, now=now_ms()),
        me=net.identity("solna"),
        directory=net.directory,
        policy=Policy(),
        now=now_ms(),
    )
    assert json.loads(opened.payload) == {"text": "from nacka"}
    assert "solna" in (await record(service, green.id)).granted
    [event] = await wait_for_audit(service.bus.js, "granted", lambda e: True)
    assert (event["actor"], event["message"], event["recipients"]) == (
        "nacka",
        green.id,
        ["solna"],
    )
    assert (event["incident"], event["status"]) == (storm.incident, "actual")
    assert metric(service, "ssr_broker_grants_total", status="actual") == 1

    # A repeat is delivered again under the same dedupe id and counted once.
    await net.submit("nacka", data)
    await wait_until(
        lambda: metric(service, "ssr_broker_audit_events_total", kind="granted") == 2,
        "the repeat handled",
    )
    assert metric(service, "ssr_broker_grants_total", status="actual") == 1
    assert len(await deliveries_with_id(service, "solna", f"g.{green.id}.solna")) == 1


async def test_hostile_grants_are_refused(service: Service, net: Actors) -> None:
    assert service.bus is not None
    storm = await storm_with_messages(net)
    await activate(net, storm.incident, ["nacka", "stockholm", "solna"])
    now = now_ms()
    green = header(net, storm.green.raw)

    never_sent = seal(net, "nacka", ["stockholm"], incident=storm.incident)
    other_content = seal(
        net, "nacka", ["stockholm", LST], incident=storm.incident, message_id=green.id
    )
    cases = [
        ("nacka", grant(net, "nacka", never_sent, "solna"), "grant_unknown_message"),
        ("nacka", grant(net, "nacka", other_content, "solna"), "grant_unknown_message"),
        # Nacka's own grant, published on another actor's subject.
        ("stockholm", grant(net, "nacka", storm.green, "solna"), "grant_signer_mismatch"),
        # A recipient signs a grant of nacka's message.
        (
            "stockholm",
            forged_grant(net, "stockholm", storm.green, "solna", at=now),
            "grant_signer_mismatch",
        ),
        ("nacka", grant(net, "nacka", storm.green, "taby"), "grant_not_participant"),
        ("nacka", forged_grant(net, "nacka", storm.red, "solna", at=now), "grant_not_allowed"),
        ("nacka", forged_grant(net, "nacka", storm.strict, "solna", at=now), "grant_not_allowed"),
        # Sealed to a key that is not solna's (one only the attacker holds).
        (
            "nacka",
            forged_grant(net, "nacka", storm.green, "solna", at=now, to_key=stray_key("solna")),
            "recipient_key_invalid",
        ),
    ]
    for actor, data, code in cases:
        notice = await refused(net, actor, data)
        assert notice.reason == code, (code, notice)
        assert notice.to == actor

    # Expired: the broker's clock moves past the message's expiry.
    short = seal(net, "nacka", ["stockholm"], incident=storm.incident, expires=now + 60_000)
    await accepted(net, "nacka", short.raw)
    assert service.router is not None
    service.router.clock = lambda: now_ms() + 120_000
    notice = await refused(net, "nacka", grant(net, "nacka", short, "solna"))
    assert notice.reason == "grant_expired"

    events = await audit_events(service.bus.js, "grant_rejected")
    assert sorted(e["reason"] for e in events) == sorted(
        [code for _, _, code in cases] + ["grant_expired"]
    )
    delivered = await stream_messages(
        service.bus.js, subjects.DELIVER_STREAM, subjects.deliver_subject("solna")
    )
    assert not [m for m in delivered if m.data[4:5] == frames.Kind.GRANT.value]
    assert metric(service, "ssr_broker_grants_rejected_total", reason="grant_not_allowed") == 2


# --- requests with a deadline -------------------------------------------------------------


async def test_an_unanswered_request_is_overdue_after_its_deadline(
    service: Service, net: Actors
) -> None:
    assert service.bus is not None
    assert service.router is not None
    created = now_ms()
    request = net.envelope(
        "nacka",
        ["stockholm", "solna", "taby"],
        message_type=MessageType.REQUEST,
        control=Control(deadline=created + 60_000),
        created=created,
    )
    asked = await accepted(net, "nacka", request)
    asked_hash = read_envelope(request, net.directory).header_hash
    assert (await record(service, asked.id)).answer_by == created + 60_000

    reply = net.envelope(
        "stockholm",
        ["nacka"],
        message_type=MessageType.COORDINATION,
        references=(Reference(kind=ReferenceKind.REPLY, message=asked.id, header_hash=asked_hash),),
    )
    await accepted(net, "stockholm", reply)
    # A reply naming another version of the request does not count as an answer.
    wrong = net.envelope(
        "solna",
        ["nacka"],
        references=(Reference(kind=ReferenceKind.REPLY, message=asked.id, header_hash="0" * 64),),
    )
    await accepted(net, "solna", wrong)
    # A reply that does not go to the requester does not answer it either.
    aside = net.envelope(
        "taby",
        ["stockholm"],
        references=(Reference(kind=ReferenceKind.REPLY, message=asked.id, header_hash=asked_hash),),
    )
    await accepted(net, "taby", aside)
    answers = (await record(service, asked.id)).answers
    assert set(answers) == {"stockholm"}

    assert await service.router.sweep() == 0  # before the deadline: nothing
    service.router.clock = lambda: now_ms() + 120_000
    assert await service.router.sweep() == 1
    [overdue] = await notices(service, "nacka", NoticeKind.OVERDUE, 1)
    assert (overdue.message, overdue.recipients) == (asked.id, ("solna", "taby"))
    assert overdue.detail == "request not answered by its deadline"
    assert overdue.header_hash == asked_hash
    [event] = await wait_for_audit(service.bus.js, "request_overdue", lambda e: True)
    assert (event["actor"], event["message"], event["recipients"], event["status"]) == (
        "nacka",
        asked.id,
        ["solna", "taby"],
        "actual",
    )
    assert (await record(service, asked.id)).overdue
    assert await service.router.sweep() == 0  # once only
    labels = {"priority": "routine", "status": "actual"}
    assert metric(service, "ssr_broker_requests_overdue_total", **labels) == 1


# --- press lines --------------------------------------------------------------------------


async def test_only_the_leads_approval_of_a_known_draft_goes_public(
    service: Service, net: Actors
) -> None:
    assert service.bus is not None
    incident = "storm-press"
    await activate(net, incident, ["nacka", "stockholm"], communication_lead="nacka")

    unapproved = net.envelope(
        "stockholm", ["nacka"], label=PUBLIC, message_type=MessageType.COMMUNICATION,
        incident=incident,
    )  # fmt: skip
    assert (await refused(net, "stockholm", unapproved)).reason == "press_line_unapproved"

    draft = net.envelope(
        "stockholm",
        ["nacka"],
        message_type=MessageType.COMMUNICATION,
        incident=incident,
        control=Control(press=PressStage.DRAFT),
    )
    drafted = await accepted(net, "stockholm", draft)
    update = Reference(
        kind=ReferenceKind.UPDATE,
        message=drafted.id,
        header_hash=read_envelope(draft, net.directory).header_hash,
    )

    def approval(sender: str, to: list[str], reference: Reference) -> bytes:
        return net.envelope(
            sender,
            to,
            label=PUBLIC,
            message_type=MessageType.COMMUNICATION,
            incident=incident,
            control=Control(press=PressStage.APPROVED),
            references=(reference,),
        )

    not_lead = approval("stockholm", ["nacka"], update)
    assert (await refused(net, "stockholm", not_lead)).reason == "press_approval_not_lead"
    unknown = update.model_copy(update={"message": "ab" * 16})
    assert (await refused(net, "nacka", approval("nacka", ["stockholm"], unknown))).reason == (
        "press_draft_unknown"
    )

    approved = approval("nacka", ["stockholm", LST], update)
    await net.submit("nacka", approved)
    await net.accepted_and_delivered("nacka", approved)
    approved_id = header(net, approved).id
    entry = await service.bus.kv_get(
        subjects.INDEX_BUCKET, subjects.index_key(incident, approved_id)
    )
    assert entry is not None
    indexed = IncidentEntry.parse(entry.value, max_bytes=65536)
    assert (indexed.press, indexed.label) == (PressStage.APPROVED, PUBLIC)
    assert [r.message for r in indexed.references] == [drafted.id]


# --- exercises ----------------------------------------------------------------------------


async def test_an_exercise_incident_is_kept_apart_from_an_actual_one(
    service: Service, net: Actors
) -> None:
    assert service.bus is not None
    await activate(net, "storm-actual", ["nacka"])
    await activate(net, "ovning-elavbrott", ["nacka"], status=Status.EXERCISE,
                   incident_type="power-outage")  # fmt: skip
    assert metric(service, "ssr_broker_open_incidents", status="actual") == 1
    assert metric(service, "ssr_broker_open_incidents", status="exercise") == 1

    # Actual traffic in the exercise is refused; the exercise closes, the actual stays.
    mixed = net.envelope("nacka", [LST], incident="ovning-elavbrott")
    assert (await refused(net, "nacka", mixed)).reason == "incident_status_mismatch"
    close = net.envelope(
        LST, ["nacka"], message_type=MessageType.INCIDENT_CLOSE, incident="ovning-elavbrott",
        status=Status.EXERCISE,
    )  # fmt: skip
    await accepted(net, LST, close)
    assert metric(service, "ssr_broker_open_incidents", status="exercise") == 0
    assert metric(service, "ssr_broker_open_incidents", status="actual") == 1
    assert metric(service, "ssr_broker_envelopes_accepted_total", status="exercise") == 2
    events = await wait_for_audit(service.bus.js, "incident_change", lambda e: True, count=3)
    assert [(e["incident"], e["status"], e["detail"]) for e in events] == [
        ("storm-actual", "actual", "open (storm)"),
        ("ovning-elavbrott", "exercise", "open (power-outage)"),
        ("ovning-elavbrott", "exercise", "closed"),
    ]
    # Still refreshed the same way from the shared state.
    await service.refresh_state()
    assert metric(service, "ssr_broker_open_incidents", status="exercise") == 0
    assert metric(service, "ssr_broker_open_incidents", status="actual") == 1


async def test_an_activation_must_name_a_catalogue_type(service: Service, net: Actors) -> None:
    data = net.envelope(
        LST, ["nacka"], message_type=MessageType.ACTIVATION, incident="vulkan-1",
        control=Control(incident_type="volcano"),
    )  # fmt: skip
    assert (await refused(net, LST, data)).reason == "incident_type_unknown"


# --- queued joins and the sweep's place ------------------------------------------------------


async def join_keys(service: Service) -> list[str]:
    assert service.bus is not None
    return await service.bus.kv_keys(subjects.STATE_BUCKET, subjects.JOIN_PATTERN)


async def test_joins_are_worked_off_in_bounded_batches(
    broker_factory: BrokerFactory, actors: Actors
) -> None:
    """An activation only queues its newcomers; the grant requests go out in batches of the
    given budget, newest messages first, and the join is gone when every one was asked."""
    service = await broker_factory(sweep_interval_s=3600.0, join_interval_s=3600.0)
    net = await actors.start()
    assert service.router is not None
    incident = "storm-batch"
    await activate(net, incident, ["nacka", "stockholm"])
    sent = [seal(net, "nacka", ["stockholm"], incident=incident) for _ in range(5)]
    for sealed in sent:
        await accepted(net, "nacka", sealed.raw)
    await activate(net, incident, ["nacka", "stockholm", "solna"])
    assert await join_keys(service) == [subjects.join_key(incident, "solna")]
    assert await service.router.process_joins(budget=2) == 2
    assert await join_keys(service) == [subjects.join_key(incident, "solna")]  # not done
    assert await service.router.process_joins(budget=2) == 2
    # Solna lacks six messages: nacka's five reports and the first activation.
    assert await service.router.process_joins(budget=10) == 2
    assert await join_keys(service) == []
    assert await service.router.process_joins() == 0
    requests = await notices(service, "nacka", NoticeKind.GRANT_REQUEST, 5)
    assert {n.message for n in requests} == {header(net, s.raw).id for s in sent}


async def test_a_newcomer_that_left_again_is_asked_nothing(
    broker_factory: BrokerFactory, actors: Actors
) -> None:
    service = await broker_factory(sweep_interval_s=3600.0, join_interval_s=3600.0)
    net = await actors.start()
    assert service.router is not None
    incident = "storm-left"
    await activate(net, incident, ["nacka", "stockholm"])
    await accepted(net, "nacka", seal(net, "nacka", ["stockholm"], incident=incident).raw)
    await activate(net, incident, ["nacka", "stockholm", "solna"])
    await activate(net, incident, ["nacka", "stockholm"])  # solna removed before any request
    assert await service.router.process_joins() == 0
    assert await join_keys(service) == []
    assert metric(service, "ssr_broker_notices_sent_total", kind="grant_request") == 0


async def test_the_sweep_visits_every_record_in_turn(service: Service, net: Actors) -> None:
    """With more message records than one sweep reads, the sweep goes on where it stopped,
    so a request late in key order still becomes overdue."""
    assert service.router is not None
    created = now_ms()
    asked = []
    for _ in range(3):
        request = net.envelope(
            "nacka",
            ["stockholm"],
            message_type=MessageType.REQUEST,
            control=Control(deadline=created + 60_000),
            created=created,
        )
        asked.append((await accepted(net, "nacka", request)).id)
    service.router.clock = lambda: now_ms() + 120_000
    chased = 0
    for _ in range(3):
        chased += await service.router.sweep(limit=1)
    assert chased == 3
    overdue = await notices(service, "nacka", NoticeKind.OVERDUE, 3)
    assert {n.message for n in overdue} == set(asked)


async def test_a_message_expiring_between_batches_does_not_skip_another(
    broker_factory: BrokerFactory, actors: Actors
) -> None:
    """The join keeps its place by the last message it handled, not by a position in the
    list: a message that expires between two batches does not shift an older one past it."""
    service = await broker_factory(sweep_interval_s=3600.0, join_interval_s=3600.0)
    net = await actors.start()
    assert service.router is not None
    incident = "storm-expiring"
    await activate(net, incident, ["nacka", "stockholm"])
    now = now_ms()
    short = seal(net, "nacka", ["stockholm"], incident=incident, created=now,
                 expires=now + 60_000)  # fmt: skip
    older = [
        seal(net, "nacka", ["stockholm"], incident=incident, created=now - 10_000 + i)
        for i in range(3)
    ]
    for sealed in [*older, short]:
        await accepted(net, "nacka", sealed.raw)
    await activate(net, incident, ["nacka", "stockholm", "solna"])
    assert await service.router.process_joins(budget=2) == 2  # short and the first activation
    service.router.clock = lambda: now_ms() + 120_000  # short has expired
    assert await service.router.process_joins(budget=10) == 3  # the three older reports
    assert await join_keys(service) == []
    requests = await notices(service, "nacka", NoticeKind.GRANT_REQUEST, 4)
    assert {n.message for n in requests} == {header(net, s.raw).id for s in [*older, short]}


async def test_messages_sent_after_the_join_are_not_offered(
    broker_factory: BrokerFactory, actors: Actors
) -> None:
    """A message sent after the newcomer joined, without it, left it out on purpose."""
    service = await broker_factory(sweep_interval_s=3600.0, join_interval_s=3600.0)
    net = await actors.start()
    assert service.router is not None
    incident = "storm-after"
    await activate(net, incident, ["nacka", "stockholm"])
    before = seal(net, "nacka", ["stockholm"], incident=incident)
    await accepted(net, "nacka", before.raw)
    joined = await activate(net, incident, ["nacka", "stockholm", "solna"])
    after = seal(net, "nacka", ["stockholm"], incident=incident, created=joined.created + 1)
    await accepted(net, "nacka", after.raw)
    assert await service.router.process_joins() == 2  # the first activation and `before`
    [request] = await notices(service, "nacka", NoticeKind.GRANT_REQUEST, 1)
    assert request.message == header(net, before.raw).id
