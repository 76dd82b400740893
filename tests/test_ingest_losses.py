"""Nothing lost silently at ingest: rows without a usable text and files of other types are
counted in reports/ingest.json and named in one warning line; a text column that is not text,
a symlink loop, an empty or UTF-16 file as the source stop with one line naming the file and
the fix. HTML is read through the standard library's HTML parser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from components import ingest
from components.errors import GruflowError

ROOT = Path(__file__).resolve().parents[1]


def _ingest(params, root: Path, source: Path, **update) -> dict:
    cfg = params.data.model_copy(
        update={
            "source": str(source),
            "text_column": "text",
            "include": ["**/*"],
            "unit": "line",
            **update,
        }
    )
    return ingest.run(cfg, root / "data" / "raw", root / "reports" / "ingest.json")


def _texts(root: Path) -> list[str]:
    return pq.read_table(root / "data" / "raw" / "corpus.parquet")["text"].to_pylist()


def _jsonl_with_holes(path: Path) -> None:
    """400 rows: 50 without the key, 20 null, 10 numbers, 5 lists, 315 texts."""
    rows = []
    for i in range(400):
        if i % 8 == 0:
            rows.append({"body": f"no text key {i}"})
        elif i % 20 == 1:
            rows.append({"text": None})
        elif i % 40 == 3:
            rows.append({"text": i})
        elif i % 80 == 5:
            rows.append({"text": ["a", i]})
        else:
            rows.append({"text": f"document number {i}", "n": i})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def run_ingest(project, **data) -> subprocess.CompletedProcess:
    """`python -m components.ingest` in `project`, with params.yaml's data section updated."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["data"] |= data
    (project / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "components.ingest"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_jsonl_rows_without_text_are_counted_and_warned(params, tmp_path, caplog):
    _jsonl_with_holes(tmp_path / "rows.jsonl")
    summary = _ingest(params, tmp_path, tmp_path / "rows.jsonl")
    assert summary["documents"] == 315
    assert summary["dropped"] == {"missing_text": 50, "non_string_text": 15, "null_text": 20}
    assert (
        json.loads((tmp_path / "reports" / "ingest.json").read_text())["dropped"]
        == summary["dropped"]
    )
    assert "document number 2" in _texts(tmp_path) and "3" not in _texts(tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "dropped 85 rows without a string 'text'" in warnings[0]
    assert "50 missing_text, 15 non_string_text, 20 null_text" in warnings[0]


def test_parquet_nulls_are_counted(params, tmp_path):
    pq.write_table(pa.table({"text": ["one", None, "three", None]}), tmp_path / "t.parquet")
    summary = _ingest(params, tmp_path, tmp_path / "t.parquet")
    assert _texts(tmp_path) == ["one", "three"]
    assert summary["dropped"] == {"null_text": 2}


@pytest.mark.parametrize(
    "column",
    [
        pa.array([0, 1, 2], pa.int64()),
        pa.array([[1, 2], [3], []], pa.list_(pa.int64())),
        pa.array([1.5, 2.5, 3.5]),
    ],
    ids=["int64", "list", "double"],
)
def test_parquet_text_column_that_is_not_text_stops(params, tmp_path, column):
    path = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": column}), path)
    with pytest.raises(GruflowError) as info:
        _ingest(params, tmp_path, path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: column 'text' holds {str(column.type)[:4]}")
    assert "not text — write it as a string column or set data.text_column" in message
    assert not (tmp_path / "data" / "raw").exists()


def test_folder_counts_skipped_files_by_type(params, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("kept text", encoding="utf-8")
    for name in ["b.pdf", "sub/c.pdf", "d.docx", "README", "e.PNG"]:
        (src / name).write_bytes(b"\x00\x01 not read")
    (src / "loop").symlink_to(src / "loop")
    (src / "dangling.txt").symlink_to(src / "nowhere.txt")
    summary = _ingest(params, tmp_path / "p", src)
    assert _texts(tmp_path / "p") == ["kept text"]
    assert summary["skipped_files"] == {
        ".pdf": 2,
        ".docx": 1,
        ".png": 1,
        "(none)": 1,
        "(broken symlink)": 2,
    }


def test_symlink_loop_source_says_so(params, tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(GruflowError, match=rf"'{loop}' is a symlink loop — point data.source"):
        _ingest(params, tmp_path, loop)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    with pytest.raises(GruflowError, match=r"is a broken symlink \(to '.*gone'\)"):
        _ingest(params, tmp_path, dangling)


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"", r"1 files: 1 empty, 0 skipped as binary"),
        (
            "an entire UTF-16 text file\n".encode("utf-16") * 50,
            r"1 files: 0 empty, 1 skipped as "
            "binary",
        ),
    ],
    ids=["empty", "utf16"],
)
def test_single_bad_file_source_stops_with_one_line(params, tmp_path, content, what):
    path = tmp_path / "only.txt"
    path.write_bytes(content)
    with pytest.raises(GruflowError, match=rf"'{path}' yielded no documents \({what}") as info:
        _ingest(params, tmp_path, path)
    assert "\n" not in str(info.value) and "point data.source at text" in str(info.value)


PAGE = b"""<!doctype html><html><head><title>The Title</title>
<style>body { color: red }</style><script>var x = "<p>not text</p>";</script></head>
<body><h1>Heading &amp; more</h1><p>First   paragraph
  spans source lines.</p><div>Second<br>line two</div>
<pre>keep   this
  layout</pre><ul><li>item one</li><li>item two</li></ul></body></html>"""


@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        (
            "line",
            [
                "The Title",
                "Heading & more",
                "First paragraph spans source lines.",
                "Second",
                "line two",
                "keep   this",
                "layout",
                "item one",
                "item two",
            ],
        ),
        (
            "paragraph",
            [
                "The Title",
                "Heading & more",
                "First paragraph spans source lines.",
                "Second\nline two",
                "keep   this\nlayout",
                "item one\nitem two",
            ],
        ),
    ],
)
def test_html_is_read_through_a_parser(params, tmp_path, unit, expected):
    (tmp_path / "page.html").write_bytes(PAGE)
    summary = _ingest(params, tmp_path, tmp_path / "page.html", unit=unit)
    assert _texts(tmp_path) == expected
    assert summary["documents_with_bad_bytes"] == 0


