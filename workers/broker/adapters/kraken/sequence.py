"""Gap detection for Kraken spot streams that carry sequence numbers.

Public v2 book/ticker frames carry no sequence number (the book checksum is their gap
detector), but two streams do (PROTOCOL_NOTES §4, §5):

* ``trade``: ``trade_id`` is sequential per book, so consecutive trades of one symbol
  differ by exactly 1 (:class:`TradeIdTracker`);
* ``executions``: every frame of a subscription carries ``sequence`` (+1 per frame)
  (:class:`ExecutionsSequenceTracker`).

:class:`ContiguityTracker` is the shared core: feed it numbers per stream key, get back a
:class:`SequenceStep`, :class:`SequenceGap` (messages were missed: resynchronise --
resubscribe for a snapshot, or reconcile orders by REST) or :class:`SequenceRepeat` (a
duplicate or stale number: drop the message).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar

from workers.broker.adapters.kraken.schemas import ExecutionsMessage, TradeMessage

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class SequenceStart:
    """First number seen for a key since the last reset; nothing to compare it with."""

    key: Hashable
    value: int


@dataclass(frozen=True, slots=True)
class SequenceStep:
    """``value`` is exactly the previous number + 1."""

    key: Hashable
    value: int


@dataclass(frozen=True, slots=True)
class SequenceGap:
    """Numbers ``expected`` .. ``received - 1`` were never seen: resynchronise."""

    key: Hashable
    expected: int
    received: int

    @property
    def missed(self) -> int:
        """How many numbers were skipped."""
        return self.received - self.expected


@dataclass(frozen=True, slots=True)
class SequenceRepeat:
    """``received`` is not after the last number ``last``: a duplicate or stale message."""

    key: Hashable
    last: int
    received: int


SequenceResult: TypeAlias = SequenceStart | SequenceStep | SequenceGap | SequenceRepeat


class ContiguityTracker(Generic[K]):
    """Checks that each key's numbers increase by exactly 1.

    After a gap the tracker continues from the received number, so one lost message is
    reported once, not on every later message. A repeat leaves the state unchanged.
    """

    def __init__(self) -> None:
        self._last: dict[K, int] = {}

    def reset(self, key: K, last: int | None = None) -> None:
        """Forget ``key``'s history; with ``last``, expect ``last + 1`` next."""
        if last is None:
            self._last.pop(key, None)
        else:
            self._last[key] = last

    def last(self, key: K) -> int | None:
        """The last accepted number for ``key``, or ``None``."""
        return self._last.get(key)

    def observe(self, key: K, value: int) -> SequenceResult:
        """Record ``value`` for ``key`` and say how it relates to the previous number."""
        last = self._last.get(key)
        if last is None:
            self._last[key] = value
            return SequenceStart(key, value)
        if value == last + 1:
            self._last[key] = value
            return SequenceStep(key, value)
        if value > last:
            self._last[key] = value
            return SequenceGap(key, last + 1, value)
        return SequenceRepeat(key, last, value)


class TradeIdTracker:
    """``trade_id`` contiguity per symbol for the v2 ``trade`` channel.

    A snapshot (the latest trades, oldest first) restarts the symbol's history from its
    first trade; every later trade must be the previous ``trade_id`` + 1.
    """

    def __init__(self) -> None:
        self._tracker: ContiguityTracker[str] = ContiguityTracker()

    def receive(self, message: TradeMessage) -> list[SequenceResult]:
        """One result per trade in ``message``, in message order."""
        if message.type == "snapshot":
            for symbol in {trade.symbol for trade in message.data}:
                self._tracker.reset(symbol)
        return [self._tracker.observe(trade.symbol, trade.trade_id) for trade in message.data]


class ExecutionsSequenceTracker:
    """``sequence`` continuity of one ``executions`` subscription.

    A snapshot frame starts a new subscription's numbering. A gap means order events were
    lost: reconcile open orders and fills by REST before trusting local state.
    """

    _KEY = "executions"

    def __init__(self) -> None:
        self._tracker: ContiguityTracker[str] = ContiguityTracker()

    def receive(self, message: ExecutionsMessage) -> SequenceResult:
        """Check one frame's ``sequence`` against the previous frame."""
        if message.type == "snapshot":
            self._tracker.reset(self._KEY)
        return self._tracker.observe(self._KEY, message.sequence)
