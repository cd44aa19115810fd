"""The Market session core without sockets: sessions, fan-out, routing, resume, bad input."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import orjson
import pytest

from protocol.link import LinkWelcome
from protocol.market import InstrumentSpec
from tradefleet.service.session_tokens import SessionClaims
from workers.market.core import CLOSE_POLICY, CLOSE_TRY_AGAIN, Connection, MarketCore
from workers.market.settings import MarketSettings

ACCOUNT = "paper-1"
SPEC = InstrumentSpec(instrument="BTC/USD", tick_size=Decimal("0.5"), lot_size=Decimal("0.01"),
                      min_qty=Decimal("0.01"))
WELCOME = LinkWelcome(account=ACCOUNT, broker_id="b-1", epoch=1, instruments=[SPEC])
GRANT = 1_700_000_000_000  # when the harness's session tokens were minted (ms)


def frame(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def read(conn: Connection) -> list[dict[str, Any]]:
    out = [orjson.loads(f) for f in conn.outbox]
    conn.outbox.clear()
    return out


def link_frames(core: MarketCore, account: str = ACCOUNT) -> list[dict[str, Any]]:
    return [orjson.loads(f) for f in core.take_link_frames().get(account, [])]


class Harness:
    def __init__(self, settings: MarketSettings | None = None, link_up: bool = True) -> None:
        self.core = MarketCore("market-1", settings)
        self.now = 100.0
        if link_up:
            self.core.link_up(ACCOUNT, WELCOME)
            self.core.take_link_frames()

    def session(self, session_id: str, resume_from_seq: int | None = None,
                account: str = ACCOUNT, customer: str = "acme") -> Connection:
        conn = self.core.connect(
            SessionClaims(session_id, customer, account, 2**40, issued_ms=GRANT), self.now)
        hello: dict[str, Any] = {"type": "hello", "session_id": session_id}
        if resume_from_seq is not None:
            hello["resume_from_seq"] = resume_from_seq
        self.core.receive(conn.conn_id, orjson.dumps(hello), self.now)
        return conn

    def send(self, conn: Connection, **fields: Any) -> list[dict[str, Any]]:
        self.core.receive(conn.conn_id, frame(**fields), self.now)
        return read(conn)

    def from_broker(self, **fields: Any) -> None:
        self.core.link_frame(ACCOUNT, frame(**fields), self.now)


def order(**overrides: Any) -> dict[str, Any]:
    base = {"type": "new_order", "client_order_id": "o-1", "account": ACCOUNT,
            "instrument": "BTC/USD", "side": "buy", "order_type": "limit", "qty": "0.1",
            "price": "100.5"}
    base.update(overrides)
    return base


def order_event(seq: int, cid: str = "o-1", kind: str = "order_accepted") -> dict[str, Any]:
    return {"type": kind, "account": ACCOUNT, "client_order_id": cid, "instrument": "BTC/USD",
            "side": "buy", "order_type": "limit", "qty": "1", "price": "100", "time_in_force":
            "GTC", "status": "accepted", "filled_qty": "0", "remaining_qty": "1", "seq": seq,
            "ts": 1}


# ---------------------------------------------------------------- hello


def test_hello_gets_a_welcome_and_registers_the_session_with_the_broker() -> None:
    h = Harness()
    conn = h.session("s-1")
    [welcome] = read(conn)
    assert welcome == {"type": "welcome", "session_id": "s-1", "protocol": "1.0",
                       "resumed": False, "last_seq": 0, "subscriptions": []}
    assert link_frames(h.core) == [{"type": "replay", "session_id": "s-1", "after_seq": 0,
                                    "grant": GRANT}]


def test_first_frame_must_be_a_hello_for_the_tokens_session() -> None:
    h = Harness()
    conn = h.core.connect(SessionClaims("s-1", "acme", ACCOUNT, 2**40), h.now)
    h.core.receive(conn.conn_id, frame(type="hello", session_id="s-2"), h.now)
    [error] = read(conn)
    assert error["code"] == "forbidden" and conn.closing == (CLOSE_POLICY, "forbidden")
    other = h.core.connect(SessionClaims("s-1", "acme", ACCOUNT, 2**40), h.now)
    h.core.receive(other.conn_id, frame(type="ping"), h.now)
    assert read(other)[0]["field"] == "type" and other.closing is not None


def test_a_second_connection_of_a_session_supersedes_the_first() -> None:
    h = Harness()
    first = h.session("s-1")
    second = h.session("s-1", resume_from_seq=0)
    assert first.closing is not None and first.closing[1].startswith("superseded")
    assert read(second)[0]["resumed"] is True


# ---------------------------------------------------------------- subscriptions & fan-out


def test_two_sessions_one_upstream_subscription_and_one_encoding() -> None:
    h = Harness()
    a, b = h.session("s-a"), h.session("s-b")
    h.core.take_link_frames()
    read(a), read(b)
    assert h.send(a, type="subscribe", instrument="BTC/USD", channel="ticker", ref="r1") == [
        {"type": "subscribed", "instrument": "BTC/USD", "channel": "ticker", "ref": "r1"}]
    h.send(b, type="subscribe", instrument="BTC/USD", channel="ticker")
    assert link_frames(h.core) == [
        {"type": "md_subscribe", "stream": {"instrument": "BTC/USD", "channel": "ticker"}}]
    ticker = {"type": "ticker", "instrument": "BTC/USD", "bid": "100", "ask": "101", "ts": 5}
    h.from_broker(type="market", events=[ticker])
    assert a.outbox == b.outbox and a.outbox[0] is b.outbox[0]  # encoded once, shared
    read(a), read(b)
    h.send(a, type="unsubscribe", instrument="BTC/USD", channel="ticker")
    assert link_frames(h.core) == []
    h.send(b, type="unsubscribe", instrument="BTC/USD", channel="ticker")
    assert link_frames(h.core) == [
        {"type": "md_unsubscribe", "stream": {"instrument": "BTC/USD", "channel": "ticker"}}]


def test_a_late_subscriber_gets_the_last_ticker_and_the_book_as_it_is() -> None:
    h = Harness()
    a, b = h.session("s-a"), h.session("s-b")
    read(a), read(b)
    h.send(a, type="subscribe", instrument="BTC/USD", channel="ticker")
    h.send(a, type="subscribe", instrument="BTC/USD", channel="book", depth=2)
    h.from_broker(type="market", events=[
        {"type": "ticker", "instrument": "BTC/USD", "bid": "100", "ts": 5},
        {"type": "book_snapshot", "instrument": "BTC/USD", "bids": [["100", "1"], ["99", "1"]],
         "asks": [["101", "1"]], "update_id": 7, "ts": 5}])
    assert [e["type"] for e in read(a)] == ["ticker", "book_snapshot"]
    got = h.send(b, type="subscribe", instrument="BTC/USD", channel="book", depth=2)
    assert [e["type"] for e in got] == ["subscribed", "book_snapshot"]
    assert got[1]["bids"] == [["100", "1"], ["99", "1"]] and got[1]["update_id"] == 1
    assert h.send(b, type="subscribe", instrument="BTC/USD", channel="ticker")[1]["bid"] == "100"


def test_book_depths_are_views_of_one_upstream_book() -> None:
    h = Harness()
    shallow, deep = h.session("s-a"), h.session("s-b")
    read(shallow), read(deep)
    h.core.take_link_frames()
    h.send(shallow, type="subscribe", instrument="BTC/USD", channel="book", depth=1)
    h.send(deep, type="subscribe", instrument="BTC/USD", channel="book", depth=3)
    assert [(f["type"], f["stream"]["depth"]) for f in link_frames(h.core)] == [
        ("md_subscribe", 1), ("md_unsubscribe", 1), ("md_subscribe", 3)]
    # A delta of the old (depth 1) stream still in flight is ignored until the new snapshot.
    h.from_broker(type="market", events=[{"type": "book_delta", "instrument": "BTC/USD",
                                          "bids": [["100", "9"]], "update_id": 2, "ts": 1}])
    assert shallow.outbox == [] and deep.outbox == []
    h.from_broker(type="market", events=[{
        "type": "book_snapshot", "instrument": "BTC/USD", "update_id": 1, "ts": 1,
        "bids": [["100", "1"], ["99", "2"], ["98", "3"]], "asks": [["101", "1"]]}])
    assert read(shallow)[0]["bids"] == [["100", "1"]]
    assert len(read(deep)[0]["bids"]) == 3
    h.from_broker(type="market", events=[{"type": "book_delta", "instrument": "BTC/USD",
                                          "bids": [["98", "5"]], "update_id": 2, "ts": 2}])
    assert shallow.outbox == []  # below its depth
    assert read(deep) == [{"type": "book_delta", "instrument": "BTC/USD", "bids": [["98", "5"]],
                           "asks": [], "update_id": 2, "ts": 2}]


def test_a_shallower_late_subscriber_joins_a_live_deeper_book_at_once() -> None:
    # Regression: a depth that needed no upstream change used to get no view, so it got no
    # snapshot and every later book event for the instrument was dropped for everyone.
    h = Harness()
    deep, shallow = h.session("s-a"), h.session("s-b")
    read(deep), read(shallow)
    h.send(deep, type="subscribe", instrument="BTC/USD", channel="book", depth=3)
    h.from_broker(type="market", events=[{
        "type": "book_snapshot", "instrument": "BTC/USD", "update_id": 1, "ts": 1,
        "bids": [["100", "1"], ["99", "2"], ["98", "3"]], "asks": [["101", "1"]]}])
    read(deep)
    h.core.take_link_frames()
    got = h.send(shallow, type="subscribe", instrument="BTC/USD", channel="book", depth=1)
    assert [e["type"] for e in got] == ["subscribed", "book_snapshot"]
    assert got[1]["bids"] == [["100", "1"]]
    assert link_frames(h.core) == []  # the deeper upstream book already covers it
    h.from_broker(type="market", events=[{"type": "book_delta", "instrument": "BTC/USD",
                                          "bids": [["100", "4"]], "update_id": 2, "ts": 2}])
    assert read(shallow)[0]["bids"] == [["100", "4"]]
    assert read(deep)[0]["bids"] == [["100", "4"]]


def test_a_missed_book_delta_resubscribes_and_resnapshots() -> None:
    h = Harness()
    a = h.session("s-a")
    read(a)
    h.send(a, type="subscribe", instrument="BTC/USD", channel="book", depth=2)
    h.core.take_link_frames()
    h.from_broker(type="market", events=[{
        "type": "book_snapshot", "instrument": "BTC/USD", "update_id": 1, "ts": 1,
        "bids": [["100", "1"]], "asks": [["101", "1"]]}])
    read(a)
    h.from_broker(type="market", events=[{"type": "book_delta", "instrument": "BTC/USD",
                                          "bids": [["100", "2"]], "update_id": 3, "ts": 2}])
    assert [f["type"] for f in link_frames(h.core)] == ["md_unsubscribe", "md_subscribe"]
    assert a.outbox == []


def test_subscribing_to_an_unknown_instrument_is_refused() -> None:
    h = Harness()
    a = h.session("s-a")
    read(a)
    [error] = h.send(a, type="subscribe", instrument="DOGE/USD", channel="ticker", ref="x")
    assert (error["code"], error["field"], error["ref"]) == ("unknown_instrument", "instrument",
                                                             "x")


# ---------------------------------------------------------------- orders and seq


def test_orders_are_routed_and_events_delivered_in_seq_order_once() -> None:
    h = Harness()
    a = h.session("s-a")
    read(a)
    h.core.take_link_frames()
    h.from_broker(type="replayed", session_id="s-a", last_seq=0, events=[])  # the hello's
    assert h.send(a, **order()) == []
    [route] = link_frames(h.core)
    assert route["type"] == "route" and route["session_id"] == "s-a"
    assert route["customer"] == "acme" and route["msg"]["client_order_id"] == "o-1"
    assert route["grant"] == GRANT  # the Broker sends the session's events to its latest grant
    h.from_broker(type="session_event", session_id="s-a", event=order_event(1))
    h.from_broker(type="session_event", session_id="s-a", event=order_event(1))  # duplicate
    h.from_broker(type="session_event", session_id="s-a", event=order_event(3))  # gap
    assert [e["seq"] for e in read(a)] == [1]
    assert link_frames(h.core) == [{"type": "replay", "session_id": "s-a", "after_seq": 1,
                                    "grant": GRANT}]
    h.from_broker(type="replayed", session_id="s-a", last_seq=3,
                  events=[order_event(2), order_event(3)])
    assert [e["seq"] for e in read(a)] == [2, 3]
    assert h.core.latency.percentile(0.5) is not None


def test_answers_without_seq_go_straight_through() -> None:
    h = Harness()
    a = h.session("s-a")
    read(a)
    h.send(a, type="get_positions", account=ACCOUNT, ref="p")
    positions = {"type": "positions", "account": ACCOUNT, "positions": [], "ref": "p", "ts": 1}
    h.from_broker(type="session_event", session_id="s-a", event=positions)
    assert read(a) == [positions]


def test_resume_on_another_market_replays_and_restores_nothing_it_never_had() -> None:
    h = Harness()
    a = h.session("s-a", resume_from_seq=4)
    [welcome] = read(a)
    assert welcome["resumed"] is True and welcome["last_seq"] == 4
    assert link_frames(h.core) == [{"type": "replay", "session_id": "s-a", "after_seq": 4,
                                    "grant": GRANT}]
    h.from_broker(type="replayed", session_id="s-a", last_seq=6,
                  events=[order_event(5), order_event(6)])
    assert [e["seq"] for e in read(a)] == [5, 6]


def test_resume_on_the_same_market_restores_subscriptions_and_a_fresh_snapshot() -> None:
    h = Harness()
    a = h.session("s-a")
    h.send(a, type="subscribe", instrument="BTC/USD", channel="book", depth=1)
    h.from_broker(type="market", events=[{
        "type": "book_snapshot", "instrument": "BTC/USD", "update_id": 1, "ts": 1,
        "bids": [["100", "1"]], "asks": [["101", "1"]]}])
    for seq in (1, 2):
        h.from_broker(type="session_event", session_id="s-a", event=order_event(seq))
    h.core.disconnect(a.conn_id, h.now)
    h.from_broker(type="session_event", session_id="s-a", event=order_event(3))  # while away
    h.core.take_link_frames()
    again = h.session("s-a", resume_from_seq=1)  # the client had processed only seq 1
    welcome, snapshot = read(again)
    assert welcome["resumed"] is True
    assert welcome["subscriptions"] == [{"instrument": "BTC/USD", "channel": "book", "depth": 1}]
    assert snapshot["type"] == "book_snapshot"
    assert link_frames(h.core) == [{"type": "replay", "session_id": "s-a", "after_seq": 1,
                                    "grant": GRANT}]
    h.from_broker(type="replayed", session_id="s-a", last_seq=3,
                  events=[order_event(2), order_event(3)])
    assert [e["seq"] for e in read(again)] == [2, 3]


def test_detached_sessions_are_forgotten_after_the_grace_period() -> None:
    h = Harness(MarketSettings(detached_grace_s=10))
    a = h.session("s-a")
    h.send(a, type="subscribe", instrument="BTC/USD", channel="trades")
    h.core.take_link_frames()
    h.core.disconnect(a.conn_id, h.now)
    h.core.expire(h.now + 5)
    assert link_frames(h.core) == []
    h.core.expire(h.now + 11)
    assert link_frames(h.core) == [
        {"type": "md_unsubscribe", "stream": {"instrument": "BTC/USD", "channel": "trades"}}]
    assert "s-a" not in h.core.sessions


def test_link_drop_holds_orders_and_resends_unanswered_ones_on_reconnect() -> None:
    h = Harness()
    a = h.session("s-a")
    read(a)
    h.send(a, type="subscribe", instrument="BTC/USD", channel="trades")
    h.send(a, **order(client_order_id="sent"))
    h.core.take_link_frames()
    h.core.link_down(ACCOUNT)
    h.send(a, **order(client_order_id="held"))
    h.send(a, type="cancel_order", client_order_id="other", account=ACCOUNT)
    [error] = h.send(a, type="get_open_orders", account=ACCOUNT, ref="q")
    assert (error["code"], error["ref"]) == ("unavailable", "q")
    assert link_frames(h.core) == []
    h.core.link_up(ACCOUNT, WELCOME.model_copy(update={"epoch": 2}))
    frames = link_frames(h.core)
    assert [f["type"] for f in frames] == ["md_subscribe", "replay", "route", "route", "route"]
    assert [f["msg"]["client_order_id"] for f in frames[2:]] == ["sent", "held", "other"]


def test_requests_held_for_a_session_that_left_go_again_marked_detached() -> None:
    # The algo of session s-gone went away (or resumed on another Market) while this Market
    # held its requests: they are still carried out, but marked so that the Broker keeps
    # sending the session's events where the session is now, not here.
    h = Harness()
    gone, here = h.session("s-gone"), h.session("s-here")
    h.core.link_down(ACCOUNT)
    for conn in (gone, here):
        h.send(conn, **order(client_order_id=f"new-{conn.conn_id}"))
        h.send(conn, type="cancel_order", client_order_id=f"old-{conn.conn_id}", account=ACCOUNT)
        h.send(conn, type="signal", signal_id=f"sig-{conn.conn_id}", account=ACCOUNT,
               instrument="BTC/USD", target_qty="0.1")
    h.core.disconnect(gone.conn_id, h.now)
    h.core.link_up(ACCOUNT, WELCOME)
    routes = [f for f in link_frames(h.core) if f["type"] == "route"]
    assert sorted((f["session_id"], f["msg"]["type"], f.get("detached", False))
                  for f in routes) == [
        ("s-gone", "cancel_order", True), ("s-gone", "new_order", True),
        ("s-gone", "signal", True), ("s-here", "cancel_order", False),
        ("s-here", "new_order", False), ("s-here", "signal", False)]
    gone_ids = {f["msg"].get("client_order_id") or f["msg"]["signal_id"]
                for f in routes if f["session_id"] == "s-gone"}
    assert gone_ids == {f"new-{gone.conn_id}", f"old-{gone.conn_id}", f"sig-{gone.conn_id}"}


def test_amendments_the_broker_has_not_answered_go_again_to_the_next_broker() -> None:
    # The Broker may die with a forwarded cancel or modify not yet journaled: the Market
    # sends each order's latest ones again when the link is back, until answered.
    h = Harness()
    a = h.session("s-a")
    read(a)
    for cid in ("o-1", "o-2", "o-3"):
        h.send(a, type="modify_order", client_order_id=cid, account=ACCOUNT, price="99")
        h.send(a, type="modify_order", client_order_id=cid, account=ACCOUNT, price="98.5")
        h.send(a, type="cancel_order", client_order_id=cid, account=ACCOUNT)
    h.send(a, type="modify_order", client_order_id="o-4", account=ACCOUNT, qty="2")
    assert len([f for f in link_frames(h.core) if f["type"] == "route"]) == 10
    seqs = itertools.count(1)

    def event(cid: str, kind: str, **fields: Any) -> None:
        h.from_broker(type="session_event", session_id="s-a",
                      event={**order_event(next(seqs), cid, kind), **fields})

    event("o-1", "order_modified", price="98.50")  # the latest modify, carried out
    event("o-2", "order_cancelled", status="cancelled", remaining_qty="0")  # finished
    event("o-4", "order_modified", price="98.5")  # not the qty asked for: still open
    h.from_broker(type="session_event", session_id="s-a", event={
        "type": "error", "code": "order_not_cancellable", "message": "filled",
        "client_order_id": "o-3"})  # refused: that is its answer
    h.core.link_down(ACCOUNT)
    h.core.link_up(ACCOUNT, WELCOME.model_copy(update={"epoch": 2}))
    again = [(f["msg"]["client_order_id"], f["msg"]["type"], f["msg"].get("price"))
             for f in link_frames(h.core) if f["type"] == "route"]
    assert again == [("o-1", "cancel_order", None), ("o-4", "modify_order", None)]
    h.core.expire(h.now + MarketSettings().unanswered_ttl_s + 1)  # then given up on
    h.core.link_down(ACCOUNT)
    h.core.link_up(ACCOUNT, WELCOME.model_copy(update={"epoch": 3}))
    assert [f for f in link_frames(h.core) if f["type"] == "route"] == []


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(("payload", "code", "field"), [
    (b"{not json", "bad_json", None),
    (b"[1,2]", "bad_json", None),
    (frame(type="teleport"), "unknown_type", "type"),
    (frame(instrument="BTC/USD"), "missing_field", "type"),
    (frame(**order(qty="-1")), "invalid_field", "qty"),
    (frame(**order(qty="0")), "invalid_field", "qty"),
    (frame(**order(price=100.5)), "invalid_field", "price"),
    (frame(**order(price="100.3")), "price_off_tick", "price"),
    (frame(**order(qty="0.005")), "qty_off_lot", "qty"),
    (frame(**order(instrument="DOGE/USD")), "unknown_instrument", "instrument"),
    (frame(**{k: v for k, v in order().items() if k != "side"}), "missing_field", "side"),
    (frame(**order(account="paper-2")), "forbidden", "account"),
    (frame(**order(colour="red")), "unknown_field", "colour"),
    (frame(type="hello", session_id="s-a"), "conflict", "type"),
    (frame(type="subscribe", instrument="BTC/USD", channel="candles"), "missing_field",
     "interval"),
])
def test_bad_input_gets_a_coded_error_and_the_connection_stays_up(
    payload: bytes, code: str, field: str | None
) -> None:
    h = Harness()
    a = h.session("s-a")
    read(a)
    h.core.take_link_frames()
    h.core.receive(a.conn_id, payload, h.now)
    [error] = read(a)
    assert error["type"] == "error" and error["code"] == code
    assert error.get("field") == field
    assert a.closing is None
    assert link_frames(h.core) == []
    assert h.send(a, type="ping", ref="still-there") == [{"type": "pong", "ref": "still-there"}]


def test_an_error_about_an_order_names_the_order() -> None:
    h = Harness()
    a = h.session("s-a")
    read(a)
    [error] = h.send(a, **order(client_order_id="mine", price="1.25"))
    assert error["client_order_id"] == "mine"


def test_a_flood_gets_an_error_then_a_policy_close() -> None:
    h = Harness(MarketSettings(flood_rate_per_s=200, flood_burst=400))
    a = h.session("s-a")
    read(a)
    for _ in range(500):
        h.core.receive(a.conn_id, frame(type="ping"), h.now)
    assert read(a)[-1]["code"] == "flood"
    assert a.closing == (CLOSE_POLICY, "flood")


def test_a_slow_consumer_is_told_to_come_back() -> None:
    h = Harness(MarketSettings(max_outbox_events=100))
    a = h.session("s-a")
    h.send(a, type="subscribe", instrument="BTC/USD", channel="trades")
    trades = [{"type": "trade", "instrument": "BTC/USD", "trade_id": str(n), "price": "1",
               "qty": "1", "taker_side": "buy", "ts": n} for n in range(200)]
    h.from_broker(type="market", events=trades)
    assert a.closing == (CLOSE_TRY_AGAIN, "slow consumer: reconnect and resume")


def test_malformed_broker_frames_are_dropped_without_harm() -> None:
    h = Harness()
    a = h.session("s-a")
    read(a)
    h.send(a, type="subscribe", instrument="BTC/USD", channel="book", depth=1)
    for bad in (b"nope", frame(type="market", events=[{"type": "book_snapshot"}]),
                frame(type="session_event"), frame(type="market", events=[{"x": 1}]),
                frame(type="market", events=[{"type": "book_snapshot", "instrument": "BTC/USD",
                                              "bids": [["abc", "1"]], "asks": [],
                                              "update_id": 1, "ts": 1}])):
        h.core.link_frame(ACCOUNT, bad, h.now)
    assert h.send(a, type="ping") == [{"type": "pong"}]


# ---------------------------------------------------------------- drain


def test_drain_sends_reconnect_and_refuses_new_sessions_and_subscriptions() -> None:
    h = Harness()
    a = h.session("s-a")
    read(a)
    h.core.begin_drain()
    assert read(a) == [{"type": "reconnect", "reason": "draining"}]
    assert h.send(a, type="subscribe", instrument="BTC/USD", channel="ticker")[0]["code"] == \
        "draining"
    late = h.core.connect(SessionClaims("s-b", "acme", ACCOUNT, 2**40), h.now)
    assert read(late)[0]["code"] == "draining" and late.closing == (CLOSE_TRY_AGAIN, "draining")
    assert h.core.has_sessions()
    h.core.disconnect(a.conn_id, h.now)
    h.core.disconnect(late.conn_id, h.now)
    assert not h.core.has_sessions()


def test_a_broker_resync_asks_for_fresh_books() -> None:
    h = Harness()
    a = h.session("s-a")
    read(a)
    h.send(a, type="subscribe", instrument="BTC/USD", channel="book", depth=2)
    h.from_broker(type="market", events=[{
        "type": "book_snapshot", "instrument": "BTC/USD", "update_id": 1, "ts": 1,
        "bids": [["100", "1"]], "asks": [["101", "1"]]}])
    h.core.take_link_frames()
    h.from_broker(type="resync", reason="venue reconnected")
    assert [(f["type"], f["stream"]["depth"]) for f in link_frames(h.core)] == [
        ("md_unsubscribe", 2), ("md_subscribe", 2)]
    read(a)
    h.from_broker(type="market", events=[{"type": "book_delta", "instrument": "BTC/USD",
                                          "bids": [["100", "2"]], "update_id": 2, "ts": 2}])
    assert a.outbox == []  # deltas wait for the fresh snapshot


def test_a_signal_is_routed_like_an_order_and_only_for_the_sessions_account() -> None:
    h = Harness()
    a = h.session("s-a")
    read(a)
    h.core.take_link_frames()
    signal = {"type": "signal", "signal_id": "g-1", "account": ACCOUNT,
              "instrument": "BTC/USD", "direction": "long", "qty": "0.1", "stop_loss": "90"}
    assert h.send(a, **signal) == []
    [route] = [f for f in link_frames(h.core) if f["type"] == "route"]
    assert route["msg"]["signal_id"] == "g-1" and route["customer"] == "acme"
    [error] = h.send(a, **{**signal, "account": "someone-else"})
    assert (error["code"], error["field"]) == ("forbidden", "account")
    accepted = {"type": "signal_accepted", "account": ACCOUNT, "signal_id": "g-1",
                "instrument": "BTC/USD", "target_qty": "0.1", "position_qty": "0", "ts": 1}
    h.from_broker(type="session_event", session_id="s-a", event=accepted)
    assert read(a) == [accepted]


def test_signals_the_broker_has_not_answered_go_again_when_the_link_is_back() -> None:
    # A signal forwarded just before the link dropped may never have reached the Broker:
    # sent again on the new link until answered (its signal_id makes a copy harmless).
    h = Harness()
    a = h.session("s-a")
    read(a)
    h.core.take_link_frames()

    def signal(signal_id: str) -> dict[str, Any]:
        return {"type": "signal", "signal_id": signal_id, "account": ACCOUNT,
                "instrument": "BTC/USD", "target_qty": "0.1"}

    for sid in ("g-1", "g-2", "g-3"):
        assert h.send(a, **signal(sid)) == []
    h.send(a, **signal("g-3"))  # the SDK's copy after a resume: still one to answer
    h.from_broker(type="session_event", session_id="s-a", event={
        "type": "signal_accepted", "account": ACCOUNT, "signal_id": "g-1",
        "instrument": "BTC/USD", "target_qty": "0.1", "position_qty": "0", "seq": 1, "ts": 1})
    assert [e["signal_id"] for e in read(a)] == ["g-1"]
    h.core.link_down(ACCOUNT)
    assert h.send(a, **signal("g-4")) == []  # while the link is down: held
    h.core.link_up(ACCOUNT, WELCOME.model_copy(update={"epoch": 2}))
    again = [f["msg"]["signal_id"] for f in link_frames(h.core) if f["type"] == "route"]
    assert again == ["g-2", "g-3", "g-4"]
    h.from_broker(type="replayed", session_id="s-a", last_seq=2, events=[{
        "type": "signal_rejected", "account": ACCOUNT, "signal_id": "g-2", "code": "limit",
        "message": "over the limit", "seq": 2, "ts": 2}])
    h.core.link_down(ACCOUNT)
    h.core.link_up(ACCOUNT, WELCOME.model_copy(update={"epoch": 3}))
    again = [f["msg"]["signal_id"] for f in link_frames(h.core) if f["type"] == "route"]
    assert again == ["g-3", "g-4"]
    h.core.expire(h.now + MarketSettings().unanswered_ttl_s + 1)  # then given up on
    h.core.link_down(ACCOUNT)
    h.core.link_up(ACCOUNT, WELCOME.model_copy(update={"epoch": 4}))
    assert [f for f in link_frames(h.core) if f["type"] == "route"] == []


def test_the_sessions_trader_tag_is_stamped_on_what_it_routes_and_cannot_be_forged() -> None:
    h = Harness()
    tagged = h.core.connect(SessionClaims("s-t", "acme", ACCOUNT, 2**40, "scalper"), h.now)
    h.core.receive(tagged.conn_id, frame(type="hello", session_id="s-t"), h.now)
    plain = h.session("s-p")
    read(tagged), read(plain)
    h.core.take_link_frames()
    assert h.send(tagged, **order()) == []
    assert h.send(tagged, type="modify_order", client_order_id="o-1", account=ACCOUNT,
                  qty="0.2") == []
    assert h.send(tagged, type="cancel_order", client_order_id="o-1", account=ACCOUNT) == []
    assert h.send(tagged, type="signal", signal_id="g-1", account=ACCOUNT,
                  instrument="BTC/USD", direction="flat") == []
    assert h.send(plain, **order(client_order_id="o-2")) == []
    routes = [(f["session_id"], f["msg"]["type"], f["msg"].get("trader_tag"))
              for f in link_frames(h.core) if f["type"] == "route"]
    assert routes == [("s-t", "new_order", "scalper"), ("s-t", "modify_order", "scalper"),
                      ("s-t", "cancel_order", None), ("s-t", "signal", "scalper"),
                      ("s-p", "new_order", None)]
    # An algo cannot put a tag on its own requests: the protocol has no such field.
    [error] = h.send(plain, **order(client_order_id="o-3", trader_tag="scalper"))
    assert (error["code"], error["field"]) == ("unknown_field", "trader_tag")
