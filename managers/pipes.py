"""Manager→worker control pipes. The manager opened the pipe, so the manager re-opens it.

One `ControlPipe` per worker: connect, send `hello`, expect `welcome`, then exchange heartbeats
and status; commands queued with `send` go down as soon as the pipe is up. A pipe that hears
nothing for three heartbeat intervals is considered dead and re-opened with backoff + jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog
from pydantic import ValidationError

from protocol.codec import CodecError, decode, encode
from protocol.control import (
    PIPE_MESSAGE,
    Command,
    CommandAction,
    CommandResult,
    Heartbeat,
    Hello,
    PipeError,
    StatusReport,
    Welcome,
    WorkerEvent,
)

log = structlog.get_logger(__name__)


class PipeCallbacks:
    """What the pipe reports to its owner (the manager shell)."""

    def __init__(self, on_up: Callable[[str, Welcome], None], on_lost: Callable[[str], None],
                 on_status: Callable[[str, StatusReport], None],
                 on_heartbeat: Callable[[str], None],
                 on_refused: Callable[[str, PipeError], None],
                 on_result: Callable[[str, CommandResult], None],
                 on_event: Callable[[str, WorkerEvent], None] | None = None) -> None:
        self.on_up, self.on_lost, self.on_status = on_up, on_lost, on_status
        self.on_heartbeat, self.on_refused = on_heartbeat, on_refused
        self.on_result = on_result
        self.on_event = on_event


class ControlPipe:
    def __init__(self, worker_id: str, url: str, token: str, hello: Hello,
                 heartbeat_s: float, session: aiohttp.ClientSession,
                 callbacks: PipeCallbacks) -> None:
        self.worker_id = worker_id
        self._url = url.rstrip("/") + "/v1/control"
        self._token = token
        self._hello = hello
        self._heartbeat_s = heartbeat_s
        self._session = session
        self._cb = callbacks
        self._outbox: asyncio.Queue[Command] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._counter = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"pipe-{self.worker_id}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5)

    def send(self, action: CommandAction, params: dict[str, Any] | None = None) -> str:
        """Queue a command; returns its id (echoed in the worker's `CommandResult`)."""
        self._counter += 1
        command_id = f"{self.worker_id}-{int(time.time() * 1000)}-{self._counter}"
        self._outbox.put_nowait(Command(command_id=command_id, action=action,
                                        params=params or {}))
        return command_id

    async def _run(self) -> None:
        delay = 0.05
        while True:
            connected = False
            try:
                connected = await self._session_once()
            except (aiohttp.ClientError, OSError, TimeoutError, CodecError,
                    ValidationError) as exc:
                log.debug("pipe attempt failed", worker_id=self.worker_id, error=repr(exc))
            if connected:
                self._cb.on_lost(self.worker_id)
                delay = 0.05
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    async def _session_once(self) -> bool:
        headers = {"Authorization": f"Bearer {self._token}"}
        async with self._session.ws_connect(self._url, headers=headers, heartbeat=None,
                                            timeout=aiohttp.ClientWSTimeout(ws_close=2),
                                            max_msg_size=1 << 20) as ws:
            await ws.send_bytes(encode(self._hello))
            first = await ws.receive(timeout=5)
            if first.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                return False
            msg = PIPE_MESSAGE.validate_python(decode(first.data))
            if isinstance(msg, PipeError):
                self._cb.on_refused(self.worker_id, msg)
                return False
            if not isinstance(msg, Welcome):
                return False
            self._cb.on_up(self.worker_id, msg)
            sender = asyncio.create_task(self._send_loop(ws), name=f"pipe-send-{self.worker_id}")
            try:
                while True:
                    frame = await ws.receive(timeout=3 * self._heartbeat_s)
                    if frame.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        break
                    self._dispatch(frame.data)
            except TimeoutError:
                log.warning("pipe silent, reconnecting", worker_id=self.worker_id)
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
            return True

    def _dispatch(self, data: Any) -> None:
        try:
            msg = PIPE_MESSAGE.validate_python(decode(data))
        except (CodecError, ValidationError) as exc:
            log.warning("bad frame from worker", worker_id=self.worker_id, error=str(exc)[:200])
            return
        if isinstance(msg, StatusReport):
            self._cb.on_status(self.worker_id, msg)
        elif isinstance(msg, Heartbeat):
            self._cb.on_heartbeat(self.worker_id)
        elif isinstance(msg, CommandResult):
            if not msg.ok:
                log.warning("command failed", worker_id=self.worker_id, error=msg.error)
            self._cb.on_result(self.worker_id, msg)
        elif isinstance(msg, WorkerEvent) and self._cb.on_event is not None:
            self._cb.on_event(self.worker_id, msg)

    async def _send_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        next_beat = 0.0
        while not ws.closed:
            timeout = max(0.0, next_beat - time.monotonic())
            try:
                command = await asyncio.wait_for(self._outbox.get(), timeout)
                await ws.send_bytes(encode(command))
            except TimeoutError:
                await ws.send_bytes(encode(Heartbeat(ts=time.time())))
                next_beat = time.monotonic() + self._heartbeat_s
