"""ASGI middleware in front of MLflow's scoring app: every request the model should not see is
answered 4xx here, before MLflow parses it.

Usage: `app = ServeGuard(mlflow.pyfunc.scoring_server.init(model), params.serve)` (what
`gruflow serve` runs). MLflow's own app answers 500 to a request without Content-Type
(AttributeError) and to JSON nested thousands deep (RecursionError), accepts NaN/Infinity, drops
unknown params with a warning and has no size limits; the guard closes those gaps:

- POST /invocations not sent as JSON, or whose Content-Type MLflow 3 would refuse with its own
  plain-text 415 (its exact rule: `application/json`, at most the option `charset=utf-8`, see
  `_check_content_type`), or with more than one Content-Type header: 415
- a body over `serve.max_request_bytes` (declared or streamed): 413
- not strictly UTF-8 (a UTF-16 body; one leading UTF-8 BOM is skipped, as MLflow does), a text
  or string param that cannot be encoded as UTF-8 (a lone surrogate spelled `\\ud800`),
  not JSON, nested too deep, an integer too long for Python (MLflow: 500), NaN/Infinity,
  another shape than one data key (+ `params`), a record whose `text` is not a non-empty
  string, more than `serve.max_records` records, an unknown or out-of-range param in either
  mode, a generate request over `serve.max_generated_tokens`: 400 with a message naming the field
- at most `serve.max_concurrent` admitted requests reach the model at once; the others wait
  (MLflow's timeout starts when a request is admitted)
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable

from components.lm.inference import BadRequest, check_params, check_texts
from components.params import Serve

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

DATA_KEYS = ("dataframe_records", "dataframe_split", "inputs", "instances")


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def texts_of(payload: object) -> list:
    """The `text` values of a request body in any of MLflow's JSON input shapes (flat only)."""
    if not isinstance(payload, dict):
        raise BadRequest(f"the body must be a JSON object with one of {list(DATA_KEYS)}")
    data_keys = [k for k in payload if k in DATA_KEYS]
    if extra := sorted(k for k in payload if k not in DATA_KEYS and k != "params"):
        raise BadRequest(
            f"unknown top-level keys {extra} — use one of {list(DATA_KEYS)} and optionally 'params'"
        )
    if len(data_keys) != 1:
        raise BadRequest(f"give exactly one of {list(DATA_KEYS)}, got {data_keys}")
    data = payload[data_keys[0]]
    if data_keys[0] == "dataframe_split":
        if (
            not isinstance(data, dict)
            or data.get("columns") != ["text"]
            or not isinstance(data.get("data"), list)
        ):
            raise BadRequest('dataframe_split must be {"columns": ["text"], "data": [[...], ...]}')
        rows = data["data"]
        if not all(isinstance(r, list) and len(r) == 1 for r in rows):
            raise BadRequest("dataframe_split.data rows must each hold one text")
        return [r[0] for r in rows]
    if isinstance(data, dict):  # {"text": [...]}: columns of equal length
        if list(data) != ["text"] or not isinstance(data["text"], list):
            raise BadRequest(f'{data_keys[0]} as columns must be {{"text": [...]}}')
        return data["text"]
    if not isinstance(data, list):
        raise BadRequest(f"{data_keys[0]} must be a list of records")
    if not all(isinstance(r, dict) and list(r) == ["text"] for r in data):
        raise BadRequest(
            f'each record of {data_keys[0]} must be {{"text": "..."}} and nothing else'
        )
    return [r["text"] for r in data]


def _no_constants(name: str) -> None:
    raise BadRequest(f"{name} is not a number JSON allows — send a finite number")


