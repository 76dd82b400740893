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
        if not args.force and _up_to_date(root, args):
            return 0
        from flows.interrupt import own_server
        from flows.pipeline import pipeline

        with own_server():  # Prefect's temporary server, out of reach of the terminal's Ctrl-C
            result = pipeline(project=str(root), force=args.force)
            _summary(result)
            from flows.resources import summary_line

            print(summary_line(root, result.executed))
            if not args.no_push:
                from flows.placement import push_after_run

                print(
                    f"gruflow: pushed {push_after_run(root, result.model_version)} file(s) "
                    "to the DVC remote"
                )
    return 0


def _up_to_date(root: Path, args: argparse.Namespace) -> bool:
    """Nothing to run (flows/noop.py): one summary line, the push, and no Prefect server,
    pipeline or TensorFlow at all."""
    from flows.noop import nothing_to_do

    line = nothing_to_do(root, load_params(root / "params.yaml"))
    if line is None:
        return False
    print(f"gruflow: {line}")
    if not args.no_push:
        from flows.placement import push_after_run

        print(
            f"gruflow: pushed {push_after_run(root, None, in_flow=False)} file(s) to the DVC remote"
        )
    return True


def _summary(result) -> None:
    m = result.metrics
    executed = ", ".join(result.executed) or "none (everything up to date)"
    print(f"gruflow: stages executed: {executed}")
    if m and "masked_perplexity" in m:  # train.objective masked
        print(
            f"gruflow: test masked perplexity {m['masked_perplexity']:.2f} (unigram baseline "
            f"{m['masked_baseline_perplexity']:.2f}), accuracy {m['masked_accuracy']:.3f}, "
            f"top-5 {m['masked_top5_accuracy']:.3f}"
        )
    elif m:
        per_word = (
            f", {m['word_perplexity']:.1f} per word" if "word_perplexity" in m else ""
        )  # metrics written before word perplexity existed lack it
        print(
            f"gruflow: test perplexity {m['perplexity']:.2f} per token{per_word} (unigram "
            f"baseline {m['baseline_perplexity']:.2f}, bigram {m['bigram_perplexity']:.2f}), "
            f"{m['bits_per_byte']:.3f} bits/byte"
        )
    if result.decision:  # the gate's decision and why, or the current model's standing
        print(f"gruflow: {result.decision}")
    uri = redact(result.tracking_uri)
    print(
        f"gruflow: MLflow run {result.parent_run_id} in {uri} "
        f"(browse: mlflow ui --backend-store-uri {uri})"
    )


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
    if args.model:
        return load_model(args.model)
    from flows.registry import model_uri  # no champion: says whether to promote or to run

    return load_model(model_uri(name))


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
    # flags left out are not sent: the model answers with its own defaults (params.yaml
    # `generate` when it was registered), the same ones the served model uses
    params = {
        "mode": "generate",
        **{name: getattr(args, name) for name in GENERATE_FLAGS if getattr(args, name) is not None},
    }
    out = _predict(model, pd.DataFrame({"text": [args.prompt]}), params)
    print(args.prompt + out["text"][0])
    return 0


def _score(args: argparse.Namespace) -> int:
    import pandas as pd

    path = Path(args.file)
    if not path.is_file():
        raise GruflowError(f"{path}: no such file — pass a UTF-8 text file to score")
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    # nothing lost silently: each undecodable byte became U+FFFD (a real one in the file is not)
    if lost := text.count("\ufffd") - raw.count("\ufffd".encode()):
        print(
            f"gruflow: warning: {path}: {lost} undecodable byte sequence(s) read as U+FFFD — "
            "convert the file to UTF-8 for an exact score",
            file=sys.stderr,
        )
    if not text.strip():
        raise GruflowError(f"{path}: the file is empty — nothing to score")
    params = {
        "mode": "score",
        "cache_size": args.cache_size,
        "cache_theta": args.cache_theta,
        "cache_lambda": args.cache_lambda,
    }
    row = _predict(_load_model(args), pd.DataFrame({"text": [text]}), params).iloc[0]
    if "masked_tokens" in row:  # a masked LM: perplexity over the fixed evaluation mask
        print(
            f"{path}: masked perplexity {row['perplexity']:.3f} "
            f"({int(row['masked_tokens'])} masked tokens)"
        )
        return 0
    print(
        f"{path}: perplexity {row['perplexity']:.3f}, {row['bits_per_byte']:.4f} bits/byte "
        f"({int(row['tokens'])} tokens, {int(row['bytes'])} bytes)"
    )
    if "perplexity_cache" in row:  # an inference-time gain, shown beside the static numbers
        print(
            f"{path}: with the continuous cache: perplexity {row['perplexity_cache']:.3f}, "
            f"{row['bits_per_byte_cache']:.4f} bits/byte"
        )
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
        raise GruflowError(
            "tune-worker joins a study in a shared database: pass --storage URL, "
            f"set {tune_study.STORAGE_ENV} or tune.storage (e.g. postgresql://...)"
        )
    os.chdir(root)  # params paths are relative to the project root
    n = tune.work(params)
    print(f"gruflow: tune-worker finished {n} trial(s) of the study")
    return 0


