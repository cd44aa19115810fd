"""The orders an earlier run of a hosted trader left working in the trader's session.

A trader keeps one session across its runs (`workers.trader.service.SavedSession`), so when a
run dies (kill -9, a crashed strategy, a replacement worker) the orders it had working are
still the session's. The new run deals with them before its strategy starts
(`take_over`): it asks the Broker for the session's working orders and cancels them, or adopts
them into `client.orders` for the strategy to pick up (`[[traders]] on_restart`).

One kind of leftover can escape that question: an order the dying run had sent that was still
on its way to the Broker when the new run asked, e.g. held by a Market whose Broker link was
down while the session moved to another Market. It reaches the Broker later and its events
come to the new run's session. The SDK gives such an order a handle of origin "found" (this
run neither placed nor adopted it, and it is not one the position manager placed for a
signal); `watch`, which sees every event before the strategy does, cancels it, whatever
`on_restart` says: the strategy has already taken over what was there when it started, and no
strategy expects an order to appear from nowhere afterwards.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import structlog

from protocol.orders import OrderEvent

log = structlog.get_logger(__name__)

TAKE_OVER_S = 30.0
"""How long a new run waits for the cancels of the orders an earlier run left."""


class EarlierRuns:
    """The leftovers of the earlier runs of one trader, on the SDK client of the new run."""

    def __init__(self, client: Any, on_restart: Literal["cancel", "adopt"]) -> None:
        self._client = client
        self._on_restart = on_restart
        self._cancelled: set[str] = set()
        self.late = 0
        """Leftovers that turned up after the take-over (each cancelled once)."""

    async def take_over(self) -> None:
        """Before the strategy starts: cancel (and wait for) or adopt the session's working
        orders, which only an earlier run can have placed."""
        left = await self._client.open_orders(session_only=True)
        if not left:
            return
        handles = [self._client.adopt(order) for order in left]
        log.info("orders_left_by_an_earlier_run", count=len(handles), action=self._on_restart,
                 client_order_ids=[h.client_order_id for h in handles])
        if self._on_restart == "adopt":
            return
        for handle in handles:
            self._cancelled.add(handle.client_order_id)
            await self._client.cancel_order(handle.client_order_id)
        # A cancel the venue refuses (filled meanwhile) also ends the order.
        await asyncio.wait_for(asyncio.gather(*(h.done() for h in handles)), TAKE_OVER_S)

    async def watch(self, event: Any) -> None:
        """One event of the session, before the strategy sees it: a working order of origin
        "found" (a leftover that arrived late) is cancelled, once. The handle says whether it
        still works: the events of a resume's replay reach the handles at once but the
        strategy's stream later, so an old `order_accepted` may come for an order long done."""
        if not isinstance(event, OrderEvent) or event.status.is_terminal:
            return
        cid = event.client_order_id
        if cid in self._cancelled:
            return
        handle = self._client.order(cid)
        if handle is None or handle.origin != "found" or handle.is_done:
            return
        self._cancelled.add(cid)
        self.late += 1
        log.warning("late_order_of_an_earlier_run_cancelled", client_order_id=cid,
                    instrument=event.instrument, side=event.side.value, qty=str(event.qty))
        await self._client.cancel_order(cid)
