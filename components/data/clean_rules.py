"""The clean stage's text rules, vectorised with pyarrow.compute: HTML stripping, privacy
masks, Unicode/whitespace normalisation — each returning the new text and its counts.

Usage: `text, counts = normalise(text, cfg)`. Each group of replacements runs only on the
rows one match scan says it can change ('<' for tags, any PII pattern, any rare character, any
blank run), and counts come from cheap differences (lengths, placeholder occurrences) where
that is exact, so most text is scanned once per group. tests/test_data_equivalence.py checks
each group against every pass on every row.
"""

from __future__ import annotations

import html
import re
import string
from dataclasses import asdict, dataclass
from html.entities import html5

import pyarrow as pa
import pyarrow.compute as pc

from components.data.nfkc import unicode_form
from components.params import Clean

# RE2 patterns. Vertical tab, form feed, NEL and the Unicode line/paragraph separators are
# line breaks; the other C0/C1 controls (except \t) are removed, as are zero-width characters.
LINE_BREAKS = r"[\x0b\x0c\x85\x{2028}\x{2029}]"
CONTROL = r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]"
ZERO_WIDTH = r"[\x{200b}-\x{200d}\x{2060}\x{feff}]"
LINE_END = rf"\r\n?|{LINE_BREAKS}"  # -> \n
# Runs of blanks -> one space, and no blank beside a line break. The patterns match only what
# changes (a lone space is left alone), which makes RE2 several times faster.
BLANKS = r"[^\S\n ][^\S\n]*| [^\S\n]+"
BLANKS_AT_BREAK = r" \n ?|\n "
# HTML: only real element names, so text such as `<class 'int'>` or `a < b > c` survives.
# Block elements become a line break, inline ones vanish; script/style lose their content too.
_BLOCK = (
    "address|article|aside|blockquote|br|dd|div|dl|dt|figcaption|figure|footer|form|"
    "h[1-6]|header|hr|li|main|nav|ol|p|pre|section|table|tbody|td|tfoot|th|thead|tr|ul"
)
_INLINE = (
    "a|abbr|b|body|button|center|cite|code|del|em|font|head|html|i|iframe|img|input|"
    "ins|kbd|label|link|mark|meta|noscript|option|q|s|samp|select|small|span|strike|"
    "strong|sub|sup|textarea|title|tt|u|var"
)
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
_IPV4 = (
    rf"\b(?:{_WIDE}\.{_OCTET}\.{_OCTET}|[0-9]\.{_WIDE}\.{_OCTET}|[0-9]\.[0-9]\.{_WIDE})"
    rf"\.{_OCTET}\b"
)
PII = (
    ("url", r"(?i)\b(?:https?://|ftp://|www\.)[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}]"),
    ("email", r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    ("ip", rf"{_IPV4}|\b(?:[0-9A-Fa-f]{{1,4}}:){{7}}[0-9A-Fa-f]{{1,4}}\b"),
    (
        "phone",
        r"\+[0-9]{1,3}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,4}(?:[ .-][0-9]{2,8}){1,4}\b"
        r"|\([0-9]{3}\) ?[0-9]{3}[ .-][0-9]{4}\b|\b[0-9]{3}[.-][0-9]{3}[.-][0-9]{4}\b",
    ),
)
# A word is a run of non-blank characters, or one CJK character (those scripts use no spaces).
_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}"
CJK_CHAR = rf"([{_CJK}])"
WORD = rf"[{_CJK}]|[^\s{_CJK}]+"
_NON_CJK_WORD = rf"[^\s{_CJK}]+"
_CJK_RUN = rf"[{_CJK}]+"


_ENTITY = re.compile(HTML_ENTITY)
_ANY_PII = "|".join(f"(?:{pattern})" for _, pattern in PII)
# Rows any normalising replacement changes; the others skip those passes (most text has none
# of these characters, and a match scan costs a fraction of a replacement).
_RARE = rf"\r|{LINE_BREAKS}|{CONTROL}|{ZERO_WIDTH}"
_BLANK_RUNS = r"[^\S\n ]| \s|\n |\n\n\n"  # what BLANKS, BLANKS_AT_BREAK or \n{3,} match


