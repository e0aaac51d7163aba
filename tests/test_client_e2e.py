"""The client library end to end: real nats-server, a real broker, real ``Client`` objects.

Each test starts its own nats-server and ``Service`` (``tests.service_helpers``) and
actors' systems as :class:`clients.Client` instances, each with its own state folder.
Outcomes are checked where an integrator would look: send handles, ``client.status``,
what ``client.messages()`` hands over, and ``client.refused``. Hostile deliveries are
published straight onto an actor's delivery subject with nats-py, around the broker.
Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from broker import subjects
from broker.core import (
    Actor,
    ActorKind,
    BrokerIdentity,
    Control,
    Identity,
    KeyRecord,
    Label,
    MessageType,
    NoticeKind,
    ReceiptKind,
    RecipientKey,
    ReferenceKind,
    SigningKeyPair,
    Tlp,
    build_envelope,
    make_notice,
    make_receipt,
    sign_directory,
    successor,
    verify_directory,
)
from broker.demo import YEAR_MS, DemoRegion
from broker.embedded import EmbeddedNats
from broker.service import Service
from clients import (
    Client,
    ForwardRefused,
    Message,
    Rejected,
    SendHandle,
    SendState,
    Unavailable,
    _transport,
)
from clients import client as client_module

from . import nats_fixtures, service_helpers
from .nats_fixtures import connect_options
from .service_helpers import (
    HOUR_MS,
    WAIT,
    BrokerFactory,
    metric,
    now_ms,
    sha256_hex,
    wait_for_audit,
    wait_until,
)

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory
running_broker = service_helpers.running_broker


@dataclass
class Network:
    """The actors' systems of one test: ``await net.client("nacka")`` starts one."""

    server: EmbeddedNats
    brokers: BrokerFactory
    broker: Service
    region: DemoRegion
    base: Path
    policy_file: Path
    clients: list[Client] = field(default_factory=list)
    nc: NatsClient | None = None

    def state_dir(self, actor: str) -> Path:
        return self.base / actor

    async def client(self, actor: str, **overrides: Any) -> Client:
        options: dict[str, Any] = {
            "servers": [self.server.url],
            "actor": actor,
            "keys": self.region.identities.get(actor),
            "authority_key": self.region.authority.public,
            "state_dir": self.state_dir(actor),
            "policy": self.policy_file,
            "connect_timeout": 5.0,
        }
        options.update(overrides)
        client = Client.connect(**options)
        await asyncio.wait_for(client.start(), WAIT)
        self.clients.append(client)
        return client

    async def js(self) -> JetStreamContext:
        if self.nc is None:
            self.nc = await nats.connect(self.server.url, **connect_options(name="test-e2e"))
        return self.nc.jetstream(timeout=5.0)

    async def close(self) -> None:
        for client in reversed(self.clients):
            await asyncio.wait_for(client.close(), WAIT)
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.nc.close(), 5.0)


@pytest_asyncio.fixture
async def net(
    tmp_path: Path,
    nats_server: EmbeddedNats,
    broker_factory: BrokerFactory,
    running_broker: Service,
    live_region: DemoRegion,
) -> AsyncIterator[Network]:
    network = Network(
        nats_server,
        broker_factory,
        running_broker,
        live_region,
        tmp_path / "clients",
        running_broker.config.policy_file,
    )
    try:
        yield network
    finally:
        await network.close()


async def receive(client: Client, count: int = 1, *, timeout: float = WAIT) -> list[Message]:
    """The next ``count`` messages handed to the application, within ``timeout``."""
    got: list[Message] = []
    async with asyncio.timeout(timeout):
        async for message in client.messages():
            got.append(message)
            if len(got) == count:
                break
    return got


async def nothing_waiting(client: Client) -> list[Message]:
    return [m async for m in client.messages(follow=False)]


