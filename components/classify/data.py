"""Labelled text for the finetune stage: the built-in task or a user's table, cleaned by the
clean stage's rules and split (the source's own split, else stratified and hashed by group).

Usage: `docs = labelled_documents(cfg); table, counts = prepare(docs, clean_cfg, cfg)`.

Built-in task: which area of the standard library a docstring comes from, the label being the
package its file really lives in (`asyncio/…` -> concurrency). Documents of one module (file)
share a split, so the test set never holds a docstring of a module seen in training.
"""

from __future__ import annotations

import json
import sysconfig
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

import pyarrow as pa

from components.contract import SPLITS
from components.data.clean_rules import apply_rules
from components.data.corpus import _SKIP_DIRS, _docstrings, documents
from components.errors import GruflowError
from components.params import Clean, Data, Finetune

# Built-in task: package (first folder under the stdlib) -> label. Packages present in every
# Python >= 3.11, a handful of balanced-enough areas.
BUILTIN_AREAS = {
    "asyncio": "concurrency",
    "concurrent": "concurrency",
    "email": "email",
    "xml": "xml",
    "http": "web",
    "urllib": "web",
    "wsgiref": "web",
    "unittest": "testing",
    "importlib": "imports",
    "tkinter": "gui",
}
# At most this many docstrings of one module: one big file (tkinter/__init__.py) would
# otherwise dominate its class and, being one group, its split.
BUILTIN_PER_MODULE = 40


@dataclass(frozen=True)
class Labelled:
    text: str
    label: str
    group: str  # documents of one group share a split (module / document)
    split: str | None = None  # as the source gives it


def builtin_task() -> Iterator[Labelled]:
    """Standard-library docstrings labelled by the package their file lives in (read with
    `ast` by the built-in corpus's reader; only the labelled packages are parsed)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for package in sorted(BUILTIN_AREAS):
        for path in sorted((stdlib / package).rglob("*.py")):
            if _SKIP_DIRS.intersection(path.relative_to(stdlib).parts):
                continue
            for n, doc in enumerate(_docstrings(path, stdlib)):
                if n == BUILTIN_PER_MODULE:
                    break
                yield Labelled(doc.text, BUILTIN_AREAS[package], doc.source)


def user_task(cfg: Finetune, dropped: Counter[str]) -> Iterator[Labelled]:
    """Rows of a .jsonl/.csv/.parquet file or folder: text column + label column."""
    data = Data(
        source=cfg.source, text_column=cfg.text_column, unit="file", include=["**/*"], max_docs=0
    )
    for doc in documents(data, dropped=dropped):
        meta = json.loads(doc.meta) if doc.meta else {}
        if cfg.label_column not in meta:
            raise GruflowError(
                f"{doc.source}: no column '{cfg.label_column}' (has "
                f"{sorted(meta) or 'only ' + repr(cfg.text_column)}) — set "
                "finetune.label_column in params.yaml"
            )
        label = meta[cfg.label_column]
        if label is None or str(label).strip() == "":
            dropped["null_label"] += 1
            continue
        yield Labelled(
            doc.text, str(label).strip(), sha256(doc.text.encode()).hexdigest(), doc.split
        )


def labelled_documents(cfg: Finetune, dropped: Counter[str]) -> list[Labelled]:
    if cfg.source == "builtin":
        return list(builtin_task())
    return list(user_task(cfg, dropped))


def clean_texts(texts: list[str], cfg: Clean) -> tuple[list[str], dict[str, int]]:
    """The clean stage's rules (HTML, normalisation, PII masks), with their counts."""
    text, counts = apply_rules(pa.array(texts, pa.string()), cfg)
    return text.to_pylist(), counts


def _rank(group: str, seed: int) -> bytes:
    return sha256(f"{seed}:{group}".encode()).digest()[:8]


def stratified_split(docs: list[Labelled], cfg: Finetune) -> list[str]:
    """Per label, groups in the order of a salted hash, each to the split furthest below its
    share of the label's documents (test_fraction, val_fraction, the rest train): every label
    is spread over the splits in proportion, and a group's documents stay together."""
    out = [""] * len(docs)
    by_label: dict[str, dict[str, list[int]]] = {}
    for i, doc in enumerate(docs):
        by_label.setdefault(doc.label, {}).setdefault(doc.group, []).append(i)
    shares = {
        "test": cfg.test_fraction,
        "val": cfg.val_fraction,
        "train": 1.0 - cfg.test_fraction - cfg.val_fraction,
    }
    for groups in by_label.values():
        n = sum(len(idx) for idx in groups.values())
        taken = dict.fromkeys(shares, 0)
        for group in sorted(groups, key=lambda g: _rank(g, cfg.seed)):
            split = max(shares, key=lambda s: shares[s] * n - taken[s])  # ties: test first
            for i in groups[group]:
                out[i] = split
            taken[split] += len(groups[group])
    return out


def assign_splits(docs: list[Labelled], cfg: Finetune) -> list[str]:
    """The source's own split where it gives one (all documents), else the stratified one; a
    source giving train and test only gets its val carved out of train the same way."""
    if not any(d.split for d in docs):
        return stratified_split(docs, cfg)
    if not all(d.split for d in docs):
        raise GruflowError(
            f"{cfg.source}: only some rows carry a split — give every row one "
            "(split column or train/val/test file names) or none"
        )
    splits = [d.split or "" for d in docs]
    if "val" not in splits:
        train = [i for i, s in enumerate(splits) if s == "train"]
        carve = cfg.model_copy(update={"test_fraction": cfg.val_fraction, "val_fraction": 0.0})
        for i, s in zip(train, stratified_split([docs[i] for i in train], carve), strict=True):
            splits[i] = "val" if s == "test" else "train"
    return splits


def check_labels(labels: dict[str, list[str]], cfg: Finetune) -> list[str]:
    """The classes (sorted); one-line errors for a single class or an unseen label."""
    where = f"finetune.source '{cfg.source}'"
    classes = sorted(set(labels["train"]))
    for split in SPLITS:
        if not labels[split]:
            raise GruflowError(
                f"{where}: the {split} split is empty — add labelled rows or "
                "lower finetune.val_fraction/test_fraction"
            )
    if len(classes) < 2:
        raise GruflowError(
            f"{where}: column '{cfg.label_column}' has a single class "
            f"{classes} in train — a classifier needs at least two labels"
        )
    for split in ("val", "test"):
        unseen = sorted(set(labels[split]) - set(classes))
        if unseen:
            raise GruflowError(
                f"{where}: label {unseen[0]!r} in {split} never occurs in train "
                "— add train rows with it or drop those rows"
            )
    return classes


def prepare(
    docs: list[Labelled], clean: Clean, cfg: Finetune, dropped: Counter[str]
) -> tuple[dict[str, dict[str, list[str]]], dict[str, int]]:
    """{split: {"text": [...], "label": [...]}} of the cleaned documents, plus rule counts;
    documents empty after cleaning are dropped and counted."""
    texts, counts = clean_texts([d.text for d in docs], clean)
    splits = assign_splits(docs, cfg)
    out = {s: {"text": [], "label": []} for s in SPLITS}
    for text, doc, split in zip(texts, docs, splits, strict=True):
        if not text:
            dropped["empty_after_clean"] += 1
            continue
        out[split]["text"].append(text)
        out[split]["label"].append(doc.label)
    return out, counts
