"""Stage costs (flows/resources.py): a real child process measured by `measure`, the report
file and its totals, the CLI line and the retrain markdown. The GPU path is exercised with a
stand-in for nvidia-smi's output only (no GPU here): untested on hardware."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows import resources

ROOT = Path(__file__).resolve().parents[1]
BURN = (
    "import time\nx = bytearray(80 * 2**20)\nfor i in range(0, len(x), 4096): x[i] = 1\n"
    "t = time.process_time()\nwhile time.process_time() - t < 0.6: pass\ntime.sleep(0.7)\n"
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    return tmp_path


def _stage(project: Path, name: str, ran: bool = True) -> resources.StageCost:
    with resources.measure(project, name) as cost:
        subprocess.run([sys.executable, "-c", BURN], check=True)
        cost.ran = ran
    return cost


def test_measure_records_a_child_process_cost(project):
    cost = _stage(project, "train")
    assert cost.cpu_s >= 0.6  # the child's busy loop, counted after it was waited for
    assert cost.wall_s >= cost.cpu_s * 0.5 and cost.wall_s >= 1.3
    assert cost.peak_rss_mb >= 80  # the child's 80 MiB buffer, touched page by page
    report = json.loads((project / "reports" / "resources.json").read_text())
    entry = report["stages"]["train"]
    assert entry["cpu_s"] == cost.cpu_s and entry["peak_rss_mb"] == cost.peak_rss_mb
    assert report["total"]["cpu_s"] == cost.cpu_s


def test_a_gruflow_stage_reports_its_own_cost(project):
    """A stage main wrapped by components.errors.guarded writes its own CPU; neither the
    300 MiB peak of a child this process reaped earlier nor this (large) test process's own
    RSS, which a forked command's ru_maxrss starts from, is charged to the stage."""
    stray = subprocess.Popen([sys.executable, "-c", BURN.replace("80 *", "300 *")])
    stray.wait()  # reaped here, before measuring: RUSAGE_CHILDREN holds its 300 MiB peak
    main = f"from components.errors import guarded\nexec({BURN!r})\nguarded(lambda: None)()\n"
    with resources.measure(project, "train") as cost:
        subprocess.run([sys.executable, "-c", main], check=True, cwd=ROOT)
        cost.ran = True
    assert 0.6 <= cost.cpu_s < 3
    assert 80 <= cost.peak_rss_mb < 250  # its own peak, not the earlier 300 MiB child's
    assert not list((project / ".gruflow").glob("cost-*"))  # the hand-over file is gone


def test_stage_that_did_not_run_is_not_recorded(project):
    _stage(project, "train", ran=False)
    assert not (project / "reports" / "resources.json").exists()


def test_failed_stage_is_not_recorded(project):
    with pytest.raises(subprocess.CalledProcessError):
        with resources.measure(project, "train") as cost:
            cost.ran = True
            subprocess.run([sys.executable, "-c", "raise SystemExit(3)"], check=True)
    assert resources.read(project) == {}


def test_report_keeps_each_stages_latest_entry_and_totals(project):
    a, b = _stage(project, "clean"), _stage(project, "train")
    report = resources.read(project)
    assert set(report["stages"]) == {"clean", "train"}
    assert report["total"]["cpu_s"] == pytest.approx(a.cpu_s + b.cpu_s, abs=0.002)
    assert report["total"]["peak_rss_mb"] == max(a.peak_rss_mb, b.peak_rss_mb)
    assert report["total"]["gpu_s"] is None or resources.gpu_memory_by_pid() is not None
    c = _stage(project, "train")  # a rerun replaces train's entry, clean keeps its own
    assert resources.read(project)["stages"]["train"]["cpu_s"] == c.cpu_s
    line = resources.summary_line(project, ["train"])
    assert f"{c.cpu_s:.1f} CPU s" in line and "over 1 stage(s)" in line
    assert "no stage ran" in resources.summary_line(project, [])


