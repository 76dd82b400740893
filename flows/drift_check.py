"""Retrain's drift measurement, flow side: the champion from the registry, the documents it was
trained and tested on from the DVC cache (its `dvc.<paths.clean>` tag), the current clean
splits; reports/drift.json + drift.svg, MLflow logging and the markdown of the artifact.
The numbers themselves are computed by components/drift.py.

Usage: `report = measure(root, params)` after the clean stage ran;
`write(root, params, report, decision)`; `log_to_run(run_id, ...)`; `markdown(...)`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from components import drift
from components.artifacts import atomic_file, write_json
from components.contract import SPLITS, split_file, text_bytes
from components.errors import GruflowError
from components.params import Params

log = logging.getLogger(__name__)

DRIFT_REPORT, DRIFT_PLOT = "drift.json", "drift.svg"
PROFILE_REPORT = "data_profile.json"
LOG2 = math.log(2)
METRICS = {
    "bits_per_byte.new": "drift.new_bits_per_byte",
    "bits_per_byte.champion_test": "drift.champion_test_bits_per_byte",
    "bits_per_byte.ratio": "drift.bpb_ratio",
    "fallback_rate.new": "drift.fallback_new",
    "fallback_rate.rise": "drift.fallback_rise",
    "js_divergence": "drift.js_divergence",
    "age_days": "drift.champion_age_days",
    "documents.new": "drift.new_documents",
}


def _table(path: Path) -> pa.Table:
    return pq.read_table(path, columns=["doc_id", "text"])


def lineage_splits(root: Path, tags: dict[str, str], clean_path: str) -> dict[str, pa.Table]:
    """The champion's clean splits (doc_id, text), read from the local DVC cache through the
    directory hash its version was tagged with. Raises LookupError saying what is missing."""
    from dvc.repo import Repo

    md5 = tags.get(f"dvc.{clean_path}", "")
    if not md5.endswith(".dir"):
        raise LookupError(
            f"the champion has no dvc.{clean_path} tag (registered before lineage tags)"
        )
    with Repo(str(root)) as repo:
        cache = repo.cache.local
        manifest = Path(cache.oid_to_path(md5))
        if not manifest.is_file():
            raise LookupError(
                f"its {clean_path} ({md5}) is not in the local DVC cache — `dvc pull` it or retrain"
            )
        files = {
            e["relpath"]: Path(cache.oid_to_path(e["md5"]))
            for e in json.loads(manifest.read_text())
        }
    out = {}
    for split in SPLITS:
        path = files.get(split_file("", split).name)
        if path is None or not path.is_file():
            raise LookupError(f"its {clean_path}/{split}.parquet is not in the local DVC cache")
        out[split] = _table(path)
    return out


def other_changes(status: dict, outs: list[str]) -> list[str]:
    """What `dvc status` reports besides new data: changed params, code or other non-output
    dependencies, missing outputs ("stage: what" each). Data is a dependency that is some
    stage's output (the source snapshot, then what each stage made from it)."""

    def is_data(path: str) -> bool:
        return any(path == o or path.startswith(o.rstrip("/") + "/") for o in outs)

    found = []
    for stage, entries in status.items():
        for entry in entries:
            if not isinstance(entry, dict):  # "always changed" and the like
                found.append(f"{stage}: {entry}")
                continue
            for kind, changes in entry.items():
                if kind != "changed deps" or not isinstance(changes, dict):
                    found.append(f"{stage}: {kind}")
                    continue
                found += [
                    f"{stage}: {path}"
                    for path, how in changes.items()
                    if isinstance(how, dict) or not is_data(path)
                ]
    return found


def non_data_changes(root: Path) -> list[str]:
    """other_changes() of the project now (before the clean stage runs)."""
    from dvc.repo import Repo

    from flows.stages import all_outs

    with Repo(str(root)) as repo:
        status = repo.status()
    return other_changes(status, all_outs(root))


