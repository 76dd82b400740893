"""Data stages on tiny inputs: ingest, clean, tokenize, embed and the LM windows.

No TensorFlow or Keras here; every stage runs on a few documents in tmp_path.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import string
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from components import clean, clean_rules, embed, ingest, splits, tokenize, windows
from components.errors import GruflowError
from components.params import Params
from components.tokenize import BOS, EOS, PAD, UNK


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


# --------------------------------------------------------------------------- ingest

def run_ingest(params: Params, source: Path, out: Path, **update) -> dict:
    cfg = params.data.model_copy(update={"source": str(source), "text_column": "text", **update})
    return ingest.run(cfg, out, out.parent / "ingest.json")


def test_ingest_reads_every_file_type(params, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("plain text file", encoding="utf-8")
    (src / "sub" / "b.md").write_text("# Title\n\nmarkdown body", encoding="utf-8")
    (src / "c.jsonl").write_text(
        "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(["j1", "j2"])),
        encoding="utf-8")
    (src / "d.csv").write_text('id,text\n1,"csv, with comma"\n2,csv two\n', encoding="utf-8")
    pq.write_table(pa.table({"text": ["pq one", None, "pq two"], "n": [1, 2, 3]}),
                   src / "e.parquet")
    (src / "ignored.log").write_text("not a source file", encoding="utf-8")

    summary = run_ingest(params, src, tmp_path / "raw")

    rows = read_rows(tmp_path / "raw" / "corpus.parquet")
    assert [r["text"] for r in rows] == [
        "plain text file", "j1", "j2", "csv, with comma", "csv two", "pq one", "pq two",
        "# Title\n\nmarkdown body",  # files are read in sorted path order: sub/ comes last
    ]
    assert {Path(r["source"]).name for r in rows} == {"a.txt", "b.md", "c.jsonl", "d.csv",
                                                      "e.parquet"}
    assert summary["documents"] == 8
    assert summary["characters"] == sum(len(r["text"]) for r in rows)
    assert json.loads((tmp_path / "ingest.json").read_text()) == summary


def test_ingest_max_docs(params, tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(10)))
    assert run_ingest(params, src, tmp_path / "raw", max_docs=3)["documents"] == 3
    assert len(read_rows(tmp_path / "raw" / "corpus.parquet")) == 3


def test_ingest_csv_without_text_column_names_file_and_column(params, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.csv").write_text("id,body\n1,hello\n", encoding="utf-8")
    with pytest.raises(GruflowError) as info:
        run_ingest(params, src, tmp_path / "raw")
    assert "notes.csv" in str(info.value)
    assert "'text'" in str(info.value)
    assert not (tmp_path / "raw").exists()


def test_ingest_csv_text_is_kept_verbatim(params, tmp_path):
    src = tmp_path / "codes.csv"
    src.write_text("text\n007\n1.50\n", encoding="utf-8")
    run_ingest(params, src, tmp_path / "raw")
    assert [r["text"] for r in read_rows(tmp_path / "raw" / "corpus.parquet")] == ["007", "1.50"]


@pytest.mark.parametrize("layout", ["missing", "empty", "only_unsupported"])
def test_ingest_source_without_documents_fails(params, tmp_path, layout):
    src = tmp_path / "src"
    if layout != "missing":
        src.mkdir()
    if layout == "only_unsupported":
        (src / "readme.rst").write_text("not read", encoding="utf-8")
    with pytest.raises(GruflowError, match="data.source") as info:
        run_ingest(params, src, tmp_path / "raw")
    assert str(src) in str(info.value)
    assert not (tmp_path / "raw").exists()


def test_ingest_bom_and_bad_bytes(params, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a_bad.txt").write_bytes(b"\xef\xbb\xbfcaf\xe9 au lait \xff end")  # latin-1 + BOM
    (src / "b_bom.txt").write_bytes("\ufeffclean café".encode())
    summary = run_ingest(params, src, tmp_path / "raw")
    texts = [r["text"] for r in read_rows(tmp_path / "raw" / "corpus.parquet")]
    assert texts == ["caf\ufffd au lait \ufffd end", "clean café"]
    assert summary["documents_with_bad_bytes"] == 1


def test_ingest_doc_id_is_a_stable_content_hash(params, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name, text in [("a.txt", "same words"), ("b.txt", "same words"), ("c.txt", "other")]:
        (src / name).write_text(text, encoding="utf-8")
    run_ingest(params, src, tmp_path / "raw1")
    run_ingest(params, src, tmp_path / "raw2")
    first = read_rows(tmp_path / "raw1" / "corpus.parquet")
    second = read_rows(tmp_path / "raw2" / "corpus.parquet")
    ids = [r["doc_id"] for r in first]
    assert ids == [r["doc_id"] for r in second]
    assert ids[0] == ids[1] != ids[2]
    assert ids[0] == ingest.doc_id("same words")
    assert ids[0] == hashlib.sha256(b"same words").hexdigest()[:20]


def test_ingest_failure_leaves_previous_output_untouched(params, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("first version", encoding="utf-8")
    out = tmp_path / "raw"
    run_ingest(params, src, out)
    before = (out / "corpus.parquet").read_bytes()
    report_before = (tmp_path / "ingest.json").read_text()

    (src / "a.txt").write_text("second version, read before the failure", encoding="utf-8")
    (src / "b.csv").write_text("body\nno text column here\n", encoding="utf-8")
    with pytest.raises(GruflowError):
        run_ingest(params, src, out)

    assert sorted(p.name for p in out.iterdir()) == ["corpus.parquet"]
    assert (out / "corpus.parquet").read_bytes() == before
    assert (tmp_path / "ingest.json").read_text() == report_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ingest.json", "raw", "src"]  # no temp


# --------------------------------------------------------------------------- clean

def norm(text: str, params: Params, **update) -> tuple[str, dict]:
    out, counts = clean_rules.normalise(pa.array([text]), params.clean.model_copy(update=update))
    return out[0].as_py(), counts


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ＡＢＣ ｘｙｚ", "ABC xyz"),           # full-width forms
        ("ﬁne ﬂow", "fine flow"),               # ligatures
        ("x² ½", "x2 1⁄2"),                      # compatibility characters
        ("one\r\ntwo\rthree\nfour", "one\ntwo\nthree\nfour"),
        ("a  \t b\u00a0\u3000c", "a b c"),        # blank runs (incl. NBSP, ideographic) -> " "
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


def test_normalise_output_is_composed_nfkc(params):
    text = norm("cafe\u0301 naïve 한국어", params)[0]
    assert text == "café naïve 한국어"
    assert unicodedata.is_normalized("NFKC", text)


def test_normalise_turns_page_breaks_into_line_breaks(params):
    assert norm("a\x0cb\x0bc\x85d\u2028e", params)[0] == "a\nb\nc\nd\ne"


def write_raw(raw_dir: Path, texts: list[str]) -> None:
    raw_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"doc_id": [ingest.doc_id(t) for t in texts], "text": texts,
                             "source": ["test"] * len(texts)}), raw_dir / "corpus.parquet")


def run_clean(params: Params, tmp_path: Path, texts: list[str], val=0.2, test=0.2,
              seed=0, min_chars=20) -> dict:
    write_raw(tmp_path / "raw", texts)
    cfg = params.clean.model_copy(update={"min_chars": min_chars, "lowercase": False})
    split = params.split.model_copy(update={"val_fraction": val, "test_fraction": test,
                                            "seed": seed})
    return clean.run(cfg, split, tmp_path / "raw", tmp_path / "clean", tmp_path / "clean.json")


def clean_rows(tmp_path: Path) -> list[dict]:
    return [row for name in clean.SPLITS
            for row in read_rows(tmp_path / "clean" / f"{name}.parquet")]


def test_clean_run_filters_dedups_and_reports(params, tmp_path):
    base = [f"document {i}: the parser reads line {i * 7} of the file" for i in range(40)]
    extra = [
        "too short",                                     # dropped: < 20 chars
        base[0],                                         # exact duplicate
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
    assert set(summary) == {"documents_in", "characters_in", "html_tags_removed",
                            "html_entities_unescaped", "control_chars_removed",
                            "zero_width_removed", "masked_url", "masked_email", "masked_ip",
                            "masked_phone", "dropped_too_short", "dropped_too_few_words",
                            "dropped_script", "dropped_duplicates", "dropped_near_duplicates",
                            "documents_out", "characters_out", "split_documents",
                            "split_counts", "test_train_overlap"}
    assert json.loads((tmp_path / "clean.json").read_text()) == summary

    rows = clean_rows(tmp_path)
    texts = [r["text"] for r in rows]
    assert len(texts) == len(set(texts)) == 41
    assert "with a NUL and a zerowidth char in it" in texts
    assert summary["characters_out"] == sum(map(len, texts))
    assert all(r["doc_id"] == hashlib.sha256(r["text"].encode()).hexdigest()[:20] for r in rows)
    for name in clean.SPLITS:
        split_rows = read_rows(tmp_path / "clean" / f"{name}.parquet")
        assert {r["split"] for r in split_rows} == {name}
        assert len(split_rows) == summary["split_documents"][name] > 0


def test_clean_dedups_across_unicode_forms(params, tmp_path):
    # precomposed, decomposed and zero-width-split spellings are one document; this also guards
    # the rule order: removing U+200B after composing would leave 'e' + U+0301 uncomposed
    forms = ["a café on the corner of the street", "a cafe\u0301 on the corner of the street",
             "a cafe\u200b\u0301 on the corner of the street"]
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
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 8)))
             for _ in range(rng.randint(6, 15))]
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


def test_assign_split_fractions_and_seed(params):
    ids = [f"{i:020x}" for i in range(20_000)]
    split = params.split.model_copy(update={"val_fraction": 0.1, "test_fraction": 0.25, "seed": 0})
    got = splits.assign_split(ids, split)
    assert abs(got.count("val") / len(ids) - 0.1) < 0.015
    assert abs(got.count("test") / len(ids) - 0.25) < 0.015
    assert splits.assign_split(ids[:50], split) == got[:50]
    reseeded = splits.assign_split(ids, split.model_copy(update={"seed": 1}))
    assert reseeded != got  # the seed salts the hash


# --------------------------------------------------------------------------- tokenize

ENGLISH = [
    "the parser reads the header and returns a list of names.",
    "a socket opens the connection and the parser checks the buffer.",
    "each thread writes the next line to the file, then closes the file.",
    "the module caches the value the parser returned for the header.",
]
CHINESE = "机器学习是人工智能的一个分支。它使用数据来训练模型，并用模型来预测新的数据。"
UNSEEN = "xylophonequokka"


@pytest.fixture(scope="module")
def tokenized(params, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tokenize")
    texts = {
        "train": ENGLISH * 3 + [CHINESE],
        "val": ["the parser reads a file.", "模型来预测数据。"],
        "test": [f"the {UNSEEN} reads the header.", "  spaces\tand\nnewlines  kept "],
    }
    (root / "clean").mkdir()
    for name, docs in texts.items():
        pq.write_table(pa.table({"doc_id": [f"{name}{i}" for i in range(len(docs))],
                                 "text": docs, "source": ["t"] * len(docs),
                                 "split": [name] * len(docs)}),
                       root / "clean" / f"{name}.parquet")
    cfg = params.tokenize.model_copy(update={"vocab_size": 1000, "min_frequency": 1})
    summary = tokenize.run(cfg, root / "clean", root / "tokenizer.json", root / "tokens",
                           root / "tokenize.json")
    return {"root": root, "texts": texts, "summary": summary,
            "tok": Tokenizer.from_file(str(root / "tokenizer.json"))}


def test_tokenize_round_trips_and_frames_ids(tokenized):
    tok = tokenized["tok"]
    assert [tok.token_to_id(t) for t in tokenize.SPECIALS] == [PAD, UNK, BOS, EOS] == [0, 1, 2, 3]
    for name, texts in tokenized["texts"].items():
        rows = read_rows(tokenized["root"] / "tokens" / f"{name}.parquet")
        assert [r["doc_id"] for r in rows] == [f"{name}{i}" for i in range(len(texts))]
        for text, row in zip(texts, rows, strict=True):
            ids = row["ids"]
            assert ids[0] == BOS and ids[-1] == EOS
            assert BOS not in ids[1:-1] and EOS not in ids[1:-1] and UNK not in ids
            assert tok.decode(ids) == text
            assert ids == tokenize.encode(tok, [text])[0]
            assert row["n_bytes"] == len(text.encode("utf-8"))


def test_tokenize_vocab_comes_from_train_split_only(tokenized):
    tok = tokenized["tok"]
    vocab = tok.get_vocab()
    assert "Ġparser" in vocab  # a frequent train word is one token ...
    assert UNSEEN not in vocab and f"Ġ{UNSEEN}" not in vocab  # ... a test-only word is not
    assert len(tok.encode(f" {UNSEEN}").ids) > 1
    assert tokenized["summary"]["vocab_size"] == tok.get_vocab_size() <= 1000


def test_tokenize_report_counts_tokens_per_split(tokenized):
    summary = tokenized["summary"]
    assert json.loads((tokenized["root"] / "tokenize.json").read_text()) == summary
    assert set(summary["splits"]) == set(clean.SPLITS)
    for name, texts in tokenized["texts"].items():
        rows = read_rows(tokenized["root"] / "tokens" / f"{name}.parquet")
        stats = summary["splits"][name]
        assert stats["documents"] == len(texts)
        assert stats["tokens"] == sum(len(r["ids"]) for r in rows)
        assert stats["unk_rate"] == 0


def test_tokenize_without_clean_output_fails(params, tmp_path):
    with pytest.raises(GruflowError, match="run the clean stage first"):
        tokenize.run(params.tokenize, tmp_path, tmp_path / "tok.json", tmp_path / "tokens",
                     tmp_path / "report.json")


# --------------------------------------------------------------------------- embed

CLUSTER_A = list(range(4, 14))
CLUSTER_B = list(range(14, 24))
VOCAB = 40  # ids 24..39 never occur


@pytest.fixture(scope="module")
def vectors(params) -> np.ndarray:
    rng = random.Random(0)
    sentences = [[str(rng.choice(cluster)) for _ in range(12)]
                 for cluster in [CLUSTER_A, CLUSTER_B] * 150]
    cfg = params.embed.model_copy(update={"dim": 16, "window": 5, "epochs": 5, "min_count": 1})
    return embed.train_vectors(sentences, VOCAB, cfg)


def test_embed_matrix_layout(vectors):
    assert vectors.shape == (VOCAB, 16)
    assert vectors.dtype == np.float32
    assert not vectors[PAD].any()
    unseen = vectors[24:]
    assert np.isfinite(unseen).all()
    assert (np.linalg.norm(unseen, axis=1) > 0).all()  # random init, not zeros


@pytest.mark.parametrize("token", [4, 9, 15, 22])
def test_embed_neighbours_stay_in_cluster(vectors, token):
    own = CLUSTER_A if token in CLUSTER_A else CLUSTER_B
    neighbours = [i for i, _ in embed.cosine_neighbours(vectors, token, k=5)]
    assert sum(i in own for i in neighbours) >= 4, neighbours


def test_cosine_neighbours_match_numpy():
    m = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    token = 7
    got = embed.cosine_neighbours(m, token, k=29)
    assert token not in [i for i, _ in got]
    assert sorted(i for i, _ in got) == [i for i in range(30) if i != token]
    sims = [s for _, s in got]
    assert sims == sorted(sims, reverse=True)
    v = m.astype(np.float64)
    for i, sim in got:
        direct = v[i] @ v[token] / (np.linalg.norm(v[i]) * np.linalg.norm(v[token]))
        assert sim == pytest.approx(direct, abs=1e-5)


def test_embed_run_saves_matrix(params, tmp_path):
    ids = [[BOS, *[random.Random(i).choice(CLUSTER_A) for _ in range(10)], EOS]
           for i in range(50)]
    (tmp_path / "tokens").mkdir()
    pq.write_table(pa.table({"ids": pa.array(ids, pa.list_(pa.int32()))}),
                   tmp_path / "tokens" / "train.parquet")
    cfg = params.embed.model_copy(update={"dim": 8, "epochs": 1})
    summary = embed.run(cfg, tmp_path / "tokens", VOCAB, tmp_path / "emb.npy", tmp_path / "e.json")
    matrix = np.load(tmp_path / "emb.npy")
    assert matrix.shape == (VOCAB, 8) and not matrix[PAD].any()
    assert summary["mean_norm"] == pytest.approx(np.linalg.norm(matrix, axis=1).mean())


# --------------------------------------------------------------------------- windows

@pytest.mark.parametrize(("size", "seq_len"), [(2, 1), (2, 4), (9, 4), (10, 3), (17, 4), (101, 7)])
def test_make_windows_cover_every_target_once(size, seq_len):
    stream = np.arange(4, 4 + size, dtype=np.int32)
    inputs, targets, weights = windows.make_windows(stream, seq_len)

    n = math.ceil((size - 1) / seq_len)
    assert inputs.shape == targets.shape == weights.shape == (n, seq_len)
    live = weights == 1
    assert weights.sum() == size - 1
    np.testing.assert_array_equal(targets[live], stream[1:])  # each target once, in order
    np.testing.assert_array_equal(inputs[live], stream[:-1])
    assert set(np.unique(weights)) <= {0.0, 1.0}
    assert (targets[~live] == PAD).all() and (weights.ravel()[size - 1:] == 0).all()
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])  # shifted by one
    np.testing.assert_array_equal(inputs[1:, 0], targets[:-1, -1])  # windows chain up


@pytest.mark.parametrize("size", [0, 1])
def test_make_windows_needs_two_tokens(size):
    with pytest.raises(GruflowError, match="fewer than 2 tokens"):
        windows.make_windows(np.arange(size, dtype=np.int32), 4)


def test_unigram_log_probs():
    stream = np.array([7, 5, 5, 5, 2], dtype=np.int32)
    logp = windows.unigram_log_probs(stream, vocab_size=10)
    assert logp.shape == (10,)
    assert np.exp(logp.astype(np.float64)).sum() == pytest.approx(1.0, abs=1e-6)
    # add-one smoothing over targets (the first token is not a target)
    assert np.exp(logp[5]) == pytest.approx(4 / 14)
    assert np.exp(logp[7]) == pytest.approx(1 / 14)


def test_read_stream_concatenates_documents(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"ids": pa.array([[2, 5, 3], [2, 6, 7, 3]], pa.list_(pa.int32()))}),
                   path)
    stream = windows.read_stream(path)
    assert stream.dtype == np.int32
    assert stream.tolist() == [2, 5, 3, 2, 6, 7, 3]
    with pytest.raises(GruflowError, match="run the tokenize stage first"):
        windows.read_stream(tmp_path / "missing.parquet")
