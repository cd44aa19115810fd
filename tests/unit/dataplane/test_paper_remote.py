"""The paper exchange's client, without sockets: error classification, reconnect backoff,
stream keys and frames, and what the venue's wire shapes accept."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from protocol.codec import encode
from protocol.errors import ErrorCode
from protocol.market import BookSnapshot, CandleInterval, Channel, Ticker
from protocol.orders import OrderFilled
from workers.broker.adapters.base import (
    FatalAdapterError,
    OrderRejectedError,
    RetryableAdapterError,
)
from workers.broker.adapters.paper import wire
from workers.broker.adapters.paper.remote import (
    AckFrame,
    ErrorFrame,
    EventsFrame,
    Hello,
    RemotePaperAdapter,
    StreamKey,
    StreamProtocolError,
    error_for_status,
    parse_frame,
    read_paper_url,
)

from .conftest import make_engine, order


def coded(code: str, message: str = "why") -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("price_off_tick", 400),
        ("qty_off_lot", 400),
        ("unknown_instrument", 400),
        ("invalid_field", 400),
        ("duplicate_order", 409),
        ("order_not_cancellable", 409),
        ("order_not_found", 404),
    ],
)
def test_a_coded_refusal_of_one_request_is_a_rejection_with_that_code(
    code: str, status: int
) -> None:
    error = error_for_status(
        status, coded(code, "fix it"), what="POST orders", client_order_id="c1"
    )
    assert isinstance(error, OrderRejectedError)
    assert error.code is ErrorCode(code)
    assert error.message == "fix it" and error.client_order_id == "c1"


def test_a_refused_token_is_fatal_and_never_rejected_or_retried() -> None:
    assert isinstance(error_for_status(401, coded("unauthorized"), what="x"), FatalAdapterError)
    assert isinstance(error_for_status(401, b"", what="open stream"), FatalAdapterError)


def test_an_account_the_venue_keeps_for_itself_is_fatal() -> None:
    assert isinstance(error_for_status(403, coded("forbidden"), what="x"), FatalAdapterError)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_overload_and_server_errors_are_retryable_with_the_advised_wait(status: int) -> None:
    error = error_for_status(status, b"<html>bad gateway</html>", what="x", retry_after="2.5")
    assert isinstance(error, RetryableAdapterError)
    assert error.retry_after == 2.5


def test_answers_that_are_not_this_protocol_are_fatal() -> None:
    # An unknown route, an uncoded 4xx and a method the venue lacks: the API does not match.
    assert isinstance(error_for_status(404, coded("not_found"), what="x"), FatalAdapterError)
    assert isinstance(error_for_status(400, b"Bad Request", what="x"), FatalAdapterError)
    assert isinstance(error_for_status(405, coded("invalid_field"), what="x"), FatalAdapterError)
    assert isinstance(error_for_status(404, coded("unknown_account"), what="x"), FatalAdapterError)


def test_an_unreadable_retry_after_is_ignored() -> None:
    error = error_for_status(503, b"", what="x", retry_after="soon")
    assert isinstance(error, RetryableAdapterError) and error.retry_after is None


# ---------------------------------------------------------------- stream keys and frames


def test_stream_keys_are_normalised_the_way_the_venue_keys_streams() -> None:
    assert StreamKey.of("BTC/USD", Channel.BOOK) == StreamKey.of("BTC/USD", Channel.BOOK, 50)
    assert StreamKey.of("BTC/USD", Channel.TICKER, depth=5).depth is None
    assert StreamKey.of("BTC/USD", Channel.TRADES, interval=CandleInterval.M1).interval is None
    key = StreamKey.of("BTC/USD", Channel.CANDLES, interval=CandleInterval.M5)
    assert key.request("subscribe", 7) == {
        "op": "subscribe",
        "id": 7,
        "instrument": "BTC/USD",
        "channel": "candles",
        "interval": "5m",
    }
    assert wire.StreamRequest.model_validate(key.request("subscribe", 7)).interval == "5m"


def test_candles_without_an_interval_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(OrderRejectedError) as caught:
        StreamKey.of("BTC/USD", Channel.CANDLES)
    assert caught.value.code is ErrorCode.MISSING_FIELD


def test_an_events_frame_carries_protocol_events_in_order() -> None:
    engine = make_engine(taker_bps="20")
    engine.submit(order("m1", "a", "sell", "1", "100"))
    events = engine.submit(order("t1", "b", "buy", "1", "100"))
    ticker = Ticker(instrument="BTC/USD", bid="99.5", ask="100", ts=5)
    snapshot = BookSnapshot(instrument="BTC/USD", bids=[], asks=[], update_id=3, ts=6)
    frame = wire.events_frame([encode(e) for e in [*events, ticker, snapshot]])
    parsed = parse_frame(frame)
    assert isinstance(parsed, EventsFrame)
    assert parsed.events == [*events, ticker, snapshot]
    filled = [e for e in parsed.events if isinstance(e, OrderFilled) and e.account == "b"]
    assert filled[0].fill.fee == Decimal("0.2")  # exact decimals survive the trip


def test_control_frames_parse() -> None:
    assert parse_frame(wire.hello_frame("acct", 42)) == Hello("acct", 42)
    assert parse_frame(wire.ack_frame(3)) == AckFrame(3)
    error = parse_frame(wire.error_frame(4, ErrorCode.UNKNOWN_INSTRUMENT, "no such", "instrument"))
    assert isinstance(error, ErrorFrame) and error.id == 4
    assert error.error.code is ErrorCode.UNKNOWN_INSTRUMENT and error.error.field == "instrument"


@pytest.mark.parametrize(
    "frame",
    [
        b"not json",
        b"[]",
        b'{"type":"surprise"}',
        b'{"type":"events","events":[{"type":"ticker"}]}',
        b'{"type":"events","events":[{"type":"order_gone"}]}',
        b'{"type":"ack","id":"seven"}',
        b'{"type":"error","id":1,"error":{"code":"no_such_code","message":"x"}}',
        b'{"type":"hello"}',
    ],
)
def test_unreadable_frames_are_reported_not_guessed(frame: bytes) -> None:
    with pytest.raises(StreamProtocolError):
        parse_frame(frame)


# ---------------------------------------------------------------- wire shapes and set-up


def test_account_names_follow_the_venue_rule_and_house_names_are_reserved() -> None:
    assert wire.account_problem("paper-1.A_b") is None
    assert wire.account_problem("x" * 64) is None
    for bad in ("", "x" * 65, "a/b", "a b", "ü"):
        problem = wire.account_problem(bad)
        assert problem is not None and problem[0] is ErrorCode.INVALID_FIELD
    problem = wire.account_problem("house-maker")
    assert problem is not None and problem[0] is ErrorCode.FORBIDDEN


def test_the_adapter_refuses_an_unusable_account_or_token_at_construction() -> None:
    with pytest.raises(ValueError, match="house"):
        RemotePaperAdapter("http://127.0.0.1:1", "token", "house-taker")
    with pytest.raises(ValueError, match="token"):
        RemotePaperAdapter("http://127.0.0.1:1", "", "algo")


async def test_calls_before_connect_are_fatal_not_retried() -> None:
    adapter = RemotePaperAdapter("http://127.0.0.1:1", "token", "algo")
    with pytest.raises(FatalAdapterError, match="connect"):
        await adapter.open_orders()
    await adapter.close()
    with pytest.raises(FatalAdapterError, match="closed"):
        await adapter.connect()


def test_a_modify_must_change_something() -> None:
    assert wire.ModifyRequest.model_validate({"qty": "2"}).qty == Decimal(2)
    with pytest.raises(ValueError, match="qty and/or price"):
        wire.ModifyRequest.model_validate({})


def test_the_url_file_is_read_stripped_and_absent_is_none(tmp_path: Path) -> None:
    assert read_paper_url(tmp_path) is None
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "paper.url").write_text("http://127.0.0.1:5555\n")
    assert read_paper_url(tmp_path) == "http://127.0.0.1:5555"