def _pick(table: pa.Table, max_bytes: int) -> tuple[list[str], list[str]]:
    ids, texts = table.column("doc_id").to_pylist(), table.column("text").to_pylist()
    chosen = drift.pick(ids, [text_bytes(t) for t in texts], max_bytes) if ids else []
    return [ids[i] for i in chosen], [texts[i] for i in chosen]


def _scores(lm, ids: list[str], texts: list[str]) -> list[dict]:
    """Per document {doc_id, bits_per_byte, nll, bytes} under the champion: a causal LM's
    next-token NLL, a masked LM's NLL under the fixed evaluation mask (it reads both sides, so
    a next-token score would mean nothing) — over the document's bytes either way."""
    from components.lm.inference import score_texts
    from components.lm.masked_inference import score_masked_texts

    if not texts:
        return []
    if getattr(lm, "objective", "causal") == "masked":
        nll = [r["nll"] for r in score_masked_texts(lm.model, lm.tokenizer, texts, lm.seq_len)]
    else:
        nll = [r["nll"] for r in score_texts(lm.model, lm.tokenizer, texts, lm.seq_len)]
    return [
        {"doc_id": d, "bits_per_byte": n / LOG2 / text_bytes(t), "nll": n, "bytes": text_bytes(t)}
        for d, n, t in zip(ids, nll, texts, strict=True)
    ]


def _profile(root: Path, params: Params) -> dict:
    """What the clean stage measured against its previous run (reports/data_profile.json)."""
    path = root / params.paths.reports / PROFILE_REPORT
    try:
        moved = json.loads(path.read_text()).get("drift", {})
    except (OSError, ValueError):
        moved = {}
    return {
        "against": "the previous clean run (same data.source)",
        "moved": moved,
        "limits": params.clean.drift.model_dump(),
    }


def age_days(name: str, version: str) -> float:
    """Days since the registry created the version (a decision input, never a stage output)."""
    from mlflow.tracking import MlflowClient

    created = MlflowClient().get_model_version(name, version).creation_timestamp
    return (time.time() * 1000 - created) / 86_400_000


