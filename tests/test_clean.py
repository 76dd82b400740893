"""Stage `clean` on tiny inputs: the normalise rules, filters, de-duplication and the
stable split (no TensorFlow here; every run on a few documents in tmp_path)."""

from __future__ import annotations

import hashlib
import json
import random
import string
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components import clean, ingest
from components.contract import SPLITS
from components.data import clean_rules, splits
from components.errors import GruflowError
from components.params import Params


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


# --------------------------------------------------------------------------- clean


def norm(text: str, params: Params, **update) -> tuple[str, dict]:
    out, counts = clean_rules.normalise(pa.array([text]), params.clean.model_copy(update=update))
    return out[0].as_py(), counts


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ＡＢＣ ｘｙｚ", "ABC xyz"),  # full-width forms
        ("ﬁne ﬂow", "fine flow"),  # ligatures
        ("x² ½", "x2 1⁄2"),  # compatibility characters
        ("one\r\ntwo\rthree\nfour", "one\ntwo\nthree\nfour"),
        ("a  \t b\u00a0\u3000c", "a b c"),  # blank runs (incl. NBSP, ideographic) -> " "
        ("  padded \n\n\n\n\nlines  ", "padded\n\nlines"),
        ("line end   \n   next", "line end\nnext"),
    ],
)
def test_normalise_rules(params, raw, expected):
    assert norm(raw, params)[0] == expected


def test_normalise_removes_and_counts_controls_and_zero_width(params):
    text, counts = norm("a\x00b\x07c\x1bd\x7fe\x85f\tg\u200bh\u200di\u2060j\ufeffk", params)
    assert text == "abcde\nf ghijk"  # NEL (\x85) is a line break, the rest are removed
    assert counts == {"control_chars_removed": 4, "zero_width_removed": 4}


def test_normalise_lowercase_option(params):
    assert norm("MiXeD Case", params, lowercase=True)[0] == "mixed case"
    assert norm("MiXeD Case", params, lowercase=False)[0] == "MiXeD Case"


def test_normalize_option_chooses_the_unicode_form(params):
    text = "我们，是（学生）：ﬁ cafe\u0301 x²"
    assert norm(text, params, normalize="nfkc")[0] == "我们,是(学生):fi café x2"
    assert norm(text, params, normalize="nfc")[0] == "我们，是（学生）：ﬁ café x²"
    assert norm(text, params, normalize="none")[0] == text


def test_text_rules_saved_with_a_model_replay_the_clean_chain(params):
    from components.data.clean_rules import TextRules, clean_texts

    rules = TextRules.of(params.clean)
    assert TextRules(**rules.to_dict()) == rules  # what info.json holds
    texts = ["我们，<b>是</b>  学生。 mail a@b.org ", "ok"]
    chain = clean_rules.apply_rules(pa.array(texts), params.clean)[0]
    assert clean_texts(texts, rules) == chain.to_pylist()
    assert clean_texts(texts, rules)[0] == "我们,是 学生。 mail <email>"


def test_normalise_output_is_composed_nfkc(params):
    text = norm("cafe\u0301 naïve 한국어", params)[0]
    assert text == "café naïve 한국어"
    assert unicodedata.is_normalized("NFKC", text)


def test_normalise_turns_page_breaks_into_line_breaks(params):
    assert norm("a\x0cb\x0bc\x85d\u2028e", params)[0] == "a\nb\nc\nd\ne"


def write_raw(raw_dir: Path, texts: list[str]) -> None:
    raw_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "doc_id": [ingest.doc_id(t) for t in texts],
                "text": texts,
                "source": ["test"] * len(texts),
            }
        ),
        raw_dir / "corpus.parquet",
    )


def run_clean(
    params: Params, tmp_path: Path, texts: list[str], val=0.2, test=0.2, seed=0, min_chars=20
) -> dict:
    write_raw(tmp_path / "raw", texts)
    cfg = params.clean.model_copy(update={"min_chars": min_chars, "lowercase": False})
    split = params.split.model_copy(
        update={"val_fraction": val, "test_fraction": test, "seed": seed}
    )
    return clean.run(cfg, split, tmp_path / "raw", tmp_path / "clean", tmp_path / "clean.json")


def clean_rows(tmp_path: Path) -> list[dict]:
    return [row for name in SPLITS for row in read_rows(tmp_path / "clean" / f"{name}.parquet")]


