"""`gruflow` command line: run the pipeline and inspect its artifacts.

Usage: `gruflow run [--force] [--project DIR]`, `gruflow generate "prompt"`,
`gruflow score FILE`, `gruflow promote VERSION`, `gruflow rollback`,
`gruflow tune-worker [--storage URL]`, `gruflow retrain`, `gruflow deploy`,
`gruflow worker --pool gpu`, `gruflow reproduce VERSION`, `gruflow lineage VERSION`,
`gruflow history`.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import sys
from pathlib import Path

from components.errors import GruflowError
from components.params import load_params
from flows import entry
from flows.secrets import redact


def _run(args: argparse.Namespace) -> int:
    from flows import tracking
    from flows.project_lock import project_lock

    root = Path(args.project).resolve()
    load_params(root / "params.yaml")  # bad params stop here, before Prefect or TF load
    tracking.check_reachable(tracking.store_uri(root))  # fail fast, not after MLflow's retries
    # the lock also covers the creation of the Prefect and MLflow stores of a fresh project
    with project_lock(root, wait=not args.no_wait, command="gruflow run"):
        from flows.pipeline import pipeline

        result = pipeline(project=str(root), force=args.force)
        _summary(result)
        from flows.resources import summary_line

        print(summary_line(root, result.executed))
        if not args.no_push:
            from flows.placement import push_after_run

            print(f"gruflow: pushed {push_after_run(root, result.model_version)} file(s) to "
                  "the DVC remote")
    return 0


def _summary(result) -> None:
    m = result.metrics
    executed = ", ".join(result.executed) or "none (everything up to date)"
    print(f"gruflow: stages executed: {executed}")
    if m:
        per_word = (f", {m['word_perplexity']:.1f} per word" if "word_perplexity" in m
                    else "")  # metrics written before word perplexity existed lack it
        print(f"gruflow: test perplexity {m['perplexity']:.2f} per token{per_word} (unigram "
              f"baseline {m['baseline_perplexity']:.2f}, bigram {m['bigram_perplexity']:.2f}), "
              f"{m['bits_per_byte']:.3f} bits/byte")
    if result.model_version:
        print(f"gruflow: registered model version {result.model_version}")
    uri = redact(result.tracking_uri)
    print(f"gruflow: MLflow run {result.parent_run_id} in {uri} "
          f"(browse: mlflow ui --backend-store-uri {uri})")


def _registry(args: argparse.Namespace) -> tuple[Path, str]:
    """Project root and registered model name, with MLflow pointed at the project's store."""
    from flows import tracking

    root = Path(args.project).resolve()
    params = load_params(root / "params.yaml")
    tracking.require_store(root)  # a failing look-up must not create mlflow.db
    tracking.configure(root, params.mlflow.experiment)
    return root, params.registry.model_name


def _load_model(args: argparse.Namespace):
    from flows.serve import load_model  # refuses anything but gruflow's own models, unloaded

    _, name = _registry(args)
    uri = args.model or f"models:/{name}@champion"
    return load_model(uri)


def _predict(model, frame, params: dict):
    """The model's own validation errors (bad temperature, ...) become one-line errors."""
    import mlflow

    try:
        return model.predict(frame, params=params)
    except mlflow.exceptions.MlflowException as exc:
        raise GruflowError(exc.message.splitlines()[-1]) from None


def _generate(args: argparse.Namespace) -> int:
    import pandas as pd

    model = _load_model(args)
    params = {"mode": "generate", "max_new_tokens": args.max_new_tokens,
              "temperature": args.temperature, "top_k": args.top_k, "seed": args.seed}
    out = _predict(model, pd.DataFrame({"text": [args.prompt]}), params)
    print(args.prompt + out["text"][0])
    return 0


def _score(args: argparse.Namespace) -> int:
    import pandas as pd

    path = Path(args.file)
    if not path.is_file():
        raise GruflowError(f"{path}: no such file — pass a UTF-8 text file to score")
    text = path.read_bytes().decode("utf-8", errors="replace")
    if not text.strip():
        raise GruflowError(f"{path}: the file is empty — nothing to score")
    row = _predict(_load_model(args), pd.DataFrame({"text": [text]}), {"mode": "score"}).iloc[0]
    print(f"{path}: perplexity {row['perplexity']:.3f}, {row['bits_per_byte']:.4f} bits/byte "
          f"({int(row['tokens'])} tokens, {int(row['bytes'])} bytes)")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from flows import registry

    _, name = _registry(args)
    registry.promote(name, str(args.version))
    print(f"gruflow: {name} version {args.version} is now champion")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from flows import registry

    _, name = _registry(args)
    version = registry.rollback(name)
    print(f"gruflow: {name} champion rolled back to version {version}")
    return 0


