"""The worker process shell: serve HTTP, check in, accept the manager's control pipe, obey it.

The socket loops only read, hand frames to `WorkerControl`, and write what it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

import structlog
from aiohttp import WSMsgType, web
from prometheus_client import CollectorRegistry, Counter, Gauge
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
    WorkerCheckin,
)
from protocol.errors import ErrorCode
from tradefleet import __version__
from tradefleet.service import metrics as metrics_http
from tradefleet.service.web import ApiError, json_response, listen, make_app, require_token
from workers.runtime.checkin import CheckinRefused, check_in
from workers.runtime.control_core import Effect, WorkerControl
from workers.runtime.service import WorkerContext, WorkerService

log = structlog.get_logger(__name__)

TICK_S = 0.2


class WorkerRuntime:
    """Runs one worker: owns its HTTP server, its control core, and its kind's service."""

    def __init__(self, ctx: WorkerContext, service: WorkerService, spawn_token: str) -> None:
        self.ctx = ctx
        self.service = service
        self._spawn_token = spawn_token
        self._control_token: str | None = None
        timeouts = ctx.config.timeouts
        self.core = WorkerControl(
            worker_id=ctx.worker_id, epoch=ctx.epoch,
            orphan_pause_s=timeouts.orphan_pause_s, orphan_exit_s=timeouts.orphan_exit_s,
            drain_timeout_s=timeouts.drain_timeout_s, started_at=time.monotonic())
        self.started_wall = time.time()
        self.url = ""
        self._stop = asyncio.Event()
        self._pipe: web.WebSocketResponse | None = None
        self._last_config: dict[str, Any] | None = None
        self._registry = CollectorRegistry()
        self._m_pipes = Counter("tradefleet_worker_pipes_opened", "Control pipes accepted",
                                registry=self._registry)
        self._m_refused = Counter("tradefleet_worker_pipes_refused", "Control pipes refused",
                                  ["reason"], registry=self._registry)
        self._m_accepting = Gauge("tradefleet_worker_accepting", "1 when taking new work",
                                  registry=self._registry)
        self._m_events_dropped = Gauge(
            "tradefleet_worker_events_dropped", "Operator events dropped (buffer full while "
            "the control pipe was down)", registry=self._registry)
        self._m_events_dropped.set_function(lambda: self.service.events.dropped_total)
        self._events_ready = asyncio.Event()
        service.events.on_put = self._events_ready.set

    # ------------------------------------------------------------------ HTTP

    def build_app(self) -> web.Application:
        app = make_app()
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/v1/status", self._status)
        app.router.add_get("/v1/control", self._control)
        metrics_http.install(app, self._registry)
        self.service.add_routes(app)
        return app

    def status(self) -> StatusReport:
        load = self.service.load().model_copy(update={"accepting": self.core.accepting})
        info = {**self.service.info(), "uptime_s": round(time.time() - self.started_wall, 3),
                "version": __version__}
        if self.service.events.dropped_total:
            info["events_dropped"] = self.service.events.dropped_total
        return StatusReport(state=self.core.state, load=load, info=info)

    async def _health(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok", "worker_id": self.ctx.worker_id})

    async def _ready(self, request: web.Request) -> web.Response:
        ready = self._control_token is not None and self.core.accepting
        return json_response({"ready": ready}, status=200 if ready else 503)

    async def _status(self, request: web.Request) -> web.Response:
        body = self.status().model_dump(mode="json")
        body.update(worker_id=self.ctx.worker_id, kind=self.ctx.kind.value, epoch=self.ctx.epoch,
                    location=self.ctx.location, pid=os.getpid())
        return json_response(body)

    # ------------------------------------------------------------------ control pipe

    async def _control(self, request: web.Request) -> web.StreamResponse:
        if self._control_token is None:
            raise ApiError(503, ErrorCode.NOT_READY, "worker has not checked in yet")
        try:
            require_token(request, self._control_token)
        except ApiError:
            self._m_refused.labels("token").inc()
            raise
        ws = web.WebSocketResponse(heartbeat=None, max_msg_size=1 << 20)
        await ws.prepare(request)
        try:
            first = await ws.receive(timeout=10)
            hello = Hello.model_validate(decode(first.data)) \
                if first.type in (WSMsgType.TEXT, WSMsgType.BINARY) else None
        except (TimeoutError, CodecError, ValidationError, TypeError):
            hello = None
        if hello is None:
            await self._refuse(ws, "bad_hello", "first frame must be a hello")
            return ws
        refusal = self.core.check_hello(hello)
        if refusal is not None:
            self._m_refused.labels("epoch").inc()
            log.warning("control pipe refused", reason=refusal.message)
            await self._refuse(ws, refusal.code, refusal.message)
            return ws
        previous, self._pipe = self._pipe, ws
        if previous is not None and not previous.closed:
            await previous.close(code=1000, message=b"superseded")
        self._apply(self.core.pipe_opened(hello, time.monotonic()))
        self._m_pipes.inc()
        log.info("control pipe open", manager_id=hello.manager_id,
                 manager_epoch=hello.manager_epoch)
        status = self.status()
        await ws.send_bytes(encode(Welcome(worker_id=self.ctx.worker_id, epoch=self.ctx.epoch,
                                           state=status.state, load=status.load)))
        sender = asyncio.create_task(self._send_loop(ws), name="control-pipe-sender")
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT and msg.type != WSMsgType.BINARY:
                    break
                await self._on_pipe_frame(ws, msg.data)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            if self._pipe is ws:
                self._pipe = None
                self.core.pipe_closed(time.monotonic())
                log.warning("control pipe closed")
        return ws

    async def _refuse(self, ws: web.WebSocketResponse, code: str, message: str) -> None:
        await ws.send_bytes(encode(PipeError(code=code, message=message)))
        await ws.close(code=1008, message=code.encode())

    async def _on_pipe_frame(self, ws: web.WebSocketResponse, data: Any) -> None:
        try:
            msg = PIPE_MESSAGE.validate_python(decode(data))
        except (CodecError, ValidationError) as exc:
            await ws.send_bytes(encode(PipeError(code="bad_frame", message=str(exc)[:200])))
            return
        if isinstance(msg, Command):
            log.info("command", action=msg.action.value, command_id=msg.command_id)
            error = None
            if msg.action is CommandAction.CONFIG:
                error = await self._configure(msg.params)
            else:
                self._apply(self.core.command(msg, time.monotonic()))
            await ws.send_bytes(encode(CommandResult(command_id=msg.command_id,
                                                     ok=error is None, error=error)))
            await ws.send_bytes(encode(self.status()))

    async def _configure(self, params: dict[str, Any]) -> str | None:
        """Hand a config command to the service once; exact repeats are acknowledged as is."""
        if params == self._last_config:
            return None
        try:
            await self.service.configure(params)
        except ValueError as exc:
            log.warning("config refused", params=params, error=str(exc))
            return str(exc)
        self._last_config = params
        return None

    async def _send_loop(self, ws: web.WebSocketResponse) -> None:
        """Heartbeat and status every interval; operator events as soon as they are queued."""
        interval = self.ctx.config.timeouts.heartbeat_interval_s
        next_beat = 0.0
        with contextlib.suppress(ConnectionError):  # the pipe went away; the reader sees it
            await self._beat_and_send(ws, interval, next_beat)

    async def _beat_and_send(self, ws: web.WebSocketResponse, interval: float,
                             next_beat: float) -> None:
        while not ws.closed:
            if time.monotonic() >= next_beat:
                await ws.send_bytes(encode(Heartbeat(ts=time.time())))
                await ws.send_bytes(encode(self.status()))
                next_beat = time.monotonic() + interval
            self._events_ready.clear()
            await self._send_events(ws)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._events_ready.wait(),
                                       max(0.0, next_beat - time.monotonic()))

    async def _send_events(self, ws: web.WebSocketResponse) -> None:
        outbox = self.service.events
        while not ws.closed:
            frame = outbox.first()
            if frame is None:
                return
            await ws.send_bytes(encode(frame))
            outbox.sent(frame)

    # ------------------------------------------------------------------ effects & lifecycle

    def _apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if effect is Effect.BEGIN_DRAIN:
                log.info("draining")
                self._spawn(self.service.begin_drain(), "begin-drain")
            elif effect is Effect.PAUSE:
                log.warning("orphaned: no control pipe, not taking new work")
                self.service.set_accepting(False)
            elif effect is Effect.RESUME:
                log.info("re-adopted: taking work again")
                self.service.set_accepting(True)
            elif effect is Effect.EXIT:
                log.info("exiting")
                self._stop.set()
        self._m_accepting.set(1 if self.core.accepting else 0)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task failed", task=task.get_name(), error=repr(task.exception()))

    async def _ticker(self) -> None:
        while not self._stop.is_set():
            self._apply(self.core.tick(time.monotonic(), self.service.has_work()))
            await asyncio.sleep(TICK_S)

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until told to exit (pipe command, orphan timeout) or `stop` is set by a signal."""
        self._tasks: set[asyncio.Task[Any]] = set()
        runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False)
        await runner.setup()
        port = await listen(runner)
        self.url = f"http://127.0.0.1:{port}"
        structlog.contextvars.bind_contextvars(url=self.url)
        log.info("listening")
        exit_code = 0
        try:
            await self.service.start()
            accepted = await check_in(self.ctx.manager_url, WorkerCheckin(
                worker_id=self.ctx.worker_id, kind=self.ctx.kind, epoch=self.ctx.epoch,
                url=self.url, pid=os.getpid(), version=__version__,
                spawn_token=self._spawn_token), self.ctx.config.timeouts.checkin_deadline_s)
            self._control_token = accepted.control_token
            log.info("checked in", manager_epoch=accepted.manager_epoch)
            ticker = asyncio.create_task(self._ticker(), name="worker-ticker")
            waiter = asyncio.create_task(stop.wait(), name="signal-wait")
            own = asyncio.create_task(self._stop.wait(), name="exit-wait")
            await asyncio.wait({waiter, own}, return_when=asyncio.FIRST_COMPLETED)
            for task in (ticker, waiter, own):
                task.cancel()
        except CheckinRefused as exc:
            log.error("check-in refused", error=str(exc))
            exit_code = 3
        except Exception as exc:  # noqa: BLE001 - check-in deadline passed or service failed to start
            log.error("worker failed", error=repr(exc))
            exit_code = 4
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._pipe is not None and not self._pipe.closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._pipe.close(code=1001, message=b"exiting"), 2)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.service.stop(), 10)
            await runner.cleanup()
        return exit_code