def _check_utf8(text: str, field: str) -> None:
    """A JSON escape can spell a lone surrogate ("\\ud800"), which no UTF-8 encoder takes (the
    tokenizer raises TypeError, and MLflow answers with its stack trace)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequest(
            f"{field} is not valid Unicode ({exc.reason} at character {exc.start})"
            " — send text that can be encoded as UTF-8"
        ) from None


def _check_strings(texts: list[str], params: object) -> None:
    for i, text in enumerate(texts):
        _check_utf8(text, f"text row {i}")
    if isinstance(params, dict):
        for name, value in params.items():
            _check_utf8(name, "a params name")
            if isinstance(value, str):
                _check_utf8(value, f"params.{name}")


def check_request(body: bytes, limits: Serve, defaults: dict | None = None) -> None:
    """Raise BadRequest when the model should not see this body (`defaults`: the model's own
    request defaults, so a request without max_new_tokens is capped by the one it gets)."""
    try:
        # strictly UTF-8 (json.loads on bytes would also take UTF-16/32); one leading UTF-8 BOM
        # is skipped, as MLflow's json.loads(bytes) does
        payload = json.loads(body.decode("utf-8-sig"), parse_constant=_no_constants)
    except RecursionError:
        raise BadRequest("the JSON is nested too deeply") from None
    except BadRequest:  # NaN/Infinity (_no_constants); a ValueError too
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the body is not valid UTF-8 JSON ({exc})") from None
    except ValueError:  # Python's int conversion limit (sys.get_int_max_str_digits, 4300)
        raise BadRequest(
            f"the JSON holds an integer of more than {sys.get_int_max_str_digits()} digits"
            " — send shorter numbers"
        ) from None
    texts = texts_of(payload)
    if len(texts) > limits.max_records:
        raise BadRequest(
            f"{len(texts)} records in one request; at most serve.max_records = "
            f"{limits.max_records} — split the request"
        )
    check_texts(texts)
    _check_strings(texts, payload.get("params"))
    params = check_params(payload.get("params"), defaults)
    if (
        params["mode"] == "generate"
        and len(texts) * params["max_new_tokens"] > limits.max_generated_tokens
    ):
        raise BadRequest(
            f"{len(texts)} records x max_new_tokens {params['max_new_tokens']} "
            f"exceeds serve.max_generated_tokens = {limits.max_generated_tokens}"
            " — send fewer records or fewer tokens"
        )


class ServeGuard:
    """The ASGI wrapper: checks POST /invocations, passes everything else through."""

    def __init__(
        self, app: Callable, limits: Serve, path: str = "/invocations", defaults: dict | None = None
    ):
        self.app, self.limits, self.path, self.defaults = app, limits, path, defaults
        self.slots = asyncio.Semaphore(limits.max_concurrent)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            body = await self._admit(scope, receive)
        except Refused as exc:
            await _answer(send, exc.status, exc.code, str(exc))
            return
        async with self.slots:
            await self.app(scope, _replay(body), send)

    async def _admit(self, scope: Scope, receive: Receive) -> bytes:
        _check_content_type(scope["headers"])
        headers = dict(scope["headers"])
        too_big = Refused(
            413,
            "REQUEST_TOO_LARGE",
            "the request body is over "
            f"serve.max_request_bytes = {self.limits.max_request_bytes} bytes — "
            "send fewer or shorter texts",
        )
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limits.max_request_bytes:
            raise too_big
        body = bytearray()
        while True:  # also bounds chunked bodies, which declare no length
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Refused(400, "BAD_REQUEST", "the client went away")
            body += message.get("body", b"")
            if len(body) > self.limits.max_request_bytes:
                raise too_big
            if not message.get("more_body"):
                break
        try:
            await asyncio.to_thread(check_request, bytes(body), self.limits, self.defaults)
        except BadRequest as exc:
            raise Refused(400, "BAD_REQUEST", str(exc)) from None
        return bytes(body)


def _check_content_type(headers: list) -> None:
    """Refuse what MLflow 3's `invocations` would refuse with its plain-text 415, by its own rule:
    the value split on ';' and stripped, the media type compared case-sensitively, each option
    split at its first '=' (a repeated key: the last wins), only `charset` allowed and its value,
    lower-cased, exactly `utf-8`. Starlette hands MLflow the first Content-Type header, so more
    than one is refused rather than guessed at."""
    values = [v for k, v in headers if k.lower() == b"content-type"]
    if len(values) > 1:
        raise Refused(415, "UNSUPPORTED_MEDIA_TYPE", "send one Content-Type header, not several")
    parts = [p.strip() for p in (values[0].decode("latin-1") if values else "").split(";")]
    options = {key: value for key, _, value in (p.partition("=") for p in parts[1:])}
    if options.get("charset", "utf-8").lower() != "utf-8" or set(options) - {"charset"}:
        raise Refused(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "the body must be UTF-8 JSON: send exactly 'Content-Type: application/json' "
            "(or 'application/json; charset=utf-8')",
        )
    if parts[0] != "application/json":
        raise Refused(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "send the body as JSON with the header 'Content-Type: application/json'",
        )


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:  # after the body: wait as a live connection would, until the app is done
            await asyncio.Event().wait()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _answer(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error_code": code, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
