"""The position manager of one account: pre-trade risk, signals, exits. Pure, no I/O.

It sits beside the order tracker (`workers.broker.orders`) in the account's order owner. Every
new order and modification passes through it before the tracker sees it; every order event
the tracker journals is fed back to it; so are market data, operator commands and a clock.

    effects = manager.receive(input, now)        now: injected clock, ns since the epoch

Inputs:

    OrderRequest(order, session_id?, trader_tag?)     an algo's new_order, after the venue rules
    ModifyRequest(modify, session_id?, trader_tag?)   an algo's modify_order
    SignalRequest(signal, session_id?, trader_tag?)   an algo's signal
    OrderEvent                                         an order event the tracker journaled
    VenueRefused                                       the venue refused a cancel or modify
    Ticker | Trade                                     the account's market data
    EquityUpdate(equity)                               for sizing signals by risk_fraction
    LimitsUpdate(limits)                               new limits (config or operator)
    KillSwitch(active, scope, reason, by)              operator: stop / resume trading
    ClockTick()                                        time passes (time exits), ~1/s

and `check_positions(venue_positions, now)` after every (re)connect: corrects the positions
the venue reports differently (a journaled `PositionCorrected`; see the method).

Effects, in the order to carry them out:

    Journal(record)             append `record` (kind "risk") before any effect after it
    SubmitOrder(order, session) hand a new_order to the order tracker (idempotent by its id)
    SubmitCancel(id, reason)    hand a cancel_order to the order tracker
    SubmitModify(modify)        hand a modify_order to the order tracker
    Notify(message, session)    send to the algo session (None: the account's sessions):
                                order_rejected (a risk refusal, code + sentence),
                                order_snapshot (a repeated refused order), signal_accepted,
                                signal_rejected, exit_fired
    RefuseRequest(id, code, message, session)
                                answer a request with an `error` frame; nothing was journaled
    Alert(message, plan_id)     an exit needs a human (it could not close the position)

Notices a session must not miss — an order refusal, a signal's first answer, an exit that
fired — follow the `Journal` of the record they tell of; `record_notice(account, record)`
rebuilds each from its record alone (session and message), so the shell journals the record
under that session (giving it the session's `seq`), stamps the `Notify` it pairs with
(`notice_key`) and replays it after a resume. Answers to repeats are not journaled.

Guarantees:
* No accepted order or signal can take the account past a limit, whatever subset of its
  working orders fills (see `limits`); a kill switch refuses every new order and signal and
  cancels every working order; exits do not fire while it is on.
* Each exit fires at most once; closing orders never take a position through zero.
* Idempotency: a repeated client_order_id or signal_id creates nothing and gets the first
  outcome again.

Feeding it (the shell's side of the contract):
* order events: feed the events the *tracker* journals (its `Journal` entries), not the
  venue's raw reports, so the manager sees exactly what the journal holds;
* when the tracker refuses a `SubmitCancel` or `SubmitModify` (`OrderStateError`), feed a
  `VenueRefused` for it, so a modification let through stops counting;
* the tracker answers a re-submitted order it already knows with a snapshot; the shell need
  not forward that to the session.

Recovery: durable state changes only by applying journaled records (`records`) and the order
events the tracker journaled. Rebuild a manager by `replay()`-ing both kinds (and journaled
`VenueRefused`), in journal order, into a fresh one built with the account, the configured
limits and the venue's specs, then call `resume(now)` and carry out its effects: it
re-submits orders the tracker may never have received and resumes closing exits. Limits
changed at run time are journaled, so they win over the configured ones after a restart;
feed the configuration as a `LimitsUpdate` to make an edited file win instead.
`snapshot()`/`restore()` give the same state as one JSON-ready object.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from protocol.errors import ErrorCode
from protocol.market import InstrumentSpec, Side, Ticker, Trade
from protocol.orders import (
    CancelReason,
    ModifyOrder,
    NewOrder,
    OrderAccepted,
    OrderCancelled,
    OrderEvent,
    OrderExpired,
    OrderFilled,
    OrderModified,
    OrderPartiallyFilled,
    OrderRejected,
    OrderSnapshot,
    OrderStatus,
    Position,
)
from protocol.risk import RiskLimits
from protocol.signals import (
    ExitFired,
    ExitKind,
    ExitLevels,
    Signal,
    SignalAccepted,
    SignalRejected,
)
from workers.broker.orders import VenueRefused
from workers.broker.retention import RETAIN_FINISHED, Retention, reused_id_message
from workers.broker.risk import signals as sizing
from workers.broker.risk.amounts import ZERO, plain
from workers.broker.risk.exits import (
    MAX_CLOSE_ORDERS,
    ExitBook,
    ExitPlan,
    PlanState,
    close_quantity,
    closing_side,
    event_price,
    moved_anchor,
    price_trigger,
    time_due,
)
from workers.broker.risk.limits import AccountView, Refuse, RiskEngine
from workers.broker.risk.positions import PositionBook
from workers.broker.risk.prices import MarketPrices
from workers.broker.risk.records import (
    RISK_RECORD,
    CloseIssued,
    ExitAbandoned,
    ExitTriggered,
    KillScope,
    KillSwitchChanged,
    LimitsChanged,
    ModifyAdmitted,
    ModifyRefused,
    OrderAdmitted,
    OrderRefused,
    Origin,
    PositionCorrected,
    RiskRecord,
    SignalAdopted,
    SignalRefused,
    TrailMoved,
)
from workers.broker.risk.signals import ORDER_ID_PREFIX, SignalRefusal
from workers.broker.risk.working import OrderLedger

_ORDER_EVENTS = (
    OrderAccepted,
    OrderRejected,
    OrderPartiallyFilled,
    OrderFilled,
    OrderCancelled,
    OrderExpired,
    OrderModified,
    OrderSnapshot,
)
_MIN_RATE_MEMORY_NS = 60 * 1_000_000_000


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class OrderRequest:
    order: NewOrder
    session_id: str | None = None
    trader_tag: str | None = None


@dataclass(frozen=True, slots=True)
class ModifyRequest:
    modify: ModifyOrder
    session_id: str | None = None
    trader_tag: str | None = None


@dataclass(frozen=True, slots=True)
class SignalRequest:
    signal: Signal
    session_id: str | None = None
    trader_tag: str | None = None


@dataclass(frozen=True, slots=True)
class EquityUpdate:
    equity: Decimal


@dataclass(frozen=True, slots=True)
class LimitsUpdate:
    limits: RiskLimits


@dataclass(frozen=True, slots=True)
class KillSwitch:
    active: bool
    scope: KillScope = KillScope.ACCOUNT
    reason: str = ""
    by: str = "operator"


@dataclass(frozen=True, slots=True)
class ClockTick:
    """Time passed; evaluate time exits and closing exits."""


ManagerInput = (
    OrderRequest
    | ModifyRequest
    | SignalRequest
    | OrderEvent
    | VenueRefused
    | Ticker
    | Trade
    | EquityUpdate
    | LimitsUpdate
    | KillSwitch
    | ClockTick
)


# ---------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class Journal:
    """Append `record` to the account journal before carrying out the effects after it."""

    record: RiskRecord


@dataclass(frozen=True, slots=True)
class SubmitOrder:
    order: NewOrder
    session_id: str | None


@dataclass(frozen=True, slots=True)
class SubmitCancel:
    client_order_id: str
    reason: CancelReason


@dataclass(frozen=True, slots=True)
class SubmitModify:
    modify: ModifyOrder


Notice = OrderRejected | OrderSnapshot | SignalAccepted | SignalRejected | ExitFired


@dataclass(frozen=True, slots=True)
class Notify:
    message: Notice
    session_id: str | None


@dataclass(frozen=True, slots=True)
class RefuseRequest:
    client_order_id: str
    code: ErrorCode
    message: str
    session_id: str | None


@dataclass(frozen=True, slots=True)
class Alert:
    message: str
    plan_id: str


Effect = Journal | SubmitOrder | SubmitCancel | SubmitModify | Notify | RefuseRequest | Alert


@dataclass(frozen=True, slots=True)
class PositionCheck:
    """What `check_positions` found: the corrections to journal (as effects), the held
    instruments the venue did not report, and those left alone because orders are working."""

    effects: list[Effect]
    unreported: list[str]
    working: list[str]


# ---------------------------------------------------------------- the manager


class PositionManager:
    """Risk limits, positions, signals and exits of one account."""

    def __init__(
        self,
        account: str,
        limits: RiskLimits,
        specs: Mapping[str, InstrumentSpec],
        *,
        retain_finished: int = RETAIN_FINISHED,
    ) -> None:
        self.account = account
        self.engine = RiskEngine(limits)
        self.specs = dict(specs)
        self.prices = MarketPrices()
        self.equity: Decimal | None = None
        # Finished orders (and orders refused here) kept whole: older ones leave only their
        # client_order_id behind (`OrderLedger.retired`), so memory does not grow without end.
        self._retain = retain_finished
        self.orders = OrderLedger(retain_finished)
        self.positions = PositionBook(account)
        self.exits = ExitBook()
        self._kill: dict[KillScope, KillSwitchChanged] = {}
        # Admission times, oldest first; the view hands the deque itself to the engine
        # (read-only there), so no check copies it.
        self._admitted_at: deque[int] = deque()
        self._refused: dict[str, OrderRefused] = {}
        # Signals answered (adopted or refused), kept whole up to the same bound; an older
        # one leaves only its signal_id behind, which stays taken.
        self._signals: dict[str, SignalAdopted | SignalRefused] = {}
        self._signal_retention = Retention(retain_finished)

    # ------------------------------------------------------------ queries

    @property
    def limits(self) -> RiskLimits:
        return self.engine.limits

    @property
    def kill_switch(self) -> str | None:
        """Which kill switch stops trading and why; None when trading is allowed."""
        for scope, label in (
            (KillScope.FLEET, "the fleet-wide"),
            (KillScope.ACCOUNT, "the account"),
        ):
            record = self._kill.get(scope)
            if record is not None:
                why = f"{record.by}: {record.reason}" if record.reason else record.by
                return f"{label} kill switch ({why})"
        return None

    def view(self, now: int) -> AccountView:
        """The account as the risk engine reads it at `now`."""
        return AccountView(
            holdings=self.positions.holdings(),
            working=self.orders.views(),
            admitted_at=self._admitted_at,
            daily_loss=self.positions.daily_loss(now, self.limits.currency),
            kill_switch=self.kill_switch,
        )

    def _checked_view(self, now: int) -> AccountView:
        """What a check needs: the whole view, or only the kill switch when no limit is set."""
        if self.engine.restricts:
            return self.view(now)
        return AccountView(kill_switch=self.kill_switch)

    def position_list(self) -> list[Position]:
        return self.positions.positions()

    def position_report(self) -> list[Position]:
        """Every position with its PnL — realized from the fills, unrealized at the reference
        price (absent without one) — and the fees paid per currency."""
        out = []
        for position in self.positions.positions():
            book = self.positions.get(position.instrument)
            out.append(
                position.model_copy(
                    update={
                        "unrealized_pnl": self.unrealized_pnl(position.instrument),
                        "fees": dict(sorted(book.fees.items())) if book is not None else {},
                    }
                )
            )
        return out

    def unrealized_pnl(self, instrument: str) -> Decimal | None:
        """Open PnL of the position at the reference price; None without a price."""
        position = self.positions.get(instrument)
        mark = self.prices.reference_price(instrument)
        if position is None or mark is None:
            return None
        return position.unrealized(mark)

    # ------------------------------------------------------------ the entry point

    def receive(self, message: ManagerInput, now: int) -> list[Effect]:
        """Take one input at time `now`; return the effects to carry out, in order."""
        if isinstance(message, OrderRequest):
            return self._on_order(message, now)
        if isinstance(message, ModifyRequest):
            return self._on_modify(message, now)
        if isinstance(message, SignalRequest):
            return self._on_signal(message, now)
        if isinstance(message, _ORDER_EVENTS):
            self._apply_event(message)
            return self._housekeeping(now)
        if isinstance(message, VenueRefused):
            self._apply_refusal(message)
            return []
        if isinstance(message, Ticker | Trade):
            self.prices.update(message)
            return self._on_market(message, now) + self._housekeeping(now)
        if isinstance(message, EquityUpdate):
            self.equity = message.equity
            return []
        if isinstance(message, LimitsUpdate):
            if message.limits == self.limits:
                return []
            return [self._commit(LimitsChanged(limits=message.limits, at=now))]
        if isinstance(message, KillSwitch):
            return self._on_kill_switch(message, now)
        if isinstance(message, ClockTick):
            return self._housekeeping(now)
        raise TypeError(f"not an input of the position manager: {type(message).__name__}")

    # ------------------------------------------------------------ recovery

    def replay(self, entry: RiskRecord | OrderEvent | VenueRefused) -> None:
        """Apply one journaled entry without deciding anything (rebuilding after a restart).
        Feed the manager's records and the tracker's order events in journal order."""
        if isinstance(entry, _ORDER_EVENTS):
            self._apply_event(entry)
        elif isinstance(entry, VenueRefused):
            self._apply_refusal(entry)
        else:
            self._apply(entry)

    def resume(self, now: int) -> list[Effect]:
        """After a replay: re-submit admitted orders the tracker has not reported on (it may
        never have received them; their ids make a second submit harmless), cancel working
        orders again if a kill switch is on, and carry on closing exits."""
        effects: list[Effect] = []
        for order in self.orders.working():
            request = self.orders.request_of(order.client_order_id)
            if request is not None and not order.seen_event:
                effects.append(SubmitOrder(request, order.session_id))
        if self._kill:
            effects += [
                SubmitCancel(o.client_order_id, CancelReason.KILL_SWITCH)
                for o in self.orders.working()
            ]
        return effects + self._housekeeping(now)

    def snapshot(self) -> dict[str, Any]:
        """The durable state as JSON-ready data. Market prices and equity are not in it: they
        come back with the market data."""
        return {
            "account": self.account,
            "limits": self.limits.model_dump(mode="json"),
            "kill": {s.value: r.model_dump(mode="json") for s, r in sorted(self._kill.items())},
            "orders": self.orders.snapshot(),
            "positions": self.positions.snapshot(),
            "exits": self.exits.snapshot(),
            "admitted_at": list(self._admitted_at),
            "refused": {k: r.model_dump(mode="json") for k, r in self._refused.items()},
            "signals": {k: r.model_dump(mode="json") for k, r in self._signals.items()},
            "signal_retention": self._signal_retention.snapshot(),
        }

    @classmethod
    def restore(cls, data: dict[str, Any], specs: Mapping[str, InstrumentSpec]) -> PositionManager:
        """The manager `snapshot()` described."""
        manager = cls(data["account"], RiskLimits.model_validate(data["limits"]), specs,
                      retain_finished=data["orders"]["retain_finished"])
        manager._kill = {
            KillScope(s): KillSwitchChanged.model_validate(r) for s, r in data["kill"].items()
        }
        manager.orders = OrderLedger.restore(data["orders"])
        manager.positions = PositionBook.restore(data["account"], data["positions"])
        manager.exits = ExitBook.restore(data["exits"])
        manager._admitted_at = deque(data["admitted_at"])
        manager._refused = {k: OrderRefused.model_validate(r) for k, r in data["refused"].items()}
        manager._signals = {k: RISK_RECORD.validate_python(r) for k, r in data["signals"].items()}
        manager._signal_retention = Retention.restore(data["signal_retention"])
        return manager

    def check_positions(self, venue: Sequence[Position], now: int) -> PositionCheck:
        """Compare the positions the fills gave with those the venue reports (after a
        (re)connect and the order reconciliation). Each instrument whose quantity differs is
        corrected to the venue's by a journaled `PositionCorrected`. Instruments the venue
        does not report (a spot venue reports none) are not compared, nor are instruments
        with orders working — a fill on its way would make a false difference."""
        reported = {p.instrument: p for p in venue}
        effects: list[Effect] = []
        working: list[str] = []
        for instrument in sorted(reported):
            theirs = reported[instrument]
            ours = self.positions.qty(instrument)
            if theirs.qty == ours:
                continue
            if any(True for _ in self.orders.working(instrument)):
                working.append(instrument)
                continue
            record = PositionCorrected(
                instrument=instrument,
                ours_qty=ours,
                venue_qty=theirs.qty,
                venue_avg_price=theirs.avg_price,
                at=now,
            )
            effects.append(self._commit(record))
        held = {p.instrument for p in self.positions.positions() if p.qty != 0}
        return PositionCheck(
            effects=effects,
            unreported=sorted(held - set(reported)),
            working=working,
        )

    # ------------------------------------------------------------ orders

    def _on_order(self, request: OrderRequest, now: int) -> list[Effect]:
        order, session = request.order, request.session_id
        cid = order.client_order_id
        if order.account != self.account:
            return [
                RefuseRequest(
                    cid,
                    ErrorCode.FORBIDDEN,
                    f"this position manager holds account {self.account}, not {order.account}",
                    session,
                )
            ]
        refused = self._refused.get(cid)
        if refused is not None:
            return [Notify(_rejection(refused, OrderSnapshot), session)]
        if self.orders.get(cid) is not None:
            return [SubmitOrder(order, session)]  # the tracker answers with its state
        if self.orders.retired(cid):
            return [
                RefuseRequest(cid, ErrorCode.DUPLICATE_ORDER, reused_id_message(cid), session)
            ]
        if cid.startswith(ORDER_ID_PREFIX):
            return [
                RefuseRequest(
                    cid,
                    ErrorCode.INVALID_ORDER,
                    f"client_order_id prefix {ORDER_ID_PREFIX!r} is reserved for "
                    "the position manager's own orders",
                    session,
                )
            ]
        verdict = self.engine.check(
            order, self._checked_view(now), self.prices, now, trader_tag=request.trader_tag
        )
        if isinstance(verdict, Refuse):
            record = OrderRefused(
                order=order,
                code=verdict.code,
                message=verdict.message,
                session_id=session,
                trader_tag=request.trader_tag,
                at=now,
            )
            return [self._commit(record), Notify(_rejection(record, OrderRejected), session)]
        admitted = OrderAdmitted(
            order=order, session_id=session, trader_tag=request.trader_tag, at=now
        )
        return [self._commit(admitted), SubmitOrder(order, session)]

    def _on_modify(self, request: ModifyRequest, now: int) -> list[Effect]:
        modify = request.modify
        tracked = self.orders.get(modify.client_order_id)
        if tracked is None or not tracked.is_working or modify.account != self.account:
            return [SubmitModify(modify)]  # the tracker explains why not
        verdict = self.engine.check_modify(
            modify, self._checked_view(now), self.prices, now, trader_tag=request.trader_tag
        )
        if isinstance(verdict, Refuse):
            record = ModifyRefused(
                modify=modify,
                code=verdict.code,
                message=verdict.message,
                session_id=request.session_id,
                at=now,
            )
            return [
                self._commit(record),
                RefuseRequest(
                    modify.client_order_id, verdict.code, verdict.message, request.session_id
                ),
            ]
        return [self._commit(ModifyAdmitted(modify=modify, at=now)), SubmitModify(modify)]

    # ------------------------------------------------------------ signals

    def _on_signal(self, request: SignalRequest, now: int) -> list[Effect]:
        signal, session = request.signal, request.session_id
        if signal.account != self.account:  # not ours: nothing to journal
            message = f"this position manager holds account {self.account}, not {signal.account}"
            rejected = SignalRejected(
                account=signal.account,
                signal_id=signal.signal_id,
                code=ErrorCode.FORBIDDEN,
                message=message,
                ts=now,
            )
            return [Notify(rejected, session)]
        prior = self._signals.get(signal.signal_id)
        if prior is not None:
            return [Notify(self._signal_notice(prior), session)]
        if self._signal_retention.gone(signal.signal_id):
            message = (f"signal_id {signal.signal_id!r} belongs to a signal answered long ago; "
                       "choose a new one")
            return [Notify(SignalRejected(account=signal.account, signal_id=signal.signal_id,
                                          code=ErrorCode.DUPLICATE_SIGNAL, message=message,
                                          ts=now), session)]
        try:
            return self._adopt(request, now)
        except SignalRefusal as refusal:
            record = SignalRefused(
                signal=signal,
                code=refusal.code,
                message=refusal.message,
                session_id=session,
                at=now,
            )
            return [self._commit(record), Notify(self._signal_notice(record), session)]

    def _adopt(self, request: SignalRequest, now: int) -> list[Effect]:
        signal, session = request.signal, request.session_id
        instrument = signal.instrument
        kill = self.kill_switch
        if kill is not None:
            raise SignalRefusal(
                ErrorCode.KILL_SWITCH,
                f"trading is stopped by {kill}; signals are refused until an operator clears it",
            )
        if signal.expires_at is not None and now >= signal.expires_at:
            raise SignalRefusal(
                ErrorCode.SIGNAL_EXPIRED,
                f"signal {signal.signal_id} expired at {signal.expires_at} ns, "
                f"before it could be acted on at {now} ns",
            )
        spec = self.specs.get(instrument)
        if spec is None:
            raise SignalRefusal(
                ErrorCode.UNKNOWN_INSTRUMENT, f"the venue does not list {instrument}"
            )
        self._check_no_conflict(signal)
        plan = sizing.size(signal, spec, self.prices.reference_price(instrument), self.equity)
        position = self.positions.qty(instrument)
        if plan.target_qty == 0:
            return self._adopt_flat(request, spec, position, now)
        order = sizing.entry_order(signal, plan.target_qty, position, spec)
        if order is not None:
            verdict = self.engine.check(
                order, self._checked_view(now), self.prices, now, trader_tag=request.trader_tag
            )
            if isinstance(verdict, Refuse):
                raise SignalRefusal(verdict.code, verdict.message)
        record = SignalAdopted(
            signal=signal,
            session_id=session,
            trader_tag=request.trader_tag,
            target_qty=plan.target_qty,
            position_qty=position,
            order=order,
            at=now,
        )
        effects: list[Effect] = [self._commit(record)]
        if order is not None:
            effects.append(SubmitOrder(order, session))
        return effects + [Notify(self._signal_notice(record), session)]

    def _adopt_flat(
        self, request: SignalRequest, spec: InstrumentSpec, position: Decimal, now: int
    ) -> list[Effect]:
        signal, session = request.signal, request.session_id
        cancel = [o.client_order_id for o in self.orders.working(signal.instrument)]
        close = None
        if position != 0:
            side = closing_side(position)
            qty = close_quantity(
                position, self.orders.reducing_remaining(signal.instrument, side), spec
            )
            if qty > 0:
                close = sizing.close_order(
                    self.account, signal.signal_id, 1, signal.instrument, side, qty
                )
        record = SignalAdopted(
            signal=signal,
            session_id=session,
            trader_tag=request.trader_tag,
            target_qty=ZERO,
            position_qty=position,
            order=close,
            cancel=cancel,
            at=now,
        )
        effects: list[Effect] = [self._commit(record)]
        effects += [SubmitCancel(cid, CancelReason.RISK) for cid in cancel]
        if close is not None:
            effects.append(SubmitOrder(close, session))
        return effects + [Notify(self._signal_notice(record), session)]

    def _check_no_conflict(self, signal: Signal) -> None:
        """A signal's target counts from the filled position, so it waits for an earlier
        signal's entry to finish (or be cancelled by a flat signal) and for a close."""
        active = self.exits.active_for(signal.instrument)
        if active is not None and active.state is PlanState.CLOSING:
            what = f"its {active.fired} exit" if active.fired is not None else "a flat signal"
            raise SignalRefusal(
                ErrorCode.CONFLICT,
                f"{signal.instrument} is being closed by {what} (signal "
                f"{active.plan_id}); send the signal again once it is flat",
            )
        if signal.target_side is None:
            return  # flat cancels whatever is working
        for entry in self.orders.working(signal.instrument):
            if entry.origin is Origin.SIGNAL:
                raise SignalRefusal(
                    ErrorCode.CONFLICT,
                    f"entry order {entry.client_order_id} of signal {entry.plan_id} is still "
                    f"working on {signal.instrument}; wait for it to finish or "
                    "send a flat signal",
                )

    def _signal_notice(
        self, record: SignalAdopted | SignalRefused
    ) -> SignalAccepted | SignalRejected:
        return signal_notice(record)

    # ------------------------------------------------------------ exits

    def _on_market(self, event: Ticker | Trade, now: int) -> list[Effect]:
        effects: list[Effect] = []
        plan = self.exits.active_for(event.instrument)
        if plan is None or plan.state is not PlanState.ARMED or plan.side is None:
            return effects
        position = self.positions.qty(plan.instrument)
        if not plan.holds_side(position):
            return effects  # nothing to protect yet (or any more)
        price = event_price(event, plan.side.opposite)
        if price is None:
            return effects
        kind = None if self._kill else price_trigger(plan, price)
        if kind is not None:
            return self._fire(plan, kind, price, now)
        anchor = moved_anchor(plan, price)
        if anchor is not None:
            effects.append(self._commit(TrailMoved(plan_id=plan.plan_id, anchor=anchor, at=now)))
        return effects

    def _housekeeping(self, now: int) -> list[Effect]:
        """Time exits that are due, and further closes for exits already closing."""
        if self._kill:
            return []
        effects: list[Effect] = []
        for plan in self.exits.active():
            if plan.state is PlanState.ARMED and time_due(plan, now):
                effects += self._fire(plan, ExitKind.TIME, None, now)
        for plan in self.exits.active():
            if plan.state is PlanState.CLOSING:
                effects += self._drive_close(plan, now)
        return effects

    def _fire(
        self, plan: ExitPlan, kind: ExitKind, price: Decimal | None, now: int
    ) -> list[Effect]:
        instrument = plan.instrument
        position = self.positions.qty(instrument)
        cancel = [o.client_order_id for o in self.orders.working(instrument)]
        close = None
        spec = self.specs.get(instrument)
        if plan.holds_side(position) and spec is not None:
            side = closing_side(position)
            qty = close_quantity(position, self.orders.reducing_remaining(instrument, side), spec)
            if qty > 0:
                close = sizing.close_order(
                    self.account, plan.plan_id, len(plan.close_orders) + 1, instrument, side, qty
                )
        record = ExitTriggered(
            plan_id=plan.plan_id,
            kind=kind,
            instrument=instrument,
            session_id=plan.session_id,
            price=price,
            position_qty=position,
            cancel=cancel,
            close=close,
            at=now,
        )
        effects: list[Effect] = [self._commit(record)]
        effects += [SubmitCancel(cid, CancelReason.RISK) for cid in cancel]
        if close is not None:
            effects.append(SubmitOrder(close, plan.session_id))
        return effects + [Notify(exit_notice(self.account, record, instrument), plan.session_id)]

    def _drive_close(self, plan: ExitPlan, now: int) -> list[Effect]:
        instrument = plan.instrument
        position = self.positions.qty(instrument)
        if not plan.holds_side(position):
            return []  # flat (or flipped by others); done once its orders finish
        if any(self._working(cid) for cid in plan.close_orders):
            return []  # a close is on its way
        side = closing_side(position)
        spec = self.specs.get(instrument)
        if spec is None:
            return self._abandon(plan, f"the venue no longer lists {instrument}", now)
        reducing = self.orders.reducing_remaining(instrument, side)
        qty = close_quantity(position, reducing, spec)
        if qty == 0:
            if reducing == 0 and not any(self._working(cid) for cid in plan.cancel_orders):
                return self._abandon(
                    plan,
                    f"{plain(abs(position))} {instrument} is left, below "
                    f"the minimum order {plain(spec.min_qty)}",
                    now,
                )
            return []  # closing-side orders may still fill
        if len(plan.close_orders) >= MAX_CLOSE_ORDERS:
            return self._abandon(
                plan,
                f"{len(plan.close_orders)} closing orders left {plain(position)} {instrument} open",
                now,
            )
        order = sizing.close_order(
            self.account, plan.plan_id, len(plan.close_orders) + 1, instrument, side, qty
        )
        return [
            self._commit(CloseIssued(plan_id=plan.plan_id, order=order, at=now)),
            SubmitOrder(order, plan.session_id),
        ]

    def _abandon(self, plan: ExitPlan, reason: str, now: int) -> list[Effect]:
        return [
            self._commit(ExitAbandoned(plan_id=plan.plan_id, reason=reason, at=now)),
            Alert(
                f"exit of signal {plan.plan_id} on {plan.instrument} gave up: {reason}",
                plan.plan_id,
            ),
        ]

    def _working(self, client_order_id: str) -> bool:
        order = self.orders.get(client_order_id)
        return order is not None and order.is_working

    # ------------------------------------------------------------ kill switch

    def _on_kill_switch(self, command: KillSwitch, now: int) -> list[Effect]:
        current = self._kill.get(command.scope)
        if not command.active and current is None:
            return []
        if (
            command.active
            and current is not None
            and (current.reason, current.by) == (command.reason, command.by)
        ):
            return []
        record = KillSwitchChanged(
            scope=command.scope, active=command.active, reason=command.reason, by=command.by, at=now
        )
        working = [o.client_order_id for o in self.orders.working()]
        effects: list[Effect] = [self._commit(record)]
        if command.active:
            return effects + [SubmitCancel(cid, CancelReason.KILL_SWITCH) for cid in working]
        return effects + self._housekeeping(now)

    # ------------------------------------------------------------ applying facts

    def _commit(self, record: RiskRecord) -> Journal:
        self._apply(record)
        return Journal(record)

    def _apply(self, record: RiskRecord) -> None:
        """The one place durable state changes on a decision; the same live and in replay."""
        if isinstance(record, OrderAdmitted):
            self.orders.admit(
                record.order,
                Origin.ALGO,
                session_id=record.session_id,
                trader_tag=record.trader_tag,
            )
            self._note_admission(record.at)
        elif isinstance(record, OrderRefused):
            self._refused[record.order.client_order_id] = record
            while len(self._refused) > self._retain:  # the oldest refusal goes, its id stays
                oldest = next(iter(self._refused))
                del self._refused[oldest]
                self.orders.retire(oldest)
        elif isinstance(record, ModifyAdmitted):
            self.orders.request_modify(record.modify)
        elif isinstance(record, ModifyRefused):
            pass
        elif isinstance(record, SignalAdopted):
            self._apply_signal(record)
        elif isinstance(record, SignalRefused):
            self._remember_signal(record)
        elif isinstance(record, TrailMoved):
            plan = self.exits.get(record.plan_id)
            if plan is not None:
                plan.trail_anchor = record.anchor
        elif isinstance(record, ExitTriggered):
            self._apply_trigger(record)
        elif isinstance(record, CloseIssued):
            plan = self.exits.get(record.plan_id)
            if plan is not None:
                self._admit_close(plan, record.order, record.at)
                self._settle(plan.instrument)
        elif isinstance(record, ExitAbandoned):
            plan = self.exits.get(record.plan_id)
            if plan is not None:
                self.exits.retire(plan, record.reason)
        elif isinstance(record, PositionCorrected):
            self.positions.correct(record.instrument, record.venue_qty, record.venue_avg_price)
            self._settle(record.instrument)
        elif isinstance(record, LimitsChanged):
            self.engine.update(record.limits)
        elif isinstance(record, KillSwitchChanged):
            if record.active:
                self._kill[record.scope] = record
                for order in list(self.orders.working()):
                    self.orders.request_cancel(order.client_order_id)
            else:
                self._kill.pop(record.scope, None)
        else:  # pragma: no cover - the union is exhaustive
            raise TypeError(f"not a risk record: {type(record).__name__}")

    def _remember_signal(self, record: SignalAdopted | SignalRefused) -> None:
        """Keep the answer to a repeat of the signal, within the retention bound."""
        signal_id = record.signal.signal_id
        if signal_id not in self._signals:
            for gone in self._signal_retention.finished(signal_id):
                self._signals.pop(gone, None)
        self._signals[signal_id] = record

    def _apply_signal(self, record: SignalAdopted) -> None:
        signal = record.signal
        self._remember_signal(record)
        instrument = signal.instrument
        order = record.order
        if record.target_qty == 0:
            for cid in record.cancel:
                self.orders.request_cancel(cid)
            plan = ExitPlan(
                plan_id=signal.signal_id,
                instrument=instrument,
                side=None,
                session_id=record.session_id,
                state=PlanState.CLOSING,
                cancel_orders=list(record.cancel),
            )
            self.exits.add(plan)
            if order is not None:
                self._admit_close(plan, order, record.at)
        else:
            if order is not None:
                self.orders.admit(
                    order,
                    Origin.SIGNAL,
                    session_id=record.session_id,
                    trader_tag=record.trader_tag,
                    plan_id=signal.signal_id,
                )
                self._note_admission(record.at)
            previous = self.exits.active_for(instrument)
            if signal.has_exits:
                self.exits.add(
                    ExitPlan(
                        plan_id=signal.signal_id,
                        instrument=instrument,
                        side=Side.BUY if record.target_qty > 0 else Side.SELL,
                        session_id=record.session_id,
                        stop_loss=signal.stop_loss,
                        take_profit=signal.take_profit,
                        trailing_distance=signal.trailing_distance,
                        time_exit_at=signal.time_exit_at,
                        entry_orders=[] if order is None else [order.client_order_id],
                    )
                )
            elif previous is not None:
                self.exits.retire(previous, f"replaced by signal {signal.signal_id}")
        self._settle(instrument)

    def _apply_trigger(self, record: ExitTriggered) -> None:
        plan = self.exits.get(record.plan_id)
        if plan is None:
            return
        plan.state = PlanState.CLOSING
        plan.fired = record.kind
        plan.cancel_orders = list(record.cancel)
        for cid in record.cancel:
            self.orders.request_cancel(cid)
        if record.close is not None:
            self._admit_close(plan, record.close, record.at)
        self._settle(plan.instrument)

    def _admit_close(self, plan: ExitPlan, order: NewOrder, at: int) -> None:
        self.orders.admit(order, Origin.EXIT, session_id=plan.session_id, plan_id=plan.plan_id)
        plan.close_orders.append(order.client_order_id)
        self._note_admission(at)

    def _note_admission(self, at: int) -> None:
        admitted = self._admitted_at
        if admitted and at < admitted[-1]:  # the clock stepped back: keep them in order
            bisect.insort(admitted, at)
        else:
            admitted.append(at)
        horizon = at - max(_MIN_RATE_MEMORY_NS, self.engine.longest_rate_window_ns)
        while admitted and admitted[0] <= horizon:
            admitted.popleft()

    def _apply_event(self, event: OrderEvent) -> None:
        fill = self.orders.on_event(event)
        if fill is not None:
            self.positions.apply(fill)
        self._settle(event.instrument)

    def _apply_refusal(self, refusal: VenueRefused) -> None:
        if refusal.action == "modify":
            self.orders.modify_refused(refusal.client_order_id)
        elif refusal.action == "cancel":
            self.orders.cancel_refused(refusal.client_order_id)

    def _settle(self, instrument: str) -> None:
        """Retire the instrument's plan once there is nothing left for it to do. Depends on
        durable state only, so replay retires plans exactly where the live run did."""
        plan = self.exits.active_for(instrument)
        if plan is None:
            return
        position = self.positions.qty(instrument)
        if plan.holds_side(position):
            return
        if plan.state is PlanState.ARMED:
            if not any(self._working(cid) for cid in plan.entry_orders):
                self.exits.retire(plan, "the position was closed")
        elif not any(self._working(cid) for cid in (*plan.cancel_orders, *plan.close_orders)):
            self.exits.retire(plan, "closed" if plan.fired is not None else "flat")


