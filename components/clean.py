"""Stage `clean`: vectorised normalisation, filtering, de-duplication and the split.

Usage: `python -m components.clean`. Reads data/raw/*.parquet in record batches, writes
data/clean/{train,val,test}.parquet (doc_id, text, source, split) and reports/clean.json.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.artifacts import TEXT_CODEC, atomic_dir, atomic_file, parquet_batches, write_json
from components.contract import CLEAN_REPORT, PROFILE_REPORT, SPLITS, split_file
from components.data.clean_rules import PII, apply_rules, cjk_rows, count_words
from components.data.data_profile import (
    CLASSES,
    Profiler,
    Sample,
    check_drift,
    main_script,
    sample,
    script_counts,
)
from components.data.data_profile import plot as plot_profile
from components.data.near_dup import ExactHashes, NearIndex, signatures
from components.data.splits import (
    BY_CODE,
    TRAIN,
    Decision,
    content_ids,
    decide,
    gate_overlap,
    overlap,
)
from components.errors import GruflowError, guarded
from components.params import Clean, Split, load_params

BATCH_DOCS = 4096
# unique text needs no dictionary, and min/max statistics of text would only grow the footer
WRITE_OPTIONS = {
    "compression": TEXT_CODEC,
    "use_dictionary": ["source", "split"],
    "write_statistics": ["source", "split"],
}
# the temp file of pass one is read back once: uncompressed, it costs ~5x less CPU to write and
# read than compressed (disk: the text's size, deleted at the end of the stage)
PENDING_OPTIONS = {"compression": "none", "use_dictionary": ["source"], "write_statistics": False}
SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
    ]
)
NO_SAMPLE = Sample(np.zeros(len(CLASSES), np.int64), {})


REASONS = (
    "dropped_too_short",
    "dropped_too_few_words",
    "dropped_script",
    "dropped_duplicates",
    "dropped_near_duplicates",
)


@dataclass
class Prepared:
    """One batch after the per-row rules and filters (computed in a worker thread)."""

    table: pa.Table  # doc_id, text, source of the documents that passed the filters
    codes: np.ndarray  # split code (index into BY_CODE): the source's own, else hashed
    given: np.ndarray  # True where the source gave the split
    lengths: np.ndarray  # characters per document
    words: np.ndarray  # words per document
    hashes: np.ndarray  # content hashes as uint64, for the exact-duplicate memory
    sigs: tuple[np.ndarray, np.ndarray] | None  # MinHash signatures and LSH band keys
    sample: Sample  # the batch's profile sample: word counts, script mix
    counts: dict[str, int]
    drops: dict[str, np.ndarray]  # reason -> documents dropped per split code


def prepare(batch: pa.RecordBatch, cfg: Clean, split: Split) -> Prepared:
    """Rules, length/word/script filters, hashes and signatures of one batch: pure, so batches
    run in parallel threads (pyarrow.compute and NumPy release the GIL)."""
    text = batch.column("text")
    counts = {"documents_in": len(text), "characters_in": pc.sum(pc.utf8_length(text)).as_py() or 0}
    text, rule_counts = apply_rules(text, cfg)
    counts.update(rule_counts)
    text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    ids, hashes, hashed = content_ids(text, split)  # every row: a dropped one's split is counted
    given = (
        batch.column("split") if "split" in batch.schema.names else pa.nulls(len(text), pa.string())
    )
    own = pc.fill_null(pc.greater(pc.utf8_length(given), 0), False)
    names = pc.if_else(own, given, hashed)  # the source's own split wins
    codes = (
        pc.index_in(names, value_set=pa.array(BY_CODE))
        .to_numpy(zero_copy_only=False)
        .astype(np.int8)
    )
    drops = {}
    rows = np.flatnonzero(pc.utf8_length(text).to_numpy(zero_copy_only=False) >= cfg.min_chars)
    drops["dropped_too_short"] = _per_split(codes, len(text), rows)
    kept = text.take(rows)
    words = count_words(kept, cjk_rows(kept)).to_numpy(zero_copy_only=False)
    enough = words >= cfg.min_words
    drops["dropped_too_few_words"] = _per_split(codes[rows], len(rows), np.flatnonzero(enough))
    rows, words = rows[enough], words[enough]
    if cfg.scripts:  # per-document script counts only when filtering by script
        wanted = np.isin(main_script(script_counts(text.take(rows).to_pylist())), cfg.scripts)
        drops["dropped_script"] = _per_split(codes[rows], len(rows), np.flatnonzero(wanted))
        rows, words = rows[wanted], words[wanted]
    kept = text.take(rows)
    table = pa.table(
        [ids.take(rows), kept, batch.column("source").take(rows)],
        names=["doc_id", "text", "source"],
    )
    lengths = pc.utf8_length(kept).to_numpy(zero_copy_only=False)
    sigs = signatures(kept, cfg.near_dup_ngram) if cfg.near_dup else None
    return Prepared(
        table,
        codes[rows],
        own.to_numpy(zero_copy_only=False)[rows],
        lengths,
        words,
        hashes[rows],
        sigs,
        sample(kept, lengths),
        counts,
        drops,
    )


def _per_split(codes: np.ndarray, n: int, kept_rows: np.ndarray) -> np.ndarray:
    """Documents per split code among the n rows not in kept_rows."""
    dropped = np.ones(n, bool)
    dropped[kept_rows] = False
    return np.bincount(codes[dropped], minlength=len(BY_CODE))


class Stream:
    """What the sequential pass keeps of every document that survives exact de-duplication:
    its row in a temp Parquet file and a few numbers in memory (~26 B; near_dup's index spills)."""

    def __init__(self, path: Path, near: NearIndex | None) -> None:
        self.writer = pq.ParquetWriter(
            path, pa.schema(SCHEMA.field(i) for i in range(3)), **PENDING_OPTIONS
        )
        self.near = near
        self.parts: dict[str, list[np.ndarray]] = {
            k: [] for k in ("hashes", "codes", "given", "lengths", "words")
        }

    def add(self, prep: Prepared, keep: np.ndarray) -> None:
        self.writer.write_table(prep.table.filter(pa.array(keep)))
        for key, parts in self.parts.items():
            parts.append(getattr(prep, key)[keep])
        if self.near is not None and prep.sigs is not None:
            self.near.add(prep.sigs[0][keep], prep.sigs[1][keep])

    def arrays(self) -> dict[str, np.ndarray]:
        self.writer.close()
        return {k: np.concatenate(v) if v else np.empty(0) for k, v in self.parts.items()}


def select(
    prep: Prepared,
    cfg: Clean,
    seen: ExactHashes,
    counts: dict,
    split_counts: np.ndarray,
    profiler: Profiler,
) -> np.ndarray:
    """Exact de-duplication against earlier documents (stream order; a copy is identical, so
    which one is kept does not matter). Only hashed documents and a given train split are
    de-duplicated: a source's val/test document is never dropped."""
    for key, value in prep.counts.items():
        counts[key] = counts.get(key, 0) + value
    for key, per in prep.drops.items():
        split_counts[:, REASONS.index(key)] += per
    keep = np.ones(len(prep.hashes), bool)
    if cfg.dedup != "none":
        rows = np.flatnonzero(~prep.given | (prep.codes == TRAIN))
        _, first = np.unique(prep.hashes[rows], return_index=True)
        dup = np.ones(len(rows), bool)
        dup[first] = False  # the first copy within the batch ...
        dup |= seen.contains(prep.hashes[rows])  # ... unless an earlier batch had it
        keep[rows[dup]] = False
        seen.add(prep.hashes[rows[~dup]])
        split_counts[:, REASONS.index("dropped_duplicates")] += np.bincount(
            prep.codes[rows[dup]], minlength=len(BY_CODE)
        )
    profiler.add(prep.lengths[:0], prep.words[:0], prep.sample)  # lengths come in pass two
    return keep


def worker_count() -> int:
    """Threads preparing batches: every core, at most 8 (the output never depends on it)."""
    return max(1, min(os.cpu_count() or 1, 8))


def prepared_batches(
    batches: Iterator[pa.RecordBatch], cfg: Clean, split: Split
) -> Iterator[Prepared]:
    """`prepare` on every core, results in input order, at most 2 batches per core in flight
    (bounded memory)."""
    workers = worker_count()
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.submit(prepare, batch, cfg, split))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def snapshot_batches(files: list[Path], size: int) -> Iterator[pa.RecordBatch]:
    """The snapshot's text, source (and split, when the source gave one) in record batches."""
    for path in files:
        names = pq.read_schema(path).names
        columns = ["text", "source", *(["split"] if "split" in names else [])]
        yield from parquet_batches(path, columns, size)


