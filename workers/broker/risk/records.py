"""What the position manager journals: its decisions, each a fact that replays on its own.

The manager changes its durable state only by applying one of these records (or an order
event the order tracker journaled). A decision that depends on something not durable — a
market price, the account's equity, the time — is journaled with its outcome, never
recomputed: replaying the records in journal order rebuilds the same state without any market
data. Every record is a frozen pydantic model; `RISK_RECORD` parses one back from its JSON
form (`record` is the discriminator).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from protocol.errors import ErrorCode
from protocol.market import Frozen, Instrument, Money, Price, TimestampNs
from protocol.orders import ModifyOrder, NewOrder
from protocol.risk import RiskLimits
from protocol.signals import ExitKind, Signal

SessionRef = Annotated[str, Field(min_length=1, max_length=128)]


class Origin(StrEnum):
    """Who wanted an order."""

    ALGO = "algo"  # a new_order from an algo
    SIGNAL = "signal"  # the entry of a signal
    EXIT = "exit"  # a close placed by an exit or a flat signal
    VENUE = "venue"  # learnt from the venue's events; not placed through the manager


class KillScope(StrEnum):
    ACCOUNT = "account"
    FLEET = "fleet"


class _Record(Frozen):
    at: TimestampNs = Field(description="Injected clock when the decision was taken, ns.")


class OrderAdmitted(_Record):
    """An algo's order passed the risk checks and goes to the order tracker."""

    record: Literal["order_admitted"] = "order_admitted"
    order: NewOrder
    session_id: SessionRef | None = None
    trader_tag: str | None = None


class OrderRefused(_Record):
    """An algo's order broke a limit; nothing was placed. Its client_order_id stays taken."""

    record: Literal["order_refused"] = "order_refused"
    order: NewOrder
    code: ErrorCode
    message: str
    session_id: SessionRef | None = None
    trader_tag: str | None = None


class ModifyAdmitted(_Record):
    """A modification passed the risk checks and goes to the order tracker."""

    record: Literal["modify_admitted"] = "modify_admitted"
    modify: ModifyOrder


class ModifyRefused(_Record):
    """A modification broke a limit; the order stays as it was."""

    record: Literal["modify_refused"] = "modify_refused"
    modify: ModifyOrder
    code: ErrorCode
    message: str
    session_id: SessionRef | None = None


class SignalAdopted(_Record):
    """A signal passed its checks. `order` moves the position to `target_qty` (none if it is
    there already); for a flat target, `cancel` lists the working orders on the instrument
    to cancel and `order` is the close."""

    record: Literal["signal_adopted"] = "signal_adopted"
    signal: Signal
    session_id: SessionRef | None = None
    trader_tag: str | None = None
    target_qty: Money
    position_qty: Money
    order: NewOrder | None = None
    cancel: list[str] = Field(default_factory=list)


class SignalRefused(_Record):
    """A signal was refused; nothing changed but its signal_id being taken."""

    record: Literal["signal_refused"] = "signal_refused"
    signal: Signal
    code: ErrorCode
    message: str
    session_id: SessionRef | None = None


class TrailMoved(_Record):
    """A trailing stop's best price since entry moved."""

    record: Literal["trail_moved"] = "trail_moved"
    plan_id: str
    anchor: Price


class ExitTriggered(_Record):
    """An exit fired: its siblings are off, `cancel` lists the working orders on the
    instrument to cancel, and `close` (if any) is the first closing order."""

    record: Literal["exit_triggered"] = "exit_triggered"
    plan_id: str
    kind: ExitKind
    instrument: Instrument | None = None  # absent in journals written before it was added
    session_id: SessionRef | None = None  # the session that sent the signal: told of it
    price: Price | None = None
    position_qty: Money
    cancel: list[str] = Field(default_factory=list)
    close: NewOrder | None = None


class CloseIssued(_Record):
    """Another closing order for an exit whose earlier closes left part of the position."""

    record: Literal["close_issued"] = "close_issued"
    plan_id: str
    order: NewOrder


class ExitAbandoned(_Record):
    """A closing exit stops trying: what is left cannot be closed by an order."""

    record: Literal["exit_abandoned"] = "exit_abandoned"
    plan_id: str
    reason: str


class PositionCorrected(_Record):
    """After a (re)connect the venue reported a different position than the fills gave: the
    venue's quantity (and average price, when it reports one) is taken from here on."""

    record: Literal["position_corrected"] = "position_corrected"
    instrument: Instrument
    ours_qty: Money
    venue_qty: Money
    venue_avg_price: Price | None = None


class LimitsChanged(_Record):
    """New limits apply from here on."""

    record: Literal["limits_changed"] = "limits_changed"
    limits: RiskLimits


class KillSwitchChanged(_Record):
    """A kill switch was set or cleared. Setting it cancels every working order."""

    record: Literal["kill_switch_changed"] = "kill_switch_changed"
    scope: KillScope
    active: bool
    reason: str = Field(default="", max_length=500)
    by: str = Field(default="operator", max_length=128)


RiskRecord = (
    OrderAdmitted
    | OrderRefused
    | ModifyAdmitted
    | ModifyRefused
    | SignalAdopted
    | SignalRefused
    | TrailMoved
    | ExitTriggered
    | CloseIssued
    | ExitAbandoned
    | PositionCorrected
    | LimitsChanged
    | KillSwitchChanged
)
RISK_RECORD: TypeAdapter[Any] = TypeAdapter(Annotated[RiskRecord, Field(discriminator="record")])
"""Parses any record from its JSON form (`record.model_dump(mode="json")`)."""

__all__ = [
    "RISK_RECORD",
    "CloseIssued",
    "ExitAbandoned",
    "ExitTriggered",
    "KillScope",
    "KillSwitchChanged",
    "LimitsChanged",
    "ModifyAdmitted",
    "ModifyRefused",
    "OrderAdmitted",
    "OrderRefused",
    "Origin",
    "PositionCorrected",
    "RiskRecord",
    "SignalAdopted",
    "SignalRefused",
    "TrailMoved",
]
