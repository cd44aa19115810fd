"""This account's orders: Kraken execution reports in, canonical order events out (pure).

Kraken's ``executions`` channel sends *changes*: a ``pending_new`` report carries the
order's terms, later reports often only ids, status and what moved (PROTOCOL_NOTES §5).
tradefleet's order events carry the whole order every time, so :class:`OrderTracker` keeps
each order's state and turns every report into zero or more events:

==============  ===========================================================
exec_type       events
==============  ===========================================================
pending_new     none (the order is learned or bound to its ``cl_ord_id``)
new             ``order_accepted``
trade           ``order_partially_filled`` or ``order_filled``, with the fill
canceled        ``order_cancelled`` (reason from our request or Kraken's text)
expired         ``order_expired``
amended         ``order_modified`` with the new qty/price
restated        ``order_modified`` when qty or price changed
filled/status   none (the fills already told the story)
==============  ===========================================================

Every outcome is preceded by ``order_accepted`` if the venue never said ``new`` (the
adapter contract promises one). A fill is counted once per ``exec_id``. Reports the
tracker cannot apply consistently (a ``filled`` whose fills it never saw, an unknown order
without terms) set :attr:`OrderTracker.needs_resync`: the shell then reconciles from REST,
whose answers are turned into the same kind of reports by :func:`rest_order_reports` and
applied through the same code.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from pydantic import BaseModel

from protocol.market import Side, split_instrument
from protocol.orders import (
    CancelReason,
    Fill,
    Liquidity,
    NewOrder,
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
from workers.broker.adapters.kraken.errors import MalformedMessage, UnsupportedSymbol
from workers.broker.adapters.kraken.instruments import canonical_asset
from workers.broker.adapters.kraken.schemas import (
    ExecutionReport,
    ExecutionsMessage,
    Fee,
    to_decimal,
)
from workers.broker.adapters.kraken.symbols import from_v2
from workers.broker.adapters.kraken.wire import ns_to_rfc3339, rfc3339_ns, unix_seconds_ns

E = TypeVar("E", bound=BaseModel)

ZERO = Decimal(0)
_CLIENT_ORDER_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_TERMINAL = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.EXPIRED}
)


def foreign_client_order_id(cl_ord_id: str | None, order_id: str) -> str:
    """The client_order_id reported for an order this adapter did not place (or no longer
    remembers): its ``cl_ord_id`` when that is a valid id, else ``kraken:<order_id>``."""
    if cl_ord_id and _CLIENT_ORDER_ID.match(cl_ord_id):
        return cl_ord_id
    return f"kraken:{order_id}"


@dataclass(slots=True)
class TrackedOrder:
    """Everything known about one order. Mutated only by :class:`OrderTracker`."""

    client_order_id: str
    venue_cl_ord_id: str | None
    instrument: str
    side: Side
    order_type: OrderType
    qty: Decimal
    price: Decimal | None
    time_in_force: TimeInForce
    order_id: str | None = None
    status: OrderStatus = OrderStatus.PENDING
    filled: Decimal = ZERO
    cost: Decimal = ZERO
    avg_price: Decimal | None = None
    fill_ids: set[str] = field(default_factory=set)
    created_ns: int = 0
    sent_ns: int | None = None
    in_flight: bool = False
    cancel_requested: bool = False

    @property
    def finished(self) -> bool:
        """True once the order can no longer change."""
        return self.status in _TERMINAL

    @property
    def remaining(self) -> Decimal:
        """Quantity still working on the book."""
        return ZERO if self.finished else max(ZERO, self.qty - self.filled)


class OrderTracker:
    """Order state of one account, fed with execution reports (see module docstring).

    ``keep_finished`` bounds how many finished orders stay known (for idempotent re-sends
    and late reports).
    """

    def __init__(self, account: str, *, keep_finished: int = 10_000) -> None:
        self.account = account
        self.needs_resync = False
        self._keep_finished = keep_finished
        self._by_client: dict[str, TrackedOrder] = {}
        self._by_order_id: dict[str, TrackedOrder] = {}
        self._by_venue_cl: dict[str, TrackedOrder] = {}
        self._finished: deque[TrackedOrder] = deque()
        self._ignored: set[str] = set()  # order ids of kinds we do not model (stop orders...)

    # ------------------------------------------------------------ our own requests

    def expect(self, request: NewOrder, venue_cl_ord_id: str, now_ns: int) -> TrackedOrder:
        """Register an order about to be sent (its reports may arrive before the answer)."""
        order = TrackedOrder(
            client_order_id=request.client_order_id,
            venue_cl_ord_id=venue_cl_ord_id,
            instrument=request.instrument,
            side=request.side,
            order_type=request.order_type,
            qty=request.qty,
            price=request.price,
            time_in_force=request.time_in_force,
            created_ns=now_ns,
            sent_ns=now_ns,
            in_flight=True,
        )
        self._by_client[order.client_order_id] = order
        self._by_venue_cl[venue_cl_ord_id] = order
        return order

    def acknowledged(self, client_order_id: str, order_id: str) -> None:
        """The venue answered ``add_order`` with ``order_id``."""
        order = self._by_client.get(client_order_id)
        if order is not None:
            order.in_flight = False
            self._bind(order, order_id)

    def unanswered(self, client_order_id: str) -> None:
        """``add_order`` got no answer in time; its reports may still come."""
        order = self._by_client.get(client_order_id)
        if order is not None:
            order.in_flight = False

    def refused(self, client_order_id: str) -> None:
        """The venue refused ``add_order``: nothing was placed, forget the order."""
        order = self._by_client.get(client_order_id)
        if order is not None and order.order_id is None:
            self._drop(order)

    def find(self, client_order_id: str) -> TrackedOrder | None:
        """The order with our ``client_order_id``, if known."""
        return self._by_client.get(client_order_id)

    def by_order_id(self, order_id: str) -> TrackedOrder | None:
        """The order with Kraken's ``order_id``, if known."""
        return self._by_order_id.get(order_id)

    def unfinished(self) -> list[TrackedOrder]:
        """Orders that may still change, oldest first."""
        orders = [order for order in self._by_client.values() if not order.finished]
        return sorted(orders, key=lambda order: order.created_ns)

    # ------------------------------------------------------------ venue reports

    def receive(self, message: ExecutionsMessage, now_ns: int) -> list[OrderEvent]:
        """Apply one ``executions`` frame. A snapshot (open orders at subscribe time) only
        teaches terms and acceptance; what moved while we were away comes from REST."""
        if message.type == "snapshot":
            return self._snapshot(message.data, now_ns)
        events: list[OrderEvent] = []
        for report in message.data:
            events.extend(self.apply(report, now_ns))
        return events

    def apply(self, report: ExecutionReport, now_ns: int) -> list[OrderEvent]:
        """Apply one report (from the channel or synthesised from REST)."""
        order = self._resolve(report, now_ns)
        if order is None or order.finished:
            return []
        ts = _report_ts(report, now_ns)
        kind = report.exec_type or report.order_status
        if kind == "new":
            return self._accept(order, ts)
        if kind == "trade":
            return self._trade(order, report, ts)
        if kind in ("canceled", "expired"):
            events = self._accept(order, ts)
            events.append(self._close(order, kind, report, ts))
            return events
        if kind in ("amended", "restated"):
            return self._modify(order, report, ts, always=kind == "amended")
        if kind == "filled" and order.filled < order.qty:
            self.needs_resync = True  # the order filled but we missed a fill
        return []

    def snapshot_of(self, order: TrackedOrder, ts: int) -> OrderSnapshot:
        """The order's state as an ``order_snapshot`` event."""
        return self._event(OrderSnapshot, order, ts)

    # ------------------------------------------------------------ internals

    def _snapshot(self, reports: Iterable[ExecutionReport], now_ns: int) -> list[OrderEvent]:
        events: list[OrderEvent] = []
        listed: set[str] = set()
        for report in reports:
            order = self._resolve(report, now_ns)
            if order is None:
                continue
            listed.add(report.order_id)
            if report.cum_qty is not None and report.cum_qty > order.filled:
                self.needs_resync = True  # fills happened that we have not reported
            if report.order_status in ("new", "partially_filled"):
                events.extend(self._accept(order, _report_ts(report, now_ns)))
        if any(
            order.order_id is not None and order.order_id not in listed
            for order in self.unfinished()
        ):
            self.needs_resync = True  # some order ended while we were not listening
        return events

    def _resolve(self, report: ExecutionReport, now_ns: int) -> TrackedOrder | None:
        order = self._by_order_id.get(report.order_id)
        if order is not None:
            return order
        if report.order_id in self._ignored:
            return None
        if report.cl_ord_id is not None:
            order = self._by_venue_cl.get(report.cl_ord_id)
            if order is not None and order.order_id in (None, report.order_id):
                self._bind(order, report.order_id)
                return order
        return self._learn(report, now_ns)

    def _learn(self, report: ExecutionReport, now_ns: int) -> TrackedOrder | None:
        """An order placed elsewhere (or before a restart), known from a full report."""
        if report.order_type not in ("limit", "market"):
            if report.order_type is not None:
                self._ignored.add(report.order_id)
            else:
                self.needs_resync = True  # a report without terms for an order we never saw
            return None
        if report.symbol is None or report.side is None or report.order_qty is None:
            self.needs_resync = True
            return None
        try:
            instrument = from_v2(report.symbol)
        except UnsupportedSymbol:
            self._ignored.add(report.order_id)
            return None
        order_type = OrderType(report.order_type)
        tif = str(report.extra.get("time_in_force", "GTC")).upper()
        order = TrackedOrder(
            client_order_id=foreign_client_order_id(report.cl_ord_id, report.order_id),
            venue_cl_ord_id=report.cl_ord_id,
            instrument=instrument,
            side=Side(report.side),
            order_type=order_type,
            qty=report.order_qty,
            price=report.limit_price
            if order_type is OrderType.LIMIT and report.limit_price
            else None,
            time_in_force=TimeInForce.IOC if tif == "IOC" else TimeInForce.GTC,
            created_ns=_report_ts(report, now_ns),
        )
        if order.client_order_id in self._by_client:
            # Our id is taken by another order: fall back to the venue's order id.
            order.client_order_id = f"kraken:{report.order_id}"
        self._by_client[order.client_order_id] = order
        if report.cl_ord_id:
            self._by_venue_cl.setdefault(report.cl_ord_id, order)
        self._bind(order, report.order_id)
        return order

    def _bind(self, order: TrackedOrder, order_id: str) -> None:
        order.order_id = order_id
        self._by_order_id[order_id] = order

    def _accept(self, order: TrackedOrder, ts: int) -> list[OrderEvent]:
        if order.status is not OrderStatus.PENDING:
            return []
        order.status = OrderStatus.ACCEPTED
        return [self._event(OrderAccepted, order, ts)]

    def _trade(self, order: TrackedOrder, report: ExecutionReport, ts: int) -> list[OrderEvent]:
        qty, price = report.last_qty, report.last_price
        if qty is None or price is None or qty <= 0 or price <= 0:
            self.needs_resync = True
            return []
        fill_id = report.exec_id or f"{order.order_id}:{report.trade_id}"
        if fill_id in order.fill_ids:
            return []
        events = self._accept(order, ts)
        order.fill_ids.add(fill_id)
        order.filled = min(order.qty, order.filled + qty)
        if report.cum_qty is not None and report.cum_qty > order.filled:
            order.filled = min(order.qty, report.cum_qty)
        order.cost += report.cost if report.cost is not None else qty * price
        if report.avg_price is not None and report.avg_price > 0:
            order.avg_price = report.avg_price
        elif order.filled > 0:
            order.avg_price = order.cost / order.filled
        fee, fee_currency = _fee(report.fees, order.instrument)
        fill = Fill(
            fill_id=fill_id[:64],
            account=self.account,
            client_order_id=order.client_order_id,
            order_id=order.order_id,
            instrument=order.instrument,
            side=order.side,
            qty=qty,
            price=price,
            fee=fee,
            fee_currency=fee_currency,
            liquidity=Liquidity.MAKER if report.liquidity_ind == "m" else Liquidity.TAKER,
            ts=ts,
        )
        if order.filled >= order.qty:
            order.status = OrderStatus.FILLED
            events.append(self._event(OrderFilled, order, ts, fill=fill))
            self._retire(order)
        else:
            order.status = OrderStatus.PARTIALLY_FILLED
            events.append(self._event(OrderPartiallyFilled, order, ts, fill=fill))
        return events

    def _close(
        self, order: TrackedOrder, kind: str, report: ExecutionReport, ts: int
    ) -> OrderEvent:
        if kind == "expired":
            order.status = OrderStatus.EXPIRED
            event: OrderEvent = self._event(OrderExpired, order, ts)
        else:
            order.status = OrderStatus.CANCELLED
            reason, text = _cancel_reason(order, report)
            event = self._event(OrderCancelled, order, ts, reason=reason, message=text)
        self._retire(order)
        return event

    def _modify(
        self, order: TrackedOrder, report: ExecutionReport, ts: int, *, always: bool
    ) -> list[OrderEvent]:
        qty = report.order_qty if report.order_qty is not None else order.qty
        price = order.price
        if order.order_type is OrderType.LIMIT and report.limit_price:
            price = report.limit_price
        if not always and qty == order.qty and price == order.price:
            return []
        events = self._accept(order, ts)
        order.qty = max(qty, order.filled)
        order.price = price
        if order.filled >= order.qty:
            return events  # Kraken cancels the rest; its canceled report follows
        events.append(self._event(OrderModified, order, ts))
        return events

    def _retire(self, order: TrackedOrder) -> None:
        self._finished.append(order)
        while len(self._finished) > self._keep_finished:
            self._drop(self._finished.popleft())

    def _drop(self, order: TrackedOrder) -> None:
        if self._by_client.get(order.client_order_id) is order:
            del self._by_client[order.client_order_id]
        if order.order_id is not None and self._by_order_id.get(order.order_id) is order:
            del self._by_order_id[order.order_id]
        cl = order.venue_cl_ord_id
        if cl is not None and self._by_venue_cl.get(cl) is order:
            del self._by_venue_cl[cl]

    def _event(self, kind: type[E], order: TrackedOrder, ts: int, **extra: Any) -> E:
        return kind(
            account=self.account,
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
            avg_price=order.avg_price if order.filled > 0 else None,
            ts=ts,
            **extra,
        )


