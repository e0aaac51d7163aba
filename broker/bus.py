"""The one boundary between the broker and NATS JetStream.

Everything the service does with NATS goes through :class:`JetStreamBus`:
connect (with failover across URLs), create or verify the streams and KV
buckets, publish with a dedupe id, read and write KV entries, fetch
submissions. nats-py exceptions are mapped here, and only here, to
:class:`broker.errors.NatsUnavailable` (transport) or to :class:`KvConflict`
(a compare-and-set lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue, _is_key_valid

from . import subjects
from .config import BrokerConfig, StreamSettings
from .errors import BrokerError, NatsUnavailable

log = logging.getLogger("ssr.bus")

_TRANSPORT_ERRORS = (
    nats.errors.Error,
    nats.js.errors.Error,
    asyncio.TimeoutError,
    OSError,
)


_WRONG_LAST_SEQUENCE = 10071  # JSStreamWrongLastSequenceErrF: a compare-and-set lost
_STORE_FAILED = 10077  # JSStreamStoreFailedF: e.g. "maximum messages per subject exceeded"

T = TypeVar("T")


class _Drops:
    """Wakes the requests in flight when the connection drops.

    nats-py keeps waiting for the reply to a request sent before a disconnect until its
    timeout, although that reply died with the old connection: every publish and KV call
    in flight during a NATS restart would stall its caller for the full 10 s.
    """

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def current(self) -> asyncio.Future[None]:
        """Done when the connection drops; shared by every request in flight (one future
        for all of them, not a waiting task each)."""
        if self._future is None or self._future.done():
            self._future = asyncio.get_running_loop().create_future()
        return self._future

    def dropped(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)
        self._future = None


class _Acks:
    """JetStream publishes awaited cheaply: each carries a reply subject under one
    wildcard inbox subscription of the connection, and the acknowledgement resolves a
    future found by its token.

    The same exchange as nats-py's ``js.publish`` without its per-call costs (a task, a
    ``wait_for``, a random token, a ``PubAck`` object, and the broker's own drop watch):
    the broker makes several JetStream writes for every message it routes. A dropped
    connection fails every publish in flight at once.
    """

    def __init__(self, drops: _Drops) -> None:
        self._drops = drops
        self._prefix = ""
        self._subscribing: asyncio.Lock | None = None
        self._tokens = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._watched: asyncio.Future[None] | None = None

    async def publish(
        self,
        nc: NatsClient,
        items: Sequence[tuple[str, bytes, dict[str, str] | None]],
        timeout: float,
    ) -> list[dict[str, Any]]:
        """Each (subject, data, headers) published in order, then every acknowledgement
        awaited: their JSON, in order. Raises nats-py's errors (``APIError`` for a refusal,
        ``TimeoutError``, ``NoStreamResponseError``, or what ``nc.publish`` raises, after
        which the rest of the items are not sent) or ``NatsUnavailable`` on a drop, for the
        first item that failed. Every item is due within ``timeout`` of the call."""
        if not self._prefix:
            await self._subscribe(nc)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        futures: list[asyncio.Future[Msg]] = []
        tokens: list[str] = []
        timer: asyncio.TimerHandle | None = None
        try:
            for subject, data, headers in items:
                self._watch_drops()  # a drop between two items fails those after it too
                # Unique (the counter) and not guessable (the random part), like nats-py's.
                token = f"{next(self._tokens)}-{secrets.token_hex(6)}"
                future: asyncio.Future[Msg] = loop.create_future()
                self._waiting[token] = future
                tokens.append(token)
                futures.append(future)
                await nc.publish(subject, data, reply=self._prefix + token, headers=headers)
            # One timer for them all, set once every future exists (at once if the
            # publishing itself took longer than the deadline).
            timer = loop.call_at(deadline, _expire, futures)
            return [_acknowledgement(await future) for future in futures]
        finally:
            if timer is not None:
                timer.cancel()
            for token in tokens:
                self._waiting.pop(token, None)
            for future in futures:  # no "exception was never retrieved" for the others
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()

    async def _subscribe(self, nc: NatsClient) -> None:
        if self._subscribing is None:
            self._subscribing = asyncio.Lock()
        async with self._subscribing:
            if not self._prefix:
                prefix = nc.new_inbox() + "."
                await nc.subscribe(prefix + "*", cb=self._answer)
                self._prefix = prefix

    async def _answer(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject[len(self._prefix) :])
        if future is not None and not future.done():
            future.set_result(msg)

    def _watch_drops(self) -> None:
        current = self._drops.current()
        if current is not self._watched:
            self._watched = current
            current.add_done_callback(self._fail_waiting)

    def _fail_waiting(self, _: asyncio.Future[None]) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(
                    NatsUnavailable("the NATS connection dropped during a publish")
                )


def _acknowledgement(msg: Msg) -> dict[str, Any]:
    """The JSON of a JetStream acknowledgement; its error as nats-py's exception."""
    if msg.headers and msg.headers.get("Status") == "503":
        raise nats.js.errors.NoStreamResponseError
    try:
        answer = json.loads(msg.data)
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            error = nats.js.errors.APIError.from_error(answer["error"])
        elif isinstance(answer, dict) and type(answer.get("seq")) is int:
            return answer
        else:
            raise ValueError("neither a sequence nor an error")
    except (ValueError, TypeError, AttributeError) as exc:
        raise NatsUnavailable(f"unreadable JetStream acknowledgement: {exc}") from exc
    raise error


