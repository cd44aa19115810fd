"""Exits held on positions: stop-loss, take-profit, trailing stop and time exit. Pure, no I/O.

An `ExitPlan` belongs to one signal and protects the position it opened on one instrument
(`side`: buy protects a long, sell a short). At most one plan is active per instrument; a
newer signal on the instrument retires the older plan.

Life of a plan:

    armed ──an exit triggers──► closing ──position gone, its orders finished──► done
      └──entry orders finished and the position gone (closed by something else)──► done

* **Exactly once.** A plan fires once: the first exit to trigger moves it to `closing` and
  its siblings are off (one-cancels-other). Only an armed plan is evaluated.
* **Triggers.** Price exits are evaluated only while the position is on the plan's side, on
  the price a close would trade near: a trade's price, or a ticker's bid (closing a long) or
  ask (closing a short), falling back to its last price. Evaluated in this order: stop-loss,
  trailing stop, take-profit; the time exit fires at `time_exit_at` whatever the position.
  The trailing stop follows the best such price seen while the position is open (its
  anchor starts at the first one), and fires a `trailing_distance` behind it.
* **Held, not lost.** While a kill switch is on, nothing fires (anchors still follow); the
  next price after it is cleared decides.
* **Never oversize.** A close is for the position left after every working order on the
  closing side has filled: `|position| − working closing-side qty`, rounded down to the lot.
  Whatever the position becomes meanwhile (partial fills, other orders), the next close is
  computed again from it, so the closes can never take the position through zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from protocol.market import InstrumentSpec, Side, Ticker, Trade
from protocol.signals import ExitKind, ExitLevels
from workers.broker.risk.amounts import EXACT, ZERO, floor_to_lot

MAX_CLOSE_ORDERS = 5
"""Closing orders one plan may place before it gives up and asks for a human."""


class PlanState(StrEnum):
    ARMED = "armed"
    CLOSING = "closing"
    DONE = "done"


@dataclass(slots=True)
class ExitPlan:
    plan_id: str  # the signal_id
    instrument: str
    side: Side | None  # side of the position protected; None: whatever is open (flat signal)
    session_id: str | None = None
    stop_loss: Decimal | None = None
    take_profit: Decimal | None = None
    trailing_distance: Decimal | None = None
    trail_anchor: Decimal | None = None
    time_exit_at: int | None = None
    entry_orders: list[str] = field(default_factory=list)
    state: PlanState = PlanState.ARMED
    fired: ExitKind | None = None
    cancel_orders: list[str] = field(default_factory=list)
    close_orders: list[str] = field(default_factory=list)
    done_reason: str | None = None

    def holds_side(self, position: Decimal) -> bool:
        """Is `position` one this plan protects (or, for a flat plan, anything open)?"""
        if self.side is None:
            return position != 0
        return position > 0 if self.side is Side.BUY else position < 0

    def levels(self) -> ExitLevels:
        return ExitLevels(
            stop_loss=self.stop_loss,
            take_profit=self.take_profit,
            trailing_distance=self.trailing_distance,
            trail_anchor=self.trail_anchor if self.trailing_distance is not None else None,
            time_exit_at=self.time_exit_at,
        )


def closing_side(position: Decimal) -> Side:
    """The side of an order that reduces `position` (non-zero)."""
    return Side.SELL if position > 0 else Side.BUY


def event_price(event: Trade | Ticker, closing: Side) -> Decimal | None:
    """The price a close on `closing` would trade near, as `event` tells it."""
    if isinstance(event, Trade):
        return event.price
    touch = event.bid if closing is Side.SELL else event.ask
    return touch if touch is not None else event.last


def price_trigger(plan: ExitPlan, price: Decimal) -> ExitKind | None:
    """Which price exit `price` triggers on an armed plan with an open position, if any."""
    if plan.side is None:
        return None
    long = plan.side is Side.BUY
    if plan.stop_loss is not None and (
        price <= plan.stop_loss if long else price >= plan.stop_loss
    ):
        return ExitKind.STOP_LOSS
    if plan.trailing_distance is not None and plan.trail_anchor is not None:
        if long and price <= EXACT.subtract(plan.trail_anchor, plan.trailing_distance):
            return ExitKind.TRAILING_STOP
        if not long and price >= EXACT.add(plan.trail_anchor, plan.trailing_distance):
            return ExitKind.TRAILING_STOP
    if plan.take_profit is not None and (
        price >= plan.take_profit if long else price <= plan.take_profit
    ):
        return ExitKind.TAKE_PROFIT
    return None


def time_due(plan: ExitPlan, now: int) -> bool:
    return plan.time_exit_at is not None and now >= plan.time_exit_at


def moved_anchor(plan: ExitPlan, price: Decimal) -> Decimal | None:
    """The trailing stop's new best price if `price` improves on it, else None."""
    if plan.trailing_distance is None or plan.side is None:
        return None
    anchor = plan.trail_anchor
    if anchor is None:
        return price
    better = price > anchor if plan.side is Side.BUY else price < anchor
    return price if better else None


