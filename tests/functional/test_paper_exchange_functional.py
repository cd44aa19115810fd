"""The paper exchange as a real process on loopback, traded through `RemotePaperAdapter`.

One exchange process serves the module (each test trades its own account); tests that kill or
misconfigure an exchange start their own. Every wait is for an event, bounded by a deadline.
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
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from protocol.errors import ErrorCode
from protocol.market import BookSnapshot, Channel, Side, Ticker
from protocol.orders import (
    Fill,
    NewOrder,
    OrderAccepted,
    OrderCancelled,
    OrderFilled,
    OrderModified,
    OrderPartiallyFilled,
    OrderStatus,
)
from workers.broker.adapters.backoff import ReconnectPolicy
from workers.broker.adapters.base import (
    AdapterEvent,
    ConnectionChanged,
    FatalAdapterError,
    OrderRejectedError,
    RetryableAdapterError,
)
from workers.broker.adapters.paper.remote import RemotePaperAdapter, read_paper_url

REPO = Path(__file__).resolve().parents[2]
D = Decimal
STARTING_USD = D(100_000)
TICK = D("0.1")

CONFIG = """
log_level = "WARNING"
[security]
join_token = "functional-test-join-token"
[paper]
seed = 7
step_interval_s = 0.02
maker_fee_bps = 1
taker_fee_bps = 5
"""
TOKEN = "functional-test-join-token"


# ---------------------------------------------------------------- the exchange process


@dataclass
class Exchange:
    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        status = self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return status


def start_exchange(data_dir: Path, config_text: str | None = CONFIG) -> Exchange:
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        "-m",
        "workers.broker.adapters.paper.server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
    ]
    if config_text is not None:
        config = data_dir / "fleet.toml"
        config.write_text(config_text)
        args += ["--config", str(config)]
    stderr_path = data_dir / "exchange.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            args,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    exchange = Exchange(proc, "", data_dir, stderr_path)
    line = read_line(proc, timeout=20.0)
    if line is None:
        exchange.stop()
        raise AssertionError(f"the exchange did not announce its URL:\n{exchange.stderr()}")
    announced = json.loads(line)
    assert announced["event"] == "listening", line
    exchange.url = announced["url"]
    return exchange


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str | None:
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=0.1):
            line = proc.stdout.readline().decode()
            if line:
                return line
        if proc.poll() is not None:
            return None
    return None


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    running = start_exchange(tmp_path_factory.mktemp("paper"))
    yield running
    assert running.stop() == 0, running.stderr()


@pytest.fixture
async def connect(exchange: Exchange) -> AsyncIterator[Callable[..., Any]]:
    """Connects `RemotePaperAdapter`s to the module's exchange; closes them after the test."""
    opened: list[RemotePaperAdapter] = []

    async def open_adapter(account: str, **options: Any) -> RemotePaperAdapter:
        adapter = RemotePaperAdapter(exchange.url, TOKEN, account, **options)
        await adapter.connect()
        opened.append(adapter)
        return adapter

    yield open_adapter
    for adapter in opened:
        await adapter.close()


class Events:
    """Reads one adapter's `events()` and keeps everything it saw."""

    def __init__(self, adapter: RemotePaperAdapter) -> None:
        self._stream = adapter.events()
        self.seen: list[AdapterEvent] = []

    async def until(
        self, predicate: Callable[[AdapterEvent], bool], timeout: float = 5.0
    ) -> AdapterEvent:
        async with asyncio.timeout(timeout):
            async for event in self._stream:
                self.seen.append(event)
                if predicate(event):
                    return event
        raise AssertionError("the event stream ended")

    def orders(self, client_order_id: str) -> list[AdapterEvent]:
        return [e for e in self.seen if getattr(e, "client_order_id", None) == client_order_id]


def finished(cid: str) -> Callable[[AdapterEvent], bool]:
    return lambda e: getattr(e, "client_order_id", None) == cid and e.status.is_terminal  # type: ignore[union-attr]


