"""The position manager keeps a bounded number of finished orders: older ones leave only their
client_order_id, which stays taken, and the state rebuilt from the journal is the same."""

from __future__ import annotations

import orjson
import pytest

from protocol.errors import ErrorCode
from protocol.risk import RiskLimits
from protocol.signals import SignalRejected
from workers.broker.risk.manager import (
    Journal,
    Notify,
    OrderRequest,
    PositionManager,
    RefuseRequest,
)
from workers.broker.risk.working import OrderLedger

from .common import ACCOUNT, SPECS, order
from .desk import Desk
from .test_signals import signal

pytestmark = pytest.mark.timeout(10)


def test_finished_orders_past_the_limit_leave_only_their_ids() -> None:
    desk = Desk(retain_finished=2)
    desk.place(order("open"))  # stays open throughout: never let go
    for cid in ("c1", "c2", "c3"):
        desk.place(order(cid))
        desk.send(OrderRequest(order(cid), session_id="s1"))  # a repeat while kept: no change
    desk.fill("c1", "100")
    desk.cancel_ack("c2")
    desk.fill("c3", "100")
    ledger = desk.manager.orders
    assert ledger.get("c1") is None and ledger.request_of("c1") is None
    assert ledger.retired("c1")
    assert ledger.get("c2") is not None and ledger.get("c3") is not None
    kept_open = ledger.get("open")
    assert kept_open is not None and kept_open.is_working
    # The fills still count: the position is two orders' worth.
    assert desk.position() == 2
    desk.restart()  # rebuilt from the journal: the same kept orders, the same retired ids


def test_a_retired_id_is_refused_and_nothing_is_admitted() -> None:
    desk = Desk(retain_finished=1)
    for cid in ("c1", "c2"):
        desk.place(order(cid))
        desk.fill(cid, "100")
    effects = desk.send(OrderRequest(order("c1"), session_id="s1"))
    refusal = effects[0]
    assert isinstance(refusal, RefuseRequest)
    assert effects == [RefuseRequest("c1", ErrorCode.DUPLICATE_ORDER, refusal.message, "s1")]
    assert "finished long ago" in refusal.message
    assert not any(isinstance(e, Journal) for e in effects)
    assert [o.client_order_id for o in desk.manager.orders.working()] == []


def test_refusals_are_bounded_and_a_forgotten_refused_id_stays_taken() -> None:
    desk = Desk(limits=RiskLimits(allowed_instruments=["ETH/USD"]), retain_finished=2)
    for cid in ("r1", "r2", "r3"):
        desk.place(order(cid))  # BTC/USD is not allowed: refused by the manager
    snapshot = desk.manager.snapshot()
    assert sorted(snapshot["refused"]) == ["r2", "r3"]
    assert snapshot["orders"]["forgotten"] == ["r1"]
    again = desk.place(order("r1"))
    assert [type(e) for e in again] == [RefuseRequest]
    assert again[0].code is ErrorCode.DUPLICATE_ORDER  # type: ignore[union-attr]
    desk.restart()


def test_the_retained_state_survives_snapshot_and_restore() -> None:
    desk = Desk(retain_finished=2)
    for cid in ("c1", "c2", "c3", "c4"):
        desk.place(order(cid))
    for cid in ("c1", "c2", "c3"):
        desk.fill(cid, "100")
    state = desk.manager.snapshot()
    assert state["orders"]["finished"] == ["c2", "c3"]
    assert state["orders"]["forgotten"] == ["c1"]
    restored = PositionManager.restore(orjson.loads(orjson.dumps(state)), SPECS)
    assert restored.snapshot() == state
    assert restored.orders.retired("c1")
    desk.manager = restored
    desk.fill("c4", "100")  # the fourth to finish lets the second go, as without a restore
    assert desk.manager.orders.retired("c2")
    assert PositionManager(ACCOUNT, RiskLimits(), SPECS).snapshot()["orders"]["retain_finished"] \
        == OrderLedger().snapshot()["retain_finished"]


def test_the_limit_must_keep_at_least_one_order() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        OrderLedger(0)


def test_answered_signals_are_bounded_and_a_forgotten_signal_id_stays_taken() -> None:
    desk = Desk(retain_finished=2)
    desk.quote("29990", "30010")
    for sid in ("g1", "g2", "g3"):  # refused (no equity to size from) or adopted: both count
        desk.send(signal(sid, direction="long", qty="0.1"))
    state = desk.manager.snapshot()
    assert sorted(state["signals"]) == ["g2", "g3"]
    assert state["signal_retention"]["forgotten"] == ["g1"]
    again = desk.send(signal("g3", direction="long", qty="0.1"))  # kept: the same answer again
    assert [type(e) for e in again] == [Notify]
    forgotten = desk.send(signal("g1", direction="long", qty="0.1"))
    assert len(forgotten) == 1 and isinstance(forgotten[0], Notify)
    rejected = forgotten[0].message
    assert isinstance(rejected, SignalRejected) and rejected.code is ErrorCode.DUPLICATE_SIGNAL
    assert "answered long ago" in rejected.message
    restored = PositionManager.restore(orjson.loads(orjson.dumps(state)), SPECS)
    assert restored.snapshot() == state
    desk.restart()  # rebuilt from the journal: the same kept signals, the same forgotten ids
