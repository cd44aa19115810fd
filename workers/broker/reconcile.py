"""Reconciliation: make the journal's open orders agree with what the venue says. Pure, no I/O.

A new order owner (after a failover), or the same owner after the venue connection came back,
cannot trust that its books are complete: the venue may have filled, cancelled or modified
orders while nobody was listening, and an intent may have been journaled without ever reaching
the venue. `reconcile()` compares

* the orders our books hold as open (pending, accepted, partially filled), with what we know
  of each (`KnownOrder`),
* the venue's open orders (`Adapter.open_orders()`),
* the venue's fills since `fills_window_start()` (`Adapter.fills_since()`),

and returns a `ReconcilePlan`: the order events that bring our books in line (fed to the order
tracker, which journals and emits them like any venue event), the intents to send again, and
what the caller should cancel at the venue or merely report.

Rules, per order our books hold as open:

1. The venue knows the order — it lists it as open, it reported fills for it, our books hold
   its venue order id, or the caller says so (`venue_knows`, after a resend the venue
   answered):
   * listed as open: `order_accepted` if our books still say pending; `order_modified` if its
     qty or price differ from ours; then one fill event per fill we have not counted yet
     (by fill_id), oldest first;
   * not listed as open: the unseen fills, then — unless they complete the order —
     `order_cancelled` (reason `requested` if a cancel was on its way, `no_liquidity` for a
     market order, `ioc_remainder` for an IOC order, else `venue`). A modify that was on its
     way when the owner stopped is applied first when the fills show it took effect.
2. The venue has never heard of it (pending, no venue order id, no fills, not listed): the
   intent was journaled but the owner stopped before the venue took it. If the intent is
   younger than `max_resend_age_ns` it is **re-sent with the same client_order_id** — venues
   treat the id as an idempotency key, so a resend can never create a second order. An older
   intent is **rejected** (`unavailable`): an algo that placed it minutes ago must not be
   surprised by a fill at today's price; it sees the rejection and decides again.

Orders the venue lists as open that our books hold as finished are to be cancelled at the
venue (our books are what the algo was told). Orders the venue lists that we have never heard
of are someone else's (placed outside the platform): left alone and reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from protocol.errors import ErrorCode
from protocol.orders import (
    CancelReason,
    Fill,
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
    OrderType,
    TimeInForce,
)

ZERO = Decimal(0)
FILLS_MARGIN_NS = 60 * 1_000_000_000
"""Look for fills this long before the last one we know: clocks of the journal (wall time)
and the venue differ, and fills are counted once by fill_id, so looking further back is free."""
DEFAULT_MAX_RESEND_AGE_NS = 30 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class PendingModify:
    """A modify the journal holds as sent but not yet confirmed by the venue."""

    qty: Decimal | None
    price: Decimal | None


@dataclass(frozen=True, slots=True)
class KnownOrder:
    """What our books know about one open order."""

    snapshot: OrderSnapshot
    request: NewOrder
    fill_ids: frozenset[str] = frozenset()
    intent_ts: int = 0  # ns: when the intent was journaled
    last_fill_ts: int | None = None  # ns: venue time of the last fill we counted
    cancel_requested: bool = False
    pending_modify: PendingModify | None = None


@dataclass(slots=True)
class ReconcilePlan:
    """What to do so that our books match the venue."""

    events: list[OrderEvent] = field(default_factory=list)
    """Feed these to the order tracker, in order (they are journaled and emitted from there)."""
    resend: list[NewOrder] = field(default_factory=list)
    """Intents the venue never saw, to send again with the same client_order_id."""
    cancel_at_venue: list[OrderSnapshot] = field(default_factory=list)
    """Open at the venue but finished in our books: cancel them at the venue."""
    foreign: list[OrderSnapshot] = field(default_factory=list)
    """Open at the venue, unknown to our books: not ours to touch; report them."""
    notes: list[str] = field(default_factory=list)
    """Disagreements the plan cannot repair (to log)."""

    @property
    def changed(self) -> bool:
        return bool(self.events or self.resend or self.cancel_at_venue)


def fills_window_start(open_orders: Iterable[KnownOrder], margin_ns: int = FILLS_MARGIN_NS
                       ) -> int | None:
    """The `ts` to ask `fills_since()` for: early enough to catch every fill of an open order
    that our books have not counted. None when no order is open (no fill can matter)."""
    starts = [
        (order.last_fill_ts if order.last_fill_ts is not None else order.intent_ts)
        for order in open_orders
    ]
    return max(0, min(starts) - margin_ns) if starts else None


def reconcile(
    ours: Sequence[KnownOrder],
    venue_open: Sequence[OrderSnapshot],
    venue_fills: Sequence[Fill],
    *,
    finished: Mapping[str, OrderStatus] | None = None,
    now: int,
    max_resend_age_ns: int = DEFAULT_MAX_RESEND_AGE_NS,
    venue_knows: frozenset[str] = frozenset(),
) -> ReconcilePlan:
    """Compare our open orders with the venue's view and plan the repairs (module docstring).

    `finished` maps the client_order_ids our books hold as finished to their status; `now` is
    the time (ns) stamped on events the plan makes up.
    """
    plan = ReconcilePlan()
    at_venue = {o.client_order_id: o for o in venue_open}
    fills_by_order: dict[str, list[Fill]] = {}
    for fill in sorted(venue_fills, key=lambda f: (f.ts, f.fill_id)):
        fills_by_order.setdefault(fill.client_order_id, []).append(fill)
    mine = {k.snapshot.client_order_id for k in ours}

    for known in ours:
        cid = known.snapshot.client_order_id
        listed = at_venue.get(cid)
        new_fills = [f for f in fills_by_order.get(cid, ()) if f.fill_id not in known.fill_ids]
        venue_saw_it = (
            listed is not None
            or bool(new_fills)
            or known.snapshot.order_id is not None
            or known.snapshot.status is not OrderStatus.PENDING
            or cid in venue_knows
        )
        if not venue_saw_it:
            _never_sent(plan, known, now, max_resend_age_ns)
        elif listed is not None:
            _still_open(plan, known, listed, new_fills, now)
        else:
            _closed(plan, known, new_fills, now)

    finished = finished or {}
    for cid, snapshot in at_venue.items():
        if cid in mine:
            continue
        if cid in finished:
            plan.cancel_at_venue.append(snapshot)
        else:
            plan.foreign.append(snapshot)
    return plan


# ---------------------------------------------------------------- the three cases


def _never_sent(plan: ReconcilePlan, known: KnownOrder, now: int, max_age_ns: int) -> None:
    if now - known.intent_ts <= max_age_ns:
        plan.resend.append(known.request)
        return
    age_s = (now - known.intent_ts) / 1e9
    plan.events.append(
        _event(
            OrderRejected,
            known.snapshot,
            now,
            status=OrderStatus.REJECTED,
            filled_qty=ZERO,
            remaining_qty=ZERO,
            reason=ErrorCode.UNAVAILABLE,
            message=f"the order owner stopped before sending this order to the venue; "
            f"it is {age_s:.0f} s old, too old to send now. Place it again if still wanted",
        )
    )


def _still_open(
    plan: ReconcilePlan,
    known: KnownOrder,
    listed: OrderSnapshot,
    new_fills: list[Fill],
    now: int,
) -> None:
    ours = known.snapshot
    status = ours.status
    if status is OrderStatus.PENDING:
        plan.events.append(
            _event(OrderAccepted, ours, now, status=OrderStatus.ACCEPTED,
                   order_id=ours.order_id or listed.order_id)
        )
        status = OrderStatus.ACCEPTED
    qty, price = ours.qty, ours.price
    if (listed.qty, listed.price) != (qty, price):
        if listed.qty > ours.filled_qty:
            qty, price = listed.qty, listed.price
            plan.events.append(_modified(ours, qty, price, status, now))
        else:
            plan.notes.append(f"{ours.client_order_id}: the venue's qty {listed.qty} is not "
                              f"above our filled {ours.filled_qty}; modification ignored")
    filled = _apply_fills(plan, ours, qty, price, new_fills)
    if listed.filled_qty > filled:
        plan.notes.append(f"{ours.client_order_id}: the venue reports {listed.filled_qty} "
                          f"filled, the fills found add up to {filled}")


def _closed(plan: ReconcilePlan, known: KnownOrder, new_fills: list[Fill], now: int) -> None:
    ours = known.snapshot
    qty, price = ours.qty, ours.price
    total = ours.filled_qty + sum((f.qty for f in new_fills), ZERO)
    wanted = known.pending_modify
    new_qty: Decimal | None = None
    if total > qty:
        new_qty = total  # a qty increase took effect, then the order filled completely
    elif wanted is not None and wanted.qty is not None and wanted.qty == total and new_fills:
        new_qty = total  # a qty decrease took effect, then the order filled completely
    if new_qty is not None:
        if wanted is not None and wanted.price is not None:
            price = wanted.price
        status = OrderStatus.ACCEPTED if ours.filled_qty == 0 else OrderStatus.PARTIALLY_FILLED
        plan.events.append(_modified(ours, new_qty, price, status, now))
        qty = new_qty
    filled = _apply_fills(plan, ours, qty, price, new_fills)
    if filled == qty:
        return
    plan.events.append(
        _event(
            OrderCancelled,
            ours,
            now,
            qty=qty,
            price=price,
            status=OrderStatus.CANCELLED,
            filled_qty=filled,
            remaining_qty=ZERO,
            order_id=ours.order_id or next((f.order_id for f in new_fills if f.order_id), None),
            reason=_cancel_reason(known),
            message="the order was no longer open at the venue when its owner took over",
        )
    )


# ---------------------------------------------------------------- builders


def _apply_fills(
    plan: ReconcilePlan,
    ours: OrderSnapshot,
    qty: Decimal,
    price: Decimal | None,
    fills: list[Fill],
) -> Decimal:
    """Append one fill event per fill; return the filled qty after them."""
    filled = ours.filled_qty
    for fill in fills:
        if filled + fill.qty > qty:
            plan.notes.append(f"{ours.client_order_id}: fill {fill.fill_id} of {fill.qty} "
                              f"exceeds the remaining {qty - filled}; not applied")
            continue
        if fill.side is not ours.side or fill.instrument != ours.instrument:
            plan.notes.append(f"{ours.client_order_id}: fill {fill.fill_id} does not match "
                              f"the order's side or instrument; not applied")
            continue
        filled += fill.qty
        done = filled == qty
        plan.events.append(
            _event(
                OrderFilled if done else OrderPartiallyFilled,
                ours,
                fill.ts,
                qty=qty,
                price=price,
                status=OrderStatus.FILLED if done else OrderStatus.PARTIALLY_FILLED,
                filled_qty=filled,
                remaining_qty=ZERO if done else qty - filled,
                avg_price=None,
                order_id=ours.order_id or fill.order_id,
                fill=fill,
            )
        )
    return filled


def _modified(
    ours: OrderSnapshot, qty: Decimal, price: Decimal | None, status: OrderStatus, now: int
) -> OrderModified:
    modified: OrderModified = _event(
        OrderModified,
        ours,
        now,
        qty=qty,
        price=price,
        status=status,
        remaining_qty=qty - ours.filled_qty,
    )
    return modified


def _cancel_reason(known: KnownOrder) -> CancelReason:
    if known.cancel_requested:
        return CancelReason.REQUESTED
    if known.request.order_type is OrderType.MARKET:
        return CancelReason.NO_LIQUIDITY
    if known.request.time_in_force is TimeInForce.IOC:
        return CancelReason.IOC_REMAINDER
    return CancelReason.VENUE


def _event(cls: type[Any], ours: OrderSnapshot, ts: int, **changes: Any) -> Any:
    fields = ours.model_dump(exclude={"type", "seq"})
    fields.update(ts=ts, **changes)
    return cls(**fields)
