"""The account owner with its position manager: risk refusals, signals, exits, kill switch,
and the manager rebuilt from the journal by the next owner. In-process paper venue, no sockets.
"""

# ruff: noqa: F811  (pytest fixtures imported from test_owner, used as arguments)
from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from protocol.orders import NewOrder, PositionsSnapshot
from protocol.risk import RiskLimits
from tests.unit.broker.test_owner import (  # noqa: F401 - fixtures
    CONFIG,
    Owners,
    counterparty,
    new_order,
    owners,
    types,
    venue,
)
from workers.broker.adapters.paper.adapter import PaperAdapter, PaperVenue
from workers.broker.risk.manager import KillSwitch, LimitsUpdate

D = Decimal


def signal(sid: str, **extra: str) -> dict[str, str]:
    return {"type": "signal", "signal_id": sid, "account": "acct", "instrument": "BTC/USD",
            **extra}


def order(account: str, cid: str, side: str, qty: str, price: str) -> NewOrder:
    return NewOrder(client_order_id=cid, account=account, instrument="BTC/USD", side=side,
                    qty=D(qty), price=D(price))


async def test_a_risk_refusal_is_coded_stamped_with_seq_and_replayed(owners: Owners) -> None:
    owner, outbox = await owners.open(1, limits=RiskLimits(max_order_notional="1000"))
    await owner.route("s1", "cust", new_order("big", qty="1", price="30000"))
    rejected = outbox.order_events()
    assert types(rejected) == ["order_rejected"] and rejected[0]["seq"] == 1
    assert rejected[0]["reason"] == "risk_order_notional"
    assert "max_order_notional 1,000.00" in rejected[0]["message"]
    assert [(k, s, q) for k, s, q, _ in owners.journal() if k == "risk"] == [("risk", "s1", 1)]
    assert owner.book.orders == 0  # the tracker never saw it
    await owner.route("s1", "cust", new_order("ok", qty="0.01", price="30000"))
    await outbox.wait_for(lambda: len(outbox.order_events()) == 2)
    assert outbox.order_events()[1]["seq"] == 2
    # The next owner rebuilds the same books and replays the refusal under its seq.
    await owner.close()
    second, _ = await owners.open(2, limits=RiskLimits(max_order_notional="1000"))
    assert owners.owners[1].book.orders == 1
    replayed = second.replay("s1", 0)
    assert b'"order_rejected"' in replayed and b'"seq":1' in replayed
    assert second.risk is not None and second.risk.orders.get("ok") is not None


async def test_a_signal_enters_and_its_stop_fires_once_without_the_algo(
        owners: Owners, counterparty: PaperAdapter) -> None:
    owner, outbox = await owners.open(1)
    await counterparty.place_order(order("other", "ask", "sell", "1", "30000"))
    await counterparty.place_order(order("other", "bid", "buy", "1", "29400"))
    await owner.route("s1", "cust", signal("sig1", direction="long", qty="0.4",
                                           stop_loss="29300", take_profit="31000"))
    await outbox.wait_for(lambda: "signal_accepted" in types(outbox.events()))
    await outbox.wait_for(lambda: owner.book.positions() == {"BTC/USD": D("0.4")})
    # The best bid falls through the stop, with the algo gone: the exit sells into it.
    await counterparty.cancel_order("bid")
    await counterparty.place_order(order("other", "bid2", "buy", "1", "29000"))
    await outbox.wait_for(lambda: "exit_fired" in types(outbox.events()))
    await outbox.wait_for(lambda: owner.book.positions() == {})
    fired = [e for e in outbox.events() if e["type"] == "exit_fired"]
    assert len(fired) == 1 and fired[0]["kind"] == "stop_loss"
    kinds = [(k, p.get("record") or p.get("type") or p.get("msg", {}).get("type"))
             for k, _, _, p in owners.journal() if k in ("risk", "request", "event")]
    records = [r if isinstance(r, str) else r["record"] for _, r in kinds]
    assert records.index("signal_adopted") < records.index("exit_triggered")
    assert records.count("exit_triggered") == 1
    assert owner.info()["kill_switch"] is None


