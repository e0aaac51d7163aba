"""``ssr ingest`` end to end: sample feeds in, signed alert envelopes out, through a real
nats-server and the real broker, received by a real :class:`Client` (Solna, in the
groups ``kommuner`` and ``tib``).

The sources are a local aiohttp server (:class:`Feeds`) serving the sample feeds of
``tests/feeds/`` (their times shifted to now: an expired alert is not sent), a webhook
and a drop folder. The adapter acts as ``sos-alarm`` with the rules of
``tests/feeds/ingest/rules.toml``. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from broker.core import load_policy
from broker.demo import DemoRegion
from clients import Client, Message, MessageType, Reference, ReferenceKind, Status
from clients.adapters.config import load_config, parse_config
from clients.adapters.rules import RulesError, RuleSet
from clients.adapters.service import SIGNATURE_HEADER, Ingest, signature
from clients.cli import main

from . import nats_fixtures, service_helpers
from .service_helpers import WAIT, BrokerFactory, wait_until, write_data_dir

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory
running_broker = service_helpers.running_broker

FEEDS = Path(__file__).parent / "feeds"
RULES = FEEDS / "ingest" / "rules.toml"
ACTOR = "sos-alarm"
SECRET_ENV = "SSR_TEST_SOS_SECRET"
SECRET = "a-test-secret-of-32-characters!!"
ENV = {SECRET_ENV: SECRET}
SETTLE_S = 0.5  # how long "nothing more arrives" is watched

DOCUMENTS = "ssr_adapter_documents_fetched_total"
ACCEPTED = "ssr_adapter_alerts_accepted_total"
DUPLICATES = "ssr_adapter_alerts_duplicate_total"
QUARANTINED = "ssr_adapter_items_quarantined_total"
UNROUTED = "ssr_adapter_alerts_unrouted_total"
FETCH_ERRORS = "ssr_adapter_fetch_errors_total"
CANCELS = "ssr_adapter_cancels_generated_total"
REFUSED = "ssr_adapter_webhook_refused_total"
LAST_SUCCESS = "ssr_adapter_last_success_timestamp_seconds"
LAG = "ssr_adapter_lag_seconds"

_TIME = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)")


def shifted(name: str, reference: str, now: datetime) -> bytes:
    """A sample feed with every timestamp moved by ``now - reference`` (whole seconds),
    so the samples' alerts are current whenever the tests run."""
    delta = timedelta(seconds=round((now - datetime.fromisoformat(reference)).total_seconds()))

    def move(match: re.Match[bytes]) -> bytes:
        text = match.group(0).decode("ascii")
        moved = datetime.fromisoformat(text.replace("Z", "+00:00")) + delta
        spec = "milliseconds" if "." in text else "seconds"
        out = moved.isoformat(timespec=spec)
        return (out.replace("+00:00", "Z") if text.endswith("Z") else out).encode("ascii")

    return _TIME.sub(move, (FEEDS / name).read_bytes())


def metric(ingest: Ingest, name: str, **labels: str) -> float:
    value = ingest.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def receive(client: Client, count: int, *, timeout: float = WAIT) -> list[Message]:
    got: list[Message] = []
    async with asyncio.timeout(timeout):
        async for message in client.messages():
            got.append(message)
            if len(got) == count:
                break
    return got


async def nothing_more(client: Client) -> list[Message]:
    await asyncio.sleep(SETTLE_S)
    return [m async for m in client.messages(follow=False)]


def item(message: Message) -> str:
    return str(message.json()["item_id"])


def ref(kind: ReferenceKind, message: Message) -> Reference:
    return Reference(kind=kind, message=message.id, header_hash=message.header_hash)


# --- a local server standing in for the sources ------------------------------------------


