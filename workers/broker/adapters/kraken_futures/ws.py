"""The async shell around `FeedCore`: open the WebSocket, read, write, reconnect.

`FeedRunner.start` opens the first connection and completes the private handshake (so that
no fill can be missed once `connect()` returns). Its owned task then reads frames into the
core and, when the connection drops, says so (`ConnectionChanged(False)`), waits as the
`ReconnectPolicy` says and opens a new one. Events produced while a re-opened connection is
still in its handshake are held back so that `ConnectionChanged(True)` comes first, then the
fresh snapshots. A refused private handshake is fatal: the task reports it and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from workers.broker.adapters.backoff import ReconnectPolicy
from workers.broker.adapters.base import (
    AdapterEvent,
    ConnectionChanged,
    FatalAdapterError,
    RetryableAdapterError,
)
from workers.broker.adapters.kraken_futures.errors import MalformedMessage
from workers.broker.adapters.kraken_futures.feed import FeedCore, FeedOutput, Frame
from workers.broker.adapters.kraken_futures.marketdata import FeedKey
from workers.broker.adapters.kraken_futures.schemas import decode

Deliver = Callable[[list[AdapterEvent]], Awaitable[None]]

MAX_INCOMING_FRAME = 16 * 1024 * 1024  # a full-depth book snapshot is a few hundred kB
_STOP_TIMEOUT_S = 5.0


class FeedRunner:
    """Owns the WebSocket connection(s) of one adapter and the task that reads them."""

    def __init__(
        self,
        core: FeedCore,
        *,
        session: aiohttp.ClientSession,
        url: str,
        heartbeat_s: float,
        timeout_s: float,
        policy: ReconnectPolicy,
        rng: random.Random,
        deliver: Deliver,
        clock: Callable[[], int],
        logger: Any,
    ) -> None:
        self._core = core
        self._session = session
        self._url = url
        self._heartbeat_s = heartbeat_s
        self._timeout_s = timeout_s
        self._policy = policy
        self._rng = rng
        self._deliver = deliver
        self._clock = clock
        self._log = logger
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self.fatal: FatalAdapterError | None = None
        self.connections = 0  # successful opens, for tests and metrics
        self._acks: dict[FeedKey, asyncio.Future[None]] = {}

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed and self._core.ready

    async def start(self) -> None:
        """Open the first connection. Raises `RetryableAdapterError` or `FatalAdapterError`."""
        ws, held = await self._open()
        await self._deliver(held)
        self._task = asyncio.create_task(self._run(ws), name="kraken-futures-feed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=_STOP_TIMEOUT_S)
            if not done:
                self._log.warning("kraken_futures_feed_did_not_stop", timeout_s=_STOP_TIMEOUT_S)
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), _STOP_TIMEOUT_S)
        self._resolve_acks()

    async def subscribe(self, key: FeedKey, frames: list[Frame]) -> None:
        """Send a subscription's frames and wait for the venue's ``subscribed`` ack. Returns
        at once when the feed is down (the subscription starts with the next connection) or
        drops meanwhile. Raises `RetryableAdapterError` when no ack comes in time."""
        if not frames or not self.connected:
            await self.send(frames)
            return
        ack = self._acks.get(key)
        if ack is None or ack.done():
            ack = self._acks[key] = asyncio.get_running_loop().create_future()
        await self.send(frames)
        try:
            await asyncio.wait_for(asyncio.shield(ack), self._timeout_s)
        except TimeoutError as exc:
            self._acks.pop(key, None)
            raise RetryableAdapterError(
                f"Kraken Futures did not confirm the {key.feed} subscription of "
                f"{key.product_id} within {self._timeout_s:g} s"
            ) from exc

    def _resolve_acks(self, keys: list[FeedKey] | None = None) -> None:
        """Resolve the waits for `keys`, or all of them (the connection is gone: the
        subscriptions are restored with the next one)."""
        for key in list(self._acks) if keys is None else keys:
            ack = self._acks.pop(key, None)
            if ack is not None and not ack.done():
                ack.set_result(None)

    async def send(self, frames: list[Frame]) -> None:
        """Write frames on the current connection. Without one they are dropped: the core
        re-sends every subscription when the next connection opens."""
        ws = self._ws
        if not frames or ws is None or ws.closed:
            return
        try:
            async with self._send_lock:
                for frame in frames:
                    await ws.send_str(json.dumps(frame))
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            # The read loop sees the same failure and reconnects.
            self._log.info("kraken_futures_send_failed", error=str(exc))

    # ------------------------------------------------------------ connection

    async def _open(self) -> tuple[aiohttp.ClientWebSocketResponse, list[AdapterEvent]]:
        """Connect and complete the private handshake; the events it produced are returned
        (held back) for the caller to deliver."""
        try:
            async with asyncio.timeout(self._timeout_s):
                ws = await self._session.ws_connect(
                    self._url, heartbeat=self._heartbeat_s, max_msg_size=MAX_INCOMING_FRAME
                )
        except aiohttp.WSServerHandshakeError as exc:
            raise RetryableAdapterError(
                f"Kraken Futures refused the WebSocket (HTTP {exc.status})"
            ) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise RetryableAdapterError(f"cannot reach the Kraken Futures feed: {exc}") from exc
        self._ws = ws  # subscriptions made during the handshake go out on it
        held: list[AdapterEvent] = []
        try:
            await self.send(self._core.opened())
            async with asyncio.timeout(self._timeout_s):
                while not self._core.ready:
                    msg = await ws.receive()
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        raise RetryableAdapterError(
                            f"the Kraken Futures feed closed during the handshake ({msg.type.name})"
                        )
                    held += await self._handle(msg.data)
        except TimeoutError as exc:
            await self._abandon(ws)
            raise RetryableAdapterError(
                f"the Kraken Futures private feeds were not subscribed within {self._timeout_s:g} s"
            ) from exc
        except BaseException:
            await self._abandon(ws)
            raise
        self.connections += 1
        return ws, held

    async def _abandon(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = None
        self._core.closed()
        self._resolve_acks()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), _STOP_TIMEOUT_S)

    async def _handle(self, data: str) -> list[AdapterEvent]:
        """One text frame through the core; returns its events. Raises on a fatal outcome."""
        try:
            raw = decode(data)
        except MalformedMessage as exc:
            self._log.warning("kraken_futures_bad_frame", error=str(exc))
            return []
        out: FeedOutput = self._core.receive(raw)
        for event_name, fields in out.notes:
            self._log.warning(event_name, **fields)
        if out.fatal is not None:
            raise FatalAdapterError(out.fatal)
        await self.send(out.send)
        if out.acked:
            self._resolve_acks(out.acked)
        return out.events

    # ------------------------------------------------------------ the owned task

    async def _run(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            while True:
                reason = await self._read(ws)
                await self._abandon(ws)
                self._log.warning("kraken_futures_feed_lost", reason=reason)
                await self._deliver([ConnectionChanged(False, reason, self._clock())])
                ws, held = await self._reopen()
                self._log.info("kraken_futures_feed_restored", streams=len(self._core.streams))
                await self._deliver(
                    [ConnectionChanged(True, "feed re-established", self._clock()), *held]
                )
        except asyncio.CancelledError:
            raise
        except FatalAdapterError as exc:
            await self._give_up(exc)
        except Exception as exc:  # noqa: BLE001 - an owned task logs its failure, then stops
            self._log.exception("kraken_futures_feed_task_failed")
            await self._give_up(FatalAdapterError(f"the Kraken Futures feed failed: {exc}"))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        """Handle frames until the connection ends; return why it ended."""
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                events = await self._handle(msg.data)
                if events:
                    await self._deliver(events)
            elif msg.type is aiohttp.WSMsgType.ERROR:
                return f"feed error: {ws.exception()}"
        return f"feed closed by the venue (code {ws.close_code})"

    async def _reopen(self) -> tuple[aiohttp.ClientWebSocketResponse, list[AdapterEvent]]:
        for attempt in itertools.count():
            await asyncio.sleep(self._policy.delay(attempt, self._rng))
            try:
                return await self._open()
            except RetryableAdapterError as exc:
                self._log.info(
                    "kraken_futures_reconnect_failed", attempt=attempt + 1, error=str(exc)
                )
        raise AssertionError("unreachable")

    async def _give_up(self, error: FatalAdapterError) -> None:
        self.fatal = error
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), _STOP_TIMEOUT_S)
        self._core.closed()
        self._resolve_acks()
        self._log.error("kraken_futures_feed_gave_up", error=str(error))
        await self._deliver([ConnectionChanged(False, f"gave up: {error}", self._clock())])
