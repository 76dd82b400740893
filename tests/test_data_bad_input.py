"""Bad input to the data stages: each case is either handled deterministically and counted in
the report, or stopped with one line naming the file and the problem — no traceback, no
half-written output, the previous output untouched.

Handled and counted: empty files (`empty_files`), binary files named .txt
(`skipped_binary_files`), invalid UTF-8 (U+FFFD, `documents_with_bad_bytes`), NUL bytes (kept by
ingest, removed by clean: `control_chars_removed`), a BOM, CRLF, a single 50 MB line.
Stopped: a missing path, an empty folder, a source that yields nothing, a table without the
configured column, unparsable JSON/CSV/Parquet, an unreadable file, a corpus that cleans down to
nothing.
"""

from __future__ import annotations

import os
import random
import re
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from components import clean, ingest
from components.contract import SPLITS
from components.data import clean_rules
from components.errors import GruflowError
from components.params import Params

ROOT = Path(__file__).resolve().parents[1]
GOOD = [
    "the parser reads the header of the file and returns a list of names",
    "each worker thread writes its next line to the log and then closes it",
    "a socket opens the connection and the parser checks the incoming buffer",
]


@pytest.fixture
def project(params, tmp_path) -> Path:
    """A project whose data/raw and reports/ingest.json hold a previous good ingest."""
    root = tmp_path / "project"
    good = tmp_path / "good"
    good.mkdir()
    (good / "good.txt").write_text("\n".join(GOOD), encoding="utf-8")
    ingest_into(root, params, good, unit="line")
    return root


def ingest_into(root: Path, params: Params, source: Path, **update) -> dict:
    cfg = params.data.model_copy(
        update={"source": str(source), "text_column": "text", "include": ["**/*"], **update}
    )
    return ingest.run(cfg, root / "data" / "raw", root / "reports" / "ingest.json")


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under the project (a leftover temp folder would show up too)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def texts(root: Path) -> list[str]:
    return pq.read_table(root / "data" / "raw" / "corpus.parquet")["text"].to_pylist()


