"""The crisis verbs of ``ssr`` against a real nats-server and broker.

``activate`` from a typhändelse template, ``situation``, ``request``/``requests``,
``press draft|approve|list`` and ``export``/``import`` of offline bundles, run through
``main()`` as ``test_cli_messages`` does (in a thread: it runs its own event loop).
The broker runs with a test policy whose catalogue holds two incident types. Usage
errors are checked without a broker: one line on stderr, exit code 2, nothing sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.demo import DemoRegion
from clients.cli import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE
from clients.cli_crisis import MAX_BUNDLE_FILE_BYTES

from . import nats_fixtures, service_helpers
from .service_helpers import BrokerFactory, write_data_dir
from .test_cli_messages import ENV_NAMES, Result, dead_url, run, ssr

nats_server = nats_fixtures.nats_server
live_region = service_helpers.live_region
broker_factory = service_helpers.broker_factory

WAIT = 10.0
LANSSTYRELSEN = "lansstyrelsen-stockholm"
# The demo region's groups: blaljus = Region Stockholm, the police, SOS Alarm and the
# three fire-and-rescue services; kommunikatorer = Länsstyrelsen, Stockholm and Nacka.
POLICY = """
format = 1
id = "ssr"
version = 1

[incident_types.storm]
name = "Storm"
groups = ["blaljus", "kommunikatorer"]
classification = "INTERN"
tlp = "GREEN"
priority = "priority"
communicators = "kommunikatorer"
checklist = ["Ring TiB", "Lägesbild var fjärde timme"]

[incident_types.stromavbrott]
name = "Elavbrott"
groups = ["kommuner"]
"""


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def demo_dir(broker_factory: BrokerFactory) -> Path:
    """A running broker's data folder with the test catalogue, as ``ssr up`` leaves it."""
    await broker_factory(policy_toml=POLICY)
    folder = broker_factory.data_dir
    (folder / "nats.url").write_text(broker_factory.server.url + "\n", encoding="ascii")
    return folder


