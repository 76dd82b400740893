"""Registry gate, promote/rollback, the pyfunc, the real `mlflow models serve` and the CLI.

One tiny project in a temporary folder (components symlinked, params.yaml copied with absolute
model/tokenizer paths, seq_len 64 tuned to 16 in
artifacts/best_params.json), a small BPE tokenizer and untrained 8-unit Keras models
whose special tokens are biased away (so generation never stops early and text is never empty),
and a sqlite MLflow store. Everything registers through flows.tracking.log_and_register_model and
is gated through flows.registry, exactly as the pipeline's register task does.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from tiny_lm import (  # noqa: E402
    SEQ_LEN,
    UNTUNED_SEQ_LEN,
    VENV_BIN,
    build_project,
    http,
    register,
    serve_model,
    spawn,
    stop,
    wait_until_up,
)
from tiny_lm import env as _env  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from components.contract import BOS, EOS  # noqa: E402
from components.errors import GruflowError  # noqa: E402
from components.lm.inference import zero_states  # noqa: E402
from components.lm.pyfunc import MAX_NEW_TOKENS_CAP  # noqa: E402
from flows import cli, model_contract, registry, tracking  # noqa: E402

NAME, WEAK_NAME, OPS_NAME = "tiny-lm", "tiny-lm-weak", "tiny-lm-ops"
PROMPT = "the parser"  # few tokens: prompt + new tokens stay inside one seq_len window
SAMPLE = "the parser reads the header and returns a list of names\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = build_project(tmp_path_factory.mktemp("serving"), NAME)
    root = project["root"]
    prev_uri = os.environ.get("MLFLOW_TRACKING_URI")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        tracking.configure(root, "gruflow")
        yield project
        mlflow.set_tracking_uri(prev_uri)


_register = register


def _named(params, name: str, model: Path | None = None):
    update: dict = {"registry": params.registry.model_copy(update={"model_name": name})}
    if model is not None:
        update["paths"] = params.paths.model_copy(update={"model": str(model)})
    return params.model_copy(update=update)


GOOD = {"perplexity": 20.0, "bigram_perplexity": 50.0}


@pytest.fixture(scope="module")
def first_version(project):
    """tiny-lm v1 (model A), gated as the first version: beats the bigram -> champion.
    Nothing below moves tiny-lm's champion, so the server and CLI runs may load it early."""
    params = project["params"]
    v1, run1 = _register(project, params, {**GOOD, "bits_per_byte": 1.5}, "flow-run-1")
    first = registry.gate(
        NAME, v1, GOOD, project["root"] / "clean" / "test.parquet", params.registry.min_improvement
    )
    return {"v1": v1, "run1": run1, "first": first}


@pytest.fixture(scope="module")
def registered(project, first_version, background):
    """After the background processes start (their imports overlap this and the in-process
    tests): tiny-lm v2 (model B) gated with min_improvement 0.99, so it must stay challenger;
    tiny-lm-weak v1 gated as a first version that misses the bigram; tiny-lm-ops v1 (gated,
    champion) and v2 (not gated) for promote and rollback."""
    root, params = project["root"], project["params"]
    test_file, model_b = root / "clean" / "test.parquet", root / "model_b.keras"
    v2, _ = _register(
        project, _named(params, NAME, model_b), {**GOOD, "perplexity": 19.0}, "flow-run-2"
    )
    second = registry.gate(NAME, v2, {**GOOD, "perplexity": 19.0}, test_file, min_improvement=0.99)
    weak_metrics = {"perplexity": 60.0, "bigram_perplexity": 50.0}
    weak_v, _ = _register(project, _named(params, WEAK_NAME), weak_metrics, "flow-run-3")
    weak = registry.gate(
        WEAK_NAME, weak_v, weak_metrics, test_file, params.registry.min_improvement
    )
    ops_v1, _ = _register(project, _named(params, OPS_NAME), GOOD, "flow-run-4")
    registry.gate(OPS_NAME, ops_v1, GOOD, test_file, params.registry.min_improvement)
    _register(project, _named(params, OPS_NAME, model_b), GOOD, "flow-run-5")
    return {**first_version, "v2": v2, "second": second, "weak_v": weak_v, "weak": weak}


