"""Ingest streams: text units read in chunks match the whole-file split, bad bytes are flagged
per document, table columns may change type down the file, and peak memory stays flat as the
corpus grows."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.data import readers
from tests.test_ingest import read_rows, run_ingest

ROOT = Path(__file__).resolve().parents[1]


def split_whole(raw: bytes, unit: str) -> list[str]:
    """The reference: decode the whole file, then split it (what ingest did before streaming)."""
    text = raw.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    import re

    parts = re.split(r"\n[^\S\n]*\n\s*", text) if unit == "paragraph" else text.split("\n")
    return [part for part in parts if part.strip()]


@pytest.mark.parametrize("unit", ["line", "paragraph"])
def test_streamed_text_units_match_whole_file_split(params, tmp_path, monkeypatch, unit):
    monkeypatch.setattr(readers, "READ_BYTES", 5)  # chunk edges fall everywhere, inside \r\n too
    rng = random.Random(0)
    pieces = [
        "word",
        "two words",
        "é ü",
        "  ",
        "\t",
        "\u3000",
        "\n",
        "\r\n",
        "\r",
        "\n\n",
        "\r\n\r\n",
        "\n  \n",
        " \r\n\t\n  ",
    ]
    cfg = params.data.model_copy(update={"unit": unit})
    for i in range(200):
        raw = "".join(rng.choices(pieces, k=rng.randint(0, 30))).encode()
        if i % 3 == 0:
            raw = b"\xef\xbb\xbf" + raw
        path = tmp_path / f"{i}.txt"
        path.write_bytes(raw)
        assert [d.text for d in readers.file_documents(path, cfg)] == split_whole(raw, unit), raw


def test_ingest_flags_bad_bytes_per_line_document(params, tmp_path):
    src = tmp_path / "lines.txt"
    src.write_bytes(b"good line\nbad \xff line\r\nanother good line\n")
    summary = run_ingest(params, src, tmp_path / "raw", unit="line")
    texts = [r["text"] for r in read_rows(tmp_path / "raw" / "corpus.parquet")]
    assert texts == ["good line", "bad \ufffd line", "another good line"]
    assert summary["documents_with_bad_bytes"] == 1


def test_ingest_table_columns_may_change_type_down_the_file(params, tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "READ_BYTES", 256)  # many CSV blocks: inference sees the first
    src = tmp_path / "src"
    src.mkdir()
    n = 200
    (src / "a.csv").write_text(
        "text,note,n\n" + "".join(f"row {i},,{i}\n" for i in range(n)) + "late row,a note,x7\n",
        encoding="utf-8",
    )
    (src / "b.jsonl").write_text(
        "".join(json.dumps({"text": f"doc {i}", "id": i}) + "\n" for i in range(n))
        + json.dumps({"text": "late doc", "id": "x7", "extra": [1]})
        + "\n",
        encoding="utf-8",
    )
    summary = run_ingest(params, src, tmp_path / "raw")
    rows = read_rows(tmp_path / "raw" / "corpus.parquet")
    assert summary["documents"] == len(rows) == 2 * (n + 1)
    meta = {r["text"]: json.loads(r["meta"]) for r in rows}
    assert meta["late row"] == {"note": "a note", "n": "x7"}  # read with the other columns as text
    assert meta["row 5"] == {"note": "", "n": "5"}
    assert meta["doc 5"] == {"id": 5}
    assert meta["late doc"] == {"id": "x7", "extra": [1]}


def write_streaming_corpus(root: Path, n: int) -> int:
    """The same n documents as .txt lines, .jsonl, .csv and .parquet; returns the bytes written."""
    root.mkdir(parents=True)
    texts = [f"{i}: " + "the parser reads the header and returns a value " * 40 for i in range(n)]
    (root / "lines.txt").write_text("\n".join(texts), encoding="utf-8")
    (root / "docs.jsonl").write_text(
        "".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts))
    )
    (root / "docs.csv").write_text("text,n\n" + "".join(f"{t},{i}\n" for i, t in enumerate(texts)))
    pq.write_table(
        pa.table({"text": texts, "n": list(range(n))}), root / "docs.parquet", row_group_size=256
    )
    return sum(p.stat().st_size for p in root.iterdir())


# Runs ingest in a fresh process and prints its peak RSS (VmHWM: ru_maxrss would keep the
# parent's peak across fork + exec). The buffers are made small so that a corpus of a few MB
# already fills them: what is measured is whether memory keeps growing with the corpus once
# they are full (with the real sizes the same holds from a few tens of MB on).
MEMORY_PROBE = """
import json, re, sys
from pathlib import Path
from components import ingest
from components.data import readers
from tests.test_ingest import read_rows, run_ingest
from components.params import load_params
readers.READ_BYTES, readers.BATCH_ROWS = 1 << 16, 64
ingest.BATCH_DOCS, ingest.BATCH_CHARS = 64, 1 << 17
root, cfg = Path(sys.argv[1]), load_params(sys.argv[2]).data.model_copy(update={"unit": "line"})
def run(name):
    out = root / f"{name}_raw"
    return ingest.run(cfg.model_copy(update={"source": str(root / name)}), out,
                      out.with_suffix(".json"))["documents"]