def _report_ts(report: ExecutionReport, fallback: int) -> int:
    if report.timestamp:
        try:
            return rfc3339_ns(report.timestamp)
        except MalformedMessage:
            pass
    return fallback


def _fee(fees: tuple[Fee, ...], instrument: str) -> tuple[Decimal, str]:
    quote = split_instrument(instrument)[1]
    if not fees:
        return ZERO, quote
    currency = canonical_asset(fees[0].asset) or quote
    return sum((fee.qty for fee in fees if fee.asset == fees[0].asset), ZERO), currency


def _cancel_reason(order: TrackedOrder, report: ExecutionReport) -> tuple[CancelReason, str | None]:
    text = report.extra.get("reason") or report.extra.get("cancel_reason")
    text = str(text) if text else None
    lowered = (text or "").lower()
    if order.cancel_requested or lowered == "user requested":
        return CancelReason.REQUESTED, text
    if "self trade" in lowered or "self-trade" in lowered:
        return CancelReason.SELF_TRADE, text
    if order.time_in_force is TimeInForce.IOC:
        return CancelReason.IOC_REMAINDER, text
    if order.order_type is OrderType.MARKET:
        return CancelReason.NO_LIQUIDITY, text
    return CancelReason.VENUE, text


# ---------------------------------------------------------------- REST answers