def signal_notice(record: SignalAdopted | SignalRefused) -> SignalAccepted | SignalRejected:
    """The answer a signal's record gives, from the record alone: the same live, to a
    repeated signal_id and in a replay."""
    signal = record.signal
    if isinstance(record, SignalRefused):
        return SignalRejected(
            account=signal.account,
            signal_id=signal.signal_id,
            code=record.code,
            message=record.message,
            ts=record.at,
        )
    order = record.order
    holds_exits = record.target_qty != 0 and signal.has_exits
    return SignalAccepted(
        account=signal.account,
        signal_id=signal.signal_id,
        instrument=signal.instrument,
        target_qty=record.target_qty,
        position_qty=record.position_qty,
        client_order_id=None if order is None else order.client_order_id,
        side=None if order is None else order.side,
        qty=None if order is None else order.qty,
        exits=ExitLevels(
            stop_loss=signal.stop_loss,
            take_profit=signal.take_profit,
            trailing_distance=signal.trailing_distance,
            time_exit_at=signal.time_exit_at,
        )
        if holds_exits
        else None,
        ts=record.at,
    )


def exit_notice(account: str, record: ExitTriggered, instrument: str) -> ExitFired:
    """The `exit_fired` an `ExitTriggered` record tells the signal's session."""
    close = record.close
    return ExitFired(
        account=account,
        signal_id=record.plan_id,
        instrument=instrument,
        kind=record.kind,
        trigger_price=record.price,
        position_qty=record.position_qty,
        client_order_id=None if close is None else close.client_order_id,
        close_qty=ZERO if close is None else close.qty,
        ts=record.at,
    )


