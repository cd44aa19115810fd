"""How long an adapter waits before re-opening a dropped venue connection (pure).

Exponential backoff with downward jitter: the caller passes the attempt number and a random
source, and sleeps itself. The jitter spreads the reconnects of many workers that lost the
venue at the same moment; the cap keeps a long outage from turning into a connect storm. A
venue with a per-IP attempt budget adds its own rule on top (Kraken: `kraken/reconnect.py`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """Delay before attempt `n` is `min(max_s, initial_s * multiplier**n)`, minus up to
    `jitter` of it at random. Never negative, never above `max_s`."""

    initial_s: float = 0.1
    max_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s:
            raise ValueError("need 0 < initial_s <= max_s")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before attempt number `attempt` (0 for the first retry)."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        # Bounding the exponent keeps the power finite for any attempt count.
        base = min(self.max_s, self.initial_s * self.multiplier ** min(attempt, 64))
        return base * (1.0 - self.jitter * rng.random())
