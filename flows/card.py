"""Model card: one self-contained HTML page per registered version (`gruflow card VERSION`).

Everything comes from the tracking store — the version's tags (metrics, gate decision,
lineage), its pipeline run and the nested stage runs' artifacts (learning curves, attention
map, samples, data profile) — so a card can be written for any version, not only the one the
workspace holds. Images are embedded as data URIs: the page opens offline and needs nothing
beside it. The card is also logged to the version's run (`card/model_card.html`) and a
one-paragraph summary goes into the version's description.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.artifacts import atomic_file
from components.errors import GruflowError

CARD_ARTIFACT = "card"  # artifact folder on the version's run
CARD_FILE = "model_card.html"
SUMMARY_MARK = "Model card:"  # the description line gruflow owns (replaced, never duplicated)
_IMAGES = {
    "learning_curves": "plots/learning_curves.png",
    "attention": "plots/attention.png",
    "perplexity_by_length": "plots/perplexity_by_length.png",
}
_USE = {  # intended use by objective (the version's `objective` tag; none = causal)
    False: "A GRU + causal-attention language model trained by gruflow on the corpus named in "
    "its lineage. Intended for scoring (perplexity, bits per byte) and short "
    "continuations of text like its training data, and as an encoder for fine-tuned "
    "classifiers.",
    True: "A masked language model (bidirectional GRU + attention) trained by gruflow on the "
    "corpus named in its lineage. Intended for filling <mask> tokens, masked-perplexity "
    "scoring of text like its training data, and as an encoder for fine-tuned "
    "classifiers; it cannot continue text (generate is refused).",
}
_BASELINES = (
    "masked_perplexity",
    "masked_baseline_perplexity",
    "masked_accuracy",
    "masked_top5_accuracy",
    "perplexity",
    "bigram_perplexity",
    "baseline_perplexity",
    "bits_per_byte",
    "word_perplexity",
    "bigram_word_perplexity",
    "baseline_word_perplexity",
    "token_accuracy",
    "top5_accuracy",
    "test_tokens",
    "test_bytes",
)


@dataclass
class CardData:
    name: str
    version: str
    aliases: list[str]
    tags: dict[str, str]
    params: dict[str, str]
    images: dict[str, bytes] = field(default_factory=dict)
    samples: str = ""
    tuned: str = ""
    profile: dict = field(default_factory=dict)


def resolve_version(client: MlflowClient, name: str, ref: str) -> str:
    """A version number or an alias (champion, challenger) -> the version number."""
    try:
        if ref.isdigit():
            return str(client.get_model_version(name, ref).version)
        return str(client.get_model_version_by_alias(name, ref).version)
    except MlflowException:
        raise GruflowError(
            f"model '{name}' has no version or alias '{ref}' — list the "
            "versions with `mlflow ui` or `gruflow history`"
        ) from None


def _artifact(client: MlflowClient, run_id: str, path: str, tmp: Path) -> bytes | None:
    try:
        return Path(client.download_artifacts(run_id, path, str(tmp))).read_bytes()
    except (MlflowException, OSError):
        return None


def collect(client: MlflowClient, name: str, version: str) -> CardData:
    mv = client.get_model_version(name, version)
    data = CardData(
        name=name,
        version=str(mv.version),
        aliases=list(mv.aliases or []),
        tags=dict(mv.tags),
        params={},
    )
    if not mv.run_id:
        return data
    children = client.search_runs(
        [client.get_run(mv.run_id).info.experiment_id],
        f"tags.mlflow.parentRunId = '{mv.run_id}'",
        max_results=100,
    )
    runs = {r.data.tags.get("mlflow.runName", ""): r for r in children}
    with tempfile.TemporaryDirectory() as tmp:
        if "train" in runs:
            data.params = dict(runs["train"].data.params)
            data.tuned = runs["train"].data.tags.get("tuned_params", "")
        if "evaluate" in runs:
            eval_id = runs["evaluate"].info.run_id
            for key, path in _IMAGES.items():
                if (blob := _artifact(client, eval_id, path, Path(tmp))) is not None:
                    data.images[key] = blob
            samples = _artifact(client, eval_id, "samples.md", Path(tmp))
            data.samples = samples.decode("utf-8", "replace") if samples else ""
        profile = _artifact(client, mv.run_id, "data/data_profile.json", Path(tmp))
        data.profile = json.loads(profile) if profile else {}
    return data


def _metrics(tags: dict[str, str]) -> dict[str, float]:
    out = {}
    for key, value in tags.items():
        if key.startswith("metric."):
            try:
                out[key.removeprefix("metric.")] = float(value)
            except ValueError:
                continue
    return out


def summary(data: CardData) -> str:
    """The paragraph that goes into the version's description."""
    m = _metrics(data.tags)
    status = ", ".join(data.aliases) or "no alias"
    parts = [f"{SUMMARY_MARK} {data.name} v{data.version} ({status})."]
    if "perplexity" in m:
        parts.append(
            f"Test perplexity {m['perplexity']:.2f}"
            + (f" vs bigram {m['bigram_perplexity']:.2f}" if "bigram_perplexity" in m else "")
            + (f", {m['bits_per_byte']:.3f} bits/byte." if "bits_per_byte" in m else ".")
        )
    if "gate.reason" in data.tags:
        verdict = "promoted" if data.tags.get("gate.promoted") == "True" else "not promoted"
        parts.append(f"Gate: {verdict} — {data.tags['gate.reason']}.")
    if commit := data.tags.get("git_commit"):
        parts.append(
            f"Commit {commit[:12]}" + (" (dirty)." if data.tags.get("git_dirty") == "True" else ".")
        )
    return " ".join(parts)


