"""CRC32 book checksums: tokenisation rules and Kraken's published worked examples."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from tests.unit.kraken.recordings import load, parsed_as
from workers.broker.adapters.kraken.book import BookChanged, ChecksumMismatch, SpotBookBuilder
from workers.broker.adapters.kraken.checksum import (
    LevelFormatter,
    book_checksum,
    checksum_token,
    decimal_text,
    level3_checksum,
)
from workers.broker.adapters.kraken.schemas import (
    BookMessage,
    Level3Message,
    PairPrecision,
)


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("45285.2", "452852"),
        ("0.00100000", "100000"),
        ("0.05000", "5000"),
        ("27120.00000", "2712000000"),
        ("0.00000000", ""),  # a zero quantity has an empty token
    ],
)
def test_token_removes_dot_and_leading_zeros(text: str, token: str) -> None:
    assert checksum_token(text) == token


@pytest.mark.parametrize("text", ["0.00000000", "0.00005100", "62797.0", "0.50930100", "1e-08"])
def test_decimal_text_never_uses_exponent_notation(text: str) -> None:
    rendered = decimal_text(Decimal(text))
    assert "E" not in rendered and "e" not in rendered
    assert Decimal(rendered) == Decimal(text)
    if "e" not in text:
        assert rendered == text  # exactly the wire digits, trailing zeros included


def test_precision_formatter_restores_trailing_zeros() -> None:
    formatter = LevelFormatter.with_precision(1, 8)
    assert formatter.level_token(Decimal("29427.4"), Decimal("0.001")) == "294274" + "100000"
    assert formatter.price_text(Decimal(29431)) == "29431.0"


def test_precision_formatter_rejects_negative_precision() -> None:
    with pytest.raises(ValueError):
        LevelFormatter.with_precision(-1, 8)


def test_docs_worked_example_checksum(exchange_data: Path) -> None:
    path = exchange_data / "kraken_spot_v2/v2_book_checksum_worked_example.json"
    data = parsed_as(BookMessage, load(path)).data[0]
    asks = sorted(data.asks)
    bids = sorted(data.bids, reverse=True)
    assert book_checksum(asks, bids) == 3310070434 == data.checksum


def test_docs_worked_example_strings(exchange_data: Path) -> None:
    """The docs spell out the first tokens of the asks and bids strings."""
    path = exchange_data / "kraken_spot_v2/v2_book_checksum_worked_example.json"
    data = parsed_as(BookMessage, load(path)).data[0]
    formatter = LevelFormatter.wire_text()
    asks = "".join(formatter.level_token(p, q) for p, q in sorted(data.asks))
    bids = "".join(formatter.level_token(p, q) for p, q in sorted(data.bids, reverse=True))
    assert asks.startswith("452852100000452864154571953")
    assert asks.endswith("45299518772827")
    assert bids.startswith("452835100000004528341545820")
    assert bids.endswith("45276615445238")


def test_matic_doc_example_needs_pair_precision(exchange_data: Path) -> None:
    frames = load(exchange_data / "kraken_spot_v2/v2_book_doc_example_MATIC_USD.json")
    builder = SpotBookBuilder(precisions={"MATIC/USD": PairPrecision(4, 8)})
    events = [event for frame in frames for event in builder.receive(parsed_as(BookMessage, frame))]
    assert [type(event) for event in events] == [BookChanged, BookChanged]
    assert [event.checksum for event in events] == [2439117997, 2114181697]  # type: ignore[union-attr]


def test_matic_doc_example_fails_with_float_mangled_text(exchange_data: Path) -> None:
    """The doc example lost trailing zeros (0.566 instead of 0.5660): wire text can't verify it."""
    frames = load(exchange_data / "kraken_spot_v2/v2_book_doc_example_MATIC_USD.json")
    (event,) = SpotBookBuilder().receive(parsed_as(BookMessage, frames[0]))
    assert isinstance(event, ChecksumMismatch)
    assert event.expected == 2439117997


def test_level3_docs_worked_example(exchange_data: Path) -> None:
    path = exchange_data / "kraken_spot_v2/v2_level3_checksum_worked_example.json"
    data = parsed_as(Level3Message, load(path)).data[0]
    asks = [(order.limit_price, order.order_qty) for order in data.asks]
    bids = [(order.limit_price, order.order_qty) for order in data.bids]
    assert level3_checksum(asks, bids) == 1063832831 == data.checksum


def test_level3_reads_only_ten_price_levels() -> None:
    asks = [(Decimal(100 + i), Decimal("1.0")) for i in range(12)]
    bids = [(Decimal(99 - i), Decimal("1.0")) for i in range(10)]
    extra_order_deep = asks + [(Decimal(111), Decimal("2.0"))]
    assert level3_checksum(asks, bids) == level3_checksum(asks[:10], bids)
    assert level3_checksum(extra_order_deep, bids) == level3_checksum(asks[:10], bids)
    # a second order at a top-10 price changes the checksum
    with_second_order = [asks[0], (asks[0][0], Decimal("3.0")), *asks[1:]]
    assert level3_checksum(with_second_order, bids) != level3_checksum(asks, bids)


def test_book_checksum_reads_only_top_ten() -> None:
    asks = [(Decimal(f"{100 + i}.5"), Decimal("0.10000000")) for i in range(15)]
    bids = [(Decimal(f"{99 - i}.5"), Decimal("0.20000000")) for i in range(15)]
    assert book_checksum(asks, bids) == book_checksum(asks[:10], bids[:10])
    assert book_checksum(asks, bids) != book_checksum(asks[1:], bids)


def test_worked_example_survives_float_round_trip_only_with_precision(exchange_data: Path) -> None:
    """Show the failure mode the precision formatter exists for."""
    text = (exchange_data / "kraken_spot_v2/v2_book_checksum_worked_example.json").read_text()
    floats = json.loads(text)  # what a careless parser would do
    data = floats["data"][0]
    asks = [(Decimal(repr(lv["price"])), Decimal(repr(lv["qty"]))) for lv in data["asks"]]
    bids = [(Decimal(repr(lv["price"])), Decimal(repr(lv["qty"]))) for lv in data["bids"]]
    asks.sort()
    bids.sort(reverse=True)
    assert book_checksum(asks, bids) != 3310070434
    assert book_checksum(asks, bids, LevelFormatter.with_precision(1, 8)) == 3310070434
