"""The `Spawner` contract and its local-process implementation.

A spawner starts one worker, polls whether it still runs, stops it, and can save/restore its
state so a restarted manager re-adopts a running worker instead of starting a duplicate. Other
engines (e.g. Kubernetes pods) implement the same five methods.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class SpawnError(RuntimeError):
    """The worker could not be started; the manager should back off and try again."""


@dataclass(frozen=True)
class SpawnSpec:
    """Everything needed to start one worker process."""

    worker_id: str
    kind: str
    epoch: int
    manager_url: str
    location: str
    data_dir: Path
    config_path: Path | None
    spawn_token: str
    extra_env: dict[str, str] = field(default_factory=dict)


class Spawner(ABC):
    """Starts and supervises one worker. One instance per worker."""

    @abstractmethod
    async def start(self, spec: SpawnSpec) -> None:
        """Start the worker. Raises `SpawnError` if it could not be started."""

    @abstractmethod
    async def poll(self) -> int | None:
        """None while the worker runs, else its exit code (or -1 if unknown)."""

    @abstractmethod
    async def stop(self, now: bool = False, grace_s: float = 5.0) -> None:
        """Stop the worker: gracefully by default, escalating; `now` skips straight to a kill."""

    @abstractmethod
    def get_state(self) -> dict[str, Any]:
        """A JSON-able dict that lets `load_state` find the same worker after a manager restart."""

    @abstractmethod
    def load_state(self, state: dict[str, Any]) -> None:
        """Re-attach to a worker described by `get_state`."""


def process_start_time(pid: int) -> int | None:
    """The kernel start time (clock ticks since boot) of `pid`, or None if it is gone or a zombie.

    pid alone is not an identity (pids are reused); pid + start time is.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    state, start_ticks = fields[0], fields[19]
    if state in ("Z", "X"):
        return None
    return int(start_ticks)


def worker_command(spec: SpawnSpec) -> list[str]:
    """The command line of a worker process (`python -m workers ...`)."""
    argv = [sys.executable, "-m", "workers", "--kind", spec.kind, "--worker-id", spec.worker_id,
            "--epoch", str(spec.epoch), "--manager-url", spec.manager_url,
            "--location", spec.location, "--data-dir", str(spec.data_dir)]
    if spec.config_path is not None:
        argv += ["--config", str(spec.config_path)]
    return argv


class LocalProcessSpawner(Spawner):
    """Runs the worker as a local subprocess in its own process group (session).

    Stopping sends SIGINT, then SIGTERM, then SIGKILL to the group, `grace_s` apart.
    """

    def __init__(self, command: Callable[[SpawnSpec], list[str]] | None = None) -> None:
        self._command = command or worker_command
        self._proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.start_time: int | None = None
        self.log_path: str | None = None

    async def start(self, spec: SpawnSpec) -> None:
        log_dir = spec.data_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = str(log_dir / f"{spec.worker_id}.log")
        argv = self._command(spec)
        env = {**os.environ, **spec.extra_env, "TRADEFLEET_SPAWN_TOKEN": spec.spawn_token}
        try:
            # Both return at once: the file is only handed to the child as its output.
            with open(self.log_path, "ab") as log_file:  # noqa: ASYNC230
                self._proc = subprocess.Popen(  # noqa: ASYNC220
                    argv, env=env, stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL,
                    start_new_session=True, close_fds=True)
        except OSError as exc:
            raise SpawnError(f"cannot start worker {spec.worker_id}: {exc}") from exc
        self.pid = self._proc.pid
        self.start_time = process_start_time(self.pid)

    async def poll(self) -> int | None:
        if self._proc is not None:
            code = self._proc.poll()
            if code is not None:
                return code
        if self.pid is None:
            return -1
        current = process_start_time(self.pid)
        if current is None or (self.start_time is not None and current != self.start_time):
            if self._proc is not None:
                # Our own child exited between the two looks: it is a zombie until reaped,
                # and reaping it gives its real exit code.
                code = self._proc.poll()
                if code is not None:
                    return code
            return -1  # gone, a zombie, or the pid now belongs to someone else
        return None

    async def stop(self, now: bool = False, grace_s: float = 5.0) -> None:
        if self.pid is None or await self.poll() is not None:
            return
        steps = [signal.SIGKILL] if now else [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]
        for sig in steps:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                return
            except PermissionError:
                os.kill(self.pid, sig)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline:
                if await self.poll() is not None:
                    return
                await asyncio.sleep(0.05)

    def get_state(self) -> dict[str, Any]:
        return {"pid": self.pid, "start_time": self.start_time, "log_path": self.log_path}

    def load_state(self, state: dict[str, Any]) -> None:
        self._proc = None
        self.pid = state.get("pid")
        self.start_time = state.get("start_time")
        self.log_path = state.get("log_path")
