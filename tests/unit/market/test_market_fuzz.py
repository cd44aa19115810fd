"""Whatever an algo sends, the Market session core answers with coded errors and never raises;
and nothing it forwards to a Broker is a request the protocol would refuse, or one for an
account the session may not trade. Generated input, no sockets."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from protocol.errors import ErrorCode
from protocol.link import LinkWelcome
from protocol.market import InstrumentSpec
from protocol.orders import NewOrder
from protocol.session import parse_client_message
from tradefleet.service.session_tokens import SessionClaims
from workers.market.core import CLOSE_POLICY, MarketCore
from workers.market.order_checks import OrderRequest, check_request
from workers.market.settings import MarketSettings

ACCOUNT = "paper-1"
SPEC = InstrumentSpec(instrument="BTC/USD", tick_size=Decimal("0.5"), lot_size=Decimal("0.01"),
                      min_qty=Decimal("0.01"))
CODES = {code.value for code in ErrorCode}

TYPES = ["new_order", "cancel_order", "modify_order", "get_positions", "get_open_orders",
         "signal", "subscribe", "unsubscribe", "ping", "pong", "hello", "batch", "order_filled",
         "", "NEW_ORDER"]
FIELDS = ["client_order_id", "account", "instrument", "side", "order_type", "qty", "price",
          "time_in_force", "ref", "channel", "depth", "interval", "ts", "signal_id",
          "stop_loss", "take_profit", "trader_tag", "session_id", "seq", "events", "expire_at"]
WORDS = ["BTC/USD", "ETH/USD", "btc/usd", ACCOUNT, "paper-2", "buy", "sell", "limit", "market",
         "GTC", "IOC", "book", "trades", "ticker", "candles", "1m", "o-1", "s-a"]
NUMBERS = ["0", "-0", "1", "-1", "0.01", "0.1", "100.5", "100.25", "1e3", "1E-2", "1e999",
           "-1e-999", "NaN", "nan", "Infinity", "-inf", "sNaN", "0x10", " 1", "1 ", "1_000",
           "00.5", ".5", "5.", "9" * 80, "0." + "0" * 60 + "1"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(WORDS), st.sampled_from(NUMBERS))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
messages = st.builds(
    lambda kind, fields: {"type": kind, **fields} if kind is not None else fields,
    st.one_of(st.none(), st.sampled_from(TYPES), st.text(max_size=8)),
    st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=6)), values,
                    max_size=8))

VALID = [
    {"type": "new_order", "client_order_id": "o-1", "account": ACCOUNT, "instrument": "BTC/USD",
     "side": "buy", "order_type": "limit", "qty": "0.1", "price": "100.5"},
    {"type": "new_order", "client_order_id": "o-2", "account": ACCOUNT, "instrument": "BTC/USD",
     "side": "sell", "order_type": "market", "qty": "0.02", "time_in_force": "IOC"},
    {"type": "cancel_order", "client_order_id": "o-1", "account": ACCOUNT},
    {"type": "modify_order", "client_order_id": "o-1", "account": ACCOUNT, "qty": "0.2",
     "price": "101"},
    {"type": "signal", "signal_id": "g-1", "account": ACCOUNT, "instrument": "BTC/USD",
     "direction": "long", "qty": "0.1", "stop_loss": "90", "take_profit": "120"},
    {"type": "get_positions", "account": ACCOUNT, "ref": "r"},
    {"type": "subscribe", "instrument": "BTC/USD", "channel": "book", "depth": 10},
]
# A valid request with one to three of its fields changed (to plausible and implausible
# values alike), dropped or added: what reaches each field's own check.
tricky = st.one_of(st.sampled_from(WORDS), st.sampled_from(NUMBERS), values)


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    message = dict(draw(st.sampled_from(VALID)))
    keys = st.sampled_from(sorted(message) + FIELDS + ["direction"])
    for key in draw(st.lists(keys, min_size=1, max_size=3)):
        if draw(st.integers(0, 4)) == 0:
            message.pop(key, None)
        else:
            message[key] = draw(tricky)
    return message

def wire(message: Any) -> bytes:
    """The stdlib encoder: integers past 64 bits and NaN (invalid JSON) are kept."""
    return json.dumps(message).encode()


frames = st.one_of(near_valid().map(wire), st.sampled_from(VALID).map(wire), messages.map(wire),
                   st.binary(max_size=64),
                   st.text(max_size=64).map(str.encode),
                   values.map(wire))


def open_session(core: MarketCore) -> int:
    core.link_up(ACCOUNT, LinkWelcome(account=ACCOUNT, broker_id="b-1", epoch=1,
                                      instruments=[SPEC]))
    conn = core.connect(SessionClaims("s-a", "acme", ACCOUNT, 2**40), 100.0)
    core.receive(conn.conn_id, wire({"type": "hello", "session_id": "s-a"}), 100.0)
    conn.outbox.clear()
    core.take_link_frames()
    return conn.conn_id


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, min_size=1, max_size=12))
def test_any_algo_frame_gets_an_answer_or_a_valid_route_and_never_raises(
        sent: list[bytes]) -> None:
    core = MarketCore("market-1", MarketSettings(flood_burst=1000, flood_rate_per_s=1000))
    conn_id = open_session(core)
    conn = core.connections[conn_id]
    for data in sent:
        core.receive(conn_id, data, 100.0)
    assert conn.closing is None or conn.closing[0] == CLOSE_POLICY
    for raw in conn.outbox:
        out = orjson.loads(raw)
        for answer in out["events"] if out.get("type") == "batch" else [out]:
            assert isinstance(answer.get("type"), str)
            if answer["type"] == "error":
                assert answer["code"] in CODES and answer["message"]
    for raw in core.take_link_frames().get(ACCOUNT, []):
        forwarded = orjson.loads(raw)
        if forwarded["type"] != "route":
            continue
        event(f"routed {forwarded['msg']['type']}")
        assert forwarded["session_id"] == "s-a" and forwarded["customer"] == "acme"
        request = parse_client_message(forwarded["msg"])  # raises if the Broker would refuse
        assert getattr(request, "account", ACCOUNT) == ACCOUNT
        assert isinstance(request, OrderRequest)  # only order requests are routed
        assert check_request(request, ACCOUNT, {SPEC.instrument: SPEC}) is None
        if isinstance(request, NewOrder):
            assert request.qty > 0 and (request.price is None or request.price > 0)
