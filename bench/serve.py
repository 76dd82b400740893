"""Benchmark of serving: a 32-token greedy generation through the loaded pyfunc vs bare Keras.

Usage: `python -m bench.serve [--reps 30] [--profile]` -> reports/bench/serve.json, rows
`generate_latency_p50` and `generate_latency_p95` (ms): `value` = `model.predict` of the MLflow
pyfunc (models-from-code, components/lm/pyfunc.py), `raw_value` = the same loop written here
on the bare Keras model (`predict_on_batch` per step, argmax, decode), interleaved in the same
run (both call `predict_on_batch` once per step), min/median/max of each side in `spread`;
`ratio` = value / raw_value (ceiling in bench.common). Both must produce the same 32 tokens.
Model: the registry champion of the project's store if there is one, else an untrained model of
the configured size on a small tokenizer, registered in a temporary store.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import FLOORS, spread
from components.artifacts import write_json
from components.contract import BOS, EOS, SPECIALS
from components.params import Params, load_params

NEW_TOKENS, WARMUP = 32, 3
GENERATE = {
    "mode": "generate",
    "max_new_tokens": NEW_TOKENS,
    "temperature": 0.0,
    "top_k": 0,
    "top_p": 1.0,
    "repetition_penalty": 1.0,  # plain greedy, as raw_generate
    "seed": 0,
}
PROMPTS = ["The return value of", "This module provides", "If the argument is", "Return a new"]
TINY_TEXT = [
    "The return value of the function is a list of names.",
    "This module provides a way to read the header of a file.",
    "If the argument is omitted, the current value is returned.",
] * 8


def raw_generate(model, tokenizer, prompt: str, seq_len: int) -> tuple[str, int]:
    """Greedy continuation on the bare model: (text, tokens generated)."""
    ids = [BOS, *tokenizer.encode(prompt, add_special_tokens=False).ids]
    start = len(ids)
    for _ in range(NEW_TOKENS):
        window = np.array([ids[-seq_len:]], dtype=np.int32)  # (1, T)
        cold = [np.zeros((1, int(h.shape[-1])), np.float32) for h in model.inputs[1:]]
        logits = np.asarray(model.predict_on_batch([window, *cold])[0])[0, -1]  # (V,)
        nxt = int(np.argmax(logits))
        if nxt == EOS:
            break
        ids.append(nxt)
    return tokenizer.decode(ids[start:]), len(ids) - start


def champion_uri(root: Path, params: Params) -> str | None:
    from flows import registry, tracking

    tracking.configure(root, params.mlflow.experiment)
    name = params.registry.model_name
    return f"models:/{name}@champion" if registry.champion_version(name) else None


def temp_registered_model(tmp: Path, params: Params) -> str:
    """Tokenizer + untrained model of the configured size, registered in a sqlite store in tmp
    (specials biased away so greedy decoding always runs the full 32 steps)."""
    import keras
    import mlflow

    from components.lm.model import build_model
    from components.tokenize import train_tokenizer
    from flows import tracking

    (tmp / "components").symlink_to(Path("components").resolve())
    tok = train_tokenizer(
        iter(TINY_TEXT), params.tokenize.model_copy(update={"vocab_size": 400, "min_frequency": 1})
    )
    tok.save(str(tmp / "tokenizer.json"))
    keras.utils.set_random_seed(0)
    model = build_model(
        params.model.model_copy(update={"embedding_init": "random"}), tok.get_vocab_size()
    )
    kernel, bias = model.get_layer("logits").get_weights()
    bias[: len(SPECIALS)] = -30.0
    model.get_layer("logits").set_weights([kernel, bias])
    model.save(tmp / "model.keras")
    params = params.model_copy(
        update={
            "paths": params.paths.model_copy(
                update={"model": str(tmp / "model.keras"), "tokenizer": str(tmp / "tokenizer.json")}
            )
        }
    )
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    tracking.configure(tmp, params.mlflow.experiment)
    with mlflow.start_run() as run:
        version = tracking.register(tmp, params, run.info.run_id, tags={}, metrics={})
    return f"models:/{params.registry.model_name}/{version}"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def measure(uri: str, reps: int, profile: bool) -> tuple[list[dict], str]:
    import json

    import keras
    import mlflow
    import pandas as pd
    from tokenizers import Tokenizer

    from components.lm import model as _layers  # noqa: F401  (registers custom layers)

    with tempfile.TemporaryDirectory() as dst:
        pyfunc = mlflow.pyfunc.load_model(uri, dst_path=dst)
        files = Path(dst) / "artifacts"
        seq_len = int(json.loads((files / "info.json").read_text())["seq_len"])
        tokenizer = Tokenizer.from_file(str(files / "tokenizer.json"))
        bare = keras.saving.load_model(next(files.glob("*.keras")), safe_mode=True)
    # A prompt whose greedy continuation runs all 32 steps (no <eos>) on the bare model.
    runs = {p: raw_generate(bare, tokenizer, p, seq_len) for p in PROMPTS}
    prompt = next((p for p, (_, n) in runs.items() if n == NEW_TOKENS), None)
    if prompt is None:
        raise SystemExit(f"bench.serve: every prompt stops before {NEW_TOKENS} tokens on {uri}")
    frame = pd.DataFrame({"text": [prompt]})
    served = pyfunc.predict(frame, params=GENERATE)["text"].iloc[0]
    if served != runs[prompt][0]:
        raise SystemExit(
            f"bench.serve: pyfunc and bare model disagree: {served!r} != {runs[prompt][0]!r}"
        )

    def through_pyfunc():
        return pyfunc.predict(frame, params=GENERATE)

    def through_keras():
        return raw_generate(bare, tokenizer, prompt, seq_len)

    for _ in range(WARMUP):
        through_pyfunc(), through_keras()
    ours, raw = [], []
    for i in range(reps):  # interleaved, alternating who goes first: load hits both alike
        first, second = (
            (through_pyfunc, through_keras) if i % 2 == 0 else (through_keras, through_pyfunc)
        )
        a, b = timed(first), timed(second)
        ours.append(a if i % 2 == 0 else b)
        raw.append(b if i % 2 == 0 else a)
    if profile:
        prof = cProfile.Profile()
        prof.runcall(lambda: [through_pyfunc() for _ in range(reps)])
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
    rows = []
    for q in (50, 95):
        value, raw_value = float(np.percentile(ours, q)), float(np.percentile(raw, q))
        rows.append(
            {
                "name": f"generate_latency_p{q}",
                "value": round(value, 3),
                "raw_value": round(raw_value, 3),
                "unit": "ms",
                "ratio": round(value / raw_value, 4),
                "spread": {"value": spread(ours), "raw_value": spread(raw)},
            }
        )
    return rows, prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30, help="timed runs of each (>= 20)")
    parser.add_argument("--profile", action="store_true", help="cProfile the pyfunc path")
    args = parser.parse_args()
    root = Path(".")
    params = load_params(root / "params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        uri = champion_uri(root, params)
        source = uri or "untrained model of the configured size (no champion in the registry)"
        uri = uri or temp_registered_model(Path(tmp), params)
        rows, prompt = measure(uri, max(args.reps, 20), args.profile)
    write_json(Path(params.paths.reports) / "bench" / "serve.json", rows)
    print(f"bench.serve: {source}, prompt {prompt!r}, {NEW_TOKENS} tokens, greedy")
    for r in rows:
        ceiling = FLOORS[r["name"]][1]
        flag = "ok" if r["ratio"] <= ceiling else f"FAIL: above the {ceiling} ceiling"
        print(
            f"  {r['name']}: pyfunc {r['value']:.2f} ms, bare Keras {r['raw_value']:.2f} ms, "
            f"ratio {r['ratio']:.3f} ({flag})"
        )


if __name__ == "__main__":
    main()
