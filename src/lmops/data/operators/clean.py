"""Cleaning operators: rewrite text, never drop a document.

Each is a :class:`~lmops.data.ops.Mapper`; a recipe usually runs them in this order::

    fix_mojibake -> clean_html -> clean_unicode -> normalize_variants -> zh_convert
    -> regex_replace / strip_urls_emails -> clean_whitespace

(mojibake first, since HTML entities and NFKC would otherwise act on garbled text;
whitespace last, since every other step can leave runs of spaces or blank lines behind).
This module holds the small ones; ``clean_unicode`` is in :mod:`.unicode`, ``clean_html`` in
:mod:`.html_text`, ``zh_convert`` and ``normalize_variants`` in :mod:`.variants`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lmops.core.errors import UserError
from lmops.data.document import Document
from lmops.data.ops import Mapper, OpParams, register
from lmops.text.pii import find_emails

# ========================================================================= clean_whitespace
_HSPACE = re.compile(r"[^\S\n]+")  # any whitespace but a newline


@register("clean_whitespace")
class CleanWhitespace(Mapper):
    """Collapse spaces, strip lines, limit blank lines, strip the document.

    Every line break becomes ``\\n``; inside a line each run of spaces, tabs or other
    Unicode spaces (no-break, ideographic U+3000, thin, …) becomes one ASCII space; each
    line is stripped at both ends (with ``keep_indentation`` its leading whitespace is kept
    as it was, for code); more than ``max_blank_lines`` consecutive blank lines shrink to
    that many; blank lines at the start and end go. No space is ever inserted, so Chinese
    text stays as written.
    """

    class Params(OpParams):
        max_blank_lines: int = Field(1, ge=0)
        keep_indentation: bool = False

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self.p = cast(CleanWhitespace.Params, self.params)
        n = self.p.max_blank_lines
        self._blank_run = re.compile("\n{" + str(n + 2) + ",}")
        self._blank_keep = "\n" * (n + 1)

    def apply(self, doc: Document) -> Document:
        lines = doc.text.splitlines()
        if self.p.keep_indentation:
            out = []
            for line in lines:
                body = line.lstrip()
                indent = line[: len(line) - len(body)]
                body = _HSPACE.sub(" ", body).rstrip()
                out.append(indent + body if body else "")
        else:
            out = [_HSPACE.sub(" ", line).strip() for line in lines]
        text = "\n".join(out)
        text = self._blank_run.sub(self._blank_keep, text)
        doc.text = text.strip("\n") if self.p.keep_indentation else text.strip()
        return doc


# ============================================================================ fix_mojibake
# UTF-8 read as Latin-1 or Windows-1252 always contains the reading of a UTF-8 lead byte,
# 0xC2-0xF4, which both code pages map to U+00C2-U+00F4 (Â … ô). Text without one of them
# cannot carry that mojibake, and skipping ftfy there saves ~0.5 ms per 1000 CJK chars.
_MOJIBAKE_HINT = re.compile("[\u00c2-\u00f4]")


@register("fix_mojibake")
class FixMojibake(Mapper):
    """Repair UTF-8 text that was decoded as Latin-1 or Windows-1252.

    ``"cafÃ©"`` -> ``"café"``, ``"ä¸­æ–‡"`` -> ``"中文"``, ``"doesnÃ¢â‚¬â„¢t"`` ->
    ``"doesn’t"``. Uses ftfy's ``fix_encoding`` (only its encoding fixes: quotes, widths
    and line breaks are left alone), which repairs a garbled stretch inside otherwise
    correct text and leaves text alone unless the repair is clearly more plausible
    (``"SÃO PAULO"`` stays). Other mix-ups (GBK, Windows-1251) are not attempted.
    """

    class Params(OpParams):
        pass

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self._fix = _ftfy_fix_encoding()

    def apply(self, doc: Document) -> Document:
        if _MOJIBAKE_HINT.search(doc.text):
            doc.text = self._fix(doc.text)
        return doc


def _ftfy_fix_encoding() -> Callable[[str], str]:
    try:
        import ftfy
    except ImportError:  # pragma: no cover - ftfy is a dependency
        raise UserError("fix_mojibake needs the ftfy package: pip install ftfy") from None
    return cast(Callable[[str], str], ftfy.fix_encoding)


# =========================================================================== regex_replace
_FLAG_LETTERS = {
    "a": re.ASCII,
    "i": re.IGNORECASE,
    "m": re.MULTILINE,
    "s": re.DOTALL,
    "x": re.VERBOSE,
}


class RegexRule(BaseModel):
    """One substitution: ``re.sub(pattern, replacement, text, flags=flags)``.

    ``flags`` is a string of Python's inline-flag letters: ``a`` ASCII, ``i`` ignore case,
    ``m`` multi-line, ``s`` dot matches newline, ``x`` verbose.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: str
    replacement: str = ""
    flags: str = ""

    @field_validator("flags")
    @classmethod
    def _known_flags(cls, v: str) -> str:
        bad = sorted(set(v) - set(_FLAG_LETTERS))
        if bad:
            raise ValueError(f"unknown flag letters {''.join(bad)!r}; use any of 'aimsx'")
        return v


