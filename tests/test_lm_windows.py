"""components/lm/windows.py: token Parquet -> packed windows (pure NumPy)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.contract import PAD
from components.errors import GruflowError
from components.lm import windows


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


# --------------------------------------------------------------------------- windows


@pytest.mark.parametrize(("size", "seq_len"), [(2, 1), (2, 4), (9, 4), (10, 3), (17, 4), (101, 7)])
def test_make_windows_cover_every_target_once(size, seq_len):
    stream = np.arange(4, 4 + size, dtype=np.int32)
    inputs, targets, weights = windows.make_windows(stream, seq_len)

    n = math.ceil((size - 1) / seq_len)
    assert inputs.shape == targets.shape == weights.shape == (n, seq_len)
    live = weights == 1
    assert weights.sum() == size - 1
    np.testing.assert_array_equal(targets[live], stream[1:])  # each target once, in order
    np.testing.assert_array_equal(inputs[live], stream[:-1])
    assert set(np.unique(weights)) <= {0.0, 1.0}
    assert (targets[~live] == PAD).all() and (weights.ravel()[size - 1 :] == 0).all()
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])  # shifted by one
    np.testing.assert_array_equal(inputs[1:, 0], targets[:-1, -1])  # windows chain up


@pytest.mark.parametrize("size", [0, 1])
def test_make_windows_needs_two_tokens(size):
    with pytest.raises(GruflowError, match="fewer than 2 tokens"):
        windows.make_windows(np.arange(size, dtype=np.int32), 4)


def test_unigram_log_probs():
    stream = np.array([7, 5, 5, 5, 2], dtype=np.int32)
    logp = windows.unigram_log_probs(stream, vocab_size=10)
    assert logp.shape == (10,)
    assert np.exp(logp.astype(np.float64)).sum() == pytest.approx(1.0, abs=1e-6)
    # add-one smoothing over the targets 5 5 5 (the first token is not a target, and the
    # <bos> (id 2) at the end is none either): (count + 1) / (3 + 10)
    assert np.exp(logp[5]) == pytest.approx(4 / 13)
    assert np.exp(logp[7]) == pytest.approx(1 / 13)
    assert np.exp(logp[2]) == pytest.approx(1 / 13)


def test_read_stream_concatenates_documents(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(
        pa.table({"ids": pa.array([[2, 5, 3], [2, 6, 7, 3]], pa.list_(pa.int32()))}), path
    )
    stream = windows.read_stream(path)
    assert stream.dtype == np.int32
    assert stream.tolist() == [2, 5, 3, 2, 6, 7, 3]
    with pytest.raises(GruflowError, match="run the tokenize stage first"):
        windows.read_stream(tmp_path / "missing.parquet")
