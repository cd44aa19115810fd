"""Benchmark: order round trip algo → Market → Broker → paper exchange → ack.

Run with `python -m bench.bench_roundtrip [--orders N] [--repeats R] [--chunk C] [--json]`.

* **platform**: `tradefleet up --port-base 0` in a temporary data dir (one Broker, one Market,
  no hosted traders); a raw WebSocket client opens a session through the MarketManager and sends
  `new_order` (limit buy far below the market, so it rests) one at a time, timing from the send
  to the `order_accepted` for that client_order_id. Orders are cancelled between timed sends
  (untimed) so the book does not grow.
* **bare relay** baseline, in the same run: the same frames through a bare two-hop WebSocket
  relay (client → hop → hop → answerer, each its own process) that does nothing but forward.

In each repeat the two paths take turns, `--chunk` orders at a time (100), until each has
timed `--orders`: both then meet the same machine, whose speed drifts on a shared VM by more
than the effects measured. Each repeat yields p50/p99/p99.9; the table shows the median of the
repeats and the ratio. Each repeat also reads the CPU time every process on the path used
while it ran (from /proc; the client's own from `time.process_time`), per timed order: for the
platform that is the order and its untimed cancel (two requests), for the relay one message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import cpu_seconds, percentiles

REPO = Path(__file__).resolve().parents[1]
CONFIG = """
traders = []
log_level = "WARNING"
[managers.market]
desired = 1
[managers.trader]
desired = 0
[market]
# The benchmark sends orders back to back from one session: lift the per-session flood guard.
flood_rate_per_s = 100000.0
flood_burst = 100000.0
"""


async def wait_file(path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text().strip()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{path} did not appear")


def fleet_pids(data_dir: Path) -> dict[str, int]:
    """The Market worker, Broker worker and paper exchange of the fleet in `data_dir`."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if str(data_dir) not in argv:
            continue
        if "workers.broker.adapters.paper.server" in argv:
            found["paper"] = int(entry.name)
        elif "workers" in argv and "--kind" in argv:
            kind = argv[argv.index("--kind") + 1]
            if kind in ("market", "broker"):
                found[kind] = int(entry.name)
    return {name: found[name] for name in ("market", "broker", "paper") if name in found}


def order_frame(account: str, cid: str) -> str:
    """The `new_order` both paths send: built per order, the same way on both."""
    return json.dumps({"type": "new_order", "client_order_id": cid, "account": account,
                       "instrument": "BTC/USD", "side": "buy", "order_type": "limit",
                       "qty": "0.01", "price": "1000.0", "time_in_force": "GTC"})


async def until(ws: aiohttp.ClientWebSocketResponse, predicate: Any) -> dict[str, Any]:
    """Decode frames from `ws` until an event matches `predicate`; both paths' answers go
    through it, so the client does the same work per answer on both."""
    deadline = time.monotonic() + 30
    while True:
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            raise RuntimeError(f"the session closed: {msg.type} {msg.data} {msg.extra}")
        data = json.loads(msg.data)
        for event in data["events"] if data["type"] == "batch" else [data]:
            if predicate(event):
                return event  # type: ignore[no-any-return]
            if event.get("type") == "error":
                raise RuntimeError(f"refused: {event}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer within 30 s; last frame {data}")


def acked(cid: str) -> Any:
    return lambda e: e.get("client_order_id") == cid and e["type"] in (
        "order_accepted", "order_rejected")


class Side:
    """One of the two paths under test, measured chunk by chunk: its latency samples and the
    CPU time its processes (and this client) used, summed over the chunks of a repeat."""

    def __init__(self, pids: dict[str, int], measure: Any) -> None:
        self.pids = pids
        self.measure = measure
        self.reset()

    def reset(self) -> None:
        self.samples: list[float] = []
        self.cpu_us = dict.fromkeys([*self.pids, "client"], 0.0)

    async def run(self, orders: int) -> None:
        before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        own = time.process_time()
        self.samples += await self.measure(orders, 0)
        self.cpu_us["client"] += (time.process_time() - own) * 1e6
        for name, pid in self.pids.items():
            self.cpu_us[name] += (cpu_seconds(pid) - before[name]) * 1e6

    def per_order(self) -> dict[str, float]:
        return {name: total / max(1, len(self.samples)) for name, total in self.cpu_us.items()}