def record_notice(account: str, record: RiskRecord) -> tuple[str, Notice] | None:
    """(session, message) when `record` is a decision its session is told of as an event:
    an order refusal, a signal's first answer, an exit that fired. The shell journals such
    a record under that session (which numbers it with the session's `seq`) and rebuilds
    the message from the record to replay it. None for the other records, and for those
    with no session (or, for an exit journaled before records named their instrument)."""
    session = getattr(record, "session_id", None)
    if session is None:
        return None
    if isinstance(record, OrderRefused):
        return session, rejection_notice(record)
    if isinstance(record, SignalAdopted | SignalRefused):
        return session, signal_notice(record)
    if isinstance(record, ExitTriggered) and record.instrument is not None:
        return session, exit_notice(account, record, record.instrument)
    return None


def notice_key(message: Notice) -> tuple[str, str]:
    """What pairs a `Notify` with the journaled record it tells of: (type, order or signal
    id). Unique within one call's effects."""
    ident = getattr(message, "client_order_id", None) if isinstance(
        message, OrderRejected | OrderSnapshot) else message.signal_id
    return message.type, ident or ""


def rejection_notice(record: OrderRefused) -> OrderRejected:
    """The `order_rejected` an `OrderRefused` record told its session (for a replay)."""
    rejected: OrderRejected = _rejection(record, OrderRejected)
    return rejected


def _rejection(record: OrderRefused, kind: type[OrderRejected | OrderSnapshot]) -> Any:
    order = record.order
    extra: dict[str, Any] = {}
    if kind is OrderRejected:
        extra = {"reason": record.code, "message": record.message}
    return kind(
        account=order.account,
        client_order_id=order.client_order_id,
        instrument=order.instrument,
        side=order.side,
        order_type=order.order_type,
        qty=order.qty,
        price=order.price,
        time_in_force=order.time_in_force,
        status=OrderStatus.REJECTED,
        filled_qty=ZERO,
        remaining_qty=ZERO,
        ts=record.at,
        **extra,
    )
