"""A sending actor system in a process of its own, for ``tests/test_client_outage.py``.

    python tests/client_sender.py --server nats://127.0.0.1:4222 --actor nacka \\
        --key nacka.key --authority <hex> --state-dir state/nacka --to solna --count 60

Sends the messages numbered ``0 .. count-1`` (JSON ``{"index": i}``) through one
:class:`clients.Client` and its state folder. The next number is kept in
``<state-dir>/next-index``, replaced atomically once ``send`` returned (the message
is then durably in the outbox), so a restarted sender resumes where the last one
stopped. It prints one line per event on stdout, flushed at once:

    ready online|offline      the client started (offline: NATS unreachable, cached directory)
    sent <index> <id>         send returned: the message is in the outbox
    holding <index> <depth>   ``<state-dir>/hold`` exists: no further sends until it is gone
                              (a test kills the process here, outbox depth given)
    frozen <id>               ``<state-dir>/freeze`` exists: the publisher stopped right after
                              JetStream stored this message, before the outbox forgot it
    done                      every message sent and the outbox empty

Control files rather than signals, so the test knows exactly where a SIGKILL lands.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
from pathlib import Path

from clients import Client
from clients._outbox import Outbox

FLUSH_TIMEOUT_S = 120.0
_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:  # the publisher's thread prints too
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def freeze_after_publish(freeze: Path) -> None:
    """While ``freeze`` exists, stop the publisher between JetStream's ack and mark_sent."""
    mark_sent = Outbox.mark_sent

    def frozen(self: Outbox, message_id: str) -> None:
        if freeze.exists() and not message_id.startswith("r."):  # a message, not a receipt
            say(f"frozen {message_id}")
            while freeze.exists():
                time.sleep(0.02)
        mark_sent(self, message_id)

    Outbox.mark_sent = frozen  # type: ignore[method-assign]


def read_next(path: Path) -> int:
    try:
        return int(path.read_text(encoding="ascii"))
    except FileNotFoundError:
        return 0


def write_next(path: Path, index: int) -> None:
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w", encoding="ascii") as file:
        file.write(str(index))
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


async def run(args: argparse.Namespace) -> None:
    state = Path(args.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    hold, next_file = state / "hold", state / "next-index"
    freeze_after_publish(state / "freeze")
    async with Client.connect(
        servers=[args.server],
        actor=args.actor,
        keys=args.key,
        authority_key=args.authority,
        state_dir=state / "client",
        connect_timeout=args.connect_timeout,
    ) as client:
        say(f"ready {'online' if client.connected else 'offline'}")
        index = read_next(next_file)
        while index < args.count:
            if hold.exists():
                say(f"holding {index} {client.outbox_depth}")
                while hold.exists():
                    await asyncio.sleep(0.02)
            handle = await client.send(
                to=[args.to],
                payload={"index": index},
                label="INTERN",
                tlp="GREEN",
                type="situation_report",
            )
            write_next(next_file, index + 1)
            say(f"sent {index} {handle.message_id}")
            index += 1
            await asyncio.sleep(args.interval)
        await client.flush(FLUSH_TIMEOUT_S)
        say("done")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--actor", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--authority", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--connect-timeout", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s"
    )
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
