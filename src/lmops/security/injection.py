"""Prompt-injection heuristics: weighted rules, cue pre-filtering, decoded payloads."""

from __future__ import annotations

import base64
import binascii
import importlib
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from lmops.security.normalize import _nfkc, normalize_text
from lmops.security.terms import _found, _is_word_char, _trie_body

# ============================================================================ injection
_Cue = tuple[str, bool]  # a string, and whether it starts a word (an ASCII \b before it)


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    weight: float
    pattern: re.Pattern[str]
    # Strings one of which every match of ``pattern`` contains, and a regex finding them;
    # None: none known.
    cues: frozenset[_Cue] | None
    cues_re: tuple[re.Pattern[str], ...] | None


_W = r"(?:[\w'-]+ ){0,3}?"  # up to three filler words (English, normalised text)


def _rule(name: str, weight: float, *alternatives: str) -> _Rule:
    # ASCII: \b and \w are ASCII-only, so "请ignore all previous instructions" has a word
    # boundary between 请 and i; the Chinese alternatives are literals and unaffected.
    pattern = re.compile("|".join(f"(?:{a})" for a in alternatives), re.ASCII)
    cues = _required_strings(pattern)
    return _Rule(name, weight, pattern, cues, None if cues is None else _compile_cues(cues))


def _compile_cues(cues: Iterable[_Cue]) -> tuple[re.Pattern[str], ...]:
    """Regexes finding any of ``cues``: word starts anchored at \b, as in _compile_terms."""
    cues = set(cues)
    words = {s for s, at_word in cues if at_word}
    others = {s for s, at_word in cues if not at_word}
    out = []
    if words:
        out.append(re.compile(r"\b" + _trie_body(words, words=False), re.ASCII))
    if others:
        out.append(re.compile(_trie_body(others, words=False), re.ASCII))
    return tuple(out)


def _required_strings(pattern: re.Pattern[str]) -> frozenset[_Cue] | None:
    """Strings one of which every match of ``pattern`` contains; None when none are known.

    Read from the parse tree of the standard library's (private) regex parser: a run of
    literals is one string, an alternation needs one of its branches' strings, a group or a
    repeat of at least once its content's, and a sequence the strings of any one of its
    parts; the rarest-looking of those is kept (see ``_cue_weight``). Anything else
    (classes, assertions, optional parts, case-insensitive groups) requires nothing. A
    string that begins with an ASCII letter or digit right after a ``\b``, a non-word
    literal or an optional run ending in one is marked as starting a word, so that its
    regex tries word starts only.

    Only ever used to skip a regex that cannot match, so an unknown parser means None.
    """
    try:
        parser: Any = importlib.import_module("re._parser")
        ops: Any = importlib.import_module("re._constants")
        tree = parser.parse(pattern.pattern, pattern.flags)
        if tree.state.flags & re.IGNORECASE or not tree.state.flags & re.ASCII:
            return None
        return _required_in(tree, ops, False)[0]
    except Exception:  # pragma: no cover - a Python whose re internals differ
        return None


def _cue_weight(cues: frozenset[_Cue]) -> tuple[bool, int, int]:
    # Strings the regex engine can skip to cheaply first (not a space or an ASCII letter
    # or digit in mid-word, where it would stop all the time), then longer and less common
    # characters (a space counts nothing, an ASCII letter or digit 1, a Chinese character
    # 2, punctuation 3), then fewer strings.
    def weight(s: str) -> int:
        return sum(0 if c == " " else (1 if c.isascii() else 2) if c.isalnum() else 3 for c in s)

    cheap = all(at_word or not (s[0] == " " or _is_word_char(s[0])) for s, at_word in cues)
    return cheap, min(weight(s) for s, _ in cues), -len(cues)


def _required_in(items: Any, ops: Any, word_start: bool) -> tuple[frozenset[_Cue] | None, bool]:
    """(required strings, word start at the end) of a parsed sequence.

    ``word_start``: a word character at this point starts a word (the character before it,
    if any, is not a word character).
    """
    best: frozenset[_Cue] | None = None
    run: list[str] = []  # literal characters in a row
    run_at_word = False

    def consider(cues: frozenset[_Cue] | None) -> None:
        nonlocal best
        if cues and (best is None or _cue_weight(cues) > _cue_weight(best)):
            best = cues

    for op, av in items:
        if op is ops.LITERAL:
            c = chr(av)
            if not run:
                run_at_word = word_start and _is_word_char(c)
            run.append(c)
            word_start = not _is_word_char(c)
            continue
        if run:
            consider(frozenset({("".join(run), run_at_word)}))
            run = []
        cues: frozenset[_Cue] | None = None
        if op is ops.AT:
            word_start = av in (ops.AT_BOUNDARY, ops.AT_BEGINNING, ops.AT_BEGINNING_STRING)
        elif op in (ops.ASSERT, ops.ASSERT_NOT):
            pass  # zero-width: neither requires nor moves
        elif op is ops.SUBPATTERN:
            _group, add_flags, _del_flags, sub = av
            cues, word_start = _required_in(sub, ops, word_start)
            if add_flags & re.IGNORECASE:
                cues = None
        elif op is ops.ATOMIC_GROUP:
            cues, word_start = _required_in(av, ops, word_start)
        elif op is ops.BRANCH:
            results = [_required_in(b, ops, word_start) for b in av[1]]
            branch_cues = [c for c, _ in results]
            if all(c is not None for c in branch_cues):
                cues = frozenset().union(*cast(list[frozenset[_Cue]], branch_cues))
            word_start = all(end for _, end in results)
        elif op in (ops.MAX_REPEAT, ops.MIN_REPEAT, ops.POSSESSIVE_REPEAT):
            least, most, sub = av
            first, end = _required_in(sub, ops, word_start)
            if least >= 1:
                cues = first
            if most != 1:  # a later repetition starts where the one before it ended
                end = end and _required_in(sub, ops, False)[1]
            word_start = end and (least >= 1 or word_start)
        else:  # a class, any character, a back reference: may be a word character
            word_start = False
        consider(cues)
    if run:
        consider(frozenset({("".join(run), run_at_word)}))
    return best, word_start


