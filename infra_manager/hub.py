"""The thin shell around `FleetState`: decode inputs, apply them, tell watchers about changes."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import structlog
from pydantic import BaseModel, ValidationError

from infra_manager.fleet_state import CheckinOutcome, FleetState, ManagerLink, SnapshotOutcome
from infra_manager.metrics import InfraMetrics
from protocol.codec import CodecError, decode
from protocol.control import ManagerCheckin
from protocol.fleet import ManagerSnapshot

log = structlog.get_logger(__name__)


class FleetHub:
    """Owns the aggregation core for one process.

    Every change wakes the watchers (`watch()` events), which push the new view to operators.
    Encoded fleet frames are cached per core version and 100 ms of clock, so many operators
    cost one encoding.
    """

    def __init__(self, state: FleetState, metrics: InfraMetrics) -> None:
        self.state = state
        self.metrics = metrics
        self._watchers: set[asyncio.Event] = set()
        self._frame_key: tuple[int, int] | None = None
        self._frame: bytes = b""

    # ------------------------------------------------------------------ watchers

    def watch(self) -> asyncio.Event:
        event = asyncio.Event()
        self._watchers.add(event)
        return event

    def unwatch(self, event: asyncio.Event) -> None:
        self._watchers.discard(event)

    def _changed(self) -> None:
        for event in self._watchers:
            event.set()

    # ------------------------------------------------------------------ inputs

    def check_in(self, checkin: ManagerCheckin) -> CheckinOutcome:
        """Raises `StaleCheckin` for an older generation."""
        outcome = self.state.check_in(checkin)
        self.metrics.checkins.labels(outcome.value).inc()
        if outcome is not CheckinOutcome.RENEWED:
            self._changed()
        return outcome

    def receive_frame(self, link: ManagerLink, data: bytes | str) -> SnapshotOutcome | None:
        """Decode and apply one status-pipe frame. None (and a log line) when it is invalid."""
        try:
            snapshot = ManagerSnapshot.model_validate(_fill_nullable(decode(data)))
        except (CodecError, ValidationError) as exc:
            self.metrics.status_frames.labels("invalid").inc()
            log.warning("invalid status frame", manager_id=link.manager_id,
                        error=_short_error(exc))
            return None
        outcome = self.state.apply(link, snapshot)
        self.metrics.status_frames.labels(outcome.value).inc()
        if outcome is SnapshotOutcome.ACCEPTED:
            self._changed()
        else:
            log.info("status frame ignored", manager_id=link.manager_id, outcome=outcome.value)
        return outcome

    def tick(self) -> None:
        if self.state.tick():
            self._changed()

    def record_operator_action(self, action: str, **details: Any) -> None:
        self.state.record_operator_action(action, **details)
        self._changed()

    # ------------------------------------------------------------------ outputs

    def fleet_frame(self, now: float) -> bytes:
        """`{"type": "fleet", "fleet": FleetView}` encoded, cached briefly."""
        key = (self.state.version, int(now * 10))
        if key != self._frame_key:
            self._frame = encode_view({"type": "fleet", "fleet": self.state.view()})
            self._frame_key = key
        return self._frame


# `WorkerView` declares these as required-but-nullable, while `protocol.codec.encode` drops
# None values; a sender using the shared codec would omit them. Accept both spellings.
_NULLABLE_WORKER_FIELDS = ("pid", "url", "last_heartbeat_age_s")


def _fill_nullable(frame: dict[str, Any]) -> dict[str, Any]:
    manager = frame.get("manager")
    workers = manager.get("workers") if isinstance(manager, dict) else None
    if isinstance(workers, list):
        for worker in workers:
            if isinstance(worker, dict):
                for name in _NULLABLE_WORKER_FIELDS:
                    worker.setdefault(name, None)
    return frame


def encode_view(value: Any) -> bytes:
    """JSON for documents clients validate against `protocol.fleet`: keeps explicit nulls."""
    return orjson.dumps(value, default=_dump_model)


def _dump_model(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot encode {type(value).__name__}")


def _short_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ()))
        return f"{where}: {err.get('msg')}" if where else str(err.get("msg"))
    return str(exc)