def test_html_file_unit_is_one_document(params, tmp_path):
    (tmp_path / "page.htm").write_bytes(PAGE.replace(b"Second", b"Sec\xffond"))
    summary = _ingest(params, tmp_path, tmp_path / "page.htm", unit="file")
    [text] = _texts(tmp_path)
    assert "not text" not in text and "color" not in text
    assert text.startswith("The Title\n\nHeading & more\n\nFirst paragraph")
    assert "Sec\ufffdond\nline two" in text
    assert summary["documents_with_bad_bytes"] == 1


def test_ingest_cli_prints_one_warning_line_for_losses(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _jsonl_with_holes(src / "rows.jsonl")
    (src / "notes.pdf").write_bytes(b"%PDF-1.4")
    done = run_ingest(tmp_path, source=str(src), text_column="text", unit="line")
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == [
        "ingest: dropped 85 rows without a string 'text' (50 missing_text, 15 non_string_text,"
        " 20 null_text); skipped 1 files of other types (1 .pdf) — counted in ingest.json "
        "(dropped, skipped_files, documents_with_bad_bytes)"
    ]
    report = json.loads((tmp_path / "reports" / "ingest.json").read_text())
    assert report["skipped_files"] == {".pdf": 1} and report["documents"] == 315


def test_latin1_source_is_read_with_replacements_and_warned(tmp_path):
    """A Latin-1 file of Western text is not skipped as binary (too few bad bytes): every
    accented letter becomes U+FFFD, so ingest says so in its one warning line."""
    (tmp_path / "fr.txt").write_bytes(
        ("Le caf\u00e9 est tr\u00e8s bon ici.\n" * 40).encode("latin-1")
    )
    done = run_ingest(tmp_path, source=str(tmp_path / "fr.txt"), unit="line")
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == [
        "ingest: 40 documents had bytes that are not UTF-8, replaced by U+FFFD (convert the "
        "source to UTF-8) — counted in ingest.json (dropped, skipped_files, "
        "documents_with_bad_bytes)"
    ]
    report = json.loads((tmp_path / "reports" / "ingest.json").read_text())
    assert report["documents_with_bad_bytes"] == 40 and report["skipped_binary_files"] == 0
