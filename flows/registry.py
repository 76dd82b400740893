"""MLflow Model Registry rules: the champion/challenger gate, promote and rollback.

Every decision is recorded as tags on the model version (and, in a flow, as a Prefect
markdown artifact), so the registry says why each champion is champion.
"""

from __future__ import annotations

import datetime as dt
import getpass
import math
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.errors import GruflowError
from flows import alias_history

CHAMPION, CHALLENGER = "champion", "challenger"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def champion_version(name: str) -> str | None:
    try:
        return str(MlflowClient().get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


# What an <unk> target costs on top of the model's own loss: 8 bits for every byte of the text it
# stands for (the price of spelling it with a uniform byte model). Without it a version that
# knows fewer words could win: each unseen word would cost one cheap <unk> prediction.
UNK_BITS_PER_BYTE = 8.0


def unknown_bytes(tokenizer, texts: list[str]) -> tuple[int, int, int]:
    """(UTF-8 bytes covered by <unk> tokens, <unk> tokens, targets incl. one <eos> per text)."""
    from components.tokenize import UNK

    unk_bytes = unk = targets = 0
    for text, enc in zip(
        texts, tokenizer.encode_batch(texts, add_special_tokens=False), strict=True
    ):
        targets += len(enc.ids) + 1
        for token, (start, end) in zip(enc.ids, enc.offsets, strict=True):
            if token == UNK:
                unk += 1
                unk_bytes += len(text[start:end].encode("utf-8"))
    return unk_bytes, unk, targets


def score_version(model_uri: str, texts: list[str]) -> dict[str, float]:
    """A registered model on texts: `bits_per_byte` (total NLL over total bytes), `unk_rate`
    (share of targets that are <unk>) and `charged_bits_per_byte`, the gate's figure: bits per
    byte with every <unk> target also paying UNK_BITS_PER_BYTE for each byte it stands for."""
    import pandas as pd

    model = mlflow.pyfunc.load_model(model_uri)
    scores = model.predict(pd.DataFrame({"text": texts}), params={"mode": "score"})
    # Only the per-text `bits_per_byte` column is relied on (older versions return no more);
    # every version counts a text's bytes as its UTF-8 length + 1 for <eos>.
    n_bytes = [len(t.encode("utf-8")) + 1 for t in texts]
    bits = float(sum(b * n for b, n in zip(scores["bits_per_byte"], n_bytes, strict=True)))
    unk_bytes, unk, targets = unknown_bytes(model.unwrap_python_model().tokenizer, texts)
    total = sum(n_bytes)
    return {
        "bits_per_byte": bits / total,
        "unk_rate": unk / max(targets, 1),
        "charged_bits_per_byte": (bits + UNK_BITS_PER_BYTE * unk_bytes) / total,
    }


def bits_per_byte(model_uri: str, texts: list[str]) -> float:
    """Score a registered model on texts: total NLL over total bytes, in bits per byte."""
    return score_version(model_uri, texts)["bits_per_byte"]


def better(new: float, old: float, min_improvement: float) -> bool:
    """The challenger's figure beats the champion's by min_improvement (relative); a finite
    score beats a NaN/infinite champion, and a NaN/infinite challenger never wins."""
    if not math.isfinite(new):
        return False
    return not math.isfinite(old) or new < old * (1.0 - min_improvement)


def is_gated(name: str, version: str) -> bool:
    return "gate.promoted" in MlflowClient().get_model_version(name, version).tags


def set_champion(name: str, version: str, reason: str) -> None:
    """Move the champion alias, remembering the previous champion for rollback."""
    client = MlflowClient()
    previous = champion_version(name)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "promoted_at", _now())
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    if previous and previous != version:
        client.set_model_version_tag(name, version, "previous_champion", previous)
    alias_history.record(
        name,
        CHAMPION,
        previous,
        version,
        reason,
        "gate" if reason.startswith("gate") else "promote",
    )
    describe_model(name)


def objective_of(name: str, version: str) -> str:
    """A version's `objective` tag; versions registered before the masked LM are causal."""
    return MlflowClient().get_model_version(name, version).tags.get("objective", "causal")


def masked_perplexity(model_uri: str, texts: list[str]) -> float:
    """A registered masked LM's perplexity over the fixed evaluation mask of `texts`."""
    import pandas as pd

    model = mlflow.pyfunc.load_model(model_uri)
    scores = model.predict(pd.DataFrame({"text": texts}), params={"mode": "score"})
    return math.exp(scores["nll"].sum() / max(int(scores["masked_tokens"].sum()), 1))


