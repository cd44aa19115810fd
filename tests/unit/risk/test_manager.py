"""The position manager's contract: journal first, coded refusals, kill switch, hot limits,
idempotency, and a state rebuilt exactly from the journal."""

from __future__ import annotations

from decimal import Decimal

import orjson

from protocol.errors import ErrorCode
from protocol.orders import (
    CancelReason,
    ModifyOrder,
    OrderModified,
    OrderRejected,
    OrderSnapshot,
    OrderStatus,
)
from protocol.risk import RiskLimits
from workers.broker.orders import VenueRefused
from workers.broker.risk.manager import (
    Journal,
    KillSwitch,
    LimitsUpdate,
    ModifyRequest,
    Notify,
    OrderRequest,
    PositionManager,
    RefuseRequest,
    SubmitCancel,
    SubmitModify,
    SubmitOrder,
)
from workers.broker.risk.records import (
    RISK_RECORD,
    KillScope,
    KillSwitchChanged,
    LimitsChanged,
    OrderAdmitted,
    OrderRefused,
)

from .common import ACCOUNT, SECOND, SPECS, order
from .desk import Desk

D = Decimal


def test_an_accepted_order_is_journaled_before_it_is_submitted() -> None:
    desk = Desk()
    effects = desk.place(order("c1"))
    assert [type(e) for e in effects] == [Journal, SubmitOrder]
    assert isinstance(effects[0].record, OrderAdmitted)  # type: ignore[union-attr]
    assert desk.working() == ["c1"]


def test_a_refused_order_gets_a_coded_order_rejected_and_nothing_is_placed() -> None:
    desk = Desk(limits=RiskLimits(max_order_notional=D("10000")))
    effects = desk.place(order("c1", qty="125"))
    assert [type(e) for e in effects] == [Journal, Notify]
    assert isinstance(effects[0].record, OrderRefused)  # type: ignore[union-attr]
    rejection = effects[1].message  # type: ignore[union-attr]
    assert isinstance(rejection, OrderRejected)
    assert (rejection.reason, rejection.message, rejection.status, rejection.qty) == (
        ErrorCode.RISK_ORDER_NOTIONAL,
        "order notional 12,500.00 USD exceeds max_order_notional 10,000.00",
        OrderStatus.REJECTED, D(125))
    assert effects[1].session_id == "s1"  # type: ignore[union-attr]
    assert desk.working() == []
    # The id stays taken: a resend is answered with the order's (rejected) state.
    again = desk.place(order("c1", qty="1"))
    assert [type(e) for e in again] == [Notify]
    snapshot = again[0].message  # type: ignore[union-attr]
    assert isinstance(snapshot, OrderSnapshot) and snapshot.status is OrderStatus.REJECTED


def test_a_resent_accepted_order_goes_to_the_tracker_unchecked() -> None:
    desk = Desk(limits=RiskLimits(max_position_qty={"BTC/USD": D("1")}))
    desk.place(order("c1", qty="1"))
    assert desk.place(order("c1", qty="1")) == [SubmitOrder(order("c1", qty="1"), "s1")]
    assert len([r for r in desk.journal if isinstance(r, OrderAdmitted)]) == 1


def test_requests_that_are_not_for_this_manager_are_refused_without_a_journal() -> None:
    desk = Desk()
    [refusal] = desk.place(order("pm:s1:e"))
    assert refusal == RefuseRequest(
        "pm:s1:e", ErrorCode.INVALID_ORDER,
        "client_order_id prefix 'pm:' is reserved for the position manager's own orders", "s1")
    [refusal] = desk.place(order("c1", account="other"))
    assert isinstance(refusal, RefuseRequest) and refusal.code is ErrorCode.FORBIDDEN
    assert desk.journal == []


def test_two_algos_on_one_account_share_the_limits() -> None:
    desk = Desk(limits=RiskLimits(max_position_qty={"BTC/USD": D("1")}))
    assert isinstance(desk.send(OrderRequest(order("a1", qty="0.7"), "algo-a"))[1], SubmitOrder)
    effects = desk.send(OrderRequest(order("b1", qty="0.7"), "algo-b"))
    assert effects[1].message.reason is ErrorCode.RISK_POSITION_SIZE  # type: ignore[union-attr]
    assert effects[1].session_id == "algo-b"  # type: ignore[union-attr]
    desk.cancel_ack("a1")
    assert isinstance(desk.send(OrderRequest(order("b2", qty="0.7"), "algo-b"))[1], SubmitOrder)


