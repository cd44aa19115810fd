"""Which finished orders an account's books keep whole. Pure, no I/O.

The order tracker and the position manager's ledger each keep the last `limit` finished
orders whole; an older one leaves only its client_order_id behind, which stays taken. Both
count the same orders finishing in the same journal order, so both let the same ones go, live
and in a rebuild alike. Memory then stays bounded however long the account trades; the
journal keeps everything.
"""

from __future__ import annotations

from collections import deque
from typing import Any

RETAIN_FINISHED = 10_000
"""Finished orders an account's books keep whole, by default."""


def reused_id_message(client_order_id: str) -> str:
    """Why a new_order naming the id of an order let go is refused."""
    return (f"client_order_id {client_order_id!r} belongs to an order that finished long ago; "
            "choose a new one")


class Retention:
    """The finished orders kept, oldest first, and the ids of those let go."""

    def __init__(self, limit: int = RETAIN_FINISHED) -> None:
        if limit < 1:
            raise ValueError("retain_finished must be at least 1")
        self.limit = limit
        self._kept: deque[str] = deque()
        self._gone: set[str] = set()

    def finished(self, client_order_id: str) -> list[str]:
        """Count a newly finished order; return the ids let go to stay within the limit
        (the caller drops those orders and keeps nothing else of them)."""
        self._kept.append(client_order_id)
        gone: list[str] = []
        while len(self._kept) > self.limit:
            oldest = self._kept.popleft()
            self._gone.add(oldest)
            gone.append(oldest)
        return gone

    def let_go(self, client_order_id: str) -> None:
        """Keep only the id of an order that was never counted as kept."""
        self._gone.add(client_order_id)

    def gone(self, client_order_id: str) -> bool:
        """Whether the id belonged to an order let go: it cannot be used again."""
        return client_order_id in self._gone

    def kept_finished(self) -> set[str]:
        return set(self._kept)

    def snapshot(self) -> dict[str, Any]:
        return {"retain_finished": self.limit, "finished": list(self._kept),
                "forgotten": sorted(self._gone)}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> Retention:
        retention = cls(data["retain_finished"])
        retention._kept.extend(data["finished"])
        retention._gone.update(data["forgotten"])
        return retention
