"""components/lm/fit.py: the one training recipe's pieces — the streams dataset (documents
shuffled per epoch), the shared embeddings check — on tiny inputs."""

from __future__ import annotations

import numpy as np
import pytest

from components.contract import BOS, PAD
from components.errors import GruflowError
from components.lm.fit import load_embeddings, shuffle_documents, stream_dataset
from components.lm.windows import target_count


def test_stream_dataset_reads_streams_in_order_each_target_once():
    stream = np.arange(4, 4 + 50, dtype=np.int32)
    ds, steps, streams, n = stream_dataset(stream, 8, 4, epochs=2)
    assert n == stream.size - 1 and streams == 4 and steps == 2  # 4 streams of 13 targets
    batches = [tuple(np.asarray(t) for t in b) for b in ds]
    assert len(batches) == 2 * steps  # two epochs, the same batches in the same order
    for a, b in zip(batches[:steps], batches[steps:], strict=True):
        np.testing.assert_array_equal(a[0], b[0])
    xs, ys, ws = (np.stack(parts) for parts in zip(*batches[:steps], strict=True))  # (K, S, T)
    real = ws > 0
    assert sorted(ys[real].tolist()) == stream[1:].tolist()
    np.testing.assert_array_equal(ys[~real], PAD)
    # Batch k + 1 of a stream continues batch k: its first input is batch k's last target.
    np.testing.assert_array_equal(xs[1, :, 0], ys[0, :, -1])
    # A split shorter than batch_size windows becomes fewer, longer streams.
    assert stream_dataset(stream, 8, 64)[2] == 7


def test_carried_epochs_shuffle_whole_documents_reproducibly():
    docs = [[BOS, 4 + i, *range(4, 7 + i % 5), 3] for i in range(12)]  # <bos> … <eos>
    stream = np.concatenate(docs).astype(np.int32)
    a, b = shuffle_documents(stream, 0, 0), shuffle_documents(stream, 0, 1)
    np.testing.assert_array_equal(a, shuffle_documents(stream, 0, 0))  # keyed on (seed, epoch)
    assert not np.array_equal(a, b) and not np.array_equal(a, stream)

    def split(s):
        return sorted(tuple(d) for d in np.split(s, np.flatnonzero(s == BOS)[1:]))

    assert split(a) == split(b) == split(stream)  # whole documents, each once
    ds, steps, streams, n = stream_dataset(stream, 6, 3, epochs=2, seed=0)
    batches = [tuple(np.asarray(t) for t in batch) for batch in ds]
    assert len(batches) == 2 * steps
    for epoch in range(2):  # every target once per epoch, in that epoch's document order
        ys = np.stack([b[1] for b in batches[epoch * steps : (epoch + 1) * steps]])
        ws = np.stack([b[2] for b in batches[epoch * steps : (epoch + 1) * steps]])
        assert ws.sum() == n == target_count(stream)
        shuffled = shuffle_documents(stream, 0, epoch)
        np.testing.assert_array_equal(
            ys.transpose(1, 0, 2).reshape(streams, -1)[0][:5], shuffled[1:6]
        )
    resumed = [np.asarray(b[0]) for b in stream_dataset(stream, 6, 3, 2, seed=0, first_epoch=1)[0]]
    np.testing.assert_array_equal(np.stack(resumed), np.stack([b[0] for b in batches[steps:]]))


def test_load_embeddings_checks_the_shape_for_every_user(params, tmp_path):
    """train, tune trials and bench all load through this one check."""
    path = tmp_path / "emb.npy"
    np.save(path, np.zeros((40, params.model.embedding_dim + 1), np.float32))
    p = params.model_copy(
        update={
            "paths": params.paths.model_copy(update={"embeddings": str(path)}),
            "model": params.model.model_copy(update={"embedding_init": "word2vec"}),
        }
    )
    with pytest.raises(GruflowError, match=rf"{path}: shape .* does not match vocabulary 40"):
        load_embeddings(p, 40)
    random_init = p.model_copy(
        update={"model": p.model.model_copy(update={"embedding_init": "random"})}
    )
    assert load_embeddings(random_init, 40) is None
