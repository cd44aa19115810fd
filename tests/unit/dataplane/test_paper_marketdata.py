"""Synthetic and replayed market data for the paper venue, and candles."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from protocol.market import BookDelta, BookSnapshot, CandleInterval, Ticker, Trade
from protocol.orders import OrderFilled, OrderPartiallyFilled
from workers.broker.adapters.paper.candles import CandleBuilder
from workers.broker.adapters.paper.config import PaperConfig, PaperInstrument
from workers.broker.adapters.paper.engine import MatchingEngine
from workers.broker.adapters.paper.marketdata import (
    HOUSE_MAKER,
    HOUSE_TAKER,
    RandomWalkMarket,
    RecordingError,
    ReplayMarket,
    read_recording,
    write_recording,
)

from .conftest import START_NS, FakeClock, order

D = Decimal
CONFIG = PaperConfig(
    instruments=[
        PaperInstrument(
            instrument="BTC/USD",
            tick_size="0.5",
            lot_size="0.01",
            initial_price="30000",
            volatility=0.0002,
            activity=1.5,
            level_gap_ticks=2,
        ),
        PaperInstrument(
            instrument="ETH/USD",
            tick_size="0.01",
            lot_size="0.1",
            initial_price="2000",
            activity=0.3,
        ),
    ],
    seed=7,
)


def walk(config: PaperConfig = CONFIG) -> tuple[MatchingEngine, RandomWalkMarket]:
    engine = MatchingEngine(
        [i.spec() for i in config.instruments],
        maker_fee_bps=config.maker_fee_bps,
        taker_fee_bps=config.taker_fee_bps,
        clock=FakeClock(),
    )
    return engine, RandomWalkMarket(engine, config.instruments, seed=config.seed)


def run(market: RandomWalkMarket, steps: int) -> list[dict[str, Any]]:
    return [e.model_dump(mode="json") for _ in range(steps) for e in market.step()]


# ---------------------------------------------------------------- random walk


def test_same_seed_same_events() -> None:
    assert run(walk()[1], 200) == run(walk()[1], 200)


def test_another_seed_another_market() -> None:
    other = CONFIG.model_copy(update={"seed": 8})
    assert run(walk()[1], 50) != run(walk(other)[1], 50)


def test_a_step_reports_each_book_once_and_the_house_quietly() -> None:
    engine, market = walk()
    book = {name: engine.book(name) for name in ("BTC/USD", "ETH/USD")}
    for _ in range(50):
        events = market.step()
        deltas = [e for e in events if isinstance(e, BookDelta)]
        assert len(deltas) == len({d.instrument for d in deltas}) <= 2
        assert not [e for e in events if type(e).__name__ in
                    ("OrderAccepted", "OrderCancelled", "OrderModified")]
        for delta in deltas:  # the net changes still rebuild the engine's book exactly
            levels = {"bids": dict(book[delta.instrument].bids),
                      "asks": dict(book[delta.instrument].asks)}
            for side in ("bids", "asks"):
                for price, qty in getattr(delta, side):
                    if qty == 0:
                        levels[side].pop(price, None)
                    else:
                        levels[side][price] = qty
            now = engine.book(delta.instrument)
            assert levels == {"bids": dict(now.bids), "asks": dict(now.asks)}
            book[delta.instrument] = now


def test_walk_quotes_both_sides_and_prints_trades() -> None:
    engine, market = walk()
    events = [e for _ in range(100) for e in market.step()]
    trades = [e for e in events if isinstance(e, Trade)]
    assert {t.instrument for t in trades} == {"BTC/USD", "ETH/USD"}
    assert {t.taker_side for t in trades} == {"buy", "sell"}
    for name in ("BTC/USD", "ETH/USD"):
        bid, ask = engine.best_prices(name)
        assert bid is not None and ask is not None and bid < ask
        assert len(engine.book(name).bids) == 10  # the configured ladder depth
    # The walk moves the price, within a sane band for 100 small steps.
    mid = market.mid("BTC/USD")
    assert mid != D(30000) and D(25000) < mid < D(35000)


def test_walk_liquidity_fills_an_algo_and_the_house_pays_for_it() -> None:
    engine, market = walk()
    engine.open_account("algo", {"USD": D(100_000)})
    for _ in range(5):
        market.step()
    events = engine.submit(order("a1", "algo", "buy", "0.5", instrument="BTC/USD"))
    done = engine.order("algo", "a1")
    assert done is not None and done.status == "filled"
    fills = [e.fill for e in events if isinstance(e, OrderFilled | OrderPartiallyFilled)]
    assert {f.account for f in fills} == {"algo", HOUSE_MAKER}
    assert engine.ledger.position_qty("algo", "BTC/USD") == D("0.5")


def test_algo_resting_order_is_filled_by_synthetic_flow() -> None:
    engine, market = walk()
    engine.open_account("algo", {"USD": D(100_000)})
    market.step()
    bid, _ = engine.best_prices("BTC/USD")
    assert bid is not None
    engine.submit(order("join", "algo", "buy", "0.01", str(bid + D("0.5"))))  # best bid now
    for _ in range(300):
        market.step()
        if not engine.is_working("algo", "join"):
            break
    assert engine.fills("algo"), "the synthetic taker flow never reached the algo's bid"


def test_walk_conserves_base_and_quote_minus_fees() -> None:
    engine, market = walk()
    events = [e for _ in range(200) for e in market.step()]
    fees = sum(
        (e.fill.fee for e in events if isinstance(e, OrderFilled | OrderPartiallyFilled)), D(0)
    )
    accounts = (HOUSE_MAKER, HOUSE_TAKER)
    assert sum(engine.ledger.position_qty(a, "BTC/USD") for a in accounts) == 0
    assert sum(engine.ledger.cash(a).get("USD", D(0)) for a in accounts) == -fees


# ---------------------------------------------------------------- recordings and replay


def recorded() -> list[Ticker | Trade | BookSnapshot | BookDelta]:
    return [
        BookSnapshot(
            instrument="BTC/USD",
            bids=[(D("100.0"), D("1")), (D("99.5"), D("2"))],
            asks=[(D("101.0"), D("1.5"))],
            update_id=1,
            ts=START_NS + 10,
        ),
        Trade(
            instrument="BTC/USD",
            trade_id="x1",
            price=D("101.0"),
            qty=D("0.5"),
            taker_side="buy",
            ts=START_NS + 20,
        ),
        BookDelta(
            instrument="BTC/USD",
            bids=[(D("100.0"), D("0"))],
            asks=[(D("101.0"), D("1.0")), (D("100.5"), D("0.3"))],
            update_id=2,
            ts=START_NS + 30,
        ),
        BookDelta(
            instrument="BTC/USD", asks=[(D("99.5"), D("0.2"))], update_id=3, ts=START_NS + 40
        ),
    ]


def replay_engine() -> MatchingEngine:
    config = PaperInstrument(
        instrument="BTC/USD", tick_size="0.5", lot_size="0.1", initial_price="100"
    )
    engine = MatchingEngine([config.spec()], clock=FakeClock())
    engine.open_account("algo", {"USD": D(1000)})
    return engine


def test_recording_round_trips_through_jsonl() -> None:
    lines = list(write_recording(recorded()))
    assert all(line.endswith("\n") for line in lines)
    assert list(read_recording(["# comment", "", *lines])) == recorded()


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("{not json", "line 1"),
        (
            (
                '{"type":"candle","instrument":"BTC/USD","interval":"1m","start":0,"open":"1",'
                '"high":"1","low":"1","close":"1","volume":"1"}'
            ),
            "cannot be replayed",
        ),
        (
            (
                '{"type":"trade","instrument":"BTC/USD","trade_id":"t","price":1.5,"qty":"1",'
                '"taker_side":"buy","ts":1}'
            ),
            "line 1",
        ),
    ],
)
def test_bad_recording_lines_are_reported_with_their_number(line: str, complaint: str) -> None:
    with pytest.raises(RecordingError, match=complaint):
        list(read_recording([line]))


def test_recording_time_must_not_go_backwards() -> None:
    lines = list(write_recording(reversed(recorded())))
    with pytest.raises(RecordingError, match="line 2: ts goes backwards"):
        list(read_recording(lines))


def test_replay_mirrors_the_recorded_book_and_prints_the_tape() -> None:
    engine = replay_engine()
    replay = ReplayMarket(engine, recorded())
    assert replay.next_ts() == START_NS + 10
    replay.advance(START_NS + 10)
    book = engine.book("BTC/USD")
    assert book.bids == [(D("100.0"), D(1)), (D("99.5"), D(2))]
    assert book.asks == [(D("101.0"), D("1.5"))]

    events = replay.advance(START_NS + 30)
    assert [e.trade_id for e in events if isinstance(e, Trade)] == ["x1"]
    book = engine.book("BTC/USD")
    assert book.bids == [(D("99.5"), D(2))]
    assert book.asks == [(D("100.5"), D("0.3")), (D("101.0"), D(1))]


def test_replayed_liquidity_fills_algo_orders_both_ways() -> None:
    engine = replay_engine()
    replay = ReplayMarket(engine, recorded())
    replay.advance(START_NS + 30)
    # A marketable algo order takes recorded liquidity.
    engine.submit(order("take", "algo", "buy", "0.2", "100.5"))
    assert engine.ledger.position_qty("algo", "BTC/USD") == D("0.2")
    # A resting algo bid is hit when the recorded ask moves down through it.
    engine.submit(order("rest", "algo", "buy", "0.1", "99.5"))
    replay.advance(START_NS + 40)
    assert engine.ledger.position_qty("algo", "BTC/USD") == D("0.3")
    assert replay.next_ts() is None and replay.finished


def test_replay_skips_what_the_venue_cannot_list() -> None:
    engine = replay_engine()
    odd: list[BookSnapshot | Trade] = [
        BookSnapshot(instrument="BTC/USD", bids=[(D("100.25"), D(1))], asks=[], update_id=1, ts=1),
        Trade(instrument="XRP/USD", trade_id="t", price=D(1), qty=D(1), taker_side="buy", ts=2),
    ]
    replay = ReplayMarket(engine, odd)
    assert replay.advance(10) == []
    assert replay.skipped == 2


# ---------------------------------------------------------------- candles


def trade(price: str, qty: str, seconds: int) -> Trade:
    return Trade(
        instrument="BTC/USD",
        trade_id=f"t{seconds}",
        price=D(price),
        qty=D(qty),
        taker_side="buy",
        ts=seconds * 1_000_000_000,
    )


def test_candles_track_ohlcv_and_close_when_the_interval_rolls() -> None:
    builder = CandleBuilder("BTC/USD", CandleInterval.M1)
    builder.on_trade(trade("10", "1", 60))
    builder.on_trade(trade("12", "2", 70))
    (current,) = builder.on_trade(trade("9", "1", 119))
    assert (current.open, current.high, current.low, current.close, current.volume) == (
        D(10),
        D(12),
        D(9),
        D(9),
        D(4),
    )
    assert current.start == 60 * 1_000_000_000 and not current.closed
    closed, fresh = builder.on_trade(trade("11", "1", 185))
    assert closed.closed and closed.close == D(9) and closed.start == current.start
    assert fresh.start == 180 * 1_000_000_000 and fresh.open == D(11)
    assert builder.on_trade(trade("50", "1", 100)) == []  # older than the open candle