def project_option() -> argparse.ArgumentParser:
    """The `--project` option every project command shares (argparse parent parser)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--project", default=".", help="project root")
    parent.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show the libraries' console messages gruflow hides by default "
        "(TensorFlow banner, known-harmless warnings); also "
        "GRUFLOW_VERBOSE=1",
    )
    return parent


GENERATE_FLAGS = {
    "max_new_tokens": (int, "tokens to add at most"),
    "temperature": (float, "0 = greedy"),
    "top_k": (int, "sample among the k likeliest tokens; 0 = no limit"),
    "top_p": (float, "nucleus: the fewest tokens holding this probability; 1 = off"),
    "repetition_penalty": (
        float,
        "each recent occurrence of a token divides its probability by this; 1 = off",
    ),
    "seed": (int, "random seed of the sampling"),
}


def _model_commands(sub, common: argparse.ArgumentParser) -> None:
    gen = sub.add_parser(
        "generate", parents=[common], help="continue a prompt with the champion model"
    )
    gen.add_argument("prompt", help="the text to continue")
    for name, (kind, what) in GENERATE_FLAGS.items():
        gen.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=None,
            help=f"{what} (default: the model's, i.e. params.yaml generate.{name} "
            "when it was registered)",
        )
    gen.set_defaults(func=_generate)
    score = sub.add_parser(
        "score", parents=[common], help="perplexity and bits/byte of a text file"
    )
    score.add_argument("file", help="a UTF-8 text file")
    own = " (-1 = the model's own: chosen on val by evaluate, or off)"
    score.add_argument(
        "--cache-size",
        type=int,
        default=-1,
        help="continuous cache: hidden states remembered, 0 = off" + own,
    )
    score.add_argument("--cache-theta", type=float, default=-1.0, help="cache θ" + own)
    score.add_argument("--cache-lambda", type=float, default=-1.0, help="cache λ" + own)
    score.set_defaults(func=_score)
    for p in (gen, score):
        p.add_argument(
            "--model", help="model URI (default: models:/<registry.model_name>@champion)"
        )
    promote = sub.add_parser(
        "promote", parents=[common], help="make a registered version the champion"
    )
    promote.add_argument("version", type=int, help="registered model version number")
    promote.set_defaults(func=_promote)
    rollback = sub.add_parser(
        "rollback", parents=[common], help="give the champion alias back to the previous champion"
    )
    rollback.set_defaults(func=_rollback)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gruflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = project_option()
    run = sub.add_parser(
        "run", parents=[common], help="run the pipeline (DVC stages via Prefect, MLflow tracking)"
    )
    run.add_argument("--force", action="store_true", help="rerun every stage")
    run.add_argument("--no-push", action="store_true", help="do not dvc push after the run")
    run.add_argument(
        "--no-wait",
        action="store_true",
        help="fail at once when another run holds the project lock",
    )
    run.set_defaults(func=_run)
    from flows.cli_ops import add_commands  # retrain, deploy, worker

    add_commands(sub, common)
    from flows import lineage, reproduce  # lineage, history, reproduce

    lineage.add_commands(sub, common)
    reproduce.add_commands(sub, common)
    from flows import card  # card

    card.add_commands(sub, common)
    _model_commands(sub, common)
    from flows.classify_cli import classify_command

    classify_command(sub, common)
    similar = sub.add_parser(
        "similar",
        parents=[common],
        help="nearest tokens to a word by cosine similarity of the current word vectors",
    )
    similar.add_argument("token", help="a word that is one token, e.g. function")
    similar.add_argument("-k", type=int, default=10, help="neighbours to print")
    similar.add_argument(
        "--model",
        help="read the vectors of a registered model's embedding "
        "layer, e.g. models:/gruflow-lm@champion",
    )
    similar.set_defaults(func=_similar)
    worker = sub.add_parser(
        "tune-worker",
        parents=[common],
        help="join the tune stage's Optuna study (in a shared database) "
        "and run trials until its budget is spent",
    )
    worker.add_argument(
        "--storage", help="study database URL (default: $GRUFLOW_OPTUNA_STORAGE, then tune.storage)"
    )
    worker.set_defaults(func=_tune_worker)
    _describe(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gruflow")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _describe(sub) -> None:
    """Every subcommand's --help: its one-line help as description, and flag defaults shown
    (set here, after the modules that add commands, so each of them stays plain argparse)."""
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, p in sub.choices.items():
        p.description = p.description or helps.get(name)
        p.formatter_class = _DefaultsFormatter


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows real defaults only: not `None` (the help says what happens) nor a flag's `False`."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    """Every command through one error path (flows.entry): one line on stderr, exit 2 for
    user errors and 1 otherwise, the traceback in .gruflow/logs/ of the project."""
    # Run last at exit: the interpreter then skips its final GC pass over the millions of
    # objects Prefect, MLflow and DVC load (~1.5 s of every command, e.g. a skipped retrain).
    atexit.register(gc.freeze)
    args = build_parser().parse_args(argv)
    code = entry.run(args.func, args, Path(getattr(args, "project", ".")).resolve())
    if code in entry.INTERRUPTED_CODES and argv is None:  # the console script, not a test
        entry.exit_now(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