async def quiet(js: JetStreamContext, actor: str) -> None:
    """Wait until the client's durable consumer has nothing pending and nothing unacked."""

    async def check() -> bool:
        info = await js.consumer_info(subjects.DELIVER_STREAM, f"ssr-client-{actor}")
        return not info.num_pending and not info.num_ack_pending

    deadline = time.monotonic() + WAIT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{actor}'s deliveries were not all handled in time")
        await asyncio.sleep(0.05)


async def receipts_reach(handle: SendHandle, state: str, recipients: list[str]) -> None:
    await wait_until(
        lambda: all(handle.status()[r].state == state for r in recipients),
        f"{state} receipts for {handle.message_id[:12]} from {recipients}",
    )


INTERN_GREEN = Label(policy="ssr", classification="INTERN", tlp=Tlp.GREEN)


# --- the happy path ---------------------------------------------------------------------------


async def test_three_actors_exchange_labelled_messages_and_see_every_receipt(
    net: Network,
) -> None:
    nacka = await net.client("nacka")
    solna = await net.client("solna")
    sos = await net.client("sos-alarm")

    public = await nacka.send(
        to=["solna", "sos-alarm"],
        payload={"text": "Lägesbild 14:00: vägarna öppna"},
        label="OFFENTLIG",
        tlp="CLEAR",
        type="situation_report",
    )
    await public.accepted(WAIT)
    assert set(await public.delivered(WAIT)) == {"solna", "sos-alarm"}
    [at_solna] = await receive(solna)
    [at_sos] = await receive(sos)
    for message in (at_solna, at_sos):
        assert message.id == public.message_id
        assert message.sender == "nacka"
        assert message.json() == {"text": "Lägesbild 14:00: vägarna öppna"}
        assert message.label == Label(policy="ssr", classification="OFFENTLIG", tlp=Tlp.CLEAR)

    await at_solna.mark_read()
    await at_sos.acknowledge(note="Vi tar det")
    await receipts_reach(public, "read", ["solna"])
    await receipts_reach(public, "acknowledged", ["sos-alarm"])
    status = public.status()
    assert status["solna"].delivered is not None
    assert status["solna"].read is not None
    assert status["solna"].acknowledged is None
    assert status["sos-alarm"].acknowledged is not None
    await wait_until(lambda: nacka.outbox_depth == 0 and sos.outbox_depth == 0, "empty outboxes")

    async def recorded() -> Any:
        return await nacka.status(public.message_id)

    deadline = time.monotonic() + WAIT
    while (record := await recorded()).recipients["sos-alarm"].acknowledged is None:
        assert time.monotonic() < deadline, record
        await asyncio.sleep(0.05)
    assert record.state == "accepted"
    assert record.sender == "nacka"
    assert record.label is not None
    assert record.label.classification == "OFFENTLIG"
    assert record.recipients["solna"].state == "read"
    assert record.recipients["sos-alarm"].state == "acknowledged"

    # INTERN / GREEN from solna to sos-alarm; SEKRETESS / AMBER with a legal ground back.
    internal = await solna.send(
        to=["sos-alarm"], payload="Intern samordning", label="INTERN", tlp="GREEN"
    )
    await internal.accepted(WAIT)
    [got] = await receive(sos)
    assert (got.text, got.sender, got.label.classification) == (
        "Intern samordning",
        "solna",
        "INTERN",
    )
    secret = await sos.send(
        to=["nacka", "solna"],
        payload=b"\x00personuppgifter\xff",
        label="SEKRETESS",
        tlp="AMBER",
        legal="OSL 18:13",
        priority="immediate",
    )
    await secret.accepted(WAIT)
    await secret.delivered(WAIT)
    for client in (nacka, solna):
        [got] = await receive(client)
        assert got.payload == b"\x00personuppgifter\xff"
        assert got.label.legal == "OSL 18:13"
        assert got.label.tlp is Tlp.AMBER
        assert got.priority == "immediate"
        await got.acknowledge()
    await receipts_reach(secret, "acknowledged", ["nacka", "solna"])
    await internal.delivered(WAIT)

    # Nothing else reached any application, and nothing was refused.
    for client in (nacka, solna, sos):
        assert await nothing_waiting(client) == []
        assert client.refused == 0


