"""The integrators' guide holds: its example system and its code run against a real broker.

- ``examples/actor_system.py`` runs as nacka in its own process (as an actor
  runs it), against a broker on a real nats-server, while the test plays solna
  with a :class:`clients.Client`: solna gets nacka's lägesbild, and a request
  from solna is answered and acknowledged by the example; SIGTERM stops it
  cleanly.
- ``docs/integrating.md``: its fenced ``python`` blocks run, in order, as one
  session against a live broker, from a folder whose ``.ssr-data`` is that
  broker's data folder (as after ``make run``); its ``python excerpt`` blocks
  appear verbatim in the example; and every command line it gives for the
  example parses.

Every wait is bounded; each test takes a few seconds.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from broker.service import Service
from clients import Client, Message, MessageType, ReferenceKind, Tlp, _errors

from . import nats_fixtures, service_helpers
from .service_helpers import WAIT, BrokerFactory, BrokerProcess, wait_until

# Fixtures bound to names here (pytest finds fixtures by module attribute).
nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory
running_broker = service_helpers.running_broker

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "actor_system.py"
GUIDE = ROOT / "docs" / "integrating.md"
_BLOCK = re.compile(r"^```python([^\n]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def demo_dir(factory: BrokerFactory) -> Path:
    """The broker's data folder, with ``nats.url`` as ``ssr up`` writes it while running."""
    (factory.data_dir / "nats.url").write_text(factory.server.url + "\n", encoding="ascii")
    return factory.data_dir


def actor_client(data: Path, actor: str, state: Path) -> Client:
    return Client.connect(
        servers=[(data / "nats.url").read_text(encoding="ascii").strip()],
        actor=actor,
        keys=data / "keys" / f"{actor}.key",
        authority_key=data / "authority.pub",
        state_dir=state,
        policy=data / "policy.toml",
    )


async def start_desk(data: Path, actor: str) -> BrokerProcess:
    """The example as ``actor``: one lägesbild, receipts shown after 6 s, 60 s at most."""
    bounded = ("--once", "--status-after", "6", "--duration", "60")
    return await BrokerProcess.start(  # python -u <args>, its output collected
        ["-u", str(EXAMPLE), "--demo-dir", str(data), "--actor", actor, *bounded],
        ready_text=f"{actor}: connected,",
    )


async def next_message(client: Client, match: Callable[[Message], bool]) -> Message:
    """The first message ``match`` accepts (others are taken and skipped), within WAIT."""
    async with asyncio.timeout(WAIT):
        async for message in client.messages():
            if match(message):
                return message
    raise AssertionError("the message stream ended")  # pragma: no cover - follow=True


# --- the example against a broker -----------------------------------------------------------


async def test_example_reports_answers_and_acknowledges(
    running_broker: Service,
    broker_factory: BrokerFactory,
    tmp_path: Path,
) -> None:
    data = demo_dir(broker_factory)
    desk = await start_desk(data, "nacka")

    def output() -> str:
        return "\n".join(desk.output)

    try:
        async with actor_client(data, "solna", tmp_path / "solna") as solna:
            # nacka's lägesbild to the municipalities reaches solna, verified and decrypted.
            report = await next_message(
                solna, lambda m: m.sender == "nacka" and m.type is MessageType.SITUATION_REPORT
            )
            assert (report.label.classification, report.label.tlp) == ("INTERN", Tlp.GREEN)
            assert report.json()["text"].startswith("Lägesbild")
            await report.mark_read()

            # solna asks nacka; the example answers and acknowledges the request.
            request = await solna.send(
                to=["nacka"],
                payload={"text": "Hur många hushåll saknar vatten?"},
                label="INTERN",
                tlp="AMBER",
                type="request",
            )
            await request.accepted(timeout=WAIT)
            await wait_until(
                lambda: request.status()["nacka"].acknowledged is not None,
                "nacka's acknowledged receipt",
            )
            reply = await next_message(
                solna,
                lambda m: any(
                    r.kind is ReferenceKind.REPLY and r.message == request.message_id
                    for r in m.header.references
                ),
            )
            assert (reply.sender, reply.type) == ("nacka", MessageType.COORDINATION)
            assert reply.label == request.header.label  # answered at the request's label
            record = await solna.status(request.message_id)  # the broker's record agrees
            assert record.recipients["nacka"].state == "acknowledged"

            # The example prints each recipient's state: solna has read the lägesbild.
            await wait_until(
                lambda: re.search(r"lägesbild \w+ read: solna", output()) is not None,
                "the example's status line for solna",
            )
        desk.terminate()  # SIGTERM, as a service manager stops it
        assert await desk.wait(WAIT) == 0, output()
    finally:
        await desk.kill()
        print(output())  # pytest shows it when the test fails
    text = output()
    assert f"lägesbild {report.id} accepted by the broker" in text
    assert "<- solna: request [INTERN / TLP:AMBER]" in text
    assert f"acknowledged {request.message_id}: answered" in text
    assert "Traceback" not in text
    assert text.rstrip().endswith("stopped cleanly")


