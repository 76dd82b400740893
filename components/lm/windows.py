"""Token Parquet -> windows for the language model (pure NumPy; tf.data wraps it).

A split's documents (each framed <bos> ... <eos>) are concatenated into one stream. A target is
a real next token: `<eos>` is one (the model must predict where a text ends), `<bos>` and
`<pad>` never are (the token after `<eos>` is always `<bos>`: predicting it is free and would
flatter every number). `make_streams` lays the stream out as S parallel streams read window by
window with the GRU state carried from one window of a stream to the next; `make_windows` cuts
independent windows (no state carried).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.contract import BOS, PAD
from components.errors import GruflowError


def read_stream(path: Path) -> np.ndarray:
    """All token ids of a split, in document order, as one int32 array."""
    if not path.is_file():
        raise GruflowError(f"{path}: missing — run the tokenize stage first")
    ids = pq.read_table(path, columns=["ids"]).column("ids")
    return pc.list_flatten(ids).to_numpy(zero_copy_only=False).astype(np.int32)


def target_weights(targets: np.ndarray) -> np.ndarray:
    """1 for a real next-token target, 0 for `<bos>` and `<pad>` (never scored)."""
    return ((targets != BOS) & (targets != PAD)).astype(np.float32)


def target_count(stream: np.ndarray) -> int:
    """How many targets a stream has: every token after the first except `<bos>`/`<pad>`."""
    return int(target_weights(stream[1:]).sum())


def window_count(n_tokens: int, seq_len: int) -> int:
    """Windows needed so that every target position (all tokens but the first) is covered once."""
    return -(-(n_tokens - 1) // seq_len)


def _check(stream: np.ndarray) -> None:
    if stream.size < 2:
        raise GruflowError("token stream has fewer than 2 tokens — add text to this split")


def make_windows(stream: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets, weights), each (N, seq_len), windows of stride seq_len; weights are 0
    on padding and on `<bos>` targets."""
    _check(stream)
    n = window_count(stream.size, seq_len)
    padded = np.full(n * seq_len + 1, PAD, dtype=np.int32)
    padded[: stream.size] = stream
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]  # (N, T+1)
    windows = padded[idx]
    return windows[:, :-1], windows[:, 1:], target_weights(windows[:, 1:])


def stream_length(n_tokens: int, n_streams: int) -> int:
    """Target positions per stream when a stream of n_tokens is split into n_streams."""
    return -(-(n_tokens - 1) // n_streams)


def make_streams(
    stream: np.ndarray, n_streams: int, seq_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets, weights), each (K, S, T): the stream cut into S = n_streams contiguous
    parts of equal length (the last ones right-padded), each read in K windows of T = seq_len.
    Window k of part s continues window k - 1 of part s, so row k is one batch of a model that
    carries its state from batch k - 1; every target position is covered exactly once."""
    _check(stream)
    L = stream_length(stream.size, n_streams)  # target positions per part
    K = -(-L // seq_len)
    padded = np.full(n_streams * L + 1, PAD, dtype=np.int32)
    padded[: stream.size] = stream
    # Part s reads inputs padded[s*L : s*L + K*T] and targets one further; positions beyond
    # its L targets belong to the next part, so they are masked (and read as padding).
    starts = np.arange(n_streams)[:, None] * L  # (S, 1)
    offsets = np.arange(K * seq_len + 1)[None, :]  # (1, K*T + 1)
    inside = offsets[:, :-1] < L  # (1, K*T): positions that are this part's
    idx = np.minimum(starts + offsets, padded.size - 1)  # (S, K*T + 1)
    tokens = padded[idx]
    x = np.where(inside, tokens[:, :-1], PAD)  # (S, K*T)
    y = np.where(inside, tokens[:, 1:], PAD)  # (S, K*T)
    as_windows = lambda a: a.reshape(n_streams, K, seq_len).transpose(1, 0, 2)  # noqa: E731
    return as_windows(x), as_windows(y), as_windows(target_weights(y))


def unigram_log_probs(stream: np.ndarray, vocab_size: int) -> np.ndarray:
    """Add-one smoothed log unigram probabilities of the split's targets (`<bos>` and `<pad>`
    are never targets, so they get no count)."""
    targets = stream[1:]
    counts = np.bincount(targets[target_weights(targets) > 0], minlength=vocab_size)
    counts = counts.astype(np.float64)
    return np.log((counts + 1.0) / (counts.sum() + vocab_size)).astype(np.float32)


def stream_count(n_tokens: int, seq_len: int, batch_size: int, multiple: int = 1) -> int:
    """Parallel streams a split is read as: batch_size, or fewer so that each is at least one
    window long (a tiny split is not spread thin over many cold starts); a multiple of
    `multiple` (the replicas that share a batch under tf.distribute)."""
    n = max(1, min(batch_size, window_count(n_tokens, seq_len)))
    return max(multiple, n - n % multiple)
