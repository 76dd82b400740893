"""The sources of documents: the built-in corpus, user files and folders, Hugging Face datasets.

The built-in corpus needs no network: Python's bundled reference documentation
(`pydoc_data.topics`) and the docstrings of the standard library, read with `ast`
(no module is imported, so nothing runs). Each file is read by `components.data.readers`.
"""

from __future__ import annotations

import ast
import errno
import sysconfig
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from components.data.readers import (
    SPLIT_NAMES,
    TABLE_SUFFIXES,
    TEXT_SUFFIXES,
    Document,
    file_documents,
    table_documents,
)
from components.errors import GruflowError
from components.params import Data

_SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "turtledemo", "__pycache__"}
HF_PREFIX = "hf:"


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


def path_split(parts: Iterable[str]) -> str | None:
    """The split a file or folder name says (`train/`, `valid.jsonl`, ...), innermost wins."""
    for part in reversed(list(parts)):
        name = Path(part).stem.lower() if "." in part else part.lower()
        if name in SPLIT_NAMES:
            return SPLIT_NAMES[name]
    return None


def _check_exists(source: Path) -> None:
    """A missing path, a broken symlink and a symlink loop each say what they are."""
    if source.exists():
        return
    if source.is_symlink():
        try:
            source.resolve(strict=True)
        except RuntimeError:  # Python 3.11 reports a loop this way, 3.13 as OSError ELOOP
            loop = True
        except OSError as exc:
            loop = exc.errno == errno.ELOOP
        else:
            loop = False
        what = "a symlink loop" if loop else f"a broken symlink (to '{source.readlink()}')"
        raise GruflowError(
            f"data.source: '{source}' is {what} — point data.source at a real file or folder"
        )
    raise GruflowError(f"data.source: '{source}' does not exist — fix the path in params.yaml")


def source_files(
    source: Path, include: Iterable[str] = ("**/*",), skipped: Counter[str] | None = None
) -> list[Path]:
    """The readable files of a source path (a file, or the folder's files matching `include`).

    In a folder, matching files of other types are counted in `skipped` by suffix (".html",
    "(none)"), and links that lead nowhere (broken or looping) as "(broken symlink)".
    """
    _check_exists(source)
    suffixes = TEXT_SUFFIXES | TABLE_SUFFIXES
    if source.is_file():
        if source.suffix.lower() not in suffixes:
            raise GruflowError(f"{source}: unsupported file type — use one of {sorted(suffixes)}")
        return [source]
    matched = {p for pattern in include for p in source.glob(pattern)}
    files = sorted(p for p in matched if p.is_file() and p.suffix.lower() in suffixes)
    if skipped is not None:
        for p in matched:
            if p.is_symlink() and not p.exists():
                skipped["(broken symlink)"] += 1
            elif p.is_file() and p.suffix.lower() not in suffixes:
                skipped[p.suffix.lower() or "(none)"] += 1
    if not files:
        raise GruflowError(
            f"data.source: folder '{source}' holds no {sorted(suffixes)} files "
            f"matching data.include {list(include)}"
        )
    return files


def hf_documents(
    spec: str, text_column: str, dropped: Counter[str] | None = None
) -> Iterator[Document]:
    """`hf:<name>[:<config>][:<split>]` streamed through the optional `datasets` extra."""
    name, config, split = ([*spec[len(HF_PREFIX) :].split(":"), "", ""])[:3]
    if not name:
        raise GruflowError(
            f"data.source '{spec}': give a dataset name, hf:<name>[:<config>][:<split>]"
        )
    try:
        import datasets
    except ImportError:
        raise GruflowError(
            f"data.source '{spec}': Hugging Face datasets need the optional "
            "extra — pip install 'gruflow[datasets]'"
        ) from None
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
                raise GruflowError(
                    f"data.source '{spec}': no column '{text_column}' (has "
                    f"{sorted(row)}) — set data.text_column in params.yaml"
                )
            yield from table_documents(
                [dict(row)], text_column, f"{spec}:{part_name}", given, dropped
            )


def documents(
    cfg: Data,
    files: Counter[str] | None = None,
    dropped: Counter[str] | None = None,
    skipped: Counter[str] | None = None,
) -> Iterator[Document]:
    """Every source's documents in order; `files` counts the files read by outcome, `dropped`
    the table rows without a usable text by reason, `skipped` a folder's other files by
    suffix."""
    for source in cfg.sources:
        if source == "builtin":
            yield from builtin_documents()
        elif source.startswith(HF_PREFIX):
            yield from hf_documents(source, cfg.text_column, dropped)
        else:
            root = Path(source)
            for path in source_files(root, cfg.include, skipped):
                rel = path.relative_to(root).parts if path != root else (path.name,)
                outcome = yield from file_documents(path, cfg, path_split(rel), dropped)
                if files is not None:
                    files[outcome] += 1
