"""`RemotePaperAdapter`: one account's session with the paper exchange process.

The exchange runs as its own process (`workers.broker.adapters.paper.server`, whose docstring
is the protocol). This adapter speaks that protocol with aiohttp: market data, order events and order entry
(place / cancel / modify) over one WebSocket stream; account queries over REST, and order entry
over REST too while the stream is down (a place that was lost on the stream is re-sent over
REST with the same client_order_id, which the venue is idempotent on).

The stream is re-opened by this side when it drops, with exponential backoff and jitter.
`events()` then carries `ConnectionChanged(False)`, and later `ConnectionChanged(True)`
followed by fresh snapshots of every subscription. Order events are not replayed by the venue:
what happened meanwhile is recovered with `open_orders()`, `fills_since()` and
`order_state()`, as the `ConnectionChanged` contract asks of the Broker.

Every aiohttp and HTTP failure is converted at this boundary: transport trouble and 5xx are
`RetryableAdapterError`, a refused token or a protocol mismatch is `FatalAdapterError`, and a
coded refusal of one request is `OrderRejectedError(code)` (`error_for_status` decides).

The pure parts — `error_for_status`, `StreamKey`, `parse_frame` — are unit-tested without a
socket; the stream is re-opened after the adapters' shared `ReconnectPolicy` (`backoff.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import structlog
from pydantic import BaseModel, ValidationError
from yarl import URL

from protocol.codec import CodecError, decode, encode
from protocol.errors import ErrorBody, ErrorCode
from protocol.market import CandleInterval, Channel, InstrumentSpec, format_decimal
from protocol.orders import BalancesSnapshot, Fill, NewOrder, OrderSnapshot, Position
from workers.broker.adapters.backoff import ReconnectPolicy
from workers.broker.adapters.base import (
    Adapter,
    AdapterError,
    AdapterEvent,
    ConnectionChanged,
    FatalAdapterError,
    OrderAck,
    OrderRejectedError,
    RetryableAdapterError,
)
from workers.broker.adapters.paper import wire
from workers.broker.adapters.paper.adapter import DEFAULT_BOOK_DEPTH
from workers.broker.adapters.queue import EventQueue

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)

HEARTBEAT_S = 5.0
MAX_INCOMING_FRAME = 16 * 1024 * 1024
_STOP_TIMEOUT_S = 5.0


def read_paper_url(data_dir: Path) -> str | None:
    """The URL the exchange announced in `data_dir/run/paper.url`, or None if there is none."""
    try:
        url = (data_dir / wire.URL_FILE).read_text().strip()
    except OSError:
        return None
    return url or None


# ---------------------------------------------------------------- pure parts


_REJECTABLE_STATUSES = frozenset({400, 403, 404, 409, 413, 422})
# Codes that mean "you reached something that is not this protocol", not "this request".
_NOT_A_REJECTION = frozenset({ErrorCode.NOT_FOUND, ErrorCode.UNAUTHORIZED, ErrorCode.INTERNAL})


def error_for_status(
    status: int,
    body: bytes,
    *,
    what: str,
    retry_after: str | None = None,
    client_order_id: str | None = None,
) -> AdapterError:
    """The one place that turns a venue's HTTP error into what the caller should do.

    401 and 403 `forbidden` (the service token, or an account the venue keeps for itself) are
    fatal; 408, 429 and 5xx are retryable; a coded 4xx about the request is a rejection; any
    other answer means we are not talking to this protocol and is fatal."""
    error = _error_body(body)
    detail = f"{what}: HTTP {status}" + (f" {error.code}: {error.message}" if error else "")
    if status == 401:
        return FatalAdapterError(f"{what}: the paper exchange refused the service token")
    if status in (408, 429) or status >= 500:
        return RetryableAdapterError(detail, retry_after=_seconds(retry_after))
    if error is None or error.code in _NOT_A_REJECTION or status not in _REJECTABLE_STATUSES:
        return FatalAdapterError(detail)
    if status == 403:
        return FatalAdapterError(detail)
    if status == 404 and error.code is not ErrorCode.ORDER_NOT_FOUND:
        return FatalAdapterError(detail)
    return OrderRejectedError(error.code, error.message, client_order_id=client_order_id)


def _error_body(body: bytes) -> ErrorBody | None:
    try:
        return ErrorBody.model_validate(decode(body)["error"])
    except (CodecError, KeyError, TypeError, ValidationError):
        return None


def _seconds(header: str | None) -> float | None:
    try:
        return max(0.0, float(header)) if header is not None else None
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class StreamKey:
    """One market-data stream, normalised the way the venue keys it."""

    instrument: str
    channel: Channel
    depth: int | None = None
    interval: CandleInterval | None = None

    @classmethod
    def of(
        cls,
        instrument: str,
        channel: Channel,
        depth: int | None = None,
        interval: CandleInterval | None = None,
    ) -> StreamKey:
        """Raises `OrderRejectedError(missing_field)` for candles without an interval."""
        channel = Channel(channel)
        if channel is Channel.CANDLES and interval is None:
            raise OrderRejectedError(ErrorCode.MISSING_FIELD, "candles need an interval")
        return cls(
            instrument,
            channel,
            (depth or DEFAULT_BOOK_DEPTH) if channel is Channel.BOOK else None,
            CandleInterval(interval) if channel is Channel.CANDLES and interval else None,
        )

    def request(self, op: str, request_id: int | None) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "op": op,
            "id": request_id,
            "instrument": self.instrument,
            "channel": self.channel.value,
        }
        if self.depth is not None:
            frame["depth"] = self.depth
        if self.interval is not None:
            frame["interval"] = self.interval.value
        return frame


class StreamProtocolError(ValueError):
    """The venue sent a frame this client cannot read."""


@dataclass(frozen=True, slots=True)
class Hello:
    account: str
    ts: int


@dataclass(frozen=True, slots=True)
class EventsFrame:
    events: list[AdapterEvent]


@dataclass(frozen=True, slots=True)
class AckFrame:
    id: int | None


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    id: int | None
    error: ErrorBody


@dataclass(frozen=True, slots=True)
class OrderFrame:
    id: int | None
    created: bool
    order: OrderSnapshot


StreamFrame = Hello | EventsFrame | AckFrame | ErrorFrame | OrderFrame


def parse_frame(data: str | bytes) -> StreamFrame:
    """Read one venue → client frame. Raises `StreamProtocolError` for anything else."""
    try:
        frame = decode(data)
        kind = frame.get("type")
        if kind == "events":
            return EventsFrame([wire.VENUE_EVENT.validate_python(e) for e in frame["events"]])
        if kind == "ack":
            return AckFrame(_request_id(frame.get("id")))
        if kind == "order":
            return OrderFrame(_request_id(frame.get("id")), bool(frame["created"]),
                              OrderSnapshot.model_validate(frame["order"]))
        if kind == "error":
            return ErrorFrame(
                _request_id(frame.get("id")), ErrorBody.model_validate(frame["error"])
            )
        if kind == "hello":
            return Hello(str(frame["account"]), int(frame["ts"]))
    except (CodecError, KeyError, TypeError, ValueError) as exc:  # ValidationError included
        raise StreamProtocolError(f"unreadable stream frame: {exc}") from exc
    raise StreamProtocolError(f"unknown stream frame type {kind!r}")


def _request_id(value: object) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError(f"bad request id {value!r}")


def _segment(value: str) -> str:
    """`value` as one encoded path segment. Dots are encoded too, so an id such as `..`
    cannot be read as a relative path."""
    return quote(value, safe="").replace(".", "%2E")


class _StreamLost(RetryableAdapterError):
    """The stream dropped while a request on it was outstanding."""


# ---------------------------------------------------------------- the adapter


class RemotePaperAdapter(Adapter):
    """The `Adapter` contract over the paper exchange's venue protocol.

    `url` is the exchange's base URL (see `read_paper_url`), `token` the deployment's service
    token, `account` the account this session trades (opened by the venue on first use).
    Besides the contract, `ledger()` returns the venue's own books for the account and
    `order_state()` any one order, finished or not; `connected` tells whether the stream is
    up right now.
    """

    venue = "paper"
    fills_page = wire.FILLS_PAGE  # fills asked for per request (the venue's most)

    def __init__(
        self,
        url: str,
        token: str,
        account: str,
        *,
        reconnect: ReconnectPolicy | None = None,
        request_timeout_s: float = 10.0,
        max_queue: int = 10_000,
        rng: random.Random | None = None,
        locate: Callable[[], str | None] | None = None,
    ) -> None:
        problem = wire.account_problem(account)
        if problem is not None:
            raise ValueError(f"account {account!r}: {problem[1]}")
        if not token:
            raise ValueError("a service token is required")
        self.url = url.rstrip("/")
        self._locate = locate
        self.account = account
        self._token = token
        self._reconnect = reconnect or ReconnectPolicy()
        self._timeout_s = request_timeout_s
        self._rng = rng or random.Random()
        self._log = log.bind(account=account, venue=self.venue)
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._subs: dict[StreamKey, None] = {}  # insertion-ordered set
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._specs: dict[str, InstrumentSpec] = {}
        self._queue = EventQueue(max_queue)
        self._fatal: FatalAdapterError | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        """True while the stream to the venue is open."""
        return self._ws is not None and not self._ws.closed

    @property
    def backlog(self) -> int:
        """Events received and not yet taken from `events()`."""
        return len(self._queue)

    # ------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        if self._closed:
            raise FatalAdapterError("this adapter was closed; create a new one")
        if self._fatal is not None:
            raise self._fatal
        if self._stream_task is not None:
            return
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
        )
        try:
            await self.instruments()
            ws, _ = await self._open_stream()
        except BaseException:
            session, self._session = self._session, None
            await session.close()
            raise
        self._ws = ws
        self._stream_task = asyncio.create_task(
            self._run_stream(ws), name=f"paper-remote-stream:{self.account}"
        )
        self._log.info("paper_remote_connected", url=self.url)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        task, self._stream_task = self._stream_task, None
        if task is not None:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=_STOP_TIMEOUT_S)
            if not done:
                self._log.warning("paper_remote_stream_did_not_stop", timeout_s=_STOP_TIMEOUT_S)
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), _STOP_TIMEOUT_S)
        self._fail_pending(FatalAdapterError("the adapter was closed"))
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        self._queue.close()

    async def events(self) -> AsyncIterator[AdapterEvent]:
        async for event in self._queue.drain():
            yield event

    # ------------------------------------------------------------ market data

    async def subscribe(
        self,
        instrument: str,
        channel: Channel,
        *,
        depth: int | None = None,
        interval: CandleInterval | None = None,
    ) -> None:
        """As the contract says. While the stream is down the subscription is recorded and
        starts (with its snapshot) when the stream is back."""
        self._usable_session()
        key = StreamKey.of(instrument, channel, depth, interval)
        if key in self._subs:
            return
        if self._specs and instrument not in self._specs:
            raise OrderRejectedError(
                ErrorCode.UNKNOWN_INSTRUMENT, f"the paper venue does not list {instrument!r}"
            )
        self._subs[key] = None
        try:
            await self._stream_request(key, "subscribe")
        except _StreamLost:
            pass  # restored with the stream
        except BaseException:
            self._subs.pop(key, None)
            raise

    async def unsubscribe(
        self,
        instrument: str,
        channel: Channel,
        *,
        depth: int | None = None,
        interval: CandleInterval | None = None,
    ) -> None:
        try:
            key = StreamKey.of(instrument, channel, depth, interval)
        except OrderRejectedError:
            return
        if key not in self._subs:
            return
        del self._subs[key]
        with contextlib.suppress(AdapterError):
            await self._stream_request(key, "unsubscribe")

    # ------------------------------------------------------------ orders

    async def place_order(self, request: NewOrder) -> OrderAck:
        """As the contract says. Re-sending a `client_order_id` the venue already knows for
        this account returns that order's ack and places nothing (no new events follow)."""
        cid = request.client_order_id
        if request.account != self.account:
            raise OrderRejectedError(
                ErrorCode.FORBIDDEN,
                f"this session trades account {self.account!r}, not {request.account!r}",
                client_order_id=cid,
            )
        body = request.model_dump(mode="json", exclude_none=True)
        order: OrderSnapshot | None = None
        if self._stream_usable():
            try:
                order = await self._order_op({"op": "place", "order": body}, cid)
            except RetryableAdapterError as exc:
                # Lost or unanswered on the stream: the same client_order_id over REST either
                # places it or finds it placed (the venue is idempotent on it).
                self._log.info("paper_stream_place_fell_back_to_rest", order_id=cid,
                               error=str(exc))
        if order is None:
            data = await self._call(
                "POST", self._account_path("orders"), body=body, client_order_id=cid
            )
            order = self._parse(wire.OrderAnswer, data, "POST orders").order
        if order.order_id is None:
            raise FatalAdapterError("the paper exchange acknowledged an order without an id")
        return OrderAck(cid, order.order_id, order.ts)

    async def cancel_order(self, client_order_id: str, *, order_id: str | None = None) -> None:
        if self._stream_usable():
            await self._order_op({"op": "cancel", "client_order_id": client_order_id},
                                 client_order_id)
            return
        await self._call(
            "DELETE", self._account_path("orders", client_order_id), client_order_id=client_order_id
        )

    async def modify_order(
        self,
        client_order_id: str,
        *,
        order_id: str | None = None,
        qty: Decimal | None = None,
        price: Decimal | None = None,
    ) -> None:
        if qty is None and price is None:
            raise OrderRejectedError(
                ErrorCode.INVALID_ORDER,
                "give a new qty and/or price",
                client_order_id=client_order_id,
            )
        body = {
            name: format_decimal(value)
            for name, value in (("qty", qty), ("price", price))
            if value is not None
        }
        if self._stream_usable():
            await self._order_op({"op": "modify", "client_order_id": client_order_id, **body},
                                 client_order_id)
            return
        await self._call(
            "PATCH",
            self._account_path("orders", client_order_id),
            body=body,
            client_order_id=client_order_id,
        )

    async def order_state(self, client_order_id: str) -> OrderSnapshot | None:
        """The venue's state of one order of this account (finished ones too), or None when
        the venue never saw it."""
        try:
            data = await self._call(
                "GET",
                self._account_path("orders", client_order_id),
                client_order_id=client_order_id,
            )
        except OrderRejectedError as exc:
            if exc.code is ErrorCode.ORDER_NOT_FOUND:
                return None
            raise
        return self._parse(wire.OrderAnswer, data, "GET order").order

    # ------------------------------------------------------------ account state

    async def open_orders(self) -> list[OrderSnapshot]:
        data = await self._call("GET", self._account_path("orders"), params={"open": "1"})
        return self._parse(wire.OrderList, data, "GET orders").orders

    async def fills_since(self, ts: int) -> list[Fill]:
        """Every fill since `ts`, read a page (`fills_page`) at a time: the venue answers a
        page per request, so asking far back never stalls it for its other accounts."""
        fills: list[Fill] = []
        while True:
            params = {"since": str(max(0, ts)), "offset": str(len(fills)),
                      "limit": str(self.fills_page)}
            data = await self._call("GET", self._account_path("fills"), params=params)
            page = self._parse(wire.FillList, data, "GET fills")
            fills += page.fills
            if not page.more or not page.fills:
                return fills

    async def instruments(self) -> list[InstrumentSpec]:
        data = await self._call("GET", wire.API + "/instruments")
        specs = self._parse(wire.InstrumentList, data, "GET instruments").instruments
        self._specs = {spec.instrument: spec for spec in specs}
        return specs

    async def ledger(self) -> wire.LedgerView:
        """The venue's own books for this account: cash, positions, fees paid."""
        data = await self._call("GET", self._account_path("ledger"))
        return self._parse(wire.LedgerView, data, "GET ledger")

    async def balances(self) -> BalancesSnapshot:
        view = await self.ledger()
        return BalancesSnapshot(account=self.account, cash=view.cash, ts=view.ts)

    async def positions(self) -> list[Position]:
        return (await self.ledger()).positions

    # ------------------------------------------------------------ REST plumbing

    def _account_path(self, *parts: str) -> str:
        return "/".join(
            [wire.API, "accounts", _segment(self.account), *(_segment(p) for p in parts)]
        )

    def _usable_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise FatalAdapterError("this adapter was closed; create a new one")
        if self._fatal is not None:
            raise self._fatal
        if self._session is None:
            raise FatalAdapterError("the paper adapter is not connected; call connect() first")
        return self._session

    def _stream_usable(self) -> bool:
        """Order ops go over the stream while it is up and being read; otherwise over REST
        (the reader pauses when `events()` falls behind, and an answer must not wait on the
        very consumer that is waiting for it)."""
        return self.connected and self._queue.flowing and self._fatal is None

    async def _order_op(self, request: dict[str, Any], client_order_id: str) -> OrderSnapshot:
        """One order op over the stream. Raises `OrderRejectedError` (the venue's code) or
        `RetryableAdapterError` (the stream dropped or the answer did not come in time)."""
        try:
            frame = await self._ask(request, request["op"])
        except OrderRejectedError as exc:
            raise OrderRejectedError(exc.code, exc.message,
                                     client_order_id=client_order_id) from None
        assert isinstance(frame, OrderFrame)
        return frame.order

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        client_order_id: str | None = None,
    ) -> dict[str, Any]:
        session = self._usable_session()
        what = f"{method} {path}"
        url = URL(self.url + path, encoded=True)
        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            async with session.request(
                method,
                url,
                params=params,
                headers=headers,
                data=encode(body) if body is not None else None,
            ) as resp:
                raw = await resp.read()
                status, retry_after = resp.status, resp.headers.get("Retry-After")
        except TimeoutError as exc:
            raise RetryableAdapterError(f"{what}: no answer within {self._timeout_s}s") from exc
        except aiohttp.ClientError as exc:
            raise RetryableAdapterError(f"{what}: {exc}") from exc
        if status >= 400:
            raise error_for_status(
                status, raw, what=what, retry_after=retry_after, client_order_id=client_order_id
            )
        try:
            return decode(raw)
        except CodecError as exc:
            raise FatalAdapterError(f"{what}: the paper exchange answered non-JSON") from exc

    @staticmethod
    def _parse(model: type[M], data: dict[str, Any], what: str) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise FatalAdapterError(
                f"{what}: unexpected answer from the paper exchange: {exc.errors()[0].get('msg')}"
            ) from exc

    # ------------------------------------------------------------ the stream

    async def _open_stream(self) -> tuple[aiohttp.ClientWebSocketResponse, Hello]:
        """Open `/v1/stream` and wait for the venue's hello. Raises `RetryableAdapterError`
        or `FatalAdapterError`."""
        session = self._usable_session()
        try:
            ws = await session.ws_connect(
                URL(self.url + wire.API + "/stream", encoded=True),
                params={"account": self.account},
                heartbeat=HEARTBEAT_S,
                max_msg_size=MAX_INCOMING_FRAME,
                autoping=True,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise error_for_status(exc.status, b"", what="open stream") from exc
        except TimeoutError as exc:
            raise RetryableAdapterError("open stream: no answer in time") from exc
        except aiohttp.ClientError as exc:
            raise RetryableAdapterError(f"open stream: {exc}") from exc
        try:
            msg = await ws.receive(timeout=self._timeout_s)
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                raise RetryableAdapterError(f"open stream: the venue closed it ({msg.type.name})")
            frame = parse_frame(msg.data)
            if not isinstance(frame, Hello):
                raise FatalAdapterError("open stream: the venue did not start with hello")
        except TimeoutError as exc:
            await ws.close()
            raise RetryableAdapterError("open stream: no hello in time") from exc
        except StreamProtocolError as exc:
            await ws.close()
            raise FatalAdapterError(f"open stream: {exc}") from exc
        except BaseException:
            await ws.close()
            raise
        return ws, frame

    async def _run_stream(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """The owned task: read the stream; when it drops, say so and re-open it."""
        try:
            while True:
                reason = await self._read(ws)
                self._ws = None
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), _STOP_TIMEOUT_S)
                self._fail_pending(_StreamLost(reason))
                self._log.warning("paper_stream_lost", reason=reason)
                self._push(ConnectionChanged(False, reason, time.time_ns()))
                ws, hello = await self._reopen_stream()
                self._ws = ws
                self._log.info("paper_stream_restored", subscriptions=len(self._subs))
                self._push(ConnectionChanged(True, "stream re-established", hello.ts))
                await self._restore_subscriptions(ws)
        except asyncio.CancelledError:
            raise
        except FatalAdapterError as exc:
            self._give_up(exc)
        except Exception as exc:  # noqa: BLE001 - an owned task logs its failure, then stops
            self._log.exception("paper_stream_task_failed")
            self._give_up(FatalAdapterError(f"the paper stream failed: {exc}"))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        """Deliver frames until the stream ends; return why it ended."""
        async for msg in ws:
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                try:
                    frame = parse_frame(msg.data)
                except StreamProtocolError as exc:
                    # Dropping the stream makes the Broker reconcile instead of missing events.
                    self._log.error("paper_stream_bad_frame", error=str(exc))
                    return str(exc)
                await self._on_frame(frame)
            elif msg.type is aiohttp.WSMsgType.ERROR:
                return f"stream error: {ws.exception()}"
        return f"stream closed by the venue (code {ws.close_code})"

    async def _on_frame(self, frame: StreamFrame) -> None:
        if isinstance(frame, EventsFrame):
            # Waits while the Broker lags: TCP then pushes back on the venue.
            await self._queue.put(frame.events)
            # The venue writes an order's events just before its answer, often in one
            # segment: let the consumer pass them on before this task reads the answer.
            await asyncio.sleep(0)
        elif isinstance(frame, AckFrame):
            self._resolve(frame.id, None)
        elif isinstance(frame, OrderFrame):
            self._resolve(frame.id, None, frame)
        elif isinstance(frame, ErrorFrame):
            error = OrderRejectedError(frame.error.code, frame.error.message)
            if not self._resolve(frame.id, error):
                self._log.warning(
                    "paper_stream_request_refused",
                    code=frame.error.code,
                    message=frame.error.message,
                )

    async def _reopen_stream(self) -> tuple[aiohttp.ClientWebSocketResponse, Hello]:
        for attempt in itertools.count():
            await asyncio.sleep(self._reconnect.delay(attempt, self._rng))
            self._relocate()
            try:
                return await self._open_stream()
            except RetryableAdapterError as exc:
                self._log.info("paper_stream_reconnect_failed", attempt=attempt + 1, error=str(exc))
        raise AssertionError("unreachable")

    def _relocate(self) -> None:
        """Follow the exchange to where it now says it is: restarted on an OS-chosen port, it
        announces a new URL (`read_paper_url`), and the old one would be tried forever."""
        found = self._locate() if self._locate is not None else None
        if found and found.rstrip("/") != self.url:
            self._log.info("paper_url_changed", old=self.url, url=found)
            self.url = found.rstrip("/")

    async def _restore_subscriptions(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        # Not awaiting the acks: this task is the one that reads them. Refusals are logged.
        # A stream that drops again meanwhile is noticed by the next read.
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            async with self._send_lock:
                for key in list(self._subs):
                    await ws.send_bytes(encode(key.request("subscribe", None)))

    async def _stream_request(self, key: StreamKey, op: str) -> None:
        await self._ask(key.request(op, None), op)

    async def _ask(self, request: dict[str, Any], what: str) -> Any:
        """Send one request on the stream with a fresh `id` and wait for the answer with that
        id: an `order` frame's content, None for an `ack`; an `error` frame raises
        `OrderRejectedError`. A dropped stream raises `_StreamLost`, a late answer
        `RetryableAdapterError`."""
        ws = self._ws
        if ws is None or ws.closed:
            raise _StreamLost("the stream is down")
        request_id = next(self._ids)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = answer
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._send_lock:
                    await ws.send_bytes(encode({**request, "id": request_id}))
                return await answer
        except TimeoutError as exc:
            raise RetryableAdapterError(f"{what}: no answer within {self._timeout_s}s") from exc
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise _StreamLost(f"{what}: {exc}") from exc
        finally:
            self._pending.pop(request_id, None)

    def _resolve(self, request_id: int | None, error: AdapterError | None,
                 result: Any = None) -> bool:
        answer = self._pending.pop(request_id, None) if request_id is not None else None
        if answer is None or answer.done():
            return False
        if error is None:
            answer.set_result(result)
        else:
            answer.set_exception(error)
        return True

    def _fail_pending(self, error: AdapterError) -> None:
        pending, self._pending = self._pending, {}
        for answer in pending.values():
            if not answer.done():
                answer.set_exception(error)

    def _give_up(self, error: FatalAdapterError) -> None:
        self._fatal = error
        self._ws = None
        self._fail_pending(error)
        self._log.error("paper_stream_gave_up", error=str(error))
        self._push(ConnectionChanged(False, f"gave up: {error}", time.time_ns()))

    def _push(self, event: AdapterEvent) -> None:
        self._queue.push(event)
