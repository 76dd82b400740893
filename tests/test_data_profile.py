"""The clean stage's profile, script filter, near-duplicate removal and drift gate."""

from __future__ import annotations

import json
import random
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components import clean, ingest
from components.contract import SPLITS
from components.data import data_profile as profile
from components.data.near_dup import NearIndex, signatures
from components.errors import GruflowError
from components.params import Params

WORDS = (
    "river stone garden paper window market silver cloud engine letter village orange "
    "bridge candle forest harbor number planet signal winter"
).split()
CHINESE = "今天天气很好我们一起去公园散步然后在湖边看书学习语言模型"
RUSSIAN = "сегодня хорошая погода мы идём гулять в парк и читаем книгу у озера".split()


def english(rng: random.Random, n: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def chinese(rng: random.Random, n: int = 20) -> str:
    return "".join(rng.choice(CHINESE) for _ in range(n)) + "。"


def run_clean(params: Params, root: Path, texts: list[str], source=("test",), **update) -> dict:
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "doc_id": [ingest.doc_id(t) for t in texts],
                "text": texts,
                "source": ["test"] * len(texts),
            }
        ),
        raw / "corpus.parquet",
    )
    cfg = params.clean.model_copy(
        update={"min_chars": 5, "min_words": 1, "min_documents": 1, **update}
    )
    split = params.split.model_copy(update={"val_fraction": 0.2, "test_fraction": 0.2})
    return clean.run(
        cfg,
        split,
        raw,
        root / "clean",
        root / "clean.json",
        root / "data_profile.json",
        list(source),
    )


def kept_texts(root: Path) -> set[str]:
    return {
        t
        for s in SPLITS
        for t in pq.read_table(root / "clean" / f"{s}.parquet")["text"].to_pylist()
    }


def test_script_counts_and_main_script():
    texts = [
        "Hello world 42",
        "Привет мир",
        CHINESE,
        "ひらがなカタカナ",
        "한국어",
        "!!! 123",
        "x" * 5_000_001,
    ]  # the last one is classified in chunks
    counts = profile.script_counts(texts)
    col = {name: i for i, name in enumerate(profile.CLASSES)}
    assert counts[0, col["Latin"]] == 10 and counts[0, col["Digit"]] == 2
    assert counts[0, col["Space"]] == 2
    assert counts.sum(axis=1).tolist()[:6] == [len(t) for t in texts[:6]]
    assert counts[6, col["Latin"]] == 5_000_001
    assert profile.main_script(counts) == [
        "Latin",
        "Cyrillic",
        "Han",
        "Kana",
        "Hangul",
        "Other",
        "Latin",
    ]