@dataclass(frozen=True)
class TextRules:
    """The clean section's text transformations (not its filters), saved with a registered
    model: its generate/score input goes through the same chain the training text went
    through, or `，` and `,` would be different tokens to a model that saw only `,`."""

    strip_html: bool
    mask_pii: bool
    normalize: str  # clean.normalize: nfkc | nfc | none
    lowercase: bool

    @classmethod
    def of(cls, cfg: Clean) -> TextRules:
        return cls(cfg.strip_html, cfg.mask_pii, cfg.normalize, cfg.lowercase)

    def to_dict(self) -> dict:
        return asdict(self)


def clean_texts(texts: list[str], rules: TextRules) -> list[str]:
    """Texts through the training chain (apply_rules), one per input, in order."""
    return apply_rules(pa.array(texts, pa.string()), rules)[0].to_pylist()


def count(text: pa.Array, pattern: str) -> int:
    return pc.sum(pc.count_substring_regex(text, pattern)).as_py() or 0


def total(values: pa.Array) -> int:
    return pc.sum(values).as_py() or 0


def literal(text: str) -> str:
    """A regex matching `text` literally (RE2 accepts a backslash before ASCII punctuation)."""
    return "".join("\\" + c if c in string.punctuation else c for c in text)


def has(text: pa.Array, needle: str) -> pa.Array:
    """Rows containing `needle`. Through RE2 (memchr-fast), not match_substring, which
    scans several times slower in pyarrow 25."""
    return pc.match_substring_regex(text, literal(needle))


def on_rows(text: pa.Array, rows: pa.Array, rule) -> pa.Array:
    """Apply `rule` to the rows flagged by `rows` only, leaving the others untouched."""
    rows = pc.fill_null(rows, False)
    if not pc.any(rows).as_py():
        return text
    return pc.replace_with_mask(text, rows, rule(text.filter(rows)))


def _is_entity(ref: str) -> bool:
    """Whether html.unescape changes `ref` (`&nosuch;` stays as it is): numeric references
    always, known names by a dictionary lookup, anything else the slow way."""
    return ref[1] == "#" or ref[1:] in html5 or html.unescape(ref) != ref


def strip_html(text: pa.Array) -> tuple[pa.Array, dict[str, int]]:
    """Drop tags (block tags -> line break), then unescape entities on rows that hold one.
    Only rows with a '<' (tags) or an entity are scanned."""
    counts = {"html_tags_removed": 0, "html_entities_unescaped": 0}

    def tags(sub: pa.Array) -> pa.Array:
        counts["html_tags_removed"] += sum(
            count(sub, p) for p in (HTML_DROP, HTML_BLOCK, HTML_INLINE)
        )
        sub = pc.replace_substring_regex(sub, HTML_DROP, "")
        sub = pc.replace_substring_regex(sub, HTML_BLOCK, "\n")
        return pc.replace_substring_regex(sub, HTML_INLINE, "")

    def entities(sub: pa.Array) -> pa.Array:
        values = sub.to_pylist()
        for i, value in enumerate(values):
            found = _ENTITY.findall(value)
            counts["html_entities_unescaped"] += sum(map(_is_entity, found))
            if found:
                values[i] = html.unescape(value)
        return pa.array(values, pa.string())

    text = on_rows(text, has(text, "<"), tags)
    text = on_rows(text, pc.match_substring_regex(text, HTML_ENTITY), entities)
    return text, counts


def mask_pii(text: pa.Array) -> tuple[pa.Array, dict[str, int]]:
    """E-mail addresses, URLs, phone numbers and IPs -> <email> <url> <phone> <ip>. One scan
    for all patterns picks the rows that hold any; the masks run in order on those rows only.
    Each mask is counted as the growth of its placeholder on the rows it changed (no pattern
    can match inside a placeholder)."""
    counts = dict.fromkeys((f"masked_{name}" for name, _ in PII), 0)

    def mask(sub: pa.Array) -> pa.Array:
        for name, pattern in PII:
            placeholder = f"<{name}>"
            before, sub = sub, pc.replace_substring_regex(sub, pattern, placeholder)
            changed = pc.fill_null(pc.not_equal(before, sub), False)
            counts[f"masked_{name}"] += total(
                pc.count_substring_regex(sub.filter(changed), literal(placeholder))
            ) - total(pc.count_substring_regex(before.filter(changed), literal(placeholder)))
        return sub

    return on_rows(text, pc.match_substring_regex(text, _ANY_PII), mask), counts


