"""Benchmark of the data stages: throughput against the bare library calls doing the same work,
and peak memory as the corpus grows ten-fold.

Usage: `python -m bench.data [--mb 100] [--repeat 3]` -> reports/bench/data.json, rows:
- `clean`: million characters/s of the clean stage (`components.clean.run`: every rule, counts,
  filters, exact and near de-duplication decisions, split, profile, Parquet out) vs the bare
  calls of its core work: read the same Parquet snapshot in the same batches on the same number
  of threads, the rules' `pyarrow.compute` replacements, NFKC, the length filter, one `hashlib`
  SHA-256 per document, the NumPy MinHash signatures (`near_dup.signatures`, when
  `clean.near_dup` is on: no library computes them faster), and write the result to Parquet.
- `tokenize`: million characters/s of the tokenize stage vs the bare `tokenizers` calls: read the
  same cleaned Parquet, `Tokenizer.train_from_iterator` on train, `encode_batch_fast` (the API the
  stage uses) on every split in the stage's batch size, write the ids to Parquet.
- `tokenize_encode` (no floor): the encode pass of each side alone.
- `peak_rss_10x`: peak RSS (MiB) of the hungriest data stage (ingest/clean/tokenize) on the `--mb`
  corpus over the same on a corpus ten times smaller.
Every run is a fresh process (stage and bare alternate, so load from other processes hits both
alike) that reports its own seconds and its own peak RSS (VmHWM, see bench.common). Each side
runs `--repeat` times: the fastest run counts, min/median/max are recorded. The corpus: the
built-in documents, copy after copy, each copy renaming a tenth of its distinct words (word +
copy number), so the vocabulary grows with the corpus as real text's does, and shuffling each
document's words, so that no copy is a near-duplicate of another.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from bench.common import failures, peak_rss_kib, spread, throughput_row
from components.artifacts import write_json
from components.params import load_params

PYTHON = sys.executable
STAGES = ("ingest", "clean", "tokenize")
RENAMED = 0.1  # share of a copy's distinct words renamed


def write_corpus(path: Path, megabytes: float) -> dict:
    """JSONL of the built-in documents, copied until about `megabytes` of text; copy c renames
    a random tenth of the distinct words and shuffles each document's words. Returns bytes and
    distinct words written."""
    from components.data.corpus import builtin_documents

    docs = [d.text for d in builtin_documents()]
    words = sorted({w for text in docs for w in text.split(" ")})
    target, size, copy, seen = int(megabytes * 1e6), 0, 0, set(words)
    with path.open("w", encoding="utf-8") as f:
        while size < target:
            rng = random.Random(copy)
            renamed = (
                {w: f"{w}{copy}" for w in rng.sample(words, int(RENAMED * len(words)))}
                if copy
                else {}
            )
            seen.update(renamed.values())
            for i, text in enumerate(docs):
                words_in = [renamed.get(w, w) for w in text.split(" ")]
                if copy:  # shuffled: a copy is new text, not a near-duplicate of the original
                    rng.shuffle(words_in)
                text = " ".join(words_in)
                line = (
                    json.dumps(
                        {"text": f"[{copy}] {text}", "id": f"{copy}-{i}"}, ensure_ascii=False
                    )
                    + "\n"
                )
                f.write(line)
                size += len(line.encode("utf-8"))
                if size >= target:
                    break
            copy += 1
    return {"bytes": size, "distinct_words": len(seen)}


def run_child(args: list[str]) -> dict:
    """One measurement in a fresh process; its last stdout line is its JSON result."""
    out = subprocess.run(
        [PYTHON, "-m", "bench.data", *args], capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise SystemExit(f"bench data: {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def stage_child(stage: str, work: Path) -> dict:
    """The child side of a stage run: one stage on `work`, timing only its run()."""
    p = load_params()
    extra: dict = {}
    t0 = time.perf_counter()
    if stage == "ingest":
        from components import ingest

        cfg = p.data.model_copy(update={"source": str(work / "corpus.jsonl"), "max_docs": 0})
        ingest.run(cfg, work / "raw", work / "ingest.json")
    elif stage == "clean":
        from components import clean

        clean.run(
            p.clean,
            p.split,
            work / "raw",
            work / "clean",
            work / "clean.json",
            work / "data_profile.json",
            ["bench"],
        )
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
        tokenize.run(
            p.tokenize,
            work / "clean",
            work / "tokenizer.json",
            work / "tokens",
            work / "tokenize.json",
        )
        extra["encode_seconds"] = sum(encode_seconds)
    return {"seconds": time.perf_counter() - t0, **extra}


def bare_clean_batch(text, p):
    """The clean stage's core work on one batch, as bare library calls."""
    from hashlib import sha256

    import pyarrow as pa
    import pyarrow.compute as pc

    from components.data import clean_rules as r
    from components.data.near_dup import signatures

    patterns = [
        (r.HTML_DROP, ""),
        (r.HTML_BLOCK, "\n"),
        (r.HTML_INLINE, ""),
        (r.LINE_END, "\n"),
        (r.CONTROL, ""),
        (r.ZERO_WIDTH, ""),
        (r.BLANKS, " "),
        (r.BLANKS_AT_BREAK, "\n"),
        (r"\n{3,}", "\n\n"),
        *((pattern, f"<{name}>") for name, pattern in r.PII),
    ]
    for pattern, replacement in patterns[:6]:
        text = pc.replace_substring_regex(text, pattern, replacement)
    text = pc.utf8_normalize(text, "NFKC")
    for pattern, replacement in patterns[6:]:
        text = pc.replace_substring_regex(text, pattern, replacement)
    text = pc.utf8_trim_whitespace(text)
    text = text.filter(pc.greater_equal(pc.utf8_length(text), p.clean.min_chars))
    ids = [sha256(t).hexdigest()[:20] for t in text.cast(pa.binary()).to_pylist()]
    if p.clean.near_dup:
        signatures(text, p.clean.near_dup_ngram)
    return pa.table({"doc_id": ids, "text": text})


