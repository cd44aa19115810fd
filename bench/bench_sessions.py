"""Benchmark: event latency with 1,000 concurrent sessions on one Market worker vs with 10.

Run with `python -m bench.bench_sessions [--sessions 10,1000] [--rate R] [--window S]
[--repeats N] [--streams shared|own] [--json]`.

The same rig as the fan-out benchmark: a real Market worker (`bench.market_proc`), the
rate-controlled source playing its Broker on the link (`bench.md_source`, writing through the
Broker's own `MarketLink`), and raw WebSocket sessions (`bench.wsclient`, latency mode) spread
over `--client-procs` processes. Each trade is stamped `ts = time.time_ns()` as it is built.

* `--streams shared` (the default, the worst case): every session subscribes to BTC/USD
  trades and the source emits `--rate` trades per second, so each event is written to every
  session — with 1,000 sessions, 1,000 socket writes per event.
* `--streams own`: session i subscribes to the trades of its own instrument S{i}/USD and the
  source emits `--rate` × sessions trades per second in turn over them, so every session
  still gets `--rate` events per second but each event goes to one session: what 1,000
  sessions cost the Market beyond the traffic itself.

Event latency = the kernel's receive timestamp of the bytes at the client socket
(`SO_TIMESTAMPNS`, CLOCK_REALTIME on the same host) − the event's `ts`: source queue and link
writer, the link, the Market worker (parse, fan-out, session writers), the session socket. The
client's own loop is not in it (`untimed` counts reads that came without a kernel timestamp
and were timed by the client's clock instead). Every delivery of every session is a sample.
Baseline, in the same run: the same source frames through the bare relay
(`bench.fanout_relay`: every frame to every connection for `shared`; with `--route` for `own`,
each event alone to the connection of its instrument), to the same number of connections.

Each repeat runs each session count (in alternating order) for `--window` seconds after a 1 s
warm-up, on a fresh Market worker, relay and source, the platform and the relay in turn
(alternating which goes first); the table is the median over repeats of p50/p99/p99.9, and
each target's ratio of the large count to the reference count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from bench.harness import ClientGroup, Rig, cpu_seconds, machine, percentiles


def measure(rig: Rig, sessions: int, procs: int, rate: float, window: float,
            own: bool = False, target: str = "platform") -> dict[str, Any]:
    """One measurement of `sessions` connections on the Market worker (`platform`) or on the
    bare relay (`relay`) of the same rig."""
    if target == "platform":
        pairs = rig.tokens(sessions)
        url, pid, feed = rig.session_url, rig.market.pid, "market"
    else:
        assert rig.relay is not None, "a rig with a relay"
        pairs = [[f"r{i}", ""] for i in range(sessions)]
        url, pid, feed = rig.relay.url, rig.relay.pid, "feed"
    if own:  # session i follows S{i}/USD alone
        pairs = [[sid, token, f"S{i}/USD"] for i, (sid, token) in enumerate(pairs)]
    # The relay needs no hello; on a stream per session it is told the instrument, as the
    # Market is by the subscription.
    hello = target == "platform" or own
    group = ClientGroup(url, pairs, min(procs, sessions), hello=hello, mode="latency",
                        subscribe=None if hello else [])
    try:
        rig.control.rate(rate * sessions if own else rate, feed)
        time.sleep(1.0)
        group.latencies()  # drop the warm-up
        e0, c0, s0 = rig.control.stats()["emitted"], cpu_seconds(pid), group.snap()
        t0 = time.monotonic()
        time.sleep(window)
        samples, untimed = group.latencies()
        e1, c1, s1 = rig.control.stats()["emitted"], cpu_seconds(pid), group.snap()
        elapsed = time.monotonic() - t0
        rig.control.rate(0, feed)
        time.sleep(0.5)
    finally:
        group.stop()
    emitted = e1 - e0
    result: dict[str, Any] = percentiles(samples)
    result.update({"sessions": sessions, "samples": len(samples), "untimed": untimed,
                   "expected": emitted if own else emitted * sessions, "closed": s1["closed"],
                   "server_cpu": (c1 - c0) / elapsed,
                   "clients_cpu": (s1["cpu"] - s0["cpu"]) / elapsed})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_sessions")
    parser.add_argument("--sessions", default="10,1000",
                        help="comma-separated session counts; the first is the reference")
    parser.add_argument("--rate", type=float, default=20.0, help="trades per second emitted")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--client-procs", type=int, default=4)
    parser.add_argument("--streams", choices=("shared", "own"), default="shared",
                        help="every session on one stream, or each on a stream of its own")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.sessions.split(",")]

    load_before = machine()["load"]
    own = args.streams == "own"
    targets = ("platform", "relay")
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {t: {n: [] for n in counts}
                                                         for t in targets}
    for repeat in range(args.repeats):
        for n in (counts if repeat % 2 == 0 else counts[::-1]):
            # A fresh Market worker each time: the sessions of the previous measurement would
            # otherwise linger for `detached_grace_s` (resumable) on the one measured next.
            rig = Rig(relay=True, instruments=n if own else 0, route=own)
            try:
                for target in (targets if repeat % 2 == 0 else targets[::-1]):
                    result = measure(rig, n, args.client_procs, args.rate, args.window, own,
                                     target)
                    runs[target][n].append(result)
                    if not args.json:
                        print(f"  repeat {repeat + 1}: {target:<8} {n:>5} sessions  p50 "
                              f"{result['p50']:>7.0f}  p99 {result['p99']:>7.0f}  p99.9 "
                              f"{result['p999']:>7.0f} µs  samples {result['samples']}/"
                              f"{result['expected']} (untimed {result['untimed']})  "
                              f"{target} cpu {result['server_cpu']:.2f}  clients cpu "
                              f"{result['clients_cpu']:.2f}", file=sys.stderr, flush=True)
            finally:
                rig.close()

    keys = ("p50", "p99", "p999")
    summary = {t: {n: {k: statistics.median(r[k] for r in runs[t][n]) for k in keys}
                   for n in counts} for t in targets}
    base = counts[0]
    ratio = {t: {n: {k: summary[t][n][k] / summary[t][base][k] if summary[t][base][k] else 0.0
                     for k in keys} for n in counts} for t in targets}
    info = machine()
    info["load_before"] = load_before
    if args.json:
        print(json.dumps({"summary": summary, "ratio": ratio, "runs": runs, "machine": info,
                          "rate": args.rate, "window": args.window, "streams": args.streams},
                         indent=2))
        return 0
    print(f"event latency (source ts → client socket), {args.rate:g} trades/s per session, "
          f"{args.streams} streams, median of {args.repeats} repeats, µs; machine {info}")
    print(f"{'':<22}{'p50':>10}{'p99':>10}{'p99.9':>10}")
    for t in targets:
        for n in counts:
            s = summary[t][n]
            print(f"{f'{t} {n}':<22}{s['p50']:>10.0f}{s['p99']:>10.0f}{s['p999']:>10.0f}")
        for n in counts[1:]:
            r = ratio[t][n]
            print(f"{f'{t} {n} ÷ {base}':<22}{r['p50']:>10.2f}{r['p99']:>10.2f}"
                  f"{r['p999']:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
