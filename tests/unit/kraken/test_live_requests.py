"""Requests the live Kraken adapter sends, their JSON text, and how it reads Kraken's errors
and timestamps -- all without a socket."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ErrorCode
from protocol.market import CandleInterval, Side
from protocol.orders import NewOrder, OrderType, TimeInForce
from workers.broker.adapters.base import (
    FatalAdapterError,
    OrderRejectedError,
    RetryableAdapterError,
)
from workers.broker.adapters.kraken import commands
from workers.broker.adapters.kraken.errors import MalformedMessage
from workers.broker.adapters.kraken.rejections import error_for_kraken
from workers.broker.adapters.kraken.wire import (
    encode_frame,
    ns_to_rfc3339,
    rfc3339_ns,
    unix_seconds_ns,
)

D = Decimal
TOKEN = "G38a1tGFzqGiUCmnegBcm8d4nfP3tytiNQz6tkCBYXY"


def order(**overrides: object) -> NewOrder:
    fields: dict[str, object] = {
        "client_order_id": "algo-1",
        "account": "kraken-main",
        "instrument": "BTC/USD",
        "side": Side.BUY,
        "qty": "1.20000000",
        "price": "26500.4",
    }
    fields.update(overrides)
    return NewOrder.model_validate(fields)


# ---------------------------------------------------------------- WebSocket requests


def test_a_limit_order_becomes_the_documented_add_order_with_exact_numbers() -> None:
    frame = commands.add_order(order(), symbol="BTC/USD", cl_ord_id="algo-1", token=TOKEN)
    assert frame == {
        "method": "add_order",
        "params": {
            "order_type": "limit",
            "side": "buy",
            "order_qty": D("1.20000000"),
            "symbol": "BTC/USD",
            "limit_price": D("26500.4"),
            "time_in_force": "gtc",
            "cl_ord_id": "algo-1",
            "token": TOKEN,
        },
    }
    text = encode_frame({**frame, "req_id": 7})
    assert '"order_qty":1.20000000' in text and '"limit_price":26500.4' in text
    assert json.loads(text, parse_float=Decimal)["params"]["order_qty"] == D("1.2")


def test_ioc_and_market_orders() -> None:
    ioc = commands.add_order(
        order(time_in_force=TimeInForce.IOC), symbol="BTC/USD", cl_ord_id="x", token=TOKEN
    )
    assert ioc["params"]["time_in_force"] == "ioc"
    market = commands.add_order(
        order(order_type=OrderType.MARKET, price=None, side=Side.SELL),
        symbol="BTC/USD",
        cl_ord_id="x",
        token=TOKEN,
    )
    assert market["params"]["order_type"] == "market"
    assert "limit_price" not in market["params"] and "time_in_force" not in market["params"]


def test_amend_and_cancel_name_the_order_by_kraken_id_when_known() -> None:
    assert commands.amend_order(token=TOKEN, order_id="OA", qty=D("2"))["params"] == {
        "order_id": "OA",
        "order_qty": D("2"),
        "token": TOKEN,
    }
    assert commands.amend_order(token=TOKEN, cl_ord_id="c1", price=D("1.5"))["params"] == {
        "cl_ord_id": "c1",
        "limit_price": D("1.5"),
        "token": TOKEN,
    }
    assert commands.cancel_order(token=TOKEN, order_id="OA")["params"] == {
        "order_id": ["OA"],
        "token": TOKEN,
    }
    assert commands.cancel_order(token=TOKEN, cl_ord_id="c1")["params"]["cl_ord_id"] == ["c1"]
    with pytest.raises(ValueError):
        commands.amend_order(token=TOKEN, order_id="OA")
    with pytest.raises(ValueError):
        commands.cancel_order(token=TOKEN)


def test_subscriptions_follow_the_documented_shapes() -> None:
    assert commands.subscribe("book", ["BTC/USD"], depth=25, snapshot=True) == {
        "method": "subscribe",
        "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 25, "snapshot": True},
    }
    assert commands.unsubscribe("trade", ["BTC/USD"])["method"] == "unsubscribe"
    assert commands.subscribe_executions(TOKEN)["params"] == {
        "channel": "executions",
        "token": TOKEN,
        "snap_orders": True,
        "snap_trades": False,
        "order_status": True,
    }
    assert commands.OHLC_MINUTES[CandleInterval.H4] == 240


@pytest.mark.parametrize(
    ("wanted", "offered"), [(1, 10), (10, 10), (11, 25), (26, 100), (500, 500), (1000, 1000)]
)
def test_book_depth_is_the_next_one_kraken_offers(wanted: int, offered: int) -> None:
    assert commands.kraken_depth(wanted) == offered


@pytest.mark.parametrize("depth", [0, 1001])
def test_depths_kraken_cannot_serve_are_refused(depth: int) -> None:
    with pytest.raises(ValueError):
        commands.kraken_depth(depth)


# ---------------------------------------------------------------- client order ids


@pytest.mark.parametrize(
    "client_order_id",
    [
        "short-id-18-chars",
        "d15708c1-dbb6-465d-b77d-47258319cc90",
        "d15708c1dbb6465db77d47258319cc90",
    ],
)
def test_ids_kraken_accepts_are_sent_unchanged(client_order_id: str) -> None:
    assert commands.venue_cl_ord_id(client_order_id, "acct") == client_order_id


def test_longer_ids_become_a_stable_uuid_per_account() -> None:
    long_id = "strategy-7:order-000000123456"
    mapped = commands.venue_cl_ord_id(long_id, "acct")
    assert uuid.UUID(mapped) and len(mapped) == 36
    assert commands.venue_cl_ord_id(long_id, "acct") == mapped  # a re-send maps the same way
    assert commands.venue_cl_ord_id(long_id, "other") != mapped


# ---------------------------------------------------------------- REST forms


def test_rest_forms_carry_plain_decimal_strings() -> None:
    assert commands.rest_add_order(order(), pair="XBTUSD", cl_ord_id="algo-1") == {
        "ordertype": "limit",
        "type": "buy",
        "volume": "1.20000000",
        "pair": "XBTUSD",
        "price": "26500.4",
        "timeinforce": "GTC",
        "cl_ord_id": "algo-1",
    }
    assert commands.rest_cancel_order(order_id="OA") == {"txid": "OA"}
    assert commands.rest_cancel_order(cl_ord_id="c1") == {"cl_ord_id": "c1"}
    assert commands.rest_pair("XBT/USD") == "XBTUSD"


# ---------------------------------------------------------------- JSON and times


@given(
    st.decimals(
        allow_nan=False, allow_infinity=False, places=8, min_value=-(10**9), max_value=10**9
    )
)
def test_decimals_travel_as_json_numbers_with_every_digit(value: Decimal) -> None:
    text = encode_frame({"v": value})
    assert json.loads(text, parse_float=Decimal)["v"] == value
    assert "e" not in text.lower()


def test_floats_and_non_finite_numbers_are_never_sent() -> None:
    with pytest.raises(TypeError):
        encode_frame({"price": 0.1})
    with pytest.raises(TypeError):
        encode_frame({"price": Decimal("NaN")})
    assert encode_frame({"a": [True, None, 3, 'x"y']}) == '{"a":[true,null,3,"x\\"y"]}'


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2023-09-22T10:33:05.709950Z", 1695378785_709950000),
        ("2023-10-04T15:25:00.000000000Z", 1696433100_000000000),
        ("2023-10-04T15:25:00Z", 1696433100_000000000),
        ("2023-10-04T17:25:00.5+02:00", 1696433100_500000000),
    ],
)
def test_rfc3339_times_become_exact_nanoseconds(text: str, ns: int) -> None:
    assert rfc3339_ns(text) == ns


@pytest.mark.parametrize("text", ["2023-13-01T00:00:00Z", "yesterday", "2023-09-22 10:33"])
def test_bad_times_are_malformed(text: str) -> None:
    with pytest.raises(MalformedMessage):
        rfc3339_ns(text)


def test_times_round_trip_at_microsecond_precision_and_rest_times_parse() -> None:
    assert rfc3339_ns(ns_to_rfc3339(1695378785_709950123)) == 1695378785_709950000
    assert unix_seconds_ns("1705259439.563000") == 1705259439_563000000
    assert unix_seconds_ns(Decimal("1705260547.4728658")) == 1705260547_472865800
    with pytest.raises(MalformedMessage):
        unix_seconds_ns("soon")


# ---------------------------------------------------------------- Kraken errors


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ("EOrder:Rate limit exceeded", ErrorCode.RATE_LIMITED),
        ("EOrder:Domain rate limit exceeded", ErrorCode.RATE_LIMITED),
        ("EOrder:Insufficient funds", ErrorCode.INVALID_ORDER),
        ("EOrder:Order minimum not met", ErrorCode.QTY_BELOW_MIN),
        ("EOrder:Tick size check failed", ErrorCode.PRICE_OFF_TICK),
        ("EOrder:Unknown order", ErrorCode.ORDER_NOT_FOUND),
        ("EGeneral:Invalid arguments:order_qty", ErrorCode.INVALID_ORDER),
        ("EQuery:Unknown asset pair", ErrorCode.UNKNOWN_INSTRUMENT),
        ("EService:Market in cancel_only mode", ErrorCode.UNAVAILABLE),
        ("EOrder:Duplicate cl_ord_id", ErrorCode.DUPLICATE_ORDER),
        ("EOrder:Something new", ErrorCode.INVALID_ORDER),
    ],
)
def test_order_refusals_keep_kraken_text_and_get_a_code(error: str, code: ErrorCode) -> None:
    exc = error_for_kraken(error, what="add_order BTC/USD", client_order_id="c1")
    assert isinstance(exc, OrderRejectedError)
    assert exc.code is code and exc.client_order_id == "c1"
    assert error in exc.message


@pytest.mark.parametrize(
    "error", ["EAPI:Invalid key", "EAPI:Invalid signature", "EGeneral:Permission denied"]
)
def test_credential_problems_are_fatal(error: str) -> None:
    assert isinstance(error_for_kraken(error, what="REST Balance"), FatalAdapterError)


@pytest.mark.parametrize(
    "error",
    [
        "EAPI:Invalid nonce",
        "EService:Unavailable",
        "EService: Throttled: 1700000000",
        "EGeneral:Temporary lockout",
        "ESession:Invalid session",
        "EWhatever:never seen",
    ],
)
def test_transient_problems_are_retryable(error: str) -> None:
    exc = error_for_kraken(error, what="REST Balance", retry_after=2.0)
    assert isinstance(exc, RetryableAdapterError) and exc.retry_after == 2.0
