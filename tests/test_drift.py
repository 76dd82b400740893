"""components/drift.py on hand-checkable inputs: Jensen-Shannon divergence, bits per byte,
the <unk>/byte-fallback share under a real byte-level tokenizer, sampling, the policy's
decision; and the one-line error of a bad retrain threshold in params.yaml."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components import drift
from components.errors import GruflowError
from components.params import load_params

ROOT = Path(__file__).resolve().parents[1]


# --- the numbers ------------------------------------------------------------------------------


def test_js_divergence_hand_checked():
    assert drift.js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)  # disjoint: 1 bit
    assert drift.js_divergence([3, 5, 2], [6, 10, 4]) == pytest.approx(0.0)  # same shape
    # p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4);
    # KL(p||m) = log2(4/3); KL(q||m) = 1/2 log2(2/3) + 1/2 log2(2)
    expected = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(2 / 3) + 0.5)
    assert drift.js_divergence([2, 0], [1, 1]) == pytest.approx(expected)  # ≈ 0.3113
    assert drift.js_divergence([2, 0], [1, 1]) == pytest.approx(drift.js_divergence([1, 1], [2, 0]))


def test_js_divergence_refuses_empty_or_mismatched():
    with pytest.raises(ValueError, match="non-empty"):
        drift.js_divergence([0, 0], [1, 1])
    with pytest.raises(ValueError, match="one shape"):
        drift.js_divergence([1, 1], [1, 1, 1])


def test_token_counts_and_bits_per_byte():
    counts = drift.token_counts([[0, 1, 1], [], [3]], 5)
    assert counts.tolist() == [1, 2, 0, 1, 0]
    # 2 documents: ln(2)*8 nats over 4 bytes + ln(2)*4 nats over 4 bytes = 12 bits / 8 bytes
    ln2 = math.log(2)
    assert drift.bits_per_byte([8 * ln2, 4 * ln2], [4, 4]) == pytest.approx(1.5)
    assert math.isnan(drift.bits_per_byte([], []))


def test_fallback_share_under_a_byte_level_tokenizer(params):
    """A BPE tokenizer trained on English emits lone bytes 0x80-0xFF only for characters it
    learned nothing about: 'é' appears in training, 'ж' (2 bytes) and '字' (3) do not."""
    from components.tokenize import train_tokenizer

    cfg = params.tokenize.model_copy(update={"vocab_size": 300, "min_frequency": 1})
    tok = train_tokenizer(iter(["the cat sat on the mat café"] * 50), cfg)
    fallback = drift.fallback_ids(tok.get_vocab())
    assert drift.UNK in fallback and len(fallback) >= 128
    ids = [e.ids for e in tok.encode_batch(["the cat", "жж", "字"], add_special_tokens=False)]
    hit, total = drift.fallback_share(ids, fallback)
    # "жж": 4 lone bytes; "字": 3; "the cat" none (at least its 2 words or pieces of them)
    assert hit == 7 and total == 7 + len(ids[0])
    assert drift.fallback_share([ids[0]], fallback)[0] == 0


def test_pick_takes_whole_documents_lowest_id_first():
    ids, sizes = ["c", "a", "b", "d"], [10, 10, 10, 10]
    assert drift.pick(ids, sizes, 25) == [1, 2]  # "a", "b"; "c" would pass 25 bytes
    assert drift.pick(ids, sizes, 1) == [1]  # at least one document
    assert drift.pick([], [], 100) == []


def _report(ratio=1.0, rise=0.0, js=0.01) -> dict:
    new = [{"doc_id": "a", "bits_per_byte": ratio, "nll": ratio * 10 * math.log(2), "bytes": 10}]
    old = [{"doc_id": "b", "bits_per_byte": 1.0, "nll": 10 * math.log(2), "bytes": 10}]
    return drift.build_report(
        {"new": 1, "new_scored": 1}, new, old, (int(rise * 100), 100), (0, 100), js, {}
    )


def test_build_report_ratio_and_rise():
    r = _report(ratio=1.5, rise=0.03, js=0.2)
    assert r["bits_per_byte"]["new"] == pytest.approx(1.5)
    assert r["bits_per_byte"]["ratio"] == pytest.approx(1.5)
    assert r["fallback_rate"]["rise"] == pytest.approx(0.03)
    assert r["js_divergence"] == 0.2
    empty = drift.build_report({"new": 0}, [], [], (0, 0), (0, 10), None, {})
    assert empty["bits_per_byte"]["ratio"] is None and empty["fallback_rate"]["rise"] is None


def test_decide_each_policy_and_threshold(params):
    cfg = params.retrain.model_copy(update={"policy": "on_drift", "max_age_days": 30.0})
    quiet = _report()
    assert drift.decide(cfg, quiet, 1.0, "changed") == drift.Decision(False, "no drift", {})
    for kwargs, name in (
        (dict(ratio=1.5), "bpb_ratio"),
        (dict(rise=0.05), "fallback_rate"),
        (dict(js=0.9), "js_divergence"),
    ):
        d = drift.decide(cfg, _report(**kwargs), 1.0, "changed")
        assert d.retrain and list(d.crossed) == [name] and d.reason.startswith("drift: " + name)
    old = drift.decide(cfg, quiet, 45.0, "changed")
    assert old.retrain and "45.0 days old > retrain.max_age_days 30" in old.reason
    off = cfg.model_copy(update={"max_age_days": 0.0})
    assert not drift.decide(off, quiet, 4000.0, "changed").retrain  # 0 = no age limit
    checks_off = cfg.model_copy(update={"drift": cfg.drift.model_copy(update={"bpb_ratio": 0.0})})
    assert not drift.decide(checks_off, _report(ratio=9.0), 1.0, "changed").retrain
    assert drift.decide(cfg, {"unavailable": "no champion"}, None, "x").retrain
    assert (
        drift.decide(cfg, None, None, "x").reason
        == "policy on_drift: no champion to measure drift against"
    )
    for policy in ("always", "on_change"):
        d = drift.decide(cfg.model_copy(update={"policy": policy}), quiet, 1.0, "data changed")
        assert d.retrain and d.reason == f"policy {policy}: data changed"


def test_histogram_and_plots():
    rows = drift.histogram([1.0, 1.0, 3.0], [1.0, 2.0], bins=2)
    assert rows == [
        {"lo": 1.0, "hi": 2.0, "new": 2, "old": 1},
        {"lo": 2.0, "hi": 3.0, "new": 1, "old": 1},
    ]
    table = drift.markdown_plot(rows, width=6)
    assert "| 1.00–2.00 | ████ 2 | ░░░ 1 |" in table
    svg = drift.svg_plot(rows, "t")
    assert svg.startswith("<svg") and svg.count("<rect") == 1 + 2 * len(rows)
    assert drift.histogram([], []) == [] and "no documents" in drift.markdown_plot([])


# --- params ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("retrain.drift.js_divergence", 1.5, "'retrain.drift.js_divergence'"),
        ("retrain.drift.bpb_ratio", -1, "'retrain.drift.bpb_ratio'"),
        ("retrain.policy", "sometimes", "'retrain.policy'"),
        ("retrain.max_age_days", "soon", "'retrain.max_age_days'"),
    ],
)
def test_bad_retrain_param_names_the_key(tmp_path, key, value, words):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    section = raw
    *parents, last = key.split(".")
    for p in parents:
        section = section[p]
    section[last] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(GruflowError, match=words):
        load_params(path)


def test_bad_threshold_fails_the_cli_in_one_line(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["retrain"]["drift"]["fallback_rate"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    out = subprocess.run(
        [str(Path(sys.executable).parent / "gruflow"), "retrain", "--project", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "'retrain.drift.fallback_rate'" in lines[0], out.stderr
    # nothing created but the error log (.gruflow/logs): no store, no lock, no report
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gruflow", "params.yaml"]


def test_history_renders_retrain_decisions():
    from flows import retrain_history

    rows = [
        {
            "time": "2026-01-01T00:00:00+00:00",
            "retrain": "skipped",
            "policy": "on_drift",
            "reason": "no drift",
            "metrics": {"drift.bpb_ratio": 1.02, "drift.js_divergence": 0.05},
            "run_id": "r",
        }
    ]
    text = retrain_history.render(rows)
    assert "skipped" in text and "bpb ratio 1.020, JS 0.050 — no drift" in text
    assert retrain_history.render([]) == "retrain decisions: none recorded yet"


def test_artifact_markdown_shows_decision_numbers_and_plot():
    from flows import drift_check

    report = _report(ratio=1.5, js=0.3) | {
        "champion": "3",
        "age_days": 2.5,
        "data_profile": {"moved": {"script_mix": 0.01}, "limits": {}, "against": "x"},
    }
    decision = drift.Decision(True, "drift: bpb_ratio 1.5 > 1.2", {"bpb_ratio": (1.5, 1.2)})
    text = drift_check.markdown(report, decision, "on_drift")
    assert text.startswith("## Drift (policy on_drift): train — drift: bpb_ratio 1.5 > 1.2")
    assert "| champion | version 3, 2.5 days old |" in text
    assert "(ratio 1.5000)" in text and "| JS divergence new vs old train tokens | 0.3000 |" in text
    assert "script_mix 0.010" in text and "| bits/byte | new documents |" in text
    assert drift_check._flat(report)["drift.bpb_ratio"] == pytest.approx(1.5)
    off = drift_check.markdown(
        {"unavailable": "no champion"}, drift.Decision(True, "x", {}), "on_drift"
    )
    assert "Not measured: no champion." in off


def test_lineage_read_from_the_dvc_cache_or_a_clear_reason(tmp_path):
    """The champion's clean splits come from the local DVC cache by its dvc.data/clean tag;
    a missing tag or cache entry is a LookupError saying what to do."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from dvc.repo import Repo

    from flows import drift_check

    Repo.init(str(tmp_path), no_scm=True)
    clean = tmp_path / "data" / "clean"
    clean.mkdir(parents=True)
    for i, split in enumerate(("train", "val", "test")):
        pq.write_table(
            pa.table({"doc_id": [f"d{i}"], "text": [f"text {split}"]}), clean / f"{split}.parquet"
        )
    with Repo(str(tmp_path)) as repo:
        repo.add(str(clean))
    md5 = yaml.safe_load((tmp_path / "data" / "clean.dvc").read_text())["outs"][0]["md5"]
    splits = drift_check.lineage_splits(tmp_path, {"dvc.data/clean": md5}, "data/clean")
    assert splits["test"].column("text").to_pylist() == ["text test"]
    with pytest.raises(LookupError, match="no dvc.data/clean tag"):
        drift_check.lineage_splits(tmp_path, {}, "data/clean")
    with pytest.raises(LookupError, match="not in the local DVC cache — `dvc pull` it"):
        drift_check.lineage_splits(tmp_path, {"dvc.data/clean": "0" * 32 + ".dir"}, "data/clean")


