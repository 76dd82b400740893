"""`model.size: auto`: vocabulary, embedding, GRU units and layers from the corpus and the
training budget (README "Model size": the rule and the measurements behind it).

Usage: `p = sized_params(load_params())` in a stage that reads the token files;
`resolve_size(p, train_bytes)` where only the clean text exists (tokenize). With
`model.size: explicit` both return `p` unchanged. A pure function of counts — the train split's
UTF-8 bytes, for a fixed budget of REF_EPOCHS epochs — never of time, load or cores, so DVC can
vouch for its choice.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.contract import split_file
from components.errors import GruflowError
from components.params import Params, parse_params

# The reference point: the built-in corpus (1.83 MB of train text; the band below keeps its
# sizes from 1 to 4 MiB, whichever Python's docs it was built from) at params.yaml's budget.
REF_BYTES = 2**21
# The budget auto sizes for, in epochs of the train split. Fixed, not train.epochs: the stages
# that use the size (tokenize, embed, tune) would otherwise depend on train.epochs in dvc.yaml
# (DVC's params are static), so every change of it would rerun them, even with explicit sizes.
REF_EPOCHS = 4
REF = {"vocab_size": 4000, "embedding_dim": 64, "units": 128}
# Units never go below the reference: on train subsets of 40k and 130k tokens, 64 units lost to
# 128 at the same budget (README "Model size"). Vocabulary and embedding do shrink (Heaps' law:
# fewer distinct words in less text; not measured here).
LIMITS = {"vocab_size": (1000, 32000), "embedding_dim": (32, 512), "units": (128, 1024)}
TWO_LAYERS_ABOVE = 512  # units: a corpus that asks for more width gets a second layer
SUBWORD = ("bpe", "unigram", "wordpiece")  # word/char vocabularies follow the text, not a rule


@dataclass(frozen=True)
class Size:
    vocab_size: int
    embedding_dim: int
    units: int
    gru_layers: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def doublings(ratio: float) -> int:
    """Whole doublings of a size that grows with the square root of `ratio` (4x the text,
    2x the size), rounded half away from zero: within 2x of the reference, no change."""
    x = 0.5 * math.log2(ratio)
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def _scaled(key: str, steps: int) -> int:
    low, high = LIMITS[key]
    return int(min(max(REF[key] * 2.0**steps, low), high))


def choose_size(train_bytes: int, epochs: int) -> Size:
    """Vocabulary and embedding follow the text (train bytes D): REF x 2^round(log4(D/2 MiB));
    units follow the text seen in training (D x epochs): 128 x 2^round(log4(D E / 8 MiB));
    each clamped to LIMITS. More than TWO_LAYERS_ABOVE units become two GRU layers of half."""
    if train_bytes <= 0 or epochs <= 0:
        raise ValueError(f"train_bytes ({train_bytes}) and epochs ({epochs}) must be positive")
    data = doublings(train_bytes / REF_BYTES)
    seen = doublings(train_bytes * epochs / (REF_BYTES * REF_EPOCHS))
    units = _scaled("units", seen)
    layers = 2 if units > TWO_LAYERS_ABOVE else 1
    return Size(
        vocab_size=_scaled("vocab_size", data),
        embedding_dim=_scaled("embedding_dim", data),
        units=units // layers,
        gru_layers=layers,
    )


def resolve_size(p: Params, train_bytes: int) -> Params:
    """`p` with auto's sizes in model.*, embed.dim (kept equal to model.embedding_dim) and, for
    subword tokenizers, tokenize.vocab_size; validated again like params.yaml."""
    if p.model.size != "auto":
        return p
    s = choose_size(train_bytes, REF_EPOCHS)
    raw = p.model_dump()
    raw["model"] |= {"embedding_dim": s.embedding_dim, "units": s.units, "gru_layers": s.gru_layers}
    raw["embed"]["dim"] = s.embedding_dim
    if p.tokenize.kind in SUBWORD:
        raw["tokenize"]["vocab_size"] = s.vocab_size
    return parse_params(raw, f"model.size auto ({train_bytes} train bytes)")


def size_report(p: Params, train_bytes: int) -> dict:
    """What a stage's report says about the sizes: the mode, and auto's inputs and choice."""
    if p.model.size != "auto":
        return {"mode": "explicit"}
    s = choose_size(train_bytes, REF_EPOCHS)
    vocab = s.vocab_size if p.tokenize.kind in SUBWORD else p.tokenize.vocab_size
    return {
        "mode": "auto",
        "train_bytes": train_bytes,
        "epochs": REF_EPOCHS,
        **s.as_dict(),
        "vocab_size": vocab,
    }


def clean_train_bytes(clean_dir: Path) -> int:
    """UTF-8 bytes of the clean train split's text (what tokenize counts as n_bytes)."""
    path = split_file(clean_dir, "train")
    if not path.is_file():
        raise GruflowError(f"{path}: missing — run the clean stage first")
    total = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=["text"]):
        total += pc.sum(pc.binary_length(batch.column("text"))).as_py() or 0
    return total


def token_train_bytes(tokens_dir: Path) -> int:
    """The same count from the token files (their n_bytes column), for the later stages."""
    path = split_file(tokens_dir, "train")
    if not path.is_file():
        raise GruflowError(
            f"{path}: missing — run the tokenize stage first (model.size auto sizes from it)"
        )
    return int(pc.sum(pq.read_table(path, columns=["n_bytes"]).column("n_bytes")).as_py() or 0)


def sized_params(p: Params, root: Path = Path(".")) -> Params:
    """`p` with auto's sizes for the train split in paths.tokens; `p` itself when explicit."""
    if p.model.size != "auto":
        return p
    return resolve_size(p, token_train_bytes(root / p.paths.tokens))
