"""Spot book builder: Kraken's book rules, resync behaviour, and the recorded feeds."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.unit.kraken.recordings import load, received_frames
from tests.unit.kraken.reference_book import reference_checksum
from workers.broker.adapters.kraken.book import (
    BookChanged,
    ChecksumMismatch,
    SpotBook,
    SpotBookBuilder,
    UpdateIgnored,
)
from workers.broker.adapters.kraken.checksum import LevelFormatter
from workers.broker.adapters.kraken.schemas import (
    BookData,
    BookLevel,
    BookMessage,
    BookMessageV1,
    PairPrecision,
    parse_frame,
)

D = Decimal


def lv(price: str, qty: str) -> BookLevel:
    return BookLevel(D(price), D(qty))


def v2(
    kind: str, bids: list[BookLevel], asks: list[BookLevel], checksum: int, symbol: str = "BTC/USD"
) -> BookMessage:
    return BookMessage("book", kind, (BookData(symbol, tuple(bids), tuple(asks), checksum, None),))  # type: ignore[arg-type]


def checksum_of(book: SpotBook) -> int:
    return reference_checksum(book.asks(), book.bids())


# ---------------------------------------------------------------------------- book rules


def test_snapshot_orders_levels_best_first_and_skips_zero_qty() -> None:
    book = SpotBook("BTC/USD", depth=10)
    book.replace(
        bids=[lv("99.0", "1.0"), lv("101.0", "2.0"), lv("100.0", "0.0")],
        asks=[lv("103.0", "1.0"), lv("102.0", "3.0")],
    )
    assert book.bids() == [lv("101.0", "2.0"), lv("99.0", "1.0")]
    assert book.asks() == [lv("102.0", "3.0"), lv("103.0", "1.0")]
    assert book.best_bid() == lv("101.0", "2.0")
    assert book.best_ask() == lv("102.0", "3.0")
    assert not book.is_crossed()


def test_zero_qty_deletes_and_unknown_delete_is_harmless() -> None:
    book = SpotBook("X", depth=10)
    book.replace([lv("1.0", "1.0"), lv("0.9", "1.0")], [lv("1.1", "1.0")])
    book.update(bids=[lv("1.0", "0.00000000"), lv("0.5", "0")], asks=[])
    assert book.bids() == [lv("0.9", "1.0")]


def test_update_applies_repeated_price_in_array_order() -> None:
    """v1 sends e.g. 27130.2 updated four times then deleted, all in one message."""
    book = SpotBook("X", depth=10)
    book.replace([lv("1.0", "1.0")], [lv("2.0", "1.0")])
    book.update(bids=[], asks=[lv("2.5", "1"), lv("2.5", "2"), lv("2.5", "3"), lv("2.5", "0")])
    assert book.asks() == [lv("2.0", "1.0")]
    book.update(bids=[], asks=[lv("2.5", "0"), lv("2.5", "4")])
    assert book.asks() == [lv("2.0", "1.0"), lv("2.5", "4")]


def test_insert_beyond_depth_pushes_worst_level_out() -> None:
    """Kraken sends no delete for the level an insert pushes out of the window."""
    book = SpotBook("X", depth=3)
    book.replace(
        [lv("10", "1"), lv("9", "1"), lv("8", "1")], [lv("11", "1"), lv("12", "1"), lv("13", "1")]
    )
    book.update(bids=[lv("9.5", "1")], asks=[lv("10.5", "1")])
    assert [level.price for level in book.bids()] == [D("10"), D("9.5"), D("9")]
    assert [level.price for level in book.asks()] == [D("10.5"), D("11"), D("12")]
    # the dropped level does not come back when the level above it is deleted
    book.update(bids=[lv("10", "0")], asks=[])
    assert [level.price for level in book.bids()] == [D("9.5"), D("9")]


def test_snapshot_deeper_than_depth_is_truncated() -> None:
    book = SpotBook("X", depth=2)
    book.replace([lv(str(p), "1") for p in (5, 4, 3)], [lv(str(p), "1") for p in (6, 7, 8)])
    assert len(book) == 4
    assert book.bids(1) == [lv("5", "1")]
    assert book.asks(5) == [lv("6", "1"), lv("7", "1")]


def test_checksum_tracks_changes_below_and_inside_top_ten() -> None:
    book = SpotBook("X", depth=25)
    book.replace(
        [lv(f"{100 - i}.0", "1.0") for i in range(20)],
        [lv(f"{101 + i}.0", "1.0") for i in range(20)],
    )
    assert book.checksum() == checksum_of(book)
    book.update(bids=[lv("85.0", "2.0")], asks=[lv("118.0", "0")])  # deep: top 10 unchanged
    assert book.checksum() == checksum_of(book)
    book.update(bids=[lv("100.0", "0")], asks=[])  # top level gone, level 11 enters the top 10
    assert book.checksum() == checksum_of(book)
    book.update(bids=[lv("100.5", "3.0")], asks=[lv("100.7", "1.5")])
    assert book.checksum() == checksum_of(book)


def test_crossed_book_is_reported() -> None:
    book = SpotBook("X", depth=10)
    book.replace([lv("10", "1")], [lv("11", "1")])
    book.update(bids=[lv("11", "1")], asks=[])
    assert book.is_crossed()


def test_level_texts_are_the_checksum_spelling() -> None:
    book = SpotBook("X", depth=10)
    book.replace([lv("0.5657", "606.70854372")], [lv("0.5668", "0.00000000"), lv("0.5669", "1.10")])
    assert book.level_texts("asks") == [("0.5669", "1.10")]
    precise = SpotBook("X", depth=10, formatter=LevelFormatter.with_precision(4, 8))
    precise.replace([lv("0.566", "18097.1547")], [])
    assert precise.level_texts("bids") == [("0.5660", "18097.15470000")]


# ---------------------------------------------------------------------------- builder


def test_builder_ignores_updates_before_first_snapshot() -> None:
    builder = SpotBookBuilder()
    (event,) = builder.receive(v2("update", [lv("1", "1")], [], 0))
    assert event == UpdateIgnored("BTC/USD", "no_snapshot")
    assert builder.book("BTC/USD") is None
    assert not builder.is_synced("BTC/USD")


def test_builder_mismatch_waits_for_snapshot_then_resyncs() -> None:
    builder = SpotBookBuilder()
    bids, asks = [lv("10.0", "1.00")], [lv("11.0", "2.00")]
    good = reference_checksum([(D("11.0"), D("2.00"))], [(D("10.0"), D("1.00"))])
    (event,) = builder.receive(v2("snapshot", bids, asks, good))
    assert isinstance(event, BookChanged) and event.checksum == good and event.is_snapshot

    (event,) = builder.receive(v2("update", [lv("10.0", "1.50")], [], 12345))
    assert isinstance(event, ChecksumMismatch)
    assert event.expected == 12345 and not builder.is_synced("BTC/USD")

    (event,) = builder.receive(v2("update", [lv("9.0", "1.00")], [], 0))
    assert event == UpdateIgnored("BTC/USD", "awaiting_resync")

    (event,) = builder.receive(v2("snapshot", bids, asks, good))
    assert isinstance(event, BookChanged) and builder.is_synced("BTC/USD")
    assert event.book.bids() == bids


def test_builder_keeps_symbols_independent() -> None:
    builder = SpotBookBuilder()
    for symbol in ("A/USD", "B/USD"):
        checksum = reference_checksum([], [(D("1.0"), D("1.0"))])
        builder.receive(v2("snapshot", [lv("1.0", "1.0")], [], checksum, symbol))
    (event,) = builder.receive(v2("update", [lv("1.0", "2.0")], [], 1, "A/USD"))
    assert isinstance(event, ChecksumMismatch)
    assert builder.is_synced("B/USD") and not builder.is_synced("A/USD")
    builder.forget("A/USD")
    assert builder.book("A/USD") is None


def test_builder_depth_comes_from_subscription_then_frame_then_default() -> None:
    builder = SpotBookBuilder(default_depth=10)
    builder.subscribe("XBT/USD", 25)
    snapshot = BookMessageV1(1, (), (), None, "book-100", "XBT/USD", True)
    builder.receive(snapshot)
    assert builder.book("XBT/USD").depth == 25  # type: ignore[union-attr]
    builder.receive(BookMessageV1(2, (), (), None, "book-100", "ETH/USD", True))
    assert builder.book("ETH/USD").depth == 100  # type: ignore[union-attr]
    builder.receive(v2("snapshot", [], [], reference_checksum([], [])))
    assert builder.book("BTC/USD").depth == 10  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- recordings


def _replay(builder: SpotBookBuilder, frames: list[Any]) -> dict[str, int]:
    counts = {"verified": 0, "snapshots": 0, "other": 0}
    for frame in frames:
        parsed = parse_frame(frame)
        if not isinstance(parsed, (BookMessage, BookMessageV1)):
            counts["other"] += 1
            continue
        for event in builder.receive(parsed):
            assert isinstance(event, BookChanged), event
            counts["verified" if event.checksum is not None else "snapshots"] += 1
    return counts


def test_v2_btcusd_recording_verifies_all_510_checksums(exchange_data: Path) -> None:
    fixture = load(exchange_data / "kraken_spot_v2/btcusd_book10_2023-07-30.json")
    builder = SpotBookBuilder(precisions={"BTC/USD": PairPrecision(1, 8)})
    counts = _replay(builder, [fixture["init"], *fixture["updates"]])
    assert counts["verified"] == 510
    book = builder.book("BTC/USD")
    assert book is not None and len(book.bids()) == len(book.asks()) == 10


def test_v1_xbtusd_book10_verifies_all_979_checksums(exchange_data: Path) -> None:
    fixture = load(exchange_data / "kraken_spot_v1/xbtusd_book10_2023-08-30.json")
    counts = _replay(SpotBookBuilder(), [*fixture["init"], *fixture["updates"]])
    assert counts["verified"] == 979
    assert counts["snapshots"] == 1


def test_cryptofeed_v1_depth_1000_ten_pairs_verifies_all_4269(exchange_data: Path) -> None:
    path = exchange_data / "kraken_spot_v1/cryptofeed_book1000_10pairs_2021-04-17.txt"
    builder = SpotBookBuilder()  # depth 1000 comes from the frames' "book-1000" channel name
    counts = _replay(builder, [frame for _, frame in received_frames(path)])
    assert counts["verified"] == 4269
    assert counts["snapshots"] == 10
    deepest = max(len(builder.book(pair) or ()) for pair in ("XBT/CHF", "ETH/CHF", "ADA/XBT"))
    assert deepest > 20  # genuinely deep books, not just the checksummed top 10


def test_cryptofeed_v1_fails_when_truncated_to_wrong_depth(exchange_data: Path) -> None:
    """Depth matters: the same feed cut at 10 levels stops matching Kraken's checksums."""
    path = exchange_data / "kraken_spot_v1/cryptofeed_book1000_10pairs_2021-04-17.txt"
    builder = SpotBookBuilder()
    for pair in (
        "WAVES/EUR",
        "XMR/USD",
        "KSM/XBT",
        "GRT/ETH",
        "SC/EUR",
        "ETH/CHF",
        "OCEAN/XBT",
        "OMG/USD",
        "XBT/CHF",
        "ADA/XBT",
    ):
        builder.subscribe(pair, 10)  # overrides the "book-1000" channel name
    mismatches = 0
    for _, frame in received_frames(path):
        parsed = parse_frame(frame)
        if isinstance(parsed, BookMessageV1):
            mismatches += sum(isinstance(e, ChecksumMismatch) for e in builder.receive(parsed))
    assert mismatches > 0


def test_resubscribing_with_a_new_depth_takes_effect_at_the_next_snapshot() -> None:
    builder = SpotBookBuilder()
    levels = [lv(f"{100 - i}.0", "1.0") for i in range(30)]
    empty_asks: list[BookLevel] = []
    builder.receive(v2("snapshot", levels, empty_asks, 0))
    first = builder.book("BTC/USD")
    assert first is not None and len(first.bids()) == 10
    builder.subscribe("BTC/USD", 25)
    builder.receive(v2("snapshot", levels, empty_asks, 0))
    second = builder.book("BTC/USD")
    assert second is not None and second is not first and len(second.bids()) == 25
    assert len(first.bids()) == 10  # the old object was left untouched
