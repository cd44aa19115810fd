"""Network blips on every hop of the data plane, nothing dying: the algo's SDK ⇄ Market,
Market ⇄ Broker and Broker ⇄ exchange connections are cut again and again at random moments
while the algo trades (resting orders, cancels, modifies, market orders). Real parts on loopback: the SDK,
a Market worker and a Broker worker service (in this process, as their runtimes serve
them), the paper exchange process; fakes only for the two managers' lookups. Every cut
connection is re-opened by the side that opened it. Afterwards every order ended as the
exchange says, every fill was seen once, and order events came once each in seq order.
The same with two live Markets, each resume moving the session to the other one.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.functional.test_broker_link import start_broker, start_exchange
from tests.support.market_fakes import (
    SERVICE_TOKEN,
    FakeBrokerManager,
    FakeMarketManager,
    point_at_broker_manager,
    start_market,
    wait_for,
)
from tests.support.tcp_proxy import TcpProxy
from tradefleet.client import MarketClient, OrderHandle, ReconnectPolicy

pytestmark = pytest.mark.timeout(120)

ACCOUNT = "blips-1"
API_TOKEN = "blips-api-token"
CONFIG = f"""
log_level = "WARNING"
[security]
join_token = "{SERVICE_TOKEN}"
[paper]
maker_fee_bps = 0
taker_fee_bps = 0
"""
CUTS = 30
QTY = Decimal("0.01")


class Venue:
    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.base = f"{url}/v1/accounts/{ACCOUNT}"
        self.http = http

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(self.base + path,
                                 headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}) as resp:
            return resp.status, await resp.json()


@contextlib.asynccontextmanager
async def blips_world(tmp_path: Path, markets_n: int) -> AsyncIterator[dict[str, Any]]:
    """The exchange, a Broker and `markets_n` Markets, every hop through a relay that can cut
    it: `venue` (Broker ⇄ exchange), and per Market `link<i>` (Market ⇄ Broker) and
    `algo<i>` (SDK ⇄ Market). With two Markets each has its own look-up of the Broker (so
    its link has its own relay) and the MarketManager hands them out in turn, so every
    resume moves the session to the other Market."""
    exchange = start_exchange(tmp_path, CONFIG)
    # The Broker finds the exchange through run/paper.url: pointed at a relay instead.
    venue_proxy = TcpProxy(int(exchange.url.rsplit(":", 1)[1]))
    await venue_proxy.start()
    (tmp_path / "run" / "paper.url").write_text(f"http://127.0.0.1:{venue_proxy.port}\n")
    brokers = [FakeBrokerManager() for _ in range(markets_n)]
    markets = FakeMarketManager({API_TOKEN: ("alice", [ACCOUNT])})
    markets.rotate = markets_n > 1
    await markets.start()
    world: dict[str, Any] = {"exchange": exchange, "markets": markets, "venue": venue_proxy}
    started: list[Any] = []
    try:
        async with start_broker(exchange, ACCOUNT, 1, token=SERVICE_TOKEN) as broker:
            await broker.service.configure({"assign": {"account": ACCOUNT}})
            for i, manager in enumerate(brokers, start=1):
                link_proxy = world[f"link{i}"] = TcpProxy(int(broker.url.rsplit(":", 1)[1]))
                await link_proxy.start()
                await manager.start()
                manager.accounts[ACCOUNT] = {"worker_id": "broker-1", "epoch": 1,
                                             "state": "up",
                                             "url": f"http://127.0.0.1:{link_proxy.port}"}
                data_dir = tmp_path if markets_n == 1 else tmp_path / f"m{i}"
                point_at_broker_manager(data_dir, manager)
                market = await start_market(data_dir, worker_id=f"market-{i}")
                started.append(market)
                algo_proxy = world[f"algo{i}"] = TcpProxy(int(market.url.rsplit(":", 1)[1]))
                await algo_proxy.start()
                markets.markets.append(market)
                markets.via[market.ws_url] = f"ws://127.0.0.1:{algo_proxy.port}/v1/session"
            world["hops"] = [k for k in world if k.startswith(("link", "algo"))] + ["venue"]
            try:
                yield world
            finally:
                for market in started:
                    await market.stop()
                for key in world["hops"][:-1]:  # the venue's relay goes last, below
                    await world[key].stop()
    finally:
        await markets.stop()
        for manager in brokers:
            await manager.stop()
        await venue_proxy.stop()
        exchange.stop()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    async with blips_world(tmp_path, 1) as built:
        yield built


@pytest.fixture
async def two_markets(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    async with blips_world(tmp_path, 2) as built:
        yield built


async def connect(world: dict[str, Any], request_timeout_s: float) -> MarketClient:
    return await MarketClient.connect(world["markets"].url, API_TOKEN, account=ACCOUNT,
                                      policy=ReconnectPolicy(initial_s=0.02, maximum_s=0.3),
                                      request_timeout_s=request_timeout_s)


async def cut_at_random(world: dict[str, Any], rng: random.Random) -> None:
    """`CUTS` cuts, each of one hop's connections, at random moments. An algo's connection is
    sometimes cut on the algo's side only: its Market keeps a half-open connection (until its
    heartbeat gives up) while the algo resumes, maybe on the other Market."""
    for _ in range(CUTS):
        await asyncio.sleep(rng.uniform(0.02, 0.2))  # the blips' pace, not a wait
        hop = rng.choice(world["hops"])
        if hop.startswith("algo") and rng.random() < 0.5:
            world[hop].half_cut()
        else:
            world[hop].cut()


async def trade(client: MarketClient, rng: random.Random, handles: list[OrderHandle],
                stop: asyncio.Event, mid: Decimal) -> None:
    while not stop.is_set():
        working = [h for h in handles if h.status.value in ("accepted", "partially_filled")]
        roll = rng.random()
        if roll < 0.4 or not working:
            side = rng.choice(["buy", "sell"])
            away = Decimal(rng.randint(50, 500))  # rests: far from the market
            price = mid - away if side == "buy" else mid + away
            handles.append(await client.place_order("BTC/USD", side, QTY, price))
        elif roll < 0.55:
            handles.append(await client.place_order("BTC/USD", rng.choice(["buy", "sell"]), QTY,
                                                    order_type="market", time_in_force="IOC"))
        elif roll < 0.8:
            await client.cancel_order(rng.choice(working).client_order_id)
        else:
            target = rng.choice(working)
            if target.price is not None:
                step = Decimal(-10) if target.side.value == "buy" else Decimal(10)
                await client.modify_order(target.client_order_id, price=target.price + step)
        await asyncio.sleep(rng.uniform(0.005, 0.03))  # the algo's pace, not a wait


async def test_trading_through_blips_on_every_hop_loses_and_doubles_nothing(
        world: dict[str, Any]) -> None:
    await trade_through_blips(world)


async def test_sessions_moving_between_two_live_markets_through_blips_lose_nothing(
        two_markets: dict[str, Any]) -> None:
    # Every resume lands on the other Market, which is alive and may hold the session's
    # held requests with its own Broker link down: what one Market sends again must not
    # take the session's events away from the Market that holds the session now.
    await trade_through_blips(two_markets)


async def trade_through_blips(world: dict[str, Any]) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    client = await connect(world, request_timeout_s=5)
    handles: list[OrderHandle] = []
    stop = asyncio.Event()
    try:
        await client.subscribe("BTC/USD", "ticker")
        ticker = None
        async with asyncio.timeout(20):
            async for event in client.events():
                if event.type == "ticker" and event.bid is not None and event.ask is not None:
                    ticker = event
                    break
        assert ticker is not None and ticker.bid is not None and ticker.ask is not None
        mid = ((ticker.bid + ticker.ask) / 2).quantize(Decimal("0.1"))
        trader = asyncio.create_task(trade(client, rng, handles, stop, mid))
        await cut_at_random(world, rng)
        stop.set()
        await trader
        accepted = {hop: world[hop].accepted for hop in world["hops"]}
        context = f"seed {seed}; {len(handles)} orders; connections per hop {accepted}"
        async with asyncio.timeout(60):  # cancel what works until everything is finished
            while not all(h.is_done for h in handles):
                for handle in handles:
                    if not handle.is_done and "cancel_order" not in handle.unconfirmed:
                        await client.cancel_order(handle.client_order_id)
                await asyncio.wait([asyncio.ensure_future(h.done()) for h in handles
                                    if not h.is_done], timeout=2)
        relayed = sum(n for hop, n in accepted.items() if hop != "venue")
        assert len(handles) > 30 and relayed > 6, context
        async with aiohttp.ClientSession() as http:
            venue = Venue(world["exchange"].url, http)
            for handle in handles:
                status, body = await venue.get(f"/orders/{handle.client_order_id}")
                if status == 404:
                    assert handle.status.value == "rejected", (context, handle, handle.events)
                    continue
                order = body["order"]
                mine = (handle.status.value, handle.filled_qty, handle.price)
                theirs = (order["status"], Decimal(order["filled_qty"]),
                          Decimal(order["price"]) if order.get("price") else None)
                assert mine == theirs, (context, handle.client_order_id, handle.events)
                ids = [f.fill_id for f in handle.fills]
                assert len(ids) == len(set(ids)), (context, handle)
            status, working = await venue.get("/orders?open=1")
            assert working["orders"] == [], context
        seqs = sorted(e.seq for h in handles for e in h.events if e.seq is not None)
        assert seqs == list(range(1, len(seqs) + 1)), context
    finally:
        stop.set()
        await client.close()


async def test_signals_through_blips_on_every_hop_are_answered_once_each(
        world: dict[str, Any]) -> None:
    # Signals (position targets the position manager trades towards with market orders) are
    # re-sent after every resume until answered; the signal_id makes a copy harmless. Each
    # signal gets one answer, the algo sees each answer and each entry order's events once,
    # and the account's position is the exchange's.
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    client = await connect(world, request_timeout_s=10)
    answers: dict[str, str] = {}
    events: list[Any] = []
    stop = asyncio.Event()

    async def consume() -> None:
        async for event in client.events():
            if getattr(event, "seq", None) is not None:
                events.append(event)

    async def signal_on() -> None:
        while not stop.is_set():
            target = Decimal(rng.choice([-2, -1, 0, 1, 2])) * QTY
            answer = await client.send_signal("BTC/USD", target_qty=target)
            assert answer.signal_id not in answers
            answers[answer.signal_id] = answer.type
            await asyncio.sleep(rng.uniform(0.01, 0.05))  # the algo's pace, not a wait

    consumer = asyncio.create_task(consume())
    try:
        await client.subscribe("BTC/USD", "ticker")
        signaller = asyncio.create_task(signal_on())
        await cut_at_random(world, rng)
        stop.set()
        await signaller
        context = f"seed {seed}; {len(answers)} signals"
        assert len(answers) > 10 and "signal_accepted" in answers.values(), (context, answers)
        # Every entry order finishes (market orders), and every answer came as an event once.
        await asyncio.wait_for(asyncio.gather(*(h.done() for h in client.orders.values())), 20)

        def answered() -> list[str]:
            return [e.signal_id for e in events if e.type in ("signal_accepted",
                                                              "signal_rejected")]

        await wait_for(lambda: len(answered()) >= len(answers), timeout=10, what=context)
        assert sorted(answered()) == sorted(answers), context
        seqs = [e.seq for e in events]
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), (context, seqs)
        positions = {p.instrument: p.qty for p in (await client.positions()).positions}
        async with aiohttp.ClientSession() as http:
            status, ledger = await Venue(world["exchange"].url, http).get("/ledger")
        assert status == 200, ledger
        venue_qty = sum((Decimal(p["qty"]) for p in ledger["positions"]
                         if p["instrument"] == "BTC/USD"), Decimal(0))
        assert positions.get("BTC/USD", Decimal(0)) == venue_qty, context
    finally:
        stop.set()
        consumer.cancel()
        await client.close()
