"""Stage `tokenize`: train a tokenizer (bpe/unigram/wordpiece/word/char) on train, write ids.

Usage: `python -m components.tokenize`. Outputs tokenizer.json, data/tokens/{split}.parquet
(doc_id, ids: list<int32> framed as <bos> ... <eos>) and reports/tokenize.json.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from components.artifacts import atomic_dir, atomic_file, parquet_batches, write_json
from components.contract import (
    SPECIALS,
    SPLITS,
    TOKENIZE_REPORT,
    UNK,
    encode_ids,
    split_file,
)
from components.errors import GruflowError, guarded
from components.params import Tokenize, load_params
from components.sizing import clean_train_bytes, resolve_size, size_report

SCHEMA = pa.schema(
    [("doc_id", pa.string()), ("ids", pa.list_(pa.int32())), ("n_bytes", pa.int64())]
)
BATCH_DOCS = 2048
# Scripts written without spaces: each character is its own pre-token, so a Chinese paragraph
# is not one giant "word" (bounded training memory, and merges stay meaningful).
CJK = Regex(r"[\p{Han}\p{Hiragana}\p{Katakana}]")
# WordPiece marks word-inner pieces; this character is outside the byte-level alphabet, so it
# cannot clash with text (unlike the usual "##", common in code comments).
CONTINUATION = "\u2581"
BYTES = 256  # size of the byte-level alphabet


def _byte_level() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(CJK, behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )


def _wordpiece(vocab: dict[str, int] | None = None) -> models.WordPiece:
    return models.WordPiece(
        vocab,
        unk_token="<unk>",
        continuing_subword_prefix=CONTINUATION,
        max_input_chars_per_word=10_000,
    )


def build_tokenizer(cfg: Tokenize) -> tuple[Tokenizer, trainers.Trainer]:
    """An untrained tokenizer of `cfg.kind` and its trainer. Subword kinds work on bytes, so
    any text encodes without <unk> and decodes back exactly; word and char kinds map unseen
    words or characters to <unk>."""
    common = {
        "vocab_size": cfg.vocab_size,
        "min_frequency": cfg.min_frequency,
        "special_tokens": list(SPECIALS),
        "show_progress": False,
    }
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if cfg.kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(initial_alphabet=alphabet, **common)
    elif cfg.kind == "unigram":
        tok = Tokenizer(models.Unigram())
        common.pop("min_frequency")  # unigram prunes by likelihood, not by count
        trainer = trainers.UnigramTrainer(unk_token="<unk>", initial_alphabet=alphabet, **common)
    elif cfg.kind == "wordpiece":
        tok = Tokenizer(_wordpiece())
        trainer = trainers.WordPieceTrainer(
            initial_alphabet=alphabet, continuing_subword_prefix=CONTINUATION, **common
        )
    elif cfg.kind == "word":
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        trainer = trainers.WordLevelTrainer(**common)
        if cfg.pre_tokenizer == "whitespace":  # pre-tokenized text: a token is what the blanks
            tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # delimit, joined by spaces
            return tok, trainer
    else:  # char: every Unicode character is a token, joined back without separators
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        return tok, trainers.WordLevelTrainer(**common)
    tok.pre_tokenizer = _byte_level()
    tok.decoder = (
        decoders.Sequence([decoders.Replace(CONTINUATION, ""), decoders.ByteLevel()])
        if cfg.kind == "wordpiece"
        else decoders.ByteLevel()
    )
    return tok, trainer


def train_tokenizer(texts: Iterator[str], cfg: Tokenize) -> Tokenizer:
    """Train on the given texts; the specials are ids 0..4 (<pad> <unk> <bos> <eos> <mask>)."""
    if cfg.kind == "wordpiece" and cfg.vocab_size > 2 * BYTES:
        cfg = cfg.model_copy(update={"vocab_size": cfg.vocab_size - BYTES})  # room for _complete
    tok, trainer = build_tokenizer(cfg)
    if cfg.pre_tokenizer == "whitespace":
        texts = without_markers(texts, cfg.unk_marker)
    # The unigram trainer's EM sums float scores in rayon's work-stealing order, which follows
    # thread scheduling; the other trainers count integers (order-free). tokenizers reads
    # TOKENIZERS_PARALLELISM on every call, so only this training runs on one thread.
    single = cfg.kind == "unigram"
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    if single:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        tok.train_from_iterator(texts, trainer=trainer)
    finally:
        if single:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
            if saved is not None:
                os.environ["TOKENIZERS_PARALLELISM"] = saved
    if cfg.kind == "wordpiece":
        _complete_wordpiece(tok)
    if [tok.token_to_id(t) for t in SPECIALS] != list(range(len(SPECIALS))):
        raise GruflowError(
            f"tokenize: {cfg.kind} tokenizer did not place {SPECIALS} at ids 0..{len(SPECIALS) - 1}"
        )
    return tok


def without_markers(texts: Iterator[str], marker: str) -> Iterator[str]:
    """Training text without the tokens that must stay out of the vocabulary: the unknown-word
    marker (so that encoding maps it to <unk>, as a word the vocabulary lacks) and the special
    tokens written out (counted as words, they would displace the specials' ids 0..4)."""
    drop = "|".join(re.escape(t) for t in [*SPECIALS, *([marker] if marker else [])])
    pattern = re.compile(rf"(?<!\S)(?:{drop})(?!\S)")
    for text in texts:
        yield pattern.sub(" ", text)


def _complete_wordpiece(tok: Tokenizer) -> None:
    """Give every byte a word-inner piece, so byte-level WordPiece spells any word (e.g.
    Chinese unseen in train) from bytes instead of mapping the whole word to <unk>."""
    vocab = tok.get_vocab()
    missing = [
        CONTINUATION + c
        for c in pre_tokenizers.ByteLevel.alphabet()
        if CONTINUATION + c not in vocab
    ]
    if missing:
        vocab.update({piece: len(vocab) + i for i, piece in enumerate(sorted(missing))})
        tok.model = _wordpiece(vocab)


def training_texts(path: Path, max_bytes: int, seen: dict[str, int]) -> Iterator[str]:
    """The train split's texts the tokenizer learns from: all of them, or, when the text column
    holds more than `max_bytes`, every k-th row group (spread evenly over the split, the same
    on every run) until `max_bytes`. `seen` counts what was used."""
    meta = pq.read_metadata(path)
    column = meta.schema.names.index("text")
    size = sum(
        meta.row_group(i).column(column).total_uncompressed_size for i in range(meta.num_row_groups)
    )
    stride = max(1, -(-size // max_bytes)) if max_bytes else 1
    for batch in parquet_batches(path, ["text"], BATCH_DOCS, range(0, meta.num_row_groups, stride)):
        if max_bytes and seen["bytes"] >= max_bytes:
            return
        text = batch.column("text")
        seen["documents"] += len(text)
        seen["bytes"] += pc.sum(pc.binary_length(text)).as_py() or 0
        yield from text.to_pylist()


def run(
    cfg: Tokenize,
    clean_dir: Path,
    tokenizer_path: Path,
    out_dir: Path,
    report: Path,
    size: dict | None = None,
) -> dict:
    """`size`: what model.size decided (components/sizing.py), recorded in the report."""
    train_file = split_file(clean_dir, "train")
    if not train_file.is_file():
        raise GruflowError(f"{train_file}: missing — run the clean stage first")
    seen = {"documents": 0, "bytes": 0}
    tok = train_tokenizer(training_texts(train_file, cfg.train_max_bytes, seen), cfg)
    summary: dict = {"vocab_size": tok.get_vocab_size(), "splits": {}, "trained_on": seen}
    if size is not None:
        summary["size"] = size
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            n_docs = n_tokens = n_unk = 0
            with pq.ParquetWriter(split_file(tmp, split), SCHEMA, compression="zstd") as writer:
                for batch in parquet_batches(
                    split_file(clean_dir, split), ["doc_id", "text"], BATCH_DOCS
                ):
                    text = batch.column("text")
                    ids = encode_ids(tok, text.to_pylist())
                    flat = ids.values.to_numpy()
                    n_docs += len(ids)
                    n_tokens += len(flat)
                    n_unk += int((flat == UNK).sum())
                    n_bytes = pc.cast(pc.binary_length(text), pa.int64())
                    writer.write_table(
                        pa.table([batch.column("doc_id"), ids, n_bytes], schema=SCHEMA)
                    )
            summary["splits"][split] = {
                "documents": n_docs,
                "tokens": n_tokens,
                "unk_rate": n_unk / max(n_tokens, 1),
            }
        with atomic_file(tokenizer_path) as tmp_tok:
            tok.save(str(tmp_tok))
    write_json(report, summary)
    return summary


@guarded
def main() -> None:
    p = load_params()
    train_bytes = clean_train_bytes(Path(p.paths.clean)) if p.model.size == "auto" else 0
    size = size_report(p, train_bytes)
    p = resolve_size(p, train_bytes)
    if size["mode"] == "auto":
        print(f"tokenize: model.size auto for {train_bytes} train bytes: {size}")
    s = run(
        p.tokenize,
        Path(p.paths.clean),
        Path(p.paths.tokenizer),
        Path(p.paths.tokens),
        Path(p.paths.reports) / TOKENIZE_REPORT,
        size,
    )
    counts = ", ".join(f"{k} {v['tokens']}" for k, v in s["splits"].items())
    print(f"tokenize: vocabulary {s['vocab_size']}; tokens {counts}")


if __name__ == "__main__":
    main()
