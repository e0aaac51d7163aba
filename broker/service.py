"""The broker service: lifecycle around the router.

``Service(config)`` as an async context manager: start the embedded
nats-server when no URL is configured, connect, create the streams and
buckets, load the directory (data folder and KV, newest verified wins), mode
and incidents, then run three loops — consume submissions, escalate missed
deadlines, refresh shared state other brokers changed — and serve HTTP
(``/healthz``, ``/readyz``, ``/metrics``). ``stop()`` (or SIGINT/SIGTERM via
``run``) stops consuming, lets the message in hand finish, closes NATS and
stops the embedded server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from broker.core import CoreError, Incident, Mode, VerifiedDirectory, verify_directory
from broker.core.auditchain import AuditChainError
from broker.core.notices import BrokerIdentity

from . import datadir, subjects
from .audit import AuditKind
from .audit_index import AuditFollower, AuditIndex
from .auditlog import AuditSealer, AuditWatch, directory_versions, verify_stream
from .bus import JetStreamBus
from .config import BrokerConfig
from .console import add_console_routes
from .embedded import EmbeddedNats
from .errors import NatsUnavailable
from .lanes import Lanes
from .metrics import BrokerMetrics
from .officer_api import OfficerContext, add_officer_routes
from .router import MAX_INCIDENT_BYTES, BrokerState, Router, wall_clock_ms
from .web import HttpServer, make_app

log = logging.getLogger("ssr.service")
AUX_STOP_TIMEOUT_S = 2.0
FETCH_TIMEOUT_S = 0.25  # one fetch of submissions waits at most this long (and a stop)


class Service:
    def __init__(self, config: BrokerConfig, *, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.metrics = BrokerMetrics(registry or CollectorRegistry())
        self.embedded: EmbeddedNats | None = None
        self.bus: JetStreamBus | None = None
        self.router: Router | None = None
        self.http: HttpServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._streams_ready = False
        self._lanes = Lanes(config.max_in_flight)  # submissions being routed
        self.sealer: AuditSealer | None = None
        self.audit_index: AuditIndex | None = None
        self.audit_watch = AuditWatch()

    # --- health (for broker.web) ----------------------------------------------------------

    def live(self) -> bool:
        return not self._stopping.is_set() and all(not t.done() for t in self._tasks)

    def ready(self) -> dict[str, bool]:
        return {
            "nats_connected": self.bus is not None and self.bus.connected,
            "streams_ready": self._streams_ready,
            "consuming": bool(self._tasks) and self.live(),
        }

    @property
    def nats_url(self) -> str:
        if self.embedded is not None:
            return self.embedded.url
        return self.config.nats_urls[0]

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Service:
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
        config = self.config
        pinned = datadir.pinned_authority(config)
        directory = datadir.verified_directory(datadir.directory_files(config), pinned)
        identity = datadir.broker_identity(config, directory)
        policy = datadir.policy(config)
        try:
            urls = config.nats_urls
            if config.embedded:
                self.embedded = EmbeddedNats(config.nats_dir)
                await self.embedded.start()
                urls = (self.embedded.url,)
            self.bus = await JetStreamBus.connect(
                urls,
                config=config,
                name=f"ssr-broker:{identity.broker}",
                on_state=self._nats_state,
                startup_timeout=config.nats_startup_timeout_s,
            )
            self.metrics.nats_connected.set(1)
            await self._ensure_layout(config)
            self._streams_ready = True
            state = BrokerState(directory=directory, policy=policy, pinned_authority=pinned)
            self.router = Router(
                bus=self.bus,
                state=state,
                identity=identity,
                metrics=self.metrics,
                resend_window_ms=int(config.streams.duplicate_window_s * 1000),
            )
            self.sealer = AuditSealer(self.bus, identity, wall_clock_ms, lambda: state.directory)
            await self._publish_directory_files(datadir.directory_files(config))
            await self.refresh_state()
            submissions = await self.bus.submissions(config)
            # HTTP before the loops, and inside this block: a port already in use must not
            # leave a half-started broker routing (and an embedded nats-server orphaned).
            self.audit_index = AuditIndex(config.audit_index_file)
            app = make_app(self.metrics, self)
            add_officer_routes(app, self._officer_context(identity))
            add_console_routes(app)
            self.http = HttpServer(app, host=config.http_host, port=config.http_port)
            await self.http.start()
        except BaseException:
            await self.stop()
            raise
        self._tasks = [
            asyncio.create_task(self._consume(submissions), name="consume"),
            asyncio.create_task(self._every(config.sweep_interval_s, self._sweep), name="sweep"),
            asyncio.create_task(self._every(config.join_interval_s, self._joins), name="joins"),
            asyncio.create_task(
                self._every(config.sweep_interval_s, self.refresh_state), name="state"
            ),
            asyncio.create_task(self._follow_mode(), name="mode"),
            asyncio.create_task(
                self._every(config.audit_seal_interval_s, self.seal_audit), name="seal"
            ),
            asyncio.create_task(self._verify_audit_loop(), name="verify"),
            asyncio.create_task(
                AuditFollower(self.bus, self.audit_index).run(self._stopping), name="index"
            ),
        ]
        log.info("broker %s ready; NATS %s; HTTP %s", identity.broker, self.nats_url, self.http.url)

    async def stop(self) -> None:
        self._stopping.set()
        # Stop taking submissions: the consumer ends after its current fetch (at most its
        # short timeout), handing back what that fetch brought (nak) rather than dropping it
        # with a cancelled fetch; then let the ones being routed finish. Those still waiting
        # in a lane are handed back at once, so a stop never leaves work waiting out the
        # ack wait.
        if self._tasks:
            consume = self._tasks[0]
            await asyncio.wait((consume,), timeout=FETCH_TIMEOUT_S + AUX_STOP_TIMEOUT_S)
            consume.cancel()
        if not await self._lanes.drain(self.config.shutdown_timeout_s):
            log.warning("submissions still routing at the shutdown timeout; JetStream redelivers")
            self._lanes.cancel()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # The helpers (sweep, state, mode watch) hold no work; a nats-py call caught
            # mid-setup may take a moment to honour the cancel, and must not hold up the stop.
            _, stragglers = await asyncio.wait(self._tasks, timeout=AUX_STOP_TIMEOUT_S)
            for task in stragglers:
                log.warning("task %s did not stop in time; abandoning it", task.get_name())
        self._tasks = []
        if self.http is not None:
            await self.http.stop()
        if self.audit_index is not None:
            self.audit_index.close()
            self.audit_index = None
        if self.bus is not None:
            await self.bus.close()
            self.metrics.nats_connected.set(0)
        if self.embedded is not None:
            await self.embedded.stop()

    async def run(self) -> None:
        """Run until SIGINT or SIGTERM, then stop cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        async with self:
            await self._stopping.wait()

    # --- loops --------------------------------------------------------------------------

    async def _consume(self, submissions: object) -> None:
        """Take submissions in stream order and route them in lanes: one sender's in the
        order taken, different senders' concurrently (``broker.lanes``)."""
        assert self.bus is not None
        assert self.router is not None
        bus, router, lanes = self.bus, self.router, self._lanes
        while not self._stopping.is_set():
            await lanes.wait_for_room()
            batch = min(self.config.fetch_batch, lanes.room())
            try:
                messages = await bus.fetch(submissions, batch, timeout=FETCH_TIMEOUT_S)  # type: ignore[arg-type]
            except NatsUnavailable as exc:
                log.warning("%s", exc.message)
                await asyncio.sleep(0.5)
                continue
            except Exception:  # never stop taking submissions for good
                log.exception("fetching submissions failed; retrying")
                self.metrics.count_error("decide")
                await asyncio.sleep(1.0)
                continue
            for msg in messages:
                job = functools.partial(self._route_one, router, msg)
                lanes.start(msg.subject, job, barrier=router.is_barrier(msg.subject, msg.data))
            pending = await bus.pending()
            if pending >= 0:
                self.metrics.consumer_pending.set(pending)

    async def _route_one(self, router: Router, msg: Msg) -> None:
        if self._stopping.is_set():  # stopping: hand it back to other brokers now
            with contextlib.suppress(Exception):
                await msg.nak()
            return
        redelivered = msg.metadata.num_delivered > 1
        if redelivered:
            self.metrics.redelivered.inc()
        try:
            await router.route(
                msg.subject,
                msg.data,
                redelivered=redelivered,
                sequence=msg.metadata.sequence.stream,
            )
        except NatsUnavailable as exc:
            log.warning("will retry a submission: %s", exc.message)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)
            return
        except Exception:  # a bug must not lose the message: retry it later
            log.exception("routing failed; the submission will be redelivered")
            self.metrics.count_error("decide")
            with contextlib.suppress(Exception):
                await msg.nak(delay=5.0)
            return
        with contextlib.suppress(Exception):  # a lost ack means a deduplicated retry
            await msg.ack()

    async def _every(self, seconds: float, job: Callable[[], Awaitable[None]]) -> None:
        while not self._stopping.is_set():
            await asyncio.sleep(seconds)
            await self._guarded(job)

    async def _guarded(self, job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except NatsUnavailable as exc:
            log.warning("%s", exc.message)
        except Exception:
            log.exception("periodic job failed")
            self.metrics.count_error("sweep")

    async def _ensure_layout(self, config: BrokerConfig) -> None:
        """Create or bind the streams and buckets, retrying within the start-up timeout: a
        cluster that has just started may refuse to place a replicated stream until its
        peers are current ("no suitable peers for placement")."""
        assert self.bus is not None
        deadline = time.monotonic() + config.nats_startup_timeout_s
        while True:
            try:
                await self.bus.ensure_layout(config.streams)
                return
            except NatsUnavailable as exc:
                if time.monotonic() >= deadline:
                    raise
                log.warning("%s; trying again", exc.message)
                await asyncio.sleep(0.5)

    async def _sweep(self) -> None:
        assert self.router is not None
        await self.router.sweep()

    async def _joins(self) -> None:
        assert self.router is not None
        await self.router.process_joins()

    # --- the audit trail -----------------------------------------------------------------

    def _officer_context(self, identity: BrokerIdentity) -> OfficerContext:
        assert self.bus is not None
        assert self.router is not None
        assert self.audit_index is not None
        bus, state = self.bus, self.router.state

        async def versions() -> list[VerifiedDirectory]:
            found = await directory_versions(
                bus, state.pinned_authority, cache=self.audit_watch.directories
            )
            return found or [state.directory]

        return OfficerContext(
            index=self.audit_index,
            identity=identity,
            policy=state.policy,
            directory=lambda: state.directory,
            directory_versions=versions,
            audit=self._officer_audit,
            audit_status=self.audit_watch.status,
            clock=wall_clock_ms,
        )

    async def _officer_audit(
        self,
        kind: AuditKind,
        *,
        officer: str,
        actor: str | None = None,
        message: str | None = None,
        detail: str = "",
    ) -> None:
        """Every officer query is an audit event of its own (a fresh key: two identical
        queries are two events, not one deduplicated)."""
        assert self.router is not None
        await self.router.audit(
            kind,
            key=secrets.token_hex(16),
            actor=actor,
            officer=officer,
            message=message,
            detail=detail,
        )

    async def seal_audit(self) -> None:
        """Seal new audit events (``broker.auditlog``); a gap in the stream is an alarm."""
        assert self.sealer is not None
        for _ in range(64):  # catch up a backlog, bounded per round
            try:
                checkpoint = await self.sealer.seal()
            except AuditChainError as exc:
                log.error("audit trail cannot be sealed: %s", exc.message)
                self.audit_watch.seal_error = exc.message
                self.metrics.audit_verified.set(0)
                return
            self.audit_watch.seal_error = None
            if checkpoint is None:
                return
            self.metrics.audit_checkpoints.inc()
            if checkpoint.last - checkpoint.first + 1 < self.sealer.max_leaves:
                return

    async def verify_audit(self) -> None:
        """Verify the stored trail and publish the outcome (metrics, officers' API).

        Only the part after the latest checkpoint the previous clean check verified is
        read; the whole trail (and every directory version) at start-up, after a check
        that found something or failed, and at least every ``audit_full_verify_interval_s``
        (``AuditWatch.begin``). The outcome describes the whole trail either way.
        """
        assert self.bus is not None
        assert self.router is not None
        state, watch = self.router.state, self.audit_watch
        check = watch.begin(self.config.audit_full_verify_interval_s)
        versions = await directory_versions(
            self.bus, state.pinned_authority, cache=watch.directories, reread=check.full
        )
        part = await verify_stream(self.bus, versions or [state.directory], start=check.start)
        report = watch.finish(check, part, wall_clock_ms())
        log.debug(
            "audit trail checked (%s): %d new events, sealed through %d",
            "full" if check.start is None else f"from checkpoint {check.start.number}",
            part.events,
            report.sealed_through,
        )
        self.metrics.audit_verified.set(1 if self.audit_watch.verified else 0)
        self.metrics.audit_sealed_through.set(report.sealed_through)
        for finding in report.findings[:20]:
            log.error("audit trail: %s at %s: %s", finding.problem, finding.seq, finding.detail)

    async def _verify_audit_loop(self) -> None:
        await asyncio.sleep(min(5.0, self.config.audit_verify_interval_s))
        await self._guarded(self.verify_audit)
        await self._every(self.config.audit_verify_interval_s, self.verify_audit)

    async def _nats_state(self, state: str) -> None:
        if state == "disconnected":
            self.metrics.nats_connected.set(0)
            self.metrics.nats_disconnects.inc()
        else:
            self.metrics.nats_connected.set(1)
            self.metrics.nats_reconnects.inc()

    # --- shared state -------------------------------------------------------------------

    async def _publish_directory_files(self, versions: list[bytes]) -> None:
        assert self.bus is not None
        assert self.router is not None
        current = None
        for raw in versions:
            current = verify_directory(
                raw, pinned=self.router.state.pinned_authority, previous=current
            )
            key = subjects.directory_key(current.version)
            if await self.bus.kv_get(subjects.DIRECTORY_BUCKET, key) is None:
                await self.bus.kv_put(subjects.DIRECTORY_BUCKET, key, raw)

    async def _follow_mode(self) -> None:
        """Apply a mode change made through any broker at once, not at the next refresh.

        A broker that routed under the old mode for seconds after höjd beredskap was
        declared would skip the overlay's rules; the periodic refresh stays as a fallback.
        """
        assert self.bus is not None
        assert self.router is not None
        while not self._stopping.is_set():
            try:
                async for value in self.bus.kv_values(subjects.STATE_BUCKET, subjects.MODE_KEY):
                    with contextlib.suppress(ValueError):
                        self.router.state.mode = Mode(value.decode())
                        self.metrics.set_mode(self.router.state.mode.value)
            except NatsUnavailable as exc:
                log.warning("%s", exc.message)
            await asyncio.sleep(1.0)  # the watch ended: watch again

    async def refresh_state(self) -> None:
        """Read mode, incidents and newer directory versions that any broker wrote.

        Everything is read first and applied at once, and only if this broker's router
        changed no state meanwhile: a refresh that read the KV just before the router wrote
        a new incident or mode would otherwise roll that change back until the next refresh
        (and refuse the incident's next message as ``incident_unknown``).
        """
        assert self.bus is not None
        assert self.router is not None
        state = self.router.state
        changes = state.changes
        mode_entry = await self.bus.kv_get(subjects.STATE_BUCKET, subjects.MODE_KEY)
        mode = state.mode
        if mode_entry is not None:
            with contextlib.suppress(ValueError):
                mode = Mode(mode_entry.value.decode())
        incidents: dict[str, Incident] = {}
        for key, value in await self.bus.kv_entries(
            subjects.STATE_BUCKET, subjects.INCIDENT_PATTERN
        ):
            try:
                incident = Incident.parse(value, max_bytes=MAX_INCIDENT_BYTES)
            except CoreError:
                log.error("unreadable incident record %s", key)
                continue
            incidents[incident.id] = incident
        directory = state.directory
        while True:  # newer directory versions another broker accepted
            key = subjects.directory_key(directory.version + 1)
            entry = await self.bus.kv_get(subjects.DIRECTORY_BUCKET, key)
            if entry is None:
                break
            try:
                directory = verify_directory(
                    entry.value, pinned=state.pinned_authority, previous=directory
                )
            except CoreError as exc:
                log.error("directory %s in KV does not verify: %s", key, exc)
                break
        if state.changes != changes:
            return  # the router changed state while we read: the next refresh sees it all
        state.mode, state.incidents, state.directory = mode, incidents, directory
        self.metrics.set_mode(mode.value)
        self.metrics.set_open_incidents(i.status for i in incidents.values() if i.is_open)
        self.metrics.directory_version.set(directory.version)