def close_quantity(position: Decimal, working_closing: Decimal, spec: InstrumentSpec) -> Decimal:
    """How much one close may be for: what is left of `position` once `working_closing` (the
    closing-side quantity already working) has filled, rounded down to the lot; 0 when that
    is below the venue's minimum order."""
    left = EXACT.subtract(abs(position), working_closing)
    if left <= 0:
        return ZERO
    qty = floor_to_lot(left, spec.lot_size)
    return qty if qty >= spec.min_qty else ZERO


class ExitBook:
    """Every exit plan of the account; at most one active (armed or closing) per instrument."""

    def __init__(self) -> None:
        self._plans: dict[str, ExitPlan] = {}
        self._active: dict[str, str] = {}  # instrument → plan_id

    def add(self, plan: ExitPlan) -> None:
        """Make `plan` the instrument's active plan; the one before it is retired."""
        previous = self.active_for(plan.instrument)
        if previous is not None:
            self.retire(previous, f"replaced by signal {plan.plan_id}")
        self._plans[plan.plan_id] = plan
        self._active[plan.instrument] = plan.plan_id

    def retire(self, plan: ExitPlan, reason: str) -> None:
        plan.state = PlanState.DONE
        plan.done_reason = reason
        if self._active.get(plan.instrument) == plan.plan_id:
            del self._active[plan.instrument]

    def get(self, plan_id: str) -> ExitPlan | None:
        return self._plans.get(plan_id)

    def active_for(self, instrument: str) -> ExitPlan | None:
        plan_id = self._active.get(instrument)
        return None if plan_id is None else self._plans[plan_id]

    def active(self) -> list[ExitPlan]:
        """Armed and closing plans, in the order they became active."""
        return [self._plans[p] for p in self._active.values()]

    def all(self) -> list[ExitPlan]:
        return list(self._plans.values())

    # ------------------------------------------------------------ durable form

    def snapshot(self) -> dict[str, Any]:
        def opt(value: Decimal | None) -> str | None:
            return None if value is None else str(value)

        return {
            "plans": [
                {
                    "plan_id": p.plan_id,
                    "instrument": p.instrument,
                    "side": None if p.side is None else p.side.value,
                    "session_id": p.session_id,
                    "stop_loss": opt(p.stop_loss),
                    "take_profit": opt(p.take_profit),
                    "trailing_distance": opt(p.trailing_distance),
                    "trail_anchor": opt(p.trail_anchor),
                    "time_exit_at": p.time_exit_at,
                    "entry_orders": list(p.entry_orders),
                    "state": p.state.value,
                    "fired": None if p.fired is None else p.fired.value,
                    "cancel_orders": list(p.cancel_orders),
                    "close_orders": list(p.close_orders),
                    "done_reason": p.done_reason,
                }
                for p in self._plans.values()
            ],
            "active": dict(self._active),
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> ExitBook:
        def opt(value: str | None) -> Decimal | None:
            return None if value is None else Decimal(value)

        book = cls()
        for p in data["plans"]:
            book._plans[p["plan_id"]] = ExitPlan(
                plan_id=p["plan_id"],
                instrument=p["instrument"],
                side=None if p["side"] is None else Side(p["side"]),
                session_id=p["session_id"],
                stop_loss=opt(p["stop_loss"]),
                take_profit=opt(p["take_profit"]),
                trailing_distance=opt(p["trailing_distance"]),
                trail_anchor=opt(p["trail_anchor"]),
                time_exit_at=p["time_exit_at"],
                entry_orders=list(p["entry_orders"]),
                state=PlanState(p["state"]),
                fired=None if p["fired"] is None else ExitKind(p["fired"]),
                cancel_orders=list(p["cancel_orders"]),
                close_orders=list(p["close_orders"]),
                done_reason=p["done_reason"],
            )
        book._active = dict(data["active"])
        return book
