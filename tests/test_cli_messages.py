"""``ssr send``, ``ssr inbox`` and ``ssr status`` against a real nats-server and broker.

The CLI's ``main()`` runs its own event loop, so async tests call it in a thread;
one test runs the installed ``ssr`` entry point as a process (``inbox --follow``
stopped by SIGTERM). Usage errors are checked without a broker: they must fail
before anything connects, with one line on stderr and exit code 2.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.demo import DemoRegion
from broker.service import Service
from clients.cli import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, main

from . import nats_fixtures, service_helpers
from .service_helpers import BrokerFactory, write_data_dir

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory
running_broker = service_helpers.running_broker

SSR = Path(sys.executable).with_name("ssr")  # the installed entry point
ENV_NAMES = (
    "SSR_ACTOR",
    "SSR_KEYS",
    "SSR_AUTHORITY_KEY",
    "SSR_NATS_URLS",
    "SSR_STATE_DIR",
    "SSR_POLICY",
    "SSR_DEMO_DIR",
)
WAIT = 10.0


@dataclass
class Result:
    code: int
    out: str
    err: str

    def one_error_line(self) -> str:
        assert "Traceback" not in self.err, self.err
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("ssr: "), self.err
        return lines[0]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return Result(code, out, err)


async def ssr(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    """``main(argv)`` in a thread (it runs its own event loop), with its output."""
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return Result(code, out, err)


def dead_url() -> str:
    """A NATS URL with nothing listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"nats://127.0.0.1:{port}"


@pytest.fixture
async def demo_dir(running_broker: Service, broker_factory: BrokerFactory) -> Path:
    """The broker's data folder with ``nats.url``, as ``ssr up`` leaves it."""
    folder = broker_factory.data_dir
    (folder / "nats.url").write_text(broker_factory.server.url + "\n", encoding="ascii")
    return folder


