"""The hand-over reuses admission's opening of a message, and only when that is safe.

A received frame is verified and decrypted when it is admitted to the inbox, and the
message is handed to the application later. The client keeps admission's opening in a
bounded memory cache and hands it over without opening the frame again, unless the
directory (or policy, or the frame bytes) in force at hand-over differ from those it was
opened with: then it opens again, so a key revoked meanwhile still stops the message.

The client starts offline here (nothing listens on its NATS URL) from the demo
directory, and frames are admitted through the same path a NATS delivery or a bundle
takes (``Client._envelope`` / ``Client._granted``). Openings are counted by wrapping
the core's ``open_envelope`` and ``open_grant`` as the client module calls them.
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import broker.core as core
from broker.core import (
    Label,
    MessageType,
    Policy,
    RecipientKey,
    Tlp,
    VerifiedDirectory,
    make_grant,
    seal_envelope,
)
from broker.core.crypto import seeded_random, sha256
from broker.demo import DemoRegion, demo_region
from clients import Client, Message
from clients import client as client_module

from .envelope_helpers import edit_directory, signing_key_update
from .service_helpers import HOUR_MS, now_ms

INTERN = Label(policy="ssr", classification="INTERN", tlp=Tlp.GREEN)
ME = "nacka"


@pytest.fixture(scope="module")
def live() -> DemoRegion:
    return demo_region(now=now_ms() - 60_000, rand=seeded_random(b"client-handover-cache"))


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often the client verified and decrypted an envelope or a grant."""
    calls: Counter[str] = Counter()
    real_envelope, real_grant = core.open_envelope, core.open_grant

    def open_envelope(*args: Any, **kwargs: Any) -> Any:
        calls["envelope"] += 1
        return real_envelope(*args, **kwargs)

    def open_grant(*args: Any, **kwargs: Any) -> Any:
        calls["grant"] += 1
        return real_grant(*args, **kwargs)

    monkeypatch.setattr(client_module, "open_envelope", open_envelope)
    monkeypatch.setattr(client_module, "open_grant", open_grant)
    return calls


def options(live: DemoRegion, state: Path) -> dict[str, Any]:
    with socket.socket() as sock:  # a loopback port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return {
        "servers": [f"nats://127.0.0.1:{port}"],
        "actor": ME,
        "keys": live.identities[ME],
        "authority_key": live.authority.public,
        "state_dir": state,
        "directory": [live.directory.raw],
        "connect_timeout": 0.3,
    }


@pytest_asyncio.fixture
async def nacka(live: DemoRegion, tmp_path: Path) -> AsyncIterator[Client]:
    async with Client.connect(**options(live, tmp_path / "state")) as client:
        yield client


def envelope(live: DemoRegion, sender: str, text: str, to: str = ME) -> bytes:
    now = now_ms()
    return seal_envelope(
        sender=live.identities[sender],
        recipients=[RecipientKey.of(live.directory.actor(to), now)],  # type: ignore[arg-type]
        label=INTERN,
        message_type=MessageType.SITUATION_REPORT,
        payload=text.encode(),
        created=now,
        expires=now + HOUR_MS,
        content_type="text/plain",
    ).raw


async def admit(client: Client, frames: list[bytes], now: int | None = None) -> None:
    for data in frames:
        assert await client._envelope(data, now or now_ms()) == "admitted"


async def waiting(client: Client) -> list[Message]:
    return [m async for m in client.messages(follow=False)]


def adopt(client: Client, directory: VerifiedDirectory) -> None:
    """Adopt a new directory version the way following the broker's bucket does."""
    assert client._adopt(directory.raw)
    assert client.directory.version == directory.version


# --- reuse ------------------------------------------------------------------------------------


