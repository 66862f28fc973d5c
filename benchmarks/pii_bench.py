"""PII masking benchmark: lmops's ``pii_mask`` beside datatrove's ``PIIFormatter`` (and
Data-Juicer's e-mail and IP cleaners where installed) on a labelled set, and what each costs
on a real corpus. Not a test: it prints its figures (tables, then one JSON line).

    python benchmarks/pii_bench.py [--seed 0] [--per-family 100] [--baseline-rev REV]
        [--datasets PATH] [--rounds 3]

**Labelled set** (built here, seeded): positives of every kind in several writings, each in
an English or a Chinese sentence: US Social Security numbers (``123-45-6789``; spaced or
plain after "SSN", "social security number", "社会安全号码", or in JSON/config form,
``{"ssn": "123456789"}``), NANP phones (``(415) 555-0100``, dots, dashes, ``1``/``+1``
before them, spaces after ``1`` or a phone keyword), IBANs of eight countries (plain, in
groups of four), IPv4 (public, private, with a port, in a URL), IPv6, e-mail, and the
Chinese kinds lmops had before (mobile, landline beside a number such as "9:00-18:00",
resident ID, bank card). A positive is *caught* when
the secret part (the number; an address) is gone from the tool's output, whatever replaced
it (datatrove puts fake addresses in). Look-alike negatives (SSNs the SSA never issues,
phones breaking NANP rules, spaced 3-3-4 lists with no phone keyword ("--sizes 256 512
1024"), codes ending in an SSN or phone shape ("SKU-123-45-6789", "INV-415-555-0100"),
Python slices ("x[1::2]"), IBANs failing MOD 97, versions and section numbers, loopback
addresses, dates, zip codes, ISBNs, order numbers, timestamps, prices, hashes) count as a
*false positive* when the tool changes the text at all. A kind a tool does not look for
shows ``-`` (datatrove masks e-mail and IP addresses only, and by default public ones only).

**Speed**: documents per CPU second (``time.process_time``, best of ``--rounds``) of masking
every kind over real text: the bilingual Alpaca rows (Chinese and English fields of one row as
one document) and tinyshakespeare (passages of six paragraphs) from the shared datasets. With
``--baseline-rev REV`` lmops's detector as it was at that git revision (its three modules
loaded from ``git show`` beside today's) runs on the same set and corpus, so the cost of the
new kinds is visible, and the findings on the real corpus are compared: what the new
detectors find there that the old one did not is listed, to be read for false positives.

The guardrails' per-request CPU, recall on obfuscated spellings and look-alikes are
``benchmarks/guard_bench.py``'s (``--parts pii`` and ``--parts cpu``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lmops.core.config import find_shared_datasets  # noqa: E402
from lmops.text.pii import detect_pii, iban_ok, luhn_ok, mask_pii, ssn_ok  # noqa: E402

Masker = Callable[[str], str]


@dataclass(frozen=True)
class Case:
    kind: str  # the lmops type that should mask it (negatives: "-")
    family: str
    text: str
    secret: str  # what must be gone from the output ("" for negatives)


EN = [
    "Please contact me at {} if anything changes.",
    "The form lists {} as requested.",
    "Record: {}; verified by the clerk.",
]
ZH = ["请通过{}联系我。", "表格上填写的是{}，已核实。", "登记信息：{}；经办人已确认。"]


# ============================================================================ positives
def digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def rand_ssn(rng: random.Random) -> str:
    while True:
        n = f"{rng.randint(1, 899):03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"
        if ssn_ok(n):
            return n


def rand_nanp(rng: random.Random) -> tuple[str, str, str]:
    def nxx() -> str:
        while True:
            x = str(rng.randint(2, 9)) + digits(rng, 2)
            if x[1:] != "11":
                return x

    return nxx(), nxx(), digits(rng, 4)


# country: (BBAN layout: n digits, a upper-case letters, c either), as the registry has it
IBAN_LAYOUTS = {
    "DE": "18n",
    "GB": "4a14n",
    "FR": "10n11c2n",
    "NL": "4a10n",
    "ES": "20n",
    "IT": "1a22n",
    "CH": "17n",
    "BE": "12n",
}


def rand_iban(rng: random.Random) -> str:
    country = rng.choice(sorted(IBAN_LAYOUTS))
    bban = ""
    for count, cls in _layout(IBAN_LAYOUTS[country]):
        pool = {"n": "0123456789", "a": "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}.get(
            cls, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        )
        bban += "".join(rng.choice(pool) for _ in range(count))
    rest = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    iban = f"{country}{98 - rest % 97:02d}{bban}"
    assert iban_ok(iban), iban
    return iban


def _layout(spec: str) -> list[tuple[int, str]]:
    out, num = [], ""
    for ch in spec:
        if ch.isdigit():
            num += ch
        else:
            out.append((int(num), ch))
            num = ""
    return out


def grouped4(s: str) -> str:
    return " ".join(s[i : i + 4] for i in range(0, len(s), 4))


def rand_public_ipv4(rng: random.Random) -> str:
    import ipaddress

    while True:
        ip = ipaddress.IPv4Address(rng.randint(0x01000000, 0xDFFFFFFF))
        if ip.is_global:
            return str(ip)


def rand_private_ipv4(rng: random.Random) -> str:
    return rng.choice(
        [
            f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            f"172.{rng.randint(16, 31)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        ]
    )


def rand_ipv6(rng: random.Random, compressed: bool) -> str:
    groups = ["2a00", f"{rng.randint(0x1000, 0xFFFF):x}"] + [
        f"{rng.randint(0, 0xFFFF):x}" for _ in range(6)
    ]
    if compressed:
        return ":".join(groups[:3]) + "::" + groups[-1]
    return ":".join(groups)


def luhn_complete(body: str) -> str:
    return next(body + d for d in "0123456789" if luhn_ok(body + d))


def cn_id(rng: random.Random) -> str:
    from lmops.text.pii import id18_checksum_ok

    body = f"{rng.choice([11, 31, 44, 51])}0105{rng.randint(1950, 2005)}"
    body += f"{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{digits(rng, 3)}"
    return next(body + c for c in "0123456789X" if id18_checksum_ok(body + c))


# family -> (kind, make(rng) -> (written, secret), languages)
Writer = Callable[[random.Random], tuple[str, str]]


def _ssn(fmt: str) -> Writer:
    def make(rng: random.Random) -> tuple[str, str]:
        n = rand_ssn(rng)
        number = {
            "dash": f"{n[:3]}-{n[3:5]}-{n[5:]}",
            "space": f"{n[:3]} {n[3:5]} {n[5:]}",
            "plain": n,
        }[fmt.split(":")[0]]
        prefix = fmt.split(":")[1] if ":" in fmt else ""
        return prefix + number, number

    return make


def _nanp(fmt: str, before: str = "") -> Writer:
    def make(rng: random.Random) -> tuple[str, str]:
        a, x, n = rand_nanp(rng)
        s = fmt.format(a=a, x=x, n=n)
        return before + s, s

    return make


def _ssn_in_config(rng: random.Random) -> tuple[str, str]:
    n = rand_ssn(rng)
    return rng.choice(['{"ssn": "%s"}', "SSN = %s", "SSN No. %s", "SSN number: %s"]) % n, n


def _landline_beside_a_number(rng: random.Random) -> tuple[str, str]:
    # a digit and a space next to it (opening hours, a count) once hid it
    area = rng.choice(["010", "021", "0755"])
    n = area + rng.choice("- ") + str(rng.randint(2, 9)) + digits(rng, 7)
    where = ["{} 9:00-18:00", "No. 3 {}", "{} 2 lines", "营业时间 9:00-18:00 {}"]
    return rng.choice(where).format(n), n


def _same(fn: Callable[[random.Random], str]) -> Writer:
    def make(rng: random.Random) -> tuple[str, str]:
        s = fn(rng)
        return s, s

    return make


POSITIVES: dict[str, tuple[str, Writer, str]] = {
    "SSN 123-45-6789": ("SSN", _ssn("dash"), "en"),
    "SSN after 'SSN', spaced": ("SSN", _ssn("space:SSN "), "en"),
    "SSN after 'SSN:', plain": ("SSN", _ssn("plain:SSN: "), "en"),
    "SSN after 'social security number'": ("SSN", _ssn("dash:social security number "), "en"),
    "SSN after 社会安全号码": ("SSN", _ssn("dash:社会安全号码："), "zh"),
    "SSN in JSON / config": ("SSN", _ssn_in_config, "en"),
    "US phone (415) 555-0100": ("PHONE", _nanp("({a}) {x}-{n}"), "both"),
    "US phone 415-555-0100": ("PHONE", _nanp("{a}-{x}-{n}"), "both"),
    "US phone 415.555.0100": ("PHONE", _nanp("{a}.{x}.{n}"), "both"),
    "US phone 'Tel:' 415 555 0100": ("PHONE", _nanp("{a} {x} {n}", "Tel: "), "en"),
    "US phone 电话 415 555 0100": ("PHONE", _nanp("{a} {x} {n}", "电话："), "zh"),
    "US phone 1 415 555 0100": ("PHONE", _nanp("1 {a} {x} {n}"), "both"),
    "US phone 1-415-555-0100": ("PHONE", _nanp("1-{a}-{x}-{n}"), "both"),
    "US phone +1 415 555 0100": ("PHONE", _nanp("+1 {a} {x} {n}"), "both"),
    "US phone +1 (415) 555-0100": ("PHONE", _nanp("+1 ({a}) {x}-{n}"), "both"),
    "US phone +14155550100": ("PHONE", _nanp("+1{a}{x}{n}"), "both"),
    "IBAN plain": ("IBAN", _same(rand_iban), "both"),
    "IBAN in groups of 4": ("IBAN", _same(lambda r: grouped4(rand_iban(r))), "both"),
    "IPv4 public": ("IP", _same(rand_public_ipv4), "both"),
    "IPv4 private": ("IP", _same(rand_private_ipv4), "both"),
    "IPv4 public, with port": (
        "IP",
        lambda r: ((ip := rand_public_ipv4(r)) + f":{r.randint(1024, 65535)}", ip),
        "both",
    ),
    "IPv4 public, in a URL": (
        "IP",
        lambda r: (f"http://{(ip := rand_public_ipv4(r))}/login", ip),
        "both",
    ),
    "IPv6 full": ("IP", _same(lambda r: rand_ipv6(r, False)), "both"),
    "IPv6 compressed": ("IP", _same(lambda r: rand_ipv6(r, True)), "both"),
    "e-mail": (
        "EMAIL",
        _same(
            lambda r: (
                f"{r.choice(['jane.doe', 'li.lei', 'bob_k'])}{r.randint(1, 99)}@"
                f"{r.choice(['example.com', 'corp-mail.net', 'qq.com'])}"
            )
        ),
        "both",
    ),
    "China landline beside a number": ("PHONE", _landline_beside_a_number, "both"),
    "China mobile": ("PHONE", _same(lambda r: "1" + r.choice("3589") + digits(r, 9)), "both"),
    "China resident ID": ("ID_CARD", _same(cn_id), "both"),
    "bank card 4-4-4-4": (
        "BANK_CARD",
        _same(lambda r: grouped4(luhn_complete("4" + digits(r, 14)))),
        "both",
    ),
}


# ============================================================================ negatives
def _bad_ssn(rng: random.Random) -> str:
    n = rand_ssn(rng)
    area = rng.choice(["000", "666", f"9{digits(rng, 2)}"])
    return f"SSN {area}-{n[3:5]}-{n[5:]}"


def _bad_iban(rng: random.Random) -> str:
    iban = rand_iban(rng)
    check = (int(iban[2:4]) + rng.randint(1, 97)) % 100
    return "IBAN " + grouped4(iban[:2] + f"{check:02d}" + iban[4:])


def _spaced_sizes(rng: random.Random) -> str:
    # NANP-shaped (3-3-4, area and exchange 2-9), with nothing saying it is a phone
    a, x, n = rand_nanp(rng)
    return rng.choice(
        [
            f"--sizes {a} {x} {n}",
            f"dims: {a} {x} {n}",
            f"Table: {a} {x} {n}",
            f"matrix 2 {a} {x} {n}",
            f"[{a} {x} {n}]",
            f"phone {a} {x} {n} {digits(rng, 4)}",  # a longer run of groups
        ]
    )


NEGATIVES: dict[str, Callable[[random.Random], str]] = {
    "SSN area 000/666/9xx": _bad_ssn,
    "SSN group 00 / serial 0000": lambda r: r.choice(
        [f"SSN {r.randint(1, 665):03d}-00-{digits(r, 4)}", f"SSN {r.randint(1, 665):03d}-12-0000"]
    ),
    "3-2-4 digits spaced, no keyword": lambda r: f"part {rand_ssn(r)[:3]} 45 {digits(r, 4)} kit",
    "9 digits, no keyword": lambda r: f"order {rand_ssn(r)} shipped",
    # (an area code starting with 0 would be a China landline: 021-555-7352 is Shanghai's)
    "NANP rule broken (1 or N11)": lambda r: r.choice(
        [
            f"call 1{digits(r, 2)}-555-{digits(r, 4)}",
            f"call {r.randint(2, 9)}11-555-{digits(r, 4)}",
            f"call 415-{r.randint(0, 1)}{digits(r, 2)}-{digits(r, 4)}",
        ]
    ),
    "spaced 3-3-4 sizes, no phone keyword": _spaced_sizes,
    "code ending in a SSN/phone shape": lambda r: r.choice(
        [
            f"SKU-{rand_ssn(r)[:3]}-45-{digits(r, 4)}",
            "INV-{}-{}-{}".format(*rand_nanp(r)),
            "ref ABC-{}-{}-{}".format(*rand_nanp(r)),
            f"{rand_ssn(r)[:3]}-45-{digits(r, 4)}-A",
        ]
    ),
    "Python slice / time typo": lambda r: r.choice(
        [
            f"x[{r.randint(1, 99)}::{r.randint(2, 9)}]",
            f"s[{r.randint(1, 99)}::]",
            f"Time {r.randint(0, 23)}:{r.randint(10, 59)}::{r.randint(10, 59)}",
        ]
    ),
    "10 digits in a row": lambda r: f"order {r.randint(2, 9)}{digits(r, 9)}",
    "3-3-5 order number": lambda r: f"order {digits(r, 3)}-{digits(r, 3)}-{digits(r, 5)}",
    "IBAN, MOD 97 fails": _bad_iban,
    "IBAN, one group short": lambda r: "IBAN " + grouped4(rand_iban(r))[:-5],
    "SWIFT/BIC code": lambda r: (
        r.choice(["DEUTDEFF", "BOFAUS3N", "ICBKCNBJ"]) + r.choice(["", "500", "XXX"])
    ),
    "upper-case product code": lambda r: (
        f"model {r.choice(['AB', 'XK', 'QZ'])}{digits(r, 2)}"
        + "".join(r.choice("ABCDEFGHJK0123456789") for _ in range(14))
    ),
    "version 1.2.3.4": lambda r: (
        f"version {r.randint(1, 20)}.{r.randint(0, 9)}.{r.randint(0, 9)}.{r.randint(0, 99)}"
    ),
    "section 3.2.1.4": lambda r: (
        f"see section {r.randint(1, 12)}.{r.randint(1, 9)}.{r.randint(1, 9)}.{r.randint(1, 9)}"
    ),
    "loopback / 0.0.0.0": lambda r: r.choice(
        ["listen on 0.0.0.0:8000", f"curl http://127.0.0.{r.randint(1, 9)}:8080/", "bind [::1]:80"]
    ),
    "Windows build": lambda r: f"build 10.0.{r.randint(10000, 22999)}.{r.randint(1, 4000)}",
    "semver": lambda r: f"v{r.randint(0, 9)}.{r.randint(0, 30)}.{r.randint(0, 99)}",
    "ISO date / time": lambda r: (
        f"at 2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} "
        f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}"
    ),
    "US date": lambda r: (
        f"due {r.randint(1, 12):02d}/{r.randint(1, 28):02d}/{r.randint(1990, 2030)}"
    ),
    "zip+4": lambda r: f"zip {digits(r, 5)}-{digits(r, 4)}",
    "ISBN-13": lambda r: (
        f"ISBN 978-{r.randint(0, 1)}-{digits(r, 3)}-{digits(r, 5)}-{r.randint(0, 9)}"
    ),
    "unix time": lambda r: f"ts {r.randint(1500000000, 1799999999)}",
    "price": lambda r: f"${r.randint(1, 999)},{digits(r, 3)},{digits(r, 3)}.{digits(r, 2)}",
    "decimal": lambda r: f"pi is about 3.{digits(r, 15)}",
    "hash": lambda r: "commit " + "".join(r.choice("0123456789abcdef") for _ in range(40)),
    "e-mail-like": lambda r: r.choice(["user@localhost", "thanks @user42", "a@b", "ping me @ 5"]),
}


def labelled_set(seed: int, per_family: int) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    for family, (kind, make, langs) in POSITIVES.items():
        for i in range(per_family):
            lang = {"en": "en", "zh": "zh"}.get(langs, "en" if i % 2 else "zh")
            template = rng.choice(EN if lang == "en" else ZH)
            written, secret = make(rng)
            cases.append(Case(kind, family, template.format(written), secret))
    for family, make_neg in NEGATIVES.items():
        for i in range(per_family):
            template = rng.choice(EN if i % 2 else ZH)
            cases.append(Case("-", family, template.format(make_neg(rng)), ""))
    return cases


# ============================================================================ tools
def lmops_masker(mask: Callable[..., tuple[str, Counter[str]]]) -> Masker:
    return lambda text: mask(text)[0]


def baseline(rev: str) -> Any:
    """lmops's ``text/pii.py`` at git revision ``rev``, with the ``_pii_*`` modules it
    imports, loaded from ``git show`` as a package of their own."""
    folder = Path(tempfile.mkdtemp(prefix="pii-bench-base-")) / "pii_base"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "--name-only", rev, "src/lmops/text/"],
        capture_output=True,
        text=True,
    )
    helpers = [Path(f).stem for f in listed.stdout.split() if Path(f).name.startswith("_pii_")]
    for name in ("pii", *helpers):
        shown = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:src/lmops/text/{name}.py"],
            capture_output=True,
            text=True,
        )
        if shown.returncode != 0:
            raise SystemExit(f"--baseline-rev {rev}: {shown.stderr.strip()}")
        src = shown.stdout.replace("lmops.text._pii_", "pii_base._pii_")
        (folder / f"{name}.py").write_text(src)
    sys.path.insert(0, str(folder.parent))
    return importlib.import_module("pii_base.pii")


def datatrove_masker() -> Masker | None:
    try:
        from datatrove.pipeline.formatters import PIIFormatter
    except ImportError:
        return None
    fmt = PIIFormatter()
    return fmt.format


def data_juicer_note() -> str:
    try:
        importlib.import_module("data_juicer")
    except ImportError:
        return (
            "Data-Juicer: not installed in this environment (its PyPI package, py-data-juicer, "
            "is not in the project's package lists); no figures"
        )
    return "Data-Juicer: installed, but not wired into this benchmark yet"


# datatrove looks for these kinds only (PIIFormatter: e-mails and IPv4 addresses; by
# default public ones only, which is its documented choice)
DATATROVE_KINDS = {"EMAIL", "IP"}


def score(cases: list[Case], mask: Masker) -> dict[str, dict[str, float]]:
    """Per family: caught fraction (positives) or changed fraction (negatives)."""
    out: dict[str, list[int]] = {}
    for c in cases:
        masked = mask(c.text)
        hit = (c.secret not in masked) if c.secret else (masked != c.text)
        out.setdefault(c.family, []).append(int(hit))
    return {f: {"rate": sum(v) / len(v), "n": len(v)} for f, v in out.items()}


# ============================================================================ corpus
def corpus(datasets: Path | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if datasets is None:
        return out
    alpaca = sorted((datasets / "alpaca_zh_en").glob("part_*.json"))
    if alpaca:
        docs = []
        for f in alpaca:
            for row in json.loads(f.read_text(encoding="utf-8")):
                fields = (
                    "instruction",
                    "input",
                    "output",
                    "en_instruction",
                    "en_input",
                    "en_output",
                )
                docs.append("\n".join(str(row.get(k) or "") for k in fields))
        out["alpaca zh+en"] = docs
    shakespeare = datasets / "tinyshakespeare" / "input.txt"
    if shakespeare.exists():
        blocks = shakespeare.read_text(encoding="utf-8").split("\n\n")
        out["tinyshakespeare"] = ["\n\n".join(blocks[i : i + 6]) for i in range(0, len(blocks), 6)]
    return out


def gateway_requests(n: int, seed: int) -> list[list[str]]:
    """The texts of ``n`` of guard_bench's typical chat requests (system prompt, question,
    answer, follow-up) with their reply: what the gateway reads for PII per request."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import guard_bench

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        messages, reply = guard_bench.typical_request(rng)
        out.append([m["content"] for m in messages] + [reply])
    return out


