"""Readers that turn a source into documents: the built-in corpus and user files.

The built-in corpus needs no network: Python's bundled reference documentation
(`pydoc_data.topics`) and the docstrings of the standard library, read with `ast`
(no module is imported, so nothing runs).
"""

from __future__ import annotations

import ast
import logging
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from components.errors import GruflowError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".md"}
TABLE_SUFFIXES = {".jsonl", ".csv", ".parquet"}
_SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "turtledemo", "__pycache__"}


@dataclass(frozen=True)
class Document:
    text: str
    source: str
    had_bad_bytes: bool = False


def builtin_documents() -> Iterator[Document]:
    """Python's reference topics, then every stdlib docstring, in a stable order."""
    from pydoc_data import topics

    for name in sorted(topics.topics):
        yield Document(topics.topics[name], f"pydoc_data.topics:{name}")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if _SKIP_DIRS.intersection(path.relative_to(stdlib).parts):
            continue
        yield from _docstrings(path, stdlib)


def _docstrings(path: Path, root: Path) -> Iterator[Document]:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError):
        return  # a few stdlib files are templates or other-version syntax
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.walk(tree):
        if isinstance(node, nodes):
            doc = ast.get_docstring(node)
            if doc:
                yield Document(doc, f"stdlib:{path.relative_to(root)}")


def decode(raw: bytes) -> tuple[str, bool]:
    """UTF-8 with BOM handling; undecodable bytes become U+FFFD and are flagged."""
    try:
        return raw.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8-sig", errors="replace"), True


def file_documents(path: Path, text_column: str) -> Iterator[Document]:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        text, bad = decode(path.read_bytes())
        yield Document(text, str(path), bad)
        return
    table = _read_table(path, suffix, text_column)
    if text_column not in table.column_names:
        raise GruflowError(
            f"{path}: no column '{text_column}' (has {table.column_names}) — "
            "set data.text_column in params.yaml"
        )
    for value in table.column(text_column).cast(pa.string()).to_pylist():
        if value is not None:
            yield Document(value, str(path))


def _read_table(path: Path, suffix: str, text_column: str) -> pa.Table:
    try:
        if suffix == ".parquet":
            return pq.read_table(path)
        if suffix == ".csv":  # never let type inference turn text like "007" into a number
            options = pacsv.ConvertOptions(column_types={text_column: pa.string()})
            return pacsv.read_csv(path, convert_options=options)
        return pajson.read_json(path)
    except (pa.ArrowInvalid, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise GruflowError(f"{path}: cannot read as {suffix[1:]} ({first})") from None


def source_files(source: Path) -> list[Path]:
    """The readable files of a source path (a file, or a folder searched recursively)."""
    if not source.exists():
        raise GruflowError(f"data.source: '{source}' does not exist — fix the path in params.yaml")
    suffixes = TEXT_SUFFIXES | TABLE_SUFFIXES
    if source.is_file():
        if source.suffix.lower() not in suffixes:
            raise GruflowError(
                f"{source}: unsupported file type — use one of {sorted(suffixes)}"
            )
        return [source]
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise GruflowError(f"data.source: folder '{source}' holds no {sorted(suffixes)} files")
    return files


def documents(source: str, text_column: str) -> Iterator[Document]:
    if source == "builtin":
        yield from builtin_documents()
        return
    for path in source_files(Path(source)):
        yield from file_documents(path, text_column)
