"""Connection trouble between `KrakenSpotAdapter` and the fake Kraken venue: dropped and
silent sockets, maintenance closes, idle timeouts, lost execution reports. The adapter
reconnects on its own, tells its consumer, resyncs books and recovers order events from
REST -- each fill exactly once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from protocol.market import BookDelta, BookSnapshot, Channel, Side
from protocol.orders import NewOrder, OrderAccepted, OrderFilled, OrderPartiallyFilled
from tests.fakes.kraken_spot import EventRecorder, FakeKrakenSpot
from workers.broker.adapters.base import ConnectionChanged
from workers.broker.adapters.kraken.adapter import KrakenSpotAdapter
from workers.broker.adapters.kraken.config import KrakenSpotConfig

D = Decimal
ACCOUNT = "kraken-rc"


def make_config(venue: FakeKrakenSpot, **overrides: Any) -> KrakenSpotConfig:
    settings: dict[str, Any] = {
        "account": ACCOUNT,
        **venue.client_settings(),
        "request_timeout_s": 2.0,
        "reconnect": {"initial_s": 0.05, "max_s": 0.3, "maintenance_s": 0.4},
    }
    settings.update(overrides)
    return KrakenSpotConfig.model_validate(settings)


def buy(cid: str, qty: str = "0.0100", price: str = "29000.0") -> NewOrder:
    return NewOrder(
        client_order_id=cid,
        account=ACCOUNT,
        instrument="BTC/USD",
        side=Side.BUY,
        qty=D(qty),
        price=D(price),
    )


def went(connected: bool) -> Any:
    return lambda event: event.connected is connected


class BookMirror:
    def __init__(self) -> None:
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}

    def __call__(self, event: Any) -> None:
        if isinstance(event, BookSnapshot):
            self.bids, self.asks = dict(event.bids), dict(event.asks)
        elif isinstance(event, BookDelta):
            for side, levels in ((self.bids, event.bids), (self.asks, event.asks)):
                for price, qty in levels:
                    if qty:
                        side[price] = qty
                    else:
                        del side[price]

    def top(self) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        return sorted(self.bids.items(), reverse=True), sorted(self.asks.items())


@pytest.fixture
async def venue() -> AsyncIterator[FakeKrakenSpot]:
    async with FakeKrakenSpot(heartbeat_s=0.2) as fake:
        yield fake


@pytest.fixture
async def adapter(venue: FakeKrakenSpot) -> AsyncIterator[KrakenSpotAdapter]:
    live = KrakenSpotAdapter(make_config(venue))
    await live.connect()
    try:
        yield live
    finally:
        await live.close()


async def test_a_dropped_public_connection_is_reestablished_and_the_book_resynced(
    venue: FakeKrakenSpot, adapter: KrakenSpotAdapter
) -> None:
    mirror = BookMirror()
    async with EventRecorder(adapter.events(), mirror) as events:
        await adapter.subscribe("BTC/USD", Channel.BOOK)
        await events.wait_for(BookSnapshot)
        await venue.play(50)
        await events.wait_until(lambda: mirror.top() == venue.book(), what="first sync")

        mark = events.mark()
        await venue.drop_connections("public")
        await venue.play(40)  # the market moves on while we are away
        lost = await events.wait_for(ConnectionChanged, went(False), after=mark)
        back = await events.wait_for(ConnectionChanged, went(True), after=mark)
        fresh = await events.wait_for(BookSnapshot, after=mark)
        assert "public" in lost.reason and "public" in back.reason
        assert events.events.index(back) < events.events.index(fresh)
        await venue.play(40)
        await events.wait_until(lambda: mirror.top() == venue.book(), what="resync after reconnect")
        assert venue.connects["public"] == 2 and venue.connects["private"] == 1
        assert adapter.feed.stats.checksum_mismatches == 0


async def test_a_fill_during_a_private_outage_is_recovered_from_rest_once(
    venue: FakeKrakenSpot, adapter: KrakenSpotAdapter
) -> None:
    async with EventRecorder(adapter.events()) as events:
        ack = await adapter.place_order(buy("out-1"))
        await events.wait_for(OrderAccepted)
        venue.refuse_connections("private")
        mark = events.mark()
        await venue.drop_connections("private")
        await events.wait_for(ConnectionChanged, went(False), after=mark)

        trade = await venue.fill(ack.order_id)  # reported to nobody
        venue.accept_connections("private")
        await events.wait_for(ConnectionChanged, went(True), after=mark)
        filled = await events.wait_for(OrderFilled, after=mark)
        assert (filled.fill.fill_id, filled.fill.qty, filled.fill.price) == (
            trade.txid,
            D("0.01"),
            D("29000.0"),
        )
        assert (filled.fill.fee, filled.fill.liquidity) == (trade.fee, "maker")
        called = [name for name, _ in venue.rest_calls]
        assert {"OpenOrders", "QueryOrders", "TradesHistory"} <= set(called)
        await venue.wait_until(lambda: adapter.stats.order_resyncs >= 1, what="resync done")
        assert len(events.of(OrderFilled)) == 1


async def test_a_gap_in_the_executions_sequence_is_repaired_from_rest(
    venue: FakeKrakenSpot, adapter: KrakenSpotAdapter
) -> None:
    async with EventRecorder(adapter.events()) as events:
        first = await adapter.place_order(buy("gap-1", qty="0.0200"))
        await events.wait_for(OrderAccepted)
        venue.skip_next_execution()
        trade = await venue.fill(first.order_id, qty=D("0.0050"))  # this report is lost
        await adapter.place_order(buy("gap-2"))  # its reports reveal the jump
        partial = await events.wait_for(OrderPartiallyFilled)
        assert (partial.client_order_id, partial.fill.fill_id) == ("gap-1", trade.txid)
        assert (partial.filled_qty, partial.remaining_qty) == (D("0.005"), D("0.015"))
        assert adapter.stats.executions_gaps == 1
        await events.wait_for(OrderAccepted, lambda e: e.client_order_id == "gap-2")


async def test_keepalive_pings_hold_an_idle_connection_open() -> None:
    async with FakeKrakenSpot(heartbeat_s=0.05, idle_timeout_s=0.4) as venue:
        live = KrakenSpotAdapter(make_config(venue, ping_interval_s=0.1))
        await live.connect()
        try:
            await venue.wait_until(
                lambda: (
                    all(c.pings >= 8 for c in venue.connections) and len(venue.connections) == 2
                ),
                what="eight pings on each socket",
            )
            assert venue.connects == {"public": 1, "private": 1}
            assert live.connected
        finally:
            await live.close()


async def test_without_pings_the_venue_closes_idle_sockets_and_the_adapter_comes_back() -> None:
    async with FakeKrakenSpot(heartbeat_s=0.05, idle_timeout_s=0.3) as venue:
        live = KrakenSpotAdapter(make_config(venue, ping_interval_s=30.0))
        await live.connect()
        try:
            await venue.wait_until(lambda: venue.connects["public"] >= 2, what="a reconnect")
        finally:
            await live.close()


async def test_a_quiet_socket_that_answers_pings_is_kept() -> None:
    async with FakeKrakenSpot(heartbeat_s=60.0) as venue:  # no heartbeats at all
        live = KrakenSpotAdapter(make_config(venue, stale_after_s=0.3, ping_interval_s=30.0))
        await live.connect()
        try:
            await venue.wait_until(
                lambda: (
                    len(venue.connections) == 2 and all(c.pings >= 4 for c in venue.connections)
                ),
                what="probe pings on both quiet sockets",
            )
            assert venue.connects == {"public": 1, "private": 1}
        finally:
            await live.close()


async def test_a_black_holed_socket_is_given_up_and_replaced(venue: FakeKrakenSpot) -> None:
    live = KrakenSpotAdapter(make_config(venue, stale_after_s=0.3, ping_interval_s=30.0))
    await live.connect()
    try:
        async with EventRecorder(live.events()) as events:
            venue.stall_connections("private")
            lost = await events.wait_for(ConnectionChanged, went(False))
            assert "private: nothing received for 0.3s" in lost.reason
            await events.wait_for(ConnectionChanged, went(True))
    finally:
        await live.close()


async def test_after_a_maintenance_close_the_adapter_waits_before_reconnecting(
    venue: FakeKrakenSpot, adapter: KrakenSpotAdapter
) -> None:
    async with EventRecorder(adapter.events()) as events:
        await venue.maintenance_close("public")
        await events.wait_for(ConnectionChanged, went(False))
        closed_at = time.monotonic()
        await events.wait_for(ConnectionChanged, went(True))
        assert time.monotonic() - closed_at >= 0.4 - 0.05  # maintenance_s, not initial_s


async def test_reconnect_attempts_stop_at_the_attempt_budget() -> None:
    async with FakeKrakenSpot() as venue:
        config = make_config(
            venue, reconnect={"initial_s": 0.01, "max_s": 0.02, "max_attempts_per_10min": 4}
        )
        live = KrakenSpotAdapter(config)
        await live.connect()  # two attempts: public and private
        try:
            venue.refuse_connections("all")
            await venue.drop_connections("public")
            await venue.wait_until(lambda: sum(venue.attempts.values()) == 4, what="the budget")
            # Backoff alone would allow dozens more attempts in this time.
            with pytest.raises(AssertionError):
                await venue.wait_until(lambda: sum(venue.attempts.values()) > 4, timeout=0.5)
        finally:
            await live.close()
