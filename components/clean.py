"""Stage `clean`: vectorised normalisation, filtering, de-duplication and the split.

Usage: `python -m components.clean`. Reads data/raw/*.parquet in record batches, writes
data/clean/{train,val,test}.parquet (doc_id, text, source, split) and reports/clean.json.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from components.artifacts import atomic_dir, atomic_file, write_json
from components.errors import GruflowError, guarded
from components.near_dup import NearDuplicates
from components.params import Clean, Split, load_params
from components.profile import Profiler, check_drift, main_script, script_counts
from components.profile import plot as plot_profile

SPLITS = ("train", "val", "test")
BATCH_DOCS = 4096
SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string()),
                    ("source", pa.string()), ("split", pa.string())])
# RE2 patterns. Vertical tab, form feed, NEL and the Unicode line/paragraph separators are
# line breaks; the other C0/C1 controls (except \t) are removed, as are zero-width characters.
LINE_BREAKS = r"[\x0b\x0c\x85\x{2028}\x{2029}]"
CONTROL = r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]"
ZERO_WIDTH = r"[\x{200b}-\x{200d}\x{2060}\x{feff}]"
# HTML: only real element names, so text such as `<class 'int'>` or `a < b > c` survives.
# Block elements become a line break, inline ones vanish; script/style lose their content too.
_BLOCK = "address|article|aside|blockquote|br|dd|div|dl|dt|figcaption|figure|footer|form|" \
         "h[1-6]|header|hr|li|main|nav|ol|p|pre|section|table|tbody|td|tfoot|th|thead|tr|ul"
_INLINE = "a|abbr|b|body|button|center|cite|code|del|em|font|head|html|i|iframe|img|input|" \
          "ins|kbd|label|link|mark|meta|noscript|option|q|s|samp|select|small|span|strike|" \
          "strong|sub|sup|textarea|title|tt|u|var"
HTML_DROP = r"(?is)<(script|style)\b[^>]*>.*?</(?:script|style)\s*>|<!--.*?-->|<!doctype[^>]*>"
_ATTRS = r"""(?:\s+[A-Za-z_:][-\w:.]*\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'=<>`]+))*\s*/?>"""
HTML_BLOCK = rf"(?i)</?(?:{_BLOCK}){_ATTRS}"  # attributes need a value: `<a statement>` stays
HTML_INLINE = rf"(?i)</?(?:{_INLINE}){_ATTRS}"
HTML_ENTITY = r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});"
# Privacy masks, applied in this order (a URL may hold an e-mail or an IP). Phones need a
# phone shape (+country code, (area) code or 3-3-4 groups), so 3.11.7 or 1234567 stay.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_WIDE = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9])"  # two or three digits
# one of the first three octets has 2+ digits, so section numbers like 7.1.4.34 stay
_IPV4 = (rf"\b(?:{_WIDE}\.{_OCTET}\.{_OCTET}|[0-9]\.{_WIDE}\.{_OCTET}|[0-9]\.[0-9]\.{_WIDE})"
         rf"\.{_OCTET}\b")
PII = (
    ("url", r"(?i)\b(?:https?://|ftp://|www\.)[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}]"),
    ("email", r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    ("ip", rf"{_IPV4}|\b(?:[0-9A-Fa-f]{{1,4}}:){{7}}[0-9A-Fa-f]{{1,4}}\b"),
    ("phone", r"\+[0-9]{1,3}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,4}(?:[ .-][0-9]{2,8}){1,4}\b"
              r"|\([0-9]{3}\) ?[0-9]{3}[ .-][0-9]{4}\b|\b[0-9]{3}[.-][0-9]{3}[.-][0-9]{4}\b"),
)
# A word is a run of non-blank characters, or one CJK character (those scripts use no spaces).
_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}"
WORD = rf"[{_CJK}]|[^\s{_CJK}]+"


_ENTITY = re.compile(HTML_ENTITY)


def count(text: pa.Array, pattern: str) -> int:
    return pc.sum(pc.count_substring_regex(text, pattern)).as_py() or 0


def strip_html(text: pa.Array) -> tuple[pa.Array, dict[str, int]]:
    """Drop tags (block tags -> line break), then unescape entities on rows that hold one."""
    tags = count(text, HTML_DROP) + count(text, HTML_BLOCK) + count(text, HTML_INLINE)
    text = pc.replace_substring_regex(text, HTML_DROP, "")
    text = pc.replace_substring_regex(text, HTML_BLOCK, "\n")
    text = pc.replace_substring_regex(text, HTML_INLINE, "")
    entities = 0
    if count(text, HTML_ENTITY):
        flags = pc.match_substring_regex(text, HTML_ENTITY).to_pylist()
        values = text.to_pylist()
        for i, hit in enumerate(flags):
            if hit:  # count only real entities: html.unescape leaves `&nosuch;` as it is
                entities += sum(html.unescape(m) != m for m in _ENTITY.findall(values[i]))
                values[i] = html.unescape(values[i])
        text = pa.array(values, pa.string())
    return text, {"html_tags_removed": tags, "html_entities_unescaped": entities}


