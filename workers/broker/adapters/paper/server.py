"""The paper exchange as its own process: one `PaperVenue` behind a small REST + WebSocket API.

    python -m workers.broker.adapters.paper.server --host 127.0.0.1 --port 0 --data-dir D \
        [--config FLEET_TOML]

The exchange is a venue, like Kraken: it is not a worker, it outlives the Broker workers that
trade on it, and its ledger is the ground truth the platform is checked against. Its accounts
(books, orders, fills) are durable in `D/paper/exchange.sqlite` (`store.PaperStore`): a
restart, kill -9 included, carries on where the last process stopped; the market's synthetic
liquidity starts afresh around the last prices. The fleet config's `[paper]` table is
validated as `PaperConfig` (an invalid key is reported as `paper.<key>`, exit status 2). Once
listening, the URL is written atomically to `D/run/paper.url` and announced on stdout as one
JSON line `{"event": "listening", "url": ...}`.

Protocol (version 1; only `RemotePaperAdapter` speaks it)
=========================================================

Auth: every request under `/v1` and the stream need `Authorization: Bearer <service token>`,
the deployment join token (config `security.join_token`, else `D/secrets.json`). Without it:
401 `{"error": {"code": "unauthorized", ...}}`. `/health`, `/ready` and `/metrics` are open,
like on every tradefleet process: they carry no account data.

Accounts: `{account}` is any `[A-Za-z0-9._-]{1,64}` except the venue's own `house-*` names
(403 `forbidden`). An account is opened with the configured `starting_cash` the first time
any request or stream names it.

Decimals are strings, times are integer ns since the epoch, models are `protocol`'s wire forms.
Every error is `{"error": {"code", "message", "field"?}}`; clients branch on `code`.

REST:

    POST   /v1/accounts/{account}/orders              body: NewOrder (`account` optional)
        201 {"created": true,  "order": OrderSnapshot}    placed; state right after matching
        200 {"created": false, "order": OrderSnapshot}    client_order_id already known for
                                                           this account: nothing new is placed
        400 price_off_tick | qty_off_lot | qty_below_min | unknown_instrument |
            invalid_field | missing_field | unknown_field | bad_json
        409 duplicate_order   the client_order_id names a different order (instrument, side
                              or type differ)
    DELETE /v1/accounts/{account}/orders/{client_order_id}
        200 {"created": false, "order": OrderSnapshot}    cancelled
        404 order_not_found | 409 order_not_cancellable
    PATCH  /v1/accounts/{account}/orders/{client_order_id}   body: {"qty"?, "price"?}
        200 {"created": false, "order": OrderSnapshot}    modified (maybe traded at once)
        404 order_not_found | 409 order_not_modifiable | 400 invalid_order | price_off_tick…
    GET    /v1/accounts/{account}/orders/{client_order_id}
        200 {"created": false, "order": OrderSnapshot}    any order, finished ones included
    GET    /v1/accounts/{account}/orders?open=1    200 {"orders": [OrderSnapshot…]} working
                                                   orders, oldest first
    GET    /v1/accounts/{account}/fills?since=NS&offset=K&limit=N
        200 {"fills": [Fill…], "more": bool}    fills with ts >= NS in the order they
                             happened, a page: N of them (default and most 1000) from the Kth
                             on (default 0); `more` when the page is full (ask again with
                             offset K + N)
    GET    /v1/accounts/{account}/ledger           200 {"account", "cash": {ccy: amount},
                                                   "positions": [Position…],
                                                   "fees_paid": {ccy: amount}, "ts"}
    GET    /v1/instruments                         200 {"instruments": [InstrumentSpec…]}
    POST   /v1/admin/drop-streams   body {"account"?}
        200 {"closed": n}    closes that account's streams (all streams without `account`)
                             with 1012: fault injection for tests and chaos drills
    POST   /v1/admin/steer   body {"instrument", "price", "ticks_per_step"? (1)}
        200 {"instrument", "target", "mid"}  the random walk moves the mid to `price` (on the
                             tick grid), at most ticks_per_step ticks per market step, then
                             walks on from there: drills and tests of price-driven exits
        400 unknown_instrument | invalid_field; 409 invalid_field (a replayed market, or a
        target the book's ladder cannot sit at)

WebSocket `GET /v1/stream?account=A`:

    venue → client, JSON objects:
        {"type": "hello", "account", "ts"}             first frame; the stream is live
        {"type": "events", "events": [event…]}         market data of this connection's
                                                       subscriptions and every order event of
                                                       account A (order_accepted,
                                                       order_partially_filled and order_filled
                                                       with their `fill`, order_cancelled,
                                                       order_modified), in venue order
        {"type": "ack", "id"}                          a request succeeded
        {"type": "error", "id"?, "error": {...}}       a request failed (bad_json,
                                                       unknown_instrument, missing_field…);
                                                       the connection stays up
    client → venue:
        {"op": "subscribe" | "unsubscribe", "id"?, "instrument", "channel",
         "depth"? (book, default 50), "interval"? (candles, required)}
        {"op": "place", "id"?, "order": NewOrder}       order entry without an HTTP request
        {"op": "cancel", "id"?, "client_order_id"}      each; the same engine calls, checks
        {"op": "modify", "id"?, "client_order_id", "qty"?, "price"?}   and codes as REST
    venue → client, answers to order ops:
        {"type": "order", "id", "created", "order": OrderSnapshot}   the order right after
                                                       the engine acted; the `events` frame
                                                       with the events it caused comes just
                                                       before it, in the same write
        {"type": "error", "id", "error": {...}}        refused, with the REST code

    A book subscription starts with a `book_snapshot`; `book_delta`s follow with contiguous
    `update_id`s. Subscriptions belong to the connection: a reconnecting client subscribes
    again and gets fresh snapshots. Order events are not buffered for absent clients — a
    client that was disconnected recovers what it missed over REST
    (`GET …/orders?open=1`, `GET …/fills?since=<last fill ts>`, `GET …/orders/{id}`).
    Client frames above 64 KiB close the connection with 1009. A client that stops reading
    for `SEND_TIMEOUT_S` is disconnected rather than allowed to stall the market.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import socket
import sqlite3
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import ValidationError

from protocol.codec import CodecError, decode, encode
from protocol.errors import ErrorCode
from protocol.orders import NewOrder, OrderSnapshot
from tradefleet.config import ConfigError, FleetConfig, load_config
from tradefleet.service import logs
from tradefleet.service import metrics as metrics_http
from tradefleet.service.files import write_atomic
from tradefleet.service.loop import run
from tradefleet.service.tokens import load_or_create_secrets
from tradefleet.service.web import (
    ApiError,
    json_response,
    make_app,
    require_token,
    validation_problem,
)
from tradefleet.service.wsframes import BINARY, direct_transport, server_frame
from workers.broker.adapters.base import (
    AdapterEvent,
    ConnectionChanged,
    FatalAdapterError,
    OrderRejectedError,
)
from workers.broker.adapters.paper import wire
from workers.broker.adapters.paper.adapter import PaperAdapter, PaperVenue
from workers.broker.adapters.paper.config import PaperConfig
from workers.broker.adapters.paper.engine import OrderRefused
from workers.broker.adapters.paper.store import PaperStore

log = structlog.get_logger(__name__)

EXIT_CONFIG = 2
EXIT_BIND = 3
EXIT_VENUE_FAILED = 4
STORE_FILE = Path("paper") / "exchange.sqlite"
"""The accounts' durable state under the data dir (`PaperStore`); delete it, with the
exchange stopped, to start the paper accounts over."""

HEARTBEAT_S = 5.0
SEND_TIMEOUT_S = 5.0
MAX_EVENTS_PER_FRAME = 512
_TASK_STOP_TIMEOUT_S = 5.0


# ---------------------------------------------------------------- app state


class ExchangeMetrics:
    """What `/metrics` reports, on a registry of its own."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.orders = Counter(
            "paper_orders_total",
            "New-order requests by outcome (created, repeated, refused).",
            ["outcome"],
            registry=registry,
        )
        self.streams = Gauge(
            "paper_stream_connections", "Open /v1/stream connections.", registry=registry
        )
        self.events = Counter(
            "paper_stream_events_total", "Events sent on streams.", registry=registry
        )
        self.dropped = Counter(
            "paper_stream_dropped_total",
            "Streams closed by the venue, by reason.",
            ["reason"],
            registry=registry,
        )


