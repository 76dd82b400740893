"""The finetune stage: labelled data (built-in task, user tables), splits, the one-line errors,
the off switch, and the stage end to end on a tiny labelled set (metrics, baselines, plot)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from components.classify import data as cdata
from components.classify.scores import majority, scores
from components.errors import GruflowError
from tests import tiny_labelled

ROOT = Path(__file__).resolve().parents[1]


def test_builtin_task_labels_come_from_the_package_a_docstring_lives_in():
    docs = list(cdata.builtin_task())
    counts = Counter(d.label for d in docs)
    assert set(counts) == set(cdata.BUILTIN_AREAS.values())
    assert min(counts.values()) >= 50  # every class has enough examples to learn and test
    for doc in docs:
        package = doc.group.removeprefix("stdlib:").split("/")[0]
        assert cdata.BUILTIN_AREAS[package] == doc.label
    assert max(Counter(d.group for d in docs).values()) <= cdata.BUILTIN_PER_MODULE


def test_stratified_split_keeps_modules_together_and_every_class_in_every_split(params):
    docs = list(cdata.builtin_task())
    splits = cdata.stratified_split(docs, params.finetune)
    by_group: dict[str, set[str]] = {}
    for doc, split in zip(docs, splits, strict=True):
        by_group.setdefault(doc.group, set()).add(split)
    assert all(len(s) == 1 for s in by_group.values())  # one module, one split
    for label in set(cdata.BUILTIN_AREAS.values()):
        mine = Counter(s for d, s in zip(docs, splits, strict=True) if d.label == label)
        assert set(mine) == {"train", "val", "test"}, (label, mine)
        assert mine["train"] > mine["test"]
    assert splits == cdata.stratified_split(docs, params.finetune)  # stable


def test_hashed_split_is_stratified_for_a_user_table(params):
    docs = [
        cdata.Labelled(r["text"] + str(i), r["label"], str(i))
        for i, r in enumerate(tiny_labelled.rows(50))
    ]
    splits = cdata.stratified_split(docs, params.finetune)
    for label in ("pos", "neg"):
        mine = Counter(s for d, s in zip(docs, splits, strict=True) if d.label == label)
        # 20 % and 15 % of 50 (one document either way: a group is never cut)
        assert abs(mine["test"] - 10) <= 1 and abs(mine["val"] - 7.5) <= 1, mine


def test_source_split_column_is_kept_and_val_carved_from_train(params):
    docs = [
        cdata.Labelled(f"t{i}", "ab"[i % 2], f"g{i}", "test" if i < 10 else "train")
        for i in range(60)
    ]
    splits = cdata.assign_splits(docs, params.finetune)
    assert splits[:10] == ["test"] * 10
    assert set(splits[10:]) == {"train", "val"}


def test_clean_rules_are_the_clean_stages(params):
    texts, counts = cdata.clean_texts(["<b>mail</b> me at a.b@example.com  now"], params.clean)
    assert texts == ["mail me at <email> now"]
    assert counts["masked_email"] == 1 and counts["html_tags_removed"] == 2


def test_metrics_and_majority_baseline():
    assert majority(["a", "b", "b"], 3) == ["b", "b", "b"]
    s = scores(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b"], per_class=True)
    assert s["accuracy"] == 0.75
    assert s["per_class"]["a"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }
    assert s["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


# --- the one-line errors (raised before TensorFlow loads) ---------------------------------


def _run_stage(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "components.finetune"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def _expect_error(tmp_path, records, expected: str) -> None:
    proj = tiny_labelled.project(tmp_path, records=records)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = _run_stage(tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gruflow: error: "), out.stderr
    assert expected in lines[0]
    assert str(proj["params"].finetune.source) in lines[0] or "labelled.jsonl" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_missing_label_column_is_one_line(tmp_path):
    rows = [{"text": r["text"], "sentiment": r["label"]} for r in tiny_labelled.rows(10)]
    _expect_error(tmp_path, rows, "no column 'label'")


def test_single_class_is_one_line(tmp_path):
    _expect_error(tmp_path, tiny_labelled.rows(20, labels=("pos",)), "single class ['pos']")


def test_label_unseen_in_train_is_one_line(tmp_path):
    rows = [{**r, "split": "train"} for r in tiny_labelled.rows(20)]
    rows += [{**r, "split": "test"} for r in tiny_labelled.rows(3, labels=("pos", "meh"))]
    rows += [{**r, "split": "val"} for r in tiny_labelled.rows(3)]
    _expect_error(tmp_path, rows, "label 'meh' in test never occurs in train")


def test_off_stage_writes_a_small_report_without_tensorflow(tmp_path):
    proj = tiny_labelled.project(tmp_path, source="")
    code = (
        "import sys, runpy; sys.argv=['finetune']; "
        "runpy.run_module('components.finetune', run_name='__main__');"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    p = proj["params"]
    assert json.loads((Path(p.paths.reports) / "finetune.json").read_text())["enabled"] is False
    assert (Path(p.paths.classifier) / "off.json").is_file()
    png = Path(p.paths.reports) / "plots" / "finetune_confusion.png"
    assert png.read_bytes().startswith(b"\x89PNG")


# --- end to end on a tiny labelled set -------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The stage run once on a three-class tiny task (pretrained + scratch + baselines)."""
    root = tmp_path_factory.mktemp("finetune")
    proj = tiny_labelled.project(root, records=tiny_labelled.rows(30, ("pos", "neg", "meh")))
    out = _run_stage(root)
    assert out.returncode == 0, out.stderr
    return proj


