"""Stage `tokenize` on a tiny cleaned corpus: framing, round trips, vocabulary, report."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from components import tokenize
from components.contract import BOS, EOS, MASK, PAD, SPECIALS, SPLITS, UNK, encode
from components.errors import GruflowError


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


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
        pq.write_table(
            pa.table(
                {
                    "doc_id": [f"{name}{i}" for i in range(len(docs))],
                    "text": docs,
                    "source": ["t"] * len(docs),
                    "split": [name] * len(docs),
                }
            ),
            root / "clean" / f"{name}.parquet",
        )
    cfg = params.tokenize.model_copy(update={"vocab_size": 1000, "min_frequency": 1})
    summary = tokenize.run(
        cfg, root / "clean", root / "tokenizer.json", root / "tokens", root / "tokenize.json"
    )
    return {
        "root": root,
        "texts": texts,
        "summary": summary,
        "tok": Tokenizer.from_file(str(root / "tokenizer.json")),
    }


def test_tokenize_round_trips_and_frames_ids(tokenized):
    tok = tokenized["tok"]
    assert [tok.token_to_id(t) for t in SPECIALS] == [PAD, UNK, BOS, EOS, MASK] == [0, 1, 2, 3, 4]
    for name, texts in tokenized["texts"].items():
        rows = read_rows(tokenized["root"] / "tokens" / f"{name}.parquet")
        assert [r["doc_id"] for r in rows] == [f"{name}{i}" for i in range(len(texts))]
        for text, row in zip(texts, rows, strict=True):
            ids = row["ids"]
            assert ids[0] == BOS and ids[-1] == EOS
            assert BOS not in ids[1:-1] and EOS not in ids[1:-1] and UNK not in ids
            assert tok.decode(ids) == text
            assert ids == encode(tok, [text])[0]
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
    assert set(summary["splits"]) == set(SPLITS)
    for name, texts in tokenized["texts"].items():
        rows = read_rows(tokenized["root"] / "tokens" / f"{name}.parquet")
        stats = summary["splits"][name]
        assert stats["documents"] == len(texts)
        assert stats["tokens"] == sum(len(r["ids"]) for r in rows)
        assert stats["unk_rate"] == 0


def test_tokenize_without_clean_output_fails(params, tmp_path):
    with pytest.raises(GruflowError, match="run the clean stage first"):
        tokenize.run(
            params.tokenize,
            tmp_path,
            tmp_path / "tok.json",
            tmp_path / "tokens",
            tmp_path / "report.json",
        )