def bare_clean(work: Path) -> dict:
    """Read the snapshot in the stage's batches on the stage's threads, write the result."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    from components import clean
    from components.artifacts import TEXT_CODEC

    p = load_params()
    t0 = time.perf_counter()
    with (
        ThreadPoolExecutor(clean.worker_count()) as pool,
        pq.ParquetWriter(
            work / "bare_clean.parquet",
            pq.read_schema(work / "raw" / "corpus.parquet")
            .empty_table()
            .select(["doc_id", "text"])
            .schema,
            compression=TEXT_CODEC,
        ) as writer,
    ):
        pending: deque = deque()
        for path in sorted((work / "raw").glob("*.parquet")):
            for batch in pq.ParquetFile(path).iter_batches(clean.BATCH_DOCS, columns=["text"]):
                pending.append(pool.submit(bare_clean_batch, batch.column("text"), p))
                if len(pending) >= 2 * clean.worker_count():
                    writer.write_table(pending.popleft().result())
        while pending:
            writer.write_table(pending.popleft().result())
    return {"seconds": time.perf_counter() - t0}


def bare_tokenize(work: Path) -> dict:
    """Bare train_from_iterator on train and encode_batch_fast on every split, same I/O."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components import tokenize

    p = load_params()
    t0 = time.perf_counter()
    texts = {
        s: pq.read_table(work / "clean" / f"{s}.parquet", columns=["text"])
        .column("text")
        .to_pylist()
        for s in ("train", "val", "test")
    }
    tok, trainer = tokenize.build_tokenizer(p.tokenize)
    tok.train_from_iterator(texts["train"], trainer=trainer)
    encode = 0.0
    (work / "bare_tokens").mkdir(exist_ok=True)
    for split, split_texts in texts.items():
        schema = pa.schema([("ids", pa.list_(pa.int32()))])
        with pq.ParquetWriter(
            work / "bare_tokens" / f"{split}.parquet", schema, compression="zstd"
        ) as writer:
            for i in range(0, len(split_texts), tokenize.BATCH_DOCS):
                t = time.perf_counter()
                encs = tok.encode_batch_fast(
                    split_texts[i : i + tokenize.BATCH_DOCS], add_special_tokens=False
                )
                encode += time.perf_counter() - t
                writer.write_table(
                    pa.table([pa.array([e.ids for e in encs], pa.list_(pa.int32()))], schema=schema)
                )
    return {"seconds": time.perf_counter() - t0, "encode_seconds": encode}


