"""A masked LM in the registry: the `objective` tag, the gate comparing only versions of the
same objective, the pyfunc's fill/score and its refusal of generate (in process and through
gruflow serve's app: MLflow's scoring server behind the guard, driven by an ASGI client).

Untrained tiny masked models (tests/tiny_lm.py's project) and a real sqlite MLflow store."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402

import keras  # noqa: E402
import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from tiny_lm import build_project, register  # noqa: E402

from components.contract import SPECIALS  # noqa: E402
from components.lm.masked import build_masked_model  # noqa: E402
from flows import registry, tracking  # noqa: E402

NAME, MIXED = "tiny-mlm", "tiny-mixed"
CAUSAL_GOOD = {"perplexity": 20.0, "bigram_perplexity": 50.0}
MASKED_GOOD = {"objective": "masked", "masked_perplexity": 20.0, "masked_baseline_perplexity": 50.0}


def masked_params(project, name: str, model):
    p = project["params"]
    return p.model_copy(
        update={
            "train": p.train.model_copy(update={"objective": "masked"}),
            "registry": p.registry.model_copy(update={"model_name": name}),
            "paths": p.paths.model_copy(update={"model": str(model)}),
        }
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = build_project(tmp_path_factory.mktemp("mlm"), NAME)
    root, p = project["root"], project["params"]
    cfg = p.model.model_copy(update={"units": 8, "embedding_dim": 8, "embedding_init": "random"})
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        build_masked_model(cfg, project["tokenizer"].get_vocab_size()).save(
            root / f"mlm_{seed}.keras"
        )
    prev = os.environ.get("MLFLOW_TRACKING_URI")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        tracking.configure(root, "gruflow")
        yield project
        mlflow.set_tracking_uri(prev)


@pytest.fixture(scope="module")
def versions(project):
    root, test_file = project["root"], project["root"] / "clean" / "test.parquet"
    out = {}
    v1, _ = register(
        project, masked_params(project, NAME, root / "mlm_0.keras"), MASKED_GOOD, "run-1"
    )
    out["first"] = registry.gate(NAME, v1, MASKED_GOOD, test_file, 0.0)
    v2, _ = register(
        project, masked_params(project, NAME, root / "mlm_1.keras"), MASKED_GOOD, "run-2"
    )
    out["second"] = registry.gate(NAME, v2, MASKED_GOOD, test_file, 0.99)
    causal = project["params"].model_copy(
        update={"registry": project["params"].registry.model_copy(update={"model_name": MIXED})}
    )
    c1, _ = register(project, causal, CAUSAL_GOOD, "run-3")
    registry.gate(MIXED, c1, CAUSAL_GOOD, test_file, 0.0)
    m2, _ = register(
        project, masked_params(project, MIXED, root / "mlm_0.keras"), MASKED_GOOD, "run-4"
    )
    out["mixed"] = registry.gate(MIXED, m2, MASKED_GOOD, test_file, 0.0)
    return out | {"v1": v1, "v2": v2, "c1": c1, "m2": m2}


def test_versions_carry_their_objective_and_the_gate_compares_masked_perplexity(versions):
    tags = MlflowClient().get_model_version(NAME, versions["v1"]).tags
    assert tags["objective"] == "masked"
    assert versions["first"]["promoted"] and "unigram baseline" in versions["first"]["reason"]
    second = versions["second"]
    assert second["champion_before"] == versions["v1"] and not second["promoted"]
    assert second["champion_masked_perplexity"] > 1.0
    assert second["challenger_current_masked_perplexity"] > 1.0
    assert registry.champion_version(NAME) == versions["v1"]


def test_gate_never_compares_across_objectives(versions):
    assert MlflowClient().get_model_version(MIXED, versions["c1"]).tags["objective"] == "causal"
    mixed = versions["mixed"]
    assert not mixed["promoted"] and "same objective" in mixed["reason"]
    assert registry.champion_version(MIXED) == versions["c1"]
    tags = MlflowClient().get_model_version(MIXED, versions["m2"]).tags
    assert tags["gate.promoted"] == "False"


def test_pyfunc_fills_each_mask_and_scores(versions, project):
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{versions['v1']}")
    text = "the parser <mask> the header and <mask> a list"
    out = model.predict(pd.DataFrame({"text": [text]}), params={"mode": "fill", "candidates": 3})
    fills = json.loads(out["fills"][0])
    assert len(fills) == 2 and all(len(f) == 3 for f in fills)
    tok = project["tokenizer"]
    for options in fills:
        probs = [o["probability"] for o in options]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-9
        assert all(tok.token_to_id(o["token"]) not in range(len(SPECIALS)) for o in options)
    assert "<mask>" not in out["text"][0] and out["text"][0].startswith("the parser")
    scores = model.predict(
        pd.DataFrame({"text": [text.replace("<mask>", "reads")]}), params={"mode": "score"}
    )
    assert scores["masked_tokens"][0] >= 1 and scores["perplexity"][0] > 1.0
    with pytest.raises(MlflowException, match="has no <mask>"):
        model.predict(pd.DataFrame({"text": ["no hole here"]}), params={"mode": "fill"})


def test_generate_is_refused_with_the_reason(versions):
    masked = mlflow.pyfunc.load_model(f"models:/{NAME}/{versions['v1']}")
    with pytest.raises(MlflowException, match="objective masked.*cannot continue"):
        masked.predict(pd.DataFrame({"text": ["the parser"]}), params={"mode": "generate"})
    causal = mlflow.pyfunc.load_model(f"models:/{MIXED}/{versions['c1']}")
    with pytest.raises(MlflowException, match="needs a masked LM"):
        causal.predict(pd.DataFrame({"text": ["the <mask>"]}), params={"mode": "fill"})


def test_gruflow_serve_answers_fill_and_refuses_generate_with_400(versions, project):
    from starlette.testclient import TestClient

    from flows.serve import build_app, load_model

    app = build_app(load_model(f"models:/{NAME}/{versions['v1']}"), project["params"].serve)
    with TestClient(app) as client:
        body = {"dataframe_records": [{"text": "the <mask> reads"}]}
        refused = client.post("/invocations", json=body | {"params": {"mode": "generate"}})
        assert refused.status_code == 400
        assert "cannot continue a text" in refused.text
        filled = client.post("/invocations", json=body | {"params": {"mode": "fill"}})
        assert filled.status_code == 200, filled.text
        rows = filled.json()["predictions"]
        assert len(json.loads(rows[0]["fills"])[0]) == 5


@pytest.mark.slow
def test_real_mlflow_models_serve_fills_by_default_and_refuses_generate(versions, project):
    """The registered masked LM behind the real `mlflow models serve`: a request without params
    fills (the signature's default mode), generate is a 400 that says why, a text without a
    <mask> is a 400 too, and the server keeps answering."""
    from tiny_lm import http, serve_model, stop, wait_until_up

    log = project["root"] / "mlm_serve.log"
    proc, url = serve_model(project["root"], log.name, f"models:/{NAME}/{versions['v1']}")
    try:
        wait_until_up(proc, url, log, timeout=300)
        records = {"dataframe_records": [{"text": "the parser <mask> the header"}]}
        status, body = http(url + "/invocations", records)
        assert status == 200, body
        [row] = body["predictions"]
        assert "<mask>" not in row["text"] and len(json.loads(row["fills"])) == 1
        status, body = http(url + "/invocations", records | {"params": {"mode": "generate"}})
        assert status == 400 and "cannot continue" in json.dumps(body), body
        status, body = http(url + "/invocations", {"dataframe_records": [{"text": "no hole"}]})
        assert status == 400 and "has no <mask>" in json.dumps(body), body
        assert http(url + "/ping", timeout=5)[0] == 200
    finally:
        stop(proc)


def test_fill_texts_go_through_the_models_text_rules(versions):
    """A masked model trained on NFKC text must read `，` as `,` in a fill request too (the
    serving promise: texts go through the model's training normalisation first); `<mask>`
    survives the rules."""
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{versions['v1']}")

    def fill(text: str):
        out = model.predict(pd.DataFrame({"text": [text]}), params={"mode": "fill"})
        return out["text"][0], out["fills"][0]

    ascii_text, ascii_fills = fill("the parser <mask> the header, then a list")
    wide_text, wide_fills = fill("ｔｈｅ parser <mask> the header， then a list")
    assert (wide_text, wide_fills) == (ascii_text, ascii_fills)
    assert "，" not in wide_text
