"""Intrinsic evaluation of word vectors: neighbours, word-pair Spearman, analogies.

Usage: `quality_report(table, lookup, cfg, texts)` -> the evaluation part of reports/embed.json.
Words are mapped to single tokens by their readable text (`word_token`: "是" finds the
byte-level token "æĺ¯"); pairs or questions with a word that is not one
trained token are skipped and counted as out-of-vocabulary.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from components.errors import GruflowError
from components.params import Embed

SPACE = "Ġ"  # byte-level BPE's stand-in for a leading space: " word" is the token "Ġword"
AUTO_PROBES = 8  # embed.probes: auto picks this many words
# Unicode name prefixes that are not the script's usual name
_SCRIPT_NAMES = {"CJK": "Han", "HIRAGANA": "Kana", "KATAKANA": "Kana", "HANGUL": "Hangul"}
# embed.probes auto: shortest probe word per script; written without spaces, a Han or Kana
# character is a word, elsewhere short words are mostly articles and particles
_MIN_LETTERS = {"Han": 1, "Kana": 1, "Hangul": 2, "Thai": 2}


@dataclass(frozen=True)
class TokenVectors:
    """The trained vectors only (no initialised rows): row r is token `names[r]`."""

    names: list[str]  # tokenizer strings, e.g. "Ġreturn" (byte-level: never whitespace)
    vectors: np.ndarray  # (n, dim) float32
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {name: r for r, name in enumerate(self.names)})


def token_lookup(names: Iterable[str], texts: Mapping[str, str]) -> dict[str, str]:
    """Word -> token name: each token's readable text (embedding/readable.py), and its raw
    name where no readable text is the same (so "Ġreturn" still finds itself)."""
    return {**{name: name for name in names}, **{text: name for name, text in texts.items()}}


def word_token(word: str, lookup: Mapping[str, str]) -> str | None:
    """The single token for `word`: the word after a space (" word", byte-level "Ġword")
    first, then the word itself."""
    for key in (" " + word, SPACE + word, word):
        if key in lookup:
            return lookup[key]
    return None


def word_row(table: TokenVectors, vocab: Mapping[str, str], word: str) -> int | None:
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
    top = np.argsort(-sims, kind="stable")[: min(k, len(matrix) - 1)]
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
        raise GruflowError(
            f"{path}: evaluation file not found — fix embed.pairs_file or "
            "embed.analogy_file in params.yaml"
        )
    text = path.read_text(encoding="utf-8")
    return [
        (n, line.strip())
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def read_pairs(path: Path) -> list[tuple[str, str, float]]:
    """`word1<TAB>word2<TAB>score` lines; blank lines and `#` comments are skipped."""
    pairs = []
    for n, line in _lines(path):
        parts = line.split("\t") if "\t" in line else line.split()
        try:
            pairs.append((parts[0].strip(), parts[1].strip(), float(parts[2])))
        except (IndexError, ValueError):
            raise GruflowError(
                f"{path}:{n}: expected 'word1<TAB>word2<TAB>score', got {line[:60]!r}"
            ) from None
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


def evaluate_pairs(
    table: TokenVectors, vocab: Mapping[str, str], pairs: list[tuple[str, str, float]]
) -> dict:
    """Spearman between the file's scores and cosine similarity, over in-vocabulary pairs."""
    unit = table.vectors / (np.linalg.norm(table.vectors, axis=1, keepdims=True) + 1e-12)
    gold, sims = [], []
    for w1, w2, score in pairs:
        r1, r2 = word_row(table, vocab, w1), word_row(table, vocab, w2)
        if r1 is not None and r2 is not None:
            gold.append(score)
            sims.append(float(unit[r1] @ unit[r2]))
    return {"pairs": len(pairs), "oov": len(pairs) - len(gold), "spearman": spearman(gold, sims)}


def analogy_accuracy(
    table: TokenVectors, vocab: Mapping[str, str], questions: list[tuple[str, str, str, str]]
) -> dict:
    """3CosAdd: d = argmax cos(v, b - a + c) over all tokens but a, b, c.

    The answers of gensim's KeyedVectors.most_similar(positive=[b, c], negative=[a], topn=1)
    (tests/test_embedding_quality.py compares them), but 256 questions per matrix product
    instead of one Python call per question."""
    unit = table.vectors / (np.linalg.norm(table.vectors, axis=1, keepdims=True) + 1e-12)
    rows = [[word_row(table, vocab, w) for w in q] for q in questions]
    known = np.array([r for r in rows if None not in r], dtype=np.int64).reshape(-1, 4)  # (Q, 4)
    correct = 0
    for start in range(0, len(known), 256):
        q = known[start : start + 256]
        target = unit[q[:, 1]] - unit[q[:, 0]] + unit[q[:, 2]]  # (q, dim)
        sims = target @ unit.T  # (q, n); the norm of target does not change the argmax
        np.put_along_axis(sims, q[:, :3], -np.inf, axis=1)
        correct += int((sims.argmax(axis=1) == q[:, 3]).sum())
    accuracy = correct / len(known) if len(known) else None
    return {"questions": len(questions), "oov": len(questions) - len(known), "accuracy": accuracy}


