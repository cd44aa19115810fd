"""Kraken Futures REST cost-unit limiter for ``/derivatives`` endpoints (PROTOCOL_NOTES §8).

Kraken lets a key spend up to 500 cost units every 10 seconds on ``/derivatives``
endpoints; over budget it answers ``apiLimitExceeded``. Costs per call:

==========================  ===================================
sendorder, editorder,       10
cancelorder
batchorder                  9 + number of orders in the batch
cancelallorders,            25
cancelallordersafter
accounts, openpositions,    2
openorders
fills                       2, or 25 with ``lastFillTime``
==========================  ===================================

The limiter keeps a sliding 10-second log of what was spent. That is never looser than
Kraken's budget whether the venue refills continuously or per window: anything this
limiter admits, a 500-unit bucket refilled at 50 units/s would admit too.

Like the spot counter, it can hold back ``reserve`` units for cancels: other calls are
refused locally when they would leave less than ``reserve`` free; cancels are refused
only when they do not fit the budget at all (the venue would reject them).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from workers.broker.adapters.kraken_futures.errors import UnknownEndpoint

DERIVATIVES_BUDGET = 500
"""Cost units a key may spend per window on ``/derivatives`` endpoints."""

DERIVATIVES_WINDOW_SECONDS = 10.0
"""Length of the budget window."""

ENDPOINT_COSTS: dict[str, int] = {
    "sendorder": 10,
    "editorder": 10,
    "cancelorder": 10,
    "batchorder": 9,
    "cancelallorders": 25,
    "cancelallordersafter": 25,
    "accounts": 2,
    "openpositions": 2,
    "openorders": 2,
    "fills": 2,
}
"""Documented cost per endpoint (``batchorder`` adds its batch size, ``fills`` may cost 25)."""

_PROTECTIVE = frozenset({"cancelorder", "cancelallorders", "cancelallordersafter"})


def endpoint_cost(endpoint: str, *, batch_size: int = 0, last_fill_time: bool = False) -> int:
    """Cost of one call to ``endpoint`` (its last path segment, e.g. ``"sendorder"``).

    Raises :class:`UnknownEndpoint` for endpoints without a documented cost.
    """
    try:
        cost = ENDPOINT_COSTS[endpoint]
    except KeyError:
        raise UnknownEndpoint(endpoint) from None
    if endpoint == "batchorder":
        return cost + batch_size
    if endpoint == "fills" and last_fill_time:
        return 25
    return cost


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a call may be sent now. When refused, wait ``retry_after`` seconds."""

    admitted: bool
    endpoint: str
    cost: int
    spent: int
    limit: int
    retry_after: float = 0.0


class DerivativesRateLimiter:
    """Sliding-window budget for one API key's ``/derivatives`` calls.

    Time is passed in (monotonic seconds) so the limiter is pure and testable.
    """

    def __init__(
        self,
        *,
        budget: int = DERIVATIVES_BUDGET,
        window: float = DERIVATIVES_WINDOW_SECONDS,
        reserve: int = 0,
    ) -> None:
        if budget <= 0 or window <= 0:
            raise ValueError("budget and window must be positive")
        if not 0 <= reserve < budget:
            raise ValueError("reserve must be >= 0 and below the budget")
        self.budget = budget
        self.window = window
        self.reserve = reserve
        self._log: deque[tuple[float, int]] = deque()
        self._spent = 0

    def _expire(self, now: float) -> None:
        log = self._log
        horizon = now - self.window
        while log and log[0][0] <= horizon:
            self._spent -= log.popleft()[1]

    def spent(self, now: float) -> int:
        """Units spent within the window ending at ``now``."""
        self._expire(now)
        return self._spent

    def request(
        self, endpoint: str, now: float, *, batch_size: int = 0, last_fill_time: bool = False
    ) -> Admission:
        """Ask to call ``endpoint`` now; on admission its cost is recorded."""
        cost = endpoint_cost(endpoint, batch_size=batch_size, last_fill_time=last_fill_time)
        self._expire(now)
        limit = self.budget if endpoint in _PROTECTIVE else self.budget - self.reserve
        if self._spent + cost > limit:
            return Admission(
                False, endpoint, cost, self._spent, limit, self._wait(cost, limit, now)
            )
        self._log.append((now, cost))
        self._spent += cost
        return Admission(True, endpoint, cost, self._spent, limit)

    def _wait(self, cost: int, limit: int, now: float) -> float:
        # Walk the log oldest first until enough units have expired to fit ``cost``.
        excess = self._spent + cost - limit
        for at, spent in self._log:
            excess -= spent
            if excess <= 0:
                return max(0.0, at + self.window - now)
        return self.window  # cost > limit: it will never fit; report one full window
