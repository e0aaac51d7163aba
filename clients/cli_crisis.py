"""The crisis verbs of ``ssr``: incidents, lägesbild, requests, press lines and bundles.

    ssr --demo-dir .ssr-data activate storm-ylva --type storm --actor lansstyrelsen-stockholm
    ssr --demo-dir .ssr-data situation storm-ylva --actor nacka
    ssr --demo-dir .ssr-data request --actor nacka --incident storm-ylva --answer-by 30m --text ...
    ssr --demo-dir .ssr-data requests --actor nacka
    ssr --demo-dir .ssr-data press draft storm-ylva --actor nacka --text ...
    ssr --demo-dir .ssr-data press approve DRAFT_ID --actor lansstyrelsen-stockholm
    ssr --demo-dir .ssr-data press list storm-ylva --actor nacka
    ssr --demo-dir .ssr-data export --actor nacka --incident storm-ylva --out storm.bundle
    ssr --demo-dir .ssr-data import --actor solna storm.bundle

Every verb acts as one actor through :class:`Client`, with the connection options,
environment fallbacks, output and exit codes of ``cli_messages`` (whose helpers it
uses): 0 done; 1 refused by the broker, a bundle that does not verify, NATS
unreachable, a wait timed out; 2 bad usage or unreadable input. ``situation``,
``requests``, ``press list``, ``export`` and ``import`` work offline from the state
folder once it holds a verified directory.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from broker.core import IncidentEntry, Policy, Priority, Status, Tlp
from broker.core.wire import SLUG_PATTERN
from clients.cli import EXIT_CHECK_FAILED, EXIT_OK, CliError
from clients.cli_messages import (
    CONNECT_TIMEOUT_S,
    DEFAULT_SETTLE_S,
    DEFAULT_TIMEOUT_S,
    MAX_SETTLE_S,
    MAX_TIMEOUT_S,
    MESSAGE_ID,
    POLL_S,
    RECEIPT_FLUSH_S,
    UNPRINTABLE,
    Connection,
    _choice,
    _connection_options,
    _flush_quietly,
    _iso,
    _label_data,
    _label_text,
    _level,
    _local,
    _note,
    _out,
    _recipient_data,
    _run,
    _send_result,
    _session,
    _text_of,
    _timeout_text,
    _waiting,
    parse_duration,
)

from . import Client, DeliveryTimeout, Rejected, SendError, SendHandle
from ._bundles import MAX_BUNDLE_FILE_BYTES
from ._crisis import PressLine, RequestStatus, SituationEntry, SituationPicture

T = TypeVar("T")

EXCERPT_CHARS = 60  # the text column of the situation and press tables


# --- values --------------------------------------------------------------------------------------


def _slug(value: str, what: str) -> str:
    if not re.match(SLUG_PATTERN, value):
        raise CliError(f"{what} {value[:80]!r}: an id like 'storm-ylva' (a-z, 0-9 and '-')")
    return value


def _incident_type(value: str, policy: Policy) -> str:
    """A type from the policy's catalogue of typhändelser (any slug when it is empty)."""
    kind = _slug(value.strip().lower(), "--type")
    if policy.incident_types and kind not in policy.incident_types:
        known = ", ".join(sorted(policy.incident_types))
        raise CliError(
            f"--type {value!r} is not in the policy's catalogue of incident types ({known})"
        )
    return kind


def _answer_by(value: str, maximum: float) -> timedelta | datetime:
    """``30m``-style durations from now, or an ISO 8601 time (local time without a zone)."""
    text = value.strip()
    if text[:1].isdigit() and ("-" in text or "T" in text):
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise CliError(
                f"--answer-by {value!r}: a duration like 30m or 2h, or a time like "
                "2026-11-26T15:30 or 2026-11-26T15:30+01:00"
            ) from None
        if when.tzinfo is None:
            when = when.astimezone()  # the local time zone, as people write it
        left = (when - datetime.now(UTC)).total_seconds()
        if left <= 0:
            raise CliError(f"--answer-by {value!r} is in the past")
        if left > maximum:
            raise CliError(f"--answer-by {value!r}: at most {maximum:.0f} seconds from now")
        return when
    return timedelta(seconds=parse_duration(text, "--answer-by", maximum=maximum))


