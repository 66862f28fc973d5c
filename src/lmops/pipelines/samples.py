"""The quickstart's content: a generated bilingual web corpus with planted problems, the data
recipe that cleans it, a bilingual skill the tiny model learns (two-digit addition), a slice
of bilingual Alpaca, and the tuned hyperparameter profiles.

Everything here is deterministic: the same arguments and seed write byte-identical files.

- :func:`write_corpus` writes JSONL shards of short Chinese and English articles (half each)
  built from templates and word lists (``resources/corpus_vocab.yaml``), optionally with
  Shakespeare speeches, and plants problems whose counts it returns: exact and near
  duplicates, PII (mobile numbers, e-mails, ID numbers with a valid check digit, bank cards
  passing Luhn, IP addresses), junk (HTML boilerplate, keyboard spam, repeated lines, very
  short posts) and repairable damage (an article inside HTML markup, mojibake, 火星文,
  traditional characters).
- :func:`write_recipe` writes ``resources/quickstart_recipe.yaml`` for that corpus: repair,
  clean, quality-filter, deduplicate (exact + MinHash), mask PII.
- :func:`write_skill_task` writes the addition task: SFT chats, DPO pairs, a held-out
  evaluation set disjoint from training and an lm-eval style task YAML for
  ``lmops eval run --task-file``. Digits are separated by spaces ("4 7 + 3 5") so the
  byte-level BPE tokenizer gives one token per digit (:func:`digits_split` checks it).
- :func:`alpaca_slice` takes rows of the shared bilingual Alpaca set in chat form.
- :data:`PROFILES` holds the measured hyperparameters of the quickstart chain.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lmops.core.errors import UserError

__all__ = [
    "PROFILES",
    "CorpusStats",
    "SkillTask",
    "alpaca_slice",
    "digits_split",
    "resource_path",
    "shakespeare_docs",
    "spaced",
    "write_corpus",
    "write_jsonl",
    "write_recipe",
    "write_skill_task",
]

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
    the type names of :mod:`lmops.data.pii`, all inside good documents that are never
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


# -- PII values that lmops.data.pii detects --------------------------------------------------------

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


# ===================================================================================== recipe


def write_recipe(
    path: Path,
    *,
    inputs: Sequence[str] = ("corpus/*.jsonl",),
    output_path: str | None = "clean",
    dataset: str | None = "quickstart-clean",
    workers: int = 2,
) -> Path:
    """Write the quickstart data recipe to ``path`` with the given inputs (globs relative
    to ``path``'s folder, or dataset refs), output and worker count."""
    recipe: dict[str, Any] = yaml.safe_load(
        resource_path("quickstart_recipe.yaml").read_text(encoding="utf-8")
    )
    recipe["inputs"] = list(inputs)
    recipe["output"] = {
        k: val for k, val in (("path", output_path), ("dataset", dataset)) if val is not None
    }
    recipe["executor"]["workers"] = workers
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False, width=100), encoding="utf-8"
    )
    return path


# ================================================================================= skill task


def spaced(n: int) -> str:
    """``47`` -> ``"4 7"``: one BPE token per digit."""
    return " ".join(str(n))


_PROMPTS = {
    "en": ("What is {a} + {b}?", "Add {a} and {b}.", "Compute {a} + {b}."),
    "zh": ("{a} 加 {b} 等于多少？", "计算 {a} + {b}。", "{a} 与 {b} 的和是多少？"),
}


def _question(rng: random.Random, lang: str, a: int, b: int) -> str:
    return rng.choice(_PROMPTS[lang]).format(a=spaced(a), b=spaced(b))


