"""KrakenFuturesAdapter orders against the fake Kraken Futures venue on loopback.

The fake checks every signature like the venue (``Authent`` over the exact parameters, the
signed WebSocket challenge), matches orders against the recorded PI_ETHUSD book and reports
through the real ``fills`` / ``open_orders`` feeds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from protocol.errors import ErrorCode
from protocol.market import Side
from protocol.orders import (
    CancelReason,
    Liquidity,
    NewOrder,
    OrderAccepted,
    OrderCancelled,
    OrderFilled,
    OrderModified,
    OrderPartiallyFilled,
    OrderStatus,
    TimeInForce,
)
from tests.fakes.kraken_futures import API_KEY, API_SECRET, EventTap, FakeKrakenFutures
from workers.broker.adapters.base import (
    FatalAdapterError,
    OrderRejectedError,
    RetryableAdapterError,
)
from workers.broker.adapters.kraken_futures.adapter import KrakenFuturesAdapter
from workers.broker.adapters.kraken_futures.config import KrakenFuturesConfig
from workers.broker.adapters.kraken_futures.ratelimit import DerivativesRateLimiter
from workers.broker.adapters.kraken_futures.requests import openorders_call
from workers.broker.adapters.kraken_futures.rest import FuturesRestClient

ETH = "ETH/USD"
PRODUCT = "PI_ETHUSD"
ACCOUNT = "kf-test"


def config(venue: FakeKrakenFutures, **overrides: Any) -> KrakenFuturesConfig:
    values: dict[str, Any] = {
        "account": ACCOUNT,
        "api_key": SecretStr(API_KEY),
        "api_secret": SecretStr(API_SECRET),
        "rest_url": venue.rest_url,
        "ws_url": venue.ws_url,
        "contract_type": "PI",  # the 2021 recording predates the PF contracts
        "request_timeout_s": 3.0,
        "reconnect_initial_s": 0.02,
        "reconnect_max_s": 0.2,
    }
    values.update(overrides)
    return KrakenFuturesConfig(**values)


@pytest.fixture
async def fake() -> AsyncIterator[FakeKrakenFutures]:
    venue = FakeKrakenFutures()
    await venue.start()
    yield venue
    await venue.stop()


@pytest.fixture
async def adapter(fake: FakeKrakenFutures) -> AsyncIterator[KrakenFuturesAdapter]:
    live = KrakenFuturesAdapter(config(fake))
    await live.connect()
    yield live
    await live.close()


@pytest.fixture
async def tap(adapter: KrakenFuturesAdapter) -> AsyncIterator[EventTap]:
    events = EventTap(adapter.events())
    yield events
    await events.close()


def order(
    cid: str,
    price: str | None,
    qty: str = "10",
    side: Side = Side.BUY,
    tif: TimeInForce = TimeInForce.GTC,
) -> NewOrder:
    return NewOrder(
        client_order_id=cid,
        account=ACCOUNT,
        instrument=ETH,
        side=side,
        order_type="limit" if price is not None else "market",
        qty=qty,
        price=price,
        time_in_force=tif,
    )


def best(fake: FakeKrakenFutures) -> tuple[tuple[Decimal, Decimal], tuple[Decimal, Decimal]]:
    bids, asks = fake.book_top(PRODUCT, 1)
    return bids[0], asks[0]


def of(cid: str, kind: type[Any]) -> Any:
    return lambda e: isinstance(e, kind) and e.client_order_id == cid


# ---------------------------------------------------------------- signatures


async def test_orders_placed_edited_cancelled_pass_the_signature_check(
    fake: FakeKrakenFutures, adapter: KrakenFuturesAdapter, tap: EventTap
) -> None:
    (bid, _), _ = best(fake)
    resting = bid - Decimal(50)
    ack = await adapter.place_order(order("rest-1", str(resting)))
    accepted = await tap.wait_for(of("rest-1", OrderAccepted))
    assert accepted.order_id == ack.order_id
    venue_order = fake.order_by_cli("rest-1")
    assert venue_order is not None and venue_order.order_id == ack.order_id
    assert venue_order.limit_price == resting and venue_order.qty == 10

    await adapter.modify_order("rest-1", qty=Decimal(12), price=resting - Decimal(1))
    modified = await tap.wait_for(of("rest-1", OrderModified))
    assert (modified.qty, modified.price) == (Decimal(12), resting - 1)
    assert (venue_order.qty, venue_order.limit_price) == (Decimal(12), resting - 1)

    await adapter.cancel_order("rest-1")
    cancelled = await tap.wait_for(of("rest-1", OrderCancelled))
    assert cancelled.reason is CancelReason.REQUESTED and cancelled.remaining_qty == 0
    assert venue_order.status == "cancelled"

    signed = [r for r in fake.requests if r.endpoint != "instruments"]
    assert [r.endpoint for r in signed] == ["sendorder", "editorder", "cancelorder"]
    assert all(r.authenticated for r in signed) and fake.auth_failures == 0
    assert signed[0].params["cliOrdId"] == "rest-1"
    # the venue saw one edit and one cancel: the feed's copy of each was not reported twice
    assert sum(isinstance(e, OrderModified) for e in tap.seen) == 1
    assert sum(isinstance(e, OrderCancelled) for e in tap.seen) == 1


async def test_the_fake_refuses_a_wrong_signature(fake: FakeKrakenFutures) -> None:
    wrong = "A" * 86 + "=="  # valid base64, not the account's secret
    with pytest.raises(FatalAdapterError, match="refused the private fills feed"):
        await KrakenFuturesAdapter(config(fake, api_secret=SecretStr(wrong))).connect()
    assert fake.challenge_failures >= 1

    async with aiohttp.ClientSession() as session:
        rest = FuturesRestClient(
            session,
            base_url=fake.rest_url,
            api_key=API_KEY,
            api_secret=wrong,
            limiter=DerivativesRateLimiter(),
            monotonic=lambda: 0.0,
            clock=lambda: 1_700_000_000_000_000_000,
            timeout_s=3.0,
        )
        with pytest.raises(FatalAdapterError, match="API key"):
            await rest.call(openorders_call())
    assert fake.auth_failures == 1


# ---------------------------------------------------------------- fills


@pytest.mark.parametrize("feed_first", [True, False], ids=["feed-first", "rest-first"])
async def test_fills_flow_back_as_order_events(
    fake: FakeKrakenFutures, adapter: KrakenFuturesAdapter, tap: EventTap, feed_first: bool
) -> None:
    fake.private_frames_first = feed_first
    (bid, _), (ask, ask_qty) = best(fake)

    # a marketable order takes the best ask at once
    await adapter.place_order(order("take-1", str(ask), qty="10"))
    filled = await tap.wait_for(of("take-1", OrderFilled))
    assert tap.index(await tap.wait_for(of("take-1", OrderAccepted))) < tap.index(filled)
    assert filled.fill.price == ask and filled.fill.qty == 10
    assert filled.fill.liquidity is Liquidity.TAKER
    venue_fill = next(f for f in fake.fills if f.get("cli_ord_id") == "take-1")
    assert filled.fill.fill_id == venue_fill["fill_id"]
    assert (filled.fill.fee, filled.fill.fee_currency) == (venue_fill["fee_paid"], "ETH")
    assert filled.status is OrderStatus.FILLED and filled.avg_price == ask

    # a resting order filled in two parts by the venue
    resting = bid - Decimal(20)
    await adapter.place_order(order("rest-2", str(resting), qty="30"))
    await tap.wait_for(of("rest-2", OrderAccepted))
    await fake.fill("rest-2", Decimal(12))
    part = await tap.wait_for(of("rest-2", OrderPartiallyFilled))
    assert (part.filled_qty, part.remaining_qty) == (Decimal(12), Decimal(18))
    assert part.fill.liquidity is Liquidity.MAKER
    await fake.fill("rest-2", Decimal(18), resting - Decimal(1))
    done = await tap.wait_for(of("rest-2", OrderFilled))
    assert done.filled_qty == 30 and done.remaining_qty == 0
    assert done.avg_price == (12 * resting + 18 * (resting - 1)) / 30

    # an IOC bigger than the best level: what traded is reported, the rest is cancelled
    ioc_qty = ask_qty + 5
    await adapter.place_order(order("ioc-1", str(ask), qty=str(int(ioc_qty)), tif=TimeInForce.IOC))
    rest_cancelled = await tap.wait_for(of("ioc-1", OrderCancelled))
    parts = [e for e in tap.seen if of("ioc-1", OrderPartiallyFilled)(e)]
    assert sum(p.fill.qty for p in parts) == ask_qty
    assert rest_cancelled.reason is CancelReason.IOC_REMAINDER
    assert rest_cancelled.filled_qty == ask_qty


async def test_reconciliation_reads_open_orders_fills_and_balances(
    fake: FakeKrakenFutures, adapter: KrakenFuturesAdapter, tap: EventTap
) -> None:
    (bid, _), (ask, _) = best(fake)
    await adapter.place_order(order("rest-3", str(bid - 10), qty="7"))
    await adapter.place_order(order("take-3", str(ask), qty="3"))
    await tap.wait_for(of("take-3", OrderFilled))
    await fake.fill("rest-3", Decimal(2))
    await tap.wait_for(of("rest-3", OrderPartiallyFilled))

    (snapshot,) = await adapter.open_orders()
    assert (snapshot.client_order_id, snapshot.instrument) == ("rest-3", ETH)
    assert (snapshot.filled_qty, snapshot.remaining_qty, snapshot.qty) == (
        Decimal(2), Decimal(5), Decimal(7))
    assert snapshot.status is OrderStatus.PARTIALLY_FILLED

    fills = await adapter.fills_since(0)
    assert sorted(f.client_order_id for f in fills) == ["rest-3", "take-3"]
    assert [f.ts for f in fills] == sorted(f.ts for f in fills)  # oldest first
    venue_fees = {f["fill_id"]: f["fee_paid"] for f in fake.fills}
    assert all(f.fee == venue_fees[f.fill_id] for f in fills)  # from the feed: REST has none
    assert await adapter.fills_since(fills[-1].ts + 1) == []

    balances = await adapter.balances()
    assert balances.cash == {"USD": Decimal("25000.5"), "ETH": Decimal("1.25")}
    specs = {s.instrument: s for s in await adapter.instruments()}
    assert specs[ETH].tick_size == Decimal("0.05") and specs[ETH].lot_size == 1


# ---------------------------------------------------------------- rejections


async def test_a_rejection_sent_as_success_becomes_a_coded_rejection(
    fake: FakeKrakenFutures, adapter: KrakenFuturesAdapter, tap: EventTap
) -> None:
    (bid, _), _ = best(fake)
    with pytest.raises(OrderRejectedError) as ioc:
        await adapter.place_order(order("ioc-miss", str(bid), tif=TimeInForce.IOC))
    assert ioc.value.code is ErrorCode.NO_LIQUIDITY
    assert "iocWouldNotExecute" in ioc.value.message
    assert ioc.value.client_order_id == "ioc-miss"
    assert fake.signed_requests("sendorder")[-1].answer == "iocWouldNotExecute"

    for status, code in [
        ("postWouldExecute", ErrorCode.INVALID_ORDER),
        ("insufficientAvailableFunds", ErrorCode.INVALID_ORDER),
        ("marketSuspended", ErrorCode.UNAVAILABLE),
    ]:
        fake.reject_next_order(status)
        with pytest.raises(OrderRejectedError) as forced:
            await adapter.place_order(order(f"forced-{status}", str(bid - 5)))
        assert (forced.value.code, status in forced.value.message) == (code, True)

    with pytest.raises(OrderRejectedError) as tick:
        await adapter.place_order(order("off-tick", str(bid - Decimal("0.02"))))
    assert tick.value.code is ErrorCode.PRICE_OFF_TICK

    fake.max_notional = Decimal(1000)
    with pytest.raises(OrderRejectedError, match="insufficientAvailableFunds"):
        await adapter.place_order(order("too-big", str(bid - 5)))
    fake.max_notional = None

    # the refused id stays refused; nothing about the refused orders reached the stream
    with pytest.raises(OrderRejectedError) as again:
        await adapter.place_order(order("ioc-miss", str(bid), tif=TimeInForce.IOC))
    assert again.value.code is ErrorCode.DUPLICATE_ORDER
    await adapter.place_order(order("after", str(bid - 5)))
    await tap.wait_for(of("after", OrderAccepted))
    assert {e.client_order_id for e in tap.seen} == {"after"}


async def test_a_rate_limited_order_is_refused_locally_and_cancels_still_pass(
    fake: FakeKrakenFutures, adapter: KrakenFuturesAdapter, tap: EventTap
) -> None:
    (bid, _), _ = best(fake)
    placed = 0
    with pytest.raises(OrderRejectedError) as refused:
        for placed in range(100):
            await adapter.place_order(order(f"burst-{placed}", str(bid - 10)))
    # 500 units per 10 s, 30 kept for cancels, 10 per order: 47 orders fit
    assert placed == 47
    assert refused.value.code is ErrorCode.RATE_LIMITED
    assert refused.value.client_order_id == "burst-47"
    message = refused.value.message
    assert "costs 10 units" in message and "470 of the 470 units" in message
    assert "30 more are kept for cancels" in message and "retry in" in message
    assert len(fake.signed_requests("sendorder")) == 47  # the 48th never left
    assert all(r.answer == "placed" for r in fake.signed_requests("sendorder"))

    await adapter.cancel_order("burst-0")  # uses the reserve
    await tap.wait_for(of("burst-0", OrderCancelled))
    assert fake.signed_requests("cancelorder")[-1].answer == "cancelled"


async def test_venue_failures_are_converted_at_the_boundary(
    fake: FakeKrakenFutures, adapter: KrakenFuturesAdapter, tap: EventTap
) -> None:
    (bid, _), _ = best(fake)
    fake.http_error_next("openorders", 503)
    with pytest.raises(RetryableAdapterError, match="HTTP 503"):
        await adapter.open_orders()

    fake.fail_next("sendorder", "apiLimitExceeded")
    with pytest.raises(OrderRejectedError) as limited:
        await adapter.place_order(order("venue-limited", str(bid - 5)))
    assert limited.value.code is ErrorCode.RATE_LIMITED
    assert "apiLimitExceeded" in limited.value.message
    # after the venue said so, non-cancel calls wait out the window locally
    with pytest.raises(OrderRejectedError, match="refused locally"):
        await adapter.place_order(order("venue-limited", str(bid - 5)))
    assert len(fake.signed_requests("sendorder")) == 1


async def test_an_order_whose_answer_is_lost_is_reported_by_the_feed(
    fake: FakeKrakenFutures,
) -> None:
    live = KrakenFuturesAdapter(config(fake, request_timeout_s=0.5))
    await live.connect()
    tap = EventTap(live.events())
    try:
        (bid, _), _ = best(fake)
        release = fake.stall_next("sendorder")
        with pytest.raises(RetryableAdapterError, match="did not answer"):
            await live.place_order(order("slow-1", str(bid - 5)))
        release.set()  # the venue takes it after all, and its feed says so
        accepted = await tap.wait_for(of("slow-1", OrderAccepted))
        venue_order = fake.order_by_cli("slow-1")
        assert venue_order is not None and accepted.order_id == venue_order.order_id
        ack = await live.place_order(order("slow-1", str(bid - 5)))  # idempotent: not resent
        assert ack.order_id == venue_order.order_id
        assert len(fake.signed_requests("sendorder")) == 1
    finally:
        await tap.close()
        await live.close()


async def test_calls_after_close_fail_clearly(fake: FakeKrakenFutures) -> None:
    live = KrakenFuturesAdapter(config(fake))
    await live.connect()
    await live.close()
    with pytest.raises(FatalAdapterError, match="closed"):
        await live.place_order(order("late", "100"))
    await asyncio.wait_for(live.close(), 1)  # idempotent
