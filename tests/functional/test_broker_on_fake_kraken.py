"""A Broker worker trading on the fake Kraken venues (spot and futures), as real processes.

The test starts a real BrokerManager (`python -m managers --kind broker`) whose config names
one Kraken account (`venue`, `credentials_env`, `endpoints` pointing at the fake); the
manager spawns a Broker worker that builds the adapter from that config, with the
credentials read from the environment the manager passed on. The test then plays the Market
worker on the Broker's `WS /v1/link`, learning the owner's address from `GET /v1/accounts`.

The fake venue is the outside world: it runs in the test's event loop and is reached by the
worker over loopback, so every wait here is asynchronous (a blocking wait would stall the
venue the worker is talking to). The fakes check signatures like the real venues, so an
order they hold was sent with valid credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.fakes.kraken_futures import FakeKrakenFutures
from tests.fakes.kraken_spot import FakeKrakenSpot
from tests.support.fleet import FAST_CONFIG, REPO

pytestmark = pytest.mark.timeout(90)  # above the sum of the bounded waits of a test

D = Decimal
TOKEN = "broker-kraken-test-join-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ACCOUNT = "k1"
CREDENTIALS_ENV = "KFAKE"
SESSION = "algo-1"
START_S = 30.0  # manager up, worker spawned, venue connected and reconciled
WAIT_S = 10.0  # any one event over the link

SPOT = "BTC/USD"
SPOT_BEST_ASK = D("29430.3")  # top of the recorded book before any update is played
FUTURES = "ETH/USD"
FUTURES_PRODUCT = "PI_ETHUSD"  # the 2021 recording predates the PF contracts
DEPTH = 10


# ---------------------------------------------------------------- the platform side


def fleet_config(venue: str, endpoints: dict[str, str]) -> str:
    inline = ", ".join(f"{key} = {json.dumps(value)}" for key, value in endpoints.items())
    return f"""
traders = []
{FAST_CONFIG}
[security]
join_token = "{TOKEN}"
[managers.broker]
desired = 1
[accounts.{ACCOUNT}]
venue = "{venue}"
credentials_env = "{CREDENTIALS_ENV}"
endpoints = {{ {inline} }}
[customers.demo]
accounts = ["{ACCOUNT}"]
"""


def log_tails(data_dir: Path, chars: int = 3000) -> str:
    """The end of the manager's and the workers' logs, for a failure message."""
    files = [data_dir / "broker-manager.log", *sorted((data_dir / "logs").glob("*.log"))]
    return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}"
                     for path in files if path.exists())


async def until(probe: Callable[[], Awaitable[Any]], what: str, data_dir: Path,
                timeout: float = START_S) -> Any:
    """Poll `probe()` across a process boundary (nothing to await) until it is truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await probe()
        except (aiohttp.ClientError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}\n"
                         f"{log_tails(data_dir)}")


@dataclass
class Broker:
    """A running BrokerManager and the owner of the account, as a Market sees them."""

    manager_url: str
    owner: dict[str, Any]
    status: dict[str, Any]
    link: LinkClient


@contextlib.asynccontextmanager
async def broker_on_venue(data_dir: Path, http: aiohttp.ClientSession, venue: str,
                          endpoints: dict[str, str], credentials: tuple[str, str]
                          ) -> AsyncIterator[Broker]:
    """Start a BrokerManager holding account `k1` on `venue`; wait until the account is owned
    and ready; open a link to its owner. Everything is stopped on the way out."""
    (data_dir / "fleet.toml").write_text(fleet_config(venue, endpoints))
    proc = spawn_broker_manager(data_dir, {f"{CREDENTIALS_ENV}_API_KEY": credentials[0],
                                           f"{CREDENTIALS_ENV}_API_SECRET": credentials[1]})
    link: LinkClient | None = None
    try:
        url_file = data_dir / "run" / "broker-manager.url"

        async def manager_url() -> str | None:
            assert proc.poll() is None, f"the manager exited\n{log_tails(data_dir)}"
            return url_file.read_text().strip() if url_file.exists() else None

        url = await until(manager_url, "the BrokerManager's URL", data_dir)

        async def ready_owner() -> dict[str, Any] | None:
            async with http.get(url + "/v1/accounts", headers=AUTH) as response:
                body = await response.json()
            assert response.status == 200, body
            entry = body["accounts"][ACCOUNT]
            return entry if entry and entry["ready"] else None

        owner = await until(ready_owner, f"an owner of {ACCOUNT} ready on {venue}", data_dir)
        async with http.get(owner["url"] + "/v1/status") as response:
            status = await response.json()
        link = await LinkClient.open(http, owner["url"])
        yield Broker(url, owner, status, link)
    finally:
        if link is not None:
            await link.close()
        await _stop_manager(proc, data_dir)


