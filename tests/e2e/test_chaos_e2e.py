"""Trading through repeated kill -9s: nothing is lost, nothing is doubled.

The single-kill tests in `test_trading_e2e.py` kill a worker at a chosen moment. Here an algo
trades without pause (limit orders that rest or cross, market orders, cancels, modifies) while
the Broker worker that owns its account, the Market worker it is on, the BrokerManager, the
MarketManager the algo reconnects through, or the paper exchange itself (the last three
restarted by `tradefleet up`) is killed -9, twelve times, at moments drawn from a seeded
generator: kills land between a request and its answer, between a journal append and the
venue call, mid-fill, and half the time before the previous kill's replacement has finished
recovering. Afterwards the algo's view is compared with the
paper exchange's own books, order by order and fill by fill.

Reproduce a run with `TRADEFLEET_CHAOS_SEED=<seed printed on failure> make test
ARGS=tests/e2e/test_chaos_e2e.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from decimal import Decimal
from functools import partial
from typing import Any

import aiohttp
import pytest

from tests.support.fleet import (
    FAST_CONFIG,
    Http,
    RunningFleet,
    start_fleet,
    wait_for,
    workers_of,
)
from tradefleet.client import MarketClient, OrderHandle

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ACCOUNT = "chaos-1"
INSTRUMENT = "BTC/USD"
KILLS = 12  # each a Broker, a Market, a manager or the exchange, at random
QTY = Decimal("0.01")

CONFIG = "traders = []\n" + FAST_CONFIG + f"""
[managers.broker]
desired = 2
[managers.market]
desired = 2
[managers.trader]
desired = 0

[accounts.{ACCOUNT}]
venue = "paper"

[customers.chaos]
accounts = ["{ACCOUNT}"]
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    running = start_fleet(tmp_path_factory.mktemp("chaos") / "fleet", CONFIG)
    try:
        wait_for(lambda: owner_of(running) if (owner_of(running) or {}).get("ready") else None,
                 90, "the account owned and reconciled")
        wait_for(lambda: len([w for w in workers_of(running.fleet(), "market")
                              if w["state"] == "up"]) == 2, 60, "two markets up")
        yield running
    finally:
        running.stop()


def manager_health(fleet: RunningFleet, kind: str) -> dict[str, Any]:
    return fleet.manager(kind).get("/health")  # type: ignore[no-any-return]


def owner_of(fleet: RunningFleet) -> dict[str, Any] | None:
    return fleet.manager("broker").get("/v1/accounts")["accounts"].get(ACCOUNT)  # type: ignore[no-any-return]


class Venue:
    """The paper exchange's REST API: the ground truth."""

    def __init__(self, fleet: RunningFleet, http: aiohttp.ClientSession) -> None:
        self.base = (fleet.data_dir / "run" / "paper.url").read_text().strip() + \
            f"/v1/accounts/{ACCOUNT}"
        self.headers = {"Authorization": f"Bearer {fleet.secrets()['join_token']}"}
        self.http = http

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(self.base + path, headers=self.headers) as resp:
            return resp.status, await resp.json()

    async def fills(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            status, page = await self.get(f"/fills?offset={len(out)}")
            assert status == 200, page
            out += page["fills"]
            if not page["more"]:
                return out


class Algo:
    """Trades at random until told to stop; remembers every order it sent."""

    def __init__(self, client: MarketClient, rng: random.Random) -> None:
        self.client = client
        self.rng = rng
        self.handles: list[OrderHandle] = []
        self.bid: Decimal | None = None
        self.ask: Decimal | None = None
        self.priced = asyncio.Event()
        self.stop = asyncio.Event()

    async def watch_prices(self) -> None:
        async for event in self.client.events():
            if event.type == "ticker" and event.bid is not None and event.ask is not None:
                self.bid, self.ask = event.bid, event.ask
                self.priced.set()

    def _working(self) -> list[OrderHandle]:
        return [h for h in self.handles if h.status.value in ("accepted", "partially_filled")]

    async def run(self) -> None:
        await asyncio.wait_for(self.priced.wait(), 30)
        while not self.stop.is_set():
            assert self.bid is not None and self.ask is not None
            roll = self.rng.random()
            working = self._working()
            if roll < 0.45:
                side = self.rng.choice(["buy", "sell"])
                # From 30 through the far side (fills at once) to 30 short of it (rests).
                ticks = self.rng.randint(-3, 3) * 10
                price = (self.ask + ticks) if side == "buy" else (self.bid - ticks)
                self.handles.append(await self.client.place_order(INSTRUMENT, side, QTY, price))
            elif roll < 0.6:
                self.handles.append(await self.client.place_order(
                    INSTRUMENT, self.rng.choice(["buy", "sell"]), QTY, order_type="market",
                    time_in_force="IOC"))
            elif roll < 0.85 and working:
                await self.client.cancel_order(self.rng.choice(working).client_order_id)
            elif working:
                target = self.rng.choice(working)
                if target.price is not None:
                    away = -50 if target.side.value == "buy" else 50
                    await self.client.modify_order(target.client_order_id,
                                                   price=target.price + away)
            await asyncio.sleep(self.rng.uniform(0.01, 0.06))  # the algo's pace, not a wait

    async def wind_down(self, timeout: float, context: str) -> None:
        """Cancel whatever works until every order this algo sent is finished."""
        try:
            await self._wind_down(timeout)
        except TimeoutError:
            stuck = [(h, h.unconfirmed, h.last_error, h.events) for h in self.handles
                     if not h.is_done]
            raise AssertionError(f"{context}: orders never finished: {stuck}") from None

    async def _wind_down(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not all(h.is_done for h in self.handles):
                for handle in self._working():
                    if "cancel_order" not in handle.unconfirmed:  # else it is on its way
                        await self.client.cancel_order(handle.client_order_id)
                pending = [h for h in self.handles if not h.is_done]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*(h.done() for h in pending),
                                                          return_exceptions=True), 2)