async def test_with_the_same_directory_each_message_is_opened_once(
    live: DemoRegion, nacka: Client, opened: Counter[str]
) -> None:
    frames = [envelope(live, "solna", f"Lägesbild {i}") for i in range(3)]
    await admit(nacka, frames)
    assert opened["envelope"] == 3  # admission: verified, decrypted, receipt queued
    assert len(nacka._openings) == 3

    got = await waiting(nacka)
    assert [(m.sender, m.text, m.granted) for m in got] == [
        ("solna", f"Lägesbild {i}", False) for i in range(3)
    ]
    assert opened["envelope"] == 3, "the hand-over opened the envelopes again"
    assert (len(nacka._openings), nacka._openings.bytes) == (0, 0)
    assert nacka.refused == 0

    # Handed over once: nothing waits, and a redelivery is a duplicate that keeps nothing.
    assert await waiting(nacka) == []
    assert await nacka._envelope(frames[0], now_ms()) == "duplicate"
    assert len(nacka._openings) == 0


async def test_a_granted_message_is_opened_once_too(
    live: DemoRegion, nacka: Client, opened: Counter[str]
) -> None:
    now = now_ms()
    directory = live.directory
    sealed = seal_envelope(
        sender=live.identities["solna"],
        recipients=[RecipientKey.of(directory.actor("sundbyberg"), now)],  # type: ignore[arg-type]
        label=INTERN, message_type=MessageType.SITUATION_REPORT, payload=b"Granted text",
        created=now, expires=now + HOUR_MS, incident="storm-1", content_type="text/plain",
    )  # fmt: skip
    grant = make_grant(live.identities["solna"], sealed.raw, sealed.content_key,
                       newcomer=directory.actor(ME),  # type: ignore[arg-type]
                       directory=directory, policy=Policy(), at=now)  # fmt: skip
    assert await nacka._granted(grant, now) == "admitted"
    assert opened["grant"] == 1

    [got] = await waiting(nacka)
    assert (got.granted, got.text) == (True, "Granted text")
    assert opened["grant"] == 1, "the hand-over opened the grant again"


# --- the directory changed: open again --------------------------------------------------------


async def test_a_new_directory_version_makes_the_hand_over_open_again(
    live: DemoRegion, nacka: Client, opened: Counter[str]
) -> None:
    """Any new version, even one that changes nothing the message depends on, is a
    different directory: the opening made against the old one is not trusted."""
    frames = [envelope(live, "solna", f"Före v2 {i}") for i in range(2)]
    await admit(nacka, frames)
    adopt(nacka, edit_directory(live, {}, issued=now_ms()))

    got = await waiting(nacka)
    assert [m.text for m in got] == ["Före v2 0", "Före v2 1"]
    assert opened["envelope"] == 4  # two at admission, two again at hand-over
    assert len(nacka._openings) == 0

    # Admitted under v2 and handed over under v2: reused again.
    await admit(nacka, [envelope(live, "solna", "Efter v2")])
    assert [m.text for m in await waiting(nacka)] == ["Efter v2"]
    assert opened["envelope"] == 5


async def test_a_waiting_message_from_a_sender_revoked_meanwhile_is_dropped(
    live: DemoRegion, nacka: Client, opened: Counter[str], caplog: pytest.LogCaptureFixture
) -> None:
    admitted_at = now_ms()
    frames = [
        envelope(live, "solna", "Från Solna"),
        envelope(live, "sundbyberg", "Från Sundbyberg"),
    ]
    await admit(nacka, frames, admitted_at)
    # solna's signing key is revoked as of the admission: it must not reach the application.
    revoked = {"solna": signing_key_update(live, "solna", revoked_at=admitted_at)}
    adopt(nacka, edit_directory(live, revoked, issued=now_ms()))

    with caplog.at_level(logging.WARNING, logger="ssr.client"):
        got = await waiting(nacka)
    assert [(m.sender, m.text) for m in got] == [("sundbyberg", "Från Sundbyberg")]
    assert nacka.refused == 1
    assert "waiting envelope no longer opens (sender_key_revoked)" in caplog.text
    assert opened["envelope"] == 4
    assert await waiting(nacka) == []  # dropped, not left waiting