def limit(cid: str, account: str, side: str, qty: str, price: Decimal) -> NewOrder:
    return NewOrder(
        client_order_id=cid,
        account=account,
        instrument="BTC/USD",
        side=side,
        order_type="limit",
        qty=qty,
        price=price,
    )


def market(cid: str, account: str, side: str, qty: str) -> NewOrder:
    return NewOrder(
        client_order_id=cid,
        account=account,
        instrument="BTC/USD",
        side=side,
        order_type="market",
        qty=qty,
    )


async def top_of_book(adapter: RemotePaperAdapter, events: Events) -> tuple[Decimal, Decimal]:
    """Subscribes the BTC/USD book and ticker; returns the best bid and ask once quoted."""
    await adapter.subscribe("BTC/USD", Channel.BOOK, depth=5)
    await events.until(lambda e: isinstance(e, BookSnapshot))
    await adapter.subscribe("BTC/USD", Channel.TICKER)
    ticker = await events.until(
        lambda e: isinstance(e, Ticker) and e.bid is not None and e.ask is not None
    )
    assert isinstance(ticker, Ticker) and ticker.bid and ticker.ask
    return ticker.bid, ticker.ask


# ---------------------------------------------------------------- tests


def test_the_url_is_announced_and_written_to_the_data_dir(exchange: Exchange) -> None:
    assert read_paper_url(exchange.data_dir) == exchange.url
    assert exchange.url.startswith("http://127.0.0.1:")


async def test_every_request_and_the_stream_need_the_service_token(exchange: Exchange) -> None:
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer not-the-token"}):
            for method, path in [
                ("GET", "/v1/instruments"),
                ("GET", "/v1/accounts/a/ledger"),
                ("POST", "/v1/accounts/a/orders"),
                ("GET", "/v1/stream"),
            ]:
                async with http.request(method, exchange.url + path, headers=headers) as resp:
                    assert resp.status == 401, (method, path)
                    assert (await resp.json())["error"]["code"] == "unauthorized"
        async with http.get(exchange.url + "/health") as resp:
            assert resp.status == 200
    adapter = RemotePaperAdapter(exchange.url, "not-the-token", "intruder")
    with pytest.raises(FatalAdapterError, match="service token"):
        await adapter.connect()
    await adapter.close()


