"""Exact Unicode NFKC of Arrow string arrays, fast on any script.

Usage: `text = nfkc(text)`. Python's `unicodedata` is exact but slow on strings it must change
(~25 MB/s: Chinese text with full-width punctuation), while pyarrow's `utf8_normalize("NFKC")`
is fast but leaves its output decomposed on pyarrow 25 ('café' -> 'cafe' + U+0301). So:
1. Python's quick check (`is_normalized`) picks the strings NFKC changes;
2. when they are many, they go through `utf8_normalize` (compatibility mappings, canonical
   order), and the strings of its output holding a character that may compose get Python's
   NFC, since NFKC(x) == NFC(NFKD(x));
3. strings holding a character Python's tables do not know yet (pyarrow's Unicode is newer)
   get Python's NFKC, so the result never depends on which library decided.
The character classes come from Python's own `unicodedata` tables, built once per process.
"""

from __future__ import annotations

import functools
import unicodedata
from itertools import chain

import pyarrow as pa
import pyarrow.compute as pc

# Blocks with no decomposition, no combining mark and nothing that composes (checked by a test
# against a full scan): CJK ideographs, Hangul syllables, surrogates and private use.
_UNTOUCHED = [
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7A3),
    (0xD800, 0xF8FF),
    (0x20000, 0x2F7FF),
]
_LAST = 0x2FA1F  # no code point above the CJK Compatibility Ideographs Supplement decomposes
# Below this many characters to change in a batch, Python's NFKC costs less than building the
# classes (once per process, ~0.1 s) and the extra passes.
ARROW_MIN_CHARS = 1 << 18
_NEVER_ASSIGNED = (0x40000, 0xDFFFF)  # planes 4-13: unassigned in every Unicode version so far
_HANGUL_VOWELS_TRAILS = [*range(0x1161, 0x1176), *range(0x11A8, 0x11C3)]  # compose with L / LV


def _scanned() -> list[int]:
    out, start = [], 0x80
    for lo, hi in _UNTOUCHED:
        out.extend(range(start, lo))
        start = hi + 1
    out.extend(range(start, _LAST + 1))
    return out


def _re2_class(code_points: set[int], extra: tuple[tuple[int, int], ...] = ()) -> str:
    ranges: list[list[int]] = []
    for cp in sorted(code_points):
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return (
        "["
        + "".join(
            f"\\x{{{lo:x}}}" if lo == hi else f"\\x{{{lo:x}}}-\\x{{{hi:x}}}"
            for lo, hi in [*ranges, *extra]
        )
        + "]"
    )


@functools.cache
def classes() -> tuple[str, str]:
    """RE2 classes: (characters that may compose with the one before them or be reordered,
    characters unassigned in Python's Unicode tables — pyarrow's may be newer)."""
    composing = set(_HANGUL_VOWELS_TRAILS)
    for cp in _scanned():
        ch = chr(cp)
        decomposition = unicodedata.decomposition(ch)
        if decomposition and not decomposition.startswith("<"):
            parts = decomposition.split()
            if len(parts) == 2:
                composing.add(int(parts[1], 16))
        if unicodedata.combining(ch):
            composing.add(cp)
    unassigned = {
        cp
        for cp in chain(
            range(0x80, 0xD800),
            range(0xE000, _NEVER_ASSIGNED[0]),
            range(_NEVER_ASSIGNED[1] + 1, 0xF0000),
        )
        if unicodedata.category(chr(cp)) == "Cn"
    }
    return _re2_class(composing), _re2_class(unassigned, (_NEVER_ASSIGNED,))


def _rows(text: pa.Array, pattern: str) -> pa.Array:
    return pc.fill_null(pc.match_substring_regex(text, pattern), False)


def _redo(target: pa.Array, rows: pa.Array, source: pa.Array, form: str) -> pa.Array:
    """`target` with the flagged rows replaced by Python's `form` of the same rows of
    `source`."""
    if not pc.any(rows).as_py():
        return target
    values = [unicodedata.normalize(form, v) for v in source.filter(rows).to_pylist()]
    return pc.replace_with_mask(target, rows, pa.array(values, pa.string()))


def nfkc(text: pa.Array) -> pa.Array:
    """NFKC of every string. Python's quick check picks the strings NFKC changes (ASCII ones
    never change); a few are normalised by Python directly, many by pyarrow plus the fixes."""
    rows = pc.fill_null(pc.invert(pc.string_is_ascii(text)), False)
    if not pc.any(rows).as_py():
        return text
    changing = [not unicodedata.is_normalized("NFKC", v) for v in text.filter(rows).to_pylist()]
    if not any(changing):
        return text
    rows = pc.replace_with_mask(rows, rows, pa.array(changing, pa.bool_()))
    sub = text.filter(rows)
    if (pc.sum(pc.utf8_length(sub)).as_py() or 0) < ARROW_MIN_CHARS:
        return _redo(text, rows, text, "NFKC")
    composing, unassigned = classes()
    folded = pc.utf8_normalize(sub, "NFKC")
    newer = _rows(sub, unassigned)  # pyarrow may know these characters; Python decides
    folded = _redo(folded, pc.and_(_rows(folded, composing), pc.invert(newer)), folded, "NFC")
    return pc.replace_with_mask(text, rows, _redo(folded, newer, sub, "NFKC"))


def unicode_form(text: pa.Array, form: str) -> pa.Array:
    """clean.normalize: "nfkc" (above), "nfc" (canonical composition only: full-width
    punctuation and ligatures stay) or "none". NFC goes through Python for the non-ASCII
    strings its quick check flags (pyarrow's output may stay decomposed, see above)."""
    if form == "nfkc":
        return nfkc(text)
    if form == "none":
        return text
    rows = pc.fill_null(pc.invert(pc.string_is_ascii(text)), False)
    if not pc.any(rows).as_py():
        return text
    changing = [not unicodedata.is_normalized("NFC", v) for v in text.filter(rows).to_pylist()]
    rows = pc.replace_with_mask(rows, rows, pa.array(changing, pa.bool_()))
    return _redo(text, rows, text, "NFC")
