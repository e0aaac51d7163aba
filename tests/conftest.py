"""Shared fixtures: a deterministic 37-actor demo region and helpers to build envelopes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from broker.core import (
    Label,
    MessageType,
    Policy,
    RecipientKey,
    Tlp,
    build_envelope,
)
from broker.core.crypto import seeded_random
from broker.demo import DemoRegion, demo_region

NOW = 1_790_000_000_000  # 2026-09-21T14:13:20Z, a fixed "now" in epoch milliseconds
HOUR = 3_600_000


@pytest.fixture(scope="session")
def region() -> DemoRegion:
    """The demo region, built once per test session from a fixed seed."""
    return demo_region(now=NOW, rand=seeded_random(b"tests-region"))


@pytest.fixture
def policy() -> Policy:
    return Policy()


@pytest.fixture
def label() -> Label:
    return Label(policy="ssr", classification="SEKRETESS", tlp=Tlp.AMBER, legal="OSL 18:13")


EnvelopeFactory = Callable[..., bytes]


@pytest.fixture
def make_envelope(region: DemoRegion, label: Label) -> EnvelopeFactory:
    """Build an envelope from ``sender`` to ``to`` with sensible defaults; any build_envelope
    keyword can be overridden."""

    def make(
        sender: str = "nacka",
        to: Sequence[str] = ("polisen-stockholm", "sos-alarm", "stockholm"),
        **overrides: Any,
    ) -> bytes:
        directory = region.directory
        keys = [RecipientKey.of(directory.actor(a), NOW) for a in to]  # type: ignore[arg-type]
        args: dict[str, Any] = {
            "sender": region.identities[sender],
            "recipients": keys,
            "label": label,
            "message_type": MessageType.SITUATION_REPORT,
            "payload": b'{"text": "Storm warning for the archipelago"}',
            "created": NOW,
            "expires": NOW + HOUR,
        }
        args.update(overrides)
        return build_envelope(**args)

    return make


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the acceptance scenarios' figures (tests/acceptance.py) after the run."""
    from . import acceptance

    lines = acceptance.summary_lines()
    if not lines:
        return
    acceptance.write_artifact()
    terminalreporter.section("acceptance figures")
    for line in lines:
        terminalreporter.write_line(line)
