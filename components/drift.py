"""Drift of new text against the champion, and the retraining decision (pure, no I/O).

The champion's own surprise is the drift signal of a language model: its bits per byte on the
documents that are new since its version, against its bits per byte on its own test split.
Beside it: the share of new tokens its tokenizer could not represent as learned pieces
(`<unk>`, or a lone byte of a multi-byte character), and the Jensen-Shannon divergence
between the token distributions of new and old train text.
Usage: `report = build_report(...)`, `decision = decide(cfg, report, age_days)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from html import escape

import numpy as np

from components.params import Retrain

UNK = 1  # contract.UNK; repeated so this module needs no tokenizer import
LOG2 = math.log(2)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence of two count (or probability) vectors, in bits: 0 for equal
    distributions, 1 for disjoint supports. Symmetric and finite where KL is not."""
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    if p.shape != q.shape or p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("js_divergence needs two non-empty count vectors of one shape")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:  # KL(a || m) in bits; 0 log 0 = 0
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return min(1.0, max(0.0, 0.5 * kl(p) + 0.5 * kl(q)))  # clip float rounding


def token_counts(ids: Iterable[Sequence[int]], vocab_size: int) -> np.ndarray:
    """(vocab_size,) occurrences of each token id over the given id lists."""
    counts = np.zeros(vocab_size, np.int64)
    for row in ids:
        if len(row):
            counts += np.bincount(np.asarray(row, np.int64), minlength=vocab_size)[:vocab_size]
    return counts


def bits_per_byte(nll_nats: Sequence[float], n_bytes: Sequence[int]) -> float:
    """Total NLL (nats) over total bytes, in bits per byte (documents weighted by size)."""
    total = float(np.sum(n_bytes))
    return float(np.sum(nll_nats)) / LOG2 / total if total else float("nan")


