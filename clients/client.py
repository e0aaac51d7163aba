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
- **archive** (:mod:`clients._archive`): every envelope sent or received is kept
  until it expires, with the content key of each sent incident message. The crisis
  workflows read it: :meth:`Client.activate` opens an incident from the catalogue,
  :meth:`Client.situation` builds the lägesbild, :meth:`Client.requests` shows who
  answered, the press-line methods draft, approve and list press lines, and
  :meth:`Client.export_bundle` / :meth:`Client.import_bundle` carry envelopes offline.
  When an actor joins an incident late, the broker queues it and then asks each
  originator for key grants (a ``grant_request`` notice); the originator's client
  decides from its own archive (:mod:`clients._grants`) and sends a ``G`` frame,
  which the newcomer opens as a :class:`Message` with ``granted`` set. Bundles
  (:mod:`clients._bundles`) are admitted the way NATS deliveries are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
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
    IncidentEntry,
    Label,
    MessageType,
    Mode,
    NoticeBody,
    NoticeKind,
    OpenedEnvelope,
    OpenError,
    Policy,
    PressStage,
    Priority,
    ReceiptKind,
    RecipientKey,
    Reference,
    ReferenceKind,
    Reject,
    Status,
    Tlp,
    VerifiedDirectory,
    VerifiedGrant,
    check_receipt_matches,
    check_sender,
    crypto,
    decide,
    decrypt_own,
    make_bundle,
    make_grant,
    make_receipt,
    open_envelope,
    open_grant,
    read_envelope,
    seal_envelope,
    verify_bundle,
    verify_directory,
    verify_grant,
    verify_notice,
    verify_receipt,
)
from broker.core.bundles import MAX_BUNDLE_ITEMS

