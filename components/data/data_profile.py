"""The cleaned corpus's profile (`reports/data_profile.json` + `.svg`) and its drift gate.

A human reads the profile to understand a corpus: document lengths (histogram), the mix of
writing systems, the most frequent words. The clean stage builds it batch by batch in bounded
memory and compares it with the previous run's profile (TFX ExampleValidator's idea, for text).
Usage: `p = Profiler(); p.add(lengths, words, sample(text, lengths))` per batch, then
`report = p.finish(source, split_documents)`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.data.clean_rules import CJK_CHAR
from components.errors import GruflowError
from components.params import SCRIPTS, Drift

# Code point ranges of each letter script; everything else is Digit, Space or Other.
_RANGES = [
    ("Space", 0x09, 0x0D),
    ("Space", 0x20, 0x20),
    ("Digit", 0x30, 0x39),
    ("Latin", 0x41, 0x5A),
    ("Latin", 0x61, 0x7A),
    ("Latin", 0xC0, 0x24F),
    ("Latin", 0x1E00, 0x1EFF),
    ("Greek", 0x370, 0x3FF),
    ("Greek", 0x1F00, 0x1FFF),
    ("Cyrillic", 0x400, 0x52F),
    ("Armenian", 0x530, 0x58F),
    ("Hebrew", 0x590, 0x5FF),
    ("Arabic", 0x600, 0x6FF),
    ("Arabic", 0x750, 0x77F),
    ("Arabic", 0x8A0, 0x8FF),
    ("Devanagari", 0x900, 0x97F),
    ("Indic", 0x980, 0xDFF),
    ("Thai", 0xE00, 0xE7F),
    ("Georgian", 0x10A0, 0x10FF),
    ("Hangul", 0x1100, 0x11FF),
    ("Kana", 0x3040, 0x30FF),
    ("Hangul", 0x3130, 0x318F),
    ("Kana", 0x31F0, 0x31FF),
    ("Han", 0x3400, 0x4DBF),
    ("Han", 0x4E00, 0x9FFF),
    ("Hangul", 0xAC00, 0xD7AF),
    ("Han", 0xF900, 0xFAFF),
    ("Arabic", 0xFB50, 0xFDFF),
    ("Arabic", 0xFE70, 0xFEFF),
    ("Han", 0x20000, 0x2FA1F),
]
CLASSES = (*SCRIPTS, "Digit", "Space", "Other")
_OTHER = CLASSES.index("Other")
_LETTERS = len(SCRIPTS)  # columns 0.._LETTERS-1 of the counts are letter scripts


def _class_table() -> np.ndarray:
    """Class id of every code point (1.1 MB): classifying is one array lookup per character."""
    table = np.full(0x110000, _OTHER, np.int8)
    for name, lo, hi in _RANGES:
        table[lo : hi + 1] = CLASSES.index(name)
    return table


_TABLE = _class_table()
_CHUNK_CHARS = 1 << 22  # code points classified at once: bounded memory on huge documents


def _classes(text: str) -> np.ndarray:
    return _TABLE[np.frombuffer(text.encode("utf-32-le"), np.uint32)]


def script_counts(texts: list[str]) -> np.ndarray:
    """(N, len(CLASSES)) character counts per document and class, vectorised over documents
    (in groups of about _CHUNK_CHARS characters; a longer document is classified in slices)."""
    out = np.zeros((len(texts), len(CLASSES)), np.int64)
    group: list[int] = []
    size = 0
    for i, text in enumerate(texts):
        if len(text) > _CHUNK_CHARS:
            for start in range(0, len(text), _CHUNK_CHARS):
                piece = _classes(text[start : start + _CHUNK_CHARS])
                out[i] += np.bincount(piece, minlength=len(CLASSES))
            continue
        group.append(i)
        size += len(text)
        if size >= _CHUNK_CHARS:
            _classify_group(texts, group, out)
            group, size = [], 0
    _classify_group(texts, group, out)
    return out


def _classify_group(texts: list[str], group: list[int], out: np.ndarray) -> None:
    rows = [i for i in group if texts[i]]  # reduceat needs non-empty segments
    if not rows:
        return
    parts = [texts[i] for i in rows]
    classes = _classes("".join(parts))
    starts = np.cumsum([0] + [len(p) for p in parts[:-1]])
    for c in np.unique(classes):  # few classes occur in one group: one pass each
        out[rows, c] = np.add.reduceat((classes == c).astype(np.int32), starts)


def main_script(counts: np.ndarray) -> list[str]:
    """Each document's most frequent letter script ("Other" when it has no letters)."""
    letters = counts[:, :_LETTERS]
    best = letters.argmax(axis=1)
    return [SCRIPTS[b] if letters[i, b] else "Other" for i, b in enumerate(best)]