VENUE = web.AppKey("paper_venue", PaperVenue)
TOKEN = web.AppKey("paper_service_token", str)
METRICS = web.AppKey("paper_metrics", ExchangeMetrics)
STREAMS: web.AppKey[set[StreamConnection]] = web.AppKey("paper_streams")


# ---------------------------------------------------------------- helpers


def _authorize(request: web.Request) -> None:
    require_token(request, request.app[TOKEN])


def _account(request: web.Request, name: str | None) -> str:
    """The account a request names, opened on first use. Coded 400/403 when unusable."""
    if not name:
        raise ApiError(400, ErrorCode.MISSING_FIELD, "name an account", "account")
    problem = wire.account_problem(name)
    if problem is not None:
        code, message = problem
        raise ApiError(403 if code is ErrorCode.FORBIDDEN else 400, code, message, "account")
    request.app[VENUE].ensure_account(name)
    return name


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        return decode(raw) if raw else {}
    except CodecError as exc:
        raise ApiError(400, ErrorCode.BAD_JSON, str(exc)) from exc


def _same_order(existing: OrderSnapshot, request: NewOrder) -> bool:
    """Whether a repeated client_order_id describes the order already known. Only what no
    modify can change is compared, so a resent original intent still matches."""
    return (existing.instrument, existing.side, existing.order_type) == (
        request.instrument,
        request.side,
        request.order_type,
    )


