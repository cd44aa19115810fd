"""The fleet document: locations → managers → workers, as served by `GET /v1/fleet`.

A manager streams its own `ManagerView` to each infrastructure manager over the status pipe;
the infrastructure manager aggregates them into a `FleetView`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.control import Load, WorkerKind, WorkerState


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WorkerView(Frozen):
    id: str
    kind: WorkerKind
    state: WorkerState
    pid: int | None = None
    epoch: int
    url: str | None = None
    load: Load
    last_heartbeat_age_s: float | None = Field(None, description="Seconds since its last "
                                                                 "heartbeat.")
    uptime_s: float | None = None
    info: dict[str, Any] = Field(default_factory=dict)


class ManagerState(StrEnum):
    UP = "up"
    SILENT = "silent"


class ManagerView(Frozen):
    id: str
    kind: WorkerKind
    location: str
    url: str
    epoch: int
    desired: int = Field(ge=0, description="Workers the manager keeps running.")
    state: ManagerState = ManagerState.UP
    last_seen_age_s: float | None = None
    workers: list[WorkerView] = Field(default_factory=list)
    info: dict[str, Any] = Field(default_factory=dict, description="Kind-specific state, e.g. "
                                 "a BrokerManager's `fleet_kill_switch`.")


class LocationState(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"  # some, not all, managers silent
    UNREACHABLE = "unreachable"  # every manager silent: nothing is mass-replaced


class LocationView(Frozen):
    name: str
    state: LocationState
    managers: list[ManagerView]
    counts: dict[str, int] = Field(default_factory=dict, description="Workers per state.")


class FleetView(Frozen):
    infra_id: str
    generated_at: float
    locations: list[LocationView]


class ManagerSnapshot(Frozen):
    """One frame of a manager's status pipe: its full view (small; sent on change and periodically)."""

    type: Literal["manager"] = "manager"
    manager: ManagerView
    events: list[dict[str, Any]] = Field(default_factory=list,
                                         description="Lifecycle events since the last frame.")
