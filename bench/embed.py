"""Benchmark of the embed stage: words/s through our stage vs the bare gensim call.

Usage: `python -m bench.embed` -> reports/bench/embed.json, a list with the row `embed`:
`value` = words/s of the stage's path (read the token Parquet + `train_vectors`), `raw_value` =
words/s of `Word2Vec(sentences, ...)` on the same sequences and settings (params.yaml `embed`)
in the same run, `ratio` = value / raw_value (floor 0.9). Words = corpus tokens x epochs.
Uses data/tokens/train.parquet when present (the built-in corpus), else a synthetic corpus.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from gensim.models import Word2Vec

from components.artifacts import write_json
from components.embed import read_sentences, train_vectors, word2vec_settings
from components.params import Embed, load_params

REPEATS = 5  # best of: the machine is shared, the minimum time is the least noisy estimate
SYNTHETIC_TOKENS = 300_000


def synthetic_corpus(path: Path, vocab_size: int, seed: int = 0) -> None:
    """Zipf-distributed token ids in documents of 20-400 tokens (a stand-in for real text)."""
    rng = np.random.default_rng(seed)
    probs = 1.0 / np.arange(1, vocab_size - 3)
    ids = 4 + rng.choice(vocab_size - 4, size=SYNTHETIC_TOKENS, p=probs / probs.sum())
    cuts = np.cumsum(rng.integers(20, 400, size=SYNTHETIC_TOKENS // 20))
    docs = np.split(ids.astype(np.int32), cuts[cuts < SYNTHETIC_TOKENS])
    pq.write_table(pa.table({"ids": pa.array([d.tolist() for d in docs],
                                             pa.list_(pa.int32()))}), path)


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(train: Path, vocab_size: int, cfg: Embed) -> dict:
    sentences = read_sentences(train, vocab_size)
    words = sum(len(s) for s in sentences) * cfg.epochs
    settings = word2vec_settings(cfg)
    ours, raw = [], []
    for _ in range(REPEATS):  # interleaved, so load from other processes hits both alike
        ours.append(seconds(lambda: train_vectors(read_sentences(train, vocab_size),
                                                  vocab_size, cfg)))
        raw.append(seconds(lambda: Word2Vec(sentences, **settings)))
    value, raw_value = words / min(ours), words / min(raw)
    return {"name": "embed", "value": round(value, 1), "raw_value": round(raw_value, 1),
            "unit": "words/s", "ratio": round(value / raw_value, 4)}


def main() -> None:
    p = load_params()
    train = Path(p.paths.tokens) / "train.parquet"
    with tempfile.TemporaryDirectory() as tmp:
        if train.is_file() and Path(p.paths.tokenizer).is_file():
            from tokenizers import Tokenizer

            vocab_size, corpus = Tokenizer.from_file(p.paths.tokenizer).get_vocab_size(), train
        else:
            vocab_size, corpus = p.tokenize.vocab_size, Path(tmp) / "train.parquet"
            synthetic_corpus(corpus, vocab_size)
        row = measure(corpus, vocab_size, p.embed)
    out = Path(p.paths.reports) / "bench" / "embed.json"
    write_json(out, [row])
    print(f"bench embed: {row['value']:.0f} words/s vs bare gensim {row['raw_value']:.0f} "
          f"(ratio {row['ratio']:.3f}) -> {out}")


if __name__ == "__main__":
    main()
