"""Use a trained LM: sample continuations and score texts (pure; Keras model + tokenizer in).

Shared by the evaluate stage (samples, scores) and the MLflow pyfunc used for serving. A text
is read in windows of seq_len tokens with the GRU state carried from one window to the next
(attention spans the current window; the GRU state carries everything before it), so a score
does not depend on where window boundaries fall beyond what attention sees.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from components.contract import BOS, EOS, encode, text_bytes
from components.lm.windows import make_streams

# The request parameters of generate/score and their bounds. Their defaults are params.yaml's
# `generate` section, saved with each registered model (info.json and the signature's param
# defaults); LEGACY_DEFAULTS are what models registered before that served with. Every param is
# checked in both modes (a bad max_new_tokens in a score request is still a bad request).
MAX_NEW_TOKENS_CAP = 512
MAX_SEED = 2**63 - 1  # MLflow's `long`
# The continuous cache of `score` (components/lm/cache.py): -1 = the model's own value, the one
# its evaluate stage chose on val (info.json "cache"), or off for a model evaluated without it.
OWN = -1
LEGACY_DEFAULTS = {
    "mode": "generate",
    "max_new_tokens": 32,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
    "seed": 0,
    "candidates": 5,
    "cache_size": OWN,
    "cache_theta": float(OWN),
    "cache_lambda": float(OWN),
}
MAX_CANDIDATES = 50
MAX_CACHE_SIZE = 2_000  # states remembered per text by the continuous cache: bounds the work
# of a served score request (rows x size x H multiply-adds)
NO_CACHE = {"size": 0, "theta": 0.3, "lambda": 0.1}  # a model evaluated without the cache
MODES = ("generate", "score", "fill")  # fill: masked LMs only (components/lm/pyfunc.py)
SCORE_COLUMNS = {
    "nll": "double",
    "tokens": "long",
    "bytes": "long",
    "perplexity": "double",
    "bits_per_byte": "double",
    "nll_cache": "double",
    "perplexity_cache": "double",
    "bits_per_byte_cache": "double",
}  # score mode's output (the cache's when on)
MASKED_SCORE_COLUMNS = {"nll": "double", "masked_tokens": "long", "perplexity": "double"}


class BadRequest(ValueError):
    """A request the model cannot answer: the message names the field and the allowed values."""


def request_defaults(generate: dict | None) -> dict:
    """The request params a model answers with when a request leaves them out: its saved
    `generate` section (params.yaml at registration), or LEGACY_DEFAULTS without one."""
    if generate is None:
        return dict(LEGACY_DEFAULTS)
    saved = {k: generate[k] for k in LEGACY_DEFAULTS if k in generate and k != "mode"}
    return {**LEGACY_DEFAULTS, **saved}  # `candidates` (fill) is not a generate setting


def check_params(params: dict | None, defaults: dict | None = None) -> dict:
    """`params` completed with the defaults, every value checked; unknown names refused."""
    defaults = LEGACY_DEFAULTS if defaults is None else defaults
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise BadRequest(f"params must be an object, got {type(params).__name__}")
    if unknown := sorted(str(k) for k in params if k not in defaults):
        raise BadRequest(f"params {unknown} are not known — use {sorted(defaults)}")
    p = {**defaults, **params}
    if p["mode"] not in MODES:
        raise BadRequest(f"params.mode must be 'generate', 'score' or 'fill', got {p['mode']!r}")
    _integer(p, "max_new_tokens", 1, MAX_NEW_TOKENS_CAP)
    _integer(p, "candidates", 1, MAX_CANDIDATES)
    _integer(p, "top_k", 0, None, "(0 = no limit)")
    _integer(p, "seed", 0, MAX_SEED)
    _integer(p, "cache_size", OWN, MAX_CACHE_SIZE, "(0 = no cache, -1 = the model's own)")
    _number(p, "cache_theta", lambda v: v > 0, "> 0")
    # λ = 1 is the cache alone: a token it has not seen would get infinite NLL (and `Infinity`,
    # which is not JSON, in the served answer)
    _number(p, "cache_lambda", lambda v: 0 <= v < 1, "in [0, 1)")
    _real(p, "temperature", 0.0, None, ">= 0 (0 = greedy)")
    _real(p, "top_p", 0.0, 1.0, "in (0, 1] (1 = off)", open_low=True)
    _real(p, "repetition_penalty", 1.0, None, ">= 1 (1 = off)")
    return p


def _real(
    p: dict, name: str, low: float, high: float | None, allowed: str, open_low: bool = False
) -> None:
    value = p[name]
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (value > low if open_low else value >= low) and (high is None or value <= high):
        p[name] = float(value)
        return
    raise BadRequest(f"params.{name} must be a finite number {allowed}, got {value!r}")


def _integer(p: dict, name: str, low: int, high: int | None, note: str = "") -> None:
    value = p[name]
    ok = isinstance(value, Integral) and not isinstance(value, bool)
    if ok and low <= value and (high is None or value <= high):
        p[name] = int(value)
        return
    bounds = f"in {low}..{high}" if high is not None else f">= {low}"
    raise BadRequest(
        f"params.{name} must be an integer {bounds}{' ' + note if note else ''}, got {value!r}"
    )


def _number(p: dict, name: str, ok, bounds: str) -> None:
    """A finite real number meeting `ok`, or -1 (the model's own value)."""
    v = p[name]
    if (
        isinstance(v, bool)
        or not isinstance(v, Real)
        or not math.isfinite(v)
        or not (v == OWN or ok(v))
    ):
        raise BadRequest(
            f"params.{name} must be a number {bounds} (or -1 = the model's own), got {v!r}"
        )
    p[name] = float(v)


def cache_choice(p: dict, own: dict | None) -> tuple[int, float, float]:
    """(size, θ, λ) of a checked request: its values, -1 replaced by the model's `own` (what
    evaluate chose on val) or, without one, by NO_CACHE."""
    own = own or NO_CACHE
    pick = [
        own[key] if p[f"cache_{key}"] == OWN else p[f"cache_{key}"]
        for key in ("size", "theta", "lambda")
    ]
    return int(pick[0]), float(pick[1]), float(pick[2])


def check_texts(texts: list) -> list[str]:
    """At least one text, each a non-empty string (no number, null or blank)."""
    if not texts:
        raise BadRequest("no text given — send at least one record with a 'text'")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise BadRequest(f"text row {i} must be a non-empty string, got {t!r:.80}")
    return texts


def zero_states(model, batch: int) -> list[np.ndarray]:
    """The cold GRU states of a batch: one (batch, H) zero array per layer."""
    from components.lm.model import state_sizes

    return [np.zeros((batch, h), np.float32) for h in state_sizes(model)]


def step(model, x: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """One window (B, T) from `states`: (logits (B, T, V), the states after the window)."""
    if not states:  # a model without state inputs (saved before states were carried)
        return np.asarray(model.predict_on_batch(x)), []
    out = model.predict_on_batch([x, *states])
    return np.asarray(out[0]), [np.asarray(s, np.float32) for s in out[1:]]


def penalize(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """Each earlier occurrence of a token in `seen` divides its probability by `penalty`
    (its logit loses ln(penalty) per occurrence). Cumulative, unlike CTRL's one-off penalty
    (HF transformers' `repetition_penalty`), which a token far ahead of the rest survives, so
    greedy decoding of a small model still said `我们们们们…`; here a greedy run of one token
    ends once it has cost more than its lead. (V,) -> (V,) float64, `logits` untouched."""
    z = logits.astype(np.float64)
    if penalty != 1.0 and seen.size:
        z -= np.bincount(seen, minlength=z.size)[: z.size] * math.log(penalty)
    return z


def sample_next(
    logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator, top_p: float = 1.0
) -> int:
    """Greedy when temperature is 0, else softmax(logits / T) restricted to the top k and then
    to the nucleus: the fewest likeliest tokens whose probability reaches top_p."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if 0 < top_k < z.size:
        z[np.argsort(z, kind="stable")[:-top_k]] = -np.inf
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        keep = np.searchsorted(np.cumsum(p[order]), top_p) + 1  # always at least one token
        p[order[keep:]] = 0.0
        p /= p.sum()
    return int(rng.choice(z.size, p=p))


def generate(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    seed: int,
    seq_len: int,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
) -> str:
    """Continue `prompt` token by token. The text is read in blocks of seq_len from its start,
    as in training: finished blocks only pass on their GRU state, the current block is the
    window attention sees. A model without state inputs sees the last seq_len tokens. The
    repetition penalty counts the last seq_len tokens of the text (prompt and continuation):
    what the model itself reads closely; a long text may use common tokens again."""
    rng = np.random.default_rng(seed)
    prompt_ids = [BOS, *tokenizer.encode(prompt, add_special_tokens=False).ids]
    ids, states, start = list(prompt_ids), zero_states(model, 1), 0
    for _ in range(max_new_tokens):
        if not states:
            start = max(0, len(ids) - seq_len)
        while len(ids) - start > seq_len:  # finished blocks: carry their state on
            _, states = step(model, np.array([ids[start : start + seq_len]], np.int32), states)
            start += seq_len
        logits = step(model, np.array([ids[start:]], np.int32), states)[0][0, -1]  # (V,)
        recent = np.array(ids[max(1, len(ids) - seq_len) :], np.int64)  # never <bos>
        logits = penalize(logits, recent, repetition_penalty)
        nxt = sample_next(logits, temperature, top_k, rng, top_p)
        if nxt == EOS:
            break
        ids.append(nxt)
    return tokenizer.decode(ids[len(prompt_ids) :])


def stream_stats(model, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(-log p(y | x), rank of y among the logits) at every position of (K, S, T) windows from
    make_streams: batch k holds window k of all S streams and starts from the states batch
    k - 1 ended with (cold at k = 0)."""
    nll = np.empty(y.shape, dtype=np.float64)
    rank = np.empty(y.shape, dtype=np.int64)
    states = zero_states(model, x.shape[1])
    for k in range(len(x)):
        logits, states = step(model, x[k], states)
        logits = logits.astype(np.float64)  # (S, T, V)
        m = logits.max(-1, keepdims=True)
        logz = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]  # (S, T)
        target = np.take_along_axis(logits, y[k][:, :, None], -1)  # (S, T, 1)
        nll[k] = logz - target[..., 0]
        rank[k] = (logits > target).sum(-1)  # 0 = top-1
    return nll, rank


def text_streams(ids: list[list[int]], seq_len: int) -> tuple[np.ndarray, ...]:
    """(inputs, targets, weights), each (K, S, T): text s is stream s, read in K windows of
    seq_len; shorter texts are right-padded (padding is never a target)."""
    parts = [make_streams(np.array(t, np.int32), 1, seq_len) for t in ids]
    K = max(len(p[0]) for p in parts)
    return tuple(
        np.concatenate([np.pad(p[i], ((0, K - len(p[i])), (0, 0), (0, 0))) for p in parts], axis=1)
        for i in range(3)
    )  # (K, S, T)


def score_texts(
    model, tokenizer, texts: list[str], seq_len: int, batch_size: int = 64
) -> list[dict[str, float]]:
    """Per text: summed NLL (nats), targets, UTF-8 bytes (+1 for <eos>), perplexity, bits/byte.

    Each text is one stream (state carried across its windows); up to batch_size texts are
    read side by side (text_streams).
    """
    ids = encode(tokenizer, texts)
    nll = np.zeros(len(texts))
    counts = np.zeros(len(texts))
    for lo in range(0, len(texts), batch_size):
        x, y, w = text_streams(ids[lo : lo + batch_size], seq_len)  # (K, S, T)
        per_pos = stream_stats(model, x, y)[0] * w
        nll[lo : lo + x.shape[1]] = per_pos.sum(axis=(0, 2))
        counts[lo : lo + x.shape[1]] = w.sum(axis=(0, 2))
    rows = []
    for text, total, n in zip(texts, nll, counts, strict=True):
        n_bytes = text_bytes(text)
        rows.append(
            {
                "nll": float(total),
                "tokens": int(n),
                "bytes": n_bytes,
                "perplexity": math.exp(min(total / n, 700.0)),  # no float overflow
                "bits_per_byte": total / math.log(2) / n_bytes,
            }
        )
    return rows


def score_stream(model, stream: np.ndarray, seq_len: int, n_streams: int) -> dict:
    """Score one token stream laid out as n_streams parallel streams (make_streams). Returns
    `nll` (summed over targets), `targets`, and per position i of stream[1:] (target i is
    stream[i + 1]): `nll_at`, `rank_at`, `weight_at` (0 where it is no target), `pos_at`
    (its position inside its window)."""
    x, y, w = make_streams(stream, n_streams, seq_len)  # (K, S, T)
    nll, rank = stream_stats(model, x, y)
    K, S, T = x.shape
    n, L = stream.size - 1, -(-(stream.size - 1) // n_streams)

    def in_order(a: np.ndarray) -> np.ndarray:  # (K, S, T) -> (n,) in stream order
        return a.transpose(1, 0, 2).reshape(S, K * T)[:, :L].reshape(-1)[:n]

    pos = np.broadcast_to(np.arange(T), x.shape)
    weight = in_order(w)
    per_target = in_order(nll) * weight
    return {
        "nll": float(per_target.sum()),
        "targets": int(weight.sum()),
        "nll_at": per_target,
        "rank_at": in_order(rank),
        "weight_at": weight,
        "pos_at": in_order(pos),
    }
