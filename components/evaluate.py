"""Stage `evaluate`: score the trained LM and two count baselines on the test split.

Usage: `python -m components.evaluate`. Writes reports/metrics.json (DVC metrics) with
perplexity per token, bits per byte, token accuracy (top-1/top-5) and the baselines: an
add-one unigram (`baseline_perplexity`) and a Witten-Bell bigram (`bigram_perplexity`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.artifacts import write_json
from components.errors import GruflowError, guarded
from components.params import Params, load_params
from components.windows import make_windows, read_stream, unigram_log_probs


def bigram_log_probs(train: np.ndarray, test: np.ndarray, vocab_size: int) -> np.ndarray:
    """log P(test[i+1] | test[i]) under an interpolated Witten-Bell bigram fitted on train."""
    uni = np.exp(unigram_log_probs(train, vocab_size).astype(np.float64))
    V = np.int64(vocab_size)
    pairs, pair_counts = np.unique(train[:-1].astype(np.int64) * V + train[1:], return_counts=True)
    ctx_counts = np.bincount(train[:-1], minlength=vocab_size).astype(np.float64)
    types = np.bincount(pairs // V, minlength=vocab_size).astype(np.float64)  # T(v)
    prev, nxt = test[:-1].astype(np.int64), test[1:].astype(np.int64)
    codes = prev * V + nxt
    pos = np.clip(np.searchsorted(pairs, codes), 0, len(pairs) - 1)
    c_vw = np.where(pairs[pos] == codes, pair_counts[pos], 0).astype(np.float64)
    c_v, t_v = ctx_counts[prev], types[prev]
    seen = c_v > 0
    p = np.where(seen, (c_vw + t_v * uni[nxt]) / np.where(seen, c_v + t_v, 1.0), uni[nxt])
    return np.log(p)


def score_model(model, test: np.ndarray, seq_len: int, batch_size: int) -> dict[str, float]:
    """Summed NLL (nats), tokens, and top-1/top-5 hits over every test target."""
    x, y, w = make_windows(test, seq_len)
    nll = hits1 = hits5 = 0.0
    for start in range(0, len(x), batch_size):
        logits = np.asarray(model.predict_on_batch(x[start:start + batch_size]), np.float64)
        yb, wb = y[start:start + batch_size], w[start:start + batch_size]  # (B, T)
        m = logits.max(-1, keepdims=True)
        logz = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]  # (B, T)
        target = np.take_along_axis(logits, yb[..., None], -1)[..., 0]  # (B, T)
        nll += float(((logz - target) * wb).sum())
        rank = (logits > target[..., None]).sum(-1)  # (B, T): how many beat the target
        hits1 += float(((rank < 1) * wb).sum())
        hits5 += float(((rank < 5) * wb).sum())
    n = float(w.sum())
    return {"nll": nll, "tokens": n, "top1": hits1 / n, "top5": hits5 / n}


def test_bytes(path: Path) -> int:
    """UTF-8 bytes of the test text plus one per document for its <eos> separator."""
    n_bytes = pq.read_table(path, columns=["n_bytes"]).column("n_bytes")
    return int(pc.sum(n_bytes).as_py() or 0) + len(n_bytes)


def run(p: Params) -> dict:
    import keras

    from components import model as _layers  # noqa: F401  (registers custom layers)

    paths, tokens = p.paths, Path(p.paths.tokens)
    train, test = read_stream(tokens / "train.parquet"), read_stream(tokens / "test.parquet")
    if not Path(paths.model).is_file():
        raise GruflowError(f"{paths.model}: missing — run the train stage first")
    model = keras.saving.load_model(paths.model, safe_mode=True)
    vocab_size = int(model.output_shape[-1])
    s = score_model(model, test, p.train.seq_len, p.evaluate.batch_size)
    n_bytes = test_bytes(tokens / "test.parquet")
    uni = unigram_log_probs(train, vocab_size)
    metrics = {
        "perplexity": math.exp(s["nll"] / s["tokens"]),
        "bits_per_byte": s["nll"] / math.log(2) / n_bytes,
        "token_accuracy": s["top1"],
        "top5_accuracy": s["top5"],
        "baseline_perplexity": math.exp(-float(uni[test[1:]].astype(np.float64).mean())),
        "bigram_perplexity": math.exp(-float(bigram_log_probs(train, test, vocab_size).mean())),
        "test_tokens": int(s["tokens"]),
        "test_bytes": n_bytes,
        "embedding_init": p.model.embedding_init,
    }
    write_json(Path(paths.reports) / "metrics.json", metrics)
    return metrics


@guarded
def main() -> None:
    m = run(load_params())
    print(f"evaluate: test perplexity {m['perplexity']:.1f} "
          f"(unigram {m['baseline_perplexity']:.1f}, bigram {m['bigram_perplexity']:.1f}), "
          f"{m['bits_per_byte']:.3f} bits/byte")


if __name__ == "__main__":
    main()