def peak_kib():
    return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text())[1])
run("warm")  # imports and allocator pools settle before the baseline
before = peak_kib()
docs = run("src")
print(json.dumps({"docs": docs, "before": before, "peak": peak_kib()}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_ingest_peak_memory_does_not_grow_with_the_corpus(tmp_path):

    sizes, procs = {}, {}
    for scale, n in [("1x", 1000), ("10x", 10_000)]:
        root = tmp_path / scale
        sizes[scale] = write_streaming_corpus(root / "src", n)
        (root / "warm").mkdir()
        (root / "warm" / "a.txt").write_text("warm up\n", encoding="utf-8")
        procs[scale] = subprocess.Popen(  # both at once: two cores, half the wall time
            [sys.executable, "-c", MEMORY_PROBE, str(root), str(ROOT / "params.yaml")],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    got = {}
    for scale, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        got[scale] = json.loads(out)
    assert got["1x"]["docs"] == 4 * 1000 and got["10x"]["docs"] == 4 * 10_000
    small, big = got["1x"]["peak"], got["10x"]["peak"]  # KiB
    # the bound: a 10x larger corpus raises peak RSS by at most 1.3x ...
    assert big <= 1.3 * small, got
    # ... and, sharper: the 50 MB more input adds well under a third of that to the peak (the
    # whole-file readers added about three times the input)
    assert (big - small) * 1024 < (sizes["10x"] - sizes["1x"]) / 3, (got, sizes)


@pytest.mark.parametrize("reader", ["artifacts.parquet_batches", "readers._batches"])
def test_parquet_reads_hold_one_row_group_not_the_file(tmp_path, reader):
    """Arrow memory while streaming a 10 MB file of 100 row groups stays at a batch or two
    (pyarrow's default pre_buffer keeps every row group read until the file closes: ~11 MB)."""
    from components import artifacts

    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz "
    path = tmp_path / "many.parquet"
    with pq.ParquetWriter(path, pa.schema([("text", pa.string())]), compression="none") as out:
        for _ in range(100):  # 100 row groups of ~100 KB that do not compress away
            out.write_table(
                pa.table({"text": ["".join(rng.choices(letters, k=1000)) for _ in range(100)]})
            )
    batches = (
        artifacts.parquet_batches(path, ["text"], 100)
        if reader.startswith("artifacts")
        else readers._batches(path, ".parquet", "text")
    )
    base, peak, rows = pa.total_allocated_bytes(), 0, 0
    for batch in batches:
        rows += batch.num_rows
        peak = max(peak, pa.total_allocated_bytes() - base)
    assert rows == 10_000
    assert peak < 4_000_000, f"{peak / 1e6:.1f} MB of Arrow memory held for a 10 MB file"


def test_tokenizer_trains_on_a_bounded_sample_spread_over_the_split(tmp_path):
    from components import tokenize

    path = tmp_path / "train.parquet"
    with pq.ParquetWriter(path, pa.schema([("text", pa.string())])) as out:
        for group in range(40):
            out.write_table(
                pa.table({"text": [f"g{group} d{i} " + "more words here " * 10 for i in range(50)]})
            )
    everything = pq.read_table(path).column("text").to_pylist()
    total = sum(len(t.encode()) for t in everything)

    seen = {"documents": 0, "bytes": 0}
    assert list(tokenize.training_texts(path, 0, seen)) == everything  # 0 = all of it
    assert seen == {"documents": 2000, "bytes": total}

    seen = {"documents": 0, "bytes": 0}
    sample = list(tokenize.training_texts(path, total // 8, seen))
    groups = sorted({int(t.split()[0][1:]) for t in sample})
    assert total // 16 <= seen["bytes"] <= total // 8 and seen["documents"] == len(sample)
    assert groups[0] == 0 and groups[-1] >= 32  # spread over the split, not its head
    assert sample == list(tokenize.training_texts(path, total // 8, {"documents": 0, "bytes": 0}))
