"""Stage `clean`: vectorised normalisation, filtering, de-duplication and the split.

Usage: `python -m components.clean`. Reads data/raw/*.parquet in record batches, writes
data/clean/{train,val,test}.parquet (doc_id, text, source, split) and reports/clean.json.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.artifacts import TEXT_CODEC, atomic_dir, atomic_file, parquet_batches, write_json
from components.contract import CLEAN_REPORT, PROFILE_REPORT, SPLITS, split_file
from components.data.clean_rules import PII, cjk_rows, count_words, mask_pii, normalise, strip_html
from components.data.data_profile import (
    Profiler,
    Sample,
    check_drift,
    main_script,
    sample,
    script_counts,
)
from components.data.data_profile import plot as plot_profile
from components.data.near_dup import ExactHashes, NearDuplicates
from components.errors import GruflowError, guarded
from components.params import Clean, Split, load_params

BATCH_DOCS = 4096
# unique text needs no dictionary, and min/max statistics of text would only grow the footer
WRITE_OPTIONS = {"compression": TEXT_CODEC,
                 "use_dictionary": ["source", "split"], "write_statistics": ["source", "split"]}
SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string()),
                    ("source", pa.string()), ("split", pa.string())])
ID_HEX = 20  # doc_id: the first 20 hex digits of the cleaned text's SHA-256
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8)
_BY_CODE = ("test", "val", "train")


def split_codes(doc_ids: Iterable[bytes], cfg: Split) -> np.ndarray:
    """Stable per-document split (index into _BY_CODE): the first 64 bits of
    sha256(f"{seed}:{doc_id}") as a fraction of 2**64 against the test and val fractions, so a
    document's split depends only on its id and the seed."""
    salt = f"{cfg.seed}:".encode()
    head = np.frombuffer(b"".join([sha256(salt + i).digest()[:8] for i in doc_ids]), ">u8")
    u = head.astype(np.float64) / 2**64  # == int.from_bytes(head, "big") / 2**64, exactly
    return np.where(u < cfg.test_fraction, 0,
                    np.where(u < cfg.test_fraction + cfg.val_fraction, 1, 2)).astype(np.int8)