def byte_symbols() -> list[str]:
    """The byte-level alphabet: symbol of byte b at index b (GPT-2's reversible mapping, which
    HF's ByteLevel pre-tokenizer uses: printable bytes map to themselves, the rest to U+0100+)."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def fallback_ids(vocab: dict[str, int]) -> set[int]:
    """Token ids that mean "not a learned piece": <unk>, and the single-byte tokens of bytes
    0x80-0xFF — a lone byte of a multi-byte UTF-8 character, which a byte-level tokenizer
    emits only for characters it learned no merge for (also with WordPiece's continuation
    mark in front)."""
    symbols = byte_symbols()[0x80:]
    return {UNK} | {vocab[t] for s in symbols for t in (s, "\u2581" + s) if t in vocab}


def fallback_share(ids: Iterable[Sequence[int]], fallback: set[int]) -> tuple[int, int]:
    """(fallback tokens, all tokens) over the given id lists."""
    marks = np.zeros(max(fallback, default=0) + 1, bool)
    marks[list(fallback)] = True
    hit = total = 0
    for row in ids:
        a = np.asarray(row, np.int64)
        total += a.size
        hit += int(marks[a[a < marks.size]].sum())
    return hit, total


def pick(doc_ids: Sequence[str], n_bytes: Sequence[int], max_bytes: int) -> list[int]:
    """Indices of whole documents, lowest doc id first (a content hash: an unbiased sample that
    is the same on every run), until max_bytes is reached; at least one document."""
    chosen, size = [], 0
    for i in sorted(range(len(doc_ids)), key=doc_ids.__getitem__):
        if chosen and size + n_bytes[i] > max_bytes:
            break
        chosen.append(i)
        size += n_bytes[i]
    return chosen


def _rate(hit_total: tuple[int, int]) -> float | None:
    hit, total = hit_total
    return hit / total if total else None


def build_report(
    counts: dict[str, int],
    new_scores: list[dict],
    old_scores: list[dict],
    fallback_new: tuple[int, int],
    fallback_old: tuple[int, int],
    js: float | None,
    profile: dict,
) -> dict:
    """reports/drift.json's measurements. `*_scores`: per document {doc_id, bits_per_byte,
    nll, bytes}; `counts`: documents new/old/scored."""

    def side(rows: list[dict]) -> float | None:
        return bits_per_byte([r["nll"] for r in rows], [r["bytes"] for r in rows]) if rows else None

    new_bpb, old_bpb = side(new_scores), side(old_scores)
    new_fb, old_fb = _rate(fallback_new), _rate(fallback_old)
    return {
        "documents": counts,
        "bits_per_byte": {
            "new": new_bpb,
            "champion_test": old_bpb,
            "ratio": new_bpb / old_bpb if new_bpb is not None and old_bpb else None,
        },
        "fallback_rate": {
            "new": new_fb,
            "old": old_fb,
            "rise": new_fb - old_fb if None not in (new_fb, old_fb) else None,
        },
        "js_divergence": js,
        "data_profile": profile,
        "per_document": {"new": new_scores, "champion_test": old_scores},
    }


@dataclass(frozen=True)
class Decision:
    retrain: bool
    reason: str
    crossed: dict  # threshold name -> (measured, limit), the checks that fired

    def as_dict(self) -> dict:
        return asdict(self)


def crossed(cfg: Retrain, report: dict) -> dict[str, tuple[float, float]]:
    """The drift checks above their threshold (0 = off; an unmeasured value never fires)."""
    measured = {
        "bpb_ratio": report["bits_per_byte"]["ratio"],
        "fallback_rate": report["fallback_rate"]["rise"],
        "js_divergence": report["js_divergence"],
    }
    return {
        k: (v, getattr(cfg.drift, k))
        for k, v in measured.items()
        if v is not None and getattr(cfg.drift, k) and v > getattr(cfg.drift, k)
    }


def decide(
    cfg: Retrain,
    report: dict | None,
    age_days: float | None,
    why_changed: str,
    not_data: Sequence[str] = (),
) -> Decision:
    """Train or skip under retrain.policy, once something changed (`why_changed`).

    always / on_change: train. on_drift: train when params or code changed too (`not_data`:
    drift says nothing about those), when there is no champion or its lineage could not be
    read, when a threshold is crossed or the champion is older than max_age_days; else skip
    with reason "no drift"."""
    if cfg.policy != "on_drift":
        return Decision(True, f"policy {cfg.policy}: {why_changed}", {})
    if report is None or report.get("unavailable"):
        why = (report or {}).get("unavailable", "no champion to measure drift against")
        return Decision(True, f"policy on_drift: {why}", {})
    if not_data:
        return Decision(
            True, f"policy on_drift: not only new data changed ({', '.join(not_data[:5])})", {}
        )
    fired = crossed(cfg, report)
    if fired:
        text = ", ".join(f"{k} {v:.4g} > {lim:g}" for k, (v, lim) in fired.items())
        return Decision(True, f"drift: {text}", fired)
    if cfg.max_age_days and age_days is not None and age_days > cfg.max_age_days:
        return Decision(
            True,
            f"champion is {age_days:.1f} days old > retrain.max_age_days {cfg.max_age_days:g}",
            {},
        )
    return Decision(False, "no drift", {})


def histogram(new: Sequence[float], old: Sequence[float], bins: int = 8) -> list[dict]:
    """Per-document bits/byte of new and old documents in shared bins: [{lo, hi, new, old}]."""
    values = np.asarray([*new, *old], np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return []
    lo, hi = float(values.min()), float(values.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    count = [np.histogram(np.asarray(s, np.float64), edges)[0] for s in (new, old)]
    return [
        {
            "lo": float(edges[i]),
            "hi": float(edges[i + 1]),
            "new": int(count[0][i]),
            "old": int(count[1][i]),
        }
        for i in range(bins)
    ]


def markdown_plot(rows: list[dict], width: int = 20) -> str:
    """The histogram as a Markdown table of text bars (renders anywhere, offline)."""
    if not rows:
        return "(no documents scored)"
    n_new = sum(r["new"] for r in rows) or 1
    n_old = sum(r["old"] for r in rows) or 1
    lines = ["| bits/byte | new documents | champion's test documents |", "|---|---|---|"]
    for r in rows:
        bar_new = "█" * round(width * r["new"] / n_new)
        bar_old = "░" * round(width * r["old"] / n_old)
        lines.append(
            f"| {r['lo']:.2f}–{r['hi']:.2f} | {bar_new} {r['new']} | {bar_old} {r['old']} |"
        )
    return "\n".join(lines)


def svg_plot(rows: list[dict], title: str) -> str:
    """The histogram as an SVG (reports/drift.svg, logged to MLflow): share of new (orange)
    and old (blue) documents per bits/byte bin."""
    w, h, pad = 480, 220, 36
    n_new = sum(r["new"] for r in rows) or 1
    n_old = sum(r["old"] for r in rows) or 1
    peak = max([r["new"] / n_new for r in rows] + [r["old"] / n_old for r in rows] + [1e-9])
    bw = (w - 2 * pad) / max(len(rows), 1)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        'font-family="sans-serif" font-size="10">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{pad}" y="16" font-size="12">{escape(title)}</text>',
    ]
    for i, r in enumerate(rows):
        for j, (share, color) in enumerate(
            ((r["old"] / n_old, "#4878a8"), (r["new"] / n_new, "#d08040"))
        ):
            bh = (h - 2 * pad) * share / peak
            x = pad + i * bw + j * bw / 2
            out.append(
                f'<rect x="{x:.1f}" y="{h - pad - bh:.1f}" width="{bw / 2 - 1:.1f}" '
                f'height="{bh:.1f}" fill="{color}"/>'
            )
        out.append(f'<text x="{pad + i * bw:.1f}" y="{h - pad + 12}">{r["lo"]:.2f}</text>')
    out += [
        f'<text x="{w - pad - 150}" y="30" fill="#d08040">■ new documents ({n_new})</text>',
        f'<text x="{w - pad - 150}" y="44" fill="#4878a8">■ champion test ({n_old})</text>',
        f'<text x="{pad}" y="{h - 6}">bits per byte per document</text>',
        "</svg>",
    ]
    return "\n".join(out) + "\n"
