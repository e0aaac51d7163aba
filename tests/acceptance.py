"""Figures of the acceptance scenarios (issue 9): each scenario records its counts here and
fails on any loss, duplicate, unexpected or unauthorised delivery; the run prints every
scenario's figures in one table at the end (see ``pytest_terminal_summary`` in conftest)
and writes them to ``tests/artifacts/acceptance.json``.

The vocabulary is Jepsen's:

- **lost**: acknowledged to the sender, never delivered;
- **unexpected**: delivered, never sent;
- **duplicate**: delivered to the application twice;
- **unauthorised**: delivered to a recipient the policy should refuse.

    from .acceptance import record
    record("replay", injected=1000, accepted=0, second_receipts=0)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIGURES: dict[str, dict[str, Any]] = {}
ARTIFACT = Path(__file__).parent / "artifacts" / "acceptance.json"


def record(scenario: str, **figures: Any) -> None:
    """Keep ``figures`` (numbers, or short strings) of one scenario for the summary."""
    FIGURES.setdefault(scenario, {}).update(figures)


def summary_lines() -> list[str]:
    lines = []
    for scenario in sorted(FIGURES):
        shown = ", ".join(f"{key}={_fmt(value)}" for key, value in FIGURES[scenario].items())
        lines.append(f"{scenario}: {shown}")
    return lines


def write_artifact() -> None:
    if not FIGURES:
        return
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
