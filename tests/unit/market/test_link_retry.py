"""When the Market asks its Broker link again: backoff for failures, soon for a Broker that
answered "not yet" (a replacement rebuilding its account), and not forever so."""

from __future__ import annotations

import random

from tradefleet.client.backoff import ReconnectPolicy
from workers.market.broker_link import LinkRetry


def retry() -> LinkRetry:
    return LinkRetry(ReconnectPolicy(0.05, 2.0, rng=random.Random(7)),
                     opening_retry_s=0.1, opening_for_s=30.0)


def test_failures_back_off_up_to_the_cap() -> None:
    r = retry()
    delays = [r.delay(float(t), opening=False) for t in range(12)]
    assert delays[0] <= 0.05
    assert max(delays) > 1.0  # it grew: 0.05 doubling, jittered in [base/2, base]
    assert all(0 < d <= 2.0 for d in delays)


def test_a_broker_that_is_not_ready_yet_is_asked_again_soon_every_time() -> None:
    r = retry()
    for _ in range(5):
        r.delay(0.0, opening=False)  # the Broker was gone a while: the backoff grew
    assert [r.delay(10 + t / 10, opening=True) for t in range(50)] == [0.1] * 50


def test_quick_retries_end_after_their_time_and_the_backoff_resumes() -> None:
    r = retry()
    assert r.delay(100.0, opening=True) == 0.1
    assert r.delay(129.9, opening=True) == 0.1
    late = r.delay(130.1, opening=True)
    assert late != 0.1 and 0 < late <= 2.0
    assert r.delay(131.0, opening=False) > 0  # a plain failure: backoff, and the clock resets
    assert r.delay(132.0, opening=True) == 0.1


def test_a_link_that_came_up_starts_the_backoff_over() -> None:
    r = retry()
    for t in range(10):
        r.delay(float(t), opening=False)
    r.connected()
    assert r.delay(20.0, opening=False) <= 0.05
