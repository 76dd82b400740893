"""Stage `clean`: vectorised normalisation, filtering, de-duplication and the split.

Usage: `python -m components.clean`. Reads data/raw/*.parquet in record batches, writes
data/clean/{train,val,test}.parquet (doc_id, text, source, split) and reports/clean.json.
"""

from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from components.artifacts import atomic_dir, write_json
from components.errors import GruflowError, guarded
from components.params import Clean, Split, load_params

SPLITS = ("train", "val", "test")
SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string()),
                    ("source", pa.string()), ("split", pa.string())])
# RE2 patterns. Vertical tab, form feed, NEL and the Unicode line/paragraph separators are
# line breaks; the other C0/C1 controls (except \t) are removed, as are zero-width characters.
LINE_BREAKS = r"[\x0b\x0c\x85\x{2028}\x{2029}]"
CONTROL = r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]"
ZERO_WIDTH = r"[\x{200b}-\x{200d}\x{2060}\x{feff}]"


def nfkc(text: pa.Array) -> pa.Array:
    """Unicode NFKC. ASCII strings are already NFKC and pass through untouched.

    pyarrow's `utf8_normalize` does not recompose on pyarrow 25 (apache/arrow#51225: 'café'
    stays decomposed), so non-ASCII strings go through `unicodedata` instead.
    """
    is_ascii = pc.string_is_ascii(text)
    if pc.all(is_ascii).as_py() is not False:
        return text
    flags = is_ascii.to_pylist()
    return pa.array([v if ok or v is None else unicodedata.normalize("NFKC", v)
                     for v, ok in zip(text.to_pylist(), flags, strict=True)], pa.string())


def normalise(text: pa.Array, cfg: Clean) -> tuple[pa.Array, dict[str, int]]:
    """`\\n` line ends, controls and zero-width removed, NFKC, whitespace collapsed."""
    counts = {}
    text = pc.replace_substring_regex(text, r"\r\n?", "\n")
    text = pc.replace_substring_regex(text, LINE_BREAKS, "\n")
    for name, pattern in (("control_chars_removed", CONTROL), ("zero_width_removed", ZERO_WIDTH)):
        counts[name] = pc.sum(pc.count_substring_regex(text, pattern)).as_py() or 0
        text = pc.replace_substring_regex(text, pattern, "")
    text = nfkc(text)
    text = pc.replace_substring_regex(text, r"[^\S\n]+", " ")  # runs of blanks -> one space
    text = pc.replace_substring_regex(text, r" ?\n ?", "\n")
    text = pc.replace_substring_regex(text, r"\n{3,}", "\n\n")
    text = pc.utf8_trim_whitespace(text)
    if cfg.lowercase:
        text = pc.utf8_lower(text)
    return text, counts


def assign_split(doc_ids: list[str], cfg: Split) -> list[str]:
    """Stable per-document split: depends only on the document's id and the seed."""
    out = []
    for doc in doc_ids:
        digest = hashlib.sha256(f"{cfg.seed}:{doc}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        out.append("test" if u < cfg.test_fraction else
                   "val" if u < cfg.test_fraction + cfg.val_fraction else "train")
    return out


def clean_batch(batch: pa.RecordBatch, cfg: Clean, split: Split, seen: set[str],
                counts: dict[str, int]) -> pa.Table:
    """Clean one batch; `seen` carries content hashes across batches for exact de-duplication."""
    text, rule_counts = normalise(batch.column("text"), cfg)
    for key, value in rule_counts.items():
        counts[key] += value
    long_enough = pc.greater_equal(pc.utf8_length(text), cfg.min_chars)
    counts["dropped_too_short"] += len(text) - pc.sum(long_enough).as_py()
    kept = pa.table({"text": text, "source": batch.column("source")}).filter(long_enough)
    ids, keep = [], []
    for value in kept.column("text").to_pylist():
        doc = hashlib.sha256(value.encode("utf-8")).hexdigest()[:20]
        keep.append(doc not in seen)
        seen.add(doc)
        ids.append(doc)
    counts["dropped_duplicates"] += keep.count(False)
    mask = pa.array(keep, pa.bool_())
    ids = pa.array(ids, pa.string()).filter(mask)
    kept = kept.filter(mask)
    splits = pa.array(assign_split(ids.to_pylist(), split), pa.string())
    return pa.table([ids, kept.column("text"), kept.column("source"), splits], schema=SCHEMA)


def run(cfg: Clean, split: Split, raw_dir: Path, out_dir: Path, report: Path) -> dict:
    files = sorted(raw_dir.glob("*.parquet"))
    if not files:
        raise GruflowError(f"{raw_dir}: no Parquet snapshot — run the ingest stage first")
    counts = dict.fromkeys(["documents_in", "characters_in", "control_chars_removed",
                            "zero_width_removed", "dropped_too_short", "dropped_duplicates",
                            "documents_out", "characters_out"], 0)
    per_split = dict.fromkeys(SPLITS, 0)
    seen: set[str] = set()
    with atomic_dir(out_dir) as tmp:
        writers = {s: pq.ParquetWriter(tmp / f"{s}.parquet", SCHEMA, compression="zstd")
                   for s in SPLITS}
        try:
            for batch in ds.dataset(files).to_batches(columns=["text", "source"]):
                counts["documents_in"] += batch.num_rows
                counts["characters_in"] += pc.sum(pc.utf8_length(batch.column("text"))).as_py() or 0
                table = clean_batch(batch, cfg, split, seen, counts)
                counts["characters_out"] += pc.sum(pc.utf8_length(table["text"])).as_py() or 0
                for name in SPLITS:
                    part = table.filter(pc.equal(table["split"], name))
                    per_split[name] += part.num_rows
                    if part.num_rows:
                        writers[name].write_table(part)
        finally:
            for writer in writers.values():
                writer.close()
        counts["documents_out"] = sum(per_split.values())
        _validate(counts, per_split)
    summary = {**counts, "split_documents": per_split}
    write_json(report, summary)
    return summary


def _validate(counts: dict[str, int], per_split: dict[str, int]) -> None:
    if counts["documents_out"] == 0:
        raise GruflowError(
            f"clean: all {counts['documents_in']} documents were dropped "
            f"({counts['dropped_too_short']} too short, {counts['dropped_duplicates']} duplicates)"
            " — lower clean.min_chars or add text"
        )
    for name, n in per_split.items():
        if n == 0:
            raise GruflowError(
                f"clean: split '{name}' is empty ({counts['documents_out']} documents in all) — "
                "add documents or raise split.val_fraction/split.test_fraction"
            )


@guarded
def main() -> None:
    p = load_params()
    s = run(p.clean, p.split, Path(p.paths.raw), Path(p.paths.clean),
            Path(p.paths.reports) / "clean.json")
    print(f"clean: {s['documents_out']}/{s['documents_in']} documents kept "
          f"(train/val/test {'/'.join(str(v) for v in s['split_documents'].values())})")


if __name__ == "__main__":
    main()
