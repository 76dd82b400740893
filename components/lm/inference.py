"""Use a trained LM: sample continuations and score texts (pure; Keras model + tokenizer in).

Shared by the evaluate stage (samples, scores) and the MLflow pyfunc used for serving.
"""

from __future__ import annotations

import math

import numpy as np

from components.contract import BOS, EOS, encode, text_bytes
from components.lm.windows import make_windows


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
