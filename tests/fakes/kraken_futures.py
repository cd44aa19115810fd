"""A fake Kraken Futures venue on loopback, speaking the real protocol, misbehaving on demand.

``FakeKrakenFutures`` is an aiohttp server (127.0.0.1, OS-chosen port) with

* WebSocket v1 at ``/ws/v1``: ``{"event":"info","version":1}`` first; ``subscribe`` /
  ``unsubscribe`` answered per product; ``book_snapshot`` then ``book`` deltas with the
  per-product ``seq``; ``trade_snapshot`` / ``trade``; ``ticker_lite``; errors
  ``{"event":"error","message":...}`` (``Invalid product id``, ``Invalid feed``,
  ``Json Error``); private ``fills`` / ``open_orders`` only after the ``challenge``
  handshake, with the signed challenge checked like the venue does.
* REST at ``/derivatives/api/v3/``: public ``instruments``; signed ``sendorder``,
  ``editorder``, ``cancelorder``, ``openorders``, ``fills``, ``accounts``. Each signed call
  is checked like the venue: ``APIKey`` must match and ``Authent`` must be
  base64(HMAC-SHA512(base64decode(secret), SHA256(postData + Nonce + path))) over the exact
  URL-encoded parameters, the ``Nonce`` strictly increasing. A failed check answers
  ``authenticationError`` (HTTP 401). Each call spends the documented cost units from a
  500-unit / 10 s budget; beyond it the answer is ``apiLimitExceeded``. Order refusals come
  the venue's way: ``result: "success"`` with a failing ``status``.

The signing checks here are written independently of the adapter's ``signing`` module, so a
mistake there fails the tests instead of being mirrored.

Market data is the real recording ``kraken_futures/cryptofeed_book_trade_ticker_2021-07-22
.txt`` read in place from ``$TRADEFLEET_EXCHANGE_DATA`` or ``<repo>/../shared/data/exchanges``
(never copied). The venue starts where every product has had its snapshot; `advance` plays
the next recorded frames to subscribers (the deltas verbatim, as recorded). Orders match
against the recorded book at the moment they arrive (taking liquidity does not change the
recorded book); resting orders fill when a test calls `fill`.

Misbehaviour knobs: `drop_connections`, `refuse_connections`, `skip_next_delta` (a sequence
gap), `send_crossing_delta`, `fail_next` (``{"result":"error"}`` such as
``apiLimitExceeded``), `http_error_next` (5xx), `stall_next` (a response that waits until
released), `reject_next_order` (a failing ``sendStatus.status``), `max_notional`
(``insufficientAvailableFunds``), `private_frames_first` (feed before or after the REST
answer). Test aids: `send_marker_ticker` (a barrier frame), `fill` (a maker execution),
`requests` / `auth_failures` / `challenge_failures` (what the venue saw), and, for driving
an adapter, `EventTap` and `LocalBook`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

API = "/derivatives/api/v3"
WS_PATH = "/ws/v1"
RECORDING = Path("kraken_futures") / "cryptofeed_book_trade_ticker_2021-07-22.txt"
INSTRUMENTS = Path("kraken_futures") / "cryptofeed_instruments_rest_2021-07-22.json"

API_KEY = "fake-futures-key/AbCdEfGh+0123456789"
API_SECRET = base64.b64encode(hashlib.sha512(b"tradefleet fake kraken futures").digest()).decode()

COSTS = {
    "sendorder": 10,
    "editorder": 10,
    "cancelorder": 10,
    "openorders": 2,
    "accounts": 2,
    "fills": 2,
}
BUDGET = 500
WINDOW_S = 10.0
TAKER_FEE = Decimal("0.0005")
MAKER_FEE = Decimal("0.0002")

_RECEIVED = re.compile(r"^\d+(?:\.\d+)?: (.*)$")


def exchange_data_dir() -> Path:
    """The shared recordings: ``$TRADEFLEET_EXCHANGE_DATA`` or ``<repo>/../shared/...``."""
    override = os.environ.get("TRADEFLEET_EXCHANGE_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "exchanges"


def _decode(text: str) -> Any:
    return json.loads(text, parse_float=Decimal)


def _num(value: Decimal) -> str:
    """A JSON number's text for an exact decimal."""
    text = format(value, "f")
    return text if text not in ("-0", "-0.0") else "0"