def _similar(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from components.embed import similar

    root = Path(args.project).resolve()
    if args.model:  # the embedding layer of a registered model, as trained by the LM
        from components.embed import similar_in_matrix

        lm = _load_model(args).unwrap_python_model()
        matrix = lm.model.get_layer("embedding").embeddings
        pairs = similar_in_matrix(args.token, args.k, np.asarray(matrix), lm.tokenizer)
    else:
        pairs = similar(args.token, args.k, load_params(root / "params.yaml"), root)
    for token, sim in pairs:
        print(f"{sim:7.4f}  {json.dumps(token, ensure_ascii=False)}")
    return 0


def _tune_worker(args: argparse.Namespace) -> int:
    import os

    from components import tune
    from components.tuning import study as tune_study

    root = Path(args.project).resolve()
    params = load_params(root / "params.yaml")
    if args.storage:
        os.environ[tune_study.STORAGE_ENV] = args.storage
    if not tune_study.storage_url(params):
        raise GruflowError("tune-worker joins a study in a shared database: pass --storage URL, "
                           f"set {tune_study.STORAGE_ENV} or tune.storage (e.g. postgresql://...)")
    os.chdir(root)  # params paths are relative to the project root
    n = tune.work(params)
    print(f"gruflow: tune-worker finished {n} trial(s) of the study")
    return 0


def project_option() -> argparse.ArgumentParser:
    """The `--project` option every project command shares (argparse parent parser)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--project", default=".", help="project root (default: current folder)")
    return parent


def _model_commands(sub, common: argparse.ArgumentParser) -> None:
    gen = sub.add_parser("generate", parents=[common],
                         help="continue a prompt with the champion model")
    gen.add_argument("prompt")
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--top-k", type=int, default=40)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(func=_generate)
    score = sub.add_parser("score", parents=[common],
                           help="perplexity and bits/byte of a text file")
    score.add_argument("file")
    score.set_defaults(func=_score)
    for p in (gen, score):
        p.add_argument("--model", help="model URI (default: models:/<registry.model_name>"
                                       "@champion)")
    promote = sub.add_parser("promote", parents=[common],
                             help="make a registered version the champion")
    promote.add_argument("version", type=int)
    promote.set_defaults(func=_promote)
    rollback = sub.add_parser("rollback", parents=[common],
                              help="give the champion alias back to the previous champion")
    rollback.set_defaults(func=_rollback)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gruflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = project_option()
    run = sub.add_parser("run", parents=[common],
                         help="run the pipeline (DVC stages via Prefect, MLflow tracking)")
    run.add_argument("--force", action="store_true", help="rerun every stage")
    run.add_argument("--no-push", action="store_true", help="do not dvc push after the run")
    run.add_argument("--no-wait", action="store_true",
                     help="fail at once when another run holds the project lock")
    run.set_defaults(func=_run)
    from flows.cli_ops import add_commands  # retrain, deploy, worker

    add_commands(sub, common)
    from flows import lineage, reproduce  # lineage, history, reproduce

    lineage.add_commands(sub, common)
    reproduce.add_commands(sub, common)
    _model_commands(sub, common)
    from flows.classify_cli import classify_command

    classify_command(sub, common)
    similar = sub.add_parser("similar", parents=[common],
                             help="nearest tokens to a word by cosine similarity of the "
                                  "current word vectors")
    similar.add_argument("token", help="a word that is one token, e.g. function")
    similar.add_argument("-k", type=int, default=10, help="neighbours to print (default 10)")
    similar.add_argument("--model", help="read the vectors of a registered model's embedding "
                                         "layer, e.g. models:/gruflow-lm@champion")
    similar.set_defaults(func=_similar)
    worker = sub.add_parser("tune-worker", parents=[common],
                            help="join the tune stage's Optuna study (in a shared database) "
                                 "and run trials until its budget is spent")
    worker.add_argument("--storage", help="study database URL (default: $GRUFLOW_OPTUNA_STORAGE, "
                                          "then tune.storage)")
    worker.set_defaults(func=_tune_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Every command through one error path (flows.entry): one line on stderr, exit 2 for
    user errors and 1 otherwise, the traceback in .gruflow/logs/ of the project."""
    # Run last at exit: the interpreter then skips its final GC pass over the millions of
    # objects Prefect, MLflow and DVC load (~1.5 s of every command, e.g. a skipped retrain).
    atexit.register(gc.freeze)
    args = build_parser().parse_args(argv)
    return entry.run(args.func, args, Path(getattr(args, "project", ".")).resolve())


if __name__ == "__main__":
    sys.exit(main())