def _expires(args: argparse.Namespace, policy: Policy) -> timedelta | None:
    if args.expires_in is None:
        return None
    lifetime = policy.limits.max_lifetime_seconds
    return timedelta(seconds=parse_duration(args.expires_in, "--expires-in", maximum=lifetime))


def _excerpt(text: str | None, width: int = EXCERPT_CHARS) -> str:
    if text is None:
        return "(not text)"
    line = " ".join(UNPRINTABLE.sub("\ufffd", text).split())
    return line if len(line) <= width else line[: width - 3] + "..."


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append(
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )
    return lines


async def _verdict(
    args: argparse.Namespace,
    client: Client,
    handle: SendHandle,
    deadline: float,
    timeout: float,
    data: dict[str, Any],
    text: str,
) -> int:
    """Wait for the broker's verdict on ``handle``; print ``data`` and ``text`` when
    accepted. Queued receipts get what is left of ``deadline`` to leave, either way."""
    try:
        return await _accepted(args, client, handle, deadline, timeout, data, text)
    finally:
        await _flush_quietly(client, min(deadline - time.monotonic(), RECEIPT_FLUSH_S))


async def _accepted(
    args: argparse.Namespace,
    client: Client,
    handle: SendHandle,
    deadline: float,
    timeout: float,
    data: dict[str, Any],
    text: str,
) -> int:
    try:
        await _waiting(handle, "accepted", deadline)
    except Rejected as exc:
        _send_result(args, handle, None, exc)
        raise
    except DeliveryTimeout as exc:
        _send_result(args, handle, None, exc)
        raise CliError(
            _timeout_text(client, handle, "accepted", timeout), EXIT_CHECK_FAILED
        ) from exc
    status = handle.status()
    record = {
        **data,
        "message_id": handle.message_id,
        "state": handle.state.value,
        "recipients": {r: _recipient_data(s) for r, s in sorted(status.items())},
    }
    _out(args, record, text)
    return EXIT_OK


async def _finish(client: Client) -> None:
    """Let queued receipts leave (reading verbs); say so when some could not."""
    waiting = await _flush_quietly(client, RECEIPT_FLUSH_S if client.connected else 0)
    if waiting:
        _note(
            f"{waiting} item(s) still queued in {client.state_dir} (NATS unreachable); "
            f"they are sent the next time an ssr verb runs for {client.actor}"
        )


# --- activate ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reader:
    """What every reading verb starts from: the actor's connection, its policy and the
    connect timeout (``--timeout``)."""

    connection: Connection
    policy: Policy
    connect: float

    @classmethod
    def of(cls, args: argparse.Namespace) -> _Reader:
        connection = Connection.resolve(args, os.environ)
        policy = connection.load_policy()
        connect = parse_duration(args.timeout, "--timeout", maximum=MAX_TIMEOUT_S)
        return cls(connection, policy, connect)

    async def read(self, query: Callable[[Client], Awaitable[T]]) -> T:
        """Run ``query`` on a client session, then let queued receipts leave."""
        client = self.connection.client(self.policy, min(self.connect, CONNECT_TIMEOUT_S))
        async with _session(client):
            result = await query(client)
            await _finish(client)
        return result


