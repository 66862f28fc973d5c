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

from lmops.text.pii import PII_TYPES

__all__ = ["DEFAULT_PLACEHOLDER", "mask_pattern", "placeholder_of"]

DEFAULT_PLACEHOLDER = "<{type}>"  # lmops.text.pii's, and the guardrails' default


def placeholder_of(guardrails: Any) -> str | None:
    """The deployment's own ``pii_placeholder`` recorded in a row's ``guardrails`` column,
    or None (the default one, or a row logged before the gateway recorded it)."""
    p = guardrails.get("pii_placeholder") if isinstance(guardrails, dict) else None
    return p if isinstance(p, str) else None


@lru_cache(maxsize=64)
def mask_pattern(placeholder: str | None = None) -> re.Pattern[str]:
    """A pattern that finds a mask of any PII type: the default placeholder's and, when
    given, ``placeholder``'s (a ``str.format`` template with ``{type}``, or a fixed text such
    as ``***``). A placeholder that formats to nothing leaves no trace to find."""
    masks = {DEFAULT_PLACEHOLDER.format(type=t) for t in PII_TYPES}
    if placeholder:
        try:
            masks |= {placeholder.format(type=t) for t in PII_TYPES}
        except (KeyError, IndexError, ValueError):  # not a template the guardrails accept
            masks.add(placeholder)
    masks.discard("")
    # longest first: one mask that holds another is found whole
    return re.compile("|".join(re.escape(m) for m in sorted(masks, key=len, reverse=True)))
