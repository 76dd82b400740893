"""The request guard of `gruflow serve` (components/lm/serve_guard.py), called as an ASGI app in
front of a stand-in for MLflow's scoring app: which requests reach the model, which status and
message the others get, and how many reach it at once. The real server: tests/faults/."""

from __future__ import annotations

import asyncio
import json

import pytest

from components.lm.inference import BadRequest
from components.lm.serve_guard import ServeGuard, check_request

LIMITS = dict(
    host="127.0.0.1",
    port=5001,
    max_request_bytes=1000,
    max_records=3,
    max_generated_tokens=100,
    max_concurrent=1,
    timeout=60,
)


@pytest.fixture
def limits(params):
    return params.serve.model_copy(update=LIMITS)


class Inner:
    """Stands in for MLflow's app: answers 200 with the body it received."""

    def __init__(self):
        self.calls, self.active, self.most = 0, 0, 0

    async def __call__(self, scope, receive, send):
        self.calls += 1
        self.active += 1
        self.most = max(self.most, self.active)
        body = (await receive())["body"]
        await asyncio.sleep(0.01)
        self.active -= 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


async def _call(
    app,
    body: bytes,
    headers: dict,
    method: str = "POST",
    path: str = "/invocations",
    chunks: int = 1,
) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [
            (k.lower().encode(), v.encode())
            for k, v in (headers if isinstance(headers, list) else headers.items())
        ],
    }
    size = max(1, len(body) // chunks + 1)
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages = [
        {"type": "http.request", "body": p, "more_body": i < len(parts) - 1}
        for i, p in enumerate(parts)
    ]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def run(app, body, headers=None, **kw) -> tuple[int, bytes]:
    if headers is None:
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    return asyncio.run(_call(app, body, headers, **kw))


GOOD = json.dumps({"dataframe_records": [{"text": "a"}], "params": {"max_new_tokens": 5}})


def test_good_request_reaches_the_model_unchanged(limits):
    inner = Inner()
    assert run(ServeGuard(inner, limits), GOOD.encode()) == (200, GOOD.encode())
    assert inner.calls == 1


@pytest.mark.parametrize(
    ("body", "headers", "status", "mentions"),
    [
        (GOOD, {}, 415, "Content-Type: application/json"),
        (GOOD, {"Content-Type": "text/csv"}, 415, "Content-Type"),
        ("x" * 1001, None, 413, "serve.max_request_bytes = 1000"),
        (GOOD, {"Content-Type": "application/json", "Content-Length": "5000"}, 413, "max_request"),
        ("[" * 5000 + "]" * 5000, {"Content-Type": "application/json"}, 413, "max_request"),
        (GOOD, {"Content-Type": "application/json; charset=latin-1"}, 415, "UTF-8"),
        (GOOD, {"Content-Type": 'Application/JSON; Charset="UTF-16"'}, 415, "UTF-8"),
    ],
    ids=[
        "no-content-type",
        "csv",
        "big-body",
        "declared-big",
        "chunked-big",
        "latin-1",
        "utf-16",
    ],
)
def test_refused_before_the_model(limits, body, headers, status, mentions):
    inner = Inner()
    got, answer = run(ServeGuard(inner, limits), body.encode(), headers, chunks=10)
    assert got == status
    assert mentions in json.loads(answer)["message"]
    assert inner.calls == 0


def test_integer_too_long_for_python_is_400_json(limits):
    """json.loads raises a plain ValueError (not JSONDecodeError) past 4300 digits; MLflow's app
    would answer 500."""
    inner = Inner()
    body = '{"dataframe_records": [{"text": "a"}], "params": {"seed": ' + "1" * 4301 + "}}"
    guard = ServeGuard(inner, limits.model_copy(update={"max_request_bytes": 10_000}))
    got, answer = run(guard, body.encode())
    assert got == 400 and inner.calls == 0
    assert "integer of more than 4300 digits" in json.loads(answer)["message"]


class _Reached(Exception):
    """Raised when MLflow's `invocations` gets past its Content-Type checks to the model."""


class _NoModel:
    @property
    def metadata(self):
        raise _Reached


def mlflow_accepts(content_type: str) -> bool:
    """MLflow 3's own verdict on a Content-Type: its real `invocations`, stopped at the model."""
    from mlflow.pyfunc.scoring_server import invocations

    try:
        answer = invocations(GOOD.encode(), content_type, _NoModel(), None)
    except _Reached:
        return True
    assert answer.status == 415, answer
    return False


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("application/json;charset=UTF-8", True),
        (" application/json ;  charset=Utf-8 ", True),
        ("application/json; charset=latin-1; charset=utf-8", True),  # MLflow: the last one wins
        ('APPLICATION/JSON; Charset="UTF-8"', False),
        ("Application/json", False),
        ('application/json; charset="utf-8"', False),
        ("application/json; charset=utf8", False),
        ("application/json; charset = utf-8", False),
        ("application/json; Charset=utf-8", False),
        ("application/json;", False),
        ("application/json; charset=utf-8;", False),
        ("application/json; foo=bar", False),
        ("application/json; charset=utf-8; charset=latin-1", False),
        ("application/json; charset=utf-16", False),
    ],
)
def test_content_type_accepted_exactly_as_mlflow_does(limits, content_type, accepted):
    assert mlflow_accepts(content_type) is accepted
    inner = Inner()
    got, answer = run(ServeGuard(inner, limits), GOOD.encode(), {"Content-Type": content_type})
    if accepted:
        assert (got, answer, inner.calls) == (200, GOOD.encode(), 1)
    else:
        assert got == 415 and inner.calls == 0
        assert json.loads(answer)["error_code"] == "UNSUPPORTED_MEDIA_TYPE"