@dataclass
class Feeds:
    """``/feed/<name>`` serves ``documents[name]``, with validators and faults on demand."""

    documents: dict[str, bytes] = field(default_factory=dict)
    etags: dict[str, str] = field(default_factory=dict)
    last_modified: dict[str, str] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)  # answer this instead
    requests: list[tuple[str, float, dict[str, str]]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/feed/{name}"

    def seen(self, name: str) -> list[dict[str, str]]:
        return [headers for path, _, headers in self.requests if path == name]

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests.append((name, time.monotonic(), dict(request.headers)))
        if name in self.status:
            return web.Response(status=self.status[name], text="unavailable")
        if name not in self.documents:
            return web.Response(status=404)
        validators = {}
        if name in self.etags:
            validators["ETag"] = self.etags[name]
            if request.headers.get("If-None-Match") == self.etags[name]:
                return web.Response(status=304, headers=validators)
        if name in self.last_modified:
            validators["Last-Modified"] = self.last_modified[name]
            if request.headers.get("If-Modified-Since") == self.last_modified[name]:
                return web.Response(status=304, headers=validators)
        return web.Response(body=self.documents[name], headers=validators)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/feed/{name}", self._serve)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


# --- the rig: broker, feeds, adapter, recipient ---------------------------------------------


@dataclass
class Rig:
    tmp: Path
    factory: BrokerFactory
    feeds: Feeds
    ingests: list[Ingest] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)

    @property
    def region(self) -> DemoRegion:
        return self.factory.region

    @property
    def data_dir(self) -> Path:
        return self.factory.data_dir

    def config(self, sources: str, *, rules: Path = RULES, name: str = "ingest.toml") -> Path:
        """An adapter config in the test's folder: the demo data folder for keys, authority
        key, policy and directory; this test's nats-server; the given sources."""
        folder = self.tmp / "adapter"
        folder.mkdir(exist_ok=True)
        (folder / "rules.toml").write_text(rules.read_text("utf-8"), "utf-8")
        path = folder / name
        path.write_text(
            f"""[adapter]
actor = "{ACTOR}"
demo_dir = "{self.data_dir}"
servers = ["{self.factory.server.url}"]
state_dir = "state"
rules = "rules.toml"
quarantine_dir = "quarantine"
http_port = 0

{sources}""",
            "utf-8",
        )
        return path

    async def start(self, config: Path, **options: Any) -> Ingest:
        options = {"rand": random.Random(7), "expiry_check_s": 0.2, **options}
        ingest = Ingest(load_config(config, ENV), **options)
        await asyncio.wait_for(ingest.start(), WAIT)
        self.ingests.append(ingest)
        return ingest

    async def stop(self, ingest: Ingest) -> None:
        await asyncio.wait_for(ingest.stop(), WAIT)
        self.ingests.remove(ingest)

    async def recipient(self, actor: str = "solna") -> Client:
        client = Client.connect(
            servers=[self.factory.server.url],
            actor=actor,
            keys=self.region.identities[actor],
            authority_key=self.region.authority.public,
            state_dir=self.tmp / "recipients" / actor,
            policy=self.data_dir / "policy.toml",
            connect_timeout=5.0,
        )
        await asyncio.wait_for(client.start(), WAIT)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for ingest in reversed(self.ingests):
            await asyncio.wait_for(ingest.stop(), WAIT)
        for client in reversed(self.clients):
            await asyncio.wait_for(client.close(), WAIT)


@pytest_asyncio.fixture
async def rig(
    tmp_path: Path, broker_factory: BrokerFactory, running_broker: Any
) -> AsyncIterator[Rig]:
    feeds = Feeds()
    await feeds.start()
    rig = Rig(tmp_path, broker_factory, feeds)
    try:
        yield rig
    finally:
        await rig.close()
        await feeds.stop()


def poll(name: str, fmt: str, url: str, **settings: Any) -> str:
    lines = [
        "[[source]]",
        f'name = "{name}"',
        f'format = "{fmt}"',
        'mode = "poll"',
        f'url = "{url}"',
    ]
    defaults = {"interval_s": 0.1, "timeout_s": 2, "max_backoff_s": 0.4}
    for key, value in {**defaults, **settings}.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n\n"


def now() -> datetime:
    return datetime.now(UTC)


# --- CAP: alert, update, cancel; dedupe across polls and restarts -------------------------


