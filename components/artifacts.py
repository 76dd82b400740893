"""Atomic writes of stage outputs (write beside the target, then rename over it), bounded-memory
reads of the Parquet files stages hand each other, and `.keras` files made byte-stable (train's
model.keras, finetune's classifier.keras).

A failed stage never leaves a half-written output, and the previous output stays intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# Codec of the text tables stages hand each other (raw snapshot, cleaned splits): snappy reads
# ~4x and writes ~1.5x faster than zstd for ~1.5x the bytes, and these files are re-read by the
# next stage far more often than they are archived.
TEXT_CODEC = "snappy"


@contextlib.contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield a fresh temp folder that replaces `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: Path | str) -> Iterator[Path]:
    """Yield a temp path in the target's folder; it is renamed onto `target` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(0o644)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(target: Path | str, payload: Any, *, text: bool = False) -> None:
    """Indented, sorted UTF-8 JSON; with `text`, non-ASCII text stays text ("是", not
    "\\u662f") for people reading a report of words in any language."""
    with atomic_file(target) as tmp:
        tmp.write_text(
            json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=not text) + "\n",
            encoding="utf-8",
        )


def parquet_batches(
    path: Path | str, columns: list[str] | None, size: int, row_groups: Iterable[int] | None = None
) -> Iterator[pa.RecordBatch]:
    """A Parquet file's columns (None: all) of all or the given row groups, one row group at a
    time in batches of at most `size` rows. pre_buffer must be off: pyarrow's default caches
    every row group read until the file is closed, so memory would grow with the file (as it
    does with a pyarrow Dataset scan)."""
    with pq.ParquetFile(path, pre_buffer=False) as file:
        yield from file.iter_batches(
            batch_size=size,
            columns=columns,
            use_threads=False,
            row_groups=None if row_groups is None else list(row_groups),
        )


def _renumber_shared(node, ids: dict) -> None:
    """Replace Keras's `shared_object_id`s (memory addresses, `id(obj)`) by 1, 2, ... in order
    of appearance; the loader only matches them with each other."""
    if isinstance(node, dict):
        if "shared_object_id" in node:
            node["shared_object_id"] = ids.setdefault(node["shared_object_id"], len(ids) + 1)
        for value in node.values():
            _renumber_shared(value, ids)
    elif isinstance(node, list):
        for value in node:
            _renumber_shared(value, ids)


def stable_keras_file(path: Path | str) -> None:
    """Rewrite a `.keras` zip without what changes from run to run for the same model: Keras
    writes `date_saved` into metadata.json, stamps the weights entry with the clock and names
    shared objects by memory address in config.json — the same weights would get another DVC
    hash on every run. Weights stay byte for byte; entries keep their order."""
    path = Path(path)
    with zipfile.ZipFile(path) as src:
        entries = [(info.filename, src.read(info), info.compress_type) for info in src.infolist()]
    with zipfile.ZipFile(path, "w") as dst:
        for name, data, compression in entries:
            if name == "metadata.json":
                meta = json.loads(data)
                meta["date_saved"] = "1980-01-01@00:00:00"
                data = json.dumps(meta).encode()
            elif name == "config.json":
                config = json.loads(data)
                _renumber_shared(config, {})
                data = json.dumps(config).encode()
            dst.writestr(
                zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)),
                data,
                compress_type=compression,
            )
