"""Exact Unicode NFKC of Arrow string arrays, fast on any script.

Usage: `text = nfkc(text)`. Python's `unicodedata` is exact but slow on rows it must change
(~25 MB/s: Chinese text with full-width punctuation), while pyarrow's `utf8_normalize("NFKC")`
is fast but leaves its output decomposed on pyarrow 25 ('café' -> 'cafe' + U+0301). So:
1. only rows holding a character NFKC may touch (alone or beside a neighbour) are changed;
2. those go through `utf8_normalize` (compatibility mappings, canonical order);
3. rows of that output that hold a character which may compose get Python's NFC, since
   NFKC(x) == NFC(NFKD(x)).
The character classes come from Python's own `unicodedata` tables, built once per process.
"""

from __future__ import annotations

import functools
import unicodedata

import pyarrow as pa
import pyarrow.compute as pc

# Blocks with no decomposition, no combining mark and nothing that composes (checked by a test
# against a full scan): CJK ideographs, Hangul syllables, surrogates and private use.
_UNTOUCHED = [(0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xD800, 0xF8FF),
              (0x20000, 0x2F7FF)]
_LAST = 0x2FA1F  # no code point above the CJK Compatibility Ideographs Supplement decomposes
_HANGUL_VOWELS_TRAILS = [*range(0x1161, 0x1176), *range(0x11A8, 0x11C3)]  # compose with L / LV


def _scanned() -> list[int]:
    out, start = [], 0x80
    for lo, hi in _UNTOUCHED:
        out.extend(range(start, lo))
        start = hi + 1
    out.extend(range(start, _LAST + 1))
    return out


def _re2_class(code_points: set[int]) -> str:
    ranges, points = [], sorted(code_points)
    for cp in points:
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "[" + "".join(f"\\x{{{lo:x}}}" if lo == hi else f"\\x{{{lo:x}}}-\\x{{{hi:x}}}"
                         for lo, hi in ranges) + "]"


@functools.cache
def classes() -> tuple[str, str]:
    """RE2 classes: (characters NFKC may change or that may change beside a neighbour,
    characters that may compose with the one before them or be reordered)."""
    seconds = set(_HANGUL_VOWELS_TRAILS)
    touched = set()
    for cp in _scanned():
        ch = chr(cp)
        decomposition = unicodedata.decomposition(ch)
        if decomposition and not decomposition.startswith("<"):
            parts = decomposition.split()
            if len(parts) == 2:
                seconds.add(int(parts[1], 16))
        if unicodedata.combining(ch) or not unicodedata.is_normalized("NFKC", ch):
            touched.add(cp)
    composing = seconds | {cp for cp in touched if unicodedata.combining(chr(cp))}
    return _re2_class(touched | seconds), _re2_class(composing)


def _rows(text: pa.Array, pattern: str) -> pa.Array:
    return pc.fill_null(pc.match_substring_regex(text, pattern), False)


def _replace_rows(text: pa.Array, rows: pa.Array, new: pa.Array) -> pa.Array:
    return pc.replace_with_mask(text, rows, new) if len(new) else text


def nfkc(text: pa.Array) -> pa.Array:
    """NFKC of every string; ASCII strings and strings without a touched character pass
    through untouched."""
    rows = pc.fill_null(pc.invert(pc.string_is_ascii(text)), False)
    if not pc.any(rows).as_py():
        return text
    touched, composing = classes()
    candidates = text.filter(rows)
    rows = pc.replace_with_mask(rows, rows, _rows(candidates, touched))
    folded = pc.utf8_normalize(text.filter(rows), "NFKC")
    compose = _rows(folded, composing)
    if pc.any(compose).as_py():
        values = [unicodedata.normalize("NFC", v) for v in folded.filter(compose).to_pylist()]
        folded = pc.replace_with_mask(folded, compose, pa.array(values, pa.string()))
    return _replace_rows(text, rows, folded)