async def test_cap_alert_update_and_cancel_reference_the_earlier_envelopes(rig: Rig) -> None:
    solna = await rig.recipient()
    moment = now() - timedelta(minutes=1)  # the alert was sent a minute ago
    reference = "2026-03-14T09:12:00+01:00"
    rig.feeds.documents["vma"] = shifted("cap/vma-nacka-alert.xml", reference, moment)
    config = rig.config(poll("vma", "cap-xml", rig.feeds.url("vma")))
    ingest = await rig.start(config)

    [alert] = await receive(solna, 1)
    assert alert.sender == ACTOR
    assert alert.type is MessageType.ALERT
    assert alert.label.classification == "OFFENTLIG"
    assert alert.references == ()
    body = alert.json()
    assert (body["item_id"], body["msg_type"], body["source"]) == (
        "SRCAP20260314091200I",
        "alert",
        "vma",
    )
    assert "Nacka" in body["infos"][0]["headline"]

    # The poller keeps fetching the same document: duplicates, no second envelope.
    await wait_until(lambda: metric(ingest, DUPLICATES, source="vma") >= 2, "duplicates")
    assert metric(ingest, ACCEPTED, source="vma") == 1
    assert 0 <= metric(ingest, LAG, source="vma") < 600
    # ... not even after a restart: the state is on disk.
    await rig.stop(ingest)
    ingest = await rig.start(config)
    await wait_until(lambda: metric(ingest, DUPLICATES, source="vma") >= 2, "duplicates again")
    assert metric(ingest, ACCEPTED, source="vma") == 0
    assert await nothing_more(solna) == []

    rig.feeds.documents["vma"] = shifted("cap/vma-nacka-update.xml", reference, moment)
    [update] = await receive(solna, 1)
    assert update.json()["msg_type"] == "update"
    assert update.references == (ref(ReferenceKind.UPDATE, alert),)

    # The Cancel names both messages; it withdraws the newest envelope of the item.
    rig.feeds.documents["vma"] = shifted("cap/vma-nacka-cancel.xml", reference, moment)
    [cancel] = await receive(solna, 1)
    assert cancel.json()["msg_type"] == "cancel"
    assert cancel.references == (ref(ReferenceKind.CANCEL, update),)
    assert await nothing_more(solna) == []
    assert metric(ingest, ACCEPTED, source="vma") == 2


# --- Trafikverket: versions, Deleted, disappeared; conditional requests ---------------------


async def test_trafikverket_versions_become_updates_and_cancels(rig: Rig) -> None:
    solna = await rig.recipient()
    reference, moment = "2024-11-12T08:10:00+01:00", now()
    v1 = shifted("trafikverket/situations_v1.json", reference, moment)
    v2 = shifted("trafikverket/situations_v2.json", reference, moment)
    feeds = rig.feeds
    feeds.documents["trafik"], feeds.etags["trafik"] = v1, '"v1"'
    feeds.last_modified["trafik"] = "Tue, 12 Nov 2024 07:41:06 GMT"
    ingest = await rig.start(rig.config(poll("trafik", "trafikverket", feeds.url("trafik"))))

    first = {item(m): m for m in await receive(solna, 4)}
    assert set(first) == {
        "SE_STA_TRISSID_1_9100001",
        "SE_STA_TRISSID_2_9100002",
        "SE_STA_TRISSID_1_9100017",
        "SE_STA_TRISSID_1_9100040",
    }
    assert all(m.references == () and m.label.classification == "INTERN" for m in first.values())

    # Conditional requests: the validators go back, the server answers 304, nothing is sent.
    await wait_until(lambda: len(feeds.seen("trafik")) >= 4, "three more polls")
    later = feeds.seen("trafik")[1:]
    assert all(h.get("If-None-Match") == '"v1"' for h in later)
    assert all(h.get("If-Modified-Since") == feeds.last_modified["trafik"] for h in later)
    assert metric(ingest, DOCUMENTS, source="trafik") == 1
    assert metric(ingest, ACCEPTED, source="trafik") == 4
    assert metric(ingest, LAST_SUCCESS, source="trafik") > time.time() - 5
    assert await nothing_more(solna) == []

    # Version 2: the accident changed (an update), the roadworks were deleted (a cancel).
    feeds.documents["trafik"], feeds.etags["trafik"] = v2, '"v2"'
    del feeds.last_modified["trafik"]
    second = {item(m): m for m in await receive(solna, 2)}
    accident, roadworks = second["SE_STA_TRISSID_1_9100001"], second["SE_STA_TRISSID_1_9100017"]
    assert accident.json()["msg_type"] == "update"
    assert accident.references == (ref(ReferenceKind.UPDATE, first["SE_STA_TRISSID_1_9100001"]),)
    assert roadworks.json()["msg_type"] == "cancel"
    assert roadworks.references == (ref(ReferenceKind.CANCEL, first["SE_STA_TRISSID_1_9100017"]),)

    # A complete response without an open situation: it ended, and recipients hear so.
    response = json.loads(v2)
    del response["RESPONSE"]["RESULT"][1]  # the query that returned situation 9100040
    feeds.documents["trafik"], feeds.etags["trafik"] = json.dumps(response).encode(), '"v3"'
    [gone] = await receive(solna, 1)
    assert item(gone) == "SE_STA_TRISSID_1_9100040"
    assert gone.json()["msg_type"] == "cancel"
    assert gone.references == (ref(ReferenceKind.CANCEL, first["SE_STA_TRISSID_1_9100040"]),)
    assert metric(ingest, CANCELS, source="trafik", cause="disappeared") == 1
    assert await nothing_more(solna) == []


