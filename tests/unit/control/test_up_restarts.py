"""`tradefleet up` restarts a component that died: back-off while it keeps dying young, and
at once again after it had been running steadily."""

from __future__ import annotations

from tradefleet.cli.up import STABLE_S, restart_delay


def test_a_crash_loop_backs_off_doubling_up_to_thirty_seconds() -> None:
    restarts, delays = 0, []
    for _ in range(8):
        delay, restarts = restart_delay(restarts, ran_for_s=1.0)
        delays.append(delay)
        restarts += 1  # what the launcher counts when it restarts the component
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_component_that_ran_steadily_is_restarted_at_once_again() -> None:
    # Six crashes in a row, then a month of uptime: the next death is not met with 30 s.
    assert restart_delay(6, ran_for_s=30 * 86400.0) == (0.5, 0)
    assert restart_delay(6, ran_for_s=STABLE_S) == (0.5, 0)
    assert restart_delay(6, ran_for_s=STABLE_S - 1) == (30.0, 6)