def run(
    cfg: Clean,
    split: Split,
    raw_dir: Path,
    out_dir: Path,
    report: Path,
    profile_path: Path | None = None,
    source: list[str] | None = None,
) -> dict:
    """Clean the snapshot in record batches. Pass one applies the rules, filters and exact
    de-duplication and parks the survivors in a temp file; once every document is known, the
    near-duplicate clusters decide splits and near drops, and pass two writes the splits. With
    `profile_path`, also write the data profile (JSON + SVG beside it) after gating its drift
    against the profile already there."""
    files = sorted(raw_dir.glob("*.parquet"))
    if not files:
        raise GruflowError(f"{raw_dir}: no Parquet snapshot — run the ingest stage first")
    counts = dict.fromkeys(
        [
            "documents_in",
            "characters_in",
            "html_tags_removed",
            "html_entities_unescaped",
            "control_chars_removed",
            "zero_width_removed",
            *(f"masked_{name}" for name, _ in PII),
        ],
        0,
    )
    split_counts = np.zeros((len(BY_CODE), len(REASONS)), np.int64)
    seen, profiler = ExactHashes(), Profiler()
    with atomic_dir(out_dir) as tmp:
        pending = tmp / ".pending.parquet"
        stream = Stream(pending, NearIndex(cfg.near_dup_threshold, tmp) if cfg.near_dup else None)
        try:
            for prep in prepared_batches(snapshot_batches(files, BATCH_DOCS), cfg, split):
                stream.add(prep, select(prep, cfg, seen, counts, split_counts, profiler))
        finally:
            docs = stream.arrays()
        pairs, similar = (
            stream.near.pairs(worker_count())
            if stream.near is not None
            else (np.empty((0, 2), np.int64), np.empty(0))
        )
        close = similar >= cfg.near_dup_threshold
        decision = decide(
            docs["hashes"],
            docs["codes"],
            docs["given"],
            pairs,
            close,
            cfg.dedup,
            split.group_near_duplicates,
        )
        split_counts[:, REASONS.index("dropped_near_duplicates")] = np.bincount(
            decision.codes[~decision.keep], minlength=len(BY_CODE)
        )
        per_split = write_splits(tmp, pending, decision, docs, profiler)
        pending.unlink()
        for i, reason in enumerate(REASONS):
            counts[reason] = int(split_counts[:, i].sum())
        counts["documents_out"] = sum(per_split.values())
        counts["characters_out"] = profiler.characters
        _validate(counts, per_split, cfg.min_documents)
        leak = overlap(
            docs["hashes"], decision.codes, decision.keep, pairs[close] if cfg.near_dup else None
        )
        leak |= {"enforced": not docs["given"].any(), "max_fraction": split.max_test_train_overlap}
        gate_overlap(leak)
        profile = profiler.finish(source or [], per_split)
        if profile_path is not None:
            profile["drift"] = check_drift(
                _previous(profile_path), profile, cfg.drift, profile_path
            )
    by_split = {
        name: {
            "kept": per_split[name],
            **{r: int(split_counts[code, i]) for i, r in enumerate(REASONS)},
        }
        for code, name in enumerate(BY_CODE)
    }
    summary = {
        **counts,
        "split_documents": per_split,
        "split_counts": by_split,
        "test_train_overlap": leak,
    }
    write_json(report, summary)
    if profile_path is not None:
        write_json(profile_path, profile)
        with atomic_file(profile_path.with_suffix(".svg")) as tmp_svg:
            plot_profile(profile, tmp_svg)
    return summary