def mask_pii(text: pa.Array) -> tuple[pa.Array, dict[str, int]]:
    """E-mail addresses, URLs, phone numbers and IPs -> <email> <url> <phone> <ip>."""
    counts = {}
    for name, pattern in PII:
        counts[f"masked_{name}"] = count(text, pattern)
        text = pc.replace_substring_regex(text, pattern, f"<{name}>")
    return text, counts


def nfkc(text: pa.Array) -> pa.Array:
    """Unicode NFKC. ASCII strings are already NFKC and pass through untouched.

    pyarrow's `utf8_normalize` does not recompose on pyarrow 25 (apache/arrow#51225: 'café'
    stays decomposed), so non-ASCII strings go through `unicodedata` instead.
    """
    is_ascii = pc.string_is_ascii(text)
    if pc.all(is_ascii).as_py() is not False:
        return text
    flags = is_ascii.to_pylist()
    return pa.array([v if ok or v is None else unicodedata.normalize("NFKC", v)
                     for v, ok in zip(text.to_pylist(), flags, strict=True)], pa.string())


def normalise(text: pa.Array, cfg: Clean) -> tuple[pa.Array, dict[str, int]]:
    """`\\n` line ends, controls and zero-width removed, NFKC, whitespace collapsed."""
    counts = {}
    text = pc.replace_substring_regex(text, r"\r\n?", "\n")
    text = pc.replace_substring_regex(text, LINE_BREAKS, "\n")
    for name, pattern in (("control_chars_removed", CONTROL), ("zero_width_removed", ZERO_WIDTH)):
        counts[name] = pc.sum(pc.count_substring_regex(text, pattern)).as_py() or 0
        text = pc.replace_substring_regex(text, pattern, "")
    text = nfkc(text)
    text = pc.replace_substring_regex(text, r"[^\S\n]+", " ")  # runs of blanks -> one space
    text = pc.replace_substring_regex(text, r" ?\n ?", "\n")
    text = pc.replace_substring_regex(text, r"\n{3,}", "\n\n")
    text = pc.utf8_trim_whitespace(text)
    if cfg.lowercase:
        text = pc.utf8_lower(text)
    return text, counts


def assign_split(doc_ids: list[str], cfg: Split) -> list[str]:
    """Stable per-document split: depends only on the document's id and the seed."""
    out = []
    for doc in doc_ids:
        digest = hashlib.sha256(f"{cfg.seed}:{doc}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        out.append("test" if u < cfg.test_fraction else
                   "val" if u < cfg.test_fraction + cfg.val_fraction else "train")
    return out


def clean_batch(batch: pa.RecordBatch, cfg: Clean, split: Split, seen: set[str],
                counts: dict[str, int], near: NearDuplicates | None = None,
                profiler: Profiler | None = None) -> pa.Table:
    """Clean one batch; `seen` (exact hashes) and `near` (the MinHash index) carry what was
    kept across batches; `profiler` accumulates the profile of what is kept."""
    text = batch.column("text")
    rules = [strip_html] if cfg.strip_html else []
    rules.append(lambda t: normalise(t, cfg))
    if cfg.mask_pii:
        rules.append(mask_pii)
    for rule in rules:
        text, rule_counts = rule(text)
        for key, value in rule_counts.items():
            counts[key] += value
    given = (batch.column("split") if "split" in batch.schema.names
             else pa.nulls(len(text), pa.string()))
    kept = pa.table({"text": text, "source": batch.column("source"), "split": given})
    long_enough = pc.greater_equal(pc.utf8_length(kept["text"]), cfg.min_chars)
    counts["dropped_too_short"] += kept.num_rows - pc.sum(long_enough).as_py()
    kept = kept.filter(long_enough)
    words = pc.count_substring_regex(kept["text"], WORD)
    enough_words = pc.greater_equal(words, cfg.min_words)
    counts["dropped_too_few_words"] += kept.num_rows - (pc.sum(enough_words).as_py() or 0)
    kept, words = kept.filter(enough_words), words.filter(enough_words)
    values = kept.column("text").to_pylist()
    scripts = script_counts(values)
    keep = np.ones(len(values), bool)
    if cfg.scripts:
        keep = np.isin(main_script(scripts), cfg.scripts)
        counts["dropped_script"] += int((~keep).sum())
    ids = []
    for i, value in enumerate(values):
        doc = hashlib.sha256(value.encode("utf-8")).hexdigest()[:20]
        ids.append(doc)
        if not keep[i]:
            continue
        if doc in seen:
            keep[i] = False
            counts["dropped_duplicates"] += 1
            continue
        seen.add(doc)  # before the near check: a later exact copy counts as an exact duplicate
        if near is not None and near.is_duplicate(doc, value):
            keep[i] = False
            counts["dropped_near_duplicates"] += 1
    mask = pa.array(keep, pa.bool_())
    ids = pa.array(ids, pa.string()).filter(mask)
    kept = kept.filter(mask)
    if profiler is not None:
        profiler.add(kept.column("text").combine_chunks(),
                     pc.utf8_length(kept["text"]).to_numpy(), words.filter(mask).to_numpy(),
                     scripts[keep])
    hashed = assign_split(ids.to_pylist(), split)
    splits = pa.array([g or h for g, h in zip(kept["split"].to_pylist(), hashed, strict=True)],
                      pa.string())  # the source's own split wins over the hash
    return pa.table([ids, kept.column("text"), kept.column("source"), splits], schema=SCHEMA)