def _dumps(obj: Any) -> str:
    """JSON with decimals written as numbers, exactly."""
    if isinstance(obj, Decimal):
        return _num(obj)
    if isinstance(obj, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_dumps(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(_dumps(v) for v in obj) + "]"
    return json.dumps(obj)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _iso(ms: int) -> str:
    seconds, rest = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest:03d}Z"


def _iso_ms(text: str) -> int:
    delta = datetime.fromisoformat(text) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def expected_authent(secret: str, path: str, nonce: str, post_data: str) -> str:
    """What the venue computes for ``Authent`` (``path`` without ``/derivatives``)."""
    digest = hashlib.sha256((post_data + nonce + path).encode()).digest()
    mac = hmac.new(base64.b64decode(secret), digest, hashlib.sha512)
    return base64.b64encode(mac.digest()).decode()


def expected_signed_challenge(secret: str, challenge: str) -> str:
    digest = hashlib.sha256(challenge.encode()).digest()
    mac = hmac.new(base64.b64decode(secret), digest, hashlib.sha512)
    return base64.b64encode(mac.digest()).decode()


# ---------------------------------------------------------------- recorded market


@dataclass(frozen=True, slots=True)
class RecordedFrame:
    line: int
    text: str
    obj: dict[str, Any]

    @property
    def feed(self) -> str:
        return str(self.obj.get("feed"))

    @property
    def product_id(self) -> str:
        return str(self.obj.get("product_id"))


def load_recording(path: Path) -> list[RecordedFrame]:
    """Every received feed frame of a cryptofeed recording, in order."""
    frames = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            match = _RECEIVED.match(line.rstrip("\n"))
            if not match:
                continue
            obj = _decode(match.group(1))
            if isinstance(obj, dict) and "feed" in obj and "event" not in obj:
                frames.append(RecordedFrame(number, match.group(1), obj))
    return frames


def load_instruments_answer(path: Path) -> str:
    """The recorded ``instruments`` answer: the JSON after ``<url> -> <ts>: `` on the first
    line (the second line is the recorder's configuration)."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    return first[first.index("{") :].strip()


@dataclass(slots=True)
class FakeBook:
    bids: dict[Decimal, Decimal] = field(default_factory=dict)
    asks: dict[Decimal, Decimal] = field(default_factory=dict)
    seq: int = 0
    timestamp: int = 0

    def side(self, side: str) -> dict[Decimal, Decimal]:
        return self.bids if side == "buy" else self.asks

    def top(
        self, depth: int
    ) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        bids = sorted(self.bids.items(), reverse=True)[:depth]
        asks = sorted(self.asks.items())[:depth]
        return bids, asks


@dataclass(slots=True)
class FakeOrder:
    order_id: str
    cli_ord_id: str | None
    symbol: str
    side: str
    order_type: str
    qty: Decimal
    limit_price: Decimal | None
    received_ms: int
    filled: Decimal = Decimal(0)
    last_update_ms: int = 0
    status: str = "open"  # open | filled | cancelled

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.filled

    def rest_view(self) -> dict[str, Any]:
        view: dict[str, Any] = {
            "orderId": self.order_id,
            "type": self.order_type,
            "symbol": self.symbol,
            "side": self.side,
            "quantity": self.qty,
            "filled": self.filled,
            "limitPrice": self.limit_price,
            "reduceOnly": False,
            "timestamp": _iso(self.received_ms),
            "lastUpdateTimestamp": _iso(self.last_update_ms or self.received_ms),
        }
        if self.cli_ord_id:
            view["cliOrdId"] = self.cli_ord_id
        return view

    def ws_view(self) -> dict[str, Any]:
        view: dict[str, Any] = {
            "instrument": self.symbol,
            "time": self.received_ms,
            "last_update_time": self.last_update_ms or self.received_ms,
            "qty": self.qty,
            "filled": self.filled,
            "limit_price": self.limit_price if self.limit_price is not None else Decimal(0),
            "stop_price": Decimal(0),
            "type": "limit",
            "order_id": self.order_id,
            "direction": 0 if self.side == "buy" else 1,
            "reduce_only": False,
        }
        if self.cli_ord_id:
            view["cli_ord_id"] = self.cli_ord_id
        return view


@dataclass(slots=True)
class RestRecord:
    """One REST request as the fake saw it."""

    method: str
    endpoint: str
    params: dict[str, str]
    authenticated: bool
    answer: str  # "ok", a status, or an error word


@dataclass(eq=False, slots=True)
class _Connection:
    ws: web.WebSocketResponse
    request: web.Request
    subs: set[tuple[str, str]] = field(default_factory=set)
    private: set[str] = field(default_factory=set)
    challenges: set[str] = field(default_factory=set)
    received: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------- the venue


class FakeKrakenFutures:
    """The venue. `await start()`, use `rest_url` / `ws_url`, `await stop()`."""

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        api_key: str = API_KEY,
        api_secret: str = API_SECRET,
        account: str = "fake-account",
    ) -> None:
        data = data_dir or exchange_data_dir()
        self.api_key = api_key
        self.api_secret = api_secret
        self.account = account
        self._timeline = load_recording(data / RECORDING)
        self._instruments_json = load_instruments_answer(data / INSTRUMENTS)
        self._instruments = {
            raw["symbol"].upper(): raw for raw in _decode(self._instruments_json)["instruments"]
        }
        self.books: dict[str, FakeBook] = {}
        self._trades: dict[str, deque[dict[str, Any]]] = {}
        self._tickers: dict[str, str] = {}
        self._cursor = 0
        last_snapshot = max(i for i, f in enumerate(self._timeline) if f.feed.endswith("_snapshot"))
        while self._cursor <= last_snapshot:
            self._apply(self._timeline[self._cursor])
            self._cursor += 1

        self.orders: dict[str, FakeOrder] = {}
        self.fills: list[dict[str, Any]] = []
        self.requests: list[RestRecord] = []
        self.auth_failures = 0
        self.challenge_failures = 0
        self.balances: dict[str, Any] = {
            "flex": {
                "type": "multiCollateralMarginAccount",
                "currencies": {
                    "USD": {"quantity": Decimal("25000.5"), "value": Decimal("25000.5")}
                },
            },
            "fi_ethusd": {
                "type": "marginAccount",
                "currency": "eth",
                "balances": {"eth": Decimal("1.25")},
            },
            "cash": {"type": "cashAccount", "balances": {"xbt": Decimal("0.1")}},
        }

        # knobs
        self.private_frames_first = True
        self.max_notional: Decimal | None = None
        self._forced_status: deque[str] = deque()
        self._fail: dict[str, deque[str]] = {}
        self._http_fail: dict[str, deque[int]] = {}
        self._stalls: dict[str, deque[asyncio.Event]] = {}
        self._skip: set[str] = set()
        self._refuse = 0
        self._markers = 0

        self._costs: deque[tuple[float, int]] = deque()
        self._last_nonce: int | None = None
        self._connections: set[_Connection] = set()
        self._runner: web.AppRunner | None = None
        self._port = 0
        self.connections_opened = 0
        self.subscribe_requests: list[tuple[str, str]] = []  # (feed, product) as asked

    # ------------------------------------------------------------ lifecycle

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self._port}{WS_PATH}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(WS_PATH, self._ws)
        app.router.add_get(f"{API}/instruments", self._instruments_handler)
        for endpoint in ("sendorder", "editorder", "cancelorder"):
            app.router.add_post(f"{API}/{endpoint}", self._rest)
        for endpoint in ("openorders", "fills", "accounts"):
            app.router.add_get(f"{API}/{endpoint}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        for stalls in self._stalls.values():
            for event in stalls:
                event.set()
        await self.drop_connections(abrupt=False)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------ market data

    def product_ids(self) -> list[str]:
        return sorted(self.books)

    def book_top(self, product_id: str, depth: int) -> tuple[list[tuple[Decimal, Decimal]], ...]:
        """The fake's own book, best first, `depth` levels per side (for assertions)."""
        return self.books[product_id].top(depth)

    def pending_frames(self, product_id: str | None = None, feed: str | None = None) -> int:
        return sum(
            1
            for f in self._timeline[self._cursor :]
            if (product_id is None or f.product_id == product_id)
            and (feed is None or f.feed == feed)
        )

    async def advance(
        self, count: int = 1, *, product_id: str | None = None, feed: str | None = None
    ) -> int:
        """Play recorded frames until `count` of them matched `product_id`/`feed` (all
        frames in between are played too). Returns how many matched."""
        matched = 0
        while matched < count and self._cursor < len(self._timeline):
            frame = self._timeline[self._cursor]
            self._cursor += 1
            self._apply(frame)
            if (product_id is None or frame.product_id == product_id) and (
                feed is None or frame.feed == feed
            ):
                matched += 1
            if frame.feed == "book" and frame.product_id in self._skip:
                self._skip.discard(frame.product_id)
                continue  # lost on the wire: applied here, never sent
            wire_feed = frame.feed
            await self._publish(wire_feed, frame.product_id, frame.text)
        return matched

    def _apply(self, frame: RecordedFrame) -> None:
        obj, product = frame.obj, frame.product_id
        if frame.feed == "book_snapshot":
            book = self.books[product] = FakeBook(seq=obj["seq"], timestamp=obj["timestamp"])
            for level in obj.get("bids", []):
                if level["qty"]:
                    book.bids[level["price"]] = level["qty"]
            for level in obj.get("asks", []):
                if level["qty"]:
                    book.asks[level["price"]] = level["qty"]
        elif frame.feed == "book":
            book = self.books.setdefault(product, FakeBook())
            levels = book.side(obj["side"])
            if obj["qty"]:
                levels[obj["price"]] = obj["qty"]
            else:
                levels.pop(obj["price"], None)
            book.seq, book.timestamp = obj["seq"], obj["timestamp"]
        elif frame.feed == "trade_snapshot":
            self._trades[product] = deque(obj["trades"], maxlen=100)
        elif frame.feed == "trade":
            self._trades.setdefault(product, deque(maxlen=100)).appendleft(obj)
        elif frame.feed == "ticker_lite":
            self._tickers[product] = frame.text

    def _snapshot_text(self, product: str) -> str:
        book = self.books.get(product, FakeBook())
        bids, asks = book.top(10_000)
        return _dumps(
            {
                "feed": "book_snapshot",
                "product_id": product,
                "timestamp": book.timestamp,
                "seq": book.seq,
                "tickSize": None,
                "bids": [{"price": p, "qty": q} for p, q in bids],
                "asks": [{"price": p, "qty": q} for p, q in asks],
            }
        )

    async def _publish(self, feed: str, product: str, text: str) -> None:
        for conn in list(self._connections):
            if (feed, product) in conn.subs:
                await self._send(conn, text)

    # ------------------------------------------------------------ knobs

    def skip_next_delta(self, product_id: str) -> None:
        """The product's next recorded ``book`` delta is lost on the wire (a seq gap)."""
        self._skip.add(product_id)

    async def send_crossing_delta(self, product_id: str) -> None:
        """Send subscribers a well-sequenced delta that crosses the book (never applied
        here): the adapter must notice and resubscribe."""
        book = self.books[product_id]
        best_ask = min(book.asks)
        text = _dumps(
            {
                "feed": "book",
                "product_id": product_id,
                "side": "buy",
                "seq": book.seq + 1,
                "price": best_ask + (best_ask - max(book.bids)),
                "qty": Decimal("1.0"),
                "timestamp": book.timestamp,
            }
        )
        await self._publish("book", product_id, text)

    async def drop_connections(self, *, abrupt: bool = True) -> int:
        """Drop every WebSocket: TCP reset (abrupt) or a close frame. Returns how many."""
        conns = list(self._connections)
        for conn in conns:
            if abrupt and conn.request.transport is not None:
                conn.request.transport.abort()
            else:
                with contextlib.suppress(Exception):
                    await conn.ws.close(code=1001, message=b"going away")
        return len(conns)

    def ticker(self, product_id: str) -> dict[str, Any]:
        """The product's last recorded ``ticker_lite`` played so far."""
        return dict(_decode(self._tickers[product_id]))

    async def send_marker_ticker(self, product_id: str) -> Decimal:
        """Send ticker subscribers a ``ticker_lite`` whose bid is a price never used before
        and return it. Frames arrive in order, so a test that sees that bid knows every frame
        sent before it was handled: a barrier without sleeping."""
        self._markers += 1
        marker = Decimal(self._markers).scaleb(-6)
        ticker = dict(_decode(self._tickers[product_id]))
        ticker["bid"] = marker
        await self._publish("ticker_lite", product_id, _dumps(ticker))
        return marker

    def refuse_connections(self, count: int) -> None:
        """The next `count` WebSocket handshakes get HTTP 503."""
        self._refuse = count

    def fail_next(self, endpoint: str, error: str = "apiLimitExceeded", times: int = 1) -> None:
        """The next call(s) to `endpoint` answer ``{"result":"error","error":error}``."""
        self._fail.setdefault(endpoint, deque()).extend([error] * times)

    def http_error_next(self, endpoint: str, status: int = 503, times: int = 1) -> None:
        self._http_fail.setdefault(endpoint, deque()).extend([status] * times)

    def stall_next(self, endpoint: str) -> asyncio.Event:
        """The next call to `endpoint` waits (unanswered) until the returned event is set."""
        release = asyncio.Event()
        self._stalls.setdefault(endpoint, deque()).append(release)
        return release

    def reject_next_order(self, status: str) -> None:
        """The next ``sendorder`` answers ``result: success`` with this failing status."""
        self._forced_status.append(status)

    def connection_count(self) -> int:
        return len(self._connections)

    def private_subscribers(self) -> int:
        return sum(1 for c in self._connections if {"fills", "open_orders"} <= c.private)

    # ------------------------------------------------------------ WebSocket

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if self._refuse > 0:
            self._refuse -= 1
            return web.Response(status=503, text="temporarily unavailable")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = _Connection(ws, request)
        self._connections.add(conn)
        self.connections_opened += 1
        try:
            await ws.send_str('{"event":"info","version":1}')
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_text(conn, msg.data)
        finally:
            self._connections.discard(conn)
        return ws

    async def _send(self, conn: _Connection, text: str) -> None:
        if conn.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await conn.ws.send_str(text)

    async def _error(self, conn: _Connection, message: str) -> None:
        await self._send(conn, json.dumps({"event": "error", "message": message}))

    async def _on_text(self, conn: _Connection, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            await self._error(conn, "Json Error")
            return
        if not isinstance(msg, dict):
            await self._error(conn, "Json Error")
            return
        conn.received.append(msg)
        event = msg.get("event")
        if event == "challenge":
            if msg.get("api_key") != self.api_key:
                self.challenge_failures += 1
                await self._error(conn, "Invalid api key")
                return
            challenge = str(uuid.uuid4())
            conn.challenges.add(challenge)
            await self._send(conn, json.dumps({"event": "challenge", "message": challenge}))
        elif event in ("subscribe", "unsubscribe"):
            feed = msg.get("feed")
            if feed in ("fills", "open_orders"):
                await self._private_subscription(conn, msg, event == "subscribe")
            elif feed in ("book", "trade", "ticker_lite"):
                await self._public_subscription(conn, msg, event == "subscribe")
            else:
                await self._error(conn, "Invalid feed")
        else:
            await self._error(conn, "Json Error")

    async def _public_subscription(self, conn: _Connection, msg: dict[str, Any], on: bool) -> None:
        feed = msg["feed"]
        products = msg.get("product_ids")
        if not isinstance(products, list) or not products:
            await self._error(conn, "Json Error")
            return
        for raw in products:
            product = str(raw).upper()
            if product not in self._instruments:
                await self._error(conn, "Invalid product id")
                continue
            if not on:
                conn.subs.discard((feed, product))
                await self._send(
                    conn,
                    json.dumps({"event": "unsubscribed", "feed": feed, "product_ids": [product]}),
                )
                continue
            self.subscribe_requests.append((feed, product))
            conn.subs.add((feed, product))
            await self._send(
                conn, json.dumps({"event": "subscribed", "feed": feed, "product_ids": [product]})
            )
            if feed == "book":
                await self._send(conn, self._snapshot_text(product))
            elif feed == "trade":
                trades = list(self._trades.get(product, ()))
                await self._send(
                    conn,
                    _dumps({"feed": "trade_snapshot", "product_id": product, "trades": trades}),
                )
            elif product in self._tickers:
                await self._send(conn, self._tickers[product])

    async def _private_subscription(self, conn: _Connection, msg: dict[str, Any], on: bool) -> None:
        feed = msg["feed"]
        challenge = msg.get("original_challenge")
        ok = (
            msg.get("api_key") == self.api_key
            and isinstance(challenge, str)
            and challenge in conn.challenges
            and isinstance(msg.get("signed_challenge"), str)
            and hmac.compare_digest(
                msg["signed_challenge"], expected_signed_challenge(self.api_secret, challenge)
            )
        )
        if not ok:
            self.challenge_failures += 1
            result = "subscribed_failed" if on else "unsubscribed_failed"
            await self._send(conn, json.dumps({"event": result, "feed": feed}))
            return
        ack = {
            "event": "subscribed" if on else "unsubscribed",
            "feed": feed,
            "api_key": msg["api_key"],
            "original_challenge": challenge,
            "signed_challenge": msg["signed_challenge"],
        }
        await self._send(conn, json.dumps(ack))
        if not on:
            conn.private.discard(feed)
            return
        conn.private.add(feed)
        if feed == "fills":
            recent = sorted(self.fills, key=lambda f: f["time"], reverse=True)[:100]
            await self._send(
                conn,
                _dumps({"feed": "fills_snapshot", "account": self.account, "fills": recent}),
            )
        else:
            open_orders = [o.ws_view() for o in self.orders.values() if o.status == "open"]
            await self._send(
                conn,
                _dumps(
                    {"feed": "open_orders_snapshot", "account": self.account, "orders": open_orders}
                ),
            )

    async def _push_private(self, feed: str, obj: dict[str, Any]) -> None:
        text = _dumps(obj)
        for conn in list(self._connections):
            if feed in conn.private:
                await self._send(conn, text)

    # ------------------------------------------------------------ REST

    async def _instruments_handler(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(RestRecord("GET", "instruments", {}, False, "ok"))
        return web.Response(text=self._instruments_json, content_type="application/json")

    def _authenticate(self, request: web.Request, path: str, post_data: str) -> str | None:
        """None when the request is signed like the venue wants, else the error word."""
        key = request.headers.get("APIKey")
        authent = request.headers.get("Authent", "")
        nonce = request.headers.get("Nonce", "")
        if key != self.api_key:
            return "authenticationError"
        expected = expected_authent(self.api_secret, path, nonce, post_data)
        if not hmac.compare_digest(authent, expected):
            return "authenticationError"
        if nonce:
            if not nonce.isdigit():
                return "authenticationError"
            if self._last_nonce is not None and int(nonce) <= self._last_nonce:
                return "nonceBelowThreshold"
            self._last_nonce = int(nonce)
        return None

    def _spend(self, endpoint: str, params: dict[str, str]) -> bool:
        now = time.monotonic()
        while self._costs and self._costs[0][0] <= now - WINDOW_S:
            self._costs.popleft()
        cost = 25 if endpoint == "fills" and "lastFillTime" in params else COSTS[endpoint]
        if sum(c for _, c in self._costs) + cost > BUDGET:
            return False
        self._costs.append((now, cost))
        return True

    def units_spent(self) -> int:
        now = time.monotonic()
        return sum(c for t, c in self._costs if t > now - WINDOW_S)

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        endpoint = request.path.rsplit("/", 1)[1]
        raw_query = request.rel_url.raw_query_string
        body = await request.text() if request.method == "POST" else ""
        post_data = raw_query or body
        params = dict(parse_qsl(post_data, keep_blank_values=True))
        stalls = self._stalls.get(endpoint)
        if stalls:
            release = stalls.popleft()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), 30)
        problem = self._authenticate(request, request.path.removeprefix("/derivatives"), post_data)
        record = RestRecord(request.method, endpoint, params, problem is None, "ok")
        self.requests.append(record)
        if problem is not None:
            record.answer = problem
            if problem == "authenticationError":
                self.auth_failures += 1
                return self._error_answer(problem, status=401)
            return self._error_answer(problem)
        statuses = self._http_fail.get(endpoint)
        if statuses:
            status = statuses.popleft()
            record.answer = f"HTTP {status}"
            return web.Response(status=status, text="<html>upstream unavailable</html>")
        failures = self._fail.get(endpoint)
        if failures:
            record.answer = failures.popleft()
            return self._error_answer(record.answer)
        if not self._spend(endpoint, params):
            record.answer = "apiLimitExceeded"
            return self._error_answer("apiLimitExceeded")
        handler = getattr(self, f"_do_{endpoint}")
        answer, private = handler(params)
        record.answer = _answer_word(answer)
        if self.private_frames_first:
            for feed, obj in private:
                await self._push_private(feed, obj)
            return web.Response(text=_dumps(answer), content_type="application/json")
        response = web.Response(text=_dumps(answer), content_type="application/json")
        await response.prepare(request)
        await response.write_eof()
        for feed, obj in private:
            await self._push_private(feed, obj)
        return response

    def _error_answer(self, error: str, status: int = 200) -> web.Response:
        return web.Response(
            status=status,
            text=json.dumps({"result": "error", "serverTime": _iso(_now_ms()), "error": error}),
            content_type="application/json",
        )

    # ------------------------------------------------------------ order matching

    def _lot(self, symbol: str) -> Decimal:
        precision = self._instruments[symbol].get("contractValueTradePrecision")
        return Decimal(1).scaleb(-int(precision)) if precision is not None else Decimal(1)

    def _tick(self, symbol: str) -> Decimal:
        return Decimal(str(self._instruments[symbol]["tickSize"]))

    def _fee(self, symbol: str, qty: Decimal, price: Decimal, rate: Decimal) -> tuple[Decimal, str]:
        base = symbol.split("_")[1][:-3]
        if symbol.startswith(("PI_", "FI_")):  # inverse: fees in the base currency
            return (qty / price * rate).quantize(Decimal("1e-10")), (
                "BTC" if base == "XBT" else base
            )
        return (qty * price * rate).quantize(Decimal("1e-10")), "USD"

    def _execute(
        self, order: FakeOrder, qty: Decimal, price: Decimal, fill_type: str
    ) -> dict[str, Any]:
        now = _now_ms()
        order.filled += qty
        order.last_update_ms = now
        if order.remaining <= 0:
            order.status = "filled"
        fee, currency = self._fee(
            order.symbol, qty, price, TAKER_FEE if fill_type == "taker" else MAKER_FEE
        )
        fill: dict[str, Any] = {
            "instrument": order.symbol,
            "time": now,
            "price": price,
            "seq": len(self.fills) + 1,
            "buy": order.side == "buy",
            "qty": qty,
            "remaining_order_qty": order.remaining,
            "order_id": order.order_id,
            "fill_id": str(uuid.uuid4()),
            "fill_type": fill_type,
            "fee_paid": fee,
            "fee_currency": currency,
            "taker_order_type": {"lmt": "limit", "ioc": "ioc", "mkt": "market"}.get(
                order.order_type, "limit"
            ),
            "order_type": "limit",
        }
        if order.cli_ord_id:
            fill["cli_ord_id"] = order.cli_ord_id
        self.fills.append(fill)
        return fill

    def _crossing_levels(self, order: FakeOrder) -> list[tuple[Decimal, Decimal]]:
        book = self.books.get(order.symbol, FakeBook())
        if order.side == "buy":
            levels = sorted(book.asks.items())
            limit = order.limit_price
            return [(p, q) for p, q in levels if limit is None or p <= limit]
        levels = sorted(book.bids.items(), reverse=True)
        limit = order.limit_price
        return [(p, q) for p, q in levels if limit is None or p >= limit]

    def _send_status(
        self, status: str, order_id: str | None, events: list[dict[str, Any]]
    ) -> dict[str, Any]:
        now = _iso(_now_ms())
        return {
            "result": "success",
            "sendStatus": {
                "order_id": order_id,
                "status": status,
                "receivedTime": now,
                "orderEvents": events,
            },
            "serverTime": now,
        }

    def _do_sendorder(self, params: dict[str, str]) -> tuple[dict[str, Any], list[Any]]:
        order_id = str(uuid.uuid4())
        missing = [k for k in ("orderType", "symbol", "side", "size") if not params.get(k)]
        if missing:
            return {"result": "error", "error": "requiredArgumentMissing"}, []
        symbol = params["symbol"].upper()
        order_type = params["orderType"]
        if symbol not in self._instruments or order_type not in ("lmt", "post", "ioc", "mkt"):
            return {"result": "error", "error": "invalidArgument"}, []
        if params["side"] not in ("buy", "sell"):
            return {"result": "error", "error": "invalidArgument"}, []
        if self._forced_status:
            return self._send_status(self._forced_status.popleft(), order_id, []), []
        cli = params.get("cliOrdId")
        if cli is not None:
            if len(cli) > 100:
                return self._send_status("clientOrderIdTooBig", None, []), []
            if any(o.cli_ord_id == cli for o in self.orders.values()):
                return self._send_status("clientOrderIdAlreadyExist", None, []), []
        try:
            size = Decimal(params["size"])
            price = Decimal(params["limitPrice"]) if "limitPrice" in params else None
        except ArithmeticError:
            return {"result": "error", "error": "invalidArgument"}, []
        if size <= 0 or size % self._lot(symbol) != 0:
            return self._send_status("invalidSize", order_id, []), []
        if order_type != "mkt" and (price is None or price <= 0 or price % self._tick(symbol) != 0):
            return self._send_status("invalidPrice", order_id, []), []
        if self.max_notional is not None and price is not None and size * price > self.max_notional:
            return self._send_status("insufficientAvailableFunds", order_id, []), []
        now = _now_ms()
        order = FakeOrder(
            order_id, cli, symbol, params["side"], order_type, size, price, now, last_update_ms=now
        )
        crossing = self._crossing_levels(order)
        if order_type == "post" and crossing:
            return self._send_status("postWouldExecute", order_id, []), []
        if order_type == "ioc" and not crossing:
            reject = [{"type": "REJECT", "uid": order_id, "reason": "IOC_WOULD_NOT_EXECUTE"}]
            return self._send_status("iocWouldNotExecute", order_id, reject), []
        self.orders[order_id] = order
        events: list[dict[str, Any]] = []
        private: list[tuple[str, dict[str, Any]]] = []
        if order_type != "post":
            for level_price, level_qty in crossing:
                if order.remaining <= 0:
                    break
                prior = order.rest_view()
                take = min(order.remaining, level_qty)
                fill = self._execute(order, take, level_price, "taker")
                events.append(
                    {
                        "type": "EXECUTION",
                        "executionId": fill["fill_id"],
                        "price": level_price,
                        "amount": take,
                        "orderPriorExecution": prior,
                    }
                )
                private.append(
                    ("fills", {"feed": "fills", "username": self.account, "fills": [fill]})
                )
        if order.remaining > 0 and order_type in ("ioc", "mkt"):
            order.status = "cancelled"  # the unfilled rest of an immediate order
        elif order.remaining > 0:
            events.insert(0, {"type": "PLACE", "order": order.rest_view()})
            private.insert(
                0,
                (
                    "open_orders",
                    {
                        "feed": "open_orders",
                        "order": order.ws_view(),
                        "is_cancel": False,
                        "reason": "new_placed_order_by_user",
                    },
                ),
            )
        return self._send_status("placed", order_id, events), private

    def _find(self, params: dict[str, str], id_name: str) -> FakeOrder | None:
        if params.get(id_name):
            return self.orders.get(params[id_name])
        cli = params.get("cliOrdId")
        return next((o for o in self.orders.values() if cli and o.cli_ord_id == cli), None)

    def _do_editorder(self, params: dict[str, str]) -> tuple[dict[str, Any], list[Any]]:
        order = self._find(params, "orderId")
        now = _iso(_now_ms())

        def answer(status: str, events: list[Any]) -> dict[str, Any]:
            return {
                "result": "success",
                "editStatus": {
                    "status": status,
                    "orderId": order.order_id if order else None,
                    "receivedTime": now,
                    "orderEvents": events,
                },
                "serverTime": now,
            }

        if order is None or order.status != "open":
            return answer("orderForEditNotFound", []), []
        old = order.rest_view()
        try:
            size = Decimal(params["size"]) if "size" in params else None
            price = Decimal(params["limitPrice"]) if "limitPrice" in params else None
        except ArithmeticError:
            return {"result": "error", "error": "invalidArgument"}, []
        if size is not None and (size <= 0 or size % self._lot(order.symbol) != 0):
            return answer("invalidSize", []), []
        if price is not None and (price <= 0 or price % self._tick(order.symbol) != 0):
            return answer("invalidPrice", []), []
        if size is not None:
            order.qty = order.filled + size  # the venue's default: size is the new open size
        if price is not None:
            order.limit_price = price
        order.last_update_ms = _now_ms()
        edit = {"type": "EDIT", "old": old, "new": order.rest_view(), "reducedQuantity": None}
        private = [
            (
                "open_orders",
                {
                    "feed": "open_orders",
                    "order": order.ws_view(),
                    "is_cancel": False,
                    "reason": "edited_by_user",
                },
            )
        ]
        return answer("edited", [edit]), private

    def _do_cancelorder(self, params: dict[str, str]) -> tuple[dict[str, Any], list[Any]]:
        order = self._find(params, "order_id")
        now = _iso(_now_ms())
        if order is None or order.status == "cancelled":
            status: dict[str, Any] = {"status": "notFound", "receivedTime": now}
            return {"result": "success", "cancelStatus": status, "serverTime": now}, []
        if order.status == "filled":
            status = {"status": "filled", "order_id": order.order_id, "receivedTime": now}
            return {"result": "success", "cancelStatus": status, "serverTime": now}, []
        order.status = "cancelled"
        order.last_update_ms = _now_ms()
        cancel = {"type": "CANCEL", "uid": order.order_id, "order": order.rest_view()}
        status = {
            "status": "cancelled",
            "order_id": order.order_id,
            "receivedTime": now,
            "orderEvents": [cancel],
        }
        private = [
            (
                "open_orders",
                {
                    "feed": "open_orders",
                    "order_id": order.order_id,
                    "is_cancel": True,
                    "reason": "cancelled_by_user",
                },
            )
        ]
        return {"result": "success", "cancelStatus": status, "serverTime": now}, private

    def _do_openorders(self, params: dict[str, str]) -> tuple[dict[str, Any], list[Any]]:
        items = []
        for order in self.orders.values():
            if order.status != "open":
                continue
            item: dict[str, Any] = {
                "order_id": order.order_id,
                "symbol": order.symbol,
                "side": order.side,
                "orderType": order.order_type,
                "limitPrice": order.limit_price,
                "unfilledSize": order.remaining,
                "receivedTime": _iso(order.received_ms),
                "status": "partiallyFilled" if order.filled else "untouched",
                "filledSize": order.filled,
                "reduceOnly": False,
                "lastUpdateTime": _iso(order.last_update_ms or order.received_ms),
            }
            if order.cli_ord_id:
                item["cliOrdId"] = order.cli_ord_id
            items.append(item)
        return {"result": "success", "openOrders": items, "serverTime": _iso(_now_ms())}, []

    def _do_fills(self, params: dict[str, str]) -> tuple[dict[str, Any], list[Any]]:
        fills = sorted(self.fills, key=lambda f: f["time"], reverse=True)
        if "lastFillTime" in params:
            before = _iso_ms(params["lastFillTime"])
            fills = [f for f in fills if f["time"] < before]
        items = []
        for fill in fills[:100]:
            item: dict[str, Any] = {
                "fill_id": fill["fill_id"],
                "symbol": fill["instrument"],
                "side": "buy" if fill["buy"] else "sell",
                "order_id": fill["order_id"],
                "size": fill["qty"],
                "price": fill["price"],
                "fillTime": _iso(fill["time"]),
                "fillType": fill["fill_type"],
            }
            if "cli_ord_id" in fill:
                item["cliOrdId"] = fill["cli_ord_id"]
            items.append(item)
        return {"result": "success", "fills": items, "serverTime": _iso(_now_ms())}, []

    def _do_accounts(self, params: dict[str, str]) -> tuple[dict[str, Any], list[Any]]:
        return {"result": "success", "accounts": self.balances, "serverTime": _iso(_now_ms())}, []

    # ------------------------------------------------------------ test-side actions

    async def fill(
        self, ref: str, qty: Decimal | None = None, price: Decimal | None = None
    ) -> dict[str, Any]:
        """Execute a resting order (by order id or cliOrdId) as maker: `qty` (default: the
        rest) at `price` (default: its limit). Sends the ``fills`` and ``open_orders`` frames."""
        order = self.orders.get(ref) or next(
            (o for o in self.orders.values() if o.cli_ord_id == ref), None
        )
        if order is None or order.status != "open":
            raise LookupError(f"no open order {ref!r}")
        take = order.remaining if qty is None else qty
        at = order.limit_price if price is None else price
        assert at is not None
        fill = self._execute(order, take, at, "maker")
        await self._push_private(
            "fills", {"feed": "fills", "username": self.account, "fills": [fill]}
        )
        if order.status == "filled":
            removal = {
                "feed": "open_orders",
                "order_id": order.order_id,
                "is_cancel": True,
                "reason": "full_fill",
            }
            await self._push_private("open_orders", removal)
        else:
            update = {
                "feed": "open_orders",
                "order": order.ws_view(),
                "is_cancel": False,
                "reason": "partial_fill",
            }
            await self._push_private("open_orders", update)
        return fill

    def order_by_cli(self, cli_ord_id: str) -> FakeOrder | None:
        return next((o for o in self.orders.values() if o.cli_ord_id == cli_ord_id), None)

    def signed_requests(self, endpoint: str) -> list[RestRecord]:
        return [r for r in self.requests if r.endpoint == endpoint]


def _answer_word(answer: dict[str, Any]) -> str:
    if answer.get("result") == "error":
        return str(answer.get("error"))
    for key in ("sendStatus", "editStatus", "cancelStatus"):
        if key in answer:
            return str(answer[key]["status"])
    return "ok"


@contextlib.asynccontextmanager
async def running_fake(**kwargs: Any) -> AsyncIterator[FakeKrakenFutures]:
    """A started fake venue, stopped on exit."""
    venue = FakeKrakenFutures(**kwargs)
    await venue.start()
    try:
        yield venue
    finally:
        await venue.stop()


# ---------------------------------------------------------------- test-side helpers


class EventTap:
    """Collects an adapter's `events()` in an owned task, so tests wait on conditions with a
    deadline without cancelling the adapter's generator."""

    def __init__(self, events: AsyncIterator[Any]) -> None:
        self.seen: list[Any] = []
        self._events = events
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._pump(), name="event-tap")

    async def _pump(self) -> None:
        async for event in self._events:
            async with self._changed:
                self.seen.append(event)
                self._changed.notify_all()

    async def wait_for(self, predicate: Any, *, after: int = 0, timeout: float = 5.0) -> Any:
        """The first event at index >= `after` for which `predicate(event)` holds."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                while True:
                    for event in self.seen[after:]:
                        if predicate(event):
                            return event
                    after = max(after, len(self.seen))
                    await self._changed.wait()

    def index(self, event: Any) -> int:
        return next(i for i, e in enumerate(self.seen) if e is event)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class LocalBook:
    """A consumer's copy of one instrument's book, built from protocol book events only."""

    def __init__(self) -> None:
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.update_id: int | None = None
        self.snapshots = 0
        self.gaps = 0

    def apply(self, event: Any) -> None:
        if event.type == "book_snapshot":
            self.bids, self.asks = dict(event.bids), dict(event.asks)
            self.update_id = event.update_id
            self.snapshots += 1
        elif event.type == "book_delta":
            if self.update_id is None or event.update_id != self.update_id + 1:
                self.gaps += 1
            for levels, side in ((event.bids, self.bids), (event.asks, self.asks)):
                for price, qty in levels:
                    if qty:
                        side[price] = qty
                    else:
                        side.pop(price, None)
            self.update_id = event.update_id

    def top(self, depth: int) -> tuple[list[tuple[Decimal, Decimal]], ...]:
        return (
            sorted(self.bids.items(), reverse=True)[:depth],
            sorted(self.asks.items())[:depth],
        )
