"""The PII masks a logged body can hold, as the monitor reads them.

The request log masks every string of a body with :mod:`lmops.text.pii`'s default
placeholders (``<EMAIL>``, ``<PHONE>``, ...; ``serve.policy.mask_body``), but a deployment's
guardrails mask what the model sees and says first, with their own ``pii_placeholder``
(``[REDACTED:{type}]``, ``***``): text they masked holds no PII for the log to find, only
their placeholder. The gateway records a placeholder other than the default in the row's
``guardrails`` column (``pii_placeholder``), and :func:`mask_pattern` finds either.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from lmops.text.pii import DEFAULT_PLACEHOLDER, PII_TYPES

__all__ = ["mask_pattern", "placeholder_of"]


def placeholder_of(guardrails: Any) -> str | None:
    """The deployment's own ``pii_placeholder`` recorded in a row's ``guardrails`` column,
    or None (the default one, or a row logged before the gateway recorded it)."""
    p = guardrails.get("pii_placeholder") if isinstance(guardrails, dict) else None
    return p if isinstance(p, str) else None


@lru_cache(maxsize=64)
def mask_pattern(placeholder: str | None = None) -> re.Pattern[str]:
    """A pattern that finds a mask of any PII type: the default placeholder's and, when
    given, ``placeholder``'s (a ``str.format`` template with ``{type}``, or a fixed text such
    as ``***``), each as a whole word where it starts or ends with a letter or digit. A
    placeholder that formats to nothing leaves no trace to find, and a mask of 2 characters
    or fewer is not looked for (it is found in ordinary text too)."""
    masks = {DEFAULT_PLACEHOLDER.format(type=t) for t in PII_TYPES}
    if placeholder:
        try:
            masks |= {placeholder.format(type=t) for t in PII_TYPES}
        except (KeyError, IndexError, ValueError, AttributeError, TypeError):  # not one the
            # guardrails accept
            masks.add(placeholder)
    # a mask of 2 characters or fewer is found in ordinary text too; the guardrails refuse a
    # placeholder that makes one for a type they mask (security.config), so these are the
    # types they do not mask ("IP" of {type} by default), or nothing at all
    masks = {m for m in masks if len(m) > 2}
    # longest first: one mask that holds another is found whole
    return re.compile("|".join(_bounded(m) for m in sorted(masks, key=len, reverse=True)), re.ASCII)


def _bounded(mask: str) -> str:
    r"""``mask`` as a pattern that is not part of a longer word: ``\b`` on an edge that is
    a word character (``SSN`` of ``{type}`` is not found in ``SSNS``, ``IBAN`` not in
    ``LIBANON``); ASCII word characters only, so a mask right after Chinese text (the
    guardrails mask inside ``电话13812345678``) is still found."""
    word = re.compile(r"\w", re.ASCII)
    head = r"\b" if word.match(mask[0]) else ""
    tail = r"\b" if word.match(mask[-1]) else ""
    return head + re.escape(mask) + tail
