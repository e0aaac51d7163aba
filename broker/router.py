"""Routing of one submission: the thin async shell around the pure decision.

For an envelope: decide -> claim the message id in KV (replay guard shared by
every broker process) -> fan out one delivery per recipient with the dedupe id
``d.<message>.<recipient>`` -> apply control effects (mode, incidents) ->
signed ``accepted`` notice -> audit event; or a signed ``rejected`` notice and
an audit event. The submission is acknowledged only after all of that, so a
crash at any point leads to a redelivery that repeats the same idempotent
publishes (JetStream drops the duplicates inside its window; clients drop ids
they have seen after it).

Every accepted envelope naming an incident gets an index entry in KV ``ssr_index``
(``<incident>.<message id>``: header metadata only), which clients compare with
what they hold. An ``activation`` that adds participants queues each newcomer (KV
``ssr_state``, ``join.<incident>.<newcomer>``); :meth:`Router.process_joins` later asks
the originator of every still-valid, grantable message of the incident it lacks for a
key grant (a ``grant_request`` notice, dedupe id ``n.<message>.grant.<newcomer>``) and
audits the messages a newcomer may not have (``grant_refused``). A reply to a ``request``
with a deadline is recorded as that recipient's answer.

For a receipt: verify, match it to the message record, record it (compare and
set), forward it to the original sender. For a key grant (``G``): verify it, check it
against the message record and the incident, record it, deliver it unchanged to the
newcomer (dedupe id ``g.<message>.<newcomer>``). For a directory version: verify it
against the pinned authority key and the current version, then publish it.

The sweep escalates missed delivery deadlines and unanswered requests (``overdue``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from broker.core import (
    Accept,
    CoreError,
    DirectoryError,
    ForwardOrigin,
    GrantError,
    Header,
    Incident,
    IncidentEntry,
    MessageType,
    Mode,
    NoticeError,
    NoticeKind,
    Policy,
    Reason,
    ReceiptError,
    Reference,
    ReferenceKind,
    Reject,
    VerifiedDirectory,
    VerifiedGrant,
    check_receipt_matches,
    crypto,
    decide,
    grantable,
    make_notice,
    read_envelope,
    verify_directory,
    verify_grant,
    verify_receipt,
)
from broker.core.envelope import claimed_type
from broker.core.incidents import closed_by, newcomers, opened_by
from broker.core.limits import MAX_HEADER_BYTES
from broker.core.notices import BrokerIdentity
from broker.core.ratelimit import SenderBudgets

from . import subjects
from .audit import AuditKind, audit_event
from .bus import JetStreamBus, KvConflict
from .lanes import KeyedLocks
from .metrics import BrokerMetrics, status_label

log = logging.getLogger("ssr.router")
CAS_RETRIES = 8
# The message records this broker wrote last, as written, to update without reading first
# (a receipt follows its message within seconds): at most this many, this many seconds old.
RECENT_RECORDS = 4_096
RECENT_RECORD_S = 300.0
SWEEP_SCAN = 1_000  # records one sweep reads in turn, besides its own messages that are due
# Records the sweep saw through (no deadline ahead, every missed one chased): its
# turn-by-turn reading skips them; at most this many (no more are added until some expire).
SETTLED_RECORDS = 50_000
MAX_INCIDENT_BYTES = 64 * 1024
MAX_ENTRY_BYTES = 64 * 1024
MAX_INDEX_SCAN = 10_000  # index entries of one incident read when actors join it
MAX_GRANT_REQUESTS = 1000  # grant requests per newcomer per activation; the rest are logged
JOIN_BUDGET = 500  # messages of queued joins handled per call of process_joins


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Join(BaseModel):
    """A newcomer to an incident whose grant requests are not all sent yet (KV
    ``join.<incident>.<newcomer>``). ``handled`` counts the messages already handled and
    ``before`` is the ``(created, id)`` of the last of them (at first, of the activation
    that added the newcomer: messages sent later left it out on purpose): the next batch
    starts below it, so a message that expires meanwhile cannot shift another past the
    place."""

    model_config = ConfigDict(extra="forbid")

    incident: str
    newcomer: str
    activation: str
    handled: int = 0
    before: tuple[int, str] | None = None


class MessageRecord(BaseModel):
    """What the broker keeps per accepted message (never content)."""

    model_config = ConfigDict(extra="forbid")

    header: str  # the exact signed header bytes, as UTF-8 text
    header_hash: str
    submitted_by: str
    accepted: int
    deadline: int
    receipts: dict[str, dict[str, int]] = {}  # recipient -> receipt kind -> at
    escalated: bool = False
    # The SSR_SUBMIT sequence of the submission that claimed the id: only that submission,
    # handed out again, finishes the attempt; any other submission of the id is a replay.
    submission: int | None = None
    routed: bool = False  # records written before `submission` existed: see _resumable
    granted: dict[str, int] = {}  # late joiner -> when its key grant was delivered
    answer_by: int | None = None  # a request's deadline (control.deadline)
    answers: dict[str, int] = {}  # recipient -> creation time of its first reply
    overdue: bool = False

    def parsed_header(self) -> Header:
        return Header.parse(self.header.encode(), max_bytes=MAX_HEADER_BYTES)

    def unconfirmed(self) -> tuple[str, ...]:
        recipients = self.parsed_header().recipients
        return tuple(r for r in recipients if "delivered" not in self.receipts.get(r, {}))

    def unanswered(self) -> tuple[str, ...]:
        return tuple(r for r in self.parsed_header().recipients if r not in self.answers)


@dataclass
class BrokerState:
    """What routing reads; the service keeps it current from the KV watchers."""

    directory: VerifiedDirectory
    policy: Policy
    pinned_authority: bytes
    mode: Mode = Mode.ORDINARY
    incidents: dict[str, Incident] = field(default_factory=dict)
    changes: int = 0  # bumped on every change the router makes (see Service.refresh_state)


class Router:
    def __init__(
        self,
        *,
        bus: JetStreamBus,
        state: BrokerState,
        identity: BrokerIdentity,
        metrics: BrokerMetrics,
        clock: Callable[[], int] = wall_clock_ms,
        resend_window_ms: int = 600_000,
    ) -> None:
        self.bus = bus
        # JetStream's duplicate window: a publish repeated within it is dropped.
        self.resend_window_ms = resend_window_ms
        self.state = state
        self.identity = identity
        self.metrics = metrics
        self.clock = clock
        self._sweep_round: list[str] = []  # message records the sweep's round has yet to read
        # Each sender's delivery budget, in this process only (see _within_budget).
        self.budgets = SenderBudgets()
        # Submissions are routed concurrently across senders (broker.lanes; what changes
        # the shared state is routed alone, see is_barrier); one message record is updated
        # by one lane at a time.
        self._records = KeyedLocks()
        self._incident_revisions: dict[str, int] = {}  # the KV revision of each copy we hold
        self._incident_writes = asyncio.Lock()  # see _apply_control and _join
        # Message id -> when the sweep next looks at it, for messages this broker accepted.
        self._due: dict[str, int] = {}
        self._settled: set[str] = set()  # see SETTLED_RECORDS
        # Message id -> (record JSON, revision, when written): see _recent_record.
        self._recent: OrderedDict[str, tuple[bytes, int, float]] = OrderedDict()

    # --- entry ------------------------------------------------------------------------

    async def route(self, subject: str, data: bytes, *, redelivered: bool, sequence: int) -> None:
        """Handle one submission completely; raises only NatsUnavailable (retry later).
        ``sequence``: its SSR_SUBMIT stream sequence (the same on every redelivery)."""
        actor = subjects.actor_of_submit(subject)
        if actor is None:  # the stream only binds ssr.submit.*, so this is not reachable
            log.warning("submission on unexpected subject %r dropped", subject)
            return
        kind = data[4:5] if data[:3] == b"SSR" and len(data) >= 5 else b""
        if kind == b"R":
            await self._receipt(actor, data, redelivered=redelivered)
        elif kind == b"D":
            await self._directory(actor, data)
        elif kind == b"G":
            await self._grant(actor, data)
        else:
            await self._envelope(actor, data, redelivered=redelivered, sequence=sequence)

    def is_barrier(self, subject: str, data: bytes) -> bool:
        """Whether a submission may change what later ones are decided against (a mode
        change, an activation, a close, a directory version): the service routes it alone,
        after everything taken before it and before anything taken after it. An envelope
        counts only with a valid signature of the actor whose subject it came on, so no
        one can serialise the broker with claims in headers they cannot sign."""
        kind = data[4:5] if data[:3] == b"SSR" and len(data) >= 5 else b""
        if kind == b"D":
            return True
        if kind != b"E" or claimed_type(data) not in _STATE_CHANGING:
            return False  # the cheap peek first: most submissions end here
        try:
            header = read_envelope(data, self.state.directory).header
        except CoreError:
            return False
        return header.sender == subjects.actor_of_submit(subject) and header.type.value in (
            _STATE_CHANGING
        )

    # --- envelopes --------------------------------------------------------------------

    def _decide(
        self, data: bytes, origin: ForwardOrigin | None, draft: ForwardOrigin | None = None
    ) -> Accept | Reject:
        state = self.state
        started = time.perf_counter()
        decision = decide(
            data,
            directory=state.directory,
            policy=state.policy,
            mode=state.mode,
            now=self.clock(),
            seen=(),
            origin=origin,
            incidents=state.incidents,
            draft=draft,
        )
        self.metrics.decision_seconds.observe(time.perf_counter() - started)
        return decision

    async def _envelope(self, actor: str, data: bytes, *, redelivered: bool, sequence: int) -> None:
        started = time.perf_counter()
        decision = await self._decision(actor, data)
        await self._accept_or_refuse(
            actor, data, decision, redelivered=redelivered, sequence=sequence
        )
        self.metrics.routing_seconds.observe(time.perf_counter() - started)

    async def _decision(self, actor: str, data: bytes) -> Accept | Reject:
        """The policy's verdict on an envelope, with the records it may depend on read."""
        decision = self._decide(data, None)
        if await self._incident_changed(data, decision):
            decision = self._decide(data, None)
        origin: ForwardOrigin | None = None
        if isinstance(decision, Reject) and decision.reason is Reason.FORWARD_ORIGIN_UNKNOWN:
            origin = await self._referenced(data, Header.forwarded)
            if origin is not None:
                decision = self._decide(data, origin)
        if isinstance(decision, Reject) and decision.reason is Reason.PRESS_DRAFT_UNKNOWN:
            draft = await self._referenced(data, _press_draft_reference)
            if draft is not None:
                decision = self._decide(data, origin, draft)
        if isinstance(decision, Accept) and decision.envelope.header.sender != actor:
            decision = Reject(
                Reason.SENDER_MISMATCH,
                f"published on {actor}'s subject",
                message_id=decision.message_id,
                sender=decision.envelope.header.sender,
            )
        return decision

    async def _accept_or_refuse(
        self,
        actor: str,
        data: bytes,
        decision: Accept | Reject,
        *,
        redelivered: bool,
        sequence: int,
    ) -> None:
        if isinstance(decision, Accept):
            decision = await self._within_budget(
                decision, redelivered=redelivered, sequence=sequence
            )
        # Counted when the message id is claimed, so finishing an interrupted attempt of our
        # own (a redelivery after a lost ack or a NATS restart) counts nothing twice.
        resumed = False
        if isinstance(decision, Accept):
            decision, resumed = await self._claim(
                actor, decision, sequence=sequence, redelivered=redelivered
            )
        status = (
            status_label(decision.status) if isinstance(decision, Accept) else self._status(data)
        )
        if not resumed:
            self.metrics.received.labels(status=status).inc()
        if isinstance(decision, Reject):
            await self._rejected(actor, data, decision, status)
            return
        if not resumed:
            self._count_accepted(decision, status)
        header = decision.envelope.header
        # Independent of each other, each idempotent (dedupe ids, keys): at once, the
        # audit event and the deliveries as one batch of publishes, the audit event first
        # (a batch cut short never delivers what the trail lacks; the redelivered
        # submission finishes it). The sender hears the verdict last, when everything it
        # may look up exists.
        accepted = self._audit_event(
            AuditKind.ACCEPTED,
            key=header.id,
            actor=actor,
            message=header.id,
            recipients=header.recipients,
            status=header.status.value,
            label=header.label.wire(),
            priority=header.priority.value,
            incident=header.incident,
        )
        writes = [self._fan_out(decision, first=[accepted])]
        if header.incident is not None:
            writes.append(self._index(decision))
        if any(r.kind is ReferenceKind.REPLY for r in header.references):
            writes.append(self._record_answers(decision))
        if len(writes) == 1:
            await writes[0]  # the common case: no task for a lone coroutine
        else:
            await asyncio.gather(*writes)
        self.metrics.audit_events.labels(kind=AuditKind.ACCEPTED.value).inc()
        await self._apply_control(decision)
        await self._notify(
            actor,
            data,
            NoticeKind.ACCEPTED,
            key=f"{header.id}.accepted",
            message=header.id,
            header_hash=decision.envelope.header_hash,
            recipients=header.recipients,
        )

    def _status(self, data: bytes) -> str:
        """Status for metrics of a refused envelope: only when its header verifies."""
        try:
            return status_label(read_envelope(data, self.state.directory).header.status)
        except CoreError:
            return status_label(None)

    async def _incident_changed(self, data: bytes, decision: Accept | Reject) -> bool:
        """Re-read the incident a verified envelope names; True if it differs from ours.

        Another broker may have opened, changed or closed it since our last state refresh;
        deciding on the stale copy would refuse the incident's traffic as unknown, or let a
        message into an incident that is closed.
        """
        if isinstance(decision, Accept):
            header = decision.envelope.header
        elif decision.message_id is not None:  # refusals before verification name no incident
            try:
                header = read_envelope(data, self.state.directory).header
            except CoreError:
                return False
        else:
            return False
        if header.incident is None:
            return False
        return await self._refresh_incident(header.incident)

    async def _refresh_incident(self, incident_id: str) -> bool:
        """Re-read one incident from KV into our state; True if the decision just made (on
        our copy, with no await since) must be made again: KV holds another version, or
        another lane changed our copy while we read."""
        seen = self.state.incidents.get(incident_id)  # what that decision saw
        try:
            entry = await self.bus.kv_get(subjects.STATE_BUCKET, subjects.incident_key(incident_id))
            incident = (
                None if entry is None else Incident.parse(entry.value, max_bytes=MAX_INCIDENT_BYTES)
            )
        except (ValueError, CoreError):
            return False
        # Taken unless it is the copy the decision saw or older than the one we hold now.
        if (
            entry is not None
            and incident is not None
            and incident != seen
            and entry.revision >= self._incident_revisions.get(incident_id, 0)
        ):
            self._incident_revisions[incident_id] = entry.revision
            self.state.incidents[incident_id] = incident
            self.state.changes += 1
        return self.state.incidents.get(incident_id) != seen

    async def _referenced(
        self, data: bytes, pick: Callable[[Header], Reference | None]
    ) -> ForwardOrigin | None:
        """The broker's record of the message an envelope refers to: the original of a
        forward, the draft a press-line approval updates."""
        try:
            reference = pick(read_envelope(data, self.state.directory).header)
        except CoreError:
            return None
        if reference is None:
            return None
        record = await self._record(reference.message)
        if record is None:
            return None
        # Approvals for TLP:AMBER onward sharing arrive with the client library; until then
        # AMBER content reaches no actor that was not on the original.
        return ForwardOrigin(record[0].parsed_header(), record[0].header_hash)

    async def _within_budget(
        self, decision: Accept, *, redelivered: bool, sequence: int
    ) -> Accept | Reject:
        """Charge the verified sender one delivery per recipient; refuse it over budget.

        Checked before the message id is claimed, so a refused envelope leaves no record
        and may be submitted again once the budget has refilled. Finishing our own earlier
        attempt (a redelivery of a submission already claimed) is never refused, nor
        charged again. The budget is this process's (``broker.core.ratelimit``).
        """
        envelope = decision.envelope
        header = envelope.header
        if redelivered:
            found = await self._record(header.id)
            if found is not None and _resumable(found[0], envelope.header_hash, sequence, True):
                return decision
        budget = self.state.policy.limits.sender_budget
        verdict = self.budgets.take(
            header.sender, len(header.recipients), now=self.clock(), budget=budget
        )
        if verdict.allowed:
            return decision
        found = await self._record(header.id)  # an attempt of ours to finish, never refused
        if found is not None and _resumable(found[0], envelope.header_hash, sequence, redelivered):
            return decision
        retry = (
            "it can never fit"
            if verdict.retry_after_ms is None
            else f"retry in {-(-verdict.retry_after_ms // 1000)} s"
        )
        return Reject(
            Reason.RATE_LIMITED,
            f"over the sender's budget of {budget.per_minute} deliveries a minute "
            f"(burst {budget.burst}): {len(header.recipients)} needed, "
            f"{verdict.available} left; {retry}",
            message_id=header.id,
            sender=header.sender,
        )

    async def _claim(
        self, actor: str, decision: Accept, *, sequence: int, redelivered: bool
    ) -> tuple[Accept | Reject, bool]:
        """Record the message id; a second submission of an id is a replay.

        Returns the decision and whether this resumes an earlier attempt (the same
        submission handed out again after a crash, a lost ack or a consumer-leader
        failover), which metrics must not count twice.
        """
        envelope = decision.envelope
        record = MessageRecord(
            header=envelope.header.to_bytes().decode(),
            header_hash=envelope.header_hash,
            submitted_by=actor,
            accepted=self.clock(),
            deadline=decision.receipt_deadline,
            answer_by=_answer_by(envelope.header),
            submission=sequence,
        )
        value = record.model_dump_json().encode()
        try:
            revision = await self.bus.kv_create(subjects.MESSAGES_BUCKET, envelope.header.id, value)
            self._remember(envelope.header.id, value, revision)
            self._follow(envelope.header.id, record, -1)  # for the sweep: when it is due
            return decision, False
        except KvConflict:
            existing = await self._record(envelope.header.id)
        if existing is not None and _resumable(
            existing[0], envelope.header_hash, sequence, redelivered
        ):
            # The claiming submission again: an earlier attempt may have stopped short.
            return decision, True
        reject = Reject(
            Reason.REPLAY,
            "message id already seen",
            message_id=envelope.header.id,
            sender=envelope.header.sender,
        )
        return reject, False

    def _count_accepted(self, decision: Accept, status: str) -> None:
        header = decision.envelope.header
        self.metrics.accepted.labels(status=status).inc()
        self.metrics.deliveries.labels(
            classification=header.label.classification,
            priority=header.priority.value,
            status=header.status.value,
        ).inc(len(header.recipients))

    async def _fan_out(
        self, decision: Accept, *, first: Sequence[tuple[str, bytes, str]] = ()
    ) -> None:
        """Publish the envelope to every recipient, after ``first`` in the same batch."""
        header = decision.envelope.header
        data = decision.envelope.raw
        await self.bus.publish_many(
            [
                *first,
                *(
                    (subjects.deliver_subject(recipient), data, f"d.{header.id}.{recipient}")
                    for recipient in header.recipients
                ),
            ]
        )

    async def _apply_control(self, decision: Accept) -> None:
        header = decision.envelope.header
        if header.type is MessageType.MODE_CHANGE and header.control and header.control.mode:
            await self.bus.kv_put(
                subjects.STATE_BUCKET, subjects.MODE_KEY, header.control.mode.value.encode()
            )
            self.state.mode = header.control.mode
            self.state.changes += 1
            self.metrics.set_mode(header.control.mode.value)
            await self.audit(
                AuditKind.MODE_CHANGE,
                key=header.id,
                actor=header.sender,
                message=header.id,
                detail=f"mode is now {header.control.mode.value}",
            )
            return
        if header.incident is None or header.type not in (
            MessageType.ACTIVATION,
            MessageType.INCIDENT_CLOSE,
        ):
            return
        previous = self.state.incidents.get(header.incident)
        # The joins and the incident are written under one lock that process_joins also
        # takes before it judges a join: it never sees a join without its incident.
        async with self._incident_writes:
            if header.type is MessageType.ACTIVATION:
                incident = opened_by(header, previous)
                # Queued before the incident is written: a crash in between queues them again on
                # redelivery, where ``previous`` still lacks the newcomers. The requests go out
                # from :meth:`process_joins`, after the incident is written (a grant arriving at
                # another broker finds the newcomer a participant) and off the routing path.
                for newcomer in newcomers(previous, incident):
                    # Only what was sent before it joined: later messages that leave a
                    # participant out do so on purpose.
                    join = Join(
                        incident=incident.id,
                        newcomer=newcomer,
                        activation=header.id,
                        before=(header.created, header.id),
                    )
                    await self.bus.kv_put(
                        subjects.STATE_BUCKET,
                        subjects.join_key(incident.id, newcomer),
                        join.model_dump_json().encode(),
                    )
            else:
                assert previous is not None  # decide() refused a close of an unknown incident
                incident = closed_by(previous, header.created)
            revision = await self.bus.kv_put(
                subjects.STATE_BUCKET, subjects.incident_key(incident.id), incident.to_bytes()
            )
            self._incident_revisions[incident.id] = revision
            self.state.incidents[incident.id] = incident
            self.state.changes += 1
        self.metrics.set_open_incidents(
            i.status for i in self.state.incidents.values() if i.is_open
        )
        await self.audit(
            AuditKind.INCIDENT_CHANGE,
            key=header.id,
            actor=header.sender,
            message=header.id,
            incident=incident.id,
            recipients=incident.participants,
            status=incident.status.value,
            detail="closed" if incident.closed else f"open ({incident.type})",
        )

    # --- the incident index and late joiners ----------------------------------------------

    async def _index(self, decision: Accept) -> None:
        """Index an accepted message naming an incident (metadata only, never content)."""
        header = decision.envelope.header
        if header.incident is None:
            return
        entry = IncidentEntry.of(header, decision.envelope.header_hash)
        await self.bus.kv_put(
            subjects.INDEX_BUCKET,
            subjects.index_key(header.incident, header.id),
            entry.to_bytes(),
        )

    async def _index_entries(self, incident: str) -> list[IncidentEntry]:
        entries = []
        scanned = await self.bus.kv_entries(
            subjects.INDEX_BUCKET, subjects.index_prefix(incident) + ">", limit=MAX_INDEX_SCAN
        )
        if len(scanned) >= MAX_INDEX_SCAN:
            log.warning("incident %s: only the first %d index entries read", incident, len(scanned))
        for key, value in scanned:
            try:
                entries.append(IncidentEntry.parse(value, max_bytes=MAX_ENTRY_BYTES))
            except CoreError:
                log.error("unreadable index entry %s", key)
        return entries

    async def process_joins(self, *, budget: int = JOIN_BUDGET) -> int:
        """Ask originators to grant incidents' still-valid messages to actors that joined.

        Works through the queued joins (KV ``join.<incident>.<newcomer>``), at most
        ``budget`` messages per call, so one activation adding many actors to a busy
        incident cannot hold up routing. Per join, the newest :data:`MAX_GRANT_REQUESTS`
        unexpired messages the newcomer lacks, newest first; a message its label keeps from
        the newcomer (TLP:RED, AMBER+STRICT, clearance) is audited as ``grant_refused`` and
        nobody is asked. A newcomer that left again, or a closed incident, ends the join.
        Returns how many messages were handled.
        """
        handled = 0
        for key, value in await self.bus.kv_entries(subjects.STATE_BUCKET, subjects.JOIN_PATTERN):
            if handled >= budget:
                break
            try:
                join = Join.model_validate_json(value)
            except ValidationError:
                log.error("unreadable join %s dropped", key)
                await self.bus.kv_delete(subjects.STATE_BUCKET, key)
                continue
            handled += await self._join(key, join, budget - handled)
        return handled

    async def _join(self, key: str, join: Join, budget: int) -> int:
        now = self.clock()
        async with self._incident_writes:  # not between a join's write and its incident's
            await self._refresh_incident(join.incident)
            incident = self.state.incidents.get(join.incident)
            if (
                incident is None
                or not incident.is_open
                or join.newcomer not in incident.participants
            ):
                await self.bus.kv_delete(subjects.STATE_BUCKET, key)
                return 0
        lacking = sorted(
            (
                e
                for e in await self._index_entries(join.incident)
                if e.expires > now
                and e.sender != join.newcomer
                and join.newcomer not in e.recipients
                and (join.before is None or (e.created, e.id) < join.before)
            ),
            key=lambda e: (e.created, e.id),
            reverse=True,
        )
        if join.handled == 0 and len(lacking) > MAX_GRANT_REQUESTS:
            log.warning(
                "%s joined incident %s: %d older messages not offered for a grant",
                join.newcomer,
                join.incident,
                len(lacking) - MAX_GRANT_REQUESTS,
            )
        batch = lacking[: min(budget, MAX_GRANT_REQUESTS - join.handled)]
        for entry in batch:
            await self._request_grant(entry, join.newcomer, now)
        handled = join.handled + len(batch)
        if len(batch) == len(lacking) or handled >= MAX_GRANT_REQUESTS:
            await self.bus.kv_delete(subjects.STATE_BUCKET, key)
        else:  # a crash before this repeats at most one batch, under the same dedupe ids
            last = batch[-1]
            done = join.model_copy(update={"handled": handled, "before": (last.created, last.id)})
            await self.bus.kv_put(subjects.STATE_BUCKET, key, done.model_dump_json().encode())
        return len(batch)

    async def _request_grant(self, entry: IncidentEntry, newcomer: str, now: int) -> None:
        found = await self._record(entry.id)
        if found is None or found[0].header_hash != entry.header_hash:
            return  # the record expired with the message, or the index entry is stale
        record = found[0]
        if newcomer in record.granted:
            return  # joined before, left, and came back: it holds the key already
        status = entry.status.value
        why = grantable(entry.label, self.state.directory.actor(newcomer), self.state.policy, now)
        fields: dict[str, Any] = {
            "key": f"{entry.id}.{newcomer}",
            "actor": entry.sender,
            "message": entry.id,
            "recipients": (newcomer,),
            "incident": entry.incident,
            "status": status,
            "label": entry.label.wire(),
        }
        if why is not None:
            await self.audit(
                AuditKind.GRANT_REFUSED, reason="grant_not_allowed", detail=why, **fields
            )
            self.metrics.grants_refused.labels(status=status).inc()
            return
        await self._notify(
            entry.sender,
            record.header.encode(),
            NoticeKind.GRANT_REQUEST,
            key=f"{entry.id}.grant.{newcomer}",
            message=entry.id,
            header_hash=entry.header_hash,
            recipients=(newcomer,),
            detail=f"{newcomer} joined incident {entry.incident}",
        )
        await self.audit(AuditKind.GRANT_REQUESTED, **fields)
        self.metrics.grant_requests.labels(status=status).inc()

    # --- requests and their answers ---------------------------------------------------------

    async def _record_answers(self, decision: Accept) -> None:
        """A reply from a recipient of a request with a deadline is that recipient's answer."""
        header = decision.envelope.header
        for reference in header.references:
            if reference.kind is not ReferenceKind.REPLY:
                continue

            def answer(record: MessageRecord, reference: Reference = reference) -> bool:
                return _answered(record, reference, header)

            await self._update_record(reference.message, answer)

    async def _update_record(
        self,
        message_id: str,
        change: Callable[[MessageRecord], bool],
        *,
        known: tuple[MessageRecord, int] | None = None,
    ) -> MessageRecord | None:
        """Apply ``change`` to a message record by compare and set; ``change`` returns False
        when there is nothing to write. Returns the record written, else None. ``known``:
        the record and revision the caller read or wrote last, tried first (saves a read;
        if it changed since, the update conflicts and the record is read again); ``change``
        is applied to that record object itself."""
        async with self._records.hold(message_id):
            return await self._compare_and_set(message_id, change, known)

    async def _compare_and_set(
        self,
        message_id: str,
        change: Callable[[MessageRecord], bool],
        known: tuple[MessageRecord, int] | None,
    ) -> MessageRecord | None:
        for attempt in range(CAS_RETRIES):
            if attempt == 0:
                found = known or self._recent_record(message_id)  # known: changed in place
                if found is None:
                    found = await self._record(message_id)
            else:
                found = await self._record(message_id)
            if found is None:
                return None
            record, revision = found
            if not change(record):
                return None
            value = record.model_dump_json().encode()
            try:
                revision = await self.bus.kv_update(
                    subjects.MESSAGES_BUCKET, message_id, value, revision
                )
            except KvConflict:
                self._recent.pop(message_id, None)
                continue
            self._remember(message_id, value, revision)
            return record
        log.warning("message record %s kept changing; an update was given up", message_id)
        return None

    async def _rejected(self, actor: str, data: bytes, reject: Reject, status: str) -> None:
        self.metrics.rejected.labels(reason=reject.reason.value, status=status).inc()
        await self._refuse(
            actor,
            data,
            AuditKind.REJECTED,
            reject.reason.value,
            reject.detail,
            message=reject.message_id,
            recipients=reject.recipients,
            status=status,
        )

    async def _refuse(
        self,
        actor: str,
        data: bytes,
        kind: AuditKind,
        reason: str,
        detail: str,
        *,
        message: str | None = None,
        recipients: tuple[str, ...] = (),
        status: str | None = None,
    ) -> None:
        """Tell the submitting actor why, in a signed notice, and audit the refusal."""
        submission = crypto.sha256(data).hex()
        await self._notify(
            actor,
            data,
            NoticeKind.REJECTED,
            key=f"{submission}.rejected",
            message=message,
            reason=reason,
            recipients=recipients,
            detail=detail,
        )
        await self.audit(
            kind,
            key=submission,
            actor=actor,
            message=message,
            reason=reason,
            recipients=recipients,
            status=status,
            detail=detail,
        )

    # --- receipts -----------------------------------------------------------------------

    async def _receipt(self, actor: str, data: bytes, *, redelivered: bool) -> None:
        """Verify, record once, forward to the sender. A repeat of a receipt already
        recorded is forwarded and audited again only while JetStream's duplicate window
        still covers the receipt's time (the forward and the audit event are then dropped
        as duplicates if they were made before) or on a redelivery: either may finish an
        attempt that stopped between recording and forwarding (after a consumer-leader
        failover a redelivery can arrive with a delivery count of one). A replay beyond
        the window is not forwarded: it would reach the sender once more."""
        now = self.clock()
        try:
            receipt = verify_receipt(data, self.state.directory, now=now)
            if receipt.body.recipient != actor:
                raise ReceiptError(
                    "receipt published on another actor's subject", code="receipt_signer_mismatch"
                )
            body = receipt.body
            found = self._recent_record(body.message) or await self._record(body.message)
            if found is None:
                raise ReceiptError("no such message", code="receipt_unknown_message")
            record = found[0]
            check_receipt_matches(receipt, record.parsed_header(), record.header_hash)

            before: list[int] = []  # the time of the receipt of this kind recorded before

            def add(record: MessageRecord) -> bool:
                kinds = record.receipts.setdefault(body.recipient, {})
                if body.kind.value in kinds:
                    before[:] = [kinds[body.kind.value]]
                    return False  # already recorded (a redelivery or a repeat)
                kinds[body.kind.value] = body.at
                return True

            recorded = await self._update_record(body.message, add, known=found) is not None
        except ReceiptError as exc:
            self.metrics.receipts_rejected.labels(reason=exc.code).inc()
            await self._refuse(actor, data, AuditKind.RECEIPT_REJECTED, exc.code, exc.message)
            return
        if not recorded and not self._forward_again(body.at, before, now, redelivered):
            return
        header = record.parsed_header()
        await self.bus.publish(
            subjects.deliver_subject(body.sender),
            data,
            msg_id=f"r.{body.message}.{body.recipient}.{body.kind.value}",
        )
        if recorded:
            self.metrics.receipts.labels(kind=body.kind.value, status=header.status.value).inc()
        await self.audit(
            AuditKind.RECEIPT,
            key=f"{body.message}.{body.recipient}.{body.kind.value}",
            actor=actor,
            message=body.message,
            recipients=(body.recipient,),
            status=header.status.value,
            detail=body.kind.value,
        )

    def _forward_again(self, at: int, before: list[int], now: int, redelivered: bool) -> bool:
        """Whether a receipt already recorded is forwarded (and audited) once more: only
        the receipt that was recorded (same ``at``), on a redelivery or while JetStream's
        duplicate window surely still covers its first forward (which then drops this
        one). ``at`` is the recipient's word: a later or future-dated one is not resent."""
        if before != [at]:
            return False
        margin = self.state.policy.limits.clock_skew_seconds * 1000
        return redelivered or 0 <= now - at <= self.resend_window_ms - margin

    # --- key grants -----------------------------------------------------------------------

    async def _grant(self, actor: str, data: bytes) -> None:
        """An originator's key grant for a late joiner: check, record, deliver unchanged."""
        now = self.clock()
        grant: VerifiedGrant | None = None
        try:
            grant = verify_grant(
                data,
                self.state.directory,
                now=now,
                max_envelope_bytes=self.state.policy.limits.max_envelope_bytes,
            )
            if grant.body.sender != actor:
                raise GrantError(
                    "grant published on another actor's subject", code="grant_signer_mismatch"
                )
            await self._check_grant(grant, now)
        except GrantError as exc:
            self.metrics.grants_rejected.labels(reason=exc.code).inc()
            await self._refuse(
                actor,
                data,
                AuditKind.GRANT_REJECTED,
                exc.code,
                exc.message,
                message=grant.body.message if grant else None,
                recipients=(grant.body.recipient,) if grant else (),
                status=grant.envelope.header.status.value if grant else None,
            )
            return
        body, header = grant.body, grant.envelope.header

        def add(record: MessageRecord) -> bool:
            if body.recipient in record.granted:
                return False  # a redelivery or a repeat: delivered again, counted once
            record.granted[body.recipient] = now
            return True

        recorded = await self._update_record(body.message, add) is not None
        await self.bus.publish(
            subjects.deliver_subject(body.recipient),
            data,
            msg_id=f"g.{body.message}.{body.recipient}",
        )
        if recorded:
            self.metrics.grants.labels(status=header.status.value).inc()
        await self.audit(
            AuditKind.GRANTED,
            key=f"{body.message}.{body.recipient}",
            actor=actor,
            message=body.message,
            recipients=(body.recipient,),
            incident=body.incident,
            status=header.status.value,
            label=header.label.wire(),
        )

    async def _check_grant(self, grant: VerifiedGrant, now: int) -> None:
        """What only the broker knows: its record of the message and the incident now."""
        body, header = grant.body, grant.envelope.header
        found = await self._record(body.message)
        if found is None or found[0].header_hash != body.header_hash:
            raise GrantError("the broker accepted no such message", code="grant_unknown_message")
        await self._refresh_incident(body.incident)
        incident = self.state.incidents.get(body.incident)
        if incident is None or not incident.is_open or body.recipient not in incident.participants:
            raise GrantError(
                f"{body.recipient} does not take part in an open incident {body.incident}",
                code="grant_not_participant",
            )
        if header.expires <= now:
            raise GrantError("the message has expired", code="grant_expired")
        newcomer = self.state.directory.actor(body.recipient)
        why = grantable(header.label, newcomer, self.state.policy, now)
        if why is not None:
            raise GrantError(why, code="grant_not_allowed")
        assert newcomer is not None  # grantable() refuses an unknown newcomer
        if body.key_id not in {k.key_id for k in newcomer.encryption_keys if k.usable_at(now)}:
            raise GrantError(
                f"sealed to a key {body.recipient} cannot use now", code="recipient_key_invalid"
            )

    def _remember(self, message_id: str, value: bytes, revision: int) -> None:
        self._recent[message_id] = (value, revision, time.monotonic())
        self._recent.move_to_end(message_id)
        while len(self._recent) > RECENT_RECORDS:
            self._recent.popitem(last=False)

    def _recent_record(self, message_id: str) -> tuple[MessageRecord, int] | None:
        """A record as this broker last wrote it, parsed afresh (callers change it), or
        None. Only a first guess: its header and hash never change, and an update made
        on it after another broker's is refused by the compare-and-set, which reads again."""
        recent = self._recent.get(message_id)
        if recent is None or time.monotonic() - recent[2] > RECENT_RECORD_S:
            return None
        return MessageRecord.model_validate_json(recent[0]), recent[1]

    async def _record(self, message_id: str) -> tuple[MessageRecord, int] | None:
        try:
            entry = await self.bus.kv_get(subjects.MESSAGES_BUCKET, message_id)
        except ValueError:  # not a valid KV key: cannot be a message we accepted
            return None
        if entry is None:
            return None
        try:
            return MessageRecord.model_validate_json(entry.value), entry.revision
        except ValidationError:
            log.error("unreadable message record %s", message_id)
            return None

    # --- directory ----------------------------------------------------------------------

    async def _directory(self, actor: str, data: bytes) -> None:
        try:
            new = verify_directory(
                data, pinned=self.state.pinned_authority, previous=self.state.directory
            )
        except DirectoryError as exc:
            await self._refuse(actor, data, AuditKind.DIRECTORY_REJECTED, exc.code, exc.message)
            return
        await self.bus.kv_put(subjects.DIRECTORY_BUCKET, subjects.directory_key(new.version), data)
        self.state.directory = new
        self.state.changes += 1
        self.metrics.directory_version.set(new.version)
        await self._notify(
            actor,
            data,
            NoticeKind.ACCEPTED,
            key=f"directory.{new.version}.accepted",
            detail=f"directory version {new.version}",
        )
        await self.audit(
            AuditKind.DIRECTORY_CHANGE,
            key=new.hash,
            actor=actor,
            detail=f"version {new.version} ({new.hash})",
        )

    # --- escalation -----------------------------------------------------------------------

    async def _sweep_batch(self, limit: int) -> list[str]:
        """The next ``limit`` message records of a listing of all of them, listed again once
        it is worked through: with more records than one sweep reads, each is still visited
        in turn, and the (costly) listing is made once a round, not once a sweep."""
        if not self._sweep_round:
            self._sweep_round = sorted(await self.bus.kv_keys(subjects.MESSAGES_BUCKET))
            # Forget what expired from the bucket: room for records settled since.
            self._settled.intersection_update(self._sweep_round)
        batch, self._sweep_round = self._sweep_round[:limit], self._sweep_round[limit:]
        # What it reads when due, or saw through, holds nothing for this reading (a
        # record's deadlines never change): a broker reads only what it knows nothing of.
        return [key for key in batch if key not in self._due and key not in self._settled]

    async def sweep(self, *, limit: int = SWEEP_SCAN) -> int:
        """Escalate missed delivery deadlines and unanswered requests; returns how many
        notices that took (an escalation and an overdue request count one each).

        Reads the records whose time has come (``_due``: its own messages, and any
        record it has read with a deadline ahead), and of the next ``limit`` of all
        records in turn those it knows nothing of (messages another broker accepted, or
        this one before a restart): every record is still visited, without reading every
        one on every sweep, and a record seen through (``_settle``) is not read again."""
        now = self.clock()
        sent = 0
        due = sorted(key for key, at in self._due.items() if at <= now)
        scan = await self._sweep_batch(limit)  # none of those in _due
        keys = due + scan
        for index, key in enumerate(keys):
            try:
                sent += await self._visit(key, now)
            except BaseException:
                # The next sweep tries again: this record (``_follow`` may have let it go
                # before its chase failed) and the records of the turn not yet read.
                self._due[key] = now
                self._sweep_round[:0] = keys[max(index + 1, len(due)) :]
                raise
        return sent

    async def _visit(self, key: str, now: int) -> int:
        """Read one record; chase what it missed and mark it. Returns the notices sent."""
        found = await self._record(key)
        if found is None:
            self._due.pop(key, None)
            return 0
        record = found[0]
        self._follow(key, record, now)
        missing = () if record.escalated or record.deadline > now else record.unconfirmed()
        unanswered = (
            record.unanswered()
            if record.answer_by is not None and not record.overdue and record.answer_by <= now
            else ()
        )
        if not missing and not unanswered:
            self._settle(key)
            return 0
        # Notices and audit events first, then mark the record: a crash in between
        # repeats them on the next sweep under the same dedupe ids instead of losing
        # them. Of two brokers sweeping at once, JetStream keeps one notice and the mark
        # counts once.
        header = record.parsed_header()
        if missing:
            await self._chase(record, header, NoticeKind.ESCALATION, AuditKind.ESCALATION, missing)
        if unanswered:
            await self._chase(
                record, header, NoticeKind.OVERDUE, AuditKind.REQUEST_OVERDUE, unanswered
            )
        marked = _Marks(escalated=bool(missing), overdue=bool(unanswered))
        # Compare and set: the record may have changed since it was read (a receipt, an
        # answer, the end of routing, or another broker's sweep marking it first).
        await self._update_record(key, marked.apply)
        labels = {"priority": header.priority.value, "status": header.status.value}
        if marked.set_escalated:
            self.metrics.escalations.labels(**labels).inc()
        if marked.set_overdue:
            self.metrics.requests_overdue.labels(**labels).inc()
        self._settle(key)
        return marked.set_escalated + marked.set_overdue

    def _settle(self, key: str) -> None:
        """After a visit that left nothing to do: a record with no deadline ahead
        (``_follow`` dropped it from ``_due``) is not read in turn again. At most
        SETTLED_RECORDS are remembered; beyond that, records are read in turn as before."""
        if key not in self._due and len(self._settled) < SETTLED_RECORDS:
            self._settled.add(key)

    def _follow(self, key: str, record: MessageRecord, now: int) -> None:
        """Keep in ``_due`` when this record next needs a look: its delivery deadline or
        its answer deadline, whichever is still ahead and not yet chased; else drop it."""
        ahead = [
            at
            for at, done in (
                (record.deadline, record.escalated),
                (record.answer_by, record.overdue),
            )
            if at is not None and not done and at > now
        ]
        if ahead:
            self._due[key] = min(ahead)
        else:
            self._due.pop(key, None)

    async def _chase(
        self,
        record: MessageRecord,
        header: Header,
        notice: NoticeKind,
        kind: AuditKind,
        late: tuple[str, ...],
    ) -> None:
        """Tell a sender which recipients missed a deadline, and audit it."""
        await self._notify(
            header.sender,
            record.header.encode(),
            notice,
            key=f"{header.id}.{notice.value}",
            message=header.id,
            header_hash=record.header_hash,
            recipients=late,
            detail=_CHASE_DETAIL[notice],
        )
        await self.audit(
            kind,
            key=header.id,
            actor=header.sender,
            message=header.id,
            recipients=late,
            status=header.status.value,
            priority=header.priority.value,
            label=header.label.wire(),
            incident=header.incident,
        )

    # --- notices and audit ------------------------------------------------------------------

    async def _notify(
        self,
        to: str,
        submission: bytes,
        kind: NoticeKind,
        *,
        key: str,
        message: str | None = None,
        header_hash: str | None = None,
        reason: str | None = None,
        recipients: tuple[str, ...] = (),
        detail: str = "",
    ) -> None:
        try:
            notice = make_notice(
                self.identity,
                kind,
                to=to,
                submission=submission,
                at=self.clock(),
                message=message,
                header_hash=header_hash,
                reason=reason,
                recipients=recipients,
                detail=detail,
            )
        except NoticeError:  # e.g. 200 long recipient ids: send the verdict without the list
            notice = make_notice(
                self.identity,
                kind,
                to=to,
                submission=submission,
                at=self.clock(),
                message=message,
                header_hash=header_hash,
                reason=reason,
                detail="recipients omitted: too many to list in a notice",
            )
        await self.bus.publish(subjects.deliver_subject(to), notice, msg_id=f"n.{key}")
        self.metrics.notices.labels(kind=kind.value).inc()

    async def audit(self, kind: AuditKind, *, key: str, actor: str | None, **fields: Any) -> None:
        subject, body, msg_id = self._audit_event(kind, key=key, actor=actor, **fields)
        await self.bus.publish(subject, body, msg_id=msg_id)
        self.metrics.audit_events.labels(kind=kind.value).inc()

    def _audit_event(
        self, kind: AuditKind, *, key: str, actor: str | None, **fields: Any
    ) -> tuple[str, bytes, str]:
        """An audit event as a publish: subject, body and dedupe id."""
        event_id, body = audit_event(
            kind, at=self.clock(), broker=self.identity.broker, key=key, actor=actor, **fields
        )
        return subjects.audit_subject(kind.value), body, f"a.{event_id}"