def cmd_activate(args: argparse.Namespace) -> int:
    connection = Connection.resolve(args, os.environ)
    policy = connection.load_policy()
    incident = _slug(args.incident, "incident")
    kind = _incident_type(args.type, policy)
    template = policy.incident_types.get(kind)
    if template is None and not (args.to or args.group):
        raise CliError(
            f"no addressees: type {kind!r} has no template in the policy; "
            "give --to ACTOR or --group GROUP"
        )
    level = _level(args.label, policy) if args.label is not None else None
    tlp = _choice(args.tlp, Tlp, "--tlp") if args.tlp is not None else None
    priority = _choice(args.priority, Priority, "--priority") if args.priority else None
    lead = _slug(args.lead, "--lead") if args.lead is not None else None
    expires = _expires(args, policy)
    timeout = parse_duration(args.timeout, "--timeout", maximum=MAX_TIMEOUT_S)
    status = Status.EXERCISE if args.exercise else Status.ACTUAL
    payload = None  # the library's default: the template's name and checklist
    if args.text is not None:
        payload = {
            "incident_type": kind,
            "name": template.name if template is not None else kind,
            "checklist": list(template.checklist) if template is not None else [],
            "text": _text_arg(args.text, policy),
        }

    async def work() -> int:
        deadline = time.monotonic() + timeout
        client = connection.client(policy, min(timeout, CONNECT_TIMEOUT_S))
        async with _session(client):
            handle = await client.activate(
                incident,
                kind,
                to=args.to or (),
                # --to alone replaces the template's groups; neither: the template's
                groups=args.group or (() if args.to else None),
                label=level,
                tlp=tlp,
                priority=priority,
                status=status,
                payload=payload,
                communication_lead=lead,
                expires=expires,
            )
            label = handle.header.label
            mark = " EXERCISE" if status is Status.EXERCISE else ""
            data = {
                "incident": incident,
                "incident_type": kind,
                "status": status.value,
                "label": _label_data(label),
                "communication_lead": lead,
            }
            text = (
                f"incident {incident} ({kind}{mark}) activated: message {handle.message_id} "
                f"accepted for {len(handle.recipients)} recipient(s), {_label_text(label)}"
            )
            return await _verdict(args, client, handle, deadline, timeout, data, text)

    return _run(args, work)


# --- situation -----------------------------------------------------------------------------------


def cmd_situation(args: argparse.Namespace) -> int:
    reader = _Reader.of(args)
    incident = _slug(args.incident, "incident")
    settle = parse_duration(args.wait, "--wait", maximum=MAX_SETTLE_S, zero=True)

    async def work() -> int:
        picture = await reader.read(
            lambda client: _settled(client, incident, time.monotonic() + settle)
        )
        _show_situation(args, incident, picture)
        return EXIT_OK

    return _run(args, work)


async def _settled(client: Client, incident: str, deadline: float) -> SituationPicture:
    """The incident's picture once this client holds every message of the incident the
    broker lists for it, or at ``deadline``: deliveries may still be on their way."""
    picture = await client.situation(incident)
    while picture.missing and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        picture = await client.situation(incident)
    return picture


def _entry_data(entry: SituationEntry) -> dict[str, Any]:
    data: dict[str, Any] = {
        "actor": entry.actor,
        "message_id": entry.message_id,
        "created": _iso(entry.created),
        "expires": _iso(entry.expires),
        "state": entry.state,
        "status": entry.status.value,
        "label": _label_data(entry.label),
        "granted": entry.granted,
        "content_type": entry.content_type,
    }
    data |= _payload_data(entry.payload)
    return data


def _payload_data(payload: bytes | None) -> dict[str, Any]:
    if payload is None:
        return {"payload": None, "encoding": None}
    try:
        return {"payload": payload.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"payload": base64.b64encode(payload).decode("ascii"), "encoding": "base64"}


def _show_situation(args: argparse.Namespace, incident: str, picture: SituationPicture) -> None:
    history = list(picture.history)
    current = sorted(picture.current.values(), key=lambda e: e.actor)
    missing = picture.missing
    exercise = any(e.status is not Status.ACTUAL for e in history)
    data = {
        "incident": incident,
        "at": _iso(picture.at),
        "exercise": any(e.status is Status.EXERCISE for e in history),
        "current": [_entry_data(e) for e in current],
        "history": [_entry_data(e) for e in history],
        "online": picture.online,
        "missing": None if missing is None else [_missing_data(e) for e in missing],
    }
    title = f"lägesbild (situational picture) of incident {incident}"
    statuses = sorted({e.status.value.upper() for e in history if e.status is not Status.ACTUAL})
    lines = [f"{'/'.join(statuses)}: {title}" if exercise else title]
    if current:
        lines.append("current: the latest unexpired situation report of each actor")
        lines.extend(_entry_rows(current))
    else:
        lines.append("current: no unexpired situation report held by this client")
    older = [e for e in history if e.state != "current"]
    if older:
        lines.append("history: earlier reports")
        lines.extend(_entry_rows(older))
    if missing is None:
        lines.append("missing: unknown (offline: the broker's incident index was not read)")
    else:
        lines.append(
            f"missing: {len(missing)} message(s) the broker lists that this client does not hold"
        )
    _out(args, data, "\n".join(lines))


