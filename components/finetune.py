"""finetune stage: a text classifier on the trained LM's encoder, scored against baselines.

Usage: `python -m components.finetune` (the DVC stage after train). With `finetune.source`
"" the stage is off: it writes a small "off" report and marker, imports no TensorFlow, and
`dvc repro` stays fast. Otherwise: labelled text (built-in task or a user's table), cleaned
by the clean stage's rules, encoded by the trained tokenizer, split (the source's own split or
a stratified hashed one); the classifier (encoder `pretrained` or `scratch`, and scratch too
for the comparison when `compare_scratch`) is trained, then scored on test with the majority
and TF-IDF + logistic-regression baselines fitted on the same train split.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from components.artifacts import atomic_dir, atomic_file, stable_keras_file, write_json
from components.classify import data as cdata
from components.classify import scores as cscores
from components.classify.fit import fit_classifier
from components.contract import FINETUNE_PLOT, FINETUNE_REPORT, PLOTS_DIR, SPLITS, encode
from components.errors import GruflowError, guarded
from components.params import Params, load_params

MODEL_FILE, LABELS_FILE, TEST_FILE, OFF_FILE = (
    "classifier.keras",
    "labels.json",
    "test.parquet",
    "off.json",
)


def encode_split(tok, texts: list[str], max_len: int) -> tuple[np.ndarray, int]:
    """<bos> … <eos> ids cut at max_len, right-padded with <pad> (0); and how many were cut."""
    ids = encode(tok, texts)
    cut = sum(len(x) > max_len for x in ids)
    width = min(max_len, max(len(x) for x in ids))
    out = np.zeros((len(ids), width), np.int32)
    for i, x in enumerate(ids):
        x = x[:max_len]
        out[i, : len(x)] = x
    return out, cut


def predict(model, x: np.ndarray, classes: list[str], batch_size: int) -> list[str]:
    probs = model.predict(x, batch_size=batch_size, verbose=0)  # (N, C)
    return [classes[i] for i in np.argmax(probs, axis=-1)]


def load_lm(path: Path):
    import keras

    from components.lm import masked as _masked  # noqa: F401  (a masked LM's layers)
    from components.lm import model as _layers  # noqa: F401  (registers the LM's layers)

    return keras.saving.load_model(path, safe_mode=True)


def _read_inputs(p: Params) -> tuple[dict, dict, list[str]]:
    dropped: Counter[str] = Counter()
    docs = cdata.labelled_documents(p.finetune, dropped)
    if not docs:
        raise GruflowError(
            f"finetune.source '{p.finetune.source}': no labelled rows — check "
            "finetune.text_column and finetune.label_column"
        )
    splits, counts = cdata.prepare(docs, p.clean, p.finetune, dropped)
    classes = cdata.check_labels({s: splits[s]["label"] for s in SPLITS}, p.finetune)
    info = {
        "dropped": dict(sorted(dropped.items())),
        "clean": counts,
        "label_counts": {s: dict(sorted(Counter(splits[s]["label"]).items())) for s in SPLITS},
    }
    return splits, info, classes


def finetune(p: Params) -> tuple[dict, dict]:
    """Train and score; (report, {model name: keras model})."""
    from tokenizers import Tokenizer

    cfg = p.finetune
    splits, info, classes = _read_inputs(p)
    tok = Tokenizer.from_file(p.paths.tokenizer)
    index = {c: i for i, c in enumerate(classes)}
    encoded, truncated = {}, 0
    for s in SPLITS:
        x, cut = encode_split(tok, splits[s]["text"], cfg.max_len)
        encoded[s] = (x, np.array([index[y] for y in splits[s]["label"]], np.int32))
        truncated += cut
    lm = load_lm(Path(p.paths.model))
    kinds = (
        ["pretrained", "scratch"]
        if cfg.encoder == "pretrained" and cfg.compare_scratch
        else [cfg.encoder]
    )
    y_test, models, results, epochs = splits["test"]["label"], {}, {}, {}
    for kind in kinds:
        models[kind], epochs[kind] = fit_classifier(kind, lm, encoded, len(classes), cfg)
        pred = predict(models[kind], encoded["test"][0], classes, cfg.batch_size)
        results[kind] = cscores.scores(y_test, pred, classes, per_class=True)
        results[kind]["confusion"] = cscores.confusion(y_test, pred, classes).tolist()
    results["majority"] = cscores.scores(
        y_test, cscores.majority(splits["train"]["label"], len(y_test)), classes
    )
    results["tfidf_logreg"] = cscores.scores(
        y_test, cscores.tfidf_logreg(splits["train"], splits["test"]["text"], cfg.seed), classes
    )
    report = {
        "enabled": True,
        "source": cfg.source,
        "classifier": cfg.encoder,
        "classes": classes,
        "truncated_texts": truncated,
        "epochs_run": epochs,
        "lm_model_md5": hashlib.md5(Path(p.paths.model).read_bytes()).hexdigest(),
        "tokenizer_sha256": hashlib.sha256(Path(p.paths.tokenizer).read_bytes()).hexdigest(),
        **info,
        "models": results,
    }
    return report, {"test": splits["test"], **models}


def blank_png(path: Path) -> None:
    """A 1x1 white PNG: the off stage's placeholder for the confusion plot DVC tracks."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00\xff"))
        + chunk(b"IEND", b"")
    )
    with atomic_file(path) as tmp:
        tmp.write_bytes(png)


def run(p: Params, out_dir: Path, reports: Path) -> dict:
    plot = reports / PLOTS_DIR / FINETUNE_PLOT
    if not p.finetune.source:
        plot.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir(out_dir) as tmp:
            (tmp / OFF_FILE).write_text('{"enabled": false}\n')
        blank_png(plot)
        report = {"enabled": False, "reason": "finetune.source is empty"}
        write_json(reports / FINETUNE_REPORT, report)
        return report
    report, out = finetune(p)  # every check passes before anything is written
    plot.parent.mkdir(parents=True, exist_ok=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    chosen = out[p.finetune.encoder]
    with atomic_dir(out_dir) as tmp:
        chosen.save(tmp / MODEL_FILE)
        stable_keras_file(tmp / MODEL_FILE)  # same weights, same bytes (DVC hash)
        (tmp / LABELS_FILE).write_text(
            json.dumps(
                {
                    "classes": report["classes"],
                    "max_len": p.finetune.max_len,
                    "tokenizer_sha256": report["tokenizer_sha256"],
                },
                indent=2,
            )
            + "\n"
        )
        pq.write_table(pa.table(out["test"]), tmp / TEST_FILE)
    m = report["models"][p.finetune.encoder]
    cscores.confusion_plot(
        np.array(m["confusion"]),
        report["classes"],
        f"finetune ({p.finetune.encoder}): macro-F1 {m['macro_f1']:.3f}",
        plot,
    )
    write_json(reports / FINETUNE_REPORT, report)
    return report


@guarded
def main() -> None:
    p = load_params("params.yaml")
    report = run(p, Path(p.paths.classifier), Path(p.paths.reports))
    if report["enabled"]:
        line = ", ".join(f"{k} {v['macro_f1']:.3f}" for k, v in report["models"].items())
        print(f"finetune: test macro-F1 {line}")
    else:
        print("finetune: off (finetune.source is empty)")


if __name__ == "__main__":
    main()
