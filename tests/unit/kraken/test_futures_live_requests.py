"""Kraken Futures live adapter, pure parts: request building, signing, refusal codes."""

from __future__ import annotations

import base64
import hashlib
import hmac
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ErrorCode
from protocol.orders import NewOrder
from workers.broker.adapters.base import (
    FatalAdapterError,
    OrderRejectedError,
    RetryableAdapterError,
)
from workers.broker.adapters.kraken_futures import schemas
from workers.broker.adapters.kraken_futures.errors import MalformedMessage
from workers.broker.adapters.kraken_futures.rejections import (
    STATUS_REJECTIONS,
    error_for_http,
    error_for_result,
    local_refusal,
    rejection_for_status,
)
from workers.broker.adapters.kraken_futures.requests import (
    NonceSource,
    RestCall,
    cancelorder_call,
    editorder_call,
    fills_call,
    instruments_call,
    sendorder_call,
    signed_headers,
)

SECRET = base64.b64encode(
    b"a secret of sixty-four bytes, padded out to sixty-four bytes..!!"
).decode()


def new_order(**overrides: object) -> NewOrder:
    values: dict[str, object] = {
        "client_order_id": "algo-7:42",
        "account": "acct",
        "instrument": "BTC/USD",
        "side": "buy",
        "qty": "0.0150",
        "price": "34892.5",
    }
    values.update(overrides)
    return NewOrder.model_validate(values)


# ---------------------------------------------------------------- building


def test_sendorder_maps_order_types_and_keeps_exact_numbers() -> None:
    call = sendorder_call(new_order(), "PF_XBTUSD")
    assert (call.method, call.path) == ("POST", "/derivatives/api/v3/sendorder")
    assert call.params == (
        ("orderType", "lmt"),
        ("symbol", "PF_XBTUSD"),
        ("side", "buy"),
        ("size", "0.0150"),
        ("limitPrice", "34892.5"),
        ("cliOrdId", "algo-7:42"),
    )
    assert call.post_data == (
        "orderType=lmt&symbol=PF_XBTUSD&side=buy&size=0.0150&limitPrice=34892.5"
        "&cliOrdId=algo-7%3A42"
    )
    ioc = sendorder_call(new_order(time_in_force="IOC", side="sell"), "PF_XBTUSD")
    assert dict(ioc.params)["orderType"] == "ioc" and dict(ioc.params)["side"] == "sell"
    market = sendorder_call(new_order(order_type="market", price=None), "PF_XBTUSD")
    assert dict(market.params)["orderType"] == "mkt" and "limitPrice" not in dict(market.params)


def test_editorder_sends_the_new_open_size() -> None:
    call = editorder_call(
        "c1", order_id="oid-1", filled=Decimal(4), qty=Decimal(10), price=Decimal("101.5")
    )
    assert call.params == (("orderId", "oid-1"), ("size", "6"), ("limitPrice", "101.5"))
    by_cid = editorder_call("c1", order_id=None, filled=Decimal(0), qty=None, price=Decimal(7))
    assert by_cid.params == (("cliOrdId", "c1"), ("limitPrice", "7"))
    with pytest.raises(OrderRejectedError) as nothing:
        editorder_call("c1", order_id=None, filled=Decimal(0), qty=None, price=None)
    assert nothing.value.code is ErrorCode.INVALID_ORDER
    with pytest.raises(OrderRejectedError, match="must exceed the 4 already filled"):
        editorder_call("c1", order_id=None, filled=Decimal(4), qty=Decimal(4), price=None)


def test_cancel_and_queries() -> None:
    assert cancelorder_call("c1", order_id="oid").params == (("order_id", "oid"),)
    assert cancelorder_call("c1", order_id=None).params == (("cliOrdId", "c1"),)
    paged = fills_call("2020-07-22T13:45:00.000Z")
    assert paged.last_fill_time and paged.method == "GET"
    assert paged.post_data == "lastFillTime=2020-07-22T13%3A45%3A00.000Z"
    assert not fills_call().last_fill_time
    assert not instruments_call().signed


