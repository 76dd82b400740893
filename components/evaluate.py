"""Stage `evaluate`: score the trained LM and two count baselines on the test split.

Usage: `python -m components.evaluate`. Writes reports/metrics.json: perplexity
per token, per word and bits per byte, top-1/top-5 token accuracy, loss by position in the
window, and the baselines scored on the same targets: an add-one unigram
(`baseline_perplexity`) and a Witten-Bell bigram (`bigram_perplexity`); plots under
reports/plots/, seeded samples in reports/samples.md, and the DVC metrics file
reports/headline.json (a few keys of metrics.json). Targets are the real next tokens
(`<eos>` counted, `<bos>` never); the test split is read as evaluate.batch_size parallel
streams with the GRU state carried across windows (components/lm/inference.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from components.artifacts import atomic_file, write_json
from components.contract import (
    EOS_BYTES,
    HEADLINE_REPORT,
    METRICS_REPORT,
    PLOTS_DIR,
    SAMPLES,
    TRAIN_HISTORY,
    headline,
    split_file,
)
from components.errors import GruflowError, guarded
from components.lm import plots
from components.lm.inference import generate, score_stream, zero_states
from components.lm.windows import read_stream, stream_count, target_weights, unigram_log_probs
from components.params import Generate, Params, load_params
from components.tuning.best import effective_params

N_SAMPLES, PROMPT_WORDS, SAMPLE_TOKENS, ATTENTION_TOKENS = 3, 6, 32, 24
PROMPT_CHARS = 40


def bigram_log_probs(train: np.ndarray, test: np.ndarray, vocab_size: int) -> np.ndarray:
    """log P(test[i+1] | test[i]) under an interpolated Witten-Bell bigram fitted on train."""
    uni = np.exp(unigram_log_probs(train, vocab_size).astype(np.float64))
    V = np.int64(vocab_size)
    pairs, pair_counts = np.unique(train[:-1].astype(np.int64) * V + train[1:], return_counts=True)
    ctx_counts = np.bincount(train[:-1], minlength=vocab_size).astype(np.float64)
    types = np.bincount(pairs // V, minlength=vocab_size).astype(np.float64)  # T(v)
    prev, nxt = test[:-1].astype(np.int64), test[1:].astype(np.int64)
    codes = prev * V + nxt
    pos = np.clip(np.searchsorted(pairs, codes), 0, len(pairs) - 1)
    c_vw = np.where(pairs[pos] == codes, pair_counts[pos], 0).astype(np.float64)
    c_v, t_v = ctx_counts[prev], types[prev]
    seen = c_v > 0
    p = np.where(seen, (c_vw + t_v * uni[nxt]) / np.where(seen, c_v + t_v, 1.0), uni[nxt])
    return np.log(p)


def score_model(model, test: np.ndarray, seq_len: int, batch_size: int) -> dict:
    """Summed NLL (nats) over the real targets, their count, top-1/top-5 rates, per-target NLL
    (0 where no target) and mean loss by position in the window."""
    s = score_stream(model, test, seq_len, stream_count(test.size, seq_len, batch_size))
    w, rank, pos = s["weight_at"], s["rank_at"], s["pos_at"]
    n = float(s["targets"])
    by_position = {}
    lo = 0
    while lo < seq_len:  # buckets 0, 1, 2-3, 4-7, ...: does attention help later positions?
        hi = min(max(2 * lo, 1), seq_len)
        inside = w * ((pos >= lo) & (pos < hi))
        if inside.sum():
            by_position[f"{lo}-{hi - 1}"] = float((s["nll_at"] * inside).sum() / inside.sum())
        lo = hi
    return {
        "nll": s["nll"],
        "tokens": n,
        "top1": float(((rank < 1) * w).sum() / n),
        "top5": float(((rank < 5) * w).sum() / n),
        "per_target_nll": s["nll_at"],
        "per_target_weight": w,
        "loss_by_position": by_position,
    }


def per_document(
    per_target: np.ndarray, weight: np.ndarray, doc_lengths: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Perplexity of each document from the NLL of the targets that fall inside it."""
    owner = np.repeat(np.arange(len(doc_lengths)), doc_lengths)[1:]  # doc of each target
    nll = np.bincount(owner, weights=per_target * weight, minlength=len(doc_lengths))
    counts = np.bincount(owner, weights=weight, minlength=len(doc_lengths))
    keep = counts > 0
    return doc_lengths[keep], np.exp(nll[keep] / counts[keep])


