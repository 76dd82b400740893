"""What each stage run cost: wall seconds, CPU seconds (the stage command and its children, as
the command reports them at its end through components.errors.guarded, plus DVC's own work in
the calling thread), peak RSS (the sampled sum over the stage's process tree) and, where an
NVIDIA GPU is visible, GPU seconds and peak GPU memory of that tree (sampled with `nvidia-smi`).

Usage: `with resources.measure(root, stage) as cost: ran = <run the stage>; cost.ran = ran` —
flows/stages.reproduce does it for every stage. Each executed stage's entry is written to
`reports/resources.json` and logged as MLflow metrics `resources.<stage>.<name>` on the
pipeline's parent run; `log_entries(run_id, entries)` puts entries recorded before a run existed
(a retrain's forced ingest and clean) onto it. The numbers depend on time and load, so the file
is no DVC output (it is git-ignored, written by the flow, never by a stage): dvc.lock never sees
it. The retrain artifact's tables are flows/retrain_report.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from components.artifacts import write_json
from components.errors import STAGE_COST_ENV, GruflowError
from components.params import load_params

log = logging.getLogger(__name__)

REPORT = "resources.json"  # in paths.reports
SAMPLE_SECONDS = 0.5  # process-tree RSS sampling period (psutil; ~1 ms per sample)
FIRST_SAMPLE_SECONDS = 0.05  # ... during a stage's first 2 s
GPU_SAMPLE_SECONDS = 2.0  # nvidia-smi takes ~50-100 ms, so it is polled less often
NUMBERS = ("wall_s", "cpu_s", "peak_rss_mb", "gpu_s", "gpu_peak_mb")


@dataclass
class StageCost:
    stage: str
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    gpu_s: float | None = None  # None: no NVIDIA GPU visible (nvidia-smi absent or failing)
    gpu_peak_mb: float | None = None
    finished: str = ""  # UTC time the stage finished (which run it belongs to)
    ran: bool = False  # set by the caller: DVC executed the stage's command


def _thread_cpu() -> float:
    """CPU seconds of this thread: DVC's own work for the stage (status, hashing)."""
    me = resource.getrusage(resource.RUSAGE_THREAD)
    return me.ru_utime + me.ru_stime


def gpu_memory_by_pid() -> dict[int, float] | None:
    """{pid: MiB} of the processes holding GPU memory; None without a working nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_compute_apps(out.stdout) if out.returncode == 0 else None


def parse_compute_apps(text: str) -> dict[int, float]:
    """nvidia-smi's `pid, used_memory` CSV rows (MiB); "[N/A]" memory counts as 0."""
    usage: dict[int, float] = {}
    for line in text.splitlines():
        pid, _, mem = (part.strip() for part in line.partition(","))
        if pid.isdigit():
            usage[int(pid)] = usage.get(int(pid), 0.0) + (
                float(mem) if mem.replace(".", "", 1).isdigit() else 0.0
            )
    return usage


class _Sampler(threading.Thread):
    """Polls the RSS of the processes started since it began (the stage command and its
    children) and, when a GPU is visible, their GPU memory; GPU seconds are the sampled time
    during which the stage's processes held GPU memory (what a GPU worker is paid for)."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="gruflow-resources")
        import psutil

        self._me = psutil.Process()
        self._before = {p.pid for p in self._me.children(recursive=True)}
        self._stop_event = threading.Event()
        self.peak_rss = 0
        self.gpu = gpu_memory_by_pid() is not None
        self.gpu_s = 0.0
        self.gpu_peak_mb = 0.0

    def _tree(self) -> list:
        return [p for p in self._me.children(recursive=True) if p.pid not in self._before]

    def _sample_rss(self, procs: list) -> None:
        import psutil

        rss = 0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                rss += proc.memory_info().rss
        self.peak_rss = max(self.peak_rss, rss)

    def _sample_gpu(self, procs: list, seconds: float) -> None:
        usage = gpu_memory_by_pid() or {}
        mine = sum(usage.get(p.pid, 0.0) for p in procs)
        if mine > 0:
            self.gpu_s += seconds
            self.gpu_peak_mb = max(self.gpu_peak_mb, mine)

    def run(self) -> None:
        start = last_gpu = time.monotonic()
        # fast at first, so a command of well under a second is still seen
        while not self._stop_event.wait(
            FIRST_SAMPLE_SECONDS if time.monotonic() - start < 2 else SAMPLE_SECONDS
        ):
            procs = self._tree()
            self._sample_rss(procs)
            now = time.monotonic()
            if self.gpu and now - last_gpu >= GPU_SAMPLE_SECONDS:
                self._sample_gpu(procs, now - last_gpu)
                last_gpu = now

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=15)


def _own_report(path: Path) -> dict:
    """What the stage command wrote about itself (components.errors, at a successful end)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def measure(root: Path, stage: str) -> Iterator[StageCost]:
    """Measure the block; when the caller sets `cost.ran` and the block succeeds, the entry
    is recorded (reports/resources.json, MLflow metrics on the active run's parent)."""
    cost = StageCost(stage)
    sampler = _Sampler()
    own = root / ".gruflow" / f"cost-{stage}-{os.getpid()}.json"
    own.parent.mkdir(parents=True, exist_ok=True)
    own.unlink(missing_ok=True)
    os.environ[STAGE_COST_ENV] = str(own)
    sampler.start()
    wall, me = time.perf_counter(), _thread_cpu()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        yield cost
    finally:
        sampler.stop()
        os.environ.pop(STAGE_COST_ENV, None)
        report = _own_report(own)
        own.unlink(missing_ok=True)
    cost.wall_s = round(time.perf_counter() - wall, 3)
    # The stage's own CPU when it reported it. RUSAGE_CHILDREN of this process is only a
    # fallback (a stage command that is no gruflow main): it also counts any stray child that
    # another thread's Popen left and this stage's start reaped.
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = report.get("cpu_s", after.ru_utime + after.ru_stime - kids.ru_utime - kids.ru_stime)
    cost.cpu_s = round(child_cpu + _thread_cpu() - me, 3)
    # RSS only sampled: a command's ru_maxrss starts at the RSS of the process it was forked
    # from (Linux keeps it across exec), so every stage looked as large as the flow (measured:
    # 989 MiB for the ~90 MiB finetune-off stage)
    cost.peak_rss_mb = round(sampler.peak_rss / 2**20, 1)
    if sampler.gpu:
        cost.gpu_s, cost.gpu_peak_mb = round(sampler.gpu_s, 1), round(sampler.gpu_peak_mb, 1)
    cost.finished = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if cost.ran:
        try:
            record(root, cost)
        except (OSError, GruflowError) as exc:  # a report: never fail a finished stage for it
            log.warning("could not record the resources of stage %s: %s", stage, exc)