# --- addressing -------------------------------------------------------------------------------


async def test_group_and_incident_addressing_reach_the_members(net: Network) -> None:
    nacka = await net.client("nacka")
    sos = await net.client("sos-alarm")
    blaljus = nacka.directory.members("blaljus")
    assert blaljus is not None
    assert "sos-alarm" in blaljus
    assert "nacka" not in blaljus

    to_group = await nacka.send(
        groups=["blaljus"], payload="Till blåljus", label="INTERN", tlp="GREEN"
    )
    assert to_group.recipients == tuple(sorted(blaljus))
    await to_group.accepted(WAIT)
    [got] = await receive(sos)
    assert (got.id, got.text) == (to_group.message_id, "Till blåljus")
    await receipts_reach(to_group, "delivered", ["sos-alarm"])
    assert {s.state for r, s in to_group.status().items() if r != "sos-alarm"} == {"pending"}

    # Länsstyrelsen activates a storm incident; its participants are then addressed by it.
    lansstyrelsen = await net.client("lansstyrelsen-stockholm")
    solna = await net.client("solna")
    activation = await lansstyrelsen.send(
        to=["nacka", "solna", "sos-alarm"],
        incident="storm-2026",
        type="activation",
        control=Control(incident_type="storm"),
        payload={"text": "Stormen Elin: samverkan aktiverad"},
        label="INTERN",
        tlp="GREEN",
        priority="immediate",
    )
    await activation.accepted(WAIT)
    await activation.delivered(WAIT)
    for client in (nacka, solna, sos):
        [got] = await receive(client)
        assert (got.type, got.incident) == (MessageType.ACTIVATION, "storm-2026")
    incident = await nacka.incident("storm-2026")
    assert incident.owner == "lansstyrelsen-stockholm"
    assert incident.participants == ("lansstyrelsen-stockholm", "nacka", "solna", "sos-alarm")

    update = await nacka.send(
        incident="storm-2026", payload="Nacka: två vägar blockerade", label="INTERN", tlp="GREEN"
    )
    assert update.recipients == ("lansstyrelsen-stockholm", "solna", "sos-alarm")
    await update.accepted(WAIT)
    await update.delivered(WAIT)
    for client in (lansstyrelsen, solna, sos):
        [got] = await receive(client)
        assert (got.id, got.incident, got.sender) == (update.message_id, "storm-2026", "nacka")

    # An actor outside the incident is refused by the broker.
    stockholm = await net.client("stockholm")
    outsider = await stockholm.send(incident="storm-2026", payload="Får vi vara med?")
    with pytest.raises(Rejected) as refused:
        await outsider.accepted(WAIT)
    assert refused.value.code == "not_incident_participant"
    for client in (nacka, solna, sos, lansstyrelsen):
        assert await nothing_waiting(client) == []


async def test_an_uncleared_recipient_is_refused_by_name_and_never_receives_it(
    net: Network,
) -> None:
    nacka = await net.client("nacka")
    solna = await net.client("solna")
    hamnar = await net.client("stockholms-hamnar")  # cleared for INTERN only

    handle = await nacka.send(
        to=["solna", "stockholms-hamnar"],
        payload="Uppgifter om enskild",
        label="SEKRETESS",
        tlp="AMBER",
        legal="OSL 26:1",
    )
    with pytest.raises(Rejected) as refused:
        await handle.accepted(WAIT)
    assert refused.value.code == "recipient_not_cleared"
    assert refused.value.recipients == ("stockholms-hamnar",)
    assert refused.value.message_id == handle.message_id
    assert handle.state is SendState.REJECTED
    with pytest.raises(Rejected):
        await handle.delivered(timeout=1.0)
    assert (await nacka.status(handle.message_id)).state == "unknown"  # the broker kept nothing

    # The same content at a level both may receive goes through.
    fixed = await nacka.send(
        to=["solna", "stockholms-hamnar"], payload="Hamnen stängd", label="INTERN", tlp="GREEN"
    )
    await fixed.delivered(WAIT)
    js = await net.js()
    for actor, client in (("solna", solna), ("stockholms-hamnar", hamnar)):
        await quiet(js, actor)
        assert [m.id for m in await nothing_waiting(client)] == [fixed.message_id]
        assert client.refused == 0
    assert (
        metric(
            net.broker,
            "ssr_broker_envelopes_rejected_total",
            reason="recipient_not_cleared",
            status="actual",
        )
        == 1
    )


