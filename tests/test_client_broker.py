"""The client against a real nats-server and broker: failover across server URLs, and
submitting a new directory version (the registry authority's work), adopted when it
verifies and refused with the broker's reason code when it does not extend its chain."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from broker.core import VerifiedDirectory, sign_directory, successor, verify_directory
from broker.demo import DemoRegion
from clients import (
    Client,
    DirectoryRefused,
    ForwardRefused,
    Label,
    Message,
    Priority,
    ReferenceKind,
    Status,
    Tlp,
)

from . import nats_fixtures, service_helpers
from .service_helpers import BrokerFactory, now_ms

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory
running_broker = service_helpers.running_broker


def client(factory: BrokerFactory, actor: str, tmp_path: Path, **kw: Any) -> Client:
    region = factory.region
    kw.setdefault("keys", region.identities[actor])
    return Client.connect(
        servers=[factory.server.url],
        actor=actor,
        authority_key=region.authority.public,
        state_dir=tmp_path / actor,
        **kw,
    )


def next_version(region: DemoRegion, name: str) -> bytes:
    """Version 2: one actor renamed (any change makes a distinct version)."""
    current = region.directory
    actors = tuple(
        a.model_copy(update={"name": name}) if a.id == "nacka" else a
        for a in current.document.actors
    )
    document = successor(current, issued=now_ms(), actors=actors)
    return sign_directory(document, region.authority)


def version_of(raw: bytes, region: DemoRegion) -> VerifiedDirectory:
    return verify_directory(raw, pinned=region.authority.public, previous=region.directory)


@pytest.mark.usefixtures("running_broker")
async def test_submitted_version_is_published_and_followed(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    region = broker_factory.region
    raw = next_version(region, "Nacka kommun (ny)")
    async with (
        client(broker_factory, "lansstyrelsen-stockholm", tmp_path) as authority,
        client(broker_factory, "solna", tmp_path) as solna,
    ):
        adopted = await authority.submit_directory(raw, timeout=10)
        assert adopted.version == 2
        assert adopted.hash == version_of(raw, region).hash
        await solna._refresh_directory()  # what the follow task does every few seconds
        assert solna.directory.version == 2
        assert solna.directory.actor("nacka").name == "Nacka kommun (ny)"  # type: ignore[union-attr]
    # The adopted version was cached: it is there after a restart.
    assert (tmp_path / "solna" / "directory" / "v00000002.dir").read_bytes() == raw


@pytest.mark.usefixtures("running_broker")
async def test_a_version_that_no_longer_extends_the_chain_is_refused_by_the_broker(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    region = broker_factory.region
    first, rival = next_version(region, "A"), next_version(region, "B")
    async with (
        client(broker_factory, "lansstyrelsen-stockholm", tmp_path) as authority,
        client(broker_factory, "solna", tmp_path) as late,
    ):
        await authority.submit_directory(first, timeout=10)
        # ``late`` still holds version 1, so the rival version 2 verifies locally; the
        # broker, at version 2 already, refuses it and says why.
        assert late.directory.version == 1
        with pytest.raises(DirectoryRefused) as info:
            await late.submit_directory(rival, timeout=10)
        assert info.value.code == "directory_not_next"
        await late._refresh_directory()
        assert late.directory.hash == version_of(first, region).hash


@pytest.mark.usefixtures("running_broker")
async def test_a_version_signed_by_another_key_never_leaves_the_client(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    region = broker_factory.region
    from broker.core import SigningKeyPair

    document = successor(region.directory, issued=now_ms())
    forged = sign_directory(document, SigningKeyPair.generate())
    async with client(broker_factory, "solna", tmp_path) as solna:
        with pytest.raises(DirectoryRefused):
            await solna.submit_directory(forged, timeout=5)
        assert solna.outbox_depth == 0


@pytest.mark.usefixtures("running_broker")
async def test_fails_over_to_a_server_that_answers(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"nats://127.0.0.1:{sock.getsockname()[1]}"
    region = broker_factory.region
    async with Client.connect(
        servers=[dead, broker_factory.server.url],
        actor="nacka",
        keys=region.identities["nacka"],
        authority_key=region.authority.public,
        state_dir=tmp_path / "nacka",
        connect_timeout=5,
    ) as nacka:
        assert nacka.connected
        handle = await nacka.send(to=["solna"], payload=b"x", label="INTERN")
        await handle.accepted(timeout=10)


async def next_message(client: Client, timeout: float = 10.0) -> Message:
    async def first() -> Message:
        async for message in client.messages():
            return message
        raise AssertionError("messages() ended")

    return await asyncio.wait_for(first(), timeout)


@pytest.mark.usefixtures("running_broker")
async def test_reply_confirmations_and_a_red_forward_back_to_the_original_sender(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    async with (
        client(broker_factory, "nacka", tmp_path) as nacka,
        client(broker_factory, "solna", tmp_path) as solna,
    ):
        request = await nacka.send(
            to=["solna", "sundbyberg"],
            payload={"question": "buses?"},
            label="INTERN",
            tlp="RED",
            type="request",
            priority="priority",
        )
        await request.accepted(timeout=10)
        received = await next_message(solna)
        assert received.status is Status.ACTUAL
        assert received.references == ()
        await received.mark_read()
        # Only solna has read it: a per-recipient wait returns, a wait for all would not.
        status = await request.confirmed("read", recipients=["solna"], timeout=10)
        assert status["solna"].read is not None
        assert status["sundbyberg"].read is None
        with pytest.raises(ValueError, match="not recipients"):
            await request.confirmed("read", recipients=["taby"], timeout=1)

        answer = await received.reply({"answer": "two at 15:00"})
        await answer.accepted(timeout=10)
        reply = await next_message(nacka)
        assert reply.json() == {"answer": "two at 15:00"}
        assert reply.label == received.label
        assert reply.priority is Priority.PRIORITY
        assert [(r.kind, r.message) for r in reply.references] == [
            (ReferenceKind.REPLY, request.message_id)
        ]

        # TLP:RED goes to nobody new, but back to an actor that was on the original is fine.
        with pytest.raises(ForwardRefused) as info:
            await received.forward(to=["taby"])
        assert info.value.code == "tlp_forward_forbidden"
        back = await received.forward(to=["nacka"])
        await back.accepted(timeout=10)
        lower = Label(policy="ssr", classification="OFFENTLIG", tlp=Tlp.RED)
        with pytest.raises(ForwardRefused) as info:
            await received.reply(b"x", label=lower)
        assert info.value.code == "forward_label_lowered"


@pytest.mark.usefixtures("running_broker")
async def test_a_client_holding_old_and_new_keys_opens_both_during_a_rotation(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    """Solna's encryption key is rotated in directory v2: a message wrapped for the old
    key before the rotation and one for the new key after both open with keys=[new, old]."""
    from broker.core import Identity, KeyRecord

    region = broker_factory.region
    old = region.identities["solna"]
    new = Identity(
        principal="solna", signing=old.signing, encryption=Identity.generate("x").encryption
    )
    now = now_ms()
    actors = tuple(
        a.model_copy(update={"encryption_keys": (
            *a.encryption_keys,
            KeyRecord.for_key(new.encryption.public, not_before=now - 1000,
                              not_after=now + 86_400_000),
        )}) if a.id == "solna" else a
        for a in region.directory.document.actors
    )  # fmt: skip
    v2 = sign_directory(successor(region.directory, issued=now, actors=actors), region.authority)
    async with client(broker_factory, "nacka", tmp_path) as nacka:
        before = await nacka.send(to=["solna"], payload=b"for the old key", label="INTERN")
        await before.accepted(timeout=10)
        await nacka.submit_directory(v2, timeout=10)
        after = await nacka.send(to=["solna"], payload=b"for the new key", label="INTERN")
        await after.accepted(timeout=10)
    async with client(broker_factory, "solna", tmp_path, keys=[new, old]) as solna:
        first, second = await next_message(solna), await next_message(solna)
    assert {first.payload, second.payload} == {b"for the old key", b"for the new key"}
    assert solna.refused == 0
