"""The ingest runtime: feeds in, signed ``alert`` envelopes out (``ssr ingest``).

    config = load_config("ingest.toml", os.environ)
    async with Ingest(config) as ingest:          # rules checked, client started, HTTP up
        await stop.wait()                         # Ctrl-C / SIGTERM sets it

Every document, whether a poller fetched it, a webhook received it or it was dropped
in a folder, takes one path (:meth:`Ingest.ingest`):

1. **bound** its size (:data:`~clients.adapters.model.MAX_DOCUMENT_BYTES`) and parse it
   with its format's parser (in a thread: XML is CPU work);
2. **quarantine** a document that cannot be read (a :class:`FeedError`) and each item
   that could not be used (an :class:`ItemProblem`): a data file and a ``.reason.json``
   in the quarantine folder, a metric, a log line. The rest goes on;
3. for each alert, oldest first: **dedupe** (:meth:`IngestState.seen`), skip what
   already expired and cancels of items recipients never had, **route** with the rules
   (unrouted: skipped and counted), **map** with :func:`send_arguments` against the
   item's previous envelope (so updates and cancels reference it), **send** through the
   client's on-disk outbox and **record** the message id and header hash.

Cancels the sources never send are made here: an open item whose alert expired
(checked every ``expiry_check_s``), and, for a ``complete`` poll source (Trafikverket),
an open item missing from a response that lists every open item.

An envelope is recorded after it is queued, so a crash between the two sends it again
on restart (at least once: a duplicate alert is better than a lost one).

Pollers keep their own rhythm: the interval after a success, exponential backoff with
jitter (bounded by ``max_backoff_s``) after a failure, conditional requests
(``If-None-Match`` / ``If-Modified-Since``; a 304 changes nothing). An answer over
:data:`~clients.adapters.model.MAX_DOCUMENT_BYTES` is a failed poll (``too_large``), not a
document: refused unread when its Content-Length says so. One source failing
never holds up another, and the first success after an outage resumes the interval.

Errors: the configuration raises :class:`IngestConfigError`, the rules
:class:`RulesError` (both stop the start with their message); everything else the
client library raises keeps its own class (:class:`ClientError` tree).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import random
import re
import secrets
import shutil
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from broker.core import DirectoryError, VerifiedDirectory, verify_chain
from broker.web import HttpServer

from .._errors import (
    AddressError,
    ClientError,
    ConfigurationError,
    DeliveryTimeout,
    Rejected,
    SendError,
    StoreError,
    Unavailable,
)
from .._inputs import authority_key as read_authority_key
from .._sqlite import SqliteStore
from ..client import Client
from .config import IngestConfig, SourceConfig
from .formats import PARSERS
from .mapping import nothing_to_cancel, send_arguments
from .model import (
    MAX_DOCUMENT_BYTES,
    Area,
    FeedError,
    Info,
    ItemProblem,
    MsgType,
    ParseResult,
    Severity,
    SourceAlert,
)
from .rules import Route, RuleSet
from .state import IngestState, Sent

__all__ = [
    "EXPIRY_CHECK_S",
    "MAX_QUARANTINE_FILES",
    "SIGNATURE_HEADER",
    "Ingest",
    "IngestMetrics",
    "Outcome",
    "Postponed",
    "Quarantine",
    "check",
    "offline_directory",
    "signature",
    "signature_ok",
]

log = logging.getLogger("ssr.ingest")

SIGNATURE_HEADER: Final = "X-SSR-Signature"  # "sha256=" + hex HMAC-SHA256 of the body
EXPIRY_CHECK_S: Final = 30.0  # how often open items are checked for expiry
CONNECT_TIMEOUT_S: Final = 10.0  # the client's first try to reach NATS
CLOSE_TIMEOUT_S: Final = 10.0
VERDICT_TIMEOUT_S: Final = 600.0  # how long the broker's verdict on a sent alert is awaited
MAX_WATCHED_VERDICTS: Final = 1000  # verdicts awaited at once; beyond it, not watched
MAX_QUARANTINE_FILES: Final = 20_000  # data and reason files; beyond it nothing more is kept
MAX_DETAIL_CHARS: Final = 2000  # of a problem's detail, in the reason file
MAX_REMEMBERED_PROBLEMS: Final = 10_000  # recently quarantined (not quarantined again)
MAX_REASON_LABELS: Final = 40  # distinct reason codes per metric; then "other"
MAX_FILES_PER_SCAN: Final = 1000
FILE_SETTLE_S: Final = 0.5  # a dropped file untouched this long is complete
MAX_SUPERSEDED_HOPS: Final = 16  # CAP update chains followed to the open item
BACKOFF_EXPONENT_CAP: Final = 20
LOG_EVERY_FAILURE: Final = 10  # after the first failure, one warning per this many
MAX_LAST_ALERTS: Final = 500_000  # rows of the last-alert store
PURGE_EVERY_S: Final = 3600.0
STATE_HORIZON_S: Final = 90 * 86_400.0  # longer than a feed keeps an item it has ended
_REASON = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_IGNORED_SUFFIXES: Final = (".tmp", ".part", ".partial", ".swp")


# --- metrics ---------------------------------------------------------------------------------


class IngestMetrics:
    """The adapter's metrics on an injected registry; labels are ``source`` and closed sets.

    ``reason`` takes the parsers' and the client's short codes (``malformed_xml``,
    ``missing_field``, ``unknown_group``, ...); past :data:`MAX_REASON_LABELS` distinct
    values, or for anything that is not such a code, it is ``other``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry: Final = registry
        r = registry
        self.documents: Final = Counter(
            "ssr_adapter_documents_fetched_total",
            "Documents received from a source (poll response, webhook body, dropped file).",
            ["source"],
            registry=r,
        )
        self.accepted: Final = Counter(
            "ssr_adapter_alerts_accepted_total",
            "Alerts sent: signed envelopes queued in the client's outbox.",
            ["source"],
            registry=r,
        )
        self.duplicates: Final = Counter(
            "ssr_adapter_alerts_duplicate_total",
            "Alerts already sent or skipped in this version, not sent again.",
            ["source"],
            registry=r,
        )
        self.quarantined: Final = Counter(
            "ssr_adapter_items_quarantined_total",
            "Documents and items put in the quarantine folder, by reason code.",
            ["source", "reason"],
            registry=r,
        )
        self.unrouted: Final = Counter(
            "ssr_adapter_alerts_unrouted_total",
            "Alerts no rule routes (skipped).",
            ["source"],
            registry=r,
        )
        self.skipped: Final = Counter(
            "ssr_adapter_alerts_skipped_total",
            "Alerts deliberately not sent: expired on arrival, or a cancel of nothing open.",
            ["source", "reason"],
            registry=r,
        )
        self.cancels: Final = Counter(
            "ssr_adapter_cancels_generated_total",
            "Cancels the adapter made itself: an item expired or disappeared from its feed.",
            ["source", "cause"],
            registry=r,
        )
        self.rejected: Final = Counter(
            "ssr_adapter_alerts_rejected_total",
            "Sent alerts the broker refused, by its reason code.",
            ["source", "reason"],
            registry=r,
        )
        self.fetch_errors: Final = Counter(
            "ssr_adapter_fetch_errors_total",
            "Failed polls, by kind: timeout, connection, http_status, too_large, send (outbox "
            "unusable).",
            ["source", "kind"],
            registry=r,
        )
        self.webhook_refused: Final = Counter(
            "ssr_adapter_webhook_refused_total",
            "Webhook requests refused for a missing or wrong signature.",
            ["source"],
            registry=r,
        )
        self.lag: Final = Gauge(
            "ssr_adapter_lag_seconds",
            "Now minus the sent time of the newest alert in the source's last document.",
            ["source"],
            registry=r,
        )
        self.last_success: Final = Gauge(
            "ssr_adapter_last_success_timestamp_seconds",
            "When a document (or a 304) from the source was last handled, Unix seconds.",
            ["source"],
            registry=r,
        )
        self.outbox_depth: Final = Gauge(
            "ssr_adapter_outbox_depth",
            "Envelopes and receipts waiting in the client's outbox for JetStream.",
            registry=r,
        )
        self._reasons: set[str] = set()

    def reason(self, code: str) -> str:
        """``code`` as a bounded label value."""
        if code in self._reasons:
            return code
        if _REASON.match(code) and len(self._reasons) < MAX_REASON_LABELS:
            self._reasons.add(code)
            return code
        return "other"

    def start(self, sources: Sequence[SourceConfig]) -> None:
        """Make every per-source series exist (at 0) before anything happens."""
        for source in sources:
            for counter in (self.documents, self.accepted, self.duplicates, self.unrouted):
                counter.labels(source=source.name)
            if source.mode == "poll":
                self.fetch_errors.labels(source=source.name, kind="http_status")
            if source.mode == "webhook":
                self.webhook_refused.labels(source=source.name)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# --- quarantine --------------------------------------------------------------------------------


