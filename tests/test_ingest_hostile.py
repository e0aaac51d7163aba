"""Hostile input to ``ssr ingest`` beyond the documents themselves.

- malformed configuration files: one :class:`IngestConfigError` naming the file, the
  line and the field, never a traceback;
- webhooks: a body over the bound is 413, a missing, wrong or oversized signature 401,
  and neither is read or sent;
- pollers: an answer over the bound is refused (a ``too_large`` fetch error), nothing is
  sent and the source goes on;
- drop folders: a symbolic link and a FIFO are skipped with one log line, never followed
  or read, and never hold up the scan.

The runtime tests start the adapter offline (its NATS is not there): a sent alert is one
queued in the client's outbox, so "nothing sent" is an empty outbox. Each ends with a good
document that is sent, so the checks of nothing sent can fail.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import random
import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from broker.demo import DemoRegion
from clients.adapters import service
from clients.adapters.config import (
    MAX_CONFIG_BYTES,
    IngestConfigError,
    load_config,
    parse_config,
)
from clients.adapters.model import MAX_DOCUMENT_BYTES
from clients.adapters.service import SIGNATURE_HEADER, Ingest, signature
from clients.cli import main

from . import service_helpers
from .service_helpers import WAIT, wait_until, write_data_dir
from .test_ingest import RULES, SECRET, SECRET_ENV, shifted

live_region = service_helpers.live_region

ENV = {SECRET_ENV: SECRET}
SOS_SAMPLE = "cap/sos-alarm-solna.xml"
SOS_REFERENCE = "2026-04-02T13:05:30+02:00"

DOCUMENTS = "ssr_adapter_documents_fetched_total"
ACCEPTED = "ssr_adapter_alerts_accepted_total"
QUARANTINED = "ssr_adapter_items_quarantined_total"
FETCH_ERRORS = "ssr_adapter_fetch_errors_total"
REFUSED = "ssr_adapter_webhook_refused_total"


# == the configuration file ============================================================

HEX_KEY = "ab" * 32
BASE = f"""[adapter]
actor = "sos-alarm"
keys = "keys/sos-alarm.key"
authority_key = "{HEX_KEY}"
servers = ["nats://127.0.0.1:4222"]
state_dir = "state"