def _order_answer(
    venue: PaperVenue, account: str, client_order_id: str, *, created: bool, status: int = 200
) -> web.Response:
    snapshot = venue.engine.order(account, client_order_id)
    assert snapshot is not None  # callers only answer about orders the engine knows
    return json_response(wire.OrderAnswer(created=created, order=snapshot), status=status)


# ---------------------------------------------------------------- REST handlers


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "pid": os.getpid()})


async def ready(request: web.Request) -> web.Response:
    return json_response({"ready": True})


class OrderProblem(Exception):
    """An order request refused: status for REST, code/message/field for both transports."""

    def __init__(self, status: int, code: ErrorCode, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def api_error(self) -> ApiError:
        return ApiError(self.status, self.code, self.message, self.field)


def _problem(exc: OrderRefused) -> OrderProblem:
    return OrderProblem(wire.rejection_status(exc.code), exc.code, exc.message,
                        wire.REJECTION_FIELD.get(exc.code))


def _invalid(exc: ValidationError) -> OrderProblem:
    return OrderProblem(400, *validation_problem(exc))


def submit_order(app: web.Application, account: str, data: dict[str, Any]
                 ) -> tuple[bool, OrderSnapshot]:
    """Place one order for `account` (REST and stream share this). Returns (created, the
    order right after matching); a repeated client_order_id places nothing."""
    venue = app[VENUE]
    data.setdefault("account", account)
    try:
        order = NewOrder.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from exc
    if order.account != account:
        raise OrderProblem(400, ErrorCode.INVALID_FIELD,
                           f"the order names account {order.account!r}, the session {account!r}",
                           "account")
    outcomes = app[METRICS].orders
    existing = venue.engine.order(account, order.client_order_id)
    if existing is not None:
        if not _same_order(existing, order):
            outcomes.labels("refused").inc()
            raise OrderProblem(
                409,
                ErrorCode.DUPLICATE_ORDER,
                f"client_order_id {order.client_order_id!r} already names another order "
                f"({existing.side} {existing.order_type} {existing.instrument})",
                "client_order_id",
            )
        outcomes.labels("repeated").inc()
        return False, existing
    try:
        venue.submit(order)
    except OrderRefused as exc:
        outcomes.labels("refused").inc()
        raise _problem(exc) from exc
    outcomes.labels("created").inc()
    return True, _snapshot(venue, account, order.client_order_id)


def cancel_order_of(app: web.Application, account: str, client_order_id: str) -> OrderSnapshot:
    venue = app[VENUE]
    try:
        venue.cancel(account, client_order_id)
    except OrderRefused as exc:
        raise _problem(exc) from exc
    return _snapshot(venue, account, client_order_id)


def modify_order_of(app: web.Application, account: str, client_order_id: str,
                    data: dict[str, Any]) -> OrderSnapshot:
    venue = app[VENUE]
    try:
        change = wire.ModifyRequest.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from exc
    try:
        venue.modify(account, client_order_id, change.qty, change.price)
    except OrderRefused as exc:
        raise _problem(exc) from exc
    return _snapshot(venue, account, client_order_id)


def _snapshot(venue: PaperVenue, account: str, client_order_id: str) -> OrderSnapshot:
    snapshot = venue.engine.order(account, client_order_id)
    assert snapshot is not None  # callers only answer about orders the engine knows
    return snapshot


async def place_order(request: web.Request) -> web.Response:
    _authorize(request)
    account = _account(request, request.match_info["account"])
    data = await _json_body(request)
    try:
        created, order = submit_order(request.app, account, data)
    except OrderProblem as problem:
        raise problem.api_error() from problem
    return json_response(wire.OrderAnswer(created=created, order=order),
                         status=201 if created else 200)


async def cancel_order(request: web.Request) -> web.Response:
    _authorize(request)
    account = _account(request, request.match_info["account"])
    try:
        order = cancel_order_of(request.app, account, request.match_info["client_order_id"])
    except OrderProblem as problem:
        raise problem.api_error() from problem
    return json_response(wire.OrderAnswer(created=False, order=order))


async def modify_order(request: web.Request) -> web.Response:
    _authorize(request)
    account = _account(request, request.match_info["account"])
    data = await _json_body(request)
    try:
        order = modify_order_of(request.app, account, request.match_info["client_order_id"],
                                data)
    except OrderProblem as problem:
        raise problem.api_error() from problem
    return json_response(wire.OrderAnswer(created=False, order=order))


async def get_order(request: web.Request) -> web.Response:
    _authorize(request)
    venue = request.app[VENUE]
    account = _account(request, request.match_info["account"])
    client_order_id = request.match_info["client_order_id"]
    if venue.engine.order(account, client_order_id) is None:
        raise ApiError(
            404, ErrorCode.ORDER_NOT_FOUND, f"no order {client_order_id!r}", "client_order_id"
        )
    return _order_answer(venue, account, client_order_id, created=False)


async def list_orders(request: web.Request) -> web.Response:
    _authorize(request)
    account = _account(request, request.match_info["account"])
    if request.query.get("open", "1") != "1":
        raise ApiError(
            400,
            ErrorCode.INVALID_FIELD,
            "only working orders are listed (open=1); look finished ones up by id",
            "open",
        )
    return json_response(wire.OrderList(orders=request.app[VENUE].engine.open_orders(account)))


def _query_int(request: web.Request, name: str, default: int, low: int, high: int,
               meaning: str) -> int:
    """The query parameter `name` as an integer in [low, high]; 400 invalid_field if not."""
    text = request.query.get(name)
    if text is None:
        return default
    if text.isascii() and text.isdigit() and len(text) <= 20 and low <= int(text) <= high:
        return int(text)
    raise ApiError(400, ErrorCode.INVALID_FIELD, f"{name} must be {meaning}", name)


async def list_fills(request: web.Request) -> web.Response:
    _authorize(request)
    account = _account(request, request.match_info["account"])
    since = _query_int(request, "since", 0, 0, 2**63 - 1,
                       "a time in integer ns since the epoch")
    offset = _query_int(request, "offset", 0, 0, 2**63 - 1, "a whole number of fills")
    limit = _query_int(request, "limit", wire.FILLS_PAGE, 1, wire.FILLS_PAGE,
                       f"a number of fills from 1 to {wire.FILLS_PAGE}")
    fills = request.app[VENUE].engine.fills(account, since, offset, limit)
    return json_response(wire.FillList(fills=fills, more=len(fills) == limit))


def ledger_view(venue: PaperVenue, account: str) -> wire.LedgerView:
    """The venue's books for `account`, as `GET …/ledger` answers them."""
    ledger = venue.engine.ledger
    positions = [
        {
            "account": account,
            "instrument": name,
            "qty": state.qty,
            "avg_price": state.avg_price,
            "realized_pnl": state.realized_pnl,
        }
        for name, state in ledger.positions(account).items()
    ]
    return wire.LedgerView.model_validate(
        {
            "account": account,
            "cash": ledger.cash(account),
            "positions": positions,
            "fees_paid": ledger.fees_paid(account),
            "ts": venue.now(),
        }
    )


async def get_ledger(request: web.Request) -> web.Response:
    _authorize(request)
    account = _account(request, request.match_info["account"])
    return json_response(ledger_view(request.app[VENUE], account))


async def list_instruments(request: web.Request) -> web.Response:
    _authorize(request)
    specs = list(request.app[VENUE].engine.specs.values())
    return json_response(wire.InstrumentList(instruments=specs))


async def drop_streams(request: web.Request) -> web.Response:
    _authorize(request)
    body = await _json_body(request)
    account = body.get("account")
    if account is not None and not isinstance(account, str):
        raise ApiError(400, ErrorCode.INVALID_FIELD, "account must be a string", "account")
    targets = [c for c in request.app[STREAMS] if account is None or c.account == account]
    for connection in targets:
        await connection.close(WSCloseCode.SERVICE_RESTART, "dropped by the venue operator")
    return json_response({"closed": len(targets)})


async def steer_price(request: web.Request) -> web.Response:
    _authorize(request)
    body = await _json_body(request)
    instrument = body.get("instrument")
    if not isinstance(instrument, str):
        raise ApiError(400, ErrorCode.MISSING_FIELD if instrument is None
                       else ErrorCode.INVALID_FIELD, "instrument must be a string", "instrument")
    try:
        target = Decimal(str(body.get("price")))
    except (InvalidOperation, ValueError):
        raise ApiError(400, ErrorCode.INVALID_FIELD, "price must be a decimal string",
                       "price") from None
    if not target.is_finite() or target <= 0:
        raise ApiError(400, ErrorCode.INVALID_FIELD, "price must be positive", "price")
    per_step = body.get("ticks_per_step", 1)
    if not isinstance(per_step, int) or isinstance(per_step, bool) or not 1 <= per_step <= 10_000:
        raise ApiError(400, ErrorCode.INVALID_FIELD,
                       "ticks_per_step must be an integer from 1 to 10000", "ticks_per_step")
    venue = request.app[VENUE]
    try:
        reached = venue.steer(instrument, target, per_step)
    except KeyError:
        raise ApiError(400, ErrorCode.UNKNOWN_INSTRUMENT, f"unknown instrument {instrument}",
                       "instrument") from None
    except ValueError as exc:
        raise ApiError(409, ErrorCode.INVALID_FIELD, str(exc), "price") from None
    return json_response({"instrument": instrument, "target": str(reached),
                          "mid": str(venue.mid(instrument))})


# ---------------------------------------------------------------- the stream


class StreamConnection:
    """One `/v1/stream` client. A private `PaperAdapter` attached to the shared venue does the
    filtering (this account's orders, this connection's subscriptions) and the book diffing;
    this class only moves its events to the socket and requests from it."""

    _ids = itertools.count(1)

    def __init__(
        self, ws: web.WebSocketResponse, app: web.Application, account: str, *,
        transport: asyncio.BaseTransport | None = None,
    ) -> None:
        venue, metrics = app[VENUE], app[METRICS]
        self._app = app
        self.ws = ws
        self._transport = transport
        self.account = account
        self.id = next(self._ids)
        self._venue = venue
        self._session = PaperAdapter(account=account, venue=venue)
        self._metrics = metrics
        self._send_lock = asyncio.Lock()
        self._log = log.bind(account=account, stream_id=self.id)

    async def run(self) -> None:
        """Serve until the client goes away or the venue closes the connection."""
        # Attached before the hello goes out: order events from then on are queued, not lost.
        await self._session.connect()
        pump: asyncio.Task[None] | None = None
        try:
            await self._send(wire.hello_frame(self.account, self._venue.now()))
            pump = asyncio.create_task(
                self._pump(), name=f"paper-stream-pump:{self.account}:{self.id}"
            )
            async for msg in self.ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await self._on_request(msg.data)
                elif msg.type is WSMsgType.ERROR:
                    self._log.info("paper_stream_error", error=str(self.ws.exception()))
                    break
        except (TimeoutError, ConnectionError) as exc:  # a reply could not be written
            self._log.info("paper_stream_send_failed", error=str(exc))
        finally:
            await self._session.close()  # ends events(), so the pump finishes
            if pump is not None:
                pump.cancel()
                done, _ = await asyncio.wait({pump}, timeout=_TASK_STOP_TIMEOUT_S)
                if not done:
                    self._log.warning("paper_stream_pump_did_not_stop")
            await self.ws.close()

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode())

    async def _send(self, *frames: bytes) -> None:
        """Write `frames` in order, together (nothing else goes out between them): in one
        write to the transport when it keeps up, else one by one through aiohttp."""
        async with self._send_lock, asyncio.timeout(SEND_TIMEOUT_S):
            transport = direct_transport(self.ws, self._transport)
            if transport is not None:
                transport.write(b"".join(server_frame(frame, BINARY) for frame in frames))
                return
            for frame in frames:
                await self.ws.send_bytes(frame)

    def _events_frame(self, batch: list[AdapterEvent]) -> bytes | None:
        encoded = [encode(e) for e in batch if not isinstance(e, ConnectionChanged)]
        if not encoded:
            return None
        self._metrics.events.inc(len(encoded))
        return wire.events_frame(encoded)

    async def _pump(self) -> None:
        events = self._session.events()
        try:
            async for first in events:
                batch = [first, *self._session.take_pending(MAX_EVENTS_PER_FRAME - 1)]
                frame = self._events_frame(batch)
                if frame is not None:
                    await self._send(frame)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            self._metrics.dropped.labels("slow_consumer").inc()
            self._log.warning("paper_stream_slow_consumer", timeout_s=SEND_TIMEOUT_S)
            await self.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"slow consumer")
        except ConnectionError as exc:  # the socket went away mid-send
            self._log.info("paper_stream_send_failed", error=str(exc))
            await self.ws.close()
        finally:
            if isinstance(events, AsyncGenerator):
                await events.aclose()

    async def _on_request(self, raw: str | bytes) -> None:
        request_id: int | None = None
        try:
            data = decode(raw)
            candidate = data.get("id")
            request_id = candidate if isinstance(candidate, int) and candidate >= 0 else None
            if data.get("op") in wire.ORDER_OPS:
                await self._on_order_request(data, request_id)
                return
            request = wire.StreamRequest.model_validate(data)
        except CodecError as exc:
            await self._send(wire.error_frame(None, ErrorCode.BAD_JSON, str(exc)))
            return
        except ValidationError as exc:
            await self._send(wire.error_frame(request_id, *stream_request_problem(exc)))
            return
        try:
            if request.op == "subscribe":
                await self._session.subscribe(
                    request.instrument,
                    request.channel,
                    depth=request.depth,
                    interval=request.interval,
                )
            else:
                await self._session.unsubscribe(
                    request.instrument,
                    request.channel,
                    depth=request.depth,
                    interval=request.interval,
                )
        except OrderRejectedError as exc:
            field = "interval" if exc.code is ErrorCode.MISSING_FIELD else "instrument"
            await self._send(wire.error_frame(request_id, exc.code, exc.message, field))
            return
        await self._send(wire.ack_frame(request_id))


    async def _on_order_request(self, data: dict[str, Any], request_id: int | None) -> None:
        """place / cancel / modify over the stream: the same engine calls and answers as the
        REST endpoints, without an HTTP request per order."""
        op = data["op"]
        try:
            if op == "place":
                order = data.get("order")
                if not isinstance(order, dict):
                    raise OrderProblem(400, ErrorCode.MISSING_FIELD if order is None
                                       else ErrorCode.INVALID_FIELD,
                                       "place needs an order object", "order")
                created, snapshot = submit_order(self._app, self.account, order)
            else:
                cid = data.get("client_order_id")
                if not isinstance(cid, str) or not cid:
                    raise OrderProblem(400, ErrorCode.MISSING_FIELD if cid is None
                                       else ErrorCode.INVALID_FIELD,
                                       f"{op} needs a client_order_id", "client_order_id")
                created = False
                if op == "cancel":
                    snapshot = cancel_order_of(self._app, self.account, cid)
                else:
                    change = {k: v for k, v in data.items()
                              if k not in ("op", "id", "client_order_id")}
                    snapshot = modify_order_of(self._app, self.account, cid, change)
        except OrderProblem as problem:
            await self._send(wire.error_frame(request_id, problem.code, problem.message,
                                              problem.field))
            return
        # The events this request caused (and any queued before them) go out with the answer,
        # in the same write and in order: from the pump they would wait for its next turn.
        # Taking them is safe here: the pump sends whatever it took before we took ours, and
        # it takes the lock before ours as it never waits between taking and locking.
        frames = []
        while self._session.backlog:
            frame = self._events_frame(self._session.take_pending(MAX_EVENTS_PER_FRAME))
            if frame is not None:
                frames.append(frame)
        await self._send(*frames, wire.order_frame(request_id, created, snapshot))