def baseline_nll(train: np.ndarray, test: np.ndarray, vocab_size: int) -> dict[str, float]:
    """Summed NLL of the unigram and the bigram baseline over the model's targets."""
    w = target_weights(test[1:]).astype(np.float64)
    uni = unigram_log_probs(train, vocab_size).astype(np.float64)
    return {
        "unigram": float(-(uni[test[1:]] * w).sum()),
        "bigram": float(-(bigram_log_probs(train, test, vocab_size) * w).sum()),
    }


def count_words(texts: list[str]) -> int:
    """Whitespace-separated words plus one end per document: the unit of word perplexity
    (the `<eos>` target is the end of a document, as a line end is in word-level benchmarks)."""
    return sum(len(t.split()) for t in texts) + len(texts)


def write_samples(
    model, tokenizer, texts: list[str], seq_len: int, gen: Generate, out: Path
) -> None:
    """Seeded continuations of the opening words of the first test documents, sampled with
    the generation defaults (params.yaml `generate`) that serving uses too."""
    lines = [
        "# Samples",
        "",
        f"Seeded (seed {gen.seed}, temperature {gen.temperature}, top-k "
        f"{gen.top_k}, top-p {gen.top_p}, repetition penalty {gen.repetition_penalty}) "
        "continuations of the opening words of test documents.",
        "",
    ]
    for text in texts[:N_SAMPLES]:
        # text without blanks (Chinese, Japanese) has no words to count: its first characters
        prompt = " ".join(text.split()[:PROMPT_WORDS])[:PROMPT_CHARS] or text[:PROMPT_CHARS]
        cont = generate(
            model,
            tokenizer,
            prompt,
            SAMPLE_TOKENS,
            gen.temperature,
            gen.top_k,
            gen.seed,
            seq_len,
            gen.top_p,
            gen.repetition_penalty,
        )
        lines += [f"**{prompt}** {cont}".replace("\n", " "), ""]
    with atomic_file(out) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")


def attention_inputs(model, tokenizer, ids: list[list[int]]) -> list:
    from components.lm.model import attention_model

    probe = attention_model(model)
    maps = []
    for doc in ids[:N_SAMPLES]:
        x = np.array([doc[:ATTENTION_TOKENS]], dtype=np.int32)  # (1, T)
        states = zero_states(model, 1)  # the opening window of a document: a cold start
        alpha = np.asarray(probe.predict_on_batch([x, *states] if states else x))[0]  # (T, T)
        maps.append(([tokenizer.decode([i]) or tokenizer.id_to_token(i) for i in x[0]], alpha))
    return maps


def run(p: Params) -> dict:
    import keras
    from tokenizers import Tokenizer

    from components.lm import masked as _masked  # noqa: F401  (a masked LM's layers)
    from components.lm import model as _layers  # noqa: F401  (registers custom layers)

    p, _ = effective_params(p)  # the seq_len train used, tuned or not
    paths, tokens, reports = p.paths, Path(p.paths.tokens), Path(p.paths.reports)
    train, test = read_stream(split_file(tokens, "train")), read_stream(split_file(tokens, "test"))
    if not Path(paths.model).is_file():
        raise GruflowError(f"{paths.model}: missing — run the train stage first")
    model = keras.saving.load_model(paths.model, safe_mode=True)
    tokenizer = Tokenizer.from_file(paths.tokenizer)
    if check_objective(model, p.train.objective, paths.model) == "masked":
        return run_masked(p, model, tokenizer, train, test)
    vocab_size = int(model.outputs[0].shape[-1])
    s = score_model(model, test, p.train.seq_len, p.evaluate.batch_size)
    table = pq.read_table(split_file(tokens, "test"), columns=["ids", "n_bytes"]).to_pydict()
    n_bytes = sum(table["n_bytes"]) + EOS_BYTES * len(table["n_bytes"])  # each doc's <eos>
    texts = pq.read_table(split_file(paths.clean, "test"), columns=["text"]).column("text")
    texts = texts.to_pylist()
    if len(texts) != len(table["ids"]):
        raise GruflowError(
            f"{split_file(paths.clean, 'test')} has {len(texts)} documents, "
            f"{split_file(tokens, 'test')} {len(table['ids'])} — rerun the "
            "tokenize stage"
        )
    words = count_words(texts)
    base = baseline_nll(train, test, vocab_size)
    metrics = {
        "perplexity": math.exp(s["nll"] / s["tokens"]),
        "word_perplexity": math.exp(s["nll"] / words),
        "bits_per_byte": s["nll"] / math.log(2) / n_bytes,
        "token_accuracy": s["top1"],
        "top5_accuracy": s["top5"],
        "baseline_perplexity": math.exp(base["unigram"] / s["tokens"]),
        "bigram_perplexity": math.exp(base["bigram"] / s["tokens"]),
        "baseline_word_perplexity": math.exp(base["unigram"] / words),
        "bigram_word_perplexity": math.exp(base["bigram"] / words),
        "loss_by_position": s["loss_by_position"],
        "test_tokens": int(s["tokens"]),
        "test_words": words,
        "test_bytes": n_bytes,
        "embedding_init": p.model.embedding_init,
    }
    if p.evaluate.cache.size:  # inference-time gain: extra *_cache keys, static ones untouched
        from components.lm.cache import cache_metrics

        val = read_stream(split_file(tokens, "val"))
        metrics |= cache_metrics(
            model,
            val,
            test,
            p.train.seq_len,
            p.evaluate.batch_size,
            p.evaluate.cache,
            words,
            n_bytes,
        )
    lengths = np.array([len(d) for d in table["ids"]])
    plots.perplexity_by_length(
        *per_document(s["per_target_nll"], s["per_target_weight"], lengths),
        reports / PLOTS_DIR / "perplexity_by_length.png",
    )
    plots.attention_maps(
        attention_inputs(model, tokenizer, table["ids"]), reports / PLOTS_DIR / "attention.png"
    )
    plots.learning_curves(reports / TRAIN_HISTORY, reports / PLOTS_DIR / "learning_curves.png")
    write_samples(model, tokenizer, texts, p.train.seq_len, p.generate, reports / SAMPLES)
    write_json(reports / METRICS_REPORT, metrics)
    write_json(reports / HEADLINE_REPORT, headline(metrics))
    return metrics


