"""Benchmark: market-data fan-out, one Broker link → one Market worker → 100 algo connections.

Run with `python -m bench.bench_fanout [--connections N] [--repeats R] [--window S] [--json]`.

* **platform**: a real Market worker (`bench.market_proc`: `MarketService` on uvloop in its
  own process) with N raw WebSocket sessions (`bench.wsclient`, spread over `--client-procs`
  processes), all subscribed to BTC/USD trades. Upstream, `bench.md_source` plays the Broker
  worker on the link: it emits trades at a set rate and writes them with the Broker's own
  `MarketLink` (queue, writer, `coalesce` into `market` frames).
* **bare relay** baseline, in the same run: `bench.fanout_relay`, one aiohttp/uvloop process
  that receives the same `market` frames from the same source (a `MarketLink` too) and writes
  each frame as it came to N clients, nothing parsed.
* **clients**: the client processes' own capacity, measured with `fanout_relay --blast`, which
  writes one pre-built frame over and over (the clients set the pace), with 1 event per frame
  (what the relay sends) and `--blast-events` per frame (about what the platform sends).

Delivered = market-data events counted at the clients (each `"type":"trade"`), not frames.
For each target the source rate goes up a ladder, doubling from `--start` to `--max-rate`
(every rung is run), then is bisected twice between the best rung the target kept up with and
the next one. Kept up = delivered ≥ 95 % of emitted × N and no connection closed. A target's
figure is the highest delivered rate it kept up with ("peak": the highest delivered rate seen
at any step, kept up or not). The relay is then also run at the rate the platform sustained.
Each step: 1 s warm-up, then a `--window` s measurement with the CPU seconds of every process.
The table is the median of the repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from bench.harness import (
    Child,
    ClientGroup,
    Rig,
    cpu_seconds,
    machine,
    wait_quiet,
)

KEEP_UP = 0.95


class Target:
    """One fan-out under test (the platform's Market worker or the bare relay)."""

    def __init__(self, name: str, rig: Rig, connections: int, procs: int) -> None:
        self.name = name
        self.rig = rig
        self.connections = connections
        self.procs = procs
        self.source_target = "market" if name == "platform" else "feed"
        relay = rig.relay
        self.pid = rig.market.pid if name == "platform" or relay is None else relay.pid
        self.group: ClientGroup | None = None

    def connect(self) -> ClientGroup:
        if self.group is None:
            if self.name == "platform":
                self.group = ClientGroup(self.rig.session_url, self.rig.tokens(self.connections),
                                         self.procs, hello=True)
            else:
                assert self.rig.relay is not None
                self.group = ClientGroup(self.rig.relay.url,
                                         [[f"r{i}", ""] for i in range(self.connections)],
                                         self.procs, hello=False)
        return self.group

    def drop(self) -> None:
        if self.group is not None:
            self.group.stop()
            self.group = None

    def step(self, rate: float, window: float, warmup: float = 1.0) -> dict[str, Any]:
        group = self.connect()
        control = self.rig.control
        control.rate(rate, self.source_target)
        time.sleep(warmup)
        pids = {"target": self.pid, "source": self.rig.source.pid}
        s0, e0 = group.snap(), control.stats()["emitted"]
        c0 = {k: cpu_seconds(p) for k, p in pids.items()}
        t0 = time.monotonic()
        time.sleep(window)
        stats = control.stats()
        s1, e1 = group.snap(), stats["emitted"]
        c1 = {k: cpu_seconds(p) for k, p in pids.items()}
        backlog = sum(stats["backlog"][self.source_target])
        elapsed = time.monotonic() - t0
        control.rate(0, self.source_target)
        wait_quiet(group)
        delivered = (s1["events"] - s0["events"]) / elapsed
        emitted = (e1 - e0) / elapsed
        out = {"rate": rate, "emitted_per_s": emitted, "delivered_per_s": delivered,
               "frames_per_s": (s1["frames"] - s0["frames"]) / elapsed,
               "events_per_frame": (s1["events"] - s0["events"]) / max(1, s1["frames"]
                                                                       - s0["frames"]),
               "closed": s1["closed"], "source_backlog": backlog,
               "cpu": {**{k: (c1[k] - c0[k]) / elapsed for k in pids},
                       "clients": (s1["cpu"] - s0["cpu"]) / elapsed}}
        out["kept_up"] = bool(delivered >= KEEP_UP * emitted * self.connections
                              and not s1["closed"] and emitted > 0)
        if s1["closed"]:
            self.drop()  # the Market closed slow sessions: start the next step afresh
        return out

    def ramp(self, start: float, max_rate: float, window: float, log: Any) -> dict[str, Any]:
        steps: list[dict[str, Any]] = []

        def run(rate: float) -> bool:
            result = self.step(rate, window)
            steps.append(result)
            log(f"  {self.name:<8} rate {rate:>8.0f}/s  emitted {result['emitted_per_s']:>8.0f}/s"
                f"  delivered {result['delivered_per_s']:>10.0f}/s  frames "
                f"{result['frames_per_s']:>8.0f}/s ({result['events_per_frame']:.0f} ev)"
                f"  cpu target {result['cpu']['target']:.2f}"
                f" clients {result['cpu']['clients']:.2f} source {result['cpu']['source']:.2f}"
                f"  closed {result['closed']:.0f} backlog {result['source_backlog']}"
                f"  {'ok' if result['kept_up'] else 'BEHIND'}")
            return bool(result["kept_up"])

        # Every rung of the ladder is run: a bare relay's capacity is not monotonic in the rate
        # (at a few hundred events/s every link frame carries one event and costs it 100
        # writes; at tens of thousands they carry a hundred events for the same writes).
        rate = start
        while rate <= max_rate:
            run(rate)
            rate *= 2
        kept = [s["rate"] for s in steps if s["kept_up"]]
        above = [s["rate"] for s in steps if kept and s["rate"] > max(kept)]
        if kept and above:  # bisect between the best rung kept up and the next one
            good, bad = max(kept), min(above)
            for _ in range(2):
                middle = (good + bad) / 2
                if run(middle):
                    good = middle
                else:
                    bad = middle
        sustained = [s for s in steps if s["kept_up"]]
        best = max(sustained, key=lambda s: s["delivered_per_s"]) if sustained else None
        return {"sustained_per_s": best["delivered_per_s"] if best else 0.0,
                "peak_per_s": max(s["delivered_per_s"] for s in steps),
                "best_step": best, "steps": steps}


def client_capacity(rig: Rig, connections: int, procs: int, events: int, window: float
                    ) -> dict[str, Any]:
    blaster = Child("bench.fanout_relay", "--blast", str(events))
    try:
        group = ClientGroup(blaster.url, [[f"c{i}", ""] for i in range(connections)], procs,
                            hello=False)
        try:
            time.sleep(1.0)
            s0, c0, t0 = group.snap(), cpu_seconds(blaster.pid), time.monotonic()
            time.sleep(window)
            s1, c1 = group.snap(), cpu_seconds(blaster.pid)
            elapsed = time.monotonic() - t0
        finally:
            group.stop()
    finally:
        blaster.stop()
    return {"events_per_frame": events,
            "delivered_per_s": (s1["events"] - s0["events"]) / elapsed,
            "cpu": {"clients": (s1["cpu"] - s0["cpu"]) / elapsed,
                    "blaster": (c1 - c0) / elapsed}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_fanout")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--start", type=float, default=100.0,
                        help="first source rate of each ladder, events/s")
    parser.add_argument("--max-rate", type=float, default=102400.0,
                        help="last source rate of each ladder, events/s")
    parser.add_argument("--blast-events", type=int, default=100,
                        help="events per frame in the client-capacity measurement")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    def log(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr, flush=True)

    load_before = machine()["load"]
    results: dict[str, list[dict[str, Any]]] = {"platform": [], "relay": [],
                                                 "relay_at_platform_rate": [], "clients_1": [],
                                                 f"clients_{args.blast_events}": []}
    rig = Rig(relay=True)
    targets = [Target(name, rig, args.connections, args.client_procs)
               for name in ("relay", "platform")]
    try:
        for n in range(args.repeats):
            log(f"repeat {n + 1}/{args.repeats}")
            for target in (targets if n % 2 == 0 else targets[::-1]):
                results[target.name].append(target.ramp(args.start, args.max_rate, args.window,
                                                           log))
                target.drop()
            # The relay at the rate the platform sustained: what it delivers under that load.
            best = results["platform"][-1]["best_step"]
            if best is not None:
                relay = targets[0]
                step = relay.step(best["rate"], args.window)
                relay.drop()
                results["relay_at_platform_rate"].append(step)
                log(f"  relay at the platform's rate {best['rate']:.0f}/s: delivered "
                    f"{step['delivered_per_s']:.0f}/s, {step['events_per_frame']:.1f} "
                    f"events/frame, cpu {step['cpu']['target']:.2f}")
            for events in (1, args.blast_events):
                capacity = client_capacity(rig, args.connections, args.client_procs, events,
                                           args.window)
                results[f"clients_{events}"].append(capacity)
                log(f"  clients  capacity {capacity['delivered_per_s']:>10.0f}/s ({events} "
                    f"events/frame, clients cpu {capacity['cpu']['clients']:.2f})")
    finally:
        for target in targets:
            target.drop()
        rig.close()

    summary = {
        "platform": statistics.median(r["sustained_per_s"] for r in results["platform"]),
        "relay": statistics.median(r["sustained_per_s"] for r in results["relay"]),
        "platform_peak": statistics.median(r["peak_per_s"] for r in results["platform"]),
        "relay_peak": statistics.median(
            max([r["peak_per_s"]] + [p["delivered_per_s"] for p in probe])
            for r, probe in zip(results["relay"],
                                [[x] for x in results["relay_at_platform_rate"]]
                                or [[] for _ in results["relay"]])),
        "clients_1": statistics.median(r["delivered_per_s"] for r in results["clients_1"]),
        "clients_n": statistics.median(r["delivered_per_s"]
                                       for r in results[f"clients_{args.blast_events}"]),
    }
    if results["relay_at_platform_rate"]:
        summary["relay_at_platform_rate"] = statistics.median(
            r["delivered_per_s"] for r in results["relay_at_platform_rate"])
    summary["peak_ratio"] = (summary["platform_peak"] / summary["relay_peak"]
                             if summary["relay_peak"] else 0.0)
    summary["ratio"] = summary["platform"] / summary["relay"] if summary["relay"] else 0.0
    info = machine()
    info["load_before"] = load_before
    if args.json:
        print(json.dumps({"summary": summary, "runs": results, "machine": info,
                          "connections": args.connections}, indent=2))
        return 0
    print(f"market-data fan-out to {args.connections} connections, median of {args.repeats} "
          f"repeats, delivered events/s; machine {info}")
    print(f"{'':<22}{'sustained':>12}{'peak':>12}")
    print(f"{'platform':<22}{summary['platform']:>12.0f}{summary['platform_peak']:>12.0f}")
    print(f"{'bare relay':<22}{summary['relay']:>12.0f}{summary['relay_peak']:>12.0f}")
    print(f"{'ratio':<22}{summary['ratio']:>12.2f}{summary['peak_ratio']:>12.2f}")
    if "relay_at_platform_rate" in summary:
        print(f"{'relay at that rate':<22}{summary['relay_at_platform_rate']:>12.0f}")
    print(f"{'clients, 1 ev/frame':<22}{summary['clients_1']:>12.0f}")
    print(f"{f'clients, {args.blast_events} ev/frame':<22}{summary['clients_n']:>12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