def _missing_data(entry: IncidentEntry) -> dict[str, Any]:
    return {
        "message_id": entry.id,
        "type": entry.type.value,
        "sender": entry.sender,
        "created": _iso(entry.created),
        "expires": _iso(entry.expires),
    }


def _entry_rows(entries: Sequence[SituationEntry]) -> list[str]:
    rows = [
        (
            entry.actor,
            _local(entry.created),
            entry.state
            + ("" if entry.status is Status.ACTUAL else f" {entry.status.value.upper()}")
            + (" (granted)" if entry.granted else ""),
            _excerpt(_entry_text(entry)),
        )
        for entry in entries
    ]
    return _table(rows, ("actor", "time", "state", "text"))


def _entry_text(entry: SituationEntry) -> str | None:
    """A report's text: a JSON object's ``text``, plain text, else None."""
    if entry.payload is None:
        return "(cannot be opened any more)"
    text = _text_of(entry.payload)
    if text is None:
        return None
    if entry.content_type == "application/json":
        try:
            value = json.loads(text)
        except ValueError:
            return text
        if isinstance(value, dict) and isinstance(value.get("text"), str):
            return str(value["text"])
    return text


# --- requests ------------------------------------------------------------------------------------


def cmd_request(args: argparse.Namespace) -> int:
    connection = Connection.resolve(args, os.environ)
    policy = connection.load_policy()
    if not (args.to or args.group or args.incident):
        raise CliError("no addressees: give --to ACTOR, --group GROUP or --incident ID")
    incident = _slug(args.incident, "--incident") if args.incident else None
    level = _level(args.label, policy)
    tlp = _choice(args.tlp, Tlp, "--tlp")
    priority = _choice(args.priority, Priority, "--priority")
    status = _choice(args.status, Status, "--status")
    expires = _expires(args, policy)
    lifetime = (
        expires.total_seconds() if expires is not None else policy.limits.max_lifetime_seconds
    )
    answer_by = _answer_by(args.answer_by, lifetime)
    timeout = parse_duration(args.timeout, "--timeout", maximum=MAX_TIMEOUT_S)
    question = _text_arg(args.text, policy)

    async def work() -> int:
        deadline = time.monotonic() + timeout
        client = connection.client(policy, min(timeout, CONNECT_TIMEOUT_S))
        async with _session(client):
            handle = await client.send(
                to=args.to or (),
                groups=args.group or (),
                incident=incident,
                payload=question,
                label=level,
                tlp=tlp,
                type="request",
                priority=priority,
                status=status,
                expires=expires,
                answer_by=answer_by,
            )
            due = handle.header.control.deadline if handle.header.control else None
            data = {"incident": incident, "deadline": _iso(due)}
            text = (
                f"request {handle.message_id}: accepted by the broker for "
                f"{len(handle.recipients)} recipient(s); answers due by {_local(due)}"
            )
            return await _verdict(args, client, handle, deadline, timeout, data, text)

    return _run(args, work)


def cmd_requests(args: argparse.Namespace) -> int:
    reader = _Reader.of(args)
    connection = reader.connection
    incident = _slug(args.incident, "--incident") if args.incident else None
    settle = parse_duration(args.wait, "--wait", maximum=MAX_SETTLE_S, zero=True)

    async def query(client: Client) -> list[RequestStatus]:
        if incident is not None:  # let the answers the broker lists arrive first
            await _settled(client, incident, time.monotonic() + settle)
        return await client.requests(incident)

    async def work() -> int:
        requests = await reader.read(query)
        data = {"incident": incident, "requests": [_request_data(r) for r in requests]}
        if not requests:
            where = f" in incident {incident}" if incident else ""
            _out(args, data, f"no requests sent by {connection.actor}{where}")
            return EXIT_OK
        rows = [
            (
                r.message_id,
                r.incident or "-",
                _local(r.deadline),
                f"{len(r.answers)}/{len(r.recipients)}",
                ("OVERDUE: " if r.overdue else "") + (", ".join(r.unanswered) or "-"),
            )
            for r in requests
        ]
        lines = [f"requests sent by {connection.actor}:"]
        header = ("request", "incident", "answer by", "answered", "unanswered")
        lines.extend(_table(rows, header))
        _out(args, data, "\n".join(lines))
        return EXIT_OK

    return _run(args, work)