def check_objective(model, objective: str, path: str) -> str:
    """train.objective, checked against the objective the saved model was trained with."""
    from components.lm.masked import is_masked

    trained = "masked" if is_masked(model) else "causal"
    if trained != objective:
        raise GruflowError(
            f"{path} was trained with objective {trained}, params.yaml says "
            f"train.objective {objective} — rerun the train stage"
        )
    return objective


def run_masked(p: Params, model, tokenizer, train: np.ndarray, test: np.ndarray) -> dict:
    """Evaluate a masked LM on the test split under the fixed seeded mask
    (components/lm/masked_inference.py);
    the same report and plot files as the causal LM's, with masked metrics."""
    from components.lm import masked_inference as masked_eval

    reports = Path(p.paths.reports)
    vocab_size = int(model.outputs[0].shape[-1])
    t = p.train
    s = masked_eval.masked_metrics(model, train, test, t.seq_len, p.evaluate.batch_size, vocab_size)
    metrics, per_doc = s["metrics"] | {"embedding_init": p.model.embedding_init}, s["per_position"]
    lengths = pq.read_table(split_file(p.paths.tokens, "test"), columns=["ids"]).column("ids")
    lengths = np.array([len(d) for d in lengths.to_pylist()])
    plots.perplexity_by_length(
        *masked_eval.per_document(per_doc, lengths),
        reports / PLOTS_DIR / "perplexity_by_length.png",
    )
    plots.attention_maps(
        masked_eval.attention_inputs(model, tokenizer, test, N_SAMPLES, ATTENTION_TOKENS),
        reports / PLOTS_DIR / "attention.png",
    )
    plots.learning_curves(reports / TRAIN_HISTORY, reports / PLOTS_DIR / "learning_curves.png")
    texts = pq.read_table(split_file(p.paths.clean, "test"), columns=["text"]).column("text")
    masked_eval.write_fill_samples(
        model, tokenizer, texts.to_pylist()[:N_SAMPLES], t.seq_len, reports / SAMPLES
    )
    write_json(reports / METRICS_REPORT, metrics)
    write_json(reports / HEADLINE_REPORT, headline(metrics))
    return metrics


@guarded
def main() -> None:
    m = run(load_params())
    if "masked_perplexity" in m:
        print(
            f"evaluate: masked perplexity {m['masked_perplexity']:.1f}, accuracy "
            f"{m['masked_accuracy']:.3f}, top-5 {m['masked_top5_accuracy']:.3f} on "
            f"{m['masked_tokens']} masked test tokens (unigram "
            f"{m['masked_baseline_perplexity']:.1f})"
        )
        return
    print(
        f"evaluate: test perplexity {m['perplexity']:.1f} per token, "
        f"{m['word_perplexity']:.1f} per word "
        f"(unigram {m['baseline_perplexity']:.1f}, bigram {m['bigram_perplexity']:.1f}), "
        f"{m['bits_per_byte']:.3f} bits/byte"
    )
    if "perplexity_cache" in m:
        print(
            f"evaluate: with the continuous cache (size {m['cache_size']}, θ {m['cache_theta']}, "
            f"λ {m['cache_lambda']}, chosen on val): perplexity {m['perplexity_cache']:.1f}, "
            f"{m['bits_per_byte_cache']:.3f} bits/byte"
        )


if __name__ == "__main__":
    main()