class Quarantine:
    """The folder where unusable documents and items wait for a person, with their reasons.

    Each entry is ``<time>-<source>-<token>.data`` (the bytes: the whole document, or the
    item's excerpt) and ``<time>-<source>-<token>.reason.json``. Files are mode 0600 (a
    feed may carry what is not public), written exclusively, never overwritten.
    """

    def __init__(self, folder: Path, *, bound: int = MAX_QUARANTINE_FILES) -> None:
        self.folder = folder
        self.bound = bound
        self._count: int | None = None

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._count = self._recount()

    def _recount(self) -> int:
        with os.scandir(self.folder) as entries:
            return sum(1 for _ in entries)

    def put(
        self,
        *,
        source: SourceConfig,
        code: str,
        detail: str,
        item_id: str | None,
        data: bytes,
        origin: str,
        scope: str = "item",
        move_from: Path | None = None,
        now: float | None = None,
    ) -> Path | None:
        """Write one entry; returns its reason file, or ``None`` when the folder is full."""
        if self._count is None:
            self.open()
        assert self._count is not None
        if self._count + 2 > self.bound:
            self._count = self._recount()  # someone may have cleared it
            if self._count + 2 > self.bound:
                log.error(
                    "quarantine %s holds %d files: not keeping more", self.folder, self._count
                )
                return None
        stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
        base = (
            f"{stamp:%Y%m%dT%H%M%S}.{stamp.microsecond // 1000:03d}Z-{source.name}"
            f"-{secrets.token_hex(4)}"
        )
        data_file = self.folder / f"{base}.data"
        if move_from is not None:
            _move(move_from, data_file)
            with contextlib.suppress(OSError):
                data_file.chmod(0o600)  # a dropped file keeps its producer's mode otherwise
        else:
            _write_new(data_file, data)
        reason = {
            "source": source.name,
            "format": source.format,
            "scope": scope,
            "code": code,
            "detail": detail[:MAX_DETAIL_CHARS],
            "item_id": item_id,
            "origin": origin,
            "quarantined_at": stamp.isoformat().replace("+00:00", "Z"),
            "data_file": data_file.name,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        reason_file = self.folder / f"{base}.reason.json"
        _write_new(reason_file, json.dumps(reason, indent=2, ensure_ascii=False).encode("utf-8"))
        self._count += 2
        return reason_file


def _write_new(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _move(source: Path, target: Path) -> None:
    if target.exists():
        raise FileExistsError(target)
    try:
        os.replace(source, target)
    except OSError:
        shutil.move(str(source), str(target))  # another file system


# --- the last alert of each open item (to build the cancels the sources never send) -------


class _LastAlerts(SqliteStore):
    """Per (source, item): the last alert sent for it, and the item that superseded it.

    An expiry or a disappearance cancel is built from the item's last alert, so it is
    routed and worded like the alert it withdraws. ``successor`` links a CAP message to
    the Update that replaced it, so a later Cancel naming only the first one still finds
    the open item.
    """

    KIND = "ingest alert store"
    APPLICATION_ID = 0x5353524C  # "SSRL"
    SCHEMA_VERSION = 1
    SCHEMA = (
        """CREATE TABLE last_alert (
            source    TEXT NOT NULL,
            item_id   TEXT NOT NULL,
            alert     TEXT,            -- JSON of the SourceAlert; NULL once closed
            successor TEXT,            -- the item that superseded this one
            updated   INTEGER NOT NULL,
            PRIMARY KEY (source, item_id)
        )""",
        "CREATE INDEX last_alert_updated ON last_alert (updated)",
    )
    SYNCHRONOUS = "NORMAL"
    error = StoreError

    def get(self, source: str, item_id: str) -> SourceAlert | None:
        rows = self._select(
            "get",
            "SELECT alert FROM last_alert WHERE source = ? AND item_id = ?",
            (source, item_id),
        )
        if not rows or rows[0][0] is None:
            return None
        try:
            return _alert_from_json(rows[0][0])
        except (ValueError, TypeError, KeyError):
            return None

    def successor(self, source: str, item_id: str) -> str | None:
        rows = self._select(
            "successor",
            "SELECT successor FROM last_alert WHERE source = ? AND item_id = ?",
            (source, item_id),
        )
        return rows[0][0] if rows else None

    def put(self, source: str, alert: SourceAlert) -> None:
        self._write(
            "INSERT INTO last_alert (source, item_id, alert, successor, updated)"
            " VALUES (?, ?, ?, NULL, ?) ON CONFLICT (source, item_id)"
            " DO UPDATE SET alert = excluded.alert, updated = excluded.updated",
            (source, alert.item_id, _alert_to_json(alert), _now_ms()),
        )

    def close_item(self, source: str, item_id: str, successor: str | None = None) -> None:
        self._write(
            "INSERT INTO last_alert (source, item_id, alert, successor, updated)"
            " VALUES (?, ?, NULL, ?, ?) ON CONFLICT (source, item_id)"
            " DO UPDATE SET alert = NULL, successor = excluded.successor,"
            " updated = excluded.updated",
            (source, item_id, successor, _now_ms()),
        )

    def purge(self, older_than_ms: int) -> None:
        """Forget closed items (no alert kept) last touched before ``older_than_ms``."""
        self._write("DELETE FROM last_alert WHERE alert IS NULL AND updated < ?", (older_than_ms,))

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        with self._lock, self._mapped("write"):
            conn = self._connection()
            with self._transaction(conn):
                conn.execute(sql, params)
                count = conn.execute("SELECT count(*) FROM last_alert").fetchone()[0]
                if count > MAX_LAST_ALERTS:  # the oldest go first; bounded, never full
                    conn.execute(
                        "DELETE FROM last_alert WHERE rowid IN (SELECT rowid FROM last_alert"
                        " ORDER BY updated LIMIT ?)",
                        (count - MAX_LAST_ALERTS,),
                    )


def _alert_to_json(alert: SourceAlert) -> str:
    return json.dumps(dataclasses.asdict(alert), ensure_ascii=False, separators=(",", ":"))


def _alert_from_json(text: str) -> SourceAlert:
    data = json.loads(text)
    data["msg_type"] = MsgType(data["msg_type"])
    data["severity"] = Severity(data["severity"])
    for key in ("references", "categories"):
        data[key] = tuple(data[key])
    data["areas"] = tuple(
        Area(
            description=a["description"],
            counties=tuple(a["counties"]),
            municipalities=tuple(a["municipalities"]),
            geometry=a["geometry"],
        )
        for a in data["areas"]
    )
    data["infos"] = tuple(Info(**i) for i in data["infos"])
    return SourceAlert(**data)


# --- outcomes and errors ---------------------------------------------------------------------


@dataclass
class Outcome:
    """What became of one document."""

    alerts: int = 0  # parsed
    sent: int = 0
    duplicates: int = 0
    unrouted: int = 0
    skipped: int = 0
    cancels: int = 0  # made by the adapter (disappeared items)
    quarantined: int = 0
    error: str | None = None  # the FeedError code when the whole document was quarantined

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Postponed(ClientError):
    """The alerts cannot be queued now (outbox full or unusable, state store failing):
    nothing is recorded for them, the document is left for the next poll or scan, and a
    webhook answers 503 so its sender tries again."""

    code = "postponed"


class _FetchFailed(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


@dataclass
class _Validators:
    """A poll source's conditional-request validators, from its last handled response."""

    etag: str | None = None
    last_modified: str | None = None


@dataclass
class _SourceHealth:
    last_success: float | None = None
    failures: int = 0


# --- the runtime ---------------------------------------------------------------------------------


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Ingest:
    """One adapter process: its sources, its client, its state, its HTTP endpoint.

    ``registry`` (default: a fresh one), ``rand`` (backoff jitter) and
    ``expiry_check_s`` are injectable for tests.
    """

    def __init__(
        self,
        config: IngestConfig,
        *,
        registry: CollectorRegistry | None = None,
        rand: random.Random | None = None,
        expiry_check_s: float = EXPIRY_CHECK_S,
        connect_timeout: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.config = config
        self.metrics = IngestMetrics(registry if registry is not None else CollectorRegistry())
        self.quarantine = Quarantine(config.quarantine_dir)
        self._rand = rand or random.SystemRandom()
        self._expiry_check_s = expiry_check_s
        self._connect_timeout = connect_timeout
        self._client: Client | None = None
        self._rules: RuleSet | None = None
        self._state: IngestState | None = None
        self._last: _LastAlerts | None = None
        self._http: HttpServer | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._verdicts: set[asyncio.Task[None]] = set()
        self._locks = {s.name: asyncio.Lock() for s in config.sources}
        self._health = {s.name: _SourceHealth() for s in config.sources}
        self._problems: OrderedDict[tuple[str, str, str | None, str], None] = OrderedDict()
        self._skipped_files: dict[str, set[str]] = {}  # per files source, already logged

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the client, check the rules, open the stores, serve HTTP, start the sources.

        Raises :class:`RulesError` for a bad rules file, and the client's errors
        (:class:`ConfigurationError`, :class:`Unavailable`, ...) when it cannot start.
        """
        config = self.config
        try:
            self._client = Client.connect(
                servers=config.servers,
                actor=config.actor,
                keys=config.keys,
                authority_key=config.authority_key,
                state_dir=config.state_dir,
                policy=config.policy_file,
                directory=_seed_versions(config.directory_dir),
                connect_timeout=self._connect_timeout,
            )
            await self._client.start()
            self._rules = RuleSet.load_file(
                config.rules_file, directory=self._client.directory, policy=self._client.policy
            )
            self._state = IngestState(config.state_file)
            self._last = _LastAlerts(config.state_dir / "ingest-alerts.sqlite")
            self.quarantine.open()
            for source in config.sources:
                if source.directory is not None:
                    (source.directory / "done").mkdir(parents=True, exist_ok=True, mode=0o700)
            client = self._client
            self.metrics.outbox_depth.set_function(lambda: client.outbox_depth)
            self.metrics.start(config.sources)
            self._http = HttpServer(self._app(), host=config.http_host, port=config.http_port)
            await self._http.start()
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": "ssr-ingest"}, raise_for_status=False
            )
        except BaseException:
            await self.stop()
            raise
        for source in config.sources:
            if source.mode == "poll":
                self._spawn(self._poll_loop(source), f"poll:{source.name}")
            elif source.mode == "files":
                self._spawn(self._files_loop(source), f"files:{source.name}")
        self._spawn(self._expiry_loop(), "expiry")
        log.info(
            "ingest for %s: %d source(s), %d rule(s), HTTP on %s",
            config.actor,
            len(config.sources),
            len(self._rules),
            self.url,
        )

    async def stop(self) -> None:
        """Stop the HTTP endpoint (letting webhook requests finish), the sources and the
        client; close the stores. Idempotent."""
        if self._http is not None:
            await self._http.stop()
            self._http = None
        tasks, self._tasks = self._tasks + list(self._verdicts), []
        await _cancel(tasks)
        self._verdicts.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._client is not None:
            try:
                await asyncio.wait_for(self._client.close(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("closing the client took longer than %g s; gave up", CLOSE_TIMEOUT_S)
            self._client = None
        for store in (self._state, self._last):
            if store is not None:
                with contextlib.suppress(ClientError):
                    store.close()
        self._state = self._last = None

    def _spawn(self, work: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(work, name=name))

    @property
    def url(self) -> str:
        """The HTTP endpoint (``/metrics``, ``/healthz``, webhooks), once started."""
        if self._http is None:
            raise RuntimeError("the ingest is not running")
        return self._http.url

    @property
    def client(self) -> Client:
        if self._client is None:
            raise RuntimeError("the ingest is not running")
        return self._client

    # --- one document ----------------------------------------------------------------------

    async def ingest(
        self,
        source_name: str,
        data: bytes,
        *,
        origin: str = "",
        move_from: Path | None = None,
    ) -> Outcome:
        """Handle one document of ``source_name``; see the module docstring.

        With ``move_from`` (a dropped file) a document that cannot be read is moved into
        the quarantine instead of copied. Raises :class:`Postponed` when its alerts cannot
        be queued now (nothing is recorded for them: the next attempt sends them).
        """
        source = self.config.source(source_name)
        async with self._locks[source.name]:
            return await self._ingest(source, data, origin, move_from)

    async def _ingest(
        self, source: SourceConfig, data: bytes, origin: str, move_from: Path | None
    ) -> Outcome:
        outcome = Outcome()
        self.metrics.documents.labels(source=source.name).inc()
        try:
            if len(data) > MAX_DOCUMENT_BYTES:
                raise FeedError(
                    "too_large", f"more than {MAX_DOCUMENT_BYTES} bytes; not read further"
                )
            result = await asyncio.to_thread(PARSERS[source.format], data)
        except FeedError as exc:
            code, detail = exc.code, exc.detail
        except Exception as exc:  # a parser bug: the document waits for a person, we go on
            log.exception("%s: the %s parser failed", source.name, source.format)
            code, detail = "parser_failed", f"the parser raised {type(exc).__name__}: {exc}"
        else:
            return await self._parsed(source, result, origin, outcome)
        outcome.error = code
        if self._quarantine(
            source, code, detail, None, data, origin, scope="document", move_from=move_from
        ):
            outcome.quarantined += 1
        return outcome

    async def _parsed(
        self, source: SourceConfig, result: ParseResult, origin: str, outcome: Outcome
    ) -> Outcome:
        outcome.alerts = len(result.alerts)
        for problem in result.problems:
            if self._quarantine_problem(source, problem, origin):
                outcome.quarantined += 1
        now = _now_ms()
        for alert in sorted(result.alerts, key=lambda a: a.sent):
            await self._alert(source, alert, now, outcome)
        if source.complete:
            await self._disappeared(source, result, now, outcome)
        if result.alerts:
            newest = max(a.sent for a in result.alerts)
            self.metrics.lag.labels(source=source.name).set(max(0.0, (now - newest) / 1000))
        self._succeeded(source)
        return outcome

    def _succeeded(self, source: SourceConfig) -> None:
        now = time.time()
        self._health[source.name].last_success = now
        self.metrics.last_success.labels(source=source.name).set(now)

    # --- one alert ----------------------------------------------------------------------------

    async def _alert(
        self, source: SourceConfig, alert: SourceAlert, now: int, outcome: Outcome
    ) -> None:
        name = source.name
        state, _, client, _ = self._running()
        if alert.sent < 0 or (alert.expires is not None and alert.expires < 0):
            # Before 1970: never sent (the state could not record it, and it would go
            # out again on every fetch).
            problem = ItemProblem("invalid_timestamp", "a time before 1970", alert.item_id[:200])
            if self._quarantine_problem(source, problem, "", alert=alert):
                outcome.quarantined += 1
            return
        try:
            if state.seen(name, alert):
                self.metrics.duplicates.labels(source=name).inc()
                outcome.duplicates += 1
                return
        except StoreError as exc:
            if exc.code != "invalid_item":
                raise Postponed(exc.message) from exc
            problem = ItemProblem("invalid_item", exc.message, alert.item_id[:200])
            if self._quarantine_problem(source, problem, "", alert=alert):
                outcome.quarantined += 1
            return
        try:
            previous = self._previous(name, alert)
            if (
                alert.msg_type != MsgType.CANCEL
                and alert.expires is not None
                and (alert.expires <= now)
            ):
                if previous is None or previous.cancelled:
                    self._skip(source, alert, "expired", "expired before it arrived", outcome)
                    return
                # A new version that has already ended: withdraw what recipients hold.
                alert = dataclasses.replace(alert, msg_type=MsgType.CANCEL)
            if nothing_to_cancel(alert, previous):
                self._skip(source, alert, "nothing_to_cancel", "no open item to cancel", outcome)
                return
            route = self._route(name, alert, previous)
            if route is None:
                state.skip(name, alert, "unrouted: no rule matches")
                self.metrics.unrouted.labels(source=name).inc()
                outcome.unrouted += 1
                log.info("%s: %s (%s) matches no rule; not sent", name, alert.key, alert.event)
                return
            arguments = send_arguments(
                name,
                alert,
                route,
                previous,
                policy=client.policy,
                now_ms=now,
                default_lifetime_s=int(self.config.default_lifetime_s),
            )
            try:
                handle = await client.send(**arguments)
            except (AddressError, SendError) as exc:
                # Not for now nor later: the route or the alert does not make an envelope.
                problem = ItemProblem(exc.code, f"not sent: {exc.message}", alert.item_id)
                if self._quarantine_problem(source, problem, "", alert=alert):
                    outcome.quarantined += 1
                state.skip(name, alert, f"not sent ({exc.code}): {exc.message}")
                return
            except ClientError as exc:
                raise Postponed(f"cannot queue the envelope: {exc.message}") from exc
            state.record(name, alert, handle.message_id, handle.header_hash)
        except StoreError as exc:
            raise Postponed(exc.message) from exc
        self._remember(name, alert, previous, handle.message_id, handle.header_hash)
        self.metrics.accepted.labels(source=name).inc()
        outcome.sent += 1
        log.info(
            "%s: sent %s %s as %s (rule %s)",
            name,
            arguments["payload"]["msg_type"],
            alert.key,
            handle.message_id,
            route.rule,
        )
        self._watch(name, handle)

    def _route(self, source: str, alert: SourceAlert, previous: Sent | None) -> Route | None:
        """The rules' route for ``alert``; an update or cancel no rule routes (a CAP Cancel
        often has no ``info``, so no event or area) follows the alert it replaces: whoever
        holds an item must hear that it changed or ended."""
        _, last, _, rules = self._running()
        route = rules.route(source, alert)
        if route is not None or previous is None or previous.cancelled:
            return route
        replaced = last.get(source, previous.item_id)
        return rules.route(source, replaced) if replaced is not None else None

    def _skip(
        self, source: SourceConfig, alert: SourceAlert, reason: str, text: str, outcome: Outcome
    ) -> None:
        assert self._state is not None
        self._state.skip(source.name, alert, text)
        self.metrics.skipped.labels(source=source.name, reason=reason).inc()
        outcome.skipped += 1
        log.info("%s: %s not sent: %s", source.name, alert.key, text)

    def _previous(self, source: str, alert: SourceAlert) -> Sent | None:
        """The envelope an alert updates or cancels: its own item's latest, else (CAP) that
        of the newest item it references, following items that were superseded."""
        state, last, _, _ = self._running()
        found: Sent | None = None
        for item_id in (alert.item_id, *reversed(alert.references)):
            if not item_id or len(item_id) > 1024:
                continue
            hops = 0
            current: str | None = item_id
            while current is not None and hops < MAX_SUPERSEDED_HOPS:
                sent = state.latest(source, current)
                if sent is None:
                    break
                if not sent.cancelled:
                    return sent
                found = found or sent
                current = last.successor(source, current)
                hops += 1
        return found

    def _remember(
        self,
        source: str,
        alert: SourceAlert,
        previous: Sent | None,
        message_id: str,
        header_hash: str,
    ) -> None:
        """Keep the alert for the cancels made here; close an item it superseded (CAP)."""
        state, last, _, _ = self._running()
        try:
            if alert.msg_type == MsgType.CANCEL:
                last.close_item(source, alert.item_id)
            else:
                last.put(source, alert)
            if previous is not None and previous.item_id != alert.item_id:
                # A CAP Update or Cancel has its own identifier: the item it replaced is
                # closed by this envelope, so it is neither expired nor cancelled again.
                closing = SourceAlert(
                    format=alert.format,
                    item_id=previous.item_id,
                    version=_derived_version(previous.version, "superseded"),
                    msg_type=MsgType.CANCEL,
                    sent=alert.sent,
                    event=alert.event,
                )
                state.record(source, closing, message_id, header_hash)
                last.close_item(source, previous.item_id, successor=alert.item_id)
        except StoreError as exc:  # the envelope is queued; a stale link only costs a cancel
            log.error("%s: could not remember %s: %s", source, alert.key, exc.message)

    def _watch(self, source: str, handle: Any) -> None:
        """Log and count the broker's refusal of a sent alert (the outbox already has it)."""
        if len(self._verdicts) >= MAX_WATCHED_VERDICTS:
            return

        async def verdict() -> None:
            try:
                await handle.accepted(VERDICT_TIMEOUT_S)
            except Rejected as exc:
                self.metrics.rejected.labels(
                    source=source, reason=self.metrics.reason(exc.code)
                ).inc()
                log.error("%s: the broker refused %s: %s", source, handle.message_id, exc.message)
            except (DeliveryTimeout, ClientError):
                pass

        task = asyncio.create_task(verdict(), name=f"verdict:{handle.message_id}")
        self._verdicts.add(task)
        task.add_done_callback(self._verdicts.discard)

    # --- cancels made here -------------------------------------------------------------------

    async def _disappeared(
        self, source: SourceConfig, result: ParseResult, now: int, outcome: Outcome
    ) -> None:
        """A complete response lists every open item: an open item it lacks has ended."""
        if any(p.item_id is None for p in result.problems):
            log.warning(
                "%s: a problem item without an id; not cancelling items missing from this response",
                source.name,
            )
            return
        present = {a.item_id for a in result.alerts} | {p.item_id for p in result.problems}
        state, _, _, _ = self._running()
        try:
            open_items = state.open_items(source.name)
        except StoreError as exc:
            raise Postponed(exc.message) from exc
        for sent in open_items:
            if sent.item_id not in present and await self._cancel(
                source, sent, "disappeared", now, outcome
            ):
                outcome.cancels += 1

    async def expire(self, source_name: str, now_ms: int | None = None) -> int:
        """Cancel the open items of ``source_name`` whose alert expired; returns how many."""
        source = self.config.source(source_name)
        now = _now_ms() if now_ms is None else now_ms
        async with self._locks[source.name]:
            state, _, _, _ = self._running()
            try:
                expired = state.expired(source.name, now)
            except StoreError as exc:
                raise Postponed(exc.message) from exc
            outcome = Outcome()
            count = 0
            for sent in expired:
                count += await self._cancel(source, sent, "expired", now, outcome)
            return count

    async def _cancel(
        self, source: SourceConfig, sent: Sent, cause: str, now: int, outcome: Outcome
    ) -> bool:
        last = self._running()[1]
        try:
            base = last.get(source.name, sent.item_id)
        except StoreError:
            base = None
        if base is None:  # sent before this store existed, or lost: a bare cancel
            base = SourceAlert(
                format=source.format,
                item_id=sent.item_id,
                version=sent.version,
                msg_type=MsgType.ALERT,
                sent=now,
                event="",
            )
        cancel = dataclasses.replace(
            base,
            version=_derived_version(sent.version, cause),
            msg_type=MsgType.CANCEL,
            sent=now,
            expires=None,
            references=(sent.item_id,),
        )
        state, _, _, _ = self._running()
        try:
            if state.seen(source.name, cancel):  # made before; not routed or not sendable
                return False
        except StoreError as exc:
            raise Postponed(exc.message) from exc
        before = outcome.sent
        await self._alert(source, cancel, now, outcome)
        if outcome.sent > before:
            self.metrics.cancels.labels(source=source.name, cause=cause).inc()
            log.info("%s: cancelled %s (%s)", source.name, sent.item_id, cause)
            return True
        return False

    async def _expiry_loop(self) -> None:
        purged = 0.0
        while True:
            for source in self.config.sources:
                try:
                    await self.expire(source.name)
                except Postponed as exc:
                    log.warning("%s: expiry check postponed: %s", source.name, exc)
                except Exception:
                    log.exception("%s: expiry check failed", source.name)
            if time.monotonic() - purged >= PURGE_EVERY_S:
                purged = time.monotonic()
                self.purge()
            await asyncio.sleep(self._expiry_check_s)

    def purge(self, horizon_s: float = STATE_HORIZON_S) -> int:
        """Forget what was sent or skipped longer than ``horizon_s`` ago, except each open
        item's latest envelope (see :meth:`IngestState.purge`); returns how many rows."""
        state, last, _, _ = self._running()
        cutoff = max(0, _now_ms() - int(horizon_s * 1000))
        try:
            removed = state.purge(cutoff)
            last.purge(cutoff)
        except StoreError as exc:
            log.error("purging the ingest state failed: %s", exc.message)
            return 0
        if removed:
            log.info(
                "forgot %d sent or skipped item versions older than %g days",
                removed,
                horizon_s / 86_400,
            )
        return removed

    # --- quarantine -----------------------------------------------------------------------------

    def _quarantine_problem(
        self,
        source: SourceConfig,
        problem: ItemProblem,
        origin: str,
        *,
        alert: SourceAlert | None = None,
    ) -> bool:
        excerpt = problem.excerpt.encode("utf-8", "replace")
        if alert is not None and not excerpt:
            excerpt = _alert_to_json(alert).encode("utf-8", "replace")[:MAX_DOCUMENT_BYTES]
        return self._quarantine(
            source, problem.code, problem.detail, problem.item_id, excerpt, origin
        )

    def _quarantine(
        self,
        source: SourceConfig,
        code: str,
        detail: str,
        item_id: str | None,
        data: bytes,
        origin: str,
        *,
        scope: str = "item",
        move_from: Path | None = None,
    ) -> bool:
        """Quarantine once: the same bytes with the same reason again (a feed that keeps
        serving a bad item) are only logged at debug level. Returns whether it was kept."""
        digest = hashlib.sha256(data).hexdigest()
        key = (source.name, code, item_id, digest)
        if move_from is None and key in self._problems:
            self._problems.move_to_end(key)
            log.debug("%s: %s again (%s); quarantined before", source.name, item_id, code)
            return False
        self._problems[key] = None
        while len(self._problems) > MAX_REMEMBERED_PROBLEMS:
            self._problems.popitem(last=False)
        self.metrics.quarantined.labels(source=source.name, reason=self.metrics.reason(code)).inc()
        try:
            where = self.quarantine.put(
                source=source,
                code=code,
                detail=detail,
                item_id=item_id,
                data=data,
                origin=origin,
                scope=scope,
                move_from=move_from,
            )
        except OSError as exc:
            log.error("%s: cannot write to the quarantine: %s", source.name, exc)
            where = None
        what = f"item {(item_id or '?')[:100]!r}" if scope == "item" else "document"
        log.warning(
            "%s: quarantined %s (%s): %s%s",
            source.name,
            what,
            code,
            _one_line(detail)[:300],
            f" -> {where.name}" if where is not None else "",
        )
        return True

    # --- pollers -------------------------------------------------------------------------------

    async def _poll_loop(self, source: SourceConfig) -> None:
        validators = _Validators()
        health = self._health[source.name]
        while True:
            try:
                await self._poll_once(source, validators)
            except _FetchFailed as exc:
                self.metrics.fetch_errors.labels(source=source.name, kind=exc.kind).inc()
                delay = self._failed(source, health, f"{exc.kind}: {exc.detail}")
            except Postponed as exc:
                self.metrics.fetch_errors.labels(source=source.name, kind="send").inc()
                delay = self._failed(source, health, f"cannot queue alerts: {exc}")
            except Exception as exc:  # a bug must not end the poller
                log.exception("%s: polling failed", source.name)
                delay = self._failed(source, health, f"internal error: {type(exc).__name__}")
            else:
                if health.failures:
                    log.warning(
                        "%s: source is back after %d failed attempt(s)",
                        source.name,
                        health.failures,
                    )
                health.failures = 0
                delay = source.interval_s
            await asyncio.sleep(delay)

    def _failed(self, source: SourceConfig, health: _SourceHealth, why: str) -> float:
        health.failures += 1
        delay = self.backoff(source, health.failures)
        if health.failures == 1 or health.failures % LOG_EVERY_FAILURE == 0:
            log.warning(
                "%s: poll failed (%s); attempt %d, next in %.1f s",
                source.name,
                _one_line(why)[:300],
                health.failures,
                delay,
            )
        return delay

    def backoff(self, source: SourceConfig, failures: int) -> float:
        """Seconds before the next try after ``failures`` failures in a row: doubling from
        the interval, at most ``max_backoff_s``, with jitter (half to all of it)."""
        growth = float(2 ** min(failures, BACKOFF_EXPONENT_CAP))
        ceiling = min(source.max_backoff_s, source.interval_s * growth)
        return ceiling * (0.5 + 0.5 * float(self._rand.random()))

    async def _poll_once(self, source: SourceConfig, validators: _Validators) -> None:
        fetched = await self._fetch(source, validators)
        if fetched is None:  # 304 Not Modified: nothing new
            self._succeeded(source)
            return
        data, etag, last_modified = fetched
        await self.ingest(source.name, data, origin=_redacted(source.url))
        # Only now: a document that could not be queued is fetched in full again.
        validators.etag, validators.last_modified = etag, last_modified

    async def _fetch(
        self, source: SourceConfig, validators: _Validators
    ) -> tuple[bytes, str | None, str | None] | None:
        session = self._session
        assert session is not None
        headers = dict(source.headers)
        if validators.etag:
            headers["If-None-Match"] = validators.etag
        if validators.last_modified:
            headers["If-Modified-Since"] = validators.last_modified
        try:
            async with session.request(
                source.method,
                source.url,
                data=source.body or None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=source.timeout_s),
                max_redirects=5,
            ) as response:
                if response.status == 304:
                    return None
                if response.status != 200:
                    raise _FetchFailed("http_status", f"HTTP {response.status}")
                data = await _read_bounded(response)
                if data is None:
                    raise _FetchFailed(
                        "too_large", f"an answer of more than {MAX_DOCUMENT_BYTES} bytes; not read"
                    )
                return (
                    data,
                    _validator(response.headers.get("ETag")),
                    _validator(response.headers.get("Last-Modified")),
                )
        except TimeoutError as exc:
            raise _FetchFailed("timeout", f"no complete answer in {source.timeout_s:g} s") from exc
        except aiohttp.ClientError as exc:
            raise _FetchFailed("connection", str(exc) or type(exc).__name__) from exc

    # --- drop folders ---------------------------------------------------------------------------

    async def _files_loop(self, source: SourceConfig) -> None:
        while True:
            try:
                await self.scan(source.name)
            except Postponed as exc:
                log.warning("%s: files left for the next scan: %s", source.name, exc)
            except Exception:
                log.exception("%s: scanning the drop folder failed", source.name)
            await asyncio.sleep(source.interval_s)

    async def scan(self, source_name: str) -> int:
        """Handle the complete files in a drop folder; returns how many were handled."""
        source = self.config.source(source_name)
        folder = source.directory
        assert folder is not None
        handled = 0
        skipped: dict[str, str] = {}
        paths = await asyncio.to_thread(_dropped_files, folder, skipped)
        warned = self._skipped_files.get(source.name, set())
        for name in sorted(skipped.keys() - warned)[:MAX_FILES_PER_SCAN]:
            log.warning(
                "%s: %r in the drop folder is %s; skipped, never read",
                source.name,
                name[:200],
                skipped[name],
            )
        self._skipped_files[source.name] = set(skipped)  # warned once while it stays
        for path in paths:
            data = await asyncio.to_thread(_read_file, path)
            if data is None:
                continue
            outcome = await self.ingest(
                source.name, data, origin=f"file {path.name}", move_from=path
            )
            # Handled: to done/. An unreadable one was moved into the quarantine, unless
            # that failed (full, another file system): then to done/ too, never read again.
            if outcome.error is None or path.exists():
                done = folder / "done" / f"{_stamp()}-{path.name}"
                try:
                    await asyncio.to_thread(_move, path, done)
                except OSError as exc:
                    log.error("%s: cannot move %s to done/: %s", source.name, path.name, exc)
            handled += 1
        return handled

    # --- HTTP: metrics, health, webhooks ------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_DOCUMENT_BYTES)
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/healthz", self._healthz)
        for source in self.config.sources:
            if source.mode == "webhook":
                app.router.add_post(source.path, self._webhook_handler(source))
        app.on_response_prepare.append(_security_headers)
        return app

    async def _metrics_page(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.Response:
        client = self._client
        sources = {
            name: {
                "last_success": health.last_success,
                "failures": health.failures,
            }
            for name, health in self._health.items()
        }
        return web.json_response(
            {
                "status": "ok",
                "nats_connected": bool(client is not None and client.connected),
                "outbox_depth": client.outbox_depth if client is not None else 0,
                "sources": sources,
            }
        )

    def _webhook_handler(self, source: SourceConfig) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            try:
                body = await request.read()  # bounded by client_max_size (413 beyond)
            except web.HTTPRequestEntityTooLarge:
                return _error(413, "too_large", f"more than {MAX_DOCUMENT_BYTES} bytes")
            # Verify before anything is parsed: over the exact bytes received.
            if not signature_ok(source.secret, body, request.headers.get(SIGNATURE_HEADER)):
                self.metrics.webhook_refused.labels(source=source.name).inc()
                log.warning(
                    "%s: webhook refused from %s: missing or wrong %s",
                    source.name,
                    request.remote,
                    SIGNATURE_HEADER,
                )
                return _error(401, "bad_signature", f"{SIGNATURE_HEADER} is missing or wrong")
            try:
                outcome = await self.ingest(source.name, body, origin=f"webhook {source.path}")
            except Postponed as exc:
                return _error(503, "unavailable", f"try again later: {exc}")
            except Exception:  # a bug: logged here, no traceback to the sender
                log.exception("%s: handling a webhook document failed", source.name)
                return _error(500, "internal_error", "internal error")
            status = 422 if outcome.error is not None else 200
            return web.json_response(outcome.as_dict(), status=status)

        return handle

    # --- helpers ---------------------------------------------------------------------------------

    def _running(self) -> tuple[IngestState, _LastAlerts, Client, RuleSet]:
        if self._state is None or self._last is None or self._client is None or self._rules is None:
            raise Postponed("the ingest is not running")
        return self._state, self._last, self._client, self._rules


# --- webhook signatures --------------------------------------------------------------------


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-SSR-Signature`` value for ``body``: ``sha256=`` and the hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_ok(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the right signature of ``body`` (compared in constant time)."""
    if not secret or header is None:
        return False
    expected = signature(secret, body).encode("ascii")
    return hmac.compare_digest(expected, header.strip().lower().encode("utf-8", "replace"))


# --- small helpers -------------------------------------------------------------------------------


async def _cancel(tasks: list[asyncio.Task[None]], timeout: float = 5.0) -> None:
    """Cancel ``tasks`` and wait, cancelling again while any still runs (bounded)."""
    deadline = time.monotonic() + timeout
    pending = {t for t in tasks if not t.done()}
    while pending and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in pending:
        log.warning("task %s did not stop in time", task.get_name())


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes | None:
    """The body, or None when it is larger than MAX_DOCUMENT_BYTES: refused unread when
    its Content-Length says so, else as soon as more than that has arrived."""
    if response.content_length is not None and response.content_length > MAX_DOCUMENT_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_DOCUMENT_BYTES:
            return None
    return b"".join(chunks)


def _validator(value: str | None) -> str | None:
    """An ETag or Last-Modified worth sending back: one short line."""
    if value is None or len(value) > 512 or re.search(r"[\x00-\x1f\x7f]", value):
        return None
    return value


def _redacted(url: str) -> str:
    """A URL for logs and reason files: no user info, no query (API keys live there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _dropped_files(folder: Path, skipped: dict[str, str] | None = None) -> list[Path]:
    """Complete regular files in a drop folder, oldest first (no hidden, temporary or
    symlinked ones; untouched for :data:`FILE_SETTLE_S`). Symbolic links, files with more
    than one hard link, FIFOs, sockets, devices and folders (but ``done``) go into
    ``skipped``, name to what they are."""
    now = time.time()
    found: list[tuple[float, str, Path]] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") or entry.name.endswith(_IGNORED_SUFFIXES):
                continue
            try:
                status = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            kind = _not_readable(status)
            if kind is not None:
                if skipped is not None and entry.name != "done":
                    skipped[entry.name] = kind
                continue
            mtime = status.st_mtime
            if now - mtime >= FILE_SETTLE_S:
                found.append((mtime, entry.name, Path(entry.path)))
    found.sort()
    return [path for _, _, path in found[:MAX_FILES_PER_SCAN]]


def _not_readable(status: os.stat_result) -> str | None:
    """What a drop-folder entry is, if it is not a regular file with one name (the only
    kind read), else None."""
    mode = status.st_mode
    if stat.S_ISREG(mode):
        if status.st_nlink == 1:
            return None
        # A hard link: it may name a file outside the folder that the adapter may read and
        # the folder's writers may not; read once it has only the one name.
        return f"a file with {status.st_nlink} hard links"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def _read_file(path: Path) -> bytes | None:
    """At most MAX_DOCUMENT_BYTES + 1 bytes of a dropped file; None if it went away or is
    no longer a regular file with one name (replaced since the scan: a symbolic link is
    not followed, a FIFO is opened without blocking, then not read, and a hard link is
    not read)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
        with os.fdopen(fd, "rb") as handle:
            kind = _not_readable(os.fstat(handle.fileno()))
            if kind is not None:
                log.warning("%s is %s; skipped, never read", path, kind)
                return None
            return handle.read(MAX_DOCUMENT_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.error("cannot read %s: %s", path, exc)
        return None


def _stamp() -> str:
    now = datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(2)}"


def _derived_version(version: str, cause: str) -> str:
    suffix = f"+{cause}"
    return version[: 256 - len(suffix)] + suffix


def _one_line(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]+", " ", text)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "status": status, "message": message}, status=status)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def _seed_versions(folder: Path | None) -> list[bytes]:
    if folder is None:
        return []
    return [path.read_bytes() for path in sorted(folder.glob("v*.dir"))]


# --- checking a configuration without running it ------------------------------------------


def offline_directory(config: IngestConfig) -> VerifiedDirectory | None:
    """The newest directory that verifies from what is on disk: ``directory_dir`` and the
    client's cache in ``state_dir/directory``. ``None`` when neither holds a version."""
    pinned = read_authority_key(config.authority_key)
    best: VerifiedDirectory | None = None
    for folder in (config.directory_dir, config.state_dir / "directory"):
        versions = _seed_versions(folder) if folder is not None and folder.is_dir() else []
        if not versions:
            continue
        try:
            directory = verify_chain(versions, pinned=pinned)
        except DirectoryError as exc:
            raise ConfigurationError(
                f"directory versions in {folder} do not verify: {exc.message}", code="directory"
            ) from exc
        if best is None or directory.version > best.version:
            best = directory
    return best


async def _online_directory(config: IngestConfig, timeout: float) -> VerifiedDirectory:
    """The directory from the broker's bucket (read only: no consumer is created)."""
    from broker import subjects
    from broker.bus import JetStreamBus
    from broker.errors import NatsUnavailable

    pinned = read_authority_key(config.authority_key)
    try:
        bus = await JetStreamBus.connect(
            config.servers, name=f"ssr-ingest-check:{config.actor}", startup_timeout=timeout
        )
    except NatsUnavailable as exc:
        raise Unavailable(exc.message) from exc
    try:
        await bus.bind_buckets(subjects.DIRECTORY_BUCKET)
        keys = sorted(k for k in await bus.kv_keys(subjects.DIRECTORY_BUCKET) if k.startswith("v"))
        versions = []
        for key in keys:
            entry = await bus.kv_get(subjects.DIRECTORY_BUCKET, key)
            if entry is not None:
                versions.append(entry.value)
    except NatsUnavailable as exc:
        raise Unavailable(exc.message) from exc
    finally:
        await bus.close()
    try:
        return verify_chain(versions, pinned=pinned)
    except DirectoryError as exc:
        raise ConfigurationError(
            f"the broker's directory does not verify: {exc.message}", code="directory"
        ) from exc


async def check(config: IngestConfig, *, timeout: float = CONNECT_TIMEOUT_S) -> RuleSet:
    """Check what :meth:`Ingest.start` would: keys, authority key, policy and the rules
    against the directory (from disk, else read from NATS). Raises the error it finds."""
    from .._inputs import identity, policy

    keys = identity(config.keys)
    if keys.principal != config.actor:
        raise ConfigurationError(
            f"key file {config.keys} is for {keys.principal!r}, not {config.actor!r}", code="keys"
        )
    region_policy = policy(config.policy_file)
    directory = offline_directory(config)
    if directory is None:
        try:
            directory = await _online_directory(config, timeout)
        except Unavailable as exc:
            raise Unavailable(
                f"no directory on disk (directory_dir, {config.state_dir / 'directory'}) to "
                f"check the rules against, and NATS is unreachable: {exc.message}"
            ) from exc
    if directory.actor(config.actor) is None:
        raise ConfigurationError(
            f"actor {config.actor!r} is not in the directory (v{directory.version})", code="actor"
        )
    return RuleSet.load_file(config.rules_file, directory=directory, policy=region_policy)
