"""One Kraken WebSocket v2 connection: open, request/response by ``req_id``, read, keepalive.

The socket owns no protocol state beyond the requests waiting for their answers. Its
:meth:`KrakenSocket.run` loop reads frames, parses them with ``schemas.parse_frame``,
hands answers to waiting requests and everything else to the caller's handler, sends a
``ping`` every ``ping_interval_s`` (Kraken closes idle connections after about a minute)
or when the connection has been quiet for half of ``stale_after_s``, and gives up on a
connection that delivered nothing -- not even a pong -- for ``stale_after_s`` (Kraken
sends a heartbeat every second). It returns why the connection ended; it never
reconnects -- that is the adapter's job.

aiohttp errors become :class:`SocketClosed` (retryable) here, at the boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from workers.broker.adapters.base import FatalAdapterError, RetryableAdapterError
from workers.broker.adapters.kraken import commands
from workers.broker.adapters.kraken.errors import MalformedMessage
from workers.broker.adapters.kraken.schemas import (
    MethodResponse,
    SpotFrame,
    StatusMessage,
    decode,
    parse_frame,
)
from workers.broker.adapters.kraken.wire import encode_frame

MAX_FRAME_BYTES = 32 * 1024 * 1024  # the instrument snapshot alone is ~0.4 MB
_CLOSE_TIMEOUT_S = 2.0

FrameHandler = Callable[[SpotFrame], Awaitable[None]]


class SocketClosed(RetryableAdapterError):
    """The connection ended (or never opened); open a new one and try again."""


class KrakenSocket:
    """A connected v2 WebSocket. Create with :meth:`open`; run :meth:`run` in one task."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        *,
        name: str,
        request_timeout_s: float,
        log: Any,
    ) -> None:
        self.name = name
        self._ws = ws
        self._timeout_s = request_timeout_s
        self._log = log
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[int, list[MethodResponse], asyncio.Future[None]]] = {}
        self._send_lock = asyncio.Lock()
        self.system_status: str | None = None
        self.frames_received = 0
        self.pings_sent = 0

    @classmethod
    async def open(
        cls,
        session: aiohttp.ClientSession,
        url: str,
        *,
        name: str,
        timeout_s: float,
        request_timeout_s: float,
        log: Any = None,
    ) -> KrakenSocket:
        """Connect to ``url``. Raises :class:`SocketClosed` on any failure to connect and
        :class:`FatalAdapterError` when the server refuses the upgrade with 401/403."""
        try:
            async with asyncio.timeout(timeout_s):
                ws = await session.ws_connect(
                    url,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=_CLOSE_TIMEOUT_S),
                    max_msg_size=MAX_FRAME_BYTES,
                    autoping=True,
                )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise FatalAdapterError(
                    f"{name}: {url} refused the connection ({exc.status})"
                ) from exc
            raise SocketClosed(f"{name}: handshake failed with HTTP {exc.status}") from exc
        except TimeoutError as exc:
            raise SocketClosed(f"{name}: no connection to {url} within {timeout_s}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise SocketClosed(f"{name}: cannot connect to {url}: {exc}") from exc
        return cls(ws, name=name, request_timeout_s=request_timeout_s, log=log)

    @property
    def closed(self) -> bool:
        """True once the connection is closed or closing."""
        return self._ws.closed

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code, once closed."""
        return self._ws.close_code

    # ------------------------------------------------------------ sending

    async def send(self, frame: dict[str, Any]) -> int:
        """Send one request (a ``req_id`` is added); returns the ``req_id``.
        Raises :class:`SocketClosed` if the connection is gone."""
        req_id = next(self._ids)
        await self._send_text(encode_frame({**frame, "req_id": req_id}), frame.get("method"))
        return req_id

    async def request(
        self, frame: dict[str, Any], *, responses: int = 1, timeout_s: float | None = None
    ) -> list[MethodResponse]:
        """Send a request and wait for its ``responses`` answers (``cancel_order`` answers
        once per order). Raises :class:`SocketClosed` when the connection ends first and
        ``TimeoutError`` when the answers do not come in time (the request may have been
        executed)."""
        req_id = next(self._ids)
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        collected: list[MethodResponse] = []
        self._waiting[req_id] = (responses, collected, answer)
        try:
            await self._send_text(encode_frame({**frame, "req_id": req_id}), frame.get("method"))
            await asyncio.wait_for(answer, timeout_s or self._timeout_s)
        finally:
            self._waiting.pop(req_id, None)
        return collected

    async def _send_text(self, text: str, method: object) -> None:
        try:
            async with self._send_lock:
                await self._ws.send_str(text)
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            raise SocketClosed(f"{self.name}: cannot send {method}: {exc}") from exc

    # ------------------------------------------------------------ reading

    async def run(
        self,
        on_frame: FrameHandler,
        *,
        ping_interval_s: float,
        stale_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> str:
        """Read until the connection ends; return why. Answers go to waiting requests,
        every other frame (and answers nobody waits for) to ``on_frame``.

        A ping goes out every ``ping_interval_s``, and also once half of ``stale_after_s``
        passed without a frame: a quiet but healthy connection answers with a pong, a dead
        one does not and is given up when ``stale_after_s`` is over."""
        last_frame = clock()
        next_ping = last_frame + ping_interval_s
        probed = False  # a ping went out since the last frame arrived
        try:
            while True:
                now = clock()
                probe_due = not probed and now >= last_frame + stale_after_s / 2
                if now >= next_ping or probe_due:
                    next_ping = now + ping_interval_s
                    probed = True
                    await self.send(commands.ping())
                    self.pings_sent += 1
                deadline = min(next_ping, last_frame + stale_after_s)
                if not probed:
                    deadline = min(deadline, last_frame + stale_after_s / 2)
                try:
                    message = await self._ws.receive(timeout=max(deadline - now, 0.0))
                except TimeoutError:
                    if clock() - last_frame >= stale_after_s:
                        return f"{self.name}: nothing received for {stale_after_s}s"
                    continue
                if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    last_frame = clock()
                    probed = False
                    self.frames_received += 1
                    await self._deliver(message.data, on_frame)
                elif message.type is aiohttp.WSMsgType.ERROR:
                    return f"{self.name}: connection error: {self._ws.exception()}"
                elif message.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                ):
                    return f"{self.name}: closed by Kraken (code {self._ws.close_code})"
        except SocketClosed as exc:
            return str(exc)
        except (ConnectionError, aiohttp.ClientError) as exc:
            return f"{self.name}: connection error: {exc}"
        finally:
            self._fail_waiting(SocketClosed(f"{self.name}: the connection ended"))

    async def _deliver(self, data: str | bytes, on_frame: FrameHandler) -> None:
        try:
            frame = parse_frame(decode(data))
        except MalformedMessage as exc:
            if self._log is not None:
                self._log.warning("kraken_frame_dropped", socket=self.name, error=str(exc))
            return
        if isinstance(frame, StatusMessage):
            for item in frame.data:
                system = item.get("system") if isinstance(item, dict) else None
                if isinstance(system, str):
                    self.system_status = system
        if isinstance(frame, MethodResponse) and frame.req_id is not None:
            waiting = self._waiting.get(frame.req_id)
            if waiting is not None:
                expected, collected, answer = waiting
                collected.append(frame)
                if len(collected) >= expected and not answer.done():
                    answer.set_result(None)
                return
        await on_frame(frame)

    def _fail_waiting(self, error: Exception) -> None:
        for _, _, answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(error)
                answer.exception()  # mark retrieved; the requester re-raises it

    async def close(self) -> None:
        """Close the connection (idempotent, bounded in time)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ws.close(), _CLOSE_TIMEOUT_S)
        self._fail_waiting(SocketClosed(f"{self.name}: closed"))
