"""Benchmark of the train stage: tokens/s of our tf.data + callbacks path vs a bare model.fit.

Usage: `python -m bench.train` -> reports/bench/train.json: row `train` (`value` = training
tokens/s of components.train.fit, `raw_value` = tokens/s of `model.fit` of the same model on
the same streams of windows held in memory as NumPy arrays (state carried, in order),
validated on the same val split by the same callback, same run, `ratio` = value / raw_value,
floor 0.9), plus `flops_per_token` (forward, analytic) and
`achieved_flops` (3 x forward FLOPs per training token x tokens/s). Both sides train 2
epochs; the second (compiled) epoch is timed.
Uses the first BENCH_TOKENS tokens of data/tokens/train.parquet (run `make run` first).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from components.artifacts import write_json
from components.lm.fit import compiled_model, flops_per_token, seed_everything, validation
from components.lm.windows import make_streams, read_stream, stream_count
from components.params import load_params

BENCH_TOKENS = 150_000


def stage_tokens_per_second(p, vocab: int, train: np.ndarray, val: np.ndarray) -> float:
    from components.train import fit

    with tempfile.TemporaryDirectory() as tmp:
        paths = p.paths.model_copy(update={"checkpoints": f"{tmp}/ckpt", "reports": tmp})
        q = p.model_copy(
            update={
                "paths": paths,
                "train": p.train.model_copy(update={"epochs": 2, "patience": 5}),
            }
        )
        _, history, _, _ = fit(q, vocab, train, val, None, "bench")
    return history["tokens_per_second"][-1]


def raw_tokens_per_second(p, vocab: int, train: np.ndarray, val: np.ndarray) -> float:
    import keras

    seed_everything(p.train.seed)
    t = p.train
    streams = stream_count(train.size, t.seq_len, t.batch_size)
    x, y, w = (a.reshape(-1, t.seq_len) for a in make_streams(train, streams, t.seq_len))
    # the stage's own recipe (model, optimizer, loss, compile): only the input path differs
    model = compiled_model(p, vocab, train, None, len(x) // streams, streams)
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t0)

    # validated each epoch by the stage's own callback (val read as evaluate reads test)
    model.fit(
        x,
        y,
        sample_weight=w,
        batch_size=streams,
        epochs=2,
        shuffle=False,
        callbacks=[validation(val, p.train), Timer()],
        verbose=0,
    )
    return float(w.sum()) / times[-1]


def main() -> None:
    from tokenizers import Tokenizer

    p = load_params()
    p = p.model_copy(update={"model": p.model.model_copy(update={"embedding_init": "random"})})
    vocab = Tokenizer.from_file(p.paths.tokenizer).get_vocab_size()
    tokens = Path(p.paths.tokens)
    train = read_stream(tokens / "train.parquet")[:BENCH_TOKENS]
    val = read_stream(tokens / "val.parquet")[: BENCH_TOKENS // 10]
    value = stage_tokens_per_second(p, vocab, train, val)
    raw = raw_tokens_per_second(p, vocab, train, val)
    fpt = flops_per_token(
        vocab, p.model.embedding_dim, p.model.units, p.model.gru_layers, p.train.seq_len
    )
    rows = [
        {
            "name": "train",
            "value": value,
            "raw_value": raw,
            "unit": "tokens/s",
            "ratio": value / raw,
        },
        {
            "name": "flops_per_token",
            "value": fpt,
            "raw_value": fpt,
            "unit": "FLOP (forward)",
            "ratio": 1.0,
        },
        {
            "name": "achieved_flops",
            "value": 3 * fpt * value,
            "raw_value": 3 * fpt * raw,
            "unit": "FLOP/s",
            "ratio": value / raw,
        },
    ]
    write_json(Path(p.paths.reports) / "bench" / "train.json", rows)
    print(
        f"bench train: stage {value:.0f} tokens/s vs bare model.fit {raw:.0f} tokens/s "
        f"(ratio {value / raw:.2f}); {3 * fpt * value / 1e9:.2f} GFLOP/s achieved"
    )


if __name__ == "__main__":
    main()
