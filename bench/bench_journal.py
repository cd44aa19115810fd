"""What the journal's WAL checkpoints cost the appends that go on meanwhile.

Run with `python -m bench.bench_journal [--seconds S] [--rate R] [--repeats N]
[--reader-every S] [--wal-limit BYTES] [--json]`.

One process appends order-sized entries to a `workers.broker.journal.Journal` at a steady
rate (`--rate` per second, paced by the clock, not back to back), exactly as an account owner
does, and times each `append` on its own. Three cases, each on a fresh journal:

* **bare** — the baseline: the same appends with no checkpoint at all (the WAL only grows);
* **checkpointed** — as the Broker runs: the checkpoint thread beside the writer;
* **checkpointed + reader** — the same, while a second process reads the journal the way the
  snapshot side process does (the newest 20,000 entries in one query, every `--reader-every`
  seconds), so that a checkpoint that waits for readers shows.

`--wal-limit` (default 1 MiB, the Broker's is 16 MiB) makes the WAL cross its limit, and the
checkpoint rewind it, every few seconds instead of every minute or so, so that a short run
sees many rewinds. Reports per case the median over repeats of p50/p99/p99.9/max of one append
(µs), the appends that took over 5 ms, and the largest WAL seen.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import machine, percentiles
from workers.broker.journal import Journal, JournalReader

PAYLOAD = {
    "client_order_id": "c-000000000001", "instrument": "BTC/USD", "side": "buy",
    "type": "limit", "qty": "0.0100", "price": "25000.1", "tif": "gtc",
    "status": "accepted", "venue_order_id": "p-000000000001", "filled_qty": "0",
    "reason": None, "session_id": "s-1", "customer": "alice",
}


def reader_loop(path: str, every_s: float, stop: Any) -> None:
    """Read the newest 20,000 entries in one query every `every_s`, as a snapshot run does."""
    reader = JournalReader(Path(path))
    while not stop.wait(every_s):
        last = reader.last_seq()
        for _ in reader.entries(after_seq=max(0, last - 20_000)):
            pass
    reader.close()


def run_case(case: str, seconds: float, rate: float, wal_limit: int,
             reader_every_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tf-bench-journal-") as tmp:
        path = Path(tmp) / "acct.journal"
        every = 1e9 if case == "bare" else 1.0
        journal = Journal(path, "bench", 1, checkpoint_every_s=every, wal_limit=wal_limit)
        wal = path.with_name(path.name + "-wal")
        stop = multiprocessing.Event()
        reader = None
        if case == "checkpointed + reader":
            reader = multiprocessing.Process(target=reader_loop,
                                             args=(str(path), reader_every_s, stop))
            reader.start()
        wal_max = 0
        watching = threading.Event()

        def watch() -> None:
            nonlocal wal_max
            while not watching.wait(0.05):
                try:
                    wal_max = max(wal_max, wal.stat().st_size)
                except OSError:
                    pass

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        samples: list[float] = []
        gap = 1.0 / rate
        number = max(1, round(seconds * rate))
        due = time.perf_counter()
        for _ in range(number):
            now = time.perf_counter()
            if now < due:
                time.sleep(due - now)
            t0 = time.perf_counter_ns()
            journal.append("event", PAYLOAD, session_id="s-1")
            samples.append((time.perf_counter_ns() - t0) / 1000)
            due += gap
        watching.set()
        watcher.join()
        stop.set()
        if reader is not None:
            reader.join(timeout=30)
        journal.close()
    stats = percentiles(samples)
    return {"p50": stats["p50"], "p99": stats["p99"], "p99.9": stats["p999"],
            "max": max(samples), "over_5ms": sum(1 for s in samples if s > 5000),
            "appends": number, "wal_max_mb": wal_max / 2**20}


CASES = ("bare", "checkpointed", "checkpointed + reader")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_journal",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="appends per second")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--wal-limit", type=int, default=1 << 20)
    parser.add_argument("--reader-every", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
    for repeat in range(args.repeats):
        order = CASES if repeat % 2 == 0 else tuple(reversed(CASES))
        for case in order:
            runs[case].append(run_case(case, args.seconds, args.rate, args.wal_limit,
                                       args.reader_every))
    table = {case: {key: statistics.median(run[key] for run in results)
                    for key in results[0]}
             for case, results in runs.items()}
    if args.json:
        print(json.dumps({"machine": machine(), "args": vars(args), "median": table,
                          "runs": runs}, indent=2))
        return 0
    print(f"{args.repeats} repeats x {args.seconds:.0f} s at {args.rate:.0f} appends/s, "
          f"wal limit {args.wal_limit} B; median of the repeats")
    print(f"{'case':24} {'p50':>7} {'p99':>7} {'p99.9':>8} {'max':>9} {'>5ms':>5} {'WAL MB':>7}")
    for case, row in table.items():
        print(f"{case:24} {row['p50']:7.1f} {row['p99']:7.1f} {row['p99.9']:8.1f} "
              f"{row['max']:9.1f} {row['over_5ms']:5.0f} {row['wal_max_mb']:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
