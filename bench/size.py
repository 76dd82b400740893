"""Calibration of `model.size: auto` (components/sizing.py): test bits per byte of a few model
sizes on train subsets of different sizes, under one training budget (README "Model size").

Usage: `python -m bench.size [--train-tokens 50000,150000,0] [--epochs 2]
[--sizes 64x1,128x1,256x1]` -> reports/bench/size.json (--out): one row per (subset, size):
train tokens and bytes of the subset, the size (units x layers; vocabulary and embedding are
the tokenize and embed stages' outputs), what `auto` picks for that subset and budget, test bits
per byte (the evaluate stage's scoring, the whole test split), CPU seconds and the load average.
Subsets are whole documents picked as the tune stage picks its sample. Not part of `make bench`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.quality import gruflow_row, read_data, with_value
from components.artifacts import write_json
from components.contract import split_file
from components.params import load_params
from components.sizing import REF_EPOCHS, choose_size, sized_params


def sample_bytes(path: Path, train_tokens: int, seed: int, at_least: int) -> int:
    """UTF-8 bytes of the documents bench.quality.read_data picks for `train_tokens`."""
    from components.tune import sample_documents

    table = pq.read_table(path, columns=["doc_id", "ids", "n_bytes"])
    sizes = pc.list_value_length(table.column("ids")).to_numpy(zero_copy_only=False)
    n_bytes = table.column("n_bytes").to_numpy()
    fraction = min(train_tokens / sizes.sum(), 1.0) if train_tokens else 1.0
    if fraction >= 1.0:
        return int(n_bytes.sum())
    doc_ids = table.column("doc_id").to_pylist()
    keep = sample_documents(doc_ids, sizes, fraction, seed, at_least)
    return int(np.asarray(n_bytes)[keep].sum())


def parse_sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in s.split("x")) for s in text.split(",")]  # type: ignore[misc]


def main(argv: list[str] | None = None) -> None:
    from tokenizers import Tokenizer

    ap = argparse.ArgumentParser(prog="python -m bench.size")
    ap.add_argument("--train-tokens", default="50000,150000,0", help="0 = the whole split")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--sizes", default="64x1,128x1,256x1", help="units x layers, comma-separated")
    ap.add_argument("--out", type=Path, default=Path("reports/bench/size.json"))
    args = ap.parse_args(argv)
    p = sized_params(load_params())  # vocabulary and embedding: the pipeline's files
    vocab = Tokenizer.from_file(p.paths.tokenizer).get_vocab_size()
    rows: list[dict] = []
    for tokens in (int(t) for t in args.train_tokens.split(",")):
        data = read_data(p, tokens)
        train_path = split_file(Path(p.paths.tokens), "train")
        n_bytes = sample_bytes(train_path, tokens, p.tune.seed, p.train.seq_len + 1)
        auto = choose_size(n_bytes, REF_EPOCHS)  # the pipeline sizes for a fixed budget
        for units, layers in parse_sizes(args.sizes):
            q = with_value(with_value(p, "model.units", units), "model.gru_layers", layers)
            bpb, cpu, n = gruflow_row(q, vocab, data, args.epochs)
            rows.append(
                {
                    "train_tokens": int(data["train"].size),
                    "train_bytes": n_bytes,
                    "epochs": args.epochs,
                    "vocab_size": vocab,
                    "embedding_dim": p.model.embedding_dim,
                    "units": units,
                    "gru_layers": layers,
                    "auto": auto.as_dict(),
                    "parameters": n,
                    "test_bits_per_byte": round(bpb, 4),
                    "cpu_seconds": round(cpu, 1),
                    "load_average": round(os.getloadavg()[0], 1),
                }
            )
            print(
                f"size: {data['train'].size} tokens, units {units} x {layers}: "
                f"{bpb:.4f} bits/byte ({cpu:.0f} CPU s, load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
            write_json(args.out, rows)  # kept if interrupted


if __name__ == "__main__":
    main()