def _request_data(request: RequestStatus) -> dict[str, Any]:
    return {
        "message_id": request.message_id,
        "incident": request.incident,
        "created": _iso(request.created),
        "deadline": _iso(request.deadline),
        "recipients": list(request.recipients),
        "answers": dict(request.answers),
        "unanswered": list(request.unanswered),
        "overdue": list(request.overdue),
    }


# --- press lines ---------------------------------------------------------------------------------


def cmd_press_draft(args: argparse.Namespace) -> int:
    connection = Connection.resolve(args, os.environ)
    policy = connection.load_policy()
    incident = _slug(args.incident, "incident")
    level = _level(args.label, policy)
    tlp = _choice(args.tlp, Tlp, "--tlp")
    text = _text_arg(args.text, policy)
    timeout = parse_duration(args.timeout, "--timeout", maximum=MAX_TIMEOUT_S)

    async def work() -> int:
        deadline = time.monotonic() + timeout
        client = connection.client(policy, min(timeout, CONNECT_TIMEOUT_S))
        async with _session(client):
            handle = await client.draft_press_line(incident, text, label=level, tlp=tlp)
            data = {
                "incident": incident,
                "draft_id": handle.message_id,
                "label": _label_data(handle.header.label),
            }
            shown = (
                f"press line draft {handle.message_id} for incident {incident}: accepted for "
                f"{len(handle.recipients)} recipient(s); the communication lead approves it "
                f"with 'ssr press approve {handle.message_id}'"
            )
            return await _verdict(args, client, handle, deadline, timeout, data, shown)

    return _run(args, work)


def cmd_press_approve(args: argparse.Namespace) -> int:
    connection = Connection.resolve(args, os.environ)
    policy = connection.load_policy()
    draft_id = args.draft_id.strip().lower()
    if not MESSAGE_ID.match(draft_id):
        raise CliError(f"draft id {args.draft_id[:80]!r}: 32 hex digits")
    text = _text_arg(args.text, policy) if args.text is not None else None
    timeout = parse_duration(args.timeout, "--timeout", maximum=MAX_TIMEOUT_S)
    settle = parse_duration(args.settle, "--wait", maximum=MAX_SETTLE_S, zero=True)

    async def work() -> int:
        deadline = time.monotonic() + timeout
        client = connection.client(policy, min(timeout, CONNECT_TIMEOUT_S))
        async with _session(client):
            handle = await _approve(client, draft_id, text, time.monotonic() + settle)
            label = handle.header.label
            data = {
                "draft_id": draft_id,
                "approval_id": handle.message_id,
                "label": _label_data(label),
            }
            shown = (
                f"press line {draft_id} approved: message {handle.message_id} accepted for "
                f"{len(handle.recipients)} recipient(s), {_label_text(label)}"
            )
            return await _verdict(args, client, handle, deadline, timeout, data, shown)

    return _run(args, work)


async def _approve(client: Client, draft_id: str, text: str | None, deadline: float) -> SendHandle:
    """Approve ``draft_id``, letting the draft arrive first (until ``deadline``) when this
    client does not hold it yet: it may still be on its way from NATS."""
    while True:
        try:
            return await client.approve_press_line(draft_id, text=text)
        except SendError as exc:
            if exc.code != "press_draft_unknown" or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(POLL_S)