# --- DATEX II through a drop folder; expiry -----------------------------------------------------


def drop(folder: Path, name: str, data: bytes) -> Path:
    """Write a file the way a producer should (a hidden name, then a rename), aged past
    the settle time so the scan takes it at once."""
    hidden, path = folder / f".{name}", folder / name
    hidden.write_bytes(data)
    past = time.time() - 5
    os.utime(hidden, (past, past))
    hidden.rename(path)
    return path


async def test_datex_publication_from_a_drop_folder_and_expiry(rig: Rig) -> None:
    solna = await rig.recipient()
    folder = rig.tmp / "drop"
    folder.mkdir()
    config = rig.config(
        f'[[source]]\nname = "datex"\nformat = "datex2"\nmode = "files"\n'
        f'directory = "{folder}"\ninterval_s = 0.1\n'
    )
    ingest = await rig.start(config)
    # The accident's validity ends three seconds from now; the roadworks' in weeks.
    reference = "2024-11-12T09:30:00+01:00"
    publication = shifted(
        "datex/situation_publication.xml", reference, now() + timedelta(seconds=3)
    )
    drop(folder, "publication.xml", publication)

    got = {item(m): m for m in await receive(solna, 2)}
    assert set(got) == {"SE_STA_TRISSID_1_9100001_R1", "SE_STA_TRISSID_1_9100017_R1"}
    assert got["SE_STA_TRISSID_1_9100001_R1"].json()["event"] == "Accident"
    await wait_until(lambda: not (folder / "publication.xml").exists(), "the file is taken")
    assert [p.name.endswith("-publication.xml") for p in (folder / "done").iterdir()] == [True]
    # Its two cancels withdraw records nobody was told about: nothing to send.
    assert metric(ingest, ACCEPTED, source="datex") == 2

    # The accident expires: the adapter cancels it itself.
    [expired] = await receive(solna, 1, timeout=WAIT)
    assert item(expired) == "SE_STA_TRISSID_1_9100001_R1"
    assert expired.json()["msg_type"] == "cancel"
    assert expired.references == (ref(ReferenceKind.CANCEL, got["SE_STA_TRISSID_1_9100001_R1"]),)
    assert metric(ingest, CANCELS, source="datex", cause="expired") == 1

    # A file that is not DATEX at all goes to the quarantine, with its reason.
    drop(folder, "broken.xml", b"<payload xmlns='http://datex2.eu/schema/3/d2Payload'>")
    await wait_until(lambda: not (folder / "broken.xml").exists(), "the bad file is taken")
    [reason_file] = (rig.tmp / "adapter" / "quarantine").glob("*.reason.json")
    reason = json.loads(reason_file.read_text("utf-8"))
    assert (reason["source"], reason["code"], reason["scope"]) == (
        "datex",
        "malformed_xml",
        "document",
    )
    quarantined = reason_file.parent / reason["data_file"]
    assert quarantined.read_bytes().startswith(b"<payload")
    assert oct(quarantined.stat().st_mode & 0o777) == "0o600"
    assert len(list((folder / "done").iterdir())) == 1
    assert await nothing_more(solna) == []


