"""Signals: sized, checked, turned into orders, with exits attached to the position."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from protocol.errors import ErrorCode
from protocol.market import Side
from protocol.orders import OrderType, TimeInForce
from protocol.risk import RiskLimits
from protocol.signals import ExitLevels, Signal, SignalAccepted, SignalRejected
from workers.broker.risk.manager import (
    ClockTick,
    EquityUpdate,
    Journal,
    KillSwitch,
    Notify,
    SignalRequest,
    SubmitCancel,
    SubmitOrder,
)
from workers.broker.risk.records import SignalAdopted, SignalRefused

from .common import ACCOUNT, order
from .desk import Desk

D = Decimal


def signal(sid: str = "s1", **fields: Any) -> SignalRequest:
    body = {"signal_id": sid, "account": ACCOUNT, "instrument": "BTC/USD", **fields}
    return SignalRequest(Signal.model_validate(body), session_id="algo-1", trader_tag=None)


def accepted(desk: Desk) -> SignalAccepted:
    return desk.notices(SignalAccepted)[-1]  # type: ignore[no-any-return]


def rejected(desk: Desk) -> SignalRejected:
    return desk.notices(SignalRejected)[-1]  # type: ignore[no-any-return]


def test_a_long_signal_places_a_market_entry_and_holds_its_exits() -> None:
    desk = Desk()
    desk.trade("100")
    effects = desk.send(signal(direction="long", qty="2", stop_loss="95", take_profit="110"))
    assert [type(e) for e in effects] == [Journal, SubmitOrder, Notify]
    record = effects[0].record  # type: ignore[union-attr]
    assert isinstance(record, SignalAdopted)
    entry = effects[1].order  # type: ignore[union-attr]
    assert (entry.client_order_id, entry.side, entry.qty, entry.order_type,
            entry.time_in_force) == ("pm:s1:e", Side.BUY, D(2), OrderType.MARKET,
                                     TimeInForce.IOC)
    assert effects[1].session_id == "algo-1"  # type: ignore[union-attr]
    notice = accepted(desk)
    assert (notice.target_qty, notice.position_qty, notice.client_order_id, notice.qty) == (
        D(2), D(0), "pm:s1:e", D(2))
    assert notice.exits == ExitLevels(stop_loss=D(95), take_profit=D(110))


def test_an_entry_price_makes_a_gtc_limit_entry() -> None:
    desk = Desk()
    desk.send(signal(direction="short", qty="1", entry_price="101"))
    entry = desk.submitted()[-1]
    assert (entry.side, entry.order_type, entry.price, entry.time_in_force) == (
        Side.SELL, OrderType.LIMIT, D(101), TimeInForce.GTC)


def test_the_target_replaces_the_position() -> None:
    desk = Desk()
    desk.trade("100")
    desk.send(signal("s1", direction="long", qty="1"))
    desk.fill("pm:s1:e", "100")
    desk.send(signal("s2", direction="long", qty="0.4"))
    assert (desk.submitted()[-1].side, desk.submitted()[-1].qty) == (Side.SELL, D("0.6"))
    desk.fill("pm:s2:e", "100")
    desk.send(signal("s3", target_qty="-1"))
    assert (desk.submitted()[-1].side, desk.submitted()[-1].qty) == (Side.SELL, D("1.4"))
    desk.fill("pm:s3:e", "100")
    assert desk.position() == D(-1)
    effects = desk.send(signal("s4", target_qty="-1"))
    assert not [e for e in effects if isinstance(e, SubmitOrder)]  # already there
    assert accepted(desk).client_order_id is None


def test_risk_fraction_sizes_by_the_stop_distance_rounded_down_to_the_lot() -> None:
    desk = Desk()
    desk.trade("100")
    desk.send(EquityUpdate(D("10000")))
    # 1% of 10,000 = 100 at risk; stop 3 below the entry: 33.33… → 33.33 (lot 0.01).
    desk.send(signal(direction="long", risk_fraction="0.01", stop_loss="97"))
    assert desk.submitted()[-1].qty == D("33.33")
    # With a limit entry the distance is from the entry price: 100 / 6 = 16.66.
    desk.send(signal("s2", direction="short", risk_fraction="0.01", stop_loss="106",
                     entry_price="100"))
    assert rejected(desk).code is ErrorCode.CONFLICT  # s1's entry is still working
    desk.fill("pm:s1:e", "100")
    desk.send(signal("s3", direction="short", risk_fraction="0.01", stop_loss="106",
                     entry_price="100"))
    assert desk.submitted()[-1].qty == D("33.33") + D("16.66")  # from +33.33 to -16.66


def test_risk_sizing_needs_equity_a_price_and_enough_size() -> None:
    desk = Desk()
    desk.send(signal("s1", direction="long", risk_fraction="0.01", stop_loss="97"))
    assert (rejected(desk).code, rejected(desk).message) == (
        ErrorCode.RISK_NO_PRICE,
        ("no trade or quote of BTC/USD has been seen yet to size the signal by risk_fraction; "
        "give entry_price or qty"))
    desk.trade("100")
    desk.send(signal("s2", direction="long", risk_fraction="0.01", stop_loss="97"))
    assert (rejected(desk).code, rejected(desk).message) == (
        ErrorCode.RISK_NO_EQUITY,
        ("the account's equity is not known yet, so risk_fraction cannot be turned into a "
        "quantity; give qty"))
    desk.send(EquityUpdate(D("2")))
    desk.send(signal("s3", direction="long", risk_fraction="0.01", stop_loss="97"))
    assert (rejected(desk).code, rejected(desk).message) == (
        ErrorCode.QTY_BELOW_MIN,
        ("risk sizing gives 0 BTC/USD (equity 2.00 × risk_fraction 0.01 / stop distance 3), "
        "below the minimum order 0.01"))


def test_exits_must_sit_on_the_right_side_of_the_entry() -> None:
    desk = Desk()
    desk.trade("100")
    desk.send(signal("s1", direction="long", qty="1", stop_loss="101"))
    assert (rejected(desk).code, rejected(desk).message) == (
        ErrorCode.INVALID_ORDER,
        "stop_loss 101 must be below the entry price 100 of a long signal")
    desk.send(signal("s2", direction="short", qty="1", take_profit="100.5"))
    assert rejected(desk).message == (
        "take_profit 100.5 must be below the entry price 100 of a short signal")


def test_off_lot_sizes_and_unknown_instruments_are_refused() -> None:
    desk = Desk()
    desk.send(signal("s1", direction="long", qty="0.005"))
    assert (rejected(desk).code, rejected(desk).message) == (
        ErrorCode.QTY_OFF_LOT, "qty 0.005 is not a multiple of the lot size 0.01 of BTC/USD")
    desk.send(SignalRequest(Signal.model_validate({
        "signal_id": "s2", "account": ACCOUNT, "instrument": "XRP/USD", "direction": "flat"})))
    assert (rejected(desk).code, rejected(desk).message) == (
        ErrorCode.UNKNOWN_INSTRUMENT, "the venue does not list XRP/USD")


def test_a_signal_is_checked_against_the_limits() -> None:
    desk = Desk(limits=RiskLimits(max_position_qty={"BTC/USD": D("1")}))
    desk.trade("100")
    desk.place(order("c1", qty="0.5"))  # working: the signal's room is what is left
    effects = desk.send(signal("s1", direction="long", qty="0.6"))
    assert not [e for e in effects if isinstance(e, SubmitOrder)]
    assert (rejected(desk).code, rejected(desk).message) == (
        ErrorCode.RISK_POSITION_SIZE,
        "BTC/USD position could reach 1.1 if working orders fill, beyond max_position_qty 1")
    assert desk.manager.exits.active_for("BTC/USD") is None


def test_a_repeated_signal_id_changes_nothing_and_answers_the_same() -> None:
    desk = Desk()
    desk.trade("100")
    desk.send(signal("s1", direction="long", qty="1"))
    first = accepted(desk)
    journal = len(desk.journal)
    effects = desk.send(signal("s1", direction="short", qty="5"))
    assert effects == [Notify(first, "algo-1")]
    assert len(desk.journal) == journal
    desk.send(signal("bad", direction="long", qty="0.001"))
    assert desk.send(signal("bad", direction="long", qty="1")) == [
        Notify(rejected(desk), "algo-1")]


def test_an_expired_signal_is_refused() -> None:
    desk = Desk()
    desk.send(signal("s1", direction="long", qty="1", expires_at=desk.now))
    assert (rejected(desk).code, rejected(desk).message) == (
        ErrorCode.SIGNAL_EXPIRED,
        f"signal s1 expired at {desk.now} ns, before it could be acted on at {desk.now} ns")


def test_the_kill_switch_refuses_signals() -> None:
    desk = Desk()
    desk.send(KillSwitch(True, reason="halt", by="ops"))
    desk.send(signal("s1", direction="long", qty="1"))
    assert (rejected(desk).code, rejected(desk).message) == (
        ErrorCode.KILL_SWITCH,
        ("trading is stopped by the account kill switch (ops: halt); signals are refused until "
        "an operator clears it"))
    assert isinstance(desk.journal[-1], SignalRefused)


def test_a_flat_signal_cancels_working_orders_and_closes_what_is_held() -> None:
    desk = Desk()
    desk.trade("100")
    desk.send(signal("s1", direction="long", qty="2", stop_loss="90"))
    desk.fill("pm:s1:e", "100", qty="1.5")  # the rest of the IOC entry is still working
    desk.place(order("c1", side="sell", qty="0.5", price="120"))
    effects = desk.send(signal("s2", direction="flat"))
    assert [e.client_order_id for e in effects if isinstance(e, SubmitCancel)] == [
        "pm:s1:e", "c1"]
    close = [e.order for e in effects if isinstance(e, SubmitOrder)]
    # 1.5 held, and c1 (sell 0.5) may still fill before its cancel lands: close 1.0 only.
    assert [(o.client_order_id, o.side, o.qty) for o in close] == [
        ("pm:s2:x1", Side.SELL, D("1.0"))]
    desk.fill("pm:s2:x1", "100")
    # c1's cancel was confirmed, so once the first close is done the remaining 0.5 goes.
    desk.send(ClockTick())
    assert desk.submitted()[-1].client_order_id == "pm:s2:x2"
    assert desk.submitted()[-1].qty == D("0.5")
    desk.fill("pm:s2:x2", "100")
    assert desk.position() == 0
    assert desk.manager.exits.active_for("BTC/USD") is None
    assert desk.manager.exits.get("s1").done_reason == "replaced by signal s2"  # type: ignore[union-attr]


def test_a_new_signal_waits_for_an_earlier_entry_still_working() -> None:
    desk = Desk()
    desk.trade("100")
    desk.send(signal("s1", direction="long", qty="1", entry_price="99", stop_loss="90"))
    desk.send(signal("s2", direction="long", qty="3"))
    assert (rejected(desk).code, rejected(desk).message) == (
        ErrorCode.CONFLICT,
        ("entry order pm:s1:e of signal s1 is still working on BTC/USD; wait for it to finish "
        "or send a flat signal"))


def test_a_signal_without_exits_removes_the_earlier_exits() -> None:
    desk = Desk()
    desk.trade("100")
    desk.send(signal("s1", direction="long", qty="1", stop_loss="90"))
    desk.fill("pm:s1:e", "100")
    desk.send(signal("s2", direction="long", qty="2"))
    assert desk.manager.exits.get("s1").done_reason == "replaced by signal s2"  # type: ignore[union-attr]
    desk.fill("pm:s2:e", "100")
    desk.trade("80")
    assert desk.position() == 2  # no stop any more



def test_an_entry_without_exits_also_holds_back_the_next_signal() -> None:
    desk = Desk()
    desk.trade("100")
    desk.send(signal("s1", direction="long", qty="1", entry_price="99"))
    desk.send(signal("s2", direction="long", qty="1"))
    assert rejected(desk).code is ErrorCode.CONFLICT  # else both entries could fill: long 2
    desk.send(signal("s3", direction="flat"))
    assert "pm:s1:e" in desk.cancels()
    desk.send(signal("s4", direction="long", qty="1"))
    assert desk.submitted()[-1].client_order_id == "pm:s4:e"


def test_a_signal_for_another_account_is_answered_without_a_journal() -> None:
    desk = Desk()
    other = Signal.model_validate({"signal_id": "s1", "account": "other",
                                   "instrument": "BTC/USD", "direction": "flat"})
    desk.send(SignalRequest(other, "algo-1"))
    assert rejected(desk).code is ErrorCode.FORBIDDEN
    assert desk.journal == []
