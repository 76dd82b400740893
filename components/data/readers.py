"""Streaming readers of one file into documents, by format: .txt/.md, .jsonl, .csv, .parquet.

Text is read in chunks and split into lines or paragraphs, tables in record batches, so memory
follows the largest document, not the size of the file. `components.data.corpus` decides which
files (and which other sources) are read.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import re
from collections import Counter
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from components.artifacts import parquet_batches
from components.data.html_text import html_lines
from components.errors import GruflowError
from components.params import Data

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".md", ".html", ".htm"}
HTML_SUFFIXES = {".html", ".htm"}
TABLE_SUFFIXES = {".jsonl", ".csv", ".parquet"}
# A split a source carries itself (file/folder name or a `split` column), by its usual spellings.
SPLIT_NAMES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
}
# Files are streamed: text in chunks of READ_BYTES, tables in record batches of BATCH_ROWS,
# so memory follows the largest document, not the size of the corpus.
READ_BYTES = 1 << 20
BATCH_ROWS = 1024
# A .txt/.md file whose first BINARY_SNIFF_BYTES are more than BINARY_RATIO control bytes (NUL
# and the other C0 controls but tab, line breaks and ESC) or undecodable UTF-8 is skipped, logged
# and counted (`skipped_binary_files` in the ingest report), not read: an image, archive or
# UTF-16 file named .txt would only become U+FFFD noise, and one stray file should not stop a
# folder's run (if nothing else is left, ingest stops anyway). Random bytes score about 0.53,
# Latin-1 French or German about 0.1, UTF-8 text with a few NULs a few hundredths: those NULs
# are read, and clean removes and counts them. A legacy 8-bit encoding of a non-Latin script
# (cp1251 Russian: 0.73) is skipped as well: convert such files to UTF-8.
BINARY_SNIFF_BYTES = 8192
BINARY_RATIO = 0.3
_CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\x0b\x0c\r\x1b")
_NEWLINE = re.compile(rb"\r\n|\r|\n")
_MISSING = object()  # a row without the text key (None is a null text)


@dataclass(frozen=True)
class Document:
    text: str
    source: str
    had_bad_bytes: bool = False
    split: str | None = None  # as the source gives it; None = the clean stage hashes one
    meta: str | None = None  # the source's other columns, as a JSON object


def source_split(value: object, where: str) -> str | None:
    if value is None or value == "":
        return None
    name = SPLIT_NAMES.get(str(value).strip().lower())
    if name is None:
        raise GruflowError(
            f"{where}: split {value!r} is not one of {sorted(SPLIT_NAMES)} — "
            "fix the split column or drop it"
        )
    return name


def decode(raw: bytes) -> tuple[str, bool]:
    """UTF-8 (a leading BOM dropped); undecodable bytes become U+FFFD and are flagged."""
    try:
        return raw.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8-sig", errors="replace"), True


def looks_binary(sample: bytes) -> bool:
    """More than BINARY_RATIO of the sample is control bytes or undecodable UTF-8."""
    controls = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    undecodable = len(sample) - len(sample.decode("utf-8", errors="ignore").encode("utf-8"))
    return controls + undecodable > BINARY_RATIO * len(sample)


def raw_lines(stream: BinaryIO) -> Iterator[tuple[bytes, bool]]:
    """(line, ended) split at \n, \r\n or \r, read in chunks: only the current line is held.

    `ended` is False only for the text after the last line break (b"" when the file ends with
    one). A \r that ends a chunk waits for the next one, so a \r\n is never cut in two.
    """
    pending: list[bytes] = []
    while chunk := stream.read(READ_BYTES):
        if b"\n" not in chunk and b"\r" not in chunk:
            pending.append(chunk)  # inside a long line: nothing is copied until it ends
            continue
        data = b"".join([*pending, chunk])
        held = data.endswith(b"\r")
        parts = _NEWLINE.split(data[:-1] if held else data)
        pending = [parts.pop() + (b"\r" if held else b"")]
        for part in parts:
            yield part, True
    parts = _NEWLINE.split(b"".join(pending))
    for part in parts[:-1]:
        yield part, True
    yield parts[-1], False


def text_units(lines: Iterable[tuple[str, bool, bool]], unit: str) -> Iterator[tuple[str, bool]]:
    """(text, had_bad_bytes) of each non-blank line or paragraph, from (line, bad, ended).

    A paragraph ends at a whitespace-only line that a line break follows; the blank lines and
    the next paragraph's leading whitespace belong to the break.
    """
    if unit == "line":
        yield from ((line, bad) for line, bad, _ in lines if line.strip())
        return
    current: list[str] = []
    current_bad = after_break = False
    for line, bad, ended in lines:
        blank = not line.strip()
        if after_break and blank:
            continue
        if after_break:
            current, current_bad, after_break = [line.lstrip()], bad, False
        elif current and blank and ended:
            yield from _kept("\n".join(current), current_bad)
            current, current_bad, after_break = [], False, True
        else:
            current.append(line)
            current_bad |= bad
    yield from _kept("\n".join(current), current_bad)


def _kept(text: str, bad: bool) -> Iterator[tuple[str, bool]]:
    if text.strip():
        yield text, bad


def file_documents(
    path: Path, cfg: Data, split: str | None = None, dropped: Counter[str] | None = None
) -> Generator[Document, None, str]:
    """A file's documents, streamed. Returns how it went: "read", "empty" or "binary".

    Table rows without a usable text (key missing, null, not a string) are counted in
    `dropped` by reason, never turned into text.
    """
    suffix = path.suffix.lower()
    head = _head(path)
    if suffix in TEXT_SUFFIXES and looks_binary(head):
        log.warning(
            "%s: skipped, looks binary (over %.0f%% control or non-UTF-8 bytes) — "
            "convert text to UTF-8",
            path,
            BINARY_RATIO * 100,
        )
        return "binary"
    if len(head) < BINARY_SNIFF_BYTES and not head.removeprefix(codecs.BOM_UTF8).strip():
        return "empty"  # 0 bytes or only blanks: no document, whatever the format
    if suffix in TEXT_SUFFIXES:
        docs = _text_documents(path, cfg.unit, split)
    elif suffix == ".jsonl":
        docs = _jsonl_documents(path, cfg.text_column, split, dropped)
    else:
        docs = (
            doc
            for batch in _batches(path, suffix, cfg.text_column)
            for doc in table_documents(
                batch.to_pylist(), cfg.text_column, str(path), split, dropped
            )
        )
    count = 0
    for doc in docs:
        count += 1
        yield doc
    return "read" if count else "empty"


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[BinaryIO]:
    try:
        with path.open("rb") as stream:
            yield stream
    except OSError as exc:
        raise GruflowError(
            f"{path}: cannot read ({exc.strerror or exc}) — check the file and its permissions"
        ) from None


def _head(path: Path) -> bytes:
    with _reading(path) as stream:
        return stream.read(BINARY_SNIFF_BYTES)


def _text_documents(path: Path, unit: str, split: str | None) -> Iterator[Document]:
    with _reading(path) as stream:
        if path.suffix.lower() in HTML_SUFFIXES:  # the text an HTML parser sees, by line
            lines = html_lines(stream, READ_BYTES)
            units = text_units(lines, "paragraph" if unit == "file" else unit)
            if unit == "file":
                units = _whole(units)
        elif unit == "file":  # one document per file: held whole by definition
            text, bad = decode(stream.read())
            units = [(text, bad)] if text.strip() else []
        else:
            units = text_units(((*decode(raw), ended) for raw, ended in raw_lines(stream)), unit)
        for text, bad in units:
            yield Document(text, str(path), bad, split)


def _whole(units: Iterable[tuple[str, bool]]) -> Iterator[tuple[str, bool]]:
    texts, bad = [], False
    for text, b in units:
        texts.append(text)
        bad |= b
    yield from _kept("\n\n".join(texts), bad)


def _jsonl_documents(
    path: Path, text_column: str, split: str | None, dropped: Counter[str] | None = None
) -> Iterator[Document]:
    """One JSON object per line, parsed line by line: no schema is inferred, so a field that
    changes type between rows is fine, and an undecodable byte is replaced as in text files."""
    first_keys: list[str] | None = None  # for the error when no row has the text column
    found = False
    with _reading(path) as stream:
        for number, raw in enumerate(stream, 1):
            if not raw.strip():
                continue
            line, bad = decode(raw.rstrip(b"\r\n"))
            row = _json_object(line, f"{path}:{number}")
            first_keys = sorted(row) if first_keys is None else first_keys
            found = found or text_column in row
            for doc in table_documents([row], text_column, str(path), split, dropped):
                yield replace(doc, had_bad_bytes=bad)
    if first_keys is not None and not found:
        _check_column(path, first_keys, text_column)


def _json_object(line: str, where: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        why = f"{exc.msg.removesuffix(' at')} at column {exc.colno}"
    except RecursionError:
        why = "nested too deeply"
    else:
        if isinstance(row, dict):
            return row
        raise GruflowError(
            f"{where}: expected a JSON object, got {type(row).__name__} — write one object per line"
        )
    raise GruflowError(f"{where}: not valid JSON ({why}) — fix or remove the line")


def _check_column(path: Path, names: list[str], text_column: str) -> None:
    if text_column not in names:
        raise GruflowError(
            f"{path}: no column '{text_column}' (has {names}) — set data.text_column in params.yaml"
        )


def table_documents(
    rows: Iterable[dict],
    text_column: str,
    where: str,
    split: str | None,
    dropped: Counter[str] | None = None,
) -> Iterator[Document]:
    """Rows of a table: the text column, an optional `split` column, the rest as metadata.

    A row whose text is missing, null or not a string (a number, a list) gives no document
    and is counted in `dropped` as missing_text / null_text / non_string_text.
    """
    for row in rows:
        text = row.pop(text_column, _MISSING)
        if not isinstance(text, str | bytes):
            reason = (
                "missing_text"
                if text is _MISSING
                else "null_text"
                if text is None
                else "non_string_text"
            )
            if dropped is not None:
                dropped[reason] += 1
            continue
        text, bad = decode(text) if isinstance(text, bytes) else (text, False)
        row_split = source_split(row.pop("split", None), where) or split
        meta = json.dumps(row, default=str, ensure_ascii=False, sort_keys=True) if row else None
        yield Document(text, where, bad, row_split, meta)


def _check_parquet_text(path: Path, text_column: str) -> None:
    """The text column must hold text: a number or list column is not str()'d into documents."""
    schema = pq.read_schema(path)
    _check_column(path, schema.names, text_column)
    kind = schema.field(text_column).type
    if not (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or str(kind) in ("string_view", "binary_view")
    ):
        raise GruflowError(
            f"{path}: column '{text_column}' holds {kind}, not text — write it "
            "as a string column or set data.text_column to the text column"
        )


