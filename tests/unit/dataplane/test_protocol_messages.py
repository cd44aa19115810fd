"""The data-plane wire contract: exact decimals as strings, coded parse errors, batches."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from protocol.codec import decode, encode
from protocol.errors import ErrorCode
from protocol.market import BookDelta, BookSnapshot, Candle, Ticker, Trade, split_instrument
from protocol.orders import (
    CancelOrder,
    Fill,
    ModifyOrder,
    NewOrder,
    OrderFilled,
    OrderStatus,
)
from protocol.session import (
    Batch,
    Error,
    Hello,
    Ping,
    ProtocolError,
    Subscribe,
    encode_batch,
    parse_client_message,
    parse_server_message,
)

NEW_ORDER: dict[str, Any] = {
    "type": "new_order",
    "client_order_id": "algo-1:42",
    "account": "acct-1",
    "instrument": "BTC/USD",
    "side": "buy",
    "order_type": "limit",
    "qty": "0.10",
    "price": "60000.5",
    "time_in_force": "GTC",
}


def parse_error(data: dict[str, Any]) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(data)
    return caught.value


# ---------------------------------------------------------------- decimals


def test_new_order_round_trips_with_decimals_as_exact_strings() -> None:
    message = parse_client_message(NEW_ORDER)
    assert isinstance(message, NewOrder)
    assert message.qty == Decimal("0.10") and message.price == Decimal("60000.5")

    wire = decode(encode(message))
    assert wire["qty"] == "0.10"  # trailing zero kept: the string is what the client sent
    assert wire["price"] == "60000.5"
    assert parse_client_message(wire) == message


@given(
    st.decimals(
        min_value=Decimal("0.00000001"),
        max_value=Decimal("1e12"),
        places=8,
        allow_nan=False,
        allow_infinity=False,
    )
)
def test_any_price_survives_the_wire_exactly(price: Decimal) -> None:
    message = parse_client_message({**NEW_ORDER, "price": format(price, "f")})
    again = parse_client_message(decode(encode(message)))
    assert isinstance(again, NewOrder)
    assert again.price == price
    assert decode(encode(again))["price"] == format(price, "f")


def test_decimals_built_in_code_never_serialise_in_exponent_notation() -> None:
    trade = Trade(
        instrument="BTC/USD",
        trade_id="t",
        price=Decimal("1E+2"),
        qty=Decimal("1E-8"),
        taker_side="buy",
        ts=1,
    )
    wire = decode(encode(trade))
    assert wire["price"] == "100" and wire["qty"] == "0.00000001"


@pytest.mark.parametrize(
    "bad", [60000.5, 1e-3, True, "1e5", "NaN", "Infinity", "", " 1", "1,5", "0x10", "1" * 65]
)
def test_price_that_is_not_an_exact_decimal_string_is_refused(bad: object) -> None:
    error = parse_error({**NEW_ORDER, "price": bad})
    assert error.code is ErrorCode.INVALID_FIELD
    assert error.field == "price"


@pytest.mark.parametrize("value", [Decimal("1." + "3" * 63), Decimal("1E+70"),
                                   Decimal("1E-70"), 10**64, -(10**63), 2**4000])
def test_a_model_built_in_code_holds_only_what_the_wire_can_carry(value: object) -> None:
    # A decimal too long for any reader to parse fails where the model is built, not
    # silently at the far end (a 160-digit average price once lost a positions answer).
    with pytest.raises(ValidationError):
        Trade(instrument="BTC/USD", trade_id="t", price=value, qty="1", taker_side="buy", ts=1)
    longest = Decimal("1." + "3" * 62)
    trade = Trade(instrument="BTC/USD", trade_id="t", price=longest, qty=10**63,
                  taker_side="buy", ts=1)
    assert Trade.model_validate(decode(encode(trade))) == trade


def test_float_error_message_tells_the_client_to_send_a_string() -> None:
    error = parse_error({**NEW_ORDER, "qty": 0.1})
    assert error.field == "qty"
    assert "string" in error.message and "float" in error.message


def test_integers_are_accepted_as_exact_values() -> None:
    message = parse_client_message({**NEW_ORDER, "qty": 3, "price": 60000})
    assert isinstance(message, NewOrder)
    assert message.qty == Decimal(3) and decode(encode(message))["qty"] == "3"


@pytest.mark.parametrize("qty", ["0", "-1", "-0.0001", 0])
def test_zero_or_negative_qty_is_an_invalid_field(qty: object) -> None:
    error = parse_error({**NEW_ORDER, "qty": qty})
    assert (error.code, error.field) == (ErrorCode.INVALID_FIELD, "qty")


# ---------------------------------------------------------------- parse errors


def test_unknown_type_is_reported_as_such() -> None:
    error = parse_error({"type": "buy_everything"})
    assert error.code is ErrorCode.UNKNOWN_TYPE and error.field == "type"


def test_a_frame_without_type_names_the_missing_field() -> None:
    error = parse_error({"client_order_id": "x"})
    assert (error.code, error.field) == (ErrorCode.MISSING_FIELD, "type")


@pytest.mark.parametrize("field", ["client_order_id", "account", "instrument", "side", "qty"])
def test_missing_required_field_is_named(field: str) -> None:
    data = {k: v for k, v in NEW_ORDER.items() if k != field}
    error = parse_error(data)
    assert (error.code, error.field) == (ErrorCode.MISSING_FIELD, field)


def test_limit_order_without_price_is_missing_price() -> None:
    data = {k: v for k, v in NEW_ORDER.items() if k != "price"}
    error = parse_error(data)
    assert (error.code, error.field) == (ErrorCode.MISSING_FIELD, "price")


def test_market_order_with_a_price_is_invalid() -> None:
    error = parse_error({**NEW_ORDER, "order_type": "market"})
    assert (error.code, error.field) == (ErrorCode.INVALID_FIELD, "price")


def test_extra_field_is_an_unknown_field_named() -> None:
    error = parse_error({**NEW_ORDER, "leverage": "100"})
    assert (error.code, error.field) == (ErrorCode.UNKNOWN_FIELD, "leverage")


@pytest.mark.parametrize("instrument", ["BTCUSD", "btc/usd", "BTC/USD\n", "BTC/", "/USD", 7])
def test_non_canonical_instrument_is_invalid(instrument: object) -> None:
    error = parse_error({**NEW_ORDER, "instrument": instrument})
    assert (error.code, error.field) == (ErrorCode.INVALID_FIELD, "instrument")


def test_error_echoes_client_order_id_and_ref_so_the_client_can_match_it() -> None:
    error = parse_error({**NEW_ORDER, "price": 1.5}).to_error()
    assert isinstance(error, Error)
    assert error.client_order_id == "algo-1:42"
    assert parse_error({"type": "subscribe", "ref": "r9"}).to_error().ref == "r9"


def test_nested_field_path_is_dotted() -> None:
    error = parse_error({"type": "subscribe", "instrument": "BTC/USD", "channel": "bogus"})
    assert (error.code, error.field) == (ErrorCode.INVALID_FIELD, "channel")


def test_modify_needs_something_to_change() -> None:
    error = parse_error({"type": "modify_order", "client_order_id": "x", "account": "a"})
    assert error.code is ErrorCode.MISSING_FIELD
    ok = parse_client_message(
        {"type": "modify_order", "client_order_id": "x", "account": "a", "qty": "2"}
    )
    assert isinstance(ok, ModifyOrder) and ok.price is None


def test_candles_need_an_interval_and_only_books_take_a_depth() -> None:
    base = {"type": "subscribe", "instrument": "ETH/USD"}
    assert parse_error({**base, "channel": "candles"}).field == "interval"
    assert parse_error({**base, "channel": "trades", "depth": 5}).field == "depth"
    assert parse_error({**base, "channel": "ticker", "interval": "1m"}).field == "interval"
    sub = parse_client_message({**base, "channel": "candles", "interval": "5m"})
    assert isinstance(sub, Subscribe) and sub.stream().interval == "5m"


def test_hello_carries_session_and_resume_point_only() -> None:
    hello = parse_client_message({"type": "hello", "session_id": "s-1", "resume_from_seq": 17})
    assert isinstance(hello, Hello) and hello.resume_from_seq == 17
    # The API token belongs in the HTTP header, never in a frame.
    assert parse_error({"type": "hello", "session_id": "s-1", "token": "t"}).code is (
        ErrorCode.UNKNOWN_FIELD
    )


def test_cancel_order_parses() -> None:
    message = parse_client_message({"type": "cancel_order", "client_order_id": "c", "account": "a"})
    assert message == CancelOrder(client_order_id="c", account="a")


# ---------------------------------------------------------------- server messages


def filled_event(**changes: Any) -> OrderFilled:
    fill = Fill(
        fill_id="F1",
        account="a",
        client_order_id="c1",
        order_id="P1",
        instrument="BTC/USD",
        side="buy",
        qty=Decimal("0.5"),
        price=Decimal("100.5"),
        fee=Decimal("-0.01"),
        fee_currency="USD",
        liquidity="maker",
        ts=5,
    )
    fields: dict[str, Any] = {
        "account": "a",
        "client_order_id": "c1",
        "order_id": "P1",
        "instrument": "BTC/USD",
        "side": "buy",
        "order_type": "limit",
        "qty": Decimal("0.5"),
        "price": Decimal("100.5"),
        "time_in_force": "GTC",
        "status": OrderStatus.FILLED,
        "filled_qty": Decimal("0.5"),
        "remaining_qty": Decimal(0),
        "avg_price": Decimal("100.5"),
        "ts": 5,
        "fill": fill,
    }
    fields.update(changes)
    return OrderFilled(**fields)


def test_order_event_round_trips_and_seq_is_optional() -> None:
    event = filled_event()
    wire = decode(encode(event))
    assert "seq" not in wire  # a Broker emits before the Market stamps it
    assert wire["fill"]["fee"] == "-0.01"
    assert parse_server_message(wire) == event
    stamped = event.model_copy(update={"seq": 7})
    assert parse_server_message(decode(encode(stamped))) == stamped


def test_order_event_refuses_inconsistent_quantities_and_status() -> None:
    with pytest.raises(ValidationError):
        filled_event(filled_qty=Decimal("0.6"))
    with pytest.raises(ValidationError):
        filled_event(status=OrderStatus.ACCEPTED)  # an order_filled says filled
    with pytest.raises(ValidationError):
        filled_event(status=OrderStatus.FILLED, remaining_qty=Decimal("0.1"))


def test_market_events_round_trip() -> None:
    events = [
        Ticker(instrument="BTC/USD", bid="1.5", bid_qty="2", ask="2.0", ask_qty="1", ts=1),
        Trade(
            instrument="BTC/USD", trade_id="T1", price="1.75", qty="0.3", taker_side="sell", ts=2
        ),
        BookSnapshot(
            instrument="BTC/USD",
            bids=[("1.5", "2"), ("1.0", "1")],
            asks=[("2.0", "1")],
            update_id=4,
            ts=3,
        ),
        BookDelta(instrument="BTC/USD", bids=[("1.5", "0")], update_id=5, ts=4),
        Candle(
            instrument="BTC/USD",
            interval="1m",
            start=0,
            open="1",
            high="2",
            low="0.5",
            close="1.5",
            volume="10",
            closed=True,
        ),
    ]
    for event in events:
        wire = decode(encode(event))
        assert parse_server_message(wire) == event
    assert decode(encode(events[2]))["bids"] == [["1.5", "2"], ["1.0", "1"]]
    assert decode(encode(events[3]))["bids"] == [["1.5", "0"]]


def test_book_snapshot_levels_must_be_sorted_best_first() -> None:
    with pytest.raises(ValidationError):
        BookSnapshot(
            instrument="BTC/USD", bids=[("1.0", "1"), ("1.5", "1")], asks=[], update_id=1, ts=1
        )
    with pytest.raises(ValidationError):
        BookSnapshot(
            instrument="BTC/USD", bids=[], asks=[("2.0", "1"), ("1.9", "1")], update_id=1, ts=1
        )


def test_batch_frame_splices_pre_encoded_events() -> None:
    events = [Ping(ts=1), filled_event(seq=3)]
    frame = encode_batch(encode(e) for e in events)
    parsed = parse_server_message(decode(frame))
    assert isinstance(parsed, Batch)
    assert parsed.events == events
    assert frame == encode(Batch(events=events))  # splicing equals encoding the whole batch


def test_empty_batch_is_valid() -> None:
    assert parse_server_message(decode(encode_batch([]))) == Batch(events=[])


def test_split_instrument() -> None:
    assert split_instrument("ETH/USDT") == ("ETH", "USDT")
    with pytest.raises(ValueError):
        split_instrument("ETHUSDT")