def cmd_press_list(args: argparse.Namespace) -> int:
    reader = _Reader.of(args)
    incident = _slug(args.incident, "incident")
    settle = parse_duration(args.wait, "--wait", maximum=MAX_SETTLE_S, zero=True)

    async def query(client: Client) -> list[PressLine]:
        await _settled(client, incident, time.monotonic() + settle)
        return await client.press_lines(incident)

    async def work() -> int:
        found = await reader.read(query)
        data = {"incident": incident, "press_lines": [_press_data(p) for p in found]}
        if not found:
            _out(args, data, f"no press lines held for incident {incident}")
            return EXIT_OK
        text = [f"press lines of incident {incident}:"]
        for line in found:
            mark = "" if line.status is Status.ACTUAL else f" {line.status.value.upper()}"
            if line.state == "approved":
                state = f"APPROVED by {line.approved_by} ({_local(line.approved_at)}), public"
            else:
                state = "draft, not public"
            author = (
                f"from {line.author}, {_local(line.created)}" if line.author else "draft not held"
            )
            text.append(f"  {line.draft_id}{mark}  {state}  {author}")
            if line.text is not None:
                text.append(f"    draft:    {_excerpt(line.text, 200)}")
            for comment in line.comments:
                text.append(f"    comment from {comment.actor}: {_excerpt(comment.text, 160)}")
            if line.approved_text is not None:
                text.append(f"    approved: {_excerpt(line.approved_text, 200)}")
        _out(args, data, "\n".join(text))
        return EXIT_OK

    return _run(args, work)


def _press_data(line: PressLine) -> dict[str, Any]:
    return {
        "draft_id": line.draft_id,
        "incident": line.incident,
        "status": line.status.value,
        "author": line.author,
        "created": _iso(line.created),
        "text": line.text,
        "state": line.state,
        "comments": [
            {
                "actor": c.actor,
                "message_id": c.message_id,
                "created": _iso(c.created),
                "text": c.text,
            }
            for c in line.comments
        ],
        "approved_by": line.approved_by,
        "approval_id": line.approval_id,
        "approved_at": _iso(line.approved_at),
        "approved_text": line.approved_text,
    }


def _text_arg(value: str, policy: Policy) -> str:
    """``--text``: not empty, valid text, within the policy's size bound."""
    if not value.strip():
        raise CliError("--text is empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise CliError("--text is not valid text") from exc
    if size > policy.limits.max_envelope_bytes:
        raise CliError(f"--text is larger than {policy.limits.max_envelope_bytes} bytes")
    return value


# --- bundles -------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    reader = _Reader.of(args)
    incident = _slug(args.incident, "--incident") if args.incident else None
    out = Path(args.out)
    if out.exists():  # a bundle is never written over another file
        raise CliError(f"--out {out}: exists; give another file name")
    if not out.parent.is_dir():
        raise CliError(f"--out {out}: folder {out.parent} does not exist")

    async def work() -> int:
        count = await reader.read(lambda client: client.export_bundle(out, incident=incident))
        data = {"file": str(out), "items": count, "incident": incident}
        scope = f"incident {incident}" if incident else "every incident"
        _out(
            args,
            data,
            f"wrote {count} item(s) of {scope} to {out}, signed by {reader.connection.actor} "
            "(the messages stay encrypted; headers are readable: keep the file safe)",
        )
        return EXIT_OK

    return _run(args, work)


def cmd_import(args: argparse.Namespace) -> int:
    reader = _Reader.of(args)
    path = Path(args.file)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CliError(f"bundle {path}: {exc.strerror or exc}") from exc
    if not path.is_file():
        raise CliError(f"bundle {path}: not a file")
    if size > MAX_BUNDLE_FILE_BYTES:
        raise CliError(f"bundle {path}: larger than {MAX_BUNDLE_FILE_BYTES} bytes")

    async def work() -> int:
        result = await reader.read(lambda client: client.import_bundle(path))
        counts = {
            "admitted": result.admitted,
            "duplicates": result.duplicates,
            "not_for_me": result.not_for_me,
            "refused": result.refused,
        }
        data = {"file": str(path), **counts}
        text = (
            f"bundle {path}: {counts['admitted']} admitted (see 'ssr inbox'), "
            f"{counts['duplicates']} already held, {counts['not_for_me']} not addressed to "
            f"{reader.connection.actor}, {counts['refused']} refused"
        )
        _out(args, data, text)
        if counts["refused"]:
            raise CliError(
                f"bundle {path}: {counts['refused']} item(s) refused (did not verify or open, "
                "or the policy refuses them; see the log) and dropped",
                EXIT_CHECK_FAILED,
            )
        return EXIT_OK

    return _run(args, work)


# --- the parser ----------------------------------------------------------------------------------


def _label_options(parser: argparse.ArgumentParser, label: str | None, tlp: str | None) -> None:
    group = parser.add_argument_group("label")
    group.add_argument(
        "--label",
        default=label,
        metavar="LEVEL",
        help=f"classification (default {label or 'the template'})",
    )
    group.add_argument(
        "--tlp", default=tlp, metavar="COLOR", help=f"TLP marking (default {tlp or 'the template'})"
    )


def _timeout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        default=f"{DEFAULT_TIMEOUT_S:g}s",
        metavar="DURATION",
        help=f"the longest to wait for the broker's verdict (default {DEFAULT_TIMEOUT_S:g}s)",
    )


