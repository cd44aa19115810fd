"""The Broker's end of a Market link (`protocol.link`): one WebSocket per Market worker.

`MarketLink` owns the outbound side of one connection. Everything for the Market — session
events, replays, resync notices, market data — is queued without waiting and written by one
writer task, so a slow Market never stalls the venue event loop or the other links. Consecutive
market events waiting in the queue leave in one `market` frame (`coalesce`), each event encoded
once by the caller and spliced as is into every link's frames. A session frame (an order
answer, an order event) finding the queue empty, the writer idle and the socket keeping up is
written to the transport at once instead (`tradefleet.service.wsframes`): it does not wait for
the writer's turn. Market events always go through the queue, where they coalesce.

A link whose queue passes `max_backlog` is closed (1013, try again later): the Market
reconnects and resubscribes, which is cheaper than holding an unbounded backlog.

`read_frames` is the inbound side: it parses each frame into its `protocol.link` message and
hands it to a `LinkHandler`, one at a time and in order (an algo's cancel must never overtake
its order).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

import structlog
from aiohttp import WSMsgType, web
from pydantic import ValidationError

from protocol.codec import CodecError, decode, encode
from protocol.link import MARKET_TO_BROKER, LinkHello, MdSubscribe, MdUnsubscribe, Replay, Route
from protocol.link import Resync as ResyncMessage
from tradefleet.service.wsframes import BINARY, direct_transport, server_frame

log = structlog.get_logger(__name__)

MARKET_PREFIX = b'{"type":"market","events":['
MARKET_SUFFIX = b"]}"
DEFAULT_MAX_BACKLOG = 100_000
DEFAULT_MAX_FRAME = 1 << 20
HELLO_TIMEOUT_S = 10.0
MAX_INBOUND_FRAME = 1 << 20
CLOSE_SLOW_CONSUMER = 1013

_ids = itertools.count(1)


def coalesce(items: Iterable[tuple[bool, bytes]], max_frame: int = DEFAULT_MAX_FRAME
             ) -> list[bytes]:
    """Turn queued items into frames, in order. An item is `(is_market_event, data)`: market
    events next to each other share a `market` frame of at most about `max_frame` bytes;
    every other item is a complete frame of its own."""
    frames: list[bytes] = []
    batch: list[bytes] = []
    size = 0

    def flush() -> None:
        nonlocal size
        if batch:
            frames.append(MARKET_PREFIX + b",".join(batch) + MARKET_SUFFIX)
            batch.clear()
            size = 0

    for is_market, data in items:
        if not is_market:
            flush()
            frames.append(data)
            continue
        if batch and size + len(data) > max_frame:
            flush()
        batch.append(data)
        size += len(data) + 1
    flush()
    return frames


class MarketLink:
    """The outbound queue and writer of one Market worker's link."""

    def __init__(self, ws: web.WebSocketResponse, market_id: str, *,
                 max_backlog: int = DEFAULT_MAX_BACKLOG, max_frame: int = DEFAULT_MAX_FRAME,
                 transport: asyncio.BaseTransport | None = None) -> None:
        """`transport` is the connection's (`request.transport`); without it every frame goes
        through the writer task."""
        self.id = next(_ids)
        self.market_id = market_id
        self.sessions: set[str] = set()
        self._ws = ws
        self._queue: deque[tuple[bool, bytes]] = deque()
        self._wakeup = asyncio.Event()
        self._max_backlog = max_backlog
        self._max_frame = max_frame
        self._close: tuple[int, str] | None = None
        self._transport = transport
        self._writing = False  # the writer task has frames in hand

    @property
    def closed(self) -> bool:
        return self._close is not None or self._ws.closed

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def send(self, frame: bytes) -> None:
        """Queue one complete frame."""
        self._put((False, frame))

    def send_market(self, event: bytes) -> None:
        """Queue one encoded market event (it leaves inside a `market` frame)."""
        self._put((True, event))

    def resync(self, reason: str) -> None:
        self.send(encode(ResyncMessage(reason=reason)))

    def close_soon(self, code: int, reason: str) -> None:
        """Ask the writer to send what is queued, then close with `code`."""
        if self._close is None:
            self._close = (code, reason)
            self._wakeup.set()

    def _put(self, item: tuple[bool, bytes]) -> None:
        if self._close is not None:
            return
        is_market, data = item
        if not is_market and not self._queue and not self._writing:
            transport = direct_transport(self._ws, self._transport)
            if transport is not None:
                transport.write(server_frame(data, BINARY))
                return
        self._queue.append(item)
        if len(self._queue) > self._max_backlog:
            log.warning("link_backlog_overflow", market_id=self.market_id,
                        backlog=len(self._queue))
            self._queue.clear()
            self._close = (CLOSE_SLOW_CONSUMER, "slow consumer: backlog overflow")
        self._wakeup.set()

    async def run_writer(self) -> None:
        """Write queued frames until the link closes. Run as the link's one writer task."""
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue:
                    items = list(self._queue)
                    self._queue.clear()
                    self._writing = True
                    try:
                        for frame in coalesce(items, self._max_frame):
                            await self._ws.send_bytes(frame)
                    finally:
                        self._writing = False
                if self._close is not None:
                    code, reason = self._close
                    await self._ws.close(code=code, message=reason.encode()[:120])
                    return
                if self._ws.closed:
                    return
        except (ConnectionResetError, RuntimeError) as exc:
            # The peer went away mid-write; the reader sees the close and cleans up.
            log.info("link_write_failed", market_id=self.market_id, error=str(exc))


class LinkHandler(Protocol):
    """What the Broker does with each message a Market sends."""

    async def on_route(self, link: MarketLink, message: Route) -> None: ...
    async def on_subscribe(self, link: MarketLink, message: MdSubscribe) -> None: ...
    async def on_unsubscribe(self, link: MarketLink, message: MdUnsubscribe) -> None: ...
    def on_replay(self, link: MarketLink, message: Replay) -> None: ...


async def read_hello(ws: web.WebSocketResponse) -> LinkHello | None:
    """The link's first frame, or None when it is missing, late or not a `link_hello`."""
    try:
        first = await ws.receive(timeout=HELLO_TIMEOUT_S)
        if first.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return None
        message = MARKET_TO_BROKER.validate_python(decode(first.data))
    except (TimeoutError, CodecError, ValidationError, TypeError):
        return None
    return message if isinstance(message, LinkHello) else None


async def read_frames(ws: web.WebSocketResponse, link: MarketLink, handler: LinkHandler
                      ) -> None:
    """Hand every frame of the link to `handler`, in order, until the link closes.

    A frame that is not a valid `protocol.link` message is a Market bug: it is logged and
    dropped, and the link stays up.
    """
    async for frame in ws:
        if frame.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            break
        try:
            message: Any = MARKET_TO_BROKER.validate_python(decode(frame.data))
        except (CodecError, ValidationError) as exc:
            log.warning("link_frame_dropped", market_id=link.market_id, error=str(exc)[:200])
            continue
        if isinstance(message, Route):
            await handler.on_route(link, message)
        elif isinstance(message, MdSubscribe):
            await handler.on_subscribe(link, message)
        elif isinstance(message, MdUnsubscribe):
            await handler.on_unsubscribe(link, message)
        elif isinstance(message, Replay):
            handler.on_replay(link, message)
        # a repeated link_hello changes nothing


async def stop_writer(task: asyncio.Task[None], timeout: float = 2.0) -> None:
    """Give the writer `timeout` to flush, then cancel it."""
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