# --- registry ------------------------------------------------------------------------------


def test_first_version_has_signature_and_lineage(registered):
    assert registered["v1"] == "1"
    info = mlflow.models.get_model_info(f"models:/{NAME}/1")
    assert info.signature.inputs.input_names() == ["text"]
    assert {p.name for p in info.signature.params.params} >= {
        "mode",
        "max_new_tokens",
        "temperature",
        "top_k",
        "seed",
    }
    tags = MlflowClient().get_model_version(NAME, "1").tags
    assert tags["mlflow_run_id"] == registered["run1"]
    assert tags["prefect_flow_run_id"] == "flow-run-1"
    assert re.fullmatch(r"[0-9a-f]{16}", tags["params_digest"])
    assert tags["git_commit"] and tags["git_dirty"] in {"True", "False"}
    assert re.fullmatch(r"[0-9a-f]{32}", tags["model_md5"])
    assert float(tags["metric.perplexity"]) == 20.0
    assert float(tags["metric.bits_per_byte"]) == 1.5


def test_first_version_beating_bigram_becomes_champion(registered):
    assert registered["first"]["promoted"] is True
    assert registered["first"]["champion_before"] is None
    tags = MlflowClient().get_model_version(NAME, "1").tags
    assert tags["gate.promoted"] == "True"
    assert "promoted_at" in tags and "bigram" in tags["promotion_reason"]


def test_first_version_missing_bigram_is_not_champion(registered):
    assert registered["weak"]["promoted"] is False
    assert registry.champion_version(WEAK_NAME) is None
    client = MlflowClient()
    assert (
        str(client.get_model_version_by_alias(WEAK_NAME, "challenger").version)
        == registered["weak_v"]
    )
    assert (
        client.get_model_version(WEAK_NAME, registered["weak_v"]).tags["gate.promoted"] == "False"
    )


def test_second_version_short_of_min_improvement_stays_challenger(project, registered):
    decision = registered["second"]
    assert registered["v2"] == "2"
    assert decision["promoted"] is False and decision["champion_before"] == "1"
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "2"
    tags = client.get_model_version(NAME, "2").tags
    assert tags["gate.promoted"] == "False"
    new, old = decision["challenger_bits_per_byte"], decision["champion_bits_per_byte"]
    assert 0 < new and 0 < old and new != old  # two different models, both really scored
    assert f"{new:.4f}" in tags["gate.reason"] and f"{old:.4f}" in tags["gate.reason"]
    # the gate scored on the test parquet: same figure as scoring the champion directly
    texts = pq.read_table(project["root"] / "clean" / "test.parquet").column("text").to_pylist()
    assert registry.bits_per_byte(f"models:/{NAME}/1", texts) == pytest.approx(old, rel=1e-6)


def test_promote_then_rollback_restores_previous_champion(registered):
    client = MlflowClient()
    assert registry.champion_version(OPS_NAME) == "1"
    assert registry.promote(OPS_NAME, "2") == "2"
    assert registry.champion_version(OPS_NAME) == "2"
    tags = client.get_model_version(OPS_NAME, "2").tags
    assert tags["previous_champion"] == "1"
    assert "gruflow promote" in tags["promotion_reason"]
    assert registry.rollback(OPS_NAME) == "1"
    assert registry.champion_version(OPS_NAME) == "1"
    assert "rolled_back_at" in client.get_model_version(OPS_NAME, "2").tags
    assert (
        "rollback from version 2"
        in client.get_model_version(OPS_NAME, "1").tags["promotion_reason"]
    )
    # version 1 was the first champion: nothing before it to roll back to
    with pytest.raises(GruflowError, match="no previous champion"):
        registry.rollback(OPS_NAME)
    assert registry.champion_version(OPS_NAME) == "1"


def test_rollback_without_champion_is_an_error(registered):
    with pytest.raises(GruflowError, match=WEAK_NAME):
        registry.rollback(WEAK_NAME)


def test_promote_missing_version_is_an_error(registered):
    with pytest.raises(GruflowError, match="no version 99"):
        registry.promote(NAME, "99")
    assert registry.champion_version(NAME) == "1"


