"""Benchmark of the data stages: throughput against the bare library calls, and peak memory as
the corpus grows ten-fold.

Usage: `python -m bench.data [--mb 100]` -> reports/bench/data.json, rows:
- `clean`: million characters/s through the clean stage (`components.clean.run`: read the
  snapshot in record batches, every rule, counts, de-duplication, split, profile, Parquet out)
  vs the bare `pyarrow.compute` calls of the same rules (the same regex replacements, NFKC via
  `utf8_normalize`, the length filter) on the same text already in memory.
- `tokenize`: million characters/s through the tokenize stage (train the tokenizer on train,
  encode every split, write Parquet + report) vs the bare `tokenizers` calls on the same text
  in memory: `Tokenizer.train_from_iterator` on train + `Tokenizer.encode_batch` on every split.
- `tokenize_encode`: the encode pass of the stage alone vs bare `encode_batch`.
- `peak_rss_10x`: peak RSS (MiB) of the hungriest data stage (ingest/clean/tokenize, each its
  own process) on the `--mb` corpus; `raw_value` the same on a corpus ten times smaller.
The corpus: the built-in corpus's documents repeated (each copy numbered, so none is an exact
duplicate) as one JSONL file. Each stage runs in a fresh process, so its RSS is its own.
Clean, tokenize and the bare calls each run `--repeat` times: times are those of the fastest
run (as `timeit` does: the least disturbed by other load), peak RSS the largest.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from components.artifacts import write_json
from components.params import load_params

PYTHON = sys.executable
STAGES = ("ingest", "clean", "tokenize")


def write_corpus(path: Path, megabytes: float) -> int:
    """JSONL of numbered copies of the built-in documents, about `megabytes` of text."""
    from components.data.corpus import builtin_documents

    docs = [d.text for d in builtin_documents()]
    target, size, copy = int(megabytes * 1e6), 0, 0
    with path.open("w", encoding="utf-8") as f:
        while size < target:
            for i, text in enumerate(docs):
                line = json.dumps({"text": f"[{copy}] {text}", "id": f"{copy}-{i}"},
                                  ensure_ascii=False) + "\n"
                f.write(line)
                size += len(line.encode("utf-8"))
                if size >= target:
                    break
            copy += 1
    return size


def run_stage(stage: str, work: Path) -> dict:
    """Run one stage in a fresh process; its wall time (inside) and peak RSS (KiB)."""
    out = subprocess.run([PYTHON, "-m", "bench.data", "--stage", stage, "--work", str(work)],
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"bench data: stage {stage} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def stage_main(stage: str, work: Path) -> None:
    """The child side of run_stage: one stage on `work`, timing only its run()."""
    p = load_params()
    t0 = time.perf_counter()
    extra: dict = {}
    if stage == "ingest":
        from components import ingest

        cfg = p.data.model_copy(update={"source": str(work / "corpus.jsonl"), "max_docs": 0})
        ingest.run(cfg, work / "raw", work / "ingest.json")
    elif stage == "clean":
        from components import clean

        clean.run(p.clean, p.split, work / "raw", work / "clean", work / "clean.json",
                  work / "data_profile.json", ["bench"])
    else:
        from components import tokenize

        encode_seconds = []
        real_encode = tokenize.encode_ids

        def timed_encode(tok, texts):
            t = time.perf_counter()
            ids = real_encode(tok, texts)
            encode_seconds.append(time.perf_counter() - t)
            return ids

        tokenize.encode_ids = timed_encode
        tokenize.run(p.tokenize, work / "clean", work / "tokenizer.json", work / "tokens",
                     work / "tokenize.json")
        extra["encode_seconds"] = sum(encode_seconds)
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_kib": rss, **extra}))


def bare_clean(work: Path) -> float:
    """Seconds of the bare pyarrow.compute calls of the clean rules, text already in memory."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from components.data import clean_rules as r

    p = load_params()
    text = ds.dataset(work / "raw").to_table(columns=["text"]).column("text").combine_chunks()
    patterns = [(r.HTML_DROP, ""), (r.HTML_BLOCK, "\n"), (r.HTML_INLINE, ""),
                (r.LINE_END, "\n"), (r.CONTROL, ""), (r.ZERO_WIDTH, ""),
                (r.BLANKS, " "), (r.BLANKS_AT_BREAK, "\n"), (r"\n{3,}", "\n\n"),
                *((pattern, f"<{name}>") for name, pattern in r.PII)]
    t0 = time.perf_counter()
    for pattern, replacement in patterns[:6]:
        text = pc.replace_substring_regex(text, pattern, replacement)
    text = pc.utf8_normalize(text, "NFKC")
    for pattern, replacement in patterns[6:]:
        text = pc.replace_substring_regex(text, pattern, replacement)
    text = pc.utf8_trim_whitespace(text)
    text = text.filter(pc.greater_equal(pc.utf8_length(text), p.clean.min_chars))
    return time.perf_counter() - t0


