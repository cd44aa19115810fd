"""Spot trading-engine rate counter and the futures cost-unit limiter."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.broker.adapters.kraken.ratelimit import (
    MAX_CANCEL_COST,
    OrderRateLimiter,
    PairRateCounter,
    Tier,
    add_cost,
    amend_cost,
    batch_add_cost,
    batch_cancel_cost,
    cancel_cost,
    edit_cost,
)
from workers.broker.adapters.kraken_futures.errors import UnknownEndpoint
from workers.broker.adapters.kraken_futures.ratelimit import (
    DerivativesRateLimiter,
    endpoint_cost,
)


@pytest.mark.parametrize(
    ("age", "amend", "edit", "cancel"),
    [
        (0.0, 4, 7, 8),
        (4.99, 4, 7, 8),
        (5.0, 3, 6, 6),
        (9.9, 3, 6, 6),
        (10.0, 2, 5, 5),
        (14.9, 2, 5, 5),
        (15.0, 1, 3, 4),
        (44.9, 1, 3, 4),
        (45.0, 1, 2, 2),
        (89.9, 1, 2, 2),
        (90.0, 1, 1, 1),
        (299.9, 1, 1, 1),
        (300.0, 1, 1, 0),
    ],
)
def test_cost_table(age: float, amend: float, edit: float, cancel: float) -> None:
    assert (amend_cost(age), edit_cost(age), cancel_cost(age)) == (amend, edit, cancel)


def test_batch_costs() -> None:
    assert add_cost() == 1
    assert batch_add_cost(15) == 7.5
    assert batch_cancel_cost([1.0, 20.0, 400.0]) == 8 + 4 + 0


def test_docs_worked_example_add_amend_cancel_costs_eight() -> None:
    """Add, amend 7 s later, cancel 36 s after the amend: 1 + (1 + 2) + 4 = 8."""
    limiter = OrderRateLimiter(Tier.PRO, reserve=0)
    charged = [
        limiter.add("BTC/USD", "o1", now=0.0).cost,
        limiter.amend("BTC/USD", "o1", now=7.0).cost,
        limiter.cancel("BTC/USD", "o1", now=43.0).cost,
    ]
    assert charged == [1, 3, 4] and sum(charged) == 8


@pytest.mark.parametrize(
    ("tier", "decay", "threshold"),
    [(Tier.STARTER, 1.0, 60), (Tier.INTERMEDIATE, 2.34, 125), (Tier.PRO, 3.75, 180)],
)
def test_counter_decays_by_tier(tier: Tier, decay: float, threshold: float) -> None:
    counter = PairRateCounter(tier.value, reserve=0, now=100.0, value=50.0)
    assert tier.value.threshold == threshold
    assert counter.value(100.0) == 50.0
    assert counter.value(102.0) == pytest.approx(50.0 - 2 * decay)
    assert counter.value(100.0 + 1000.0) == 0.0  # never negative


def test_adds_are_refused_before_the_reserve_and_cancels_still_pass() -> None:
    limiter = OrderRateLimiter(Tier.STARTER, reserve=8)  # adds may reach 52 of 60
    admitted = [limiter.add("ETH/USD", f"o{i}", now=0.0) for i in range(60)]
    assert sum(a.admitted for a in admitted) == 52
    refused = admitted[52]
    assert not refused.admitted and refused.counter == 52 and refused.limit == 52
    assert refused.retry_after == pytest.approx(1.0)  # one unit decays per second
    # the reserve is there for cancels: a young order costs 8, and it goes through
    cancel = limiter.cancel("ETH/USD", "o0", now=0.0)
    assert cancel.admitted and cancel.cost == MAX_CANCEL_COST and cancel.counter == 60
    assert not cancel.exceeds_venue_limit
    # beyond the venue threshold cancels are still sent, but flagged
    over = limiter.cancel("ETH/USD", "o1", now=0.0)
    assert over.admitted and over.exceeds_venue_limit


def test_refused_add_is_not_charged_and_succeeds_after_decay() -> None:
    limiter = OrderRateLimiter(Tier.STARTER, reserve=10)
    for i in range(50):
        limiter.add("X/USD", i, now=0.0)
    assert not limiter.add("X/USD", "late", now=0.0).admitted
    assert limiter.counter("X/USD", now=0.0) == 50
    assert limiter.add("X/USD", "late", now=1.0).admitted


def test_pairs_have_independent_counters() -> None:
    limiter = OrderRateLimiter(Tier.STARTER, reserve=0)
    for i in range(60):
        limiter.add("A/USD", i, now=0.0)
    assert not limiter.add("A/USD", "x", now=0.0).admitted
    assert limiter.add("B/USD", "x", now=0.0).admitted


def test_unknown_order_is_charged_worst_case_and_sync_adopts_venue_value() -> None:
    limiter = OrderRateLimiter(Tier.INTERMEDIATE, reserve=0)
    assert limiter.cancel("A/USD", "placed-before-restart", now=0.0).cost == 8
    limiter.sync("A/USD", 100.0, now=10.0)
    assert limiter.counter("A/USD", now=11.0) == pytest.approx(100.0 - 2.34)


def test_edit_moves_the_age_to_the_replacement_order() -> None:
    limiter = OrderRateLimiter(Tier.PRO, reserve=0)
    limiter.add("A/USD", "old", now=0.0)
    assert limiter.edit("A/USD", "old", "new", now=20.0).cost == 1 + 2
    assert limiter.cancel("A/USD", "new", now=21.0).cost == 8  # the new order is 1 s old


def test_reserve_must_leave_room_below_threshold() -> None:
    with pytest.raises(ValueError):
        OrderRateLimiter(Tier.STARTER, reserve=60)
    with pytest.raises(ValueError):
        OrderRateLimiter(Tier.STARTER, reserve=-1)


actions = st.lists(
    st.tuples(
        st.sampled_from(["add", "amend", "edit", "cancel", "batch_add", "batch_cancel"]),
        st.integers(min_value=0, max_value=5),  # which order
        st.floats(min_value=0.0, max_value=3.0, allow_nan=False),  # time step
    ),
    max_size=200,
)


@settings(max_examples=150, deadline=None)
@given(
    tier=st.sampled_from(list(Tier)),
    reserve=st.integers(min_value=0, max_value=30),
    script=actions,
)
def test_never_admits_an_add_crossing_threshold_minus_reserve(
    tier: Tier, reserve: int, script: list[tuple[str, int, float]]
) -> None:
    limiter = OrderRateLimiter(tier, reserve=reserve)
    limit = tier.value.threshold - reserve
    now = 0.0
    for kind, order, step in script:
        now += step
        before = limiter.counter("P/USD", now)
        if kind == "add":
            result = limiter.add("P/USD", order, now)
        elif kind == "amend":
            result = limiter.amend("P/USD", order, now)
        elif kind == "edit":
            result = limiter.edit("P/USD", order, order + 10, now)
        elif kind == "cancel":
            result = limiter.cancel("P/USD", order, now)
        elif kind == "batch_add":
            result = limiter.batch_add("P/USD", [order, order + 20], now)
        else:
            result = limiter.batch_cancel("P/USD", [order, order + 20], now)
        after = limiter.counter("P/USD", now)
        if kind in ("cancel", "batch_cancel"):
            assert result.admitted
        if result.admitted:
            assert after == pytest.approx(before + result.cost)
            if kind not in ("cancel", "batch_cancel"):
                assert after <= limit
        else:
            assert after == before  # a refusal charges nothing
            assert before + result.cost > limit


# ---------------------------------------------------------------------------- futures


def test_futures_endpoint_costs() -> None:
    assert endpoint_cost("sendorder") == 10
    assert endpoint_cost("cancelorder") == 10
    assert endpoint_cost("batchorder", batch_size=5) == 14
    assert endpoint_cost("cancelallordersafter") == 25
    assert endpoint_cost("openpositions") == 2
    assert endpoint_cost("fills") == 2 and endpoint_cost("fills", last_fill_time=True) == 25
    with pytest.raises(UnknownEndpoint):
        endpoint_cost("withdrawal")


def test_futures_budget_is_500_per_ten_seconds() -> None:
    limiter = DerivativesRateLimiter()
    admitted = [limiter.request("sendorder", now=0.1 * i) for i in range(51)]
    assert sum(a.admitted for a in admitted) == 50
    refused = admitted[50]
    assert refused.spent == 500 and refused.retry_after == pytest.approx(10.0 - 5.0)
    assert limiter.request("sendorder", now=10.0).admitted  # the first order left the window
    assert limiter.spent(now=10.0) == 500


def test_futures_reserve_keeps_room_for_cancels() -> None:
    limiter = DerivativesRateLimiter(reserve=50)
    while limiter.request("sendorder", now=0.0).admitted:
        pass
    assert limiter.spent(0.0) == 450
    for _ in range(5):
        assert limiter.request("cancelorder", now=0.0).admitted
    assert not limiter.request("cancelorder", now=0.0).admitted  # the budget itself is full


@settings(max_examples=100, deadline=None)
@given(
    calls=st.lists(
        st.tuples(
            st.sampled_from(["sendorder", "cancelorder", "batchorder", "openorders", "fills"]),
            st.floats(min_value=0.0, max_value=2.0, allow_nan=False),
        ),
        max_size=300,
    )
)
def test_futures_limiter_never_exceeds_budget_in_any_window(calls: list[tuple[str, float]]) -> None:
    limiter = DerivativesRateLimiter()
    now = 0.0
    spent_at: list[tuple[float, int]] = []
    for endpoint, step in calls:
        now += step
        result = limiter.request(endpoint, now, batch_size=3)
        if result.admitted:
            spent_at.append((now, result.cost))
        window = sum(cost for at, cost in spent_at if at > now - 10.0)
        assert window <= 500