def spawn_broker_manager(data_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`python -m managers --kind broker` on port 0, in its own session, with `env` added to
    the environment it passes on to its workers; output in DATA_DIR/broker-manager.log."""
    with open(data_dir / "broker-manager.log", "wb") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "managers", "--kind", "broker", "--port", "0", "--data-dir",
             str(data_dir), "--config", str(data_dir / "fleet.toml")],
            stdout=log, stderr=log, cwd=REPO, env={**os.environ, **env},
            start_new_session=True)


async def _stop_manager(proc: subprocess.Popen[bytes], data_dir: Path) -> None:
    """SIGTERM the manager (it stops its workers); SIGKILL whatever is left after 30 s. The
    wait is asynchronous: the worker closes its venue sockets on the fake in this loop."""
    if proc.poll() is None:
        proc.terminate()
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        # The manager did not get to stop its workers, each in its own session.
        for pid in spawned_workers(data_dir):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def spawned_workers(data_dir: Path) -> list[int]:
    """Pids of the workers the manager recorded that are still running with this data dir
    (the command line is checked, so a recycled pid is never killed)."""
    registry = data_dir / "managers" / "broker.sqlite"
    if not registry.exists():
        return []
    with contextlib.closing(sqlite3.connect(registry)) as db:
        docs = [json.loads(doc) for (doc,) in db.execute("SELECT doc FROM workers")]
    pids = []
    for doc in docs:
        pid = (doc.get("spawner") or {}).get("pid")
        if not isinstance(pid, int):
            continue
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(data_dir).encode() in command:
            pids.append(pid)
    return pids


class LinkClient:
    """Plays a Market worker on one link: sends what a Market sends, records what it gets.

    Every frame is flattened into `items`: the event of a `session_event`, each event of a
    `market` frame, and every other frame as it is (`resync`, `link_welcome`...). A reader
    task owned here consumes the socket; waits are bounded and name what they waited for.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.items: list[dict[str, Any]] = []
        self.closed: str | None = None
        self._arrived = asyncio.Condition()
        self._reader = asyncio.create_task(self._read(), name="market-link-reader")

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, broker_url: str) -> LinkClient:
        ws = await http.ws_connect(broker_url.replace("http://", "ws://") + "/v1/link",
                                   headers=AUTH)
        await ws.send_bytes(orjson.dumps({"type": "link_hello", "market_id": "test-market"}))
        return cls(ws)

    async def _read(self) -> None:
        reason = "closed"
        try:
            async for message in self.ws:
                if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    reason = f"{message.type.name}: {message.data!r}"
                    break
                frame = orjson.loads(message.data)
                if frame["type"] == "session_event":
                    items = [frame["event"]]
                elif frame["type"] == "market":
                    items = frame["events"]
                else:
                    items = [frame]
                async with self._arrived:
                    self.items.extend(items)
                    self._arrived.notify_all()
        finally:
            async with self._arrived:
                self.closed = reason
                self._arrived.notify_all()

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        await asyncio.wait({self._reader}, timeout=5)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_bytes(orjson.dumps(message))

    async def route(self, msg: dict[str, Any]) -> None:
        await self.send({"type": "route", "session_id": SESSION, "customer": "demo", "msg": msg})

    def mark(self) -> int:
        """The number of items so far (pass as `after` to wait for newer ones)."""
        return len(self.items)

    async def wait_until(self, condition: Callable[[], Any], what: str,
                         timeout: float = WAIT_S) -> Any:
        """Wait until `condition()` is truthy (re-checked on every arrival); return it."""
        try:
            async with asyncio.timeout(timeout), self._arrived:
                await self._arrived.wait_for(lambda: condition() or self.closed is not None)
        except TimeoutError:
            seen = [item.get("type") for item in self.items[-15:]]
            raise AssertionError(f"no {what} within {timeout}s; last items: {seen}") from None
        result = condition()
        assert result, f"the link closed ({self.closed}) before {what}"
        return result

    async def item(self, kind: str, what: str | None = None, *, after: int = 0,
                   timeout: float = WAIT_S, **fields: Any) -> dict[str, Any]:
        """The first item of type `kind` after index `after` whose fields match `fields`."""

        def found() -> dict[str, Any] | None:
            for item in self.items[after:]:
                if item.get("type") == kind and all(item.get(k) == v for k, v in fields.items()):
                    return item
            return None

        result: dict[str, Any] = await self.wait_until(found, what or f"{kind} {fields}",
                                                       timeout)
        return result

    def index(self, item: dict[str, Any]) -> int:
        return next(i for i, seen in enumerate(self.items) if seen is item)

    def order_events(self, cid: str) -> list[dict[str, Any]]:
        return [item for item in self.items
                if item.get("client_order_id") == cid and "seq" in item]