_CHASE_DETAIL: dict[NoticeKind, str] = {
    NoticeKind.ESCALATION: "delivery not confirmed by the deadline",
    NoticeKind.OVERDUE: "request not answered by its deadline",
}


_STATE_CHANGING = frozenset(
    t.value for t in (MessageType.MODE_CHANGE, MessageType.ACTIVATION, MessageType.INCIDENT_CLOSE)
)


def _answer_by(header: Header) -> int | None:
    """A request's answer deadline; None for anything else."""
    if header.type is not MessageType.REQUEST or header.control is None:
        return None
    return header.control.deadline


def _resumable(record: MessageRecord, header_hash: str, sequence: int, redelivered: bool) -> bool:
    """Whether a submission whose id is already claimed finishes an earlier attempt
    rather than replaying the message: the same envelope in the same stream message
    (a redelivery, whatever its delivery count says: after a consumer-leader failover
    it can be one). Every step of routing is idempotent, so finishing twice is harmless;
    the same bytes published again are a new stream message, and a replay. A record
    written by a broker before records named their submission keeps the earlier rule:
    a redelivery, or an attempt not marked ``routed``."""
    if record.header_hash != header_hash:
        return False
    if record.submission is None:
        return redelivered or not record.routed
    return record.submission == sequence


@dataclass
class _Marks:
    """The sweep's marks on a record it chased, and which of them this sweep set (the
    metrics count those; a mark another broker set first is not counted twice)."""

    escalated: bool
    overdue: bool
    set_escalated: bool = False
    set_overdue: bool = False

    def apply(self, record: MessageRecord) -> bool:
        self.set_escalated = self.escalated and not record.escalated
        self.set_overdue = self.overdue and not record.overdue
        record.escalated = record.escalated or self.escalated
        record.overdue = record.overdue or self.overdue
        return self.set_escalated or self.set_overdue


def _answered(record: MessageRecord, reference: Reference, reply: Header) -> bool:
    """Record ``reply`` as its sender's answer to the request ``record``; False if it is
    not one (no deadline, another version of the request, not a recipient, not sent to
    the requester, already in)."""
    if record.answer_by is None or reference.header_hash != record.header_hash:
        return False
    request = record.parsed_header()
    if reply.sender in record.answers or reply.sender not in request.recipients:
        return False
    if request.sender not in reply.recipients:  # a reply to others does not answer
        return False
    record.answers[reply.sender] = reply.created
    return True


def _press_draft_reference(header: Header) -> Reference | None:
    """The draft a press-line approval updates: its single ``update`` reference."""
    updates = [r for r in header.references if r.kind is ReferenceKind.UPDATE]
    return updates[0] if len(updates) == 1 else None
