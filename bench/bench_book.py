"""Benchmark: Kraken book update apply + checksum, on the recorded feeds.

Run with ``python -m bench.bench_book [--repeats N] [--json]``. Recordings are read from
``$TRADEFLEET_EXCHANGE_DATA`` or ``<repo>/../shared/data/exchanges``.

Before every pass the frames are decoded and parsed afresh, untimed (as on a live feed,
no pass sees objects an earlier pass already touched). Then, ``repeats`` times over the
whole recording, each *update* is timed on its own with ``time.perf_counter_ns``:

* **apply + checksum** -- ``SpotBookBuilder.receive(frame)``: apply every level, truncate
  to depth, compute the CRC32 and compare it with the frame's. For Kraken Futures,
  ``FuturesBookBuilder.receive(delta)``: ``seq`` check, apply, crossed-book check (the
  venue sends no checksum).
* **parse** baseline -- ``json.loads(text, parse_float=Decimal)`` + ``parse_frame``.
* **plain dict** baseline -- the same levels written into two bare ``dict`` objects
  (no ordering, no depth, no checksum): the floor any book must pay.

Snapshots are applied but not timed. Each repeat yields p50/p99/p99.9 and the mean; the
table shows the median of the repeats. Timings include one timer call (reported as
"timer overhead") and the garbage collector stays enabled, as in production.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from workers.broker.adapters.kraken import schemas as spot
from workers.broker.adapters.kraken.book import BookChanged, SpotBookBuilder
from workers.broker.adapters.kraken_futures import schemas as fschemas
from workers.broker.adapters.kraken_futures.book import BookChanged as FuturesBookChanged
from workers.broker.adapters.kraken_futures.book import FuturesBookBuilder
from workers.broker.replay import Sent, read_recording


def data_dir() -> Path:
    """Where the shared recordings live."""
    override = os.environ.get("TRADEFLEET_EXCHANGE_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "exchanges"


@dataclass(slots=True)
class Dataset:
    """One recording prepared for timing."""

    name: str
    texts: list[str]  # raw JSON text of every book frame, in order
    is_update: list[bool]
    levels: int  # levels carried by all updates
    make_builder: Callable[[], Any]
    futures: bool = False


def _frame_texts(path: Path) -> list[str]:
    """Raw text per received frame (fixtures are re-serialised exactly as upstream did)."""
    kind, _ = read_recording(path)
    if kind.startswith("json"):
        document = json.loads(path.read_text(encoding="utf-8"))
        frames: list[Any] = []
        if isinstance(document, dict) and "init" in document:
            init = document["init"]
            frames += init if isinstance(init, list) else [init]
            frames += document["updates"]
        else:
            frames = document if isinstance(document, list) else [document]
        return [json.dumps(frame, separators=(",", ":")) for frame in frames]
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith(("{", "[")):
            texts.append(line)
        elif ": " in line and " <-" not in line and " ->" not in line:
            texts.append(line.split(": ", 1)[1])
    return texts


def _subscribed_depths(path: Path) -> dict[str, int]:
    depths: dict[str, int] = {}
    for item in read_recording(path)[1]:
        if isinstance(item, Sent):
            depths.update(spot.book_subscription_request_depths(item.payload))
    return depths


def spot_dataset(name: str, path: Path, precisions: dict[str, spot.PairPrecision]) -> Dataset:
    """Book frames of a spot recording, parsed."""
    depths = _subscribed_depths(path)
    texts, is_update = [], []
    levels = 0
    for text in _frame_texts(path):
        frame = spot.parse_frame(spot.decode(text))
        if isinstance(frame, spot.BookMessage):
            update = frame.type == "update"
            if update:
                levels += sum(len(d.bids) + len(d.asks) for d in frame.data)
        elif isinstance(frame, spot.BookMessageV1):
            update = not frame.is_snapshot
            if update:
                levels += len(frame.bids) + len(frame.asks)
        else:
            continue
        texts.append(text)
        is_update.append(update)

    def make_builder() -> SpotBookBuilder:
        builder = SpotBookBuilder(precisions=precisions)
        for pair, depth in depths.items():
            builder.subscribe(pair, depth)
        return builder

    return Dataset(name, texts, is_update, levels, make_builder)


def futures_dataset(name: str, path: Path) -> Dataset:
    """Book frames of a Kraken Futures recording, parsed."""
    texts, is_update = [], []
    for text in _frame_texts(path):
        frame = fschemas.parse_frame(fschemas.decode(text))
        if isinstance(frame, (fschemas.BookSnapshot, fschemas.BookDelta)):
            texts.append(text)
            is_update.append(isinstance(frame, fschemas.BookDelta))
    return Dataset(name, texts, is_update, sum(is_update), FuturesBookBuilder, True)


# ---------------------------------------------------------------------------- timing


def _timed(items: Sequence[Any], timed: Sequence[bool], work: Callable[[Any], Any]) -> list[int]:
    clock = time.perf_counter_ns
    samples = []
    for item, measure in zip(items, timed):
        if measure:
            start = clock()
            work(item)
            samples.append(clock() - start)
        else:
            work(item)
    return samples


def fresh_frames(dataset: Dataset) -> list[Any]:
    """Parse the frames again (untimed) so no pass reuses another pass's objects.

    ``Decimal`` caches its hash; reusing parsed frames would let later passes of a
    dict-based path skip hashing that a live feed (new objects every frame) always pays.
    """
    module = fschemas if dataset.futures else spot
    return [module.parse_frame(module.decode(text)) for text in dataset.texts]


def run_apply(dataset: Dataset) -> list[int]:
    """One pass of apply + checksum; verifies every event afterwards (untimed)."""
    builder = dataset.make_builder()
    events: list[Any] = []
    receive = builder.receive
    frames = fresh_frames(dataset)
    samples = _timed(frames, dataset.is_update, lambda f: events.append(receive(f)))
    expected = FuturesBookChanged if dataset.futures else BookChanged
    flat = events if dataset.futures else [e for batch in events for e in batch]
    bad = [e for e in flat if not isinstance(e, expected)]
    if bad:
        raise SystemExit(f"{dataset.name}: replay did not verify: {bad[0]}")
    return samples


def run_parse(dataset: Dataset) -> list[int]:
    """One pass of decode + parse_frame over the raw frame texts."""
    module = fschemas if dataset.futures else spot
    decode, parse = module.decode, module.parse_frame
    return _timed(dataset.texts, dataset.is_update, lambda text: parse(decode(text)))


def _plain_dict_work(futures: bool) -> Callable[[Any], None]:
    bids: dict[Decimal, Decimal] = {}
    asks: dict[Decimal, Decimal] = {}

    def write(side: dict[Decimal, Decimal], levels: Sequence[Any]) -> None:
        for level in levels:
            if level[1]:
                side[level[0]] = level[1]
            else:
                side.pop(level[0], None)

    def spot_work(frame: Any) -> None:
        if isinstance(frame, spot.BookMessageV1):
            write(bids, frame.bids)
            write(asks, frame.asks)
        else:
            for data in frame.data:
                write(bids, data.bids)
                write(asks, data.asks)

    def futures_work(frame: Any) -> None:
        if isinstance(frame, fschemas.BookDelta):
            side = bids if frame.side == "buy" else asks
            if frame.qty:
                side[frame.price] = frame.qty
            else:
                side.pop(frame.price, None)

    return futures_work if futures else spot_work


def run_plain_dict(dataset: Dataset) -> list[int]:
    """One pass of the bare dict baseline."""
    frames = fresh_frames(dataset)
    return _timed(frames, dataset.is_update, _plain_dict_work(dataset.futures))


def percentile(sorted_samples: Sequence[int], fraction: float) -> float:
    """Nearest-rank percentile."""
    rank = max(1, math.ceil(fraction * len(sorted_samples)))
    return float(sorted_samples[rank - 1])


@dataclass(slots=True)
class Figures:
    """Median over repeats of each statistic, in microseconds."""

    p50: float
    p99: float
    p999: float
    mean: float


def measure(run: Callable[[Dataset], list[int]], dataset: Dataset, repeats: int) -> Figures:
    """Run ``repeats`` passes and take the median of each statistic."""
    stats: list[tuple[float, float, float, float]] = []
    for _ in range(repeats):
        gc.collect()
        samples = sorted(run(dataset))
        stats.append(
            (
                percentile(samples, 0.50),
                percentile(samples, 0.99),
                percentile(samples, 0.999),
                statistics.fmean(samples),
            )
        )
    medians = [statistics.median(column) / 1000 for column in zip(*stats)]
    return Figures(*medians)


def timer_overhead_ns() -> float:
    """Median cost of an empty timed region."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(100_000):
        start = clock()
        samples.append(clock() - start)
    return statistics.median(samples)


