"""Stage `ingest`: snapshot the configured source into Parquet under data/raw/.

Usage: `python -m components.ingest` (the DVC stage command).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from components.artifacts import atomic_dir, write_json
from components.corpus import Document, documents
from components.errors import GruflowError, guarded
from components.params import Data, load_params

log = logging.getLogger(__name__)

# `split` is the source's own split (null = none given), `meta` its other columns as JSON.
SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string()), ("source", pa.string()),
                    ("split", pa.string()), ("meta", pa.string())])
BATCH_DOCS = 4096


def doc_id(text: str) -> str:
    """Stable content hash: the same text always gets the same id."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def to_batches(docs: Iterable[Document], size: int = BATCH_DOCS) -> Iterator[pa.RecordBatch]:
    it = iter(docs)
    while chunk := list(islice(it, size)):
        yield pa.record_batch(
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
    docs: Iterable[Document] = documents(cfg)
    if cfg.max_docs:
        docs = islice(docs, cfg.max_docs)
    counts = {"documents": 0, "characters": 0, "documents_with_bad_bytes": 0,
              "documents_with_source_split": 0}

    def counted(items: Iterable[Document]) -> Iterator[Document]:
        for d in items:
            counts["documents"] += 1
            counts["characters"] += len(d.text)
            counts["documents_with_bad_bytes"] += d.had_bad_bytes
            counts["documents_with_source_split"] += d.split is not None
            yield d

    with atomic_dir(out_dir) as tmp:
        with pq.ParquetWriter(tmp / "corpus.parquet", SCHEMA, compression="zstd") as writer:
            for batch in to_batches(counted(docs)):
                writer.write_batch(batch)
        if counts["documents"] == 0:
            raise GruflowError(f"data.source: '{cfg.source}' yielded no documents")
    summary = {"source": cfg.source, **counts}
    write_json(report, summary)
    return summary


@guarded
def main() -> None:
    params = load_params()
    summary = run(params.data, Path(params.paths.raw), Path(params.paths.reports) / "ingest.json")
    print(f"ingest: {summary['documents']} documents, {summary['characters']} characters")


if __name__ == "__main__":
    main()
