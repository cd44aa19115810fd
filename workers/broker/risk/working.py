"""The account's orders as the position manager follows them. Pure, no I/O.

The order tracker owns order state; this is the manager's own copy of what matters for risk —
which orders may still trade, how much, at what price, who wanted them — kept from the
manager's admissions and the order events the tracker journals. An order the manager never
admitted (placed before it existed, found by reconciliation) is learnt from its first event.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from protocol.market import Side
from protocol.orders import (
    TERMINAL_STATUSES,
    Fill,
    ModifyOrder,
    NewOrder,
    OrderEvent,
    OrderFilled,
    OrderModified,
    OrderPartiallyFilled,
    OrderSnapshot,
    OrderStatus,
    OrderType,
)
from workers.broker.retention import RETAIN_FINISHED, Retention
from workers.broker.risk.amounts import ZERO
from workers.broker.risk.limits import WorkingOrder
from workers.broker.risk.records import Origin


@dataclass(slots=True)
class TrackedOrder:
    client_order_id: str
    instrument: str
    side: Side
    order_type: OrderType
    qty: Decimal
    price: Decimal | None
    origin: Origin
    filled: Decimal = ZERO
    status: OrderStatus = OrderStatus.PENDING
    session_id: str | None = None
    trader_tag: str | None = None
    plan_id: str | None = None
    cancel_requested: bool = False
    modify: tuple[Decimal, Decimal | None] | None = None  # (qty, price) on its way
    seen_event: bool = False  # the tracker has reported on it at least once
    finished: bool = False  # counted among the finished orders kept

    @property
    def is_working(self) -> bool:
        return self.status not in TERMINAL_STATUSES

    @property
    def remaining(self) -> Decimal:
        return ZERO if not self.is_working else self.qty - self.filled

    def view(self) -> WorkingOrder:
        return WorkingOrder(
            self.client_order_id,
            self.instrument,
            self.side,
            self.qty,
            self.filled,
            self.price,
            self.modify,
        )


class OrderLedger:
    """Every order of the account the manager knows, in the order it learnt of them, but for
    the finished ones let go past `retain_finished` (module docstring)."""

    def __init__(self, retain_finished: int = RETAIN_FINISHED) -> None:
        self._orders: dict[str, TrackedOrder] = {}
        self._requests: dict[str, NewOrder] = {}
        self._retention = Retention(retain_finished)
        # The working subset, oldest first: every limit check walks it, so it must not grow
        # with the account's history.
        self._working: dict[str, TrackedOrder] = {}

    def _track(self, order: TrackedOrder) -> None:
        if order.is_working:
            self._working.setdefault(order.client_order_id, order)
        else:
            self._working.pop(order.client_order_id, None)

    def _finish(self, order: TrackedOrder) -> None:
        """Count a newly finished order among those kept; let the oldest go past the limit."""
        order.finished = True
        for oldest in self._retention.finished(order.client_order_id):
            self._orders.pop(oldest, None)
            self._requests.pop(oldest, None)

    def retire(self, client_order_id: str) -> None:
        """Keep only the id of an order never tracked here (one the manager refused)."""
        self._retention.let_go(client_order_id)

    # ------------------------------------------------------------ changes

    def admit(
        self,
        order: NewOrder,
        origin: Origin,
        *,
        session_id: str | None = None,
        trader_tag: str | None = None,
        plan_id: str | None = None,
    ) -> None:
        """Record an order sent to the tracker; it counts as working from now on."""
        if order.client_order_id in self._orders:
            return
        self._requests[order.client_order_id] = order
        tracked = self._orders[order.client_order_id] = TrackedOrder(
            client_order_id=order.client_order_id,
            instrument=order.instrument,
            side=order.side,
            order_type=order.order_type,
            qty=order.qty,
            price=order.price,
            origin=origin,
            session_id=session_id,
            trader_tag=trader_tag,
            plan_id=plan_id,
        )
        self._track(tracked)

    def request_cancel(self, client_order_id: str) -> None:
        order = self._orders.get(client_order_id)
        if order is not None and order.is_working:
            order.cancel_requested = True

    def request_modify(self, modify: ModifyOrder) -> None:
        order = self._orders.get(modify.client_order_id)
        if order is None or not order.is_working:
            return
        qty = modify.qty if modify.qty is not None else order.qty
        price = modify.price if modify.price is not None else order.price
        order.modify = (qty, price)

    def modify_refused(self, client_order_id: str) -> None:
        order = self._orders.get(client_order_id)
        if order is not None:
            order.modify = None

    def cancel_refused(self, client_order_id: str) -> None:
        order = self._orders.get(client_order_id)
        if order is not None:
            order.cancel_requested = False

    def on_event(self, event: OrderEvent) -> Fill | None:
        """Take the order's state from a journaled order event. Returns the fill it carries."""
        if isinstance(event, OrderSnapshot):
            return None  # a report, not a change
        order = self._orders.get(event.client_order_id)
        if order is None and self._retention.gone(event.client_order_id):
            # News of an order let go long after it finished: its fill still counts.
            return event.fill if isinstance(event, OrderPartiallyFilled | OrderFilled) else None
        if order is None:
            order = self._orders[event.client_order_id] = TrackedOrder(
                client_order_id=event.client_order_id,
                instrument=event.instrument,
                side=event.side,
                order_type=event.order_type,
                qty=event.qty,
                price=event.price,
                origin=Origin.VENUE,
            )
        order.seen_event = True
        order.qty, order.price = event.qty, event.price
        order.filled, order.status = event.filled_qty, event.status
        self._track(order)
        if isinstance(event, OrderModified) or not order.is_working:
            order.modify = None
        if not order.is_working:
            order.cancel_requested = False
            if not order.finished:
                self._finish(order)
        if isinstance(event, OrderPartiallyFilled | OrderFilled):
            return event.fill
        return None

    # ------------------------------------------------------------ queries

    def get(self, client_order_id: str) -> TrackedOrder | None:
        return self._orders.get(client_order_id)

    def request_of(self, client_order_id: str) -> NewOrder | None:
        return self._requests.get(client_order_id)

    def retired(self, client_order_id: str) -> bool:
        """Whether `client_order_id` belonged to an order let go (it cannot be used again)."""
        return self._retention.gone(client_order_id)

    def working(self, instrument: str | None = None) -> Iterator[TrackedOrder]:
        """Orders that may still trade, oldest first; only `instrument`'s when given."""
        for order in list(self._working.values()):
            if instrument is None or order.instrument == instrument:
                yield order

    def views(self) -> list[WorkingOrder]:
        return [o.view() for o in self.working()]

    def reducing_remaining(self, instrument: str, closing_side: Side) -> Decimal:
        """Quantity on `closing_side` still working on `instrument`, pending modifies at
        their larger size."""
        total = ZERO
        for order in self.working(instrument):
            if order.side is closing_side:
                remaining = order.remaining
                if order.modify is not None:
                    remaining = max(remaining, order.modify[0] - order.filled)
                total += remaining
        return total

    # ------------------------------------------------------------ durable form

    def snapshot(self) -> dict[str, Any]:
        out: list[dict[str, Any]] = []
        for cid, o in self._orders.items():
            request = self._requests.get(cid)
            out.append(
                {
                    "client_order_id": cid,
                    "instrument": o.instrument,
                    "side": o.side.value,
                    "order_type": o.order_type.value,
                    "qty": str(o.qty),
                    "price": None if o.price is None else str(o.price),
                    "origin": o.origin.value,
                    "filled": str(o.filled),
                    "status": o.status.value,
                    "session_id": o.session_id,
                    "trader_tag": o.trader_tag,
                    "plan_id": o.plan_id,
                    "cancel_requested": o.cancel_requested,
                    "modify": None
                    if o.modify is None
                    else [str(o.modify[0]), None if o.modify[1] is None else str(o.modify[1])],
                    "seen_event": o.seen_event,
                    "request": None if request is None else request.model_dump(mode="json"),
                }
            )
        return {"orders": out, **self._retention.snapshot()}

    @classmethod
    def restore(cls, data: dict[str, Any]) -> OrderLedger:
        ledger = cls()
        ledger._retention = Retention.restore(data)
        finished = ledger._retention.kept_finished()
        for d in data["orders"]:
            modify = d["modify"]
            ledger._orders[d["client_order_id"]] = TrackedOrder(
                client_order_id=d["client_order_id"],
                instrument=d["instrument"],
                side=Side(d["side"]),
                order_type=OrderType(d["order_type"]),
                qty=Decimal(d["qty"]),
                price=None if d["price"] is None else Decimal(d["price"]),
                origin=Origin(d["origin"]),
                filled=Decimal(d["filled"]),
                status=OrderStatus(d["status"]),
                session_id=d["session_id"],
                trader_tag=d["trader_tag"],
                plan_id=d["plan_id"],
                cancel_requested=d["cancel_requested"],
                modify=None
                if modify is None
                else (Decimal(modify[0]), None if modify[1] is None else Decimal(modify[1])),
                seen_event=d["seen_event"],
                finished=d["client_order_id"] in finished,
            )
            ledger._track(ledger._orders[d["client_order_id"]])
            if d["request"] is not None:
                ledger._requests[d["client_order_id"]] = NewOrder.model_validate(d["request"])
        return ledger
