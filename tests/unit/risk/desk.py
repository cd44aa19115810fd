"""A test bench for the position manager: the manager beside a real order tracker, a venue
the test drives by hand, and the journal the two would write.

`Desk.send(input)` hands one input to the manager and carries out its effects the way the
Broker shell will: journal records, submit orders/cancels/modifies to the tracker, let the
venue acknowledge them, feed every order event the tracker journals back to the manager.
Fills happen only when the test calls `fill()`. `restart()` rebuilds a fresh manager from the
journal, as after a kill -9.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from protocol.market import InstrumentSpec, Ticker, Trade
from protocol.orders import (
    CancelOrder,
    CancelReason,
    Fill,
    Liquidity,
    ModifyOrder,
    NewOrder,
    OrderAccepted,
    OrderCancelled,
    OrderEvent,
    OrderFilled,
    OrderPartiallyFilled,
    OrderStatus,
)
from protocol.risk import RiskLimits
from workers.broker.orders import (
    CancelAtVenue,
    ModifyAtVenue,
    OrderStateError,
    OrderTracker,
    PlaceAtVenue,
    VenueRefused,
)
from workers.broker.orders import (
    Journal as TrackerJournal,
)
from workers.broker.retention import RETAIN_FINISHED
from workers.broker.risk.manager import (
    Effect,
    Journal,
    ManagerInput,
    Notify,
    OrderRequest,
    PositionManager,
    SubmitCancel,
    SubmitModify,
    SubmitOrder,
)
from workers.broker.risk.records import RiskRecord

from .common import ACCOUNT, SECOND, SPECS, START_NS

D = Decimal


@dataclass
class Desk:
    limits: RiskLimits = field(default_factory=RiskLimits)
    specs: dict[str, InstrumentSpec] = field(default_factory=lambda: dict(SPECS))
    auto_cancel: bool = True  # the venue confirms cancels at once
    now: int = START_NS
    journal: list[RiskRecord | OrderEvent | VenueRefused] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    # Called with each batch of effects the manager returns, before any is carried out.
    on_decision: Callable[[list[Effect]], None] | None = None
    retain_finished: int = RETAIN_FINISHED  # finished orders kept whole by both

    def __post_init__(self) -> None:
        self.manager = self._new_manager()
        self.tracker = OrderTracker(ACCOUNT, clock=lambda: self.now,
                                    retain_finished=self.retain_finished)
        self._fills = 0
        self._trades = 0

    # ------------------------------------------------------------ driving

    def send(self, message: ManagerInput) -> list[Effect]:
        """Hand one input to the manager; carry out and return its effects."""
        effects = self.manager.receive(message, self.now)
        self._carry_out(effects)
        return effects

    def place(self, new_order: NewOrder, *, tag: str | None = None) -> list[Effect]:
        return self.send(OrderRequest(new_order, session_id="s1", trader_tag=tag))

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * SECOND)

    def trade(self, price: str, instrument: str = "BTC/USD") -> list[Effect]:
        self._trades += 1
        return self.send(Trade(instrument=instrument, trade_id=f"t{self._trades}", price=price,
                               qty="1", taker_side="buy", ts=self.now))

    def quote(self, bid: str, ask: str, instrument: str = "BTC/USD") -> list[Effect]:
        return self.send(Ticker(instrument=instrument, bid=bid, ask=ask, ts=self.now))

    def fill(self, cid: str, price: str | Decimal, qty: str | Decimal | None = None,
             fee: str = "0") -> list[Effect]:
        """The venue executes `qty` (default: all that remains) of order `cid` at `price`."""
        snap = self.tracker.get(cid)
        assert snap is not None, f"the tracker does not know {cid}"
        amount = snap.remaining_qty if qty is None else D(qty)
        self._fills += 1
        filled = snap.filled_qty + amount
        fill = Fill(fill_id=f"f{self._fills}", account=ACCOUNT, client_order_id=cid,
                    instrument=snap.instrument, side=snap.side, qty=amount, price=price, fee=fee,
                    fee_currency=snap.instrument.split("/")[1], liquidity=Liquidity.TAKER,
                    ts=self.now)
        done = filled == snap.qty
        cls = OrderFilled if done else OrderPartiallyFilled
        event = cls(**self._state(cid), status=OrderStatus.FILLED if done
                    else OrderStatus.PARTIALLY_FILLED, filled_qty=filled,
                    remaining_qty=snap.qty - filled, fill=fill)
        return self.venue(event)

    def cancel_ack(self, cid: str) -> list[Effect]:
        """The venue confirms that order `cid` is cancelled."""
        event = OrderCancelled(**self._state(cid), status=OrderStatus.CANCELLED,
                               filled_qty=self.tracker.get(cid).filled_qty,  # type: ignore[union-attr]
                               remaining_qty=0, reason=CancelReason.REQUESTED)
        return self.venue(event)

    def restart(self, *, same_state: bool = True) -> PositionManager:
        """Replace the manager by one rebuilt from the journal (checking, unless told the
        journal was cut short, that it is the same state); carry out `resume()`."""
        before = self.manager
        self.manager = self._new_manager()
        for entry in self.journal:
            self.manager.replay(entry)
        if same_state:
            assert self.manager.snapshot() == before.snapshot()
        self.manager.prices = before.prices  # market data comes back by itself
        self.manager.equity = before.equity
        self._carry_out(self.manager.resume(self.now))
        return self.manager

    def _new_manager(self) -> PositionManager:
        return PositionManager(ACCOUNT, self.limits, self.specs,
                               retain_finished=self.retain_finished)

    # ------------------------------------------------------------ reading

    def notices(self, kind: type[Any]) -> list[Any]:
        return [e.message for e in self.effects if isinstance(e, Notify)
                and isinstance(e.message, kind)]

    def submitted(self) -> list[NewOrder]:
        return [e.order for e in self.effects if isinstance(e, SubmitOrder)]

    def cancels(self) -> list[str]:
        return [e.client_order_id for e in self.effects if isinstance(e, SubmitCancel)]

    def working(self) -> list[str]:
        return [o.client_order_id for o in self.tracker.open_orders()]

    def position(self, instrument: str = "BTC/USD") -> Decimal:
        return self.manager.positions.qty(instrument)

    # ------------------------------------------------------------ the shell's part

    def _carry_out(self, effects: list[Effect]) -> None:
        if self.on_decision is not None:
            self.on_decision(effects)
        for effect in effects:
            self.effects.append(effect)
            if isinstance(effect, Journal):
                self.journal.append(effect.record)
            elif isinstance(effect, SubmitOrder):
                self._to_tracker(effect.order)
            elif isinstance(effect, SubmitCancel):
                self._to_tracker(CancelOrder(client_order_id=effect.client_order_id,
                                             account=ACCOUNT))
            elif isinstance(effect, SubmitModify):
                self._to_tracker(effect.modify)

    def _to_tracker(self, request: Any) -> None:
        try:
            tracker_effects = self.tracker.receive(request)
        except OrderStateError as exc:
            # E.g. cancelling an order that just finished. The shell tells the manager, so a
            # modify it let through stops counting.
            if isinstance(request, ModifyOrder | CancelOrder):
                action: Literal["modify", "cancel"] = (
                    "modify" if isinstance(request, ModifyOrder) else "cancel")
                refusal = VenueRefused(request.client_order_id, action, exc.code, exc.message)
                self.journal.append(refusal)
                self._carry_out(self.manager.receive(refusal, self.now))
            return
        for t in tracker_effects:
            if isinstance(t, PlaceAtVenue):
                event = OrderAccepted(**self._state(t.request.client_order_id),
                                      status=OrderStatus.ACCEPTED, filled_qty=0,
                                      remaining_qty=t.request.qty)
                self.venue(event)
            elif isinstance(t, CancelAtVenue) and self.auto_cancel:
                self.cancel_ack(t.client_order_id)
            elif isinstance(t, ModifyAtVenue):
                pass  # tests confirm modifies by hand

    def _state(self, cid: str) -> dict[str, Any]:
        snap = self.tracker.get(cid)
        assert snap is not None
        return {"account": ACCOUNT, "client_order_id": cid, "order_id": f"v-{cid}",
                "instrument": snap.instrument, "side": snap.side,
                "order_type": snap.order_type, "qty": snap.qty, "price": snap.price,
                "time_in_force": snap.time_in_force, "ts": self.now}

    def venue(self, event: OrderEvent) -> list[Effect]:
        """The venue reports `event`: the tracker journals it; the manager is fed that."""
        out: list[Effect] = []
        for t in self.tracker.receive(event):
            if isinstance(t, TrackerJournal) and not isinstance(
                t.entry, NewOrder | CancelOrder | ModifyOrder
            ):
                journaled = t.entry
                self.journal.append(journaled)
                effects = self.manager.receive(journaled, self.now)
                out += effects
                self._carry_out(effects)
        return out
