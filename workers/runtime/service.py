"""The contract between the shared worker runtime and a kind's own logic (broker/market/trader)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from protocol.control import EventCategory, Load, WorkerKind
from tradefleet.config import FleetConfig
from workers.runtime.events import EventOutbox


@dataclass(frozen=True)
class WorkerContext:
    """What a worker knows about itself, handed to its service at start."""

    worker_id: str
    kind: WorkerKind
    epoch: int
    location: str
    manager_url: str
    data_dir: Path
    config: FleetConfig


class WorkerService:
    """Kind-specific behaviour plugged into the runtime. The base class is an idle worker.

    The runtime calls `add_routes` before serving, `start` after binding, `set_accepting` when
    the worker is paused/resumed, `begin_drain` on a drain command, `has_work` while draining,
    and `stop` before the process exits. `load`/`info` feed the status reports.

    `report_event` sends an operator event up the control pipe (to the manager's event log);
    it never blocks and never raises, so it is safe to call from trading code.
    """

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.accepting = True
        self.events = EventOutbox()

    def report_event(self, event: str, message: str = "",
                     category: EventCategory = EventCategory.WORKER, **detail: Any) -> None:
        """Queue an event for the manager's event log (see `workers.runtime.events`)."""
        try:
            self.events.put(event, message, category, **detail)
        except Exception:  # noqa: BLE001 - the event log must never stop the worker's work
            self.events.dropped_total += 1

    def add_routes(self, app: web.Application) -> None:
        """Register kind-specific HTTP/WebSocket routes."""

    async def start(self) -> None:
        """Begin work. Called once the HTTP server is bound and before check-in."""

    async def stop(self) -> None:
        """Release everything; called once before the process exits."""

    async def configure(self, params: dict[str, Any]) -> None:
        """Apply a `config` command from the manager, e.g. `{"assign": {"account": "a"}}`.

        Called only with parameters that differ from the last applied ones (the runtime skips
        exact repeats, so re-adoption may re-send an assignment safely). Raise `ValueError`
        with a sentence to refuse; the manager sees it in the command result.
        """

    def set_accepting(self, accepting: bool) -> None:
        self.accepting = accepting

    async def begin_drain(self) -> None:
        """Stop taking new work and tell clients where to go (reconnect hints)."""
        self.accepting = False

    def has_work(self) -> bool:
        """True while sessions or in-flight work remain (draining waits for this)."""
        return False

    def load(self) -> Load:
        return Load(accepting=self.accepting)

    def info(self) -> dict[str, Any]:
        return {}