class Killer:
    """Kills the account's Broker owner, the algo's Market, the BrokerManager, the
    MarketManager or the exchange, whatever it is doing at the moment (recovering from the
    previous kill included), and tells when the account is owned and the algo connected
    again."""

    def __init__(self, fleet: RunningFleet, client: MarketClient) -> None:
        self.fleet = fleet
        self.client = client
        self.dead_brokers: set[str] = set()
        self.dead_markets: set[str] = set()
        self.dead_exchanges: set[int] = set()
        self.dead_managers: set[int] = set()

    def _live_owner(self) -> dict[str, Any] | None:
        owner = owner_of(self.fleet)
        if owner and owner.get("worker_id") and owner["worker_id"] not in self.dead_brokers:
            return owner
        return None

    def _owner_pid(self) -> tuple[str, int] | None:
        owner = self._live_owner()
        if owner is None:
            return None
        pids = [w["pid"] for w in workers_of(self.fleet.fleet(), "broker")
                if w["id"] == owner["worker_id"] and w.get("pid")]
        return (owner["worker_id"], pids[0]) if pids else None

    async def broker(self) -> None:
        worker_id, pid = await asyncio.to_thread(wait_for, self._owner_pid, 60, "a live owner")
        self.dead_brokers.add(worker_id)
        os.kill(pid, signal.SIGKILL)

    def _market_pid(self) -> tuple[str, int] | None:
        url = self.client.ws_url
        if not self.client.connected or not url or url in self.dead_markets:
            return None
        port = url.split(":")[2].split("/")[0]
        pids = [w["pid"] for w in workers_of(self.fleet.fleet(), "market")
                if (w.get("url") or "").endswith(port) and w.get("pid")]
        return (url, pids[0]) if pids else None

    async def market(self) -> None:
        url, pid = await asyncio.to_thread(wait_for, self._market_pid, 60, "the algo's Market")
        self.dead_markets.add(url)
        os.kill(pid, signal.SIGKILL)

    def _exchange_pid(self) -> int | None:
        url = (self.fleet.data_dir / "run" / "paper.url").read_text().strip()
        pid = Http(url).get("/health")["pid"]
        return pid if isinstance(pid, int) and pid not in self.dead_exchanges else None

    async def exchange(self) -> None:
        """The paper exchange: the venue itself (`tradefleet up` restarts it)."""
        pid = await asyncio.to_thread(wait_for, self._exchange_pid, 60, "the exchange up")
        self.dead_exchanges.add(pid)
        os.kill(pid, signal.SIGKILL)

    def _manager_pid(self, kind: str) -> int | None:
        pid = self.fleet.manager(kind).get("/health").get("pid")
        return pid if isinstance(pid, int) and pid not in self.dead_managers else None

    async def _kill_manager(self, kind: str) -> None:
        pid = await asyncio.to_thread(wait_for, partial(self._manager_pid, kind), 60,
                                      f"the {kind} manager up")
        self.dead_managers.add(pid)
        os.kill(pid, signal.SIGKILL)

    async def manager(self) -> None:
        """The BrokerManager (`tradefleet up` restarts it; it re-adopts its workers)."""
        await self._kill_manager("broker")

    async def market_manager(self) -> None:
        """The MarketManager the SDK resumes through (`tradefleet up` restarts it at the same
        URL; it re-adopts the Market workers, and sessions resume through it again)."""
        await self._kill_manager("market")

    async def recovered(self) -> None:
        """A live, reconciled owner, and the algo connected to a live Market."""
        def owner_ready() -> dict[str, Any] | None:
            owner = self._live_owner()
            return owner if owner and owner["ready"] else None
        await asyncio.to_thread(wait_for, owner_ready, 60, "a reconciled owner")
        async with asyncio.timeout(60):
            while not (self.client.connected and self.client.ws_url not in self.dead_markets):
                await asyncio.sleep(0.05)