def stream_request_problem(exc: ValidationError) -> tuple[ErrorCode, str, str | None]:
    """Code, message and field for an invalid stream request (its first problem); an
    unknown `op` is an unknown message type."""
    code, message, field = validation_problem(exc)
    if field == "op" and code is not ErrorCode.MISSING_FIELD:
        return (ErrorCode.UNKNOWN_TYPE,
                "op must be subscribe, unsubscribe, place, cancel or modify", field)
    return code, message, field or None


async def stream(request: web.Request) -> web.WebSocketResponse:
    _authorize(request)
    app = request.app
    account = _account(request, request.query.get("account"))
    ws = web.WebSocketResponse(
        heartbeat=HEARTBEAT_S, max_msg_size=wire.MAX_STREAM_FRAME, compress=False
    )
    await ws.prepare(request)
    connection = StreamConnection(ws, app, account, transport=request.transport)
    app[STREAMS].add(connection)
    app[METRICS].streams.inc()
    try:
        await connection.run()
    finally:
        app[STREAMS].discard(connection)
        app[METRICS].streams.dec()
    return ws


# ---------------------------------------------------------------- the app


def create_app(
    venue: PaperVenue, token: str, registry: CollectorRegistry | None = None
) -> web.Application:
    """The exchange's aiohttp app. Starting it starts the venue's market; shutting it down
    closes every stream (1001), then stops the market. Raises `FatalAdapterError` on start when
    the market cannot run (e.g. an unreadable replay file)."""
    if not token:
        raise ValueError("the paper exchange needs a service token")
    registry = registry if registry is not None else CollectorRegistry()
    app = make_app()
    app[VENUE] = venue
    app[TOKEN] = token
    app[METRICS] = ExchangeMetrics(registry)
    streams: set[StreamConnection] = set()
    app[STREAMS] = streams
    metrics_http.install(app, registry)

    async def venue_lifecycle(app: web.Application) -> AsyncIterator[None]:
        await venue.start()
        yield
        await venue.stop()

    async def close_streams(app: web.Application) -> None:
        # On shutdown, before aiohttp waits for handlers: a stream handler never ends alone.
        open_streams: set[StreamConnection] = app[STREAMS]
        for connection in list(open_streams):
            with contextlib.suppress(Exception):
                await connection.close(WSCloseCode.GOING_AWAY, "the paper exchange is stopping")

    app.cleanup_ctx.append(venue_lifecycle)
    app.on_shutdown.append(close_streams)
    prefix = wire.API + "/accounts/{account}"
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get(wire.API + "/instruments", list_instruments)
    app.router.add_post(prefix + "/orders", place_order)
    app.router.add_get(prefix + "/orders", list_orders)
    app.router.add_get(prefix + "/orders/{client_order_id}", get_order)
    app.router.add_delete(prefix + "/orders/{client_order_id}", cancel_order)
    app.router.add_patch(prefix + "/orders/{client_order_id}", modify_order)
    app.router.add_get(prefix + "/fills", list_fills)
    app.router.add_get(prefix + "/ledger", get_ledger)
    app.router.add_post(wire.API + "/admin/drop-streams", drop_streams)
    app.router.add_post(wire.API + "/admin/steer", steer_price)
    app.router.add_get(wire.API + "/stream", stream)
    return app


