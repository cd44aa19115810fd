"""Reconnection backoff of the SDK, the Market's Broker link and the infra manager's status
pipes: grows, is capped, jittered, never zero, and resets."""

from __future__ import annotations

import random

from tradefleet.client.backoff import ReconnectPolicy


def test_delays_grow_then_stay_capped() -> None:
    policy = ReconnectPolicy(initial_s=0.1, maximum_s=2.0, rng=random.Random(7))
    delays = [policy.next_delay() for _ in range(12)]
    assert all(0.05 <= d <= 2.0 for d in delays)
    assert delays[0] <= 0.1
    assert all(1.0 <= d <= 2.0 for d in delays[6:])  # base reached the cap


def test_reset_starts_again_from_the_initial_delay() -> None:
    policy = ReconnectPolicy(initial_s=0.1, maximum_s=5.0, rng=random.Random(1))
    for _ in range(10):
        policy.next_delay()
    policy.reset()
    assert policy.next_delay() <= 0.1


def test_two_retriers_do_not_retry_in_lockstep() -> None:
    a = ReconnectPolicy(rng=random.Random(1))
    b = ReconnectPolicy(rng=random.Random(2))
    assert [a.next_delay() for _ in range(5)] != [b.next_delay() for _ in range(5)]


def test_huge_failure_counts_do_not_overflow() -> None:
    policy = ReconnectPolicy(initial_s=0.1, maximum_s=5.0, failures=10_000)
    assert 2.5 <= policy.next_delay() <= 5.0