def measure(root: Path, params: Params) -> dict:
    """The drift report against the champion, or {"unavailable": why} when there is none or
    its lineage cannot be read (on_drift then trains)."""
    from flows import registry
    from flows.lineage import version_tags
    from flows.serve import load_model

    name = params.registry.model_name
    version = registry.champion_version(name)
    if version is None:
        return {"unavailable": f"{name} has no champion yet"}
    base = {"champion": version, "age_days": age_days(name, version)}
    try:
        old = lineage_splits(root, version_tags(name, version), params.paths.clean)
    except LookupError as exc:
        return base | {"unavailable": f"champion version {version}: {exc}"}
    seen = set().union(*(t.column("doc_id").to_pylist() for t in old.values()))
    now = pa.concat_tables(_table(split_file(root / params.paths.clean, s)) for s in SPLITS)
    fresh = now.filter(pa.array([d not in seen for d in now.column("doc_id").to_pylist()]))
    cap = params.retrain.max_bytes
    new_ids, new_texts = _pick(fresh, cap)
    test_ids, test_texts = _pick(old["test"], cap)
    _, train_texts = _pick(old["train"], cap)
    try:
        lm = load_model(f"models:/{name}/{version}").unwrap_python_model()
    except GruflowError as exc:  # not loadable: nothing to measure with (on_drift trains)
        return base | {"unavailable": f"champion version {version}: {exc}"}
    tok = lm.tokenizer

    def ids(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    new_tokens, old_tokens = ids(new_texts), ids(train_texts)
    fallback = drift.fallback_ids(tok.get_vocab())
    size = tok.get_vocab_size()
    new_counts, old_counts = (drift.token_counts(t, size) for t in (new_tokens, old_tokens))
    js = (
        drift.js_divergence(new_counts, old_counts)
        if new_counts.sum() and old_counts.sum()
        else None
    )
    counts = {
        "new": fresh.num_rows,
        "new_scored": len(new_ids),
        "champion": len(seen),
        "champion_test_scored": len(test_ids),
        "old_train_tokenized": len(train_texts),
    }
    report = drift.build_report(
        counts,
        _scores(lm, new_ids, new_texts),
        _scores(lm, test_ids, test_texts),
        drift.fallback_share(new_tokens, fallback),
        drift.fallback_share(old_tokens, fallback),
        js,
        _profile(root, params),
    )
    return base | report


def _flat(report: dict) -> dict[str, float]:
    out = {}
    for key, metric in METRICS.items():
        value: object = report
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[metric] = float(value)
    return out


def _histogram(report: dict) -> list[dict]:
    per = report.get("per_document", {})
    return drift.histogram(
        [r["bits_per_byte"] for r in per.get("new", [])],
        [r["bits_per_byte"] for r in per.get("champion_test", [])],
    )


def write(root: Path, params: Params, report: dict, decision: drift.Decision) -> Path:
    """reports/drift.json (the report + the decision) and reports/drift.svg."""
    out = root / params.paths.reports / DRIFT_REPORT
    full = report | {
        "policy": params.retrain.policy,
        "decision": decision.as_dict(),
        "thresholds": params.retrain.drift.model_dump(),
        "max_age_days": params.retrain.max_age_days,
        "histogram": _histogram(report),
    }
    write_json(out, full)
    with atomic_file(out.with_suffix(".svg")) as tmp:
        tmp.write_text(
            drift.svg_plot(full["histogram"], "champion's bits/byte per document"), encoding="utf-8"
        )
    return out


def log_to_run(
    run_id: str, path: Path, report: dict, decision: drift.Decision, policy: str
) -> None:
    """Drift metrics, the decision tags and drift.json/svg on the retrain's MLflow run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for key, value in _flat(report).items():
        client.log_metric(run_id, key, value)
    client.set_tag(run_id, "retrain.policy", policy)
    client.set_tag(run_id, "retrain.decision", "train" if decision.retrain else "skip")
    client.set_tag(run_id, "retrain_reason", decision.reason)
    for p in (path, path.with_suffix(".svg")):
        if p.is_file():
            client.log_artifact(run_id, str(p), "drift")


def _num(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) and value is not None else "—"


def markdown(report: dict, decision: drift.Decision, policy: str) -> str:
    """The artifact's drift section: the decision, the numbers, the per-document plot."""
    lines = [
        f"## Drift (policy {policy}): {'train' if decision.retrain else 'skip'} — "
        f"{decision.reason}\n"
    ]
    if report.get("unavailable"):
        return "\n".join(lines + [f"Not measured: {report['unavailable']}.\n"])
    bpb, fb, docs = report["bits_per_byte"], report["fallback_rate"], report["documents"]
    moved = report["data_profile"]["moved"]
    lines += [
        "| measure | value |",
        "|---|---|",
        f"| champion | version {report['champion']}, {report['age_days']:.1f} days old |",
        f"| new documents (scored) | {docs['new']} ({docs['new_scored']}) |",
        f"| bits/byte new / champion test | {_num(bpb['new'])} / "
        f"{_num(bpb['champion_test'])} (ratio {_num(bpb['ratio'])}) |",
        f"| <unk>/byte-fallback share new / old | {_num(fb['new'])} / {_num(fb['old'])} |",
        f"| JS divergence new vs old train tokens | {_num(report['js_divergence'])} |",
        f"| data profile drift (clean) | "
        f"{', '.join(f'{k} {v:.3f}' for k, v in moved.items()) or 'not compared'} |",
        "",
        "Champion's bits/byte per document:\n",
        drift.markdown_plot(_histogram(report)),
        "",
    ]
    return "\n".join(lines)
