"""The client library: how an actor's own system sends and receives through ssr-broker.

    async with Client.connect(
        servers=["nats://127.0.0.1:4222"],
        actor="nacka",
        keys="keys/nacka.key",
        authority_key="authority.pub",
        state_dir="state/nacka",
    ) as client:
        handle = await client.send(
            groups=["kommuner"], payload={"text": "Lägesbild 14:00"},
            label="INTERN", tlp="GREEN", type="situation_report",
        )
        await handle.accepted()                  # raises Rejected with the reason code
        async for message in client.messages():  # verified, decrypted, deduplicated
            await message.acknowledge(note="on it")

What happens underneath (see ``docs/integrating.md`` and ``schemas/PROTOCOL.md`` §20):

- **send** resolves the addressees in the verified directory, builds the
  signed, encrypted envelope with the core, writes it to the on-disk outbox
  and returns. A publisher task drains the outbox in order and removes a
  message only once JetStream acknowledged it, so sending works while NATS
  is down and survives restarts; the message id is the JetStream dedupe id,
  and the broker refuses a second copy after the duplicate window (a
  ``replay`` that the client recognises as its own earlier submission).
- **receive**: a task pulls the actor's delivery subject. Notices (signed by
  a broker) and receipts (signed by recipients) update the send handles.
  An envelope is verified and decrypted, the label re-checked against this
  actor's clearance, its delivered receipt queued in the outbox, and the
  envelope admitted to the on-disk inbox; only then is the delivery
  acknowledged. :meth:`Client.messages` hands each admitted message
  to the application once, in arrival order.
- **directory**: verified against the pinned authority key, cached in the
  state folder (so the client can start while NATS is down), and followed:
  newer versions in the broker's directory bucket are verified and adopted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from broker import subjects
from broker.core import (
    Control,
    CoreError,
    Header,
    Identity,
    Incident,
    Label,
    MessageType,
    NoticeBody,
    NoticeKind,
    OpenedEnvelope,
    OpenError,
    Policy,
    Priority,
    ReceiptKind,
    RecipientKey,
    Reference,
    Status,
    Tlp,
    VerifiedDirectory,
    build_envelope,
    check_receipt_matches,
    crypto,
    make_receipt,
    open_envelope,
    read_envelope,
    verify_directory,
    verify_notice,
    verify_receipt,
)

from . import _inputs
from ._errors import (
    AddressError,
    ClientError,
    ClosedError,
    ConfigurationError,
    DeliveryTimeout,
    DirectoryRefused,
    Expired,
    Rejected,
    SendError,
    StoreError,
    Unavailable,
)
from ._handles import MessageStatus, RecipientStatus, SendHandle, SendState, wait_for_event
from ._inbox import Inbox
from ._message import Message
from ._outbox import Outbox, OutboxItem
from ._transport import Delivery, Transport

__all__ = ["Client", "Message", "MessageStatus", "RecipientStatus", "SendHandle", "SendState"]

log = logging.getLogger("ssr.client")

MAX_TRACKED = 100_000  # send handles kept in memory; beyond it the oldest are forgotten
FETCH_BATCH = 32
RETRY_MIN_S, RETRY_MAX_S = 0.2, 5.0
# A publish fails while a stream elects a new leader (a few seconds after a NATS node is
# lost): retry often enough that sending resumes within about a second of the election.
PUBLISH_RETRY_MAX_S = 1.0
DIRECTORY_POLL_S = 5.0
PURGE_EVERY_S = 600.0
EXPIRY_CHECK_S = 1.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _stop(tasks: list[asyncio.Task[None]], actor: str, timeout: float = 5.0) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again while any still runs: nats-py
    waits with ``asyncio.wait_for``, which on Python 3.11 can swallow a cancellation."""
    deadline = time.monotonic() + timeout
    pending = {t for t in tasks if not t.done()}
    while pending and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in pending:
        log.warning("%s: task %s did not stop in time", actor, task.get_name())


