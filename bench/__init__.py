"""Benchmarks: `make bench` runs each module here; each writes reports/bench/<name>.json."""