def new_order(cid: str, instrument: str, side: str, qty: str, price: str) -> dict[str, Any]:
    return {"type": "new_order", "client_order_id": cid, "account": ACCOUNT,
            "instrument": instrument, "side": side, "qty": qty, "price": price}


def cancel_order(cid: str) -> dict[str, Any]:
    return {"type": "cancel_order", "client_order_id": cid, "account": ACCOUNT}


def book_stream(instrument: str) -> dict[str, Any]:
    return {"type": "md_subscribe",
            "stream": {"instrument": instrument, "channel": "book", "depth": DEPTH}}


@dataclass
class BookMirror:
    """The book a Market rebuilds from the link: the last snapshot plus the deltas after it."""

    bids: dict[Decimal, Decimal] = field(default_factory=dict)
    asks: dict[Decimal, Decimal] = field(default_factory=dict)
    update_id: int | None = None
    snapshots: int = 0
    gaps: int = 0

    @classmethod
    def of(cls, items: Iterable[dict[str, Any]], instrument: str) -> BookMirror:
        book = cls()
        for item in items:
            if item.get("instrument") != instrument:
                continue
            if item["type"] == "book_snapshot":
                book.bids = {D(p): D(q) for p, q in item["bids"]}
                book.asks = {D(p): D(q) for p, q in item["asks"]}
                book.update_id, book.snapshots = item["update_id"], book.snapshots + 1
            elif item["type"] == "book_delta" and book.update_id is not None:
                if item["update_id"] != book.update_id + 1:
                    book.gaps += 1
                book.update_id = item["update_id"]
                for levels, changes in ((book.bids, item["bids"]), (book.asks, item["asks"])):
                    for price, qty in changes:
                        if D(qty):
                            levels[D(price)] = D(qty)
                        else:
                            levels.pop(D(price), None)
        return book

    def top(self, depth: int | None = None
            ) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        return (sorted(self.bids.items(), reverse=True)[:depth],
                sorted(self.asks.items())[:depth])


