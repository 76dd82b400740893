"""Stage `ingest` on tiny inputs: every file type, limits, ids, failures (no TensorFlow)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components import ingest
from components.errors import GruflowError
from components.params import Params


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


# --------------------------------------------------------------------------- ingest


def run_ingest(params: Params, source: Path, out: Path, **update) -> dict:
    cfg = params.data.model_copy(update={"source": str(source), "text_column": "text", **update})
    return ingest.run(cfg, out, out.parent / "ingest.json")


def test_ingest_reads_every_file_type(params, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("plain text file", encoding="utf-8")
    (src / "sub" / "b.md").write_text("# Title\n\nmarkdown body", encoding="utf-8")
    (src / "c.jsonl").write_text(
        "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(["j1", "j2"])),
        encoding="utf-8",
    )
    (src / "d.csv").write_text('id,text\n1,"csv, with comma"\n2,csv two\n', encoding="utf-8")
    pq.write_table(
        pa.table({"text": ["pq one", None, "pq two"], "n": [1, 2, 3]}), src / "e.parquet"
    )
    (src / "ignored.log").write_text("not a source file", encoding="utf-8")

    summary = run_ingest(params, src, tmp_path / "raw")

    rows = read_rows(tmp_path / "raw" / "corpus.parquet")
    assert [r["text"] for r in rows] == [
        "plain text file",
        "j1",
        "j2",
        "csv, with comma",
        "csv two",
        "pq one",
        "pq two",
        "# Title\n\nmarkdown body",  # files are read in sorted path order: sub/ comes last
    ]
    assert {Path(r["source"]).name for r in rows} == {
        "a.txt",
        "b.md",
        "c.jsonl",
        "d.csv",
        "e.parquet",
    }
    assert summary["documents"] == 8
    assert summary["characters"] == sum(len(r["text"]) for r in rows)
    assert json.loads((tmp_path / "ingest.json").read_text()) == summary


def test_ingest_max_docs(params, tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(10)))
    assert run_ingest(params, src, tmp_path / "raw", max_docs=3)["documents"] == 3
    assert len(read_rows(tmp_path / "raw" / "corpus.parquet")) == 3


def test_ingest_csv_without_text_column_names_file_and_column(params, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.csv").write_text("id,body\n1,hello\n", encoding="utf-8")
    with pytest.raises(GruflowError) as info:
        run_ingest(params, src, tmp_path / "raw")
    assert "notes.csv" in str(info.value)
    assert "'text'" in str(info.value)
    assert not (tmp_path / "raw").exists()


def test_ingest_csv_text_is_kept_verbatim(params, tmp_path):
    src = tmp_path / "codes.csv"
    src.write_text("text\n007\n1.50\n", encoding="utf-8")
    run_ingest(params, src, tmp_path / "raw")
    assert [r["text"] for r in read_rows(tmp_path / "raw" / "corpus.parquet")] == ["007", "1.50"]


@pytest.mark.parametrize("layout", ["missing", "empty", "only_unsupported"])
def test_ingest_source_without_documents_fails(params, tmp_path, layout):
    src = tmp_path / "src"
    if layout != "missing":
        src.mkdir()
    if layout == "only_unsupported":
        (src / "readme.rst").write_text("not read", encoding="utf-8")
    with pytest.raises(GruflowError, match="data.source") as info:
        run_ingest(params, src, tmp_path / "raw")
    assert str(src) in str(info.value)
    assert not (tmp_path / "raw").exists()


def test_ingest_bom_and_bad_bytes(params, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a_bad.txt").write_bytes(b"\xef\xbb\xbfcaf\xe9 au lait \xff end")  # latin-1 + BOM
    (src / "b_bom.txt").write_bytes("\ufeffclean café".encode())
    summary = run_ingest(params, src, tmp_path / "raw")
    texts = [r["text"] for r in read_rows(tmp_path / "raw" / "corpus.parquet")]
    assert texts == ["caf\ufffd au lait \ufffd end", "clean café"]
    assert summary["documents_with_bad_bytes"] == 1


def test_ingest_doc_id_is_a_stable_content_hash(params, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name, text in [("a.txt", "same words"), ("b.txt", "same words"), ("c.txt", "other")]:
        (src / name).write_text(text, encoding="utf-8")
    run_ingest(params, src, tmp_path / "raw1")
    run_ingest(params, src, tmp_path / "raw2")
    first = read_rows(tmp_path / "raw1" / "corpus.parquet")
    second = read_rows(tmp_path / "raw2" / "corpus.parquet")
    ids = [r["doc_id"] for r in first]
    assert ids == [r["doc_id"] for r in second]
    assert ids[0] == ids[1] != ids[2]
    assert ids[0] == ingest.doc_id("same words")
    assert ids[0] == hashlib.sha256(b"same words").hexdigest()[:20]


def test_ingest_failure_leaves_previous_output_untouched(params, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("first version", encoding="utf-8")
    out = tmp_path / "raw"
    run_ingest(params, src, out)
    before = (out / "corpus.parquet").read_bytes()
    report_before = (tmp_path / "ingest.json").read_text()

    (src / "a.txt").write_text("second version, read before the failure", encoding="utf-8")
    (src / "b.csv").write_text("body\nno text column here\n", encoding="utf-8")
    with pytest.raises(GruflowError):
        run_ingest(params, src, out)

    assert sorted(p.name for p in out.iterdir()) == ["corpus.parquet"]
    assert (out / "corpus.parquet").read_bytes() == before
    assert (tmp_path / "ingest.json").read_text() == report_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ingest.json", "raw", "src"]  # no temp