def png_bytes(size: int = 20_000) -> bytes:
    """A real PNG: signature, IHDR, a zlib-compressed IDAT of noise, IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    noise = zlib.compress(random.Random(0).randbytes(size))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 100, 50, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", noise)
        + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- stopped: one line


def missing(src: Path) -> Path:
    return src / "nowhere"


def empty_folder(src: Path) -> Path:
    (src / "empty").mkdir()
    return src / "empty"


def only_empty_files(src: Path) -> Path:
    (src / "a.txt").write_bytes(b"")
    (src / "b.jsonl").write_bytes(b"\n\n")
    return src


def only_binary(src: Path) -> Path:
    (src / "image.txt").write_bytes(png_bytes())
    return src


def csv_without_column(src: Path) -> Path:
    (src / "notes.csv").write_text("id,body\n1,hello there\n", encoding="utf-8")
    return src / "notes.csv"


def jsonl_without_column(src: Path) -> Path:
    (src / "notes.jsonl").write_text('{"body": "hello"}\n{"body": "there"}\n', encoding="utf-8")
    return src / "notes.jsonl"


def parquet_without_column(src: Path) -> Path:
    pq.write_table(pa.table({"body": ["hello"]}), src / "notes.parquet")
    return src / "notes.parquet"


def invalid_json_line(src: Path) -> Path:
    (src / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "cut off\n', encoding="utf-8")
    return src / "bad.jsonl"


def json_line_not_an_object(src: Path) -> Path:
    (src / "bad.jsonl").write_text('["text", "in a list"]\n', encoding="utf-8")
    return src / "bad.jsonl"


def corrupt_parquet(src: Path) -> Path:
    (src / "bad.parquet").write_bytes(random.Random(1).randbytes(4096))
    return src / "bad.parquet"


def ragged_csv(src: Path) -> Path:
    (src / "bad.csv").write_text("text,n\nfine,1\nthree,2,fields\n", encoding="utf-8")
    return src / "bad.csv"


STOPPED = [
    (missing, r"'{path}' does not exist — fix the path"),
    (empty_folder, r"folder '{path}' holds no \["),
    (only_empty_files, r"'{path}' yielded no documents \(2 files: 2 empty, 0 skipped as binary"),
    (only_binary, r"'{path}' yielded no documents \(1 files: 0 empty, 1 skipped as binary"),
    (
        csv_without_column,
        r"{path}: no column 'text' \(has \['id', 'body'\]\) — set "
        r"data.text_column",
    ),
    (jsonl_without_column, r"{path}: no column 'text' \(has \['body'\]\) — set data.text_column"),
    (parquet_without_column, r"{path}: no column 'text' .* set data.text_column"),
    (invalid_json_line, r"{path}:2: not valid JSON \(Unterminated string"),
    (json_line_not_an_object, r"{path}:1: expected a JSON object, got list"),
    (corrupt_parquet, r"{path}: cannot read as parquet \("),
    (ragged_csv, r"{path}: cannot read as csv \(.*Expected 2 columns, got 3"),
]


@pytest.mark.parametrize(("make", "message"), STOPPED, ids=[m.__name__ for m, _ in STOPPED])
def test_ingest_stops_with_one_line_and_keeps_previous_output(
    params, project, tmp_path, make, message
):
    src = tmp_path / "src"
    src.mkdir()
    path = make(src)
    before = snapshot(project)
    with pytest.raises(GruflowError) as info:
        ingest_into(project, params, path)
    text = str(info.value)
    assert "\n" not in text
    assert re.search(message.format(path=re.escape(str(path))), text), text
    assert snapshot(project) == before


def test_ingest_unreadable_file_stops_with_one_line(params, project, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    secret = src / "secret.txt"
    secret.write_text("can't touch this", encoding="utf-8")
    secret.chmod(0)
    if os.geteuid() == 0:  # root reads it whatever its mode: refuse the way the OS would
        real_open = Path.open

        def refusing_open(self, *args, **kwargs):
            if self == secret:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", refusing_open)
    before = snapshot(project)
    with pytest.raises(GruflowError, match=r"secret.txt: cannot read \(Permission denied\)"):
        ingest_into(project, params, src)
    assert snapshot(project) == before


# --------------------------------------------------------------------------- handled + counted


def test_empty_files_give_no_documents_and_are_counted(params, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ["a.txt", "b.md", "c.jsonl", "d.csv", "e.parquet"]:
        (src / name).write_bytes(b"")  # 0 bytes: not even a valid .parquet, still just empty
    (src / "f.txt").write_bytes(b" \r\n\t\n")
    (src / "g.txt").write_bytes(b"\xef\xbb\xbf")  # a BOM and nothing else
    (src / "h.csv").write_text("text,n\n", encoding="utf-8")  # header only
    (src / "z.txt").write_text("the one real document", encoding="utf-8")
    for unit in ["file", "paragraph", "line"]:
        summary = ingest_into(tmp_path / unit, params, src, unit=unit)
        assert texts(tmp_path / unit) == ["the one real document"]
        assert (summary["files_read"], summary["empty_files"]) == (9, 8)
        assert summary["skipped_binary_files"] == 0


def test_binary_files_are_skipped_and_counted(params, tmp_path, caplog):
    src = tmp_path / "src"
    src.mkdir()
    (src / "image.txt").write_bytes(png_bytes())
    (src / "nuls.txt").write_bytes(b"\x00" * 5000 + b"some text" + b"\x00" * 5000)
    (src / "notes.md").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 40)
    (src / "utf16.txt").write_bytes("UTF-16 is not UTF-8 text".encode("utf-16"))
    (src / "real.txt").write_text("real text\nand a second line", encoding="utf-8")
    summary = ingest_into(tmp_path / "p", params, src, unit="line")
    assert texts(tmp_path / "p") == ["real text", "and a second line"]
    assert (summary["files_read"], summary["skipped_binary_files"]) == (5, 4)
    assert summary["documents_with_bad_bytes"] == 0
    assert "image.txt: skipped, looks binary" in caplog.text


def test_nul_bytes_in_text_are_kept_by_ingest_and_removed_by_clean(params, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    docs = [f"{t} number {i}" for i in range(10) for t in GOOD]
    docs[0] = "a log line with a NUL\x00 byte\x00 and the parser reads the file"
    (src / "log.txt").write_text("\n".join(docs), encoding="utf-8")
    summary = ingest_into(tmp_path, params, src, unit="line")
    assert summary["skipped_binary_files"] == 0 and summary["documents"] == 30
    assert docs[0] in texts(tmp_path)
    report = run_clean(params, tmp_path)
    assert report["control_chars_removed"] == 2
    assert "a log line with a NUL byte and the parser reads the file" in clean_texts(tmp_path)


def test_invalid_utf8_is_replaced_and_counted_per_document(params, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"fine line\ncaf\xe9 latin-1 line\nfine again\n")
    (src / "b.csv").write_bytes(b"text,n\ncsv caf\xe9,1\ncsv fine,2\n")
    (src / "c.jsonl").write_bytes(b'{"text": "json caf\xe9"}\n{"text": "json fine"}\n')
    summary = ingest_into(tmp_path, params, src, unit="line")
    assert texts(tmp_path) == [
        "fine line",
        "caf\ufffd latin-1 line",
        "fine again",
        "csv caf\ufffd",
        "csv fine",
        "json caf\ufffd",
        "json fine",
    ]
    assert summary["documents_with_bad_bytes"] == 3


def test_bom_is_dropped_in_every_format(params, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    bom = b"\xef\xbb\xbf"
    (src / "a.txt").write_bytes(bom + b"text with a bom")
    (src / "b.md").write_bytes(bom + b"# markdown\nwith a bom")
    (src / "c.csv").write_bytes(bom + b"text,n\ncsv with a bom,1\n")
    (src / "d.jsonl").write_bytes(bom + b'{"text": "jsonl with a bom"}\n')
    for unit in ["file", "line"]:
        summary = ingest_into(tmp_path / unit, params, src, unit=unit)
        got = texts(tmp_path / unit)
        assert not any("\ufeff" in t for t in got)
        assert summary["documents_with_bad_bytes"] == 0
        assert got[0] == "text with a bom" and got[-1] == "jsonl with a bom"
        assert "csv with a bom" in got  # the header's first name is 'text', not '\ufefftext'


@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        ("line", ["one", "two", "three", "four"]),
        ("paragraph", ["one\ntwo", "three\nfour\n"]),  # as split before streaming
        ("file", ["one\r\ntwo\r\n\r\nthree\r\nfour\r\n"]),  # kept raw; clean makes it \n
    ],
)
def test_crlf_line_ends(params, tmp_path, unit, expected):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"one\r\ntwo\r\n\r\nthree\r\nfour\r\n")
    (src / "b.csv").write_bytes(b"text,n\r\ncsv one,1\r\ncsv two,2\r\n")
    (src / "c.jsonl").write_bytes(b'{"text": "json one"}\r\n{"text": "json two"}\r\n')
    ingest_into(tmp_path, params, src, unit=unit)
    assert texts(tmp_path) == [*expected, "csv one", "csv two", "json one", "json two"]
    out, _ = clean_rules.normalise(pa.array(texts(tmp_path)[:1]), params.clean)
    assert "\r" not in out[0].as_py()


def test_a_single_50_mb_line_is_ingested_and_cleaned(params, tmp_path):
    src = tmp_path / "src"
    for split in ["train", "val", "test"]:
        (src / split).mkdir(parents=True)
        (src / split / "small.txt").write_text(
            "\n".join(f"{t} ({split})" for t in GOOD), encoding="utf-8"
        )
    sentence = "the parser reads line 42 of the file <b>and</b> returns a value; "
    line = (sentence * (50_000_000 // len(sentence) + 1))[:50_000_000]
    (src / "train" / "big.txt").write_text(line, encoding="utf-8")  # no line break at all
    cleaned = line.replace("<b>", "").replace("</b>", "").strip()
    del line
    start = time.monotonic()
    summary = ingest_into(tmp_path, params, src, unit="line")
    assert summary["documents"] == 10
    assert max(texts(tmp_path), key=len) == (sentence * 800_000)[:50_000_000]
    report = run_clean(params, tmp_path)
    assert report["documents_out"] == 10  # the big line is one document, cleaned whole
    assert max(clean_texts(tmp_path), key=len) == cleaned
    assert time.monotonic() - start < 45  # linear-time rules: seconds, not minutes


# --------------------------------------------------------------------------- clean


def run_clean(params: Params, root: Path) -> dict:
    # these corpora are a few templates numbered: near copies of each other, which would all
    # share one split; the tests here are about bad input, so the near-duplicate search is off
    cfg = params.clean.model_copy(
        update={"min_chars": 10, "min_words": 2, "min_documents": 1, "near_dup": False}
    )
    split = params.split.model_copy(
        update={"val_fraction": 0.3, "test_fraction": 0.3, "group_near_duplicates": False}
    )
    return clean.run(
        cfg, split, root / "data" / "raw", root / "data" / "clean", root / "reports" / "clean.json"
    )


def clean_texts(root: Path) -> list[str]:
    return [
        t
        for name in SPLITS
        for t in pq.read_table(root / "data" / "clean" / f"{name}.parquet")["text"].to_pylist()
    ]


def test_corpus_that_cleans_to_nothing_stops_and_keeps_previous_clean(params, project, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "more.txt").write_text(
        "\n".join(f"{t} again {i}" for i in range(9) for t in GOOD), encoding="utf-8"
    )
    ingest_into(project, params, src, unit="line")
    run_clean(params, project)
    before = snapshot(project)

    (src / "more.txt").write_text("ok\nno\n<p></p>\n\x00\x00\n", encoding="utf-8")
    ingest_into(project, params, src, unit="line")
    raw_after = snapshot(project)
    with pytest.raises(GruflowError, match=r"clean: all 4 documents were dropped") as info:
        run_clean(params, project)
    assert "\n" not in str(info.value)
    assert snapshot(project) == raw_after
    assert {k: v for k, v in raw_after.items() if "clean" in k} == {
        k: v for k, v in before.items() if "clean" in k
    }


# --------------------------------------------------------------------------- the CLI: one line


def cli_project(tmp_path: Path, params: Params, source: Path) -> Path:
    """A project folder: params.yaml reading `source`, and a previous good data/raw."""
    root = tmp_path / "cli"
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["data"] |= {"source": str(source), "text_column": "text", "unit": "line"}
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    good = tmp_path / "good.txt"
    good.write_text("\n".join(GOOD), encoding="utf-8")
    ingest_into(root, params, good)
    return root


def run_cli(root: Path, stage: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"components.{stage}"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize(
    "make", [missing, csv_without_column, only_binary, invalid_json_line], ids=lambda m: m.__name__
)
def test_ingest_cli_prints_one_line_and_keeps_previous_output(params, tmp_path, make):
    src = tmp_path / "src"
    src.mkdir()
    path = make(src)
    root = cli_project(tmp_path, params, path)
    before = snapshot(root)
    result = run_cli(root, "ingest")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("gruflow: error:")]
    assert len(lines) == 1 and str(path) in lines[0], result.stderr
    assert result.stdout == ""
    assert snapshot(root) == before


def test_clean_cli_on_a_corpus_that_cleans_to_nothing(params, tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("ok\nno\n<p></p>\n", encoding="utf-8")
    root = cli_project(tmp_path, params, src)
    ingest_into(root, params, src, unit="line")
    before = snapshot(root)
    result = run_cli(root, "clean")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("gruflow: error:")]
    assert len(errors) == 1 and "all 3 documents were dropped" in errors[0], result.stderr
    assert snapshot(root) == before
    assert not (root / "data" / "clean").exists()
