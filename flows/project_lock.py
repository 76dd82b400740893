"""One gruflow run per project at a time, and what a killed run left behind swept at start.

Usage: `with project_lock(root, wait=True, command="gruflow run"): ...`. The lock is a
`filelock` lock file in `.gruflow/`; a second holder waits (saying who holds it) or, with
`wait=False`, fails with one line naming the holder's pid and command. It is re-entrant in one
process (the retrain flow runs the pipeline flow under the lock its CLI took).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from components.errors import GruflowError

log = logging.getLogger(__name__)
STATE_DIR = ".gruflow"  # git-ignored: lock, holder note, logs
_held: dict[Path, int] = {}  # lock file -> depth held by this process


def _paths(root: Path) -> tuple[Path, Path]:
    state = root / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    return state / "lock", state / "lock.holder"


def holder(root: Path) -> str:
    """Who holds (or last held) the project lock, as its holder note says."""
    note = _paths(root)[1]
    return note.read_text().strip() if note.is_file() else "unknown process"


@contextlib.contextmanager
def project_lock(root: Path, wait: bool = True, command: str = "gruflow") -> Iterator[None]:
    """Hold the project lock for the block (covers the Prefect and MLflow stores' creation)."""
    path, note = _paths(root.resolve())
    if _held.get(path):
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise GruflowError(
                f"{root} is in use by {holder(root)} — wait for it to finish, "
                "or run without --no-wait to queue behind it"
            ) from None
        print(
            f"gruflow: waiting for {holder(root)} to finish (project lock {path}) …",
            file=sys.stderr,
            flush=True,
        )
        lock.acquire()
    since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    note.write_text(f"pid {os.getpid()} ({command}, since {since})\n")
    _held[path] = 1
    try:
        yield
    finally:
        _held.pop(path, None)
        lock.release()


def sweep_temp(root: Path, outs: list[str]) -> list[Path]:
    """Remove the temp siblings (`.NAME.*`) that atomic writes of the stage outputs `outs`
    leave when a stage is killed mid-write, and the lock of tune's Optuna journal a killed
    tune leaves. Call only under the project lock."""
    removed = []
    for rel in outs:
        out = root / rel
        if not out.parent.is_dir():
            continue
        for tmp in out.parent.glob(f".{out.name}.*"):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    for lock in _journal_locks(root):
        lock.unlink(missing_ok=True)
        removed.append(lock)
    if removed:
        log.warning(
            "removed %d temp file(s) a killed run left: %s",
            len(removed),
            ", ".join(str(p.relative_to(root)) for p in removed),
        )
    return removed


def _journal_locks(root: Path) -> list[Path]:
    """Optuna's lock beside tune's journal (`study.journal.lock`, a symlink, and the
    `.lock<uuid>.rename` of a release cut short). Only a running tune holds it, for one
    append; a tune killed meanwhile leaves it, and the next tune would wait forever: the stage
    opens the journal by a relative path, so the symlink dangles and Optuna's 30 s grace
    period, which stats the link's target, never fires."""
    from components.params import load_params

    try:
        folder = root / load_params(root / "params.yaml").paths.tune_dir
    except (GruflowError, OSError):  # no params: nothing of tune's to sweep
        return []
    return sorted(folder.glob("study.journal.lock*")) if folder.is_dir() else []