def _settle_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        default=f"{DEFAULT_SETTLE_S:g}s",
        metavar="DURATION",
        help="how long to let the incident's messages that the broker lists arrive "
        f"(default {DEFAULT_SETTLE_S:g}s; 0: show at once)",
    )


def _connect_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        default=f"{CONNECT_TIMEOUT_S:g}s",
        metavar="DURATION",
        help="the longest to try to reach NATS before working offline from the state folder "
        f"(default {CONNECT_TIMEOUT_S:g}s)",
    )


def add_crisis_verbs(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``activate``, ``situation``, ``request``, ``requests``, ``press``, ``export``
    and ``import`` to ``commands``."""
    activate = commands.add_parser(
        "activate",
        help="open an incident from a typhändelse template (or change its participants)",
        description="Send an activation: the incident's id, its type from the policy's "
        "catalogue of typhändelser, and the participants (the template's groups unless "
        "--to or --group is given). Sent again by the owner, it replaces the participants; "
        "actors that join get the incident's still-valid messages granted by their senders.",
    )
    activate.add_argument("incident", metavar="INCIDENT", help="incident id, e.g. storm-ylva")
    activate.add_argument("--type", required=True, metavar="TYPE", help="e.g. storm")
    address = activate.add_argument_group("participants (default: the template's groups)")
    address.add_argument("--to", action="append", metavar="ACTOR", help="actor id (repeatable)")
    address.add_argument("--group", action="append", metavar="GROUP", help="group (repeatable)")
    _label_options(activate, None, None)
    activate.add_argument("--priority", metavar="P", help="default: the template's")
    activate.add_argument(
        "--exercise", action="store_true", help="an exercise (övning): never mixes with actual"
    )
    activate.add_argument(
        "--lead",
        metavar="ACTOR",
        help="communication lead who approves press lines (a participant)",
    )
    activate.add_argument("--text", metavar="TEXT", help="the activation's text")
    activate.add_argument("--expires-in", metavar="DURATION", help="e.g. 24h (default 24h)")
    _timeout_option(activate)
    _connection_options(activate)
    activate.set_defaults(handler=cmd_activate, wait="accepted")

    situation = commands.add_parser(
        "situation",
        help="the lägesbild of an incident: each actor's latest situation report",
        description="The situational picture as this actor holds it: each participant's "
        "latest unexpired situation report, the history, and how many messages the broker "
        "lists that this client does not hold.",
    )
    situation.add_argument("incident", metavar="INCIDENT")
    _settle_option(situation)
    _connect_option(situation)
    _connection_options(situation)
    situation.set_defaults(handler=cmd_situation)

    request = commands.add_parser(
        "request",
        help="ask for information with a deadline",
        description="Send a request whose recipients should answer by --answer-by; "
        "when it passes, the broker tells you who has not answered ('ssr requests').",
    )
    address = request.add_argument_group("addressees")
    address.add_argument("--to", action="append", metavar="ACTOR", help="actor id (repeatable)")
    address.add_argument("--group", action="append", metavar="GROUP", help="group (repeatable)")
    address.add_argument(
        "--incident", metavar="ID", help="the incident; alone: its participants are addressed"
    )
    request.add_argument(
        "--answer-by",
        required=True,
        metavar="WHEN",
        help="a duration (30m, 2h) or a time (2026-11-26T15:30, local unless it has a zone)",
    )
    request.add_argument("--text", required=True, metavar="TEXT", help="the question")
    _label_options(request, "INTERN", "AMBER")
    request.add_argument("--priority", default="priority", metavar="P", help="default priority")
    request.add_argument(
        "--status", default="actual", metavar="S", help="actual, exercise or test (default actual)"
    )
    request.add_argument("--expires-in", metavar="DURATION", help="e.g. 24h (default 24h)")
    _timeout_option(request)
    _connection_options(request)
    request.set_defaults(handler=cmd_request, wait="accepted")

    requests = commands.add_parser(
        "requests",
        help="the requests this actor sent: deadlines, answers, overdue",
        description="Each request this actor sent, with its deadline, who answered and who "
        "has not (OVERDUE once the deadline passed).",
    )
    requests.add_argument("--incident", metavar="ID", help="only this incident's requests")
    _settle_option(requests)
    _connect_option(requests)
    _connection_options(requests)
    requests.set_defaults(handler=cmd_requests)

    press = commands.add_parser("press", help="press lines: draft, approve, list").add_subparsers(
        dest="verb", metavar="VERB", required=True
    )
    draft = press.add_parser(
        "draft",
        help="share a draft press line with the incident's communicators",
        description="A draft goes to the incident's communicators at a non-public label; "
        "they comment by replying; only the communication lead's approval may be public.",
    )
    draft.add_argument("incident", metavar="INCIDENT")
    draft.add_argument("--text", required=True, metavar="TEXT", help="the press line")
    _label_options(draft, "INTERN", "AMBER")
    _timeout_option(draft)
    _connection_options(draft)
    draft.set_defaults(handler=cmd_press_draft, wait="accepted")
    approve = press.add_parser(
        "approve",
        help="approve a draft as the incident's communication lead (OFFENTLIG, TLP:CLEAR)",
        description="The communication lead's approval of a draft: the approved line is "
        "public (OFFENTLIG, TLP:CLEAR). --text approves an edited wording.",
    )
    approve.add_argument("draft_id", metavar="DRAFT_ID")
    approve.add_argument("--text", metavar="TEXT", help="the approved wording (default: the draft)")
    approve.add_argument(
        "--wait",
        dest="settle",  # args.wait is the verdict to wait for, as for send
        default=f"{DEFAULT_SETTLE_S * 5:g}s",
        metavar="DURATION",
        help="how long to let the draft arrive when it is not held yet "
        f"(default {DEFAULT_SETTLE_S * 5:g}s)",
    )
    _timeout_option(approve)
    _connection_options(approve)
    approve.set_defaults(handler=cmd_press_approve, wait="accepted")
    listing = press.add_parser("list", help="the press lines of an incident held by this actor")
    listing.add_argument("incident", metavar="INCIDENT")
    _settle_option(listing)
    _connect_option(listing)
    _connection_options(listing)
    listing.set_defaults(handler=cmd_press_list)

    export = commands.add_parser(
        "export",
        help="write a signed offline bundle of still-encrypted messages",
        description="Write the still-valid messages this actor holds (still encrypted, as "
        "their senders signed them) into one file signed by this actor, to carry to "
        "another actor when networks fail.",
    )
    export.add_argument("--incident", metavar="ID", help="only this incident (default: all)")
    export.add_argument(
        "--out", required=True, metavar="FILE", help="the bundle file to create (mode 600)"
    )
    _connect_option(export)
    _connection_options(export)
    export.set_defaults(handler=cmd_export)

    load = commands.add_parser(
        "import",
        help="verify and admit an offline bundle",
        description="Verify a bundle (the exporter's signature, then each message's own) "
        "and admit the messages addressed to this actor; duplicates are dropped and "
        "receipts leave when NATS is reachable.",
    )
    load.add_argument("file", metavar="FILE")
    _connect_option(load)
    _connection_options(load)
    load.set_defaults(handler=cmd_import)


__all__ = [
    "add_crisis_verbs",
    "cmd_activate",
    "cmd_export",
    "cmd_import",
    "cmd_press_approve",
    "cmd_press_draft",
    "cmd_press_list",
    "cmd_request",
    "cmd_requests",
    "cmd_situation",
]