def run(cfg: Clean, split: Split, raw_dir: Path, out_dir: Path, report: Path,
        profile_path: Path | None = None, source: list[str] | None = None) -> dict:
    """Clean the snapshot in record batches. With `profile_path`, also write the data profile
    (JSON + PNG beside it) after gating its drift against the profile already there."""
    files = sorted(raw_dir.glob("*.parquet"))
    if not files:
        raise GruflowError(f"{raw_dir}: no Parquet snapshot — run the ingest stage first")
    counts = dict.fromkeys(["documents_in", "characters_in", "html_tags_removed",
                            "html_entities_unescaped", "control_chars_removed",
                            "zero_width_removed", *(f"masked_{name}" for name, _ in PII),
                            "dropped_too_short", "dropped_too_few_words", "dropped_script",
                            "dropped_duplicates", "dropped_near_duplicates",
                            "documents_out", "characters_out"], 0)
    per_split = dict.fromkeys(SPLITS, 0)
    seen: set[str] = set()
    near = NearDuplicates(cfg.near_dup_threshold, cfg.near_dup_ngram) if cfg.near_dup else None
    profiler = Profiler()
    with atomic_dir(out_dir) as tmp:
        writers = {s: pq.ParquetWriter(tmp / f"{s}.parquet", SCHEMA, compression="zstd")
                   for s in SPLITS}
        try:
            dataset = ds.dataset(files)
            columns = ["text", "source", *(["split"] if "split" in dataset.schema.names else [])]
            for batch in dataset.to_batches(columns=columns, batch_size=BATCH_DOCS):
                counts["documents_in"] += batch.num_rows
                counts["characters_in"] += pc.sum(pc.utf8_length(batch.column("text"))).as_py() or 0
                table = clean_batch(batch, cfg, split, seen, counts, near, profiler)
                counts["characters_out"] += pc.sum(pc.utf8_length(table["text"])).as_py() or 0
                for name in SPLITS:
                    part = table.filter(pc.equal(table["split"], name))
                    per_split[name] += part.num_rows
                    if part.num_rows:
                        writers[name].write_table(part)
        finally:
            for writer in writers.values():
                writer.close()
        counts["documents_out"] = sum(per_split.values())
        _validate(counts, per_split, cfg.min_documents)
        profile = profiler.finish(source or [], per_split)
        if profile_path is not None:
            profile["drift"] = check_drift(_previous(profile_path), profile, cfg.drift,
                                           profile_path)
    summary = {**counts, "split_documents": per_split}
    write_json(report, summary)
    if profile_path is not None:
        write_json(profile_path, profile)
        with atomic_file(profile_path.with_suffix(".png")) as tmp_png:
            plot_profile(profile, tmp_png)
    return summary


def _previous(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # first run, or an unreadable old profile: nothing to compare against


def _validate(counts: dict[str, int], per_split: dict[str, int], min_documents: int) -> None:
    why = (f"{counts['dropped_too_short']} too short, {counts['dropped_too_few_words']} with too "
           f"few words, {counts['dropped_duplicates']} duplicates")
    if counts["documents_out"] == 0:
        raise GruflowError(
            f"clean: all {counts['documents_in']} documents were dropped ({why})"
            " — lower clean.min_chars/clean.min_words or add text"
        )
    if counts["documents_out"] < min_documents:
        raise GruflowError(
            f"clean: only {counts['documents_out']} of {counts['documents_in']} documents kept "
            f"({why}), below clean.min_documents={min_documents} — add text or lower the limits"
        )
    for name, n in per_split.items():
        if n == 0:
            raise GruflowError(
                f"clean: split '{name}' is empty ({counts['documents_out']} documents in all) — "
                "add documents, raise split.val_fraction/split.test_fraction, or give the "
                "source's own split a file/folder/column for it"
            )


@guarded
def main() -> None:
    p = load_params()
    reports = Path(p.paths.reports)
    s = run(p.clean, p.split, Path(p.paths.raw), Path(p.paths.clean), reports / "clean.json",
            reports / "data_profile.json", p.data.sources)
    print(f"clean: {s['documents_out']}/{s['documents_in']} documents kept "
          f"(train/val/test {'/'.join(str(v) for v in s['split_documents'].values())})")


if __name__ == "__main__":
    main()