async def burst_until_refused(link: LinkClient, instrument: str, side: str, qty: str,
                              price: str, count: int) -> tuple[list[str], dict[str, Any]]:
    """Send `count` resting orders back to back, as an algo in a hurry would; wait for every
    outcome. Returns the ids the Broker accepted and the first `rate_limited` rejection."""
    cids = [f"burst-{n}" for n in range(count)]
    for cid in cids:
        await link.route(new_order(cid, instrument, side, qty, price))

    def outcomes() -> dict[str, str] | None:
        seen = {item["client_order_id"]: item["type"] for item in link.items
                if item.get("type") in ("order_accepted", "order_rejected")
                and item.get("client_order_id", "").startswith("burst-")}
        return seen if len(seen) == count else None

    seen: dict[str, str] = await link.wait_until(outcomes, f"an outcome for each of {count} "
                                                 "orders", timeout=20)
    refused = await link.item("order_rejected", reason="rate_limited")
    return [cid for cid in cids if seen[cid] == "order_accepted"], refused


# ---------------------------------------------------------------- fixtures


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def spot() -> AsyncIterator[FakeKrakenSpot]:
    async with FakeKrakenSpot(balances={"USD": D("1000000"), "BTC": D("10")}) as venue:
        yield venue


@pytest.fixture
async def futures() -> AsyncIterator[FakeKrakenFutures]:
    venue = FakeKrakenFutures()
    await venue.start()
    try:
        yield venue
    finally:
        await venue.stop()


def on_spot(data_dir: Path, http: aiohttp.ClientSession, venue: FakeKrakenSpot
            ) -> contextlib.AbstractAsyncContextManager[Broker]:
    endpoints = {"rest_url": venue.rest_url, "ws_public_url": venue.ws_public_url,
                 "ws_private_url": venue.ws_private_url}
    return broker_on_venue(data_dir, http, "kraken", endpoints,
                           (venue.api_key, venue.api_secret))


def on_futures(data_dir: Path, http: aiohttp.ClientSession, venue: FakeKrakenFutures
               ) -> contextlib.AbstractAsyncContextManager[Broker]:
    # `endpoints` carries any string field of KrakenFuturesConfig: the recording's PI
    # contracts, and a short reconnect backoff so the drop test stays quick.
    endpoints = {"rest_url": venue.rest_url, "ws_url": venue.ws_url, "contract_type": "PI",
                 "reconnect_initial_s": "0.05", "reconnect_max_s": "0.5"}
    return broker_on_venue(data_dir, http, "kraken-futures", endpoints,
                           (venue.api_key, venue.api_secret))


# ---------------------------------------------------------------- Kraken spot


