"""Benchmark of the embed stage: words/s through our stage vs the bare gensim call.

Usage: `python -m bench.embed` -> reports/bench/embed.json, a list with the row `embed`:
`value` = words/s of the stage's path (read the token Parquet with `read_sentences`,
`train_vectors`, save the matrix), `raw_value` = words/s of the bare path with the same I/O (read
the same Parquet with pyarrow, `Word2Vec(sentences, ...)` with the same settings (params.yaml
`embed`, so the same threads), save its vectors), interleaved in the same run, best of REPEATS
with min/median/max in `spread`; `ratio` = value / raw_value (floor in bench.common). Words =
corpus tokens x epochs. Uses data/tokens/train.parquet when present (the built-in corpus), else
a synthetic corpus.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from gensim.models import Word2Vec
from gensim.models.word2vec_inner import MAX_WORDS_IN_BATCH

from bench.common import failures, throughput_row
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
    pq.write_table(
        pa.table({"ids": pa.array([d.tolist() for d in docs], pa.list_(pa.int32()))}), path
    )


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bare_sentences(train: Path) -> list[list[str]]:
    """The token Parquet read with bare pyarrow, cut where gensim would (as the stage does, so
    both sides train on the same words)."""
    rows = pq.read_table(train, columns=["ids"]).column("ids").to_pylist()
    return [
        [str(i) for i in ids[s : s + MAX_WORDS_IN_BATCH]]
        for ids in rows
        for s in range(0, len(ids), MAX_WORDS_IN_BATCH)
    ]


def measure(train: Path, vocab_size: int, cfg: Embed, out: Path) -> dict:
    words = sum(len(s) for s in read_sentences(train, vocab_size)) * cfg.epochs
    settings = word2vec_settings(cfg)

    def ours() -> None:
        np.save(out / "ours.npy", train_vectors(read_sentences(train, vocab_size), vocab_size, cfg))

    def bare() -> None:
        np.save(out / "bare.npy", Word2Vec(bare_sentences(train), **settings).wv.vectors)

    times: dict[str, list[float]] = {"ours": [], "bare": []}
    for i in range(REPEATS):  # interleaved, alternating who goes first: load hits both alike
        order = (("ours", ours), ("bare", bare)) if i % 2 == 0 else (("bare", bare), ("ours", ours))
        for name, fn in order:
            times[name].append(seconds(fn))
    return throughput_row("embed", words, times["ours"], times["bare"], "words/s")


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
        row = measure(corpus, vocab_size, p.embed, Path(tmp))
    out = Path(p.paths.reports) / "bench" / "embed.json"
    write_json(out, [row])
    print(
        f"bench embed: {row['value']:.0f} words/s vs bare gensim {row['raw_value']:.0f} "
        f"(ratio {row['ratio']:.3f}) -> {out}"
    )
    for line in failures([row]):
        print(f"bench embed: FAIL {line}")


if __name__ == "__main__":
    main()