# --- webhooks ---------------------------------------------------------------------------------


async def test_a_webhook_takes_signed_documents_only(rig: Rig) -> None:
    solna = await rig.recipient()
    config = rig.config(
        f'[[source]]\nname = "sos"\nformat = "cap-xml"\nmode = "webhook"\n'
        f'path = "/webhooks/sos"\nsecret_env = "{SECRET_ENV}"\n'
    )
    ingest = await rig.start(config)
    url = f"{ingest.url}/webhooks/sos"
    document = shifted("cap/sos-alarm-solna.xml", "2026-04-02T13:05:30+02:00", now())
    async with aiohttp.ClientSession() as http:
        # A wrong signature (the right one of other bytes) and none at all: 401, nothing sent.
        for headers in ({SIGNATURE_HEADER: signature(SECRET.encode(), b"other")}, {}):
            async with http.post(url, data=document, headers=headers) as response:
                assert response.status == 401
                assert (await response.json())["error"] == "bad_signature"
        assert metric(ingest, REFUSED, source="sos") == 2
        assert metric(ingest, DOCUMENTS, source="sos") == 0

        good = {SIGNATURE_HEADER: signature(SECRET.encode(), document)}
        async with http.post(url, data=document, headers=good) as response:
            assert response.status == 200
            assert (await response.json())["sent"] == 1
        [alert] = await receive(solna, 1)
        assert alert.json()["event"] == "Gasutsläpp"
        assert alert.status is Status.EXERCISE  # an exercise stays an exercise
        assert alert.label.classification == "INTERN"

        # The metrics and health endpoints are served beside the webhook.
        async with http.get(f"{ingest.url}/metrics") as response:
            text = await response.text()
        assert 'ssr_adapter_alerts_accepted_total{source="sos"} 1.0' in text
        assert 'ssr_adapter_webhook_refused_total{source="sos"} 2.0' in text
        assert "ssr_adapter_outbox_depth" in text
        async with http.get(f"{ingest.url}/healthz") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ok"
    assert await nothing_more(solna) == []


# --- malformed and hostile documents ---------------------------------------------------------


async def test_malformed_and_hostile_documents_are_quarantined_and_the_adapter_goes_on(
    rig: Rig,
) -> None:
    solna = await rig.recipient()
    feeds = rig.feeds
    ingest = await rig.start(rig.config(poll("vma", "cap-xml", feeds.url("vma"))))
    quarantine = rig.tmp / "adapter" / "quarantine"

    def reasons() -> list[dict[str, Any]]:
        files = sorted(quarantine.glob("*.reason.json"))
        return [json.loads(path.read_text("utf-8")) for path in files]

    bad = [
        (b"<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'><identifier>", "malformed_xml"),
        ((FEEDS / "cap/hostile-billion-laughs.xml").read_bytes(), "dtd_forbidden"),
        ((FEEDS / "cap/hostile-utf16.xml").read_bytes(), "encoding"),
        ((FEEDS / "cap/invalid-bad-msgtype.xml").read_bytes(), "invalid_value"),  # one item
    ]
    for count, (document, code) in enumerate(bad, start=1):
        feeds.documents["vma"] = document
        await wait_until(lambda n=count: len(reasons()) == n, f"{code} quarantined")
        assert reasons()[-1]["code"] == code
        # Served again and again, it is quarantined once.
        seen = len(feeds.seen("vma"))
        await wait_until(lambda s=seen: len(feeds.seen("vma")) >= s + 2, "two more polls")
        assert metric(ingest, QUARANTINED, source="vma", reason=code) == 1
    item_reason = reasons()[-1]
    assert item_reason["scope"] == "item"
    assert item_reason["item_id"] == "SRCAP20260314091200I"
    assert "msgType" in item_reason["detail"]
    hostile = next(r for r in reasons() if r["code"] == "dtd_forbidden")
    assert hostile["scope"] == "document"
    assert hostile["item_id"] is None
    assert (quarantine / hostile["data_file"]).read_bytes() == bad[1][0]
    assert metric(ingest, ACCEPTED, source="vma") == 0

    # The next good document goes through.
    reference = "2026-03-14T09:12:00+01:00"
    feeds.documents["vma"] = shifted("cap/vma-nacka-alert.xml", reference, now())
    [alert] = await receive(solna, 1)
    assert item(alert) == "SRCAP20260314091200I"
    assert metric(ingest, FETCH_ERRORS, source="vma", kind="http_status") == 0


