"""Benchmarks, run on demand; results go to BENCHMARKS.md (never timing asserts in tests)."""