@pytest.mark.slow
def test_report_holds_every_model_with_sane_numbers(trained):
    p = trained["params"]
    report = json.loads((Path(p.paths.reports) / "finetune.json").read_text())
    models = report["models"]
    assert set(models) == {"pretrained", "scratch", "majority", "tfidf_logreg"}
    for m in models.values():
        assert 0.0 <= m["macro_f1"] <= m["accuracy"] + 1e-9 or 0.0 <= m["macro_f1"] <= 1.0
        assert 0.0 <= m["accuracy"] <= 1.0
    counts = report["label_counts"]["test"]
    assert models["majority"]["accuracy"] == pytest.approx(
        max(counts.values()) / sum(counts.values())
    )
    assert models["majority"]["macro_f1"] < 0.34  # one class right of three
    assert models["tfidf_logreg"]["macro_f1"] > 0.9  # the words give the label away
    assert models["scratch"]["macro_f1"] > models["majority"]["macro_f1"]
    for kind in ("pretrained", "scratch"):
        assert set(models[kind]["per_class"]) == {"pos", "neg", "meh"}
        assert sum(map(sum, models[kind]["confusion"])) == sum(counts.values())
    assert report["lm_model_md5"] and report["classes"] == ["meh", "neg", "pos"]
    plot = Path(p.paths.reports) / "plots" / "finetune_confusion.png"
    assert plot.stat().st_size > 1000
    folder = Path(p.paths.classifier)
    assert {f.name for f in folder.iterdir()} == {"classifier.keras", "labels.json", "test.parquet"}


@pytest.mark.slow
def test_classifier_round_trips_and_reuses_the_lm_encoder(trained):
    import keras
    import numpy as np

    from components.classify import model as _layers  # noqa: F401  (registers the pooling)
    from components.finetune import load_lm

    p = trained["params"]
    clf = keras.saving.load_model(Path(p.paths.classifier) / "classifier.keras", safe_mode=True)
    lm = load_lm(Path(p.paths.model))
    shape = lm.get_layer("embedding").embeddings.shape
    assert clf.get_layer("embedding").embeddings.shape == shape
    x = np.array([[2, 10, 11, 3, 0, 0]], np.int32)
    probs = np.asarray(clf.predict(x, verbose=0))
    assert probs.shape == (1, 3) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    # padding is ignored: the same text with more <pad> gets the same probabilities
    longer = np.concatenate([x, np.zeros((1, 4), np.int32)], axis=1)
    np.testing.assert_allclose(clf.predict(longer, verbose=0), probs, atol=1e-5)


def test_unknown_text_column_in_user_source(tmp_path, params):
    src = tiny_labelled.write_jsonl(tmp_path / "x.jsonl", [{"body": "a b c", "label": "x"}])
    cfg = params.finetune.model_copy(update={"source": str(src)})
    with pytest.raises(GruflowError):
        cdata.labelled_documents(cfg, Counter())
