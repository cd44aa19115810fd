"""The PaperAdapter shell: the Adapter contract over the engine, stepped by hand.

No sockets. The venue's own stepping task is configured with an hour-long interval, so every
market step in these tests is an explicit `venue.step()` and nothing depends on timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from protocol.errors import ErrorCode
from protocol.market import BookDelta, BookSnapshot, Candle, CandleInterval, Channel, Ticker, Trade
from protocol.orders import (
    OrderAccepted,
    OrderCancelled,
    OrderEvent,
    OrderFilled,
    OrderModified,
)
from workers.broker.adapters.base import (
    Adapter,
    AdapterEvent,
    FatalAdapterError,
    OrderRejectedError,
    RetryableAdapterError,
    is_retryable,
)
from workers.broker.adapters.paper.adapter import PaperAdapter, PaperVenue
from workers.broker.adapters.paper.config import PaperConfig, PaperInstrument
from workers.broker.adapters.paper.engine import EngineEvent

from .conftest import FakeClock, order

D = Decimal
CONFIG = PaperConfig(
    instruments=[
        PaperInstrument(
            instrument="BTC/USD",
            tick_size="0.5",
            lot_size="0.01",
            initial_price="30000",
            activity=2,
            level_gap_ticks=2,
        ),
    ],
    step_interval_s=3600,
    maker_fee_bps="1",
    taker_fee_bps="5",
)


@pytest.fixture
async def adapter() -> AsyncIterator[PaperAdapter]:
    paper = PaperAdapter(CONFIG, "algo", clock=FakeClock())
    await paper.connect()
    yield paper
    await paper.close()


async def drain(paper: PaperAdapter) -> list[AdapterEvent]:
    """Everything queued so far, without waiting for more."""
    stream = paper.events()
    assert isinstance(stream, AsyncGenerator)  # an async generator: it can be closed
    out: list[AdapterEvent] = []
    while paper.backlog:
        out.append(await anext(stream))
    await stream.aclose()
    return out


def test_paper_adapter_fulfils_the_contract() -> None:
    assert issubclass(PaperAdapter, Adapter)
    assert PaperAdapter.venue == "paper"


def test_error_families_say_what_to_do() -> None:
    assert is_retryable(RetryableAdapterError("timeout", retry_after=1.0))
    assert not is_retryable(FatalAdapterError("bad key"))
    assert not is_retryable(OrderRejectedError(ErrorCode.PRICE_OFF_TICK, "off tick"))


async def test_book_subscription_starts_with_a_snapshot_then_consistent_deltas(
    adapter: PaperAdapter,
) -> None:
    adapter.paper_venue.step()
    await adapter.subscribe("BTC/USD", Channel.BOOK, depth=3)
    (snapshot,) = await drain(adapter)
    assert isinstance(snapshot, BookSnapshot) and len(snapshot.bids) == 3
    bids, asks = dict(snapshot.bids), dict(snapshot.asks)
    update_id = snapshot.update_id
    for _ in range(30):
        adapter.paper_venue.step()
        for delta in await drain(adapter):
            assert isinstance(delta, BookDelta) and delta.update_id == update_id + 1
            update_id = delta.update_id
            for side, levels in ((bids, delta.bids), (asks, delta.asks)):
                for price, qty in levels:
                    if qty == 0:
                        del side[price]
                    else:
                        side[price] = qty
    book = adapter.paper_venue.engine.book("BTC/USD", 3)
    assert sorted(bids.items(), reverse=True) == book.bids
    assert sorted(asks.items()) == book.asks


async def test_ticker_trades_and_candles_are_delivered_only_when_subscribed(
    adapter: PaperAdapter,
) -> None:
    for _ in range(5):
        adapter.paper_venue.step()
    assert await drain(adapter) == []
    await adapter.subscribe("BTC/USD", Channel.TICKER)
    await adapter.subscribe("BTC/USD", Channel.TRADES)
    await adapter.subscribe("BTC/USD", Channel.CANDLES, interval=CandleInterval.M1)
    for _ in range(20):
        adapter.paper_venue.step()
    kinds = {type(e) for e in await drain(adapter)}
    assert kinds == {Ticker, Trade, Candle}
    await adapter.unsubscribe("BTC/USD", Channel.TRADES)
    await adapter.unsubscribe("BTC/USD", Channel.TICKER)
    await adapter.unsubscribe("BTC/USD", Channel.CANDLES, interval=CandleInterval.M1)
    for _ in range(5):
        adapter.paper_venue.step()
    assert await drain(adapter) == []


async def test_unknown_instrument_subscription_is_rejected(adapter: PaperAdapter) -> None:
    with pytest.raises(OrderRejectedError) as caught:
        await adapter.subscribe("DOGE/USD", Channel.TRADES)
    assert caught.value.code is ErrorCode.UNKNOWN_INSTRUMENT


async def test_orders_fill_and_the_account_state_matches_the_engine(
    adapter: PaperAdapter,
) -> None:
    adapter.paper_venue.step()
    ack = await adapter.place_order(order("m1", "algo", "buy", "0.5"))
    assert ack.client_order_id == "m1" and ack.order_id
    events = await drain(adapter)
    assert isinstance(events[0], OrderAccepted)
    assert isinstance(events[-1], OrderFilled) and events[-1].filled_qty == D("0.5")
    # The house's side is not ours to see.
    assert all(isinstance(e, OrderEvent) and e.account == "algo" for e in events)

    fills = await adapter.fills_since(0)
    cost = sum((f.price * f.qty + f.fee for f in fills), D(0))
    balances = await adapter.balances()
    assert balances.cash == {"USD": D(100_000) - cost}
    (position,) = await adapter.positions()
    assert position.qty == D("0.5") and position.instrument == "BTC/USD"
    assert adapter.paper_venue.engine.ledger.cash("algo") == balances.cash


async def test_cancel_and_modify_go_through_and_refusals_carry_codes(
    adapter: PaperAdapter,
) -> None:
    adapter.paper_venue.step()
    await adapter.place_order(order("low", "algo", "buy", "0.1", "20000"))
    (open_order,) = await adapter.open_orders()
    assert open_order.client_order_id == "low"
    await adapter.modify_order("low", qty=D("0.2"))
    await adapter.cancel_order("low")
    kinds = [type(e) for e in await drain(adapter)]
    assert kinds == [OrderAccepted, OrderModified, OrderCancelled]
    assert await adapter.open_orders() == []

    with pytest.raises(OrderRejectedError) as caught:
        await adapter.cancel_order("low")
    assert caught.value.code is ErrorCode.ORDER_NOT_CANCELLABLE
    with pytest.raises(OrderRejectedError) as caught:
        await adapter.place_order(order("odd", "algo", "buy", "0.1", "20000.25"))
    assert caught.value.code is ErrorCode.PRICE_OFF_TICK
    assert caught.value.client_order_id == "odd"
    with pytest.raises(OrderRejectedError) as caught:
        await adapter.place_order(order("x", "someone-else", "buy", "0.1", "20000"))
    assert caught.value.code is ErrorCode.FORBIDDEN


async def test_events_iterator_wakes_on_delivery_and_ends_on_close() -> None:
    paper = PaperAdapter(CONFIG, "algo", clock=FakeClock())
    await paper.connect()
    await paper.subscribe("BTC/USD", Channel.TRADES)
    received: list[AdapterEvent] = []

    async def consume() -> None:
        async for event in paper.events():
            received.append(event)

    consumer = asyncio.create_task(consume(), name="test-consumer")
    await asyncio.sleep(0)
    for _ in range(10):
        paper.paper_venue.step()
    await paper.close()
    await asyncio.wait_for(consumer, 5)
    assert received and all(isinstance(e, Trade) for e in received)
    with pytest.raises(FatalAdapterError):
        await paper.place_order(order("late", "algo", "buy", "0.1"))


async def test_two_accounts_on_one_venue_trade_with_each_other() -> None:
    venue = PaperVenue(CONFIG.model_copy(update={"step_interval_s": 3600}), clock=FakeClock())
    alice = PaperAdapter(account="alice", venue=venue)
    bob = PaperAdapter(account="bob", venue=venue)
    await alice.connect()
    await bob.connect()
    await alice.place_order(order("a", "alice", "sell", "0.3", "40000"))
    await bob.place_order(order("b", "bob", "buy", "0.3", "40000"))
    assert [f.liquidity for f in await alice.fills_since(0)] == ["maker"]
    assert [f.liquidity for f in await bob.fills_since(0)] == ["taker"]
    assert {e.account for e in await drain(alice) if hasattr(e, "account")} == {"alice"}
    await alice.close()
    await bob.close()
    await venue.stop()


async def test_the_venue_task_steps_the_market_on_its_own() -> None:
    fast = CONFIG.model_copy(update={"step_interval_s": 0.001})
    paper = PaperAdapter(fast, "algo")
    await paper.connect()
    await paper.subscribe("BTC/USD", Channel.TICKER)
    events = paper.events()
    first = await asyncio.wait_for(anext(events), 5)  # the ticker as of subscription
    second = await asyncio.wait_for(anext(events), 5)  # from a step the task made
    assert isinstance(first, Ticker) and isinstance(second, Ticker)
    await paper.close()
    assert paper.paper_venue._task is None


class ManualClock:
    """Wall time that moves only when the test says so."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


