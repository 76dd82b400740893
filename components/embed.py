"""Stage `embed`: skip-gram or CBOW negative-sampling word vectors over the tokenizer's vocabulary.

Usage: `python -m components.embed`. Trains gensim's optimised Word2Vec on the train split's
token-id sequences, so row i of artifacts/embeddings.npy is the vector of token id i.
Ids without a trained vector (absent from the train split, or rarer than embed.min_count) get
N(0, σ²) rows with σ the std of the trained vectors; <pad> is zero. The trained vectors are
also written in word2vec text format and as TensorBoard projector files, keyed by each
token's readable text (embedding/readable.py: "是", not its byte-level spelling "æĺ¯");
reports/embed.json holds the evaluation (embedding/quality.py).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
from gensim.models import KeyedVectors, Word2Vec
from gensim.models.callbacks import CallbackAny2Vec
from gensim.models.word2vec_inner import MAX_WORDS_IN_BATCH
from tokenizers import Tokenizer

from components.artifacts import atomic_dir, atomic_file, write_json
from components.contract import EMBED_REPORT, PAD, SPECIALS, split_file
from components.embedding.quality import (
    TokenVectors,
    cosine_neighbours,
    quality_report,
    token_lookup,
    word_token,
)
from components.embedding.readable import token_texts as readable_texts
from components.embedding.readable import unique
from components.errors import GruflowError, guarded
from components.params import Embed, Params, load_params
from components.sizing import sized_params

log = logging.getLogger(__name__)

__all__ = ["run", "similar", "train_vectors"]


@dataclass(frozen=True)
class Exports:
    """What the full stage adds to the matrix: token names, word2vec text, projector files."""

    tokenizer: Tokenizer
    word2vec: Path
    projector: Path


def stable_hash(text: str) -> int:
    """Deterministic replacement for Python's salted `hash` (gensim seeds vectors with it)."""
    return int.from_bytes(hashlib.md5(text.encode()).digest()[:4], "little")


def read_sentences(path: Path, vocab_size: int) -> list[list[str]]:
    """Token-id sequences as strings, in memory (gensim makes several passes; streaming the
    Parquet file on every pass costs ~13% throughput). Sequences are cut into pieces of at most
    MAX_WORDS_IN_BATCH tokens, because gensim silently drops the rest of a longer one."""
    names = [str(i) for i in range(vocab_size)]  # one shared str per id, not one per token
    sentences = []
    try:
        # one thread: batches arrive in file order, so sentences (and vectors) keep one order
        for batch in ds.dataset(path).to_batches(columns=["ids"], use_threads=False):
            for ids in batch.column("ids").to_pylist():
                for start in range(0, len(ids), MAX_WORDS_IN_BATCH):
                    sentences.append([names[i] for i in ids[start : start + MAX_WORDS_IN_BATCH]])
    except IndexError:
        raise GruflowError(
            f"{path}: token ids beyond the tokenizer's {vocab_size} — the tokens "
            "are stale; rerun the tokenize stage"
        ) from None
    return sentences


def word2vec_settings(cfg: Embed) -> dict:
    """gensim Word2Vec keyword arguments for `cfg` (negative sampling, no hierarchical softmax)."""
    return {
        "vector_size": cfg.dim,
        "window": cfg.window,
        "negative": cfg.negatives,
        "hs": 0,
        "sg": 1 if cfg.algorithm == "skipgram" else 0,
        "sample": cfg.subsample,
        "min_count": cfg.min_count,
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "workers": cfg.workers,
        "hashfxn": stable_hash,
    }


def fit_word2vec(sentences: list[list[str]], cfg: Embed) -> KeyedVectors:
    """Build the vocabulary, check the corpus can train, then train (as Word2Vec(sentences))."""
    w2v = Word2Vec(**word2vec_settings(cfg))
    w2v.build_vocab(sentences)
    if w2v.corpus_total_words < cfg.window + 1:
        raise GruflowError(
            f"embed: the train split has {w2v.corpus_total_words} tokens, fewer "
            f"than embed.window + 1 ({cfg.window + 1}) — lower embed.window "
            "or add text"
        )
    if len(w2v.wv) == 0:
        raise GruflowError("embed: no token reached embed.min_count — lower it or add text")
    w2v.train(
        sentences,
        total_examples=w2v.corpus_count,
        total_words=w2v.corpus_total_words,
        epochs=w2v.epochs,
        callbacks=[EpochLines(w2v.epochs)],
    )
    return w2v.wv