def write_splits(
    tmp: Path, pending: Path, decision: Decision, docs: dict[str, np.ndarray], profiler: Profiler
) -> dict[str, int]:
    """Pass two: the parked documents to their final split files, in stream order."""
    per_split = dict.fromkeys(SPLITS, 0)
    writers = {s: pq.ParquetWriter(split_file(tmp, s), SCHEMA, **WRITE_OPTIONS) for s in SPLITS}
    start = 0
    try:
        for batch in parquet_batches(pending, None, BATCH_DOCS):
            end = start + batch.num_rows
            keep, codes = decision.keep[start:end], decision.codes[start:end]
            profiler.add(
                docs["lengths"][start:end][keep], docs["words"][start:end][keep], NO_SAMPLE
            )
            for code, name in enumerate(BY_CODE):
                rows = np.flatnonzero(keep & (codes == code))
                if len(rows):
                    part = batch.take(rows)
                    writers[name].write_table(
                        pa.table(
                            [*part.columns, pa.repeat(pa.scalar(name), len(rows))], schema=SCHEMA
                        )
                    )
                    per_split[name] += len(rows)
            start = end
    finally:
        for writer in writers.values():
            writer.close()
    return per_split


def _previous(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # first run, or an unreadable old profile: nothing to compare against


def _validate(counts: dict[str, int], per_split: dict[str, int], min_documents: int) -> None:
    why = (
        f"{counts['dropped_too_short']} too short, {counts['dropped_too_few_words']} with too "
        f"few words, {counts['dropped_duplicates']} duplicates"
    )
    if counts["documents_out"] == 0:
        raise GruflowError(
            f"clean: all {counts['documents_in']} documents were dropped ({why})"
            " — lower clean.min_chars/clean.min_words or add text"
        )
    if counts["documents_out"] < min_documents:
        raise GruflowError(
            f"clean: only {counts['documents_out']} of {counts['documents_in']} documents kept "
            f"({why}), below clean.min_documents={min_documents} — add text or lower the limits"
        )
    for name, n in per_split.items():
        if n == 0:
            raise GruflowError(
                f"clean: split '{name}' is empty ({counts['documents_out']} documents in all) — "
                "add documents, raise split.val_fraction/split.test_fraction, or give the "
                "source's own split a file/folder/column for it (near copies share a split: "
                "split.group_near_duplicates)"
            )


@guarded
def main() -> None:
    p = load_params()
    reports = Path(p.paths.reports)
    s = run(
        p.clean,
        p.split,
        Path(p.paths.raw),
        Path(p.paths.clean),
        reports / CLEAN_REPORT,
        reports / PROFILE_REPORT,
        p.data.sources,
    )
    print(
        f"clean: {s['documents_out']}/{s['documents_in']} documents kept "
        f"(train/val/test {'/'.join(str(v) for v in s['split_documents'].values())})"
    )


if __name__ == "__main__":
    main()
