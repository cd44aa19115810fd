"""Test support for the infrastructure manager: the real process, and a failing-on-purpose fake.

Used by the functional and browser tests. The fake manager stands in only where a test needs a
manager to misbehave in ways a real one won't on demand (zombie epochs, dropped pipes at will);
the tests that check the normal flow run the real `python -m managers`.

`InfraProcess` starts `python -m infra_manager` on port 0 and finds its URL the way a launcher
does. `FakeManager` is a scriptable manager on loopback: it serves `/v1/stream` (pushing
`ManagerSnapshot` frames), records the operator commands it receives, and can be stopped and
restarted on the same port to test that the infra manager re-opens its status pipe.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from protocol.codec import encode
from protocol.control import Load, WorkerKind, WorkerState
from protocol.fleet import ManagerSnapshot, ManagerView, WorkerView

REPO = Path(__file__).resolve().parents[2]


class InfraProcess:
    """`python -m infra_manager` as a child process; `stop()` sends SIGTERM and waits."""

    def __init__(self, data_dir: Path, config: Path | None, infra_id: str | None = None) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir / "infra.log"
        args = [sys.executable, "-m", "infra_manager", "--host", "127.0.0.1", "--port", "0",
                "--data-dir", str(data_dir)]
        if config is not None:
            args += ["--config", str(config)]
        if infra_id is not None:
            args += ["--infra-id", infra_id]
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the child
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=self._log,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = self._read_line(timeout=20.0)
        announced = json.loads(line)
        assert announced["event"] == "listening", line
        self.url: str = announced["url"]
        self.infra_id: str = announced["infra_id"]

    def _read_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if selector.select(timeout=0.1):
                line = self.proc.stdout.readline().decode()
                if line:
                    return line
            if self.proc.poll() is not None:
                break
        raise AssertionError(f"infra manager did not announce its URL; log:\n{self.logs()}")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


class ManagerProcess:
    """`python -m managers` for one kind, checking in with `infra_url`."""

    def __init__(self, data_dir: Path, config: Path, infra_url: str,
                 kind: WorkerKind = WorkerKind.BROKER) -> None:
        self.log_path = data_dir / f"{kind.value}-manager.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "managers", "--kind", kind.value, "--port", "0",
             "--data-dir", str(data_dir), "--config", str(config), "--infra-url", infra_url],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=self._log)

    def kill(self) -> None:
        """kill -9: the manager's workers keep running, orphaned."""
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM: the manager stops its workers and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def worker_view(worker_id: str, kind: WorkerKind, state: WorkerState = WorkerState.UP,
                epoch: int = 1) -> WorkerView:
    return WorkerView(id=worker_id, kind=kind, state=state, pid=None, epoch=epoch, url=None,
                      load=Load(sessions=2, msgs_in_per_s=10.0, latency_p50_us=80.0,
                                latency_p99_us=900.0),
                      last_heartbeat_age_s=0.1, uptime_s=3.0)


class FakeManager:
    """A manager on loopback that the test drives by hand."""

    def __init__(self, manager_id: str, location: str, kind: WorkerKind, join_token: str,
                 operator_token: str, heartbeat_s: float = 0.1) -> None:
        self.manager_id = manager_id
        self.location = location
        self.kind = kind
        self.epoch = 1
        self.join_token = join_token
        self.operator_token = operator_token
        self.heartbeat_s = heartbeat_s
        self.workers: list[WorkerView] = []
        self.desired = 0
        self.info: dict[str, Any] = {}  # the ManagerView's info (e.g. fleet_kill_switch)
        self.pending_events: list[dict[str, Any]] = []
        self.stream_headers: list[dict[str, str]] = []
        self.commands: list[tuple[str, str, dict[str, Any] | None, str | None]] = []
        self.port = 0
        self.stream_opened = asyncio.Event()
        self._streams: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        # Lets a test answer a command differently (e.g. with a coded error).
        self.answer: Callable[[str, str], Awaitable[web.Response]] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def checkin_body(self) -> dict[str, Any]:
        return {"manager_id": self.manager_id, "location": self.location,
                "kind": self.kind.value, "url": self.url, "epoch": self.epoch,
                "version": "0.1.0"}

    def snapshot(self) -> bytes:
        view = ManagerView(id=self.manager_id, kind=self.kind, location=self.location,
                           url=self.url, epoch=self.epoch, desired=self.desired,
                           workers=self.workers, info=self.info)
        events, self.pending_events = self.pending_events, []
        return encode(ManagerSnapshot(manager=view, events=events))

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/v1/stream", self._stream)
        app.router.add_route("*", "/v1/{tail:.*}", self._command)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._heartbeat = asyncio.get_running_loop().create_task(
            self._beat(), name=f"fake-manager:{self.manager_id}:heartbeat")

    async def stop(self) -> None:
        """Go away abruptly, like a killed manager: streams dropped, port closed."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.wait([self._heartbeat], timeout=2)
            self._heartbeat = None
        for ws in list(self._streams):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.stream_opened = asyncio.Event()

    async def push(self) -> None:
        open_streams = [ws for ws in self._streams if not ws.closed]
        if not open_streams:
            # Keep pending events for the first stream: a heartbeat before the
            # InfrastructureManager has connected must not swallow them.
            return
        frame = self.snapshot()
        for ws in open_streams:
            await ws.send_bytes(frame)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self.push()

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        self.stream_headers.append(dict(request.headers))
        if request.headers.get("Authorization") != f"Bearer {self.join_token}":
            return web.json_response({"error": {"code": "unauthorized", "message": "no"}},
                                     status=401)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._streams.add(ws)
        self.stream_opened.set()
        await ws.send_bytes(self.snapshot())
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self._streams.discard(ws)
        return ws

    async def _command(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.commands.append((request.method, request.path, body,
                              request.headers.get("Authorization")))
        if self.answer is not None:
            return await self.answer(request.method, request.path)
        if request.path == "/v1/workers/spawn":
            assert body is not None
            return web.json_response({"request_id": body["request_id"], "workers": ["new-1"]})
        if request.path == "/v1/desired":
            assert body is not None
            return web.json_response({"desired": body["desired"]})
        if request.path == "/v1/kill-switch":
            assert body is not None
            return web.json_response({"kill_switch": body["active"], "accounts": [],
                                      "pending": [], "failed": {}})
        worker_id = request.path.split("/")[3]
        return web.json_response({"worker_id": worker_id, "action": request.path.split("/")[-1],
                                  "accepted": True})


async def eventually(probe: Callable[[], Awaitable[Any]], timeout: float = 10.0,
                     what: str = "condition") -> Any:
    """Poll `probe` (an external process cannot be awaited) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")
