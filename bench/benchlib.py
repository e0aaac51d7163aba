"""Small helpers shared by ``bench/run.py`` and its worker processes (``bench/workers.py``).

No broker or client imports here: the workers import only what their role needs.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

PAYLOAD_BYTES = 1024  # the plaintext size every scenario uses
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Payload layout for the scenarios that measure latency or tell phases apart:
# one phase byte, the sender's time.time_ns() as 8 bytes big-endian, padding to 1 KiB.
HEAD_BYTES = 9


def now_ns() -> int:
    return time.time_ns()


def stamped_payload(phase: bytes, at_ns: int | None = None) -> bytes:
    """A 1 KiB payload carrying ``phase`` (one byte) and the send time."""
    assert len(phase) == 1
    at = now_ns() if at_ns is None else at_ns
    head = phase + at.to_bytes(8, "big")
    return head + bytes(PAYLOAD_BYTES - HEAD_BYTES)


def read_stamp(payload: bytes) -> tuple[bytes, int]:
    """The phase byte and send time of a ``stamped_payload``."""
    return payload[:1], int.from_bytes(payload[1:HEAD_BYTES], "big")


def emit(**fields: Any) -> None:
    """One JSON line on stdout for the runner (workers speak only this way)."""
    sys.stdout.write(json.dumps(fields, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    # After the command: state is fields[0]; utime and stime are fields 14 and 15 of the line.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of a process in KiB."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(rest.split()[0])
    except OSError:
        pass
    return found


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    if len(ordered) == 1:
        return float(ordered[0])
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (pos - low))


def summary_ms(samples_us: Sequence[float]) -> dict[str, float | int]:
    """Count, p50, p90, p99, max and mean of latency samples given in microseconds, in ms."""
    if not samples_us:
        return {"count": 0}
    return {
        "count": len(samples_us),
        "p50_ms": round(percentile(samples_us, 50) / 1000, 3),
        "p90_ms": round(percentile(samples_us, 90) / 1000, 3),
        "p99_ms": round(percentile(samples_us, 99) / 1000, 3),
        "max_ms": round(max(samples_us) / 1000, 3),
        "mean_ms": round(statistics.fmean(samples_us) / 1000, 3),
    }


def slope(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares line through (xs, ys): (slope, intercept)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return math.nan, my
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return b, my - b * mx
