"""The order state machine of one account: pure, no I/O.

Feed it what happens with `receive()` — client requests (`new_order`, `cancel_order`,
`modify_order`), what the venue reports (the order events an adapter yields) and venue
refusals (`VenueRefused`) — and it returns the effects to carry out, in order:

    Journal(entry)   append `entry` to the journal; do this before any effect after it
    PlaceAtVenue     send a new order through the adapter
    CancelAtVenue    send a cancel through the adapter
    ModifyAtVenue    send a modify through the adapter
    Emit(event)      send an order event towards the algo (the Market stamps its seq)
    Refuse(...)      tell the requester its request failed (an `error` frame)

Lifecycle: pending → accepted → partially_filled → filled | cancelled | rejected | expired
(`protocol.orders.LEGAL_TRANSITIONS`). A venue may skip reporting acceptance, so a fill,
cancel or expiry of a pending order implies it.

Guarantees:
* idempotency: a `new_order` whose client_order_id is known creates nothing; the answer is
  an `order_snapshot` of the existing order;
* fills are counted once per fill_id, so a venue replaying its feed cannot double-fill;
* impossible actions raise `OrderStateError` with a code and change nothing: cancel or modify
  of a finished or unknown order, a fill larger than the remaining quantity, a venue event
  that contradicts the known state (e.g. rejecting an order it already filled);
* repeated news (a second ack, a second cancel confirmation) is ignored: no effects.

Retention (`workers.broker.retention`): the tracker keeps the last `retain_finished` finished
orders whole. An older one is forgotten (`on_forget` is told its client_order_id) and only
its client_order_id is kept, so that a `new_order` reusing it is refused (`duplicate_order`)
rather than creating a second order (the Broker answers such a repeat with the order's last
state from the journal before it gets here); a cancel or modify of it gets `order_not_found`.
Memory and the cost of every query then stay bounded however long the account trades. The
journal keeps everything.

Recovery: every journaled entry is itself a valid input. Replaying the journal through a new
tracker in order, discarding the effects, rebuilds the same state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Context, Decimal
from typing import Any, Literal

from protocol.errors import ErrorCode
from protocol.orders import (
    LEGAL_TRANSITIONS,
    CancelOrder,
    Fill,
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
    OrderType,
)
from workers.broker.retention import RETAIN_FINISHED, Retention, reused_id_message

ZERO = Decimal(0)
_EXACT = Context(prec=160)  # sums and products of wire-sized decimals never round
_AVERAGE = Context(prec=28)  # average prices are quotients; quantities stay exact

ClientRequest = NewOrder | CancelOrder | ModifyOrder



# ---------------------------------------------------------------- inputs and effects


@dataclass(frozen=True, slots=True)
class VenueRefused:
    """The adapter raised `OrderRejectedError` for a request we sent."""

    client_order_id: str
    action: Literal["place", "cancel", "modify"]
    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class Journal:
    """Append `entry` to the journal before carrying out the effects that follow."""

    entry: ClientRequest | OrderEvent


@dataclass(frozen=True, slots=True)
class PlaceAtVenue:
    request: NewOrder


@dataclass(frozen=True, slots=True)
class CancelAtVenue:
    client_order_id: str
    order_id: str | None


@dataclass(frozen=True, slots=True)
class ModifyAtVenue:
    client_order_id: str
    order_id: str | None
    qty: Decimal | None
    price: Decimal | None


@dataclass(frozen=True, slots=True)
class Emit:
    """Send `event` towards the algo."""

    event: OrderEvent


@dataclass(frozen=True, slots=True)
class Refuse:
    """Tell the requester that its request about `client_order_id` failed."""

    client_order_id: str
    code: ErrorCode
    message: str


Effect = Journal | PlaceAtVenue | CancelAtVenue | ModifyAtVenue | Emit | Refuse
TrackerInput = ClientRequest | OrderEvent | VenueRefused


class OrderStateError(Exception):
    """The input asks for something impossible in the order's current state. Nothing changed.
    For a client request, answer with an `error` carrying `code`; for a venue event, the venue
    and our books disagree: log it and reconcile."""

    def __init__(self, code: ErrorCode, message: str, client_order_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.client_order_id = client_order_id


# ---------------------------------------------------------------- state


def _decimal(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


@dataclass(slots=True)
class OrderRecord:
    """What we know about one order."""

    request: NewOrder
    status: OrderStatus = OrderStatus.PENDING
    order_id: str | None = None
    qty: Decimal = ZERO
    price: Decimal | None = None
    filled: Decimal = ZERO
    notional: Decimal = ZERO
    fill_ids: set[str] = field(default_factory=set)
    cancel_pending: bool = False
    modify_pending: bool = False
    finished: bool = False  # counted among the finished orders kept (see Retention)

    @property
    def remaining(self) -> Decimal:
        """Quantity still working; 0 once finished."""
        return ZERO if self.status.is_terminal else self.qty - self.filled

    @property
    def avg_price(self) -> Decimal | None:
        return _AVERAGE.divide(self.notional, self.filled) if self.filled else None


def _record_state(record: OrderRecord) -> dict[str, Any]:
    return {"request": record.request.model_dump(mode="json", exclude_none=True),
            "status": record.status.value, "order_id": record.order_id, "qty": str(record.qty),
            "price": None if record.price is None else str(record.price),
            "filled": str(record.filled), "notional": str(record.notional),
            "fill_ids": sorted(record.fill_ids), "cancel_pending": record.cancel_pending,
            "modify_pending": record.modify_pending, "finished": record.finished}


def _record_from_state(state: dict[str, Any]) -> OrderRecord:
    return OrderRecord(
        request=NewOrder.model_validate(state["request"]), status=OrderStatus(state["status"]),
        order_id=state["order_id"], qty=Decimal(state["qty"]), price=_decimal(state["price"]),
        filled=Decimal(state["filled"]), notional=Decimal(state["notional"]),
        fill_ids=set(state["fill_ids"]), cancel_pending=state["cancel_pending"],
        modify_pending=state["modify_pending"], finished=state["finished"])


class OrderTracker:
    """Every order of one account. `clock()` gives ns since the epoch for events the tracker
    creates itself (rejections it derives from a refused request). Past `retain_finished`
    finished orders the oldest is forgotten, and `on_forget` hears of it (module docstring)."""

    def __init__(self, account: str, clock: Callable[[], int], *,
                 retain_finished: int = RETAIN_FINISHED,
                 on_forget: Callable[[str], None] | None = None) -> None:
        self.account = account
        self._clock = clock
        self._orders: dict[str, OrderRecord] = {}
        self._retention = Retention(retain_finished)
        self._on_forget = on_forget

    # ------------------------------------------------------------ queries

    def get(self, client_order_id: str) -> OrderSnapshot | None:
        """The order's current state, or None if unknown."""
        record = self._orders.get(client_order_id)
        return None if record is None else self._build(OrderSnapshot, record, self._clock())

    def status(self, client_order_id: str) -> OrderStatus | None:
        record = self._orders.get(client_order_id)
        return None if record is None else record.status

    # ------------------------------------------------------------ durable form

    def snapshot(self) -> dict[str, Any]:
        """Every kept order and what retention remembers, as JSON-ready data (`restore`)."""
        return {"orders": [_record_state(r) for r in self._orders.values()],
                **self._retention.snapshot()}

    @classmethod
    def restore(cls, account: str, clock: Callable[[], int], data: dict[str, Any], *,
                on_forget: Callable[[str], None] | None = None) -> OrderTracker:
        """The tracker `snapshot()` described."""
        tracker = cls(account, clock, on_forget=on_forget)
        tracker._retention = Retention.restore(data)
        for state in data["orders"]:
            record = _record_from_state(state)
            tracker._orders[record.request.client_order_id] = record
        return tracker

    def request_of(self, client_order_id: str) -> NewOrder | None:
        """The request a kept order was placed with."""
        record = self._orders.get(client_order_id)
        return None if record is None else record.request

    def forgotten(self, client_order_id: str) -> bool:
        """Whether `client_order_id` belonged to a finished order let go (Retention)."""
        return self._retention.gone(client_order_id)

    @property
    def kept(self) -> int:
        """Orders held whole: the open ones and the last finished ones."""
        return len(self._orders)

    def open_orders(self) -> list[OrderSnapshot]:
        """Orders not yet finished (pending included), oldest first."""
        ts = self._clock()
        return [
            self._build(OrderSnapshot, r, ts)
            for r in self._orders.values()
            if not r.status.is_terminal
        ]

    # ------------------------------------------------------------ the one entry point

    def receive(self, message: TrackerInput) -> list[Effect]:
        """Apply one input; return the effects to carry out in order. Raises
        `OrderStateError` (and changes nothing) when the input is impossible."""
        effects = self._dispatch(message)
        record = self._orders.get(message.client_order_id)
        if record is not None and not record.finished and record.status.is_terminal:
            self._finish(message.client_order_id, record)
        return effects

    def _dispatch(self, message: TrackerInput) -> list[Effect]:
        if isinstance(message, VenueRefused):
            return self._on_refused(message)
        if message.account != self.account:
            raise OrderStateError(
                ErrorCode.FORBIDDEN,
                f"this tracker holds account {self.account!r}, not {message.account!r}",
                message.client_order_id,
            )
        if isinstance(message, NewOrder):
            return self._on_new(message)
        if isinstance(message, CancelOrder):
            return self._on_cancel(message)
        if isinstance(message, ModifyOrder):
            return self._on_modify(message)
        return self._on_venue_event(message)

    def _finish(self, client_order_id: str, record: OrderRecord) -> None:
        """Count a newly finished order among those kept; let the oldest go past the limit."""
        record.finished = True
        for oldest in self._retention.finished(client_order_id):
            del self._orders[oldest]
            if self._on_forget is not None:
                self._on_forget(oldest)

    # ------------------------------------------------------------ client requests

    def _on_new(self, request: NewOrder) -> list[Effect]:
        existing = self._orders.get(request.client_order_id)
        if existing is not None:
            return [Emit(self._build(OrderSnapshot, existing, self._clock()))]
        if self._retention.gone(request.client_order_id):
            raise OrderStateError(ErrorCode.DUPLICATE_ORDER,
                                  reused_id_message(request.client_order_id),
                                  request.client_order_id)
        self._orders[request.client_order_id] = OrderRecord(
            request=request, qty=request.qty, price=request.price
        )
        return [Journal(request), PlaceAtVenue(request)]

    def _on_cancel(self, request: CancelOrder) -> list[Effect]:
        record = self._find(request.client_order_id)
        if record.status is OrderStatus.CANCELLED:
            # Already what was asked: a cancel re-sent after a failover (its first copy may
            # have been carried out) is answered with the order's state, like a repeated
            # new_order, not refused.
            return [Emit(self._build(OrderSnapshot, record, self._clock()))]
        if record.status.is_terminal:
            raise OrderStateError(
                ErrorCode.ORDER_NOT_CANCELLABLE,
                f"order {request.client_order_id!r} is already {record.status}",
                request.client_order_id,
            )
        if record.cancel_pending:
            return []  # the first cancel is on its way; a second changes nothing
        record.cancel_pending = True
        return [Journal(request), CancelAtVenue(request.client_order_id, record.order_id)]

    def _on_modify(self, request: ModifyOrder) -> list[Effect]:
        record = self._find(request.client_order_id)
        cid = request.client_order_id
        if record.status.is_terminal:
            raise OrderStateError(
                ErrorCode.ORDER_NOT_MODIFIABLE, f"order {cid!r} is already {record.status}", cid
            )
        if record.request.order_type is OrderType.MARKET:
            raise OrderStateError(
                ErrorCode.ORDER_NOT_MODIFIABLE, "a market order cannot be modified", cid
            )
        if record.cancel_pending:
            raise OrderStateError(
                ErrorCode.ORDER_NOT_MODIFIABLE, f"order {cid!r} is being cancelled", cid
            )
        if request.qty is not None and request.qty <= record.filled:
            raise OrderStateError(
                ErrorCode.INVALID_ORDER,
                f"qty must exceed the filled qty {record.filled}; cancel instead",
                cid,
            )
        if not record.modify_pending and request.qty in (None, record.qty) \
                and request.price in (None, record.price):
            # Nothing to change (a modify re-sent after a failover that was carried out
            # already): answered with the order's state; the venue is not asked.
            return [Emit(self._build(OrderSnapshot, record, self._clock()))]
        record.modify_pending = True
        return [
            Journal(request),
            ModifyAtVenue(cid, record.order_id, request.qty, request.price),
        ]

    def _on_refused(self, refusal: VenueRefused) -> list[Effect]:
        record = self._find(refusal.client_order_id)
        if refusal.action == "place":
            if refusal.code is ErrorCode.DUPLICATE_ORDER:
                # The venue already holds this client_order_id (a resend after failover): the
                # order exists, so it stays pending until reconciliation reports its state.
                return []
            if record.status is not OrderStatus.PENDING:
                raise self._contradiction(record, OrderStatus.REJECTED)
            record.status = OrderStatus.REJECTED
            event = self._build(
                OrderRejected, record, self._clock(), reason=refusal.code, message=refusal.message
            )
            return [Journal(event), Emit(event)]
        if refusal.action == "cancel":
            record.cancel_pending = False
        else:
            record.modify_pending = False
        return [Refuse(refusal.client_order_id, refusal.code, refusal.message)]

    # ------------------------------------------------------------ venue events

    def _on_venue_event(self, event: OrderEvent) -> list[Effect]:
        record = self._find(event.client_order_id)
        if isinstance(event, OrderPartiallyFilled | OrderFilled):
            return self._on_fill(record, event.fill, event.ts, event.order_id)
        if isinstance(event, OrderSnapshot):
            return []  # a report, not a change; reconciliation compares it separately
        target = _TARGET_STATUS[type(event)]
        if record.status is target and target is not OrderStatus.ACCEPTED:
            return []  # the same news again
        if isinstance(event, OrderAccepted) and record.status in (
            OrderStatus.ACCEPTED,
            OrderStatus.PARTIALLY_FILLED,
            OrderStatus.FILLED,
            OrderStatus.CANCELLED,
            OrderStatus.EXPIRED,
        ):
            # A late or repeated ack: what followed it already implied it.
            record.order_id = record.order_id or event.order_id
            return []
        if isinstance(event, OrderModified):
            return self._on_modified(record, event)
        if target not in LEGAL_TRANSITIONS[record.status]:
            raise self._contradiction(record, target)
        record.status = target
        record.order_id = record.order_id or event.order_id
        record.cancel_pending = False
        record.modify_pending = False
        extra: dict[str, Any] = {}
        if isinstance(event, OrderCancelled | OrderRejected):
            extra = {"reason": event.reason, "message": event.message}
        out = self._build(type(event), record, event.ts, **extra)
        return [Journal(out), Emit(out)]

    def _on_fill(
        self, record: OrderRecord, fill: Fill, ts: int, order_id: str | None
    ) -> list[Effect]:
        if fill.fill_id in record.fill_ids:
            return []
        cid = record.request.client_order_id
        if record.status.is_terminal:
            raise OrderStateError(
                ErrorCode.ILLEGAL_TRANSITION,
                f"fill {fill.fill_id} for order {cid!r}, which is already {record.status}",
                cid,
            )
        if fill.qty > record.remaining:
            raise OrderStateError(
                ErrorCode.ILLEGAL_TRANSITION,
                f"fill {fill.fill_id} of {fill.qty} exceeds the remaining {record.remaining}",
                cid,
            )
        if fill.side is not record.request.side or fill.instrument != record.request.instrument:
            raise OrderStateError(
                ErrorCode.ILLEGAL_TRANSITION,
                f"fill {fill.fill_id} does not match order {cid!r}'s side or instrument",
                cid,
            )
        record.fill_ids.add(fill.fill_id)
        record.filled = _EXACT.add(record.filled, fill.qty)
        record.notional = _EXACT.add(record.notional, _EXACT.multiply(fill.price, fill.qty))
        record.order_id = record.order_id or order_id or fill.order_id
        if record.filled == record.qty:
            record.status = OrderStatus.FILLED
            record.cancel_pending = record.modify_pending = False
            out: OrderEvent = self._build(OrderFilled, record, ts, fill=fill)
        else:
            record.status = OrderStatus.PARTIALLY_FILLED
            out = self._build(OrderPartiallyFilled, record, ts, fill=fill)
        return [Journal(out), Emit(out)]

    def _on_modified(self, record: OrderRecord, event: OrderModified) -> list[Effect]:
        cid = record.request.client_order_id
        if record.status.is_terminal:
            raise self._contradiction(record, event.status)
        if event.qty <= record.filled:
            raise OrderStateError(
                ErrorCode.ILLEGAL_TRANSITION,
                f"modified qty {event.qty} is not above the filled {record.filled}",
                cid,
            )
        record.qty, record.price = event.qty, event.price
        record.modify_pending = False
        record.order_id = record.order_id or event.order_id
        if record.status is OrderStatus.PENDING:
            record.status = OrderStatus.ACCEPTED  # modified implies accepted
        out = self._build(OrderModified, record, event.ts)
        return [Journal(out), Emit(out)]

    # ------------------------------------------------------------ helpers

    def _find(self, client_order_id: str) -> OrderRecord:
        record = self._orders.get(client_order_id)
        if record is None:
            raise OrderStateError(
                ErrorCode.ORDER_NOT_FOUND, f"no order {client_order_id!r}", client_order_id
            )
        return record

    @staticmethod
    def _contradiction(record: OrderRecord, target: OrderStatus) -> OrderStateError:
        cid = record.request.client_order_id
        return OrderStateError(
            ErrorCode.ILLEGAL_TRANSITION,
            f"order {cid!r} cannot go from {record.status} to {target}",
            cid,
        )

    @staticmethod
    def _build(model: type[Any], record: OrderRecord, ts: int, **extra: Any) -> Any:
        request = record.request
        return model(
            account=request.account,
            client_order_id=request.client_order_id,
            order_id=record.order_id,
            instrument=request.instrument,
            side=request.side,
            order_type=request.order_type,
            qty=record.qty,
            price=record.price,
            time_in_force=request.time_in_force,
            status=record.status,
            filled_qty=record.filled,
            remaining_qty=record.remaining,
            avg_price=record.avg_price,
            ts=ts,
            **extra,
        )


_TARGET_STATUS: dict[type[Any], OrderStatus] = {
    OrderAccepted: OrderStatus.ACCEPTED,
    OrderRejected: OrderStatus.REJECTED,
    OrderCancelled: OrderStatus.CANCELLED,
    OrderExpired: OrderStatus.EXPIRED,
    OrderModified: OrderStatus.ACCEPTED,
}
