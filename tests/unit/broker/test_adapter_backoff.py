"""The adapters' reconnect backoff (pure): grows to a cap, jittered below the base so that
workers dropped together do not stampede the venue, exact without jitter, never negative or
above the cap, and refuses settings that make no sense."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.broker.adapters.backoff import ReconnectPolicy


@given(attempt=st.integers(min_value=0, max_value=10_000),
       seed=st.integers(min_value=0, max_value=2**32))
def test_delays_stay_between_half_the_base_and_the_base(attempt: int, seed: int) -> None:
    policy = ReconnectPolicy(initial_s=0.25, max_s=30.0, jitter=0.5)
    delay = policy.delay(attempt, random.Random(seed))
    base = min(30.0, 0.25 * 2.0**attempt) if attempt < 64 else 30.0
    assert base * 0.5 <= delay <= base


def test_delays_grow_to_the_cap_and_are_spread_by_the_jitter() -> None:
    policy = ReconnectPolicy(initial_s=0.1, max_s=2.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(3)
    for attempt, base in enumerate([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]):
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(base * 0.5 <= d <= base for d in delays)
        assert max(delays) - min(delays) > base * 0.3


def test_without_jitter_the_delays_are_exact() -> None:
    steady = ReconnectPolicy(initial_s=0.1, max_s=1.0, jitter=0.0)
    assert [steady.delay(n, random.Random(0)) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0,
                                                                     1.0]


@pytest.mark.parametrize("bad", [{"initial_s": 0}, {"initial_s": 2, "max_s": 1},
                                 {"multiplier": 0.5}, {"jitter": 1.5}])
def test_nonsense_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ReconnectPolicy(**bad)
    with pytest.raises(ValueError):
        ReconnectPolicy().delay(-1, random.Random())