class VenueWatch:
    """A venue listener that notices the market task failing, so the process can exit rather
    than serve a frozen market."""

    backlog = 0

    def __init__(self) -> None:
        self.failed = asyncio.Event()
        self.reason = ""

    def deliver(self, events: Any) -> None:
        for event in events:
            if isinstance(event, ConnectionChanged) and not event.connected:
                self.reason = event.reason
                self.failed.set()


# ---------------------------------------------------------------- configuration


def paper_config_errors(exc: ValidationError, source: str) -> str:
    """One line per problem, naming the key as `paper.<key>` the way the config file has it."""
    lines = []
    for err in exc.errors():
        key = ".".join(["paper", *(str(p) for p in err.get("loc", ()))])
        reason = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{source}: {key}: {reason}")
    return "\n".join(lines)


def load_paper_config(path: Path | None) -> tuple[FleetConfig, PaperConfig]:
    """The fleet config and its validated `[paper]` table. A relative `replay_file` is taken
    relative to the config file. Raises `ConfigError` naming the file and key."""
    fleet = load_config(path)
    source = str(path) if path is not None else "default config"
    try:
        paper = PaperConfig.model_validate(fleet.paper)
    except ValidationError as exc:
        raise ConfigError(paper_config_errors(exc, source)) from exc
    if paper.replay_file is not None and path is not None and not paper.replay_file.is_absolute():
        paper = paper.model_copy(update={"replay_file": path.parent / paper.replay_file})
    return fleet, paper