def _expire(futures: list[asyncio.Future[Msg]]) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(TimeoutError())


PROBE_TIMEOUT_S = 2.0
PUBLISH_TIMEOUT_S = 10.0
SMALL_READ = 8  # read_stream reads up to this many messages one request each, more by consumer
READ_BATCH = 256
READ_CONSUMER_IDLE_S = 30.0  # a read consumer left behind (a crash) is removed this soon
MAX_KV_SCAN = 10_000  # entries one filtered KV listing reads at most
KV_SCAN_TIMEOUT_S = 10.0


async def _until_reachable(urls: tuple[str, ...]) -> None:
    """Return once some server accepts a TCP connection (the caller bounds the wait).

    nats-py's first connect, with unbounded reconnects, retries refused connections in a
    loop that can lose a cancellation (Python 3.11 ``wait_for``): a caller that gives up
    would then wait out its whole timeout. Probing here first keeps that loop for servers
    that answer, and a refused or silent server costs only this cancellable wait.
    """
    while True:
        for url in urls:
            parsed = urlsplit(url if "://" in url else f"nats://{url}")
            try:
                # Bounded per server: a host that drops packets must not hold up the others.
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    _, writer = await asyncio.open_connection(parsed.hostname, parsed.port or 4222)
            except (OSError, ValueError, TimeoutError):
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        await asyncio.sleep(0.25)


class KvConflict(BrokerError):
    """A KV create or compare-and-set found another value; re-read and decide again."""

    code = "kv_conflict"


class SubmitBacklogFull(NatsUnavailable):
    """JetStream holds as many of this actor's submissions as the stream allows
    (``submit_backlog_per_sender``): retry once the broker has taken some."""

    code = "submit_backlog_full"


class PublishRefused(BrokerError):
    """NATS refuses this message for good (larger than the server's max_payload)."""

    code = "too_large"


@dataclass(frozen=True)
class StreamEntry:
    seq: int
    subject: str
    data: bytes


@dataclass(frozen=True)
class KvEntry:
    value: bytes
    revision: int


def is_backlog_full(exc: nats.js.errors.APIError) -> bool:
    """True for the refusal of a publish beyond a stream's per-subject limit."""
    return exc.err_code == _STORE_FAILED and "per subject" in (exc.description or "")


