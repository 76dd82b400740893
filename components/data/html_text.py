"""The text of an HTML file as lines, through the standard library's HTML parser, streamed.

Usage: `for line, bad, ended in html_lines(stream, chunk_bytes): ...` (what `readers` does with
.html/.htm files). A regex tag stripper would keep script and style bodies and glue words across
block tags; the parser drops script/style/template/noscript content, turns block elements into
line or paragraph breaks, unescapes entities, and collapses source whitespace outside <pre>.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import BinaryIO

HIDDEN = {"script", "style", "template", "noscript"}
PARAGRAPH = {
    "p",
    "div",
    "section",
    "article",
    "header",
    "footer",
    "main",
    "aside",
    "nav",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
    "pre",
    "table",
    "ul",
    "ol",
    "dl",
    "figure",
    "form",
    "title",
    "hr",
    "body",
}
LINE = {"br", "li", "tr", "dt", "dd", "td", "th", "option"}
_BLANKS = re.compile(r"\s+")


class _Text(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.hidden = 0  # depth inside HIDDEN elements
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        self._tag(tag, opening=True)

    def handle_endtag(self, tag):
        self._tag(tag, opening=False)

    def handle_startendtag(self, tag, attrs):
        if tag in LINE | PARAGRAPH:
            self.out.append("\n" if tag in LINE else "\n\n")

    def _tag(self, tag: str, opening: bool) -> None:
        step = 1 if opening else -1
        if tag in HIDDEN:
            self.hidden = max(0, self.hidden + step)
        elif tag == "pre":
            self.pre = max(0, self.pre + step)
        if tag in PARAGRAPH:
            self.out.append("\n\n")
        elif tag in LINE and opening:  # a closing </li> adds nothing: no blank line between
            self.out.append("\n")

    def handle_data(self, data):
        if not self.hidden:
            self.out.append(data if self.pre else _BLANKS.sub(" ", data))


def html_lines(stream: BinaryIO, chunk_bytes: int) -> Iterator[tuple[str, bool, bool]]:
    """(line, had_bad_bytes, ended) of the visible text; undecodable bytes become U+FFFD."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
    parser, pending, bad = _Text(), "", False
    while True:
        raw = stream.read(chunk_bytes)
        text = decoder.decode(raw, final=not raw)
        bad |= text.count("\ufffd") > raw.count(b"\xef\xbf\xbd")
        parser.feed(text)
        if not raw:
            parser.close()
        pending += "".join(parser.out)
        parser.out.clear()
        *lines, pending = pending.split("\n")
        for line in lines:
            yield line.strip(" "), bad, True
        if not raw:
            yield pending.strip(" "), bad, False
            return
