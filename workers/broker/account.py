"""One account's books, as the journal tells them: the order tracker plus what the journal
alone remembers about each order. Pure: no I/O.

The order tracker (`workers.broker.orders`) knows each order's state. The Broker also needs to
know, for every order, which algo session placed it (its events go back there, also after a
restart), for which customer (a customer never touches another's orders), when the intent was
journaled, which fills were counted, and whether a cancel or modify is on its way (for
reconciliation). All of it is derived from journal entries by `observe()`, the same way while
running and while rebuilding, so a restarted owner knows exactly what the previous one knew.

Journal entry kinds (`Entry.kind`) and payloads:

    owner       {worker_id, epoch}                  an owner claimed the account
    request     {session_id, customer, msg}         a client request, before it is acted on
    event       an order event in wire form          `session_id` column = the order's session,
                                                     so the journal stamps its `seq`
    refused     {client_order_id, action, code, message}
                                                     the venue refused a cancel or modify
    reconciled  {events, resent, cancelled_at_venue, foreign}
                                                     a reconciliation finished
    risk        {customer, record}                   a decision of the position manager
                                                     (`workers.broker.risk.records`); only an
                                                     order refusal carries its session (and
                                                     seq); the books ignore this kind
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import orjson

from protocol.errors import ErrorCode
from protocol.market import Side
from protocol.orders import (
    ORDER_EVENT,
    CancelOrder,
    ModifyOrder,
    NewOrder,
    OrderEvent,
    OrderFilled,
    OrderModified,
    OrderPartiallyFilled,
    OrderSnapshot,
    OrderStatus,
)
from workers.broker.orders import (
    ClientRequest,
    OrderStateError,
    OrderTracker,
    VenueRefused,
)
from workers.broker.reconcile import KnownOrder, PendingModify
from workers.broker.retention import RETAIN_FINISHED

REQUEST = "request"
EVENT = "event"
REFUSED = "refused"
OWNER = "owner"
RECONCILED = "reconciled"

_REQUESTS: dict[str, type[ClientRequest]] = {
    "new_order": NewOrder,
    "cancel_order": CancelOrder,
    "modify_order": ModifyOrder,
}


class JournaledEntry(Protocol):
    """What the books read from a journal entry (`workers.broker.journal.Entry` fits)."""

    @property
    def ts(self) -> float: ...
    @property
    def kind(self) -> str: ...
    @property
    def session_id(self) -> str | None: ...
    @property
    def session_seq(self) -> int | None: ...
    @property
    def payload(self) -> dict[str, Any]: ...


@dataclass(slots=True)
class OrderNotes:
    """What the journal remembers about one order besides its state."""

    request: NewOrder
    session_id: str
    customer: str
    intent_ts: int
    fill_ids: set[str] = field(default_factory=set)
    last_fill_ts: int | None = None
    cancel_requested: bool = False
    pending_modify: PendingModify | None = None


def _notes_state(notes: OrderNotes, with_request: bool) -> dict[str, Any]:
    """`with_request`: the tracker does not keep the order's request, so the notes must."""
    modify = notes.pending_modify
    return {"request": notes.request.model_dump(mode="json", exclude_none=True)
            if with_request else None,
            "session_id": notes.session_id, "customer": notes.customer,
            "intent_ts": notes.intent_ts, "fill_ids": sorted(notes.fill_ids),
            "last_fill_ts": notes.last_fill_ts, "cancel_requested": notes.cancel_requested,
            "pending_modify": None if modify is None else [
                None if modify.qty is None else str(modify.qty),
                None if modify.price is None else str(modify.price)]}


def _notes_from_state(state: dict[str, Any], request: NewOrder | None) -> OrderNotes:
    modify = state["pending_modify"]
    return OrderNotes(
        request=request if request is not None else NewOrder.model_validate(state["request"]),
        session_id=state["session_id"], customer=state["customer"],
        intent_ts=state["intent_ts"], fill_ids=set(state["fill_ids"]),
        last_fill_ts=state["last_fill_ts"], cancel_requested=state["cancel_requested"],
        pending_modify=None if modify is None else PendingModify(
            None if modify[0] is None else Decimal(modify[0]),
            None if modify[1] is None else Decimal(modify[1])))


# ---------------------------------------------------------------- entry payloads


def request_payload(request: ClientRequest, session_id: str, customer: str) -> dict[str, Any]:
    return {"session_id": session_id, "customer": customer,
            "msg": request.model_dump(mode="json", exclude_none=True)}


def event_payload(event: OrderEvent) -> dict[str, Any]:
    return event.model_dump(mode="json", exclude_none=True, exclude={"seq"})


def stamped_event(payload: dict[str, Any], seq: int | None) -> bytes:
    """The wire form of a journaled event (`event_payload`) carrying its session `seq`: the
    same bytes' content as encoding the event model with that seq, without building it."""
    return orjson.dumps(payload if seq is None else {**payload, "seq": seq})