def content_ids(text: pa.Array, cfg: Split) -> tuple[pa.Array, np.ndarray, pa.Array]:
    """doc_id (hex SHA-256 prefix of the UTF-8 text), the digest's first 64 bits (the
    exact-duplicate key) and the hashed split, vectorised but for one hash call each."""
    n = len(text)
    values = text.cast(pa.binary()).to_pylist()
    digests = np.frombuffer(b"".join([sha256(v).digest()[:ID_HEX // 2] for v in values]),
                            np.uint8).reshape(n, ID_HEX // 2)
    hexed = np.empty((n, ID_HEX), np.uint8)
    hexed[:, 0::2], hexed[:, 1::2] = _HEX_DIGITS[digests >> 4], _HEX_DIGITS[digests & 15]
    data = hexed.tobytes()
    ids = pa.StringArray.from_buffers(
        n, pa.py_buffer(np.arange(0, ID_HEX * (n + 1), ID_HEX, dtype=np.int32)),
        pa.py_buffer(data))
    hashes = np.frombuffer(digests[:, :8].tobytes(), ">u8").astype(np.uint64)
    codes = split_codes((data[i:i + ID_HEX] for i in range(0, len(data), ID_HEX)), cfg)
    return ids, hashes, pc.take(pa.array(_BY_CODE), pa.array(codes))


@dataclass
class Prepared:
    """One batch after the per-row rules (computed in a worker thread)."""

    table: pa.Table        # text, source, split (the source's own, else the hashed one)
    lengths: np.ndarray    # characters per document
    words: np.ndarray      # words per document
    ids: pa.Array          # content hashes (doc_id)
    hashes: np.ndarray     # the same as uint64, for the exact-duplicate memory
    sample: Sample         # the batch's profile sample: word counts, script mix
    counts: dict[str, int]


def prepare(batch: pa.RecordBatch, cfg: Clean, split: Split) -> Prepared:
    """Rules, length/word/script filters and hashes of one batch: pure, so batches run in
    parallel threads (pyarrow.compute releases the GIL)."""
    text = batch.column("text")
    counts = {"documents_in": len(text), "characters_in": pc.sum(pc.utf8_length(text)).as_py() or 0,
              "dropped_script": 0}
    rules = [strip_html] if cfg.strip_html else []
    rules.append(lambda t: normalise(t, cfg))
    if cfg.mask_pii:
        rules.append(mask_pii)
    for rule in rules:
        text, rule_counts = rule(text)
        counts.update(rule_counts)
    given = (batch.column("split") if "split" in batch.schema.names
             else pa.nulls(len(text), pa.string()))
    kept = pa.table({"text": text, "source": batch.column("source"), "split": given})
    long_enough = pc.greater_equal(pc.utf8_length(kept["text"]), cfg.min_chars)
    counts["dropped_too_short"] = kept.num_rows - pc.sum(long_enough).as_py()
    kept = kept.filter(long_enough)
    text = kept.column("text").combine_chunks()
    words = count_words(text, cjk_rows(text))
    enough = pc.greater_equal(words, cfg.min_words)
    counts["dropped_too_few_words"] = kept.num_rows - (pc.sum(enough).as_py() or 0)
    kept, words = kept.filter(enough), words.filter(enough).to_numpy()
    if cfg.scripts:  # per-document script counts only when filtering by script
        wanted = np.isin(main_script(script_counts(kept.column("text").to_pylist())),
                         cfg.scripts)
        counts["dropped_script"] = int((~wanted).sum())
        kept, words = kept.filter(pa.array(wanted)), words[wanted]
    text = kept.column("text").combine_chunks()
    ids, hashes, hashed = content_ids(text, split)
    given = kept.column("split").combine_chunks()
    own = pc.fill_null(pc.greater(pc.utf8_length(given), 0), False)
    kept = kept.set_column(2, "split", pc.if_else(own, given, hashed))  # the source's own wins
    lengths = pc.utf8_length(text).to_numpy()
    return Prepared(kept, lengths, words, ids, hashes, sample(text, lengths), counts)


def select(prep: Prepared, seen: ExactHashes, counts: dict[str, int],
           near: NearDuplicates | None, profiler: Profiler) -> pa.Table:
    """Drop exact and near duplicates of earlier documents (in stream order), profile what is
    kept. `seen` and `near` carry what was kept across batches."""
    for key, value in prep.counts.items():
        counts[key] += value
    _, first = np.unique(prep.hashes, return_index=True)
    keep = np.zeros(len(prep.ids), bool)
    keep[first] = True  # the first copy within the batch ...
    keep &= ~seen.contains(prep.hashes)  # ... unless an earlier batch had it
    counts["dropped_duplicates"] += len(keep) - int(keep.sum())
    seen.add(prep.hashes[keep])  # before the near check: a later exact copy is an exact dup
    if near is not None:
        texts = prep.table.column("text")
        for i in np.flatnonzero(keep):
            if near.is_duplicate(prep.ids[i].as_py(), texts[i].as_py()):
                keep[i] = False
                counts["dropped_near_duplicates"] += 1
    mask = pa.array(keep, pa.bool_())
    profiler.add(prep.lengths[keep], prep.words[keep], prep.sample)
    table = prep.table.filter(mask)
    ids = prep.ids.filter(mask)
    return pa.table([ids, table["text"], table["source"], table["split"]], schema=SCHEMA)


def prepared_batches(batches: Iterator[pa.RecordBatch], cfg: Clean,
                     split: Split) -> Iterator[Prepared]:
    """`prepare` on every core, results in input order, at most 2 batches per core in flight
    (bounded memory)."""
    workers = max(1, min(os.cpu_count() or 1, 8))
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


def run(cfg: Clean, split: Split, raw_dir: Path, out_dir: Path, report: Path,
        profile_path: Path | None = None, source: list[str] | None = None) -> dict:
    """Clean the snapshot in record batches. With `profile_path`, also write the data profile
    (JSON + SVG beside it) after gating its drift against the profile already there."""
    files = sorted(raw_dir.glob("*.parquet"))
    if not files:
        raise GruflowError(f"{raw_dir}: no Parquet snapshot — run the ingest stage first")
    counts = dict.fromkeys(["documents_in", "characters_in", "html_tags_removed",
                            "html_entities_unescaped", "control_chars_removed",
                            "zero_width_removed", *(f"masked_{name}" for name, _ in PII),
                            "dropped_too_short", "dropped_too_few_words", "dropped_script",
                            "dropped_duplicates", "dropped_near_duplicates",
                            "documents_out", "characters_out"], 0)
    per_split = dict.fromkeys(SPLITS, 0)
    seen = ExactHashes()
    near = NearDuplicates(cfg.near_dup_threshold, cfg.near_dup_ngram) if cfg.near_dup else None
    profiler = Profiler()
    with atomic_dir(out_dir) as tmp:
        writers = {s: pq.ParquetWriter(split_file(tmp, s), SCHEMA, **WRITE_OPTIONS)
                   for s in SPLITS}
        try:
            batches = snapshot_batches(files, BATCH_DOCS)
            for prep in prepared_batches(batches, cfg, split):
                table = select(prep, seen, counts, near, profiler)
                for name in SPLITS:
                    part = table.filter(pc.equal(table["split"], name))
                    per_split[name] += part.num_rows
                    if part.num_rows:
                        writers[name].write_table(part)
        finally:
            for writer in writers.values():
                writer.close()
        counts["documents_out"] = sum(per_split.values())
        counts["characters_out"] = profiler.characters
        _validate(counts, per_split, cfg.min_documents)
        profile = profiler.finish(source or [], per_split)
        if profile_path is not None:
            profile["drift"] = check_drift(_previous(profile_path), profile, cfg.drift,
                                           profile_path)
    summary = {**counts, "split_documents": per_split}
    write_json(report, summary)
    if profile_path is not None:
        write_json(profile_path, profile)
        with atomic_file(profile_path.with_suffix(".svg")) as tmp_svg:
            plot_profile(profile, tmp_svg)
    return summary


def _previous(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # first run, or an unreadable old profile: nothing to compare against


def _validate(counts: dict[str, int], per_split: dict[str, int], min_documents: int) -> None:
    why = (f"{counts['dropped_too_short']} too short, {counts['dropped_too_few_words']} with too "
           f"few words, {counts['dropped_duplicates']} duplicates")
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
                "source's own split a file/folder/column for it"
            )


@guarded
def main() -> None:
    p = load_params()
    reports = Path(p.paths.reports)
    s = run(p.clean, p.split, Path(p.paths.raw), Path(p.paths.clean), reports / CLEAN_REPORT,
            reports / PROFILE_REPORT, p.data.sources)
    print(f"clean: {s['documents_out']}/{s['documents_in']} documents kept "
          f"(train/val/test {'/'.join(str(v) for v in s['split_documents'].values())})")


if __name__ == "__main__":
    main()