@register("regex_replace")
class RegexReplace(Mapper):
    """Apply regular-expression substitutions in order.

    ``rules`` is a list of ``{pattern, replacement, flags}`` (see :class:`RegexRule`);
    each rule sees the output of the previous one. The replacement may use ``\\1`` and
    ``\\g<name>``. Patterns and replacements are checked when the operator is built: a bad
    one is a :class:`~lmops.core.errors.UserError` naming the rule's index.
    """

    class Params(OpParams):
        rules: tuple[RegexRule, ...] = ()

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        p = cast(RegexReplace.Params, self.params)
        self._rules: list[tuple[re.Pattern[str], str]] = []
        for i, rule in enumerate(p.rules):
            flags = 0
            for letter in rule.flags:
                flags |= _FLAG_LETTERS[letter]
            try:
                compiled = re.compile(rule.pattern, flags)
            except (re.error, OverflowError) as e:
                raise UserError(
                    f"regex_replace: rule {i}: invalid pattern {rule.pattern!r}: {e}"
                ) from None
            try:
                # Substituting into "" parses the replacement template without a match.
                compiled.sub(rule.replacement, "")
            except (re.error, IndexError) as e:
                raise UserError(
                    f"regex_replace: rule {i}: invalid replacement {rule.replacement!r}: {e}"
                ) from None
            self._rules.append((compiled, rule.replacement))

    def apply(self, doc: Document) -> Document:
        text = doc.text
        for pattern, replacement in self._rules:
            text = pattern.sub(replacement, text)
        doc.text = text
        return doc


# ======================================================================= strip_urls_emails
# A URL: a scheme (or "www.") and the characters RFC 3986 allows; it ends at whitespace,
# at any non-ASCII character (so "访问https://a.cn/x获取" ends before 获) and at quotes or
# angle brackets. Trailing sentence punctuation and unbalanced closing brackets are given
# back by _url_end.
_URL = re.compile(
    r"(?:\b(?:https?|ftp)://|\bwww\.)[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+", re.ASCII
)
_TRAILING = ".,;:!?'\"*"


def _url_end(url: str) -> int:
    end = len(url)
    while end > 0:
        c = url[end - 1]
        if c in _TRAILING:
            end -= 1
        elif c in ")]" and url.count(c, 0, end) > url.count("(" if c == ")" else "[", 0, end):
            end -= 1  # "(see https://x.org/a)" — the bracket is the sentence's
        else:
            break
    return end


def find_urls(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each http(s)/ftp URL or ``www.`` address in ``text``."""
    spans = []
    for m in _URL.finditer(text):
        end = m.start() + _url_end(m.group())
        if end - m.start() > len("www."):
            spans.append((m.start(), end))
    return spans


@register("strip_urls_emails")
class StripUrlsEmails(Mapper):
    """Remove URLs and/or e-mail addresses, replacing each with ``replacement``.

    URLs are ``http://``, ``https://``, ``ftp://`` and ``www.`` addresses; a URL ends at
    whitespace or a non-ASCII character, and trailing punctuation (``.`` ``,`` ``)`` …)
    stays in the text unless it belongs to the URL (balanced brackets, as in Wikipedia
    links). E-mail addresses are found as :func:`lmops.text.pii.detect_pii` finds them.
    An address inside a URL goes with the URL. The default replacement is the empty string;
    run ``clean_whitespace`` afterwards for the spaces left behind.
    """

    class Params(OpParams):
        urls: bool = True
        emails: bool = True
        replacement: str = ""

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self.p = cast(StripUrlsEmails.Params, self.params)

    def apply(self, doc: Document) -> Document:
        text = doc.text
        spans: list[tuple[int, int]] = []
        if self.p.urls:
            spans.extend(find_urls(text))
        if self.p.emails:
            spans.extend(find_emails(text))
        if not spans:
            return doc
        spans.sort(key=lambda s: (s[0], -s[1]))
        parts: list[str] = []
        pos = 0
        for start, end in spans:
            if start < pos:
                continue  # inside the previous span (an address in a URL)
            parts.append(text[pos:start])
            parts.append(self.p.replacement)
            pos = end
        parts.append(text[pos:])
        doc.text = "".join(parts)
        return doc
