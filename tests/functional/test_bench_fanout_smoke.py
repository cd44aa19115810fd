"""The fan-out/sessions benchmark machinery runs: tiny parameters, no performance asserted.

Starts the benchmark's source, a real Market worker process and the bare relay, connects two
raw clients to each, pushes a few hundred trades and checks they are counted (and timed) at the
clients. It guards the benchmark code against rot; the figures live in BENCHMARKS.md.
"""

from __future__ import annotations

import time

import pytest

from bench.bench_fanout import Target
from bench.harness import ClientGroup, Rig

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
