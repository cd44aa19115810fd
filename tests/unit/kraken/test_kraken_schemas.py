"""Wire schemas: documented frame shapes, exact decimals, and clear errors."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from tests.unit.kraken.recordings import load, parsed_as
from workers.broker.adapters.kraken import schemas as spot
from workers.broker.adapters.kraken.errors import KrakenError, MalformedMessage
from workers.broker.adapters.kraken_futures import schemas as fschemas
from workers.broker.adapters.kraken_futures.errors import KrakenFuturesError
from workers.broker.adapters.kraken_futures.errors import MalformedMessage as FMalformed


def test_decode_keeps_the_exact_wire_digits() -> None:
    frame = spot.decode(
        '{"price":62797.0,"qty":0.00000000,"small":0.00005100,"id":15113583034416118705}'
    )
    assert str(frame["price"]) == "62797.0"
    assert frame["qty"] == 0 and frame["qty"].as_tuple().exponent == -8
    assert frame["small"] == Decimal("0.00005100") and frame["small"].as_tuple().exponent == -8
    assert frame["id"] == 15113583034416118705  # beyond 2**53, still exact


def test_floats_never_become_prices() -> None:
    with pytest.raises(MalformedMessage):
        spot.to_decimal(0.1, "price")
    with pytest.raises(MalformedMessage):
        spot.to_decimal(True, "qty")
    with pytest.raises(MalformedMessage):
        spot.to_decimal("NaN", "price")
    assert spot.to_decimal("27120.00000") == Decimal("27120.00000")
    assert spot.to_decimal(5) == Decimal(5)


def test_v2_book_frame(exchange_data: Path) -> None:
    raw = load(exchange_data / "kraken_spot_v2/v2_book_doc_example_MATIC_USD.json")[1]
    frame = spot.parse_frame(raw)
    assert isinstance(frame, spot.BookMessage) and frame.type == "update"
    (data,) = frame.data
    assert data.symbol == "MATIC/USD" and data.asks == ()
    assert data.bids == (spot.BookLevel(Decimal("0.5657"), Decimal("1098.3947558")),)
    assert data.checksum == 2114181697 and data.timestamp == "2023-10-06T17:35:55.440295Z"


def test_v2_doc_examples_parse_with_venue_field_names(exchange_data: Path) -> None:
    docs = load(exchange_data / "kraken_spot_v2/v2_doc_examples.json")
    ticker = spot.parse_frame(docs["ticker_snapshot"])
    assert isinstance(ticker, spot.TickerMessage)
    assert ticker.data[0].bid == Decimal("0.10025") and ticker.data[0].change_pct == Decimal(
        "-0.17"
    )
    executions = [
        parsed_as(spot.ExecutionsMessage, frame)
        for frame in docs["executions_sequence_pending_new_new_trade"]
    ]
    trade = executions[2].data[0]
    assert trade.exec_type == "trade" and trade.trade_id == 62887576
    assert trade.last_price == Decimal("26599.9") and trade.fees[0] == spot.Fee(
        "USD", Decimal("0.3458")
    )
    assert trade.liquidity_ind == "t"
    new = executions[1].data[0]
    assert new.order_status == "new" and new.limit_price is None  # only changed fields sent
    assert executions[0].data[0].extra["fee_ccy_pref"] == "fciq"

    ack = parsed_as(spot.MethodResponse, docs["subscribe_book_ack"][0])
    assert ack.success and ack.result is not None and ack.result["depth"] == 10
    error = spot.parse_frame(
        docs["real_wire_frames_from_depthcharge_capture_2026-08-16"]["subscribe_error_bad_depth"]
    )
    assert isinstance(error, spot.MethodResponse) and error.success is False
    assert error.error == "Subscription depth not supported"
    added = spot.parse_frame(docs["add_order_response_success"])
    assert isinstance(added, spot.MethodResponse) and added.result == {
        "order_id": "AA5JGQ-SBMRC-SCJ7J7",
        "order_userref": 100054,
    }
    status = spot.parse_frame(
        docs["real_wire_frames_from_depthcharge_capture_2026-08-16"]["status"]
    )
    assert isinstance(status, spot.StatusMessage)
    assert status.data[0]["connection_id"] == 15113583034416118705
    assert isinstance(spot.parse_frame({"channel": "heartbeat"}), spot.Heartbeat)
    assert isinstance(spot.parse_frame(docs["ohlc_update"]), spot.UnknownFrame)


def test_v1_book_frames(exchange_data: Path) -> None:
    fixture = load(exchange_data / "kraken_spot_v1/xbtusd_book10_2023-08-30.json")
    snapshot = spot.parse_frame(fixture["init"][3])
    assert isinstance(snapshot, spot.BookMessageV1) and snapshot.is_snapshot
    assert snapshot.checksum is None and snapshot.depth == 10 and snapshot.pair == "XBT/USD"
    assert snapshot.asks[0].price == Decimal("27120.00000")
    republish = spot.parse_frame(fixture["updates"][2])
    assert isinstance(republish, spot.BookMessageV1)
    assert republish.bids[1].update_type == "r" and republish.checksum == 3139033408
    two_sided = spot.parse_frame(
        [
            1,
            {"a": [["1.0", "2.0", "1.1"]]},
            {"b": [["0.9", "1.0", "1.2"]], "c": "42"},
            "book-25",
            "ETH/USD",
        ]
    )
    assert isinstance(two_sided, spot.BookMessageV1)
    assert len(two_sided.asks) == 1 and len(two_sided.bids) == 1 and two_sided.checksum == 42
    status = spot.parse_frame(fixture["init"][2])
    assert isinstance(status, spot.SubscriptionStatusV1) and status.subscription["depth"] == 10
    assert isinstance(spot.parse_frame({"event": "heartbeat"}), spot.Heartbeat)


def test_level3_frame(exchange_data: Path) -> None:
    frame = spot.parse_frame(
        load(exchange_data / "kraken_spot_v2/v2_level3_checksum_worked_example.json")
    )
    assert isinstance(frame, spot.Level3Message)
    first = frame.data[0].bids[0]
    assert first.limit_price == Decimal("44939.4") and first.order_qty == Decimal("0.88968699")


def test_instrument_precisions(exchange_data: Path) -> None:
    table = spot.pair_precisions(
        load(exchange_data / "reference/kraken_v2_instrument_snapshot.json")
    )
    assert table["BTC/USD"] == spot.PairPrecision(1, 8)
    assert table["MATIC/USD"] == spot.PairPrecision(4, 8)
    assert len(table) == 683


@pytest.mark.parametrize(
    "raw",
    [
        {"channel": "book", "type": "update", "data": [{"symbol": "X", "bids": [{"price": 1}]}]},
        {"channel": "book", "type": "delta", "data": []},
        {
            "channel": "book",
            "type": "update",
            "data": [{"symbol": "X", "bids": [{"price": "x", "qty": 1}], "checksum": 1}],
        },
        {"channel": "trade", "type": "update", "data": [{"symbol": "X"}]},
        {"channel": "executions", "type": "update", "data": [{"exec_type": "new"}], "sequence": 1},
        [1, "not a dict", "book-10", "XBT/USD"],
        "text",
    ],
)
def test_malformed_frames_raise_one_adapter_error(raw: object) -> None:
    with pytest.raises(MalformedMessage) as error:
        spot.parse_frame(raw)
    assert isinstance(error.value, KrakenError) and isinstance(error.value, ValueError)


def test_decode_rejects_non_json() -> None:
    with pytest.raises(MalformedMessage):
        spot.decode("{not json")


# ---------------------------------------------------------------------------- futures


def test_futures_doc_examples(exchange_data: Path) -> None:
    docs = fschemas.decode((exchange_data / "kraken_futures/futures_doc_examples.json").read_text())
    snapshot = fschemas.parse_frame(docs["ws_book_snapshot"])
    assert isinstance(snapshot, fschemas.BookSnapshot)
    assert snapshot.seq == 326072249 and snapshot.tickSize is None
    assert snapshot.bids[0] == fschemas.BookLevel(Decimal("34892.5"), Decimal(6385))
    delta = fschemas.parse_frame(docs["ws_book_delta"])
    assert isinstance(delta, fschemas.BookDelta) and delta.side == "sell" and delta.qty == 0
    fills = fschemas.parse_frame(docs["ws_fills_snapshot"])
    assert isinstance(fills, fschemas.FillsMessage) and fills.feed == "fills_snapshot"
    assert fills.fills[0].fee_paid == Decimal("-0.00009142857") and fills.fills[0].buy is True
    new = fschemas.parse_frame(docs["ws_open_orders_delta_new"])
    assert isinstance(new, fschemas.OpenOrdersMessage) and new.order is not None
    assert new.order.direction == 1 and new.order.limit_price == Decimal("10640.0")
    cancel = fschemas.parse_frame(docs["ws_open_orders_cancel"])
    assert (
        isinstance(cancel, fschemas.OpenOrdersMessage) and cancel.is_cancel and cancel.order is None
    )
    error = fschemas.parse_frame(docs["ws_book_error"])
    assert isinstance(error, fschemas.EventMessage) and error.message == "Invalid product id"
    ack = fschemas.parse_frame(docs["ws_book_subscribed"])
    assert isinstance(ack, fschemas.EventMessage) and ack.product_ids == ("PF_XBTUSD",)


def test_futures_rest_responses(exchange_data: Path) -> None:
    docs = fschemas.decode((exchange_data / "kraken_futures/futures_doc_examples.json").read_text())
    placed = fschemas.parse_rest_response(docs["rest_sendorder_placed"])
    assert isinstance(placed, fschemas.SendOrderResponse) and placed.sendStatus.status == "placed"
    rejected = fschemas.parse_rest_response(docs["rest_sendorder_rejected_ioc"])
    # a rejection is transported as "success": the status says what happened
    assert isinstance(rejected, fschemas.SendOrderResponse)
    assert rejected.sendStatus.status == "iocWouldNotExecute"
    assert rejected.sendStatus.orderEvents[0]["reason"] == "IOC_WOULD_NOT_EXECUTE"
    cancelled = fschemas.parse_rest_response(docs["rest_cancelorder_cancelled"])
    assert isinstance(cancelled, fschemas.CancelOrderResponse)
    assert cancelled.cancelStatus.status == "cancelled"
    limited = fschemas.parse_rest_response(docs["rest_api_limit_exceeded"])
    assert limited == fschemas.ErrorResponse(
        "error", "apiLimitExceeded", "2016-02-25T09:45:53.818Z"
    )


@pytest.mark.parametrize(
    "raw",
    [
        {
            "feed": "book",
            "product_id": "PI_XBTUSD",
            "side": "up",
            "seq": 1,
            "price": 1,
            "qty": 1,
            "timestamp": 1,
        },
        {
            "feed": "book",
            "product_id": "PI_XBTUSD",
            "side": "buy",
            "seq": 1.5,
            "price": 1,
            "qty": 1,
            "timestamp": 1,
        },
        {"feed": "book_snapshot", "product_id": "PI_XBTUSD"},
        {"nothing": True},
        [1, 2],
    ],
)
def test_futures_malformed_frames(raw: object) -> None:
    with pytest.raises(FMalformed) as error:
        fschemas.parse_frame(raw)
    assert isinstance(error.value, KrakenFuturesError)