def test_champion_age_comes_from_the_registry(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from flows import drift_check

    monkeypatch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    client.create_registered_model("m")
    version = client.create_model_version("m", str(tmp_path), run_id=None).version
    assert 0 <= drift_check.age_days("m", str(version)) < 1 / 24  # created just now


def test_on_drift_trains_when_params_or_code_changed_too(params):
    from flows.drift_check import other_changes

    outs = ["data/raw", "data/clean", "data/tokens"]
    only_data = {
        "clean": [{"changed deps": {"data/raw": "modified"}}],
        "embed": [{"changed deps": {"data/tokens/train.parquet": "modified"}}],
    }
    assert other_changes(only_data, outs) == []
    mixed = {
        "clean": [{"changed deps": {"data/raw": "modified", "components/clean.py": "modified"}}],
        "train": [{"changed deps": {"params.yaml": {"train.epochs": "modified"}}}],
        "tune": ["always changed"],
        "eval": [{"changed outs": {"x": "deleted"}}],
    }
    assert other_changes(mixed, outs) == [
        "clean: components/clean.py",
        "train: params.yaml",
        "tune: always changed",
        "eval: changed outs",
    ]
    cfg = params.retrain.model_copy(update={"policy": "on_drift"})
    d = drift.decide(cfg, _report(), 1.0, "changed", ["train: params.yaml"])
    assert (
        d.retrain and d.reason == "policy on_drift: not only new data changed (train: params.yaml)"
    )


def test_a_masked_champion_is_scored_as_a_masked_lm():
    """A masked champion reads both sides: scored as a causal LM (next token at each position)
    its bits/byte mean nothing. Drift scores it under the fixed evaluation mask instead:
    masked NLL over the document's bytes, the same measure on the new and the old side."""
    from types import SimpleNamespace

    import keras
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from components.contract import SPECIALS, text_bytes
    from components.lm.masked import build_masked_model
    from components.lm.masked_inference import score_masked_texts
    from flows import drift_check

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    text = "the parser reads the header and returns a list of names"
    tok.train_from_iterator(
        [text] * 20, trainers.BpeTrainer(vocab_size=60, special_tokens=list(SPECIALS))
    )
    keras.utils.set_random_seed(0)
    cfg = load_params(ROOT / "params.yaml").model.model_copy(
        update={"units": 8, "embedding_dim": 8, "embedding_init": "random"}
    )
    lm = SimpleNamespace(
        model=build_masked_model(cfg, tok.get_vocab_size()),
        tokenizer=tok,
        seq_len=16,
        objective="masked",
    )
    texts = [text, "returns the names of the header"]
    rows = drift_check._scores(lm, ["a", "b"], texts)
    want = score_masked_texts(lm.model, tok, texts, 16)
    for row, w, t in zip(rows, want, texts, strict=True):
        assert row["nll"] == pytest.approx(w["nll"]) and row["bytes"] == text_bytes(t)
        assert row["bits_per_byte"] == pytest.approx(w["nll"] / math.log(2) / text_bytes(t))
