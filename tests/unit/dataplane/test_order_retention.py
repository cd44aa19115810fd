"""The order tracker and the account's books keep a bounded number of finished orders; an
older one leaves only its client_order_id, which stays taken. A rebuild from the journal lets
the same orders go as the live run did."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import pytest

from protocol.errors import ErrorCode
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
    OrderSnapshot,
    OrderStatus,
)
from workers.broker.account import (
    EVENT,
    REQUEST,
    AccountBook,
    event_payload,
    request_payload,
)
from workers.broker.orders import (
    Emit,
    Journal,
    OrderStateError,
    OrderTracker,
    VenueRefused,
)

from .conftest import FakeClock, order

pytestmark = pytest.mark.timeout(10)

D = Decimal
ACCOUNT = "acct"


def state(cid: str, request: NewOrder, **changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "account": ACCOUNT, "client_order_id": cid, "order_id": f"V-{cid}",
        "instrument": "BTC/USD", "side": request.side, "order_type": "limit",
        "qty": request.qty, "price": request.price, "time_in_force": "GTC",
        "status": OrderStatus.ACCEPTED, "filled_qty": D(0), "remaining_qty": request.qty,
        "ts": 10}
    out.update(changes)
    return out


def accepted(cid: str, request: NewOrder) -> OrderAccepted:
    return OrderAccepted(**state(cid, request))


def cancelled(cid: str, request: NewOrder) -> OrderCancelled:
    return OrderCancelled(**state(cid, request, status=OrderStatus.CANCELLED,
                                  remaining_qty=D(0)), reason=CancelReason.REQUESTED)


def filled(cid: str, request: NewOrder) -> OrderFilled:
    fill = Fill(fill_id=f"f-{cid}", account=ACCOUNT, client_order_id=cid, order_id=f"V-{cid}",
                instrument="BTC/USD", side=request.side, qty=request.qty, price=request.price,
                fee=D(0), fee_currency="USD", liquidity="maker", ts=11)
    return OrderFilled(**state(cid, request, status=OrderStatus.FILLED, filled_qty=request.qty,
                               remaining_qty=D(0)), fill=fill)


def history() -> list[NewOrder | CancelOrder | OrderEvent | VenueRefused]:
    """`open` rests throughout; c1 fills, c2 is cancelled, c3 is rejected, c4 fills: four
    orders finish, in that order."""
    reqs = {cid: order(cid, ACCOUNT, "buy", "1", "100") for cid in ("open", "c1", "c2", "c3",
                                                                     "c4")}
    return [
        reqs["open"], accepted("open", reqs["open"]),
        reqs["c1"], accepted("c1", reqs["c1"]), filled("c1", reqs["c1"]),
        reqs["c2"], accepted("c2", reqs["c2"]),
        CancelOrder(client_order_id="c2", account=ACCOUNT), cancelled("c2", reqs["c2"]),
        reqs["c3"], VenueRefused("c3", "place", ErrorCode.INVALID_ORDER, "no"),
        reqs["c4"], accepted("c4", reqs["c4"]), filled("c4", reqs["c4"]),
    ]


def test_past_the_limit_the_oldest_finished_order_is_forgotten() -> None:
    forgotten: list[str] = []
    tracker = OrderTracker(ACCOUNT, FakeClock(), retain_finished=2, on_forget=forgotten.append)
    for item in history():
        tracker.receive(item)
    assert forgotten == ["c1", "c2"]
    assert tracker.get("c1") is None and tracker.get("c2") is None
    assert tracker.forgotten("c1") and tracker.forgotten("c2") and not tracker.forgotten("c3")
    assert tracker.status("c3") is OrderStatus.REJECTED
    assert tracker.status("c4") is OrderStatus.FILLED
    # The open order is the oldest, but only finished orders are ever let go.
    assert [o.client_order_id for o in tracker.open_orders()] == ["open"]
    assert tracker.kept == 3


def test_a_forgotten_id_cannot_make_a_second_order() -> None:
    tracker = OrderTracker(ACCOUNT, FakeClock(), retain_finished=2)
    for item in history():
        tracker.receive(item)
    with pytest.raises(OrderStateError) as refused:
        tracker.receive(order("c1", ACCOUNT, "buy", "1", "100"))
    assert refused.value.code is ErrorCode.DUPLICATE_ORDER
    assert "finished long ago" in refused.value.message
    with pytest.raises(OrderStateError) as unknown:
        tracker.receive(CancelOrder(client_order_id="c2", account=ACCOUNT))
    assert unknown.value.code is ErrorCode.ORDER_NOT_FOUND
    # A repeat of a kept order still answers with its state, creating nothing.
    effects = tracker.receive(order("c4", ACCOUNT, "buy", "1", "100"))
    assert [type(e) for e in effects] == [Emit]
    assert isinstance(effects[0], Emit) and isinstance(effects[0].event, OrderSnapshot)
    assert effects[0].event.status is OrderStatus.FILLED


def test_memory_stays_bounded_however_many_orders_finish() -> None:
    tracker = OrderTracker(ACCOUNT, FakeClock(), retain_finished=5)
    for i in range(500):
        request = order(f"o{i}", ACCOUNT, "buy", "1", "100")
        tracker.receive(request)
        tracker.receive(accepted(f"o{i}", request))
        tracker.receive(cancelled(f"o{i}", request))
        assert tracker.kept <= 5
    assert tracker.kept == 5 and tracker.forgotten("o0") and tracker.get("o499") is not None


@dataclass(frozen=True)
class Entry:
    ts: float
    kind: str
    session_id: str | None
    session_seq: int | None
    payload: dict[str, Any]


def journal(retain: int) -> tuple[AccountBook, list[Entry]]:
    """Run the history through a live book the way the Broker does (the tracker decides,
    its `Journal` effects are appended and observed) and return the book and its journal."""
    book = AccountBook(ACCOUNT, FakeClock(), retain_finished=retain)
    entries: list[Entry] = []
    seq = 0
    for item in history():
        for effect in book.tracker.receive(item):
            if not isinstance(effect, Journal):
                continue
            journaled = effect.entry
            if isinstance(journaled, NewOrder | CancelOrder | ModifyOrder):
                entry = Entry(1.0, REQUEST, None, None, request_payload(journaled, "s1", "alice"))
            else:
                seq += 1
                entry = Entry(1.0, EVENT, "s1", seq, event_payload(journaled))
            entries.append(entry)
            book.observe(entry, journaled)
    return book, entries


def test_the_books_let_the_notes_go_with_the_order_and_a_rebuild_agrees() -> None:
    live, entries = journal(retain=2)
    rebuilt = AccountBook(ACCOUNT, FakeClock(), retain_finished=2)
    rebuilt.rebuild(entries)
    whole = AccountBook(ACCOUNT, FakeClock())
    whole.rebuild(entries)
    for book in (live, rebuilt):
        assert book.session_of("c1") is None and book.customer_of("c2") is None
        assert book.session_of("c4") == "s1" and book.customer_of("open") == "alice"
        assert book.orders == 5  # every order the account had, the forgotten ones included
        assert sorted(book.finished()) == ["c3", "c4"]
        assert book.rebuild_errors == []
        # What matters for trading is what the book with every order says.
        assert [o.model_dump(exclude={"ts"}) for o in book.open_orders()] == \
            [o.model_dump(exclude={"ts"}) for o in whole.open_orders()]
        assert book.positions() == whole.positions() == {"BTC/USD": D(2)}
        assert book.last_seq("s1") == whole.last_seq("s1")
    assert whole.session_of("c1") == "s1" and sorted(whole.finished()) == ["c1", "c2", "c3", "c4"]


@pytest.mark.parametrize("retain", [1, 2, 10_000])
def test_books_restored_from_a_snapshot_and_the_rest_equal_books_rebuilt_whole(
        retain: int) -> None:
    _, entries = journal(retain=2)
    whole = AccountBook(ACCOUNT, FakeClock(), retain_finished=retain)
    whole.rebuild(entries)
    for cut in range(len(entries) + 1):
        head = AccountBook(ACCOUNT, FakeClock(), retain_finished=retain)
        head.rebuild(entries[:cut])
        stored = orjson.loads(orjson.dumps(head.snapshot()))  # as the journal keeps it
        resumed = AccountBook.restore(ACCOUNT, FakeClock(), stored)
        assert resumed.snapshot() == head.snapshot(), cut
        resumed.rebuild(entries[cut:])
        assert resumed.snapshot() == whole.snapshot(), cut
        assert resumed.rebuild_errors == []
    # The history finishes four orders: below that, retention had work to do in the run.
    assert whole.tracker.forgotten("c1") is (retain < 4)
