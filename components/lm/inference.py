"""Use a trained LM: sample continuations and score texts (pure; Keras model + tokenizer in).

Shared by the evaluate stage (samples, scores) and the MLflow pyfunc used for serving.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from components.contract import BOS, EOS, encode, text_bytes
from components.lm.windows import make_windows

# The request parameters of generate/score, their defaults and bounds. Every one is checked in
# both modes (a bad max_new_tokens in a score request is still a bad request).
MAX_NEW_TOKENS_CAP = 512
MAX_SEED = 2**63 - 1  # MLflow's `long`
DEFAULT_PARAMS = {"mode": "generate", "max_new_tokens": 32, "temperature": 1.0, "top_k": 0,
                  "seed": 0}
MODES = ("generate", "score")


class BadRequest(ValueError):
    """A request the model cannot answer: the message names the field and the allowed values."""


def check_params(params: dict | None) -> dict:
    """`params` completed with the defaults, every value checked; unknown names refused."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise BadRequest(f"params must be an object, got {type(params).__name__}")
    if unknown := sorted(str(k) for k in params if k not in DEFAULT_PARAMS):
        raise BadRequest(f"params {unknown} are not known — use {sorted(DEFAULT_PARAMS)}")
    p = {**DEFAULT_PARAMS, **params}
    if p["mode"] not in MODES:
        raise BadRequest(f"params.mode must be 'generate' or 'score', got {p['mode']!r}")
    _integer(p, "max_new_tokens", 1, MAX_NEW_TOKENS_CAP)
    _integer(p, "top_k", 0, None, "(0 = no limit)")
    _integer(p, "seed", 0, MAX_SEED)
    t = p["temperature"]
    if isinstance(t, bool) or not isinstance(t, Real) or not math.isfinite(t) or t < 0:
        raise BadRequest(f"params.temperature must be a finite number >= 0 (0 = greedy), "
                         f"got {t!r}")
    return {**p, "temperature": float(t)}


def _integer(p: dict, name: str, low: int, high: int | None, note: str = "") -> None:
    value = p[name]
    ok = isinstance(value, Integral) and not isinstance(value, bool)
    if ok and low <= value and (high is None or value <= high):
        p[name] = int(value)
        return
    bounds = f"in {low}..{high}" if high is not None else f">= {low}"
    raise BadRequest(f"params.{name} must be an integer {bounds}{' ' + note if note else ''}, "
                     f"got {value!r}")


def check_texts(texts: list) -> list[str]:
    """At least one text, each a non-empty string (no number, null or blank)."""
    if not texts:
        raise BadRequest("no text given — send at least one record with a 'text'")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise BadRequest(f"text row {i} must be a non-empty string, got {t!r:.80}")
    return texts


def sample_next(logits: np.ndarray, temperature: float, top_k: int,
                rng: np.random.Generator) -> int:
    """Greedy when temperature is 0, else softmax(logits / T) restricted to the top k."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if 0 < top_k < z.size:
        z[np.argsort(z)[:-top_k]] = -np.inf
    p = np.exp(z - z.max())
    return int(rng.choice(z.size, p=p / p.sum()))


def generate(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float,
             top_k: int, seed: int, seq_len: int) -> str:
    """Continue `prompt` token by token (the last seq_len tokens are the context)."""
    rng = np.random.default_rng(seed)
    prompt_ids = [BOS, *tokenizer.encode(prompt, add_special_tokens=False).ids]
    ids = list(prompt_ids)
    for _ in range(max_new_tokens):
        window = np.array([ids[-seq_len:]], dtype=np.int32)  # (1, T)
        logits = np.asarray(model.predict_on_batch(window))[0, -1]  # (V,)
        nxt = sample_next(logits, temperature, top_k, rng)
        if nxt == EOS:
            break
        ids.append(nxt)
    return tokenizer.decode(ids[len(prompt_ids):])


def token_stats(model, x: np.ndarray, y: np.ndarray,
                batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(-log p(y | x), rank of y among the logits) for every position, each (N, T)."""
    nll = np.empty(y.shape, dtype=np.float64)
    rank = np.empty(y.shape, dtype=np.int64)
    for start in range(0, len(x), batch_size):
        logits = np.asarray(model.predict_on_batch(x[start:start + batch_size]), np.float64)
        m = logits.max(-1, keepdims=True)
        logz = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]  # (B, T)
        target = np.take_along_axis(logits, y[start:start + batch_size, :, None], -1)  # (B,T,1)
        nll[start:start + batch_size] = logz - target[..., 0]
        rank[start:start + batch_size] = (logits > target).sum(-1)  # 0 = top-1
    return nll, rank


def score_texts(model, tokenizer, texts: list[str], seq_len: int,
                batch_size: int = 64) -> list[dict[str, float]]:
    """Per text: summed NLL (nats), tokens, UTF-8 bytes (+1 for <eos>), perplexity, bits/byte.

    Windows of all texts are batched together; each text is scored independently.
    """
    parts = [make_windows(np.array(ids, dtype=np.int32), seq_len)
             for ids in encode(tokenizer, texts)]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    w = np.concatenate([p[2] for p in parts])
    nll = (token_stats(model, x, y, batch_size)[0] * w).sum(-1)  # (N,) per window
    owner = np.repeat(np.arange(len(texts)), [len(p[0]) for p in parts])
    per_text_nll = np.bincount(owner, weights=nll, minlength=len(texts))
    per_text_tokens = np.bincount(owner, weights=w.sum(-1), minlength=len(texts))
    rows = []
    for text, total, n in zip(texts, per_text_nll, per_text_tokens, strict=True):
        n_bytes = text_bytes(text)
        rows.append({"nll": float(total), "tokens": int(n), "bytes": n_bytes,
                     "perplexity": math.exp(min(total / n, 700.0)),  # no float overflow
                     "bits_per_byte": total / math.log(2) / n_bytes})
    return rows