def gate_masked(
    name: str,
    version: str,
    metrics: dict,
    test_file: Path,
    min_improvement: float,
    champion: str | None,
) -> dict:
    """The masked LM's gate: beat the unigram baseline on the same masked positions and, when
    a masked champion exists, its masked perplexity on the current test texts by
    min_improvement (relative). The caller has checked that the champion is masked too."""
    beats = metrics["masked_perplexity"] < metrics["masked_baseline_perplexity"]
    decision = {
        "challenger_masked_perplexity": metrics["masked_perplexity"],
        "unigram_masked_perplexity": metrics["masked_baseline_perplexity"],
        "beats_baseline": beats,
    }
    if champion is None:
        return decision | {
            "promoted": beats,
            "reason": "first masked version, "
            + ("beats" if beats else "does not beat")
            + " the unigram baseline",
        }
    texts = pq.read_table(test_file, columns=["text"]).column("text").to_pylist()
    new = masked_perplexity(f"models:/{name}/{version}", texts)
    old = masked_perplexity(f"models:/{name}/{champion}", texts)
    return decision | {
        "challenger_current_masked_perplexity": new,
        "champion_masked_perplexity": old,
        "promoted": better(new, old, min_improvement) and beats,
        "reason": f"masked perplexity {new:.3f} vs champion {old:.3f} on the current test set "
        f"(needs {min_improvement:.1%} better), unigram baseline "
        + ("beaten" if beats else "not beaten"),
    }


def gate(name: str, version: str, metrics: dict, test_file: Path, min_improvement: float) -> dict:
    """Alias `version` challenger; make it champion if it beats the current champion by
    `min_improvement` (relative, charged bits per byte on the *current* test texts, see
    score_version) and beats the bigram baseline. The first version only has to beat the
    bigram baseline. Only versions of the same objective (tag `objective`) are compared: a
    champion of the other objective is never replaced by the gate (its users call another
    API), only by `gruflow promote`. Masked versions: gate_masked."""
    client = MlflowClient()
    try:
        old_challenger = str(client.get_model_version_by_alias(name, CHALLENGER).version)
    except MlflowException:
        old_challenger = None
    client.set_registered_model_alias(name, CHALLENGER, version)
    alias_history.record(name, CHALLENGER, old_challenger, version, "gate: new version", "gate")
    champion, objective = champion_version(name), objective_of(name, version)
    if champion is not None and objective_of(name, champion) != objective:
        decision = {
            "challenger": version,
            "champion_before": champion,
            "promoted": False,
            "reason": f"champion {champion} is a {objective_of(name, champion)} LM, "
            f"this version {objective}: the gate compares only versions of "
            "the same objective — `gruflow promote` to switch by hand",
        }
        return _record(name, version, decision, metrics)
    if objective == "masked":
        decision = {"challenger": version, "champion_before": champion} | gate_masked(
            name, version, metrics, test_file, min_improvement, champion
        )
        return _record(name, version, decision, metrics)
    beats_bigram = metrics["perplexity"] < metrics["bigram_perplexity"]
    decision = {
        "challenger": version,
        "champion_before": champion_version(name),
        "challenger_perplexity": metrics["perplexity"],
        "bigram_perplexity": metrics["bigram_perplexity"],
        "beats_bigram": beats_bigram,
    }
    if decision["champion_before"] is None:
        promote = beats_bigram
        reason = (
            f"first version, test perplexity {metrics['perplexity']:.2f} "
            + ("beats" if beats_bigram else "does not beat")
            + f" the bigram baseline {metrics['bigram_perplexity']:.2f}"
        )
    else:
        texts = pq.read_table(test_file, columns=["text"]).column("text").to_pylist()
        versions = {"challenger": version, "champion": decision["champion_before"]}
        scores = {who: score_version(f"models:/{name}/{v}", texts) for who, v in versions.items()}
        for who, score in scores.items():
            decision |= {f"{who}_{key}": value for key, value in score.items()}
        new = scores["challenger"]["charged_bits_per_byte"]
        old = scores["champion"]["charged_bits_per_byte"]
        promote = better(new, old, min_improvement) and beats_bigram
        reason = (
            f"bits/byte {new:.4f} vs champion {old:.4f} on the current test set, <unk> "
            f"bytes charged {UNK_BITS_PER_BYTE:g} bits (needs {min_improvement:.1%} "
            "better), bigram baseline " + ("beaten" if beats_bigram else "not beaten")
        )
    decision |= {"promoted": promote, "reason": reason}
    return _record(name, version, decision, metrics)


def _record(name: str, version: str, decision: dict, metrics: dict) -> dict:
    """The gate's decision as tags on the version; the champion alias moved if promoted."""
    client = MlflowClient()
    for key in ("promoted", "reason"):
        client.set_model_version_tag(name, version, f"gate.{key}", str(decision[key]))
    if decision["promoted"]:
        set_champion(name, version, "gate: " + decision["reason"])
    decision["line"] = decision_line(name, version, decision["promoted"], decision["reason"])
    client.update_model_version(name, version, description=_version_text(decision["line"], metrics))
    describe_model(name)
    return decision


