"""bench/common.py: the floors `make bench` enforces and the peak-RSS reading of a process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.common import FLOORS, failures

ROOT = Path(__file__).resolve().parents[1]


def passing_rows() -> list[dict]:
    return [
        {
            "name": name,
            "value": 1.0,
            "raw_value": 1.0,
            "unit": "x",
            "ratio": bound + (0.01 if op == ">=" else -0.01),
        }
        for name, (op, bound) in FLOORS.items()
    ]


def check(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.common", str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_check_passes_only_when_every_floor_is_met(tmp_path):
    rows = passing_rows()
    (tmp_path / "all.json").write_text(json.dumps(rows))
    assert check(tmp_path).returncode == 0
    rows[0]["ratio"], rows[-1]["ratio"] = 0.79, 1.31  # clean below 0.8, peak_rss_10x above 1.3
    (tmp_path / "all.json").write_text(json.dumps(rows))
    out = check(tmp_path)
    assert out.returncode == 1
    assert "bench: FAIL clean: ratio 0.79 misses the floor >= 0.8" in out.stdout
    assert "bench: FAIL peak_rss_10x: ratio 1.31 misses the floor <= 1.3" in out.stdout
    assert len(failures(rows)) == 2


def test_a_table_of_unnamed_records_is_not_a_row(tmp_path):
    """reports/bench/size.json (bench/size.py's calibration table) sits beside the rows."""
    (tmp_path / "all.json").write_text(json.dumps(passing_rows()))
    (tmp_path / "size.json").write_text(json.dumps([{"units": 128, "test_bits_per_byte": 1.7}]))
    out = check(tmp_path)
    assert out.returncode == 0 and "all" in out.stdout, out.stdout + out.stderr
    (tmp_path / "other.json").write_text(json.dumps([{"ratio": 9.0}]))  # a row without a name
    assert check(tmp_path).returncode != 0


def test_a_missing_row_fails_the_check(tmp_path):
    (tmp_path / "some.json").write_text(json.dumps(passing_rows()[1:]))
    out = check(tmp_path)
    assert out.returncode == 1 and "bench: FAIL clean: no row in" in out.stdout


def test_a_child_reports_its_own_peak_rss_not_its_parents():
    ballast = np.ones(400 * 2**20 // 8)  # the parent holds 400 MiB while it spawns the child
    code = (
        "import numpy as np; from bench.common import peak_rss_kib; "
        "x = np.ones({n}); print(peak_rss_kib())"
    )
    small = subprocess.run(
        [sys.executable, "-c", code.format(n=1)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    big = subprocess.run(
        [sys.executable, "-c", code.format(n=300 * 2**20 // 8)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert ballast.sum() > 0
    assert int(small.stdout) < 200 * 1024  # KiB: the interpreter and NumPy, not the ballast
    assert int(big.stdout) > 300 * 1024  # its own 300 MiB are seen
