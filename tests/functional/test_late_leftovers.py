"""A hosted trader's new run must not leave working an order its dead predecessor sent, even
one still on its way to the Broker while the new run looked for leftovers.

The race, built on purpose with real parts on loopback (the SDK, two Market workers and a
Broker worker service in this process, the paper exchange process; fakes only for the two
managers' look-ups): run A's session is on Market 1, whose link to the Broker is down (a
relay refuses it), when A sends an order and dies. Market 1 holds the order. Run B resumes
the session on Market 2, asks the Broker for the session's working orders (none yet) and
starts. Then Market 1's link comes back, Market 1 sends the held order, the exchange works it,
and its events reach B's session. B's take-over alone leaves that order working at the
exchange, known to nobody; its event watch cancels it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest

from tests.functional.test_broker_link import start_broker, start_exchange
from tests.functional.test_link_blips import CONFIG, Venue
from tests.support.market_fakes import (
    SERVICE_TOKEN,
    FakeBrokerManager,
    FakeMarketManager,
    point_at_broker_manager,
    start_market,
    wait_for,
)
from tests.support.tcp_proxy import TcpProxy
from tradefleet.client import MarketClient, ReconnectPolicy
from workers.trader.leftovers import EarlierRuns

pytestmark = pytest.mark.timeout(90)

ACCOUNT = "blips-1"  # the account test_link_blips' exchange config knows
API_TOKEN = "late-api-token"
TAG = "quoter"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    exchange = start_exchange(tmp_path, CONFIG)
    managers = [FakeBrokerManager(), FakeBrokerManager()]
    markets = FakeMarketManager({API_TOKEN: ("alice", [ACCOUNT])})
    await markets.start()
    started: list[Any] = []
    try:
        async with start_broker(exchange, ACCOUNT, 1, token=SERVICE_TOKEN) as broker:
            await broker.service.configure({"assign": {"account": ACCOUNT}})
            link = TcpProxy(int(broker.url.rsplit(":", 1)[1]))
            await link.start()
            # Market 1 reaches the Broker through the relay, Market 2 directly.
            for n, (manager, url) in enumerate(
                    zip(managers, [f"http://127.0.0.1:{link.port}", broker.url], strict=True)):
                await manager.start()
                manager.accounts[ACCOUNT] = {"worker_id": "broker-1", "epoch": 1, "state": "up",
                                             "url": url}
                point_at_broker_manager(tmp_path / f"m{n + 1}", manager)
                started.append(await start_market(tmp_path / f"m{n + 1}",
                                                  worker_id=f"market-{n + 1}"))
            try:
                yield {"exchange": exchange, "markets": markets, "m1": started[0],
                       "m2": started[1], "link": link}
            finally:
                for market in started:
                    await market.stop()
                await link.stop()
    finally:
        await markets.stop()
        for manager in managers:
            await manager.stop()
        exchange.stop()


async def connect(world: dict[str, Any], **resume: Any) -> MarketClient:
    return await MarketClient.connect(world["markets"].url, API_TOKEN, account=ACCOUNT,
                                      trader_tag=TAG, request_timeout_s=10,
                                      policy=ReconnectPolicy(initial_s=0.02, maximum_s=0.3),
                                      **resume)


async def working_at_exchange(world: dict[str, Any]) -> list[str]:
    async with aiohttp.ClientSession() as http:
        status, body = await Venue(world["exchange"].url, http).get("/orders?open=1")
    assert status == 200, body
    return [o["client_order_id"] for o in body["orders"]]


@pytest.mark.parametrize("on_restart", ["cancel", "adopt"])
async def test_an_order_the_dead_run_had_on_its_way_is_cancelled_when_it_turns_up(
        world: dict[str, Any], on_restart: Literal["cancel", "adopt"]) -> None:
    m1, link = world["m1"], world["link"]
    world["markets"].markets[:] = [m1]
    run_a = await connect(world)
    session_id = run_a.session_id
    assert session_id is not None
    # An order run A placed and saw finish: replayed to run B, it is nothing to cancel.
    finished = await run_a.place_order("BTC/USD", "buy", Decimal("0.01"), Decimal("1000.0"))
    await finished.accepted(10)
    await run_a.cancel_order(finished.client_order_id)
    await finished.done(10)
    # Market 1 loses its Broker link and cannot get it back for now.
    link.refuse = True
    link.cut()
    await wait_for(lambda: not m1.service.core.link(ACCOUNT).ready, 10, "Market 1's link down")
    held = await run_a.place_order("BTC/USD", "buy", Decimal("0.01"), Decimal("1000.0"))
    await wait_for(lambda: m1.service.core.link(ACCOUNT).unanswered, 10, "the order held")
    await run_a.close()  # run A dies; its session stays (detached) for a resume

    world["markets"].markets[:] = [world["m2"]]
    # Resumed from the start (a trader resumes after the last seq it saved, up to a second
    # old): the replay brings the finished order's events too.
    run_b = await connect(world, session_id=session_id, resume_from_seq=0)
    try:
        leftovers = EarlierRuns(run_b, on_restart)
        await leftovers.take_over()
        # The Broker has not seen the held order yet: nothing to take over.
        assert [h.client_order_id for h in run_b.orders.values() if not h.is_done] == []

        seen: list[Any] = []

        async def strategy_events() -> None:  # what the hosted trader's event stream does
            async for event in run_b.events():
                await leftovers.watch(event)
                seen.append(event)

        reader = asyncio.create_task(strategy_events())
        link.refuse = False  # Market 1's link comes back and it sends the held order
        cid = held.client_order_id
        await wait_for(lambda: run_b.order(cid) is not None, 20, "the late order's events")
        handle = run_b.order(cid)
        assert handle is not None and handle.origin == "found"
        await asyncio.wait_for(handle.done(), 20)
        assert handle.status.value == "cancelled", handle.events
        assert leftovers.late == 1
        assert cid not in await working_at_exchange(world)
        # The strategy saw the order come and go; nothing was cancelled twice.
        assert [e.type for e in seen if getattr(e, "client_order_id", None) == cid] == [
            "order_accepted", "order_cancelled"]
        reader.cancel()
    finally:
        await run_b.close()


async def test_orders_the_run_placed_adopted_or_signalled_are_left_alone(
        world: dict[str, Any]) -> None:
    world["markets"].markets[:] = [world["m2"]]
    client = await connect(world)
    try:
        leftovers = EarlierRuns(client, "cancel")
        await leftovers.take_over()
        mine = await client.place_order("BTC/USD", "buy", Decimal("0.01"), Decimal("1000.0"))
        await mine.accepted(10)
        # An order the strategy adopts itself (here: its own, found by a query) is its own.
        [snapshot] = await client.open_orders(session_only=True)
        assert client.adopt(snapshot).origin == "placed"  # adopting keeps a placed order's
        # A signal's entry at a limit price: an order of the session that this client did not
        # place, but the position manager's, for this run's signal.
        answer = await client.send_signal("BTC/USD", target_qty="0.01", entry_price="1001.0")
        assert answer.type == "signal_accepted", answer
        entry = answer.client_order_id
        assert entry is not None
        accepted: set[str] = set()
        async with asyncio.timeout(10):
            async for event in client.events():
                await leftovers.watch(event)
                if event.type == "order_accepted":
                    accepted.add(event.client_order_id)
                if accepted == {mine.client_order_id, entry}:
                    break
        handle = client.order(entry)
        assert handle is not None and handle.origin == "position_manager"
        assert leftovers.late == 0 and mine.status.value == "accepted"
        assert sorted(await working_at_exchange(world)) == sorted([mine.client_order_id, entry])
    finally:
        await client.close()
