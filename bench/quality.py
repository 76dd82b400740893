"""Quality benchmark: gruflow's language model against the seed's plain Keras model, and the
ablation of each of gruflow's choices.

Usage: `python -m bench.quality [--quick | --train-tokens N] [--epochs N] [--no-ablations]
[--project DIR]` -> reports/bench/quality.json (in DIR with --project).

- Reference: the seed's model — Keras `Embedding -> GRU -> Dense`, Adam with its default
  learning rate, Keras's default initialisers, no attention, no schedule, no clipping, no
  dropout — with its GRU width chosen so that it has gruflow's parameter count, trained with
  `model.fit` on shuffled independent windows (as the seed did).
- gruflow: the train stage's own `fit` with params.yaml's model/train values (untuned).
- Both see the same training tokens (the whole train split, or whole documents holding about
  N tokens spread over it, picked as the tune stage picks its sample) for the same epochs,
  no early stopping, and are scored by the evaluate stage's
  code: the test split read as parallel streams with the GRU state carried, real targets only.
Row `quality`: gruflow's test bits per byte / the reference's (lower is better, floor in
bench/common.py), with each side's CPU seconds (process time: all threads, whatever the
load). Rows `ablation_*`: the default with one setting changed, its bits per byte / the
default's (> 1: the default's choice is better). Needs the embed stage's outputs (make run).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from components.artifacts import write_json
from components.contract import EOS_BYTES, split_file
from components.errors import GruflowError
from components.lm.fit import load_embeddings, seed_everything
from components.lm.inference import score_stream
from components.lm.windows import make_windows, read_stream, stream_count
from components.params import Params, load_params
from components.sizing import sized_params

QUICK_TOKENS, QUICK_EPOCHS = 150_000, 2

# name -> (dotted param, value for the variant given the default's value, what it measures)
ABLATIONS = {  # the ones that decide a default first: the bench keeps rows it finished
    "ablation_tie_embeddings": ("model.tie_embeddings", lambda v: not v, "tie_embeddings toggled"),
    "ablation_context_window": (
        "train.context",
        lambda v: "window" if v == "carried" else "carried",
        "the other train.context",
    ),
    "ablation_attention_off": (
        "model.attention_window",
        lambda v: 1,
        "attention_window 1: each position attends only to itself",
    ),
    "ablation_locked_dropout": ("model.locked_dropout", lambda v: not v, "locked_dropout toggled"),
    "ablation_embedding_dropout": (
        "model.embedding_dropout",
        lambda v: 0.0 if v else 0.1,
        "embedding_dropout 0 <-> 0.1",
    ),
    "ablation_weight_drop": (
        "model.weight_drop",
        lambda v: 0.0 if v else 0.2,
        "weight_drop (DropConnect on the recurrent kernel) 0 <-> 0.2",
    ),
}


def gru_lm_parameters(vocab: int, dim: int, units: int) -> int:
    """Weights of Embedding(V, E) -> GRU(H, reset_after) -> Dense(V): the GRU has a (E, 3H)
    kernel, a (H, 3H) recurrent kernel and two 3H biases."""
    return vocab * dim + 3 * (dim * units + units * units + 2 * units) + units * vocab + vocab


def reference_units(target: int, vocab: int, dim: int) -> int:
    """The GRU width whose plain model comes closest to `target` parameters."""
    a, b, c = 3.0, 3.0 * dim + 6 + vocab, float(vocab * dim + vocab - target)
    root = max(1, int((-b + math.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a)))
    return min((root, root + 1), key=lambda h: abs(gru_lm_parameters(vocab, dim, h) - target))


def reference_models(vocab: int, dim: int, units: int):
    """(model to fit: ids -> logits, the same layers as (ids, h_0) -> (logits, h_T) for the
    evaluate stage's scorer). Keras defaults everywhere."""
    import keras
    from keras import layers

    embedding, out = layers.Embedding(vocab, dim), layers.Dense(vocab)
    gru = layers.GRU(units, return_sequences=True, return_state=True)
    ids = keras.Input(shape=(None,), dtype="int32")  # (B, T)
    h0 = keras.Input(shape=(units,))  # (B, H)
    seq, _ = gru(embedding(ids))  # (B, T, H)
    fit_model = keras.Model(ids, out(seq))
    seq, h = gru(embedding(ids), initial_state=h0)
    return fit_model, keras.Model([ids, h0], [out(seq), h])


def train_reference(p: Params, vocab: int, units: int, train: np.ndarray, epochs: int):
    import keras

    keras.backend.clear_session()
    seed_everything(p.train.seed)
    fit_model, scorer = reference_models(vocab, p.model.embedding_dim, units)
    fit_model.compile(
        optimizer=keras.optimizers.Adam(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y, w = make_windows(train, p.train.seq_len)  # (N, T) each, pads and <bos> weight 0
    cpu = time.process_time()
    fit_model.fit(
        x, y, sample_weight=w, batch_size=p.train.batch_size, epochs=epochs, shuffle=True, verbose=0
    )
    return scorer, time.process_time() - cpu


def train_gruflow(p: Params, vocab: int, train: np.ndarray, val: np.ndarray, epochs: int):
    from components.train import fit

    embeddings = load_embeddings(p, vocab)
    with tempfile.TemporaryDirectory() as tmp:
        paths = p.paths.model_copy(update={"checkpoints": f"{tmp}/ckpt", "reports": tmp})
        t = p.train.model_copy(update={"epochs": epochs, "patience": epochs})  # all epochs
        q = p.model_copy(update={"paths": paths, "train": t})
        cpu = time.process_time()
        model, _, _, _ = fit(q, vocab, train, val, embeddings, "bench-quality")
        return model, time.process_time() - cpu


def test_bits_per_byte(model, p: Params, test: np.ndarray, n_bytes: int) -> float:
    """The evaluate stage's number: summed NLL of the real test targets, state carried."""
    s = score_stream(
        model,
        test,
        p.train.seq_len,
        stream_count(test.size, p.train.seq_len, p.evaluate.batch_size),
    )
    return s["nll"] / math.log(2) / n_bytes


def test_byte_count(tokens: Path) -> int:
    n_bytes = pq.read_table(split_file(tokens, "test"), columns=["n_bytes"]).column("n_bytes")
    return int(sum(n_bytes.to_pylist())) + EOS_BYTES * len(n_bytes)  # each document's <eos>


def with_value(p: Params, dotted: str, value) -> Params:
    section, field = dotted.split(".")
    part = getattr(p, section).model_copy(update={field: value})
    return p.model_copy(update={section: part})


def gruflow_row(p, vocab, data, epochs) -> tuple[float, float, int]:
    model, cpu = train_gruflow(p, vocab, data["train"], data["val"], epochs)
    return test_bits_per_byte(model, p, data["test"], data["bytes"]), cpu, model.count_params()


def measure(
    p: Params, vocab: int, data: dict, epochs: int, ablations: bool, out: Path | None = None
) -> list[dict]:
    """The rows; each is written to `out` as soon as it is measured (the ablations take long,
    an interrupted run keeps what it finished)."""
    ours, our_cpu, n_params = gruflow_row(p, vocab, data, epochs)
    units = reference_units(n_params, vocab, p.model.embedding_dim)
    ref_model, ref_cpu = train_reference(p, vocab, units, data["train"], epochs)
    ref = test_bits_per_byte(ref_model, p, data["test"], data["bytes"])
    budget = {"train_tokens": int(data["train"].size), "epochs": epochs}
    rows = [
        {
            "name": "quality",
            "value": round(ours, 4),
            "raw_value": round(ref, 4),
            "unit": "test bits/byte",
            "ratio": round(ours / ref, 4),
            "parameters": {"gruflow": n_params, "reference": ref_model.count_params()},
            "reference_units": units,
            "cpu_seconds": {"gruflow": round(our_cpu, 1), "reference": round(ref_cpu, 1)},
            **budget,
        }
    ]
    if out:
        write_json(out, rows)
    print(
        f"bench quality: gruflow {ours:.4f} vs reference {ref:.4f} bits/byte "
        f"(ratio {ours / ref:.3f}; CPU s {our_cpu:.0f} vs {ref_cpu:.0f})",
        flush=True,
    )
    for name, (dotted, change, what) in ABLATIONS.items() if ablations else ():
        section, field = dotted.split(".")
        value = change(getattr(getattr(p, section), field))
        bpb, cpu, _ = gruflow_row(with_value(p, dotted, value), vocab, data, epochs)
        rows.append(
            {
                "name": name,
                "value": round(bpb, 4),
                "raw_value": round(ours, 4),
                "unit": "test bits/byte",
                "ratio": round(bpb / ours, 4),
                "setting": f"{dotted}: {value!r}",
                "measures": what,
                "cpu_seconds": round(cpu, 1),
                **budget,
            }
        )
        if out:
            write_json(out, rows)
        print(
            f"bench quality: {dotted}={value!r} {bpb:.4f} bits/byte ({bpb / ours:.3f} x default)",
            flush=True,
        )
    return rows


def read_data(p: Params, train_tokens: int) -> dict:
    tokens = Path(p.paths.tokens)
    if not split_file(tokens, "test").is_file():
        raise GruflowError(f"{tokens}: no token files — run the pipeline first (make run)")
    from components.tune import read_sample

    path = split_file(tokens, "train")
    total = read_stream(path).size
    fraction = min(train_tokens / total, 1.0) if train_tokens else 1.0
    return {
        "train": read_sample(path, fraction, p.tune.seed, p.train.seq_len + 1),
        "val": read_stream(split_file(tokens, "val")),
        "test": read_stream(split_file(tokens, "test")),
        "bytes": test_byte_count(tokens),
    }


def main(argv: list[str] | None = None) -> None:
    from tokenizers import Tokenizer

    ap = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"--train-tokens {QUICK_TOKENS} --epochs {QUICK_EPOCHS}",
    )
    ap.add_argument("--train-tokens", type=int, default=0, help="0 = the whole train split")
    ap.add_argument("--epochs", type=int, default=0, help="0 = train.epochs")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--project", type=Path, help="a gruflow project whose pipeline has run")
    args = ap.parse_args(argv)
    if args.project:
        os.chdir(args.project)
    p = sized_params(load_params())  # model.size auto: the sizes the pipeline trained
    tokens = QUICK_TOKENS if args.quick else args.train_tokens
    epochs = QUICK_EPOCHS if args.quick else (args.epochs or p.train.epochs)
    vocab = Tokenizer.from_file(p.paths.tokenizer).get_vocab_size()
    measure(
        p,
        vocab,
        read_data(p, tokens),
        epochs,
        not args.no_ablations,
        Path(p.paths.reports) / "bench" / "quality.json",
    )


if __name__ == "__main__":
    main()
