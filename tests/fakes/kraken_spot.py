"""A fake Kraken spot venue on loopback: WebSocket v2 (public and private) and private REST.

It speaks the protocol in ../shared/data/exchanges/PROTOCOL_NOTES.md, so an adapter
pointed at it cannot tell it from the real endpoints on the paths it exercises:

* **public WS** (``ws_public_url``): ``status`` first, one subscribe ack per symbol with
  ``success``, ``instrument`` (the real v2 snapshot from ``reference/``, sent verbatim),
  ``book`` snapshots and updates replayed from the real BTC/USD recording with their real
  checksums and engine-precision numbers, ``trade`` with contiguous ``trade_id``,
  ``ticker``, ``ohlc``, 1 Hz ``heartbeat``, ``ping`` -> ``pong``.
* **private WS** (``ws_private_url``): every request needs a token issued by REST
  ``GetWebSocketsToken``; ``executions`` with a per-subscription ``sequence``;
  ``add_order`` / ``amend_order`` / ``cancel_order`` with ``cl_ord_id``, answered and
  reported (pending_new, new, trade, canceled, amended) like the venue, including
  Kraken's error strings and its per-pair rate counter.
* **REST** ``POST /0/private/<Endpoint>``: ``API-Key`` and ``API-Sign`` verified exactly
  as Kraken does (HMAC-SHA512 over path + SHA256(nonce + body), nonce strictly
  increasing); ``GetWebSocketsToken``, ``AddOrder``, ``CancelOrder``, ``OpenOrders``,
  ``QueryOrders``, ``TradesHistory``, ``Balance``.

Market model: the public BTC/USD book is the recording, advanced by :meth:`play` (or
:meth:`autoplay`). Orders that cross it trade against its levels without changing it
(the recording continues unchanged); resting orders trade when a test calls
:meth:`fill`. Other listed pairs have an empty book.

Misbehaviour on demand: :meth:`drop_connections` (TCP reset or a close code),
:meth:`maintenance_close`, :meth:`stall_connections` (a black-holed socket),
:meth:`refuse_connections` (upgrades answered 5xx), :meth:`corrupt_next_checksum`,
:meth:`skip_next_book_update`, :meth:`skip_next_execution`, :meth:`fail_next` (any WS
method or REST endpoint answers a given Kraken error), :meth:`fail_rest` (HTTP 5xx),
:meth:`slow` (delayed answers), ``rate_threshold`` (the venue's own rate counter),
``idle_timeout_s`` (close sockets that send nothing), ``heartbeat_s``.

:class:`EventRecorder` (at the end) consumes an adapter's ``events()`` for tests.

The recordings are read in place (``TRADEFLEET_EXCHANGE_DATA`` or ``../shared/data/
exchanges`` beside the repository) and never copied. Error texts that PROTOCOL_NOTES does
not document are marked ``# fake's wording``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import os
import secrets
import time
import zlib
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

log = logging.getLogger(__name__)

RECORDING = "kraken_spot_v2/btcusd_book10_2023-07-30.json"
INSTRUMENTS = "reference/kraken_v2_instrument_snapshot.json"
BOOK_SYMBOL = "BTC/USD"
BOOK_DEPTHS = (10, 25, 100, 500, 1000)
OHLC_INTERVALS = (1, 5, 15, 30, 60, 240, 1440, 10080, 21600)
TAKER_FEE = Decimal("0.0040")
MAKER_FEE = Decimal("0.0025")
ZERO = Decimal(0)
# REST asset codes of the common codes the fake's balances use.
REST_ASSET = {"BTC": "XXBT", "USD": "ZUSD", "ETH": "XETH", "EUR": "ZEUR", "DOGE": "XXDG"}
V1_CODE = {"BTC": "XBT", "DOGE": "XDG"}


def exchange_data_dir() -> Path:
    """The shared recordings directory (read only)."""
    override = os.environ.get("TRADEFLEET_EXCHANGE_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "exchanges"


# ---------------------------------------------------------------- wire helpers


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dumps(value: Any) -> str:
    """JSON with Decimals written as numbers with their exact digits (engine precision)."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return json.dumps(value)


def kraken_checksum(bids: Iterable[tuple[str, str]], asks: Iterable[tuple[str, str]]) -> int:
    """CRC32 of the top 10 asks then top 10 bids, tokens with '.' removed and leading 0s
    stripped. Levels are (price_text, qty_text), best first. Independent of the adapter."""

    def tokens(levels: Iterable[tuple[str, str]]) -> str:
        out = []
        for index, (price, qty) in enumerate(levels):
            if index == 10:
                break
            out.append(price.replace(".", "").lstrip("0") + qty.replace(".", "").lstrip("0"))
        return "".join(out)

    return zlib.crc32((tokens(asks) + tokens(bids)).encode())


def kraken_order_id() -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

    def part(n: int) -> str:
        return "".join(secrets.choice(alphabet) for _ in range(n))

    return f"O{part(5)}-{part(5)}-{part(6)}"


def kraken_trade_txid() -> str:
    return "T" + kraken_order_id()[1:]


def rest_pair(symbol: str) -> str:
    base, quote = symbol.split("/")
    return V1_CODE.get(base, base) + V1_CODE.get(quote, quote)


@dataclass
class Pair:
    symbol: str
    base: str
    quote: str
    price_precision: int
    qty_precision: int
    price_increment: Decimal
    qty_increment: Decimal
    qty_min: Decimal
    cost_min: Decimal

    def price(self, value: Decimal) -> Decimal:
        return value.quantize(Decimal(1).scaleb(-self.price_precision))

    def qty(self, value: Decimal) -> Decimal:
        return value.quantize(Decimal(1).scaleb(-self.qty_precision))


# ---------------------------------------------------------------- venue state


@dataclass
class FakeOrder:
    order_id: str
    cl_ord_id: str | None
    userref: int
    symbol: str
    side: str
    order_type: str
    qty: Decimal
    limit_price: Decimal | None
    time_in_force: str
    opened: float
    status: str = "open"  # open | closed | canceled | expired
    filled: Decimal = ZERO
    cost: Decimal = ZERO
    fee: Decimal = ZERO
    closed: float | None = None
    reason: str | None = None
    trades: list[str] = field(default_factory=list)
    placed_at: float = 0.0  # monotonic, for the rate counter's age costs

    @property
    def avg_price(self) -> Decimal:
        return self.cost / self.filled if self.filled else ZERO


@dataclass
class FakeTrade:
    txid: str
    order_id: str
    symbol: str
    side: str
    order_type: str
    price: Decimal
    qty: Decimal
    cost: Decimal
    fee: Decimal
    maker: bool
    time: float
    trade_id: int


@dataclass
class Connection:
    kind: str  # "public" | "private"
    ws: web.WebSocketResponse
    request: web.Request
    subscriptions: dict[tuple[str, str | None], dict[str, Any]] = field(default_factory=dict)
    executions_seq: int | None = None  # next sequence of the executions subscription
    last_message: float = field(default_factory=time.monotonic)
    pings: int = 0
    stalled: bool = False  # black-holed: reads nothing, sends nothing
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, frame: dict[str, Any]) -> None:
        async with self.lock:
            if not self.ws.closed and not self.stalled:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.ws.send_str(dumps(frame))


