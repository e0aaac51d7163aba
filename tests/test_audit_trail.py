"""The tamper-evident audit trail against a real nats-server and brokers: sealing (also by
two brokers at once), verification from the stream, tampering with JetStream's own files
and with exports (edit, delete, reorder, truncate) detected and located, and the CLI."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from broker import subjects
from broker.auditlog import (
    CHECKPOINT_KEY,
    AuditSealer,
    build_export,
    directory_versions,
    read_trail,
    verify_export,
    verify_stream,
)
from broker.core.auditchain import make_checkpoint, parse_checkpoint
from broker.router import wall_clock_ms
from broker.service import Service
from clients.cli import EXIT_CHECK_FAILED, EXIT_OK, main

from . import nats_fixtures, service_helpers
from .service_helpers import Actors, BrokerFactory

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory
running_broker = service_helpers.running_broker
actors = service_helpers.actors

SLOW_SEAL = {"audit_seal_interval_s": 3600.0, "audit_verify_interval_s": 3600.0}


@pytest_asyncio.fixture
async def broker(broker_factory: BrokerFactory) -> Service:
    """A broker whose own seal and verify loops stay out of the way: tests drive them."""
    return await broker_factory(**SLOW_SEAL)


@pytest_asyncio.fixture
async def net(broker: Service, actors: Actors) -> Actors:
    return await actors.start()


async def traffic(net: Actors, count: int) -> None:
    for i in range(count):
        _, data = await net.send("nacka", ["solna", "sos-alarm"], text=f"lägesbild {i}")
        await net.accepted_and_delivered("nacka", data)
    # and one refusal: SEKRETESS for the port, which is cleared for INTERN only
    _, data = await net.send("nacka", ["stockholms-hamnar"], label=service_helpers.SEKRETESS)
    await net.verdict("nacka", data)


async def seal_all(service: Service) -> None:
    await service.seal_audit()


async def report(service: Service) -> dict:
    assert service.bus is not None
    assert service.router is not None
    versions = await directory_versions(service.bus, service.router.state.pinned_authority)
    return (await verify_stream(service.bus, versions)).as_dict()


async def test_sealed_trail_verifies_and_the_metric_says_so(broker: Service, net: Actors) -> None:
    await traffic(net, 3)
    await asyncio.sleep(0.5)  # receipts' audit events
    await seal_all(broker)
    result = await report(broker)
    assert result["verified"], result["findings"]
    assert result["checkpoints"] == 1
    assert result["sealed_through"] == result["events"] - 1  # all but the checkpoint itself
    await broker.verify_audit()
    assert broker.audit_watch.status()["verified"] is True
    value = broker.metrics.registry.get_sample_value("ssr_broker_audit_verified")
    assert value == 1


async def test_two_brokers_sealing_at_once_keep_one_chain(
    broker_factory: BrokerFactory, net: Actors
) -> None:
    first = await broker_factory(**SLOW_SEAL)
    second = await broker_factory(**SLOW_SEAL)
    for _ in range(4):
        await traffic(net, 2)
        await asyncio.gather(first.seal_audit(), second.seal_audit(), first.seal_audit())
    result = await report(first)
    assert result["verified"], result["findings"]
    assert result["checkpoints"] >= 4
    sealed = sum(
        s.metrics.registry.get_sample_value("ssr_broker_audit_checkpoints_total") or 0
        for s in (first, second)
    )
    assert sealed == result["checkpoints"]  # no checkpoint was published twice


async def test_a_checkpoint_sealed_but_never_published_is_published_by_the_next_sealer(
    broker: Service, net: Actors
) -> None:
    await traffic(net, 1)
    assert broker.bus is not None
    sealer = AuditSealer(
        broker.bus,
        broker.sealer.identity,
        wall_clock_ms,
        broker.sealer.directory,  # type: ignore[union-attr]
    )
    # The compare-and-set wins, then the broker dies before publishing.
    entries = await broker.bus.read_stream(subjects.AUDIT_STREAM, subjects.AUDIT_WILDCARD, 1, 1000)
    checkpoint = make_checkpoint(
        [(e.seq, e.data) for e in entries], after=None, at=wall_clock_ms(),
        broker=sealer.identity.broker, signer=sealer.identity.signing,
    )  # fmt: skip
    await broker.bus.kv_create(subjects.STATE_BUCKET, CHECKPOINT_KEY, checkpoint.raw)
    # Meanwhile the trail cannot verify: the bucket names a checkpoint the stream lacks.
    assert [f["problem"] for f in (await report(broker))["findings"]] == ["truncated"]
    await traffic(net, 1)
    await sealer.seal()
    result = await report(broker)
    assert result["verified"], result["findings"]
    assert result["checkpoints"] == 2


async def forge_in_block_files(broker: Service, nats_server: Any, target: bytes) -> None:
    """Forge the audit event ``target`` in JetStream's own files with the server stopped
    (the stream refuses deletes): same length, another submitting actor; then restart
    the server and wait until the broker is back."""
    needle = b'"id":"' + json.loads(target)["id"].encode()
    await nats_server.stop()
    blocks = list((nats_server.store_dir / "$G" / "streams" / subjects.AUDIT_STREAM).rglob("*.blk"))
    assert blocks, "no audit stream block files found"
    changed = 0
    for block in blocks:
        raw = block.read_bytes()
        if needle in raw:
            start = raw.index(needle)
            event_start = raw.rfind(b'{"actor":', 0, start)
            window = raw[event_start : start + 2000]
            forged = window.replace(b'"actor":"nacka"', b'"actor":"nackb"', 1)
            assert forged != window
            block.write_bytes(raw[:event_start] + forged + raw[event_start + len(window) :])
            changed += 1
    assert changed == 1
    await nats_server.start()
    await service_helpers.wait_until(
        lambda: broker.bus is not None and broker.bus.connected, "reconnect"
    )
    await asyncio.sleep(0.5)


async def test_editing_jetstream_files_is_detected_and_located(
    broker: Service, net: Actors, nats_server
) -> None:
    await traffic(net, 4)
    await asyncio.sleep(0.3)
    await seal_all(broker)
    assert broker.bus is not None
    entries = await read_trail(broker.bus)
    target_seq, target = next(
        (seq, data) for seq, data in entries if data is not None and b'"kind":"accepted"' in data
    )
    await forge_in_block_files(broker, nats_server, target)
    result = await report(broker)
    assert not result["verified"]
    located = {(f["seq"], f["problem"]) for f in result["findings"]}
    print("jetstream tamper findings:", located)
    # nats-server either serves the forged bytes (altered) or drops the damaged message
    # (deleted); either way the place is named.
    assert located & {(target_seq, "altered"), (target_seq, "deleted")}, located


@pytest.mark.parametrize("actor", [None, "solna"])
async def test_exports_verify_offline_and_every_tampering_is_located(
    broker: Service, net: Actors, actor: str | None
) -> None:
    await traffic(net, 3)
    await asyncio.sleep(0.3)
    await seal_all(broker)
    assert broker.bus is not None
    assert broker.router is not None
    pinned = broker.router.state.pinned_authority
    versions = await directory_versions(broker.bus, pinned)
    entries = await read_trail(broker.bus)
    identity = broker.sealer.identity  # type: ignore[union-attr]
    data, summary = build_export(
        entries, directories=versions, start=0, end=wall_clock_ms() + 1, actor=actor,
        identity=identity, at=wall_clock_ms(),
    )  # fmt: skip
    assert summary.selected > 0
    good = verify_export(data, pinned)
    assert good.verified, good.as_dict()["findings"]
    doc = json.loads(data)
    if actor is not None:
        assert summary.redacted > 0  # other actors' events are only hashes
        for _, value in doc["entries"]:
            if value is not None:
                event = json.loads(base64.b64decode(value))
                assert (
                    event.get("kind") == "checkpoint"
                    or actor == event.get("actor")
                    or actor in event.get("recipients", [])
                )

    def tampered(change) -> dict:
        copy = json.loads(data)
        change(copy)
        return verify_export(json.dumps(copy).encode(), pinned).as_dict()

    full = [
        i
        for i, (_, v) in enumerate(doc["entries"])
        if v is not None and b"checkpoint" not in base64.b64decode(v)
    ]
    i = full[0]
    seq = doc["entries"][i][0]

    def edit(copy: dict) -> None:
        event = base64.b64decode(copy["entries"][i][1]).replace(b'"v":1', b'"v":2')
        copy["entries"][i][1] = base64.b64encode(event).decode()

    result = tampered(edit)
    assert {(seq, "altered")} <= {(f["seq"], f["problem"]) for f in result["findings"]}
    assert "export_signature" in {f["problem"] for f in result["findings"]}

    result = tampered(lambda c: c["entries"].pop(i))
    assert (seq, "deleted") in {(f["seq"], f["problem"]) for f in result["findings"]}

    def swap(copy: dict) -> None:
        rows = copy["entries"]
        rows[i], rows[i + 1] = rows[i + 1], rows[i]

    result = tampered(swap)
    assert "moved" in {f["problem"] for f in result["findings"]}

    result = tampered(lambda c: c.__setitem__("entries", c["entries"][: len(c["entries"]) // 2]))
    assert not result["verified"]
    assert {f["problem"] for f in result["findings"]} & {"truncated", "deleted"}

    result = verify_export(data, bytes(32))  # the wrong pinned key
    assert not result.verified


async def test_the_cli_verifies_and_exports(
    broker: Service, net: Actors, broker_factory: BrokerFactory, tmp_path: Path, capsys
) -> None:
    await traffic(net, 2)
    await asyncio.sleep(0.3)
    await seal_all(broker)
    base = ["--data-dir", str(broker_factory.data_dir), "--nats", broker_factory.server.url]
    code = await asyncio.to_thread(main, ["--json", "audit", "verify", *base])
    out = capsys.readouterr().out
    assert code == EXIT_OK, out
    assert json.loads(out)["verified"] is True
    export = tmp_path / "nacka.audit"
    code = await asyncio.to_thread(
        main, ["audit", "export", *base, "--from", "0", "--to", str(wall_clock_ms() + 1),
               "--actor", "nacka", "--out", str(export)],
    )  # fmt: skip
    assert code == EXIT_OK, capsys.readouterr().err
    assert export.stat().st_mode & 0o777 == 0o600
    pub = broker_factory.data_dir / "authority.pub"
    code = await asyncio.to_thread(
        main, ["audit", "verify", "--export", str(export), "--authority-key", str(pub)]
    )
    assert code == EXIT_OK, capsys.readouterr()
    raw = bytearray(export.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    export.write_bytes(bytes(raw))
    capsys.readouterr()
    code = await asyncio.to_thread(
        main, ["audit", "verify", "--export", str(export), "--authority-key", str(pub)]
    )
    out, err = capsys.readouterr()
    assert code == EXIT_CHECK_FAILED
    assert "DOES NOT VERIFY" in out or "export_invalid" in out, (out, err)
    assert "Traceback" not in err
    # Refusals: an export that would overwrite, a bad time.
    code = await asyncio.to_thread(
        main, ["audit", "export", *base, "--from", "yesterday", "--to", "1", "--out", str(export)]
    )
    assert code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_checkpoint_in_bucket_is_what_the_stream_holds_after_sealing() -> None:
    # parse_checkpoint is what the sealer reads back from the bucket: it must accept its own output.
    from broker.core.crypto import seeded_random
    from broker.demo import demo_region

    region = demo_region(now=1, rand=seeded_random(b"x"))
    cp = make_checkpoint([(1, b"{}")], after=None, at=2, broker=region.broker.broker,
                         signer=region.broker.signing)  # fmt: skip
    assert parse_checkpoint(cp.raw) == cp


async def test_an_export_of_a_broken_trail_is_refused_and_hostile_exports_are_reported(
    broker: Service, net: Actors
) -> None:
    from broker.auditlog import ExportRefused

    await traffic(net, 2)
    await asyncio.sleep(0.3)
    await seal_all(broker)
    assert broker.bus is not None
    assert broker.router is not None
    pinned = broker.router.state.pinned_authority
    versions = await directory_versions(broker.bus, pinned)
    entries = await read_trail(broker.bus)
    identity = broker.sealer.identity  # type: ignore[union-attr]
    # An insider edits a sealed event so that the filter would leave it out (redacted):
    # the exporting broker verifies the whole trail first and refuses.
    tampered = [
        (seq, data.replace(b'"actor":"nacka"', b'"actor":"nackb"') if data and seq == 1 else data)
        for seq, data in entries
    ]
    with pytest.raises(ExportRefused) as info:
        build_export(
            tampered, directories=versions, start=0, end=wall_clock_ms() + 1, actor="solna",
            identity=identity, at=wall_clock_ms(),
        )  # fmt: skip
    assert info.value.report.findings[0].problem == "altered"

    data, _ = build_export(
        entries, directories=versions, start=0, end=wall_clock_ms() + 1, actor=None,
        identity=identity, at=wall_clock_ms(),
    )  # fmt: skip
    for change in (
        lambda d: d.__setitem__("expected", {"number": "x", "hash": "00"}),
        lambda d: d.__setitem__("expected", {"number": 10**30, "hash": "00" * 32}),
        lambda d: d.__setitem__("exported_at", "yesterday"),
        lambda d: d.__setitem__("entries", [["1", None]]),
    ):
        doc = json.loads(data)
        change(doc)
        result = verify_export(json.dumps(doc).encode(), pinned)
        assert not result.verified
    nested = b'{"v":1,"kind":"ssr-audit-export","entries":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert not verify_export(nested, pinned).verified


async def test_verify_against_a_checkpoint_noted_outside_nats(
    broker: Service, net: Actors, broker_factory: BrokerFactory, capsys
) -> None:
    await traffic(net, 1)
    await seal_all(broker)
    await broker.verify_audit()
    latest = broker.audit_watch.status()["latest_checkpoint"]
    assert latest is not None
    base = ["audit", "verify", "--data-dir", str(broker_factory.data_dir),
            "--nats", broker_factory.server.url]  # fmt: skip
    noted = f"{latest['number']}:{latest['hash']}"
    assert await asyncio.to_thread(main, [*base, "--expect", noted]) == EXIT_OK
    # Someone rewound the bucket and the stream: the noted checkpoint is "from the future".
    ahead = f"{latest['number'] + 5}:{latest['hash']}"
    assert await asyncio.to_thread(main, [*base, "--expect", ahead]) == EXIT_CHECK_FAILED
    assert "truncated" in capsys.readouterr().out
    forged = f"{latest['number']}:{'0' * 64}"
    assert await asyncio.to_thread(main, [*base, "--expect", forged]) == EXIT_CHECK_FAILED
    assert await asyncio.to_thread(main, [*base, "--expect", "one:two"]) == 2


async def test_an_idle_trail_is_not_sealed_over_and_over(broker: Service, net: Actors) -> None:
    await traffic(net, 1)
    await seal_all(broker)
    assert broker.sealer is not None
    assert broker.bus is not None
    _, before = await broker.bus.stream_bounds(subjects.AUDIT_STREAM)
    for _ in range(3):  # only the last checkpoint's own event is new: nothing to seal
        assert await broker.sealer.seal() is None
    _, after = await broker.bus.stream_bounds(subjects.AUDIT_STREAM)
    assert after == before
    await traffic(net, 1)  # new events: sealed, with the previous checkpoint among them
    checkpoint = await broker.sealer.seal()
    assert checkpoint is not None
    assert checkpoint.first == before
    assert (await report(broker))["verified"]
