"""The message verbs of ``ssr``: ``send``, ``inbox`` and ``status``, through :class:`Client`.

    ssr --demo-dir .ssr-data send --actor nacka --to solna --label INTERN --tlp GREEN --text hej
    ssr --demo-dir .ssr-data inbox --actor solna --ack
    ssr --demo-dir .ssr-data status --actor nacka 0123456789abcdef0123456789abcdef

Where to connect, per piece: the option, else its environment variable, else the
demo folder (``--demo-dir DIR``, before or after the verb, or ``$SSR_DEMO_DIR``)::

    --actor ID                $SSR_ACTOR           (required)
    --keys FILE               $SSR_KEYS            DIR/keys/<actor>.key
    --authority-key HEX|FILE  $SSR_AUTHORITY_KEY   DIR/authority.pub
    --server URL (repeat)     $SSR_NATS_URLS       DIR/nats.url (written by ``ssr up``)
    --state-dir DIR           $SSR_STATE_DIR       DIR/clients/<actor>
    --policy FILE             $SSR_POLICY          DIR/policy.toml (else the built-in policy)

The state folder holds the actor's outbox, inbox and cached directory: every verb
for one actor should use the same one, and one process at a time (the stores are
locked). A message leaves the outbox only while some verb for its actor runs.

Exit codes: 0 done; 1 refused by the broker, NATS unreachable, a wait timed out,
unknown message; 2 bad usage or unreadable input. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import mimetypes
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from broker.core import Label, MessageType, Policy, PolicyError, Priority, Status, Tlp, load_policy
from broker.core.wire import SLUG_PATTERN
from broker.up import NATS_URL_FILE
from clients.cli import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    MAX_INPUT_BYTES,
    CliError,
    _read,
)

from . import (
    AddressError,
    Client,
    ClientError,
    ConfigurationError,
    DeliveryTimeout,
    DirectoryRefused,
    ForwardRefused,
    Message,
    OutboxError,
    RecipientStatus,
    Rejected,
    SendError,
    SendHandle,
    SendState,
    Unavailable,
)

ENV_ACTOR = "SSR_ACTOR"
ENV_KEYS = "SSR_KEYS"
ENV_AUTHORITY_KEY = "SSR_AUTHORITY_KEY"
ENV_NATS_URLS = "SSR_NATS_URLS"
ENV_STATE_DIR = "SSR_STATE_DIR"
ENV_POLICY = "SSR_POLICY"
ENV_DEMO_DIR = "SSR_DEMO_DIR"

CONNECT_TIMEOUT_S = 10.0  # the longest any verb tries to reach NATS at start
DEFAULT_TIMEOUT_S = 30.0
MAX_TIMEOUT_S = 24 * 3600.0
DEFAULT_SETTLE_S = 2.0  # inbox without --follow: how long deliveries may take to arrive
MAX_SETTLE_S = 600.0
CLOSE_TIMEOUT_S = 10.0  # a verb never hangs on closing the connection
RECEIPT_FLUSH_S = 5.0  # how long inbox and status wait for queued receipts to leave
PROGRESS_EVERY_S = 3.0
POLL_S = 0.25
MAX_LIMIT = 1_000_000
MAX_SERVERS = 16
MAX_URL_CHARS = 1000
MAX_URL_FILE_BYTES = 4096
MAX_TEXT_LINE_CHARS = 20_000  # a text payload longer than this is shortened in human output
URL_SCHEMES = ("nats", "tls", "ws", "wss")
MESSAGE_ID = re.compile(r"^[0-9a-f]{32}$")
CONTENT_TYPE = re.compile(r"^[a-z]+/[a-z0-9.+-]+$")  # as the envelope header requires
DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# Control characters (but newline and tab) in a received text would reach the terminal.
UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

log = logging.getLogger("ssr.cli")


# --- where to connect --------------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """Everything a verb needs to reach the broker as one actor, resolved at the edge."""

    actor: str
    keys: Path
    authority_key: str  # 64 hex digits or a file holding them; the client reads it
    servers: tuple[str, ...]
    state_dir: Path
    policy_file: Path | None

    @classmethod
    def resolve(cls, args: argparse.Namespace, env: Mapping[str, str]) -> Connection:
        """Options first, then the environment, then the demo folder; raises :class:`CliError`."""
        demo = _demo_dir(getattr(args, "demo_dir", None) or _env(env, ENV_DEMO_DIR))
        actor = args.actor or _env(env, ENV_ACTOR)
        if not actor:
            raise CliError(f"no actor: give --actor ID or set {ENV_ACTOR}")
        if not re.match(SLUG_PATTERN, actor):
            raise CliError(f"actor {actor!r} must be an actor id like 'nacka' or 'sos-alarm'")

        keys = args.keys or _env(env, ENV_KEYS)
        if not keys and demo is not None:
            keys = _existing(demo / "keys" / f"{actor}.key", f"no key file for {actor!r}")
        if not keys:
            raise CliError(f"no key file: give --keys FILE or set {ENV_KEYS} (or --demo-dir DIR)")

        authority = args.authority_key or _env(env, ENV_AUTHORITY_KEY)
        if not authority and demo is not None:
            authority = _existing(demo / "authority.pub", "no authority key")
        if not authority:
            raise CliError(
                "no authority key: give --authority-key HEX|FILE or set "
                f"{ENV_AUTHORITY_KEY} (or --demo-dir DIR)"
            )

        urls: list[str] = list(args.server or [])
        if not urls:
            urls = _split_urls(_env(env, ENV_NATS_URLS) or "")
        if not urls and demo is not None:
            urls = _split_urls(_read_url_file(demo / NATS_URL_FILE))
        if not urls:
            raise CliError(f"no NATS server: give --server URL or set {ENV_NATS_URLS}")
        servers = tuple(_server(url) for url in urls)
        if len(servers) > MAX_SERVERS:
            raise CliError(f"at most {MAX_SERVERS} NATS servers")

        state = args.state_dir or _env(env, ENV_STATE_DIR)
        if not state and demo is not None:
            state = str(demo / "clients" / actor)
        if not state:
            raise CliError(
                f"no state folder: give --state-dir DIR or set {ENV_STATE_DIR} (or --demo-dir DIR)"
            )

        policy = args.policy or _env(env, ENV_POLICY)
        if not policy and demo is not None and (demo / "policy.toml").is_file():
            policy = str(demo / "policy.toml")
        return cls(
            actor=actor,
            keys=Path(keys),
            authority_key=authority,
            servers=servers,
            state_dir=Path(state),
            policy_file=Path(policy) if policy else None,
        )

    def load_policy(self) -> Policy:
        """The policy file's contents (bounded read), or the built-in policy without one."""
        if self.policy_file is None:
            return Policy()
        raw = _read(self.policy_file, MAX_INPUT_BYTES, "policy")
        try:
            return load_policy(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise CliError(f"{self.policy_file}: not UTF-8 text") from exc
        except PolicyError as exc:
            raise CliError(f"{self.policy_file}: {exc.message}") from exc

    def client(self, policy: Policy, connect_timeout: float) -> Client:
        return Client.connect(
            servers=self.servers,
            actor=self.actor,
            keys=self.keys,
            authority_key=self.authority_key,
            state_dir=self.state_dir,
            policy=policy,
            connect_timeout=connect_timeout,
        )


def _env(env: Mapping[str, str], name: str) -> str | None:
    return env.get(name, "").strip() or None


def _demo_dir(value: str | None) -> Path | None:
    if not value:
        return None
    folder = Path(value)
    if not folder.is_dir():
        raise CliError(f"--demo-dir {value}: not a folder")
    return folder


def _existing(path: Path, what: str) -> str:
    if not path.exists():
        raise CliError(f"{what}: {path} does not exist")
    return str(path)


def _read_url_file(path: Path) -> str:
    try:
        raw = _read(path, MAX_URL_FILE_BYTES, "NATS URL file")
    except CliError as exc:
        raise CliError(
            f"no NATS server: cannot read {path} ({exc}; is 'ssr up' running?); "
            f"give --server URL or set {ENV_NATS_URLS}"
        ) from exc
    return raw.decode("ascii", "replace")


def _split_urls(text: str) -> list[str]:
    return [url for url in re.split(r"[\s,]+", text) if url]


def _server(url: str) -> str:
    parts = urlsplit(url) if len(url) <= MAX_URL_CHARS else None
    if parts is None or parts.scheme not in URL_SCHEMES or not parts.hostname:
        raise CliError(
            f"NATS server {url[:80]!r} must be a URL like nats://127.0.0.1:4222 "
            f"(schemes: {', '.join(URL_SCHEMES)})"
        )
    return url


# --- parsing values ------------------------------------------------------------------------------


def parse_duration(value: str, what: str, *, maximum: float, zero: bool = False) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``24h`` or ``2d``, at most ``maximum``;
    more than 0 unless ``zero`` allows it."""
    match = DURATION.match(value.strip().lower())
    if match is None:
        raise CliError(f"{what} {value!r}: give a duration like 90s, 15m, 24h or 2d")
    seconds = float(match.group(1)) * UNIT_S[match.group(2)]
    if seconds > maximum or seconds < 0 or (seconds == 0 and not zero):
        least = "0" if zero else "more than 0"
        raise CliError(f"{what} {value!r}: must be {least} and at most {maximum:.0f} seconds")
    return seconds


def _choice(value: str, options: type[Any], what: str) -> Any:
    try:
        return options(value.strip().lower() if options is not Tlp else value.strip().upper())
    except ValueError:
        known = ", ".join(o.value for o in options)
        raise CliError(f"{what} {value!r}: one of {known}") from None


def _level(value: str, policy: Policy) -> str:
    level = value.strip().upper()
    if level not in policy.ladder:
        raise CliError(
            f"label {value!r} is not on the policy's ladder ({', '.join(policy.ladder)})"
        )
    return level


def _limit(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or not 0 < int(value) <= MAX_LIMIT:
        raise CliError(f"--limit {value!r}: a whole number from 1 to {MAX_LIMIT}")
    return int(value)


# --- running a verb ------------------------------------------------------------------------------


def _run(args: argparse.Namespace, work: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``work`` in an event loop, mapping every client error to one line and an exit code."""
    _configure_logging(args.verbose)
    try:
        return asyncio.run(work())
    except KeyboardInterrupt:
        raise CliError("interrupted", EXIT_CHECK_FAILED) from None
    except ClientError as exc:
        raise _cli_error(exc) from exc
    except BrokenPipeError:
        with contextlib.suppress(OSError):  # nobody reads stdout any more: say nothing
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CHECK_FAILED
    except (CliError, SystemExit):
        raise
    except Exception as exc:  # a bug: one line, the details with --verbose
        log.debug("internal error", exc_info=True)
        raise CliError(
            f"internal error: {type(exc).__name__}: {exc} (run with --verbose for details)",
            EXIT_CHECK_FAILED,
        ) from exc


def _cli_error(exc: ClientError) -> CliError:
    if isinstance(exc, ConfigurationError | AddressError | SendError | ForwardRefused):
        return CliError(f"{exc.code}: {exc.message}", EXIT_USAGE)
    if isinstance(exc, Rejected):
        text = exc.message if exc.code in exc.message else f"refused ({exc.code}): {exc.message}"
        who = f" [recipients: {', '.join(exc.recipients)}]" if exc.recipients else ""
        return CliError(f"message {exc.message_id or '?'}: {text}{who}", EXIT_CHECK_FAILED)
    if isinstance(exc, Unavailable):
        return CliError(f"NATS unavailable: {exc.message}", EXIT_CHECK_FAILED)
    if isinstance(exc, OutboxError) and exc.code == "in_use":
        return CliError(
            f"{exc.message}: another ssr process (inbox --follow?) uses this state folder; "
            "stop it or give another --state-dir",
            EXIT_CHECK_FAILED,
        )
    return CliError(f"{exc.code}: {exc.message}", EXIT_CHECK_FAILED)


class _OneLine(logging.Formatter):
    """Log records as single lines: no tracebacks unless --verbose."""

    def __init__(
        self, verbose: bool, fmt: str = "ssr: %(levelname)s %(name)s: %(message)s"
    ) -> None:
        super().__init__(fmt)
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        if not self.verbose:
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return super().format(record)


def _configure_logging(verbose: bool) -> None:
    # Only where nobody configured logging (a host program or a test runner keeps its own).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine(verbose))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.ERROR, handlers=[handler])


@contextlib.asynccontextmanager
async def _session(client: Client) -> AsyncIterator[Client]:
    """``client`` started and, whatever happens, closed."""
    try:
        await client.start()  # closes the client itself when it fails
    except Unavailable as exc:
        raise CliError(
            f"NATS unreachable ({exc.message}) and no directory cached in {client.state_dir}: "
            "nothing was sent or received",
            EXIT_CHECK_FAILED,
        ) from exc
    try:
        yield client
    finally:
        try:
            await asyncio.wait_for(client.close(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("closing the client took longer than %g s; gave up", CLOSE_TIMEOUT_S)


async def _flush_quietly(client: Client, timeout: float) -> int:
    """Let queued receipts leave; returns how many submissions are still queued."""
    with contextlib.suppress(DeliveryTimeout):
        await client.flush(max(timeout, 0.0))
    return client.outbox_depth


def _out(args: argparse.Namespace, data: dict[str, Any], text: str | None) -> None:
    """One JSON object per line with --json, else ``text`` (None: nothing beyond the error)."""
    if args.json:
        print(json.dumps(data, ensure_ascii=False), flush=True)
    elif text is not None:
        print(text, flush=True)


def _note(text: str) -> None:
    print(f"ssr: {text}", file=sys.stderr, flush=True)


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _local(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000).astimezone().isoformat(timespec="seconds")


def _label_text(label: Label) -> str:
    text = label.classification
    if label.legal:
        text += f" ({label.legal})"
    text += f" TLP:{label.tlp.value}"
    if label.categories:
        text += f" [{', '.join(label.categories)}]"
    return text


def _label_data(label: Label) -> dict[str, Any]:
    return {
        "classification": label.classification,
        "tlp": label.tlp.value,
        "categories": list(label.categories),
        "legal": label.legal,
    }


def _recipient_data(status: RecipientStatus) -> dict[str, Any]:
    return {
        "state": status.state,
        "delivered": _iso(status.delivered),
        "read": _iso(status.read),
        "acknowledged": _iso(status.acknowledged),
        "escalated": status.escalated,
    }


def _recipient_lines(statuses: Mapping[str, RecipientStatus]) -> list[str]:
    width = max([len("recipient"), *(len(r) for r in statuses)])
    lines = [f"  {'recipient':<{width}}  {'delivered':<25}  {'read':<25}  acknowledged"]
    for name in sorted(statuses):
        s = statuses[name]
        escalated = "  (escalated: no delivery in time)" if s.escalated else ""
        lines.append(
            f"  {name:<{width}}  {_local(s.delivered):<25}  {_local(s.read):<25}  "
            f"{_local(s.acknowledged)}{escalated}"
        )
    return lines


# --- send ----------------------------------------------------------------------------------------


def cmd_send(args: argparse.Namespace) -> int:
    connection = Connection.resolve(args, os.environ)
    policy = connection.load_policy()
    if not (args.to or args.group or args.incident):
        raise CliError("no addressees: give --to ACTOR, --group GROUP or --incident ID")
    level = _level(args.label, policy)
    tlp = _choice(args.tlp, Tlp, "--tlp")
    message_type = _choice(args.type, MessageType, "--type")
    priority = _choice(args.priority, Priority, "--priority")
    distribution = _choice(args.status, Status, "--status")
    expires = None
    if args.expires_in is not None:
        lifetime = policy.limits.max_lifetime_seconds
        expires = timedelta(
            seconds=parse_duration(args.expires_in, "--expires-in", maximum=lifetime)
        )
    timeout = parse_duration(args.timeout, "--timeout", maximum=MAX_TIMEOUT_S)
    if args.content_type is not None and not CONTENT_TYPE.match(args.content_type):
        raise CliError(f"--content-type {args.content_type!r}: like text/plain or application/json")
    bound = min(MAX_INPUT_BYTES, policy.limits.max_envelope_bytes)
    payload, content_type = _payload(args, bound)
    if not payload:  # most likely a mistake (an empty file, stdin at its end): never send it
        raise CliError("the payload is empty")

    async def work() -> int:
        deadline = time.monotonic() + timeout
        client = connection.client(policy, min(timeout, CONNECT_TIMEOUT_S))
        async with _session(client):
            handle = await client.send(
                to=args.to or (),
                groups=args.group or (),
                incident=args.incident,
                payload=payload,
                label=level,
                tlp=tlp,
                categories=args.category or (),
                legal=args.legal,
                type=message_type,
                priority=priority,
                status=distribution,
                expires=expires,
                content_type=content_type,
            )
            try:
                code = await _await_outcome(args, client, handle, deadline, timeout)
            finally:
                await _flush_quietly(client, min(deadline - time.monotonic(), RECEIPT_FLUSH_S))
            return code

    return _run(args, work)


def _payload(args: argparse.Namespace, bound: int) -> tuple[bytes | str, str | None]:
    """The payload and its content type (None: the client's default for the payload)."""
    if args.text is not None:
        if len(args.text.encode("utf-8", "surrogateescape")) > bound:
            raise CliError(f"--text is larger than {bound} bytes")
        try:
            args.text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CliError("--text is not valid text") from exc
        return args.text, args.content_type
    if args.file is not None and args.file != "-":
        path = Path(args.file)
        data = _read(path, bound, "--file")
        guessed = mimetypes.guess_type(path.name)[0]
        fallback = guessed if guessed and CONTENT_TYPE.match(guessed) else _sniff(data)
        return data, args.content_type or fallback
    stdin = sys.stdin
    if stdin is None or (args.file is None and stdin.isatty()):
        raise CliError("no payload: give --file PATH, --text TEXT or pipe it on stdin")
    try:
        data = stdin.buffer.read(bound + 1)
    except (OSError, ValueError, AttributeError) as exc:
        raise CliError(f"cannot read the payload from stdin: {exc}") from exc
    if len(data) > bound:
        raise CliError(f"the payload on stdin is larger than {bound} bytes")
    return data, args.content_type or _sniff(data)


def _sniff(data: bytes) -> str:
    return "text/plain" if _text_of(data) is not None else "application/octet-stream"


def _text_of(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


async def _await_outcome(
    args: argparse.Namespace, client: Client, handle: SendHandle, deadline: float, timeout: float
) -> int:
    """Wait as ``--wait`` asks; print the outcome; returns the exit code."""
    what = args.wait
    try:
        if what == "none":
            await client.flush(max(deadline - time.monotonic(), 0.0))
            if handle.error is not None:  # NATS refused it for good (too large)
                raise handle.error
        else:
            await _waiting(handle, what, deadline)
    except Rejected as exc:
        _send_result(args, handle, None, exc)
        raise
    except DeliveryTimeout as exc:
        _send_result(args, handle, None, exc)
        raise CliError(_timeout_text(client, handle, what, timeout), EXIT_CHECK_FAILED) from exc
    if what == "none":
        text = f"message {handle.message_id}: submitted (stored by JetStream; not waiting)"
    elif what == "accepted":
        text = (
            f"message {handle.message_id}: accepted by the broker for "
            f"{len(handle.recipients)} recipient(s): {', '.join(handle.recipients)}"
        )
    else:
        text = (
            f"message {handle.message_id}: delivered to all {len(handle.recipients)} recipient(s)"
        )
    _send_result(args, handle, text)
    return EXIT_OK


async def _waiting(handle: SendHandle, what: str, deadline: float) -> None:
    """``handle.accepted()`` or ``handle.delivered()`` with a progress line now and then."""
    while True:
        step = min(PROGRESS_EVERY_S, max(deadline - time.monotonic(), 0.0))
        try:
            if what == "accepted":
                await handle.accepted(step)
            else:
                await handle.delivered(step)
            return
        except DeliveryTimeout:
            if time.monotonic() >= deadline:
                raise
            _note(_progress(handle))


def _progress(handle: SendHandle) -> str:
    if handle.state is SendState.QUEUED:
        return "waiting for NATS (the message is queued in the outbox) ..."
    if handle.state is SendState.SUBMITTED:
        return "waiting for the broker's verdict ..."
    status = handle.status()
    pending = sorted(r for r, s in status.items() if s.delivered is None)
    shown = ", ".join(pending[:5]) + (", ..." if len(pending) > 5 else "")
    return f"waiting for {len(pending)}/{len(status)} recipients: {shown}"


def _timeout_text(client: Client, handle: SendHandle, what: str, timeout: float) -> str:
    if handle.state is SendState.QUEUED:
        return (
            f"NATS not reachable within {timeout:g} s: message {handle.message_id} stays queued "
            f"in {client.state_dir / 'outbox.sqlite'} and is sent the next time an ssr verb "
            f"runs for {client.actor} with this state folder"
        )
    if handle.state is SendState.SUBMITTED:
        return (
            f"message {handle.message_id} was stored by JetStream but no broker gave a verdict "
            f"within {timeout:g} s (is the broker running?); see 'ssr status {handle.message_id}'"
        )
    done = sum(s.delivered is not None for s in handle.status().values())
    return (
        f"message {handle.message_id} was accepted, but only {done} of "
        f"{len(handle.recipients)} recipients confirmed delivery within {timeout:g} s"
    )


def _send_result(
    args: argparse.Namespace, handle: SendHandle, text: str | None, error: ClientError | None = None
) -> None:
    status = handle.status()
    data: dict[str, Any] = {
        "message_id": handle.message_id,
        "state": handle.state.value,
        "recipients": {r: _recipient_data(s) for r, s in sorted(status.items())},
    }
    if error is not None:
        data["error"] = {"code": error.code, "message": error.message}
        if isinstance(error, Rejected):
            data["error"]["recipients"] = list(error.recipients)
    if args.wait == "delivered" and handle.state is SendState.ACCEPTED:
        text = "\n".join([text or f"message {handle.message_id}", *_recipient_lines(status)])
    _out(args, data, text)


# --- inbox ---------------------------------------------------------------------------------------


def cmd_inbox(args: argparse.Namespace) -> int:
    connection = Connection.resolve(args, os.environ)
    policy = connection.load_policy()
    limit = _limit(args.limit)
    settle = parse_duration(args.wait, "--wait", maximum=MAX_SETTLE_S, zero=True)
    out_dir = Path(args.out_dir) if args.out_dir else None
    if args.note is not None and not args.ack:
        raise CliError("--note goes with --ack")

    async def work() -> int:
        client = connection.client(policy, CONNECT_TIMEOUT_S)
        async with _session(client):
            if out_dir is not None:
                _make_out_dir(out_dir)
            stop = asyncio.Event()
            restore = _stop_on_signals(stop) if args.follow else (lambda: None)
            try:
                shown = await _read_inbox(args, client, stop, limit, settle, out_dir)
            finally:
                restore()
            left = await _flush_quietly(client, RECEIPT_FLUSH_S)
            if left:
                _note(
                    f"{left} receipt(s) still queued in {client.state_dir} (NATS unreachable); "
                    f"they are sent the next time an ssr verb runs for {client.actor}"
                )
            if client.refused:
                _note(f"{client.refused} received envelope(s) refused: they did not verify")
            if not args.json and not shown and not args.follow:
                _note("no messages waiting")
        return EXIT_OK

    return _run(args, work)


async def _read_inbox(
    args: argparse.Namespace,
    client: Client,
    stop: asyncio.Event,
    limit: int | None,
    settle: float,
    out_dir: Path | None,
) -> int:
    """Hand out what is waiting until the settle time is over (or a signal, with --follow)."""
    shown = 0
    deadline = time.monotonic() + settle
    while True:
        # follow=False ends when nothing waits, so a message is never taken from the
        # on-disk inbox by an iteration that is then cancelled before it is shown.
        async with contextlib.aclosing(client.messages(follow=False)) as waiting:
            async for message in waiting:
                await _hand_out(args, message, out_dir)
                shown += 1
                if limit is not None and shown >= limit:
                    return shown
                if stop.is_set():
                    return shown
        if args.follow:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)
            if stop.is_set():
                return shown
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                return shown
            await asyncio.sleep(min(POLL_S, left))


async def _hand_out(args: argparse.Namespace, message: Message, out_dir: Path | None) -> None:
    path = _write_payload(out_dir, message) if out_dir is not None else None
    _show_message(args, message, path)
    if args.read:
        await message.mark_read()
    if args.ack:
        await message.acknowledge(note=args.note)


def _make_out_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise CliError(f"--out-dir {folder}: {exc.strerror or exc}") from exc


def _write_payload(folder: Path, message: Message) -> Path:
    if not MESSAGE_ID.match(message.id):  # ids are verified hex; never a path
        raise CliError(f"message id {message.id!r} is not a file name", EXIT_CHECK_FAILED)
    path = folder / message.id
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)  # payloads may be confidential: owner only
        with os.fdopen(fd, "wb") as handle:
            handle.write(message.payload)
    except OSError as exc:
        raise CliError(
            f"cannot write {path}: {exc.strerror or exc} "
            f"(message {message.id} from {message.sender} was taken from the inbox)",
            EXIT_CHECK_FAILED,
        ) from exc
    return path


def _show_message(args: argparse.Namespace, message: Message, path: Path | None) -> None:
    header = message.header
    text = _text_of(message.payload)
    data: dict[str, Any] = {
        "id": message.id,
        "sender": message.sender,
        "type": message.type.value,
        "priority": message.priority.value,
        "status": header.status.value,
        "label": _label_data(message.label),
        "incident": message.incident,
        "created": _iso(header.created),
        "expires": _iso(header.expires),
        "content_type": header.content_type,
        "size": len(message.payload),
    }
    if path is not None:
        data["file"] = str(path)
    elif text is not None:
        data["payload"], data["encoding"] = text, "utf-8"
    else:
        data["payload"] = base64.b64encode(message.payload).decode("ascii")
        data["encoding"] = "base64"
    lines = [
        f"message {message.id}",
        f"  from:     {message.sender}",
        f"  type:     {message.type.value} ({message.priority.value}, {header.status.value})",
        f"  label:    {_label_text(message.label)}",
        f"  incident: {message.incident or '-'}",
        f"  created:  {_local(header.created)}",
    ]
    if path is not None:
        lines.append(f"  payload:  {len(message.payload)} bytes written to {path}")
    elif text is not None:
        lines.append(f"  payload:  {header.content_type}, {len(message.payload)} bytes")
        shown = UNPRINTABLE.sub("\ufffd", text[:MAX_TEXT_LINE_CHARS])
        if len(text) > MAX_TEXT_LINE_CHARS:
            shown += " ... (shortened; use --out-dir or --json for all of it)"
        lines.extend(f"    {line}" for line in shown.splitlines() or [""])
    else:
        lines.append(
            f"  payload:  {header.content_type}, {len(message.payload)} bytes of binary "
            "(use --out-dir or --json)"
        )
    _out(args, data, "\n".join(lines))


def _stop_on_signals(stop: asyncio.Event) -> Callable[[], None]:
    """Set ``stop`` on SIGINT and SIGTERM; returns a function that restores the defaults."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
            pass

    def restore() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return restore


# --- status --------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    message_id = args.message_id.strip().lower()
    if not MESSAGE_ID.match(message_id):
        raise CliError(f"message id {args.message_id[:80]!r}: 32 hex digits")
    connection = Connection.resolve(args, os.environ)
    policy = connection.load_policy()
    timeout = parse_duration(args.timeout, "--timeout", maximum=MAX_TIMEOUT_S)

    async def work() -> int:
        client = connection.client(policy, min(timeout, CONNECT_TIMEOUT_S))
        async with _session(client):
            status = await client.status(message_id)
            await _flush_quietly(client, min(timeout, RECEIPT_FLUSH_S) if client.connected else 0)
        data: dict[str, Any] = {
            "message_id": message_id,
            "state": status.state,
            "sender": status.sender,
            "label": _label_data(status.label) if status.label is not None else None,
            "recipients": {r: _recipient_data(s) for r, s in sorted(status.recipients.items())},
        }
        if status.state == "unknown":
            _out(args, data, None)
            raise CliError(f"message {message_id} is unknown to the broker", EXIT_CHECK_FAILED)
        if status.state == "queued":
            text = f"message {message_id}: queued in this client's outbox (not yet submitted)"
        else:
            confirmed = sum(s.delivered is not None for s in status.recipients.values())
            label = _label_text(status.label) if status.label is not None else "-"
            lines = [
                f"message {message_id}: {status.state}, from {status.sender}, {label}",
                f"  delivered to {confirmed} of {len(status.recipients)} recipient(s)",
                *_recipient_lines(status.recipients),
            ]
            text = "\n".join(lines)
        _out(args, data, text)
        return EXIT_OK

    return _run(args, work)


def cmd_directory_publish(args: argparse.Namespace) -> int:
    """Submit a signed directory version through the broker and wait until it is published."""
    connection = Connection.resolve(args, os.environ)
    policy = connection.load_policy()
    timeout = parse_duration(args.timeout, "--timeout", maximum=MAX_TIMEOUT_S)
    raw = _read(Path(args.file), MAX_INPUT_BYTES, "directory version")

    async def work() -> int:
        client = connection.client(policy, min(timeout, CONNECT_TIMEOUT_S))
        async with _session(client):
            before = client.directory.version
            try:
                adopted = await client.submit_directory(raw, timeout=timeout)
            except DirectoryRefused as exc:
                raise CliError(f"refused ({exc.code}): {exc.message}", EXIT_CHECK_FAILED) from exc
        data = {"version": adopted.version, "hash": adopted.hash, "previous_version": before}
        _out(
            args,
            data,
            f"directory v{adopted.version} published by the broker ({adopted.hash});"
            " clients adopt it as they follow the directory",
        )
        return EXIT_OK

    return _run(args, work)


def add_publish_verb(directory: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``ssr directory publish FILE``: the network half of the authority's directory verbs."""
    publish = directory.add_parser(
        "publish",
        help="submit a signed directory version through the broker",
        description="Submit the next signed directory version (written by add-actor, "
        "rotate-key, revoke, set-clearance or sign) on this actor's submit subject and wait "
        "until a broker verified and published it.",
    )
    publish.add_argument("file", help="the signed version file, e.g. directory/v00000002.dir")
    publish.add_argument("--timeout", default="30s", metavar="DURATION", help="default 30s")
    _connection_options(publish)
    publish.set_defaults(handler=cmd_directory_publish)


# --- the parser ----------------------------------------------------------------------------------


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "connection", "each option falls back to its environment variable, then to --demo-dir"
    )
    group.add_argument("--actor", metavar="ID", help=f"the actor to act as (${ENV_ACTOR})")
    group.add_argument("--keys", metavar="FILE", help=f"the actor's secret key file (${ENV_KEYS})")
    group.add_argument(
        "--authority-key",
        metavar="HEX|FILE",
        help=f"pinned directory authority public key (${ENV_AUTHORITY_KEY})",
    )
    group.add_argument(
        "--server",
        action="append",
        metavar="URL",
        help=f"NATS server URL, repeatable (${ENV_NATS_URLS}, comma-separated)",
    )
    group.add_argument(
        "--state-dir",
        metavar="DIR",
        help=f"the actor's outbox, inbox and cached directory (${ENV_STATE_DIR})",
    )
    group.add_argument(
        "--policy", metavar="FILE", help=f"policy file (${ENV_POLICY}; default: built-in)"
    )
    group.add_argument(
        "--demo-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,  # keeps a --demo-dir given before the verb
        help=f"an 'ssr up' data folder: fills in what is not given (also before the verb; "
        f"${ENV_DEMO_DIR})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,  # keeps a --json given before the verb
        help="machine-readable output (also before the verb)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what the client does to stderr"
    )


def add_message_verbs(
    parser: argparse.ArgumentParser,
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``send``, ``inbox`` and ``status`` to ``commands``, and ``--demo-dir`` to ``parser``."""
    parser.add_argument(
        "--demo-dir",
        metavar="DIR",
        help=f"for the message and crisis verbs: the 'ssr up' data folder to take keys, authority "
        f"key, NATS URL, state folder and policy from (${ENV_DEMO_DIR})",
    )

    send = commands.add_parser(
        "send",
        help="sign, encrypt and send a message",
        description="Send one message and wait for the broker's verdict (--wait).",
    )
    address = send.add_argument_group("addressees")
    address.add_argument("--to", action="append", metavar="ACTOR", help="actor id (repeatable)")
    address.add_argument("--group", action="append", metavar="GROUP", help="group (repeatable)")
    address.add_argument(
        "--incident", metavar="ID", help="the incident; alone: its participants are addressed"
    )
    body = send.add_argument_group("payload (stdin when neither --file nor --text)")
    source = body.add_mutually_exclusive_group()
    source.add_argument("--file", metavar="PATH", help="payload file ('-': stdin)")
    source.add_argument("--text", metavar="TEXT", help="payload text")
    body.add_argument(
        "--content-type", metavar="TYPE", help="e.g. application/json (default: guessed)"
    )
    meta = send.add_argument_group("label and type")
    meta.add_argument("--label", required=True, metavar="LEVEL", help="classification, e.g. INTERN")
    meta.add_argument("--tlp", default="AMBER", metavar="COLOR", help="TLP marking (default AMBER)")
    meta.add_argument("--legal", metavar="TEXT", help="legal ground for secrecy, e.g. 'OSL 18:13'")
    meta.add_argument(
        "--category", action="append", metavar="NAME", help="need-to-know category (repeatable)"
    )
    meta.add_argument(
        "--type", default="coordination", metavar="TYPE", help="message type (default coordination)"
    )
    meta.add_argument(
        "--priority",
        default="routine",
        metavar="P",
        help="routine, priority, immediate or flash (default routine)",
    )
    meta.add_argument(
        "--status", default="actual", metavar="S", help="actual, exercise or test (default actual)"
    )
    meta.add_argument("--expires-in", metavar="DURATION", help="e.g. 90m, 24h, 3600s (default 24h)")
    send.add_argument(
        "--wait",
        choices=("accepted", "delivered", "none"),
        default="accepted",
        help="accepted (default): the broker's verdict; delivered: every recipient's "
        "receipt; none: only that JetStream stored it",
    )
    send.add_argument(
        "--timeout",
        default=f"{DEFAULT_TIMEOUT_S:g}s",
        metavar="DURATION",
        help=f"the longest to wait in all (default {DEFAULT_TIMEOUT_S:g}s)",
    )
    _connection_options(send)
    send.set_defaults(handler=cmd_send)

    inbox = commands.add_parser(
        "inbox",
        help="print received messages",
        description="Print the messages waiting for the actor (each is handed out once).",
    )
    inbox.add_argument("--follow", action="store_true", help="keep printing until Ctrl-C/SIGTERM")
    inbox.add_argument("--limit", metavar="N", help="stop after N messages")
    inbox.add_argument(
        "--wait",
        default=f"{DEFAULT_SETTLE_S:g}s",
        metavar="DURATION",
        help=f"without --follow: how long to let deliveries arrive (default {DEFAULT_SETTLE_S:g}s)",
    )
    inbox.add_argument("--read", action="store_true", help="send a signed read receipt for each")
    inbox.add_argument("--ack", action="store_true", help="send a signed acknowledged receipt")
    inbox.add_argument("--note", metavar="TEXT", help="a note in the acknowledged receipt")
    inbox.add_argument(
        "--out-dir", metavar="DIR", help="write each payload to DIR/<message id> (mode 600)"
    )
    _connection_options(inbox)
    inbox.set_defaults(handler=cmd_inbox)

    status = commands.add_parser(
        "status",
        help="the broker's record of a sent message",
        description="Per recipient: delivered, read and acknowledged times, and escalation.",
    )
    status.add_argument("message_id", metavar="MSG_ID")
    status.add_argument(
        "--timeout",
        default=f"{CONNECT_TIMEOUT_S:g}s",
        metavar="DURATION",
        help=f"the longest to try to reach NATS (default {CONNECT_TIMEOUT_S:g}s)",
    )
    _connection_options(status)
    status.set_defaults(handler=cmd_status)


__all__ = [
    "Connection",
    "add_message_verbs",
    "cmd_inbox",
    "cmd_send",
    "cmd_status",
    "parse_duration",
]