def bare_tokenize(work: Path) -> tuple[float, float]:
    """Seconds of bare train_from_iterator (train split) and of bare encode_batch (all splits),
    on the cleaned text already in memory, with the stage's tokenizer settings."""
    import pyarrow.parquet as pq

    from components import tokenize

    p = load_params()
    texts = {s: pq.read_table(work / "clean" / f"{s}.parquet", columns=["text"])
             .column("text").to_pylist() for s in ("train", "val", "test")}
    tok, trainer = tokenize.build_tokenizer(p.tokenize)
    t0 = time.perf_counter()
    tok.train_from_iterator(texts["train"], trainer=trainer)
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    for split_texts in texts.values():
        for i in range(0, len(split_texts), tokenize.BATCH_DOCS):
            tok.encode_batch(split_texts[i:i + tokenize.BATCH_DOCS], add_special_tokens=False)
    return train_seconds, time.perf_counter() - t0


def best(runs: list[dict]) -> dict:
    """The fastest run (all its times) with the largest peak RSS of all runs."""
    fastest = min(runs, key=lambda r: r["seconds"])
    return {**fastest, "peak_rss_kib": max(r["peak_rss_kib"] for r in runs)}


def pipeline(work: Path, megabytes: float, repeat: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    size = write_corpus(work / "corpus.jsonl", megabytes)
    stages = {stage: best([run_stage(stage, work)
                           for _ in range(1 if stage == "ingest" else repeat)])
              for stage in STAGES}
    return {"bytes": size, "stages": stages,
            "peak_rss_kib": max(s["peak_rss_kib"] for s in stages.values())}


def row(name: str, value: float, raw_value: float, unit: str) -> dict:
    return {"name": name, "value": round(value, 3), "raw_value": round(raw_value, 3),
            "unit": unit, "ratio": round(value / raw_value, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="size of the large corpus")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        return stage_main(args.stage, args.work)
    p = load_params()
    with tempfile.TemporaryDirectory(prefix="gruflow-bench-data-") as tmp:
        small = pipeline(Path(tmp) / "small", args.mb / 10, args.repeat)
        large = pipeline(Path(tmp) / "large", args.mb, args.repeat)
        work = Path(tmp) / "large"
        report = json.loads((work / "clean.json").read_text())
        text_mb, tok_mb = report["characters_in"] / 1e6, report["characters_out"] / 1e6
        raw_clean = min(bare_clean(work) for _ in range(args.repeat))
        bare = [bare_tokenize(work) for _ in range(args.repeat)]
        raw_train, raw_encode = min(bare, key=sum)  # the fastest whole run
    st = large["stages"]
    rows = [
        row("clean", text_mb / st["clean"]["seconds"], text_mb / raw_clean, "Mchar/s"),
        row("tokenize", tok_mb / st["tokenize"]["seconds"], tok_mb / (raw_train + raw_encode),
            "Mchar/s"),
        row("tokenize_encode", tok_mb / st["tokenize"]["encode_seconds"], tok_mb / raw_encode,
            "Mchar/s"),
        row("peak_rss_10x", large["peak_rss_kib"] / 1024, small["peak_rss_kib"] / 1024, "MiB"),
    ]
    rows[-1]["detail"] = {size: {s: round(v["peak_rss_kib"] / 1024, 1)
                                 for s, v in run["stages"].items()}
                          for size, run in (("1x_mib", small), ("10x_mib", large))}
    out = Path(p.paths.reports) / "bench" / "data.json"
    write_json(out, rows)
    for r in rows:
        print(f"bench data: {r['name']}: {r['value']} vs {r['raw_value']} {r['unit']} "
              f"(ratio {r['ratio']})")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
