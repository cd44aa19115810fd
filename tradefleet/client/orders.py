"""Order handles: what `MarketClient.place_order` returns, kept current by the order's events.

`OrderTracker` applies the session's order events, fills and order errors to the handles
(plain state changes, no I/O); a handle's `accepted()`, `filled()` and `done()` wait for the
state they name. Waiting uses futures of the running loop, created when awaited, so handles
work under any event loop (a script's, Jupyter's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Literal

from protocol.market import Side
from protocol.orders import (
    Fill,
    NewOrder,
    OrderEvent,
    OrderRejected,
    OrderStatus,
    OrderType,
    TimeInForce,
    modify_reported,
)
from protocol.session import Error
from protocol.signals import POSITION_MANAGER_PREFIX
from tradefleet.client.errors import ClientError, OrderNotFilled
from tradefleet.client.errors import OrderRejected as OrderRejectedError

Origin = Literal["placed", "adopted", "found", "position_manager"]


class OrderHandle:
    """One order of this session, as last reported.

    Attributes reflect the latest order event: `status` (PENDING until the first answer),
    `order_id`, `qty`/`price` (after any modification), `filled_qty`, `remaining_qty`,
    `avg_price`, every `fills` (each fill once), every `events`, and `error` when the order was
    rejected. `last_error` holds the latest refusal of a cancel or modify of this order.

    `origin` says where the handle came from: "placed" by this client's `place_order`,
    "adopted" by its `adopt`, "position_manager" for an order the position manager placed for
    one of the session's signals (its entry or a close), or "found": an order of this session
    that this client did not place and that turned up in the session's events, e.g. one an
    earlier run of the algo sent just before it died, which reached the Broker only after the
    new run looked.
    """

    def __init__(self, request: NewOrder, origin: Origin = "placed") -> None:
        self.origin: Origin = origin
        self.client_order_id: str = request.client_order_id
        self.account: str = request.account
        self.instrument: str = request.instrument
        self.side: Side = request.side
        self.order_type: OrderType = request.order_type
        self.time_in_force: TimeInForce = request.time_in_force
        self.qty: Decimal = request.qty
        self.price: Decimal | None = request.price
        self.request = request
        self.status: OrderStatus = OrderStatus.PENDING
        self.order_id: str | None = None
        self.filled_qty = Decimal(0)
        self.remaining_qty: Decimal = request.qty
        self.avg_price: Decimal | None = None
        self.fills: list[Fill] = []
        self.events: list[OrderEvent] = []
        self.error: OrderRejectedError | None = None
        self.last_error: Error | None = None
        self.answered = False
        """True once the server said anything about this order (then it is never re-sent)."""
        self.amendments_in_flight = 0
        self.unconfirmed: dict[str, dict[str, Any]] = {}
        """The latest cancel_order and modify_order frames sent for this order that no
        answer has shown carried out yet, by type: sent again after a resume (the Market they
        went to may have died holding them). A copy already carried out changes nothing."""
        self._fill_ids: set[str] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._lost: ClientError | None = None

    def __repr__(self) -> str:
        return (f"OrderHandle({self.client_order_id!r}, {self.side} {self.qty} {self.instrument}"
                f" @ {self.price}, {self.status}, filled {self.filled_qty})")

    @property
    def is_done(self) -> bool:
        """True once the order is filled, cancelled, rejected or expired."""
        return self.status.is_terminal

    async def accepted(self, timeout: float | None = None) -> OrderHandle:
        """Wait until the order is acknowledged (accepted, or already further along).

        Raises `OrderRejected` if it was refused, `ConnectionLost` if the client closed,
        `TimeoutError` after `timeout` seconds.
        """
        await self._wait(lambda: self.status is not OrderStatus.PENDING, timeout)
        self._raise_if_rejected()
        return self

    async def filled(self, timeout: float | None = None) -> OrderHandle:
        """Wait until the order is completely filled.

        Raises `OrderRejected` if it was refused, `OrderNotFilled` if it was cancelled or
        expired first, `ConnectionLost`, or `TimeoutError` after `timeout` seconds.
        """
        await self._wait(lambda: self.is_done, timeout)
        self._raise_if_rejected()
        if self.status is not OrderStatus.FILLED:
            raise OrderNotFilled(self.client_order_id, self.status.value)
        return self

    async def done(self, timeout: float | None = None) -> OrderHandle:
        """Wait until the order is finished, however it ended (see `status`). Raises only
        `ConnectionLost` or `TimeoutError`."""
        await self._wait(lambda: self.is_done, timeout)
        return self

    def _raise_if_rejected(self) -> None:
        if self.error is not None:
            raise self.error

    async def _wait(self, ready: Callable[[], bool], timeout: float | None) -> None:
        async with asyncio.timeout(timeout):
            while not ready():
                if self._lost is not None:
                    raise self._lost
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------ state changes

    def apply(self, event: OrderEvent) -> None:
        """Take the state an order event reports."""
        self.answered = True
        self.events.append(event)
        self.status = event.status
        if event.type in ("order_cancelled", "order_modified") and self.amendments_in_flight:
            self.amendments_in_flight -= 1
        if self.unconfirmed:
            self._confirm(event)
        self.order_id = event.order_id or self.order_id
        self.qty, self.price = event.qty, event.price
        self.filled_qty, self.remaining_qty = event.filled_qty, event.remaining_qty
        self.avg_price = event.avg_price
        fill = getattr(event, "fill", None)
        if isinstance(fill, Fill):
            self.add_fill(fill)
        if isinstance(event, OrderRejected):
            self.error = OrderRejectedError(event.reason.value, event.message,
                                            client_order_id=self.client_order_id)
        self._changed()

    def _confirm(self, event: OrderEvent) -> None:
        if event.status.is_terminal:
            self.unconfirmed.clear()
            return
        modify = self.unconfirmed.get("modify_order")
        if modify is not None and event.type in ("order_modified", "order_snapshot") and \
                modify_reported(modify, event.qty, event.price):
            del self.unconfirmed["modify_order"]

    def add_fill(self, fill: Fill) -> None:
        if fill.fill_id not in self._fill_ids:
            self._fill_ids.add(fill.fill_id)
            self.fills.append(fill)
            self._changed()

    def refuse(self, error: Error) -> None:
        """An `error` about this order: the new order itself was refused if nothing else is
        pending for it, else it concerns the cancel or modify in flight."""
        self.answered = True
        if self.amendments_in_flight > 0 or self.status is not OrderStatus.PENDING:
            self.amendments_in_flight = max(0, self.amendments_in_flight - 1)
            self.last_error = error
            self.unconfirmed.clear()  # refused: that is the answer, sending again won't help
        else:
            self.status = OrderStatus.REJECTED
            self.error = OrderRejectedError(error.code.value, error.message,
                                            client_order_id=self.client_order_id,
                                            field=error.field)
        self._changed()

    def lose(self, exc: ClientError) -> None:
        """The client is gone: every waiter raises `exc`."""
        self._lost = exc
        self._changed()


class OrderTracker:
    """The session's orders by client_order_id."""

    def __init__(self) -> None:
        self.handles: dict[str, OrderHandle] = {}

    def add(self, request: NewOrder, origin: Origin = "placed") -> OrderHandle:
        handle = self.handles.get(request.client_order_id)
        if handle is None:
            handle = self.handles[request.client_order_id] = OrderHandle(request, origin)
        return handle

    def apply(self, event: OrderEvent, origin: Origin = "found") -> OrderHandle:
        """Apply an order event; an order this client did not place here (e.g. before a
        restart with the same session) gets a handle too, of `origin` (of "position_manager"
        for the position manager's own orders)."""
        handle = self.handles.get(event.client_order_id)
        if handle is None:
            if event.client_order_id.startswith(POSITION_MANAGER_PREFIX):
                origin = "position_manager"
            handle = self.add(NewOrder(
                client_order_id=event.client_order_id, account=event.account,
                instrument=event.instrument, side=event.side, order_type=event.order_type,
                qty=event.qty, price=event.price, time_in_force=event.time_in_force), origin)
        elif origin == "adopted" and handle.origin == "found":
            handle.origin = "adopted"
        handle.apply(event)
        return handle

    def fill(self, fill: Fill) -> OrderHandle | None:
        handle = self.handles.get(fill.client_order_id)
        if handle is not None:
            handle.add_fill(fill)
        return handle

    def error(self, error: Error) -> OrderHandle | None:
        handle = self.handles.get(error.client_order_id or "")
        if handle is not None:
            handle.refuse(error)
        return handle

    def unanswered(self) -> list[OrderHandle]:
        """Orders sent but never answered: re-sent after a reconnect (idempotent by id)."""
        return [h for h in self.handles.values() if not h.answered]

    def lose_all(self, exc: ClientError) -> None:
        for handle in self.handles.values():
            handle.lose(exc)
