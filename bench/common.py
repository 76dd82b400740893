"""What every benchmark shares: the floors (the one place they live), best-of-N timing with its
spread, rows, peak RSS of a process itself, and the check `make bench` ends with.

A row: `value` (our stage) and `raw_value` (the bare library calls doing the same work, same
run), `ratio` = value / raw_value, and `spread`: min/median/max of each side over the runs.
Usage: `python -m bench.common` checks reports/bench/*.json against FLOORS and exits 1 naming
every row that misses its floor.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# row name -> (">=" or "<=", bound) on its ratio. Throughput rows are ours / bare (higher is
# better); latency and memory rows are ours / bare or large / small (lower is better).
FLOORS: dict[str, tuple[str, float]] = {
    "clean": (">=", 0.8),
    "tokenize": (">=", 0.8),
    "embed": (">=", 0.9),
    "train": (">=", 0.9),
    "quality": ("<=", 0.85),  # test bits/byte, gruflow / the seed's plain GRU (bench/quality.py)
    "generate_latency_p50": ("<=", 1.2),
    "generate_latency_p95": ("<=", 1.2),
    "peak_rss_10x": ("<=", 1.3),
}


def spread(samples: list[float]) -> dict[str, float]:
    return {
        "min": min(samples),
        "median": statistics.median(samples),
        "max": max(samples),
        "runs": len(samples),
    }


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def throughput_row(name: str, work: float, ours: list[float], bare: list[float], unit: str) -> dict:
    """A higher-is-better row from the seconds of each run: the best run of each side counts
    (as timeit: the least disturbed by other load); the spread is in the same unit."""
    value, raw = work / min(ours), work / min(bare)
    return {
        "name": name,
        "value": round(value, 3),
        "raw_value": round(raw, 3),
        "unit": unit,
        "ratio": round(value / raw, 4),
        "spread": {
            "value": spread([work / s for s in ours]),
            "raw_value": spread([work / s for s in bare]),
        },
    }


def peak_rss_kib() -> int:
    """This process's own peak resident set (KiB). Linux's VmHWM belongs to the process's
    current memory map, so it starts afresh at exec; ru_maxrss does not: exec keeps the peak
    of the map it replaces, and a child spawned by a big parent would report the parent's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # macOS: bytes; not Linux


def failures(rows: list[dict]) -> list[str]:
    """One line per row that misses its floor (rows without a floor are informative)."""
    out = []
    for row in rows:
        if row["name"] not in FLOORS:
            continue
        op, bound = FLOORS[row["name"]]
        ok = row["ratio"] >= bound if op == ">=" else row["ratio"] <= bound
        if not ok:
            out.append(
                f"{row['name']}: ratio {row['ratio']} misses the floor {op} {bound} "
                f"({row['value']} vs bare {row['raw_value']} {row['unit']})"
            )
    return out


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("reports/bench")
    rows = [
        row
        for path in sorted(folder.glob("*.json"))
        for row in json.loads(path.read_text(encoding="utf-8"))
        if path.name != "size.json"  # bench/size.py's calibration table: records, not rows
    ]
    missing = sorted(set(FLOORS) - {row["name"] for row in rows})
    bad = failures(rows) + [f"{name}: no row in {folder}" for name in missing]
    for line in bad:
        print(f"bench: FAIL {line}")
    if bad:
        raise SystemExit(1)
    print(f"bench: all {len(FLOORS)} floors met ({folder})")


if __name__ == "__main__":
    main()