def _wrong(rng: random.Random, a: int, b: int) -> int:
    """A plausible wrong sum: a dropped or invented carry, off by one, or swapped digits."""
    right = a + b
    carry_dropped = (a % 10 + b % 10) % 10 + 10 * (a // 10 + b // 10)
    options = {carry_dropped, right + 10, right - 1, right + 1, int(str(right)[::-1])}
    options = {o for o in options if o != right and o >= 0}
    return rng.choice(sorted(options))


@dataclass(frozen=True)
class SkillTask:
    """The files :func:`write_skill_task` wrote."""

    sft: Path  # chat rows: {"messages": [user, assistant]}
    prefs: Path  # preference rows: {"prompt", "chosen", "rejected"} (strings)
    eval: Path  # held-out rows: {"question", "answer", "lang", "a", "b"}
    task_yaml: Path  # lm-eval style generation task over eval.jsonl, exact match
    text: Path  # {"text"} rows of every training problem, for tokenizer training
    train_rows: int
    pref_rows: int
    eval_rows: int


def write_skill_task(
    out_dir: Path, *, train: int, eval: int, seed: int = 0, prefs: int | None = None
) -> SkillTask:
    """Two-digit addition asked in English or Chinese ("What is 2 3 + 4 5?" /
    "2 3 加 4 5 等于多少？" -> "6 8").

    ``eval`` unordered pairs ``{a, b}`` (10 <= a, b <= 99) are held out first: neither
    ``a + b`` nor ``b + a`` appears in the SFT or preference rows. ``train`` SFT rows are
    drawn from the other ordered pairs (cycling through them when ``train`` is larger, each
    time with a new wording); ``prefs`` preference rows (default ``train // 2``) pair the
    right sum with a plausible wrong one. Languages alternate, so each file is half Chinese.
    """
    if not 1 <= eval <= 1000:
        raise UserError(f"write_skill_task: eval must be between 1 and 1000, got {eval}")
    if train < 1:
        raise UserError(f"write_skill_task: train must be at least 1, got {train}")
    n_prefs = train // 2 if prefs is None else prefs
    rng = random.Random(seed)
    unordered = [(a, b) for a in range(10, 100) for b in range(a, 100)]
    rng.shuffle(unordered)
    held = unordered[:eval]
    held_set = set(held)
    pool = [
        (a, b)
        for a in range(10, 100)
        for b in range(10, 100)
        if (min(a, b), max(a, b)) not in held_set
    ]

    def draw(n: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        while len(out) < n:
            batch = pool[:]
            rng.shuffle(batch)
            out += batch[: n - len(out)]
        return out

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    langs = ("en", "zh")
    sft_rows, text_rows = [], []
    for i, (a, b) in enumerate(draw(train)):
        q = _question(rng, langs[i % 2], a, b)
        sft_rows.append(
            {
                "messages": [
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": spaced(a + b)},
                ]
            }
        )
        text_rows.append({"text": f"{q}\n{spaced(a + b)}"})
    pref_rows = []
    for i, (a, b) in enumerate(draw(n_prefs)):
        pref_rows.append(
            {
                "prompt": _question(rng, langs[i % 2], a, b),
                "chosen": spaced(a + b),
                "rejected": spaced(_wrong(rng, a, b)),
            }
        )
    eval_rows = []
    for i, (a, b) in enumerate(held):
        if rng.random() < 0.5:
            a, b = b, a
        lang = langs[i % 2]
        eval_rows.append(
            {"question": _question(rng, lang, a, b), "answer": spaced(a + b), "lang": lang}
            | {"a": a, "b": b}
        )
    paths = {
        "sft": write_jsonl(out_dir / "sft.jsonl", sft_rows),
        "prefs": write_jsonl(out_dir / "prefs.jsonl", pref_rows),
        "eval": write_jsonl(out_dir / "eval.jsonl", eval_rows),
        "text": write_jsonl(out_dir / "task_text.jsonl", text_rows),
    }
    task_yaml = out_dir / "addition_task.yaml"
    task_yaml.write_text(
        resource_path("addition_task.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    return SkillTask(
        task_yaml=task_yaml,
        train_rows=len(sft_rows),
        pref_rows=len(pref_rows),
        eval_rows=len(eval_rows),
        **paths,
    )


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write ``rows`` as UTF-8 JSONL (non-ASCII kept), creating the folder; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def digits_split(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` (a Hugging Face tokenizer) gives every digit of the task's
    spaced numbers its own token, in both languages' prompts."""
    for text in ("What is 4 7 + 3 5?", "8 2", "4 7 加 3 5 等于多少？", "1 9 8"):
        pieces = [
            tokenizer.decode([t]) for t in tokenizer(text, add_special_tokens=False)["input_ids"]
        ]
        if any(sum(ch.isdigit() for ch in p) > 1 for p in pieces):
            return False
    return True


# ===================================================================================== alpaca


def alpaca_slice(path: Path, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rows of the shared bilingual Alpaca set (``alpaca_zh_en``: a folder of
    ``part_*.json``, or one such file) as chat rows, half in Chinese and half in English,
    chosen by ``seed``; rows with an empty answer are skipped."""
    path = Path(path)
    files = sorted(path.glob("part_*.json")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise UserError(f"{path}: no alpaca_zh_en part_*.json files found")
    items: list[dict[str, Any]] = []
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{f}: not a JSON list of Alpaca rows ({e})") from None
        if not isinstance(data, list):
            raise UserError(f"{f}: expected a JSON list of Alpaca rows")
        items += data
    rng = random.Random(seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    rows: list[dict[str, Any]] = []
    for i in order:
        if len(rows) >= n:
            break
        prefix = "" if len(rows) % 2 else "en_"
        item = items[i]
        instruction = str(item.get(f"{prefix}instruction") or "").strip()
        extra = str(item.get(f"{prefix}input") or "").strip()
        answer = str(item.get(f"{prefix}output") or "").strip()
        if not instruction or not answer:
            continue
        user = f"{instruction}\n\n{extra}" if extra else instruction
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows


# =================================================================================== profiles

# The quickstart's hyperparameters. Keys: the corpus (``corpus_docs``, ``shakespeare_fraction``),
# the task files (``task_train`` / ``task_eval`` / ``task_prefs`` rows), ``heldout_docs`` (text for
# perplexity), ``alpaca`` (rows mixed into SFT), the tokenizer's ``vocab_size``, the pretraining
# ``model`` (a ModelPreset without its tokenizer), and per stage the ``train`` block of a TrainSpec
# (``pretrain``, ``sft``, ``dpo``) with ``sft_packing``, ``replay_docs`` (cleaned pretraining
# documents mixed into SFT), the adapters (``lora`` for SFT, ``dpo_lora``), ``preference`` (DPO),
# ``eval_limit``, ``safety_limit`` and the gate's ``ppl_tolerance`` (how much worse than the base
# model's held-out perplexity a promoted model may be).
#
# How "full" was tuned, with real runs on 2 shared CPU cores:
# - LoRA needs an output layer it can change. The answers end with <|im_end|>, which never occurs in
#   the pretraining text, so its output row stays where pretraining pushed it. With tied embeddings
#   (frozen under LoRA) the SFT loss stayed near 3.5 and exact match at 3 %; untied, a LoRA on the
#   decoder alone learned the digits but never to end the turn (loss 2.1); a LoRA on the untied
#   ``lm_head`` as well gives 99-100 %.
# - r = 64, the model's width: with r = 32, 1000 steps gave 95-100 % in 8 runs of 9 and 62 % in one
#   (learning the carries comes as a sudden drop in loss, somewhere after 400-900 steps); r = 64
#   gave 99.5-100 % in 4 runs of 4. lr 6e-3 never learned; a constant lr was worse.
# - Packing: Alpaca answers are long; padded batches made mixing 5 % of them 2.5x slower, packed it
#   costs about 25 % more time.
# - Replay: SFT on the skill alone wrecked ordinary text (held-out word perplexity 67 -> 6,797, so
#   the gate, which also asks perplexity not to get worse, held it). 500 cleaned pretraining
#   documents mixed in (about a fifth of the SFT tokens, trained on every token) keep it: 67 ->
#   17.5 with exact match 98 %; 1000 gave 8.6 and 95 %. Perplexity falls below the base's because
#   the replay is 1000 more steps of language modelling on the corpus the base saw for 200.
# - DPO starts from the merged SFT model: TRL's DPO refuses a LoRA on ``lm_head``, and ``lmops
#   eval`` failed on a DPO adapter trained on top of the SFT adapter. With SFT at ~100 % there is
#   little left to fix; lr 5e-4 and beta 0.1 pulled the chosen answers down with the rejected ones
#   (100 % -> 67 %), lr 1e-4 and beta 0.5 keep it at 100 % while the reward margin grows.
# - Measured for "full" through the CLI (one command per step, OMP_NUM_THREADS=1): data 5 s,
#   tokenizer 1 s, pretrain 53 s, SFT 135 s, merge 6 s, DPO 22 s, three evals 7 s each: 4.1 min (3.0
#   min with 2 threads, 3.4 min in one process). Exact match on the 200 held-out problems: base 0 %,
#   SFT 100 %, DPO 100 %. "tiny" only has to run every step: 8 s of work in one process.
_MODEL = {"preset": "llama-tiny", "overrides": {"tie_word_embeddings": False}}
_SFT_LORA = {
    "r": 64,
    "alpha": 128,
    "targets": [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head",
    ],
}  # fmt: skip
_DPO_LORA = {"r": 16, "alpha": 32, "targets": "all-linear"}

PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "corpus_docs": 1500,
        "shakespeare_fraction": 0.5,
        "task_train": 8000,
        "task_eval": 200,
        "task_prefs": 2000,
        "heldout_docs": 100,
        "alpaca": 400,
        "vocab_size": 2048,
        "model": _MODEL,
        "pretrain": {
            "max_steps": 200,
            "batch_size": 32,
            "max_seq_len": 128,
            "lr": 3e-3,
            "warmup_steps": 20,
            "log_steps": 20,
            "save_steps": 200,
        },
        "sft": {
            "max_steps": 1000,
            "batch_size": 16,
            "max_seq_len": 128,
            "lr": 3e-3,
            "warmup_steps": 30,
            "log_steps": 50,
            "save_steps": 1000,
        },
        "sft_packing": True,
        "replay_docs": 500,
        "ppl_tolerance": "25%",
        "lora": _SFT_LORA,
        "dpo": {
            "max_steps": 60,
            "batch_size": 32,
            "max_seq_len": 48,
            "lr": 1e-4,
            "warmup_steps": 5,
            "log_steps": 10,
            "save_steps": 60,
        },
        "dpo_lora": _DPO_LORA,
        "preference": {"beta": 0.5, "max_prompt_len": 40},
        "eval_limit": 200,
        "safety_limit": 2,
    },
    "tiny": {
        "corpus_docs": 40,
        "shakespeare_fraction": 0.0,
        "task_train": 64,
        "task_eval": 16,
        "task_prefs": 32,
        "heldout_docs": 30,
        "alpaca": 8,
        "vocab_size": 320,
        "model": _MODEL,
        "pretrain": {
            "max_steps": 8,
            "batch_size": 4,
            "max_seq_len": 64,
            "lr": 3e-3,
            "log_steps": 4,
            "save_steps": 8,
        },
        "sft": {
            "max_steps": 8,
            "batch_size": 8,
            "max_seq_len": 64,
            "lr": 3e-3,
            "log_steps": 4,
            "save_steps": 8,
        },
        "sft_packing": True,
        "replay_docs": 8,
        "ppl_tolerance": "25%",
        "lora": _SFT_LORA,
        "dpo": {
            "max_steps": 4,
            "batch_size": 4,
            "max_seq_len": 48,
            "lr": 1e-4,
            "log_steps": 2,
            "save_steps": 4,
        },
        "dpo_lora": _DPO_LORA,
        "preference": {"beta": 0.5, "max_prompt_len": 40},
        "eval_limit": 8,
        "safety_limit": 1,
    },
}