# --- a source outage and its recovery ---------------------------------------------------------


async def test_a_source_outage_backs_off_never_stops_the_others_and_recovers(rig: Rig) -> None:
    solna = await rig.recipient()
    feeds, other = rig.feeds, Feeds()
    await other.start()
    try:
        feeds.status["vma"] = 503
        reference = "2024-11-12T08:10:00+01:00"
        config = rig.config(
            poll("vma", "cap-xml", feeds.url("vma"), interval_s=0.05, max_backoff_s=0.4)
            + poll("trafik", "trafikverket", other.url("trafik"), interval_s=0.1)
        )
        ingest = await rig.start(config)
        errors = lambda kind: metric(ingest, FETCH_ERRORS, source="vma", kind=kind)  # noqa: E731
        await wait_until(lambda: errors("http_status") >= 4, "503s")
        # Backing off: at most one try per 0.2 s now (without it, one per 0.05 s).
        before = errors("http_status")
        await asyncio.sleep(1.0)
        during = errors("http_status") - before
        assert 1 <= during <= 6, during
        gaps = [b[1] - a[1] for a, b in zip(feeds.requests, feeds.requests[1:], strict=False)]
        assert max(gaps) >= 0.15

        # The other source is not held up.
        other.documents["trafik"] = shifted("trafikverket/situations_v1.json", reference, now())
        assert len(await receive(solna, 4)) == 4

        # The server goes away entirely, then comes back with a document.
        port = feeds.port
        await feeds.stop()
        await wait_until(lambda: errors("connection") >= 2, "connection errors")
        del feeds.status["vma"]
        feeds.documents["vma"] = shifted(
            "cap/vma-nacka-alert.xml", "2026-03-14T09:12:00+01:00", now()
        )
        feeds.port = port
        await feeds.start()
        [alert] = await receive(solna, 1)
        assert item(alert) == "SRCAP20260314091200I"
        await wait_until(
            lambda: metric(ingest, LAST_SUCCESS, source="vma") > 0, "a success recorded"
        )
    finally:
        await other.stop()


# --- configuration checks -------------------------------------------------------------------