async def test_example_says_when_the_broker_is_not_running(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        *("--demo-dir", str(data), "--actor", "nacka"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 1
    assert b"nats.url not found: is the broker running (make run)?" in out


# --- the guide ------------------------------------------------------------------------------


def guide_blocks(kind: str) -> list[tuple[int, str]]:
    """``(line, source)`` of the guide's ``python`` blocks (``kind`` ""), or ``python excerpt``."""
    text = GUIDE.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start(2)) + 1, match.group(2))
        for match in _BLOCK.finditer(text)
        if match.group(1).strip() == kind
    ]


def example_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("actor_system", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_guide_blocks_are_runnable_or_excerpts() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    kinds = {match.group(1).strip() for match in _BLOCK.finditer(text)}
    assert kinds == {"", "excerpt"}, kinds
    assert guide_blocks("")
    assert guide_blocks("excerpt")


@pytest.mark.parametrize(("line", "source"), guide_blocks("excerpt"))
def test_excerpt_is_verbatim_in_the_example(line: int, source: str) -> None:
    assert source in EXAMPLE.read_text(encoding="utf-8"), f"docs/integrating.md:{line}"


def test_guide_error_tree_and_table_match_the_library() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    doc = _errors.__doc__
    assert doc is not None
    tree = [line.strip() for line in doc.splitlines() if "ClientError" in line or "─ " in line]
    assert len(tree) == len(_errors.__all__), tree
    for line in tree:
        assert line in text, f"the error tree in the guide lacks {line!r}"
    for name in _errors.__all__:
        assert f"\n| `{name}` |" in text, f"the guide's error table has no row for {name}"


def test_guide_command_lines_parse() -> None:
    parser = example_module().parser()
    text = GUIDE.read_text(encoding="utf-8")
    commands = re.findall(r"examples/actor_system\.py((?: +--[\w-]+(?: +[^\s`-][^\s`]*)?)+)", text)
    assert len(commands) >= 2, commands
    for arguments in commands:
        args = parser.parse_args(shlex.split(arguments))
        assert args.actor


async def test_guide_session_runs_against_a_broker(
    running_broker: Service,
    broker_factory: BrokerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As after `make run` in the repository root: ./.ssr-data is the running broker's folder.
    workdir = tmp_path / "repo"
    workdir.mkdir()
    (workdir / ".ssr-data").symlink_to(demo_dir(broker_factory), target_is_directory=True)
    monkeypatch.chdir(workdir)
    # The guide's last block talks to the example running as nacka (section 13).
    desk = await start_desk(workdir / ".ssr-data", "nacka")
    session: dict[str, object] = {"__name__": "__main__"}
    try:
        for line, source in guide_blocks(""):
            # Padded so a traceback points at the line in the Markdown file. Each block calls
            # asyncio.run(), so it runs in a thread while this loop keeps the broker going;
            # every wait inside a block is bounded, so the thread ends.
            code = compile("\n" * (line - 1) + source, str(GUIDE), "exec")
            await asyncio.wait_for(asyncio.to_thread(exec, code, session), 3 * WAIT)
        desk.terminate()
        assert await desk.wait(WAIT) == 0
    finally:
        await desk.kill()
        print("\n".join(desk.output))  # pytest shows it when the test fails
    text = "\n".join(desk.output)
    assert "ALERT from sodertalje (immediate): TiB informed" in text
    assert "<- sodertalje: request [INTERN / TLP:AMBER]" in text
    assert "<- huddinge: coordination" in text  # the session's message to the municipalities
