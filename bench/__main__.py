"""`python -m bench [--json]` (what `make bench` runs): every benchmark, one after the other,
with its default settings. Each one is also runnable alone: `python -m bench.bench_book`,
`bench.bench_roundtrip`, `bench.bench_fanout`, `bench.bench_sessions`, `bench.bench_failover`,
`bench.bench_journal` (see their `--help`). `bench.compare_roundtrip` is not one of them: it compares two versions
of the code."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("bench_book", "bench_roundtrip", "bench_fanout", "bench_sessions", "bench_failover",
              "bench_journal")


def main(argv: list[str]) -> int:
    passthrough = [arg for arg in argv if arg == "--json"]
    failed = 0
    for name in BENCHMARKS:
        print(f"== bench.{name}", file=sys.stderr, flush=True)
        module = importlib.import_module(f"bench.{name}")
        try:
            failed |= int(module.main(passthrough) or 0)
        except SystemExit as exc:  # argparse errors and the like
            failed |= int(exc.code or 0) if not isinstance(exc.code, str) else 1
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
            print(f"bench.{name} failed: {exc!r}", file=sys.stderr, flush=True)
            failed = 1
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