def us_per_request(requests: list[list[str]], pii: Any, rounds: int) -> float:
    """CPU microseconds per request of ``pii.detect_pii`` over its texts, with the gateway's
    default types (every one of that version but IP); best of ``rounds``."""
    types = [t for t in pii.PII_TYPES if t != "IP"]
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for texts in requests:
            for t in texts:
                pii.detect_pii(t, types)
        best = min(best, time.process_time() - t0)
    return best / len(requests) * 1e6


def docs_per_s(docs: list[str], mask: Masker, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for d in docs:
            mask(d)
        best = min(best, time.process_time() - t0)
    return len(docs) / best


# ============================================================================ main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-family", type=int, default=100)
    p.add_argument("--baseline-rev", default=None, help="also lmops as of this git revision")
    p.add_argument("--datasets", type=Path, default=None, help="the shared datasets folder")
    p.add_argument("--rounds", type=int, default=3, help="speed: best of this many passes")
    args = p.parse_args()

    cases = labelled_set(args.seed, args.per_family)
    tools: dict[str, tuple[Masker, set[str] | None]] = {"lmops": (lmops_masker(mask_pii), None)}
    base = None
    if args.baseline_rev:
        base = baseline(args.baseline_rev)
        tools[f"lmops@{args.baseline_rev}"] = (lmops_masker(base.mask_pii), set(base.PII_TYPES))
    dt = datatrove_masker()
    if dt is not None:
        tools["datatrove"] = (dt, DATATROVE_KINDS)
    names = list(tools)
    results = {name: score(cases, fn) for name, (fn, _) in tools.items()}

    kinds = {c.family: c.kind for c in cases}
    print(f"\nPII kinds: caught (positives) or changed (look-alikes), {args.per_family} per family")
    print(f"{'family':<36} {'kind':<9}" + "".join(f"{n:>16}" for n in names))
    for part, negative in (("positives (recall)", False), ("look-alikes (FP rate)", True)):
        print(f"-- {part}")
        for family, kind in kinds.items():
            if (kind == "-") != negative:
                continue
            row = f"{family:<36} {kind:<9}"
            for n in names:
                handled = tools[n][1]
                supported = negative or handled is None or kind in handled
                if n == "datatrove" and family == "IPv4 private":
                    supported = True  # it looks, and leaves private addresses by design
                row += f"{results[n][family]['rate']:>16.3f}" if supported else f"{'-':>16}"
            print(row)
    summary: dict[str, Any] = {}
    for n in names:
        pos = [r for f, r in results[n].items() if kinds[f] != "-"]
        neg = [r for f, r in results[n].items() if kinds[f] == "-"]
        summary[n] = {
            "recall_all_families": sum(r["rate"] * r["n"] for r in pos) / sum(r["n"] for r in pos),
            "fp_rate": sum(r["rate"] * r["n"] for r in neg) / sum(r["n"] for r in neg),
        }
    print(
        "overall: "
        + "; ".join(
            f"{n} recall {s['recall_all_families']:.3f} (every family), FP {s['fp_rate']:.3f}"
            for n, s in summary.items()
        )
    )
    print(data_juicer_note())

    docs = corpus(find_shared_datasets(args.datasets))
    speed: dict[str, dict[str, float]] = {}
    if not docs:
        print("\nno shared datasets found (--datasets or LMOPS_SHARED_DATASETS): no speed figures")
    else:
        print(f"\nspeed: docs per CPU second, best of {args.rounds}")
        print(f"{'corpus':<18} {'docs':>6} {'MB':>6}" + "".join(f"{n:>16}" for n in names))
        for cname, texts in docs.items():
            mb = sum(len(t.encode()) for t in texts) / 1e6
            speed[cname] = {n: docs_per_s(texts, tools[n][0], args.rounds) for n in names}
            print(
                f"{cname:<18} {len(texts):>6} {mb:>6.2f}"
                + "".join(f"{speed[cname][n]:>16,.0f}" for n in names)
            )
    requests = gateway_requests(500, args.seed)
    from lmops.text import pii as pii_now

    versions = {"lmops": pii_now} | ({f"lmops@{args.baseline_rev}": base} if base else {})
    per_request = {n: us_per_request(requests, mod, args.rounds) for n, mod in versions.items()}
    print(
        "\nPII CPU per gateway request (guard_bench's typical requests, default types, "
        f"best of {args.rounds}): " + ", ".join(f"{n} {us:.1f} us" for n, us in per_request.items())
    )
    found = findings_on_corpus(docs, base)
    print(
        json.dumps(
            {
                "families": results,
                "summary": summary,
                "speed": speed,
                "us_per_gateway_request": per_request,
                "found": found,
            }
        )
    )


def findings_on_corpus(docs: dict[str, list[str]], base: Any) -> dict[str, Any]:
    """What lmops finds in the real corpus per type; with a baseline, what it finds that the
    baseline did not, with examples in context (to be read for false positives)."""
    out: dict[str, Any] = {}
    for cname, texts in docs.items():
        counts: Counter[str] = Counter()
        new: dict[str, list[str]] = {}
        for t in texts:
            spans = detect_pii(t)
            counts.update(s.type for s in spans)
            if base is None:
                continue
            before = {(s.type, s.start, s.end) for s in base.detect_pii(t)}
            for s in spans:
                if (s.type, s.start, s.end) not in before:
                    lo = max(0, s.start - 30)
                    new.setdefault(s.type, []).append(t[lo : s.end + 30].replace("\n", " "))
        out[cname] = {"counts": dict(counts), "new": new}
        print(
            f"\nlmops findings on {cname}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        )
        for typ, ex in new.items():
            print(f"  not found before, {typ}: {len(ex)}; e.g. " + " | ".join(map(repr, ex[:6])))
    return out


if __name__ == "__main__":
    main()