def decision_line(name: str, version: str, promoted: bool, reason: str, new: bool = True) -> str:
    """The gate's decision, why, and what to do next, in one line (CLI summary, version
    description, the pipeline run's `gate.decision` tag)."""
    head = (
        f"registered model version {version}"
        if new
        else f"model version {version} (already registered)"
    )
    if promoted:
        return f"{head} as {CHAMPION}: {reason}"
    return (
        f"{head} as {CHALLENGER}: {reason} — {name} serves the champion only; promote it "
        f"with `gruflow promote {version}`, or train longer (train.epochs, more data)"
    )


def current_decision(name: str, version: str) -> str:
    """`decision_line` of an already gated version, as its tags and aliases say now."""
    tags = MlflowClient().get_model_version(name, version).tags
    champion = champion_version(name) == version
    reason = tags.get("gate.reason", "")
    if champion and tags.get("gate.promoted") != "True":  # promoted later by hand
        reason = tags.get("promotion_reason", reason)
    return decision_line(name, version, champion, reason, new=False)


def _version_text(line: str, metrics: dict) -> str:
    keys = ("perplexity", "bits_per_byte", "bigram_perplexity", "baseline_perplexity")
    shown = ", ".join(f"{k} {metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), float))
    return f"gruflow gate: {line}.\n\nTest metrics: {shown}."


def describe_model(name: str) -> None:
    """The registered model's description: what it is and which version serves."""
    champion = champion_version(name)
    serving = (
        f"version {champion} is the champion (`models:/{name}@{CHAMPION}`)"
        if champion
        else "no champion yet (see the challenger's description)"
    )
    MlflowClient().update_registered_model(
        name,
        description=(
            "GRU + causal attention language model trained by gruflow (Keras 3; pyfunc: "
            f"generate/score). {serving.capitalize()}; every version's description says why the "
            "gate promoted it or not."
        ),
    )


def model_uri(name: str) -> str:
    """`models:/NAME@champion`, or a one-line error that says what to do instead: promote
    the challenger when there is one, otherwise run the pipeline."""
    if champion_version(name):
        return f"models:/{name}@{CHAMPION}"
    try:
        mv = MlflowClient().get_model_version_by_alias(name, CHALLENGER)
    except MlflowException:
        raise GruflowError(
            f"cannot load model 'models:/{name}@{CHAMPION}' ({name} has no "
            "registered version) — run `gruflow run` first or pass --model "
            "URI"
        ) from None
    raise GruflowError(
        f"{name} has no champion: version {mv.version} is the challenger "
        f"({mv.tags.get('gate.reason', 'not promoted by the gate')}) — promote "
        f"it with `gruflow promote {mv.version}`, or pass --model "
        f"models:/{name}/{mv.version}"
    )


def promote(name: str, version: str) -> str:
    """A human's promotion of VERSION to champion, recorded on the version."""
    client = MlflowClient()
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise GruflowError(
            f"model '{name}' has no version {version} — see the registry "
            "(mlflow ui) for the versions that exist"
        ) from None
    set_champion(name, version, f"promoted by {getpass.getuser()} (gruflow promote)")
    return version


def rollback(name: str) -> str:
    """Put the previous champion back, recorded on both versions."""
    current = champion_version(name)
    if current is None:
        raise GruflowError(f"model '{name}' has no champion to roll back")
    client = MlflowClient()
    # The alias history knows the whole line of champions (so rollbacks walk back through it);
    # a registry from before the history only has the version's previous_champion tag.
    previous = alias_history.rollback_target(name, current) or client.get_model_version(
        name, current
    ).tags.get("previous_champion")
    if not previous:
        raise GruflowError(f"champion version {current} of '{name}' has no previous champion")
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, current, "rolled_back_at", _now())
    client.set_model_version_tag(name, previous, "promoted_at", _now())
    client.set_model_version_tag(
        name,
        previous,
        "promotion_reason",
        f"rollback from version {current} by {getpass.getuser()}",
    )
    alias_history.record(
        name, CHAMPION, current, previous, f"rollback from version {current}", "rollback"
    )
    describe_model(name)
    return previous


def gate_markdown(name: str, decision: dict, run_id: str) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in decision.items())
    return (
        f"# gruflow gate: {name} version {decision['challenger']}\n\n"
        f"**{'Promoted to champion' if decision['promoted'] else 'Kept as challenger'}**"
        f" — {decision['reason']}\n\n| key | value |\n|---|---|\n{rows}\n\n"
        f"MLflow run `{run_id}`; model `models:/{name}/{decision['challenger']}`\n"
    )
