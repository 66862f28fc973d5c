"""The quickstart's generated web corpus: short bilingual articles from templates and word
lists (``resources/corpus_vocab.yaml``), optionally with Shakespeare speeches, and planted
problems whose counts :func:`write_corpus` returns (exact and near duplicates, PII, junk,
repairable damage). Deterministic: the same arguments and seed write byte-identical files.
:mod:`lmops.pipelines.samples` re-exports what callers need."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lmops.core.errors import UserError

__all__ = ["CorpusStats", "resource_path", "shakespeare_docs", "write_corpus"]


# ================================================================================== resources


def resource_path(name: str) -> Path:
    """A file shipped in ``lmops/pipelines/resources/``."""
    path = Path(str(resources.files("lmops.pipelines").joinpath("resources", name)))
    if not path.is_file():
        raise UserError(f"lmops resource {name!r} is missing; reinstall lmops")
    return path


@cache
def _vocab() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(
        resource_path("corpus_vocab.yaml").read_text(encoding="utf-8")
    )
    return data


# ===================================================================================== corpus

# Shares of the generated (non-Shakespeare) rows. The rest are clean articles.
EXACT_SHARE = 0.08
NEAR_SHARE = 0.07
JUNK_SHARE = 0.15
REPAIR_SHARE = 0.10  # of the clean articles: damaged in a way the recipe repairs
PII_SHARE = 0.15  # of the clean articles: one or two PII sentences planted
JUNK_KINDS = ("boilerplate", "spam", "repeated", "short")
REPAIR_KINDS = ("html", "mojibake", "martian", "traditional")
PII_KINDS = ("EMAIL", "PHONE", "ID_CARD", "BANK_CARD", "IP")


@dataclass(frozen=True)
class CorpusStats:
    """What :func:`write_corpus` wrote and planted.

    ``good`` documents (clean articles, repairable ones and Shakespeare) are what a good
    recipe keeps; duplicates and junk are what it removes. ``pii`` counts planted findings by
    the type names of :mod:`lmops.text.pii`, all inside good documents that are never
    duplicated, so a recipe that keeps them masks exactly these. ``labels`` maps every
    document id to its category (``clean``, ``shakespeare``, ``repair:<kind>``,
    ``exact_duplicate``, ``near_duplicate``, ``junk:<kind>``); duplicates always come after
    the document they copy, which ``duplicate_of`` names.
    """

    path: Path
    files: tuple[Path, ...]
    docs: int
    good: int
    clean: int
    shakespeare: int
    repairable: dict[str, int]
    exact_duplicates: int
    near_duplicates: int
    junk: dict[str, int]
    pii: dict[str, int]
    labels: dict[str, str] = field(repr=False)
    duplicate_of: dict[str, str] = field(repr=False)

    @property
    def removable(self) -> int:
        """Documents a good recipe drops: duplicates and junk."""
        return self.exact_duplicates + self.near_duplicates + sum(self.junk.values())

    def to_dict(self, *, labels: bool = False) -> dict[str, Any]:
        """Counts (and with ``labels`` the per-document labels); no absolute paths, so the
        same corpus gives the same dict wherever it was written."""
        out: dict[str, Any] = {
            "files": [f.name for f in self.files],
            "docs": self.docs,
            "good": self.good,
            "clean": self.clean,
            "shakespeare": self.shakespeare,
            "repairable": dict(self.repairable),
            "exact_duplicates": self.exact_duplicates,
            "near_duplicates": self.near_duplicates,
            "junk": dict(self.junk),
            "removable": self.removable,
            "pii": dict(self.pii),
        }
        if labels:
            out["labels"] = dict(self.labels)
            out["duplicate_of"] = dict(self.duplicate_of)
        return out


@dataclass
class _Row:
    text: str
    label: str
    lang: str
    source: str = "web"
    key: float = 0.0  # position in the corpus (sorted by it)
    copy_of: _Row | None = None
    pii: Counter[str] = field(default_factory=Counter)
    id: str = ""


def shakespeare_docs(path: Path, fraction: float = 1.0, *, min_chars: int = 600) -> list[str]:
    """Tiny Shakespeare cut into documents of consecutive speeches (a speech is a paragraph:
    the speaker's line and what they say), each at least ``min_chars`` long; the first
    ``fraction`` of them, in the play's order."""
    if not 0 <= fraction <= 1:
        raise UserError(f"shakespeare fraction must be between 0 and 1, got {fraction}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read the Shakespeare text ({e.strerror})") from None
    speeches = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    docs: list[str] = []
    current: list[str] = []
    size = 0
    for speech in speeches:
        current.append(speech)
        size += len(speech)
        if size >= min_chars:
            docs.append("\n\n".join(current))
            current, size = [], 0
    if current:
        docs.append("\n\n".join(current))
    return docs[: round(len(docs) * fraction)]


def write_corpus(
    out_dir: Path,
    *,
    docs: int,
    seed: int = 0,
    shakespeare: Path | None = None,
    shakespeare_fraction: float = 1.0,
    shards: int = 4,
) -> CorpusStats:
    """Write ``docs`` generated rows (plus the Shakespeare documents, when ``shakespeare``
    names tinyshakespeare's ``input.txt``) as ``part-0000N.jsonl`` shards of
    ``{"id", "text", "lang", "source"}`` rows under ``out_dir``, and ``planted.json`` with
    the returned stats and labels. Deterministic in all arguments."""
    if docs < 20:
        raise UserError(f"write_corpus: docs must be at least 20, got {docs}")
    if shards < 1:
        raise UserError(f"write_corpus: shards must be at least 1, got {shards}")
    rng = random.Random(seed)
    v = _vocab()
    n_exact = round(docs * EXACT_SHARE)
    n_near = round(docs * NEAR_SHARE)
    n_junk = round(docs * JUNK_SHARE)
    n_clean = docs - n_exact - n_near - n_junk
    n_repair = round(n_clean * REPAIR_SHARE)
    n_pii = round(n_clean * PII_SHARE)

    rows: list[_Row] = []
    # Clean articles, half Chinese; the first n_pii get PII, the next n_repair get damage.
    for i in range(n_clean):
        lang = "zh" if i % 2 else "en"
        pii_types: list[str] = []
        if i < n_pii:
            pii_types = [PII_KINDS[i % len(PII_KINDS)]]
            if i % 3 == 0:
                pii_types.append(PII_KINDS[(i + 2) % len(PII_KINDS)])
        text, pii = _article(rng, v[lang], lang, pii_types)
        label = "clean"
        if n_pii <= i < n_pii + n_repair:
            kinds = REPAIR_KINDS if lang == "zh" else REPAIR_KINDS[:2]
            kind = kinds[(i // 2) % len(kinds)]
            text = _damage(rng, v, lang, kind, text)
            label = f"repair:{kind}"
        rows.append(_Row(text, label, lang, pii=pii))
    if shakespeare is not None:
        rows += [
            _Row(t, "shakespeare", "en", source="tinyshakespeare")
            for t in shakespeare_docs(shakespeare, shakespeare_fraction)
        ]
    for i in range(n_junk):
        lang = "zh" if i % 2 else "en"
        kind = JUNK_KINDS[(i // 2) % len(JUNK_KINDS)]
        rows.append(_Row(_junk(rng, v, lang, kind), f"junk:{kind}", lang))
    rng.shuffle(rows)
    for pos, row in enumerate(rows):
        row.key = float(pos)
    # Duplicates copy clean articles without PII and land somewhere after their original.
    sources = [r for r in rows if r.label == "clean" and not r.pii]
    end = float(len(rows))
    for i in range(n_exact + n_near):
        src = rng.choice(sources)
        if i < n_exact:
            text = src.text if i % 2 == 0 else _reformat(src.text)
            label = "exact_duplicate"
        else:
            text = _near_copy(rng, v[src.lang], src.lang, src.text)
            label = "near_duplicate"
        rows.append(_Row(text, label, src.lang, key=rng.uniform(src.key + 0.5, end), copy_of=src))
    rows.sort(key=lambda r: r.key)
    for n, row in enumerate(rows):
        row.id = f"doc-{n:06d}"

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("part-*.jsonl"):
        old.unlink()
    files = []
    per = -(-len(rows) // shards)
    for s in range(shards):
        chunk = rows[s * per : (s + 1) * per]
        if not chunk:
            break
        f = out_dir / f"part-{s:05d}.jsonl"
        f.write_text(
            "".join(
                json.dumps(
                    {"id": r.id, "text": r.text, "lang": r.lang, "source": r.source},
                    ensure_ascii=False,
                )
                + "\n"
                for r in chunk
            ),
            encoding="utf-8",
        )
        files.append(f)
    labels = Counter(r.label for r in rows)
    pii_total: Counter[str] = Counter()
    for r in rows:
        pii_total.update(r.pii)
    repairable = {k: labels[f"repair:{k}"] for k in REPAIR_KINDS}
    stats = CorpusStats(
        path=out_dir,
        files=tuple(files),
        docs=len(rows),
        good=labels["clean"] + labels["shakespeare"] + sum(repairable.values()),
        clean=labels["clean"],
        shakespeare=labels["shakespeare"],
        repairable=repairable,
        exact_duplicates=labels["exact_duplicate"],
        near_duplicates=labels["near_duplicate"],
        junk={k: labels[f"junk:{k}"] for k in JUNK_KINDS},
        pii={k: pii_total[k] for k in PII_KINDS},
        labels={r.id: r.label for r in rows},
        duplicate_of={r.id: r.copy_of.id for r in rows if r.copy_of is not None},
    )
    (out_dir / "planted.json").write_text(
        json.dumps(stats.to_dict(labels=True), ensure_ascii=False, indent=1) + "\n",
        encoding="utf-8",
    )
    return stats


# -- articles --------------------------------------------------------------------------------------

_NTH = ("second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth")


def _fills(rng: random.Random, slots: dict[str, list[str]], lang: str) -> dict[str, str]:
    """One article's slot values: the same city, people and org throughout."""
    f = {name: rng.choice(words) for name, words in slots.items()}
    f["city2"] = rng.choice([c for c in slots["city"] if c != f["city"]])
    f["team2"] = rng.choice([t for t in slots["team"] if t != f["team"]])
    f["year"] = str(rng.randint(2015, 2025))
    f["age"] = str(rng.choice((16, 18)))
    f["nth"] = rng.choice(_NTH)
    if lang == "en":
        f["name"] = f"{f['first']} {f['last']}"
    return f


def _numbers(
    rng: random.Random, fills: dict[str, str], slots: dict[str, list[str]]
) -> dict[str, str]:
    """Fresh numbers (and ingredients) for each sentence: an article quotes many figures."""
    k = rng.randint(2, 9)
    return {
        **fills,
        "ingredient": rng.choice(slots["ingredient"]),
        "n": str(rng.randint(3, 60)),
        "n2": str(rng.randint(100, 950)),
        "k": str(k),
        "k2": str(rng.randint(0, k - 1)),
        "pct": str(rng.randint(2, 35)),
    }


def _article(
    rng: random.Random, v: dict[str, Any], lang: str, pii_types: Sequence[str]
) -> tuple[str, Counter[str]]:
    """A headline and 7-9 sentences in 2-3 paragraphs, with one sentence per PII type."""
    fills = _fills(rng, v["slots"], lang)
    topic = v["topics"][rng.choice(sorted(v["topics"]))]
    title = rng.choice(topic["titles"]).format(**_numbers(rng, fills, v["slots"]))
    title = title[0].upper() + title[1:]
    n_sent = rng.randint(7, 9)
    templates = rng.sample(topic["sentences"], n_sent - 2) + rng.sample(v["generic"], 2)
    rng.shuffle(templates)
    pii: Counter[str] = Counter()
    for typ in pii_types:
        values = {**fills, **_pii_values(rng, lang, fills)}
        sentence = rng.choice(v["pii"][typ])
        templates.insert(rng.randint(1, len(templates)), sentence.format(**values))
        pii[typ] += 1
    generic = set(v["generic"])
    sentences = []
    for t in templates:
        # Stock sentences quote other people and places than the story itself, which also
        # keeps one long organisation name from repeating often enough to trip Gopher's
        # repeated n-gram rules.
        f = {**_fills(rng, v["slots"], lang), "city": fills["city"]} if t in generic else fills
        s = t.format(**_numbers(rng, f, v["slots"])) if "{" in t else t
        sentences.append(s[0].upper() + s[1:])
    cuts = sorted(rng.sample(range(2, len(sentences) - 1), rng.randint(1, 2)))
    paragraphs = [sentences[a:b] for a, b in zip([0, *cuts], [*cuts, len(sentences)], strict=True)]
    joiner = " " if lang == "en" else ""
    return title + "\n\n" + "\n\n".join(joiner.join(p) for p in paragraphs), pii


# -- PII values that lmops.text.pii detects --------------------------------------------------------

_ID_AREAS = ("110101", "310104", "440305", "330106", "510107", "420102", "320102", "610113")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_EMAIL_HANDLES_ZH = ("zhangwei", "wang.fang", "li_na", "liuyang", "chen.jing", "yanglei", "zhaomin")
_EMAIL_DOMAINS = ("example.com", "mail.example.org", "example.cn", "news.example.net")


def _id_card(rng: random.Random) -> str:
    """An 18-digit resident ID with a real birth date and the ISO 7064 MOD 11-2 check."""
    year, month = rng.randint(1955, 2004), rng.randint(1, 12)
    day = rng.randint(1, 28)
    body = f"{rng.choice(_ID_AREAS)}{year}{month:02d}{day:02d}{rng.randint(0, 999):03d}"
    total = sum(int(d) * w for d, w in zip(body, _ID_WEIGHTS, strict=True))
    return body + "10X98765432"[total % 11]


def _luhn_digit(body: str) -> str:
    total = 0
    for i, d in enumerate(reversed(body)):
        x = int(d) * (2 if i % 2 == 0 else 1)
        total += x - 9 if x > 9 else x
    return str(-total % 10)


def _bank_card(rng: random.Random) -> str:
    """A UnionPay (62…, 16 or 19 digits) or Visa (4…, 16 digits) number passing Luhn,
    written plain or in groups of four."""
    prefix, length = rng.choice((("622202", 19), ("621700", 16), ("4", 16), ("622848", 19)))
    body = prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - len(prefix) - 1))
    number = body + _luhn_digit(body)
    if rng.random() < 0.5:
        return number
    return " ".join(number[i : i + 4] for i in range(0, len(number), 4))


def _phone(rng: random.Random) -> str:
    digits = "1" + rng.choice("3456789") + "".join(str(rng.randint(0, 9)) for _ in range(9))
    style = rng.randint(0, 3)
    if style == 0:
        return digits
    if style == 1:
        return f"{digits[:3]}-{digits[3:7]}-{digits[7:]}"
    if style == 2:
        return f"{digits[:3]} {digits[3:7]} {digits[7:]}"
    return f"+86 {digits[:3]} {digits[3:7]} {digits[7:]}"


def _pii_values(rng: random.Random, lang: str, fills: dict[str, str]) -> dict[str, str]:
    if lang == "en":
        handle = f"{fills['first'].lower()}.{fills['last'].lower()}"
    else:
        handle = rng.choice(_EMAIL_HANDLES_ZH)
    return {
        "email": f"{handle}{rng.randint(1, 99)}@{rng.choice(_EMAIL_DOMAINS)}",
        "phone": _phone(rng),
        "id_card": _id_card(rng),
        "bank_card": _bank_card(rng),
        "ip": f"{rng.choice((10, 172, 192, 203))}.{rng.randint(0, 255)}.{rng.randint(0, 255)}."
        f"{rng.randint(1, 254)}",
    }


# -- damage the recipe repairs ---------------------------------------------------------------------


def _sloppy_cp1252(text: str) -> str:
    """UTF-8 bytes read as Windows-1252 (bytes it leaves undefined read as Latin-1), the most
    common mojibake on the web."""
    out = []
    for b in text.encode("utf-8"):
        try:
            out.append(bytes([b]).decode("cp1252"))
        except UnicodeDecodeError:
            out.append(chr(b))
    return "".join(out)


def _damage(rng: random.Random, v: dict[str, Any], lang: str, kind: str, text: str) -> str:
    title, _, body = text.partition("\n\n")
    if kind == "html":
        paragraphs = "".join(f"<p>{p}</p>\n" for p in body.split("\n\n"))
        nav = "首页 | 新闻 | 联系我们" if lang == "zh" else "Home | News | Contact"
        return (
            f"<!DOCTYPE html>\n<html><head><title>{title}</title>\n"
            "<style>body{font-family:sans-serif} .ad{display:none}</style>\n"
            "<script>window.dataLayer=window.dataLayer||[];function gtag(){}</script>\n"
            f"</head><body><nav>{nav}</nav>\n<article><h1>{title}</h1>\n{paragraphs}"
            "</article></body></html>"
        )
    if kind == "mojibake":
        if lang == "en":  # give the bytes something to garble: curly quotes and an accent
            text = text.replace("'", "\u2019") + " \u201cSee you at the caf\u00e9!\u201d"
        return _sloppy_cp1252(text)
    if kind == "martian":
        table: dict[str, str] = v["martian"]
        return "".join(table[ch] if ch in table and rng.random() < 0.7 else ch for ch in text)
    if kind == "traditional":
        import opencc

        return str(opencc.OpenCC("s2t").convert(text))
    raise AssertionError(kind)


# -- duplicates and junk ---------------------------------------------------------------------------


def _reformat(text: str) -> str:
    """The same text with different spacing: an exact duplicate once whitespace is cleaned."""
    return "\n\n".join("  " + p.replace(" ", "  ") + " " for p in text.split("\n\n")) + "\n"


def _near_copy(rng: random.Random, v: dict[str, Any], lang: str, text: str) -> str:
    """A copy with two small edits: a word swapped for a synonym, a figure changed, or a
    tag added to the headline (what syndicated or lightly edited copies look like)."""
    swaps = [(a, b) for a, b in v["swaps"].items() if a in text]
    rng.shuffle(swaps)
    edits = 0
    for a, b in swaps[:2]:
        text = text.replace(a, b, 1)
        edits += 1
    m = list(re.finditer(r"\d+", text))
    if edits < 2 and m:
        hit = rng.choice(m)
        text = text[: hit.start()] + str(int(hit.group()) + 1) + text[hit.end() :]
        edits += 1
    if edits < 2:
        title, _, body = text.partition("\n\n")
        text = title + ("（转载）" if lang == "zh" else " (updated)") + "\n\n" + body
    return text


def _junk(rng: random.Random, v: dict[str, Any], lang: str, kind: str) -> str:
    if kind == "boilerplate":
        fills = _numbers(rng, _fills(rng, v[lang]["slots"], lang), v[lang]["slots"])
        return str(rng.choice(v[lang]["boilerplate"]).format(**fills))
    if kind == "spam":
        if lang == "en":
            return " ".join(
                rng.choice(v["keyboard"]) * rng.randint(2, 5) for _ in range(rng.randint(30, 60))
            )
        return "".join(
            rng.choice(v["zh_mash"]) * rng.randint(3, 12) + rng.choice(("", "！", "~", "。"))
            for _ in range(rng.randint(30, 60))
        )
    if kind == "repeated":
        line = rng.choice(v[lang]["spam_lines"])
        return "\n".join([line] * rng.randint(8, 20))
    if kind == "short":
        return str(rng.choice(v["short_posts"]))
    raise AssertionError(kind)