# punctuation trimmed off blank-separated words (no regex: this runs on every batch)
_PUNCT = "\"'`.,;:!?()[]{}<>*#=|/\\-–—«»“”‘’„…、。，；：！？（）「」『』《》"
TOP_K = 50
TOKEN_SAMPLE_CHARS = 64_000
_RESERVOIR = 100_000  # document lengths kept for the quantiles
_COUNTER_CAP = 200_000  # distinct words kept between batches (heavy hitters survive pruning)


@dataclass
class Sample:
    """What the profile takes from a batch's first TOKEN_SAMPLE_CHARS characters."""

    scripts: np.ndarray  # character counts per class (their sum: the sample's size)
    top: dict[str, int]  # word counts (lower-cased, punctuation trimmed, a CJK char a word)


def sample(text: pa.ChunkedArray | pa.Array, lengths: np.ndarray) -> Sample:
    """Script mix and word counts of the first TOKEN_SAMPLE_CHARS characters of a batch: both
    are stable under sampling, and measuring every character cost more than all the rules."""
    rows = max(1, int(np.searchsorted(np.cumsum(lengths), TOKEN_SAMPLE_CHARS)))
    text = pc.utf8_slice_codeunits(text.slice(0, rows), 0, TOKEN_SAMPLE_CHARS)  # 50 MB line
    scripts = np.bincount(_classes("".join(text.to_pylist())), minlength=len(CLASSES))
    if scripts[CLASSES.index("Han")] + scripts[CLASSES.index("Kana")]:
        text = pc.replace_substring_regex(text, CJK_CHAR, r" \1 ")
    words = pc.list_flatten(pc.utf8_split_whitespace(pc.utf8_lower(text)))
    tokens = pc.utf8_trim(words, _PUNCT)
    counts = pc.value_counts(tokens.filter(pc.not_equal(tokens, "")))
    top = dict(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    )
    return Sample(scripts, top)