def test_skip_markdown_from_the_recorded_costs(project):
    """flows/retrain_report.py on the file `measure` wrote: a skip that ran ingest shows its
    cost and saved every other stage's (tests/test_retrain_report.py: the text itself)."""
    from flows import retrain_report

    i = _stage(project, "ingest")
    t = _stage(project, "train")
    stages = resources.read(project)["stages"]
    skip = retrain_report.resources_markdown(stages, ["ingest"], None, skipped=True)
    spent, saved = skip.split("What this skip saved")
    assert f"| total | {i.wall_s:g} | {i.cpu_s:g} |" in spent
    assert "| ingest |" not in saved and f"| total | {t.wall_s:g} | {t.cpu_s:g} |" in saved
    assert (
        f"{t.cpu_s:.0f} CPU s: the last measured cost of 1 stage(s)"
        in retrain_report.saved_line(stages, ["ingest"])
    )
    ran = retrain_report.resources_markdown(stages, ["ingest", "train"])
    assert "Resources of this run" in ran and "| ingest |" in ran and "| train |" in ran


def test_report_follows_paths_reports(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["paths"]["reports"] = "out/reports"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    _stage(project, "clean")
    assert (project / "out" / "reports" / "resources.json").is_file()


def test_parse_nvidia_smi_compute_apps():
    text = "1234, 5120\n1234, 1024\n99, [N/A]\nNo running processes found\n"
    assert resources.parse_compute_apps(text) == {1234: 6144.0, 99: 0.0}


def test_gpu_numbers_from_nvidia_smi_samples(project, monkeypatch):
    """Stand-in for nvidia-smi (no GPU here): the stage's processes hold 512 MiB."""
    monkeypatch.setattr(resources, "GPU_SAMPLE_SECONDS", 0.5)

    def fake() -> dict[int, float]:
        import psutil

        kids = psutil.Process().children(recursive=True)
        return {p.pid: 512.0 for p in kids}

    monkeypatch.setattr(resources, "gpu_memory_by_pid", fake)
    cost = _stage(project, "train")
    assert cost.gpu_peak_mb == 512.0 and cost.gpu_s > 0


def test_no_gpu_means_null_gpu_numbers(project, monkeypatch):
    monkeypatch.setattr(resources.shutil, "which", lambda name: None)
    cost = _stage(project, "train")
    assert cost.gpu_s is None and cost.gpu_peak_mb is None
    assert resources.read(project)["stages"]["train"]["gpu_s"] is None


def test_resources_report_is_not_a_dvc_output():
    """Costs depend on time and load: dvc.yaml must not declare the file (so dvc.lock never
    records it) and git ignores it (so lineage's dirty flag does not see it)."""
    assert "resources.json" not in (ROOT / "dvc.yaml").read_text()
    ignored = subprocess.run(["git", "check-ignore", "-q", "reports/resources.json"], cwd=ROOT)
    assert ignored.returncode == 0


def test_unwritable_report_does_not_fail_the_stage(project, caplog):
    (project / "reports").write_text("a file where the reports folder should be")
    cost = _stage(project, "train")  # no exception: the stage's work is done and kept
    assert cost.cpu_s > 0
    assert "could not record the resources of stage train" in caplog.text


def test_failed_run_rolls_back_the_costs_of_its_earlier_stages(project):
    """A run that fails after a stage succeeded restores that stage's outputs (flows/rollback):
    its cost entry goes too, so the project is left exactly as it was."""
    from flows.rollback import keep_outputs

    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project, check=True)
    _stage(project, "clean")
    before = (project / "reports" / "resources.json").read_bytes()
    with pytest.raises(RuntimeError, match="later stage"):
        with keep_outputs(project):
            _stage(project, "train")
            raise RuntimeError("a later stage failed")
    assert (project / "reports" / "resources.json").read_bytes() == before
    (project / "reports" / "resources.json").unlink()
    with pytest.raises(RuntimeError), keep_outputs(project):
        _stage(project, "train")
        raise RuntimeError("a later stage failed")
    assert not (project / "reports" / "resources.json").exists()