# --- exactly once -----------------------------------------------------------------------------


async def test_a_repeated_delivery_is_handed_over_once_even_across_restarts(
    net: Network,
) -> None:
    nacka = await net.client("nacka")
    solna = await net.client("solna")
    js = await net.js()

    first = await nacka.send(to=["solna"], payload="Ett", label="INTERN", tlp="GREEN")
    await first.delivered(WAIT)
    assert [m.id for m in await receive(solna)] == [first.message_id]

    # The broker's delivery published again, past JetStream's dedupe (a new Nats-Msg-Id,
    # and none at all), as a broker redoing its fan-out after the duplicate window would.
    last = await js.get_last_msg(subjects.DELIVER_STREAM, subjects.deliver_subject("solna"))
    delivery = last.data
    assert delivery is not None
    await js.publish(
        subjects.deliver_subject("solna"), delivery, headers={"Nats-Msg-Id": "again-1"}
    )
    await js.publish(subjects.deliver_subject("solna"), delivery)
    await quiet(js, "solna")
    assert await nothing_waiting(solna) == []
    assert solna.refused == 0  # a duplicate is dropped, not refused

    # Closed and reopened on the same state folder: the message is not handed over again.
    await solna.close()
    solna = await net.client("solna")
    second = await nacka.send(to=["solna"], payload="Två", label="INTERN", tlp="GREEN")
    assert [m.text for m in await receive(solna)] == ["Två"]
    await second.delivered(WAIT)
    await quiet(js, "solna")
    assert await nothing_waiting(solna) == []


