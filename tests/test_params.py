"""params.yaml loader: defaults load, bad values fail with one message naming the key."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from components.errors import GruflowError
from components.params import Params, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = ROOT / "params.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(DEFAULTS.read_text(encoding="utf-8"))


def with_changes(raw: dict, **changes) -> dict:
    """Copy of the defaults with `section__key=value` changes (value None deletes the key)."""
    out = copy.deepcopy(raw)
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        target = out[section] if key else out
        name = key or section
        if value is None:
            del target[name]
        else:
            target[name] = value
    return out


def test_default_params_load():
    params = load_params(DEFAULTS)
    assert isinstance(params, Params)
    assert params.model.embedding_dim == params.embed.dim
    assert params.split.val_fraction + params.split.test_fraction < 1


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"train__epochs": -1}, "train.epochs"),
        ({"model__units": "big"}, "model.units"),
        ({"train__epochs": 2.5}, "train.epochs"),  # ints are strict: no silent truncation
        ({"tokenize__kind": "sentencepiece"}, "tokenize.kind"),
        ({"model__unitz": 128}, "unknown key 'model.unitz'"),
        ({"evaluate": None}, "missing key 'evaluate'"),
        ({"train__seq_len": None}, "missing key 'train.seq_len'"),
        ({"split__val_fraction": 0.5, "split__test_fraction": 0.5}, "val_fraction + test_fraction"),
        (
            {"model__embedding_dim": 32, "embed__dim": 64, "model__embedding_init": "word2vec"},
            "model.embedding_dim (32) must equal embed.dim (64)",
        ),
        ({"clean__scripts": ["Klingon"]}, "clean.scripts.0"),
        ({"clean__near_dup_threshold": 1.5}, "clean.near_dup_threshold"),
        ({"clean__dedup": "fuzzy"}, "clean.dedup"),
        (
            {"clean__near_dup": False, "clean__dedup": "near"},
            "clean.dedup 'near' needs clean.near_dup: true",
        ),
        (
            {"clean__near_dup": False, "split__group_near_duplicates": True},
            "split.group_near_duplicates needs clean.near_dup: true",
        ),
        ({"split__max_test_train_overlap": 1.5}, "split.max_test_train_overlap"),
        (
            {"tokenize__pre_tokenizer": "whitespace", "tokenize__kind": "bpe"},
            "pre_tokenizer 'whitespace' keeps whole words: it needs kind 'word'",
        ),
        ({"tokenize__unk_marker": "<unk>"}, "unk_marker is matched against whole"),
        (
            {
                "tokenize__kind": "word",
                "tokenize__pre_tokenizer": "whitespace",
                "tokenize__unk_marker": "a b",
            },
            "must not contain blanks",
        ),
        (
            {"clean__drift": {"mean_chars": 1.0, "script_mix": 2.0, "top_tokens": 0.5}},
            "clean.drift.script_mix",
        ),
        (
            {"orchestration__placement": {"train": "gpu-big"}},
            "placement.train: 'gpu-big' is not the stage pool 'gpu'",
        ),
        ({"orchestration__watch_interval": 0}, "orchestration.watch_interval"),
        ({"orchestration__debounce": -1}, "orchestration.debounce"),
        ({"model__attention_heads": 3}, "attention_heads (3) must divide units (128)"),
        ({"embed__algorithm": "glove"}, "'embed.algorithm'"),
        ({"embed__subsample": -0.1}, "'embed.subsample'"),
        ({"embed__probes": "function"}, "'embed.probes'"),
        ({"embed__pairs_file": ""}, "'embed.pairs_file'"),
        ({"embed__neighbours": 0}, "'embed.neighbours'"),
    ],
)
def test_bad_params_name_the_key(raw, changes, expected):
    with pytest.raises(GruflowError) as info:
        parse_params(with_changes(raw, **changes), "my-params.yaml")
    message = str(info.value)
    assert expected in message
    assert message.startswith("my-params.yaml: ")
    assert "\n" not in message


def test_dim_mismatch_is_fine_with_random_init(raw):
    changed = with_changes(
        raw, model__embedding_dim=32, embed__dim=64, model__embedding_init="random"
    )
    params = parse_params(changed)
    assert (params.model.embedding_dim, params.embed.dim) == (32, 64)


def test_load_params_file_problems(tmp_path):
    with pytest.raises(GruflowError, match="params file not found"):
        load_params(tmp_path / "absent.yaml")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: [unclosed\n", encoding="utf-8")
    with pytest.raises(GruflowError, match="not valid YAML at line 2, column 1"):
        load_params(bad_yaml)
    not_utf8 = tmp_path / "latin1.yaml"
    not_utf8.write_bytes("train: {epochs: 2}  # r\u00e9sum\u00e9\n".encode("latin-1"))
    with pytest.raises(GruflowError, match="not UTF-8 text .* save it as UTF-8"):
        load_params(not_utf8)
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(GruflowError, match="expected a mapping"):
        load_params(empty)


def test_cli_bad_params_one_line_exit_2_and_no_outputs(tmp_path, raw):
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(
        yaml.safe_dump(with_changes(raw, train__epochs=-1)), encoding="utf-8"
    )
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/gruflow"), "run", "--project", str(project)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "train.epochs" in lines[0]
    assert "Traceback" not in proc.stderr
    # bad params stop the run before any stage, tracker or orchestrator writes anything; the
    # one line names the log file holding the traceback (flows/entry.py)
    assert sorted(p.name for p in project.iterdir()) == [".gruflow", "params.yaml"]
    assert [p.parent.name for p in (project / ".gruflow").rglob("*") if p.is_file()] == ["logs"]
    assert "(log: " in lines[0]
