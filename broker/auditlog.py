"""The audit trail's tamper evidence in the service: sealing, verifying, exporting.

- :class:`AuditSealer` seals new events on the ``SSR_AUDIT`` stream with a signed
  checkpoint (``broker.core.auditchain``). Several brokers may run it: the latest
  checkpoint lives under ``audit.checkpoint`` in the state bucket, and only the
  broker whose compare-and-set wins publishes the next one (``ssr.audit.checkpoint``).
  A checkpoint that won in the bucket but was never published (a crash in between)
  is published by the next sealer.
- :func:`verify_stream` reads the stream back and checks it against its
  checkpoints and the latest one in the bucket (which a truncation of the stream
  does not reach), the whole trail or (``start``) only the part after a checkpoint
  an earlier check verified. :class:`AuditWatch` keeps the outcome for status,
  metrics and the officers' API and plans the periodic checks: each continues from
  the latest checkpoint the previous clean check verified, and the whole trail is
  verified again at start-up, after any finding or failure and at least every
  ``audit_full_verify_interval_s``. :class:`DirectoryCache` likewise reads only the
  directory versions published since the previous check.
- :func:`build_export` / :func:`verify_export`: a signed file holding a part of the
  trail (a period, optionally one actor's events; the others redacted to their
  sealed leaves), the checkpoints that seal it and the directory versions whose
  broker keys signed them, so it verifies on another machine without network,
  given only the pinned authority key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.core import CoreError, VerifiedDirectory, canonical, crypto, verify_directory
from broker.core.auditchain import (
    CHECKPOINT_KIND,
    MAX_LEAVES,
    AuditChainError,
    Checkpoint,
    Finding,
    TrailReport,
    broker_key,
    make_checkpoint,
    parse_checkpoint,
    verify_checkpoint,
    verify_trail,
)
from broker.core.keys import b64, unb64
from broker.core.notices import BrokerIdentity

from . import subjects
from .audit_index import concerns
from .bus import JetStreamBus, KvConflict

log = logging.getLogger("ssr.audit")

CHECKPOINT_KEY = "audit.checkpoint"
CHECKPOINT_SUBJECT = subjects.audit_subject(CHECKPOINT_KIND)
EXPORT_KIND = "ssr-audit-export"
MAX_EXPORT_BYTES = 512 * 1024 * 1024
READ_BATCH = 1000


# --- sealing ------------------------------------------------------------------------------


class AuditSealer:
    """Seals the audit stream, one checkpoint of at most ``max_leaves`` events per call."""

    def __init__(
        self,
        bus: JetStreamBus,
        identity: BrokerIdentity,
        clock: Callable[[], int],
        directory: Callable[[], VerifiedDirectory],
        *,
        max_leaves: int = MAX_LEAVES,
    ) -> None:
        self.bus = bus
        self.identity = identity
        self.directory = directory
        self.clock = clock
        self.max_leaves = max_leaves

    async def latest(self) -> tuple[Checkpoint | None, int | None]:
        """The latest checkpoint in the state bucket and its revision."""
        entry = await self.bus.kv_get(subjects.STATE_BUCKET, CHECKPOINT_KEY)
        if entry is None:
            return None, None
        return parse_checkpoint(entry.value), entry.revision

    async def seal(self) -> Checkpoint | None:
        """Seal what is new; returns the checkpoint, or None (nothing new, or another
        broker sealed first). Raises :class:`AuditChainError` when the stream has a gap
        where events should be (someone deleted them): sealing stops there, loudly."""
        latest, revision = await self.latest()
        await self._publish_if_missing(latest)
        start = 1 if latest is None else latest.last + 1
        _, last_seq = await self.bus.stream_bounds(subjects.AUDIT_STREAM)
        if last_seq < start:
            return None
        count = min(self.max_leaves, last_seq - start + 1)
        entries = await self.bus.read_stream(
            subjects.AUDIT_STREAM, subjects.AUDIT_WILDCARD, start, count
        )
        contiguous = [(e.seq, e.data) for i, e in enumerate(entries) if e.seq == start + i]
        if latest is not None and contiguous == [(start, latest.raw)]:
            # Only our last checkpoint's own event is new: sealing it would write a
            # checkpoint every round on an idle system. It is sealed with the next events.
            return None
        if len(contiguous) < len(entries) or (entries and entries[0].seq != start):
            missing = start + len(contiguous)
            if not contiguous:
                raise AuditChainError(
                    f"audit event {missing} is missing from the stream: sealing stops here",
                    code="checkpoint_gap",
                )
            log.error("audit event %d is missing: sealing up to it, then stopping", missing)
        now = self.clock()
        key_id = self.identity.signing.key_id
        if broker_key([self.directory()], self.identity.broker, key_id, now) is None:
            raise AuditChainError(
                "this broker's key is not usable now: it must not seal", code="sealer_key_invalid"
            )
        checkpoint = make_checkpoint(
            contiguous,
            after=latest,
            at=now,
            broker=self.identity.broker,
            signer=self.identity.signing,
        )
        try:
            if revision is None:
                await self.bus.kv_create(subjects.STATE_BUCKET, CHECKPOINT_KEY, checkpoint.raw)
            else:
                await self.bus.kv_update(
                    subjects.STATE_BUCKET, CHECKPOINT_KEY, checkpoint.raw, revision
                )
        except KvConflict:
            return None  # another broker sealed this range first
        await self._publish(checkpoint)
        return checkpoint

    async def _publish_if_missing(self, latest: Checkpoint | None) -> None:
        if latest is None:
            return
        found = await self.bus.last_on_subject(subjects.AUDIT_STREAM, CHECKPOINT_SUBJECT)
        if found is not None:
            try:
                if parse_checkpoint(found.data).number >= latest.number:
                    return
            except AuditChainError:
                pass  # verification reports it; publish the real one after it
        log.warning("checkpoint %d was sealed but not published; publishing it", latest.number)
        await self._publish(latest)

    async def _publish(self, checkpoint: Checkpoint) -> None:
        await self.bus.publish(
            CHECKPOINT_SUBJECT, checkpoint.raw, msg_id=f"a.checkpoint.{checkpoint.number}"
        )


# --- verifying ----------------------------------------------------------------------------


async def read_trail(
    bus: JetStreamBus, start_seq: int = 1, *, limit: int | None = None
) -> list[tuple[int, bytes | None]]:
    """Every stored audit event from ``start_seq`` on, in stream order."""
    entries: list[tuple[int, bytes | None]] = []
    seq = start_seq
    while limit is None or len(entries) < limit:
        batch = await bus.read_stream(
            subjects.AUDIT_STREAM, subjects.AUDIT_WILDCARD, seq, READ_BATCH
        )
        if not batch:
            break
        entries.extend((e.seq, e.data) for e in batch)
        seq = batch[-1].seq + 1
    return entries


async def directory_versions(
    bus: JetStreamBus,
    pinned: bytes,
    *,
    cache: DirectoryCache | None = None,
    reread: bool = False,
) -> list[VerifiedDirectory]:
    """Every directory version in the bucket that chains from version 1, oldest first.

    With ``cache``, only the versions after those it holds are read (and added to it);
    ``reread`` empties it first, so that every version is read and verified again.
    """
    if cache is None:
        cache = DirectoryCache()
    return await cache.update(bus, pinned, reread=reread)


class DirectoryCache:
    """The directory versions verified so far, oldest first, for the periodic checks.

    A version once verified is not read again until a re-read (``reread``): a version
    changed in the bucket afterwards shows only then. As without a cache, the list
    stops at the first version that does not chain; that one is tried again each time.
    """

    def __init__(self) -> None:
        self.versions: list[VerifiedDirectory] = []
        self._pinned: bytes | None = None
        self._lock = asyncio.Lock()

    async def update(
        self, bus: JetStreamBus, pinned: bytes, *, reread: bool = False
    ) -> list[VerifiedDirectory]:
        async with self._lock:  # two checks at once must not add a version twice
            if reread or pinned != self._pinned:
                self.versions, self._pinned = [], pinned
            while True:
                key = subjects.directory_key(len(self.versions) + 1)
                entry = await bus.kv_get(subjects.DIRECTORY_BUCKET, key)
                if entry is None:
                    break
                previous = self.versions[-1] if self.versions else None
                try:
                    verified = verify_directory(entry.value, pinned=pinned, previous=previous)
                except CoreError:
                    break
                self.versions.append(verified)
            return list(self.versions)


def verified_versions(raws: Sequence[bytes], pinned: bytes) -> list[VerifiedDirectory]:
    """The versions that chain from the first one, oldest first (stops at the first break)."""
    versions: list[VerifiedDirectory] = []
    for raw in raws:
        try:
            previous = versions[-1] if versions else None
            versions.append(verify_directory(raw, pinned=pinned, previous=previous))
        except CoreError:
            break
    return versions


async def verify_stream(
    bus: JetStreamBus,
    directories: Sequence[VerifiedDirectory],
    *,
    anchor: Mapping[str, Any] | None = None,
    start: Checkpoint | None = None,
) -> TrailReport:
    """Check the whole stored trail against its checkpoints and the bucket's latest one.

    ``anchor`` is a checkpoint (``{"number", "hash"}``) noted outside NATS earlier (from
    ``/api/v1/audit/status``): the trail must still hold it, unchanged, whatever the
    bucket now says (someone with NATS rights could rewind the bucket with the stream).

    ``start`` is a checkpoint an earlier check of this stream verified: only the events
    after it are read (from ``start.last + 1``, which includes ``start``'s own event) and
    checked as continuing it, and the report covers that part only (``events``,
    ``checkpoints``). The events up to ``start.last`` are not read again, so a change to
    them is not seen; nor is an ``anchor`` or a bucket checkpoint older than ``start``
    compared. What is checked: the stream still reaches ``start.last`` and still begins
    at sequence 1, the new part's seals, deletions and truncation, and that neither the
    stream nor the bucket holds a checkpoint numbered like ``start`` but different.
    """
    # The bucket first: a checkpoint sealed while the stream is read is then in the stream
    # read, not only in the bucket (which would look like a truncation).
    found = await bus.kv_get(subjects.STATE_BUCKET, CHECKPOINT_KEY)
    first_seq, through = await bus.stream_bounds(subjects.AUDIT_STREAM)
    entries = await read_trail(bus, 1 if start is None else start.last + 1)
    expected = None
    unreadable = False
    if found is not None:
        try:
            latest = parse_checkpoint(found.value)
            expected = {"number": latest.number, "hash": latest.hash}
        except AuditChainError:
            unreadable = True  # reported below; the tail and the anchor are still checked
    report = verify_trail(entries, directories, expected=expected, start=start, through=through)
    if start is not None:
        for finding in _continues(start, entries, first_seq, through, expected):
            if finding not in report.findings:
                report = _with(report, finding)
    if unreadable:
        report = _with(
            report,
            Finding(
                None,
                "checkpoint_invalid",
                "the latest checkpoint in the state bucket is unreadable",
            ),
        )
    if anchor is not None:
        pinned = verify_trail(entries, directories, expected=anchor, start=start, through=through)
        for finding in pinned.findings:
            if finding not in report.findings:
                report = _with(report, finding)
    return report


def _continues(
    start: Checkpoint,
    entries: Sequence[tuple[int, bytes | None]],
    first_seq: int,
    through: int,
    expected: Mapping[str, Any] | None,
) -> list[Finding]:
    """What a check from ``start`` adds to :func:`verify_trail`: the stream still holds
    the part verified before (its ends), and ``start`` is still the checkpoint of its
    number (``verify_trail`` compares the bucket's only with checkpoints it has read)."""
    findings: list[Finding] = []
    if first_seq > 1:
        findings.append(
            Finding(
                1,
                "deleted",
                f"the stream now begins at sequence {first_seq}: the events before it,"
                " verified earlier, are gone",
            )
        )
    if through < start.last:
        findings.append(
            Finding(
                None,
                "truncated",
                f"the stream ends at sequence {through}, before sequence {start.last} that"
                f" checkpoint {start.number} sealed and an earlier check verified",
            )
        )
    for seq, data in entries:
        if data is None or b'"kind":"checkpoint"' not in data:
            continue
        try:
            stored = parse_checkpoint(data)
        except AuditChainError:
            continue  # verify_trail reports it
        if stored.number == start.number and stored.hash != start.hash:
            findings.append(
                Finding(
                    seq,
                    "checkpoint_conflict",
                    f"checkpoint {start.number} differs from the one verified earlier",
                )
            )
        elif stored.number < start.number:  # sealed again after a rollback of the bucket
            findings.append(
                Finding(
                    seq,
                    "checkpoint_conflict",
                    f"checkpoint {stored.number} stored after checkpoint {start.number}",
                )
            )
    number = None if expected is None else expected.get("number")
    if isinstance(number, int) and number < start.number:
        findings.append(
            Finding(
                None,
                "checkpoint_conflict",
                f"the state bucket's latest checkpoint is {number}, older than checkpoint"
                f" {start.number} verified earlier (rolled back?)",
            )
        )
    if (
        expected is not None
        and expected.get("number") == start.number
        and expected.get("hash") != start.hash
    ):
        findings.append(
            Finding(
                None,
                "checkpoint_conflict",
                f"the state bucket's checkpoint {start.number} differs from the one"
                " verified earlier",
            )
        )
    return findings


def _with(report: TrailReport, finding: Finding) -> TrailReport:
    return TrailReport(
        report.events, report.checkpoints, report.sealed_through, report.unsealed,
        (*report.findings, finding), report.latest,
    )  # fmt: skip


@dataclass(frozen=True)
class AuditCheck:
    """One planned verification (:meth:`AuditWatch.begin`): the whole trail (``start`` is
    None) or the part after ``start``, the latest checkpoint of ``base``, a clean report."""

    start: Checkpoint | None
    base: TrailReport | None
    began: float  # time.monotonic()

    @property
    def full(self) -> bool:
        return self.start is None


@dataclass
class AuditWatch:
    """The latest verification of the trail, as the officers' API and metrics show it.

    It also plans the periodic checks (:meth:`begin`, :meth:`finish`): each verifies only
    what follows the latest checkpoint the previous check verified without findings, and
    the report then still describes the whole trail (the earlier part's counts plus the
    new part's; the new part's checkpoint and findings). A full check (from sequence 1,
    every directory version read again) runs first, after a check with findings or one
    that failed, while sealing is stopped, and once ``full_interval_s`` has passed since
    the last full one began.
    """

    report: TrailReport | None = None
    checked_at: int | None = None
    seal_error: str | None = None  # sealing stopped (a gap, an unusable key): an alarm until fixed
    full_check_at: int | None = None  # when the latest full check finished (epoch ms)
    directories: DirectoryCache = field(default_factory=DirectoryCache, repr=False)
    _resume: TrailReport | None = field(default=None, init=False, repr=False)
    _full_began: float | None = field(default=None, init=False, repr=False)

    def begin(self, full_interval_s: float) -> AuditCheck:
        """Plan the next check. Until it is finished, the one after it is full (a check
        that fails is never finished)."""
        now = time.monotonic()
        base, self._resume = self._resume, None
        due = self._full_began is None or now - self._full_began >= full_interval_s
        if due or base is None or base.latest is None or self.seal_error is not None:
            return AuditCheck(None, None, now)
        return AuditCheck(base.latest, base, now)

    def finish(self, check: AuditCheck, part: TrailReport, at: int) -> TrailReport:
        """Record what ``check`` found (``part``: :func:`verify_stream`'s report, from
        ``check.start``) as a report on the whole trail, and return that."""
        base = check.base
        if base is None:
            report = part
        else:
            report = TrailReport(
                events=base.events - base.unsealed + part.events,
                checkpoints=base.checkpoints + part.checkpoints,
                sealed_through=part.sealed_through,
                unsealed=part.unsealed,
                findings=part.findings,
                latest=part.latest,
            )
        self.report, self.checked_at = report, at
        if check.full:
            self.full_check_at = at
            if self._full_began is None or check.began > self._full_began:
                self._full_began = check.began
        self._resume = report if report.verified and report.latest is not None else None
        return report

    @property
    def verified(self) -> bool | None:
        if self.report is None:
            return None if self.seal_error is None else False
        return self.report.verified and self.seal_error is None

    def status(self) -> dict[str, Any]:
        report = self.report
        findings = [] if report is None else [f.as_dict() for f in report.findings]
        if self.seal_error is not None:
            findings.append({"seq": None, "problem": "sealing_stopped", "detail": self.seal_error})
        latest = None if report is None or report.latest is None else report.latest
        return {
            "verified": self.verified,
            "checked_at": self.checked_at,
            "events": 0 if report is None else report.events,
            "sealed_through": 0 if report is None else report.sealed_through,
            "latest_checkpoint": None
            if latest is None
            else {"number": latest.number, "hash": latest.hash},
            "findings": findings,
        }


# --- exports ------------------------------------------------------------------------------


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):  # keys.unb64 expects a str
        raise ValueError("not a base64 string")
    return unb64(text)


def _event_fields(data: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _selected(data: bytes, start: int, end: int, actor: str | None) -> bool:
    doc = _event_fields(data)
    if doc is None or doc.get("kind") == CHECKPOINT_KIND:
        return False
    at = doc.get("at")
    if not isinstance(at, int) or not start <= at < end:
        return False
    return actor is None or concerns(doc, actor)


class ExportRefused(AuditChainError):
    """The trail does not verify: no export is made of it (``report`` says why)."""

    code = "export_refused"

    def __init__(self, report: TrailReport) -> None:
        first = report.findings[0]
        super().__init__(
            f"the audit trail does not verify ({len(report.findings)} finding(s), first:"
            f" {first.problem} at {first.seq}): fix or investigate it before exporting"
        )
        self.report = report


@dataclass(frozen=True)
class ExportSummary:
    selected: int  # events matching the filter, included in full
    redacted: int  # other sealed events in the covered range, as leaves only
    unsealed_left_out: int  # matching events not sealed yet: not exported
    first_seq: int
    last_seq: int


def build_export(
    entries: Sequence[tuple[int, bytes | None]],
    *,
    directories: Sequence[VerifiedDirectory],
    start: int,
    end: int,
    actor: str | None,
    identity: BrokerIdentity,
    at: int,
    expected_latest: Mapping[str, Any] | None = None,
) -> tuple[bytes, ExportSummary]:
    """A signed export of the sealed events with ``start <= at < end`` (epoch ms),
    those concerning ``actor`` if given; other events in the covered range are redacted.

    The whole trail is verified first and an export of a broken trail is refused
    (:class:`ExportRefused`): a redacted event cannot be checked by the reader, so the
    exporting broker vouches, by signing, that every event it redacted was sealed intact.
    """
    report = verify_trail(entries, directories, expected=expected_latest)
    if not report.verified:
        raise ExportRefused(report)
    stored = {seq: data for seq, data in entries if data is not None}
    checkpoints: dict[int, Checkpoint] = {}
    position: dict[int, int] = {}
    for seq, data in stored.items():
        if b'"kind":"checkpoint"' in data[:4096]:
            try:
                checkpoint = verify_checkpoint(data, directories)
            except AuditChainError:
                continue
            checkpoints[checkpoint.number] = checkpoint
            position[checkpoint.number] = seq
    chosen = [seq for seq, data in stored.items() if _selected(data, start, end, actor)]
    sealed_through = max((c.last for c in checkpoints.values()), default=0)
    sealed = [seq for seq in chosen if seq <= sealed_through]
    covering = sorted(
        (
            c
            for c in checkpoints.values()
            if sealed and c.last >= min(sealed) and c.first <= max(sealed)
        ),
        key=lambda c: c.number,
    )
    out_entries: list[list[Any]] = []
    first_seq = last_seq = 0
    if covering:
        first_seq, last_seq = covering[0].first, covering[-1].last
        keep = set(sealed) | {position[c.number] for c in covering}
        tail = max(position[c.number] for c in covering)
        for seq in range(first_seq, max(last_seq, tail) + 1):
            event = stored.get(seq)
            if event is None:
                continue  # a gap in the stream: the export shows it as deleted
            out_entries.append([seq, b64(event) if seq in keep else None])
    before = checkpoints.get(covering[0].number - 1) if covering else None
    expected = {"number": covering[-1].number, "hash": covering[-1].hash} if covering else None
    body = {
        "v": 1,
        "kind": EXPORT_KIND,
        "exported_at": at,
        "broker": identity.broker,
        "signer_key": identity.signing.key_id,
        "filter": {"from": start, "to": end, "actor": actor},
        "directory": [b64(d.raw) for d in directories],
        "start": None if before is None else b64(before.raw),
        "expected": expected,
        "entries": out_entries,
    }
    signature = identity.signing.sign(canonical.dumps(body)).hex()
    summary = ExportSummary(
        selected=len(sealed),
        redacted=sum(1 for _, d in out_entries if d is None),
        unsealed_left_out=len(chosen) - len(sealed),
        first_seq=first_seq,
        last_seq=last_seq,
    )
    return canonical.dumps(body | {"signature": signature}), summary


@dataclass(frozen=True)
class ExportReport:
    trail: TrailReport | None
    findings: tuple[Finding, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return not self.findings and self.trail is not None and self.trail.verified

    def as_dict(self) -> dict[str, Any]:
        trail = self.trail.as_dict() if self.trail is not None else {}
        findings = [f.as_dict() for f in self.findings] + trail.get("findings", [])
        return {**trail, **self.meta, "verified": self.verified, "findings": findings}


def _require(condition: object) -> None:
    if not condition:
        raise ValueError("unexpected structure")


def verify_export(data: bytes, pinned: bytes) -> ExportReport:
    """Verify an export offline with only the pinned authority public key."""

    def broken(problem: str, detail: str) -> ExportReport:
        return ExportReport(None, (Finding(None, problem, detail),))

    if len(data) > MAX_EXPORT_BYTES:
        return broken("export_invalid", f"larger than {MAX_EXPORT_BYTES} bytes")
    try:
        doc = json.loads(data)
        _require(isinstance(doc, dict) and doc.get("kind") == EXPORT_KIND and doc.get("v") == 1)
        signature = bytes.fromhex(str(doc.pop("signature")))
        raws = [_unb64(x) for x in doc["directory"]]
        rows = doc["entries"]
        _require(isinstance(rows, list))
        entries: list[tuple[int, bytes | None]] = []
        for row in rows:
            _require(isinstance(row, list) and len(row) == 2)
            seq, value = row
            _require(isinstance(seq, int) and not isinstance(seq, bool) and seq >= 1)
            entries.append((seq, None if value is None else _unb64(value)))
        start_raw = None if doc.get("start") is None else _unb64(doc["start"])
        expected = doc.get("expected")
        _require(expected is None or isinstance(expected, dict))
        if expected is not None:
            number, digest = expected.get("number"), expected.get("hash")
            _require(isinstance(number, int) and not isinstance(number, bool) and number >= 1)
            _require(isinstance(digest, str) and len(bytes.fromhex(digest)) == 32)
        exported_at = doc.get("exported_at")
        _require(isinstance(exported_at, int) and not isinstance(exported_at, bool))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as exc:
        return broken("export_invalid", f"not an ssr audit export: {exc or type(exc).__name__}")
    directories = verified_versions(raws, pinned)
    if not directories:
        return broken(
            "export_directory",
            "the directory in the export does not verify against the pinned authority key",
        )
    findings: list[Finding] = []
    if len(directories) < len(raws):
        findings.append(
            Finding(None, "export_directory", "a directory version in the export does not chain")
        )
    signer = broker_key(
        directories, str(doc.get("broker")), str(doc.get("signer_key")), int(exported_at)
    )
    try:
        if signer is None:
            raise crypto.CryptoFailure
        crypto.verify(signer.record.raw, canonical.dumps(doc), signature)
    except (crypto.CryptoFailure, CoreError, ValueError):
        findings.append(
            Finding(
                None,
                "export_signature",
                "the export's signature does not verify: the file was changed",
            )
        )
    start = None
    if start_raw is not None:
        try:
            start = verify_checkpoint(start_raw, directories)
        except AuditChainError as exc:
            findings.append(
                Finding(None, exc.code, f"the export's starting checkpoint: {exc.message}")
            )
    if start is not None and entries and entries[0][0] != start.last + 1:
        findings.append(
            Finding(entries[0][0], "inserted", "the export does not continue its start")
        )
    report = verify_trail(entries, directories, expected=expected, start=start)
    meta = {
        "filter": doc.get("filter"),
        "broker": doc.get("broker"),
        "exported_at": doc.get("exported_at"),
    }
    return ExportReport(report, tuple(findings), meta)


__all__ = [
    "CHECKPOINT_KEY",
    "CHECKPOINT_SUBJECT",
    "AuditCheck",
    "AuditSealer",
    "AuditWatch",
    "DirectoryCache",
    "ExportReport",
    "ExportSummary",
    "build_export",
    "directory_versions",
    "read_trail",
    "verified_versions",
    "verify_export",
    "verify_stream",
]
