"""`gruflow watch`: notice new, changed or removed files under the folder/file sources of
`data.source` and tell the Prefect server with the custom event `gruflow.data.changed`; the
`gruflow-retrain` deployment's trigger (prefect.yaml) turns it into one retrain.

Usage: `PREFECT_API_URL=http://127.0.0.1:4200/api gruflow watch [--project DIR] [--once]`.
Polling a snapshot (size + mtime of every matching file) works on any file system (NFS, bind
mounts) where inotify does not; the snapshot survives restarts in .gruflow/watch.json, so files
that arrived while the watcher was down are reported at its next start.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.data.corpus import HF_PREFIX, source_files
from components.errors import GruflowError
from components.params import Data, load_params

log = logging.getLogger(__name__)

EVENT = "gruflow.data.changed"
STATE = Path(".gruflow") / "watch.json"
MAX_NAMES = 100  # file names carried in one event; the rest are counted (changed_total)

Snapshot = dict[str, tuple[int, int]]  # path -> (size in bytes, mtime in ns)


def resource_id(model_name: str) -> str:
    """The event's resource: one per project, named by its registered model (the same on the
    machine that watches and the one that deploys); prefect.yaml's trigger matches it."""
    return f"gruflow.project.{model_name}"


def watched_paths(data: Data, root: Path) -> list[Path]:
    """The file/folder sources of data.source (builtin and hf: sources cannot be watched)."""
    paths = [root / s for s in data.sources if s != "builtin" and not s.startswith(HF_PREFIX)]
    if not paths:
        raise GruflowError(
            f"data.source {data.source!r} has no file or folder to watch — "
            "point data.source at a folder (e.g. data/incoming) to use "
            "`gruflow watch`"
        )
    return paths


def take_snapshot(paths: list[Path], include: list[str]) -> Snapshot:
    """Size and mtime of every file the ingest stage would read (an empty folder is empty)."""
    snap: Snapshot = {}
    for source in paths:
        try:
            files = source_files(source, include)
        except GruflowError:
            if source.is_dir():  # no readable file yet: nothing to report
                continue
            raise
        for f in files:
            try:
                with_stat = f.stat()
            except FileNotFoundError:  # removed since the walk listed it: not there now
                continue
            snap[str(f)] = (with_stat.st_size, with_stat.st_mtime_ns)
    return snap


def diff(old: Snapshot, new: Snapshot) -> tuple[list[str], list[str]]:
    """(new or changed files, removed files), sorted."""
    changed = sorted(p for p, sig in new.items() if old.get(p) != sig)
    removed = sorted(p for p in old if p not in new)
    return changed, removed


@dataclass
class Pending:
    """Changes seen since the last event; sent once a poll finds nothing new (a burst of
    files, or one file still being written, becomes one event)."""

    changed: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)

    def add(self, changed: list[str], removed: list[str]) -> None:
        self.changed |= set(changed)
        self.changed -= set(removed)
        self.removed |= set(removed)
        self.removed -= set(changed)

    def __bool__(self) -> bool:
        return bool(self.changed or self.removed)


def payload(root: Path, pending: Pending) -> dict:
    changed, removed = sorted(pending.changed), sorted(pending.removed)
    return {
        "project": str(root),
        "changed": changed[:MAX_NAMES],
        "removed": removed[:MAX_NAMES],
        "changed_total": len(changed),
        "removed_total": len(removed),
    }


def server_down() -> str | None:
    """Why the Prefect server cannot take an event now (None when it can): an event sent to
    a server that is down would be lost, so the changes wait for the next poll."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    return None if error is None else f"{type(error).__name__}: {error}"


def emit(root: Path, model_name: str, pending: Pending) -> bool:
    """Send the event and wait until Prefect's event client has handed it over; False (the
    changes stay pending) when the server is unreachable."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    reason = server_down()
    if reason:
        log.warning(
            "gruflow watch: Prefect server unreachable (%s); retrying at the next poll", reason
        )
        return False
    body = payload(root, pending)
    event = emit_event(
        event=EVENT,
        payload=body,
        resource={
            "prefect.resource.id": resource_id(model_name),
            "prefect.resource.name": model_name,
            "gruflow.project": str(root),
        },
    )
    if event is None:
        raise GruflowError("Prefect did not send the event (no PREFECT_API_URL?)")
    EventsWorker.drain_all(timeout=30)  # sent in the background: flush before moving on
    print(
        f"gruflow watch: {EVENT}: {body['changed_total']} new or changed, "
        f"{body['removed_total']} removed file(s)",
        flush=True,
    )
    return True


def _load_state(path: Path) -> Snapshot | None:
    try:
        return {p: tuple(sig) for p, sig in json.loads(path.read_text()).items()}
    except (OSError, ValueError):
        return None


def _save_state(path: Path, snap: Snapshot) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(snap))
    os.replace(tmp, path)


def watch(root: Path, once: bool = False, polls: int | None = None) -> int:
    """Poll until interrupted (or `polls` polls); returns the number of events sent. The
    saved snapshot advances only after an event was handed to Prefect's event client."""
    params = load_params(root / "params.yaml")
    paths = watched_paths(params.data, root)
    interval = params.orchestration.watch_interval
    state = root / STATE
    seen = _load_state(state)
    current = take_snapshot(paths, params.data.include)
    if seen is None:  # first start: today's files are what the last retrain saw
        _save_state(state, current)
        seen = current
    pending, sent, n = Pending(), 0, 0
    pending.add(*diff(seen, current))
    print(
        f"gruflow watch: watching {', '.join(map(str, paths))} every {interval} s "
        f"({len(current)} file(s))",
        flush=True,
    )
    while True:
        n += 1
        if polls is not None and n > polls:
            return sent
        if not once:
            time.sleep(interval)
        new = take_snapshot(paths, params.data.include)
        changes = diff(current, new)
        current = new
        if any(changes):
            pending.add(*changes)
            if not once:
                continue  # still arriving: wait for a quiet poll
        if pending and emit(root, params.registry.model_name, pending):
            _save_state(state, current)
            pending, sent = Pending(), sent + 1
        if once:
            return sent


def _watch(args: argparse.Namespace) -> int:
    root = Path(args.project).resolve()
    load_params(root / "params.yaml")
    if not os.environ.get("PREFECT_API_URL"):
        raise GruflowError(
            "gruflow watch sends events to a Prefect server: set "
            "PREFECT_API_URL (e.g. http://127.0.0.1:4200/api after "
            "`prefect server start`)"
        )
    try:
        sent = watch(root, once=args.once)
    except KeyboardInterrupt:  # the normal way to stop a watcher; unsent changes stay pending
        print("gruflow watch: stopped (changes not yet sent are reported at the next start)")
        return 0
    print(f"gruflow watch: {sent} event(s) sent")
    return 0


def add_command(sub, common: argparse.ArgumentParser) -> None:
    w = sub.add_parser(
        "watch",
        parents=[common],
        help=f"send the Prefect event {EVENT} when files under data.source "
        "change (triggers the gruflow-retrain deployment)",
    )
    w.add_argument(
        "--once",
        action="store_true",
        help="compare with the saved snapshot once, send at most one event, exit",
    )
    w.set_defaults(func=_watch)
