"""A tiny labelled task (two or three sentiment-like classes) on top of tests/tiny_lm.py's
project: params.yaml pointed at a JSONL file, the finetune section small and fast."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from components.params import load_params
from tests import tiny_lm

WORDS = {
    "pos": ["good", "great", "fine", "lovely", "happy", "excellent"],
    "neg": ["bad", "awful", "poor", "sad", "broken", "terrible"],
    "meh": ["average", "plain", "ordinary", "usual", "middling", "so-so"],
}
FILLER = ["the", "film", "was", "really", "quite", "and", "story", "acting", "music"]


def rows(n_per_class: int, labels=("pos", "neg"), seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for label in labels:
        for _ in range(n_per_class):
            words = rng.sample(FILLER, 4) + rng.sample(WORDS[label], 2)
            rng.shuffle(words)
            out.append({"text": " ".join(words), "label": label})
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def project(
    root: Path, name: str = "tiny-lm", records: list[dict] | None = None, **finetune
) -> dict:
    """tiny_lm's project with a labelled JSONL source and a small finetune section."""
    proj = tiny_lm.build_project(root, name)
    source = write_jsonl(root / "labelled.jsonl", records or rows(30))
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["paths"] |= {"classifier": str(root / "classifier"), "reports": str(root / "reports")}
    raw["finetune"] |= {
        "source": str(source),
        "epochs": 3,
        "freeze_epochs": 1,
        "batch_size": 16,
        "max_len": 16,
        "learning_rate": 0.01,
        "model_name": f"{name}-classifier",
        **finetune,
    }
    raw["clean"]["mask_pii"] = True
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    proj["params"] = load_params(root / "params.yaml")
    return proj
