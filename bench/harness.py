"""Processes shared by the fan-out and sessions benchmarks: the market-data source, a real
Market worker, the bare fan-out relay, and groups of raw WebSocket client processes.

Everything is a child process talking over loopback; this module only starts them, reads the
first line each prints, drives them over stdin/HTTP and reads their CPU time from /proc.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tradefleet.service.session_tokens import mint

REPO = Path(__file__).resolve().parents[1]
ACCOUNT = "paper-1"
TRADES = {"type": "subscribe", "instrument": "BTC/USD", "channel": "trades"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU seconds a process has used so far, all its threads (0 if it is gone).

    Read from each thread's `schedstat` (nanoseconds) where the kernel has it: the benchmarks
    read short stretches, and `stat`'s user + system time counts in clock ticks (10 ms)."""
    try:
        total = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": sys.version.split()[0], "cpus": os.cpu_count(), "cpu_model": model,
            "load": [round(x, 2) for x in os.getloadavg()]}


class Child:
    """A child process whose first stdout line is its address (and maybe its pid)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        line = (self.proc.stdout.readline() if self.proc.stdout else "").split()
        if not line:
            raise RuntimeError(f"{args[0]} did not start")
        self.url = line[0]
        self.pid = int(line[1]) if len(line) > 1 else self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class SourceControl:
    """HTTP control of `bench.md_source`."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method="POST" if data
                                         else "GET", headers={"Content-Type":
                                                              "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def rate(self, rate: float, target: str) -> None:
        self._call("/rate", {"rate": rate, "target": target})

    def stats(self) -> dict[str, Any]:
        return self._call("/stats")


class Rig:
    """Source + Market worker (+ optionally the fan-out relay), in a temporary data dir."""

    def __init__(self, relay: bool, instruments: int = 0, route: bool = False) -> None:
        self.token = secrets.token_hex(16)
        self.data_dir = Path(tempfile.mkdtemp(prefix="tf-bench-md-"))
        self.children: list[Child] = []
        try:
            self.source = self._child("bench.md_source", "--token", self.token,
                                      "--instruments", str(instruments))
            (self.data_dir / "run").mkdir()
            (self.data_dir / "run" / "broker-manager.url").write_text(self.source.url)
            self.market = self._child("bench.market_proc", "--data-dir", str(self.data_dir),
                                      "--token", self.token)
            self.relay = self._child("bench.fanout_relay", "--upstream",
                                     "ws://" + self.source.url.removeprefix("http://")
                                     + "/feed", *(["--route"] if route else [])
                                     ) if relay else None
        except BaseException:
            self.close()
            raise
        self.control = SourceControl(self.source.url)
        self.session_url = "ws://" + self.market.url.removeprefix("http://") + "/v1/session"
        self._sessions = 0

    def _child(self, *args: str) -> Child:
        child = Child(*args)
        self.children.append(child)
        return child

    def tokens(self, count: int) -> list[list[str]]:
        """`count` fresh (session id, session token) pairs for the source's account."""
        out = []
        for _ in range(count):
            self._sessions += 1
            session_id = f"bench-{self._sessions}"
            token, _ = mint(self.token, session_id, "demo", ACCOUNT, 3600)
            out.append([session_id, token])
        return out

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class ClientGroup:
    """Connections spread over `procs` `bench.wsclient` processes."""

    def __init__(self, url: str, sessions: list[list[str]], procs: int, *, hello: bool,
                 mode: str = "count", subscribe: list[dict[str, Any]] | None = None) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        try:
            for i in range(procs):
                mine = sessions[i::procs]
                if not mine:
                    continue
                proc = subprocess.Popen([sys.executable, "-m", "bench.wsclient"], cwd=REPO,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        start_new_session=True)
                self.procs.append(proc)
                spec = {"url": url, "sessions": mine, "hello": hello, "mode": mode,
                        "subscribe": [TRADES] if subscribe is None else subscribe}
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(spec) + "\n")
                proc.stdin.flush()
            for proc in self.procs:
                line = proc.stdout.readline() if proc.stdout else ""
                if not line.startswith("ready"):
                    raise RuntimeError(f"a client process failed to connect: {line!r}")
        except BaseException:
            self.stop()
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _ask(self, word: str) -> list[dict[str, Any]]:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(word + "\n")
            proc.stdin.flush()
        return [json.loads(proc.stdout.readline())  # type: ignore[union-attr]
                for proc in self.procs]

    def snap(self) -> dict[str, float]:
        parts = self._ask("snap")
        return {k: sum(p[k] for p in parts) for k in ("events", "frames", "bytes", "closed",
                                                      "cpu")}

    def latencies(self) -> tuple[list[int], int]:
        """Latency samples (µs) since the previous call, and how many reads had no kernel
        timestamp."""
        out: list[int] = []
        untimed = 0
        for part in self._ask("lat"):
            out.extend(part["samples"])
            untimed += part["untimed"]
        return out, untimed

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    assert proc.stdin is not None
                    proc.stdin.write("quit\n")
                    proc.stdin.flush()
                    proc.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired, AssertionError):
                    proc.kill()
                    proc.wait()
        self.procs = []


def wait_quiet(group: ClientGroup, settle: float = 0.5, timeout: float = 60.0) -> None:
    """Wait until the group stops receiving (the pipeline drained after a rate change)."""
    deadline = time.monotonic() + timeout
    last = group.snap()["events"]
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = group.snap()["events"]
        if now == last:
            return
        last = now


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50, p99 and p99.9 of `samples` (0 for none)."""
    ordered = sorted(samples)

    def q(p: float) -> float:
        return float(ordered[min(len(ordered) - 1, int(p * len(ordered)))]) if ordered else 0.0

    return {"p50": q(0.50), "p99": q(0.99), "p999": q(0.999)}
