"""A failed stage or run leaves the project's outputs exactly as they were.

Usage: `with keep_outputs(root, ["ingest"]): repo.reproduce(...)` (one stage), or
`with keep_outputs(root): ...` around a whole run (every stage, plus dvc.lock).
DVC deletes a stage's outputs before running it, and a run's earlier stages may have replaced
theirs. On failure the cached outputs come back from the DVC cache (`dvc checkout`, as the
restored dvc.lock records them) and the uncached ones (metrics, plots, reports: not in the
cache) from a copy taken before; outputs that did not exist before are removed.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)
NOT_RESTORED = "gruflow: the previous outputs could not be restored"
RESTORED = "gruflow: outputs restored"
KEPT = " (previous outputs kept)"  # a failed stage's line says so; NOT_RESTORED overrides
NOT_RESTORED_HINT = " (the previous outputs could not be restored — run `dvc checkout`)"
AFTER_STAGES = "gruflow: failed after the stages (their outputs are good and kept)"


def _target(root: Path, stage: str) -> str:
    return f"{root / 'dvc.yaml'}:{stage}"


def _outs(root: Path, stages: list[str] | None) -> list[tuple[str, bool]]:
    """(path relative to root, cached?) of every out, metric and plot of the stages (all)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        if stages is None:
            found = list(repo.index.stages)
        else:
            found = [s for name in stages for s in repo.stage.collect(_target(root, name))]
        return [(o.def_path, bool(o.use_cache)) for s in found for o in s.outs]


def _run_reports(root: Path) -> list[tuple[str, bool]]:
    """Files a run writes beside the DVC outs (no stage declares them): the stage costs of a
    rolled-back run must not describe outputs that are gone."""
    from flows.resources import report_path

    path = report_path(root)
    return [(str(path.relative_to(root)), False)] if path and path.is_relative_to(root) else []


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _restore(
    root: Path,
    stages: list[str] | None,
    outs: list[tuple[str, bool]],
    existed: set[str],
    store: Path,
) -> None:
    from dvc.repo import Repo

    if stages is None:  # a whole run: the lock file too (stages that succeeded rewrote it)
        _remove(root / "dvc.lock")
        if (store / "dvc.lock").exists():
            _copy(store / "dvc.lock", root / "dvc.lock")
    for rel, cached in outs:
        _remove(root / rel)
        if not cached and rel in existed:
            _copy(store / "outs" / rel, root / rel)
    # Only the cached outputs that existed: checking out whole stages would make DVC warn
    # ("No file hash info found ... It won't be created", twice) on the terminal for every out
    # of a stage that never ran, and would bring back an out that was not there before.
    targets = [str(root / rel) for rel, cached in outs if cached and rel in existed]
    if targets:
        with Repo(str(root)) as repo:
            repo.checkout(targets=targets, force=True)


def has_note(exc: BaseException | None, note: str) -> bool:
    """`note` on the exception or one it was raised during or from (Prefect re-raises a
    SIGTERM as a new exception while the first, which carries the notes, is handled)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if note in getattr(exc, "__notes__", []):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def add_note(exc: BaseException, note: str) -> None:
    if note not in getattr(exc, "__notes__", []):
        exc.add_note(note)


@contextlib.contextmanager
def after_stages() -> Iterator[None]:
    """Wraps what a run does once its stages succeeded (registration, finetune): a failure
    there is marked, so an outer `keep_outputs(..., restore_if=stages_failed)` (a retrain
    around its ingest, clean and pipeline) keeps the good outputs."""
    try:
        yield
    except BaseException as exc:
        add_note(exc, AFTER_STAGES)
        raise


def stages_failed(exc: BaseException) -> bool:
    """The failure came before the run's stages had all succeeded."""
    return not has_note(exc, AFTER_STAGES)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """SIGINT/SIGTERM ignored while outputs are put back (a second Ctrl-C, `kill` twice or
    `docker stop` would otherwise cut the restore short); only the main thread can set them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)  # SIGALRM: Prefect's timeouts
    kept = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            signal.signal(sig, handler)


def _refused(exc: BaseException) -> bool:
    """DVC refused to start (its repository lock is taken): nothing was deleted."""
    from dvc.lock import LockError

    return isinstance(exc, LockError)


@contextlib.contextmanager
def keep_outputs(
    root: Path,
    stages: list[str] | None = None,
    restore_if: Callable[[BaseException], bool] | None = None,
) -> Iterator[None]:
    """Restore the outputs of `stages` (None: all stages, dvc.lock and the run's cost report)
    if the block fails (and `restore_if(exc)`, when given, says so)."""
    outs = _outs(root, stages) + (_run_reports(root) if stages is None else [])
    state = root / ".gruflow"
    state.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="snapshot.", dir=state) as tmp:
        store = Path(tmp)
        existed = {rel for rel, _ in outs if (root / rel).exists()}
        for rel, cached in outs:
            if not cached and rel in existed:
                _copy(root / rel, store / "outs" / rel)
        if stages is None and (root / "dvc.lock").exists():
            _copy(root / "dvc.lock", store / "dvc.lock")
        try:
            yield
        except BaseException as exc:
            if not _refused(exc) and (restore_if is None or restore_if(exc)):
                try:
                    with _signals_ignored():
                        _restore(root, stages, outs, existed, store)
                    log.info("failed: outputs of %s restored", ", ".join(stages or ["all"]))
                    add_note(exc, RESTORED)
                except BaseException:
                    log.exception(
                        "the previous outputs could not be restored: run "
                        "`dvc checkout` (reports without a DVC cache are lost)"
                    )
                    add_note(exc, NOT_RESTORED)  # the CLI's one line must not claim otherwise
            raise