def snapshot_from_event(payload: dict[str, Any], ts: int) -> OrderSnapshot:
    """An `order_snapshot` at `ts` of the order an `event` entry's payload left as it was:
    the answer to a repeat of an order the books no longer keep."""
    fields = {k: v for k, v in payload.items()
              if k in OrderSnapshot.model_fields and k not in ("type", "seq", "ts")}
    return OrderSnapshot.model_validate({**fields, "ts": ts})


def refused_payload(refusal: VenueRefused) -> dict[str, Any]:
    return {"client_order_id": refusal.client_order_id, "action": refusal.action,
            "code": refusal.code.value, "message": refusal.message}


def event_from_entry(entry: JournaledEntry) -> OrderEvent:
    """The order event an `event` entry holds, stamped with its session seq."""
    event: OrderEvent = ORDER_EVENT.validate_python(entry.payload)
    if entry.session_seq is not None:
        event = event.model_copy(update={"seq": entry.session_seq})
    return event


def tracker_input(entry: JournaledEntry) -> ClientRequest | OrderEvent | VenueRefused | None:
    """The tracker input an entry records, or None for lifecycle entries."""
    if entry.kind == REQUEST:
        msg = entry.payload["msg"]
        return _REQUESTS[msg["type"]].model_validate(msg)
    if entry.kind == EVENT:  # journaled without its seq (`event_payload`), as the tracker wants
        event: OrderEvent = ORDER_EVENT.validate_python(entry.payload)
        return event
    if entry.kind == REFUSED:
        p = entry.payload
        return VenueRefused(p["client_order_id"], p["action"], ErrorCode(p["code"]), p["message"])
    return None


# ---------------------------------------------------------------- the books


