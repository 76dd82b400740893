"""Data-stage rules on tiny inputs: HTML and privacy cleaning, word/size gates, the source's
own split, ingest units/lists/globs/metadata/HF, and every tokenizer kind (incl. Chinese)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components import clean, ingest, tokenize
from components.contract import BOS, EOS, MASK, PAD, SPECIALS, SPLITS, UNK, encode
from components.data import clean_rules
from components.errors import GruflowError
from components.params import Params, load_params

ROOT = Path(__file__).resolve().parents[1]


def rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


WORDS = (
    "parser reads line file again header socket buffer thread module value list name "
    "returns opens closes writes checks cached integer next"
).split()


def filler(n: int, tag: str = "doc") -> list[str]:
    """Distinct documents (random words), so that no two are near-duplicates: near copies
    share a split, which the split tests here are not about."""
    rng = random.Random(tag)
    return [f"{tag} {i}: " + " ".join(rng.choices(WORDS, k=12)) for i in range(n)]


def run_ingest(params: Params, source, out: Path, **update) -> dict:
    cfg = params.data.model_copy(update={"source": source, "text_column": "text", **update})
    return ingest.run(cfg, out, out.parent / "ingest.json")


def run_clean(params: Params, root: Path, val=0.2, test=0.2, **update) -> dict:
    cfg = params.clean.model_copy(
        update={"min_chars": 10, "min_words": 1, "min_documents": 1, **update}
    )
    split = params.split.model_copy(update={"val_fraction": val, "test_fraction": test})
    return clean.run(cfg, split, root / "raw", root / "clean", root / "clean.json")


def clean_rows(root: Path) -> list[dict]:
    return [r for name in SPLITS for r in rows(root / "clean" / f"{name}.parquet")]


# --------------------------------------------------------------------------- clean: HTML


def test_strip_html_removes_tags_scripts_and_entities():
    text, counts = clean_rules.strip_html(
        pa.array(
            [
                "<html><body><p>Hello&nbsp;<b>world</b> &amp; friends</p>"
                "<script>var x = 1;</script>"
                '<!-- note --><div class="x">next</div></body></html>',
                "no markup here, a < b and c > d",
            ]
        )
    )
    out = [clean_rules.normalise(text, clean_cfg())[0][i].as_py() for i in range(2)]
    assert out == ["Hello world & friends\n\nnext", "no markup here, a < b and c > d"]
    assert counts == {"html_tags_removed": 12, "html_entities_unescaped": 2}


def clean_cfg(**update):
    return load_params(ROOT / "params.yaml").clean.model_copy(update=update)


@pytest.mark.parametrize(
    "kept", ["<class 'int'>", "<a statement>", "x<y and y>z", "AT&T and R&D;", "&nosuch; stays"]
)
def test_strip_html_leaves_non_html_angle_brackets_alone(kept):
    text, counts = clean_rules.strip_html(pa.array([kept]))
    assert text[0].as_py() == kept
    assert counts == {"html_tags_removed": 0, "html_entities_unescaped": 0}


# --------------------------------------------------------------------------- clean: privacy


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("mail jane.doe+news@example.co.uk today", "mail <email> today"),
        ("see https://docs.python.org/3/library/re.html.", "see <url>."),
        ("(visit www.example.com)", "(visit <url>)"),
        ("server 192.168.1.20 and 10.0.0.1", "server <ip> and <ip>"),
        ("v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334 here", "v6 <ip> here"),
        ("call +1 555 123 4567 now", "call <phone> now"),
        ("call +44 20 7946 0958", "call <phone>"),
        ("call (555) 123-4567 or 555-123-4567", "call <phone> or <phone>"),
        ("mailto at http://x.org/?u=a@b.com", "mailto at <url>"),
    ],
)
def test_mask_pii_masks_each_kind(raw, masked):
    assert clean_rules.mask_pii(pa.array([raw]))[0][0].as_py() == masked


@pytest.mark.parametrize(
    "kept",
    [
        "Python 3.11.7 was released",
        "the value 1234567890 is an int",
        "on 2023-01-15 at 10:30",
        "section 7.1.4.34 of the RFC",
        "x = a+1 - 22",
        "ratio 1.5e-3 and 0.25",
        "pi 3.14159265",
        "range(0, 100000)",
        "see PEP 8 and PEP 484",
        "version 3.12.0b1",
    ],
)
def test_mask_pii_leaves_numbers_and_versions(kept):
    text, counts = clean_rules.mask_pii(pa.array([kept]))
    assert text[0].as_py() == kept
    assert set(counts.values()) == {0}


def test_clean_reports_every_rule_and_can_switch_rules_off(params, tmp_path):
    texts = filler(20) + [
        "<p>Write to ops@example.org or +1 555 123 4567</p> &amp; more words",
        "one twothree",
        "visit https://example.com/a and 10.1.2.3 please",
    ]
    ingest.run(
        params.data.model_copy(update={"source": str(write_jsonl(tmp_path, texts))}),
        tmp_path / "raw",
        tmp_path / "ingest.json",
    )
    on = run_clean(params, tmp_path, min_words=3)
    assert (on["html_tags_removed"], on["html_entities_unescaped"]) == (2, 1)
    assert (on["masked_email"], on["masked_phone"], on["masked_url"], on["masked_ip"]) == (
        1,
        1,
        1,
        1,
    )
    assert on["dropped_too_few_words"] == 1 and on["documents_out"] == 22
    texts_out = {r["text"] for r in clean_rows(tmp_path)}
    assert "Write to <email> or <phone>\n& more words" in texts_out
    assert json.loads((tmp_path / "clean.json").read_text()) == on

    off = run_clean(params, tmp_path, min_words=0, strip_html=False, mask_pii=False)
    assert off["html_tags_removed"] == off["masked_email"] == off["dropped_too_few_words"] == 0
    assert any("ops@example.org" in r["text"] and "<p>" in r["text"] for r in clean_rows(tmp_path))


def write_jsonl(root: Path, texts: list[str], splits: list[str | None] | None = None) -> Path:
    path = root / "docs.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            row = {"text": t} if splits is None else {"text": t, "split": splits[i]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def test_min_words_counts_cjk_characters_as_words():
    words = clean_rules.count_words(
        pa.array(["机器学习是人工智能", "two words", "日本語のテキスト and more"]),
        pa.array([True, False, True]),
    )
    assert words.to_pylist() == [9, 2, 10]


def test_clean_min_documents_gate(params, tmp_path):
    write_jsonl(tmp_path, filler(6))
    ingest.run(
        params.data.model_copy(update={"source": str(tmp_path / "docs.jsonl")}),
        tmp_path / "raw",
        tmp_path / "ingest.json",
    )
    with pytest.raises(GruflowError, match=r"only 6 of 6 documents kept .*min_documents=7"):
        run_clean(params, tmp_path, val=0.3, test=0.3, min_documents=7)
    assert not (tmp_path / "clean").exists() and not (tmp_path / "clean.json").exists()


# --------------------------------------------------------------------------- split from source


def test_split_from_folders_and_column_is_kept_and_stable(params, tmp_path):
    src = tmp_path / "src"
    for folder in ["train", "valid", "test"]:
        (src / folder).mkdir(parents=True)
    for i, text in enumerate(filler(30, "tr")):
        (src / "train" / f"{i}.txt").write_text(text, encoding="utf-8")
    (src / "valid" / "v.txt").write_text("\n".join(filler(4, "va")), encoding="utf-8")
    (src / "test.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in filler(5, "te")), encoding="utf-8"
    )
    column = ["train", "dev", "validation", "TEST", None] * 4
    (src / "extra").mkdir()
    (src / "extra" / "more.jsonl").write_text(
        "".join(
            json.dumps({"text": t, "split": s}) + "\n"
            for t, s in zip(filler(20, "ex"), column, strict=True)
        ),
        encoding="utf-8",
    )
    summary = run_ingest(params, str(src), tmp_path / "a" / "raw", unit="line")
    assert summary["documents_with_source_split"] == 30 + 4 + 5 + 16
    run_clean(params, tmp_path / "a", val=0.3, test=0.3)
    got = {r["text"]: r["split"] for r in clean_rows(tmp_path / "a")}
    want = {"tr": "train", "va": "val", "te": "test"}
    for text, split in got.items():
        tag, i = text.split()[0], int(text.split()[1].rstrip(":"))
        if tag in want:
            assert split == want[tag], text
        elif column[i] is not None:
            assert (
                split
                == {"train": "train", "dev": "val", "validation": "val", "TEST": "test"}[column[i]]
            ), text

    # appending documents (given and hashed) never moves an existing one
    (src / "train" / "new.txt").write_text("\n".join(filler(40, "nw")), encoding="utf-8")
    (src / "zz.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in filler(40, "hz")), encoding="utf-8"
    )
    run_ingest(params, str(src), tmp_path / "b" / "raw", unit="line")
    run_clean(params, tmp_path / "b", val=0.3, test=0.3)
    after = {r["text"]: r["split"] for r in clean_rows(tmp_path / "b")}
    assert len(after) == len(got) + 80
    assert {t: after[t] for t in got} == got


def test_split_column_with_unknown_value_names_file(params, tmp_path):
    write_jsonl(tmp_path, ["some text here"], ["holdout"])
    with pytest.raises(GruflowError, match=r"docs.jsonl: split 'holdout' is not one of"):
        run_ingest(params, str(tmp_path / "docs.jsonl"), tmp_path / "raw")


def test_single_file_named_after_a_split(params, tmp_path):
    path = tmp_path / "validation.jsonl"
    path.write_text(json.dumps({"text": "a b c"}) + "\n", encoding="utf-8")
    run_ingest(params, str(path), tmp_path / "raw")
    assert rows(tmp_path / "raw" / "corpus.parquet")[0]["split"] == "val"


# --------------------------------------------------------------------------- ingest


@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        ("file", ["first para\nstill first\n\n  \nsecond para\r\nline b\n\n\nthird"]),
        ("paragraph", ["first para\nstill first", "second para\nline b", "third"]),
        ("line", ["first para", "still first", "second para", "line b", "third"]),
    ],
)
def test_ingest_text_units(params, tmp_path, unit, expected):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"first para\nstill first\n\n  \nsecond para\r\nline b\n\n\nthird")
    run_ingest(params, str(path), tmp_path / "raw", unit=unit)
    assert [r["text"] for r in rows(tmp_path / "raw" / "corpus.parquet")] == expected


def test_ingest_source_list_include_globs_and_metadata(params, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "keep").mkdir(parents=True)
    b.mkdir()
    (a / "keep" / "x.md").write_text("kept markdown", encoding="utf-8")
    (a / "skip.txt").write_text("not included", encoding="utf-8")
    (b / "t.csv").write_text("text,author,year\nhello csv,ann,2020\n", encoding="utf-8")
    summary = run_ingest(params, [str(a), str(b)], tmp_path / "raw", include=["keep/**/*", "*.csv"])
    got = rows(tmp_path / "raw" / "corpus.parquet")
    assert [r["text"] for r in got] == ["kept markdown", "hello csv"]
    assert got[0]["meta"] is None
    assert json.loads(got[1]["meta"]) == {"author": "ann", "year": 2020}
    assert summary["documents"] == 2


def test_params_reject_bad_data_values(params):
    raw = json.loads(json.dumps(params.model_dump()))
    for key, value in [("unit", "sentence"), ("source", []), ("include", [])]:
        bad = json.loads(json.dumps(raw))
        bad["data"][key] = value
        with pytest.raises(GruflowError, match=f"data.{key}"):
            from components.params import parse_params

            parse_params(bad)


def test_ingest_hf_source_without_datasets_extra(params, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(GruflowError, match=r"hf:imdb:plain_text:test.*gruflow\[datasets\]"):
        run_ingest(params, "hf:imdb:plain_text:test", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


# --------------------------------------------------------------------------- tokenize kinds

CHINESE = [
    "机器学习是人工智能的一个分支。它使用数据来训练模型，并用模型来预测新的数据。",
    "深度学习是机器学习的一种方法，它使用多层神经网络从大量数据中学习特征。",
    "自然语言处理让计算机能够理解和生成人类的语言，例如翻译、摘要和问答。",
    "数据清洗是训练模型之前的重要步骤，包括去除重复、修正编码和过滤噪声。",
]
ENGLISH = [
    "the parser reads the header and returns a list of names.",
    "each thread writes the next line to the file, then closes the file.",
]
HELD_OUT = "模型使用新的数据来学习语言的特征，并预测问答的结果。"


@pytest.mark.parametrize("kind", ["bpe", "unigram", "wordpiece", "word", "char"])
def test_every_kind_has_specials_first_and_round_trips_train_text(params, kind):
    cfg = params.tokenize.model_copy(update={"kind": kind, "vocab_size": 400, "min_frequency": 1})
    tok = tokenize.train_tokenizer(iter((ENGLISH + CHINESE) * 3), cfg)
    assert [tok.token_to_id(t) for t in SPECIALS] == [PAD, UNK, BOS, EOS, MASK]
    # a <mask> written in a text is the one special token, whatever the kind (fill requests)
    masked = tok.encode(f"{ENGLISH[0]} <mask> end", add_special_tokens=False).ids
    assert masked.count(MASK) == 1
    for text in ENGLISH + CHINESE:
        ids = encode(tok, [text])[0]
        assert ids[0] == BOS and ids[-1] == EOS and UNK not in ids
        assert tok.decode(ids) == text


@pytest.mark.parametrize("kind", ["bpe", "unigram", "wordpiece"])
def test_chinese_paragraph_unknown_rate_and_exact_round_trip(params, kind):
    cfg = params.tokenize.model_copy(update={"kind": kind, "vocab_size": 500, "min_frequency": 1})
    tok = tokenize.train_tokenizer(iter((ENGLISH + CHINESE) * 3), cfg)
    ids = tok.encode(HELD_OUT).ids
    assert ids.count(UNK) / len(ids) < 0.01
    assert tok.decode(ids) == HELD_OUT
    # each CJK character is its own pre-token: no paragraph-long "word" to hold in memory
    pieces = tok.pre_tokenizer.pre_tokenize_str(HELD_OUT)
    assert max(len(piece) for piece, _ in pieces) <= 3  # one CJK char = 3 byte symbols


def test_wordpiece_spells_unseen_scripts_from_bytes(params):
    cfg = params.tokenize.model_copy(
        update={"kind": "wordpiece", "vocab_size": 600, "min_frequency": 1}
    )
    tok = tokenize.train_tokenizer(iter(ENGLISH * 20), cfg)  # no Chinese, Greek or Cyrillic
    assert tok.get_vocab_size() <= 600
    for text in (HELD_OUT, "Ελληνικά и кириллица", ENGLISH[0]):
        ids = tok.encode(text).ids
        assert UNK not in ids and tok.decode(ids) == text


def test_tokenize_run_reports_unknown_rate_for_word_kind(params, tmp_path):
    (tmp_path / "clean").mkdir()
    texts = {"train": ENGLISH * 3, "val": ENGLISH[:1], "test": ["the zebra reads"]}
    for name, docs in texts.items():
        pq.write_table(
            pa.table({"doc_id": [f"{name}{i}" for i in range(len(docs))], "text": docs}),
            tmp_path / "clean" / f"{name}.parquet",
        )
    cfg = params.tokenize.model_copy(update={"kind": "word", "vocab_size": 100, "min_frequency": 1})
    s = tokenize.run(
        cfg,
        tmp_path / "clean",
        tmp_path / "tok.json",
        tmp_path / "tokens",
        tmp_path / "tokenize.json",
    )
    assert s["splits"]["val"]["unk_rate"] == 0
    assert s["splits"]["test"]["unk_rate"] == pytest.approx(1 / 5)  # <bos> the <unk> reads <eos>