class FakeKrakenSpot:
    """The fake venue. ``async with FakeKrakenSpot() as venue:`` starts it on port 0."""

    def __init__(
        self,
        *,
        api_key: str = "fake-api-key",
        api_secret: str | None = None,
        rate_threshold: float = 60.0,
        rate_decay_per_s: float = 1.0,
        maxratecount: int = 60,
        heartbeat_s: float = 1.0,
        idle_timeout_s: float | None = None,
        balances: dict[str, Decimal] | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.api_key = api_key
        self.api_secret = api_secret or base64.b64encode(secrets.token_bytes(64)).decode()
        self.rate_threshold = rate_threshold
        self.rate_decay_per_s = rate_decay_per_s
        self.maxratecount = maxratecount
        self.heartbeat_s = heartbeat_s
        self.idle_timeout_s = idle_timeout_s
        self.balances = balances or {"USD": Decimal("100000.0000"), "BTC": Decimal("10.0")}
        data = data_dir or exchange_data_dir()
        self._instrument_text = (data / INSTRUMENTS).read_text(encoding="utf-8")
        self.pairs = self._load_pairs(json.loads(self._instrument_text, parse_float=Decimal))
        recording = json.loads((data / RECORDING).read_text(encoding="utf-8"), parse_float=Decimal)
        self._book_init = recording["init"]["data"][0]
        self._book_updates = [update["data"][0] for update in recording["updates"]]
        self.position = 0  # updates published so far
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self._book_timestamp = "2023-07-30T15:29:58.000000Z"
        self._load_book()
        # accounts
        self.orders: dict[str, FakeOrder] = {}
        self.trades: list[FakeTrade] = []
        self.tokens: set[str] = set()
        self._last_nonce = 0
        self._rate: dict[str, tuple[float, float]] = {}  # symbol -> (value, at)
        self._trade_ids = itertools.count(62887576)
        self.public_trades: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._candles: dict[tuple[str, int], dict[str, Any]] = {}
        # observability for tests
        self.connections: list[Connection] = []
        self.connects = {"public": 0, "private": 0}
        self.requests: list[tuple[str, str, dict[str, Any]]] = []  # (kind, method, params)
        self.rest_calls: list[tuple[str, dict[str, str]]] = []  # verified REST calls
        self.rest_refusals: list[tuple[str, str]] = []  # (endpoint, error)
        self.book_updates_sent = 0
        # misbehaviour knobs
        self._corrupt_checksums: dict[str, int] = defaultdict(int)
        self._skip_book_updates = 0
        self._skip_executions = 0
        self._fail_next: dict[str, list[str]] = defaultdict(list)
        self._fail_rest: list[int] = []
        self._slow: dict[str, float] = {"rest": 0.0, "ws": 0.0}
        self._refuse: dict[str, int] = {}  # kind -> HTTP status for WS upgrades
        self.attempts = {"public": 0, "private": 0}  # upgrade requests, refused ones too
        # server
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._autoplay: asyncio.Task[None] | None = None
        self.base_url = ""
        self.changed = asyncio.Event()  # set whenever a request or connection arrives

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_get("/ws/public/v2", self._public_ws)
        app.router.add_get("/ws/private/v2", self._private_ws)
        app.router.add_post("/0/private/{endpoint}", self._rest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        await self.stop_autoplay()
        for conn in list(self.connections):
            with contextlib.suppress(Exception):
                await conn.ws.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def rest_url(self) -> str:
        return self.base_url

    @property
    def ws_public_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/ws/public/v2"

    @property
    def ws_private_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/ws/private/v2"

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _note(self) -> None:
        self.changed.set()

    # ------------------------------------------------------------ data

    @staticmethod
    def _load_pairs(snapshot: dict[str, Any]) -> dict[str, Pair]:
        pairs = {}
        for raw in snapshot["data"]["pairs"]:
            try:
                pairs[raw["symbol"]] = Pair(
                    symbol=raw["symbol"],
                    base=raw["base"],
                    quote=raw["quote"],
                    price_precision=int(raw["price_precision"]),
                    qty_precision=int(raw["qty_precision"]),
                    price_increment=Decimal(str(raw["price_increment"])),
                    qty_increment=Decimal(str(raw["qty_increment"])),
                    qty_min=Decimal(str(raw["qty_min"])),
                    cost_min=Decimal(str(raw.get("cost_min", 0))),
                )
            except (KeyError, ValueError, ArithmeticError):
                continue
        return pairs

    def _load_book(self) -> None:
        self.bids = {level["price"]: level["qty"] for level in self._book_init["bids"]}
        self.asks = {level["price"]: level["qty"] for level in self._book_init["asks"]}
        if self._levels_checksum() != self._book_init["checksum"]:
            raise AssertionError("fake venue: the recording's snapshot does not verify")

    def _levels(self, side: str, depth: int = 10) -> list[tuple[Decimal, Decimal]]:
        book = self.bids if side == "bids" else self.asks
        prices = sorted(book, reverse=side == "bids")[:depth]
        return [(price, book[price]) for price in prices]

    def _levels_checksum(self) -> int:
        pair = self.pairs[BOOK_SYMBOL]
        fmt = [
            (format(pair.price(p), "f"), format(pair.qty(q), "f")) for p, q in self._levels("bids")
        ]
        fmt_asks = [
            (format(pair.price(p), "f"), format(pair.qty(q), "f")) for p, q in self._levels("asks")
        ]
        return kraken_checksum(fmt, fmt_asks)

    def book(
        self, symbol: str = BOOK_SYMBOL
    ) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """The venue's current top 10 (bids best first, asks best first)."""
        if symbol != BOOK_SYMBOL:
            return [], []
        return self._levels("bids"), self._levels("asks")

    @property
    def updates_left(self) -> int:
        return len(self._book_updates) - self.position

    # ------------------------------------------------------------ market replay

    async def play(self, count: int = 1) -> int:
        """Publish the next ``count`` recorded book updates; returns how many were left."""
        for _ in range(count):
            if self.position >= len(self._book_updates):
                break
            update = self._book_updates[self.position]
            self.position += 1
            for side, book in (("bids", self.bids), ("asks", self.asks)):
                for level in update[side]:
                    if level["qty"] == 0:
                        book.pop(level["price"], None)
                    else:
                        book[level["price"]] = level["qty"]
                for price in sorted(book, reverse=side == "bids")[10:]:
                    del book[price]
            checksum = update["checksum"]
            if self._levels_checksum() != checksum:
                raise AssertionError(f"fake venue: recorded update {self.position} does not verify")
            self._book_timestamp = update["timestamp"]
            await self._publish_book_update(update, checksum)
        return self.updates_left

    async def autoplay(self, interval_s: float = 0.005) -> None:
        """Publish recorded updates in the background, one per ``interval_s``."""
        await self.stop_autoplay()

        async def run() -> None:
            while self.updates_left:
                await self.play(1)
                await asyncio.sleep(interval_s)

        self._autoplay = self._spawn(run(), "fake-kraken-autoplay")

    async def stop_autoplay(self) -> None:
        task, self._autoplay = self._autoplay, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=5)

    async def _publish_book_update(self, update: dict[str, Any], checksum: int) -> None:
        pair = self.pairs[BOOK_SYMBOL]
        for conn in self._subscribers("public", "book", BOOK_SYMBOL):
            if self._skip_book_updates:
                self._skip_book_updates -= 1
                continue
            sent = checksum
            if self._corrupt_checksums[BOOK_SYMBOL]:
                self._corrupt_checksums[BOOK_SYMBOL] -= 1
                sent = checksum ^ 0x5A5A5A5A
            data = {
                "symbol": BOOK_SYMBOL,
                "bids": [
                    {"price": pair.price(level["price"]), "qty": pair.qty(level["qty"])}
                    for level in update["bids"]
                ],
                "asks": [
                    {"price": pair.price(level["price"]), "qty": pair.qty(level["qty"])}
                    for level in update["asks"]
                ],
                "checksum": sent,
                "timestamp": update["timestamp"],
            }
            self.book_updates_sent += 1
            await conn.send({"channel": "book", "type": "update", "data": [data]})

    def _book_snapshot(self, symbol: str, depth: int) -> dict[str, Any]:
        pair = self.pairs[symbol]
        bids, asks = self.book(symbol)
        bids, asks = bids[:depth], asks[:depth]
        text_bids = [(format(pair.price(p), "f"), format(pair.qty(q), "f")) for p, q in bids]
        text_asks = [(format(pair.price(p), "f"), format(pair.qty(q), "f")) for p, q in asks]
        return {
            "channel": "book",
            "type": "snapshot",
            "data": [
                {
                    "symbol": symbol,
                    "bids": [{"price": pair.price(p), "qty": pair.qty(q)} for p, q in bids],
                    "asks": [{"price": pair.price(p), "qty": pair.qty(q)} for p, q in asks],
                    "checksum": kraken_checksum(text_bids, text_asks),
                    "timestamp": self._book_timestamp,
                }
            ],
        }

    async def publish_trade(
        self, symbol: str, side: str, price: Decimal, qty: Decimal, ord_type: str = "limit"
    ) -> dict[str, Any]:
        """Print one public trade (``side`` is the taker's); updates ticker and ohlc."""
        pair = self.pairs[symbol]
        trade = {
            "symbol": symbol,
            "side": side,
            "price": pair.price(price),
            "qty": pair.qty(qty),
            "ord_type": ord_type,
            "trade_id": next(self._trade_ids),
            "timestamp": now_rfc3339(),
        }
        self.public_trades[symbol].append(trade)
        del self.public_trades[symbol][:-50]
        for conn in self._subscribers("public", "trade", symbol):
            await conn.send({"channel": "trade", "type": "update", "data": [trade]})
        for conn in self._subscribers("public", "ticker", symbol):
            await conn.send({"channel": "ticker", "type": "update", "data": [self._ticker(symbol)]})
        listeners = [
            (conn, params["interval"])
            for conn in self.connections
            for (channel, sub_symbol), params in list(conn.subscriptions.items())
            if channel == "ohlc" and sub_symbol == symbol
        ]
        candles = {
            interval: self._candle(symbol, interval, pair.price(price), pair.qty(qty))
            for interval in {interval for _, interval in listeners}
        }
        for conn, interval in listeners:
            frame: dict[str, Any] = {"channel": "ohlc", "type": "update"}
            frame.update(timestamp=now_rfc3339(), data=[candles[interval]])
            await conn.send(frame)
        return trade

    def _candle(self, symbol: str, interval: int, price: Decimal, qty: Decimal) -> dict[str, Any]:
        now = time.time()
        begin = int(now // (interval * 60) * interval * 60)
        key = (symbol, interval)
        candle = self._candles.get(key)
        begin_text = datetime.fromtimestamp(begin, UTC).strftime("%Y-%m-%dT%H:%M:%S.000000000Z")
        if candle is None or candle["interval_begin"] != begin_text:
            candle = {
                "symbol": symbol,
                "open": price,
                "high": price,
                "low": price,
                "close": price,
                "vwap": price,
                "trades": 0,
                "volume": ZERO,
                "interval_begin": begin_text,
                "interval": interval,
            }
            self._candles[key] = candle
        candle["high"] = max(candle["high"], price)
        candle["low"] = min(candle["low"], price)
        candle["close"] = price
        candle["trades"] += 1
        candle["volume"] += qty
        return dict(candle)

    def _ticker(self, symbol: str) -> dict[str, Any]:
        pair = self.pairs[symbol]
        bids, asks = self.book(symbol)
        trades = self.public_trades.get(symbol) or []
        last = trades[-1]["price"] if trades else (bids[0][0] if bids else ZERO)

        def price(levels: list[tuple[Decimal, Decimal]]) -> tuple[Decimal, Decimal]:
            return (pair.price(levels[0][0]), pair.qty(levels[0][1])) if levels else (ZERO, ZERO)

        bid, bid_qty = price(bids)
        ask, ask_qty = price(asks)
        return {
            "symbol": symbol,
            "bid": bid,
            "bid_qty": bid_qty,
            "ask": ask,
            "ask_qty": ask_qty,
            "last": pair.price(last),
            "volume": Decimal("1234.56789012"),
            "vwap": pair.price(last),
            "low": pair.price(last),
            "high": pair.price(last),
            "change": ZERO,
            "change_pct": ZERO,
            "timestamp": now_rfc3339(),
        }

    # ------------------------------------------------------------ misbehaviour knobs

    def corrupt_next_checksum(self, symbol: str = BOOK_SYMBOL, count: int = 1) -> None:
        """The next ``count`` book updates of ``symbol`` carry a wrong checksum."""
        self._corrupt_checksums[symbol] += count

    def skip_next_book_update(self, count: int = 1) -> None:
        """The next ``count`` book updates are applied by the venue but not sent (a gap)."""
        self._skip_book_updates += count

    def skip_next_execution(self, count: int = 1) -> None:
        """The next ``count`` executions frames consume a sequence number but are not sent."""
        self._skip_executions += count

    def fail_next(self, method: str, error: str, count: int = 1) -> None:
        """The next ``count`` calls of a WS method (``add_order``...) or REST endpoint
        (``AddOrder``...) answer Kraken error ``error`` and change nothing."""
        self._fail_next[method].extend([error] * count)

    def fail_rest(self, count: int = 1, status: int = 503) -> None:
        """The next ``count`` REST calls answer HTTP ``status`` with an HTML body."""
        self._fail_rest.extend([status] * count)

    def slow(self, seconds: float, what: str = "all") -> None:
        """Delay every REST answer and/or WS request answer by ``seconds``."""
        for key in ("rest", "ws"):
            if what in (key, "all"):
                self._slow[key] = seconds

    async def drop_connections(self, kind: str = "all", *, code: int | None = None) -> int:
        """Cut ``public``/``private``/``all`` sockets: abruptly (TCP reset) without ``code``,
        with a close frame otherwise. Returns how many were cut."""
        victims = [c for c in self.connections if kind in ("all", c.kind) and not c.ws.closed]
        for conn in victims:
            if code is None:
                transport = conn.request.transport
                if transport is not None:
                    transport.abort()
            else:
                with contextlib.suppress(Exception):
                    await conn.ws.close(code=code, message=b"fake venue closed the socket")
        return len(victims)

    def stall_connections(self, kind: str = "all") -> int:
        """Make open sockets of ``kind`` a black hole (a half-open TCP connection): they
        stay open but nothing is answered or sent any more. Returns how many."""
        victims = [c for c in self.connections if kind in ("all", c.kind)]
        for conn in victims:
            conn.stalled = True
        return len(victims)

    def refuse_connections(self, kind: str = "all", status: int = 503) -> None:
        """Answer new WebSocket upgrades of ``kind`` with HTTP ``status`` until
        :meth:`accept_connections` (existing sockets stay up)."""
        for key in ("public", "private"):
            if kind in ("all", key):
                self._refuse[key] = status

    def accept_connections(self, kind: str = "all") -> None:
        """Undo :meth:`refuse_connections`."""
        for key in ("public", "private"):
            if kind in ("all", key):
                self._refuse.pop(key, None)

    def client_settings(self) -> dict[str, str]:
        """Credentials and endpoint URLs a client needs to use this venue."""
        return {
            "api_key": self.api_key,
            "api_secret": self.api_secret,
            "rest_url": self.rest_url,
            "ws_public_url": self.ws_public_url,
            "ws_private_url": self.ws_private_url,
        }

    async def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
    ) -> None:
        """Wait (bounded) until ``predicate()`` holds; re-checked whenever a request or a
        connection reaches the venue, and at least every 50 ms."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self.changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.changed.wait(), 0.05)
        except TimeoutError:
            raise AssertionError(
                f"fake venue: timed out after {timeout}s waiting for {what}"
            ) from None

    async def maintenance_close(self, kind: str = "all") -> int:
        """Announce ``system: maintenance`` and close with 1012, as during a venue restart."""
        for conn in self.connections:
            if kind in ("all", conn.kind):
                await conn.send(self._status("maintenance"))
        return await self.drop_connections(kind, code=1012)

    # ------------------------------------------------------------ helpers for tests

    def _subscribers(self, kind: str, channel: str, symbol: str | None) -> list[Connection]:
        return [
            conn
            for conn in self.connections
            if conn.kind == kind and (channel, symbol) in conn.subscriptions and not conn.ws.closed
        ]

    def requests_of(self, method: str, kind: str | None = None) -> list[dict[str, Any]]:
        """Parameters of every WS request ``method`` received (tokens removed)."""
        return [p for k, m, p in self.requests if m == method and kind in (None, k)]

    def order(self, ref: str) -> FakeOrder:
        """An order by ``order_id`` or ``cl_ord_id`` (the latest with that cl_ord_id)."""
        if ref in self.orders:
            return self.orders[ref]
        matches = [o for o in self.orders.values() if o.cl_ord_id == ref]
        if not matches:
            raise KeyError(ref)
        return matches[-1]

    async def fill(
        self, ref: str, qty: Decimal | None = None, price: Decimal | None = None
    ) -> FakeTrade:
        """A counterparty takes a resting order: a maker fill of ``qty`` (default: the rest)
        at ``price`` (default: its limit price)."""
        order = self.order(ref)
        if order.status != "open":
            raise ValueError(f"order {ref} is {order.status}")
        qty = qty if qty is not None else order.qty - order.filled
        fill_price = price if price is not None else order.limit_price
        assert fill_price is not None
        trade = await self._execute(order, qty, fill_price, maker=True)
        if order.filled >= order.qty:
            await self._close(order, "closed", None)
        return trade

    # ------------------------------------------------------------ WebSocket plumbing

    async def _public_ws(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_ws(request, "public")

    async def _private_ws(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_ws(request, "private")

    def _status(self, system: str = "online") -> dict[str, Any]:
        return {
            "channel": "status",
            "type": "update",
            "data": [
                {
                    "version": "2.0.10",
                    "system": system,
                    "api_version": "v2",
                    "connection_id": 15113583034416118705,
                }
            ],
        }

    async def _serve_ws(self, request: web.Request, kind: str) -> web.StreamResponse:
        self.attempts[kind] += 1
        self._note()
        if kind in self._refuse:
            return web.Response(
                status=self._refuse[kind], text="<html>unavailable</html>", content_type="text/html"
            )
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1 << 20)
        await ws.prepare(request)
        conn = Connection(kind, ws, request)
        self.connections.append(conn)
        self.connects[kind] += 1
        self._note()
        keepalive = self._spawn(self._heartbeats(conn), f"fake-kraken-heartbeat-{kind}")
        try:
            await conn.send(self._status())
            async for message in ws:
                if message.type is not WSMsgType.TEXT:
                    continue
                conn.last_message = time.monotonic()
                if conn.stalled:
                    continue
                try:
                    await self._on_ws_message(conn, message.data)
                except Exception:  # a bug in the fake must not look like a venue close
                    log.exception("fake Kraken failed on %s", message.data[:200])
                    raise
        finally:
            keepalive.cancel()
            self.connections.remove(conn)
            self._note()
        return ws

    async def _heartbeats(self, conn: Connection) -> None:
        while not conn.ws.closed:
            await asyncio.sleep(self.heartbeat_s)
            if self.idle_timeout_s is not None and (
                time.monotonic() - conn.last_message > self.idle_timeout_s
            ):
                with contextlib.suppress(Exception):
                    await conn.ws.close(code=1000, message=b"idle")  # fake's wording
                return
            await conn.send({"channel": "heartbeat"})

    def _answer(
        self,
        method: str,
        req_id: Any,
        time_in: str,
        *,
        result: Any = None,
        error: str | None = None,
    ) -> dict[str, Any]:
        frame: dict[str, Any] = {"method": method}
        if req_id is not None:
            frame["req_id"] = req_id
        if error is None:
            frame["result"] = result
            frame["success"] = True
        else:
            frame["error"] = error
            frame["success"] = False
        frame["time_in"] = time_in
        frame["time_out"] = now_rfc3339()
        return frame

    async def _on_ws_message(self, conn: Connection, text: str) -> None:
        time_in = now_rfc3339()
        try:
            message = json.loads(text, parse_float=Decimal)
            method = message["method"]
            params = message.get("params") or {}
            req_id = message.get("req_id")
        except (ValueError, KeyError, TypeError, AttributeError):
            await conn.send(
                {
                    "error": "EGeneral:Invalid arguments",
                    "success": False,
                    "time_in": time_in,
                    "time_out": now_rfc3339(),
                }
            )
            return
        self.requests.append((conn.kind, method, {k: v for k, v in params.items() if k != "token"}))
        self._note()
        if method == "ping":
            conn.pings += 1
            await conn.send(
                {"method": "pong", "req_id": req_id, "time_in": time_in, "time_out": now_rfc3339()}
            )
            return
        if self._slow["ws"]:
            await asyncio.sleep(self._slow["ws"])
        if self._fail_next.get(method):
            error = self._fail_next[method].pop(0)
            await conn.send(self._answer(method, req_id, time_in, error=error))
            return
        if conn.kind == "private" and params.get("token") not in self.tokens:
            await conn.send(self._answer(method, req_id, time_in, error="ESession:Invalid session"))
            return
        handler = {
            "subscribe": self._ws_subscribe,
            "unsubscribe": self._ws_unsubscribe,
            "add_order": self._ws_add_order,
            "amend_order": self._ws_amend_order,
            "cancel_order": self._ws_cancel_order,
        }.get(method)
        if handler is None or (conn.kind == "public" and method.endswith("_order")):
            await conn.send(self._answer(method, req_id, time_in, error="EGeneral:Unknown method"))
            return
        await handler(conn, params, req_id, time_in)

    # ------------------------------------------------------------ subscriptions

    async def _ws_subscribe(
        self, conn: Connection, params: dict[str, Any], req_id: Any, time_in: str
    ) -> None:
        channel = params.get("channel")
        if conn.kind == "private":
            if channel != "executions":
                await conn.send(
                    self._answer("subscribe", req_id, time_in, error="EGeneral:Invalid arguments")
                )
                return
            snap_orders = params.get("snap_orders", True)
            conn.subscriptions[("executions", None)] = dict(params)
            conn.executions_seq = 1
            await conn.send(
                self._answer(
                    "subscribe",
                    req_id,
                    time_in,
                    result={
                        "channel": "executions",
                        "maxratecount": self.maxratecount,
                        "snap_orders": snap_orders,
                        "snap_trades": params.get("snap_trades", False),
                    },
                )
            )
            data = (
                [
                    self._order_report(o, "new", full=True)
                    for o in self.orders.values()
                    if o.status == "open"
                ]
                if snap_orders
                else []
            )
            await self._send_executions(conn, "snapshot", data)
            return
        if channel == "instrument":
            conn.subscriptions[("instrument", None)] = dict(params)
            await conn.send(
                self._answer(
                    "subscribe", req_id, time_in, result={"channel": "instrument", "snapshot": True}
                )
            )
            async with conn.lock:
                await conn.ws.send_str(self._instrument_text)
            return
        if channel not in ("book", "trade", "ticker", "ohlc"):
            await conn.send(
                self._answer("subscribe", req_id, time_in, error=f"Channel {channel} not supported")
            )  # fake's wording
            return
        depth = params.get("depth", 10)
        if channel == "book" and depth not in BOOK_DEPTHS:
            await conn.send(
                self._answer("subscribe", req_id, time_in, error="Subscription depth not supported")
            )
            return
        interval = params.get("interval", 1)
        if channel == "ohlc" and interval not in OHLC_INTERVALS:
            await conn.send(
                self._answer(
                    "subscribe", req_id, time_in, error="Subscription ohlc interval not supported"
                )
            )
            return
        for symbol in params.get("symbol") or []:
            if symbol not in self.pairs:
                frame = self._answer(
                    "subscribe", req_id, time_in, error=f"Currency pair not supported {symbol}"
                )
                frame["symbol"] = symbol
                await conn.send(frame)
                continue
            key = (channel, symbol)
            if key in conn.subscriptions:
                frame = self._answer("subscribe", req_id, time_in, error="Already subscribed")
                frame["symbol"] = symbol  # fake's wording
                await conn.send(frame)
                continue
            conn.subscriptions[key] = dict(params)
            result: dict[str, Any] = {"channel": channel}
            if channel == "book":
                result["depth"] = depth
            if channel == "ohlc":
                result["interval"] = interval
            snapshot = params.get("snapshot", channel != "trade")
            result["snapshot"] = snapshot
            result["symbol"] = symbol
            if channel == "ohlc":
                result["warnings"] = ["timestamp is deprecated, use interval_begin"]
            await conn.send(self._answer("subscribe", req_id, time_in, result=result))
            if not snapshot:
                continue
            if channel == "book":
                await conn.send(self._book_snapshot(symbol, depth))
            elif channel == "ticker":
                await conn.send(
                    {"channel": "ticker", "type": "snapshot", "data": [self._ticker(symbol)]}
                )
            elif channel == "trade":
                await conn.send(
                    {
                        "channel": "trade",
                        "type": "snapshot",
                        "data": list(self.public_trades.get(symbol, [])),
                    }
                )
            elif channel == "ohlc":
                candle = self._candles.get((symbol, interval))
                await conn.send(
                    {
                        "channel": "ohlc",
                        "type": "snapshot",
                        "timestamp": now_rfc3339(),
                        "data": [dict(candle)] if candle else [],
                    }
                )

    async def _ws_unsubscribe(
        self, conn: Connection, params: dict[str, Any], req_id: Any, time_in: str
    ) -> None:
        channel = params.get("channel")
        for symbol in params.get("symbol") or [None]:
            key = (str(channel), symbol)
            if conn.subscriptions.pop(key, None) is None:
                frame = self._answer("unsubscribe", req_id, time_in, error="Subscription Not Found")
                await conn.send(frame)  # fake's wording
                continue
            result = {"channel": channel, "symbol": symbol}
            if channel == "book":
                result["depth"] = params.get("depth", 10)
            await conn.send(self._answer("unsubscribe", req_id, time_in, result=result))

    # ------------------------------------------------------------ orders (shared by WS and REST)

    def _rate_admit(self, symbol: str, cost: float) -> bool:
        now = time.monotonic()
        value, at = self._rate.get(symbol, (0.0, now))
        value = max(0.0, value - self.rate_decay_per_s * (now - at))
        if value + cost > self.rate_threshold:
            self._rate[symbol] = (value, now)
            return False
        self._rate[symbol] = (value + cost, now)
        return True

    @staticmethod
    def _cancel_cost(age: float) -> float:
        for bound, cost in ((5, 8), (10, 6), (15, 5), (45, 4), (90, 2), (300, 1)):
            if age < bound:
                return float(cost)
        return 0.0

    def _validate_new(
        self,
        symbol: str,
        side: str,
        order_type: str,
        qty: Decimal,
        price: Decimal | None,
        cl_ord_id: str | None,
    ) -> str | None:
        pair = self.pairs.get(symbol)
        if pair is None:
            return "EQuery:Unknown asset pair"
        if side not in ("buy", "sell") or order_type not in ("limit", "market"):
            return "EGeneral:Invalid arguments"
        if qty <= 0 or qty % pair.qty_increment:
            return "EGeneral:Invalid arguments:order_qty"  # fake's wording
        if qty < pair.qty_min:
            return "EOrder:Order minimum not met"
        if order_type == "limit":
            if price is None or price <= 0:
                return "EGeneral:Invalid arguments:limit_price"  # fake's wording
            if price % pair.price_increment:
                return "EOrder:Tick size check failed"
            if qty * price < pair.cost_min:
                return "EOrder:Cost minimum not met"
        if cl_ord_id is not None:
            uuid_like = len(cl_ord_id) in (32, 36) and all(
                c in "0123456789abcdefABCDEF-" for c in cl_ord_id
            )
            if not uuid_like and len(cl_ord_id) > 18:
                return "EGeneral:Invalid arguments:cl_ord_id"  # fake's wording
            if any(o.cl_ord_id == cl_ord_id and o.status == "open" for o in self.orders.values()):
                return "EOrder:Duplicate cl_ord_id"  # fake's wording
        reference = price if price is not None else self._best("asks" if side == "buy" else "bids")
        if side == "buy":
            if reference is None or self.balances.get(pair.quote, ZERO) < qty * reference:
                return "EOrder:Insufficient funds"
        elif self.balances.get(pair.base, ZERO) < qty:
            return "EOrder:Insufficient funds"
        return None

    def _best(self, side: str) -> Decimal | None:
        levels = self._levels(side, 1)
        return levels[0][0] if levels else None

    async def _place(
        self,
        *,
        symbol: str,
        side: str,
        order_type: str,
        qty: Decimal,
        price: Decimal | None,
        tif: str,
        cl_ord_id: str | None,
        userref: int,
        answer: Any,
    ) -> FakeOrder | str:
        """Validate and accept an order; ``answer(order)`` sends the request's success
        answer between the pending_new and new reports, as the venue does. Returns the
        order or a Kraken error string."""
        if not self._rate_admit(symbol, 1.0):
            return "EOrder:Rate limit exceeded"
        error = self._validate_new(symbol, side, order_type, qty, price, cl_ord_id)
        if error is not None:
            return error
        order = FakeOrder(
            order_id=kraken_order_id(),
            cl_ord_id=cl_ord_id,
            userref=userref,
            symbol=symbol,
            side=side,
            order_type=order_type,
            qty=qty,
            limit_price=price,
            time_in_force=tif.upper(),
            opened=time.time(),
            placed_at=time.monotonic(),
        )
        self.orders[order.order_id] = order
        await self._report(order, "pending_new", full=True)
        await answer(order)
        await self._report(order, "new")
        await self._match(order)
        return order

    async def _match(self, order: FakeOrder) -> None:
        """Trade a marketable order against the recorded book (which it does not change)."""
        side = "asks" if order.side == "buy" else "bids"
        for price, available in self._levels(side):
            remaining = order.qty - order.filled
            if remaining <= 0:
                break
            if order.limit_price is not None and (
                (order.side == "buy" and price > order.limit_price)
                or (order.side == "sell" and price < order.limit_price)
            ):
                break
            await self._execute(order, min(available, remaining), price, maker=False)
        if order.filled >= order.qty:
            await self._close(order, "closed", None)
        elif order.order_type == "market" or order.time_in_force == "IOC":
            await self._close(order, "canceled", "Immediate or cancel")  # fake's wording

    async def _execute(
        self, order: FakeOrder, qty: Decimal, price: Decimal, *, maker: bool
    ) -> FakeTrade:
        pair = self.pairs[order.symbol]
        cost = pair.price(price) * qty
        fee = (cost * (MAKER_FEE if maker else TAKER_FEE)).quantize(Decimal("0.0001"))
        order.filled += qty
        order.cost += cost
        order.fee += fee
        sign = 1 if order.side == "buy" else -1
        self.balances[pair.base] = self.balances.get(pair.base, ZERO) + sign * qty
        self.balances[pair.quote] = self.balances.get(pair.quote, ZERO) - sign * cost - fee
        taker_side = ("sell" if order.side == "buy" else "buy") if maker else order.side
        public = await self.publish_trade(order.symbol, taker_side, price, qty, order.order_type)
        trade = FakeTrade(
            txid=kraken_trade_txid(),
            order_id=order.order_id,
            symbol=order.symbol,
            side=order.side,
            order_type=order.order_type,
            price=pair.price(price),
            qty=qty,
            cost=cost,
            fee=fee,
            maker=maker,
            time=time.time(),
            trade_id=public["trade_id"],
        )
        self.trades.append(trade)
        order.trades.append(trade.txid)
        report = self._order_report(order, "trade")
        report.update(
            {
                "exec_id": trade.txid,
                "trade_id": trade.trade_id,
                "symbol": order.symbol,
                "side": order.side,
                "last_qty": pair.qty(qty),
                "last_price": pair.price(price),
                "liquidity_ind": "m" if maker else "t",
                "cost": cost.quantize(Decimal("0.00001")),
                "order_type": order.order_type,
                "order_status": "filled" if order.filled >= order.qty else "partially_filled",
                "cum_qty": pair.qty(order.filled),
                "cum_cost": order.cost.quantize(Decimal("0.00001")),
                "avg_price": pair.price(order.avg_price),
                "fee_usd_equiv": fee,
                "fees": [{"asset": pair.quote, "qty": fee}],
            }
        )
        await self._send_to_executions(report)
        return trade

    async def _close(self, order: FakeOrder, status: str, reason: str | None) -> None:
        order.status = status
        order.closed = time.time()
        order.reason = reason
        exec_type = {"closed": "filled", "canceled": "canceled", "expired": "expired"}[status]
        report = self._order_report(order, exec_type)
        if status == "canceled":
            report.update({"cancel_reason": reason, "reason": reason})
        await self._send_to_executions(report)

    def _order_report(
        self, order: FakeOrder, exec_type: str, *, full: bool = False
    ) -> dict[str, Any]:
        pair = self.pairs[order.symbol]
        status = {
            "open": "partially_filled" if order.filled else "new",
            "closed": "filled",
            "canceled": "canceled",
            "expired": "expired",
        }[order.status]
        if exec_type == "pending_new":
            status = "pending_new"
        report: dict[str, Any] = {
            "timestamp": now_rfc3339(),
            "order_status": status,
            "exec_type": exec_type,
            "order_userref": order.userref,
            "order_id": order.order_id,
        }
        if order.cl_ord_id is not None:
            report["cl_ord_id"] = order.cl_ord_id
        if full:
            report.update(
                {
                    "symbol": order.symbol,
                    "order_qty": pair.qty(order.qty),
                    "cum_cost": order.cost.quantize(Decimal("0.00001")),
                    "cum_qty": pair.qty(order.filled),
                    "time_in_force": order.time_in_force,
                    "side": order.side,
                    "order_type": order.order_type,
                    "limit_price_type": "static",
                    "limit_price": pair.price(order.limit_price or ZERO),
                    "stop_price": pair.price(ZERO),
                    "fee_usd_equiv": order.fee,
                    "fee_ccy_pref": "fciq",
                }
            )
        elif exec_type in ("canceled", "expired"):
            report.update(
                {
                    "cum_qty": pair.qty(order.filled),
                    "cum_cost": order.cost.quantize(Decimal("0.00001")),
                    "fee_usd_equiv": order.fee,
                    "avg_price": pair.price(order.avg_price),
                }
            )
        return report

    async def _report(self, order: FakeOrder, exec_type: str, *, full: bool = False) -> None:
        await self._send_to_executions(self._order_report(order, exec_type, full=full))

    async def _send_to_executions(self, report: dict[str, Any]) -> None:
        for conn in self._subscribers("private", "executions", None):
            await self._send_executions(conn, "update", [report])

    async def _send_executions(
        self, conn: Connection, kind: str, data: list[dict[str, Any]]
    ) -> None:
        assert conn.executions_seq is not None
        sequence = conn.executions_seq
        conn.executions_seq += 1
        if kind == "update" and self._skip_executions:
            self._skip_executions -= 1
            return
        await conn.send({"channel": "executions", "type": kind, "data": data, "sequence": sequence})

    def _find_open(self, order_id: str | None, cl_ord_id: str | None) -> FakeOrder | None:
        for order in self.orders.values():
            if order.status == "open" and (
                (order_id is not None and order.order_id == order_id)
                or (cl_ord_id is not None and order.cl_ord_id == cl_ord_id)
            ):
                return order
        return None

    async def _cancel(self, order: FakeOrder) -> str | None:
        if not self._rate_admit(
            order.symbol, self._cancel_cost(time.monotonic() - order.placed_at)
        ):
            return "EOrder:Rate limit exceeded"
        await self._close(order, "canceled", "User requested")
        return None

    # ------------------------------------------------------------ WS order requests

    async def _ws_add_order(
        self, conn: Connection, params: dict[str, Any], req_id: Any, time_in: str
    ) -> None:
        if "cl_ord_id" in params and "order_userref" in params:
            await conn.send(
                self._answer("add_order", req_id, time_in, error="EGeneral:Invalid arguments")
            )
            return

        async def answer(order: FakeOrder) -> None:
            result: dict[str, Any] = {"order_id": order.order_id}
            if order.cl_ord_id is not None:
                result["cl_ord_id"] = order.cl_ord_id
            else:
                result["order_userref"] = order.userref
            await conn.send(self._answer("add_order", req_id, time_in, result=result))

        try:
            qty = Decimal(str(params["order_qty"]))
            price = Decimal(str(params["limit_price"])) if "limit_price" in params else None
            outcome = await self._place(
                symbol=params["symbol"],
                side=params["side"],
                order_type=params["order_type"],
                qty=qty,
                price=price,
                tif=params.get("time_in_force", "gtc"),
                cl_ord_id=params.get("cl_ord_id"),
                userref=int(params.get("order_userref", 0)),
                answer=answer,
            )
        except (KeyError, ArithmeticError, ValueError):
            outcome = "EGeneral:Invalid arguments"
        if isinstance(outcome, str):
            await conn.send(self._answer("add_order", req_id, time_in, error=outcome))

    async def _ws_amend_order(
        self, conn: Connection, params: dict[str, Any], req_id: Any, time_in: str
    ) -> None:
        order = self._find_open(params.get("order_id"), params.get("cl_ord_id"))
        if order is None:
            await conn.send(
                self._answer("amend_order", req_id, time_in, error="EOrder:Unknown order")
            )
            return
        pair = self.pairs[order.symbol]
        age = time.monotonic() - order.placed_at
        extra = 3.0 if age < 5 else 2.0 if age < 10 else 1.0 if age < 15 else 0.0
        if not self._rate_admit(order.symbol, 1.0 + extra):
            await conn.send(
                self._answer("amend_order", req_id, time_in, error="EOrder:Rate limit exceeded")
            )
            return
        try:
            qty = Decimal(str(params["order_qty"])) if "order_qty" in params else order.qty
            price = (
                Decimal(str(params["limit_price"]))
                if "limit_price" in params
                else order.limit_price
            )
        except ArithmeticError:
            qty, price = ZERO, None
        if qty <= 0 or (price is not None and price % pair.price_increment):
            error = "EOrder:Tick size check failed" if qty > 0 else "EGeneral:Invalid arguments"
            await conn.send(self._answer("amend_order", req_id, time_in, error=error))
            return
        order.qty, order.limit_price, order.placed_at = qty, price, time.monotonic()
        result: dict[str, Any] = {"amend_id": kraken_trade_txid()}
        result.update(
            {"order_id": order.order_id} if "order_id" in params else {"cl_ord_id": order.cl_ord_id}
        )
        await conn.send(self._answer("amend_order", req_id, time_in, result=result))
        report = self._order_report(order, "amended")
        report.update(
            {
                "cum_qty": pair.qty(order.filled),
                "reason": "User requested",
                "amended": True,
                "order_qty": pair.qty(order.qty),
                "limit_price": pair.price(order.limit_price or ZERO),
                "limit_price_type": "static",
            }
        )
        await self._send_to_executions(report)
        if order.filled >= order.qty:
            await self._close(order, "canceled", "Order quantity reduced below filled")
        else:
            await self._match(order)

    async def _ws_cancel_order(
        self, conn: Connection, params: dict[str, Any], req_id: Any, time_in: str
    ) -> None:
        refs = [(ref, None) for ref in params.get("order_id") or []]
        refs += [(None, ref) for ref in params.get("cl_ord_id") or []]
        for order_id, cl_ord_id in refs:
            order = self._find_open(order_id, cl_ord_id)
            if order is None:
                await conn.send(
                    self._answer("cancel_order", req_id, time_in, error="EOrder:Unknown order")
                )
                continue
            error = await self._cancel_checked(order)
            if error is not None:
                await conn.send(self._answer("cancel_order", req_id, time_in, error=error))
                continue
            result = {"order_id": order.order_id}
            if cl_ord_id is not None:
                result["cl_ord_id"] = cl_ord_id
            await conn.send(self._answer("cancel_order", req_id, time_in, result=result))
            await self._close(order, "canceled", "User requested")

    async def _cancel_checked(self, order: FakeOrder) -> str | None:
        age = time.monotonic() - order.placed_at
        if not self._rate_admit(order.symbol, self._cancel_cost(age)):
            return "EOrder:Rate limit exceeded"
        return None

    # ------------------------------------------------------------ REST

    async def _rest(self, request: web.Request) -> web.Response:
        endpoint = request.match_info["endpoint"]
        body = await request.text()
        if self._slow["rest"]:
            await asyncio.sleep(self._slow["rest"])
        if self._fail_rest:
            status = self._fail_rest.pop(0)
            return web.Response(
                status=status,
                text="<html><body>503 Service Unavailable</body></html>",
                content_type="text/html",
            )
        error = self._verify(request, endpoint, body)
        if error is not None:
            self.rest_refusals.append((endpoint, error))
            return web.json_response({"error": [error]})
        params = dict(parse_qsl(body, keep_blank_values=True))
        self.rest_calls.append((endpoint, params))
        self._note()
        if self._fail_next.get(endpoint):
            return web.json_response({"error": [self._fail_next[endpoint].pop(0)]})
        handler = {
            "GetWebSocketsToken": self._rest_token,
            "Balance": self._rest_balance,
            "OpenOrders": self._rest_open_orders,
            "QueryOrders": self._rest_query_orders,
            "TradesHistory": self._rest_trades_history,
            "AddOrder": self._rest_add_order,
            "CancelOrder": self._rest_cancel_order,
        }.get(endpoint)
        if handler is None:
            return web.json_response({"error": ["EGeneral:Unknown method"]})
        try:
            result = await handler(params)
        except _RestError as exc:
            return web.json_response({"error": [str(exc)]})
        return web.Response(
            text=dumps({"error": [], "result": result}), content_type="application/json"
        )

    def _verify(self, request: web.Request, endpoint: str, body: str) -> str | None:
        """Kraken's check: known key, then signature, then a nonce above the last one."""
        if request.headers.get("API-Key") != self.api_key:
            return "EAPI:Invalid key"
        params = dict(parse_qsl(body, keep_blank_values=True))
        nonce = params.get("nonce", "")
        path = f"/0/private/{endpoint}"
        digest = hashlib.sha256((nonce + body).encode()).digest()
        expected = base64.b64encode(
            hmac.new(
                base64.b64decode(self.api_secret), path.encode() + digest, hashlib.sha512
            ).digest()
        ).decode()
        if not hmac.compare_digest(request.headers.get("API-Sign", ""), expected):
            return "EAPI:Invalid signature"
        if not nonce.isdigit() or int(nonce) <= self._last_nonce:
            return "EAPI:Invalid nonce"
        self._last_nonce = int(nonce)
        return None

    async def _rest_token(self, params: dict[str, str]) -> Any:
        token = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        self.tokens.add(token)
        return {"token": token, "expires": 900}

    async def _rest_balance(self, params: dict[str, str]) -> Any:
        return {
            REST_ASSET.get(asset, asset): format(amount, "f")
            for asset, amount in self.balances.items()
        }

    def _rest_order(self, order: FakeOrder, *, with_trades: bool) -> dict[str, Any]:
        pair = self.pairs[order.symbol]
        price = format(pair.price(order.limit_price), "f") if order.limit_price else "0"
        text = f"{order.side} {format(pair.qty(order.qty), 'f')} {rest_pair(order.symbol)} @ " + (
            f"limit {price}" if order.order_type == "limit" else "market"
        )
        info: dict[str, Any] = {
            "refid": None,
            "userref": order.userref,
            "cl_ord_id": order.cl_ord_id,
            "status": order.status,
            "opentm": Decimal(f"{order.opened:.6f}"),
            "starttm": 0,
            "expiretm": 0,
            "descr": {
                "pair": rest_pair(order.symbol),
                "type": order.side,
                "ordertype": order.order_type,
                "price": price,
                "price2": "0",
                "leverage": "none",
                "order": text,
                "close": "",
            },
            "vol": format(pair.qty(order.qty), "f"),
            "vol_exec": format(pair.qty(order.filled), "f"),
            "cost": format(order.cost.quantize(Decimal("0.00001")), "f"),
            "fee": format(order.fee.quantize(Decimal("0.00001")), "f"),
            "price": format(pair.price(order.avg_price), "f"),
            "stopprice": "0.00000",
            "limitprice": "0.00000",
            "misc": "",
            "oflags": "fciq" + (",ioc" if order.time_in_force == "IOC" else ""),
        }
        if order.cl_ord_id is None:
            del info["cl_ord_id"]
        if order.closed is not None:
            info["closetm"] = Decimal(f"{order.closed:.6f}")
            info["reason"] = order.reason
        if with_trades and order.trades:
            info["trades"] = list(order.trades)
        return info

    async def _rest_open_orders(self, params: dict[str, str]) -> Any:
        return {
            "open": {
                o.order_id: self._rest_order(o, with_trades=params.get("trades") == "true")
                for o in self.orders.values()
                if o.status == "open"
            }
        }

    async def _rest_query_orders(self, params: dict[str, str]) -> Any:
        txids = [t for t in params.get("txid", "").split(",") if t]
        if not txids:
            raise _RestError("EGeneral:Invalid arguments")
        with_trades = params.get("trades") == "true"
        return {
            t: self._rest_order(self.orders[t], with_trades=with_trades)
            for t in txids
            if t in self.orders
        }

    async def _rest_trades_history(self, params: dict[str, str]) -> Any:
        start = float(params.get("start", "0") or 0)
        offset = int(params.get("ofs", "0") or 0)
        trades = sorted((t for t in self.trades if t.time > start), key=lambda t: -t.time)
        page = trades[offset : offset + 50]
        return {
            "trades": {
                t.txid: {
                    "ordertxid": t.order_id,
                    "postxid": "TKH2SE-M7IF5-CFI7LT",
                    "pair": rest_pair(t.symbol),
                    "time": Decimal(f"{t.time:.6f}"),
                    "type": t.side,
                    "ordertype": t.order_type,
                    "price": format(t.price, "f"),
                    "cost": format(t.cost.quantize(Decimal("0.00001")), "f"),
                    "fee": format(t.fee.quantize(Decimal("0.00001")), "f"),
                    "vol": format(self.pairs[t.symbol].qty(t.qty), "f"),
                    "margin": "0.00000",
                    "misc": "",
                    "trade_id": t.trade_id,
                    "maker": t.maker,
                }
                for t in page
            },
            "count": len(trades),
        }

    def _symbol_of(self, pair: str) -> str | None:
        if pair in self.pairs:
            return pair
        for symbol in self.pairs:
            if rest_pair(symbol) == pair:
                return symbol
        return None

    async def _rest_add_order(self, params: dict[str, str]) -> Any:
        symbol = self._symbol_of(params.get("pair", ""))
        if symbol is None:
            raise _RestError("EQuery:Unknown asset pair")
        placed: list[FakeOrder] = []

        async def answer(order: FakeOrder) -> None:
            placed.append(order)

        try:
            outcome = await self._place(
                symbol=symbol,
                side=params["type"],
                order_type=params["ordertype"],
                qty=Decimal(params["volume"]),
                price=Decimal(params["price"]) if "price" in params else None,
                tif=params.get("timeinforce", "GTC"),
                cl_ord_id=params.get("cl_ord_id"),
                userref=int(params.get("userref", "0")),
                answer=answer,
            )
        except (KeyError, ArithmeticError, ValueError) as exc:
            raise _RestError("EGeneral:Invalid arguments") from exc
        if isinstance(outcome, str):
            raise _RestError(outcome)
        pair = self.pairs[symbol]
        price = (
            f" @ limit {format(pair.price(outcome.limit_price), 'f')}"
            if outcome.limit_price
            else " @ market"
        )
        return {
            "descr": {
                "order": f"{outcome.side} {format(pair.qty(outcome.qty), 'f')} "
                f"{rest_pair(symbol)}{price}"
            },
            "txid": [outcome.order_id],
        }

    async def _rest_cancel_order(self, params: dict[str, str]) -> Any:
        order = self._find_open(params.get("txid"), params.get("cl_ord_id"))
        if order is None:
            raise _RestError("EOrder:Unknown order")
        error = await self._cancel_checked(order)
        if error is not None:
            raise _RestError(error)
        await self._close(order, "canceled", "User requested")
        return {"count": 1}


class _RestError(Exception):
    """A Kraken error string to answer a REST call with."""


class EventRecorder:
    """Consumes an async event stream in an owned task and lets tests wait for events.

    ``listeners`` are called with each event as it arrives (e.g. to rebuild a book).
    Every wait is bounded; a timeout fails naming what was awaited and what arrived.
    """

    def __init__(self, source: AsyncIterator[Any], *listeners: Callable[[Any], None]) -> None:
        self.events: list[Any] = []
        self._source = source
        self._listeners = listeners
        self._arrived = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._consume(), name="event-recorder")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5)

    async def _consume(self) -> None:
        async for event in self._source:
            for listener in self._listeners:
                listener(event)
            async with self._arrived:
                self.events.append(event)
                self._arrived.notify_all()

    def mark(self) -> int:
        """The number of events so far (pass as ``after`` to wait for newer ones)."""
        return len(self.events)

    def of(self, kind: type[Any] | tuple[type[Any], ...], after: int = 0) -> list[Any]:
        return [event for event in self.events[after:] if isinstance(event, kind)]

    async def wait_for(
        self,
        kind: type[Any] | tuple[type[Any], ...],
        predicate: Callable[[Any], bool] = lambda _: True,
        *,
        after: int = 0,
        timeout: float = 5.0,
    ) -> Any:
        """The first event of ``kind`` after index ``after`` matching ``predicate``."""

        def found() -> Any:
            for event in self.events[after:]:
                if isinstance(event, kind) and predicate(event):
                    return event
            return None

        try:
            async with asyncio.timeout(timeout), self._arrived:
                await self._arrived.wait_for(lambda: found() is not None)
        except TimeoutError:
            seen = [type(event).__name__ for event in self.events[after:]][-20:]
            raise AssertionError(f"no {kind} event within {timeout}s; last seen: {seen}") from None
        return found()

    async def wait_until(
        self, condition: Callable[[], bool], *, timeout: float = 5.0, what: str = "condition"
    ) -> None:
        """Wait until ``condition()`` holds, re-checked after every event."""
        try:
            async with asyncio.timeout(timeout), self._arrived:
                await self._arrived.wait_for(condition)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None