def test_clean_run_filters_dedups_and_reports(params, tmp_path):
    base = [f"document {i}: the parser reads line {i * 7} of the file" for i in range(40)]
    extra = [
        "too short",  # dropped: < 20 chars
        base[0],  # exact duplicate
        "  document 1:\tthe parser   reads line 7 of the file \r\n",  # whitespace-only variant
        "with a NUL\x00 and a zero\u200bwidth char in it",
    ]
    summary = run_clean(params, tmp_path, base + extra)

    assert summary["documents_in"] == 44
    assert summary["dropped_too_short"] == 1
    assert summary["dropped_duplicates"] == 2
    assert summary["control_chars_removed"] == 1
    assert summary["zero_width_removed"] == 1
    assert summary["documents_out"] == 41 == sum(summary["split_documents"].values())
    assert set(summary) == {
        "documents_in",
        "characters_in",
        "html_tags_removed",
        "html_entities_unescaped",
        "control_chars_removed",
        "zero_width_removed",
        "masked_url",
        "masked_email",
        "masked_ip",
        "masked_phone",
        "dropped_too_short",
        "dropped_too_few_words",
        "dropped_script",
        "dropped_duplicates",
        "dropped_near_duplicates",
        "documents_out",
        "characters_out",
        "split_documents",
        "split_counts",
        "test_train_overlap",
    }
    assert json.loads((tmp_path / "clean.json").read_text()) == summary

    rows = clean_rows(tmp_path)
    texts = [r["text"] for r in rows]
    assert len(texts) == len(set(texts)) == 41
    assert "with a NUL and a zerowidth char in it" in texts
    assert summary["characters_out"] == sum(map(len, texts))
    assert all(r["doc_id"] == hashlib.sha256(r["text"].encode()).hexdigest()[:20] for r in rows)
    for name in SPLITS:
        split_rows = read_rows(tmp_path / "clean" / f"{name}.parquet")
        assert {r["split"] for r in split_rows} == {name}
        assert len(split_rows) == summary["split_documents"][name] > 0


def test_clean_dedups_across_unicode_forms(params, tmp_path):
    # precomposed, decomposed and zero-width-split spellings are one document; this also guards
    # the rule order: removing U+200B after composing would leave 'e' + U+0301 uncomposed
    forms = [
        "a café on the corner of the street",
        "a cafe\u0301 on the corner of the street",
        "a cafe\u200b\u0301 on the corner of the street",
    ]
    rng = random.Random(1)
    texts = forms + [random_doc(rng) for _ in range(30)]
    summary = run_clean(params, tmp_path, texts)
    assert summary["dropped_duplicates"] == 2


def test_clean_all_dropped_fails_without_output(params, tmp_path):
    with pytest.raises(GruflowError, match="all 3 documents were dropped"):
        run_clean(params, tmp_path, ["tiny", "tiny", "small doc"])
    assert not (tmp_path / "clean").exists()
    assert not (tmp_path / "clean.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no leftover temp folder


def random_doc(rng: random.Random) -> str:
    words = [
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 8)))
        for _ in range(rng.randint(6, 15))
    ]
    return " ".join(words)


def test_clean_split_is_stable_when_documents_are_added(params, tmp_path):
    rng = random.Random(0)
    docs = [random_doc(rng) for _ in range(500)]
    more = [random_doc(rng) for _ in range(300)]
    run_clean(params, tmp_path / "a", docs, val=0.1, test=0.2)
    superset = more[:150] + docs[::-1] + more[150:]  # new documents before and after, new order
    run_clean(params, tmp_path / "b", superset, val=0.1, test=0.2)

    first = {r["text"]: r["split"] for r in clean_rows(tmp_path / "a")}
    second = {r["text"]: r["split"] for r in clean_rows(tmp_path / "b")}
    assert len(first) == 500 and len(second) == 800
    assert {t: second[t] for t in first} == first


def assign_split(doc_ids: list[str], cfg) -> list[str]:
    """Each document's split name, from the stage's own split_codes."""
    return [splits.BY_CODE[c] for c in splits.split_codes((d.encode() for d in doc_ids), cfg)]


def test_split_codes_fractions_and_seed(params):
    ids = [f"{i:020x}" for i in range(20_000)]
    split = params.split.model_copy(update={"val_fraction": 0.1, "test_fraction": 0.25, "seed": 0})
    got = assign_split(ids, split)
    assert abs(got.count("val") / len(ids) - 0.1) < 0.015
    assert abs(got.count("test") / len(ids) - 0.25) < 0.015
    assert assign_split(ids[:50], split) == got[:50]
    reseeded = assign_split(ids, split.model_copy(update={"seed": 1}))
    assert reseeded != got  # the seed salts the hash
