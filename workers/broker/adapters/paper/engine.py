"""The paper exchange's matching engine: pure, deterministic, exact.

* Price-time priority: the best price trades first; at one price, the oldest order first.
  Executions happen at the resting (maker) order's price.
* Limit and market orders; GTC rests, IOC and market orders never rest (their unfilled rest is
  cancelled with reason `ioc_remainder` / `no_liquidity`).
* Per-instrument tick and lot size and minimum quantity; violations are refused with a code.
* Maker and taker fees in basis points of notional, charged in the quote currency.
* Self-trade prevention: an order never trades against its own account; the resting order is
  cancelled (`self_trade`) and matching continues.
* Modify: a new price or a larger quantity sends the order to the back of the queue (a new
  price may also make it trade at once, as a taker); a smaller quantity keeps its place.

Every operation takes the time from the injected clock, changes state, and returns the events
it caused, in causal order: order events of every account involved (house accounts included),
public trades, then one `book_delta` and, if the top of book or last price moved, a `ticker`.
A refused request raises `OrderRefused` and changes nothing.

Memory: without an archive the engine keeps every order and fill, as long as it lives. Given
an `Archive` (the paper exchange's store, which holds every order and fill of the accounts
that are not quiet), it keeps of each such account its working orders, its newest
`retain_finished_orders` finished orders and its newest `retain_fills` fills, and reads the
rest from the archive when asked: an old order's state, fills since an old time, and whether a
client_order_id was ever used. The answers are the same either way. It lets go only what the
archive holds already: `archived()`, which the store calls after each write.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any, Protocol

from protocol.errors import ErrorCode
from protocol.market import (
    BookDelta,
    BookSnapshot,
    InstrumentSpec,
    Side,
    Ticker,
    Trade,
    split_instrument,
)
from protocol.orders import (
    CancelReason,
    Fill,
    Liquidity,
    NewOrder,
    OrderAccepted,
    OrderCancelled,
    OrderEvent,
    OrderFilled,
    OrderModified,
    OrderPartiallyFilled,
    OrderSnapshot,
    OrderStatus,
    OrderType,
    TimeInForce,
)
from workers.broker.adapters.paper.book import OrderBook, RestingOrder
from workers.broker.adapters.paper.ledger import EXACT, ROUNDED, ZERO, Ledger

EngineEvent = OrderEvent | Trade | BookDelta | Ticker
Clock = Callable[[], int]
_BPS = Decimal(10_000)

RETAIN_FINISHED_ORDERS = 10_000
"""Finished orders of an account an engine with an archive keeps in memory, by default."""
RETAIN_FILLS = 10_000
"""Fills of an account an engine with an archive keeps in memory, by default."""


class Archive(Protocol):
    """Every order and fill of an engine's accounts that are not quiet, in their last state
    (the paper exchange's store): where the engine looks up what it let go of."""

    def has_order(self, account: str, client_order_id: str) -> bool:
        """Whether `account` ever placed an order with this client_order_id."""
        ...

    def order(self, account: str, client_order_id: str) -> RestingOrder | None:
        """The order's last state, or None if there never was one."""
        ...

    def fills(self, account: str, since_ts: int, offset: int = 0, limit: int | None = None
              ) -> list[Fill]:
        """Fills of `account` with ts >= since_ts, in the order they happened: `limit` of them
        (all for None) from the `offset`th on."""
        ...


def order_number(order_id: str) -> int:
    """The number in an order id the engine gave out (`P12` → 12): the order placed later has
    the larger one."""
    digits = order_id.lstrip("P")
    return int(digits) if digits.isdigit() else 0


class OrderRefused(Exception):
    """The engine refused a request; nothing changed. `code` says why."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class MatchingEngine:
    """The paper venue: one order book per instrument and one ledger for all accounts.

    `clock()` returns the current time in ns since the epoch; it is called once per operation,
    so a fake clock makes every run reproducible. With an `archive`, the memory an account
    takes is bounded by `retain_finished_orders` and `retain_fills` (module docstring).
    """

    def __init__(
        self,
        instruments: Iterable[InstrumentSpec],
        *,
        maker_fee_bps: Decimal = ZERO,
        taker_fee_bps: Decimal = ZERO,
        clock: Clock,
        archive: Archive | None = None,
        retain_finished_orders: int = RETAIN_FINISHED_ORDERS,
        retain_fills: int = RETAIN_FILLS,
    ) -> None:
        if retain_finished_orders < 1 or retain_fills < 1:
            raise ValueError("retain_finished_orders and retain_fills must be at least 1")
        self.specs: dict[str, InstrumentSpec] = {spec.instrument: spec for spec in instruments}
        self.maker_fee_bps = maker_fee_bps
        self.taker_fee_bps = taker_fee_bps
        self.ledger = Ledger()
        self._clock = clock
        self._books = {name: OrderBook(name) for name in self.specs}
        self._quotes = {name: split_instrument(name)[1] for name in self.specs}
        self._orders: dict[tuple[str, str], RestingOrder] = {}
        # Each account's working orders, oldest first: open_orders need not scan finished ones.
        self._working: dict[str, dict[str, RestingOrder]] = {}
        self._fills: dict[str, deque[Fill]] = {}
        self.archive = archive
        self.retain_finished_orders = retain_finished_orders
        self.retain_fills = retain_fills
        # Of each account whose orders the archive holds: the client_order_ids of its finished
        # orders in memory, in the order they finished.
        self._finished_kept: dict[str, deque[str]] = {}
        self._over: set[str] = set()  # accounts holding more than they keep, until `archived`
        self._archived_orders: set[str] = set()  # accounts with orders only in the archive
        self._archived_fills: dict[str, int] = {}  # latest ts of an account's archived fills
        self._last_ticker: dict[str, tuple[Any, ...]] = {}
        self._next_order = 0
        self._next_trade = 0
        self._next_fill = 0
        self._batched: dict[str, OrderBook] | None = None  # books changed inside `batch()`
        self._quiet: set[str] = set()

    # ------------------------------------------------------------ accounts and queries

    def open_account(self, account: str, cash: Mapping[str, Decimal] | None = None, *,
                     quiet: bool = False) -> None:
        """Create a trading account with starting cash. Raises ValueError if it exists.

        A `quiet` account's order acknowledgements (accepted, modified, cancelled) are not
        built: nobody is told of them. Its fills and the trades are reported as for any
        account. For the venue's own synthetic makers and takers, which place and cancel tens
        of orders a step."""
        self.ledger.open_account(account, cash or {})
        self._fills[account] = deque()
        self._working[account] = {}
        if quiet:
            self._quiet.add(account)
        elif self.archive is not None:
            self._finished_kept[account] = deque()

    def order(self, account: str, client_order_id: str) -> OrderSnapshot | None:
        """The order's current state, or None if the engine never saw it."""
        order = self._orders.get((account, client_order_id))
        if order is None:
            order = self._archived_order(account, client_order_id)
        return None if order is None else self._snapshot(order)

    def is_working(self, account: str, client_order_id: str) -> bool:
        """True while the order can still trade (cheap; no snapshot is built)."""
        order = self._orders.get((account, client_order_id))
        return order is not None and not order.status.is_terminal

    def open_orders(self, account: str) -> list[OrderSnapshot]:
        """Working orders of `account`, oldest first."""
        return [self._snapshot(o) for o in self._working.get(account, {}).values()]

    def fills(self, account: str, since_ts: int = 0, offset: int = 0, limit: int | None = None
              ) -> list[Fill]:
        """Fills of `account` with ts >= since_ts, in the order they happened; a page of them
        with `limit`: `limit` fills from the `offset`th on (fewer at the end)."""
        end = None if limit is None else offset + limit
        held = [f for f in self._fills.get(account, ()) if f.ts >= since_ts]
        archived_ts = self._archived_fills.get(account)
        if self.archive is None or archived_ts is None or since_ts > archived_ts:
            return held[offset:end]
        if limit is not None:
            # Between the venue's operations the archive has every fill (each operation's
            # are stored before anyone hears of them): a page is read from it alone, so a
            # request reads no more than a page, however far back it asks.
            return self.archive.fills(account, since_ts, offset, limit)
        # Some of them left memory: the archive has those and the rest, but for fills the
        # operation under way made (none, between the venue's operations).
        stored = self.archive.fills(account, since_ts)
        known = {f.fill_id for f in stored}
        return (stored + [f for f in held if f.fill_id not in known])[offset:]

    def is_quiet(self, account: str) -> bool:
        """Whether `account` is one of the venue's own synthetic ones (`open_account`)."""
        return account in self._quiet

    def resting(self, account: str, client_order_id: str) -> RestingOrder | None:
        """The engine's own record of an order (to persist it; do not change it). Only
        orders in memory: every order an operation touched is, until `archived()`."""
        return self._orders.get((account, client_order_id))

    def held(self, account: str) -> tuple[int, int]:
        """How many orders (working ones included) and fills of `account` are in memory."""
        return sum(1 for acc, _ in self._orders if acc == account), len(self._fills[account])

    def ids(self) -> tuple[int, int, int]:
        """The last order, trade and fill numbers given out."""
        return self._next_order, self._next_trade, self._next_fill

    def restore(self, orders: Iterable[RestingOrder], fills: Mapping[str, Iterable[Fill]],
                ids: tuple[int, int, int], *, archived_orders: Iterable[str] = (),
                archived_fills: Mapping[str, int] | None = None) -> None:
        """Put back persisted orders and fills (in the order they happened) of accounts
        already open, and go on numbering after `ids`. Working orders rejoin their books in
        `queued` order, so each keeps its place in time priority among them; `open_orders`
        lists them in the order they were placed, as before. `archived_orders`: accounts with
        orders only in the archive; `archived_fills`: per account, the latest ts of its fills
        only in the archive."""
        orders = sorted(orders, key=lambda o: order_number(o.order_id))
        for order in orders:
            self._orders[(order.account, order.client_order_id)] = order
            if not order.status.is_terminal:
                self._working[order.account][order.client_order_id] = order
            elif order.account in self._finished_kept:
                self._finished_kept[order.account].append(order.client_order_id)
        for order in sorted(orders, key=lambda o: o.queued):
            if order.leaves and order.price is not None:
                self._books[order.instrument].side(order.side).rejoin(order)
        for account, account_fills in fills.items():
            self._fills[account] = deque(account_fills)
        self._archived_orders.update(archived_orders)
        for account, ts in (archived_fills or {}).items():
            self._archived_fills[account] = max(ts, self._archived_fills.get(account, ts))
        self._over.update(self._finished_kept)  # `archived()` trims what is more than kept
        self._next_order = max(self._next_order, ids[0])
        self._next_trade = max(self._next_trade, ids[1])
        self._next_fill = max(self._next_fill, ids[2])

    def forget_closed(self, account: str) -> None:
        """Drop finished orders and the fill history of `account` to bound memory. Meant for
        house accounts, whose client order ids are never reused; the ledger is untouched."""
        for key in [k for k, o in self._orders.items() if k[0] == account and o.status.is_terminal]:
            del self._orders[key]
        self._fills[account].clear()

    def archived(self) -> None:
        """The archive now holds everything the engine changed so far: let go of the
        finished orders and the fills of each account past what it keeps, oldest first."""
        for account in self._over:
            kept = self._finished_kept[account]
            while len(kept) > self.retain_finished_orders:
                del self._orders[(account, kept.popleft())]
                self._archived_orders.add(account)
            fills = self._fills[account]
            while len(fills) > self.retain_fills:
                ts = fills.popleft().ts
                self._archived_fills[account] = max(ts, self._archived_fills.get(account, ts))
        self._over.clear()

    def book(self, instrument: str, depth: int | None = None) -> BookSnapshot:
        """The aggregated L2 book, `depth` levels per side (all when None)."""
        book = self._book(instrument)

        def levels(side: Side) -> list[tuple[Decimal, Decimal]]:
            out: list[tuple[Decimal, Decimal]] = []
            for level in book.side(side).levels():
                if depth is not None and len(out) >= depth:
                    break
                out.append((level.price, level.size))
            return out

        return BookSnapshot(
            instrument=instrument,
            bids=levels(Side.BUY),
            asks=levels(Side.SELL),
            update_id=book.update_id,
            ts=self._clock(),
        )

    def ticker(self, instrument: str) -> Ticker:
        """Best bid/ask and last trade price now."""
        return self._ticker(self._book(instrument), self._clock())

    def best_prices(self, instrument: str) -> tuple[Decimal | None, Decimal | None]:
        """(best bid, best ask) prices, None for an empty side."""
        book = self._book(instrument)
        bid, ask = book.bids.best(), book.asks.best()
        return (bid.price if bid else None, ask.price if ask else None)

    def last_price(self, instrument: str) -> Decimal | None:
        return self._book(instrument).last_price

    @contextlib.contextmanager
    def batch(self) -> Iterator[list[EngineEvent]]:
        """Several operations whose book changes are reported once, at the end: one
        `book_delta` and at most one ticker per changed book instead of one per operation
        (the synthetic market requotes tens of orders a step). The report is appended to the
        list this yields when the block ends; order events and trades come as usual."""
        if self._batched is not None:
            raise RuntimeError("batches do not nest")
        self._batched = {}
        tail: list[EngineEvent] = []
        try:
            yield tail
        finally:
            books, self._batched = self._batched, None
            ts = self._clock()
            for book in books.values():
                self._flush(book, ts, tail)

    # ------------------------------------------------------------ order entry

    def submit(self, request: NewOrder) -> list[EngineEvent]:
        """Place an order. Raises `OrderRefused` with unknown_account, unknown_instrument,
        duplicate_order, price_off_tick, qty_off_lot or qty_below_min."""
        spec = self._spec(request.instrument)
        if not self.ledger.has_account(request.account):
            raise OrderRefused(ErrorCode.UNKNOWN_ACCOUNT, f"unknown account {request.account!r}")
        if ((request.account, request.client_order_id) in self._orders
                or self._archived_id(request.account, request.client_order_id)):
            raise OrderRefused(
                ErrorCode.DUPLICATE_ORDER,
                f"client_order_id {request.client_order_id!r} was already used",
            )
        self._check_qty(spec, request.qty)
        if request.price is not None:
            self._check_price(spec, request.price)

        ts = self._clock()
        self._next_order += 1
        order = RestingOrder(
            order_id=f"P{self._next_order}",
            account=request.account,
            client_order_id=request.client_order_id,
            instrument=request.instrument,
            side=request.side,
            order_type=request.order_type,
            # A market order never rests, whatever the request says.
            time_in_force=(
                TimeInForce.IOC if request.order_type is OrderType.MARKET else request.time_in_force
            ),
            qty=request.qty,
            price=request.price,
            status=OrderStatus.ACCEPTED,
            created_ts=ts,
        )
        self._orders[(order.account, order.client_order_id)] = order
        self._working[order.account][order.client_order_id] = order
        book = self._books[order.instrument]
        events: list[EngineEvent] = []
        self._acknowledge(order, OrderAccepted, ts, events)
        self._match(book, order, ts, events)
        self._rest_or_cancel(book, order, ts, events)
        self._changed(book, ts, events)
        return events

    def cancel(self, account: str, client_order_id: str) -> list[EngineEvent]:
        """Cancel an order's remainder. Raises `OrderRefused` with order_not_found or
        order_not_cancellable (already finished)."""
        order = self._find(account, client_order_id)
        if order.status.is_terminal:
            raise OrderRefused(
                ErrorCode.ORDER_NOT_CANCELLABLE, f"order {client_order_id!r} is {order.status}"
            )
        ts = self._clock()
        book = self._books[order.instrument]
        events: list[EngineEvent] = []
        self._cancel(book, order, CancelReason.REQUESTED, ts, events)
        self._changed(book, ts, events)
        return events

    def modify(
        self,
        account: str,
        client_order_id: str,
        *,
        qty: Decimal | None = None,
        price: Decimal | None = None,
    ) -> list[EngineEvent]:
        """Change a working order's total quantity and/or price. Raises `OrderRefused` with
        order_not_found, order_not_modifiable, invalid_order (qty not above the filled qty, or
        nothing given), price_off_tick, qty_off_lot or qty_below_min."""
        order = self._find(account, client_order_id)
        if order.status.is_terminal:
            raise OrderRefused(
                ErrorCode.ORDER_NOT_MODIFIABLE, f"order {client_order_id!r} is {order.status}"
            )
        if qty is None and price is None:
            raise OrderRefused(ErrorCode.INVALID_ORDER, "give a new qty and/or price")
        spec = self.specs[order.instrument]
        new_qty = order.qty if qty is None else qty
        new_price = order.price if price is None else price
        assert new_price is not None  # only limit orders are ever working
        if qty is not None:
            self._check_qty(spec, qty)
            if qty <= order.filled:
                raise OrderRefused(
                    ErrorCode.INVALID_ORDER,
                    f"qty must exceed the filled qty {order.filled}; cancel instead",
                )
        if price is not None:
            self._check_price(spec, price)

        ts = self._clock()
        book = self._books[order.instrument]
        side = book.side(order.side)
        events: list[EngineEvent] = []
        loses_priority = new_price != order.price or new_qty > order.qty
        book.touch(order.side, order.price)  # type: ignore[arg-type]
        if loses_priority:
            side.remove(order)
            order.qty, order.price = new_qty, new_price
            self._acknowledge(order, OrderModified, ts, events)
            self._match(book, order, ts, events)
            self._rest_or_cancel(book, order, ts, events)
        else:
            side.shrink(new_price, order.qty - new_qty)
            order.qty = new_qty
            self._acknowledge(order, OrderModified, ts, events)
        self._changed(book, ts, events)
        return events

    # ------------------------------------------------------------ matching

    def _match(
        self, book: OrderBook, taker: RestingOrder, ts: int, events: list[EngineEvent]
    ) -> None:
        opposite = book.side(taker.side.opposite)
        while taker.leaves > 0:
            level = opposite.best()
            if level is None:
                return
            if taker.price is not None and not opposite.is_marketable_against(taker.price):
                return
            maker = level.first()
            if maker.account == taker.account:
                self._cancel(book, maker, CancelReason.SELF_TRADE, ts, events)
                continue
            self._execute(
                book, maker, taker, level.price, min(taker.leaves, maker.leaves), ts, events
            )

    def _execute(
        self,
        book: OrderBook,
        maker: RestingOrder,
        taker: RestingOrder,
        price: Decimal,
        qty: Decimal,
        ts: int,
        events: list[EngineEvent],
    ) -> None:
        maker_side = book.side(maker.side)
        maker_side.shrink(price, qty)
        book.touch(maker.side, price)
        self._next_trade += 1
        trade_id = f"T{self._next_trade}"
        for order, liquidity in ((maker, Liquidity.MAKER), (taker, Liquidity.TAKER)):
            self._fill(book, order, liquidity, price, qty, ts, events)
        if maker.status is OrderStatus.FILLED:
            maker_side.discard(maker)
        book.last_price = price
        events.append(
            Trade(
                instrument=book.instrument,
                trade_id=trade_id,
                price=price,
                qty=qty,
                taker_side=taker.side,
                ts=ts,
            )
        )

    def _fill(
        self,
        book: OrderBook,
        order: RestingOrder,
        liquidity: Liquidity,
        price: Decimal,
        qty: Decimal,
        ts: int,
        events: list[EngineEvent],
    ) -> None:
        bps = self.maker_fee_bps if liquidity is Liquidity.MAKER else self.taker_fee_bps
        fee = EXACT.divide(EXACT.multiply(EXACT.multiply(price, qty), bps), _BPS)
        quote = self._quotes[book.instrument]
        self.ledger.apply_fill(order.account, book.instrument, quote, order.side, qty, price, fee)
        order.filled = EXACT.add(order.filled, qty)
        order.notional = EXACT.add(order.notional, EXACT.multiply(price, qty))
        if order.filled == order.qty:
            self._finished(order, OrderStatus.FILLED)
        else:
            order.status = OrderStatus.PARTIALLY_FILLED
        self._next_fill += 1
        fill = Fill(
            fill_id=f"F{self._next_fill}",
            account=order.account,
            client_order_id=order.client_order_id,
            order_id=order.order_id,
            instrument=book.instrument,
            side=order.side,
            qty=qty,
            price=price,
            fee=fee,
            fee_currency=quote,
            liquidity=liquidity,
            ts=ts,
        )
        fills = self._fills[order.account]
        fills.append(fill)
        if len(fills) > self.retain_fills and order.account in self._finished_kept:
            self._over.add(order.account)
        state = self._state(order, ts)
        if order.status is OrderStatus.FILLED:
            events.append(OrderFilled(**state, fill=fill))
        else:
            events.append(OrderPartiallyFilled(**state, fill=fill))

    def _rest_or_cancel(
        self, book: OrderBook, order: RestingOrder, ts: int, events: list[EngineEvent]
    ) -> None:
        if order.leaves == 0:
            return
        if order.order_type is OrderType.MARKET:
            self._cancel(book, order, CancelReason.NO_LIQUIDITY, ts, events, resting=False)
        elif order.time_in_force is TimeInForce.IOC:
            self._cancel(book, order, CancelReason.IOC_REMAINDER, ts, events, resting=False)
        else:
            book.side(order.side).append(order)
            book.touch(order.side, order.price)  # type: ignore[arg-type]

    def _cancel(
        self,
        book: OrderBook,
        order: RestingOrder,
        reason: CancelReason,
        ts: int,
        events: list[EngineEvent],
        *,
        resting: bool = True,
    ) -> None:
        if resting:
            book.side(order.side).remove(order)
            book.touch(order.side, order.price)  # type: ignore[arg-type]
        self._finished(order, OrderStatus.CANCELLED)
        self._acknowledge(order, OrderCancelled, ts, events, reason=reason)

    def _finished(self, order: RestingOrder, status: OrderStatus) -> None:
        """`order` ends with `status` (filled or cancelled): it no longer works."""
        order.status = status
        del self._working[order.account][order.client_order_id]
        kept = self._finished_kept.get(order.account)
        if kept is not None:
            kept.append(order.client_order_id)
            if len(kept) > self.retain_finished_orders:
                self._over.add(order.account)

    def _acknowledge(self, order: RestingOrder, kind: Callable[..., EngineEvent], ts: int,
                     events: list[EngineEvent], **extra: Any) -> None:
        if order.account not in self._quiet:
            events.append(kind(**self._state(order, ts), **extra))

    def _changed(self, book: OrderBook, ts: int, events: list[EngineEvent]) -> None:
        """An operation on `book` is done: report its changes now, or at the batch's end."""
        if self._batched is None:
            self._flush(book, ts, events)
        else:
            self._batched[book.instrument] = book

    def _flush(self, book: OrderBook, ts: int, events: list[EngineEvent]) -> None:
        bids, asks = book.take_changes()
        if bids or asks:
            book.update_id += 1
            events.append(
                BookDelta(
                    instrument=book.instrument,
                    bids=bids,
                    asks=asks,
                    update_id=book.update_id,
                    ts=ts,
                )
            )
        bid, ask = book.bids.best(), book.asks.best()
        key = (bid.price if bid else None, bid.size if bid else None,
               ask.price if ask else None, ask.size if ask else None, book.last_price)
        if self._last_ticker.get(book.instrument) != key:
            self._last_ticker[book.instrument] = key
            events.append(self._ticker(book, ts))

    # ------------------------------------------------------------ helpers

    def _book(self, instrument: str) -> OrderBook:
        book = self._books.get(instrument)
        if book is None:
            raise OrderRefused(ErrorCode.UNKNOWN_INSTRUMENT, f"unknown instrument {instrument!r}")
        return book

    def _spec(self, instrument: str) -> InstrumentSpec:
        spec = self.specs.get(instrument)
        if spec is None:
            raise OrderRefused(ErrorCode.UNKNOWN_INSTRUMENT, f"unknown instrument {instrument!r}")
        return spec

    def _find(self, account: str, client_order_id: str) -> RestingOrder:
        """The order, from memory or (a finished one, which callers only refuse to change)
        from the archive."""
        order = self._orders.get((account, client_order_id))
        if order is None:
            order = self._archived_order(account, client_order_id)
        if order is None:
            raise OrderRefused(ErrorCode.ORDER_NOT_FOUND, f"no order {client_order_id!r}")
        return order

    def _archived_order(self, account: str, client_order_id: str) -> RestingOrder | None:
        """An order let go of memory, from the archive (None if there is no such order)."""
        if self.archive is None or account not in self._archived_orders:
            return None
        return self.archive.order(account, client_order_id)

    def _archived_id(self, account: str, client_order_id: str) -> bool:
        """Whether the id belongs to an order let go of memory (one primary-key lookup, and
        only for an account that let some go)."""
        return (self.archive is not None and account in self._archived_orders
                and self.archive.has_order(account, client_order_id))

    @staticmethod
    def _check_qty(spec: InstrumentSpec, qty: Decimal) -> None:
        if EXACT.remainder(qty, spec.lot_size) != 0:
            raise OrderRefused(
                ErrorCode.QTY_OFF_LOT,
                f"qty {qty} is not a multiple of the lot size {spec.lot_size}",
            )
        if qty < spec.min_qty:
            raise OrderRefused(
                ErrorCode.QTY_BELOW_MIN, f"qty {qty} is below the minimum {spec.min_qty}"
            )

    @staticmethod
    def _check_price(spec: InstrumentSpec, price: Decimal) -> None:
        if EXACT.remainder(price, spec.tick_size) != 0:
            raise OrderRefused(
                ErrorCode.PRICE_OFF_TICK,
                f"price {price} is not a multiple of the tick size {spec.tick_size}",
            )

    @staticmethod
    def _state(order: RestingOrder, ts: int) -> dict[str, Any]:
        return {
            "account": order.account,
            "client_order_id": order.client_order_id,
            "order_id": order.order_id,
            "instrument": order.instrument,
            "side": order.side,
            "order_type": order.order_type,
            "qty": order.qty,
            "price": order.price,
            "time_in_force": order.time_in_force,
            "status": order.status,
            "filled_qty": order.filled,
            "remaining_qty": order.leaves,
            "avg_price": (ROUNDED.divide(order.notional, order.filled) if order.filled else None),
            "ts": ts,
        }

    def _snapshot(self, order: RestingOrder) -> OrderSnapshot:
        return OrderSnapshot(**self._state(order, self._clock()))

    @staticmethod
    def _ticker(book: OrderBook, ts: int) -> Ticker:
        bid, ask = book.bids.best(), book.asks.best()
        return Ticker(
            instrument=book.instrument,
            bid=bid.price if bid else None,
            bid_qty=bid.size if bid else None,
            ask=ask.price if ask else None,
            ask_qty=ask.size if ask else None,
            last=book.last_price,
            ts=ts,
        )
