"""Readable, unique text for every token of any tokenizer kind, for people and file keys.

Usage: `texts = token_texts(tokenizer)` (row i = token id i). Byte-level tokens are spelt in a
stand-in alphabet ("Ġreturn" = " return", "æĺ¯" = "是"): they are mapped back to their bytes
and decoded as UTF-8; a token that is only part of a character (BPE merges bytes, not
characters) shows its stray bytes escaped, e.g. "\\xe6\\x98". WordPiece's word-inner pieces
get the usual "##" prefix. Any text two tokens would share gets "#<id>" on the later one, so
the texts can be keys (word2vec.txt, `gruflow similar`).
"""

from __future__ import annotations

import json
from functools import cache

from tokenizers import Tokenizer


@cache
def byte_of() -> dict[str, int]:
    """GPT-2's byte-level alphabet (what HF's ByteLevel uses): stand-in character -> byte.
    Printable Latin-1 bytes stand for themselves, the others for chr(256 + n) in byte order."""
    kept = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    shifted = [b for b in range(256) if b not in kept]
    table = {chr(b): b for b in kept}
    table.update({chr(256 + n): b for n, b in enumerate(shifted)})
    return table


def _decoders(spec: dict | None) -> list[str]:
    if not spec:
        return []
    if spec.get("type") == "Sequence":
        return [t for d in spec.get("decoders", []) for t in _decoders(d)]
    return [spec.get("type", "")]


def token_texts(tokenizer: Tokenizer) -> list[str]:
    """The readable text of every token id, unique (see the module docstring)."""
    spec = json.loads(tokenizer.to_str())
    byte_level = "ByteLevel" in _decoders(spec.get("decoder"))
    inner = (spec.get("model") or {}).get("continuing_subword_prefix") or ""
    specials = {t["content"] for t in spec.get("added_tokens", [])}
    table = byte_of()
    texts = []
    for i in range(tokenizer.get_vocab_size()):
        name = tokenizer.id_to_token(i)
        mark = ""
        if inner and name.startswith(inner) and name != inner:
            name, mark = name[len(inner) :], "##"
        if byte_level and name not in specials and all(c in table for c in name):
            text = bytes(table[c] for c in name).decode("utf-8", errors="backslashreplace")
        elif name in specials or not byte_level:
            text = name if name in specials else tokenizer.decode([i])
        else:
            text = name
        texts.append(mark + text)
    return unique(texts)


def unique(keys: list[str]) -> list[str]:
    """`keys` with each repeat (after its first occurrence) suffixed "#<index>"."""
    seen: set[str] = set(keys)
    out, used = [], set()
    for i, key in enumerate(keys):
        if key in used:
            key = f"{key}#{i}"
            while key in seen or key in used:
                key += "'"
        used.add(key)
        out.append(key)
    return out