async def status_until(
    capsys: pytest.CaptureFixture[str], base: list[str], message_id: str, recipient: str, state: str
) -> dict:
    """Poll ``ssr --json status`` until ``recipient`` reached ``state`` (bounded)."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        result = await ssr(capsys, "--json", *base, "status", "--actor", "nacka", message_id)
        assert result.code == EXIT_OK, result.err
        record = json.loads(result.out)
        if record["recipients"][recipient]["state"] == state:
            return record
        assert asyncio.get_running_loop().time() < deadline, record
        await asyncio.sleep(0.2)


# --- through the broker -------------------------------------------------------------------------


async def test_send_inbox_ack_and_status(demo_dir: Path, capsys) -> None:
    base = ["--demo-dir", str(demo_dir)]
    sent = await ssr(
        capsys,
        "--json",
        *base,
        "send",
        "--actor",
        "nacka",
        "--to",
        "solna",
        "--label",
        "intern",
        "--tlp",
        "GREEN",
        "--type",
        "situation_report",
        "--text",
        "Lägesbild 14:00: två skolor stängda",
    )
    assert sent.code == EXIT_OK, sent.err
    outcome = json.loads(sent.out)
    message_id = outcome["message_id"]
    assert outcome["state"] == "accepted"
    assert list(outcome["recipients"]) == ["solna"]

    # --json after the verb works too; one JSON object per line.
    inbox = await ssr(
        capsys, *base, "inbox", "--json", "--actor", "solna", "--ack", "--note", "on it"
    )
    assert inbox.code == EXIT_OK, inbox.err
    messages = [json.loads(line) for line in inbox.out.splitlines()]
    [message] = [m for m in messages if m["id"] == message_id]
    assert message["sender"] == "nacka"
    assert message["type"] == "situation_report"
    assert message["label"]["classification"] == "INTERN"
    assert (message["payload"], message["encoding"]) == (
        "Lägesbild 14:00: två skolor stängda",
        "utf-8",
    )

    record = await status_until(capsys, base, message_id, "solna", "acknowledged")
    assert record["state"] == "accepted"
    assert record["sender"] == "nacka"
    assert record["recipients"]["solna"]["delivered"] is not None

    human = await ssr(capsys, *base, "status", "--actor", "nacka", message_id)
    assert human.code == EXIT_OK
    assert "delivered to 1 of 1 recipient(s)" in human.out
    assert "solna" in human.out

    # Each message is handed out once: nothing is waiting any more.
    again = await ssr(capsys, *base, "inbox", "--actor", "solna", "--wait", "0")
    assert (again.code, again.out) == (EXIT_OK, "")
    assert "no messages waiting" in again.err

    unknown = await ssr(capsys, *base, "status", "--actor", "nacka", "0" * 32)
    assert unknown.code == EXIT_CHECK_FAILED
    assert "unknown to the broker" in unknown.one_error_line()


async def test_inbox_limit_out_dir_and_terminal_safety(
    demo_dir: Path, capsys, tmp_path: Path
) -> None:
    base = ["--demo-dir", str(demo_dir)]
    texts = {"röd \x1b[31mtext\x1b[0m\x07 slut", "andra meddelandet"}
    ids = {}
    for text in texts:
        argv = ["send", "--actor", "taby", "--to", "vaxholm", "--label", "INTERN"]
        sent = await ssr(capsys, "--json", *base, *argv, "--text", text)
        assert sent.code == EXIT_OK, sent.err
        ids[json.loads(sent.out)["message_id"]] = text

    first = await ssr(capsys, *base, "inbox", "--actor", "vaxholm", "--limit", "1", "--wait", "5s")
    assert first.code == EXIT_OK, first.err
    assert first.out.count("\nmessage ") + first.out.startswith("message ") == 1
    assert "\x1b" not in first.out
    assert "\x07" not in first.out
    [shown] = [i for i in ids if i in first.out]

    out_dir = tmp_path / "payloads"
    rest = await ssr(
        capsys, *base, "inbox", "--actor", "vaxholm", "--out-dir", str(out_dir), "--wait", "1"
    )
    assert rest.code == EXIT_OK, rest.err
    [other] = set(ids) - {shown}
    written = out_dir / other
    assert f"written to {written}" in rest.out
    assert written.read_text(encoding="utf-8") == ids[other]
    assert written.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in out_dir.iterdir()) == [other]


async def test_follow_in_a_process_and_wait_for_delivery(
    demo_dir: Path, capsys, tmp_path: Path
) -> None:
    """``ssr inbox --follow`` as a real process (environment only), stopped by SIGTERM."""
    assert SSR.exists(), f"the ssr entry point is not installed at {SSR}"
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env |= {"SSR_DEMO_DIR": str(demo_dir), "SSR_ACTOR": "sundbyberg"}
    follower = await asyncio.create_subprocess_exec(
        str(SSR),
        "--json",
        "inbox",
        "--follow",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        payload = bytes(range(256))  # not UTF-8: shown as base64
        (tmp_path / "blob.bin").write_bytes(payload)
        sent = await ssr(
            capsys,
            "--demo-dir",
            str(demo_dir),
            "send",
            "--actor",
            "nacka",
            "--to",
            "sundbyberg",
            "--label",
            "INTERN",
            "--file",
            str(tmp_path / "blob.bin"),
            "--wait",
            "delivered",
            "--timeout",
            "15s",
        )
        assert sent.code == EXIT_OK, sent.err
        assert "delivered to all 1 recipient(s)" in sent.out
        assert "sundbyberg" in sent.out
        assert follower.stdout is not None
        line = await asyncio.wait_for(follower.stdout.readline(), WAIT)
        shown = json.loads(line)
        assert shown["sender"] == "nacka"
        assert shown["encoding"] == "base64"
        assert base64.b64decode(shown["payload"]) == payload
        assert shown["content_type"] == "application/octet-stream"
    finally:
        if follower.returncode is None:
            follower.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(follower.communicate(), WAIT)
    assert follower.returncode == EXIT_OK, err.decode()
    assert b"Traceback" not in err


async def test_refused_send_exits_1_with_the_reason(
    demo_dir: Path, capsys, monkeypatch: pytest.MonkeyPatch, live_region: DemoRegion, tmp_path
) -> None:
    """Configured through the environment alone; the broker refuses, the CLI says why."""
    monkeypatch.setenv("SSR_ACTOR", "nacka")
    monkeypatch.setenv("SSR_KEYS", str(demo_dir / "keys" / "nacka.key"))
    monkeypatch.setenv("SSR_AUTHORITY_KEY", live_region.authority.public.hex())
    monkeypatch.setenv(
        "SSR_NATS_URLS", f"{dead_url()},{(demo_dir / 'nats.url').read_text().strip()}"
    )
    monkeypatch.setenv("SSR_STATE_DIR", str(tmp_path / "nacka-state"))
    monkeypatch.setenv("SSR_POLICY", str(demo_dir / "policy.toml"))
    secret = ["send", "--to", "stockholms-hamnar", "--label", "SEKRETESS", "--legal", "OSL 18:13"]

    refused = await ssr(capsys, *secret, "--text", "hemligt")
    assert refused.code == EXIT_CHECK_FAILED
    line = refused.one_error_line()
    assert "recipient_not_cleared" in line
    assert "stockholms-hamnar" in line
    assert refused.out == ""

    as_json = await ssr(capsys, "--json", *secret, "--text", "hemligt")
    assert as_json.code == EXIT_CHECK_FAILED
    outcome = json.loads(as_json.out)
    assert outcome["state"] == "rejected"
    assert outcome["error"]["code"] == "recipient_not_cleared"
    assert outcome["error"]["recipients"] == ["stockholms-hamnar"]

    unknown = await ssr(capsys, "send", "--to", "atlantis", "--label", "INTERN", "--text", "x")
    assert unknown.code == EXIT_USAGE
    assert "unknown recipient 'atlantis'" in unknown.one_error_line()


async def test_unreachable_nats_keeps_the_message_queued(demo_dir: Path, capsys) -> None:
    base = ["--demo-dir", str(demo_dir)]
    # Online once, so the state folder holds a verified directory to work offline from.
    assert (await ssr(capsys, *base, "inbox", "--actor", "nacka", "--wait", "0")).code == EXIT_OK
    offline = ["--server", dead_url()]  # a verb's option: after the verb
    sent = await ssr(
        capsys,
        *base,
        "send",
        *offline,
        "--actor",
        "nacka",
        "--to",
        "solna",
        "--label",
        "INTERN",
        "--text",
        "sent while NATS was down",
        "--wait",
        "none",
        "--timeout",
        "1s",
    )
    assert sent.code == EXIT_CHECK_FAILED
    line = sent.one_error_line()
    assert "stays queued" in line
    assert str(demo_dir / "clients" / "nacka" / "outbox.sqlite") in line
    message_id = line.split("message ")[1].split()[0]

    queued = await ssr(
        capsys, *base, "status", *offline, "--actor", "nacka", "--timeout", "1", message_id
    )
    assert queued.code == EXIT_OK, queued.err
    assert "queued in this client's outbox" in queued.out

    # The next verb for nacka with NATS reachable sends it on; solna gets it.
    assert (await ssr(capsys, *base, "inbox", "--actor", "nacka", "--wait", "0")).code == EXIT_OK
    received = await ssr(capsys, "--json", *base, "inbox", "--actor", "solna", "--wait", "3s")
    assert received.code == EXIT_OK, received.err
    assert message_id in [json.loads(line)["id"] for line in received.out.splitlines()]

    # No cached directory and no NATS: nothing can be built, nothing is queued.
    fresh = await ssr(
        capsys,
        *base,
        "send",
        *offline,
        "--actor",
        "taby",
        "--to",
        "solna",
        "--label",
        "INTERN",
        "--text",
        "x",
        "--timeout",
        "1",
    )
    assert fresh.code == EXIT_CHECK_FAILED
    assert "no directory cached" in fresh.one_error_line()


# --- usage errors: exit 2 before anything connects ----------------------------------------------


@pytest.fixture
def offline_dir(tmp_path: Path, live_region: DemoRegion) -> Path:
    folder = tmp_path / "data"
    write_data_dir(folder, live_region)
    (folder / "nats.url").write_text(dead_url() + "\n", encoding="ascii")
    (folder / "big.bin").write_bytes(b"x" * (1024 * 1024 + 1))  # over the policy's 1 MiB
    return folder


SEND = ["send", "--actor", "nacka", "--to", "solna", "--label", "INTERN", "--timeout", "1"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["send", "--to", "solna", "--label", "INTERN", "--text", "x"], "SSR_ACTOR"),
        ([*SEND, "--text", "x", "--keys", "/nonexistent/nacka.key"], "nacka.key"),
        (["send", "--actor", "atlantis", "--to", "solna", "--label", "INTERN"], "no key file"),
        ([*SEND, "--text", "x", "--expires-in", "5 weeks"], "--expires-in"),
        ([*SEND, "--text", "x", "--expires-in", "31d"], "at most 2592000 seconds"),
        ([*SEND, "--text", "x", "--timeout", "0"], "--timeout"),
        (
            ["send", "--actor", "nacka", "--to", "solna", "--label", "HEMLIGT", "--text", "x"],
            "ladder",
        ),
        ([*SEND, "--text", "x", "--tlp", "purple"], "--tlp"),
        ([*SEND, "--text", "x", "--priority", "urgent"], "--priority"),
        ([*SEND, "--text", "x", "--content-type", "text/plain; charset=utf-8"], "--content-type"),
        ([*SEND, "--text", ""], "payload is empty"),
        ([*SEND, "--file", "{data}/big.bin"], "larger than 1048576 bytes"),
        ([*SEND, "--file", "{data}/missing.txt"], "No such file"),
        (["send", "--actor", "nacka", "--label", "INTERN", "--text", "x"], "no addressees"),
        (["inbox", "--actor", "solna", "--limit", "-3"], "--limit"),
        (["inbox", "--actor", "solna", "--note", "x"], "--note goes with --ack"),
        (["status", "--actor", "nacka", "not-an-id"], "32 hex digits"),
        ([*SEND, "--text", "x", "--server", "http://example.org"], "must be a URL like nats://"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    offline_dir: Path, capsys, argv: list[str], expected: str
) -> None:
    argv = [arg.replace("{data}", str(offline_dir)) for arg in argv]
    result = run(capsys, "--demo-dir", str(offline_dir), *argv)
    assert result.code == EXIT_USAGE, result
    assert expected in result.one_error_line()
    assert result.out == ""


def test_missing_connection_pieces_name_the_option_and_variable(capsys, tmp_path: Path) -> None:
    result = run(capsys, "send", "--actor", "nacka", "--to", "solna", "--label", "INTERN")
    assert result.code == EXIT_USAGE
    assert "--keys FILE or set SSR_KEYS" in result.one_error_line()
    key = tmp_path / "nacka.key"
    assert run(capsys, "keys", "new", "--principal", "nacka", "--out", str(key)).code == EXIT_OK
    argv = ["send", "--actor", "nacka", "--keys", str(key), "--to", "solna", "--label", "INTERN"]
    result = run(capsys, *argv)
    assert "--authority-key HEX|FILE or set SSR_AUTHORITY_KEY" in result.one_error_line()
    result = run(capsys, *argv, "--authority-key", "ab" * 32)
    assert "--server URL or set SSR_NATS_URLS" in result.one_error_line()
    result = run(capsys, *argv, "--authority-key", "ab" * 32, "--server", "nats://127.0.0.1:1")
    assert "--state-dir DIR or set SSR_STATE_DIR" in result.one_error_line()
    # A demo folder that 'ssr up' is not running in: no nats.url.
    result = run(capsys, "--demo-dir", str(tmp_path), *argv, "--authority-key", "ab" * 32)
    assert result.code == EXIT_USAGE
    assert "is 'ssr up' running?" in result.one_error_line()


def test_the_duration_parser() -> None:
    from clients.cli import CliError
    from clients.cli_messages import parse_duration

    assert parse_duration("90", "t", maximum=1e9) == 90
    assert parse_duration("90m", "t", maximum=1e9) == 5400
    assert parse_duration("24h", "t", maximum=1e9) == 86400
    assert parse_duration("1.5s", "t", maximum=1e9) == 1.5
    assert parse_duration("2d", "t", maximum=1e9) == 172800
    assert parse_duration("0", "t", maximum=10, zero=True) == 0
    for bad in ("", "-1s", "1w", "0", "1e3", "11"):
        with pytest.raises(CliError):
            parse_duration(bad, "t", maximum=10)


async def test_directory_publish_through_the_broker(demo_dir: Path, capsys, tmp_path: Path) -> None:
    """The authority writes v2 offline (set-clearance), publishes it through NATS, and the
    broker's clients see it; publishing it again is refused before anything is sent."""
    import shutil

    chain = tmp_path / "chain"
    shutil.copytree(demo_dir / "directory", chain)
    edit = await ssr(
        capsys,
        "--json",
        "directory",
        "set-clearance",
        "--dir",
        str(chain),
        "--authority-key",
        str(demo_dir / "authority.pub"),
        "--authority-key-file",
        str(demo_dir / "keys" / "authority.key"),
        "--id",
        "stockholms-hamnar",
        "--clearance",
        "SEKRETESS",
    )
    assert edit.code == EXIT_OK, edit.err
    version = chain / "v00000002.dir"
    assert version.exists()
    base = ["--demo-dir", str(demo_dir), "--actor", "lansstyrelsen-stockholm"]
    published = await ssr(capsys, "--json", "directory", "publish", str(version), *base)
    assert published.code == EXIT_OK, published.err
    assert json.loads(published.out)["version"] == 2
    # Now the port may receive SEKRETESS: the broker decides on the new version.
    sent = await ssr(
        capsys,
        "send",
        "--demo-dir",
        str(demo_dir),
        "--actor",
        "nacka",
        "--to",
        "stockholms-hamnar",
        "--label",
        "SEKRETESS",
        "--text",
        "evakueringsplan",
    )
    assert sent.code == EXIT_OK, sent.err
    again = await ssr(capsys, "directory", "publish", str(version), *base)
    assert again.code == EXIT_CHECK_FAILED
    assert "not the next version" in again.one_error_line()
