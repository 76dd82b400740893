"""Request params of the served model (components/lm/inference.py check_params): every param
checked in both modes, the defaults a request gets (the model's `generate` section, or the
legacy ones), and the generated-token cap computed with them."""

from __future__ import annotations

import json

import pytest

from components.lm.inference import BadRequest, check_params
from components.lm.serve_guard import check_request


@pytest.mark.parametrize(
    ("params", "mentions"),
    [
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 513}, "1..512"),
        ({"max_new_tokens": 2.5}, "integer"),
        ({"top_k": -1}, "top_k"),
        ({"seed": 2**64}, "seed"),
        ({"mode": "train"}, "mode"),
        ({"mode": "score", "top_k": -1}, "top_k"),
        ({"nope": 1}, "nope"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"repetition_penalty": 0.9}, "repetition_penalty"),
        ({"mode": "score", "top_p": float("nan")}, "top_p"),
    ],
)
def test_check_params_refuses_in_both_modes(params, mentions):
    with pytest.raises(BadRequest, match=mentions):
        check_params(params)


# What a model registered before the generate section always served with (stated here, not
# imported: the test must fail if components/lm/inference.py's defaults drift).
LEGACY = {
    "mode": "generate",
    "max_new_tokens": 32,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
    "seed": 0,
    "candidates": 5,
    "cache_size": -1,
    "cache_theta": -1.0,
    "cache_lambda": -1.0,
}


def test_check_params_fills_defaults():
    assert check_params(None) == LEGACY
    assert check_params({"temperature": 0})["temperature"] == 0.0


def test_model_defaults_come_from_params_generate():
    from components.lm.inference import request_defaults
    from components.params import load_params

    gen = load_params().generate
    defaults = request_defaults(gen.model_dump())
    assert check_params(None, defaults) == {
        "mode": "generate",
        **gen.model_dump(),
        **{k: LEGACY[k] for k in ("candidates", "cache_size", "cache_theta", "cache_lambda")},
    }
    assert check_params({"top_k": 3}, defaults)["top_p"] == gen.top_p


def test_request_cap_uses_the_models_default_max_new_tokens():
    from components.params import load_params

    limits = load_params().serve.model_copy(update={"max_generated_tokens": 40})
    body = json.dumps({"dataframe_records": [{"text": "a"}, {"text": "b"}]}).encode()
    with pytest.raises(BadRequest, match="max_new_tokens 32"):  # legacy default: 2 x 32 > 40
        check_request(body, limits)
    few = LEGACY | {"max_new_tokens": 8}
    check_request(body, limits, few)  # 2 x 8 <= 40