async def test_limit_and_market_orders_fill_and_the_ledger_is_the_sum_of_the_fills(
    connect: Callable[..., Any], exchange: Exchange,
) -> None:
    adapter: RemotePaperAdapter = await connect("ledger-check")
    events = Events(adapter)
    t0 = time.time_ns()
    bid, ask = await top_of_book(adapter, events)

    # A limit buy well through the ask takes liquidity from the house ladder (maybe in parts).
    crossing = await adapter.place_order(
        limit("cross-1", "ledger-check", "buy", "0.02", (ask * D("1.01")).quantize(TICK))
    )
    assert crossing.order_id
    await events.until(finished("cross-1"))
    await adapter.place_order(market("mkt-1", "ledger-check", "sell", "0.0070"))
    await events.until(finished("mkt-1"))
    # A limit buy far below the market rests; it is modified, then cancelled.
    rest_price = (bid * D("0.9")).quantize(TICK)
    await adapter.place_order(limit("rest-1", "ledger-check", "buy", "0.003", rest_price))
    await events.until(lambda e: isinstance(e, OrderAccepted) and e.client_order_id == "rest-1")
    assert [o.client_order_id for o in await adapter.open_orders()] == ["rest-1"]
    await adapter.modify_order("rest-1", price=rest_price - TICK)
    modified = await events.until(lambda e: isinstance(e, OrderModified))
    assert modified.price == rest_price - TICK  # type: ignore[union-attr]
    await adapter.cancel_order("rest-1")
    await events.until(finished("rest-1"))
    assert await adapter.open_orders() == []

    for cid, outcome in [
        ("cross-1", OrderFilled),
        ("mkt-1", OrderFilled),
        ("rest-1", OrderCancelled),
    ]:
        history = events.orders(cid)
        assert isinstance(history[0], OrderAccepted), history
        assert isinstance(history[-1], outcome), history
    streamed: list[Fill] = [
        e.fill for e in events.seen if isinstance(e, OrderFilled | OrderPartiallyFilled)
    ]
    assert streamed and await adapter.fills_since(t0) == streamed
    # A page per request: the venue never reads more than a page for one; the pages make up
    # the same fills, in order, whatever their size.
    assert len(streamed) >= 2
    for page in (1, len(streamed) - 1, len(streamed)):
        adapter.fills_page = page
        assert await adapter.fills_since(t0) == streamed
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        fills_url = exchange.url + "/v1/accounts/ledger-check/fills"
        async with http.get(fills_url, params={"since": str(t0), "offset": "1",
                                               "limit": "1"}) as resp:
            answer = await resp.json()
            assert answer["more"] is True and [f["fill_id"] for f in answer["fills"]] == [
                streamed[1].fill_id]
        for params in ({"limit": "0"}, {"limit": "1001"}, {"offset": "-1"}, {"since": "x"},
                       {"offset": "1e3"}):
            async with http.get(fills_url, params=params) as resp:
                assert resp.status == 400, params
                error = (await resp.json())["error"]
                assert error["code"] == "invalid_field" and error["field"] == next(iter(params))

    ledger = await adapter.ledger()
    bought = sum((f.qty * f.price for f in streamed if f.side is Side.BUY), D(0))
    sold = sum((f.qty * f.price for f in streamed if f.side is Side.SELL), D(0))
    fees = sum((f.fee for f in streamed), D(0))
    assert fees > 0
    assert ledger.cash == {"USD": STARTING_USD - bought + sold - fees}
    assert ledger.fees_paid == {"USD": fees}
    (position,) = ledger.positions
    assert position.qty == D("0.02") - D("0.007")
    assert (await adapter.balances()).cash == ledger.cash
    assert await adapter.positions() == ledger.positions


async def test_the_same_client_order_id_twice_creates_one_order(
    connect: Callable[..., Any],
) -> None:
    adapter: RemotePaperAdapter = await connect("idempotent")
    events = Events(adapter)
    bid, _ = await top_of_book(adapter, events)
    request = limit("once", "idempotent", "buy", "0.001", (bid * D("0.8")).quantize(TICK))
    first = await adapter.place_order(request)
    second = await adapter.place_order(request)
    assert second.order_id == first.order_id
    # Reusing the id for a different order is refused, and places nothing either.
    with pytest.raises(OrderRejectedError) as caught:
        await adapter.place_order(limit("once", "idempotent", "sell", "0.001", bid * 2))
    assert caught.value.code is ErrorCode.DUPLICATE_ORDER
    # Events are in venue order: a second acceptance of "once" would precede this marker's.
    await adapter.place_order(market("marker", "idempotent", "buy", "0.0001"))
    await events.until(finished("marker"))
    assert len([e for e in events.orders("once") if isinstance(e, OrderAccepted)]) == 1
    assert [o.client_order_id for o in await adapter.open_orders()] == ["once"]


