"""Per-session event delivery: in `seq` order, each event once, gaps filled by replay.

The Broker's journal numbers a session's sequenced events 1, 2, 3… — its order events and the
position manager's answers (risk refusals, signal answers, fired exits) share one counter.
The Market receives them live (`session_event`) and from replays (`replayed`), in any
interleaving, possibly twice (a live event that is also in a replay, a replay asked for
twice). `SessionSequence` turns that into
exactly the contiguous run the client has not seen yet. It is pure: it never sends anything,
it says what to deliver and when to ask the Broker for a replay.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_MAX_PENDING = 10_000


@dataclass(slots=True)
class SeqOutcome(Generic[T]):
    """What to do after feeding events in."""

    deliver: list[T] = field(default_factory=list)
    """Events to send to the client now, in this order."""
    replay_after: int | None = None
    """If set: ask the Broker to replay this session's events after this seq (and call
    `request_replay` when the request is actually sent)."""
    duplicates: int = 0
    """Events dropped because the client already has them (or they are already buffered)."""
    skipped: int = 0
    """Seqs given up on: a replay that made no progress could not fill the gap. Never happens
    with a Broker that keeps its journal; worth an error log when it does."""


class SessionSequence(Generic[T]):
    """Tracks the last seq delivered to one session's client and the events held back.

    Call `restart` when a client (re)attaches, `receive` for each live event, `replayed` for
    every Broker replay answer, `request_replay` whenever a replay request is sent (on attach,
    when a link comes up, when an outcome asks for one), `link_lost` when the link drops.
    """

    __slots__ = ("_max_pending", "_pending", "last_delivered", "last_known", "outstanding")

    def __init__(self, last_delivered: int = 0, *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.last_delivered = last_delivered
        self.last_known = last_delivered
        """Highest seq known to exist (delivered, buffered, or announced by a replay)."""
        self.outstanding = 0
        """Replay requests sent on the current link and not answered yet."""
        self._pending: dict[int, T] = {}
        self._max_pending = max_pending

    @property
    def pending(self) -> int:
        """Events held back waiting for an earlier seq."""
        return len(self._pending)

    def restart(self, last_delivered: int) -> None:
        """A client attached saying it has processed everything up to `last_delivered`.

        Whatever was sent to an earlier connection may not have arrived, so the cursor moves
        to the client's word and the held-back events are dropped; follow with a replay
        request (`request_replay`) to bring them again. Replays already asked for stay counted:
        their answers still arrive and are deduplicated like any other event.
        """
        self.last_delivered = last_delivered
        self.last_known = max(self.last_known, last_delivered)
        self._pending.clear()

    def request_replay(self) -> int:
        """Record that a replay request is being sent; returns its `after_seq`."""
        self.outstanding += 1
        return self.last_delivered

    def link_lost(self) -> None:
        """The link to the Broker dropped: requests sent on it will never be answered."""
        self.outstanding = 0

    def receive(self, seq: int, item: T) -> SeqOutcome[T]:
        """A live event. Delivers it (and any held-back successors) if it is next; holds it
        and asks for a replay if earlier ones are missing; drops it if already seen."""
        outcome: SeqOutcome[T] = SeqOutcome()
        self._accept(seq, item, outcome)
        if self._pending and self.outstanding == 0:
            outcome.replay_after = self.last_delivered
        return outcome

    def replayed(self, events: Iterable[tuple[int, T]], last_seq: int) -> SeqOutcome[T]:
        """A replay answer: events in seq order, and the highest seq issued so far.

        When the last outstanding replay is answered and a gap remains, asks again if this
        answer made progress (the Broker may answer in chunks), else gives the gap up rather
        than ask forever.
        """
        outcome: SeqOutcome[T] = SeqOutcome()
        before = self.last_delivered
        for seq, item in events:
            self._accept(seq, item, outcome)
        self.last_known = max(self.last_known, last_seq)
        self.outstanding = max(0, self.outstanding - 1)
        if self.outstanding > 0 or not self._has_gap():
            return outcome
        if self.last_delivered > before:
            outcome.replay_after = self.last_delivered
        elif self._pending:
            first = min(self._pending)
            outcome.skipped = first - self.last_delivered - 1
            self.last_delivered = first - 1
            self._drain(outcome)
            if self._pending:
                outcome.replay_after = self.last_delivered
        else:
            # Announced but never delivered: nothing is held, so there is nothing to unblock.
            self.last_known = self.last_delivered
        return outcome

    def _has_gap(self) -> bool:
        return bool(self._pending) or self.last_known > self.last_delivered

    def _accept(self, seq: int, item: T, outcome: SeqOutcome[T]) -> None:
        if seq <= self.last_delivered or seq in self._pending:
            outcome.duplicates += 1
            return
        self.last_known = max(self.last_known, seq)
        if seq == self.last_delivered + 1:
            self.last_delivered = seq
            outcome.deliver.append(item)
            self._drain(outcome)
        elif len(self._pending) < self._max_pending:
            self._pending[seq] = item
        # else: dropped; a replay after last_delivered brings it back.

    def _drain(self, outcome: SeqOutcome[T]) -> None:
        pending = self._pending
        while self.last_delivered + 1 in pending:
            self.last_delivered += 1
            outcome.deliver.append(pending.pop(self.last_delivered))
