"""tokenize.pre_tokenizer: whitespace keeps each whitespace-separated token of pre-tokenized
text whole for the word tokenizer, and a token equal to tokenize.unk_marker is <unk>."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components import tokenize
from components.contract import BOS, EOS, SPECIALS, UNK, encode

LINES = ["don 't stop <unk> now .", "we do n't stop @@UNK@@ here .", "stop , don 't go now ."]


def word_cfg(params, **update):
    return params.tokenize.model_copy(
        update={"kind": "word", "min_frequency": 1, "vocab_size": 100, **update}
    )


@pytest.mark.parametrize("marker", ["<unk>", "@@UNK@@"])
def test_whitespace_keeps_tokens_whole_and_maps_the_marker_to_unk(params, marker):
    tok = tokenize.train_tokenizer(
        iter(LINES * 2), word_cfg(params, pre_tokenizer="whitespace", unk_marker=marker)
    )
    vocab = tok.get_vocab()
    assert {"don", "'t", "n't", "stop", "now", ".", ","} <= set(vocab)
    assert not {"<", ">", "unk", "t", marker} & (set(vocab) - set(SPECIALS))
    ids = encode(tok, [f"don 't stop {marker} now ."])[0]
    assert ids == [
        BOS,
        vocab["don"],
        vocab["'t"],
        vocab["stop"],
        UNK,
        vocab["now"],
        vocab["."],
        EOS,
    ]
    assert tok.decode(ids) == "don 't stop now ."  # tokens joined by single spaces
    assert encode(tok, ["<unk>"])[0] == [BOS, UNK, EOS]  # the literal special, too


def test_default_pre_tokenizer_splits_punctuation_off(params):
    tok = tokenize.train_tokenizer(iter(LINES * 2), word_cfg(params))
    tokens = tok.encode("don 't stop <unk> now .", add_special_tokens=False).tokens
    assert len(tokens) > 6 and "'t" not in tokens  # the word kind re-splits "'t"


def test_stage_counts_marker_tokens_as_unk(params, tmp_path):
    (tmp_path / "clean").mkdir()
    for split, texts in {
        "train": LINES * 3,
        "val": LINES[:1],
        "test": ["stop @@UNK@@ now ."],
    }.items():
        pq.write_table(
            pa.table(
                {
                    "doc_id": [str(i) for i in range(len(texts))],
                    "text": texts,
                    "source": ["t"] * len(texts),
                    "split": [split] * len(texts),
                }
            ),
            tmp_path / "clean" / f"{split}.parquet",
        )
    cfg = word_cfg(params, pre_tokenizer="whitespace", unk_marker="@@UNK@@")
    summary = tokenize.run(
        cfg,
        tmp_path / "clean",
        tmp_path / "tok.json",
        tmp_path / "tokens",
        tmp_path / "tokenize.json",
    )
    assert summary["splits"]["test"] == {"documents": 1, "tokens": 6, "unk_rate": 1 / 6}
    ids = pq.read_table(tmp_path / "tokens" / "test.parquet")["ids"].to_pylist()[0]
    assert ids[2] == UNK
