"""components.data.nfkc equals Python's unicodedata NFKC on every assigned code point and on random
sequences of the characters that compose, reorder or fold; its character classes match a
full scan of the Unicode tables."""

from __future__ import annotations

import random
import unicodedata

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from components.data import nfkc


@pytest.fixture(autouse=True, params=["pyarrow", "python"])
def route(request, monkeypatch):
    """Every test runs both ways: pyarrow plus the fixes, and Python's NFKC alone (what
    batches with little text to change take)."""
    monkeypatch.setattr(nfkc, "ARROW_MIN_CHARS", 0 if request.param == "pyarrow" else 1 << 62)


ASSIGNED = [
    cp
    for cp in range(0x80, 0x110000)
    if not 0xD800 <= cp <= 0xDFFF and unicodedata.category(chr(cp)) != "Cn"
]


def test_skipped_blocks_hold_nothing_nfkc_touches():
    scanned = set(nfkc._scanned())
    for cp in ASSIGNED:
        if cp in scanned:
            continue
        ch = chr(cp)
        assert unicodedata.normalize("NFKC", ch) == ch, hex(cp)
        assert not unicodedata.combining(ch) and not unicodedata.decomposition(ch), hex(cp)


def test_every_assigned_code_point_alone():
    text = pa.array([chr(cp) for cp in ASSIGNED], pa.string())
    assert nfkc.nfkc(text).to_pylist() == [
        unicodedata.normalize("NFKC", chr(cp)) for cp in ASSIGNED
    ]


def test_random_sequences_that_compose_reorder_and_fold():
    composing, _ = nfkc.classes()
    chars = pa.array([chr(cp) for cp in ASSIGNED], pa.string())
    tricky = chars.filter(pc.match_substring_regex(chars, composing)).to_pylist() + [
        chr(cp) for cp in ASSIGNED if unicodedata.normalize("NFKC", chr(cp)) != chr(cp)
    ]
    rng = random.Random(0)
    pool = [
        *rng.sample(tricky, 400),
        *"aeiouAEIOUnNcCkK",
        "中",
        "文",
        "，",
        "。",
        "ｆ",
        "①",
        "ﬁ",
        "\u00a0",
        "é",
        "가",
        "\u1100",
        "\u1161",
        "\u11a8",
        "\u0301",
        "\u0323",
        "\u0f73",
        "\u0b47",
        "\u0b3e",
        "Å",
        "\u212b",
        "ΐ",
        " ",
        "x",
    ]
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 12))) for _ in range(30_000)]
    got = nfkc.nfkc(pa.array(texts, pa.string())).to_pylist()
    want = [unicodedata.normalize("NFKC", t) for t in texts]
    assert got == want
    assert sum(g != t for g, t in zip(got, texts, strict=True)) > 10_000  # most were changed


def test_ascii_and_untouched_rows_keep_their_buffers():
    text = pa.array(["plain", "中文字", "café", None], pa.string())
    out = nfkc.nfkc(text)
    assert out.to_pylist() == ["plain", "中文字", "café", None]
    assert out is text  # nothing to change: the same array back


def test_rows_whose_only_change_is_a_composition_of_starters():
    # Hangul L+V and LV+T, Oriya and Tamil two-part vowels: every character alone is NFKC and
    # none is a combining mark, yet the pair composes
    texts = ["\u1100\u1161", "\uac00\u11a8", "\u0b47\u0b3e", "\u0bc6\u0bbe", "ab \u1100\u1161"]
    got = nfkc.nfkc(pa.array(texts, pa.string())).to_pylist()
    assert got == [unicodedata.normalize("NFKC", t) for t in texts]
    assert got != texts


def test_characters_newer_than_pythons_tables_follow_python():
    # pyarrow's Unicode may be newer: it would split or reorder characters Python calls
    # unassigned, but only in rows that something else made it normalise
    unassigned = [
        cp
        for cp in [*range(0x80, 0x40000), *range(0xE0000, 0xF0000)]
        if not 0xD800 <= cp <= 0xDFFF and unicodedata.category(chr(cp)) == "Cn"
    ]
    unassigned += list(range(0x40000, 0xE0000, 4099))  # planes 4-13, sampled
    texts = [f"{prefix}{chr(cp)}" for cp in unassigned for prefix in ("ﬁ ", "a\u0301")]
    got = nfkc.nfkc(pa.array(texts, pa.string())).to_pylist()
    assert got == [unicodedata.normalize("NFKC", t) for t in texts]