class JetStreamBus:
    """A connected NATS client with the broker's streams and buckets."""

    def __init__(self, nc: NatsClient, js: JetStreamContext, drops: _Drops | None = None) -> None:
        self.nc = nc
        self.js = js
        self._kv: dict[str, KeyValue] = {}
        self._drops = drops or _Drops()
        self._acks = _Acks(self._drops)

    @classmethod
    async def connect(
        cls,
        urls: tuple[str, ...],
        *,
        config: BrokerConfig | None = None,
        name: str = "ssr-broker",
        on_state: Callable[[str], Awaitable[None]] | None = None,
        connect_timeout: float = 5.0,
        startup_timeout: float = 15.0,
        options: dict[str, Any] | None = None,
    ) -> JetStreamBus:
        """Connect, trying the URLs for at most ``startup_timeout`` seconds in all.

        Once connected, reconnects are unbounded: a running broker waits out any outage.
        """
        options = dict(options or {}) | {
            "servers": list(urls),
            "name": name,
            "connect_timeout": connect_timeout,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "allow_reconnect": True,
        }
        if config is not None and config.nats_creds is not None:
            options["user_credentials"] = str(config.nats_creds)
        if config is not None and config.nats_tls_ca is not None:
            options["tls"] = ssl.create_default_context(cafile=str(config.nats_tls_ca))
        drops = _Drops()

        async def disconnected() -> None:
            drops.dropped()
            if on_state is not None:
                await on_state("disconnected")

        options.update(disconnected_cb=disconnected)
        if on_state is not None:

            async def reconnected() -> None:
                await on_state("reconnected")

            last_error = ""

            async def error(exc: Exception) -> None:
                # While a server is down nats-py reports every reconnect attempt: say it once.
                nonlocal last_error
                text = str(exc) or type(exc).__name__
                log.log(logging.DEBUG if text == last_error else logging.WARNING, "nats: %s", text)
                last_error = text

            options.update(reconnected_cb=reconnected, error_cb=error)
        # With unbounded reconnects nats-py also retries a first connection forever: a broker
        # that cannot reach NATS at start would hang silently instead of saying so.
        nc = NatsClient()
        try:
            async with asyncio.timeout(startup_timeout):
                await _until_reachable(urls)
                await nc.connect(**options)
        except _TRANSPORT_ERRORS as exc:
            last = nc.last_error or exc
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 2.0)
            raise NatsUnavailable(
                f"cannot connect to NATS at {', '.join(urls)} within {startup_timeout:g} s: "
                f"{str(last) or type(last).__name__}"
            ) from exc
        return cls(nc, nc.jetstream(timeout=PUBLISH_TIMEOUT_S), drops)

    async def _request(self, op: Awaitable[T]) -> T:
        """Await one request, abandoned with ``NatsUnavailable`` if the connection drops first.

        Callers retry abandoned work; every write the broker makes is idempotent (dedupe ids,
        create-or-compare-and-set), so a request that did reach the server is harmless.
        """
        task = asyncio.ensure_future(op)
        dropped = self._drops.current()
        try:
            await asyncio.wait((task, dropped), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not task.done():
            task.cancel()
            raise NatsUnavailable("the NATS connection dropped during a request")
        return task.result()

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def close(self) -> None:
        if self.nc.is_closed:
            return
        # Everything the broker publishes is already acknowledged by JetStream, so there is
        # nothing to drain; draining pull subscriptions can stall until its timeout.
        with contextlib.suppress(*_TRANSPORT_ERRORS):
            await self.nc.flush(timeout=2)
        await self.nc.close()

    # --- layout -------------------------------------------------------------------------

    async def ensure_layout(self, settings: StreamSettings) -> None:
        """Create or update the streams and buckets; idempotent, safe with many brokers."""
        streams = [
            api.StreamConfig(
                name=subjects.SUBMIT_STREAM,
                subjects=[subjects.SUBMIT_WILDCARD],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE,
                num_replicas=settings.replicas,
                max_msg_size=settings.max_msg_bytes,
                duplicate_window=settings.duplicate_window_s,
                max_age=settings.deliver_max_age_s,
                # A per-sender bound on the shared work queue: fairness under a flood.
                max_msgs_per_subject=settings.submit_backlog_per_sender,
                discard=api.DiscardPolicy.NEW,
                discard_new_per_subject=True,
            ),
            api.StreamConfig(
                name=subjects.DELIVER_STREAM,
                subjects=[subjects.DELIVER_WILDCARD],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                num_replicas=settings.replicas,
                max_msg_size=settings.max_msg_bytes,
                duplicate_window=settings.duplicate_window_s,
                max_age=settings.deliver_max_age_s,
            ),
            api.StreamConfig(
                name=subjects.AUDIT_STREAM,
                subjects=[subjects.AUDIT_WILDCARD],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                num_replicas=settings.replicas,
                duplicate_window=settings.duplicate_window_s,
                max_age=settings.audit_max_age_s,
                deny_delete=True,
                deny_purge=True,
            ),
        ]
        try:
            for config in streams:
                await self._ensure_stream(config)
            for bucket, history, ttl in (
                (subjects.DIRECTORY_BUCKET, 64, None),
                (subjects.STATE_BUCKET, 16, None),
                (subjects.MESSAGES_BUCKET, 1, settings.message_state_ttl_s),
                (subjects.INDEX_BUCKET, 1, settings.message_state_ttl_s),
            ):
                # Bind an existing bucket rather than re-create it: a create request needs
                # the stream's peers for placement, and one may be down while a broker
                # restarts in a cluster.
                try:
                    self._kv[bucket] = await self.js.key_value(bucket)
                except nats.js.errors.BucketNotFoundError:
                    self._kv[bucket] = await self.js.create_key_value(
                        api.KeyValueConfig(
                            bucket=bucket,
                            history=history,
                            ttl=ttl,
                            replicas=settings.replicas,
                            storage=api.StorageType.FILE,
                        )
                    )
        except _TRANSPORT_ERRORS as exc:
            raise NatsUnavailable(f"cannot create streams: {exc}") from exc

    async def _ensure_stream(self, config: api.StreamConfig) -> None:
        assert config.name is not None
        try:
            info = await self.js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(config)
            return
        limit = config.max_msgs_per_subject
        if limit is not None and limit > 0 and info.config.max_msgs_per_subject != limit:
            config.max_msgs_per_subject = await self._per_subject_limit(config.name, limit)
        await self.js.update_stream(config)

    async def _per_subject_limit(self, stream: str, wanted: int) -> int:
        """The per-subject limit to set now: ``wanted``, or the largest backlog a subject
        holds if that is more. nats-server trims every subject to a lowered limit at once,
        oldest first, and those messages were acknowledged to their senders: a limit is
        only lowered once the backlog above it has drained (on a later start)."""
        info = await self.js.stream_info(stream, subjects_filter=">")
        largest = max((info.state.subjects or {}).values(), default=0)
        if largest > wanted:
            log.warning(
                "%s: a subject holds %d messages, more than the per-subject limit %d; "
                "the limit is %d until the backlog drains (lowered on a later start)",
                stream,
                largest,
                wanted,
                largest,
            )
            return largest
        return wanted

    # --- publish and consume --------------------------------------------------------------

    async def publish(self, subject: str, data: bytes, *, msg_id: str) -> int:
        """Publish with a JetStream dedupe id; returns the stream sequence."""
        (sequence,) = await self.publish_many([(subject, data, msg_id)])
        return sequence

    async def publish_many(self, items: Sequence[tuple[str, bytes, str]]) -> list[int]:
        """Publish each (subject, data, dedupe id) in order, then await every
        acknowledgement (no task per publish): the stream sequences, in order. Raises for
        the first that failed; items after a publish that raised are not sent, and those
        sent are deduplicated when the caller retries the batch."""
        where = items[0][0] if len(items) == 1 else f"{len(items)} subjects"
        try:
            acks = await self._acks.publish(
                self.nc,
                [(subject, data, {"Nats-Msg-Id": msg_id}) for subject, data, msg_id in items],
                PUBLISH_TIMEOUT_S,
            )
        except nats.errors.MaxPayloadError as exc:
            size = max(len(data) for _, data, _ in items)
            raise PublishRefused(f"{size} bytes exceed the server's max_payload") from exc
        except nats.js.errors.APIError as exc:
            if is_backlog_full(exc):
                raise SubmitBacklogFull(
                    f"{where}: the broker has not yet taken this sender's earlier "
                    "submissions; retry shortly"
                ) from exc
            raise NatsUnavailable(f"publish to {where} failed: {exc}") from exc
        except _TRANSPORT_ERRORS as exc:
            raise NatsUnavailable(f"publish to {where} failed: {exc}") from exc
        return [int(ack["seq"]) for ack in acks]

    async def _write(
        self, subject: str, data: bytes, headers: dict[str, str] | None
    ) -> dict[str, Any]:
        """One JetStream write (a stream publish or a KV write), its ack's JSON."""
        (ack,) = await self._acks.publish(self.nc, [(subject, data, headers)], PUBLISH_TIMEOUT_S)
        return ack

    async def submissions(self, config: BrokerConfig) -> JetStreamContext.PullSubscription:
        return await self.pull(
            subjects.SUBMIT_WILDCARD,
            stream=subjects.SUBMIT_STREAM,
            durable=subjects.BROKER_CONSUMER,
            ack_wait_s=config.ack_wait_s,
            max_deliver=config.max_deliver,
            max_ack_pending=1024,
        )

    async def pull(
        self,
        subject: str,
        *,
        stream: str,
        durable: str,
        ack_wait_s: float,
        max_deliver: int = -1,
        max_ack_pending: int = 1024,
    ) -> JetStreamContext.PullSubscription:
        """Bind (creating it if needed) a durable pull consumer with explicit acks."""
        consumer = api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            max_deliver=max_deliver,
            max_ack_pending=max_ack_pending,
        )
        try:
            return await self.js.pull_subscribe(
                subject, durable=durable, stream=stream, config=consumer
            )
        except _TRANSPORT_ERRORS as exc:
            raise NatsUnavailable(f"cannot subscribe to {subject}: {exc}") from exc

    @staticmethod
    async def fetch(
        sub: JetStreamContext.PullSubscription, batch: int, timeout: float
    ) -> list[Msg]:
        try:
            return await sub.fetch(batch, timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except _TRANSPORT_ERRORS as exc:
            raise NatsUnavailable(f"fetch failed: {exc}") from exc

    async def pending(self) -> int:
        try:
            info = await self._request(
                self.js.consumer_info(subjects.SUBMIT_STREAM, subjects.BROKER_CONSUMER)
            )
        except (*_TRANSPORT_ERRORS, NatsUnavailable):
            return -1
        return int(info.num_pending or 0)

    # --- reading a stream back ------------------------------------------------------------

    async def stream_bounds(self, stream: str) -> tuple[int, int]:
        """The stream's first and last sequence (``(0, 0)`` or ``(n+1, n)`` when empty)."""
        try:
            info = await self._request(self.js.stream_info(stream))
        except _TRANSPORT_ERRORS as exc:
            raise NatsUnavailable(f"stream info {stream} failed: {exc}") from exc
        return int(info.state.first_seq), int(info.state.last_seq)

    async def read_stream(
        self, stream: str, subject: str, start_seq: int, limit: int
    ) -> list[StreamEntry]:
        """Up to ``limit`` messages at or after ``start_seq``, in stream order.

        Deleted sequences are skipped (callers see the gap in ``StreamEntry.seq``).
        """
        seq = max(start_seq, 1)
        if limit > SMALL_READ:
            _, last = await self.stream_bounds(stream)
            if last < seq:
                return []
            if last - seq >= SMALL_READ:
                return await self._read_by_consumer(stream, subject, seq, last, limit)
        entries: list[StreamEntry] = []
        try:
            for _ in range(limit):
                try:
                    raw = await self._request(
                        self.js.get_msg(stream, seq=seq, subject=subject, next=True)
                    )
                except nats.js.errors.NotFoundError:
                    break
                if raw.seq is None:
                    break
                entries.append(StreamEntry(int(raw.seq), raw.subject or "", raw.data or b""))
                seq = int(raw.seq) + 1
        except _TRANSPORT_ERRORS as exc:
            raise NatsUnavailable(f"reading {stream} from {seq} failed: {exc}") from exc
        return entries

    async def _read_by_consumer(
        self, stream: str, subject: str, start_seq: int, last_seq: int, limit: int
    ) -> list[StreamEntry]:
        """``read_stream`` for a long range (to ``last_seq``, the stream's last sequence a
        moment ago): a short-lived consumer fetches it in batches, a few requests in all
        instead of one per message."""
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start_seq,
            ack_policy=api.AckPolicy.NONE,
            filter_subject=subject,
            inactive_threshold=READ_CONSUMER_IDLE_S,
            num_replicas=1,
            mem_storage=True,
        )
        entries: list[StreamEntry] = []
        try:
            sub = await self._request(self.js.pull_subscribe(subject, stream=stream, config=config))
            try:
                while len(entries) < limit and (not entries or entries[-1].seq < last_seq):
                    try:
                        batch = await sub.fetch(min(limit - len(entries), READ_BATCH), timeout=2.0)
                    except nats.errors.TimeoutError:
                        break  # the rest was deleted (or not written after all)
                    entries += (
                        StreamEntry(m.metadata.sequence.stream, m.subject, m.data) for m in batch
                    )
            finally:
                with contextlib.suppress(*_TRANSPORT_ERRORS):
                    name = (await sub.consumer_info()).name
                    await sub.unsubscribe()
                    await self.js.delete_consumer(stream, name)
        except _TRANSPORT_ERRORS as exc:
            raise NatsUnavailable(f"reading {stream} from {start_seq} failed: {exc}") from exc
        return entries[:limit]

    async def last_on_subject(self, stream: str, subject: str) -> StreamEntry | None:
        """The newest message on ``subject`` in ``stream``, or None."""
        try:
            raw = await self._request(self.js.get_msg(stream, subject=subject))
        except nats.js.errors.NotFoundError:
            return None
        except _TRANSPORT_ERRORS as exc:
            raise NatsUnavailable(f"reading the last {subject} failed: {exc}") from exc
        if raw.seq is None:
            return None
        return StreamEntry(int(raw.seq), raw.subject or "", raw.data or b"")

    # --- KV -----------------------------------------------------------------------------

    async def bind_buckets(self, *buckets: str) -> None:
        """Open KV buckets that a broker created (clients never create them)."""
        try:
            for bucket in buckets:
                self._kv[bucket] = await self._request(self.js.key_value(bucket))
        except _TRANSPORT_ERRORS as exc:
            raise NatsUnavailable(f"cannot open KV buckets: {exc}") from exc

    async def kv_get(self, bucket: str, key: str) -> KvEntry | None:
        try:
            entry = await self._request(self._kv[bucket].get(key))
        except nats.js.errors.KeyNotFoundError:
            return None
        except _TRANSPORT_ERRORS as exc:
            raise NatsUnavailable(f"kv get {bucket}/{key} failed: {exc}") from exc
        if entry.value is None or entry.revision is None:
            return None
        return KvEntry(entry.value, entry.revision)

    async def kv_create(self, bucket: str, key: str, value: bytes) -> int:
        try:
            return await self._kv_write(bucket, key, value, last=0)
        except KvConflict:
            pass  # or deleted: nats-py's create re-creates a key behind a delete marker
        except _TRANSPORT_ERRORS as exc:
            raise NatsUnavailable(f"kv create {bucket}/{key} failed: {exc}") from exc
        try:
            return int(await self._request(self._kv[bucket].create(key, value)))
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise KvConflict(f"{bucket}/{key} exists") from exc
        except _TRANSPORT_ERRORS as exc:
            raise NatsUnavailable(f"kv create {bucket}/{key} failed: {exc}") from exc

    async def kv_update(self, bucket: str, key: str, value: bytes, revision: int) -> int:
        try:
            return await self._kv_write(bucket, key, value, last=revision)
        except KvConflict as exc:
            raise KvConflict(f"{bucket}/{key} changed") from exc
        except _TRANSPORT_ERRORS as exc:
            raise NatsUnavailable(f"kv update {bucket}/{key} failed: {exc}") from exc

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        try:
            return await self._kv_write(bucket, key, value)
        except _TRANSPORT_ERRORS as exc:
            raise NatsUnavailable(f"kv put {bucket}/{key} failed: {exc}") from exc

    async def _kv_write(
        self, bucket: str, key: str, value: bytes, *, last: int | None = None
    ) -> int:
        """A KV put, or with ``last`` a compare-and-set (0: the key must not exist), as
        nats-py's KV writes it, through the cheap publish path; ``KvConflict`` when the
        key's last revision is not ``last``."""
        if bucket not in self._kv:
            raise KeyError(bucket)  # as nats-py's KV: a bucket this broker never bound
        if not _is_key_valid(key):
            raise nats.js.errors.InvalidKeyError(key)
        headers = None if last is None else {"Nats-Expected-Last-Subject-Sequence": str(last)}
        try:
            ack = await self._write(f"$KV.{bucket}.{key}", value, headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                raise KvConflict(f"{bucket}/{key}: not at revision {last}") from exc
            raise
        return int(ack["seq"])

    async def kv_delete(self, bucket: str, key: str) -> None:
        """Delete ``key`` (a delete marker; history keeps the old values until purged)."""
        try:
            await self._request(self._kv[bucket].delete(key))
        except _TRANSPORT_ERRORS as exc:
            raise NatsUnavailable(f"kv delete {bucket}/{key} failed: {exc}") from exc

    async def kv_values(self, bucket: str, key: str) -> AsyncIterator[bytes]:
        """Every value ``key`` takes from now on (the current one first, if any).

        Ends when the watch breaks (e.g. the connection is lost); the caller watches again.
        """
        try:
            watcher = await self._kv[bucket].watch(key)
        except _TRANSPORT_ERRORS as exc:
            raise NatsUnavailable(f"kv watch {bucket}/{key} failed: {exc}") from exc
        try:
            async for entry in watcher:
                if entry is not None and entry.value:
                    yield entry.value
        finally:
            with contextlib.suppress(*_TRANSPORT_ERRORS):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def kv_keys(self, bucket: str, pattern: str | None = None) -> list[str]:
        """Every key of ``bucket``, or those matching the subject filter ``pattern``.

        A pattern (``storm-1.>``) is filtered by the server (an ordered consumer on
        those keys only; nats-py's ``keys(filters=...)`` reads every key and filters here).
        """
        if pattern is not None:
            return [key for key, _ in await self._kv_scan(bucket, pattern, meta_only=True)]
        try:
            return list(await self._request(self._kv[bucket].keys()))
        except nats.js.errors.NoKeysError:
            return []
        except _TRANSPORT_ERRORS as exc:
            raise NatsUnavailable(f"kv keys {bucket} failed: {exc}") from exc

    async def kv_entries(
        self, bucket: str, pattern: str, *, limit: int = MAX_KV_SCAN
    ) -> list[tuple[str, bytes]]:
        """The current ``(key, value)`` of at most ``limit`` keys matching ``pattern``, in the
        order they were last written (one server-filtered pass, no get per key)."""
        return await self._kv_scan(bucket, pattern, limit=limit)

    async def _kv_scan(
        self, bucket: str, pattern: str, *, limit: int = MAX_KV_SCAN, meta_only: bool = False
    ) -> list[tuple[str, bytes]]:
        async def scan() -> list[tuple[str, bytes]]:
            kv = self._kv[bucket]
            watcher = await kv.watch(pattern, ignore_deletes=True, meta_only=meta_only)
            found: list[tuple[str, bytes]] = []
            try:
                async for entry in watcher:
                    if entry is None:  # nats-py's marker: every current value was delivered
                        break
                    if meta_only or entry.value:
                        found.append((entry.key, entry.value or b""))
                    if len(found) >= limit:
                        break
            finally:
                with contextlib.suppress(*_TRANSPORT_ERRORS):
                    await watcher.stop()  # type: ignore[no-untyped-call]
            return found

        try:
            async with asyncio.timeout(KV_SCAN_TIMEOUT_S):
                return await self._request(scan())
        except _TRANSPORT_ERRORS as exc:
            raise NatsUnavailable(f"kv scan {bucket}/{pattern} failed: {exc}") from exc