def test_registered_model_carries_the_tuned_seq_len(project, first_version):
    """Issue 16 (b): params.yaml says train.seq_len 64, the tune stage chose 16: the registered
    info.json, hence serving, windows with the tuned 16."""
    assert project["params"].train.seq_len == UNTUNED_SEQ_LEN
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{first_version['v1']}")
    assert model.unwrap_python_model().seq_len == SEQ_LEN


# --- pyfunc --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def champion(registered):
    return mlflow.pyfunc.load_model(f"models:/{NAME}@champion")


@pytest.fixture(scope="module")
def keras_a(project):
    return keras.saving.load_model(project["root"] / "model_a.keras")


def _generate(model, prompt: str, **params) -> str:
    out = model.predict(pd.DataFrame({"text": [prompt]}), params={"mode": "generate", **params})
    return out["text"].iloc[0]


def _greedy(keras_model, tok: Tokenizer, prompt: str, n: int) -> list[int]:
    """Reference: n argmax steps of the bare Keras model, last SEQ_LEN tokens as context."""
    ids = [BOS, *tok.encode(prompt, add_special_tokens=False).ids]
    start = len(ids)
    for _ in range(n):
        x = np.array([ids[-SEQ_LEN:]], dtype=np.int32)  # (1, T)
        logits = keras_model([x, *zero_states(keras_model, 1)], training=False)[0]  # cold
        nxt = int(np.argmax(np.asarray(logits)[0, -1]))
        if nxt == EOS:
            break
        ids.append(nxt)
    return ids[start:]


def test_generate_is_deterministic_for_a_seed(champion):
    a = _generate(champion, PROMPT, max_new_tokens=8, temperature=1.0, seed=3)
    b = _generate(champion, PROMPT, max_new_tokens=8, temperature=1.0, seed=3)
    c = _generate(champion, PROMPT, max_new_tokens=8, temperature=1.0, seed=4)
    assert a == b and a
    assert a != c  # ~116 allowed tokens, 8 draws: equal only if the seed were ignored


def test_temperature_zero_is_greedy_and_respects_max_new_tokens(champion, keras_a, project):
    tok = project["tokenizer"]
    plain = {"repetition_penalty": 1.0}  # the default (params.yaml generate) penalises repeats
    for n in (1, 5):
        ids = _greedy(keras_a, tok, PROMPT, n)
        assert len(ids) == n  # the bare model never picks a special token
        assert _generate(
            champion, PROMPT, max_new_tokens=n, temperature=0.0, **plain
        ) == tok.decode(ids)
    # temperature 0 ignores the seed; top_k 1 is greedy whatever the temperature
    assert _generate(
        champion, PROMPT, max_new_tokens=5, temperature=0.0, seed=7, **plain
    ) == tok.decode(_greedy(keras_a, tok, PROMPT, 5))
    assert _generate(
        champion, PROMPT, max_new_tokens=5, temperature=1.0, top_k=1, seed=9, **plain
    ) == tok.decode(_greedy(keras_a, tok, PROMPT, 5))


def test_sampled_generation_is_at_most_max_new_tokens(champion, project):
    tok = project["tokenizer"]
    singles = {tok.decode([i]) for i in range(tok.get_vocab_size())}
    for seed in range(3):
        assert _generate(champion, PROMPT, max_new_tokens=1, temperature=1.0, seed=seed) in singles


def test_score_reports_perplexity_and_bits_per_byte(champion, keras_a, project):
    texts = ["the header", "a socket opens"]
    rows = champion.predict(pd.DataFrame({"text": texts}), params={"mode": "score"})
    assert len(rows) == 2
    for text, row in zip(texts, rows.to_dict("records"), strict=True):
        assert row["perplexity"] > 1 and row["bits_per_byte"] > 0
        assert row["bytes"] == len(text.encode("utf-8")) + 1  # + <eos>
        assert row["bits_per_byte"] == pytest.approx(row["nll"] / math.log(2) / row["bytes"])
        assert row["perplexity"] == pytest.approx(math.exp(row["nll"] / row["tokens"]))
    # independent check of the NLL: one forward pass of the bare model over <bos> text <eos>
    tok = project["tokenizer"]
    ids = [BOS, *tok.encode(texts[0], add_special_tokens=False).ids, EOS]
    assert len(ids) - 1 <= SEQ_LEN
    x = np.array([ids[:-1]], np.int32)
    logits = np.asarray(keras_a([x, *zero_states(keras_a, 1)], training=False)[0], np.float64)[
        0
    ]  # (T, V)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = float((logz - logits[np.arange(len(ids) - 1), ids[1:]]).sum())
    assert rows["tokens"].iloc[0] == len(ids) - 1
    assert rows["nll"].iloc[0] == pytest.approx(nll, rel=1e-4)