async def test_refused_requests_carry_the_venue_code_and_the_session_carries_on(
    connect: Callable[..., Any],
) -> None:
    adapter: RemotePaperAdapter = await connect("refusals")
    cases = [
        (limit("t1", "refusals", "buy", "0.001", D("100.05")), ErrorCode.PRICE_OFF_TICK),
        (limit("t2", "refusals", "buy", "0.00015", D("100")), ErrorCode.QTY_OFF_LOT),
        (
            NewOrder(
                client_order_id="t3",
                account="refusals",
                instrument="DOGE/USD",
                side="buy",
                qty="1",
                price="1",
            ),
            ErrorCode.UNKNOWN_INSTRUMENT,
        ),
    ]
    for request, code in cases:
        with pytest.raises(OrderRejectedError) as caught:
            await adapter.place_order(request)
        assert caught.value.code is code
        assert caught.value.client_order_id == request.client_order_id
    with pytest.raises(OrderRejectedError) as not_found:
        await adapter.cancel_order("never-placed")
    assert not_found.value.code is ErrorCode.ORDER_NOT_FOUND
    with pytest.raises(OrderRejectedError) as unknown:
        await adapter.subscribe("DOGE/USD", Channel.TRADES)
    assert unknown.value.code is ErrorCode.UNKNOWN_INSTRUMENT

    events = Events(adapter)
    await adapter.place_order(market("done", "refusals", "buy", "0.0001"))
    await events.until(finished("done"))
    with pytest.raises(OrderRejectedError) as too_late:
        await adapter.cancel_order("done")
    assert too_late.value.code is ErrorCode.ORDER_NOT_CANCELLABLE
    state = await adapter.order_state("done")
    assert state is not None and state.status is OrderStatus.FILLED
    assert await adapter.order_state("never-placed") is None


async def test_a_dropped_stream_is_reported_reopened_and_resynced(
    exchange: Exchange,
    connect: Callable[..., Any],
) -> None:
    adapter: RemotePaperAdapter = await connect(
        "dropped", reconnect=ReconnectPolicy(initial_s=0.3, jitter=0.0)
    )
    events = Events(adapter)
    await top_of_book(adapter, events)
    t0 = time.time_ns()

    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http,
        http.post(exchange.url + "/v1/admin/drop-streams", json={"account": "dropped"}) as resp,
    ):
        assert resp.status == 200 and (await resp.json())["closed"] == 1
    lost = await events.until(lambda e: isinstance(e, ConnectionChanged))
    assert lost.connected is False and "1012" in lost.reason  # type: ignore[union-attr]

    # Trading goes on over REST while the stream is down; what it misses is recovered.
    await adapter.place_order(market("while-down", "dropped", "buy", "0.0002"))
    back = await events.until(lambda e: isinstance(e, ConnectionChanged))
    assert back.connected is True  # type: ignore[union-attr]
    await events.until(lambda e: isinstance(e, BookSnapshot))  # the subscription came back
    assert adapter.connected
    recovered = await adapter.fills_since(t0)
    assert recovered and {f.client_order_id for f in recovered} == {"while-down"}
    assert sum((f.qty for f in recovered), D(0)) == D("0.0002")
    state = await adapter.order_state("while-down")
    assert state is not None and state.status is OrderStatus.FILLED


async def test_an_operator_steers_the_price_through_a_level(
    exchange: Exchange, connect: Callable[..., Any]
) -> None:
    adapter = await connect("steered")
    events = Events(adapter)
    bid, ask = await top_of_book(adapter, events)
    target = ((bid + ask) / 2 - 500).quantize(TICK)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        async with http.post(exchange.url + "/v1/admin/steer",
                             json={"instrument": "BTC/USD", "price": str(target),
                                   "ticks_per_step": 1000}) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["target"] == str(target)
        # The walk gets there step by step: the quotes follow the mid down to the target.
        ticker = await events.until(
            lambda e: isinstance(e, Ticker) and e.ask is not None and e.ask <= target + 10 * TICK,
            timeout=10)
        assert isinstance(ticker, Ticker) and ticker.bid is not None and ticker.bid < target
        for body, status, code in [
            ({"instrument": "NOPE/USD", "price": "1"}, 400, "unknown_instrument"),
            ({"instrument": "BTC/USD", "price": "abc"}, 400, "invalid_field"),
            ({"instrument": "BTC/USD", "price": "-1"}, 400, "invalid_field"),
            ({"price": "1"}, 400, "missing_field"),
            ({"instrument": "BTC/USD", "price": "1", "ticks_per_step": 0}, 400, "invalid_field"),
            ({"instrument": "BTC/USD", "price": "0.1"}, 409, "invalid_field"),
        ]:
            async with http.post(exchange.url + "/v1/admin/steer", json=body) as resp:
                assert resp.status == status, body
                assert (await resp.json())["error"]["code"] == code, body
    async with aiohttp.ClientSession() as anonymous, anonymous.post(
            exchange.url + "/v1/admin/steer", json={"instrument": "BTC/USD", "price": "1"}
    ) as resp:
        assert resp.status == 401


