"""Reconciliation of the journal's open orders with the venue: pure, no sockets.

The example tests pin each rule of `workers.broker.reconcile`; the property test lets the real
paper matching engine play the venue, kills the owner at a random point of a random history,
lets another account trade against the dead owner's orders, and checks that the books
rebuilt from the journal plus the reconciliation plan agree with the exchange on every order.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import ErrorCode
from protocol.market import InstrumentSpec
from protocol.orders import (
    CancelOrder,
    CancelReason,
    Fill,
    ModifyOrder,
    NewOrder,
    OrderAccepted,
    OrderCancelled,
    OrderEvent,
    OrderFilled,
    OrderModified,
    OrderPartiallyFilled,
    OrderRejected,
    OrderSnapshot,
    OrderStatus,
)
from workers.broker import account as entries
from workers.broker.account import AccountBook
from workers.broker.adapters.paper.engine import MatchingEngine, OrderRefused
from workers.broker.orders import Journal, OrderStateError, VenueRefused
from workers.broker.reconcile import (
    FILLS_MARGIN_NS,
    KnownOrder,
    PendingModify,
    fills_window_start,
    reconcile,
)

D = Decimal
NOW = 1_700_000_000_000_000_000
SECOND = 1_000_000_000


def request(cid: str = "c1", *, qty: str = "2", price: str | None = "100", side: str = "buy",
            tif: str = "GTC") -> NewOrder:
    return NewOrder(client_order_id=cid, account="acct", instrument="BTC/USD", side=side,
                    order_type="limit" if price else "market", qty=D(qty),
                    price=D(price) if price else None, time_in_force=tif)


def snapshot(cid: str = "c1", *, status: OrderStatus = OrderStatus.ACCEPTED, qty: str = "2",
             filled: str = "0", price: str | None = "100", order_id: str | None = "V1",
             tif: str = "GTC") -> OrderSnapshot:
    remaining = D(0) if status.is_terminal else D(qty) - D(filled)
    return OrderSnapshot(account="acct", client_order_id=cid, order_id=order_id,
                         instrument="BTC/USD", side="buy",
                         order_type="limit" if price else "market", qty=D(qty),
                         price=D(price) if price else None, time_in_force=tif, status=status,
                         filled_qty=D(filled), remaining_qty=remaining, ts=NOW)


def fill(fill_id: str, qty: str, *, cid: str = "c1", ts: int = NOW + 1) -> Fill:
    return Fill(fill_id=fill_id, account="acct", client_order_id=cid, order_id="V1",
                instrument="BTC/USD", side="buy", qty=D(qty), price=D(100), fee=D(0),
                fee_currency="USD", liquidity="maker", ts=ts)


def known(snap: OrderSnapshot, **changes: Any) -> KnownOrder:
    req = request(snap.client_order_id, qty=str(snap.qty),
                  price=str(snap.price) if snap.price else None,
                  tif=snap.time_in_force.value)
    fields: dict[str, Any] = {"snapshot": snap, "request": req, "intent_ts": NOW - SECOND}
    fields.update(changes)
    return KnownOrder(**fields)


def kinds(events: list[OrderEvent]) -> list[str]:
    return [e.type for e in events]


# ---------------------------------------------------------------- the venue knows the order


def test_nothing_to_do_when_the_venue_agrees() -> None:
    ours = known(snapshot())
    plan = reconcile([ours], [snapshot()], [], now=NOW)
    assert not plan.changed and not plan.notes


def test_a_pending_order_the_venue_lists_becomes_accepted() -> None:
    ours = known(snapshot(status=OrderStatus.PENDING, order_id=None))
    plan = reconcile([ours], [snapshot()], [], now=NOW)
    assert kinds(plan.events) == ["order_accepted"]
    assert plan.events[0].order_id == "V1" and not plan.resend


def test_fills_missed_while_away_are_applied_once_each() -> None:
    ours = known(snapshot(status=OrderStatus.PARTIALLY_FILLED, filled="0.5"),
                 fill_ids=frozenset({"F1"}))
    venue = snapshot(status=OrderStatus.PARTIALLY_FILLED, filled="1.5")
    fills = [fill("F1", "0.5", ts=NOW + 1), fill("F3", "0.5", ts=NOW + 3),
             fill("F2", "0.5", ts=NOW + 2)]
    plan = reconcile([ours], [venue], fills, now=NOW)
    assert kinds(plan.events) == ["order_partially_filled", "order_partially_filled"]
    assert [e.fill.fill_id for e in plan.events] == ["F2", "F3"]  # type: ignore[union-attr]
    assert plan.events[-1].filled_qty == D("1.5") and not plan.notes


def test_an_order_filled_while_away_ends_filled_and_is_not_cancelled() -> None:
    ours = known(snapshot())
    plan = reconcile([ours], [], [fill("F1", "1.5"), fill("F2", "0.5", ts=NOW + 2)], now=NOW)
    assert kinds(plan.events) == ["order_partially_filled", "order_filled"]
    assert plan.events[-1].status is OrderStatus.FILLED


def test_an_order_gone_from_the_venue_is_cancelled_with_the_likeliest_reason() -> None:
    cases = [
        (known(snapshot()), CancelReason.VENUE),
        (known(snapshot(), cancel_requested=True), CancelReason.REQUESTED),
        (known(snapshot(tif="IOC")), CancelReason.IOC_REMAINDER),
        (known(snapshot(price=None, tif="IOC")), CancelReason.NO_LIQUIDITY),
    ]
    for ours, reason in cases:
        plan = reconcile([ours], [], [], now=NOW)
        (event,) = plan.events
        assert isinstance(event, OrderCancelled) and event.reason is reason


def test_partly_filled_then_gone_keeps_its_fills_before_the_cancel() -> None:
    plan = reconcile([known(snapshot())], [], [fill("F1", "0.5")], now=NOW)
    assert kinds(plan.events) == ["order_partially_filled", "order_cancelled"]
    assert plan.events[-1].filled_qty == D("0.5")


def test_a_modification_made_while_away_is_applied_before_the_fills() -> None:
    ours = known(snapshot(), pending_modify=PendingModify(D(3), D(99)))
    venue = snapshot(qty="3", price="99", status=OrderStatus.PARTIALLY_FILLED, filled="2.5")
    plan = reconcile([ours], [venue], [fill("F1", "2.5")], now=NOW)
    assert kinds(plan.events) == ["order_modified", "order_partially_filled"]
    modified = plan.events[0]
    assert isinstance(modified, OrderModified) and (modified.qty, modified.price) == (D(3), D(99))


def test_a_qty_increase_then_complete_fill_while_away() -> None:
    ours = known(snapshot(), pending_modify=PendingModify(D(3), None))
    plan = reconcile([ours], [], [fill("F1", "3")], now=NOW)
    assert kinds(plan.events) == ["order_modified", "order_filled"]
    assert plan.events[-1].qty == 3


def test_a_qty_decrease_then_complete_fill_while_away() -> None:
    ours = known(snapshot(), pending_modify=PendingModify(D(1), None))
    plan = reconcile([ours], [], [fill("F1", "1")], now=NOW)
    assert kinds(plan.events) == ["order_modified", "order_filled"]


def test_disagreements_it_cannot_repair_are_reported() -> None:
    ours = known(snapshot())
    venue = snapshot(status=OrderStatus.PARTIALLY_FILLED, filled="1")
    plan = reconcile([ours], [venue], [], now=NOW)
    assert not plan.events and plan.notes


# ---------------------------------------------------------------- intents the venue never saw


def test_a_young_intent_is_resent_with_the_same_client_order_id() -> None:
    ours = known(snapshot(status=OrderStatus.PENDING, order_id=None), intent_ts=NOW - SECOND)
    plan = reconcile([ours], [], [], now=NOW)
    assert plan.resend == [ours.request] and not plan.events


def test_an_old_intent_is_rejected_as_unavailable() -> None:
    ours = known(snapshot(status=OrderStatus.PENDING, order_id=None),
                 intent_ts=NOW - 31 * SECOND)
    plan = reconcile([ours], [], [], now=NOW, max_resend_age_ns=30 * SECOND)
    (event,) = plan.events
    assert isinstance(event, OrderRejected) and event.reason is ErrorCode.UNAVAILABLE
    assert not plan.resend


def test_an_intent_the_venue_answered_for_is_settled_not_resent_again() -> None:
    ours = known(snapshot(status=OrderStatus.PENDING, order_id=None))
    plan = reconcile([ours], [], [], now=NOW, venue_knows=frozenset({"c1"}))
    assert kinds(plan.events) == ["order_cancelled"] and not plan.resend


# ---------------------------------------------------------------- orders only the venue holds


def test_venue_orders_finished_in_our_books_are_cancelled_foreign_ones_left_alone() -> None:
    plan = reconcile([], [snapshot("done"), snapshot("theirs")], [],
                     finished={"done": OrderStatus.CANCELLED}, now=NOW)
    assert [o.client_order_id for o in plan.cancel_at_venue] == ["done"]
    assert [o.client_order_id for o in plan.foreign] == ["theirs"]


def test_fills_window_starts_before_the_oldest_thing_an_open_order_may_have_missed() -> None:
    a = known(snapshot("a"), intent_ts=NOW, last_fill_ts=NOW + 50 * SECOND)
    b = known(snapshot("b"), intent_ts=NOW + 10 * SECOND)
    assert fills_window_start([a, b]) == NOW + 10 * SECOND - FILLS_MARGIN_NS
    assert fills_window_start([]) is None


# ---------------------------------------------------------------- property: engine as venue

SPEC = InstrumentSpec(instrument="BTC/USD", tick_size=D("1"), lot_size=D("1"), min_qty=D("1"))


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        self.now += 1_000
        return self.now


@dataclass(frozen=True)
class MemEntry:
    ts: float
    kind: str
    session_id: str | None
    session_seq: int | None
    payload: dict[str, Any]


class Owner:
    """The journal-and-tracker half of an order owner, in memory, over a real engine."""

    def __init__(self, engine: MatchingEngine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock
        self.book = AccountBook("a", clock)
        self.entries: list[MemEntry] = []
        self.seq = 0

    def journal(self, kind: str, payload: dict[str, Any], session: str | None = None) -> None:
        if session is not None:
            self.seq += 1
        entry = MemEntry(self.clock() / 1e9, kind, session, self.seq if session else None,
                         payload)
        self.entries.append(entry)
        self.book.observe(entry)

    def feed(self, message: Any) -> bool:
        try:
            effects = self.book.tracker.receive(message)
        except OrderStateError:
            return False
        for effect in effects:
            if isinstance(effect, Journal):
                item = effect.entry
                if isinstance(item, NewOrder | CancelOrder | ModifyOrder):
                    self.journal(entries.REQUEST, entries.request_payload(item, "s1", "cust"))
                else:
                    self.journal(entries.EVENT, entries.event_payload(item), "s1")
        return True

    def refused(self, cid: str, action: Any, exc: OrderRefused) -> None:
        refusal = VenueRefused(cid, action, exc.code, exc.message)
        if action != "place":
            self.journal(entries.REFUSED, entries.refused_payload(refusal))
        self.feed(refusal)


def a_events(events: list[Any]) -> list[OrderEvent]:
    return [e for e in events
            if isinstance(e, OrderAccepted | OrderRejected | OrderPartiallyFilled | OrderFilled
                          | OrderCancelled | OrderModified) and e.account == "a"]


place = st.tuples(st.just("place"), st.sampled_from(["buy", "sell"]), st.integers(1, 4),
                  st.integers(97, 103) | st.none(),
                  st.sampled_from(["GTC", "GTC", "GTC", "IOC"]))
cross = st.tuples(st.just("cross"), st.sampled_from(["buy", "sell"]), st.integers(1, 4),
                  st.integers(97, 103))
op = st.one_of(
    place,
    place,
    cross,
    st.tuples(st.just("cancel"), st.integers(0, 9)),
    st.tuples(st.just("modify"), st.integers(0, 9), st.one_of(st.none(), st.integers(1, 6)),
              st.one_of(st.none(), st.integers(97, 103))),
)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Any], int]:
    """Operations while the owner lives, then (only other accounts') operations after it died;
    returns all operations and how many happened while it lived."""
    alive = [draw(place), *draw(st.lists(op, max_size=15))]
    dead = draw(st.lists(cross, min_size=1, max_size=6))
    return alive + dead, len(alive)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), delivered=st.integers(0, 6), unsent=st.integers(0, 2))
def test_rebuilt_books_plus_plan_agree_with_the_venue(history: tuple[list[Any], int],
                                                      delivered: int, unsent: int) -> None:
    ops, cut = history
    clock = Clock()
    engine = MatchingEngine([SPEC], clock=clock)
    for name in ("a", "b"):
        engine.open_account(name, {"USD": D(10**9), "BTC": D(10**6)})
    owner = Owner(engine, clock)
    placed: list[str] = []
    for i, action in enumerate(ops):
        alive = i < cut
        last = i == cut - 1
        kind = action[0]
        if kind == "cross":
            _, side, qty, price = action
            events = a_events(engine.submit(NewOrder(
                client_order_id=f"b{i}", account="b", instrument="BTC/USD", side=side,
                qty=D(qty), price=D(price))))
            if alive:  # what b's order did to a's orders reaches a living owner
                for event in events[:delivered] if last else events:
                    assert owner.feed(event)
            continue
        if not alive:
            continue  # a dead owner sends nothing
        if kind == "place":
            _, side, qty, price, tif = action
            req = NewOrder(client_order_id=f"a{i}", account="a", instrument="BTC/USD",
                           side=side, order_type="limit" if price else "market", qty=D(qty),
                           price=D(price) if price else None, time_in_force=tif)
            owner.feed(req)
            placed.append(req.client_order_id)
            call: Any = lambda r=req: engine.submit(r)
            cid, verb = req.client_order_id, "place"
        elif not placed:
            continue
        elif kind == "cancel":
            cid = placed[action[1] % len(placed)]
            if not owner.feed(CancelOrder(client_order_id=cid, account="a")):
                continue
            call, verb = (lambda c=cid: engine.cancel("a", c)), "cancel"
        else:
            _, index, qty, price = action
            cid = placed[index % len(placed)]
            if qty is None and price is None:
                continue
            if not owner.feed(ModifyOrder(client_order_id=cid, account="a",
                                          qty=D(qty) if qty else None,
                                          price=D(price) if price else None)):
                continue
            call = lambda c=cid, q=qty, p=price: engine.modify(
                "a", c, qty=D(q) if q else None, price=D(p) if p else None)
            verb = "modify"
        try:
            events = a_events(call())
        except OrderRefused as exc:
            owner.refused(cid, verb, exc)
            continue
        for event in events[:delivered] if last else events:
            assert owner.feed(event)

    for j in range(unsent):  # journaled, then the owner died before sending them
        owner.feed(NewOrder(client_order_id=f"u{j}", account="a", instrument="BTC/USD",
                            side="buy", qty=D(1), price=D(100)))

    # A new owner: rebuild from the journal, then reconcile with the venue.
    heir = Owner(engine, clock)
    heir.entries = list(owner.entries)
    heir.seq = owner.seq
    heir.book.rebuild(heir.entries)
    assert not heir.book.rebuild_errors

    def plan_and_apply(venue_knows: frozenset[str]) -> Any:
        open_ = heir.book.known_open()
        start = fills_window_start(open_)
        plan = reconcile(open_, engine.open_orders("a"),
                         engine.fills("a", start) if start is not None else [],
                         finished=heir.book.finished(), now=clock(), venue_knows=venue_knows)
        for event in plan.events:
            assert heir.feed(event), event
        return plan

    plan = plan_and_apply(frozenset())
    assert {f"u{j}" for j in range(unsent)} <= {r.client_order_id for r in plan.resend}
    assert not plan.cancel_at_venue and not plan.foreign and not plan.notes
    resent: set[str] = set()
    for req in plan.resend:
        try:
            engine.submit(req)
        except OrderRefused as exc:
            assert exc.code is ErrorCode.DUPLICATE_ORDER
        resent.add(req.client_order_id)
    if resent:
        second = plan_and_apply(frozenset(resent))
        assert not second.resend and not second.notes

    for cid in [*placed, *(f"u{j}" for j in range(unsent))]:
        venue = engine.order("a", cid)
        ours = heir.book.tracker.get(cid)
        if venue is None:  # refused by the venue: rejected in our books
            assert ours is not None and ours.status is OrderStatus.REJECTED
            continue
        assert ours is not None
        assert (ours.status, ours.filled_qty) == (venue.status, venue.filled_qty), cid
        if not venue.status.is_terminal:
            assert (ours.qty, ours.price) == (venue.qty, venue.price), cid
