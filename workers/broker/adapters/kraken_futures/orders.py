"""Kraken Futures order feedback -> tradefleet order events. Pure: no I/O, no clock.

Kraken Futures tells us about an order in three places, in no guaranteed order:

* the REST answer to ``sendorder`` / ``editorder`` / ``cancelorder`` (decides acceptance);
* the private ``open_orders`` feed (placed, edited, cancelled; ``full_fill`` removals);
* the private ``fills`` feed (every execution, with its fee).

`OrderTracker` merges them into one consistent stream per order, in protocol terms:

* An order is registered (`begin`) *before* its ``sendorder`` is sent. Frames that arrive for
  it before the REST answer are held; the answer decides: accepted -> ``order_accepted`` then
  the held frames; rejected -> the caller raises `OrderRejectedError` and the held frames are
  dropped (no ``order_rejected`` event doubles the exception).
* Fills are counted once per ``fill_id`` and come only from the ``fills`` feed (it carries
  fees; the ``EXECUTION`` events of a REST answer do not). An ``order_accepted`` always comes
  first, even when the venue reported acceptance only implicitly.
* An IOC or market order ends once the fills of what the venue executed at once have
  arrived: the rest is cancelled (``ioc_remainder`` / ``no_liquidity``).
* Frames for an order id nobody has claimed yet (no ``cli_ord_id``) are parked until
  ``sendorder``'s answer names that id, bounded in number.
* Orders with a ``cli_ord_id`` that this process did not place (a previous Broker's) are
  learnt from ``open_orders`` frames, silently, so their later fills and cancels are reported.

What cannot be reconciled here (a fill that arrives after the order was reported cancelled, a
fill of an order nobody knows) is recorded in `anomalies` for the adapter to log; the Broker
recovers it through `fills_since` and `open_orders`.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeAlias

from pydantic import ValidationError

from protocol.market import Side
from protocol.orders import (
    CancelReason,
    Fill,
    Liquidity,
    OrderAccepted,
    OrderCancelled,
    OrderEvent,
    OrderExpired,
    OrderFilled,
    OrderModified,
    OrderPartiallyFilled,
    OrderSnapshot,
    OrderStatus,
    OrderType,
    TimeInForce,
)
from workers.broker.adapters.kraken_futures import schemas
from workers.broker.adapters.kraken_futures.errors import MalformedMessage
from workers.broker.adapters.kraken_futures.products import canonical_currency

InstrumentOf = Callable[[str], str | None]
"""Product id -> canonical instrument, or None for products this session does not trade."""

_NS_PER_MS = 1_000_000
_ZERO = Decimal(0)

# open_orders cancel reasons (Kraken Futures "open_orders" feed) -> why, in our terms.
CANCEL_REASONS: dict[str, CancelReason] = {
    "cancelled_by_user": CancelReason.REQUESTED,
    "liquidation": CancelReason.RISK,
    "not_enough_margin": CancelReason.RISK,
    "would_execute_self": CancelReason.SELF_TRADE,
    "ioc_order_failed_because_it_would_not_be_executed": CancelReason.IOC_REMAINDER,
    "dead_man_switch": CancelReason.VENUE,
    "cancelled_by_admin": CancelReason.VENUE,
    "market_inactive": CancelReason.VENUE,
    "would_not_reduce_position": CancelReason.VENUE,
    "post_order_failed_because_it_would_filled": CancelReason.VENUE,
}
_EXPIRY_REASONS = frozenset({"contract_expired"})
_FILL_REMOVAL = "full_fill"  # the fills feed finishes the order, not this frame
_EDIT_REASON = "edited_by_user"


def ms_to_ns(ms: int) -> int:
    return ms * _NS_PER_MS


def parse_iso_ns(text: str) -> int:
    """``2019-09-05T16:33:50.734Z`` -> ns since the epoch, exactly. Raises `MalformedMessage`."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError) as exc:
        raise MalformedMessage(f"not an ISO 8601 time: {text!r}") from exc
    if moment.tzinfo is None:
        raise MalformedMessage(f"time without a zone: {text!r}")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def format_iso_ms(ns: int) -> str:
    """ns since the epoch -> ``2019-09-05T16:33:50.734Z`` (millisecond precision, floored)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    moment = _EPOCH + timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{rest // _NS_PER_MS:03d}Z"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------- tracked state


@dataclass(slots=True)
class TrackedOrder:
    """What we know of one order; mutated only by `OrderTracker`."""

    client_order_id: str
    instrument: str
    product_id: str
    side: Side
    order_type: OrderType
    time_in_force: TimeInForce
    qty: Decimal
    price: Decimal | None
    order_id: str | None = None
    status: OrderStatus = OrderStatus.PENDING
    filled: Decimal = _ZERO
    notional: Decimal | None = _ZERO  # sum of price x qty over the fills; None if not all known
    awaiting_answer: bool = False  # sendorder sent, its answer not yet read
    silent: bool = False  # refused synchronously: the caller got the exception, no events
    ioc_executed: Decimal | None = None  # IOC/market: executed at once; the rest is cancelled
    fill_ids: set[str] = field(default_factory=set)
    held: list[Held] = field(default_factory=list)

    @property
    def remaining(self) -> Decimal:
        if self.status.is_terminal:
            return _ZERO
        return max(_ZERO, self.qty - self.filled)

    @property
    def avg_price(self) -> Decimal | None:
        if self.notional is None or self.filled <= 0:
            return None
        return self.notional / self.filled


PrivateItem: TypeAlias = schemas.Fill | schemas.OpenOrdersMessage
Held: TypeAlias = tuple[PrivateItem, int]  # the item and when it was received (ns)


class OrderTracker:
    """The order state of one account, fed by REST answers and private frames.

    Every method returns the protocol events to publish, in order. Nothing here raises on
    venue data; inconsistencies are appended to `anomalies` instead.
    """

    def __init__(
        self,
        account: str,
        instrument_of: InstrumentOf,
        *,
        max_finished: int = 10_000,
        max_parked: int = 1_000,
    ) -> None:
        self.account = account
        self._instrument_of = instrument_of
        self._orders: dict[str, TrackedOrder] = {}
        self._by_order_id: dict[str, str] = {}
        self._finished: deque[str] = deque()
        self._max_finished = max_finished
        self._parked: OrderedDict[str, list[Held]] = OrderedDict()
        self._max_parked = max_parked
        self._fees: OrderedDict[str, tuple[Decimal, str]] = OrderedDict()
        self.anomalies: deque[str] = deque(maxlen=1_000)

    # ------------------------------------------------------------ lookups

    def get(self, client_order_id: str) -> TrackedOrder | None:
        return self._orders.get(client_order_id)

    def client_order_id_of(self, order_id: str) -> str | None:
        return self._by_order_id.get(order_id)

    def fee_of(self, fill_id: str) -> tuple[Decimal, str] | None:
        """Fee and currency of a fill seen on the ``fills`` feed (REST fills carry none)."""
        return self._fees.get(fill_id)

    def drain_anomalies(self) -> list[str]:
        drained = list(self.anomalies)
        self.anomalies.clear()
        return drained

    # ------------------------------------------------------------ our own requests

    def begin(
        self,
        *,
        client_order_id: str,
        instrument: str,
        product_id: str,
        side: Side,
        order_type: OrderType,
        time_in_force: TimeInForce,
        qty: Decimal,
        price: Decimal | None,
    ) -> TrackedOrder:
        """Register an order about to be sent; frames for it are held until `accepted`,
        `rejected` or `unresolved`. A previous entry under the same id is replaced."""
        order = TrackedOrder(
            client_order_id=client_order_id,
            instrument=instrument,
            product_id=product_id,
            side=side,
            order_type=order_type,
            time_in_force=time_in_force,
            qty=qty,
            price=price,
            awaiting_answer=True,
        )
        self._orders[client_order_id] = order
        return order

    def accepted(
        self, client_order_id: str, order_id: str, ts: int, *, executed: Decimal = _ZERO
    ) -> list[OrderEvent]:
        """``sendorder`` answered with a success status. `executed` is what the answer's
        ``EXECUTION`` events add up to (an IOC or market order is over once that much has
        filled)."""
        order = self._orders.get(client_order_id)
        if order is None:
            self.anomalies.append(f"acceptance for unknown order {client_order_id}")
            return []
        order.awaiting_answer = False
        self._claim(order, order_id)
        if order.order_type is OrderType.MARKET or order.time_in_force is TimeInForce.IOC:
            order.ioc_executed = executed
        events = self._accept(order, ts)
        events += self._release(order)
        events += self._close_ioc(order, ts)
        return events

    def rejected(self, client_order_id: str, order_id: str | None = None) -> None:
        """``sendorder`` was refused; the caller raises. Frames about it are dropped."""
        order = self._orders.get(client_order_id)
        if order is None:
            return
        order.awaiting_answer = False
        order.silent = True
        order.status = OrderStatus.REJECTED
        order.held.clear()
        if order_id:
            self._claim(order, order_id)
            self._parked.pop(order_id, None)
        self._finish(order)

    def forget(self, client_order_id: str) -> None:
        """The order was never sent (or the venue took nothing): drop it and what it held,
        so the id may be used again."""
        order = self._orders.pop(client_order_id, None)
        if order is not None and order.order_id is not None:
            self._by_order_id.pop(order.order_id, None)

    def unresolved(self, client_order_id: str, ts: int) -> list[OrderEvent]:
        """``sendorder``'s outcome is unknown (timeout, 5xx): stop holding frames, so that
        if the venue did take the order its feed reports it."""
        order = self._orders.get(client_order_id)
        if order is None or not order.awaiting_answer:
            return []
        order.awaiting_answer = False
        return self._release(order) + self._close_ioc(order, ts)

    def edited(
        self, client_order_id: str, ts: int, *, qty: Decimal | None, price: Decimal | None
    ) -> list[OrderEvent]:
        """``editorder`` succeeded: `qty` is the new total (filled part included)."""
        order = self._orders.get(client_order_id)
        if order is None or order.silent:
            return []
        return self._modify(order, ts, qty=qty, price=price)

    def cancelled(
        self, client_order_id: str, ts: int, reason: CancelReason = CancelReason.REQUESTED
    ) -> list[OrderEvent]:
        """``cancelorder`` succeeded."""
        order = self._orders.get(client_order_id)
        if order is None or order.silent:
            return []
        return self._end(order, ts, reason, None)

    # ------------------------------------------------------------ private feeds

    def on_fills(self, message: schemas.FillsMessage, now: int) -> list[OrderEvent]:
        """A ``fills`` or ``fills_snapshot`` frame received at `now` (ns). Snapshots
        re-deliver old fills: each is counted once. Applied oldest first."""
        events: list[OrderEvent] = []
        for fill in sorted(message.fills, key=lambda f: (f.time, f.seq)):
            events += self._route(fill.order_id, fill.cli_ord_id, (fill, now), learn=None)
        return events

    def on_open_orders(self, message: schemas.OpenOrdersMessage, now: int) -> list[OrderEvent]:
        """An ``open_orders`` delta received at `now` (ns; cancel frames carry no time)."""
        learn = message.order if not message.is_cancel else None
        cli_ord_id = message.order.cli_ord_id if message.order is not None else None
        return self._route(message.order_id, cli_ord_id, (message, now), learn=learn)

    def on_open_orders_snapshot(
        self, message: schemas.OpenOrdersSnapshot, now: int
    ) -> list[OrderEvent]:
        """``open_orders_snapshot``: learn orders we did not know; catch up on edits."""
        events: list[OrderEvent] = []
        for raw in message.orders:
            item = schemas.OpenOrdersMessage("open_orders", raw, raw.order_id, False, "snapshot")
            events += self._route(raw.order_id, raw.cli_ord_id, (item, now), learn=raw)
        return events

    # ------------------------------------------------------------ routing

    def _route(
        self,
        order_id: str,
        cli_ord_id: str | None,
        item: Held,
        *,
        learn: schemas.OpenOrder | None,
    ) -> list[OrderEvent]:
        order = self._find(order_id, cli_ord_id)
        if order is None and learn is not None and cli_ord_id:
            order = self._learn(learn, cli_ord_id)
            if order is not None:
                return []  # learnt as it is now: nothing changed that a consumer missed
        if order is None:
            if cli_ord_id:
                self.anomalies.append(
                    f"{_what(item)} for order {order_id} ({cli_ord_id}) this session "
                    "does not know; left to reconciliation"
                )
            else:
                self._park(order_id, item)
            return []
        if order.silent:
            return []
        if order.order_id is None:
            self._claim(order, order_id)
        if order.awaiting_answer:
            order.held.append(item)
            return []
        return self._apply(order, item)

    def _find(self, order_id: str, cli_ord_id: str | None) -> TrackedOrder | None:
        cid = self._by_order_id.get(order_id)
        if cid is None and cli_ord_id:
            cid = cli_ord_id
        return self._orders.get(cid) if cid is not None else None

    def _apply(self, order: TrackedOrder, held: Held) -> list[OrderEvent]:
        item, now = held
        if isinstance(item, schemas.Fill):
            return self._fill(order, item)
        return self._open_orders(order, item, now)

    def _release(self, order: TrackedOrder) -> list[OrderEvent]:
        items = order.held
        order.held = []
        if order.order_id is not None:
            items += self._parked.pop(order.order_id, [])
        events: list[OrderEvent] = []
        for item in items:
            events += self._apply(order, item)
        return events

    def _park(self, order_id: str, item: Held) -> None:
        self._parked.setdefault(order_id, []).append(item)
        self._parked.move_to_end(order_id)
        while len(self._parked) > self._max_parked:
            dropped, _ = self._parked.popitem(last=False)
            self.anomalies.append(f"dropped frames of unclaimed order {dropped}")

    def _claim(self, order: TrackedOrder, order_id: str) -> None:
        order.order_id = order_id
        self._by_order_id[order_id] = order.client_order_id

    def _learn(self, raw: schemas.OpenOrder, cli_ord_id: str) -> TrackedOrder | None:
        instrument = self._instrument_of(raw.instrument)
        if instrument is None or raw.type != "limit" or raw.limit_price is None:
            return None
        order = TrackedOrder(
            client_order_id=cli_ord_id,
            instrument=instrument,
            product_id=raw.instrument.upper(),
            side=Side.BUY if raw.direction == 0 else Side.SELL,
            order_type=OrderType.LIMIT,
            time_in_force=TimeInForce.GTC,
            qty=raw.qty,
            price=raw.limit_price,
            filled=raw.filled,
            notional=_ZERO if raw.filled == 0 else None,
            status=OrderStatus.PARTIALLY_FILLED if raw.filled > 0 else OrderStatus.ACCEPTED,
        )
        if _event(OrderSnapshot, order, self.account, ms_to_ns(raw.time), self.anomalies) is None:
            return None  # not representable (e.g. an id outside our pattern)
        self._orders[cli_ord_id] = order
        self._claim(order, raw.order_id)
        return order

    # ------------------------------------------------------------ state changes

    def _fill(self, order: TrackedOrder, fill: schemas.Fill) -> list[OrderEvent]:
        if fill.fill_id in order.fill_ids:
            return []
        order.fill_ids.add(fill.fill_id)
        self._remember_fee(fill)
        ts = ms_to_ns(fill.time)
        if order.status.is_terminal:
            self.anomalies.append(
                f"fill {fill.fill_id} of {order.client_order_id} arrived after the order "
                f"was reported {order.status}; left to reconciliation"
            )
            return []
        if fill.qty <= 0:
            self.anomalies.append(f"fill {fill.fill_id} has no quantity")
            return []
        events = self._accept(order, ts)
        order.filled += fill.qty
        if order.filled > order.qty:
            self.anomalies.append(
                f"{order.client_order_id} filled {order.filled} of {order.qty}; "
                "taking the venue's word"
            )
            order.qty = order.filled
        if order.notional is not None:
            order.notional += fill.price * fill.qty
        done = fill.remaining_order_qty <= 0 or order.filled >= order.qty
        order.status = OrderStatus.FILLED if done else OrderStatus.PARTIALLY_FILLED
        fee, currency = self._fees[fill.fill_id]
        try:
            execution = Fill(
                fill_id=fill.fill_id,
                account=self.account,
                client_order_id=order.client_order_id,
                order_id=order.order_id,
                instrument=order.instrument,
                side=order.side,
                qty=fill.qty,
                price=fill.price,
                fee=fee,
                fee_currency=currency,
                liquidity=Liquidity.MAKER if fill.fill_type == "maker" else Liquidity.TAKER,
                ts=ts,
            )
        except ValidationError as exc:
            self.anomalies.append(f"fill {fill.fill_id} not representable: {exc.errors()[0]}")
            return events
        kind = OrderFilled if done else OrderPartiallyFilled
        event = _event(kind, order, self.account, ts, self.anomalies, fill=execution)
        if event is not None:
            events.append(event)
        if done:
            self._finish(order)
        return events + self._close_ioc(order, ts)

    def _open_orders(
        self, order: TrackedOrder, message: schemas.OpenOrdersMessage, now: int
    ) -> list[OrderEvent]:
        raw = message.order
        ts = ms_to_ns(raw.last_update_time) if raw is not None else now
        if message.is_cancel:
            reason = message.reason or ""
            if reason == _FILL_REMOVAL or order.status.is_terminal:
                return []
            if reason in _EXPIRY_REASONS:
                return self._expire(order, ts)
            return self._end(order, ts, CANCEL_REASONS.get(reason, CancelReason.VENUE), reason)
        if raw is None or order.status.is_terminal:
            return []
        events = self._accept(order, ts)
        if message.reason in (_EDIT_REASON, "snapshot"):
            events += self._modify(order, ts, qty=raw.qty, price=raw.limit_price)
        return events

    def _accept(self, order: TrackedOrder, ts: int) -> list[OrderEvent]:
        if order.status is not OrderStatus.PENDING:
            return []
        order.status = OrderStatus.ACCEPTED
        event = _event(OrderAccepted, order, self.account, ts, self.anomalies)
        return [event] if event is not None else []

    def _modify(
        self, order: TrackedOrder, ts: int, *, qty: Decimal | None, price: Decimal | None
    ) -> list[OrderEvent]:
        if order.status not in (OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED):
            return []
        new_qty = order.qty if qty is None else qty
        new_price = order.price if price is None or order.order_type is OrderType.MARKET else price
        if new_qty == order.qty and new_price == order.price:
            return []  # already reported (REST answer and feed both tell of one edit)
        if new_qty <= order.filled:
            self.anomalies.append(f"edit of {order.client_order_id} below its filled qty")
            return []
        order.qty, order.price = new_qty, new_price
        event = _event(OrderModified, order, self.account, ts, self.anomalies)
        return [event] if event is not None else []

    def _end(
        self, order: TrackedOrder, ts: int, reason: CancelReason, detail: str | None
    ) -> list[OrderEvent]:
        if order.status.is_terminal:
            return []
        events = self._accept(order, ts)
        order.status = OrderStatus.CANCELLED
        event = _event(
            OrderCancelled, order, self.account, ts, self.anomalies, reason=reason, message=detail
        )
        self._finish(order)
        return events + ([event] if event is not None else [])

    def _expire(self, order: TrackedOrder, ts: int) -> list[OrderEvent]:
        events = self._accept(order, ts)
        order.status = OrderStatus.EXPIRED
        event = _event(OrderExpired, order, self.account, ts, self.anomalies)
        self._finish(order)
        return events + ([event] if event is not None else [])

    def _close_ioc(self, order: TrackedOrder, ts: int) -> list[OrderEvent]:
        executed = order.ioc_executed
        if executed is None or order.awaiting_answer or order.status.is_terminal:
            return []
        if order.status is OrderStatus.PENDING or order.filled < executed:
            return []  # still waiting for the fills of what executed
        reason = (
            CancelReason.NO_LIQUIDITY
            if order.order_type is OrderType.MARKET
            else CancelReason.IOC_REMAINDER
        )
        return self._end(order, ts, reason, "the unfilled rest of an immediate order")

    def _remember_fee(self, fill: schemas.Fill) -> None:
        self._fees[fill.fill_id] = (fill.fee_paid, canonical_currency(fill.fee_currency))
        while len(self._fees) > self._max_finished:
            self._fees.popitem(last=False)

    def _finish(self, order: TrackedOrder) -> None:
        self._finished.append(order.client_order_id)
        while len(self._finished) > self._max_finished:
            cid = self._finished.popleft()
            old = self._orders.get(cid)
            if old is not None and old.status.is_terminal:
                del self._orders[cid]
                if old.order_id is not None:
                    self._by_order_id.pop(old.order_id, None)


def _what(held: Held) -> str:
    item = held[0]
    return f"fill {item.fill_id}" if isinstance(item, schemas.Fill) else "open_orders frame"


def _event(
    kind: type[Any],
    order: TrackedOrder,
    account: str,
    ts: int,
    anomalies: deque[str],
    **extra: Any,
) -> Any:
    """Build a protocol order event carrying `order`'s state; None (and an anomaly) when the
    state cannot be represented."""
    try:
        return kind(
            account=account,
            client_order_id=order.client_order_id,
            order_id=order.order_id,
            instrument=order.instrument,
            side=order.side,
            order_type=order.order_type,
            qty=order.qty,
            price=order.price,
            time_in_force=order.time_in_force,
            status=order.status,
            filled_qty=order.filled,
            remaining_qty=order.remaining,
            avg_price=order.avg_price,
            ts=ts,
            **extra,
        )
    except ValidationError as exc:
        anomalies.append(
            f"{kind.__name__} for {order.client_order_id} not representable: "
            f"{exc.errors()[0].get('msg')}"
        )
        return None


# ---------------------------------------------------------------- REST answers


def executed_amount(order_events: Iterable[Mapping[str, Any]]) -> Decimal:
    """What the ``EXECUTION`` events of a ``sendorder`` answer add up to."""
    total = _ZERO
    for event in order_events:
        if isinstance(event, Mapping) and event.get("type") == "EXECUTION":
            total += schemas.to_decimal(event.get("amount"), "amount")
    return total


def edited_to(
    order_events: Iterable[Mapping[str, Any]],
) -> tuple[Decimal | None, Decimal | None] | None:
    """The order's (total qty, limit price) after an ``editorder``, from the answer's ``EDIT``
    event (the venue's word, which includes fills we may not have seen yet); None without
    one."""
    for event in order_events:
        if isinstance(event, Mapping) and event.get("type") == "EDIT":
            new = event.get("new")
            if not isinstance(new, Mapping):
                return None
            qty = new.get("quantity")
            price = new.get("limitPrice")
            return (
                schemas.to_decimal(qty, "quantity") if qty is not None else None,
                schemas.to_decimal(price, "limitPrice") if price is not None else None,
            )
    return None


def snapshot_from_rest(
    raw: Mapping[str, Any],
    account: str,
    instrument_of: InstrumentOf,
    known: TrackedOrder | None,
) -> OrderSnapshot | None:
    """One item of ``GET openorders`` as an `OrderSnapshot`; None for orders without our
    ``cliOrdId`` or on products this session does not trade. Raises `MalformedMessage`."""
    cid = raw.get("cliOrdId") or (known.client_order_id if known is not None else None)
    instrument = instrument_of(str(raw.get("symbol", "")))
    if not cid or instrument is None:
        return None
    filled = schemas.to_decimal(raw.get("filledSize", 0), "filledSize")
    unfilled = schemas.to_decimal(raw.get("unfilledSize"), "unfilledSize")
    limit_price = raw.get("limitPrice")
    order_type = raw.get("orderType")
    tif = TimeInForce.IOC if order_type == "ioc" else TimeInForce.GTC
    if known is not None:
        tif = known.time_in_force
    try:
        return OrderSnapshot(
            account=account,
            client_order_id=cid,
            order_id=raw.get("order_id"),
            instrument=instrument,
            side=Side(str(raw.get("side"))),
            order_type=OrderType.MARKET if order_type == "mkt" else OrderType.LIMIT,
            qty=filled + unfilled,
            price=schemas.to_decimal(limit_price, "limitPrice")
            if limit_price is not None
            else None,
            time_in_force=tif,
            status=OrderStatus.PARTIALLY_FILLED if filled > 0 else OrderStatus.ACCEPTED,
            filled_qty=filled,
            remaining_qty=unfilled,
            avg_price=known.avg_price if known is not None else None,
            ts=parse_iso_ns(str(raw.get("lastUpdateTime") or raw.get("receivedTime"))),
        )
    except (ValidationError, ValueError) as exc:
        raise MalformedMessage(f"openorders item not representable: {exc}") from exc


def fill_from_rest(
    raw: Mapping[str, Any],
    account: str,
    instrument_of: InstrumentOf,
    client_order_id_of: Callable[[str], str | None],
    fee_of: Callable[[str], tuple[Decimal, str] | None],
    default_fee_currency: Callable[[str], str],
) -> Fill | None:
    """One item of ``GET fills`` as a `Fill`; None when it is not ours to report (no client
    order id known, or a product this session does not trade).

    The REST answer carries no fee: it is taken from the ``fills`` feed when that fill was
    seen there, else reported as 0 in `default_fee_currency(instrument)`."""
    fill_id = str(raw.get("fill_id", ""))
    order_id = str(raw.get("order_id", ""))
    cid = raw.get("cliOrdId") or client_order_id_of(order_id)
    instrument = instrument_of(str(raw.get("symbol", "")))
    if not cid or instrument is None:
        return None
    fee, currency = fee_of(fill_id) or (_ZERO, default_fee_currency(instrument))
    try:
        return Fill(
            fill_id=fill_id,
            account=account,
            client_order_id=cid,
            order_id=order_id or None,
            instrument=instrument,
            side=Side(str(raw.get("side"))),
            qty=schemas.to_decimal(raw.get("size"), "size"),
            price=schemas.to_decimal(raw.get("price"), "price"),
            fee=fee,
            fee_currency=currency,
            liquidity=Liquidity.MAKER if raw.get("fillType") == "maker" else Liquidity.TAKER,
            ts=parse_iso_ns(str(raw.get("fillTime"))),
        )
    except (ValidationError, ValueError) as exc:
        raise MalformedMessage(f"fills item not representable: {exc}") from exc