@pytest.mark.parametrize("first", ["text/csv", "application/json"])
def test_more_than_one_content_type_is_refused(limits, first):
    """Starlette (so MLflow) reads the first of repeated headers; the guard refuses them all."""
    inner = Inner()
    headers = [("Content-Type", first), ("Content-Type", "application/json")]
    got, answer = run(ServeGuard(inner, limits), GOOD.encode(), headers)
    assert got == 415 and inner.calls == 0
    assert "one Content-Type header" in json.loads(answer)["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"dataframe_records": [{"text": "\\ud800"}]}', "text row 0"),
        ('{"inputs": {"text": ["a", "b \\udfff c"]}}', "text row 1"),
        ('{"dataframe_records": [{"text": "a"}], "params": {"mode": "\\ud800"}}', "params.mode"),
    ],
    ids=["record", "column", "param"],
)
def test_text_that_is_not_unicode_is_400_json(limits, body, field):
    """A lone surrogate, spelled as a JSON escape, would reach the tokenizer (TypeError) and
    MLflow would answer with the server's stack trace."""
    inner = Inner()
    got, answer = run(ServeGuard(inner, limits), body.encode())
    message = json.loads(answer)["message"]
    assert got == 400 and inner.calls == 0
    assert message.startswith(field) and "UTF-8" in message


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_a_body_not_in_utf8_is_400_json(limits, encoding):
    inner = Inner()
    got, answer = run(ServeGuard(inner, limits), GOOD.encode(encoding))
    assert got == 400 and inner.calls == 0
    assert "not valid UTF-8 JSON" in json.loads(answer)["message"]


def test_a_utf8_body_with_a_bom_is_taken_as_mlflow_takes_it(limits):
    from mlflow.pyfunc.scoring_server import _decode_json_input

    body = b"\xef\xbb\xbf" + GOOD.encode()
    assert _decode_json_input(body) == json.loads(GOOD)  # MLflow skips the BOM
    inner = Inner()
    assert run(ServeGuard(inner, limits), body) == (200, body) and inner.calls == 1


def test_other_paths_and_methods_pass_through(limits):
    inner = Inner()
    guard = ServeGuard(inner, limits)
    assert run(guard, b"", {}, method="GET", path="/ping")[0] == 200
    assert run(guard, b"", {}, method="GET")[0] == 200  # MLflow's app answers 405 itself
    assert inner.calls == 2


def test_at_most_max_concurrent_requests_reach_the_model(limits):
    inner = Inner()
    guard = ServeGuard(inner, limits)

    async def many():
        return await asyncio.gather(
            *(_call(guard, GOOD.encode(), {"Content-Type": "application/json"}) for _ in range(6))
        )

    assert [s for s, _ in asyncio.run(many())] == [200] * 6
    assert inner.most == 1 and inner.calls == 6


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
        ('{"dataframe_records": [{"text": "a"}], "params": {"temperature": Infinity}}', "Infinity"),
        ('{"dataframe_records": [{"text": "a"}], "params": {"temperature": NaN}}', "NaN"),
        ('{"dataframe_records": [{"text": 5}]}', "text row 0"),
        ('{"dataframe_records": [{"text": null}]}', "text row 0"),
        (
            '{"dataframe_records": [{"text": "a"}, {"text": "b"}, {"text": "c"}, {"text": "d"}]}',
            "4 records",
        ),
        ('{"dataframe_records": [{"text": "a"}], "params": {"max_new_tokens": 60}, "x": 1}', "'x'"),
        (
            '{"dataframe_records": [{"text": "a"}, {"text": "b"}], '
            '"params": {"max_new_tokens": 60}}',
            "serve.max_generated_tokens",
        ),
        (
            '{"dataframe_records": [{"text": "a"}], '
            '"params": {"mode": "score", "max_new_tokens": -1}}',
            "max_new_tokens",
        ),
        ('{"dataframe_records": [{"text": "a"}], "params": {"max_tokens": 5}}', "max_tokens"),
        ('{"dataframe_split": {"columns": ["prompt"], "data": [["a"]]}}', "dataframe_split"),
        ('{"inputs": {"text": "a"}}', "inputs"),
        ('"just a string"', "JSON object"),
        ('{"dataframe_records": [{"text": "a"}]', "not valid UTF-8 JSON"),
        ('{"inputs": [{"text": "a"}], "x": [' + "9" * 5000 + "]}", "more than 4300 digits"),
    ],
    ids=[
        "deep",
        "infinity",
        "nan",
        "int-text",
        "null-text",
        "records",
        "top-key",
        "tokens",
        "score-negative",
        "unknown-param",
        "split-column",
        "inputs-shape",
        "string",
        "cut",
        "long-integer",
    ],
)
def test_check_request_names_the_problem(limits, body, mentions):
    with pytest.raises(BadRequest) as info:
        check_request(body.encode(), limits)
    assert mentions in str(info.value) and "\n" not in str(info.value)


def test_check_request_accepts_every_mlflow_json_shape(limits):
    for body in (
        {"dataframe_records": [{"text": "a"}]},
        {"dataframe_split": {"columns": ["text"], "data": [["a"], ["b"]]}},
        {"inputs": [{"text": "a"}]},
        {"instances": {"text": ["a", "b"]}},
        {"inputs": [{"text": "a"}], "params": {"mode": "score", "seed": 3}},
    ):
        check_request(json.dumps(body).encode(), limits)
