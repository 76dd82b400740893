"""Intrinsic evaluation of word vectors: neighbours, word-pair Spearman, analogies.

Usage: `quality_report(table, vocab, cfg, texts)` -> the evaluation part of reports/embed.json.
Words are mapped to single BPE tokens (`word_token`); pairs or questions with a word that is not one
trained token are skipped and counted as out-of-vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from components.errors import GruflowError
from components.params import Embed

SPACE = "Ġ"  # byte-level BPE's stand-in for a leading space: " word" is the token "Ġword"


@dataclass(frozen=True)
class TokenVectors:
    """The trained vectors only (no initialised rows): row r is token `names[r]`."""

    names: list[str]  # tokenizer strings, e.g. "Ġreturn" (byte-level: never whitespace)
    vectors: np.ndarray  # (n, dim) float32
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {name: r for r, name in enumerate(self.names)})


def word_token(word: str, vocab: Mapping[str, int]) -> str | None:
    """The single token for `word`: "Ġword" (the word after a space) first, then "word"."""
    for token in (SPACE + word, word):
        if token in vocab:
            return token
    return None


def word_row(table: TokenVectors, vocab: Mapping[str, int], word: str) -> int | None:
    token = word_token(word, vocab)
    return None if token is None else table.index.get(token)


def cosine_neighbours(matrix: np.ndarray, token: int, k: int) -> list[tuple[int, float]]:
    """Top-k rows by sim(w1, w2) = v1·v2 / (|v1||v2|), excluding the row itself.

    gensim's KeyedVectors.most_similar ranks the same way (tests/test_embedding_quality.py
    compares them); kept because it takes any matrix as is — the LM's embedding layer, whose
    all-zero <pad> row makes gensim's normalisation divide by zero — without a copy into a
    KeyedVectors object per query."""
    norms = np.linalg.norm(matrix, axis=1) + 1e-12
    sims = matrix @ matrix[token] / (norms * norms[token])
    sims[token] = -np.inf
    top = np.argsort(-sims, kind="stable")[:min(k, len(matrix) - 1)]
    return [(int(i), float(sims[i])) for i in top]


def spearman(x, y) -> float | None:
    """Spearman's rho (scipy.stats.spearmanr: tie-averaged ranks); None when undefined (fewer
    than two pairs, or a constant side)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None  # scipy would warn and return NaN
    return float(spearmanr(x, y).statistic)


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise GruflowError(f"{path}: evaluation file not found — fix embed.pairs_file or "
                           "embed.analogy_file in params.yaml")
    text = path.read_text(encoding="utf-8")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def read_pairs(path: Path) -> list[tuple[str, str, float]]:
    """`word1<TAB>word2<TAB>score` lines; blank lines and `#` comments are skipped."""
    pairs = []
    for n, line in _lines(path):
        parts = line.split("\t") if "\t" in line else line.split()
        try:
            pairs.append((parts[0].strip(), parts[1].strip(), float(parts[2])))
        except (IndexError, ValueError):
            raise GruflowError(f"{path}:{n}: expected 'word1<TAB>word2<TAB>score', got "
                               f"{line[:60]!r}") from None
    return pairs


def read_analogies(path: Path) -> list[tuple[str, str, str, str]]:
    """`a b c d` lines (a is to b as c is to d); `: section` headers and `#` comments skipped."""
    questions = []
    for n, line in _lines(path):
        if line.startswith(":"):
            continue
        parts = line.split()
        if len(parts) != 4:
            raise GruflowError(f"{path}:{n}: expected four words 'a b c d', got {line[:60]!r}")
        questions.append((parts[0], parts[1], parts[2], parts[3]))
    return questions


def evaluate_pairs(table: TokenVectors, vocab: Mapping[str, int],
                   pairs: list[tuple[str, str, float]]) -> dict:
    """Spearman between the file's scores and cosine similarity, over in-vocabulary pairs."""
    unit = table.vectors / (np.linalg.norm(table.vectors, axis=1, keepdims=True) + 1e-12)
    gold, sims = [], []
    for w1, w2, score in pairs:
        r1, r2 = word_row(table, vocab, w1), word_row(table, vocab, w2)
        if r1 is not None and r2 is not None:
            gold.append(score)
            sims.append(float(unit[r1] @ unit[r2]))
    return {"pairs": len(pairs), "oov": len(pairs) - len(gold), "spearman": spearman(gold, sims)}


def analogy_accuracy(table: TokenVectors, vocab: Mapping[str, int],
                     questions: list[tuple[str, str, str, str]]) -> dict:
    """3CosAdd: d = argmax cos(v, b - a + c) over all tokens but a, b, c.

    The answers of gensim's KeyedVectors.most_similar(positive=[b, c], negative=[a], topn=1)
    (tests/test_embedding_quality.py compares them), but 256 questions per matrix product
    instead of one Python call per question."""
    unit = table.vectors / (np.linalg.norm(table.vectors, axis=1, keepdims=True) + 1e-12)
    rows = [[word_row(table, vocab, w) for w in q] for q in questions]
    known = np.array([r for r in rows if None not in r], dtype=np.int64).reshape(-1, 4)  # (Q, 4)
    correct = 0
    for start in range(0, len(known), 256):
        q = known[start:start + 256]
        target = unit[q[:, 1]] - unit[q[:, 0]] + unit[q[:, 2]]  # (q, dim)
        sims = target @ unit.T  # (q, n); the norm of target does not change the argmax
        np.put_along_axis(sims, q[:, :3], -np.inf, axis=1)
        correct += int((sims.argmax(axis=1) == q[:, 3]).sum())
    accuracy = correct / len(known) if len(known) else None
    return {"questions": len(questions), "oov": len(questions) - len(known),
            "accuracy": accuracy}


def probe_neighbours(table: TokenVectors, vocab: Mapping[str, int], probes: list[str], k: int,
                     texts: Mapping[str, str]) -> tuple[dict, list[str]]:
    """Nearest neighbours of each known probe word, and the probes without a trained token."""
    found, unknown = {}, []
    for word in probes:
        row = word_row(table, vocab, word)
        if row is None:
            unknown.append(word)
            continue
        found[word] = [{"token": texts[table.names[r]], "similarity": round(sim, 4)}
                       for r, sim in cosine_neighbours(table.vectors, row, k)]
    return found, unknown


def quality_report(table: TokenVectors, vocab: Mapping[str, int], cfg: Embed,
                   texts: Mapping[str, str]) -> dict:
    """The evaluation section of reports/embed.json (`texts`: token -> readable string)."""
    neighbours, unknown = probe_neighbours(table, vocab, cfg.probes, cfg.neighbours, texts)
    pairs = evaluate_pairs(table, vocab, read_pairs(Path(cfg.pairs_file)))
    report = {"neighbours": neighbours, "unknown_probes": unknown,
              "word_pairs": {"file": cfg.pairs_file, **pairs}}
    if cfg.analogy_file:
        questions = read_analogies(Path(cfg.analogy_file))
        report["analogies"] = {"file": cfg.analogy_file,
                               **analogy_accuracy(table, vocab, questions)}
    return report
