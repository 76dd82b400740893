"""`gruflow classify "text" [--model URI]`: the label and class probabilities of a text under
the champion classifier (or another registered one). Heavy imports happen only when it runs."""

from __future__ import annotations

from pathlib import Path

from components.errors import GruflowError


def classify_command(sub, common) -> None:
    """`gruflow classify "text" [--model URI]`: label and class probabilities."""
    c = sub.add_parser(
        "classify", parents=[common], help="label a text with the champion classifier"
    )
    c.add_argument("text", help="the text to label")
    c.add_argument("--model", help="model URI (default: models:/<finetune.model_name>@champion)")
    c.set_defaults(func=_classify)


def _classify(args) -> int:
    import mlflow
    import pandas as pd

    from components.params import load_params
    from flows import classifier

    root = Path(args.project).resolve()
    params = load_params(root / "params.yaml")
    classifier.tracking.configure(root, params.mlflow.experiment)
    uri = args.model or f"models:/{params.finetune.model_name}@champion"
    model = classifier.load_classifier(uri)
    try:
        row = model.predict(pd.DataFrame({"text": [args.text]})).iloc[0]
    except mlflow.exceptions.MlflowException as exc:
        raise GruflowError(exc.message.splitlines()[-1]) from None
    probs = ", ".join(
        f"{k.removeprefix('prob_')} {v:.3f}" for k, v in row.items() if k.startswith("prob_")
    )
    print(f"{row['label']}\t({probs})")
    return 0