# ---------------------------------------------------------------- signing


def venue_authent(secret: str, path: str, nonce: str, post_data: str) -> str:
    """The recipe from Kraken's Futures REST guide, written out independently."""
    digest = hashlib.sha256((post_data + nonce + path).encode()).digest()
    return base64.b64encode(
        hmac.new(base64.b64decode(secret), digest, hashlib.sha512).digest()
    ).decode()


def test_signed_headers_sign_the_exact_wire_parameters_without_the_prefix() -> None:
    call = sendorder_call(new_order(), "PF_XBTUSD")
    headers = signed_headers(call, "the-key", SECRET, "1700000000001")
    assert headers["APIKey"] == "the-key" and headers["Nonce"] == "1700000000001"
    assert headers["Authent"] == venue_authent(
        SECRET, "/api/v3/sendorder", "1700000000001", call.post_data
    )
    get = RestCall("GET", "openorders")
    assert signed_headers(get, "k", SECRET, "5")["Authent"] == venue_authent(
        SECRET, "/api/v3/openorders", "5", ""
    )


@given(st.lists(st.integers(min_value=0, max_value=2**45), min_size=1, max_size=50))
def test_nonces_strictly_increase_even_when_the_clock_goes_back(readings: list[int]) -> None:
    source = NonceSource(readings[0])
    nonces = [int(source.next(ms)) for ms in readings]
    assert all(b > a for a, b in pairwise(nonces))
    assert all(n >= ms for n, ms in zip(nonces, readings, strict=True))


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("postWouldExecute", ErrorCode.INVALID_ORDER),
        ("iocWouldNotExecute", ErrorCode.NO_LIQUIDITY),
        ("insufficientAvailableFunds", ErrorCode.INVALID_ORDER),
        ("invalidPrice", ErrorCode.PRICE_OFF_TICK),
        ("invalidSize", ErrorCode.QTY_OFF_LOT),
        ("clientOrderIdAlreadyExist", ErrorCode.DUPLICATE_ORDER),
        ("clientOrderIdTooBig", ErrorCode.INVALID_FIELD),
        ("marketSuspended", ErrorCode.UNAVAILABLE),
        ("tooManyOrders", ErrorCode.FLOOD),
        ("orderForEditNotFound", ErrorCode.ORDER_NOT_FOUND),
        ("someStatusFromTheFuture", ErrorCode.INVALID_ORDER),
    ],
)
def test_failing_statuses_become_coded_rejections(status: str, code: ErrorCode) -> None:
    rejection = rejection_for_status("sendorder", status, client_order_id="c9")
    assert rejection is not None
    assert (rejection.code, rejection.client_order_id) == (code, "c9")
    assert status in rejection.message and rejection.message.startswith("Kraken Futures refused")


def test_every_documented_status_has_a_sentence() -> None:
    for status, (_, meaning) in STATUS_REJECTIONS.items():
        rejection = rejection_for_status("editorder", status)
        assert rejection is not None and meaning in rejection.message


def test_success_statuses_per_endpoint() -> None:
    for status in ("placed", "partiallyFilled", "filled", "cancelled"):
        assert rejection_for_status("sendorder", status) is None
    assert rejection_for_status("editorder", "edited") is None
    assert rejection_for_status("cancelorder", "cancelled") is None
    filled = rejection_for_status("cancelorder", "filled")
    assert filled is not None and filled.code is ErrorCode.ORDER_NOT_CANCELLABLE
    gone = rejection_for_status("cancelorder", "notFound")
    assert gone is not None and gone.code is ErrorCode.ORDER_NOT_FOUND


def test_the_documented_ioc_rejection_arrives_as_success(exchange_data: Path) -> None:
    docs = schemas.decode((exchange_data / "kraken_futures/futures_doc_examples.json").read_text())
    answer = schemas.parse_rest_response(docs["rest_sendorder_rejected_ioc"])
    assert isinstance(answer, schemas.SendOrderResponse) and answer.result == "success"
    rejection = rejection_for_status("sendorder", answer.sendStatus.status)
    assert rejection is not None and rejection.code is ErrorCode.NO_LIQUIDITY


