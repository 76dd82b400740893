"""The clean stage's fast paths give exactly what the plain definitions give: rules that run
only on the rows a pre-scan picks, NumPy-framed content ids and split hashes, the exact-dup
memory. Each is compared with a straightforward reference on random mixes of edge cases."""

from __future__ import annotations

import hashlib
import random
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from components.data import clean_rules, splits
from components.data.near_dup import ExactHashes

FRAGMENTS = [
    "word",
    " ",
    "  ",
    "\t",
    "\n",
    "\n\n\n",
    "\r\n",
    "\r",
    "\x0b",
    "\x0c",
    "\x85",
    "\u2028",
    "\u2029",
    "\x00",
    "\x07",
    "\x7f",
    "\x9f",
    "\u200b",
    "\ufeff",
    "\u00a0",
    "\u3000",
    "café",
    "e\u0301",
    "ﬁ",
    "①",
    "中文字",
    "ひらがな",
    "Ω",
    "Привет",
    " \n",
    "\n ",
    ".",
    ",",
    "12",
    "a@b.com",
    "x.y@mail.example.org",
    "http://ex.com/a?b=1",
    "www.test.org",
    "WWW.X.COM",
    "192.168.1.1",
    "7.1.4.34",
    "3.11.7",
    "+1 555 123 4567",
    "(555) 123-4567",
    "555-123-4567",
    "fe80:0:0:0:0:0:0:1",
    "<url>",
    "<",
    ">",
    "&",
]


def random_texts(n: int, seed: int) -> pa.Array:
    rng = random.Random(seed)
    return pa.array(
        ["".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 30))) for _ in range(n)],
        pa.string(),
    )


def length(text: pa.Array) -> int:
    return pc.sum(pc.utf8_length(text)).as_py() or 0


def reference_normalise(text: pa.Array, lowercase: bool) -> tuple[list[str], dict[str, int]]:
    """Every replacement on every row, in the documented order."""
    r, counts = clean_rules, {}
    text = pc.replace_substring_regex(text, r.LINE_END, "\n")
    for name, pattern in (
        ("control_chars_removed", r.CONTROL),
        ("zero_width_removed", r.ZERO_WIDTH),
    ):
        before = length(text)
        text = pc.replace_substring_regex(text, pattern, "")
        counts[name] = before - length(text)
    text = pa.array([unicodedata.normalize("NFKC", v) for v in text.to_pylist()], pa.string())
    text = pc.replace_substring_regex(text, r.BLANKS, " ")
    text = pc.replace_substring_regex(text, r.BLANKS_AT_BREAK, "\n")
    text = pc.replace_substring_regex(text, r"\n{3,}", "\n\n")
    text = pc.utf8_trim_whitespace(text)
    return (pc.utf8_lower(text) if lowercase else text).to_pylist(), counts


def reference_mask_pii(text: pa.Array) -> tuple[list[str], dict[str, int]]:
    counts = {}
    for name, pattern in clean_rules.PII:
        placeholder = f"<{name}>"
        before = [v.count(placeholder) for v in text.to_pylist()]
        text = pc.replace_substring_regex(text, pattern, placeholder)
        counts[f"masked_{name}"] = sum(v.count(placeholder) for v in text.to_pylist()) - sum(before)
    return text.to_pylist(), counts


@pytest.mark.parametrize("lowercase", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_normalise_equals_every_pass_on_every_row(params, seed, lowercase):
    text = random_texts(3000, seed)
    out, counts = clean_rules.normalise(
        text, params.clean.model_copy(update={"lowercase": lowercase})
    )
    want, want_counts = reference_normalise(text, lowercase)
    assert out.to_pylist() == want
    assert counts == want_counts and want_counts["control_chars_removed"] > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_mask_pii_equals_every_pattern_on_every_row(params, seed):
    text, _ = clean_rules.normalise(random_texts(3000, seed), params.clean)
    out, counts = clean_rules.mask_pii(text)
    want, want_counts = reference_mask_pii(text)
    assert out.to_pylist() == want
    assert counts == want_counts and all(want_counts.values())


def test_content_ids_hashes_and_splits_match_their_definitions(params):
    texts = random_texts(2000, 2).filter(pc.greater(pc.utf8_length(random_texts(2000, 2)), 0))
    split = params.split.model_copy(update={"val_fraction": 0.2, "test_fraction": 0.3, "seed": 7})
    for text in (texts, texts.slice(5, 100), texts.slice(0, 0)):
        ids, hashes, hashed = splits.content_ids(text, split)
        want_ids = [hashlib.sha256(v.encode()).hexdigest()[:20] for v in text.to_pylist()]
        assert ids.to_pylist() == want_ids
        assert hashes.tolist() == [int(i[:16], 16) for i in want_ids]
        want_split = []
        for i in want_ids:
            digest = hashlib.sha256(f"{split.seed}:{i}".encode()).digest()
            u = int.from_bytes(digest[:8], "big") / 2**64
            want_split.append("test" if u < 0.3 else "val" if u < 0.5 else "train")
        assert hashed.to_pylist() == want_split
    assert set(splits.content_ids(texts, split)[2].to_pylist()) == {"train", "val", "test"}


def test_exact_hashes_answer_like_a_set():
    rng = np.random.default_rng(0)
    memory, reference = ExactHashes(), set()
    for _ in range(60):
        batch = rng.integers(0, 5000, size=300, dtype=np.uint64)  # repeats within and across
        assert memory.contains(batch).tolist() == [int(h) in reference for h in batch]
        memory.add(batch)
        reference.update(int(h) for h in batch)
    assert len(memory) == len(reference)


def test_cjk_rows_are_the_rows_with_han_or_kana():
    text = pa.array(["plain ascii", "中文", "ひらがな text", "Привет", None, "", "mixed 字"])
    assert clean_rules.cjk_rows(text).to_pylist() == [False, True, True, False, False, False, True]


def test_count_words_equals_counting_word_matches(params):
    """On normalised text (what the stage counts): no blank at either end."""
    rng = random.Random(3)
    pieces = [
        "中文字",
        "ひらがな",
        "カタカナ",
        "word",
        "x1",
        " ",
        "  ",
        "\n",
        "，",
        "。",
        "é",
        "<url>",
    ]
    texts, _ = clean_rules.normalise(
        pa.array(
            ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 25))) for _ in range(3000)],
            pa.string(),
        ),
        params.clean,
    )
    got = clean_rules.count_words(texts, clean_rules.cjk_rows(texts)).to_pylist()
    assert got == pc.count_substring_regex(texts, clean_rules.WORD).to_pylist()


def test_entity_counts_equal_what_html_unescape_changes():
    import html
    import re
    from html.entities import html5

    rng = random.Random(4)
    refs = [
        f"&{name}" if name.endswith(";") else f"&{name};" for name in rng.sample(sorted(html5), 300)
    ] + ["&#39;", "&#x1F600;", "&#0;", "&nosuch;", "&ampx;", "&copyx;"]
    texts = pa.array(
        [
            " ".join(rng.choice([*refs, "AT&T", "a & b", "word"]) for _ in range(8))
            for _ in range(500)
        ],
        pa.string(),
    )
    out, counts = clean_rules.strip_html(texts)
    found = [m for t in texts.to_pylist() for m in re.findall(clean_rules.HTML_ENTITY, t)]
    assert counts["html_entities_unescaped"] == sum(html.unescape(m) != m for m in found)
    assert out.to_pylist() == [
        html.unescape(t) if re.search(clean_rules.HTML_ENTITY, t) else t for t in texts.to_pylist()
    ]