class EpochLines(CallbackAny2Vec):
    """A console line per Word2Vec epoch with the time left at the pace so far (gensim's own
    progress is DEBUG/INFO logging, off by default). Console only: the vectors do not change."""

    def __init__(self, epochs: int, clock=time.monotonic) -> None:
        self.epochs, self.clock, self.done, self.start = epochs, clock, 0, 0.0

    def on_train_begin(self, model) -> None:
        self.start = self.clock()

    def on_epoch_end(self, model) -> None:
        self.done += 1
        elapsed = self.clock() - self.start
        left = elapsed / self.done * (self.epochs - self.done)
        print(
            f"embed: epoch {self.done}/{self.epochs} ({elapsed:.0f} s, ~{left:.0f} s left)",
            flush=True,
        )


def align(wv: KeyedVectors, vocab_size: int, seed: int) -> np.ndarray:
    """[vocab_size, dim] float32 matrix, row i = token id i; rows without a vector: N(0, σ²)."""
    rng = np.random.default_rng(seed)
    sigma = float(wv.vectors.std())
    matrix = rng.normal(0.0, sigma, size=(vocab_size, wv.vector_size)).astype(np.float32)
    matrix[[int(k) for k in wv.index_to_key]] = wv.vectors
    matrix[PAD] = 0.0
    return matrix


def train_vectors(sentences: list[list[str]], vocab_size: int, cfg: Embed) -> np.ndarray:
    """Return a [vocab_size, dim] float32 matrix aligned to token ids."""
    return align(fit_word2vec(sentences, cfg), vocab_size, cfg.seed)


def token_texts(tokenizer: Tokenizer) -> dict[str, str]:
    """Token name -> its readable, unique text ("Ġreturn" -> " return", "æĺ¯" -> "是";
    specials stay "<bos>"; a partial character shows escaped bytes, "\\xe6")."""
    texts = readable_texts(tokenizer)
    return {tokenizer.id_to_token(i): text for i, text in enumerate(texts)}


def w2v_keys(texts: dict[str, str]) -> dict[str, str]:
    """Token name -> its word2vec key: the readable text with whitespace escaped (w2v_key),
    unique over the whole vocabulary (a clash gets "#<id>"), so keys map back to tokens."""
    names = list(texts)
    keys = unique([w2v_key(texts[name]) for name in names])
    return dict(zip(names, keys, strict=True))


