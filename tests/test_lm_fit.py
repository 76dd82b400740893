"""components/lm/fit.py: the one training recipe's pieces — the shuffled dataset, the shared
embeddings check — on tiny inputs."""

from __future__ import annotations

import numpy as np
import pytest

from components.contract import PAD
from components.errors import GruflowError
from components.lm.fit import load_embeddings, make_dataset


def test_make_dataset_covers_every_target_once():
    stream = np.arange(4, 4 + 50, dtype=np.int32)
    ds, n = make_dataset(stream, 8, 4, seed=3)
    assert n == stream.size - 1
    xs, ys, ws = (np.concatenate(parts) for parts in zip(*[tuple(np.asarray(t) for t in b)
                                                          for b in ds], strict=True))
    assert xs.shape == ys.shape == ws.shape == (7, 8)
    real = ws > 0
    assert sorted(ys[real].tolist()) == stream[1:].tolist()
    np.testing.assert_array_equal(ys[~real], PAD)
    again, _ = make_dataset(stream, 8, 4, seed=3)
    first_batch = next(iter(again))[0].numpy()
    np.testing.assert_array_equal(first_batch, xs[:4])


def test_load_embeddings_checks_the_shape_for_every_user(params, tmp_path):
    """train, tune trials and bench all load through this one check."""
    path = tmp_path / "emb.npy"
    np.save(path, np.zeros((40, params.model.embedding_dim + 1), np.float32))
    p = params.model_copy(update={
        "paths": params.paths.model_copy(update={"embeddings": str(path)}),
        "model": params.model.model_copy(update={"embedding_init": "word2vec"})})
    with pytest.raises(GruflowError, match=rf"{path}: shape .* does not match vocabulary 40"):
        load_embeddings(p, 40)
    random_init = p.model_copy(update={"model": p.model.model_copy(
        update={"embedding_init": "random"})})
    assert load_embeddings(random_init, 40) is None
