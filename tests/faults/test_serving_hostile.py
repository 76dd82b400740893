"""A hostile request mix against the real `gruflow serve` (the README's serve command) on
loopback: 0 answers in 5xx, the expected 4xx for each bad case, and the server answers a good
request afterwards.

The server serves a tiny registered model (tests/tiny_lm.py) with params.yaml's `serve` limits
(max_request_bytes 262144, max_records 64, max_generated_tokens 2048). 1,000 requests from 8
threads, every case of issue #15 among them, in a fixed shuffled order.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import http.client as httpc  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import mlflow  # noqa: E402
import pytest  # noqa: E402
from tiny_lm import build_project, free_port, http, register, spawn, stop  # noqa: E402

from flows import tracking  # noqa: E402

pytestmark = pytest.mark.slow

NAME = "tiny-lm-hostile"
REQUESTS, THREADS = 1000, 8
HOST = "127.0.0.1"


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


def _records(n: int, text: str = "the parser") -> list[dict]:
    return [{"text": text}] * n


JSON = {"Content-Type": "application/json"}
# name: (method, body, headers, expected status, how many in the mix)
CASES: dict[str, tuple[str, bytes | None, dict, int, int]] = {
    "generate": (
        "POST",
        _json({"dataframe_records": _records(2), "params": {"max_new_tokens": 4, "seed": 1}}),
        JSON,
        200,
        200,
    ),
    "score": (
        "POST",
        _json(
            {
                "dataframe_split": {"columns": ["text"], "data": [["the parser reads"]]},
                "params": {"mode": "score"},
            }
        ),
        JSON,
        200,
        140,
    ),
    "score-200kB-text": (
        "POST",
        _json(
            {"inputs": [{"text": "the parser reads a line. " * 8000}], "params": {"mode": "score"}}
        ),
        JSON,
        200,
        4,
    ),
    "no-content-type": ("POST", _json({"dataframe_records": _records(1)}), {}, 415, 30),
    "latin-1-charset": (
        "POST",
        '{"dataframe_records": [{"text": "café"}]}'.encode("latin-1"),
        {"Content-Type": "application/json; charset=latin-1"},
        415,
        20,
    ),
    "integer-4301-digits": (  # json.loads: ValueError, not JSONDecodeError
        "POST",
        b'{"dataframe_records": [{"text": "a"}], "params": {"seed": ' + b"7" * 4301 + b"}}",
        JSON,
        400,
        20,
    ),
    "text-plain": ("POST", b"the parser", {"Content-Type": "text/plain"}, 415, 20),
    "deep-json-50000": (
        "POST",
        b'{"dataframe_records": ' + b"[" * 50000 + b"]" * 50000 + b"}",
        JSON,
        400,
        50,
    ),
    "1MB-text-score": (
        "POST",
        _json({"dataframe_records": [{"text": "x" * 1_000_000}], "params": {"mode": "score"}}),
        JSON,
        413,
        20,
    ),
    "65-records": ("POST", _json({"dataframe_records": _records(65)}), JSON, 400, 40),
    "1000-records": ("POST", _json({"dataframe_records": _records(1000)}), JSON, 400, 20),
    "too-many-tokens": (
        "POST",
        _json({"dataframe_records": _records(64), "params": {"max_new_tokens": 512}}),
        JSON,
        400,
        20,
    ),
    "unknown-param": (
        "POST",
        _json({"dataframe_records": _records(1), "params": {"max_tokens": 5}}),
        JSON,
        400,
        30,
    ),
    "temperature-Infinity": (
        "POST",
        b'{"dataframe_records": [{"text": "a"}], "params": {"temperature": Infinity}}',
        JSON,
        400,
        40,
    ),
    "temperature-NaN": (
        "POST",
        b'{"dataframe_records": [{"text": "a"}], "params": {"temperature": NaN}}',
        JSON,
        400,
        30,
    ),
    "max-new-tokens-1e309": (
        "POST",
        b'{"dataframe_records": [{"text": "a"}], "params": {"max_new_tokens": 1e309}}',
        JSON,
        400,
        10,
    ),
    "integer-text": ("POST", _json({"dataframe_records": [{"text": 12345}]}), JSON, 400, 40),
    "null-text": ("POST", _json({"dataframe_records": [{"text": None}]}), JSON, 400, 20),
    "list-text": ("POST", _json({"inputs": {"text": [["a"]]}}), JSON, 400, 10),
    "empty-text": ("POST", _json({"dataframe_records": [{"text": "  "}]}), JSON, 400, 10),
    "no-records": ("POST", _json({"dataframe_records": []}), JSON, 400, 10),
    "score-negative-max-new-tokens": (
        "POST",
        _json(
            {"dataframe_records": _records(1), "params": {"mode": "score", "max_new_tokens": -1}}
        ),
        JSON,
        400,
        40,
    ),
    "generate-negative-max-new-tokens": (
        "POST",
        _json({"dataframe_records": _records(1), "params": {"max_new_tokens": -1}}),
        JSON,
        400,
        20,
    ),
    "string-max-new-tokens": (
        "POST",
        _json({"dataframe_records": _records(1), "params": {"max_new_tokens": "5"}}),
        JSON,
        400,
        20,
    ),
    "bool-top-k": (
        "POST",
        _json({"dataframe_records": _records(1), "params": {"top_k": True}}),
        JSON,
        400,
        10,
    ),
    "bad-mode": (
        "POST",
        _json({"dataframe_records": _records(1), "params": {"mode": "x"}}),
        JSON,
        400,
        10,
    ),
    "params-not-object": (
        "POST",
        _json({"dataframe_records": _records(1), "params": [1]}),
        JSON,
        400,
        10,
    ),
    "not-json": ("POST", b"{not json", JSON, 400, 30),
    "not-utf8": ("POST", b'{"dataframe_records": [{"text": "\xff\xfe"}]}', JSON, 400, 10),
    "json-list": ("POST", b"[1, 2, 3]", JSON, 400, 20),
    "two-data-keys": (
        "POST",
        _json({"dataframe_records": _records(1), "inputs": _records(1)}),
        JSON,
        400,
        10,
    ),
    "unknown-column": ("POST", _json({"dataframe_records": [{"prompt": "a"}]}), JSON, 400, 20),
    "get-invocations": ("GET", None, {}, 405, 10),
    "chunked-oversized": ("CHUNKED", b"[" * 300_000, JSON, 413, 6),
}


def _send(port: int, case: str) -> tuple[str, int]:
    method, body, headers, _, _ = CASES[case]
    conn = httpc.HTTPConnection(HOST, port, timeout=300)
    try:
        if method == "CHUNKED":  # no Content-Length: the size limit must hold while streaming
            chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
            conn.request("POST", "/invocations", body=chunks, headers=headers, encode_chunked=True)
        else:
            conn.request(method, "/invocations", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return case, response.status
    except (OSError, httpc.HTTPException) as exc:  # no answer at all: a failure too
        return f"{case} ({type(exc).__name__})", -1
    finally:
        conn.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    project = build_project(tmp_path_factory.mktemp("hostile"), NAME)
    root = project["root"]
    prev_uri = os.environ.get("MLFLOW_TRACKING_URI")
    port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        tracking.configure(root, "gruflow")
        version, _ = register(project, project["params"], {"perplexity": 20.0}, "flow-run-1")
        proc = spawn(
            root,
            "serve.log",
            "gruflow",
            "serve",
            "--project",
            str(root),
            "--model",
            f"models:/{NAME}/{version}",
            "--host",
            HOST,
            "--port",
            str(port),
        )
        try:
            _wait_up(proc, root / "serve.log", f"http://{HOST}:{port}")
            yield {"port": port, "proc": proc, "log": root / "serve.log"}
        finally:
            stop(proc)
            mlflow.set_tracking_uri(prev_uri)


def _wait_up(proc, log, url: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gruflow serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if http(url + "/ping", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail("gruflow serve not up after 180 s:\n" + log.read_text()[-3000:])


def test_hostile_mix_gets_no_5xx_and_the_server_stays_up(server):
    mix = [name for name, case in CASES.items() for _ in range(case[4])]
    assert len(mix) == REQUESTS
    random.Random(0).shuffle(mix)
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda case: _send(server["port"], case), mix))
    by_status = Counter(status for _, status in results)
    print(f"hostile mix: {dict(sorted(by_status.items()))}")
    wrong = Counter(
        (case, status) for case, status in results if status != CASES.get(case, (0, 0, 0, None))[3]
    )
    assert not [s for s in by_status if s >= 500], (by_status, server["log"].read_text()[-3000:])
    assert not wrong, {f"{case} -> {status}": n for (case, status), n in wrong.items()}
    assert server["proc"].poll() is None
    status, body = http(
        f"http://{HOST}:{server['port']}/invocations",
        {
            "dataframe_records": [{"text": "the parser"}],
            "params": {"max_new_tokens": 3, "temperature": 0.0},
        },
    )
    assert status == 200 and body["predictions"][0]["text"], body


@pytest.mark.parametrize(
    ("case", "mentions"),
    [
        ("no-content-type", "Content-Type: application/json"),
        ("latin-1-charset", "UTF-8"),
        ("integer-4301-digits", "more than 4300 digits"),
        ("deep-json-50000", "nested too deeply"),
        ("65-records", "serve.max_records"),
        ("1MB-text-score", "serve.max_request_bytes"),
        ("unknown-param", "max_tokens"),
        ("temperature-Infinity", "Infinity"),
        ("integer-text", "text row 0"),
        ("score-negative-max-new-tokens", "max_new_tokens"),
        ("too-many-tokens", "serve.max_generated_tokens"),
    ],
)
def test_refusals_say_what_is_wrong(server, case, mentions):
    method, body, headers, expected, _ = CASES[case]
    conn = httpc.HTTPConnection(HOST, server["port"], timeout=60)
    try:
        conn.request(method, "/invocations", body=body, headers=headers)
        response = conn.getresponse()
        answer = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == expected
    assert mentions in answer["message"], answer
