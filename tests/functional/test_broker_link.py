"""The Broker worker's service on loopback: the real paper exchange process, the real
`WS /v1/link`, driven by a raw aiohttp WebSocket client playing the Market worker.

One exchange process serves the module; each test trades its own account (own journal). The
Broker service runs in the test process on port 0, exactly as the worker runtime would serve
it; its account is assigned the way a BrokerManager does (`configure({"assign": ...})`).
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from protocol.control import WorkerKind
from protocol.orders import NewOrder
from tradefleet.config import FleetConfig
from tradefleet.service.web import make_app
from workers.broker.adapters.paper.remote import RemotePaperAdapter
from workers.broker.worker import BrokerService
from workers.kinds import service_for
from workers.runtime.service import WorkerContext

REPO = Path(__file__).resolve().parents[2]
TOKEN = "broker-functional-service-token"
WAIT_S = 10.0
# A quiet market (no house steps during a test): every fill comes from the test's own
# counterparty, so outcomes are exact.
EXCHANGE_CONFIG = f"""
log_level = "WARNING"
[security]
join_token = "{TOKEN}"
[paper]
step_interval_s = 3600
maker_fee_bps = 0
taker_fee_bps = 0
"""


# ---------------------------------------------------------------- the exchange process


@dataclass
class Exchange:
    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.wait(10)


def start_exchange(data_dir: Path, config: str = EXCHANGE_CONFIG) -> Exchange:
    (data_dir / "exchange.toml").write_text(config)
    with open(data_dir / "exchange.stderr", "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.broker.adapters.paper.server", "--host",
             "127.0.0.1", "--port", "0", "--data-dir", str(data_dir), "--config",
             str(data_dir / "exchange.toml")],
            cwd=REPO, stdout=subprocess.PIPE, stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        if selector.select(timeout=0.1):
            announced = json.loads(proc.stdout.readline())
            assert announced["event"] == "listening"
            return Exchange(proc, announced["url"], data_dir)
    proc.kill()
    raise AssertionError("the paper exchange did not start: "
                         + (data_dir / "exchange.stderr").read_text())


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    running = start_exchange(tmp_path_factory.mktemp("broker-exchange"))
    yield running
    assert running.stop() == 0


_accounts = iter(range(1, 10_000))


async def cancel_everything(exchange: Exchange, account: str) -> None:
    """Leave the shared exchange's book as the test found it: resting orders of one test
    would otherwise trade with the next test's orders."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    base = f"{exchange.url}/v1/accounts/{account}/orders"
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(base, params={"open": "1"}) as response:
            orders = (await response.json())["orders"]
        for order in orders:
            async with http.delete(f"{base}/{order['client_order_id']}"):
                pass


@pytest.fixture
async def account(exchange: Exchange) -> AsyncIterator[str]:
    name = f"acct-{next(_accounts)}"
    yield name
    await cancel_everything(exchange, name)


# ---------------------------------------------------------------- the Broker service


def fleet_config(*accounts: str, kraken: str | None = None) -> FleetConfig:
    table: dict[str, Any] = {a: {"venue": "paper"} for a in accounts}
    if kraken:
        table[kraken] = {"venue": "kraken"}
    return FleetConfig.model_validate({
        "accounts": table, "customers": {"alice": {"accounts": list(table)},
                                         "bob": {"accounts": list(table)}},
        "traders": []})


@dataclass
class RunningBroker:
    service: BrokerService
    url: str
    runner: web.AppRunner

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/link"


def start_broker(exchange: Exchange, account: str, epoch: int, *, token: str = TOKEN,
                 **config: Any) -> AbstractAsyncContextManager[RunningBroker]:
    @asynccontextmanager
    async def running() -> AsyncIterator[RunningBroker]:
        ctx = WorkerContext(worker_id=f"broker-{epoch}", kind=WorkerKind.BROKER, epoch=epoch,
                            location="local", manager_url="http://127.0.0.1:9",
                            data_dir=exchange.data_dir,
                            config=fleet_config(account, **config))
        service = BrokerService(ctx, service_token=token)
        app = make_app()
        service.add_routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            yield RunningBroker(service, f"http://127.0.0.1:{port}", runner)
        finally:
            await service.stop()
            await runner.cleanup()

    return running()


# ---------------------------------------------------------------- a Market, by hand


