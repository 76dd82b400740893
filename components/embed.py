"""Stage `embed`: skip-gram negative-sampling word vectors over the tokenizer's vocabulary.

Usage: `python -m components.embed`. Trains gensim's optimised Word2Vec on the train split's
token-id sequences, so row i of artifacts/embeddings.npy is the vector of token id i.
Ids that never occur get N(0, σ²) rows with σ the std of the trained vectors; <pad> is zero.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
from gensim.models import Word2Vec

from components.artifacts import atomic_file, write_json
from components.errors import GruflowError, guarded
from components.params import Embed, load_params
from components.tokenize import PAD

log = logging.getLogger(__name__)


def stable_hash(text: str) -> int:
    """Deterministic replacement for Python's salted `hash` (gensim seeds vectors with it)."""
    return int.from_bytes(hashlib.md5(text.encode()).digest()[:4], "little")


class TokenSentences:
    """Restartable iterable of token-id sequences as strings (gensim makes several passes)."""

    def __init__(self, path: Path):
        self.path = path

    def __iter__(self) -> Iterator[list[str]]:
        for batch in ds.dataset(self.path).to_batches(columns=["ids"]):
            for ids in batch.column("ids").to_pylist():
                yield [str(i) for i in ids]


def train_vectors(sentences, vocab_size: int, cfg: Embed) -> np.ndarray:
    """Return a [vocab_size, dim] float32 matrix aligned to token ids."""
    w2v = Word2Vec(sentences, vector_size=cfg.dim, window=cfg.window, negative=cfg.negatives,
                   min_count=cfg.min_count, epochs=cfg.epochs, seed=cfg.seed, sg=1, workers=1,
                   hashfxn=stable_hash)
    if len(w2v.wv) == 0:
        raise GruflowError("embed: no token reached embed.min_count — lower it or add text")
    rng = np.random.default_rng(cfg.seed)
    sigma = float(w2v.wv.vectors.std())
    matrix = rng.normal(0.0, sigma, size=(vocab_size, cfg.dim)).astype(np.float32)
    ids = np.array([int(k) for k in w2v.wv.index_to_key])
    matrix[ids] = w2v.wv.vectors
    matrix[PAD] = 0.0
    return matrix


def cosine_neighbours(matrix: np.ndarray, token: int, k: int) -> list[tuple[int, float]]:
    """Top-k ids by sim(w1, w2) = v1·v2 / (|v1||v2|), excluding the token itself."""
    norms = np.linalg.norm(matrix, axis=1) + 1e-12
    sims = matrix @ matrix[token] / (norms * norms[token])
    sims[token] = -np.inf
    top = np.argsort(-sims)[:k]
    return [(int(i), float(sims[i])) for i in top]


def run(cfg: Embed, tokens_dir: Path, vocab_size: int, out: Path, report: Path) -> dict:
    train = tokens_dir / "train.parquet"
    if not train.is_file():
        raise GruflowError(f"{train}: missing — run the tokenize stage first")
    matrix = train_vectors(TokenSentences(train), vocab_size, cfg)
    with atomic_file(out) as tmp:
        np.save(tmp, matrix)
    summary = {"vocab_size": vocab_size, "dim": cfg.dim,
               "mean_norm": float(np.linalg.norm(matrix, axis=1).mean())}
    write_json(report, summary)
    return summary


@guarded
def main() -> None:
    from tokenizers import Tokenizer

    p = load_params()
    vocab = Tokenizer.from_file(p.paths.tokenizer).get_vocab_size()
    s = run(p.embed, Path(p.paths.tokens), vocab, Path(p.paths.embeddings),
            Path(p.paths.reports) / "embed.json")
    print(f"embed: {s['vocab_size']} x {s['dim']} vectors")


if __name__ == "__main__":
    main()