def test_kill_switch_cancels_every_working_order_and_refuses_new_ones() -> None:
    desk = Desk()
    desk.place(order("c1"))
    desk.place(order("c2", side="sell", price="101"))
    desk.fill("c2", "101", qty="0.5")
    effects = desk.send(KillSwitch(True, reason="runaway algo", by="alice"))
    assert effects == [
        Journal(KillSwitchChanged(scope=KillScope.ACCOUNT, active=True, reason="runaway algo",
                                  by="alice", at=desk.now)),
        SubmitCancel("c1", CancelReason.KILL_SWITCH),
        SubmitCancel("c2", CancelReason.KILL_SWITCH),
    ]
    assert desk.working() == []
    effects = desk.place(order("c3", side="sell"))
    assert effects[1].message.reason is ErrorCode.KILL_SWITCH  # type: ignore[union-attr]
    assert effects[1].message.message == (  # type: ignore[union-attr]
        "trading is stopped by the account kill switch (alice: runaway algo); new orders are "
        "refused until an operator clears it")
    assert desk.send(KillSwitch(True, reason="runaway algo", by="alice")) == []  # no change
    desk.send(KillSwitch(False))
    assert isinstance(desk.place(order("c4"))[1], SubmitOrder)


def test_the_fleet_switch_and_the_account_switch_are_cleared_separately() -> None:
    desk = Desk()
    desk.send(KillSwitch(True, KillScope.FLEET, reason="exchange incident", by="ops"))
    desk.send(KillSwitch(True, KillScope.ACCOUNT, reason="audit", by="risk"))
    assert desk.manager.kill_switch == "the fleet-wide kill switch (ops: exchange incident)"
    desk.send(KillSwitch(False, KillScope.FLEET))
    assert desk.manager.kill_switch == "the account kill switch (risk: audit)"
    assert desk.place(order("c1"))[1].message.reason is ErrorCode.KILL_SWITCH  # type: ignore[union-attr]
    assert desk.send(KillSwitch(False, KillScope.FLEET)) == []
    desk.send(KillSwitch(False, KillScope.ACCOUNT))
    assert desk.manager.kill_switch is None
    assert isinstance(desk.place(order("c2"))[1], SubmitOrder)


def test_limits_change_hot_and_are_journaled() -> None:
    desk = Desk()
    assert isinstance(desk.place(order("c1", qty="5"))[1], SubmitOrder)
    tight = RiskLimits(max_order_notional=D("100"))
    [journal] = desk.send(LimitsUpdate(tight))
    assert journal == Journal(LimitsChanged(limits=tight, at=desk.now))
    assert desk.send(LimitsUpdate(RiskLimits(max_order_notional=D("100")))) == []
    assert desk.place(order("c2", qty="5"))[1].message.reason is (  # type: ignore[union-attr]
        ErrorCode.RISK_ORDER_NOTIONAL)


def test_the_order_rate_counts_admitted_orders_in_the_window() -> None:
    desk = Desk(limits=RiskLimits.model_validate(
        {"max_order_rate": {"max_orders": 2, "window_seconds": "1"}}))
    assert isinstance(desk.place(order("c1"))[1], SubmitOrder)
    assert isinstance(desk.place(order("c2"))[1], SubmitOrder)
    assert desk.place(order("c3"))[1].message.reason is ErrorCode.RISK_ORDER_RATE  # type: ignore[union-attr]
    desk.advance(1)
    assert isinstance(desk.place(order("c4"))[1], SubmitOrder)


