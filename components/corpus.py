"""Readers that turn a source into documents: the built-in corpus and user files.

The built-in corpus needs no network: Python's bundled reference documentation
(`pydoc_data.topics`) and the docstrings of the standard library, read with `ast`
(no module is imported, so nothing runs).
"""

from __future__ import annotations

import ast
import json
import logging
import re
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from components.errors import GruflowError
from components.params import Data

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".md"}
TABLE_SUFFIXES = {".jsonl", ".csv", ".parquet"}
_SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "turtledemo", "__pycache__"}
# A split a source carries itself (file/folder name or a `split` column), by its usual spellings.
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val",
               "test": "test"}
HF_PREFIX = "hf:"
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")


@dataclass(frozen=True)
class Document:
    text: str
    source: str
    had_bad_bytes: bool = False
    split: str | None = None  # as the source gives it; None = the clean stage hashes one
    meta: str | None = None   # the source's other columns, as a JSON object


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


def split_units(text: str, unit: str) -> list[str]:
    """A text file's documents: the whole file, its blank-line paragraphs, or its lines."""
    if unit == "file":
        return [text]
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    parts = _PARAGRAPH_BREAK.split(text) if unit == "paragraph" else text.split("\n")
    return [part for part in parts if part.strip()]


def path_split(parts: Iterable[str]) -> str | None:
    """The split a file or folder name says (`train/`, `valid.jsonl`, ...), innermost wins."""
    for part in reversed(list(parts)):
        name = Path(part).stem.lower() if "." in part else part.lower()
        if name in SPLIT_NAMES:
            return SPLIT_NAMES[name]
    return None


def source_split(value: object, where: str) -> str | None:
    if value is None or value == "":
        return None
    name = SPLIT_NAMES.get(str(value).strip().lower())
    if name is None:
        raise GruflowError(f"{where}: split {value!r} is not one of {sorted(SPLIT_NAMES)} — "
                           "fix the split column or drop it")
    return name


def file_documents(path: Path, cfg: Data, split: str | None = None) -> Iterator[Document]:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        text, bad = decode(path.read_bytes())
        for unit in split_units(text, cfg.unit):
            yield Document(unit, str(path), bad, split)
        return
    table = _read_table(path, suffix, cfg.text_column)
    if cfg.text_column not in table.column_names:
        raise GruflowError(
            f"{path}: no column '{cfg.text_column}' (has {table.column_names}) — "
            "set data.text_column in params.yaml"
        )
    yield from _table_documents(table.to_pylist(), cfg.text_column, str(path), split)


def _table_documents(rows: Iterable[dict], text_column: str, where: str,
                     split: str | None) -> Iterator[Document]:
    """Rows of a table: the text column, an optional `split` column, the rest as metadata."""
    for row in rows:
        text = row.pop(text_column, None)
        if text is None:
            continue
        row_split = source_split(row.pop("split", None), where) or split
        meta = json.dumps(row, default=str, ensure_ascii=False, sort_keys=True) if row else None
        yield Document(str(text), where, split=row_split, meta=meta)


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


def source_files(source: Path, include: Iterable[str] = ("**/*",)) -> list[Path]:
    """The readable files of a source path (a file, or the folder's files matching `include`)."""
    if not source.exists():
        raise GruflowError(f"data.source: '{source}' does not exist — fix the path in params.yaml")
    suffixes = TEXT_SUFFIXES | TABLE_SUFFIXES
    if source.is_file():
        if source.suffix.lower() not in suffixes:
            raise GruflowError(
                f"{source}: unsupported file type — use one of {sorted(suffixes)}"
            )
        return [source]
    files = sorted({p for pattern in include for p in source.glob(pattern)
                    if p.is_file() and p.suffix.lower() in suffixes})
    if not files:
        raise GruflowError(f"data.source: folder '{source}' holds no {sorted(suffixes)} files "
                           f"matching data.include {list(include)}")
    return files


def hf_documents(spec: str, text_column: str) -> Iterator[Document]:
    """`hf:<name>[:<config>][:<split>]` streamed through the optional `datasets` extra."""
    name, config, split = ([*spec[len(HF_PREFIX):].split(":"), "", ""])[:3]
    if not name:
        raise GruflowError(f"data.source '{spec}': give a dataset name, hf:<name>[:<config>]"
                           "[:<split>]")
    try:
        import datasets
    except ImportError:
        raise GruflowError(f"data.source '{spec}': Hugging Face datasets need the optional "
                           "extra — pip install 'gruflow[datasets]'") from None
    try:
        loaded = datasets.load_dataset(name, config or None, split=split or None, streaming=True)
    except Exception as exc:  # hub/network/config errors of many types: report in one line
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise GruflowError(f"data.source '{spec}': cannot load ({first})") from None
    parts = {split: loaded} if split else dict(loaded)
    for part_name, rows in parts.items():
        given = SPLIT_NAMES.get(part_name.lower())
        for row in rows:
            if text_column not in row:
                raise GruflowError(f"data.source '{spec}': no column '{text_column}' (has "
                                   f"{sorted(row)}) — set data.text_column in params.yaml")
            yield from _table_documents([dict(row)], text_column, f"{spec}:{part_name}", given)


def documents(cfg: Data) -> Iterator[Document]:
    for source in cfg.sources:
        if source == "builtin":
            yield from builtin_documents()
        elif source.startswith(HF_PREFIX):
            yield from hf_documents(source, cfg.text_column)
        else:
            root = Path(source)
            for path in source_files(root, cfg.include):
                rel = path.relative_to(root).parts if path != root else (path.name,)
                yield from file_documents(path, cfg, path_split(rel))
