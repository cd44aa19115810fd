"""The SDK against real Market worker shells on loopback, a fake Broker and a fake
MarketManager: trading, typed events, errors, and resume without loss or duplication."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from protocol.market import BookSnapshot, Ticker
from protocol.orders import OrderAccepted, OrderFilled, OrderStatus, PositionsSnapshot
from tests.support.market_fakes import (
    FakeBroker,
    FakeBrokerManager,
    FakeMarketManager,
    RunningMarket,
    point_at_broker_manager,
    snapshot_of,
    start_market,
    wait_for,
)
from tests.support.tcp_proxy import TcpProxy
from tradefleet.client import (
    AuthError,
    ConnectionLost,
    MarketClient,
    OrderRejected,
    ReconnectPolicy,
    RequestFailed,
)

pytestmark = pytest.mark.timeout(60)

API_TOKEN = "algo-token-acme"


@dataclass
class Platform:
    broker_manager: FakeBrokerManager
    broker: FakeBroker
    manager: FakeMarketManager
    markets: list[RunningMarket]
    data_dir: Path

    async def client(self, **kwargs: Any) -> MarketClient:
        kwargs.setdefault("policy", ReconnectPolicy(initial_s=0.02, maximum_s=0.2))
        return await MarketClient.connect(self.manager.url, API_TOKEN, **kwargs)

    async def add_market(self, worker_id: str) -> RunningMarket:
        market = await start_market(self.data_dir, worker_id=worker_id)
        self.markets.append(market)
        self.manager.markets.append(market)
        return market


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    broker_manager = FakeBrokerManager()
    await broker_manager.start()
    broker = FakeBroker(fill_orders=True)
    await broker.start()
    broker_manager.assign("paper-1", broker)
    point_at_broker_manager(tmp_path, broker_manager)
    manager = FakeMarketManager({API_TOKEN: ("acme", ["paper-1"])})
    await manager.start()
    world = Platform(broker_manager, broker, manager, [], tmp_path)
    await world.add_market("market-1")
    try:
        yield world
    finally:
        for market in world.markets:
            await market.stop()
        await manager.stop()
        await broker.stop()
        await broker_manager.stop()


async def next_of(client: MarketClient, kind: type, timeout: float = 5.0) -> Any:
    async with asyncio.timeout(timeout):
        async for event in client.events():
            if isinstance(event, kind):
                return event
    raise AssertionError("event stream ended")


SNAPSHOT = {"type": "book_snapshot", "instrument": "BTC/USD", "bids": [["100", "1"]],
            "asks": [["101", "2"]], "update_id": 1, "ts": 1}
TICKER = {"type": "ticker", "instrument": "BTC/USD", "bid": "100", "ask": "101", "ts": 2}


async def test_subscribe_trade_and_query_through_the_sdk(platform: Platform) -> None:
    async with await platform.client() as client:
        assert client.account == "paper-1" and client.customer == "acme"
        await client.subscribe("BTC/USD", "book", depth=5)
        await platform.broker.push_market(SNAPSHOT)
        book = await next_of(client, BookSnapshot)
        assert book.bids == [(Decimal(100), Decimal(1))]
        handle = await client.place_order("BTC/USD", "buy", Decimal("0.25"), price="100.5")
        assert handle.client_order_id.startswith("tf-")
        await handle.accepted(timeout=5)
        await handle.filled(timeout=5)
        assert handle.status is OrderStatus.FILLED and handle.filled_qty == Decimal("0.25")
        assert [f.qty for f in handle.fills] == [Decimal("0.25")]
        accepted = await next_of(client, OrderAccepted)
        assert accepted.seq == 1 and accepted.client_order_id == handle.client_order_id
        assert isinstance(await client.positions(), PositionsSnapshot)
        assert (await client.balances()).cash == {"USD": Decimal(1000)}
        assert await client.open_orders() == []
        assert client.last_seq == 2


async def test_an_unreadable_answer_fails_its_request_at_once(platform: Platform) -> None:
    """An answer the SDK cannot read (here a price longer than the wire allows) fails the
    request it answers with a coded error, instead of leaving it to time out."""
    platform.broker.positions = [{"account": "paper-1", "instrument": "BTC/USD", "qty": "1",
                                  "avg_price": "1." + "3" * 80, "realized_pnl": "0"}]
    async with await platform.client() as client:
        async with asyncio.timeout(5):  # the request's own timeout is 30 s
            with pytest.raises(RequestFailed) as failed:
                await client.positions(timeout=30)
        assert failed.value.code == "internal" and "positions" in str(failed.value)
        platform.broker.positions = []
        assert (await client.positions(timeout=5)).positions == []  # the session carries on


async def test_the_same_client_order_id_is_one_order(platform: Platform) -> None:
    async with await platform.client() as client:
        first = await client.place_order("BTC/USD", "buy", "0.1", price="100",
                                         client_order_id="mine-1")
        await first.filled(timeout=5)
        again = await client.place_order("BTC/USD", "buy", "0.1", price="100",
                                         client_order_id="mine-1")
        assert again is first
        await wait_for(lambda: len(first.events) == 3, what="the order's snapshot")
        assert first.events[-1].type == "order_snapshot"
        assert list(platform.broker.journal.orders) == ["mine-1"]


async def test_refusals_are_typed_and_coded(platform: Platform) -> None:
    async with await platform.client() as client:
        with pytest.raises(OrderRejected) as local:
            await client.place_order("BTC/USD", "buy", "0.1", price=100.5)  # type: ignore[arg-type]
        assert (local.value.code, local.value.field) == ("invalid_field", "price")
        off_tick = await client.place_order("BTC/USD", "buy", "0.1", price="100.3")
        with pytest.raises(OrderRejected) as remote:
            await off_tick.accepted(timeout=5)
        assert remote.value.code == "price_off_tick" and off_tick.is_done
        with pytest.raises(RequestFailed) as refused:
            await client.subscribe("DOGE/USD", "ticker")
        assert refused.value.code == "unknown_instrument"
        await client.subscribe("BTC/USD", "ticker")  # still connected and usable


async def test_a_bad_api_token_is_an_auth_error(platform: Platform) -> None:
    with pytest.raises(AuthError):
        await MarketClient.connect(platform.manager.url, "not-a-token")
    with pytest.raises(AuthError):
        await MarketClient.connect(platform.manager.url, API_TOKEN, account="paper-9")


async def test_market_death_resumes_elsewhere_without_loss_or_duplication(
    platform: Platform,
) -> None:
    first = platform.markets[0]
    async with await platform.client() as client:
        await client.subscribe("BTC/USD", "ticker")
        for n in range(3):
            await (await client.place_order("BTC/USD", "buy", "0.1", price="100",
                                            client_order_id=f"o-{n}")).filled(timeout=5)
        session_id = client.session_id
        assert session_id is not None
        second = await platform.add_market("market-2")
        platform.manager.markets.remove(first)
        await first.stop()  # the Market the algo is on goes away
        # While the algo has no Market, its order events keep being journaled.
        await platform.broker.emit(session_id, snapshot_of(platform.broker.journal.orders["o-0"]))
        await wait_for(lambda: client.connected and client.ws_url == second.ws_url,
                       timeout=10, what="resume on market-2")
        late = await client.place_order("BTC/USD", "sell", "0.1", price="101",
                                        client_order_id="o-late")
        await late.filled(timeout=5)
        seqs: list[int] = []
        async with asyncio.timeout(5):
            async for event in client.events():
                seq = getattr(event, "seq", None)
                if seq is not None:
                    seqs.append(seq)
                if seqs and seqs[-1] == 9:
                    break
        assert seqs == list(range(1, 10))
        assert client.reconnects == 1
        assert client.last_seq == platform.broker.journal.last_seq(session_id) == 9
        assert [r.get("session_id") for r in platform.manager.requests] == [None, session_id]
        await platform.broker.push_market(TICKER)
        assert isinstance(await next_of(client, Ticker), Ticker)  # subscription came back


async def test_a_cancel_lost_with_its_market_is_sent_again_after_the_resume(
    platform: Platform,
) -> None:
    platform.broker.fill_orders = False
    first = platform.markets[0]
    async with await platform.client() as client:
        order = await client.place_order("BTC/USD", "buy", "0.1", price="100",
                                         client_order_id="rest-1")
        await order.accepted(timeout=5)
        platform.broker.swallow.add("cancel_order")  # lost on the way, as if the Market died
        await client.cancel_order("rest-1")
        await wait_for(lambda: platform.broker.swallowed, what="the cancel lost")
        platform.broker.swallow.clear()
        await platform.add_market("market-2")
        platform.manager.markets.remove(first)
        await first.stop()
        await order.done(timeout=10)  # sent again by the SDK once resumed on market-2
        assert order.status is OrderStatus.CANCELLED and not order.unconfirmed


async def test_an_amendment_lost_with_the_broker_is_sent_again_by_the_market(
    platform: Platform,
) -> None:
    platform.broker.fill_orders = False
    async with await platform.client() as client:
        order = await client.place_order("BTC/USD", "buy", "0.1", price="100",
                                         client_order_id="rest-2")
        await order.accepted(timeout=5)
        platform.broker.swallow.update({"modify_order", "cancel_order"})
        await client.modify_order("rest-2", price="99.5")
        await client.cancel_order("rest-2")
        await wait_for(lambda: len(platform.broker.swallowed) == 2, what="both lost")
        platform.broker.swallow.clear()
        await platform.broker.drop_links()  # the Broker went away with them unjournaled
        await order.done(timeout=10)  # the Market sent both again on the new link
        assert order.status is OrderStatus.CANCELLED
        assert client.reconnects == 0  # the algo's connection never moved


async def test_every_order_event_reaches_the_algo_once_across_a_resume(
    platform: Platform,
) -> None:
    async with await platform.client() as client:
        seen: list[int] = []

        async def consume() -> None:
            async for event in client.events():
                seq = getattr(event, "seq", None)
                if seq is not None:
                    seen.append(seq)

        consumer = asyncio.create_task(consume())
        await (await client.place_order("BTC/USD", "buy", "0.1", price="100")).filled(timeout=5)
        await platform.add_market("market-2")
        first = platform.markets[0]
        platform.manager.markets.remove(first)
        await first.stop()
        for n in range(5):  # placed while the client is between Markets
            await client.place_order("BTC/USD", "buy", "0.1", price="100",
                                     client_order_id=f"gap-{n}")
        for n in range(5):
            await client.order(f"gap-{n}").filled(timeout=10)  # type: ignore[union-attr]
        await wait_for(lambda: len(seen) == 12, what="all events consumed")
        consumer.cancel()
        assert seen == list(range(1, 13))
        assert len(platform.broker.journal.orders) == 6


async def test_drain_moves_the_algo_to_another_market(platform: Platform) -> None:
    async with await platform.client() as client:
        await client.subscribe("BTC/USD", "book", depth=1)
        await (await client.place_order("BTC/USD", "buy", "0.1", price="100")).filled(timeout=5)
        second = await platform.add_market("market-2")
        await platform.markets[0].service.begin_drain()
        await wait_for(lambda: client.ws_url == second.ws_url and client.connected,
                       timeout=10, what="moved to market-2")
        await platform.broker.push_market(SNAPSHOT)
        snapshot = await next_of(client, BookSnapshot)
        assert snapshot.asks == [(Decimal(101), Decimal(2))]
        assert not platform.markets[0].service.has_work()
        handle = await client.place_order("BTC/USD", "buy", "0.1", price="100")
        filled = await handle.filled(timeout=5)
        assert filled.events[-1].seq == 4
        assert isinstance(filled.events[-1], OrderFilled)


async def test_a_session_taken_over_elsewhere_ends_this_client(platform: Platform) -> None:
    client = await platform.client()
    try:
        other = await MarketClient.connect(platform.manager.url, API_TOKEN,
                                           session_id=client.session_id)
        with pytest.raises(ConnectionLost, match="taken over"):
            await next_of(client, Ticker)
        await other.close()
    finally:
        await client.close()
    with pytest.raises(ConnectionLost):
        await client.place_order("BTC/USD", "buy", "0.1", price="100")


async def test_a_session_resumed_on_the_market_that_holds_its_streams(platform: Platform
                                                                      ) -> None:
    # The algo's process restarts and resumes its session (session_id + last seq) on the
    # same Market, which still holds the session's book stream: the welcome comes in one
    # frame with the stream's fresh snapshot, and both must be taken.
    first = await platform.client()
    await first.subscribe("BTC/USD", "book", depth=2)
    await platform.broker.push_market(SNAPSHOT)
    await next_of(first, BookSnapshot)
    session_id, last_seq = first.session_id, first.last_seq
    await first.close()
    again = await platform.client(session_id=session_id, resume_from_seq=last_seq,
                                  request_timeout_s=3)
    try:
        snapshot = await next_of(again, BookSnapshot)
        assert snapshot.bids[0][0] == Decimal(100)
        accepted = await (await again.place_order("BTC/USD", "buy", "0.1", price="100")
                          ).accepted(timeout=5)
        assert accepted.status in (OrderStatus.ACCEPTED, OrderStatus.FILLED)
    finally:
        await again.close()


async def test_a_network_blip_resumes_on_the_same_market_and_trading_goes_on(
        platform: Platform) -> None:
    # Nothing dies: the connection between the algo and its Market is cut. The SDK resumes
    # the session on the same Market, which still holds the session and its book stream.
    market = platform.markets[0]
    proxy = TcpProxy(int(market.url.rsplit(":", 1)[1]))
    await proxy.start()
    platform.manager.via[market.ws_url] = f"ws://127.0.0.1:{proxy.port}/v1/session"
    client = await platform.client(request_timeout_s=3)
    try:
        await client.subscribe("BTC/USD", "book", depth=2)
        await platform.broker.push_market(SNAPSHOT)
        await next_of(client, BookSnapshot)
        assert proxy.accepted == 1 and proxy.cut() == 2
        await wait_for(lambda: proxy.accepted == 2 and client.connected, what="a resume")
        handle = await client.place_order("BTC/USD", "buy", "0.1", price="100")
        await handle.filled(timeout=10)
        assert client.connected and handle.filled_qty == Decimal("0.1")
        assert await next_of(client, BookSnapshot)  # the stream's fresh snapshot on resume
    finally:
        await client.close()
        await proxy.stop()


async def test_trading_through_repeated_network_blips_loses_and_doubles_nothing(
        platform: Platform) -> None:
    # The connection between the algo and its (living) Market is cut again and again at
    # random moments while orders stream; every resume lands on the same Market, which holds
    # the session and its book stream. Each order is answered, each event comes once, in
    # seq order. (Seeded: the seed is in the failure message.)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    market = platform.markets[0]
    proxy = TcpProxy(int(market.url.rsplit(":", 1)[1]))
    await proxy.start()
    platform.manager.via[market.ws_url] = f"ws://127.0.0.1:{proxy.port}/v1/session"
    client = await platform.client(request_timeout_s=3)
    seqs: list[int] = []

    async def consume() -> None:
        async for event in client.events():
            seq = getattr(event, "seq", None)
            if isinstance(seq, int):
                seqs.append(seq)

    async def cut_now_and_then() -> None:
        for _ in range(15):
            await asyncio.sleep(rng.uniform(0.01, 0.15))  # the blips' pace, not a wait
            proxy.cut()

    consumer = asyncio.create_task(consume())
    try:
        await client.subscribe("BTC/USD", "book", depth=2)
        await platform.broker.push_market(SNAPSHOT)
        cutter = asyncio.create_task(cut_now_and_then())
        handles = []
        while not cutter.done():
            handles.append(await client.place_order("BTC/USD", "buy", "0.1", price="100"))
            await asyncio.sleep(rng.uniform(0, 0.02))  # the algo's pace, not a wait
        await cutter
        context = f"seed {seed}, {len(handles)} orders, {proxy.accepted} connections"
        for handle in handles:
            await handle.filled(timeout=15)
        assert proxy.accepted > 5, context
        # Each order: accepted then filled, two events; all of them once, in order.
        await wait_for(lambda: len(seqs) >= 2 * len(handles), timeout=10, what=context)
        assert seqs == list(range(1, 2 * len(handles) + 1)), context
        assert len(platform.broker.journal.orders) == len(handles), context
        assert all(len(h.fills) == 1 for h in handles), context
    finally:
        consumer.cancel()
        await client.close()
        await proxy.stop()


async def test_a_market_manager_that_moved_is_found_through_a_callable_url(
        platform: Platform) -> None:
    where = {"url": platform.manager.url}
    client = await MarketClient.connect(lambda: where["url"], API_TOKEN,
                                        policy=ReconnectPolicy(initial_s=0.02, maximum_s=0.2))
    moved = FakeMarketManager({API_TOKEN: ("acme", ["paper-1"])})
    moved.markets = platform.manager.markets  # the same Market workers behind it
    await moved.start()
    try:
        await platform.manager.stop()  # restarted elsewhere: its old address is dead
        where["url"] = moved.url
        await platform.add_market("market-2")
        first = platform.markets[0]
        platform.manager.markets.remove(first)
        await first.stop()  # the algo must resume, and only the moved manager can place it
        handle = await client.place_order("BTC/USD", "buy", "0.1", price="100")
        await handle.filled(timeout=10)
        assert moved.requests and moved.requests[-1]["session_id"] == client.session_id
    finally:
        await client.close()
        await moved.stop()


async def test_a_query_waits_out_a_broker_failover_within_its_timeout(
        platform: Platform) -> None:
    # While the account's Broker link is down the Market answers queries `unavailable`; the
    # SDK asks again until the query's timeout, so a failover is a delay, not an error.
    async with await platform.client() as client:
        await platform.broker.stop()
        await wait_for(lambda: not platform.markets[0].service.core.link("paper-1").ready,
                       what="the link seen down")
        query = asyncio.create_task(client.positions(timeout=10))
        await asyncio.sleep(0.3)  # the query meets the down link a few times, not a wait
        assert not query.done()
        replacement = FakeBroker(fill_orders=True, epoch=2, broker_id="broker-2")
        await replacement.start()
        platform.broker_manager.assign("paper-1", replacement)
        try:
            assert isinstance(await query, PositionsSnapshot)
            with pytest.raises(RequestFailed, match="unavailable"):
                await replacement.stop()
                await wait_for(lambda: not platform.markets[0].service.core.link(
                    "paper-1").ready, what="the link down again")
                await client.open_orders(timeout=0.5)  # nobody comes back: the refusal
        finally:
            await replacement.stop()
