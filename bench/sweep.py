"""A small sweep of params.yaml's model/train values under bench/quality.py's budget: how the
defaults were chosen (README "Quality").

Usage: `python -m bench.sweep [--quick | --train-tokens N] [--epochs N]
train.learning_rate=0.008,0.018 [model.dropout=0,0.2 ...]` -> one gruflow training per value
(the others at their params.yaml value), scored as the evaluate stage scores; prints a table
and writes reports/sweep.json (--out) (test bits per byte and CPU seconds per value). Not part of
`make bench`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from bench.quality import QUICK_EPOCHS, QUICK_TOKENS, gruflow_row, read_data, with_value
from components.artifacts import write_json
from components.params import load_params, with_overrides
from components.sizing import sized_params


def main(argv: list[str] | None = None) -> None:
    from tokenizers import Tokenizer

    ap = argparse.ArgumentParser(prog="python -m bench.sweep")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--train-tokens", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=0)
    ap.add_argument(
        "--base",
        action="append",
        default=[],
        help="section.field=value applied before the sweep (repeatable)",
    )
    ap.add_argument("--out", type=Path, default=Path("reports/sweep.json"))
    ap.add_argument("values", nargs="+", help="section.field=v1,v2,...")
    args = ap.parse_args(argv)
    p = sized_params(load_params())  # model.size auto: the sizes the pipeline trained
    for spec in args.base:
        dotted, _, text = spec.partition("=")
        p = with_overrides(p, {dotted: yaml.safe_load(text)}, "bench.sweep --base")
    tokens = QUICK_TOKENS if args.quick else args.train_tokens
    epochs = QUICK_EPOCHS if args.quick else (args.epochs or p.train.epochs)
    vocab = Tokenizer.from_file(p.paths.tokenizer).get_vocab_size()
    data = read_data(p, tokens)
    rows = []
    for spec in args.values:
        dotted, _, values = spec.partition("=")
        for text in values.split(","):
            value = yaml.safe_load(text)
            with_overrides(p, {dotted: value}, "bench.sweep")  # a valid model/train value
            bpb, cpu, n = gruflow_row(with_value(p, dotted, value), vocab, data, epochs)
            rows.append(
                {
                    "base": args.base,
                    "param": dotted,
                    "value": value,
                    "test_bits_per_byte": round(bpb, 4),
                    "cpu_seconds": round(cpu, 1),
                    "parameters": n,
                    "train_tokens": int(data["train"].size),
                    "epochs": epochs,
                }
            )
            print(f"sweep: {dotted}={value!r}: {bpb:.4f} bits/byte ({cpu:.0f} CPU s)", flush=True)
            write_json(args.out, rows)  # kept if interrupted


if __name__ == "__main__":
    main()