def datasets() -> list[Dataset]:
    """The recordings this benchmark replays."""
    base = data_dir()
    precisions = spot.pair_precisions(
        json.loads((base / "reference" / "kraken_v2_instrument_snapshot.json").read_text())
    )
    return [
        spot_dataset(
            "spot v2 BTC/USD depth 10 (precision 1/8)",
            base / "kraken_spot_v2" / "btcusd_book10_2023-07-30.json",
            {"BTC/USD": precisions["BTC/USD"]},
        ),
        spot_dataset(
            "spot v1 XBT/USD depth 10 (wire text)",
            base / "kraken_spot_v1" / "xbtusd_book10_2023-08-30.json",
            {},
        ),
        spot_dataset(
            "spot v1 10 pairs depth 1000 (wire text)",
            base / "kraken_spot_v1" / "cryptofeed_book1000_10pairs_2021-04-17.txt",
            {},
        ),
        futures_dataset(
            "futures 10 products, full depth (seq + cross check, no checksum)",
            base / "kraken_futures" / "cryptofeed_book_trade_ticker_2021-07-22.txt",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table (or JSON)."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_book", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results: list[dict[str, Any]] = []
    for dataset in datasets():
        apply = measure(run_apply, dataset, args.repeats)
        parse = measure(run_parse, dataset, args.repeats)
        plain = measure(run_plain_dict, dataset, args.repeats)
        results.append(
            {
                "dataset": dataset.name,
                "updates": sum(dataset.is_update),
                "levels_per_update": dataset.levels / max(1, sum(dataset.is_update)),
                "apply_checksum_us": asdict(apply),
                "parse_us": asdict(parse),
                "plain_dict_us": asdict(plain),
                "ratio_apply_to_plain_dict_p50": apply.p50 / plain.p50,
                "ratio_apply_to_parse_p50": apply.p50 / parse.p50,
            }
        )
    environment = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "timer_overhead_ns": timer_overhead_ns(),
    }
    if args.json:
        print(json.dumps({"environment": environment, "results": results}, indent=2))
        return 0
    print(
        f"python {environment['python']} on {environment['machine']}, "
        f"{environment['cpus']} CPUs; median of {args.repeats} repeats; "
        f"timer overhead {environment['timer_overhead_ns']:.0f} ns per sample\n"
    )
    print(
        "| dataset | updates | levels/update | apply+checksum p50 / p99 / p99.9 / mean (µs) "
        "| parse p50 (µs) | plain dict p50 (µs) | apply ÷ plain dict | apply ÷ parse |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for row in results:
        a = row["apply_checksum_us"]
        print(
            f"| {row['dataset']} | {row['updates']} | {row['levels_per_update']:.2f} "
            f"| {a['p50']:.2f} / {a['p99']:.2f} / {a['p999']:.2f} / {a['mean']:.2f} "
            f"| {row['parse_us']['p50']:.2f} | {row['plain_dict_us']['p50']:.2f} "
            f"| {row['ratio_apply_to_plain_dict_p50']:.1f}x | {row['ratio_apply_to_parse_p50']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