def escape(text: str) -> str:
    """One TSV cell: backslash, tab, newline and carriage return written as escapes."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def w2v_key(token: str) -> str:
    """A token's text as a word2vec key, which may hold no whitespace: blanks are written
    escaped (" return" -> "\\sreturn", "\\n" -> "\\n")."""
    if not any(ch.isspace() for ch in token):
        return token
    named = {" ": "\\s", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
    return "".join(named.get(ch, f"\\u{ord(ch):04x}") if ch.isspace() else ch for ch in token)


def write_word2vec(path: Path, table: TokenVectors, keys: dict[str, str]) -> None:
    """The C word2vec text format: a `count dim` header, then `key v1 ... vdim` per line."""
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        f.write(f"{len(table.names)} {table.vectors.shape[1]}\n")
        for name, row in zip(table.names, table.vectors, strict=True):
            f.write(f"{keys[name]} {' '.join(map(str, row))}\n")  # str(float32): exact


def write_projector(
    folder: Path, table: TokenVectors, texts: dict[str, str], ids: list[int], counts: list[int]
) -> None:
    """TensorBoard Embedding Projector files: vectors.tsv and metadata.tsv (with a header)."""
    with atomic_dir(folder) as tmp:
        np.savetxt(tmp / "vectors.tsv", table.vectors, fmt="%.6g", delimiter="\t")
        rows = [
            f"{escape(texts[n])}\t{i}\t{c}"
            for n, i, c in zip(table.names, ids, counts, strict=True)
        ]
        (tmp / "metadata.tsv").write_text(
            "token\tid\tcount\n" + "\n".join(rows) + "\n", encoding="utf-8"
        )


def export(wv: KeyedVectors, exports: Exports, cfg: Embed) -> dict:
    """Write the word2vec and projector files of the trained vectors; return their evaluation."""
    ids = [int(k) for k in wv.index_to_key]  # most frequent first
    table = TokenVectors([exports.tokenizer.id_to_token(i) for i in ids], wv.vectors)
    texts = token_texts(exports.tokenizer)
    # may fail: write after
    counts = [int(wv.get_vecattr(k, "count")) for k in wv.index_to_key]
    report = quality_report(table, token_lookup(texts, texts), cfg, texts, counts)
    write_word2vec(exports.word2vec, table, w2v_keys(texts))
    write_projector(exports.projector, table, texts, ids, counts)
    return report


def run(
    cfg: Embed,
    tokens_dir: Path,
    vocab_size: int,
    out: Path,
    report: Path,
    *,
    exports: Exports | None = None,
) -> dict:
    """Train, save the aligned matrix and the report; with `exports`, also export and evaluate."""
    train = split_file(tokens_dir, "train")
    if not train.is_file():
        raise GruflowError(f"{train}: missing — run the tokenize stage first")
    sentences = read_sentences(train, vocab_size)
    t0 = time.perf_counter()
    wv = fit_word2vec(sentences, cfg)
    seconds = time.perf_counter() - t0
    matrix = align(wv, vocab_size, cfg.seed)
    words = sum(len(s) for s in sentences)
    summary = {
        "algorithm": cfg.algorithm,
        "vocab_size": vocab_size,
        "dim": cfg.dim,
        "train_tokens": words,
        "trained_tokens": len(wv),
        "coverage": round(len(wv) / vocab_size, 4),
        "mean_norm": float(np.linalg.norm(matrix, axis=1).mean()),
    }
    if exports is not None:
        summary |= export(wv, exports, cfg)
    with atomic_file(out) as tmp:
        np.save(tmp, matrix)
    write_json(report, summary, text=True)
    # Speed is shown, never written: reports/embed.json is a DVC output and must not depend on
    # how busy the machine was.
    return summary | {"words_per_second": round(words * cfg.epochs / seconds, 1)}


def similar(word: str, k: int, params: Params, root: Path = Path(".")) -> list[tuple[str, float]]:
    """The k tokens nearest to `word` by cosine similarity, from the current word2vec file."""
    if k < 1:
        raise GruflowError(f"-k {k}: ask for at least one neighbour")
    paths = params.paths
    tok_path, w2v_path = root / paths.tokenizer, root / paths.word2vec
    for path in (tok_path, w2v_path):
        if not path.is_file():
            raise GruflowError(f"{path}: missing — run `gruflow run` (or `dvc repro embed`) first")
    tokenizer = Tokenizer.from_file(str(tok_path))
    texts = token_texts(tokenizer)
    kv = KeyedVectors.load_word2vec_format(str(w2v_path))
    tokens = {key: name for name, key in w2v_keys(texts).items()}
    table = TokenVectors([tokens.get(key, key) for key in kv.index_to_key], kv.vectors)
    token = word_token(word, token_lookup(texts, texts))
    if token is None:
        raise GruflowError(
            f"'{word}' is not a single token of {paths.tokenizer} — try another "
            f"word, or a token listed in {paths.projector}/metadata.tsv"
        )
    if token not in table.index:
        raise GruflowError(
            f"'{word}' (token {token!r}) has no trained vector: it occurs fewer "
            "than embed.min_count times in the train split — try another word"
        )
    return [
        (texts.get(table.names[r], table.names[r]), sim)
        for r, sim in cosine_neighbours(table.vectors, table.index[token], k)
    ]


@guarded
def main() -> None:
    p = sized_params(load_params())  # model.size auto: embed.dim = auto's embedding_dim
    if not Path(p.paths.tokenizer).is_file():
        raise GruflowError(f"{p.paths.tokenizer}: missing — run the tokenize stage first")
    tokenizer = Tokenizer.from_file(p.paths.tokenizer)
    exports = Exports(tokenizer, Path(p.paths.word2vec), Path(p.paths.projector))
    s = run(
        p.embed,
        Path(p.paths.tokens),
        tokenizer.get_vocab_size(),
        Path(p.paths.embeddings),
        Path(p.paths.reports) / EMBED_REPORT,
        exports=exports,
    )
    pairs = s["word_pairs"]
    rho = pairs["spearman"]
    said = (
        f"word pairs skipped ({pairs['reason']})"
        if not pairs["used"]
        else f"word-pair Spearman {'n/a' if rho is None else f'{rho:.3f}'} ({pairs['oov']} of "
        f"{pairs['pairs']} pairs out of vocabulary)"
    )
    print(
        f"embed: {s['algorithm']} {s['vocab_size']} x {s['dim']} vectors "
        f"({s['trained_tokens']} trained, {s['words_per_second']:.0f} words/s); {said}; "
        f"probes ({s['probes']['source']}, {s['main_script']}): "
        f"{' '.join(s['probes']['words']) or 'none'}"
    )


if __name__ == "__main__":
    main()


def similar_in_matrix(
    word: str, k: int, matrix: np.ndarray, tokenizer: Tokenizer
) -> list[tuple[str, float]]:
    """The k tokens nearest to `word` in any id-aligned matrix (e.g. a registered model's
    embedding layer); the special tokens (ids 0..4) are left out."""
    if k < 1:
        raise GruflowError(f"-k {k}: ask for at least one neighbour")
    texts = token_texts(tokenizer)
    token = word_token(word, token_lookup(texts, texts))
    if token is None:
        raise GruflowError(
            f"'{word}' is not a single token of this model's tokenizer — try another word"
        )
    first = len(SPECIALS)
    names = [tokenizer.id_to_token(i) for i in range(first, matrix.shape[0])]
    table = TokenVectors(names, np.asarray(matrix[first:], dtype=np.float32))
    return [
        (texts[table.names[r]], sim)
        for r, sim in cosine_neighbours(table.vectors, table.index[token], k)
    ]
