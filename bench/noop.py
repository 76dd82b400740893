"""Benchmark of doing nothing: `gruflow run` and `gruflow retrain` on an up-to-date project vs
`dvc status` of the same project (what DVC alone needs to say "nothing changed").

Usage: `python -m bench.noop [--repeat 3]` in a project a `make run` left up to date ->
reports/bench/noop.json, rows `noop_run` (`gruflow run --no-push`) and `noop_retrain`
(`gruflow retrain`, which also re-snapshots the source: a forced ingest). `value` = seconds of
the gruflow command, `raw_value` = seconds of `dvc status`, each a fresh process, interleaved,
best of --repeat with min/median/max in `spread`, plus the CPU seconds of the best run of each
(the machine is shared; CPU time is the steadier figure); `ratio` = value / raw_value (lower is
better, informative: no floor). Goal of issue #20: a no-op run <= 10 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.common import spread
from components.artifacts import write_json
from components.params import load_params

BIN = Path(sys.executable).parent


class NotNoop(RuntimeError):
    """The project had something to do: nothing to measure (the row is informative)."""


def _run(cmd: list[str], expect: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process tree) of one command; `expect` must be in its
    output, so a run that did work (the project was not up to date) is not timed as a no-op."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0 or expect not in out.stdout + out.stderr:
        raise NotNoop(
            f"{' '.join(cmd[-3:])} did not end with '{expect}' (exit "
            f"{out.returncode}) — run `make run` first so that nothing is left to "
            f"do:\n{(out.stdout + out.stderr)[-2000:]}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def row(name: str, ours: list[tuple[float, float]], bare: list[tuple[float, float]]) -> dict:
    best, raw = min(ours), min(bare)
    return {
        "name": name,
        "value": round(best[0], 3),
        "raw_value": round(raw[0], 3),
        "unit": "s",
        "ratio": round(best[0] / raw[0], 4),
        "cpu_s": round(best[1], 3),
        "raw_cpu_s": round(raw[1], 3),
        "spread": {
            "value": spread([w for w, _ in ours]),
            "raw_value": spread([w for w, _ in bare]),
        },
    }


def measure(repeat: int) -> list[dict]:
    dvc_status = ([str(BIN / "dvc"), "status"], "up to date")
    commands = {
        "noop_run": ([str(BIN / "gruflow"), "run", "--no-push"], "up to date"),
        "noop_retrain": ([str(BIN / "gruflow"), "retrain"], "retrain skipped"),
    }
    rows = []
    for name, ours_cmd in commands.items():
        times: dict[str, list[tuple[float, float]]] = {"ours": [], "bare": []}
        for i in range(repeat):  # interleaved, alternating who goes first
            order = [("ours", ours_cmd), ("bare", dvc_status)]
            for side, (cmd, expect) in order if i % 2 == 0 else order[::-1]:
                times[side].append(_run(cmd, expect))
        rows.append(row(name, times["ours"], times["bare"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    p = load_params()
    try:
        rows = measure(args.repeat)
    except NotNoop as exc:  # `make bench` on a project never run: skip, say why
        print(f"bench noop: skipped — {exc}")
        return
    out = Path(p.paths.reports) / "bench" / "noop.json"
    write_json(out, rows)
    for r in rows:
        print(
            f"bench noop: {r['name']} {r['value']:.1f} s ({r['cpu_s']:.1f} CPU s) vs dvc "
            f"status {r['raw_value']:.1f} s ({r['raw_cpu_s']:.1f} CPU s), ratio "
            f"{r['ratio']:.2f}, on {os.cpu_count()} cores -> {out}"
        )


if __name__ == "__main__":
    main()