async def test_orders_outlive_the_client_and_a_new_client_takes_them_over(
    connect: Callable[..., Any],
) -> None:
    first: RemotePaperAdapter = await connect("handover")
    events = Events(first)
    bid, _ = await top_of_book(first, events)
    await first.place_order(
        limit("left-open", "handover", "buy", "0.001", (bid * D("0.8")).quantize(TICK))
    )
    await first.close()  # the Broker worker dies; the exchange does not

    second: RemotePaperAdapter = await connect("handover")
    second_events = Events(second)
    assert [o.client_order_id for o in await second.open_orders()] == ["left-open"]
    await second.cancel_order("left-open")
    cancelled = await second_events.until(finished("left-open"))
    assert isinstance(cancelled, OrderCancelled)


async def test_bad_stream_requests_get_coded_errors_and_the_stream_stays_up(
    exchange: Exchange,
) -> None:
    frames = [
        '{"op": "subscribe"',
        '{"op": "dance", "id": 1}',
        '{"op": "subscribe", "id": 2, "instrument": "DOGE/USD", "channel": "ticker"}',
        '{"op": "subscribe", "id": 3, "instrument": "BTC/USD", "channel": "candles"}',
        '{"op": "subscribe", "id": 4, "instrument": "BTC/USD", "channel": "ticker"}',
    ]
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http,
        http.ws_connect(exchange.url + "/v1/stream", params={"account": "raw-client"}) as ws,
    ):

        async def receive() -> dict[str, Any]:
            msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
            return json.loads(msg.data)  # type: ignore[no-any-return]

        hello = await receive()
        assert hello["type"] == "hello" and hello["account"] == "raw-client"
        replies = []
        for frame in frames:
            await ws.send_str(frame)
            while (reply := await receive())["type"] == "events":
                pass  # market data of the one stream that is subscribed
            replies.append(reply)
        assert [(r.get("id"), r["type"], r.get("error", {}).get("code")) for r in replies] == [
            (None, "error", "bad_json"),
            (1, "error", "unknown_type"),
            (2, "error", "unknown_instrument"),
            (3, "error", "missing_field"),
            (4, "ack", None),
        ]
        await ws.send_bytes(b"x" * (70 * 1024))
        while (closed := await ws.receive(timeout=5)).type is aiohttp.WSMsgType.BINARY:
            pass  # market data already on its way
        assert closed.type is aiohttp.WSMsgType.CLOSE and closed.data == 1009