class PlatformSession:
    """One algo session through the MarketManager, kept open across repeats."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    async def open(self, http: aiohttp.ClientSession) -> None:
        manager = await wait_file(self.data_dir / "run" / "market-manager.url", 30)
        secrets = json.loads(await wait_file(self.data_dir / "secrets.json", 30))
        deadline = time.monotonic() + 60
        while True:  # wait until the account is owned and a Market takes sessions
            async with http.post(f"{manager}/v1/sessions", json={},
                                 headers={"Authorization":
                                          f"Bearer {secrets['api_token.demo']}"}) as resp:
                grant = await resp.json()
                if resp.status == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no session: {grant}")
            await asyncio.sleep(0.2)
        self.ws = await http.ws_connect(grant["ws_url"], headers={
            "Authorization": f"Bearer {grant['session_token']}"}, max_msg_size=1 << 22)
        await self.ws.send_json({"type": "hello", "session_id": grant["session_id"]})
        self.account = grant["account"]
        self.count = 0

    async def measure(self, orders: int, warmup: int) -> list[float]:
        samples: list[float] = []
        for i in range(orders + warmup):
            self.count += 1
            cid = f"b{os.getpid()}-{self.count}"
            frame = order_frame(self.account, cid)
            start = time.perf_counter_ns()
            await self.ws.send_str(frame)
            event = await until(self.ws, acked(cid))
            elapsed = (time.perf_counter_ns() - start) / 1000
            if event["type"] != "order_accepted":
                raise RuntimeError(f"order refused: {event}")
            if i >= warmup:
                samples.append(elapsed)
            await self.ws.send_json({"type": "cancel_order", "client_order_id": cid,
                                     "account": self.account})
            await until(self.ws, lambda e, c=cid: e.get("client_order_id") == c
                        and e["type"] == "order_cancelled")
        return samples


class RelaySession:
    """One client connection through the bare relay chain, kept open across repeats. The
    client builds each order's frame and decodes the answer exactly as on the platform (the
    answerer's canned ack names client_order_id "c")."""

    async def open(self, http: aiohttp.ClientSession, first_hop: str) -> None:
        self.ws = await http.ws_connect(first_hop)

    async def measure(self, orders: int, warmup: int) -> list[float]:
        samples: list[float] = []
        for i in range(orders + warmup):
            frame = order_frame("bench-1", "c")
            start = time.perf_counter_ns()
            await self.ws.send_str(frame)
            await until(self.ws, acked("c"))
            if i >= warmup:
                samples.append((time.perf_counter_ns() - start) / 1000)
        return samples


async def run_all(data_dir: Path, relays: list[subprocess.Popen[str]], first_hop: str,
                  orders: int, repeats: int, chunk: int) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {"platform": [], "relay": [],
                                                   "platform_cpu": [], "relay_cpu": []}
    # The client's first hop is the last relay started.
    relay_pids = {"hop-1": relays[2].pid, "hop-2": relays[1].pid, "answerer": relays[0].pid}
    async with aiohttp.ClientSession() as http:
        platform_session, relay = PlatformSession(data_dir), RelaySession()
        await platform_session.open(http)
        await relay.open(http, first_hop)
        sides = {"relay": Side(relay_pids, relay.measure),
                 "platform": Side(fleet_pids(data_dir), platform_session.measure)}
        await relay.measure(0, 50)  # warm-up, not counted
        await platform_session.measure(0, 50)
        for _ in range(repeats):
            for side in sides.values():
                side.reset()
            # The two paths take turns in chunks, so that both meet the same machine: on a
            # shared VM its speed drifts by more than the effects being measured.
            for turn, start in enumerate(range(0, orders, chunk)):
                order = ("relay", "platform") if turn % 2 == 0 else ("platform", "relay")
                for name in order:
                    await sides[name].run(min(chunk, orders - start))
            for name, side in sides.items():
                results[name].append(percentiles(side.samples))
                results[f"{name}_cpu"].append(side.per_order())
    return results