def test_result_errors_say_what_to_do() -> None:
    limited = error_for_result("sendorder", "apiLimitExceeded", client_order_id="c")
    assert isinstance(limited, OrderRejectedError) and limited.code is ErrorCode.RATE_LIMITED
    query = error_for_result("openorders", "apiLimitExceeded")
    assert isinstance(query, RetryableAdapterError) and query.retry_after == 10
    assert isinstance(error_for_result("fills", "authenticationError"), FatalAdapterError)
    assert isinstance(error_for_result("sendorder", "nonceBelowThreshold"), RetryableAdapterError)
    bad = error_for_result("sendorder", "invalidArgument")
    assert isinstance(bad, OrderRejectedError) and bad.code is ErrorCode.INVALID_ORDER
    assert isinstance(error_for_result("accounts", "invalidArgument"), FatalAdapterError)
    gone = error_for_result("cancelorder", "notFound")
    assert isinstance(gone, OrderRejectedError) and gone.code is ErrorCode.ORDER_NOT_FOUND


def test_http_failures() -> None:
    assert error_for_http("fills", 200, None) is None
    assert isinstance(error_for_http("fills", 401, None), FatalAdapterError)
    assert isinstance(error_for_http("fills", 502, None), RetryableAdapterError)
    assert isinstance(error_for_http("fills", 429, None), RetryableAdapterError)
    assert isinstance(error_for_http("fills", 404, None), FatalAdapterError)


def test_local_refusal_names_the_numbers() -> None:
    order = local_refusal(
        RestCall("POST", "sendorder"),
        cost=10,
        spent=470,
        limit=470,
        reserve=30,
        window=10.0,
        retry_after=3.25,
        client_order_id="c1",
    )
    assert isinstance(order, OrderRejectedError) and order.code is ErrorCode.RATE_LIMITED
    assert order.message == (
        "sendorder refused locally to stay under Kraken Futures' rate limit: it costs 10 "
        "units and 470 of the 470 units this key may spend on it per 10 s are used (30 more "
        "are kept for cancels); retry in 3.2 s"
    )
    query = local_refusal(
        RestCall("GET", "openorders"),
        cost=2,
        spent=499,
        limit=470,
        reserve=30,
        window=10.0,
        retry_after=1.0,
        client_order_id=None,
    )
    assert isinstance(query, RetryableAdapterError) and query.retry_after == 1.0


# ---------------------------------------------------------------- wire additions


def test_open_orders_snapshot_and_edit_answers_parse() -> None:
    snapshot = schemas.parse_frame(
        schemas.decode(
            '{"feed":"open_orders_snapshot","account":"a","orders":[{"instrument":"PF_XBTUSD",'
            '"time":1612275024153,"last_update_time":1612275024153,"qty":1000,"filled":0,'
            '"limit_price":34900.0,"stop_price":13789.0,"type":"stop","order_id":"o-1",'
            '"cli_ord_id":"c-1","direction":0,"reduce_only":false}]}'
        )
    )
    assert isinstance(snapshot, schemas.OpenOrdersSnapshot)
    (order,) = snapshot.orders
    assert (order.order_id, order.cli_ord_id, order.limit_price) == (
        "o-1",
        "c-1",
        Decimal("34900.0"),
    )
    edit = schemas.parse_rest_response(
        {
            "result": "success",
            "editStatus": {"status": "edited", "orderId": "o-1", "orderEvents": []},
            "serverTime": "2019-09-05T16:47:47.521Z",
        }
    )
    assert isinstance(edit, schemas.EditOrderResponse) and edit.editStatus.orderId == "o-1"
    with pytest.raises(MalformedMessage):
        schemas.parse_frame({"feed": "open_orders_snapshot", "orders": "nope"})


def test_parse_qsl_reads_back_what_was_signed() -> None:
    call = sendorder_call(new_order(client_order_id="a.b_c:d-e"), "PF_XBTUSD")
    assert dict(parse_qsl(call.post_data))["cliOrdId"] == "a.b_c:d-e"
