"""The client library's public surface and its refusals, without a broker.

The client starts offline here (nothing listens on the NATS URL) from a verified
directory given to it, which is how an actor's system keeps sending into its
outbox while NATS is unreachable. Everything that reaches NATS is in
``test_client_e2e.py`` and ``test_client_outage.py``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import clients
from broker.core import Identity, Label, Tlp, save_identity
from broker.core.crypto import seeded_random
from broker.demo import DemoRegion, demo_region
from clients import (
    AddressError,
    Client,
    ClientError,
    ClosedError,
    ConfigurationError,
    DirectoryRefused,
    SendError,
    SendState,
    Unavailable,
)

from .service_helpers import now_ms

PUBLIC = {
    "AddressError", "Client", "ClientError", "ClosedError", "ConfigurationError", "Control",
    "Mode", "ReceiptKind",
    "DeliveryTimeout", "DirectoryRefused", "Expired", "ForwardRefused", "Label", "Message",
    "MessageStatus", "MessageType", "OutboxError", "OutboxFull", "Priority", "RecipientStatus",
    "Reference", "ReferenceKind", "Rejected", "SendError", "SendHandle", "SendState", "Status",
    "StoreError", "Tlp", "Unavailable",
    "BundleFileError", "BundleRefused", "ImportResult", "IncidentEntry", "PressComment",
    "PressLine", "PressStage", "RequestStatus", "SituationEntry", "SituationPicture",
}  # fmt: skip


@pytest.fixture(scope="module")
def live() -> DemoRegion:
    return demo_region(now=now_ms() - 60_000, rand=seeded_random(b"client-api"))


@pytest.fixture
def dead_url() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"nats://127.0.0.1:{port}"


def options(live: DemoRegion, url: str, state: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "servers": [url],
        "actor": "nacka",
        "keys": live.identities["nacka"],
        "authority_key": live.authority.public,
        "state_dir": state,
        "directory": [live.directory.raw],
        "connect_timeout": 0.3,
    } | overrides


@pytest_asyncio.fixture
async def offline(live: DemoRegion, dead_url: str, tmp_path: Path) -> AsyncIterator[Client]:
    async with Client.connect(**options(live, dead_url, tmp_path / "state")) as client:
        yield client


def test_public_names_are_exactly_the_documented_ones() -> None:
    assert set(clients.__all__) == PUBLIC
    for name in clients.__all__:
        assert getattr(clients, name) is not None
    errors = [getattr(clients, n) for n in PUBLIC if n.endswith(("Error", "Full"))]
    errors += [clients.Rejected, clients.Expired, clients.DeliveryTimeout, clients.Unavailable]
    assert all(issubclass(e, ClientError) for e in errors)
    assert issubclass(clients.DeliveryTimeout, TimeoutError)  # asyncio.wait_for habits work


async def test_offline_send_queues_in_the_outbox_and_survives_restart(
    live: DemoRegion, dead_url: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    async with Client.connect(**options(live, dead_url, state)) as client:
        assert not client.connected
        handle = await client.send(to=["solna"], payload={"text": "hej"}, label="INTERN")
        assert handle.state is SendState.QUEUED
        assert handle.recipients == ("solna",)
        assert handle.status()["solna"].state == "pending"
        assert client.outbox_depth == 1
        assert (await client.status(handle.message_id)).state == "queued"
    # The verified directory was cached: a restart works offline without being given it.
    async with Client.connect(**options(live, dead_url, state, directory=[])) as client:
        assert client.outbox_depth == 1
        assert client.directory.version == live.directory.version
    assert (state / "outbox.sqlite").stat().st_mode & 0o777 == 0o600


async def test_offline_without_a_directory_is_unavailable(
    live: DemoRegion, dead_url: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    with pytest.raises(Unavailable):
        async with Client.connect(**options(live, dead_url, state, directory=[])):
            pass
    # Nothing was left open: the same state folder opens again.
    async with Client.connect(**options(live, dead_url, state)):
        pass


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"actor": "solna"}, "keys"),
        ({"keys": "/nonexistent/nacka.key"}, "keys"),
        ({"authority_key": b"short"}, "authority_key"),
        ({"authority_key": "zz" * 32}, "authority_key"),
        ({"authority_key": "/nonexistent/authority.pub"}, "authority_key"),
        ({"servers": []}, "servers"),
        ({"policy": "/nonexistent/policy.toml"}, "policy"),
    ],
)
async def test_bad_configuration_is_a_clear_error(
    live: DemoRegion, dead_url: str, tmp_path: Path, overrides: dict[str, Any], code: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        Client.connect(**options(live, dead_url, tmp_path / "state", **overrides))
    assert info.value.code == code


async def test_policy_file_with_errors_is_refused(
    live: DemoRegion, dead_url: str, tmp_path: Path
) -> None:
    bad = tmp_path / "policy.toml"
    bad.write_text('format = 1\nceiling = "NOPE"\n', encoding="utf-8")
    with pytest.raises(ConfigurationError, match="policy"):
        Client.connect(**options(live, dead_url, tmp_path / "state", policy=bad))


async def test_key_file_and_hex_authority_key_from_files(
    live: DemoRegion, dead_url: str, tmp_path: Path
) -> None:
    keys = tmp_path / "nacka.key"
    save_identity(keys, live.identities["nacka"])
    pub = tmp_path / "authority.pub"
    pub.write_text(live.authority.public.hex() + "\n", encoding="ascii")
    async with Client.connect(
        **options(live, dead_url, tmp_path / "s", keys=str(keys), authority_key=str(pub))
    ) as client:
        assert client.actor == "nacka"


async def test_a_directory_signed_by_another_key_is_refused(
    live: DemoRegion, dead_url: str, tmp_path: Path
) -> None:
    other = demo_region(now=now_ms(), rand=seeded_random(b"other-authority"))
    with pytest.raises(DirectoryRefused):
        async with Client.connect(
            **options(live, dead_url, tmp_path / "s", directory=[other.directory.raw])
        ):
            pass


@pytest.mark.parametrize(
    ("kwargs", "error", "code"),
    [
        ({"to": "solna"}, AddressError, "invalid_argument"),
        ({"to": ["nobody"]}, AddressError, "unknown_recipient"),
        ({"groups": ["no-such-group"]}, AddressError, "unknown_group"),
        ({"to": ["nacka"]}, AddressError, "no_recipients"),
        ({"to": []}, AddressError, "no_recipients"),
        ({"incident": "storm-x"}, AddressError, "unknown_incident"),
        ({"to": ["solna"], "label": "TOPSECRET"}, SendError, "label_invalid"),
        ({"to": ["solna"], "tlp": "PURPLE"}, SendError, "invalid_argument"),
        ({"to": ["solna"], "type": "gossip"}, SendError, "invalid_argument"),
        ({"to": ["solna"], "priority": "urgent"}, SendError, "invalid_argument"),
        ({"to": ["solna"], "payload": 42}, SendError, "invalid_argument"),
        ({"to": ["solna"], "payload": {"x": object()}}, SendError, "invalid_argument"),
        ({"to": ["solna"], "payload": b"x" * (1024 * 1024)}, SendError, "too_large"),
        ({"to": ["solna"], "expires": datetime(2030, 1, 1)}, SendError, "invalid_argument"),
        ({"to": ["solna"], "expires": timedelta(days=400)}, SendError, "lifetime_too_long"),
        ({"to": ["solna"], "expires": timedelta(seconds=-5)}, SendError, "malformed"),
        (
            {
                "to": ["solna"],
                "label": Label(policy="other", classification="INTERN", tlp=Tlp.GREEN),
            },
            SendError,
            "label_invalid",
        ),
    ],
)
async def test_send_refuses_bad_arguments_and_queues_nothing(
    offline: Client, kwargs: dict[str, Any], error: type[ClientError], code: str | None
) -> None:
    args = {"payload": b"x", "label": "INTERN"} | kwargs
    with pytest.raises(error) as info:
        await offline.send(**args)
    if code is not None:
        assert info.value.code == code
    assert offline.outbox_depth == 0


async def test_group_addressing_expands_and_excludes_the_sender(offline: Client) -> None:
    handle = await offline.send(groups=["kommuner"], payload="lägesbild", label="INTERN")
    assert len(handle.recipients) == 25
    assert "nacka" not in handle.recipients
    assert handle.header.content_type == "text/plain"


async def test_closed_client_refuses_work(offline: Client) -> None:
    await offline.close()
    await offline.close()  # twice is harmless
    with pytest.raises(ClosedError):
        await offline.send(to=["solna"], payload=b"x")
    with pytest.raises(ClosedError):
        async for _ in offline.messages():
            pass


async def test_messages_without_follow_ends_when_nothing_waits(offline: Client) -> None:
    received = [m async for m in offline.messages(follow=False)]
    assert received == []


async def test_expired_in_the_outbox_is_reported(offline: Client) -> None:
    handle = await offline.send(
        to=["solna"], payload=b"x", label="INTERN", expires=timedelta(seconds=1)
    )
    with pytest.raises(clients.Expired):
        await handle.accepted(timeout=5)
    assert handle.state is SendState.EXPIRED
    assert offline.outbox_depth == 0


async def test_accepted_times_out_with_a_typed_error(offline: Client) -> None:
    handle = await offline.send(to=["solna"], payload=b"x", label="INTERN")
    with pytest.raises(clients.DeliveryTimeout):
        await handle.accepted(timeout=0.2)
    with pytest.raises(asyncio.TimeoutError):  # also a TimeoutError
        await handle.delivered(timeout=0.1)


def test_identity_for_another_actor_in_a_file_is_refused(
    live: DemoRegion, dead_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "k.key"
    save_identity(path, Identity.generate("solna"))
    with pytest.raises(ConfigurationError, match="not 'nacka'"):
        Client(**options(live, dead_url, tmp_path / "s", keys=path))


async def test_directory_versions_signed_by_a_rotated_authority_key_are_adopted(
    live: DemoRegion, dead_url: str, tmp_path: Path
) -> None:
    """v2 lists a new authority key (signed by the old one); v3 is signed by the new key
    only. A client pinned to the original key follows the chain to v3."""
    from broker.core import KeyRecord, SigningKeyPair, sign_directory, successor, verify_directory

    new_authority = SigningKeyPair.generate()
    now = now_ms()
    record = KeyRecord.for_key(new_authority.public, not_before=now - 1000, not_after=now + 10**9)
    v1 = live.directory
    v2_doc = successor(v1, issued=now, authority_keys=(*v1.document.authority_keys, record))
    v2_raw = sign_directory(v2_doc, live.authority)
    v2 = verify_directory(v2_raw, pinned=live.authority.public, previous=v1)
    v3_raw = sign_directory(successor(v2, issued=now + 1), new_authority)
    seeds = [v1.raw, v2_raw, v3_raw]
    async with Client.connect(**options(live, dead_url, tmp_path / "s", directory=seeds)) as c:
        assert c.directory.version == 3
    # And from the cache alone, after a restart.
    async with Client.connect(**options(live, dead_url, tmp_path / "s", directory=[])) as c:
        assert c.directory.version == 3
