"""Training resumes after SIGKILL and ends where an uninterrupted run ends (CPU, same seed)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from components.contract import BOS, EOS, SPECIALS
from components.params import load_params
from components.tokenize import SCHEMA, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TEXT = "the cat sat on the mat and the dog ran to the park " * 20


def make_project(path: Path, epochs: int, objective: str = "causal") -> Path:
    """A tiny project: real tokenizer, token Parquet, params pointing at it."""
    path.mkdir(parents=True)
    p = load_params(ROOT / "params.yaml")
    tok = train_tokenizer(
        iter([TEXT]), p.tokenize.model_copy(update={"vocab_size": 60, "min_frequency": 1})
    )
    (path / "artifacts").mkdir()
    tok.save(str(path / "artifacts/tokenizer.json"))
    rng = np.random.default_rng(0)
    (path / "tokens").mkdir()
    for split, n_docs in (("train", 40), ("val", 6)):
        ids = [
            [BOS, *(int(i) for i in (rng.integers(len(SPECIALS), 24, 3).repeat(4))), EOS]
            for _ in range(n_docs)
        ]
        pq.write_table(
            pa.table(
                {
                    "doc_id": [str(i) for i in range(n_docs)],
                    "ids": pa.array(ids, pa.list_(pa.int32())),
                    "n_bytes": [10] * n_docs,
                },
                schema=SCHEMA,
            ),
            path / f"tokens/{split}.parquet",
        )
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["paths"].update(
        tokens="tokens",
        tokenizer="artifacts/tokenizer.json",
        model="artifacts/model.keras",
        checkpoints="artifacts/checkpoints",
        reports="reports",
    )
    # Every regulariser on (their random masks must resume exactly) and the state carried
    # from window to window (truncated BPTT), whatever params.yaml's defaults become.
    raw["model"].update(
        embedding_init="random",
        embedding_dim=8,
        units=24,
        dropout=0.1,
        locked_dropout=True,
        embedding_dropout=0.1,
        weight_drop=0.2,
    )
    raw["train"].update(
        seq_len=8, batch_size=4, epochs=epochs, patience=10, context="carried", objective=objective
    )
    if "tune" in raw:
        raw["tune"].update(n_trials=0, space={})
    (path / "params.yaml").write_text(yaml.safe_dump(raw))
    return path


def train(project: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    env.pop("GRUFLOW_MLFLOW_RUN_ID", None)
    return subprocess.Popen(
        [sys.executable, "-m", "components.train"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


@pytest.mark.parametrize("objective", ["causal", "masked"])
def test_killed_training_resumes_and_matches_uninterrupted(tmp_path, objective):
    """Stateful (carried) training with dropout, locked dropout, embedding dropout and weight
    drop: killed after an epoch and restarted, it ends where an uninterrupted run ends."""
    full = make_project(tmp_path / "full", epochs=4, objective=objective)
    proc = train(full)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:]
    reference = json.loads((full / "reports/train.json").read_text())

    killed = make_project(tmp_path / "killed", epochs=4, objective=objective)
    proc = train(killed)
    state = killed / "artifacts/checkpoints/state.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["epoch"] >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "reports/train.json").exists()

    out, _ = train(killed).communicate(timeout=300)
    assert "resuming after epoch" in out, out[-2000:]
    resumed = json.loads((killed / "reports/train.json").read_text())
    assert resumed["epochs_run"] == reference["epochs_run"] == 4
    assert resumed["best_val_loss"] == pytest.approx(reference["best_val_loss"], rel=1e-6)
    assert not (killed / "artifacts/checkpoints").exists()  # cleared after success


def test_changed_model_params_start_afresh(tmp_path):
    project = make_project(tmp_path / "p", epochs=2)
    proc = train(project)
    state = project / "artifacts/checkpoints/state.json"
    deadline = time.time() + 240
    while time.time() < deadline and not state.is_file() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["model"]["units"] = 16
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    out, _ = train(project).communicate(timeout=300)
    assert "starting afresh" in out, out[-2000:]
    assert json.loads((project / "reports/train.json").read_text())["epochs_run"] == 2


def test_corrupt_checkpoint_starts_afresh(tmp_path):
    project = make_project(tmp_path / "p", epochs=1)
    ckpt = project / "artifacts/checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text("{not json")
    out, _ = train(project).communicate(timeout=300)
    assert "unreadable" in out and "starting afresh" in out, out[-2000:]
    assert (project / "artifacts/model.keras").is_file()
    shutil.rmtree(project)