def child_main(kind: str, stage: str, work: Path) -> None:
    result = (
        stage_child(stage, work)
        if kind == "stage"
        else bare_clean(work)
        if stage == "clean"
        else bare_tokenize(work)
    )
    print(json.dumps({**result, "peak_rss_kib": peak_rss_kib()}))


def measure(work: Path, megabytes: float, repeat: int, bare: bool) -> dict:
    """Ingest once, then clean and tokenize `repeat` times each (alternating with the bare
    side when `bare`): every run's result, per side and stage."""
    work.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(work / "corpus.jsonl", megabytes)
    runs: dict = {
        "stage": {"ingest": [run_child(["--child", "stage", "ingest", str(work)])]},
        "bare": {},
    }
    for stage in ("clean", "tokenize"):
        for _ in range(repeat):
            runs["stage"].setdefault(stage, []).append(
                run_child(["--child", "stage", stage, str(work)])
            )
            if bare:
                runs["bare"].setdefault(stage, []).append(
                    run_child(["--child", "bare", stage, str(work)])
                )
    peak = max(r["peak_rss_kib"] for stage_runs in runs["stage"].values() for r in stage_runs)
    return {**corpus, "runs": runs, "peak_rss_kib": peak}


def rows_of(large: dict, small: dict, work: Path) -> list[dict]:
    report = json.loads((work / "clean.json").read_text())
    text_mb, tok_mb = report["characters_in"] / 1e6, report["characters_out"] / 1e6
    st, bare = large["runs"]["stage"], large["runs"]["bare"]

    def secs(runs: list[dict], key: str = "seconds") -> list[float]:
        return [r[key] for r in runs]

    rows = [
        throughput_row("clean", text_mb, secs(st["clean"]), secs(bare["clean"]), "Mchar/s"),
        throughput_row("tokenize", tok_mb, secs(st["tokenize"]), secs(bare["tokenize"]), "Mchar/s"),
        throughput_row(
            "tokenize_encode",
            tok_mb,
            secs(st["tokenize"], "encode_seconds"),
            secs(bare["tokenize"], "encode_seconds"),
            "Mchar/s",
        ),
    ]
    mib = {
        size: {
            s: [r["peak_rss_kib"] / 1024 for r in runs] for s, runs in run["runs"]["stage"].items()
        }
        for size, run in (("1x", small), ("10x", large))
    }
    rows.append(
        {
            "name": "peak_rss_10x",
            "value": round(large["peak_rss_kib"] / 1024, 1),
            "raw_value": round(small["peak_rss_kib"] / 1024, 1),
            "unit": "MiB",
            "ratio": round(large["peak_rss_kib"] / small["peak_rss_kib"], 4),
            "spread": {f"{size}_{s}": spread(v) for size, d in mib.items() for s, v in d.items()},
            "corpus": {
                size: {"bytes": run["bytes"], "distinct_words": run["distinct_words"]}
                for size, run in (("1x", small), ("10x", large))
            },
        }
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="size of the large corpus")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, stage, work = args.child
        return child_main(kind, stage, Path(work))
    p = load_params()
    with tempfile.TemporaryDirectory(prefix="gruflow-bench-data-") as tmp:
        small = measure(Path(tmp) / "small", args.mb / 10, args.repeat, bare=False)
        large = measure(Path(tmp) / "large", args.mb, args.repeat, bare=True)
        rows = rows_of(large, small, Path(tmp) / "large")
    out = Path(p.paths.reports) / "bench" / "data.json"
    write_json(out, rows)
    for r in rows:
        print(
            f"bench data: {r['name']}: {r['value']} vs {r['raw_value']} {r['unit']} "
            f"(ratio {r['ratio']})"
        )
    for line in failures(rows):
        print(f"bench data: FAIL {line}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