@dataclass(frozen=True, slots=True)
class RestTrade:
    """One entry of REST ``TradesHistory`` / ``QueryTrades`` (``txid`` = WS ``exec_id``)."""

    txid: str
    order_id: str
    pair: str
    side: Side
    price: Decimal
    qty: Decimal
    cost: Decimal
    fee: Decimal
    maker: bool
    ts: int

    @classmethod
    def parse(cls, txid: str, info: Mapping[str, Any]) -> RestTrade:
        """Raises :class:`MalformedMessage` when a documented field is missing."""
        try:
            return cls(
                txid=txid,
                order_id=str(info["ordertxid"]),
                pair=str(info["pair"]),
                side=Side(info["type"]),
                price=to_decimal(info["price"], "price"),
                qty=to_decimal(info["vol"], "vol"),
                cost=to_decimal(info.get("cost", "0"), "cost"),
                fee=to_decimal(info.get("fee", "0"), "fee"),
                maker=bool(info.get("maker", False)),
                ts=unix_seconds_ns(info["time"]),
            )
        except (KeyError, ValueError) as exc:
            raise MalformedMessage(f"REST trade {txid}: {exc}") from exc


def rest_order_reports(
    order_id: str,
    info: Mapping[str, Any],
    *,
    symbol: str,
    trades: Iterable[RestTrade] = (),
) -> list[ExecutionReport]:
    """The execution reports that bring a tracker up to date with one REST order record
    (``OpenOrders``/``QueryOrders`` entry) and the fills REST knows for it.

    ``symbol`` is the v2 symbol of the order's pair. Raises :class:`MalformedMessage`
    when the record lacks its documented fields.
    """
    try:
        descr = info["descr"]
        side, order_type = descr["type"], descr["ordertype"]
        qty = to_decimal(info["vol"], "vol")
        price = to_decimal(descr.get("price", "0"), "price")
        status = info["status"]
        opened = unix_seconds_ns(info.get("opentm", "0"))
    except (KeyError, TypeError) as exc:
        raise MalformedMessage(f"REST order {order_id}: missing {exc}") from exc
    cl_ord_id = info.get("cl_ord_id") or None
    terms = ExecutionReport(
        order_id=order_id,
        exec_type="pending_new",
        order_status="pending_new",
        symbol=symbol,
        side=side,
        order_type=order_type,
        order_qty=qty,
        limit_price=price if price > 0 else None,
        cl_ord_id=cl_ord_id,
        timestamp=ns_to_rfc3339(opened),
    )
    reports = [terms]
    if status == "pending":
        return reports
    reports.append(ExecutionReport(order_id=order_id, exec_type="new", timestamp=terms.timestamp))
    reports.append(
        ExecutionReport(
            order_id=order_id,
            exec_type="restated",
            order_qty=qty,
            limit_price=price if price > 0 else None,
            timestamp=terms.timestamp,
        )
    )
    quote = symbol.split("/")[1]
    for trade in sorted(trades, key=lambda item: item.ts):
        if trade.order_id != order_id:
            continue
        reports.append(
            ExecutionReport(
                order_id=order_id,
                exec_type="trade",
                exec_id=trade.txid,
                last_qty=trade.qty,
                last_price=trade.price,
                cost=trade.cost,
                liquidity_ind="m" if trade.maker else "t",
                fees=(Fee(quote, trade.fee),),
                timestamp=ns_to_rfc3339(trade.ts),
            )
        )
    closed = info.get("closetm")
    closed_at = ns_to_rfc3339(unix_seconds_ns(closed)) if closed else None
    reason = info.get("reason")
    extra = {"reason": reason} if reason else {}
    if status == "closed":
        reports.append(ExecutionReport(order_id=order_id, exec_type="filled", timestamp=closed_at))
    elif status in ("canceled", "expired"):
        reports.append(
            ExecutionReport(order_id=order_id, exec_type=status, timestamp=closed_at, extra=extra)
        )
    return reports


