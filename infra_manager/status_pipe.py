"""Status pipes: the WebSocket the infra manager opens to each manager's `/v1/stream`.

The infra manager created the pipe, so it re-establishes it when it drops (DESIGN.md §2 rule 4),
with capped exponential backoff and jitter. The read loop only reads and hands frames over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from infra_manager.fleet_state import ManagerLink
from infra_manager.tasks import TaskSet
from tradefleet.client.backoff import ReconnectPolicy

log = structlog.get_logger(__name__)

MAX_FRAME_BYTES = 4 << 20
INFRA_ID_HEADER = "X-Tradefleet-Infra-Id"

FrameSink = Callable[[ManagerLink, "bytes | str"], Any]


class StatusPipe:
    """One manager's status pipe, kept open for as long as `run()` runs."""

    def __init__(self, link: ManagerLink, session: aiohttp.ClientSession, infra_id: str,
                 join_token: str, sink: FrameSink, stale_after_s: float,
                 policy: ReconnectPolicy, on_connect: Callable[[], None] | None = None) -> None:
        self.link = link
        self._session = session
        self._infra_id = infra_id
        self._join_token = join_token
        self._sink = sink
        self._stale_after_s = stale_after_s
        self._policy = policy
        self._on_connect = on_connect
        self._wake = asyncio.Event()
        self.connected = False

    @property
    def stream_url(self) -> str:
        return self.link.url.rstrip("/") + "/v1/stream"

    def wake(self) -> None:
        """Skip the current backoff wait: the manager just said it is there (a check-in)."""
        self._wake.set()

    async def run(self) -> None:
        """Connect, read, and reconnect after every drop, until cancelled."""
        bound = log.bind(manager_id=self.link.manager_id, url=self.stream_url)
        while True:
            try:
                await self._connect_and_read(bound)
                reason = "closed by manager"
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                reason = _describe(exc)
            except Exception as exc:  # noqa: BLE001 - a bug must not end the pipe for good
                bound.exception("status pipe crashed")
                reason = _describe(exc)
            finally:
                self.connected = False
            delay = self._policy.next_delay()
            bound.info("status pipe down", reason=reason, retry_in_s=round(delay, 3))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    async def _connect_and_read(self, bound: Any) -> None:
        # The infra id lets the manager tell whose status pipe is open, so it re-checks in
        # with exactly the infra managers that lost theirs.
        headers = {"Authorization": f"Bearer {self._join_token}",
                   INFRA_ID_HEADER: self._infra_id}
        async with self._session.ws_connect(self.stream_url, headers=headers,
                                            max_msg_size=MAX_FRAME_BYTES,
                                            autoping=True) as ws:
            self.connected = True
            if self._on_connect is not None:
                self._on_connect()
            bound.info("status pipe open")
            healthy = False
            while True:
                # A manager sends at least one frame per heartbeat; a pipe quiet for longer than
                # the silence timeout is half-open or stuck, so it is dropped and re-opened.
                msg = await ws.receive(timeout=self._stale_after_s)
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    self._sink(self.link, msg.data)
                    if not healthy:
                        healthy = True
                        self._policy.reset()
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    raise aiohttp.ClientError(f"websocket error: {ws.exception()!r}")
                else:  # CLOSE, CLOSING, CLOSED
                    return


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"handshake refused: HTTP {exc.status}"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class _Running:
    pipe: StatusPipe
    task: asyncio.Task[Any]


class StatusPipes:
    """One status pipe per checked-in manager; a new generation's link replaces the old pipe."""

    def __init__(self, session: aiohttp.ClientSession, infra_id: str, join_token: str,
                 sink: FrameSink, stale_after_s: float,
                 on_connect: Callable[[], None] | None = None,
                 policy_factory: Callable[[], ReconnectPolicy] = ReconnectPolicy) -> None:
        self._session = session
        self._infra_id = infra_id
        self._join_token = join_token
        self._sink = sink
        self._stale_after_s = stale_after_s
        self._on_connect = on_connect
        self._policy_factory = policy_factory
        self._tasks = TaskSet("status-pipe")
        self._running: dict[str, _Running] = {}

    def ensure(self, link: ManagerLink) -> None:
        """Make sure a pipe to `link` runs; replace one to an older link of the same manager."""
        current = self._running.get(link.manager_id)
        if current is not None and current.pipe.link == link and not current.task.done():
            current.pipe.wake()
            return
        if current is not None:
            current.task.cancel()  # still owned by the task set until it has finished
        pipe = StatusPipe(link, self._session, self._infra_id, self._join_token, self._sink,
                          self._stale_after_s, self._policy_factory(), self._on_connect)
        task = self._tasks.start(f"{link.manager_id}@{link.epoch}", pipe.run())
        self._running[link.manager_id] = _Running(pipe, task)

    def is_connected(self, manager_id: str) -> bool:
        running = self._running.get(manager_id)
        return running is not None and running.pipe.connected

    async def close(self, timeout: float = 5.0) -> None:
        self._running.clear()
        await self._tasks.close(timeout)