def test_the_order_rate_forgets_old_admissions_and_survives_a_clock_step_back() -> None:
    desk = Desk(limits=RiskLimits.model_validate(
        {"max_order_rate": {"max_orders": 2, "window_seconds": "1"}}))
    for i in range(50):  # a long history, spread out: none of it counts a minute later
        assert isinstance(desk.place(order(f"old{i}"))[1], SubmitOrder)
        desk.advance(1.5)
    desk.advance(60)
    assert isinstance(desk.place(order("c1"))[1], SubmitOrder)
    assert list(desk.manager.view(desk.now).admitted_at) == [desk.now]  # the rest forgotten
    desk.advance(-0.5)  # the wall clock stepped back: the window still sees both
    assert isinstance(desk.place(order("c2"))[1], SubmitOrder)
    assert list(desk.manager.view(desk.now).admitted_at) == [desk.now, desk.now + SECOND // 2]
    assert desk.place(order("c3"))[1].message.reason is ErrorCode.RISK_ORDER_RATE  # type: ignore[union-attr]


def test_a_modify_is_checked_and_counts_at_both_sizes_until_the_venue_answers() -> None:
    desk = Desk(limits=RiskLimits(max_position_qty={"BTC/USD": D("3")}))
    desk.place(order("c1", qty="1"))
    bigger = ModifyOrder(client_order_id="c1", account=ACCOUNT, qty=D(2))
    effects = desk.send(ModifyRequest(bigger, "s1"))
    assert effects[1:] == [SubmitModify(bigger)]
    # Until the venue answers, both 1 and 2 are possible: room for 1 more, not 1.01.
    assert desk.place(order("c2", qty="1.01"))[1].message.reason is (  # type: ignore[union-attr]
        ErrorCode.RISK_POSITION_SIZE)
    desk.send(VenueRefused("c1", "modify", ErrorCode.ORDER_NOT_MODIFIABLE, "no"))
    assert isinstance(desk.place(order("c3", qty="1.01"))[1], SubmitOrder)
    too_big = ModifyOrder(client_order_id="c1", account=ACCOUNT, qty=D(3))
    [_journal, refusal] = desk.send(ModifyRequest(too_big, "s1"))
    assert refusal == RefuseRequest(
        "c1", ErrorCode.RISK_POSITION_SIZE,
        "BTC/USD position could reach 4.01 if working orders fill, beyond max_position_qty 3",
        "s1")


def test_a_confirmed_modify_replaces_the_old_size() -> None:
    desk = Desk(limits=RiskLimits(max_position_qty={"BTC/USD": D("3")}))
    desk.place(order("c1", qty="2"))
    desk.send(ModifyRequest(ModifyOrder(client_order_id="c1", account=ACCOUNT, qty=D(1)), "s1"))
    # Both sizes count until the venue answers: 2 + 2 would be too many.
    assert desk.place(order("c2", qty="2"))[1].message.reason is (  # type: ignore[union-attr]
        ErrorCode.RISK_POSITION_SIZE)
    snap = desk.tracker.get("c1")
    assert snap is not None
    desk.venue(OrderModified(**{**snap.model_dump(exclude={"type", "seq", "avg_price"}),
                                "qty": D(1), "remaining_qty": D(1), "status": "accepted"}))
    assert isinstance(desk.place(order("c3", qty="2"))[1], SubmitOrder)


def test_replaying_the_journal_rebuilds_the_same_state() -> None:
    desk = Desk(limits=RiskLimits(max_position_qty={"BTC/USD": D("10")}))
    desk.trade("100")
    desk.place(order("c1", qty="2"))
    desk.fill("c1", "100", qty="1", fee="0.1")
    desk.place(order("c2", side="sell", qty="5", price="101"))
    desk.place(order("c3", qty="20"))  # refused
    desk.send(LimitsUpdate(RiskLimits(max_position_qty={"BTC/USD": D("9")})))
    desk.send(KillSwitch(True, reason="check", by="ops"))
    desk.send(KillSwitch(False))
    state = desk.manager.snapshot()
    rebuilt = PositionManager(ACCOUNT, RiskLimits(max_position_qty={"BTC/USD": D("10")}), SPECS)
    for entry in desk.journal:
        rebuilt.replay(entry)
    assert rebuilt.snapshot() == state
    assert PositionManager.restore(orjson.loads(orjson.dumps(state)), SPECS).snapshot() == state


def test_records_survive_their_json_form() -> None:
    desk = Desk(limits=RiskLimits(allowed_instruments=frozenset({"BTC/USD", "ETH/USD"})))
    desk.place(order("c1"))
    desk.send(LimitsUpdate(RiskLimits(max_order_notional=D("5"))))
    desk.place(order("c2"))
    for record in desk.journal:
        if isinstance(record, OrderAdmitted | OrderRefused | LimitsChanged):
            wire = orjson.loads(orjson.dumps(record.model_dump(mode="json")))
            assert RISK_RECORD.validate_python(wire) == record


def test_resume_resubmits_orders_the_tracker_never_reported_on() -> None:
    desk = Desk()
    desk.place(order("c1"))
    desk.place(order("c2"))
    # Killed after c2's admission was journaled, before the tracker heard of it.
    desk.journal = [e for e in desk.journal if getattr(e, "client_order_id", None) != "c2"]
    manager = PositionManager(ACCOUNT, RiskLimits(), SPECS)
    for entry in desk.journal:
        manager.replay(entry)
    assert manager.resume(desk.now) == [SubmitOrder(order("c2"), "s1")]


def test_resume_cancels_again_while_a_kill_switch_is_on() -> None:
    desk = Desk(auto_cancel=False)
    desk.place(order("c1"))
    desk.send(KillSwitch(True, reason="x", by="ops"))
    manager = PositionManager(ACCOUNT, RiskLimits(), SPECS)
    for entry in desk.journal:
        manager.replay(entry)
    assert manager.resume(desk.now) == [SubmitCancel("c1", CancelReason.KILL_SWITCH)]
