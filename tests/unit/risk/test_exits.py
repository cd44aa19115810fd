"""Exits held on the server: each fires once, siblings are cancelled, closes never oversize,
and they survive a restart."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from protocol.market import Side
from protocol.signals import ExitFired, ExitKind, Signal
from workers.broker.risk.exits import MAX_CLOSE_ORDERS, PlanState
from workers.broker.risk.manager import (
    Alert,
    ClockTick,
    KillSwitch,
    SignalRequest,
)
from workers.broker.risk.records import ExitTriggered, TrailMoved

from .common import ACCOUNT, SECOND, order
from .desk import Desk

D = Decimal


def open_long(desk: Desk, qty: str = "2", **exits: Any) -> None:
    desk.trade("100")
    desk.send(SignalRequest(Signal.model_validate({
        "signal_id": "s1", "account": ACCOUNT, "instrument": "BTC/USD", "direction": "long",
        "qty": qty, **exits}), session_id="algo-1"))
    desk.fill("pm:s1:e", "100")


def fired(desk: Desk) -> list[ExitFired]:
    return desk.notices(ExitFired)


def test_stop_loss_fires_once_and_closes_the_position() -> None:
    desk = Desk()
    open_long(desk, stop_loss="95", take_profit="110")
    desk.trade("95.5")
    assert fired(desk) == []
    desk.trade("95")
    [notice] = fired(desk)
    assert (notice.kind, notice.trigger_price, notice.position_qty, notice.client_order_id,
            notice.close_qty) == (ExitKind.STOP_LOSS, D(95), D(2), "pm:s1:x1", D(2))
    close = desk.submitted()[-1]
    assert (close.side, close.qty, close.order_type) == (Side.SELL, D(2), "market")
    desk.trade("94")  # further prices change nothing: the plan fired
    desk.trade("111")  # …not even its take-profit sibling
    assert len(fired(desk)) == 1
    desk.fill("pm:s1:x1", "94.5")
    assert desk.position() == 0
    plan = desk.manager.exits.get("s1")
    assert plan is not None and plan.state is PlanState.DONE and plan.fired is ExitKind.STOP_LOSS
    assert desk.manager.positions.get("BTC/USD").realized == D(-11)  # type: ignore[union-attr]


def test_take_profit_on_the_bid_of_a_ticker() -> None:
    desk = Desk()
    open_long(desk, stop_loss="95", take_profit="110")
    desk.quote(bid="109.5", ask="110.5")  # a long closes at the bid
    assert fired(desk) == []
    desk.quote(bid="110", ask="110.5")
    assert [(n.kind, n.trigger_price) for n in fired(desk)] == [(ExitKind.TAKE_PROFIT, D(110))]


def test_a_short_is_protected_on_the_ask() -> None:
    desk = Desk()
    desk.trade("100")
    desk.send(SignalRequest(Signal.model_validate({
        "signal_id": "s1", "account": ACCOUNT, "instrument": "BTC/USD", "direction": "short",
        "qty": "1", "stop_loss": "105", "take_profit": "90"})))
    desk.fill("pm:s1:e", "100")
    desk.quote(bid="105", ask="104.5")
    desk.quote(bid="104", ask="105")
    assert [(n.kind, n.trigger_price) for n in fired(desk)] == [(ExitKind.STOP_LOSS, D(105))]
    assert desk.submitted()[-1].side is Side.BUY


def test_trailing_stop_follows_the_best_price_since_entry() -> None:
    desk = Desk()
    open_long(desk, trailing_distance="5")
    for price in ("101", "108", "104", "106", "103.5"):
        desk.trade(price)
    anchors = [r.anchor for r in desk.journal if isinstance(r, TrailMoved)]
    assert anchors == [D(101), D(108)]
    assert fired(desk) == []
    desk.trade("103")
    assert [(n.kind, n.trigger_price) for n in fired(desk)] == [(ExitKind.TRAILING_STOP, D(103))]


def test_time_exit_fires_on_the_clock_even_while_the_entry_still_works() -> None:
    desk = Desk()
    desk.trade("100")
    at = desk.now + 60 * SECOND
    desk.send(SignalRequest(Signal.model_validate({
        "signal_id": "s1", "account": ACCOUNT, "instrument": "BTC/USD", "direction": "long",
        "qty": "2", "entry_price": "99", "time_exit_at": at})))
    desk.fill("pm:s1:e", "99", qty="0.5")
    desk.advance(59)
    desk.send(ClockTick())
    assert fired(desk) == []
    desk.advance(1)
    desk.send(ClockTick())
    [notice] = fired(desk)
    assert (notice.kind, notice.close_qty) == (ExitKind.TIME, D("0.5"))
    assert "pm:s1:e" in desk.cancels()  # the rest of the entry will not reopen it
    desk.fill("pm:s1:x1", "99")
    assert desk.position() == 0
    desk.send(ClockTick())
    assert len(fired(desk)) == 1


def test_a_close_never_oversizes_when_the_position_changed() -> None:
    desk = Desk(auto_cancel=False)
    open_long(desk, qty="3", stop_loss="95")
    desk.place(order("tp", side="sell", qty="1", price="120"))  # the algo's own working sell
    desk.trade("94")
    # 3 held, 1 may still be sold by "tp" before its cancel lands: the close is for 2.
    assert desk.submitted()[-1].qty == D(2)
    desk.fill("tp", "120")  # it did trade before the cancel
    desk.fill("pm:s1:x1", "94")
    assert desk.position() == 0
    assert len(desk.submitted()) == 3  # entry, tp, one close: nothing more to close


def test_partial_closes_are_followed_up_with_what_is_left() -> None:
    desk = Desk()
    open_long(desk, stop_loss="95")
    desk.trade("94")
    desk.fill("pm:s1:x1", "94", qty="0.7")
    desk.cancel_ack("pm:s1:x1")  # the IOC remainder is gone
    follow_up = desk.submitted()[-1]
    assert (follow_up.client_order_id, follow_up.qty) == ("pm:s1:x2", D("1.3"))
    desk.fill("pm:s1:x2", "94")
    assert desk.position() == 0
    assert len(fired(desk)) == 1


def test_an_exit_that_cannot_close_gives_up_and_alerts() -> None:
    desk = Desk()
    open_long(desk, stop_loss="95")
    desk.trade("94")
    for attempt in range(1, MAX_CLOSE_ORDERS + 1):
        assert desk.submitted()[-1].client_order_id == f"pm:s1:x{attempt}"
        desk.cancel_ack(f"pm:s1:x{attempt}")  # no liquidity: the IOC close is cancelled
    [alert] = [e for e in desk.effects if isinstance(e, Alert)]
    assert alert.message == ("exit of signal s1 on BTC/USD gave up: 5 closing orders left 2 "
                             "BTC/USD open")
    assert desk.manager.exits.get("s1").state is PlanState.DONE  # type: ignore[union-attr]
    desk.send(ClockTick())
    assert len(desk.submitted()) == 1 + MAX_CLOSE_ORDERS


def test_an_exit_of_a_position_closed_elsewhere_retires_quietly() -> None:
    desk = Desk()
    open_long(desk, stop_loss="95")
    desk.place(order("c1", side="sell", qty="2", price="100"))
    desk.fill("c1", "100")
    assert desk.manager.exits.get("s1").done_reason == "the position was closed"  # type: ignore[union-attr]
    desk.trade("90")
    assert fired(desk) == []


def test_the_kill_switch_holds_exits_until_it_is_cleared() -> None:
    desk = Desk()
    open_long(desk, stop_loss="95")
    desk.send(KillSwitch(True, reason="halt", by="ops"))
    desk.trade("94")
    assert fired(desk) == []
    effects = desk.send(KillSwitch(False))
    assert effects[1:] == []  # clearing decides nothing by itself without a price
    desk.trade("94")
    assert [n.kind for n in fired(desk)] == [ExitKind.STOP_LOSS]


def test_exits_survive_a_restart_and_fire_exactly_once() -> None:
    desk = Desk()
    open_long(desk, stop_loss="95", trailing_distance="4")
    desk.trade("103")
    before = desk.manager.snapshot()
    desk.restart()
    assert desk.manager.snapshot() == before
    desk.trade("99")  # 103 - 4: the trailing stop remembered its best price
    assert [n.kind for n in fired(desk)] == [ExitKind.TRAILING_STOP]
    # Killed again right after the exit was journaled, before its close was submitted.
    desk.journal = [e for e in desk.journal if not _is_close_event(e)]
    rebuilt = desk.restart(same_state=False)
    assert [type(e).__name__ for e in desk.effects[-1:]] == ["SubmitOrder"]
    assert rebuilt.exits.get("s1").state is PlanState.CLOSING  # type: ignore[union-attr]
    desk.trade("90")
    assert len(fired(desk)) == 1
    assert len([r for r in desk.journal if isinstance(r, ExitTriggered)]) == 1
    desk.fill("pm:s1:x1", "90")
    assert desk.position() == 0


def _is_close_event(entry: object) -> bool:
    return getattr(entry, "client_order_id", None) == "pm:s1:x1"

