"""The security stage: guardrails (PII masking, moderation, prompt-injection heuristics) and key auth.

A library with three seams, all driven by one :class:`GuardrailConfig` per deployment::

    g = Guardrails(GuardrailConfig())            # or GuardrailConfig.from_name("strict")
    d = g.check_input(messages)                  # before the model: allow/block, masked messages
    o = g.check_output(text)                     # a complete reply: masked text or a refusal
    s = g.stream_guard()                         # a streamed reply, delta by delta:
    safe, stop = s.feed(delta)                   #   emit ``safe``; on ``stop`` end the stream
    tail = s.finish()                            #   with finish_reason "content_filter"

Which messages are checked (OpenAI chat roles; a message's ``content`` is a string or a list
of parts, of which only ``{"type": "text"}`` parts are read and rewritten): in a gateway the
API caller writes every message, ``system`` and ``assistant`` included (a forged assistant
turn, "Sure, here is how to ...", is a prefill attack), so by default every role is checked:

* PII (``pii_input``) and moderation (``moderation_input``) in every message. Moderation
  reads each message and all of them joined (a term split across two messages, "how to
  make a" / "bomb", is caught).
* ``trusted_roles`` opts roles out of both, for an operator who puts their own system
  prompt behind the gateway (``trusted_roles: [system, developer]``: a system prompt that
  *names* what the model must refuse is then not refused itself).
* Prompt injection (``injection``) in ``user``, ``tool`` and ``function`` messages
  (indirect injection arrives through tool results): instructions in the system prompt
  cannot be injected into the system prompt, whoever wrote it.

Moderation terms are bilingual phrase lists, one file per category in ``resources/``
(see its README.txt), plus an optional ``extra_terms_file`` in the same format. Text and
terms go through the same :func:`normalize_text` (NFKC, lower-case, zero-width characters
dropped, traditional -> simplified Chinese via OpenCC, spaces and separators between
Chinese characters removed), so "自 殺", "ＫＩＬＬ ＭＹＳＥＬＦ" and "ki<U+200B>ll myself" are
found by the entries "自杀" and "kill myself".

The classifier (``classifier``, default ``"builtin"``: the bilingual harmful-vs-benign model
of :mod:`lmops.security.moderation`, shipped in ``resources/moderation/`` and retrained with
``lmops guard train``; or a path to your own ``.npz``; or ``"package.module:callable"``;
``"off"``/None for none) complements the term lists: it reads paraphrases, role-play
framing and obfuscations (spaced or dotted letters, homoglyphs, leet, pinyin) that exact
terms miss. It is asked only where the term lists found nothing (where they found a
category, that is the category). Its threshold is the model's own (stored in the file,
chosen by a stated rule on out-of-fold scores when it was trained, see
:mod:`lmops.security.moderation`) unless ``classifier_threshold`` is set. With several
messages, each is scored (the built-in model keeps a message's features, so a repeated
system prompt or earlier turn costs a lookup) and so is all of them together, from the
messages' features added up. Term lists are also matched on the classifier's de-obfuscated
form of the text (:func:`lmops.security.moderation.deobfuscate`), and across line breaks.

Matching: terms compile to regular expressions whose alternation is the *trie* of the terms
("how to (?:kill|make) ..."), so the C regex engine walks all of them in one left-to-right
pass, sharing prefixes (10x faster than a flat alternation); English terms are anchored at
ASCII word boundaries. One pass over all categories answers "anything at all?" (10-20
million characters a second on one core, for English and Chinese text alike); the
per-category passes run only on a hit. pyahocorasick is not a dependency, and would still
need word boundaries checked in Python for every hit; a pure-Python automaton is slower
than the regex engine.

Prompt injection is scored, not decided: each rule that fires has a weight, the score is
``1 - prod(1 - weight)`` and ``injection_threshold`` decides. A rule's regex runs only where
one of the strings that all its matches contain is found (read from the rule's parse tree,
see ``_required_strings``), so an ordinary message costs one scan for all rules.
Base64-looking blocks that decode to text are decoded and checked as well (rule
``encoded_instructions``), and their decoded text is moderated like the message itself.

Decisions carry ``actions`` (``{"type", "pii_type" | "category" | "rule", "count"}``, e.g.
``{"type": "pii_mask", "pii_type": "PHONE", "count": 2}``) for logs, and every action is
added to :attr:`Guardrails.counters`, keyed ``(direction, type, name)``, ready to export as
a Prometheus counter with three labels. Types: ``pii_mask``, ``pii_block``,
``moderation_flag``, ``moderation_block`` (classifier hits add ``"source": "classifier"``
and ``"score"``), ``injection_flag``, ``injection_block`` (one per rule) and
``classifier_error``.
Where each piece lives: :mod:`~lmops.security.config` (``GuardrailConfig`` and presets),
:mod:`~lmops.security.normalize` (``normalize_text``), :mod:`~lmops.security.terms` (term
lists and the matcher), :mod:`~lmops.security.injection` (injection rules),
:mod:`~lmops.security.guard` (``Guardrails`` and its decisions), :mod:`~lmops.security.stream`
(``StreamGuard``), :mod:`~lmops.security.moderation` (the classifier) and
:mod:`~lmops.security.auth` (the one bearer-key check of ``/api`` and ``/v1``).
"""

from __future__ import annotations

from lmops.security.config import CONTENT_FILTER, DEFAULT_PII_TYPES, Classifier, GuardrailConfig
from lmops.security.guard import Guardrails, InputDecision, OutputDecision
from lmops.security.injection import InjectionResult, score_injection
from lmops.security.normalize import normalize_text
from lmops.security.stream import StreamGuard
from lmops.security.terms import TermMatcher, builtin_categories, load_term_file

__all__ = [
    "CONTENT_FILTER",
    "DEFAULT_PII_TYPES",
    "Classifier",
    "GuardrailConfig",
    "Guardrails",
    "InjectionResult",
    "InputDecision",
    "OutputDecision",
    "StreamGuard",
    "TermMatcher",
    "builtin_categories",
    "load_term_file",
    "normalize_text",
    "score_injection",
]
