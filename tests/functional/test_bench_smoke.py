"""The benchmark machinery runs: tiny parameters, no performance asserted.

Starts the benchmark's source, a real Market worker process and the bare relay, connects two
raw clients to each, pushes a few hundred trades and checks they are counted (and timed) at the
clients. It guards the benchmark code against rot; the figures live in BENCHMARKS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from bench.bench_fanout import Target
from bench.bench_sessions import measure
from bench.harness import REPO, ClientGroup, Rig

pytestmark = pytest.mark.timeout(60)


def test_the_fanout_and_latency_rigs_deliver_and_count() -> None:
    rig = Rig(relay=True)
    try:
        for name in ("platform", "relay"):
            target = Target(name, rig, connections=2, procs=1)
            try:
                step = target.step(200, 0.5, warmup=0.3)
            finally:
                target.drop()
            assert step["delivered_per_s"] > 0 and step["closed"] == 0, step
        group = ClientGroup(rig.session_url, rig.tokens(2), 1, hello=True, mode="latency")
        try:
            rig.control.rate(200, "market")
            time.sleep(0.5)
            rig.control.rate(0, "market")
            time.sleep(0.2)
            samples, _untimed = group.latencies()
        finally:
            group.stop()
        assert samples and all(0 <= s < 10_000_000 for s in samples)
    finally:
        rig.close()


@pytest.mark.parametrize("own", [False, True], ids=["shared", "own"])
def test_the_sessions_benchmark_measures_the_market_and_its_bare_relay(own: bool) -> None:
    rig = Rig(relay=True, instruments=2 if own else 0, route=own)
    try:
        for target in ("platform", "relay"):
            result = measure(rig, 2, 1, 50, 0.4, own, target)
            assert result["samples"] > 0 and result["closed"] == 0, (target, result)
            assert 0 < result["p50"] <= result["p99"] < 10_000_000, (target, result)
    finally:
        rig.close()


@pytest.mark.timeout(180)
def test_the_round_trip_benchmark_runs_and_accounts_each_process_cpu() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.bench_roundtrip", "--orders", "5",
                           "--repeats", "1", "--json"], cwd=REPO, capture_output=True,
                          text=True, timeout=170, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["summary"]["platform"]["p50"] > 0 and report["summary"]["relay"]["p50"] > 0
    assert set(report["cpu_us_per_order"]["platform"]) == {"market", "broker", "paper", "client"}
    assert set(report["cpu_us_per_order"]["relay"]) == {"hop-1", "hop-2", "answerer", "client"}


@pytest.mark.timeout(240)
def test_the_round_trip_comparison_runs_two_fleets_and_reports_this_over_base() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.compare_roundtrip", "--base-dir",
                           str(REPO), "--rounds", "2", "--chunk", "3", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=230, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    for side in ("base", "this"):
        assert report["results"][side]["latency_us"]["p50"] > 0
        assert set(report["results"][side]["cpu_us_per_order"]) == {
            "market", "broker", "paper", "client"}
        assert report["results"][side]["cpu_us_per_order"]["broker"] > 0
    assert set(report["this_over_base"]) == {"p50", "p99", "p999", "fleet_cpu"}
    assert report["this_over_base"]["fleet_cpu"] > 0


@pytest.mark.timeout(240)
def test_the_failover_benchmark_kills_the_broker_and_times_the_way_back() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.bench_failover", "--orders", "3",
                           "--json"], cwd=REPO, capture_output=True, text=True, timeout=230,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(proc.stdout)["summary"]
    assert row["orders"] == 3 and row["journal_mb"] > 0
    assert 0 < row["seconds"] < 120 and row["over_baseline"] == 1.0


@pytest.mark.timeout(120)
def test_the_journal_benchmark_times_appends_in_each_case() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.bench_journal", "--seconds", "0.5",
                           "--rate", "200", "--repeats", "1", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=110, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = json.loads(proc.stdout)["median"]
    assert set(table) == {"bare", "checkpointed", "checkpointed + reader"}
    for row in table.values():
        assert row["appends"] == 100 and 0 < row["p50"] <= row["max"]