def service_token(fleet: FleetConfig, data_dir: Path) -> str:
    """The deployment join token: configured, else the one generated into the data dir."""
    if fleet.security.join_token is not None:
        return fleet.security.join_token.get_secret_value()
    return load_or_create_secrets(data_dir)["join_token"]


# ---------------------------------------------------------------- process


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m workers.broker.adapters.paper.server",
        description="Run the built-in paper exchange as a venue process.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--port", type=int, default=0, help="Port; 0 lets the OS choose.")
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="Data directory (secrets.json, run/paper.url)."
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="Fleet TOML configuration; its [paper] table configures the venue.",
    )
    return parser.parse_args(argv)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _public_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _remove_if_ours(path: Path, url: str) -> None:
    with contextlib.suppress(OSError):
        if path.read_text().strip() == url:
            path.unlink()


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> int:
    try:
        fleet, paper = load_paper_config(args.config)
    except ConfigError as exc:
        print(f"paper exchange: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logger = logs.configure(fleet.log_level, component="paper-exchange")
    token = service_token(fleet, args.data_dir)
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        print(
            f"paper exchange: cannot listen on {args.host}:{args.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return EXIT_BIND
    url = _public_url(args.host, sock.getsockname()[1])
    try:
        store = PaperStore(args.data_dir / STORE_FILE)
        venue = PaperVenue(paper, store=store)
    except (sqlite3.Error, OSError, ValueError) as exc:
        sock.close()
        print(f"paper exchange: cannot load {args.data_dir / STORE_FILE}: {exc}",
              file=sys.stderr)
        return EXIT_CONFIG
    watch = VenueWatch()
    venue.attach(watch)
    runner = web.AppRunner(create_app(venue, token), access_log=None, shutdown_timeout=5.0)
    try:
        await runner.setup()
    except FatalAdapterError as exc:
        sock.close()
        print(f"paper exchange: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    url_file = args.data_dir / wire.URL_FILE
    exit_code = 0
    try:
        await web.SockSite(runner, sock).start()
        write_atomic(url_file, url + "\n")
        print(orjson.dumps({"event": "listening", "url": url}).decode(), flush=True)
        logger.info("listening", url=url, instruments=len(paper.instruments), seed=paper.seed)
        stopped = asyncio.create_task(stop.wait(), name="paper-exchange-stop")
        failed = asyncio.create_task(watch.failed.wait(), name="paper-exchange-venue-watch")
        await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stopped, failed):
            task.cancel()
        if watch.failed.is_set():
            logger.error("paper_market_failed", reason=watch.reason)
            exit_code = EXIT_VENUE_FAILED
        logger.info("stopping")
    finally:
        _remove_if_ours(url_file, url)
        await runner.cleanup()
        store.close()
    logger.info("stopped")
    return exit_code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run(lambda stop: serve(args, stop))


if __name__ == "__main__":
    sys.exit(main())
