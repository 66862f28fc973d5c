"""``clean_html``: HTML to text with the structure kept as line breaks (blocks, cells,
lists, ``<pre>`` verbatim), entities decoded, scripts and styles dropped."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from typing import Annotated, cast

from lmops.data.document import Document
from lmops.data.ops import Mapper, OneOrMany, OpParams, register

# ============================================================================== clean_html
# Tags that start a new line, and (below) those that also leave a blank line around them.
_LINE_TAGS = frozenset(
    {
        "address", "article", "aside", "body", "caption", "dd", "details", "dialog", "div",
        "dt", "fieldset", "figcaption", "figure", "footer", "form", "head", "header",
        "hgroup", "html", "legend", "li", "main", "nav", "option", "section", "summary",
        "title", "tr",
    }
)  # fmt: skip
_PARAGRAPH_TAGS = frozenset(
    {"blockquote", "dl", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "ol", "p", "pre", "table", "ul"}
)
_CELL_TAGS = frozenset({"td", "th"})
_TAG_LIKE = re.compile(r"<[A-Za-z!/?]")
_HTML_WS = re.compile(r"[ \t\n\r\f]+")


class _TextExtractor(HTMLParser):
    """Collects text; breaks are recorded as a pending newline count and written lazily,
    so ``</div><div>`` gives one newline, not two, and nothing trails the last text."""

    def __init__(self, drop: frozenset[str], collapse: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.drop = drop
        self.collapse = collapse
        self.parts: list[str] = []
        self.pending = 0  # newlines owed before the next text: 0, 1 or 2
        self.cell = False  # a table cell started since the last text
        self.dropping = 0  # depth inside dropped elements (script, style, …)
        self.pre = 0  # depth inside <pre>
        # <pre> text is parked here and stands in the output as "\0<index>\0", so the final
        # whitespace clean-up cannot touch it.
        self.pre_texts: list[str] = []

    def _break(self, n: int) -> None:
        self.pending = max(self.pending, n)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.drop:
            self.dropping += 1
        elif tag == "br":
            self.pending = min(self.pending + 1, 2)
        elif tag in _PARAGRAPH_TAGS:
            self._break(2)
            if tag == "pre":
                self.pre += 1
        elif tag in _LINE_TAGS:
            self._break(1)
        elif tag in _CELL_TAGS:
            self.cell = True

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <br/>, <hr/>, <img/>: a start with no content; never enters a dropped element.
        if tag not in self.drop:
            self.handle_starttag(tag, attrs)
            if tag == "pre":
                self.pre -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.drop:
            self.dropping = max(self.dropping - 1, 0)
        elif tag in _PARAGRAPH_TAGS:
            self._break(2)
            if tag == "pre":
                self.pre = max(self.pre - 1, 0)
        elif tag in _LINE_TAGS:
            self._break(1)

    def handle_data(self, data: str) -> None:
        if self.dropping:
            return
        # &nbsp; is markup spacing, not a special character; NUL is reserved for the <pre>
        # placeholders.
        data = data.replace("\xa0", " ").replace("\0", "")
        if self.collapse and not self.pre:
            data = _HTML_WS.sub(" ", data)
            if data == " " and (self.pending or not self.parts):
                return  # indentation between block tags
        if not data:
            return
        if self.pending:
            self.parts.append("\n" * self.pending)
            self.pending = 0
            self.cell = False
        elif self.cell:
            self.parts.append("\t")
            self.cell = False
        if self.pre:
            self.pre_texts.append(data)
            data = f"\0{len(self.pre_texts) - 1}\0"
        self.parts.append(data)


_PRE_PLACEHOLDER = re.compile("\0([0-9]+)\0")
_SPACE_AROUND_NEWLINE = re.compile(r"[ \t]*\n[ \t]*")
_BLANK_LINES = re.compile(r"\n{3,}")


def html_to_text(
    markup: str,
    drop: frozenset[str] = frozenset({"script", "style", "noscript", "template", "svg"}),
    collapse_whitespace: bool = True,
) -> str:
    """The text of an HTML document or fragment; see :class:`CleanHtml`."""
    if not _TAG_LIKE.search(markup):
        return html.unescape(markup) if "&" in markup else markup
    parser = _TextExtractor(drop, collapse_whitespace)
    parser.feed(markup)
    parser.close()
    text = "".join(parser.parts)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    if collapse_whitespace:
        text = re.sub(" {2,}", " ", text)
    text = _BLANK_LINES.sub("\n\n", text).strip()
    if parser.pre_texts:
        pre = parser.pre_texts
        text = _PRE_PLACEHOLDER.sub(lambda m: pre[int(m.group(1))], text)
    return text


@register("clean_html")
class CleanHtml(Mapper):
    """Turn HTML into plain text.

    Tags are removed; the content of ``drop_content`` elements (script, style, noscript,
    template, svg by default) and comments are dropped; entities are unescaped (``&amp;``
    -> ``&``, ``&#x4e2d;`` -> ``中``, ``&nbsp;`` -> a plain space). Block elements start
    a new line (div, li, tr, title, …) and paragraph-level ones (p, h1-h6, ul, ol, table,
    pre, blockquote, hr) are set off by a blank line; ``<br>`` is a line break and table
    cells are separated by a tab. With ``collapse_whitespace`` (default) whitespace in
    the markup is treated as a browser does — any run, newlines included, is one space —
    except inside ``<pre>``; turn it off for mostly-plain text with a few tags in it.
    A document with no tag at all only has its entities unescaped.
    """

    class Params(OpParams):
        drop_content: Annotated[tuple[str, ...], OneOrMany] = (
            "script",
            "style",
            "noscript",
            "template",
            "svg",
        )
        collapse_whitespace: bool = True

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self.p = cast(CleanHtml.Params, self.params)
        self._drop = frozenset(t.lower() for t in self.p.drop_content)

    def apply(self, doc: Document) -> Document:
        doc.text = html_to_text(doc.text, self._drop, self.p.collapse_whitespace)
        return doc