async def test_a_delivery_whose_ack_was_lost_is_not_handed_over_again(
    net: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recipient stops after admitting two messages but before acknowledging them."""
    monkeypatch.setattr(_transport, "ACK_WAIT_S", 1.0)  # redelivery after one second
    nacka = await net.client("nacka")
    sos = await net.client("sos-alarm")
    js = await net.js()
    ack = _transport.Delivery.ack

    async def lost_for_sos(delivery: _transport.Delivery) -> None:
        if delivery._msg.subject != subjects.deliver_subject("sos-alarm"):
            await ack(delivery)

    monkeypatch.setattr(_transport.Delivery, "ack", lost_for_sos)
    taken = await nacka.send(to=["sos-alarm"], payload="Tagen", label="INTERN", tlp="GREEN")
    waiting = await nacka.send(to=["sos-alarm"], payload="Väntar", label="INTERN", tlp="GREEN")
    assert [m.text for m in await receive(sos)] == ["Tagen"]
    await waiting.delivered(WAIT)  # admitted: its delivered receipt went out
    await taken.delivered(WAIT)
    await sos.close()
    monkeypatch.setattr(_transport.Delivery, "ack", ack)
    consumer = (subjects.DELIVER_STREAM, "ssr-client-sos-alarm")
    before = await js.consumer_info(*consumer)
    assert (before.num_ack_pending, before.delivered.consumer_seq) == (2, 2)

    sos = await net.client("sos-alarm")
    await quiet(js, "sos-alarm")  # both came back after the ack wait and were acknowledged
    after = await js.consumer_info(*consumer)
    assert after.delivered.consumer_seq == 4, "each was delivered twice"
    assert [m.text for m in await nothing_waiting(sos)] == ["Väntar"]
    assert await nothing_waiting(sos) == []
    assert sos.refused == 0


# --- forwarding -------------------------------------------------------------------------------


async def test_forward_respects_tlp_and_label_and_carries_the_reference(net: Network) -> None:
    nacka = await net.client("nacka")
    solna = await net.client("solna")
    sos = await net.client("sos-alarm")
    for tlp in ("GREEN", "RED", "AMBER+STRICT"):
        await nacka.send(to=["solna"], payload=f"TLP:{tlp}", label="INTERN", tlp=tlp)
    got = {m.label.tlp: m for m in await receive(solna, 3)}
    green, red, strict = got[Tlp.GREEN], got[Tlp.RED], got[Tlp.AMBER_STRICT]

    for never in (red, strict):
        with pytest.raises(ForwardRefused) as refused:
            await never.forward(to=["sos-alarm"])
        assert refused.value.code == "tlp_forward_forbidden"
    for lower in (
        Label(policy="ssr", classification="OFFENTLIG", tlp=Tlp.GREEN),
        Label(policy="ssr", classification="INTERN", tlp=Tlp.CLEAR),
    ):
        with pytest.raises(ForwardRefused) as refused:
            await green.forward(to=["sos-alarm"], label=lower)
        assert refused.value.code == "forward_label_lowered"

    forward = await green.forward(to=["sos-alarm"])
    await forward.accepted(WAIT)
    await forward.delivered(WAIT)
    [at_sos] = await receive(sos)
    assert (at_sos.sender, at_sos.text, at_sos.label) == ("solna", "TLP:GREEN", green.label)
    [reference] = at_sos.header.references
    assert reference.kind is ReferenceKind.FORWARD
    assert (reference.message, reference.header_hash) == (green.id, green.header_hash)
    js = await net.js()
    await quiet(js, "sos-alarm")
    assert await nothing_waiting(sos) == []  # the refused forwards never left solna
    assert metric(net.broker, "ssr_broker_envelopes_received_total", status="actual") == 4


# --- hostile deliveries -----------------------------------------------------------------------


def envelope(
    net: Network, sender: str, to: list[str], label: Label, text: str = "Lägesbild"
) -> bytes:
    now = now_ms()
    directory = net.region.directory
    return build_envelope(
        sender=net.region.identities[sender],
        recipients=[RecipientKey.of(directory.actor(a), now) for a in to],  # type: ignore[arg-type]
        label=label,
        message_type=MessageType.SITUATION_REPORT,
        payload=text.encode(),
        created=now,
        expires=now + HOUR_MS,
    )


async def test_hostile_deliveries_never_reach_the_application(net: Network) -> None:
    nacka = await net.client("nacka")
    hamnar = await net.client("stockholms-hamnar")  # cleared for INTERN only
    js = await net.js()
    subject = subjects.deliver_subject("stockholms-hamnar")

    # nacka's message to solna: genuine, but none of hamnar's business.
    elsewhere = await nacka.send(to=["solna"], payload="Till Solna", label="INTERN", tlp="GREEN")
    await elsewhere.accepted(WAIT)

    # hamnar's own message waits for a verdict while no broker runs.
    await asyncio.wait_for(net.broker.stop(), WAIT)
    mine = await hamnar.send(to=["nacka"], payload="Från hamnen", label="INTERN", tlp="GREEN")
    await wait_until(lambda: mine.state is SendState.SUBMITTED, "hamnar's submission stored")
    stored = await js.get_last_msg(
        subjects.SUBMIT_STREAM, subjects.submit_subject("stockholms-hamnar")
    )
    submitted = stored.data
    assert submitted is not None
    assert sha256_hex(submitted) == mine.submission

    impostor = BrokerIdentity("ssr-broker", SigningKeyPair.generate())
    hostile = {
        "garbage": b"\x00\x01 not a frame at all",
        "truncated envelope": b"SSR\x01E",
        "forged notice": make_notice(
            impostor,
            NoticeKind.REJECTED,
            to="stockholms-hamnar",
            submission=submitted,
            at=now_ms(),
            message=mine.message_id,
            reason="recipient_not_cleared",
            recipients=("nacka",),
        ),
        "receipt for another sender's message": make_receipt(
            net.region.identities["solna"],
            elsewhere.header,
            elsewhere.header_hash,
            ReceiptKind.DELIVERED,
            at=now_ms(),
        ),
        "receipt for another version of its message": make_receipt(
            net.region.identities["nacka"],
            mine.header,
            "00" * 32,
            ReceiptKind.DELIVERED,
            at=now_ms(),
        ),
        "envelope not addressed to it": envelope(net, "nacka", ["solna"], INTERN_GREEN),
        "envelope above its clearance": envelope(
            net,
            "nacka",
            ["stockholms-hamnar"],
            Label(policy="ssr", classification="SEKRETESS", tlp=Tlp.AMBER, legal="OSL 18:13"),
        ),
    }
    tampered = bytearray(envelope(net, "nacka", ["stockholms-hamnar"], INTERN_GREEN))
    tampered[-1] ^= 0x01
    hostile["tampered envelope"] = bytes(tampered)
    for data in hostile.values():
        await js.publish(subject, data)
    await quiet(js, "stockholms-hamnar")

    # The four envelope frames count as refused; other frames, notices and receipts are dropped.
    assert hamnar.refused == 4
    assert await nothing_waiting(hamnar) == []
    assert mine.state is SendState.SUBMITTED, "a forged notice decided nothing"
    assert mine.status()["nacka"].delivered is None

    # The client kept running: a broker comes back, its message and one to it go through.
    broker = await net.brokers()
    await mine.accepted(WAIT)
    await mine.delivered(WAIT)
    [got] = await receive(nacka)
    assert got.id == mine.message_id
    reply = await nacka.send(
        to=["stockholms-hamnar"], payload="Mottaget", label="INTERN", tlp="GREEN"
    )
    await reply.delivered(WAIT)
    assert [m.text for m in await receive(hamnar)] == ["Mottaget"]
    assert hamnar.refused == 4
    assert hamnar.connected
    assert metric(broker, "ssr_broker_envelopes_accepted_total", status="actual") == 2


# --- the directory ----------------------------------------------------------------------------


async def test_a_new_directory_version_is_followed_and_a_forged_one_refused(
    net: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "DIRECTORY_POLL_S", 0.1)
    nacka = await net.client("nacka")
    js = await net.js()
    assert nacka.directory.version == 1

    now = now_ms() - 60_000
    newcomer = Identity.generate("sjofartsverket")
    keys = {
        kind: (KeyRecord.for_key(key.public, not_before=now, not_after=now + YEAR_MS),)
        for kind, key in (("signing", newcomer.signing), ("encryption", newcomer.encryption))
    }
    actor = Actor(
        id="sjofartsverket",
        name="Sjöfartsverket",
        kind=ActorKind.TRANSPORT,
        clearance="SEKRETESS",
        groups=("samordnande",),
        signing_keys=keys["signing"],
        encryption_keys=keys["encryption"],
    )
    v1 = net.region.directory
    actors = tuple(sorted((*v1.document.actors, actor), key=lambda a: a.id))
    v2_raw = sign_directory(successor(v1, issued=now_ms(), actors=actors), net.region.authority)
    v2 = verify_directory(v2_raw, pinned=net.region.authority.public, previous=v1)
    await js.publish(
        subjects.submit_subject("lansstyrelsen-stockholm"),
        v2_raw,
        headers={"Nats-Msg-Id": "directory-v2"},
    )
    await wait_until(lambda: nacka.directory.version == 2, "nacka adopting directory v2")
    assert (net.state_dir("nacka") / "directory" / "v00000002.dir").read_bytes() == v2_raw

    ship = await net.client("sjofartsverket", keys=newcomer)
    assert ship.directory.version == 2
    hello = await nacka.send(
        to=["sjofartsverket"], payload="Välkommen", label="SEKRETESS", tlp="AMBER", legal="OSL"
    )
    await hello.delivered(WAIT)
    [got] = await receive(ship)
    assert (got.sender, got.text) == ("nacka", "Välkommen")
    await got.acknowledge()
    await receipts_reach(hello, "acknowledged", ["sjofartsverket"])

    # Version 3, signed by a key that is not the pinned authority: the broker refuses it,
    # and a copy written into the bucket behind its back is never adopted.
    impostor = SigningKeyPair.generate()
    v3_doc = successor(v2, issued=now_ms(), actors=v1.document.actors)  # drops the newcomer
    v3_raw = sign_directory(v3_doc, impostor)
    await js.publish(
        subjects.submit_subject("lansstyrelsen-stockholm"),
        v3_raw,
        headers={"Nats-Msg-Id": "directory-v3"},
    )
    [rejected] = await wait_for_audit(js, "directory_rejected", lambda e: True)
    assert rejected["actor"] == "lansstyrelsen-stockholm"
    kv = await js.key_value(subjects.DIRECTORY_BUCKET)
    assert sorted(await kv.keys()) == ["v00000001", "v00000002"]
    await kv.put(subjects.directory_key(3), v3_raw)
    await asyncio.sleep(1.0)  # ten polls
    assert nacka.directory.version == 2
    assert not (net.state_dir("nacka") / "directory" / "v00000003.dir").exists()
    again = await nacka.send(to=["sjofartsverket"], payload="Fortfarande v2", label="INTERN")
    await again.delivered(WAIT)
    assert [m.text for m in await receive(ship)] == ["Fortfarande v2"]

    # A client starting now, fresh or restarted, verifies the chain it finds and stops at
    # the forged version.
    solna = await net.client("solna")
    assert solna.directory.version == 2
    await nacka.close()
    nacka = await net.client("nacka")
    assert nacka.directory.version == 2
    assert nacka.connected


# --- offline ----------------------------------------------------------------------------------


async def test_a_client_starts_offline_from_its_cached_directory_and_sends_later(
    net: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    solna = await net.client("solna")
    nacka = await net.client("nacka")  # caches the directory in its state folder
    await nacka.close()
    assert (net.state_dir("nacka") / "directory" / "v00000001.dir").exists()

    await net.server.stop()
    with pytest.raises(Unavailable):  # nothing cached, nothing given: cannot start
        await net.client("sos-alarm", connect_timeout=0.5)
    nacka = await net.client("nacka", connect_timeout=0.5)
    assert not nacka.connected
    queued = await nacka.send(to=["solna"], payload="Skickat offline", label="INTERN")
    assert queued.state is SendState.QUEUED
    assert (await nacka.status(queued.message_id)).state == "queued"
    # A directory given by the application works as well as a cached one.
    sos = await net.client(
        "sos-alarm",
        state_dir=net.base / "sos-alarm-2",
        directory=[net.region.directory.raw],
        connect_timeout=0.5,
    )
    also = await sos.send(to=["solna"], payload="Också offline", label="INTERN")
    await asyncio.sleep(0.5)
    assert (queued.state, also.state) == (SendState.QUEUED, SendState.QUEUED)
    assert nacka.outbox_depth == 1

    await net.server.start()
    for handle in (queued, also):
        await handle.accepted(timeout=20)
        await handle.delivered(timeout=20)
    texts = sorted(m.text for m in await receive(solna, 2, timeout=20))
    assert texts == ["Också offline", "Skickat offline"]
    assert nacka.connected
    assert nacka.outbox_depth == 0