_INJECTION_RULES: tuple[_Rule, ...] = (
    _rule(
        "ignore_instructions",
        0.8,
        r"\b(?:ignore|disregard|forget|skip|override|bypass|stop following|do not follow"
        r"|don't follow|no longer follow) " + _W + r"(?:all|any|every|previous|prior|above"
        r"|earlier|preceding|initial|original|system|developer|safety|your) "
        + _W
        + r"(?:instructions?|prompts?|rules|directions|directives|guidelines|guardrails"
        r"|constraints|restrictions|programming|polic(?:y|ies))\b",
        r"(?:忽略|无视|忘记|忘掉|忘了|不要理会|别管|跳过|抛弃|放弃|绕过|覆盖|不再遵守|不要遵守"
        r"|停止遵守)[^。！？\n]{0,8}?(?:之前|以前|先前|此前|前面|上面|以上|上述|原来|原有|原先|最初"
        r"|所有|全部|一切|你的|系统)[^。！？\n]{0,8}?(?:指令|指示|规则|提示词|系统提示|设定|命令"
        r"|限制|约束|安全策略)",
    ),
    _rule(
        "reveal_system_prompt",
        0.7,
        r"\b(?:reveal|show|print|output|repeat|display|leak|dump|recite|share|write out"
        r"|tell|give) (?:me |us )?" + _W + r"(?:your|the) " + _W + r"(?:system|initial"
        r"|original|hidden|secret|developer|internal) (?:prompt|instructions?|message|rules)\b",
        r"\bwhat(?:'s| is| are| were) your (?:system|initial|original|hidden|secret)"
        r" (?:prompt|instructions?|rules)\b",
        r"\brepeat " + _W + r"(?:words|text|everything) above\b",
        r"(?:输出|显示|告诉我|打印|重复|泄露|透露|给我看|展示|说出|复述|公开|发给我)[^。！？\n]{0,6}?"
        r"(?:系统|初始|原始|隐藏|内部|预设)(?:提示词|提示|指令|设定|消息|prompt)",
        r"你的(?:系统|初始|原始|隐藏)(?:提示词|提示|指令|设定)是什么",
        r"重复(?:一下|一遍)?(?:上面|以上|前面)的?(?:所有|全部)?(?:内容|文字)",
    ),
    _rule(
        "persona_override",
        0.7,
        r"\byou are (?:now|no longer)\b.{0,40}?\b(?:dan|jailbroken|unrestricted|unfiltered"
        r"|uncensored|evil|free from|without (?:any )?(?:rules|restrictions|limits|filters))",
        r"\bdo anything now\b",
        r"\b(?:enable|activate|enter|switch to) (?:the )?(?:dan|jailbreak|god) mode\b",
        r"\b(?:dan|jailbreak|god) mode (?:enabled|activated|on)\b",
        r"\b(?:pretend|act|behave|roleplay|role play)\b.{0,40}?\b(?:no|without|free of|free from"
        r"|not bound by|ignoring) (?:any )?(?:[a-z]{1,24} )?(?:rules|restrictions|limits|limitations"
        r"|filters|guidelines|censorship|ethics|morals|policies)\b",
        r"你现在是[^。！？\n]{0,10}?(?:dan|不受(?:任何)?限制|没有(?:任何)?限制|无限制|越狱|邪恶)",
        r"(?:越狱|上帝|dan)模式(?:已)?(?:开启|启动|激活|启用)",
        r"(?:进入|开启|启动|激活|启用)了?(?:越狱|上帝|dan)模式",
        r"(?:扮演|假装|假设你是|充当)[^。！？\n]{0,20}?(?:没有|不受|无视|不遵守|不用遵守)(?:任何)?"
        r"[^。！？\n]{0,4}?(?:限制|规则|道德|约束|审查|过滤)",
    ),
    _rule(
        "chat_template_tokens",
        0.8,
        # Normalised text reads "_" between letters as a space: "im_start" is "im start".
        (
            r"<\|(?:im_start|im_end|im_sep|system|user|assistant|endoftext|eot_id"
            r"|start_header_id|end_header_id|begin_of_text|end_of_text)\|>"
        ).replace("_", "[_ ]"),
        r"\[/?inst\]|<</?sys>>|<(?:start|end)[_ ]of[_ ]turn>",
    ),
    _rule(
        "developer_mode",
        0.4,
        r"\bdeveloper mode (?:enabled|activated|on)\b",
        r"开发者模式(?:已)?(?:开启|启动|激活|启用)",
    ),
    _rule(
        "fake_role_header",
        0.4,
        r"(?:^|\n)(?:#{2,} ?)?(?:system|assistant) ?: ",
        r"(?:^|\n)(?:#{2,} ?)?(?:系统|助手)[:：]",
    ),
    _rule(
        "new_instructions",
        0.4,
        r"\b(?:new|updated|real|actual|true) (?:system )?instructions? ?:",
        r"\bsystem override\b",
        r"\bfrom now on,? you (?:will|must|shall|are)\b",
        r"(?:新的|最新的?|真正的)(?:系统)?(?:指令|指示)[:：]",
        r"从现在(?:开始|起)[,，]?你(?:必须|要|将|只能|不再)",
    ),
    _rule(
        "restriction_bypass",
        0.3,
        r"\b(?:without|no|ignore|bypass|disable) (?:any |your |all )?(?:content |safety "
        r"|ethical |moral )?(?:filters?|censorship|restrictions|guardrails|safety guidelines"
        r"|ethical guidelines|moral constraints)\b",
        r"(?:不受|没有|无视|绕过|解除|突破)(?:任何)?(?:道德|伦理|内容|安全)?(?:限制|审查|过滤|约束)",
    ),
)