async def test_spot_orders_fills_and_a_local_rate_limit_refusal_over_the_link(
        tmp_path: Path, http: aiohttp.ClientSession, spot: FakeKrakenSpot) -> None:
    async with on_spot(tmp_path, http, spot) as broker:
        assert (broker.status["info"]["account"], broker.status["info"]["venue"]) == (
            ACCOUNT, "kraken")
        link = broker.link
        welcome = await link.item("link_welcome")
        assert (welcome["account"], welcome["epoch"]) == (ACCOUNT, broker.owner["epoch"])
        assert SPOT in {spec["instrument"] for spec in welcome["instruments"]}

        # A resting order: the venue holds it, placed on a socket opened with a token from
        # a signed REST call; the algo hears order_accepted with the first seq.
        await link.route(new_order("rest-1", SPOT, "buy", "0.0100", "29000.0"))
        accepted = await link.item("order_accepted", client_order_id="rest-1")
        held = spot.order("rest-1")
        assert (accepted["seq"], accepted["order_id"]) == (1, held.order_id)
        assert (held.status, held.qty, held.limit_price) == ("open", D("0.01"), D("29000"))
        assert [name for name, _ in spot.rest_calls][:1] == ["GetWebSocketsToken"]
        assert spot.rest_refusals == []

        await link.route(cancel_order("rest-1"))
        cancelled = await link.item("order_cancelled", client_order_id="rest-1")
        assert cancelled["seq"] == 2 and spot.order("rest-1").status == "canceled"
        assert [p["order_id"] for p in spot.requests_of("cancel_order", "private")] == [
            [held.order_id]]

        # A marketable order trades at once against the recorded book.
        await link.route(new_order("take-1", SPOT, "buy", "0.0100", str(SPOT_BEST_ASK)))
        filled = await link.item("order_filled", client_order_id="take-1")
        trade = spot.trades[-1]
        assert (filled["fill"]["fill_id"], D(filled["fill"]["price"]), D(filled["fill"]["qty"]),
                filled["fill"]["liquidity"]) == (trade.txid, SPOT_BEST_ASK, D("0.01"), "taker")
        assert D(filled["fill"]["fee"]) == trade.fee and D(filled["remaining_qty"]) == 0
        # A resting order taken in part by a counterparty.
        await link.route(new_order("part-1", SPOT, "sell", "0.0100", "31000.0"))
        await link.item("order_accepted", client_order_id="part-1")
        maker = await spot.fill("part-1", D("0.004"))
        part = await link.item("order_partially_filled", client_order_id="part-1")
        assert (part["fill"]["fill_id"], part["fill"]["liquidity"]) == (maker.txid, "maker")
        assert (D(part["filled_qty"]), D(part["remaining_qty"])) == (D("0.004"), D("0.006"))
        seqs = [event["seq"] for event in link.items if "seq" in event]
        assert seqs == list(range(1, len(seqs) + 1))  # one session, no gap, no repeat

        # Orders sent faster than Kraken's per-pair counter allows: the adapter refuses
        # (with the numbers) before the venue would, and the venue never sees the order.
        placed, refused = await burst_until_refused(link, SPOT, "buy", "0.0001", "20000.0",
                                                    count=70)
        assert 30 < len(placed) < 70
        message = refused["message"]
        assert "refused before sending" in message and SPOT in message, message
        assert re.search(r"rate counter for BTC/USD is \d+\.\d\d; this add costs 1, which "
                         r"would pass 52 \(starter tier limit 60 minus 8 kept for cancels\); "
                         r"retry in \d+\.\ds", message), message
        sent = {params.get("cl_ord_id") for params in spot.requests_of("add_order")}
        assert refused["client_order_id"] not in sent
        assert set(placed) <= sent and all(spot.order(cid).status == "open" for cid in placed)
        assert spot.rest_refusals == []

        # The reserve kept for cancels: a cancel still goes through at once.
        await link.route(cancel_order(placed[-1]))
        await link.item("order_cancelled", client_order_id=placed[-1])
        assert spot.order(placed[-1]).status == "canceled"


async def test_one_session_s_slow_venue_call_does_not_hold_up_another_session(
        tmp_path: Path, http: aiohttp.ClientSession, spot: FakeKrakenSpot) -> None:
    async with on_spot(tmp_path, http, spot) as broker:
        link = broker.link
        await link.item("link_welcome")
        spot.slow(4.0, "ws")  # the venue takes 4 s to answer an order request
        start = link.mark()
        await link.route(new_order("slow-1", SPOT, "buy", "0.0100", "29000.0"))
        await link.route(cancel_order("slow-1"))  # same session: must wait for the place
        # Another algo session on the same Market link asks for its open orders: the
        # Broker answers from its books at once, without waiting for the first session's
        # venue calls to come back.
        await link.send({"type": "route", "session_id": "algo-2", "customer": "demo",
                         "msg": {"type": "get_open_orders", "account": ACCOUNT}})
        answer = await link.item("open_orders", "the second session's answer", after=start,
                                 timeout=3.0)
        cancelled = await link.item("order_cancelled", client_order_id="slow-1", after=start,
                                    timeout=20)
        assert link.index(answer) < link.index(cancelled)
        assert [e["type"] for e in link.order_events("slow-1")] == ["order_accepted",
                                                                    "order_cancelled"]
        assert spot.order("slow-1").status == "canceled"


