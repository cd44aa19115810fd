"""Sequence trackers (spot trade_id / executions, futures seq) and the futures book."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from tests.unit.kraken.recordings import load, received_frames
from workers.broker.adapters.kraken import schemas as spot
from workers.broker.adapters.kraken.sequence import (
    ContiguityTracker,
    ExecutionsSequenceTracker,
    SequenceGap,
    SequenceRepeat,
    SequenceStart,
    SequenceStep,
    TradeIdTracker,
)
from workers.broker.adapters.kraken_futures import book as fbook
from workers.broker.adapters.kraken_futures import schemas as fschemas
from workers.broker.adapters.kraken_futures import sequence as fseq

D = Decimal


def test_contiguity_tracker_steps_gaps_and_repeats() -> None:
    tracker: ContiguityTracker[str] = ContiguityTracker()
    assert tracker.observe("a", 5) == SequenceStart("a", 5)
    assert tracker.observe("a", 6) == SequenceStep("a", 6)
    gap = tracker.observe("a", 9)
    assert gap == SequenceGap("a", 7, 9) and isinstance(gap, SequenceGap) and gap.missed == 2
    assert tracker.observe("a", 10) == SequenceStep("a", 10)  # one loss is reported once
    assert tracker.observe("a", 10) == SequenceRepeat("a", 10, 10)
    assert tracker.observe("b", 1) == SequenceStart("b", 1)  # keys are independent
    tracker.reset("a", last=20)
    assert tracker.observe("a", 21) == SequenceStep("a", 21)
    tracker.reset("a")
    assert tracker.last("a") is None


def test_trade_ids_from_docs_snapshot_then_gap(exchange_data: Path) -> None:
    docs = load(exchange_data / "kraken_spot_v2/v2_doc_examples.json")
    tracker = TradeIdTracker()
    snapshot = spot.parse_frame(docs["trade_snapshot"])
    assert isinstance(snapshot, spot.TradeMessage)
    assert tracker.receive(snapshot) == [
        SequenceStart("MATIC/USD", 4665846),
        SequenceStep("MATIC/USD", 4665847),
    ]
    update = spot.parse_frame(docs["trade_update"])
    assert isinstance(update, spot.TradeMessage)
    # The docs' update (4665906) is not contiguous with their snapshot: a real gap.
    assert tracker.receive(update) == [SequenceGap("MATIC/USD", 4665848, 4665906)]


def test_executions_sequence_from_docs(exchange_data: Path) -> None:
    docs = load(exchange_data / "kraken_spot_v2/v2_doc_examples.json")
    tracker = ExecutionsSequenceTracker()
    results = [
        tracker.receive(spot.parse_frame(frame))  # type: ignore[arg-type]
        for frame in docs["executions_sequence_pending_new_new_trade"]
    ]
    assert [type(r) for r in results] == [SequenceStart, SequenceStep, SequenceStep]
    skipped = dict(docs["executions_sequence_pending_new_new_trade"][0], sequence=12)
    assert tracker.receive(spot.parse_frame(skipped)) == SequenceGap("executions", 11, 12)  # type: ignore[arg-type]


def test_executions_snapshot_restarts_numbering() -> None:
    tracker = ExecutionsSequenceTracker()
    message = spot.ExecutionsMessage("executions", "update", (), 40)
    tracker.receive(message)
    restarted = spot.ExecutionsMessage("executions", "snapshot", (), 1)
    assert tracker.receive(restarted) == SequenceStart("executions", 1)


# ---------------------------------------------------------------------------- futures


def test_product_sequence_tracker() -> None:
    tracker = fseq.ProductSequenceTracker()
    assert tracker.observe("PI_XBTUSD", 5) == fseq.SequenceUnknown("PI_XBTUSD", 5)
    tracker.restart("PI_XBTUSD", 100)
    assert tracker.observe("PI_XBTUSD", 101) == fseq.SequenceStep("PI_XBTUSD", 101)
    assert tracker.observe("PI_XBTUSD", 103) == fseq.SequenceGap("PI_XBTUSD", 102, 103)
    assert tracker.observe("PI_XBTUSD", 103) == fseq.SequenceStale("PI_XBTUSD", 103, 103)
    tracker.forget("PI_XBTUSD")
    assert tracker.last("PI_XBTUSD") is None


def _snapshot(seq: int = 10) -> fschemas.BookSnapshot:
    return fschemas.BookSnapshot(
        "book_snapshot",
        "PF_XBTUSD",
        0,
        seq,
        None,
        (fschemas.BookLevel(D("100"), D("5")), fschemas.BookLevel(D("99"), D("0"))),
        (fschemas.BookLevel(D("101"), D("7")),),
    )


def _delta(seq: int, side: str, price: str, qty: str) -> fschemas.BookDelta:
    return fschemas.BookDelta("book", "PF_XBTUSD", side, seq, D(price), D(qty), 0)  # type: ignore[arg-type]


def test_futures_builder_skips_zero_qty_snapshot_entries_and_applies_deltas() -> None:
    builder = fbook.FuturesBookBuilder()
    event = builder.receive(_snapshot())
    assert isinstance(event, fbook.BookChanged) and event.is_snapshot
    assert event.book.bids() == [(D("100"), D("5"))]  # the qty-0 level at 99 was skipped
    event = builder.receive(_delta(11, "buy", "99.5", "3"))
    assert isinstance(event, fbook.BookChanged) and event.seq == 11
    event = builder.receive(_delta(12, "sell", "101", "0"))
    assert isinstance(event, fbook.BookChanged)
    assert event.book.best_ask() is None and event.book.best_bid() == (D("100"), D("5"))


def test_futures_gap_stops_the_book_until_next_snapshot() -> None:
    builder = fbook.FuturesBookBuilder()
    builder.receive(_snapshot())
    assert builder.receive(_delta(12, "buy", "99", "1")) == fseq.SequenceGap("PF_XBTUSD", 11, 12)
    assert not builder.is_synced("PF_XBTUSD")
    ignored = builder.receive(_delta(13, "buy", "98", "1"))
    assert ignored == fbook.UpdateIgnored("PF_XBTUSD", 13, "awaiting_resync")
    assert isinstance(builder.receive(_snapshot(50)), fbook.BookChanged)
    assert isinstance(builder.receive(_delta(51, "buy", "98", "1")), fbook.BookChanged)


def test_futures_stale_and_unknown_deltas_are_ignored() -> None:
    builder = fbook.FuturesBookBuilder()
    assert builder.receive(_delta(1, "buy", "1", "1")) == fbook.UpdateIgnored(
        "PF_XBTUSD", 1, "no_snapshot"
    )
    builder.receive(_snapshot(10))
    assert builder.receive(_delta(10, "buy", "1", "1")) == fbook.UpdateIgnored(
        "PF_XBTUSD", 10, "stale"
    )
    assert builder.is_synced("PF_XBTUSD")


def test_futures_crossing_delta_is_reported() -> None:
    builder = fbook.FuturesBookBuilder()
    builder.receive(_snapshot())
    event = builder.receive(_delta(11, "buy", "101", "1"))
    assert event == fbook.BookCrossed("PF_XBTUSD", D("101"), D("101"), 11)
    assert not builder.is_synced("PF_XBTUSD")


def test_futures_recording_has_7014_contiguous_deltas_and_never_crosses(
    exchange_data: Path,
) -> None:
    path = exchange_data / "kraken_futures/cryptofeed_book_trade_ticker_2021-07-22.txt"
    builder = fbook.FuturesBookBuilder()
    snapshots = deltas = 0
    for line, raw in received_frames(path):
        frame = fschemas.parse_frame(raw)
        if not isinstance(frame, (fschemas.BookSnapshot, fschemas.BookDelta)):
            continue
        event = builder.receive(frame)
        assert isinstance(event, fbook.BookChanged), (line, event)
        assert not event.book.is_crossed()
        if event.is_snapshot:
            snapshots += 1
        else:
            deltas += 1
    assert (snapshots, deltas) == (10, 7014)