async def test_orders_go_over_the_stream_with_the_rest_codes(exchange: Exchange) -> None:
    far = "1000.0"  # a bid far under the market: it rests
    frames: list[dict[str, Any]] = [
        {"op": "place", "id": 1, "order": {"client_order_id": "ws-1", "instrument": "BTC/USD",
                                           "side": "buy", "qty": "0.001", "price": far}},
        {"op": "place", "id": 2, "order": {"client_order_id": "ws-1", "instrument": "BTC/USD",
                                           "side": "buy", "qty": "0.001", "price": far}},
        {"op": "modify", "id": 3, "client_order_id": "ws-1", "price": "1001.0"},
        {"op": "cancel", "id": 4, "client_order_id": "ws-1"},
        {"op": "cancel", "id": 5, "client_order_id": "ws-1"},
        {"op": "cancel", "id": 6, "client_order_id": "nobody"},
        {"op": "place", "id": 7, "order": {"client_order_id": "ws-2", "instrument": "BTC/USD",
                                           "side": "buy", "qty": "0.001", "price": "1000.05"}},
        {"op": "place", "id": 8, "order": {"client_order_id": "ws-3", "instrument": "BTC/USD",
                                           "side": "buy", "qty": "-1", "price": far}},
        {"op": "place", "id": 9},
        {"op": "modify", "id": 10, "client_order_id": "ws-1"},
        {"op": "place", "id": 11, "order": {"client_order_id": "ws-4", "account": "someone",
                                            "instrument": "BTC/USD", "side": "buy",
                                            "qty": "0.001", "price": far}},
    ]
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http,
        http.ws_connect(exchange.url + "/v1/stream", params={"account": "ws-trader"}) as ws,
    ):
        async def receive() -> dict[str, Any]:
            msg = await ws.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.BINARY, msg
            return json.loads(msg.data)  # type: ignore[no-any-return]

        assert (await receive())["type"] == "hello"
        replies = []
        before: dict[int, list[str]] = {}  # the order events that came before each answer
        async with asyncio.timeout(20):
            for frame in frames:
                await ws.send_json(frame)
                seen = before[frame["id"]] = []
                while (reply := await receive())["type"] == "events":
                    seen += [e["type"] for e in reply["events"]]
                replies.append(reply)
        # What a request did is on the stream by the time its answer is: events first.
        assert before[1] == ["order_accepted"] and before[2] == []
        assert before[3] == ["order_modified"] and before[4] == ["order_cancelled"]
        summary = [(r["id"], r["type"], r.get("created"), r.get("order", {}).get("status"),
                    r.get("error", {}).get("code")) for r in replies]
        assert summary == [
            (1, "order", True, "accepted", None),
            (2, "order", False, "accepted", None),
            (3, "order", False, "accepted", None),
            (4, "order", False, "cancelled", None),
            (5, "error", None, None, "order_not_cancellable"),
            (6, "error", None, None, "order_not_found"),
            (7, "error", None, None, "price_off_tick"),
            (8, "error", None, None, "invalid_field"),
            (9, "error", None, None, "missing_field"),
            (10, "error", None, None, "invalid_field"),
            (11, "error", None, None, "invalid_field"),
        ]
        assert replies[2]["order"]["price"] == "1001.0"
        assert replies[6]["error"]["field"] == "price"


async def test_a_killed_exchange_makes_calls_retryable_and_the_stream_report_it(
    tmp_path: Path,
) -> None:
    doomed = start_exchange(tmp_path / "doomed")
    adapter = RemotePaperAdapter(
        doomed.url, TOKEN, "orphan", reconnect=ReconnectPolicy(initial_s=0.05, max_s=0.2)
    )
    try:
        await adapter.connect()
        events = Events(adapter)
        doomed.proc.kill()
        lost = await events.until(lambda e: isinstance(e, ConnectionChanged))
        assert lost.connected is False  # type: ignore[union-attr]
        with pytest.raises(RetryableAdapterError):
            await adapter.open_orders()
    finally:
        await adapter.close()
        doomed.stop()


async def test_an_exchange_restarted_on_another_port_is_found_again(tmp_path: Path) -> None:
    # `tradefleet up` restarts a dead exchange on another port when its own was taken
    # meanwhile; the Broker's adapter must follow the URL it announces, not retry the old
    # one forever.
    first = start_exchange(tmp_path / "moving")
    second: Exchange | None = None
    adapter: RemotePaperAdapter | None = None
    try:
        adapter = RemotePaperAdapter(
            first.url, TOKEN, "mover", reconnect=ReconnectPolicy(initial_s=0.05, max_s=0.2),
            locate=partial(read_paper_url, first.data_dir))
        await adapter.connect()
        events = Events(adapter)
        first.proc.kill()
        first.proc.wait(timeout=10)
        await events.until(lambda e: isinstance(e, ConnectionChanged) and not e.connected)
        second = start_exchange(tmp_path / "moving")
        await events.until(lambda e: isinstance(e, ConnectionChanged) and e.connected,
                           timeout=20)
        assert adapter.url == second.url
        assert await adapter.open_orders() == []  # requests go to the new address too
    finally:
        if adapter is not None:
            await adapter.close()
        first.stop()
        if second is not None:
            assert second.stop() == 0, second.stderr()