async def test_trading_through_repeated_kill_9s_loses_and_doubles_nothing(
        fleet: RunningFleet) -> None:
    seed = int(os.environ.get("TRADEFLEET_CHAOS_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    print(f"chaos seed {seed}", flush=True)
    url = fleet.manager_url_files["market"].read_text().strip()
    client = await MarketClient.connect(url, fleet.secrets()["api_token.chaos"],
                                        account=ACCOUNT)
    algo = Algo(client, rng)
    tasks: list[asyncio.Task[None]] = []
    try:
        await client.subscribe(INSTRUMENT, "ticker")
        tasks = [asyncio.create_task(algo.watch_prices()), asyncio.create_task(algo.run())]
        killer = Killer(fleet, client)
        kills: list[str] = []
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.1, 1.2))  # trading between kills, not a wait
            victim = rng.choice(["broker", "broker", "market", "market", "exchange", "manager",
                                 "market_manager"])
            settle = rng.random() < 0.5  # else the next kill may land mid-recovery
            kills.append(f"{victim} after order {len(algo.handles)}"
                         + ("" if settle else ", no settling"))
            await getattr(killer, victim)()
            if settle:
                await killer.recovered()
        await killer.recovered()
        await asyncio.sleep(1.0)  # trading on the last replacements, not a wait
        algo.stop.set()
        await tasks[1]
        context = f"seed {seed}; kills {kills}; {len(algo.handles)} orders"
        await algo.wind_down(90, context)
        assert len(algo.handles) > 30, context

        async with aiohttp.ClientSession() as http:
            venue = Venue(fleet, http)
            await check_orders(algo.handles, venue, context)
            await check_fills(algo.handles, venue, context)
            check_seqs(algo.handles, context)
            await check_books(client, venue, context)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
    # Nothing but what was killed died, and what was killed is back: every manager answers
    # (one killed last may still be restarting).
    for kind in ("broker", "market", "trader"):
        wait_for(partial(manager_health, fleet, kind), 30, f"{kind} manager")


async def check_orders(handles: list[OrderHandle], venue: Venue, context: str) -> None:
    """Each order ended where the exchange says it ended; none is still working there."""
    at_venue = 0
    for handle in handles:
        status, order = await venue.get(f"/orders/{handle.client_order_id}")
        if status == 404:  # refused before it reached the exchange
            assert handle.status.value == "rejected", (context, handle, handle.events)
            continue
        assert status == 200, order
        at_venue += 1
        snapshot = order["order"]
        mine = (handle.status.value, handle.filled_qty, handle.price)
        theirs = (snapshot["status"], Decimal(snapshot["filled_qty"]),
                  Decimal(snapshot["price"]) if snapshot.get("price") else None)
        assert mine == theirs, (context, handle.client_order_id, mine, theirs)
    assert at_venue > 10, context
    status, working = await venue.get("/orders?open=1")
    assert status == 200 and working["orders"] == [], (context, working)


async def check_fills(handles: list[OrderHandle], venue: Venue, context: str) -> None:
    """The algo saw every fill of the exchange exactly once, and no other."""
    seen: dict[str, Decimal] = {}
    for handle in handles:
        ids = [fill.fill_id for fill in handle.fills]
        assert len(ids) == len(set(ids)), (context, handle.client_order_id, ids)
        assert sum((fill.qty for fill in handle.fills), Decimal(0)) == handle.filled_qty, \
            (context, handle)
        seen.update({fill.fill_id: fill.qty for fill in handle.fills})
    theirs = {fill["fill_id"]: Decimal(fill["qty"]) for fill in await venue.fills()}
    assert seen == theirs, (context, set(seen) ^ set(theirs))
    assert theirs, context


def check_seqs(handles: list[OrderHandle], context: str) -> None:
    """Order events came once each, numbered without a gap."""
    seqs = sorted(e.seq for h in handles for e in h.events if e.seq is not None)
    assert len(seqs) == len(set(seqs)), (context, "an order event delivered twice")
    assert seqs == list(range(1, len(seqs) + 1)), (context, seqs)


async def check_books(client: MarketClient, venue: Venue, context: str) -> None:
    """Positions and cash the algo is told equal the exchange's books, exactly."""
    status, books = await venue.get("/ledger")
    assert status == 200, books
    positions = {p.instrument: p.qty for p in (await client.positions(timeout=20)).positions}
    assert {k: v for k, v in positions.items() if v} == \
        {p["instrument"]: Decimal(p["qty"]) for p in books["positions"]
         if Decimal(p["qty"])}, context
    cash = {ccy: Decimal(v) for ccy, v in (await client.balances(timeout=20)).cash.items()}
    assert cash == {ccy: Decimal(v) for ccy, v in books["cash"].items()}, context