def start_fleet(repo: Path) -> tuple[Path, subprocess.Popen[bytes]]:
    """`tradefleet up` from the checkout at `repo` in a fresh data dir (see CONFIG)."""
    data_dir = Path(tempfile.mkdtemp(prefix="tf-bench-"))
    (data_dir / "fleet.toml").write_text(CONFIG)
    fleet = subprocess.Popen([sys.executable, "-m", "tradefleet.cli", "up", "--port-base", "0",
                              "--data-dir", str(data_dir), "--config",
                              str(data_dir / "fleet.toml")], cwd=repo,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    return data_dir, fleet


def stop_fleet(data_dir: Path, fleet: subprocess.Popen[bytes]) -> None:
    fleet.send_signal(signal.SIGINT)
    fleet.wait(timeout=60)
    shutil.rmtree(data_dir, ignore_errors=True)


def start_relays() -> tuple[list[subprocess.Popen[str]], str]:
    procs: list[subprocess.Popen[str]] = []
    url = None
    for args in (["--answer"], ["--next"], ["--next"]):
        if args == ["--next"]:
            args = ["--next", url or ""]
        proc = subprocess.Popen([sys.executable, "-m", "bench.relay", *args], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
        url = (proc.stdout.readline() if proc.stdout else "").strip()
        procs.append(proc)
    return procs, url or ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_roundtrip")
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=100,
                        help="orders each path runs before the other takes its turn")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    # A SIGTERM (e.g. from `timeout`) must still stop the fleet and relays in `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    data_dir, fleet = start_fleet(REPO)
    relays, first_hop = start_relays()
    try:
        results = asyncio.run(run_all(data_dir, relays, first_hop, args.orders, args.repeats,
                                      max(1, args.chunk)))
    finally:
        stop_fleet(data_dir, fleet)
        for proc in relays:
            proc.terminate()
            proc.wait(timeout=10)

    summary = {name: {k: statistics.median(r[k] for r in results[name])
                      for k in ("p50", "p99", "p999")} for name in ("platform", "relay")}
    cpu = {name: {k: statistics.median(r[k] for r in results[f"{name}_cpu"])
                  for k in results[f"{name}_cpu"][0]} for name in ("platform", "relay")}
    ratio = {k: summary["platform"][k] / summary["relay"][k] for k in ("p50", "p99", "p999")}
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(),
               "machine": platform.machine(), "load": os.getloadavg()[0]}
    if args.json:
        print(json.dumps({"summary": summary, "ratio": ratio, "cpu_us_per_order": cpu,
                          "runs": results,
                          "machine": machine, "orders": args.orders}, indent=2))
        return 0
    print(f"order round trip, {args.orders} orders x {args.repeats} repeats "
          f"(median of repeats), µs; machine {machine}")
    print(f"{'':<12}{'p50':>10}{'p99':>10}{'p99.9':>10}")
    for name in ("platform", "relay"):
        s = summary[name]
        print(f"{name:<12}{s['p50']:>10.0f}{s['p99']:>10.0f}{s['p999']:>10.0f}")
    print(f"{'ratio':<12}{ratio['p50']:>10.2f}{ratio['p99']:>10.2f}{ratio['p999']:>10.2f}")
    print("CPU µs per timed order (platform: the order and its untimed cancel; relay: one "
          "message), median of repeats")
    for name in ("platform", "relay"):
        print(f"{name:<12}" + "  ".join(f"{k} {v:.0f}" for k, v in cpu[name].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