async def test_kill_switch_cancels_refuses_and_clears(owners: Owners) -> None:
    owner, outbox = await owners.open(1)
    await owner.route("s1", "cust", new_order("c1", qty="0.1", price="31000"))
    await outbox.wait_for(lambda: types(outbox.order_events()) == ["order_accepted"])
    await owner.operator_risk(KillSwitch(active=True, reason="test", by="ops"))
    await outbox.wait_for(lambda: "order_cancelled" in types(outbox.order_events()))
    assert outbox.order_events()[-1]["reason"] == "kill_switch"
    assert owner._cancel_reasons == {}  # told once, then forgotten
    await owner.route("s1", "cust", new_order("c2", qty="0.1", price="31000"))
    assert outbox.order_events()[-1]["reason"] == "kill_switch"
    assert "ops" in owner.info()["kill_switch"]
    # Still on after a failover; then cleared by the operator.
    await owner.close()
    second, outbox2 = await owners.open(2)
    assert second.info()["kill_switch"] is not None
    await second.operator_risk(KillSwitch(active=False, by="ops"))
    await second.operator_risk(LimitsUpdate(RiskLimits(max_open_positions=3)))
    await second.route("s1", "cust", new_order("c3", qty="0.1", price="31000"))
    await outbox2.wait_for(lambda: types(outbox2.order_events()) == ["order_accepted"])
    assert second.info()["limits"]["max_open_positions"] == 3


async def test_two_sessions_of_one_customer_share_the_limits(owners: Owners) -> None:
    limits = RiskLimits(max_position_qty={"BTC/USD": "1"})
    owner, outbox = await owners.open(1, limits=limits)
    await owner.route("s1", "cust", new_order("a1", side="buy", qty="0.8", price="29000"))
    await outbox.wait_for(lambda: types(outbox.order_events("s1")) == ["order_accepted"])
    await owner.route("s2", "cust", new_order("b1", side="buy", qty="0.5", price="29000"))
    refused = outbox.order_events("s2")
    assert types(refused) == ["order_rejected"] and refused[0]["seq"] == 1
    assert refused[0]["reason"] == "risk_position_size"


async def test_signal_answers_and_exits_share_the_session_seq_and_come_back_on_replay(
        owners: Owners, counterparty: PaperAdapter) -> None:
    owner, outbox = await owners.open(1)
    await counterparty.place_order(order("other", "ask", "sell", "1", "30000"))
    await counterparty.place_order(order("other", "bid", "buy", "1", "29400"))
    # Refused by the position manager (the venue lists no ETH/USD): journaled, sequenced.
    await owner.route("s1", "cust", {**signal("sig0", direction="long", qty="1"),
                                     "instrument": "ETH/USD"})
    await owner.route("s1", "cust", signal("sig1", direction="long", qty="0.4",
                                           stop_loss="29300", take_profit="31000"))
    await outbox.wait_for(lambda: owner.book.positions() == {"BTC/USD": D("0.4")})
    entry_filled = max(e["seq"] for e in outbox.order_events())
    await counterparty.cancel_order("bid")
    await counterparty.place_order(order("other", "bid2", "buy", "1", "29000"))
    await outbox.wait_for(lambda: owner.book.positions() == {})
    await outbox.wait_for(lambda: types(outbox.order_events())[-1] == "order_filled")
    live = outbox.order_events()
    assert [e["seq"] for e in live] == list(range(1, len(live) + 1))  # one gap-free run
    assert types(live)[:2] == ["signal_rejected", "signal_accepted"]
    assert live[0]["code"] == "unknown_instrument"
    assert types(live).count("exit_fired") == 1
    fired = next(e for e in live if e["type"] == "exit_fired")
    assert fired["kind"] == "stop_loss" and fired["seq"] > entry_filled
    # A repeated signal is answered with the first outcome, unsequenced (not a new event).
    await owner.route("s1", "cust", signal("sig1", direction="long", qty="0.4",
                                           stop_loss="29300", take_profit="31000"))
    repeat = outbox.events()[-1]
    assert repeat["type"] == "signal_accepted" and "seq" not in repeat
    assert {k: v for k, v in live[1].items() if k != "seq"} == repeat
    # Replay after the entry's fill: the exit and its closing order, nothing earlier.
    replayed = orjson.loads(owner.replay("s1", entry_filled))
    assert replayed["events"] == live[entry_filled:]
    assert replayed["last_seq"] == len(live)
    # A replacement owner (kill -9 of the first) replays the same, from the journal alone.
    await owner.close()
    second, _ = await owners.open(2)
    assert orjson.loads(second.replay("s1", 0))["events"] == live
    assert [(k, s) for k, s, q, p in owners.journal()
            if k == "risk" and p["record"]["record"] == "exit_triggered"] == [("risk", "s1")]