@dataclass
class Link:
    """One raw link, as a Market worker opens it; keeps every frame it received."""

    ws: aiohttp.ClientWebSocketResponse
    welcome: dict[str, Any]
    frames: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_bytes(orjson.dumps(message))

    async def route(self, session: str, msg: dict[str, Any], customer: str = "alice") -> None:
        await self.send({"type": "route", "session_id": session, "customer": customer,
                         "msg": msg})

    async def until(self, predicate: Callable[[list[dict[str, Any]]], bool],
                    what: str = "frames") -> list[dict[str, Any]]:
        try:
            async with asyncio.timeout(WAIT_S):
                while not predicate(self.frames):
                    msg = await self.ws.receive()
                    if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        raise AssertionError(f"link closed ({msg.type}, {msg.data}) while "
                                             f"waiting for {what}; got {self.frames}")
                    self.frames.append(orjson.loads(msg.data))
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; got {self.frames}") from None
        return self.frames

    def events(self, session: str = "s1") -> list[dict[str, Any]]:
        return [f["event"] for f in self.frames
                if f["type"] == "session_event" and f["session_id"] == session]

    def order_events(self, session: str = "s1") -> list[dict[str, Any]]:
        return [e for e in self.events(session) if "seq" in e]

    def market(self) -> list[dict[str, Any]]:
        return [e for f in self.frames if f["type"] == "market" for e in f["events"]]

    async def order_events_until(self, n: int, session: str = "s1") -> list[dict[str, Any]]:
        await self.until(lambda _: len(self.order_events(session)) >= n,
                         f"{n} order events of {session}")
        return self.order_events(session)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def open_link(http: aiohttp.ClientSession) -> Callable[..., Any]:
    async def open_(broker: RunningBroker, market_id: str = "market-1") -> Link:
        ws = await http.ws_connect(broker.ws_url,
                                   headers={"Authorization": f"Bearer {TOKEN}"})
        await ws.send_bytes(orjson.dumps({"type": "link_hello", "market_id": market_id}))
        welcome = orjson.loads((await ws.receive(timeout=WAIT_S)).data)
        return Link(ws, welcome)

    return open_


@pytest.fixture
async def counterparty(exchange: Exchange) -> AsyncIterator[RemotePaperAdapter]:
    other = RemotePaperAdapter(exchange.url, TOKEN, f"cpty-{next(_accounts)}")
    await other.connect()
    yield other
    await other.close()
    await cancel_everything(exchange, other.account)


