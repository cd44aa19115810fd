"""A real Market worker shell on loopback, a fake Broker behind it, raw WebSocket algos.

The Broker and BrokerManager are test fakes speaking `protocol.link`; the MarketManager is
replaced by minting session tokens directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.market_fakes import (
    SERVICE_TOKEN,
    FakeBroker,
    FakeBrokerManager,
    RawSession,
    RunningMarket,
    point_at_broker_manager,
    running_market,
    session_token,
    snapshot_of,
    wait_for,
)
from tradefleet.service.session_tokens import mint

pytestmark = pytest.mark.timeout(60)


@dataclass
class World:
    manager: FakeBrokerManager
    broker: FakeBroker
    market: RunningMarket
    http: aiohttp.ClientSession
    data_dir: Path

    async def session(self, session_id: str, **kwargs: Any) -> RawSession:
        return await RawSession.open(self.http, self.market, session_id, **kwargs)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    manager = FakeBrokerManager()
    await manager.start()
    broker = FakeBroker(fill_orders=True)
    await broker.start()
    manager.assign("paper-1", broker)
    point_at_broker_manager(tmp_path, manager)
    async with running_market(tmp_path) as market, aiohttp.ClientSession() as http:
        yield World(manager, broker, market, http, tmp_path)
    await broker.stop()
    await manager.stop()


def order(cid: str, **overrides: Any) -> dict[str, Any]:
    base = {"type": "new_order", "client_order_id": cid, "account": "paper-1",
            "instrument": "BTC/USD", "side": "buy", "qty": "0.1", "price": "100.5"}
    base.update(overrides)
    return base


TICKER = {"type": "ticker", "instrument": "BTC/USD", "bid": "100", "bid_qty": "1",
          "ask": "101", "ask_qty": "2", "ts": 1}


async def test_session_tokens_are_checked_before_the_upgrade(world: World) -> None:
    url = world.market.url + "/v1/session"
    expired, _ = mint(SERVICE_TOKEN, "s-1", "acme", "paper-1", 1, now=0)
    forged, _ = mint("not-the-service-token", "s-1", "acme", "paper-1", 60)
    for headers in ({}, {"Authorization": f"Bearer {expired}"},
                    {"Authorization": f"Bearer {forged}"}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await world.http.ws_connect(url, headers=headers)
        assert refused.value.status == 401


async def test_welcome_then_one_upstream_subscription_for_two_sessions(world: World) -> None:
    a, b = await world.session("s-a"), await world.session("s-b")
    welcome = await a.expect("welcome")
    assert welcome["session_id"] == "s-a" and welcome["resumed"] is False
    await b.expect("welcome")
    for client in (a, b):
        await client.send({"type": "subscribe", "instrument": "BTC/USD", "channel": "ticker"})
        await client.expect("subscribed")
    assert len(world.broker.of_type("md_subscribe")) == 1
    await world.broker.push_market(TICKER)
    assert (await a.expect("ticker"))["bid"] == "100"
    assert (await b.expect("ticker"))["ask"] == "101"
    await a.send({"type": "unsubscribe", "instrument": "BTC/USD", "channel": "ticker"})
    await a.expect("unsubscribed")
    await b.close()  # the session lingers (resumable), so its stream stays subscribed upstream
    assert world.broker.of_type("md_unsubscribe") == []


async def test_a_burst_of_market_data_arrives_complete_and_in_order(world: World) -> None:
    a = await world.session("s-a")
    await a.send({"type": "subscribe", "instrument": "BTC/USD", "channel": "trades"})
    await a.expect("subscribed")
    trades = [{"type": "trade", "instrument": "BTC/USD", "trade_id": str(n), "price": "100",
               "qty": "1", "taker_side": "buy", "ts": n} for n in range(2000)]
    for start in range(0, len(trades), 100):
        await world.broker.push_market(*trades[start:start + 100])
    got = [(await a.expect("trade"))["trade_id"] for _ in trades]
    assert got == [t["trade_id"] for t in trades]


@pytest.mark.parametrize(("frame", "code", "field"), [
    (b"{nope", "bad_json", None),
    ({"type": "teleport"}, "unknown_type", "type"),
    (order("neg", qty="-1"), "invalid_field", "qty"),
    (order("zero", qty="0"), "invalid_field", "qty"),
    (order("tick", price="100.3"), "price_off_tick", "price"),
    (order("doge", instrument="DOGE/USD"), "unknown_instrument", "instrument"),
    ({k: v for k, v in order("nop").items() if k != "price"}, "missing_field", "price"),
    ({k: v for k, v in order("noq").items() if k != "qty"}, "missing_field", "qty"),
    (order("theirs", account="paper-2"), "forbidden", "account"),
])
async def test_bad_input_gets_a_coded_error_and_the_connection_stays_up(
    world: World, frame: Any, code: str, field: str | None
) -> None:
    a = await world.session("s-a")
    await a.expect("welcome")
    if isinstance(frame, bytes):
        await a.ws.send_bytes(frame)
    else:
        await a.send(frame)
    error = await a.expect("error")
    assert (error["code"], error.get("field")) == (code, field)
    await a.send({"type": "ping", "ref": "alive"})
    assert (await a.expect("pong"))["ref"] == "alive"
    assert world.broker.of_type("route") == []


async def test_an_oversize_frame_closes_with_1009(world: World) -> None:
    a = await world.session("s-a")
    await a.expect("welcome")
    await a.ws.send_str('{"type":"ping","ref":"' + "x" * 70_000 + '"}')
    assert await a.closed_with() == 1009
    b = await world.session("s-b")  # the worker carries on
    await b.expect("welcome")


async def test_a_flood_gets_an_error_then_a_policy_close(world: World) -> None:
    a = await world.session("s-a")
    await a.expect("welcome")
    # Far more than the burst allows, however slowly this machine sends them.
    with contextlib.suppress(ConnectionError):
        for _ in range(5000):
            if a.ws.closed:
                break
            await a.send({"type": "ping"})
    assert (await a.expect("error"))["code"] == "flood"
    assert await a.closed_with() == 1008


async def test_bursts_of_orders_from_two_sessions_reach_the_broker_complete_and_in_order(
        world: World) -> None:
    # Orders leave from each session's reader when the link is idle and queue behind the
    # link's writer otherwise: neither path may lose or reorder a session's requests.
    a, b = await world.session("s-a"), await world.session("s-b")
    await a.expect("welcome")
    await b.expect("welcome")
    sent: dict[str, list[str]] = {"s-a": [], "s-b": []}
    for i in range(60):
        for session, sid in ((a, "s-a"), (b, "s-b")):
            cid = f"{sid}-{i}"
            sent[sid].append(cid)
            await session.send(order(cid))

    def routed(sid: str) -> list[str]:
        return [m["msg"]["client_order_id"] for m in world.broker.of_type("route")
                if m["session_id"] == sid and m["msg"]["type"] == "new_order"]

    await wait_for(lambda: len(routed("s-a")) == 60 and len(routed("s-b")) == 60,
                   what="every order routed")
    assert routed("s-a") == sent["s-a"] and routed("s-b") == sent["s-b"]


async def test_order_events_in_seq_order_with_a_lost_event_replayed(world: World) -> None:
    a = await world.session("s-a")
    await a.expect("welcome")
    await a.send(order("o-1"))
    accepted = await a.expect("order_accepted")
    filled = await a.expect("order_filled")
    assert (accepted["seq"], filled["seq"]) == (1, 2)
    world.broker.drop_live = True  # seq 3 and 4 never travel live…
    await a.send(order("o-2"))
    await wait_for(lambda: world.broker.journal.last_seq("s-a") == 4, what="o-2 journaled")
    world.broker.drop_live = False
    await a.send(order("o-3"))  # …seq 5 does: the Market sees the gap and asks for a replay
    seqs = [(await a.expect("order_filled"))["seq"] for _ in range(2)]
    seen = [e["seq"] for e in a.seen if "seq" in e]
    assert seen == [1, 2, 3, 4, 5, 6] and seqs == [4, 6]
    assert [r["after_seq"] for r in world.broker.of_type("replay")] == [0, 2]


async def test_resume_replays_what_was_missed_once_and_restores_subscriptions(
    world: World,
) -> None:
    a = await world.session("s-a")
    await a.expect("welcome")
    await a.send({"type": "subscribe", "instrument": "BTC/USD", "channel": "book", "depth": 2})
    await a.expect("subscribed")
    await world.broker.push_market({"type": "book_snapshot", "instrument": "BTC/USD",
                                    "bids": [["100", "1"]], "asks": [["101", "1"]],
                                    "update_id": 1, "ts": 1})
    await a.expect("book_snapshot")
    await a.send(order("o-1"))
    await a.expect("order_filled")
    await a.close()
    # While the algo is away its order events keep coming (journaled by the Broker).
    await world.broker.emit("s-a", snapshot_of(world.broker.journal.orders["o-1"]))
    await wait_for(lambda: world.broker.journal.last_seq("s-a") == 3, what="event journaled")
    b = await world.session("s-a", resume_from_seq=2)
    welcome = await b.expect("welcome")
    assert welcome["resumed"] is True
    assert welcome["subscriptions"] == [{"instrument": "BTC/USD", "channel": "book", "depth": 2}]
    snapshot = await b.expect("book_snapshot")
    assert snapshot["bids"] == [["100", "1"]]
    missed = await b.expect("order_snapshot")
    assert missed["seq"] == 3
    await b.send(order("o-2"))
    assert (await b.expect("order_accepted"))["seq"] == 4
    assert [e.get("seq") for e in b.seen if e.get("seq")] == [3, 4]


async def test_resume_on_another_market_worker(world: World, tmp_path: Path) -> None:
    a = await world.session("s-a")
    await a.expect("welcome")
    await a.send(order("o-1"))
    await a.expect("order_filled")
    await a.close()
    async with running_market(tmp_path, worker_id="market-2") as other:
        b = await RawSession.open(world.http, other, "s-a", resume_from_seq=1)
        welcome = await b.expect("welcome")
        assert welcome["resumed"] is True and welcome["subscriptions"] == []
        assert (await b.expect("order_filled"))["seq"] == 2
        await b.send({"type": "subscribe", "instrument": "BTC/USD", "channel": "ticker"})
        await b.expect("subscribed")
        await b.send(order("o-1"))  # the same client_order_id again: one order, its state
        snapshot = await b.expect("order_snapshot")  # an answer, not an event: no seq
        assert ("seq" not in snapshot, snapshot["status"]) == (True, "filled")
        await b.close()


async def test_a_replaced_broker_gets_subscriptions_and_sessions_back(world: World) -> None:
    a = await world.session("s-a")
    await a.expect("welcome")
    await a.send({"type": "subscribe", "instrument": "BTC/USD", "channel": "ticker"})
    await a.expect("subscribed")
    await a.send(order("o-1"))
    await a.expect("order_filled")
    replacement = FakeBroker(epoch=2, journal=world.broker.journal, broker_id="broker-2",
                             fill_orders=True)
    await replacement.start()
    try:
        world.manager.assign("paper-1", replacement)
        await world.broker.stop()  # kill the old owner: the Market re-learns the address
        await wait_for(lambda: replacement.of_type("md_subscribe"), what="resubscription")
        [replay] = replacement.of_type("replay")
        assert (replay["session_id"], replay["after_seq"]) == ("s-a", 2)
        await replacement.push_market(TICKER)
        await a.expect("ticker")
        await a.send(order("o-2"))
        assert (await a.expect("order_accepted"))["seq"] == 3
        info = world.market.service.info()["links"]["paper-1"]
        assert (info["epoch"], info["broker_id"]) == (2, "broker-2")
    finally:
        await replacement.stop()


async def test_drain_sends_reconnect_and_refuses_new_sessions(world: World) -> None:
    a = await world.session("s-a")
    await a.expect("welcome")
    service = world.market.service
    await service.begin_drain()
    assert (await a.expect("reconnect"))["reason"] == "draining"
    assert service.has_work()
    late = await world.session("s-b")
    assert (await late.expect("error"))["code"] == "draining"
    assert await late.closed_with() == 1013
    await a.close()
    await wait_for(lambda: not service.has_work(), what="sessions gone")
    assert not service.load().accepting


async def test_load_reports_sessions_subscriptions_and_latency(world: World) -> None:
    a = await world.session("s-a")
    await a.expect("welcome")
    await a.send({"type": "subscribe", "instrument": "BTC/USD", "channel": "trades"})
    await a.send(order("o-1"))
    await a.expect("order_filled")
    load = world.market.service.load()
    assert (load.sessions, load.subscriptions) == (1, 1)
    assert load.latency_p50_us is not None and load.latency_p50_us > 0
    assert session_token("x")  # tokens for other tests come from the same secret