async def json_of(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    result = await ssr(capsys, "--json", *argv)
    assert result.code == EXIT_OK, result.err
    return json.loads(result.out)


async def until(
    capsys: pytest.CaptureFixture[str], argv: list[str], done: Callable[[dict], bool], what: str
) -> dict:
    """Run ``ssr --json argv`` until ``done(output)`` holds (bounded by WAIT)."""
    deadline = time.monotonic() + WAIT
    while True:
        output = await json_of(capsys, *argv)
        if done(output):
            return output
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {output}"
        await asyncio.sleep(0.2)


# --- through the broker -------------------------------------------------------------------------


async def test_activate_from_a_template_and_the_situation(demo_dir: Path, capsys) -> None:
    base = ["--demo-dir", str(demo_dir)]
    activated = await json_of(
        capsys, *base, "activate", "storm-ylva", "--type", "storm", "--actor", LANSSTYRELSEN,
        "--text", "Storm Ylva: regional samverkan aktiverad",
    )  # fmt: skip
    assert activated["incident"] == "storm-ylva"
    assert activated["incident_type"] == "storm"
    assert activated["status"] == "actual"
    assert activated["state"] == "accepted"
    # The template's groups and label: blåljus and the communicators, INTERN TLP:GREEN.
    assert {"nacka", "stockholm", "sos-alarm", "polisen-stockholm"} <= set(activated["recipients"])
    assert "solna" not in activated["recipients"]
    assert (activated["label"]["classification"], activated["label"]["tlp"]) == ("INTERN", "GREEN")

    # The participants get the template's checklist with the text.
    inbox = await ssr(capsys, "--json", *base, "inbox", "--actor", "sos-alarm", "--wait", "3s")
    assert inbox.code == EXIT_OK, inbox.err
    [received] = [json.loads(line) for line in inbox.out.splitlines()]
    assert (received["type"], received["incident"]) == ("activation", "storm-ylva")
    assert json.loads(received["payload"]) == {
        "incident_type": "storm",
        "name": "Storm",
        "checklist": ["Ring TiB", "Lägesbild var fjärde timme"],
        "text": "Storm Ylva: regional samverkan aktiverad",
    }

    # Nacka reports twice; the second report supersedes the first.
    for text in ("Lägesbild 10:00: två skolor stängda", "Lägesbild 14:00: fyra skolor stängda"):
        sent = await ssr(
            capsys, *base, "send", "--actor", "nacka", "--incident", "storm-ylva",
            "--type", "situation_report", "--label", "INTERN", "--tlp", "GREEN", "--text", text,
        )  # fmt: skip
        assert sent.code == EXIT_OK, sent.err

    argv = [*base, "situation", "storm-ylva", "--actor", LANSSTYRELSEN, "--wait", "5s"]
    picture = await until(capsys, argv, lambda p: len(p["history"]) == 2, "both of nacka's reports")
    assert picture["exercise"] is False
    assert picture["missing"] == []
    [current] = picture["current"]
    assert (current["actor"], current["state"]) == ("nacka", "current")
    assert "fyra skolor" in current["payload"]
    states = sorted(entry["state"] for entry in picture["history"])
    assert states == ["current", "superseded"]

    human = await ssr(capsys, *argv)
    assert human.code == EXIT_OK, human.err
    lines = human.out.splitlines()
    assert lines[0] == "lägesbild (situational picture) of incident storm-ylva"
    assert any("nacka" in line and "current" in line and "fyra skolor" in line for line in lines)
    assert any("superseded" in line and "två skolor" in line for line in lines)
    assert "missing: 0 message(s) the broker lists that this client does not hold" in lines
    assert "EXERCISE" not in human.out

    # Not a participant: solna sees an empty picture, and nothing is missing for it.
    outsider = await json_of(capsys, *base, "situation", "storm-ylva", "--actor", "solna")
    assert (outsider["current"], outsider["history"], outsider["missing"]) == ([], [], [])

    # The owner closes it with an incident_close to the participants (crisis-workflows.md).
    closed = await ssr(
        capsys, *base, "send", "--actor", LANSSTYRELSEN, "--incident", "storm-ylva",
        "--type", "incident_close", "--label", "INTERN", "--text", "Samverkan avslutad",
    )  # fmt: skip
    assert closed.code == EXIT_OK, closed.err
    late = await ssr(
        capsys, *base, "send", "--actor", "nacka", "--incident", "storm-ylva",
        "--type", "situation_report", "--label", "INTERN", "--text", "för sent",
    )  # fmt: skip
    assert late.code == EXIT_CHECK_FAILED
    assert "incident_closed" in late.one_error_line()


async def test_exercise_requests_and_press_lines(demo_dir: Path, capsys) -> None:
    base = ["--demo-dir", str(demo_dir)]
    # An exercise opened by Stockholm (an activator) for two actors, Nacka leads press.
    activated = await json_of(
        capsys, *base, "activate", "ovning-elavbrott", "--type", "stromavbrott",
        "--actor", "stockholm", "--to", "nacka", "--to", "solna", "--exercise", "--lead", "nacka",
        "--label", "INTERN", "--tlp", "AMBER",
    )  # fmt: skip
    assert (activated["status"], sorted(activated["recipients"])) == (
        "exercise",
        ["nacka", "solna"],
    )
    # Actual traffic never enters an exercise: the broker refuses, the CLI says why.
    actual = await ssr(
        capsys, *base, "send", "--actor", "solna", "--incident", "ovning-elavbrott",
        "--type", "situation_report", "--label", "INTERN", "--text", "skarpt",
    )  # fmt: skip
    assert actual.code == EXIT_CHECK_FAILED
    assert "incident_status_mismatch" in actual.one_error_line()
    sent = await ssr(
        capsys, *base, "send", "--actor", "solna", "--incident", "ovning-elavbrott",
        "--type", "situation_report", "--status", "exercise", "--label", "INTERN",
        "--text", "ÖVNING: 300 hushåll utan ström",
    )  # fmt: skip
    assert sent.code == EXIT_OK, sent.err
    argv = [*base, "situation", "ovning-elavbrott", "--actor", "stockholm", "--wait", "5s"]
    await until(capsys, argv, lambda p: len(p["current"]) == 1, "solna's exercise report")
    human = await ssr(capsys, *argv)
    assert human.out.startswith("EXERCISE: lägesbild"), human.out
    assert "current EXERCISE" in human.out

    # A request with a deadline: overdue once it passes without an answer.
    asked = await json_of(
        capsys, *base, "request", "--actor", "stockholm", "--incident", "ovning-elavbrott",
        "--to", "solna", "--status", "exercise", "--answer-by", "2s",
        "--text", "Hur många hushåll saknar ström?",
    )  # fmt: skip
    assert asked["state"] == "accepted"
    assert asked["deadline"] is not None
    request_id = asked["message_id"]
    listed = await until(
        capsys,
        [
            *base,
            "requests",
            "--actor",
            "stockholm",
            "--incident",
            "ovning-elavbrott",
            "--wait",
            "0",
        ],
        lambda out: any(r["overdue"] for r in out["requests"]),
        "the request to become overdue",
    )
    [record] = listed["requests"]
    assert (record["message_id"], record["overdue"], record["answers"]) == (
        request_id,
        ["solna"],
        {},
    )
    shown = await ssr(capsys, *base, "requests", "--actor", "stockholm")
    assert shown.code == EXIT_OK, shown.err
    assert "OVERDUE: solna" in shown.out
    assert "0/1" in shown.out

    # Press lines: Stockholm drafts, the lead (Nacka) approves; only then is it public.
    drafted = await json_of(
        capsys, *base, "press", "draft", "ovning-elavbrott", "--actor", "stockholm",
        "--text", "ÖVNING: Elavbrott i Solna, arbete pågår.",
    )  # fmt: skip
    draft_id = drafted["draft_id"]
    # Stockholm owns the incident and holds its own draft, but is not the lead.
    not_lead = await ssr(capsys, *base, "press", "approve", draft_id, "--actor", "stockholm")
    assert not_lead.code == EXIT_CHECK_FAILED
    assert "press_approval_not_lead" in not_lead.one_error_line()
    # Solna never got the draft (it goes to the communicators and the lead).
    unknown = [*base, "press", "approve", draft_id, "--actor", "solna", "--wait", "0"]
    not_held = await ssr(capsys, *unknown)
    assert not_held.code == EXIT_USAGE
    assert "press_draft_unknown" in not_held.one_error_line()
    approve = [*base, "press", "approve", draft_id, "--actor", "nacka", "--text"]
    approved = await _approve_when_held(capsys, [*approve, "ÖVNING: Elavbrott i Solna."])
    assert (approved["label"]["classification"], approved["label"]["tlp"]) == (
        "OFFENTLIG",
        "CLEAR",
    )
    lines = await until(
        capsys,
        [*base, "press", "list", "ovning-elavbrott", "--actor", "stockholm", "--wait", "5s"],
        lambda out: [p["state"] for p in out["press_lines"]] == ["approved"],
        "the approval to reach stockholm",
    )
    [line] = lines["press_lines"]
    assert (line["draft_id"], line["approved_by"]) == (draft_id, "nacka")
    assert line["approved_text"] == "ÖVNING: Elavbrott i Solna."
    listing = await ssr(capsys, *base, "press", "list", "ovning-elavbrott", "--actor", "stockholm")
    assert f"{draft_id} EXERCISE  APPROVED by nacka" in listing.out


async def _approve_when_held(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    """``press approve`` as the lead, retried (bounded) until its client holds the draft."""
    deadline = time.monotonic() + WAIT
    while True:
        result = await ssr(capsys, "--json", *argv)
        if result.code == EXIT_OK:
            output: dict = json.loads(result.out.splitlines()[-1])
            return output
        assert time.monotonic() < deadline, result.err
        await asyncio.sleep(0.3)


async def test_export_and_import_a_bundle(demo_dir: Path, capsys, tmp_path: Path) -> None:
    base = ["--demo-dir", str(demo_dir)]
    # SOS Alarm's desk is online once (it caches the directory), then cut off.
    primed = await ssr(capsys, *base, "requests", "--actor", "sos-alarm")
    assert primed.code == EXIT_OK, primed.err
    activated = await json_of(
        capsys, *base, "activate", "storm-bundle", "--type", "storm", "--actor", LANSSTYRELSEN,
    )  # fmt: skip
    report = await json_of(
        capsys, *base, "send", "--actor", "nacka", "--incident", "storm-bundle",
        "--type", "situation_report", "--label", "INTERN", "--tlp", "GREEN",
        "--text", "Lägesbild: Saltsjöbanan stängd",
    )  # fmt: skip

    # Nacka exports what it holds of the incident.
    bundle = tmp_path / "storm.bundle"
    argv = [*base, "situation", "storm-bundle", "--actor", "nacka", "--wait", "5s"]
    await until(capsys, argv, lambda p: p["missing"] == [], "nacka to hold the activation")
    exported = await json_of(
        capsys, *base, "export", "--actor", "nacka", "--incident", "storm-bundle",
        "--out", str(bundle),
    )  # fmt: skip
    assert exported["items"] >= 2
    assert bundle.stat().st_mode & 0o777 == 0o600
    again = await ssr(
        capsys, *base, "export", "--actor", "nacka", "--incident", "storm-bundle",
        "--out", str(bundle),
    )  # fmt: skip
    assert again.code == EXIT_USAGE
    assert "exists" in again.one_error_line()

    # SOS Alarm imports it without a network: both messages are admitted, and are
    # duplicates the second time.
    offline = [*base, "import", "--actor", "sos-alarm", "--server", dead_url(), "--timeout", "1"]
    offline.append(str(bundle))
    first = await json_of(capsys, *offline)
    assert (first["admitted"], first["refused"]) == (2, 0)
    second = await json_of(capsys, *offline)
    assert (second["admitted"], second["duplicates"]) == (0, 2)
    human = await ssr(capsys, *offline)
    assert human.code == EXIT_OK, human.err
    assert "0 admitted" in human.out
    assert "2 already held" in human.out

    # Back online: the messages come once, from the bundle, not again from NATS.
    inbox = await ssr(capsys, "--json", *base, "inbox", "--actor", "sos-alarm", "--wait", "3s")
    assert inbox.code == EXIT_OK, inbox.err
    ids = [json.loads(line)["id"] for line in inbox.out.splitlines()]
    assert sorted(ids) == sorted([activated["message_id"], report["message_id"]])
    inbox = await ssr(capsys, "--json", *base, "inbox", "--actor", "sos-alarm", "--wait", "2s")
    assert inbox.out == ""

    # Solna takes no part: nothing in the bundle is for it.
    outsider = await json_of(capsys, *base, "import", "--actor", "solna", str(bundle))
    assert (outsider["admitted"], outsider["not_for_me"]) == (0, 2)

    # A changed byte: the exporter's signature no longer verifies; nothing is admitted.
    raw = bytearray(bundle.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    tampered = tmp_path / "tampered.bundle"
    tampered.write_bytes(bytes(raw))
    refused = await ssr(capsys, *base, "import", "--actor", "polisen-stockholm", str(tampered))
    assert refused.code == EXIT_CHECK_FAILED
    line = refused.one_error_line()
    assert "bundle_bad_signature" in line
    assert refused.out == ""

    garbage = tmp_path / "garbage.bundle"
    garbage.write_bytes(b"not a bundle at all\n" * 10)
    refused = await ssr(capsys, *base, "import", "--actor", "polisen-stockholm", str(garbage))
    assert refused.code == EXIT_CHECK_FAILED
    assert "bundle_malformed" in refused.one_error_line()

    # The police, a participant, still gets both from the genuine bundle.
    police = await json_of(capsys, *base, "import", "--actor", "polisen-stockholm", str(bundle))
    assert police["refused"] == 0
    assert police["admitted"] + police["duplicates"] == 2


# --- usage errors: exit 2 before anything connects ----------------------------------------------


@pytest.fixture
def offline_dir(tmp_path: Path, live_region: DemoRegion) -> Path:
    folder = tmp_path / "data"
    write_data_dir(folder, live_region, POLICY)
    (folder / "nats.url").write_text(dead_url() + "\n", encoding="ascii")
    with (folder / "huge.bundle").open("wb") as handle:
        handle.truncate(MAX_BUNDLE_FILE_BYTES + 1)  # sparse: nothing is written
    return folder


ACT = ["activate", "storm-x", "--actor", LANSSTYRELSEN]
REQ = ["request", "--actor", "nacka", "--to", "solna", "--text", "q?"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([*ACT, "--type", "meteor"], "not in the policy's catalogue of incident types"),
        ([*ACT, "--type", "storm", "--tlp", "purple"], "--tlp"),
        ([*ACT, "--type", "storm", "--label", "HEMLIGT"], "ladder"),
        ([*ACT, "--type", "storm", "--priority", "urgent"], "--priority"),
        ([*ACT, "--type", "storm", "--lead", "Nacka Kommun"], "--lead"),
        (["activate", "Storm X!", "--type", "storm", "--actor", "nacka"], "incident 'Storm X!'"),
        ([*REQ, "--answer-by", "5 weeks"], "--answer-by '5 weeks'"),
        ([*REQ, "--answer-by", "31d"], "at most"),
        ([*REQ, "--answer-by", "2020-01-01T10:00"], "is in the past"),
        ([*REQ, "--answer-by", "2h", "--expires-in", "1h"], "at most 3600 seconds"),
        (["request", "--actor", "nacka", "--answer-by", "1h", "--text", "q"], "no addressees"),
        (["press", "approve", "not-an-id", "--actor", "nacka"], "32 hex digits"),
        (["press", "draft", "storm-x", "--actor", "nacka", "--text", " "], "--text is empty"),
        (["import", "--actor", "nacka", "{data}/missing.bundle"], "No such file"),
        (["import", "--actor", "nacka", "{data}"], "not a file"),
        (["import", "--actor", "nacka", "{data}/huge.bundle"], "larger than"),
        (["export", "--actor", "nacka", "--out", "{data}/no/such/dir/x.bundle"], "does not exist"),
        (["export", "--actor", "nacka", "--out", "{data}/policy.toml"], "exists"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    offline_dir: Path, capsys, argv: list[str], expected: str
) -> None:
    argv = [arg.replace("{data}", str(offline_dir)) for arg in argv]
    result: Result = run(capsys, "--demo-dir", str(offline_dir), *argv)
    assert result.code == EXIT_USAGE, result
    assert expected in result.one_error_line()
    assert result.out == ""


def test_any_type_without_a_catalogue_but_then_addressees_are_needed(
    tmp_path: Path, live_region: DemoRegion, capsys
) -> None:
    folder = tmp_path / "data"
    write_data_dir(folder, live_region, 'format = 1\nid = "ssr"\nversion = 1\n')
    (folder / "nats.url").write_text(dead_url() + "\n", encoding="ascii")
    result = run(capsys, "--demo-dir", str(folder), *ACT, "--type", "meteor")
    assert result.code == EXIT_USAGE
    assert "has no template in the policy; give --to ACTOR or --group GROUP" in (
        result.one_error_line()
    )


def test_the_answer_by_parser() -> None:
    from datetime import datetime, timedelta

    from clients.cli import CliError
    from clients.cli_crisis import _answer_by

    assert _answer_by("30m", 3600) == timedelta(minutes=30)
    soon = (datetime.now() + timedelta(minutes=5)).replace(microsecond=0)
    when = _answer_by(soon.isoformat(), 3600)
    assert isinstance(when, datetime)
    assert when.tzinfo is not None  # a time without a zone is local time
    assert when == soon.astimezone()
    for bad in ("", "soon", "2026-13-40T25:00", "-5m", "2h"):
        with pytest.raises(CliError):
            _answer_by(bad, 3600)
