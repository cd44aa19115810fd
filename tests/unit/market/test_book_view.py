"""Book mirror and per-depth views: what each group of sessions sees is the top of the book."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.market import BookDelta, BookSnapshot
from workers.market.book_view import BookUpdate, DepthView, UpstreamBook


def snapshot(bids: list[tuple[str, str]], asks: list[tuple[str, str]], update_id: int = 1
             ) -> dict[str, Any]:
    return {"type": "book_snapshot", "instrument": "BTC/USD", "bids": [list(b) for b in bids],
            "asks": [list(a) for a in asks], "update_id": update_id, "ts": 1}


def delta(update_id: int, bids: Sequence[tuple[str, str]] = (),
          asks: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    return {"type": "book_delta", "instrument": "BTC/USD", "bids": [list(b) for b in bids],
            "asks": [list(a) for a in asks], "update_id": update_id, "ts": 2}


BIDS = [("100", "1"), ("99", "2"), ("98", "3")]
ASKS = [("101", "1"), ("102", "2"), ("103", "3")]


def test_deltas_before_a_snapshot_are_ignored_and_a_gap_is_reported() -> None:
    book = UpstreamBook(depth=3)
    assert book.apply(delta(5, bids=[("100", "1")])) is BookUpdate.IGNORED
    assert book.apply(snapshot(BIDS, ASKS, update_id=7)) is BookUpdate.SNAPSHOT
    assert book.apply(delta(8, bids=[("100", "5")])) is BookUpdate.DELTA
    assert book.apply(delta(10, bids=[("100", "6")])) is BookUpdate.GAP
    assert not book.ready


def test_a_shallow_view_ignores_changes_below_its_depth() -> None:
    book = UpstreamBook(depth=3)
    book.apply(snapshot(BIDS, ASKS))
    top1 = DepthView("BTC/USD", 1)
    first = top1.resnapshot(book)
    assert first["bids"] == [["100", "1"]] and first["asks"] == [["101", "1"]]
    book.apply(delta(2, bids=[("98", "7")]))
    assert top1.follow(book) is None
    book.apply(delta(3, bids=[("100", "0")]))  # the best bid leaves: 99 moves up
    moved = top1.follow(book)
    assert moved is not None
    assert moved["bids"] == [["100", "0"], ["99", "2"]] and moved["update_id"] == 2
    BookDelta.model_validate(moved)


def test_a_newcomer_gets_the_view_as_it_is_and_a_resync_continues_update_ids() -> None:
    book = UpstreamBook(depth=3)
    view = DepthView("BTC/USD", 2)
    assert view.current(0) is None
    book.apply(snapshot(BIDS, ASKS))
    view.resnapshot(book)
    book.apply(delta(2, asks=[("101", "4")]))
    view.follow(book)
    now = view.current(3)
    assert now is not None and now["update_id"] == 2
    assert now["asks"] == [["101", "4"], ["102", "2"]]
    BookSnapshot.model_validate(now)
    book.apply(snapshot(BIDS, ASKS, update_id=1))  # upstream restarted from scratch
    again = view.resnapshot(book)
    assert again["update_id"] == 3 and again["asks"][0] == ["101", "1"]


def _apply_side(side: dict[Decimal, str], levels: list[list[str]]) -> None:
    for price, size in levels:
        if Decimal(size) == 0:
            side.pop(Decimal(price), None)
        else:
            side[Decimal(price)] = size


_LEVEL = st.tuples(st.integers(min_value=1, max_value=30), st.integers(min_value=0, max_value=3))


@settings(max_examples=200, deadline=None)
@given(depth=st.integers(min_value=1, max_value=6),
       changes=st.lists(st.tuples(st.booleans(), st.lists(_LEVEL, max_size=4)), max_size=30))
def test_a_view_rebuilt_from_its_own_messages_is_the_top_of_the_book(
    depth: int, changes: list[tuple[bool, list[tuple[int, int]]]]
) -> None:
    book = UpstreamBook(depth=10)
    book.apply(snapshot([], []))
    view = DepthView("BTC/USD", depth)
    first = view.resnapshot(book)
    client_bids: dict[Decimal, str] = {}
    client_asks: dict[Decimal, str] = {}
    _apply_side(client_bids, first["bids"])
    _apply_side(client_asks, first["asks"])
    update_id = first["update_id"]
    for n, (is_bid, levels) in enumerate(changes, start=2):
        # Bids live below 100, asks above, so the book never crosses.
        wire = [(str(100 - p if is_bid else 100 + p), str(q)) for p, q in levels]
        book.apply(delta(n, bids=wire) if is_bid else delta(n, asks=wire))
        derived = view.follow(book)
        if derived is not None:
            assert derived["update_id"] == update_id + 1
            update_id = derived["update_id"]
            _apply_side(client_bids, derived["bids"])
            _apply_side(client_asks, derived["asks"])
        top_bids, top_asks = book.top(depth)
        assert client_bids == {p: lv[1] for p, lv in top_bids.items()}
        assert client_asks == {p: lv[1] for p, lv in top_asks.items()}