async def test_replay_file_drives_the_venue_in_recorded_time(tmp_path: Path) -> None:
    recorded_start = 1_600_000_000_000_000_000
    lines = [
        BookSnapshot(
            instrument="BTC/USD",
            bids=[(D("29999.5"), D("1"))],
            asks=[(D("30000.5"), D("2"))],
            update_id=1,
            ts=recorded_start,
        ),
        Trade(
            instrument="BTC/USD",
            trade_id="r1",
            price=D("30000.5"),
            qty=D("0.5"),
            taker_side="buy",
            ts=recorded_start + 2_000_000_000,
        ),
    ]
    path = tmp_path / "btc.jsonl"
    path.write_text("".join(line.model_dump_json() + "\n" for line in lines), encoding="utf-8")
    wall = ManualClock(1_700_000_000_000_000_000)
    config = CONFIG.model_copy(update={"replay_file": path, "replay_speed": 2.0})
    paper = PaperAdapter(config, "algo", clock=wall)
    await paper.connect()
    await paper.subscribe("BTC/USD", Channel.TRADES)
    venue = paper.paper_venue

    venue.step()  # recorded time = start: the snapshot becomes resting liquidity
    assert venue.engine.best_prices("BTC/USD") == (D("29999.5"), D("30000.5"))
    assert await drain(paper) == []
    wall.now += 500_000_000  # 0.5 s of wall time is 1 s of recording at speed 2
    venue.step()
    assert await drain(paper) == []
    wall.now += 500_000_000
    venue.step()
    (trade,) = await drain(paper)
    assert isinstance(trade, Trade)
    assert trade.trade_id == "r1" and trade.ts == recorded_start + 2_000_000_000
    # Orders placed now carry recorded time too.
    ack = await paper.place_order(order("t", "algo", "buy", "0.1"))
    assert ack.ts == recorded_start + 2_000_000_000
    await paper.close()