def _batches(path: Path, suffix: str, text_column: str) -> Iterator[pa.RecordBatch]:
    """Record batches of a .parquet or .csv file; a CSV's text column comes as raw bytes."""
    try:
        if suffix == ".parquet":
            _check_parquet_text(path, text_column)
            yield from parquet_batches(path, None, BATCH_ROWS)
            return
        options = pacsv.ConvertOptions(column_types=_csv_types(path, text_column))
        with _open_csv(path, options) as reader:
            yield from reader
    except (pa.ArrowException, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise GruflowError(f"{path}: cannot read as {suffix[1:]} ({first})") from None


def _open_csv(path: Path, options: pacsv.ConvertOptions) -> pacsv.CSVStreamingReader:
    # blocks of READ_BYTES; the reader holds a few dozen of them at most (its read-ahead)
    return pacsv.open_csv(path, pacsv.ReadOptions(block_size=READ_BYTES), convert_options=options)


def _csv_types(path: Path, text_column: str) -> dict[str, pa.DataType]:
    """The text column as bytes (never a number: "007" stays "007"), the others inferred.

    The streaming reader infers types from its first block only, so a column that changes
    further down (empty at first, numbers then words) would fail mid-file: a quick first pass
    finds such a file, and it is read with every other column as a string.
    """
    types = {text_column: pa.binary()}
    with _open_csv(path, pacsv.ConvertOptions(column_types=types)) as reader:
        names = reader.schema.names
        _check_column(path, names, text_column)
        try:
            for _ in reader:
                pass
        except pa.ArrowInvalid as exc:
            if "conversion error" not in str(exc):
                raise
            return {name: types.get(name, pa.string()) for name in names}
    return types