class AccountBook:
    """The order tracker of one account plus the journal's notes on every order.

    Feed every journaled entry to `observe()` right after it is appended (or while rebuilding,
    after the tracker has seen it); query the rest. The notes of an order go when the tracker
    lets the finished order go (`retain_finished`, see `workers.broker.orders`).
    """

    def __init__(self, account: str, clock: Callable[[], int], *,
                 retain_finished: int = RETAIN_FINISHED) -> None:
        self.account = account
        self.tracker = OrderTracker(account, clock, retain_finished=retain_finished,
                                    on_forget=self._forget)
        self._clock = clock
        self._notes: dict[str, OrderNotes] = {}
        self._orders = 0
        self._last_seq: dict[str, int] = {}
        self._positions: dict[str, Decimal] = {}
        self.fills = 0
        self.rebuild_errors: list[str] = []

    # ------------------------------------------------------------ durable form

    def snapshot(self) -> dict[str, Any]:
        """The books as JSON-ready data: `restore` of it, then `rebuild` of the entries after
        it, gives the books a rebuild of the whole journal gives."""
        return {
            "tracker": self.tracker.snapshot(),
            "notes": {cid: _notes_state(n, self.tracker.request_of(cid) is None)
                      for cid, n in self._notes.items()},
            "last_seq": dict(self._last_seq),
            "positions": {k: str(v) for k, v in self._positions.items()},
            "fills": self.fills,
            "orders": self._orders,
        }

    @classmethod
    def restore(cls, account: str, clock: Callable[[], int], data: dict[str, Any]
                ) -> AccountBook:
        """The books `snapshot()` described."""
        book = cls(account, clock)
        book.tracker = OrderTracker.restore(account, clock, data["tracker"],
                                            on_forget=book._forget)
        for cid, state in data["notes"].items():
            kept = book.tracker.request_of(cid)  # the tracker's request, not a second copy
            book._notes[cid] = _notes_from_state(state, kept)
        book._last_seq = dict(data["last_seq"])
        book._positions = {k: Decimal(v) for k, v in data["positions"].items()}
        book.fills = data["fills"]
        book._orders = data["orders"]
        return book

    # ------------------------------------------------------------ recovery

    def rebuild(self, entries: Iterable[JournaledEntry], parsed: list[Any] | None = None
                ) -> int:
        """Replay journal entries, oldest first, into a fresh book. Returns how many were read.
        An entry the tracker refuses (which a consistent journal never holds) is recorded in
        `rebuild_errors` and skipped. Each payload is parsed once; `parsed`, when given,
        receives every entry's `tracker_input` in order, so that a later replay of the same
        entries need not parse them again."""
        count = 0
        for entry in entries:
            count += 1
            message = tracker_input(entry)
            if parsed is not None:
                parsed.append(message)
            if message is not None:
                try:
                    self.tracker.receive(message)
                except OrderStateError as exc:
                    self.rebuild_errors.append(f"{entry.kind} {exc.client_order_id}: {exc}")
                    continue
            self.observe(entry, message)
        return count

    # ------------------------------------------------------------ bookkeeping

    def observe(self, entry: JournaledEntry, item: Any = None) -> None:
        """Update the notes from one journaled entry. `item` is the model the entry was
        made from (the request or order event), when the caller has it: the payload then
        need not be parsed again."""
        if entry.session_id is not None and entry.session_seq is not None:
            self._last_seq[entry.session_id] = max(
                entry.session_seq, self._last_seq.get(entry.session_id, 0))
        if entry.kind == REQUEST:
            self._observe_request(entry, item)
        elif entry.kind == EVENT:
            self._observe_event(item if item is not None else event_from_entry(entry))
        elif entry.kind == REFUSED:
            notes = self._notes.get(entry.payload["client_order_id"])
            if notes is not None:
                if entry.payload["action"] == "cancel":
                    notes.cancel_requested = False
                else:
                    notes.pending_modify = None

    def _observe_request(self, entry: JournaledEntry, item: Any = None) -> None:
        msg = entry.payload["msg"]
        cid = msg["client_order_id"]
        if msg["type"] == "new_order":
            if cid not in self._notes and not self.tracker.forgotten(cid):
                self._orders += 1
                self._notes[cid] = OrderNotes(
                    request=item if isinstance(item, NewOrder) else NewOrder.model_validate(msg),
                    session_id=entry.payload["session_id"],
                    customer=entry.payload["customer"],
                    intent_ts=int(entry.ts * 1e9),
                )
            return
        notes = self._notes.get(cid)
        if notes is None:
            return
        if msg["type"] == "cancel_order":
            notes.cancel_requested = True
        else:
            modify = item if isinstance(item, ModifyOrder) else ModifyOrder.model_validate(msg)
            notes.pending_modify = PendingModify(modify.qty, modify.price)

    def _observe_event(self, event: OrderEvent) -> None:
        notes = self._notes.get(event.client_order_id)
        if isinstance(event, OrderPartiallyFilled | OrderFilled):
            fill = event.fill
            self.fills += 1
            signed = fill.qty if fill.side is Side.BUY else -fill.qty
            self._positions[fill.instrument] = self._positions.get(fill.instrument,
                                                                   Decimal(0)) + signed
            if notes is not None:
                notes.fill_ids.add(fill.fill_id)
                notes.last_fill_ts = max(fill.ts, notes.last_fill_ts or 0)
        if notes is None:
            return
        if isinstance(event, OrderModified):
            notes.pending_modify = None
        if event.status.is_terminal:
            notes.cancel_requested = False
            notes.pending_modify = None

    # ------------------------------------------------------------ queries

    def session_of(self, client_order_id: str) -> str | None:
        notes = self._notes.get(client_order_id)
        return None if notes is None else notes.session_id

    def customer_of(self, client_order_id: str) -> str | None:
        notes = self._notes.get(client_order_id)
        return None if notes is None else notes.customer

    def last_seq(self, session_id: str) -> int:
        """Highest order-event seq journaled for the session so far (0 for none)."""
        return self._last_seq.get(session_id, 0)

    @property
    def orders(self) -> int:
        """Orders the account ever had, the forgotten finished ones included."""
        return self._orders

    def _forget(self, client_order_id: str) -> None:
        self._notes.pop(client_order_id, None)

    def open_orders(self, customer: str | None = None, session_id: str | None = None
                    ) -> list[OrderSnapshot]:
        """Open orders (pending included), oldest first; only `customer`'s when given, only
        those placed by `session_id` when given."""
        return [o for o in self.tracker.open_orders()
                if (customer is None or self.customer_of(o.client_order_id) == customer)
                and (session_id is None or self.session_of(o.client_order_id) == session_id)]

    def positions(self) -> dict[str, Decimal]:
        """Net quantity per instrument from the journaled fills (non-zero only)."""
        return {k: v for k, v in self._positions.items() if v}

    def known_open(self) -> list[KnownOrder]:
        """Our open orders with what reconciliation needs to know about each."""
        out: list[KnownOrder] = []
        for snapshot in self.tracker.open_orders():
            notes = self._notes.get(snapshot.client_order_id)
            if notes is None:  # an order the journal holds no request for: not ours to fix
                continue
            out.append(KnownOrder(
                snapshot=snapshot,
                request=notes.request,
                fill_ids=frozenset(notes.fill_ids),
                intent_ts=notes.intent_ts,
                last_fill_ts=notes.last_fill_ts,
                cancel_requested=notes.cancel_requested,
                pending_modify=notes.pending_modify,
            ))
        return out

    def finished(self) -> dict[str, OrderStatus]:
        """Status of every order our books hold as finished."""
        out: dict[str, OrderStatus] = {}
        for cid in self._notes:
            status = self.tracker.status(cid)
            if status is not None and status.is_terminal:
                out[cid] = status
        return out