async def test_spot_book_is_resynced_after_the_public_connection_drops(
        tmp_path: Path, http: aiohttp.ClientSession, spot: FakeKrakenSpot) -> None:
    async with on_spot(tmp_path, http, spot) as broker:
        link = broker.link

        def in_sync() -> bool:
            book = BookMirror.of(link.items, SPOT)
            return book.top() == spot.book()

        await link.send(book_stream(SPOT))
        first = await link.item("book_snapshot", instrument=SPOT)
        assert len(first["bids"]) == len(first["asks"]) == DEPTH
        await spot.play(30)
        await link.wait_until(in_sync, "the book in sync with the venue")

        mark = link.mark()
        assert await spot.drop_connections("public") == 1
        await spot.play(20)  # the market moves on while the Broker is away
        lost = await link.item("resync", after=mark)
        assert "connection lost" in lost["reason"]
        fresh = await link.item("book_snapshot", after=mark, instrument=SPOT)
        await link.item("resync", after=link.index(lost) + 1,
                        reason="venue connection restored; order state reconciled")
        assert link.index(lost) < link.index(fresh)
        await spot.play(30)
        await link.wait_until(in_sync, "the book in sync again after the reconnect")
        book = BookMirror.of(link.items, SPOT)
        assert (book.snapshots, book.gaps) == (2, 0)
        assert (spot.connects["public"], spot.connects["private"]) == (2, 1)
        # The account took orders again once reconciled.
        await link.route(new_order("after-1", SPOT, "buy", "0.0100", "29000.0"))
        assert (await link.item("order_accepted", client_order_id="after-1"))["seq"] == 1


# ---------------------------------------------------------------- Kraken Futures


async def test_futures_orders_fills_and_a_local_rate_limit_refusal_over_the_link(
        tmp_path: Path, http: aiohttp.ClientSession, futures: FakeKrakenFutures) -> None:
    async with on_futures(tmp_path, http, futures) as broker:
        assert broker.status["info"]["venue"] == "kraken-futures"
        link = broker.link
        welcome = await link.item("link_welcome")
        assert FUTURES in {spec["instrument"] for spec in welcome["instruments"]}
        (bid, _), (ask, _) = (side[0] for side in futures.book_top(FUTURES_PRODUCT, 1))

        # A resting order: a sendorder whose signature the venue verified.
        resting = bid - 50
        await link.route(new_order("rest-1", FUTURES, "buy", "10", str(resting)))
        accepted = await link.item("order_accepted", client_order_id="rest-1")
        held = futures.order_by_cli("rest-1")
        assert held is not None and (held.status, held.qty, held.limit_price) == (
            "open", D(10), resting)
        assert (accepted["seq"], accepted["order_id"]) == (1, held.order_id)
        (send,) = futures.signed_requests("sendorder")
        assert (send.authenticated, send.answer, send.params["cliOrdId"]) == (
            True, "placed", "rest-1")

        await link.route(cancel_order("rest-1"))
        cancelled = await link.item("order_cancelled", client_order_id="rest-1")
        assert cancelled["seq"] == 2 and held.status == "cancelled"
        (cancel,) = futures.signed_requests("cancelorder")
        assert (cancel.authenticated, cancel.answer) == (True, "cancelled")

        # A marketable order takes the best ask; its fill comes back from the fills feed.
        await link.route(new_order("take-1", FUTURES, "buy", "10", str(ask)))
        filled = await link.item("order_filled", client_order_id="take-1")
        venue_fill = next(f for f in futures.fills if f.get("cli_ord_id") == "take-1")
        assert (filled["fill"]["fill_id"], D(filled["fill"]["price"]), D(filled["fill"]["qty"]),
                filled["fill"]["liquidity"]) == (venue_fill["fill_id"], ask, D(10), "taker")
        # A resting order taken in part by a counterparty.
        await link.route(new_order("part-1", FUTURES, "sell", "30", str(ask + 40)))
        await link.item("order_accepted", client_order_id="part-1")
        maker = await futures.fill("part-1", D(12))
        part = await link.item("order_partially_filled", client_order_id="part-1")
        assert (part["fill"]["fill_id"], part["fill"]["liquidity"]) == (maker["fill_id"], "maker")
        assert (D(part["filled_qty"]), D(part["remaining_qty"])) == (D(12), D(18))
        assert all(r.authenticated for r in futures.requests if r.endpoint != "instruments")
        assert (futures.auth_failures, futures.challenge_failures) == (0, 0)

        # Beyond the 10-second budget (500 units, 30 kept for cancels, 10 per sendorder) the
        # adapter refuses locally; the venue never sees the order.
        placed, refused = await burst_until_refused(link, FUTURES, "buy", "1", str(bid - 100),
                                                    count=60)
        assert 20 < len(placed) < 50
        message = refused["message"]
        assert re.search(r"sendorder refused locally to stay under Kraken Futures' rate limit: "
                         r"it costs 10 units and \d+ of the 470 units this key may spend on it "
                         r"per 10 s are used \(30 more are kept for cancels\); retry in "
                         r"\d+\.\d s", message), message
        assert futures.order_by_cli(refused["client_order_id"]) is None
        sent = futures.signed_requests("sendorder")
        assert all(r.answer == "placed" for r in sent)  # the venue refused nothing itself
        assert {r.params["cliOrdId"] for r in sent} >= set(placed)

        await link.route(cancel_order(placed[-1]))  # the reserve
        await link.item("order_cancelled", client_order_id=placed[-1])
        assert futures.signed_requests("cancelorder")[-1].answer == "cancelled"


