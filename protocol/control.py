"""Control plane contract: worker check-in, the manager→worker control pipe, manager check-in.

Flow (see DESIGN.md §2): a worker checks in by REST with its one-time spawn token; the manager
answers with a control token and then opens a WebSocket control pipe to the worker, presenting
that token and its own epoch. Commands go down the pipe; heartbeats, status and load come up.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WorkerKind(StrEnum):
    BROKER = "broker"
    MARKET = "market"
    TRADER = "trader"


class WorkerState(StrEnum):
    """Lifecycle of a worker as its manager sees it."""

    STARTING = "starting"  # spawned, not yet checked in
    UP = "up"  # control pipe open, heartbeats flowing
    SUSPECT = "suspect"  # pipe lost, being re-established
    DRAINING = "draining"  # takes no new work, finishing, then exits
    FAILED = "failed"  # process gone or unreachable past the grace period
    STOPPED = "stopped"  # exited on purpose (drained or stopped)
    UNREACHABLE = "unreachable"  # its whole location is silent (set by the infra manager)


LIVE_STATES = frozenset({WorkerState.STARTING, WorkerState.UP, WorkerState.SUSPECT,
                         WorkerState.DRAINING})


class Load(Frozen):
    """What a worker reports about its work. Latencies are percentiles, never averages alone."""

    sessions: int = Field(default=0, ge=0, description="Open client sessions.")
    subscriptions: int = Field(default=0, ge=0, description="Active subscriptions.")
    msgs_in_per_s: float = Field(default=0.0, ge=0, description="Messages received per second.")
    msgs_out_per_s: float = Field(default=0.0, ge=0, description="Messages sent per second.")
    latency_p50_us: float | None = Field(default=None, description="Processing latency p50.")
    latency_p99_us: float | None = Field(default=None, description="Processing latency p99.")
    latency_p999_us: float | None = Field(default=None, description="Processing latency p99.9.")
    accepting: bool = Field(default=True, description="False while draining or orphaned.")


# ---------------------------------------------------------------- worker check-in (REST)


class WorkerCheckin(Frozen):
    """`POST {manager}/v1/workers/checkin` body."""

    worker_id: str = Field(min_length=1, max_length=64)
    kind: WorkerKind
    epoch: int = Field(ge=1)
    url: str = Field(min_length=1, description="Base HTTP URL the worker serves on.")
    pid: int = Field(ge=1)
    version: str
    spawn_token: str = Field(min_length=16, description="One-time token given at spawn.")


class WorkerCheckinAccepted(Frozen):
    worker_id: str
    control_token: str = Field(description="The manager presents it when opening the pipe.")
    manager_epoch: int = Field(ge=1)


# ---------------------------------------------------------------- control pipe messages


class Hello(Frozen):
    """First frame down the pipe: who opens it and which generation they are."""

    type: Literal["hello"] = "hello"
    manager_id: str
    manager_epoch: int = Field(ge=1)
    worker_epoch: int = Field(ge=1)


class Welcome(Frozen):
    """The worker's answer to an accepted `hello`."""

    type: Literal["welcome"] = "welcome"
    worker_id: str
    epoch: int
    state: WorkerState
    load: Load


class Heartbeat(Frozen):
    type: Literal["heartbeat"] = "heartbeat"
    ts: float = Field(description="Sender's wall clock, seconds since the epoch.")


class StatusReport(Frozen):
    type: Literal["status"] = "status"
    state: WorkerState
    load: Load
    info: dict[str, Any] = Field(default_factory=dict, description="Kind-specific details.")


class CommandAction(StrEnum):
    DRAIN = "drain"
    STOP = "stop"
    CONFIG = "config"


class Command(Frozen):
    type: Literal["command"] = "command"
    command_id: str
    action: CommandAction
    params: dict[str, Any] = Field(default_factory=dict)


class CommandResult(Frozen):
    type: Literal["command_result"] = "command_result"
    command_id: str
    ok: bool
    error: str | None = None


class PipeError(Frozen):
    type: Literal["error"] = "error"
    code: str
    message: str


class EventCategory(StrEnum):
    """Which event-log filter a worker's event belongs under."""

    RISK = "risk"  # refusals, exits, kill switch, position corrections
    VENUE = "venue"  # the venue connection went down or came back (resync)
    WORKER = "worker"  # anything else a worker wants an operator to see


class WorkerEvent(Frozen):
    """Worker → manager: something an operator should see in the event log.

    Sent up the control pipe as it happens (never blocking the worker's own work: a worker
    buffers a bounded number while its pipe is down and drops the oldest beyond that, counting
    them in `dropped`). The manager appends it to its event log with the worker's id.
    """

    type: Literal["event"] = "event"
    event: str = Field(min_length=1, max_length=64, description="e.g. risk_rejected.")
    category: EventCategory = EventCategory.WORKER
    ts: float = Field(description="Worker's wall clock, seconds since the epoch.")
    n: int = Field(ge=1, description="Per-worker sequence number (tells repeats apart).")
    message: str = Field(default="", max_length=1000, description="One sentence for people.")
    detail: dict[str, Any] = Field(default_factory=dict,
                                   description="Small, secret-free facts (account, code...).")
    dropped: int = Field(default=0, ge=0,
                         description="Events lost before this one because the buffer was full.")


PipeMessage = Annotated[
    Hello | Welcome | Heartbeat | StatusReport | Command | CommandResult | PipeError
    | WorkerEvent,
    Field(discriminator="type"),
]
PIPE_MESSAGE: TypeAdapter[PipeMessage] = TypeAdapter(PipeMessage)


# ---------------------------------------------------------------- manager check-in (REST)


class ManagerCheckin(Frozen):
    """`POST {infra}/v1/managers/checkin` body, authenticated by the deployment join token."""

    manager_id: str = Field(min_length=1, max_length=64)
    location: str = Field(min_length=1, max_length=64)
    kind: WorkerKind
    url: str
    epoch: int = Field(ge=1)
    version: str


class ManagerCheckinAccepted(Frozen):
    infra_id: str


# ---------------------------------------------------------------- operator requests (REST)


class SpawnRequest(Frozen):
    """Add workers: `POST {manager}/v1/workers/spawn` or through the infra manager."""

    count: int = Field(ge=1, le=64, description="How many workers to add.")
    request_id: str | None = Field(
        None, min_length=1, max_length=128,
        description="Idempotency key: a repeat returns the first answer and spawns nothing. "
                    "Generated when absent (then a retried request may spawn again).")


class DesiredRequest(Frozen):
    """Set how many workers a manager keeps: `PUT .../desired`."""

    desired: int = Field(ge=0, le=256, description="Workers to keep running.")