class Profiler:
    """Accumulates the profile of the cleaned corpus over record batches."""

    def __init__(self) -> None:
        self.documents = 0
        self.characters = 0
        self.words = 0
        self.length_bins = np.zeros(32, np.int64)  # bin b: 2^b <= characters < 2^(b+1)
        self.scripts = np.zeros(len(CLASSES), np.int64)
        self.top = Counter()
        self.sampled_characters = 0
        self.lengths = np.zeros(0, np.int64)  # a bounded reservoir for the quantiles
        self._rng = np.random.default_rng(0)

    def add(self, lengths: np.ndarray, words: np.ndarray, part: Sample) -> None:
        """One batch's kept documents (lengths, words) and its sample."""
        self.documents += len(lengths)
        self.characters += int(lengths.sum())
        self.words += int(words.sum())
        bins = np.floor(np.log2(np.maximum(lengths, 1))).astype(np.int64)
        self.length_bins += np.bincount(np.minimum(bins, 31), minlength=32)
        self.scripts += part.scripts
        self.sampled_characters += int(part.scripts.sum())
        self.top.update(part.top)
        if len(self.top) > _COUNTER_CAP:
            self.top = Counter(dict(self.top.most_common(_COUNTER_CAP // 2)))
        self.lengths = np.concatenate([self.lengths, lengths])
        if len(self.lengths) > _RESERVOIR:  # uniform down-sample: quantiles stay unbiased
            keep = np.sort(self._rng.choice(len(self.lengths), _RESERVOIR // 2, replace=False))
            self.lengths = self.lengths[keep]

    def finish(self, source: list[str], split_documents: dict[str, int]) -> dict:
        total = max(int(self.scripts.sum()), 1)
        q = np.quantile(self.lengths, [0.5, 0.9, 0.99]) if len(self.lengths) else [0, 0, 0]
        return {
            "source": source,
            "documents": self.documents,
            "characters": self.characters,
            "split_documents": split_documents,
            "mean_chars": self.characters / max(self.documents, 1),
            "mean_words": self.words / max(self.documents, 1),
            "chars_quantiles": {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2])},
            "length_histogram": {
                "log2_chars_bin": list(range(32)),
                "documents": self.length_bins.tolist(),
            },
            "script_mix": {
                name: round(int(n) / total, 6)
                for name, n in zip(CLASSES, self.scripts, strict=True)
                if n
            },
            "top_tokens": [[w, n] for w, n in self.top.most_common(TOP_K)],
            "sampled_characters": self.sampled_characters,  # script mix, top tokens
        }


def drift(previous: dict, current: dict) -> dict[str, float]:
    """How far each gated statistic moved: relative mean length, script-mix total-variation
    distance, 1 - Jaccard overlap of the top words."""
    before, after = previous.get("script_mix", {}), current["script_mix"]
    tvd = 0.5 * sum(abs(before.get(k, 0.0) - after.get(k, 0.0)) for k in {*before, *after})
    old_top = {w for w, _ in previous.get("top_tokens", [])}
    new_top = {w for w, _ in current["top_tokens"]}
    union = old_top | new_top
    return {
        "mean_chars": abs(current["mean_chars"] - previous.get("mean_chars", 0.0))
        / max(previous.get("mean_chars", 0.0), 1e-9),
        "script_mix": tvd,
        "top_tokens": 1 - len(old_top & new_top) / len(union) if union else 0.0,
    }


def check_drift(previous: dict | None, current: dict, limits: Drift, where: Path) -> dict:
    """Raise when a statistic moved beyond its limit against the previous profile of the same
    source; return the measured drift (empty when there is nothing comparable)."""
    if not previous or previous.get("source") != current["source"]:
        return {}
    moved = drift(previous, current)
    for name, value in moved.items():
        limit = getattr(limits, name)
        if limit and value > limit:
            raise GruflowError(
                f"clean: data drift — {name} moved {value:.3f} > clean.drift.{name}={limit} "
                f"against the previous {where}; inspect the new data (reports/data_profile.svg), "
                f"then raise clean.drift.{name} (0 = off) or delete {where} to accept it"
            )
    return {k: round(v, 6) for k, v in moved.items()}


_PANEL_W, _ROW_H, _LABEL_W, _TOP = 400, 16, 110, 48


def _panel(
    x0: int, title: str, rows: list[tuple[str, float]], color: str, fmt=lambda v: f"{v:g}"
) -> list[str]:
    """One horizontal bar chart: a label, a bar scaled to the largest value, the value."""
    peak = max((v for _, v in rows), default=0) or 1
    out = [f'<text x="{x0}" y="28" font-size="15" font-weight="bold">{escape(title)}</text>']
    for i, (label, value) in enumerate(rows):
        y = _TOP + i * _ROW_H
        width = (_PANEL_W - _LABEL_W - 70) * value / peak
        out += [
            f'<text x="{x0 + _LABEL_W - 6}" y="{y + 12}" text-anchor="end">'
            f"{escape(label[:18])}</text>",
            f'<rect x="{x0 + _LABEL_W}" y="{y + 2}" width="{width:.1f}" '
            f'height="{_ROW_H - 4}" fill="{color}"/>',
            f'<text x="{x0 + _LABEL_W + width + 4:.1f}" y="{y + 12}">{fmt(value)}</text>',
        ]
    return out


def plot(profile: dict, out: Path) -> None:
    """An SVG of the length histogram (log2 bins), the character-script mix and the top words,
    side by side. Written directly: a browser, MLflow and `dvc plots` show it, and it costs
    nothing next to importing and drawing with a plotting library."""
    hist = profile["length_histogram"]["documents"]
    used = [b for b, n in enumerate(hist) if n]
    bins = range(used[0], used[-1] + 1) if used else range(0)
    panels = [
        (
            f"{profile['documents']} documents: characters each",
            [(f"≥ {2**b}", hist[b]) for b in bins],
            "#4878a8",
            lambda v: f"{v:g}",
        ),
        (
            "character scripts (share)",
            sorted(profile["script_mix"].items(), key=lambda kv: -kv[1]),
            "#4a9a5a",
            lambda v: f"{v:.1%}",
        ),
        (
            "top words",
            [(w, n) for w, n in profile["top_tokens"][:24]],
            "#d08040",
            lambda v: f"{v:g}",
        ),
    ]
    rows = max(len(rows) for _, rows, _, _ in panels)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{3 * _PANEL_W}" '
        f'height="{_TOP + rows * _ROW_H + 12}" font-family="sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    for i, (title, data, color, fmt) in enumerate(panels):
        parts += _panel(10 + i * _PANEL_W, title, data, color, fmt)
    parts.append("</svg>")
    out.write_text("\n".join(parts) + "\n", encoding="utf-8")