async def test_futures_book_is_resynced_after_the_connection_drops(
        tmp_path: Path, http: aiohttp.ClientSession, futures: FakeKrakenFutures) -> None:
    async with on_futures(tmp_path, http, futures) as broker:
        link = broker.link

        async def settle() -> None:
            """Every frame the venue sent so far has reached the link (frames stay in order
            on the socket and through the Broker): wait for a marker ticker sent last."""
            marker = await futures.send_marker_ticker(FUTURES_PRODUCT)
            await link.wait_until(
                lambda: any(item["type"] == "ticker" and D(item["bid"]) == marker
                            for item in link.items), f"the marker ticker {marker}")

        def book() -> BookMirror:
            return BookMirror.of(link.items, FUTURES)

        await link.send({"type": "md_subscribe",
                         "stream": {"instrument": FUTURES, "channel": "ticker"}})
        await link.send(book_stream(FUTURES))
        first = await link.item("book_snapshot", instrument=FUTURES)
        assert [[D(p), D(q)] for p, q in first["bids"]] == [
            list(level) for level in futures.book_top(FUTURES_PRODUCT, DEPTH)[0]]
        assert await futures.advance(50, product_id=FUTURES_PRODUCT, feed="book") == 50
        await settle()
        assert book().top(DEPTH) == futures.book_top(FUTURES_PRODUCT, DEPTH)

        mark = link.mark()
        assert await futures.drop_connections() == 1
        await futures.advance(30, product_id=FUTURES_PRODUCT, feed="book")  # while away
        lost = await link.item("resync", after=mark)
        assert "connection lost" in lost["reason"]
        fresh = await link.item("book_snapshot", after=mark, instrument=FUTURES)
        await link.item("resync", after=link.index(lost) + 1,
                        reason="venue connection restored; order state reconciled")
        assert link.index(lost) < link.index(fresh)
        assert await futures.advance(50, product_id=FUTURES_PRODUCT, feed="book") == 50
        await settle()
        mirror = book()
        assert mirror.top(DEPTH) == futures.book_top(FUTURES_PRODUCT, DEPTH)
        assert (mirror.snapshots, mirror.gaps) == (2, 0)
        assert futures.connections_opened == 2 and futures.private_subscribers() == 1
        await link.route(new_order("after-1", FUTURES, "buy", "5", "1000"))
        assert (await link.item("order_accepted", client_order_id="after-1"))["seq"] == 1
