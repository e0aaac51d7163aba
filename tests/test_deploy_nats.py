"""``ssr deploy nats-config`` against a real nats-server: the configs are accepted, an actor's
credentials are enough for its client, and every attempt on another actor's subjects, its
consumer or the KV buckets is refused by the server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient

from broker import deploy, subjects
from broker.config import BrokerConfig
from broker.core import (
    Control,
    IncidentEntry,
    Label,
    MessageType,
    RecipientKey,
    Tlp,
    build_envelope,
    read_envelope,
)
from broker.demo import DemoRegion
from broker.embedded import nats_server_binary
from broker.service import Service
from clients import Client
from clients.cli import main
from clients.cli_deploy import check_config

from . import service_helpers
from .service_helpers import SERVICE_DEFAULTS, WAIT, write_data_dir

live_region = service_helpers.live_region

REFUSAL_WAIT = 1.0  # seconds for the server's -ERR or a refused request
OPENSSL = shutil.which("openssl")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def data_dir(tmp_path: Path, live_region: DemoRegion) -> Path:
    folder = tmp_path / "data"
    write_data_dir(folder, live_region)
    return folder


def _deploy(*args: str) -> int:
    return main(["deploy", "nats-config", *args])


# --- the configs ------------------------------------------------------------------------


def test_single_and_cluster_configs_pass_nats_server_check(data_dir: Path, tmp_path: Path) -> None:
    store = str(tmp_path / "js")
    assert (
        _deploy("--dir", str(data_dir), "--out", str(tmp_path / "one"), "--store-dir", store) == 0
    )
    out3 = tmp_path / "three"
    args = ["--dir", str(data_dir), "--out", str(out3), "--cluster", "3", "--store-dir", store]
    assert _deploy(*args) == 0

    written = [tmp_path / "one" / "nats.conf", *(out3 / f"node-{i}.conf" for i in (1, 2, 3))]
    for config in written:
        assert check_config(config) == (True, check_config(config)[1])
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        text = config.read_text()
        assert "sync_interval: always" in text
        assert '"127.0.0.1:' in text  # loopback by default
    for node in (1, 2, 3):
        text = (out3 / f"node-{node}.conf").read_text()
        assert "cluster {" in text
        assert f'server_name: "ssr-nats-{node}"' in text
        assert text.count("nats-route://") == 2
        assert f"{store}/node-{node}" in text
    creds = sorted((out3 / "creds").iterdir())
    assert {p.stem for p in creds} >= {"nacka", "solna", deploy.BROKER_USER}
    for path in creds:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len((out3 / "creds" / "nacka.url").read_text().split()) == 3
    # Passwords are random and not shared between users or runs.
    one = (tmp_path / "one" / "creds" / "nacka.url").read_text()
    assert one.split("@")[0] != (out3 / "creds" / "nacka.url").read_text().split("@")[0]


def test_tls_config_passes_nats_server_check(data_dir: Path, tmp_path: Path) -> None:
    assert OPENSSL is not None, "openssl is needed to make TLS test files (Debian: openssl)"
    key, cert = tmp_path / "server.key", tmp_path / "server.pem"
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=localhost"],
        check=True, capture_output=True, timeout=20,
    )  # fmt: skip
    for cluster in ("1", "3"):
        out = tmp_path / f"tls-{cluster}"
        code = _deploy(
            "--dir", str(data_dir), "--out", str(out), "--cluster", cluster,
            "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(cert),
            "--store-dir", str(tmp_path / "js"),
        )  # fmt: skip
        assert code == 0
        for config in out.glob("*.conf"):
            text = config.read_text()
            assert "verify: true" in text
            assert str(cert) in text
            assert check_config(config)[0]
        assert (out / "creds" / "nacka.url").read_text().startswith("tls://nacka:")


def test_a_config_the_server_refuses_exits_1(data_dir: Path, tmp_path: Path) -> None:
    # TLS files that do not exist: the files are written, nats-server -t refuses them.
    code = _deploy(
        "--dir", str(data_dir), "--out", str(tmp_path / "out"),
        "--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(tmp_path / "none.key"),
    )  # fmt: skip
    assert code == 1


def test_checked_in_examples_pass_nats_server_check() -> None:
    examples = Path(__file__).resolve().parent.parent / "deploy" / "nats"
    configs = sorted(examples.glob("*.conf"))
    assert [c.name for c in configs] == ["nats.conf", "node-1.conf", "node-2.conf", "node-3.conf"]
    for config in configs:
        assert "CHANGE-ME-" in config.read_text()
        accepted, said = check_config(config)
        assert accepted, said


def test_actor_permissions_name_no_other_actor(live_region: DemoRegion) -> None:
    users = deploy.nats_users(live_region.directory, deploy.placeholder_password)
    actors = [u for u in users if u.name != deploy.BROKER_USER]
    assert len(actors) == len(live_region.identities)
    for user in actors:
        others = [a for a in live_region.identities if a != user.name]
        foreign = {*others, *(f"ssr-client-{o}" for o in others)}
        for subject in (*user.permissions.publish, *user.permissions.subscribe):
            assert not subject.startswith("$KV"), subject  # never a KV write
            assert foreign.isdisjoint(subject.split(".")), subject
            assert not subject.startswith(("ssr.>", "ssr.*", ">", "$JS.API.>")), subject


# --- hostile CLI input ----------------------------------------------------------------------


def test_cli_refuses_hostile_input(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _deploy("--dir", str(tmp_path / "missing"), "--out", str(out)) == 2
    assert _deploy("--dir", str(tmp_path), "--out", str(out)) == 2  # no *.dir files
    wrong = "11" * 32
    assert _deploy("--dir", str(data_dir), "--authority-key", wrong, "--out", str(out)) == 1
    assert _deploy("--dir", str(data_dir), "--authority-key", "zz", "--out", str(out)) == 2
    assert not out.exists()  # nothing written on any failure
    out.mkdir()
    assert _deploy("--dir", str(data_dir), "--out", str(out)) == 2
    assert list(out.iterdir()) == []
    assert _deploy("--dir", str(data_dir), "--out", str(tmp_path / "o2"), "--port", "0") == 2
    assert "exists" in capsys.readouterr().err


# --- a real server from the generated config ----------------------------------------------


class Server:
    def __init__(self, config: Path, monitor_port: int) -> None:
        self.config = config
        self.monitor_port = monitor_port
        self.log = config.with_suffix(".log")
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Server:
        with self.log.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(nats_server_binary()), "-c", str(self.config),
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        deadline = time.monotonic() + WAIT
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as response:
                        if response.status == 200:
                            return self
                assert self.proc.returncode is None, self.log.read_text()
                assert time.monotonic() < deadline, "nats-server did not become healthy"
                await asyncio.sleep(0.02)

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()  # our own child, by its own pid
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest_asyncio.fixture
async def secured(tmp_path: Path, data_dir: Path, live_region: DemoRegion) -> AsyncIterator[Any]:
    """nats-server from the generated single-node config, with the broker on its own user."""
    users = deploy.nats_users(live_region.directory)
    options = deploy.DeployOptions(
        port=_free_port(), monitor_port=_free_port(), store_dir=str(tmp_path / "js")
    )
    config = tmp_path / "nats.conf"
    config.write_text(deploy.render_single(users, options))
    urls = {u.name: deploy.client_urls(u, options)[0] for u in users}
    async with Server(config, options.monitor_port) as server:
        broker = Service(
            BrokerConfig(
                data_dir=data_dir, nats_urls=(urls[deploy.BROKER_USER],), **SERVICE_DEFAULTS
            )
        )
        await asyncio.wait_for(broker.start(), WAIT)
        try:
            yield urls, server, data_dir
        finally:
            await asyncio.wait_for(broker.stop(), WAIT + 5)


async def test_actor_credentials_suffice_and_cross_actor_access_is_refused(
    secured: Any, tmp_path: Path, live_region: DemoRegion
) -> None:
    urls, server, data = secured

    def client(actor: str) -> Client:
        return Client.connect(
            servers=[urls[actor]],
            actor=actor,
            keys=live_region.identities[actor],
            authority_key=live_region.authority.public,
            state_dir=tmp_path / actor,
            policy=data / "policy.toml",
            connect_timeout=5.0,
        )

    # Sufficient: nacka sends to solna, each on its own user.
    async with client("nacka") as nacka, client("solna") as solna:
        handle = await nacka.send(to=["solna"], payload="hej", label="INTERN", tlp="GREEN")
        await handle.accepted(WAIT)
        async with asyncio.timeout(WAIT):
            async for message in solna.messages():
                assert (message.sender, message.text) == ("nacka", "hej")
                break
        assert set(await handle.delivered(WAIT)) == {"solna"}
    assert "Violation" not in server.log.read_text()

    # Refused: everything nacka tries on solna's subjects, consumer and the buckets.
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    nc = await nats.connect(urls["nacka"], error_cb=on_error, connect_timeout=2)
    try:
        outcomes = await _cross_actor_attempts(nc, errors)
    finally:
        await nc.close()
    refused = [name for name, ok in outcomes.items() if ok]
    assert refused == list(outcomes), {n: ok for n, ok in outcomes.items() if not ok}
    assert len(refused) / len(outcomes) == 1.0
    assert len(outcomes) >= 15
    log = server.log.read_text()
    assert "Publish Violation" in log
    assert "Subscription Violation" in log


async def _cross_actor_attempts(nc: NatsClient, errors: list[str]) -> dict[str, bool]:
    """Each attempt → True if the server refused it (a permissions violation for it)."""
    js = nc.jetstream(timeout=REFUSAL_WAIT)
    outcomes: dict[str, bool] = {}

    async def refused_publish(name: str, subject: str, op: Callable[[], Awaitable[Any]]) -> None:
        before = len(errors)
        try:
            await op()
            answered = True
        except Exception:  # any failure is a refusal; the -ERR decides below
            answered = False
        await asyncio.sleep(0.05)
        violation = any(
            "permissions violation" in e and subject.lower() in e for e in errors[before:]
        )
        outcomes[name] = violation and not answered

    def request(subject: str, body: dict[str, Any] | None = None) -> Callable[[], Awaitable[Any]]:
        payload = json.dumps(body or {}).encode()
        return lambda: nc.request(subject, payload, timeout=REFUSAL_WAIT)

    solna_consumer = {
        "stream_name": "SSR_DELIVER",
        "config": {"durable_name": "ssr-client-nacka", "filter_subject": "ssr.deliver.solna",
                   "ack_policy": "explicit"},
    }  # fmt: skip
    api = "$JS.API"
    attempts: list[tuple[str, str, Callable[[], Awaitable[Any]]]] = [
        ("publish to solna's submit", "ssr.submit.solna",
         lambda: js.publish("ssr.submit.solna", b"x", timeout=REFUSAL_WAIT)),
        ("publish to solna's deliver", "ssr.deliver.solna",
         lambda: js.publish("ssr.deliver.solna", b"x", timeout=REFUSAL_WAIT)),
        ("publish to an audit subject", "ssr.audit.forged",
         lambda: js.publish("ssr.audit.forged", b"x", timeout=REFUSAL_WAIT)),
        ("create a consumer on solna's deliveries",
         f"{api}.CONSUMER.CREATE.SSR_DELIVER.x.ssr.deliver.solna",
         request(f"{api}.CONSUMER.CREATE.SSR_DELIVER.x.ssr.deliver.solna", solna_consumer)),
        ("re-point its own durable (legacy create)",
         f"{api}.CONSUMER.DURABLE.CREATE.SSR_DELIVER.ssr-client-nacka",
         request(f"{api}.CONSUMER.DURABLE.CREATE.SSR_DELIVER.ssr-client-nacka", solna_consumer)),
        ("create an unfiltered ephemeral consumer", f"{api}.CONSUMER.CREATE.SSR_DELIVER",
         request(f"{api}.CONSUMER.CREATE.SSR_DELIVER", {"stream_name": "SSR_DELIVER"})),
        ("bind solna's consumer", f"{api}.CONSUMER.INFO.SSR_DELIVER.ssr-client-solna",
         lambda: js.pull_subscribe("ssr.deliver.solna", durable="ssr-client-solna",
                                   stream="SSR_DELIVER")),
        ("fetch from solna's consumer", f"{api}.CONSUMER.MSG.NEXT.SSR_DELIVER.ssr-client-solna",
         request(f"{api}.CONSUMER.MSG.NEXT.SSR_DELIVER.ssr-client-solna", {"batch": 1})),
        ("ack on solna's consumer", "$JS.ACK.SSR_DELIVER.ssr-client-solna.1.1.1.1.0",
         request("$JS.ACK.SSR_DELIVER.ssr-client-solna.1.1.1.1.0")),
        ("delete solna's consumer", f"{api}.CONSUMER.DELETE.SSR_DELIVER.ssr-client-solna",
         request(f"{api}.CONSUMER.DELETE.SSR_DELIVER.ssr-client-solna")),
        ("read the deliver stream", f"{api}.STREAM.MSG.GET.SSR_DELIVER",
         request(f"{api}.STREAM.MSG.GET.SSR_DELIVER", {"last_by_subj": "ssr.deliver.solna"})),
        ("purge the deliver stream", f"{api}.STREAM.PURGE.SSR_DELIVER",
         request(f"{api}.STREAM.PURGE.SSR_DELIVER")),
        ("delete the audit stream", f"{api}.STREAM.DELETE.SSR_AUDIT",
         request(f"{api}.STREAM.DELETE.SSR_AUDIT")),
        ("put the mode", "$KV.ssr_state.mode",
         lambda: js.publish("$KV.ssr_state.mode", b"normal", timeout=REFUSAL_WAIT)),
        ("write a directory version", "$KV.ssr_directory.current",
         lambda: js.publish("$KV.ssr_directory.current", b"x", timeout=REFUSAL_WAIT)),
        ("write a message state", "$KV.ssr_messages.x",
         lambda: js.publish("$KV.ssr_messages.x", b"x", timeout=REFUSAL_WAIT)),
        ("purge a bucket", f"{api}.STREAM.PURGE.KV_ssr_state",
         request(f"{api}.STREAM.PURGE.KV_ssr_state")),
        ("delete a bucket", f"{api}.STREAM.DELETE.KV_ssr_directory",
         request(f"{api}.STREAM.DELETE.KV_ssr_directory")),
        ("create a stream", f"{api}.STREAM.CREATE.EVIL",
         request(f"{api}.STREAM.CREATE.EVIL", {"name": "EVIL", "subjects": ["ssr.deliver.*"]})),
    ]  # fmt: skip
    for name, subject, op in attempts:
        await refused_publish(name, subject, op)

    for name, subject in (
        ("subscribe to solna's deliveries", "ssr.deliver.solna"),
        ("subscribe to all deliveries", "ssr.deliver.*"),
        ("subscribe to all submissions", "ssr.submit.>"),
        ("subscribe to everything", ">"),
        ("subscribe to KV updates", "$KV.>"),
        ("subscribe to solna's inbox", "_INBOX_solna.>"),
        ("subscribe to every inbox", "_INBOX.>"),
    ):
        before = len(errors)
        sub = await nc.subscribe(subject)
        await nc.flush(timeout=REFUSAL_WAIT)
        await asyncio.sleep(0.05)
        outcomes[name] = any(
            "permissions violation" in e and subject.lower() in e for e in errors[before:]
        )
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return outcomes


async def test_an_actor_lists_an_incident_index_with_its_own_credentials(
    secured: Any, live_region: DemoRegion
) -> None:
    """The incident index lives in KV ``ssr_index``; an actor's NATS user reads it with a
    server-side filter (an ordered consumer on ``<incident>.>``), never writes it."""
    urls, server, _ = secured
    now = time.time_ns() // 1_000_000
    activation = build_envelope(
        sender=live_region.identities["stockholm"],
        recipients=[RecipientKey.of(live_region.directory.actor("nacka"), now)],  # type: ignore[arg-type]
        label=Label(policy="ssr", classification="INTERN", tlp=Tlp.GREEN),
        message_type=MessageType.ACTIVATION,
        payload=b"{}",
        created=now,
        expires=now + 3_600_000,
        incident="storm-index",
        control=Control(incident_type="storm"),
    )
    message_id = read_envelope(activation, live_region.directory).header.id
    stockholm = await nats.connect(urls["stockholm"], inbox_prefix="_INBOX_stockholm")
    nacka = await nats.connect(urls["nacka"], inbox_prefix="_INBOX_nacka")
    try:
        await stockholm.jetstream().publish(subjects.submit_subject("stockholm"), activation)
        kv = await nacka.jetstream().key_value(subjects.INDEX_BUCKET)
        deadline = time.monotonic() + WAIT
        keys: list[str] = []
        while not keys and time.monotonic() < deadline:
            watcher = await kv.watch(
                subjects.index_prefix("storm-index") + ">", ignore_deletes=True, meta_only=True
            )
            async with asyncio.timeout(WAIT):
                async for entry in watcher:
                    if entry is None:
                        break
                    keys.append(entry.key)
            await watcher.stop()
            if not keys:
                await asyncio.sleep(0.05)
        assert keys == [subjects.index_key("storm-index", message_id)]
        entry = await kv.get(keys[0])
        assert entry.value is not None
        assert IncidentEntry.parse(entry.value, max_bytes=65536).sender == "stockholm"
    finally:
        await stockholm.close()
        await nacka.close()
    assert "Violation" not in server.log.read_text()