async def test_positions_are_checked_against_the_venue_after_a_reconnect(
        owners: Owners, venue: PaperVenue, counterparty: PaperAdapter) -> None:
    notable: list[dict[str, Any]] = []
    owner, _ = await owners.open(1, on_notable=notable.append)
    assert [p for k, _, _, p in owners.journal() if k == "risk"] == []  # agreed at open
    # While the owner's venue connection is down, someone trades the account outside the
    # platform: the venue's position moves, the fills never reach the position manager.
    owners.adapters[0].drop()
    outsider = PaperAdapter(account="acct", venue=venue)
    await outsider.connect()
    await counterparty.place_order(order("other", "ask", "sell", "1", "30000"))
    await outsider.place_order(order("acct", "outside-1", "buy", "0.3", "30000"))
    await outsider.close()
    owners.adapters[0].restore()
    await asyncio.wait_for(_until(lambda: any(
        p["record"]["record"] == "position_corrected"
        for k, _, _, p in owners.journal() if k == "risk")), 5)
    [corrected] = [p["record"] for k, _, _, p in owners.journal()
                   if k == "risk" and p["record"]["record"] == "position_corrected"]
    assert (corrected["ours_qty"], corrected["venue_qty"]) == ("0", "0.3")
    assert owner.risk is not None and owner.risk.positions.qty("BTC/USD") == D("0.3")
    [event] = [n for n in notable if n["event"] == "position_corrected"]
    assert event["instrument"] == "BTC/USD" and (event["ours"], event["venue"]) == ("0", "0.3")
    assert "0.3" in event["message"]
    # The next owner rebuilds the corrected position from the journal: nothing to correct.
    await owner.close()
    second, _ = await owners.open(2)
    assert second.risk is not None and second.risk.positions.qty("BTC/USD") == D("0.3")
    assert sum(1 for k, _, _, p in owners.journal()
               if k == "risk" and p["record"]["record"] == "position_corrected") == 1


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


async def test_positions_carry_pnl_and_fees_from_the_position_manager(
        tmp_path: Path) -> None:
    # A venue that charges fees: 10 bps taker.
    priced = PaperVenue(CONFIG.model_copy(update={"taker_fee_bps": D(10)}))
    seller = PaperAdapter(account="other", venue=priced)
    await seller.connect()
    made = Owners(tmp_path / "fees" / "acct.sqlite", priced)
    try:
        owner, outbox = await made.open(1)
        await seller.place_order(order("other", "ask", "sell", "1", "30000"))
        await owner.route("s1", "cust", new_order("b1", side="buy", qty="0.5", price="30000"))
        await outbox.wait_for(lambda: owner.book.positions() == {"BTC/USD": D("0.5")})
        await seller.place_order(order("other", "bid", "buy", "1", "30100"))
        await owner.route("s1", "cust", new_order("s1", side="sell", qty="0.2", price="30100"))
        await outbox.wait_for(lambda: owner.book.positions() == {"BTC/USD": D("0.3")})
        await owner.route("s1", "cust", {"type": "get_positions", "account": "acct",
                                         "ref": "p"})
        [answer] = [e for e in outbox.events() if e["type"] == "positions"]
        [btc] = answer["positions"]
        assert (btc["qty"], btc["avg_price"], btc["realized_pnl"]) == ("0.3", "30000", "20")
        assert btc["fees"] == {"USD": "21.02"}  # 10 bps of 15000 and of 6020
        assert "unrealized_pnl" in btc  # a price is known: the book's last trade or quotes
        parsed = PositionsSnapshot.model_validate(answer)
        assert parsed.positions[0].fees == {"USD": D("21.02")}
        assert owner.info()["position_pnl"]["BTC/USD"]["fees"] == {"USD": "21.02"}
    finally:
        for made_owner in made.owners:
            await made_owner.close()
        await seller.close()


async def test_a_sessions_trader_tag_brings_the_tags_limits(owners: Owners) -> None:
    limits = RiskLimits(trader_tags={"scalper": {"max_order_notional": "1000"}})
    owner, outbox = await owners.open(1, limits=limits)
    await owner.route("s1", "cust", {**new_order("t1", qty="0.1", price="31000"),
                                     "trader_tag": "scalper"})
    [refused] = outbox.order_events("s1")
    assert refused["type"] == "order_rejected" and refused["reason"] == "risk_order_notional"
    assert "trader tag scalper" in refused["message"]
    [(record, tag)] = [(p["record"]["record"], p["record"]["trader_tag"])
                       for k, _, _, p in owners.journal() if k == "risk"]
    assert (record, tag) == ("order_refused", "scalper")
    await owner.route("s2", "cust", new_order("u1", qty="0.1", price="31000"))
    await outbox.wait_for(lambda: types(outbox.order_events("s2")) == ["order_accepted"])
    # A malformed tag from a Market is refused, coded, and nothing is journaled.
    await owner.route("s1", "cust", {**new_order("t2"), "trader_tag": "no spaces"})
    error = outbox.events("s1")[-1]
    assert (error["type"], error["code"], error["field"]) == ("error", "invalid_field",
                                                              "trader_tag")
