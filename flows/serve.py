"""The one loader of gruflow models, and `gruflow serve`.

Usage: `gruflow serve [--model URI] [--project DIR]` (address and limits: params.yaml `serve`).

`load_model(uri)` downloads the model folder (nothing in it runs), checks that it is gruflow's
own model — a models-from-code pyfunc whose code is `pyfunc.py`, with exactly the artifacts
gruflow logs (`model` .keras, `tokenizer` .json, `info` .json) and no pickle anywhere — and
then builds the pyfunc from *this* gruflow's `GruLM` over the folder's data files. So a model
that would unpickle or import code on load is refused with one line before it is loaded, and
even a gruflow model's copy of `pyfunc.py` is never executed (the Keras file is read with
`safe_mode=True`). `gruflow generate/score/similar --model` and the server load through it.
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from pathlib import Path

import yaml

from components.errors import GruflowError
from components.params import Serve, load_params

log = logging.getLogger(__name__)

EXPECTED_ARTIFACTS = {"model": ".keras", "tokenizer": ".json", "info": ".json"}
CODE_FILE = "pyfunc.py"
CODE_LOADER = "mlflow.pyfunc.loaders.code_model"  # what MLflow 3 writes for models-from-code
# file types that unpickle (or torch.load) when a loader opens them
PICKLE_SUFFIXES = {".pkl", ".pickle", ".cloudpickle", ".joblib", ".dill", ".pt", ".pth", ".npy"}


def _refuse(uri: str, why: str) -> GruflowError:
    return GruflowError(
        f"model '{uri}' is not a gruflow model ({why}) — pass a model "
        "registered by `gruflow run` (models:/<name>@champion or its folder)"
    )


def check_own_model(local: Path, uri: str) -> dict[str, str]:
    """The artifact paths of a gruflow model folder; GruflowError if it is anything else."""
    mlmodel = local / "MLmodel"
    if not mlmodel.is_file():
        raise _refuse(uri, "no MLmodel file")
    try:
        meta = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        raise _refuse(uri, "MLmodel is not YAML") from None
    flavors = meta.get("flavors") if isinstance(meta, dict) else None
    if not isinstance(flavors, dict) or set(flavors) != {"python_function"}:
        names = sorted(flavors) if isinstance(flavors, dict) else []
        raise _refuse(uri, f"flavors {names}, expected only python_function")
    pf = flavors["python_function"]
    code = Path(str(pf.get("model_code_path", ""))).name
    if pf.get("loader_module") != CODE_LOADER or code != CODE_FILE or "python_model" in pf:
        what = pf.get("python_model") or code or "none"
        raise _refuse(
            uri,
            f"python_model is {what!r} (loader {pf.get('loader_module')!r}), "
            f"not models-from-code {CODE_FILE}",
        )
    pickles = sorted(
        str(p.relative_to(local)) for p in local.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES
    )
    if pickles:
        raise _refuse(uri, f"holds pickled files {pickles[:3]}")
    artifacts = pf.get("artifacts") or {}
    if not isinstance(artifacts, dict) or set(artifacts) != set(EXPECTED_ARTIFACTS):
        raise _refuse(
            uri,
            f"artifacts {sorted(artifacts) if isinstance(artifacts, dict) else []}"
            f", expected {sorted(EXPECTED_ARTIFACTS)}",
        )
    paths = {}
    for name, suffix in EXPECTED_ARTIFACTS.items():
        entry = artifacts[name]
        rel = entry.get("path", "") if isinstance(entry, dict) else ""
        path = (local / rel).resolve()
        if path.suffix != suffix or not path.is_file() or not path.is_relative_to(local.resolve()):
            raise _refuse(uri, f"artifact '{name}' is not a {suffix} file inside the model")
        paths[name] = str(path)
    return paths


def _download(uri: str) -> Path:
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        first = (getattr(exc, "message", None) or str(exc) or type(exc).__name__).splitlines()[0]
        raise GruflowError(
            f"cannot load model '{uri}' ({first}) — run `gruflow run` first or pass --model URI"
        ) from None


def load_model(uri: str):
    """A pyfunc of gruflow's GruLM over the checked model folder (see the module docstring)."""
    # MLflow warns on stderr (two lines, ANSI colours) when a PythonModel class without type
    # hints on predict() is defined, as GruLM is; its own `filter_user_warnings_once` context
    # overrides any filter, so they are recorded here: kept off the terminal (one-line errors).
    with warnings.catch_warnings(record=True) as caught:
        from mlflow.exceptions import MlflowException
        from mlflow.models import Model
        from mlflow.pyfunc import PyFuncModel
        from mlflow.pyfunc.model import PythonModelContext, _PythonModelPyfuncWrapper

        from components.lm.pyfunc import GruLM
    for w in caught:
        log.info("import warning: %s", w.message)

    local = _download(uri)
    paths = check_own_model(local, uri)
    context = PythonModelContext(artifacts=paths, model_config={})
    lm = GruLM()
    try:
        lm.load_context(context)
        meta = Model.load(str(local / "MLmodel"))
    except (MlflowException, ValueError, OSError, KeyError) as exc:
        first = (getattr(exc, "message", None) or str(exc) or type(exc).__name__).splitlines()[0]
        raise GruflowError(
            f"cannot load model '{uri}' ({first}) — re-register it with `gruflow run`"
        ) from None
    return PyFuncModel(
        model_meta=meta, model_impl=_PythonModelPyfuncWrapper(lm, context, meta.signature)
    )


def build_app(model, limits: Serve):
    """MLflow's scoring app for `model` behind gruflow's request guard."""
    from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
    from mlflow.pyfunc import scoring_server

    from components.lm.serve_guard import ServeGuard

    os.environ[MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.name] = str(limits.timeout)  # read by init
    defaults = getattr(model.unwrap_python_model(), "defaults", None)
    return ServeGuard(scoring_server.init(model), limits, defaults=defaults)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from flows import tracking

    root = Path(args.project).resolve()
    params = load_params(root / "params.yaml")
    if not args.model:  # the champion lives in a store a run made; do not create an empty one
        tracking.require_store(root)
    tracking.configure(root, params.mlflow.experiment)
    if args.model:
        uri = args.model
    else:  # no champion: says whether to promote the challenger or to run the pipeline
        from flows.registry import model_uri

        uri = model_uri(params.registry.model_name)
    limits = params.serve
    host, port = args.host or limits.host, args.port or limits.port
    app = build_app(load_model(uri), limits)
    print(
        f"gruflow: serving '{uri}' on http://{host}:{port}/invocations (Ctrl-C stops)", flush=True
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0


def add_command(sub, common) -> None:
    s = sub.add_parser(
        "serve",
        parents=[common],
        help="serve a model over HTTP (MLflow scoring protocol) with gruflow's request limits",
    )
    s.add_argument("--model", help="model URI (default: models:/<registry.model_name>@champion)")
    s.add_argument("--host", help="default: serve.host in params.yaml")
    s.add_argument("--port", type=int, help="default: serve.port in params.yaml")
    s.set_defaults(func=_serve)
