"""``make bench`` keeps working: its ``--quick`` run goes through every phase.

Not a measurement (performance figures belong to ``bench/`` and are read as ratios there):
this only checks that each phase completes on a real nats-server with real broker and
client processes, that nothing is lost on the way (one broker, then two sharing the
submission consumer, then the clients with receipts), and that the JSON holds every
figure the closing notes are read from.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PHASES = (
    "raw",
    "latency_raw",
    "broker_alone",
    "brokers_scaled",
    "fan_out",
    "end_to_end",
    "latency_secure",
    "latency_secure_sustainable",
    "memory",
)


def test_the_quick_benchmark_runs_every_phase_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [
            sys.executable,
            "bench/run.py",
            "--quick",
            "--out",
            str(out),
            "--plot",
            str(tmp_path / "p.png"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["error"] is None
    assert [p for p in PHASES if p not in results] == []

    for phase in ("broker_alone", "brokers_scaled"):
        part = results[phase]
        assert part["inject"]["errors"] == 0
        assert part["deliveries_seen"] == part["deliveries_expected"] > 0, phase
        assert not part["stalled"], phase
    assert results["broker_alone"]["brokers"] == 1
    assert results["brokers_scaled"]["brokers"] == 2
    assert results["brokers_scaled"]["start_settled"]  # broker-2's start-up work was done
    assert set(results["brokers_scaled"]["cpu_seconds"]) >= {"broker", "broker-2"}

    e2e = results["end_to_end"]
    assert e2e["all_receipts"] == e2e["messages"] > 0
    assert e2e["lost_or_late"] == 0
    assert e2e["recipients_refused"] == 0
    for run_name in ("latency_secure", "latency_secure_sustainable"):
        assert results[run_name]["lost_or_late"] == 0, run_name

    judged = {row["figure"] for row in results["figures"] if row["met"] is not None}
    assert len(judged) == 6  # broker alone, end to end, two latencies, fan-out, memory
    assert results["memory"]["broker_peak_rss_mb"] > 0