_WEIGHTS = {r.name: r.weight for r in _INJECTION_RULES}
# One scan that finds no cue of any rule rules them all out (most messages).
_ANY_RULE_CUE = (
    None
    if any(r.cues is None for r in _INJECTION_RULES)
    else _compile_cues(c for r in _INJECTION_RULES for c in r.cues or ())
)
_ENCODED_CUES = re.compile(
    r"\b(?:decode|decoded|base64|execute|follow|run)\b|解码|执行|按照|照做", re.ASCII
)
_BASE64 = re.compile(
    r"(?<![A-Za-z0-9+/])(?:[A-Za-z0-9+/]{4}){10,}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
)


def _decoded_payloads(text: str) -> list[str]:
    """Base64 blocks of >= 40 characters in ``text`` that decode to printable UTF-8."""
    out = []
    for m in _BASE64.finditer(text):
        try:
            decoded = base64.b64decode(m.group(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        printable = sum(c.isprintable() or c.isspace() for c in decoded)
        if len(decoded) >= 12 and printable >= 0.95 * len(decoded):
            out.append(decoded)
    return out


@dataclass(frozen=True, slots=True)
class InjectionResult:
    """``score`` in [0, 1] and the names of the rules that fired (sorted)."""

    score: float
    rules: tuple[str, ...]


def _combine(weights: Iterable[float]) -> float:
    return 1.0 - math.prod(1.0 - w for w in weights)


def _cued(normalized: str) -> Iterator[_Rule]:
    """The rules a cue of which ``normalized`` holds (the only ones that may match it)."""
    if _ANY_RULE_CUE is not None and not _found(_ANY_RULE_CUE, normalized):
        return
    for r in _INJECTION_RULES:
        if r.cues_re is None or _found(r.cues_re, normalized):
            yield r


def _score_plain(normalized: str) -> dict[str, float]:
    return {r.name: r.weight for r in _cued(normalized) if r.pattern.search(normalized)}


def rule_counts(normalized: str) -> dict[str, int]:
    """How many times each injection rule matches ``normalized`` (its fired rules, with
    the number of non-overlapping matches of each)."""
    counts = {r.name: sum(1 for _ in r.pattern.finditer(normalized)) for r in _cued(normalized)}
    return {name: n for name, n in counts.items() if n}


def rule_weight(name: str) -> float:
    """The weight of the injection rule ``name``."""
    return _WEIGHTS[name]


def score_injection(text: str) -> InjectionResult:
    """Score ``text`` for prompt-injection markers; the caller compares with a threshold."""
    return _score_injection(text)


def _score_injection(
    text: str, normalized: str | None = None, payloads: list[str] | None = None
) -> InjectionResult:
    """:func:`score_injection`, given ``normalize_text(text)`` and ``text``'s decoded payloads
    where the caller has them already."""
    if normalized is None:
        normalized = normalize_text(text)
    fired = _score_plain(normalized)
    if payloads is None:
        payloads = _decoded_payloads(_nfkc(text))
    if payloads:
        inner = _combine(_score_plain(normalize_text("\n".join(payloads))).values())
        if inner >= 0.5:
            fired["encoded_instructions"] = 0.8
        elif _ENCODED_CUES.search(normalized):
            fired["encoded_payload"] = 0.5
    return InjectionResult(round(_combine(fired.values()), 4), tuple(sorted(fired)))
