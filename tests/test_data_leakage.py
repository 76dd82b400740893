"""No leakage between splits: near-duplicates share a split whatever the input order, the
test/train overlap is measured and gated (hashed split) or reported (the source's own split),
and de-duplication never drops a document from a split the source gave for val or test."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components import clean, ingest
from components.contract import SPLITS
from components.data.near_dup import jaccard
from components.errors import GruflowError
from components.params import Params

WORDS = [f"w{i}" for i in range(400)]


def doc(rng: random.Random, n: int = 40) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def near_copy(text: str, rng: random.Random) -> str:
    words = text.split()
    words[rng.randrange(len(words))] = "changed"  # one word of 40: Jaccard of 5-grams ~0.85
    return " ".join(words)


def write_raw(root: Path, texts: list[str], given: list[str | None] | None = None) -> None:
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    columns = {
        "doc_id": [ingest.doc_id(t) for t in texts],
        "text": texts,
        "source": ["t"] * len(texts),
    }
    if given is not None:
        columns["split"] = pa.array(given, pa.string())
    pq.write_table(pa.table(columns), raw / "corpus.parquet")


def run_clean(
    params: Params, root: Path, texts: list[str], given=None, clean_update=None, **split_update
) -> dict:
    write_raw(root, texts, given)
    cfg = params.clean.model_copy(
        update={"min_chars": 5, "min_words": 1, "min_documents": 1, **(clean_update or {})}
    )
    split = params.split.model_copy(
        update={"val_fraction": 0.2, "test_fraction": 0.2, **split_update}
    )
    return clean.run(cfg, split, root / "raw", root / "clean", root / "clean.json")


def splits_of(root: Path) -> dict[str, str]:
    return {
        r["text"]: r["split"]
        for s in SPLITS
        for r in pq.read_table(root / "clean" / f"{s}.parquet").to_pylist()
    }


def corpus_with_near_copies(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    base = [doc(rng) for _ in range(150)]
    return base + [near_copy(t, rng) for t in base[:60]]


def test_near_duplicates_share_a_split_whatever_the_order(params, tmp_path):
    texts = corpus_with_near_copies()
    summary = run_clean(params, tmp_path / "a", texts)
    got = splits_of(tmp_path / "a")
    assert len(got) == len(texts)  # dedup exact keeps near copies
    pairs = [
        (a, b) for i, a in enumerate(texts) for b in texts[i + 1 :] if jaccard(a, b, 5) >= 0.8
    ]  # brute force, exact Jaccard: the definition
    assert len(pairs) >= 60
    assert all(got[a] == got[b] for a, b in pairs)
    assert len({got[a] for a, _ in pairs}) == 3  # clusters are spread over the splits
    overlap = summary["test_train_overlap"]
    assert overlap["near"]["documents"] == overlap["exact"]["documents"] == 0
    assert overlap["enforced"] is True

    shuffled = texts[:]
    random.Random(1).shuffle(shuffled)
    run_clean(params, tmp_path / "b", shuffled)
    assert splits_of(tmp_path / "b") == got  # the split does not depend on file order


def test_hashed_split_without_grouping_leaks_and_the_gate_stops(params, tmp_path):
    texts = corpus_with_near_copies()
    run_clean(params, tmp_path, texts)
    before = {p.name: p.read_bytes() for p in (tmp_path / "clean").iterdir()}
    report = (tmp_path / "clean.json").read_text()
    with pytest.raises(
        GruflowError,
        match=r"test documents \(.*\) have a near duplicate in "
        r"train, above split.max_test_train_overlap=0.01",
    ) as info:
        run_clean(params, tmp_path, texts, group_near_duplicates=False)
    assert "\n" not in str(info.value)
    assert {p.name: p.read_bytes() for p in (tmp_path / "clean").iterdir()} == before
    assert (tmp_path / "clean.json").read_text() == report
    # a looser limit lets the same run through, and the report says what leaked
    summary = run_clean(
        params, tmp_path, texts, group_near_duplicates=False, max_test_train_overlap=1.0
    )
    got = splits_of(tmp_path)
    leaked = {
        b
        for a in texts
        for b in texts
        if got[a] == "train" and got[b] == "test" and jaccard(a, b, 5) >= 0.8
    }
    assert summary["test_train_overlap"]["near"]["documents"] == len(leaked) > 0
    assert summary["test_train_overlap"]["near"]["fraction"] == pytest.approx(
        len(leaked) / summary["split_documents"]["test"]
    )


def test_source_split_is_kept_and_dedup_only_touches_train(params, tmp_path):
    rng = random.Random(2)
    train, val, test = ([doc(rng) for _ in range(k)] for k in (30, 10, 10))
    test_near = near_copy(test[1], rng)
    texts = (
        train
        + [train[0], near_copy(train[1], rng)]  # copies inside train
        + val
        + [val[0]]  # an exact copy inside val
        + test
        + [test[0], test_near]  # copies inside test
        + [test[2], near_copy(test[3], rng)]
    )  # test leaked into train
    given = ["train"] * 32 + ["val"] * 11 + ["test"] * 12 + ["train"] * 2
    summary = run_clean(params, tmp_path, texts, given, clean_update={"dedup": "near"})
    counts = summary["split_counts"]
    assert counts["train"]["dropped_duplicates"] == 1
    assert counts["train"]["dropped_near_duplicates"] == 1
    assert counts["train"]["kept"] == 32  # 29 + one of a near pair + the two leaked copies
    assert counts["val"]["kept"] == 11 and counts["test"]["kept"] == 12
    assert all(v == 0 for s in ("val", "test") for k, v in counts[s].items() if k != "kept")
    kept_test = pq.read_table(tmp_path / "clean" / "test.parquet")["text"].to_pylist()
    assert sorted(kept_test) == sorted([*test, test[0], test_near])  # exactly as given
    kept_val = pq.read_table(tmp_path / "clean" / "val.parquet")["text"].to_pylist()
    assert sorted(kept_val) == sorted([*val, val[0]])
    overlap = summary["test_train_overlap"]  # 2 of 12 test documents: reported, not enforced
    assert overlap["enforced"] is False
    assert overlap["exact"] == {"documents": 1, "fraction": 1 / 12}  # test[2]
    assert overlap["near"] == {"documents": 2, "fraction": 2 / 12}  # test[2], test[3]
    assert json.loads((tmp_path / "clean.json").read_text()) == summary


@pytest.mark.parametrize(("dedup", "kept"), [("none", 12), ("exact", 11), ("near", 10)])
def test_dedup_modes_on_a_source_train_split(params, tmp_path, dedup, kept):
    rng = random.Random(3)
    train = [doc(rng) for _ in range(10)]
    texts = [*train, train[0], near_copy(train[1], rng), doc(rng), doc(rng)]
    given = ["train"] * 12 + ["val", "test"]
    summary = run_clean(params, tmp_path, texts, given, clean_update={"dedup": dedup})
    assert summary["split_counts"]["train"]["kept"] == kept
    assert summary["dropped_duplicates"] == (dedup != "none")
    assert summary["dropped_near_duplicates"] == (dedup == "near")


def test_dedup_none_keeps_exact_copies_in_one_split(params, tmp_path):
    rng = random.Random(4)
    base = [doc(rng) for _ in range(60)]
    summary = run_clean(params, tmp_path, base + base[:20], clean_update={"dedup": "none"})
    assert summary["documents_out"] == 80 and summary["dropped_duplicates"] == 0
    assert summary["test_train_overlap"]["exact"]["documents"] == 0
    rows = [
        r for s in SPLITS for r in pq.read_table(tmp_path / "clean" / f"{s}.parquet").to_pylist()
    ]
    by_text: dict[str, set[str]] = {}
    for r in rows:
        by_text.setdefault(r["text"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_text.values())
