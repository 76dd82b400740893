"""A tiny gruflow project with registered models, shared by the serving tests.

One temporary folder (components symlinked, params.yaml copied with absolute model/tokenizer
paths and seq_len 64, a tuned best_params.json saying 16), a small BPE tokenizer and untrained
8-unit Keras models whose special tokens are biased away (so generation never stops early and
text is never empty), and helpers to register them, start a server and talk to it over loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import keras
import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from components.contract import SPECIALS
from components.lm.model import build_model
from components.params import load_params
from components.tokenize import train_tokenizer
from flows import tracking

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
SEQ_LEN = 16  # tuned: artifacts/best_params.json
UNTUNED_SEQ_LEN = 64  # params.yaml
SENTENCES = [
    "the parser reads the header and returns a list of names",
    "each thread opens a file, checks the next line and closes the socket",
    "the module writes an integer to the cached value",
    "a function returns the value of the attribute when it is set",
    "the server answers every request with a status line and a body",
]


def save_model(path: Path, cfg, vocab: int, seed: int) -> None:
    keras.utils.set_random_seed(seed)
    model = build_model(cfg, vocab)
    kernel, bias = model.get_layer("logits").get_weights()
    bias[: len(SPECIALS)] = -30.0  # <pad> <unk> <bos> <eos> never win: fixed-length output
    model.get_layer("logits").set_weights([kernel, bias])
    model.save(path)


def build_project(root: Path, name: str) -> dict:
    """params.yaml, tokenizer.json, model_a/b.keras and clean/test.parquet under `root`."""
    (root / "components").symlink_to(ROOT / "components")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["paths"] |= {
        "model": str(root / "model_a.keras"),
        "tokenizer": str(root / "tokenizer.json"),
    }
    raw["train"]["seq_len"] = UNTUNED_SEQ_LEN
    raw["registry"]["model_name"] = name
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    (root / raw["paths"]["best_params"]).parent.mkdir(parents=True)
    (root / raw["paths"]["best_params"]).write_text(json.dumps({"train.seq_len": SEQ_LEN}))
    params = load_params(root / "params.yaml")

    tok = train_tokenizer(
        iter(SENTENCES * 4),
        params.tokenize.model_copy(update={"vocab_size": 300, "min_frequency": 1}),
    )  # 256 bytes + 4 specials + merges
    tok.save(str(root / "tokenizer.json"))
    cfg = params.model.model_copy(
        update={"units": 8, "embedding_dim": 8, "embedding_init": "random"}
    )
    save_model(root / "model_a.keras", cfg, tok.get_vocab_size(), seed=0)
    save_model(root / "model_b.keras", cfg, tok.get_vocab_size(), seed=1)
    (root / "clean").mkdir()
    pq.write_table(pa.table({"text": SENTENCES}), root / "clean" / "test.parquet")
    return {"root": root, "params": params, "tokenizer": tok}


def register(project: dict, params, metrics: dict, flow_run_id: str) -> tuple[str, str]:
    root = project["root"]
    tags = {
        **tracking.lineage_tags(root, params, flow_run_id),
        "model_md5": hashlib.md5(Path(params.paths.model).read_bytes()).hexdigest(),
    }
    with mlflow.start_run() as run:
        version = tracking.log_and_register_model(
            root, params, run.info.run_id, tags=tags, metrics=metrics
        )
    return version, run.info.run_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, payload: dict | None = None, timeout: float = 60) -> tuple[int, dict | str]:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, body = resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read().decode()
    try:
        return status, json.loads(body)
    except json.JSONDecodeError:
        return status, body


def env() -> dict[str, str]:
    """The test's MLflow store; the venv's bin first on PATH (`mlflow models serve` execs
    `uvicorn`)."""
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def spawn(root: Path, log_name: str, *argv: str) -> subprocess.Popen:
    """Start a venv command in its own process group, output to a log file in `root`."""
    with (root / log_name).open("wb") as out:
        return subprocess.Popen(
            [str(VENV_BIN / argv[0]), *argv[1:]],
            cwd=root,
            env=env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def serve_model(root: Path, log_name: str, model_uri: str) -> tuple[subprocess.Popen, str]:
    """`mlflow models serve` of `model_uri` on a free loopback port, one worker: (process, URL)."""
    port = free_port()
    argv = ("mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local")
    proc = spawn(root, log_name, *argv, "-h", "127.0.0.1", "-p", str(port), "-w", "1")
    return proc, f"http://127.0.0.1:{port}"


def wait_until_up(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    """Poll `url`/ping until it answers 200; fail with the server's log when it exits or
    `timeout` seconds pass (the machine may be busy: model loading imports TensorFlow)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"server exited {proc.returncode}:\n" + log.read_text()[-3000:]
        try:
            if http(url + "/ping", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, (
            f"server not up after {timeout} s:\n" + log.read_text()[-3000:]
        )
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the group: uvicorn and its worker go too
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
