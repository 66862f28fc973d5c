"""A request's messages read one by one, and what crosses the seams between them.

The guard (:mod:`lmops.security.guard`) reads each message by itself and remembers the
reading by its text (a chat sends its earlier turns again with every request); what the
joined text would find across the line breaks between messages (a term or an injection
rule cut across messages) is read here, in windows around the seams.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Literal, NamedTuple

from lmops.security import moderation
from lmops.security.injection import rule_counts
from lmops.security.normalize import flat, join_normalized
from lmops.security.textcache import TextCache

# More messages (or text parts) than this in a request: read joined as a whole, as
# thousands of tiny or empty ones would cost a seam each.
MAX_ONE_BY_ONE = 128


class Layout(NamedTuple):
    """Where the messages of a request lie in their joined normalised text: ``starts[k]``
    is where message ``k`` starts, ``content[k]`` how many characters of messages before
    ``k`` normalising the joined text keeps for sure (all but their leading and trailing
    blanks and separators, see :class:`Read`)."""

    starts: list[int]
    content: list[int]

    @classmethod
    def of(cls, reads: Sequence[Read]) -> Layout:
        starts, content = [0], [0]
        for r in reads:
            starts.append(starts[-1] + len(r.norm) + 1)
            content.append(content[-1] + max(len(r.norm) - r.lead - r.trail, 0))
        return cls(starts, content)

    def window(self, reads: Sequence[Read], i: int, reach: int) -> tuple[int, int]:
        """Where to read the seam after message ``i``: ``reach`` characters to either side,
        not counting those that normalising the joined text may drop, over as many
        messages as it takes (found by bisection: a run of empty messages costs nothing)."""
        p, c = self.starts, self.content
        # left: the last message j <= i whose kept characters take the total over reach
        j = bisect_left(c, c[i + 1] - reach) - 1
        if j < 0:
            lo = 0
        else:
            need = reach - (c[i + 1] - c[j + 1])
            lo = p[j] + len(reads[j].norm) - reads[j].trail - need
        # right: the first message j > i whose kept characters take the total over reach
        k = bisect_right(c, c[i + 1] + reach)
        if k > len(reads):
            hi = p[-1] - 1
        else:
            j = k - 1
            need = reach - (c[j] - c[i + 1])
            hi = p[j] + reads[j].lead + need
        return lo, hi


class Read(NamedTuple):
    """What the guard reads in one message (or reply) by itself, remembered with its text
    (see :meth:`Guardrails._read`): its normalised form, that form with line breaks as
    spaces and de-obfuscated, the term hits per category, the injection rules that fire
    (name -> weight) and its decoded base64 payloads."""

    norm: str
    deep: str
    terms: dict[str, int]
    rules: dict[str, float]
    payloads: tuple[str, ...]
    lead: int  # characters that normalising a joined text may drop ("\n" and GAP_CHARS) ...
    trail: int  # ... at the start and at the end of norm


class Seams:
    """What crosses the seams between messages read one by one (see :meth:`__call__`):
    ``moderate`` is the guard's term lists on a normalised text (hits per category),
    ``longest`` its longest term."""

    def __init__(self, moderate: Callable[[str], dict[str, int]], longest: int) -> None:
        self._moderate = moderate
        # How far a term or an injection rule may reach across a seam between messages, in
        # normalised characters: a term spelled out (up to 6 characters a letter: the letter,
        # a tone digit read as pinyin and up to 3 separators, "b . o . m . b"), an injection
        # rule (at most 40 characters between its words, and its words bounded; English
        # rules cross a line break only where it falls between Chinese characters).
        self.reach = max(6 * longest + 8, 64)
        self.cache = TextCache()

    def __call__(self, reads: Sequence[Read], kind: Literal["terms", "rules"]) -> dict[str, int]:
        """What reaches across the seams of messages read one by one, joined with line
        breaks as the request's text is: term hits per category (``kind="terms"``) or
        matches per injection rule (``"rules"``) that cross a seam.

        Around each seam, ``reach`` characters to either side are read (not counting
        the blanks and separators that normalising the joined text may drop there, over as
        many messages as it takes); windows that overlap are read as one. A window is read
        twice: normalised as the joined text is (:func:`join_normalized`), and with each
        of its seams broken (its messages as read, joined with a character that no term,
        rule or de-obfuscation step reaches over); what the first finds more often than
        the second crosses a seam. Both readings share the window's edges, so what a cut
        at an edge makes (a word cut in two) cancels. Remembered per window."""
        out: Counter[str] = Counter()
        if len(reads) < 2:
            return out
        joined = "\n".join(r.norm for r in reads)
        layout, reach = Layout.of(reads), self.reach
        groups: list[tuple[int, int, list[int]]] = []  # (lo, hi, seams), merged
        for i in range(len(reads) - 1):
            at = layout.starts[i + 1] - 1  # the line break after message i
            lo, hi = layout.window(reads, i, reach)
            if groups and lo <= groups[-1][1]:
                groups[-1] = (groups[-1][0], max(hi, groups[-1][1]), [*groups[-1][2], at])
            else:
                groups.append((lo, hi, [at]))
        for lo, hi, seams in groups:
            window = joined[lo:hi]
            key = f"{kind}\0{','.join(str(a - lo) for a in seams)}\0{window}"
            found = self.cache.get(key)
            if found is None:
                cuts = [lo - 1, *seams, hi]
                pieces = [joined[a + 1 : b] for a, b in pairwise(cuts)]
                found = self._crossing(join_normalized(window), pieces, kind)
                self.cache.put(key, found)
            out.update(found)
        return out

    def _crossing(self, window: str, pieces: list[str], kind: str) -> dict[str, int]:
        """What ``window`` (normalised as joined) finds more often than ``pieces`` (its
        messages as read) joined with a break: per category (each form, plain and
        de-obfuscated, on its own) or per rule, how many more."""
        if kind == "rules":
            whole = rule_counts(window)
            if not whole:
                return {}
            apart = rule_counts("\n".join(pieces))  # no rule reaches over a line break
            return {k: n - apart.get(k, 0) for k, n in whole.items() if n > apart.get(k, 0)}
        plain = flat(window)
        deep = moderation.deobfuscate(plain)
        forms = [plain, deep] if deep != plain else [plain]
        whole_counts = [self._moderate(f) for f in forms]
        if not any(whole_counts):
            return {}
        # "。": no term holds it, de-obfuscation joins nothing over it, it is no separator
        # dropped between Chinese characters, and a Latin term ends or starts beside it.
        broken = flat("。".join(pieces))
        apart_forms = [broken, moderation.deobfuscate(broken)]
        out: dict[str, int] = {}
        for whole, form in zip(whole_counts, apart_forms, strict=False):
            if not whole:
                continue
            apart = self._moderate(form)
            for c, n in whole.items():
                if n > apart.get(c, 0):
                    out[c] = max(out.get(c, 0), n - apart.get(c, 0))
        return out