async def test_a_restarted_client_opens_the_waiting_messages_again(
    live: DemoRegion, tmp_path: Path, opened: Counter[str]
) -> None:
    state = tmp_path / "state"
    async with Client.connect(**options(live, state)) as before:
        await admit(before, [envelope(live, "solna", f"Före omstart {i}") for i in range(3)])
    assert opened["envelope"] == 3

    async with Client.connect(**options(live, state)) as after:
        assert len(after._openings) == 0
        got = await waiting(after)
    assert [m.text for m in got] == [f"Före omstart {i}" for i in range(3)]
    assert opened["envelope"] == 6


# --- the bounds -------------------------------------------------------------------------------


async def test_more_waiting_messages_than_the_bound_all_arrive_in_order(
    live: DemoRegion, tmp_path: Path, opened: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "MAX_OPENINGS", 2)
    texts = [f"Meddelande {i}" for i in range(5)]
    async with Client.connect(**options(live, tmp_path / "state")) as client:
        await admit(client, [envelope(live, "solna", text) for text in texts])
        assert len(client._openings) == 2  # the two newest
        got = await waiting(client)
    assert [m.text for m in got] == texts
    assert opened["envelope"] == 5 + 3  # the three oldest were opened again


async def test_a_message_larger_than_the_byte_bound_is_not_kept(
    live: DemoRegion, tmp_path: Path, opened: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "MAX_OPENING_BYTES", 10)
    texts = ["Kort", "Ett längre meddelande", "Sist"]
    async with Client.connect(**options(live, tmp_path / "state")) as client:
        await admit(client, [envelope(live, "solna", text) for text in texts])
        # 4 + 4 bytes fit; the long one (22 bytes) was not kept, nor did it push "Kort" out.
        assert (len(client._openings), client._openings.bytes) == (2, 4 + 4)
        got = await waiting(client)
    assert [m.text for m in got] == texts
    assert opened["envelope"] == 3 + 1


# --- the cache itself -------------------------------------------------------------------------


def opening(directory: VerifiedDirectory, policy: Policy, payload: bytes) -> Any:
    """An opening as admission keeps it; only the payload and the inputs matter here."""
    return client_module._Opening(
        header=None,  # type: ignore[arg-type]
        header_hash="h",
        payload=payload,
        digest=sha256(b"frame"),
        received=1000,
        directory=directory,
        policy=policy,
    )


def test_an_opening_holds_only_for_the_same_frame_directory_policy_and_time(
    live: DemoRegion,
) -> None:
    policy = Policy()
    kept = opening(live.directory, policy, b"x")
    assert kept.holds_for(b"frame", 1000, live.directory, policy)
    assert not kept.holds_for(b"frame!", 1000, live.directory, policy)  # other bytes
    assert not kept.holds_for(b"frame", 1001, live.directory, policy)  # other admission
    assert not kept.holds_for(b"frame", 1000, None, policy)
    assert not kept.holds_for(b"frame", 1000, live.directory, Policy())  # another policy
    other = edit_directory(live, {}, issued=now_ms())
    assert not kept.holds_for(b"frame", 1000, other, policy)


def test_the_cache_drops_the_oldest_first_by_count_and_by_bytes(live: DemoRegion) -> None:
    policy = Policy()
    cache = client_module._Openings(max_entries=3, max_bytes=10)
    for name, size in (("a", 3), ("b", 3), ("c", 3)):
        assert cache.put(name, opening(live.directory, policy, b"x" * size))
    assert not cache.put("b", opening(live.directory, policy, b"y"))  # kept already
    assert cache.put("d", opening(live.directory, policy, b"x"))  # count: "a" goes
    assert (cache.pop("a"), len(cache), cache.bytes) == (None, 3, 7)
    assert cache.put("e", opening(live.directory, policy, b"x" * 7))  # "b" (count), "c" (bytes)
    assert [cache.pop(k) is not None for k in "bcde"] == [False, False, True, True]
    assert (len(cache), cache.bytes) == (0, 0)
    assert not cache.put("f", opening(live.directory, policy, b"x" * 11))  # never fits
    assert (len(cache), cache.bytes) == (0, 0)
