"""The Kraken reconnect policy: backoff, jitter, maintenance floor and the attempt budget."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.broker.adapters.kraken.reconnect import (
    AttemptLog,
    ReconnectPolicy,
    is_maintenance_close,
    reconnect_delay,
)

POLICY = ReconnectPolicy(initial_s=1.0, max_s=60.0, multiplier=2.0, jitter=0.25)


def delay(policy: ReconnectPolicy = POLICY, **kwargs: object) -> float:
    args: dict[str, object] = {"failures": 0, "attempts": [], "now": 1000.0, "draw": 0.0}
    args.update(kwargs)
    return reconnect_delay(policy, **args)  # type: ignore[arg-type]


def test_backoff_doubles_per_failure_and_stops_at_the_cap() -> None:
    assert [delay(failures=n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert delay(failures=10_000) == 60.0


def test_jitter_only_shortens_the_wait_and_by_at_most_its_fraction() -> None:
    assert delay(failures=3, draw=0.0) == 8.0
    assert delay(failures=3, draw=0.999999) == pytest.approx(6.0, abs=1e-4)
    assert 6.0 <= delay(failures=3, draw=0.5) <= 8.0


def test_a_maintenance_close_waits_at_least_five_seconds_even_after_a_healthy_session() -> None:
    assert delay(failures=0, maintenance=True) == 5.0
    assert delay(failures=4, maintenance=True) == 16.0  # the backoff is longer already


def test_the_budget_holds_the_next_attempt_until_the_oldest_leaves_the_window() -> None:
    policy = ReconnectPolicy(initial_s=0.01, max_attempts_per_window=3, window_s=600.0)
    # three attempts in the last ten minutes: the fourth waits for the one at t=100 to expire
    assert delay(policy, attempts=[100.0, 200.0, 650.0], now=660.0) == pytest.approx(40.0, abs=0.01)
    # attempts older than the window do not count
    assert delay(policy, attempts=[10.0, 50.0, 650.0], now=660.0) == pytest.approx(0.01)


def test_maintenance_is_recognised_from_the_status_frame_or_the_close_code() -> None:
    assert is_maintenance_close(None, "maintenance")
    assert is_maintenance_close(1012, "online")
    assert is_maintenance_close(1013, None)
    assert not is_maintenance_close(1000, "online")
    assert not is_maintenance_close(None, None)


def test_the_attempt_log_keeps_only_the_window() -> None:
    attempts = AttemptLog(window_s=10.0)
    for at in (0.0, 1.0, 5.0, 12.0):
        attempts.record(at)
    assert attempts.recent(12.0) == [5.0, 12.0]
    assert attempts.recent(100.0) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_s": 0.0},
        {"initial_s": 2.0, "max_s": 1.0},
        {"multiplier": 0.5},
        {"jitter": 1.0},
        {"max_attempts_per_window": 0},
    ],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ReconnectPolicy(**kwargs)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    initial=st.floats(0.001, 2.0),
    multiplier=st.floats(1.0, 3.0),
    budget=st.integers(1, 150),
)
def test_a_storm_of_failures_never_exceeds_the_budget_in_any_window(
    seed: int, initial: float, multiplier: float, budget: int
) -> None:
    """Connections that fail at once or live for a random while, maintenance closes at
    random: whatever happens, no 600 s window holds more than the budget."""
    rng = random.Random(seed)
    policy = ReconnectPolicy(
        initial_s=initial,
        max_s=max(initial, 30.0),
        multiplier=multiplier,
        max_attempts_per_window=budget,
    )
    log = AttemptLog(policy.window_s)
    now, failures, made = 0.0, 0, []
    for _ in range(400):
        now += reconnect_delay(
            policy,
            failures=failures,
            attempts=log.recent(now),
            now=now,
            draw=rng.random(),
            maintenance=rng.random() < 0.1,
        )
        log.record(now)
        made.append(now)
        if rng.random() < 0.3:  # the connection worked for a while, then dropped
            now += rng.choice([0.0, 0.5, 30.0])
            failures = 0
        else:
            failures += 1
    start = 0
    for end, at in enumerate(made):
        while made[start] <= at - policy.window_s:
            start += 1
        assert end - start + 1 <= budget