[[source]]
name = "vma"
format = "cap-xml"
mode = "poll"
url = "https://example.org/vma.xml"
interval_s = 60
"""
WEBHOOK = """
[[source]]
name = "sos"
format = "cap-xml"
mode = "webhook"
secret_env = "{env}"
"""
FILES = """
[[source]]
name = "drop"
format = "datex2"
mode = "files"
directory = "drop"
"""

# id: (edit of BASE as (old, new), the field, a fragment of the message, the line's start)
CONFIG_CASES: dict[str, tuple[tuple[str, str], str | None, str, str | None]] = {
    "not-toml": (("interval_s = 60", "interval_s = = 60"), None, "not valid TOML", None),
    "unterminated-string": (
        ('url = "https://example.org/vma.xml"', 'url = "https://example.org/vma.xml'),
        None,
        "not valid TOML",
        None,
    ),
    "unknown-table": (("[adapter]", "[adaptor]"), "adaptor", "unknown table 'adaptor'", None),
    "unknown-adapter-key": (
        ('state_dir = "state"', 'state_dir = "state"\nacter = "x"'),
        "acter",
        "is not a known setting here",
        "acter",
    ),
    "unknown-source-key": (
        ("interval_s = 60", "intervall_s = 60"),
        "intervall_s",
        "is not a known setting here",
        "intervall_s",
    ),
    "webhook-key-in-a-poll-source": (
        ("interval_s = 60", 'interval_s = 60\npath = "/webhooks/vma"'),
        "path",
        "is not a known setting here",
        "path",
    ),
    "actor-not-a-string": (('actor = "sos-alarm"', "actor = 7"), "actor", "non-empty", "actor"),
    "actor-not-an-id": (
        ('actor = "sos-alarm"', 'actor = "SOS Alarm"'),
        "actor",
        "must be an actor id",
        "actor",
    ),
    "port-a-string": (
        ('state_dir = "state"', 'state_dir = "state"\nhttp_port = "8471"'),
        "http_port",
        "port number",
        "http_port",
    ),
    "port-out-of-range": (
        ('state_dir = "state"', 'state_dir = "state"\nhttp_port = 70000'),
        "http_port",
        "port number",
        "http_port",
    ),
    "servers-a-number": (
        ('servers = ["nats://127.0.0.1:4222"]', "servers = 5"),
        "servers",
        "list of NATS URLs",
        "servers",
    ),
    "servers-not-nats": (
        ('servers = ["nats://127.0.0.1:4222"]', 'servers = ["http://127.0.0.1:4222"]'),
        "servers",
        "is not a NATS URL",
        "servers",
    ),
    "interval-a-string": (
        ("interval_s = 60", 'interval_s = "60"'),
        "interval_s",
        "number of seconds",
        "interval_s",
    ),
    "interval-a-boolean": (
        ("interval_s = 60", "interval_s = true"),
        "interval_s",
        "number of seconds",
        "interval_s",
    ),
    "interval-zero": (
        ("interval_s = 60", "interval_s = 0"),
        "interval_s",
        "from 0.05",
        "interval_s",
    ),
    "interval-negative": (
        ("interval_s = 60", "interval_s = -1"),
        "interval_s",
        "from 0.05",
        "interval_s",
    ),
    "interval-nan": (
        ("interval_s = 60", "interval_s = nan"),
        "interval_s",
        "from 0.05",
        "interval_s",
    ),
    "interval-inf": (
        ("interval_s = 60", "interval_s = inf"),
        "interval_s",
        "from 0.05",
        "interval_s",
    ),
    "interval-too-long": (
        ("interval_s = 60", "interval_s = 86401"),
        "interval_s",
        "to 86400",
        "interval_s",
    ),
    "timeout-too-long": (
        ("interval_s = 60", "interval_s = 60\ntimeout_s = 601"),
        "timeout_s",
        "to 600",
        "timeout_s",
    ),
    "backoff-below-interval": (
        ("interval_s = 60", "interval_s = 60\nmax_backoff_s = 30"),
        "max_backoff_s",
        "at least interval_s",
        "max_backoff_s",
    ),
    "complete-a-string": (
        ("interval_s = 60", 'interval_s = 60\ncomplete = "yes"'),
        "complete",
        "true or false",
        "complete",
    ),
    "headers-a-string": (
        ("interval_s = 60", 'interval_s = 60\nheaders = "Accept: text/xml"'),
        "headers",
        "must be a table",
        "headers",
    ),
    "header-with-a-newline": (
        ("interval_s = 60", 'interval_s = 60\nheaders = { X-Key = "a\\nb" }'),
        "headers",
        "one line of text",
        "headers",
    ),
    "header-unset-variable": (
        ("interval_s = 60", 'interval_s = 60\nheaders = { Authorization = "Bearer ${NOT_SET}" }'),
        "headers",
        "${NOT_SET}, which is not set",
        "headers",
    ),
    "header-set-by-the-adapter": (
        ("interval_s = 60", 'interval_s = 60\nheaders = { Host = "evil.example" }'),
        "headers",
        "set by the adapter itself",
        "headers",
    ),
    "url-missing": (
        ('url = "https://example.org/vma.xml"', ""),
        "url",
        "http:// or https://",
        "[[source]]",
    ),
    "url-ftp": (
        ('url = "https://example.org/vma.xml"', 'url = "ftp://example.org/vma.xml"'),
        "url",
        "http:// or https://",
        "url",
    ),
    "url-without-host": (
        ('url = "https://example.org/vma.xml"', 'url = "https://"'),
        "url",
        "http:// or https://",
        "url",
    ),
    "url-javascript": (
        ('url = "https://example.org/vma.xml"', 'url = "javascript:alert(1)"'),
        "url",
        "http:// or https://",
        "url",
    ),
    "url-control-character": (
        ('url = "https://example.org/vma.xml"', 'url = "https://example.org/\\u0000"'),
        "url",
        "control characters",
        "url",
    ),
    "url-too-long": (
        ('url = "https://example.org/vma.xml"', f'url = "https://example.org/{"a" * 3000}"'),
        "url",
        "too long",
        "url",
    ),
    "actor-missing": (('actor = "sos-alarm"\n', ""), "actor", "is required", "[adapter]"),
    "keys-missing": (('keys = "keys/sos-alarm.key"\n', ""), "keys", "is required", "[adapter]"),
    "no-adapter-table": (
        (BASE[: BASE.index("[[source]]")], ""),
        "adapter",
        "no [adapter] table",
        None,
    ),
    "no-source": ((BASE[BASE.index("[[source]]") :], ""), "source", "no [[source]]", None),
    "source-not-a-table": (
        (BASE, 'source = "vma"\n' + BASE[: BASE.index("[[source]]")]),
        "source",
        "must be [[source]] tables",
        None,
    ),
    "name-not-a-slug": (('name = "vma"', 'name = "VMA!"'), "name", "short slug", "name"),
    "unknown-format": (
        ('format = "cap-xml"', 'format = "rss"'),
        "format",
        "must be one of",
        "format",
    ),
    "unknown-mode": (('mode = "poll"', 'mode = "push"'), "mode", "must be one of", "mode"),
    "webhook-without-secret": (
        ("interval_s = 60\n", "interval_s = 60\n" + WEBHOOK.replace('secret_env = "{env}"\n', "")),
        "secret_env",
        "environment variable",
        "[[source]]",
    ),
    "webhook-secret-not-set": (
        ("interval_s = 60\n", "interval_s = 60\n" + WEBHOOK.format(env="SSR_TEST_UNSET")),
        "secret_env",
        "$SSR_TEST_UNSET is not set",
        "secret_env",
    ),
    "webhook-secret-too-short": (
        ("interval_s = 60\n", "interval_s = 60\n" + WEBHOOK.format(env="SHORT")),
        "secret_env",
        "fewer than 16 bytes",
        "secret_env",
    ),
    "webhook-on-metrics": (
        (
            "interval_s = 60\n",
            "interval_s = 60\n" + WEBHOOK.format(env=SECRET_ENV) + 'path = "/metrics"\n',
        ),
        "path",
        "URL path",
        "path",
    ),
    "files-without-directory": (
        ("interval_s = 60\n", "interval_s = 60\n" + FILES.replace('directory = "drop"\n', "")),
        "directory",
        "is required",
        "[[source]]",
    ),
    "two-sources-one-name": (
        ("interval_s = 60\n", "interval_s = 60\n" + BASE[BASE.index("[[source]]") :]),
        "name",
        "two sources share the name 'vma'",
        None,
    ),
    "too-many-sources": (
        (
            BASE[BASE.index("[[source]]") :],
            "".join(
                BASE[BASE.index("[[source]]") :].replace('"vma"', f'"vma-{i}"') for i in range(65)
            ),
        ),
        "source",
        "at most 64 sources",
        None,
    ),
    "nested-too-deeply": (
        ("interval_s = 60", "interval_s = 60\nx = " + "[" * 5000),
        None,
        "",
        None,
    ),
    "a-number-too-long": (
        ("interval_s = 60", "interval_s = 60\nx = " + "9" * 5000),
        None,
        "",
        None,
    ),
}


def _refusal(text: str, path: Path) -> IngestConfigError:
    with pytest.raises(IngestConfigError) as caught:
        parse_config(text, path, {**ENV, "SHORT": "too-short"})
    return caught.value


def test_the_base_configuration_is_valid(tmp_path: Path) -> None:
    config = parse_config(BASE, tmp_path / "ingest.toml", ENV)
    assert [s.name for s in config.sources] == ["vma"]
    for extra in (WEBHOOK.format(env=SECRET_ENV), FILES):
        assert len(parse_config(BASE + extra, tmp_path / "ingest.toml", ENV).sources) == 2


@pytest.mark.parametrize("case", CONFIG_CASES, ids=list(CONFIG_CASES))
def test_a_malformed_configuration_is_one_error_naming_the_field_and_line(
    case: str, tmp_path: Path
) -> None:
    (old, new), field_name, fragment, line_start = CONFIG_CASES[case]
    assert old in BASE, "the case edits BASE"
    text = BASE.replace(old, new, 1)
    path = tmp_path / "ingest.toml"
    error = _refusal(text, path)
    message = str(error)
    assert message.startswith(f"{path}"), message
    assert fragment in message, message
    assert error.field == field_name, message
    assert "Traceback" not in message
    assert len(message) < 1000
    if line_start is not None:
        assert error.line is not None, message
        assert f"{path}:{error.line}: " in message
        assert text.splitlines()[error.line - 1].lstrip().startswith(line_start), message
    if case == "not-toml":  # tomllib's own position, on the line edited
        assert "line 13" in message
        assert text.splitlines()[12] == "interval_s = = 60"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (BASE.encode() + b"#" * (MAX_CONFIG_BYTES + 1), f"larger than {MAX_CONFIG_BYTES} bytes"),
        (BASE.replace("vma.xml", "v\xe5").encode("latin-1"), "not UTF-8 text"),
        (b"\xff\xfe" + BASE.encode("utf-16-le"), "not UTF-8 text"),
        (None, "No such file or directory"),
        ("folder", "Is a directory"),
    ],
    ids=["oversized", "latin-1", "utf-16", "missing", "a-folder"],
)
def test_an_unreadable_configuration_file_is_one_error(
    content: bytes | str | None, fragment: str, tmp_path: Path
) -> None:
    path = tmp_path / "ingest.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "folder":
        path.mkdir()
    started = time.monotonic()
    with pytest.raises(IngestConfigError) as caught:
        load_config(path, ENV)
    assert str(caught.value).startswith(f"{path}: ")
    assert fragment in str(caught.value)
    assert time.monotonic() - started < 2  # an oversized file is not read to its end


@pytest.mark.parametrize("case", ["not-toml", "interval-nan", "url-ftp", "nested-too-deeply"])
def test_the_check_command_reports_a_bad_configuration_without_a_traceback(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (old, new), _, fragment, _ = CONFIG_CASES[case]
    path = tmp_path / "ingest.toml"
    path.write_text(BASE.replace(old, new, 1), "utf-8")
    assert main(["ingest", "--config", str(path), "--check"]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert str(path) in captured.err
    assert fragment in captured.err


# == the runtime, offline ==============================================================


@dataclass
class Offline:
    """An adapter whose NATS is not there: what it sends waits in its outbox."""

    tmp: Path
    data: Path
    ingests: list[Ingest] = field(default_factory=list)

    async def start(self, sources: str) -> Ingest:
        folder = self.tmp / "adapter"
        folder.mkdir(exist_ok=True)
        (folder / "rules.toml").write_text(RULES.read_text("utf-8"), "utf-8")
        path = folder / "ingest.toml"
        path.write_text(
            f'[adapter]\nactor = "sos-alarm"\ndemo_dir = "{self.data}"\n'
            'servers = ["nats://127.0.0.1:1"]\nstate_dir = "state"\nrules = "rules.toml"\n'
            f'quarantine_dir = "quarantine"\nhttp_port = 0\n\n{sources}',
            "utf-8",
        )
        ingest = Ingest(load_config(path, ENV), rand=random.Random(7), connect_timeout=0.3)
        await asyncio.wait_for(ingest.start(), WAIT)
        self.ingests.append(ingest)
        return ingest

    @property
    def quarantine(self) -> Path:
        return self.tmp / "adapter" / "quarantine"


@pytest_asyncio.fixture
async def offline(tmp_path: Path, live_region: DemoRegion) -> AsyncIterator[Offline]:
    data = tmp_path / "data"
    write_data_dir(data, live_region)
    rig = Offline(tmp_path, data)
    try:
        yield rig
    finally:
        for ingest in rig.ingests:
            await asyncio.wait_for(ingest.stop(), WAIT)


def metric(ingest: Ingest, name: str, **labels: str) -> float:
    value = ingest.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def sent(ingest: Ingest, source: str) -> tuple[float, int]:
    """Alerts counted as sent, and envelopes waiting in the outbox."""
    return metric(ingest, ACCEPTED, source=source), ingest.client.outbox_depth


def sos_document() -> bytes:
    return shifted(SOS_SAMPLE, SOS_REFERENCE, datetime.now(UTC))


# -- webhooks -----------------------------------------------------------------------------

WEBHOOK_SOURCE = (
    f'[[source]]\nname = "sos"\nformat = "cap-xml"\nmode = "webhook"\n'
    f'path = "/webhooks/sos"\nsecret_env = "{SECRET_ENV}"\n'
)


async def test_a_webhook_body_over_the_bound_is_413_and_nothing_is_read(offline: Offline) -> None:
    ingest = await offline.start(WEBHOOK_SOURCE)
    url = f"{ingest.url}/webhooks/sos"
    document = sos_document()
    # Over the bound by one byte, correctly signed: refused before the signature is checked.
    big = document + b" " * (MAX_DOCUMENT_BYTES + 1 - len(document))
    async with aiohttp.ClientSession() as http:
        headers = {SIGNATURE_HEADER: signature(SECRET.encode(), big)}
        async with http.post(url, data=big, headers=headers) as response:
            assert response.status == 413
            assert (await response.json())["error"] == "too_large"
        assert metric(ingest, DOCUMENTS, source="sos") == 0
        assert sent(ingest, "sos") == (0, 0)
        assert not list(offline.quarantine.iterdir())

        # At the bound's side of it, the same document goes through.
        good = {SIGNATURE_HEADER: signature(SECRET.encode(), document)}
        async with http.post(url, data=document, headers=good) as response:
            assert response.status == 200, await response.text()
        assert sent(ingest, "sos") == (1, 1)


def _signatures(document: bytes) -> dict[str, dict[str, str]]:
    right = signature(SECRET.encode(), document)
    sha1 = "sha1=" + hmac.new(SECRET.encode(), document, hashlib.sha1).hexdigest()
    return {
        "missing": {},
        "empty": {SIGNATURE_HEADER: ""},
        "prefix-only": {SIGNATURE_HEADER: "sha256="},
        "of-other-bytes": {SIGNATURE_HEADER: signature(SECRET.encode(), b"other")},
        "other-secret": {
            SIGNATURE_HEADER: signature(b"another-secret-of-32-characters!", document)
        },
        "sha1": {SIGNATURE_HEADER: sha1},
        "bare-hex": {SIGNATURE_HEADER: right.removeprefix("sha256=")},
        "truncated": {SIGNATURE_HEADER: right[:-1]},
        "extended": {SIGNATURE_HEADER: right + "0"},
        "not-hex": {SIGNATURE_HEADER: "sha256=" + "zz" * 32},
        "oversized": {SIGNATURE_HEADER: right + "0" * 4000},
        "oversized-junk": {SIGNATURE_HEADER: "x" * 8000},
        "non-ascii": {SIGNATURE_HEADER: "sha256=" + "é" * 64},
        "other-header": {"X-Signature": right},
    }


async def test_a_webhook_without_the_right_signature_is_401_and_nothing_is_read(
    offline: Offline,
) -> None:
    ingest = await offline.start(WEBHOOK_SOURCE)
    url = f"{ingest.url}/webhooks/sos"
    document = sos_document()
    cases = _signatures(document)
    async with aiohttp.ClientSession() as http:
        for name, headers in cases.items():
            async with http.post(url, data=document, headers=headers) as response:
                assert response.status == 401, name
                assert (await response.json())["error"] == "bad_signature", name
        # A header longer than the HTTP server reads at all is refused by aiohttp (400).
        too_long = {SIGNATURE_HEADER: signature(SECRET.encode(), document) + "0" * 9000}
        async with http.post(url, data=document, headers=too_long) as response:
            assert response.status == 400
        assert metric(ingest, REFUSED, source="sos") == len(cases)
        assert metric(ingest, DOCUMENTS, source="sos") == 0
        assert sent(ingest, "sos") == (0, 0)

        good = {SIGNATURE_HEADER: signature(SECRET.encode(), document)}
        async with http.post(url, data=document, headers=good) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["sent"] == 1
        assert sent(ingest, "sos") == (1, 1)


# -- pollers ------------------------------------------------------------------------------


@dataclass
class Server:
    """``/feed`` answers by ``mode``: ``declared`` (Content-Length over the bound),
    ``chunked`` (no length, more than the bound), ``good`` (``document``)."""

    mode: str = "declared"
    document: bytes = b""
    requests: int = 0
    written: list[int] = field(default_factory=list)  # bytes written per chunked answer
    port: int = 0
    _runner: web.AppRunner | None = None

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.mode == "declared":
            return web.Response(body=b"<" + b" " * MAX_DOCUMENT_BYTES)
        if self.mode == "good":
            return web.Response(body=self.document)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        written = 0
        try:
            while written <= 2 * MAX_DOCUMENT_BYTES:
                await response.write(b" " * 65536)
                written += 65536
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the adapter stopped reading
        self.written.append(written)
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/feed", self._serve)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def test_a_poll_answer_over_the_bound_is_refused_and_the_source_goes_on(
    offline: Offline,
) -> None:
    server = Server(document=sos_document())
    await server.start()
    try:
        ingest = await offline.start(
            f'[[source]]\nname = "sos"\nformat = "cap-xml"\nmode = "poll"\n'
            f'url = "http://127.0.0.1:{server.port}/feed"\n'
            "interval_s = 0.05\ntimeout_s = 5\nmax_backoff_s = 0.2\n"
        )

        def refused() -> float:
            return metric(ingest, FETCH_ERRORS, source="sos", kind="too_large")

        await wait_until(lambda: refused() >= 2, "declared oversized answers refused")
        server.mode = "chunked"
        before = refused()
        await wait_until(lambda: refused() >= before + 2, "chunked oversized answers refused")
        assert metric(ingest, DOCUMENTS, source="sos") == 0
        assert metric(ingest, QUARANTINED, source="sos", reason="too_large") == 0
        assert metric(ingest, QUARANTINED, source="sos", reason="malformed_xml") == 0
        assert not list(offline.quarantine.iterdir())
        assert sent(ingest, "sos") == (0, 0)

        server.mode = "good"
        await wait_until(lambda: sent(ingest, "sos") == (1, 1), "the next good answer sent")
    finally:
        await server.stop()


# -- drop folders -------------------------------------------------------------------------


async def _drop_source(offline: Offline) -> tuple[Path, Ingest, bytes, Path]:
    """A files source "sos" on an empty drop folder (its first scan over), a CAP document
    and a file outside the folder holding it: (folder, ingest, document, outside)."""
    folder = offline.tmp / "drop"
    folder.mkdir()
    ingest = await offline.start(
        f'[[source]]\nname = "sos"\nformat = "cap-xml"\nmode = "files"\n'
        f'directory = "{folder}"\ninterval_s = 86400\n'
    )
    await asyncio.sleep(0.2)  # the loop's first scan (of the empty folder) is over
    document = sos_document()
    outside = offline.tmp / "outside.xml"
    outside.write_bytes(document)
    return folder, ingest, document, outside


def _aged(path: Path) -> None:
    past = time.time() - 5
    os.utime(path, (past, past), follow_symlinks=False)


async def test_a_symlink_and_a_fifo_in_the_drop_folder_are_skipped_not_read(
    offline: Offline, caplog: pytest.LogCaptureFixture
) -> None:
    folder, ingest, document, outside = await _drop_source(offline)
    link = folder / "link.xml"
    link.symlink_to(outside)
    fifo = folder / "pipe.xml"
    os.mkfifo(fifo)
    (folder / "link-to-pipe.xml").symlink_to(fifo)
    (folder / "folder.xml").mkdir()
    for path in (outside, link, fifo, folder / "link-to-pipe.xml", folder / "folder.xml"):
        _aged(path)

    with caplog.at_level(logging.WARNING, logger="ssr.ingest"):
        assert await asyncio.wait_for(ingest.scan("sos"), 5) == 0
        assert await asyncio.wait_for(ingest.scan("sos"), 5) == 0
    skipped = [r.getMessage() for r in caplog.records if "skipped, never read" in r.getMessage()]
    assert sorted(skipped) == [
        "sos: 'folder.xml' in the drop folder is a folder; skipped, never read",
        "sos: 'link-to-pipe.xml' in the drop folder is a symbolic link; skipped, never read",
        "sos: 'link.xml' in the drop folder is a symbolic link; skipped, never read",
        "sos: 'pipe.xml' in the drop folder is a FIFO; skipped, never read",
    ]  # once each, not at every scan
    assert outside.read_bytes() == document
    assert link.is_symlink()
    assert fifo.exists()
    assert not list((folder / "done").iterdir())
    assert not offline.quarantine.exists() or not list(offline.quarantine.iterdir())
    assert metric(ingest, DOCUMENTS, source="sos") == 0
    assert sent(ingest, "sos") == (0, 0)

    # The same bytes as a regular file are read and sent.
    regular = folder / "regular.xml"
    regular.write_bytes(document)
    _aged(regular)
    assert await asyncio.wait_for(ingest.scan("sos"), 5) == 1
    assert sent(ingest, "sos") == (1, 1)


def _read_in_a_thread(path: Path) -> tuple[bool, bytes | None]:
    """``_read_file(path)`` with a deadline: (whether it returned, what it returned)."""
    result: list[bytes | None] = []
    reader = threading.Thread(target=lambda: result.append(service._read_file(path)), daemon=True)
    reader.start()
    reader.join(3)
    if reader.is_alive():  # blocked in open(): a writer lets it go, so the run can end
        with open(path, "wb"):
            pass
        reader.join(3)
        return False, None
    return True, result[0]


def test_a_file_replaced_by_a_fifo_after_the_scan_is_not_read_and_does_not_block(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fifo = tmp_path / "doc.xml"
    os.mkfifo(fifo)
    with caplog.at_level(logging.WARNING, logger="ssr.ingest"):
        returned, data = _read_in_a_thread(fifo)
    assert returned, "reading a FIFO blocked"
    assert data is None
    assert any(re.search(r"doc\.xml is a FIFO; skipped", r.getMessage()) for r in caplog.records)


async def test_a_hard_link_in_the_drop_folder_is_skipped_until_it_has_one_name(
    offline: Offline, caplog: pytest.LogCaptureFixture
) -> None:
    """A hard link can name a file outside the folder (the adapter may read it, whoever
    made the link may not): skipped, left in place and warned once; read once the other
    name is gone."""
    folder, ingest, _, outside = await _drop_source(offline)
    linked = folder / "linked.xml"
    os.link(outside, linked)
    _aged(linked)
    with caplog.at_level(logging.WARNING, logger="ssr.ingest"):
        assert await asyncio.wait_for(ingest.scan("sos"), 5) == 0
        assert await asyncio.wait_for(ingest.scan("sos"), 5) == 0
    skipped = [r.getMessage() for r in caplog.records if "skipped, never read" in r.getMessage()]
    assert skipped == [
        "sos: 'linked.xml' in the drop folder is a file with 2 hard links; skipped, never read"
    ]
    assert linked.exists()
    assert sent(ingest, "sos") == (0, 0)

    outside.unlink()  # one name left: an ordinary dropped file
    assert await asyncio.wait_for(ingest.scan("sos"), 5) == 1
    assert sent(ingest, "sos") == (1, 1)


def test_a_file_hard_linked_after_the_scan_is_not_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "secret.xml"
    target.write_bytes(b"<alert/>")
    os.link(target, tmp_path / "doc.xml")
    with caplog.at_level(logging.WARNING, logger="ssr.ingest"):
        assert _read_in_a_thread(tmp_path / "doc.xml") == (True, None)
    assert any("doc.xml is a file with 2 hard links" in r.getMessage() for r in caplog.records)
    (tmp_path / "doc.xml").unlink()
    assert service._read_file(target) == b"<alert/>"  # one name: read


def test_a_file_replaced_by_a_symlink_after_the_scan_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "secret.xml"
    target.write_bytes(b"<alert/>")
    link = tmp_path / "doc.xml"
    link.symlink_to(target)
    assert _read_in_a_thread(link) == (True, None)
    assert service._read_file(target) == b"<alert/>"  # a regular file is read