def cjk_rows(text: pa.Array) -> pa.Array:
    """Rows holding a Han or Kana character (only non-ASCII rows are scanned)."""
    rows = pc.fill_null(pc.invert(pc.string_is_ascii(text)), False)
    return on_rows(rows, rows, lambda _: pc.match_substring_regex(text.filter(rows), CJK_CHAR))


def count_words(text: pa.Array, cjk_rows: pa.Array) -> pa.Array:
    """Words per normalised document (WORD): runs between blanks, except on rows with CJK
    characters, where each CJK character is a word too. There the count is the non-CJK runs
    plus the CJK characters (the length a removal of CJK runs takes off): two passes with few
    matches, where counting WORD matches costs one regex match per character."""

    def with_cjk(_) -> pa.Array:
        sub = text.filter(pc.fill_null(cjk_rows, False))
        runs = pc.count_substring_regex(sub, _NON_CJK_WORD)
        cjk_chars = pc.subtract(
            pc.utf8_length(sub), pc.utf8_length(pc.replace_substring_regex(sub, _CJK_RUN, ""))
        )
        return pc.cast(pc.add(runs, cjk_chars), pa.int64())

    words = pc.cast(pc.list_value_length(pc.ascii_split_whitespace(text)), pa.int64())
    words = pc.if_else(pc.equal(pc.binary_length(text), 0), 0, words)  # split gives [""]
    return on_rows(words, cjk_rows, with_cjk)


def normalise(text: pa.Array, cfg: Clean | TextRules) -> tuple[pa.Array, dict[str, int]]:
    """`\\n` line ends, controls and zero-width removed, clean.normalize's Unicode form (NFKC
    by default), whitespace collapsed. Removed
    characters are counted as the drop in length (each pattern matches one character). Each
    group of replacements runs only on the rows one scan says it can change."""
    counts = {"control_chars_removed": 0, "zero_width_removed": 0}

    def rare(sub: pa.Array) -> pa.Array:
        sub = pc.replace_substring_regex(sub, LINE_END, "\n")
        for name, pattern in (
            ("control_chars_removed", CONTROL),
            ("zero_width_removed", ZERO_WIDTH),
        ):
            before = total(pc.utf8_length(sub))
            sub = pc.replace_substring_regex(sub, pattern, "")
            counts[name] += before - total(pc.utf8_length(sub))
        return sub

    def blanks(sub: pa.Array) -> pa.Array:
        sub = pc.replace_substring_regex(sub, BLANKS, " ")
        sub = pc.replace_substring_regex(sub, BLANKS_AT_BREAK, "\n")
        return pc.replace_substring_regex(sub, r"\n{3,}", "\n\n")

    text = on_rows(text, pc.match_substring_regex(text, _RARE), rare)
    text = unicode_form(text, cfg.normalize)
    text = on_rows(text, pc.match_substring_regex(text, _BLANK_RUNS), blanks)
    text = pc.utf8_trim_whitespace(text)
    if cfg.lowercase:
        text = pc.utf8_lower(text)
    return text, counts


def apply_rules(text, cfg: Clean | TextRules) -> tuple[pa.Array, dict[str, int]]:
    """The clean stage's text rules in order (HTML, normalisation, PII masks), with their
    counts: one chain shared by the clean stage, the finetune stage's labelled data and (as
    TextRules saved with a model) the text a served model reads."""
    counts: dict[str, int] = {}
    rules = [strip_html] if cfg.strip_html else []
    rules.append(lambda t: normalise(t, cfg))
    if cfg.mask_pii:
        rules.append(mask_pii)
    for rule in rules:
        text, rule_counts = rule(text)
        counts.update(rule_counts)
    return text, counts