async def venue_open_orders(http: aiohttp.ClientSession, exchange: Exchange, account: str
                            ) -> list[str]:
    async with http.get(f"{exchange.url}/v1/accounts/{account}/orders",
                        params={"open": "1"},
                        headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        body = await response.json()
    return [o["client_order_id"] for o in body["orders"]]


def new_order(account: str, cid: str, side: str = "sell", qty: str = "1",
              price: str | None = "60000", **extra: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "new_order", "client_order_id": cid, "account": account,
                           "instrument": "BTC/USD", "side": side, "qty": qty}
    if price is None:
        msg["order_type"] = "market"
    else:
        msg["price"] = price
    msg.update(extra)
    return msg


def take(account: str, cid: str, qty: str, price: str = "60000") -> NewOrder:
    return NewOrder(client_order_id=cid, account=account, instrument="BTC/USD", side="buy",
                    qty=Decimal(qty), price=Decimal(price))


# ---------------------------------------------------------------- tests


async def test_links_need_the_service_token_and_an_assigned_account(
        exchange: Exchange, account: str, http: aiohttp.ClientSession) -> None:
    async with start_broker(exchange, account, 1, kraken="kr-1") as broker:
        async with http.get(broker.ws_url.replace("ws://", "http://")) as response:
            assert response.status == 401
        wrong = {"Authorization": "Bearer nope"}
        async with http.get(broker.url + "/v1/link", headers=wrong) as response:
            assert response.status == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        async with http.get(broker.url + "/v1/link", headers=good) as response:
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "not_ready"
        assert broker.service.info()["state"] == "standby"

        await broker.service.configure({"assign": {"account": account}})
        info = broker.service.info()
        assert (info["account"], info["venue"], info["connected"], info["ready"]) == (
            account, "paper", True, True)
        # A repeat of the same assignment changes nothing; another account is refused.
        await broker.service.configure({"assign": {"account": account}})
        with pytest.raises(ValueError, match="already owns"):
            await broker.service.configure({"assign": {"account": "kr-1"}})


async def test_assignments_the_worker_cannot_honour_are_refused_with_a_reason(
        exchange: Exchange, account: str) -> None:
    async with start_broker(exchange, account, 1, kraken="kr-1") as broker:
        with pytest.raises(ValueError, match="not in the configuration"):
            await broker.service.configure({"assign": {"account": "nobody"}})
        with pytest.raises(ValueError, match="has no credentials_env"):
            await broker.service.configure({"assign": {"account": "kr-1"}})
        assert broker.service.info()["state"] == "standby"
    async with start_broker(exchange, account, 5) as newer:
        await newer.service.configure({"assign": {"account": account}})
    async with start_broker(exchange, account, 4) as older:
        with pytest.raises(ValueError, match="newer epoch"):
            await older.service.configure({"assign": {"account": account}})
        with pytest.raises(ValueError, match="positive integer"):
            await older.service.configure({"assign": {"account": account, "epoch": "7"}})
        # A standby spawned before the last owner takes the account with a fresh epoch.
        await older.service.configure({"assign": {"account": account, "epoch": 6}})
        assert older.service.info()["epoch"] == 6


async def test_orders_round_trip_over_the_link(
        exchange: Exchange, account: str, open_link: Callable[..., Any],
        counterparty: RemotePaperAdapter, http: aiohttp.ClientSession) -> None:
    async with start_broker(exchange, account, 1) as broker:
        await broker.service.configure({"assign": {"account": account}})
        link: Link = await open_link(broker)
        assert link.welcome["type"] == "link_welcome"
        assert (link.welcome["account"], link.welcome["epoch"]) == (account, 1)
        assert any(i["instrument"] == "BTC/USD" for i in link.welcome["instruments"])

        await link.route("s1", new_order(account, "c1", qty="1"))
        await link.route("s1", new_order(account, "c1", qty="1"))  # the same order again
        await link.order_events_until(1)
        await counterparty.place_order(take(counterparty.account, "t1", "0.25"))
        await link.order_events_until(2)
        await link.route("s1", {"type": "modify_order", "client_order_id": "c1",
                                "account": account, "price": "60001"})
        await link.order_events_until(3)
        await link.route("s1", {"type": "cancel_order", "client_order_id": "c1",
                                "account": account})
        events = await link.order_events_until(4)

        assert [(e["type"], e["seq"]) for e in events] == [
            ("order_accepted", 1), ("order_partially_filled", 2), ("order_modified", 3),
            ("order_cancelled", 4)]
        assert events[1]["fill"]["qty"] == "0.25" and events[2]["price"] == "60001"
        snapshots = [e for e in link.events() if e["type"] == "order_snapshot"]
        assert len(snapshots) == 1 and "seq" not in snapshots[0]
        assert await venue_open_orders(http, exchange, account) == []
        info = broker.service.info()
        assert (info["orders"], info["fills"], info["open_orders"]) == (1, 1, 0)
        assert info["positions"] == {"BTC/USD": "-0.25"}


async def test_bad_orders_get_coded_errors_naming_the_field(
        exchange: Exchange, account: str, open_link: Callable[..., Any]) -> None:
    async with start_broker(exchange, account, 1) as broker:
        await broker.service.configure({"assign": {"account": account}})
        link: Link = await open_link(broker)
        bad = [
            (new_order(account, "b1", qty="0"), "invalid_field", "qty"),
            (new_order(account, "b2", price="1.5e3"), "invalid_field", "price"),
            (new_order(account, "b3", price="60000.05"), "price_off_tick", "price"),
            (new_order(account, "b4", instrument="XYZ/USD"), "unknown_instrument",
             "instrument"),
            ({k: v for k, v in new_order(account, "b5").items() if k != "qty"},
             "missing_field", "qty"),
            (new_order("someone-else", "b6"), "forbidden", "account"),
        ]
        for msg, _, _ in bad:
            await link.route("s1", msg)
        await link.until(lambda _: len(link.events()) == len(bad), "the errors")
        got = [(e["type"], e["code"], e.get("field")) for e in link.events()]
        assert got == [("error", code, field) for _, code, field in bad]
        assert broker.service.info()["orders"] == 0
        # The link is still up and working.
        await link.route("s1", new_order(account, "b1"))
        assert (await link.order_events_until(1))[0]["seq"] == 1


async def test_replay_after_n_returns_exactly_the_rest_and_moves_the_session(
        exchange: Exchange, account: str, open_link: Callable[..., Any]) -> None:
    async with start_broker(exchange, account, 1) as broker:
        await broker.service.configure({"assign": {"account": account}})
        first: Link = await open_link(broker, "market-1")
        for i in range(5):
            await first.route("s1", new_order(account, f"c{i}", price=str(60000 + i)))
        await first.order_events_until(5)

        # The session resumes on another Market worker, which asks for what came after 3.
        second: Link = await open_link(broker, "market-2")
        await second.send({"type": "replay", "session_id": "s1", "after_seq": 3})
        await second.until(lambda fs: any(f["type"] == "replayed" for f in fs), "replayed")
        (replayed,) = [f for f in second.frames if f["type"] == "replayed"]
        assert replayed["last_seq"] == 5
        assert [(e["seq"], e["client_order_id"]) for e in replayed["events"]] == [
            (4, "c3"), (5, "c4")]

        # From now on the session's events go to the second link only.
        await second.route("s1", {"type": "cancel_order", "client_order_id": "c0",
                                  "account": account})
        events = await second.order_events_until(1)
        assert (events[0]["type"], events[0]["seq"]) == ("order_cancelled", 6)
        # Anything sent to the first link after that cancel would come before this answer.
        await first.route("s9", {"type": "get_open_orders", "account": account})
        await first.until(lambda _: bool(first.events("s9")), "the s9 answer")
        assert len(first.order_events()) == 5


async def test_market_data_is_shared_between_links(
        exchange: Exchange, account: str, open_link: Callable[..., Any],
        counterparty: RemotePaperAdapter) -> None:
    async with start_broker(exchange, account, 1) as broker:
        await broker.service.configure({"assign": {"account": account}})
        a: Link = await open_link(broker, "market-a")
        b: Link = await open_link(broker, "market-b")
        book = {"instrument": "BTC/USD", "channel": "book", "depth": 10}
        await a.send({"type": "md_subscribe", "stream": book})
        await a.until(lambda _: any(e["type"] == "book_snapshot" for e in a.market()),
                      "a's snapshot")
        await b.send({"type": "md_subscribe", "stream": book})
        await b.until(lambda _: any(e["type"] == "book_snapshot" for e in b.market()),
                      "b's snapshot from the running stream")
        assert broker.service.load().subscriptions == 1

        await counterparty.place_order(take(counterparty.account, "q1", "0.5", "59000"))
        for link in (a, b):
            await link.until(lambda _, lk=link: any(  # type: ignore[misc]
                e["type"] == "book_delta" for e in lk.market()), "a delta")
        await a.send({"type": "md_unsubscribe", "stream": book})
        await counterparty.place_order(take(counterparty.account, "q2", "0.5", "58000"))
        await b.until(lambda _: sum(e["type"] == "book_delta" for e in b.market()) >= 2,
                      "b's second delta")
        assert broker.service.load().subscriptions == 1
        await b.ws.close()
        await _eventually(lambda: broker.service.load().subscriptions == 0, "unsubscribed")


async def test_a_new_owner_rebuilds_and_the_old_one_is_fenced(
        exchange: Exchange, account: str, open_link: Callable[..., Any],
        counterparty: RemotePaperAdapter, http: aiohttp.ClientSession) -> None:
    async with start_broker(exchange, account, 1) as old:
        await old.service.configure({"assign": {"account": account}})
        old_link: Link = await open_link(old)
        await old_link.route("s1", new_order(account, "c1", qty="1"))
        await old_link.route("s1", new_order(account, "c2", qty="1", price="61000"))
        await old_link.order_events_until(2)
        await counterparty.place_order(take(counterparty.account, "t1", "0.5"))
        await old_link.order_events_until(3)

        async with start_broker(exchange, account, 2) as new:
            await new.service.configure({"assign": {"account": account}})
            info = new.service.info()
            assert (info["orders"], info["open_orders"], info["fills"], info["epoch"]) == (
                2, 2, 1, 2)

            # The old owner's next order stops it before the venue hears of it.
            await old_link.route("s1", new_order(account, "zombie"))
            with pytest.raises(AssertionError, match="link closed"):
                await old_link.until(lambda _: False, "the old link to close")
            assert old_link.ws.close_code == 1012
            assert any(f["type"] == "resync" for f in old_link.frames)
            assert old.service.info()["state"] == "fenced"
            assert not old.service.has_work()
            assert "zombie" not in await venue_open_orders(http, exchange, account)
            async with http.get(old.url + "/v1/link",
                                headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                assert response.status == 503
                assert (await response.json())["error"]["code"] == "stale_epoch"

            # The new owner carries on with the session's sequence.
            new_link: Link = await open_link(new)
            await new_link.route("s1", {"type": "cancel_order", "client_order_id": "c2",
                                        "account": account})
            (event,) = await new_link.order_events_until(1)
            assert (event["type"], event["seq"]) == ("order_cancelled", 4)


async def test_a_replacement_catches_up_on_what_the_venue_did_meanwhile(
        exchange: Exchange, account: str, open_link: Callable[..., Any],
        counterparty: RemotePaperAdapter) -> None:
    async with start_broker(exchange, account, 1) as old:
        await old.service.configure({"assign": {"account": account}})
        old_link: Link = await open_link(old)
        await old_link.route("s1", new_order(account, "c1", qty="1"))
        await old_link.route("s1", new_order(account, "c2", qty="1", price="61000"))
        await old_link.order_events_until(2)
    # The first owner is gone; the exchange trades on.
    await counterparty.place_order(take(counterparty.account, "t1", "0.5"))

    async with start_broker(exchange, account, 2) as new:
        await new.service.configure({"assign": {"account": account}})
        assert new.service.info()["fills"] == 1
        link: Link = await open_link(new)
        await link.send({"type": "replay", "session_id": "s1", "after_seq": 2})
        await link.until(lambda fs: any(f["type"] == "replayed" for f in fs), "replayed")
        (replayed,) = [f for f in link.frames if f["type"] == "replayed"]
        assert [(e["type"], e["client_order_id"], e["seq"]) for e in replayed["events"]] == [
            ("order_partially_filled", "c1", 3)]
        assert replayed["events"][0]["filled_qty"] == "0.5"


async def test_draining_tells_markets_and_takes_no_new_links(
        exchange: Exchange, account: str, open_link: Callable[..., Any],
        http: aiohttp.ClientSession) -> None:
    async with start_broker(exchange, account, 1) as broker:
        await broker.service.configure({"assign": {"account": account}})
        link: Link = await open_link(broker)
        await link.send({"type": "md_subscribe",
                         "stream": {"instrument": "BTC/USD", "channel": "book", "depth": 5}})
        await link.until(lambda _: bool(link.market()), "the book snapshot")
        assert broker.service.has_work()
        await broker.service.begin_drain()
        await link.until(lambda fs: any(f["type"] == "resync" and f["reason"] == "draining"
                                        for f in fs), "the draining resync")
        # The resync is followed by a fresh snapshot of the book the Market holds.
        await link.until(lambda _: [e["type"] for e in link.market()] == [
            "book_snapshot", "book_snapshot"], "a snapshot after the resync")
        async with http.get(broker.url + "/v1/link",
                            headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert (await response.json())["error"]["code"] == "draining"
        # Orders still flow on the links it has until they leave.
        await link.route("s1", new_order(account, "c1"))
        await link.order_events_until(1)
        await link.ws.close()
        await _eventually(lambda: not broker.service.has_work(), "drained")


def test_the_broker_kind_runs_the_broker_service(tmp_path: Path) -> None:
    ctx = WorkerContext(worker_id="b", kind=WorkerKind.BROKER, epoch=1, location="local",
                        manager_url="http://127.0.0.1:9", data_dir=tmp_path,
                        config=fleet_config("a"))
    assert isinstance(service_for(ctx), BrokerService)


async def _eventually(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


async def test_an_orphaned_broker_takes_no_new_links_but_keeps_its_own(
        exchange: Exchange, account: str, open_link: Callable[..., Any],
        http: aiohttp.ClientSession) -> None:
    async with start_broker(exchange, account, 1) as broker:
        await broker.service.configure({"assign": {"account": account}})
        link: Link = await open_link(broker)
        broker.service.set_accepting(False)  # the runtime lost its manager
        async with http.get(broker.url + "/v1/link",
                            headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "not_ready"
        await link.route("s1", new_order(account, "c1"))
        await link.order_events_until(1)
        broker.service.set_accepting(True)
        again: Link = await open_link(broker, "market-2")
        assert again.welcome["type"] == "link_welcome"