def report_path(root: Path) -> Path | None:
    """paths.reports/resources.json; None in a DVC project without gruflow's params.yaml
    (stages.reproduce also runs there): no place is declared, so nothing is recorded."""
    try:
        return root / load_params(root / "params.yaml").paths.reports / REPORT
    except GruflowError:
        return None


def read(root: Path) -> dict:
    """reports/resources.json ({} when absent or unreadable: it is only a report)."""
    path = report_path(root)
    try:
        return json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        return {}


def record(root: Path, cost: StageCost) -> None:
    """The stage's latest cost into reports/resources.json (other stages keep their last
    entry, so the file always holds what a full run costs) and into MLflow."""
    path = report_path(root)
    if path is None:
        return
    report = read(root)
    entry = {k: v for k, v in asdict(cost).items() if k not in ("stage", "ran")}
    report.setdefault("stages", {})[cost.stage] = entry
    report["total"] = total(report["stages"])
    write_json(path, report)
    _log_mlflow(cost)


def total(stages: dict) -> dict:
    """Sums over stages (wall/CPU/GPU seconds) and the largest peaks (RSS, GPU memory)."""
    out: dict = {}
    for name in NUMBERS:
        values = [e[name] for e in stages.values() if e.get(name) is not None]
        if values:
            out[name] = round(max(values) if "peak" in name else sum(values), 3)
        else:
            out[name] = None
    return out


def _log_mlflow(cost: StageCost) -> None:
    """resources.<stage>.<number> on the pipeline's parent run (the active run, or its parent
    when a stage's nested run is active); nothing when no MLflow run is active."""
    if "mlflow" not in sys.modules:  # plain `dvc repro`, forced ingest before any run
        return
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return
    run_id = run.data.tags.get("mlflow.parentRunId") or run.info.run_id
    log_entries(run_id, {cost.stage: asdict(cost)})


def log_entries(run_id: str, entries: dict[str, dict]) -> None:
    """resources.<name>.<number> of each entry onto MLflow run `run_id` — also for stages that
    ran before the run existed (a retrain's forced ingest and its clean before the drift
    check). A failure is a warning: costs are a report."""
    import mlflow

    now = int(time.time() * 1000)
    metrics = [
        mlflow.entities.Metric(f"resources.{name}.{k}", float(e[k]), now, 0)
        for name, e in entries.items()
        for k in NUMBERS
        if e.get(k) is not None
    ]
    try:
        if metrics:
            mlflow.MlflowClient().log_batch(run_id, metrics=metrics)
    except mlflow.exceptions.MlflowException as exc:
        log.warning("could not log resources of %s to MLflow: %s", ", ".join(entries), exc)


def summary_line(root: Path, executed: list[str]) -> str:
    """One line for the CLI: what the stages that ran in this run cost."""
    stages = read(root).get("stages", {})
    ran = {s: stages[s] for s in executed if s in stages}
    if not ran:
        return "gruflow: resources: no stage ran (reports/resources.json keeps the last costs)"
    t = total(ran)
    gpu = (
        f", GPU {t['gpu_s']:.0f} s, peak GPU memory {t['gpu_peak_mb']:.0f} MiB"
        if t["gpu_s"] is not None
        else ""
    )
    return (
        f"gruflow: resources: {t['wall_s']:.1f} s wall, {t['cpu_s']:.1f} CPU s, peak RSS "
        f"{t['peak_rss_mb']:.0f} MiB{gpu} over {len(ran)} stage(s) "
        "(reports/resources.json)"
    )
