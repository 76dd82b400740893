"""What the stages hand each other: special tokens, split names and files, report names, the
live-logging switch, and how a document is framed as token ids.

Usage: `from components.contract import PAD, SPLITS, split_file`. Every stage, helper and flow
takes these from here, so no module imports a stage module for a constant, and a name changed
here changes everywhere (dvc.yaml lists this file for every stage that imports it).
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa

# ids 0..4, in this order. <mask> (the masked-LM objective's hidden position) came last so
# that the ids of the first four stayed what they were.
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>", "<mask>")
PAD, UNK, BOS, EOS, MASK = range(5)

SPLITS = ("train", "val", "test")

# Bits per byte divide by the document's UTF-8 bytes plus one for its <eos>: the model is
# scored on predicting the end of the text, so the end counts as one byte (like a newline).
EOS_BYTES = 1

# The Prefect flow sets this to a stage's MLflow run id to have the stage log live
# (train epochs, tune trials); without it a stage never touches MLflow (components/live_log.py).
LIVE_RUN_ENV = "GRUFLOW_MLFLOW_RUN_ID"

# Report files under paths.reports, by the stage that writes them (dvc.yaml names the same).
INGEST_REPORT = "ingest.json"
CLEAN_REPORT = "clean.json"
PROFILE_REPORT, PROFILE_PLOT = "data_profile.json", "data_profile.svg"
TOKENIZE_REPORT = "tokenize.json"
EMBED_REPORT = "embed.json"
TUNE_REPORT = "tune.json"
TUNE_PLOTS = ("tune_history.png", "tune_importance.png")
TRAIN_REPORT, TRAIN_HISTORY, MODEL_SUMMARY = "train.json", "train_history.csv", "model_summary.txt"
TENSORBOARD = "tensorboard"
METRICS_REPORT, SAMPLES, PLOTS_DIR = "metrics.json", "samples.md", "plots"
# The only DVC `metrics:` file. `dvc metrics show` prints one column per key of every metrics
# file, so the full reports (metrics.json, train.json, ...) are plain outputs and this holds a
# few headline keys of metrics.json: the table stays under 100 columns (test_git_hygiene.py).
HEADLINE_REPORT = "headline.json"
HEADLINE_KEYS = ("perplexity", "bits_per_byte", "word_perplexity", "bigram_perplexity")
MASKED_HEADLINE_KEYS = ("masked_perplexity", "masked_accuracy", "masked_top5_accuracy")
FINETUNE_REPORT, FINETUNE_PLOT = "finetune.json", "finetune_confusion.png"  # under PLOTS_DIR


def headline(metrics: dict) -> dict:
    """The headline keys of evaluate's metrics.json (causal or masked), values unchanged."""
    keys = MASKED_HEADLINE_KEYS if "masked_perplexity" in metrics else HEADLINE_KEYS
    return {k: metrics[k] for k in keys if k in metrics}


def split_file(folder: str | Path, split: str) -> Path:
    """The Parquet file of one split in a stage's output folder (clean, tokens)."""
    return Path(folder) / f"{split}.parquet"


def text_bytes(text: str) -> int:
    """The bytes bits-per-byte divides by for one document: its UTF-8 plus its <eos>."""
    return len(text.encode("utf-8")) + EOS_BYTES


def encode(tok, texts: list[str]) -> list[list[int]]:
    """Token ids of each text framed as <bos> ... <eos>, as Python lists."""
    return encode_ids(tok, texts).to_pylist()


def encode_ids(tok, texts: list[str]) -> pa.ListArray:
    """Token ids of each text framed as <bos> ... <eos>, as an Arrow list<int32> array (batch
    encoding runs in parallel; the framing is done with numpy, not per-document lists)."""
    ids = [enc.ids for enc in tok.encode_batch_fast(texts, add_special_tokens=False)]
    lengths = np.fromiter((len(x) + 2 for x in ids), np.int64, count=len(ids))
    offsets = np.zeros(len(ids) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.empty(offsets[-1], np.int32)
    inner = np.ones(offsets[-1], bool)
    inner[offsets[:-1]] = inner[offsets[1:] - 1] = False
    values[offsets[:-1]], values[offsets[1:] - 1] = BOS, EOS
    values[inner] = np.fromiter(chain.from_iterable(ids), np.int32, count=int(inner.sum()))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))
