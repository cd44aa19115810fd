"""When to try a Kraken WebSocket connection again: a pure policy, no clock, no sockets.

Kraken sits behind Cloudflare, which allows about 150 connection attempts per IP in any
rolling 10 minutes and bans the IP for 10 minutes beyond that; after a maintenance close
Kraken asks clients to wait at least 5 s between attempts (PROTOCOL_NOTES §1).

:func:`reconnect_delay` combines three rules and returns the longest wait any of them asks
for:

1. exponential backoff with downward jitter, so a fleet of workers does not reconnect in
   lock-step;
2. the maintenance floor;
3. the attempt budget: given the times of recent attempts (:class:`AttemptLog`, shared by
   every connection of the process because the venue counts per IP), never start an
   attempt that would put more than ``max_attempts_per_window`` of them in one window.
   The default budget (100) leaves headroom for other processes behind the same IP.

Rule 3 alone guarantees the venue limit whatever the backoff settings.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

_MARGIN_S = 0.001

MAINTENANCE_CLOSE_CODES = frozenset({1012, 1013})
"""WebSocket close codes meaning "service restarting" / "try again later"."""


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Backoff parameters and the venue's attempt budget, in seconds."""

    initial_s: float = 1.0
    max_s: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.25
    maintenance_s: float = 5.0
    window_s: float = 600.0
    max_attempts_per_window: int = 100

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s:
            raise ValueError("need 0 < initial_s <= max_s")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if self.window_s <= 0 or self.max_attempts_per_window < 1:
            raise ValueError("the attempt budget needs a positive window and count")


def reconnect_delay(
    policy: ReconnectPolicy,
    *,
    failures: int,
    attempts: Sequence[float],
    now: float,
    draw: float,
    maintenance: bool = False,
) -> float:
    """Seconds to wait before the next connection attempt.

    ``failures`` counts consecutive failed attempts (0 right after a working connection
    dropped); ``attempts`` are the monotonic times of earlier attempts, ascending;
    ``draw`` is a uniform random number in [0, 1) (pass ``rng.random()``); ``maintenance``
    says the venue closed for maintenance. The result is never negative.
    """
    backoff = min(policy.max_s, policy.initial_s * policy.multiplier ** min(max(failures, 0), 64))
    delay = backoff * (1.0 - policy.jitter * draw)
    if maintenance:
        delay = max(delay, policy.maintenance_s)
    # Attempts strictly after (now - window) still count against the budget.
    recent = attempts[bisect_right(attempts, now - policy.window_s) :]
    excess = len(recent) - policy.max_attempts_per_window
    if excess >= 0:
        # The next attempt may start once `excess + 1` of the recent attempts left the window
        # (plus a millisecond, so clock rounding cannot land it just inside).
        delay = max(delay, recent[excess] + policy.window_s - now + _MARGIN_S)
    return max(0.0, delay)


def is_maintenance_close(close_code: int | None, system_status: str | None) -> bool:
    """True when a connection ended because the venue is restarting or in maintenance.

    ``system_status`` is the ``system`` field of the last v2 ``status`` frame received on
    the connection (``online``, ``maintenance``, ``cancel_only``, ``post_only``).
    """
    return close_code in MAINTENANCE_CLOSE_CODES or system_status == "maintenance"


class AttemptLog:
    """Monotonic times of recent connection attempts, shared by every connection to a venue.

    Keeps only what the policy's window can still see.
    """

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._times: deque[float] = deque()

    def record(self, now: float) -> None:
        """Note an attempt starting at ``now`` (monotonic seconds, non-decreasing)."""
        self._times.append(now)
        self._prune(now)

    def recent(self, now: float) -> list[float]:
        """Attempts still inside the window at ``now``, oldest first."""
        self._prune(now)
        return list(self._times)

    def _prune(self, now: float) -> None:
        horizon = now - self._window_s
        while self._times and self._times[0] <= horizon:
            self._times.popleft()
