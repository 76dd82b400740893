"""Run one DVC stage of the project and report whether it executed (DVC decides)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from dvc.repo import Repo

STAGES = ("ingest", "clean", "tokenize", "embed", "tune", "train", "evaluate")


def stage_env() -> None:
    """Make `python` in dvc.yaml commands resolve to this interpreter's environment."""
    logging.getLogger("dvc").propagate = False  # DVC prints its own lines; no echo via Prefect
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if not path.startswith(bin_dir + os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + path


def is_changed(root: Path, stage: str) -> bool:
    with Repo(str(root)) as repo:
        return bool(repo.status(targets=[stage]))


def reproduce(root: Path, stage: str, force: bool = False) -> bool:
    """`dvc repro --single-item STAGE`; True when the stage's command actually ran."""
    stage_env()
    with Repo(str(root)) as repo:
        ran = repo.reproduce(targets=[stage], single_item=True, force=force)
    return bool(ran)