async def test_unreadable_replay_file_is_fatal(tmp_path: Path) -> None:
    config = CONFIG.model_copy(update={"replay_file": tmp_path / "missing.jsonl"})
    paper = PaperAdapter(config, "algo")
    with pytest.raises(FatalAdapterError, match=r"missing\.jsonl"):
        await paper.connect()


async def test_malformed_replay_file_is_fatal_and_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("# header\n{oops\n", encoding="utf-8")
    paper = PaperAdapter(CONFIG.model_copy(update={"replay_file": path}), "algo")
    with pytest.raises(FatalAdapterError, match="line 2"):
        await paper.connect()


async def test_the_market_steps_one_instrument_at_a_time_with_the_loop_free_between(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A step of the whole market held the event loop for all of it (~1.6 ms for two
    instruments): an order arriving meanwhile waited. The venue now lets the loop run between
    instruments; a callback scheduled during the first instrument's step has run by the
    second's."""
    two = CONFIG.model_copy(update={
        "step_interval_s": 0.001,
        "instruments": [*CONFIG.instruments, CONFIG.instruments[0].model_copy(
            update={"instrument": "ETH/USD", "initial_price": D("2000")})]})
    paper = PaperAdapter(two, "algo")
    walk = paper.paper_venue._walk
    assert walk is not None
    real = walk.step_instrument
    seen: list[tuple[int, bool]] = []
    ran: list[bool] = []
    both = asyncio.get_running_loop().create_future()

    def step_instrument(index: int) -> list[EngineEvent]:
        if index == 0:
            ran.clear()
            asyncio.get_running_loop().call_soon(ran.append, True)
        seen.append((index, bool(ran)))
        if len(seen) >= 4 and not both.done():
            both.set_result(None)
        return real(index)

    monkeypatch.setattr(walk, "step_instrument", step_instrument)
    await paper.connect()
    try:
        await asyncio.wait_for(both, 5)
    finally:
        await paper.close()
    assert seen[:4] == [(0, False), (1, True), (0, False), (1, True)]
    assert walk.steps >= 2  # a step counts once both instruments moved


async def test_a_failing_market_step_is_reported_as_a_lost_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.broker.adapters.base import ConnectionChanged

    paper = PaperAdapter(CONFIG.model_copy(update={"step_interval_s": 0.001}), "algo")

    def broken_step(index: int) -> list[EngineEvent]:
        raise RuntimeError("walk exploded")

    monkeypatch.setattr(paper.paper_venue._walk, "step_instrument", broken_step)
    await paper.connect()
    notice = await asyncio.wait_for(anext(paper.events()), 5)
    assert isinstance(notice, ConnectionChanged) and not notice.connected
    assert "walk exploded" in notice.reason
    await paper.close()  # the dead task is collected quietly
