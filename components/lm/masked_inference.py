"""Use a trained masked LM: fill each `<mask>` of a text, score texts and splits under the fixed
seeded evaluation mask (pure; Keras model + tokenizer in).

Shared by the evaluate stage and the MLflow pyfunc (components/lm/pyfunc.py), as
components/lm/inference.py is for the causal LM. A text is read in independent windows of
seq_len tokens (as in training); a `<mask>` sees the context of its own window only.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from components.artifacts import atomic_file
from components.contract import BOS, EOS, MASK, SPECIALS, encode
from components.lm.inference import BadRequest
from components.lm.masked import masked_attention_model, masked_logits, masked_stats
from components.lm.masking import (
    EVAL_MASK_FRACTION,
    EVAL_MASK_SEED,
    token_windows,
    unigram_nll,
)

SAMPLE_WORDS, MASKED_WORD, SAMPLE_CANDIDATES = 12, 3, 5


def masked_metrics(
    model, train: np.ndarray, test: np.ndarray, seq_len: int, batch_size: int, vocab_size: int
) -> dict:
    """metrics.json of a masked LM and the per-position NLL/index behind its plots."""
    s = masked_stats(model, test, seq_len, EVAL_MASK_FRACTION, batch_size, EVAL_MASK_SEED)
    n = int(s["nll_at"].size)
    nll = float(s["nll_at"].sum())
    metrics = {
        "objective": "masked",
        "masked_accuracy": float((s["rank_at"] < 1).mean()),
        "masked_top5_accuracy": float((s["rank_at"] < 5).mean()),
        "masked_perplexity": math.exp(nll / n),
        "masked_baseline_perplexity": math.exp(unigram_nll(train, s["targets"], vocab_size) / n),
        "masked_tokens": n,
        "mask_fraction": EVAL_MASK_FRACTION,
        "mask_seed": EVAL_MASK_SEED,
        "test_tokens": int(test.size),
    }
    return {"metrics": metrics, "per_position": (s["nll_at"], s["index"])}


def per_document(
    per_position: tuple[np.ndarray, np.ndarray], doc_lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(length, masked perplexity) of each test document with at least one chosen position."""
    nll_at, index = per_position
    owner = np.repeat(np.arange(len(doc_lengths)), doc_lengths)[index]
    nll = np.bincount(owner, weights=nll_at, minlength=len(doc_lengths))
    counts = np.bincount(owner, minlength=len(doc_lengths))
    keep = counts > 0
    return doc_lengths[keep], np.exp(nll[keep] / counts[keep])


def score_masked_texts(
    model, tokenizer, texts: list[str], seq_len: int, batch_size: int = 64
) -> list[dict]:
    """Per text: summed NLL (nats) of its positions under the fixed evaluation mask, how many
    there are, and the masked perplexity."""
    rows = []
    for ids in encode(tokenizer, texts):
        s = masked_stats(
            model, np.array(ids, np.int32), seq_len, EVAL_MASK_FRACTION, batch_size, EVAL_MASK_SEED
        )
        total, n = float(s["nll_at"].sum()), int(s["nll_at"].size)
        rows.append(
            {
                "nll": total,
                "masked_tokens": n,
                "perplexity": math.exp(min(total / max(n, 1), 700.0)),
            }
        )
    return rows


def fill(model, tokenizer, text: str, seq_len: int, candidates: int) -> dict:
    """The text with each `<mask>` replaced by its most likely token, and per `<mask>` the
    `candidates` most likely tokens with their probabilities (special tokens never offered)."""
    ids = np.array([BOS, *tokenizer.encode(text, add_special_tokens=False).ids, EOS], np.int32)
    if not (ids == MASK).any():
        raise BadRequest(f"text {text!r:.60} has no <mask> — mark each token to fill with <mask>")
    windows = token_windows(ids, seq_len)  # (N, T)
    logits = masked_logits(model, windows, 64)  # (N, T, V)
    logits = logits.reshape(-1, logits.shape[-1])  # (N*T, V): row i = token i of ids
    logits[:, : len(SPECIALS)] = -np.inf  # (N*T, V): a fill is an ordinary token
    filled, fills = ids.copy(), []
    for pos in np.flatnonzero(ids == MASK):
        z = logits[pos] - logits[pos].max()
        p = np.exp(z) / np.exp(z).sum()
        top = np.argsort(-p, kind="stable")[:candidates]
        fills.append(
            [{"token": tokenizer.decode([int(i)]), "probability": float(p[i])} for i in top]
        )
        filled[pos] = top[0]
    return {"text": tokenizer.decode(filled[1:-1].tolist()), "fills": fills}


def attention_inputs(model, tokenizer, test: np.ndarray, n_docs: int, n_tokens: int) -> list:
    """(tokens, α) of the opening window of the first test documents (no mask)."""
    probe = masked_attention_model(model)
    starts = np.flatnonzero(test == BOS)[:n_docs]
    maps = []
    for start in starts:
        x = test[start : start + n_tokens][None, :]  # (1, T)
        alpha = np.asarray(probe.predict_on_batch(x))[0]  # (T, T)
        maps.append(
            ([tokenizer.decode([int(i)]) or tokenizer.id_to_token(int(i)) for i in x[0]], alpha)
        )
    return maps


def write_fill_samples(model, tokenizer, texts: list[str], seq_len: int, out: Path) -> None:
    """The opening words of the first test documents with one word masked, and the model's
    candidates for it (deterministic: no sampling)."""
    lines = [
        "# Samples",
        "",
        f"The fourth word of the opening words of test documents "
        f"replaced by <mask>; the model's {SAMPLE_CANDIDATES} most likely tokens.",
        "",
    ]
    for text in texts:
        words = text.split()[:SAMPLE_WORDS]
        if len(words) <= MASKED_WORD:
            continue
        hidden, words[MASKED_WORD] = words[MASKED_WORD], "<mask>"
        prompt = " ".join(words)
        got = fill(model, tokenizer, prompt, seq_len, SAMPLE_CANDIDATES)["fills"][0]
        options = ", ".join(f"`{c['token']}` {c['probability']:.2f}" for c in got)
        lines += [f"**{prompt}** (hidden: `{hidden}`) → {options}".replace("\n", " "), ""]
    with atomic_file(out) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