REPEATED = "the parser reads the header and returns a list of names. " * 6
CACHE = {"cache_size": 100, "cache_theta": 0.5, "cache_lambda": 0.3}


def test_score_with_the_cache_adds_columns_and_keeps_the_static_ones(champion):
    """The continuous cache (components/lm/cache.py) in the served pyfunc: extra `_cache`
    columns, the static columns unchanged; on a repeated sentence it must lower the NLL.
    Without a choice made by evaluate (no info.json cache), the default is off."""
    frame = pd.DataFrame({"text": [REPEATED, "a socket opens"]})
    static = champion.predict(frame, params={"mode": "score"})
    assert "perplexity_cache" not in static.columns  # this model was evaluated without it
    cached = champion.predict(frame, params={"mode": "score", **CACHE})
    pd.testing.assert_frame_equal(cached[static.columns], static)  # byte for byte
    row = cached.iloc[0]
    assert row["nll_cache"] < row["nll"]
    assert row["perplexity_cache"] == pytest.approx(math.exp(row["nll_cache"] / row["tokens"]))
    assert row["bits_per_byte_cache"] == pytest.approx(
        row["nll_cache"] / math.log(2) / row["bytes"]
    )
    off = champion.predict(frame, params={"mode": "score", **CACHE, "cache_size": 0})
    assert "perplexity_cache" not in off.columns


def test_registered_info_carries_the_cache_evaluate_chose(project, tmp_path):
    params = project["params"]
    tuned = tmp_path / params.paths.best_params  # serving_info reads the tuned seq_len
    tuned.parent.mkdir(parents=True)
    shutil.copy(project["root"] / params.paths.best_params, tuned)
    reports = tmp_path / params.paths.reports
    reports.mkdir(parents=True)
    (reports / "metrics.json").write_text(
        json.dumps({"perplexity": 9.0, "cache_size": 300, "cache_theta": 0.3, "cache_lambda": 0.2})
    )
    info = model_contract.serving_info(tmp_path, params)
    assert info["cache"] == {"size": 300, "theta": 0.3, "lambda": 0.2}
    (reports / "metrics.json").write_text(json.dumps({"perplexity": 9.0}))
    assert "cache" not in model_contract.serving_info(tmp_path, params)


