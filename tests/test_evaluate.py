"""Stage `evaluate`, the count baselines and scoring, on the tiny project of tests/test_train.py
(module-scoped: trained once more here)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from components import evaluate
from components.contract import BOS, EOS, HEADLINE_KEYS, PAD, SPECIALS
from components.errors import GruflowError
from components.lm.inference import generate, score_texts, zero_states
from components.lm.model import build_model
from components.lm.windows import make_windows, read_stream, target_count, unigram_log_probs
from components.params import load_params
from tests.test_train import DOCS, ROOT, SEQ_LEN, TEXT, train_tiny_project, with_paths


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    yield from train_tiny_project(tmp_path_factory)


@pytest.fixture(scope="module")
def evaluated(trained):
    p, _, _ = trained
    return evaluate.run(p)


def test_evaluate_run_writes_metrics_and_beats_unigram(trained, evaluated):
    p, _, _ = trained
    m = evaluated
    saved = json.loads((Path(p.paths.reports) / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(m))
    # the DVC metrics file: the headline keys of metrics.json, same values (test_git_hygiene.py)
    head = json.loads((Path(p.paths.reports) / "headline.json").read_text())
    assert head == {k: saved[k] for k in HEADLINE_KEYS}
    for key in (
        "perplexity",
        "bits_per_byte",
        "token_accuracy",
        "baseline_perplexity",
        "bigram_perplexity",
    ):
        assert key in saved and math.isfinite(saved[key])
    tokens = Path(p.paths.tokens)
    test = read_stream(tokens / "test.parquet")
    n_bytes = pq.read_table(tokens / "test.parquet").column("n_bytes").to_pylist()
    assert saved["test_tokens"] == test.size - len(n_bytes)  # no <bos> is a target
    assert saved["test_bytes"] == sum(n_bytes) + len(n_bytes)
    nll = math.log(saved["perplexity"]) * saved["test_tokens"]
    assert saved["bits_per_byte"] == pytest.approx(
        nll / math.log(2) / saved["test_bytes"], rel=1e-6
    )
    n_docs = DOCS["test"][0]
    words = sum(len(TEXT[i % len(TEXT)].split()) for i in range(n_docs)) + n_docs
    assert saved["test_words"] == words
    assert saved["word_perplexity"] == pytest.approx(math.exp(nll / words), rel=1e-6)
    for name in ("baseline", "bigram"):  # the baselines' word figures: same NLL, per word
        base_nll = math.log(saved[f"{name}_perplexity"]) * saved["test_tokens"]
        assert saved[f"{name}_word_perplexity"] == pytest.approx(
            math.exp(base_nll / words), rel=1e-6
        )
    assert 0.0 <= saved["token_accuracy"] <= saved["top5_accuracy"] <= 1.0
    # The cycle is learnable: the model and the bigram both beat the unigram baseline.
    assert saved["perplexity"] < saved["baseline_perplexity"]
    assert saved["bigram_perplexity"] < saved["baseline_perplexity"]


def test_evaluate_uses_the_tuned_seq_len(trained, tmp_path):
    """Issue 16 (b): a tuned train.seq_len (artifacts/best_params.json) reaches evaluate, as it
    reaches train: windows of 6 tokens, so the last position bucket is 4-5, not 8-11."""
    p, _, _ = trained
    best = tmp_path / "best_params.json"
    best.write_text(json.dumps({"train.seq_len": 6}))
    tuned = with_paths(p, best_params=str(best), reports=str(tmp_path / "reports")).model_copy(
        update={"tune": p.tune.model_copy(update={"n_trials": 1, "space": {}})}
    )
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "train_history.csv").write_bytes(
        (Path(p.paths.reports) / "train_history.csv").read_bytes()
    )
    metrics = evaluate.run(tuned)
    assert list(metrics["loss_by_position"])[-1] == "4-5"


def test_evaluate_missing_model_raises(trained, tmp_path):
    p, _, _ = trained
    bad = with_paths(p, model=str(tmp_path / "nope.keras"), reports=str(tmp_path / "r"))
    with pytest.raises(GruflowError, match="nope.keras"):
        evaluate.run(bad)


def _witten_bell_table(train_stream: np.ndarray, vocab: int) -> np.ndarray:
    """P(w | v) for every (v, w), from bigram_log_probs one pair at a time."""
    table = np.zeros((vocab, vocab))
    for v in range(vocab):
        for w in range(vocab):
            lp = evaluate.bigram_log_probs(train_stream, np.array([v, w], np.int32), vocab)
            assert lp.shape == (1,)
            table[v, w] = math.exp(lp[0])
    return table


def test_bigram_log_probs_normalise_for_seen_and_unseen_contexts():
    vocab = 9
    train_stream = np.array([2, 4, 5, 4, 5, 4, 6, 7, 4, 5, 3, 8], np.int32)
    table = _witten_bell_table(train_stream, vocab)
    seen, unseen = 4, 1  # 4 is followed by 5, 5, 6, 5; 1 never occurs (8 only as last token)
    np.testing.assert_allclose(table.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(table[seen].sum(), 1.0, atol=1e-6)
    uni = np.exp(unigram_log_probs(train_stream, vocab).astype(np.float64))
    np.testing.assert_allclose(table[unseen], uni, rtol=1e-6)
    np.testing.assert_allclose(table[8], uni, rtol=1e-6)  # 8 is never a context
    # Witten-Bell by hand for context 4: c(4)=4, T(4)=2 distinct successors {5, 6}.
    np.testing.assert_allclose(table[seen, 5], (3 + 2 * uni[5]) / (4 + 2), rtol=1e-6)
    np.testing.assert_allclose(table[seen, 0], (0 + 2 * uni[0]) / (4 + 2), rtol=1e-6)
    assert table[seen, 5] > table[seen, 6] > uni[6]
    # A longer test stream gives one log-probability per transition, matching the table.
    test = np.array([4, 5, 4, 6, 1, 0, 8], np.int32)
    lp = evaluate.bigram_log_probs(train_stream, test, vocab)
    np.testing.assert_allclose(np.exp(lp), table[test[:-1], test[1:]], rtol=1e-6)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def tiny_model(vocab: int = 20, seed: int = 0, layers: int = 2):
    cfg = load_params(ROOT / "params.yaml").model.model_copy(
        update={"units": 8, "embedding_dim": 8, "gru_layers": layers, "dropout": 0.0}
    )
    keras.utils.set_random_seed(seed)
    return build_model(cfg, vocab)


def one_pass_logp(model, stream: np.ndarray, block: int) -> np.ndarray:
    """log p(stream[i+1] | stream[:i+1]) for every i, from ONE call of the model on the whole
    stream with attention limited to blocks of `block` (the computation that carried state
    across windows of `block` must equal)."""
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"].endswith("CausalAttention"):
            layer["config"]["block"] = block
    whole = keras.Model.from_config(config)
    whole.set_weights(model.get_weights())
    x = stream[None, :-1]
    logits = np.asarray(whole([x, *zero_states(whole, 1)], training=False)[0])[0]  # (n, V)
    return _log_softmax(logits)[np.arange(x.shape[1]), stream[1:]]


@pytest.mark.parametrize("streams", [1, 3])
def test_score_model_in_windows_equals_one_pass_per_stream(streams):
    """The evaluate stage reads the test stream in windows of T with the GRU state carried;
    the result equals one pass over each of its parallel streams within 1e-4 nats per token."""
    seq_len, vocab = 8, 20
    model = tiny_model(vocab)
    stream = np.random.default_rng(9).integers(4, vocab, size=61).astype(np.int32)
    stream[0] = BOS
    s = evaluate.score_model(model, stream, seq_len, batch_size=streams)
    L = -(-(stream.size - 1) // streams)  # target positions per stream
    expected = np.concatenate(
        [-one_pass_logp(model, stream[j * L : (j + 1) * L + 1], seq_len) for j in range(streams)]
    )
    assert s["tokens"] == stream.size - 1 == expected.size
    np.testing.assert_allclose(s["per_target_nll"], expected, atol=1e-4)
    assert abs(s["nll"] - expected.sum()) / s["tokens"] < 1e-4
    # Not vacuous: restarting every window cold (the old evaluation) gives other numbers.
    x, y, w = make_windows(stream, seq_len)
    cold = -_log_softmax(np.asarray(model([x, *zero_states(model, len(x))])[0]))
    cold = np.take_along_axis(cold, y[..., None], -1)[..., 0].reshape(-1)[: stream.size - 1]
    assert np.abs(cold - expected)[seq_len:].max() > 1e-3


def test_bos_is_never_a_target_and_eos_always_is():
    """Hand count on two documents <bos> 5 6 <eos> <bos> 7 <eos>: the targets are 5 6 <eos>
    7 <eos> (five), never the second <bos>; model and baselines are scored on exactly those."""
    vocab = 10
    stream = np.array([BOS, 5, 6, EOS, BOS, 7, EOS], np.int32)
    model = tiny_model(vocab, layers=1)
    s = evaluate.score_model(model, stream, seq_len=4, batch_size=1)
    logp = one_pass_logp(model, stream, 4)  # one value per position, target stream[i + 1]
    is_target = np.array([1, 1, 1, 0, 1, 1], bool)  # position 3 predicts the <bos>
    assert s["tokens"] == 5 == target_count(stream)
    assert s["nll"] == pytest.approx(-logp[is_target].sum(), abs=5e-4)
    np.testing.assert_array_equal(s["per_target_weight"], is_target.astype(np.float32))
    # The unigram baseline: add-one over the train targets, <bos> never counted.
    train = np.array([BOS, 5, 5, EOS, BOS, 6, EOS], np.int32)  # targets 5 5 <eos> 6 <eos>
    p = {5: 3 / 15, 6: 2 / 15, 7: 1 / 15, EOS: 3 / 15}  # (count + 1) / (5 + 10)
    expected = -sum(math.log(p[t]) for t in (5, 6, EOS, 7, EOS))
    assert evaluate.baseline_nll(train, stream, vocab)["unigram"] == pytest.approx(expected)
    bigram = evaluate.bigram_log_probs(train, stream, vocab)
    assert evaluate.baseline_nll(train, stream, vocab)["bigram"] == pytest.approx(
        -bigram[is_target].sum()
    )


def test_count_words_adds_one_end_per_document():
    assert evaluate.count_words(["a b  c", "d\ne"]) == 3 + 2 + 2


def test_score_texts_carries_state_across_windows(trained):
    """The pyfunc's `score` (and `gruflow score`): a text longer than seq_len equals one pass
    over the whole text; texts scored side by side do not affect each other."""
    p, vocab, _ = trained
    tok = Tokenizer.from_file(p.paths.tokenizer)
    model = tiny_model(vocab)
    texts = [" ".join(TEXT[:4]), TEXT[1]]
    ids = [
        np.array([BOS, *tok.encode(t, add_special_tokens=False).ids, EOS], np.int32) for t in texts
    ]
    assert ids[0].size > 3 * SEQ_LEN
    rows = score_texts(model, tok, texts, SEQ_LEN, batch_size=2)
    for row, doc in zip(rows, ids, strict=True):
        expected = -one_pass_logp(model, doc, SEQ_LEN).sum()
        assert row["tokens"] == doc.size - 1
        assert abs(row["nll"] - expected) / row["tokens"] < 1e-4
    alone = score_texts(model, tok, texts[1:], SEQ_LEN)
    assert alone[0]["nll"] == pytest.approx(rows[1]["nll"], rel=1e-6)


def test_make_windows_weights_zero_on_padding_and_bos_targets():
    x, y, w = make_windows(np.arange(4, 4 + 21, dtype=np.int32), 6)
    assert x.shape == (4, 6) and w.sum() == 20
    assert (y[w == 0] == PAD).all()
    x, y, w = make_windows(np.array([BOS, 5, EOS, BOS, 6, EOS], np.int32), 6)
    assert w.tolist() == [[1, 1, 0, 1, 1, 0]]  # <bos> target and the padded slot


def test_generate_reads_blocks_with_state_carried(trained):
    """Greedy generation past seq_len: finished blocks pass on their GRU state, attention sees
    the current block — the same tokens as greedy steps of one pass with block attention."""
    p, vocab, _ = trained
    tok = Tokenizer.from_file(p.paths.tokenizer)
    model = tiny_model(vocab, seed=3)
    kernel, bias = model.get_layer("logits").get_weights()
    bias[: len(SPECIALS)] = -30.0  # no special token: the continuation runs its full length
    model.get_layer("logits").set_weights([kernel, bias])
    prompt, n = "the parser reads", 2 * SEQ_LEN + 5
    ids = [BOS, *tok.encode(prompt, add_special_tokens=False).ids]
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"].endswith("CausalAttention"):
            layer["config"]["block"] = SEQ_LEN
    whole = keras.Model.from_config(config)
    whole.set_weights(model.get_weights())
    for _ in range(n):
        x = np.array([ids], np.int32)
        ids.append(int(np.argmax(np.asarray(whole([x, *zero_states(whole, 1)])[0])[0, -1])))
    got = generate(model, tok, prompt, n, 0.0, 0, 0, SEQ_LEN)
    assert got == tok.decode(ids[-n:])
    assert len(ids) > 2 * SEQ_LEN  # the text spans three blocks


def test_cache_adds_keys_and_leaves_the_static_metrics_byte_identical(trained, evaluated, tmp_path):
    """evaluate.cache on: `perplexity_cache`, `word_perplexity_cache`, `bits_per_byte_cache`,
    the θ/λ chosen on val; every static key byte for byte what evaluate writes without it."""
    p, _, _ = trained
    reports = tmp_path / "reports"
    shutil.copytree(p.paths.reports, reports)
    cache = p.evaluate.cache.model_copy(
        update={"size": 200, "thetas": [0.3, 1.0], "lambdas": [0.05, 0.2]}
    )
    on = with_paths(p, reports=str(reports)).model_copy(
        update={"evaluate": p.evaluate.model_copy(update={"cache": cache})}
    )
    assert p.evaluate.cache.size == 0 or evaluated.get("cache_size") == p.evaluate.cache.size
    m = evaluate.run(on)
    extra = {
        "perplexity_cache",
        "word_perplexity_cache",
        "bits_per_byte_cache",
        "val_perplexity_cache",
        "cache_size",
        "cache_theta",
        "cache_lambda",
    }
    static = {k: v for k, v in evaluated.items() if k not in extra}
    assert json.dumps({k: m[k] for k in static}, sort_keys=True) == json.dumps(
        static, sort_keys=True
    )
    assert set(m) - set(static) == extra
    assert m["cache_size"] == 200 and m["cache_theta"] in (0.3, 1.0)
    assert m["cache_lambda"] in (0.05, 0.2)
    nll = math.log(m["perplexity_cache"]) * m["test_tokens"]  # same targets and denominators
    assert m["bits_per_byte_cache"] == pytest.approx(nll / math.log(2) / m["test_bytes"])
    assert m["word_perplexity_cache"] == pytest.approx(math.exp(nll / m["test_words"]))
    saved = json.loads((reports / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(m))
