"""Property-based tests: the optimised books against naive references."""

from __future__ import annotations

from decimal import Decimal
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.kraken.reference_book import ReferenceBook
from workers.broker.adapters.kraken.book import (
    BookChanged,
    ChecksumMismatch,
    SpotBook,
    SpotBookBuilder,
    UpdateIgnored,
)
from workers.broker.adapters.kraken.checksum import LevelFormatter
from workers.broker.adapters.kraken.schemas import BookData, BookLevel, BookMessage, PairPrecision
from workers.broker.adapters.kraken_futures.book import FuturesBookBuilder
from workers.broker.adapters.kraken_futures.schemas import BookDelta, BookSnapshot
from workers.broker.adapters.kraken_futures.schemas import BookLevel as FuturesLevel

# A narrow price grid makes updates collide with existing levels often.
prices = st.integers(min_value=1, max_value=80).map(lambda tick: Decimal(tick).scaleb(-1))
zero = Decimal("0.00000000")
quantities = st.one_of(
    st.just(zero), st.integers(min_value=1, max_value=10**10).map(lambda n: Decimal(n).scaleb(-8))
)
levels = st.lists(st.tuples(prices, quantities).map(lambda t: BookLevel(*t)), max_size=8)
messages = st.lists(st.tuples(levels, levels), min_size=1, max_size=25)
depths = st.sampled_from([1, 2, 5, 10, 25])

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


def assert_well_formed(book: SpotBook) -> None:
    bids, asks = book.bids(), book.asks()
    assert len(bids) <= book.depth and len(asks) <= book.depth
    assert all(level.qty != 0 for level in bids + asks)
    assert all(a.price > b.price for a, b in pairwise(bids))  # strictly best first
    assert all(a.price < b.price for a, b in pairwise(asks))


@PROPERTY_SETTINGS
@given(depth=depths, snapshot=st.tuples(levels, levels), updates=messages)
def test_incremental_book_equals_book_rebuilt_from_scratch(
    depth: int,
    snapshot: tuple[list[BookLevel], list[BookLevel]],
    updates: list[tuple[list[BookLevel], list[BookLevel]]],
) -> None:
    book = SpotBook("X", depth)
    reference = ReferenceBook(depth)
    book.replace(*snapshot)
    reference.snapshot(*snapshot)
    for bids, asks in updates:
        book.update(bids, asks)
        reference.update(bids, asks)
        assert book.bids() == reference.sorted_bids()
        assert book.asks() == reference.sorted_asks()
        assert book.checksum() == reference.checksum()
        assert_well_formed(book)


@PROPERTY_SETTINGS
@given(depth=depths, updates=messages)
def test_truncation_invariant_holds_after_every_message(
    depth: int, updates: list[tuple[list[BookLevel], list[BookLevel]]]
) -> None:
    book = SpotBook("X", depth)
    book.replace([], [])
    for bids, asks in updates:
        book.update(bids, asks)
        assert_well_formed(book)


def _snapshot_message(book: SpotBook, checksum: int) -> BookMessage:
    data = BookData("X", tuple(book.bids()), tuple(book.asks()), checksum, None)
    return BookMessage("book", "snapshot", (data,))


@PROPERTY_SETTINGS
@given(depth=depths, updates=messages, precise=st.booleans())
def test_checksum_equals_checksum_of_reserialised_snapshot(
    depth: int, updates: list[tuple[list[BookLevel], list[BookLevel]]], precise: bool
) -> None:
    formatter = LevelFormatter.with_precision(1, 8) if precise else LevelFormatter.wire_text()
    book = SpotBook("X", depth, formatter)
    book.replace([], [])
    for bids, asks in updates:
        book.update(bids, asks)
    # Hand the book out as a snapshot frame, as the Market would, and rebuild it.
    builder = SpotBookBuilder(default_depth=depth)
    if precise:
        builder.subscribe("X", depth, precision=PairPrecision(1, 8))
    (event,) = builder.receive(_snapshot_message(book, book.checksum()))
    assert isinstance(event, BookChanged)
    assert event.book.checksum() == book.checksum()
    assert event.book.bids() == book.bids() and event.book.asks() == book.asks()


@PROPERTY_SETTINGS
@given(updates=messages, corrupt_at=st.integers(min_value=0, max_value=24))
def test_one_bad_checksum_is_reported_once_then_updates_wait_for_snapshot(
    updates: list[tuple[list[BookLevel], list[BookLevel]]], corrupt_at: int
) -> None:
    reference = ReferenceBook(10)
    builder = SpotBookBuilder()
    reference.snapshot([], [])
    builder.receive(
        BookMessage("book", "snapshot", (BookData("X", (), (), reference.checksum(), None),))
    )
    kinds = []
    for index, (bids, asks) in enumerate(updates):
        reference.update(bids, asks)
        checksum = reference.checksum() ^ (1 if index == corrupt_at else 0)
        data = BookData("X", tuple(bids), tuple(asks), checksum, None)
        (event,) = builder.receive(BookMessage("book", "update", (data,)))
        kinds.append(type(event))
    if corrupt_at < len(updates):
        assert kinds[:corrupt_at] == [BookChanged] * corrupt_at
        assert kinds[corrupt_at] is ChecksumMismatch
        assert set(kinds[corrupt_at + 1 :]) <= {UpdateIgnored}
    else:
        assert set(kinds) == {BookChanged}


# ---------------------------------------------------------------------------- futures

sides = st.sampled_from(["buy", "sell"])
deltas = st.lists(st.tuples(sides, prices, quantities), max_size=60)


@PROPERTY_SETTINGS
@given(snapshot=st.tuples(levels, levels), changes=deltas)
def test_futures_book_equals_naive_dicts(
    snapshot: tuple[list[BookLevel], list[BookLevel]], changes: list[tuple[str, Decimal, Decimal]]
) -> None:
    bids = {level.price: level.qty for level in snapshot[0] if level.qty}
    asks = {level.price: level.qty for level in snapshot[1] if level.qty}
    builder = FuturesBookBuilder()
    builder.receive(
        BookSnapshot(
            "book_snapshot",
            "PI_XBTUSD",
            0,
            100,
            None,
            tuple(FuturesLevel(p, q) for p, q in bids.items()),
            tuple(FuturesLevel(p, q) for p, q in asks.items()),
        )
    )
    seq = 100
    for side, price, qty in changes:
        if not builder.is_synced("PI_XBTUSD"):
            break  # a crossed book stops the stream until a snapshot; nothing to compare
        seq += 1
        builder.receive(BookDelta("book", "PI_XBTUSD", side, seq, price, qty, 0))  # type: ignore[arg-type]
        target = bids if side == "buy" else asks
        if qty:
            target[price] = qty
        else:
            target.pop(price, None)
        book = builder.book("PI_XBTUSD")
        assert book is not None
        assert book.bids() == sorted(bids.items(), reverse=True)
        assert book.asks() == sorted(asks.items())
        assert builder.is_synced("PI_XBTUSD") == (not book.is_crossed())
