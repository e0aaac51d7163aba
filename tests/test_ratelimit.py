"""The per-sender delivery budget (broker.core.ratelimit): a pure token bucket."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core import ratelimit
from broker.core.policy import Policy
from broker.core.ratelimit import (
    DEFAULT_SENDER_BURST_DELIVERIES,
    DEFAULT_SENDER_DELIVERIES_PER_MINUTE,
    MAX_SENDERS,
    Budget,
    SenderBudgets,
    Verdict,
)

BUDGET = Budget(per_minute=600, burst=60)  # 10 deliveries a second, 60 at once


def test_module_docstring_example() -> None:
    assert doctest.testmod(ratelimit).failed == 0


def test_defaults_match_the_policy() -> None:
    assert Policy().limits.sender_budget == Budget(
        DEFAULT_SENDER_DELIVERIES_PER_MINUTE, DEFAULT_SENDER_BURST_DELIVERIES
    )
    assert Policy().limits.max_recipients <= DEFAULT_SENDER_BURST_DELIVERIES


def test_a_new_sender_has_the_whole_burst() -> None:
    budgets = SenderBudgets()
    assert budgets.take("nacka", 60, now=1000, budget=BUDGET) == Verdict(True, 0)
    refused = budgets.take("nacka", 1, now=1000, budget=BUDGET)
    assert refused == Verdict(False, 0, 100)  # one delivery refills in 100 ms


def test_burst_then_the_rate() -> None:
    budgets = SenderBudgets()
    accepted = 0
    for now in range(0, 10_000, 10):  # 1000 attempts of one delivery, one every 10 ms
        accepted += budgets.take("nacka", 1, now=now, budget=BUDGET).allowed
    # the burst, then 10 a second for the 9.99 s after the start
    assert accepted == 60 + 99


def test_refill_is_exact_and_capped_at_the_burst() -> None:
    budgets = SenderBudgets()
    budgets.take("nacka", 60, now=0, budget=BUDGET)
    assert budgets.take("nacka", 1, now=99, budget=BUDGET).allowed is False
    assert budgets.take("nacka", 1, now=100, budget=BUDGET) == Verdict(True, 0)
    # a long pause refills to the burst and no further
    assert budgets.take("nacka", 60, now=3_600_000, budget=BUDGET) == Verdict(True, 0)
    assert budgets.take("nacka", 1, now=3_600_000, budget=BUDGET).allowed is False


def test_fractions_of_a_delivery_are_kept_across_takes() -> None:
    slow = Budget(per_minute=7, burst=64)  # 7 a minute: one every 8571.4 ms
    budgets = SenderBudgets()
    budgets.take("nacka", 64, now=0, budget=slow)
    allowed = [budgets.take("nacka", 1, now=t, budget=slow).allowed for t in range(0, 60_001, 3)]
    assert sum(allowed) == 7  # exactly per_minute in one minute, no rounding drift


def test_a_refused_take_costs_nothing_and_says_when_to_retry() -> None:
    budgets = SenderBudgets()
    budgets.take("nacka", 50, now=0, budget=BUDGET)  # 10 left
    refused = budgets.take("nacka", 37, now=0, budget=BUDGET)
    assert refused == Verdict(False, 10, 2700)  # 27 more at 10 a second
    for _ in range(100):  # a flood of refusals does not push the retry further off
        budgets.take("nacka", 37, now=0, budget=BUDGET)
    assert budgets.take("nacka", 37, now=2699, budget=BUDGET).allowed is False
    assert budgets.take("nacka", 37, now=2700, budget=BUDGET) == Verdict(True, 0)


def test_a_cost_above_the_burst_never_fits() -> None:
    budgets = SenderBudgets()
    assert budgets.take("nacka", 61, now=0, budget=BUDGET) == Verdict(False, 60, None)
    assert len(budgets) == 1


def test_senders_are_isolated() -> None:
    budgets = SenderBudgets()
    budgets.take("flooder", 60, now=0, budget=BUDGET)
    for now in range(100):
        assert budgets.take("flooder", 37, now=now, budget=BUDGET).allowed is False
    assert budgets.take("flooder", 1, now=99, budget=BUDGET).allowed is False
    assert budgets.take("nacka", 60, now=99, budget=BUDGET) == Verdict(True, 0)
    assert budgets.take("solna", 37, now=99, budget=BUDGET) == Verdict(True, 23)


def test_time_going_backwards_neither_refills_nor_drains() -> None:
    budgets = SenderBudgets()
    budgets.take("nacka", 60, now=10_000, budget=BUDGET)
    # a wall-clock step back by an hour: nothing refills, what is left can still be used
    assert budgets.take("nacka", 1, now=10_000 - 3_600_000, budget=BUDGET).allowed is False
    assert budgets.take("nacka", 1, now=9_000, budget=BUDGET).allowed is False
    # refilling resumes from the latest reading, not from the earlier one
    assert budgets.take("nacka", 1, now=10_099, budget=BUDGET).allowed is False
    assert budgets.take("nacka", 1, now=10_100, budget=BUDGET).allowed is True


def test_a_smaller_budget_applies_at_once() -> None:
    budgets = SenderBudgets()
    budgets.take("nacka", 1, now=0, budget=BUDGET)  # 59 left
    smaller = Budget(per_minute=60, burst=10)
    assert budgets.take("nacka", 11, now=0, budget=smaller) == Verdict(False, 10, None)
    assert budgets.take("nacka", 10, now=0, budget=smaller) == Verdict(True, 0)
    assert budgets.take("nacka", 1, now=999, budget=smaller).allowed is False
    assert budgets.take("nacka", 1, now=1000, budget=smaller).allowed is True


def test_state_is_bounded_by_max_senders() -> None:
    budgets = SenderBudgets(max_senders=3)
    for i in range(100):  # idle senders: their buckets are full again and forgotten
        budgets.take(f"actor-{i}", 1, now=i * 60_000, budget=BUDGET)
        assert len(budgets) <= 3
    assert MAX_SENDERS >= 1000  # as many as a directory may name


def test_a_drained_bucket_outlives_full_ones_when_room_is_made() -> None:
    budgets = SenderBudgets(max_senders=2)
    budgets.take("flooder", 60, now=0, budget=BUDGET)  # drained
    budgets.take("idle", 1, now=0, budget=BUDGET)  # full again 100 ms later
    budgets.take("newcomer", 1, now=200, budget=BUDGET)
    assert len(budgets) == 2
    # the flooder's empty bucket was kept: it cannot reset its budget by others' traffic
    assert budgets.take("flooder", 60, now=200, budget=BUDGET).allowed is False


def test_with_no_full_bucket_the_fullest_is_forgotten() -> None:
    budgets = SenderBudgets(max_senders=2)
    budgets.take("a", 60, now=0, budget=BUDGET)  # 0 left
    budgets.take("b", 30, now=0, budget=BUDGET)  # 30 left: loses least if forgotten
    budgets.take("c", 1, now=0, budget=BUDGET)
    assert len(budgets) == 2
    assert budgets.take("a", 1, now=0, budget=BUDGET).allowed is False
    assert budgets.take("b", 60, now=0, budget=BUDGET).allowed is True  # a fresh bucket


@pytest.mark.parametrize(
    ("per_minute", "burst"), [(0, 10), (10, 0), (-1, 10)], ids=["rate0", "burst0", "negative"]
)
def test_a_budget_must_be_positive(per_minute: int, burst: int) -> None:
    with pytest.raises(ValueError, match="budget"):
        Budget(per_minute, burst)


def test_a_take_costs_at_least_one_and_max_senders_is_positive() -> None:
    with pytest.raises(ValueError, match="at least one"):
        SenderBudgets().take("nacka", 0, now=0, budget=BUDGET)
    with pytest.raises(ValueError, match="max_senders"):
        SenderBudgets(max_senders=0)


@settings(max_examples=200, deadline=None)
@given(
    per_minute=st.integers(1, 1_000_000),
    burst=st.integers(1, 100_000),
    steps=st.lists(
        st.tuples(st.integers(-5_000, 60_000), st.integers(1, 200), st.sampled_from("abc")),
        max_size=60,
    ),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    per_minute: int, burst: int, steps: list[tuple[int, int, str]]
) -> None:
    budget = Budget(per_minute, burst)
    budgets = SenderBudgets(max_senders=3)
    now = earliest = latest = 0
    granted: dict[str, int] = {}
    for step, cost, sender in steps:
        now += step  # sometimes backwards
        earliest, latest = min(earliest, now), max(latest, now)
        verdict = budgets.take(sender, cost, now=now, budget=budget)
        if verdict.allowed:
            granted[sender] = granted.get(sender, 0) + cost
        assert verdict.available <= burst
        assert len(budgets) <= 3
        for total in granted.values():
            assert total * 60_000 <= burst * 60_000 + per_minute * (latest - earliest)
