"""Stage `ingest`: snapshot the configured source into Parquet under data/raw/.

Usage: `python -m components.ingest` (the DVC stage command).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from components.artifacts import TEXT_CODEC, atomic_dir, write_json
from components.data.corpus import Document, documents
from components.errors import GruflowError, guarded
from components.params import Data, load_params

log = logging.getLogger(__name__)

# `split` is the source's own split (null = none given), `meta` its other columns as JSON.
SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("meta", pa.string()),
    ]
)
# A batch (one Parquet row group) ends at BATCH_DOCS documents or BATCH_CHARS characters, so
# memory stays bounded however many documents stream through, and however long they are.
BATCH_DOCS = 4096
BATCH_CHARS = 16 * 2**20


def doc_id(text: str) -> str:
    """Stable content hash: the same text always gets the same id."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def to_batches(
    docs: Iterable[Document], size: int = BATCH_DOCS, max_chars: int = BATCH_CHARS
) -> Iterator[pa.RecordBatch]:
    chunk: list[Document] = []
    chars = 0
    for doc in docs:
        chunk.append(doc)
        chars += len(doc.text)
        if len(chunk) >= size or chars >= max_chars:
            yield _batch(chunk)
            chunk, chars = [], 0
    if chunk:
        yield _batch(chunk)


def _batch(chunk: list[Document]) -> pa.RecordBatch:
    return pa.record_batch(
        [
            pa.array([doc_id(d.text) for d in chunk], pa.string()),
            pa.array([d.text for d in chunk], pa.string()),
            pa.array([d.source for d in chunk], pa.string()),
            pa.array([d.split for d in chunk], pa.string()),
            pa.array([d.meta for d in chunk], pa.string()),
        ],
        schema=SCHEMA,
    )


def run(cfg: Data, out_dir: Path, report: Path) -> dict:
    files: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    docs: Iterable[Document] = documents(cfg, files, dropped, skipped)
    if cfg.max_docs:
        docs = islice(docs, cfg.max_docs)
    counts = {
        "documents": 0,
        "characters": 0,
        "documents_with_bad_bytes": 0,
        "documents_with_source_split": 0,
    }

    def counted(items: Iterable[Document]) -> Iterator[Document]:
        for d in items:
            counts["documents"] += 1
            counts["characters"] += len(d.text)
            counts["documents_with_bad_bytes"] += d.had_bad_bytes
            counts["documents_with_source_split"] += d.split is not None
            yield d

    with atomic_dir(out_dir) as tmp:
        # no min/max statistics of the text and meta columns: nothing filters on them, and the
        # footer would keep up to 8 KiB of them for every row group until the file is closed;
        # no dictionary for unique values either (building one and falling back costs reads
        # and writes)
        with pq.ParquetWriter(
            tmp / "corpus.parquet",
            SCHEMA,
            compression=TEXT_CODEC,
            use_dictionary=["source", "split"],
            write_statistics=["doc_id", "source", "split"],
        ) as writer:
            for batch in to_batches(counted(docs), BATCH_DOCS, BATCH_CHARS):
                writer.write_batch(batch)
        # files fully read, by outcome; a file cut short by data.max_docs is not counted
        counts |= {
            "files_read": files.total(),
            "empty_files": files["empty"],
            "skipped_binary_files": files["binary"],
            "dropped": dict(sorted(dropped.items())),
            "skipped_files": dict(sorted(skipped.items())),
        }
        if counts["documents"] == 0:
            raise GruflowError(
                f"data.source: '{cfg.source}' yielded no documents ({counts['files_read']} files:"
                f" {counts['empty_files']} empty, {counts['skipped_binary_files']} skipped as "
                f"binary; {dropped.total()} rows without a string text, "
                f"{skipped.total()} files of other types) — point data.source at text, or check "
                "data.unit/data.text_column"
            )
    summary = {"source": cfg.source, **counts}
    write_json(report, summary)
    _warn_losses(cfg, dropped, skipped, counts["documents_with_bad_bytes"])
    return summary


def _warn_losses(
    cfg: Data, dropped: Counter[str], skipped: Counter[str], bad_bytes: int = 0
) -> None:
    """One line for everything the source held that did not become a document, or not as
    written (a Latin-1 file reads as UTF-8 with every accented letter turned into U+FFFD)."""
    parts = []
    if dropped:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items()))
        parts.append(f"dropped {dropped.total()} rows without a string '{cfg.text_column}' ({why})")
    if skipped:
        what = ", ".join(f"{n} {suffix}" for suffix, n in sorted(skipped.items()))
        parts.append(f"skipped {skipped.total()} files of other types ({what})")
    if bad_bytes:
        parts.append(
            f"{bad_bytes} documents had bytes that are not UTF-8, replaced by U+FFFD "
            "(convert the source to UTF-8)"
        )
    if parts:
        log.warning(
            "ingest: %s — counted in ingest.json (dropped, skipped_files, "
            "documents_with_bad_bytes)",
            "; ".join(parts),
        )


@guarded
def main() -> None:
    params = load_params()
    summary = run(params.data, Path(params.paths.raw), Path(params.paths.reports) / "ingest.json")
    print(f"ingest: {summary['documents']} documents, {summary['characters']} characters")


if __name__ == "__main__":
    main()