def _table(rows: dict, head: tuple[str, str] = ("key", "value")) -> str:
    if not rows:
        return "<p class='none'>not recorded for this version</p>"
    body = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in rows.items()
    )
    return (
        f"<table><thead><tr><th>{head[0]}</th><th>{head[1]}</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _image(data: CardData, key: str, alt: str) -> str:
    if key not in data.images:
        return f"<p class='none'>{html.escape(alt)}: not logged for this version</p>"
    uri = "data:image/png;base64," + base64.b64encode(data.images[key]).decode()
    return f"<img src='{uri}' alt='{html.escape(alt)}'>"


def _profile_rows(profile: dict) -> dict:
    keep = ("documents", "characters", "mean_chars", "chars_quantiles", "script_mix", "drift")
    return {
        k: json.dumps(profile[k], sort_keys=True) if isinstance(profile[k], dict) else profile[k]
        for k in keep
        if k in profile
    }


_STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#222;background:#fff}h1{border-bottom:2px solid #444}h2{margin-top:2rem;color:#234}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #bbb;padding:.2rem .5rem;
text-align:left;font-size:.9rem}th{background:#eef}img{max-width:100%;border:1px solid #ddd}
pre{white-space:pre-wrap;background:#f6f6f6;padding:.5rem}.none{color:#777;font-style:italic}
.verdict{font-size:1.1rem;padding:.5rem;background:#f3f7ee;border-left:4px solid #5a5}"""


def render(data: CardData) -> str:
    tags, m = data.tags, _metrics(data.tags)
    lineage = {
        k: v
        for k, v in sorted(tags.items())
        if k
        in (
            "git_commit",
            "git_dirty",
            "params_digest",
            "uv_lock_digest",
            "dvc_lock_digest",
            "prefect_flow_run_id",
            "reproducible",
            "train_device",
            "model_md5",
            "mlflow_run_id",
        )
        or k.startswith("dvc.")
    }
    gate = {k.removeprefix("gate."): v for k, v in tags.items() if k.startswith("gate.")}
    tuned = data.tuned
    title = f"Model card — {data.name} version {data.version}"
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='verdict'>{html.escape(summary(data))}</p>",
        "<h2>Intended use and limits</h2>",
        f"<p>{_USE[data.tags.get('objective', 'causal') == 'masked']} "
        "Not for factual answers: it reproduces the style and vocabulary of its corpus, "
        "including its errors and biases, and is unreliable on text in another language or "
        "domain (check <code>gruflow retrain</code>'s drift report before trusting it there). "
        "Its numbers below are measured on the test split of its own corpus only.</p>",
        "<h2>Metrics against the baselines</h2>",
        _table({k: m[k] for k in _BASELINES if k in m}, ("metric", "test value")),
        "<h2>Gate decision</h2>",
        _table(gate),
        "<h2>Data</h2>",
        _table(_profile_rows(data.profile)),
        "<h2>Parameters</h2>",
        _table(dict(sorted(data.params.items()))),
        f"<p>Tuned values: <code>{html.escape(tuned or 'none recorded')}</code></p>",
        "<h2>Learning curves</h2>",
        _image(data, "learning_curves", "learning curves"),
        "<h2>Attention</h2>",
        _image(data, "attention", "attention heat map"),
        "<h2>Perplexity by document length</h2>",
        _image(data, "perplexity_by_length", "perplexity by document length"),
        "<h2>Samples</h2>",
        f"<pre>{html.escape(data.samples)}</pre>"
        if data.samples
        else "<p class='none'>no samples logged for this version</p>",
        "<h2>Lineage</h2>",
        _table(lineage),
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )


def write_card(name: str, ref: str, out: Path | None, reports: Path) -> tuple[Path, str]:
    """Write the card of version/alias `ref`, log it to the version's run, put its summary in
    the version's description. Returns (path, version)."""
    client = MlflowClient()
    version = resolve_version(client, name, ref)
    data = collect(client, name, version)
    out = out or reports / "cards" / f"{name}-v{version}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        Path(tmp).write_text(render(data), encoding="utf-8")
    mv = client.get_model_version(name, version)
    if mv.run_id:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / CARD_FILE
            copy.write_text(out.read_text(encoding="utf-8"), encoding="utf-8")
            client.log_artifact(mv.run_id, str(copy), CARD_ARTIFACT)
    kept = [
        line for line in (mv.description or "").splitlines() if not line.startswith(SUMMARY_MARK)
    ]
    client.update_model_version(name, version, "\n".join([*kept, summary(data)]).strip())
    return out, version


def _card(args) -> int:
    from components.params import load_params
    from flows import tracking

    root = Path(args.project).resolve()
    params = load_params(root / "params.yaml")
    tracking.require_store(root)  # a failing look-up must not create mlflow.db
    tracking.configure(root, params.mlflow.experiment)
    out = Path(args.out).resolve() if args.out else None
    path, version = write_card(
        params.registry.model_name, args.version, out, root / params.paths.reports
    )
    print(f"gruflow: model card of {params.registry.model_name} version {version}: {path}")
    return 0


def add_commands(sub, common) -> None:
    card = sub.add_parser(
        "card",
        parents=[common],
        help="write a registered version's model card (one HTML page), log "
        "it to the version and summarise it in its description",
    )
    card.add_argument("version", help="version number or alias (champion, challenger)")
    card.add_argument("--out", help="HTML file to write (default: reports/cards/<model>-v<N>.html)")
    card.set_defaults(func=_card)


def log_data_profile(run_id: str, reports: Path) -> None:
    """The clean stage's data profile on the version's run, for its card."""
    profile = reports / "data_profile.json"
    if profile.is_file():
        MlflowClient().log_artifact(run_id, str(profile), "data")