def test_backoff_doubles_with_jitter_and_is_bounded(
    tmp_path: Path, live_region: DemoRegion
) -> None:
    data = tmp_path / "data"
    write_data_dir(data, live_region)
    path = tmp_path / "ingest.toml"
    path.write_text(
        f'[adapter]\nactor = "{ACTOR}"\ndemo_dir = "{data}"\nservers = ["nats://127.0.0.1:1"]\n'
        + poll("vma", "cap-xml", "http://127.0.0.1:1/", interval_s=1, max_backoff_s=30),
        "utf-8",
    )
    ingest = Ingest(load_config(path, {}), rand=random.Random(1))
    source = ingest.config.source("vma")
    for failures, ceiling in ((1, 2), (2, 4), (3, 8), (4, 16), (5, 30), (40, 30)):
        delays = [ingest.backoff(source, failures) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (failures, delays)
        assert len(set(delays)) > 1  # jitter


async def test_check_through_the_cli_and_rules_stop_the_start(
    tmp_path: Path, live_region: DemoRegion, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    write_data_dir(data, live_region)
    (tmp_path / "rules.toml").write_text(RULES.read_text("utf-8"), "utf-8")
    good = tmp_path / "good.toml"
    adapter = (
        f'[adapter]\nactor = "{ACTOR}"\ndemo_dir = "{data}"\n'
        f'servers = ["nats://127.0.0.1:1"]\nstate_dir = "state"\n'
    )
    good.write_text(adapter + poll("vma", "cap-xml", "https://vmaapi.sr.se/api/v3/alerts"), "utf-8")
    assert await asyncio.to_thread(main, ["ingest", "--config", str(good), "--check"]) == 0
    out = capsys.readouterr().out
    assert "valid" in out
    assert "vma (cap-xml, poll)" in out
    assert "3 rule(s)" in out

    # A setting out of range: exit 2, the file, the line and the field named.
    bad = tmp_path / "bad.toml"
    bad.write_text(
        adapter + poll("vma", "cap-xml", "https://vmaapi.sr.se/api/v3/alerts", interval_s=-1),
        "utf-8",
    )
    assert await asyncio.to_thread(main, ["ingest", "--config", str(bad), "--check"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:" in err
    assert "source 'vma': interval_s" in err
    line = int(re.search(rf"{re.escape(str(bad))}:(\d+)", err).group(1))  # type: ignore[union-attr]
    assert bad.read_text("utf-8").splitlines()[line - 1].startswith("interval_s")

    # A webhook whose secret is not in the environment.
    hook = tmp_path / "hook.toml"
    hook.write_text(
        adapter + '[[source]]\nname = "sos"\nformat = "cap-xml"\nmode = "webhook"\n'
        'secret_env = "SSR_TEST_NOT_SET"\n',
        "utf-8",
    )
    assert await asyncio.to_thread(main, ["ingest", "--config", str(hook), "--check"]) == 2
    assert "$SSR_TEST_NOT_SET is not set" in capsys.readouterr().err

    # Rules naming a group the directory lacks: the check and the start both refuse them.
    (tmp_path / "rules.toml").write_text(
        (FEEDS / "ingest" / "rules-unknown-group.toml").read_text("utf-8"), "utf-8"
    )
    assert await asyncio.to_thread(main, ["ingest", "--config", str(good), "--check"]) == 2
    err = capsys.readouterr().err
    assert "rules.toml" in err
    assert "rule #1 'vma'" in err
    assert "kommunerna" in err
    ingest = Ingest(load_config(good, {}), connect_timeout=0.5)  # NATS is not there: offline
    with pytest.raises(RulesError, match="kommunerna"):
        await asyncio.wait_for(ingest.start(), WAIT)
    with contextlib.suppress(Exception):
        await ingest.stop()


def test_the_documented_example_config_and_rules_are_valid(
    tmp_path: Path, live_region: DemoRegion
) -> None:
    page = (Path(__file__).parents[1] / "docs" / "ingest.md").read_text("utf-8")
    blocks = re.findall(r"^```toml\n(.*?)^```$", page, re.DOTALL | re.MULTILINE)
    [config_text] = [b for b in blocks if b.startswith("# ingest.toml")]
    [rules_text] = [b for b in blocks if b.startswith("# rules.toml")]
    (tmp_path / "directory").mkdir()
    env = {"SSR_SOS_WEBHOOK_SECRET": SECRET, "TRAFIKVERKET_API_KEY": "key-from-the-environment"}
    config = parse_config(config_text, tmp_path / "ingest.toml", env)
    assert [s.name for s in config.sources] == ["vma", "sos", "trafikverket", "datex"]
    trafikverket = config.source("trafikverket")
    assert b'authenticationkey="key-from-the-environment"' in trafikverket.body
    assert trafikverket.complete
    assert config.source("sos").secret == SECRET.encode()
    assert "key-from-the-environment" not in repr(config)
    assert SECRET not in repr(config)
    policy = load_policy((Path(__file__).parents[1] / "deploy" / "policy.toml").read_text())
    rules = RuleSet.load(rules_text, directory=live_region.directory, policy=policy)
    assert [r.name for r in rules.rules] == ["vma", "sos-solna", "trafik"]