def test_cli_score_with_the_cache_prints_both_lines(
    project, registered, champion, capsys, tmp_path
):
    sample = tmp_path / "repeated.txt"
    sample.write_text(REPEATED)
    rc = cli.main(
        [
            "score",
            str(sample),
            "--project",
            str(project["root"]),
            "--cache-size",
            "100",
            "--cache-theta",
            "0.5",
            "--cache-lambda",
            "0.3",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    row = champion.predict(
        pd.DataFrame({"text": [REPEATED]}), params={"mode": "score", **CACHE}
    ).iloc[0]
    m = re.search(r"perplexity ([\d.]+), ([\d.]+) bits/byte \(", out)
    c = re.search(r"with the continuous cache: perplexity ([\d.]+), ([\d.]+) bits/byte", out)
    assert m and c, out
    assert float(m[1]) == pytest.approx(row["perplexity"], abs=1e-3)
    assert float(c[1]) == pytest.approx(row["perplexity_cache"], abs=1e-3)
    assert float(c[2]) == pytest.approx(row["bits_per_byte_cache"], abs=1e-4)


def test_negative_seed_is_a_clear_bad_request(champion):
    with pytest.raises(MlflowException, match="seed") as exc:
        _generate(champion, PROMPT, max_new_tokens=2, temperature=0.0, seed=-1)
    assert exc.value.error_code == "INVALID_PARAMETER_VALUE"


# --- the real server -----------------------------------------------------------------------

_http, _stop = http, stop


def _spawn(project, log_name: str, *argv: str):
    return spawn(project["root"], log_name, *argv)


@pytest.fixture(scope="module")
def background(project, first_version):
    """The server and the two model-loading CLI runs start together as soon as tiny-lm has a
    champion: each spends ~20 s importing TensorFlow and MLflow, so overlapping them with each
    other and with the in-process tests keeps the module fast."""
    root = str(project["root"])
    (project["root"] / "sample.txt").write_text(SAMPLE)
    server, url = serve_model(project["root"], "serve.log", f"models:/{NAME}@champion")
    procs = {
        "server": server,
        "generate": _spawn(
            project,
            "generate.log",
            "gruflow",
            "generate",
            PROMPT,
            "--project",
            root,
            "--model",
            f"models:/{NAME}/1",
            "--max-new-tokens",
            "5",
        ),
        "score": _spawn(project, "score.log", "gruflow", "score", "sample.txt", "--project", root),
    }
    try:
        yield {"url": url, **procs}
    finally:
        for proc in procs.values():
            _stop(proc)


def _finished(project, background, key: str) -> tuple[int, str]:
    rc = background[key].wait(timeout=300)
    return rc, (project["root"] / f"{key}.log").read_text()


@pytest.fixture(scope="module")
def server(project, background):
    proc, url = background["server"], background["url"]
    wait_until_up(proc, url, project["root"] / "serve.log", timeout=120)
    return url


def test_server_generates(server):
    status, body = _http(
        server + "/invocations",
        {
            "dataframe_records": [{"text": PROMPT}, {"text": "a socket"}],
            "params": {"mode": "generate", "max_new_tokens": 8, "seed": 0},
        },
    )
    assert status == 200, body
    preds = body["predictions"]
    assert isinstance(preds, list) and len(preds) == 2
    assert all(isinstance(p["text"], str) and p["text"] for p in preds)


def test_server_scores(server):
    status, body = _http(
        server + "/invocations",
        {
            "dataframe_records": [{"text": "the parser reads the header"}],
            "params": {"mode": "score"},
        },
    )
    assert status == 200, body
    row = body["predictions"][0]
    assert row["perplexity"] > 1 and row["bits_per_byte"] > 0


def test_server_scores_with_the_cache(server):
    status, body = _http(
        server + "/invocations",
        {"dataframe_records": [{"text": REPEATED}], "params": {"mode": "score", **CACHE}},
    )
    assert status == 200, body
    row = body["predictions"][0]
    assert row["perplexity_cache"] < row["perplexity"]
    status, body = _http(
        server + "/invocations",
        {
            "dataframe_records": [{"text": REPEATED}],
            "params": {"mode": "score", "cache_lambda": 2.0},
        },
    )
    assert status == 400 and "cache_lambda" in str(body), body


@pytest.mark.parametrize(
    ("records", "params", "mentions"),
    [
        ([{"prompt": "hello"}], {}, "text"),
        ([{"text": ""}], {}, "empty"),
        ([{"text": 5}], {}, "text"),
        ([{"text": "hello"}], {"max_new_tokens": MAX_NEW_TOKENS_CAP + 1}, "max_new_tokens"),
        ([{"text": "hello"}], {"temperature": -0.5}, "temperature"),
        ([{"text": "hello"}], {"temperature": float("inf")}, "temperature"),  # JSON `Infinity`
        ([{"text": "hello"}], {"mode": "score", "max_new_tokens": -1}, "max_new_tokens"),
        ([{"text": "hello"}], {"mode": "score", "top_k": -1}, "top_k"),
    ],
    ids=[
        "missing-text-column",
        "empty-string",
        "non-string",
        "max-new-tokens-cap",
        "negative-temperature",
        "infinite-temperature",
        "score-negative-max-new-tokens",
        "score-negative-top-k",
    ],
)
def test_server_rejects_bad_requests_and_stays_up(server, records, params, mentions):
    status, body = _http(
        server + "/invocations",
        {"dataframe_records": records, "params": {"mode": "generate", **params}},
    )
    assert 400 <= status < 500, body
    assert mentions in body["message"].lower(), body["message"]
    assert _http(server + "/ping")[0] == 200


# --- the CLI -------------------------------------------------------------------------------


def test_cli_generate_prints_prompt_and_continuation(project, background):
    rc, out = _finished(project, background, "generate")
    assert rc == 0, out[-3000:]
    line = out.strip().splitlines()[-1]  # after any TensorFlow log lines
    assert line.startswith(PROMPT) and len(line) > len(PROMPT), out[-3000:]


def test_cli_score_prints_perplexity_and_bits_per_byte(project, background, champion):
    rc, out = _finished(project, background, "score")
    assert rc == 0, out[-3000:]
    m = re.search(r"sample.txt: perplexity ([\d.]+), ([\d.]+) bits/byte", out)
    assert m, out[-3000:]
    row = champion.predict(pd.DataFrame({"text": [SAMPLE]}), params={"mode": "score"}).iloc[0]
    assert float(m[1]) == pytest.approx(row["perplexity"], abs=1e-3)
    assert float(m[2]) == pytest.approx(row["bits_per_byte"], abs=1e-4)


def test_cli_promote_missing_version_is_one_line_exit_2(project, registered, capsys):
    rc = cli.main(["promote", "99", "--project", str(project["root"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "no version 99" in err[0]
    assert registry.champion_version(NAME) == "1"


@pytest.mark.parametrize(
    ("option", "value"),
    [("--max-new-tokens", str(MAX_NEW_TOKENS_CAP + 1)), ("--temperature", "-1")],
)
def test_cli_generate_bad_option_is_one_line_exit_2(project, registered, capsys, option, value):
    rc = cli.main(
        [
            "generate",
            PROMPT,
            "--project",
            str(project["root"]),
            "--model",
            f"models:/{NAME}/1",
            option,
            value,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and option.strip("-").replace("-", "_") in err[0]


def test_cli_score_missing_file_is_one_line_exit_2(project):
    done = subprocess.run(
        [str(VENV_BIN / "gruflow"), "score", "missing.txt", "--project", str(project["root"])],
        cwd=project["root"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.txt" in lines[0], done.stderr
    assert done.stdout == ""


# --- --model loads only gruflow's own models ------------------------------------------------


class MarkerModel(mlflow.pyfunc.PythonModel):
    """A cloudpickled pyfunc whose load writes a marker file: proof that its code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def load_context(self, context):
        Path(self.marker).write_text("loaded")

    def predict(self, context, model_input, params=None):
        return model_input


def test_cli_refuses_a_pickled_model_before_loading_it(project, first_version, tmp_path, capsys):
    marker, path = tmp_path / "marker", tmp_path / "pickled"
    mlflow.pyfunc.save_model(
        str(path), python_model=MarkerModel(str(marker)), pip_requirements=[]
    )  # no requirement inference: seconds
    capsys.readouterr()
    root = str(project["root"])
    for argv in (
        ["generate", PROMPT],
        ["score", str(project["root"] / "tokenizer.json")],
        ["similar", "the"],
    ):
        rc = cli.main([*argv, "--project", root, "--model", str(path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2
        assert len(err) == 1 and "is not a gruflow model" in err[0], err
        assert "python_model.pkl" in err[0]
        assert not marker.exists()
    mlflow.pyfunc.load_model(str(path))  # MLflow's own loader runs the pickle's code
    assert marker.exists()


@pytest.fixture
def model_copy(first_version, tmp_path):
    """A copy of the registered gruflow model folder, to alter."""
    import shutil

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NAME}/1"))
    return Path(shutil.copytree(local, tmp_path / "model"))


def _edit_mlmodel(path: Path, edit) -> None:
    import yaml

    meta = yaml.safe_load((path / "MLmodel").read_text())
    edit(meta)
    (path / "MLmodel").write_text(yaml.safe_dump(meta))


@pytest.mark.parametrize(
    ("alter", "mentions"),
    [
        (lambda p: (p / "python_model.pkl").write_bytes(b"\x80\x04N."), "pickled files"),
        (
            lambda p: _edit_mlmodel(
                p,
                lambda m: m["flavors"]["python_function"].update(
                    python_model="python_model.pkl", loader_module="mlflow.pyfunc.model"
                ),
            ),
            "python_model",
        ),
        (
            lambda p: _edit_mlmodel(
                p, lambda m: m["flavors"].update(sklearn={"pickled_model": "m"})
            ),
            "flavors",
        ),
        (
            lambda p: _edit_mlmodel(
                p, lambda m: m["flavors"]["python_function"]["artifacts"].pop("tokenizer")
            ),
            "artifacts",
        ),
        (lambda p: (p / "MLmodel").unlink(), "no MLmodel"),
    ],
    ids=["pickle-file", "pickled-python-model", "extra-flavor", "missing-artifact", "no-mlmodel"],
)
def test_loader_refuses_altered_gruflow_models(model_copy, alter, mentions):
    from flows.serve import load_model

    alter(model_copy)
    with pytest.raises(GruflowError, match="is not a gruflow model") as info:
        load_model(str(model_copy))
    assert mentions in str(info.value) and "\n" not in str(info.value)


def test_loader_never_runs_the_model_folders_code(model_copy, tmp_path):
    """Even a gruflow model's own pyfunc.py is not executed: the pyfunc is this gruflow's."""
    from flows.serve import load_model

    marker = tmp_path / "marker"
    (model_copy / "pyfunc.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    )
    model = load_model(str(model_copy))
    out = model.predict(
        pd.DataFrame({"text": [PROMPT]}), params={"max_new_tokens": 3, "temperature": 0.0}
    )
    assert isinstance(out["text"].iloc[0], str) and out["text"].iloc[0]
    assert not marker.exists()


def test_cli_similar_reads_a_registered_models_embedding(project, first_version, capsys):
    """--model through gruflow's own loader: the pyfunc still unwraps to the Keras model."""
    rc = cli.main(
        [
            "similar",
            "the",
            "-k",
            "3",
            "--project",
            str(project["root"]),
            "--model",
            f"models:/{NAME}/1",
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert len(out) == 3 and all(re.match(r"\s*-?\d\.\d{4}  \"", line) for line in out), out


# --- serving container ---------------------------------------------------------------------


def test_champion_docker_build_context_is_generated(project, first_version, tmp_path):
    """The README's container path without Docker: the same model URI and env manager as
    `mlflow models build-docker` in README.md, through `generate-dockerfile` (what build-docker
    writes before it calls `docker build`)."""
    out = tmp_path / "docker"
    done = subprocess.run(
        [
            str(VENV_BIN / "mlflow"),
            "models",
            "generate-dockerfile",
            "-m",
            f"models:/{NAME}@champion",
            "--env-manager",
            "local",
            "-d",
            str(out),
        ],
        cwd=project["root"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dockerfile = (out / "Dockerfile").read_text()
    assert "model_dir" in dockerfile and "ENTRYPOINT" in dockerfile
    model_dir = out / "model_dir"
    assert (model_dir / "MLmodel").is_file()
    assert (model_dir / "code" / "components" / "lm" / "pyfunc.py").is_file() or any(
        model_dir.rglob("pyfunc.py")
    ), "the model's code must travel into the image"
    assert "tensorflow" in (model_dir / "requirements.txt").read_text()


def test_cli_score_of_a_non_utf8_file_says_what_was_replaced(project, registered, capsys, tmp_path):
    """Nothing lost silently: a Latin-1 file is scored with U+FFFD in place of each
    undecodable byte, and the CLI says how many and what to do."""
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("the café returns the naïve value\n".encode("latin-1"))
    rc = cli.main(["score", str(latin1), "--project", str(project["root"])])
    out, err = capsys.readouterr()
    assert rc == 0 and "perplexity" in out, out + err
    assert "2 undecodable byte sequence(s)" in err and "UTF-8" in err, err
    clean = tmp_path / "utf8.txt"
    clean.write_text("the café returns the naïve value \ufffd\n", encoding="utf-8")
    assert cli.main(["score", str(clean), "--project", str(project["root"])]) == 0
    assert "undecodable" not in capsys.readouterr().err  # a real U+FFFD is not a loss
