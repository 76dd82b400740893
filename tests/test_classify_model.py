"""The classifier model: attention pooling (shape, masking, config round trip), the encoder
copied from an LM by layer name, freezing, save/load."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from components.classify.model import (
    AttentionPooling,
    MeanMaxPooling,
    build_classifier,
    lm_encoder_shape,
    set_encoder_trainable,
    transfer_encoder,
)
from components.lm.model import build_model


@pytest.fixture(scope="module")
def lm(params):
    keras.utils.set_random_seed(0)
    cfg = params.model.model_copy(
        update={"units": 8, "embedding_dim": 6, "gru_layers": 2, "embedding_init": "random"}
    )
    return build_model(cfg, 40)


def test_pooling_ignores_masked_positions_and_round_trips():
    layer = AttentionPooling(4)
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    out = np.asarray(layer(x, mask=mask))
    assert out.shape == (2, 3)
    x2 = x.copy()
    x2[0, 3:] = 99.0  # changing masked states changes nothing
    np.testing.assert_allclose(np.asarray(layer(x2, mask=mask))[0], out[0], rtol=1e-6)
    again = AttentionPooling.from_config(layer.get_config())
    assert again.units == 4


def test_mean_max_pooling_counts_only_real_tokens():
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    x[0, 3:] = 99.0  # padding: would win the max and move the mean if counted
    out = np.asarray(MeanMaxPooling()(x, mask=mask))
    assert out.shape == (2, 6)
    np.testing.assert_allclose(out[0], np.concatenate([x[0, :3].mean(0), x[0, :3].max(0)]), 1e-6)
    np.testing.assert_allclose(out[1], np.concatenate([x[1].mean(0), x[1].max(0)]), 1e-6)


def test_concat_pooling_feeds_the_head_three_views_and_round_trips(tmp_path, lm):
    """finetune.pooling concat: attention ‖ mean ‖ max (3H) into the head; saved and loaded."""
    clf = build_classifier(lm_encoder_shape(lm), 3, pooling="concat")
    assert clf.get_layer("head").kernel.shape == (3 * 8, 3)
    x = np.array([[2, 5, 7, 3, 0, 0]], np.int32)
    before = np.asarray(clf.predict(x, verbose=0))
    clf.save(tmp_path / "c.keras")
    again = keras.saving.load_model(tmp_path / "c.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(again.predict(x, verbose=0)), before, rtol=1e-5)
    longer = np.concatenate([x, np.zeros((1, 3), np.int32)], axis=1)  # more padding, same answer
    np.testing.assert_allclose(np.asarray(clf.predict(longer, verbose=0)), before, atol=1e-5)


def test_encoder_shape_and_weights_come_from_the_lm(lm):
    shape = lm_encoder_shape(lm)
    assert (shape.vocab_size, shape.embedding_dim, shape.units, shape.gru_layers) == (40, 6, 8, 2)
    clf = build_classifier(shape, 3)
    transfer_encoder(clf, lm)
    np.testing.assert_array_equal(
        np.asarray(clf.get_layer("embedding").embeddings),
        np.asarray(lm.get_layer("embedding").embeddings),
    )
    for name in ("gru_0", "gru_1"):
        for a, b in zip(
            clf.get_layer(name).get_weights(), lm.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(a, b)


def test_freezing_leaves_only_the_head_and_pooling_trainable(lm):
    clf = build_classifier(lm_encoder_shape(lm), 3)
    set_encoder_trainable(clf, False)
    names = {w.path.split("/")[0] for w in clf.trainable_weights}
    assert names == {"pooling", "head"}
    set_encoder_trainable(clf, True)
    assert any(w.path.startswith("gru_0") for w in clf.trainable_weights)


def test_classifier_saves_and_loads(tmp_path, lm):
    clf = build_classifier(lm_encoder_shape(lm), 3)
    x = np.array([[2, 5, 7, 3, 0, 0]], np.int32)
    before = np.asarray(clf.predict(x, verbose=0))
    clf.save(tmp_path / "c.keras")
    again = keras.saving.load_model(tmp_path / "c.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(again.predict(x, verbose=0)), before, rtol=1e-5)
    assert before.shape == (1, 3) and before.sum() == pytest.approx(1.0, abs=1e-5)


def test_a_masked_lms_bidirectional_encoder_transfers_and_round_trips(params, tmp_path):
    """finetune.encoder pretrained on a masked LM (train.objective masked): the classifier's
    GRUs are bidirectional like the LM's, its weights copied and saved."""
    from components.lm.masked import build_masked_model

    keras.utils.set_random_seed(0)
    cfg = params.model.model_copy(
        update={"units": 8, "embedding_dim": 6, "gru_layers": 2, "embedding_init": "random"}
    )
    mlm = build_masked_model(cfg, 40)
    shape = lm_encoder_shape(mlm)
    assert shape.bidirectional and (shape.units, shape.gru_layers) == (8, 2)
    clf = build_classifier(shape, 3)
    transfer_encoder(clf, mlm)
    for name in ("gru_0", "gru_1"):
        got, want = clf.get_layer(name).get_weights(), mlm.get_layer(name).get_weights()
        assert len(got) == len(want) == 6  # forward + backward kernels and biases
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    ids = np.array([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]], np.int32)
    probs = np.asarray(clf(ids))
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    clf.save(tmp_path / "clf.keras")
    again = keras.saving.load_model(tmp_path / "clf.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(again(ids)), probs, rtol=1e-5)
