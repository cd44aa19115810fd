"""Flood control for algo connections: a token bucket fed with explicit timestamps (pure)."""

from __future__ import annotations


class FloodLimiter:
    """Admits up to `rate_per_s` messages per second on average, with bursts up to `burst`.

    Each message takes one token; tokens refill continuously at `rate_per_s` up to `burst`.
    A client that keeps sending faster than the rate empties the bucket and is refused; one
    that pauses earns its burst back. No clock inside: callers pass `now` (seconds, monotonic).
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._stamp = now

    def allow(self, now: float) -> bool:
        """Take a token for one message received at `now`; False when the bucket is empty."""
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate_per_s)
            self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    @property
    def tokens(self) -> float:
        """Tokens left at the last `allow` call."""
        return self._tokens
