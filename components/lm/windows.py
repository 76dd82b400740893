"""Token Parquet -> fixed windows for the language model (pure NumPy; tf.data wraps it).

A split's documents (each framed <bos> ... <eos>) are concatenated into one stream and cut
into windows of seq_len + 1 tokens with stride seq_len, so every token after the first is a
target exactly once; the last window is right-padded with <pad> (weight 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.contract import PAD
from components.errors import GruflowError


def read_stream(path: Path) -> np.ndarray:
    """All token ids of a split, in document order, as one int32 array."""
    if not path.is_file():
        raise GruflowError(f"{path}: missing — run the tokenize stage first")
    ids = pq.read_table(path, columns=["ids"]).column("ids")
    return pc.list_flatten(ids).to_numpy(zero_copy_only=False).astype(np.int32)


def window_count(n_tokens: int, seq_len: int) -> int:
    """Windows needed so that every target (all tokens but the first) is covered once."""
    return -(-(n_tokens - 1) // seq_len)


def make_windows(stream: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets, weights), each (N, seq_len); weights are 0 on padding."""
    if stream.size < 2:
        raise GruflowError("token stream has fewer than 2 tokens — add text to this split")
    n = window_count(stream.size, seq_len)
    padded = np.full(n * seq_len + 1, PAD, dtype=np.int32)
    padded[: stream.size] = stream
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]  # (N, T+1)
    windows = padded[idx]
    weights = np.zeros((n, seq_len), dtype=np.float32)
    weights.reshape(-1)[: stream.size - 1] = 1.0
    return windows[:, :-1], windows[:, 1:], weights


def unigram_log_probs(stream: np.ndarray, vocab_size: int) -> np.ndarray:
    """Add-one smoothed log unigram probabilities of the split's targets."""
    counts = np.bincount(stream[1:], minlength=vocab_size).astype(np.float64)
    return np.log((counts + 1.0) / (counts.sum() + vocab_size)).astype(np.float32)
