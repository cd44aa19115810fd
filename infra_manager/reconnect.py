"""When to try a dropped connection again: capped exponential backoff with jitter (pure)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class ReconnectPolicy:
    """Delays before successive reconnection attempts.

    The n-th consecutive failure waits a random time in [base/2, base] where
    base = min(maximum_s, initial_s * factor**n): never zero (no tight loop), never in lockstep
    with other infra managers retrying the same manager (jitter), never longer than `maximum_s`.
    Call `reset()` once a connection has proved healthy.
    """

    initial_s: float = 0.1
    maximum_s: float = 5.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        base = min(self.maximum_s, self.initial_s * self.factor ** min(self.failures, 64))
        self.failures += 1
        return self.rng.uniform(base / 2, base)

    def reset(self) -> None:
        self.failures = 0
