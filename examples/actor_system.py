"""An actor's own system on the ssr-broker client library: a small crisis desk.

Two parts run at once until Ctrl-C or SIGTERM (or ``--duration`` seconds):

- **receive**: print each message (sender, type, label, payload), act on it
  (answer a ``request``, log an ``alert`` for the TiB, the duty officer) and
  sign an ``acknowledged`` receipt;
- **report**: send a lägesbild (situation report) to the group ``kommuner``
  every ``--every`` seconds (``--once``: one), wait for the broker's verdict
  and, ``--status-after`` seconds later, print what each recipient confirmed.

Against ``make run`` (docs/integrating.md walks through it):

    .venv/bin/python examples/actor_system.py --demo-dir .ssr-data --actor nacka
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from clients import (
    Client,
    ClientError,
    DeliveryTimeout,
    Label,
    Message,
    MessageType,
    Reference,
    ReferenceKind,
    Rejected,
    SendHandle,
    Unavailable,
)

log = logging.getLogger("crisis-desk")
tasks: set[asyncio.Task[None]] = set()  # receive, report, and one follow per message sent
stop = asyncio.Event()  # set by Ctrl-C, SIGTERM, --duration, or a task that failed


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="A crisis desk on ssr-broker (an example).")
    p.add_argument("--actor", required=True, help="this actor's id, e.g. nacka")
    p.add_argument("--demo-dir", type=Path, help="folder of `make run`: fills in the next five")
    p.add_argument("--server", action="append", help="NATS URL (repeat it for failover)")
    p.add_argument("--keys", type=Path, help="this actor's secret key file (mode 600)")
    p.add_argument("--authority-key", help="registry authority public key: file or 64 hex digits")
    p.add_argument("--state-dir", type=Path, help="outbox, inbox, directory cache: back it up")
    p.add_argument("--policy", type=Path, help="the region's policy file (default: built-in)")
    p.add_argument("--every", type=float, default=60.0, help="seconds between reports")
    p.add_argument("--once", action="store_true", help="send one report only")
    p.add_argument("--status-after", type=float, default=10.0, help="seconds, then show receipts")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    return p


def connect(args: argparse.Namespace) -> Client:
    if args.demo_dir is not None:  # what `make run` wrote; explicit options win
        demo: Path = args.demo_dir
        url = demo / "nats.url"  # written while the broker runs
        if not args.server and not url.exists():
            sys.exit(f"{url} not found: is the broker running (make run)?")
        args.server = args.server or [url.read_text(encoding="ascii").strip()]
        args.keys = args.keys or demo / "keys" / f"{args.actor}.key"
        args.authority_key = args.authority_key or demo / "authority.pub"
        args.state_dir = args.state_dir or demo / "clients" / args.actor  # as `ssr` verbs
        args.policy = args.policy or demo / "policy.toml"
    for name in ("server", "keys", "authority_key", "state_dir"):
        if not getattr(args, name):
            parser().error(f"--{name.replace('_', '-')} is needed (or --demo-dir)")
    return Client.connect(
        servers=args.server,
        actor=args.actor,
        keys=args.keys,
        authority_key=args.authority_key,
        state_dir=args.state_dir,
        policy=args.policy,
    )


def spawn(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(work)
    tasks.add(task)
    task.add_done_callback(finished)


def finished(task: asyncio.Task[None]) -> None:
    tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("a task failed; stopping", exc_info=task.exception())
        stop.set()


def say(text: str) -> None:
    print(text, flush=True)  # flush: the output may be a pipe or a log file


def show(label: Label) -> str:  # e.g. "SEKRETESS / TLP:AMBER / taktik / OSL 18:13"
    parts = [label.classification, f"TLP:{label.tlp.value}", *label.categories, label.legal]
    return " / ".join(part for part in parts if part)


async def receive(client: Client) -> None:
    # Each message exactly once, already verified, decrypted and label-checked.
    async for message in client.messages():
        say(f"<- {message.sender}: {message.type} [{show(message.label)}] {message.text[:200]}")
        note = await act(client, message)
        try:
            await message.acknowledge(note=note)  # signed but not encrypted: no secrets here
            say(f"   acknowledged {message.id}: {note}")
        except ClientError as exc:  # the outbox is full or unusable
            log.error("cannot acknowledge %s: %s", message.id, exc.message)


async def act(client: Client, message: Message) -> str:
    if message.type is MessageType.ALERT:
        log.warning("ALERT from %s (%s): TiB informed", message.sender, message.priority)
        return "alert logged, TiB informed"
    if message.type is not MessageType.REQUEST:
        return "noted"
    request = Reference(
        kind=ReferenceKind.REPLY, message=message.id, header_hash=message.header_hash
    )
    try:  # answer the requester only, at the request's label, status and incident
        reply = await client.send(
            to=[message.sender],
            payload={"text": f"Svar från {client.actor}: läget är under kontroll."},
            label=message.label,
            type=MessageType.COORDINATION,
            status=message.header.status,
            incident=message.incident,
            references=[request],
        )
    except ClientError as exc:  # AddressError or SendError: nothing was queued
        return f"could not answer ({exc.code})"
    spawn(follow(reply, "reply", 0))
    return "answered"


async def report(client: Client, args: argparse.Namespace) -> None:
    while True:
        now = datetime.now().astimezone().strftime("%H:%M")
        try:
            handle = await client.send(
                groups=["kommuner"],
                payload={"text": f"Lägesbild {now} från {client.actor}: inga störningar."},
                label="INTERN",
                tlp="GREEN",
                type=MessageType.SITUATION_REPORT,
                expires=timedelta(hours=1),  # a stale lägesbild helps nobody
            )
        except ClientError as exc:  # AddressError, SendError, OutboxFull: nothing was queued
            log.error("lägesbild not sent: %s (%s)", exc.message, exc.code)
        else:
            say(f"-> lägesbild {handle.message_id} to {len(handle.recipients)} recipients")
            spawn(follow(handle, "lägesbild", args.status_after))
        if args.once:
            return
        await asyncio.sleep(args.every)


async def follow(handle: SendHandle, what: str, status_after: float) -> None:
    name = f"   {what} {handle.message_id}"
    try:
        await handle.accepted(timeout=30)
    except Rejected as exc:  # the broker's reason code, and the recipients it concerns
        say(f"{name} REFUSED: {exc.code} {' '.join(exc.recipients)}")
        return
    except DeliveryTimeout:  # NATS is unreachable: the message waits in the on-disk outbox
        say(f"{name}: no verdict yet ({handle.state}); it is sent when NATS is back")
        return
    say(f"{name} accepted by the broker")
    if status_after <= 0:
        return
    with contextlib.suppress(DeliveryTimeout):  # recipients whose systems are down stay pending
        await handle.delivered(timeout=status_after)
    by_state: dict[str, list[str]] = {}
    for recipient, status in sorted(handle.status().items()):
        by_state.setdefault(status.state, []).append(recipient)
    for state, names in by_state.items():
        more = f" and {len(names) - 6} more" if len(names) > 6 else ""
        say(f"{name} {state}: {' '.join(names[:6])}{more}")


async def main(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.duration:
        loop.call_later(args.duration, stop.set)
    try:
        async with connect(args) as client:
            online = "connected" if client.connected else "offline, sending when NATS is back"
            say(f"{client.actor}: {online}, directory v{client.directory.version}; Ctrl-C stops")
            spawn(receive(client))
            spawn(report(client, args))
            await stop.wait()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(DeliveryTimeout):  # what is left leaves on the next start
                await client.flush(timeout=5)
    except Unavailable as exc:
        say(f"cannot reach NATS, and no directory is cached yet: {exc.message}")
        return 1
    except ClientError as exc:  # keys, authority key, state folder in use, directory refused
        say(f"cannot start: {exc.message} ({exc.code})")
        return 1
    say("stopped cleanly")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(parser().parse_args())))
