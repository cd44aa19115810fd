"""Per-product ``seq`` continuity of Kraken Futures book deltas.

In the recorded feed every ``book`` delta's ``seq`` is the previous one + 1 for its
``product_id``, starting at ``book_snapshot.seq + 1`` (PROTOCOL_NOTES §7). Any jump
means a delta was lost and the book is wrong: resubscribe for a fresh snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

# Results are slotted but not frozen: one is built per book delta, and a frozen
# dataclass costs ~0.4 us more to build. Treat them as read-only.


@dataclass(slots=True)
class SequenceStep:
    """``seq`` is exactly the previous one + 1."""

    product_id: str
    seq: int


@dataclass(slots=True)
class SequenceGap:
    """Deltas ``expected`` .. ``received - 1`` of ``product_id`` were lost: resubscribe."""

    product_id: str
    expected: int
    received: int


@dataclass(slots=True)
class SequenceStale:
    """``received`` is not after ``last``: a duplicate, or a delta older than the snapshot."""

    product_id: str
    last: int
    received: int


@dataclass(slots=True)
class SequenceUnknown:
    """No snapshot was seen for the product, so there is nothing to continue from."""

    product_id: str
    seq: int


SequenceResult: TypeAlias = SequenceStep | SequenceGap | SequenceStale | SequenceUnknown


class ProductSequenceTracker:
    """Tracks the last ``seq`` per product.

    :meth:`restart` at each snapshot; :meth:`observe` each delta. After a gap the tracker
    continues from the received ``seq`` so a single loss is reported once.
    """

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def restart(self, product_id: str, snapshot_seq: int) -> None:
        """A snapshot arrived: the next delta must be ``snapshot_seq + 1``."""
        self._last[product_id] = snapshot_seq

    def forget(self, product_id: str) -> None:
        """Stop tracking a product (unsubscribed)."""
        self._last.pop(product_id, None)

    def last(self, product_id: str) -> int | None:
        """The last accepted ``seq`` of a product, or ``None``."""
        return self._last.get(product_id)

    def observe(self, product_id: str, seq: int) -> SequenceResult:
        """Check one delta's ``seq`` against the product's previous one."""
        last = self._last.get(product_id)
        if last is None:
            return SequenceUnknown(product_id, seq)
        if seq == last + 1:
            self._last[product_id] = seq
            return SequenceStep(product_id, seq)
        if seq > last:
            self._last[product_id] = seq
            return SequenceGap(product_id, last + 1, seq)
        return SequenceStale(product_id, last, seq)
