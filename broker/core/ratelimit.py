"""Per-sender delivery budgets: token buckets, with no clock and no I/O.

The broker limits what a fan-out flood costs, so it counts *deliveries*, not
submissions: one envelope to 37 actors costs 37. Each sender has a bucket that
holds at most ``burst`` deliveries and refills continuously at ``per_minute``
deliveries a minute (the policy's ``[limits]`` ``sender_burst_deliveries`` and
``sender_deliveries_per_minute``). A submission that costs more than the bucket
holds is refused whole and takes nothing: a message never reaches only some of its
recipients, and a refused flood does not push the sender's next message further off.

Rules, in the order :meth:`SenderBudgets.take` applies them:

- A sender seen for the first time starts with a full bucket.
- Time is passed in (milliseconds). Time that goes backwards (a wall-clock step)
  refills nothing and drains nothing; the bucket refills again once time passes its
  latest reading.
- The level is kept in exact integers, in units of 1/60 000 of a delivery: a budget
  of ``per_minute`` deliveries per 60 000 ms then refills ``per_minute`` units a
  millisecond, with no rounding drift however often it is read.
- A smaller budget (a new policy) applies at once: a level above the new ``burst``
  is cut down to it at the next take.

Memory is bounded: one bucket per sender, and only senders the directory verified
ever get one (the router asks after the envelope verified). A bucket that has
refilled to ``burst`` is the same as none, so when ``max_senders`` buckets are held
the full ones are forgotten first; if none is full, the fullest is (the sender that
loses least).

The budgets are one process's: with N broker processes sharing the work, a sender
may get up to N times the budget through the whole system.

    >>> budgets = SenderBudgets()
    >>> budget = Budget(per_minute=600, burst=60)
    >>> budgets.take("nacka", 37, now=0, budget=budget).allowed
    True
    >>> verdict = budgets.take("nacka", 37, now=0, budget=budget)
    >>> (verdict.allowed, verdict.available, verdict.retry_after_ms)
    (False, 23, 1400)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .limits import MAX_DIRECTORY_ACTORS

__all__ = [
    "DEFAULT_SENDER_BURST_DELIVERIES",
    "DEFAULT_SENDER_DELIVERIES_PER_MINUTE",
    "MAX_SENDER_BURST_DELIVERIES",
    "MAX_SENDER_DELIVERIES_PER_MINUTE",
    "Budget",
    "SenderBudgets",
    "Verdict",
]

DEFAULT_SENDER_DELIVERIES_PER_MINUTE: Final = 6000  # 100 a second: ~160 region-wide messages
DEFAULT_SENDER_BURST_DELIVERIES: Final = 600  # ~16 messages to all 37 actors at once
MAX_SENDER_DELIVERIES_PER_MINUTE: Final = 1_000_000  # hard ceilings for the policy file
MAX_SENDER_BURST_DELIVERIES: Final = 100_000
MAX_SENDERS: Final = MAX_DIRECTORY_ACTORS  # buckets held: no directory names more senders

_MINUTE_MS: Final = 60_000  # one delivery is this many units of a bucket's level


@dataclass(frozen=True)
class Budget:
    """``burst`` deliveries at once, refilled at ``per_minute`` deliveries a minute."""

    per_minute: int
    burst: int

    def __post_init__(self) -> None:
        if self.per_minute < 1 or self.burst < 1:
            raise ValueError("a budget needs per_minute >= 1 and burst >= 1")

    @property
    def capacity(self) -> int:
        return self.burst * _MINUTE_MS


@dataclass(frozen=True)
class Verdict:
    """The outcome of one :meth:`SenderBudgets.take`.

    ``available`` is how many whole deliveries the sender has left (after this take, if
    allowed); ``retry_after_ms`` is how long until a refused cost would fit (0 when
    allowed; ``None`` when it never fits: the cost exceeds ``burst``).
    """

    allowed: bool
    available: int
    retry_after_ms: int | None = 0


@dataclass
class _Bucket:
    level: int  # units of 1/60 000 delivery
    at: int  # the latest time seen, ms


class SenderBudgets:
    """One token bucket per sender id; see the module docstring for the rules."""

    def __init__(self, *, max_senders: int = MAX_SENDERS) -> None:
        if max_senders < 1:
            raise ValueError("max_senders must be at least 1")
        self.max_senders = max_senders
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        """How many senders' buckets are held."""
        return len(self._buckets)

    def take(self, sender: str, cost: int, *, now: int, budget: Budget) -> Verdict:
        """Take ``cost`` deliveries from ``sender``'s bucket at ``now`` (ms) if they fit."""
        if cost < 1:
            raise ValueError("a submission costs at least one delivery")
        bucket = self._buckets.get(sender)
        if bucket is None:
            self._make_room(now, budget)
            bucket = self._buckets[sender] = _Bucket(budget.capacity, now)
        else:
            self._refill(bucket, now, budget)
        units = cost * _MINUTE_MS
        if units <= bucket.level:
            bucket.level -= units
            return Verdict(True, bucket.level // _MINUTE_MS)
        available = bucket.level // _MINUTE_MS
        if units > budget.capacity:
            return Verdict(False, available, None)
        wait = -(-(units - bucket.level) // budget.per_minute)  # ceiling division
        return Verdict(False, available, wait)

    @staticmethod
    def _refill(bucket: _Bucket, now: int, budget: Budget) -> None:
        elapsed = max(0, now - bucket.at)
        bucket.level = min(budget.capacity, bucket.level + elapsed * budget.per_minute)
        bucket.at = max(bucket.at, now)

    def _make_room(self, now: int, budget: Budget) -> None:
        if len(self._buckets) < self.max_senders:
            return
        for bucket in self._buckets.values():
            self._refill(bucket, now, budget)
        full = [s for s, b in self._buckets.items() if b.level >= budget.capacity]
        for sender in full:
            del self._buckets[sender]
        if len(self._buckets) >= self.max_senders:
            fullest = max(self._buckets, key=lambda s: self._buckets[s].level)
            del self._buckets[fullest]
