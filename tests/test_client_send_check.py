"""``Client.send`` checks the envelope it has just sealed without verifying its own
signature again: the header and hash it tracks are the sealed ones, and a signing key the
directory does not hold for this actor is refused before anything is queued."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from broker.core import Identity, Label, Tlp, read_envelope
from broker.core.crypto import seeded_random
from broker.demo import DemoRegion, demo_region
from clients import Client
from clients._errors import SendError

from .service_helpers import now_ms

INTERN = Label(policy="ssr", classification="INTERN", tlp=Tlp.GREEN)
ME = "nacka"


@pytest.fixture(scope="module")
def live() -> DemoRegion:
    return demo_region(now=now_ms() - 60_000, rand=seeded_random(b"client-send-check"))


def options(live: DemoRegion, state: Path, keys: Identity) -> dict[str, Any]:
    with socket.socket() as sock:  # a loopback port where nothing listens: offline
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return {
        "servers": [f"nats://127.0.0.1:{port}"],
        "actor": ME,
        "keys": keys,
        "authority_key": live.authority.public,
        "state_dir": state,
        "directory": [live.directory.raw],
        "connect_timeout": 0.3,
    }


async def test_the_handle_holds_the_header_and_hash_a_reader_finds(
    live: DemoRegion, tmp_path: Path
) -> None:
    async with Client.connect(**options(live, tmp_path, live.identities[ME])) as client:
        handle = await client.send(to=["solna"], payload="Lägesbild", label=INTERN)
        assert client._outbox is not None
        (item,) = client._outbox.pending()
    envelope = read_envelope(item.data, live.directory)
    assert handle.message_id == envelope.header.id
    assert handle.header_hash == envelope.header_hash


async def test_a_signing_key_the_directory_does_not_hold_is_refused_before_queueing(
    live: DemoRegion, tmp_path: Path
) -> None:
    stranger = Identity.generate(ME)  # nacka's name, keys the directory never listed
    async with Client.connect(**options(live, tmp_path, stranger)) as client:
        with pytest.raises(SendError) as caught:
            await client.send(to=["solna"], payload="Lägesbild", label=INTERN)
        assert caught.value.code == "unknown_sender_key"
        assert client._outbox is not None
        assert client._outbox.pending() == []