def test_profile_report_and_plot(params, tmp_path):
    rng = random.Random(0)
    texts = [english(rng) for _ in range(60)] + [chinese(rng) for _ in range(20)]
    summary = run_clean(params, tmp_path, texts)
    prof = json.loads((tmp_path / "data_profile.json").read_text())
    assert prof["documents"] == summary["documents_out"] == 80
    assert prof["characters"] == summary["characters_out"]
    assert sum(prof["length_histogram"]["documents"]) == 80
    assert prof["split_documents"] == summary["split_documents"]
    mix = prof["script_mix"]
    assert abs(sum(mix.values()) - 1) < 1e-4 and mix["Latin"] > mix["Han"] > 0.05
    top = dict(prof["top_tokens"])
    assert set(WORDS) <= set(top)  # English words, split at spaces
    assert any(ch in top for ch in CHINESE)  # Chinese: one character is one word
    assert prof["drift"] == {} and prof["source"] == ["test"]
    svg = ElementTree.parse(tmp_path / "data_profile.svg").getroot()  # well-formed XML
    labels = {t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")}
    assert {"Latin", "Han", "top words", "≥ 32"} <= labels and set(WORDS[:3]) <= labels
    assert len(list(svg.iter("{http://www.w3.org/2000/svg}rect"))) > 20  # the bars


def test_script_filter_keeps_listed_scripts_and_counts_the_rest(params, tmp_path):
    rng = random.Random(1)
    texts = (
        [english(rng) for _ in range(30)]
        + [chinese(rng) for _ in range(30)]
        + [" ".join(rng.choice(RUSSIAN) for _ in range(10)) for _ in range(15)]
    )
    summary = run_clean(params, tmp_path, texts, scripts=["Han", "Cyrillic"])
    assert summary["dropped_script"] == 30
    assert summary["documents_out"] == 45
    assert all(not any(w in t for w in WORDS) for t in kept_texts(tmp_path))


def test_near_duplicates_dropped_only_with_dedup_near(params, tmp_path):
    rng = random.Random(2)
    base = [english(rng, 60) for _ in range(30)]
    near = [t.replace(t.split()[5], "lantern", 1) for t in base[:10]]  # one word changed
    assert run_clean(params, tmp_path / "off", base + near)["dropped_near_duplicates"] == 0
    summary = run_clean(params, tmp_path / "on", base + near, dedup="near")
    assert summary["dropped_near_duplicates"] == 10
    assert summary["documents_out"] == 30
    kept = kept_texts(tmp_path / "on")
    assert set(base[10:]) <= kept  # of each pair one is kept: the one with the smaller doc_id
    assert all(len(kept & {a, b}) == 1 for a, b in zip(base, near, strict=False))
    first = min([base[0], near[0]], key=ingest.doc_id)
    assert first in kept


def test_near_duplicates_work_without_spaces():
    rng = random.Random(3)
    doc = chinese(rng, 400)
    index = NearIndex(threshold=0.8)
    index.add(*signatures(pa.array([doc, doc[:-3] + "好好。", chinese(random.Random(4), 400)]), 5))
    pairs, similar = index.pairs()
    assert pairs.tolist() == [[0, 1]]  # the near copy, not the unrelated text
    assert similar[0] >= 0.8


def test_drift_gate_stops_on_a_changed_corpus_and_keeps_outputs(params, tmp_path):
    rng = random.Random(5)
    english_docs = [english(rng) for _ in range(50)]
    run_clean(params, tmp_path, english_docs)
    before = {p.name: p.read_bytes() for p in (tmp_path / "clean").iterdir()}
    old_profile = (tmp_path / "data_profile.json").read_text()

    # more of the same corpus passes, and the measured drift is recorded
    summary = run_clean(params, tmp_path, english_docs + [english(rng) for _ in range(10)])
    drift = json.loads((tmp_path / "data_profile.json").read_text())["drift"]
    assert summary["documents_out"] == 60 and set(drift) == {
        "mean_chars",
        "script_mix",
        "top_tokens",
    }
    assert max(drift.values()) < 0.2
    before = {p.name: p.read_bytes() for p in (tmp_path / "clean").iterdir()}
    old_profile = (tmp_path / "data_profile.json").read_text()

    with pytest.raises(
        GruflowError,
        match=r"data drift — script_mix moved .* > "
        r"clean\.drift\.script_mix=0\.25",
    ):
        run_clean(params, tmp_path, [chinese(rng) for _ in range(50)])
    assert {p.name: p.read_bytes() for p in (tmp_path / "clean").iterdir()} == before
    assert (tmp_path / "data_profile.json").read_text() == old_profile

    # the same change passes when the check is off, or when the source itself changed
    off = params.clean.drift.model_copy(update={"script_mix": 0.0, "top_tokens": 0.0})
    run_clean(params, tmp_path / "x", english_docs)
    run_clean(params, tmp_path / "x", [chinese(rng) for _ in range(50)], drift=off)
    run_clean(params, tmp_path, [chinese(rng) for _ in range(50)], source=("other",))
    assert json.loads((tmp_path / "data_profile.json").read_text())["drift"] == {}


def test_drift_statistics():
    prev = {
        "mean_chars": 100.0,
        "script_mix": {"Latin": 0.8, "Space": 0.2},
        "top_tokens": [["a", 3], ["b", 2]],
    }
    cur = {
        "mean_chars": 150.0,
        "script_mix": {"Latin": 0.4, "Han": 0.4, "Space": 0.2},
        "top_tokens": [["a", 3], ["c", 2]],
    }
    moved = profile.drift(prev, cur)
    assert moved["mean_chars"] == pytest.approx(0.5)
    assert moved["script_mix"] == pytest.approx(0.4)
    assert moved["top_tokens"] == pytest.approx(1 - 1 / 3)
    assert profile.drift(prev, prev) == {"mean_chars": 0.0, "script_mix": 0.0, "top_tokens": 0.0}
    assert np.isfinite(list(profile.drift({}, cur).values())).all()


def test_exact_hashes_agree_with_a_set_over_many_batches():
    from components.data.near_dup import ExactHashes

    rng = np.random.default_rng(0)
    seen, reference = ExactHashes(), set()
    for _ in range(200):
        batch = rng.integers(0, 5_000, size=rng.integers(0, 60), dtype=np.uint64)
        found = seen.contains(batch)
        assert found.tolist() == [int(h) in reference for h in batch]
        seen.add(batch)
        reference.update(int(h) for h in batch)
    assert len(seen) == len(reference)
    assert len(seen.runs) <= 12  # log-structured: few runs, however many batches


def test_near_index_results_do_not_depend_on_chunks_or_batches(monkeypatch):
    """Signatures computed a few documents at a time (near_dup.SIG_CHARS), band keys spilled
    per batch, candidates verified in chunks (VERIFY_CHUNK), signatures read in runs
    (READ_GAP, READ_SPAN) and bands verified on several threads give what one pass over
    everything on one thread gives: the chunk sizes only bound memory, threads only speed."""
    from components.data import near_dup

    rng = random.Random(5)
    docs = [english(rng, rng.randrange(3, 40)) for _ in range(60)]
    docs += [d + " river" for d in docs[:20]] + [chinese(rng, 200)] + ["x" * 900]
    text = pa.array(docs)

    def run(sig_chars: int, verify: int, batch: int, read: tuple[int, int], threads: int):
        monkeypatch.setattr(near_dup, "SIG_CHARS", sig_chars)
        monkeypatch.setattr(near_dup, "VERIFY_CHUNK", verify)
        monkeypatch.setattr(near_dup, "READ_GAP", read[0])
        monkeypatch.setattr(near_dup, "READ_SPAN", read[1])
        sigs, keys = signatures(text, 5)
        index = NearIndex(threshold=0.8)
        for i in range(0, len(docs), batch):
            index.add(*signatures(text.slice(i, batch), 5))
        return sigs, keys, *index.pairs(threads)

    whole = run(1 << 30, 1 << 30, len(docs), (1 << 30, 1 << 30), 1)
    assert len(whole[2]) >= 20  # the near copies were found
    for chunked in (run(64, 3, 7, (0, 2), 4), run(64, 5, 7, (3, 16), 3)):
        for a, b in zip(whole, chunked, strict=True):
            np.testing.assert_array_equal(a, b)