def snapshot_from_rest(
    order_id: str,
    info: Mapping[str, Any],
    *,
    account: str,
    instrument: str,
    client_order_id: str,
    now_ns: int,
) -> OrderSnapshot:
    """An ``order_snapshot`` of one REST ``OpenOrders`` entry. Raises
    :class:`MalformedMessage` for a record without its documented fields."""
    try:
        descr = info["descr"]
        qty = to_decimal(info["vol"], "vol")
        filled = to_decimal(info.get("vol_exec", "0"), "vol_exec")
        price = to_decimal(descr.get("price", "0"), "price")
        avg = to_decimal(info.get("price", "0"), "price")
        order_type = OrderType(descr["ordertype"])
        side = Side(descr["type"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedMessage(f"REST order {order_id}: {exc}") from exc
    flags = str(info.get("oflags", ""))
    return OrderSnapshot(
        account=account,
        client_order_id=client_order_id,
        order_id=order_id,
        instrument=instrument,
        side=side,
        order_type=order_type,
        qty=qty,
        price=price if order_type is OrderType.LIMIT and price > 0 else None,
        time_in_force=TimeInForce.IOC if "ioc" in flags.split(",") else TimeInForce.GTC,
        status=OrderStatus.PARTIALLY_FILLED if filled > 0 else OrderStatus.ACCEPTED,
        filled_qty=filled,
        remaining_qty=max(ZERO, qty - filled),
        avg_price=avg if filled > 0 and avg > 0 else None,
        ts=unix_seconds_ns(info.get("opentm", "0")) or now_ns,
    )


def fill_from_rest(
    trade: RestTrade,
    *,
    account: str,
    instrument: str,
    client_order_id: str,
) -> Fill:
    """A canonical :class:`Fill` of one REST trade (fee in the quote currency)."""
    return Fill(
        fill_id=trade.txid[:64],
        account=account,
        client_order_id=client_order_id,
        order_id=trade.order_id,
        instrument=instrument,
        side=trade.side,
        qty=trade.qty,
        price=trade.price,
        fee=trade.fee,
        fee_currency=split_instrument(instrument)[1],
        liquidity=Liquidity.MAKER if trade.maker else Liquidity.TAKER,
        ts=trade.ts,
    )
