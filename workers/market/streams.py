"""Subscription reference counting: which sessions want which streams, and what to ask upstream.

One `StreamTable` per account link. Sessions subscribe to streams (instrument, channel, depth,
interval); the table keeps one upstream subscription per stream whatever the number of
sessions, and says when to send `md_subscribe` (first session in) and `md_unsubscribe` (last
session out). Book streams share one upstream subscription per instrument at the largest depth
wanted (see `book_view` for why); a deeper newcomer moves it to the larger depth.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import NamedTuple

from protocol.market import Channel


class StreamKey(NamedTuple):
    """One downstream stream. Book depth is always set (the Market fills in its default)."""

    instrument: str
    channel: Channel
    depth: int | None = None
    interval: str | None = None


@dataclass(frozen=True, slots=True)
class UpstreamChange:
    """Send `md_subscribe` (subscribe=True) or `md_unsubscribe` for this stream."""

    subscribe: bool
    stream: StreamKey


class StreamTable:
    """Streams → subscribed sessions for one account, with the upstream subscriptions they need."""

    def __init__(self) -> None:
        self._sessions: dict[StreamKey, set[str]] = {}
        self._book_depth: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self, key: StreamKey) -> AbstractSet[str]:
        """The sessions subscribed to `key` (empty if none)."""
        return self._sessions.get(key, _NONE)

    def streams(self) -> list[StreamKey]:
        """Every stream with at least one session."""
        return list(self._sessions)

    def book_streams(self, instrument: str) -> list[StreamKey]:
        """The book streams (one per depth) of `instrument`."""
        return [k for k in self._sessions
                if k.channel is Channel.BOOK and k.instrument == instrument]

    def book_depth(self, instrument: str) -> int | None:
        """Depth of the upstream book subscription of `instrument`, if any."""
        return self._book_depth.get(instrument)

    def upstream(self) -> list[StreamKey]:
        """The upstream subscriptions the current streams need (to resubscribe a new link)."""
        out = [k for k in self._sessions if k.channel is not Channel.BOOK]
        out += [StreamKey(i, Channel.BOOK, d) for i, d in self._book_depth.items()]
        return out

    def add(self, key: StreamKey, session_id: str) -> list[UpstreamChange]:
        """Subscribe a session (idempotent). Returns the upstream changes this needs."""
        sessions = self._sessions.get(key)
        if sessions is None:
            sessions = self._sessions[key] = set()
        if session_id in sessions:
            return []
        sessions.add(session_id)
        if len(sessions) > 1:
            return []
        if key.channel is not Channel.BOOK:
            return [UpstreamChange(True, key)]
        assert key.depth is not None, "book streams carry their depth"
        current = self._book_depth.get(key.instrument)
        if current is None:
            self._book_depth[key.instrument] = key.depth
            return [UpstreamChange(True, key)]
        if key.depth <= current:
            return []
        self._book_depth[key.instrument] = key.depth
        return [UpstreamChange(False, StreamKey(key.instrument, Channel.BOOK, current)),
                UpstreamChange(True, key)]

    def remove(self, key: StreamKey, session_id: str) -> list[UpstreamChange]:
        """Unsubscribe a session (idempotent). Returns the upstream changes this needs."""
        sessions = self._sessions.get(key)
        if sessions is None or session_id not in sessions:
            return []
        sessions.discard(session_id)
        if sessions:
            return []
        del self._sessions[key]
        if key.channel is not Channel.BOOK:
            return [UpstreamChange(False, key)]
        if self.book_streams(key.instrument):
            return []  # other depths still use the upstream book; it stays as deep as it is
        depth = self._book_depth.pop(key.instrument)
        return [UpstreamChange(False, StreamKey(key.instrument, Channel.BOOK, depth))]


_NONE: frozenset[str] = frozenset()