async def test_a_killed_exchange_restarts_with_its_accounts_orders_and_fills(
    tmp_path: Path,
) -> None:
    first = start_exchange(tmp_path / "venue")
    adapter = RemotePaperAdapter(first.url, TOKEN, "survivor")
    try:
        await adapter.connect()
        events = Events(adapter)
        bid, _ask = await top_of_book(adapter, events)
        await adapter.place_order(market("bought", "survivor", "buy", "0.02"))
        await events.until(finished("bought"))
        rest_price = (bid * D("0.8")).quantize(TICK)
        resting = await adapter.place_order(limit("resting", "survivor", "buy", "0.003",
                                                  rest_price))
        await events.until(lambda e: isinstance(e, OrderAccepted)
                           and e.client_order_id == "resting")
        ledger, fills = await adapter.ledger(), await adapter.fills_since(0)
        open_orders = await adapter.open_orders()
    finally:
        await adapter.close()
    assert fills and ledger.positions and [o.client_order_id for o in open_orders] == ["resting"]
    first.proc.kill()  # kill -9: nothing is closed or flushed
    first.proc.wait(timeout=10)

    second = start_exchange(tmp_path / "venue")
    adapter = RemotePaperAdapter(second.url, TOKEN, "survivor")
    try:
        await adapter.connect()
        events = Events(adapter)
        again = await adapter.ledger()
        assert (again.cash, again.positions, again.fees_paid) == (
            ledger.cash, ledger.positions, ledger.fees_paid)
        assert await adapter.fills_since(0) == fills
        assert [o.model_dump(exclude={"ts"}) for o in await adapter.open_orders()] == [
            o.model_dump(exclude={"ts"}) for o in open_orders]
        # The resting order is live in the book again, and order numbers go on.
        await adapter.cancel_order("resting")
        await events.until(finished("resting"))
        fresh = await adapter.place_order(limit("after", "survivor", "buy", "0.003",
                                                rest_price))
        assert fresh.order_id not in (resting.order_id, *(f.order_id for f in fills))
        with pytest.raises(OrderRejectedError):  # ids used before the restart stay used
            await adapter.place_order(market("bought", "survivor", "sell", "0.02"))
    finally:
        await adapter.close()
        assert second.stop() == 0, second.stderr()


def test_a_bad_paper_key_exits_2_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(
        "[paper]\nseed = 1\nvolatilty = 0.1\n[[paper.instruments]]\n"
        'instrument = "BTC/USD"\ntick_size = 0\nlot_size = 1\ninitial_price = 1\n'
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "workers.broker.adapters.paper.server",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path),
            "--config",
            str(config),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "paper.volatilty: unknown key" in done.stderr
    assert "paper.instruments.0.tick_size" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert read_paper_url(tmp_path) is None


async def test_sigterm_closes_streams_as_going_away_and_removes_the_url(tmp_path: Path) -> None:
    running = start_exchange(tmp_path / "short-lived")
    assert read_paper_url(running.data_dir) == running.url
    adapter = RemotePaperAdapter(
        running.url, TOKEN, "watcher", reconnect=ReconnectPolicy(initial_s=5.0, jitter=0.0)
    )
    try:
        await adapter.connect()
        events = Events(adapter)
        running.proc.send_signal(signal.SIGTERM)
        lost = await events.until(lambda e: isinstance(e, ConnectionChanged))
        assert lost.connected is False and "1001" in lost.reason  # type: ignore[union-attr]
        assert await asyncio.to_thread(running.proc.wait, 10) == 0, running.stderr()
    finally:
        await adapter.close()
        running.stop()
    assert read_paper_url(running.data_dir) is None