from . import _bundles, _crisis, _grants, _inputs
from ._archive import Archive, ArchivedMessage, Direction
from ._crisis import ImportResult, PressLine, RequestStatus, SituationPicture
from ._errors import (
    AddressError,
    BundleFileError,
    BundleRefused,
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
from ._grants import GrantRequest, PendingGrants, Refuse, Wait
from ._handles import MessageStatus, RecipientStatus, SendHandle, SendState, wait_for_event
from ._inbox import Inbox, InboxItem
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
MAX_PENDING_GRANTS = 1000  # grant requests waiting for the activation that adds the newcomer
MAX_INDEX_ENTRIES = 10_000  # index entries of one incident read to find what is missing
MAX_INDEX_ENTRY_BYTES = 64 * 1024
# Openings kept in memory from admission to hand-over, so that a message is not verified
# and decrypted twice; beyond either bound the oldest are dropped (and opened again).
MAX_OPENINGS = 1_024
MAX_OPENING_BYTES = 16 * 1024 * 1024  # payload bytes


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


@dataclass(frozen=True, slots=True)
class _Stored:
    """What the stores did with an admission (:meth:`Client._store_admission`)."""

    new: bool = False  # False: a duplicate, nothing stored
    archive_error: str | None = None  # the archive refused it (logged, not fatal)
    admitted: bool = False  # the inbox took it (False: a duplicate after all)


@dataclass(frozen=True, slots=True)
class _Opening:
    """What admission learnt by opening a frame, and the inputs it was opened with.

    Opening is a function of the frame, this client's keys, the directory, the policy and
    the time (the admission time, which the inbox keeps as ``received``). The keys never
    change within a client, so the opening may stand in for opening again at hand-over
    exactly while the other inputs are the same objects and bytes as at admission.
    """

    header: Header
    header_hash: str
    payload: bytes
    digest: bytes  # SHA-256 of the frame as admitted
    received: int
    directory: VerifiedDirectory
    policy: Policy

    def holds_for(
        self, data: bytes, received: int, directory: VerifiedDirectory | None, policy: Policy
    ) -> bool:
        """Whether opening ``data`` now would give this very result: any other directory
        object (a new version, whatever it changed) or policy means open again."""
        return (
            directory is self.directory
            and policy is self.policy
            and received == self.received
            and crypto.sha256(data) == self.digest
        )


class _Openings:
    """The openings of admitted messages by message id, bounded by count and payload bytes.

    The oldest are dropped first to make room; one larger than the byte bound is not
    kept. A message without its opening here is simply opened again at hand-over.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, _Opening] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, message_id: str, opening: _Opening) -> bool:
        """Keep ``opening``; False (nothing changed) if it cannot fit or an opening is kept
        for ``message_id`` already (a concurrent admission of the same id owns that one)."""
        size = len(opening.payload)
        if message_id in self._entries or self.max_entries < 1 or size > self.max_bytes:
            return False
        while self._entries and (
            len(self._entries) >= self.max_entries or self.bytes + size > self.max_bytes
        ):
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= len(dropped.payload)
        self._entries[message_id] = opening
        self.bytes += size
        return True

    def pop(self, message_id: str) -> _Opening | None:
        opening = self._entries.pop(message_id, None)
        if opening is not None:
            self.bytes -= len(opening.payload)
        return opening

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0


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
        # Admission's openings for the hand-over; empty after a restart (all opened again).
        self._openings = _Openings(MAX_OPENINGS, MAX_OPENING_BYTES)
        self._archive: Archive | None = None
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
        self.refused = 0  # frames received or imported that did not verify, open or pass the checks
        self.grants_made = 0  # key grants sent to late joiners
        self.grants_refused = 0  # grant requests refused (reason logged)
        # Grant requests whose newcomer this client has not yet seen activated; retried
        # when an activation of the incident arrives.
        self._pending_grants = PendingGrants(MAX_PENDING_GRANTS)

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
            self._archive = Archive(
                self.state_dir / "archive.sqlite",
                leeway_ms=self.policy.limits.clock_skew_seconds * 1000,
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
        for store in (self._outbox, self._inbox, self._archive):
            if store is not None:
                store.close()
        self._openings.clear()

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
        answer_by: timedelta | datetime | None = None,
    ) -> SendHandle:
        """Sign, encrypt and queue one message; returns at once with its handle.

        Addressees: ``to`` (actor ids) and the members of ``groups``; with only
        ``incident`` given, the incident's participants. The sender is never its own
        recipient. ``label`` is a :class:`Label` or a classification name, completed by
        ``tlp``, ``categories`` and ``legal``. ``payload`` bytes are sent as they are,
        a dict or list as JSON, a str as UTF-8 text. ``answer_by`` (a ``request`` only)
        is the deadline for the answers (``control.deadline``): the broker sends an
        ``overdue`` notice naming who has not answered by then (:attr:`SendHandle.overdue`).

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
        if answer_by is not None:
            control = _with_deadline(
                message_type, control, _inputs.expiry(now, answer_by), now, expiry
            )
        try:
            keys = [RecipientKey.of(directory.actor(r), now) for r in recipients]  # type: ignore[arg-type]
            sealed = seal_envelope(
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
        data = sealed.raw
        if len(data) > self.policy.limits.max_envelope_bytes:
            raise SendError(
                f"envelope of {len(data)} bytes exceeds the policy's bound of "
                f"{self.policy.limits.max_envelope_bytes}",
                code="too_large",
            )
        try:  # what reading it back would check besides the signature just made
            check_sender(directory, sealed.header, self.identity.signing.key_id)
        except CoreError as exc:  # e.g. our signing key is not (yet) in the directory
            raise SendError(exc.message, code=exc.code) from exc
        envelope = sealed
        handle = SendHandle(envelope.header, envelope.header_hash, crypto.sha256(data).hex())
        self._track(handle)
        # Archived before it is queued: the content key of an incident message must
        # outlive this call so that the message can be granted to a late joiner.
        await self._archive_add(
            Direction.SENT,
            envelope.header,
            envelope.header_hash,
            data,
            content_key=sealed.content_key if incident is not None else None,
        )
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

    # --- crisis workflows -------------------------------------------------------------------

    async def activate(
        self,
        incident: str,
        incident_type: str,
        *,
        to: Sequence[str] = (),
        groups: Sequence[str] | None = None,
        label: Label | str | None = None,
        tlp: Tlp | str | None = None,
        priority: Priority | str | None = None,
        status: Status | str = Status.ACTUAL,
        payload: bytes | dict[str, Any] | list[Any] | str | None = None,
        communication_lead: str | None = None,
        expires: timedelta | datetime | None = None,
    ) -> SendHandle:
        """Open ``incident`` (or replace its participants) with an ``activation``.

        The policy's catalogue entry for ``incident_type`` gives the defaults: its
        ``groups`` as participants (besides ``to``), its label and priority, and the
        payload ``{"incident_type", "name", "checklist"}``. With an empty catalogue any
        type is accepted and the participants must be given. A later activation of the
        same open incident replaces the participants: that is how actors join, and each
        originator's client then grants them the incident's still-valid messages.

            >>> await client.activate("storm-2027-01", "storm", to=["solna"])  # doctest: +SKIP

        Raises :class:`SendError` (``incident_type_unknown``), :class:`AddressError`.
        """
        template = self.policy.incident_type(incident_type)
        if template is None and self.policy.incident_types:
            known = ", ".join(sorted(self.policy.incident_types))
            raise SendError(
                f"incident type {incident_type!r} is not in the policy's catalogue ({known})",
                code="incident_type_unknown",
            )
        if groups is None:
            groups = template.groups if template is not None else ()
        if not to and not groups:
            raise AddressError("an activation names its participants", code="no_recipients")
        if payload is None:
            payload = {
                "incident_type": incident_type,
                "name": template.name if template is not None else incident_type,
                "checklist": list(template.checklist) if template is not None else [],
            }
        if label is None:
            label = template.classification if template is not None else "INTERN"
        return await self.send(
            to=to,
            groups=groups,
            incident=incident,
            payload=payload,
            label=label,
            tlp=tlp or (template.tlp if template is not None else Tlp.AMBER),
            type=MessageType.ACTIVATION,
            priority=priority or (template.priority if template is not None else Priority.PRIORITY),
            status=status,
            expires=expires,
            control=Control(incident_type=incident_type, communication_lead=communication_lead),
        )

    async def situation(self, incident: str) -> SituationPicture:
        """The incident's lägesbild from this client's archive (its own reports too).

        ``missing`` lists what the broker's incident index (KV bucket ``ssr_index``) says
        this actor sent or was sent and the archive lacks (None, with ``online`` False,
        when NATS is away or the index cannot be read).

            >>> picture = await client.situation("storm-2027-01")        # doctest: +SKIP
            >>> {actor: e.text for actor, e in picture.current.items()}  # doctest: +SKIP
        """
        archive = self._require_archive()
        now = _now_ms()
        rows = await asyncio.to_thread(archive.of_incident, incident)
        missing = await self._missing(incident, now)
        return _crisis.situation_picture(
            incident, rows, now=now, payload=lambda row: self._payload(row, now), missing=missing
        )

    async def _missing(self, incident: str, now: int) -> list[IncidentEntry] | None:
        transport, archive = self._transport, self._require_archive()
        if transport is None or not transport.connected:
            return None
        try:
            prefix = subjects.index_prefix(incident)
        except ValueError as exc:
            raise AddressError(f"unknown incident {incident!r}", code="unknown_incident") from exc
        entries: list[IncidentEntry] = []
        try:
            found = await transport.kv_entries(
                subjects.INDEX_BUCKET, prefix + ">", limit=MAX_INDEX_ENTRIES
            )
        except Unavailable:
            return None
        for _, raw in found:
            with contextlib.suppress(CoreError, ValueError):
                entries.append(IncidentEntry.parse(raw, max_bytes=MAX_INDEX_ENTRY_BYTES))

        def held() -> set[str]:
            return {e.id for e in entries if e.id in archive}

        have = await asyncio.to_thread(held)
        return _crisis.missing_entries(
            entries, incident=incident, me=self.actor, now=now, held=have.__contains__
        )

    def _payload(self, row: ArchivedMessage, now: int) -> bytes | None:
        """Decrypt an archived message, or None if it no longer opens: sent with the kept
        content key, received with this actor's key, granted with the granted key."""
        try:
            if row.direction is Direction.SENT:
                if row.content_key is None:
                    return None
                return decrypt_own(read_envelope(row.data, self.directory), row.content_key).payload
            return self._open_frame(row.data, now).payload
        except CoreError:
            return None

    async def requests(self, incident: str | None = None) -> list[RequestStatus]:
        """The ``request`` messages this client sent (of ``incident``, or all) and who
        answered them: a reply (``Message.reply``) from a recipient counts as the answer."""
        archive = self._require_archive()
        now = _now_ms()

        def collect() -> list[RequestStatus]:
            found = []
            for row in archive.of_type(MessageType.REQUEST, direction=Direction.SENT):
                if incident is not None and row.header.incident != incident:
                    continue
                replies = archive.referencing(row.message_id, ReferenceKind.REPLY)
                found.append(_crisis.request_status(row, replies, now=now))
            return found

        return await asyncio.to_thread(collect)

    async def draft_press_line(
        self,
        incident: str,
        text: str,
        *,
        label: Label | str = "INTERN",
        tlp: Tlp | str = Tlp.AMBER,
    ) -> SendHandle:
        """Share a draft press line with the incident's communicators and its lead.

        They comment with ``message.reply(text, type="communication")``; the lead makes
        it public with :meth:`approve_press_line`. A draft is never public: the lowest
        classification or TLP:CLEAR raises :class:`SendError` (``press_line_unapproved``)
        before anything is sent.
        """
        classification = label.classification if isinstance(label, Label) else label
        marking = label.tlp if isinstance(label, Label) else tlp
        if str(marking) == Tlp.CLEAR.value or classification == self.policy.ladder[0]:
            raise SendError(
                f"a draft press line may not be {self.policy.ladder[0]} or TLP:CLEAR; "
                "only the lead's approval makes it public",
                code="press_line_unapproved",
            )
        view = await self._incident_view(incident)
        return await self.send(
            to=_crisis.press_recipients(view, self.policy, self.directory, self.actor),
            incident=incident,
            payload=text,
            label=label,
            tlp=tlp,
            type=MessageType.COMMUNICATION,
            status=view.status,
            control=Control(press=PressStage.DRAFT),
        )

    async def approve_press_line(self, draft_id: str, text: str | None = None) -> SendHandle:
        """Approve a draft press line (the incident's communication lead only; the broker
        refuses anyone else with ``press_approval_not_lead``): a public
        ``communication`` (lowest classification, TLP:CLEAR) updating the draft, to every
        participant. ``text`` replaces the draft's text.

        Raises :class:`SendError` ``press_draft_unknown`` if this client holds no such draft.
        """
        archive = self._require_archive()
        row = await asyncio.to_thread(archive.get, draft_id)
        control = row.header.control if row is not None else None
        if (
            row is None
            or row.header.incident is None
            or row.header.type is not MessageType.COMMUNICATION
            or control is None
            or control.press is not PressStage.DRAFT
        ):
            raise SendError(f"no draft press line {draft_id!r} here", code="press_draft_unknown")
        payload: bytes | str | None = text
        if payload is None:
            payload = self._payload(row, _now_ms())
            if payload is None:
                raise SendError(f"draft {draft_id} no longer opens", code="press_draft_unknown")
        view = await self._incident_view(row.header.incident)
        return await self.send(
            to=[p for p in view.participants if p != self.actor],
            incident=row.header.incident,
            payload=payload,
            label=Label(policy=self.policy.id, classification=self.policy.ladder[0], tlp=Tlp.CLEAR),
            type=MessageType.COMMUNICATION,
            status=row.header.status,
            content_type=row.header.content_type if text is None else None,
            references=[
                Reference(kind=ReferenceKind.UPDATE, message=draft_id, header_hash=row.header_hash)
            ],
            control=Control(press=PressStage.APPROVED),
        )

    async def press_lines(self, incident: str) -> list[PressLine]:
        """The incident's press lines this client holds: drafts with their comments, and
        approvals (also of drafts it never saw)."""
        archive = self._require_archive()
        now = _now_ms()
        rows = await asyncio.to_thread(archive.of_incident, incident, (MessageType.COMMUNICATION,))
        view = await self._verified_incident(incident)
        return _crisis.press_lines(
            incident, rows, payload=lambda row: self._payload(row, now), view=view
        )

    async def _incident_view(self, incident: str) -> Incident:
        """The broker's record when it can be read, else the archived activations'."""
        try:
            return await self.incident(incident)
        except AddressError:
            view = await self._verified_incident(incident)
            if view is None:
                raise
            return view

    async def _verified_incident(self, incident: str) -> Incident | None:
        """The incident as this client itself verified it: its archived activations and
        closes, counted only from the owner or an authority (never the broker's word)."""
        archive = self._archive
        assert archive is not None
        rows = await asyncio.to_thread(
            archive.of_incident, incident, (MessageType.ACTIVATION, MessageType.INCIDENT_CLOSE)
        )
        return _crisis.incident_from_archive(incident, rows, directory=self.directory)

    # --- offline bundles -------------------------------------------------------------------

    async def export_bundle(
        self, path: str | os.PathLike[str], *, incident: str | None = None
    ) -> int:
        """Write a bundle signed by this actor of the unexpired archived messages (of
        ``incident``, or all): envelopes as sent or received, and key grants. Returns how
        many it holds. The file is created with mode 600 and never overwritten.

        Raises :class:`BundleFileError` (``exists``, ``io``, ``bundle_too_large``).
        """
        archive = self._require_archive()
        now = _now_ms()
        frames = await asyncio.to_thread(archive.frames, incident=incident, now=now)
        if len(frames) > MAX_BUNDLE_ITEMS:
            raise BundleFileError(
                f"{len(frames)} messages exceed a bundle's {MAX_BUNDLE_ITEMS}; export one incident",
                code="bundle_too_large",
            )
        try:
            data = make_bundle(self.identity, frames, created=now, incident=incident)
        except CoreError as exc:
            raise BundleFileError(exc.message, code=exc.code) from exc
        await asyncio.to_thread(_bundles.write_new, Path(path), data)
        return len(frames)

    async def import_bundle(self, path: str | os.PathLike[str]) -> ImportResult:
        """Import a bundle exported by another actor; works offline.

        The exporter's signature is checked first (a changed bundle raises
        :class:`BundleRefused` and nothing is imported); then each item goes the way a
        delivery from NATS goes: verified, opened, deduplicated against the inbox,
        archived, its delivered receipt queued, and handed to :meth:`messages`. Items for
        other actors are skipped. The same messages arriving later from NATS are
        duplicates.

        No broker saw a bundled item, so the import enforces the broker's policy itself:
        each envelope (and the envelope inside a key grant; the newcomer is checked when
        the grant opens) must pass :func:`broker.core.decide` before it is admitted.
        This is the broker's policy without the broker's state: the mode is taken as
        ordinary; the incidents are this client's own verified view
        (:func:`~clients._crisis.incident_from_archive`), updated by the bundle's
        accepted activations and closes as the items are taken oldest first; a forward
        or a press-line approval whose original this client does not hold is refused
        (as is TLP:AMBER onward sharing, whose approval only the broker knows). A
        refused item is counted (``refused``) and logged, never archived, receipted or
        admitted.

            >>> result = await client.import_bundle("storm.ssrb")  # doctest: +SKIP

        Raises :class:`BundleRefused`, :class:`BundleFileError` (``io``).
        """
        self._require_open()
        archive = self._require_archive()
        data = await asyncio.to_thread(
            _bundles.read_bounded, Path(path), _bundles.MAX_BUNDLE_FILE_BYTES
        )
        now = _now_ms()
        try:
            bundle = verify_bundle(data, self.directory, now=now)
        except CoreError as exc:
            raise BundleRefused(f"bundle refused: {exc.message}", code=exc.code) from exc
        items, unreadable = _bundles.read_items(
            bundle.items,
            self.directory,
            me=self.actor,
            now=now,
            max_envelope_bytes=self.policy.limits.max_envelope_bytes,
        )
        for code in unreadable:
            log.warning("%s: refused a bundled item (%s)", self.actor, code)
        self.refused += len(unreadable)
        counts = Counter({"refused": len(unreadable)})
        incidents: dict[str, Incident] = {}
        looked: set[str] = set()
        for item in items:
            self._require_open()
            header = item.header
            if not item.mine and not item.steering:
                counts["not_for_me"] += 1
                continue
            if header.incident is not None and header.incident not in looked:
                looked.add(header.incident)
                view = await self._verified_incident(header.incident)
                if view is not None:
                    incidents[header.incident] = view
            origin, draft = await asyncio.to_thread(_bundles.originals, archive, header)
            decision = decide(
                item.envelope.raw,
                directory=self.directory,
                policy=self.policy,
                mode=Mode.ORDINARY,
                now=now,
                seen=(),
                origin=origin,
                incidents=incidents,
                draft=draft,
            )
            if isinstance(decision, Reject):
                log.warning(
                    "%s: refused bundled %s %s from %s: %s (%s)",
                    self.actor, header.type.value, header.id, header.sender,
                    decision.reason.value, decision.detail,
                )  # fmt: skip
                self.refused += 1
                counts["refused"] += 1
                continue
            if not item.mine:
                outcome = "not_for_me"
            elif item.granted:
                outcome = await self._granted(item.frame, now)
            else:
                outcome = await self._envelope(item.frame, now)
            if item.steering and outcome != "refused":
                _bundles.steer(incidents, header)
            counts[outcome] += 1
        log.info("%s: imported bundle %s: %s", self.actor, path, dict(counts))
        return ImportResult(
            admitted=counts["admitted"],
            duplicates=counts["duplicate"],
            not_for_me=counts["not_for_me"],
            refused=counts["refused"],
        )

    def _require_archive(self) -> Archive:
        self._require_open()
        if self._archive is None:
            raise ClosedError("the client has not started")
        return self._archive

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
                message = self._hand_over(item)
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

    def _open_grant(self, grant: VerifiedGrant, now: int) -> OpenedEnvelope:
        """Open with the key pair the grant sealed the content key to (key rotation)."""
        me = next(
            (i for i in self.identities if i.encryption.key_id == grant.body.key_id),
            self.identity,
        )
        return open_grant(grant, me=me, directory=self.directory, policy=self.policy, now=now)

    def _verify_grant(self, data: bytes, now: int) -> VerifiedGrant:
        return verify_grant(
            data, self.directory, now=now, max_envelope_bytes=self.policy.limits.max_envelope_bytes
        )

    def _open_frame(self, data: bytes, now: int) -> OpenedEnvelope:
        """Open an ``E`` frame for this actor, or the envelope a ``G`` frame grants it."""
        if data[4:5] == b"G":
            return self._open_grant(self._verify_grant(data, now), now)
        return self._open(data, now)

    def _hand_over(self, item: InboxItem) -> Message | None:
        """The message of a waiting inbox row, or None if it no longer opens.

        Admission's opening is reused only if it holds for the row as it is and for the
        directory and policy in force now (:meth:`_Opening.holds_for`); otherwise the
        frame is opened again, so a directory change since admission (a revoked key)
        still stops a waiting envelope. Either way the kept opening is forgotten.
        """
        opening = self._openings.pop(item.message_id)
        if opening is None or not opening.holds_for(
            item.data, item.received, self._directory, self.policy
        ):
            return self._reopen(item.data, item.received)
        granted = item.data[4:5] == b"G"
        return Message(opening.header, opening.header_hash, opening.payload, self, granted)

    def _reopen(self, data: bytes, received: int) -> Message | None:
        try:
            opened = self._open_frame(data, received)
        except CoreError as exc:  # the directory changed since it was admitted
            log.warning("%s: waiting envelope no longer opens (%s); dropped", self.actor, exc.code)
            self.refused += 1
            return None
        granted = data[4:5] == b"G"
        return Message(opened.header, opened.header_hash, opened.payload, self, granted)

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
        deadline = time.monotonic() + timeout
        problem = "the broker's directory bucket holds no directory version yet"
        while True:
            try:
                await self._refresh_directory()
            except Unavailable as exc:  # e.g. a KV read timing out on a loaded server
                problem = f"the broker's directory bucket cannot be read: {exc.message}"
            except DirectoryRefused as exc:  # keep the verified chain; never adopt a bad one
                if self._directory is None:
                    raise
                log.warning("%s: %s", self.actor, exc.message)
            # With a cached directory, go on (and catch up later); without one, keep trying.
            if self._directory is not None or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.2)
        if self._directory is None:
            raise Unavailable(problem)
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
            await self._notice(data, now)
        elif kind == b"R":
            self._receipt(data, now)
        elif kind == b"E":
            await self._envelope(data, now)
        elif kind == b"G":
            await self._granted(data, now)
        else:
            log.warning("%s: dropped a delivery that is not an SSR frame", self.actor)
        await delivery.ack()

    async def _notice(self, data: bytes, now: int) -> None:
        try:
            body = verify_notice(data, self.directory, now=now)
        except CoreError as exc:
            log.warning("%s: dropped a notice that does not verify (%s)", self.actor, exc.code)
            return
        if body.to != self.actor:
            return
        if body.kind is NoticeKind.GRANT_REQUEST:
            await self._grant_request(body, now)
            return
        if body.kind is NoticeKind.OVERDUE:
            self._overdue(body)
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
            if body.kind is NoticeKind.REJECTED and body.reason != "replay" and body.message:
                await self._forget_sent(body.message, body.submission)  # sent, then refused
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
            await self._reject(handle, body)

    async def _reject(self, handle: SendHandle, body: NoticeBody) -> None:
        await self._forget_sent(handle.message_id, handle.submission)
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
        await self._reject(handle, body)  # another message holds the id, or no record to show

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

    async def _envelope(self, data: bytes, now: int) -> str:
        """Verify, open, archive and admit one envelope; queue its delivered receipt.
        Returns ``admitted``, ``duplicate`` or ``refused``."""
        opened: OpenedEnvelope | None = None
        directory: VerifiedDirectory | None = None
        for attempt in range(2):
            try:
                directory = self.directory  # the version this attempt opens against
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
                return "refused"
        assert opened is not None
        assert directory is not None
        return await self._admit(Direction.RECEIVED, opened, data, now, directory)

    async def _granted(self, data: bytes, now: int) -> str:
        """A key grant (``G`` frame): verify it and the envelope inside, open it, archive it
        and admit it like an envelope, but sign no receipt: the broker could not match it,
        as this actor is not among the envelope's signed recipients. Returns
        ``admitted``, ``duplicate``, ``not_for_me`` or ``refused``."""
        directory = self.directory  # what the grant and its envelope are opened against
        try:
            grant = self._verify_grant(data, now)
            if grant.body.recipient != self.actor:
                return "not_for_me"
            opened = self._open_grant(grant, now)
        except CoreError as exc:
            log.warning("%s: refused a key grant (%s)", self.actor, exc.code)
            self.refused += 1
            return "refused"
        outcome = await self._admit(Direction.GRANTED, opened, data, now, directory)
        if outcome == "admitted":
            log.info("%s: %s granted by %s", self.actor, opened.header.id, opened.header.sender)
        return outcome

    async def _admit(
        self,
        direction: Direction,
        opened: OpenedEnvelope,
        data: bytes,
        now: int,
        directory: VerifiedDirectory,
    ) -> str:
        """The one admission path of a verified, opened frame (from NATS or a bundle):
        deduplicated against the inbox, archived, its delivered receipt queued (not for a
        grant), admitted. ``directory`` is the version ``opened`` was opened against: the
        opening is kept for the hand-over (:meth:`_hand_over`), grants too, as theirs
        depends on the same inputs. Returns ``admitted`` or ``duplicate``."""
        header = opened.header
        receipt = None
        if direction is Direction.RECEIVED:
            receipt = make_receipt(
                self.identity, header, opened.header_hash, ReceiptKind.DELIVERED, at=now
            )
        # Kept before the row is committed, so that a hand-over racing this admission
        # finds it; forgotten again if the row is not admitted.
        opening = _Opening(
            header,
            opened.header_hash,
            opened.payload,
            crypto.sha256(data),
            now,
            directory,
            self.policy,
        )
        kept = self._openings.put(header.id, opening)
        try:
            stored = await asyncio.to_thread(
                self._store_admission, direction, opened, data, now, receipt
            )
        except BaseException:
            if kept:
                self._openings.pop(header.id)
            raise
        if stored.archive_error is not None:
            log.error("%s: %s not archived: %s", self.actor, header.id, stored.archive_error)
        elif stored.new and header.type is MessageType.ACTIVATION:
            await self._after_activation_archived(header)
        if receipt is not None and stored.new:
            self._outbox_ready.set()
        if stored.admitted:
            self._arrived.set()
            return "admitted"
        if kept:
            self._openings.pop(header.id)
        return "duplicate"

    def _store_admission(
        self,
        direction: Direction,
        opened: OpenedEnvelope,
        data: bytes,
        now: int,
        receipt: bytes | None,
    ) -> _Stored:
        """The stores' part of an admission, in one worker-thread hop (each store commits
        on its own): deduplicated against the inbox, archived, the delivered receipt
        queued, admitted, in this order."""
        header, inbox, outbox, archive = opened.header, self._inbox, self._outbox, self._archive
        assert inbox is not None
        assert outbox is not None
        assert archive is not None
        if header.id in inbox:
            return _Stored()  # a redelivery: the receipt was queued when it was first admitted
        # Archived first: adding is idempotent, and a crash after the admission would
        # leave the message out of the archive for good (a redelivery is a duplicate).
        # A full or failing archive is logged, not fatal (it serves the workflows).
        archive_error = None
        try:
            archive.add(direction, header, opened.header_hash, data)
        except StoreError as exc:
            archive_error = exc.message
        if receipt is not None:
            # Receipt first, then the admission: a crash between them re-queues the same
            # receipt under the same key on redelivery; the other order could lose it.
            outbox.enqueue(
                _receipt_key(header.id, self.actor, ReceiptKind.DELIVERED),
                self._subject,
                receipt,
                header.expires // 1000,
            )
        admitted = inbox.admit(header.id, header.expires // 1000, data, now)
        return _Stored(new=True, archive_error=archive_error, admitted=admitted)

    # --- key grants for late joiners ----------------------------------------------------------

    async def _grant_request(self, body: NoticeBody, now: int) -> None:
        """The broker asks for a grant of ``body.message`` to ``body.recipients[0]``.

        Decided by :func:`clients._grants.decide` from this client's own archive and its
        verified view of the incident, never the broker's word. Refusals are logged and
        counted (:attr:`grants_refused`); a newcomer not yet seen activated waits for that
        activation (bounded by :data:`MAX_PENDING_GRANTS`).
        """
        request = GrantRequest.of(body)
        if request is None:
            self._refuse_grant(
                body.message or "?",
                "?",
                Refuse("grant_request_malformed", "no message or newcomer"),
            )
            return
        await self._answer_grant(request, now)

    async def _answer_grant(self, request: GrantRequest, now: int) -> None:
        archive = self._archive
        assert archive is not None
        row = await asyncio.to_thread(archive.get, request.message)
        incident = row.header.incident if row is not None else None
        view = await self._verified_incident(incident) if incident is not None else None
        verdict = _grants.decide(request, row, view, now=now)
        if isinstance(verdict, Wait):
            for old in self._pending_grants.add(request, verdict.incident):
                self._refuse_grant(
                    old.message,
                    old.newcomer,
                    Refuse("grant_not_participant", "never seen activated"),
                )
            log.info(
                "%s: grant of %s to %s waits: no activation of %s seen that adds it",
                self.actor, request.message, request.newcomer, verdict.incident,
            )  # fmt: skip
            return
        self._pending_grants.discard(request)
        if isinstance(verdict, Refuse):
            self._refuse_grant(request.message, request.newcomer, verdict)
            return
        row = verdict.row
        assert row.content_key is not None
        newcomer = self.directory.actor(request.newcomer)
        if newcomer is None:
            self._refuse_grant(
                request.message, request.newcomer, Refuse("grant_not_allowed", "unknown actor")
            )
            return
        try:
            grant = make_grant(
                self.identity,
                row.data,
                row.content_key,
                newcomer=newcomer,
                directory=self.directory,
                policy=self.policy,
                at=now,
            )
        except CoreError as exc:
            self._refuse_grant(request.message, request.newcomer, Refuse(exc.code, exc.message))
            return
        outbox = self._require_open()
        await asyncio.to_thread(
            outbox.enqueue,
            f"g.{request.message}.{request.newcomer}",
            self._subject,
            grant,
            row.header.expires // 1000,
        )
        self._outbox_ready.set()
        self.grants_made += 1
        log.info("%s: granted %s to %s", self.actor, request.message, request.newcomer)

    async def _forget_sent(self, message_id: str, submission: str) -> None:
        """A message the broker refused never reached anyone: it leaves the archive, so
        the workflows do not show it (a refused approval is no approval). Only when the
        refused submission is that very envelope: a refused key grant names the granted
        message too, and must not make its originator forget it."""
        archive = self._archive
        if archive is None:
            return
        row = await asyncio.to_thread(archive.get, message_id)
        if (
            row is not None
            and row.direction is Direction.SENT
            and crypto.sha256(row.data).hex() == submission
        ):
            await asyncio.to_thread(archive.remove, message_id)

    def _refuse_grant(self, message: str, newcomer: str, refusal: Refuse) -> None:
        self.grants_refused += 1
        log.warning(
            "%s: refused to grant %s to %s: %s (%s)",
            self.actor, message, newcomer, refusal.code, refusal.why,
        )  # fmt: skip

    async def _retry_grants(self, incident: str, now: int) -> None:
        """An activation of ``incident`` arrived: answer the requests that waited for it."""
        for request in self._pending_grants.take(incident):
            await self._answer_grant(request, now)

    def _overdue(self, body: NoticeBody) -> None:
        log.warning(
            "%s: request %s not answered by its deadline by %s",
            self.actor, body.message, ", ".join(body.recipients),
        )  # fmt: skip
        handle = self._by_id.get(body.message or "")
        if handle is not None:
            handle._overdue(body.recipients)

    async def _archive_add(
        self,
        direction: Direction,
        header: Header,
        header_hash: str,
        data: bytes,
        *,
        content_key: bytes | None = None,
    ) -> None:
        """Archive a verified message; a full or failing archive is logged, not fatal
        (it serves the workflows, not delivery)."""
        archive = self._archive
        assert archive is not None
        try:
            await asyncio.to_thread(
                archive.add, direction, header, header_hash, data, content_key=content_key
            )
        except StoreError as exc:
            log.error("%s: %s not archived: %s", self.actor, header.id, exc.message)
            return
        if header.type is MessageType.ACTIVATION:
            await self._after_activation_archived(header)

    async def _after_activation_archived(self, header: Header) -> None:
        """Grant requests waiting for this activation may be decided now."""
        if header.incident and self._pending_grants:
            await self._retry_grants(header.incident, _now_ms())

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
            if self._archive is not None:
                with contextlib.suppress(StoreError):
                    await asyncio.to_thread(self._archive.purge, _now_ms())

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


def _with_deadline(
    message_type: MessageType, control: Control | None, deadline: int, now: int, expires: int
) -> Control:
    if message_type is not MessageType.REQUEST:
        raise SendError("answer_by is for a request only", code="invalid_argument")
    if not now < deadline <= expires:
        raise SendError(
            "answer_by must fall after now and not after the message expires",
            code="invalid_argument",
        )
    fields = control.model_dump(exclude_none=True) if control is not None else {}
    return Control(**{**fields, "deadline": deadline})
