"""Properties of the position manager under random order flow (hypothesis).

Random sequences of algo orders, modifications, signals, fills, venue cancels, price moves,
time, kill switches and restarts run through the manager beside a real order tracker. An
oracle recomputes the account from the tracker's open orders and the journaled fills —
independently of the manager's own bookkeeping, enumerating which working orders fill — and
checks after every step:

* no accepted order or signal entry takes the account past a limit (or, where a measure was
  already past it because prices moved, makes it worse), whatever subset of the working
  orders fills, limit orders at their price and market orders at the band edge;
* a kill switch cancels every open order, and nothing is placed while it is on;
* every exit fires at most once; a close never exceeds the position left once every working
  order on the closing side has filled;
* replaying the journal rebuilds exactly the state the manager had.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from itertools import combinations
from typing import Any

from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from protocol.errors import ErrorCode
from protocol.market import Side
from protocol.orders import (
    ModifyOrder,
    NewOrder,
    OrderFilled,
    OrderModified,
    OrderPartiallyFilled,
    OrderRejected,
    OrderSnapshot,
)
from protocol.risk import RiskLimits
from protocol.signals import ExitFired, Signal, SignalRejected
from workers.broker.orders import VenueRefused
from workers.broker.risk.manager import (
    ClockTick,
    Effect,
    KillSwitch,
    ModifyRequest,
    Notify,
    PositionManager,
    RefuseRequest,
    SignalRequest,
    SubmitCancel,
    SubmitModify,
    SubmitOrder,
)
from workers.broker.risk.positions import DAY_NS, utc_day
from workers.broker.risk.records import (
    CloseIssued,
    ExitTriggered,
    KillScope,
    KillSwitchChanged,
    ModifyAdmitted,
    OrderAdmitted,
    SignalAdopted,
)

from .common import ACCOUNT, SECOND, SPECS, START_NS
from .desk import Desk

D = Decimal
BAND = D("0.05")
QTY_LIMITS = {"BTC/USD": D("2.5"), "ETH/USD": D(15)}
LIMITS = RiskLimits.model_validate({
    "max_open_positions": 2,
    "max_position_qty": {k: str(v) for k, v in QTY_LIMITS.items()},
    "max_position_notional": "200",
    "max_gross_exposure": "300",
    "max_order_notional": "180",
    "max_order_rate": {"max_orders": 6, "window_seconds": "2"},
    "price_band": str(BAND),
    "allowed_instruments": ["BTC/USD", "ETH/USD", "SOL/USD"],
    "daily_loss_limit": "2",
    "trader_tags": {"small": {"max_order_notional": "60",
                              "max_position_qty": {"BTC/USD": "0.5"}}},
})
INSTRUMENTS = ("BTC/USD", "ETH/USD", "SOL/USD", "ETH/BTC")  # ETH/BTC is not allowed
START_PRICES = {"BTC/USD": D(100), "ETH/USD": D(10), "SOL/USD": D(1), "ETH/BTC": D("0.1")}
TEN_TO_MIDNIGHT = (utc_day(START_NS) + 1) * DAY_NS - 600 * SECOND
CLOSE_ID = re.compile(r"pm:.+:x\d+")
EXHAUSTIVE_UP_TO = 6  # working orders per instrument whose every subset the oracle tries


# ---------------------------------------------------------------- steps


@dataclass(frozen=True)
class Place:
    instrument: int
    side: str
    lots: int
    percent_off: int | None  # limit price this many % from the reference; None: market
    tagged: bool


@dataclass(frozen=True)
class Protect:
    """The algo works a take-profit: part of its position, on the closing side."""

    instrument: int
    quarters: int
    percent_off: int


@dataclass(frozen=True)
class PlaceAt:
    """An order at an exact price (what a Protect step places)."""

    instrument: str
    side: str
    qty: Decimal
    price: Decimal


@dataclass(frozen=True)
class SendSignal:
    instrument: int
    direction: str
    lots: int
    stop_percent: int
    take_percent: int | None
    trail_percent: int | None
    time_exit_s: int | None
    limit_entry: bool
    fill_entry: bool  # the venue fills the entry at once


@dataclass(frozen=True)
class Modify:
    pick: int
    lots: int
    percent_off: int | None


@dataclass(frozen=True)
class FillSome:
    pick: int
    quarters: int  # how much of what remains, in quarters


@dataclass(frozen=True)
class VenueCancel:
    pick: int


@dataclass(frozen=True)
class Move:
    instrument: int
    percent: int


@dataclass(frozen=True)
class Wait:
    seconds: int


@dataclass(frozen=True)
class Kill:
    active: bool
    fleet: bool


@dataclass(frozen=True)
class Restart:
    pass


instruments = st.sampled_from([0, 0, 0, 1, 1, 2, 3])
places = st.builds(Place, instruments, st.sampled_from(["buy", "sell"]), st.integers(1, 200),
                   st.one_of(st.none(), st.integers(-7, 7)), st.booleans())
signals = st.builds(SendSignal, st.integers(0, 1), st.sampled_from(["long", "short", "flat"]),
                    st.integers(1, 200), st.integers(1, 5), st.one_of(st.none(), st.integers(1, 8)),
                    st.one_of(st.none(), st.integers(1, 3)),
                    st.one_of(st.none(), st.integers(5, 300)), st.booleans(), st.booleans())
fills = st.builds(FillSome, st.integers(0, 30), st.integers(1, 4))
moves = st.builds(Move, instruments, st.integers(-6, 6))
rare = st.one_of(
    st.builds(Modify, st.integers(0, 30), st.integers(1, 200),
              st.one_of(st.none(), st.integers(-7, 7))),
    st.builds(VenueCancel, st.integers(0, 30)),
    st.builds(Wait, st.integers(0, 120)),
    st.builds(Kill, st.just(True), st.booleans()),
    st.builds(Kill, st.just(False), st.booleans()),
    st.builds(Kill, st.just(False), st.booleans()),
    st.just(Restart()),
)
protects = st.builds(Protect, st.integers(0, 1), st.integers(1, 4), st.integers(0, 5))
steps = st.one_of(places, signals, fills, moves, moves, protects, rare)
flows = st.lists(steps, min_size=10, max_size=60)
# Signals and prices mostly: entries fill, exits trigger, closes fill partly or not at all.
exit_steps = st.one_of(
    signals, moves, moves, moves, fills, fills, protects,
    st.builds(VenueCancel, st.integers(0, 30)),
    st.builds(Wait, st.integers(0, 120)),
    st.builds(Kill, st.booleans(), st.booleans()),
    st.just(Restart()),
)
exit_flows = st.lists(exit_steps, min_size=10, max_size=60)


# ---------------------------------------------------------------- the oracle


@dataclass
class Figures:
    worst_qty: dict[str, Decimal]
    notional: dict[str, Decimal]
    open: set[str]

    @property
    def gross(self) -> Decimal:
        return sum(self.notional.values(), D(0))


@dataclass
class Run:
    desk: Desk
    prices: dict[str, Decimal] = field(default_factory=lambda: dict(START_PRICES))
    kill: set[KillScope] = field(default_factory=set)
    ids: int = 0
    highest_gross: Decimal = field(default_factory=Decimal)
    highest_notional: Decimal = field(default_factory=Decimal)

    # ------------------------------------------------------------ what the account holds

    def held(self) -> dict[str, Decimal]:
        """Positions from the fills the tracker journaled (not the manager's books)."""
        out: dict[str, Decimal] = {}
        for entry in self.desk.journal:
            if isinstance(entry, OrderPartiallyFilled | OrderFilled):
                signed = entry.fill.qty if entry.fill.side is Side.BUY else -entry.fill.qty
                out[entry.instrument] = out.get(entry.instrument, D(0)) + signed
        return out

    def figures(self) -> Figures:
        held = self.held()
        orders: dict[str, list[OrderSnapshot]] = {}
        for o in self.desk.tracker.open_orders():
            orders.setdefault(o.instrument, []).append(o)
        worst_qty: dict[str, Decimal] = {}
        notional: dict[str, Decimal] = {}
        for instrument in set(held) | set(orders):
            working = orders.get(instrument, [])
            subsets: list[Sequence[OrderSnapshot]]
            if len(working) <= EXHAUSTIVE_UP_TO:
                subsets = [c for n in range(len(working) + 1) for c in combinations(working, n)]
            else:  # the extremes: every buy fills, or every sell does
                subsets = [[o for o in working if o.side is side] for side in Side]
            qty = value = D(0)
            for subset in subsets:
                q, v = self._outcome(instrument, held.get(instrument, D(0)), subset)
                qty, value = max(qty, abs(q)), max(value, v)
            worst_qty[instrument], notional[instrument] = qty, value
        opened = {i for i in worst_qty if held.get(i, D(0)) != 0 or orders.get(i)}
        return Figures(worst_qty, notional, opened)

    def _outcome(self, instrument: str, held: Decimal,
                 filled: Any) -> tuple[Decimal, Decimal]:
        """Position and its value if exactly the orders in `filled` fill."""
        q = held
        prices = {Side.BUY: [self.prices[instrument]], Side.SELL: [self.prices[instrument]]}
        for o in filled:
            q += o.remaining_qty if o.side is Side.BUY else -o.remaining_qty
            price = o.price if o.price is not None else self.prices[instrument] * (1 + BAND)
            prices[o.side].append(price)
        if q == 0:
            return q, D(0)
        # The side the position ends on is valued at the highest price it was bought (or
        # sold) at in this outcome; a fill that only reduced it does not value it.
        return q, abs(q) * max(prices[Side.BUY] if q > 0 else prices[Side.SELL])

    def admissions_before(self, now: int, window: int) -> int:
        count = 0
        for r in self.desk.journal:
            at = getattr(r, "at", None)
            admitted = (isinstance(r, OrderAdmitted)
                        or (isinstance(r, SignalAdopted) and r.order is not None)
                        or (isinstance(r, ExitTriggered) and r.close is not None)
                        or isinstance(r, CloseIssued))
            if admitted and at is not None and at > now - window:
                count += 1
        return count

    # ------------------------------------------------------------ the checks

    def check_accepted(self, order: NewOrder | tuple[str, Side, Decimal, Decimal | None],
                       tag: str | None, before: Figures, after: Figures, rate_before: int,
                       daily_loss: Decimal, *, new: bool = True,
                       price_changed: bool = True) -> None:
        if isinstance(order, NewOrder):
            instrument, qty, price = order.instrument, order.qty, order.price
        else:
            instrument, _, qty, price = order
        assert not self.kill, "an order was accepted while a kill switch was on"
        assert instrument in LIMITS.allowed_instruments  # type: ignore[operator]
        reference = self.prices[instrument]
        if price is not None and price_changed:
            assert abs(price - reference) / reference <= BAND
        valued = qty * (price if price is not None else reference * (1 + BAND))
        assert valued <= LIMITS.max_order_notional  # type: ignore[operator]
        if tag == "small":
            assert valued <= D(60)
        if new:
            assert rate_before < 6, "more orders than max_order_rate allows"
        if daily_loss >= D(2):
            assert after.worst_qty.get(instrument, 0) <= before.worst_qty.get(instrument, 0)
            assert len(after.open) <= len(before.open)
        assert len(after.open) <= 2 or len(after.open) <= len(before.open)
        qty_limits = dict(QTY_LIMITS)
        if tag == "small":
            qty_limits["BTC/USD"] = D("0.5")
        for i, limit in qty_limits.items():
            reach, was = after.worst_qty.get(i, D(0)), before.worst_qty.get(i, D(0))
            assert reach <= limit or reach <= was, f"{i} position could reach {reach} > {limit}"
        for i, value in after.notional.items():
            assert value <= 200 or value <= before.notional.get(i, D(0)), (
                f"{i} notional could reach {value}")
        assert after.gross <= 300 or after.gross <= before.gross
        self.highest_gross = max(self.highest_gross, after.gross)
        self.highest_notional = max(self.highest_notional, *after.notional.values(), D(0))

    def check_closes(self, effects: list[Effect]) -> None:
        """Called before a batch of effects is carried out: the state the manager decided on."""
        held = None
        for effect in effects:
            if not (isinstance(effect, SubmitOrder)
                    and CLOSE_ID.fullmatch(effect.order.client_order_id)):
                continue
            close = effect.order
            if self.desk.tracker.get(close.client_order_id) is not None:
                continue  # a re-submission of a known order creates nothing
            held = held if held is not None else self.held()
            position = held.get(close.instrument, D(0))
            assert position != 0
            assert close.side is (Side.SELL if position > 0 else Side.BUY)
            closing = sum((o.remaining_qty for o in self.desk.tracker.open_orders()
                           if o.instrument == close.instrument and o.side is close.side), D(0))
            assert close.qty + closing <= abs(position), "a close oversized the position"

    def check_always(self) -> None:
        fired = Counter(r.plan_id for r in self.desk.journal if isinstance(r, ExitTriggered))
        assert all(n == 1 for n in fired.values()), f"an exit fired twice: {fired}"
        notices = Counter(n.signal_id for n in self.desk.notices(ExitFired))
        assert all(n == 1 for n in notices.values())

    # ------------------------------------------------------------ driving

    def next_id(self, prefix: str) -> str:
        self.ids += 1
        return f"{prefix}{self.ids}"

    def price_at(self, instrument: str, percent: int) -> Decimal:
        tick = SPECS[instrument].tick_size
        raw = self.prices[instrument] * (1 + D(percent) / 100)
        return max(tick, (raw / tick).quantize(D(1), ROUND_HALF_EVEN) * tick)

    def move(self, instrument: str, percent: int) -> None:
        start = START_PRICES[instrument]
        price = min(max(self.price_at(instrument, percent), start / 2), start * 2)
        tick = SPECS[instrument].tick_size
        self.prices[instrument] = price
        self.desk.quote(str(price - tick), str(price + tick), instrument)  # mid = price
        self.desk.trade(str(price), instrument)

    def pick(self, index: int) -> OrderSnapshot | None:
        open_orders = self.desk.tracker.open_orders()
        return open_orders[index % len(open_orders)] if open_orders else None

    def step(self, s: Any) -> None:
        desk = self.desk
        before, journal_at = self.figures(), len(desk.journal)
        rate = self.admissions_before(desk.now, 2 * SECOND)
        daily_loss = desk.manager.positions.daily_loss(desk.now, "USD")
        submitted_at = len(desk.effects)
        if isinstance(s, Place):
            instrument = INSTRUMENTS[s.instrument]
            lot = SPECS[instrument].lot_size
            fields: dict[str, Any] = {
                "client_order_id": self.next_id("c"), "account": ACCOUNT,
                "instrument": instrument, "side": s.side, "qty": s.lots * lot}
            if s.percent_off is None:
                fields["order_type"] = "market"
            else:
                fields["price"] = self.price_at(instrument, s.percent_off)
            order = NewOrder.model_validate(fields)
            tag = "small" if s.tagged else None
            effects = desk.place(order, tag=tag)
            admitted = [r for r in desk.journal[journal_at:] if isinstance(r, OrderAdmitted)]
            if admitted:
                self.check_accepted(order, tag, before, self.figures(), rate, daily_loss)
            else:
                [refusal] = [e for e in effects if isinstance(e, Notify | RefuseRequest)]
                if self.kill:
                    assert isinstance(refusal, Notify)
                    assert isinstance(refusal.message, OrderRejected)
                    assert refusal.message.reason is ErrorCode.KILL_SWITCH
        elif isinstance(s, Protect):
            instrument = INSTRUMENTS[s.instrument]
            held = self.held().get(instrument, D(0))
            lot = SPECS[instrument].lot_size
            qty = (abs(held) * s.quarters / 4 // lot) * lot
            if qty == 0:
                return
            side = "sell" if held > 0 else "buy"
            limit = self.price_at(instrument, s.percent_off if held > 0 else -s.percent_off)
            self.step(PlaceAt(instrument, side, qty, limit))
            return
        elif isinstance(s, PlaceAt):
            order = NewOrder(client_order_id=self.next_id("p"), account=ACCOUNT,
                             instrument=s.instrument, side=Side(s.side), qty=s.qty,
                             price=s.price)
            desk.place(order)
            if any(isinstance(r, OrderAdmitted) for r in desk.journal[journal_at:]):
                self.check_accepted(order, None, before, self.figures(), rate, daily_loss)
        elif isinstance(s, SendSignal):
            self.send_signal(s, before, journal_at, rate, daily_loss)
        elif isinstance(s, Modify):
            target = self.pick(s.pick)
            if target is None or target.order_type == "market":
                return
            lot = SPECS[target.instrument].lot_size
            price = None if s.percent_off is None else self.price_at(target.instrument,
                                                                      s.percent_off)
            modify = ModifyOrder(client_order_id=target.client_order_id, account=ACCOUNT,
                                 qty=s.lots * lot, price=price)
            effects = desk.send(ModifyRequest(modify, "s1"))
            tracker_refused = any(isinstance(r, VenueRefused) for r in desk.journal[journal_at:])
            if any(isinstance(e, SubmitModify) for e in effects) and not tracker_refused:
                self.venue_modifies(modify)
            if any(isinstance(r, ModifyAdmitted) for r in desk.journal[journal_at:]):
                new_price = price if price is not None else target.price
                self.check_accepted((target.instrument, target.side, modify.qty or target.qty,
                                     new_price), None, before, self.figures(), rate, daily_loss,
                                    new=False, price_changed=price is not None)
        elif isinstance(s, FillSome):
            target = self.pick(s.pick)
            if target is None:
                return
            lot = SPECS[target.instrument].lot_size
            qty = max(lot, (target.remaining_qty * s.quarters / 4 // lot) * lot)
            price = target.price if target.price is not None else self.prices[target.instrument]
            desk.fill(target.client_order_id, price, qty=min(qty, target.remaining_qty))
        elif isinstance(s, VenueCancel):
            target = self.pick(s.pick)
            if target is not None:
                desk.cancel_ack(target.client_order_id)
        elif isinstance(s, Move):
            self.move(INSTRUMENTS[s.instrument], s.percent)
        elif isinstance(s, Wait):
            desk.advance(s.seconds)
            desk.send(ClockTick())
        elif isinstance(s, Kill):
            scope = KillScope.FLEET if s.fleet else KillScope.ACCOUNT
            if not s.active and scope not in self.kill and self.kill:
                scope = next(iter(self.kill))  # clear the switch that is on
            open_before = {o.client_order_id for o in desk.tracker.open_orders()}
            effects = desk.send(KillSwitch(s.active, scope, reason=self.next_id("why"), by="t"))
            if s.active:
                self.kill.add(scope)
                assert any(isinstance(r, KillSwitchChanged) and r.active
                           for r in desk.journal[journal_at:])
                cancelled = {e.client_order_id for e in effects if isinstance(e, SubmitCancel)}
                assert open_before <= cancelled
            else:
                self.kill.discard(scope)
        elif isinstance(s, Restart):
            desk.restart()  # checks that the rebuilt state is the same
        if self.kill:
            assert not [e for e in desk.effects[submitted_at:] if isinstance(e, SubmitOrder)]
        self.check_always()

    def send_signal(self, s: SendSignal, before: Figures, journal_at: int, rate: int,
                    daily_loss: Decimal) -> None:
        instrument = INSTRUMENTS[s.instrument]
        spec = SPECS[instrument]
        body: dict[str, Any] = {"signal_id": self.next_id("g"), "account": ACCOUNT,
                                "instrument": instrument, "direction": s.direction}
        if s.direction != "flat":
            long = s.direction == "long"
            body["qty"] = s.lots * spec.lot_size
            body["stop_loss"] = self.price_at(instrument, -s.stop_percent if long
                                              else s.stop_percent)
            if s.take_percent is not None:
                body["take_profit"] = self.price_at(instrument, s.take_percent if long
                                                    else -s.take_percent)
            if s.trail_percent is not None:
                body["trailing_distance"] = self.prices[instrument] * s.trail_percent / 100
            if s.time_exit_s is not None:
                body["time_exit_at"] = self.desk.now + s.time_exit_s * SECOND
            if s.limit_entry:
                body["entry_price"] = self.prices[instrument]
        self.desk.send(SignalRequest(Signal.model_validate(body), "algo"))
        adopted = [r for r in self.desk.journal[journal_at:] if isinstance(r, SignalAdopted)]
        entry = adopted[0].order if adopted else None
        if entry is not None and s.fill_entry and self.desk.tracker.get(entry.client_order_id):
            after = self.figures()
            self.desk.fill(entry.client_order_id, entry.price or self.prices[instrument])
        else:
            after = self.figures()
        if self.kill:
            rejection = self.desk.notices(SignalRejected)[-1]
            assert rejection.code is ErrorCode.KILL_SWITCH and not adopted
        if entry is not None and adopted[0].target_qty != 0:
            self.check_accepted(entry, None, before, after, rate, daily_loss)

    def venue_modifies(self, modify: ModifyOrder) -> None:
        snap = self.desk.tracker.get(modify.client_order_id)
        if snap is None or snap.status.is_terminal:
            return
        fields = snap.model_dump(exclude={"type", "seq", "avg_price"})
        fields["qty"] = modify.qty if modify.qty is not None else snap.qty
        fields["price"] = modify.price if modify.price is not None else snap.price
        if fields["qty"] <= snap.filled_qty:
            return
        fields["remaining_qty"] = fields["qty"] - snap.filled_qty
        fields["status"] = "accepted" if snap.filled_qty == 0 else "partially_filled"
        self.desk.venue(OrderModified(**fields))


# ---------------------------------------------------------------- the properties


def run_flow(flow: list[Any], auto_cancel: bool) -> Run:
    desk = Desk(limits=LIMITS, auto_cancel=auto_cancel, now=TEN_TO_MIDNIGHT)
    run = Run(desk)
    desk.on_decision = run.check_closes
    for instrument in INSTRUMENTS:
        run.move(instrument, 0)
    for s in flow:
        run.step(s)
    rebuilt = PositionManager(ACCOUNT, LIMITS, SPECS)
    for entry in desk.journal:
        rebuilt.replay(entry)
    assert rebuilt.snapshot() == desk.manager.snapshot()
    return run


SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(flows, st.booleans())
def test_random_order_flow_keeps_every_guarantee(flow: list[Any], auto_cancel: bool) -> None:
    run = run_flow(flow, auto_cancel)
    # Steer the search towards accounts that press against the limits.
    target(float(run.highest_gross), label="gross exposure reached")
    target(float(run.highest_notional), label="position notional reached")
    target(float(run.desk.manager.positions.daily_loss(run.desk.now, "USD")), label="daily loss")


@SETTINGS
@given(exit_flows, st.booleans())
def test_exits_fire_once_and_never_oversize_through_restarts(
    flow: list[Any], auto_cancel: bool
) -> None:
    run = run_flow(flow, auto_cancel)
    target(float(len(run.desk.notices(ExitFired))), label="exits fired")
