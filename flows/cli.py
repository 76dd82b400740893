"""`gruflow` command line: run the pipeline and inspect its artifacts.

Usage: `gruflow run [--force] [--project DIR]`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components.errors import GruflowError
from components.params import load_params


def _run(args: argparse.Namespace) -> int:
    root = Path(args.project).resolve()
    load_params(root / "params.yaml")  # bad params stop here, before Prefect or TF load
    from flows.pipeline import pipeline

    result = pipeline(project=str(root), force=args.force)
    m = result.metrics
    executed = ", ".join(result.executed) or "none (everything up to date)"
    print(f"gruflow: stages executed: {executed}")
    if m:
        print(f"gruflow: test perplexity {m['perplexity']:.2f} (unigram baseline "
              f"{m['baseline_perplexity']:.2f}, bigram {m['bigram_perplexity']:.2f}), "
              f"{m['bits_per_byte']:.3f} bits/byte")
    if result.model_version:
        print(f"gruflow: registered model version {result.model_version}")
    print(f"gruflow: MLflow run {result.parent_run_id} in {result.tracking_uri} "
          f"(browse: mlflow ui --backend-store-uri {result.tracking_uri})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gruflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline (DVC stages via Prefect, MLflow tracking)")
    run.add_argument("--project", default=".", help="project root (default: current folder)")
    run.add_argument("--force", action="store_true", help="rerun every stage")
    run.set_defaults(func=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GruflowError as exc:
        print(f"gruflow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
