"""Configuration of the built-in paper exchange."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.market import Currency, Instrument, InstrumentSpec
from tradefleet.config import ConfigDecimal
from workers.broker.adapters.paper.engine import RETAIN_FILLS, RETAIN_FINISHED_ORDERS


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PaperInstrument(_Frozen):
    """One tradable instrument and how its synthetic market behaves."""

    instrument: Instrument = Field(description="Canonical name, e.g. BTC/USD.")
    tick_size: ConfigDecimal = Field(gt=0, description="Price increment.")
    lot_size: ConfigDecimal = Field(gt=0, description="Quantity increment.")
    min_qty: ConfigDecimal | None = Field(
        default=None, gt=0, description="Smallest order quantity; default: one lot."
    )
    initial_price: ConfigDecimal = Field(gt=0, description="Mid price the random walk starts at.")
    volatility: float = Field(
        default=0.00002,
        ge=0,
        le=0.1,
        description="Standard deviation of the mid move per step, as a fraction of the price.",
    )
    activity: float = Field(
        default=0.5,
        ge=0,
        le=100,
        description="Mean number of synthetic taker orders (public trades) per step.",
    )
    spread_ticks: int = Field(
        default=2, ge=1, le=10_000, description="Distance between the house's best bid and ask."
    )
    depth_levels: int = Field(
        default=10, ge=1, le=200, description="Price levels the house quotes on each side."
    )
    level_gap_ticks: int = Field(
        default=1, ge=1, le=10_000, description="Distance between two house levels of a side."
    )
    level_lots: tuple[int, int] = Field(
        default=(1, 20),
        description="Min and max size of a house quote, in lots (drawn uniformly).",
    )
    taker_lots: tuple[int, int] = Field(
        default=(1, 10),
        description="Min and max size of a synthetic taker order, in lots (drawn uniformly).",
    )

    @model_validator(mode="after")
    def _rules_fit(self) -> PaperInstrument:
        if self.initial_price % self.tick_size:
            raise ValueError("initial_price must be a multiple of tick_size")
        if self.min_qty is not None and self.min_qty % self.lot_size:
            raise ValueError("min_qty must be a multiple of lot_size")
        for name in ("level_lots", "taker_lots"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise ValueError(f"{name} must be (min, max) with 1 <= min <= max")
        return self

    def spec(self) -> InstrumentSpec:
        """The trading rules as the protocol describes them."""
        return InstrumentSpec(
            instrument=self.instrument,
            tick_size=self.tick_size,
            lot_size=self.lot_size,
            min_qty=self.min_qty if self.min_qty is not None else self.lot_size,
        )


def _default_instruments() -> list[PaperInstrument]:
    return [
        PaperInstrument(
            instrument="BTC/USD",
            tick_size=Decimal("0.1"),
            lot_size=Decimal("0.0001"),
            initial_price=Decimal("60000.0"),
            spread_ticks=10,
            level_gap_ticks=5,
            level_lots=(10, 500),
            taker_lots=(1, 200),
        ),
        PaperInstrument(
            instrument="ETH/USD",
            tick_size=Decimal("0.01"),
            lot_size=Decimal("0.001"),
            initial_price=Decimal("3000.00"),
            spread_ticks=10,
            level_gap_ticks=5,
            level_lots=(10, 500),
            taker_lots=(1, 200),
        ),
    ]


class PaperConfig(_Frozen):
    """The paper venue: instruments, starting cash, fees, and the synthetic market."""

    instruments: list[PaperInstrument] = Field(
        default_factory=_default_instruments, min_length=1, description="Tradable instruments."
    )
    starting_cash: dict[Currency, ConfigDecimal] = Field(
        default_factory=lambda: {"USD": Decimal(100_000)},
        description="Cash every trading account opens with, per currency.",
    )
    maker_fee_bps: ConfigDecimal = Field(
        default=Decimal(1),
        ge=-100,
        le=1000,
        description="Fee on resting (maker) executions, basis points of notional; < 0 rebates.",
    )
    taker_fee_bps: ConfigDecimal = Field(
        default=Decimal(5),
        ge=0,
        le=1000,
        description="Fee on crossing (taker) executions, basis points of notional.",
    )
    seed: int = Field(default=0, description="Seed of the random walk; same seed, same market.")
    step_interval_s: float = Field(
        default=0.1, gt=0, le=3600, description="Wall-clock seconds between market steps."
    )
    replay_file: Path | None = Field(
        default=None,
        description="JSONL file of recorded market events to replay instead of the random walk.",
    )
    replay_speed: float = Field(
        default=1.0, gt=0, description="Replay time multiplier (2.0 = twice as fast)."
    )
    max_backlog: int = Field(
        default=10_000,
        ge=1,
        description="Undelivered events above which market steps pause for a slow consumer.",
    )
    retain_finished_orders: int = Field(
        default=RETAIN_FINISHED_ORDERS,
        ge=100,
        description="Finished orders of each trading account the exchange keeps in memory "
        "(about 1 KB each; working orders are always there). An older one is read from the "
        "exchange's store when asked for, and answered as before: its status, or a new order "
        "repeating its client_order_id. Bounds the exchange's memory and start-up time "
        "however long its accounts trade. A venue without a store keeps every order.",
    )
    retain_fills: int = Field(
        default=RETAIN_FILLS,
        ge=100,
        description="Fills of each trading account the exchange keeps in memory (about 1 KB "
        "each); fills since an older time are read from its store. A venue without a store "
        "keeps every fill.",
    )

    @model_validator(mode="after")
    def _unique_instruments(self) -> PaperConfig:
        names = [i.instrument for i in self.instruments]
        if len(names) != len(set(names)):
            raise ValueError("instruments must be unique")
        return self
