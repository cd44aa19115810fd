"""Compare the order round trip of two checkouts in one run: did a change make it faster?

Run with `python -m bench.compare_roundtrip --rev REV [--rounds N] [--chunk C] [--json]`.

Two fleets run side by side, each as `bench.bench_roundtrip` starts one: **base** from a
temporary `git worktree` of `REV` (or from the checkout at `--base-dir`), **this** from this
checkout, both on this checkout's `.venv`. One algo session on each sends orders exactly as
the round-trip benchmark does (timed to `order_accepted`, then cancelled untimed), the two
taking turns `--chunk` orders at a time for `--rounds` rounds (the first of the pair
alternates). On a shared VM whose speed drifts by more than most changes are worth, taking
turns is what makes the two figures comparable: both meet the same machine.

Reports each side's p50/p99/p99.9 and the CPU time each process used per order (the order and
its cancel; `/proc` schedstat), and this ÷ base for both. Two runs of the same code differ by
up to about ±3 % here, so repeat a comparison before believing a smaller difference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from bench.bench_roundtrip import (
    REPO,
    PlatformSession,
    Side,
    fleet_pids,
    start_fleet,
    stop_fleet,
    wait_file,
)
from bench.harness import machine, percentiles

PROCESSES = ("market", "broker", "paper")


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """A detached `git worktree` of `rev`, removed afterwards."""
    where = Path(tempfile.mkdtemp(prefix="tf-compare-")) / "base"
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(where), rev],
                   cwd=REPO, check=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=REPO,
                       check=False)
        with contextlib.suppress(OSError):
            where.parent.rmdir()


async def compare(data_dirs: dict[str, Path], rounds: int, chunk: int
                  ) -> dict[str, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        sides: dict[str, Side] = {}
        for name, data_dir in data_dirs.items():
            await wait_file(data_dir / "run" / "market-manager.url", 60)
            session = PlatformSession(data_dir)
            await session.open(http)
            await session.measure(0, 100)  # warm-up, not counted
            sides[name] = Side(fleet_pids(data_dir), session.measure)
        names = list(sides)
        for turn in range(rounds):
            for name in names if turn % 2 == 0 else names[::-1]:
                await sides[name].run(chunk)
        return {name: {"latency_us": percentiles(side.samples),
                       "cpu_us_per_order": side.per_order()} for name, side in sides.items()}


def report(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """this ÷ base: latency percentiles and the fleet's CPU per order."""
    base, this = results["base"], results["this"]
    ratios = {k: this["latency_us"][k] / base["latency_us"][k] for k in ("p50", "p99", "p999")}
    fleet = {name: sum(r["cpu_us_per_order"][p] for p in PROCESSES)
             for name, r in results.items()}
    ratios["fleet_cpu"] = fleet["this"] / fleet["base"]
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare_roundtrip")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--rev", help="the base: a git revision of this repository")
    where.add_argument("--base-dir", type=Path, help="the base: another checkout")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--chunk", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with contextlib.ExitStack() as stack:
        base_dir = args.base_dir or stack.enter_context(worktree(args.rev))
        fleets = {"base": start_fleet(base_dir), "this": start_fleet(REPO)}
        try:
            results = asyncio.run(compare({name: d for name, (d, _) in fleets.items()},
                                          max(1, args.rounds), max(1, args.chunk)))
        finally:
            for data_dir, proc in fleets.values():
                stop_fleet(data_dir, proc)
    ratios = report(results)
    if args.json:
        print(json.dumps({"results": results, "this_over_base": ratios, "machine": machine(),
                          "rounds": args.rounds, "chunk": args.chunk}, indent=2))
        return 0
    print(f"order round trip, {args.rounds} x {args.chunk} orders per side, taking turns; "
          f"base = {args.rev or args.base_dir}")
    print(f"{'':<8}{'p50':>8}{'p99':>8}{'p99.9':>8}   CPU µs per order (order + cancel)")
    for name, r in results.items():
        lat, cpu = r["latency_us"], r["cpu_us_per_order"]
        print(f"{name:<8}{lat['p50']:>8.0f}{lat['p99']:>8.0f}{lat['p999']:>8.0f}   "
              + "  ".join(f"{k} {v:.0f}" for k, v in cpu.items()))
    print(f"{'this÷base':<8}{ratios['p50']:>7.3f}{ratios['p99']:>8.3f}{ratios['p999']:>8.3f}"
          f"   fleet CPU {ratios['fleet_cpu']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