class Client:
    """One actor's connection to ssr-broker. Use ``async with Client.connect(...)``."""

    def __init__(
        self,
        *,
        servers: Sequence[str],
        actor: str,
        keys: Identity | str | os.PathLike[str] | Sequence[Identity | str | os.PathLike[str]],
        authority_key: bytes | str | os.PathLike[str],
        state_dir: str | os.PathLike[str],
        policy: Policy | str | os.PathLike[str] | None = None,
        directory: Sequence[bytes] = (),
        durable: str | None = None,
        connect_timeout: float = 10.0,
        nats_creds: str | os.PathLike[str] | None = None,
        nats_tls_ca: str | os.PathLike[str] | None = None,
    ) -> None:
        if not servers or not all(isinstance(s, str) and s for s in servers):
            raise ConfigurationError("servers: give at least one NATS URL", code="servers")
        self.identities = _inputs.identities(keys)
        self.identity = self.identities[0]  # signs; the others only open (key rotation)
        for identity in self.identities:
            if identity.principal != actor:
                raise ConfigurationError(
                    f"key file is for {identity.principal!r}, not {actor!r}", code="keys"
                )
        self.actor = actor
        self._subject = subjects.submit_subject(actor)
        self.servers = tuple(servers)
        self.pinned = _inputs.authority_key(authority_key)
        self.policy = _inputs.policy(policy)
        self.state_dir = Path(state_dir)
        self.durable = durable or f"ssr-client-{actor}"
        self.connect_timeout = connect_timeout
        self._creds = Path(nats_creds) if nats_creds else None
        self._tls_ca = Path(nats_tls_ca) if nats_tls_ca else None
        self._seed = tuple(directory)
        self._directory: VerifiedDirectory | None = None
        self._transport: Transport | None = None
        self._outbox: Outbox | None = None
        self._inbox: Inbox | None = None
        self._handles: OrderedDict[str, SendHandle] = OrderedDict()  # by submission hash
        self._by_id: dict[str, SendHandle] = {}
        self._incidents: dict[str, Incident] = {}
        self._directory_verdicts: dict[str, asyncio.Future[None]] = {}
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._refused_directories: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox_ready = asyncio.Event()
        self._arrived = asyncio.Event()
        self._online = asyncio.Event()
        self._closed = False
        self.refused = 0  # envelopes received that did not verify, open or pass the label check

    @classmethod
    def connect(cls, **kwargs: Any) -> Client:
        """A client to use as ``async with Client.connect(...) as client`` (arguments as
        for :class:`Client`)."""
        return cls(**kwargs)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the state folder, connect (or start offline on a cached directory), start tasks.

        Raises :class:`Unavailable` if NATS cannot be reached within ``connect_timeout`` and
        no verified directory is cached, and :class:`DirectoryRefused` if a cached or given
        directory does not verify.
        """
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            (self.state_dir / "directory").mkdir(exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigurationError(
                f"state folder {self.state_dir}: {exc}", code="state_dir"
            ) from exc
        self._outbox = Outbox(self.state_dir / "outbox.sqlite", clock=lambda: _now_ms() // 1000)
        try:
            self._inbox = Inbox(
                self.state_dir / "inbox.sqlite", leeway=self.policy.limits.clock_skew_seconds
            )
            self._load_directory()
            try:
                await self._go_online(self.connect_timeout)
            except Unavailable:
                if self._directory is None:
                    raise
                log.warning("%s: NATS unreachable; working offline from the outbox", self.actor)
            if self._directory is None:
                raise Unavailable("no verified directory")  # pragma: no cover - online sets it
        except BaseException:
            await self.close()
            raise
        if len(self._outbox):
            self._outbox_ready.set()
        self._tasks = [
            asyncio.create_task(self._link(), name="link"),
            asyncio.create_task(self._publish(), name="publish"),
            asyncio.create_task(self._receive(), name="receive"),
            asyncio.create_task(self._follow_directory(), name="directory"),
            asyncio.create_task(self._purge(), name="purge"),
        ]

    async def close(self) -> None:
        """Stop the tasks and close the connection and the stores. Safe to call twice."""
        self._closed = True
        self._arrived.set()
        await _stop(self._tasks + list(self._side_tasks), self.actor)
        self._tasks = []
        if self._transport is not None:
            await self._transport.close()
            self._transport = None
        for store in (self._outbox, self._inbox):
            if store is not None:
                store.close()

    @property
    def connected(self) -> bool:
        return self._transport is not None and self._transport.connected

    @property
    def directory(self) -> VerifiedDirectory:
        if self._directory is None:
            raise ClosedError("the client has not started")
        return self._directory

    @property
    def outbox_depth(self) -> int:
        """Submissions (messages and receipts) waiting for JetStream's acknowledgement."""
        return len(self._outbox) if self._outbox is not None else 0

    # --- sending ----------------------------------------------------------------------------

    async def send(
        self,
        *,
        to: Sequence[str] = (),
        groups: Sequence[str] = (),
        incident: str | None = None,
        payload: bytes | dict[str, Any] | list[Any] | str,
        label: Label | str = "INTERN",
        tlp: Tlp | str = Tlp.AMBER,
        categories: Sequence[str] = (),
        legal: str | None = None,
        type: MessageType | str = MessageType.COORDINATION,
        priority: Priority | str = Priority.ROUTINE,
        status: Status | str = Status.ACTUAL,
        expires: timedelta | datetime | None = None,
        references: Sequence[Reference] = (),
        content_type: str | None = None,
        control: Control | None = None,
    ) -> SendHandle:
        """Sign, encrypt and queue one message; returns at once with its handle.

        Addressees: ``to`` (actor ids) and the members of ``groups``; with only
        ``incident`` given, the incident's participants. The sender is never its own
        recipient. ``label`` is a :class:`Label` or a classification name, completed by
        ``tlp``, ``categories`` and ``legal``. ``payload`` bytes are sent as they are,
        a dict or list as JSON, a str as UTF-8 text.

        Raises :class:`AddressError`, :class:`SendError`, :class:`OutboxFull`.
        """
        outbox = self._require_open()
        directory = self.directory
        try:
            message_type = MessageType(type)
            prio, dist = Priority(priority), Status(status)
            if not isinstance(label, Label):
                label = Label(
                    policy=self.policy.id,
                    classification=label,
                    tlp=Tlp(tlp),
                    categories=tuple(sorted(categories)),
                    legal=legal,
                )
        except ValueError as exc:
            raise SendError(f"invalid message fields: {exc}", code="invalid_argument") from exc
        ladder = self.policy.ladder_order
        if label.policy != self.policy.id or not ladder.knows(label.classification):
            raise SendError(
                f"label {label.classification!r} (policy {label.policy!r}) is not on the "
                f"ladder of policy {self.policy.id!r}: {', '.join(ladder.levels)}",
                code="label_invalid",
            )
        body, kind = _inputs.encode_payload(payload)
        recipients = await self._addressees(to, groups, incident)
        now = _now_ms()
        expiry = _inputs.expiry(now, expires)
        if expiry - now > self.policy.limits.max_lifetime_seconds * 1000:
            raise SendError(
                f"expires more than the policy's {self.policy.limits.max_lifetime_seconds} s"
                " after creation",
                code="lifetime_too_long",
            )
        try:
            keys = [RecipientKey.of(directory.actor(r), now) for r in recipients]  # type: ignore[arg-type]
            data = build_envelope(
                sender=self.identity,
                recipients=keys,
                label=label,
                message_type=message_type,
                payload=body,
                created=now,
                expires=expiry,
                priority=prio,
                status=dist,
                incident=incident,
                references=references,
                content_type=content_type or kind,
                control=control,
            )
        except CoreError as exc:
            raise SendError(exc.message, code=exc.code) from exc
        if len(data) > self.policy.limits.max_envelope_bytes:
            raise SendError(
                f"envelope of {len(data)} bytes exceeds the policy's bound of "
                f"{self.policy.limits.max_envelope_bytes}",
                code="too_large",
            )
        try:
            envelope = read_envelope(data, directory)
        except CoreError as exc:  # e.g. our signing key is not (yet) in the directory
            raise SendError(exc.message, code=exc.code) from exc
        handle = SendHandle(envelope.header, envelope.header_hash, crypto.sha256(data).hex())
        self._track(handle)
        await asyncio.to_thread(
            outbox.enqueue, handle.message_id, self._subject, data, envelope.header.expires // 1000
        )
        self._outbox_ready.set()
        return handle

    async def _addressees(
        self, to: Sequence[str], groups: Sequence[str], incident: str | None
    ) -> tuple[str, ...]:
        directory = self.directory
        if isinstance(to, str) or isinstance(groups, str):
            raise AddressError("to and groups take lists of ids", code="invalid_argument")
        chosen: set[str] = set()
        for actor in to:
            if directory.actor(actor) is None:
                raise AddressError(f"unknown recipient {actor!r}", code="unknown_recipient")
            chosen.add(actor)
        for group in groups:
            members = directory.members(group)
            if members is None:
                known = ", ".join(sorted(g.id for g in directory.document.groups))
                raise AddressError(
                    f"unknown group {group!r} (known: {known})", code="unknown_group"
                )
            chosen.update(members)
        if not to and not groups and incident is not None:
            chosen.update((await self.incident(incident)).participants)
        chosen.discard(self.actor)
        if not chosen:
            raise AddressError("the message has no recipients", code="no_recipients")
        return tuple(sorted(chosen))

    async def incident(self, incident_id: str) -> Incident:
        """The broker's record of an incident (participants, label, status)."""
        transport = self._transport
        if transport is not None and transport.connected:
            try:
                raw = await transport.kv_get(
                    subjects.STATE_BUCKET, subjects.incident_key(incident_id)
                )
            except (Unavailable, ValueError):
                raw = None
            if raw is not None:
                with contextlib.suppress(CoreError):
                    self._incidents[incident_id] = Incident.parse(raw, max_bytes=64 * 1024)
        found = self._incidents.get(incident_id)
        if found is None:
            raise AddressError(f"unknown incident {incident_id!r}", code="unknown_incident")
        return found

    def _track(self, handle: SendHandle) -> None:
        self._handles[handle.submission] = handle
        self._by_id[handle.message_id] = handle
        while len(self._handles) > MAX_TRACKED:
            _, old = self._handles.popitem(last=False)
            self._by_id.pop(old.message_id, None)

    async def status(self, message_id: str) -> MessageStatus:
        """Where a message is: in this client's outbox, or the broker's receipt record."""
        outbox = self._require_open()
        if await asyncio.to_thread(outbox.__contains__, message_id):
            return MessageStatus(message_id, "queued")
        record = await self._broker_record(message_id)
        if record is None:
            return MessageStatus(message_id, "unknown")
        header, _, receipts, escalated = record
        recipients = {
            r: RecipientStatus(
                r,
                delivered=receipts.get(r, {}).get("delivered"),
                read=receipts.get(r, {}).get("read"),
                acknowledged=receipts.get(r, {}).get("acknowledged"),
                escalated=escalated and "delivered" not in receipts.get(r, {}),
            )
            for r in header.recipients
        }
        return MessageStatus(message_id, "accepted", header.sender, header.label, recipients)

    async def _broker_record(
        self, message_id: str
    ) -> tuple[Header, str, dict[str, dict[str, int]], bool] | None:
        """The broker's record of an accepted message: header, header hash, receipts (by
        recipient and kind), escalated; None if it holds none."""
        transport = self._transport
        if transport is None or not transport.connected:
            raise Unavailable("not connected to NATS: the broker's record cannot be read")
        raw = await transport.kv_get(subjects.MESSAGES_BUCKET, message_id)
        if raw is None:
            return None
        try:
            record = json.loads(raw)
            header = Header.parse(record["header"].encode(), max_bytes=64 * 1024)
            receipts: dict[str, dict[str, int]] = dict(record.get("receipts", {}))
            return header, str(record["header_hash"]), receipts, bool(record.get("escalated"))
        except (ValueError, KeyError, TypeError, AttributeError, CoreError) as exc:
            raise ClientError(f"unreadable broker record for {message_id}: {exc}") from exc

    async def submit_directory(self, raw: bytes, *, timeout: float = 30.0) -> VerifiedDirectory:
        """Submit a new signed directory version (the registry authority's work) and wait
        until the broker has published it and this client adopted it.

        The version must verify against the pinned authority key and extend this client's
        current version (raises :class:`DirectoryRefused` before anything is sent).
        """
        outbox = self._require_open()
        try:
            new = verify_directory(raw, pinned=self.pinned, previous=self.directory)
        except CoreError as exc:
            raise DirectoryRefused(f"not the next version: {exc.message}", code=exc.code) from exc
        key = f"dir.{new.version}.{new.hash[:16]}"
        verdict: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._directory_verdicts[crypto.sha256(raw).hex()] = verdict
        await asyncio.to_thread(outbox.enqueue, key, self._subject, raw, _now_ms() // 1000 + 86_400)
        self._outbox_ready.set()
        deadline = time.monotonic() + timeout
        while True:
            self._require_open()
            if verdict.done() and (refusal := verdict.exception()) is not None:
                raise refusal
            current = self.directory
            if current.version > new.version or current.hash == new.hash:
                return current
            if time.monotonic() >= deadline:
                raise DeliveryTimeout(
                    f"directory v{new.version} not published by a broker within {timeout:g} s"
                    " (a refusal comes back as a notice; see the broker's log and audit)"
                )
            with contextlib.suppress(ClientError):
                await self._refresh_directory()
            await asyncio.sleep(0.1)

    async def flush(self, timeout: float = 30.0) -> None:
        """Wait until the outbox is empty (everything stored by JetStream)."""
        deadline = time.monotonic() + timeout
        while self.outbox_depth:
            self._require_open()
            if time.monotonic() >= deadline:
                raise DeliveryTimeout(
                    f"{self.outbox_depth} submission(s) still in the outbox after {timeout:g} s"
                )
            await asyncio.sleep(0.05)

    # --- receiving ------------------------------------------------------------------------

    async def messages(self, *, follow: bool = True) -> AsyncGenerator[Message, None]:
        """Messages for this actor, each exactly once, in arrival order.

        A message counts as handed over when it is yielded (it leaves the on-disk inbox
        then). With ``follow=False`` the iteration ends when nothing is waiting.
        """
        self._require_open()
        inbox = self._inbox
        assert inbox is not None
        while not self._closed:
            self._arrived.clear()
            items = await asyncio.to_thread(inbox.waiting, FETCH_BATCH)
            if not items:
                if not follow:
                    return
                await wait_for_event(self._arrived, 1.0)
                continue
            for item in items:
                if self._closed:
                    return
                message = self._reopen(item.data, item.received)
                await asyncio.to_thread(inbox.take, item.message_id)
                if message is not None:
                    yield message

    def _open(self, data: bytes, now: int) -> OpenedEnvelope:
        """Open with the key pair the sender wrapped the content key for: during a key
        rotation senders move to the new encryption key while older envelopes still
        name the old one."""
        me = self.identity
        if len(self.identities) > 1:
            with contextlib.suppress(CoreError):
                wraps = read_envelope(data, self.directory).wraps
                wrap = next((w for w in wraps if w.recipient == self.actor), None)
                me = next(
                    (i for i in self.identities if wrap and i.encryption.key_id == wrap.key_id),
                    me,
                )
        return open_envelope(data, me=me, directory=self.directory, policy=self.policy, now=now)

    def _reopen(self, data: bytes, received: int) -> Message | None:
        try:
            opened = self._open(data, received)
        except CoreError as exc:  # the directory changed since it was admitted
            log.warning("%s: waiting envelope no longer opens (%s); dropped", self.actor, exc.code)
            self.refused += 1
            return None
        return Message(opened.header, opened.header_hash, opened.payload, self)

    async def _receipt_for(
        self, header: Header, header_hash: str, kind: ReceiptKind, note: str | None = None
    ) -> None:
        outbox = self._require_open()
        try:
            receipt = make_receipt(
                self.identity, header, header_hash, kind, at=_now_ms(), note=note
            )
        except CoreError as exc:
            raise SendError(exc.message, code=exc.code) from exc
        await asyncio.to_thread(
            outbox.enqueue,
            _receipt_key(header.id, self.actor, kind),
            self._subject,
            receipt,
            header.expires // 1000,
        )
        self._outbox_ready.set()

    # --- background tasks -------------------------------------------------------------------

    async def _go_online(self, timeout: float) -> None:
        transport = await Transport.connect(
            self.servers,
            actor=self.actor,
            durable=self.durable,
            creds=self._creds,
            tls_ca=self._tls_ca,
            timeout=timeout,
            on_state=self._on_state,
        )
        self._transport = transport
        try:
            await self._refresh_directory()
        except Unavailable:
            pass
        except DirectoryRefused as exc:  # keep the verified chain; the bad version is not adopted
            if self._directory is None:
                raise
            log.warning("%s: %s", self.actor, exc.message)
        if self._directory is None:
            raise Unavailable("the broker's directory bucket holds no directory version yet")
        self._online.set()
        self._outbox_ready.set()
        log.info("%s: connected to NATS (directory v%d)", self.actor, self._directory.version)

    async def _on_state(self, state: str) -> None:
        if self._closed:
            return
        if state == "disconnected":
            self._online.clear()
            log.warning("%s: NATS connection lost; sends wait in the outbox", self.actor)
        else:
            self._online.set()
            self._outbox_ready.set()
            log.info("%s: NATS connection restored", self.actor)

    async def _link(self) -> None:
        """Reach NATS if start-up could not; after that nats-py reconnects on its own."""
        delay = RETRY_MIN_S
        while self._transport is None and not self._closed:
            try:
                await self._go_online(5.0)
            except ClientError as exc:
                log.info("%s: still offline: %s", self.actor, exc.message)
            except Exception:
                log.exception("%s: connecting failed; trying again", self.actor)
            if self._transport is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _publish(self) -> None:
        """Drain the outbox in order; an item leaves only after JetStream stored it."""
        outbox = self._outbox
        assert outbox is not None
        delay = RETRY_MIN_S
        while True:
            # Woken by a send, a reconnect or a retry; at least every second for expiries.
            await wait_for_event(self._outbox_ready, EXPIRY_CHECK_S)
            self._outbox_ready.clear()
            try:
                await self._drop_expired(outbox)
                while self._online.is_set():
                    items = await asyncio.to_thread(outbox.pending, 64)
                    if not items:
                        break
                    for item in items:
                        await self._submit_item(outbox, item)
                    delay = RETRY_MIN_S
            except Unavailable as exc:
                log.info("%s: publish will be retried: %s", self.actor, exc.message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, PUBLISH_RETRY_MAX_S)
                self._outbox_ready.set()
            except Exception:  # a store error or a bug must not end sending for good
                log.exception("%s: publishing from the outbox failed; retrying", self.actor)
                await asyncio.sleep(RETRY_MAX_S)
                self._outbox_ready.set()

    async def _drop_expired(self, outbox: Outbox) -> None:
        for message_id in await asyncio.to_thread(outbox.drop_expired, _now_ms() // 1000):
            log.warning(
                "%s: %s expired in the outbox before it could be sent", self.actor, message_id
            )
            handle = self._by_id.get(message_id)
            if handle is not None:
                handle._set(SendState.EXPIRED, Expired(f"{message_id} expired in the outbox"))

    async def _submit_item(self, outbox: Outbox, item: OutboxItem) -> None:
        handle = self._by_id.get(item.message_id)
        try:
            await self._submit(item.data, item.message_id)
        except SendError as exc:  # NATS refuses it for good (too large): never retry it
            log.error("%s: %s refused by NATS: %s", self.actor, item.message_id, exc.message)
            await asyncio.to_thread(outbox.mark_sent, item.message_id)
            if handle is not None:
                handle._set(
                    SendState.REJECTED,
                    Rejected(exc.message, code=exc.code, message_id=item.message_id),
                )
            return
        await asyncio.to_thread(outbox.mark_sent, item.message_id)
        if handle is not None and handle.state is SendState.QUEUED:
            handle._set(SendState.SUBMITTED)

    async def _submit(self, data: bytes, msg_id: str) -> None:
        transport = self._transport
        if transport is None or not transport.connected:
            raise Unavailable("not connected")
        await transport.submit(data, msg_id)

    async def _receive(self) -> None:
        while not self._closed:
            await self._online.wait()
            transport = self._transport
            assert transport is not None
            try:
                deliveries = await transport.fetch(FETCH_BATCH, 1.0)
            except Unavailable:
                await asyncio.sleep(0.5)
                continue
            for delivery in deliveries:
                try:
                    await self._handle(delivery)
                except ClientError as exc:
                    # Not acknowledged: JetStream redelivers it after the ack wait.
                    log.error("%s: cannot keep a delivery yet: %s", self.actor, exc)
                except Exception:
                    log.exception(
                        "%s: handling a delivery failed; it will be redelivered", self.actor
                    )

    async def _handle(self, delivery: Delivery) -> None:
        data = delivery.data
        kind = data[4:5] if data[:3] == b"SSR" and len(data) >= 5 else b""
        now = _now_ms()
        if kind == b"N":
            self._notice(data, now)
        elif kind == b"R":
            self._receipt(data, now)
        elif kind == b"E":
            await self._envelope(data, now)
        else:
            log.warning("%s: dropped a delivery that is not an SSR frame", self.actor)
        await delivery.ack()

    def _notice(self, data: bytes, now: int) -> None:
        try:
            body = verify_notice(data, self.directory, now=now)
        except CoreError as exc:
            log.warning("%s: dropped a notice that does not verify (%s)", self.actor, exc.code)
            return
        if body.to != self.actor:
            return
        verdict = self._directory_verdicts.pop(body.submission, None)
        if verdict is not None and not verdict.done():
            if body.kind is NoticeKind.REJECTED:
                verdict.set_exception(
                    DirectoryRefused(
                        f"the broker refused the directory version: {body.reason}: {body.detail}",
                        code=body.reason or "directory_refused",
                    )
                )
            else:
                verdict.set_result(None)
        handle = self._handles.get(body.submission)
        if handle is None:
            return
        if body.kind is NoticeKind.ACCEPTED:
            if body.header_hash == handle.header_hash:
                handle._set(SendState.ACCEPTED)
        elif body.kind is NoticeKind.ESCALATION:
            handle._escalate(body.recipients)
        elif body.reason == "replay":
            # Perhaps our own earlier copy (a resend after the duplicate window, or after an
            # acknowledgement was lost): then the broker's record holds our header.
            task = asyncio.get_running_loop().create_task(self._confirm_replay(handle, body))
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)
        else:
            self._reject(handle, body)

    @staticmethod
    def _reject(handle: SendHandle, body: NoticeBody) -> None:
        handle._set(
            SendState.REJECTED,
            Rejected(
                f"refused by the broker: {body.reason}: {body.detail}",
                code=body.reason or "rejected",
                message_id=handle.message_id,
                recipients=body.recipients,
            ),
        )

    async def _confirm_replay(self, handle: SendHandle, body: NoticeBody) -> None:
        for _ in range(5):
            try:
                record = await self._broker_record(handle.message_id)
            except ClientError:
                await asyncio.sleep(1.0)
                continue
            if record is not None and record[1] == handle.header_hash:
                handle._set(SendState.ACCEPTED)
                return
            break
        self._reject(handle, body)  # another message holds the id, or no record to show

    def _receipt(self, data: bytes, now: int) -> None:
        try:
            receipt = verify_receipt(data, self.directory, now=now)
        except CoreError as exc:
            log.warning("%s: dropped a receipt that does not verify (%s)", self.actor, exc.code)
            return
        handle = self._by_id.get(receipt.body.message)
        if handle is None or receipt.body.sender != self.actor:
            return
        try:
            check_receipt_matches(receipt, handle.header, handle.header_hash)
        except CoreError as exc:
            log.warning("%s: dropped a receipt for another message (%s)", self.actor, exc.code)
            return
        handle._receipt(receipt.body.recipient, receipt.body.kind, receipt.body.at)

    async def _envelope(self, data: bytes, now: int) -> None:
        opened = None
        for attempt in range(2):
            try:
                opened = self._open(data, now)
                break
            except OpenError as exc:
                if attempt == 0 and exc.code == "invalid":
                    # Perhaps signed by a key of a directory version we have not seen yet.
                    with contextlib.suppress(ClientError):
                        await self._refresh_directory()
                    continue
                log.warning("%s: refused a received envelope (%s)", self.actor, exc.code)
                self.refused += 1
                return
        assert opened is not None
        header = opened.header
        outbox, inbox = self._outbox, self._inbox
        assert outbox is not None
        assert inbox is not None
        if await asyncio.to_thread(inbox.__contains__, header.id):
            return  # a redelivery: the receipt was queued when it was first admitted
        receipt = make_receipt(
            self.identity, header, opened.header_hash, ReceiptKind.DELIVERED, at=now
        )
        # Receipt first, then the admission: a crash between them re-queues the same
        # receipt under the same key on redelivery; the other order could lose it.
        await asyncio.to_thread(
            outbox.enqueue,
            _receipt_key(header.id, self.actor, ReceiptKind.DELIVERED),
            self._subject,
            receipt,
            header.expires // 1000,
        )
        self._outbox_ready.set()
        if await asyncio.to_thread(inbox.admit, header.id, header.expires // 1000, data, now):
            self._arrived.set()

    async def _follow_directory(self) -> None:
        while True:
            await asyncio.sleep(DIRECTORY_POLL_S)
            if not self._online.is_set():
                continue
            try:
                await self._refresh_directory()
            except DirectoryRefused as exc:
                if exc.message not in self._refused_directories:  # say it once, not every poll
                    self._refused_directories.add(exc.message)
                    log.error(
                        "%s: %s; staying on v%d", self.actor, exc.message, self.directory.version
                    )
            except ClientError:
                pass

    async def _purge(self) -> None:
        while True:
            await asyncio.sleep(PURGE_EVERY_S)
            if self._inbox is not None:
                with contextlib.suppress(StoreError):
                    await asyncio.to_thread(self._inbox.purge, _now_ms() // 1000)

    # --- directory --------------------------------------------------------------------------

    def _load_directory(self) -> None:
        """Verify the seed versions and the cached ones, as far as they chain."""
        for raw in self._seed:
            self._adopt(raw)
        for path in sorted((self.state_dir / "directory").glob("v*.dir")):
            known = 0 if self._directory is None else self._directory.version
            if path.stem <= subjects.directory_key(known):
                continue  # a version already adopted (from the seed)
            self._adopt(path.read_bytes(), save=False)

    def _adopt(self, raw: bytes, *, save: bool = True) -> bool:
        """Adopt ``raw`` if it is the next version of the chain (or the first one)."""
        current = self._directory
        # The first version must be signed by the pinned key; each later one by an
        # authority key its predecessor lists (so the authority key can rotate).
        try:
            candidate = verify_directory(raw, pinned=self.pinned, previous=current)
        except CoreError as exc:
            after = "" if current is None else f" after v{current.version}"
            raise DirectoryRefused(
                f"directory version refused{after}: {exc.message}", code=exc.code
            ) from exc
        self._directory = candidate
        path = self.state_dir / "directory" / f"{subjects.directory_key(candidate.version)}.dir"
        if save and not path.exists():
            with contextlib.suppress(OSError):
                path.write_bytes(raw)
        return True

    async def _refresh_directory(self) -> None:
        """Adopt every newer directory version in the broker's bucket, in order."""
        transport = self._transport
        if transport is None:
            return
        if self._directory is None:
            keys = sorted(
                k for k in await transport.kv_keys(subjects.DIRECTORY_BUCKET) if k.startswith("v")
            )
            if not keys:
                return
            first = await transport.kv_get(subjects.DIRECTORY_BUCKET, keys[0])
            if first is None:
                return
            self._adopt(first)
        assert self._directory is not None
        while True:
            raw = await transport.kv_get(
                subjects.DIRECTORY_BUCKET, subjects.directory_key(self._directory.version + 1)
            )
            if raw is None or not self._adopt(raw):
                return

    def _require_open(self) -> Outbox:
        if self._closed or self._outbox is None:
            raise ClosedError("the client is closed")
        return self._outbox


def _receipt_key(message_id: str, me: str, kind: ReceiptKind) -> str:
    return f"r.{message_id}.{me}.{kind.value}"
