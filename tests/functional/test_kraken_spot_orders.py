"""Orders through `KrakenSpotAdapter` against the fake Kraken venue on loopback.

The venue verifies every REST signature and every WebSocket token like Kraken does, so an
accepted order proves the adapter signs correctly. Every wait is for an event, bounded.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from protocol.errors import ErrorCode
from protocol.market import Side
from protocol.orders import (
    CancelReason,
    NewOrder,
    OrderAccepted,
    OrderCancelled,
    OrderFilled,
    OrderModified,
    OrderPartiallyFilled,
    TimeInForce,
)
from tests.fakes.kraken_spot import EventRecorder, FakeKrakenSpot
from workers.broker.adapters.base import (
    ConnectionChanged,
    FatalAdapterError,
    OrderRejectedError,
    RetryableAdapterError,
)
from workers.broker.adapters.kraken.adapter import KrakenSpotAdapter
from workers.broker.adapters.kraken.config import KrakenSpotConfig

D = Decimal
ACCOUNT = "kraken-test"
BEST_ASK = D("29430.3")  # top of the recorded book before any update is played
BEST_ASK_QTY = D("8.25215653")


def make_config(venue: FakeKrakenSpot, **overrides: Any) -> KrakenSpotConfig:
    settings: dict[str, Any] = {
        "account": ACCOUNT,
        **venue.client_settings(),
        "request_timeout_s": 2.0,
        "connect_timeout_s": 5.0,
        "reconnect": {"initial_s": 0.05, "max_s": 0.5, "maintenance_s": 0.3},
    }
    settings.update(overrides)
    return KrakenSpotConfig.model_validate(settings)


def buy(cid: str, qty: str = "0.0100", price: str = "29000.0", **extra: Any) -> NewOrder:
    return NewOrder.model_validate(
        {
            "client_order_id": cid,
            "account": ACCOUNT,
            "instrument": "BTC/USD",
            "side": Side.BUY,
            "qty": qty,
            "price": price,
            **extra,
        }
    )


@pytest.fixture
async def venue() -> AsyncIterator[FakeKrakenSpot]:
    async with FakeKrakenSpot(
        rate_threshold=1000.0, balances={"USD": D("1000000"), "BTC": D("10")}
    ) as fake:
        yield fake


@pytest.fixture
async def adapter(venue: FakeKrakenSpot) -> AsyncIterator[KrakenSpotAdapter]:
    live = KrakenSpotAdapter(make_config(venue))
    await live.connect()
    try:
        yield live
    finally:
        await live.close()


@pytest.fixture
async def events(adapter: KrakenSpotAdapter) -> AsyncIterator[EventRecorder]:
    async with EventRecorder(adapter.events()) as recorder:
        yield recorder


def of_order(cid: str) -> Any:
    return lambda event: event.client_order_id == cid


async def test_orders_placed_and_cancelled_pass_the_venues_signature_check(
    venue: FakeKrakenSpot, adapter: KrakenSpotAdapter, events: EventRecorder
) -> None:
    ack = await adapter.place_order(buy("sig-1"))
    accepted = await events.wait_for(OrderAccepted, of_order("sig-1"))
    assert (accepted.order_id, accepted.qty, accepted.price) == (
        ack.order_id,
        D("0.01"),
        D("29000"),
    )
    assert venue.order(ack.order_id).cl_ord_id == "sig-1"

    await adapter.cancel_order("sig-1")
    cancelled = await events.wait_for(OrderCancelled, of_order("sig-1"))
    assert cancelled.reason is CancelReason.REQUESTED and cancelled.remaining_qty == 0
    assert venue.order(ack.order_id).status == "canceled"
    # The private socket was opened with a token from a signed REST call, and the venue
    # refused no signature or nonce along the way.
    assert [name for name, _ in venue.rest_calls][:1] == ["GetWebSocketsToken"]
    assert venue.rest_refusals == []
    with pytest.raises(OrderRejectedError) as again:
        await adapter.cancel_order("sig-1")
    assert again.value.code is ErrorCode.ORDER_NOT_CANCELLABLE


async def test_executions_flow_back_as_order_events_with_fills(
    venue: FakeKrakenSpot, adapter: KrakenSpotAdapter, events: EventRecorder
) -> None:
    qty = BEST_ASK_QTY + D("0.5")
    ack = await adapter.place_order(
        buy("fill-1", qty=format(qty, "f"), price=format(BEST_ASK, "f"))
    )
    partial = await events.wait_for(OrderPartiallyFilled, of_order("fill-1"))
    taker = venue.trades[-1]
    assert (partial.fill.fill_id, partial.fill.qty, partial.fill.price) == (
        taker.txid,
        BEST_ASK_QTY,
        BEST_ASK,
    )
    assert (partial.fill.fee, partial.fill.liquidity) == (taker.fee, "taker")
    assert (partial.filled_qty, partial.remaining_qty) == (BEST_ASK_QTY, D("0.5"))

    await venue.fill(ack.order_id)  # a counterparty takes the resting rest
    filled = await events.wait_for(OrderFilled, of_order("fill-1"))
    maker = venue.trades[-1]
    assert (filled.fill.fill_id, filled.fill.qty, filled.fill.liquidity) == (
        maker.txid,
        D("0.5"),
        "maker",
    )
    assert filled.filled_qty == qty and filled.remaining_qty == 0
    assert [type(e) for e in events.events if getattr(e, "client_order_id", None) == "fill-1"] == [
        OrderAccepted,
        OrderPartiallyFilled,
        OrderFilled,
    ]
    # The same fills, from REST, for reconciliation.
    fills = await adapter.fills_since(0)
    assert [(f.fill_id, f.client_order_id, f.qty) for f in fills] == [
        (taker.txid, "fill-1", BEST_ASK_QTY),
        (maker.txid, "fill-1", D("0.5")),
    ]
    balances = await adapter.balances()
    assert balances.cash["BTC"] == D("10") + qty
    assert balances.cash["USD"] == venue.balances["USD"]


async def test_an_ioc_remainder_is_cancelled_with_that_reason(
    adapter: KrakenSpotAdapter, events: EventRecorder
) -> None:
    qty = BEST_ASK_QTY + D("1")
    await adapter.place_order(
        buy(
            "ioc-1",
            qty=format(qty, "f"),
            price=format(BEST_ASK, "f"),
            time_in_force=TimeInForce.IOC,
        )
    )
    cancelled = await events.wait_for(OrderCancelled, of_order("ioc-1"))
    assert cancelled.reason is CancelReason.IOC_REMAINDER
    assert cancelled.filled_qty == BEST_ASK_QTY


async def test_modify_amends_the_order_in_place(
    venue: FakeKrakenSpot, adapter: KrakenSpotAdapter, events: EventRecorder
) -> None:
    ack = await adapter.place_order(buy("amend-1"))
    await events.wait_for(OrderAccepted, of_order("amend-1"))
    await adapter.modify_order("amend-1", qty=D("0.0200"), price=D("29100.5"))
    modified = await events.wait_for(OrderModified, of_order("amend-1"))
    assert (modified.qty, modified.price, modified.order_id) == (
        D("0.02"),
        D("29100.5"),
        ack.order_id,
    )
    order = venue.order(ack.order_id)
    assert (order.qty, order.limit_price) == (D("0.02"), D("29100.5"))
    with pytest.raises(OrderRejectedError) as off_tick:
        await adapter.modify_order("amend-1", price=D("29100.55"))
    assert off_tick.value.code is ErrorCode.PRICE_OFF_TICK
    assert "EOrder:Tick size check failed" in off_tick.value.message


async def test_resending_a_client_order_id_places_nothing_new(
    venue: FakeKrakenSpot, adapter: KrakenSpotAdapter
) -> None:
    first = await adapter.place_order(buy("dup-1"))
    second = await adapter.place_order(buy("dup-1"))
    assert second.order_id == first.order_id
    assert len(venue.requests_of("add_order")) == 1


async def test_a_long_client_order_id_travels_as_a_uuid_and_comes_back_as_ours(
    venue: FakeKrakenSpot, adapter: KrakenSpotAdapter, events: EventRecorder
) -> None:
    cid = "strategy-alpha:order-2024-000000017"
    ack = await adapter.place_order(buy(cid))
    assert uuid.UUID(venue.order(ack.order_id).cl_ord_id or "")
    accepted = await events.wait_for(OrderAccepted, of_order(cid))
    assert accepted.order_id == ack.order_id
    await adapter.cancel_order(cid)
    await events.wait_for(OrderCancelled, of_order(cid))


async def test_venue_refusals_keep_kraken_text_and_get_a_code(
    venue: FakeKrakenSpot, adapter: KrakenSpotAdapter
) -> None:
    with pytest.raises(OrderRejectedError) as small:
        await adapter.place_order(buy("small-1", qty="0.00001"))
    assert small.value.code is ErrorCode.QTY_BELOW_MIN
    assert "EOrder:Order minimum not met" in small.value.message
    venue.fail_next("add_order", "EOrder:Insufficient funds")
    with pytest.raises(OrderRejectedError) as funds:
        await adapter.place_order(buy("funds-1"))
    assert funds.value.code is ErrorCode.INVALID_ORDER and funds.value.client_order_id == "funds-1"
    # A refused id is free again: the next attempt is a new order.
    assert (await adapter.place_order(buy("funds-1"))).order_id
    with pytest.raises(OrderRejectedError) as unknown:
        await adapter.place_order(buy("x-1").model_copy(update={"instrument": "FOO/BAR"}))
    assert unknown.value.code is ErrorCode.UNKNOWN_INSTRUMENT


async def test_a_rate_limited_order_is_refused_locally_before_the_venue_would(
    venue: FakeKrakenSpot,
) -> None:
    """Starter tier: threshold 60, 8 kept for cancels. With the clock frozen nothing decays,
    so exactly 52 adds fit; the 53rd never leaves the process, and cancels still go out."""
    live = KrakenSpotAdapter(make_config(venue), clock=lambda: 1000.0)
    await live.connect()
    try:
        for n in range(52):
            await live.place_order(buy(f"rl-{n}", price="20000.0"))
        with pytest.raises(OrderRejectedError) as refused:
            await live.place_order(buy("rl-52", price="20000.0"))
        assert refused.value.code is ErrorCode.RATE_LIMITED
        message = refused.value.message
        assert "BTC/USD" in message and "52.00" in message and "60" in message and "8" in message
        assert len(venue.requests_of("add_order")) == 52
        for n in range(3):  # each costs 8 on a young order: cancels are never refused here
            await live.cancel_order(f"rl-{n}")
        assert len(venue.requests_of("cancel_order")) == 3
        with pytest.raises(OrderRejectedError) as amend:
            await live.modify_order("rl-10", price=D("20000.5"))
        assert amend.value.code is ErrorCode.RATE_LIMITED
        assert live.stats.rate_refusals == 2
    finally:
        await live.close()


async def test_the_venues_own_rate_limit_refusal_becomes_a_coded_rejection() -> None:
    async with FakeKrakenSpot(rate_threshold=3.0) as venue:
        live = KrakenSpotAdapter(make_config(venue))
        await live.connect()
        try:
            for n in range(3):
                await live.place_order(buy(f"v-{n}"))
            with pytest.raises(OrderRejectedError) as refused:
                await live.place_order(buy("v-3"))
            assert refused.value.code is ErrorCode.RATE_LIMITED
            assert "EOrder:Rate limit exceeded" in refused.value.message
            assert live.stats.rate_refusals == 0  # the venue refused it, not the adapter
        finally:
            await live.close()


@pytest.mark.parametrize(
    ("field", "error"),
    [("api_secret", "EAPI:Invalid signature"), ("api_key", "EAPI:Invalid key")],
)
async def test_wrong_credentials_are_fatal(venue: FakeKrakenSpot, field: str, error: str) -> None:
    wrong = "d3Jvbmc=" if field == "api_secret" else "someone-else"
    live = KrakenSpotAdapter(make_config(venue, **{field: wrong}))
    with pytest.raises(FatalAdapterError, match=error):
        await live.connect()
    await live.close()
    assert venue.rest_refusals == [("GetWebSocketsToken", error)]
    assert wrong not in str(venue.rest_refusals)


async def test_a_5xx_or_a_slow_answer_is_retryable_and_the_order_is_not_lost(
    venue: FakeKrakenSpot,
) -> None:
    live = KrakenSpotAdapter(make_config(venue, request_timeout_s=0.3))
    await live.connect()
    try:
        async with EventRecorder(live.events()) as seen:
            venue.fail_rest(1, status=503)
            with pytest.raises(RetryableAdapterError, match="HTTP 503"):
                await live.balances()
            assert (await live.balances()).cash["USD"] == D("1000000")

            venue.slow(0.6, "ws")
            with pytest.raises(RetryableAdapterError, match="no answer"):
                await live.place_order(buy("slow-1"))
            venue.slow(0.0)
            accepted = await seen.wait_for(OrderAccepted, of_order("slow-1"))
            ack = await live.place_order(buy("slow-1"))  # the re-send finds the order
            assert ack.order_id == accepted.order_id
            assert len(venue.requests_of("add_order")) == 1
            assert not seen.of(ConnectionChanged)
    finally:
        await live.close()


async def test_a_cancel_goes_by_rest_while_the_private_socket_is_down(
    venue: FakeKrakenSpot, adapter: KrakenSpotAdapter, events: EventRecorder
) -> None:
    ack = await adapter.place_order(buy("rest-1"))
    await events.wait_for(OrderAccepted, of_order("rest-1"))
    venue.refuse_connections("private")
    mark = events.mark()
    await venue.drop_connections("private")
    await events.wait_for(ConnectionChanged, lambda e: not e.connected, after=mark)

    await adapter.cancel_order("rest-1")
    assert venue.order(ack.order_id).status == "canceled"
    assert any(
        name == "CancelOrder" and params.get("txid") == ack.order_id
        for name, params in venue.rest_calls
    )
    with pytest.raises(RetryableAdapterError, match="private Kraken connection is down"):
        await adapter.place_order(buy("rest-2"))

    venue.accept_connections("private")
    await events.wait_for(ConnectionChanged, lambda e: e.connected, after=mark)
    cancelled = await events.wait_for(OrderCancelled, of_order("rest-1"))  # from the REST resync
    assert cancelled.reason is CancelReason.REQUESTED
