"""Latency percentiles over a sliding window of samples (p50/p99/p99.9, never averages alone)."""

from __future__ import annotations

from collections import deque


class LatencyWindow:
    """Keeps the last `size` samples (µs) and answers percentiles. Pure; no clock inside."""

    def __init__(self, size: int = 4096) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, micros: float) -> None:
        self._samples.append(micros)

    def percentile(self, q: float) -> float | None:
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return ordered[index]

    def summary(self) -> dict[str, float | None]:
        return {"latency_p50_us": self.percentile(0.50), "latency_p99_us": self.percentile(0.99),
                "latency_p999_us": self.percentile(0.999)}


class RateMeter:
    """Events per second over a sliding window, fed with explicit timestamps."""

    def __init__(self, window_s: float = 5.0) -> None:
        self._window = window_s
        self._stamps: deque[float] = deque()

    def mark(self, now: float, count: int = 1) -> None:
        for _ in range(count):
            self._stamps.append(now)
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        return len(self._stamps) / self._window

    def _trim(self, now: float) -> None:
        while self._stamps and self._stamps[0] < now - self._window:
            self._stamps.popleft()