def probe_neighbours(
    table: TokenVectors,
    vocab: Mapping[str, str],
    probes: list[str],
    k: int,
    texts: Mapping[str, str],
) -> tuple[dict, list[str]]:
    """Nearest neighbours of each known probe word, and the probes without a trained token."""
    found, unknown = {}, []
    for word in probes:
        row = word_row(table, vocab, word)
        if row is None:
            unknown.append(word)
            continue
        found[word] = [
            {"token": texts[table.names[r]], "similarity": round(sim, 4)}
            for r, sim in cosine_neighbours(table.vectors, row, k)
        ]
    return found, unknown


def script_of(ch: str) -> str | None:
    """The writing system of a letter (from its Unicode name: "CJK UNIFIED IDEOGRAPH-662F" ->
    Han, "LATIN SMALL LETTER A" -> Latin); None for anything but a letter."""
    if not ch.isalpha():
        return None
    first = unicodedata.name(ch, "?").split(" ")[0]
    return _SCRIPT_NAMES.get(first, first.title())


def main_script(words: Mapping[str, int]) -> str | None:
    """The script holding most letters of `words` (word -> count), None without letters."""
    letters: Counter[str] = Counter()
    for word, n in words.items():
        for ch in word:
            if script := script_of(ch):
                letters[script] += n
    return max(sorted(letters), key=letters.__getitem__) if letters else None


def auto_probes(
    table: TokenVectors,
    counts: list[int],
    texts: Mapping[str, str],
    script: str | None,
    n: int = AUTO_PROBES,
) -> list[str]:
    """The n most frequent trained tokens that are words of the corpus's main script: only
    its letters, at least _MIN_LETTERS of them (4 where words are spaced)."""
    if script is None:
        return []
    shortest = _MIN_LETTERS.get(script, 4)
    words: list[str] = []
    for r in sorted(range(len(table.names)), key=lambda r: -counts[r]):  # stable: ties by row
        word = texts[table.names[r]].strip()
        if (
            len(word) >= shortest
            and word not in words
            and all(script_of(ch) == script for ch in word)
        ):
            words.append(word)
            if len(words) == n:
                break
    return words


def quality_report(
    table: TokenVectors,
    vocab: Mapping[str, str],
    cfg: Embed,
    texts: Mapping[str, str],
    counts: list[int],
) -> dict:
    """The evaluation section of reports/embed.json (`texts`: token -> readable string,
    `counts`: train occurrences of each table row). Probes and word pairs are used only
    where they fit the corpus: `auto` probes are its own frequent words, and word pairs in
    another script than the corpus's main one are skipped (said in the report)."""
    script = main_script({texts[name]: c for name, c in zip(table.names, counts, strict=True)})
    auto = cfg.probes == "auto"
    probes = auto_probes(table, counts, texts, script) if auto else list(cfg.probes)
    neighbours, unknown = probe_neighbours(table, vocab, probes, cfg.neighbours, texts)
    pairs = read_pairs(Path(cfg.pairs_file))
    pair_script = main_script(Counter(w for a, b, _ in pairs for w in (a, b)))
    if pairs and pair_script != script:
        word_pairs = {
            "file": cfg.pairs_file,
            "used": False,
            "pairs": len(pairs),
            "spearman": None,
            "reason": f"the pairs are {pair_script} words, the corpus is mostly {script}",
        }
    else:
        word_pairs = {"file": cfg.pairs_file, "used": True, **evaluate_pairs(table, vocab, pairs)}
    report = {
        "main_script": script,
        "probes": {"source": "auto" if auto else "params", "words": probes},
        "neighbours": neighbours,
        "unknown_probes": unknown,
        "word_pairs": word_pairs,
    }
    if cfg.analogy_file:
        questions = read_analogies(Path(cfg.analogy_file))
        report["analogies"] = {
            "file": cfg.analogy_file,
            **analogy_accuracy(table, vocab, questions),
        }
    return report
